//! Every branch of the rolling driver, with a scripted kind (`Widget`), a fixed clock and no API
//! server: the kit's writes are recorded as [`Effect`]s, and the hooks answer from the spec.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use cluster_security_api::{
    ClusterRef, Operated, Operation, OperationRecord, OperationState, OperationType, WorkloadKind,
};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Condition;
use k8s_openapi::jiff::Timestamp;
use kube::api::ObjectMeta;
use kube::{Api, Client, CustomResource};
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use super::*;
use crate::health::Readiness;
use crate::metrics::Metrics;
use crate::reconciler::events::reason as event;
use crate::reconciler::round::{Effect, Writer};
use crate::reconciler::{Clock, Reconcile};

/// A kind whose hooks do what its spec says: `refuse` makes prepare refuse with that reason,
/// `secrets_present` answers the missing-Secret question.
#[derive(CustomResource, Deserialize, Serialize, Clone, Debug, JsonSchema)]
#[kube(group = "test.clustersecurity.io", version = "v1", kind = "Widget", namespaced, status = "WidgetStatus")]
pub(super) struct WidgetSpec {
    setting: String,
    refuse: Option<String>,
    secrets_present: bool,
    timeout: u32,
    /// Phases rolled after the first (a CA change has two rolls).
    #[serde(default)]
    phases: u32,
    /// Prepare waits before any later phase.
    #[serde(default)]
    wait: bool,
}

#[derive(Deserialize, Serialize, Clone, Debug, Default, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub(super) struct WidgetStatus {
    observed_generation: Option<i64>,
    conditions: Vec<Condition>,
    applied: Option<String>,
    hash: Option<String>,
    /// Rolls prepared for the current operation.
    phase: u32,
    current_operation: Option<Operation<String>>,
    operations: Vec<Operation<String>>,
    cluster_ref: Option<ClusterRef>,
}

impl OperationRecord for WidgetStatus {
    type Info = String;
    fn conditions(&self) -> &[Condition] {
        &self.conditions
    }
    fn set_conditions(&mut self, conditions: Vec<Condition>) {
        self.conditions = conditions;
    }
    fn set_observed_generation(&mut self, generation: Option<i64>) {
        self.observed_generation = generation;
    }
    fn current_operation(&self) -> Option<&Operation<String>> {
        self.current_operation.as_ref()
    }
    fn record_mut(&mut self) -> cluster_security_api::RecordMut<'_, String> {
        (&mut self.current_operation, &mut self.operations)
    }
    fn history(&self) -> &[Operation<String>] {
        &self.operations
    }
}

impl Operated for Widget {
    type Status = WidgetStatus;
    fn status(&self) -> Option<&WidgetStatus> {
        self.status.as_ref()
    }
}

impl Reconcile for Widget {
    type Deps = ();
    fn api(client: Client, _: &Self) -> Api<Self> {
        Api::namespaced(client, "test")
    }
    fn validate(&self, _: &WidgetStatus, _: &()) -> Result<(), cluster_security_api::validate::Violations> {
        Ok(())
    }
    async fn advance(&self, _: &mut Round<Self>, _: &Context, _: &()) -> Result<Outcome, Error> {
        unreachable!("the tests call drive directly")
    }
}

static CLUSTER: ClusterRef = ClusterRef { kind: WorkloadKind::StatefulSet, name: String::new() };
const HASH: &str = "test.clustersecurity.io/hash";

impl TargetsWorkload for Widget {
    fn cluster_ref(&self) -> &ClusterRef {
        &CLUSTER
    }
}

