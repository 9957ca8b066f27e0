//! The namespace-scoped install: the chart rendered with `watchNamespaces: [team-a]` (which
//! turns the KmsKeyVaultMode controller off by default) and other non-default values
//! (tolerations, extra args, log level), its RBAC applied, and the operator run with exactly the
//! rendered Deployment's flags and environment, acting as that ServiceAccount. Every flow works in
//! team-a; a policy in team-b is Stalled `NamespaceNotWatched` and nothing is written there; the
//! ServiceAccount holds no right over Secrets or ConfigMaps outside team-a and its own namespace,
//! none cluster-wide, and reads only team-a's Namespace object (its trust-copy consent).

use std::path::Path;
use std::time::Duration;

use cluster_security_api::{CertificateRotation, ClusterSecurityPolicy, OperationState};
use cluster_security_testbed::kubelet::PlayKubelet;
use cluster_security_testbed::operator::{self, Operator, NAMESPACE, SERVICE_ACCOUNT_USER};
use cluster_security_testbed::{free_port, leaks, wait_until, ControlPlane, Options};
use kube::{Api, ResourceExt};

use crate::support;

const OPERATOR: &str = env!("CARGO_BIN_EXE_cluster-security-operator");

fn apply(cp: &ControlPlane, manifest: &str) {
    let out = cp.kubectl_with_stdin(&["apply", "-f", "-"], Some(manifest));
    assert!(out.status.success(), "{}\n{manifest}", String::from_utf8_lossy(&out.stderr));
}

fn brokers(ns: &str) -> String {
    format!(
        "apiVersion: v1\nkind: Namespace\nmetadata: {{name: {ns}}}\n---\napiVersion: apps/v1\nkind: StatefulSet\nmetadata: {{name: kafka, namespace: {ns}}}\nspec:\n  serviceName: kafka\n  replicas: 1\n  selector: {{matchLabels: {{app: kafka}}}}\n  template:\n    metadata: {{labels: {{app: kafka}}}}\n    spec:\n      containers: [{{name: kafka, image: apache/kafka:3.9.0}}]\n"
    )
}

fn policy(ns: &str) -> String {
    format!(
        "apiVersion: clustersecurity.io/v1alpha1\nkind: ClusterSecurityPolicy\nmetadata: {{name: policy, namespace: {ns}}}\nspec:\n  clusterRef: {{kind: StatefulSet, name: kafka}}\n  clientAuthentication: {{tls: {{enabled: true}}}}\n  encryptionInTransit: {{clientBroker: TLS}}\n  rolloutTimeoutSeconds: 120\n"
    )
}

fn rotation(ns: &str) -> String {
    format!(
        "apiVersion: clustersecurity.io/v1alpha1\nkind: CertificateRotation\nmetadata: {{name: certs, namespace: {ns}}}\nspec:\n  clusterRef: {{kind: StatefulSet, name: kafka}}\n  external: {{label: e1}}\n  internal: {{label: i1}}\n  rolloutTimeoutSeconds: 120\n"
    )
}

