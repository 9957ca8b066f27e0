//! Trust first, then switch: a certificate signed by a different CA (`clientImpact:
//! TrustUpdateRequired`, a CA renewal) is rolled in phases recorded in `status.trustTransition`,
//! so that nobody is ever presented a certificate from a CA they do not trust:
//!
//! 1. `TrustRolling` (internal CA changes): the brokers roll to trust the new internal CA next
//!    to the old one (`<cluster>-internal-tls` keeps the certificate in force; its `ca.crt`, the
//!    brokers' internal truststore, holds both). Rolled and not-yet-rolled brokers trust each
//!    other because every broker still presents a certificate from the old CA.
//! 2. `WaitingForClients` (external CA changes): the new CA is published next to the old one in
//!    the trust bundle (`<cluster>-external-trust`: `ca.crt` both, `current-ca.crt` still the
//!    old one); the operation waits until `clustersecurity.io/client-trust-updated` names it or
//!    `trustTransitionSeconds` have passed.
//! 3. `Switching`: the certificates from the new CA(s) are installed and rolled; both CAs stay
//!    trusted, so a broker already switched and one not yet switched still trust each other.
//! 4. `OldCaRetained` → `OldCaRemoved`: `oldCaRetentionSeconds` after the switch (inside a
//!    maintenance window) a new operation removes the previous CA from the truststore and the
//!    bundle, and rolls.
//!
//! The external CA is not in the brokers' truststores (clients are checked against the client
//! CA), so an external-only change needs no roll before the switch.
//!
//! What this module may touch: the trust bundle ConfigMap and the internal TLS Secret (through
//! `material`), and the round's status and conditions.

use std::collections::BTreeMap;
use std::time::Duration;

use k8s_openapi::jiff::Timestamp;
use kube::runtime::events::EventType;
use kube::{Resource, ResourceExt};

use super::inspect::{self, Material};
use super::material::{self, Want};
use super::{trust_configmap, Slot};
use crate::api::{
    CertificateRotation, CertificateRotationStatus, CertificateSettings, Operation, TrustPhase, TrustTransition,
    CLIENT_TRUST_UPDATED_ANNOTATION, DEFAULT_OLD_CA_RETENTION_SECONDS,
};
use crate::pki;
use crate::reconciler::conditions;
use crate::reconciler::operation::{parse_time, rfc3339};
use crate::reconciler::rolling::PrepareError;
use crate::reconciler::{Context, Error, Round};

/// Default of `spec.external.trustTransitionSeconds`.
pub(super) const DEFAULT_TRUST_TRANSITION_SECONDS: u32 = 86_400;
/// How often a waiting operation looks at the clock (the annotation comes sooner, by watch).
const RECHECK: Duration = Duration::from_secs(60);
/// Event: the previous CA is no longer trusted.
const OLD_CA_REMOVED: &str = "OldCaRemoved";
/// Event: the brokers roll to trust a new internal CA before any certificate from it is used.
const TRUST_ROLLING: &str = "TrustRolling";

/// The new CA fingerprint of each slot whose certificate in force chains to another CA.
pub(super) struct CaChange {
    external: Option<String>,
    internal: Option<String>,
}

impl CaChange {
    /// From the material about to be installed, compared with the certificates in force.
    pub(super) fn of(status: &CertificateRotationStatus, ready: &[(Want, Material)]) -> Option<Self> {
        let changed = |slot: Slot| {
            let (_, m) = ready.iter().find(|(w, _)| w.slot == slot)?;
            let old = material::slot_status(status, slot)?.ca_fingerprint_sha256.as_deref()?;
            (old != m.ca_fingerprint).then(|| m.ca_fingerprint.clone())
        };
        let change = CaChange { external: changed(Slot::External), internal: changed(Slot::Internal) };
        (change.external.is_some() || change.internal.is_some()).then_some(change)
    }

    fn matches(&self, t: &TrustTransition) -> bool {
        t.new_ca_fingerprint_sha256 == self.external && t.internal_new_ca_fingerprint_sha256 == self.internal
    }
}

/// The transition of operation `op_id`, when one is recorded.
pub(super) fn of_operation<'a>(status: &'a CertificateRotationStatus, op_id: &str) -> Option<&'a TrustTransition> {
    status.trust_transition.as_ref().filter(|t| t.operation_id == op_id)
}

