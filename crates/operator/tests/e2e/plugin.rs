//! `kubectl clustersecurity` (the `kubectl-clustersecurity` binary) against the real control
//! plane: `status` of a completed CertificateRotation checked field by field against its status
//! and its Secret; `confirm-trust` refused while nothing waits and completing a waiting CA
//! change (`renew-ca`); `renew` writing its annotation and a new certificate following; `pause`
//! / `resume`; `inspect secret` agreeing with the operator; and `reencrypt` of a namespace's
//! Secrets killed at about half and resumed, every Secret then stored under the new key in etcd,
//! none lost.

use std::path::Path;
use std::process::{Command, Output, Stdio};
use std::time::Duration;

use crate::support::{apply, brokers, env, stderr, stdout, webhook_ready};
use base64::Engine as _;
use cluster_security_api::{CertificateRotation, OperationState, TrustPhase};
use cluster_security_testbed::{create_numbered_secrets, pki, wait_until, ControlPlane, Options};
use k8s_openapi::api::core::v1::Secret;
use k8s_openapi::jiff::Timestamp;
use kube::api::{ListParams, ObjectMeta, PostParams};
use kube::{Api, ResourceExt};

const BIN: &str = env!("CARGO_BIN_EXE_kubectl-clustersecurity");

/// Run the plugin against `kubeconfig`.
fn plugin(kubeconfig: &Path, args: &[&str]) -> Output {
    Command::new(BIN).arg("--kubeconfig").arg(kubeconfig).args(args).output().expect("kubectl-clustersecurity runs")
}

fn code(o: &Output) -> i32 {
    o.status.code().unwrap_or(-1)
}

fn rotation(ns: &str) -> String {
    format!(
        "apiVersion: clustersecurity.io/v1alpha1\nkind: CertificateRotation\nmetadata: {{name: certs, namespace: {ns}}}\nspec:\n  clusterRef: {{kind: StatefulSet, name: kafka}}\n  external: {{label: ext1}}\n  rolloutTimeoutSeconds: 120\n  trustDistribution: {{namespaces: [{ns}-apps]}}\n"
    )
}

/// The rotation once `done` holds for it.
async fn wait_for(
    api: &Api<CertificateRotation>,
    what: &str,
    done: impl Fn(&CertificateRotation) -> bool,
) -> CertificateRotation {
    wait_until(Duration::from_secs(90), what, || {
        let api = api.clone();
        let ok = &done;
        async move {
            let o = api.get("certs").await.map_err(|e| e.to_string())?;
            if ok(&o) {
                Ok(o)
            } else {
                Err(format!("{:?}", o.status.map(|s| (s.current_operation, s.conditions))))
            }
        }
    })
    .await
    .unwrap()
}

/// Settled: the status describes the current generation, nothing runs, the newest completed.
fn settled(o: &CertificateRotation) -> bool {
    let Some(st) = &o.status else { return false };
    st.observed_generation == o.metadata.generation
        && st.current_operation.is_none()
        && st.operations.first().map(|op| op.operation_state) == Some(OperationState::UpdateComplete)
}

