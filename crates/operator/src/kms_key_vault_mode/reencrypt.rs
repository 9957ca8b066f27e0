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
//! - A pipeline, not pages in lock-step: the next pages are listed while rewrites run, and a
//!   fixed number of rewrites is kept in flight at all times (no page waits for its slowest
//!   Secret before the next one starts).
//! - How many in flight is measured, not guessed ([`Limiter`]): it grows while the API server's
//!   latency holds and shrinks when latency climbs or the server throttles (429, 5xx), never
//!   above `Settings::concurrency`. Retries with backoff (backon, with jitter) on 429, 409, 5xx
//!   and transport errors.
//! - Resumable: Secrets are listed in key order (namespace/name); `resume_after` is exact — the
//!   last key below which every Secret is handled. Next to it is kept the list continuation of
//!   the page that holds it (of the next page when it is its page's last), so a resumed run
//!   lists from there instead of from the first Secret (names before the resume point would cost
//!   the API server a read and a decryption each).
//! - An expired continuation (410, after etcd's compaction) continues with the token the API
//!   server hands back in that answer (an inconsistent list from the same key, which is all a
//!   rewrite needs); only a server that gives none or refuses the token is listed from the start,
//!   skipping what was handled.
//! - One namespace or all: [`run`] and [`count`] cover every namespace (the ReencryptSecrets
//!   step); [`run_in`] and [`count_in`] one namespace (the `kubectl clustersecurity reencrypt
//!   --namespace` plugin). Same engine, same order, same resume point.

use std::collections::VecDeque;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::task::AbortOnDrop;
use futures::stream::FuturesUnordered;
use futures::StreamExt;
use k8s_openapi::api::core::v1::Secret;
use kube::api::{ListParams, Patch, PatchParams};
use kube::core::PartialObjectMeta;
use kube::{Api, Client, ResourceExt};
use serde_json::json;
use tokio::sync::mpsc;

/// How the engine runs.
#[derive(Debug, Clone, Copy)]
pub struct Settings {
    /// The most rewrites in flight (`spec.reencryption.concurrency`): a cap when `adaptive`,
    /// the number in flight otherwise.
    pub concurrency: usize,
    pub page_size: u32,
    /// Attempts per Secret before it counts as failed.
    pub attempts: u32,
    /// Adapt the number in flight to the API server's answers ([`Limiter`]).
    pub adaptive: bool,
}

