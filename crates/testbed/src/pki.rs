//! Certificates for the test bed and for tests, made and read independently of the operator's
//! own code: the control plane's serving and client certificates, the Azure emulator's, and the
//! CAs and leaves tests plant in Secrets; fingerprints read with x509-parser and ring, so a test
//! never checks the operator's certificates with the operator's parser.

use k8s_openapi::jiff::Timestamp;
use rcgen::{
    BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair, KeyUsagePurpose,
};

/// A certificate with its private key, both PEM.
#[derive(Clone)]
pub struct KeyedCert {
    pub cert_pem: String,
    pub key_pem: String,
}

impl std::fmt::Debug for KeyedCert {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("KeyedCert").field("cert_pem", &self.cert_pem).finish_non_exhaustive()
    }
}

/// What a leaf is for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Usage {
    Server,
    ServerAndClient,
    Client,
}

/// Valid from a minute before `now` for `days` days.
fn params(sans: Vec<String>, common_name: &str, now: Timestamp, days: u32) -> anyhow::Result<CertificateParams> {
    let mut p = CertificateParams::new(sans)?;
    p.distinguished_name.push(DnType::CommonName, common_name);
    p.not_before = time::OffsetDateTime::from_unix_timestamp(now.as_second() - 60)?;
    p.not_after = time::OffsetDateTime::from_unix_timestamp(now.as_second() + i64::from(days) * 86_400)?;
    Ok(p)
}

/// A self-signed CA.
pub fn new_ca(common_name: &str, now: Timestamp, days: u32) -> anyhow::Result<KeyedCert> {
    let mut p = params(Vec::new(), common_name, now, days)?;
    p.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    p.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::DigitalSignature];
    let key = KeyPair::generate()?;
    Ok(KeyedCert { cert_pem: p.self_signed(&key)?.pem(), key_pem: key.serialize_pem() })
}

/// A leaf for `sans` signed by `ca`; `organization` goes into the subject (the API server reads
/// it as the client's group).
pub fn leaf(
    ca: &KeyedCert,
    common_name: &str,
    organization: Option<&str>,
    sans: &[String],
    usage: Usage,
    now: Timestamp,
    days: u32,
) -> anyhow::Result<KeyedCert> {
    let issuer = Issuer::from_ca_cert_pem(&ca.cert_pem, KeyPair::from_pem(&ca.key_pem)?)?;
    let mut p = params(sans.to_vec(), common_name, now, days)?;
    if let Some(o) = organization {
        p.distinguished_name.push(DnType::OrganizationName, o);
    }
    p.use_authority_key_identifier_extension = true;
    p.key_usages = vec![KeyUsagePurpose::DigitalSignature, KeyUsagePurpose::KeyEncipherment];
    p.extended_key_usages = match usage {
        Usage::Server => vec![ExtendedKeyUsagePurpose::ServerAuth],
        Usage::Client => vec![ExtendedKeyUsagePurpose::ClientAuth],
        Usage::ServerAndClient => vec![ExtendedKeyUsagePurpose::ServerAuth, ExtendedKeyUsagePurpose::ClientAuth],
    };
    let key = KeyPair::generate()?;
    Ok(KeyedCert { cert_pem: p.signed_by(&key, &issuer)?.pem(), key_pem: key.serialize_pem() })
}

/// A server (or server-and-client) leaf with no organization.
pub fn issue_leaf(
    ca: &KeyedCert,
    common_name: &str,
    sans: &[String],
    usage: Usage,
    now: Timestamp,
    days: u32,
) -> anyhow::Result<KeyedCert> {
    leaf(ca, common_name, None, sans, usage, now, days)
}

/// DER of every CERTIFICATE block of `pem`, in order.
pub fn certificates(pem: &str) -> anyhow::Result<Vec<Vec<u8>>> {
    let mut out = Vec::new();
    for block in x509_parser::pem::Pem::iter_from_buffer(pem.as_bytes()) {
        let block = block?;
        if block.label == "CERTIFICATE" {
            out.push(block.contents);
        }
    }
    anyhow::ensure!(!out.is_empty(), "no CERTIFICATE block");
    Ok(out)
}

/// SHA-256 fingerprint of a DER certificate, as `openssl x509 -fingerprint -sha256` prints it.
pub fn fingerprint(der: &[u8]) -> String {
    let d = ring::digest::digest(&ring::digest::SHA256, der);
    d.as_ref().iter().map(|b| format!("{b:02X}")).collect::<Vec<_>>().join(":")
}

/// Fingerprint of the first certificate of `pem`.
pub fn pem_fingerprint(pem: &str) -> anyhow::Result<String> {
    Ok(fingerprint(&certificates(pem)?[0]))
}

/// 32 random hex digits, for unique names and tokens in the test bed.
pub fn random_hex() -> String {
    use ring::rand::{SecureRandom, SystemRandom};
    let mut b = [0u8; 16];
    SystemRandom::new().fill(&mut b).expect("the system random generator works");
    b.iter().map(|x| format!("{x:02x}")).collect()
}
