//! The KmsKeyVaultMode controller: plan the steps from what differs between the cluster and the
//! spec, run them one at a time with every step recorded in `status.steps` before and after it
//! runs, and resume from the status after a restart.
//!
//! One reconcile runs as many steps as it can in a row (the object is not reconciled twice at
//! once, so steps never overlap); a transient cloud or API error leaves the step InProgress and
//! the next reconcile resumes it. A spec changed meanwhile waits for the running operation (its
//! target was fixed when it started) and becomes the next operation.

use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use k8s_openapi::api::core::v1::Secret;
use k8s_openapi::jiff::Timestamp;
use kube::runtime::controller::Action;
use kube::runtime::events::EventType;
use kube::{Api, Client, Resource, ResourceExt};
use tracing::{info, warn};

use super::azure::{AzureKms, AzureSettings, Credentials};
use super::provider::{KeyState, KmsProvider, ProviderError};
use super::reencrypt::{self, Progress};
use super::steps::{self, Next};
use crate::api::{
    KeyCheck, KeyCheckResult, KmsKeyVaultMode, KmsKeyVaultModeSpec, KmsKeyVaultModeStatus, KmsSettings, NetworkAccess,
    OperationState, OperationType, ReencryptionStatus, StepName, StepState,
};
use crate::conditions::{self, reason, Health};
use crate::controller::{finish, forget_deleted, measured, new_controller, write_status_diff, Context, Error, Events};
use crate::operation::{self, rfc3339};
use crate::validate;

/// Reasons of this kind's conditions.
pub mod kms_reason {
    /// The key is missing, disabled or expired (Stalled).
    pub const KEY_NOT_USABLE: &str = "KeyNotUsable";
    /// The operator cannot reach or authenticate to the cloud (Stalled until fixed).
    pub const CLOUD_ACCESS_FAILED: &str = "CloudAccessFailed";
    /// A step failed; the operation ended UPDATE_FAILED (Stalled until the spec changes).
    pub const OPERATION_FAILED: &str = "OperationFailed";
    /// The cluster's KMS settings match the spec (Ready).
    pub const KMS_IN_SYNC: &str = "KmsInSync";
    /// Waiting for an update of the cluster that someone else started.
    pub const WAITING_FOR_CLUSTER: &str = "WaitingForCluster";
}

/// How often progress of a Secret rewrite is written to status at most.
const PROGRESS_WRITE_INTERVAL: Duration = Duration::from_secs(2);
/// When to look again at a KMS setup that is in sync (drift, key expiry).
const IDLE_RECHECK: Duration = Duration::from_secs(30 * 60);
/// When to retry after a transient failure of a step.
const STEP_RETRY: Duration = Duration::from_secs(10);

/// Makes the cloud provider for a KmsKeyVaultMode.
#[async_trait]
pub trait ProviderFactory: Send + Sync {
    async fn provider(
        &self,
        client: &Client,
        spec: &KmsKeyVaultModeSpec,
    ) -> Result<Arc<dyn KmsProvider>, ProviderError>;
}

/// Azure, with the operator's Azure settings and credentials.
pub struct AzureFactory {
    pub settings: AzureSettings,
    /// `namespace/name` of a Secret with `AZURE_TENANT_ID`, `AZURE_CLIENT_ID` and
    /// `AZURE_CLIENT_SECRET`; None: workload identity.
    pub credentials_secret: Option<(String, String)>,
}

