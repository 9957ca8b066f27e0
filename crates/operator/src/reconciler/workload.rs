//! The workload a kind targets (a StatefulSet or Deployment in the object's namespace): patch pod-template annotations with server-side
//! apply (field manager `cluster-security-operator`), and read rollout progress of a
//! StatefulSet or Deployment the way `kubectl rollout status` does.

use std::collections::BTreeMap;

use k8s_openapi::api::apps::v1::{Deployment, StatefulSet};
use k8s_openapi::api::core::v1::Pod;
use kube::api::{Patch, PatchParams};
use kube::{Api, Client};
use serde_json::json;

use cluster_security_api::{ClusterRef, ClusterState, WorkloadKind, FIELD_MANAGER};

use super::wiring::{TemplateMounts, Wiring};
use super::Noted as _;

/// The label the Deployment controller puts on a ReplicaSet's pods: the hash its name ends with.
const POD_TEMPLATE_HASH: &str = "pod-template-hash";

/// What the operator needs to know of a workload.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub(crate) struct Workload {
    /// Its kind and name (None only in tests that do not need them): with `uid`, how its own
    /// pods are told from others its selector matches ([`Workload::owns`]).
    pub kind: Option<WorkloadKind>,
    pub name: String,
    pub uid: Option<String>,
    pub generation: i64,
    pub observed_generation: i64,
    pub replicas: i32,
    pub updated: i32,
    pub ready: i32,
    /// StatefulSet only: currentRevision == updateRevision.
    pub revisions_match: bool,
    pub template_annotations: BTreeMap<String, String>,
    /// StatefulSet only: the governing (headless) Service.
    pub service_name: Option<String>,
    /// The pod template's containers and the volumes/mounts that concern the wiring.
    pub mounts: TemplateMounts,
    /// How the workload's controller replaces pods.
    pub strategy: Strategy,
    /// StatefulSet only: the revision of the current template (pods' `controller-revision-hash`).
    pub update_revision: Option<String>,
    /// The pods' labels the workload selects by (`spec.selector.matchLabels`).
    pub selector: BTreeMap<String, String>,
}

/// How the workload's controller replaces pods, as far as the operator must know.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub(crate) enum Strategy {
    /// The controller replaces every pod (RollingUpdate, Recreate).
    #[default]
    Rolling,
    /// StatefulSet RollingUpdate with a partition: ordinals below it keep the previous template
    /// until the user lowers it. The operator waits, without a deadline.
    Partitioned(i32),
    /// StatefulSet OnDelete: a pod takes the new template only when deleted. The operator
    /// deletes them one at a time, highest ordinal first, each once all pods are Ready.
    OnDelete,
}

/// Rollout progress.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Progress {
    /// Workload missing.
    Missing,
    /// All replicas run the current template and are ready.
    Complete,
    /// Still rolling, or replicas not ready.
    Rolling { updated: i32, ready: i32, replicas: i32 },
    /// Every pod the partition lets roll did, and all are ready; the pods below it wait for
    /// the user to lower it.
    Held { partition: i32, updated: i32, replicas: i32 },
}

impl Workload {
    /// Whether `pod` is one of this workload's own pods, by the owner chain its controller set:
    /// a StatefulSet's pod names it (kind, name and UID) as its controller; a Deployment's pod
    /// names as its controller the ReplicaSet `<deployment>-<pod-template-hash>` — the name the
    /// Deployment controller gives the ReplicaSets it owns, with the hash in the pod's
    /// `pod-template-hash` label. (Reading the ReplicaSet to follow its ownerReference to the
    /// Deployment's UID would need a right the operator does not have.) A pod the selector
    /// matches that no controller of the workload created is not the workload's.
    pub(crate) fn owns(&self, pod: &Pod) -> bool {
        let Some(controller) = pod.metadata.owner_references.iter().flatten().find(|o| o.controller == Some(true))
        else {
            return false;
        };
        if controller.api_version != "apps/v1" || self.name.is_empty() {
            return false;
        }
        match self.kind {
            Some(WorkloadKind::StatefulSet) => {
                controller.kind == "StatefulSet"
                    && controller.name == self.name
                    && self.uid.as_deref().is_some_and(|uid| uid == controller.uid)
            }
            Some(WorkloadKind::Deployment) => {
                let hash =
                    pod.metadata.labels.as_ref().and_then(|l| l.get(POD_TEMPLATE_HASH)).filter(|h| !h.is_empty());
                controller.kind == "ReplicaSet" && hash.is_some_and(|h| controller.name == format!("{}-{h}", self.name))
            }
            None => false,
        }
    }

