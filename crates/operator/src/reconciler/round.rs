//! One reconcile round of one object: the object as read, the time, the status being decided,
//! the events to publish, and every write of the round — the status (a checkpoint, or the final
//! write), the workload's pod template (annotations and wiring, one apply), the pods an OnDelete
//! rollout replaces, and the Secrets and ConfigMaps a kind's plan derives ([`Artefact`], applied
//! under the rule of [`derived`](super::derived)).
//!
//! The writes go through a [`Writer`]: against the API server in production, or into a list of
//! [`Effect`]s in unit tests, so the operation driver and a kind's plans are tested without an
//! API server.

use std::collections::BTreeMap;
use std::sync::Arc;

use cluster_security_api::{ClusterRef, OperationRecord};
use k8s_openapi::jiff::Timestamp;
use kube::runtime::events::EventType;
use kube::{Api, Client, ResourceExt};

use super::events::Events;
use super::{conditions, status, workload, Error, Health, Named, Reconcile};

/// A write the kit made (recorded in unit tests).
#[derive(Debug, Clone, PartialEq)]
pub(crate) enum Effect {
    /// The status as written.
    Status(serde_json::Value),
    /// Pod-template annotations applied to the workload.
    Template(BTreeMap<String, String>),
    /// A pod deleted (StatefulSet OnDelete rollout).
    DeletePod(String),
    /// A write of a Secret or ConfigMap the kind derives.
    Artefact(Artefact),
    /// A ConfigMap server-side applied in another namespace (namespace, body).
    ConfigMapIn(String, serde_json::Value),
}

/// A kind's write of one of its Secrets or ConfigMaps (in the object's namespace): what a
/// kind's plan decides, carried out by [`Round::write`].
#[derive(Debug, Clone, PartialEq)]
pub(crate) enum Artefact {
    /// Server-side apply this body (built with `derived::metadata`) under the rule of
    /// `derived::apply`: `Error::NameConflict` when the object of that name is not the round's
    /// object's to write.
    Apply(ArtefactKind, serde_json::Value),
    /// Merge a patch into the object of this name (a key dropped).
    Patch(ArtefactKind, String, serde_json::Value),
}

/// What a kind derives.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum ArtefactKind {
    Secret,
    ConfigMap,
}

impl ArtefactKind {
    pub(crate) fn name(self) -> &'static str {
        match self {
            ArtefactKind::Secret => "Secret",
            ArtefactKind::ConfigMap => "ConfigMap",
        }
    }
}

impl Artefact {
    pub(crate) fn secret(body: serde_json::Value) -> Self {
        Self::Apply(ArtefactKind::Secret, body)
    }

    pub(crate) fn configmap(body: serde_json::Value) -> Self {
        Self::Apply(ArtefactKind::ConfigMap, body)
    }
}

/// Where the round's writes go.
// One per round, never stored in bulk: the size of the API variant costs nothing.
#[allow(clippy::large_enum_variant)]
pub(crate) enum Writer<K> {
    Api {
        api: Api<K>,
        client: Client,
        /// The object as last stored: the next status write is guarded by its resourceVersion.
        stored: Arc<K>,
    },
    /// Unit tests: every write is recorded and succeeds.
    #[cfg_attr(not(test), allow(dead_code))]
    Record(Vec<Effect>),
}

impl<K: Reconcile> Writer<K> {
    pub(crate) fn api(api: Api<K>, client: Client, stored: Arc<K>) -> Self {
        Self::Api { api, client, stored }
    }
}

/// One reconcile of one object.
pub(crate) struct Round<K: Reconcile> {
    /// The object as read at the start of the round.
    pub obj: Arc<K>,
    /// The round's one instant: every time it records is this.
    pub now: Timestamp,
    /// The status being decided, starting from the stored one.
    pub status: K::Status,
    /// Events to publish after the status write.
    pub events: Events,
    writer: Writer<K>,
}

