//! The plain-HTTP endpoints for the kubelet and Prometheus: `/healthz` (the process serves),
//! `/readyz` (the webhook serves and, on the leader, the controllers' caches are synced) and
//! `/metrics`.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;

use axum::http::{header, StatusCode};
use axum::routing::get;
use axum::Router;

use crate::metrics::{self, Metrics};

/// Process-wide readiness.
#[derive(Default)]
pub(crate) struct Readiness {
    /// The admission webhook serves (or is disabled).
    pub webhook: AtomicBool,
    /// This replica waits for the leader lease: it serves the webhook but runs no controller,
    /// so there are no caches to wait for.
    pub standby: AtomicBool,
    /// Controllers whose watch caches hold their first full list.
    pub synced: AtomicUsize,
    /// Controllers this replica runs (set when they start; 0 until then).
    pub controllers: AtomicUsize,
}

impl Readiness {
    /// None when ready, else what is missing.
    pub(crate) fn missing(&self) -> Option<String> {
        if !self.webhook.load(Ordering::Acquire) {
            return Some("the admission webhook is not serving".into());
        }
        let synced = self.synced.load(Ordering::Acquire);
        let controllers = self.controllers.load(Ordering::Acquire);
        if !self.standby.load(Ordering::Acquire) && (controllers == 0 || synced < controllers) {
            return Some(format!("{synced} of {controllers} controller caches synced"));
        }
        None
    }

    /// A controller's cache has synced.
    pub(crate) fn cache_synced(&self) {
        self.synced.fetch_add(1, Ordering::AcqRel);
    }
}

/// Serve `/healthz`, `/readyz` and `/metrics` on `addr` until the task is dropped.
pub(crate) async fn serve(addr: SocketAddr, ready: Arc<Readiness>, metrics: Arc<Metrics>) -> std::io::Result<()> {
    let app = Router::new()
        .route("/healthz", get(|| async { "ok" }))
        .route(
            "/readyz",
            get(move || {
                let ready = ready.clone();
                async move {
                    match ready.missing() {
                        None => (StatusCode::OK, "ready".to_string()),
                        Some(what) => (StatusCode::SERVICE_UNAVAILABLE, format!("not ready: {what}")),
                    }
                }
            }),
        )
        .route(
            "/metrics",
            get(move || {
                let metrics = metrics.clone();
                async move { ([(header::CONTENT_TYPE, metrics::CONTENT_TYPE)], metrics.encode()) }
            }),
        );
    let listener = tokio::net::TcpListener::bind(addr).await?;
    axum::serve(listener, app).await
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ready_needs_the_webhook_and_on_the_leader_every_cache() {
        let r = Readiness::default();
        assert_eq!(r.missing().as_deref(), Some("the admission webhook is not serving"));
        r.webhook.store(true, Ordering::Release);
        assert_eq!(r.missing().as_deref(), Some("0 of 0 controller caches synced"), "no controller started yet");
        r.controllers.store(3, Ordering::Release);
        assert_eq!(r.missing().as_deref(), Some("0 of 3 controller caches synced"));
        r.standby.store(true, Ordering::Release);
        assert_eq!(r.missing(), None, "a standby replica only serves the webhook");
        r.standby.store(false, Ordering::Release);
        (0..3).for_each(|_| r.cache_synced());
        assert_eq!(r.missing(), None);
    }
}
