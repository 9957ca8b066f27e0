//! A validating admission webhook that, while closed, turns down updates of the Secrets whose
//! name starts with a prefix in the namespaces labelled `csop-test-gate=on`: what a policy engine
//! (Gatekeeper, Kyverno) refusing a Secret rewrite looks like to the operator — a 403 from the
//! API server. (Other Secrets there, such as the service account token the token controller
//! fills in, pass.) Open and closed rather than "the next n": kube-apiserver may call a webhook
//! twice for one update (it retries once with a fresh read from etcd), so a count would not say
//! which request it turned down.

use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};
use std::sync::Arc;

use axum::extract::State;
use axum::routing::post;
use axum::{Json, Router};
use base64::Engine as _;
use serde_json::{json, Value};

use crate::https::Https;
use crate::ControlPlane;

/// The label that puts a namespace's Secrets behind the gate.
pub const NAMESPACE_LABEL: &str = "csop-test-gate=on";
const CONFIGURATION: &str = "csop-test-secret-gate";

/// A running gate; stops (and its webhook configuration goes) when dropped.
pub struct SecretGate {
    cp: Arc<ControlPlane>,
    handle: axum_server::Handle,
    closed: Arc<AtomicBool>,
    denied: Arc<AtomicU32>,
}

/// Closed or open, refusals made, the Secret name prefix it refuses.
type Gate = (Arc<AtomicBool>, Arc<AtomicU32>, Arc<str>);

async fn review(State((closed, denied, prefix)): State<Gate>, Json(body): Json<Value>) -> Json<Value> {
    let uid = body.pointer("/request/uid").cloned().unwrap_or(Value::Null);
    let name = body.pointer("/request/name").and_then(Value::as_str).unwrap_or_default();
    let deny = name.starts_with(prefix.as_ref()) && closed.load(Ordering::SeqCst);
    let response = if deny {
        denied.fetch_add(1, Ordering::SeqCst);
        json!({"uid": uid, "allowed": false, "status": {"code": 403, "message": "denied by the test gate"}})
    } else {
        json!({"uid": uid, "allowed": true})
    };
    Json(json!({"apiVersion": "admission.k8s.io/v1", "kind": "AdmissionReview", "response": response}))
}

impl SecretGate {
    /// Serve the gate for Secrets named `prefix…` and register it with the API server (updates
    /// of Secrets in labelled namespaces; failurePolicy Ignore, so a stopped gate blocks nothing).
    pub async fn start(cp: Arc<ControlPlane>, prefix: &str) -> anyhow::Result<Self> {
        let https = Https::bind("test-gate").await?;
        let (port, ca) = (https.port, https.ca.clone());
        let (closed, denied) = (Arc::new(AtomicBool::new(false)), Arc::new(AtomicU32::new(0)));
        let app = Router::new().route("/validate", post(review)).with_state((
            closed.clone(),
            denied.clone(),
            Arc::<str>::from(prefix),
        ));
        let handle = https.serve(app, "test gate").await;
        let (key, value) = NAMESPACE_LABEL.split_once('=').expect("key=value");
        let configuration = json!({
            "apiVersion": "admissionregistration.k8s.io/v1", "kind": "ValidatingWebhookConfiguration",
            "metadata": {"name": CONFIGURATION},
            "webhooks": [{
                "name": "secret-gate.test.clustersecurity.io",
                "clientConfig": {
                    "url": format!("https://127.0.0.1:{port}/validate"),
                    "caBundle": base64::engine::general_purpose::STANDARD.encode(&ca.cert_pem),
                },
                "rules": [{"apiGroups": [""], "apiVersions": ["v1"], "operations": ["UPDATE"], "resources": ["secrets"]}],
                "namespaceSelector": {"matchLabels": {key: value}},
                "failurePolicy": "Ignore", "sideEffects": "None", "admissionReviewVersions": ["v1"], "timeoutSeconds": 5,
            }]
        });
        let out = tokio::task::block_in_place(|| {
            cp.kubectl_with_stdin(&["apply", "-f", "-"], Some(&serde_json::to_string(&configuration)?))
                .status
                .success()
                .then_some(())
                .ok_or_else(|| anyhow::anyhow!("registering the test gate failed"))
        });
        out?;
        Ok(Self { cp, handle, closed, denied })
    }

    /// Refuse (true) or let through (false) the updates of gated Secrets from now on.
    pub fn close(&self, closed: bool) {
        self.closed.store(closed, Ordering::SeqCst);
    }

    /// How many updates the gate refused so far.
    pub fn denied(&self) -> u32 {
        self.denied.load(Ordering::SeqCst)
    }
}

impl Drop for SecretGate {
    fn drop(&mut self) {
        let _ = self.cp.kubectl(&["delete", "validatingwebhookconfiguration", CONFIGURATION, "--ignore-not-found"]);
        self.handle.shutdown();
    }
}