#[tokio::test]
async fn status_renew_and_confirm_trust_on_a_certificate_rotation() {
    let cp = &env().cp;
    let kc = cp.kubeconfig_path();
    let ns = "plugin-certrot";
    webhook_ready(cp).await;
    brokers(cp, ns, "kafka", 1).await;
    // A namespace that accepts copies of the trust bundle from this one.
    apply(
        cp,
        &format!("apiVersion: v1\nkind: Namespace\nmetadata: {{name: {ns}-apps, annotations: {{clustersecurity.io/accept-trust-from: {ns}}}}}\n"),
    );
    apply(cp, &rotation(ns));
    let api: Api<CertificateRotation> = Api::namespaced(cp.client().await.unwrap(), ns);
    let first = wait_for(&api, "first rotation complete, trust copied", |o| {
        settled(o) && o.status.as_ref().is_some_and(|s| !s.trust_distributed_to.is_empty())
    })
    .await;
    let st = first.status.clone().unwrap();
    let ext = st.external.clone().unwrap();
    let op = &st.operations[0];

    // status, -o json: field by field against the object's status and the Secret.
    let out = plugin(&kc, &["status", "certrot/certs", "-n", ns, "-o", "json"]);
    assert_eq!(code(&out), 0, "{}", stderr(&out));
    let report: serde_json::Value = serde_json::from_str(&stdout(&out)).unwrap();
    assert_eq!(report["kind"], "CertificateRotation");
    assert_eq!((report["namespace"].as_str(), report["name"].as_str()), (Some(ns), Some("certs")));
    assert_eq!(report["observedGeneration"], serde_json::json!(first.metadata.generation));
    assert_eq!(report["operation"]["id"], op.operation_id.as_str());
    assert_eq!(report["operation"]["state"], "UPDATE_COMPLETE");
    assert_eq!(report["operation"]["current"], false);
    assert_eq!(report["verification"]["result"].as_str(), op.verification.as_deref());
    let c = &report["certificates"][0];
    assert_eq!(c["slot"], "external");
    assert_eq!(c["label"], "ext1");
    assert_eq!(c["serialNumber"].as_str(), ext.serial_number.as_deref());
    assert_eq!(c["notAfter"].as_str(), ext.not_after.as_deref());
    assert_eq!(c["fingerprintSHA256"].as_str(), ext.fingerprint_sha256.as_deref());
    assert_eq!(c["caFingerprintSHA256"].as_str(), ext.ca_fingerprint_sha256.as_deref());
    assert!(c.get("clientImpact").is_none(), "a first issue has no client impact");
    let tls = Api::<Secret>::namespaced(cp.client().await.unwrap(), ns).get("kafka-external-tls").await.unwrap();
    let ca_pem = String::from_utf8(tls.data.as_ref().unwrap()["ca.crt"].0.clone()).unwrap();
    assert_eq!(c["secret"]["name"], "kafka-external-tls");
    assert_eq!(c["secret"]["state"], "matches status");
    assert_eq!(c["secret"]["caFingerprintSHA256"].as_str(), Some(pki::pem_fingerprint(&ca_pem).unwrap().as_str()));
    assert_eq!(report["trust"]["configMap"], "kafka-external-trust");
    assert_eq!(report["trust"]["currentCa"].as_str(), ext.ca_fingerprint_sha256.as_deref());
    assert_eq!(report["trust"]["copies"], serde_json::json!(st.trust_distributed_to));
    assert_eq!(st.trust_distributed_to, [format!("{ns}-apps")], "the copy is recorded");
    let reasons: Vec<&str> = report["events"].as_array().unwrap().iter().filter_map(|e| e["reason"].as_str()).collect();
    assert!(reasons.contains(&"UpdateComplete"), "the object's own events: {reasons:?}");
    // The screen says the same.
    let text = stdout(&plugin(&kc, &["status", "certificaterotation/certs", "-n", ns]));
    for expected in [
        format!("CertificateRotation {ns}/certs"),
        format!("serial              {}", ext.serial_number.as_deref().unwrap()),
        format!("CA fingerprint      {}", ext.ca_fingerprint_sha256.as_deref().unwrap()),
        "Secret              kafka-external-tls: matches status".to_string(),
        format!("id                    {} (last)", op.operation_id),
    ] {
        assert!(text.contains(&expected), "missing {expected:?} in\n{text}");
    }
    assert!(!text.contains("PRIVATE KEY"), "{text}");

    // confirm-trust: nothing waits, so it refuses and writes nothing.
    let out = plugin(&kc, &["confirm-trust", "certrot/certs", "-n", ns]);
    assert_eq!(code(&out), 1, "{}", stdout(&out));
    assert!(stderr(&out).contains("nothing waits for clients' trust"), "{}", stderr(&out));
    let annotations = api.get("certs").await.unwrap().annotations().clone();
    assert!(!annotations.contains_key("clustersecurity.io/client-trust-updated"));
    // A verb the kind does not have, and an object that does not exist.
    assert_eq!(code(&plugin(&kc, &["renew", "csp/certs", "-n", ns])), 2);
    assert_eq!(code(&plugin(&kc, &["status", "certrot/nope", "-n", ns])), 4);

    // renew: the annotation, the kubectl line, and a new certificate from the same CA.
    let out = plugin(&kc, &["renew", "certrot/certs", "-n", ns]);
    assert_eq!(code(&out), 0, "{}", stderr(&out));
    let value = api.get("certs").await.unwrap().annotations()["clustersecurity.io/renew"].clone();
    let line =
        format!("kubectl annotate certificaterotation certs -n {ns} clustersecurity.io/renew={value} --overwrite");
    assert!(stdout(&out).contains(&line), "{}", stdout(&out));
    let renewed = wait_for(&api, "renewal complete", |o| {
        settled(o) && o.status.as_ref().unwrap().renew_request.as_deref() == Some(value.as_str())
    })
    .await;
    let ext2 = renewed.status.as_ref().unwrap().external.clone().unwrap();
    assert_ne!(ext2.serial_number, ext.serial_number, "a new certificate");
    assert_eq!(ext2.ca_fingerprint_sha256, ext.ca_fingerprint_sha256, "same CA");
    assert_ne!(renewed.status.as_ref().unwrap().operations[0].operation_id, op.operation_id, "a new operation");

    // renew-ca: the new external CA waits for clients; confirm-trust finds the operation itself.
    assert_eq!(code(&plugin(&kc, &["renew-ca", "certrot/certs", "-n", ns])), 0);
    let waiting = wait_for(&api, "waiting for clients", |o| {
        o.status
            .as_ref()
            .and_then(|s| s.trust_transition.as_ref())
            .is_some_and(|t| t.phase == TrustPhase::WaitingForClients)
    })
    .await;
    let op_id = waiting.status.as_ref().unwrap().trust_transition.as_ref().unwrap().operation_id.clone();
    let text = stdout(&plugin(&kc, &["status", "certrot/certs", "-n", ns]));
    assert!(text.contains(&format!("operation {op_id} waits for clients")), "{text}");
    assert!(text.contains(&format!("kubectl clustersecurity confirm-trust certrot/certs -n {ns}")), "{text}");
    let out = plugin(&kc, &["confirm-trust", "certrot/certs", "-n", ns]);
    assert_eq!(code(&out), 0, "{}", stderr(&out));
    assert!(stdout(&out).contains(&format!("clustersecurity.io/client-trust-updated={op_id}")), "{}", stdout(&out));
    let switched = wait_for(&api, "switched to the new CA", |o| {
        settled(o) && o.status.as_ref().unwrap().operations[0].operation_id == op_id
    })
    .await;
    let st3 = switched.status.unwrap();
    assert_ne!(st3.external.as_ref().unwrap().ca_fingerprint_sha256, ext.ca_fingerprint_sha256, "the CA changed");
    assert!(st3.trust_transition.unwrap().phase >= TrustPhase::OldCaRetained);

    // pause / resume: the documented annotation, and the operator says Paused.
    assert_eq!(code(&plugin(&kc, &["pause", "certrot/certs", "-n", ns])), 0);
    wait_for(&api, "Ready=False Paused", |o| {
        o.status.as_ref().is_some_and(|s| s.conditions.iter().any(|c| c.type_ == "Ready" && c.reason == "Paused"))
    })
    .await;
    assert!(stdout(&plugin(&kc, &["status", "certrot/certs", "-n", ns])).contains("PAUSED"));
    let out = plugin(&kc, &["resume", "certrot/certs", "-n", ns]);
    assert_eq!(code(&out), 0);
    assert!(stdout(&out).contains("clustersecurity.io/reconcile-"), "{}", stdout(&out));
    assert!(!api.get("certs").await.unwrap().annotations().contains_key("clustersecurity.io/reconcile"));
    crate::support::assert_no_secret_leaks(&[]).await;
}

