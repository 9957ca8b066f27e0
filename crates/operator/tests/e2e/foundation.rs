//! End to end against a real kube-apiserver + etcd (the testbed): CRDs install and are
//! Established, printer columns and `kubectl explain` work, the webhook refuses every invalid
//! example with its rule's message, `inCluster` can't change on update, and valid objects get
//! observedGeneration and conditions from the operator.

use crate::support;

use std::sync::OnceLock;
use std::time::Duration;

use crate::support::{stderr, stdout};
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

/// Lint and render the chart with Helm's engine (scripts/helm-render.py), with `values` JSON.
fn helm_render(values: Option<&str>) -> std::process::Output {
    let root = cluster_security_testbed::repo_root().display().to_string();
    let mut args = vec![
        format!("{root}/scripts/helm-render.py"),
        format!("{root}/charts/cluster-security-operator"),
        "csop-chart".into(),
    ];
    args.extend(values.map(String::from));
    std::process::Command::new("python3").args(&args).output().expect("python3 runs")
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
        headers.contains(&vec!["NAME", "CLUSTER", "AUTH", "CLIENT-BROKER", "STATE", "OPERATION", "READY", "AGE"]),
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
            "AGE"
        ]),
        "{text}"
    );
    assert!(text.contains("upgradedlabel1") && text.contains("orders-kafka"), "{text}");
    let out = cp.kubectl(&["get", "kmsmode"]);
    let first =
        stdout(&out).lines().next().unwrap_or_default().split_whitespace().map(String::from).collect::<Vec<_>>();
    assert_eq!(first, ["NAME", "MODE", "KMS", "PHASE", "PROGRESS", "READY", "AGE"]);
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
    // operator's field manager owns the clustersecurity.io/ pod-template annotations and nothing else.
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
    let text = wait_until(Duration::from_secs(60), "every kind's reconciles in /metrics", || async move {
        let (code, text) = http_get(port, "/metrics").ok_or("no answer")?;
        let counted = ["ClusterSecurityPolicy", "CertificateRotation", "KmsKeyVaultMode"].iter().all(|k| {
            text.lines()
                .any(|l| l.starts_with(&format!("csop_reconciliations_total{{kind=\"{k}\"}} ")) && !l.ends_with(" 0"))
        });
        (code == 200 && counted).then_some(text.clone()).ok_or(text)
    })
    .await
    .unwrap();
    for expected in [
        "# TYPE csop_reconcile_duration_seconds histogram",
        "csop_reconcile_duration_seconds_count{kind=\"CertificateRotation\"}",
        "# TYPE csop_reconcile_errors counter",
        "csop_operations{kind=\"ClusterSecurityPolicy\",state=\"UPDATE_COMPLETE\"}",
        "csop_leader 1",
        "# EOF",
    ] {
        assert!(text.contains(expected), "{expected} missing from:\n{text}");
    }
    assert!(!text.contains("BEGIN"), "no key material in metrics");
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
    let out = cp.kubectl(&["apply", "-k", &dir, "--dry-run=server"]);
    assert!(out.status.success(), "{}", stderr(&out));
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
    let out = cp.kubectl_with_stdin(&["apply", "--dry-run=server", "-f", "-"], Some(&rendered));
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
    support::assert_no_secret_leaks(&[]).await;
}
