//! A kind's finalizer ([`super::Reconcile::FINALIZER`]): added before the first round, removed
//! once a deleted object may go. Both are guarded writes carrying the resourceVersion they read:
//! a concurrent change (someone else's finalizer) makes the write fail and the round is retried;
//! nobody's finalizer is lost.

use std::sync::Arc;

use kube::api::{Patch, PatchParams};
use kube::{Api, ResourceExt};
use serde_json::json;

use super::Noted as _;
use super::{Error, Named, Reconcile};

fn named<K: Reconcile>(obj: &K) -> Named {
    Named::new(super::kind_of::<K>(), &obj.namespace().unwrap_or_default(), &obj.name_any())
}

/// Add `finalizer` to `obj`; returns the object as stored after it.
pub(super) async fn add<K: Reconcile>(api: &Api<K>, obj: &K, finalizer: &str) -> Result<Arc<K>, Error> {
    let mut finalizers = obj.finalizers().to_vec();
    finalizers.push(finalizer.to_string());
    let patch = json!({"metadata": {"finalizers": finalizers, "resourceVersion": obj.resource_version()}});
    api.patch(&obj.name_any(), &PatchParams::default(), &Patch::Merge(&patch)).await.map(Arc::new).writing(&named(obj))
}

/// Remove `finalizer` from the object `read` names, as stored now (the round's status write
/// moved its resourceVersion on); nothing when it is gone or holds no such finalizer.
pub(super) async fn remove<K: Reconcile>(api: &Api<K>, read: &K, finalizer: &str) -> Result<(), Error> {
    let obj = match api.get_opt(&read.name_any()).await {
        Ok(Some(obj)) => obj,
        Ok(None) => return Ok(()),
        Err(source) => return Err(Error::Read { object: named(read), source: Box::new(source) }),
    };
    if !obj.finalizers().iter().any(|f| f == finalizer) {
        return Ok(());
    }
    let rest: Vec<&String> = obj.finalizers().iter().filter(|f| *f != finalizer).collect();
    let patch = json!({"metadata": {"finalizers": rest, "resourceVersion": obj.resource_version()}});
    match api.patch(&obj.name_any(), &PatchParams::default(), &Patch::Merge(&patch)).await {
        Ok(_) => Ok(()),
        Err(kube::Error::Api(e)) if e.code == 404 => Ok(()),
        Err(source) => Err(Error::Write { object: named(&obj), source: Box::new(source) }),
    }
}
