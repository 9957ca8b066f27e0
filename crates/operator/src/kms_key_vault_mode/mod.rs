//! KmsKeyVaultMode: switch the key vault behind KMS etcd encryption between public and private.
//! Plan the steps from what differs between the cluster and the spec ([`steps`], pure), run them
//! one at a time with every step recorded in `status.steps` before and after it runs, and resume
//! from the status after a restart. The cloud sits behind [`provider::KmsProvider`] (Azure:
//! [`azure`]); Secrets are rewritten by the [`reencrypt`] engine.
//!
//! What this module may touch: the cluster's KMS settings and the key vault's network access
//! through the provider, and every Secret (a no-op PATCH each, re-encrypting it). It reads the
//! operator's own cloud permissions before a switch (changing nothing).
//!
//! One reconcile runs as many steps as it can in a row (the object is not reconciled twice at
//! once, so steps never overlap); a transient cloud or API error leaves the step InProgress and
//! the next reconcile resumes it. A spec changed meanwhile waits for the running operation (its
//! target was fixed when it started) and becomes the next operation.

pub(crate) mod azure;
pub(crate) mod own_cluster;
pub(crate) mod provider;
pub mod reencrypt;
pub(crate) mod steps;

#[cfg(test)]
mod azure_tests;

use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use k8s_openapi::api::core::v1::Secret;
use k8s_openapi::jiff::Timestamp;
use kube::runtime::events::EventType;
use kube::{Api, Client, Resource, ResourceExt};
use tracing::{info, warn};

use self::azure::{AzureKms, AzureSettings, Credentials};
use self::provider::{KeyState, KmsProvider, PermissionCheck, ProviderError};
use self::reencrypt::{self as engine, Progress};
use self::steps::{self as planner, Next};
use crate::api::{
    KeyCheck, KeyCheckResult, KmsKeyVaultMode, KmsKeyVaultModeSpec, KmsKeyVaultModeStatus, KmsSettings, NetworkAccess,
    Operation, OperationRecord, OperationState, OperationType, ReencryptionStatus, Rollback, StepName, StepState,
};
use crate::reconciler::conditions;
use crate::reconciler::events::reason as event;
use crate::reconciler::operation::{self, rfc3339};
use crate::reconciler::{Context, Error, Health, Outcome, Reconcile, Round};
use crate::validate::{self, Violations};

/// Reasons of this kind's conditions.
pub(crate) mod kms_reason {
    /// The key is missing, disabled or expired (Stalled).
    pub(crate) const KEY_NOT_USABLE: &str = "KeyNotUsable";
    /// The operator cannot reach or authenticate to the cloud (Stalled until fixed).
    pub(crate) const CLOUD_ACCESS_FAILED: &str = "CloudAccessFailed";
    /// A step failed; the operation ended UPDATE_FAILED (Stalled until the spec changes).
    pub(crate) const OPERATION_FAILED: &str = "OperationFailed";
    /// The cluster's KMS settings match the spec (Ready).
    pub(crate) const KMS_IN_SYNC: &str = "KmsInSync";
    /// Waiting for an update of the cluster that someone else started.
    pub(crate) const WAITING_FOR_CLUSTER: &str = "WaitingForCluster";
    /// A step failed while KMS is off; it runs again after a backoff (Reconciling).
    pub(crate) const RETRYING_STEP: &str = "RetryingStep";
    /// The target could not be reached; the source settings are being restored (Reconciling),
    /// and the event when the rollback starts.
    pub(crate) const ROLLING_BACK: &str = "RollingBack";
    /// The operation restored the settings it started from and ended UPDATE_FAILED (Stalled).
    pub(crate) const ROLLED_BACK: &str = "RolledBack";
    /// The operator's identity lacks an action the switch needs (read from Azure's
    /// `Microsoft.Authorization/permissions` before the first cloud write): Stalled, nothing
    /// changed; the message names the action and where.
    pub(crate) const MISSING_PERMISSION: &str = "MissingPermission";
    /// The event when the permissions could not be read before a switch (it goes ahead).
    pub(crate) const PERMISSIONS_UNKNOWN: &str = "PermissionsUnknown";
    /// `spec.provider` names another managed cluster than the one the operator runs in, or
    /// nothing tells (Stalled; nothing is changed in the cloud).
    pub(crate) const FOREIGN_CLUSTER: &str = "ForeignCluster";
    /// The event when a switch opens on a managed cluster shown to be this one (what showed it).
    pub(crate) const MANAGED_CLUSTER_CHECKED: &str = "ManagedClusterChecked";
    /// The Warning event when a switch opens without that check (the override annotation).
    pub(crate) const MANAGED_CLUSTER_CHECK_SKIPPED: &str = "ManagedClusterCheckSkipped";
    /// The object is being deleted: nothing new starts (NotReady while it waits to go).
    pub(crate) const DELETING: &str = "Deleting";
    /// `EncryptionDisabled`: True while the cluster runs with KMS off (reason `KmsDisabled`;
    /// a Warning event of that reason when it turns True), False once it is on (`KmsEnabled`).
    pub(crate) const KMS_DISABLED: &str = "KmsDisabled";
    pub(crate) const KMS_ENABLED: &str = "KmsEnabled";
}

/// Condition type: True while the cluster runs with KMS etcd encryption off.
pub(crate) const ENCRYPTION_DISABLED: &str = "EncryptionDisabled";

/// Holds a deleted KmsKeyVaultMode until its running operation has ended: a switch that turned
/// KMS off finishes (or rolls back) before the object goes.
pub(crate) const FINALIZER: &str = "clustersecurity.io/kms-switch";

