//! The admission webhook answers a real AdmissionReview over TLS (rustls), with a serving
//! certificate issued the way the operator issues its own, verified by a client that trusts only
//! the operator's CA.

use std::net::SocketAddr;

use crate::webhook::{self, certs};
use axum_server::tls_rustls::RustlsConfig;
use serde_json::{json, Value};

async fn start() -> (SocketAddr, reqwest::Client, axum_server::Handle) {
    let _ = rustls::crypto::ring::default_provider().install_default();
    let sans = vec!["127.0.0.1".to_string(), "localhost".to_string()];
    let now = k8s_openapi::jiff::Timestamp::now();
    let m = certs::build(&certs::Plan::NewCa, None, &sans, now).unwrap();
    let tls = RustlsConfig::from_pem(m.leaf.cert_pem.into_bytes(), m.leaf.key_pem.into_bytes()).await.unwrap();
    let handle = axum_server::Handle::new();
    let h = handle.clone();
    // The API server is read only for KmsKeyVaultModes; these reviews never reach it.
    let kube = kube::Client::try_from(kube::Config::new("http://127.0.0.1:9".parse().unwrap())).unwrap();
    tokio::spawn(async move {
        webhook::serve("127.0.0.1:0".parse().unwrap(), tls, h, kube, Default::default(), Default::default())
            .await
            .unwrap()
    });
    let addr = handle.listening().await.expect("webhook listens");
    // Trusts the operator's CA and nothing else.
    let client = crate::http::https_client(Some(m.ca.cert_pem.as_bytes()), false).unwrap();
    (addr, client, handle)
}

fn review(operation: &str, object: Value, old: Option<Value>) -> Value {
    json!({
        "apiVersion": "admission.k8s.io/v1", "kind": "AdmissionReview",
        "request": {
            "uid": "0df28fbd-5f5f-11e8-bc74-36e6bb280816",
            "kind": {"group": "clustersecurity.io", "version": "v1alpha1", "kind": "ClusterSecurityPolicy"},
            "resource": {"group": "clustersecurity.io", "version": "v1alpha1", "resource": "clustersecuritypolicies"},
            "name": "orders", "namespace": "kafka", "operation": operation,
            "userInfo": {"username": "alice"}, "object": object, "oldObject": old, "dryRun": false
        }
    })
}

fn policy(client_broker: &str, in_cluster: bool) -> Value {
    json!({
        "apiVersion": "clustersecurity.io/v1alpha1", "kind": "ClusterSecurityPolicy",
        "metadata": {"name": "orders", "namespace": "kafka"},
        "spec": {
            "clusterRef": {"kind": "StatefulSet", "name": "orders-kafka"},
            "clientAuthentication": {"unauthenticated": {"enabled": true}, "tls": {"enabled": true}},
            "encryptionInTransit": {"clientBroker": client_broker, "inCluster": in_cluster}
        }
    })
}

async fn post(client: &reqwest::Client, addr: SocketAddr, body: &Value) -> Value {
    let url = format!("https://127.0.0.1:{}{}", addr.port(), webhook::VALIDATE_PATH);
    let resp = client.post(url).json(body).send().await.expect("TLS handshake and request succeed");
    assert!(resp.status().is_success());
    resp.json().await.unwrap()
}

