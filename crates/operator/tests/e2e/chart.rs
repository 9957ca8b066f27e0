//! Issue 33, "a chart platform teams can vendor": the chart rendered by Helm's engine
//! (scripts/helm-render.py) as a subchart with `global` values, with `nameOverride` /
//! `fullnameOverride`, with `webhook.certManager` and `extraVolumes`, and its CRDs as a template
//! (`crds.enabled`, `crds.keep`). No control plane: renders only (the upgrade and uninstall on a
//! control plane are e2e_disruptive's chart_upgrade).

use crate::support::{helm_render_at as render_at, rendered as docs_of, stderr, stdout};

const CHART: &str = "charts/cluster-security-operator";

fn render(values: &str) -> Vec<serde_yaml::Value> {
    docs_of(&render_at(std::path::Path::new(CHART), values))
}

/// Helm refuses `values`, naming `says` (the key) in its error.
fn refused(values: &str, says: &str) {
    let out = render_at(std::path::Path::new(CHART), values);
    assert!(!out.status.success(), "values {values} were accepted");
    assert!(stderr(&out).contains(says), "values {values}: {}", stderr(&out));
}

fn kind<'a>(docs: &'a [serde_yaml::Value], k: &str) -> Vec<&'a serde_yaml::Value> {
    docs.iter().filter(|d| d["kind"].as_str() == Some(k)).collect()
}

fn one<'a>(docs: &'a [serde_yaml::Value], k: &str) -> &'a serde_yaml::Value {
    let all = kind(docs, k);
    assert_eq!(all.len(), 1, "one {k}");
    all[0]
}

fn name(d: &serde_yaml::Value) -> &str {
    d["metadata"]["name"].as_str().unwrap_or_default()
}

fn strings(v: &serde_yaml::Value) -> Vec<&str> {
    v.as_sequence().into_iter().flatten().filter_map(|s| s.as_str()).collect()
}

fn pod(docs: &[serde_yaml::Value]) -> &serde_yaml::Value {
    &one(docs, "Deployment")["spec"]["template"]["spec"]
}

fn args(docs: &[serde_yaml::Value]) -> Vec<&str> {
    strings(&pod(docs)["containers"][0]["args"])
}

/// Every name a render gives its objects and points at: metadata names (CRDs aside), roleRefs,
/// subjects, RBAC resourceNames of our own objects, the webhook's Service and the pod's
/// ServiceAccount.
fn all_names(docs: &[serde_yaml::Value]) -> Vec<String> {
    let mut names = Vec::new();
    for d in docs.iter().filter(|d| d["kind"].as_str() != Some("CustomResourceDefinition")) {
        names.push(format!("{} {}", d["kind"].as_str().unwrap_or_default(), name(d)));
        if let Some(r) = d["roleRef"]["name"].as_str() {
            names.push(format!("roleRef {r}"));
        }
        for s in d["subjects"].as_sequence().into_iter().flatten() {
            names.push(format!("subject {}", s["name"].as_str().unwrap_or_default()));
        }
        for rule in d["rules"].as_sequence().into_iter().flatten() {
            let ours = strings(&rule["resources"])
                .iter()
                .any(|r| ["validatingwebhookconfigurations", "leases", "secrets"].contains(r));
            if ours {
                for n in strings(&rule["resourceNames"]) {
                    names.push(format!("resourceName {n}"));
                }
            }
        }
        for w in d["webhooks"].as_sequence().into_iter().flatten() {
            names
                .push(format!("webhook service {}", w["clientConfig"]["service"]["name"].as_str().unwrap_or_default()));
        }
    }
    if let Some(sa) = pod(docs)["serviceAccountName"].as_str() {
        names.push(format!("serviceAccountName {sa}"));
    }
    names
}

/// The kinds the override must reach: cluster-scoped ones and every namespaced one the chart can
/// create (with the options that turn them on).
const EVERYTHING_ON: &str = r#""podDisruptionBudget": {"enabled": true}, "networkPolicy": {"enabled": true},
    "metrics": {"serviceMonitor": {"enabled": true}, "prometheusRule": {"enabled": true}, "grafanaDashboard": {"enabled": true}},
    "webhook": {"certManager": {"enabled": true}}, "azure": {"credentialsSecret": "azure-credentials"}"#;