impl AzureFactory {
    async fn credentials(&self, client: &Client) -> Result<Credentials, ProviderError> {
        let Some((ns, name)) = &self.credentials_secret else {
            return Ok(Credentials::WorkloadIdentity { tenant_id: None, client_id: None, token_file: None });
        };
        let secret = Api::<Secret>::namespaced(client.clone(), ns)
            .get_opt(name)
            .await
            .map_err(|e| ProviderError::Transient(format!("reading the Azure credentials Secret {ns}/{name}: {e}")))?;
        let secret = secret.ok_or_else(|| {
            ProviderError::Config(format!(
                "the Azure credentials Secret {ns}/{name} does not exist; create it with keys AZURE_TENANT_ID, \
                 AZURE_CLIENT_ID and AZURE_CLIENT_SECRET, or run the operator with Azure workload identity"
            ))
        })?;
        let data = secret.data.unwrap_or_default();
        let field = |k: &str| {
            data.get(k).and_then(|v| String::from_utf8(v.0.clone()).ok()).map(|s| s.trim().to_string()).ok_or_else(
                || ProviderError::Config(format!("the Azure credentials Secret {ns}/{name} has no key {k}")),
            )
        };
        Ok(Credentials::ClientSecret {
            tenant_id: field("AZURE_TENANT_ID")?,
            client_id: field("AZURE_CLIENT_ID")?,
            secret: field("AZURE_CLIENT_SECRET")?,
        })
    }
}

#[async_trait]
impl ProviderFactory for AzureFactory {
    async fn provider(
        &self,
        client: &Client,
        spec: &KmsKeyVaultModeSpec,
    ) -> Result<Arc<dyn KmsProvider>, ProviderError> {
        let azure = spec
            .provider
            .azure
            .as_ref()
            .ok_or_else(|| ProviderError::Config("spec.provider.azure is not set".into()))?;
        let credentials = self.credentials(client).await?;
        Ok(Arc::new(AzureKms::new(azure, self.settings.clone(), &credentials)?))
    }
}

/// What the KMS controller works with.
pub struct KmsContext {
    pub ctx: Arc<Context>,
    pub providers: Arc<dyn ProviderFactory>,
}

/// The settings the spec asks for (Public carries no vault resource id, as AKS wants).
pub fn desired_settings(spec: &KmsKeyVaultModeSpec) -> KmsSettings {
    KmsSettings {
        enabled: true,
        key_id: Some(spec.key_id.clone()),
        network_access: Some(spec.network_access),
        key_vault_resource_id: match spec.network_access {
            NetworkAccess::Private => spec.key_vault_resource_id.clone().filter(|s| !s.is_empty()),
            NetworkAccess::Public => None,
        },
    }
}

fn kms_text(s: &KmsSettings) -> &'static str {
    if s.enabled {
        "Enabled"
    } else {
        "Disabled"
    }
}

fn describe(s: &KmsSettings) -> String {
    if !s.enabled {
        return "KMS off".into();
    }
    let vault = s.key_id.as_deref().and_then(|k| validate::parse_key_id(k).ok()).map(|k| k.vault.to_string());
    format!("KMS on, vault {}, {:?}", vault.unwrap_or_default(), s.network_access.unwrap_or(NetworkAccess::Public))
}

fn progress_text(r: &ReencryptionStatus) -> String {
    let handled = r.rewritten + r.unchanged + r.failed + r.deleted;
    format!("{handled}/{}", r.total.max(handled))
}

/// Writes status as the reconcile goes, keeping the object it last wrote (so the next write is
/// guarded by the right resourceVersion).
struct StatusWriter {
    api: Api<KmsKeyVaultMode>,
    obj: KmsKeyVaultMode,
    metrics: Arc<crate::metrics::Metrics>,
}

impl StatusWriter {
    async fn write(&mut self, status: &KmsKeyVaultModeStatus) -> Result<(), Error> {
        if let Some(stored) = write_status_diff(&self.api, &self.obj, status).await? {
            self.obj = stored;
        }
        // Progress is written from inside a long reconcile; the metric follows every write.
        if let Some(r) = &status.reencryption {
            self.metrics.reencryption(&self.obj.name_any(), r);
        }
        Ok(())
    }
}

/// What one reconcile ends with.
struct Outcome {
    health: Health,
    requeue: Option<Duration>,
}

