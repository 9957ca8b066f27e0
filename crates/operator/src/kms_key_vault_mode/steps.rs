//! Planning and sequencing the steps of a key-vault-mode switch (pure).
//!
//! The seed: the mode of an attached key vault can't change while KMS is on, so a mode change is
//! DisableKms → ReencryptSecrets → UpdateKeyVaultNetworkAccess → EnableKms → ReencryptSecrets.
//! A move to a different key vault (whatever its mode) is one direct KMS update followed by
//! ReencryptSecrets. After DisableKms fails, ReencryptSecrets still runs ("to avoid unexpected
//! state for KMS plugin"), and then the operation fails.
//!
//! Beyond the seed: once DisableKms has succeeded, the operation never ends with KMS off. A
//! failing step is retried ([`STEP_ATTEMPTS`], [`retry_delay`]); when it keeps failing, or KMS has
//! been off longer than `spec.rollbackAfterSeconds`, the operation rolls back to the settings it
//! started from ([`begin_rollback`]) and then fails.

use std::time::Duration;

use k8s_openapi::jiff::Timestamp;

use crate::api::{KmsSettings, NetworkAccess, Rollback, Step, StepName, StepState};
use crate::validate::parse_key_id;

/// The steps that take the cluster from `current` to `desired` (empty: nothing to do).
pub(crate) fn plan(current: &KmsSettings, desired: &KmsSettings) -> Vec<StepName> {
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

/// How the message of a step the cloud refused begins (Azure's 403 with a code: a policy deny, a
/// missing role): the request changed nothing, so a rollback does not undo that step.
pub(crate) const REFUSED: &str = "refused, nothing changed: ";

/// How many times a step that fails runs before the operation gives up on its target (a
/// ReencryptSecrets step, or any step while KMS is off). Attempts wait [`retry_delay`] apart.
pub(crate) const STEP_ATTEMPTS: u32 = 4;

/// The wait after a step's `attempts`-th failure: 5 s, 10 s, 20 s, … at most 5 minutes.
pub(crate) fn retry_delay(attempts: u32) -> Duration {
    let doublings = attempts.saturating_sub(1).min(6);
    Duration::from_secs(5 << doublings).min(Duration::from_secs(300))
}

/// What to do next with a planned list of steps.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Next {
    /// Run (or resume) the step at this index.
    Run(usize),
    /// The step at this index failed; run it again once `wait` has passed (zero: now).
    Retry { step: usize, wait: Duration },
    /// KMS is off and the target cannot be reached: restore the settings the operation started
    /// from ([`begin_rollback`]). The text says why.
    RollBack(String),
    /// Every step succeeded (after a rollback: the source settings are back).
    Done,
    /// The operation failed; the message names the step.
    Failed(String),
}

fn time_of(t: Option<&String>) -> Option<Timestamp> {
    t.and_then(|t| t.parse().ok())
}

/// Since when KMS has been off at the end of `steps`: a DisableKms succeeded and no EnableKms
/// or UpdateKms after it (None: KMS is on, or the operation never turned it off).
pub(crate) fn kms_off_since(steps: &[Step]) -> Option<Timestamp> {
    let mut since = None;
    for s in steps.iter().filter(|s| s.state == StepState::Succeeded) {
        match s.name {
            StepName::DisableKms => since = time_of(s.end_time.as_ref()).or(since).or(Some(Timestamp::UNIX_EPOCH)),
            StepName::EnableKms | StepName::UpdateKms => since = None,
            _ => {}
        }
    }
    since
}

