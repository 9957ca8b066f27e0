//! Why a reconcile could not finish, with the object it concerns and a [`Category`] that decides
//! how long the runner waits before the next try and labels `csop_reconcile_errors_total`.
//!
//! What a user must fix in the spec is never an [`Error`]: it is status (`Stalled` with a
//! reason). The categories here sort what stops a round from the outside — the API server, a
//! race, the operator's RBAC, an admission policy that refuses a write — from the operator's own
//! bugs.

use std::time::Duration;

/// An object, as messages name it: `Secret kafka/orders-kafka-external-tls`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Named {
    pub kind: &'static str,
    pub namespace: String,
    pub name: String,
}

impl std::fmt::Display for Named {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        if self.namespace.is_empty() {
            write!(f, "{} {}", self.kind, self.name)
        } else {
            write!(f, "{} {}/{}", self.kind, self.namespace, self.name)
        }
    }
}

impl Named {
    pub(crate) fn new(kind: &'static str, namespace: &str, name: &str) -> Self {
        Self { kind, namespace: namespace.into(), name: name.into() }
    }
}

/// Why a reconcile could not finish. Sources are boxed: errors travel the cold path, and a
/// small `Result` keeps every happy path cheap. Retried by the runner after the backoff of its
/// [`Category`].
#[derive(Debug, thiserror::Error)]
pub(crate) enum Error {
    #[error("reading {object}: {source}")]
    Read { object: Named, source: Box<kube::Error> },
    #[error("writing {object}: {source}")]
    Write { object: Named, source: Box<kube::Error> },
    #[error("writing the status of {object}: {source}")]
    WriteStatus { object: Named, source: Box<kube::Error> },
    #[error("writing the status of {object}: the object kept changing under {attempts} attempts")]
    StatusContention { object: Named, attempts: usize },
    #[error("encoding the status of {object}: {source}")]
    EncodeStatus { object: Named, source: serde_json::Error },
    #[error("patching the pod template of {workload}: {source}")]
    PatchTemplate { workload: String, source: Box<kube::Error> },
    #[error("issuing the {what}: {source}")]
    Issue { what: String, source: crate::pki::PkiError },
    #[error(
        "the CustomResourceDefinition {crd} is not installed in this cluster; install the CRDs with \
         `kubectl apply -f crds/` (or `cluster-security-operator crd | kubectl apply -f -`) and start again"
    )]
    CrdMissing { crd: String },
    #[error("checking that {crd} is installed: {source}")]
    CrdCheck { crd: String, source: Box<kube::Error> },
    /// A derived object's name is held by an object this resource may not write: the round
    /// ends in status (Stalled `NameConflict`), not in an error retried every few seconds.
    #[error("not writing {object}: {message}")]
    NameConflict { object: Named, message: String },
}

/// What kind of failure stopped a round: how soon trying again can help.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Category {
    /// The API server (or the network to it) failed, timed out or shed load: try again soon.
    Transient,
    /// A write lost a race (409, or the object kept changing): read again and retry at once.
    Conflict,
    /// The operator's RBAC does not allow the call (401/403): nothing changes until an
    /// administrator grants it, so look again rarely.
    Forbidden,
    /// The API server refused what was sent (400/422: an admission policy, a quota, a missing
    /// CRD): someone must change the cluster; look again rarely.
    UserFixable,
    /// The operator's own failure (encoding a status, issuing a certificate): a bug, retried in
    /// case it was not deterministic.
    Internal,
}

impl Category {
    /// Every category, in label order (the metric's series are created for each).
    pub const ALL: [Category; 5] =
        [Category::Transient, Category::Conflict, Category::Forbidden, Category::UserFixable, Category::Internal];

