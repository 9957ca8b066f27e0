//! Planning and sequencing the steps of a key-vault-mode switch (pure).
//!
//! The seed: the mode of an attached key vault can't change while KMS is on, so a mode change is
//! DisableKms → ReencryptSecrets → UpdateKeyVaultNetworkAccess → EnableKms → ReencryptSecrets.
//! A move to a different key vault (whatever its mode) is one direct KMS update followed by
//! ReencryptSecrets. After DisableKms fails, ReencryptSecrets still runs ("to avoid unexpected
//! state for KMS plugin"), and then the operation fails.

use crate::api::{KmsSettings, NetworkAccess, Step, StepName, StepState};
use crate::validate::parse_key_id;

/// The steps that take the cluster from `current` to `desired` (empty: nothing to do).
pub fn plan(current: &KmsSettings, desired: &KmsSettings) -> Vec<StepName> {
    use StepName::*;
    let vault =
        |s: &KmsSettings| s.key_id.as_deref().and_then(|k| parse_key_id(k).ok()).map(|k| k.vault.to_ascii_lowercase());
    let mode = |s: &KmsSettings| s.network_access.unwrap_or(NetworkAccess::Public);
    if !desired.enabled {
        return if current.enabled { vec![DisableKms, ReencryptSecrets] } else { vec![] };
    }
    if !current.enabled || vault(current) != vault(desired) {
        return vec![UpdateKms, ReencryptSecrets];
    }
    if mode(current) != mode(desired) {
        return vec![DisableKms, ReencryptSecrets, UpdateKeyVaultNetworkAccess, EnableKms, ReencryptSecrets];
    }
    if current.key_id != desired.key_id || current.key_vault_resource_id != desired.key_vault_resource_id {
        return vec![UpdateKms, ReencryptSecrets];
    }
    vec![]
}

/// What to do next with a planned list of steps.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Next {
    /// Run (or resume) the step at this index.
    Run(usize),
    /// Every step succeeded.
    Done,
    /// The operation failed; the message names the step.
    Failed(String),
}

/// The next step, resuming one left InProgress (after an operator restart) before anything else.
pub fn next(steps: &[Step]) -> Next {
    if let Some(i) = steps.iter().position(|s| s.state == StepState::InProgress) {
        return Next::Run(i);
    }
    match steps.iter().position(|s| s.state == StepState::Failed) {
        Some(f) => {
            // The seed's warning: after a failed DisableKms, still rewrite the Secrets.
            let after = f + 1;
            if steps[f].name == StepName::DisableKms
                && steps
                    .get(after)
                    .is_some_and(|s| s.name == StepName::ReencryptSecrets && s.state == StepState::Pending)
            {
                return Next::Run(after);
            }
            let msg = steps[f].message.clone().unwrap_or_default();
            Next::Failed(format!("step {:?} failed: {msg}", steps[f].name))
        }
        None => match steps.iter().position(|s| s.state == StepState::Pending) {
            Some(i) => Next::Run(i),
            None => Next::Done,
        },
    }
}

/// Fresh Pending steps for a plan.
pub fn pending(plan: &[StepName]) -> Vec<Step> {
    plan.iter()
        .map(|&name| Step { name, state: StepState::Pending, start_time: None, end_time: None, message: None })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use StepName::*;

    fn kms(enabled: bool, vault: &str, mode: NetworkAccess) -> KmsSettings {
        KmsSettings {
            enabled,
            key_id: Some(format!("https://{vault}.vault.azure.net/keys/etcd/0123abcd")),
            network_access: Some(mode),
            key_vault_resource_id: Some(format!(
                "/subscriptions/00000000-0000-0000-0000-000000000000/resourceGroups/rg/providers/Microsoft.KeyVault/vaults/{vault}"
            )),
        }
    }

    #[test]
    fn plans_follow_what_differs() {
        use NetworkAccess::*;
        let public = kms(true, "orders-kv", Public);
        assert_eq!(plan(&public, &public), vec![], "no-op spec needs nothing");
        assert_eq!(
            plan(&public, &kms(true, "orders-kv", Private)),
            vec![DisableKms, ReencryptSecrets, UpdateKeyVaultNetworkAccess, EnableKms, ReencryptSecrets],
            "mode change of the attached vault"
        );
        assert_eq!(
            plan(&public, &kms(true, "other-kv", Private)),
            vec![UpdateKms, ReencryptSecrets],
            "different vault"
        );
        assert_eq!(
            plan(&kms(false, "orders-kv", Public), &kms(true, "orders-kv", Private)),
            vec![UpdateKms, ReencryptSecrets]
        );
        let mut rotated = public.clone();
        rotated.key_id = Some("https://orders-kv.vault.azure.net/keys/etcd/99ff".into());
        assert_eq!(plan(&public, &rotated), vec![UpdateKms, ReencryptSecrets], "new key version");
    }

    fn with(states: &[(StepName, StepState)]) -> Vec<Step> {
        states
            .iter()
            .map(|&(name, state)| Step { name, state, start_time: None, end_time: None, message: Some("boom".into()) })
            .collect()
    }

    #[test]
    fn sequencing_resumes_and_reencrypts_after_failed_disable() {
        use StepState::*;
        let all = [DisableKms, ReencryptSecrets, UpdateKeyVaultNetworkAccess, EnableKms, ReencryptSecrets];
        assert_eq!(next(&pending(&all)), Next::Run(0));
        let s =
            with(&[(DisableKms, Succeeded), (ReencryptSecrets, InProgress), (UpdateKeyVaultNetworkAccess, Pending)]);
        assert_eq!(next(&s), Next::Run(1), "resume the step a restart interrupted");
        let s = with(&[(DisableKms, Failed), (ReencryptSecrets, Pending), (UpdateKeyVaultNetworkAccess, Pending)]);
        assert_eq!(next(&s), Next::Run(1), "re-encrypt even though DisableKms failed");
        let s = with(&[(DisableKms, Failed), (ReencryptSecrets, Succeeded), (UpdateKeyVaultNetworkAccess, Pending)]);
        assert!(matches!(next(&s), Next::Failed(m) if m.contains("DisableKms")), "then the operation fails");
        let s = with(&[
            (DisableKms, Succeeded),
            (ReencryptSecrets, Succeeded),
            (UpdateKeyVaultNetworkAccess, Failed),
            (EnableKms, Pending),
        ]);
        assert!(matches!(next(&s), Next::Failed(_)), "other failures stop at once");
        let s = with(&[(UpdateKms, Succeeded), (ReencryptSecrets, Succeeded)]);
        assert_eq!(next(&s), Next::Done);
    }
}
