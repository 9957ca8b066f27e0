//! CertificateRotation (`certrot`): external and internal certificates of one broker cluster,
//! rotated by changing a label (the Event Streams "updating certificates" procedure).

use k8s_openapi::apimachinery::pkg::apis::meta::v1::Condition;
use kube::CustomResource;
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use super::common::{default_rollout_timeout, ClusterRef, DeletionPolicy, Mounts, Operation, Verify};

/// Default certificate validity for self-signed certificates.
pub const DEFAULT_VALIDITY_DAYS: u32 = 365;
/// Default validity of a CA the operator keeps.
pub const DEFAULT_CA_VALIDITY_DAYS: u32 = 3650;
/// Default of how long before its expiry a kept CA is renewed.
pub const DEFAULT_CA_RENEWAL_DAYS: u32 = 30;
/// Default of how long the previous CA stays trusted after a CA change.
pub const DEFAULT_OLD_CA_RETENTION_SECONDS: u32 = 86_400;

fn default_ca_validity_days() -> u32 {
    DEFAULT_CA_VALIDITY_DAYS
}

fn default_ca_renewal_days() -> u32 {
    DEFAULT_CA_RENEWAL_DAYS
}

fn default_validity_days() -> u32 {
    DEFAULT_VALIDITY_DAYS
}

/// Certificates of one broker cluster. Changing a label re-issues (or reloads) that certificate
/// and rolls it into the pods.
#[derive(CustomResource, Serialize, Deserialize, Clone, Debug, PartialEq, JsonSchema)]
#[kube(
    group = "clustersecurity.io",
    version = "v1alpha1",
    kind = "CertificateRotation",
    namespaced,
    status = "CertificateRotationStatus",
    shortname = "certrot",
    category = "clustersecurity",
    doc = "CertificateRotation: external and internal certificates of one broker cluster, rotated by changing a label.",
    printcolumn(
        name = "Cluster",
        type_ = "string",
        json_path = ".spec.clusterRef.name",
        description = "Workload that runs the brokers"
    ),
    printcolumn(
        name = "External-Label",
        type_ = "string",
        json_path = ".spec.external.label",
        description = "Label of the external certificate"
    ),
    printcolumn(
        name = "Internal-Label",
        type_ = "string",
        json_path = ".spec.internal.label",
        description = "Label of the internal certificate"
    ),
    printcolumn(
        name = "Client-Impact",
        type_ = "string",
        json_path = ".status.external.clientImpact",
        description = "Whether clients must update their trust"
    ),
    printcolumn(
        name = "Operation",
        type_ = "string",
        json_path = ".status.operations[0].operationState",
        description = "State of the latest operation"
    ),
    printcolumn(name = "Ready", type_ = "string", json_path = ".status.conditions[?(@.type==\"Ready\")].status"),
    printcolumn(name = "Reason", type_ = "string", json_path = ".status.conditions[?(@.type==\"Ready\")].reason"),
    printcolumn(name = "Age", type_ = "date", json_path = ".metadata.creationTimestamp")
)]
#[serde(rename_all = "camelCase")]
pub struct CertificateRotationSpec {
    /// The broker cluster (StatefulSet or Deployment in this namespace) whose certificates these are.
    pub cluster_ref: ClusterRef,
    /// Certificate clients see (Kafka bootstrap ports, REST endpoints).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub external: Option<ExternalCertificate>,
    /// Certificate for TLS between the pods; can only be self-generated.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub internal: Option<InternalCertificate>,
    /// Seconds a rollout may take before the operation fails with RolloutFailed.
    #[serde(default = "default_rollout_timeout")]
    #[schemars(range(min = 1))]
    pub rollout_timeout_seconds: u32,
    /// Retain (default): the Secrets and ConfigMaps this resource wrote stay when it is deleted.
    /// Delete: they are garbage-collected with it.
    #[serde(default)]
    pub deletion_policy: DeletionPolicy,
    /// How the TLS Secrets get into the broker container (`/etc/kafka/security/external-tls`,
    /// `/etc/kafka/security/internal-tls`). Default: mounted in the first container.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mounts: Option<Mounts>,
    /// Whether, after a rollout, every broker pod's TLS listeners must present the certificate
    /// in place before the operation completes. Default: checked (`enabled: true`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub verify: Option<Verify>,
    /// The CAs the operator keeps for self-signed certificates (external and internal): their
    /// validity and when they are renewed. A renewal changes the CA, so it runs trust first.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ca: Option<CaSettings>,
    /// Seconds the previous CA stays trusted after the brokers switched to a certificate from a
    /// new CA (in the brokers' internal truststore and the clients' trust bundle); then it is
    /// removed (an automatic change: inside `maintenanceWindows`). Default 86400.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub old_ca_retention_seconds: Option<u32>,
    /// When automatic changes may roll the brokers: renewals of self-signed certificates and
    /// kept CAs, and removing a previous CA. Cron expressions of five fields (minute hour
    /// day-of-month month day-of-week, UTC); a change may start during any minute one matches.
    /// Empty (default): at any time. Label changes and the renew annotations roll at once.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 20), inner(length(max = 100)))]
    pub maintenance_windows: Vec<String>,
    /// Copies of the external trust bundle (`<cluster>-external-trust`, same name and keys) for
    /// clients in other namespaces, kept current — during a CA change too (like trust-manager's
    /// Bundle). A namespace receives one only when its Namespace object consents with the
    /// annotation `clustersecurity.io/accept-trust-from: <this namespace>` (or `*`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub trust_distribution: Option<TrustDistribution>,
}

