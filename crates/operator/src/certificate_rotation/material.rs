//! The material of a rotation: what each slot asks for, loading or issuing its certificate
//! (self-signed, provided, or from a Secret), and installing it as the slot's TLS Secret and the
//! clients' trust bundle.
//!
//! What this module may touch: in the rotation's namespace, the `<cluster>-<slot>-ca` and
//! `<cluster>-<slot>-tls` Secrets and the `<cluster>-external-trust` ConfigMap (written through
//! the round, as [`Artefact`]s), and the Secret `spec.external.secretName` names (read only).

use base64::Engine as _;
use k8s_openapi::api::core::v1::{ConfigMap, Secret};
use k8s_openapi::jiff::Timestamp;
use kube::runtime::events::EventType;
use kube::{Api, ResourceExt};
use serde_json::json;

use super::inspect::{self, Material};
use super::{client_impact, default_dns_names, renewal_time, trust_configmap, Slot, OPERATION_ANNOTATION};
use crate::api::{
    CertificateRotation, CertificateRotationStatus, CertificateSettings, CertificateStatus, CertificateType,
    ClientImpact, KeyAlgorithm,
};
use crate::pki;
use crate::reconciler::conditions::reason;
use crate::reconciler::derived;
use crate::reconciler::operation::{self, rfc3339};
use crate::reconciler::rolling::PrepareError;
use crate::reconciler::round::Artefact;
use crate::reconciler::workload::Workload;
use crate::reconciler::Noted as _;
use crate::reconciler::{Context, Error, Named, Round};

/// What a slot asks for, taken from the spec.
pub(crate) struct Want {
    pub slot: Slot,
    pub label: String,
    pub type_: CertificateType,
    pub dns_names: Vec<String>,
    pub validity_days: u32,
    /// Self-signed: the key algorithm of the certificate and its CA.
    pub key_algorithm: KeyAlgorithm,
}

pub(crate) fn wants(cr: &CertificateRotation) -> Vec<Want> {
    let mut out = Vec::new();
    if let Some(e) = &cr.spec.external {
        out.push(Want {
            slot: Slot::External,
            label: e.label.clone(),
            type_: e.type_,
            dns_names: e.dns_names.clone(),
            validity_days: e.validity_days,
            key_algorithm: e.key_algorithm,
        });
    }
    if let Some(i) = &cr.spec.internal {
        out.push(Want {
            slot: Slot::Internal,
            label: i.label.clone(),
            type_: i.type_,
            dns_names: i.dns_names.clone(),
            validity_days: i.validity_days,
            key_algorithm: i.key_algorithm,
        });
    }
    out
}

pub(crate) fn desired_settings(cr: &CertificateRotation) -> CertificateSettings {
    CertificateSettings {
        external_label: cr.spec.external.as_ref().map(|e| e.label.clone()),
        external_type: cr.spec.external.as_ref().map(|e| e.type_),
        internal_label: cr.spec.internal.as_ref().map(|i| i.label.clone()),
    }
}

pub(crate) fn slot_status(status: &CertificateRotationStatus, slot: Slot) -> Option<&CertificateStatus> {
    match slot {
        Slot::External => status.external.as_ref(),
        Slot::Internal => status.internal.as_ref(),
    }
}

/// A slot's label is new (or it has no certificate yet), or a self-signed one's key algorithm
/// changed: a change the user asked for.
pub(crate) fn label_changed(w: &Want, status: &CertificateRotationStatus) -> bool {
    slot_status(status, w.slot).is_none_or(|s| {
        let selfsigned = s.type_ == CertificateType::Selfsigned && w.type_ == CertificateType::Selfsigned;
        // Certificates recorded before keyAlgorithm existed are ECDSA P-256.
        s.label != w.label || (selfsigned && s.key_algorithm.unwrap_or_default() != w.key_algorithm)
    })
}

/// A slot needs new material when its label is new, or its self-signed certificate is due.
pub(crate) fn needs_issue(w: &Want, status: &CertificateRotationStatus, now: Timestamp) -> bool {
    match slot_status(status, w.slot) {
        None => true,
        Some(_) if label_changed(w, status) => true,
        Some(s) => {
            s.type_ == CertificateType::Selfsigned
                && w.type_ == CertificateType::Selfsigned
                && s.renewal_time.as_deref().and_then(operation::parse_time).is_some_and(|t| now >= t)
        }
    }
}

