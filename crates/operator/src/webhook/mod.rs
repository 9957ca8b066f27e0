//! Validating admission webhook (AdmissionReview v1) over HTTPS with rustls. It calls the same
//! validation module as the reconcilers, including old-vs-new rules on UPDATE, and — the one rule
//! that needs other objects — reads the other KmsKeyVaultModes to keep one per managed cluster.
//!
//! What this module may touch: nothing; it reads our three kinds.
//!
//! The endpoint is built not to fall over, whoever reaches its port (see docs/security.md): a
//! request body is refused above the API server's own request limit ([`MAX_BODY_BYTES`]), read
//! before anything else at no less than [`MIN_BODY_RATE`] and within a shared byte budget
//! ([`BUFFERED_BYTES`]); only then does a review wait for one of [`MAX_IN_FLIGHT`] places (503
//! after [`QUEUE_WAIT`]: the API server applies the configuration's `failurePolicy`); a request
//! must be answered within [`REQUEST_TIMEOUT`], its headers arrive within
//! [`HEADER_READ_TIMEOUT`], a TLS handshake within axum-server's ten seconds. Nothing a request
//! carries becomes a metric label (see `Metrics::review`).

pub(crate) mod certs;
pub(crate) mod client_auth;
pub(crate) mod serving;
#[cfg(test)]
mod tls_tests;

use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use axum::extract::{DefaultBodyLimit, Request, State};
use axum::http::StatusCode;
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::{routing::post, Json, Router};
use axum_server::tls_rustls::RustlsConfig;
use kube::core::admission::{AdmissionRequest, AdmissionResponse, AdmissionReview, Operation};
use kube::core::DynamicObject;
use kube::{Api, Client};
use serde::de::DeserializeOwned;
use tokio::sync::Semaphore;

use crate::api::{CertificateRotation, ClusterRef, ClusterSecurityPolicy, KmsKeyVaultMode};
use crate::metrics::Metrics;
use crate::validate;

pub(crate) use crate::api::manifests::VALIDATE_PATH;

/// Largest AdmissionReview accepted: the API server's own limit on a request body (3 MiB,
/// `--max-request-bytes` default). Our objects are far smaller (their CRD schemas bound every
/// free-form field); a larger body is not a review the API server sent.
pub(crate) const MAX_BODY_BYTES: usize = 3 * 1024 * 1024;
/// Reviews answered at once; the bound on the webhook's memory (bodies are read only once a
/// review may run).
pub(crate) const MAX_IN_FLIGHT: usize = 4;
/// How long a review waits for its turn before it is answered 503.
pub(crate) const QUEUE_WAIT: Duration = Duration::from_secs(2);
/// A review (reading its body, reading peers, answering) must finish within this: the webhook
/// configuration's `timeoutSeconds` (5), after which the API server no longer reads the answer.
pub(crate) const REQUEST_TIMEOUT: Duration = Duration::from_secs(5);
/// The request line and headers must arrive within this.
pub(crate) const HEADER_READ_TIMEOUT: Duration = Duration::from_secs(5);
/// A request body may take this long before [`MIN_BODY_RATE`] applies.
pub(crate) const BODY_GRACE: Duration = Duration::from_secs(1);
/// Bytes per second a request body must arrive at, on average, after [`BODY_GRACE`]: the API
/// server sends a review at once, so its largest (3 MiB) is whole in two seconds at this rate.
pub(crate) const MIN_BODY_RATE: usize = 3 * 1024 * 1024;
/// Bytes of request bodies held at once, read or being read (whatever the connections).
pub(crate) const BUFFERED_BYTES: usize = 4 * MAX_BODY_BYTES;

/// Operator settings the rules depend on.
#[derive(Clone, Debug)]
pub struct Settings {
    /// Key Vault domain keyIds must be in (`--azure-key-vault-dns-suffix`).
    pub vault_dns_suffix: String,
}

impl Default for Settings {
    fn default() -> Self {
        Self { vault_dns_suffix: validate::DEFAULT_VAULT_DNS_SUFFIX.into() }
    }
}

