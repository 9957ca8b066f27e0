//! Events: the reasons every kind shares, and publishing a round's events after its status
//! write. Namespaced objects get events.k8s.io/v1 Events in their namespace; cluster-scoped ones
//! (KmsKeyVaultMode) core/v1 Events in the operator's own namespace, which platform admins read,
//! not `default`, which many users do (see [`publish_core_event`] for what that costs). Writes
//! Events only.

use std::collections::hash_map::DefaultHasher;
use std::collections::HashMap;
use std::hash::{Hash, Hasher};
use std::sync::Mutex;

use cluster_security_api::FIELD_MANAGER;
use k8s_openapi::api::core::v1::ObjectReference;
use k8s_openapi::api::events::v1::{Event as K8sEvent, EventSeries};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{Condition, MicroTime, ObjectMeta};
use k8s_openapi::jiff::{SignedDuration, Timestamp};
use kube::api::{Patch, PatchParams, PostParams};
use kube::runtime::events::EventType;
use kube::{Api, Client, Resource};
use tracing::{info, warn};

use super::conditions::{self, Health};
use super::Context;

/// Events a round decided to publish: (type, reason, note).
pub(crate) type Events = Vec<(EventType, String, String)>;

/// Event reasons of the operation record, the same for every kind.
pub(crate) mod reason {
    /// A new operation is recorded (PENDING).
    pub(crate) const OPERATION_PENDING: &str = "OperationPending";
    /// The operation started (UPDATE_IN_PROGRESS).
    pub(crate) const UPDATE_STARTED: &str = "UpdateStarted";
    /// The operation ended UPDATE_COMPLETE.
    pub(crate) const UPDATE_COMPLETE: &str = "UpdateComplete";
    /// The operation ended UPDATE_FAILED.
    pub(crate) const UPDATE_FAILED: &str = "UpdateFailed";
    /// Something the operator wrote was changed or deleted by someone else and is restored.
    pub(crate) const DRIFT_REPAIRED: &str = "DriftRepaired";
    /// A pod of a StatefulSet with `updateStrategy: OnDelete` was deleted to take the new
    /// template.
    pub(crate) const POD_REPLACED: &str = "PodReplaced";
    /// Client certificates were issued (or renewed) into the Secrets the spec names.
    pub(crate) const CLIENT_CERTIFICATES_ISSUED: &str = "ClientCertificatesIssued";
}

/// After the status write: publish the round's events, plus a Warning when the object newly
/// became Stalled without one.
pub(crate) async fn publish_all<K>(
    ctx: &Context,
    obj: &K,
    old_conditions: &[Condition],
    health: &Health,
    mut events: Events,
) where
    K: Resource<DynamicType = ()>,
{
    if let Health::Stalled { reason, message } = health {
        let was = conditions::get(old_conditions, conditions::STALLED).map(|c| c.reason.as_str());
        if was != Some(*reason) && !events.iter().any(|(t, _, _)| *t == EventType::Warning) {
            events.push((EventType::Warning, reason.to_string(), message.clone()));
        }
    }
    for (type_, reason, note) in events {
        publish(ctx, obj, type_, &reason, note).await;
    }
}

