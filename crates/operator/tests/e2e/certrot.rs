//! CertificateRotation against a real apiserver with the play kubelet: label rotations reach
//! UPDATE_COMPLETE and roll the pods; self-signed rotations keep the CA (the new leaf verifies
//! against the old ca.crt, checked with openssl); a type change requires a trust update; every
//! kind of bad material is refused with its reason and rolls nothing.

use crate::support;

use std::process::Command;
use std::time::Duration;

use crate::support::{apply, brokers, env, stderr, stdout, wait_sts_ready, webhook_ready};
use base64::Engine as _;
use cluster_security_api::{CertificateRotation, OperationState};
use cluster_security_testbed::pki;
use cluster_security_testbed::wait_until;
use k8s_openapi::api::apps::v1::StatefulSet;
use k8s_openapi::api::core::v1::{ConfigMap, Secret};
use k8s_openapi::jiff::Timestamp;
use kube::Api;

fn rotation(ns: &str, external: &str, internal: &str) -> String {
    format!(
        "apiVersion: clustersecurity.io/v1alpha1\nkind: CertificateRotation\nmetadata: {{name: certs, namespace: {ns}}}\nspec:\n  clusterRef: {{kind: StatefulSet, name: kafka}}\n  external: {external}\n  internal: {internal}\n  rolloutTimeoutSeconds: 120\n"
    )
}

async fn api(ns: &str) -> Api<CertificateRotation> {
    Api::namespaced(env().cp.client().await.unwrap(), ns)
}

/// Wait until the status describes the current generation and the latest operation is `state`.
async fn wait_op(ns: &str, state: OperationState) -> CertificateRotation {
    let api = api(ns).await;
    wait_until(Duration::from_secs(90), &format!("{ns}/certs operation {state:?}"), || {
        let api = api.clone();
        async move {
            let o = api.get("certs").await.map_err(|e| e.to_string())?;
            let st = o.status.clone().unwrap_or_default();
            let latest = st.operations.first().map(|op| op.operation_state);
            (latest == Some(state)
                && st.observed_generation == o.metadata.generation
                && st.current_operation.is_none() == state.is_terminal())
            .then_some(o)
            .ok_or_else(|| format!("{latest:?} {:?}", st.conditions))
        }
    })
    .await
    .unwrap()
}

async fn secret(ns: &str, name: &str) -> Secret {
    Api::<Secret>::namespaced(env().cp.client().await.unwrap(), ns).get(name).await.unwrap()
}

fn data(s: &Secret, key: &str) -> String {
    String::from_utf8(s.data.as_ref().unwrap()[key].0.clone()).unwrap()
}

async fn sts_generation(ns: &str) -> i64 {
    Api::<StatefulSet>::namespaced(env().cp.client().await.unwrap(), ns)
        .get("kafka")
        .await
        .unwrap()
        .metadata
        .generation
        .unwrap()
}

/// `openssl verify -CAfile ca leaf` in a temp dir: an independent check of the chain.
fn openssl_verifies(ca_pem: &str, leaf_pem: &str) -> bool {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("ca.pem"), ca_pem).unwrap();
    std::fs::write(dir.path().join("leaf.pem"), leaf_pem).unwrap();
    let out = Command::new("openssl")
        .args(["verify", "-CAfile", "ca.pem", "leaf.pem"])
        .current_dir(dir.path())
        .output()
        .expect("openssl runs");
    out.status.success()
}

#[tokio::test]
async fn selfsigned_rotation_keeps_the_ca_and_rolls_the_pods() {
    let cp = &env().cp;
    let ns = "certs-selfsigned";
    webhook_ready(cp).await;
    brokers(cp, ns, "kafka", 2).await;
    apply(cp, &rotation(ns, "{label: ext1}", "{label: int1}"));
    let o = wait_op(ns, OperationState::UpdateComplete).await;
    let st = o.status.unwrap();
    let ext = st.external.clone().unwrap();
    let internal_serial = st.internal.as_ref().unwrap().serial_number.clone();
    assert!(internal_serial.is_some());
    assert_eq!((ext.label.as_str(), ext.client_impact), ("ext1", None), "first issue has no impact");
    assert!(ext.serial_number.is_some() && ext.not_after.is_some() && ext.renewal_time.is_some());
    let first = secret(ns, "kafka-external-tls").await;
    let old_ca = data(&first, "ca.crt");
    assert!(openssl_verifies(&old_ca, &data(&first, "tls.crt")));
    assert!(data(&first, "tls.key").contains("BEGIN PRIVATE KEY"));
    assert!(secret(ns, "kafka-internal-tls").await.data.is_some());
    wait_sts_ready(cp, ns, "kafka").await;
    let gen = sts_generation(ns).await;

    // Rotate the external label only.
    apply(cp, &rotation(ns, "{label: ext2}", "{label: int1}"));
    let o = wait_op(ns, OperationState::UpdateComplete).await;
    let st = o.status.unwrap();
    let ext2 = st.external.clone().unwrap();
    assert_eq!(ext2.label, "ext2");
    assert_ne!(ext2.serial_number, ext.serial_number, "a new certificate");
    assert_eq!(ext2.ca_fingerprint_sha256, ext.ca_fingerprint_sha256, "same CA");
    assert_eq!(ext2.client_impact, Some(cluster_security_api::ClientImpact::None));
    assert_eq!(st.internal.as_ref().unwrap().serial_number, internal_serial, "internal untouched");
    let second = secret(ns, "kafka-external-tls").await;
    assert_ne!(data(&second, "tls.crt"), data(&first, "tls.crt"));
    assert!(openssl_verifies(&old_ca, &data(&second, "tls.crt")), "the new leaf verifies against the old ca.crt");
    assert_eq!(sts_generation(ns).await, gen + 1, "one rollout");
    let sts = Api::<StatefulSet>::namespaced(cp.client().await.unwrap(), ns).get("kafka").await.unwrap();
    let ann = sts.spec.template.metadata.unwrap().annotations.unwrap();
    assert_eq!(ann["clustersecurity.io/external-certificate-label"], "ext2");
    assert_eq!(ann["clustersecurity.io/internal-certificate-label"], "int1");
    let table = stdout(&cp.kubectl(&["get", "certrot", "-n", ns]));
    assert!(
        table.contains("ext2") && table.contains("int1") && table.contains("None") && table.contains("UPDATE_COMPLETE"),
        "{table}"
    );

    // Same labels again: nothing happens.
    apply(cp, &rotation(ns, "{label: ext2, validityDays: 300}", "{label: int1}"));
    let o = wait_op(ns, OperationState::UpdateComplete).await;
    assert_eq!(o.status.unwrap().operations.len(), 2);
    assert_eq!(sts_generation(ns).await, gen + 1);

    // Renew now, labels unchanged (`cmctl renew`): both self-signed certificates are issued
    // again by the same CA, in one operation and one rollout; the same value asks nothing more.
    let api = api(ns).await;
    let out = cp.kubectl(&["annotate", "certrot", "certs", "-n", ns, "clustersecurity.io/renew=2026-11-29T22:00"]);
    assert!(out.status.success(), "{}", stderr(&out));
    let o = wait_until(Duration::from_secs(90), "the renewal completes", || {
        let api = api.clone();
        async move {
            let o = api.get("certs").await.map_err(|e| e.to_string())?;
            let st = o.status.clone().unwrap_or_default();
            let done = st.renew_request.as_deref() == Some("2026-11-29T22:00")
                && st.operations.len() == 3
                && st.operations[0].operation_state == OperationState::UpdateComplete;
            done.then_some(o).ok_or_else(|| format!("{:?}", st.operations.first().map(|op| op.operation_state)))
        }
    })
    .await
    .unwrap();
    let st = o.status.unwrap();
    let ext3 = st.external.clone().unwrap();
    assert_eq!(ext3.label, "ext2", "same label");
    assert_ne!(ext3.serial_number, ext2.serial_number, "a new external certificate");
    assert_ne!(st.internal.as_ref().unwrap().serial_number, internal_serial, "a new internal certificate");
    assert_eq!(ext3.ca_fingerprint_sha256, ext.ca_fingerprint_sha256, "same CA: clients keep their trust");
    assert_eq!(ext3.client_impact, Some(cluster_security_api::ClientImpact::None));
    wait_sts_ready(cp, ns, "kafka").await;
    assert_eq!(sts_generation(ns).await, gen + 2, "one rollout for the renewal");
    let out = cp.kubectl(&["annotate", "certrot", "certs", "-n", ns, "--overwrite", "example.com/touched=yes"]);
    assert!(out.status.success(), "{}", stderr(&out));
    let o = wait_op(ns, OperationState::UpdateComplete).await;
    assert_eq!(o.status.unwrap().operations.len(), 3, "the same renew value renews nothing more");
    support::assert_no_secret_leaks(&[]).await;
}