#[derive(Clone)]
struct Shared {
    client: Client,
    settings: Arc<Settings>,
    in_flight: Arc<Semaphore>,
    /// Bytes of request bodies held now (see [`bounded`]).
    buffered: Arc<AtomicUsize>,
    metrics: Arc<Metrics>,
}

/// Answer one AdmissionReview by the rules that need only the object (and its old version);
/// the tests drive these without an API server.
#[cfg(test)]
pub(crate) fn review(review: AdmissionReview<DynamicObject>) -> AdmissionReview<DynamicObject> {
    match review.try_into() {
        Ok(req) => answer(&req, decide(&req, &Settings::default())),
        Err(e) => AdmissionResponse::invalid(format!("malformed AdmissionReview: {e}")).into_review(),
    }
}

/// Answer one AdmissionReview by every rule, reading other objects through `client`.
pub(crate) async fn review_with_peers(
    review: AdmissionReview<DynamicObject>,
    client: &Client,
    settings: &Settings,
) -> AdmissionReview<DynamicObject> {
    let req: AdmissionRequest<DynamicObject> = match review.try_into() {
        Ok(req) => req,
        Err(e) => return AdmissionResponse::invalid(format!("malformed AdmissionReview: {e}")).into_review(),
    };
    let verdict = match decide(&req, settings) {
        Ok(()) => match req.kind.kind.as_str() {
            "KmsKeyVaultMode" => one_per_cluster(&req, client).await,
            "ClusterSecurityPolicy" => {
                one_per_workload::<ClusterSecurityPolicy>(&req, client, |o| &o.spec.cluster_ref).await
            }
            "CertificateRotation" => {
                one_per_workload::<CertificateRotation>(&req, client, |o| &o.spec.cluster_ref).await
            }
            _ => Ok(()),
        },
        refused => refused,
    };
    answer(&req, verdict)
}

fn answer(req: &AdmissionRequest<DynamicObject>, verdict: Result<(), String>) -> AdmissionReview<DynamicObject> {
    let resp = AdmissionResponse::from(req);
    match verdict {
        Ok(()) => resp.into_review(),
        Err(message) => resp.deny(message).into_review(),
    }
}

/// A ClusterSecurityPolicy or CertificateRotation created, or pointed at another workload, must
/// not target a workload another object of its kind targets. As for KmsKeyVaultModes, a failed
/// list lets the request through (the controller applies the rule too).
async fn one_per_workload<K>(
    req: &AdmissionRequest<DynamicObject>,
    client: &Client,
    cluster_ref: fn(&K) -> &ClusterRef,
) -> Result<(), String>
where
    K: kube::Resource<DynamicType = (), Scope = kube::core::NamespaceResourceScope>
        + DeserializeOwned
        + Clone
        + std::fmt::Debug,
{
    let Some(obj) = req.object.as_ref() else { return Ok(()) };
    if !matches!(req.operation, Operation::Create | Operation::Update) || is_deleting(obj) {
        return Ok(());
    }
    let kind = req.kind.kind.as_str();
    let new: K = decode(obj, kind)?;
    if let Some(old) = req.old_object.as_ref().filter(|_| req.operation == Operation::Update) {
        if cluster_ref(&decode::<K>(old, kind)?) == cluster_ref(&new) {
            return Ok(()); // same workload as before: nothing new to check
        }
    }
    let ns = req.namespace.clone().unwrap_or_default();
    let others = match Api::<K>::namespaced(client.clone(), &ns).list(&Default::default()).await {
        Ok(list) => list.items,
        Err(e) => {
            tracing::warn!(error = %e, kind, "cannot list; the controller checks one per workload instead");
            return Ok(());
        }
    };
    let name = obj.metadata.name.clone().unwrap_or_else(|| req.name.clone());
    let others = others
        .iter()
        .filter(|o| o.meta().name.as_deref() != Some(name.as_str()) && o.meta().deletion_timestamp.is_none());
    validate::one_per_workload(
        kind,
        cluster_ref(&new),
        others.map(|o| (o.meta().name.as_deref().unwrap_or_default(), cluster_ref(o))),
    )
    .map_err(|v| format!("{kind} {ns}/{name} is invalid: {v}"))
}