fn key_check_of(state: &Result<KeyState, ProviderError>, now: Timestamp) -> KeyCheck {
    let (result, message) = match state {
        Ok(KeyState::Usable { expires: Some(e) }) => {
            (KeyCheckResult::Usable, format!("The key is usable; it expires at {e}."))
        }
        Ok(KeyState::Usable { expires: None }) => (KeyCheckResult::Usable, "The key is usable.".to_string()),
        Ok(KeyState::Unusable(m)) => (KeyCheckResult::Unusable, m.clone()),
        Err(e) => (KeyCheckResult::Unknown, format!("The key could not be checked: {e}")),
    };
    KeyCheck { result, message, check_time: rfc3339(now) }
}

fn cloud_stalled(e: &ProviderError) -> Outcome {
    Outcome {
        health: Health::Stalled {
            reason: kms_reason::CLOUD_ACCESS_FAILED.into(),
            message: format!("{e}. Fix the operator's cloud access; it retries every minute."),
        },
        requeue: Some(Duration::from_secs(60)),
    }
}

/// Run one step to its end. Ok(Err(..)) is the step's own failure; Err is a transient problem
/// (the step stays InProgress and is resumed).
async fn run_step(
    kctx: &KmsContext,
    provider: &dyn KmsProvider,
    writer: &mut StatusWriter,
    status: &mut KmsKeyVaultModeStatus,
    index: usize,
) -> Result<Result<String, String>, StepError> {
    let op = status.current_operation.clone().ok_or_else(|| StepError::Internal("no current operation".into()))?;
    let target = op.target_info.clone().ok_or_else(|| StepError::Internal("operation without target".into()))?;
    let source = op.source_info.clone();
    let name = status.steps[index].name;
    let cloud = |r: Result<(), ProviderError>, done: String| match r {
        Ok(()) => Ok(Ok(done)),
        Err(ProviderError::Rejected { code, message }) => Ok(Err(format!("{code}: {message}"))),
        Err(e) => Err(StepError::Cloud(e)),
    };
    match name {
        StepName::DisableKms => {
            let off = KmsSettings { enabled: false, key_id: None, network_access: None, key_vault_resource_id: None };
            let r = provider.set_kms(&off).await;
            if r.is_ok() {
                status.kms = Some("Disabled".into());
            }
            cloud(r, format!("KMS turned off on {}.", provider.describe()))
        }
        StepName::EnableKms | StepName::UpdateKms => {
            let r = provider.set_kms(&target).await;
            if r.is_ok() {
                status.kms = Some("Enabled".into());
            }
            cloud(r, format!("{} on {}.", describe(&target), provider.describe()))
        }
        StepName::UpdateKeyVaultNetworkAccess => {
            let mode = target.network_access.unwrap_or(NetworkAccess::Public);
            let rid = target
                .key_vault_resource_id
                .clone()
                .or_else(|| source.as_ref().and_then(|s| s.key_vault_resource_id.clone()));
            let Some(rid) = rid else {
                return Ok(Err("the key vault's resource id is unknown: set spec.keyVaultResourceId".into()));
            };
            let r = provider.set_vault_network_access(&rid, mode).await;
            let vault = validate::parse_key_vault_resource_id(&rid).unwrap_or(&rid).to_string();
            let access = if mode == NetworkAccess::Private { "Disabled" } else { "Enabled" };
            cloud(r, format!("Key vault {vault}: public network access {access}."))
        }
        StepName::ReencryptSecrets => reencrypt_step(kctx, writer, status).await,
    }
}

#[derive(Debug, thiserror::Error)]
enum StepError {
    #[error("{0}")]
    Cloud(ProviderError),
    #[error("re-encryption stopped: {0}")]
    Reencrypt(reencrypt::ReencryptError),
    #[error("{0}")]
    Internal(String),
}

fn record_progress(status: &mut KmsKeyVaultModeStatus, p: &Progress) {
    let r = status.reencryption.get_or_insert_with(Default::default);
    r.rewritten = p.rewritten;
    r.unchanged = p.unchanged;
    r.failed = p.failed;
    r.deleted = p.gone;
    r.resume_after = p.resume_after.clone();
    status.progress = Some(progress_text(r));
}

