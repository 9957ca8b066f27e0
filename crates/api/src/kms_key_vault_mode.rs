//! KmsKeyVaultMode (`kmsmode`, cluster-scoped): switch the key vault behind KMS etcd encryption
//! between public and private network access (the AKS procedure as a resource).

use k8s_openapi::apimachinery::pkg::apis::meta::v1::Condition;
use kube::CustomResource;
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use super::common::Operation;

/// Default `spec.reencryption.concurrency`: the most Secrets rewritten at once; the operator
/// adapts below it to the API server's latency and throttling.
pub const DEFAULT_REENCRYPTION_CONCURRENCY: u32 = 64;
/// Default `spec.reencryption.pageSize`.
pub const DEFAULT_REENCRYPTION_PAGE_SIZE: u32 = 500;
/// Default `spec.rollbackAfterSeconds`: the longest KMS may stay off during a switch. Ten
/// minutes: two AKS KMS updates (off, then on; a few minutes each) and a rewrite of the Secrets
/// fit, while every Secret written meanwhile is stored in plaintext (docs/kmskeyvaultmode.md).
pub const DEFAULT_ROLLBACK_AFTER_SECONDS: u32 = 600;

/// Desired network access of the key vault behind the cluster's KMS etcd encryption.
#[derive(CustomResource, Serialize, Deserialize, Clone, Debug, PartialEq, JsonSchema)]
#[kube(
    group = "clustersecurity.io",
    version = "v1alpha1",
    kind = "KmsKeyVaultMode",
    status = "KmsKeyVaultModeStatus",
    shortname = "kmsmode",
    category = "clustersecurity",
    doc = "KmsKeyVaultMode: switch the key vault behind KMS etcd encryption between public and private network access.",
    printcolumn(
        name = "Mode",
        type_ = "string",
        json_path = ".spec.networkAccess",
        description = "Desired key vault network access"
    ),
    printcolumn(
        name = "KMS",
        type_ = "string",
        json_path = ".status.kms",
        description = "KMS on the cluster: Enabled or Disabled"
    ),
    printcolumn(
        name = "Phase",
        type_ = "string",
        json_path = ".status.phase",
        description = "Step running now, or Idle"
    ),
    printcolumn(
        name = "Progress",
        type_ = "string",
        json_path = ".status.progress",
        description = "Secrets re-encrypted of total"
    ),
    printcolumn(name = "Ready", type_ = "string", json_path = ".status.conditions[?(@.type==\"Ready\")].status"),
    printcolumn(name = "Reason", type_ = "string", json_path = ".status.conditions[?(@.type==\"Ready\")].reason"),
    printcolumn(name = "Age", type_ = "date", json_path = ".metadata.creationTimestamp")
)]
#[serde(rename_all = "camelCase")]
pub struct KmsKeyVaultModeSpec {
    /// Public or Private network access of the key vault.
    pub network_access: NetworkAccess,
    /// Key used for KMS: `https://<vault>.vault.azure.net/keys/<name>/<version>`.
    #[schemars(length(max = 512))]
    pub key_id: String,
    /// Resource id of the key vault:
    /// `/subscriptions/<id>/resourceGroups/<group>/providers/Microsoft.KeyVault/vaults/<vault>`.
    /// Required for Private.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(max = 512))]
    pub key_vault_resource_id: Option<String>,
    /// The cloud API that manages the cluster and the vault.
    pub provider: KmsProvider,
    /// How Secrets are rewritten.
    #[serde(default)]
    pub reencryption: ReencryptionSettings,
    /// The longest KMS may stay off during a switch (60-86400 s, default 600). Once DisableKms
    /// has succeeded, a failing later step is retried with backoff; if KMS is not back on this
    /// long after it went off (or a step keeps failing), the operator restores the settings the
    /// operation started from and ends it UPDATE_FAILED.
    #[serde(default = "default_rollback_after_seconds")]
    #[schemars(range(min = 60, max = 86400))]
    pub rollback_after_seconds: u32,
}

