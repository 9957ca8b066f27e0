//! ClusterSecurityPolicy (`csp`): client authentication and encryption in transit of one broker
//! cluster (the Amazon MSK "update security" operation as a resource).

use k8s_openapi::apimachinery::pkg::apis::meta::v1::Condition;
use kube::CustomResource;
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use super::common::{default_rollout_timeout, ClusterRef, DeletionPolicy, Mounts, Operation, SecretRef, Verify};

/// Desired client authentication and encryption in transit for one broker cluster.
#[derive(CustomResource, Serialize, Deserialize, Clone, Debug, PartialEq, JsonSchema)]
#[kube(
    group = "clustersecurity.io",
    version = "v1alpha1",
    kind = "ClusterSecurityPolicy",
    namespaced,
    status = "ClusterSecurityPolicyStatus",
    shortname = "csp",
    category = "clustersecurity",
    doc = "ClusterSecurityPolicy: desired client authentication and encryption in transit for one broker cluster, applied as an MSK-style operation and rolled into its pods.",
    printcolumn(
        name = "Cluster",
        type_ = "string",
        json_path = ".spec.clusterRef.name",
        description = "Workload that runs the brokers"
    ),
    printcolumn(
        name = "Auth",
        type_ = "string",
        json_path = ".status.authentication",
        description = "Enabled client authentication methods"
    ),
    printcolumn(
        name = "Client-Broker",
        type_ = "string",
        json_path = ".spec.encryptionInTransit.clientBroker",
        description = "Client-broker encryption"
    ),
    printcolumn(
        name = "State",
        type_ = "string",
        json_path = ".status.clusterState",
        description = "ACTIVE, UPDATING or UNAVAILABLE"
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
pub struct ClusterSecurityPolicySpec {
    /// The broker cluster (StatefulSet or Deployment in this namespace) these settings apply to.
    pub cluster_ref: ClusterRef,
    /// Client authentication methods; at least one must be enabled.
    pub client_authentication: ClientAuthentication,
    /// Encryption between clients and brokers and between brokers.
    #[serde(default)]
    pub encryption_in_transit: EncryptionInTransit,
    /// Seconds a rollout may take before the operation fails with RolloutFailed.
    #[serde(default = "default_rollout_timeout")]
    #[schemars(range(min = 1))]
    pub rollout_timeout_seconds: u32,
    /// Retain (default): the Secrets and ConfigMaps this resource wrote stay when it is deleted.
    /// Delete: they are garbage-collected with it.
    #[serde(default)]
    pub deletion_policy: DeletionPolicy,
    /// How the policy's ConfigMap and client CA Secret get into the broker container
    /// (`/etc/kafka/security/config`, `/etc/kafka/security/client-ca`). Default: mounted in the
    /// first container.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mounts: Option<Mounts>,
    /// Whether, after a rollout, every broker pod's TLS listeners must present the certificate
    /// in place before the operation completes. Default: checked (`enabled: true`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub verify: Option<Verify>,
    /// When a Secret named in `clientAuthentication.tls.certificateAuthoritySecretRefs` changes,
    /// roll the new CA bundle out by itself (a new operation). Default false: a Warning event
    /// and the `SourceChanged` condition say the brokers trust an older bundle until the spec
    /// changes or the retry annotation is set.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub roll_on_source_change: bool,
    /// KRaft nodes that are also controllers (`process.roles=broker,controller`): their
    /// controller listener, kept in the rendered `listeners`, `listener.security.protocol.map`
    /// and `controller.listener.names` exactly as the quorum runs it. Required when the broker
    /// container declares one (`KAFKA_CONTROLLER_LISTENER_NAMES`); fixed once applied.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub controller_listener: Option<ControllerListener>,
}

/// A KRaft controller listener (`spec.controllerListener`).
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq, Hash, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct ControllerListener {
    /// Its name in `controller.listener.names`: upper-case letters, digits and `_`, not one of
    /// the operator's listener names. Default CONTROLLER.
    #[serde(default = "controller_name")]
    #[schemars(length(max = 64))]
    pub name: String,
    /// Its port; not one of the operator's (9091-9098). Default 9093.
    #[serde(default = "controller_port")]
    pub port: u16,
    /// PLAINTEXT (default, as Kafka's KRaft quick start) or SSL (mutual TLS with the internal
    /// certificate of a CertificateRotation).
    #[serde(default)]
    pub protocol: ControllerProtocol,
}

fn controller_name() -> String {
    "CONTROLLER".into()
}

fn controller_port() -> u16 {
    9093
}

impl ControllerProtocol {
    /// The name Kafka's properties use.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Plaintext => "PLAINTEXT",
            Self::Ssl => "SSL",
        }
    }
}

/// Security protocol of a KRaft controller listener.
// Schema types: a doc comment on a variant or field becomes a description in the CRD (a schema
// change); the names say it, and docs/api.md says the rest.
#[allow(missing_docs)]
#[derive(Serialize, Deserialize, Clone, Copy, Debug, Default, PartialEq, Eq, Hash, JsonSchema)]
pub enum ControllerProtocol {
    #[default]
    #[serde(rename = "PLAINTEXT")]
    Plaintext,
    #[serde(rename = "SSL")]
    Ssl,
}

