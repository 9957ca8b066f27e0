//! The volumes and mounts that carry a kind's artefacts (its ConfigMap, its Secrets) into the
//! broker container of the workload's pod template (`spec.mounts`). Pure: what the template
//! holds ([`TemplateMounts`], read with the workload), whether the wiring is in place, and the
//! `volumes`/`containers` of the server-side apply that puts it there ([`TemplateMounts::apply`]);
//! `workload.rs` writes it, together with the pod-template annotations, so that a change of both
//! rolls the pods once.
//!
//! Every kind applies under the same field manager, and an apply drops the manager's fields it
//! does not name: so each apply carries the volumes and mounts the *other* kind added (all
//! named [`VOLUME_PREFIX`]`…`), and leaves out only those of its own kind it no longer wants.

use std::collections::{BTreeMap, BTreeSet};

use cluster_security_api::Mounts;
use k8s_openapi::api::core::v1::PodSpec;
use serde_json::{json, Value};

/// Prefix of every volume (and mount) name the operator adds.
pub(crate) const VOLUME_PREFIX: &str = "csop-";

/// Where a mounted volume's files come from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Source {
    ConfigMap(String),
    Secret(String),
    /// A downward API volume with one file, `name`, holding the pod's name.
    PodName,
}

/// The file of a [`Source::PodName`] volume.
pub(crate) const POD_NAME_FILE: &str = "name";

/// One volume mounted read-only at `path` in the broker container.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Mount {
    /// Volume (and mount) name; starts with [`VOLUME_PREFIX`].
    pub volume: &'static str,
    pub source: Source,
    pub path: &'static str,
}

/// What a kind wants mounted, in which container.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub(crate) struct Wiring {
    /// The container by name; `None`: the pod template's first.
    pub container: Option<String>,
    /// Wanted now (empty when the spec opts out).
    pub mounts: Vec<Mount>,
    /// Every volume name this kind may add: those not wanted now are removed.
    pub owned: &'static [&'static str],
}

impl Wiring {
    /// `mounts` as `spec.mounts` asks: into its container, or none when it opts out.
    pub(crate) fn new(spec: Option<&Mounts>, mounts: Vec<Mount>, owned: &'static [&'static str]) -> Self {
        Self {
            container: spec.and_then(|m| m.container.clone()),
            mounts: if Mounts::enabled(spec) { mounts } else { Vec::new() },
            owned,
        }
    }
}

/// Whether a downward API volume is the operator's pod-name volume.
fn is_pod_name(d: &k8s_openapi::api::core::v1::DownwardAPIVolumeSource) -> bool {
    let items = d.items.as_deref().unwrap_or_default();
    items.len() == 1
        && items[0].path == POD_NAME_FILE
        && items[0].field_ref.as_ref().is_some_and(|f| f.field_path == "metadata.name")
}

/// What a pod template holds that concerns the wiring.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub(crate) struct TemplateMounts {
    /// Container names, in order.
    pub containers: Vec<String>,
    /// The operator's volumes (named [`VOLUME_PREFIX`]…) and their sources.
    pub volumes: BTreeMap<String, Source>,
    /// The operator's mounts: (container, volume, path).
    pub mounts: BTreeSet<(String, String, String)>,
    /// Paths someone else mounts: (container, path). The operator never mounts over them.
    pub taken: BTreeSet<(String, String)>,
    /// Each container's environment variables with a literal value (what the broker image's
    /// configuration says the brokers run now), by container.
    pub env: BTreeMap<String, BTreeMap<String, String>>,
    /// Every Secret and ConfigMap the template names — in any volume (projected too) or
    /// environment reference, the operator's or not: ("Secret" | "ConfigMap", name).
    pub referenced: BTreeSet<(&'static str, String)>,
}

