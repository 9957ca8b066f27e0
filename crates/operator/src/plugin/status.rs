//! `status <kind>/<name>`: one screen on an object — what its spec asks, the operation in force
//! and where it is, each certificate (from status, and from the TLS Secrets when the caller may
//! read them), the trust bundle and its copies, what the last check found on the brokers, the
//! last events. Built as a [`Report`] (what `-o json|yaml` prints) from the object and what
//! [`Extras`] were read, then rendered; both steps are pure, so a fixture object renders the
//! same screen in a unit test. May touch: reads only (our kinds, Events, the object's TLS
//! Secrets and trust ConfigMap); never prints a Secret's values.

use std::fmt::Write as _;

use k8s_openapi::api::core::v1::{ConfigMap, Event, Secret};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Condition;
use k8s_openapi::jiff::Timestamp;
use kube::api::ListParams;
use kube::{Api, ResourceExt};
use serde::Serialize;

use super::annotate::{self, PAUSED};
use super::output::{self, age, days_left, name, Format};
use super::target::{self, Object, Ref};
use super::{Cluster, Exit, Failure, Outcome, Target};
use crate::api::{
    CertificateRotation, CertificateStatus, ClusterSecurityPolicy, KmsKeyVaultMode, Operation, OperationRecord,
    RECONCILE_ANNOTATION,
};
use crate::certificate_rotation::{inspect, trust_configmap, Slot};

/// The events shown (newest last).
const EVENTS: usize = 10;

/// What `status` shows, in the order it shows it.
#[derive(Debug, Clone, Default, Serialize, PartialEq)]
#[serde(rename_all = "camelCase")]
pub(crate) struct Report {
    pub kind: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub namespace: Option<String>,
    pub name: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub generation: Option<i64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub observed_generation: Option<i64>,
    pub paused: bool,
    /// What the spec asks, one line per setting.
    pub spec: Vec<Field>,
    pub conditions: Vec<ConditionLine>,
    /// The operation running now, else the newest finished one.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub operation: Option<OperationLine>,
    /// What the last check on the wire found (`status.operations[].verification`), from the
    /// newest operation that recorded one.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub verification: Option<Verification>,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub certificates: Vec<CertificateLine>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub trust: Option<TrustLine>,
    /// Kind-specific state (KmsKeyVaultMode steps and re-encryption; a policy's listeners).
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub details: Vec<Field>,
    /// What the user may do now (e.g. confirm-trust for a waiting CA change).
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub hints: Vec<String>,
    pub events: Vec<EventLine>,
    /// Why part of the screen could not be read (a Secret the caller may not read, Events).
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub unreadable: Vec<String>,
}

#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
pub(crate) struct Field {
    pub name: String,
    pub value: String,
}

fn field(name: &str, value: impl Into<String>) -> Field {
    Field { name: name.into(), value: value.into() }
}

#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub(crate) struct ConditionLine {
    #[serde(rename = "type")]
    pub type_: String,
    pub status: String,
    pub reason: String,
    pub message: String,
}

#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub(crate) struct OperationLine {
    pub id: String,
    #[serde(rename = "type")]
    pub type_: String,
    pub state: String,
    /// True while it runs (`status.currentOperation`).
    pub current: bool,
    pub created: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub started: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub ended: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
    /// `targetInfo`, as JSON.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub target: Option<serde_json::Value>,
}

#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub(crate) struct Verification {
    pub operation_id: String,
    pub result: String,
}

/// One certificate in force (external or internal).
#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub(crate) struct CertificateLine {
    pub slot: String,
    pub label: String,
    #[serde(rename = "type")]
    pub type_: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub serial_number: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub not_after: Option<String>,
    #[serde(rename = "fingerprintSHA256", skip_serializing_if = "Option::is_none")]
    pub fingerprint_sha256: Option<String>,
    #[serde(rename = "caFingerprintSHA256", skip_serializing_if = "Option::is_none")]
    pub ca_fingerprint_sha256: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub ca_not_after: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub key_algorithm: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub renewal_time: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub client_impact: Option<String>,
    /// What the TLS Secret the brokers mount holds now.
    pub secret: SecretView,
}

/// A TLS Secret as the plugin read it (public facts only).
#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub(crate) struct SecretView {
    pub name: String,
    /// `matches status`, `holds another certificate`, `missing`, `not readable: …`, `no tls.crt`.
    pub state: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub serial_number: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub not_after: Option<String>,
    #[serde(rename = "caFingerprintSHA256", skip_serializing_if = "Option::is_none")]
    pub ca_fingerprint_sha256: Option<String>,
}