/// The newest operation's state, the Stalled reason and message of `kind/name` in `ns`, once
/// `wanted` shows in them.
async fn wait_state(cp: &ControlPlane, kind: &str, ns: &str, name: &str, wanted: &str) -> String {
    let path = "{.status.operations[0].operationState}/{.status.conditions[?(@.type==\"Stalled\")].reason}/{.status.conditions[?(@.type==\"Stalled\")].message}";
    support::wait_jsonpath(cp, (kind, ns, name), path, 150, |text| text.contains(wanted)).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_namespace_scoped_install_manages_its_namespaces_and_says_so_elsewhere() {
    let cp = ControlPlane::start(Options::default()).expect("control plane starts");
    let client = cp.client().await.unwrap();
    let kubelet = PlayKubelet::start(client.clone(), "play-node").await.unwrap();
    let port = free_port();
    tokio::task::block_in_place(|| operator::install(&cp, Some(port))).unwrap();
    apply(&cp, &brokers("team-a"));
    apply(&cp, &brokers("team-b"));

    // The chart's RBAC for this mode, and nothing else.
    // controllers.kmsKeyVaultMode left at its default: off with watchNamespaces.
    let values = r#"{"watchNamespaces": ["team-a"],
        "tolerations": [{"key": "dedicated", "operator": "Exists", "effect": "NoSchedule"}],
        "extraArgs": ["--concurrent-reconciles=4"], "logLevel": "warn",
        "logFormat": "text"}"#;
    let rendered = operator::render_chart(values).unwrap();
    assert!(rendered.contains("--watch-namespaces=team-a"), "the Deployment gets the flag");
    assert!(rendered.contains("--controllers=ClusterSecurityPolicy,CertificateRotation\n"), "KMS off by default");
    assert!(!rendered.contains("name: cluster-security-operator-kms\n"), "no re-encryption grant with KMS off");
    let kubeconfig = operator::service_account_kubeconfig_with(&cp, &rendered).unwrap();
    let can = |verb: &str, what: &str, ns: Option<&str>| {
        let mut args = vec!["auth", "can-i", verb, what, "--as", SERVICE_ACCOUNT_USER];
        match ns {
            Some(ns) => args.extend(["-n", ns]),
            None => args.push("--all-namespaces"),
        }
        String::from_utf8_lossy(&cp.kubectl(&args).stdout).trim() == "yes"
    };
    for (verb, what, ns) in [
        ("create", "secrets", Some("team-a")),
        ("patch", "statefulsets.apps", Some("team-a")),
        ("patch", "configmaps", Some("team-a")),
        ("create", "secrets", Some(NAMESPACE)),
        // The consent annotation clustersecurity.io/accept-trust-from of a watched namespace.
        ("get", "namespaces/team-a", None),
    ] {
        assert!(can(verb, what, ns), "needs {verb} {what} in {ns:?}");
    }
    for (verb, what, ns) in [
        ("get", "secrets", Some("team-b")),
        ("list", "secrets", Some("team-b")),
        ("create", "configmaps", Some("team-b")),
        ("patch", "statefulsets.apps", Some("team-b")),
        ("list", "secrets", None),
        ("patch", "secrets", None),
        ("get", "secrets", Some("kube-system")),
        ("get", "configmaps", Some("team-b")),
        ("list", "configmaps", None),
        ("get", "configmaps", None),
        ("get", "secrets", None),
        ("get", "namespaces/team-b", None),
        ("list", "namespaces", None),
    ] {
        assert!(!can(verb, what, ns), "the scoped install grants {verb} {what} in {ns:?}");
    }

    // The Deployment's own command line (its leader election included), as the chart renders it.
    let (args, env) = operator::deployment_command(&rendered).unwrap();
    assert!(args.contains(&"--concurrent-reconciles=4".to_string()), "{args:?}");
    assert!(env.iter().any(|(k, v)| k == "RUST_LOG" && v == "warn"), "{env:?}");
    let op = tokio::task::block_in_place(|| {
        Operator::start_as(&cp, Path::new(OPERATOR), port, &args, &env, kubeconfig).expect("operator starts")
    });
    support::webhook_ready(&cp).await;

    // team-a: both kinds run to the end.
    apply(&cp, &policy("team-a"));
    wait_state(&cp, "clustersecuritypolicy", "team-a", "policy", "UPDATE_COMPLETE").await;
    apply(&cp, &rotation("team-a"));
    wait_state(&cp, "certificaterotation", "team-a", "certs", "UPDATE_COMPLETE").await;

    // team-b: refused with a status that says why and what to do; nothing written there.
    apply(&cp, &policy("team-b"));
    apply(&cp, &rotation("team-b"));
    for (kind, name) in [("clustersecuritypolicy", "policy"), ("certificaterotation", "certs")] {
        let text = wait_state(&cp, kind, "team-b", name, "NamespaceNotWatched").await;
        assert!(text.contains("--watch-namespaces=team-a") && text.contains("watchNamespaces"), "{text}");
        assert!(text.starts_with("/"), "no operation recorded: {text}");
    }
    let b_csp: Api<ClusterSecurityPolicy> = Api::namespaced(client.clone(), "team-b");
    let b_rot: Api<CertificateRotation> = Api::namespaced(client.clone(), "team-b");
    assert!(b_csp.get("policy").await.unwrap().status.unwrap().operations.is_empty());
    assert!(b_rot.get("certs").await.unwrap().status.unwrap().operations.is_empty());
    let written = String::from_utf8_lossy(&cp.kubectl(&["get", "cm,secret", "-n", "team-b", "-o", "name"]).stdout)
        .lines()
        .filter(|l| l.starts_with("configmap/kafka-") || l.starts_with("secret/kafka-"))
        .map(str::to_string)
        .collect::<Vec<_>>();
    assert!(written.is_empty(), "nothing written in team-b: {written:?}");
    let sts = cp.kubectl(&[
        "get",
        "statefulset",
        "kafka",
        "-n",
        "team-b",
        "-o",
        "jsonpath={.metadata.generation}|{.spec.template.metadata.annotations}",
    ]);
    let sts = String::from_utf8_lossy(&sts.stdout).into_owned();
    assert!(sts.starts_with("1|") && !sts.contains("clustersecurity.io"), "team-b's brokers were not touched: {sts}");
    let a_csp: Api<ClusterSecurityPolicy> = Api::namespaced(client.clone(), "team-a");
    let done = a_csp.get("policy").await.unwrap();
    let name = done.name_any();
    assert_eq!(done.status.unwrap().operations[0].operation_state, OperationState::UpdateComplete, "{name}");
    assert!(!op.log_text().contains("forbidden"), "the operator never hit a permission it lacks:\n{}", op.log_text());
    assert!(!op.log_text().contains(" INFO "), "the chart's logLevel (warn) reached the operator");
    let health_port = op.health_port;
    wait_until(Duration::from_secs(60), "the new series in /metrics", || async move {
        let metrics = cluster_security_testbed::operator::http_get(health_port, "/metrics").ok_or("no answer")?.1;
        let missing: Vec<&str> = [
            "csop_operations{kind=\"ClusterSecurityPolicy\",state=\"UPDATE_COMPLETE\"} 1",
            "csop_stalled{kind=\"ClusterSecurityPolicy\",reason=\"NamespaceNotWatched\"} 1",
            "csop_certificate_expiration_timestamp_seconds{namespace=\"team-a\",name=\"certs\",slot=\"external\"}",
            "csop_leader 1",
        ]
        .into_iter()
        .filter(|s| !metrics.contains(s))
        .collect();
        missing.is_empty().then_some(()).ok_or_else(|| format!("missing {missing:?}"))
    })
    .await
    .unwrap();
    leaks::assert_none(&cp, &[]).await;
    drop(op);
    kubelet.stop();
}