#[tokio::test]
async fn inspect_secret_says_what_the_operator_would_decide() {
    let cp = &env().cp;
    let kc = cp.kubeconfig_path();
    let ns = "plugin-inspect";
    apply(cp, &format!("apiVersion: v1\nkind: Namespace\nmetadata: {{name: {ns}}}\n"));
    let now = Timestamp::now();
    let ca = pki::new_ca("inspect CA", now, 365).unwrap();
    let sans = vec!["kafka.plugin-inspect.svc".to_string()];
    let leaf = pki::issue_leaf(&ca, "kafka", &sans, pki::Usage::Server, now, 90).unwrap();
    let other = pki::issue_leaf(&ca, "kafka", &sans, pki::Usage::Server, now, 90).unwrap();
    let secrets = Api::<Secret>::namespaced(cp.client().await.unwrap(), ns);
    for (name, key) in [("good", &leaf.key_pem), ("wrong-key", &other.key_pem)] {
        let s = Secret {
            metadata: ObjectMeta { name: Some(name.into()), ..Default::default() },
            type_: Some("kubernetes.io/tls".into()),
            string_data: Some(
                [("tls.crt", &leaf.cert_pem), ("tls.key", key), ("ca.crt", &ca.cert_pem)]
                    .map(|(k, v)| (k.to_string(), v.clone()))
                    .into(),
            ),
            ..Default::default()
        };
        secrets.create(&PostParams::default(), &s).await.unwrap();
    }
    let out = plugin(&kc, &["inspect", "secret", "good", "-n", ns]);
    let text = stdout(&out);
    assert_eq!(code(&out), 0, "{text}{}", stderr(&out));
    let serial = cluster_security_testbed::pki::certificates(&leaf.cert_pem).unwrap();
    let fingerprint = pki::fingerprint(&serial[0]);
    for expected in [
        "read as cert-manager",
        "issuer       CN=inspect CA",
        &format!("SHA-256      {fingerprint}"),
        "DNS names    kafka.plugin-inspect.svc",
        "key: PKCS#8, matches the certificate",
        &format!("CA SHA-256 {}", pki::pem_fingerprint(&ca.cert_pem).unwrap()),
        "verdict: ACCEPTED",
    ] {
        assert!(text.contains(expected), "missing {expected:?} in\n{text}");
    }
    assert!(!text.contains("PRIVATE KEY") && !text.contains(&leaf.key_pem[40..80]), "no key material:\n{text}");
    let out = plugin(&kc, &["inspect", "secret", "wrong-key", "-n", ns]);
    assert_eq!(code(&out), 1, "the operator would refuse it");
    assert!(
        stdout(&out).contains("verdict: REFUSED — the private key does not match the certificate"),
        "{}",
        stdout(&out)
    );
    assert_eq!(code(&plugin(&kc, &["inspect", "secret", "missing", "-n", ns])), 4);
    crate::support::assert_no_secret_leaks(&[]).await;
}

