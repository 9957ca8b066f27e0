//! The ClusterSecurityPolicy reconciler: validate, then carry the operation one step further
//! (PENDING → UPDATE_IN_PROGRESS → UPDATE_COMPLETE / UPDATE_FAILED), writing the artefacts and
//! rolling the workload, and finally write the whole status with one server-side apply.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use k8s_openapi::api::core::v1::Secret;
use k8s_openapi::jiff::Timestamp;
use kube::api::{Patch, PatchParams};
use kube::runtime::controller::Action;
use kube::runtime::events::EventType;
use kube::{Api, Client, Resource, ResourceExt};
use serde_json::json;
use tracing::warn;

use super::{client_ca_secret_name, configmap_name, desired_settings, listeners, properties, SECURITY_HASH_ANNOTATION};
use crate::api::{
    ClusterSecurityPolicy, ClusterSecurityPolicyStatus, ClusterState, OperationState, OperationType, SecuritySettings,
    FIELD_MANAGER,
};
use crate::conditions::{self, reason, Health};
use crate::controller::{
    finish, follow_rollout, forget_deleted, measured, new_controller, start_rollout, watch_workloads,
    write_status_diff, Context, Error, Events,
};
use crate::rollout::{self, Workload};
use crate::{operation, pki, validate};

const CLIENT_CA_DAYS: u32 = 3650;

/// What one reconcile decided to tell the user.
struct Outcome {
    health: Health,
    requeue: Option<Duration>,
    events: Events,
}

fn workload_text(csp: &ClusterSecurityPolicy) -> String {
    rollout::describe(&csp.namespace().unwrap_or_default(), &csp.spec.cluster_ref)
}

fn state_text(s: ClusterState) -> &'static str {
    match s {
        ClusterState::Active => "ACTIVE",
        ClusterState::Updating => "UPDATING",
        ClusterState::Unavailable => "UNAVAILABLE",
    }
}

/// The in-cluster setting can't change after the first operation applied it (webhook-less path).
fn in_cluster_violation(csp: &ClusterSecurityPolicy, status: &ClusterSecurityPolicyStatus) -> Option<String> {
    let applied = status.applied.as_ref()?.encryption_in_transit.in_cluster;
    (applied != csp.spec.encryption_in_transit.in_cluster).then(|| {
        format!(
            "spec.encryptionInTransit.inCluster: you can't change the in-cluster (broker-to-broker) encryption setting after creation (it is {applied}); put back inCluster: {applied} (rule {})",
            validate::rule::IN_CLUSTER_IMMUTABLE
        )
    })
}

