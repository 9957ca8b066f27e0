//! What the three kube-runtime controllers share: the context (client, clock, event recorder),
//! the status write (a JSON merge diff guarded by resourceVersion), events, the rollout start and
//! follow path of the two kinds that roll pods, and starting them all.

use std::fmt::Debug;
use std::sync::Arc;
use std::time::Duration;

use k8s_openapi::apimachinery::pkg::apis::meta::v1::Condition;
use k8s_openapi::jiff::Timestamp;
use kube::api::{ListParams, Patch, PatchParams};
use kube::runtime::controller::{Action, Controller};
use kube::runtime::events::{Event, EventType, Recorder, Reporter};
use kube::runtime::reflector::ObjectRef;
use kube::runtime::watcher;
use kube::{Api, Client, Resource, ResourceExt};
use serde::de::DeserializeOwned;
use serde::Serialize;
use serde_json::{json, Value};
use tracing::{info, warn};

use crate::api::{CertificateRotation, ClusterSecurityPolicy, KmsKeyVaultMode, FIELD_MANAGER};
use crate::conditions::{self, reason, Health};
use crate::health::Readiness;
use crate::metrics::Metrics;

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
    pub metrics: Arc<Metrics>,
    pub readiness: Arc<Readiness>,
    /// Reconciles at once per controller (0: unbounded).
    pub concurrency: u16,
}

impl Context {
    pub fn new(client: Client, clock: Arc<dyn Clock>, metrics: Arc<Metrics>, readiness: Arc<Readiness>) -> Self {
        let reporter = Reporter { controller: FIELD_MANAGER.into(), instance: std::env::var("POD_NAME").ok() };
        Self {
            recorder: Recorder::new(client.clone(), reporter),
            client,
            clock,
            metrics,
            readiness,
            concurrency: CONCURRENT_RECONCILES,
        }
    }
}

/// Run one reconcile of `obj` and record it in the metrics: count, error, duration, and the
/// state of the object's newest operation as the reconcile saw it (every status write triggers
/// another reconcile, so this follows the object).
pub async fn measured<K, E>(
    metrics: Arc<Metrics>,
    obj: Arc<K>,
    reconcile: impl std::future::Future<Output = Result<Action, E>>,
) -> Result<Action, E>
where
    K: Reconciled,
{
    let started = std::time::Instant::now();
    let result = reconcile.await;
    metrics.reconciled(K::KIND, started.elapsed(), result.is_ok());
    let key = ObjectRef::from_obj(obj.as_ref()).to_string();
    metrics.newest_operation(K::KIND, &key, obj.newest_operation_state());
    result
}

/// Mark the controller's cache synced in `readiness` once its store holds the first full list.
fn report_cache_sync<K: Reconciled>(store: kube::runtime::reflector::Store<K>, readiness: Arc<Readiness>) {
    // Polled rather than awaited: kube-runtime's store readiness wakes only the last waiter,
    // and the controller itself waits on it too, so an await here could sleep forever.
    tokio::spawn(async move {
        use futures::FutureExt;
        loop {
            match store.wait_until_ready().now_or_never() {
                Some(Ok(())) => {
                    info!(kind = K::KIND, "cache synced");
                    readiness.cache_synced();
                    return;
                }
                Some(Err(_)) => return,
                None => tokio::time::sleep(Duration::from_millis(100)).await,
            }
        }
    });
}

/// One item of a controller's result stream.
pub type ReconcileResult<K, E1, E2> = Result<(ObjectRef<K>, Action), kube::runtime::controller::Error<E1, E2>>;

