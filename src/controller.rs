//! The three kube-runtime controllers and what they share: the context (client, clock, event
//! recorder), the status write (one server-side apply of the whole status), and the error policy.
//!
//! At this stage every reconciler validates the spec and reports it through observedGeneration
//! and kstatus conditions; the per-kind work (rollouts, certificates, KMS) plugs in per kind.

use std::fmt::Debug;
use std::sync::Arc;
use std::time::Duration;

use futures::StreamExt;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Condition;
use k8s_openapi::jiff::Timestamp;
use kube::api::{ListParams, Patch, PatchParams};
use kube::runtime::controller::{Action, Controller};
use kube::runtime::events::{Event, EventType, Recorder, Reporter};
use kube::runtime::watcher;
use kube::{Api, Client, Resource, ResourceExt};
use serde::de::DeserializeOwned;
use serde::Serialize;
use serde_json::{json, Value};
use tracing::{info, warn};

use crate::api::{CertificateRotation, ClusterSecurityPolicy, KmsKeyVaultMode, FIELD_MANAGER};
use crate::conditions::{self, reason, Health};
use crate::validate::{self, Violations};

/// Where time comes from; tests pass a fixed clock.
pub trait Clock: Send + Sync {
    fn now(&self) -> Timestamp;
}

/// The wall clock.
pub struct SystemClock;

impl Clock for SystemClock {
    fn now(&self) -> Timestamp {
        Timestamp::now()
    }
}

/// Shared by every reconciler.
pub struct Context {
    pub client: Client,
    pub clock: Arc<dyn Clock>,
    pub recorder: Recorder,
}

impl Context {
    pub fn new(client: Client, clock: Arc<dyn Clock>) -> Self {
        let reporter = Reporter { controller: FIELD_MANAGER.into(), instance: std::env::var("POD_NAME").ok() };
        Self { recorder: Recorder::new(client.clone(), reporter), client, clock }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("writing status of {kind} {name}: {source}")]
    WriteStatus { kind: &'static str, name: String, source: kube::Error },
    #[error(
        "the CustomResourceDefinition {crd} is not installed in this cluster; install the CRDs with \
         `kubectl apply -f crds/` (or `cluster-security-operator crd | kubectl apply -f -`) and start again"
    )]
    CrdMissing { crd: String },
    #[error("checking that {crd} is installed: {source}")]
    CrdCheck { crd: String, source: kube::Error },
    #[error("{what}: {source}")]
    Kube { what: String, source: kube::Error },
    #[error("internal error: {0}")]
    Internal(String),
}

/// The JSON merge patch (RFC 7386) that turns `old` into `new`: changed keys, and `null` for
/// removed ones, recursively. Sending the whole status this way removes what is gone exactly,
/// which server-side apply on the v1.20 apiserver did not for nested objects.
pub fn merge_diff(old: &Value, new: &Value) -> Option<Value> {
    match (old, new) {
        (Value::Object(o), Value::Object(n)) => {
            let mut out = serde_json::Map::new();
            for (k, nv) in n {
                match o.get(k) {
                    Some(ov) => {
                        if let Some(d) = merge_diff(ov, nv) {
                            out.insert(k.clone(), d);
                        }
                    }
                    None => {
                        out.insert(k.clone(), nv.clone());
                    }
                }
            }
            for k in o.keys().filter(|k| !n.contains_key(*k)) {
                out.insert(k.clone(), Value::Null);
            }
            (!out.is_empty()).then_some(Value::Object(out))
        }
        _ if old == new => None,
        _ => Some(new.clone()),
    }
}

/// Write `new` as the status of `obj` when it differs from the status `obj` carries. The patch
/// names the resourceVersion it was computed from, so a decision made on a stale copy fails
/// with a conflict (and is retried on fresh data) instead of overwriting newer status.
pub async fn write_status_diff<K, S>(api: &Api<K>, obj: &K, new: &S) -> Result<bool, Error>
where
    K: Reconciled,
    S: Serialize,
{
    let old = serde_json::to_value(obj).ok().and_then(|v| v.get("status").cloned()).unwrap_or(json!({}));
    let new = serde_json::to_value(new).map_err(|e| Error::Internal(e.to_string()))?;
    let Some(diff) = merge_diff(&old, &new) else { return Ok(false) };
    let patch = json!({"metadata": {"resourceVersion": obj.meta().resource_version}, "status": diff});
    api.patch_status(&obj.name_any(), &PatchParams::default(), &Patch::Merge(&patch))
        .await
        .map_err(|source| Error::WriteStatus { kind: K::KIND, name: obj.name_any(), source })?;
    Ok(true)
}