impl Default for Settings {
    fn default() -> Self {
        Self { concurrency: 32, page_size: 500, attempts: 5, adaptive: true }
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
    /// `namespace/name` of the last Secret below which every Secret is handled.
    pub resume_after: Option<String>,
    /// The list continuation a run resuming after `resume_after` lists from (opaque, from the
    /// API server): its page's, or the next page's when it is its page's last. None lists from
    /// the first Secret.
    pub resume_continue: Option<String>,
    /// Names listed again although already handled (at or before `resume_after`): what
    /// resuming cost this run.
    pub listed_again: u64,
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

/// How the API server answered one rewrite, for the [`Limiter`].
enum Signal {
    /// Answered at the first attempt, after this long.
    Latency(Duration),
    /// Throttled (429) or failing (5xx, transport) at least once.
    Pushback,
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

/// Pushback from the server itself (not a conflict with another writer).
fn pushback(e: &kube::Error) -> bool {
    match e {
        kube::Error::Api(s) => s.code == 429 || s.code >= 500,
        _ => true,
    }
}

async fn rewrite_one(client: Client, meta: PartialObjectMeta<Secret>, attempts: u32) -> (Outcome, Signal) {
    use backon::{ExponentialBuilder, Retryable};
    let api: Api<Secret> = Api::namespaced(client, &meta.namespace().unwrap_or_default());
    let (name, before) = (meta.name_any(), meta.resource_version());
    let (params, noop) = (PatchParams::default(), Patch::Merge(json!({})));
    let patch = || api.patch_metadata(&name, &params, &noop);
    let backoff = ExponentialBuilder::default()
        .with_min_delay(Duration::from_millis(100))
        .with_max_delay(Duration::from_secs(5))
        .with_max_times(attempts.saturating_sub(1) as usize)
        .with_jitter();
    let pushed_back = AtomicBool::new(false);
    let started = Instant::now();
    let result = patch
        .retry(backoff)
        .when(transient)
        .notify(|e, _| {
            if pushback(e) {
                pushed_back.store(true, Ordering::Relaxed);
            }
        })
        .await;
    let signal =
        if pushed_back.load(Ordering::Relaxed) { Signal::Pushback } else { Signal::Latency(started.elapsed()) };
    let outcome = match result {
        Ok(after) if after.resource_version() == before => Outcome::Unchanged,
        Ok(_) => Outcome::Rewritten,
        Err(kube::Error::Api(s)) if s.code == 404 => Outcome::Gone,
        Err(_) => Outcome::Failed,
    };
    (outcome, signal)
}

/// How many rewrites to keep in flight, from the API server's answers (after Netflix's
/// concurrency-limits "gradient"): every window of answers compares their latency with the
/// long-run latency. It starts slow-start, doubling every window while latency holds (within
/// `TOLERANCE`), so that a run of a few thousand Secrets spends its first hundred answers, not
/// its first thousands, below where the API server peaks; from the first window whose latency
/// climbs, or the first pushback, the limit grows by a small queue allowance while latency holds
/// and shrinks in proportion as it climbs; throttling (429, 5xx) halves it. An idle API server
/// is used fully, a busy one is not piled on. Never above the cap, never below one.
#[derive(Debug, Clone)]
pub struct Limiter {
    limit: f64,
    cap: f64,
    /// Long-run latency (exponential average over about `LONG_WINDOW` answers), seconds.
    long: Option<f64>,
    /// Sum and count of the current window's latencies.
    window_sum: f64,
    window_len: usize,
    /// The highest limit reached, and how often the server pushed back (for the log).
    most: usize,
    pushbacks: u64,
    /// Doubling per window until latency first climbs or the server pushes back.
    slow_start: bool,
}

impl Limiter {
    /// Where the limit starts: what a fixed default used to run at.
    pub const START: usize = 8;
    const TOLERANCE: f64 = 1.5;
    const LONG_WINDOW: f64 = 600.0;
    const SMOOTHING: f64 = 0.2;

    // A float cast to an integer saturates (a negative value or NaN is 0): no wrap to check.
    #[allow(clippy::cast_sign_loss)]
    pub fn new(cap: usize) -> Self {
        let cap = cap.max(1) as f64;
        let limit = (Self::START as f64).min(cap);
        Self {
            limit,
            cap,
            long: None,
            window_sum: 0.0,
            window_len: 0,
            most: limit as usize,
            pushbacks: 0,
            slow_start: true,
        }
    }

    /// Rewrites to keep in flight now.
    // A float cast to an integer saturates (a negative value or NaN is 0): no wrap to check.
    #[allow(clippy::cast_sign_loss)]
    pub fn limit(&self) -> usize {
        self.limit.round().max(1.0) as usize
    }

    /// One answer took `latency`.
    pub fn on_latency(&mut self, latency: Duration) {
        let rtt = latency.as_secs_f64();
        let alpha = 2.0 / (Self::LONG_WINDOW + 1.0);
        self.long = Some(self.long.map_or(rtt, |l| l + alpha * (rtt - l)));
        self.window_sum += rtt;
        self.window_len += 1;
        // One window: as many answers as the limit allows in flight (at least 8, so one slow
        // answer does not swing it).
        if self.window_len < self.limit().max(8) {
            return;
        }
        let short = self.window_sum / self.window_len as f64;
        let long = self.long.unwrap_or(short);
        let gradient = (Self::TOLERANCE * long / short).clamp(0.5, 1.0);
        self.slow_start &= gradient >= 1.0;
        if self.slow_start {
            self.limit = (self.limit * 2.0).min(self.cap);
        } else {
            let queue = self.limit.sqrt().max(1.0);
            let wanted = self.limit * gradient + queue;
            self.limit = (self.limit * (1.0 - Self::SMOOTHING) + wanted * Self::SMOOTHING).clamp(1.0, self.cap);
        }
        self.most = self.most.max(self.limit());
        (self.window_sum, self.window_len) = (0.0, 0);
    }

    /// The server pushed back (429, 5xx, unreachable): halve.
    pub fn on_pushback(&mut self) {
        self.pushbacks += 1;
        self.slow_start = false;
        self.limit = (self.limit / 2.0).max(1.0);
        (self.window_sum, self.window_len) = (0.0, 0);
    }
}

/// Pages listed ahead of the rewrites.
const LIST_AHEAD: usize = 2;

/// One page of Secrets after the resume point, in key order.
struct Page {
    items: Vec<PartialObjectMeta<Secret>>,
    /// The continuation this page was listed with (None: the first page): listing with it again
    /// starts at this page.
    listed_with: Option<Arc<str>>,
    /// The continuation of the next page (None: this is the last).
    next: Option<Arc<str>>,
    /// Names on the page at or before the resume point, left out of `items`.
    listed_again: u64,
}

impl Page {
    /// Each Secret with the continuation a run resuming after it lists from: its own page's, or
    /// for the page's last Secret the next page's (so nothing is listed again).
    fn places(self) -> impl Iterator<Item = (PartialObjectMeta<Secret>, Option<Arc<str>>)> {
        let last = self.items.len().saturating_sub(1);
        let (own, next) = (self.listed_with, self.next);
        self.items.into_iter().enumerate().map(move |(i, meta)| {
            let from = if i == last && next.is_some() { next.clone() } else { own.clone() };
            (meta, from)
        })
    }
}

/// List the Secrets (of `namespace`, or of all) after `after`, a page at a time from the
/// continuation `from` (the first Secret when None), into `pages` (in key order).
///
/// A 410 (the continuation's revision was compacted) continues with the token the API server
/// puts in that answer: the rest of the list as it is now, from the same key. A server that
/// gives no such token, or refuses ours (400: a token from another server or version), is
/// listed again from the first Secret; `after` keeps that from handling anything twice.
async fn list_pages(
    client: Client,
    namespace: Option<String>,
    page_size: u32,
    mut after: Option<String>,
    from: Option<String>,
    pages: mpsc::Sender<Result<Page, kube::Error>>,
) {
    let api: Api<Secret> = match &namespace {
        Some(ns) => Api::namespaced(client, ns),
        None => Api::all(client),
    };
    let mut continue_token: Option<Arc<str>> = from.filter(|c| !c.is_empty()).map(Arc::from);
    // Continuations refused in a row: a server that refuses even its own is an error, not a loop.
    let mut refused = 0;
    loop {
        let mut lp = ListParams::default().limit(page_size.max(1));
        if let Some(c) = &continue_token {
            lp = lp.continue_token(c);
        }
        let page = match api.list_metadata(&lp).await {
            Ok(p) => p,
            Err(kube::Error::Api(s)) if continue_token.is_some() && (s.code == 410 || s.code == 400) && refused < 3 => {
                refused += 1;
                let handed_back = s.metadata.and_then(|m| m.continue_).filter(|c| s.code == 410 && !c.is_empty());
                tracing::info!(
                    code = s.code,
                    from_the_same_key = handed_back.is_some(),
                    "the Secret list's continuation is no longer valid: listing on"
                );
                continue_token = handed_back.map(Arc::from);
                continue;
            }
            Err(e) => {
                let _ = pages.send(Err(e)).await;
                return;
            }
        };
        refused = 0;
        let listed = page.items.len();
        let items: Vec<_> =
            page.items.into_iter().filter(|m| after.as_deref().is_none_or(|a| key(m).as_str() > a)).collect();
        if let Some(last) = items.last() {
            after = Some(key(last));
        }
        let next = page.metadata.continue_.filter(|c| !c.is_empty()).map(Arc::from);
        let listed_with = std::mem::replace(&mut continue_token, next.clone());
        let page_out = Page { listed_again: (listed - items.len()) as u64, items, listed_with, next };
        if listed > 0 && pages.send(Ok(page_out)).await.is_err() {
            return; // the run ended
        }
        if continue_token.is_none() {
            return;
        }
    }
}

/// A Secret's place in the listing: its key and the continuation a run resuming after it lists
/// from.
type Place = (String, Option<Arc<str>>);

/// Secrets started but not yet below the resume point, in key order: the front is the oldest.
/// When the front is handled, it and every handled one after it pass below the resume point.
struct Watermark {
    /// Sequence number of the front.
    base: u64,
    items: VecDeque<(Place, bool)>,
}

impl Watermark {
    fn start(&mut self, place: Place) -> u64 {
        self.items.push_back((place, false));
        self.base + self.items.len() as u64 - 1
    }

    /// Mark `seq` handled; the new resume point when it moved.
    fn handled(&mut self, seq: u64) -> Option<Place> {
        self.items[(seq - self.base) as usize].1 = true;
        let mut moved = None;
        while self.items.front().is_some_and(|(_, done)| *done) {
            moved = self.items.pop_front().map(|(place, _)| place);
            self.base += 1;
        }
        moved
    }
}

/// How many Secrets the cluster holds now, without reading them: one request for a one-row
/// Table (`includeObject=None`: name, type and number of keys, no data) whose
/// `remainingItemCount` is the rest. The API server counts the keys in etcd; a names-only
/// listing would make it read and decrypt every Secret (with KMS, a plugin call each), which
/// costs about a quarter of a rewrite pass. (A PartialObjectMetadataList would be the natural
/// ask, but the v1.20 API server leaves `remainingItemCount` out of it; a Table carries it on
/// every version.) A server that leaves the count out gets the names-only listing.
pub async fn count(client: &Client, page_size: u32) -> Result<u64, kube::Error> {
    count_in(client, None, page_size).await
}

/// [`count`] for the Secrets of one namespace (`Some`) or of all (`None`).
pub async fn count_in(client: &Client, namespace: Option<&str>, page_size: u32) -> Result<u64, kube::Error> {
    match count_from_table(client, namespace).await? {
        Some(total) => Ok(total),
        None => count_by_listing(client, namespace, page_size).await,
    }
}

/// The Table of a one-item Secret list, as far as counting needs it.
#[derive(serde::Deserialize)]
struct CountingTable {
    #[serde(default)]
    metadata: k8s_openapi::apimachinery::pkg::apis::meta::v1::ListMeta,
    #[serde(default)]
    rows: Vec<serde::de::IgnoredAny>,
}

impl CountingTable {
    /// The rows plus what remains; None when more remain but the server did not say how many.
    fn total(&self) -> Option<u64> {
        let more = self.metadata.continue_.as_deref().is_some_and(|c| !c.is_empty());
        match self.metadata.remaining_item_count {
            Some(rest) => Some(self.rows.len() as u64 + rest.max(0).unsigned_abs()),
            None if !more => Some(self.rows.len() as u64),
            None => None,
        }
    }
}

async fn count_from_table(client: &Client, namespace: Option<&str>) -> Result<Option<u64>, kube::Error> {
    let path = match namespace {
        Some(ns) => format!("/api/v1/namespaces/{ns}/secrets?limit=1&includeObject=None"),
        None => "/api/v1/secrets?limit=1&includeObject=None".to_string(),
    };
    let request = axum::http::Request::get(path)
        .header(axum::http::header::ACCEPT, "application/json;as=Table;v=v1;g=meta.k8s.io")
        .body(Vec::new())
        .map_err(kube::Error::HttpError)?;
    Ok(client.request::<CountingTable>(request).await?.total())
}

/// Count by a names-only paged listing.
async fn count_by_listing(client: &Client, namespace: Option<&str>, page_size: u32) -> Result<u64, kube::Error> {
    let (tx, mut pages) = mpsc::channel(LIST_AHEAD);
    let lister = list_pages(client.clone(), namespace.map(str::to_string), page_size, None, None, tx);
    let _stop_lister = AbortOnDrop(tokio::spawn(lister));
    let mut total = 0u64;
    while let Some(page) = pages.recv().await {
        total += page?.items.len() as u64;
    }
    Ok(total)
}

/// What the lister has for the run.
enum Listed {
    Page(Page),
    /// Nothing yet (and the run does not wait for it).
    NotYet,
    /// Every page was listed.
    All,
    Failed(kube::Error),
}

/// The next page from `pages`, waiting for it when `wait` (nothing in flight), else only what
/// is there.
async fn next_page(pages: &mut mpsc::Receiver<Result<Page, kube::Error>>, wait: bool) -> Listed {
    let next = if wait {
        pages.recv().await
    } else {
        match pages.try_recv() {
            Ok(page) => Some(page),
            Err(mpsc::error::TryRecvError::Empty) => return Listed::NotYet,
            Err(mpsc::error::TryRecvError::Disconnected) => None,
        }
    };
    match next {
        Some(Ok(page)) => Listed::Page(page),
        Some(Err(e)) => Listed::Failed(e),
        None => Listed::All,
    }
}

impl Progress {
    /// One more Secret handled with `outcome`; `moved`: the resume point, when every Secret
    /// before it is handled now.
    fn count(&mut self, outcome: Outcome, moved: Option<Place>) {
        self.total += 1;
        match outcome {
            Outcome::Rewritten => self.rewritten += 1,
            Outcome::Unchanged => self.unchanged += 1,
            Outcome::Gone => self.gone += 1,
            Outcome::Failed => self.failed += 1,
        }
        if let Some((k, resume_from)) = moved {
            self.resume_after = Some(k);
            self.resume_continue = resume_from.map(|c| c.to_string());
        }
    }
}

/// Rewrite every Secret listed after `start.resume_after`, adding to the counters of `start`
/// (so a resumed run keeps counting where it stopped). `on_progress` sees the progress as it
/// goes (after about a page's worth of Secrets, and at the end), to persist the resume point at
/// a modest rate.
pub async fn run(
    client: &Client,
    settings: Settings,
    start: Progress,
    on_progress: impl FnMut(&Progress),
) -> Result<Progress, ReencryptError> {
    run_in(client, None, settings, start, on_progress).await
}

/// [`run`] for the Secrets of one namespace (`Some`) or of all (`None`).
pub async fn run_in(
    client: &Client,
    namespace: Option<&str>,
    settings: Settings,
    start: Progress,
    mut on_progress: impl FnMut(&Progress),
) -> Result<Progress, ReencryptError> {
    let (tx, mut pages) = mpsc::channel(LIST_AHEAD);
    let (after, from) = (start.resume_after.clone(), start.resume_continue.clone());
    let lister = list_pages(client.clone(), namespace.map(str::to_string), settings.page_size, after, from, tx);
    // The lister stops with the run, however it ends (a dropped run included).
    let _stop_lister = AbortOnDrop(tokio::spawn(lister));
    let mut progress = Progress { listed_again: 0, ..start };
    let (mut limiter, fixed) = (Limiter::new(settings.concurrency), settings.concurrency.max(1));
    let mut queue: VecDeque<(PartialObjectMeta<Secret>, Option<Arc<str>>)> = VecDeque::new();
    let mut watermark = Watermark { base: 0, items: VecDeque::new() };
    let mut in_flight = FuturesUnordered::new();
    let (mut listed_all, mut since_report) = (false, 0u64);
    loop {
        let limit = if settings.adaptive { limiter.limit() } else { fixed };
        while in_flight.len() < limit {
            if queue.is_empty() && !listed_all {
                // Wait for a page only when nothing is in flight; otherwise take what is there.
                match next_page(&mut pages, in_flight.is_empty()).await {
                    Listed::Page(page) => {
                        progress.listed_again += page.listed_again;
                        queue.extend(page.places());
                    }
                    Listed::NotYet => break,
                    Listed::All => listed_all = true,
                    Listed::Failed(e) => return Err(ReencryptError::List(e)),
                }
                continue;
            }
            let Some((meta, resume_from)) = queue.pop_front() else { break };
            let seq = watermark.start((key(&meta), resume_from));
            let client = client.clone();
            // Owned arguments: the futures borrow nothing, so the run stays Send inside a
            // controller's reconcile future.
            in_flight.push(async move { (seq, rewrite_one(client, meta, settings.attempts).await) });
        }
        let Some((seq, (outcome, signal))) = in_flight.next().await else {
            if listed_all && queue.is_empty() {
                break;
            }
            continue;
        };
        limiter.on(signal);
        progress.count(outcome, watermark.handled(seq));
        since_report += 1;
        if since_report >= u64::from(settings.page_size.max(1)) {
            since_report = 0;
            on_progress(&progress);
        }
    }
    on_progress(&progress);
    finished(&progress, &limiter);
    Ok(progress)
}

impl Limiter {
    /// What one rewrite told about the API server's load.
    fn on(&mut self, signal: Signal) {
        match signal {
            Signal::Latency(l) => self.on_latency(l),
            Signal::Pushback => self.on_pushback(),
        }
    }
}

/// The pass is over: how it went, for the log.
fn finished(progress: &Progress, limiter: &Limiter) {
    tracing::info!(
        secrets = progress.total,
        listed_again = progress.listed_again,
        in_flight_at_end = limiter.limit(),
        most_in_flight = limiter.most,
        pushbacks = limiter.pushbacks,
        "re-encryption pass finished"
    );
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ms(n: u64) -> Duration {
        Duration::from_millis(n)
    }

    #[test]
    fn a_one_row_table_counts_its_row_and_what_remains() {
        let table = |v: serde_json::Value| serde_json::from_value::<CountingTable>(v).unwrap().total();
        // As the v1.20 API server answers `limit=1` for 50 Secrets.
        let page = json!({"kind": "Table", "metadata": {"continue": "c", "remainingItemCount": 49},
            "rows": [{"cells": ["s-00000", "Opaque", 1, "0s"], "object": null}]});
        assert_eq!(table(page), Some(50));
        assert_eq!(table(json!({"metadata": {}, "rows": [{"cells": []}]})), Some(1), "all there is");
        assert_eq!(table(json!({"metadata": {}, "rows": []})), Some(0), "no Secrets");
        assert_eq!(table(json!({"metadata": {"continue": "c"}, "rows": [{}]})), None, "more, count unknown: list them");
    }

    /// Slow start: 8, 16, 32, 64 within the first 8 + 16 + 32 answers while latency holds.
    #[test]
    fn the_limit_reaches_the_cap_within_a_hundred_answers_while_latency_holds() {
        let mut l = Limiter::new(64);
        for _ in 0..56 {
            l.on_latency(ms(20));
        }
        assert_eq!(l.limit(), 64);
        // Then latency climbs (the server is saturated): the slow start is over, the limit eases.
        for _ in 0..64 * 4 {
            l.on_latency(ms(80));
        }
        assert!(l.limit() < 64, "{}", l.limit());
    }

    #[test]
    fn the_limit_grows_while_latency_holds_and_stays_under_the_cap() {
        let mut l = Limiter::new(32);
        assert_eq!(l.limit(), Limiter::START);
        for _ in 0..2000 {
            l.on_latency(ms(20));
        }
        assert_eq!(l.limit(), 32, "steady latency: up to the cap");
        let mut small = Limiter::new(4);
        assert_eq!(small.limit(), 4, "never above the cap, from the start");
        small.on_latency(ms(1));
        assert!(small.limit() <= 4);
    }

    #[test]
    fn rising_latency_and_pushback_shrink_the_limit() {
        let mut l = Limiter::new(64);
        for _ in 0..3000 {
            l.on_latency(ms(10));
        }
        let before = l.limit();
        // Latency climbs fourfold and stays there: the limit comes down.
        for _ in 0..200 {
            l.on_latency(ms(40));
        }
        assert!(l.limit() < before, "{} < {before}", l.limit());
        let at = l.limit();
        l.on_pushback();
        assert!(((at / 2).max(1)..=at.div_ceil(2)).contains(&l.limit()), "halved on 429/5xx: {at} -> {}", l.limit());
        for _ in 0..10 {
            l.on_pushback();
        }
        assert_eq!(l.limit(), 1, "never below one");
    }

    #[test]
    fn a_pages_last_secret_resumes_from_the_next_page() {
        let meta = |name: &str| {
            let mut m = PartialObjectMeta::<Secret>::default();
            m.metadata.name = Some(name.into());
            m
        };
        let page = |next: Option<&str>| Page {
            items: vec![meta("a"), meta("b"), meta("c")],
            listed_with: Some(Arc::from("this")),
            next: next.map(Arc::from),
            listed_again: 0,
        };
        let from =
            |p: Page| p.places().map(|(m, c)| (m.name_any(), c.as_deref().map(str::to_string))).collect::<Vec<_>>();
        let this = Some("this".to_string());
        assert_eq!(
            from(page(Some("next"))),
            [("a".into(), this.clone()), ("b".into(), this.clone()), ("c".into(), Some("next".into()))]
        );
        assert_eq!(from(page(None))[2], ("c".into(), this), "the last page: its own");
    }

    #[test]
    fn the_resume_point_is_the_last_key_below_which_everything_is_handled() {
        let mut w = Watermark { base: 0, items: VecDeque::new() };
        let place = |k: &str, page: &str| (k.to_string(), Some(Arc::from(page)));
        let seqs: Vec<u64> =
            [("a", "p1"), ("b", "p1"), ("c", "p2"), ("d", "p2")].iter().map(|(k, p)| w.start(place(k, p))).collect();
        assert_eq!(w.handled(seqs[2]), None, "c done, a and b not: nothing passes");
        assert_eq!(w.handled(seqs[1]), None);
        assert_eq!(w.handled(seqs[0]), Some(place("c", "p2")), "a done: a, b, c pass at once, with c's page");
        let e = w.start(place("e", "p3"));
        assert_eq!(w.handled(e), None, "d still in flight");
        assert_eq!(w.handled(seqs[3]), Some(place("e", "p3")));
        assert!(w.items.is_empty());
    }
}
