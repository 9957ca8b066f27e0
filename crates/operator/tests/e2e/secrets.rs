//! Secrets stay secret: flows that handle every kind of secret material the operator sees —
//! self-signed CAs and leaves it issues, provided certificates with their keys (in the spec and
//! in Secrets), malformed keys carrying a marker, a mutual-TLS policy with its client CA — and
//! then no private-key line, no marker, and no base64 of either may appear in the operator's log,
//! in any Event, or in the status of any of our objects. Every other end-to-end test ends with
//! the same audit (`testbed::leaks`); this one makes sure it sees real material.

use crate::support;

use crate::support::{apply, brokers, env, stderr, webhook_ready};
use base64::Engine as _;
use cluster_security_testbed::pki;
use k8s_openapi::jiff::Timestamp;

const MARKER: &str = "CSOP-MARKER-7f3a9c1e-do-not-log";

fn b64(s: &str) -> String {
    base64::engine::general_purpose::STANDARD.encode(s)
}

fn rotation(ns: &str, name: &str, external: &str) -> String {
    format!(
        "apiVersion: clustersecurity.io/v1alpha1\nkind: CertificateRotation\nmetadata: {{name: {name}, namespace: {ns}}}\nspec:\n  clusterRef: {{kind: StatefulSet, name: kafka}}\n  external: {external}\n  internal: {{label: i1}}\n  rolloutTimeoutSeconds: 120\n"
    )
}

/// Wait until `name` in `ns` has a newest operation or a Stalled condition: its material was handled.
async fn handled(ns: &str, kind: &str, name: &str) {
    let path = "{.status.operations[0].operationState}{.status.conditions[?(@.type==\"Stalled\")].reason}";
    support::wait_jsonpath(&env().cp, (kind, ns, name), path, 120, |text| {
        text.contains("UPDATE_COMPLETE") || text.contains("UPDATE_FAILED") || text.contains("Invalid")
    })
    .await;
}

#[tokio::test]
async fn no_secret_material_in_logs_events_or_status() {
    let env = env();
    let cp = &env.cp;
    webhook_ready(cp).await;
    let now = Timestamp::now();
    let ns = "secrets";
    brokers(cp, ns, "kafka", 1).await;
    let sans = vec![format!("kafka.{ns}.svc")];
    let ca = pki::new_ca("leak test CA", now, 30).unwrap();
    let leaf = pki::issue_leaf(&ca, "kafka", &sans, pki::Usage::Server, now, 10).unwrap();
    let marker_key = format!("-----BEGIN PRIVATE KEY-----\n{MARKER}{MARKER}\n-----END PRIVATE KEY-----\n");
    let secret = |name: &str, key: &str| {
        format!(
            "apiVersion: v1\nkind: Secret\nmetadata: {{name: {name}, namespace: {ns}}}\nstringData:\n  key: {}\n  cert: {}\n  cacert: {}\n",
            serde_json::to_string(key).unwrap(),
            serde_json::to_string(&leaf.cert_pem).unwrap(),
            serde_json::to_string(&ca.cert_pem).unwrap()
        )
    };
    apply(cp, &secret("good", &leaf.key_pem));
    apply(cp, &secret("marked", &marker_key));

    // Every way material reaches the operator, one object each (on one workload, one at a time).
    apply(cp, &rotation(ns, "selfsigned", "{label: e1}"));
    handled(ns, "certrot", "selfsigned").await;
    let provided = format!(
        // Another CA than the self-signed one: switch at once (trust first is tested in on_the_wire).
        "{{label: e2, type: provided, trustTransitionSeconds: 0, key: {}, cert: {}, cacert: {}}}",
        b64(&leaf.key_pem),
        b64(&leaf.cert_pem),
        b64(&ca.cert_pem)
    );
    apply(cp, &rotation(ns, "selfsigned", &provided));
    handled(ns, "certrot", "selfsigned").await;
    apply(cp, &rotation(ns, "selfsigned", "{label: e3, type: secret, secretName: good, trustTransitionSeconds: 0}"));
    handled(ns, "certrot", "selfsigned").await;
    apply(cp, &rotation(ns, "selfsigned", "{label: e4, type: secret, secretName: marked, trustTransitionSeconds: 0}"));
    handled(ns, "certrot", "selfsigned").await;
    // A marker where base64 PEM belongs: the webhook refuses it without echoing it.
    let refused = cp.kubectl_with_stdin(
        &["apply", "-f", "-"],
        Some(&rotation(
            ns,
            "inline",
            &format!(
                "{{label: e5, type: provided, key: {}, cert: {MARKER}, cacert: {}}}",
                b64(MARKER),
                b64(&ca.cert_pem)
            ),
        )),
    );
    assert!(!refused.status.success(), "a non-PEM provided value was accepted");
    let refusal = stderr(&refused);
    assert!(refusal.contains("base64") || refusal.contains("PEM"), "{refusal}");
    apply(
        cp,
        &format!(
            "apiVersion: clustersecurity.io/v1alpha1\nkind: ClusterSecurityPolicy\nmetadata: {{name: mtls, namespace: {ns}}}\nspec:\n  clusterRef: {{kind: StatefulSet, name: kafka}}\n  clientAuthentication: {{tls: {{enabled: true}}}}\n  encryptionInTransit: {{clientBroker: TLS, inCluster: true}}\n"
        ),
    );
    handled(ns, "csp", "mtls").await;

    // What must never be shown: the marker (and its base64) and every value of every Secret in
    // the cluster — ours, the operator's CAs and the webhook's key — plus the keys this test made
    // (the CA's is in no Secret).
    let report = support::assert_no_secret_leaks(&[MARKER, &leaf.key_pem, &ca.key_pem]).await;
    // The webhook's and the CAs' keys, the issued leaves', the provided one (twice): at least 6,
    // and the two given here.
    assert!(report.key_blocks >= 8, "the scan covers real key material: {report}");
    assert!(
        report.log_bytes > 1000 && report.events > 0 && report.statuses >= 2,
        "the scan sees real output: {report}"
    );
    eprintln!("secret leak audit: {report}");
}
