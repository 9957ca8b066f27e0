//! Verification on the wire: before a rolling operation completes, connect to every pod of the
//! workload on each TLS listener the brokers are configured with, and check that it presents the
//! expected certificate (its SHA-256 fingerprint) with a chain that verifies against the CA
//! clients are told to trust, and that the pod runs the current template. What to expect comes
//! from the kind ([`Rolling::wire_expectation`](super::rolling::Rolling::wire_expectation)); this
//! module knows nothing about brokers' configuration.
//!
//! What this module may touch: it lists the workload's pods and opens TLS connections to them.
//! It writes nothing. Only certificates (public) are read off the wire; no client certificate
//! is sent, so a listener that requires one still shows its own certificate first (TLS 1.2 and
//! 1.3 both send the server's certificate before asking for the client's) and then refuses us.

use std::collections::BTreeMap;
use std::net::{IpAddr, SocketAddr};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures::StreamExt;
use k8s_openapi::api::core::v1::Pod;
use kube::{Client, ResourceExt};
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::crypto::CryptoProvider;
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use rustls::{DigitallySignedStruct, SignatureScheme};

use super::conditions::reason;
use super::workload::Workload;
use crate::pki::fingerprint;

/// How long one connection (TCP and TLS handshake) may take.
const PROBE_TIMEOUT: Duration = Duration::from_secs(5);
/// How many connections a check has open at once.
const PROBES_IN_FLIGHT: usize = 32;
/// How many findings a message names before "and N more".
const NAMED_FINDINGS: usize = 3;

/// What every pod must present on one listener.
#[derive(Debug, Clone)]
pub struct ListenerExpectation {
    /// Listener name and port, as the brokers' configuration names them.
    pub name: String,
    pub port: u16,
    /// Where the expected certificate is (for messages): `Secret kafka/orders-kafka-external-tls`.
    pub source: String,
    /// SHA-256 fingerprint of the expected end-entity certificate, as the status shows them.
    pub fingerprint_sha256: String,
    /// The CA certificates (DER) the presented chain must verify against.
    pub trust: Vec<Vec<u8>>,
    /// Where they are (for messages): `ConfigMap kafka/orders-kafka-external-trust`.
    pub trust_source: String,
}

/// What the brokers should present, and what could not be checked (with why).
#[derive(Debug, Clone, Default)]
pub struct Expectation {
    pub listeners: Vec<ListenerExpectation>,
    pub unchecked: Vec<String>,
}

/// The result of a check of every pod.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Verdict {
    /// Everything expected was presented: what was checked, for the operation record.
    Verified(String),
    /// A pod still runs an older template (being replaced): look again shortly.
    Rolling(String),
    /// A pod presents something else (`VerificationFailed`), or could not be reached
    /// (`BrokerUnreachable`): the condition reason and message.
    Failed { reason: &'static str, message: String },
}

/// What one pod presented on one listener.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Presented {
    /// The certificates the server sent, end-entity first (DER).
    Chain(Vec<Vec<u8>>),
    /// The port accepted the connection but no TLS server certificate came back.
    NotTls(String),
    /// No connection (refused, timed out, no route).
    Unreachable(String),
}

