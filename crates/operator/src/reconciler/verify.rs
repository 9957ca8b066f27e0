//! Verification on the wire: before a rolling operation completes, connect to every pod of the
//! workload on each TLS listener the brokers are configured with, and check that it presents the
//! expected certificate (its SHA-256 fingerprint) with a chain that verifies against the CA
//! clients are told to trust, and that the pod runs the current template. What to expect comes
//! from the kind ([`Rolling::wire_expectation`](super::rolling::Rolling::wire_expectation)); this
//! module knows nothing about brokers' configuration.
//!
//! Which pods: only the workload's own ([`Workload::owns`]: the owner chain its controller set),
//! never a pod on the host's network (its IP is a node's). Another pod that carries the
//! selector's labels is neither probed nor counted; an own pod with `hostNetwork` makes the check
//! fail as not verifiable ([`reason::BROKER_NOT_VERIFIABLE`]) rather than connect to a node.
//!
//! How long: each connection has [`CONNECT_TIMEOUT`] to open and [`HANDSHAKE_TIMEOUT`] to bring
//! the server's certificate; the whole check, every pod and listener together, has
//! [`CHECK_BUDGET`]: a peer that accepts TCP and then trickles or says nothing holds a reconcile
//! worker for that long at most.
//!
//! What this module may touch: it lists the workload's pods and opens TLS connections to them.
//! It writes nothing. Only certificates (public) are read off the wire; no client certificate
//! is sent, so a listener that requires one still shows its own certificate first (TLS 1.2 and
//! 1.3 both send the server's certificate, and prove they hold its key, before asking for the
//! client's) and then refuses us.

use std::collections::BTreeMap;
use std::net::{IpAddr, SocketAddr};
use std::sync::atomic::{AtomicBool, Ordering};
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

/// How long one TCP connection may take to open.
pub(crate) const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);
/// How long a TLS handshake may take once connected, until the server has sent its certificate
/// and proved it holds its key: a peer that accepts and then trickles or says nothing is cut here.
pub(crate) const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(5);
/// The most one check may spend on the wire, every pod and listener together. What is not
/// answered by then counts as unreachable, and is looked at again at the next check.
pub(crate) const CHECK_BUDGET: Duration = Duration::from_secs(15);
/// How many connections a check has open at once.
const PROBES_IN_FLIGHT: usize = 32;
/// How many findings a message names before "and N more".
const NAMED_FINDINGS: usize = 3;

/// The time limits of one check.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Budget {
    /// Every probe of the check together.
    pub total: Duration,
    /// One TCP connection.
    pub connect: Duration,
    /// One TLS handshake, once connected.
    pub handshake: Duration,
}

/// The limits every check runs with.
pub(crate) const BUDGET: Budget =
    Budget { total: CHECK_BUDGET, connect: CONNECT_TIMEOUT, handshake: HANDSHAKE_TIMEOUT };

/// What every pod must present on one listener.
#[derive(Debug, Clone)]
pub(crate) struct ListenerExpectation {
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
pub(crate) struct Expectation {
    pub listeners: Vec<ListenerExpectation>,
    pub unchecked: Vec<String>,
}

/// The result of a check of every pod.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Verdict {
    /// Everything expected was presented: what was checked, for the operation record.
    Verified(String),
    /// A pod still runs an older template (being replaced): look again shortly.
    Rolling(String),
    /// A pod presents something else (`VerificationFailed`), could not be reached
    /// (`BrokerUnreachable`), or could be reached only at a node's address
    /// (`BrokerNotVerifiable`): the condition reason and message.
    Failed { reason: &'static str, message: String },
}

/// What one pod presented on one listener.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Presented {
    /// The certificates the server sent, end-entity first (DER).
    Chain(Vec<Vec<u8>>),
    /// The port accepted the connection but no TLS server certificate came back.
    NotTls(String),
    /// No connection (refused, timed out, no route).
    Unreachable(String),
}