/// A KmsKeyVaultMode created, or moved to another cluster, must not name a cluster another one
/// manages. If the others cannot be read the request is let through: the controller applies
/// the same rule (the newer object is Stalled `Conflict`), and a webhook outage must not block
/// every edit.
async fn one_per_cluster(req: &AdmissionRequest<DynamicObject>, client: &Client) -> Result<(), String> {
    let Some(obj) = req.object.as_ref() else { return Ok(()) };
    if !matches!(req.operation, Operation::Create | Operation::Update) || is_deleting(obj) {
        return Ok(());
    }
    let new: KmsKeyVaultMode = decode(obj, "KmsKeyVaultMode")?;
    if let Some(old) = req.old_object.as_ref().filter(|_| req.operation == Operation::Update) {
        let old: KmsKeyVaultMode = decode(old, "KmsKeyVaultMode")?;
        if old.spec.provider == new.spec.provider {
            return Ok(()); // same cluster as before: nothing new to check
        }
    }
    let others = match Api::<KmsKeyVaultMode>::all(client.clone()).list(&Default::default()).await {
        Ok(list) => list.items,
        Err(e) => {
            tracing::warn!(error = %e, "cannot list KmsKeyVaultModes; the controller checks one per cluster instead");
            return Ok(());
        }
    };
    let name = obj.metadata.name.as_deref().unwrap_or(&req.name);
    let others =
        others.iter().filter(|o| o.metadata.name.as_deref() != Some(name) && o.metadata.deletion_timestamp.is_none());
    validate::one_per_cluster(&new.spec, others.map(|o| (o.metadata.name.as_deref().unwrap_or_default(), &o.spec)))
        .map_err(|v| format!("KmsKeyVaultMode {name} is invalid: {v}"))
}

fn decode<K: DeserializeOwned>(obj: &DynamicObject, what: &str) -> Result<K, String> {
    let value = serde_json::to_value(obj).map_err(|e| format!("cannot read the {what} object: {e}"))?;
    serde_json::from_value(value).map_err(|e| {
        // serde quotes the offending value; keep an oversized one from filling the answer.
        let e = e.to_string();
        let shown: String = e.chars().take(300).collect();
        let more = if shown.len() < e.len() { "…" } else { "" };
        format!("the {what} object does not match the {what} schema: {shown}{more}")
    })
}

fn is_deleting(obj: &DynamicObject) -> bool {
    obj.metadata.deletion_timestamp.is_some()
}

/// Allow or deny, with the validation message. Deletes and updates of objects being deleted are
/// always allowed (a webhook must never block cleanup); so is an update that leaves the spec as it
/// is (labels, annotations), which disturbs nothing already running.
fn decide(req: &AdmissionRequest<DynamicObject>, settings: &Settings) -> Result<(), String> {
    if !matches!(req.operation, Operation::Create | Operation::Update) {
        return Ok(());
    }
    let Some(obj) = req.object.as_ref() else {
        return Ok(());
    };
    if is_deleting(obj) {
        return Ok(());
    }
    let kind = req.kind.kind.as_str();
    let old_obj = req.old_object.as_ref().filter(|_| req.operation == Operation::Update);
    if let Some(old) = old_obj {
        if old.data.get("spec") == obj.data.get("spec") {
            return Ok(());
        }
    }
    let target = format!(
        "{kind} {}{}",
        req.namespace.as_deref().map(|n| format!("{n}/")).unwrap_or_default(),
        obj.metadata.name.as_deref().unwrap_or(&req.name)
    );
    let result = match kind {
        "ClusterSecurityPolicy" => {
            let new: ClusterSecurityPolicy = decode(obj, kind)?;
            let old: Option<ClusterSecurityPolicy> = old_obj.map(|o| decode(o, kind)).transpose()?;
            let recorded = old.as_ref().and_then(|o| o.status.as_ref()).and_then(|s| s.cluster_ref.as_ref());
            validate::security_policy(&new.spec, old.as_ref().map(|o| &o.spec)).and_then(|()| match recorded {
                Some(r) => validate::cluster_ref_unchanged(kind, &new.spec.cluster_ref, r),
                None => Ok(()),
            })
        }
        "CertificateRotation" => {
            let new: CertificateRotation = decode(obj, kind)?;
            let old: Option<CertificateRotation> = old_obj.map(|o| decode(o, kind)).transpose()?;
            let recorded = old.as_ref().and_then(|o| o.status.as_ref()).and_then(|s| s.cluster_ref.as_ref());
            validate::certificate_rotation(&new.spec).and_then(|()| match recorded {
                Some(r) => validate::cluster_ref_unchanged(kind, &new.spec.cluster_ref, r),
                None => Ok(()),
            })
        }
        "KmsKeyVaultMode" => {
            validate::kms_key_vault_mode(&decode::<KmsKeyVaultMode>(obj, kind)?.spec, &settings.vault_dns_suffix)
        }
        // Not one of ours: the webhook configuration should not send it; let it through.
        _ => Ok(()),
    };
    result.map_err(|v| format!("{target} is invalid: {v}"))
}

