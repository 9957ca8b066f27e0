//! Hostile input, fuzzed with property tests (proptest; cargo-fuzz needs a nightly toolchain and
//! libFuzzer, which CI does not have): the admission webhook's AdmissionReview decoding and
//! decision (with it, every validation rule), certificate/PEM parsing of provided material, and
//! the string parsers of the KMS spec. Properties: nothing panics, every refusal says something,
//! the answer belongs to the request, and no error message echoes private-key material.
//!
//! Cases per target: CSO_FUZZ_CASES (default 2,000; docs/reliability.md has a longer run). Each
//! target prints `fuzz: <target> executions=<n> crashes=0` (see it with `-- --nocapture`).

use std::sync::atomic::{AtomicU64, Ordering};

use crate::certificate_rotation::inspect;
use crate::pki::{self, Usage};
use crate::{validate, webhook};
use k8s_openapi::jiff::Timestamp;
use kube::core::admission::AdmissionReview;
use kube::core::DynamicObject;
use proptest::prelude::*;
use proptest::test_runner::TestCaseError;
use serde_json::{json, Value};

fn cases() -> u32 {
    std::env::var("CSO_FUZZ_CASES").ok().and_then(|v| v.parse().ok()).unwrap_or(2_000)
}

fn config() -> ProptestConfig {
    ProptestConfig { cases: cases(), failure_persistence: None, ..ProptestConfig::default() }
}

/// Field names and values of our specs, so that random objects reach deep into validation.
const KEYS: &[&str] = &[
    "clusterRef",
    "kind",
    "name",
    "clientAuthentication",
    "tls",
    "enabled",
    "sasl",
    "scram",
    "iam",
    "unauthenticated",
    "encryptionInTransit",
    "clientBroker",
    "inCluster",
    "rolloutTimeoutSeconds",
    "external",
    "internal",
    "label",
    "type",
    "key",
    "cert",
    "cacert",
    "secretName",
    "validityDays",
    "networkAccess",
    "keyId",
    "keyVaultResourceId",
    "provider",
    "azure",
    "subscriptionId",
    "resourceGroup",
    "clusterName",
    "reencryption",
    "concurrency",
    "pageSize",
    "secretRef",
];
const WORDS: &[&str] = &[
    "StatefulSet",
    "Deployment",
    "TLS",
    "TLS_PLAINTEXT",
    "PLAINTEXT",
    "selfsigned",
    "provided",
    "secret",
    "Public",
    "Private",
    "https://kv1.vault.azure.net/keys/etcd/0123456789abcdef",
    "/subscriptions/s/resourceGroups/r/providers/Microsoft.KeyVault/vaults/kv1",
    "ext-1",
    "LS0tLS1CRUdJTiBDRVJUSUZJQ0FURS0tLS0tCg==",
    "!!not base64!!",
    "",
];

fn text() -> impl Strategy<Value = String> {
    prop_oneof![
        3 => proptest::sample::select(WORDS).prop_map(str::to_string),
        2 => "\\PC{0,40}",                                  // any printable unicode
        1 => "[a-z0-9-]{60,300}",                           // too long for a label or a name
        1 => proptest::collection::vec(any::<char>(), 0..20).prop_map(|v| v.into_iter().collect()),
        1 => (1usize..200_000).prop_map(|n| "x".repeat(n)), // oversized values
    ]
}

fn json_value() -> impl Strategy<Value = Value> {
    let leaf = prop_oneof![
        Just(Value::Null),
        any::<bool>().prop_map(Value::from),
        any::<i64>().prop_map(Value::from),
        (-1e12f64..1e12).prop_map(Value::from),
        text().prop_map(Value::from),
    ];
    leaf.prop_recursive(5, 64, 8, |inner| {
        prop_oneof![
            proptest::collection::vec(inner.clone(), 0..4).prop_map(Value::Array),
            proptest::collection::btree_map(
                prop_oneof![3 => proptest::sample::select(KEYS).prop_map(str::to_string), 1 => "\\PC{0,12}"],
                inner,
                0..6
            )
            .prop_map(|m| Value::Object(m.into_iter().collect())),
        ]
    })
}

