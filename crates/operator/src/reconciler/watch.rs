//! How every controller watches and reports: the watch configuration and backoff, the cache-sync
//! readiness report, the per-reconcile metrics, and the workload watches of the kinds that
//! target a StatefulSet or Deployment.

use std::sync::Arc;
use std::time::Duration;

use cluster_security_api::{ClusterRef, OperationRecord, WorkloadKind};
use k8s_openapi::api::apps::v1::{Deployment, StatefulSet};
use k8s_openapi::api::core::v1::Secret;
use kube::core::PartialObjectMeta;
use kube::runtime::controller::{Action, Controller};
use kube::runtime::reflector::{ObjectRef, Store};
use kube::runtime::watcher;
use kube::{Api, ResourceExt};
use tracing::{info, warn};

use super::{object_key, Context, Reconcile};
use crate::health::Readiness;
use crate::metrics::Metrics;

/// Server-side timeout of every watch; see [`config`].
pub const WATCH_TIMEOUT_SECONDS: u32 = 30;

/// How every controller watches: from the API server's cache (`any_semantic`), and with a short
/// server-side timeout. After a kube-apiserver restart a watch opened while it was starting can
/// stay open without ever delivering an event; a watch that ends every 30 s (and resumes from the
/// last resourceVersion, losing nothing) bounds that to half a minute instead of kube-runtime's
/// default of almost five.
pub fn config() -> watcher::Config {
    watcher::Config::default().any_semantic().timeout(WATCH_TIMEOUT_SECONDS)
}

/// Pause after a failed watch: 250 ms doubling to at most 5 s (jittered), back to 250 ms on the
/// next event. kube-runtime pauses *all* of a controller's watches (the kind's own, its workloads',
/// its Secrets') when any one fails, and its client-go default grows to 30 s and only resets
/// after two quiet minutes. After a kube-apiserver restart the watches fail one after another
/// (connection refused, 403 while its RBAC cache warms up, 410 for a resourceVersion from before),
/// and with that default the controller stayed deaf for minutes — an object created just before
/// the restart waited over four (found by the fault trials). One retry per kind every 5 s costs
/// the API server nothing.
pub fn backoff() -> watcher::ExponentialBackoff {
    backon::ExponentialBuilder::default()
        .with_min_delay(Duration::from_millis(250))
        .with_max_delay(Duration::from_secs(5))
        .with_factor(2.0)
        .with_jitter()
        .without_max_times()
        .into()
}

/// A kube-runtime controller for `api`, set up as every kind runs one: watches through
/// [`config`], at most `ctx.concurrency` reconciles at once (0: unbounded), and its cache sync
/// reported to readiness.
pub fn new_controller<K: Reconcile>(api: Api<K>, ctx: &Context) -> Controller<K> {
    let settings = kube::runtime::controller::Config::default().concurrency(ctx.concurrency);
    let controller = Controller::new(api, config()).with_config(settings).trigger_backoff(backoff());
    report_cache_sync(controller.store(), ctx.readiness.clone());
    controller
}