async fn reencrypt_step(
    kctx: &KmsContext,
    writer: &mut StatusWriter,
    status: &mut KmsKeyVaultModeStatus,
) -> Result<Result<String, String>, StepError> {
    let client = kctx.ctx.client.clone();
    let clock = kctx.ctx.clock.clone();
    let r = status.reencryption.clone().unwrap_or_default();
    let start = Progress {
        total: r.rewritten + r.unchanged + r.failed + r.deleted,
        rewritten: r.rewritten,
        unchanged: r.unchanged,
        gone: r.deleted,
        failed: r.failed,
        resume_after: r.resume_after.clone(),
    };
    if r.resume_after.is_some() {
        info!(resume_after = ?r.resume_after, "resuming the Secret rewrite where it stopped");
    }
    let settings = reencrypt::Settings {
        concurrency: writer.obj.spec.reencryption.concurrency.clamp(1, 64) as usize,
        page_size: writer.obj.spec.reencryption.page_size.clamp(1, 5000),
        attempts: 5,
    };
    // The engine reports each page on a channel; this side writes the newest progress to status
    // at most every PROGRESS_WRITE_INTERVAL while the engine goes on.
    let (tx, mut rx) = tokio::sync::watch::channel(start.clone());
    let engine = async move { reencrypt::run(&client, settings, start, |p| drop(tx.send(p.clone()))).await };
    let reporter = async {
        while rx.changed().await.is_ok() {
            let p = rx.borrow_and_update().clone();
            record_progress(status, &p);
            if let Err(e) = writer.write(status).await {
                // Progress is also kept in memory; the next write reports it.
                warn!(error = %e, "could not write re-encryption progress");
            }
            tokio::time::sleep(PROGRESS_WRITE_INTERVAL).await;
        }
        rx.borrow().clone()
    };
    let (result, last) = tokio::join!(engine, reporter);
    record_progress(status, &last);
    let p = result.map_err(StepError::Reencrypt)?;
    let r = status.reencryption.get_or_insert_with(Default::default);
    r.end_time = Some(rfc3339(clock.now()));
    status.progress = Some(progress_text(r));
    let summary = format!(
        "{} Secrets: {} rewritten, {} already current, {} deleted meanwhile, {} failed.",
        p.rewritten + p.unchanged + p.gone + p.failed,
        p.rewritten,
        p.unchanged,
        p.gone,
        p.failed
    );
    Ok(if p.failed > 0 {
        Err(format!(
            "{summary} Secrets that could not be rewritten stay under the old configuration; see the operator log."
        ))
    } else {
        Ok(summary)
    })
}