/// How often the progress of a Secret rewrite is written to status: what a killed operator
/// redoes is at most this much work (100,000 Secrets, a SIGKILL at half: +0.7 % time with 1 s).
const PROGRESS_WRITE_INTERVAL: Duration = Duration::from_secs(1);
/// When to look again at a KMS setup that is in sync (drift, key expiry).
const IDLE_RECHECK: Duration = Duration::from_secs(30 * 60);
/// When to look again at an object stalled by another that manages the same cluster.
const IDLE_CONFLICT: Duration = Duration::from_secs(60);
/// When to retry after a transient failure of a step.
const STEP_RETRY: Duration = Duration::from_secs(10);
/// When to look again while KMS is off and nothing runs (a step waits for its retry, the cloud
/// is unreachable): soon enough to meet `spec.rollbackAfterSeconds`.
const KMS_OFF_RECHECK: Duration = Duration::from_secs(30);

/// Makes the cloud provider for a KmsKeyVaultMode.
#[async_trait]
pub(crate) trait ProviderFactory: Send + Sync {
    async fn provider(
        &self,
        client: &Client,
        spec: &KmsKeyVaultModeSpec,
    ) -> Result<Arc<dyn KmsProvider>, ProviderError>;

    /// The Key Vault domain keyIds must be in (the cloud the providers talk to).
    fn vault_dns_suffix(&self) -> &str {
        validate::DEFAULT_VAULT_DNS_SUFFIX
    }
}

/// Azure, with the operator's Azure settings and credentials.
pub struct AzureFactory {
    pub settings: AzureSettings,
    /// `namespace/name` of a Secret with `AZURE_TENANT_ID`, `AZURE_CLIENT_ID` and
    /// `AZURE_CLIENT_SECRET`; None: workload identity.
    pub credentials_secret: Option<(String, String)>,
    /// `--azure-key-vault-dns-suffix`.
    pub vault_dns_suffix: String,
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
    fn vault_dns_suffix(&self) -> &str {
        &self.vault_dns_suffix
    }

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

/// The settings the spec asks for (Public carries no vault resource id, as AKS wants).
pub(crate) fn desired_settings(spec: &KmsKeyVaultModeSpec) -> KmsSettings {
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

/// Write the status as decided so far, and the re-encryption progress metric with it
/// (progress is written from inside a long round).
async fn checkpoint(round: &mut Round<KmsKeyVaultMode>, ctx: &Context) -> Result<(), Error> {
    round.checkpoint().await?;
    if let Some(r) = &round.status.reencryption {
        ctx.metrics.reencryption(&round.obj.name_any(), r);
    }
    Ok(())
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

/// The resource id of the vault that holds `key_id`, among those the spec and the operation
/// know: with it the key is read through the management plane.
fn vault_resource_id<'a>(key_id: &str, known: impl IntoIterator<Item = Option<&'a str>>) -> Option<&'a str> {
    let vault = validate::parse_key_id(key_id).ok()?.vault;
    known
        .into_iter()
        .flatten()
        .find(|rid| validate::parse_key_vault_resource_id(rid).is_ok_and(|v| v.eq_ignore_ascii_case(vault)))
}

/// Check `key_id`, through Resource Manager when one of the `known` vault resource ids is its
/// vault's.
async fn check_key<'a>(
    provider: &dyn KmsProvider,
    key_id: &str,
    known: impl IntoIterator<Item = Option<&'a str>>,
    now: Timestamp,
) -> KeyCheck {
    key_check_of(&provider.check_key(key_id, vault_resource_id(key_id, known)).await, now)
}

/// Check the key the cluster used before the last key or vault change (Secrets written before it
/// may still need it); a Warning event when it turns unusable. Nothing is blocked by it.
async fn check_previous_key(obj: &KmsKeyVaultMode, round: &mut Round<KmsKeyVaultMode>, provider: &dyn KmsProvider) {
    let Some(previous) = round.status.previous_key_id.clone() else { return };
    let last_source = round.status.operations.first().and_then(|o| o.source_info.as_ref());
    let known =
        [last_source.and_then(|s| s.key_vault_resource_id.as_deref()), obj.spec.key_vault_resource_id.as_deref()];
    let check = check_key(provider, &previous, known, round.now).await;
    let was = round.status.previous_key_check.as_ref().map(|k| k.result);
    if check.result == KeyCheckResult::Unusable && was != Some(KeyCheckResult::Unusable) {
        let note = format!("The previous key {previous} (in use before the last key change): {}", check.message);
        round.event(EventType::Warning, "PreviousKeyCheck", note);
    }
    round.status.previous_key_check = Some(check);
}

fn cloud_stalled(e: &ProviderError) -> Outcome {
    Outcome::new(
        Health::Stalled {
            reason: kms_reason::CLOUD_ACCESS_FAILED,
            message: format!("{e}. Fix the operator's cloud access; it retries every minute."),
        },
        Some(Duration::from_secs(60)),
    )
}

/// Run one step to its end: Ok with what it did, or why not — the step's own failure
/// ([`StepError::Failed`]) or a problem it waits out (the step stays InProgress and is resumed).
async fn run_step(
    round: &mut Round<KmsKeyVaultMode>,
    ctx: &Context,
    provider: &dyn KmsProvider,
    index: usize,
) -> Result<String, StepError> {
    let op = round.status.current_operation.clone().expect("steps run within an operation");
    let (target, source) = aims(&op, round.status.rollback.as_ref(), index);
    let name = round.status.steps[index].name;
    let cloud = |r: Result<(), ProviderError>, done: String| match r {
        Ok(()) => Ok(done),
        Err(ProviderError::Rejected { code, message }) => Err(StepError::Failed(format!("{code}: {message}"))),
        // A 403 with a code: this request is refused (a policy, a missing role), whoever retries
        // it — a failed attempt, never a wait for credentials.
        Err(e @ ProviderError::Refused { .. }) => Err(StepError::Failed(format!("{}{e}", planner::REFUSED))),
        Err(e) => Err(StepError::Cloud(e)),
    };
    match name {
        StepName::DisableKms => {
            let off = KmsSettings { enabled: false, key_id: None, network_access: None, key_vault_resource_id: None };
            let r = provider.set_kms(&off).await;
            if r.is_ok() {
                round.status.kms = Some("Disabled".into());
            }
            cloud(r, format!("KMS turned off on {}.", provider.describe()))
        }
        StepName::EnableKms | StepName::UpdateKms => {
            if let Some(key_id) = &target.key_id {
                key_still_usable(round, ctx, provider, key_id, &target, source.as_ref()).await?;
            }
            let r = provider.set_kms(&target).await;
            if r.is_ok() {
                round.status.kms = Some("Enabled".into());
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
                return Err(StepError::Failed(
                    "the key vault's resource id is unknown: set spec.keyVaultResourceId".into(),
                ));
            };
            let r = provider.set_vault_network_access(&rid, mode).await;
            let vault = validate::parse_key_vault_resource_id(&rid).unwrap_or(&rid).to_string();
            let access = if mode == NetworkAccess::Private { "Disabled" } else { "Enabled" };
            cloud(r, format!("Key vault {vault}: public network access {access}."))
        }
        StepName::ReencryptSecrets => reencrypt_step(round, ctx).await,
    }
}

