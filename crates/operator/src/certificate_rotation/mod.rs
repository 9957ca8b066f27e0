//! CertificateRotation: a new label (or a due renewal) becomes a ROTATE_CERTIFICATES operation,
//! driven by the kit's rolling driver: check or issue the material, write the TLS Secrets and
//! the trust bundle ([`material`]), roll the pods. Certificate checks are in [`inspect`] (pure);
//! names and client impact below (pure).
//!
//! What this module may touch: see [`material`]; it reads the workload and, for `type: secret`,
//! watches the referenced Secrets' metadata.

#[cfg(test)]
mod api_tests;
mod distribute;
pub(crate) mod inspect;
pub(crate) mod material;
mod trust;

use std::collections::BTreeMap;
use std::time::Duration;

use k8s_openapi::api::core::v1::{Namespace, Secret};
use k8s_openapi::jiff::Timestamp;
use kube::core::PartialObjectMeta;
use kube::runtime::controller::Controller;
use kube::runtime::events::EventType;
use kube::runtime::reflector::ObjectRef;
use kube::{Api, Client, ResourceExt};

use self::material::{install, label_changed, material, needs_issue, slot_status, wants};
use crate::api::maintenance;
use crate::api::{
    CertificateRotation, CertificateRotationStatus, CertificateSettings, CertificateType, ClientImpact, Operation,
    OperationState, OperationType, TrustPhase,
};
use crate::reconciler::conditions::{self, reason};
use crate::reconciler::derived::{self, Derived};
use crate::reconciler::events::reason::DRIFT_REPAIRED;
use crate::reconciler::rolling::{self, Idle, PrepareError, Rolling};
use crate::reconciler::verify::Expectation;
use crate::reconciler::watch::{self, TargetsWorkload};
use crate::reconciler::wiring::{Mount, Source, Wiring};
use crate::reconciler::workload::Workload;
use crate::reconciler::Noted as _;
use crate::reconciler::{operation, Context, Error, Health, Named, Outcome, Reconcile, Round};
use crate::security_policy::properties::{EXTERNAL_TLS_DIR, INTERNAL_TLS_DIR};
use crate::security_policy::served;
use crate::validate::{self, Violations};

/// External (clients) or internal (pod-to-pod) certificate.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Slot {
    External,
    Internal,
}

impl Slot {
    pub(crate) fn as_str(self) -> &'static str {
        match self {
            Self::External => "external",
            Self::Internal => "internal",
        }
    }
    /// Secret `<cluster>-<slot>-tls` with tls.crt, tls.key, ca.crt.
    pub(crate) fn tls_secret(self, cluster: &str) -> String {
        served::tls_secret_name(cluster, self.as_str())
    }
    /// Secret `<cluster>-<slot>-ca` with the CA the operator keeps for self-signed certificates.
    pub(crate) fn ca_secret(self, cluster: &str) -> String {
        format!("{cluster}-{}-ca", self.as_str())
    }
    /// Pod-template annotation carrying the label.
    pub(crate) fn label_annotation(self) -> String {
        format!("clustersecurity.io/{}-certificate-label", self.as_str())
    }
}

/// ConfigMap with the CA(s) clients of the external listeners should trust.
pub(crate) fn trust_configmap(cluster: &str) -> String {
    format!("{cluster}-external-trust")
}

/// Pod-template annotation that changes with the certificates themselves (renewals keep labels).
pub(crate) const CERTIFICATE_HASH_ANNOTATION: &str = "clustersecurity.io/certificate-hash";

/// TLS Secret annotation: the operation its certificate was issued for. An operator restarted
/// after issuing but before recording the rollout finds it and reuses the certificate instead of
/// issuing (and rolling) another.
pub(crate) const OPERATION_ANNOTATION: &str = "clustersecurity.io/operation-id";

/// Default SANs: the names a client uses to reach the brokers through their Service.
pub(crate) fn default_dns_names(service: &str, namespace: &str) -> Vec<String> {
    vec![
        service.to_string(),
        format!("{service}.{namespace}"),
        format!("{service}.{namespace}.svc"),
        format!("{service}.{namespace}.svc.cluster.local"),
        format!("*.{service}.{namespace}.svc"),
        format!("*.{service}.{namespace}.svc.cluster.local"),
    ]
}

/// The seed's "Updating clients after certificate change": clients keep working when the new
/// certificate chains to the CA they already trust. None for a first issue.
pub(crate) fn client_impact(old_ca_fingerprint: Option<&str>, new_ca_fingerprint: &str) -> Option<ClientImpact> {
    old_ca_fingerprint.map(|old| {
        if old == new_ca_fingerprint {
            ClientImpact::None
        } else {
            ClientImpact::TrustUpdateRequired
        }
    })
}

/// How long before expiry a certificate the operator cannot renew (type `provided` or `secret`)
/// counts as due (cert-manager's default `renewBefore`).
pub(crate) const RENEW_BEFORE_SECONDS: i64 = 30 * 86_400;