fn b64(s: &str) -> String {
    base64::engine::general_purpose::STANDARD.encode(s)
}

#[tokio::test]
async fn type_change_requires_trust_update_and_bad_material_rolls_nothing() {
    let cp = &env().cp;
    let ns = "certs-provided";
    webhook_ready(cp).await;
    brokers(cp, ns, "kafka", 1).await;
    apply(cp, &rotation(ns, "{label: a1}", "{label: i1}"));
    let o = wait_op(ns, OperationState::UpdateComplete).await;
    let selfsigned_ca = o.status.unwrap().external.unwrap().ca_fingerprint_sha256;

    // Material from the user's own CA.
    let now = Timestamp::now();
    let ca = pki::new_ca("corp CA", now, 30).unwrap();
    let sans = vec!["kafka.certs-provided.svc".to_string()];
    let leaf = pki::issue_leaf(&ca, "kafka", &sans, pki::Usage::Server, now, 10).unwrap();
    // trustTransitionSeconds: 0 switches at once (the trust-first wait is tested in on_the_wire).
    let provided = format!(
        "{{label: a2, type: provided, trustTransitionSeconds: 0, key: {}, cert: {}, cacert: {}}}",
        b64(&leaf.key_pem),
        b64(&leaf.cert_pem),
        b64(&ca.cert_pem)
    );
    apply(cp, &rotation(ns, &provided, "{label: i1}"));
    let o = wait_op(ns, OperationState::UpdateComplete).await;
    let ext = o.status.unwrap().external.unwrap();
    assert_eq!(ext.client_impact, Some(cluster_security_api::ClientImpact::TrustUpdateRequired));
    assert_ne!(ext.ca_fingerprint_sha256, selfsigned_ca);
    let trust = Api::<ConfigMap>::namespaced(cp.client().await.unwrap(), ns).get("kafka-external-trust").await.unwrap();
    let bundle = trust.data.unwrap()["ca.crt"].clone();
    assert_eq!(bundle.matches("BEGIN CERTIFICATE").count(), 2, "new and previous CA during the change");
    let events = stdout(&cp.kubectl(&["get", "events", "-n", ns, "-o", "jsonpath={range .items[*]}{.reason} {end}"]));
    assert!(events.contains("ClientTrustUpdateRequired") && events.contains("PrivateKeyInSpec"), "{events}");
    wait_sts_ready(cp, ns, "kafka").await;
    let gen = sts_generation(ns).await;
    let installed = data(&secret(ns, "kafka-external-tls").await, "tls.crt");

    // Each kind of bad material: its reason, nothing rolled, the running certificate stays.
    let other_ca = pki::new_ca("other", now, 30).unwrap();
    let other_leaf = pki::issue_leaf(&other_ca, "kafka", &sans, pki::Usage::Server, now, 10).unwrap();
    let past = Timestamp::from_second(now.as_second() - 400 * 86_400).unwrap();
    let expired = pki::issue_leaf(&ca, "kafka", &sans, pki::Usage::Server, past, 1).unwrap();
    let secret_yaml = |name: &str, key: &str, cert: &str, cacert: &str| {
        format!(
            "apiVersion: v1\nkind: Secret\nmetadata: {{name: {name}, namespace: {ns}}}\nstringData:\n  key: {}\n  cert: {}\n  cacert: {}\n",
            serde_json::to_string(key).unwrap(),
            serde_json::to_string(cert).unwrap(),
            serde_json::to_string(cacert).unwrap()
        )
    };
    apply(cp, &secret_yaml("garbage", "not a key", "not a cert", &ca.cert_pem));
    apply(cp, &secret_yaml("wrong-key", &other_leaf.key_pem, &leaf.cert_pem, &ca.cert_pem));
    apply(cp, &secret_yaml("expired", &expired.key_pem, &expired.cert_pem, &ca.cert_pem));
    apply(cp, &secret_yaml("other-ca", &other_leaf.key_pem, &other_leaf.cert_pem, &ca.cert_pem));
    // A tenant's paste: the CA's key after the CA certificate. The CA value is published in the
    // trust ConfigMap, which anyone reading the namespace's ConfigMaps sees.
    let ca_and_key = format!("{}{}", ca.cert_pem, ca.key_pem);
    apply(cp, &secret_yaml("ca-with-key", &leaf.key_pem, &leaf.cert_pem, &ca_and_key));
    let cases = [
        ("b1", "{secretName: garbage}", "InvalidCertificate", "no PEM certificate"),
        ("b2", "{secretName: wrong-key}", "InvalidCertificate", "does not match the certificate"),
        ("b3", "{secretName: expired}", "InvalidCertificate", "expired"),
        ("b4", "{secretName: other-ca}", "InvalidCertificate", "does not chain to the given CA"),
        ("b5", "{secretName: missing}", "SecretNotFound", "does not exist"),
        ("b6", "{secretName: garbage, cert: tls.crt}", "InvalidCertificate", "has no key \"tls.crt\""),
        ("b7", "{secretName: ca-with-key}", "InvalidCertificate", "holds a private key block"),
    ];
    let api = api(ns).await;
    for (label, extra, reason, text) in cases {
        let ext = format!("{{label: {label}, type: secret, {}}}", &extra[1..extra.len() - 1]);
        apply(cp, &rotation(ns, &ext, "{label: i1}"));
        let o = wait_until(Duration::from_secs(60), &format!("{label} stalled with {reason}"), || {
            let api = api.clone();
            async move {
                let o = api.get("certs").await.map_err(|e| e.to_string())?;
                let st = o.status.clone().unwrap_or_default();
                let stalled = st.conditions.iter().find(|c| c.type_ == "Stalled" && c.reason == reason).cloned();
                match stalled {
                    Some(c)
                        if st.observed_generation == o.metadata.generation
                            && st.operations[0]
                                .target_info
                                .as_ref()
                                .and_then(|t| t.external_label.clone())
                                .as_deref()
                                == Some(label) =>
                    {
                        Ok(c)
                    }
                    _ => Err(format!("{:?}", st.conditions)),
                }
            }
        })
        .await
        .unwrap();
        assert!(o.message.contains(text), "{label}: {}", o.message);
        assert!(!o.message.contains("PRIVATE KEY"), "no key material in messages");
        assert_eq!(sts_generation(ns).await, gen, "{label}: nothing rolled");
        assert_eq!(
            data(&secret(ns, "kafka-external-tls").await, "tls.crt"),
            installed,
            "{label}: running certificate stays"
        );
    }
    let trust = Api::<ConfigMap>::namespaced(cp.client().await.unwrap(), ns).get("kafka-external-trust").await.unwrap();
    assert!(!trust.data.unwrap()["ca.crt"].contains("PRIVATE KEY"), "no key reaches the trust bundle");
    // The audit reads every ConfigMap too: the CA key pasted above must be in none.
    support::assert_no_secret_leaks(&[&ca.key_pem]).await;
}

