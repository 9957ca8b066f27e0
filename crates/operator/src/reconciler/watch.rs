//! How every controller watches and reports: the watch configuration and backoff, the cache-sync
//! readiness report, the per-reconcile metrics, and the workload watches of the kinds that
//! target a StatefulSet or Deployment.

use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::time::Duration;

use cluster_security_api::{ClusterRef, OperationRecord, WorkloadKind};
use k8s_openapi::api::apps::v1::{Deployment, StatefulSet};
use k8s_openapi::api::core::v1::Secret;
use kube::core::DeserializeGuard;
use kube::core::PartialObjectMeta;
use kube::runtime::controller::{Action, Controller};
use kube::runtime::reflector::{self, ObjectRef, Store};
use kube::runtime::watcher::{self, watcher};
use kube::{Api, ResourceExt};
use tracing::{info, warn};

use super::invalid::Invalid;
use super::{Context, Reconcile};
use crate::health::Readiness;
use crate::metrics::{Metrics, ObjectHealth};
use crate::task::AbortOnDrop;

/// Server-side timeout of every watch; see [`config`].
pub(crate) const WATCH_TIMEOUT_SECONDS: u32 = 30;

/// How every controller watches: from the API server's cache (`any_semantic`), and with a short
/// server-side timeout. After a kube-apiserver restart a watch opened while it was starting can
/// stay open without ever delivering an event; a watch that ends every 30 s (and resumes from the
/// last resourceVersion, losing nothing) bounds that to half a minute instead of kube-runtime's
/// default of almost five.
pub(crate) fn config() -> watcher::Config {
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
pub(crate) fn backoff() -> watcher::ExponentialBackoff {
    backon::ExponentialBuilder::default()
        .with_min_delay(Duration::from_millis(250))
        .with_max_delay(Duration::from_secs(5))
        .with_factor(2.0)
        .with_jitter()
        .without_max_times()
        .into()
}

/// A kube-runtime controller for the kind `K` everywhere, set up as every kind runs one: its
/// objects watched through [`config`] and [`DeserializeGuard`] (an object that does not decode
/// is reported by [`invalid`](super::invalid) and kept out of the cache, instead of failing the
/// whole watch), cached [`slim`], at most `ctx.concurrency` reconciles at once (0: unbounded),
/// and its cache sync reported to readiness. Also: the objects of `K` that do not decode now.
pub(crate) fn new_controller<K: Reconcile>(ctx: &Arc<Context>) -> (Controller<K>, Invalid) {
    use futures::StreamExt as _;
    use kube::runtime::WatchStreamExt as _;
    let invalid = Invalid::default();
    let (reader, writer) = reflector::store::<K>();
    let sort = {
        let (ctx, invalid, cached) = (ctx.clone(), invalid.clone(), reader.clone());
        move |event| futures::future::ready(decoded(event, &ctx, &invalid, &cached))
    };
    let own = watcher(Api::<DeserializeGuard<K>>::all(ctx.client.clone()), config())
        .filter_map(sort)
        .modify(slim)
        .reflect(writer)
        .applied_objects();
    let settings = kube::runtime::controller::Config::default().concurrency(ctx.concurrency);
    let controller = Controller::for_stream(own, reader).with_config(settings).trigger_backoff(backoff());
    report_cache_sync(controller.store(), ctx.readiness.clone());
    (controller, invalid)
}

/// One event of the guarded watch as the cache and the controller take it: objects that decode
/// pass; one that does not is reported (in a task of its own) and left out, and a copy of it
/// that decoded before leaves the cache, since it is no longer what the API server holds.
fn decoded<K: Reconcile>(
    event: Result<watcher::Event<DeserializeGuard<K>>, watcher::Error>,
    ctx: &Arc<Context>,
    invalid: &Invalid,
    cached: &Store<K>,
) -> Option<Result<watcher::Event<K>, watcher::Error>> {
    use watcher::Event;
    let event = match event {
        Ok(event) => event,
        Err(e) => return Some(Err(e)),
    };
    let decoded = match event {
        Event::Init => Event::Init,
        Event::InitDone => Event::InitDone,
        Event::Apply(DeserializeGuard(Ok(obj))) => {
            invalid.clear(obj.meta());
            Event::Apply(obj)
        }
        Event::InitApply(DeserializeGuard(Ok(obj))) => {
            invalid.clear(obj.meta());
            Event::InitApply(obj)
        }
        Event::Delete(DeserializeGuard(Ok(obj))) => {
            invalid.clear(obj.meta());
            Event::Delete(obj)
        }
        Event::Delete(DeserializeGuard(Err(bad))) => {
            invalid.clear(&bad.metadata);
            let (namespace, name) =
                (bad.metadata.namespace.as_deref(), bad.metadata.name.as_deref().unwrap_or_default());
            ctx.metrics.object(super::kind_of::<K>(), namespace, name, None);
            Event::Delete(cached_copy(cached, &bad.metadata)?)
        }
        Event::Apply(DeserializeGuard(Err(bad))) => {
            let earlier = cached_copy(cached, &bad.metadata);
            tokio::spawn(super::invalid::report::<K>(ctx.clone(), invalid.clone(), bad));
            Event::Delete(earlier?)
        }
        Event::InitApply(DeserializeGuard(Err(bad))) => {
            // Left out of the relist, it leaves the cache when the relist is swapped in.
            tokio::spawn(super::invalid::report::<K>(ctx.clone(), invalid.clone(), bad));
            return None;
        }
    };
    Some(Ok(decoded))
}

/// The cache's copy of the object `meta` names, if it holds one.
fn cached_copy<K: Reconcile>(
    cached: &Store<K>,
    meta: &k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta,
) -> Option<K> {
    let at = ObjectRef::new(meta.name.as_deref().unwrap_or_default());
    let at = match &meta.namespace {
        Some(ns) => at.within(ns),
        None => at,
    };
    cached.get(&at).map(|obj| obj.as_ref().clone())
}

/// What the controllers' caches keep of an object: all but its managedFields and kubectl's
/// last-applied copy of the spec, the largest parts of an object that nothing cached reads (a
/// reconcile reads its object fresh; the cache serves triggers, peers and metrics).
pub(crate) fn slim<K: kube::Resource>(obj: &mut K) {
    obj.meta_mut().managed_fields = None;
    if let Some(annotations) = obj.meta_mut().annotations.as_mut() {
        annotations.remove(LAST_APPLIED_ANNOTATION);
    }
}

/// kubectl's copy of what it applied.
const LAST_APPLIED_ANNOTATION: &str = "kubectl.kubernetes.io/last-applied-configuration";

/// Mark the controller's cache synced in `readiness` once its store holds the first full list.
fn report_cache_sync<K: Reconcile>(store: Store<K>, readiness: Arc<Readiness>) {
    // Polled rather than awaited: kube-runtime's store readiness wakes only the last waiter,
    // and the controller itself waits on it too, so an await here could sleep forever.
    tokio::spawn(async move {
        use futures::FutureExt;
        loop {
            match store.wait_until_ready().now_or_never() {
                Some(Ok(())) => {
                    info!(kind = super::kind_of::<K>(), "cache synced");
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
pub(crate) async fn measured<K: Reconcile>(
    metrics: Arc<Metrics>,
    obj: Arc<K>,
    reconcile: impl std::future::Future<Output = Result<Action, super::Error>>,
) -> Result<Action, super::Error> {
    let started = std::time::Instant::now();
    let result = reconcile.await;
    metrics.reconciled(super::kind_of::<K>(), started.elapsed(), result.as_ref().err().map(super::Error::category));
    let health = obj.status().map(|s| {
        let is_true = |type_: &str| s.conditions().iter().find(|c| c.type_ == type_ && c.status == "True");
        ObjectHealth {
            newest: s.newest_operation_state(),
            stalled: is_true(super::conditions::STALLED).map(|c| ObjectHealth::stalled_reason(&c.reason)),
            ready: is_true(super::conditions::READY).is_some(),
        }
    });
    metrics.object(
        super::kind_of::<K>(),
        obj.namespace().as_deref(),
        &obj.name_any(),
        Some(health.unwrap_or_default()),
    );
    result
}

/// How often the metrics let go of objects the controller's cache no longer holds.
const FORGET_GONE_EVERY: Duration = Duration::from_secs(10);

/// Drop the series of objects gone from `store` (the controller's cache), every
/// [`FORGET_GONE_EVERY`]: kube-runtime reconciles no object after its deletion (the last round is
/// the one that removes our finalizer, and an object deleted while the operator was away has
/// none), so without this an object's series would outlive it. Objects that do not decode are
/// not in the cache but stay until they are fixed or deleted. The cache swaps a re-list in whole,
/// so a watch restart does not empty it meanwhile.
pub(crate) fn forget_gone<K: Reconcile>(store: Store<K>, invalid: Invalid, metrics: Arc<Metrics>) -> AbortOnDrop {
    AbortOnDrop(tokio::spawn(async move {
        loop {
            tokio::time::sleep(FORGET_GONE_EVERY).await;
            metrics.forget_gone(super::kind_of::<K>(), |namespace, name| {
                let at = ObjectRef::new(name);
                store.get(&namespace.map_or(at.clone(), |ns| at.within(ns))).is_some() || invalid.holds(namespace, name)
            });
        }
    }))
}

/// One item of a controller's result stream.
type ReconcileResult<K, E1, E2> = Result<(ObjectRef<K>, Action), kube::runtime::controller::Error<E1, E2>>;

/// What each controller does with a reconcile's result in its stream: an object that is gone
/// (kube-runtime reports it as not found) leaves the metrics; a failing watch (the API server
/// away, a permission missing) is logged, since no reconcile would report it.
pub(crate) fn forget_deleted<K: Reconcile>(
    metrics: Arc<Metrics>,
) -> impl FnMut(ReconcileResult<K, super::Error, watcher::Error>) -> futures::future::Ready<()> {
    move |result| {
        match result {
            Err(kube::runtime::controller::Error::ObjectNotFound(r)) => {
                metrics.object(super::kind_of::<K>(), r.namespace.as_deref(), &r.name, None);
            }
            Err(kube::runtime::controller::Error::QueueError(e)) => {
                warn!(kind = super::kind_of::<K>(), error = %e, "watch failed; retrying");
            }
            _ => {}
        }
        futures::future::ready(())
    }
}

/// A kind that targets a workload in its own namespace.
pub(crate) trait TargetsWorkload: Reconcile {
    fn cluster_ref(&self) -> &ClusterRef;
}

/// Watch `T` in each namespace of `ctx.scope` (one watch per namespace, or one for all) as a
/// trigger: a change reconciles the cached objects in the same namespace that `refers` says name
/// it. The watched objects themselves are not cached.
pub(crate) fn triggers<K, T>(
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
            naming(&store, &changed.namespace().unwrap_or_default(), &changed.name_any(), &refers)
        });
    }
    controller
}

/// The cached objects in namespace `ns` that `refers` says name `name`.
fn naming<K: Reconcile>(
    store: &Store<K>,
    ns: &str,
    name: &str,
    refers: impl Fn(&K, &str) -> bool,
) -> Vec<ObjectRef<K>> {
    store
        .state()
        .into_iter()
        .filter(|o| o.namespace().as_deref() == Some(ns) && refers(o, name))
        .map(|o| ObjectRef::from_obj(o.as_ref()))
        .collect()
}

/// Trigger a reconcile of every object whose clusterRef names a changed StatefulSet or
/// Deployment. The workloads are watched as triggers only; the controller caches none of them.
pub(crate) fn workloads<K: TargetsWorkload>(controller: Controller<K>, ctx: &Context) -> Controller<K> {
    let targets =
        |kind: WorkloadKind| move |o: &K, name: &str| o.cluster_ref().kind == kind && o.cluster_ref().name == name;
    let controller = triggers::<K, StatefulSet>(controller, ctx, config(), targets(WorkloadKind::StatefulSet));
    triggers::<K, Deployment>(controller, ctx, config(), targets(WorkloadKind::Deployment))
}

/// How often the Secrets the cached objects name are compared with the watches running.
const NAMED_SECRETS_RESYNC: Duration = Duration::from_secs(1);

/// Up to this many named Secrets, each has a watch of its own; beyond, one watch per watched
/// namespace (or one for all) serves them all, so the number of API-server connections stays
/// bounded whatever the number of objects.
pub(crate) const MAX_SECRET_WATCHES: usize = 32;

/// Trigger a reconcile of every object that names a changed Secret (`named`: the Secret names an
/// object refers to in its namespace). Metadata only. One watch per named Secret (field selector
/// `metadata.name`), started within a second of an object naming it and stopped when none does:
/// a cluster with 100,000 Secrets, or a re-encryption rewriting each of them twice, costs these
/// controllers nothing, where a watch of all Secrets cost a full list at every start and an
/// event per rewrite. Past [`MAX_SECRET_WATCHES`] named Secrets, one watch of the whole scope.
pub(crate) fn referenced_secrets<K: Reconcile>(
    controller: Controller<K>,
    ctx: &Context,
    named: fn(&K) -> Vec<String>,
) -> Controller<K> {
    let (tx, rx) = futures::channel::mpsc::channel(64);
    let (store, client, scope) = (controller.store(), ctx.client.clone(), ctx.scope.clone());
    tokio::spawn(follow_named_secrets(store, client, scope, named, tx));
    controller.reconcile_on(rx)
}

/// What one watch of Secrets covers.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
enum SecretWatch {
    /// One Secret: namespace, name.
    One(String, String),
    /// Every Secret of a namespace, or of all (`None`).
    All(Option<String>),
}

/// The watches that serve the Secrets `named` (namespace, name): one each, or — past
/// [`MAX_SECRET_WATCHES`] — one per namespace of `scope`.
fn secret_watches(named: HashSet<(String, String)>, scope: &super::Scope) -> HashSet<SecretWatch> {
    if named.len() <= MAX_SECRET_WATCHES {
        return named.into_iter().map(|(ns, name)| SecretWatch::One(ns, name)).collect();
    }
    match scope.watched() {
        None => HashSet::from([SecretWatch::All(None)]),
        Some(list) => list.iter().map(|ns| SecretWatch::All(Some(ns.clone()))).collect(),
    }
}

/// Keep the watches [`secret_watches`] asks for running; stop when the controller is gone (its
/// end of `tx` closed).
async fn follow_named_secrets<K: Reconcile>(
    store: Store<K>,
    client: kube::Client,
    scope: super::Scope,
    named: fn(&K) -> Vec<String>,
    tx: futures::channel::mpsc::Sender<ObjectRef<K>>,
) {
    let mut running: HashMap<SecretWatch, AbortOnDrop> = HashMap::new();
    let mut tick = tokio::time::interval(NAMED_SECRETS_RESYNC);
    while !tx.is_closed() {
        tick.tick().await;
        let wanted = store
            .state()
            .iter()
            .filter_map(|o| o.namespace().filter(|ns| scope.covers(Some(ns))).map(|ns| (ns, named(o))))
            .flat_map(|(ns, names)| names.into_iter().map(move |name| (ns.clone(), name)))
            .collect();
        let wanted = secret_watches(wanted, &scope);
        running.retain(|w, _| wanted.contains(w)); // dropping a handle stops its watch
        for w in wanted {
            if let std::collections::hash_map::Entry::Vacant(slot) = running.entry(w) {
                let task = watch_secrets(store.clone(), client.clone(), slot.key().clone(), named, tx.clone());
                slot.insert(AbortOnDrop(tokio::spawn(task)));
            }
        }
    }
}

/// Run one watch of Secrets' metadata and send every object naming a changed one. The end of a
/// (re)list of a single Secret counts as a change: it was read again, and may have changed or
/// gone while no watch ran (between an object's reconcile and this watch's start, say).
async fn watch_secrets<K: Reconcile>(
    store: Store<K>,
    client: kube::Client,
    what: SecretWatch,
    named: fn(&K) -> Vec<String>,
    mut tx: futures::channel::mpsc::Sender<ObjectRef<K>>,
) {
    use futures::{SinkExt, StreamExt};
    use kube::runtime::WatchStreamExt;
    let (api, wc): (Api<PartialObjectMeta<Secret>>, _) = match &what {
        SecretWatch::One(ns, name) => (Api::namespaced(client, ns), config().fields(&format!("metadata.name={name}"))),
        SecretWatch::All(Some(ns)) => (Api::namespaced(client, ns), config()),
        SecretWatch::All(None) => (Api::all(client), config()),
    };
    let mut events = std::pin::pin!(watcher(api, wc).backoff(backoff()));
    while let Some(event) = events.next().await {
        let changed = match (event, &what) {
            (Ok(watcher::Event::InitApply(s) | watcher::Event::Apply(s) | watcher::Event::Delete(s)), _) => {
                (s.namespace().unwrap_or_default(), s.name_any())
            }
            (Ok(watcher::Event::InitDone), SecretWatch::One(ns, name)) => (ns.clone(), name.clone()),
            (Ok(_), _) => continue,
            (Err(e), _) => {
                warn!(watch = ?what, error = %e, "watch of referenced Secrets failed; retrying");
                continue;
            }
        };
        for object in naming(&store, &changed.0, &changed.1, |o, name| named(o).iter().any(|n| n == name)) {
            if tx.send(object).await.is_err() {
                return;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_cache_keeps_no_managed_fields_nor_kubectls_copy_but_everything_else() {
        let mut cm: k8s_openapi::api::core::v1::ConfigMap = serde_json::from_value(serde_json::json!({
            "metadata": {"name": "x", "namespace": "ns",
                "annotations": {LAST_APPLIED_ANNOTATION: "{\"big\": true}", "keep": "me"},
                "managedFields": [{"manager": "kubectl", "operation": "Apply", "fieldsType": "FieldsV1", "fieldsV1": {"f:data": {}}}]},
            "data": {"k": "v"}
        }))
        .unwrap();
        slim(&mut cm);
        assert!(cm.metadata.managed_fields.is_none());
        let annotations = cm.metadata.annotations.clone().unwrap();
        assert_eq!(annotations.keys().collect::<Vec<_>>(), ["keep"]);
        assert_eq!(cm.data.unwrap()["k"], "v");
    }
    use crate::reconciler::Scope;

    fn named(n: usize) -> HashSet<(String, String)> {
        (0..n).map(|i| (format!("ns{}", i % 3), format!("s{i}"))).collect()
    }

    #[test]
    fn a_watch_per_named_secret_up_to_the_limit_then_one_per_watched_namespace() {
        let one_each = secret_watches(named(MAX_SECRET_WATCHES), &Scope::cluster());
        assert_eq!(one_each.len(), MAX_SECRET_WATCHES);
        assert!(one_each.contains(&SecretWatch::One("ns1".into(), "s1".into())));

        let all = secret_watches(named(MAX_SECRET_WATCHES + 1), &Scope::cluster());
        assert_eq!(all, HashSet::from([SecretWatch::All(None)]));

        let scoped = Scope::namespaces(&["a".into(), "b".into()]);
        let per_namespace = secret_watches(named(MAX_SECRET_WATCHES + 1), &scoped);
        let expected = ["a", "b"].map(|ns| SecretWatch::All(Some(ns.into())));
        assert_eq!(per_namespace, HashSet::from(expected));
        assert!(secret_watches(HashSet::new(), &scoped).is_empty());
    }
}