async fn handle(
    State(shared): State<Shared>,
    Json(body): Json<AdmissionReview<DynamicObject>>,
) -> Json<AdmissionReview<DynamicObject>> {
    let started = std::time::Instant::now();
    let (kind, operation) = body
        .request
        .as_ref()
        .map(|r| (r.kind.kind.clone(), format!("{:?}", r.operation).to_uppercase()))
        .unwrap_or_default();
    let answer = review_with_peers(body, &shared.client, &shared.settings).await;
    let allowed = answer.response.as_ref().is_some_and(|r| r.allowed);
    shared.metrics.review(&kind, &operation, allowed, started.elapsed());
    Json(answer)
}

/// At most [`MAX_IN_FLIGHT`] reviews at once, each within [`REQUEST_TIMEOUT`]. The body is read
/// first, before a permit is taken, at no less than [`MIN_BODY_RATE`] after [`BODY_GRACE`], and
/// only while every body being held stays under [`BUFFERED_BYTES`] together: a client that
/// trickles its body loses its connection within about a second and never holds a permit, so
/// real reviews keep being answered; memory is bounded by what really arrived, not by how many
/// connections are open.
async fn bounded(State(shared): State<Shared>, request: Request, next: Next) -> Response {
    let started = tokio::time::Instant::now();
    let (parts, body) = request.into_parts();
    let mut body = match read_body(body, &shared.buffered, started).await {
        Ok(body) => body,
        Err(refusal) => {
            shared.metrics.review_shed(refusal.metric_label());
            return refusal.into_response();
        }
    };
    let left = REQUEST_TIMEOUT.saturating_sub(started.elapsed()).min(QUEUE_WAIT);
    let Ok(Ok(_permit)) = tokio::time::timeout(left, shared.in_flight.clone().acquire_owned()).await else {
        shared.metrics.review_shed("busy");
        return (StatusCode::SERVICE_UNAVAILABLE, "admission webhook busy; retry").into_response();
    };
    // `body` stays counted until the review is answered.
    let request = Request::from_parts(parts, axum::body::Body::from(std::mem::take(&mut body.bytes)));
    match tokio::time::timeout_at(started + REQUEST_TIMEOUT, next.run(request)).await {
        Ok(response) => response,
        Err(_) => {
            shared.metrics.review_shed("timeout");
            (StatusCode::REQUEST_TIMEOUT, "the review did not complete in time").into_response()
        }
    }
}

/// Bytes of a body counted in [`Shared::buffered`], given back when this is dropped (the
/// review answered, or the read refused).
struct HeldBody {
    bytes: Vec<u8>,
    counted: usize,
    buffered: Arc<AtomicUsize>,
}

impl Drop for HeldBody {
    fn drop(&mut self) {
        self.buffered.fetch_sub(self.counted, Ordering::Relaxed);
    }
}

/// Why a body was not read.
#[derive(Debug, PartialEq, Eq)]
enum BodyRefusal {
    TooLarge,
    /// Every body held together would pass [`BUFFERED_BYTES`].
    Busy,
    /// Slower than [`MIN_BODY_RATE`], or not whole within [`REQUEST_TIMEOUT`].
    Slow,
    Broken,
}