fn review_json(kind: &str, op: &str, name: &str, spec: Value, old_spec: Option<Value>) -> Value {
    let object = |spec: Value| {
        json!({"apiVersion": "clustersecurity.io/v1alpha1", "kind": kind,
               "metadata": {"name": name, "namespace": "kafka", "generation": 1}, "spec": spec})
    };
    json!({
        "apiVersion": "admission.k8s.io/v1", "kind": "AdmissionReview",
        "request": {
            "uid": "4b1f3c2e-fuzz", "kind": {"group": "clustersecurity.io", "version": "v1alpha1", "kind": kind},
            "resource": {"group": "clustersecurity.io", "version": "v1alpha1", "resource": "things"},
            "name": name, "namespace": "kafka", "operation": op, "userInfo": {"username": "fuzz"},
            "object": object(spec), "oldObject": old_spec.map(object),
        }
    })
}

/// Run `property` on `cases()` inputs from `strategy` and print the executions.
fn fuzz<S: Strategy>(target: &str, strategy: S, property: impl Fn(S::Value) -> Result<(), TestCaseError>)
where
    S::Value: std::fmt::Debug,
{
    let mut runner = proptest::test_runner::TestRunner::new(config());
    let executions = AtomicU64::new(0);
    let result = runner.run(&strategy, |input| {
        executions.fetch_add(1, Ordering::Relaxed);
        property(input)
    });
    if let Err(e) = result {
        panic!("fuzz: {target} failed: {e}");
    }
    eprintln!("fuzz: {target} executions={} crashes=0", executions.load(Ordering::Relaxed));
}

/// Random specs of every kind, CREATE or UPDATE: an answer for this request, never a panic, and
/// a refusal names the object.
#[test]
fn admission_review_decision() {
    let kinds = &["ClusterSecurityPolicy", "CertificateRotation", "KmsKeyVaultMode", "Pod"][..];
    let ops = &["CREATE", "UPDATE", "DELETE", "CONNECT"][..];
    let inputs = (
        proptest::sample::select(kinds),
        proptest::sample::select(ops),
        text(),
        json_value(),
        proptest::option::of(json_value()),
    );
    fuzz("admission_review_decision", inputs, |(kind, op, name, spec, old)| {
        let Ok(review) =
            serde_json::from_value::<AdmissionReview<DynamicObject>>(review_json(kind, op, &name, spec, old))
        else {
            return Ok(()); // the HTTP layer answers 422 for what does not decode
        };
        let answer = serde_json::to_value(webhook::review(review)).unwrap();
        let resp = &answer["response"];
        prop_assert_eq!(&resp["uid"], &json!("4b1f3c2e-fuzz"));
        if resp["allowed"] == json!(false) {
            let message = resp["status"]["message"].as_str().unwrap_or_default();
            prop_assert!(message.contains(kind) && message.len() > kind.len() + 10, "{}", message);
            // A refusal says what is wrong; it does not echo an oversized value back.
            prop_assert!(message.len() < 8_192 + name.len(), "a {}-byte message", message.len());
        }
        Ok(())
    });
}

/// Arbitrary bytes and damaged real reviews through the decoding the HTTP layer does.
#[test]
fn admission_review_bytes() {
    let valid = serde_json::to_vec(&review_json(
        "ClusterSecurityPolicy",
        "CREATE",
        "p",
        json!({"clusterRef": {"kind": "StatefulSet", "name": "k"}}),
        None,
    ))
    .unwrap();
    let inputs = (proptest::collection::vec(any::<u8>(), 0..2048), 0usize..600, any::<(usize, u8)>());
    fuzz("admission_review_bytes", inputs, |(bytes, cut, flip)| {
        let mut damaged = valid.clone();
        let i = flip.0 % damaged.len();
        damaged[i] ^= flip.1;
        damaged.truncate(damaged.len().saturating_sub(cut));
        for input in [bytes, damaged] {
            if let Ok(review) = serde_json::from_slice::<AdmissionReview<DynamicObject>>(&input) {
                let _ = webhook::review(review);
            }
        }
        Ok(())
    });
}

/// A CA and a leaf it signed, made once.
fn material() -> &'static (pki::KeyedCert, pki::KeyedCert) {
    static M: std::sync::OnceLock<(pki::KeyedCert, pki::KeyedCert)> = std::sync::OnceLock::new();
    M.get_or_init(|| {
        let now = Timestamp::now();
        let ca = pki::new_ca("fuzz CA", now, 30).unwrap();
        let leaf = pki::issue_leaf(&ca, "broker", &["b.kafka.svc".into()], Usage::Server, now, 10).unwrap();
        (ca, leaf)
    })
}

/// The private key's base64 body lines: none may appear in any message.
fn key_lines(key_pem: &str) -> Vec<&str> {
    key_pem.lines().filter(|l| !l.starts_with("-----") && l.len() >= 16).collect()
}