impl Rolling for Widget {
    const OPERATION: OperationType = OperationType::UpdateSecurity;
    const WHAT: &'static str = "widgets";
    // The tests have no API server to list other widgets on.
    const ONE_PER_WORKLOAD: bool = false;
    fn recorded_cluster_ref(status: &WidgetStatus) -> Option<&ClusterRef> {
        status.cluster_ref.as_ref()
    }
    fn record_cluster_ref(status: &mut WidgetStatus, target: &ClusterRef) {
        status.cluster_ref = Some(target.clone());
    }
    fn desired(&self) -> String {
        self.spec.setting.clone()
    }
    fn rollout_timeout_seconds(&self) -> u32 {
        self.spec.timeout
    }
    fn deletion_policy(&self) -> cluster_security_api::DeletionPolicy {
        cluster_security_api::DeletionPolicy::Retain
    }
    async fn idle(&self, round: &mut Round<Self>, _: &Context, _: Option<&Workload>) -> Result<Idle<String>, Error> {
        Ok(if round.status.applied.as_ref() == Some(&self.spec.setting) {
            let health = Health::Ready { reason: reason::APPLIED, message: "settled".into() };
            Idle::Settled(Outcome::new(health, None))
        } else {
            Idle::Start { source: round.status.applied.clone() }
        })
    }
    async fn referenced_secrets_present(&self, _: &Context) -> Result<bool, Error> {
        Ok(self.spec.secrets_present)
    }
    async fn prepare(
        &self,
        round: &mut Round<Self>,
        _: &Context,
        op: &Operation<String>,
        _: Option<&Workload>,
    ) -> Result<BTreeMap<String, String>, PrepareError> {
        if let Some(reason) = &self.spec.refuse {
            return Err(PrepareError::refused(conditions::stalled_reason(reason), format!("refused: {reason}")));
        }
        if self.spec.wait && round.status.phase >= 1 {
            let after = Duration::from_secs(60);
            return Err(PrepareError::Wait { reason: "Waiting", message: "not yet".into(), after });
        }
        round.status.phase += 1;
        let mut hash = format!("hash-of-{}", op.target_info.as_deref().unwrap_or_default());
        if round.status.phase > 1 {
            hash = format!("{hash}-{}", round.status.phase);
        }
        round.status.hash = Some(hash.clone());
        Ok(BTreeMap::from([(HASH.to_string(), hash)]))
    }
    fn expected(status: &WidgetStatus) -> BTreeMap<String, String> {
        BTreeMap::from([(HASH.to_string(), status.hash.clone().unwrap_or_default())])
    }
    fn another_phase(&self, status: &WidgetStatus, _: &Operation<String>) -> bool {
        status.phase <= self.spec.phases
    }
    fn completed(&self, status: &mut WidgetStatus, target: &String) {
        status.applied = Some(target.clone());
    }
}

struct Fixed(Timestamp);
impl Clock for Fixed {
    fn now(&self) -> Timestamp {
        self.0
    }
}

fn t(seconds: i64) -> Timestamp {
    Timestamp::from_second(1_800_000_000 + seconds).unwrap()
}

/// A context whose client points at nothing: the driver must not use it.
fn context() -> Context {
    let client = Client::try_from(kube::Config::new("http://127.0.0.1:9".parse().unwrap())).unwrap();
    Context::new(
        client,
        Arc::new(Fixed(t(0))),
        Arc::new(Metrics::new()),
        Arc::new(Readiness::default()),
        Default::default(),
    )
}

fn widget(setting: &str, status: WidgetStatus) -> Widget {
    let mut w = Widget::new(
        "w",
        WidgetSpec {
            setting: setting.into(),
            refuse: None,
            secrets_present: false,
            timeout: 600,
            phases: 0,
            wait: false,
        },
    );
    w.metadata = ObjectMeta {
        name: Some("w".into()),
        namespace: Some("test".into()),
        generation: Some(1),
        ..Default::default()
    };
    w.status = Some(status);
    w
}

/// A workload that is ACTIVE and whose template carries `annotations`.
fn active(annotations: &[(&str, &str)]) -> Workload {
    Workload {
        generation: 2,
        observed_generation: 2,
        replicas: 3,
        updated: 3,
        ready: 3,
        revisions_match: true,
        template_annotations: annotations.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect(),
        ..Default::default()
    }
}