impl<K: Reconcile> Round<K> {
    pub(crate) fn new(obj: Arc<K>, now: Timestamp, writer: Writer<K>) -> Self {
        let status = obj.status().cloned().unwrap_or_default();
        Self { obj, now, status, events: Events::new(), writer }
    }

    /// The object's namespace ("" for cluster-scoped kinds).
    pub(crate) fn namespace(&self) -> String {
        self.obj.namespace().unwrap_or_default()
    }

    pub(crate) fn generation(&self) -> Option<i64> {
        self.obj.meta().generation
    }

    pub(crate) fn event(&mut self, type_: EventType, reason: impl Into<String>, note: impl Into<String>) {
        self.events.push((type_, reason.into(), note.into()));
    }

    /// Set the conditions for `health` and the generation they describe.
    pub(crate) fn conclude(&mut self, health: &Health) {
        let generation = self.generation();
        let conditions = conditions::apply(self.status.conditions(), health, generation, self.now);
        self.status.set_conditions(conditions);
        self.status.set_observed_generation(generation);
    }

    /// Write the status as decided so far (nothing when it is unchanged). Used mid-round to
    /// record work before doing it, and once at the end of every round.
    pub(crate) async fn checkpoint(&mut self) -> Result<(), Error> {
        match &mut self.writer {
            Writer::Api { api, stored, .. } => {
                if let Some(now_stored) = status::write_diff(api, stored.as_ref(), &self.status).await? {
                    *stored = Arc::new(now_stored);
                }
                Ok(())
            }
            Writer::Record(effects) => {
                let value = serde_json::to_value(&self.status).map_err(|source| Error::EncodeStatus {
                    object: Named::new(
                        super::kind_of::<K>(),
                        &self.obj.namespace().unwrap_or_default(),
                        &self.obj.name_any(),
                    ),
                    source,
                })?;
                effects.push(Effect::Status(value));
                Ok(())
            }
        }
    }

    /// Apply `annotations` and `wiring` to the pod template of `target` (in the object's
    /// namespace).
    pub(crate) async fn apply_template(
        &mut self,
        target: &ClusterRef,
        annotations: &BTreeMap<String, String>,
        wiring: &super::wiring::Wiring,
    ) -> Result<(), Error> {
        let namespace = self.namespace();
        match &mut self.writer {
            Writer::Api { client, .. } => {
                workload::apply_template(client, &namespace, target, annotations, wiring).await.map_err(|source| {
                    Error::PatchTemplate { workload: workload::describe(&namespace, target), source: Box::new(source) }
                })
            }
            Writer::Record(effects) => {
                effects.push(Effect::Template(annotations.clone()));
                Ok(())
            }
        }
    }

    /// A condition of the kind's own that appears the first time it turns True and stays (False)
    /// after: True with `truth`'s (reason, message), else False with `otherwise`'s — only once
    /// it exists. Returns whether it was True before, for the caller's event on the turn.
    pub(crate) fn sticky_condition(
        &mut self,
        type_: &str,
        truth: Option<(&str, &str)>,
        otherwise: (&str, &str),
    ) -> bool {
        let was = conditions::get(self.status.conditions(), type_).map(|c| c.status == "True");
        if truth.is_none() && was.is_none() {
            return false;
        }
        let (status, (reason, message)) = (truth.is_some(), truth.unwrap_or(otherwise));
        self.set_condition(type_, status, reason, message);
        was == Some(true)
    }

    /// Set a condition of the kind's own (besides Ready/Reconciling/Stalled) for this round's
    /// generation and time.
    pub(crate) fn set_condition(&mut self, type_: &str, status: bool, reason: &str, message: &str) {
        let (now, generation) = (self.now, self.generation());
        let mut conds = self.status.conditions().to_vec();
        conditions::set(&mut conds, type_, status, reason, message, generation, now);
        self.status.set_conditions(conds);
    }