const IDENTITY: &str = "apiVersion: apiserver.config.k8s.io/v1\nkind: EncryptionConfiguration\nresources:\n- resources: [secrets]\n  providers:\n  - identity: {}\n";

/// aescbc with `keys` (name, key byte): the first encrypts, all decrypt — a key rotation puts
/// the new key first and keeps the old ones until every Secret is rewritten.
fn aescbc(keys: &[(&str, u8)]) -> String {
    let keys: String = keys
        .iter()
        .map(|(name, byte)| {
            let key = base64::engine::general_purpose::STANDARD.encode([*byte; 32]);
            format!("      - {{name: {name}, secret: {key}}}\n")
        })
        .collect();
    format!("apiVersion: apiserver.config.k8s.io/v1\nkind: EncryptionConfiguration\nresources:\n- resources: [secrets]\n  providers:\n  - aescbc:\n      keys:\n{keys}  - identity: {{}}\n")
}

/// How many of `ns`'s Secrets etcd holds under `prefix`, and how many in all.
fn stored_under(cp: &ControlPlane, ns: &str, prefix: &[u8]) -> (usize, usize) {
    let all = cp.etcd_get_prefix(&format!("/registry/secrets/{ns}/")).unwrap();
    (all.iter().filter(|(_, v)| v.starts_with(prefix)).count(), all.len())
}

