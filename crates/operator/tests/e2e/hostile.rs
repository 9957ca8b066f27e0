//! A hostile tenant: someone who may create our resources (and talk to the webhook's port) but
//! not read Secrets. Oversized and concurrent admission requests leave the operator up with its
//! memory bounded; key ids that would send AKS to another host are refused at admission. (The CA
//! key pasted into a certificate Secret is in `certrot`; the take-over of a foreign Secret in
//! `certrot` and `conflicts`.)

use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::support::{assert_no_secret_leaks, env, stderr, webhook_ready};
use cluster_security_testbed::operator::http_get_ok;
use k8s_openapi::api::admissionregistration::v1::ValidatingWebhookConfiguration;
use kube::Api;
use serde_json::{json, Value};

/// The API server's request limit, which the webhook enforces (`webhook::MAX_BODY_BYTES`).
const API_SERVER_LIMIT: usize = 3 * 1024 * 1024;
/// What the operator's container may use (the chart's memory limit).
const CONTAINER_LIMIT_MIB: u64 = 256;

/// An HTTPS client trusting only the CA the operator published as the webhook's caBundle.
async fn webhook_client() -> reqwest::Client {
    let vwc: Api<ValidatingWebhookConfiguration> = Api::all(env().cp.client().await.unwrap());
    let cfg = vwc.get("cluster-security-operator").await.unwrap();
    let ca = cfg.webhooks.unwrap()[0].client_config.ca_bundle.clone().unwrap().0;
    let mut roots = rustls::RootCertStore::empty();
    for der in rustls_pki_types_certs(&ca) {
        roots.add(der).unwrap();
    }
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let tls = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_root_certificates(roots)
        .with_no_client_auth();
    reqwest::Client::builder().use_preconfigured_tls(tls).timeout(Duration::from_secs(60)).build().unwrap()
}

fn rustls_pki_types_certs(pem: &[u8]) -> Vec<rustls::pki_types::CertificateDer<'static>> {
    use rustls::pki_types::pem::PemObject;
    rustls::pki_types::CertificateDer::pem_slice_iter(pem).collect::<Result<_, _>>().unwrap()
}

fn url() -> String {
    format!("https://127.0.0.1:{}/validate", env().operator.webhook_port)
}

/// A ClusterSecurityPolicy review padded with an annotation to `size` bytes of JSON.
fn padded_review(size: usize) -> Vec<u8> {
    let mut review = json!({
        "apiVersion": "admission.k8s.io/v1", "kind": "AdmissionReview",
        "request": {
            "uid": "8d2b7c0e-0000-4000-8000-000000000001",
            "kind": {"group": "clustersecurity.io", "version": "v1alpha1", "kind": "ClusterSecurityPolicy"},
            "resource": {"group": "clustersecurity.io", "version": "v1alpha1", "resource": "clustersecuritypolicies"},
            "name": "p", "namespace": "tenant", "operation": "CREATE", "userInfo": {"username": "tenant"},
            "object": {
                "apiVersion": "clustersecurity.io/v1alpha1", "kind": "ClusterSecurityPolicy",
                "metadata": {"name": "p", "namespace": "tenant", "annotations": {"pad": ""}},
                "spec": {"clusterRef": {"kind": "StatefulSet", "name": "kafka"},
                         "clientAuthentication": {"tls": {"enabled": true}},
                         "encryptionInTransit": {"clientBroker": "TLS", "inCluster": true}}
            },
            "dryRun": false
        }
    });
    let base = serde_json::to_vec(&review).unwrap().len();
    review["request"]["object"]["metadata"]["annotations"]["pad"] =
        Value::String("x".repeat(size.saturating_sub(base)));
    serde_json::to_vec(&review).unwrap()
}

/// (VmRSS, VmHWM) of the operator process in MiB.
fn operator_memory_mib() -> (u64, u64) {
    let status = std::fs::read_to_string(format!("/proc/{}/status", env().operator.pid())).unwrap();
    let field = |name: &str| {
        status
            .lines()
            .find_map(|l| l.strip_prefix(name))
            .and_then(|v| v.split_whitespace().next())
            .and_then(|kb| kb.parse::<u64>().ok())
            .map(|kb| kb / 1024)
            .unwrap()
    };
    (field("VmRSS:"), field("VmHWM:"))
}