    /// Progress of the rollout of the current template.
    pub(crate) fn progress(&self) -> Progress {
        let done = self.observed_generation >= self.generation
            && self.updated >= self.replicas
            && self.ready >= self.replicas
            && self.revisions_match;
        if done {
            return Progress::Complete;
        }
        if let Strategy::Partitioned(partition) = self.strategy {
            let held = partition.min(self.replicas);
            if held > 0
                && self.observed_generation >= self.generation
                && self.updated >= self.replicas - held
                && self.ready >= self.replicas
            {
                return Progress::Held { partition, updated: self.updated, replicas: self.replicas };
            }
        }
        Progress::Rolling { updated: self.updated, ready: self.ready, replicas: self.replicas }
    }
}

/// The cluster state API.md derives from the workload.
pub(crate) fn cluster_state(workload: Option<&Workload>) -> ClusterState {
    match workload.map(Workload::progress) {
        None | Some(Progress::Missing) => ClusterState::Unavailable,
        Some(Progress::Complete) => ClusterState::Active,
        Some(Progress::Held { .. }) => ClusterState::Updating,
        Some(Progress::Rolling { .. }) => {
            let w = workload.expect("rolling implies a workload");
            // Template not yet rolled out everywhere: UPDATING; rolled out but pods not ready: UNAVAILABLE.
            if w.observed_generation < w.generation || w.updated < w.replicas || !w.revisions_match {
                ClusterState::Updating
            } else {
                ClusterState::Unavailable
            }
        }
    }
}

/// A cluster state as the contract spells it.
pub(crate) fn state_text(s: ClusterState) -> &'static str {
    match s {
        ClusterState::Active => "ACTIVE",
        ClusterState::Updating => "UPDATING",
        ClusterState::Unavailable => "UNAVAILABLE",
    }
}

fn from_statefulset(s: StatefulSet) -> Workload {
    let spec = s.spec;
    let st = s.status.unwrap_or_default();
    let on_delete = spec.update_strategy.as_ref().and_then(|u| u.type_.as_deref()) == Some("OnDelete");
    Workload {
        kind: Some(WorkloadKind::StatefulSet),
        name: s.metadata.name.unwrap_or_default(),
        uid: s.metadata.uid,
        generation: s.metadata.generation.unwrap_or(0),
        observed_generation: st.observed_generation.unwrap_or(0),
        replicas: spec.replicas.unwrap_or(1),
        updated: st.updated_replicas.unwrap_or(0),
        // availableReplicas (Kubernetes 1.23+) counts a pod only after minReadySeconds; v1.20
        // does not report it, and has no minReadySeconds for StatefulSets.
        ready: st.available_replicas.unwrap_or(st.ready_replicas.unwrap_or(0)).min(st.ready_replicas.unwrap_or(0)),
        // With OnDelete, v1.20's StatefulSet controller never moves currentRevision to the
        // update revision: every pod updated is the end of the rollout then.
        revisions_match: (st.current_revision.is_some() && st.current_revision == st.update_revision)
            || (on_delete && st.updated_replicas.unwrap_or(0) >= spec.replicas.unwrap_or(1)),
        strategy: match spec.update_strategy.as_ref() {
            _ if on_delete => Strategy::OnDelete,
            Some(u) => match u.rolling_update.as_ref().and_then(|r| r.partition) {
                Some(p) if p > 0 => Strategy::Partitioned(p),
                _ => Strategy::Rolling,
            },
            None => Strategy::Rolling,
        },
        update_revision: st.update_revision.clone(),
        selector: spec.selector.match_labels.clone().unwrap_or_default(),
        mounts: TemplateMounts::from_pod_spec(spec.template.spec.as_ref()),
        template_annotations: spec.template.metadata.and_then(|m| m.annotations).unwrap_or_default(),
        service_name: spec.service_name,
    }
}

