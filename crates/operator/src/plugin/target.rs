//! `<kind>/<name>` as the plugin's commands take it: the three kinds under any of the names
//! kubectl knows them by (kind, singular, plural, short name, with or without the group), and
//! the object it names, read (GET) and annotated (merge patch on metadata) — nothing else.

use kube::api::{Patch, PatchParams};
use kube::Api;

use super::{Cluster, Failure};
use crate::api::{CertificateRotation, ClusterSecurityPolicy, KmsKeyVaultMode};

/// One of the operator's kinds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Kind {
    Csp,
    CertRot,
    KmsMode,
}

impl Kind {
    /// The kind's name (`kind:` in YAML).
    pub(super) fn kind(self) -> &'static str {
        match self {
            Self::Csp => "ClusterSecurityPolicy",
            Self::CertRot => "CertificateRotation",
            Self::KmsMode => "KmsKeyVaultMode",
        }
    }

    /// The resource name kubectl takes (`kubectl annotate <this> …`).
    pub(super) fn resource(self) -> &'static str {
        match self {
            Self::Csp => "clustersecuritypolicy",
            Self::CertRot => "certificaterotation",
            Self::KmsMode => "kmskeyvaultmode",
        }
    }

    pub(super) fn short(self) -> &'static str {
        match self {
            Self::Csp => "csp",
            Self::CertRot => "certrot",
            Self::KmsMode => "kmsmode",
        }
    }

    pub(super) fn namespaced(self) -> bool {
        !matches!(self, Self::KmsMode)
    }
}

/// A parsed `<kind>/<name>`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Ref {
    pub kind: Kind,
    pub name: String,
}

impl Ref {
    pub(super) fn parse(text: &str) -> Result<Self, String> {
        let usage = "name the object as <kind>/<name>: csp/<name>, certrot/<name> or kmsmode/<name> (long forms clustersecuritypolicy, certificaterotation, kmskeyvaultmode)";
        let Some((kind, name)) = text.split_once('/') else {
            return Err(format!("{text:?} has no kind: {usage}"));
        };
        let kind = kind.to_ascii_lowercase();
        let kind = kind.strip_suffix(".clustersecurity.io").unwrap_or(&kind);
        let kind = match kind {
            "csp" | "clustersecuritypolicy" | "clustersecuritypolicies" => Kind::Csp,
            "certrot" | "certificaterotation" | "certificaterotations" => Kind::CertRot,
            "kmsmode" | "kmskeyvaultmode" | "kmskeyvaultmodes" => Kind::KmsMode,
            other => return Err(format!("unknown kind {other:?}: {usage}")),
        };
        if name.is_empty() || name.contains('/') {
            return Err(format!("{text:?} has no valid name: {usage}"));
        }
        Ok(Self { kind, name: name.to_string() })
    }
}

/// One of our objects, as read.
#[derive(Debug, Clone)]
pub(crate) enum Object {
    Csp(Box<ClusterSecurityPolicy>),
    CertRot(Box<CertificateRotation>),
    KmsMode(Box<KmsKeyVaultMode>),
}

impl Object {
    pub(super) fn meta(&self) -> &k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta {
        match self {
            Self::Csp(o) => &o.metadata,
            Self::CertRot(o) => &o.metadata,
            Self::KmsMode(o) => &o.metadata,
        }
    }
}

/// Where `r` lives: its namespace (None for a cluster-scoped kind) and a name for messages
/// (`certificaterotation kafka/certs`).
pub(crate) fn place(r: &Ref, namespace: &str) -> (Option<String>, String) {
    if r.kind.namespaced() {
        (Some(namespace.to_string()), format!("{} {namespace}/{}", r.kind.resource(), r.name))
    } else {
        (None, format!("{} {}", r.kind.resource(), r.name))
    }
}

/// Read the object `r` names.
pub(crate) async fn fetch(cluster: &Cluster, r: &Ref, namespace: Option<&str>, what: &str) -> Result<Object, Failure> {
    let fail = |e| Failure::kube(what, e);
    let (client, ns) = (cluster.client.clone(), namespace.unwrap_or_default());
    Ok(match r.kind {
        Kind::Csp => Object::Csp(Box::new(Api::namespaced(client, ns).get(&r.name).await.map_err(fail)?)),
        Kind::CertRot => Object::CertRot(Box::new(Api::namespaced(client, ns).get(&r.name).await.map_err(fail)?)),
        Kind::KmsMode => Object::KmsMode(Box::new(Api::all(client).get(&r.name).await.map_err(fail)?)),
    })
}

/// A JSON merge patch of the object `r` names (the plugin patches annotations only).
pub(crate) async fn merge_patch(
    cluster: &Cluster,
    r: &Ref,
    namespace: Option<&str>,
    body: &serde_json::Value,
    what: &str,
) -> Result<(), Failure> {
    let (params, patch) = (PatchParams::default(), Patch::Merge(body));
    let fail = |e| Failure::kube(what, e);
    let (client, ns) = (cluster.client.clone(), namespace.unwrap_or_default());
    match r.kind {
        Kind::Csp => {
            Api::<ClusterSecurityPolicy>::namespaced(client, ns).patch(&r.name, &params, &patch).await.map_err(fail)?;
        }
        Kind::CertRot => {
            Api::<CertificateRotation>::namespaced(client, ns).patch(&r.name, &params, &patch).await.map_err(fail)?;
        }
        Kind::KmsMode => {
            Api::<KmsKeyVaultMode>::all(client).patch(&r.name, &params, &patch).await.map_err(fail)?;
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use kube::core::Resource as _;

    #[test]
    fn kinds_by_every_name_kubectl_knows() {
        for (text, kind) in [
            ("csp/orders", Kind::Csp),
            ("ClusterSecurityPolicy/orders", Kind::Csp),
            ("clustersecuritypolicies.clustersecurity.io/orders", Kind::Csp),
            ("certrot/orders", Kind::CertRot),
            ("certificaterotation/orders", Kind::CertRot),
            ("kmsmode/orders", Kind::KmsMode),
            ("KmsKeyVaultModes/orders", Kind::KmsMode),
        ] {
            assert_eq!(Ref::parse(text), Ok(Ref { kind, name: "orders".into() }), "{text}");
        }
        assert!(Ref::parse("orders").unwrap_err().contains("<kind>/<name>"));
        assert!(Ref::parse("pod/orders").unwrap_err().contains("unknown kind \"pod\""));
        assert!(Ref::parse("csp/").is_err() && Ref::parse("csp/a/b").is_err());
    }

    #[test]
    fn names_match_the_crds() {
        // A renamed kind fails here, not in a user's terminal.
        assert_eq!(Kind::Csp.kind(), ClusterSecurityPolicy::kind(&()));
        assert_eq!(Kind::CertRot.kind(), CertificateRotation::kind(&()));
        assert_eq!(Kind::KmsMode.kind(), KmsKeyVaultMode::kind(&()));
        for k in [Kind::Csp, Kind::CertRot, Kind::KmsMode] {
            assert_eq!(k.resource(), k.kind().to_ascii_lowercase(), "kubectl's singular name");
            assert_eq!(Ref::parse(&format!("{}/x", k.short())).unwrap().kind, k);
        }
        assert!(!KmsKeyVaultMode::url_path(&(), None).contains("namespaces"), "cluster-scoped");
        assert!(!Kind::KmsMode.namespaced() && Kind::Csp.namespaced() && Kind::CertRot.namespaced());
    }
}
