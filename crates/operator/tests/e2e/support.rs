//! Shared end-to-end environment: one control plane, the operator with its webhook, and the play
//! kubelet, started on first use and stopped when the test binary exits.
#![allow(dead_code)]

use std::path::Path;
use std::sync::OnceLock;
use std::time::Duration;

use cluster_security_testbed::kubelet::{Held, PlayKubelet};
use cluster_security_testbed::leaks;
use cluster_security_testbed::operator::{self, Operator};
use cluster_security_testbed::{free_port, wait_until, ControlPlane, Options};
use k8s_openapi::api::admissionregistration::v1::ValidatingWebhookConfiguration;
use kube::Api;

pub(crate) struct Env {
    pub cp: ControlPlane,
    pub operator: Operator,
    pub held: Held,
}

pub(crate) fn env() -> &'static Env {
    static ENV: OnceLock<Env> = OnceLock::new();
    ENV.get_or_init(|| {
        let cp = ControlPlane::start(Options::default()).expect("control plane starts");
        let port = free_port();
        operator::install(&cp, Some(port)).expect("install CRDs and webhook configuration");
        let op = Operator::start(&cp, Path::new(env!("CARGO_BIN_EXE_cluster-security-operator")), port, &[] as &[&str])
            .expect("operator starts");
        // The play kubelet gets a runtime of its own that lives as long as the test binary.
        let kubeconfig = cp.kubeconfig_path();
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
            rt.block_on(async move {
                let client = cluster_security_testbed::client_from(&kubeconfig).await.unwrap();
                let kubelet = PlayKubelet::start(client, "play-node").await.unwrap();
                tx.send(kubelet.held()).unwrap();
                futures::future::pending::<()>().await;
            })
        });
        let held = rx.recv().expect("play kubelet starts");
        Env { cp, operator: op, held }
    })
}

/// Secrets stay secret: no value of any Secret (nor `markers`) in the operator's log, any Event,
/// or any status of our objects (see [`leaks::audit`]). Every test ends with it, so the whole
/// suite's flows are checked, not only the ones written to provoke a leak.
pub(crate) async fn assert_no_secret_leaks(markers: &[&str]) -> leaks::Report {
    leaks::assert_none(&env().cp, markers).await
}

/// Lint and render the chart with Helm's engine (scripts/helm-render.py), with `values` JSON.
pub(crate) fn helm_render(values: Option<&str>) -> std::process::Output {
    helm_render_at(Path::new("charts/cluster-security-operator"), values.unwrap_or("{}"))
}

/// Lint and render the chart at `chart` (relative to the repository, or absolute).
pub(crate) fn helm_render_at(chart: &Path, values: &str) -> std::process::Output {
    let root = cluster_security_testbed::repo_root();
    std::process::Command::new("python3")
        .arg(root.join("scripts/helm-render.py"))
        .arg(root.join(chart))
        .args(["csop-chart", values])
        .output()
        .expect("python3 runs")
}

/// The documents of a successful render.
pub(crate) fn rendered(out: &std::process::Output) -> Vec<serde_yaml::Value> {
    assert!(out.status.success(), "{}", stderr(out));
    serde_yaml::Deserializer::from_str(&stdout(out))
        .map(|d| serde::Deserialize::deserialize(d).unwrap())
        .filter(|d: &serde_yaml::Value| !d.is_null())
        .collect()
}

pub(crate) fn stdout(o: &std::process::Output) -> String {
    String::from_utf8_lossy(&o.stdout).into_owned()
}