/// The installed certificates that need someone else to act: a `provided` or `secret` one within
/// [`RENEW_BEFORE_SECONDS`] of its expiry, or any that has expired (a self-signed one the
/// operator could not renew in time). One line each, naming the slot, the expiry and what to do.
pub(crate) fn expiring(status: &CertificateRotationStatus, now: Timestamp) -> Vec<String> {
    let mut out = Vec::new();
    for (slot, cert) in [(Slot::External, &status.external), (Slot::Internal, &status.internal)] {
        let Some(cert) = cert else { continue };
        let Some(not_after) = cert.not_after.as_deref().and_then(operation::parse_time) else { continue };
        let left = not_after.as_second() - now.as_second();
        let renewed_by_us = cert.type_ == CertificateType::Selfsigned;
        let what = match cert.type_ {
            CertificateType::Secret => {
                "put renewed material in the Secret (with rollOnSourceChange it rolls by itself) or change the label"
            }
            CertificateType::Provided => "change the label with new key, cert and cacert",
            CertificateType::Selfsigned => "see why the renewal did not run (the operation's status, the workload)",
        };
        if left <= 0 {
            out.push(format!(
                "the {} certificate (type {}) expired at {}: {what}.",
                slot.as_str(),
                cert.type_.as_str(),
                operation::rfc3339(not_after)
            ));
        } else if !renewed_by_us && left <= RENEW_BEFORE_SECONDS {
            out.push(format!(
                "the {} certificate (type {}) expires at {} ({} days); the operator cannot renew it: {what}.",
                slot.as_str(),
                cert.type_.as_str(),
                operation::rfc3339(not_after),
                left / 86_400
            ));
        }
    }
    out
}

/// The `CertificateExpiring` condition, and a Warning event when it turns True. It appears the
/// first time a certificate is due and stays (False) after.
fn report_expiring(round: &mut Round<CertificateRotation>) {
    let due = expiring(&round.status, round.now);
    let mut message = due.join(" ");
    if let Some(first) = message.get_mut(0..1) {
        first.make_ascii_uppercase();
    }
    let valid = (
        reason::CERTIFICATES_VALID,
        "Every certificate is valid beyond its renewal window, or the operator renews it.",
    );
    let truth = (!due.is_empty()).then_some((reason::RENEWAL_NEEDED, message.as_str()));
    let was = round.sticky_condition(conditions::CERTIFICATE_EXPIRING, truth, valid);
    if !due.is_empty() && !was {
        round.event(EventType::Warning, reason::RENEWAL_NEEDED, message);
    }
}

/// When a self-signed certificate is renewed: two thirds into its validity.
pub(crate) fn renewal_time(not_before: Timestamp, not_after: Timestamp) -> Timestamp {
    let span = not_after.as_second() - not_before.as_second();
    Timestamp::from_second(not_after.as_second() - span / 3).unwrap_or(not_after)
}

impl Reconcile for CertificateRotation {
    /// Under deletionPolicy Delete only: what goes with it must not be mounted any more.
    const FINALIZER: Option<&'static str> = Some(rolling::MOUNTED_OBJECTS_FINALIZER);

    fn wants_finalizer(&self) -> bool {
        self.spec.deletion_policy == crate::api::DeletionPolicy::Delete
    }

    fn may_go(&self, _: &CertificateRotationStatus, outcome: &Outcome) -> bool {
        rolling::may_go(outcome)
    }

    type Deps = ();

    fn api(client: Client, obj: &Self) -> Api<Self> {
        Api::namespaced(client, &obj.namespace().unwrap_or_default())
    }

    fn validate(&self, status: &CertificateRotationStatus, _: &()) -> Result<(), Violations> {
        validate::certificate_rotation(&self.spec)?;
        rolling::cluster_ref_violation(self, status).map_or(Ok(()), Err)
    }

    async fn advance(&self, round: &mut Round<Self>, ctx: &Context, _: &()) -> Result<Outcome, Error> {
        trust::upgrade_recorded(self, &mut round.status);
        let mut outcome = rolling::advance(self, round, ctx).await?;
        report_expiry(ctx, self, &round.status);
        // Being deleted: the copies stay as they are (Retain) or are gone already (Delete).
        if self.metadata.deletion_timestamp.is_some() {
            return Ok(outcome);
        }
        if let Some(resync) = distribute::sync(self, round, ctx).await {
            outcome.requeue = Some(outcome.requeue.map_or(resync, |r| r.min(resync)));
        }
        Ok(outcome)
    }

