//! The Secrets and ConfigMaps a kind writes under names derived from its workload
//! (`<cluster>-security`, `<cluster>-external-tls`, …) or named in its spec (client Secrets):
//! every write goes through [`apply`], which writes only when no object of that name exists, or
//! the one there was written for this very resource (the managed-by label and the resource's uid
//! in [`OWNER_UID_LABEL`]), or a user of its namespace allowed adoption (an annotation, removed
//! once used) — checked right before the write, and the write conditioned on the
//! resourceVersion that was checked. So a resource never takes over another resource's objects,
//! not even while its operation is PENDING and its spec changes. The resource becomes their
//! owner (owner reference) only under `deletionPolicy: Delete` — by default they outlive it,
//! because the brokers mount them and clients trust their CAs.
//!
//! Their changes are watched (metadata only, the operator's label only), so that drift is
//! repaired at once ([`watch`]).
//!
//! What this module may touch: the derived objects it is asked to write, under the rule above;
//! it reads those objects and shapes their metadata.

use cluster_security_api::{DeletionPolicy, FIELD_MANAGER};
use k8s_openapi::api::core::v1::{ConfigMap, Secret};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use kube::api::{Patch, PatchParams};
use kube::core::PartialObjectMeta;
use kube::runtime::controller::Controller;
use kube::{Api, Client, Resource, ResourceExt};
use serde_json::{json, Value};

use super::rolling::Rolling;
use super::Noted as _;
use super::{watch, Context, Error, Named};

/// The label on every object the operator created.
pub(crate) const MANAGED_BY_LABEL: &str = "app.kubernetes.io/managed-by";
/// Set to `"true"` on an existing object to let the operator take it over.
pub(crate) const ADOPT_ANNOTATION: &str = "clustersecurity.io/adopt";
/// The uid of the resource an object was written for.
pub(crate) const OWNER_UID_LABEL: &str = "clustersecurity.io/owner-uid";
/// `<Kind>/<name>` of the resource an object was written for (in the object's namespace).
pub(crate) const OWNER_ANNOTATION: &str = "clustersecurity.io/owner";

/// Which resource a derived object is written for: its uid, and its kind and name (derived
/// objects live in the resource's namespace).
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct Owner {
    pub uid: String,
    /// `<Kind>/<name>`.
    pub object: String,
}

impl Owner {
    pub(crate) fn of<K: Resource<DynamicType = ()>>(obj: &K) -> Self {
        Self { uid: obj.uid().unwrap_or_default(), object: format!("{}/{}", K::kind(&()), obj.name_any()) }
    }
}

/// A Secret or ConfigMap a kind writes.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) enum Derived {
    Secret(String),
    ConfigMap(String),
}

impl Derived {
    pub(crate) fn kind(&self) -> &'static str {
        match self {
            Derived::Secret(_) => "Secret",
            Derived::ConfigMap(_) => "ConfigMap",
        }
    }

    pub(crate) fn name(&self) -> &str {
        match self {
            Derived::Secret(n) | Derived::ConfigMap(n) => n,
        }
    }
}

/// Trigger a reconcile of the object whose derived Secret or ConfigMap changed or went: a
/// metadata-only watch of the objects carrying the operator's label.
pub(crate) fn watch<K: Rolling>(controller: Controller<K>, ctx: &Context) -> Controller<K> {
    let ours = watch::config().labels(&format!("{MANAGED_BY_LABEL}={FIELD_MANAGER}"));
    let controller = watch::triggers::<K, PartialObjectMeta<ConfigMap>>(controller, ctx, ours.clone(), |o, name| {
        o.derived_objects().contains(&Derived::ConfigMap(name.to_string()))
    });
    watch::triggers::<K, PartialObjectMeta<Secret>>(controller, ctx, ours, |o, name| {
        o.derived_objects().contains(&Derived::Secret(name.to_string()))
    })
}