/// The key `key_id` of `target`, checked again right before it is used: it may have been
/// disabled or deleted while KMS was off. A key that cannot be read (a private vault) does not
/// stop the step; one that cannot be used fails it.
async fn key_still_usable(
    round: &mut Round<KmsKeyVaultMode>,
    ctx: &Context,
    provider: &dyn KmsProvider,
    key_id: &str,
    target: &KmsSettings,
    source: Option<&KmsSettings>,
) -> Result<(), StepError> {
    let known = [
        target.key_vault_resource_id.as_deref(),
        source.and_then(|s| s.key_vault_resource_id.as_deref()),
        round.obj.spec.key_vault_resource_id.as_deref(),
    ];
    let check = check_key(provider, key_id, known, ctx.clock.now()).await;
    let unusable = check.result == KeyCheckResult::Unusable;
    let message = check.message.clone();
    round.status.key_check = Some(check);
    if unusable {
        return Err(StepError::Failed(format!("the key cannot be used: {message}")));
    }
    Ok(())
}

/// What step `index` moves the cluster to, and from: the operation's target, or — for the steps
/// of a rollback — back to the settings it started from.
fn aims(op: &Operation<KmsSettings>, rollback: Option<&Rollback>, index: usize) -> (KmsSettings, Option<KmsSettings>) {
    let target = op.target_info.clone().expect("operations carry a target");
    match (rollback, op.source_info.clone()) {
        (Some(r), Some(source)) if index >= r.first_step as usize => (source, Some(target)),
        _ => (target, op.source_info.clone()),
    }
}

#[derive(Debug, thiserror::Error)]
enum StepError {
    /// The step failed for good: the operation ends UPDATE_FAILED.
    #[error("{0}")]
    Failed(String),
    #[error("{0}")]
    Cloud(ProviderError),
    #[error("re-encryption stopped: {0}")]
    Reencrypt(engine::ReencryptError),
}

fn record_progress(status: &mut KmsKeyVaultModeStatus, p: &Progress) {
    let r = status.reencryption.get_or_insert_with(Default::default);
    r.rewritten = p.rewritten;
    r.unchanged = p.unchanged;
    r.failed = p.failed;
    r.deleted = p.gone;
    r.resume_after = p.resume_after.clone();
    r.resume_continue = p.resume_continue.clone();
    status.progress = Some(progress_text(r));
}

async fn reencrypt_step(round: &mut Round<KmsKeyVaultMode>, ctx: &Context) -> Result<String, StepError> {
    let client = ctx.client.clone();
    let start = resume_point(round.status.reencryption.clone().unwrap_or_default());
    let spec = round.obj.spec.reencryption.clone();
    // The spec's concurrency is a cap: the engine finds how many the API server takes.
    let settings = engine::Settings {
        concurrency: spec.concurrency.clamp(1, 64) as usize,
        page_size: spec.page_size.clamp(1, 5000),
        attempts: 5,
        adaptive: true,
    };
    // The engine reports its progress on a channel; the reporter writes the newest to status
    // every PROGRESS_WRITE_INTERVAL and stops the moment the engine ends (a sleep the end had to
    // wait out would add up to the whole interval to every step).
    let (tx, mut rx) = tokio::sync::watch::channel(start.clone());
    let ended = tokio::sync::Notify::new();
    let rewrite = async {
        let result = engine::run(&client, settings, start, |p| drop(tx.send(p.clone()))).await;
        ended.notify_one();
        result
    };
    let reporter = async {
        loop {
            tokio::select! {
                _ = tokio::time::sleep(PROGRESS_WRITE_INTERVAL) => {}
                _ = ended.notified() => break,
            }
            if rx.has_changed().unwrap_or(false) {
                let p = rx.borrow_and_update().clone();
                record_progress(&mut round.status, &p);
                if let Err(e) = checkpoint(round, ctx).await {
                    // Progress is also kept in memory; the next write reports it.
                    warn!(error = %e, "could not write re-encryption progress");
                }
            }
        }
        rx.borrow().clone()
    };
    let (result, last) = tokio::join!(rewrite, reporter);
    record_progress(&mut round.status, &last);
    let p = result.map_err(StepError::Reencrypt)?;
    let r = round.status.reencryption.get_or_insert_with(Default::default);
    r.end_time = Some(rfc3339(ctx.clock.now()));
    round.status.progress = Some(progress_text(r));
    rewrite_summary(&p)
}

/// Where the Secret rewrite starts: from the beginning, or where the recorded progress `r`
/// stopped.
fn resume_point(r: ReencryptionStatus) -> Progress {
    if r.resume_after.is_some() {
        info!(
            resume_after = ?r.resume_after,
            from_its_page = r.resume_continue.is_some(),
            "resuming the Secret rewrite where it stopped"
        );
    }
    Progress {
        total: r.rewritten + r.unchanged + r.failed + r.deleted,
        rewritten: r.rewritten,
        unchanged: r.unchanged,
        gone: r.deleted,
        failed: r.failed,
        resume_after: r.resume_after,
        resume_continue: r.resume_continue,
        listed_again: 0,
    }
}