/// One round of the driver at `now`: the outcome and the finished round.
async fn round(w: Widget, now: Timestamp, workload: Option<Workload>) -> (Outcome, Round<Widget>) {
    let mut round = Round::new(Arc::new(w), now, Writer::Record(Vec::new()));
    let outcome = drive(round.obj.clone().as_ref(), &mut round, &context(), workload.as_ref()).await.unwrap();
    (outcome, round)
}

fn reasons(round: &Round<Widget>) -> Vec<&str> {
    round.events.iter().map(|(_, r, _)| r.as_str()).collect()
}

/// The status of an operation rolling `setting` since `t(0)`.
async fn rolling_status(setting: &str) -> WidgetStatus {
    let (_, r) = round(widget(setting, WidgetStatus::default()), t(0), Some(active(&[]))).await;
    r.status
}

#[tokio::test]
async fn settled_reports_the_kinds_health_and_writes_nothing() {
    let status = WidgetStatus { applied: Some("a".into()), ..Default::default() };
    let (outcome, r) = round(widget("a", status), t(0), Some(active(&[]))).await;
    assert_eq!(outcome.health, Health::Ready { reason: reason::APPLIED, message: "settled".into() });
    assert!(r.effects().is_empty() && r.events.is_empty() && r.status.current_operation.is_none());
}

#[tokio::test]
async fn after_a_repair_that_rolls_the_pods_ready_waits_for_the_rollout() {
    let settled = WidgetStatus { applied: Some("a".into()), hash: Some("hash-of-a".into()), ..Default::default() };
    // Someone removed the annotation: put back, and the pods roll.
    let (outcome, r) = round(widget("a", settled.clone()), t(0), Some(active(&[]))).await;
    assert_eq!(r.effects(), [Effect::Template(BTreeMap::from([(HASH.into(), "hash-of-a".into())]))]);
    assert_eq!(reasons(&r), [event::DRIFT_REPAIRED]);
    let repaired = looked(settled, &outcome.health);
    // Rolling back to the restored template: not Ready yet.
    let rolling = Workload { updated: 1, ready: 2, ..active(&[(HASH, "hash-of-a")]) };
    let (outcome, r) = round(widget("a", repaired.clone()), t(5), Some(rolling)).await;
    assert!(r.effects().is_empty() && r.events.is_empty());
    let Health::Reconciling { reason, message } = &outcome.health else { panic!("{:?}", outcome.health) };
    assert_eq!(*reason, event::DRIFT_REPAIRED);
    assert!(message.contains("1/3 pods updated, 2/3 ready"), "{message}");
    assert!(outcome.requeue.is_some_and(|d| d <= Duration::from_secs(10)));
    // Every pod runs it: Ready.
    let (outcome, _) = round(widget("a", repaired), t(10), Some(active(&[(HASH, "hash-of-a")]))).await;
    assert!(matches!(outcome.health, Health::Ready { reason, .. } if reason == reason::APPLIED));
}

#[tokio::test]
async fn a_change_is_recorded_before_anything_is_prepared_then_rolled() {
    let (outcome, r) = round(widget("a", WidgetStatus::default()), t(0), Some(active(&[]))).await;
    // The first write records the PENDING operation (crash safety), the second rolls the pods.
    let [Effect::Status(recorded), Effect::Template(annotations)] = r.effects() else { panic!("{:?}", r.effects()) };
    assert_eq!(recorded["currentOperation"]["operationState"], "PENDING");
    assert_eq!(recorded["conditions"][1]["reason"], reason::OPERATION_RECORDED);
    assert_eq!(annotations, &BTreeMap::from([(HASH.to_string(), "hash-of-a".to_string())]));
    let op = r.status.current_operation.as_ref().unwrap();
    assert_eq!(
        (op.operation_state, op.target_info.as_deref(), op.source_info.as_deref()),
        (OperationState::UpdateInProgress, Some("a"), None)
    );
    assert_eq!(op.start_time.as_deref(), Some(operation::rfc3339(t(0)).as_str()));
    assert_eq!(r.status.operations.len(), 1, "one record, updated in place");
    assert_eq!(reasons(&r), [event::OPERATION_PENDING, event::UPDATE_STARTED]);
    assert_eq!(outcome.requeue, Some(FOLLOW_ROLLOUT));
    assert!(matches!(outcome.health, Health::Reconciling { reason, .. } if reason == reason::ROLLING_PODS));
}