impl TemplateMounts {
    /// Read from a pod template's spec.
    pub(crate) fn from_pod_spec(spec: Option<&PodSpec>) -> Self {
        let mut out = Self::default();
        let Some(spec) = spec else { return out };
        for v in spec.volumes.iter().flatten() {
            if let Some(name) = v.secret.as_ref().and_then(|s| s.secret_name.clone()) {
                out.referenced.insert(("Secret", name));
            }
            if let Some(cm) = &v.config_map {
                out.referenced.insert(("ConfigMap", cm.name.clone()));
            }
            for p in v.projected.iter().flat_map(|p| p.sources.iter().flatten()) {
                if let Some(s) = &p.secret {
                    out.referenced.insert(("Secret", s.name.clone()));
                }
                if let Some(cm) = &p.config_map {
                    out.referenced.insert(("ConfigMap", cm.name.clone()));
                }
            }
        }
        for c in spec.containers.iter().chain(spec.init_containers.iter().flatten()) {
            for from in c.env_from.iter().flatten() {
                if let Some(s) = &from.secret_ref {
                    out.referenced.insert(("Secret", s.name.clone()));
                }
                if let Some(cm) = &from.config_map_ref {
                    out.referenced.insert(("ConfigMap", cm.name.clone()));
                }
            }
            for value in c.env.iter().flatten().filter_map(|e| e.value_from.as_ref()) {
                if let Some(s) = &value.secret_key_ref {
                    out.referenced.insert(("Secret", s.name.clone()));
                }
                if let Some(cm) = &value.config_map_key_ref {
                    out.referenced.insert(("ConfigMap", cm.name.clone()));
                }
            }
        }
        for v in spec.volumes.iter().flatten().filter(|v| v.name.starts_with(VOLUME_PREFIX)) {
            let source = match (&v.config_map, &v.secret, &v.downward_api) {
                (Some(cm), _, _) => Source::ConfigMap(cm.name.clone()),
                (None, Some(s), _) => Source::Secret(s.secret_name.clone().unwrap_or_default()),
                (None, None, Some(d)) if is_pod_name(d) => Source::PodName,
                // Not a shape the operator writes: treat it as someone else's.
                _ => continue,
            };
            out.volumes.insert(v.name.clone(), source);
        }
        for c in &spec.containers {
            out.containers.push(c.name.clone());
            let literal = c.env.iter().flatten().filter_map(|e| Some((e.name.clone(), e.value.clone()?)));
            out.env.insert(c.name.clone(), literal.collect());
            for m in c.volume_mounts.iter().flatten() {
                if m.name.starts_with(VOLUME_PREFIX) {
                    out.mounts.insert((c.name.clone(), m.name.clone(), m.mount_path.clone()));
                } else {
                    out.taken.insert((c.name.clone(), m.mount_path.clone()));
                }
            }
        }
        out
    }

    /// The container `wiring` mounts into, or why there is none.
    pub(crate) fn target(&self, wiring: &Wiring) -> Result<String, String> {
        match &wiring.container {
            Some(name) if self.containers.contains(name) => Ok(name.clone()),
            Some(name) => Err(format!(
                "the pod template has no container {name:?} (it has {}); set spec.mounts.container to one of them, or spec.mounts.enabled: false to mount the artefacts yourself",
                self.containers.join(", ")
            )),
            None => self.containers.first().cloned().ok_or_else(|| "the pod template has no container".to_string()),
        }
    }