    /// Its workloads (rollout progress), what it wrote (drift), and the Secrets
    /// `spec.external.secretName` names, metadata only: their contents are neither streamed nor
    /// cached.
    fn watches(controller: Controller<Self>, ctx: &Context) -> Controller<Self> {
        let secret_name = |c: &Self| c.spec.external.iter().filter_map(|e| e.secret_name.clone()).collect();
        let controller = derived::watch(watch::workloads(controller, ctx), ctx);
        let controller = watch::referenced_secrets(controller, ctx, secret_name);
        // A namespace created or labelled for `spec.trustDistribution` gets its copy at once
        // (cluster-wide installs; a scoped one cannot read namespaces and resyncs instead).
        if ctx.scope.watched().is_some() {
            return controller;
        }
        let store = controller.store();
        let namespaces = Api::<PartialObjectMeta<Namespace>>::all(ctx.client.clone());
        controller.watches(namespaces, watch::config(), move |ns: PartialObjectMeta<Namespace>| {
            let name = ns.name_any();
            store
                .state()
                .into_iter()
                .filter(|c| {
                    c.spec
                        .trust_distribution
                        .as_ref()
                        .is_some_and(|d| d.namespace_selector.is_some() || d.namespaces.contains(&name))
                })
                .map(|c| ObjectRef::from_obj(c.as_ref()))
                .collect::<Vec<_>>()
        })
    }
}

impl TargetsWorkload for CertificateRotation {
    fn cluster_ref(&self) -> &crate::api::ClusterRef {
        &self.spec.cluster_ref
    }
}

impl Rolling for CertificateRotation {
    const OPERATION: OperationType = OperationType::RotateCertificates;
    const WHAT: &'static str = "certificates";

    fn recorded_cluster_ref(status: &CertificateRotationStatus) -> Option<&crate::api::ClusterRef> {
        status.cluster_ref.as_ref()
    }

    fn record_cluster_ref(status: &mut CertificateRotationStatus, target: &crate::api::ClusterRef) {
        status.cluster_ref = Some(target.clone());
    }

    fn desired(&self) -> CertificateSettings {
        material::desired_settings(self)
    }

    fn rollout_timeout_seconds(&self) -> u32 {
        self.spec.rollout_timeout_seconds
    }

    fn deletion_policy(&self) -> crate::api::DeletionPolicy {
        self.spec.deletion_policy
    }

    async fn idle(
        &self,
        round: &mut Round<Self>,
        ctx: &Context,
        _: Option<&Workload>,
    ) -> Result<Idle<CertificateSettings>, Error> {
        let referenced = Referenced::read(ctx, self, &round.status, round.now).await?;
        for slot in &referenced.drifted {
            let name = slot.tls_secret(&self.spec.cluster_ref.name);
            let note = format!(
                "Secret {}/{name} was deleted or no longer holds the {} certificate in force; it is issued again \
                 (same label, same CA) in a new operation.",
                round.namespace(),
                slot.as_str()
            );
            round.event(EventType::Normal, DRIFT_REPAIRED, note);
        }
        let change = referenced
            .source
            .as_ref()
            .map(|c| rolling::SourceChange { message: c.message().to_string(), rolls: c.rolls(self) });
        rolling::report_source_change(round, change.as_ref());
        let (start, automatic) = starts(self, &round.status, &referenced, round.now);
        if start {
            let status = &round.status;
            let source = CertificateSettings {
                external_label: status.external.as_ref().map(|s| s.label.clone()),
                external_type: status.external.as_ref().map(|s| s.type_),
                internal_label: status.internal.as_ref().map(|s| s.label.clone()),
            };
            return Ok(Idle::Start { source: Some(source) });
        }
        report_expiring(round);
        let next_look = next_look(self, &round.status, automatic, round.now);
        let message = settled_message(self, round, referenced.source.as_ref(), automatic);
        Ok(Idle::Settled(Outcome::new(Health::Ready { reason: reason::APPLIED, message }, next_look)))
    }

    async fn referenced_secrets_present(&self, ctx: &Context) -> Result<bool, Error> {
        let Some(name) = self.spec.external.as_ref().and_then(|e| e.secret_name.clone()) else { return Ok(false) };
        let ns = self.namespace().unwrap_or_default();
        let found = Api::<Secret>::namespaced(ctx.client.clone(), &ns)
            .get_metadata_opt(&name)
            .await
            .reading(&Named::new("Secret", &ns, &name))?;
        Ok(found.is_some())
    }