fn from_deployment(d: Deployment) -> Workload {
    let spec = d.spec;
    let st = d.status.unwrap_or_default();
    let replicas = spec.replicas.unwrap_or(1);
    // Old pods still around (status.replicas > desired) means the roll is not finished.
    let extra = st.replicas.unwrap_or(0) > replicas;
    Workload {
        kind: Some(WorkloadKind::Deployment),
        name: d.metadata.name.unwrap_or_default(),
        uid: d.metadata.uid,
        generation: d.metadata.generation.unwrap_or(0),
        observed_generation: st.observed_generation.unwrap_or(0),
        replicas,
        updated: st.updated_replicas.unwrap_or(0),
        ready: st.available_replicas.unwrap_or(0).min(st.ready_replicas.unwrap_or(0)),
        revisions_match: !extra,
        mounts: TemplateMounts::from_pod_spec(spec.template.spec.as_ref()),
        template_annotations: spec.template.metadata.and_then(|m| m.annotations).unwrap_or_default(),
        service_name: None,
        strategy: Strategy::Rolling,
        update_revision: None,
        selector: spec.selector.match_labels.clone().unwrap_or_default(),
    }
}

/// `StatefulSet kafka/orders-kafka`, as messages name a workload.
pub(crate) fn describe(namespace: &str, r: &ClusterRef) -> String {
    let kind = match r.kind {
        WorkloadKind::StatefulSet => "StatefulSet",
        WorkloadKind::Deployment => "Deployment",
    };
    format!("{kind} {namespace}/{}", r.name)
}

/// Where a rollout the operator started stands.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum RolloutCheck {
    /// Our annotations are in the template and every replica runs it, ready.
    Done,
    /// Past the deadline; the message says what was seen and how to go on.
    TimedOut(String),
    /// Still going; check again after the duration at the latest.
    Rolling(String, std::time::Duration),
    /// A StatefulSet partition holds the rest back: no deadline runs.
    Held(String),
}

/// Check a rollout the operator started `elapsed` seconds ago by setting `expected` annotations.
pub(crate) fn check(
    workload: Option<&Workload>,
    expected: &BTreeMap<String, String>,
    elapsed: i64,
    timeout: i64,
    what: &str,
) -> RolloutCheck {
    let ours = workload.is_some_and(|w| expected.iter().all(|(k, v)| w.template_annotations.get(k) == Some(v)));
    let progress = workload.map(Workload::progress).unwrap_or(Progress::Missing);
    if ours && progress == Progress::Complete {
        return RolloutCheck::Done;
    }
    if let (true, Progress::Held { partition, updated, replicas }) = (ours, &progress) {
        return RolloutCheck::Held(format!(
            "{what}: {updated}/{replicas} pods run the new template; its updateStrategy.rollingUpdate.partition={partition} holds pods 0..{} back. Lower the partition to roll them; no rollout deadline runs meanwhile.",
            partition.min(replicas) - 1
        ));
    }
    let detail = match &progress {
        Progress::Rolling { updated, ready, replicas } => {
            format!("{updated}/{replicas} pods updated, {ready}/{replicas} ready")
        }
        Progress::Held { updated, replicas, .. } => format!("{updated}/{replicas} pods updated"),
        Progress::Missing => "the workload is gone".into(),
        Progress::Complete => "the pod template no longer carries the operator's annotations".into(),
    };
    if elapsed >= timeout {
        RolloutCheck::TimedOut(format!(
            "Rollout of {what} did not complete within rolloutTimeoutSeconds={timeout} ({detail}). Check `kubectl rollout status` and the pods' events; fix the workload, then change this resource (e.g. rolloutTimeoutSeconds) to retry."
        ))
    } else {
        let left = (timeout - elapsed).max(1).unsigned_abs();
        RolloutCheck::Rolling(format!("Rolling {what}: {detail}."), std::time::Duration::from_secs(left.min(10)))
    }
}

/// Read the workload; None when it does not exist.
async fn get(client: &Client, namespace: &str, r: &ClusterRef) -> kube::Result<Option<Workload>> {
    Ok(match r.kind {
        WorkloadKind::StatefulSet => {
            Api::<StatefulSet>::namespaced(client.clone(), namespace).get_opt(&r.name).await?.map(from_statefulset)
        }
        WorkloadKind::Deployment => {
            Api::<Deployment>::namespaced(client.clone(), namespace).get_opt(&r.name).await?.map(from_deployment)
        }
    })
}