#[tokio::test]
async fn internal_provided_is_refused() {
    let cp = &env().cp;
    webhook_ready(cp).await;
    let out = cp.kubectl_with_stdin(
        &["apply", "-f", "-"],
        Some(&rotation("default", "{label: a}", "{label: b, type: provided}")),
    );
    assert!(!out.status.success());
    assert!(stderr(&out).contains("internal certificates can only be self-generated"), "{}", stderr(&out));
    support::assert_no_secret_leaks(&[]).await;
}

/// A Secret as cert-manager writes it (`kubernetes.io/tls`: tls.crt, tls.key; here without
/// ca.crt, the chain carrying its root) is read as it is: no key names in the spec, no CA key.
#[tokio::test]
async fn a_cert_manager_secret_without_ca_crt_is_accepted() {
    let cp = &env().cp;
    let ns = "certs-cert-manager";
    webhook_ready(cp).await;
    brokers(cp, ns, "kafka", 1).await;
    let now = Timestamp::now();
    let ca = pki::new_ca("cert-manager CA issuer", now, 30).unwrap();
    let sans = vec!["kafka.certs-cert-manager.svc".to_string()];
    let leaf = pki::issue_leaf(&ca, "kafka", &sans, pki::Usage::Server, now, 10).unwrap();
    let chain = format!("{}{}", leaf.cert_pem, ca.cert_pem);
    apply(
        cp,
        &format!(
            "apiVersion: v1\nkind: Secret\ntype: kubernetes.io/tls\nmetadata: {{name: kafka-tls, namespace: {ns}}}\nstringData:\n  tls.crt: {}\n  tls.key: {}\n",
            serde_json::to_string(&chain).unwrap(),
            serde_json::to_string(&leaf.key_pem).unwrap()
        ),
    );
    apply(cp, &rotation(ns, "{label: cm1, type: secret, secretName: kafka-tls}", "{label: i1}"));
    let o = wait_op(ns, OperationState::UpdateComplete).await;
    let ext = o.status.unwrap().external.unwrap();
    let root = pki::pem_fingerprint(&ca.cert_pem).unwrap();
    assert_eq!(ext.ca_fingerprint_sha256.as_deref(), Some(root.as_str()), "the root in the chain is the CA");
    let installed = data(&secret(ns, "kafka-external-tls").await, "tls.crt");
    assert!(openssl_verifies(&ca.cert_pem, &installed), "the brokers' chain verifies against that root");
    let trust = Api::<ConfigMap>::namespaced(cp.client().await.unwrap(), ns).get("kafka-external-trust").await.unwrap();
    assert_eq!(pki::pem_fingerprint(&trust.data.unwrap()["current-ca.crt"]).unwrap(), root, "clients get the root");
    // The leaf is valid for 10 days and the operator cannot renew a `secret` one: said in a
    // condition and a Warning, while the rotation itself is Ready.
    let expiring = support::wait_jsonpath(
        cp,
        ("certificaterotation", ns, "certs"),
        "{.status.conditions[?(@.type==\"CertificateExpiring\")].status}/{.status.conditions[?(@.type==\"CertificateExpiring\")].message}",
        60,
        |t| t.starts_with("True/"),
    )
    .await;
    assert!(expiring.contains("external certificate (type secret)") && expiring.contains("cannot renew"), "{expiring}");
    let warnings = support::stdout(&cp.kubectl(&[
        "get",
        "events",
        "-n",
        ns,
        "--field-selector",
        "reason=RenewalNeeded,type=Warning",
        "-o",
        "name",
    ]));
    assert!(!warnings.trim().is_empty(), "a Warning event RenewalNeeded");
    support::assert_no_secret_leaks(&[]).await;
}

