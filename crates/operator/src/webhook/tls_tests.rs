//! The admission webhook answers a real AdmissionReview over TLS (rustls), with a serving
//! certificate issued the way the operator issues its own, verified by a client that trusts only
//! the operator's CA.

use std::net::SocketAddr;

use crate::webhook::{self, certs};
use axum_server::tls_rustls::RustlsConfig;
use serde_json::{json, Value};

/// Serve the webhook with `tls` on a free loopback port; its address and handle. The API server
/// it would read peers from is unreachable: these reviews never need it.
async fn serve(tls: RustlsConfig) -> (SocketAddr, axum_server::Handle) {
    let handle = axum_server::Handle::new();
    let h = handle.clone();
    let kube = kube::Client::try_from(kube::Config::new("http://127.0.0.1:9".parse().unwrap())).unwrap();
    tokio::spawn(async move {
        webhook::serve("127.0.0.1:0".parse().unwrap(), tls, h, kube, Default::default(), Default::default()).await
    });
    (handle.listening().await.expect("webhook listens"), handle)
}

async fn start() -> (SocketAddr, reqwest::Client, axum_server::Handle) {
    let _ = rustls::crypto::ring::default_provider().install_default();
    let sans = vec!["127.0.0.1".to_string(), "localhost".to_string()];
    let now = k8s_openapi::jiff::Timestamp::now();
    let m = certs::build(&certs::Plan::NewCa, None, &sans, now).unwrap();
    let tls = RustlsConfig::from_pem(m.leaf.cert_pem.into_bytes(), m.leaf.key_pem.into_bytes()).await.unwrap();
    let (addr, handle) = serve(tls).await;
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
    tokio::spawn(certs::reload_on_change(tls.clone(), crt.clone(), key.clone(), every, None));
    let (addr, handle) = serve(tls).await;
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

/// Opens a TLS connection to the webhook and sends the headers of a POST whose body of `len`
/// bytes is then written by the caller.
async fn open_post(
    addr: SocketAddr,
    ca_pem: &[u8],
    len: usize,
) -> tokio_rustls::client::TlsStream<tokio::net::TcpStream> {
    use tokio::io::AsyncWriteExt;
    let config = crate::http::tls_config(Some(ca_pem), false).unwrap();
    let connector = tokio_rustls::TlsConnector::from(std::sync::Arc::new(config));
    let tcp = tokio::net::TcpStream::connect(addr).await.unwrap();
    let name = rustls::pki_types::ServerName::try_from("127.0.0.1").unwrap();
    let mut tls = connector.connect(name, tcp).await.unwrap();
    let head = format!(
        "POST {} HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\nContent-Length: {len}\r\n\r\n",
        webhook::VALIDATE_PATH
    );
    tls.write_all(head.as_bytes()).await.unwrap();
    tls.flush().await.unwrap();
    tls
}

/// Clients that trickle their bodies never hold a review's place: while more of them than there
/// are places trickle, a real review is answered at once, and each trickler is cut off.
#[tokio::test]
async fn trickled_bodies_do_not_keep_real_reviews_out() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let _ = rustls::crypto::ring::default_provider().install_default();
    let sans = vec!["127.0.0.1".to_string()];
    let m = certs::build(&certs::Plan::NewCa, None, &sans, k8s_openapi::jiff::Timestamp::now()).unwrap();
    let tls = RustlsConfig::from_pem(m.leaf.cert_pem.into_bytes(), m.leaf.key_pem.into_bytes()).await.unwrap();
    let (addr, handle) = serve(tls).await;
    let ca = m.ca.cert_pem.clone();

    let body = serde_json::to_vec(&review("CREATE", policy("TLS", true), None)).unwrap();
    let tricklers: Vec<_> = (0..4 * webhook::MAX_IN_FLIGHT)
        .map(|_| {
            let (ca, body) = (ca.clone(), body.clone());
            tokio::spawn(async move {
                let started = std::time::Instant::now();
                let mut tls = open_post(addr, ca.as_bytes(), body.len()).await;
                // One byte every 100 ms: the whole body would take minutes.
                for b in &body {
                    if tls.write_all(&[*b]).await.is_err() || tls.flush().await.is_err() {
                        break;
                    }
                    tokio::time::sleep(std::time::Duration::from_millis(100)).await;
                    if started.elapsed() > std::time::Duration::from_secs(20) {
                        break;
                    }
                }
                let mut answer = Vec::new();
                let _ = tokio::time::timeout(std::time::Duration::from_secs(5), tls.read_to_end(&mut answer)).await;
                (started.elapsed(), String::from_utf8_lossy(&answer).into_owned())
            })
        })
        .collect();
    // Every place would be held by now if bodies were read under a place.
    tokio::time::sleep(std::time::Duration::from_millis(300)).await;
    let client = crate::http::https_client(Some(ca.as_bytes()), false).unwrap();
    let url = format!("https://127.0.0.1:{}{}", addr.port(), webhook::VALIDATE_PATH);
    let asked = std::time::Instant::now();
    let resp = client.post(&url).json(&review("CREATE", policy("TLS", true), None)).send().await.unwrap();
    assert_eq!(resp.status(), 200, "a real review was turned away while bodies trickled in");
    assert!(asked.elapsed() < std::time::Duration::from_secs(1), "answered after {:?}", asked.elapsed());
    for t in tricklers {
        let (took, answer) = t.await.unwrap();
        assert!(took < std::time::Duration::from_secs(8), "a trickler held its connection for {took:?}");
        assert!(answer.is_empty() || answer.starts_with("HTTP/1.1 408"), "{answer}");
    }
    handle.shutdown();
}

