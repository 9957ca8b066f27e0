//! What the KmsKeyVaultMode controller needs from the cloud that runs the cluster: read and set the
//! cluster's KMS settings, set the key vault's network access, check the key. Azure is the first
//! implementation ([`super::azure`]); a self-managed cluster that owns its EncryptionConfiguration
//! could be a second.

use async_trait::async_trait;

use crate::api::{KmsSettings, NetworkAccess};

/// The cluster's KMS settings as the cloud reports them.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct ClusterKms {
    pub settings: KmsSettings,
    /// The cloud's provisioning state (Azure: Succeeded, Updating, Failed, …).
    pub provisioning_state: String,
    /// What tells this managed cluster from others (see [`super::own_cluster`]).
    pub identity: ClusterIdentity,
}

/// What the cloud says of a managed cluster that its nodes say too.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub(crate) struct ClusterIdentity {
    /// AKS: `properties.nodeResourceGroup`, the label `kubernetes.azure.com/cluster` of its nodes.
    pub node_resource_group: Option<String>,
    /// AKS: `properties.fqdn` and `properties.privateFQDN`, the host names of its API server (what
    /// the operator reaches it at when pointed there: a kubeconfig naming it, or
    /// `KUBERNETES_SERVICE_HOST` set to it).
    pub api_server_fqdns: Vec<String>,
}

impl ClusterKms {
    /// Whether another update of the cluster is running (ours from before a restart, or someone
    /// else's); nothing new should start until it ends.
    pub(crate) fn busy(&self) -> bool {
        matches!(self.provisioning_state.as_str(), "Updating" | "Creating" | "Canceling" | "Upgrading" | "Deleting")
    }
}

/// Whether the KMS key can be used.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum KeyState {
    /// Present and enabled; `expires` is when it stops being usable, if it has an expiry.
    Usable { expires: Option<String> },
    /// Missing, disabled, expired or not yet valid; the message says which and what to do.
    Unusable(String),
}

/// A cloud call that did not succeed.
#[derive(Debug, thiserror::Error)]
pub(crate) enum ProviderError {
    /// Worth retrying later (network, throttling, server errors, another operation running).
    #[error("{0}")]
    Transient(String),
    /// The cloud refused the change or the operation ended Failed: retrying the same request
    /// will not help.
    #[error("{code}: {message}")]
    Rejected { code: String, message: String },
    /// The operator could not authenticate: no token could be obtained, or the cloud answered
    /// 401 (credentials missing, expired or wrong).
    #[error("authentication with the cloud failed: {0}")]
    Auth(String),
    /// The cloud authenticated the operator and refused this request (Azure: a 403 with an ARM
    /// error code — `AuthorizationFailed`, `RequestDisallowedByPolicy`, …). `action` is the
    /// permission the request needs; the text says what to grant or exempt.
    #[error("{code}: the cloud refused {action}: {message}. {}", refusal_fix(code, action))]
    Refused { code: String, action: String, message: String },
    /// The operator's own configuration is incomplete.
    #[error("{0}")]
    Config(String),
}

impl ProviderError {
    pub(crate) fn is_transient(&self) -> bool {
        matches!(self, ProviderError::Transient(_))
    }
}

/// What to do about a refusal with Azure error `code` of `action`.
pub(crate) fn refusal_fix(code: &str, action: &str) -> String {
    match code {
        "AuthorizationFailed" | "LinkedAuthorizationFailed" => format!(
            "Fix: grant the operator's identity a role that allows {action} on that resource (e.g. {})",
            role_for(action)
        ),
        "RequestDisallowedByPolicy" | "ForbiddenByPolicy" | "PolicyViolation" => format!(
            "Fix: an Azure Policy assignment denies {action}; exempt the resource from it (az policy exemption \
             create) or change the assignment"
        ),
        "ForbiddenByConnection" | "ForbiddenByFirewall" => format!(
            "Fix: the resource's network rules refuse the operator for {action}; allow it (a private endpoint, or \
             the operator's address in the firewall)"
        ),
        "ScopeLocked" => format!("Fix: a resource lock forbids {action}; remove the lock for the switch"),
        _ => format!("Fix: allow the operator's identity {action} on that resource"),
    }
}

/// A built-in role that grants `action`.
fn role_for(action: &str) -> &'static str {
    let a = action.to_ascii_lowercase();
    if a.starts_with("microsoft.keyvault/") {
        "Key Vault Contributor"
    } else if a.starts_with("microsoft.containerservice/") {
        "Azure Kubernetes Service Contributor Role"
    } else if a.starts_with("microsoft.authorization/") {
        "Reader"
    } else {
        "Contributor"
    }
}

/// Whether `action` is allowed by Azure `permissions` (the `value` of
/// `Microsoft.Authorization/permissions`): some entry has an `actions` pattern that matches it
/// and no `notActions` pattern of the same entry does. Patterns are case-insensitive, `*`
/// matches any run of characters.
pub(crate) fn permitted(permissions: &[Permission], action: &str) -> bool {
    permissions.iter().any(|p| {
        p.actions.iter().any(|pat| wildcard_match(pat, action))
            && !p.not_actions.iter().any(|pat| wildcard_match(pat, action))
    })
}