/// What the rewrite did; a failure when a Secret could not be rewritten.
fn rewrite_summary(p: &Progress) -> Result<String, StepError> {
    let summary = format!(
        "{} Secrets: {} rewritten, {} already current, {} deleted meanwhile, {} failed.",
        p.rewritten + p.unchanged + p.gone + p.failed,
        p.rewritten,
        p.unchanged,
        p.gone,
        p.failed
    );
    if p.failed > 0 {
        Err(StepError::Failed(format!(
            "{summary} Secrets that could not be rewritten stay under the old configuration; see the operator log."
        )))
    } else {
        Ok(summary)
    }
}

impl Reconcile for KmsKeyVaultMode {
    type Deps = Arc<dyn ProviderFactory>;

    fn api(client: Client, _: &Self) -> Api<Self> {
        Api::all(client)
    }

    fn validate(&self, _: &KmsKeyVaultModeStatus, providers: &Self::Deps) -> Result<(), Violations> {
        validate::kms_key_vault_mode(&self.spec, providers.vault_dns_suffix())
    }

    /// A recorded operation finishes even when the spec turned invalid: its target was fixed,
    /// and valid, when it was recorded.
    fn in_flight(status: &KmsKeyVaultModeStatus) -> bool {
        status.current_operation.is_some()
    }

    const FINALIZER: Option<&'static str> = Some(FINALIZER);

    /// Not while KMS is off mid-switch: the switch carries on until KMS is back on.
    fn may_pause(status: &KmsKeyVaultModeStatus) -> bool {
        planner::kms_off_since(&status.steps).is_none() || status.current_operation.is_none()
    }

    /// A deleted object goes once no operation runs: one that changed the cloud finishes or
    /// rolls back first.
    fn may_go(&self, status: &KmsKeyVaultModeStatus, _: &Outcome) -> bool {
        status.current_operation.is_none()
    }

    async fn advance(
        &self,
        round: &mut Round<Self>,
        ctx: &Context,
        providers: &Arc<dyn ProviderFactory>,
    ) -> Result<Outcome, Error> {
        if let Some(r) = &round.status.reencryption {
            ctx.metrics.reencryption(&self.name_any(), r);
        }
        let outcome = carry_on(self, round, ctx, providers).await;
        report_encryption(round, ctx);
        outcome
    }
}

/// Take the object's operation as far as it goes now (what [`Reconcile::advance`] reports on).
async fn carry_on(
    obj: &KmsKeyVaultMode,
    round: &mut Round<KmsKeyVaultMode>,
    ctx: &Context,
    providers: &Arc<dyn ProviderFactory>,
) -> Result<Outcome, Error> {
    round.status.phase.get_or_insert_with(|| "Idle".into());
    if obj.meta().deletion_timestamp.is_some() {
        if let Some(deleted) = being_deleted(round) {
            return Ok(deleted);
        }
    }
    // A running operation acts on the cluster it was recorded for, whatever the spec says now.
    let recorded = round.status.current_operation.as_ref().and(round.status.operation_provider.clone());
    let spec = match recorded {
        Some(provider) => KmsKeyVaultModeSpec { provider, ..obj.spec.clone() },
        None => obj.spec.clone(),
    };
    let provider = match providers.provider(&ctx.client, &spec).await {
        Err(e) if e.is_transient() => return Ok(retry_outcome("Connecting", &e)),
        Err(e) => return Ok(cloud_stalled(&e)),
        Ok(provider) => provider,
    };
    if round.status.current_operation.is_none() {
        if let Some(conflict) = older_claim(obj, ctx).await? {
            return Ok(conflict);
        }
        if let Some(settled) = decide(obj, round, ctx, provider.as_ref()).await? {
            return Ok(settled);
        }
    }
    run_steps(round, ctx, provider.as_ref()).await
}

/// One KmsKeyVaultMode per managed cluster, also without the webhook: an object that names a
/// cluster an older object (by creation, then name) manages starts nothing (Stalled
/// `Conflict`). An operation already running finishes: its target was recorded when it started.
async fn older_claim(obj: &KmsKeyVaultMode, ctx: &Context) -> Result<Option<Outcome>, Error> {
    let older = crate::reconciler::older_peers(ctx, obj).await?;
    let others = older.iter().map(|o| (o.metadata.name.as_deref().unwrap_or_default(), &o.spec));
    Ok(validate::one_per_cluster(&obj.spec, others).err().map(|v| {
        let message = format!("{v}. Nothing was changed.");
        // Looked at again now and then: the other object may go.
        Outcome::new(Health::Stalled { reason: conditions::reason::CONFLICT, message }, Some(IDLE_CONFLICT))
    }))
}

/// A deleted object starts nothing new: a PENDING operation (nothing changed in the cloud yet)
/// is dropped, and with nothing running the object may go (Some). None: an operation that has
/// changed the cloud runs to its end first.
fn being_deleted(round: &mut Round<KmsKeyVaultMode>) -> Option<Outcome> {
    let now = round.now;
    if let Some(mut op) = round.status.current_operation.clone() {
        if op.operation_state != OperationState::Pending {
            return None;
        }
        let why = "cancelled before it started: the KmsKeyVaultMode was deleted".to_string();
        operation::fail(&mut op, kms_reason::DELETING, why, now);
        let (current_op, history) = round.status.record_mut();
        operation::settle(history, current_op, op);
    }
    let message = "Deleted: no operation runs, so the cluster's KMS settings and the key vault stay as they are.";
    Some(Outcome::new(Health::NotReady { reason: kms_reason::DELETING, message: message.into() }, None))
}

