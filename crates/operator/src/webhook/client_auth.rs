//! The webhook's TLS server configuration, and the optional mode in which it answers only
//! kube-apiserver: a client certificate is then required in the TLS handshake, chained to the CA
//! of `--webhook-client-ca-file` and, with `--webhook-client-names`, naming one of those names
//! (subject CN or DNS SAN). kube-apiserver presents such a certificate when its
//! AdmissionConfiguration gives the webhook plugin a kubeconfig with a client certificate
//! (docs/security.md). A pod that reaches the port without one never gets past the handshake.
//!
//! What this module may touch: nothing; it builds rustls configurations.

use std::sync::Arc;

use rustls::client::danger::HandshakeSignatureValid;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, UnixTime};
use rustls::server::danger::{ClientCertVerified, ClientCertVerifier};
use rustls::server::WebPkiClientVerifier;
use rustls::{DigitallySignedStruct, DistinguishedName, RootCertStore, ServerConfig, SignatureScheme};

/// Why a TLS configuration could not be built.
#[derive(Debug, thiserror::Error)]
pub(crate) enum TlsConfigError {
    #[error("the webhook serving certificate or key does not load: {0}")]
    Serving(String),
    #[error("--webhook-client-ca-file holds no usable CA certificate: {0}")]
    ClientCa(String),
}

/// Who may call the webhook: clients with a certificate chained to `roots`, naming one of
/// `names` when that is not empty.
#[derive(Clone, Debug)]
pub(crate) struct ClientAuth {
    roots: Arc<RootCertStore>,
    names: Vec<String>,
}

impl ClientAuth {
    /// From the PEM of `--webhook-client-ca-file` and `--webhook-client-names`.
    pub(crate) fn from_pem(ca_pem: &[u8], names: Vec<String>) -> Result<Self, TlsConfigError> {
        let mut roots = RootCertStore::empty();
        for der in CertificateDer::pem_slice_iter(ca_pem) {
            let der = der.map_err(|e| TlsConfigError::ClientCa(e.to_string()))?;
            roots.add(der).map_err(|e| TlsConfigError::ClientCa(e.to_string()))?;
        }
        if roots.is_empty() {
            return Err(TlsConfigError::ClientCa("no PEM certificate in the file".into()));
        }
        Ok(Self { roots: Arc::new(roots), names: names.into_iter().filter(|n| !n.is_empty()).collect() })
    }
}

/// The server configuration for the serving pair `cert_pem`/`key_pem`, requiring a client
/// certificate when `client_auth` is given.
pub(crate) fn server_config(
    cert_pem: &[u8],
    key_pem: &[u8],
    client_auth: Option<&ClientAuth>,
) -> Result<Arc<ServerConfig>, TlsConfigError> {
    let serving = |e: &dyn std::fmt::Display| TlsConfigError::Serving(e.to_string());
    let chain = CertificateDer::pem_slice_iter(cert_pem).collect::<Result<Vec<_>, _>>().map_err(|e| serving(&e))?;
    let key = PrivateKeyDer::from_pem_slice(key_pem).map_err(|e| serving(&e))?;
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let builder = ServerConfig::builder_with_provider(provider.clone())
        .with_safe_default_protocol_versions()
        .map_err(|e| serving(&e))?;
    let builder = match client_auth {
        None => builder.with_no_client_auth(),
        Some(auth) => {
            let inner = WebPkiClientVerifier::builder_with_provider(auth.roots.clone(), provider)
                .build()
                .map_err(|e| TlsConfigError::ClientCa(e.to_string()))?;
            builder.with_client_cert_verifier(Arc::new(Named { inner, names: auth.names.clone() }))
        }
    };
    let mut config = builder.with_single_cert(chain, key).map_err(|e| serving(&e))?;
    config.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
    Ok(Arc::new(config))
}

/// A chain check (WebPKI, client authentication usage) and then a name check on the leaf.
#[derive(Debug)]
struct Named {
    inner: Arc<dyn ClientCertVerifier>,
    names: Vec<String>,
}

/// The subject common names and DNS names of a certificate.
fn names_of(der: &[u8]) -> Vec<String> {
    use x509_parser::prelude::{FromDer, GeneralName, X509Certificate};
    let Ok((_, cert)) = X509Certificate::from_der(der) else { return Vec::new() };
    let mut out: Vec<String> =
        cert.subject().iter_common_name().filter_map(|cn| cn.as_str().ok().map(String::from)).collect();
    if let Ok(Some(san)) = cert.subject_alternative_name() {
        out.extend(san.value.general_names.iter().filter_map(|n| match n {
            GeneralName::DNSName(d) => Some(d.to_string()),
            _ => None,
        }));
    }
    out
}

impl ClientCertVerifier for Named {
    fn root_hint_subjects(&self) -> &[DistinguishedName] {
        self.inner.root_hint_subjects()
    }

    fn verify_client_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        now: UnixTime,
    ) -> Result<ClientCertVerified, rustls::Error> {
        let verified = self.inner.verify_client_cert(end_entity, intermediates, now)?;
        if self.names.is_empty() || names_of(end_entity).iter().any(|n| self.names.contains(n)) {
            Ok(verified)
        } else {
            Err(rustls::Error::InvalidCertificate(rustls::CertificateError::ApplicationVerificationFailure))
        }
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.inner.verify_tls12_signature(message, cert, dss)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.inner.verify_tls13_signature(message, cert, dss)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.inner.supported_verify_schemes()
    }
}