/// The next thing to do, `now`, with KMS allowed off for `rollback_after` at most. A step left
/// InProgress (after an operator restart) resumes before anything else. While KMS is off the
/// operator owns getting it back on: failures are retried, and when the target stays out of
/// reach the answer is [`Next::RollBack`], never [`Next::Failed`]. The way back is retried
/// until it works: there is nothing safer to do.
pub(crate) fn next(steps: &[Step], rollback: Option<&Rollback>, now: Timestamp, rollback_after: Duration) -> Next {
    let first = rollback.map_or(0, |r| r.first_step as usize).min(steps.len());
    if rollback.is_none() {
        if let Some(since) = kms_off_since(steps) {
            let off = now.duration_since(since).unsigned_abs();
            if off > rollback_after {
                return Next::RollBack(format!(
                    "KMS has been off for {} s, longer than spec.rollbackAfterSeconds ({} s)",
                    off.as_secs(),
                    rollback_after.as_secs()
                ));
            }
        }
    }
    let active = &steps[first..];
    if let Some(i) = active.iter().position(|s| s.state == StepState::InProgress) {
        return Next::Run(first + i);
    }
    let Some(f) = active.iter().position(|s| s.state == StepState::Failed).map(|f| first + f) else {
        return match active.iter().position(|s| s.state == StepState::Pending) {
            Some(i) => Next::Run(first + i),
            None => Next::Done,
        };
    };
    let step = &steps[f];
    let retry = || {
        let due = time_of(step.end_time.as_ref()).map(|end| end + retry_delay(step.attempts.max(1)));
        let wait = due.map(|due| due.duration_since(now).unsigned_abs()).filter(|_| due > Some(now));
        Next::Retry { step: f, wait: wait.unwrap_or_default() }
    };
    if rollback.is_some() {
        return retry();
    }
    let msg = step.message.clone().unwrap_or_default();
    if step.name == StepName::DisableKms {
        // The seed's warning: after a failed DisableKms, still rewrite the Secrets; then the
        // operation fails with KMS on as before.
        if steps.get(f + 1).is_some_and(|s| s.name == StepName::ReencryptSecrets && s.state == StepState::Pending) {
            return Next::Run(f + 1);
        }
        return Next::Failed(format!("step DisableKms failed: {msg}"));
    }
    let kms_off = kms_off_since(&steps[..f]).is_some();
    if step.attempts < STEP_ATTEMPTS && (kms_off || step.name == StepName::ReencryptSecrets) {
        return retry();
    }
    let tries = if step.attempts > 1 { format!(" {} times", step.attempts) } else { String::new() };
    if kms_off {
        return Next::RollBack(format!("step {:?} failed{tries}: {msg}", step.name));
    }
    Next::Failed(format!("step {:?} failed{tries}: {msg}", step.name))
}

/// Turn `steps` around at `now`: the unfinished steps are stopped (InProgress → Failed) or
/// skipped, and the steps that restore the source settings are appended — the vault's network
/// access back (if the switch touched it), KMS on as before, every Secret rewritten.
pub(crate) fn begin_rollback(steps: &mut Vec<Step>, reason: String, now: &str) -> Rollback {
    for s in steps.iter_mut() {
        match s.state {
            StepState::InProgress => {
                s.state = StepState::Failed;
                s.end_time = Some(now.to_string());
                s.message = Some("stopped: the operation rolls back".into());
            }
            StepState::Pending => s.state = StepState::Skipped,
            _ => {}
        }
    }
    // A vault step the cloud refused left the vault as it was: the rollback must not depend on
    // the call that was refused.
    let vault_touched = steps.iter().any(|s| {
        s.name == StepName::UpdateKeyVaultNetworkAccess
            && match s.state {
                StepState::Succeeded => true,
                StepState::Failed => !s.message.as_deref().unwrap_or_default().starts_with(REFUSED),
                _ => false,
            }
    });
    let first_step = steps.len() as u32;
    let mut back = Vec::new();
    if vault_touched {
        back.push(StepName::UpdateKeyVaultNetworkAccess);
    }
    back.extend([StepName::EnableKms, StepName::ReencryptSecrets]);
    steps.extend(pending(&back));
    Rollback { reason, start_time: now.to_string(), first_step }
}

