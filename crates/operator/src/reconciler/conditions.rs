//! kstatus conditions: `Ready` (normal-true), `Reconciling` and `Stalled` (abnormal-true: present
//! only while True). Setting a condition whose status did not change keeps its
//! `lastTransitionTime`, so a status write that changes nothing writes nothing new.

use k8s_openapi::apimachinery::pkg::apis::meta::v1::{Condition, Time};
use k8s_openapi::jiff::Timestamp;

pub(crate) const READY: &str = "Ready";
pub(crate) const RECONCILING: &str = "Reconciling";
pub(crate) const STALLED: &str = "Stalled";
/// True while the brokers run older material than a Secret the spec names holds (a renewed
/// certificate, a changed CA bundle), until it is rolled out.
pub(crate) const SOURCE_CHANGED: &str = "SourceChanged";
/// CertificateRotation: True while an installed certificate is within its renewal window and the
/// operator will not renew it (type `provided` or `secret`), or has expired.
pub(crate) const CERTIFICATE_EXPIRING: &str = "CertificateExpiring";

/// CertificateRotation: True while a new external CA is published and the brokers wait for
/// clients to trust it before they switch (`trustTransitionSeconds`).
pub(crate) const WAITING_FOR_CLIENT_TRUST: &str = "WaitingForClientTrust";

/// CertificateRotation: True while every namespace of `spec.trustDistribution` holds a current
/// copy of the trust bundle.
pub(crate) const TRUST_DISTRIBUTED: &str = "TrustDistributed";

/// Reasons used across kinds.
pub(crate) mod reason {
    pub(crate) const INVALID_SPEC: &str = "InvalidSpec";
    /// Stalled: the stored object does not decode as this version's type (a field of another
    /// type, left by an older CRD or written past the schema); it never reaches a round.
    pub(crate) const INVALID_OBJECT: &str = "InvalidObject";
    pub(crate) const SECRET_NOT_FOUND: &str = "SecretNotFound";
    pub(crate) const ROLLOUT_FAILED: &str = "RolloutFailed";
    pub(crate) const INVALID_CERTIFICATE: &str = "InvalidCertificate";
    pub(crate) const APPLIED: &str = "Applied";
    /// Reconciling steps shared by the kinds that roll pods.
    pub(crate) const OPERATION_RECORDED: &str = "OperationRecorded";
    pub(crate) const WAITING_FOR_ACTIVE_CLUSTER: &str = "WaitingForActiveCluster";
    pub(crate) const ROLLING_PODS: &str = "RollingPods";
    /// A StatefulSet partition holds part of the rollout back until the user lowers it.
    pub(crate) const ROLLOUT_HELD_BY_PARTITION: &str = "RolloutHeldByPartition";
    pub(crate) const CLUSTER_NOT_ACTIVE: &str = "ClusterNotActive";
    /// The spec changed while an operation ran; the next one starts now.
    pub(crate) const QUEUED: &str = "Queued";
    /// A Secret the spec names holds other material than the brokers run (`SourceChanged`).
    pub(crate) const SOURCE_SECRET_CHANGED: &str = "SourceSecretChanged";
    /// `SourceChanged=False`: the brokers run what the source Secrets hold.
    pub(crate) const IN_SYNC: &str = "InSync";
    /// `CertificateExpiring=True` (and its Warning event): new material is needed soon.
    pub(crate) const RENEWAL_NEEDED: &str = "RenewalNeeded";
    /// `CertificateExpiring=False`: every certificate is valid beyond its renewal window, or the
    /// operator renews it.
    pub(crate) const CERTIFICATES_VALID: &str = "CertificatesValid";
    /// `clustersecurity.io/reconcile: paused`: nothing is changed (Ready=False).
    pub(crate) const PAUSED: &str = "Paused";
    /// A Secret or ConfigMap the operation would write exists and is not the operator's
    /// (Stalled until it is renamed, deleted or annotated for adoption).
    pub(crate) const NAME_CONFLICT: &str = "NameConflict";
    /// Another object already manages the same target; this one changes nothing (Stalled).
    pub(crate) const CONFLICT: &str = "Conflict";
    /// The object's namespace is not among `--watch-namespaces` (Stalled; nothing touched).
    pub(crate) const NAMESPACE_NOT_WATCHED: &str = "NamespaceNotWatched";
    /// `spec.mounts.container` names no container of the workload's pod template.
    pub(crate) const CONTAINER_NOT_FOUND: &str = "ContainerNotFound";
    /// After a rollout, a broker pod presents another certificate than the one put in place, a
    /// chain that does not verify, no TLS, or runs an older template (`spec.verify`).
    pub(crate) const VERIFICATION_FAILED: &str = "VerificationFailed";
    /// After a rollout, a broker pod's TLS listener could not be reached to be checked.
    pub(crate) const BROKER_UNREACHABLE: &str = "BrokerUnreachable";
    /// After a rollout, a broker pod cannot be checked on the wire without connecting to a
    /// node's address (`hostNetwork`): the operator does not, and the operation does not complete.
    pub(crate) const BROKER_NOT_VERIFIABLE: &str = "BrokerNotVerifiable";
    /// The brokers run a KRaft controller listener the spec does not keep as it runs.
    pub(crate) const CONTROLLER_LISTENER_REQUIRED: &str = "ControllerListenerRequired";
    /// A new CA is published; the brokers switch once clients trust it (`WaitingForClientTrust`).
    pub(crate) const WAITING_FOR_CLIENT_TRUST: &str = "WaitingForClientTrust";
    /// `WaitingForClientTrust=False`: confirmed, or the transition time passed; the brokers switch.
    pub(crate) const CLIENT_TRUST_UPDATED: &str = "ClientTrustUpdated";
    /// A first adoption would move the brokers' inter-broker listener in one roll.
    pub(crate) const INTER_BROKER_LISTENER_CHANGE: &str = "InterBrokerListenerChange";
    /// Being deleted: nothing new starts.
    pub(crate) const DELETING: &str = "Deleting";
    /// A deleted object under `deletionPolicy: Delete` waits while the workload still mounts
    /// what would go with it.
    pub(crate) const DELETION_BLOCKED: &str = "DeletionBlocked";
    /// `TrustDistributed=True`: every target namespace holds a current copy.
    pub(crate) const TRUST_DISTRIBUTED: &str = "TrustDistributed";
    /// `TrustDistributed=False`: some namespace could not get its copy (named in the message).
    pub(crate) const TRUST_DISTRIBUTION_FAILED: &str = "TrustDistributionFailed";
    /// `TrustDistributed=False`: the spec no longer asks for copies.
    pub(crate) const NOT_DISTRIBUTED: &str = "NotDistributed";
}