#[tokio::test]
async fn a_workload_that_is_not_active_keeps_the_operation_pending() {
    for workload in [None, Some(Workload { updated: 1, ..active(&[]) })] {
        let (outcome, r) = round(widget("a", WidgetStatus::default()), t(0), workload.clone()).await;
        assert!(r.effects().is_empty(), "nothing prepared, so nothing written mid-round: {:?}", r.effects());
        assert_eq!(r.status.current_operation.as_ref().unwrap().operation_state, OperationState::Pending);
        assert_eq!(outcome.requeue, Some(RETRY_NOT_ACTIVE));
        let Health::Reconciling { reason: why, message } = outcome.health else { panic!() };
        assert_eq!(why, reason::WAITING_FOR_ACTIVE_CLUSTER);
        assert!(message.contains(if workload.is_none() { "not found" } else { "UPDATING" }), "{message}");
    }
}

#[tokio::test]
async fn a_pending_operation_takes_the_newest_spec() {
    let (_, r) = round(widget("a", WidgetStatus::default()), t(0), None).await;
    let mut w = widget("b", r.status);
    w.metadata.generation = Some(2);
    let (_, r) = round(w, t(5), Some(active(&[]))).await;
    let op = r.status.current_operation.as_ref().unwrap();
    assert_eq!((op.target_info.as_deref(), op.generation), (Some("b"), Some(2)));
    assert_eq!(r.status.hash.as_deref(), Some("hash-of-b"));
    assert_eq!(r.status.operations.len(), 1, "still the one operation");
}

#[tokio::test]
async fn a_refusal_fails_the_operation_and_a_missing_secret_is_retried() {
    for (code, retry) in [(reason::INVALID_CERTIFICATE, None), (reason::SECRET_NOT_FOUND, Some(RETRY_MISSING_SECRET))] {
        let mut w = widget("a", WidgetStatus::default());
        w.spec.refuse = Some(code.into());
        let (outcome, r) = round(w, t(0), Some(active(&[]))).await;
        assert!(!r.effects().iter().any(|e| matches!(e, Effect::Template(_))), "nothing rolled");
        assert!(r.status.current_operation.is_none());
        let failed = &r.status.operations[0];
        assert_eq!(failed.operation_state, OperationState::UpdateFailed);
        assert_eq!(failed.error_info.as_ref().unwrap().code, code);
        assert_eq!(reasons(&r), [event::OPERATION_PENDING, event::UPDATE_FAILED]);
        assert_eq!(outcome, Outcome::new(Health::Stalled { reason: code, message: format!("refused: {code}") }, retry));
    }
}

#[tokio::test]
async fn a_failure_for_the_same_spec_is_not_retried_until_a_missing_secret_appears() {
    let mut w = widget("a", WidgetStatus::default());
    w.spec.refuse = Some(reason::SECRET_NOT_FOUND.into());
    let (_, failed) = round(w, t(0), Some(active(&[]))).await;

    // Same spec, Secret still missing: stalled, no new operation.
    let w = widget("a", failed.status.clone());
    let (outcome, r) = round(w, t(30), Some(active(&[]))).await;
    assert!(r.effects().is_empty() && r.status.operations.len() == 1);
    assert_eq!(outcome.requeue, Some(RETRY_MISSING_SECRET));

    // The Secret appeared: a new operation starts and rolls.
    let mut w = widget("a", failed.status);
    w.spec.secrets_present = true;
    let (_, r) = round(w, t(60), Some(active(&[]))).await;
    assert_eq!(r.status.operations.len(), 2);
    assert_eq!(r.status.current_operation.as_ref().unwrap().operation_state, OperationState::UpdateInProgress);
}

