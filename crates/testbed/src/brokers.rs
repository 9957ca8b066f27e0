//! Broker stand-ins: what a Kafka broker would serve on its TLS listeners, read from the pod the
//! way a broker reads it, **when the pod starts**. The play kubelet starts one set per pod, on
//! the pod's own loopback address (its `podIP`), and stops it when the pod goes.
//!
//! A broker finds its `server.properties` in a ConfigMap volume of its container; for every
//! `SSL`/`SASL_SSL` listener it reads the keystore (`${dir:<mount path>:tls.crt|tls.key}`,
//! Kafka's DirectoryConfigProvider) from the Secret mounted at that path, and with
//! `ssl.client.auth=required` asks clients for a certificate from the truststore's CA. So does
//! this stand-in, with rustls and independently of the operator's code. A pod that is not
//! restarted keeps serving what it read at start, as a real broker would; a listener whose
//! material is missing is not served (a broker would not start). Nothing here speaks Kafka: the
//! TLS handshake is what the operator and tests look at.

use std::collections::BTreeMap;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::sync::Arc;

use k8s_openapi::api::core::v1::{ConfigMap, Container, Pod, Secret};
use kube::{Api, Client, ResourceExt};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::server::WebPkiClientVerifier;
use rustls::{RootCertStore, ServerConfig};
use tracing::{debug, warn};

/// The file a broker's configuration is read from.
const SERVER_PROPERTIES: &str = "server.properties";

/// Listeners served for one pod; they stop when this is dropped.
pub struct Serving {
    pub ip: Ipv4Addr,
    /// What is served.
    pub listeners: Vec<Listener>,
    tasks: Vec<tokio::task::JoinHandle<()>>,
}

impl Drop for Serving {
    fn drop(&mut self) {
        for t in &self.tasks {
            t.abort();
        }
        loaded_registry().remove(&self.ip);
    }
}

/// What one listener of a pod loaded at start (tests act as that broker with it).
#[derive(Clone)]
pub struct Loaded {
    pub listener: String,
    pub port: u16,
    pub chain_pem: String,
    pub key_pem: String,
    /// The truststore, when the listener asks clients for a certificate.
    pub trust_pem: Option<String>,
}

fn loaded_registry() -> std::sync::MutexGuard<'static, BTreeMap<Ipv4Addr, Vec<Loaded>>> {
    static LOADED: std::sync::OnceLock<std::sync::Mutex<BTreeMap<Ipv4Addr, Vec<Loaded>>>> = std::sync::OnceLock::new();
    LOADED.get_or_init(Default::default).lock().unwrap_or_else(|e| e.into_inner())
}

/// What the pod serving on `ip` loaded for each listener, while it serves.
pub fn loaded(ip: Ipv4Addr) -> Vec<Loaded> {
    loaded_registry().get(&ip).cloned().unwrap_or_default()
}

/// Loopback addresses for pods: `127.<base>.x.y`, never handed out twice by one allocator.
/// `base` comes from the process id, so two test beds on one machine rarely share addresses.
pub struct Addresses {
    base: u8,
    next: u32,
}

impl Default for Addresses {
    fn default() -> Self {
        Self { base: 100 + (std::process::id() % 100) as u8, next: 0 }
    }
}

impl Addresses {
    pub fn allocate(&mut self) -> Ipv4Addr {
        let n = self.next % (254 * 256);
        self.next += 1;
        Ipv4Addr::new(127, self.base, (n / 254) as u8, (n % 254 + 1) as u8)
    }
}

/// The TLS listeners a broker would open for `pod`, from what it mounts now: `(listener, port,
/// server)`. Never fails: what cannot be served is logged and left out.
pub async fn read_listeners(client: &Client, pod: &Pod) -> Vec<Listener> {
    let mut out = Vec::new();
    let ns = pod.namespace().unwrap_or_default();
    let Some((container, properties)) = find_config(client, pod, &ns).await else { return out };
    let config = parse_properties(&properties);
    for listener in tls_listeners(&config) {
        match server_config(client, pod, &ns, container, &config, &listener.name).await {
            Ok((tls, loaded)) => {
                let loaded = Loaded { port: listener.port, ..loaded };
                out.push(Listener { name: listener.name, port: listener.port, tls: Arc::new(tls), loaded })
            }
            Err(e) => debug!(pod = %pod.name_any(), listener = %listener.name, error = %e, "listener not served"),
        }
    }
    out
}

/// One TLS listener as a broker opened it.
#[derive(Clone)]
pub struct Listener {
    pub name: String,
    pub port: u16,
    tls: Arc<ServerConfig>,
    loaded: Loaded,
}