fn damage(pem: &str, cut: usize, flip: (usize, u8)) -> String {
    let mut b = pem.as_bytes().to_vec();
    let i = flip.0 % b.len();
    b[i] ^= flip.1;
    b.truncate(b.len().saturating_sub(cut));
    String::from_utf8_lossy(&b).into_owned()
}

/// Provided certificate material, damaged in every way: parsed without a panic, refused with a
/// message, and the message never carries a private key.
#[test]
fn certificate_material() {
    let inputs = (0usize..3, 0usize..400, any::<(usize, u8)>(), text(), any::<bool>());
    fuzz("certificate_material", inputs, |(which, cut, flip, junk, swap)| {
        let (ca, leaf) = material();
        let mut parts = [leaf.cert_pem.clone(), leaf.key_pem.clone(), ca.cert_pem.clone()];
        parts[which] = if junk.len() % 3 == 0 { junk.clone() } else { damage(&parts[which], cut, flip) };
        if swap {
            parts.swap(0, 1);
        }
        if let Err(message) = inspect::check(&parts[0], &parts[1], &parts[2], Timestamp::now()) {
            prop_assert!(!message.is_empty());
            for line in key_lines(&leaf.key_pem).into_iter().chain(key_lines(&ca.key_pem)) {
                prop_assert!(!message.contains(line), "a key line leaked into: {}", message);
            }
        }
        let _ = inspect::certificates(&parts[0], "certificate");
        let _ = pki::seconds_left(&parts[0], Timestamp::now());
        let _ = pki::subject_alt_names(&parts[0]);
        Ok(())
    });
}

/// The KMS spec's string parsers and the label/name rules on any string.
#[test]
fn spec_strings() {
    fuzz("spec_strings", text(), |s| {
        if let Ok(k) = validate::parse_key_id(&s) {
            prop_assert!(!k.vault.is_empty());
        }
        let _ = validate::parse_key_vault_resource_id(&s);
        if let Some(e) = validate::label_value_error(&s) {
            prop_assert!(!e.is_empty());
        }
        if let Some(e) = validate::dns_subdomain_error(&s) {
            prop_assert!(!e.is_empty());
        }
        Ok(())
    });
}

/// Specific hostile values get a clear, specific error (and never an echo of the value).
#[test]
fn hostile_values_get_clear_errors() {
    let deny = |kind: &str, spec: Value| -> String {
        let review =
            serde_json::from_value::<AdmissionReview<DynamicObject>>(review_json(kind, "CREATE", "h", spec, None))
                .expect("decodes");
        let answer = serde_json::to_value(webhook::review(review)).unwrap();
        assert_eq!(answer["response"]["allowed"], json!(false), "{answer}");
        answer["response"]["status"]["message"].as_str().unwrap().to_string()
    };
    let workload = json!({"kind": "StatefulSet", "name": "kafka"});
    let huge = "a".repeat(300_000);
    for (label, says) in
        [(huge.as_str(), "63"), ("ünïcödé", "label"), ("has space", "label"), ("-leading-dash", "label")]
    {
        let m = deny("CertificateRotation", json!({"clusterRef": workload, "external": {"label": label}}));
        assert!(m.contains(says) && m.contains("spec.external.label"), "{label:.20}: {m}");
        assert!(m.len() < 2_000, "the {}-byte value is not echoed ({} bytes)", label.len(), m.len());
    }
    let m = deny(
        "CertificateRotation",
        json!({"clusterRef": workload, "external": {"label": "e1", "type": "provided", "key": "%%%not-base64%%%", "cert": "x", "cacert": "y"}}),
    );
    assert!(m.contains("not valid base64") && !m.contains("%%%not-base64%%%"), "{m}");
    let m = deny(
        "ClusterSecurityPolicy",
        json!({"clusterRef": {"kind": "StatefulSet", "name": huge}, "clientAuthentication": {"tls": {"enabled": true}},
               "encryptionInTransit": {"clientBroker": "TLS", "inCluster": true}}),
    );
    assert!(m.contains("spec.clusterRef.name") && m.len() < 2_000, "{:.300}", m);
    let m = deny(
        "KmsKeyVaultMode",
        json!({"networkAccess": "Public", "keyId": "https://\u{202e}evil.vault.azure.net/keys/k/v",
               "provider": {"azure": {"subscriptionId": "00000000-0000-0000-0000-000000000000", "resourceGroup": "rg", "clusterName": "c"}}}),
    );
    assert!(m.contains("spec.keyId"), "{m}");
}