/// Client authentication methods. Several may be enabled at once when the encryption settings
/// suit every one of them.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, Eq, Hash, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct ClientAuthentication {
    /// Clients connect without authenticating.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub unauthenticated: Option<Toggle>,
    /// Mutual TLS: clients present a certificate signed by a trusted CA.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tls: Option<TlsAuthentication>,
    /// SASL authentication (SCRAM, IAM-style token).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sasl: Option<SaslAuthentication>,
}

/// An on/off switch.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, Eq, Hash, JsonSchema)]
pub struct Toggle {
    /// Whether this method is enabled.
    #[serde(default)]
    pub enabled: bool,
}

/// Mutual TLS client authentication.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, Eq, Hash, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct TlsAuthentication {
    /// Whether mTLS is enabled.
    #[serde(default)]
    pub enabled: bool,
    /// Secrets (key `ca.crt`) holding the CAs that sign client certificates. When empty, the
    /// operator generates a client CA (kept in Secret `<clusterRef.name>-client-ca-key`) and
    /// publishes its certificate in Secret `<clusterRef.name>-client-ca`.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 16))]
    pub certificate_authority_secret_refs: Vec<SecretRef>,
    /// Client certificates the operator issues from the client CA it keeps (so not with
    /// `certificateAuthoritySecretRefs`), each into a Secret of this namespace: `tls.crt`,
    /// `tls.key`, `ca.crt` (the client CA). Renewed before they expire; the brokers do not roll
    /// for them.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 64))]
    pub clients: Vec<TlsClient>,
}

/// A client certificate issued on request (`spec.clientAuthentication.tls.clients[]`).
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, Eq, Hash, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct TlsClient {
    /// The certificate's common name (subject `CN=<name>,OU=clustersecurity-clients`): the
    /// client's principal is `User:<name>`. Letters, digits, `.`, `_`, `-`; at most 64; not the
    /// brokers' name nor a DNS name under it (rule ClientNotBroker).
    #[schemars(length(max = 64))]
    pub name: String,
    /// The Secret the operator writes it into (type `kubernetes.io/tls`).
    #[schemars(length(max = 253))]
    pub secret_name: String,
}

/// SASL client authentication mechanisms.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, Eq, Hash, JsonSchema)]
pub struct SaslAuthentication {
    /// SASL/SCRAM (SCRAM-SHA-512).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub scram: Option<Toggle>,
    /// SASL/IAM: token authentication (OAUTHBEARER), tokens validated against the issuer's keys.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub iam: Option<IamAuthentication>,
}

/// SASL/IAM (OAUTHBEARER) token authentication. The brokers accept only signed tokens (JWTs)
/// whose signature verifies with a key of `jwksEndpointUrl` and whose `iss` and `aud` claims
/// match; all three are required when enabled.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, Eq, Hash, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct IamAuthentication {
    /// Whether SASL/IAM is enabled.
    #[serde(default)]
    pub enabled: bool,
    /// The token issuer the brokers expect (the JWT `iss` claim), e.g.
    /// `https://login.example.com/tenant`. Rendered as `sasl.oauthbearer.expected.issuer`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(max = 512))]
    pub issuer: Option<String>,
    /// The audience the brokers expect (one of the JWT `aud` claim's values), e.g. `kafka`.
    /// Rendered as `sasl.oauthbearer.expected.audience`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(max = 256))]
    pub audience: Option<String>,
    /// The issuer's JSON Web Key Set (https), whose keys sign the tokens. Rendered as
    /// `sasl.oauthbearer.jwks.endpoint.url`; Kafka 3.9.1/4.0 and later also need it in the JVM
    /// system property `org.apache.kafka.sasl.oauthbearer.allowed.urls`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(max = 2048))]
    pub jwks_endpoint_url: Option<String>,
}

impl ClientAuthentication {
    /// Whether unauthenticated clients are allowed.
    pub fn unauthenticated_enabled(&self) -> bool {
        self.unauthenticated.as_ref().is_some_and(|t| t.enabled)
    }
    /// Whether clients may authenticate with a TLS certificate.
    pub fn tls_enabled(&self) -> bool {
        self.tls.as_ref().is_some_and(|t| t.enabled)
    }
    /// Whether clients may authenticate with SASL/SCRAM.
    pub fn scram_enabled(&self) -> bool {
        self.sasl.as_ref().and_then(|s| s.scram.as_ref()).is_some_and(|t| t.enabled)
    }
    /// Whether clients may authenticate with SASL/OAUTHBEARER (IAM).
    pub fn iam_enabled(&self) -> bool {
        self.iam().is_some()
    }
    /// The SASL/IAM settings, when enabled.
    pub fn iam(&self) -> Option<&IamAuthentication> {
        self.sasl.as_ref().and_then(|s| s.iam.as_ref()).filter(|t| t.enabled)
    }