#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub(crate) struct TrustLine {
    pub config_map: String,
    /// SHA-256 fingerprints of every CA in `ca.crt` (what clients are told to trust).
    pub trusted_cas: Vec<String>,
    /// `current-ca.crt`: the CA in force.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub current_ca: Option<String>,
    /// `status.trustDistributedTo`.
    pub copies: Vec<String>,
    /// `status.trustTransition`, when one is recorded.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub transition: Option<serde_json::Value>,
    /// The bundle could not be read (forbidden, missing).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub unreadable: Option<String>,
}

#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub(crate) struct EventLine {
    pub time: String,
    #[serde(rename = "type")]
    pub type_: String,
    pub reason: String,
    pub message: String,
    pub count: i32,
}

/// What is read besides the object: the TLS Secrets and the trust bundle (CertificateRotation),
/// the object's Events. Each either read or why not.
#[derive(Debug, Clone)]
pub(crate) struct Extras {
    /// By Secret name: None when it does not exist.
    pub secrets: Vec<(String, Result<Option<Secret>, String>)>,
    pub trust: Option<(String, Result<Option<ConfigMap>, String>)>,
    pub events: Result<Vec<Event>, String>,
}

impl Default for Extras {
    fn default() -> Self {
        Self { secrets: Vec::new(), trust: None, events: Ok(Vec::new()) }
    }
}

fn conditions(c: &[Condition]) -> Vec<ConditionLine> {
    c.iter()
        .map(|c| ConditionLine {
            type_: c.type_.clone(),
            status: c.status.clone(),
            reason: c.reason.clone(),
            message: c.message.clone(),
        })
        .collect()
}

fn operation<I: Serialize>(op: &Operation<I>, current: bool) -> OperationLine {
    OperationLine {
        id: op.operation_id.clone(),
        type_: name(&op.operation_type),
        state: name(&op.operation_state),
        current,
        created: op.creation_time.clone(),
        started: op.start_time.clone(),
        ended: op.end_time.clone(),
        error: op.error_info.as_ref().map(|e| format!("{}: {}", e.code, e.message)),
        target: op.target_info.as_ref().and_then(|t| serde_json::to_value(t).ok()),
    }
}

/// The operation in force and the last verification, from any kind's record.
fn record<S: OperationRecord>(status: &S, report: &mut Report) {
    report.conditions = conditions(status.conditions());
    let current = status.current_operation();
    report.operation =
        current.map(|op| operation(op, true)).or_else(|| status.history().first().map(|op| operation(op, false)));
    report.verification = current.into_iter().chain(status.history()).find_map(|op| {
        op.verification.as_ref().map(|v| Verification { operation_id: op.operation_id.clone(), result: v.clone() })
    });
}

/// The public facts of the first certificate of `pem`.
fn cert_facts(pem: Option<&str>) -> Option<inspect::CertInfo> {
    let der = inspect::first_certificate(pem?)?;
    inspect::info(&der, "").ok()
}

fn data<'a>(s: &'a Secret, key: &str) -> Option<&'a str> {
    s.data.as_ref()?.get(key).and_then(|v| std::str::from_utf8(&v.0).ok())
}

fn secret_view(name: &str, read: Option<&Result<Option<Secret>, String>>, status: &CertificateStatus) -> SecretView {
    let mut view = SecretView {
        name: name.to_string(),
        state: String::new(),
        serial_number: None,
        not_after: None,
        ca_fingerprint_sha256: None,
    };
    view.state = match read {
        None => "not read".into(),
        Some(Err(why)) => format!("not readable: {why}"),
        Some(Ok(None)) => "missing".into(),
        Some(Ok(Some(s))) => match cert_facts(data(s, "tls.crt")) {
            None => "no certificate in tls.crt".into(),
            Some(leaf) => {
                view.serial_number = Some(leaf.serial_number.clone());
                view.not_after = Some(leaf.not_after.to_string());
                view.ca_fingerprint_sha256 = cert_facts(data(s, "ca.crt")).map(|ca| ca.fingerprint_sha256);
                if status.fingerprint_sha256.as_deref() == Some(leaf.fingerprint_sha256.as_str()) {
                    "matches status".into()
                } else {
                    "holds another certificate than status records (a rotation in progress, or drift the operator repairs)"
                        .into()
                }
            }
        },
    };
    view
}

fn certificate(slot: Slot, st: &CertificateStatus, cluster: &str, extras: &Extras) -> CertificateLine {
    let secret_name = slot.tls_secret(cluster);
    let read = extras.secrets.iter().find(|(n, _)| *n == secret_name).map(|(_, r)| r);
    CertificateLine {
        slot: slot.as_str().into(),
        label: st.label.clone(),
        type_: st.type_.as_str().into(),
        serial_number: st.serial_number.clone(),
        not_after: st.not_after.clone(),
        fingerprint_sha256: st.fingerprint_sha256.clone(),
        ca_fingerprint_sha256: st.ca_fingerprint_sha256.clone(),
        ca_not_after: st.ca_not_after.clone(),
        key_algorithm: st.key_algorithm.map(|a| a.as_str().to_string()),
        renewal_time: st.renewal_time.clone(),
        client_impact: st.client_impact.as_ref().map(name),
        secret: secret_view(&secret_name, read, st),
    }
}

