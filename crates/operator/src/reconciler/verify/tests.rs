//! The probe against real TLS servers on loopback (rustls, certificates from rcgen), and the
//! judgement of what they present; which pods a check probes (the owner chain, hostNetwork) and
//! how long it may take, with peers that accept TCP and never finish TLS.

use std::net::SocketAddr;
use std::sync::atomic::AtomicUsize;
use std::sync::Arc;
use std::time::Instant;

use cluster_security_api::WorkloadKind;

use k8s_openapi::jiff::Timestamp;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};

use super::*;
use crate::pki::{issue_leaf, new_ca, KeyedCert, Usage};

async fn probe(addr: SocketAddr) -> Presented {
    probe_within(addr, BUDGET).await
}

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
    let text = summary(3, &expected, &[], "StatefulSet orders-kafka");
    assert!(text.starts_with("3 pod(s) present the expected certificate on TLS (9094)"), "{text}");
    assert!(text.ends_with("Not checked: REPLICATION (9091): Secret kafka/x does not exist."), "{text}");
}

/// The StatefulSet `kafka` (UID `sts-uid`) of `replicas` pods.
fn statefulset(replicas: i32) -> Workload {
    Workload {
        kind: Some(WorkloadKind::StatefulSet),
        name: "kafka".into(),
        uid: Some("sts-uid".into()),
        replicas,
        selector: BTreeMap::from([("app".into(), "kafka".into())]),
        ..Default::default()
    }
}

/// A running pod labelled `app: kafka` at `ip`; `owner`: its controller (kind, name, uid).
fn pod(name: &str, owner: Option<(&str, &str, &str)>, ip: &str, host_network: bool) -> Pod {
    let owners: Vec<serde_json::Value> = owner
        .iter()
        .map(|(kind, name, uid)| {
            serde_json::json!({"apiVersion": "apps/v1", "kind": kind, "name": name, "uid": uid, "controller": true})
        })
        .collect();
    serde_json::from_value(serde_json::json!({
        "metadata": {"name": name, "labels": {"app": "kafka"}, "ownerReferences": owners},
        "spec": {"containers": [{"name": "kafka"}], "hostNetwork": host_network},
        "status": {"podIP": ip}
    }))
    .unwrap()
}

fn own(name: &str, ip: &str) -> Pod {
    pod(name, Some(("StatefulSet", "kafka", "sts-uid")), ip, false)
}

/// A plain TCP listener on `ip:port` that counts the connections it accepts and keeps them open
/// without a word: where the operator must never connect, or a peer that never speaks TLS.
async fn silent(ip: &str, port: u16) -> (SocketAddr, Arc<AtomicUsize>) {
    let socket = tokio::net::TcpListener::bind((ip, port)).await.unwrap();
    let addr = socket.local_addr().unwrap();
    let accepted = Arc::new(AtomicUsize::new(0));
    let count = accepted.clone();
    tokio::spawn(async move {
        let mut held = Vec::new();
        while let Ok((s, _)) = socket.accept().await {
            count.fetch_add(1, Ordering::SeqCst);
            held.push(s);
        }
    });
    (addr, accepted)
}

#[test]
fn only_the_workloads_own_pods_are_probed_or_counted_and_host_network_pods_are_set_aside() {
    let w = statefulset(3);
    let mut terminating = own("kafka-2", "10.0.0.3");
    terminating.metadata.deletion_timestamp =
        Some(serde_json::from_value(serde_json::json!("2026-01-01T00:00:00Z")).unwrap());
    let pods = [
        own("kafka-0", "10.0.0.1"),
        pod("kafka-1", Some(("StatefulSet", "kafka", "sts-uid")), "10.0.0.2", true),
        terminating,
        pod("impostor", None, "10.0.0.9", false),
        pod("kafka-7", Some(("StatefulSet", "kafka", "an-older-kafka")), "10.0.0.7", false),
        pod("other-0", Some(("StatefulSet", "other", "other-uid")), "10.0.0.8", false),
    ];
    let plan = plan(&pods, &w, &BTreeMap::new());
    assert_eq!(plan.probe, vec![("kafka-0".to_string(), "10.0.0.1".parse().unwrap())]);
    assert_eq!(plan.host_network, vec!["pod kafka-1 (hostNetwork: its IP 10.0.0.2 is its node's)".to_string()]);
    assert_eq!(plan.foreign, ["impostor", "kafka-7", "other-0"], "no controller, another UID, another set");
    assert_eq!(plan.own, 2, "terminating pods and others' are not counted");
}

#[tokio::test]
async fn a_foreign_pod_matching_the_selector_is_never_connected_to_and_cannot_stand_in_for_a_broker() {
    let ca = new_ca("ca", Timestamp::now(), 30).unwrap();
    let leaf = issue(&ca, "broker");
    let good = serve(&leaf, &ca, None).await;
    let (_, connections) = silent("127.0.0.3", good.port()).await;
    let expected = Expectation { listeners: vec![expect(&leaf, &ca, good.port())], unchecked: vec![] };
    let pods = [own("kafka-0", "127.0.0.1"), pod("impostor", None, "127.0.0.3", false)];

    let verdict = check_pods(&pods, &statefulset(1), &BTreeMap::new(), &expected, BUDGET).await;
    let Verdict::Verified(text) = verdict else { panic!("the impostor does not hold the check: {verdict:?}") };
    assert!(text.starts_with("1 pod(s) present the expected certificate"), "{text}");
    assert!(
        text.contains("Not probed: pod impostor (the selector matches, but StatefulSet kafka does not own it)"),
        "{text}"
    );
    assert_eq!(connections.load(Ordering::SeqCst), 0, "the impostor's address was never connected to");

    // Two brokers wanted, one there: a pod of someone else's does not make up the count.
    let verdict = check_pods(&pods, &statefulset(2), &BTreeMap::new(), &expected, BUDGET).await;
    assert!(
        matches!(&verdict, Verdict::Rolling(m) if m.contains("1 of 2 pod(s) of StatefulSet kafka there")),
        "{verdict:?}"
    );
}

