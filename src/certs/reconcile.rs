//! The CertificateRotation reconciler: a new label (or a due renewal) becomes a
//! ROTATE_CERTIFICATES operation that checks or issues the material, writes the TLS Secrets and the
//! trust bundle, annotates the pod template and follows the rollout, like the other kinds.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use base64::Engine as _;
use k8s_openapi::api::core::v1::{ConfigMap, Secret};
use k8s_openapi::jiff::Timestamp;
use kube::api::{Patch, PatchParams};
use kube::core::PartialObjectMeta;
use kube::runtime::controller::Action;
use kube::runtime::events::EventType;
use kube::runtime::reflector::ObjectRef;
use kube::{Api, Client, Resource, ResourceExt};
use serde_json::json;
use tracing::warn;

use super::inspect::{self, Material};
use super::{
    client_impact, default_dns_names, renewal_time, trust_configmap, Slot, CERTIFICATE_HASH_ANNOTATION,
    OPERATION_ANNOTATION,
};
use crate::api::{
    CertificateRotation, CertificateRotationStatus, CertificateSettings, CertificateStatus, CertificateType,
    ClientImpact, ClusterState, OperationState, OperationType, FIELD_MANAGER,
};
use crate::conditions::{self, reason, Health};
use crate::controller::{
    finish, follow_rollout, forget_deleted, measured, new_controller, start_rollout, watch_workloads,
    write_status_diff, Context, Error, Events,
};
use crate::operation::{self, rfc3339};
use crate::rollout::{self, Workload};
use crate::{pki, validate};

const CA_DAYS: u32 = 3650;

/// What a slot asks for, taken from the spec.
struct Want {
    slot: Slot,
    label: String,
    type_: CertificateType,
    dns_names: Vec<String>,
    validity_days: u32,
}

fn wants(cr: &CertificateRotation) -> Vec<Want> {
    let mut out = Vec::new();
    if let Some(e) = &cr.spec.external {
        out.push(Want {
            slot: Slot::External,
            label: e.label.clone(),
            type_: e.type_,
            dns_names: e.dns_names.clone(),
            validity_days: e.validity_days,
        });
    }
    if let Some(i) = &cr.spec.internal {
        out.push(Want {
            slot: Slot::Internal,
            label: i.label.clone(),
            type_: i.type_,
            dns_names: i.dns_names.clone(),
            validity_days: i.validity_days,
        });
    }
    out
}

fn desired_settings(cr: &CertificateRotation) -> CertificateSettings {
    CertificateSettings {
        external_label: cr.spec.external.as_ref().map(|e| e.label.clone()),
        external_type: cr.spec.external.as_ref().map(|e| e.type_),
        internal_label: cr.spec.internal.as_ref().map(|i| i.label.clone()),
    }
}

fn slot_status(status: &CertificateRotationStatus, slot: Slot) -> Option<&CertificateStatus> {
    match slot {
        Slot::External => status.external.as_ref(),
        Slot::Internal => status.internal.as_ref(),
    }
}

/// A slot needs new material when its label is new, or its self-signed certificate is due.
fn needs_issue(w: &Want, status: &CertificateRotationStatus, now: Timestamp) -> bool {
    match slot_status(status, w.slot) {
        None => true,
        Some(s) if s.label != w.label => true,
        Some(s) => {
            s.type_ == CertificateType::Selfsigned
                && w.type_ == CertificateType::Selfsigned
                && s.renewal_time.as_deref().and_then(operation::parse_time).is_some_and(|t| now >= t)
        }
    }
}

fn workload_text(cr: &CertificateRotation) -> String {
    rollout::describe(&cr.namespace().unwrap_or_default(), &cr.spec.cluster_ref)
}

fn secret_string(s: &Secret, key: &str) -> Option<String> {
    s.data.as_ref()?.get(key).and_then(|v| String::from_utf8(v.0.clone()).ok())
}