/// With a client CA (and names), the webhook answers only a client presenting a certificate of
/// that CA naming one of those names: none, another CA's, or another name of the same CA never
/// get past the TLS handshake.
#[tokio::test]
async fn with_a_client_ca_only_the_named_client_is_answered() {
    use crate::pki::{self, Usage};
    use crate::webhook::client_auth::{server_config, ClientAuth};
    use rustls::pki_types::pem::PemObject;
    let _ = rustls::crypto::ring::default_provider().install_default();
    let now = k8s_openapi::jiff::Timestamp::now();
    let sans = vec!["127.0.0.1".to_string()];
    let m = certs::build(&certs::Plan::NewCa, None, &sans, now).unwrap();
    let client_ca = pki::new_ca("webhook client CA", now, 1).unwrap();
    let auth =
        ClientAuth::from_pem(client_ca.cert_pem.as_bytes(), vec!["kube-apiserver-webhook-client".into()]).unwrap();
    let tls = RustlsConfig::from_config(
        server_config(m.leaf.cert_pem.as_bytes(), m.leaf.key_pem.as_bytes(), Some(&auth)).unwrap(),
    );
    let (addr, handle) = serve(tls).await;
    let url = format!("https://127.0.0.1:{}{}", addr.port(), webhook::VALIDATE_PATH);
    let body = review("CREATE", policy("TLS", true), None);
    let mut roots = rustls::RootCertStore::empty();
    roots.add(rustls::pki_types::CertificateDer::from_pem_slice(m.ca.cert_pem.as_bytes()).unwrap()).unwrap();
    let with_cert = |leaf: Option<pki::KeyedCert>| {
        let config = match leaf {
            None => crate::http::tls_config(Some(m.ca.cert_pem.as_bytes()), false).unwrap(),
            Some(leaf) => {
                let chain = rustls::pki_types::CertificateDer::pem_slice_iter(leaf.cert_pem.as_bytes())
                    .collect::<Result<Vec<_>, _>>()
                    .unwrap();
                let key = rustls::pki_types::PrivateKeyDer::from_pem_slice(leaf.key_pem.as_bytes()).unwrap();
                let provider = std::sync::Arc::new(rustls::crypto::ring::default_provider());
                rustls::ClientConfig::builder_with_provider(provider)
                    .with_safe_default_protocol_versions()
                    .unwrap()
                    .with_root_certificates(roots.clone())
                    .with_client_auth_cert(chain, key)
                    .unwrap()
            }
        };
        reqwest::Client::builder().use_preconfigured_tls(config).build().unwrap()
    };
    let issue = |ca: &pki::KeyedCert, name: &str| pki::issue_leaf(ca, name, &[], Usage::Client, now, 1).unwrap();
    let other_ca = pki::new_ca("another CA", now, 1).unwrap();
    for (who, leaf) in [
        ("no certificate", None),
        ("another CA's certificate", Some(issue(&other_ca, "kube-apiserver-webhook-client"))),
        ("another name of the same CA", Some(issue(&client_ca, "tenant"))),
    ] {
        assert!(with_cert(leaf).post(&url).json(&body).send().await.is_err(), "{who} was answered");
    }
    let answered =
        with_cert(Some(issue(&client_ca, "kube-apiserver-webhook-client"))).post(&url).json(&body).send().await;
    assert_eq!(answered.expect("the named client is answered").status(), 200);
    handle.shutdown();
}
