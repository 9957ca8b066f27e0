//! The reconciler kit: what every kind's controller shares, written once. It never names a kind.
//!
//! - [`Reconcile`]: what a kind tells the kit (its name, rules, and `advance`, one step of its
//!   operation). The kit owns the rest of a reconcile: a fresh read, the clock, refusing an
//!   invalid spec, conditions, one guarded status write, events and the requeue ([`round`]).
//! - [`rolling`]: the one operation driver (PENDING → record → prepare → roll → follow →
//!   complete) of the kinds that roll a workload's pods.
//! - [`status`], [`events`], [`conditions`], [`operation`], [`workload`], [`wiring`], [`watch`],
//!   [`finalizer`], [`derived`], [`invalid`] (objects that do not decode):
//!   the pieces.
//!
//! What this module may touch: the kind's own object and its status, Events, and the pod-template
//! annotations, volumes and volume mounts the operator adds to the workload a kind targets. Everything else is the kinds'.

#[cfg(test)]
mod api_tests;
pub(crate) mod caches;
pub(crate) mod conditions;
pub(crate) mod derived;
mod error;
pub(crate) mod events;
mod finalizer;
pub(crate) mod invalid;
pub(crate) mod operation;
pub(crate) mod rolling;
pub(crate) mod round;
pub(crate) mod status;
pub(crate) mod verify;
pub(crate) mod watch;
pub(crate) mod wiring;
pub(crate) mod workload;

use std::fmt::Debug;
use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use cluster_security_api::validate::Violations;
use cluster_security_api::{Operated, OperationRecord, RECONCILE_ANNOTATION};
use k8s_openapi::jiff::Timestamp;
use kube::api::ListParams;
use kube::runtime::controller::{Action, Controller};
use kube::{Api, Client, Resource, ResourceExt};
use serde::de::DeserializeOwned;
use serde::Serialize;
use tracing::{info, warn};

pub(crate) use self::conditions::Health;
pub(crate) use self::error::{Category, Error, Named, Noted};
pub(crate) use self::round::Round;
use crate::health::Readiness;
use crate::metrics::Metrics;

/// Where time comes from; tests pass a fixed clock.
pub(crate) trait Clock: Send + Sync {
    fn now(&self) -> Timestamp;
}

/// The wall clock.
pub(crate) struct SystemClock;

impl Clock for SystemClock {
    fn now(&self) -> Timestamp {
        Timestamp::now()
    }
}

/// Shared by every reconciler.
pub(crate) struct Context {
    pub client: Client,
    pub clock: Arc<dyn Clock>,
    pub recorder: events::Recorder,
    pub metrics: Arc<Metrics>,
    pub readiness: Arc<Readiness>,
    /// Reconciles at once per controller (0: unbounded).
    pub concurrency: u16,
    /// The namespaces whose workloads, Secrets and ConfigMaps the operator manages.
    pub scope: Scope,
    /// The operator's own namespace (`--namespace`): where the events of cluster-scoped objects
    /// go, read by those who run the operator rather than by every tenant.
    pub namespace: String,
    /// The running controllers' caches, for a kind that reads another's objects.
    pub caches: caches::Caches,
}

/// Which namespaces the operator manages (`--watch-namespaces`): all, or a list. Objects of our
/// kinds are watched everywhere (so one in another namespace gets a status saying why nothing
/// happens); workloads, Secrets and ConfigMaps only where the operator manages them, which is
/// all its RBAC grants in namespace-scoped installs.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub(crate) struct Scope {
    namespaces: Option<Vec<String>>,
}

impl Scope {
    /// Every namespace.
    pub(crate) fn cluster() -> Self {
        Self { namespaces: None }
    }

    /// These namespaces only; an empty list means every namespace.
    pub(crate) fn namespaces(list: &[String]) -> Self {
        let list: Vec<String> = list.iter().filter(|n| !n.is_empty()).cloned().collect();
        Self { namespaces: (!list.is_empty()).then_some(list) }
    }

    /// Whether an object in `ns` is managed (cluster-scoped objects always are).
    pub(crate) fn covers(&self, ns: Option<&str>) -> bool {
        match (&self.namespaces, ns) {
            (Some(list), Some(ns)) => list.iter().any(|n| n == ns),
            _ => true,
        }
    }