/// Slots whose TLS Secret is gone, or no longer holds the certificate in force (someone deleted
/// or edited it): the brokers would lose what they mount, so they are issued again (same CA).
pub(crate) async fn drifted_slots(
    ctx: &Context,
    cr: &CertificateRotation,
    status: &CertificateRotationStatus,
) -> Result<Vec<Slot>, Error> {
    let ns = cr.namespace().unwrap_or_default();
    let secrets: Api<Secret> = Api::namespaced(ctx.client.clone(), &ns);
    let mut out = Vec::new();
    for w in wants(cr) {
        let Some(in_force) = slot_status(status, w.slot).and_then(|s| s.fingerprint_sha256.clone()) else { continue };
        let name = w.slot.tls_secret(&cr.spec.cluster_ref.name);
        let found = secrets.get_opt(&name).await.reading(&secret(&ns, &name))?;
        let held = found
            .and_then(|s| secret_string(&s, "tls.crt"))
            .and_then(|pem| inspect::first_certificate(&pem))
            .map(|der| inspect::fingerprint(&der));
        if held.as_deref() != Some(in_force.as_str()) {
            out.push(w.slot);
        }
    }
    Ok(out)
}

/// The external trust bundle, deleted or edited by someone, written again with the CA of the
/// certificate in force (from its TLS Secret). Returns what was restored.
pub(crate) async fn repair_trust_bundle(
    round: &mut Round<CertificateRotation>,
    ctx: &Context,
    cr: &CertificateRotation,
) -> Result<Vec<String>, Error> {
    if cr.spec.external.is_none() {
        return Ok(Vec::new());
    }
    let ns = cr.namespace().unwrap_or_default();
    let cluster = &cr.spec.cluster_ref.name;
    let tls_name = Slot::External.tls_secret(cluster);
    let tls =
        Api::<Secret>::namespaced(ctx.client.clone(), &ns).get_opt(&tls_name).await.reading(&secret(&ns, &tls_name))?;
    let Some(ca) = tls.and_then(|s| secret_string(&s, "ca.crt")) else { return Ok(Vec::new()) };
    let cm_name = trust_configmap(cluster);
    let cms: Api<ConfigMap> = Api::namespaced(ctx.client.clone(), &ns);
    let current = cms.get_opt(&cm_name).await.reading(&Named::new("ConfigMap", &ns, &cm_name))?;
    let intact = |c: &ConfigMap| {
        let data = c.data.clone().unwrap_or_default();
        data.get("current-ca.crt") == Some(&ca) && data.get("ca.crt").is_some_and(|b| b.contains(&ca))
    };
    if current.as_ref().is_some_and(|c| intact(c) || !derived::may_write(&c.metadata, &derived::Owner::of(cr))) {
        return Ok(Vec::new());
    }
    round.write(vec![trust_bundle(cr, &ca, &ca)]).await?;
    Ok(vec![format!("ConfigMap {ns}/{cm_name}")])
}

fn secret(ns: &str, name: &str) -> Named {
    Named::new("Secret", ns, name)
}

/// Which keys of a `type: secret` Secret hold the key, the certificate and the CA. Keys the spec
/// names win (the CA then required). Otherwise the seed's layout (`key`, `cert`, `cacert`) when
/// the Secret has it, else cert-manager's (`tls.key`, `tls.crt`, `ca.crt`; the same as a
/// `kubernetes.io/tls` Secret), where `ca.crt` may be missing: a public CA's certificate, or a
/// chain that carries its root, verifies without it.
struct SecretLayout<'a> {
    key: &'a str,
    cert: &'a str,
    ca: &'a str,
    ca_required: bool,
}

impl<'a> SecretLayout<'a> {
    fn of(ext: &'a crate::api::ExternalCertificate, s: &Secret) -> Self {
        let has = |k: &str| s.data.as_ref().is_some_and(|d| d.contains_key(k));
        let named = ext.key.is_some() || ext.cert.is_some() || ext.cacert.is_some();
        let cert_manager = !named && !has("cert") && has("tls.crt");
        let (key, cert, ca) = if cert_manager { ("tls.key", "tls.crt", "ca.crt") } else { ("key", "cert", "cacert") };
        SecretLayout {
            key: ext.key.as_deref().unwrap_or(key),
            cert: ext.cert.as_deref().unwrap_or(cert),
            ca: ext.cacert.as_deref().unwrap_or(ca),
            ca_required: !cert_manager,
        }
    }
}

fn secret_string(s: &Secret, key: &str) -> Option<String> {
    s.data.as_ref()?.get(key).and_then(|v| String::from_utf8(v.0.clone()).ok())
}