/// Publish an event about `obj`; a failed event is logged, never fatal.
pub(crate) async fn publish<K>(ctx: &Context, obj: &K, type_: EventType, reason: &str, note: String)
where
    K: Resource<DynamicType = ()>,
{
    // events.k8s.io limits the note to 1 kB.
    let note: String = note.chars().take(1000).collect();
    // The log says what the Event says, inside the reconcile's span (kind, namespace, name,
    // operation id). Notes never carry Secret material (the e2e leak audit reads both).
    info!(event = reason, r#type = ?type_, "{note}");
    let reference = obj.object_ref(&());
    let result = if reference.namespace.is_none() {
        publish_core_event(&ctx.client, &ctx.namespace, reference, type_, reason, note).await
    } else {
        ctx.recorder.publish(type_, reason, note, reference).await
    };
    if let Err(e) = result {
        warn!(reason, error = %e, "could not publish event");
    }
}

/// A core/v1 Event in `namespace` (the operator's) for a cluster-scoped object. The API server
/// accepts an event about an object without a namespace only in `default` (v1.20 and current
/// versions alike), where every user reads; so the reference names `namespace` too. The price:
/// `kubectl describe` of the object, which looks for an empty namespace in the reference, does
/// not list them; `kubectl get events -n <namespace>` (and the status) does.
async fn publish_core_event(
    client: &Client,
    namespace: &str,
    mut reference: k8s_openapi::api::core::v1::ObjectReference,
    type_: EventType,
    reason: &str,
    note: String,
) -> Result<(), kube::Error> {
    use k8s_openapi::api::core::v1::{Event as CoreEvent, EventSource};
    use k8s_openapi::apimachinery::pkg::apis::meta::v1::{ObjectMeta, Time};
    let now = Time(Timestamp::now());
    reference.namespace = Some(namespace.into());
    let event = CoreEvent {
        metadata: ObjectMeta {
            generate_name: Some(format!("{}.", reference.name.clone().unwrap_or_default())),
            namespace: Some(namespace.into()),
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
    let api: Api<CoreEvent> = Api::namespaced(client.clone(), namespace);
    api.create(&Default::default(), &event).await.map(|_| ())
}

/// How long a published event is remembered, so that the same event again within it counts in
/// its series (`series.count`) instead of adding an Event (kube-runtime's Recorder does the same).
const SERIES_WINDOW: SignedDuration = SignedDuration::from_secs(6 * 60);

/// What makes two events the same: the object (its uid), type, reason and note, hashed (only
/// equality is needed, and 8 bytes per event is what lets thousands be remembered cheaply).
fn series_key(regarding_uid: &str, type_: EventType, reason: &str, note: &str) -> u64 {
    let mut h = DefaultHasher::new();
    (regarding_uid, type_ == EventType::Warning, reason, note).hash(&mut h);
    h.finish()
}

/// A published event, as much of it as its next occurrence needs.
#[derive(Clone, Debug)]
struct Seen {
    name: String,
    count: i32,
    last: Timestamp,
}

/// Publishes events.k8s.io/v1 Events, counting repeats into a series. Like kube-runtime's
/// Recorder, but it remembers a few names and counts per event rather than the whole Event:
/// with 900 objects rolling at once that cache was the largest thing the operator held
/// (benches/scale.rs, heaptrack: ~6 MB).
pub(crate) struct Recorder {
    client: Client,
    /// `reportingInstance`: the pod's name, or the controller's.
    instance: String,
    seen: Mutex<HashMap<u64, Seen>>,
}

impl Recorder {
    pub(crate) fn new(client: Client, instance: Option<String>) -> Self {
        let instance = instance.unwrap_or_else(|| FIELD_MANAGER.to_string());
        Self { client, instance, seen: Mutex::new(HashMap::new()) }
    }

    /// Publish an event about `regarding` (in its namespace): a new Event, or the next count of
    /// the same one published within [`SERIES_WINDOW`].
    pub(crate) async fn publish(
        &self,
        type_: EventType,
        reason: &str,
        note: String,
        regarding: ObjectReference,
    ) -> Result<(), kube::Error> {
        let now = Timestamp::now();
        let key = series_key(regarding.uid.as_deref().unwrap_or_default(), type_, reason, &note);
        let again = {
            let mut seen = self.seen.lock().expect("events lock");
            seen.retain(|_, s| s.last + SERIES_WINDOW > now);
            seen.get(&key).cloned()
        };
        let namespace = regarding.namespace.clone().unwrap_or_default();
        let api: Api<K8sEvent> = Api::namespaced(self.client.clone(), &namespace);
        let seen = match again {
            Some(mut s) => {
                s.count += 1;
                s.last = now;
                let series = EventSeries { count: s.count, last_observed_time: MicroTime(now) };
                let patch = serde_json::json!({ "series": series });
                api.patch(&s.name, &PatchParams::default(), &Patch::Merge(&patch)).await?;
                s
            }
            None => {
                let name = format!("{}.{:x}", regarding.name.clone().unwrap_or_default(), now.as_nanosecond());
                let event = K8sEvent {
                    metadata: ObjectMeta {
                        name: Some(name.clone()),
                        namespace: Some(namespace.clone()),
                        ..Default::default()
                    },
                    action: Some("Reconcile".into()),
                    reason: Some(reason.into()),
                    note: Some(note),
                    event_time: Some(MicroTime(now)),
                    regarding: Some(regarding),
                    reporting_controller: Some(FIELD_MANAGER.into()),
                    reporting_instance: Some(self.instance.clone()),
                    type_: Some(if type_ == EventType::Warning { "Warning" } else { "Normal" }.into()),
                    ..Default::default()
                };
                api.create(&PostParams::default(), &event).await?;
                Seen { name, count: 1, last: now }
            }
        };
        self.seen.lock().expect("events lock").insert(key, seen);
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_same_event_again_is_one_series_and_any_difference_a_new_event() {
        let key = |uid, t, reason, note| series_key(uid, t, reason, note);
        let first = key("u1", EventType::Normal, "UpdateStarted", "rolling");
        assert_eq!(first, key("u1", EventType::Normal, "UpdateStarted", "rolling"));
        for other in [
            key("u2", EventType::Normal, "UpdateStarted", "rolling"),
            key("u1", EventType::Warning, "UpdateStarted", "rolling"),
            key("u1", EventType::Normal, "UpdateComplete", "rolling"),
            key("u1", EventType::Normal, "UpdateStarted", "rolled"),
        ] {
            assert_ne!(first, other);
        }
    }
}
