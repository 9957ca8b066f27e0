//! The Secrets and ConfigMaps a kind writes under names derived from its workload
//! (`<cluster>-security`, `<cluster>-external-tls`, …): the operator writes such an object only
//! when it created it (the managed-by label) or a user allowed adoption (an annotation), and
//! makes the resource their owner only under `deletionPolicy: Delete` — by default they outlive
//! the resource, because the brokers mount them and clients trust their CAs.
//!
//! Their changes are watched (metadata only, the operator's label only), so that drift is
//! repaired at once ([`watch`]).
//!
//! What this module may touch: nothing; it reads those objects and shapes their metadata.

use cluster_security_api::{DeletionPolicy, FIELD_MANAGER};
use k8s_openapi::api::core::v1::{ConfigMap, Secret};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use kube::core::PartialObjectMeta;
use kube::runtime::controller::Controller;
use kube::{Api, Client, Resource, ResourceExt};
use serde_json::{json, Value};

use super::rolling::Rolling;
use super::{watch, Context, Error, Named};

/// The label on every object the operator created.
pub const MANAGED_BY_LABEL: &str = "app.kubernetes.io/managed-by";
/// Set to `"true"` on an existing object to let the operator take it over.
pub const ADOPT_ANNOTATION: &str = "clustersecurity.io/adopt";

/// A Secret or ConfigMap a kind writes.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Derived {
    Secret(String),
    ConfigMap(String),
}

impl Derived {
    pub fn kind(&self) -> &'static str {
        match self {
            Derived::Secret(_) => "Secret",
            Derived::ConfigMap(_) => "ConfigMap",
        }
    }

    pub fn name(&self) -> &str {
        match self {
            Derived::Secret(n) | Derived::ConfigMap(n) => n,
        }
    }
}

/// Trigger a reconcile of the object whose derived Secret or ConfigMap changed or went: a
/// metadata-only watch of the objects carrying the operator's label.
pub fn watch<K: Rolling>(controller: Controller<K>, ctx: &Context) -> Controller<K> {
    let ours = watch::config().labels(&format!("{MANAGED_BY_LABEL}={FIELD_MANAGER}"));
    let controller = watch::triggers::<K, PartialObjectMeta<ConfigMap>>(controller, ctx, ours.clone(), |o, name| {
        o.derived_objects().contains(&Derived::ConfigMap(name.to_string()))
    });
    watch::triggers::<K, PartialObjectMeta<Secret>>(controller, ctx, ours, |o, name| {
        o.derived_objects().contains(&Derived::Secret(name.to_string()))
    })
}

/// Whether the operator may write over the object with this metadata.
pub fn ours(meta: &ObjectMeta) -> bool {
    let label = meta.labels.as_ref().and_then(|l| l.get(MANAGED_BY_LABEL)).map(String::as_str);
    let adopt = meta.annotations.as_ref().and_then(|a| a.get(ADOPT_ANNOTATION)).map(String::as_str);
    label == Some(FIELD_MANAGER) || adopt == Some("true")
}

/// The first of `objects` (in `ns`) that exists and is not the operator's, as the message of a
/// `NameConflict`: which object, and the two ways out. None: all may be written.
pub async fn first_conflict(client: &Client, ns: &str, objects: &[Derived]) -> Result<Option<String>, Error> {
    for o in objects {
        let read = |source| Error::Read { object: Named::new(o.kind(), ns, o.name()), source: Box::new(source) };
        let meta = match o {
            Derived::Secret(n) => Api::<Secret>::namespaced(client.clone(), ns)
                .get_metadata_opt(n)
                .await
                .map_err(read)?
                .map(|s| s.metadata),
            Derived::ConfigMap(n) => Api::<ConfigMap>::namespaced(client.clone(), ns)
                .get_metadata_opt(n)
                .await
                .map_err(read)?
                .map(|c| c.metadata),
        };
        if meta.is_some_and(|m| !ours(&m)) {
            let (kind, name) = (o.kind(), o.name());
            return Ok(Some(format!(
                "{kind} {ns}/{name} exists and was not created by the operator (no label \
                 {MANAGED_BY_LABEL}={FIELD_MANAGER}), so it is left untouched and nothing was applied. Rename or \
                 delete it, or let the operator take it over: kubectl annotate {} {name} -n {ns} {ADOPT_ANNOTATION}=true",
                kind.to_ascii_lowercase(),
            )));
        }
    }
    Ok(None)
}

/// `metadata` for a derived object `name` of `owner` (server-side apply body): the managed-by
/// label, plus `extra` (annotations), and an owner reference only under `Delete`. Applied
/// without one, a reference the operator set earlier is removed (its field manager owned it).
pub fn metadata<K: Resource<DynamicType = ()>>(owner: &K, name: &str, policy: DeletionPolicy, extra: Value) -> Value {
    let mut meta = json!({
        "name": name,
        "namespace": owner.namespace().unwrap_or_default(),
        "labels": {MANAGED_BY_LABEL: FIELD_MANAGER},
    });
    if policy == DeletionPolicy::Delete {
        let reference = owner.controller_owner_ref(&()).expect("a stored object has a uid");
        meta["ownerReferences"] = json!([reference]);
    }
    if let (Some(into), Some(from)) = (meta.as_object_mut(), extra.as_object()) {
        into.extend(from.clone());
    }
    meta
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::BTreeMap;

    fn meta(labels: &[(&str, &str)], annotations: &[(&str, &str)]) -> ObjectMeta {
        let map = |kv: &[(&str, &str)]| {
            Some(kv.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect::<BTreeMap<_, _>>())
        };
        ObjectMeta { labels: map(labels), annotations: map(annotations), ..Default::default() }
    }

    #[test]
    fn only_labelled_or_adoptable_objects_are_ours() {
        assert!(ours(&meta(&[(MANAGED_BY_LABEL, FIELD_MANAGER)], &[])));
        assert!(!ours(&meta(&[], &[])), "a user's object of the same name");
        assert!(!ours(&meta(&[(MANAGED_BY_LABEL, "Helm")], &[])), "someone else's tooling");
        assert!(ours(&meta(&[(MANAGED_BY_LABEL, "Helm")], &[(ADOPT_ANNOTATION, "true")])), "adoption allowed");
        assert!(!ours(&meta(&[], &[(ADOPT_ANNOTATION, "yes")])), "only \"true\" allows adoption");
    }
}