/// What a slot's material is made from, read once: for a self-signed slot the CA the operator
/// keeps and the slot's TLS Secret (a restarted operation reuses what it issued), for a
/// certificate from a Secret that Secret.
pub(crate) enum SlotSource {
    SelfSigned { kept_ca: Option<pki::KeyedCert>, tls: Option<Secret> },
    Provided,
    FromSecret(Option<Secret>),
}

/// Read what slot `w`'s material is made from.
pub(crate) async fn read_source(ctx: &Context, cr: &CertificateRotation, w: &Want) -> Result<SlotSource, Error> {
    let ns = cr.namespace().unwrap_or_default();
    let secrets: Api<Secret> = Api::namespaced(ctx.client.clone(), &ns);
    Ok(match w.type_ {
        CertificateType::Selfsigned => {
            let kept_ca = read_kept_ca(ctx, cr, w.slot).await?;
            let name = w.slot.tls_secret(&cr.spec.cluster_ref.name);
            SlotSource::SelfSigned { kept_ca, tls: secrets.get_opt(&name).await.reading(&secret(&ns, &name))? }
        }
        CertificateType::Provided => SlotSource::Provided,
        CertificateType::Secret => {
            let name = cr.spec.external.as_ref().and_then(|e| e.secret_name.clone()).unwrap_or_default();
            SlotSource::FromSecret(secrets.get_opt(&name).await.reading(&secret(&ns, &name))?)
        }
    })
}

/// Load or issue the material for one slot of operation `operation_id` from `source`; an Err
/// is a refusal when the user must act. A self-signed slot's new CA is written through the
/// round.
#[allow(clippy::too_many_arguments)]
pub(crate) async fn material(
    round: &mut Round<CertificateRotation>,
    cr: &CertificateRotation,
    w: &Want,
    source: SlotSource,
    workload: Option<&Workload>,
    operation_id: &str,
    renew_ca: bool,
) -> Result<Material, PrepareError> {
    let now = round.now;
    match source {
        SlotSource::SelfSigned { kept_ca: kept, tls } => {
            let ca = kept_ca(round, kept, cr, w, now, renew_ca).await?;
            if let Some(m) = issued_for(tls, operation_id, &ca, now) {
                return Ok(m);
            }
            Ok(self_signed(cr, w, &ca, workload, operation_id, now).await?)
        }
        SlotSource::Provided => provided(cr, w, now),
        SlotSource::FromSecret(found) => from_secret(cr, w, found, now),
    }
}

/// A refusal of slot `w`'s material: the certificate in force stays.
fn invalid(w: &Want, msg: String) -> PrepareError {
    let message = format!("{} certificate: {msg}; the running certificate stays in place", w.slot.as_str());
    PrepareError::refused(reason::INVALID_CERTIFICATE, message)
}

/// A new certificate from the kept CA `ca` (or one issued for the same ask while it waited).
async fn self_signed(
    cr: &CertificateRotation,
    w: &Want,
    ca: &pki::KeyedCert,
    workload: Option<&Workload>,
    operation_id: &str,
    now: Timestamp,
) -> Result<Material, PrepareError> {
    let ns = cr.namespace().unwrap_or_default();
    let cluster = &cr.spec.cluster_ref.name;
    let service = workload.and_then(|w| w.service_name.clone()).unwrap_or_else(|| cluster.clone());
    let sans = if w.dns_names.is_empty() { default_dns_names(&service, &ns) } else { w.dns_names.clone() };
    let usage = match w.slot {
        Slot::External => pki::Usage::Server,
        Slot::Internal => pki::Usage::ServerAndClient,
    };
    // Never beyond the CA: a certificate outliving its CA would fail before its renewal.
    let ca_days = pki::seconds_left(&ca.cert_pem, now).map_or(1, |s| (s / 86_400).max(1));
    let days = w.validity_days.min(u32::try_from(ca_days).unwrap_or(u32::MAX));
    let alg = w.key_algorithm;
    let ask = format!("{operation_id}/{}/{}/{}/{days}/{}", w.slot.as_str(), ca.cert_pem, alg.as_str(), sans.join(","));
    // Still sound now (a short validity could have run out while it waited).
    if let Some(m) = prepared::get(&ask).and_then(|m| inspect::check(&m.cert_pem, &m.key_pem, &ca.cert_pem, now).ok()) {
        return Ok(m);
    }
    let issuer = ca.clone();
    let leaf = blocking(move || pki::issue_leaf_with(&issuer, &service, &sans, usage, now, days, alg))
        .await
        .map_err(|source| Error::Issue { what: format!("{} certificate of {cluster}", w.slot.as_str()), source })?;
    let m = inspect::check(&leaf.cert_pem, &leaf.key_pem, &ca.cert_pem, now)
        .map_err(|e| PrepareError::refused(reason::INVALID_CERTIFICATE, e))?;
    prepared::put(ask, &m);
    Ok(m)
}