#[tokio::test]
async fn a_host_network_broker_is_not_verifiable_and_its_node_address_is_never_connected_to() {
    let ca = new_ca("ca", Timestamp::now(), 30).unwrap();
    let leaf = issue(&ca, "broker");
    // What answers on the node's address could be anything: here a listener that counts.
    let (node, connections) = silent("127.0.0.4", 0).await;
    let expected = Expectation { listeners: vec![expect(&leaf, &ca, node.port())], unchecked: vec![] };
    let pods = [pod("kafka-0", Some(("StatefulSet", "kafka", "sts-uid")), "127.0.0.4", true)];
    let verdict = check_pods(&pods, &statefulset(1), &BTreeMap::new(), &expected, BUDGET).await;
    let Verdict::Failed { reason, message } = verdict else { panic!("{verdict:?}") };
    assert_eq!(reason, reason::BROKER_NOT_VERIFIABLE);
    assert!(message.contains("pod kafka-0 (hostNetwork: its IP 127.0.0.4 is its node's)"), "{message}");
    assert!(message.contains("spec.verify.enabled: false"), "{message}");
    assert_eq!(connections.load(Ordering::SeqCst), 0, "the node's address was never connected to");
    // No TLS listener to check (a plaintext-only policy): nothing to connect to, nothing held.
    let verdict = check_pods(&pods, &statefulset(1), &BTreeMap::new(), &Expectation::default(), BUDGET).await;
    assert_eq!(verdict, Verdict::Verified("No TLS listener to check.".into()));
}

#[tokio::test]
async fn a_check_of_many_peers_that_accept_and_never_speak_tls_returns_within_its_budget() {
    assert!(CONNECT_TIMEOUT + HANDSHAKE_TIMEOUT <= CHECK_BUDGET, "one probe fits in the budget of a check");
    let ca = new_ca("ca", Timestamp::now(), 30).unwrap();
    let leaf = issue(&ca, "broker");
    let (peer, connections) = silent("127.0.0.1", 0).await;
    let expected = Expectation { listeners: vec![expect(&leaf, &ca, peer.port())], unchecked: vec![] };
    // 200 brokers whose listener accepts and says nothing: one handshake timeout each, 32 at a
    // time, would be 7 rounds of HANDSHAKE_TIMEOUT; the budget of the check ends it sooner.
    let pods: Vec<Pod> = (0..200).map(|i| own(&format!("kafka-{i}"), "127.0.0.1")).collect();
    let started = Instant::now();
    let verdict = check_pods(&pods, &statefulset(200), &BTreeMap::new(), &expected, BUDGET).await;
    let took = started.elapsed();
    assert!(took < CHECK_BUDGET + Duration::from_secs(2), "took {took:?}, budget {CHECK_BUDGET:?}");
    let Verdict::Failed { reason, message } = verdict else { panic!("{verdict:?}") };
    assert_eq!(reason, reason::BROKER_UNREACHABLE);
    assert!(message.contains("no TLS answer within 5s"), "the first ones met the handshake timeout: {message}");
    assert!(message.contains("and 197 more"), "{message}");
    assert!(connections.load(Ordering::SeqCst) < 200, "the budget ended the check before every probe started");
}

#[tokio::test]
async fn the_budget_cuts_a_peer_that_trickles_its_answer_and_those_never_started() {
    // A peer that begins a TLS record announcing 16 KiB and sends one byte every 50 ms.
    let socket = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = socket.local_addr().unwrap();
    tokio::spawn(async move {
        while let Ok((mut s, _)) = socket.accept().await {
            tokio::spawn(async move {
                use tokio::io::AsyncWriteExt;
                let _ = s.write_all(&[0x16, 0x03, 0x03, 0x40, 0x00]).await;
                while s.write_all(&[0]).await.is_ok() {
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
            });
        }
    });
    let budget = Budget {
        total: Duration::from_millis(1500),
        connect: Duration::from_secs(1),
        handshake: Duration::from_millis(400),
    };
    let started = Instant::now();
    let one = probe_within(addr, budget).await;
    assert!(matches!(&one, Presented::Unreachable(e) if e.contains("no TLS answer")), "{one:?}");
    assert!(started.elapsed() < Duration::from_secs(1), "cut at the handshake timeout: {:?}", started.elapsed());

    // 200 of them: 32 at a time, 400 ms each, would take 2.8 s; the check's budget is 1.5 s.
    let started = Instant::now();
    let all = probe_all(vec![addr; 200], budget).await;
    assert!(started.elapsed() < Duration::from_millis(2000), "{:?}", started.elapsed());
    assert_eq!(all.len(), 200);
    let out_of_budget = all.iter().filter(|p| matches!(p, Presented::Unreachable(e) if e.contains("budget"))).count();
    assert!(out_of_budget > 0 && all.iter().all(|p| matches!(p, Presented::Unreachable(_))), "{out_of_budget}");
}