/// The `EncryptionDisabled` condition, its Warning event and metric, from what the cluster
/// reported last. The condition appears the first time KMS is seen off and stays (False) after.
fn report_encryption(round: &mut Round<KmsKeyVaultMode>, ctx: &Context) {
    let Some(kms) = round.status.kms.as_deref() else { return };
    let off = kms == "Disabled";
    ctx.metrics.kms_disabled(&round.obj.name_any(), off);
    let was = conditions::get(round.status.conditions(), ENCRYPTION_DISABLED).map(|c| c.status == "True");
    if !off && was.is_none() {
        return;
    }
    let (reason, message) = if off {
        let since = planner::kms_off_since(&round.status.steps).map(|t| format!(" since {t}")).unwrap_or_default();
        let plan = match &round.status.current_operation {
            Some(op) => format!(
                "; operation {} turns it back on, restoring the settings it started from if the switch cannot \
                 finish within spec.rollbackAfterSeconds",
                op.operation_id
            ),
            None => String::new(),
        };
        (
            kms_reason::KMS_DISABLED,
            format!("KMS etcd encryption is off on the cluster{since}: Secrets written meanwhile are not KMS-encrypted{plan}."),
        )
    } else {
        (kms_reason::KMS_ENABLED, "KMS etcd encryption is on.".to_string())
    };
    if off && was != Some(true) {
        round.event(EventType::Warning, reason, message.clone());
    }
    round.set_condition(ENCRYPTION_DISABLED, off, reason, &message);
}

/// Drive the current operation as far as it goes now: start it (plan its steps), then run one
/// step after another until it ends or a step must wait.
async fn run_steps(
    round: &mut Round<KmsKeyVaultMode>,
    ctx: &Context,
    provider: &dyn KmsProvider,
) -> Result<Outcome, Error> {
    let clock = ctx.clock.clone();
    loop {
        let mut op = round.status.current_operation.clone().expect("an operation is current");
        if op.operation_state == OperationState::Pending {
            if let Some(waits) = start(round, ctx, provider, op).await? {
                return Ok(waits);
            }
            continue;
        }
        let rollback_after = Duration::from_secs(round.obj.spec.rollback_after_seconds.into());
        match planner::next(&round.status.steps, round.status.rollback.as_ref(), clock.now(), rollback_after) {
            Next::Run(i) => {
                if let Some(wait) = run_one(round, ctx, provider, i).await? {
                    return Ok(wait);
                }
            }
            Next::Retry { step, wait } if wait.is_zero() => {
                // Pending again: run_one starts it afresh and counts the attempt.
                let s = &mut round.status.steps[step];
                s.state = StepState::Pending;
                s.end_time = None;
            }
            Next::Retry { step, wait } => {
                let s = &round.status.steps[step];
                let message = format!(
                    "Step {:?} failed (attempt {}): {}. It runs again in {} s.",
                    s.name,
                    s.attempts,
                    s.message.as_deref().unwrap_or_default(),
                    wait.as_secs().max(1)
                );
                let health = Health::Reconciling { reason: kms_reason::RETRYING_STEP, message };
                return Ok(Outcome::new(health, Some(wait.min(KMS_OFF_RECHECK))));
            }
            Next::RollBack(reason) => {
                let source = op.source_info.clone().unwrap_or_else(|| desired_settings(&round.obj.spec));
                let now = rfc3339(clock.now());
                round.status.rollback = Some(planner::begin_rollback(&mut round.status.steps, reason.clone(), &now));
                let note = format!(
                    "Operation {}: {reason}. Rolling back to the settings it started from: {}.",
                    op.operation_id,
                    describe(&source)
                );
                round.event(EventType::Warning, kms_reason::ROLLING_BACK, note);
                checkpoint(round, ctx).await?;
            }
            Next::Done => return Ok(conclude(round, op, clock.now())),
            Next::Failed(message) => return Ok(failed(round, &mut op, &message, clock.now())),
        }
    }
}

/// Start PENDING operation `op`: read the cluster's KMS settings, plan the steps from them to
/// the target, and record that (a checkpoint). Some: the outcome to report instead (the cloud
/// cannot be read, or the cluster is busy with another update).
async fn start(
    round: &mut Round<KmsKeyVaultMode>,
    ctx: &Context,
    provider: &dyn KmsProvider,
    mut op: Operation<KmsSettings>,
) -> Result<Option<Outcome>, Error> {
    let current = match provider.get_kms().await {
        Ok(c) => c,
        Err(e) if e.is_transient() => return Ok(Some(retry_outcome("Starting", &e))),
        Err(e) => return Ok(Some(cloud_stalled(&e))),
    };
    round.status.kms = Some(kms_text(&current.settings).into());
    if current.busy() {
        let message = format!(
            "{} is {}; operation {} starts when that update ends.",
            provider.describe(),
            current.provisioning_state,
            op.operation_id
        );
        let health = Health::Reconciling { reason: kms_reason::WAITING_FOR_CLUSTER, message };
        return Ok(Some(Outcome::new(health, Some(Duration::from_secs(30)))));
    }
    let target = op.target_info.clone().unwrap_or_else(|| desired_settings(&round.obj.spec));
    let plan = planner::plan(&current.settings, &target);
    op.source_info = Some(current.settings.clone());
    operation::start(&mut op, ctx.clock.now());
    round.status.steps = planner::pending(&plan);
    round.status.reencryption = None;
    round.status.rollback = None;
    let names: Vec<String> = plan.iter().map(|s| format!("{s:?}")).collect();
    let note = format!(
        "Operation {}: {} → {}: {}.",
        op.operation_id,
        describe(&current.settings),
        describe(&target),
        if names.is_empty() { "nothing to do".into() } else { names.join(" → ") }
    );
    round.event(EventType::Normal, event::UPDATE_STARTED, note);
    let (current_op, history) = round.status.record_mut();
    operation::settle(history, current_op, op);
    checkpoint(round, ctx).await?;
    Ok(None)
}

