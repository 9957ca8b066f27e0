//! End to end against a real kube-apiserver + etcd (the testbed): CRDs install and are
//! Established, printer columns and `kubectl explain` work, the webhook refuses every invalid
//! example with its rule's message, `inCluster` can't change on update, and valid objects get
//! observedGeneration and conditions from the operator.

use crate::support;

use std::sync::OnceLock;
use std::time::Duration;

use crate::support::{helm_render, stderr, stdout};
use cluster_security_api::ClusterSecurityPolicy;
use cluster_security_testbed::{wait_until, ControlPlane};
use kube::{Api, ResourceExt};

/// The shared environment, plus the example brokers.
fn env() -> &'static support::Env {
    static EXAMPLES: OnceLock<()> = OnceLock::new();
    let env = support::env();
    EXAMPLES.get_or_init(|| {
        let out = env.cp.kubectl(&["apply", "-f", &examples("00-namespace-and-brokers.yaml")]);
        assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    });
    env
}

fn examples(name: &str) -> String {
    format!("{}/examples/{name}", cluster_security_testbed::repo_root().display())
}

/// Apply once the webhook's caBundle is published.
async fn apply_when_webhook_ready(cp: &ControlPlane, file: &str) -> std::process::Output {
    support::webhook_ready(cp).await;
    cp.kubectl(&["apply", "-f", file])
}

#[tokio::test]
async fn crds_are_established_and_explained() {
    let cp = &env().cp;
    for crd in ["clustersecuritypolicies", "certificaterotations", "kmskeyvaultmodes"] {
        let out = cp.kubectl(&[
            "get",
            &format!("crd/{crd}.clustersecurity.io"),
            "-o",
            "jsonpath={.status.conditions[?(@.type==\"Established\")].status}",
        ]);
        assert_eq!(stdout(&out), "True", "{crd}: {}", stderr(&out));
    }
    let text = explain(cp, "clustersecuritypolicy.spec.encryptionInTransit").await;
    assert!(text.contains("Broker-to-broker encryption. Cannot be changed after creation."), "{text}");
    let text = explain(cp, "kmsmode.spec.networkAccess").await;
    assert!(text.contains("Public or Private network access of the key vault"), "{text}");
    let text = explain(cp, "certrot.spec.internal").await;
    assert!(text.contains("can only be self-generated"), "{text}");
    support::assert_no_secret_leaks(&[]).await;
}

/// `kubectl explain`; the apiserver publishes a new CRD's OpenAPI a little after it is Established.
async fn explain(cp: &ControlPlane, path: &str) -> String {
    wait_until(Duration::from_secs(60), &format!("kubectl explain {path}"), || {
        let out = cp.kubectl(&["explain", path]);
        async move {
            if out.status.success() && !out.stdout.is_empty() {
                Ok(stdout(&out))
            } else {
                Err(stderr(&out))
            }
        }
    })
    .await
    .unwrap()
}

#[tokio::test]
async fn invalid_examples_are_refused_with_the_rule() {
    let cp = &env().cp;
    let dir = format!("{}/examples/invalid", cluster_security_testbed::repo_root().display());
    let mut files: Vec<_> = std::fs::read_dir(&dir).unwrap().map(|e| e.unwrap().path()).collect();
    files.sort();
    assert!(files.len() >= 6, "invalid examples exist");
    for file in files {
        let text = std::fs::read_to_string(&file).unwrap();
        let rule =
            text.lines().find_map(|l| l.strip_prefix("# expect: ")).expect("each invalid example names its rule");
        let out = apply_when_webhook_ready(cp, file.to_str().unwrap()).await;
        let err = stderr(&out);
        assert!(!out.status.success(), "{} was accepted", file.display());
        assert!(err.contains("denied the request") && err.contains(rule), "{}: {err}", file.display());
    }
    // Nothing of them was stored.
    let out = cp.kubectl(&["get", "clustersecurity", "-A", "-o", "name"]);
    assert!(!stdout(&out).contains("invalid-"), "{}", stdout(&out));
    support::assert_no_secret_leaks(&[]).await;
}

#[tokio::test]
async fn in_cluster_change_is_refused_on_update() {
    let cp = &env().cp;
    // Its own workload name: the examples' policy targets orders-kafka in this namespace, and a
    // workload has one policy.
    let manifest = |in_cluster: bool| {
        format!(
            "apiVersion: clustersecurity.io/v1alpha1\nkind: ClusterSecurityPolicy\nmetadata: {{name: immutable, namespace: kafka}}\nspec:\n  clusterRef: {{kind: StatefulSet, name: immutable-kafka}}\n  clientAuthentication: {{unauthenticated: {{enabled: true}}}}\n  encryptionInTransit: {{clientBroker: PLAINTEXT, inCluster: {in_cluster}}}\n"
        )
    };
    let file = cp.dir().join("immutable.yaml");
    std::fs::write(&file, manifest(true)).unwrap();
    let out = apply_when_webhook_ready(cp, file.to_str().unwrap()).await;
    assert!(out.status.success(), "{}", stderr(&out));
    std::fs::write(&file, manifest(false)).unwrap();
    let out = cp.kubectl(&["apply", "-f", file.to_str().unwrap()]);
    assert!(!out.status.success());
    assert!(stderr(&out).contains("InClusterEncryptionImmutable"), "{}", stderr(&out));
    assert!(stderr(&out).contains("you can't change the in-cluster (broker-to-broker) encryption setting"));
    let out =
        cp.kubectl(&["get", "csp", "immutable", "-n", "kafka", "-o", "jsonpath={.spec.encryptionInTransit.inCluster}"]);
    assert_eq!(stdout(&out), "true", "the stored object is untouched");
    support::assert_no_secret_leaks(&[]).await;
}