/// Artefacts written before the roll: CA bundle, ConfigMap; returns the hash that rolls the pods.
async fn write_artefacts(
    ctx: &Context,
    csp: &ClusterSecurityPolicy,
    target: &SecuritySettings,
    now: Timestamp,
) -> Result<Result<String, (String, String)>, Error> {
    let ns = csp.namespace().unwrap_or_default();
    let cluster = &csp.spec.cluster_ref.name;
    let owner = csp.controller_owner_ref(&()).expect("a stored object has a uid");
    let secrets: Api<Secret> = Api::namespaced(ctx.client.clone(), &ns);
    let pp = PatchParams::apply(FIELD_MANAGER).force();
    let kube_err = |what: &str| {
        let what = what.to_string();
        move |source| Error::Kube { what: what.clone(), source }
    };

    // Client CA bundle for mTLS: the Secrets named in the spec, or a CA the operator keeps.
    let mut ca_bundle = String::new();
    if let Some(tls) = target.client_authentication.tls.as_ref().filter(|t| t.enabled) {
        let ca_name = client_ca_secret_name(cluster);
        let mut data: BTreeMap<String, String> = BTreeMap::new();
        if tls.certificate_authority_secret_refs.is_empty() {
            let existing = secrets.get_opt(&ca_name).await.map_err(kube_err("read client CA Secret"))?;
            let kept = existing.and_then(|s| s.data).and_then(|d| {
                let get = |k: &str| d.get(k).and_then(|v| String::from_utf8(v.0.clone()).ok());
                Some((get("ca.crt")?, get("ca.key")?))
            });
            let (crt, key) = match kept {
                Some(pair) => pair,
                None => {
                    let ca = pki::new_ca(&format!("{cluster} client CA"), now, CLIENT_CA_DAYS)
                        .map_err(|e| Error::Internal(e.to_string()))?;
                    (ca.cert_pem, ca.key_pem)
                }
            };
            data.insert("ca.key".into(), key);
            ca_bundle = crt;
        } else {
            for r in &tls.certificate_authority_secret_refs {
                let s = secrets.get_opt(&r.name).await.map_err(kube_err("read CA Secret"))?;
                let crt = s
                    .and_then(|s| s.data)
                    .and_then(|d| d.get("ca.crt").and_then(|v| String::from_utf8(v.0.clone()).ok()));
                match crt {
                    Some(c) if c.contains("BEGIN CERTIFICATE") => ca_bundle.push_str(&c),
                    _ => {
                        return Ok(Err((
                            reason::SECRET_NOT_FOUND.into(),
                            format!(
                                "Secret {ns}/{} with a PEM certificate under key ca.crt is required by spec.clientAuthentication.tls.certificateAuthoritySecretRefs; create it (kubectl create secret generic {} -n {ns} --from-file=ca.crt=ca.pem) and the operator retries",
                                r.name, r.name
                            ),
                        )))
                    }
                }
            }
        }
        data.insert("ca.crt".into(), ca_bundle.clone());
        let secret = json!({
            "apiVersion": "v1", "kind": "Secret",
            "metadata": {"name": ca_name, "namespace": ns, "ownerReferences": [owner],
                         "labels": {"app.kubernetes.io/managed-by": FIELD_MANAGER}},
            "type": "Opaque",
            "stringData": data,
        });
        secrets.patch(&ca_name, &pp, &Patch::Apply(&secret)).await.map_err(kube_err("write client CA Secret"))?;
    }

    let source = format!("{ns}/{}", csp.name_any());
    let server_properties = properties::render_server_properties(target, &source);
    let security_json = properties::render_security_json(target);
    let cm_name = configmap_name(cluster);
    let cm = json!({
        "apiVersion": "v1", "kind": "ConfigMap",
        "metadata": {"name": cm_name, "namespace": ns, "ownerReferences": [owner],
                     "labels": {"app.kubernetes.io/managed-by": FIELD_MANAGER}},
        "data": {"server.properties": server_properties, "security.json": security_json},
    });
    Api::<k8s_openapi::api::core::v1::ConfigMap>::namespaced(ctx.client.clone(), &ns)
        .patch(&cm_name, &pp, &Patch::Apply(&cm))
        .await
        .map_err(kube_err("write security ConfigMap"))?;
    Ok(Ok(properties::security_hash(&[server_properties.as_bytes(), security_json.as_bytes(), ca_bundle.as_bytes()])))
}

/// After a SecretNotFound failure: are all referenced CA Secrets there now?
async fn ca_refs_present(ctx: &Context, csp: &ClusterSecurityPolicy) -> Result<bool, Error> {
    let ns = csp.namespace().unwrap_or_default();
    let api: Api<Secret> = Api::namespaced(ctx.client.clone(), &ns);
    let refs = csp
        .spec
        .client_authentication
        .tls
        .as_ref()
        .map(|t| t.certificate_authority_secret_refs.clone())
        .unwrap_or_default();
    for r in refs {
        let found = api
            .get_metadata_opt(&r.name)
            .await
            .map_err(|source| Error::Kube { what: format!("read Secret {ns}/{}", r.name), source })?;
        if found.is_none() {
            return Ok(false);
        }
    }
    Ok(true)
}