/// Serve `listeners` on `ip` until the returned value is dropped.
pub async fn serve(ip: Ipv4Addr, listeners: Vec<Listener>) -> Serving {
    let mut serving = Serving { ip, listeners: Vec::new(), tasks: Vec::new() };
    loaded_registry().insert(ip, listeners.iter().map(|l| l.loaded.clone()).collect());
    for l in listeners {
        let addr = SocketAddr::new(IpAddr::V4(ip), l.port);
        match tokio::net::TcpListener::bind(addr).await {
            Ok(socket) => {
                serving.tasks.push(tokio::spawn(accept(socket, l.tls.clone())));
                serving.listeners.push(l);
            }
            Err(e) => warn!(%addr, error = %e, "broker stand-in cannot bind"),
        }
    }
    serving
}

async fn accept(socket: tokio::net::TcpListener, tls: Arc<ServerConfig>) {
    let acceptor = tokio_rustls::TlsAcceptor::from(tls);
    while let Ok((stream, _)) = socket.accept().await {
        let acceptor = acceptor.clone();
        tokio::spawn(async move {
            // The handshake is all a client gets; then the connection closes cleanly (close_notify).
            let five = std::time::Duration::from_secs(5);
            if let Ok(Ok(mut tls)) = tokio::time::timeout(five, acceptor.accept(stream)).await {
                use tokio::io::AsyncWriteExt;
                let _ = tokio::time::timeout(five, tls.shutdown()).await;
            }
        });
    }
}

/// The first container with a ConfigMap volume holding `server.properties`, and that file.
async fn find_config<'p>(client: &Client, pod: &'p Pod, ns: &str) -> Option<(&'p Container, String)> {
    let spec = pod.spec.as_ref()?;
    let cms: Api<ConfigMap> = Api::namespaced(client.clone(), ns);
    for c in &spec.containers {
        for m in c.volume_mounts.iter().flatten() {
            let Some(name) = volume_source(pod, &m.name).and_then(|v| v.config_map) else { continue };
            let data = cms.get_opt(&name).await.ok().flatten().and_then(|cm| cm.data).unwrap_or_default();
            if let Some(text) = data.get(SERVER_PROPERTIES) {
                return Some((c, text.clone()));
            }
        }
    }
    None
}

/// Where a volume's content comes from.
#[derive(Default)]
struct VolumeSource {
    config_map: Option<String>,
    secret: Option<String>,
}

fn volume_source(pod: &Pod, volume: &str) -> Option<VolumeSource> {
    let v = pod.spec.as_ref()?.volumes.iter().flatten().find(|v| v.name == volume)?;
    Some(VolumeSource {
        config_map: v.config_map.as_ref().map(|c| c.name.clone()),
        secret: v.secret.as_ref().and_then(|s| s.secret_name.clone()),
    })
}

/// `key=value` lines (comments and blanks skipped).
pub fn parse_properties(text: &str) -> BTreeMap<String, String> {
    text.lines()
        .map(str::trim)
        .filter(|l| !l.is_empty() && !l.starts_with('#'))
        .filter_map(|l| l.split_once('='))
        .map(|(k, v)| (k.trim().to_string(), v.trim().to_string()))
        .collect()
}

#[derive(Debug, PartialEq, Eq)]
pub struct TlsListener {
    pub name: String,
    pub port: u16,
}

/// The listeners whose protocol (`listener.security.protocol.map`) is SSL or SASL_SSL.
pub fn tls_listeners(config: &BTreeMap<String, String>) -> Vec<TlsListener> {
    let protocols: BTreeMap<&str, &str> = config
        .get("listener.security.protocol.map")
        .map(|m| m.split(',').filter_map(|p| p.split_once(':')).collect())
        .unwrap_or_default();
    let listeners = config.get("listeners").map(String::as_str).unwrap_or_default();
    listeners
        .split(',')
        .filter_map(|l| {
            let (name, rest) = l.trim().split_once("://")?;
            let port = rest.rsplit(':').next()?.parse().ok()?;
            matches!(protocols.get(name).copied(), Some("SSL" | "SASL_SSL"))
                .then(|| TlsListener { name: name.to_string(), port })
        })
        .collect()
}

/// A listener's setting: `listener.name.<name>.<key>`, else the broker-wide `<key>`.
fn setting<'c>(config: &'c BTreeMap<String, String>, listener: &str, key: &str) -> Option<&'c str> {
    config
        .get(&format!("listener.name.{}.{key}", listener.to_lowercase()))
        .or_else(|| config.get(key))
        .map(String::as_str)
}

/// `${dir:<path>:<file>}` → (path, file).
pub fn dir_reference(value: &str) -> Option<(&str, &str)> {
    let inner = value.strip_prefix("${dir:")?.strip_suffix('}')?;
    inner.rsplit_once(':')
}

