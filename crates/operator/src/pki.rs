//! Certificate issuance with rcgen: a CA the operator keeps, and leaf certificates signed by it.
//! Keys are ECDSA P-256 in PKCS#8 PEM (what Kafka's PEM key stores accept).

use k8s_openapi::jiff::Timestamp;
use rcgen::{
    BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair, KeyUsagePurpose,
};
use time::OffsetDateTime;

/// A certificate with its private key, both PEM.
#[derive(Clone)]
pub struct KeyedCert {
    pub cert_pem: String,
    pub key_pem: String,
}

// Never print key material, even in debug output.
impl std::fmt::Debug for KeyedCert {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("KeyedCert").field("cert_pem", &self.cert_pem).field("key_pem", &"<redacted>").finish()
    }
}

#[derive(Debug, thiserror::Error)]
#[error("certificate issuance failed: {0}")]
pub struct PkiError(#[from] rcgen::Error);

const DAY: i64 = 86_400;
/// Back-date certificates a little so small clock skew between machines does not reject them.
const BACKDATE_SECONDS: i64 = 300;

fn to_offset(ts: Timestamp) -> OffsetDateTime {
    OffsetDateTime::from_unix_timestamp(ts.as_second()).expect("a jiff timestamp fits OffsetDateTime")
}

fn validity(params: &mut CertificateParams, now: Timestamp, days: u32) {
    let start = now.as_second() - BACKDATE_SECONDS;
    params.not_before = OffsetDateTime::from_unix_timestamp(start).expect("valid time");
    params.not_after = to_offset(now) + time::Duration::seconds(i64::from(days) * DAY);
}

/// A new self-signed CA.
pub fn new_ca(common_name: &str, now: Timestamp, days: u32) -> Result<KeyedCert, PkiError> {
    let mut params = CertificateParams::new(Vec::<String>::new())?;
    params.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
    params.distinguished_name.push(DnType::CommonName, common_name);
    params.distinguished_name.push(DnType::OrganizationName, "cluster-security-operator");
    params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign, KeyUsagePurpose::DigitalSignature];
    validity(&mut params, now, days);
    let key = KeyPair::generate()?;
    let cert = params.self_signed(&key)?;
    Ok(KeyedCert { cert_pem: cert.pem(), key_pem: key.serialize_pem() })
}

/// What a leaf certificate is for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Usage {
    Server,
    ServerAndClient,
    Client,
}

/// A leaf certificate for `sans` (DNS names or IP addresses) signed by `ca`.
pub fn issue_leaf(
    ca: &KeyedCert,
    common_name: &str,
    sans: &[String],
    usage: Usage,
    now: Timestamp,
    days: u32,
) -> Result<KeyedCert, PkiError> {
    let ca_key = KeyPair::from_pem(&ca.key_pem)?;
    let issuer = Issuer::from_ca_cert_pem(&ca.cert_pem, ca_key)?;
    let mut params = CertificateParams::new(sans.to_vec())?;
    params.distinguished_name.push(DnType::CommonName, common_name);
    params.use_authority_key_identifier_extension = true;
    params.key_usages = vec![KeyUsagePurpose::DigitalSignature, KeyUsagePurpose::KeyEncipherment];
    params.extended_key_usages = match usage {
        Usage::Server => vec![ExtendedKeyUsagePurpose::ServerAuth],
        Usage::ServerAndClient => vec![ExtendedKeyUsagePurpose::ServerAuth, ExtendedKeyUsagePurpose::ClientAuth],
        Usage::Client => vec![ExtendedKeyUsagePurpose::ClientAuth],
    };
    validity(&mut params, now, days);
    let key = KeyPair::generate()?;
    let cert = params.signed_by(&key, &issuer)?;
    Ok(KeyedCert { cert_pem: cert.pem(), key_pem: key.serialize_pem() })
}

/// SHA-256 fingerprint of a DER certificate as `openssl x509 -fingerprint -sha256` prints it
/// (and as the status shows it).
pub fn fingerprint(der: &[u8]) -> String {
    let d = ring::digest::digest(&ring::digest::SHA256, der);
    d.as_ref().iter().map(|b| format!("{b:02X}")).collect::<Vec<_>>().join(":")
}

/// The subject's common name of a PEM certificate; None when it does not parse or has none.
pub fn common_name(cert_pem: &str) -> Option<String> {
    let (_, pem) = x509_parser::pem::parse_x509_pem(cert_pem.as_bytes()).ok()?;
    let cert = pem.parse_x509().ok()?;
    let cn = cert.subject().iter_common_name().next()?.as_str().ok()?.to_string();
    Some(cn)
}

/// Whether the PEM client certificate chains to the PEM CA certificate `ca_pem` and is valid
/// for client authentication at `now` (webpki, as a broker checks it).
pub fn valid_client_of(cert_pem: &str, ca_pem: &str, now: Timestamp) -> bool {
    use rustls::pki_types::pem::PemObject;
    use rustls::pki_types::{CertificateDer, UnixTime};
    let (Ok(leaf), Ok(ca)) =
        (CertificateDer::from_pem_slice(cert_pem.as_bytes()), CertificateDer::from_pem_slice(ca_pem.as_bytes()))
    else {
        return false;
    };
    let Ok(anchor) = webpki::anchor_from_trusted_cert(&ca) else { return false };
    let Ok(ee) = webpki::EndEntityCert::try_from(&leaf) else { return false };
    let at = UnixTime::since_unix_epoch(std::time::Duration::from_secs(now.as_second().max(0) as u64));
    ee.verify_for_usage(webpki::ALL_VERIFICATION_ALGS, &[anchor], &[], at, webpki::KeyUsage::client_auth(), None, None)
        .is_ok()
}