/// Events a reconcile decided to publish: (type, reason, note).
pub type Events = Vec<(EventType, String, String)>;

/// After the status write: publish the reconcile's events, plus a Warning when the object newly
/// became Stalled without one, and turn the requeue wish into an Action.
pub async fn finish<K>(
    ctx: &Context,
    obj: &K,
    old_conditions: &[Condition],
    health: &Health,
    mut events: Events,
    requeue: Option<Duration>,
) -> Action
where
    K: Resource<DynamicType = ()>,
{
    if let Health::Stalled { reason, message } = health {
        let was = conditions::get(old_conditions, conditions::STALLED).map(|c| c.reason.as_str());
        if was != Some(reason.as_str()) && !events.iter().any(|(t, _, _)| *t == EventType::Warning) {
            events.push((EventType::Warning, reason.clone(), message.clone()));
        }
    }
    for (type_, reason, note) in events {
        publish_event(ctx, obj, type_, &reason, note).await;
    }
    requeue.map(Action::requeue).unwrap_or_else(Action::await_change)
}

/// Set the pod-template annotations that roll `target` and move `op` to UPDATE_IN_PROGRESS;
/// returns the health to report while the pods roll.
pub async fn start_rollout<I>(
    ctx: &Context,
    namespace: &str,
    target: &crate::api::ClusterRef,
    annotations: &std::collections::BTreeMap<String, String>,
    op: &mut crate::api::Operation<I>,
    now: Timestamp,
    events: &mut Events,
) -> Result<Health, Error> {
    let wl = crate::rollout::describe(namespace, target);
    crate::rollout::set_template_annotations(&ctx.client, namespace, target, annotations)
        .await
        .map_err(|source| Error::Kube { what: format!("patch pod template of {wl}"), source })?;
    crate::operation::start(op, now);
    events.push((EventType::Normal, "UpdateStarted".into(), format!("Operation {}: rolling {wl}.", op.operation_id)));
    Ok(Health::Reconciling { reason: reason::ROLLING_PODS.into(), message: format!("Rolling {wl}.") })
}

/// The kind-independent part of following a rollout: past the deadline the operation fails
/// (RolloutFailed, Stalled); still rolling, progress is reported with when to look again.
/// None when the rollout is done: what completion means is the kind's.
pub fn follow_rollout<I>(
    check: crate::rollout::RolloutCheck,
    op: &mut crate::api::Operation<I>,
    now: Timestamp,
    events: &mut Events,
) -> Option<(Health, Option<Duration>)> {
    use crate::rollout::RolloutCheck;
    match check {
        RolloutCheck::Done => None,
        RolloutCheck::TimedOut(message) => {
            crate::operation::fail(op, reason::ROLLOUT_FAILED, message.clone(), now);
            events.push((EventType::Warning, "UpdateFailed".into(), message.clone()));
            Some((Health::Stalled { reason: reason::ROLLOUT_FAILED.into(), message }, None))
        }
        RolloutCheck::Rolling(message, after) => {
            Some((Health::Reconciling { reason: reason::ROLLING_PODS.into(), message }, Some(after)))
        }
    }
}

/// A kind that targets a workload in its own namespace.
pub trait TargetsWorkload:
    Resource<DynamicType = ()> + Clone + Debug + DeserializeOwned + Send + Sync + 'static
{
    fn cluster_ref(&self) -> &crate::api::ClusterRef;
}

impl TargetsWorkload for ClusterSecurityPolicy {
    fn cluster_ref(&self) -> &crate::api::ClusterRef {
        &self.spec.cluster_ref
    }
}

impl TargetsWorkload for CertificateRotation {
    fn cluster_ref(&self) -> &crate::api::ClusterRef {
        &self.spec.cluster_ref
    }
}