    /// Delete pod `name` (in the object's namespace) so that its StatefulSet recreates it from
    /// the current template; one already gone is fine.
    pub(crate) async fn delete_pod(&mut self, name: &str) -> Result<(), Error> {
        let namespace = self.namespace();
        match &mut self.writer {
            Writer::Api { client, .. } => {
                let pods = Api::<k8s_openapi::api::core::v1::Pod>::namespaced(client.clone(), &namespace);
                match pods.delete(name, &Default::default()).await {
                    Ok(_) => Ok(()),
                    Err(kube::Error::Api(e)) if e.code == 404 => Ok(()),
                    Err(source) => {
                        Err(Error::Write { object: Named::new("Pod", &namespace, name), source: Box::new(source) })
                    }
                }
            }
            Writer::Record(effects) => {
                effects.push(Effect::DeletePod(name.to_string()));
                Ok(())
            }
        }
    }

    /// Carry out `artefacts`, in order (the first failure ends it).
    pub(crate) async fn write(&mut self, artefacts: Vec<Artefact>) -> Result<(), Error> {
        for artefact in artefacts {
            self.write_one(artefact).await?;
        }
        Ok(())
    }

    async fn write_one(&mut self, artefact: Artefact) -> Result<(), Error> {
        use k8s_openapi::api::core::v1::{ConfigMap, Secret};
        let namespace = self.namespace();
        match &mut self.writer {
            Writer::Api { client, .. } => match &artefact {
                Artefact::Apply(ArtefactKind::Secret, body) => {
                    super::derived::apply::<Secret, K>(client, self.obj.as_ref(), body).await
                }
                Artefact::Apply(ArtefactKind::ConfigMap, body) => {
                    super::derived::apply::<ConfigMap, K>(client, self.obj.as_ref(), body).await
                }
                Artefact::Patch(kind, name, patch) => {
                    use super::Noted as _;
                    let (params, patch) = (kube::api::PatchParams::default(), kube::api::Patch::Merge(patch));
                    let written = match kind {
                        ArtefactKind::Secret => Api::<Secret>::namespaced(client.clone(), &namespace)
                            .patch(name, &params, &patch)
                            .await
                            .map(drop),
                        ArtefactKind::ConfigMap => Api::<ConfigMap>::namespaced(client.clone(), &namespace)
                            .patch(name, &params, &patch)
                            .await
                            .map(drop),
                    };
                    written.writing(&Named::new(kind.name(), &namespace, name))
                }
            },
            Writer::Record(effects) => {
                effects.push(Effect::Artefact(artefact));
                Ok(())
            }
        }
    }

    /// Server-side apply the ConfigMap `body` in namespace `namespace` (a kind's copy outside its
    /// own namespace, where the rule of derived objects cannot reach: the kind checks whose it
    /// is and puts its resourceVersion in `body`). The API's error is the caller's to report.
    pub(crate) async fn apply_configmap_in(
        &mut self,
        namespace: &str,
        body: &serde_json::Value,
    ) -> Result<(), kube::Error> {
        match &mut self.writer {
            Writer::Api { client, .. } => {
                let name = body["metadata"]["name"].as_str().unwrap_or_default();
                let params = kube::api::PatchParams::apply(cluster_security_api::FIELD_MANAGER).force();
                let api = Api::<k8s_openapi::api::core::v1::ConfigMap>::namespaced(client.clone(), namespace);
                api.patch(name, &params, &kube::api::Patch::Apply(body)).await.map(drop)
            }
            Writer::Record(effects) => {
                effects.push(Effect::ConfigMapIn(namespace.to_string(), body.clone()));
                Ok(())
            }
        }
    }

    /// The writes recorded so far (unit tests).
    #[cfg(test)]
    pub(crate) fn effects(&self) -> &[Effect] {
        match &self.writer {
            Writer::Record(effects) => effects,
            Writer::Api { .. } => &[],
        }
    }
}