/// Check every pod of `workload` against `expected` (and against the template annotations
/// `annotations` the operation set).
pub(crate) async fn check(
    client: &Client,
    namespace: &str,
    workload: &Workload,
    annotations: &BTreeMap<String, String>,
    expected: &Expectation,
) -> kube::Result<Verdict> {
    let pods = super::workload::pods(client, namespace, workload).await?;
    Ok(check_pods(&pods, workload, annotations, expected, BUDGET).await)
}

/// The pods of one check, sorted out before anything is connected to.
#[derive(Debug, Default, PartialEq, Eq)]
struct Plan {
    /// The workload's own pods on the current template, with their pod IP: probed.
    probe: Vec<(String, IpAddr)>,
    /// Own pods of an older template.
    stale: Vec<String>,
    /// Own pods that cannot be reached (no pod IP).
    unreachable: Vec<String>,
    /// Own pods on the host's network: their IP is a node's, never connected to.
    host_network: Vec<String>,
    /// Pods the selector matches that the workload does not own: neither probed nor counted.
    foreign: Vec<String>,
    /// The workload's own pods (not terminating).
    own: usize,
}

/// Sort the pods listed for `workload` (terminating ones left out).
fn plan(pods: &[Pod], workload: &Workload, annotations: &BTreeMap<String, String>) -> Plan {
    let mut pods: Vec<&Pod> = pods.iter().filter(|p| p.metadata.deletion_timestamp.is_none()).collect();
    pods.sort_by_key(|p| p.name_any());
    let mut plan = Plan::default();
    for pod in pods {
        let name = pod.name_any();
        if !workload.owns(pod) {
            plan.foreign.push(name);
            continue;
        }
        plan.own += 1;
        let older = annotations
            .iter()
            .filter(|(k, v)| !v.is_empty() && pod.annotations().get(*k) != Some(*v))
            .map(|(k, _)| k.as_str())
            .next();
        if let Some(key) = older {
            plan.stale.push(format!("pod {name} runs an older pod template ({key} differs)"));
            continue;
        }
        if pod.spec.as_ref().and_then(|s| s.host_network) == Some(true) {
            let ip = pod.status.as_ref().and_then(|s| s.pod_ip.as_deref()).unwrap_or("none yet");
            plan.host_network.push(format!("pod {name} (hostNetwork: its IP {ip} is its node's)"));
            continue;
        }
        let ip = pod.status.as_ref().and_then(|s| s.pod_ip.as_deref()).and_then(|ip| ip.parse::<IpAddr>().ok());
        match ip {
            Some(ip) => plan.probe.push((name, ip)),
            None => plan.unreachable.push(format!("pod {name} has no pod IP")),
        }
    }
    plan
}