    async fn prepare(
        &self,
        round: &mut Round<Self>,
        ctx: &Context,
        op: &Operation<CertificateSettings>,
        workload: Option<&Workload>,
    ) -> Result<BTreeMap<String, String>, PrepareError> {
        let now = round.now;
        let referenced = Referenced::read(ctx, self, &round.status, now).await?;
        let plan = plan_issues(self, &round.status, &op.operation_id, &referenced, now);
        // Check every new certificate before anything is written: all or nothing.
        let mut ready = Vec::new();
        for issue in plan.issues {
            let source = material::read_source(ctx, self, &issue.want).await?;
            let m = material(round, self, &issue.want, source, workload, &op.operation_id, issue.new_ca).await?;
            ready.push((issue.want, m));
        }
        if plan.renew_ca.is_some() {
            round.status.ca_renew_request = plan.renew_ca;
        }
        // Trust first: a certificate from another CA waits until everyone trusts that CA.
        let change = trust::CaChange::of(&round.status, &ready);
        if trust::withdraw_if_unwanted(self, round, ctx, &op.operation_id, change.as_ref()).await? {
            // Nothing to switch to: what was prepared only for the switch is not installed.
            ready.retain(|(w, _)| !plan.only_for_the_switch.contains(&w.slot));
        }
        if let Some(change) = change {
            if let Some(annotations) = trust::before_switch(self, round, ctx, op, &change, &ready).await? {
                return Ok(annotations);
            }
        }
        if plan.renew_now.is_some() {
            round.status.renew_request = plan.renew_now;
        }
        let mut internal_trust = install_all(self, round, ctx, op, &ready).await?;
        // The previous CA's time is up: trust only the CAs in force.
        if trust::old_ca_removal_due(&round.status, now).is_some_and(|at| now >= at) {
            if let Some(trust) = trust::remove_old_ca(self, round, ctx).await? {
                internal_trust = Some(trust);
            }
        }
        let internal_trust = match internal_trust {
            Some(t) => t,
            None => material::read_tls(ctx, self, Slot::Internal).await?.map(|m| m.ca_pem).unwrap_or_default(),
        };
        Ok(roll_annotations(self, &mut round.status, &internal_trust))
    }

    /// The copies of the trust bundle in other namespaces (`spec.trustDistribution`): the brokers
    /// no longer present what they vouch for.
    async fn release(&self, round: &mut Round<Self>, ctx: &Context) {
        distribute::release(self, round, ctx).await
    }

    /// The trust bundle, deleted or edited by someone (a TLS Secret is issued again by `idle`).
    async fn repair_artefacts(
        &self,
        round: &mut Round<Self>,
        ctx: &Context,
        _: Option<&Workload>,
    ) -> Result<Vec<String>, Error> {
        material::repair_trust_bundle(round, ctx, self).await
    }

    /// What the brokers' TLS listeners must present once rolled (shared with the policy).
    async fn wire_expectation(&self, ctx: &Context) -> Result<Option<Expectation>, Error> {
        let ns = self.namespace().unwrap_or_default();
        served::when_verified(ctx, &ns, &self.spec.cluster_ref.name, self.spec.verify.as_ref()).await
    }

    /// The TLS Secret of each slot the target has, at its documented path.
    fn wiring(&self, target: &CertificateSettings) -> Wiring {
        let cluster = &self.spec.cluster_ref.name;
        let slots = [
            (target.external_label.is_some(), Slot::External, "csop-external-tls", EXTERNAL_TLS_DIR),
            (target.internal_label.is_some(), Slot::Internal, "csop-internal-tls", INTERNAL_TLS_DIR),
        ];
        let mounts = slots
            .into_iter()
            .filter(|(present, ..)| *present)
            .map(|(_, slot, volume, path)| Mount { volume, source: Source::Secret(slot.tls_secret(cluster)), path })
            .collect();
        Wiring::new(self.spec.mounts.as_ref(), mounts, &["csop-external-tls", "csop-internal-tls"])
    }

    /// Each slot's TLS Secret and (self-signed) kept CA; the external slot's trust bundle.
    fn derived_objects(&self) -> Vec<Derived> {
        let cluster = &self.spec.cluster_ref.name;
        let mut out = Vec::new();
        for w in wants(self) {
            out.push(Derived::Secret(w.slot.tls_secret(cluster)));
            if w.type_ == CertificateType::Selfsigned {
                out.push(Derived::Secret(w.slot.ca_secret(cluster)));
            }
            if w.slot == Slot::External {
                out.push(Derived::ConfigMap(trust_configmap(cluster)));
            }
        }
        out
    }

    /// A CA change's trust roll is done: switch (after waiting for clients).
    fn another_phase(&self, status: &CertificateRotationStatus, op: &Operation<CertificateSettings>) -> bool {
        trust::before_switch_phase(status, &op.operation_id)
    }

    /// Switched: the previous CA stays trusted until `oldCaRemovalAt`.
    fn completed(&self, status: &mut CertificateRotationStatus, _: &CertificateSettings) {
        if let Some(t) = status.trust_transition.as_mut().filter(|t| t.phase == TrustPhase::Switching) {
            t.phase = TrustPhase::OldCaRetained;
        }
    }

    fn expected(status: &CertificateRotationStatus) -> BTreeMap<String, String> {
        BTreeMap::from([(CERTIFICATE_HASH_ANNOTATION.to_string(), status.certificate_hash.clone().unwrap_or_default())])
    }
}