    /// The namespaces watched, or `None` for all.
    pub(crate) fn watched(&self) -> Option<&[String]> {
        self.namespaces.as_deref()
    }

    /// One API per watched namespace (or one for all), to watch `T` in.
    pub(crate) fn apis<T>(&self, client: &Client) -> Vec<Api<T>>
    where
        T: Resource<Scope = k8s_openapi::NamespaceResourceScope>,
        T::DynamicType: Default,
    {
        match &self.namespaces {
            None => vec![Api::all(client.clone())],
            Some(list) => list.iter().map(|ns| Api::namespaced(client.clone(), ns)).collect(),
        }
    }

    /// `--watch-namespaces` as a user wrote it, for messages.
    pub(crate) fn describe(&self) -> String {
        self.namespaces.as_ref().map(|l| l.join(",")).unwrap_or_else(|| "(all)".into())
    }
}

/// What the command line decides in a [`Context`]; the defaults are the flags' defaults.
#[derive(Clone, Debug)]
pub(crate) struct Settings {
    /// `--concurrent-reconciles`.
    pub concurrency: u16,
    /// `--watch-namespaces`.
    pub scope: Scope,
    /// `--namespace`.
    pub namespace: String,
    /// `--pod-name`: the instance named in the Events this replica publishes.
    pub instance: Option<String>,
}

impl Default for Settings {
    fn default() -> Self {
        Self {
            concurrency: CONCURRENT_RECONCILES,
            scope: Scope::cluster(),
            namespace: DEFAULT_NAMESPACE.into(),
            instance: None,
        }
    }
}

impl Context {
    /// The context, whole: nothing in it is read from the environment or set afterwards.
    pub(crate) fn new(
        client: Client,
        clock: Arc<dyn Clock>,
        metrics: Arc<Metrics>,
        readiness: Arc<Readiness>,
        settings: Settings,
    ) -> Self {
        let Settings { concurrency, scope, namespace, instance } = settings;
        Self {
            recorder: events::Recorder::new(client.clone(), instance),
            client,
            clock,
            metrics,
            readiness,
            concurrency,
            scope,
            namespace,
            caches: caches::Caches::default(),
        }
    }
}

/// The operator's namespace unless told otherwise (`--namespace`'s default).
pub(crate) const DEFAULT_NAMESPACE: &str = "cluster-security-operator";

/// How many objects each controller reconciles at once, by default (`--concurrent-reconciles`).
/// Unbounded, 300 objects changed together meant 300 reconciles at once, each holding its own
/// connection to the API server, and the connection pool's buffers kept the operator at
/// ~100 MiB (benches/scale.rs: 36 MiB with 8); bounded, the API server also sees no burst.
pub const CONCURRENT_RECONCILES: u16 = 8;

/// What one round decided to report: the health for the conditions and when to look again
/// (None: at the next change), and whether it found that a deleted object may go.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Outcome {
    pub health: Health,
    pub requeue: Option<Duration>,
    /// The round has positive evidence that nothing holds the object back once it is deleted
    /// (see [`Reconcile::may_go`]): set by [`Outcome::releasing`], never read from a reason.
    pub released: bool,
}

impl Outcome {
    pub(crate) fn new(health: Health, requeue: Option<Duration>) -> Self {
        Self { health, requeue, released: false }
    }

    /// The same, and a deleted object may go.
    pub(crate) fn releasing(self) -> Self {
        Self { released: true, ..self }
    }
}