/// The certificate `spec.external` carries (base64 PEM), checked.
fn provided(cr: &CertificateRotation, w: &Want, now: Timestamp) -> Result<Material, PrepareError> {
    let Some(ext) = cr.spec.external.as_ref() else {
        return Err(invalid(w, "only the external certificate can be provided".into()));
    };
    let decode = |name: &str, v: &Option<String>| decode_spec_pem(name, v.as_deref());
    let parts =
        decode("key", &ext.key).and_then(|k| Ok((k, decode("cert", &ext.cert)?, decode("cacert", &ext.cacert)?)));
    let (key, cert, ca) = parts.map_err(|e| invalid(w, e))?;
    inspect::check(&cert, &key, &ca, now).map_err(|e| invalid(w, e))
}

/// The certificate in the Secret `spec.external.secretName` names (`found`), checked.
fn from_secret(
    cr: &CertificateRotation,
    w: &Want,
    found: Option<Secret>,
    now: Timestamp,
) -> Result<Material, PrepareError> {
    let Some(ext) = cr.spec.external.as_ref() else {
        return Err(invalid(w, "only the external certificate can come from a Secret".into()));
    };
    let ns = cr.namespace().unwrap_or_default();
    let name = ext.secret_name.clone().unwrap_or_default();
    let Some(source_secret) = found else {
        return Err(PrepareError::refused(
            reason::SECRET_NOT_FOUND,
            format!("Secret {ns}/{name} named by spec.external.secretName does not exist; create it with the keys {}, {} and {}; the running certificate stays in place",
                ext.key.as_deref().unwrap_or("key"), ext.cert.as_deref().unwrap_or("cert"), ext.cacert.as_deref().unwrap_or("cacert")),
        ));
    };
    let layout = SecretLayout::of(ext, &source_secret);
    let get = |k: &str| {
        secret_string(&source_secret, k).ok_or_else(|| invalid(w, format!("Secret {ns}/{name} has no key {k:?}")))
    };
    let (key, cert) = (get(layout.key)?, get(layout.cert)?);
    let checked = match (secret_string(&source_secret, layout.ca), layout.ca_required) {
        (Some(ca), _) => inspect::check(&cert, &key, &ca, now),
        (None, true) => return Err(invalid(w, format!("Secret {ns}/{name} has no key {:?}", layout.ca))),
        (None, false) => inspect::check_without_ca(&cert, &key, now),
    };
    checked.map_err(|e| invalid(w, e))
}

/// The CA the operator keeps for a slot's self-signed certificates (the `<cluster>-<slot>-ca`
/// Secret), read without creating it.
async fn read_kept_ca(ctx: &Context, cr: &CertificateRotation, slot: Slot) -> Result<Option<pki::KeyedCert>, Error> {
    let ns = cr.namespace().unwrap_or_default();
    let ca_name = slot.ca_secret(&cr.spec.cluster_ref.name);
    let kept =
        Api::<Secret>::namespaced(ctx.client.clone(), &ns).get_opt(&ca_name).await.reading(&secret(&ns, &ca_name))?;
    Ok(kept.as_ref().and_then(|s| {
        Some(pki::KeyedCert { cert_pem: secret_string(s, "ca.crt")?, key_pem: secret_string(s, "ca.key")? })
    }))
}

/// Seconds before its expiry a kept CA is renewed (`spec.ca.renewalDays`).
pub(crate) fn ca_renew_before(cr: &CertificateRotation) -> i64 {
    i64::from(cr.spec.ca.clone().unwrap_or_default().renewal_days) * 86_400
}

/// Whether a kept CA is within `spec.ca.renewalDays` of its expiry (or unreadable).
pub(crate) fn ca_due(cr: &CertificateRotation, ca_pem: &str, now: Timestamp) -> bool {
    pki::seconds_left(ca_pem, now).is_none_or(|left| left <= ca_renew_before(cr))
}

/// The self-signed slots whose kept CA is due for renewal.
pub(crate) async fn ca_due_slots(ctx: &Context, cr: &CertificateRotation, now: Timestamp) -> Result<Vec<Slot>, Error> {
    let mut out = Vec::new();
    for w in wants(cr).into_iter().filter(|w| w.type_ == CertificateType::Selfsigned) {
        if read_kept_ca(ctx, cr, w.slot).await?.is_some_and(|ca| ca_due(cr, &ca.cert_pem, now)) {
            out.push(w.slot);
        }
    }
    Ok(out)
}