/// A step failed for good, with nothing to roll back: the operation ends UPDATE_FAILED.
fn failed(
    round: &mut Round<KmsKeyVaultMode>,
    op: &mut Operation<KmsSettings>,
    message: &str,
    now: Timestamp,
) -> Outcome {
    operation::fail(op, kms_reason::OPERATION_FAILED, message.to_string(), now);
    round.status.phase = Some("Idle".into());
    let message = format!(
        "Operation {} failed: {message}. Fix the cause, then change the spec or set a new value of the \
         clustersecurity.io/retry annotation to try again.",
        op.operation_id
    );
    round.event(EventType::Warning, event::UPDATE_FAILED, message.clone());
    let (current_op, history) = round.status.record_mut();
    operation::settle(history, current_op, op.clone());
    Outcome::new(Health::Stalled { reason: kms_reason::OPERATION_FAILED, message }, None)
}

/// Every step of `op` is done: the target is in effect (UPDATE_COMPLETE), or the rollback put
/// the source settings back (UPDATE_FAILED, saying so).
fn conclude(round: &mut Round<KmsKeyVaultMode>, mut op: Operation<KmsSettings>, now: Timestamp) -> Outcome {
    round.status.phase = Some("Idle".into());
    let outcome = match round.status.rollback.clone() {
        None => {
            operation::complete(&mut op, now);
            let target = op.target_info.clone().unwrap_or_else(|| desired_settings(&round.obj.spec));
            // Moved to another key: the one before is remembered and checked from now on.
            if let Some(before) = op.source_info.as_ref().filter(|s| s.enabled).and_then(|s| s.key_id.clone()) {
                if Some(&before) != target.key_id.as_ref() {
                    round.status.previous_key_id = Some(before);
                    round.status.previous_key_check = None;
                }
            }
            round.status.kms = Some(kms_text(&target).into());
            let message = format!("Operation {} complete: {}.", op.operation_id, describe(&target));
            round.event(EventType::Normal, event::UPDATE_COMPLETE, message.clone());
            Outcome::new(Health::Ready { reason: kms_reason::KMS_IN_SYNC, message }, Some(IDLE_RECHECK))
        }
        Some(rollback) => {
            let source = op.source_info.clone().unwrap_or_else(|| desired_settings(&round.obj.spec));
            round.status.kms = Some(kms_text(&source).into());
            let error =
                format!("rolled back to the settings it started from ({}): {}", describe(&source), rollback.reason);
            operation::fail(&mut op, kms_reason::ROLLED_BACK, error.clone(), now);
            let message = format!(
                "Operation {} {error}. Encryption is as before the switch. Fix the cause, then change the spec or \
                 set a new value of the clustersecurity.io/retry annotation to try again.",
                op.operation_id
            );
            round.event(EventType::Warning, event::UPDATE_FAILED, message.clone());
            Outcome::new(Health::Stalled { reason: kms_reason::ROLLED_BACK, message }, None)
        }
    };
    let (current_op, history) = round.status.record_mut();
    operation::settle(history, current_op, op);
    outcome
}

/// Run step `i` to its end, recorded before and after. Some(outcome) when it must wait (a
/// transient failure leaves it InProgress, resumed by the next round).
async fn run_one(
    round: &mut Round<KmsKeyVaultMode>,
    ctx: &Context,
    provider: &dyn KmsProvider,
    i: usize,
) -> Result<Option<Outcome>, Error> {
    let total = round.status.steps.len();
    let name = round.status.steps[i].name;
    round.status.phase = Some(format!("{name:?}"));
    if round.status.steps[i].state == StepState::Pending {
        begin_step(round, ctx, i).await?;
    }
    // While KMS is off (and not yet on the way back) nothing waits for good: a credentials or
    // configuration problem counts as a failed attempt, toward the rollback.
    let kms_off = round.status.rollback.is_none() && planner::kms_off_since(&round.status.steps[..i]).is_some();
    let ended = match run_step(round, ctx, provider, i).await {
        Ok(m) => Ok((StepState::Succeeded, EventType::Normal, "Succeeded", m)),
        Err(StepError::Failed(m)) => Ok((StepState::Failed, EventType::Warning, "Failed", m)),
        Err(StepError::Cloud(e)) if kms_off && !e.is_transient() => Ok((
            StepState::Failed,
            EventType::Warning,
            "Failed",
            format!("{e} (KMS is off: counted as a failed attempt)"),
        )),
        Err(e) => Err(e),
    };
    match ended {
        Ok((state, type_, outcome, message)) => {
            let step = &mut round.status.steps[i];
            step.end_time = Some(rfc3339(ctx.clock.now()));
            step.state = state;
            step.message = Some(message.clone());
            let lead = if state == StepState::Failed { " failed" } else { "" };
            let (reason, note) = (format!("{name:?}{outcome}"), format!("Step {}/{total}{lead}: {message}", i + 1));
            round.event(type_, reason, note);
            checkpoint(round, ctx).await?;
            Ok(None)
        }
        Err(StepError::Cloud(e)) if !e.is_transient() => {
            round.status.steps[i].message = Some(format!("waiting: {e}"));
            checkpoint(round, ctx).await?;
            Ok(Some(cloud_stalled(&e)))
        }
        Err(e) => {
            warn!(step = ?name, error = %e, "step interrupted; it resumes on the next reconcile");
            round.status.steps[i].message = Some(format!("retrying: {e}"));
            // The API server may be restarting; a failed write is retried with the step.
            let _ = checkpoint(round, ctx).await;
            Ok(Some(retry_outcome(step_name(name), &e)))
        }
    }
}

/// Step `i` starts (PENDING → IN_PROGRESS, one more attempt), recorded before it runs; the
/// re-encryption step counts the Secrets first, for its progress.
async fn begin_step(round: &mut Round<KmsKeyVaultMode>, ctx: &Context, i: usize) -> Result<(), Error> {
    let (total, name) = (round.status.steps.len(), round.status.steps[i].name);
    let now = rfc3339(ctx.clock.now());
    let step = &mut round.status.steps[i];
    step.state = StepState::InProgress;
    step.start_time = Some(now.clone());
    step.message = None;
    step.attempts += 1;
    if name == StepName::ReencryptSecrets {
        let page_size = round.obj.spec.reencryption.page_size.clamp(1, 5000);
        let estimate = engine::count(&ctx.client, page_size).await.unwrap_or_else(|e| {
            warn!(error = %e, "could not count the Secrets; progress shows no total");
            0
        });
        round.status.reencryption =
            Some(ReencryptionStatus { total: estimate, start_time: Some(now), ..Default::default() });
        round.status.progress = round.status.reencryption.as_ref().map(progress_text);
    }
    round.event(EventType::Normal, format!("{name:?}Started"), format!("Step {}/{total} {name:?} started.", i + 1));
    checkpoint(round, ctx).await
}