fn default_rollback_after_seconds() -> u32 {
    DEFAULT_ROLLBACK_AFTER_SECONDS
}

/// Key vault network access.
// Schema types: a doc comment on a variant or field becomes a description in the CRD (a schema
// change); the names say it, and docs/api.md says the rest.
#[allow(missing_docs)]
#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, JsonSchema)]
pub enum NetworkAccess {
    Public,
    Private,
}

/// The cloud provider; exactly one must be set.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, Eq, JsonSchema)]
pub struct KmsProvider {
    /// Azure Resource Manager.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub azure: Option<AzureProvider>,
}

/// The AKS managed cluster.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct AzureProvider {
    /// Subscription id (a GUID).
    #[schemars(length(max = 36))]
    pub subscription_id: String,
    /// Resource group of the managed cluster.
    #[schemars(length(max = 90))]
    pub resource_group: String,
    /// Name of the managed cluster.
    #[schemars(length(max = 63))]
    pub cluster_name: String,
}

/// Tuning of the Secret rewrite.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct ReencryptionSettings {
    /// The most Secrets rewritten at once (1-64). The operator starts at 8 (or this, if lower)
    /// and adapts to the API server: more while its latency holds, fewer when it climbs or the
    /// server throttles (429, 5xx); never more than this.
    #[serde(default = "default_concurrency")]
    #[schemars(range(min = 1, max = 64))]
    pub concurrency: u32,
    /// Secrets listed per page (1-5000).
    #[serde(default = "default_page_size")]
    #[schemars(range(min = 1, max = 5000))]
    pub page_size: u32,
}

impl Default for ReencryptionSettings {
    fn default() -> Self {
        Self { concurrency: DEFAULT_REENCRYPTION_CONCURRENCY, page_size: DEFAULT_REENCRYPTION_PAGE_SIZE }
    }
}

fn default_concurrency() -> u32 {
    DEFAULT_REENCRYPTION_CONCURRENCY
}

fn default_page_size() -> u32 {
    DEFAULT_REENCRYPTION_PAGE_SIZE
}

/// Name of a step of the key-vault-mode switch.
// Schema types: a doc comment on a variant or field becomes a description in the CRD (a schema
// change); the names say it, and docs/api.md says the rest.
#[allow(missing_docs)]
#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, JsonSchema)]
pub enum StepName {
    DisableKms,
    ReencryptSecrets,
    UpdateKeyVaultNetworkAccess,
    EnableKms,
    UpdateKms,
}

/// State of a step.
// Schema types: a doc comment on a variant or field becomes a description in the CRD (a schema
// change); the names say it, and docs/api.md says the rest.
#[allow(missing_docs)]
#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, JsonSchema)]
pub enum StepState {
    Pending,
    InProgress,
    Succeeded,
    Failed,
    /// Not run: the operation rolled back before reaching it.
    Skipped,
}

/// One step of the running (or last) operation.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "camelCase")]
// Schema types: a doc comment on a variant or field becomes a description in the CRD (a schema
// change); the names say it, and docs/api.md says the rest.
#[allow(missing_docs)]
pub struct Step {
    pub name: StepName,
    pub state: StepState,
    /// When the step (its latest attempt) started (RFC 3339).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub start_time: Option<String>,
    /// When it ended (RFC 3339).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub end_time: Option<String>,
    /// What happened: counts of a re-encryption, Azure's answer to a failed call.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub message: Option<String>,
    /// How many times the step has started (above 1: it failed and was retried).
    #[serde(default, skip_serializing_if = "is_zero")]
    pub attempts: u32,
}

fn is_zero(n: &u32) -> bool {
    *n == 0
}

/// Why and from where an operation restores the settings it started from.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct Rollback {
    /// What made the target unreachable.
    pub reason: String,
    /// When the rollback started (RFC 3339).
    pub start_time: String,
    /// Index in `steps` of the first rollback step; the steps from there on restore the
    /// operation's `sourceInfo`.
    pub first_step: u32,
}