/// One entry of Azure's effective permissions.
#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Deserialize)]
pub(crate) struct Permission {
    #[serde(default)]
    pub actions: Vec<String>,
    #[serde(default, rename = "notActions")]
    pub not_actions: Vec<String>,
}

/// Case-insensitive match of `text` against `pattern`, where `*` matches any run of characters.
pub(crate) fn wildcard_match(pattern: &str, text: &str) -> bool {
    let p: Vec<char> = pattern.to_ascii_lowercase().chars().collect();
    let t: Vec<char> = text.to_ascii_lowercase().chars().collect();
    let (mut pi, mut ti, mut star, mut mark) = (0, 0, None, 0);
    while ti < t.len() {
        if pi < p.len() && p[pi] != '*' && p[pi] == t[ti] {
            pi += 1;
            ti += 1;
        } else if pi < p.len() && p[pi] == '*' {
            star = Some(pi);
            mark = ti;
            pi += 1;
        } else if let Some(s) = star {
            pi = s + 1;
            mark += 1;
            ti = mark;
        } else {
            return false;
        }
    }
    p[pi..].iter().all(|&c| c == '*')
}

/// Actions a switch needs on the managed cluster.
pub(crate) const CLUSTER_WRITE: &str = "Microsoft.ContainerService/managedClusters/write";
/// Reading the managed cluster (every step reads before it writes).
pub(crate) const CLUSTER_READ: &str = "Microsoft.ContainerService/managedClusters/read";
/// Changing the vault's public network access.
pub(crate) const VAULT_WRITE: &str = "Microsoft.KeyVault/vaults/write";

/// What a permissions check found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum PermissionCheck {
    /// Every action is allowed.
    Allowed,
    /// These actions are not.
    Missing(Vec<String>),
}

/// The cloud side of one cluster.
#[async_trait]
pub(crate) trait KmsProvider: Send + Sync {
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
    /// Whether the operator may do `actions` on the resource `resource_id` (None: the managed
    /// cluster), read without changing anything. Err when that cannot be read (not allowed,
    /// unreachable): the caller then goes ahead without knowing. Providers that cannot tell say
    /// Allowed.
    async fn check_permissions(
        &self,
        _resource_id: Option<&str>,
        _actions: &[&str],
    ) -> Result<PermissionCheck, ProviderError> {
        Ok(PermissionCheck::Allowed)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn perm(actions: &[&str], not: &[&str]) -> Permission {
        Permission {
            actions: actions.iter().map(|s| s.to_string()).collect(),
            not_actions: not.iter().map(|s| s.to_string()).collect(),
        }
    }

    #[test]
    fn wildcards_match_azure_actions() {
        assert!(wildcard_match("*", VAULT_WRITE));
        assert!(wildcard_match("microsoft.keyvault/*", VAULT_WRITE), "case-insensitive");
        assert!(wildcard_match("Microsoft.KeyVault/vaults/*/read", "Microsoft.KeyVault/vaults/keys/read"));
        assert!(wildcard_match("*/write", CLUSTER_WRITE));
        assert!(!wildcard_match("*/read", CLUSTER_WRITE));
        assert!(!wildcard_match("Microsoft.KeyVault/vaults/read", VAULT_WRITE));
        assert!(!wildcard_match("Microsoft.KeyVault/vaults/write/x", VAULT_WRITE));
        assert!(wildcard_match("Microsoft.KeyVault/vaults/write*", VAULT_WRITE), "a star may match nothing");
    }

    #[test]
    fn not_actions_take_away_within_their_entry_only() {
        let reader_but_kv = [perm(&["*"], &["Microsoft.KeyVault/*/write"])];
        assert!(!permitted(&reader_but_kv, VAULT_WRITE));
        assert!(permitted(&reader_but_kv, CLUSTER_WRITE));
        let plus_kv_role = [reader_but_kv[0].clone(), perm(&["Microsoft.KeyVault/vaults/*"], &[])];
        assert!(permitted(&plus_kv_role, VAULT_WRITE), "another role assignment grants it");
        assert!(!permitted(&[perm(&["*/read"], &[])], CLUSTER_WRITE), "Reader cannot write");
        assert!(!permitted(&[], CLUSTER_READ), "no assignment: nothing");
    }

    #[test]
    fn refusals_name_the_code_the_action_and_the_fix_never_authentication() {
        let policy = ProviderError::Refused {
            code: "RequestDisallowedByPolicy".into(),
            action: VAULT_WRITE.into(),
            message: "Resource 'orders-kv' was disallowed by policy".into(),
        };
        let text = policy.to_string();
        assert!(text.contains("RequestDisallowedByPolicy") && text.contains(VAULT_WRITE), "{text}");
        assert!(text.contains("policy exemption"), "{text}");
        assert!(!text.to_lowercase().contains("authentication"), "{text}");
        let rbac = ProviderError::Refused {
            code: "AuthorizationFailed".into(),
            action: CLUSTER_WRITE.into(),
            message: "does not have authorization".into(),
        };
        let text = rbac.to_string();
        assert!(text.contains("Azure Kubernetes Service Contributor Role") && text.contains(CLUSTER_WRITE), "{text}");
    }
}