/// Load or issue the material for one slot of operation `operation_id`; Err((reason, message))
/// when the user must act.
async fn material(
    ctx: &Context,
    cr: &CertificateRotation,
    w: &Want,
    workload: Option<&Workload>,
    operation_id: &str,
    now: Timestamp,
) -> Result<Result<Material, (String, String)>, Error> {
    let ns = cr.namespace().unwrap_or_default();
    let cluster = &cr.spec.cluster_ref.name;
    let secrets: Api<Secret> = Api::namespaced(ctx.client.clone(), &ns);
    let kube_err = |what: String| move |source| Error::Kube { what: what.clone(), source };
    let invalid = |msg: String| {
        Ok(Err((
            reason::INVALID_CERTIFICATE.to_string(),
            format!("{} certificate: {msg}; the running certificate stays in place", w.slot.as_str()),
        )))
    };
    match w.type_ {
        CertificateType::Selfsigned => {
            let ca_name = w.slot.ca_secret(cluster);
            let kept = secrets.get_opt(&ca_name).await.map_err(kube_err(format!("read Secret {ns}/{ca_name}")))?;
            let ca = match kept.as_ref().and_then(|s| {
                Some(pki::KeyedCert { cert_pem: secret_string(s, "ca.crt")?, key_pem: secret_string(s, "ca.key")? })
            }) {
                Some(ca) => ca,
                None => {
                    let ca = pki::new_ca(&format!("{cluster} {} CA", w.slot.as_str()), now, CA_DAYS)
                        .map_err(|e| Error::Internal(e.to_string()))?;
                    let owner = cr.controller_owner_ref(&()).expect("stored objects have a uid");
                    let body = json!({"apiVersion": "v1", "kind": "Secret",
                        "metadata": {"name": ca_name, "namespace": ns, "ownerReferences": [owner], "labels": {"app.kubernetes.io/managed-by": FIELD_MANAGER}},
                        "type": "Opaque", "stringData": {"ca.crt": ca.cert_pem, "ca.key": ca.key_pem}});
                    secrets
                        .patch(&ca_name, &PatchParams::apply(FIELD_MANAGER).force(), &Patch::Apply(&body))
                        .await
                        .map_err(kube_err(format!("write Secret {ns}/{ca_name}")))?;
                    ca
                }
            };
            if let Some(m) = issued_for(&secrets, &w.slot.tls_secret(cluster), operation_id, &ca, now).await? {
                return Ok(Ok(m));
            }
            let service = workload.and_then(|w| w.service_name.clone()).unwrap_or_else(|| cluster.clone());
            let sans = if w.dns_names.is_empty() { default_dns_names(&service, &ns) } else { w.dns_names.clone() };
            let usage = match w.slot {
                Slot::External => pki::Usage::Server,
                Slot::Internal => pki::Usage::ServerAndClient,
            };
            let leaf = pki::issue_leaf(&ca, &service, &sans, usage, now, w.validity_days)
                .map_err(|e| Error::Internal(e.to_string()))?;
            Ok(inspect::check(&leaf.cert_pem, &leaf.key_pem, &ca.cert_pem, now)
                .map_err(|e| (reason::INVALID_CERTIFICATE.to_string(), e)))
        }
        CertificateType::Provided => {
            let Some(ext) = cr.spec.external.as_ref() else {
                return invalid("only the external certificate can be provided".into());
            };
            let decode = |name: &str, v: &Option<String>| -> Result<String, String> {
                let raw: String =
                    v.as_deref().unwrap_or_default().chars().filter(|c| !c.is_ascii_whitespace()).collect();
                let bytes = base64::engine::general_purpose::STANDARD
                    .decode(raw)
                    .map_err(|_| format!("spec.external.{name} is not valid base64"))?;
                String::from_utf8(bytes).map_err(|_| format!("spec.external.{name} does not decode to PEM text"))
            };
            let parts = decode("key", &ext.key)
                .and_then(|k| Ok((k, decode("cert", &ext.cert)?, decode("cacert", &ext.cacert)?)));
            match parts {
                Err(e) => invalid(e),
                Ok((key, cert, ca)) => match inspect::check(&cert, &key, &ca, now) {
                    Ok(m) => Ok(Ok(m)),
                    Err(e) => invalid(e),
                },
            }
        }
        CertificateType::Secret => {
            let Some(ext) = cr.spec.external.as_ref() else {
                return invalid("only the external certificate can come from a Secret".into());
            };
            let name = ext.secret_name.clone().unwrap_or_default();
            let Some(secret) = secrets.get_opt(&name).await.map_err(kube_err(format!("read Secret {ns}/{name}")))?
            else {
                return Ok(Err((
                    reason::SECRET_NOT_FOUND.into(),
                    format!("Secret {ns}/{name} named by spec.external.secretName does not exist; create it with the keys {}, {} and {}; the running certificate stays in place",
                        ext.key.as_deref().unwrap_or("key"), ext.cert.as_deref().unwrap_or("cert"), ext.cacert.as_deref().unwrap_or("cacert")),
                )));
            };
            let mut got = Vec::new();
            for (field, default) in [(&ext.key, "key"), (&ext.cert, "cert"), (&ext.cacert, "cacert")] {
                let k = field.as_deref().unwrap_or(default);
                match secret_string(&secret, k) {
                    Some(v) => got.push(v),
                    None => return invalid(format!("Secret {ns}/{name} has no key {k:?}")),
                }
            }
            match inspect::check(&got[1], &got[0], &got[2], now) {
                Ok(m) => Ok(Ok(m)),
                Err(e) => invalid(e),
            }
        }
    }
}