/// How close to its expiry a certificate or CA is renewed even outside the maintenance windows.
pub(crate) const MAINTENANCE_WINDOW_OVERRIDE_SECONDS: i64 = 2 * 86_400;

/// What a round of a CertificateRotation reads once, settled or preparing: the slots whose TLS
/// Secret drifted, how the Secret of a `type: secret` certificate differs from what is in
/// force, and the self-signed slots whose kept CA is due.
struct Referenced {
    drifted: Vec<Slot>,
    source: Option<material::SourceChange>,
    ca_due: Vec<Slot>,
}

impl Referenced {
    async fn read(
        ctx: &Context,
        cr: &CertificateRotation,
        status: &CertificateRotationStatus,
        now: Timestamp,
    ) -> Result<Self, Error> {
        Ok(Self {
            drifted: material::drifted_slots(ctx, cr, status).await?,
            source: material::source_secret_changed(ctx, cr, status).await?,
            ca_due: material::ca_due_slots(ctx, cr, now).await?,
        })
    }
}

/// Whether a settled rotation starts an operation now, and whether something the operator
/// starts by itself (a renewal, a CA due, the old CA's removal) is due.
fn starts(
    cr: &CertificateRotation,
    status: &CertificateRotationStatus,
    referenced: &Referenced,
    now: Timestamp,
) -> (bool, bool) {
    let rolls = referenced.source.as_ref().is_some_and(|c| c.rolls(cr));
    let renew = renew_requested(cr, status).is_some() || ca_renew_requested(cr, status).is_some();
    // The certificates are installed before the roll: after a failed operation (the rollout
    // or the check on the wire) they are not in effect. The driver keeps that Stalled until
    // the spec changes or a retry is asked; then a new operation rolls and checks again.
    let last_failed = status.operations.first().is_some_and(|o| o.operation_state == OperationState::UpdateFailed);
    let changed = wants(cr).iter().any(|w| label_changed(w, status));
    // What the operator starts by itself waits for a maintenance window; what a user asked
    // for (a label, an annotation) and repairs do not.
    let automatic = wants(cr).iter().any(|w| needs_issue(w, status, now))
        || !referenced.ca_due.is_empty()
        || trust::old_ca_removal_due(status, now).is_some_and(|at| now >= at);
    // ... unless waiting would let a certificate or CA expire: an outage is worse than a
    // roll outside the window.
    let window = maintenance::in_window(&cr.spec.maintenance_windows, civil_minute(now))
        || expires_within(status, now, MAINTENANCE_WINDOW_OVERRIDE_SECONDS);
    let start = rolls || renew || last_failed || !referenced.drifted.is_empty() || changed || (automatic && window);
    (start, automatic)
}

/// Settled: look again when the first certificate is due — a self-signed one for renewal,
/// another for the CertificateExpiring warning — or the previous CA's removal, or the next
/// maintenance window when something waits for one (`automatic`); at least daily.
fn next_look(
    cr: &CertificateRotation,
    status: &CertificateRotationStatus,
    automatic: bool,
    now: Timestamp,
) -> Option<Duration> {
    let ca_renewal = |s: &crate::api::CertificateStatus| {
        let not_after = s.ca_not_after.as_deref().and_then(operation::parse_time)?;
        Some(not_after.as_second() - material::ca_renew_before(cr))
    };
    let due_at = |s: &crate::api::CertificateStatus| match s.type_ {
        CertificateType::Selfsigned => {
            let leaf = s.renewal_time.as_deref().and_then(operation::parse_time).map(|t| t.as_second());
            leaf.into_iter().chain(ca_renewal(s)).min()
        }
        _ => s.not_after.as_deref().and_then(operation::parse_time).map(|t| t.as_second() - RENEW_BEFORE_SECONDS),
    };
    [status.external.as_ref(), status.internal.as_ref()]
        .into_iter()
        .flatten()
        .filter_map(due_at)
        .chain(trust::old_ca_removal_due(status, now).map(|t| t.as_second()))
        .chain(automatic.then(|| next_window(&cr.spec.maintenance_windows, now)).flatten())
        .filter(|t| *t > now.as_second())
        .min()
        .map(|t| Duration::from_secs((t - now.as_second()).clamp(1, 86_400).unsigned_abs()))
        .or(Some(Duration::from_secs(86_400)))
}

/// The Ready message of a settled rotation: what is in effect, a change of the source Secret,
/// and what waits for a maintenance window (`automatic`).
fn settled_message(
    cr: &CertificateRotation,
    round: &Round<CertificateRotation>,
    source: Option<&material::SourceChange>,
    automatic: bool,
) -> String {
    let wl = rolling::workload_text(round);
    let mut message = rolling::in_effect::<CertificateRotation>(&wl);
    if let Some(change) = source {
        message = format!("{message} {}", change.message());
    }
    if automatic {
        let next = next_window(&cr.spec.maintenance_windows, round.now)
            .and_then(|t| Timestamp::from_second(t).ok())
            .map_or("not within the next 8 days".to_string(), operation::rfc3339);
        message = format!(
            "{message} A renewal (or the previous CA's removal) is due and waits for the next maintenance window (spec.maintenanceWindows): {next}; annotate {} or {} to run it now.",
            crate::api::RENEW_ANNOTATION,
            crate::api::RENEW_CA_ANNOTATION
        );
    }
    message
}