/// Trigger a reconcile of every object whose clusterRef names a changed StatefulSet or
/// Deployment. The workloads are watched as triggers only; the controller caches none of them.
pub fn watch_workloads<K: TargetsWorkload>(controller: Controller<K>, client: &Client) -> Controller<K> {
    use crate::api::WorkloadKind;
    use k8s_openapi::api::apps::v1::{Deployment, StatefulSet};
    use kube::runtime::reflector::{ObjectRef, Store};
    fn mapper<K: TargetsWorkload>(
        store: Store<K>,
        kind: WorkloadKind,
        ns: Option<String>,
        name: String,
    ) -> Vec<ObjectRef<K>> {
        store
            .state()
            .into_iter()
            .filter(|o| o.cluster_ref().kind == kind && o.cluster_ref().name == name && o.namespace() == ns)
            .map(|o| ObjectRef::from_obj(o.as_ref()))
            .collect()
    }
    let (s1, s2) = (controller.store(), controller.store());
    controller
        .watches(Api::<StatefulSet>::all(client.clone()), watcher::Config::default().any_semantic(), move |o| {
            mapper(s1.clone(), WorkloadKind::StatefulSet, o.namespace(), o.name_any())
        })
        .watches(Api::<Deployment>::all(client.clone()), watcher::Config::default().any_semantic(), move |o| {
            mapper(s2.clone(), WorkloadKind::Deployment, o.namespace(), o.name_any())
        })
}

/// Publish an event about `obj`; a failed event is logged, never fatal.
pub async fn publish_event<K>(ctx: &Context, obj: &K, type_: EventType, reason: &str, note: String)
where
    K: Resource<DynamicType = ()>,
{
    // events.k8s.io limits the note to 1 kB.
    let note: String = note.chars().take(1000).collect();
    let event = Event { type_, reason: reason.into(), note: Some(note), action: "Reconcile".into(), secondary: None };
    if let Err(e) = ctx.recorder.publish(&event, &obj.object_ref(&())).await {
        warn!(reason, error = %e, "could not publish event");
    }
}

/// What a kind brings to the shared reconcile loop.
pub trait Reconciled:
    Resource<DynamicType = ()> + Clone + Debug + DeserializeOwned + Serialize + Send + Sync + 'static
{
    /// Kind name, for messages.
    const KIND: &'static str;
    /// Plural resource name, for messages.
    const PLURAL: &'static str;
    /// Every API.md rule that can be checked from the spec alone.
    fn validate_spec(&self) -> Result<(), Violations>;
    fn status_conditions(&self) -> &[Condition];
    fn status_observed_generation(&self) -> Option<i64>;
    /// Status fields (besides observedGeneration and conditions) derived from the spec alone.
    fn derived_status(&self) -> serde_json::Map<String, Value> {
        serde_json::Map::new()
    }
}

impl Reconciled for ClusterSecurityPolicy {
    const KIND: &'static str = "ClusterSecurityPolicy";
    const PLURAL: &'static str = "clustersecuritypolicies";
    fn validate_spec(&self) -> Result<(), Violations> {
        validate::security_policy(&self.spec, None)
    }
    fn status_conditions(&self) -> &[Condition] {
        self.status.as_ref().map(|s| s.conditions.as_slice()).unwrap_or_default()
    }
    fn status_observed_generation(&self) -> Option<i64> {
        self.status.as_ref().and_then(|s| s.observed_generation)
    }
    fn derived_status(&self) -> serde_json::Map<String, Value> {
        let methods: Vec<&str> = self.spec.client_authentication.enabled_methods().iter().map(|m| m.label()).collect();
        let mut m = serde_json::Map::new();
        m.insert("authentication".into(), json!(methods.join(",")));
        m
    }
}

impl Reconciled for CertificateRotation {
    const KIND: &'static str = "CertificateRotation";
    const PLURAL: &'static str = "certificaterotations";
    fn validate_spec(&self) -> Result<(), Violations> {
        validate::certificate_rotation(&self.spec)
    }
    fn status_conditions(&self) -> &[Condition] {
        self.status.as_ref().map(|s| s.conditions.as_slice()).unwrap_or_default()
    }
    fn status_observed_generation(&self) -> Option<i64> {
        self.status.as_ref().and_then(|s| s.observed_generation)
    }
}