/// Advance the operation; returns what to report. Mutates `status`.
async fn advance(
    ctx: &Context,
    csp: &ClusterSecurityPolicy,
    status: &mut ClusterSecurityPolicyStatus,
    workload: Option<&Workload>,
    now: Timestamp,
) -> Result<Outcome, Error> {
    let desired = desired_settings(&csp.spec);
    let generation = csp.meta().generation;
    let state = rollout::cluster_state(workload);
    let wl = workload_text(csp);
    let mut events = Vec::new();

    // No operation running: start one if the settings differ from what is applied.
    if status.current_operation.is_none() {
        if status.applied.as_ref() == Some(&desired) {
            status.listeners = listeners::status_listeners(&desired);
            let health = if state == ClusterState::Active {
                Health::Ready { reason: reason::APPLIED.into(), message: format!("Security settings applied to {wl}.") }
            } else {
                Health::NotReady {
                    reason: reason::CLUSTER_NOT_ACTIVE.into(),
                    message: format!("Security settings applied, but {wl} is {}.", state_text(state)),
                }
            };
            return Ok(Outcome { health, requeue: None, events });
        }
        // A failed operation for this very spec is not retried until the spec changes
        // (or, for a missing CA Secret, until it appears).
        if let Some(e) = operation::failed_for(&status.operations, generation, &desired) {
            let missing_secret = e.code == reason::SECRET_NOT_FOUND;
            if !(missing_secret && ca_refs_present(ctx, csp).await?) {
                let retry = missing_secret.then(|| Duration::from_secs(30));
                return Ok(Outcome {
                    health: Health::Stalled { reason: e.code, message: e.message },
                    requeue: retry,
                    events,
                });
            }
        }
        let op = operation::new(
            operation::uuid_v4(),
            OperationType::UpdateSecurity,
            generation,
            status.applied.clone(),
            desired.clone(),
            now,
        );
        let note = operation::open(&mut status.operations, &mut status.current_operation, op, &wl);
        events.push((EventType::Normal, "OperationPending".into(), note));
    }

    let mut op = status.current_operation.clone().expect("set above");
    let outcome = match op.operation_state {
        OperationState::Pending => {
            if op.target_info.as_ref() != Some(&desired) {
                // Changed again before it started: the queued operation takes the newest settings.
                op.target_info = Some(desired.clone());
                op.generation = generation;
            }
            if state != ClusterState::Active {
                let message = if workload.is_none() {
                    format!("{wl} not found; the update starts once it exists and is ACTIVE.")
                } else {
                    format!("{wl} is {}; the update starts once it is ACTIVE.", state_text(state))
                };
                Outcome {
                    health: Health::Reconciling { reason: reason::WAITING_FOR_ACTIVE_CLUSTER.into(), message },
                    requeue: Some(Duration::from_secs(30)),
                    events,
                }
            } else {
                let target = op.target_info.clone().expect("operations carry a target");
                match write_artefacts(ctx, csp, &target, now).await? {
                    Err((code, message)) => {
                        operation::fail(&mut op, &code, message.clone(), now);
                        events.push((EventType::Warning, "UpdateFailed".into(), message.clone()));
                        let retry = (code == reason::SECRET_NOT_FOUND).then(|| Duration::from_secs(30));
                        Outcome { health: Health::Stalled { reason: code, message }, requeue: retry, events }
                    }
                    Ok(hash) => {
                        let mut ann = BTreeMap::new();
                        ann.insert(SECURITY_HASH_ANNOTATION.to_string(), hash.clone());
                        let ns = csp.namespace().unwrap_or_default();
                        let health =
                            start_rollout(ctx, &ns, &csp.spec.cluster_ref, &ann, &mut op, now, &mut events).await?;
                        status.security_hash = Some(hash);
                        Outcome { health, requeue: Some(Duration::from_secs(5)), events }
                    }
                }
            }
        }
        OperationState::UpdateInProgress => {
            let mut expected = BTreeMap::new();
            expected.insert(SECURITY_HASH_ANNOTATION.to_string(), status.security_hash.clone().unwrap_or_default());
            crate::controller::reassert_template_annotations(
                ctx,
                &csp.namespace().unwrap_or_default(),
                &csp.spec.cluster_ref,
                workload,
                &expected,
            )
            .await?;
            let elapsed = operation::seconds_in_progress(&op, now).unwrap_or(0);
            let check = rollout::check(workload, &expected, elapsed, i64::from(csp.spec.rollout_timeout_seconds), &wl);
            match follow_rollout(check, &mut op, now, &mut events) {
                Some((health, requeue)) => Outcome { health, requeue, events },
                None => {
                    operation::complete(&mut op, now);
                    let target = op.target_info.clone().expect("operations carry a target");
                    status.listeners = listeners::status_listeners(&target);
                    status.applied = Some(target.clone());
                    events.push((
                        EventType::Normal,
                        "UpdateComplete".into(),
                        format!("Operation {}: {wl} runs the new security settings.", op.operation_id),
                    ));
                    let health = if target == desired {
                        Health::Ready {
                            reason: reason::APPLIED.into(),
                            message: format!("Security settings applied to {wl}."),
                        }
                    } else {
                        Health::Reconciling {
                            reason: "Queued".into(),
                            message: "The spec changed during the update; the next operation starts now.".into(),
                        }
                    };
                    Outcome { health, requeue: (target != desired).then(|| Duration::from_secs(1)), events }
                }
            }
        }
        OperationState::UpdateComplete | OperationState::UpdateFailed => Outcome {
            health: Health::Reconciling { reason: "Recorded".into(), message: String::new() },
            requeue: Some(Duration::from_secs(1)),
            events,
        },
    };
    operation::settle(&mut status.operations, &mut status.current_operation, op);
    Ok(outcome)
}

