//! Objects of our kinds that do not decode. The controllers watch their kind through kube's
//! [`DeserializeGuard`], so one object that does not decode as this version's type (left by an
//! older CRD, or written past the schema) no longer fails the whole list and watch: the others
//! are reconciled, and this one is reported here — Stalled `InvalidObject` with the decoding
//! error as the message, a Warning Event, and its metric series — once per generation.
//! It never reaches a round: a round needs the typed object. Lists of a kind that a round makes
//! go through [`list_decodable`], so that such an object does not fail them either.
//!
//! What this module may touch: the conditions in the status of such an object, and Events.

use std::collections::HashSet;
use std::sync::{Arc, Mutex};

use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use kube::api::{ApiResource, DynamicObject, ListParams, ObjectList, Patch, PatchParams};
use kube::core::error_boundary::InvalidObject;
use kube::core::DeserializeGuard;
use kube::runtime::events::EventType;
use kube::{Api, Client};
use tracing::warn;

use super::conditions::{self, reason};
use super::{events, Context, Health, Reconcile};
use crate::metrics::ObjectHealth;

/// Every object of kind `K` in `namespace` (None: everywhere) that decodes. A list of the typed
/// objects fails whole on one that does not; those are reported by their controller
/// ([`report`]) and left out here, as the controller's cache leaves them out.
pub(crate) async fn list_decodable<K: Reconcile>(
    client: &Client,
    namespace: Option<&str>,
) -> Result<Vec<K>, kube::Error> {
    let request = kube::core::Request::new(K::url_path(&(), namespace))
        .list(&ListParams::default())
        .map_err(kube::Error::BuildRequest)?;
    let list: ObjectList<DeserializeGuard<K>> = client.request(request).await?;
    Ok(list.items.into_iter().filter_map(|guarded| guarded.0.ok()).collect())
}

/// Where an object is: (namespace, name).
type Place = (Option<String>, String);

/// The objects of one kind that do not decode now, and the generations already reported.
#[derive(Clone, Default)]
pub(crate) struct Invalid {
    inner: Arc<Mutex<InvalidState>>,
}

#[derive(Default)]
struct InvalidState {
    now: HashSet<Place>,
    reported: HashSet<(String, i64)>,
}

fn place(meta: &ObjectMeta) -> Place {
    (meta.namespace.clone(), meta.name.clone().unwrap_or_default())
}

impl Invalid {
    /// Whether the object at `namespace`/`name` is one that does not decode (its metric series
    /// stays while it is).
    pub(crate) fn holds(&self, namespace: Option<&str>, name: &str) -> bool {
        let state = self.inner.lock().expect("invalid objects lock");
        state.now.contains(&(namespace.map(String::from), name.to_string()))
    }

    /// `meta`'s object decodes (again), or is gone.
    pub(crate) fn clear(&self, meta: &ObjectMeta) {
        self.inner.lock().expect("invalid objects lock").now.remove(&place(meta));
    }

    /// Record `object` as not decoding; true when this generation of it is not reported yet.
    fn note(&self, object: &InvalidObject) -> bool {
        let mut state = self.inner.lock().expect("invalid objects lock");
        state.now.insert(place(&object.metadata));
        let uid = object.metadata.uid.clone().unwrap_or_default();
        state.reported.insert((uid, object.metadata.generation.unwrap_or_default()))
    }
}

/// What the Stalled condition and the Event say of an object that does not decode.
pub(crate) fn message(error: &str) -> String {
    format!(
        "the stored object does not decode as this operator's type: {error}. Nothing is done for it; \
         fix that field (kubectl edit) or re-create the object from its manifest."
    )
}