fn certrot(o: &CertificateRotation, extras: &Extras, report: &mut Report) {
    let spec = &o.spec;
    let cluster = &spec.cluster_ref.name;
    report.spec.push(field("clusterRef", format!("{}/{}", name(&spec.cluster_ref.kind), cluster)));
    if let Some(e) = &spec.external {
        let mut v = format!("label {} type {}", e.label, e.type_.as_str());
        if let Some(s) = &e.secret_name {
            let _ = write!(v, " secret {s}");
        }
        if let Some(t) = e.trust_transition_seconds {
            let _ = write!(v, " trustTransitionSeconds {t}");
        }
        report.spec.push(field("external", v));
    }
    if let Some(i) = &spec.internal {
        report.spec.push(field("internal", format!("label {} type {}", i.label, i.type_.as_str())));
    }
    if let Some(d) = &spec.trust_distribution {
        let mut v = d.namespaces.join(",");
        if let Some(sel) = &d.namespace_selector {
            let labels: Vec<String> = sel.match_labels.iter().map(|(k, v)| format!("{k}={v}")).collect();
            let _ = write!(v, "{}selector {}", if v.is_empty() { "" } else { " + " }, labels.join(","));
        }
        report.spec.push(field("trustDistribution", v));
    }
    report
        .spec
        .push(field("verify", if spec.verify.as_ref().is_none_or(|v| v.enabled) { "on the wire" } else { "off" }));
    let Some(st) = &o.status else { return };
    record(st, report);
    for (slot, s) in [(Slot::External, &st.external), (Slot::Internal, &st.internal)] {
        if let Some(s) = s {
            report.certificates.push(certificate(slot, s, cluster, extras));
        }
    }
    if let Some(v) = &st.renew_request {
        report.details.push(field("renewRequest", v.clone()));
    }
    if let Some(v) = &st.ca_renew_request {
        report.details.push(field("caRenewRequest", v.clone()));
    }
    if spec.external.is_some() || st.trust_transition.is_some() {
        let cm = trust_configmap(cluster);
        let mut trust = TrustLine {
            config_map: cm.clone(),
            trusted_cas: Vec::new(),
            current_ca: None,
            copies: st.trust_distributed_to.clone(),
            transition: st.trust_transition.as_ref().and_then(|t| serde_json::to_value(t).ok()),
            unreadable: None,
        };
        match extras.trust.as_ref().map(|(_, r)| r) {
            Some(Ok(Some(c))) => {
                let get = |k: &str| c.data.as_ref().and_then(|d| d.get(k)).map(String::as_str);
                trust.trusted_cas = get("ca.crt")
                    .and_then(|pem| inspect::certificates(pem, "ca.crt").ok())
                    .unwrap_or_default()
                    .iter()
                    .map(|der| inspect::fingerprint(der))
                    .collect();
                trust.current_ca = cert_facts(get("current-ca.crt")).map(|c| c.fingerprint_sha256);
            }
            Some(Ok(None)) => trust.unreadable = Some("missing".into()),
            Some(Err(why)) => trust.unreadable = Some(why.clone()),
            None => {}
        }
        report.trust = Some(trust);
    }
    if let Ok(id) = annotate::waiting_operation(st) {
        let switch_at = st.trust_transition.as_ref().map(|t| t.switch_at.as_str()).unwrap_or("?");
        let ns = o.namespace().unwrap_or_default();
        report.hints.push(format!(
            "operation {id} waits for clients to trust the new CA until {switch_at}; once they do: kubectl clustersecurity confirm-trust certrot/{} -n {ns}",
            o.name_any()
        ));
    }
}

fn csp(o: &ClusterSecurityPolicy, report: &mut Report) {
    let spec = &o.spec;
    report.spec.push(field("clusterRef", format!("{}/{}", name(&spec.cluster_ref.kind), spec.cluster_ref.name)));
    let a = &spec.client_authentication;
    let mut methods = Vec::new();
    if a.unauthenticated_enabled() {
        methods.push("unauthenticated".to_string());
    }
    if let Some(t) = a.tls.as_ref().filter(|t| t.enabled) {
        let mut m = "tls".to_string();
        if !t.clients.is_empty() {
            let _ = write!(m, " ({} client certificate(s))", t.clients.len());
        }
        methods.push(m);
    }
    if a.sasl.as_ref().and_then(|s| s.scram.as_ref()).is_some_and(|t| t.enabled) {
        methods.push("sasl.scram".into());
    }
    if a.sasl.as_ref().and_then(|s| s.iam.as_ref()).is_some_and(|t| t.enabled) {
        methods.push("sasl.iam".into());
    }
    report.spec.push(field("clientAuthentication", methods.join(", ")));
    let e = &spec.encryption_in_transit;
    report.spec.push(field(
        "encryptionInTransit",
        format!("clientBroker {} inCluster {}", name(&e.client_broker), e.in_cluster),
    ));
    report
        .spec
        .push(field("verify", if spec.verify.as_ref().is_none_or(|v| v.enabled) { "on the wire" } else { "off" }));
    let Some(st) = &o.status else { return };
    record(st, report);
    if let Some(s) = st.cluster_state {
        report.details.push(field("clusterState", name(&s)));
    }
    if let Some(a) = &st.authentication {
        report.details.push(field("authentication", a.clone()));
    }
    for l in &st.listeners {
        report.details.push(field("listener", format!("{} :{} {} ({})", l.name, l.port, l.protocol, l.authentication)));
    }
}

