//! Other writers during operations: while CertificateRotations run, another client keeps
//! server-side applying its own fields to the same StatefulSet (field manager `other-team`),
//! annotating the certificate Secrets and labelling the CertificateRotation itself (every write a
//! new resourceVersion, so the operator's guarded status writes meet conflicts). The operator
//! must neither give up nor take the other writer's fields: both rotations complete with one
//! rollout each, and every field the other writer set is still there.

use crate::support;

use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};
use std::sync::Arc;
use std::time::Duration;

use crate::support::{apply, brokers, env, wait_sts_ready, webhook_ready};
use cluster_security_api::{CertificateRotation, OperationState};
use cluster_security_testbed::wait_until;
use k8s_openapi::api::apps::v1::StatefulSet;
use k8s_openapi::api::core::v1::Secret;
use kube::api::{Patch, PatchParams};
use kube::Api;
use serde_json::json;

const NS: &str = "conflicts";

fn rotation(label: &str) -> String {
    format!(
        "apiVersion: clustersecurity.io/v1alpha1\nkind: CertificateRotation\nmetadata: {{name: certs, namespace: {NS}}}\nspec:\n  clusterRef: {{kind: StatefulSet, name: kafka}}\n  external: {{label: {label}}}\n  internal: {{label: i1}}\n  rolloutTimeoutSeconds: 120\n"
    )
}

async fn complete_with_label(api: &Api<CertificateRotation>, label: &str) -> CertificateRotation {
    wait_until(Duration::from_secs(120), &format!("rotation to {label} complete"), || {
        let api = api.clone();
        let label = label.to_string();
        async move {
            let o = api.get("certs").await.map_err(|e| e.to_string())?;
            let st = o.status.clone().unwrap_or_default();
            let done = st.operations.first().map(|op| op.operation_state) == Some(OperationState::UpdateComplete)
                && st.current_operation.is_none()
                && st.external.as_ref().map(|e| e.label.as_str()) == Some(label.as_str())
                && st.observed_generation == o.metadata.generation;
            done.then_some(o).ok_or_else(|| format!("{:?}", st.operations.first().map(|o| o.operation_state)))
        }
    })
    .await
    .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn other_writers_neither_stop_the_operator_nor_lose_their_fields() {
    let cp = &env().cp;
    webhook_ready(cp).await;
    brokers(cp, NS, "kafka", 2).await;
    let client = cp.client().await.unwrap();
    let sts: Api<StatefulSet> = Api::namespaced(client.clone(), NS);
    let secrets: Api<Secret> = Api::namespaced(client.clone(), NS);
    let rotations: Api<CertificateRotation> = Api::namespaced(client.clone(), NS);
    let generation = sts.get("kafka").await.unwrap().metadata.generation.unwrap();

    // The other writer, every 20 ms until stopped.
    let stop = Arc::new(AtomicBool::new(false));
    let writes = Arc::new(AtomicU32::new(0));
    let writer = {
        let (sts, secrets, rotations, stop, writes) =
            (sts.clone(), secrets.clone(), rotations.clone(), stop.clone(), writes.clone());
        tokio::spawn(async move {
            let ssa = PatchParams::apply("other-team");
            let mut n = 0u32;
            while !stop.load(Ordering::Relaxed) {
                n += 1;
                let own = json!({"apiVersion": "apps/v1", "kind": "StatefulSet",
                    "metadata": {"name": "kafka", "annotations": {"team.example.com/revision": n.to_string()}}});
                let _ = sts.patch("kafka", &ssa, &Patch::Apply(&own)).await;
                let touch = json!({"metadata": {"annotations": {"team.example.com/seen": n.to_string()}}});
                for s in ["kafka-external-tls", "kafka-internal-tls"] {
                    let _ = secrets.patch(s, &PatchParams::default(), &Patch::Merge(&touch)).await;
                }
                let label = json!({"metadata": {"labels": {"team.example.com/tick": n.to_string()}}});
                if rotations.patch("certs", &PatchParams::default(), &Patch::Merge(&label)).await.is_ok() {
                    writes.fetch_add(1, Ordering::Relaxed);
                }
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
            n
        })
    };

    apply(cp, &rotation("e1"));
    complete_with_label(&rotations, "e1").await;
    wait_sts_ready(cp, NS, "kafka").await;
    apply(cp, &rotation("e2"));
    let done = complete_with_label(&rotations, "e2").await;
    stop.store(true, Ordering::Relaxed);
    let rounds = writer.await.unwrap();
    assert!(writes.load(Ordering::Relaxed) > 20, "the other writer was busy ({rounds} rounds)");

    let st = done.status.unwrap();
    assert_eq!(st.operations.len(), 2, "one record per change: {:?}", st.operations);
    let s = sts.get("kafka").await.unwrap();
    assert_eq!(s.metadata.generation.unwrap(), generation + 2, "one rollout per rotation, none for the other writer");
    let annotations = s.metadata.annotations.unwrap_or_default();
    assert!(annotations.contains_key("team.example.com/revision"), "the other writer's annotation stays");
    let template = s.spec.template.metadata.unwrap().annotations.unwrap_or_default();
    assert_eq!(template["clustersecurity.io/external-certificate-label"], "e2");
    let owners: Vec<String> =
        s.metadata.managed_fields.unwrap_or_default().into_iter().filter_map(|m| m.manager).collect();
    assert!(owners.contains(&"other-team".to_string()), "other-team still owns its field: {owners:?}");
    for name in ["kafka-external-tls", "kafka-internal-tls"] {
        let secret = secrets.get(name).await.unwrap();
        assert!(
            secret.metadata.annotations.unwrap_or_default().contains_key("team.example.com/seen"),
            "{name} kept the other writer's annotation"
        );
    }
    let labels = rotations.get("certs").await.unwrap().metadata.labels.unwrap_or_default();
    assert!(labels.contains_key("team.example.com/tick"), "the rotation kept the other writer's label");
    support::assert_no_secret_leaks(&[]).await;
}