/// The certificate in TLS Secret `name` when it was issued for `operation_id` by `ca` and is still
/// sound: a restart in the middle of the operation reuses it rather than issuing another.
async fn issued_for(
    secrets: &Api<Secret>,
    name: &str,
    operation_id: &str,
    ca: &pki::KeyedCert,
    now: Timestamp,
) -> Result<Option<Material>, Error> {
    let existing =
        secrets.get_opt(name).await.map_err(|source| Error::Kube { what: format!("read Secret {name}"), source })?;
    let Some(s) =
        existing.filter(|s| s.annotations().get(OPERATION_ANNOTATION).map(String::as_str) == Some(operation_id))
    else {
        return Ok(None);
    };
    let (Some(cert), Some(key)) = (secret_string(&s, "tls.crt"), secret_string(&s, "tls.key")) else { return Ok(None) };
    Ok(inspect::check(&cert, &key, &ca.cert_pem, now).ok())
}

/// Write the slot's TLS Secret for operation `operation_id` (and for external, the trust bundle);
/// returns its status.
async fn install(
    ctx: &Context,
    cr: &CertificateRotation,
    w: &Want,
    m: &Material,
    operation_id: &str,
    old: Option<&CertificateStatus>,
    events: &mut Events,
) -> Result<CertificateStatus, Error> {
    let ns = cr.namespace().unwrap_or_default();
    let cluster = &cr.spec.cluster_ref.name;
    let owner = cr.controller_owner_ref(&()).expect("stored objects have a uid");
    let pp = PatchParams::apply(FIELD_MANAGER).force();
    let kube_err = |what: String| move |source| Error::Kube { what: what.clone(), source };
    let name = w.slot.tls_secret(cluster);
    let body = json!({"apiVersion": "v1", "kind": "Secret",
        "metadata": {"name": name, "namespace": ns, "ownerReferences": [owner], "labels": {"app.kubernetes.io/managed-by": FIELD_MANAGER},
            "annotations": {OPERATION_ANNOTATION: operation_id}},
        "type": "kubernetes.io/tls", "stringData": {"tls.crt": m.cert_pem, "tls.key": m.key_pem, "ca.crt": m.ca_pem}});
    Api::<Secret>::namespaced(ctx.client.clone(), &ns)
        .patch(&name, &pp, &Patch::Apply(&body))
        .await
        .map_err(kube_err(format!("write Secret {ns}/{name}")))?;

    let impact = client_impact(old.and_then(|o| o.ca_fingerprint_sha256.as_deref()), &m.ca_fingerprint);
    if w.slot == Slot::External {
        let cm_name = trust_configmap(cluster);
        let cms: Api<ConfigMap> = Api::namespaced(ctx.client.clone(), &ns);
        let mut bundle = m.ca_pem.clone();
        if impact == Some(ClientImpact::TrustUpdateRequired) {
            // During a CA change clients may trust both while they move.
            let previous = cms.get_opt(&cm_name).await.map_err(kube_err(format!("read ConfigMap {ns}/{cm_name}")))?;
            if let Some(prev) = previous.and_then(|c| c.data).and_then(|d| d.get("current-ca.crt").cloned()) {
                bundle.push_str(&prev);
            }
        }
        let body = json!({"apiVersion": "v1", "kind": "ConfigMap",
            "metadata": {"name": cm_name, "namespace": ns, "ownerReferences": [owner], "labels": {"app.kubernetes.io/managed-by": FIELD_MANAGER}},
            "data": {"ca.crt": bundle, "current-ca.crt": m.ca_pem}});
        cms.patch(&cm_name, &pp, &Patch::Apply(&body))
            .await
            .map_err(kube_err(format!("write ConfigMap {ns}/{cm_name}")))?;
        if impact == Some(ClientImpact::TrustUpdateRequired) {
            events.push((EventType::Warning, "ClientTrustUpdateRequired".into(), format!(
                "The external certificate (label {}) is signed by a different CA (SHA-256 {}). Clients connecting over TLS must trust the new CA before they reconnect: kubectl get configmap {cm_name} -n {ns} -o jsonpath='{{.data.ca\\.crt}}' holds the new and the previous CA.",
                w.label, m.ca_fingerprint)));
        }
    }
    Ok(CertificateStatus {
        label: w.label.clone(),
        type_: w.type_,
        serial_number: Some(m.leaf.serial_number.clone()),
        not_after: Some(rfc3339(m.leaf.not_after)),
        fingerprint_sha256: Some(m.leaf.fingerprint_sha256.clone()),
        ca_fingerprint_sha256: Some(m.ca_fingerprint.clone()),
        renewal_time: (w.type_ == CertificateType::Selfsigned)
            .then(|| rfc3339(renewal_time(m.leaf.not_before, m.leaf.not_after))),
        client_impact: impact,
    })
}