    /// Enabled methods in the table's order, as shown in the AUTH column.
    pub fn enabled_methods(&self) -> Vec<AuthMethod> {
        let mut out = Vec::new();
        if self.unauthenticated_enabled() {
            out.push(AuthMethod::Unauthenticated);
        }
        if self.tls_enabled() {
            out.push(AuthMethod::MutualTls);
        }
        if self.scram_enabled() {
            out.push(AuthMethod::SaslScram);
        }
        if self.iam_enabled() {
            out.push(AuthMethod::SaslIam);
        }
        out
    }
}

/// One client authentication method (a row of the seed's compatibility table).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum AuthMethod {
    /// No authentication.
    Unauthenticated,
    /// A TLS client certificate.
    MutualTls,
    /// SASL/SCRAM.
    SaslScram,
    /// SASL/OAUTHBEARER with IAM tokens.
    SaslIam,
}

impl AuthMethod {
    /// Name used in messages and the AUTH column.
    pub fn label(self) -> &'static str {
        match self {
            Self::Unauthenticated => "unauthenticated",
            Self::MutualTls => "mTLS",
            Self::SaslScram => "SASL/SCRAM",
            Self::SaslIam => "SASL/IAM",
        }
    }
}

/// Encryption between clients and brokers.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, Default, PartialEq, Eq, Hash, JsonSchema)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum ClientBroker {
    /// TLS only.
    #[default]
    Tls,
    /// Both TLS and plaintext listeners.
    TlsPlaintext,
    /// Plaintext only.
    Plaintext,
}

impl ClientBroker {
    /// The value as the spec spells it.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Tls => "TLS",
            Self::TlsPlaintext => "TLS_PLAINTEXT",
            Self::Plaintext => "PLAINTEXT",
        }
    }
}

/// Encryption in transit.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq, Hash, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct EncryptionInTransit {
    /// Encryption between clients and brokers: TLS, TLS_PLAINTEXT or PLAINTEXT.
    #[serde(default)]
    pub client_broker: ClientBroker,
    /// Broker-to-broker encryption. Cannot be changed after creation.
    #[serde(default = "default_true")]
    pub in_cluster: bool,
}

impl Default for EncryptionInTransit {
    fn default() -> Self {
        Self { client_broker: ClientBroker::Tls, in_cluster: true }
    }
}

fn default_true() -> bool {
    true
}

/// Observed state of the broker cluster.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum ClusterState {
    /// Workload exists, rollout complete, all replicas ready.
    Active,
    /// A rollout is in progress.
    Updating,
    /// Workload missing or not ready.
    Unavailable,
}

/// A listener the brokers open for clients (MSK port convention).
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct Listener {
    /// PLAINTEXT, TLS, SASL_SCRAM or SASL_IAM.
    pub name: String,
    /// Port number.
    pub port: u16,
    /// Kafka security protocol of the listener.
    pub protocol: String,
    /// Client authentication on this listener.
    pub authentication: String,
}

/// The security settings an operation moves from and to.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct SecuritySettings {
    /// Client authentication.
    pub client_authentication: ClientAuthentication,
    /// Encryption in transit.
    pub encryption_in_transit: EncryptionInTransit,
    /// The KRaft controller listener kept in the configuration.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub controller_listener: Option<ControllerListener>,
}

/// Observed state of a ClusterSecurityPolicy.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct ClusterSecurityPolicyStatus {
    /// The workload this resource's operations target, fixed by its first operation
    /// (`spec.clusterRef` may not move to another one).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cluster_ref: Option<ClusterRef>,
    /// The metadata.generation this status describes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub observed_generation: Option<i64>,
    /// Ready, Reconciling and Stalled (kstatus).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub conditions: Vec<Condition>,
    /// Enabled authentication methods, comma separated.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub authentication: Option<String>,
    /// ACTIVE, UPDATING or UNAVAILABLE.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cluster_state: Option<ClusterState>,
    /// Listeners the applied settings open.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub listeners: Vec<Listener>,
    /// SHA-256 of the rendered artefacts last rolled into the pods (pod template annotation
    /// `clustersecurity.io/security-hash`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub security_hash: Option<String>,
    /// The settings currently applied to the brokers.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub applied: Option<SecuritySettings>,
    /// `spec.encryptionInTransit.inCluster` as the operator first saw it valid, recorded before
    /// anything else: the setting is fixed at creation (rule InClusterEncryptionImmutable), also
    /// without the webhook and before any operation is recorded.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub first_seen_in_cluster: Option<bool>,
    /// The operation running now, if any.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub current_operation: Option<Operation<SecuritySettings>>,
    /// The last 10 operations, newest first.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub operations: Vec<Operation<SecuritySettings>>,
}

super::common::operated!(ClusterSecurityPolicy, ClusterSecurityPolicyStatus, SecuritySettings);
