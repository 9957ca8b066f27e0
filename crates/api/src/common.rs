//! Types shared by the three kinds: the workload reference, the MSK-style operation record and
//! the status conventions (observedGeneration, kstatus conditions).

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

/// Default for `spec.rolloutTimeoutSeconds`.
pub const DEFAULT_ROLLOUT_TIMEOUT_SECONDS: u32 = 600;

pub(crate) fn default_rollout_timeout() -> u32 {
    DEFAULT_ROLLOUT_TIMEOUT_SECONDS
}

/// What happens to the Secrets and ConfigMaps a resource wrote when the resource is deleted.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, Default, PartialEq, Eq, JsonSchema)]
pub enum DeletionPolicy {
    /// They stay (the brokers keep mounting them; a re-created resource for the same cluster
    /// reuses the kept CAs, so clients keep their trust). The default, as cert-manager and
    /// Strimzi keep certificates by default.
    #[default]
    Retain,
    /// They are garbage-collected with the resource (owner references).
    Delete,
}

/// How the operator puts what it writes into the broker pods (`spec.mounts`).
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct Mounts {
    /// Add the volumes and read-only mounts that carry this resource's ConfigMap and Secrets to
    /// the workload's pod template (server-side apply; put back if removed; the paths are in the
    /// docs). false: you mount them yourself, and the operator removes the ones it had added.
    /// Default true.
    #[serde(default = "yes")]
    pub enabled: bool,
    /// The container that gets the mounts, by name. Default: the pod template's first container.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(max = 63))]
    pub container: Option<String>,
}

fn yes() -> bool {
    true
}

impl Mounts {
    /// Whether `mounts` (absent: the defaults) asks for the wiring.
    pub fn enabled(mounts: Option<&Mounts>) -> bool {
        mounts.is_none_or(|m| m.enabled)
    }
}

/// Whether the operator checks the brokers on the wire before an operation completes
/// (`spec.verify`). An object like `spec.mounts` rather than `verify: Off`: YAML 1.1 (kubectl)
/// reads an unquoted `Off` as the boolean false, YAML 1.2 (kustomize) as a string.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct Verify {
    /// true (default): after the pods run the new template, connect to every broker pod's TLS
    /// listeners (as the brokers' `server.properties` names them) and check that each presents
    /// the certificate of the Secret its keystore points to, with a chain that verifies against
    /// that Secret's CA; the operation completes (Ready) only then. false: do not connect (the
    /// operator cannot reach the brokers, e.g. a NetworkPolicy); the operation completes when
    /// the pods run the new template, and its record says nothing was checked.
    #[serde(default = "yes")]
    pub enabled: bool,
}

impl Verify {
    /// Whether `verify` (absent: the defaults) asks for the check.
    pub fn enabled(verify: Option<&Verify>) -> bool {
        verify.is_none_or(|v| v.enabled)
    }
}

/// Kind of workload that runs the brokers.
// Schema types: a doc comment on a variant or field becomes a description in the CRD (a schema
// change); the names say it, and docs/api.md says the rest.
#[allow(missing_docs)]
#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, JsonSchema)]
pub enum WorkloadKind {
    StatefulSet,
    Deployment,
}

/// The broker cluster: a StatefulSet or Deployment in the same namespace as this resource.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq, JsonSchema)]
pub struct ClusterRef {
    /// Kind of the workload: StatefulSet or Deployment.
    pub kind: WorkloadKind,
    /// Name of the workload in this resource's namespace.
    #[schemars(length(max = 253))]
    pub name: String,
}

/// Reference to a Secret in the same namespace.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq, Hash, JsonSchema)]
pub struct SecretRef {
    /// Name of the Secret.
    #[schemars(length(max = 253))]
    pub name: String,
}

/// What kind of change an operation carries out.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
#[allow(clippy::enum_variant_names)]
// Schema types: a doc comment on a variant or field becomes a description in the CRD (a schema
// change); the names say it, and docs/api.md says the rest.
#[allow(missing_docs)]
pub enum OperationType {
    UpdateSecurity,
    RotateCertificates,
    UpdateKmsKeyVaultMode,
}

/// Lifecycle of an operation (the MSK cluster-operation states).
#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum OperationState {
    /// Recorded, waiting for the cluster to become ACTIVE.
    Pending,
    /// Artefacts are being written and pods rolled.
    UpdateInProgress,
    /// Applied and verified.
    UpdateComplete,
    /// Stopped with an error; see errorInfo.
    UpdateFailed,
}

impl OperationState {
    /// True for UPDATE_COMPLETE and UPDATE_FAILED.
    pub fn is_terminal(self) -> bool {
        matches!(self, Self::UpdateComplete | Self::UpdateFailed)
    }
}

/// Why an operation failed.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq, JsonSchema)]
pub struct ErrorInfo {
    /// Machine-readable code, e.g. RolloutFailed.
    pub code: String,
    /// What went wrong and how to fix it.
    pub message: String,
}