impl BodyRefusal {
    fn metric_label(&self) -> &'static str {
        match self {
            BodyRefusal::TooLarge => "too_large",
            BodyRefusal::Busy => "busy",
            BodyRefusal::Slow => "slow_body",
            BodyRefusal::Broken => "broken_body",
        }
    }
}

impl IntoResponse for BodyRefusal {
    fn into_response(self) -> Response {
        match self {
            BodyRefusal::TooLarge => {
                (StatusCode::PAYLOAD_TOO_LARGE, "AdmissionReview larger than the API server sends")
            }
            BodyRefusal::Busy => (StatusCode::SERVICE_UNAVAILABLE, "admission webhook busy; retry"),
            BodyRefusal::Slow => (StatusCode::REQUEST_TIMEOUT, "the request body arrived too slowly"),
            BodyRefusal::Broken => (StatusCode::BAD_REQUEST, "the request body could not be read"),
        }
        .into_response()
    }
}

/// The latest instant by which `received` bytes must have arrived: [`BODY_GRACE`] plus what
/// [`MIN_BODY_RATE`] takes for them (and the next byte), never past the request's deadline.
fn body_deadline(started: tokio::time::Instant, received: usize) -> tokio::time::Instant {
    let at_min_rate = Duration::from_secs_f64((received + 1) as f64 / MIN_BODY_RATE as f64);
    (started + BODY_GRACE + at_min_rate).min(started + REQUEST_TIMEOUT)
}

/// Read `body` whole under the rate, size and shared-memory bounds. A body over
/// [`MAX_BODY_BYTES`] is read on and dropped as it arrives (under the same rate and deadline),
/// so that its sender is told 413 rather than finding the connection closed mid-request.
async fn read_body(
    body: axum::body::Body,
    buffered: &Arc<AtomicUsize>,
    started: tokio::time::Instant,
) -> Result<HeldBody, BodyRefusal> {
    use futures::StreamExt;
    let mut held = HeldBody { bytes: Vec::new(), counted: 0, buffered: buffered.clone() };
    let mut stream = body.into_data_stream();
    let mut received = 0usize;
    loop {
        let chunk = match tokio::time::timeout_at(body_deadline(started, received), stream.next()).await {
            Err(_) if received > MAX_BODY_BYTES => return Err(BodyRefusal::TooLarge),
            Err(_) => return Err(BodyRefusal::Slow),
            Ok(None) if received > MAX_BODY_BYTES => return Err(BodyRefusal::TooLarge),
            Ok(None) => return Ok(held),
            Ok(Some(Err(_))) => return Err(BodyRefusal::Broken),
            Ok(Some(Ok(chunk))) => chunk,
        };
        received += chunk.len();
        if received > MAX_BODY_BYTES {
            buffered.fetch_sub(std::mem::take(&mut held.counted), Ordering::Relaxed);
            held.bytes = Vec::new();
            continue;
        }
        if buffered.fetch_add(chunk.len(), Ordering::Relaxed) + chunk.len() > BUFFERED_BYTES {
            buffered.fetch_sub(chunk.len(), Ordering::Relaxed);
            return Err(BodyRefusal::Busy);
        }
        held.counted += chunk.len();
        held.bytes.extend_from_slice(&chunk);
    }
}

/// The webhook's HTTP routes, with the body limit and the concurrency bound.
pub(crate) fn router(client: Client, settings: Settings, metrics: Arc<Metrics>) -> Router {
    let in_flight = Arc::new(Semaphore::new(MAX_IN_FLIGHT));
    let shared = Shared { client, settings: Arc::new(settings), in_flight, buffered: Arc::default(), metrics };
    Router::new()
        .route(VALIDATE_PATH, post(handle))
        .layer(DefaultBodyLimit::max(MAX_BODY_BYTES))
        .layer(middleware::from_fn_with_state(shared.clone(), bounded))
        .with_state(shared)
}