pub(crate) fn stderr(o: &std::process::Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

/// kubectl apply of a manifest given as text; panics with kubectl's message on failure.
pub(crate) fn apply(cp: &ControlPlane, manifest: &str) {
    let out = cp.kubectl_with_stdin(&["apply", "-f", "-"], Some(manifest));
    assert!(out.status.success(), "kubectl apply failed: {}\n{manifest}", stderr(&out));
}

/// TLS settings that trust only the CA the operator published as the webhook's caBundle, and
/// present no client certificate.
pub(crate) async fn webhook_tls(cp: &ControlPlane) -> rustls::ClientConfig {
    use rustls::pki_types::pem::PemObject;
    let vwc: Api<ValidatingWebhookConfiguration> = Api::all(cp.client().await.unwrap());
    let cfg = vwc.get("cluster-security-operator").await.unwrap();
    let ca = cfg.webhooks.unwrap()[0].client_config.ca_bundle.clone().unwrap().0;
    let mut roots = rustls::RootCertStore::empty();
    for der in rustls::pki_types::CertificateDer::pem_slice_iter(&ca) {
        roots.add(der.unwrap()).unwrap();
    }
    rustls::ClientConfig::builder_with_provider(std::sync::Arc::new(rustls::crypto::ring::default_provider()))
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_root_certificates(roots)
        .with_no_client_auth()
}

/// Wait until the webhook's caBundle is published (the operator does it at start).
pub(crate) async fn webhook_ready(cp: &ControlPlane) {
    let vwc: Api<ValidatingWebhookConfiguration> = Api::all(cp.client().await.unwrap());
    wait_until(Duration::from_secs(30), "webhook caBundle published", || {
        let vwc = vwc.clone();
        async move {
            let cfg = vwc.get("cluster-security-operator").await.map_err(|e| e.to_string())?;
            let has = cfg.webhooks.unwrap_or_default().iter().all(|w| w.client_config.ca_bundle.is_some());
            has.then_some(()).ok_or_else(|| "no caBundle yet".to_string())
        }
    })
    .await
    .unwrap();
}

/// A namespace with a broker StatefulSet of `replicas` pods, all ready.
pub(crate) async fn brokers(cp: &ControlPlane, ns: &str, name: &str, replicas: i32) {
    apply(
        cp,
        &format!(
            "apiVersion: v1\nkind: Namespace\nmetadata: {{name: {ns}}}\n---\napiVersion: apps/v1\nkind: StatefulSet\nmetadata: {{name: {name}, namespace: {ns}}}\nspec:\n  serviceName: {name}\n  replicas: {replicas}\n  selector: {{matchLabels: {{app: {name}}}}}\n  template:\n    metadata: {{labels: {{app: {name}}}}}\n    spec:\n      containers: [{{name: kafka, image: apache/kafka:3.9.0}}]\n"
        ),
    );
    wait_sts_ready(cp, ns, name).await;
}

/// Wait until every replica of a StatefulSet runs the current revision and is ready.
pub(crate) async fn wait_sts_ready(cp: &ControlPlane, ns: &str, name: &str) {
    wait_until(Duration::from_secs(90), &format!("statefulset {ns}/{name} ready"), || {
        let out = cp.kubectl(&[
            "get",
            "statefulset",
            name,
            "-n",
            ns,
            "-o",
            "jsonpath={.spec.replicas}/{.status.readyReplicas}/{.status.updatedReplicas}/{.status.currentRevision}/{.status.updateRevision}",
        ]);
        let text = stdout(&out);
        async move {
            let p: Vec<&str> = text.split('/').collect();
            (p.len() == 5 && p[0] == p[1] && p[0] == p[2] && p[3] == p[4] && !p[3].is_empty()).then_some(()).ok_or(text)
        }
    })
    .await
    .unwrap();
}

/// Wait (up to `seconds`) until `jsonpath` of `kind/name` in `ns` satisfies `done`; the text.
pub(crate) async fn wait_jsonpath(
    cp: &ControlPlane,
    (kind, ns, name): (&str, &str, &str),
    jsonpath: &str,
    seconds: u64,
    done: impl Fn(&str) -> bool,
) -> String {
    let what = format!("{kind} {ns}/{name}: {jsonpath}");
    let template = format!("jsonpath={jsonpath}");
    wait_until(Duration::from_secs(seconds), &what, || {
        let text = stdout(&cp.kubectl(&["get", kind, name, "-n", ns, "-o", &template]));
        let ok = done(&text);
        async move { ok.then_some(text.clone()).ok_or(text) }
    })
    .await
    .unwrap()
}
