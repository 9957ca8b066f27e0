//! What the KmsKeyVaultMode controller needs from the cloud that runs the cluster: read and set the
//! cluster's KMS settings, set the key vault's network access, check the key. Azure is the first
//! implementation ([`super::azure`]); a self-managed cluster that owns its EncryptionConfiguration
//! could be a second.

use async_trait::async_trait;

use crate::api::{KmsSettings, NetworkAccess};

/// The cluster's KMS settings as the cloud reports them.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ClusterKms {
    pub settings: KmsSettings,
    /// The cloud's provisioning state (Azure: Succeeded, Updating, Failed, …).
    pub provisioning_state: String,
    /// What tells this managed cluster from others (see [`super::own_cluster`]).
    pub identity: ClusterIdentity,
}

/// What the cloud says of a managed cluster that its nodes say too.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ClusterIdentity {
    /// AKS: `properties.nodeResourceGroup`, the label `kubernetes.azure.com/cluster` of its nodes.
    pub node_resource_group: Option<String>,
}

impl ClusterKms {
    /// Whether another update of the cluster is running (ours from before a restart, or someone
    /// else's); nothing new should start until it ends.
    pub fn busy(&self) -> bool {
        matches!(self.provisioning_state.as_str(), "Updating" | "Creating" | "Canceling" | "Upgrading" | "Deleting")
    }
}

/// Whether the KMS key can be used.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum KeyState {
    /// Present and enabled; `expires` is when it stops being usable, if it has an expiry.
    Usable { expires: Option<String> },
    /// Missing, disabled, expired or not yet valid; the message says which and what to do.
    Unusable(String),
}

/// A cloud call that did not succeed.
#[derive(Debug, thiserror::Error)]
pub enum ProviderError {
    /// Worth retrying later (network, throttling, server errors, another operation running).
    #[error("{0}")]
    Transient(String),
    /// The cloud refused the change or the operation ended Failed: retrying the same request
    /// will not help.
    #[error("{code}: {message}")]
    Rejected { code: String, message: String },
    /// The operator could not authenticate or is not allowed.
    #[error("authentication with the cloud failed: {0}")]
    Auth(String),
    /// The operator's own configuration is incomplete.
    #[error("{0}")]
    Config(String),
}

impl ProviderError {
    pub fn is_transient(&self) -> bool {
        matches!(self, ProviderError::Transient(_))
    }
}

/// The cloud side of one cluster.
#[async_trait]
pub trait KmsProvider: Send + Sync {
    /// Human-readable name of the cluster, for messages.
    fn describe(&self) -> String;
    /// Current KMS settings of the cluster.
    async fn get_kms(&self) -> Result<ClusterKms, ProviderError>;
    /// Make the cluster's KMS settings `desired` and wait until the cloud is done. Idempotent:
    /// settings already in place are left alone, an update already running is waited for.
    async fn set_kms(&self, desired: &KmsSettings) -> Result<(), ProviderError>;
    /// Public (Enabled) or Private (Disabled) public network access of the key vault.
    async fn set_vault_network_access(
        &self,
        key_vault_resource_id: &str,
        access: NetworkAccess,
    ) -> Result<(), ProviderError>;
    /// Whether the key exists and is usable; read through the management plane when the vault's
    /// resource id is given (no data-plane network access needed), else on the data plane.
    async fn check_key(&self, key_id: &str, vault_resource_id: Option<&str>) -> Result<KeyState, ProviderError>;
}
