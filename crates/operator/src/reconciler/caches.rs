//! The caches of the running controllers, for a kind that reads another kind's objects (a
//! CertificateRotation checking the listeners a ClusterSecurityPolicy rendered). Reading the
//! cache costs nothing; listing every object of a kind in a namespace from the API server, on
//! every round of every object, was the operator's largest use of memory at scale. Touches
//! nothing: it only hands out what the controllers registered.

use std::any::{Any, TypeId};
use std::collections::HashMap;
use std::sync::RwLock;

use kube::runtime::reflector::Store;
use kube::Resource;

/// One store per kind whose controller runs (registered as it starts).
#[derive(Default)]
pub(crate) struct Caches {
    stores: RwLock<HashMap<TypeId, Box<dyn Any + Send + Sync>>>,
}

impl Caches {
    /// The controller of `K` caches its objects in `store`.
    pub(crate) fn register<K>(&self, store: Store<K>)
    where
        K: Resource<DynamicType = ()> + Clone + Send + Sync + 'static,
    {
        self.stores.write().expect("caches lock").insert(TypeId::of::<K>(), Box::new(store));
    }

    /// The cache of `K`'s objects; None when its controller does not run here.
    pub(crate) fn get<K>(&self) -> Option<Store<K>>
    where
        K: Resource<DynamicType = ()> + Clone + Send + Sync + 'static,
    {
        self.stores.read().expect("caches lock").get(&TypeId::of::<K>())?.downcast_ref::<Store<K>>().cloned()
    }
}

impl std::fmt::Debug for Caches {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Caches")
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use k8s_openapi::api::core::v1::{ConfigMap, Secret};
    use kube::runtime::reflector;

    #[test]
    fn hands_out_the_store_of_the_kind_asked_for() {
        let caches = Caches::default();
        assert!(caches.get::<Secret>().is_none(), "nothing registered");
        let (reader, mut writer) = reflector::store::<Secret>();
        let secret = Secret {
            metadata: kube::api::ObjectMeta { name: Some("s".into()), ..Default::default() },
            ..Default::default()
        };
        writer.apply_watcher_event(&kube::runtime::watcher::Event::Apply(secret));
        caches.register(reader);
        assert_eq!(caches.get::<Secret>().map(|s| s.state().len()), Some(1));
        assert!(caches.get::<ConfigMap>().is_none(), "another kind's store is not handed out");
    }
}