/// The content of `file` in the directory `path` of `container`, from the Secret or ConfigMap
/// mounted there.
async fn mounted_file(
    client: &Client,
    pod: &Pod,
    ns: &str,
    container: &Container,
    reference: &str,
) -> anyhow::Result<Vec<u8>> {
    let (path, file) = dir_reference(reference).ok_or_else(|| anyhow::anyhow!("not a ${{dir:…}} reference"))?;
    let mount = container
        .volume_mounts
        .iter()
        .flatten()
        .find(|m| m.mount_path.trim_end_matches('/') == path.trim_end_matches('/'))
        .ok_or_else(|| anyhow::anyhow!("nothing is mounted at {path}"))?;
    let source = volume_source(pod, &mount.name).unwrap_or_default();
    if let Some(name) = source.secret {
        let s = Api::<Secret>::namespaced(client.clone(), ns).get(&name).await?;
        return s
            .data
            .and_then(|d| d.get(file).map(|b| b.0.clone()))
            .ok_or_else(|| anyhow::anyhow!("{name} has no {file}"));
    }
    if let Some(name) = source.config_map {
        let cm = Api::<ConfigMap>::namespaced(client.clone(), ns).get(&name).await?;
        return cm
            .data
            .and_then(|d| d.get(file).map(|s| s.clone().into_bytes()))
            .ok_or_else(|| anyhow::anyhow!("{name} has no {file}"));
    }
    anyhow::bail!("volume {} is neither a Secret nor a ConfigMap", mount.name)
}

/// The CA certificates of a PEM bundle, as trust anchors.
fn roots(pem: &[u8]) -> anyhow::Result<RootCertStore> {
    let mut roots = RootCertStore::empty();
    for ca in CertificateDer::pem_slice_iter(pem) {
        roots.add(ca?)?;
    }
    Ok(roots)
}

/// The TLS server a broker would run for `listener`.
async fn server_config(
    client: &Client,
    pod: &Pod,
    ns: &str,
    container: &Container,
    config: &BTreeMap<String, String>,
    listener: &str,
) -> anyhow::Result<(ServerConfig, Loaded)> {
    let need = |key: &str| setting(config, listener, key).ok_or_else(|| anyhow::anyhow!("no {key}"));
    let chain_pem = mounted_file(client, pod, ns, container, need("ssl.keystore.certificate.chain")?).await?;
    let key_pem = mounted_file(client, pod, ns, container, need("ssl.keystore.key")?).await?;
    let chain: Vec<CertificateDer<'static>> = CertificateDer::pem_slice_iter(&chain_pem).collect::<Result<_, _>>()?;
    let key = PrivateKeyDer::from_pem_slice(&key_pem)?;
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let builder = ServerConfig::builder_with_provider(provider.clone()).with_safe_default_protocol_versions()?;
    let mut loaded = Loaded {
        listener: listener.to_string(),
        port: 0,
        chain_pem: String::from_utf8_lossy(&chain_pem).into_owned(),
        key_pem: String::from_utf8_lossy(&key_pem).into_owned(),
        trust_pem: None,
    };
    let tls = if setting(config, listener, "ssl.client.auth") == Some("required") {
        let bundle = mounted_file(client, pod, ns, container, need("ssl.truststore.certificates")?).await?;
        let roots = roots(&bundle)?;
        loaded.trust_pem = Some(String::from_utf8_lossy(&bundle).into_owned());
        let verifier = WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider).build()?;
        builder.with_client_cert_verifier(verifier).with_single_cert(chain, key)?
    } else {
        builder.with_no_client_auth().with_single_cert(chain, key)?
    };
    Ok((tls, loaded))
}

/// What a client that trusts `trust_pem` sees when it connects to `addr` as `server_name` (a
/// broker's DNS name): the end-entity certificate (DER), once the chain **and the name** verified.
/// A listener that then wants a client certificate ends the handshake afterwards; that does not
/// matter here. Errors say why the client would not trust the broker.
pub async fn trusted_certificate(addr: SocketAddr, trust_pem: &str, server_name: &str) -> anyhow::Result<Vec<u8>> {
    let roots = roots(trust_pem.as_bytes())?;
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let webpki =
        rustls::client::WebPkiServerVerifier::builder_with_provider(Arc::new(roots), provider.clone()).build()?;
    let recorder = Arc::new(Recorder { inner: webpki, leaf: std::sync::Mutex::default() });
    let config = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()?
        .dangerous()
        .with_custom_certificate_verifier(recorder.clone())
        .with_no_client_auth();
    let name = rustls::pki_types::ServerName::try_from(server_name.to_string())?;
    let tcp = tokio::time::timeout(std::time::Duration::from_secs(5), tokio::net::TcpStream::connect(addr)).await??;
    let result = tokio::time::timeout(
        std::time::Duration::from_secs(5),
        tokio_rustls::TlsConnector::from(Arc::new(config)).connect(name, tcp),
    )
    .await?;
    let leaf = recorder.leaf.lock().expect("recorder lock").take();
    match (leaf, result) {
        (Some(leaf), _) => Ok(leaf),
        (None, Err(e)) => Err(e.into()),
        (None, Ok(_)) => anyhow::bail!("no certificate was verified"),
    }
}