#[tokio::test]
async fn changed_secret_is_reported_and_applied_on_the_next_label() {
    let cp = &env().cp;
    let ns = "certs-secret";
    webhook_ready(cp).await;
    brokers(cp, ns, "kafka", 1).await;
    let now = Timestamp::now();
    let ca = pki::new_ca("corp CA", now, 30).unwrap();
    let sans = vec!["kafka.certs-secret.svc".to_string()];
    let put = |leaf: &pki::KeyedCert| {
        format!(
            "apiVersion: v1\nkind: Secret\nmetadata: {{name: my-certs, namespace: {ns}}}\nstringData:\n  key: {}\n  cert: {}\n  cacert: {}\n",
            serde_json::to_string(&leaf.key_pem).unwrap(),
            serde_json::to_string(&leaf.cert_pem).unwrap(),
            serde_json::to_string(&ca.cert_pem).unwrap()
        )
    };
    let first = pki::issue_leaf(&ca, "kafka", &sans, pki::Usage::Server, now, 10).unwrap();
    apply(cp, &put(&first));
    apply(cp, &rotation(ns, "{label: s1, type: secret, secretName: my-certs}", "{label: i1}"));
    wait_op(ns, OperationState::UpdateComplete).await;
    wait_sts_ready(cp, ns, "kafka").await;
    let gen = sts_generation(ns).await;

    // The Secret changes: noticed through the metadata watch and reported, not rolled.
    let second = pki::issue_leaf(&ca, "kafka", &sans, pki::Usage::Server, now, 10).unwrap();
    apply(cp, &put(&second));
    let api = api(ns).await;
    wait_until(Duration::from_secs(60), "the change reported in Ready", || {
        let api = api.clone();
        async move {
            let o = api.get("certs").await.map_err(|e| e.to_string())?;
            let ready = o
                .status
                .unwrap_or_default()
                .conditions
                .into_iter()
                .find(|c| c.type_ == "Ready")
                .map(|c| c.message)
                .unwrap_or_default();
            ready.contains("now holds a different certificate").then_some(()).ok_or(ready)
        }
    })
    .await
    .unwrap();
    let events =
        stdout(&cp.kubectl(&["get", "events", "-n", ns, "-o", "jsonpath={range .items[*]}{.type}/{.reason} {end}"]));
    assert!(events.contains("Warning/SourceSecretChanged"), "{events}");
    let o = api.get("certs").await.unwrap();
    let changed = o.status.unwrap().conditions.into_iter().find(|c| c.type_ == "SourceChanged").unwrap();
    assert_eq!((changed.status.as_str(), changed.reason.as_str()), ("True", "SourceSecretChanged"));
    assert_eq!(sts_generation(ns).await, gen, "not rolled before the label changes");

    // A new label rolls the new certificate; same CA, so clients are unaffected.
    apply(cp, &rotation(ns, "{label: s2, type: secret, secretName: my-certs}", "{label: i1}"));
    let o = wait_op(ns, OperationState::UpdateComplete).await;
    let ext = o.status.unwrap().external.unwrap();
    assert_eq!(ext.client_impact, Some(cluster_security_api::ClientImpact::None));
    assert_eq!(data(&secret(ns, "kafka-external-tls").await, "tls.crt"), second.cert_pem);
    assert_eq!(sts_generation(ns).await, gen + 1);
    // The settled round after the operation says so (the completing round only completes it).
    wait_until(Duration::from_secs(30), "SourceChanged=False: in sync again", || {
        let api = api.clone();
        async move {
            let o = api.get("certs").await.map_err(|e| e.to_string())?;
            let conditions = o.status.unwrap_or_default().conditions;
            let changed = conditions.into_iter().find(|c| c.type_ == "SourceChanged").map(|c| c.status);
            (changed.as_deref() == Some("False")).then_some(()).ok_or(format!("{changed:?}"))
        }
    })
    .await
    .unwrap();

    // rollOnSourceChange: a renewal in the Secret (as cert-manager makes) rolls by itself.
    apply(
        cp,
        &rotation(ns, "{label: s2, type: secret, secretName: my-certs, rollOnSourceChange: true}", "{label: i1}"),
    );
    wait_sts_ready(cp, ns, "kafka").await;
    let third = pki::issue_leaf(&ca, "kafka", &sans, pki::Usage::Server, now, 10).unwrap();
    apply(cp, &put(&third));
    let rolled = wait_until(Duration::from_secs(90), "the renewal rolled out without a label change", || {
        let api = api.clone();
        async move {
            let o = api.get("certs").await.map_err(|e| e.to_string())?;
            let st = o.status.clone().unwrap_or_default();
            let done = st.operations.len() == 3
                && st.operations[0].operation_state == OperationState::UpdateComplete
                && st.current_operation.is_none();
            let seen = format!("{:?}", st.operations.first().map(|o| o.operation_state));
            done.then_some(st).ok_or(seen)
        }
    })
    .await
    .unwrap();
    assert_eq!(rolled.external.unwrap().label, "s2", "same label");
    assert_eq!(data(&secret(ns, "kafka-external-tls").await, "tls.crt"), third.cert_pem);
    support::assert_no_secret_leaks(&[]).await;
}

#[tokio::test]
async fn policy_and_rotation_on_one_workload_keep_each_others_annotations() {
    let cp = &env().cp;
    let ns = "certs-shared";
    webhook_ready(cp).await;
    brokers(cp, ns, "kafka", 2).await;
    apply(cp, &rotation(ns, "{label: e1}", "{label: i1}"));
    apply(
        cp,
        &format!(
            "apiVersion: clustersecurity.io/v1alpha1\nkind: ClusterSecurityPolicy\nmetadata: {{name: policy, namespace: {ns}}}\nspec:\n  clusterRef: {{kind: StatefulSet, name: kafka}}\n  clientAuthentication: {{tls: {{enabled: true}}}}\n"
        ),
    );
    wait_op(ns, OperationState::UpdateComplete).await;
    let out = wait_until(Duration::from_secs(90), "policy Ready", || {
        let out = cp.kubectl(&[
            "get",
            "csp",
            "policy",
            "-n",
            ns,
            "-o",
            "jsonpath={.status.conditions[?(@.type==\"Ready\")].status}",
        ]);
        async move { (stdout(&out) == "True").then_some(()).ok_or(stdout(&out)) }
    })
    .await;
    assert!(out.is_ok(), "{out:?}");
    let sts = Api::<StatefulSet>::namespaced(cp.client().await.unwrap(), ns).get("kafka").await.unwrap();
    let ann = sts.spec.template.metadata.unwrap().annotations.unwrap();
    for k in [
        "clustersecurity.io/security-hash",
        "clustersecurity.io/certificate-hash",
        "clustersecurity.io/external-certificate-label",
    ] {
        assert!(ann.contains_key(k), "{k} missing: {ann:?}");
    }
    support::assert_no_secret_leaks(&[]).await;
}