/// One change rolled out by the operator, like `aws kafka describe-cluster-operation` shows it.
/// `I` is the kind's settings type, recorded before (sourceInfo) and after (targetInfo).
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase", bound(deserialize = "I: Deserialize<'de>", serialize = "I: Serialize"))]
pub struct Operation<I> {
    /// Unique id (UUID) of this operation.
    pub operation_id: String,
    /// What the operation changes.
    pub operation_type: OperationType,
    /// Where the operation is in its lifecycle.
    pub operation_state: OperationState,
    /// When the operation was recorded (RFC 3339).
    pub creation_time: String,
    /// When the operation moved to UPDATE_IN_PROGRESS (RFC 3339); the rollout deadline counts from here.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub start_time: Option<String>,
    /// When the rollout deadline (`rolloutTimeoutSeconds`) counts from, when not `startTime`:
    /// moved forward while a StatefulSet's `partition` holds the rollout back (RFC 3339).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub deadline_from: Option<String>,
    /// When the operation reached UPDATE_COMPLETE or UPDATE_FAILED (RFC 3339).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub end_time: Option<String>,
    /// The metadata.generation of the resource the operation was created for.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub generation: Option<i64>,
    /// The settings in force before the operation.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub source_info: Option<I>,
    /// The settings the operation applies.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub target_info: Option<I>,
    /// Why the operation failed; only when UPDATE_FAILED.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error_info: Option<ErrorInfo>,
    /// The resource's `clustersecurity.io/retry` annotation when the operation was recorded: a
    /// failed operation is tried again, without a spec change, once that annotation changes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub retry_request: Option<String>,
    /// Rolling kinds: what was checked on the wire before the operation completed (which pods
    /// and listeners presented the expected certificate), or why nothing was (`spec.verify: Off`,
    /// no TLS listener configured).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub verification: Option<String>,
    /// Rolling kinds: whether the last look followed no roll — a `partition` held the rollout
    /// back, or a phase done and verified waits for the next — so the rollout deadline does not
    /// run until a look follows a roll again (which moves `deadlineFrom` to then).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub deadline_paused: Option<bool>,
}

/// Annotation whose new value re-runs a failed operation without a spec change (like Flux's
/// `reconcile.fluxcd.io/requestedAt`).
pub const RETRY_ANNOTATION: &str = "clustersecurity.io/retry";
/// Annotation that stops every change the operator makes for a resource while it reads
/// `paused` (like Flux's `suspend`).
pub const RECONCILE_ANNOTATION: &str = "clustersecurity.io/reconcile";
/// CertificateRotation: a new value renews the certificates now, without a label change (like
/// `cmctl renew`): self-signed ones are issued again by the kept CA, a `type: secret` one is read
/// again from its Secret; the pods roll once.
pub const RENEW_ANNOTATION: &str = "clustersecurity.io/renew";
/// CertificateRotation: the id of the operation whose new CA clients now trust; the brokers
/// switch to it without waiting out `trustTransitionSeconds`.
pub const CLIENT_TRUST_UPDATED_ANNOTATION: &str = "clustersecurity.io/client-trust-updated";
/// CertificateRotation: a new value renews the CAs the operator keeps now (outside any
/// maintenance window), through the phased trust-first path; once per value.
pub const RENEW_CA_ANNOTATION: &str = "clustersecurity.io/renew-ca";

/// How many finished operations `status.operations` keeps.
pub const OPERATION_HISTORY: usize = 10;

/// The current operation and the history, borrowed to move an operation on and record it.
pub type RecordMut<'a, I> = (&'a mut Option<Operation<I>>, &'a mut Vec<Operation<I>>);

/// What every kind's status shares: conditions, the generation they describe, and the
/// operation record (the current operation and the history, newest first).
pub trait OperationRecord {
    /// What an operation of this kind moves from and to (`sourceInfo`/`targetInfo`).
    type Info: Clone + PartialEq + Serialize + Send + Sync + 'static;
    /// The kstatus conditions (`Ready`, `Reconciling`, `Stalled`) and the kind's own.
    fn conditions(&self) -> &[k8s_openapi::apimachinery::pkg::apis::meta::v1::Condition];
    /// Replace the conditions.
    fn set_conditions(&mut self, conditions: Vec<k8s_openapi::apimachinery::pkg::apis::meta::v1::Condition>);
    /// The generation the conditions describe.
    fn set_observed_generation(&mut self, generation: Option<i64>);
    /// The operation in flight, if any.
    fn current_operation(&self) -> Option<&Operation<Self::Info>>;
    /// The current operation and the history, to move an operation on and record it.
    fn record_mut(&mut self) -> RecordMut<'_, Self::Info>;
    /// Finished operations, newest first.
    fn history(&self) -> &[Operation<Self::Info>];
    /// State of the newest operation: the current one, else the newest in the history.
    fn newest_operation_state(&self) -> Option<OperationState> {
        self.current_operation().or(self.history().first()).map(|o| o.operation_state)
    }
}

/// A kind whose status is an [`OperationRecord`].
pub trait Operated {
    /// The kind's status type.
    type Status: OperationRecord + Default + Clone + Serialize + Send + Sync + 'static;
    /// The status, once the operator has written one.
    fn status(&self) -> Option<&Self::Status>;
}

/// Implements [`Operated`] and [`OperationRecord`] for a kind whose status has the shared fields.
macro_rules! operated {
    ($kind:ty, $status:ty, $info:ty) => {
        impl $crate::common::OperationRecord for $status {
            type Info = $info;
            fn conditions(&self) -> &[k8s_openapi::apimachinery::pkg::apis::meta::v1::Condition] {
                &self.conditions
            }
            fn set_conditions(&mut self, conditions: Vec<k8s_openapi::apimachinery::pkg::apis::meta::v1::Condition>) {
                self.conditions = conditions;
            }
            fn set_observed_generation(&mut self, generation: Option<i64>) {
                self.observed_generation = generation;
            }
            fn current_operation(&self) -> Option<&$crate::common::Operation<$info>> {
                self.current_operation.as_ref()
            }
            fn record_mut(&mut self) -> $crate::common::RecordMut<'_, $info> {
                (&mut self.current_operation, &mut self.operations)
            }
            fn history(&self) -> &[$crate::common::Operation<$info>] {
                &self.operations
            }
        }
        impl $crate::common::Operated for $kind {
            type Status = $status;
            fn status(&self) -> Option<&$status> {
                self.status.as_ref()
            }
        }
    };
}
pub(crate) use operated;