impl Reconciled for KmsKeyVaultMode {
    const KIND: &'static str = "KmsKeyVaultMode";
    const PLURAL: &'static str = "kmskeyvaultmodes";
    fn validate_spec(&self) -> Result<(), Violations> {
        validate::kms_key_vault_mode(&self.spec)
    }
    fn status_conditions(&self) -> &[Condition] {
        self.status.as_ref().map(|s| s.conditions.as_slice()).unwrap_or_default()
    }
    fn status_observed_generation(&self) -> Option<i64> {
        self.status.as_ref().and_then(|s| s.observed_generation)
    }
}

/// Health of an object from its spec alone.
pub fn spec_health<K: Reconciled>(obj: &K) -> Health {
    match obj.validate_spec() {
        Err(v) => Health::Stalled {
            reason: reason::INVALID_SPEC.into(),
            message: format!("{v}. Nothing was applied; fix the spec and apply it again."),
        },
        Ok(()) => Health::NotReady {
            reason: reason::VALIDATED.into(),
            message: format!(
                "The {} spec is valid; this operator version validates it but does not apply it yet.",
                K::KIND
            ),
        },
    }
}

/// The status patch for an object (pure): None when the stored status already says it.
pub fn status_patch<K: Reconciled>(obj: &K, health: &Health, now: Timestamp) -> Option<Value> {
    let generation = obj.meta().generation;
    let conds = conditions::apply(obj.status_conditions(), health, generation, now);
    let derived = obj.derived_status();
    let stored = serde_json::to_value(obj).ok();
    let derived_same =
        derived.iter().all(|(k, v)| stored.as_ref().and_then(|s| s.pointer(&format!("/status/{k}"))) == Some(v));
    if conds == obj.status_conditions() && obj.status_observed_generation() == generation && derived_same {
        return None;
    }
    let mut status = derived;
    status.insert("observedGeneration".into(), json!(generation));
    status.insert("conditions".into(), json!(conds));
    Some(json!({
        "apiVersion": K::api_version(&()),
        "kind": K::kind(&()),
        "status": status,
    }))
}

async fn write_status<K: Reconciled>(api: &Api<K>, name: &str, patch: &Value) -> Result<(), Error> {
    api.patch_status(name, &PatchParams::apply(FIELD_MANAGER).force(), &Patch::Apply(patch))
        .await
        .map(|_| ())
        .map_err(|source| Error::WriteStatus { kind: K::KIND, name: name.into(), source })
}

/// Publish an event on a condition transition; a failed event is logged, never fatal.
async fn event_on_transition<K: Reconciled>(ctx: &Context, obj: &K, health: &Health) {
    let was_stalled = conditions::get(obj.status_conditions(), conditions::STALLED).is_some();
    let (type_, reason, note) = match health {
        Health::Stalled { reason, message } if !was_stalled => (EventType::Warning, reason.clone(), message.clone()),
        Health::Stalled { .. } => return,
        Health::Ready { reason, message }
        | Health::Reconciling { reason, message }
        | Health::NotReady { reason, message } => {
            let prev = conditions::get(obj.status_conditions(), conditions::READY).map(|c| c.reason.as_str());
            if prev == Some(reason.as_str()) {
                return;
            }
            (EventType::Normal, reason.clone(), message.clone())
        }
    };
    publish_event(ctx, obj, type_, &reason, note).await;
}

async fn reconcile_validated<K: Reconciled>(obj: Arc<K>, ctx: Arc<Context>, api: Api<K>) -> Result<Action, Error> {
    let health = spec_health(obj.as_ref());
    if let Some(patch) = status_patch(obj.as_ref(), &health, ctx.clock.now()) {
        write_status(&api, &obj.name_any(), &patch).await?;
        event_on_transition(&ctx, obj.as_ref(), &health).await;
    }
    Ok(Action::await_change())
}

/// Transient errors back off; the next watch event retries sooner.
fn error_policy<K: Reconciled>(obj: Arc<K>, err: &Error, _ctx: Arc<Context>) -> Action {
    warn!(kind = K::KIND, name = %obj.name_any(), error = %err, "reconcile failed; retrying");
    Action::requeue(Duration::from_secs(5))
}

