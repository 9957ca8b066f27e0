//! A validating admission webhook that turns down updates of the Secrets in the namespaces
//! labelled `csop-test-gate=on`, a given number of times: what a policy engine (Gatekeeper,
//! Kyverno) refusing a Secret rewrite looks like to the operator — a 403 from the API server.

use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::Arc;

use axum::extract::State;
use axum::routing::post;
use axum::{Json, Router};
use axum_server::tls_rustls::RustlsConfig;
use base64::Engine as _;
use serde_json::{json, Value};

use crate::{pki, ControlPlane};

/// The label that puts a namespace's Secrets behind the gate.
pub const NAMESPACE_LABEL: &str = "csop-test-gate=on";
const CONFIGURATION: &str = "csop-test-secret-gate";

/// A running gate; stops (and its webhook configuration goes) when dropped.
pub struct SecretGate {
    cp: Arc<ControlPlane>,
    handle: axum_server::Handle,
    denials_left: Arc<AtomicU32>,
    denied: Arc<AtomicU32>,
}

async fn review(
    State((left, denied)): State<(Arc<AtomicU32>, Arc<AtomicU32>)>,
    Json(body): Json<Value>,
) -> Json<Value> {
    let uid = body.pointer("/request/uid").cloned().unwrap_or(Value::Null);
    let deny = left.fetch_update(Ordering::SeqCst, Ordering::SeqCst, |n| n.checked_sub(1)).is_ok();
    let response = if deny {
        denied.fetch_add(1, Ordering::SeqCst);
        json!({"uid": uid, "allowed": false, "status": {"code": 403, "message": "denied by the test gate"}})
    } else {
        json!({"uid": uid, "allowed": true})
    };
    Json(json!({"apiVersion": "admission.k8s.io/v1", "kind": "AdmissionReview", "response": response}))
}

impl SecretGate {
    /// Serve the gate and register it with the API server (updates of Secrets in labelled
    /// namespaces; failurePolicy Ignore, so a stopped gate blocks nothing).
    pub async fn start(cp: Arc<ControlPlane>) -> anyhow::Result<Self> {
        let _ = rustls::crypto::ring::default_provider().install_default();
        let now = k8s_openapi::jiff::Timestamp::now();
        let ca = pki::new_ca("test gate CA", now, 2)?;
        let leaf = pki::issue_leaf(&ca, "test-gate", &["127.0.0.1".into()], pki::Usage::Server, now, 2)?;
        let tls = RustlsConfig::from_pem(leaf.cert_pem.into_bytes(), leaf.key_pem.into_bytes()).await?;
        let listener = std::net::TcpListener::bind("127.0.0.1:0")?;
        let port = listener.local_addr()?.port();
        let (denials_left, denied) = (Arc::new(AtomicU32::new(0)), Arc::new(AtomicU32::new(0)));
        let app = Router::new().route("/validate", post(review)).with_state((denials_left.clone(), denied.clone()));
        let handle = axum_server::Handle::new();
        let server = axum_server::from_tcp_rustls(listener, tls).handle(handle.clone());
        tokio::spawn(async move {
            if let Err(e) = server.serve(app.into_make_service()).await {
                tracing::error!(error = %e, "test gate stopped");
            }
        });
        handle.listening().await;
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
        Ok(Self { cp, handle, denials_left, denied })
    }

    /// Refuse the next `n` Secret updates in gated namespaces.
    pub fn deny_next(&self, n: u32) {
        self.denials_left.store(n, Ordering::SeqCst);
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
