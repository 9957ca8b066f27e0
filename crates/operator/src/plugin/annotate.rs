//! `renew`, `renew-ca`, `retry`, `pause`, `resume`, `confirm-trust`: each writes the annotation
//! docs/api.md documents for it, with a JSON merge patch on the object's metadata (the webhook
//! lets an update that leaves the spec alone through), and prints the `kubectl annotate` line
//! that does the same — the annotations stay the interface, the plugin only spares the typing
//! and, for `confirm-trust`, finding the waiting operation's id. May touch: the annotations of
//! the object named, nothing else.

use k8s_openapi::jiff::Timestamp;

use super::target::{self, Kind, Object, Ref};
use super::{Cluster, Exit, Failure, Outcome, Target};
use crate::api::{
    CertificateRotationStatus, OperationRecord, TrustPhase, CLIENT_TRUST_UPDATED_ANNOTATION, RECONCILE_ANNOTATION,
    RENEW_ANNOTATION, RENEW_CA_ANNOTATION, RETRY_ANNOTATION,
};

/// The value of `clustersecurity.io/reconcile` that pauses an object.
pub(crate) const PAUSED: &str = "paused";

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Verb {
    Renew,
    RenewCa,
    Retry,
    Pause,
    Resume,
    ConfirmTrust,
}

impl Verb {
    pub(super) fn command(self) -> &'static str {
        match self {
            Self::Renew => "renew",
            Self::RenewCa => "renew-ca",
            Self::Retry => "retry",
            Self::Pause => "pause",
            Self::Resume => "resume",
            Self::ConfirmTrust => "confirm-trust",
        }
    }
}

/// What to write: the annotation and its value (None: remove it).
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Choice {
    pub key: &'static str,
    pub value: Option<String>,
}

impl Choice {
    /// The merge patch that writes it.
    pub(super) fn merge_patch(&self) -> serde_json::Value {
        serde_json::json!({"metadata": {"annotations": {self.key: self.value}}})
    }

    /// The `kubectl annotate` line that does the same by hand.
    pub(super) fn kubectl_line(&self, r: &Ref, namespace: Option<&str>) -> String {
        let ns = namespace.map(|ns| format!(" -n {ns}")).unwrap_or_default();
        let what = match &self.value {
            Some(v) => format!("{}={v} --overwrite", self.key),
            None => format!("{}-", self.key),
        };
        format!("kubectl annotate {} {}{ns} {what}", r.kind.resource(), r.name)
    }
}

/// The annotation `verb` writes on an object of `kind`; `now` makes the value of the
/// request-style annotations new (the operator acts on a value it has not acted on yet), and
/// `certrot` is the CertificateRotation's status when the verb needs it (`confirm-trust`).
pub(crate) fn choose(
    verb: Verb,
    kind: Kind,
    certrot: Option<&CertificateRotationStatus>,
    now: Timestamp,
) -> Result<Choice, Failure> {
    let certificates_only = |what: &str| {
        if kind == Kind::CertRot {
            Ok(())
        } else {
            Err(Failure::usage(format!(
                "{} applies to a CertificateRotation only ({what}); a {} has none — `retry` runs its failed operation again",
                verb.command(),
                kind.kind()
            )))
        }
    };
    let stamp = || Some(now.to_string());
    Ok(match verb {
        Verb::Renew => {
            certificates_only("it renews certificates")?;
            Choice { key: RENEW_ANNOTATION, value: stamp() }
        }
        Verb::RenewCa => {
            certificates_only("it renews the CAs the operator keeps")?;
            Choice { key: RENEW_CA_ANNOTATION, value: stamp() }
        }
        Verb::Retry => Choice { key: RETRY_ANNOTATION, value: stamp() },
        Verb::Pause => Choice { key: RECONCILE_ANNOTATION, value: Some(PAUSED.into()) },
        Verb::Resume => Choice { key: RECONCILE_ANNOTATION, value: None },
        Verb::ConfirmTrust => {
            certificates_only("it confirms clients trust a new CA")?;
            let none = CertificateRotationStatus::default();
            let id = waiting_operation(certrot.unwrap_or(&none)).map_err(|why| Failure::new(Exit::Failed, why))?;
            Choice { key: CLIENT_TRUST_UPDATED_ANNOTATION, value: Some(id.to_string()) }
        }
    })
}