/// Serve the webhook over TLS until `handle` is shut down.
pub(crate) async fn serve(
    addr: SocketAddr,
    tls: RustlsConfig,
    handle: axum_server::Handle,
    client: Client,
    settings: Settings,
    metrics: Arc<Metrics>,
) -> std::io::Result<()> {
    let mut server = axum_server::bind_rustls(addr, tls).handle(handle);
    server.http_builder().http1().timer(hyper_util::rt::TokioTimer::new()).header_read_timeout(HEADER_READ_TIMEOUT);
    server.serve(router(client, settings, metrics).into_make_service()).await
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn review_of(
        op: &str,
        kind: &str,
        object: serde_json::Value,
        old: Option<serde_json::Value>,
    ) -> AdmissionReview<DynamicObject> {
        serde_json::from_value(json!({
            "apiVersion": "admission.k8s.io/v1",
            "kind": "AdmissionReview",
            "request": {
                "uid": "705ab4f5-6393-11e8-b7cc-42010a800002",
                "kind": {"group": "clustersecurity.io", "version": "v1alpha1", "kind": kind},
                "resource": {"group": "clustersecurity.io", "version": "v1alpha1", "resource": "x"},
                "name": "orders", "namespace": "kafka", "operation": op,
                "userInfo": {"username": "admin"},
                "object": object, "oldObject": old, "dryRun": false
            }
        }))
        .unwrap()
    }

    fn csp(client_broker: &str, in_cluster: bool) -> serde_json::Value {
        json!({
            "apiVersion": "clustersecurity.io/v1alpha1", "kind": "ClusterSecurityPolicy",
            "metadata": {"name": "orders", "namespace": "kafka"},
            "spec": {
                "clusterRef": {"kind": "StatefulSet", "name": "orders-kafka"},
                "clientAuthentication": {"sasl": {"scram": {"enabled": true}}},
                "encryptionInTransit": {"clientBroker": client_broker, "inCluster": in_cluster}
            }
        })
    }

    fn verdict(r: AdmissionReview<DynamicObject>) -> (bool, String) {
        let resp = r.response.expect("a response");
        (resp.allowed, resp.result.message)
    }

    #[test]
    fn create_denied_with_rule_name() {
        let (allowed, msg) =
            verdict(review(review_of("CREATE", "ClusterSecurityPolicy", csp("PLAINTEXT", true), None)));
        assert!(!allowed);
        assert!(msg.contains("AuthenticationEncryptionCompatibility"), "{msg}");
        assert!(msg.starts_with("ClusterSecurityPolicy kafka/orders is invalid"), "{msg}");
    }

    #[test]
    fn update_of_in_cluster_denied_but_metadata_only_update_allowed() {
        let mut old = csp("TLS", true);
        old["spec"]["clientAuthentication"] = json!({"unauthenticated": {"enabled": true}});
        let mut new = old.clone();
        new["spec"]["encryptionInTransit"]["inCluster"] = json!(false);
        let (allowed, msg) = verdict(review(review_of("UPDATE", "ClusterSecurityPolicy", new, Some(old.clone()))));
        assert!(!allowed);
        assert!(msg.contains("InClusterEncryptionImmutable"), "{msg}");

        let mut relabeled = old.clone();
        relabeled["metadata"]["labels"] = json!({"team": "a"});
        assert!(verdict(review(review_of("UPDATE", "ClusterSecurityPolicy", relabeled, Some(old)))).0);
    }

    #[test]
    fn deleting_object_is_never_blocked() {
        let mut obj = csp("PLAINTEXT", true);
        obj["metadata"]["deletionTimestamp"] = json!("2026-01-01T00:00:00Z");
        assert!(verdict(review(review_of("UPDATE", "ClusterSecurityPolicy", obj.clone(), Some(obj)))).0);
    }

    #[test]
    fn internal_certificate_must_be_selfsigned() {
        let obj = json!({
            "apiVersion": "clustersecurity.io/v1alpha1", "kind": "CertificateRotation",
            "metadata": {"name": "orders", "namespace": "kafka"},
            "spec": {"clusterRef": {"kind": "StatefulSet", "name": "k"}, "internal": {"label": "a", "type": "secret"}}
        });
        let (allowed, msg) = verdict(review(review_of("CREATE", "CertificateRotation", obj, None)));
        assert!(!allowed);
        assert!(msg.contains("internal certificates can only be self-generated"), "{msg}");
    }
}