/// What each controller does with a reconcile's result in its stream: an object that is gone
/// (kube-runtime reports it as not found) leaves the metrics; a failing watch (the API server
/// away, a permission missing) is logged, since no reconcile would report it.
pub fn forget_deleted<K: Reconciled, E1, E2: std::fmt::Display>(
    metrics: Arc<Metrics>,
) -> impl FnMut(ReconcileResult<K, E1, E2>) -> futures::future::Ready<()> {
    move |result| {
        match result {
            Err(kube::runtime::controller::Error::ObjectNotFound(r)) => {
                metrics.newest_operation(K::KIND, &r.to_string(), None);
            }
            Err(kube::runtime::controller::Error::QueueError(e)) => {
                warn!(kind = K::KIND, error = %e, "watch failed; retrying");
            }
            _ => {}
        }
        futures::future::ready(())
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
/// names the resourceVersion it was computed from, so a decision made on a stale status fails
/// with a conflict (and is retried on fresh data) instead of overwriting newer status; a
/// conflict caused only by other fields (labels, annotations, spec) is written again.
/// Returns the object as stored after the write (None when nothing needed writing).
pub async fn write_status_diff<K, S>(api: &Api<K>, obj: &K, new: &S) -> Result<Option<K>, Error>
where
    K: Reconciled,
    S: Serialize,
{
    let status_of = |o: &K| serde_json::to_value(o).ok().and_then(|v| v.get("status").cloned()).unwrap_or(json!({}));
    let old = status_of(obj);
    let new = serde_json::to_value(new).map_err(|e| Error::Internal(e.to_string()))?;
    let Some(diff) = merge_diff(&old, &new) else { return Ok(None) };
    let name = obj.name_any();
    let err = |source| Error::WriteStatus { kind: K::KIND, name: name.clone(), source };
    let mut resource_version = obj.meta().resource_version.clone();
    for _ in 0..STATUS_WRITE_ATTEMPTS {
        let patch = json!({"metadata": {"resourceVersion": resource_version}, "status": diff});
        match api.patch_status(&name, &PatchParams::default(), &Patch::Merge(&patch)).await {
            Ok(stored) => return Ok(Some(stored)),
            // Someone else changed the object since it was read (a label, an annotation, the
            // spec). Status has one writer, this operator: while it is still what the decision
            // was made from, the write is still right — and it may record work already done (a
            // certificate issued, a rollout started) that must not be redone. Send it again on
            // the object as it is now; a changed spec is picked up by the next reconcile.
            Err(kube::Error::Api(s)) if s.code == 409 => {
                let current = api.get(&name).await.map_err(err)?;
                if status_of(&current) != old {
                    return Err(err(kube::Error::Api(s)));
                }
                resource_version = current.meta().resource_version.clone();
            }
            Err(source) => return Err(err(source)),
        }
    }
    Err(Error::Internal(format!(
        "writing status of {} {name}: the object kept changing under {STATUS_WRITE_ATTEMPTS} attempts",
        K::KIND
    )))
}

/// How often a status write is re-sent when only other fields of the object changed meanwhile.
const STATUS_WRITE_ATTEMPTS: usize = 10;

/// How every controller watches: from the API server's cache (`any_semantic`), and with a short
/// server-side timeout. After a kube-apiserver restart a watch opened while it was starting can
/// stay open without ever delivering an event; a watch that ends every 30 s (and resumes from the
/// last resourceVersion, losing nothing) bounds that to half a minute instead of kube-runtime's
/// default of almost five.
pub fn watch_config() -> watcher::Config {
    watcher::Config::default().any_semantic().timeout(WATCH_TIMEOUT_SECONDS)
}

/// How many objects each controller reconciles at once, by default (`--concurrent-reconciles`).
/// Unbounded, 300 objects changed together meant 300 reconciles at once, each holding its own
/// connection to the API server, and the connection pool's buffers kept the operator at
/// ~100 MiB (benches/scale.rs: 36 MiB with 8); bounded, the API server also sees no burst.
pub const CONCURRENT_RECONCILES: u16 = 8;

/// A kube-runtime controller for `api`, set up as every kind runs one: watches through
/// [`watch_config`], at most `ctx.concurrency` reconciles at once (0: unbounded), and its cache
/// sync reported to readiness.
pub fn new_controller<K: Reconciled>(api: Api<K>, ctx: &Context) -> Controller<K> {
    let config = kube::runtime::controller::Config::default().concurrency(ctx.concurrency);
    let controller = Controller::new(api, watch_config()).with_config(config).trigger_backoff(watch_backoff());
    report_cache_sync(controller.store(), ctx.readiness.clone());
    controller
}

/// Pause after a failed watch: 250 ms doubling to at most 5 s (jittered), back to 250 ms on the
/// next event. kube-runtime pauses *all* of a controller's watches (the kind's own, its workloads',
/// its Secrets') when any one fails, and its client-go default grows to 30 s and only resets
/// after two quiet minutes. After a kube-apiserver restart the watches fail one after another
/// (connection refused, 403 while its RBAC cache warms up, 410 for a resourceVersion from before),
/// and with that default the controller stayed deaf for minutes — an object created just before
/// the restart waited over four (found by tests/e2e_faults.rs). One retry per kind every 5 s
/// costs the API server nothing.
pub fn watch_backoff() -> kube::runtime::watcher::ExponentialBackoff {
    backon::ExponentialBuilder::default()
        .with_min_delay(Duration::from_millis(250))
        .with_max_delay(Duration::from_secs(5))
        .with_factor(2.0)
        .with_jitter()
        .without_max_times()
        .into()
}

/// Server-side timeout of every watch; see [`watch_config`].
pub const WATCH_TIMEOUT_SECONDS: u32 = 30;

/// The object as the API server holds it now (None: deleted). Reconciles decide on this rather
/// than on the watch cache: after an API server restart the cache can lag for a while, and
/// decisions on a stale copy would only end in resourceVersion conflicts (or, worse, redo work
/// whose record the cache does not show yet). One GET per reconcile; our objects are few.
pub async fn fresh<K: Reconciled>(api: &Api<K>, cached: Arc<K>) -> Result<Option<Arc<K>>, Error> {
    match api.get_opt(&cached.name_any()).await {
        Ok(Some(o)) => Ok(Some(Arc::new(o))),
        Ok(None) => Ok(None),
        Err(source) => Err(Error::Kube { what: format!("read {} {}", K::KIND, cached.name_any()), source }),
    }
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

/// Put `expected` back into the workload's pod template when it is not there while the operation
/// rolls: a status write lost to an API server restart or a conflict can leave the template with
/// an older value than the status records, and waiting alone would never finish. Server-side
/// apply of the same values is a no-op, so this is safe to repeat.
pub async fn reassert_template_annotations(
    ctx: &Context,
    namespace: &str,
    target: &crate::api::ClusterRef,
    workload: Option<&crate::rollout::Workload>,
    expected: &std::collections::BTreeMap<String, String>,
) -> Result<(), Error> {
    let Some(w) = workload else { return Ok(()) };
    if expected.iter().all(|(k, v)| w.template_annotations.get(k) == Some(v)) {
        return Ok(());
    }
    let wl = crate::rollout::describe(namespace, target);
    warn!(workload = %wl, "pod template lacks the operator's current annotations; applying them again");
    crate::rollout::set_template_annotations(&ctx.client, namespace, target, expected)
        .await
        .map_err(|source| Error::Kube { what: format!("patch pod template of {wl}"), source })
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
        .watches(Api::<StatefulSet>::all(client.clone()), watch_config(), move |o| {
            mapper(s1.clone(), WorkloadKind::StatefulSet, o.namespace(), o.name_any())
        })
        .watches(Api::<Deployment>::all(client.clone()), watch_config(), move |o| {
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
    let reference = obj.object_ref(&());
    let result = if reference.namespace.is_none() {
        publish_core_event(&ctx.client, reference, type_, reason, note).await
    } else {
        let event =
            Event { type_, reason: reason.into(), note: Some(note), action: "Reconcile".into(), secondary: None };
        ctx.recorder.publish(&event, &reference).await
    };
    if let Err(e) = result {
        warn!(reason, error = %e, "could not publish event");
    }
}

/// A core/v1 Event in `default` for a cluster-scoped object: older API servers (v1.20) refuse
/// events.k8s.io/v1 events whose namespace differs from the (empty) namespace of what they are
/// about, while core/v1 has always allowed `default`. `kubectl describe` finds both.
async fn publish_core_event(
    client: &Client,
    reference: k8s_openapi::api::core::v1::ObjectReference,
    type_: EventType,
    reason: &str,
    note: String,
) -> Result<(), kube::Error> {
    use k8s_openapi::api::core::v1::{Event as CoreEvent, EventSource};
    use k8s_openapi::apimachinery::pkg::apis::meta::v1::{ObjectMeta, Time};
    let now = Time(Timestamp::now());
    let event = CoreEvent {
        metadata: ObjectMeta {
            generate_name: Some(format!("{}.", reference.name.clone().unwrap_or_default())),
            namespace: Some("default".into()),
            ..Default::default()
        },
        involved_object: reference,
        type_: Some(match type_ {
            EventType::Normal => "Normal".into(),
            EventType::Warning => "Warning".into(),
        }),
        reason: Some(reason.into()),
        message: Some(note),
        source: Some(EventSource { component: Some(FIELD_MANAGER.into()), host: None }),
        first_timestamp: Some(now.clone()),
        last_timestamp: Some(now),
        count: Some(1),
        ..Default::default()
    };
    let api: Api<CoreEvent> = Api::namespaced(client.clone(), "default");
    api.create(&Default::default(), &event).await.map(|_| ())
}

/// What every kind tells the shared helpers about itself.
pub trait Reconciled:
    Resource<DynamicType = ()> + Clone + Debug + DeserializeOwned + Serialize + Send + Sync + 'static
{
    /// Kind name, for messages.
    const KIND: &'static str;
    /// Plural resource name, for messages.
    const PLURAL: &'static str;
    /// State of the newest operation (current, else the newest in the history), for metrics.
    fn newest_operation_state(&self) -> Option<crate::api::OperationState>;
}

macro_rules! newest_operation_state {
    () => {
        fn newest_operation_state(&self) -> Option<crate::api::OperationState> {
            let s = self.status.as_ref()?;
            s.current_operation.as_ref().or(s.operations.first()).map(|o| o.operation_state)
        }
    };
}

impl Reconciled for ClusterSecurityPolicy {
    const KIND: &'static str = "ClusterSecurityPolicy";
    const PLURAL: &'static str = "clustersecuritypolicies";
    newest_operation_state!();
}

impl Reconciled for CertificateRotation {
    const KIND: &'static str = "CertificateRotation";
    const PLURAL: &'static str = "certificaterotations";
    newest_operation_state!();
}

impl Reconciled for KmsKeyVaultMode {
    const KIND: &'static str = "KmsKeyVaultMode";
    const PLURAL: &'static str = "kmskeyvaultmodes";
    newest_operation_state!();
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

/// Run the three controllers until SIGTERM / Ctrl-C; `kms_providers` makes the cloud provider of
/// each KmsKeyVaultMode.
pub async fn run_all(
    ctx: Context,
    kms_providers: Arc<dyn crate::kms::reconcile::ProviderFactory>,
) -> Result<(), Error> {
    let client = ctx.client.clone();
    let csp: Api<ClusterSecurityPolicy> = Api::all(client.clone());
    let certrot: Api<CertificateRotation> = Api::all(client.clone());
    let kms: Api<KmsKeyVaultMode> = Api::all(client.clone());
    check_crd(&csp).await?;
    check_crd(&certrot).await?;
    check_crd(&kms).await?;
    let ctx = Arc::new(ctx);
    info!("starting controllers for ClusterSecurityPolicy, CertificateRotation, KmsKeyVaultMode");
    futures::join!(
        crate::policy::reconcile::run(client, ctx.clone()),
        crate::certs::reconcile::run(ctx.client.clone(), ctx.clone()),
        crate::kms::reconcile::run(Arc::new(crate::kms::reconcile::KmsContext { ctx, providers: kms_providers })),
    );
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

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
}