fn kms(o: &KmsKeyVaultMode, report: &mut Report) {
    let spec = &o.spec;
    report.spec.push(field("networkAccess", name(&spec.network_access)));
    report.spec.push(field("keyId", spec.key_id.clone()));
    if let Some(v) = &spec.key_vault_resource_id {
        report.spec.push(field("keyVaultResourceId", v.clone()));
    }
    if let Some(a) = &spec.provider.azure {
        report.spec.push(field(
            "provider",
            format!(
                "azure subscription {} resourceGroup {} cluster {}",
                a.subscription_id, a.resource_group, a.cluster_name
            ),
        ));
    }
    let Some(st) = &o.status else { return };
    record(st, report);
    for (n, v) in [("kms", &st.kms), ("phase", &st.phase), ("progress", &st.progress)] {
        if let Some(v) = v {
            report.details.push(field(n, v.clone()));
        }
    }
    for s in &st.steps {
        let mut v = format!("{} {}", name(&s.name), name(&s.state));
        if s.attempts > 1 {
            let _ = write!(v, " ({} attempts)", s.attempts);
        }
        if let Some(m) = &s.message {
            let _ = write!(v, ": {m}");
        }
        report.details.push(field("step", v));
    }
    if let Some(r) = &st.reencryption {
        report.details.push(field(
            "reencryption",
            format!(
                "{} of {} Secrets: {} rewritten, {} unchanged, {} deleted, {} failed",
                r.rewritten + r.unchanged + r.deleted + r.failed,
                r.total,
                r.rewritten,
                r.unchanged,
                r.deleted,
                r.failed
            ),
        ));
    }
    if let Some(r) = &st.rollback {
        report.details.push(field("rollback", format!("{} since {}", r.reason, r.start_time)));
    }
    if let Some(k) = &st.key_check {
        report.details.push(field("keyCheck", format!("{}: {}", name(&k.result), k.message)));
    }
}

fn event_time(e: &Event) -> String {
    e.series
        .as_ref()
        .and_then(|s| s.last_observed_time.as_ref().map(|t| t.0.to_string()))
        .or_else(|| e.last_timestamp.as_ref().map(|t| t.0.to_string()))
        .or_else(|| e.event_time.as_ref().map(|t| t.0.to_string()))
        .or_else(|| e.first_timestamp.as_ref().map(|t| t.0.to_string()))
        .or_else(|| e.metadata.creation_timestamp.as_ref().map(|t| t.0.to_string()))
        .unwrap_or_default()
}

/// The report for `object`, with what else was read.
pub(crate) fn report(object: &Object, extras: &Extras) -> Report {
    let meta = object.meta();
    let mut r = Report {
        namespace: meta.namespace.clone(),
        name: meta.name.clone().unwrap_or_default(),
        generation: meta.generation,
        paused: meta.annotations.as_ref().and_then(|a| a.get(RECONCILE_ANNOTATION)).is_some_and(|v| v == PAUSED),
        ..Default::default()
    };
    match object {
        Object::Csp(o) => {
            r.kind = "ClusterSecurityPolicy".into();
            r.observed_generation = o.status.as_ref().and_then(|s| s.observed_generation);
            csp(o, &mut r);
        }
        Object::CertRot(o) => {
            r.kind = "CertificateRotation".into();
            r.observed_generation = o.status.as_ref().and_then(|s| s.observed_generation);
            certrot(o, extras, &mut r);
        }
        Object::KmsMode(o) => {
            r.kind = "KmsKeyVaultMode".into();
            r.observed_generation = o.status.as_ref().and_then(|s| s.observed_generation);
            kms(o, &mut r);
        }
    }
    for (name, read) in &extras.secrets {
        if let Err(why) = read {
            r.unreadable.push(format!("Secret {name}: {why}"));
        }
    }
    match &extras.events {
        Ok(events) => {
            let mut lines: Vec<EventLine> = events
                .iter()
                .map(|e| EventLine {
                    time: event_time(e),
                    type_: e.type_.clone().unwrap_or_default(),
                    reason: e.reason.clone().unwrap_or_default(),
                    message: e.message.clone().unwrap_or_default(),
                    count: e.series.as_ref().and_then(|s| s.count).or(e.count).unwrap_or(1),
                })
                .collect();
            lines.sort_by(|a, b| a.time.cmp(&b.time));
            r.events = lines.split_off(lines.len().saturating_sub(EVENTS));
        }
        Err(why) => r.unreadable.push(format!("Events: {why}")),
    }
    if r.paused {
        let kind = r.kind.to_ascii_lowercase();
        let ns = r.namespace.as_deref().map(|n| format!(" -n {n}")).unwrap_or_default();
        r.hints.push(format!(
            "paused: the operator changes nothing until `kubectl clustersecurity resume {kind}/{}{ns}`",
            r.name
        ));
    }
    r
}

