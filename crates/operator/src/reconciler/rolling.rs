//! The one operation driver of the kinds that roll a workload's pods (ClusterSecurityPolicy,
//! CertificateRotation): PENDING → record → wait for ACTIVE → prepare → roll → follow →
//! UPDATE_COMPLETE / UPDATE_FAILED. A kind supplies decisions through [`Rolling`]; the driver
//! owns the state machine, the operation record, the pod-template annotations and the events,
//! so a fix to any of them lands once for both kinds.
//!
//! What this module may touch: through the [`Round`], the object's status and the target
//! workload's pod-template annotations. The kinds' artefacts (Secrets, ConfigMaps) are written
//! by the kind's `prepare`.

use std::collections::BTreeMap;
use std::future::Future;
use std::time::Duration;

use cluster_security_api::{
    validate, ClusterRef, ClusterState, DeletionPolicy, Operation, OperationRecord, OperationState, OperationType,
};
use kube::runtime::events::EventType;

use super::conditions::{self, reason};
use super::derived::{self, Derived};
use super::events::reason as event;
use super::verify::{self, Expectation, Verdict};
use super::watch::TargetsWorkload;
use super::wiring::Wiring;
use super::workload::{self, RolloutCheck, Strategy, Workload};
use super::{operation, Context, Error, Health, Named, Outcome, Round, RETRY_NAME_CONFLICT};

/// What the kind's operation moves from and to.
pub(crate) type Info<K> = <<K as cluster_security_api::Operated>::Status as OperationRecord>::Info;

/// What [`Rolling::idle`] decided with no operation running.
#[derive(Debug)]
pub(crate) enum Idle<I> {
    /// Nothing to roll: report this.
    Settled(Outcome),
    /// Start an operation from `source` (what is in effect now) to the desired settings.
    Start { source: Option<I> },
}