fn checkpoint_handled(path: &Path) -> u64 {
    let Ok(bytes) = std::fs::read(path) else { return 0 };
    let Ok(c) = serde_json::from_slice::<serde_json::Value>(&bytes) else { return 0 };
    ["rewritten", "unchanged", "gone", "failed"].iter().map(|k| c["counts"][k].as_u64().unwrap_or(0)).sum()
}

/// After a key change, `reencrypt` of one namespace is killed at about half and resumed: every
/// Secret is then stored under the new key (read in etcd), every resourceVersion moved, none
/// lost, and the resumed run did only what was left. Its own control plane: the key change
/// restarts kube-apiserver.
#[tokio::test]
async fn reencrypt_killed_at_half_resumes_and_rewrites_every_secret() {
    const NS: &str = "reenc";
    const COUNT: usize = 300;
    let cp = ControlPlane::start(Options { encryption_config: Some(IDENTITY.into()) }).unwrap();
    let kc = cp.kubeconfig_path();
    let client = cp.client().await.unwrap();
    create_numbered_secrets(&client, NS, "s", COUNT).await.unwrap();
    // A namespace out of scope: not touched.
    create_numbered_secrets(&client, "reenc-other", "o", 5).await.unwrap();
    cp.set_encryption_config(&aescbc(&[("key1", 7)])).unwrap();
    cp.restart_apiserver().unwrap();
    let client = cp.client().await.unwrap();
    let secrets = Api::<Secret>::namespaced(client.clone(), NS);
    let versions = |list: Vec<Secret>| -> std::collections::BTreeMap<String, String> {
        list.into_iter().map(|s| (s.name_any(), s.resource_version().unwrap())).collect()
    };
    let before = versions(secrets.list(&ListParams::default()).await.unwrap().items);
    assert_eq!(before.len(), COUNT);
    assert_eq!(stored_under(&cp, NS, b"k8s:enc:aescbc:v1:key1:"), (0, COUNT), "nothing rewritten by itself");

    // One at a time, a checkpoint every 10: slow enough to be caught in the middle.
    let dir = tempfile::tempdir().unwrap();
    let checkpoint = dir.path().join("cp.json");
    let cp_arg = checkpoint.to_str().unwrap();
    let args = ["reencrypt", "-n", NS, "--concurrency", "1", "--page-size", "10", "--checkpoint", cp_arg];
    let mut child = Command::new(BIN)
        .arg("--kubeconfig")
        .arg(&kc)
        .args(args)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let at_kill = wait_until(Duration::from_secs(30), "the checkpoint shows progress", || {
        let handled = checkpoint_handled(&checkpoint);
        async move { (handled >= COUNT as u64 / 3).then_some(handled).ok_or(handled.to_string()) }
    })
    .await
    .unwrap();
    child.kill().unwrap();
    let status = child.wait().unwrap();
    assert!(status.code().is_none(), "killed, not finished: {status:?}");
    let handled_at_kill = checkpoint_handled(&checkpoint);
    assert!((at_kill..COUNT as u64).contains(&handled_at_kill), "interrupted mid-way: {handled_at_kill}");
    let (rewritten_at_kill, _) = stored_under(&cp, NS, b"k8s:enc:aescbc:v1:key1:");
    assert!(rewritten_at_kill > 0 && rewritten_at_kill < COUNT, "part rewritten: {rewritten_at_kill}");

    // Without --resume the unfinished record is not overwritten.
    let out = plugin(&kc, &args);
    assert_eq!(code(&out), 2, "{}", stdout(&out));
    assert!(stderr(&out).contains("add --resume"), "{}", stderr(&out));

    // Resumed at the adaptive default.
    let resumed_args = ["reencrypt", "-n", NS, "--page-size", "10", "--checkpoint", cp_arg, "--resume"];
    let out = plugin(&kc, &resumed_args);
    let text = stdout(&out);
    assert_eq!(code(&out), 0, "{text}{}", stderr(&out));
    assert!(text.contains("(resuming after reenc/s-"), "{text}");
    assert!(text.contains(&format!("done: {COUNT} Secrets")), "{text}");
    assert!(
        text.contains(&format!("verified: {COUNT} of {COUNT} Secrets stored under the current provider")),
        "{text}"
    );
    let this_run: u64 = text
        .split("this run ")
        .nth(1)
        .and_then(|t| t.split_whitespace().next())
        .and_then(|n| n.replace(',', "").parse().ok())
        .unwrap();
    assert!(this_run <= COUNT as u64 - handled_at_kill + 1, "resumed, not redone: {this_run} after {handled_at_kill}");

    // In etcd: every Secret of the namespace under the new key, none lost; the other
    // namespace untouched.
    assert_eq!(stored_under(&cp, NS, b"k8s:enc:aescbc:v1:key1:"), (COUNT, COUNT));
    assert_eq!(stored_under(&cp, "reenc-other", b"k8s:enc:aescbc:v1:key1:"), (0, 5), "out of scope");
    let after = versions(secrets.list(&ListParams::default()).await.unwrap().items);
    assert_eq!(after.keys().collect::<Vec<_>>(), before.keys().collect::<Vec<_>>(), "none lost, none added");
    let unmoved: Vec<&String> = after.iter().filter(|(k, v)| before[*k] == **v).map(|(k, _)| k).collect();
    assert!(unmoved.is_empty(), "every Secret was rewritten: {unmoved:?}");
    // A resumed run of a completed record has nothing to do.
    let again = plugin(&kc, &resumed_args);
    assert_eq!(code(&again), 0);
    assert!(stdout(&again).contains("completed; nothing to resume"), "{}", stdout(&again));

    // Side by side with the pipeline the Kubernetes docs give, each after a key change of its
    // own so that each rewrites every Secret.
    let rotate = |keys: &[(&str, u8)]| {
        cp.set_encryption_config(&aescbc(keys)).unwrap();
        cp.restart_apiserver().unwrap();
    };
    rotate(&[("key2", 9), ("key1", 7)]);
    let full = dir.path().join("full.json");
    let started = std::time::Instant::now();
    let out = plugin(&kc, &["reencrypt", "-n", NS, "--checkpoint", full.to_str().unwrap(), "--no-verify"]);
    let plugin_secs = started.elapsed().as_secs_f64();
    assert_eq!(code(&out), 0, "{}{}", stdout(&out), stderr(&out));
    assert_eq!(stored_under(&cp, NS, b"k8s:enc:aescbc:v1:key2:"), (COUNT, COUNT));
    rotate(&[("key3", 11), ("key2", 9)]);
    let started = std::time::Instant::now();
    let pipeline = Command::new("sh")
        .arg("-c")
        .arg(format!(
            "kubectl --kubeconfig {0} get secrets -n {NS} -o json | kubectl --kubeconfig {0} replace -f - >/dev/null",
            kc.display()
        ))
        .output()
        .unwrap();
    let kubectl_secs = started.elapsed().as_secs_f64();
    assert!(pipeline.status.success(), "{}", stderr(&pipeline));
    assert_eq!(stored_under(&cp, NS, b"k8s:enc:aescbc:v1:key3:"), (COUNT, COUNT));
    eprintln!(
        "reencrypt of {COUNT} Secrets (aescbc key change, one namespace): kubectl-clustersecurity reencrypt {plugin_secs:.2}s (process start, count and rewrite), kubectl get -o json | kubectl replace -f - {kubectl_secs:.2}s"
    );
}