/// Fail early, with the install command, when a CRD is missing.
pub async fn check_crd<K: Reconciled>(api: &Api<K>) -> Result<(), Error> {
    let crd = format!("{}.{}", K::PLURAL, K::group(&()));
    match api.list_metadata(&ListParams::default().limit(1)).await {
        Ok(_) => Ok(()),
        Err(kube::Error::Api(s)) if s.code == 404 => Err(Error::CrdMissing { crd }),
        Err(source) => Err(Error::CrdCheck { crd, source }),
    }
}

async fn run_kind<K>(api: Api<K>, ctx: Arc<Context>, make_api: fn(&Client, &K) -> Api<K>)
where
    K: Reconciled,
{
    Controller::new(api, watcher::Config::default().any_semantic())
        .shutdown_on_signal()
        .run(
            move |obj, ctx: Arc<Context>| {
                let api = make_api(&ctx.client, &obj);
                reconcile_validated(obj, ctx, api)
            },
            error_policy::<K>,
            ctx,
        )
        .for_each(|res| async move {
            if let Ok((obj, _)) = res {
                tracing::debug!(kind = K::KIND, name = %obj.name, "reconciled");
            }
        })
        .await;
}

/// Run the three controllers until SIGTERM / Ctrl-C.
pub async fn run_all(client: Client, clock: Arc<dyn Clock>) -> Result<(), Error> {
    let csp: Api<ClusterSecurityPolicy> = Api::all(client.clone());
    let certrot: Api<CertificateRotation> = Api::all(client.clone());
    let kms: Api<KmsKeyVaultMode> = Api::all(client.clone());
    check_crd(&csp).await?;
    check_crd(&certrot).await?;
    check_crd(&kms).await?;
    let ctx = Arc::new(Context::new(client.clone(), clock));
    info!("starting controllers for ClusterSecurityPolicy, CertificateRotation, KmsKeyVaultMode");
    futures::join!(
        crate::policy::reconcile::run(client, ctx.clone()),
        crate::certs::reconcile::run(ctx.client.clone(), ctx.clone()),
        run_kind(kms, ctx, |c, _| Api::all(c.clone())),
    );
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::api::ClusterSecurityPolicySpec;

    fn policy(client_broker: &str) -> ClusterSecurityPolicy {
        let spec: ClusterSecurityPolicySpec = serde_json::from_value(json!({
            "clusterRef": {"kind": "StatefulSet", "name": "orders-kafka"},
            "clientAuthentication": {"tls": {"enabled": true}},
            "encryptionInTransit": {"clientBroker": client_broker}
        }))
        .unwrap();
        let mut p = ClusterSecurityPolicy::new("orders", spec);
        p.metadata.namespace = Some("kafka".into());
        p.metadata.generation = Some(3);
        p
    }

    #[test]
    fn merge_diff_removes_what_is_gone_and_skips_what_is_equal() {
        let old = json!({"a": 1, "op": {"id": "x", "target": {"tls": true}}, "list": [1, 2]});
        let new = json!({"a": 1, "list": [1], "b": "new"});
        assert_eq!(merge_diff(&old, &new), Some(json!({"op": null, "list": [1], "b": "new"})));
        assert_eq!(merge_diff(&new, &new), None);
        let nested = json!({"applied": {"tls": {"enabled": true}, "sasl": {}}});
        let nested_new = json!({"applied": {"sasl": {}}});
        assert_eq!(merge_diff(&nested, &nested_new), Some(json!({"applied": {"tls": null}})));
    }

    #[test]
    fn invalid_spec_stalls_with_reason_and_is_idempotent() {
        let now = Timestamp::from_second(1_800_000_000).unwrap();
        let mut p = policy("PLAINTEXT");
        let health = spec_health(&p);
        let patch = status_patch(&p, &health, now).expect("first write");
        assert_eq!(patch["status"]["observedGeneration"], 3);
        let conds = patch["status"]["conditions"].as_array().unwrap();
        let stalled = conds.iter().find(|c| c["type"] == "Stalled").unwrap();
        assert_eq!(stalled["reason"], "InvalidSpec");
        assert!(stalled["message"].as_str().unwrap().contains("AuthenticationEncryptionCompatibility"));
        assert_eq!(patch["status"]["authentication"], "mTLS");
        // Once stored, the same spec produces no write at all (no status churn).
        p.status = Some(serde_json::from_value(patch["status"].clone()).unwrap());
        assert!(status_patch(&p, &health, now).is_none());
    }
}