/// The operation waiting for clients to trust a new external CA (`status.trustTransition`,
/// phase TrustRolling or WaitingForClients, not switched), or why nothing waits.
pub(crate) fn waiting_operation(status: &CertificateRotationStatus) -> Result<&str, String> {
    let Some(t) = &status.trust_transition else {
        return Err(
            "nothing waits for clients' trust: no CA change is in progress (status.trustTransition is empty)".into()
        );
    };
    if t.phase >= TrustPhase::Switching || t.switched_at.is_some() {
        return Err(format!(
            "nothing waits for clients' trust: the CA change of operation {} switched already (phase {}{})",
            t.operation_id,
            t.phase.as_str(),
            t.switched_at.as_deref().map(|at| format!(", at {at}")).unwrap_or_default()
        ));
    }
    if t.new_ca_fingerprint_sha256.is_none() {
        return Err(format!(
            "nothing waits for clients' trust: operation {} changes only the internal CA, which clients never see",
            t.operation_id
        ));
    }
    match status.current_operation() {
        Some(op) if op.operation_id == t.operation_id => Ok(&t.operation_id),
        _ => Err(format!(
            "nothing waits for clients' trust: operation {} of the recorded CA change is no longer running",
            t.operation_id
        )),
    }
}

pub(crate) async fn run(cluster: &Cluster, t: &Target, verb: Verb) -> Outcome {
    let r = Ref::parse(&t.target).map_err(Failure::usage)?;
    let namespace = t.namespace.clone().unwrap_or_else(|| cluster.default_namespace.clone());
    let (ns, what) = target::place(&r, &namespace);
    // Refuse a verb the kind does not have before reading anything.
    if verb != Verb::ConfirmTrust {
        choose(verb, r.kind, None, Timestamp::now())?;
    }
    let object = target::fetch(cluster, &r, ns.as_deref(), &what).await?;
    let status = match &object {
        Object::CertRot(o) => o.status.clone(),
        _ => None,
    };
    let choice = choose(verb, r.kind, status.as_ref(), Timestamp::now()).map_err(|mut f| {
        if verb == Verb::ConfirmTrust {
            f.message = format!("{what}: {}", f.message);
        }
        f
    })?;
    let current = object.meta().annotations.as_ref().and_then(|a| a.get(choice.key)).cloned();
    target::merge_patch(cluster, &r, ns.as_deref(), &choice.merge_patch(), &what).await?;
    match (&choice.value, verb) {
        (None, _) if current.is_none() => println!("{what} was not paused; nothing to resume"),
        (None, _) => println!("{what}: removed {}", choice.key),
        (Some(v), _) => println!("{what}: {}={v}", choice.key),
    }
    println!("the same by hand: {}", choice.kubectl_line(&r, ns.as_deref()));
    match verb {
        Verb::Pause if r.kind == Kind::KmsMode => {
            println!("note: a KmsKeyVaultMode switch that has turned KMS off carries on until KMS is on again")
        }
        Verb::Retry => {
            let failed = match &object {
                Object::Csp(o) => o.status.as_ref().and_then(|s| s.newest_operation_state()),
                Object::CertRot(o) => o.status.as_ref().and_then(|s| s.newest_operation_state()),
                Object::KmsMode(o) => o.status.as_ref().and_then(|s| s.newest_operation_state()),
            };
            if failed != Some(crate::api::OperationState::UpdateFailed) {
                println!(
                    "note: the newest operation did not fail; retry starts one only after a failure or when a source Secret changed"
                );
            }
        }
        Verb::ConfirmTrust => println!("the brokers now switch to certificates from the new CA"),
        _ => {}
    }
    let ns_flag = ns.as_deref().map(|ns| format!(" -n {ns}")).unwrap_or_default();
    println!("follow it with: kubectl clustersecurity status {}/{}{ns_flag}", r.kind.short(), r.name);
    Ok(Exit::Ok)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::api::{CertificateSettings, Operation, OperationState, OperationType, TrustTransition};

    fn now() -> Timestamp {
        "2026-12-04T12:00:00Z".parse().unwrap()
    }

    fn waiting(phase: TrustPhase, external: bool, running: bool) -> CertificateRotationStatus {
        let op = Operation::<CertificateSettings> {
            operation_id: "op-1".into(),
            operation_type: OperationType::RotateCertificates,
            operation_state: OperationState::Pending,
            creation_time: "2026-12-04T11:00:00Z".into(),
            start_time: None,
            deadline_from: None,
            end_time: None,
            generation: Some(2),
            source_info: None,
            target_info: None,
            error_info: None,
            retry_request: None,
            verification: None,
            deadline_paused: None,
        };
        CertificateRotationStatus {
            trust_transition: Some(TrustTransition {
                operation_id: "op-1".into(),
                new_ca_fingerprint_sha256: external.then(|| "AB:CD".into()),
                internal_new_ca_fingerprint_sha256: Some("EF:01".into()),
                phase,
                published_at: "2026-12-04T11:00:00Z".into(),
                switch_at: "2026-12-05T11:00:00Z".into(),
                switched_at: None,
                old_ca_removal_at: None,
            }),
            current_operation: running.then_some(op),
            ..Default::default()
        }
    }

    #[test]
    fn each_verb_writes_its_documented_annotation() {
        let pick = |verb, kind| choose(verb, kind, None, now()).unwrap();
        let stamp = Some("2026-12-04T12:00:00Z".to_string());
        assert_eq!(pick(Verb::Renew, Kind::CertRot), Choice { key: "clustersecurity.io/renew", value: stamp.clone() });
        assert_eq!(
            pick(Verb::RenewCa, Kind::CertRot),
            Choice { key: "clustersecurity.io/renew-ca", value: stamp.clone() }
        );
        for kind in [Kind::Csp, Kind::CertRot, Kind::KmsMode] {
            assert_eq!(pick(Verb::Retry, kind), Choice { key: "clustersecurity.io/retry", value: stamp.clone() });
            assert_eq!(
                pick(Verb::Pause, kind),
                Choice { key: "clustersecurity.io/reconcile", value: Some("paused".into()) }
            );
            assert_eq!(pick(Verb::Resume, kind), Choice { key: "clustersecurity.io/reconcile", value: None });
        }
        for verb in [Verb::Renew, Verb::RenewCa, Verb::ConfirmTrust] {
            let e = choose(verb, Kind::Csp, None, now()).unwrap_err();
            assert_eq!(e.exit, Exit::Usage);
            assert!(e.message.contains("CertificateRotation only"), "{}", e.message);
        }
    }

    #[test]
    fn the_patch_and_the_kubectl_line_say_the_same() {
        let r = Ref::parse("certrot/certs").unwrap();
        let set = Choice { key: RENEW_ANNOTATION, value: Some("v1".into()) };
        assert_eq!(
            set.merge_patch(),
            serde_json::json!({"metadata": {"annotations": {"clustersecurity.io/renew": "v1"}}})
        );
        assert_eq!(
            set.kubectl_line(&r, Some("kafka")),
            "kubectl annotate certificaterotation certs -n kafka clustersecurity.io/renew=v1 --overwrite"
        );
        let remove = Choice { key: RECONCILE_ANNOTATION, value: None };
        assert_eq!(
            remove.merge_patch(),
            serde_json::json!({"metadata": {"annotations": {"clustersecurity.io/reconcile": null}}})
        );
        let kms = Ref::parse("kmsmode/cluster").unwrap();
        assert_eq!(
            remove.kubectl_line(&kms, None),
            "kubectl annotate kmskeyvaultmode cluster clustersecurity.io/reconcile-"
        );
    }

    #[test]
    fn confirm_trust_names_the_waiting_operation_or_refuses() {
        let ok =
            choose(Verb::ConfirmTrust, Kind::CertRot, Some(&waiting(TrustPhase::WaitingForClients, true, true)), now());
        assert_eq!(ok.unwrap(), Choice { key: CLIENT_TRUST_UPDATED_ANNOTATION, value: Some("op-1".into()) });
        // Confirmed early, while the brokers still roll to trust the new internal CA: kept.
        assert_eq!(waiting_operation(&waiting(TrustPhase::TrustRolling, true, true)), Ok("op-1"));
        let refused = |s: CertificateRotationStatus| {
            let e = choose(Verb::ConfirmTrust, Kind::CertRot, Some(&s), now()).unwrap_err();
            assert_eq!(e.exit, Exit::Failed);
            e.message
        };
        assert!(refused(CertificateRotationStatus::default()).contains("no CA change is in progress"));
        assert!(
            refused(waiting(TrustPhase::OldCaRetained, true, false)).contains("switched already (phase OldCaRetained")
        );
        assert!(refused(waiting(TrustPhase::WaitingForClients, false, true)).contains("only the internal CA"));
        assert!(refused(waiting(TrustPhase::WaitingForClients, true, false)).contains("no longer running"));
    }
}