#[tokio::test]
async fn valid_examples_get_status_and_printer_columns() {
    let cp = &env().cp;
    for f in ["clustersecuritypolicy.yaml", "certificaterotation.yaml", "kmskeyvaultmode.yaml"] {
        let out = apply_when_webhook_ready(cp, &examples(f)).await;
        assert!(out.status.success(), "{f}: {}", stderr(&out));
    }
    let client = cp.client().await.unwrap();
    let api: Api<ClusterSecurityPolicy> = Api::namespaced(client, "kafka");
    let csp = wait_until(Duration::from_secs(30), "observedGeneration of csp/orders", || {
        let api = api.clone();
        async move {
            let o = api.get("orders").await.map_err(|e| e.to_string())?;
            let st = o.status.clone().unwrap_or_default();
            (st.observed_generation == o.metadata.generation && !st.conditions.is_empty())
                .then_some(o)
                .ok_or_else(|| format!("{st:?}"))
        }
    })
    .await
    .unwrap();
    let status = csp.status.clone().unwrap();
    let ready = status.conditions.iter().find(|c| c.type_ == "Ready").expect("Ready condition");
    assert_eq!(ready.observed_generation, csp.metadata.generation);
    assert!(status.conditions.iter().all(|c| c.type_ != "Stalled"), "a valid spec is not stalled");
    assert_eq!(status.authentication.as_deref(), Some("mTLS"));
    assert_eq!(csp.name_any(), "orders");

    // Every kind reports observedGeneration (as kubectl sees it) and the contract's columns.
    for (kind, name, ns) in [("certrot", "orders", Some("kafka")), ("kmsmode", "cluster", None)] {
        let mut args = vec!["get", kind, name, "-o", "jsonpath={.status.observedGeneration}"];
        if let Some(ns) = ns {
            args.extend(["-n", ns]);
        }
        wait_until(Duration::from_secs(30), &format!("observedGeneration of {kind}/{name}"), || {
            let out = cp.kubectl(&args);
            async move { (stdout(&out) == "1").then_some(()).ok_or_else(|| stdout(&out) + &stderr(&out)) }
        })
        .await
        .unwrap();
    }
    let out = cp.kubectl(&["get", "csp,certrot", "-n", "kafka"]);
    let text = stdout(&out);
    let headers: Vec<Vec<&str>> =
        text.lines().filter(|l| l.starts_with("NAME")).map(|l| l.split_whitespace().collect()).collect();
    assert!(
        headers.contains(&vec![
            "NAME",
            "CLUSTER",
            "AUTH",
            "CLIENT-BROKER",
            "STATE",
            "OPERATION",
            "READY",
            "REASON",
            "AGE"
        ]),
        "{text}"
    );
    assert!(
        headers.contains(&vec![
            "NAME",
            "CLUSTER",
            "EXTERNAL-LABEL",
            "INTERNAL-LABEL",
            "CLIENT-IMPACT",
            "OPERATION",
            "READY",
            "REASON",
            "AGE"
        ]),
        "{text}"
    );
    assert!(text.contains("upgradedlabel1") && text.contains("orders-kafka"), "{text}");
    // The client example is a valid Job and ConfigMap for this namespace (the API server checks
    // it; no container runs here).
    let out = cp.kubectl(&["apply", "--dry-run=server", "-f", &examples("clients/mtls-client.yaml")]);
    assert!(out.status.success(), "examples/clients: {}", stderr(&out));
    let out = cp.kubectl(&["get", "kmsmode"]);
    let first =
        stdout(&out).lines().next().unwrap_or_default().split_whitespace().map(String::from).collect::<Vec<_>>();
    assert_eq!(first, ["NAME", "MODE", "KMS", "PHASE", "PROGRESS", "READY", "REASON", "AGE"]);
    let out = cp.kubectl(&["get", "clustersecurity", "-A", "-o", "name"]);
    let names = stdout(&out);
    for n in [
        "clustersecuritypolicy.clustersecurity.io/orders",
        "certificaterotation.clustersecurity.io/orders",
        "kmskeyvaultmode.clustersecurity.io/cluster",
    ] {
        assert!(names.contains(n), "category clustersecurity lists {n}: {names}");
    }

    // GitOps: once the operator has written status and annotated the brokers, re-applying the
    // same manifests changes nothing (kubectl diff exits 0), so Argo CD / Flux see no drift.
    for f in ["00-namespace-and-brokers.yaml", "clustersecuritypolicy.yaml", "certificaterotation.yaml"] {
        let out = cp.kubectl(&["diff", "-f", &examples(f)]);
        assert_eq!(out.status.code(), Some(0), "{f} shows a diff:\n{}{}", stdout(&out), stderr(&out));
    }
    // What Argo CD's ignoreDifferences.managedFieldsManagers relies on: on the broker workload the
    // operator's field manager owns the clustersecurity.io/ pod-template annotations and the
    // wiring (spec.mounts) — volumes named csop-…, and in the broker container its name (the
    // list key) and mounts under /etc/kafka/security/ — and nothing else.
    let client = cp.client().await.unwrap();
    let sts =
        Api::<k8s_openapi::api::apps::v1::StatefulSet>::namespaced(client, "kafka").get("orders-kafka").await.unwrap();
    let ours: Vec<_> = sts
        .metadata
        .managed_fields
        .unwrap_or_default()
        .into_iter()
        .filter(|m| m.manager.as_deref() == Some("cluster-security-operator"))
        .collect();
    assert_eq!(ours.len(), 1, "one managedFields entry of the operator: {ours:?}");
    assert_eq!(ours[0].operation.as_deref(), Some("Apply"));
    let fields = ours[0].fields_v1.as_ref().unwrap().0.clone();
    let annotations = &fields["f:spec"]["f:template"]["f:metadata"]["f:annotations"];
    let owned: Vec<&String> = annotations.as_object().expect("owns pod-template annotations").keys().collect();
    assert!(!owned.is_empty() && owned.iter().all(|k| k.starts_with("f:clustersecurity.io/")), "{owned:?}");
    let mut rest = fields.clone();
    rest["f:spec"]["f:template"]["f:metadata"].as_object_mut().unwrap().remove("f:annotations");
    let pod = rest["f:spec"]["f:template"].as_object_mut().unwrap().remove("f:spec").expect("owns the wiring");
    let pod = pod.as_object().unwrap();
    assert_eq!(pod.keys().collect::<Vec<_>>(), ["f:containers", "f:volumes"], "{pod:?}");
    let volumes = pod["f:volumes"].as_object().unwrap();
    assert!(!volumes.is_empty() && volumes.keys().all(|k| k.starts_with(r#"k:{"name":"csop-"#)), "{volumes:?}");
    for (key, c) in pod["f:containers"].as_object().unwrap() {
        let c = c.as_object().unwrap();
        assert_eq!(c.keys().collect::<Vec<_>>(), [".", "f:name", "f:volumeMounts"], "{key}: {c:?}");
        let mounts = c["f:volumeMounts"].as_object().unwrap();
        assert!(mounts.keys().all(|k| k.starts_with(r#"k:{"mountPath":"/etc/kafka/security/"#)), "{mounts:?}");
    }
    assert_eq!(
        rest,
        serde_json::json!({"f:spec": {"f:template": {"f:metadata": {}}}}),
        "the operator owns no other field of the workload"
    );
    // kubectl wait reads our conditions. (This control plane has no Azure to reach, so the
    // KmsKeyVaultMode is Stalled with CloudAccessFailed, which wait sees as well.)
    for (what, ns, condition) in [
        ("csp/orders", Some("kafka"), "--for=condition=Ready"),
        ("certrot/orders", Some("kafka"), "--for=condition=Ready"),
        ("kmsmode/cluster", None, "--for=condition=Stalled"),
    ] {
        let mut args = vec!["wait", condition, what, "--timeout=60s"];
        if let Some(ns) = ns {
            args.extend(["-n", ns]);
        }
        let out = cp.kubectl(&args);
        assert!(out.status.success() && stdout(&out).contains("condition met"), "{what}: {}", stderr(&out));
    }
    support::assert_no_secret_leaks(&[]).await;
}

#[tokio::test]
async fn metrics_health_and_readiness_are_served() {
    use cluster_security_testbed::operator::http_get;
    let env = env();
    let port = env.operator.health_port;
    assert_eq!(http_get(port, "/healthz").map(|(c, _)| c), Some(200));
    assert_eq!(http_get(port, "/readyz"), Some((200, "ready".to_string())));
    // Objects of every kind exist (the examples): each kind's reconciles are counted.
    for f in ["clustersecuritypolicy.yaml", "certificaterotation.yaml", "kmskeyvaultmode.yaml"] {
        let out = apply_when_webhook_ready(&env.cp, &examples(f)).await;
        assert!(out.status.success(), "{f}: {}", stderr(&out));
    }
    // A denied review, so that the webhook's series have a sample.
    let denied = apply_when_webhook_ready(&env.cp, &examples("invalid/csp-scram-plaintext.yaml")).await;
    assert!(!denied.status.success());
    let text = wait_until(Duration::from_secs(60), "every kind's reconciles in /metrics", || async move {
        let (code, text) = http_get(port, "/metrics").ok_or("no answer")?;
        let counted = ["ClusterSecurityPolicy", "CertificateRotation", "KmsKeyVaultMode"].iter().all(|k| {
            text.lines()
                .any(|l| l.starts_with(&format!("csop_reconciliations_total{{kind=\"{k}\"}} ")) && !l.ends_with(" 0"))
        });
        let expiry = ["external", "external-ca", "internal-ca"].iter().all(|slot| {
            text.contains(&format!(
                "csop_certificate_expiration_timestamp_seconds{{namespace=\"kafka\",name=\"orders\",slot=\"{slot}\"}}"
            ))
        }) && text.contains(
            "csop_certificate_renewal_timestamp_seconds{namespace=\"kafka\",name=\"orders\",slot=\"internal-ca\"}",
        );
        (code == 200 && counted && expiry).then_some(text.clone()).ok_or(text)
    })
    .await
    .unwrap();
    for expected in [
        "# TYPE csop_reconcile_duration_seconds histogram",
        "csop_reconcile_duration_seconds_count{kind=\"CertificateRotation\"}",
        "# TYPE csop_reconcile_errors counter",
        "csop_operations{kind=\"ClusterSecurityPolicy\",state=\"UPDATE_COMPLETE\"}",
        "csop_leader 1",
        &format!("csop_build_info{{version=\"{}\"}} 1", env!("CARGO_PKG_VERSION")),
        "csop_webhook_requests_total{kind=\"ClusterSecurityPolicy\",operation=\"CREATE\",allowed=\"false\"}",
        "csop_webhook_request_duration_seconds_count{kind=\"ClusterSecurityPolicy\"}",
        "# TYPE csop_stalled gauge",
        "csop_certificate_renewal_timestamp_seconds{namespace=\"kafka\",name=\"orders\",slot=\"external\"}",
        "# EOF",
    ] {
        assert!(text.contains(expected), "{expected} missing from:\n{text}");
    }
    assert!(!text.contains("BEGIN"), "no key material in metrics");
    // Structured logs: a reconcile's lines carry the object (and its operation) from its span.
    let log = env.operator.log_text();
    assert!(
        log.lines().any(|l| l.contains("reconcile{")
            && l.contains("ClusterSecurityPolicy")
            && l.contains("namespace=kafka")
            && l.contains("name=orders")
            && l.contains("operation_id=")
            && l.contains("event=")),
        "no reconcile line with kind, namespace, name, operation id and event in the log"
    );

    // The chart's alerts and the Grafana dashboard: PromQL that Prometheus parses, over metrics
    // the operator exports.
    // The families the operator exports (a family shows in a scrape once it has a series).
    let catalogue =
        std::process::Command::new(env!("CARGO_BIN_EXE_cluster-security-operator")).arg("metrics").output().unwrap();
    let catalogue = String::from_utf8(catalogue.stdout).unwrap();
    let families: Vec<&str> = catalogue.lines().filter_map(|l| l.split(' ').next()).collect();
    for scraped in text.lines().filter_map(|l| l.strip_prefix("# TYPE ")?.split(' ').next()) {
        assert!(families.contains(&scraped), "{scraped} is scraped but not in the catalogue");
    }
    let exported = |name: &str| {
        let base = ["_total", "_bucket", "_count", "_sum"].iter().find_map(|s| name.strip_suffix(s)).unwrap_or(name);
        families.contains(&name) || families.contains(&base)
    };
    let out = helm_render(Some(r#"{"metrics": {"prometheusRule": {"enabled": true}}}"#));
    assert!(out.status.success(), "{}", stderr(&out));
    let rendered = stdout(&out);
    let rule = rendered.split("\n---\n").find(|d| d.contains("kind: PrometheusRule")).expect("a PrometheusRule");
    let rule: serde_yaml::Value = serde_yaml::from_str(rule).unwrap();
    let mut exprs: Vec<String> = rule["spec"]["groups"][0]["rules"]
        .as_sequence()
        .unwrap()
        .iter()
        .map(|r| r["expr"].as_str().unwrap().to_string())
        .collect();
    assert!(exprs.len() >= 8, "alerts: {exprs:?}");
    let root = cluster_security_testbed::repo_root();
    let dashboard: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(root.join("deploy/grafana-dashboard.json")).unwrap()).unwrap();
    for panel in dashboard["panels"].as_array().unwrap() {
        for target in panel["targets"].as_array().unwrap() {
            exprs.push(target["expr"].as_str().unwrap().to_string());
        }
    }
    for expr in &exprs {
        promql_parser::parser::parse(expr).unwrap_or_else(|e| panic!("{expr}: {e}"));
        let names = expr.split(|c: char| !(c.is_ascii_alphanumeric() || c == '_')).filter(|w| w.starts_with("csop_"));
        for name in names {
            assert!(exported(name), "{expr} reads {name}, which the operator does not export");
        }
    }
    support::assert_no_secret_leaks(&[]).await;
}

#[tokio::test]
async fn the_chart_grants_only_what_the_operator_uses() {
    let cp = &env().cp;
    let sa = cluster_security_testbed::operator::SERVICE_ACCOUNT_USER;
    let can = |verb: &str, what: &str, ns: Option<&str>| {
        let mut args = vec!["auth", "can-i", verb, what, "--as", sa];
        if let Some((resource, "status")) = what.split_once("/status").map(|(r, _)| (r, "status")) {
            args = vec!["auth", "can-i", verb, resource, "--subresource=status", "--as", sa];
        }
        if let Some(ns) = ns {
            args.extend(["-n", ns]);
        }
        stdout(&cp.kubectl(&args)).trim() == "yes"
    };
    for (verb, what) in [
        ("patch", "statefulsets.apps"),
        ("patch", "clustersecuritypolicies.clustersecurity.io/status"),
        ("create", "secrets"),
        ("create", "leases.coordination.k8s.io"),
    ] {
        let ns = (what == "leases.coordination.k8s.io").then_some("cluster-security-operator");
        assert!(can(verb, what, ns), "the operator needs {verb} {what}");
    }
    for (verb, what, ns) in [
        ("delete", "secrets", None),
        ("delete", "statefulsets.apps", None),
        ("update", "clustersecuritypolicies.clustersecurity.io", None),
        ("create", "pods", None),
        ("patch", "validatingwebhookconfigurations.admissionregistration.k8s.io/someone-else", None),
        ("create", "leases.coordination.k8s.io", Some("kube-system")),
        ("patch", "leases.coordination.k8s.io/other-lease", Some("cluster-security-operator")),
    ] {
        assert!(!can(verb, what, ns), "the chart grants {verb} {what} in {ns:?}, which the operator never uses");
    }

    // Users' roles through the built-in ones (aggregated by the controller-manager): view reads
    // policies but not CertificateRotations (their spec may hold a private key); edit manages
    // both; neither reaches the cluster-wide KmsKeyVaultModes.
    let ns = "rbac-users";
    let _ = cp.kubectl(&["create", "namespace", ns]);
    for (user, role) in [("viewer", "view"), ("editor", "edit")] {
        let out = cp.kubectl(&[
            "create",
            "rolebinding",
            user,
            "-n",
            ns,
            &format!("--clusterrole={role}"),
            &format!("--user={user}"),
        ]);
        assert!(out.status.success(), "{}", stderr(&out));
    }
    let user_can = |user: &str, verb: &str, what: &str| {
        stdout(&cp.kubectl(&["auth", "can-i", verb, what, "--as", user, "-n", ns])).trim() == "yes"
    };
    wait_until(Duration::from_secs(30), "view and edit aggregate our roles", || {
        let ready = user_can("viewer", "list", "clustersecuritypolicies.clustersecurity.io")
            && user_can("editor", "create", "certificaterotations.clustersecurity.io");
        async move { ready.then_some(()).ok_or_else(|| "not aggregated yet".to_string()) }
    })
    .await
    .unwrap();
    assert!(!user_can("viewer", "get", "certificaterotations.clustersecurity.io"), "view reads no rotation specs");
    assert!(!user_can("viewer", "create", "clustersecuritypolicies.clustersecurity.io"));
    assert!(user_can("editor", "delete", "clustersecuritypolicies.clustersecurity.io"));
    assert!(!user_can("editor", "create", "kmskeyvaultmodes.clustersecurity.io"), "KMS is not a namespace role's");
    let status = cp.kubectl(&[
        "auth",
        "can-i",
        "patch",
        "certificaterotations.clustersecurity.io",
        "--subresource=status",
        "--as",
        "editor",
        "-n",
        ns,
    ]);
    assert_eq!(stdout(&status).trim(), "no", "status is the operator's");
    support::assert_no_secret_leaks(&[]).await;
}

/// `text` as this test cluster can take it in a server-side dry run: what its API server serves
/// ([`cluster_security_testbed::operator::served_by`]), with the webhook configuration renamed —
/// the test environment's own one (same name, pointing at a URL) would be merged into it.
fn served_only(cp: &ControlPlane, text: &str) -> String {
    cluster_security_testbed::operator::served_by(cp, text)
        .split("\n---\n")
        .map(|d| {
            if d.contains("kind: ValidatingWebhookConfiguration") {
                d.replacen(
                    "\n  name: cluster-security-operator\n",
                    "\n  name: cluster-security-operator-ssa-check\n",
                    1,
                )
            } else {
                d.to_string()
            }
        })
        .collect::<Vec<_>>()
        .join("\n---\n")
}

#[tokio::test]
async fn deploy_manifests_are_accepted_by_the_apiserver() {
    let cp = &env().cp;
    let root = cluster_security_testbed::repo_root().display().to_string();
    // deploy/operator.yaml is what the chart renders (no drift).
    let out = std::process::Command::new("python3")
        .args([&format!("{root}/scripts/gen-deploy.py"), "--check"])
        .output()
        .expect("python3 runs");
    assert!(out.status.success(), "{}", stderr(&out));
    let dir = format!("{root}/deploy");
    // Server-side apply, as Flux and Helm 4 do (every list entry needs its merge keys, e.g. a
    // Service port's protocol): the kustomization and the one-file install.
    let kustomized = cp.kubectl(&["kustomize", &dir]);
    assert!(kustomized.status.success(), "{}", stderr(&kustomized));
    let apply = |text: &str| {
        cp.kubectl_with_stdin(
            &["apply", "--server-side", "--force-conflicts", "--dry-run=server", "-f", "-"],
            Some(&served_only(cp, text)),
        )
    };
    let out = apply(&stdout(&kustomized));
    assert!(out.status.success(), "{}", stderr(&out));
    let one_file = apply(&std::fs::read_to_string(format!("{root}/deploy/install.yaml")).unwrap());
    assert!(one_file.status.success(), "{}", stderr(&one_file));
    assert_eq!(
        stdout(&one_file).lines().count(),
        stdout(&out).lines().count(),
        "install.yaml holds what deploy/ does:\n{}\n---\n{}",
        stdout(&one_file),
        stdout(&out)
    );
    let text = stdout(&out);
    for what in [
        "namespace/cluster-security-operator",
        "customresourcedefinition",
        "clusterrole",
        "role.rbac.authorization.k8s.io/cluster-security-operator-leader-election",
        "service/cluster-security-operator-metrics",
        "deployment.apps/cluster-security-operator",
        "validatingwebhookconfiguration",
    ] {
        assert!(text.contains(what), "{what} missing from:\n{text}");
    }
    support::assert_no_secret_leaks(&[]).await;
}

#[tokio::test]
async fn helm_chart_lints_renders_and_is_accepted_by_the_apiserver() {
    let cp = &env().cp;
    let out = helm_render(None);
    assert!(out.status.success(), "helm lint/render (pip install helm-python-sdk): {}", stderr(&out));
    let rendered = stdout(&out);
    assert!(rendered.contains("namespace: csop-chart"), "release namespace templated");
    let _ = cp.kubectl(&["create", "namespace", "csop-chart"]);
    let out = cp.kubectl_with_stdin(
        &["apply", "--server-side", "--dry-run=server", "-f", "-"],
        Some(&served_only(cp, &rendered)),
    );
    assert!(out.status.success(), "{}", stderr(&out));
    assert!(stdout(&out).contains("deployment.apps/cluster-security-operator"), "{}", stdout(&out));

    // values.schema.json: Helm refuses bad values, naming the value and what is wrong.
    for (values, says) in [
        (r#"{"replicas": "two"}"#, "/replicas"),
        (r#"{"logFormat": "xml"}"#, "/logFormat"),
        (r#"{"azure": {"armEndpoint": "http://management.azure.com"}}"#, "/azure/armEndpoint"),
        (r#"{"replica": 2}"#, "additional properties 'replica' not allowed"),
    ] {
        let out = helm_render(Some(values));
        assert!(!out.status.success(), "values {values} were accepted");
        assert!(stderr(&out).contains(says), "values {values}: {}", stderr(&out));
    }
    // A good override renders, and reaches the Deployment.
    let out = helm_render(Some(
        r#"{"azure": {"credentialsSecret": "azure-credentials", "workloadIdentity": {"clientId": "0b2c6a4e"}}}"#,
    ));
    assert!(out.status.success(), "{}", stderr(&out));
    let rendered = stdout(&out);
    assert!(
        rendered.contains("CSO_AZURE_CREDENTIALS_SECRET") && rendered.contains("azure.workload.identity/client-id"),
        "{rendered}"
    );
    // Optional ServiceMonitor; more than one replica needs leader election.
    let out = helm_render(Some(r#"{"metrics": {"serviceMonitor": {"enabled": true, "labels": {"release": "prom"}}}}"#));
    assert!(out.status.success(), "{}", stderr(&out));
    assert!(stdout(&out).contains("kind: ServiceMonitor") && stdout(&out).contains("release: prom"));
    assert!(!rendered.contains("kind: ServiceMonitor"), "off by default");
    let out = helm_render(Some(r#"{"replicas": 3, "leaderElection": {"enabled": false}}"#));
    assert!(!out.status.success(), "3 replicas without leader election were accepted");
    assert!(stderr(&out).contains("needs leaderElection.enabled=true"), "{}", stderr(&out));

    // A platform team's values: each reaches the Deployment, and the result applies server-side.
    let digest = format!("sha256:{}", "ab".repeat(32));
    let values = serde_json::json!({
        "image": {"digest": digest, "pullSecrets": ["regcred"]},
        "tolerations": [{"key": "dedicated", "operator": "Equal", "value": "ops", "effect": "NoSchedule"}],
        "nodeSelector": {"kubernetes.io/os": "linux"},
        "topologySpreadConstraints": [{"maxSkew": 1, "topologyKey": "topology.kubernetes.io/zone", "whenUnsatisfiable": "ScheduleAnyway"}],
        "priorityClassName": "system-cluster-critical",
        "podAnnotations": {"example.com/team": "platform"},
        "podLabels": {"team": "platform"},
        "extraArgs": ["--concurrent-reconciles=4"],
        "extraEnv": [{"name": "HTTPS_PROXY", "value": "http://proxy:3128"}],
        "logLevel": "info,cluster_security_operator=debug",
        "watchNamespaces": ["csop-chart"],
        "controllers": {"kmsKeyVaultMode": false},
        "networkPolicy": {"enabled": true, "apiServerCIDRs": ["10.0.0.1/32"]}
    })
    .to_string();
    let out = helm_render(Some(&values));
    assert!(out.status.success(), "{}", stderr(&out));
    let rendered = stdout(&out);
    for expected in [
        format!("cluster-security-operator@{digest}"),
        "- name: \"regcred\"".to_string(),
        "key: dedicated".to_string(),
        "kubernetes.io/os: linux".to_string(),
        "topology.kubernetes.io/zone".to_string(),
        "priorityClassName: \"system-cluster-critical\"".to_string(),
        "example.com/team: platform".to_string(),
        "team: platform".to_string(),
        "\"--concurrent-reconciles=4\"".to_string(),
        "name: HTTPS_PROXY".to_string(),
        "{name: RUST_LOG, value: \"info,cluster_security_operator=debug\"}".to_string(),
        "--watch-namespaces=csop-chart".to_string(),
        "--controllers=ClusterSecurityPolicy,CertificateRotation\n".to_string(),
        "kind: NetworkPolicy".to_string(),
        "kind: PodDisruptionBudget".to_string(),
    ] {
        assert!(rendered.contains(&expected), "{expected} missing from the render:\n{rendered}");
    }
    assert!(!rendered.contains("runAsUser"), "no fixed UID (OpenShift assigns its own)");
    let out = cp.kubectl_with_stdin(
        &["apply", "--server-side", "--dry-run=server", "-f", "-"],
        Some(&served_only(cp, &rendered)),
    );
    assert!(out.status.success(), "{}", stderr(&out));
    for (bad, says) in [
        (r#"{"image": {"digest": "latest"}}"#, "/image/digest"),
        (r#"{"extraArgs": ["concurrent-reconciles=4"]}"#, "/extraArgs/0"),
        (r#"{"watchNamespaces": ["Team_A"]}"#, "/watchNamespaces/0"),
    ] {
        let out = helm_render(Some(bad));
        assert!(!out.status.success(), "values {bad} were accepted");
        assert!(stderr(&out).contains(says), "values {bad}: {}", stderr(&out));
    }
    support::assert_no_secret_leaks(&[]).await;
}

/// Every document of a chart render with `values`, parsed.
fn rendered_docs(values: &str) -> Vec<serde_yaml::Value> {
    crate::support::rendered(&helm_render(Some(values)))
}

/// The rules of each `kind` object (ClusterRole, Role), by name (`namespace/name` for a Role).
fn rules_of(docs: &[serde_yaml::Value], kind: &str) -> Vec<(String, serde_yaml::Value)> {
    docs.iter()
        .filter(|d| d["kind"].as_str() == Some(kind))
        .flat_map(|d| {
            let name = match d["metadata"]["namespace"].as_str() {
                Some(ns) => format!("{ns}/{}", d["metadata"]["name"].as_str().unwrap_or_default()),
                None => d["metadata"]["name"].as_str().unwrap_or_default().to_string(),
            };
            d["rules"].as_sequence().cloned().unwrap_or_default().into_iter().map(move |r| (name.clone(), r))
        })
        .collect()
}

fn strings(v: &serde_yaml::Value) -> Vec<&str> {
    v.as_sequence().into_iter().flatten().filter_map(|s| s.as_str()).collect()
}

/// The `--controllers=` flag of the rendered Deployment.
fn controllers_flag(docs: &[serde_yaml::Value]) -> String {
    let deployment = docs.iter().find(|d| d["kind"].as_str() == Some("Deployment")).expect("a Deployment");
    strings(&deployment["spec"]["template"]["spec"]["containers"][0]["args"])
        .into_iter()
        .find_map(|a| a.strip_prefix("--controllers="))
        .expect("a --controllers flag")
        .to_string()
}

/// Issue 30: a namespace-scoped install (`watchNamespaces`) holds nothing cluster-wide on
/// Secrets or ConfigMaps: the workloads rules are a Role in each watched namespace, the KMS
/// controller (which re-encrypts every Secret of the cluster) is off unless set to `true`
/// explicitly — the one documented exception — and the only cluster-wide right on Namespaces is
/// `get` of the watched ones by name (their trust-copy consent annotation). A cluster-wide
/// install keeps KMS on and reads Namespaces with get/list/watch.
#[test]
fn a_scoped_chart_grants_nothing_cluster_wide_on_secrets_or_configmaps() {
    let tenant_data = |rule: &serde_yaml::Value| {
        strings(&rule["resources"]).iter().any(|r| ["secrets", "configmaps", "*"].contains(r))
    };
    let scoped = rendered_docs(r#"{"watchNamespaces": ["kafka"]}"#);
    let cluster_wide: Vec<_> = rules_of(&scoped, "ClusterRole").into_iter().filter(|(_, r)| tenant_data(r)).collect();
    assert!(cluster_wide.is_empty(), "ClusterRoles of a scoped install grant Secrets/ConfigMaps: {cluster_wide:?}");
    let flag = controllers_flag(&scoped);
    assert_eq!(flag, "ClusterSecurityPolicy,CertificateRotation", "KMS off by default with watchNamespaces");
    // What the workloads need is still there, in the watched namespace only.
    let roles = rules_of(&scoped, "Role");
    assert!(
        roles.iter().any(|(name, r)| name == "kafka/cluster-security-operator-workloads"
            && strings(&r["resources"]).contains(&"secrets")),
        "the workloads Role in kafka: {roles:?}"
    );
    assert!(scoped.iter().any(|d| d["kind"].as_str() == Some("RoleBinding")
        && d["metadata"]["namespace"].as_str() == Some("kafka")
        && d["roleRef"]["kind"].as_str() == Some("Role")
        && d["roleRef"]["name"].as_str() == Some("cluster-security-operator-workloads")));
    // Namespaces: get of the watched ones by name, nothing else.
    let ns_rules: Vec<_> = rules_of(&scoped, "ClusterRole")
        .into_iter()
        .filter(|(_, r)| strings(&r["resources"]).contains(&"namespaces"))
        .collect();
    assert_eq!(ns_rules.len(), 1, "{ns_rules:?}");
    assert_eq!(strings(&ns_rules[0].1["verbs"]), ["get"], "{ns_rules:?}");
    assert_eq!(strings(&ns_rules[0].1["resourceNames"]), ["kafka"], "{ns_rules:?}");

    // The explicit exception: KMS asked for by name with watchNamespaces.
    let kms = rendered_docs(r#"{"watchNamespaces": ["kafka"], "controllers": {"kmsKeyVaultMode": true}}"#);
    assert_eq!(controllers_flag(&kms), "ClusterSecurityPolicy,CertificateRotation,KmsKeyVaultMode");
    let kms_rules = rules_of(&kms, "ClusterRole");
    assert!(
        kms_rules.iter().any(|(name, r)| name == "cluster-security-operator-kms"
            && strings(&r["resources"]) == ["secrets"]
            && strings(&r["verbs"]).contains(&"patch")),
        "{kms_rules:?}"
    );
    assert!(kms.iter().any(|d| d["kind"].as_str() == Some("ClusterRoleBinding")
        && d["roleRef"]["name"].as_str() == Some("cluster-security-operator-kms")));

    // Cluster-wide (default values): KMS on, Namespaces read with get/list/watch.
    let default = rendered_docs("{}");
    assert_eq!(controllers_flag(&default), "ClusterSecurityPolicy,CertificateRotation,KmsKeyVaultMode");
    let ns_rules: Vec<_> = rules_of(&default, "ClusterRole")
        .into_iter()
        .filter(|(_, r)| strings(&r["resources"]).contains(&"namespaces"))
        .collect();
    assert_eq!(ns_rules.len(), 1, "{ns_rules:?}");
    assert_eq!(strings(&ns_rules[0].1["verbs"]), ["get", "list", "watch"], "{ns_rules:?}");
    assert!(ns_rules[0].1.get("resourceNames").is_none(), "{ns_rules:?}");
    assert!(rules_of(&default, "ClusterRole")
        .iter()
        .any(|(name, r)| name == "cluster-security-operator-workloads"
            && strings(&r["resources"]).contains(&"configmaps")));
    // Explicitly off cluster-wide: no KMS grant, no KMS controller.
    let off = rendered_docs(r#"{"controllers": {"kmsKeyVaultMode": false}}"#);
    assert_eq!(controllers_flag(&off), "ClusterSecurityPolicy,CertificateRotation");
    assert!(!rules_of(&off, "ClusterRole").iter().any(|(name, _)| name == "cluster-security-operator-kms"));
    // Scoped, both namespaced controllers off and KMS at its default: nothing to run, refused
    // saying how to turn KMS on.
    let out = helm_render(Some(
        r#"{"watchNamespaces": ["kafka"], "controllers": {"clusterSecurityPolicy": false, "certificateRotation": false}}"#,
    ));
    assert!(!out.status.success());
    assert!(stderr(&out).contains("kmsKeyVaultMode is off unless set to true"), "{}", stderr(&out));
}

/// The GitOps files as shipped: the paths their Applications and Kustomizations name build to
/// exactly the applicable examples (not `invalid/`, not the KmsKeyVaultMode with its Azure
/// placeholders), the build applies server-side (as Flux does), and what it applies reaches
/// Ready; both Argo CD Applications retry.
#[tokio::test]
async fn gitops_paths_apply_as_shipped_and_reach_ready() {
    let cp = &env().cp;
    let root = cluster_security_testbed::repo_root();
    let flux = std::fs::read_to_string(root.join("gitops/flux/cluster-security-operator.yaml")).unwrap();
    let argo = std::fs::read_to_string(root.join("gitops/argocd/application.yaml")).unwrap();
    let docs = |text: &str| -> Vec<serde_yaml::Value> {
        serde_yaml::Deserializer::from_str(text).map(|d| serde::Deserialize::deserialize(d).unwrap()).collect()
    };
    let mut paths: Vec<String> = docs(&flux)
        .iter()
        .filter(|d| d["kind"] == "Kustomization")
        .map(|d| d["spec"]["path"].as_str().unwrap().trim_start_matches("./").to_string())
        .collect();
    for app in docs(&argo) {
        assert!(app["spec"]["syncPolicy"]["retry"]["limit"].as_u64().unwrap_or(0) > 0, "Argo CD app retries: {app:?}");
        let path = app["spec"]["source"]["path"].as_str().unwrap();
        if !path.starts_with("charts/") {
            paths.push(path.to_string());
        }
    }
    paths.sort();
    paths.dedup();
    assert_eq!(paths, ["deploy", "examples"], "the paths the GitOps files apply");

    let built = cp.kubectl(&["kustomize", &root.join("examples").display().to_string()]);
    assert!(built.status.success(), "{}", stderr(&built));
    let text = stdout(&built);
    let kinds: Vec<String> = docs(&text)
        .iter()
        .map(|d| format!("{}/{}", d["kind"].as_str().unwrap(), d["metadata"]["name"].as_str().unwrap()))
        .collect();
    assert_eq!(
        kinds,
        [
            "Namespace/kafka",
            "Service/orders-kafka",
            "StatefulSet/orders-kafka",
            "CertificateRotation/orders",
            "ClusterSecurityPolicy/orders"
        ],
        "exactly the applicable examples"
    );
    support::webhook_ready(cp).await;
    // Forcing ownership of the manifest's own fields, as Flux's kustomize-controller does
    // (ForceOwnership): an earlier client-side apply of the same brokers in this test bed owns
    // the server-defaulted volumeClaimTemplates (an atomic list).
    let out = cp.kubectl_with_stdin(
        &["apply", "--server-side", "--force-conflicts", "--field-manager=kustomize-controller", "-f", "-"],
        Some(&text),
    );
    assert!(out.status.success(), "{}", stderr(&out));
    let out = cp.kubectl(&[
        "wait",
        "--for=condition=Ready",
        "clustersecuritypolicy/orders",
        "certificaterotation/orders",
        "-n",
        "kafka",
        "--timeout=180s",
    ]);
    assert!(out.status.success(), "{}{}", stdout(&out), stderr(&out));
    support::assert_no_secret_leaks(&[]).await;
}

/// `webhookClientAuth`: the Deployment gets the flags and mounts the named ConfigMap's CA
/// read-only; enabled without a ConfigMap, the render fails and says what is missing; off by
/// default, nothing of it is rendered.
#[test]
fn the_chart_can_make_the_webhook_answer_only_the_api_server() {
    let docs = rendered_docs(
        r#"{"webhookClientAuth": {"enabled": true, "caConfigMap": "apiserver-webhook-ca", "caKey": "front.crt", "allowedNames": ["kube-apiserver-webhook-client"]}}"#,
    );
    let pod = &docs.iter().find(|d| d["kind"].as_str() == Some("Deployment")).expect("a Deployment")["spec"]
        ["template"]["spec"];
    let args = strings(&pod["containers"][0]["args"]);
    assert!(
        args.contains(&"--webhook-client-ca-file=/etc/cluster-security-operator/webhook-client-ca/ca.crt"),
        "{args:?}"
    );
    assert!(args.contains(&"--webhook-client-names=kube-apiserver-webhook-client"), "{args:?}");
    let mount = &pod["containers"][0]["volumeMounts"][0];
    assert_eq!(mount["mountPath"].as_str(), Some("/etc/cluster-security-operator/webhook-client-ca"));
    assert_eq!(mount["readOnly"].as_bool(), Some(true));
    let volume = &pod["volumes"][0]["configMap"];
    assert_eq!(volume["name"].as_str(), Some("apiserver-webhook-ca"));
    assert_eq!(volume["items"][0]["key"].as_str(), Some("front.crt"));
    assert_eq!(volume["items"][0]["path"].as_str(), Some("ca.crt"));

    let out = helm_render(Some(r#"{"webhookClientAuth": {"enabled": true}}"#));
    assert!(!out.status.success(), "enabled without a CA was rendered");
    assert!(stderr(&out).contains("webhookClientAuth.caConfigMap"), "{}", stderr(&out));
    let default = stdout(&helm_render(None));
    assert!(!default.contains("webhook-client"), "rendered while off");
}
