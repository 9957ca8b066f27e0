//! CertificateRotation's hooks against a scripted API server ([`crate::fake_api`]): the first
//! `prepare` of a self-signed certificate (a kept CA, the TLS Secret, the trust bundle, in that
//! order), and the trust bundle's copies (only where a namespace consents, never over someone
//! else's ConfigMap, stale copies looked for).

use std::sync::Arc;

use axum::http::Method;
use k8s_openapi::jiff::Timestamp;
use serde_json::{json, Value};

use super::*;
use crate::fake_api::{self, expect, Seen};
use crate::reconciler::round::Writer;

const SECRETS: &str = "/api/v1/namespaces/kafka/secrets";
const CONFIGMAPS: &str = "/api/v1/namespaces/kafka/configmaps";

fn rotation(extra: Value) -> CertificateRotation {
    let mut cr = json!({
        "apiVersion": "clustersecurity.io/v1alpha1", "kind": "CertificateRotation",
        "metadata": {"name": "certs", "namespace": "kafka", "uid": "u1", "resourceVersion": "7", "generation": 1},
        "spec": {"clusterRef": {"kind": "StatefulSet", "name": "orders"},
                 "external": {"label": "v1", "type": "selfsigned"}}
    });
    if let (Some(spec), Some(extra)) = (cr["spec"].as_object_mut(), extra.as_object()) {
        spec.extend(extra.clone());
    }
    serde_json::from_value(cr).unwrap()
}

fn round(client: &kube::Client, cr: &CertificateRotation) -> Round<CertificateRotation> {
    let obj = Arc::new(cr.clone());
    let api = kube::Api::namespaced(client.clone(), "kafka");
    Round::new(obj.clone(), Timestamp::from_second(1_800_000_000).unwrap(), Writer::api(api, client.clone(), obj))
}

fn lines(seen: &[Seen]) -> Vec<String> {
    seen.iter().map(Seen::line).collect()
}

#[tokio::test]
async fn the_first_prepare_keeps_a_new_ca_then_installs_the_certificate_and_publishes_its_ca() {
    let (client, server) = fake_api::pair();
    let absent = |path: &str| expect(Method::GET, path).fails(404);
    let served = server.run(vec![
        absent(&format!("{SECRETS}/orders-external-ca")),
        absent(&format!("{SECRETS}/orders-external-ca")),
        absent(&format!("{SECRETS}/orders-external-tls")),
        absent(&format!("{SECRETS}/orders-external-ca")),
        expect(Method::PATCH, &format!("{SECRETS}/orders-external-ca")).echo(),
        absent(&format!("{SECRETS}/orders-external-tls")),
        expect(Method::PATCH, &format!("{SECRETS}/orders-external-tls")).echo(),
        absent(&format!("{CONFIGMAPS}/orders-external-trust")),
        expect(Method::PATCH, &format!("{CONFIGMAPS}/orders-external-trust")).echo(),
        absent(&format!("{SECRETS}/orders-internal-tls")),
    ]);
    let cr = rotation(json!({}));
    let ctx = fake_api::context(client.clone());
    let mut round = round(&client, &cr);
    let op = operation::new("op-1".into(), OperationType::RotateCertificates, Some(1), None, cr.desired(), round.now);
    let annotations = cr.prepare(&mut round, &ctx, &op, None).await.expect("prepared");
    let seen = served.await.unwrap();

    let (ca, tls, trust) = (&seen[4].body, &seen[6].body, &seen[8].body);
    assert!(ca["stringData"]["ca.key"].as_str().is_some_and(|k| k.contains("PRIVATE KEY")));
    assert_eq!(tls["type"], "kubernetes.io/tls");
    assert_eq!(tls["stringData"]["ca.crt"], ca["stringData"]["ca.crt"], "the certificate chains to the kept CA");
    assert_eq!(tls["metadata"]["annotations"][OPERATION_ANNOTATION], "op-1", "a restart reuses it");
    assert_eq!(
        trust["data"],
        json!({"ca.crt": ca["stringData"]["ca.crt"], "current-ca.crt": ca["stringData"]["ca.crt"]})
    );
    assert!(!trust["data"].to_string().contains("PRIVATE"), "no key in what clients read");
    let external = round.status.external.as_ref().expect("recorded");
    assert_eq!(external.label, "v1");
    assert!(annotations.values().any(|v| !v.is_empty()), "{annotations:?}");
}