/// The screen.
pub(crate) fn render(r: &Report, now: Timestamp) -> String {
    let mut out = String::new();
    let place = match &r.namespace {
        Some(ns) => format!("{ns}/{}", r.name),
        None => r.name.clone(),
    };
    let generation = match (r.generation, r.observed_generation) {
        (Some(g), Some(o)) if g == o => format!("generation {g}, observed"),
        (Some(g), Some(o)) => format!("generation {g}, status describes {o}"),
        (Some(g), None) => format!("generation {g}, not observed yet"),
        _ => String::new(),
    };
    let _ = writeln!(out, "{} {place}   {generation}{}", r.kind, if r.paused { "   PAUSED" } else { "" });
    out.push_str("\nSpec\n");
    for f in &r.spec {
        let _ = writeln!(out, "  {:<22}{}", f.name, f.value);
    }
    out.push_str("\nConditions\n");
    if r.conditions.is_empty() {
        out.push_str("  (none yet)\n");
    }
    for c in &r.conditions {
        let _ = write!(out, "  {:<22}{:<6}{}", c.type_, c.status, c.reason);
        if !c.message.is_empty() {
            let _ = write!(out, ": {}", c.message);
        }
        out.push('\n');
    }
    out.push_str("\nOperation\n");
    match &r.operation {
        None => out.push_str("  (none recorded)\n"),
        Some(op) => {
            let which = if op.current { "in progress" } else { "last" };
            let _ = writeln!(out, "  {:<22}{} ({which})", "id", op.id);
            let _ = writeln!(out, "  {:<22}{}", "type", op.type_);
            let _ = writeln!(out, "  {:<22}{}", "state", op.state);
            let _ = writeln!(out, "  {:<22}{} ({} ago)", "created", op.created, age(&op.created, now));
            if let Some(t) = &op.started {
                let _ = writeln!(out, "  {:<22}{t}", "started");
            }
            if let Some(t) = &op.ended {
                let _ = writeln!(out, "  {:<22}{t}", "ended");
            }
            if let Some(e) = &op.error {
                let _ = writeln!(out, "  {:<22}{e}", "error");
            }
            if let Some(t) = &op.target {
                let _ = writeln!(out, "  {:<22}{t}", "target");
            }
        }
    }
    if let Some(v) = &r.verification {
        let _ = writeln!(out, "\nVerification (operation {})\n  {}", v.operation_id, v.result);
    }
    if !r.certificates.is_empty() {
        out.push_str("\nCertificates\n");
    }
    for c in &r.certificates {
        let _ = writeln!(out, "  {} (label {}, {})", c.slot, c.label, c.type_);
        let opt = |v: &Option<String>| v.clone().unwrap_or_else(|| "-".into());
        let _ = writeln!(out, "    {:<20}{}", "serial", opt(&c.serial_number));
        let left = c.not_after.as_deref().and_then(|t| days_left(t, now)).map(|d| format!(" ({d} days left)"));
        let _ = writeln!(out, "    {:<20}{}{}", "notAfter", opt(&c.not_after), left.unwrap_or_default());
        let _ = writeln!(out, "    {:<20}{}", "fingerprint", opt(&c.fingerprint_sha256));
        let _ = writeln!(out, "    {:<20}{}", "CA fingerprint", opt(&c.ca_fingerprint_sha256));
        if let Some(t) = &c.ca_not_after {
            let _ = writeln!(out, "    {:<20}{t}", "CA notAfter");
        }
        if let Some(a) = &c.key_algorithm {
            let _ = writeln!(out, "    {:<20}{a}", "key");
        }
        if let Some(t) = &c.renewal_time {
            let _ = writeln!(out, "    {:<20}{t}", "renews at");
        }
        let _ =
            writeln!(out, "    {:<20}{}", "client impact", c.client_impact.as_deref().unwrap_or("None (first issue)"));
        let _ = write!(out, "    {:<20}{}: {}", "Secret", c.secret.name, c.secret.state);
        if c.secret.state != "matches status" {
            if let Some(s) = &c.secret.serial_number {
                let _ = write!(out, " (serial {s})");
            }
        }
        out.push('\n');
    }
    if let Some(t) = &r.trust {
        out.push_str("\nTrust\n");
        let _ = write!(out, "  {:<22}ConfigMap {}", "bundle", t.config_map);
        match &t.unreadable {
            Some(why) => {
                let _ = write!(out, " ({why})");
            }
            None => {
                let _ = write!(out, ": {} CA(s)", t.trusted_cas.len());
            }
        }
        out.push('\n');
        for ca in &t.trusted_cas {
            let current = if t.current_ca.as_deref() == Some(ca.as_str()) { "  (current)" } else { "" };
            let _ = writeln!(out, "    {ca}{current}");
        }
        let copies = if t.copies.is_empty() { "none".to_string() } else { t.copies.join(", ") };
        let _ = writeln!(out, "  {:<22}{copies}", "copies in");
        if let Some(tr) = &t.transition {
            let get = |k: &str| tr.get(k).and_then(|v| v.as_str()).unwrap_or("-").to_string();
            let _ = writeln!(
                out,
                "  {:<22}operation {} phase {} (published {}, switch at {}, switched {})",
                "CA change",
                get("operationId"),
                get("phase"),
                get("publishedAt"),
                get("switchAt"),
                get("switchedAt")
            );
        }
    }
    if !r.details.is_empty() {
        out.push_str("\nState\n");
        for f in &r.details {
            let _ = writeln!(out, "  {:<22}{}", f.name, f.value);
        }
    }
    for h in &r.hints {
        let _ = writeln!(out, "\n=> {h}");
    }
    out.push_str("\nEvents\n");
    if r.events.is_empty() {
        out.push_str("  (none)\n");
    }
    for e in &r.events {
        let count = if e.count > 1 { format!(" (x{})", e.count) } else { String::new() };
        let _ = writeln!(out, "  {:>5}  {:<8}{:<24}{}{count}", age(&e.time, now), e.type_, e.reason, e.message);
    }
    for u in &r.unreadable {
        let _ = writeln!(out, "\nnot readable: {u}");
    }
    out
}