#[tokio::test]
async fn following_a_rollout_puts_back_missing_annotations_and_waits() {
    let status = rolling_status("a").await;
    // The template lost our annotation (a status write lost, someone's edit): applied again.
    let (outcome, r) = round(widget("a", status.clone()), t(10), Some(active(&[]))).await;
    assert_eq!(r.effects(), [Effect::Template(BTreeMap::from([(HASH.into(), "hash-of-a".into())]))]);
    assert!(matches!(outcome.health, Health::Reconciling { reason, .. } if reason == reason::ROLLING_PODS));
    // Annotation present, pods still rolling: nothing written, look again soon.
    let rolling = Workload { updated: 1, ..active(&[(HASH, "hash-of-a")]) };
    let (outcome, r) = round(widget("a", status), t(20), Some(rolling)).await;
    assert!(r.effects().is_empty() && r.events.is_empty());
    assert!(outcome.requeue.is_some_and(|d| d <= Duration::from_secs(10)));
}

#[tokio::test]
async fn a_finished_rollout_completes_the_operation() {
    let status = rolling_status("a").await;
    let (outcome, r) = round(widget("a", status), t(30), Some(active(&[(HASH, "hash-of-a")]))).await;
    assert!(r.status.current_operation.is_none());
    let done = &r.status.operations[0];
    assert_eq!(
        (done.operation_state, done.end_time.as_deref()),
        (OperationState::UpdateComplete, Some(operation::rfc3339(t(30)).as_str()))
    );
    assert_eq!(r.status.applied.as_deref(), Some("a"), "the kind records what is in effect");
    assert_eq!(reasons(&r), [event::UPDATE_COMPLETE]);
    assert!(matches!(outcome.health, Health::Ready { reason, .. } if reason == reason::APPLIED));
}

#[tokio::test]
async fn a_spec_changed_during_the_rollout_is_queued_next() {
    let status = rolling_status("a").await;
    let (outcome, r) = round(widget("b", status), t(30), Some(active(&[(HASH, "hash-of-a")]))).await;
    assert_eq!(r.status.operations[0].operation_state, OperationState::UpdateComplete);
    assert_eq!(r.status.applied.as_deref(), Some("a"));
    assert!(matches!(outcome.health, Health::Reconciling { reason, .. } if reason == reason::QUEUED));
    assert_eq!(outcome.requeue, Some(AFTER_END));
}

#[tokio::test]
async fn a_rollout_past_its_deadline_fails() {
    let status = rolling_status("a").await;
    let stuck = Workload { updated: 1, ..active(&[(HASH, "hash-of-a")]) };
    let (outcome, r) = round(widget("a", status), t(600), Some(stuck)).await;
    assert_eq!(r.status.operations[0].error_info.as_ref().unwrap().code, reason::ROLLOUT_FAILED);
    assert_eq!(reasons(&r), [event::UPDATE_FAILED]);
    assert!(matches!(outcome.health, Health::Stalled { reason, .. } if reason == reason::ROLLOUT_FAILED));
    assert_eq!(outcome.requeue, None, "waits for a change");
}