/// A slot an operation issues: what it asks for, and whether from a new kept CA.
struct Issue {
    want: material::Want,
    new_ca: bool,
}

/// What an operation issues, decided before anything is read for it.
struct IssuePlan {
    issues: Vec<Issue>,
    /// Slots issued only because a CA change of this operation switches them.
    only_for_the_switch: Vec<Slot>,
    /// The renew and renew-ca annotation values this operation answers.
    renew_now: Option<String>,
    renew_ca: Option<String>,
}

/// Which slots operation `op_id` issues: a new label, a renewal due, a drifted TLS Secret, a
/// renewed source Secret (rollOnSourceChange), the renew annotation (not `provided`: that
/// material is the spec's), a new kept CA (the renew-ca annotation or a CA near its end), and
/// what a later phase of a CA change installs.
fn plan_issues(
    cr: &CertificateRotation,
    status: &CertificateRotationStatus,
    op_id: &str,
    referenced: &Referenced,
    now: Timestamp,
) -> IssuePlan {
    let renewed =
        |w: &material::Want| w.slot == Slot::External && referenced.source.as_ref().is_some_and(|c| c.rolls(cr));
    let renew_now = renew_requested(cr, status).map(String::from);
    let asked = |w: &material::Want| renew_now.is_some() && w.type_ != CertificateType::Provided;
    let renew_ca = ca_renew_requested(cr, status).map(String::from);
    let new_ca = |w: &material::Want| {
        w.type_ == CertificateType::Selfsigned && (renew_ca.is_some() || referenced.ca_due.contains(&w.slot))
    };
    // A later phase of a CA change installs what its first phase announced.
    let switching = |w: &material::Want| {
        trust::of_operation(status, op_id).is_some_and(|t| match w.slot {
            Slot::External => t.new_ca_fingerprint_sha256.is_some(),
            Slot::Internal => t.internal_new_ca_fingerprint_sha256.is_some(),
        })
    };
    let due_by_itself = |w: &material::Want| {
        needs_issue(w, status, now) || referenced.drifted.contains(&w.slot) || renewed(w) || asked(w) || new_ca(w)
    };
    let (mut issues, mut only_for_the_switch) = (Vec::new(), Vec::new());
    for want in wants(cr).into_iter().filter(|w| due_by_itself(w) || switching(w)) {
        if !due_by_itself(&want) {
            only_for_the_switch.push(want.slot);
        }
        issues.push(Issue { new_ca: new_ca(&want), want });
    }
    IssuePlan { issues, only_for_the_switch, renew_now, renew_ca }
}

/// Install the checked material `ready` of operation `op`: each slot's TLS Secret (and the
/// external trust bundle), recorded in the status. Returns the internal truststore installed.
async fn install_all(
    cr: &CertificateRotation,
    round: &mut Round<CertificateRotation>,
    ctx: &Context,
    op: &Operation<CertificateSettings>,
    ready: &[(material::Want, inspect::Material)],
) -> Result<Option<String>, Error> {
    let mut internal_trust = None;
    for (w, m) in ready {
        if w.type_ == CertificateType::Provided {
            round.event(EventType::Warning, "PrivateKeyInSpec", "spec.external.key holds a private key in a custom resource, which is not encrypted at rest like a Secret; prefer type secret with secretName.");
        }
        let trust = match w.slot {
            Slot::External => m.ca_pem.clone(),
            Slot::Internal => trust::internal_trust(ctx, cr, &round.status, m).await?,
        };
        let old = slot_status(&round.status, w.slot).cloned();
        let installed = install(ctx, cr, w, m, &trust, &op.operation_id, old.as_ref(), round).await?;
        match w.slot {
            Slot::External => round.status.external = Some(installed),
            Slot::Internal => {
                round.status.internal = Some(installed);
                internal_trust = Some(trust);
            }
        }
    }
    Ok(internal_trust)
}

/// Whether a certificate in force, or its CA, expires within `seconds` of `now`.
fn expires_within(status: &CertificateRotationStatus, now: Timestamp, seconds: i64) -> bool {
    [status.external.as_ref(), status.internal.as_ref()]
        .into_iter()
        .flatten()
        .flat_map(|s| [s.not_after.as_deref(), s.ca_not_after.as_deref()])
        .flatten()
        .filter_map(operation::parse_time)
        .any(|t| t.as_second() - now.as_second() < seconds)
}