/// Where the external trust bundle is copied to (`spec.trustDistribution`): the namespaces
/// listed and those whose labels match, each only if it consents
/// (`clustersecurity.io/accept-trust-from`).
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct TrustDistribution {
    /// Namespaces by name.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 100), inner(length(max = 63)))]
    pub namespaces: Vec<String>,
    /// Namespaces whose labels include all of these (needs a cluster-wide install).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub namespace_selector: Option<NamespaceSelector>,
}

/// Namespaces by label.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct NamespaceSelector {
    /// Labels a namespace must carry, all of them.
    #[serde(default)]
    pub match_labels: std::collections::BTreeMap<String, String>,
}

/// Validity and renewal of the CAs the operator keeps (`spec.ca`).
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct CaSettings {
    /// Validity of a new CA in days.
    #[serde(default = "default_ca_validity_days")]
    #[schemars(range(min = 2, max = 36500))]
    pub validity_days: u32,
    /// A CA is renewed this many days before it expires (less than validityDays).
    #[serde(default = "default_ca_renewal_days")]
    #[schemars(range(min = 1, max = 36499))]
    pub renewal_days: u32,
}

impl Default for CaSettings {
    fn default() -> Self {
        Self { validity_days: DEFAULT_CA_VALIDITY_DAYS, renewal_days: DEFAULT_CA_RENEWAL_DAYS }
    }
}

/// Where a certificate comes from.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, Default, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "lowercase")]
pub enum CertificateType {
    /// Issued by the operator from a CA it keeps across rotations.
    #[default]
    Selfsigned,
    /// Base64-encoded PEM values given in this spec.
    Provided,
    /// Read from a Secret in this namespace.
    Secret,
}

impl CertificateType {
    /// The value as the spec spells it.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Selfsigned => "selfsigned",
            Self::Provided => "provided",
            Self::Secret => "secret",
        }
    }
}

/// Key algorithm of self-signed certificates and of the CA the operator keeps for them.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, Default, PartialEq, Eq, JsonSchema)]
pub enum KeyAlgorithm {
    /// ECDSA on P-256 with SHA-256: small, fast, what current clients prefer.
    #[default]
    #[serde(rename = "ECDSAP256")]
    EcdsaP256,
    /// RSA 2048 with SHA-256 (PKCS#1 v1.5), for clients that cannot use ECDSA.
    #[serde(rename = "RSA2048")]
    Rsa2048,
    /// RSA 3072.
    #[serde(rename = "RSA3072")]
    Rsa3072,
    /// RSA 4096.
    #[serde(rename = "RSA4096")]
    Rsa4096,
}

impl KeyAlgorithm {
    /// The value as the spec spells it.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::EcdsaP256 => "ECDSAP256",
            Self::Rsa2048 => "RSA2048",
            Self::Rsa3072 => "RSA3072",
            Self::Rsa4096 => "RSA4096",
        }
    }

    /// RSA modulus bits, None for ECDSA.
    pub fn rsa_bits(self) -> Option<usize> {
        match self {
            Self::EcdsaP256 => None,
            Self::Rsa2048 => Some(2048),
            Self::Rsa3072 => Some(3072),
            Self::Rsa4096 => Some(4096),
        }
    }
}