/// The seed applies a changed Secret only when the label changes: notice the change and say so.
async fn source_secret_changed(
    ctx: &Context,
    cr: &CertificateRotation,
    status: &CertificateRotationStatus,
) -> Result<Option<String>, Error> {
    let Some(ext) = cr.spec.external.as_ref().filter(|e| e.type_ == CertificateType::Secret) else { return Ok(None) };
    let (Some(name), Some(in_force)) = (ext.secret_name.as_deref(), status.external.as_ref()) else { return Ok(None) };
    let ns = cr.namespace().unwrap_or_default();
    let secret = Api::<Secret>::namespaced(ctx.client.clone(), &ns)
        .get_opt(name)
        .await
        .map_err(|source| Error::Kube { what: format!("read Secret {ns}/{name}"), source })?;
    let current = secret
        .as_ref()
        .and_then(|s| secret_string(s, ext.cert.as_deref().unwrap_or("cert")))
        .and_then(|pem| inspect::certificates(&pem, "cert").ok())
        .and_then(|ders| ders.first().map(|d| inspect::fingerprint(d)));
    Ok(match current {
        Some(fp) if Some(&fp) != in_force.fingerprint_sha256.as_ref() => Some(format!(
            "Secret {ns}/{name} now holds a different certificate (SHA-256 {fp}); change spec.external.label to roll it out."
        )),
        None => Some(format!("Secret {ns}/{name} no longer holds a readable certificate; the one in force stays.")),
        _ => None,
    })
}

async fn referenced_secret_exists(ctx: &Context, cr: &CertificateRotation) -> Result<bool, Error> {
    let Some(name) = cr.spec.external.as_ref().and_then(|e| e.secret_name.clone()) else { return Ok(false) };
    let ns = cr.namespace().unwrap_or_default();
    let found = Api::<Secret>::namespaced(ctx.client.clone(), &ns)
        .get_metadata_opt(&name)
        .await
        .map_err(|source| Error::Kube { what: format!("read Secret {ns}/{name}"), source })?;
    Ok(found.is_some())
}