/// The CA change operation `op` started is no longer asked for (the label or Secret was put
/// back while it waited): forget it, so the operation completes with what is in force. True when
/// it was withdrawn.
pub(super) async fn withdraw_if_unwanted(
    cr: &CertificateRotation,
    round: &mut Round<CertificateRotation>,
    ctx: &Context,
    op_id: &str,
    change: Option<&CaChange>,
) -> Result<bool, Error> {
    let pending = of_operation(&round.status, op_id).filter(|t| t.phase < TrustPhase::Switching);
    if let (Some(t), None) = (pending, change) {
        if t.new_ca_fingerprint_sha256.is_some() {
            // Clients are no longer told to trust a CA nothing will present.
            if let Some(current) = material::published_current_ca(ctx, cr).await? {
                round.write(vec![material::trust_bundle(cr, &current, &current)]).await?;
            }
        }
        round.status.trust_transition = None;
        let message = "The CA change was withdrawn: the spec no longer asks for a certificate from another CA.";
        round.sticky_condition(
            conditions::WAITING_FOR_CLIENT_TRUST,
            None,
            (conditions::reason::CLIENT_TRUST_UPDATED, message),
        );
        return Ok(true);
    }
    Ok(false)
}

/// A transition recorded by a version without phases that had already switched: it retains the
/// old CA until `oldCaRetentionSeconds` after its switch.
pub(super) fn upgrade_recorded(cr: &CertificateRotation, status: &mut CertificateRotationStatus) {
    let Some(t) = status.trust_transition.as_mut() else { return };
    if t.phase == TrustPhase::WaitingForClients && t.old_ca_removal_at.is_none() {
        if let Some(switched) = t.switched_at.as_deref().and_then(parse_time) {
            let retention = cr.spec.old_ca_retention_seconds.unwrap_or(DEFAULT_OLD_CA_RETENTION_SECONDS);
            t.phase = TrustPhase::OldCaRetained;
            let at = Timestamp::from_second(switched.as_second() + i64::from(retention)).unwrap_or(switched);
            t.old_ca_removal_at = Some(rfc3339(at));
        }
    }
}

/// Whether the previous CA is still to be trusted next to the one in force.
pub(super) fn retains_old_ca(status: &CertificateRotationStatus) -> bool {
    status.trust_transition.as_ref().is_some_and(|t| t.phase < TrustPhase::OldCaRemoved)
}

/// Whether the operation's roll just verified was a phase before the switch.
pub(super) fn before_switch_phase(status: &CertificateRotationStatus, op_id: &str) -> bool {
    of_operation(status, op_id).is_some_and(|t| t.phase < TrustPhase::Switching)
}

/// Before the certificates from a new CA are installed: publish and roll the new CA's trust,
/// and wait for clients. `Ok(Some(annotations))`: roll these first (the driver calls again once
/// rolled); `Ok(None)`: switch now; `Err(Wait)`: clients may not trust it yet.
pub(super) async fn before_switch(
    cr: &CertificateRotation,
    round: &mut Round<CertificateRotation>,
    ctx: &Context,
    op: &Operation<CertificateSettings>,
    change: &CaChange,
    ready: &[(Want, Material)],
) -> Result<Option<BTreeMap<String, String>>, PrepareError> {
    let now = round.now;
    let recorded = of_operation(&round.status, &op.operation_id).filter(|t| change.matches(t)).cloned();
    let mut transition = match recorded {
        Some(t) if t.phase >= TrustPhase::Switching => return Ok(None),
        Some(t) => t,
        None => match open(cr, round, ctx, op, change, ready).await? {
            Opened::TrustRolling(annotations) => return Ok(Some(annotations)),
            Opened::Published(t) => t,
        },
    };
    // Called again after the trust roll: the brokers trust both internal CAs now.
    transition.phase = TrustPhase::WaitingForClients;
    let confirmed =
        cr.meta().annotations.as_ref().and_then(|a| a.get(CLIENT_TRUST_UPDATED_ANNOTATION)) == Some(&op.operation_id);
    let switch_at = parse_time(&transition.switch_at).unwrap_or(now);
    if let (Some(fingerprint), false) = (&change.external, confirmed || now >= switch_at) {
        return Err(wait_for_clients(cr, round, op, transition, fingerprint, switch_at));
    }
    if let Some(fingerprint) = &change.external {
        let why = if confirmed { "clients confirmed to trust it" } else { "trustTransitionSeconds passed" };
        let message = format!("The new CA (SHA-256 {fingerprint}) is in effect: {why}.");
        round.sticky_condition(
            conditions::WAITING_FOR_CLIENT_TRUST,
            None,
            (conditions::reason::CLIENT_TRUST_UPDATED, &message),
        );
    }
    let retention = cr.spec.old_ca_retention_seconds.unwrap_or(DEFAULT_OLD_CA_RETENTION_SECONDS);
    transition.phase = TrustPhase::Switching;
    transition.switched_at = Some(rfc3339(now));
    transition.old_ca_removal_at =
        Some(rfc3339(Timestamp::from_second(now.as_second() + i64::from(retention)).unwrap_or(now)));
    round.status.trust_transition = Some(transition);
    Ok(None)
}