/// What a kind tells the kit. The kit runs the controller, reads the object fresh, refuses an
/// invalid spec (unless an operation is already rolling), calls [`Reconcile::advance`], then
/// writes conditions and status once and publishes the round's events.
pub(crate) trait Reconcile:
    Resource<DynamicType = ()> + Operated + Clone + Debug + DeserializeOwned + Serialize + Send + Sync + 'static
{
    /// What the kind needs besides the [`Context`] (a cloud provider factory; `()` for most).
    type Deps: Send + Sync + 'static;

    /// The API of the object's kind where `obj` lives (its namespace, or cluster-wide).
    fn api(client: Client, obj: &Self) -> Api<Self>;

    /// The contract's rules for this spec, given what the status records; Err: the violation.
    fn validate(&self, status: &Self::Status, deps: &Self::Deps) -> Result<(), Violations>;

    /// Whether an operation is under way that an invalid spec must not interrupt: by default,
    /// one past PENDING (a PENDING operation still takes the newest spec).
    fn in_flight(status: &Self::Status) -> bool {
        status.current_operation().is_some_and(|o| o.operation_state != cluster_security_api::OperationState::Pending)
    }

    /// Carry the object's operation one step further; mutate `round.status`, push events.
    fn advance(
        &self,
        round: &mut Round<Self>,
        ctx: &Context,
        deps: &Self::Deps,
    ) -> impl Future<Output = Result<Outcome, Error>> + Send;

    /// Whether `clustersecurity.io/reconcile: paused` may stop this object now (a KMS switch with
    /// KMS off carries on until KMS is back on: a pause must not leave a cluster worse off).
    fn may_pause(_status: &Self::Status) -> bool {
        true
    }

    /// A finalizer that holds the object's deletion until [`Reconcile::may_go`] (None: the kind
    /// lets its objects go at once). While the object is being deleted, rounds go on as usual.
    /// Removed whenever the object may go, even when this object no longer
    /// [wants it](Reconcile::wants_finalizer).
    const FINALIZER: Option<&'static str> = None;

    /// Whether this object gets [`Reconcile::FINALIZER`] (when the kind has one).
    fn wants_finalizer(&self) -> bool {
        true
    }

    /// Whether a deleted object may go now, after a round that ended in `outcome`.
    fn may_go(&self, _status: &Self::Status, _outcome: &Outcome) -> bool {
        true
    }

    /// Watches besides the kind's own objects (workloads, referenced Secrets), in the
    /// namespaces of `ctx.scope`.
    fn watches(controller: Controller<Self>, _ctx: &Context) -> Controller<Self> {
        controller
    }
}

/// The name of kind `K` (`Resource::kind`), for messages, logs and metric labels.
pub(crate) fn kind_of<K: Resource<DynamicType = ()>>() -> &'static str {
    match K::kind(&()) {
        std::borrow::Cow::Borrowed(kind) => kind,
        // The CustomResource derive answers a literal; a kind that built its name would land here.
        std::borrow::Cow::Owned(_) => "Unknown",
    }
}

/// The health for a spec the rules refuse: nothing new starts until it is fixed.
pub(crate) fn invalid_spec(violation: &Violations) -> Outcome {
    Outcome::new(
        Health::Stalled {
            reason: conditions::reason::INVALID_SPEC,
            message: format!("{violation}. Nothing was applied; fix the spec and apply it again."),
        },
        None,
    )
}

/// The health of an object in a namespace the operator does not manage: nothing is read or
/// written there (its RBAC may not even allow it), and the status says how to change that.
fn not_watched(ns: &str, scope: &Scope) -> Outcome {
    let message = format!(
        "namespace {ns} is not one the operator manages (--watch-namespaces={}, chart value watchNamespaces); \
         nothing was read or changed there. Ask the operator's administrators to add {ns}, or create this \
         resource in a managed namespace.",
        scope.describe()
    );
    // Nothing the operator can check there: a deleted object goes.
    Outcome::new(Health::Stalled { reason: conditions::reason::NAMESPACE_NOT_WATCHED, message }, None).releasing()
}

/// Whether the object carries `clustersecurity.io/reconcile: paused`.
fn paused<K: Resource>(obj: &K) -> bool {
    obj.meta().annotations.as_ref().and_then(|a| a.get(RECONCILE_ANNOTATION)).is_some_and(|v| v == "paused")
}

/// The health of a paused object: nothing is changed until the annotation goes.
fn paused_outcome() -> Outcome {
    let message = format!(
        "{RECONCILE_ANNOTATION}: paused — the operator changes nothing for this resource (an operation in progress \
         waits where it is) until the annotation is removed."
    );
    Outcome::new(Health::NotReady { reason: conditions::reason::PAUSED, message }, None)
}