/// [`check`] on the pods listed, within `budget`.
async fn check_pods(
    pods: &[Pod],
    workload: &Workload,
    annotations: &BTreeMap<String, String>,
    expected: &Expectation,
    budget: Budget,
) -> Verdict {
    let Plan { probe, mut stale, mut unreachable, host_network, foreign, own } = plan(pods, workload, annotations);
    let targets: Vec<(String, usize, SocketAddr)> = probe
        .iter()
        .flat_map(|(name, ip)| {
            expected.listeners.iter().enumerate().map(|(i, l)| (name.clone(), i, SocketAddr::new(*ip, l.port)))
        })
        .collect();
    let addresses = targets.iter().map(|(_, _, a)| *a).collect();
    let presented = probe_all(addresses, budget).await;
    let mut findings = Vec::new();
    for ((name, i, _), p) in targets.into_iter().zip(presented) {
        let l = &expected.listeners[i];
        match judge(l, &p, UnixTime::now()) {
            Judgement::Ok => {}
            Judgement::Wrong(what) => findings.push(format!("pod {name} port {} ({}) {what}", l.port, l.name)),
            Judgement::Unreachable(why) => unreachable.push(format!("pod {name} port {} ({}): {why}", l.port, l.name)),
        }
    }
    let workload_text = describe_workload(workload);
    let missing = usize::try_from(workload.replicas).unwrap_or(0).saturating_sub(own);
    if findings.is_empty() && unreachable.is_empty() && (!stale.is_empty() || missing > 0) {
        // The workload reports the rollout done while a pod of the old template is still there
        // (a Deployment's old ReplicaSet scaling down), or one of its pods is being replaced:
        // it is going, not wrong. Pods it does not own never stand in for the missing ones.
        if missing > 0 {
            stale.push(format!(
                "{own} of {} pod(s) of {workload_text} there (pods it does not own are not counted)",
                workload.replicas
            ));
        }
        return Verdict::Rolling(format!("Waiting for the pods of the current template: {}.", count(&stale)));
    }
    findings.extend(stale);
    if !findings.is_empty() {
        let message = format!(
            "The brokers do not serve what was put in place: {}. A broker that was not restarted, or that does not \
             read the mounted files, keeps its old certificate; see docs/troubleshooting.md.",
            count(&findings)
        );
        return Verdict::Failed { reason: reason::VERIFICATION_FAILED, message };
    }
    if !unreachable.is_empty() {
        let message = format!(
            "Cannot reach the brokers to check their certificates: {}. If a NetworkPolicy keeps the operator \
             out, allow it to the listener ports, or set spec.verify.enabled: false.",
            count(&unreachable)
        );
        return Verdict::Failed { reason: reason::BROKER_UNREACHABLE, message };
    }
    // With no TLS listener to check nothing would be connected to: a hostNetwork pod is no matter.
    if !host_network.is_empty() && !expected.listeners.is_empty() {
        let message = format!(
            "Cannot check on the wire what these brokers present: {}. The operator never connects to a node's \
             address (another process of that node may answer there). Run the brokers without hostNetwork, or set \
             spec.verify.enabled: false to complete without the check on the wire.",
            count(&host_network)
        );
        return Verdict::Failed { reason: reason::BROKER_NOT_VERIFIABLE, message };
    }
    Verdict::Verified(summary(probe.len(), expected, &foreign, &workload_text))
}

/// `StatefulSet kafka`, as messages name the workload.
fn describe_workload(w: &Workload) -> String {
    match w.kind {
        Some(cluster_security_api::WorkloadKind::StatefulSet) => format!("StatefulSet {}", w.name),
        Some(cluster_security_api::WorkloadKind::Deployment) => format!("Deployment {}", w.name),
        None => format!("the workload {}", w.name),
    }
}

/// At most [`NAMED_FINDINGS`] of `v`, then how many more.
fn count(v: &[String]) -> String {
    let mut text = v.iter().take(NAMED_FINDINGS).cloned().collect::<Vec<_>>().join("; ");
    if v.len() > NAMED_FINDINGS {
        text.push_str(&format!("; and {} more", v.len() - NAMED_FINDINGS));
    }
    text
}