#[tokio::test]
async fn a_verified_roll_with_another_phase_prepares_and_rolls_it_with_a_deadline_of_its_own() {
    let phased = |status: WidgetStatus, wait: bool| {
        let mut w = widget("a", status);
        w.spec.phases = 1;
        w.spec.wait = wait;
        w
    };
    let (_, first) = round(phased(WidgetStatus::default(), false), t(0), Some(active(&[]))).await;
    // Rolled and checked: the next phase is prepared and rolled in the same operation.
    let (outcome, r) = round(phased(first.status.clone(), false), t(30), Some(active(&[(HASH, "hash-of-a")]))).await;
    assert_eq!(r.effects(), [Effect::Template(BTreeMap::from([(HASH.into(), "hash-of-a-2".into())]))]);
    let op = r.status.current_operation.as_ref().unwrap();
    assert_eq!(op.operation_state, OperationState::UpdateInProgress);
    assert_eq!(op.deadline_from.as_deref(), Some(operation::rfc3339(t(30)).as_str()), "its own deadline");
    assert_eq!(op.verification, None, "the next roll is checked again");
    assert!(matches!(outcome.health, Health::Reconciling { reason, .. } if reason == reason::ROLLING_PODS));
    // The second roll done: complete.
    let (_, r) = round(phased(r.status, false), t(60), Some(active(&[(HASH, "hash-of-a-2")]))).await;
    assert_eq!(r.status.operations[0].operation_state, OperationState::UpdateComplete);
    assert_eq!(r.status.applied.as_deref(), Some("a"));

    // A phase that waits: nothing rolled, the verdict of the roll before is kept.
    let before = first.status.current_operation.as_ref().unwrap().deadline_from.clone();
    let (outcome, r) = round(phased(first.status, true), t(30), Some(active(&[(HASH, "hash-of-a")]))).await;
    assert!(!r.effects().iter().any(|e| matches!(e, Effect::Template(_))), "{:?}", r.effects());
    let op = r.status.current_operation.as_ref().unwrap();
    assert_eq!(op.operation_state, OperationState::UpdateInProgress);
    assert!(op.verification.is_some(), "checked once, not probed again while waiting");
    assert_eq!(op.deadline_from, before, "nothing written for the deadline at each look while waiting");
    assert_eq!(outcome.requeue, Some(Duration::from_secs(60)));
    assert!(matches!(outcome.health, Health::Reconciling { reason, .. } if reason == "Waiting"));
    // A day later, still waiting: no deadline ran meanwhile. A broker restarted by someone
    // else is followed with a deadline from now.
    let waiting = looked(r.status, &outcome.health);
    let restarted = Workload { ready: 2, ..active(&[(HASH, "hash-of-a")]) };
    let (outcome, r) = round(phased(waiting.clone(), true), t(86_400), Some(restarted)).await;
    let op = r.status.current_operation.as_ref().unwrap();
    assert_eq!(op.operation_state, OperationState::UpdateInProgress, "not timed out by the wait");
    assert_eq!(op.deadline_from.as_deref(), Some(operation::rfc3339(t(86_400)).as_str()));
    assert!(matches!(outcome.health, Health::Reconciling { reason, .. } if reason == reason::ROLLING_PODS));
    let (_, r) = round(phased(waiting, true), t(86_400), Some(active(&[(HASH, "hash-of-a")]))).await;
    assert_eq!(r.status.current_operation.unwrap().deadline_from, before, "still waiting: nothing written");
}

/// `status` after a look that reported `health` (the driver's conditions, as the writer sets them).
fn looked(mut status: WidgetStatus, health: &Health) -> WidgetStatus {
    let conditions = conditions::apply(status.conditions(), health, Some(1), t(0));
    status.set_conditions(conditions);
    status
}

