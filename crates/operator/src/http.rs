//! Outbound HTTPS (the cloud provider's APIs): one reqwest client over rustls with the ring
//! provider, trusting the public web roots and, optionally, extra CAs (a private cloud endpoint,
//! a TLS-inspecting proxy, or the local Azure emulator in tests).

use std::sync::Arc;
use std::time::Duration;

/// Why an HTTPS client could not be built.
#[derive(Debug, thiserror::Error)]
pub(crate) enum ClientError {
    #[error("the extra CA bundle is not PEM with at least one certificate: {0}")]
    BadCaBundle(String),
    #[error("building the TLS configuration: {0}")]
    Tls(#[from] rustls::Error),
    #[error("building the HTTP client: {0}")]
    Http(#[from] reqwest::Error),
}

/// rustls settings: public web roots (when `public_roots`) plus every certificate in
/// `extra_ca_pem`.
pub(crate) fn tls_config(extra_ca_pem: Option<&[u8]>, public_roots: bool) -> Result<rustls::ClientConfig, ClientError> {
    use rustls::pki_types::pem::PemObject;
    use rustls::pki_types::CertificateDer;
    let mut roots = rustls::RootCertStore::empty();
    if public_roots {
        roots.extend(webpki_roots::TLS_SERVER_ROOTS.iter().cloned());
    }
    if let Some(pem) = extra_ca_pem {
        let certs: Vec<CertificateDer<'static>> = CertificateDer::pem_slice_iter(pem)
            .collect::<Result<_, _>>()
            .map_err(|e| ClientError::BadCaBundle(e.to_string()))?;
        if certs.is_empty() {
            return Err(ClientError::BadCaBundle("no CERTIFICATE block found".into()));
        }
        for c in certs {
            roots.add(c)?;
        }
    }
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    Ok(rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()?
        .with_root_certificates(roots)
        .with_no_client_auth())
}

/// A client for HTTPS APIs with sane timeouts.
pub(crate) fn https_client(extra_ca_pem: Option<&[u8]>, public_roots: bool) -> Result<reqwest::Client, ClientError> {
    Ok(reqwest::Client::builder()
        .use_preconfigured_tls(tls_config(extra_ca_pem, public_roots)?)
        .connect_timeout(Duration::from_secs(10))
        .timeout(Duration::from_secs(60))
        // A bearer token goes with every request: follow nothing the server points at.
        .redirect(reqwest::redirect::Policy::none())
        .https_only(true)
        .build()?)
}