/// What a successful check covered, for the operation record: how many pods, which listeners,
/// the pods left alone (`foreign`: matched by the selector, not owned by `workload`) and what
/// could not be checked.
fn summary(pods: usize, expected: &Expectation, foreign: &[String], workload: &str) -> String {
    let mut text = if expected.listeners.is_empty() {
        "No TLS listener to check.".to_string()
    } else {
        let listeners: Vec<String> = expected.listeners.iter().map(|l| format!("{} ({})", l.name, l.port)).collect();
        format!(
            "{pods} pod(s) present the expected certificate on {}, each chain verified against the published CA.",
            listeners.join(", ")
        )
    };
    if !foreign.is_empty() {
        text.push_str(&format!(
            " Not probed: {} (the selector matches, but {workload} does not own it).",
            count(&foreign.iter().map(|p| format!("pod {p}")).collect::<Vec<_>>())
        ));
    }
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

/// Probe every address, [`PROBES_IN_FLIGHT`] at a time, all within `budget.total`: what is not
/// answered by then is unreachable. In the order given.
async fn probe_all(addresses: Vec<SocketAddr>, budget: Budget) -> Vec<Presented> {
    let deadline = tokio::time::Instant::now() + budget.total;
    let out_of_time = move || {
        Presented::Unreachable(format!(
            "no answer within the check's budget of {}s (every pod and listener together)",
            budget.total.as_secs()
        ))
    };
    futures::stream::iter(addresses)
        .map(|addr| async move {
            if tokio::time::Instant::now() >= deadline {
                return out_of_time();
            }
            tokio::time::timeout_at(deadline, probe_within(addr, budget)).await.unwrap_or_else(|_| out_of_time())
        })
        .buffered(PROBES_IN_FLIGHT)
        .collect()
        .await
}

/// Connect to `addr` and record the certificates its TLS server sends, within the connection and
/// handshake limits of `budget`.
async fn probe_within(addr: SocketAddr, budget: Budget) -> Presented {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let capture =
        Arc::new(Capture { chain: Mutex::default(), signed: AtomicBool::new(false), provider: provider.clone() });
    let config = match rustls::ClientConfig::builder_with_provider(provider).with_safe_default_protocol_versions() {
        Ok(b) => b.dangerous().with_custom_certificate_verifier(capture.clone()).with_no_client_auth(),
        Err(e) => return Presented::NotTls(e.to_string()),
    };
    let connector = tokio_rustls::TlsConnector::from(Arc::new(config));
    let tcp = match tokio::time::timeout(budget.connect, tokio::net::TcpStream::connect(addr)).await {
        Err(_) => return Presented::Unreachable(format!("no connection within {}s", budget.connect.as_secs())),
        Ok(Err(e)) => return Presented::Unreachable(e.to_string()),
        Ok(Ok(tcp)) => tcp,
    };
    // The certificate is captured during the handshake; a listener that then asks for a client
    // certificate ends it with an error, which does not matter here.
    let handshake =
        tokio::time::timeout(budget.handshake, connector.connect(ServerName::IpAddress(addr.ip().into()), tcp));
    let error = match handshake.await {
        Ok(Ok(_)) => None,
        Ok(Err(e)) => Some(e.to_string()),
        Err(_) => Some(format!("no TLS answer within {}s", budget.handshake.as_secs())),
    };
    let chain = std::mem::take(&mut *capture.chain.lock().expect("capture lock"));
    // Only a certificate the server proved it holds the key of counts as presented.
    if !chain.is_empty() && capture.signed.load(Ordering::SeqCst) {
        return Presented::Chain(chain);
    }
    match error {
        Some(e) if e.starts_with("no TLS answer within") => Presented::Unreachable(e),
        Some(e) if !chain.is_empty() => {
            Presented::NotTls(format!("it sent a certificate without proof of its key: {e}"))
        }
        Some(e) => Presented::NotTls(e),
        None => Presented::NotTls("no certificate".into()),
    }
}

/// A verifier that accepts any server certificate and keeps it: the check is done afterwards,
/// against the expectation, so that a wrong certificate can be described. Handshake signatures
/// are still verified, and `signed` records that one was (the server holds the key of what it
/// presents): a certificate is captured before its proof arrives.
#[derive(Debug)]
struct Capture {
    chain: Mutex<Vec<Vec<u8>>>,
    signed: AtomicBool,
    provider: Arc<CryptoProvider>,
}

impl Capture {
    fn proved(
        &self,
        r: Result<HandshakeSignatureValid, rustls::Error>,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        if r.is_ok() {
            self.signed.store(true, Ordering::SeqCst);
        }
        r
    }
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
        self.proved(rustls::crypto::verify_tls12_signature(
            message,
            cert,
            dss,
            &self.provider.signature_verification_algorithms,
        ))
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.proved(rustls::crypto::verify_tls13_signature(
            message,
            cert,
            dss,
            &self.provider.signature_verification_algorithms,
        ))
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.provider.signature_verification_algorithms.supported_schemes()
    }
}

#[cfg(test)]
mod tests;