/// The external certificate.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct ExternalCertificate {
    /// Any valid Kubernetes label value; a new value re-issues the certificate and rolls the pods.
    #[schemars(length(max = 63))]
    pub label: String,
    /// selfsigned (default), provided or secret.
    #[serde(rename = "type", default)]
    pub type_: CertificateType,
    /// type secret: name of the Secret holding the certificates.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(max = 253))]
    pub secret_name: Option<String>,
    /// type secret: key name of the private key in the Secret (default `key`);
    /// type provided: the base64-encoded PEM private key.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(max = 65536))]
    pub key: Option<String>,
    /// type secret: key name of the certificate (default `cert`);
    /// type provided: the base64-encoded PEM certificate.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(max = 65536))]
    pub cert: Option<String>,
    /// type secret: key name of the CA root certificate (default `cacert`);
    /// type provided: the base64-encoded PEM CA root certificate.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(max = 65536))]
    pub cacert: Option<String>,
    /// selfsigned: subject alternative names (default: the workload's service DNS names).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 100), inner(length(max = 253)))]
    pub dns_names: Vec<String>,
    /// selfsigned: validity of issued certificates in days.
    #[serde(default = "default_validity_days")]
    #[schemars(range(min = 1, max = 3650))]
    pub validity_days: u32,
    /// selfsigned: ECDSAP256 (default), RSA2048, RSA3072 or RSA4096 — for the certificate and
    /// the kept CA (a change renews the CA, trust first).
    #[serde(default, skip_serializing_if = "is_default_algorithm")]
    pub key_algorithm: KeyAlgorithm,
    /// type secret: when the Secret's certificate changes (cert-manager renewed it), start a new
    /// operation by itself, without a label change. Default false: a Warning event and the
    /// `SourceChanged` condition say the brokers run older material until the label changes.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub roll_on_source_change: bool,
    /// Trust first: when a new certificate is signed by a different CA (`clientImpact:
    /// TrustUpdateRequired`), the operator publishes the new CA next to the old one in the trust
    /// bundle and waits this long before the brokers switch — or until the annotation
    /// `clustersecurity.io/client-trust-updated` names the operation (clients have it). Default
    /// 86400 (a day); 0 switches at once (clients without the new CA are cut off).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub trust_transition_seconds: Option<u32>,
}

/// A change of CA, trust first (`status.trustTransition`): the new CA is trusted everywhere
/// before any broker presents a certificate from it, and the old one is removed only later.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct TrustTransition {
    /// The operation that changes the CA.
    pub operation_id: String,
    /// SHA-256 fingerprint of the new external CA (absent: the external CA does not change).
    #[serde(default, rename = "newCaFingerprintSHA256", skip_serializing_if = "Option::is_none")]
    pub new_ca_fingerprint_sha256: Option<String>,
    /// SHA-256 fingerprint of the new internal CA (absent: the internal CA does not change).
    #[serde(default, rename = "internalNewCaFingerprintSHA256", skip_serializing_if = "Option::is_none")]
    pub internal_new_ca_fingerprint_sha256: Option<String>,
    /// Where the change is: TrustRolling, WaitingForClients, Switching, OldCaRetained,
    /// OldCaRemoved (in this order; `kubectl wait --for=jsonpath=...`).
    #[serde(default = "TrustPhase::recorded_without_phase")]
    pub phase: TrustPhase,
    /// When the new CA was published next to the previous one (RFC 3339).
    pub published_at: String,
    /// When the brokers switch unless clients are confirmed earlier (RFC 3339).
    pub switch_at: String,
    /// When the brokers started to switch (RFC 3339): confirmed, or `switchAt` reached.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub switched_at: Option<String>,
    /// When the previous CA is removed from the trust (RFC 3339; `oldCaRetentionSeconds`
    /// after the switch, in a maintenance window).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub old_ca_removal_at: Option<String>,
}

/// The phases of a CA change, in order.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, Default, PartialEq, Eq, PartialOrd, Ord, JsonSchema)]
pub enum TrustPhase {
    /// The brokers roll to trust the new internal CA next to the old one (certificates unchanged).
    #[default]
    TrustRolling,
    /// The new external CA is published to clients; the brokers wait for them.
    WaitingForClients,
    /// The brokers roll to certificates from the new CA(s); both CAs stay trusted.
    Switching,
    /// Switched; the previous CA is still trusted until `oldCaRemovalAt`.
    OldCaRetained,
    /// The previous CA is no longer trusted anywhere.
    OldCaRemoved,
}

impl TrustPhase {
    /// A transition recorded by a version without phases was waiting for clients (or past it):
    /// read so, it is never switched before clients are confirmed.
    pub fn recorded_without_phase() -> Self {
        Self::WaitingForClients
    }

    /// The value as the status spells it.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::TrustRolling => "TrustRolling",
            Self::WaitingForClients => "WaitingForClients",
            Self::Switching => "Switching",
            Self::OldCaRetained => "OldCaRetained",
            Self::OldCaRemoved => "OldCaRemoved",
        }
    }
}

