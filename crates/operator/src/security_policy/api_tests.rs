//! ClusterSecurityPolicy's hooks against a scripted API server ([`crate::fake_api`]): what
//! `prepare` reads and writes, in order, for the client CA the operator keeps (and the move of a
//! key left by an earlier version), a refusal that writes nothing, and `repair_artefacts`.

use std::sync::Arc;

use axum::http::Method;
use k8s_openapi::jiff::Timestamp;
use k8s_openapi::ByteString;
use serde_json::{json, Value};

use super::*;
use crate::fake_api::{self, expect, Seen};
use crate::reconciler::round::Writer;

const SECRETS: &str = "/api/v1/namespaces/kafka/secrets";
const CONFIGMAPS: &str = "/api/v1/namespaces/kafka/configmaps";

fn policy(refs: &[&str]) -> ClusterSecurityPolicy {
    let refs: Vec<Value> = refs.iter().map(|r| json!({"name": r})).collect();
    serde_json::from_value(json!({
        "apiVersion": "clustersecurity.io/v1alpha1", "kind": "ClusterSecurityPolicy",
        "metadata": {"name": "orders", "namespace": "kafka", "uid": "u1", "resourceVersion": "7", "generation": 1},
        "spec": {"clusterRef": {"kind": "StatefulSet", "name": "orders-kafka"},
                 "clientAuthentication": {"tls": {"enabled": true, "certificateAuthoritySecretRefs": refs}},
                 "encryptionInTransit": {"clientBroker": "TLS", "inCluster": true}}
    }))
    .unwrap()
}

fn round(client: &kube::Client, csp: &ClusterSecurityPolicy) -> Round<ClusterSecurityPolicy> {
    let obj = Arc::new(csp.clone());
    let api = kube::Api::namespaced(client.clone(), "kafka");
    Round::new(obj.clone(), Timestamp::from_second(1_800_000_000).unwrap(), Writer::api(api, client.clone(), obj))
}

fn operation(csp: &ClusterSecurityPolicy) -> Operation<SecuritySettings> {
    operation::new("op-1".into(), OperationType::UpdateSecurity, Some(1), None, csp.desired(), Timestamp::UNIX_EPOCH)
}

/// A derived object's metadata as the operator wrote it for `csp`.
fn ours(csp: &ClusterSecurityPolicy, name: &str) -> Value {
    let mut meta = derived::metadata(csp, name, csp.spec.deletion_policy, json!({}));
    meta["resourceVersion"] = json!("5");
    meta
}

fn lines(seen: &[Seen]) -> Vec<String> {
    seen.iter().map(Seen::line).collect()
}

#[tokio::test]
async fn prepare_reads_then_writes_the_kept_client_ca_its_bundle_and_the_configmap() {
    let (client, server) = fake_api::pair();
    let served = server.run(vec![
        expect(Method::GET, &format!("{SECRETS}/orders-kafka-client-ca")).fails(404),
        expect(Method::GET, &format!("{SECRETS}/orders-kafka-client-ca-key")).fails(404),
        expect(Method::GET, &format!("{SECRETS}/orders-kafka-client-ca-key")).fails(404),
        expect(Method::PATCH, &format!("{SECRETS}/orders-kafka-client-ca-key")).echo(),
        expect(Method::GET, &format!("{SECRETS}/orders-kafka-client-ca")).fails(404),
        expect(Method::PATCH, &format!("{SECRETS}/orders-kafka-client-ca")).echo(),
        expect(Method::GET, &format!("{CONFIGMAPS}/orders-kafka-security")).fails(404),
        expect(Method::PATCH, &format!("{CONFIGMAPS}/orders-kafka-security")).echo(),
    ]);
    let csp = policy(&[]);
    let ctx = fake_api::context(client.clone());
    let mut round = round(&client, &csp);
    let annotations = csp.prepare(&mut round, &ctx, &operation(&csp), None).await.expect("prepared");
    let seen = served.await.unwrap();

    let hash = annotations.get(SECURITY_HASH_ANNOTATION).expect("the hash that rolls the pods");
    assert_eq!(round.status.security_hash.as_ref(), Some(hash));
    for apply in [&seen[3], &seen[5], &seen[7]] {
        assert!(apply.uri.contains("fieldManager=cluster-security-operator") && apply.uri.contains("force=true"));
    }
    let (kept, bundle) = (&seen[3].body["stringData"], &seen[5].body["stringData"]);
    assert!(kept["ca.key"].as_str().is_some_and(|k| k.contains("PRIVATE KEY")), "a new CA, kept with its key");
    assert_eq!(bundle, &json!({"ca.crt": kept["ca.crt"]}), "the mounted bundle holds the certificate only");
    let data = &seen[7].body["data"];
    assert!(data["server.properties"].is_string() && data["security.json"].is_string(), "{data}");
}