#[test]
fn name_overrides_reach_every_object_and_the_operator_flags() {
    // Defaults: the names of today, and no name flags (the operator's defaults are these names).
    let default = render(&format!("{{{EVERYTHING_ON}}}"));
    for n in all_names(&default) {
        let object = n.rsplit(' ').next().unwrap();
        assert!(object.starts_with("cluster-security-operator") || object == "azure-credentials", "default name {n}");
    }
    assert!(!args(&default).iter().any(|a| a.starts_with("--webhook-config")), "{:?}", args(&default));

    let docs = render(&format!(r#"{{"fullnameOverride": "team-a-csop", {EVERYTHING_ON}}}"#));
    let names = all_names(&docs);
    let stray: Vec<_> = names
        .iter()
        .filter(|n| {
            let object = n.rsplit(' ').next().unwrap();
            !(object.starts_with("team-a-csop") || object == "azure-credentials")
        })
        .collect();
    assert!(stray.is_empty(), "names not following fullnameOverride: {stray:?}");
    for expected in [
        "ClusterRole team-a-csop",
        "ClusterRoleBinding team-a-csop",
        "ClusterRole team-a-csop-workloads",
        "ClusterRole team-a-csop-kms",
        "ClusterRole team-a-csop-view",
        "ClusterRole team-a-csop-edit",
        "ClusterRole team-a-csop-kmskeyvaultmode-admin",
        "ValidatingWebhookConfiguration team-a-csop",
        "Deployment team-a-csop",
        "ServiceAccount team-a-csop",
        "Service team-a-csop-webhook",
        "Service team-a-csop-metrics",
        "Role team-a-csop-leader-election",
        "PodDisruptionBudget team-a-csop",
        "NetworkPolicy team-a-csop",
        "ServiceMonitor team-a-csop",
        "PrometheusRule team-a-csop",
        "ConfigMap team-a-csop-dashboard",
        "Certificate team-a-csop-webhook",
        "Issuer team-a-csop-selfsigned",
        "webhook service team-a-csop-webhook",
        "resourceName team-a-csop",
        "serviceAccountName team-a-csop",
    ] {
        assert!(names.iter().any(|n| n == expected), "{expected} missing: {names:?}");
    }
    // The operator is told the names it looks up itself.
    let a = args(&docs);
    for flag in [
        "--webhook-config=team-a-csop",
        "--webhook-service=team-a-csop-webhook",
        "--webhook-secret=team-a-csop-webhook-tls",
        "--leader-elect-lease=team-a-csop",
    ] {
        assert!(a.contains(&flag), "{flag} missing: {a:?}");
    }
    // Without cert-manager the operator's own Secret is named after the release too.
    let own = all_names(&render(r#"{"nameOverride": "csop"}"#));
    assert!(own.iter().any(|n| n == "resourceName csop-webhook-tls"), "{own:?}");
    assert!(own.iter().any(|n| n == "ClusterRole csop"), "{own:?}");

    refused(&format!(r#"{{"fullnameOverride": "{}"}}"#, "a".repeat(56)), "/fullnameOverride");
    refused(r#"{"nameOverride": "Team_A"}"#, "/nameOverride");
}

#[test]
fn the_chart_renders_as_a_subchart_with_global_values() {
    // A parent chart vendoring this one under charts/, as platform teams do.
    let parent = tempfile::tempdir().unwrap();
    let root = cluster_security_testbed::repo_root();
    std::fs::create_dir_all(parent.path().join("charts")).unwrap();
    std::fs::create_dir_all(parent.path().join("templates")).unwrap();
    let copied = std::process::Command::new("cp")
        .arg("-r")
        .arg(root.join(CHART))
        .arg(parent.path().join("charts"))
        .status()
        .unwrap();
    assert!(copied.success());
    std::fs::write(
        parent.path().join("Chart.yaml"),
        "apiVersion: v2\nname: platform\nversion: 1.0.0\ndependencies:\n- name: cluster-security-operator\n  version: 0.1.0\n",
    )
    .unwrap();
    let values = r#"{"global": {"imageRegistry": "registry.example.com", "labels": {"team": "platform"}},
        "cluster-security-operator": {"fullnameOverride": "platform-csop", "replicas": 3}}"#;
    let docs = docs_of(&render_at(parent.path(), values));
    let deployment = one(&docs, "Deployment");
    assert_eq!(name(deployment), "platform-csop");
    assert_eq!(deployment["spec"]["replicas"].as_i64(), Some(3), "the subchart's values reach it");
    assert_eq!(kind(&docs, "CustomResourceDefinition").len(), 3, "the CRDs come with the subchart");
    // And `global` on its own (what Helm passes every subchart).
    assert_eq!(name(one(&render(r#"{"global": {"any": {"thing": 1}}}"#), "Deployment")), "cluster-security-operator");
    refused(r#"{"global": "x"}"#, "/global");
}

#[test]
fn the_cert_manager_option_renders_the_certificate_and_hands_it_to_the_operator() {
    let docs = render(r#"{"webhook": {"certManager": {"enabled": true}}}"#);
    let cert = one(&docs, "Certificate");
    assert_eq!(name(cert), "cluster-security-operator-webhook");
    assert_eq!(
        strings(&cert["spec"]["dnsNames"]),
        [
            "cluster-security-operator-webhook.csop-chart.svc",
            "cluster-security-operator-webhook.csop-chart.svc.cluster.local"
        ]
    );
    let secret = cert["spec"]["secretName"].as_str().unwrap();
    // No issuer given: a self-signed Issuer of the chart's.
    let issuer = one(&docs, "Issuer");
    assert!(issuer["spec"]["selfSigned"].is_mapping());
    assert_eq!(cert["spec"]["issuerRef"]["name"].as_str(), Some(name(issuer)));
    // Mounted, and the operator serves it.
    let pod = pod(&docs);
    let volume = pod["volumes"]
        .as_sequence()
        .unwrap()
        .iter()
        .find(|v| v["secret"]["secretName"].as_str() == Some(secret))
        .expect("a volume of the Certificate's Secret");
    let mount = pod["containers"][0]["volumeMounts"]
        .as_sequence()
        .unwrap()
        .iter()
        .find(|m| m["name"] == volume["name"])
        .expect("mounted");
    let dir = mount["mountPath"].as_str().unwrap();
    assert!(args(&docs).contains(&format!("--webhook-cert-dir={dir}").as_str()), "{:?}", args(&docs));
    // cert-manager's cainjector fills the caBundle; the operator gets no right to (nor a Secret).
    let vwc = one(&docs, "ValidatingWebhookConfiguration");
    assert_eq!(
        vwc["metadata"]["annotations"]["cert-manager.io/inject-ca-from"].as_str(),
        Some("csop-chart/cluster-security-operator-webhook")
    );
    let rules: Vec<_> = docs.iter().flat_map(|d| d["rules"].as_sequence().cloned().unwrap_or_default()).collect();
    assert!(!rules.iter().any(|r| strings(&r["resources"]).contains(&"validatingwebhookconfigurations")), "{rules:?}");
    assert!(!rules.iter().any(|r| strings(&r["resourceNames"]).iter().any(|n| n.ends_with("-webhook-tls"))));
    // Off (the default): none of it, and the operator keeps its own.
    let default = render("{}");
    assert!(kind(&default, "Certificate").is_empty() && kind(&default, "Issuer").is_empty());
    assert!(!args(&default).iter().any(|a| a.starts_with("--webhook-cert-dir")));
    assert!(one(&default, "ValidatingWebhookConfiguration")["metadata"]["annotations"].is_null());

    // An issuer of the platform's: no Issuer of ours.
    let docs = render(
        r#"{"webhook": {"certManager": {"enabled": true, "issuerRef": {"name": "platform-ca", "kind": "ClusterIssuer"}}}}"#,
    );
    assert!(kind(&docs, "Issuer").is_empty());
    let issuer_ref = &one(&docs, "Certificate")["spec"]["issuerRef"];
    assert_eq!(
        (issuer_ref["name"].as_str(), issuer_ref["kind"].as_str()),
        (Some("platform-ca"), Some("ClusterIssuer"))
    );
    refused(
        r#"{"webhook": {"certManager": {"enabled": true, "issuerRef": {"kind": "Vault"}}}}"#,
        "/webhook/certManager/issuerRef/kind",
    );
    refused(r#"{"webhook": {"certManager": {"enabeld": true}}}"#, "'enabeld' not allowed");
}

/// extraVolumes / extraVolumeMounts: e.g. a Secret of one's own for --webhook-cert-dir.
#[test]
fn extra_volumes_and_mounts_reach_the_pod() {
    let docs = render(
        r#"{"extraVolumes": [{"name": "own-cert", "secret": {"secretName": "webhook-cert"}}],
            "extraVolumeMounts": [{"name": "own-cert", "mountPath": "/certs", "readOnly": true}],
            "extraArgs": ["--webhook-cert-dir=/certs"]}"#,
    );
    let pod = pod(&docs);
    assert_eq!(pod["volumes"][0]["secret"]["secretName"].as_str(), Some("webhook-cert"));
    assert_eq!(pod["containers"][0]["volumeMounts"][0]["mountPath"].as_str(), Some("/certs"));
    assert!(args(&docs).contains(&"--webhook-cert-dir=/certs"));
    refused(r#"{"extraVolumeMounts": [{"name": "own-cert"}]}"#, "/extraVolumeMounts/0");
    refused(r#"{"extraVolumes": [{"secret": {}}]}"#, "/extraVolumes/0");
    assert!(pod_of_default_has_no_volumes());
}

fn pod_of_default_has_no_volumes() -> bool {
    pod(&render("{}"))["volumes"].is_null()
}

/// The CRDs are a template: on by default with helm.sh/resource-policy keep, the keep policy
/// off with crds.keep=false, none with crds.enabled=false; the chart has no crds/ directory
/// (Helm would install those once and never upgrade them).
#[test]
fn the_crds_are_a_template_kept_on_uninstall() {
    let root = cluster_security_testbed::repo_root();
    assert!(!root.join(CHART).join("crds").exists(), "no crds/ in the chart");
    let crds = |values: &str| -> Vec<serde_yaml::Value> {
        kind(&render(values), "CustomResourceDefinition").into_iter().cloned().collect()
    };
    let default = crds("{}");
    assert_eq!(default.len(), 3);
    let source: Vec<serde_yaml::Value> = serde_yaml::Deserializer::from_str(
        &std::fs::read_to_string(root.join("crds/clustersecurity.io_crds.yaml")).unwrap(),
    )
    .map(|d| serde::Deserialize::deserialize(d).unwrap())
    .collect();
    for (rendered, generated) in default.iter().zip(&source) {
        assert_eq!(rendered["spec"], generated["spec"], "the generated CRD, unchanged");
        assert_eq!(rendered["metadata"]["annotations"]["helm.sh/resource-policy"].as_str(), Some("keep"));
        // Argo CD renders the chart itself and ignores Helm's policy: its own options keep them.
        assert_eq!(
            rendered["metadata"]["annotations"]["argocd.argoproj.io/sync-options"].as_str(),
            Some("Prune=false,Delete=false")
        );
        assert_eq!(rendered["metadata"]["labels"]["app.kubernetes.io/managed-by"].as_str(), Some("Helm"));
    }
    assert!(crds(r#"{"crds": {"keep": false}}"#).iter().all(|c| c["metadata"]["annotations"].is_null()));
    assert!(crds(r#"{"crds": {"enabled": false}}"#).is_empty());
    refused(r#"{"crds": {"enabled": "yes"}}"#, "/crds/enabled");
}

/// A doc of the repository with its whitespace collapsed (claims may wrap across lines).
fn doc(path: &str) -> String {
    let text = std::fs::read_to_string(cluster_security_testbed::repo_root().join(path)).unwrap();
    text.split_whitespace().collect::<Vec<_>>().join(" ")
}

/// Every value path of values.yaml down to its leaves (a list or an empty map is a leaf).
fn leaves(prefix: &str, v: &serde_yaml::Value, out: &mut Vec<String>) {
    match v.as_mapping() {
        Some(m) if !m.is_empty() => {
            for (k, child) in m {
                let key = k.as_str().unwrap();
                let path = if prefix.is_empty() { key.to_string() } else { format!("{prefix}.{key}") };
                leaves(&path, child, out);
            }
        }
        _ => out.push(prefix.to_string()),
    }
}

/// The value paths operations.md's values table documents: the first cell of each row, e.g.
/// "`leaderElection.enabled` / `leaseSeconds`" is leaderElection.enabled and
/// leaderElection.leaseSeconds; "`azure.*`" is all of azure.
fn documented_values() -> Vec<String> {
    let text = std::fs::read_to_string(cluster_security_testbed::repo_root().join("docs/operations.md")).unwrap();
    let table = text.split("## Install").nth(1).unwrap().split("\n## ").next().unwrap();
    let mut paths = Vec::new();
    for row in table.lines().filter(|l| l.starts_with("| `")) {
        let cell = row.split('|').nth(1).unwrap();
        let names: Vec<&str> = cell.split('`').skip(1).step_by(2).collect();
        let first = names[0].trim_end_matches(".*");
        let parent = first.rsplit_once('.').map(|(p, _)| p.to_string());
        paths.push(first.to_string());
        for n in &names[1..] {
            let n = n.trim_end_matches(".*");
            paths.push(match (&parent, n.contains('.')) {
                (Some(p), false) => format!("{p}.{n}"),
                _ => n.to_string(),
            });
        }
    }
    paths
}

/// Issue 33, item 4: what the docs say the chart contains and grants is what it renders.
/// Every value in values.yaml is in operations.md's values table and every value there exists;
/// statements that were once true and no longer are stay out of the docs; each claim below is
/// checked against the default render.
#[test]
fn the_docs_say_what_the_chart_contains_and_grants() {
    let root = cluster_security_testbed::repo_root();
    let values: serde_yaml::Value =
        serde_yaml::from_str(&std::fs::read_to_string(root.join(CHART).join("values.yaml")).unwrap()).unwrap();
    let mut in_values = Vec::new();
    leaves("", &values, &mut in_values);
    let documented = documented_values();
    let covered = |p: &str| documented.iter().any(|d| p == d || p.starts_with(&format!("{d}.")));
    let undocumented: Vec<_> = in_values.iter().filter(|p| !covered(p)).collect();
    assert!(undocumented.is_empty(), "values missing from docs/operations.md#install: {undocumented:?}");
    let exists = |d: &str| in_values.iter().any(|p| p == d || p.starts_with(&format!("{d}.")));
    let unknown: Vec<_> = documented.iter().filter(|d| !exists(d)).collect();
    assert!(unknown.is_empty(), "docs/operations.md#install documents values the chart lacks: {unknown:?}");

    // Once true, no longer.
    for (file, stale) in [
        ("docs/operations.md", "A PodDisruptionBudget is not in the chart"),
        ("docs/operations.md", "No delete except"),
        ("docs/install.md", "Helm never deletes CRDs"),
        ("docs/install.md", "`helm upgrade` never changes CRDs"),
        ("docs/install.md", "core/v1 in `default`"),
        ("docs/install.md", "the chart's crds/ directory"),
        ("README.md", "upgrade (CRDs first)"),
    ] {
        assert!(!doc(file).contains(stale), "{file} still says: {stale}");
    }

    let docs = render("{}");
    let claim = |file: &str, says: &str, holds: bool| {
        assert!(doc(file).contains(says), "{file} no longer says: {says}");
        assert!(holds, "{file} says \"{says}\", the chart disagrees");
    };
    // The PodDisruptionBudget.
    let pdb = kind(&docs, "PodDisruptionBudget");
    claim(
        "docs/operations.md",
        "the chart adds a PodDisruptionBudget (`podDisruptionBudget`, on by default: `minAvailable: 1`)",
        pdb.len() == 1 && pdb[0]["spec"]["minAvailable"].as_i64() == Some(1),
    );
    claim(
        "README.md",
        "a PodDisruptionBudget with more than one replica",
        kind(&render(r#"{"replicas": 1}"#), "PodDisruptionBudget").is_empty() && pdb.len() == 1,
    );
    // Delete rights: the operator's own roles (not the users' aggregated ones) delete Pods and
    // ConfigMaps and nothing else; Secrets are never deleted, updated only by name.
    let users = [
        "cluster-security-operator-view",
        "cluster-security-operator-edit",
        "cluster-security-operator-kmskeyvaultmode-admin",
    ];
    let operator_rules: Vec<&serde_yaml::Value> = docs
        .iter()
        .filter(|d| matches!(d["kind"].as_str(), Some("ClusterRole" | "Role")) && !users.contains(&name(d)))
        .flat_map(|d| d["rules"].as_sequence().into_iter().flatten())
        .collect();
    let mut deletable: Vec<&str> = operator_rules
        .iter()
        .filter(|r| strings(&r["verbs"]).iter().any(|v| ["delete", "deletecollection", "*"].contains(v)))
        .flat_map(|r| strings(&r["resources"]))
        .collect();
    deletable.sort();
    deletable.dedup();
    claim(
        "docs/operations.md",
        "Delete is granted on two things only: Pods (a Pod of an `OnDelete` StatefulSet being rolled, one at a time) and ConfigMaps",
        deletable == ["configmaps", "pods"],
    );
    let secret_rules: Vec<_> =
        operator_rules.iter().filter(|r| strings(&r["resources"]).contains(&"secrets")).collect();
    claim(
        "docs/security.md",
        "Secrets get/list/watch/create/patch (never delete or update)",
        secret_rules.iter().all(|r| {
            let verbs = strings(&r["verbs"]);
            !verbs.contains(&"delete") && (!verbs.contains(&"update") || r["resourceNames"].is_sequence())
        }),
    );
    // The webhook configuration: patched by name, and not at all with cert-manager.
    let vwc_rule = |docs: &[serde_yaml::Value]| {
        docs.iter()
            .flat_map(|d| d["rules"].as_sequence().into_iter().flatten())
            .any(|r| strings(&r["resources"]).contains(&"validatingwebhookconfigurations"))
    };
    claim(
        "docs/security.md",
        "get/patch of the one ValidatingWebhookConfiguration by name (not with `webhook.certManager`",
        vwc_rule(&docs) && !vwc_rule(&render(r#"{"webhook": {"certManager": {"enabled": true}}}"#)),
    );
    // The CRDs: a template, kept on uninstall.
    let crds = kind(&docs, "CustomResourceDefinition");
    claim(
        "docs/install.md",
        "the chart marks them `helm.sh/resource-policy: keep` (`crds.keep`, default true",
        crds.len() == 3
            && crds.iter().all(|c| c["metadata"]["annotations"]["helm.sh/resource-policy"].as_str() == Some("keep")),
    );
    claim(
        "docs/install.md",
        "**`helm upgrade` upgrades the CRDs**",
        root.join(CHART).join("templates/crds.yaml").exists(),
    );
    // The leader Lease's name.
    let lease_names: Vec<&str> = operator_rules
        .iter()
        .filter(|r| strings(&r["resources"]).contains(&"leases"))
        .flat_map(|r| strings(&r["resourceNames"]))
        .collect();
    claim(
        "docs/operations.md",
        "They elect a leader through the Lease `cluster-security-operator`",
        lease_names == ["cluster-security-operator"],
    );
    // KmsKeyVaultMode's core Events: in the operator's namespace (a Role there), not default.
    let event_role = docs.iter().any(|d| {
        d["kind"].as_str() == Some("Role")
            && d["metadata"]["namespace"].as_str() == Some("csop-chart")
            && d["rules"]
                .as_sequence()
                .into_iter()
                .flatten()
                .any(|r| r["apiGroups"][0].as_str() == Some("") && strings(&r["resources"]) == ["events"])
    });
    claim("docs/install.md", "the KmsKeyVaultMode's Events are core/v1 in the operator's namespace", event_role);
}

/// scripts/release.sh with `args`, run from the repository at `root`.
fn release(root: &std::path::Path, args: &[&str]) -> std::process::Output {
    std::process::Command::new("bash").arg(root.join("scripts/release.sh")).args(args).output().expect("bash runs")
}

/// Issue 33: one release script. Into a temporary directory: the packaged chart (Helm loads it,
/// CRD template and generated CRDs inside), install-<version>.yaml running that version's image,
/// the krew manifest with the version's URLs and the sha256 of the plugin archive that is there
/// (the others said to be missing). On a copy of the repository bumped to 0.2.0: refused while
/// CHANGELOG.md has no 0.2.0 section or the versions disagree; then the image is pinned to 0.2.0
/// although values.yaml still says 0.1.0.
#[test]
fn the_release_script_packages_the_chart_pins_the_image_and_fills_the_krew_manifest() {
    let root = cluster_security_testbed::repo_root();
    let out = tempfile::tempdir().unwrap();
    let plugin = out.path().join("kubectl-clustersecurity_v0.1.0_linux_amd64.tar.gz");
    std::fs::write(&plugin, b"a plugin archive").unwrap();
    let run = release(&root, &["--out", out.path().to_str().unwrap()]);
    assert!(run.status.success(), "{}{}", stdout(&run), stderr(&run));
    let chart = out.path().join("cluster-security-operator-0.1.0.tgz");
    let loaded = std::process::Command::new("python3")
        .args([
            "-c",
            "import sys; from helm_python import chart; c = chart.Chart.load_archive(open(sys.argv[1], 'rb').read()); \
             print(c.name, c.version, sorted(t['name'] for t in c.templates), sorted(f['name'] for f in c.files))",
            chart.to_str().unwrap(),
        ])
        .output()
        .unwrap();
    let loaded = stdout(&loaded);
    assert!(loaded.starts_with("cluster-security-operator 0.1.0"), "{loaded}");
    assert!(
        loaded.contains("templates/crds.yaml") && loaded.contains("crd-sources/clustersecurity.io_crds.yaml"),
        "{loaded}"
    );
    let install = std::fs::read_to_string(out.path().join("install-0.1.0.yaml")).unwrap();
    assert!(install.contains("image: \"ghcr.io/cluster-security-operator/cluster-security-operator:0.1.0\""));
    assert_eq!(install.matches("kind: CustomResourceDefinition").count(), 3);
    let krew = std::fs::read_to_string(out.path().join("clustersecurity.yaml")).unwrap();
    let sha = {
        let out = std::process::Command::new("sha256sum").arg(&plugin).output().unwrap();
        stdout(&out).split_whitespace().next().unwrap().to_string()
    };
    assert!(
        krew.contains(&format!(
            "releases/download/v0.1.0/kubectl-clustersecurity_v0.1.0_linux_amd64.tar.gz\n    sha256: \"{sha}\""
        )),
        "{krew}"
    );
    assert!(stdout(&run).contains("kubectl-clustersecurity_v0.1.0_darwin_arm64.tar.gz is not in"), "{}", stdout(&run));
    assert_eq!(
        std::fs::read_to_string(root.join("plugins/krew/clustersecurity.yaml"))
            .unwrap()
            .matches("example.invalid")
            .count(),
        4,
        "--out leaves the repository's manifest alone"
    );

    // A copy of the repository, bumped to 0.2.0.
    let copy = tempfile::tempdir().unwrap();
    for part in ["scripts", "charts", "deploy", "crds", "plugins", "Cargo.toml", "CHANGELOG.md"] {
        assert!(std::process::Command::new("cp")
            .arg("-r")
            .arg(root.join(part))
            .arg(copy.path())
            .status()
            .unwrap()
            .success());
    }
    let bump = |file: &str, from: &str, to: &str| {
        let path = copy.path().join(file);
        let text = std::fs::read_to_string(&path).unwrap();
        assert!(text.contains(from), "{file}");
        std::fs::write(&path, text.replace(from, to)).unwrap();
    };
    bump("charts/cluster-security-operator/Chart.yaml", "version: 0.1.0", "version: 0.2.0");
    bump("charts/cluster-security-operator/Chart.yaml", "appVersion: \"0.1.0\"", "appVersion: \"0.2.0\"");
    let out2 = copy.path().join("out");
    let refused = release(copy.path(), &["--out", out2.to_str().unwrap()]);
    assert!(!refused.status.success() && stderr(&refused).contains("versions disagree"), "{}", stderr(&refused));
    bump("Cargo.toml", "version = \"0.1.0\"", "version = \"0.2.0\"");
    let refused = release(copy.path(), &["--out", out2.to_str().unwrap()]);
    assert!(!refused.status.success() && stderr(&refused).contains("no section '## [0.2.0]'"), "{}", stderr(&refused));
    bump("CHANGELOG.md", "## [Unreleased]\n", "## [Unreleased]\n\n## [0.2.0] - 2027-01-01\n\n- Something.\n");
    let drifted = release(copy.path(), &["--out", out2.to_str().unwrap()]);
    assert!(!drifted.status.success() && stderr(&drifted).contains("deploy/ differs"), "{}", stderr(&drifted));
    let regenerated =
        std::process::Command::new("python3").arg(copy.path().join("scripts/gen-deploy.py")).status().unwrap();
    assert!(regenerated.success());
    let run = release(copy.path(), &["--out", out2.to_str().unwrap()]);
    assert!(run.status.success(), "{}{}", stdout(&run), stderr(&run));
    let install = std::fs::read_to_string(out2.join("install-0.2.0.yaml")).unwrap();
    assert!(install.contains("cluster-security-operator:0.2.0\""), "the image pinned to the release");
    assert!(std::fs::read_to_string(copy.path().join("charts/cluster-security-operator/values.yaml"))
        .unwrap()
        .contains("tag: \"0.1.0\""));
    let krew = std::fs::read_to_string(out2.join("clustersecurity.yaml")).unwrap();
    assert!(
        krew.contains("  version: v0.2.0")
            && krew.contains("/v0.2.0/kubectl-clustersecurity_v0.2.0_linux_arm64.tar.gz"),
        "{krew}"
    );
    assert!(out2.join("cluster-security-operator-0.2.0.tgz").exists());
}

/// Every flag and variable the chart can set, with every optional value on, is one the
/// operator's command line reads, and parses into the value the chart meant (issue 31: `run`'s
/// flags grouped, not one renamed).
#[test]
fn every_arg_and_env_the_chart_renders_parses() {
    use clap::{CommandFactory, Parser};
    let docs = render(
        r#"{"fullnameOverride": "sec", "watchNamespaces": ["a", "b"],
            "leaderElection": {"enabled": true, "leaseSeconds": 20, "renewBeforeSeconds": 7},
            "webhookClientAuth": {"enabled": true, "caConfigMap": "apiserver-ca", "allowedNames": ["kube-apiserver"]},
            "webhook": {"certManager": {"enabled": true}},
            "azure": {"authorityHost": "https://login.example", "credentialsSecret": "ops/azure"}}"#,
    );
    let container = &pod(&docs)["containers"][0];
    let mut argv: Vec<String> = args(&docs).iter().map(|a| a.to_string()).collect();
    let cli = cluster_security_operator::Cli::command();
    let run = cli.find_subcommand("run").expect("run");
    let env = container["env"].as_sequence().expect("env");
    for entry in env {
        let name = entry["name"].as_str().expect("name");
        let flag = run.get_arguments().find(|a| a.get_env().is_some_and(|e| e == name));
        let value = entry["value"].as_str().map(String::from).unwrap_or_else(|| format!("from-{name}"));
        match flag {
            Some(a) => argv.push(format!("--{}={value}", a.get_long().expect("long"))),
            None => assert!(name == "RUST_LOG", "{name}: rendered by the chart, read by no flag"),
        }
    }
    let parsed = cluster_security_operator::Cli::try_parse_from(
        std::iter::once("cluster-security-operator".to_string()).chain(argv.iter().cloned()),
    )
    .unwrap_or_else(|e| panic!("{argv:?}: {e}"));
    let parsed = format!("{parsed:?}");
    for expected in [
        r#"watch_namespaces: ["a", "b"]"#,
        "lease_seconds: 20",
        "renew_before_seconds: 7",
        r#"lease: "sec""#,
        r#"client_ca_file: Some("/etc/cluster-security-operator/webhook-client-ca/ca.crt")"#,
        r#"client_names: ["kube-apiserver"]"#,
        r#"cert_dir: Some("/etc/cluster-security-operator/webhook-cert")"#,
        r#"config: "sec""#,
        r#"service: "sec-webhook""#,
        r#"secret: "sec-webhook-tls""#,
        r#"authority_host: Some("https://login.example")"#,
        r#"credentials_secret: Some("ops/azure")"#,
        r#"pod_name: Some("from-POD_NAME")"#,
        r#"namespace: "from-POD_NAMESPACE""#,
        "log_format: Json",
    ] {
        assert!(parsed.contains(expected), "{expected} not in {parsed}");
    }
}