/// `now` as the civil minute maintenance windows are written in (UTC).
fn civil_minute(now: Timestamp) -> maintenance::Minute {
    let t = now.to_zoned(k8s_openapi::jiff::tz::TimeZone::UTC);
    let narrow = |v: i8| u8::try_from(v).unwrap_or(0);
    maintenance::Minute {
        minute: narrow(t.minute()),
        hour: narrow(t.hour()),
        day: narrow(t.day()),
        month: narrow(t.month()),
        weekday: narrow(t.weekday().to_sunday_zero_offset()),
    }
}

/// The start (Unix seconds) of the first minute after `now` inside a maintenance window, within
/// eight days; None without windows or when none opens by then.
fn next_window(windows: &[String], now: Timestamp) -> Option<i64> {
    if windows.is_empty() {
        return None;
    }
    let first = (now.as_second() / 60 + 1) * 60;
    (0..8 * 24 * 60)
        .map(|i| first + i * 60)
        .find(|s| Timestamp::from_second(*s).is_ok_and(|t| maintenance::in_window(windows, civil_minute(t))))
}

/// The pod-template annotations that roll what is installed: a hash of the certificates in
/// force and of the brokers' internal truststore (recorded in the status), and the labels.
fn roll_annotations(
    cr: &CertificateRotation,
    status: &mut CertificateRotationStatus,
    internal_trust: &str,
) -> BTreeMap<String, String> {
    let mut parts: Vec<&[u8]> = [status.external.as_ref(), status.internal.as_ref()]
        .into_iter()
        .flatten()
        .filter_map(|s| s.fingerprint_sha256.as_deref().map(str::as_bytes))
        .collect();
    if !internal_trust.is_empty() {
        parts.push(internal_trust.as_bytes());
    }
    let hash = crate::security_policy::properties::security_hash(&parts);
    status.certificate_hash = Some(hash.clone());
    let mut annotations = BTreeMap::from([(CERTIFICATE_HASH_ANNOTATION.to_string(), hash)]);
    for w in wants(cr) {
        annotations.insert(w.slot.label_annotation(), w.label);
    }
    annotations
}

/// The value of `clustersecurity.io/renew-ca` when it asks for a CA renewal not yet acted on.
fn ca_renew_requested<'a>(cr: &'a CertificateRotation, status: &CertificateRotationStatus) -> Option<&'a str> {
    requested(cr, crate::api::RENEW_CA_ANNOTATION, status.ca_renew_request.as_deref())
}

/// The value of `clustersecurity.io/renew` when it asks for a renewal not yet acted on.
fn renew_requested<'a>(cr: &'a CertificateRotation, status: &CertificateRotationStatus) -> Option<&'a str> {
    requested(cr, crate::api::RENEW_ANNOTATION, status.renew_request.as_deref())
}

/// The value of `annotation` when it differs from the one last `acted_on` (once per new value).
fn requested<'a>(cr: &'a CertificateRotation, annotation: &str, acted_on: Option<&str>) -> Option<&'a str> {
    let asked = cr.annotations().get(annotation)?;
    (acted_on != Some(asked.as_str())).then_some(asked.as_str())
}

