//! High availability against a real kube-apiserver: two replicas with Lease-based leader
//! election, under the chart's ServiceAccount permissions. Only the leader reconciles; the
//! standby serves the admission webhook (the webhook configuration points at it); SIGKILL of the
//! leader in the middle of a rollout hands over to the standby, which finishes the same
//! operation with no duplicate record and no second rollout.

use crate::support;

use std::path::Path;
use std::time::Duration;

use crate::support::{apply, brokers, stderr, stdout};
use cluster_security_api::{CertificateRotation, OperationState};
use cluster_security_testbed::kubelet::PlayKubelet;
use cluster_security_testbed::operator::{self, http_get, Operator};
use cluster_security_testbed::{free_port, leaks, wait_until, ControlPlane, Options};
use k8s_openapi::api::apps::v1::{ControllerRevision, StatefulSet};
use kube::api::ListParams;
use kube::Api;

const OPERATOR: &str = env!("CARGO_BIN_EXE_cluster-security-operator");
const LEASE_SECONDS: u64 = 6;

fn replica(cp: &ControlPlane, name: &str, webhook_port: u16) -> Operator {
    let args = [
        "--leader-elect".to_string(),
        format!("--pod-name={name}"),
        format!("--leader-elect-lease-seconds={LEASE_SECONDS}"),
        "--leader-elect-renew-before-seconds=2".to_string(),
    ];
    Operator::start(cp, Path::new(OPERATOR), webhook_port, &args).expect("replica starts")
}

/// Who holds the leader Lease now ("" when nobody does).
fn lease_holder(cp: &ControlPlane) -> String {
    let out = cp.kubectl(&[
        "get",
        "lease",
        "cluster-security-operator",
        "-n",
        operator::NAMESPACE,
        "-o",
        "jsonpath={.spec.holderIdentity}",
    ]);
    stdout(&out) + &stderr(&out)
}

async fn wait_holder(cp: &ControlPlane, want: &str, within: Duration) {
    wait_until(within, &format!("{want} holds the leader lease"), || {
        let holder = lease_holder(cp);
        async move { (holder == want).then_some(()).ok_or(holder) }
    })
    .await
    .unwrap();
}

fn metric(port: u16, name: &str) -> Option<String> {
    let (_, text) = http_get(port, "/metrics")?;
    text.lines().find_map(|l| l.strip_prefix(&format!("{name} ")).map(str::to_string))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_standby_takes_over_a_running_operation_without_repeating_it() {
    let cp = ControlPlane::start(Options::default()).expect("control plane starts");
    let client = cp.client().await.unwrap();
    let kubelet = PlayKubelet::start(client.clone(), "play-node").await.unwrap();
    let held = kubelet.held();
    let (port_a, port_b) = (free_port(), free_port());
    // The API server calls the webhook of replica b, which is never the leader before the kill.
    tokio::task::block_in_place(|| operator::install(&cp, Some(port_b))).unwrap();

    let mut a = tokio::task::block_in_place(|| replica(&cp, "replica-a", port_a));
    wait_holder(&cp, "replica-a", Duration::from_secs(30)).await;
    let mut b = tokio::task::block_in_place(|| replica(&cp, "replica-b", port_b));
    assert_eq!(http_get(b.health_port, "/readyz"), Some((200, "ready".to_string())), "the standby is ready");
    assert_eq!(metric(a.health_port, "csop_leader").as_deref(), Some("1"));
    assert_eq!(metric(b.health_port, "csop_leader").as_deref(), Some("0"));

    // The standby's webhook refuses an invalid object while the leader runs the controllers.
    support::webhook_ready(&cp).await;
    let ns = "ha";
    brokers(&cp, ns, "kafka", 2).await;
    let bad = format!(
        "apiVersion: clustersecurity.io/v1alpha1\nkind: CertificateRotation\nmetadata: {{name: bad, namespace: {ns}}}\nspec:\n  clusterRef: {{kind: StatefulSet, name: kafka}}\n  external: {{label: 'Not A Label'}}\n"
    );
    let out = cp.kubectl_with_stdin(&["apply", "-f", "-"], Some(&bad));
    assert!(!out.status.success() && stderr(&out).contains("admission webhook"), "{}", stderr(&out));

    // A rotation whose rollout cannot finish yet (new pods are held not ready).
    let sts_api: Api<StatefulSet> = Api::namespaced(client.clone(), ns);
    let generation_before = sts_api.get("kafka").await.unwrap().metadata.generation.unwrap();
    held.hold_new_pods(ns, true);
    apply(
        &cp,
        &format!(
            "apiVersion: clustersecurity.io/v1alpha1\nkind: CertificateRotation\nmetadata: {{name: certs, namespace: {ns}}}\nspec:\n  clusterRef: {{kind: StatefulSet, name: kafka}}\n  external: {{label: ext1}}\n  internal: {{label: int1}}\n  rolloutTimeoutSeconds: 300\n"
        ),
    );
    let api: Api<CertificateRotation> = Api::namespaced(client.clone(), ns);
    let op_id = wait_until(Duration::from_secs(60), "the rollout started by replica-a", || {
        let (api, sts_api) = (api.clone(), sts_api.clone());
        async move {
            let o = api.get("certs").await.map_err(|e| e.to_string())?;
            let cur = o.status.and_then(|s| s.current_operation).ok_or("no operation yet")?;
            let sts = sts_api.get("kafka").await.map_err(|e| e.to_string())?;
            let rolled = sts.metadata.generation.unwrap() == generation_before + 1;
            (cur.operation_state == OperationState::UpdateInProgress && rolled)
                .then_some(cur.operation_id)
                .ok_or(format!("{:?}", cur.operation_state))
        }
    })
    .await
    .unwrap();

    // The leader dies in the middle of it; the standby takes the lease once it expires.
    a.kill();
    wait_holder(&cp, "replica-b", Duration::from_secs(LEASE_SECONDS * 4)).await;
    held.hold_new_pods(ns, false);
    let done = wait_until(Duration::from_secs(120), "the operation finished by replica-b", || {
        let api = api.clone();
        async move {
            let o = api.get("certs").await.map_err(|e| e.to_string())?;
            let st = o.status.unwrap_or_default();
            let newest = st.operations.first().cloned().ok_or("no history")?;
            (newest.operation_state == OperationState::UpdateComplete && st.current_operation.is_none())
                .then_some(st)
                .ok_or(format!("{:?}", newest.operation_state))
        }
    })
    .await
    .unwrap();
    assert_eq!(done.operations.len(), 1, "one operation record: {:?}", done.operations);
    assert_eq!(done.operations[0].operation_id, op_id, "the same operation finished");
    let sts = sts_api.get("kafka").await.unwrap();
    assert_eq!(sts.metadata.generation.unwrap(), generation_before + 1, "one rollout, not two");
    let revisions = Api::<ControllerRevision>::namespaced(client.clone(), ns)
        .list(&ListParams::default().labels("app=kafka"))
        .await
        .unwrap()
        .items
        .len();
    assert_eq!(revisions, 2, "the pod template changed once (initial revision + the rotation)");
    assert!(b.log_text().contains("acquired the leader lease"), "{}", b.log_text());
    assert_eq!(metric(b.health_port, "csop_leader").as_deref(), Some("1"));

    // SIGTERM hands the lease back at once (released, not left to expire).
    b.stop();
    assert_eq!(lease_holder(&cp), "", "the lease was released on shutdown");
    kubelet.stop();
    // Both replicas' logs (operator.log, operator-2.log).
    let report = leaks::assert_none(&cp, &[]).await;
    assert_eq!(report.logs, 2, "{report}");
}
