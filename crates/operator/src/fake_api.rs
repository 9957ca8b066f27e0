//! A scripted API server for the kinds' hook tests: a `kube::Client` over
//! `tower_test::mock::pair()`, and a [`Scenario`] of the requests a hook must make, in order,
//! each answered as the script says. A request out of order, or one more than the script has,
//! fails the test with what was asked; every request is kept (method, path and query, JSON
//! body) for the test to look into. Milliseconds per test, no API server: the e2e suites keep
//! what needs a real one (watches, admission, the kubelet).
//!
//! What this module may touch: nothing outside the test that uses it.

use std::sync::Arc;
use std::time::Duration;

use axum::http::{Method, Request, Response, StatusCode};
use k8s_openapi::jiff::Timestamp;
use kube::client::Body;
use kube::Client;
use serde_json::{json, Value};

use crate::health::Readiness;
use crate::metrics::Metrics;
use crate::reconciler::{Clock, Context};

/// One request the scenario expects, and its answer.
pub(crate) struct Exchange {
    method: Method,
    path: String,
    status: StatusCode,
    answer: Value,
}

/// A request the scenario expects: `method` on `path` (the URI's path, no query).
pub(crate) fn expect(method: Method, path: &str) -> Exchange {
    Exchange { method, path: path.to_string(), status: StatusCode::OK, answer: json!({}) }
}

impl Exchange {
    /// Answered 200 with `body`.
    pub(crate) fn ok(mut self, body: Value) -> Self {
        self.status = StatusCode::OK;
        self.answer = body;
        self
    }

    /// Answered with a Kubernetes `Status` failure of `code`.
    pub(crate) fn fails(mut self, code: u16) -> Self {
        self.status = StatusCode::from_u16(code).expect("an HTTP status");
        let reason = match code {
            404 => "NotFound",
            409 => "Conflict",
            403 => "Forbidden",
            _ => "InternalError",
        };
        self.answer = json!({"kind": "Status", "apiVersion": "v1", "status": "Failure",
            "message": format!("scripted {code}"), "reason": reason, "code": code});
        self
    }

    /// Answered 200 with the request's own body, as server-side apply and merge patches of a
    /// fresh object return it (metadata filled in as the server would).
    pub(crate) fn echo(mut self) -> Self {
        self.answer = Value::Null;
        self
    }
}

/// A request as the fake server received it.
#[derive(Debug, Clone)]
pub(crate) struct Seen {
    pub method: Method,
    /// Path and query.
    pub uri: String,
    pub body: Value,
}

impl Seen {
    /// `METHOD path` (no query), for comparing a whole conversation at once.
    pub(crate) fn line(&self) -> String {
        format!("{} {}", self.method, self.uri.split('?').next().unwrap_or_default())
    }
}

/// The fake server's side of a test: serves `exchanges` in order.
pub(crate) struct Scenario {
    handle: tower_test::mock::Handle<Request<Body>, Response<Body>>,
}

/// A client over a scripted API server, and the script's handle.
pub(crate) fn pair() -> (Client, Scenario) {
    let (service, handle) = tower_test::mock::pair::<Request<Body>, Response<Body>>();
    (Client::new(service, "default"), Scenario { handle })
}

impl Scenario {
    /// Serve `exchanges` in order (in a task); `.await` on the handle for what was received
    /// once the code under test is done.
    pub(crate) fn run(mut self, exchanges: Vec<Exchange>) -> tokio::task::JoinHandle<Vec<Seen>> {
        tokio::spawn(async move {
            let mut seen = Vec::new();
            for (i, exchange) in exchanges.into_iter().enumerate() {
                let next = tokio::time::timeout(Duration::from_secs(5), self.handle.next_request()).await;
                let Ok(Some((request, respond))) = next else {
                    panic!(
                        "request {i} ({} {}) never came; received before it: {:#?}",
                        exchange.method, exchange.path, seen
                    );
                };
                let (parts, body) = request.into_parts();
                let bytes = body.collect_bytes().await.expect("a request body");
                let body: Value = serde_json::from_slice(&bytes).unwrap_or(Value::Null);
                let got = Seen { method: parts.method.clone(), uri: parts.uri.to_string(), body };
                assert_eq!(
                    (got.method.clone(), parts.uri.path().to_string()),
                    (exchange.method.clone(), exchange.path.clone()),
                    "request {i} out of script; received before it: {seen:#?}\nthis one: {got:#?}"
                );
                let answer = match exchange.answer {
                    Value::Null => echo(&got.body),
                    other => other,
                };
                let response = Response::builder()
                    .status(exchange.status)
                    .header("content-type", "application/json")
                    .body(Body::from(serde_json::to_vec(&answer).expect("JSON")))
                    .expect("a response");
                respond.send_response(response);
                seen.push(got);
            }
            seen
        })
    }
}

/// What the server stores for a patch's body: the same, with the metadata a stored object has.
fn echo(body: &Value) -> Value {
    let mut stored = body.clone();
    if let Some(meta) = stored.get_mut("metadata").and_then(Value::as_object_mut) {
        meta.entry("resourceVersion").or_insert(json!("2"));
        meta.entry("uid").or_insert(json!("stored-uid"));
    }
    stored
}

/// The clock of these tests.
pub(crate) struct Fixed(pub Timestamp);

impl Clock for Fixed {
    fn now(&self) -> Timestamp {
        self.0
    }
}

/// A [`Context`] over `client`, at a fixed time.
pub(crate) fn context(client: Client) -> Context {
    let now = Timestamp::from_second(1_800_000_000).expect("a time");
    Context::new(
        client,
        Arc::new(Fixed(now)),
        Arc::new(Metrics::new()),
        Arc::new(Readiness::default()),
        Default::default(),
    )
}