/// A step's name as a condition reason (its name in the status).
fn step_name(name: StepName) -> &'static str {
    match name {
        StepName::DisableKms => "DisableKms",
        StepName::ReencryptSecrets => "ReencryptSecrets",
        StepName::UpdateKeyVaultNetworkAccess => "UpdateKeyVaultNetworkAccess",
        StepName::EnableKms => "EnableKms",
        StepName::UpdateKms => "UpdateKms",
    }
}

fn retry_outcome(step: &'static str, e: &dyn std::fmt::Display) -> Outcome {
    let health = Health::Reconciling { reason: step, message: format!("{step}: {e}; retrying.") };
    Outcome::new(health, Some(STEP_RETRY))
}

/// Nothing running: compare the cluster with the spec and record an operation when they differ
/// (None); otherwise what to report.
async fn decide(
    obj: &KmsKeyVaultMode,
    round: &mut Round<KmsKeyVaultMode>,
    ctx: &Context,
    provider: &dyn KmsProvider,
) -> Result<Option<Outcome>, Error> {
    let now = round.now;
    let desired = desired_settings(&obj.spec);
    let current = match provider.get_kms().await {
        Ok(c) => c,
        Err(e) if e.is_transient() => return Ok(Some(retry_outcome("ReadingCluster", &e))),
        Err(e) => return Ok(Some(cloud_stalled(&e))),
    };
    round.status.kms = Some(kms_text(&current.settings).into());
    if let Some(stalled) = key_not_usable(obj, round, provider, &current.settings).await {
        return Ok(Some(stalled));
    }
    if planner::plan(&current.settings, &desired).is_empty() {
        round.status.phase = Some("Idle".into());
        let message = format!("{}: {}.", provider.describe(), describe(&current.settings));
        return Ok(Some(Outcome::new(Health::Ready { reason: kms_reason::KMS_IN_SYNC, message }, Some(IDLE_RECHECK))));
    }
    let retry = operation::retry_request(obj.meta()).map(String::from);
    if let Some(stalled) = failed_before(round, &desired, retry.as_deref()) {
        return Ok(Some(stalled));
    }
    // Only where an operation would open, before anything is recorded and so before any cloud
    // write: the managed cluster is this one.
    let (checked_type, checked_reason, checked_note) = match own_cluster(obj, ctx, provider, &current).await? {
        OwnCluster::Opens(type_, reason, note) => (type_, reason, note),
        OwnCluster::Refused(foreign) => return Ok(Some(foreign)),
    };
    // Before the first cloud write: a switch the operator is not allowed to finish does not start.
    if let Some(stalled) = missing_permissions(obj, round, provider, &current.settings, &desired).await {
        return Ok(Some(stalled));
    }
    let mut op = operation::new(
        operation::uuid_v4(),
        OperationType::UpdateKmsKeyVaultMode,
        round.generation(),
        Some(current.settings.clone()),
        desired.clone(),
        now,
    );
    op.retry_request = retry;
    round.status.operation_provider = Some(obj.spec.provider.clone());
    let (current_op, history) = round.status.record_mut();
    let note = operation::open(history, current_op, op, &describe(&desired));
    round.event(checked_type, checked_reason, checked_note);
    round.event(EventType::Normal, event::OPERATION_PENDING, note);
    Ok(None)
}

/// Check the spec's key (and the previous one) and record it; Some(Stalled `KeyNotUsable`) when
/// it cannot be used. A newly failing check is announced.
async fn key_not_usable(
    obj: &KmsKeyVaultMode,
    round: &mut Round<KmsKeyVaultMode>,
    provider: &dyn KmsProvider,
    current: &KmsSettings,
) -> Option<Outcome> {
    let known = [obj.spec.key_vault_resource_id.as_deref(), current.key_vault_resource_id.as_deref()];
    let check = check_key(provider, &obj.spec.key_id, known, round.now).await;
    check_previous_key(obj, round, provider).await;
    if round.status.key_check.as_ref().map(|k| k.result) != Some(check.result) && check.result != KeyCheckResult::Usable
    {
        round.event(EventType::Warning, "KeyCheck", check.message.clone());
    }
    let unusable = check.result == KeyCheckResult::Unusable;
    round.status.key_check = Some(check.clone());
    unusable.then(|| {
        let health = Health::Stalled { reason: kms_reason::KEY_NOT_USABLE, message: check.message };
        Outcome::new(health, Some(Duration::from_secs(300)))
    })
}

/// The last operation for this spec (and retry value) failed: Stalled until either changes.
fn failed_before(round: &Round<KmsKeyVaultMode>, desired: &KmsSettings, retry: Option<&str>) -> Option<Outcome> {
    let err = operation::failed_for(&round.status.operations, round.generation(), desired, retry)?;
    let message = format!(
        "The last operation for this spec failed ({}: {}). Fix the cause, then change the spec or set a new \
         value of the clustersecurity.io/retry annotation to try again.",
        err.code, err.message
    );
    // A rolled-back operation keeps saying so: the cluster runs the settings it started from.
    let reason =
        if err.code == kms_reason::ROLLED_BACK { kms_reason::ROLLED_BACK } else { kms_reason::OPERATION_FAILED };
    Some(Outcome::new(Health::Stalled { reason, message }, None))
}

