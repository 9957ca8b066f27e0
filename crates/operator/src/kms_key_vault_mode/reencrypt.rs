//! Re-encryption engine: make the API server store every Secret again under its current first
//! encryption provider, without losing or overwriting anything.
//!
//! - Names only: Secrets are listed as metadata (PartialObjectMetadata), a page at a time, so
//!   memory stays flat however many Secrets exist and no Secret data passes through us.
//! - A server-side no-op write per Secret: a JSON merge patch `{}`. The API server applies it in
//!   its own update loop: a Secret stored under an old provider is rewritten under the current one
//!   (new resourceVersion), one already current is left alone (same resourceVersion), and a
//!   concurrent change by someone else can't be overwritten because we send no data.
//! - A Secret deleted meanwhile answers NotFound: counted as gone, never recreated.
//! - Bounded concurrency, retries with backoff (backon, with jitter) on 429, 409, 5xx and
//!   transport errors.
//! - Resumable: Secrets are listed in key order (namespace/name); `resume_after` is the last key
//!   of the last fully handled page, and an expired list continuation restarts the listing
//!   after it.

use std::time::Duration;

use futures::{stream, StreamExt};
use k8s_openapi::api::core::v1::Secret;
use kube::api::{ListParams, Patch, PatchParams};
use kube::core::PartialObjectMeta;
use kube::{Api, Client, ResourceExt};
use serde_json::json;

/// How the engine runs.
#[derive(Debug, Clone, Copy)]
pub struct Settings {
    pub concurrency: usize,
    pub page_size: u32,
    /// Attempts per Secret before it counts as failed.
    pub attempts: u32,
}

impl Default for Settings {
    fn default() -> Self {
        Self { concurrency: 8, page_size: 500, attempts: 5 }
    }
}

/// Counters and resume point.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Progress {
    /// Secrets seen (listed after the resume point).
    pub total: u64,
    /// Stored again under the current provider.
    pub rewritten: u64,
    /// Already stored under the current provider.
    pub unchanged: u64,
    /// Deleted by someone else before we reached them.
    pub gone: u64,
    /// Could not be rewritten after every attempt.
    pub failed: u64,
    /// `namespace/name` of the last Secret of the last fully handled page.
    pub resume_after: Option<String>,
}

/// Why a run stopped early.
#[derive(Debug, thiserror::Error)]
pub enum ReencryptError {
    #[error("listing Secrets failed: {0}")]
    List(kube::Error),
}

enum Outcome {
    Rewritten,
    Unchanged,
    Gone,
    Failed,
}

fn key(meta: &PartialObjectMeta<Secret>) -> String {
    format!("{}/{}", meta.namespace().unwrap_or_default(), meta.name_any())
}

fn transient(e: &kube::Error) -> bool {
    match e {
        kube::Error::Api(s) => s.code == 429 || s.code >= 500 || s.code == 409,
        _ => true,
    }
}

async fn rewrite_one(client: &Client, meta: &PartialObjectMeta<Secret>, attempts: u32) -> Outcome {
    use backon::{ExponentialBuilder, Retryable};
    let api: Api<Secret> = Api::namespaced(client.clone(), &meta.namespace().unwrap_or_default());
    let (name, before) = (meta.name_any(), meta.resource_version());
    let (params, noop) = (PatchParams::default(), Patch::Merge(json!({})));
    let patch = || api.patch_metadata(&name, &params, &noop);
    let backoff = ExponentialBuilder::default()
        .with_min_delay(Duration::from_millis(100))
        .with_max_delay(Duration::from_secs(5))
        .with_max_times(attempts.saturating_sub(1) as usize)
        .with_jitter();
    match patch.retry(backoff).when(transient).await {
        Ok(after) if after.resource_version() == before => Outcome::Unchanged,
        Ok(_) => Outcome::Rewritten,
        Err(kube::Error::Api(s)) if s.code == 404 => Outcome::Gone,
        Err(_) => Outcome::Failed,
    }
}

/// How many Secrets the cluster holds now: a names-only paged listing (the v1.20 API server does
/// not carry `remainingItemCount` into PartialObjectMetadataList, and a full one-item list would
/// pass a Secret's data through us). Cheap next to the rewrite: one request per page.
pub async fn count(client: &Client, page_size: u32) -> Result<u64, kube::Error> {
    let api: Api<Secret> = Api::all(client.clone());
    let mut total = 0u64;
    let mut continue_token: Option<String> = None;
    loop {
        let mut lp = ListParams::default().limit(page_size.max(1));
        if let Some(c) = &continue_token {
            lp = lp.continue_token(c);
        }
        let page = match api.list_metadata(&lp).await {
            Ok(p) => p,
            // The continuation expired: count again from the start.
            Err(kube::Error::Api(s)) if s.code == 410 => {
                total = 0;
                continue_token = None;
                continue;
            }
            Err(e) => return Err(e),
        };
        total += page.items.len() as u64;
        continue_token = page.metadata.continue_.filter(|c| !c.is_empty());
        if continue_token.is_none() {
            return Ok(total);
        }
    }
}

/// Rewrite every Secret listed after `start.resume_after`, adding to the counters of `start`
/// (so a resumed run keeps counting where it stopped). `on_page` sees the progress after each
/// page (to persist the resume point at a modest rate).
pub async fn run(
    client: &Client,
    settings: Settings,
    start: Progress,
    mut on_page: impl FnMut(&Progress),
) -> Result<Progress, ReencryptError> {
    let api: Api<Secret> = Api::all(client.clone());
    let mut progress = start;
    let mut continue_token: Option<String> = None;
    loop {
        let mut lp = ListParams::default().limit(settings.page_size);
        if let Some(c) = &continue_token {
            lp = lp.continue_token(c);
        }
        let page = match api.list_metadata(&lp).await {
            Ok(p) => p,
            // The continuation expired (410): list again from the start and skip what is done.
            Err(kube::Error::Api(s)) if s.code == 410 => {
                continue_token = None;
                continue;
            }
            Err(e) => return Err(ReencryptError::List(e)),
        };
        let items: Vec<PartialObjectMeta<Secret>> = page
            .items
            .into_iter()
            .filter(|m| progress.resume_after.as_deref().is_none_or(|after| key(m).as_str() > after))
            .collect();
        let last = items.last().map(key);
        // Owned items and client clones: the futures borrow nothing, so the whole run stays Send
        // inside a controller's reconcile future.
        let outcomes: Vec<Outcome> = stream::iter(items)
            .map(|m| {
                let client = client.clone();
                async move { rewrite_one(&client, &m, settings.attempts).await }
            })
            .buffer_unordered(settings.concurrency.max(1))
            .collect()
            .await;
        for o in outcomes {
            progress.total += 1;
            match o {
                Outcome::Rewritten => progress.rewritten += 1,
                Outcome::Unchanged => progress.unchanged += 1,
                Outcome::Gone => progress.gone += 1,
                Outcome::Failed => progress.failed += 1,
            }
        }
        if last.is_some() {
            progress.resume_after = last;
            on_page(&progress);
        }
        continue_token = page.metadata.continue_.filter(|c| !c.is_empty());
        if continue_token.is_none() {
            return Ok(progress);
        }
    }
}
