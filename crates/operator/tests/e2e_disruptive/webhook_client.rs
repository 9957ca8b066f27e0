//! The webhook that answers only kube-apiserver: run with `--webhook-client-ca-file` and
//! `--webhook-client-names`, it still judges every change made through the API server (which
//! presents the client certificate its AdmissionConfiguration gives it, as the test control
//! plane's does), while a client without that certificate — a pod that reaches the port — never
//! gets past the TLS handshake.

use std::path::Path;

use cluster_security_testbed::operator::{self, Operator};
use cluster_security_testbed::{free_port, ControlPlane, Options, WEBHOOK_CLIENT_NAME};

use crate::support;

const OPERATOR: &str = env!("CARGO_BIN_EXE_cluster-security-operator");

fn policy(client_broker: &str) -> String {
    format!(
        "apiVersion: clustersecurity.io/v1alpha1\nkind: ClusterSecurityPolicy\nmetadata: {{name: policy, namespace: default}}\nspec:\n  clusterRef: {{kind: StatefulSet, name: kafka}}\n  clientAuthentication: {{sasl: {{scram: {{enabled: true}}}}}}\n  encryptionInTransit: {{clientBroker: {client_broker}, inCluster: true}}\n"
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_webhook_requiring_the_api_servers_certificate_answers_only_it() {
    let cp = ControlPlane::start(Options::default()).expect("control plane starts");
    let port = free_port();
    tokio::task::block_in_place(|| operator::install(&cp, Some(port))).unwrap();
    let args = [
        format!("--webhook-client-ca-file={}", cp.webhook_client_ca_path().display()),
        format!("--webhook-client-names={WEBHOOK_CLIENT_NAME}"),
    ];
    let _op = tokio::task::block_in_place(|| Operator::start(&cp, Path::new(OPERATOR), port, &args))
        .expect("operator starts");
    support::webhook_ready(&cp).await;

    // Through the API server: judged (a denial names the rule), and a valid object is admitted.
    let out = cp.kubectl_with_stdin(&["apply", "-f", "-"], Some(&policy("PLAINTEXT")));
    let err = support::stderr(&out);
    assert!(!out.status.success(), "an invalid policy was admitted");
    assert!(err.contains("denied the request") && err.contains("AuthenticationEncryptionCompatibility"), "{err}");
    let out = cp.kubectl_with_stdin(&["apply", "-f", "-"], Some(&policy("TLS")));
    assert!(out.status.success(), "{}", support::stderr(&out));

    // Straight to the port, trusting the webhook's CA but without the API server's certificate.
    let client = reqwest::Client::builder().use_preconfigured_tls(support::webhook_tls(&cp).await).build().unwrap();
    let review = serde_json::json!({"apiVersion": "admission.k8s.io/v1", "kind": "AdmissionReview"});
    let direct = client.post(format!("https://127.0.0.1:{port}/validate")).json(&review).send().await;
    // Refused in the handshake: with TLS 1.3 the client may only see the connection dropped
    // (the server's alert arrives after the client's side of the handshake is done).
    assert!(direct.is_err(), "a client without the API server's certificate was answered: {direct:?}");
}