/// The expiry and planned renewal of the certificates the rotation installed, as metrics (what
/// `status.external` / `status.internal` say; a slot without a certificate has no series).
fn report_expiry(ctx: &Context, cr: &CertificateRotation, status: &CertificateRotationStatus) {
    use crate::metrics::CertificateSlot;
    let seconds = |t: &Option<String>| {
        t.as_deref().and_then(|t| t.parse::<k8s_openapi::jiff::Timestamp>().ok()).map(|t| t.as_second())
    };
    let (ns, name) = (cr.namespace().unwrap_or_default(), cr.name_any());
    let slots = [
        (CertificateSlot::External, CertificateSlot::ExternalCa, &status.external),
        (CertificateSlot::Internal, CertificateSlot::InternalCa, &status.internal),
    ];
    for (slot, ca_slot, cert) in slots {
        let times = cert.as_ref().and_then(|c| Some((seconds(&c.not_after)?, seconds(&c.renewal_time))));
        ctx.metrics.certificate(&ns, &name, slot, times);
        // The CA: renewed by the operator when it keeps it (self-signed), by its owner otherwise.
        let ca_times = cert.as_ref().and_then(|c| {
            let not_after = seconds(&c.ca_not_after)?;
            let renewal = (c.type_ == CertificateType::Selfsigned).then(|| not_after - material::ca_renew_before(cr));
            Some((not_after, renewal))
        });
        ctx.metrics.certificate(&ns, &name, ca_slot, ca_times);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn what_the_operator_cannot_renew_is_reported_within_thirty_days_and_anything_expired() {
        let day = 86_400;
        let now = Timestamp::from_second(1_000 * day).unwrap();
        let cert = |type_: CertificateType, days_left: i64| {
            Some(crate::api::CertificateStatus {
                label: "l".into(),
                type_,
                serial_number: None,
                not_after: Some(operation::rfc3339(Timestamp::from_second(now.as_second() + days_left * day).unwrap())),
                fingerprint_sha256: None,
                ca_fingerprint_sha256: None,
                ca_not_after: None,
                key_algorithm: None,
                renewal_time: None,
                client_impact: None,
            })
        };
        let status = |external, internal| CertificateRotationStatus { external, internal, ..Default::default() };
        assert!(
            expiring(&status(cert(CertificateType::Secret, 31), cert(CertificateType::Selfsigned, 5)), now).is_empty()
        );
        let due = expiring(&status(cert(CertificateType::Secret, 10), None), now);
        assert_eq!(due.len(), 1);
        assert!(due[0].contains("external certificate (type secret)") && due[0].contains("10 days"), "{due:?}");
        assert!(due[0].contains("cannot renew"), "{due:?}");
        let provided = expiring(&status(cert(CertificateType::Provided, 1), None), now);
        assert!(provided[0].contains("new key, cert and cacert"), "{provided:?}");
        let expired = expiring(&status(None, cert(CertificateType::Selfsigned, -1)), now);
        assert!(expired[0].contains("internal certificate (type selfsigned) expired"), "{expired:?}");
    }

    #[test]
    fn maintenance_windows_are_read_in_utc_and_the_next_one_is_found() {
        let now: Timestamp = "2026-11-30T06:07:30Z".parse().unwrap();
        let m = civil_minute(now);
        assert_eq!((m.weekday, m.hour, m.minute, m.day, m.month), (1, 6, 7, 30, 11), "a Monday");
        let at = |w: &str| {
            next_window(&[w.to_string()], now).map(|s| operation::rfc3339(Timestamp::from_second(s).unwrap()))
        };
        assert_eq!(at("0 7 * * MON").as_deref(), Some("2026-11-30T07:00:00Z"));
        assert_eq!(at("* 2-4 * * SAT,SUN").as_deref(), Some("2026-12-05T02:00:00Z"));
        assert_eq!(at("0 0 1 1 *"), None, "not within eight days");
        assert_eq!(next_window(&[], now), None, "no windows: no wait");
    }

    #[test]
    fn a_window_is_overridden_only_when_waiting_would_let_something_expire() {
        let now = Timestamp::from_second(1_800_000_000).unwrap();
        let status = |ca_days: i64| CertificateRotationStatus {
            internal: Some(crate::api::CertificateStatus {
                label: "i".into(),
                type_: CertificateType::Selfsigned,
                serial_number: None,
                not_after: Some(operation::rfc3339(Timestamp::from_second(now.as_second() + 30 * 86_400).unwrap())),
                fingerprint_sha256: None,
                ca_fingerprint_sha256: None,
                ca_not_after: Some(operation::rfc3339(
                    Timestamp::from_second(now.as_second() + ca_days * 86_400).unwrap(),
                )),
                key_algorithm: None,
                renewal_time: None,
                client_impact: None,
            }),
            ..Default::default()
        };
        assert!(!expires_within(&status(10), now, MAINTENANCE_WINDOW_OVERRIDE_SECONDS), "the CA has ten days: wait");
        assert!(expires_within(&status(1), now, MAINTENANCE_WINDOW_OVERRIDE_SECONDS), "the CA ends tomorrow: now");
    }

    #[test]
    fn a_new_renew_value_asks_once() {
        let mut cr: CertificateRotation = serde_json::from_value(serde_json::json!({
            "apiVersion": "clustersecurity.io/v1alpha1", "kind": "CertificateRotation",
            "metadata": {"name": "c", "namespace": "n"},
            "spec": {"clusterRef": {"kind": "StatefulSet", "name": "k"}, "external": {"label": "a"}}
        }))
        .unwrap();
        let mut status = CertificateRotationStatus::default();
        assert_eq!(renew_requested(&cr, &status), None, "no annotation");
        cr.metadata.annotations = Some([(crate::api::RENEW_ANNOTATION.to_string(), "1".to_string())].into());
        assert_eq!(renew_requested(&cr, &status), Some("1"));
        status.renew_request = Some("1".into());
        assert_eq!(renew_requested(&cr, &status), None, "acted on");
    }

    #[test]
    fn impact_and_renewal() {
        assert_eq!(client_impact(None, "A"), None);
        assert_eq!(client_impact(Some("A"), "A"), Some(ClientImpact::None));
        assert_eq!(client_impact(Some("A"), "B"), Some(ClientImpact::TrustUpdateRequired));
        let (nb, na) = (Timestamp::from_second(0).unwrap(), Timestamp::from_second(300).unwrap());
        assert_eq!(renewal_time(nb, na).as_second(), 200);
        assert!(default_dns_names("orders-kafka", "kafka").contains(&"*.orders-kafka.kafka.svc".to_string()));
    }
}
