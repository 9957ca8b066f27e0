//! The kit's writes against a scripted API server ([`crate::fake_api`]): the finalizer's guarded
//! add and remove, and the status write's answer to a conflict.

use axum::http::Method;
use serde_json::json;

use super::{finalizer, status, Category, Error};
use crate::api::ClusterSecurityPolicy;
use crate::fake_api::{self, expect};

const POLICY: &str = "/apis/clustersecurity.io/v1alpha1/namespaces/kafka/clustersecuritypolicies/orders";
const FINALIZER: &str = super::rolling::MOUNTED_OBJECTS_FINALIZER;

fn policy(resource_version: &str, finalizers: &[&str], status: serde_json::Value) -> serde_json::Value {
    json!({
        "apiVersion": "clustersecurity.io/v1alpha1", "kind": "ClusterSecurityPolicy",
        "metadata": {"name": "orders", "namespace": "kafka", "uid": "u1", "resourceVersion": resource_version,
                     "finalizers": finalizers},
        "spec": {"clusterRef": {"kind": "StatefulSet", "name": "orders-kafka"},
                 "clientAuthentication": {"sasl": {"scram": {"enabled": true}}},
                 "encryptionInTransit": {"clientBroker": "TLS", "inCluster": true}},
        "status": status,
    })
}

fn decode(v: serde_json::Value) -> ClusterSecurityPolicy {
    serde_json::from_value(v).expect("a ClusterSecurityPolicy")
}

fn api(client: kube::Client) -> kube::Api<ClusterSecurityPolicy> {
    kube::Api::namespaced(client, "kafka")
}

#[tokio::test]
async fn a_finalizer_is_added_with_the_resource_version_it_was_read_at() {
    let (client, server) = fake_api::pair();
    let served = server.run(vec![expect(Method::PATCH, POLICY).ok(policy("8", &["theirs", FINALIZER], json!({})))]);
    let obj = decode(policy("7", &["theirs"], json!({})));
    let stored = finalizer::add(&api(client), &obj, FINALIZER).await.unwrap();
    assert_eq!(stored.metadata.finalizers.as_deref(), Some(&["theirs".to_string(), FINALIZER.to_string()][..]));
    let seen = served.await.unwrap();
    assert_eq!(
        seen[0].body,
        json!({"metadata": {"finalizers": ["theirs", FINALIZER], "resourceVersion": "7"}}),
        "someone else's finalizer is kept, and a concurrent change fails the write"
    );
}

#[tokio::test]
async fn a_finalizer_is_removed_from_the_object_as_stored_now_keeping_the_others() {
    let (client, server) = fake_api::pair();
    let served = server.run(vec![
        expect(Method::GET, POLICY).ok(policy("9", &["theirs", FINALIZER], json!({}))),
        expect(Method::PATCH, POLICY).ok(policy("10", &["theirs"], json!({}))),
    ]);
    let read_earlier = decode(policy("7", &[FINALIZER], json!({})));
    finalizer::remove(&api(client), &read_earlier, FINALIZER).await.unwrap();
    let seen = served.await.unwrap();
    assert_eq!(seen[1].body, json!({"metadata": {"finalizers": ["theirs"], "resourceVersion": "9"}}));
}

#[tokio::test]
async fn removing_a_finalizer_of_an_object_gone_or_without_it_writes_nothing() {
    for stored in [None, Some(policy("9", &["theirs"], json!({})))] {
        let (client, server) = fake_api::pair();
        let answer = match stored {
            None => expect(Method::GET, POLICY).fails(404),
            Some(obj) => expect(Method::GET, POLICY).ok(obj),
        };
        let served = server.run(vec![answer]);
        finalizer::remove(&api(client), &decode(policy("7", &[FINALIZER], json!({}))), FINALIZER).await.unwrap();
        assert_eq!(served.await.unwrap().len(), 1, "one read, no write");
    }
}

#[tokio::test]
async fn a_status_write_that_lost_to_another_field_is_sent_again_on_the_new_version() {
    let (client, server) = fake_api::pair();
    let old = json!({"securityHash": "a"});
    let served = server.run(vec![
        expect(Method::PATCH, &format!("{POLICY}/status")).fails(409),
        // A label changed meanwhile; the status is still what the decision was made from.
        expect(Method::GET, POLICY).ok(policy("8", &[], old.clone())),
        expect(Method::PATCH, &format!("{POLICY}/status")).ok(policy("9", &[], json!({"securityHash": "b"}))),
    ]);
    let obj = decode(policy("7", &[], old));
    let mut new = obj.status.clone().unwrap();
    new.security_hash = Some("b".into());
    let stored = status::write_diff(&api(client), &obj, &new).await.unwrap().expect("written");
    assert_eq!(stored.metadata.resource_version.as_deref(), Some("9"));
    let seen = served.await.unwrap();
    let sent: Vec<_> = [&seen[0], &seen[2]].iter().map(|s| s.body.clone()).collect();
    assert_eq!(sent[0], json!({"metadata": {"resourceVersion": "7"}, "status": {"securityHash": "b"}}));
    assert_eq!(sent[1], json!({"metadata": {"resourceVersion": "8"}, "status": {"securityHash": "b"}}));
}

#[tokio::test]
async fn a_status_write_that_lost_to_another_status_is_a_conflict_retried_soon() {
    let (client, server) = fake_api::pair();
    let served = server.run(vec![
        expect(Method::PATCH, &format!("{POLICY}/status")).fails(409),
        expect(Method::GET, POLICY).ok(policy("8", &[], json!({"securityHash": "someone else's"}))),
    ]);
    let obj = decode(policy("7", &[], json!({"securityHash": "a"})));
    let mut new = obj.status.clone().unwrap();
    new.security_hash = Some("b".into());
    let err = status::write_diff(&api(client), &obj, &new).await.unwrap_err();
    assert!(matches!(err, Error::WriteStatus { .. }), "{err}");
    assert_eq!(err.category(), Category::Conflict);
    assert!(err.category().backoff() < Category::Transient.backoff());
    assert_eq!(served.await.unwrap().len(), 2, "not written over a newer decision");
}

#[tokio::test]
async fn an_unchanged_status_is_not_written() {
    let (client, server) = fake_api::pair();
    let served = server.run(vec![]);
    let obj = decode(policy("7", &[], json!({"securityHash": "a"})));
    let same = obj.status.clone().unwrap();
    assert!(status::write_diff(&api(client), &obj, &same).await.unwrap().is_none());
    assert!(served.await.unwrap().is_empty());
}