#[tokio::test]
async fn prepare_moves_a_key_left_in_the_mounted_bundle_into_the_key_secret_once() {
    let csp = policy(&[]);
    let (crt, key) = ("-----BEGIN CERTIFICATE-----\nold\n-----END CERTIFICATE-----\n", "old-key");
    let legacy = json!({"apiVersion": "v1", "kind": "Secret", "metadata": ours(&csp, "orders-kafka-client-ca"),
        "data": {"ca.crt": ByteString(crt.into()), "ca.key": ByteString(key.into())}});
    let (client, server) = fake_api::pair();
    let served = server.run(vec![
        expect(Method::GET, &format!("{SECRETS}/orders-kafka-client-ca")).ok(legacy.clone()),
        expect(Method::GET, &format!("{SECRETS}/orders-kafka-client-ca-key")).fails(404),
        expect(Method::GET, &format!("{SECRETS}/orders-kafka-client-ca-key")).fails(404),
        expect(Method::PATCH, &format!("{SECRETS}/orders-kafka-client-ca-key")).echo(),
        expect(Method::PATCH, &format!("{SECRETS}/orders-kafka-client-ca")).ok(legacy.clone()),
        expect(Method::GET, &format!("{SECRETS}/orders-kafka-client-ca")).ok(legacy),
        expect(Method::PATCH, &format!("{SECRETS}/orders-kafka-client-ca")).echo(),
        expect(Method::GET, &format!("{CONFIGMAPS}/orders-kafka-security")).fails(404),
        expect(Method::PATCH, &format!("{CONFIGMAPS}/orders-kafka-security")).echo(),
    ]);
    let ctx = fake_api::context(client.clone());
    let mut round = round(&client, &csp);
    csp.prepare(&mut round, &ctx, &operation(&csp), None).await.expect("prepared");
    let seen = served.await.unwrap();
    assert_eq!(seen[3].body["stringData"], json!({"ca.crt": crt, "ca.key": key}), "the same CA, kept");
    assert_eq!(seen[4].body, json!({"data": {"ca.key": null}}), "the key leaves the mounted Secret");
    assert_eq!(seen[6].body["metadata"]["resourceVersion"], "5", "written over the very Secret checked");
    assert_eq!(seen[6].body["stringData"], json!({"ca.crt": crt}));
}

#[tokio::test]
async fn prepare_refuses_a_missing_ca_secret_and_writes_nothing() {
    let (client, server) = fake_api::pair();
    let served = server.run(vec![expect(Method::GET, &format!("{SECRETS}/corp-ca")).fails(404)]);
    let csp = policy(&["corp-ca"]);
    let ctx = fake_api::context(client.clone());
    let mut round = round(&client, &csp);
    let refused = csp.prepare(&mut round, &ctx, &operation(&csp), None).await;
    let Err(PrepareError::Refused { reason: code, .. }) = refused else { panic!("{refused:?}") };
    assert_eq!(code, reason::SECRET_NOT_FOUND);
    assert_eq!(lines(&served.await.unwrap()), [format!("GET {SECRETS}/corp-ca")]);
}

#[tokio::test]
async fn a_security_configmap_someone_edited_is_written_back_and_someone_elses_is_left_alone() {
    let csp = policy(&["corp-ca"]);
    let mut applied = round(&fake_api::pair().0, &csp).status;
    applied.applied = Some(csp.desired());
    let edited = |meta: Value| {
        json!({"apiVersion": "v1", "kind": "ConfigMap", "metadata": meta,
        "data": {"server.properties": "edited"}})
    };
    let path = format!("{CONFIGMAPS}/orders-kafka-security");

    let (client, server) = fake_api::pair();
    let served = server.run(vec![
        expect(Method::GET, &path).ok(edited(ours(&csp, "orders-kafka-security"))),
        expect(Method::GET, &path).ok(edited(ours(&csp, "orders-kafka-security"))),
        expect(Method::PATCH, &path).echo(),
    ]);
    let ctx = fake_api::context(client.clone());
    let mut round = round(&client, &csp);
    round.status = applied.clone();
    let repaired = csp.repair_artefacts(&mut round, &ctx, None).await.unwrap();
    assert_eq!(repaired, ["ConfigMap kafka/orders-kafka-security"]);
    let seen = served.await.unwrap();
    assert_ne!(seen[2].body["data"]["server.properties"], "edited");

    let (client, server) = fake_api::pair();
    let theirs = json!({"name": "orders-kafka-security", "namespace": "kafka", "resourceVersion": "3"});
    let served = server.run(vec![expect(Method::GET, &path).ok(edited(theirs))]);
    let ctx = fake_api::context(client.clone());
    let mut round = self::round(&client, &csp);
    round.status = applied;
    assert!(csp.repair_artefacts(&mut round, &ctx, None).await.unwrap().is_empty());
    assert_eq!(served.await.unwrap().len(), 1, "read, not written");
}