/// The internal (pod-to-pod) certificate. Internal certificates can only be self-generated.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct InternalCertificate {
    /// Any valid Kubernetes label value; a new value re-issues the certificate and rolls the pods.
    #[schemars(length(max = 63))]
    pub label: String,
    /// Only selfsigned is allowed.
    #[serde(rename = "type", default)]
    pub type_: CertificateType,
    /// Subject alternative names (default: the workload's service DNS names).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 100), inner(length(max = 253)))]
    pub dns_names: Vec<String>,
    /// Validity of issued certificates in days.
    #[serde(default = "default_validity_days")]
    #[schemars(range(min = 1, max = 3650))]
    pub validity_days: u32,
    /// ECDSAP256 (default), RSA2048, RSA3072 or RSA4096 — for the certificate and the kept CA
    /// (a change renews the CA, trust first).
    #[serde(default, skip_serializing_if = "is_default_algorithm")]
    pub key_algorithm: KeyAlgorithm,
}

fn is_default_algorithm(a: &KeyAlgorithm) -> bool {
    *a == KeyAlgorithm::EcdsaP256
}

/// Whether clients must change what they trust after a rotation.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, JsonSchema)]
pub enum ClientImpact {
    /// The new certificate chains to the same CA as the old one: clients keep working.
    None,
    /// The CA changed: clients must trust the new CA.
    TrustUpdateRequired,
}

/// The certificate in force for one of external/internal (never key material).
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct CertificateStatus {
    /// Label the certificate was issued for.
    pub label: String,
    /// selfsigned, provided or secret.
    #[serde(rename = "type")]
    pub type_: CertificateType,
    /// Serial number, hex.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub serial_number: Option<String>,
    /// Expiry (RFC 3339).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub not_after: Option<String>,
    /// SHA-256 fingerprint of the certificate.
    #[serde(default, rename = "fingerprintSHA256", skip_serializing_if = "Option::is_none")]
    pub fingerprint_sha256: Option<String>,
    /// SHA-256 fingerprint of the CA certificate it chains to.
    #[serde(default, rename = "caFingerprintSHA256", skip_serializing_if = "Option::is_none")]
    pub ca_fingerprint_sha256: Option<String>,
    /// Expiry of that CA certificate (RFC 3339).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ca_not_after: Option<String>,
    /// Key algorithm of the certificate (ECDSAP256, RSA2048, …; absent: another or unknown).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub key_algorithm: Option<KeyAlgorithm>,
    /// When the operator re-issues a self-signed certificate on its own (RFC 3339): two thirds
    /// into its validity.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub renewal_time: Option<String>,
    /// None or TrustUpdateRequired, compared with the certificate it replaced.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub client_impact: Option<ClientImpact>,
}

/// Labels and types an operation moves from and to.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct CertificateSettings {
    /// Label of the external certificate (absent: no external certificate).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub external_label: Option<String>,
    /// Type of the external certificate: selfsigned, provided or secret.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub external_type: Option<CertificateType>,
    /// Label of the internal certificate (absent: no internal certificate).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub internal_label: Option<String>,
}

/// Observed state of a CertificateRotation.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct CertificateRotationStatus {
    /// The workload this resource's operations target, fixed by its first operation
    /// (`spec.clusterRef` may not move to another one).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cluster_ref: Option<ClusterRef>,
    /// Hash of the certificates last rolled into the pods (pod template annotation
    /// `clustersecurity.io/certificate-hash`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub certificate_hash: Option<String>,
    /// The metadata.generation this status describes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub observed_generation: Option<i64>,
    /// Ready, Reconciling and Stalled (kstatus).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub conditions: Vec<Condition>,
    /// The external certificate in force.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub external: Option<CertificateStatus>,
    /// The internal certificate in force.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub internal: Option<CertificateStatus>,
    /// The value of the `clustersecurity.io/renew` annotation last acted on.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub renew_request: Option<String>,
    /// The value of the `clustersecurity.io/renew-ca` annotation last acted on.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ca_renew_request: Option<String>,
    /// The namespaces holding a current copy of the trust bundle (`spec.trustDistribution`).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub trust_distributed_to: Vec<String>,
    /// The last change of CA, run trust first (`trustTransitionSeconds`, `oldCaRetentionSeconds`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub trust_transition: Option<TrustTransition>,
    /// The operation running now, if any.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub current_operation: Option<Operation<CertificateSettings>>,
    /// The last 10 operations, newest first.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub operations: Vec<Operation<CertificateSettings>>,
}

super::common::operated!(CertificateRotation, CertificateRotationStatus, CertificateSettings);