/// A TLS Secret for `slot` holding `leaf` signed by `ca`, marked as issued for `operation_id`.
fn tls_secret_yaml(ns: &str, slot: &str, leaf: &pki::KeyedCert, ca: &pki::KeyedCert, operation_id: &str) -> String {
    format!(
        "apiVersion: v1\nkind: Secret\nmetadata:\n  name: kafka-{slot}-tls\n  namespace: {ns}\n  labels: {{app.kubernetes.io/managed-by: cluster-security-operator}}\n  annotations: {{clustersecurity.io/operation-id: {operation_id}}}\ntype: kubernetes.io/tls\nstringData:\n  tls.crt: {}\n  tls.key: {}\n  ca.crt: {}\n",
        serde_json::to_string(&leaf.cert_pem).unwrap(),
        serde_json::to_string(&leaf.key_pem).unwrap(),
        serde_json::to_string(&ca.cert_pem).unwrap()
    )
}

/// What an operator killed after issuing but before recording the rollout leaves behind — the
/// operation recorded, TLS Secrets written for it — is picked up, not redone: the certificate
/// issued for the recorded operation is reused (one issuance, one rollout), while one from another
/// operation is replaced.
#[tokio::test]
async fn certificates_issued_for_the_recorded_operation_are_reused_after_a_restart() {
    let env = env();
    let cp = &env.cp;
    let ns = "certs-reuse";
    webhook_ready(cp).await;
    // Brokers whose pods stay not ready: the operation is recorded and waits for an ACTIVE cluster.
    apply(cp, &format!("apiVersion: v1\nkind: Namespace\nmetadata: {{name: {ns}}}\n"));
    env.held.hold_new_pods(ns, true);
    apply(
        cp,
        &format!(
            "apiVersion: apps/v1\nkind: StatefulSet\nmetadata: {{name: kafka, namespace: {ns}}}\nspec:\n  serviceName: kafka\n  replicas: 1\n  selector: {{matchLabels: {{app: kafka}}}}\n  template:\n    metadata: {{labels: {{app: kafka}}}}\n    spec:\n      containers: [{{name: kafka, image: apache/kafka:3.9.0}}]\n"
        ),
    );
    // The CAs the operator keeps (as a first, interrupted run would have created them).
    let now = Timestamp::now();
    let sans = vec![format!("kafka.{ns}.svc")];
    let (ext_ca, int_ca) =
        (pki::new_ca("reuse ext CA", now, 3650).unwrap(), pki::new_ca("reuse int CA", now, 3650).unwrap());
    for (slot, ca) in [("external", &ext_ca), ("internal", &int_ca)] {
        apply(
            cp,
            &format!(
                "apiVersion: v1\nkind: Secret\nmetadata:\n  name: kafka-{slot}-ca\n  namespace: {ns}\n  labels: {{app.kubernetes.io/managed-by: cluster-security-operator}}\nstringData:\n  ca.crt: {}\n  ca.key: {}\n",
                serde_json::to_string(&ca.cert_pem).unwrap(),
                serde_json::to_string(&ca.key_pem).unwrap()
            ),
        );
    }
    apply(cp, &rotation(ns, "{label: e1}", "{label: i1}"));
    let api = api(ns).await;
    let operation_id = wait_until(Duration::from_secs(60), "operation recorded, waiting for the cluster", || {
        let api = api.clone();
        async move {
            let st = api.get("certs").await.map_err(|e| e.to_string())?.status.unwrap_or_default();
            match st.current_operation {
                Some(op) if op.operation_state == OperationState::Pending => Ok(op.operation_id),
                other => Err(format!("{other:?}")),
            }
        }
    })
    .await
    .unwrap();
    // Issued for this operation before the "crash": external. From another operation: internal.
    let ext_leaf = pki::issue_leaf(&ext_ca, "kafka", &sans, pki::Usage::Server, now, 10).unwrap();
    let int_leaf = pki::issue_leaf(&int_ca, "kafka", &sans, pki::Usage::ServerAndClient, now, 10).unwrap();
    apply(cp, &tls_secret_yaml(ns, "external", &ext_leaf, &ext_ca, &operation_id));
    apply(cp, &tls_secret_yaml(ns, "internal", &int_leaf, &int_ca, "an-earlier-operation"));
    let generation = sts_generation(ns).await;

    env.held.hold_new_pods(ns, false);
    let o = wait_op(ns, OperationState::UpdateComplete).await;
    let st = o.status.unwrap();
    assert_eq!(st.operations.len(), 1, "one operation");
    assert_eq!(st.operations[0].operation_id, operation_id);
    let fingerprint = |pem: &str| pki::pem_fingerprint(pem).unwrap();
    let ext = secret(ns, "kafka-external-tls").await;
    assert_eq!(data(&ext, "tls.crt"), ext_leaf.cert_pem, "the certificate issued for the operation is kept");
    assert_eq!(st.external.unwrap().fingerprint_sha256, Some(fingerprint(&ext_leaf.cert_pem)));
    let int = secret(ns, "kafka-internal-tls").await;
    assert_ne!(data(&int, "tls.crt"), int_leaf.cert_pem, "one from another operation is replaced");
    assert_eq!(st.internal.unwrap().fingerprint_sha256, Some(fingerprint(&data(&int, "tls.crt"))));
    assert!(openssl_verifies(&int_ca.cert_pem, &data(&int, "tls.crt")), "signed by the kept CA");
    assert_eq!(
        int.metadata.annotations.unwrap_or_default().get("clustersecurity.io/operation-id"),
        Some(&operation_id),
        "marked with the operation it was issued for"
    );
    assert_eq!(sts_generation(ns).await - generation, 1, "one rollout");
    wait_sts_ready(cp, ns, "kafka").await;
    support::assert_no_secret_leaks(&[]).await;
}