/// Whether `meta` is of an object written by the operator for `owner`: for its uid, or for an
/// earlier resource of the same kind and name in this namespace — one deleted and created again
/// (a name is held by one live object at a time, so that predecessor is gone), which takes over
/// what its predecessor kept (deletionPolicy Retain). One with the operator's label and no
/// owner at all was written by a version before owners were recorded: the first resource to
/// write it again records itself.
pub(crate) fn written_for(meta: &ObjectMeta, owner: &Owner) -> bool {
    let label = meta.labels.as_ref().and_then(|l| l.get(OWNER_UID_LABEL)).map(String::as_str);
    let annotation = meta.annotations.as_ref().and_then(|a| a.get(OWNER_ANNOTATION)).map(String::as_str);
    let ours = meta.labels.as_ref().and_then(|l| l.get(MANAGED_BY_LABEL)).is_some_and(|v| v == FIELD_MANAGER);
    ours && (label == Some(owner.uid.as_str())
        || annotation == Some(owner.object.as_str())
        || (label.is_none() && annotation.is_none()))
}

/// Whether `owner` may write over the object with this metadata: written for it, or offered for
/// adoption by someone who may edit it.
pub(crate) fn may_write(meta: &ObjectMeta, owner: &Owner) -> bool {
    written_for(meta, owner) || adopt_requested(meta)
}

fn adopt_requested(meta: &ObjectMeta) -> bool {
    meta.annotations.as_ref().and_then(|a| a.get(ADOPT_ANNOTATION)).is_some_and(|v| v == "true")
}

/// Read the metadata of derived object `o` in `ns` (None: absent).
async fn read_meta(client: &Client, ns: &str, o: &Derived) -> Result<Option<ObjectMeta>, Error> {
    let read = |source| Error::Read { object: Named::new(o.kind(), ns, o.name()), source: Box::new(source) };
    Ok(match o {
        Derived::Secret(n) => {
            Api::<Secret>::namespaced(client.clone(), ns).get_metadata_opt(n).await.map_err(read)?.map(|s| s.metadata)
        }
        Derived::ConfigMap(n) => Api::<ConfigMap>::namespaced(client.clone(), ns)
            .get_metadata_opt(n)
            .await
            .map_err(read)?
            .map(|c| c.metadata),
    })
}

/// The message of a `NameConflict` for object `kind` `ns/name`: which object, and the ways out.
fn conflict_message(kind: &str, ns: &str, name: &str) -> String {
    format!(
        "{kind} {ns}/{name} exists and was not written by the operator for this resource (labels \
         {MANAGED_BY_LABEL}={FIELD_MANAGER} and {OWNER_UID_LABEL}=<its uid>), so it is left untouched and nothing \
         was applied. Rename or delete it, or let the operator take it over: kubectl annotate {} {name} -n {ns} \
         {ADOPT_ANNOTATION}=true",
        kind.to_ascii_lowercase(),
    )
}

/// The first of `objects` (in `ns`) that exists and that `owner` may not write, as the message
/// of a `NameConflict`. None: all may be written.
pub(crate) async fn first_conflict(
    client: &Client,
    ns: &str,
    owner: &Owner,
    objects: &[Derived],
) -> Result<Option<String>, Error> {
    for o in objects {
        if read_meta(client, ns, o).await?.is_some_and(|m| !may_write(&m, owner)) {
            return Ok(Some(conflict_message(o.kind(), ns, o.name())));
        }
    }
    Ok(None)
}

/// Server-side apply `body` (built with [`metadata`]) as a derived object of `owner`, in its
/// namespace, under the rule of this module: checked right before, written only if the object
/// checked is still the one there (its resourceVersion), and an adopt annotation removed once
/// the object is ours. `Error::NameConflict` when the object is not `owner`'s to write.
pub(crate) async fn apply<T, K>(client: &Client, owner: &K, body: &Value) -> Result<(), Error>
where
    T: Resource<DynamicType = (), Scope = k8s_openapi::NamespaceResourceScope>
        + Clone
        + serde::de::DeserializeOwned
        + std::fmt::Debug,
    K: Resource<DynamicType = ()>,
{
    let ns = owner.namespace().unwrap_or_default();
    let name = body["metadata"]["name"].as_str().unwrap_or_default().to_string();
    let kind: &'static str = if T::kind(&()) == "Secret" { "Secret" } else { "ConfigMap" };
    let object = || Named::new(kind, &ns, &name);
    let writer = Owner::of(owner);
    let api = Api::<T>::namespaced(client.clone(), &ns);
    let existing = api.get_metadata_opt(&name).await.reading(&object())?.map(|m| m.metadata);
    let mut body = body.clone();
    if let Some(meta) = &existing {
        if writer.uid.is_empty() || !may_write(meta, &writer) {
            return Err(Error::NameConflict { object: object(), message: conflict_message(kind, &ns, &name) });
        }
        // Someone who changed the object since it was checked fails the write (409): read again.
        body["metadata"]["resourceVersion"] = json!(meta.resource_version);
    }
    let pp = PatchParams::apply(FIELD_MANAGER).force();
    api.patch(&name, &pp, &Patch::Apply(&body)).await.writing(&object())?;
    if existing.as_ref().is_some_and(adopt_requested) {
        let drop_adopt = json!({"metadata": {"annotations": {ADOPT_ANNOTATION: null}}});
        api.patch(&name, &PatchParams::default(), &Patch::Merge(&drop_adopt)).await.writing(&object())?;
    }
    Ok(())
}