#[tokio::test]
async fn oversized_and_concurrent_reviews_leave_the_webhook_up_with_bounded_memory() {
    let cp = &env().cp;
    webhook_ready(cp).await;
    let client = webhook_client().await;
    let post = |body: Vec<u8>| {
        let client = client.clone();
        async move {
            client.post(url()).header("content-type", "application/json").body(body).send().await.map(|r| r.status())
        }
    };

    // One byte over the API server's limit: refused before it is parsed.
    let status = post(padded_review(API_SERVER_LIMIT + 1)).await.expect("an answer");
    assert_eq!(status.as_u16(), 413, "a body over 3 MiB is refused");

    // 200 at once, each just under axum's own 2 MB default (so only the webhook's bound holds
    // them back): unbounded, each would hold its body and two parsed copies at the same time.
    let (rss_before, _) = operator_memory_mib();
    let started = Instant::now();
    let burst: Vec<_> = (0..200).map(|_| tokio::spawn(post(padded_review(1_900_000)))).collect();
    let (mut answered, mut busy, mut dropped) = (0, 0, 0);
    for task in burst {
        match task.await.unwrap() {
            Ok(s) if s.is_success() => answered += 1,
            Ok(s) if s.as_u16() == 503 || s.as_u16() == 408 => busy += 1,
            Ok(s) => panic!("unexpected answer {s}"),
            // A request turned away before its body was read may see its connection closed.
            Err(_) => dropped += 1,
        }
    }
    let (rss_after, peak) = operator_memory_mib();
    println!(
        "webhook burst: 200 reviews of 1.9 MB in {:.1?}: {answered} answered, {busy} told busy, {dropped} cut off; \
         operator RSS {rss_before} MiB before, {rss_after} MiB after, peak {peak} MiB (limit {CONTAINER_LIMIT_MIB} MiB)",
        started.elapsed()
    );
    assert!(answered >= 4, "at least the in-flight bound's worth is answered: {answered}");
    assert!(peak < CONTAINER_LIMIT_MIB, "peak RSS {peak} MiB stays under the container limit");

    // Still up: ready, and a normal review is answered at once.
    assert!(http_get_ok(env().operator.health_port, "/readyz"), "operator ready after the burst");
    let status = post(padded_review(2_000)).await.expect("an answer after the burst");
    assert!(status.is_success(), "{status}");
    assert_no_secret_leaks(&[]).await;
}

#[tokio::test]
async fn key_ids_pointing_elsewhere_are_refused_at_admission() {
    let cp = &env().cp;
    webhook_ready(cp).await;
    let sub = "00000000-1111-2222-3333-444444444444";
    for (key_id, says) in [
        ("https://user@kv-tenant.vault.azure.net/keys/etcd/1", "no user info"),
        ("https://kv-tenant.vault.azure.net:8443/keys/etcd/1", "names a port"),
        ("https://kv-tenant.vault.attacker.example/keys/etcd/1", "--azure-key-vault-dns-suffix"),
        ("https://kv-tenant.vault.azure.net.attacker.example/keys/etcd/1", "--azure-key-vault-dns-suffix"),
    ] {
        let manifest = format!(
            "apiVersion: clustersecurity.io/v1alpha1\nkind: KmsKeyVaultMode\nmetadata: {{name: tenant-kms}}\nspec:\n  networkAccess: Public\n  keyId: {key_id}\n  provider: {{azure: {{subscriptionId: {sub}, resourceGroup: rg, clusterName: aks}}}}\n"
        );
        let out = cp.kubectl_with_stdin(&["apply", "-f", "-"], Some(&manifest));
        assert!(!out.status.success(), "{key_id} was accepted");
        let err = stderr(&out);
        assert!(err.contains("KeyIdSyntax") && err.contains(says), "{key_id}: {err}");
    }
    // The names that go into Resource Manager URLs follow Azure's rules.
    let manifest = format!(
        "apiVersion: clustersecurity.io/v1alpha1\nkind: KmsKeyVaultMode\nmetadata: {{name: tenant-kms}}\nspec:\n  networkAccess: Public\n  keyId: https://kv-tenant.vault.azure.net/keys/etcd/1\n  provider: {{azure: {{subscriptionId: {sub}, resourceGroup: \"rg/../../other\", clusterName: aks}}}}\n"
    );
    let out = cp.kubectl_with_stdin(&["apply", "-f", "-"], Some(&manifest));
    assert!(!out.status.success() && stderr(&out).contains("AzureResourceNames"), "{}", stderr(&out));
    assert_no_secret_leaks(&[]).await;
}