/// The CA the operator keeps for a slot's self-signed certificates, created (and kept in the
/// `<cluster>-<slot>-ca` Secret) on first use, and replaced by a new one when due (`spec.ca`)
/// or `renew` (the renew-ca annotation). A replaced CA changes the certificates' CA: the
/// caller rolls that trust first.
async fn kept_ca(
    round: &mut Round<CertificateRotation>,
    kept: Option<pki::KeyedCert>,
    cr: &CertificateRotation,
    w: &Want,
    now: Timestamp,
    renew: bool,
) -> Result<pki::KeyedCert, Error> {
    let (slot, alg) = (w.slot, w.key_algorithm);
    let cluster = &cr.spec.cluster_ref.name;
    let ca_name = slot.ca_secret(cluster);
    if let Some(ca) = kept {
        let same_algorithm =
            inspect::first_certificate(&ca.cert_pem).and_then(|der| pki::key_algorithm(&der)) == Some(alg);
        if !renew && same_algorithm && !ca_due(cr, &ca.cert_pem, now) {
            return Ok(ca);
        }
    }
    let what = format!("{} CA of {cluster}", slot.as_str());
    let days = cr.spec.ca.clone().unwrap_or_default().validity_days;
    let name = format!("{cluster} {} CA", slot.as_str());
    let ca = blocking(move || pki::new_ca_with(&name, now, days, alg))
        .await
        .map_err(|source| Error::Issue { what, source })?;
    let body = json!({"apiVersion": "v1", "kind": "Secret",
        "metadata": derived::metadata(cr, &ca_name, cr.spec.deletion_policy, json!({})),
        "type": "Opaque", "stringData": {"ca.crt": ca.cert_pem, "ca.key": ca.key_pem}});
    round.write(vec![Artefact::secret(body)]).await?;
    Ok(ca)
}

/// Self-signed material issued for an operation that is not installed yet — it waits for
/// clients to trust a new CA, looked at about once a minute for up to a day — kept in memory so
/// that each look does not generate another key (an RSA-4096 prime search takes seconds). Keyed
/// by everything the certificate depends on; a few entries at most (one per waiting slot), and
/// gone with the process (a restarted operator issues once more).
mod prepared {
    use std::collections::BTreeMap;
    use std::sync::{Mutex, OnceLock};

    use super::Material;

    /// More entries than operations could wait at once here: the map is cleared, not grown.
    const MAX: usize = 64;

    fn map() -> std::sync::MutexGuard<'static, BTreeMap<String, Material>> {
        static MAP: OnceLock<Mutex<BTreeMap<String, Material>>> = OnceLock::new();
        MAP.get_or_init(Default::default).lock().unwrap_or_else(|e| e.into_inner())
    }

    pub(super) fn get(ask: &str) -> Option<Material> {
        map().get(ask).cloned()
    }

    pub(super) fn put(ask: String, m: &Material) {
        let mut map = map();
        if map.len() >= MAX {
            map.clear();
        }
        map.insert(ask, m.clone());
    }
}

/// Run key generation (an RSA prime search takes a second or more) off the async workers.
async fn blocking<T: Send + 'static>(f: impl FnOnce() -> T + Send + 'static) -> T {
    tokio::task::spawn_blocking(f).await.expect("key generation does not panic")
}

/// PEM text of a base64 field of `spec.external` (white space ignored).
fn decode_spec_pem(name: &str, value: Option<&str>) -> Result<String, String> {
    let raw: String = value.unwrap_or_default().chars().filter(|c| !c.is_ascii_whitespace()).collect();
    let bytes = base64::engine::general_purpose::STANDARD
        .decode(raw)
        .map_err(|_| format!("spec.external.{name} is not valid base64"))?;
    String::from_utf8(bytes).map_err(|_| format!("spec.external.{name} does not decode to PEM text"))
}

/// The certificate in the slot's TLS Secret (`existing`) when it was issued for `operation_id`
/// by `ca` and is still sound: a restart in the middle of the operation reuses it rather than
/// issuing another.
fn issued_for(existing: Option<Secret>, operation_id: &str, ca: &pki::KeyedCert, now: Timestamp) -> Option<Material> {
    let s = existing.filter(|s| s.annotations().get(OPERATION_ANNOTATION).map(String::as_str) == Some(operation_id))?;
    let (Some(cert), Some(key)) = (secret_string(&s, "tls.crt"), secret_string(&s, "tls.key")) else { return None };
    inspect::check(&cert, &key, &ca.cert_pem, now).ok()
}