/// Reconcile one ClusterSecurityPolicy.
pub async fn reconcile(csp: Arc<ClusterSecurityPolicy>, ctx: Arc<Context>) -> Result<Action, Error> {
    let ns = csp.namespace().unwrap_or_default();
    let api: Api<ClusterSecurityPolicy> = Api::namespaced(ctx.client.clone(), &ns);
    let Some(csp) = crate::controller::fresh(&api, csp).await? else { return Ok(Action::await_change()) };
    let now = ctx.clock.now();
    let old = csp.status.clone().unwrap_or_default();
    let mut status = old.clone();
    let methods: Vec<&str> = csp.spec.client_authentication.enabled_methods().iter().map(|m| m.label()).collect();
    status.authentication = Some(methods.join(","));

    let workload = rollout::get(&ctx.client, &ns, &csp.spec.cluster_ref)
        .await
        .map_err(|source| Error::Kube { what: format!("read {}", workload_text(&csp)), source })?;
    status.cluster_state = Some(rollout::cluster_state(workload.as_ref()));

    let invalid = match validate::security_policy(&csp.spec, None) {
        Err(v) => Some(v.to_string()),
        Ok(()) => in_cluster_violation(&csp, &status),
    };
    let outcome = match invalid {
        // An operation already rolling finishes; nothing new starts from an invalid spec.
        Some(v) if status.current_operation.as_ref().is_none_or(|o| o.operation_state == OperationState::Pending) => {
            Outcome {
                health: Health::Stalled {
                    reason: reason::INVALID_SPEC.into(),
                    message: format!("{v}. Nothing was applied; fix the spec and apply it again."),
                },
                requeue: None,
                events: vec![],
            }
        }
        _ => advance(&ctx, &csp, &mut status, workload.as_ref(), now).await?,
    };

    status.observed_generation = csp.meta().generation;
    status.conditions = conditions::apply(&old.conditions, &outcome.health, csp.meta().generation, now);
    let api = Api::<ClusterSecurityPolicy>::namespaced(ctx.client.clone(), &ns);
    write_status_diff(&api, csp.as_ref(), &status).await?;
    Ok(finish(&ctx, csp.as_ref(), &old.conditions, &outcome.health, outcome.events, outcome.requeue).await)
}

/// Run the ClusterSecurityPolicy controller: it watches the policies and the StatefulSets and
/// Deployments they target, so rollout progress is seen without polling.
pub async fn run(client: Client, ctx: Arc<Context>) {
    use futures::StreamExt;
    let policies: Api<ClusterSecurityPolicy> = Api::all(client.clone());
    let controller = new_controller(policies, &ctx);
    let metrics = ctx.metrics.clone();
    watch_workloads(controller, &client)
        .shutdown_on_signal()
        .run(
            |p, ctx| measured(ctx.metrics.clone(), p.clone(), reconcile(p, ctx)),
            |p, err, _| {
                warn!(kind = "ClusterSecurityPolicy", name = %p.name_any(), error = %err, "reconcile failed; retrying");
                Action::requeue(Duration::from_secs(5))
            },
            ctx,
        )
        .for_each(forget_deleted(metrics))
        .await;
}