/// Why a read failed, short (for the screen).
fn why(e: kube::Error) -> String {
    match e {
        kube::Error::Api(s) => format!("{} {}", s.code, s.reason),
        other => other.to_string(),
    }
}

async fn extras(cluster: &Cluster, object: &Object) -> Extras {
    let meta = object.meta();
    let ns = meta.namespace.clone();
    let mut x = Extras::default();
    if let Object::CertRot(o) = object {
        let ns = ns.clone().unwrap_or_default();
        let cluster_name = &o.spec.cluster_ref.name;
        let secrets: Api<Secret> = Api::namespaced(cluster.client.clone(), &ns);
        let st = o.status.clone().unwrap_or_default();
        for (slot, present) in [(Slot::External, st.external.is_some()), (Slot::Internal, st.internal.is_some())] {
            if present {
                let name = slot.tls_secret(cluster_name);
                x.secrets.push((name.clone(), secrets.get_opt(&name).await.map_err(why)));
            }
        }
        let cms: Api<ConfigMap> = Api::namespaced(cluster.client.clone(), &ns);
        let cm = trust_configmap(cluster_name);
        x.trust = Some((cm.clone(), cms.get_opt(&cm).await.map_err(why)));
    }
    let uid = meta.uid.clone().unwrap_or_default();
    let lp = ListParams::default().fields(&format!("involvedObject.uid={uid}"));
    let events: Api<Event> = match &ns {
        Some(ns) => Api::namespaced(cluster.client.clone(), ns),
        None => Api::all(cluster.client.clone()),
    };
    x.events = events.list(&lp).await.map(|l| l.items).map_err(why);
    x
}