/// Whether `spec.provider` names the cluster the operator runs in (see [`own_cluster`]).
enum OwnCluster {
    /// The switch may open, with the event to publish when the operation opens (what showed
    /// it, or that the override skipped it).
    Opens(EventType, &'static str, String),
    /// Not, or nothing tells: Stalled `ForeignCluster`, looked at again every minute.
    Refused(Outcome),
}

/// Whether `spec.provider` names the cluster the operator runs in (see [`own_cluster`]).
async fn own_cluster(
    obj: &KmsKeyVaultMode,
    ctx: &Context,
    provider: &dyn KmsProvider,
    current: &provider::ClusterKms,
) -> Result<OwnCluster, Error> {
    let annotation = obj.annotations().get(own_cluster::CHECK_ANNOTATION).map(String::as_str);
    let local = match annotation {
        Some(own_cluster::CHECK_SKIP) => own_cluster::Local::default(),
        _ => own_cluster::local(&ctx.client).await?,
    };
    let cluster = provider.describe();
    Ok(match own_cluster::judge(&current.identity, &local, annotation, &cluster) {
        own_cluster::Verdict::Refused(message) => {
            let health = Health::Stalled { reason: kms_reason::FOREIGN_CLUSTER, message };
            OwnCluster::Refused(Outcome::new(health, Some(IDLE_CONFLICT)))
        }
        own_cluster::Verdict::Same(why) => {
            let note = format!("{cluster} is the cluster the operator runs in: {why}.");
            OwnCluster::Opens(EventType::Normal, kms_reason::MANAGED_CLUSTER_CHECKED, note)
        }
        own_cluster::Verdict::Skipped => {
            let note = format!(
                "Not checked that {cluster} is the cluster the operator runs in: the KmsKeyVaultMode carries {}={}.",
                own_cluster::CHECK_ANNOTATION,
                own_cluster::CHECK_SKIP
            );
            warn!(%note, "managed cluster check skipped");
            OwnCluster::Opens(EventType::Warning, kms_reason::MANAGED_CLUSTER_CHECK_SKIPPED, note)
        }
    })
}

/// The actions the steps from `current` to `target` need, per resource (None: the managed
/// cluster): the cluster's read and write for a KMS update, the vault's write for a change of its
/// network access.
fn needed_actions(plan: &[StepName], vault: Option<String>) -> Vec<(Option<String>, Vec<&'static str>)> {
    use provider::{CLUSTER_READ, CLUSTER_WRITE, VAULT_WRITE};
    let mut wanted = Vec::new();
    if plan.iter().any(|s| matches!(s, StepName::DisableKms | StepName::EnableKms | StepName::UpdateKms)) {
        wanted.push((None, vec![CLUSTER_READ, CLUSTER_WRITE]));
    }
    if plan.contains(&StepName::UpdateKeyVaultNetworkAccess) {
        if let Some(rid) = vault {
            wanted.push((Some(rid), vec![VAULT_WRITE]));
        }
    }
    wanted
}

/// Read what the operator may do (without changing anything) and refuse a switch that could not
/// finish: Some(Stalled `MissingPermission`) naming the missing actions. When the permissions
/// cannot be read (not allowed, unavailable), the switch goes ahead: a Warning event and the log
/// say so.
async fn missing_permissions(
    obj: &KmsKeyVaultMode,
    round: &mut Round<KmsKeyVaultMode>,
    provider: &dyn KmsProvider,
    current: &KmsSettings,
    target: &KmsSettings,
) -> Option<Outcome> {
    let plan = planner::plan(current, target);
    let vault = target
        .key_vault_resource_id
        .clone()
        .or_else(|| current.key_vault_resource_id.clone())
        .or_else(|| obj.spec.key_vault_resource_id.clone())
        .filter(|s| !s.is_empty());
    let mut missing = Vec::new();
    let mut unknown = Vec::new();
    for (resource, actions) in needed_actions(&plan, vault) {
        let on = resource.clone().unwrap_or_else(|| provider.describe());
        match provider.check_permissions(resource.as_deref(), &actions).await {
            Ok(PermissionCheck::Allowed) => {}
            Ok(PermissionCheck::Missing(m)) => missing.extend(m.into_iter().map(|a| format!("{a} on {on}"))),
            Err(e) => unknown.push(format!("on {on}: {e}")),
        }
    }
    if !unknown.is_empty() {
        let note = format!(
            "The operator's permissions could not be read ({}); the switch goes ahead without that check.",
            unknown.join("; ")
        );
        warn!(%note, "permissions not checked");
        round.event(EventType::Warning, kms_reason::PERMISSIONS_UNKNOWN, note);
    }
    if missing.is_empty() {
        return None;
    }
    let message = format!(
        "The switch needs {}, which the operator's identity is not allowed (Azure's \
         Microsoft.Authorization/permissions). Nothing was changed: KMS stays on. Fix: grant a role that allows it \
         (e.g. Key Vault Contributor on the vault, Azure Kubernetes Service Contributor Role on the cluster); it is \
         checked again every minute.",
        missing.join(", ")
    );
    Some(Outcome::new(Health::Stalled { reason: kms_reason::MISSING_PERMISSION, message }, Some(IDLE_CONFLICT)))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_mode_switch_needs_the_cluster_write_and_the_vault_write() {
        use StepName::*;
        let rid = "/subscriptions/x/resourceGroups/rg/providers/Microsoft.KeyVault/vaults/kv".to_string();
        let wanted = needed_actions(
            &[DisableKms, ReencryptSecrets, UpdateKeyVaultNetworkAccess, EnableKms, ReencryptSecrets],
            Some(rid.clone()),
        );
        assert_eq!(
            wanted,
            vec![
                (None, vec![provider::CLUSTER_READ, provider::CLUSTER_WRITE]),
                (Some(rid.clone()), vec![provider::VAULT_WRITE])
            ]
        );
        let other_vault = needed_actions(&[UpdateKms, ReencryptSecrets], Some(rid));
        assert_eq!(other_vault.len(), 1, "no vault change, no vault write needed: {other_vault:?}");
    }

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