/// The external trust bundle: `ca.crt` what clients should trust, `current-ca.crt` the CA of
/// the certificate the brokers present.
pub(crate) fn trust_bundle(cr: &CertificateRotation, bundle: &str, current: &str) -> Artefact {
    let cm_name = trust_configmap(&cr.spec.cluster_ref.name);
    Artefact::configmap(json!({"apiVersion": "v1", "kind": "ConfigMap",
        "metadata": derived::metadata(cr, &cm_name, cr.spec.deletion_policy, json!({})),
        "data": {"ca.crt": bundle, "current-ca.crt": current}}))
}

/// The `current-ca.crt` of the published trust bundle (the CA clients trust now).
pub(crate) async fn published_current_ca(ctx: &Context, cr: &CertificateRotation) -> Result<Option<String>, Error> {
    published_key(ctx, cr, "current-ca.crt").await
}

/// The `ca.crt` of the published trust bundle (every CA clients are told to trust).
pub(crate) async fn published_bundle(ctx: &Context, cr: &CertificateRotation) -> Result<Option<String>, Error> {
    published_key(ctx, cr, "ca.crt").await
}

async fn published_key(ctx: &Context, cr: &CertificateRotation, key: &str) -> Result<Option<String>, Error> {
    let ns = cr.namespace().unwrap_or_default();
    let cm_name = trust_configmap(&cr.spec.cluster_ref.name);
    let cm = Api::<ConfigMap>::namespaced(ctx.client.clone(), &ns).get_opt(&cm_name).await.reading(&Named::new(
        "ConfigMap",
        &ns,
        &cm_name,
    ))?;
    Ok(cm.and_then(|c| c.data).and_then(|d| d.get(key).cloned()))
}

/// What a slot's TLS Secret holds now (never logged: it carries the key).
pub(crate) struct InForce {
    pub cert_pem: String,
    pub key_pem: String,
    pub ca_pem: String,
}

/// The slot's TLS Secret, when it holds a certificate, key and CA.
pub(crate) async fn read_tls(ctx: &Context, cr: &CertificateRotation, slot: Slot) -> Result<Option<InForce>, Error> {
    let ns = cr.namespace().unwrap_or_default();
    let name = slot.tls_secret(&cr.spec.cluster_ref.name);
    let found = Api::<Secret>::namespaced(ctx.client.clone(), &ns).get_opt(&name).await.reading(&secret(&ns, &name))?;
    Ok(found.and_then(|s| {
        Some(InForce {
            cert_pem: secret_string(&s, "tls.crt")?,
            key_pem: secret_string(&s, "tls.key")?,
            ca_pem: secret_string(&s, "ca.crt")?,
        })
    }))
}

/// The slot's TLS Secret: the certificate chain, its key, and `ca` (what it chains to; for the
/// internal slot also the brokers' truststore). `operation_id`: the operation it was issued for,
/// when it is newly issued.
pub(crate) fn tls_secret(
    cr: &CertificateRotation,
    slot: Slot,
    (cert, key): (&str, &str),
    ca: &str,
    operation_id: Option<&str>,
) -> Artefact {
    let name = slot.tls_secret(&cr.spec.cluster_ref.name);
    let annotations = match operation_id {
        Some(id) => json!({"annotations": {OPERATION_ANNOTATION: id}}),
        None => json!({}),
    };
    Artefact::secret(json!({"apiVersion": "v1", "kind": "Secret",
        "metadata": derived::metadata(cr, &name, cr.spec.deletion_policy, annotations),
        "type": "kubernetes.io/tls", "stringData": {"tls.crt": cert, "tls.key": key, "ca.crt": ca}}))
}