/// Read the workload `r` names in `namespace`; None when it does not exist.
pub(crate) async fn read(client: &Client, namespace: &str, r: &ClusterRef) -> Result<Option<Workload>, super::Error> {
    let kind = match r.kind {
        WorkloadKind::StatefulSet => "StatefulSet",
        WorkloadKind::Deployment => "Deployment",
    };
    get(client, namespace, r).await.reading(&super::Named::new(kind, namespace, &r.name))
}

/// A StatefulSet with `updateStrategy: OnDelete` rolls only as pods are deleted: the pod to delete
/// next — the highest ordinal not yet on the current revision — once every pod exists, is Ready
/// and none is terminating (one at a time, like the controller's own rolling update); `None`
/// while waiting or when all are current.
pub(crate) async fn next_pod_to_replace(
    client: &Client,
    namespace: &str,
    w: &Workload,
) -> kube::Result<Option<String>> {
    let Some(revision) = w.update_revision.as_deref() else { return Ok(None) };
    let pods = pods(client, namespace, w).await?;
    let owned: Vec<&Pod> = pods.iter().filter(|p| w.owns(p)).collect();
    Ok(pick_pod_to_replace(&owned, w.replicas, revision))
}

/// The pods the workload selects (`spec.selector.matchLabels`; every pod of the namespace
/// when it selects by expressions only), as they are now: its own and any other pod that carries
/// the labels ([`Workload::owns`] tells them apart).
pub(crate) async fn pods(client: &Client, namespace: &str, w: &Workload) -> kube::Result<Vec<Pod>> {
    let selector: Vec<String> = w.selector.iter().map(|(k, v)| format!("{k}={v}")).collect();
    let lp = kube::api::ListParams::default().labels(&selector.join(","));
    Ok(Api::<Pod>::namespaced(client.clone(), namespace).list(&lp).await?.items)
}

/// The decision of [`next_pod_to_replace`], on the pods read.
fn pick_pod_to_replace(pods: &[&Pod], replicas: i32, revision: &str) -> Option<String> {
    let ready = |p: &Pod| {
        p.status.iter().flat_map(|s| s.conditions.iter().flatten()).any(|c| c.type_ == "Ready" && c.status == "True")
    };
    let settled = usize::try_from(replicas).is_ok_and(|r| pods.len() >= r)
        && pods.iter().all(|p| p.metadata.deletion_timestamp.is_none() && ready(p));
    if !settled {
        return None;
    }
    let ordinal = |p: &Pod| p.metadata.name.as_deref()?.rsplit('-').next()?.parse::<u32>().ok();
    pods.iter()
        .filter(|p| {
            p.metadata.labels.as_ref().and_then(|l| l.get("controller-revision-hash")).map(String::as_str)
                != Some(revision)
        })
        .max_by_key(|p| ordinal(p))
        .and_then(|p| p.metadata.name.clone())
}

/// Prefix of every pod-template annotation the operator owns.
pub(crate) const ANNOTATION_PREFIX: &str = "clustersecurity.io/";