/// Seconds until the PEM certificate expires (negative when expired); None when it does not parse.
pub fn seconds_left(cert_pem: &str, now: Timestamp) -> Option<i64> {
    let (_, pem) = x509_parser::pem::parse_x509_pem(cert_pem.as_bytes()).ok()?;
    let cert = pem.parse_x509().ok()?;
    Some(cert.validity().not_after.timestamp() - now.as_second())
}

/// Subject alternative names (DNS names and IPs as text) of a PEM certificate.
pub fn subject_alt_names(cert_pem: &str) -> Option<Vec<String>> {
    let (_, pem) = x509_parser::pem::parse_x509_pem(cert_pem.as_bytes()).ok()?;
    let cert = pem.parse_x509().ok()?;
    let mut out = Vec::new();
    if let Ok(Some(ext)) = cert.subject_alternative_name() {
        for name in &ext.value.general_names {
            match name {
                x509_parser::extensions::GeneralName::DNSName(d) => out.push((*d).to_string()),
                x509_parser::extensions::GeneralName::IPAddress(b) => match b.len() {
                    4 => out.push(std::net::Ipv4Addr::new(b[0], b[1], b[2], b[3]).to_string()),
                    16 => {
                        let mut a = [0u8; 16];
                        a.copy_from_slice(b);
                        out.push(std::net::Ipv6Addr::from(a).to_string());
                    }
                    _ => {}
                },
                _ => {}
            }
        }
    }
    Some(out)
}

/// The CERTIFICATE blocks of `pem`, re-encoded one after another, and the labels of any other
/// blocks (a `PRIVATE KEY` pasted after a CA certificate). What goes into a trust bundle — a
/// ConfigMap anyone in the namespace may read, or a Secret the brokers mount — is built from the
/// certificates only, so nothing but public material travels, whatever the source held around them.
pub fn certificates_only(pem: &str) -> (String, Vec<String>) {
    let mut certs = Vec::new();
    let mut other = Vec::new();
    for block in x509_parser::pem::Pem::iter_from_buffer(pem.as_bytes()) {
        match block {
            Ok(b) if b.label == "CERTIFICATE" => certs.push(b.contents),
            Ok(b) => other.push(b.label),
            Err(_) => other.push("unparsable PEM".into()),
        }
    }
    (pem_certificates(&certs), other)
}

/// DER certificates as PEM, one `CERTIFICATE` block after another (64-character lines).
pub fn pem_certificates(ders: &[Vec<u8>]) -> String {
    use base64::Engine as _;
    let mut out = String::new();
    for der in ders {
        let body = base64::engine::general_purpose::STANDARD.encode(der);
        out.push_str("-----BEGIN CERTIFICATE-----\n");
        for line in body.as_bytes().chunks(64) {
            out.push_str(std::str::from_utf8(line).expect("base64 is ASCII"));
            out.push('\n');
        }
        out.push_str("-----END CERTIFICATE-----\n");
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn leaf_chains_to_ca_and_carries_sans() {
        let now = Timestamp::from_second(1_800_000_000).unwrap();
        let ca = new_ca("test CA", now, 3650).unwrap();
        let sans = vec!["svc.ns.svc".to_string(), "127.0.0.1".to_string()];
        let leaf = issue_leaf(&ca, "svc", &sans, Usage::Server, now, 30).unwrap();
        assert!(leaf.key_pem.contains("BEGIN PRIVATE KEY"), "PKCS#8 key expected");
        assert_eq!(subject_alt_names(&leaf.cert_pem).unwrap(), sans);
        let left = seconds_left(&leaf.cert_pem, now).unwrap();
        assert_eq!(left, 30 * DAY);
        // The leaf names the CA as issuer (the TLS test verifies the signature chain for real).
        let (_, l) = x509_parser::pem::parse_x509_pem(leaf.cert_pem.as_bytes()).unwrap();
        let (_, c) = x509_parser::pem::parse_x509_pem(ca.cert_pem.as_bytes()).unwrap();
        let (l, c) = (l.parse_x509().unwrap(), c.parse_x509().unwrap());
        assert_eq!(l.issuer(), c.subject());
        assert!(!format!("{leaf:?}").contains("PRIVATE KEY"), "Debug must not print the key");
    }

    #[test]
    fn certificates_only_keeps_certificates_and_names_what_it_dropped() {
        let now = Timestamp::from_second(1_800_000_000).unwrap();
        let (a, b) = (new_ca("a", now, 1).unwrap(), new_ca("b", now, 1).unwrap());
        let pasted = format!("subject=CN a\n{}{}{}", a.cert_pem, a.key_pem, b.cert_pem);
        let (certs, other) = certificates_only(&pasted);
        assert_eq!(other, vec!["PRIVATE KEY".to_string()]);
        assert!(!certs.contains("PRIVATE KEY") && !certs.contains("subject="));
        let normalise = |p: &str| p.replace("\r", "");
        assert_eq!(certs, normalise(&format!("{}{}", a.cert_pem, b.cert_pem)));
    }
}