/// What opening a CA change did.
enum Opened {
    /// The brokers roll to trust the new internal CA first (the transition is recorded).
    TrustRolling(BTreeMap<String, String>),
    /// The new external CA is published (if any): the transition waits for clients.
    Published(TrustTransition),
}

/// Open the CA change of operation `op`: record when it switches (`trustTransitionSeconds` for
/// an external CA, at once for an internal one), publish the new external CA next to the one in
/// force, and roll the new internal CA into the truststores.
async fn open(
    cr: &CertificateRotation,
    round: &mut Round<CertificateRotation>,
    ctx: &Context,
    op: &Operation<CertificateSettings>,
    change: &CaChange,
    ready: &[(Want, Material)],
) -> Result<Opened, Error> {
    let seconds = match &change.external {
        Some(_) => cr.spec.external.as_ref().and_then(|e| e.trust_transition_seconds),
        None => Some(0),
    }
    .unwrap_or(DEFAULT_TRUST_TRANSITION_SECONDS);
    let now = round.now;
    let switch_at = Timestamp::from_second(now.as_second() + i64::from(seconds)).unwrap_or(now);
    let mut t = TrustTransition {
        operation_id: op.operation_id.clone(),
        new_ca_fingerprint_sha256: change.external.clone(),
        internal_new_ca_fingerprint_sha256: change.internal.clone(),
        phase: TrustPhase::WaitingForClients,
        published_at: rfc3339(now),
        switch_at: rfc3339(switch_at),
        switched_at: None,
        old_ca_removal_at: None,
    };
    if let Some((_, new)) = ready.iter().find(|(w, _)| w.slot == Slot::External && change.external.is_some()) {
        // Publish: the new CA and the one in force, which stays `current-ca.crt`.
        let current = material::published_current_ca(ctx, cr).await?.unwrap_or_default();
        round.write(vec![material::trust_bundle(cr, &format!("{}{current}", new.ca_pem), &current)]).await?;
    }
    if let Some((_, new)) = ready.iter().find(|(w, _)| w.slot == Slot::Internal && change.internal.is_some()) {
        if let Some(annotations) = trust_new_internal_ca(cr, round, ctx, op, new).await? {
            t.phase = TrustPhase::TrustRolling;
            round.status.trust_transition = Some(t);
            return Ok(Opened::TrustRolling(annotations));
        }
    }
    Ok(Opened::Published(t))
}

/// Clients may not trust the new external CA (`fingerprint`) yet: say where it is published and
/// how to confirm, record the transition, and wait until `switch_at`.
fn wait_for_clients(
    cr: &CertificateRotation,
    round: &mut Round<CertificateRotation>,
    op: &Operation<CertificateSettings>,
    transition: TrustTransition,
    fingerprint: &str,
    switch_at: Timestamp,
) -> PrepareError {
    let ns = cr.namespace().unwrap_or_default();
    let message = format!(
        "The new external certificate is signed by another CA (SHA-256 {fingerprint}). Its CA is published next to the old one in ConfigMap {ns}/{} (ca.crt); the brokers keep presenting the old certificate until {} (spec.external.trustTransitionSeconds), or until you confirm that clients trust the new CA: kubectl annotate certificaterotation {} -n {ns} {CLIENT_TRUST_UPDATED_ANNOTATION}={} --overwrite",
        trust_configmap(&cr.spec.cluster_ref.name),
        transition.switch_at,
        cr.name_any(),
        op.operation_id
    );
    round.sticky_condition(
        conditions::WAITING_FOR_CLIENT_TRUST,
        Some((conditions::reason::WAITING_FOR_CLIENT_TRUST, &message)),
        (conditions::reason::CLIENT_TRUST_UPDATED, ""),
    );
    round.status.trust_transition = Some(transition);
    let left = Duration::from_secs((switch_at.as_second() - round.now.as_second()).max(1).unsigned_abs());
    PrepareError::Wait { reason: conditions::reason::WAITING_FOR_CLIENT_TRUST, message, after: left.min(RECHECK) }
}