/// Drive the current operation as far as it goes now.
async fn advance(
    kctx: &KmsContext,
    provider: &dyn KmsProvider,
    writer: &mut StatusWriter,
    status: &mut KmsKeyVaultModeStatus,
    events: &mut Events,
) -> Result<Outcome, Error> {
    let clock = kctx.ctx.clock.clone();
    loop {
        let Some(mut op) = status.current_operation.clone() else {
            return Err(Error::Internal("advance without an operation".into()));
        };
        if op.operation_state == OperationState::Pending {
            let current = match provider.get_kms().await {
                Ok(c) => c,
                Err(e) if e.is_transient() => return Ok(retry_outcome("Starting", &e)),
                Err(e) => return Ok(cloud_stalled(&e)),
            };
            status.kms = Some(kms_text(&current.settings).into());
            if current.busy() {
                return Ok(Outcome {
                    health: Health::Reconciling {
                        reason: kms_reason::WAITING_FOR_CLUSTER.into(),
                        message: format!(
                            "{} is {}; operation {} starts when that update ends.",
                            provider.describe(),
                            current.provisioning_state,
                            op.operation_id
                        ),
                    },
                    requeue: Some(Duration::from_secs(30)),
                });
            }
            let target = op.target_info.clone().unwrap_or_else(|| desired_settings(&writer.obj.spec));
            let plan = steps::plan(&current.settings, &target);
            op.source_info = Some(current.settings.clone());
            operation::start(&mut op, clock.now());
            status.steps = steps::pending(&plan);
            status.reencryption = None;
            let names: Vec<String> = plan.iter().map(|s| format!("{s:?}")).collect();
            events.push((
                EventType::Normal,
                "UpdateStarted".into(),
                format!(
                    "Operation {}: {} → {}: {}.",
                    op.operation_id,
                    describe(&current.settings),
                    describe(&target),
                    if names.is_empty() { "nothing to do".into() } else { names.join(" → ") }
                ),
            ));
            operation::settle(&mut status.operations, &mut status.current_operation, op);
            writer.write(status).await?;
            continue;
        }
        match steps::next(&status.steps) {
            Next::Run(i) => {
                let total = status.steps.len();
                let name = status.steps[i].name;
                status.phase = Some(format!("{name:?}"));
                if status.steps[i].state == StepState::Pending {
                    let now = rfc3339(clock.now());
                    let step = &mut status.steps[i];
                    step.state = StepState::InProgress;
                    step.start_time = Some(now.clone());
                    step.message = None;
                    if name == StepName::ReencryptSecrets {
                        let page_size = writer.obj.spec.reencryption.page_size.clamp(1, 5000);
                        let estimate = match reencrypt::count(&kctx.ctx.client, page_size).await {
                            Ok(n) => n,
                            Err(e) => {
                                warn!(error = %e, "could not count the Secrets; progress shows no total");
                                0
                            }
                        };
                        status.reencryption =
                            Some(ReencryptionStatus { total: estimate, start_time: Some(now), ..Default::default() });
                        status.progress = status.reencryption.as_ref().map(progress_text);
                    }
                    events.push((
                        EventType::Normal,
                        format!("{name:?}Started"),
                        format!("Step {}/{total} {name:?} started.", i + 1),
                    ));
                    writer.write(status).await?;
                }
                match run_step(kctx, provider, writer, status, i).await {
                    Ok(result) => {
                        let (state, type_, outcome, message) = match result {
                            Ok(m) => (StepState::Succeeded, EventType::Normal, "Succeeded", m),
                            Err(m) => (StepState::Failed, EventType::Warning, "Failed", m),
                        };
                        let step = &mut status.steps[i];
                        step.end_time = Some(rfc3339(clock.now()));
                        step.state = state;
                        step.message = Some(message.clone());
                        let lead = if state == StepState::Failed { " failed" } else { "" };
                        events.push((
                            type_,
                            format!("{name:?}{outcome}"),
                            format!("Step {}/{total}{lead}: {message}", i + 1),
                        ));
                        writer.write(status).await?;
                    }
                    Err(StepError::Cloud(e)) if !e.is_transient() => {
                        status.steps[i].message = Some(format!("waiting: {e}"));
                        writer.write(status).await?;
                        return Ok(cloud_stalled(&e));
                    }
                    Err(e) => {
                        warn!(step = ?name, error = %e, "step interrupted; it resumes on the next reconcile");
                        status.steps[i].message = Some(format!("retrying: {e}"));
                        // The API server may be restarting; a failed write is retried with the step.
                        let _ = writer.write(status).await;
                        return Ok(retry_outcome(&format!("{name:?}"), &e));
                    }
                }
            }
            Next::Done => {
                operation::complete(&mut op, clock.now());
                let target = op.target_info.clone().unwrap_or_else(|| desired_settings(&writer.obj.spec));
                status.kms = Some(kms_text(&target).into());
                status.phase = Some("Idle".into());
                let message = format!("Operation {} complete: {}.", op.operation_id, describe(&target));
                events.push((EventType::Normal, "UpdateCompleted".into(), message.clone()));
                operation::settle(&mut status.operations, &mut status.current_operation, op);
                return Ok(Outcome {
                    health: Health::Ready { reason: kms_reason::KMS_IN_SYNC.into(), message },
                    requeue: Some(IDLE_RECHECK),
                });
            }
            Next::Failed(message) => {
                operation::fail(&mut op, kms_reason::OPERATION_FAILED, message.clone(), clock.now());
                status.phase = Some("Idle".into());
                let message = format!(
                    "Operation {} failed: {message}. Fix the cause and change the spec (or re-apply it with a new \
                     generation) to try again.",
                    op.operation_id
                );
                events.push((EventType::Warning, "UpdateFailed".into(), message.clone()));
                operation::settle(&mut status.operations, &mut status.current_operation, op);
                return Ok(Outcome {
                    health: Health::Stalled { reason: kms_reason::OPERATION_FAILED.into(), message },
                    requeue: None,
                });
            }
        }
    }
}