/// Write the slot's TLS Secret for operation `operation_id` with truststore `trust` (and for
/// external, the trust bundle); returns its status.
#[allow(clippy::too_many_arguments)]
pub(crate) async fn install(
    ctx: &Context,
    cr: &CertificateRotation,
    w: &Want,
    m: &Material,
    trust: &str,
    operation_id: &str,
    old: Option<&CertificateStatus>,
    round: &mut Round<CertificateRotation>,
) -> Result<CertificateStatus, Error> {
    let ns = cr.namespace().unwrap_or_default();
    let cluster = &cr.spec.cluster_ref.name;
    round.write(vec![tls_secret(cr, w.slot, (&m.cert_pem, &m.key_pem), trust, Some(operation_id))]).await?;

    let impact = client_impact(old.and_then(|o| o.ca_fingerprint_sha256.as_deref()), &m.ca_fingerprint);
    if w.slot == Slot::External {
        let cm_name = trust_configmap(cluster);
        let mut bundle = m.ca_pem.clone();
        if impact == Some(ClientImpact::TrustUpdateRequired) || super::trust::retains_old_ca(&round.status) {
            // During a CA change, and until the old CA's removal, clients trust both. From the
            // published bundle, not `current-ca.crt`: a retried install has moved that already.
            if let Some(published) = published_bundle(ctx, cr).await? {
                bundle.push_str(&super::trust::without(&published, &m.ca_fingerprint));
            }
        }
        round.write(vec![trust_bundle(cr, &bundle, &m.ca_pem)]).await?;
        if impact == Some(ClientImpact::TrustUpdateRequired) {
            round.event(EventType::Warning, "ClientTrustUpdateRequired", format!(
                "The external certificate (label {}) is signed by a different CA (SHA-256 {}). Clients connecting over TLS must trust the new CA before they reconnect: kubectl get configmap {cm_name} -n {ns} -o jsonpath='{{.data.ca\\.crt}}' holds the new and the previous CA.",
                w.label, m.ca_fingerprint));
        }
    }
    Ok(CertificateStatus {
        label: w.label.clone(),
        type_: w.type_,
        serial_number: Some(m.leaf.serial_number.clone()),
        not_after: Some(rfc3339(m.leaf.not_after)),
        fingerprint_sha256: Some(m.leaf.fingerprint_sha256.clone()),
        ca_fingerprint_sha256: Some(m.ca_fingerprint.clone()),
        ca_not_after: inspect::first_certificate(&m.ca_pem)
            .and_then(|der| inspect::info(&der, "ca.crt").ok())
            .map(|ca| rfc3339(ca.not_after)),
        key_algorithm: inspect::first_certificate(&m.cert_pem).and_then(|der| pki::key_algorithm(&der)),
        renewal_time: (w.type_ == CertificateType::Selfsigned)
            .then(|| rfc3339(renewal_time(m.leaf.not_before, m.leaf.not_after))),
        client_impact: impact,
    })
}

/// The seed applies a changed Secret only when the label changes: notice the change and say so.
pub(crate) async fn source_secret_changed(
    ctx: &Context,
    cr: &CertificateRotation,
    status: &CertificateRotationStatus,
) -> Result<Option<SourceChange>, Error> {
    let Some(ext) = cr.spec.external.as_ref().filter(|e| e.type_ == CertificateType::Secret) else { return Ok(None) };
    let (Some(name), Some(in_force)) = (ext.secret_name.as_deref(), status.external.as_ref()) else { return Ok(None) };
    let ns = cr.namespace().unwrap_or_default();
    let secret = Api::<Secret>::namespaced(ctx.client.clone(), &ns).get_opt(name).await.reading(&secret(&ns, name))?;
    let current = secret
        .as_ref()
        .and_then(|s| secret_string(s, SecretLayout::of(ext, s).cert))
        .and_then(|pem| inspect::first_certificate(&pem))
        .map(|der| inspect::fingerprint(&der));
    Ok(match current {
        Some(fp) if Some(&fp) != in_force.fingerprint_sha256.as_ref() => Some(SourceChange::NewCertificate(format!(
            "Secret {ns}/{name} now holds a different certificate (SHA-256 {fp}); the brokers run the older one. {}",
            if ext.roll_on_source_change {
                "It is rolled out now (rollOnSourceChange)."
            } else {
                "Change spec.external.label (or set rollOnSourceChange: true) to roll it out."
            }
        ))),
        None => Some(SourceChange::Unreadable(format!(
            "Secret {ns}/{name} no longer holds a readable certificate; the one in force stays."
        ))),
        _ => None,
    })
}

/// How the Secret of a `type: secret` certificate differs from what is in force.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum SourceChange {
    /// It holds another certificate (a renewal): rolled out with `rollOnSourceChange`.
    NewCertificate(String),
    /// It holds nothing readable: reported, never rolled.
    Unreadable(String),
}

impl SourceChange {
    pub(crate) fn message(&self) -> &str {
        match self {
            Self::NewCertificate(m) | Self::Unreadable(m) => m,
        }
    }