#[tokio::test]
async fn answers_admission_reviews_over_tls() {
    let (addr, client, handle) = start().await;

    let ok = post(&client, addr, &review("CREATE", policy("TLS_PLAINTEXT", true), None)).await;
    assert_eq!(ok["apiVersion"], "admission.k8s.io/v1");
    assert_eq!(ok["response"]["uid"], "0df28fbd-5f5f-11e8-bc74-36e6bb280816");
    assert_eq!(ok["response"]["allowed"], true);

    let denied = post(&client, addr, &review("CREATE", policy("PLAINTEXT", true), None)).await;
    assert_eq!(denied["response"]["allowed"], false);
    let msg = denied["response"]["status"]["message"].as_str().unwrap();
    assert!(
        msg.contains("mTLS authentication allows client-broker encryption TLS or TLS_PLAINTEXT, not PLAINTEXT"),
        "{msg}"
    );

    let update = post(&client, addr, &review("UPDATE", policy("TLS", false), Some(policy("TLS", true)))).await;
    assert_eq!(update["response"]["allowed"], false);
    assert!(update["response"]["status"]["message"].as_str().unwrap().contains("InClusterEncryptionImmutable"));

    let delete = post(&client, addr, &review("DELETE", Value::Null, Some(policy("PLAINTEXT", true)))).await;
    assert_eq!(delete["response"]["allowed"], true, "deletes are never blocked");

    // A client that does not trust the operator's CA is refused at the handshake.
    let stranger = crate::http::https_client(None, true).unwrap();
    let url = format!("https://127.0.0.1:{}{}", addr.port(), webhook::VALIDATE_PATH);
    assert!(stranger.post(url).json(&json!({})).send().await.is_err());
    handle.shutdown();
}

/// `--webhook-cert-dir` (cert-manager): a renewed pair written over the files is served without
/// a restart; a client trusting only the new CA gets through once it is.
#[tokio::test]
async fn a_renewed_certificate_in_the_cert_dir_is_served_without_a_restart() {
    let _ = rustls::crypto::ring::default_provider().install_default();
    let sans = vec!["127.0.0.1".to_string()];
    let now = k8s_openapi::jiff::Timestamp::now();
    let (old, new) = (
        certs::build(&certs::Plan::NewCa, None, &sans, now).unwrap(),
        certs::build(&certs::Plan::NewCa, None, &sans, now).unwrap(),
    );
    let dir = tempfile::tempdir().unwrap();
    let (crt, key) = (dir.path().join("tls.crt"), dir.path().join("tls.key"));
    std::fs::write(&crt, &old.leaf.cert_pem).unwrap();
    std::fs::write(&key, &old.leaf.key_pem).unwrap();
    let tls = RustlsConfig::from_pem_file(&crt, &key).await.unwrap();
    let every = std::time::Duration::from_millis(100);
    tokio::spawn(certs::reload_on_change(tls.clone(), crt.clone(), key.clone(), every));
    let handle = axum_server::Handle::new();
    let h = handle.clone();
    let kube = kube::Client::try_from(kube::Config::new("http://127.0.0.1:9".parse().unwrap())).unwrap();
    tokio::spawn(async move {
        webhook::serve("127.0.0.1:0".parse().unwrap(), tls, h, kube, Default::default(), Default::default()).await
    });
    let addr = handle.listening().await.unwrap();
    let url = format!("https://127.0.0.1:{}{}", addr.port(), webhook::VALIDATE_PATH);
    let trusts_new = crate::http::https_client(Some(new.ca.cert_pem.as_bytes()), false).unwrap();
    let body = review("CREATE", policy("TLS", true), None);
    assert!(trusts_new.post(&url).json(&body).send().await.is_err(), "the old pair is served first");

    // A half-written pair is not loaded; the old one stays.
    std::fs::write(&crt, "-----BEGIN CERTIFICATE-----\ntruncated").unwrap();
    tokio::time::sleep(every * 5).await;
    let trusts_old = crate::http::https_client(Some(old.ca.cert_pem.as_bytes()), false).unwrap();
    assert!(trusts_old.post(&url).json(&body).send().await.is_ok(), "a broken file keeps the served pair");

    std::fs::write(&key, &new.leaf.key_pem).unwrap();
    std::fs::write(&crt, &new.leaf.cert_pem).unwrap();
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    loop {
        if trusts_new.post(&url).json(&body).send().await.is_ok() {
            break;
        }
        assert!(std::time::Instant::now() < deadline, "the renewed pair was not served within 10 s");
        tokio::time::sleep(every).await;
    }
    handle.shutdown();
}