struct Outcome {
    health: Health,
    requeue: Option<Duration>,
}

async fn advance(
    ctx: &Context,
    cr: &CertificateRotation,
    status: &mut CertificateRotationStatus,
    workload: Option<&Workload>,
    now: Timestamp,
    events: &mut Events,
) -> Result<Outcome, Error> {
    let wl = workload_text(cr);
    let state = rollout::cluster_state(workload);
    let generation = cr.meta().generation;
    let wants = wants(cr);
    let desired = desired_settings(cr);

    if status.current_operation.is_none() {
        if !wants.iter().any(|w| needs_issue(w, status, now)) {
            let next_renewal = [status.external.as_ref(), status.internal.as_ref()]
                .into_iter()
                .flatten()
                .filter_map(|s| s.renewal_time.as_deref().and_then(operation::parse_time))
                .min()
                .map(|t| Duration::from_secs((t.as_second() - now.as_second()).clamp(1, 86_400) as u64));
            let mut message = format!("Certificates in place on {wl}.");
            if let Some(note) = source_secret_changed(ctx, cr, status).await? {
                if !conditions::get(&status.conditions, conditions::READY).is_some_and(|c| c.message.contains(&note)) {
                    events.push((EventType::Normal, "SourceSecretChanged".into(), note.clone()));
                }
                message = format!("{message} {note}");
            }
            let health = Health::Ready { reason: reason::APPLIED.into(), message };
            return Ok(Outcome { health, requeue: next_renewal });
        }
        if let Some(e) = operation::failed_for(&status.operations, generation, &desired) {
            let missing_secret = e.code == reason::SECRET_NOT_FOUND;
            if !(missing_secret && referenced_secret_exists(ctx, cr).await?) {
                let retry = missing_secret.then(|| Duration::from_secs(30));
                return Ok(Outcome { health: Health::Stalled { reason: e.code, message: e.message }, requeue: retry });
            }
        }
        let source = CertificateSettings {
            external_label: status.external.as_ref().map(|s| s.label.clone()),
            external_type: status.external.as_ref().map(|s| s.type_),
            internal_label: status.internal.as_ref().map(|s| s.label.clone()),
        };
        let op = operation::new(
            operation::uuid_v4(),
            OperationType::RotateCertificates,
            generation,
            Some(source),
            desired.clone(),
            now,
        );
        let id = op.operation_id.clone();
        let note = operation::open(&mut status.operations, &mut status.current_operation, op, &wl);
        events.push((EventType::Normal, "OperationPending".into(), note));
        // Recorded before anything is issued or written: an operator restarted from here on
        // finds this operation, and the certificates issued for it, instead of starting another
        // (which would issue new ones and roll the pods twice).
        let message = format!("Operation {id} recorded; the certificates are issued next.");
        let health = Health::Reconciling { reason: reason::OPERATION_RECORDED.into(), message };
        return Ok(Outcome { health, requeue: Some(Duration::from_millis(100)) });
    }

    let mut op = status.current_operation.clone().expect("set above");
    let outcome = match op.operation_state {
        OperationState::Pending => {
            op.target_info = Some(desired.clone());
            op.generation = generation;
            if state != ClusterState::Active {
                let message = format!("{wl} is not ACTIVE; the rotation starts once it is.");
                Outcome {
                    health: Health::Reconciling { reason: reason::WAITING_FOR_ACTIVE_CLUSTER.into(), message },
                    requeue: Some(Duration::from_secs(30)),
                }
            } else {
                // Check every new certificate before anything is written: all or nothing.
                let mut ready = Vec::new();
                let mut failure = None;
                for w in wants.iter().filter(|w| needs_issue(w, status, now)) {
                    match material(ctx, cr, w, workload, &op.operation_id, now).await? {
                        Ok(m) => ready.push((w, m)),
                        Err(e) => {
                            failure = Some(e);
                            break;
                        }
                    }
                }
                match failure {
                    Some((code, message)) => {
                        operation::fail(&mut op, &code, message.clone(), now);
                        events.push((EventType::Warning, code.clone(), message.clone()));
                        let retry = (code == reason::SECRET_NOT_FOUND).then(|| Duration::from_secs(30));
                        Outcome { health: Health::Stalled { reason: code, message }, requeue: retry }
                    }
                    None => {
                        for (w, m) in &ready {
                            if w.type_ == CertificateType::Provided {
                                events.push((EventType::Warning, "PrivateKeyInSpec".into(), "spec.external.key holds a private key in a custom resource, which is not encrypted at rest like a Secret; prefer type secret with secretName.".into()));
                            }
                            let cs =
                                install(ctx, cr, w, m, &op.operation_id, slot_status(status, w.slot), events).await?;
                            match w.slot {
                                Slot::External => status.external = Some(cs),
                                Slot::Internal => status.internal = Some(cs),
                            }
                        }
                        let mut ann = BTreeMap::new();
                        let fps: Vec<&str> = [status.external.as_ref(), status.internal.as_ref()]
                            .into_iter()
                            .flatten()
                            .filter_map(|s| s.fingerprint_sha256.as_deref())
                            .collect();
                        let hash = crate::policy::properties::security_hash(
                            &fps.iter().map(|f| f.as_bytes()).collect::<Vec<_>>(),
                        );
                        ann.insert(CERTIFICATE_HASH_ANNOTATION.to_string(), hash.clone());
                        for w in &wants {
                            ann.insert(w.slot.label_annotation(), w.label.clone());
                        }
                        let ns = cr.namespace().unwrap_or_default();
                        let health = start_rollout(ctx, &ns, &cr.spec.cluster_ref, &ann, &mut op, now, events).await?;
                        status.certificate_hash = Some(hash);
                        Outcome { health, requeue: Some(Duration::from_secs(5)) }
                    }
                }
            }
        }
        OperationState::UpdateInProgress => {
            let mut expected = BTreeMap::new();
            expected
                .insert(CERTIFICATE_HASH_ANNOTATION.to_string(), status.certificate_hash.clone().unwrap_or_default());
            let ns = cr.namespace().unwrap_or_default();
            crate::controller::reassert_template_annotations(ctx, &ns, &cr.spec.cluster_ref, workload, &expected)
                .await?;
            let elapsed = operation::seconds_in_progress(&op, now).unwrap_or(0);
            let check = rollout::check(workload, &expected, elapsed, i64::from(cr.spec.rollout_timeout_seconds), &wl);
            match follow_rollout(check, &mut op, now, events) {
                Some((health, requeue)) => Outcome { health, requeue },
                None => {
                    operation::complete(&mut op, now);
                    events.push((
                        EventType::Normal,
                        "UpdateComplete".into(),
                        format!("Operation {}: {wl} runs the new certificates.", op.operation_id),
                    ));
                    Outcome {
                        health: Health::Ready {
                            reason: reason::APPLIED.into(),
                            message: format!("Certificates in place on {wl}."),
                        },
                        requeue: Some(Duration::from_secs(1)),
                    }
                }
            }
        }
        OperationState::UpdateComplete | OperationState::UpdateFailed => Outcome {
            health: Health::Reconciling { reason: "Recorded".into(), message: String::new() },
            requeue: Some(Duration::from_secs(1)),
        },
    };
    operation::settle(&mut status.operations, &mut status.current_operation, op);
    Ok(outcome)
}