/// Report `object` (of kind `K`) unless this generation of it was reported already: metric
/// series, Warning Event, Stalled conditions. A failed status write or Event is logged; the
/// next generation (a fix) is reported again.
pub(crate) async fn report<K: Reconcile>(ctx: Arc<Context>, invalid: Invalid, object: InvalidObject) {
    let meta = &object.metadata;
    let (namespace, name) = (meta.namespace.as_deref(), meta.name.clone().unwrap_or_default());
    let stalled =
        ObjectHealth { stalled: Some(ObjectHealth::stalled_reason(reason::INVALID_OBJECT)), ..Default::default() };
    ctx.metrics.object(super::kind_of::<K>(), namespace, &name, Some(stalled));
    if !invalid.note(&object) {
        return;
    }
    let message = message(&object.error);
    let health = Health::Stalled { reason: reason::INVALID_OBJECT, message: message.clone() };
    warn!(kind = super::kind_of::<K>(), namespace = namespace.unwrap_or_default(), %name, error = %object.error, "object does not decode");
    let conditions = conditions::apply(&[], &health, meta.generation, ctx.clock.now());
    let resource = ApiResource::erase::<K>(&());
    let api: Api<DynamicObject> = match namespace {
        Some(ns) => Api::namespaced_with(ctx.client.clone(), ns, &resource),
        None => Api::all_with(ctx.client.clone(), &resource),
    };
    let patch = serde_json::json!({ "status": { "conditions": conditions } });
    if let Err(e) = api.patch_status(&name, &PatchParams::default(), &Patch::Merge(&patch)).await {
        warn!(kind = super::kind_of::<K>(), %name, error = %e, "could not write the status of an object that does not decode");
    }
    let guard = DeserializeGuard::<K>(Err(object));
    events::publish(&ctx, &guard, EventType::Warning, reason::INVALID_OBJECT, message).await;
}

#[cfg(test)]
mod tests {
    use cluster_security_api::ClusterSecurityPolicy;

    use super::*;

    fn guarded(rollout_timeout: serde_json::Value, generation: i64) -> DeserializeGuard<ClusterSecurityPolicy> {
        serde_json::from_value(serde_json::json!({
            "apiVersion": "clustersecurity.io/v1alpha1",
            "kind": "ClusterSecurityPolicy",
            "metadata": {"name": "bad", "namespace": "kafka", "uid": "u1", "generation": generation},
            "spec": {
                "clusterRef": {"kind": "StatefulSet", "name": "kafka"},
                "clientAuthentication": {"tls": {"enabled": true}},
                "encryptionInTransit": {"clientBroker": "TLS"},
                "rolloutTimeoutSeconds": rollout_timeout,
            },
        }))
        .expect("the guard decodes any object with metadata")
    }

    #[test]
    fn a_field_of_another_type_is_an_invalid_object_with_its_metadata() {
        let DeserializeGuard(Err(bad)) = guarded(serde_json::json!("soon"), 1) else { panic!("decoded") };
        assert_eq!(bad.metadata.name.as_deref(), Some("bad"));
        assert!(bad.error.contains("soon") && bad.error.contains("u32"), "{}", bad.error);
        assert!(message(&bad.error).contains(&bad.error));
        if let Err(e) = guarded(serde_json::json!(120), 1).0 {
            panic!("a valid one decodes: {e}");
        }
    }

    #[test]
    fn each_generation_is_reported_once_and_held_until_cleared() {
        let invalid = Invalid::default();
        let DeserializeGuard(Err(first)) = guarded(serde_json::json!("soon"), 1) else { panic!("decoded") };
        assert!(invalid.note(&first), "first sight");
        assert!(!invalid.note(&first), "the same generation again (a relist, our own status write)");
        assert!(invalid.holds(Some("kafka"), "bad") && !invalid.holds(Some("other"), "bad"));
        let DeserializeGuard(Err(second)) = guarded(serde_json::json!("later"), 2) else { panic!("decoded") };
        assert!(invalid.note(&second), "a new generation is reported again");
        invalid.clear(&second.metadata);
        assert!(!invalid.holds(Some("kafka"), "bad"));
    }
}