#[tokio::test]
async fn a_recreated_rotation_reuses_the_kept_ca_and_brokers_keep_their_tls_secret() {
    let cp = &env().cp;
    let ns = "certs-kept";
    webhook_ready(cp).await;
    brokers(cp, ns, "kafka", 1).await;
    apply(cp, &rotation(ns, "{label: ext1}", "{label: int1}"));
    let first = wait_op(ns, OperationState::UpdateComplete).await;
    let ca_fingerprint = first.status.unwrap().external.unwrap().ca_fingerprint_sha256;
    let tls = secret(ns, "kafka-external-tls").await;
    let out = cp.kubectl(&["delete", "certrot", "certs", "-n", ns, "--wait=true"]);
    assert!(out.status.success(), "{}", stderr(&out));
    // A GitOps prune or rename: what the brokers mount and what clients trust stays.
    let kept = secret(ns, "kafka-external-tls").await;
    assert_eq!(kept.data, tls.data, "the brokers' TLS Secret is kept");
    assert!(kept.metadata.owner_references.unwrap_or_default().is_empty());
    assert!(secret(ns, "kafka-external-ca").await.data.is_some(), "the CA and its key are kept");
    let trust = Api::<ConfigMap>::namespaced(cp.client().await.unwrap(), ns).get("kafka-external-trust").await;
    assert!(trust.is_ok(), "the trust bundle is kept");
    // Re-created (a new label): the kept CA signs the new certificate; clients are unaffected.
    apply(cp, &rotation(ns, "{label: ext2}", "{label: int1}"));
    let second = wait_op(ns, OperationState::UpdateComplete).await;
    let ops_before = second.status.as_ref().map_or(0, |s| s.operations.len());
    let ext = second.status.unwrap().external.unwrap();
    assert_eq!(ext.ca_fingerprint_sha256, ca_fingerprint, "same CA fingerprint after re-creation");
    let renewed = secret(ns, "kafka-external-tls").await;
    assert_ne!(data(&renewed, "tls.crt"), data(&tls, "tls.crt"), "a new leaf");
    assert!(openssl_verifies(&data(&tls, "ca.crt"), &data(&renewed, "tls.crt")), "verifies against the old CA");

    // Someone deletes the brokers' TLS Secret and the trust bundle: the Secret is issued again
    // (same label, same CA) in a new operation, the bundle is written again.
    let out = cp.kubectl(&["delete", "secret/kafka-external-tls", "configmap/kafka-external-trust", "-n", ns]);
    assert!(out.status.success(), "{}", stderr(&out));
    let api = api(ns).await;
    let again = wait_until(Duration::from_secs(90), "the TLS Secret issued again", || {
        let api = api.clone();
        async move {
            let o = api.get("certs").await.map_err(|e| e.to_string())?;
            let st = o.status.clone().unwrap_or_default();
            let done = st.operations.len() == ops_before + 1
                && st.operations[0].operation_state == OperationState::UpdateComplete
                && st.current_operation.is_none();
            done.then_some(o).ok_or(format!("{:?}", st.operations.first().map(|o| o.operation_state)))
        }
    })
    .await
    .unwrap();
    let ext = again.status.unwrap().external.unwrap();
    assert_eq!(ext.label, "ext2");
    assert_eq!(ext.ca_fingerprint_sha256, ca_fingerprint, "same CA");
    let reissued = secret(ns, "kafka-external-tls").await;
    assert!(openssl_verifies(&data(&tls, "ca.crt"), &data(&reissued, "tls.crt")));
    wait_until(Duration::from_secs(60), "the trust bundle written again", || async {
        let cm = Api::<ConfigMap>::namespaced(cp.client().await.unwrap(), ns).get_opt("kafka-external-trust").await;
        let ca = cm.ok().flatten().and_then(|c| c.data).and_then(|d| d.get("current-ca.crt").cloned());
        (ca.as_deref() == Some(data(&tls, "ca.crt").as_str())).then_some(()).ok_or(format!("{ca:?}"))
    })
    .await
    .unwrap();
    let events = stdout(&cp.kubectl(&["get", "events", "-n", ns, "-o", "jsonpath={.items[*].reason}"]));
    assert!(events.contains("DriftRepaired"), "{events}");
    support::assert_no_secret_leaks(&[]).await;
}

#[tokio::test]
async fn a_foreign_secret_with_a_derived_name_is_never_taken_over() {
    let cp = &env().cp;
    let ns = "certs-foreign";
    webhook_ready(cp).await;
    brokers(cp, ns, "kafka", 1).await;
    // Another team's TLS Secret that happens to have the name the operator derives.
    let foreign = format!(
        "apiVersion: v1\nkind: Secret\nmetadata: {{name: kafka-external-tls, namespace: {ns}}}\ntype: kubernetes.io/tls\nstringData: {{tls.crt: another-teams-cert, tls.key: another-teams-key}}\n"
    );
    apply(cp, &foreign);
    apply(cp, &rotation(ns, "{label: ext1}", "{label: int1}"));
    let api = api(ns).await;
    let stalled = wait_until(Duration::from_secs(60), "Stalled NameConflict", || {
        let api = api.clone();
        async move {
            let o = api.get("certs").await.map_err(|e| e.to_string())?;
            let st = o.status.unwrap_or_default();
            st.conditions
                .iter()
                .find(|c| c.type_ == "Stalled" && c.reason == "NameConflict")
                .map(|c| (c.message.clone(), st.operations.len()))
                .ok_or(format!("{:?}", st.conditions))
        }
    })
    .await
    .unwrap();
    assert!(
        stalled.0.contains(&format!("Secret {ns}/kafka-external-tls"))
            && stalled.0.contains("clustersecurity.io/adopt=true"),
        "{}",
        stalled.0
    );
    assert_eq!(stalled.1, 0, "no operation was recorded");
    let untouched = secret(ns, "kafka-external-tls").await;
    assert_eq!(data(&untouched, "tls.crt"), "another-teams-cert", "untouched");
    assert!(untouched.metadata.labels.is_none(), "not even labelled");
    assert!(secret_opt(ns, "kafka-internal-tls").await.is_none(), "nothing else was written either");
    // The way out the message names: allow adoption.
    let out = cp.kubectl(&["annotate", "secret", "kafka-external-tls", "-n", ns, "clustersecurity.io/adopt=true"]);
    assert!(out.status.success(), "{}", stderr(&out));
    wait_op(ns, OperationState::UpdateComplete).await;
    assert!(data(&secret(ns, "kafka-external-tls").await, "tls.crt").contains("BEGIN CERTIFICATE"));
}

async fn secret_opt(ns: &str, name: &str) -> Option<Secret> {
    Api::<Secret>::namespaced(env().cp.client().await.unwrap(), ns).get_opt(name).await.unwrap()
}