/// Set pod-template annotations — and the volumes and mounts of `wiring` ([`super::wiring`]), in
/// the same apply so that a change of both rolls the pods once — with server-side apply under
/// our field manager (`cluster-security-operator`). Only our fields are touched, so other
/// managers' fields stay; applying the same values again changes nothing (no new generation, no
/// rollout).
///
/// Every kind applies under the same manager, and an apply drops the manager's fields it does
/// not name: so the apply carries all our annotations already on the template, and is
/// conditional on the resourceVersion they were read at (a concurrent change is a conflict and
/// is retried, never lost).
pub(crate) async fn apply_template(
    client: &Client,
    namespace: &str,
    r: &ClusterRef,
    annotations: &BTreeMap<String, String>,
    wiring: &Wiring,
) -> kube::Result<()> {
    let (kind, template, rv) = match r.kind {
        WorkloadKind::StatefulSet => {
            let s = Api::<StatefulSet>::namespaced(client.clone(), namespace).get(&r.name).await?;
            ("StatefulSet", s.spec.template, s.metadata.resource_version)
        }
        WorkloadKind::Deployment => {
            let d = Api::<Deployment>::namespaced(client.clone(), namespace).get(&r.name).await?;
            ("Deployment", d.spec.template, d.metadata.resource_version)
        }
    };
    let current = template.metadata.and_then(|m| m.annotations);
    let (volumes, containers) = TemplateMounts::from_pod_spec(template.spec.as_ref()).apply(wiring);
    let mut ours: BTreeMap<String, String> =
        current.unwrap_or_default().into_iter().filter(|(k, _)| k.starts_with(ANNOTATION_PREFIX)).collect();
    ours.extend(annotations.iter().map(|(k, v)| (k.clone(), v.clone())));
    let mut patch = json!({
        "apiVersion": "apps/v1",
        "kind": kind,
        "metadata": {"name": r.name, "namespace": namespace, "resourceVersion": rv},
        "spec": {"template": {"metadata": {"annotations": ours}}},
    });
    // Left out when empty: the apply then removes what the operator had there.
    if !volumes.is_empty() {
        patch["spec"]["template"]["spec"]["volumes"] = json!(volumes);
    }
    if !containers.is_empty() {
        patch["spec"]["template"]["spec"]["containers"] = json!(containers);
    }
    let pp = PatchParams::apply(FIELD_MANAGER).force();
    match r.kind {
        WorkloadKind::StatefulSet => {
            Api::<StatefulSet>::namespaced(client.clone(), namespace)
                .patch(&r.name, &pp, &Patch::Apply(&patch))
                .await?;
        }
        WorkloadKind::Deployment => {
            Api::<Deployment>::namespaced(client.clone(), namespace).patch(&r.name, &pp, &Patch::Apply(&patch)).await?;
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn w(generation: i64, observed: i64, replicas: i32, updated: i32, ready: i32, revs: bool) -> Workload {
        Workload {
            generation,
            observed_generation: observed,
            replicas,
            updated,
            ready,
            revisions_match: revs,
            ..Default::default()
        }
    }

    fn pod(name: &str, revision: &str, ready: bool, terminating: bool) -> Pod {
        serde_json::from_value(json!({
            "metadata": {"name": name, "labels": {"controller-revision-hash": revision},
                         "deletionTimestamp": terminating.then_some("2026-11-30T00:00:00Z")},
            "status": {"conditions": [{"type": "Ready", "status": if ready { "True" } else { "False" }}]}
        }))
        .unwrap()
    }

    #[test]
    fn on_delete_replaces_the_highest_outdated_ordinal_once_all_pods_are_ready() {
        let pick = |pods: &[Pod]| pick_pod_to_replace(&pods.iter().collect::<Vec<_>>(), 3, "new");
        let (old, new) = ("old", "new");
        let all_old =
            [pod("kafka-0", old, true, false), pod("kafka-2", old, true, false), pod("kafka-10", old, true, false)];
        assert_eq!(pick(&all_old).as_deref(), Some("kafka-10"), "by ordinal, not by name");
        let mid =
            [pod("kafka-0", old, true, false), pod("kafka-1", old, true, false), pod("kafka-2", new, true, false)];
        assert_eq!(pick(&mid).as_deref(), Some("kafka-1"));
        let not_ready =
            [pod("kafka-0", old, true, false), pod("kafka-1", old, true, false), pod("kafka-2", new, false, false)];
        assert_eq!(pick(&not_ready), None, "the replaced pod is not Ready yet");
        let terminating =
            [pod("kafka-0", old, true, false), pod("kafka-1", old, true, true), pod("kafka-2", new, true, false)];
        assert_eq!(pick(&terminating), None, "one at a time");
        assert_eq!(pick(&mid[..2]), None, "a pod missing (being recreated)");
        let done =
            [pod("kafka-0", new, true, false), pod("kafka-1", new, true, false), pod("kafka-2", new, true, false)];
        assert_eq!(pick(&done), None);
    }

    /// A pod with `controller` as its controlling owner (apiVersion, kind, name, uid) and the
    /// label `pod-template-hash: hash`.
    fn owned_pod(controller: Option<(&str, &str, &str, &str)>, hash: Option<&str>) -> Pod {
        let owners: Vec<serde_json::Value> = controller
            .iter()
            .map(|(api, kind, name, uid)| json!({"apiVersion": api, "kind": kind, "name": name, "uid": uid, "controller": true}))
            .collect();
        let labels = match hash {
            Some(h) => json!({"app": "kafka", "pod-template-hash": h}),
            None => json!({"app": "kafka"}),
        };
        serde_json::from_value(json!({"metadata": {"name": "p", "labels": labels, "ownerReferences": owners}})).unwrap()
    }

    #[test]
    fn a_statefulsets_pods_are_those_it_controls_by_uid() {
        let sts = Workload {
            kind: Some(WorkloadKind::StatefulSet),
            name: "kafka".into(),
            uid: Some("u1".into()),
            ..Default::default()
        };
        assert!(sts.owns(&owned_pod(Some(("apps/v1", "StatefulSet", "kafka", "u1")), None)));
        assert!(!sts.owns(&owned_pod(None, None)), "a bare pod with the labels");
        assert!(!sts.owns(&owned_pod(Some(("apps/v1", "StatefulSet", "kafka", "u0")), None)), "a deleted namesake's");
        assert!(!sts.owns(&owned_pod(Some(("apps/v1", "StatefulSet", "kafka-canary", "u1")), None)));
        assert!(!sts.owns(&owned_pod(Some(("example.com/v1", "StatefulSet", "kafka", "u1")), None)));
        let mut not_controller = owned_pod(Some(("apps/v1", "StatefulSet", "kafka", "u1")), None);
        not_controller.metadata.owner_references.as_mut().unwrap()[0].controller = None;
        assert!(!sts.owns(&not_controller), "an ownerReference that is not the controller's");
        assert!(!Workload { uid: None, ..sts }.owns(&owned_pod(Some(("apps/v1", "StatefulSet", "kafka", "")), None)));
    }

    #[test]
    fn a_deployments_pods_are_those_of_its_replicasets_by_name_and_template_hash() {
        let d = Workload { kind: Some(WorkloadKind::Deployment), name: "kafka".into(), ..Default::default() };
        let rs = |name: &str, hash: Option<&str>| owned_pod(Some(("apps/v1", "ReplicaSet", name, "rs-uid")), hash);
        assert!(d.owns(&rs("kafka-5d8f7c", Some("5d8f7c"))));
        assert!(!d.owns(&rs("kafka-canary-5d8f7c", Some("5d8f7c"))), "another Deployment whose name starts alike");
        assert!(!d.owns(&rs("kafka-5d8f7c", None)), "no pod-template-hash label");
        assert!(!d.owns(&rs("kafka-", Some(""))), "an empty hash");
        assert!(!d.owns(&owned_pod(Some(("apps/v1", "StatefulSet", "kafka", "rs-uid")), Some("5d8f7c"))));
        assert!(!d.owns(&owned_pod(None, Some("5d8f7c"))), "a bare pod with the labels");
    }

    #[test]
    fn a_partition_holds_the_rollout_without_failing_it() {
        let mut held = w(2, 2, 3, 1, 3, false);
        held.strategy = Strategy::Partitioned(2);
        assert_eq!(held.progress(), Progress::Held { partition: 2, updated: 1, replicas: 3 });
        assert_eq!(cluster_state(Some(&held)), ClusterState::Updating);
        held.template_annotations = BTreeMap::from([("a".into(), "1".into())]);
        let expected = BTreeMap::from([("a".to_string(), "1".to_string())]);
        let RolloutCheck::Held(message) = check(Some(&held), &expected, 10_000, 600, "StatefulSet k/kafka") else {
            panic!("held, not timed out")
        };
        assert!(message.contains("partition=2") && message.contains("pods 0..1"), "{message}");
        let mut rolling = w(2, 2, 3, 0, 3, false);
        rolling.strategy = Strategy::Partitioned(2);
        assert!(matches!(rolling.progress(), Progress::Rolling { .. }), "pods above the partition still rolling");
    }

    #[test]
    fn states_follow_rollout_progress() {
        assert_eq!(cluster_state(None), ClusterState::Unavailable);
        assert_eq!(cluster_state(Some(&w(2, 2, 3, 3, 3, true))), ClusterState::Active);
        assert_eq!(cluster_state(Some(&w(3, 2, 3, 3, 3, true))), ClusterState::Updating, "not yet observed");
        assert_eq!(cluster_state(Some(&w(3, 3, 3, 1, 3, false))), ClusterState::Updating, "rolling");
        assert_eq!(cluster_state(Some(&w(3, 3, 3, 3, 2, true))), ClusterState::Unavailable, "a pod not ready");
        assert_eq!(w(3, 3, 3, 3, 3, true).progress(), Progress::Complete);
    }
}