/// One reconcile of `cached`, in a span that puts the object (and its operation, once one is
/// recorded) on every log line it writes.
async fn reconcile<K: Reconcile>(cached: Arc<K>, shared: Arc<(Arc<Context>, Arc<K::Deps>)>) -> Result<Action, Error> {
    use tracing::Instrument as _;
    let span = tracing::info_span!(
        "reconcile",
        kind = kind_of::<K>(),
        namespace = %cached.namespace().unwrap_or_default(),
        name = %cached.name_any(),
        operation_id = tracing::field::Empty,
    );
    if let Some(op) = cached.status().and_then(|s| s.current_operation()) {
        span.record("operation_id", op.operation_id.as_str());
    }
    reconcile_once(cached, shared).instrument(span).await
}

/// One reconcile of `cached`: fresh read, validate, advance, conditions, status, events.
async fn reconcile_once<K: Reconcile>(
    cached: Arc<K>,
    shared: Arc<(Arc<Context>, Arc<K::Deps>)>,
) -> Result<Action, Error> {
    let (ctx, deps) = (&shared.0, &shared.1);
    let api = K::api(ctx.client.clone(), cached.as_ref());
    let Some(obj) = fresh(&api, cached.as_ref()).await? else { return Ok(Action::await_change()) };
    let obj = match K::FINALIZER {
        Some(f)
            if obj.meta().deletion_timestamp.is_none()
                && obj.wants_finalizer()
                && ctx.scope.covers(obj.namespace().as_deref())
                && !obj.finalizers().iter().any(|x| x == f) =>
        {
            finalizer::add(&api, obj.as_ref(), f).await?
        }
        _ => obj,
    };
    let mut round = Round::new(obj.clone(), ctx.clock.now(), round::Writer::api(api.clone(), ctx.client.clone(), obj));
    let old_conditions = round.status.conditions().to_vec();
    let ns = round.obj.namespace();
    let outcome = match round.obj.validate(&round.status, deps) {
        _ if !ctx.scope.covers(ns.as_deref()) => not_watched(ns.as_deref().unwrap_or_default(), &ctx.scope),
        _ if paused(round.obj.as_ref()) && K::may_pause(&round.status) => paused_outcome(),
        Err(v) if !K::in_flight(&round.status) => invalid_spec(&v),
        _ => {
            let obj = round.obj.clone();
            match obj.advance(&mut round, ctx, deps).await {
                // Checked right before the write: what was done until then is recorded.
                Err(Error::NameConflict { message, .. }) => Outcome::new(
                    Health::Stalled { reason: conditions::reason::NAME_CONFLICT, message },
                    Some(RETRY_NAME_CONFLICT),
                ),
                other => other?,
            }
        }
    };
    round.conclude(&outcome.health);
    round.checkpoint().await?;
    let obj = round.obj.clone();
    events::publish_all(ctx, obj.as_ref(), &old_conditions, &outcome.health, round.events).await;
    if let Some(f) = K::FINALIZER {
        if obj.meta().deletion_timestamp.is_some() && obj.may_go(&round.status, &outcome) {
            finalizer::remove(&api, obj.as_ref(), f).await?;
            return Ok(Action::await_change());
        }
    }
    Ok(outcome.requeue.map(Action::requeue).unwrap_or_else(Action::await_change))
}

/// What a failed reconcile waits before the next try: the backoff of the error's [`Category`]
/// (a lost race is retried at once, a refusal by RBAC or an admission policy rarely).
fn error_policy<K: Reconcile>(obj: Arc<K>, error: &Error, _: Arc<(Arc<Context>, Arc<K::Deps>)>) -> Action {
    let category = error.category();
    warn!(kind = kind_of::<K>(), name = %obj.name_any(), %error, category = category.label(), "reconcile failed; retrying");
    Action::requeue(category.backoff())
}

/// When a resource held back by someone else's object looks again (the object may be renamed,
/// deleted or offered for adoption without our watch seeing it).
pub(crate) const RETRY_NAME_CONFLICT: Duration = Duration::from_secs(30);