/// Phase 1: the internal TLS Secret keeps the certificate in force and trusts the new CA too.
/// None when there is no certificate in force to keep (nothing to stay compatible with).
async fn trust_new_internal_ca(
    cr: &CertificateRotation,
    round: &mut Round<CertificateRotation>,
    ctx: &Context,
    op: &Operation<CertificateSettings>,
    new: &Material,
) -> Result<Option<BTreeMap<String, String>>, Error> {
    let Some(in_force) = material::read_tls(ctx, cr, Slot::Internal).await? else { return Ok(None) };
    let trust = format!("{}{}", new.ca_pem, without(&in_force.ca_pem, &new.ca_fingerprint));
    let keep = (in_force.cert_pem.as_str(), in_force.key_pem.as_str());
    round.write(vec![material::tls_secret(cr, Slot::Internal, keep, &trust, None)]).await?;
    round.event(
        EventType::Normal,
        TRUST_ROLLING,
        format!(
            "Operation {}: the brokers roll to trust the new internal CA (SHA-256 {}) next to the old one before any of them presents a certificate from it.",
            op.operation_id, new.ca_fingerprint
        ),
    );
    Ok(Some(super::roll_annotations(cr, &mut round.status, &trust)))
}

/// The internal truststore for newly installed material `new`: its CA, plus the previous CA(s)
/// while a transition keeps them (from the Secret in force).
pub(super) async fn internal_trust(
    ctx: &Context,
    cr: &CertificateRotation,
    status: &CertificateRotationStatus,
    new: &Material,
) -> Result<String, Error> {
    if !retains_old_ca(status) {
        return Ok(new.ca_pem.clone());
    }
    let previous = material::read_tls(ctx, cr, Slot::Internal).await?.map(|m| without(&m.ca_pem, &new.ca_fingerprint));
    Ok(format!("{}{}", new.ca_pem, previous.unwrap_or_default()))
}

/// The previous CA is due for removal (the caller checks the maintenance window).
pub(super) fn old_ca_removal_due(status: &CertificateRotationStatus, now: Timestamp) -> Option<Timestamp> {
    let t = status.trust_transition.as_ref().filter(|t| t.phase == TrustPhase::OldCaRetained)?;
    t.old_ca_removal_at.as_deref().and_then(parse_time).or(Some(now))
}

/// Phase 4: trust only the CAs of the certificates in force. Returns the internal truststore
/// written (None: the internal slot kept nothing else).
pub(super) async fn remove_old_ca(
    cr: &CertificateRotation,
    round: &mut Round<CertificateRotation>,
    ctx: &Context,
) -> Result<Option<String>, Error> {
    let mut removed = Vec::new();
    let mut internal = None;
    if let (Some(m), Some(fp)) = (
        material::read_tls(ctx, cr, Slot::Internal).await?,
        round.status.internal.as_ref().and_then(|s| s.ca_fingerprint_sha256.clone()),
    ) {
        let only = only(&m.ca_pem, &fp);
        if !only.is_empty() && only != m.ca_pem {
            round.write(vec![material::tls_secret(cr, Slot::Internal, (&m.cert_pem, &m.key_pem), &only, None)]).await?;
            removed.push("the brokers' internal truststore");
            internal = Some(only);
        }
    }
    if cr.spec.external.is_some() {
        if let Some(current) = material::published_current_ca(ctx, cr).await? {
            round.write(vec![material::trust_bundle(cr, &current, &current)]).await?;
            removed.push("the clients' trust bundle");
        }
    }
    if let Some(t) = round.status.trust_transition.as_mut() {
        t.phase = TrustPhase::OldCaRemoved;
    }
    let what = if removed.is_empty() { "nothing held it any more".to_string() } else { removed.join(" and ") };
    round.event(
        EventType::Normal,
        OLD_CA_REMOVED,
        format!("The previous CA is no longer trusted: removed from {what}."),
    );
    Ok(internal)
}