/// Reconcile one CertificateRotation.
pub async fn reconcile(cr: Arc<CertificateRotation>, ctx: Arc<Context>) -> Result<Action, Error> {
    let ns = cr.namespace().unwrap_or_default();
    let api: Api<CertificateRotation> = Api::namespaced(ctx.client.clone(), &ns);
    let Some(cr) = crate::controller::fresh(&api, cr).await? else { return Ok(Action::await_change()) };
    let now = ctx.clock.now();
    let old = cr.status.clone().unwrap_or_default();
    let mut status = old.clone();
    let mut events = Events::new();
    let outcome = match validate::certificate_rotation(&cr.spec) {
        Err(v) if status.current_operation.as_ref().is_none_or(|o| o.operation_state == OperationState::Pending) => {
            Outcome {
                health: Health::Stalled {
                    reason: reason::INVALID_SPEC.into(),
                    message: format!("{v}. Nothing was applied; fix the spec and apply it again."),
                },
                requeue: None,
            }
        }
        _ => {
            let workload = rollout::get(&ctx.client, &ns, &cr.spec.cluster_ref)
                .await
                .map_err(|source| Error::Kube { what: format!("read {}", workload_text(&cr)), source })?;
            advance(&ctx, &cr, &mut status, workload.as_ref(), now, &mut events).await?
        }
    };
    status.observed_generation = cr.meta().generation;
    status.conditions = conditions::apply(&old.conditions, &outcome.health, cr.meta().generation, now);
    let api = Api::<CertificateRotation>::namespaced(ctx.client.clone(), &ns);
    write_status_diff(&api, cr.as_ref(), &status).await?;
    Ok(finish(&ctx, cr.as_ref(), &old.conditions, &outcome.health, events, outcome.requeue).await)
}

