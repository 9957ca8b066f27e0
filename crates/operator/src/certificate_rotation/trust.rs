//! Trust first, then switch: an external certificate signed by a different CA
//! (`clientImpact: TrustUpdateRequired`) is not rolled at once. The operation publishes the new
//! CA next to the old one in the trust bundle (`<cluster>-external-trust`: `ca.crt` both,
//! `current-ca.crt` still the old one, which the brokers keep presenting) and stays PENDING —
//! `WaitingForClientTrust=True`, `status.trustTransition` — until the annotation
//! `clustersecurity.io/client-trust-updated` names the operation or `trustTransitionSeconds`
//! have passed; only then are the TLS Secret written and the brokers rolled. The bundle keeps both
//! CAs afterwards (clients reconnecting to a broker not yet rolled still trust it).
//!
//! What this module may touch: the trust bundle ConfigMap (through `material`), and the round's
//! status and conditions.

use std::time::Duration;

use k8s_openapi::jiff::Timestamp;
use kube::{Resource, ResourceExt};

use super::inspect::Material;
use super::{material, trust_configmap};
use crate::api::{
    CertificateRotation, CertificateSettings, Operation, TrustTransition, CLIENT_TRUST_UPDATED_ANNOTATION,
};
use crate::reconciler::conditions;
use crate::reconciler::operation::{parse_time, rfc3339};
use crate::reconciler::rolling::PrepareError;
use crate::reconciler::{Context, Round};

/// Default of `spec.external.trustTransitionSeconds`.
pub const DEFAULT_TRUST_TRANSITION_SECONDS: u32 = 86_400;
/// How often a waiting operation looks at the clock (the annotation comes sooner, by watch).
const RECHECK: Duration = Duration::from_secs(60);

/// Before the brokers switch to `new` (a certificate from another CA): publish the new CA and
/// wait, or go on. `Err(Wait)` while clients may not have it yet.
pub async fn before_switch(
    cr: &CertificateRotation,
    round: &mut Round<CertificateRotation>,
    ctx: &Context,
    op: &Operation<CertificateSettings>,
    new: &Material,
) -> Result<(), PrepareError> {
    let seconds =
        cr.spec.external.as_ref().and_then(|e| e.trust_transition_seconds).unwrap_or(DEFAULT_TRUST_TRANSITION_SECONDS);
    if seconds == 0 {
        return Ok(());
    }
    let now = round.now;
    let recorded = round
        .status
        .trust_transition
        .clone()
        .filter(|t| t.operation_id == op.operation_id && t.new_ca_fingerprint_sha256 == new.ca_fingerprint);
    let transition = match recorded {
        Some(t) => t,
        None => {
            // Publish: the new CA and the one in force, which stays `current-ca.crt`.
            let current = material::published_current_ca(ctx, cr).await?.unwrap_or_default();
            material::write_trust_bundle(ctx, cr, &format!("{}{current}", new.ca_pem), &current).await?;
            let switch_at = Timestamp::from_second(now.as_second() + i64::from(seconds)).unwrap_or(now);
            TrustTransition {
                operation_id: op.operation_id.clone(),
                new_ca_fingerprint_sha256: new.ca_fingerprint.clone(),
                published_at: rfc3339(now),
                switch_at: rfc3339(switch_at),
                switched_at: None,
            }
        }
    };
    let confirmed =
        cr.meta().annotations.as_ref().and_then(|a| a.get(CLIENT_TRUST_UPDATED_ANNOTATION)) == Some(&op.operation_id);
    let switch_at = parse_time(&transition.switch_at).unwrap_or(now);
    let ns = cr.namespace().unwrap_or_default();
    let bundle = trust_configmap(&cr.spec.cluster_ref.name);
    if confirmed || now >= switch_at {
        let why = if confirmed { "clients confirmed to trust it" } else { "trustTransitionSeconds passed" };
        let message = format!("The new CA (SHA-256 {}) is in effect: {why}.", transition.new_ca_fingerprint_sha256);
        round.sticky_condition(
            conditions::WAITING_FOR_CLIENT_TRUST,
            None,
            (conditions::reason::CLIENT_TRUST_UPDATED, &message),
        );
        round.status.trust_transition = Some(TrustTransition { switched_at: Some(rfc3339(now)), ..transition });
        return Ok(());
    }
    let message = format!(
        "The new external certificate is signed by another CA (SHA-256 {}). Its CA is published next to the old one in ConfigMap {ns}/{bundle} (ca.crt); the brokers keep presenting the old certificate until {} (spec.external.trustTransitionSeconds), or until you confirm that clients trust the new CA: kubectl annotate certificaterotation {} -n {ns} {CLIENT_TRUST_UPDATED_ANNOTATION}={} --overwrite",
        transition.new_ca_fingerprint_sha256,
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
    let left = Duration::from_secs((switch_at.as_second() - now.as_second()).max(1) as u64);
    Err(PrepareError::Wait {
        reason: conditions::reason::WAITING_FOR_CLIENT_TRUST.into(),
        message,
        after: left.min(RECHECK),
    })
}