/// A CA of the user's and, in Secret `corp` (the seed's key names), a certificate it signed for
/// the brokers of `ns`; returns the CA.
fn corp_secret(ns: &str, ca_name: &str) -> pki::KeyedCert {
    let corp = pki::new_ca(ca_name, Timestamp::now(), 3650).unwrap();
    let leaf = pki::issue_leaf(&corp, "kafka", &[format!("kafka.{ns}.svc")], pki::Usage::Server, Timestamp::now(), 30)
        .unwrap();
    apply(
        &env().cp,
        &format!(
            "apiVersion: v1\nkind: Secret\nmetadata: {{name: corp, namespace: {ns}}}\nstringData:\n  key: {}\n  cert: {}\n  cacert: {}\n",
            serde_json::to_string(&leaf.key_pem).unwrap(),
            serde_json::to_string(&leaf.cert_pem).unwrap(),
            serde_json::to_string(&corp.cert_pem).unwrap()
        ),
    );
    corp
}

/// `spec.trustDistribution`: the trust bundle is copied into the listed namespaces and those
/// whose labels match, each consenting (annotation `clustersecurity.io/accept-trust-from`) — a
/// namespace labelled later gets its copy without any change to the
/// resource — kept equal to the original through a CA change, never over someone else's
/// ConfigMap, and removed from a namespace that leaves the list.
#[tokio::test]
async fn the_trust_bundle_is_copied_where_clients_live_and_kept_current() {
    let cp = &env().cp;
    let ns = "certs-dist";
    webhook_ready(cp).await;
    brokers(cp, ns, "kafka", 1).await;
    apply(
        cp,
        "apiVersion: v1\nkind: Namespace\nmetadata: {name: dist-listed, annotations: {clustersecurity.io/accept-trust-from: certs-dist}}\n---\napiVersion: v1\nkind: Namespace\nmetadata: {name: dist-labelled, labels: {kafka-clients: orders}, annotations: {clustersecurity.io/accept-trust-from: certs-dist}}\n---\napiVersion: v1\nkind: Namespace\nmetadata: {name: dist-taken, annotations: {clustersecurity.io/accept-trust-from: certs-dist}}\n---\napiVersion: v1\nkind: ConfigMap\nmetadata: {name: kafka-external-trust, namespace: dist-taken}\ndata: {ca.crt: mine}\n",
    );
    let distribution = "  trustDistribution: {namespaces: [dist-listed, dist-taken], namespaceSelector: {matchLabels: {kafka-clients: orders}}}\n";
    apply(cp, &format!("{}{distribution}", rotation(ns, "{label: e1}", "{label: i1}")));
    wait_op(ns, OperationState::UpdateComplete).await;
    let client = cp.client().await.unwrap();
    let bundle = |n: &str| {
        let api = Api::<ConfigMap>::namespaced(client.clone(), n);
        async move { api.get_opt("kafka-external-trust").await.unwrap().and_then(|c| c.data) }
    };
    let same_as_original = |n: &'static str| {
        let n = n.to_string();
        async move {
            let original = bundle(ns).await;
            let copy = bundle(&n).await;
            (original.is_some() && copy == original).then_some(()).ok_or(format!("{n}: {copy:?}"))
        }
    };
    for n in ["dist-listed", "dist-labelled"] {
        wait_until(Duration::from_secs(60), &format!("copy in {n}"), || same_as_original(n)).await.unwrap();
    }
    // Someone else's ConfigMap of that name is left alone and named.
    assert_eq!(bundle("dist-taken").await.unwrap()["ca.crt"], "mine");
    let condition = "{.status.conditions[?(@.type==\"TrustDistributed\")].status}/{.status.conditions[?(@.type==\"TrustDistributed\")].message}";
    let text = support::wait_jsonpath(cp, ("certrot", ns, "certs"), condition, 60, |t| t.starts_with("False/")).await;
    assert!(
        text.contains("dist-taken: ConfigMap kafka-external-trust exists and is not this resource's copy"),
        "{text}"
    );

    // A namespace labelled later gets its copy at once (a watch, not the five-minute resync).
    apply(cp, "apiVersion: v1\nkind: Namespace\nmetadata: {name: dist-later, labels: {kafka-clients: orders}, annotations: {clustersecurity.io/accept-trust-from: certs-dist}}\n");
    wait_until(Duration::from_secs(30), "copy in dist-later", || same_as_original("dist-later")).await.unwrap();

    // A CA change: every copy holds the new CA next to the old one while the brokers wait.
    let corp = corp_secret(ns, "dist corp");
    apply(cp, &format!("{}{distribution}", rotation(ns, "{label: e2, type: secret, secretName: corp}", "{label: i1}")));
    for n in ["dist-listed", "dist-labelled", "dist-later"] {
        wait_until(Duration::from_secs(60), &format!("new CA in {n}"), || {
            let corp = corp.cert_pem.clone();
            async move {
                let copy = bundle(n).await.unwrap_or_default();
                let ca = copy.get("ca.crt").cloned().unwrap_or_default();
                (ca.contains(corp.trim()) && ca.matches("BEGIN CERTIFICATE").count() == 2).then_some(()).ok_or(ca)
            }
        })
        .await
        .unwrap();
    }

    // Leaving the list and the selector removes the copy; the foreign ConfigMap stays.
    apply(cp, "apiVersion: v1\nkind: Namespace\nmetadata: {name: dist-labelled, labels: {kafka-clients: other}, annotations: {clustersecurity.io/accept-trust-from: certs-dist}}\n");
    let fewer = "  trustDistribution: {namespaceSelector: {matchLabels: {kafka-clients: orders}}}\n";
    apply(cp, &format!("{}{fewer}", rotation(ns, "{label: e2, type: secret, secretName: corp}", "{label: i1}")));
    for n in ["dist-listed", "dist-labelled"] {
        wait_until(Duration::from_secs(60), &format!("copy removed from {n}"), || async move {
            bundle(n).await.is_none().then_some(()).ok_or("still there".to_string())
        })
        .await
        .unwrap();
    }
    assert_eq!(bundle("dist-taken").await.unwrap()["ca.crt"], "mine");
    assert!(bundle("dist-later").await.is_some(), "still selected");
    let to = stdout(&cp.kubectl(&["get", "certrot", "certs", "-n", ns, "-o", "jsonpath={.status.trustDistributedTo}"]));
    assert_eq!(to, "[\"dist-later\"]");

    // Deleted under deletionPolicy Delete (the brokers gone first, so nothing mounts what goes):
    // the copies go with it; the foreign ConfigMap stays.
    let out = cp.kubectl(&["delete", "statefulset", "kafka", "-n", ns]);
    assert!(out.status.success(), "{}", stderr(&out));
    let policy = "  deletionPolicy: Delete\n";
    apply(
        cp,
        &format!("{}{fewer}{policy}", rotation(ns, "{label: e2, type: secret, secretName: corp}", "{label: i1}")),
    );
    support::wait_jsonpath(cp, ("certrot", ns, "certs"), "{.metadata.finalizers}", 60, |f| {
        f.contains("mounted-objects")
    })
    .await;
    let out = cp.kubectl(&["delete", "certrot", "certs", "-n", ns, "--wait=true", "--timeout=60s"]);
    assert!(out.status.success(), "{}", stderr(&out));
    assert!(bundle("dist-later").await.is_none(), "the copy went with it");
    assert_eq!(bundle("dist-taken").await.unwrap()["ca.crt"], "mine");
    support::assert_no_secret_leaks(&[]).await;
}