/// The object as the API server holds it now (None: deleted). Reconciles decide on this rather
/// than on the watch cache: after an API server restart the cache can lag for a while, and
/// decisions on a stale copy would only end in resourceVersion conflicts (or, worse, redo work
/// whose record the cache does not show yet). One GET per reconcile; our objects are few.
async fn fresh<K: Reconcile>(api: &Api<K>, cached: &K) -> Result<Option<Arc<K>>, Error> {
    api.get_opt(&cached.name_any()).await.map(|o| o.map(Arc::new)).reading(&Named::new(
        kind_of::<K>(),
        &cached.namespace().unwrap_or_default(),
        &cached.name_any(),
    ))
}

/// Fail early, with the install command, when a CRD is missing.
pub(crate) async fn check_crd<K: Reconcile>(client: &Client) -> Result<(), Error> {
    let crd = format!("{}.{}", K::plural(&()), K::group(&()));
    match Api::<K>::all(client.clone()).list_metadata(&ListParams::default().limit(1)).await {
        Ok(_) => Ok(()),
        Err(kube::Error::Api(s)) if s.code == 404 => Err(Error::CrdMissing { crd }),
        Err(source) => Err(Error::CrdCheck { crd, source: Box::new(source) }),
    }
}

/// Run the controller of kind `K` until SIGTERM / Ctrl-C.
pub(crate) async fn run<K: Reconcile>(ctx: Arc<Context>, deps: Arc<K::Deps>) {
    use futures::StreamExt;
    let (controller, invalid) = watch::new_controller::<K>(&ctx);
    let controller = K::watches(controller, &ctx);
    let metrics = ctx.metrics.clone();
    let _forgetting = watch::forget_gone(controller.store(), invalid, metrics.clone());
    ctx.caches.register(controller.store());
    info!(kind = kind_of::<K>(), "controller starting");
    controller
        .shutdown_on_signal()
        .run(
            |obj, shared| watch::measured(shared.0.metrics.clone(), obj.clone(), reconcile(obj, shared)),
            error_policy,
            Arc::new((ctx, deps)),
        )
        .for_each(watch::forget_deleted::<K>(metrics))
        .await;
}

/// The objects of `obj`'s kind, where `obj` lives, that came before it: created earlier (by name
/// on a tie) and not being deleted. Of two objects claiming one target, the newer stands down.
/// From the controller's cache: an older object's creation reached the cache before the newer
/// one's, whose reconcile this is; only a context without the controller (tests) lists, leaving
/// out objects that do not decode as the cache does.
pub(crate) async fn older_peers<K: Reconcile>(ctx: &Context, obj: &K) -> Result<Vec<Arc<K>>, Error> {
    let all =
        match ctx.caches.get::<K>() {
            Some(cache) => cache.state(),
            None => {
                let namespace = obj.namespace();
                let list = invalid::list_decodable::<K>(&ctx.client, namespace.as_deref())
                    .await
                    .reading(&Named::new(kind_of::<K>(), &namespace.unwrap_or_default(), "(all)"))?;
                list.into_iter().map(Arc::new).collect()
            }
        };
    let rank = |o: &K| (o.meta().creation_timestamp.clone().map(|t| t.0), o.name_any());
    let (name, namespace, mine) = (obj.name_any(), obj.namespace(), rank(obj));
    Ok(all
        .into_iter()
        .filter(|o| o.namespace() == namespace && o.name_any() != name)
        .filter(|o| o.meta().deletion_timestamp.is_none() && rank(o) < mine)
        .collect())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::api::{CertificateRotation, ClusterSecurityPolicy, KmsKeyVaultMode};

    /// Messages, logs and metric labels name the kinds as their CRDs do.
    #[test]
    fn each_kind_is_named_by_its_resource() {
        assert_eq!(kind_of::<ClusterSecurityPolicy>(), "ClusterSecurityPolicy");
        assert_eq!(kind_of::<CertificateRotation>(), "CertificateRotation");
        assert_eq!(kind_of::<KmsKeyVaultMode>(), "KmsKeyVaultMode");
        assert_eq!(KmsKeyVaultMode::plural(&()), "kmskeyvaultmodes");
    }
}