fn retry_outcome(step: &str, e: &dyn std::fmt::Display) -> Outcome {
    Outcome {
        health: Health::Reconciling { reason: step.to_string(), message: format!("{step}: {e}; retrying.") },
        requeue: Some(STEP_RETRY),
    }
}

/// Nothing running: compare the cluster with the spec and start an operation when they differ.
async fn decide(
    kctx: &KmsContext,
    provider: &dyn KmsProvider,
    obj: &KmsKeyVaultMode,
    status: &mut KmsKeyVaultModeStatus,
    events: &mut Events,
) -> Result<Option<Outcome>, Error> {
    let now = kctx.ctx.clock.now();
    let desired = desired_settings(&obj.spec);
    let current = match provider.get_kms().await {
        Ok(c) => c,
        Err(e) if e.is_transient() => return Ok(Some(retry_outcome("ReadingCluster", &e))),
        Err(e) => return Ok(Some(cloud_stalled(&e))),
    };
    status.kms = Some(kms_text(&current.settings).into());
    let key = provider.check_key(&obj.spec.key_id).await;
    let check = key_check_of(&key, now);
    if status.key_check.as_ref().map(|k| k.result) != Some(check.result) && check.result != KeyCheckResult::Usable {
        events.push((EventType::Warning, "KeyCheck".into(), check.message.clone()));
    }
    let unusable = check.result == KeyCheckResult::Unusable;
    status.key_check = Some(check.clone());
    if unusable {
        return Ok(Some(Outcome {
            health: Health::Stalled { reason: kms_reason::KEY_NOT_USABLE.into(), message: check.message },
            requeue: Some(Duration::from_secs(300)),
        }));
    }
    if steps::plan(&current.settings, &desired).is_empty() {
        status.phase = Some("Idle".into());
        return Ok(Some(Outcome {
            health: Health::Ready {
                reason: kms_reason::KMS_IN_SYNC.into(),
                message: format!("{}: {}.", provider.describe(), describe(&current.settings)),
            },
            requeue: Some(IDLE_RECHECK),
        }));
    }
    if let Some(err) = operation::failed_for(&status.operations, obj.meta().generation, &desired) {
        return Ok(Some(Outcome {
            health: Health::Stalled {
                reason: kms_reason::OPERATION_FAILED.into(),
                message: format!(
                    "The last operation for this spec failed ({}: {}). Fix the cause and change the spec to try again.",
                    err.code, err.message
                ),
            },
            requeue: None,
        }));
    }
    let op = operation::new(
        operation::uuid_v4(),
        OperationType::UpdateKmsKeyVaultMode,
        obj.meta().generation,
        Some(current.settings.clone()),
        desired.clone(),
        now,
    );
    let note = operation::open(&mut status.operations, &mut status.current_operation, op, &describe(&desired));
    events.push((EventType::Normal, "UpdateRecorded".into(), note));
    Ok(None)
}