/// Fresh Pending steps for a plan.
pub(crate) fn pending(plan: &[StepName]) -> Vec<Step> {
    plan.iter()
        .map(|&name| Step {
            name,
            state: StepState::Pending,
            start_time: None,
            end_time: None,
            message: None,
            attempts: 0,
        })
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
            .map(|&(name, state)| Step {
                name,
                state,
                start_time: None,
                end_time: Some("2026-01-01T00:00:00Z".into()),
                message: Some("boom".into()),
                attempts: 1,
            })
            .collect()
    }

    const DEADLINE: Duration = Duration::from_secs(1800);

    #[test]
    fn a_refused_vault_step_is_retried_then_rolled_back_without_touching_the_vault() {
        use StepState::*;
        let mut s = with(&[
            (DisableKms, Succeeded),
            (ReencryptSecrets, Succeeded),
            (UpdateKeyVaultNetworkAccess, Failed),
            (EnableKms, Pending),
            (ReencryptSecrets, Pending),
        ]);
        s[2].message =
            Some(format!("{REFUSED}RequestDisallowedByPolicy: the cloud refused Microsoft.KeyVault/vaults/write"));
        assert!(matches!(next_at(&s, 60), Next::Retry { step: 2, .. }), "a refusal is a failed attempt, retried");
        s[2].attempts = STEP_ATTEMPTS;
        let Next::RollBack(why) = next_at(&s, 60) else { panic!("rolls back after its tries") };
        assert!(why.contains("RequestDisallowedByPolicy"), "{why}");
        begin_rollback(&mut s, why, "2026-01-01T00:01:00Z");
        let back: Vec<_> = s[5..].iter().map(|x| x.name).collect();
        assert_eq!(back, vec![EnableKms, ReencryptSecrets], "the refused vault PATCH is not part of the way back");
        // A vault step that failed otherwise (e.g. its result was not applied) may have changed it.
        let mut unsure = with(&[(DisableKms, Succeeded), (UpdateKeyVaultNetworkAccess, Failed), (EnableKms, Pending)]);
        begin_rollback(&mut unsure, "x".into(), "2026-01-01T00:01:00Z");
        assert_eq!(unsure[3].name, UpdateKeyVaultNetworkAccess);
    }

    fn at(secs: i64) -> Timestamp {
        "2026-01-01T00:00:00Z".parse::<Timestamp>().unwrap() + k8s_openapi::jiff::SignedDuration::from_secs(secs)
    }

    fn next_at(steps: &[Step], secs: i64) -> Next {
        next(steps, None, at(secs), DEADLINE)
    }

    #[test]
    fn sequencing_resumes_and_reencrypts_after_failed_disable() {
        use StepState::*;
        let all = [DisableKms, ReencryptSecrets, UpdateKeyVaultNetworkAccess, EnableKms, ReencryptSecrets];
        assert_eq!(next_at(&pending(&all), 0), Next::Run(0));
        let s =
            with(&[(DisableKms, Succeeded), (ReencryptSecrets, InProgress), (UpdateKeyVaultNetworkAccess, Pending)]);
        assert_eq!(next_at(&s, 0), Next::Run(1), "resume the step a restart interrupted");
        let s = with(&[(DisableKms, Failed), (ReencryptSecrets, Pending), (UpdateKeyVaultNetworkAccess, Pending)]);
        assert_eq!(next_at(&s, 0), Next::Run(1), "re-encrypt even though DisableKms failed");
        let s = with(&[(DisableKms, Failed), (ReencryptSecrets, Succeeded), (UpdateKeyVaultNetworkAccess, Pending)]);
        assert!(matches!(next_at(&s, 0), Next::Failed(m) if m.contains("DisableKms")), "then the operation fails");
        let s = with(&[(UpdateKms, Failed), (ReencryptSecrets, Pending)]);
        assert!(matches!(next_at(&s, 0), Next::Failed(_)), "a refused update with KMS on fails at once");
        let s = with(&[(UpdateKms, Succeeded), (ReencryptSecrets, Succeeded)]);
        assert_eq!(next_at(&s, 0), Next::Done);
    }

    #[test]
    fn with_kms_off_a_failing_step_is_retried_with_backoff_then_rolled_back() {
        use StepState::*;
        let mut s = with(&[
            (DisableKms, Succeeded),
            (ReencryptSecrets, Succeeded),
            (UpdateKeyVaultNetworkAccess, Failed),
            (EnableKms, Pending),
            (ReencryptSecrets, Pending),
        ]);
        assert_eq!(next_at(&s, 2), Next::Retry { step: 2, wait: Duration::from_secs(3) }, "5 s after the failure");
        assert_eq!(next_at(&s, 9), Next::Retry { step: 2, wait: Duration::ZERO });
        s[2].attempts = 2;
        assert_eq!(next_at(&s, 0), Next::Retry { step: 2, wait: Duration::from_secs(10) }, "the wait doubles");
        s[2].attempts = STEP_ATTEMPTS;
        assert!(
            matches!(next_at(&s, 60), Next::RollBack(m) if m.contains("UpdateKeyVaultNetworkAccess failed 4 times")),
            "KMS is off: a step that keeps failing rolls back instead of failing"
        );
        let refused = with(&[(DisableKms, Succeeded), (ReencryptSecrets, Succeeded), (EnableKms, Failed)]);
        assert!(matches!(next_at(&refused, 10), Next::Retry { step: 2, .. }), "EnableKms refused: retried");
    }

    #[test]
    fn failed_secrets_are_retried_even_with_kms_on() {
        use StepState::*;
        let mut s = with(&[(UpdateKms, Succeeded), (ReencryptSecrets, Failed)]);
        assert!(matches!(next_at(&s, 60), Next::Retry { step: 1, .. }));
        s[1].attempts = STEP_ATTEMPTS;
        assert!(matches!(next_at(&s, 60), Next::Failed(m) if m.contains("4 times")), "KMS is on: no rollback");
    }

    #[test]
    fn kms_off_longer_than_the_deadline_rolls_back_even_mid_step() {
        use StepState::*;
        let s = with(&[(DisableKms, Succeeded), (ReencryptSecrets, InProgress), (EnableKms, Pending)]);
        assert_eq!(next_at(&s, 1800), Next::Run(1), "within the deadline");
        assert!(matches!(next_at(&s, 1801), Next::RollBack(m) if m.contains("rollbackAfterSeconds")));
        let back_on = with(&[(DisableKms, Succeeded), (EnableKms, Succeeded), (ReencryptSecrets, InProgress)]);
        assert_eq!(next_at(&back_on, 99_999), Next::Run(2), "KMS back on: no deadline");
    }

    #[test]
    fn a_rollback_restores_the_vault_it_touched_and_is_retried_until_done() {
        use StepState::*;
        let mut s = with(&[
            (DisableKms, Succeeded),
            (ReencryptSecrets, Succeeded),
            (UpdateKeyVaultNetworkAccess, Succeeded),
            (EnableKms, Failed),
            (ReencryptSecrets, Pending),
        ]);
        let r = begin_rollback(&mut s, "refused".into(), "2026-01-01T00:01:00Z");
        assert_eq!(r.first_step, 5);
        assert_eq!(s[4].state, Skipped);
        let names: Vec<_> = s[5..].iter().map(|x| x.name).collect();
        assert_eq!(names, vec![UpdateKeyVaultNetworkAccess, EnableKms, ReencryptSecrets]);
        assert_eq!(next(&s, Some(&r), at(99_999), DEADLINE), Next::Run(5), "no deadline on the way back");
        s[5].state = Failed;
        s[5].attempts = 50;
        assert!(matches!(next(&s, Some(&r), at(99_999), DEADLINE), Next::Retry { step: 5, .. }), "never gives up");
        for x in &mut s[5..] {
            x.state = Succeeded;
        }
        assert_eq!(next(&s, Some(&r), at(99_999), DEADLINE), Next::Done);
        assert_eq!(kms_off_since(&s), None, "KMS is on again");

        let mut untouched = with(&[(DisableKms, Succeeded), (ReencryptSecrets, InProgress), (EnableKms, Pending)]);
        begin_rollback(&mut untouched, "deadline".into(), "2026-01-01T01:00:00Z");
        let states: Vec<_> = untouched.iter().map(|x| (x.name, x.state)).collect();
        assert_eq!(
            states,
            vec![
                (DisableKms, Succeeded),
                (ReencryptSecrets, Failed),
                (EnableKms, Skipped),
                (EnableKms, Pending),
                (ReencryptSecrets, Pending)
            ],
            "the vault was never touched: KMS back on and the Secrets rewritten"
        );
    }
}