/// Why [`Rolling::prepare`] did not roll: the user must act, or a transient failure.
#[derive(Debug)]
pub(crate) enum PrepareError {
    /// The user must act (`reason` is a condition reason); nothing was rolled. Ends the
    /// operation UPDATE_FAILED.
    Refused { reason: &'static str, message: String },
    /// The API server could not be read or written; the round is retried.
    Failed(Error),
    /// Not yet: the operation stays PENDING (`Reconciling` with `reason`), nothing is rolled,
    /// and the kind prepares again after `after` (or at the next change).
    Wait { reason: &'static str, message: String, after: Duration },
}

impl From<Error> for PrepareError {
    fn from(e: Error) -> Self {
        Self::Failed(e)
    }
}

impl PrepareError {
    pub(crate) fn refused(reason: &'static str, message: impl Into<String>) -> Self {
        Self::Refused { reason, message: message.into() }
    }
}

/// When to look again after a failure the user may fix without a spec change (a Secret that
/// appears later).
const RETRY_MISSING_SECRET: Duration = Duration::from_secs(30);
/// When to look again at a workload that is not ACTIVE.
const RETRY_NOT_ACTIVE: Duration = Duration::from_secs(30);
/// When to look at a rollout just started (workload watches usually come sooner).
const FOLLOW_ROLLOUT: Duration = Duration::from_secs(5);
/// How often a rollout held back by a partition is looked at.
const HELD_RECHECK: Duration = Duration::from_secs(10);
/// How often brokers that do not present what was put in place yet are checked again.
const VERIFY_RECHECK: Duration = Duration::from_secs(10);
/// When to look again after an operation ended (the next one may be queued).
const AFTER_END: Duration = Duration::from_secs(1);

/// A kind whose operations roll a workload's pods. Hooks decide; [`drive`] writes.
pub(crate) trait Rolling: TargetsWorkload {
    /// The operation type this kind records.
    const OPERATION: OperationType;
    /// What the operation puts in place, for messages ("security settings", "certificates").
    const WHAT: &'static str;

    /// The settings the spec asks for (an operation's `targetInfo`).
    fn desired(&self) -> Info<Self>;

    /// `rolloutTimeoutSeconds` of the spec.
    fn rollout_timeout_seconds(&self) -> u32;

    /// `deletionPolicy` of the spec: whether what it wrote goes with it.
    fn deletion_policy(&self) -> DeletionPolicy;

    /// Status fields the kind derives from the workload on every round.
    fn observe(&self, _status: &mut Self::Status, _workload: Option<&Workload>) {}

    /// No operation is running: report the settled state, or start an operation.
    fn idle(
        &self,
        round: &mut Round<Self>,
        ctx: &Context,
        workload: Option<&Workload>,
    ) -> impl Future<Output = Result<Idle<Info<Self>>, Error>> + Send;

    /// After an operation failed for want of a Secret: is every Secret the spec names there now?
    fn referenced_secrets_present(&self, ctx: &Context) -> impl Future<Output = Result<bool, Error>> + Send;

    /// Write what operation `op` puts in place (Secrets, ConfigMaps) and return the pod-template
    /// annotations that roll the pods; or refuse. Record what the status should show in
    /// `round.status`.
    fn prepare(
        &self,
        round: &mut Round<Self>,
        ctx: &Context,
        op: &Operation<Info<Self>>,
        workload: Option<&Workload>,
    ) -> impl Future<Output = Result<BTreeMap<String, String>, PrepareError>> + Send;

    /// Whether a second object of the kind for the same workload is refused (`Conflict`; the
    /// driver lists the kind's objects in the namespace to tell).
    const ONE_PER_WORKLOAD: bool = true;

    /// The workload the first operation that wrote anything targeted (`status.clusterRef`).
    fn recorded_cluster_ref(status: &Self::Status) -> Option<&ClusterRef>;

    /// Record that workload.
    fn record_cluster_ref(status: &mut Self::Status, target: &ClusterRef);

    /// The Secrets and ConfigMaps an operation for this spec writes under derived names: none may
    /// be someone else's object ([`derived::first_conflict`]).
    fn derived_objects(&self) -> Vec<Derived> {
        Vec::new()
    }

    /// While settled: restore the kind's artefacts someone deleted or changed, when that needs no
    /// new operation (the same content can be written again). Returns what was restored, for
    /// the `DriftRepaired` event.
    fn repair_artefacts(
        &self,
        _round: &mut Round<Self>,
        _ctx: &Context,
        _workload: Option<&Workload>,
    ) -> impl Future<Output = Result<Vec<String>, Error>> + Send {
        async { Ok(Vec::new()) }
    }

    /// Deleted under `deletionPolicy: Delete` with nothing of it mounted any more: remove what it
    /// wrote where owner references cannot reach (other namespaces). The deletion goes on
    /// whatever happens; a failure is the kind's to report (an event).
    fn release(&self, _round: &mut Round<Self>, _ctx: &Context) -> impl Future<Output = ()> + Send {
        async {}
    }

    /// The pod-template annotations the rolling operation set (from the status).
    fn expected(status: &Self::Status) -> BTreeMap<String, String>;

    /// The volumes and mounts that carry the artefacts of settings `target` into the broker
    /// container (`spec.mounts`); applied with the annotations, kept in place like them. From
    /// the operation's target, not the spec: a spec changed mid-roll must not mount a Secret
    /// that is not written yet.
    fn wiring(&self, _target: &Info<Self>) -> Wiring {
        Wiring::default()
    }

    /// What every pod must present on the wire before an operation completes (`spec.verify`);
    /// None: nothing is checked.
    fn wire_expectation(&self, _ctx: &Context) -> impl Future<Output = Result<Option<Expectation>, Error>> + Send {
        async { Ok(None) }
    }

    /// The roll of `op` is done and verified: whether the operation has another phase (a CA
    /// change rolls the new CA into the truststores first, then the certificates). The driver
    /// then calls [`prepare`](Self::prepare) again, which may wait, and rolls what it returns.
    fn another_phase(&self, _status: &Self::Status, _op: &Operation<Info<Self>>) -> bool {
        false
    }

    /// The rollout of `target` is complete: record what is now in effect.
    fn completed(&self, _status: &mut Self::Status, _target: &Info<Self>) {}
}

/// Settled and Ready: put back what someone removed — the kind's artefacts, and the pod-template
/// annotations that carry the applied state (restoring those rolls the pods back to it). Ready
/// stays true only when nothing had to roll.
async fn repair_drift<K: Rolling>(
    obj: &K,
    round: &mut Round<K>,
    ctx: &Context,
    workload: Option<&Workload>,
    desired: &Info<K>,
    wl: &str,
    settled: Outcome,
) -> Result<Outcome, Error> {
    let mut restored = obj.repair_artefacts(round, ctx, workload).await?;
    let expected: BTreeMap<String, String> =
        K::expected(&round.status).into_iter().filter(|(_, v)| !v.is_empty()).collect();
    // Settled and Ready: the spec's settings are the applied ones.
    let wiring = obj.wiring(desired);
    let annotations_drifted =
        workload.is_some_and(|w| expected.iter().any(|(k, v)| w.template_annotations.get(k) != Some(v)));
    let wiring_drifted = workload.is_some_and(|w| !w.mounts.in_place(&wiring));
    let template_drifted = annotations_drifted || wiring_drifted;
    if template_drifted {
        round.apply_template(round.obj.clone().cluster_ref(), &expected, &wiring).await?;
    }
    if annotations_drifted {
        let names: Vec<&str> = expected.keys().map(String::as_str).collect();
        restored.push(format!("the pod-template annotations {} of {wl}", names.join(", ")));
    }
    if wiring_drifted {
        restored.push(format!("the volumes and mounts of {wl} that carry the {} (spec.mounts)", K::WHAT));
    }
    if restored.is_empty() {
        return Ok(after_repair(round, workload, &expected, wl).unwrap_or(settled));
    }
    let message = format!("Restored what was changed or deleted by someone else: {}.", restored.join("; "));
    round.event(EventType::Normal, event::DRIFT_REPAIRED, message.clone());
    if template_drifted {
        let health = Health::Reconciling { reason: event::DRIFT_REPAIRED, message };
        return Ok(Outcome::new(health, Some(FOLLOW_ROLLOUT)));
    }
    Ok(settled)
}

/// After a repair that rolled the pods (the last look reported `DriftRepaired`): not Ready until
/// every pod runs the restored template — until then some may lack what they mount. None once
/// they all do (or nothing was repaired).
fn after_repair<K: Rolling>(
    round: &Round<K>,
    workload: Option<&Workload>,
    expected: &BTreeMap<String, String>,
    wl: &str,
) -> Option<Outcome> {
    if last_reconciling_reason(&round.status) != Some(event::DRIFT_REPAIRED) {
        return None;
    }
    let (message, after) = match workload::check(workload, expected, 0, i64::MAX, wl) {
        RolloutCheck::Done => return None,
        RolloutCheck::Rolling(message, after) => (message, after),
        RolloutCheck::Held(message) => (message, HELD_RECHECK),
        RolloutCheck::TimedOut(message) => (message, FOLLOW_ROLLOUT),
    };
    let message = format!("Restored what was changed or deleted by someone else; {message}");
    Some(Outcome::new(Health::Reconciling { reason: event::DRIFT_REPAIRED, message }, Some(after)))
}

/// What a Secret the spec names (the source of a certificate or a CA bundle) holds now that the
/// brokers do not run yet.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct SourceChange {
    /// What changed, and what happens about it.
    pub message: String,
    /// Whether it starts an operation by itself (`rollOnSourceChange`).
    pub rolls: bool,
}

/// The `SourceChanged` condition (True while the brokers run older material than a source Secret
/// holds), and a Warning event when it turns True with no roll to follow; a Normal one when it
/// rolls. The condition appears the first time a change is seen and stays (False) after.
pub(crate) fn report_source_change<K: Rolling>(round: &mut Round<K>, change: Option<&SourceChange>) {
    let changed = reason::SOURCE_SECRET_CHANGED;
    let in_sync = (reason::IN_SYNC, "The brokers run what the source Secrets hold.");
    let was =
        round.sticky_condition(conditions::SOURCE_CHANGED, change.map(|c| (changed, c.message.as_str())), in_sync);
    match change {
        Some(c) if c.rolls => round.event(EventType::Normal, changed, c.message.clone()),
        Some(c) if !was => round.event(EventType::Warning, changed, c.message.clone()),
        _ => {}
    }
}

/// The rule that `spec.clusterRef` stays on the workload the resource has written to.
pub(crate) fn cluster_ref_violation<K: Rolling>(obj: &K, status: &K::Status) -> Option<validate::Violations> {
    let recorded = K::recorded_cluster_ref(status)?;
    validate::cluster_ref_unchanged(super::kind_of::<K>(), obj.cluster_ref(), recorded).err()
}

/// Another object of the kind, older (by creation, then name) and not being deleted, that
/// targets the same workload: the message of a `Conflict`.
async fn older_claim<K: Rolling>(obj: &K, ctx: &Context) -> Result<Option<String>, Error> {
    let older = super::older_peers(ctx, obj).await?;
    let others = older.iter().map(|o| (o.meta().name.as_deref().unwrap_or_default(), o.cluster_ref()));
    Ok(validate::one_per_workload(super::kind_of::<K>(), obj.cluster_ref(), others)
        .err()
        .map(|v| format!("{v}. Nothing was changed.")))
}

/// The workload the object targets, as messages name it: `StatefulSet kafka/orders-kafka`.
pub(crate) fn workload_text<K: Rolling>(round: &Round<K>) -> String {
    workload::describe(&round.namespace(), round.obj.cluster_ref())
}

/// What a rolling kind's [`Reconcile::advance`](super::Reconcile::advance) is: read the target
/// workload, then [`drive`].
pub(crate) async fn advance<K: Rolling>(obj: &K, round: &mut Round<K>, ctx: &Context) -> Result<Outcome, Error> {
    let workload = workload::read(&ctx.client, &round.namespace(), obj.cluster_ref()).await?;
    if round.obj.meta().deletion_timestamp.is_some() {
        return deleting(obj, round, ctx, workload.as_ref()).await;
    }
    drive(obj, round, ctx, workload.as_ref()).await
}

/// The finalizer of the rolling kinds under `deletionPolicy: Delete`: what the brokers mount is
/// not garbage-collected while the workload's pod template still mounts it (pods restarted
/// later would not start).
pub(crate) const MOUNTED_OBJECTS_FINALIZER: &str = "clustersecurity.io/mounted-objects";

/// When a deleted object held by [`MOUNTED_OBJECTS_FINALIZER`] is looked at again.
const DELETION_RECHECK: Duration = Duration::from_secs(10);

/// Whether a rolling kind's deleted object may go after a round that ended in `outcome`: only
/// on positive evidence — [`deleting`] found nothing that goes with it mounted — or when the
/// operator does not manage its namespace (nothing it can check there). A paused object, or
/// one whose spec is invalid, keeps waiting.
pub(crate) fn may_go(outcome: &Outcome) -> bool {
    outcome.released
}

/// A deleted object: nothing new starts. Under `deletionPolicy: Delete` it goes once the
/// workload no longer mounts what goes with it; with `spec.mounts.enabled: false` the operator
/// removes its own mounts (the pods roll) and then lets it go.
async fn deleting<K: Rolling>(
    obj: &K,
    round: &mut Round<K>,
    ctx: &Context,
    workload: Option<&Workload>,
) -> Result<Outcome, Error> {
    let wl = workload_text(round);
    let mounted: Vec<String> = workload
        .map(|w| {
            let derived = obj.derived_objects();
            let held = derived.iter().filter(|d| w.mounts.referenced.contains(&(d.kind(), d.name().to_string())));
            held.map(|d| format!("{} {}", d.kind(), d.name())).collect()
        })
        .unwrap_or_default();
    if obj.deletion_policy() == DeletionPolicy::Retain || mounted.is_empty() {
        if obj.deletion_policy() == DeletionPolicy::Delete {
            obj.release(round, ctx).await;
        }
        let message = "Being deleted; nothing new starts.".to_string();
        return Ok(Outcome::new(Health::Reconciling { reason: reason::DELETING, message }, None).releasing());
    }
    let opted_out = obj.wiring(&obj.desired()).mounts.is_empty();
    if opted_out {
        // Takes the operator's volumes out of the template (a settled round repairs the wiring).
        drive(obj, round, ctx, workload).await?;
    }
    let message = format!(
        "Deleting this resource deletes {} (deletionPolicy: Delete), which {wl} still mounts: its pods would not start again. {}",
        mounted.join(", "),
        if opted_out {
            "The operator is removing its mounts (spec.mounts.enabled: false; the pods roll); remove any volume of your own that names them. The deletion completes then."
        } else {
            "Set spec.mounts.enabled: false (the operator removes its mounts and the pods roll), or spec.deletionPolicy: Retain; the deletion completes then."
        }
    );
    Ok(Outcome::new(Health::Stalled { reason: reason::DELETION_BLOCKED, message }, Some(DELETION_RECHECK)))
}

/// The message of Ready for a kind whose settings are in effect on `wl`.
pub(crate) fn in_effect<K: Rolling>(wl: &str) -> String {
    let what = K::WHAT;
    let mut chars = what.chars();
    let capital: String = chars.next().map(|c| c.to_uppercase().chain(chars).collect()).unwrap_or_default();
    format!("{capital} in effect on {wl}.")
}

/// Carry the kind's operation one step further, as far as it goes in this round.
pub(crate) async fn drive<K: Rolling>(
    obj: &K,
    round: &mut Round<K>,
    ctx: &Context,
    workload: Option<&Workload>,
) -> Result<Outcome, Error> {
    obj.observe(&mut round.status, workload);
    let desired = obj.desired();
    let wl = workload_text(round);

    let mut recorded_now = false;
    if round.status.current_operation().is_none() {
        let source = match obj.idle(round, ctx, workload).await? {
            Idle::Settled(outcome) if matches!(outcome.health, Health::Ready { .. }) => {
                return repair_drift(obj, round, ctx, workload, &desired, &wl, outcome).await;
            }
            Idle::Settled(outcome) => return Ok(outcome),
            Idle::Start { source } => source,
        };
        // One resource of a kind per workload: the newer one starts nothing.
        let claimed = if K::ONE_PER_WORKLOAD { older_claim(obj, ctx).await? } else { None };
        if let Some(message) = claimed {
            let health = Health::Stalled { reason: reason::CONFLICT, message };
            return Ok(Outcome::new(health, Some(RETRY_NAME_CONFLICT)));
        }
        // Never adopt what we did not create: nothing starts while a derived name is taken.
        if let Some(message) = derived_conflict(obj, round, ctx).await? {
            let health = Health::Stalled { reason: reason::NAME_CONFLICT, message };
            return Ok(Outcome::new(health, Some(RETRY_NAME_CONFLICT)));
        }
        // A failed operation for this very spec is not retried until the spec changes (or, for
        // a missing Secret, until it appears).
        let retry = operation::retry_request(round.obj.meta()).map(String::from);
        if let Some(e) = operation::failed_for(round.status.history(), round.generation(), &desired, retry.as_deref()) {
            let missing_secret = e.code == reason::SECRET_NOT_FOUND;
            if !(missing_secret && obj.referenced_secrets_present(ctx).await?) {
                let retry = missing_secret.then_some(RETRY_MISSING_SECRET);
                return Ok(Outcome::new(
                    Health::Stalled { reason: conditions::stalled_reason(&e.code), message: e.message },
                    retry,
                ));
            }
        }
        let mut op =
            operation::new(operation::uuid_v4(), K::OPERATION, round.generation(), source, desired.clone(), round.now);
        op.retry_request = retry;
        let (current, history) = round.status.record_mut();
        let note = operation::open(history, current, op, &wl);
        round.event(EventType::Normal, event::OPERATION_PENDING, note);
        recorded_now = true;
    }

    let mut op = round.status.current_operation().cloned().expect("an operation is current");
    let outcome = match op.operation_state {
        OperationState::Pending => pending(obj, round, ctx, workload, &mut op, &desired, &wl, recorded_now).await?,
        OperationState::UpdateInProgress => follow(obj, round, ctx, workload, &mut op, &desired, &wl).await?,
        OperationState::UpdateComplete | OperationState::UpdateFailed => Outcome::new(
            Health::Reconciling { reason: reason::OPERATION_RECORDED, message: String::new() },
            Some(AFTER_END),
        ),
    };
    let (current, history) = round.status.record_mut();
    operation::settle(history, current, op);
    Ok(outcome)
}

/// PENDING: take the newest settings, wait for an ACTIVE workload, prepare, start the roll.
/// `recorded_now`: the operation was opened in this round and is not stored yet.
#[allow(clippy::too_many_arguments)]
async fn pending<K: Rolling>(
    obj: &K,
    round: &mut Round<K>,
    ctx: &Context,
    workload: Option<&Workload>,
    op: &mut Operation<Info<K>>,
    desired: &Info<K>,
    wl: &str,
    recorded_now: bool,
) -> Result<Outcome, Error> {
    // Changed again before it started: the queued operation takes the newest settings.
    op.target_info = Some(desired.clone());
    op.generation = round.generation();
    let state = workload::cluster_state(workload);
    if state != ClusterState::Active {
        let message = match workload {
            None => format!("{wl} not found; the operation starts once it exists and is ACTIVE."),
            Some(_) => format!("{wl} is {}; the operation starts once it is ACTIVE.", workload::state_text(state)),
        };
        let health = Health::Reconciling { reason: reason::WAITING_FOR_ACTIVE_CLUSTER, message };
        return Ok(Outcome::new(health, Some(RETRY_NOT_ACTIVE)));
    }
    if recorded_now {
        // Stored before anything is issued or written: an operator restarted from here on finds
        // this operation (and what was issued for it) instead of starting another, which would
        // issue again and roll the pods twice. (Waiting for ACTIVE writes nothing, so the
        // round's own status write records it then.)
        let message = format!("Operation {} recorded; the {} are prepared next.", op.operation_id, K::WHAT);
        round.conclude(&Health::Reconciling { reason: reason::OPERATION_RECORDED, message });
        round.checkpoint().await?;
    }
    // From here on this workload receives artefacts: the resource is bound to it.
    if K::recorded_cluster_ref(&round.status).is_none() {
        K::record_cluster_ref(&mut round.status, obj.cluster_ref());
    }
    // The container the artefacts are mounted into must exist before anything is written.
    let wiring = obj.wiring(desired);
    if let Some(Err(message)) = workload.filter(|_| !wiring.mounts.is_empty()).map(|w| w.mounts.target(&wiring)) {
        return Ok(fail(round, op, reason::CONTAINER_NOT_FOUND, format!("{wl}: {message}."), None));
    }
    // Checked again right before anything is written: a PENDING operation takes the newest
    // spec, which may name other objects than when it was opened.
    if let Some(message) = derived_conflict(obj, round, ctx).await? {
        let health = Health::Stalled { reason: reason::NAME_CONFLICT, message };
        return Ok(Outcome::new(health, Some(RETRY_NAME_CONFLICT)));
    }
    let prepared = obj.prepare(round, ctx, op, workload).await;
    roll_prepared(round, op, prepared, &wiring, wl, operation::start).await
}

/// The first derived object of the current spec that this resource may not write (see
/// [`derived`]), as a `NameConflict` message.
async fn derived_conflict<K: Rolling>(obj: &K, round: &Round<K>, ctx: &Context) -> Result<Option<String>, Error> {
    derived::first_conflict(
        &ctx.client,
        &round.namespace(),
        &derived::Owner::of(round.obj.as_ref()),
        &obj.derived_objects(),
    )
    .await
}

/// Carry out what `prepare` answered: roll the annotations it returned (after `starting` the
/// operation or its phase), wait, or fail the operation.
async fn roll_prepared<K: Rolling>(
    round: &mut Round<K>,
    op: &mut Operation<Info<K>>,
    prepared: Result<BTreeMap<String, String>, PrepareError>,
    wiring: &Wiring,
    wl: &str,
    starting: fn(&mut Operation<Info<K>>, k8s_openapi::jiff::Timestamp),
) -> Result<Outcome, Error> {
    match prepared {
        Err(PrepareError::Failed(e)) => Err(e),
        // Between two phases nothing rolls: no rollout deadline runs while the kind waits
        // ([`deadline_paused`]); nothing is written for it at each look.
        Err(PrepareError::Wait { reason, message, after }) => {
            op.deadline_paused = Some(true);
            Ok(Outcome::new(Health::Reconciling { reason, message }, Some(after)))
        }
        Err(PrepareError::Refused { reason: code, message }) => {
            let retry = (code == reason::SECRET_NOT_FOUND).then_some(RETRY_MISSING_SECRET);
            Ok(fail(round, op, code, message, retry))
        }
        Ok(annotations) => {
            starting(op, round.now);
            op.deadline_paused = Some(false);
            round.apply_template(round.obj.clone().cluster_ref(), &annotations, wiring).await?;
            let note = format!("Operation {}: rolling {wl}.", op.operation_id);
            round.event(EventType::Normal, event::UPDATE_STARTED, note);
            let health = Health::Reconciling { reason: reason::ROLLING_PODS, message: format!("Rolling {wl}.") };
            Ok(Outcome::new(health, Some(FOLLOW_ROLLOUT)))
        }
    }
}

/// The roll of one phase is done and verified: prepare the next, which may wait (looked at
/// again without probing the brokers again), and roll it with a deadline of its own.
async fn next_phase<K: Rolling>(
    obj: &K,
    round: &mut Round<K>,
    ctx: &Context,
    workload: Option<&Workload>,
    op: &mut Operation<Info<K>>,
    wl: &str,
) -> Result<Outcome, Error> {
    let prepared = obj.prepare(round, ctx, op, workload).await;
    let wiring = op.target_info.as_ref().map(|t| obj.wiring(t)).unwrap_or_default();
    roll_prepared(round, op, prepared, &wiring, wl, |op, now| {
        // A roll of its own: checked on the wire again, with a deadline from now.
        op.verification = None;
        op.deadline_from = Some(operation::rfc3339(now));
    })
    .await
}

/// Whether the rollout deadline is paused: the last look followed no roll, because a partition
/// held it back or a phase done and checked waited for the next (recorded in the operation,
/// `deadlinePaused`). The deadline runs again from the first look that follows a roll; so a hold
/// or a wait of days costs no status write per look (each would move `deadlineFrom`), only one
/// when it starts and one when it ends. An operation recorded by an earlier version, without
/// the field, is judged by the reason its last look reported, as that version did.
fn deadline_paused<S: OperationRecord>(status: &S, op: &Operation<S::Info>) -> bool {
    op.deadline_paused.unwrap_or_else(|| {
        let last = last_reconciling_reason(status);
        last == Some(reason::ROLLOUT_HELD_BY_PARTITION)
            || (op.verification.is_some() && last != Some(reason::ROLLING_PODS))
    })
}

/// The reason the last look reported while work was in progress (the `Reconciling` condition).
fn last_reconciling_reason<S: OperationRecord>(status: &S) -> Option<&str> {
    conditions::get(status.conditions(), conditions::RECONCILING).map(|c| c.reason.as_str())
}

/// UPDATE_IN_PROGRESS: keep the annotations in the template, follow the rollout, complete it.
async fn follow<K: Rolling>(
    obj: &K,
    round: &mut Round<K>,
    ctx: &Context,
    workload: Option<&Workload>,
    op: &mut Operation<Info<K>>,
    desired: &Info<K>,
    wl: &str,
) -> Result<Outcome, Error> {
    let expected = K::expected(&round.status);
    // A status write lost to an API server restart or a conflict can leave the template with an
    // older value than the status records, and waiting alone would never finish. Applying the
    // same values again is a no-op, so this is safe to repeat.
    if let Some(w) = workload {
        let wiring = op.target_info.as_ref().map(|t| obj.wiring(t)).unwrap_or_default();
        if !expected.iter().all(|(k, v)| w.template_annotations.get(k) == Some(v)) || !w.mounts.in_place(&wiring) {
            tracing::warn!(workload = %wl, "pod template lacks the operator's current annotations or mounts; applying them again");
            round.apply_template(round.obj.clone().cluster_ref(), &expected, &wiring).await?;
        }
    }
    let paused = deadline_paused(&round.status, op);
    let elapsed = if paused { 0 } else { operation::seconds_in_progress(op, round.now).unwrap_or(0) };
    let timeout = i64::from(obj.rollout_timeout_seconds());
    match workload::check(workload, &expected, elapsed, timeout, wl) {
        RolloutCheck::Rolling(mut message, after) => {
            if paused {
                // Followed again (the partition lowered, a pod restarted between phases): the
                // deadline starts now, written once.
                op.deadline_from = Some(operation::rfc3339(round.now));
            }
            // OnDelete: the StatefulSet controller waits for us to delete the pods.
            if let Some(w) = workload.filter(|w| w.strategy == Strategy::OnDelete) {
                let ns = round.namespace();
                let next = workload::next_pod_to_replace(&ctx.client, &ns, w).await.map_err(reading_pods(obj, &ns))?;
                if let Some(pod) = next {
                    round.delete_pod(&pod).await?;
                    let note = format!("Deleted pod {pod} of {wl} (updateStrategy OnDelete) to take the new template.");
                    round.event(EventType::Normal, event::POD_REPLACED, note.clone());
                    message = format!("{message} {note}");
                }
            }
            op.deadline_paused = Some(false);
            Ok(Outcome::new(Health::Reconciling { reason: reason::ROLLING_PODS, message }, Some(after)))
        }
        RolloutCheck::Held(message) => {
            // The user holds the rollout back: no deadline runs until they release it.
            op.deadline_paused = Some(true);
            let health = Health::Reconciling { reason: reason::ROLLOUT_HELD_BY_PARTITION, message };
            Ok(Outcome::new(health, Some(HELD_RECHECK)))
        }
        RolloutCheck::TimedOut(message) => Ok(fail(round, op, reason::ROLLOUT_FAILED, message, None)),
        RolloutCheck::Done => {
            // Status tells the truth: complete only once the brokers present what was put in place
            // (checked once per roll: a phase waiting for the next keeps its verdict).
            let verification = match op.verification.clone() {
                Some(verified) => verified,
                None => match on_the_wire(obj, round, ctx, workload, op, &expected, (elapsed, timeout)).await? {
                    WireCheck::Verified(summary) => summary,
                    WireCheck::Meanwhile(outcome) => {
                        // Not verified yet: the deadline runs (a finding looked at again, the
                        // last old pods replaced).
                        op.deadline_paused = Some(false);
                        return Ok(outcome);
                    }
                },
            };
            op.verification = Some(verification.clone());
            if obj.another_phase(&round.status, op) {
                return next_phase(obj, round, ctx, workload, op, wl).await;
            }
            operation::complete(op, round.now);
            let target = op.target_info.clone().expect("operations carry a target");
            obj.completed(&mut round.status, &target);
            let note = format!("Operation {}: {wl} runs the new {}. {verification}", op.operation_id, K::WHAT);
            round.event(EventType::Normal, event::UPDATE_COMPLETE, note);
            let health = if &target == desired {
                Health::Ready { reason: reason::APPLIED, message: in_effect::<K>(wl) }
            } else {
                Health::Reconciling {
                    reason: reason::QUEUED,
                    message: "The spec changed during the operation; the next operation starts now.".into(),
                }
            };
            Ok(Outcome::new(health, Some(AFTER_END)))
        }
    }
}

/// What the check on the wire before an operation completes found.
enum WireCheck {
    /// Every pod presents what was put in place (or nothing is checked): what was checked.
    Verified(String),
    /// The outcome to report meanwhile: waiting for the last old pods, a finding looked at
    /// again, or the operation failed once the deadline passed.
    Meanwhile(Outcome),
}

/// The check on the wire before an operation completes.
async fn on_the_wire<K: Rolling>(
    obj: &K,
    round: &mut Round<K>,
    ctx: &Context,
    workload: Option<&Workload>,
    op: &mut Operation<Info<K>>,
    annotations: &BTreeMap<String, String>,
    (elapsed, timeout): (i64, i64),
) -> Result<WireCheck, Error> {
    let (Some(expected), Some(w)) = (obj.wire_expectation(ctx).await?, workload) else {
        return Ok(WireCheck::Verified("Not checked on the wire (spec.verify.enabled: false).".to_string()));
    };
    let ns = round.namespace();
    let verdict = verify::check(&ctx.client, &ns, w, annotations, &expected).await.map_err(reading_pods(obj, &ns))?;
    let late = elapsed >= timeout;
    Ok(WireCheck::Meanwhile(match verdict {
        Verdict::Verified(summary) => return Ok(WireCheck::Verified(summary)),
        Verdict::Rolling(message) if !late => {
            Outcome::new(Health::Reconciling { reason: reason::ROLLING_PODS, message }, Some(FOLLOW_ROLLOUT))
        }
        Verdict::Rolling(message) => {
            fail(round, op, reason::ROLLOUT_FAILED, format!("{message} (rolloutTimeoutSeconds {timeout} passed)"), None)
        }
        Verdict::Failed { reason: code, message } if late => {
            fail(round, op, code, format!("{message} (checked for {elapsed}s, rolloutTimeoutSeconds {timeout})"), None)
        }
        Verdict::Failed { reason: code, message } => {
            Outcome::new(Health::Stalled { reason: code, message }, Some(VERIFY_RECHECK))
        }
    }))
}

/// The error of a failed read of the target workload's pods.
fn reading_pods<K: Rolling>(obj: &K, ns: &str) -> impl FnOnce(kube::Error) -> Error {
    let pods = Named::new("Pods of workload", ns, &obj.cluster_ref().name);
    move |source| Error::Read { object: pods, source: Box::new(source) }
}

/// End the operation `UPDATE_FAILED` with `code`: recorded, announced with a Warning, Stalled.
fn fail<K: Rolling>(
    round: &mut Round<K>,
    op: &mut Operation<Info<K>>,
    code: &'static str,
    message: String,
    retry: Option<Duration>,
) -> Outcome {
    operation::fail(op, code, message.clone(), round.now);
    round.event(EventType::Warning, event::UPDATE_FAILED, message.clone());
    Outcome::new(Health::Stalled { reason: code, message }, retry)
}

#[cfg(test)]
mod tests;