/// CA renewal by the clock, and maintenance windows: a kept CA inside `ca.renewalDays` of its end
/// (one the test puts in place, ten days from expiry — the clock, fixed) is due; with the window
/// closed the renewal waits (nothing starts, `Ready` says so); once a window is open it runs,
/// trust first, and the new CA has the full validity.
#[tokio::test]
async fn a_kept_ca_near_its_end_is_renewed_in_the_next_maintenance_window() {
    let cp = &env().cp;
    let ns = "certs-ca-renewal";
    webhook_ready(cp).await;
    brokers(cp, ns, "kafka", 1).await;
    let spec = |window: &str| {
        format!(
            "apiVersion: clustersecurity.io/v1alpha1\nkind: CertificateRotation\nmetadata: {{name: certs, namespace: {ns}}}\nspec:\n  clusterRef: {{kind: StatefulSet, name: kafka}}\n  internal: {{label: i1}}\n  ca: {{validityDays: 3650, renewalDays: 30}}\n  maintenanceWindows: ['{window}']\n"
        )
    };
    apply(cp, &spec("0 0 1 1 *"));
    wait_op(ns, OperationState::UpdateComplete).await;
    // The kept CA is ten days from its end.
    let ending = pki::new_ca("kafka internal CA", Timestamp::now(), 10).unwrap();
    let secrets = Api::<Secret>::namespaced(cp.client().await.unwrap(), ns);
    let mut kept = secrets.get("kafka-internal-ca").await.unwrap();
    kept.data = None;
    kept.string_data =
        Some([("ca.crt".into(), ending.cert_pem.clone()), ("ca.key".into(), ending.key_pem.clone())].into());
    secrets.replace("kafka-internal-ca", &Default::default(), &kept).await.unwrap();

    let ready = "{.status.conditions[?(@.type==\"Ready\")].message}";
    let message =
        support::wait_jsonpath(cp, ("certrot", ns, "certs"), ready, 60, |m| m.contains("maintenance window")).await;
    assert!(message.contains("waits for the next maintenance window"), "{message}");
    assert_eq!(api(ns).await.get("certs").await.unwrap().status.unwrap().operations.len(), 1, "nothing started");
    assert_eq!(data(&secret(ns, "kafka-internal-ca").await, "ca.crt"), ending.cert_pem, "the CA is not renewed yet");

    apply(cp, &spec("* * * * *"));
    let renewed = wait_until(Duration::from_secs(120), "the CA renewed and rolled", || async move {
        let o = api(ns).await.get("certs").await.map_err(|e| e.to_string())?;
        let st = o.status.unwrap_or_default();
        let phase = st.trust_transition.as_ref().map(|t| t.phase);
        (phase == Some(cluster_security_api::TrustPhase::OldCaRetained) && st.current_operation.is_none())
            .then_some(st)
            .ok_or(format!("{phase:?}"))
    })
    .await
    .unwrap();
    assert_eq!(renewed.operations.len(), 2, "one renewal operation");
    let ca = data(&secret(ns, "kafka-internal-ca").await, "ca.crt");
    assert_ne!(ca, ending.cert_pem);
    let internal = renewed.internal.unwrap();
    assert_eq!(internal.ca_fingerprint_sha256, Some(pki::pem_fingerprint(&ca).unwrap()), "certificates from it");
    let not_after: Timestamp = internal.ca_not_after.unwrap().parse().unwrap();
    let left = not_after.as_second() - Timestamp::now().as_second();
    assert!(left > 3600 * 86_400, "the new CA has spec.ca.validityDays: {left}s left");
    support::assert_no_secret_leaks(&[]).await;
}

/// A CA change put back while it waits for clients is withdrawn: the operation completes with
/// the certificate in force, clients are no longer told to trust the CA nothing will present,
/// and nothing waits any more.
#[tokio::test]
async fn a_ca_change_reverted_while_waiting_for_clients_is_withdrawn() {
    let cp = &env().cp;
    let ns = "certs-withdrawn";
    webhook_ready(cp).await;
    brokers(cp, ns, "kafka", 1).await;
    apply(cp, &rotation(ns, "{label: a1}", "{label: i1}"));
    let first = wait_op(ns, OperationState::UpdateComplete).await.status.unwrap().external.unwrap();
    let corp = corp_secret(ns, "withdrawn corp");
    apply(
        cp,
        &rotation(ns, "{label: b1, type: secret, secretName: corp, trustTransitionSeconds: 3600}", "{label: i1}"),
    );
    let waiting = "{.status.conditions[?(@.type==\"WaitingForClientTrust\")].status}";
    support::wait_jsonpath(cp, ("certrot", ns, "certs"), waiting, 60, |t| t == "True").await;
    let cms = Api::<ConfigMap>::namespaced(cp.client().await.unwrap(), ns);
    let bundle = || async { cms.get("kafka-external-trust").await.unwrap().data.unwrap().remove("ca.crt").unwrap() };
    assert_eq!(bundle().await.matches("BEGIN CERTIFICATE").count(), 2, "published next to the old one");

    // Put back.
    apply(cp, &rotation(ns, "{label: a1}", "{label: i1}"));
    let o = wait_op(ns, OperationState::UpdateComplete).await;
    let st = o.status.unwrap();
    assert_eq!(
        st.external.as_ref().unwrap().fingerprint_sha256,
        first.fingerprint_sha256,
        "the certificate in force stays"
    );
    assert!(st.trust_transition.is_none(), "{:?}", st.trust_transition);
    let condition = st.conditions.iter().find(|c| c.type_ == "WaitingForClientTrust").unwrap();
    assert_eq!(condition.status, "False");
    assert!(condition.message.contains("withdrawn"), "{}", condition.message);
    let published = bundle().await;
    assert_eq!(published.matches("BEGIN CERTIFICATE").count(), 1, "only the CA in force");
    assert!(!published.contains(corp.cert_pem.trim()));
    support::assert_no_secret_leaks(&[]).await;
}