/// Progress of the Secret rewrite.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct ReencryptionStatus {
    /// Secrets in the cluster when the run started (counted by name), or handled so far when
    /// more were created meanwhile.
    pub total: u64,
    /// Secrets the API server stored again under its current provider.
    pub rewritten: u64,
    /// Secrets already stored under the current provider.
    pub unchanged: u64,
    /// Secrets that could not be rewritten.
    pub failed: u64,
    /// Secrets deleted by someone else before their turn (never recreated).
    #[serde(default)]
    pub deleted: u64,
    /// When the rewrite started (RFC 3339).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub start_time: Option<String>,
    /// When it ended (RFC 3339); absent while it runs.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub end_time: Option<String>,
    /// Where a restarted run continues: the last `namespace/name` fully handled.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub resume_after: Option<String>,
    /// The API server's list continuation (opaque) for the page holding `resumeAfter`, or the
    /// next page when it is its page's last, so a restarted run lists from there rather than
    /// from the first Secret. Absent: from the first.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub resume_continue: Option<String>,
}

/// Result of checking the KMS key.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, JsonSchema)]
pub enum KeyCheckResult {
    /// The key exists and is enabled and within its validity.
    Usable,
    /// Missing, disabled, expired or not yet valid: KMS cannot work with it.
    Unusable,
    /// The key could not be checked (e.g. the vault is private and unreachable from here).
    Unknown,
}

/// The last check of the KMS key.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "camelCase")]
// Schema types: a doc comment on a variant or field becomes a description in the CRD (a schema
// change); the names say it, and docs/api.md says the rest.
#[allow(missing_docs)]
pub struct KeyCheck {
    pub result: KeyCheckResult,
    /// What was found, and what to do about it.
    pub message: String,
    /// When the key was checked (RFC 3339).
    pub check_time: String,
}

/// The KMS settings an operation moves from and to.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct KmsSettings {
    /// Whether KMS etcd encryption is on.
    pub enabled: bool,
    /// The key KMS uses (`https://<vault>.vault.azure.net/keys/<name>/<version>`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub key_id: Option<String>,
    /// Public or Private network access of the key vault.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub network_access: Option<NetworkAccess>,
    /// Resource id of the key vault (Private).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub key_vault_resource_id: Option<String>,
}

/// Observed state of a KmsKeyVaultMode.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct KmsKeyVaultModeStatus {
    /// The metadata.generation this status describes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub observed_generation: Option<i64>,
    /// Ready, Reconciling and Stalled (kstatus).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub conditions: Vec<Condition>,
    /// KMS on the cluster: Enabled or Disabled.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub kms: Option<String>,
    /// The step running now, or Idle.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub phase: Option<String>,
    /// Secrets handled of total, e.g. `1200/5000`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub progress: Option<String>,
    /// Steps of the running (or last) operation.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub steps: Vec<Step>,
    /// Progress of the current Secret rewrite.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reencryption: Option<ReencryptionStatus>,
    /// The cloud cluster the running (or last) operation acts on, as the spec named it when the
    /// operation was recorded: a later change of `spec.provider` is the next operation's.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub operation_provider: Option<KmsProvider>,
    /// Set when the running (or last) operation could not reach its target and restores the
    /// settings it started from.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rollback: Option<Rollback>,
    /// The last check of the KMS key (it stays required after KMS is off).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub key_check: Option<KeyCheck>,
    /// The key in use before the last operation moved to another key or vault: Secrets may
    /// still need it (the seed: it stays required), so it is checked too.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub previous_key_id: Option<String>,
    /// The last check of `previousKeyId`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub previous_key_check: Option<KeyCheck>,
    /// The operation running now, if any.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub current_operation: Option<Operation<KmsSettings>>,
    /// The last 10 operations, newest first.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub operations: Vec<Operation<KmsSettings>>,
}

super::common::operated!(KmsKeyVaultMode, KmsKeyVaultModeStatus, KmsSettings);