/// A full mutual-TLS handshake with `addr` as `server_name`, trusting `trust_pem` and presenting
/// the client certificate `cert_pem` / `key_pem`: Ok once the server accepted the client's
/// certificate (it reads the client's Finished and, here, closes cleanly), an error saying why
/// otherwise (the server's alert: unknown CA, certificate required, …).
pub async fn mutual_tls_handshake(
    addr: SocketAddr,
    trust_pem: &str,
    server_name: &str,
    cert_pem: &str,
    key_pem: &str,
) -> anyhow::Result<()> {
    use tokio::io::AsyncReadExt;
    let roots = roots(trust_pem.as_bytes())?;
    let chain: Vec<CertificateDer<'static>> =
        CertificateDer::pem_slice_iter(cert_pem.as_bytes()).collect::<Result<_, _>>()?;
    let key = PrivateKeyDer::from_pem_slice(key_pem.as_bytes())?;
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let config = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()?
        .with_root_certificates(roots)
        .with_client_auth_cert(chain, key)?;
    let name = rustls::pki_types::ServerName::try_from(server_name.to_string())?;
    let five = std::time::Duration::from_secs(5);
    let tcp = tokio::time::timeout(five, tokio::net::TcpStream::connect(addr)).await??;
    let mut tls =
        tokio::time::timeout(five, tokio_rustls::TlsConnector::from(Arc::new(config)).connect(name, tcp)).await??;
    // TLS 1.3: the server judges the client's certificate after the client's side is done; its
    // verdict is the next thing on the wire (an alert, or the stand-in's clean close).
    let mut buf = [0u8; 1];
    tokio::time::timeout(five, tls.read(&mut buf)).await??;
    Ok(())
}

/// rustls' own verification, remembering the end-entity certificate it accepted.
#[derive(Debug)]
struct Recorder {
    inner: Arc<rustls::client::WebPkiServerVerifier>,
    leaf: std::sync::Mutex<Option<Vec<u8>>>,
}

impl rustls::client::danger::ServerCertVerifier for Recorder {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        server_name: &rustls::pki_types::ServerName<'_>,
        ocsp: &[u8],
        now: rustls::pki_types::UnixTime,
    ) -> Result<rustls::client::danger::ServerCertVerified, rustls::Error> {
        let verified = self.inner.verify_server_cert(end_entity, intermediates, server_name, ocsp, now)?;
        *self.leaf.lock().expect("recorder lock") = Some(end_entity.to_vec());
        Ok(verified)
    }
    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &rustls::DigitallySignedStruct,
    ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
        self.inner.verify_tls12_signature(message, cert, dss)
    }
    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &rustls::DigitallySignedStruct,
    ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
        self.inner.verify_tls13_signature(message, cert, dss)
    }
    fn supported_verify_schemes(&self) -> Vec<rustls::SignatureScheme> {
        self.inner.supported_verify_schemes()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_tls_listeners_and_directory_references_like_a_broker() {
        let config = parse_properties(
            "# comment\nlisteners=PLAINTEXT://:9092,TLS://:9094,REPLICATION://0.0.0.0:9091\n\
             listener.security.protocol.map=PLAINTEXT:PLAINTEXT,TLS:SSL,REPLICATION:SSL\n\
             listener.name.tls.ssl.keystore.key=${dir:/etc/kafka/security/external-tls:tls.key}\n\
             ssl.keystore.key=${dir:/etc/x:tls.key}\n",
        );
        let names: Vec<(String, u16)> = tls_listeners(&config).into_iter().map(|l| (l.name, l.port)).collect();
        assert_eq!(names, [("TLS".to_string(), 9094), ("REPLICATION".to_string(), 9091)]);
        assert_eq!(
            setting(&config, "TLS", "ssl.keystore.key").and_then(dir_reference),
            Some(("/etc/kafka/security/external-tls", "tls.key"))
        );
        assert_eq!(
            setting(&config, "REPLICATION", "ssl.keystore.key").and_then(dir_reference),
            Some(("/etc/x", "tls.key"))
        );
    }

    #[test]
    fn addresses_are_not_reused() {
        let mut a = Addresses::default();
        let first: Vec<Ipv4Addr> = (0..600).map(|_| a.allocate()).collect();
        let unique: std::collections::HashSet<_> = first.iter().collect();
        assert_eq!(unique.len(), first.len());
        assert!(first.iter().all(|ip| ip.is_loopback() && ip.octets()[3] != 0 && ip.octets()[3] != 255));
    }
}