    /// The mounts of `wiring` the operator adds: all but those at a path someone else mounts.
    fn wanted<'w>(&self, wiring: &'w Wiring, target: &str) -> Vec<&'w Mount> {
        wiring.mounts.iter().filter(|m| !self.taken.contains(&(target.to_string(), m.path.to_string()))).collect()
    }

    /// Whether the template holds exactly this kind's wanted wiring (others' is not looked at).
    /// A template without the wanted container counts as in place: there is nothing to apply.
    pub(crate) fn in_place(&self, wiring: &Wiring) -> bool {
        let Ok(target) = self.target(wiring) else { return true };
        let wanted = self.wanted(wiring, &target);
        let present = wanted.iter().all(|m| {
            self.volumes.get(m.volume) == Some(&m.source)
                && self.mounts.contains(&(target.clone(), m.volume.to_string(), m.path.to_string()))
        });
        let unwanted = |name: &str| wiring.owned.contains(&name) && !wanted.iter().any(|m| m.volume == name);
        let stale = self.volumes.keys().any(|v| unwanted(v)) || self.mounts.iter().any(|(_, v, _)| unwanted(v));
        present && !stale
    }

    /// The `volumes` and `containers` of the apply: what the other kind added, carried as it
    /// is, and this kind's wanted mounts. Empty lists when there is nothing (the apply then
    /// leaves those fields out, which removes what the operator had there).
    pub(crate) fn apply(&self, wiring: &Wiring) -> (Vec<Value>, Vec<Value>) {
        let mine = |name: &str| wiring.owned.contains(&name);
        let mut volumes: BTreeMap<String, &Source> =
            self.volumes.iter().filter(|(v, _)| !mine(v)).map(|(v, s)| (v.clone(), s)).collect();
        let mut by_container: BTreeMap<String, BTreeSet<(String, String)>> = BTreeMap::new();
        for (c, v, p) in self.mounts.iter().filter(|(_, v, _)| !mine(v)) {
            by_container.entry(c.clone()).or_default().insert((v.clone(), p.clone()));
        }
        if let Ok(target) = self.target(wiring) {
            for m in self.wanted(wiring, &target) {
                volumes.insert(m.volume.to_string(), &m.source);
                by_container.entry(target.clone()).or_default().insert((m.volume.to_string(), m.path.to_string()));
            }
        }
        let volumes = volumes
            .into_iter()
            .map(|(name, source)| match source {
                Source::ConfigMap(cm) => json!({"name": name, "configMap": {"name": cm}}),
                Source::Secret(s) => json!({"name": name, "secret": {"secretName": s}}),
                Source::PodName => json!({"name": name, "downwardAPI": {"items": [
                    {"path": POD_NAME_FILE, "fieldRef": {"fieldPath": "metadata.name"}}
                ]}}),
            })
            .collect();
        // In the template's container order, so the apply reads like the template.
        let containers = self
            .containers
            .iter()
            .filter_map(|c| by_container.get(c).map(|mounts| (c, mounts)))
            .map(|(c, mounts)| {
                let mounts: Vec<Value> =
                    mounts.iter().map(|(v, p)| json!({"name": v, "mountPath": p, "readOnly": true})).collect();
                json!({"name": c, "volumeMounts": mounts})
            })
            .collect();
        (volumes, containers)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const OWNED_A: &[&str] = &["csop-a", "csop-a2"];

    fn template(spec: Value) -> TemplateMounts {
        TemplateMounts::from_pod_spec(Some(&serde_json::from_value(spec).unwrap()))
    }

    fn wiring(container: Option<&str>, mounts: Vec<Mount>) -> Wiring {
        Wiring { container: container.map(String::from), mounts, owned: OWNED_A }
    }

    fn a() -> Mount {
        Mount { volume: "csop-a", source: Source::Secret("kafka-a".into()), path: "/etc/a" }
    }

    #[test]
    fn every_secret_and_config_map_the_template_names_is_known_whoever_mounts_it() {
        let t = template(json!({
            "volumes": [
                {"name": "mine", "secret": {"secretName": "user-tls"}},
                {"name": "bundle", "projected": {"sources": [{"configMap": {"name": "kafka-external-trust"}}, {"secret": {"name": "kafka-internal-tls"}}]}}
            ],
            "initContainers": [{"name": "init", "envFrom": [{"configMapRef": {"name": "kafka-security"}}]}],
            "containers": [{"name": "kafka", "env": [{"name": "K", "valueFrom": {"secretKeyRef": {"name": "kafka-client-ca", "key": "ca.crt"}}}]}]
        }));
        let names: Vec<(&str, &str)> = t.referenced.iter().map(|(k, n)| (*k, n.as_str())).collect();
        assert_eq!(
            names,
            [
                ("ConfigMap", "kafka-external-trust"),
                ("ConfigMap", "kafka-security"),
                ("Secret", "kafka-client-ca"),
                ("Secret", "kafka-internal-tls"),
                ("Secret", "user-tls")
            ]
        );
    }

    #[test]
    fn wires_the_first_container_and_carries_what_the_other_kind_added() {
        let t = template(json!({
            "containers": [
                {"name": "kafka", "volumeMounts": [{"name": "csop-b", "mountPath": "/etc/b"}, {"name": "data", "mountPath": "/data"}]},
                {"name": "sidecar"}
            ],
            "volumes": [{"name": "csop-b", "configMap": {"name": "kafka-b", "defaultMode": 420}}, {"name": "data", "emptyDir": {}}]
        }));
        let w = wiring(None, vec![a()]);
        assert!(!t.in_place(&w));
        let (volumes, containers) = t.apply(&w);
        assert_eq!(
            volumes,
            vec![
                json!({"name": "csop-a", "secret": {"secretName": "kafka-a"}}),
                json!({"name": "csop-b", "configMap": {"name": "kafka-b"}}),
            ],
            "ours added, the other kind's carried, the user's own left to the user"
        );
        assert_eq!(
            containers,
            vec![json!({"name": "kafka", "volumeMounts": [
                {"name": "csop-a", "mountPath": "/etc/a", "readOnly": true},
                {"name": "csop-b", "mountPath": "/etc/b", "readOnly": true},
            ]})]
        );
    }

    #[test]
    fn in_place_once_applied_and_not_after_an_opt_out_or_a_removal() {
        let applied = template(json!({
            "containers": [{"name": "sidecar"}, {"name": "kafka", "volumeMounts": [{"name": "csop-a", "mountPath": "/etc/a", "readOnly": true}]}],
            "volumes": [{"name": "csop-a", "secret": {"secretName": "kafka-a", "defaultMode": 420}}]
        }));
        assert!(applied.in_place(&wiring(Some("kafka"), vec![a()])));
        assert!(!applied.in_place(&wiring(None, vec![a()])), "mounted in the wrong container");
        let opted_out = wiring(Some("kafka"), vec![]);
        assert!(!applied.in_place(&opted_out), "an opt-out removes ours");
        assert_eq!(applied.apply(&opted_out), (vec![], vec![]), "nothing left to apply");
        let other_secret = Mount { source: Source::Secret("other".into()), ..a() };
        assert!(!applied.in_place(&wiring(Some("kafka"), vec![other_secret])), "a changed source");
        let removed = template(json!({"containers": [{"name": "kafka"}], "volumes": []}));
        assert!(!removed.in_place(&wiring(Some("kafka"), vec![a()])));
    }

    #[test]
    fn never_mounts_over_a_path_someone_else_mounts_and_names_a_missing_container() {
        let t = template(json!({
            "containers": [{"name": "kafka", "volumeMounts": [{"name": "my-certs", "mountPath": "/etc/a"}]}],
            "volumes": [{"name": "my-certs", "secret": {"secretName": "mine"}}]
        }));
        let w = wiring(None, vec![a()]);
        assert!(t.in_place(&w), "the user wired that path: nothing to add");
        assert_eq!(t.apply(&w), (vec![], vec![]));
        let err = t.target(&wiring(Some("broker"), vec![a()])).unwrap_err();
        assert!(err.contains("no container \"broker\"") && err.contains("kafka"), "{err}");
    }
}