/// Check every pod of `workload` against `expected` (and against the template annotations
/// `annotations` the operation set).
pub async fn check(
    client: &Client,
    namespace: &str,
    workload: &Workload,
    annotations: &BTreeMap<String, String>,
    expected: &Expectation,
) -> kube::Result<Verdict> {
    if workload.selector.is_empty() {
        // Selected by expressions only: which pods are the brokers is not a label query away.
        return Ok(Verdict::Verified("Not checked on the wire: the workload's selector has no matchLabels.".into()));
    }
    let pods = super::workload::pods(client, namespace, workload).await?;
    let mut pods: Vec<Pod> = pods.into_iter().filter(|p| p.metadata.deletion_timestamp.is_none()).collect();
    pods.sort_by_key(|p| p.name_any());
    let mut findings = Vec::new();
    let mut unreachable = Vec::new();
    let mut stale = Vec::new();
    let mut to_probe = Vec::new();
    for pod in &pods {
        let name = pod.name_any();
        let older = annotations
            .iter()
            .filter(|(k, v)| !v.is_empty() && pod.annotations().get(*k) != Some(*v))
            .map(|(k, _)| k.as_str())
            .next();
        if let Some(key) = older {
            stale.push(format!("pod {name} runs an older pod template ({key} differs)"));
            continue;
        }
        let ip = pod.status.as_ref().and_then(|s| s.pod_ip.as_deref()).and_then(|ip| ip.parse::<IpAddr>().ok());
        let Some(ip) = ip else {
            unreachable.push(format!("pod {name} has no pod IP"));
            continue;
        };
        to_probe
            .extend(expected.listeners.iter().enumerate().map(|(i, l)| (name.clone(), i, SocketAddr::new(ip, l.port))));
    }
    // Pods × listeners at once, a bounded number in flight: unreachable brokers cost one
    // timeout, not one per pod, and the reconcile worker is not held for minutes.
    let presented: Vec<(String, usize, Presented)> = futures::stream::iter(to_probe)
        .map(|(name, i, addr)| async move { (name, i, probe(addr).await) })
        .buffered(PROBES_IN_FLIGHT)
        .collect()
        .await;
    for (name, i, p) in presented {
        let l = &expected.listeners[i];
        match judge(l, &p, UnixTime::now()) {
            Judgement::Ok => {}
            Judgement::Wrong(what) => findings.push(format!("pod {name} port {} ({}) {what}", l.port, l.name)),
            Judgement::Unreachable(why) => unreachable.push(format!("pod {name} port {} ({}): {why}", l.port, l.name)),
        }
    }
    let count = |v: &[String]| {
        let mut text = v.iter().take(NAMED_FINDINGS).cloned().collect::<Vec<_>>().join("; ");
        if v.len() > NAMED_FINDINGS {
            text.push_str(&format!("; and {} more", v.len() - NAMED_FINDINGS));
        }
        text
    };
    if !stale.is_empty() && findings.is_empty() && unreachable.is_empty() {
        // The workload reports the rollout done while a pod of the old template is still there
        // (a Deployment's old ReplicaSet scaling down): it is going, not wrong.
        return Ok(Verdict::Rolling(format!("Waiting for the last pods of the old template: {}.", count(&stale))));
    }
    findings.extend(stale);
    if !findings.is_empty() {
        let message = format!(
            "The brokers do not serve what was put in place: {}. A broker that was not restarted, or that does not \
             read the mounted files, keeps its old certificate; see docs/troubleshooting.md.",
            count(&findings)
        );
        return Ok(Verdict::Failed { reason: reason::VERIFICATION_FAILED, message });
    }
    if !unreachable.is_empty() {
        let message = format!(
            "Cannot reach the brokers to check their certificates: {}. If a NetworkPolicy keeps the operator \
             out, allow it to the listener ports, or set spec.verify.enabled: false.",
            count(&unreachable)
        );
        return Ok(Verdict::Failed { reason: reason::BROKER_UNREACHABLE, message });
    }
    Ok(Verdict::Verified(summary(pods.len(), expected)))
}

/// What a successful check covered, for the operation record.
fn summary(pods: usize, expected: &Expectation) -> String {
    let mut text = if expected.listeners.is_empty() {
        "No TLS listener to check.".to_string()
    } else {
        let listeners: Vec<String> = expected.listeners.iter().map(|l| format!("{} ({})", l.name, l.port)).collect();
        format!(
            "{pods} pod(s) present the expected certificate on {}, each chain verified against the published CA.",
            listeners.join(", ")
        )
    };
    if !expected.unchecked.is_empty() {
        text.push_str(&format!(" Not checked: {}.", expected.unchecked.join("; ")));
    }
    text
}

#[derive(Debug, PartialEq, Eq)]
enum Judgement {
    Ok,
    Wrong(String),
    Unreachable(String),
}

/// Compare what a pod presented with what it should.
fn judge(l: &ListenerExpectation, presented: &Presented, now: UnixTime) -> Judgement {
    let chain = match presented {
        Presented::Unreachable(why) => return Judgement::Unreachable(why.clone()),
        Presented::NotTls(why) => return Judgement::Wrong(format!("does not complete a TLS handshake ({why})")),
        Presented::Chain(chain) => chain,
    };
    let Some(leaf) = chain.first() else { return Judgement::Wrong("presents no certificate".into()) };
    let fingerprint = fingerprint(leaf);
    if fingerprint != l.fingerprint_sha256 {
        return Judgement::Wrong(format!(
            "presents {} (SHA-256 {}), not the certificate of {} (SHA-256 {})",
            describe(leaf),
            short(&fingerprint),
            l.source,
            short(&l.fingerprint_sha256)
        ));
    }
    match verify_chain(chain, &l.trust, now) {
        Ok(()) => Judgement::Ok,
        Err(e) => Judgement::Wrong(format!(
            "presents the expected certificate, but its chain does not verify against the CA in {}: {e}",
            l.trust_source
        )),
    }
}