/// Every reason an object of any kind can be Stalled with: each has its entry in
/// docs/troubleshooting.md (the alerts link there), and metrics take a `reason` label only from
/// this set.
pub(crate) const STALLED_REASONS: [&str; 21] = [
    reason::INVALID_SPEC,
    reason::INVALID_OBJECT,
    reason::SECRET_NOT_FOUND,
    reason::INVALID_CERTIFICATE,
    reason::ROLLOUT_FAILED,
    reason::NAME_CONFLICT,
    reason::CONFLICT,
    reason::NAMESPACE_NOT_WATCHED,
    reason::CONTAINER_NOT_FOUND,
    reason::VERIFICATION_FAILED,
    reason::BROKER_UNREACHABLE,
    reason::BROKER_NOT_VERIFIABLE,
    reason::CONTROLLER_LISTENER_REQUIRED,
    reason::INTER_BROKER_LISTENER_CHANGE,
    reason::DELETION_BLOCKED,
    crate::kms_key_vault_mode::kms_reason::KEY_NOT_USABLE,
    crate::kms_key_vault_mode::kms_reason::CLOUD_ACCESS_FAILED,
    crate::kms_key_vault_mode::kms_reason::OPERATION_FAILED,
    crate::kms_key_vault_mode::kms_reason::ROLLED_BACK,
    crate::kms_key_vault_mode::kms_reason::FOREIGN_CLUSTER,
    crate::kms_key_vault_mode::kms_reason::MISSING_PERMISSION,
];

/// The Stalled reason `code` names (a failed operation's code, read back from its record), from
/// [`STALLED_REASONS`]; a code this version does not know (written by another) reads as
/// `RolloutFailed`.
pub(crate) fn stalled_reason(code: &str) -> &'static str {
    STALLED_REASONS.iter().copied().find(|r| *r == code).unwrap_or(reason::ROLLOUT_FAILED)
}

/// Set a condition besides Ready/Reconciling/Stalled (a kind's own, e.g. `EncryptionDisabled`);
/// [`apply`] keeps it. The transition time moves only when the status does.
pub(crate) fn set(
    conds: &mut Vec<Condition>,
    type_: &str,
    status: bool,
    reason: &str,
    message: &str,
    generation: Option<i64>,
    now: Timestamp,
) {
    upsert(conds, type_, if status { "True" } else { "False" }, reason, message, generation, now);
}

