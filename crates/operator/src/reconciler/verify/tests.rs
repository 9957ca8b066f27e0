//! The probe against real TLS servers on loopback (rustls, certificates from rcgen), and the
//! judgement of what they present.

use std::net::SocketAddr;
use std::sync::Arc;

use k8s_openapi::jiff::Timestamp;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};

use super::*;
use crate::pki::{issue_leaf, new_ca, KeyedCert, Usage};

fn der(pem: &str) -> Vec<u8> {
    CertificateDer::from_pem_slice(pem.as_bytes()).expect("a PEM certificate").to_vec()
}

fn issue(ca: &KeyedCert, cn: &str) -> KeyedCert {
    issue_leaf(ca, cn, &["broker.test".to_string()], Usage::ServerAndClient, Timestamp::now(), 30).expect("issue")
}

/// A TLS server presenting `leaf` (and `ca` in its chain); with `client_ca`, it requires a client
/// certificate from that CA, as a Kafka listener with `ssl.client.auth=required` does.
async fn serve(leaf: &KeyedCert, ca: &KeyedCert, client_ca: Option<&KeyedCert>) -> SocketAddr {
    let chain = vec![CertificateDer::from(der(&leaf.cert_pem)), CertificateDer::from(der(&ca.cert_pem))];
    let key = PrivateKeyDer::from_pem_slice(leaf.key_pem.as_bytes()).expect("key");
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let builder =
        rustls::ServerConfig::builder_with_provider(provider.clone()).with_safe_default_protocol_versions().unwrap();
    let config = match client_ca {
        Some(c) => {
            let mut roots = rustls::RootCertStore::empty();
            roots.add(CertificateDer::from(der(&c.cert_pem))).unwrap();
            let verifier =
                rustls::server::WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider).build().unwrap();
            builder.with_client_cert_verifier(verifier).with_single_cert(chain, key).unwrap()
        }
        None => builder.with_no_client_auth().with_single_cert(chain, key).unwrap(),
    };
    let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(config));
    let socket = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = socket.local_addr().unwrap();
    tokio::spawn(async move {
        while let Ok((s, _)) = socket.accept().await {
            let a = acceptor.clone();
            tokio::spawn(async move {
                let _ = a.accept(s).await;
            });
        }
    });
    addr
}

fn expect(leaf: &KeyedCert, ca: &KeyedCert, port: u16) -> ListenerExpectation {
    ListenerExpectation {
        name: "TLS".into(),
        port,
        source: "Secret kafka/orders-kafka-external-tls".into(),
        fingerprint_sha256: fingerprint(&der(&leaf.cert_pem)),
        trust: vec![der(&ca.cert_pem)],
        trust_source: "ConfigMap kafka/orders-kafka-external-trust".into(),
    }
}

#[tokio::test]
async fn the_expected_certificate_with_a_trusted_chain_passes_also_when_the_listener_wants_a_client_certificate() {
    let ca = new_ca("ca", Timestamp::now(), 30).unwrap();
    let leaf = issue(&ca, "broker");
    for client_ca in [None, Some(&ca)] {
        let addr = serve(&leaf, &ca, client_ca).await;
        let presented = probe(addr).await;
        assert!(matches!(&presented, Presented::Chain(c) if c.len() == 2), "{presented:?}");
        assert_eq!(judge(&expect(&leaf, &ca, addr.port()), &presented, UnixTime::now()), Judgement::Ok);
    }
}

#[tokio::test]
async fn another_certificate_is_named_with_its_serial_and_fingerprint() {
    let ca = new_ca("ca", Timestamp::now(), 30).unwrap();
    let (old, new) = (issue(&ca, "old"), issue(&ca, "new"));
    let addr = serve(&old, &ca, None).await;
    let verdict = judge(&expect(&new, &ca, addr.port()), &probe(addr).await, UnixTime::now());
    let Judgement::Wrong(text) = verdict else { panic!("{verdict:?}") };
    let old_fp = fingerprint(&der(&old.cert_pem));
    assert!(text.contains(&old_fp[..16]) && text.contains("serial "), "{text}");
    assert!(text.contains("Secret kafka/orders-kafka-external-tls"), "{text}");
}

#[tokio::test]
async fn the_expected_certificate_from_an_untrusted_ca_fails_the_chain_check() {
    let (ca, other) = (new_ca("ca", Timestamp::now(), 30).unwrap(), new_ca("other", Timestamp::now(), 30).unwrap());
    let leaf = issue(&ca, "broker");
    let addr = serve(&leaf, &ca, None).await;
    let mut expectation = expect(&leaf, &ca, addr.port());
    expectation.trust = vec![der(&other.cert_pem)];
    let verdict = judge(&expectation, &probe(addr).await, UnixTime::now());
    assert!(
        matches!(&verdict, Judgement::Wrong(t) if t.contains("does not verify against the CA in ConfigMap")),
        "{verdict:?}"
    );
}

#[tokio::test]
async fn a_closed_port_is_unreachable_and_a_plaintext_port_is_not_tls() {
    let closed = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap().local_addr().unwrap();
    assert!(matches!(probe(closed).await, Presented::Unreachable(_)));

    // A plaintext listener where TLS was expected: it answers, but not with a certificate.
    let plain = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = plain.local_addr().unwrap();
    tokio::spawn(async move {
        while let Ok((mut s, _)) = plain.accept().await {
            use tokio::io::AsyncWriteExt;
            let _ = s.write_all(b"\0\0\0\x04kafka").await;
        }
    });
    let presented = probe(addr).await;
    assert!(matches!(presented, Presented::NotTls(_)), "{presented:?}");
}

#[test]
fn the_summary_names_listeners_and_what_was_not_checked() {
    let ca = new_ca("ca", Timestamp::now(), 30).unwrap();
    let leaf = issue(&ca, "broker");
    let expected = Expectation {
        listeners: vec![expect(&leaf, &ca, 9094)],
        unchecked: vec!["REPLICATION (9091): Secret kafka/x does not exist".into()],
    };
    let text = summary(3, &expected);
    assert!(text.starts_with("3 pod(s) present the expected certificate on TLS (9094)"), "{text}");
    assert!(text.ends_with("Not checked: REPLICATION (9091): Secret kafka/x does not exist."), "{text}");
}