/// Serial and expiry of a DER certificate, for messages.
fn describe(der: &[u8]) -> String {
    match x509_parser::parse_x509_certificate(der) {
        Ok((_, c)) => format!("serial {} (not after {})", c.raw_serial_as_string(), c.validity().not_after),
        Err(_) => "an unreadable certificate".into(),
    }
}

fn short(hex: &str) -> String {
    hex.chars().take(23).collect::<String>() + "…"
}

/// Whether `chain` (end-entity first) leads to one of `trust` (a server certificate; the name is
/// not checked: clients reach the brokers under names the operator does not know).
fn verify_chain(chain: &[Vec<u8>], trust: &[Vec<u8>], now: UnixTime) -> Result<(), String> {
    let ders: Vec<CertificateDer<'_>> = trust.iter().map(|d| CertificateDer::from(d.as_slice())).collect();
    let anchors: Vec<_> = ders.iter().filter_map(|d| webpki::anchor_from_trusted_cert(d).ok()).collect();
    if anchors.is_empty() {
        return Err("no readable CA certificate".into());
    }
    let leaf = CertificateDer::from(chain[0].as_slice());
    let intermediates: Vec<CertificateDer<'_>> =
        chain[1..].iter().map(|d| CertificateDer::from(d.as_slice())).collect();
    let ee = webpki::EndEntityCert::try_from(&leaf).map_err(|e| e.to_string())?;
    ee.verify_for_usage(
        webpki::ALL_VERIFICATION_ALGS,
        &anchors,
        &intermediates,
        now,
        webpki::KeyUsage::server_auth(),
        None,
        None,
    )
    .map(|_| ())
    .map_err(|e| e.to_string())
}

/// Connect to `addr` and record the certificates its TLS server sends.
pub async fn probe(addr: SocketAddr) -> Presented {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let capture = Arc::new(Capture { chain: Mutex::default(), provider: provider.clone() });
    let config = match rustls::ClientConfig::builder_with_provider(provider).with_safe_default_protocol_versions() {
        Ok(b) => b.dangerous().with_custom_certificate_verifier(capture.clone()).with_no_client_auth(),
        Err(e) => return Presented::NotTls(e.to_string()),
    };
    let connector = tokio_rustls::TlsConnector::from(Arc::new(config));
    let attempt = async {
        let tcp = tokio::net::TcpStream::connect(addr).await.map_err(|e| Presented::Unreachable(e.to_string()))?;
        // The certificate is captured during the handshake; a listener that then asks for a
        // client certificate ends it with an error, which does not matter here.
        let handshake = connector.connect(ServerName::IpAddress(addr.ip().into()), tcp).await;
        Ok::<_, Presented>(handshake.err().map(|e| e.to_string()))
    };
    let outcome = match tokio::time::timeout(PROBE_TIMEOUT, attempt).await {
        Err(_) => return Presented::Unreachable(format!("no answer within {}s", PROBE_TIMEOUT.as_secs())),
        Ok(Err(p)) => return p,
        Ok(Ok(error)) => error,
    };
    let chain = std::mem::take(&mut *capture.chain.lock().expect("capture lock"));
    if chain.is_empty() {
        return Presented::NotTls(outcome.unwrap_or_else(|| "no certificate".into()));
    }
    Presented::Chain(chain)
}

/// A verifier that accepts any server certificate and keeps it: the check is done afterwards,
/// against the expectation, so that a wrong certificate can be described. Handshake signatures
/// are still verified (the server holds the key of what it presents).
#[derive(Debug)]
struct Capture {
    chain: Mutex<Vec<Vec<u8>>>,
    provider: Arc<CryptoProvider>,
}

impl ServerCertVerifier for Capture {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp_response: &[u8],
        _now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        let mut chain = vec![end_entity.to_vec()];
        chain.extend(intermediates.iter().map(|c| c.to_vec()));
        *self.chain.lock().expect("capture lock") = chain;
        Ok(ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(message, cert, dss, &self.provider.signature_verification_algorithms)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(message, cert, dss, &self.provider.signature_verification_algorithms)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.provider.signature_verification_algorithms.supported_schemes()
    }
}

#[cfg(test)]
mod tests;