    /// Whether it starts an operation by itself for `cr`.
    pub(crate) fn rolls(&self, cr: &CertificateRotation) -> bool {
        matches!(self, Self::NewCertificate(_)) && cr.spec.external.as_ref().is_some_and(|e| e.roll_on_source_change)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn status_with(label: &str, type_: CertificateType, renewal: Option<&str>) -> CertificateRotationStatus {
        CertificateRotationStatus {
            external: Some(CertificateStatus {
                label: label.into(),
                type_,
                serial_number: None,
                not_after: None,
                fingerprint_sha256: None,
                ca_fingerprint_sha256: None,
                ca_not_after: None,
                key_algorithm: None,
                renewal_time: renewal.map(String::from),
                client_impact: None,
            }),
            ..Default::default()
        }
    }

    #[test]
    fn material_prepared_for_a_waiting_operation_is_kept_and_the_store_stays_small() {
        let now = Timestamp::from_second(1_800_000_000).unwrap();
        let ca = pki::new_ca("c", now, 30).unwrap();
        let leaf = pki::issue_leaf(&ca, "k", &["k.n.svc".to_string()], pki::Usage::Server, now, 10).unwrap();
        let m = inspect::check(&leaf.cert_pem, &leaf.key_pem, &ca.cert_pem, now).unwrap();
        prepared::put("op-a/external".into(), &m);
        assert_eq!(
            prepared::get("op-a/external").map(|k| k.leaf.fingerprint_sha256),
            Some(m.leaf.fingerprint_sha256.clone())
        );
        assert!(prepared::get("op-b/external").is_none(), "another operation issues its own");
        for i in 0..64 {
            prepared::put(format!("filler-{i}"), &m);
        }
        assert!(prepared::get("op-a/external").is_none(), "cleared rather than grown");
    }

    #[test]
    fn a_kept_ca_is_due_within_its_renewal_days_by_the_clock() {
        let cr: CertificateRotation = serde_json::from_value(json!({
            "apiVersion": "clustersecurity.io/v1alpha1", "kind": "CertificateRotation",
            "metadata": {"name": "c", "namespace": "n"},
            "spec": {"clusterRef": {"kind": "StatefulSet", "name": "k"}, "internal": {"label": "a"},
                     "ca": {"validityDays": 40, "renewalDays": 30}}
        }))
        .unwrap();
        let issued = Timestamp::from_second(1_800_000_000).unwrap();
        let ca = pki::new_ca("k internal CA", issued, 40).unwrap();
        let day = |d: i64| Timestamp::from_second(issued.as_second() + d * 86_400).unwrap();
        assert!(!ca_due(&cr, &ca.cert_pem, day(9)), "31 days left");
        assert!(ca_due(&cr, &ca.cert_pem, day(11)), "29 days left");
        assert!(ca_due(&cr, "not a certificate", day(0)), "an unreadable CA is replaced");
        let mut late = cr.clone();
        late.spec.ca = Some(crate::api::CaSettings { renewal_days: 5, ..Default::default() });
        assert!(!ca_due(&late, &ca.cert_pem, day(11)), "renewalDays 5");
        assert!(ca_due(&late, &ca.cert_pem, day(36)));
    }

    #[test]
    fn issue_on_new_label_or_due_renewal_only() {
        let want = |label: &str, type_| Want {
            slot: Slot::External,
            label: label.into(),
            type_,
            dns_names: vec![],
            validity_days: 30,
            key_algorithm: KeyAlgorithm::EcdsaP256,
        };
        let before = Timestamp::from_second(1_800_000_000).unwrap();
        let after = Timestamp::from_second(1_900_000_000).unwrap();
        let due = "2030-01-01T00:00:00Z"; // between the two instants above
        let ss = CertificateType::Selfsigned;
        assert!(needs_issue(&want("a", ss), &CertificateRotationStatus::default(), before), "first issue");
        assert!(needs_issue(&want("b", ss), &status_with("a", ss, Some(due)), before), "new label");
        assert!(!needs_issue(&want("a", ss), &status_with("a", ss, Some(due)), before), "same label, not due");
        assert!(needs_issue(&want("a", ss), &status_with("a", ss, Some(due)), after), "renewal due");
        let rsa = Want { key_algorithm: KeyAlgorithm::Rsa2048, ..want("a", ss) };
        assert!(needs_issue(&rsa, &status_with("a", ss, Some(due)), before), "another key algorithm");
        assert!(label_changed(&rsa, &status_with("a", ss, Some(due))), "asked for: no maintenance window");
        let sec = CertificateType::Secret;
        assert!(
            !needs_issue(&want("a", sec), &status_with("a", sec, None), after),
            "material from a Secret is not renewed by us"
        );
    }
}