/// The certificates of PEM `bundle` other than the one with SHA-256 `fingerprint`.
pub(super) fn without(bundle: &str, fingerprint: &str) -> String {
    select(bundle, |fp| fp != fingerprint)
}

/// The certificate of PEM `bundle` with SHA-256 `fingerprint`.
fn only(bundle: &str, fingerprint: &str) -> String {
    select(bundle, |fp| fp == fingerprint)
}

fn select(bundle: &str, keep: impl Fn(&str) -> bool) -> String {
    let ders = inspect::certificates(bundle, "ca.crt").unwrap_or_default();
    let kept: Vec<Vec<u8>> = ders.into_iter().filter(|d| keep(&inspect::fingerprint(d))).collect();
    pki::pem_certificates(&kept)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bundles_are_split_by_fingerprint() {
        let now = Timestamp::from_second(1_800_000_000).unwrap();
        let (a, b) = (pki::new_ca("a", now, 10).unwrap(), pki::new_ca("b", now, 10).unwrap());
        let fp = |pem: &str| pki::fingerprint(&inspect::certificates(pem, "x").unwrap()[0]);
        let both = format!("{}{}", a.cert_pem, b.cert_pem);
        assert_eq!(fp(&without(&both, &fp(&a.cert_pem))), fp(&b.cert_pem));
        assert_eq!(fp(&only(&both, &fp(&a.cert_pem))), fp(&a.cert_pem));
        assert_eq!(only(&both, "nope"), "");
    }

    #[test]
    fn a_transition_recorded_before_phases_existed_retains_the_old_ca_until_its_time() {
        let cr: CertificateRotation = serde_json::from_value(serde_json::json!({
            "apiVersion": "clustersecurity.io/v1alpha1", "kind": "CertificateRotation",
            "metadata": {"name": "c", "namespace": "n"},
            "spec": {"clusterRef": {"kind": "StatefulSet", "name": "k"}, "external": {"label": "a"}, "oldCaRetentionSeconds": 60}
        }))
        .unwrap();
        let recorded = |switched: Option<&str>| {
            let mut t = serde_json::json!({"operationId": "op", "newCaFingerprintSHA256": "AB", "publishedAt": "2026-01-01T00:00:00Z", "switchAt": "2026-01-02T00:00:00Z"});
            if let Some(s) = switched {
                t["switchedAt"] = s.into();
            }
            let mut status = CertificateRotationStatus {
                trust_transition: Some(serde_json::from_value(t).unwrap()),
                ..Default::default()
            };
            upgrade_recorded(&cr, &mut status);
            status.trust_transition.unwrap()
        };
        let waiting = recorded(None);
        assert_eq!(waiting.phase, TrustPhase::WaitingForClients, "still waiting for clients: never switched early");
        let switched = recorded(Some("2026-01-01T12:00:00Z"));
        assert_eq!(switched.phase, TrustPhase::OldCaRetained);
        assert_eq!(switched.old_ca_removal_at.as_deref(), Some("2026-01-01T12:01:00Z"));
    }

    #[test]
    fn phases_are_ordered_and_removal_waits_for_its_time() {
        assert!(TrustPhase::TrustRolling < TrustPhase::WaitingForClients);
        assert!(TrustPhase::Switching < TrustPhase::OldCaRetained);
        let now = Timestamp::from_second(1_800_000_000).unwrap();
        let status = |phase| CertificateRotationStatus {
            trust_transition: Some(TrustTransition {
                operation_id: "op".into(),
                phase,
                old_ca_removal_at: Some(rfc3339(now)),
                ..Default::default()
            }),
            ..Default::default()
        };
        assert_eq!(old_ca_removal_due(&status(TrustPhase::OldCaRetained), now), Some(now));
        assert_eq!(old_ca_removal_due(&status(TrustPhase::Switching), now), None, "not switched yet");
        assert_eq!(old_ca_removal_due(&status(TrustPhase::OldCaRemoved), now), None, "done");
        assert!(before_switch_phase(&status(TrustPhase::TrustRolling), "op"));
        assert!(!before_switch_phase(&status(TrustPhase::Switching), "op"));
        assert!(!before_switch_phase(&status(TrustPhase::TrustRolling), "other"));
    }
}