/// `metadata` for a derived object `name` of `owner` (server-side apply body): the managed-by
/// and owner-uid labels, the owner annotation, plus `extra` (annotations), and an owner
/// reference only under `Delete`. Applied
/// without one, a reference the operator set earlier is removed (its field manager owned it).
pub(crate) fn metadata<K: Resource<DynamicType = ()>>(
    owner: &K,
    name: &str,
    policy: DeletionPolicy,
    extra: Value,
) -> Value {
    let mut meta = json!({
        "name": name,
        "namespace": owner.namespace().unwrap_or_default(),
        "labels": {MANAGED_BY_LABEL: FIELD_MANAGER, OWNER_UID_LABEL: owner.uid().unwrap_or_default()},
        "annotations": {OWNER_ANNOTATION: Owner::of(owner).object},
    });
    if policy == DeletionPolicy::Delete {
        let reference = owner.controller_owner_ref(&()).expect("a stored object has a uid");
        meta["ownerReferences"] = json!([reference]);
    }
    if let (Some(into), Some(from)) = (meta.as_object_mut(), extra.as_object()) {
        for (key, value) in from {
            match (into.get_mut(key).and_then(Value::as_object_mut), value.as_object()) {
                // Annotations of the caller's next to the owner's.
                (Some(mine), Some(theirs)) => mine.extend(theirs.clone()),
                _ => {
                    into.insert(key.clone(), value.clone());
                }
            }
        }
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
    fn only_objects_written_for_this_resource_or_offered_are_writable() {
        let a = Owner { uid: "uid-a".into(), object: "CertificateRotation/certs".into() };
        let ours = [(MANAGED_BY_LABEL, FIELD_MANAGER), (OWNER_UID_LABEL, "uid-a")];
        let written = meta(&ours, &[(OWNER_ANNOTATION, "CertificateRotation/certs")]);
        assert!(may_write(&written, &a));
        let other = Owner { uid: "uid-b".into(), object: "CertificateRotation/other".into() };
        assert!(!may_write(&written, &other), "another resource's object");
        assert!(!written_for(&written, &other));
        let policy = Owner { uid: "uid-c".into(), object: "ClusterSecurityPolicy/certs".into() };
        assert!(!may_write(&written, &policy), "another kind's resource of the same name");
        let recreated = Owner { uid: "uid-d".into(), object: "CertificateRotation/certs".into() };
        assert!(may_write(&written, &recreated), "the same resource, deleted and created again");
        assert!(
            may_write(&meta(&[(MANAGED_BY_LABEL, FIELD_MANAGER)], &[]), &other),
            "written before owners were recorded"
        );
        assert!(!may_write(&meta(&[], &[]), &a), "a user's object of the same name");
        assert!(!may_write(&meta(&[(MANAGED_BY_LABEL, "Helm")], &[]), &a), "someone else's tooling");
        assert!(may_write(&meta(&[(MANAGED_BY_LABEL, "Helm")], &[(ADOPT_ANNOTATION, "true")]), &a), "adoption allowed");
        assert!(!written_for(&meta(&[], &[(ADOPT_ANNOTATION, "true")]), &a), "offered is not yet written");
        assert!(!may_write(&meta(&[], &[(ADOPT_ANNOTATION, "yes")]), &a), "only \"true\" allows adoption");
    }
}