#[tokio::test]
async fn no_deadline_runs_while_a_partition_holds_the_rollout_and_nothing_is_written_for_it() {
    let partitioned = |updated| Workload {
        updated,
        revisions_match: false,
        strategy: Strategy::Partitioned(2),
        ..active(&[(HASH, "hash-of-a")])
    };
    let (outcome, r) = round(widget("a", rolling_status("a").await), t(30), Some(partitioned(1))).await;
    assert!(
        matches!(outcome.health, Health::Reconciling { reason, .. } if reason == reason::ROLLOUT_HELD_BY_PARTITION)
    );
    let held = looked(r.status, &outcome.health);
    let before = held.current_operation.as_ref().unwrap().deadline_from.clone();
    // Held far past the deadline (600 s): still in progress, nothing moved.
    let (outcome, r) = round(widget("a", held.clone()), t(7_200), Some(partitioned(1))).await;
    let op = r.status.current_operation.as_ref().unwrap();
    assert_eq!((op.operation_state, &op.deadline_from), (OperationState::UpdateInProgress, &before));
    assert!(
        matches!(outcome.health, Health::Reconciling { reason, .. } if reason == reason::ROLLOUT_HELD_BY_PARTITION)
    );
    // Released: the deadline runs from the first look after.
    let released = Workload { strategy: Strategy::Partitioned(0), ..partitioned(2) };
    let (outcome, r) = round(widget("a", held), t(7_210), Some(released.clone())).await;
    assert_eq!(
        r.status.current_operation.as_ref().unwrap().deadline_from.as_deref(),
        Some(operation::rfc3339(t(7_210)).as_str())
    );
    let rolling = looked(r.status, &outcome.health);
    let (_, r) = round(widget("a", rolling.clone()), t(7_700), Some(released.clone())).await;
    assert_eq!(r.status.current_operation.unwrap().operation_state, OperationState::UpdateInProgress, "within 600 s");
    let (_, r) = round(widget("a", rolling), t(7_900), Some(released)).await;
    assert_eq!(r.status.operations[0].error_info.as_ref().unwrap().code, reason::ROLLOUT_FAILED, "600 s after release");
}

/// The pause is recorded in the operation (`deadlinePaused`), not read back from the reason the
/// last round reported: a round of the runner's in between (the object paused by annotation)
/// does not start the deadline early.
#[tokio::test]
async fn a_held_rollout_stays_paused_across_a_round_that_reports_something_else() {
    let partitioned =
        |strategy| Workload { updated: 1, revisions_match: false, strategy, ..active(&[(HASH, "hash-of-a")]) };
    let (outcome, r) =
        round(widget("a", rolling_status("a").await), t(30), Some(partitioned(Strategy::Partitioned(2)))).await;
    let held = looked(r.status, &outcome.health);
    assert_eq!(held.current_operation.as_ref().unwrap().deadline_paused, Some(true));
    let paused = looked(held, &Health::NotReady { reason: reason::PAUSED, message: String::new() });
    let (outcome, r) = round(widget("a", paused), t(7_210), Some(partitioned(Strategy::Partitioned(0)))).await;
    let op = r.status.current_operation.as_ref().unwrap();
    assert_eq!(op.operation_state, OperationState::UpdateInProgress, "{outcome:?}");
    assert_eq!(op.deadline_from.as_deref(), Some(operation::rfc3339(t(7_210)).as_str()), "the deadline runs from now");
    assert_eq!(op.deadline_paused, Some(false));
}

#[tokio::test]
async fn a_deleted_object_goes_only_on_positive_evidence() {
    let mut w = widget("a", WidgetStatus::default());
    w.metadata.deletion_timestamp = Some(k8s_openapi::apimachinery::pkg::apis::meta::v1::Time(t(0)));
    let mut round = Round::new(Arc::new(w), t(1), Writer::Record(Vec::new()));
    let outcome = deleting(round.obj.clone().as_ref(), &mut round, &context(), Some(&active(&[]))).await.unwrap();
    assert!(may_go(&outcome), "nothing that goes with it is mounted: {outcome:?}");
    let elsewhere = super::super::not_watched("other", &super::super::Scope::namespaces(&["kafka".into()]));
    assert!(may_go(&elsewhere), "nothing the operator can check there");
    assert!(!may_go(&super::super::paused_outcome()), "paused: wait");
    let invalid = super::super::invalid_spec(&cluster_security_api::validate::Violations::default());
    assert!(!may_go(&invalid));
    let blocked = Outcome::new(Health::Stalled { reason: reason::DELETION_BLOCKED, message: String::new() }, None);
    assert!(!may_go(&blocked), "a reason alone lets nothing go");
}