/// What the conditions should say; turned into the list with [`apply`]. Reasons come from the
/// closed sets of [`reason`] and the kinds' own constants, never from text built at run time.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Health {
    /// Desired state applied and verified.
    Ready { reason: &'static str, message: String },
    /// Work in progress; `reason` names the step.
    Reconciling { reason: &'static str, message: String },
    /// Cannot progress without a change from the user.
    Stalled { reason: &'static str, message: String },
    /// Neither ready nor stuck nor working (e.g. waiting for something outside our control).
    NotReady { reason: &'static str, message: String },
}

fn upsert(
    conds: &mut Vec<Condition>,
    type_: &str,
    status: &str,
    reason: &str,
    message: &str,
    generation: Option<i64>,
    now: Timestamp,
) {
    match conds.iter_mut().find(|c| c.type_ == type_) {
        Some(c) => {
            if c.status != status {
                c.last_transition_time = Time(now);
            }
            c.status = status.to_string();
            c.reason = reason.to_string();
            c.message = message.to_string();
            c.observed_generation = generation;
        }
        None => conds.push(Condition {
            type_: type_.to_string(),
            status: status.to_string(),
            reason: reason.to_string(),
            message: message.to_string(),
            observed_generation: generation,
            last_transition_time: Time(now),
        }),
    }
}

fn remove(conds: &mut Vec<Condition>, type_: &str) {
    conds.retain(|c| c.type_ != type_);
}

/// The condition list for `health`, starting from the current list (to keep transition times).
pub(crate) fn apply(current: &[Condition], health: &Health, generation: Option<i64>, now: Timestamp) -> Vec<Condition> {
    let mut conds: Vec<Condition> = current.to_vec();
    match health {
        Health::Ready { reason, message } => {
            upsert(&mut conds, READY, "True", reason, message, generation, now);
            remove(&mut conds, RECONCILING);
            remove(&mut conds, STALLED);
        }
        Health::Reconciling { reason, message } => {
            upsert(&mut conds, READY, "False", reason, message, generation, now);
            upsert(&mut conds, RECONCILING, "True", reason, message, generation, now);
            remove(&mut conds, STALLED);
        }
        Health::Stalled { reason, message } => {
            upsert(&mut conds, READY, "False", reason, message, generation, now);
            upsert(&mut conds, STALLED, "True", reason, message, generation, now);
            remove(&mut conds, RECONCILING);
        }
        Health::NotReady { reason, message } => {
            upsert(&mut conds, READY, "False", reason, message, generation, now);
            remove(&mut conds, RECONCILING);
            remove(&mut conds, STALLED);
        }
    }
    // Stable order so repeated applies produce identical lists.
    let rank = |t: &str| match t {
        READY => 0,
        RECONCILING => 1,
        STALLED => 2,
        _ => 3,
    };
    conds.sort_by_key(|c| rank(&c.type_));
    conds
}

/// Find a condition by type.
pub(crate) fn get<'a>(conds: &'a [Condition], type_: &str) -> Option<&'a Condition> {
    conds.iter().find(|c| c.type_ == type_)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn t(secs: i64) -> Timestamp {
        Timestamp::from_second(secs).unwrap()
    }

    #[test]
    fn stalled_then_ready_removes_abnormal_true_conditions() {
        let stalled = Health::Stalled { reason: reason::INVALID_SPEC, message: "bad".into() };
        let c = apply(&[], &stalled, Some(1), t(10));
        assert_eq!(get(&c, STALLED).unwrap().status, "True");
        assert_eq!(get(&c, READY).unwrap().status, "False");
        let ready = Health::Ready { reason: reason::APPLIED, message: "ok".into() };
        let c = apply(&c, &ready, Some(2), t(20));
        assert!(get(&c, STALLED).is_none());
        assert!(get(&c, RECONCILING).is_none());
        let r = get(&c, READY).unwrap();
        assert_eq!((r.status.as_str(), r.observed_generation, r.last_transition_time.0), ("True", Some(2), t(20)));
    }

    #[test]
    fn unchanged_status_keeps_transition_time() {
        let h = Health::Reconciling { reason: "RollingPods", message: "1/3".into() };
        let c1 = apply(&[], &h, Some(1), t(10));
        let h2 = Health::Reconciling { reason: "RollingPods", message: "2/3".into() };
        let c2 = apply(&c1, &h2, Some(1), t(50));
        let r = get(&c2, RECONCILING).unwrap();
        assert_eq!(r.last_transition_time.0, t(10));
        assert_eq!(r.message, "2/3");
        // Same input twice gives identical output: no perpetual status churn.
        assert_eq!(apply(&c2, &h2, Some(1), t(99)), c2);
    }

    #[test]
    fn a_recorded_failure_code_reads_back_as_a_reason_of_the_closed_set() {
        assert_eq!(stalled_reason("SecretNotFound"), reason::SECRET_NOT_FOUND);
        assert_eq!(stalled_reason("BrokerUnreachable"), reason::BROKER_UNREACHABLE);
        assert_eq!(stalled_reason("SomethingAnOlderVersionWrote"), reason::ROLLOUT_FAILED);
    }
}

#[cfg(test)]
mod troubleshooting_tests {
    /// Every reason a resource can be Stalled with has its entry in docs/troubleshooting.md:
    /// what it means and what to do.
    #[test]
    fn every_stalled_reason_has_a_troubleshooting_entry() {
        let doc = include_str!("../../../../docs/troubleshooting.md");
        for r in super::STALLED_REASONS {
            assert!(doc.contains(&format!("\n### {r}\n")), "docs/troubleshooting.md has no entry for {r}");
        }
    }
}