/// Reconcile one KmsKeyVaultMode.
pub async fn reconcile(obj: Arc<KmsKeyVaultMode>, kctx: Arc<KmsContext>) -> Result<Action, Error> {
    let ctx = &kctx.ctx;
    let Some(obj) = crate::controller::fresh(&Api::all(ctx.client.clone()), obj).await? else {
        return Ok(Action::await_change());
    };
    let now = ctx.clock.now();
    let old = obj.status.clone().unwrap_or_default();
    if let Some(r) = &old.reencryption {
        ctx.metrics.reencryption(&obj.name_any(), r);
    }
    let mut status = old.clone();
    let mut events = Events::new();
    let mut writer =
        StatusWriter { api: Api::all(ctx.client.clone()), obj: obj.as_ref().clone(), metrics: ctx.metrics.clone() };
    status.phase.get_or_insert_with(|| "Idle".into());

    let outcome = match validate::kms_key_vault_mode(&obj.spec) {
        // An operation already running finishes (its target was valid); nothing new starts.
        Err(v) if status.current_operation.is_none() => Outcome {
            health: Health::Stalled {
                reason: reason::INVALID_SPEC.into(),
                message: format!("{v}. Nothing was applied; fix the spec and apply it again."),
            },
            requeue: None,
        },
        _ => match kctx.providers.provider(&ctx.client, &obj.spec).await {
            Err(e) if e.is_transient() => retry_outcome("Connecting", &e),
            Err(e) => cloud_stalled(&e),
            Ok(provider) => {
                let decided = if status.current_operation.is_none() {
                    decide(&kctx, provider.as_ref(), &obj, &mut status, &mut events).await?
                } else {
                    None
                };
                match decided {
                    Some(o) => o,
                    None => advance(&kctx, provider.as_ref(), &mut writer, &mut status, &mut events).await?,
                }
            }
        },
    };

    let generation = obj.meta().generation;
    status.observed_generation = generation;
    status.conditions = conditions::apply(&old.conditions, &outcome.health, generation, now);
    writer.write(&status).await?;
    Ok(finish(ctx, obj.as_ref(), &old.conditions, &outcome.health, events, outcome.requeue).await)
}

/// Run the KmsKeyVaultMode controller.
pub async fn run(kctx: Arc<KmsContext>) {
    use futures::StreamExt;
    let api: Api<KmsKeyVaultMode> = Api::all(kctx.ctx.client.clone());
    let controller = new_controller(api, &kctx.ctx);
    let metrics = kctx.ctx.metrics.clone();
    controller
        .shutdown_on_signal()
        .run(
            |o, kctx| measured(kctx.ctx.metrics.clone(), o.clone(), reconcile(o, kctx)),
            |o, err, _| {
                warn!(kind = "KmsKeyVaultMode", name = %o.name_any(), error = %err, "reconcile failed; retrying");
                Action::requeue(STEP_RETRY)
            },
            kctx,
        )
        .for_each(forget_deleted(metrics))
        .await;
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn public_desired_settings_carry_no_vault_resource_id() {
        let spec: KmsKeyVaultModeSpec = serde_json::from_value(serde_json::json!({
            "networkAccess": "Public",
            "keyId": "https://orders-kv.vault.azure.net/keys/etcd/0123abcd",
            "keyVaultResourceId": "/subscriptions/00000000-0000-0000-0000-000000000000/resourceGroups/rg/providers/Microsoft.KeyVault/vaults/orders-kv",
            "provider": {"azure": {"subscriptionId": "00000000-0000-0000-0000-000000000000", "resourceGroup": "rg", "clusterName": "aks"}}
        }))
        .unwrap();
        assert_eq!(desired_settings(&spec).key_vault_resource_id, None);
        let private = KmsKeyVaultModeSpec { network_access: NetworkAccess::Private, ..spec };
        assert!(desired_settings(&private).key_vault_resource_id.is_some());
    }

    #[test]
    fn progress_counts_everything_handled() {
        let r =
            ReencryptionStatus { total: 10, rewritten: 4, unchanged: 3, failed: 1, deleted: 1, ..Default::default() };
        assert_eq!(progress_text(&r), "9/10");
        let more = ReencryptionStatus { total: 2, rewritten: 5, ..Default::default() };
        assert_eq!(progress_text(&more), "5/5", "Secrets created meanwhile raise the total");
    }
}