/// Mark the controller's cache synced in `readiness` once its store holds the first full list.
fn report_cache_sync<K: Reconcile>(store: Store<K>, readiness: Arc<Readiness>) {
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

/// Run one reconcile of `obj` and record it in the metrics: count, error, duration, and the
/// state of the object's newest operation as the reconcile saw it (every status write triggers
/// another reconcile, so this follows the object).
pub async fn measured<K: Reconcile, E>(
    metrics: Arc<Metrics>,
    obj: Arc<K>,
    reconcile: impl std::future::Future<Output = Result<Action, E>>,
) -> Result<Action, E> {
    let started = std::time::Instant::now();
    let result = reconcile.await;
    metrics.reconciled(K::KIND, started.elapsed(), result.is_ok());
    let state = obj.status().and_then(|s| s.newest_operation_state());
    let key = object_key(obj.as_ref());
    metrics.newest_operation(K::KIND, &key, state);
    let stalled = obj.status().and_then(|s| {
        s.conditions()
            .iter()
            .find(|c| c.type_ == super::conditions::STALLED && c.status == "True")
            .map(|c| c.reason.clone())
    });
    metrics.stalled(K::KIND, &key, stalled.as_deref());
    result
}

/// One item of a controller's result stream.
type ReconcileResult<K, E1, E2> = Result<(ObjectRef<K>, Action), kube::runtime::controller::Error<E1, E2>>;

/// What each controller does with a reconcile's result in its stream: an object that is gone
/// (kube-runtime reports it as not found) leaves the metrics; a failing watch (the API server
/// away, a permission missing) is logged, since no reconcile would report it.
pub fn forget_deleted<K: Reconcile>(
    metrics: Arc<Metrics>,
) -> impl FnMut(ReconcileResult<K, super::Error, watcher::Error>) -> futures::future::Ready<()> {
    move |result| {
        match result {
            Err(kube::runtime::controller::Error::ObjectNotFound(r)) => {
                metrics.newest_operation(K::KIND, &r.to_string(), None);
                metrics.stalled(K::KIND, &r.to_string(), None);
            }
            Err(kube::runtime::controller::Error::QueueError(e)) => {
                warn!(kind = K::KIND, error = %e, "watch failed; retrying");
            }
            _ => {}
        }
        futures::future::ready(())
    }
}

/// A kind that targets a workload in its own namespace.
pub trait TargetsWorkload: Reconcile {
    fn cluster_ref(&self) -> &ClusterRef;
}

/// Watch `T` in each namespace of `ctx.scope` (one watch per namespace, or one for all) as a
/// trigger: a change reconciles the cached objects in the same namespace that `refers` says name
/// it. The watched objects themselves are not cached.
pub fn triggers<K, T>(
    controller: Controller<K>,
    ctx: &Context,
    wc: watcher::Config,
    refers: impl Fn(&K, &str) -> bool + Clone + Send + Sync + 'static,
) -> Controller<K>
where
    K: Reconcile,
    T: kube::Resource<Scope = k8s_openapi::NamespaceResourceScope>
        + Clone
        + serde::de::DeserializeOwned
        + std::fmt::Debug
        + Send
        + 'static,
    T::DynamicType: Default + std::fmt::Debug + Clone + Eq + std::hash::Hash,
{
    let mut controller = controller;
    for api in ctx.scope.apis::<T>(&ctx.client) {
        let (store, refers) = (controller.store(), refers.clone());
        controller = controller.watches(api, wc.clone(), move |changed: T| {
            let (ns, name) = (changed.namespace(), changed.name_any());
            store
                .state()
                .into_iter()
                .filter(|o| o.namespace() == ns && refers(o, &name))
                .map(|o| ObjectRef::from_obj(o.as_ref()))
                .collect::<Vec<_>>()
        });
    }
    controller
}

/// Trigger a reconcile of every object whose clusterRef names a changed StatefulSet or
/// Deployment. The workloads are watched as triggers only; the controller caches none of them.
pub fn workloads<K: TargetsWorkload>(controller: Controller<K>, ctx: &Context) -> Controller<K> {
    let targets =
        |kind: WorkloadKind| move |o: &K, name: &str| o.cluster_ref().kind == kind && o.cluster_ref().name == name;
    let controller = triggers::<K, StatefulSet>(controller, ctx, config(), targets(WorkloadKind::StatefulSet));
    triggers::<K, Deployment>(controller, ctx, config(), targets(WorkloadKind::Deployment))
}

/// Trigger a reconcile of every object that names a changed Secret (`named`: the Secret names an
/// object refers to in its namespace). Metadata only: the Secrets' contents are neither streamed
/// nor cached.
pub fn referenced_secrets<K: Reconcile>(
    controller: Controller<K>,
    ctx: &Context,
    named: fn(&K) -> Vec<String>,
) -> Controller<K> {
    triggers::<K, PartialObjectMeta<Secret>>(controller, ctx, config(), move |o, name| {
        named(o).iter().any(|n| n == name)
    })
}