pub(crate) async fn run(cluster: &Cluster, t: &Target, format: Format) -> Outcome {
    let r = Ref::parse(&t.target).map_err(Failure::usage)?;
    let namespace = t.namespace.clone().unwrap_or_else(|| cluster.default_namespace.clone());
    let (ns, what) = target::place(&r, &namespace);
    let object = target::fetch(cluster, &r, ns.as_deref(), &what).await?;
    let extras = extras(cluster, &object).await;
    let report = report(&object, &extras);
    match format {
        Format::Text => print!("{}", render(&report, Timestamp::now())),
        other => print!("{}", output::structured(&report, other)),
    }
    Ok(Exit::Ok)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::pki;

    /// A CertificateRotation whose first operation completed, as the operator records it.
    fn completed(ext: &CertificateStatus) -> CertificateRotation {
        serde_json::from_value(serde_json::json!({
            "apiVersion": "clustersecurity.io/v1alpha1", "kind": "CertificateRotation",
            "metadata": {"name": "certs", "namespace": "kafka", "generation": 1, "uid": "u-1"},
            "spec": {"clusterRef": {"kind": "StatefulSet", "name": "orders"},
                     "external": {"label": "ext1", "type": "selfsigned"},
                     "internal": {"label": "int1"},
                     "trustDistribution": {"namespaces": ["apps"]}},
            "status": {
                "observedGeneration": 1,
                "conditions": [{"type": "Ready", "status": "True", "reason": "Applied", "message": "UPDATE_COMPLETE",
                                "lastTransitionTime": "2026-12-04T11:00:00Z"}],
                "external": ext,
                "trustDistributedTo": ["apps"],
                "operations": [{"operationId": "op-1", "operationType": "ROTATE_CERTIFICATES",
                    "operationState": "UPDATE_COMPLETE", "creationTime": "2026-12-04T11:00:00Z",
                    "startTime": "2026-12-04T11:00:01Z", "endTime": "2026-12-04T11:00:09Z",
                    "targetInfo": {"externalLabel": "ext1", "externalType": "selfsigned", "internalLabel": "int1"},
                    "verification": "1 pod(s) present the expected certificate on TLS (9094)"}]
            }
        }))
        .unwrap()
    }

    fn secret(data: &[(&str, &str)]) -> Secret {
        let data = data.iter().map(|(k, v)| (k.to_string(), k8s_openapi::ByteString(v.as_bytes().to_vec())));
        Secret { data: Some(data.collect()), ..Default::default() }
    }

    #[test]
    fn a_completed_rotation_renders_every_field_on_one_screen() {
        let now: Timestamp = "2026-12-04T12:00:00Z".parse().unwrap();
        let ca = pki::new_ca("orders CA", now, 30).unwrap();
        let leaf = pki::issue_leaf(&ca, "orders", &["orders.kafka.svc".into()], pki::Usage::Server, now, 10).unwrap();
        let leaf_info = cert_facts(Some(&leaf.cert_pem)).unwrap();
        let ca_info = cert_facts(Some(&ca.cert_pem)).unwrap();
        let ext = CertificateStatus {
            label: "ext1".into(),
            type_: crate::api::CertificateType::Selfsigned,
            serial_number: Some(leaf_info.serial_number.clone()),
            not_after: Some(leaf_info.not_after.to_string()),
            fingerprint_sha256: Some(leaf_info.fingerprint_sha256.clone()),
            ca_fingerprint_sha256: Some(ca_info.fingerprint_sha256.clone()),
            ca_not_after: Some(ca_info.not_after.to_string()),
            key_algorithm: Some(crate::api::KeyAlgorithm::EcdsaP256),
            renewal_time: None,
            client_impact: None,
        };
        let object = Object::CertRot(Box::new(completed(&ext)));
        let event = Event {
            type_: Some("Normal".into()),
            reason: Some("UpdateComplete".into()),
            message: Some("operation op-1 completed".into()),
            last_timestamp: Some(k8s_openapi::apimachinery::pkg::apis::meta::v1::Time(
                "2026-12-04T11:59:00Z".parse().unwrap(),
            )),
            ..Default::default()
        };
        let tls = secret(&[("tls.crt", &leaf.cert_pem), ("tls.key", &leaf.key_pem), ("ca.crt", &ca.cert_pem)]);
        let trust = [("ca.crt".to_string(), ca.cert_pem.clone()), ("current-ca.crt".to_string(), ca.cert_pem.clone())];
        let cm = ConfigMap { data: Some(trust.into()), ..Default::default() };
        let extras = Extras {
            secrets: vec![("orders-external-tls".into(), Ok(Some(tls)))],
            trust: Some(("orders-external-trust".into(), Ok(Some(cm)))),
            events: Ok(vec![event]),
        };
        let report = report(&object, &extras);
        let screen = render(&report, now);
        for expected in [
            "CertificateRotation kafka/certs   generation 1, observed",
            "clusterRef            StatefulSet/orders",
            "external              label ext1 type selfsigned",
            "Ready                 True  Applied: UPDATE_COMPLETE",
            "id                    op-1 (last)",
            "state                 UPDATE_COMPLETE",
            "Verification (operation op-1)\n  1 pod(s) present the expected certificate on TLS (9094)",
            &format!("serial              {}", leaf_info.serial_number),
            &format!("notAfter            {} (10 days left)", leaf_info.not_after),
            &format!("CA fingerprint      {}", ca_info.fingerprint_sha256),
            "client impact       None (first issue)",
            "Secret              orders-external-tls: matches status",
            "bundle                ConfigMap orders-external-trust: 1 CA(s)",
            &format!("    {}  (current)", ca_info.fingerprint_sha256),
            "copies in             apps",
            "60s  Normal  UpdateComplete          operation op-1 completed",
        ] {
            assert!(screen.contains(expected), "missing {expected:?} in\n{screen}");
        }
        assert!(!screen.contains("PRIVATE KEY") && !screen.contains(&leaf.key_pem[30..60]), "no key material");
        assert!(report.hints.is_empty(), "nothing waits: {:?}", report.hints);
        // -o json carries the same facts under stable names.
        let json = serde_json::to_value(&report).unwrap();
        assert_eq!(json["certificates"][0]["serialNumber"], leaf_info.serial_number.as_str());
        assert_eq!(
            json["certificates"][0]["caFingerprintSHA256"],
            ca_info.fingerprint_sha256.as_str(),
            "the CRD's names"
        );
        assert_eq!(json["certificates"][0]["secret"]["state"], "matches status");
        assert_eq!(json["operation"]["state"], "UPDATE_COMPLETE");
        assert_eq!(json["trust"]["copies"][0], "apps");
        assert!(output::structured(&report, Format::Yaml).contains("kind: CertificateRotation\n"));
    }

    #[test]
    fn what_cannot_be_read_is_said_and_a_drifted_secret_is_named() {
        let now: Timestamp = "2026-12-04T12:00:00Z".parse().unwrap();
        let ca = pki::new_ca("orders CA", now, 30).unwrap();
        let leaf = pki::issue_leaf(&ca, "orders", &["orders".into()], pki::Usage::Server, now, 10).unwrap();
        let ext = CertificateStatus {
            label: "ext1".into(),
            type_: crate::api::CertificateType::Selfsigned,
            serial_number: Some("01".into()),
            not_after: None,
            fingerprint_sha256: Some("00:11".into()),
            ca_fingerprint_sha256: None,
            ca_not_after: None,
            key_algorithm: None,
            renewal_time: None,
            client_impact: Some(crate::api::ClientImpact::TrustUpdateRequired),
        };
        let object = Object::CertRot(Box::new(completed(&ext)));
        let other = secret(&[("tls.crt", &leaf.cert_pem)]);
        let extras = Extras {
            secrets: vec![("orders-external-tls".into(), Ok(Some(other)))],
            trust: Some(("orders-external-trust".into(), Err("403 Forbidden".into()))),
            events: Err("403 Forbidden".into()),
        };
        let screen = render(&report(&object, &extras), now);
        assert!(screen.contains("orders-external-tls: holds another certificate than status records"), "{screen}");
        assert!(screen.contains("client impact       TrustUpdateRequired"));
        assert!(screen.contains("ConfigMap orders-external-trust (403 Forbidden)"));
        assert!(screen.contains("not readable: Events: 403 Forbidden"));
        let forbidden = Extras { secrets: vec![("orders-external-tls".into(), Err("403 Forbidden".into()))], ..extras };
        let screen = render(&report(&object, &forbidden), now);
        assert!(screen.contains("orders-external-tls: not readable: 403 Forbidden"), "{screen}");
    }

    #[test]
    fn a_paused_kms_switch_shows_its_steps_and_how_to_resume() {
        let o: KmsKeyVaultMode = serde_json::from_value(serde_json::json!({
            "apiVersion": "clustersecurity.io/v1alpha1", "kind": "KmsKeyVaultMode",
            "metadata": {"name": "cluster", "generation": 2, "annotations": {"clustersecurity.io/reconcile": "paused"}},
            "spec": {"networkAccess": "Private", "keyId": "https://kv.vault.azure.net/keys/etcd/0123",
                     "provider": {"azure": {"subscriptionId": "00000000-0000-0000-0000-000000000000", "resourceGroup": "rg", "clusterName": "aks"}}},
            "status": {"observedGeneration": 2, "kms": "Enabled", "phase": "Switching",
                       "steps": [{"name": "DisableKms", "state": "Succeeded", "attempts": 1},
                                 {"name": "ReencryptSecrets", "state": "InProgress", "attempts": 2, "message": "half"}],
                       "reencryption": {"total": 10, "rewritten": 4, "unchanged": 1, "failed": 0, "deleted": 0}}
        }))
        .unwrap();
        let report = report(&Object::KmsMode(Box::new(o)), &Extras { events: Ok(vec![]), ..Default::default() });
        let screen = render(&report, Timestamp::now());
        assert!(screen.starts_with("KmsKeyVaultMode cluster   generation 2, observed   PAUSED"), "{screen}");
        assert!(screen.contains("step                  ReencryptSecrets InProgress (2 attempts): half"), "{screen}");
        assert!(screen.contains("reencryption          5 of 10 Secrets: 4 rewritten"), "{screen}");
        assert!(screen.contains("kubectl clustersecurity resume kmskeyvaultmode/cluster`"), "{screen}");
        assert!(report.certificates.is_empty() && report.trust.is_none());
    }
}