/// Run the CertificateRotation controller (watches its workloads for rollout progress).
pub async fn run(client: Client, ctx: Arc<Context>) {
    use futures::StreamExt;
    let api: Api<CertificateRotation> = Api::all(client.clone());
    let controller = new_controller(api, &ctx);
    let secrets_store = controller.store();
    let metrics = ctx.metrics.clone();
    watch_workloads(controller, &client)
        // Referenced Secrets, metadata only: their contents are neither streamed nor cached.
        .watches(
            Api::<PartialObjectMeta<Secret>>::all(client),
            crate::controller::watch_config(),
            move |meta: PartialObjectMeta<Secret>| {
                let (ns, name) = (meta.namespace(), meta.name_any());
                secrets_store
                    .state()
                    .into_iter()
                    .filter(|c| {
                        c.namespace() == ns
                            && c.spec.external.as_ref().and_then(|e| e.secret_name.as_deref()) == Some(name.as_str())
                    })
                    .map(|c| ObjectRef::from_obj(c.as_ref()))
                    .collect::<Vec<_>>()
            },
        )
        .shutdown_on_signal()
        .run(
            |c, ctx| measured(ctx.metrics.clone(), c.clone(), reconcile(c, ctx)),
            |c, err, _| {
                warn!(kind = "CertificateRotation", name = %c.name_any(), error = %err, "reconcile failed; retrying");
                Action::requeue(Duration::from_secs(5))
            },
            ctx,
        )
        .for_each(forget_deleted(metrics))
        .await;
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
                renewal_time: renewal.map(String::from),
                client_impact: None,
            }),
            ..Default::default()
        }
    }

    #[test]
    fn issue_on_new_label_or_due_renewal_only() {
        let want = |label: &str, type_| Want {
            slot: Slot::External,
            label: label.into(),
            type_,
            dns_names: vec![],
            validity_days: 30,
        };
        let before = Timestamp::from_second(1_800_000_000).unwrap();
        let after = Timestamp::from_second(1_900_000_000).unwrap();
        let due = "2030-01-01T00:00:00Z"; // between the two instants above
        let ss = CertificateType::Selfsigned;
        assert!(needs_issue(&want("a", ss), &CertificateRotationStatus::default(), before), "first issue");
        assert!(needs_issue(&want("b", ss), &status_with("a", ss, Some(due)), before), "new label");
        assert!(!needs_issue(&want("a", ss), &status_with("a", ss, Some(due)), before), "same label, not due");
        assert!(needs_issue(&want("a", ss), &status_with("a", ss, Some(due)), after), "renewal due");
        let sec = CertificateType::Secret;
        assert!(
            !needs_issue(&want("a", sec), &status_with("a", sec, None), after),
            "material from a Secret is not renewed by us"
        );
    }
}