/// The bundle the operator wrote for `cr`, with a real certificate (only certificates are copied).
fn original(cr: &CertificateRotation) -> Value {
    let ca = crate::pki::new_ca("a", Timestamp::from_second(1_800_000_000).unwrap(), 30).unwrap();
    json!({"apiVersion": "v1", "kind": "ConfigMap",
        "metadata": derived::metadata(cr, "orders-external-trust", cr.spec.deletion_policy, json!({})),
        "data": {"ca.crt": ca.cert_pem, "current-ca.crt": ca.cert_pem}})
}

#[tokio::test]
async fn copies_go_where_a_namespace_consents_and_never_over_someone_elses_configmap() {
    let cr = rotation(json!({"trustDistribution": {"namespaces": ["apps", "closed", "taken"]}}));
    let namespace = |name: &str, accepts: Option<&str>| {
        let annotations = accepts.map(|a| json!({distribute::ACCEPT_ANNOTATION: a})).unwrap_or(json!({}));
        json!({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": name, "annotations": annotations}})
    };
    let original = original(&cr);
    let (client, server) = fake_api::pair();
    let served = server.run(vec![
        expect(Method::GET, &format!("{CONFIGMAPS}/orders-external-trust")).ok(original.clone()),
        expect(Method::GET, "/api/v1/namespaces/apps").ok(namespace("apps", Some("kafka"))),
        expect(Method::GET, "/api/v1/namespaces/apps/configmaps/orders-external-trust").fails(404),
        expect(Method::GET, "/api/v1/namespaces/closed").ok(namespace("closed", None)),
        expect(Method::GET, "/api/v1/namespaces/taken").ok(namespace("taken", Some("*"))),
        expect(Method::GET, "/api/v1/namespaces/taken/configmaps/orders-external-trust").ok(json!({
            "apiVersion": "v1", "kind": "ConfigMap",
            "metadata": {"name": "orders-external-trust", "namespace": "taken", "resourceVersion": "1"}})),
        expect(Method::PATCH, "/api/v1/namespaces/apps/configmaps/orders-external-trust").echo(),
        // Stale copies: none listed by this resource's uid.
        expect(Method::GET, "/api/v1/configmaps")
            .ok(json!({"apiVersion": "v1", "kind": "List", "metadata": {}, "items": []})),
    ]);
    let ctx = fake_api::context(client.clone());
    let mut round = round(&client, &cr);
    assert_eq!(distribute::sync(&cr, &mut round, &ctx).await, Some(distribute::RESYNC));
    let seen = served.await.unwrap();
    assert_eq!(round.status.trust_distributed_to, ["apps"]);
    let copy = &seen[6].body;
    assert_eq!(copy["data"], original["data"]);
    assert_eq!(copy["metadata"]["labels"][distribute::SOURCE_LABEL], "u1");
    assert!(seen[7].uri.contains("labelSelector=clustersecurity.io%2Ftrust-source%3Du1"), "{}", seen[7].uri);
    let condition = conditions::get(&round.status.conditions, conditions::TRUST_DISTRIBUTED).expect("reported");
    assert_eq!(condition.status, "False");
    assert!(condition.message.contains("closed: the namespace does not accept"), "{}", condition.message);
    assert!(condition.message.contains("taken: ConfigMap orders-external-trust exists"), "{}", condition.message);
    assert_eq!(lines(&seen)[6], "PATCH /api/v1/namespaces/apps/configmaps/orders-external-trust", "the only write");
}

#[tokio::test]
async fn nothing_is_copied_before_the_bundle_is_published() {
    let cr = rotation(json!({"trustDistribution": {"namespaces": ["apps"]}}));
    let (client, server) = fake_api::pair();
    let served = server.run(vec![expect(Method::GET, &format!("{CONFIGMAPS}/orders-external-trust")).fails(404)]);
    let ctx = fake_api::context(client.clone());
    let mut round = round(&client, &cr);
    assert_eq!(distribute::sync(&cr, &mut round, &ctx).await, Some(distribute::RESYNC));
    assert_eq!(served.await.unwrap().len(), 1, "no namespace read, nothing written");
    assert!(round.status.trust_distributed_to.is_empty());
}