    /// The metric label.
    pub fn label(self) -> &'static str {
        match self {
            Category::Transient => "transient",
            Category::Conflict => "conflict",
            Category::Forbidden => "forbidden",
            Category::UserFixable => "user_fixable",
            Category::Internal => "internal",
        }
    }

    /// How long a round that failed this way waits before the next try.
    pub fn backoff(self) -> Duration {
        match self {
            Category::Transient => Duration::from_secs(5),
            Category::Conflict => Duration::from_secs(1),
            Category::Forbidden | Category::UserFixable => Duration::from_secs(60),
            Category::Internal => Duration::from_secs(30),
        }
    }

    /// The category of a failed API call.
    fn of(error: &kube::Error) -> Self {
        match error {
            kube::Error::Api(status) => match status.code {
                409 => Category::Conflict,
                401 | 403 => Category::Forbidden,
                400 | 422 => Category::UserFixable,
                _ => Category::Transient,
            },
            _ => Category::Transient,
        }
    }
}

impl Error {
    /// What kind of failure this is (the backoff and the metric label).
    pub(crate) fn category(&self) -> Category {
        match self {
            Error::Read { source, .. }
            | Error::Write { source, .. }
            | Error::WriteStatus { source, .. }
            | Error::PatchTemplate { source, .. }
            | Error::CrdCheck { source, .. } => Category::of(source),
            Error::StatusContention { .. } => Category::Conflict,
            Error::EncodeStatus { .. } | Error::Issue { .. } => Category::Internal,
            Error::CrdMissing { .. } | Error::NameConflict { .. } => Category::UserFixable,
        }
    }
}

/// Context for a failed API call: `api.get_opt(&name).await.reading(&named)?` instead of a
/// `map_err` that builds [`Error::Read`] by hand.
pub(crate) trait Noted<T> {
    /// The call read `object`.
    fn reading(self, object: &Named) -> Result<T, Error>;
    /// The call wrote `object`.
    fn writing(self, object: &Named) -> Result<T, Error>;
}

impl<T> Noted<T> for Result<T, kube::Error> {
    fn reading(self, object: &Named) -> Result<T, Error> {
        self.map_err(|source| Error::Read { object: object.clone(), source: Box::new(source) })
    }

    fn writing(self, object: &Named) -> Result<T, Error> {
        self.map_err(|source| Error::Write { object: object.clone(), source: Box::new(source) })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn api(code: u16) -> Box<kube::Error> {
        let mut status = kube::core::Status::failure("m", "r");
        status.code = code;
        Box::new(kube::Error::Api(status.boxed()))
    }

    #[test]
    fn each_failure_has_a_category_and_its_backoff() {
        let object = Named::new("Secret", "ns", "s");
        let read = |code| Error::Read { object: object.clone(), source: api(code) };
        assert_eq!(read(409).category(), Category::Conflict);
        assert_eq!(read(403).category(), Category::Forbidden);
        assert_eq!(read(401).category(), Category::Forbidden);
        assert_eq!(read(422).category(), Category::UserFixable);
        assert_eq!(read(500).category(), Category::Transient);
        assert_eq!(read(429).category(), Category::Transient);
        assert_eq!(Error::StatusContention { object: object.clone(), attempts: 3 }.category(), Category::Conflict);
        assert_eq!(Error::CrdMissing { crd: "x".into() }.category(), Category::UserFixable);
        // Unchanged for what the API server could not answer.
        assert_eq!(Category::Transient.backoff(), Duration::from_secs(5));
        assert!(Category::Conflict.backoff() < Category::Transient.backoff());
        assert!(Category::Forbidden.backoff() > Category::Internal.backoff());
        let labels: Vec<_> = Category::ALL.iter().map(|c| c.label()).collect();
        assert_eq!(labels, ["transient", "conflict", "forbidden", "user_fixable", "internal"]);
    }

    #[test]
    fn context_names_the_object_and_keeps_the_source() {
        let object = Named::new("ConfigMap", "kafka", "trust");
        let r: Result<(), kube::Error> = Err(*api(403));
        let e = r.reading(&object).unwrap_err();
        assert!(matches!(&e, Error::Read { object: o, .. } if *o == object));
        assert_eq!(e.category(), Category::Forbidden);
        let r: Result<(), kube::Error> = Err(*api(500));
        let e = r.writing(&object).unwrap_err();
        assert!(e.to_string().starts_with("writing ConfigMap kafka/trust: "), "{e}");
    }
}
