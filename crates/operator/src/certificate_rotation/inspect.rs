//! Checking certificate material before anything is rolled: PEM parses, the key is PKCS#8 and
//! matches the certificate, the certificate chains to the CA (verified with rustls/webpki, not by
//! comparing names), is valid now and carries SANs. Messages never contain key material.

use std::sync::Arc;

use k8s_openapi::jiff::Timestamp;
use rustls::client::danger::ServerCertVerifier;
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use x509_parser::prelude::{FromDer, GeneralName, X509Certificate};

/// Facts about a certificate, as status shows them.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct CertInfo {
    pub serial_number: String,
    pub not_before: Timestamp,
    pub not_after: Timestamp,
    pub fingerprint_sha256: String,
    pub dns_names: Vec<String>,
}

pub(crate) use crate::pki::fingerprint;

/// DER of every CERTIFICATE block in `pem`, in order.
pub(crate) fn certificates(pem: &str, what: &str) -> Result<Vec<Vec<u8>>, String> {
    let mut out = Vec::new();
    for block in x509_parser::pem::Pem::iter_from_buffer(pem.as_bytes()) {
        let block = block.map_err(|_| format!("{what} is not valid PEM"))?;
        if block.label == "CERTIFICATE" {
            out.push(block.contents);
        }
    }
    if out.is_empty() {
        return Err(format!("{what} holds no PEM certificate (no '-----BEGIN CERTIFICATE-----' block)"));
    }
    Ok(out)
}

/// DER of the first certificate in `pem` (the leaf of a chain, the first CA of a bundle);
/// None when it holds none.
pub(crate) fn first_certificate(pem: &str) -> Option<Vec<u8>> {
    certificates(pem, "").ok()?.into_iter().next()
}

fn ts(t: x509_parser::time::ASN1Time) -> Timestamp {
    Timestamp::from_second(t.timestamp()).unwrap_or(Timestamp::UNIX_EPOCH)
}

/// Parse one DER certificate.
pub(crate) fn info(der: &[u8], what: &str) -> Result<CertInfo, String> {
    let (_, cert) = X509Certificate::from_der(der).map_err(|_| format!("{what} is not a valid X.509 certificate"))?;
    let mut dns_names = Vec::new();
    if let Ok(Some(san)) = cert.subject_alternative_name() {
        for n in &san.value.general_names {
            if let GeneralName::DNSName(d) = n {
                dns_names.push((*d).to_string());
            }
        }
    }
    Ok(CertInfo {
        serial_number: cert.raw_serial().iter().map(|b| format!("{b:02X}")).collect::<Vec<_>>().join(":"),
        not_before: ts(cert.validity().not_before),
        not_after: ts(cert.validity().not_after),
        fingerprint_sha256: fingerprint(der),
        dns_names,
    })
}

/// Checked material: what goes into `<cluster>-<slot>-tls`.
#[derive(Clone)]
pub(crate) struct Material {
    pub cert_pem: String,
    pub key_pem: String,
    pub ca_pem: String,
    pub leaf: CertInfo,
    pub ca_fingerprint: String,
}

impl std::fmt::Debug for Material {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Material").field("leaf", &self.leaf).field("key_pem", &"<redacted>").finish()
    }
}

/// Check key, certificate and CA together.
///
/// The CA must be certificates only: it is published to clients (the trust ConfigMap) and
/// mounted by the brokers, so a private key pasted into it is refused rather than passed on.
pub(crate) fn check(cert_pem: &str, key_pem: &str, ca_pem: &str, now: Timestamp) -> Result<Material, String> {
    let (ca_pem, other) = crate::pki::certificates_only(ca_pem);
    if let Some(label) = other.first() {
        // Named in lower case: the label text itself must not look like key material in logs.
        let what = if label.contains("PRIVATE KEY") { "private key".to_string() } else { label.to_lowercase() };
        return Err(format!(
            "the CA certificate holds a {what} block besides certificates; the CA value is published to clients, \
             so give only the CA certificate(s) (openssl x509 -in ca.pem) and keep keys out of it"
        ));
    }
    let chain = certificates(cert_pem, "the certificate")?;
    let cas = certificates(&ca_pem, "the CA certificate")?;
    let ca_info = info(&cas[0], "the CA certificate")?;
    let leaf = check_leaf(&chain, key_pem, now)?;
    verify_chain(&chain, &cas, &leaf.dns_names[0], now)?;
    Ok(Material {
        cert_pem: cert_pem.to_string(),
        key_pem: key_pem.to_string(),
        ca_pem,
        leaf,
        ca_fingerprint: ca_info.fingerprint_sha256,
    })
}

/// The leaf of `chain` against its key and the clock: a PKCS#8 key that matches it, valid now,
/// with DNS names to verify against.
fn check_leaf(chain: &[Vec<u8>], key_pem: &str, now: Timestamp) -> Result<CertInfo, String> {
    let leaf = info(&chain[0], "the certificate")?;
    if !key_pem.contains("-----BEGIN PRIVATE KEY-----") {
        return Err(if key_pem.contains("-----BEGIN") {
            "the private key is not PKCS#8 (Kafka's PEM key stores need '-----BEGIN PRIVATE KEY-----'); convert it with `openssl pkcs8 -topk8 -nocrypt`".into()
        } else {
            "the private key is not PEM".into()
        });
    }
    let key = rcgen::KeyPair::from_pem(key_pem)
        .map_err(|_| "the private key does not parse (PKCS#8 RSA, ECDSA or Ed25519 expected)".to_string())?;
    let (_, parsed) =
        X509Certificate::from_der(&chain[0]).map_err(|_| "the certificate is not valid X.509".to_string())?;
    if parsed.public_key().raw != rcgen::PublicKeyData::subject_public_key_info(&key).as_slice() {
        return Err("the private key does not match the certificate (their public keys differ)".into());
    }
    if now < leaf.not_before {
        return Err(format!("the certificate is not valid yet (notBefore {})", leaf.not_before));
    }
    if now >= leaf.not_after {
        return Err(format!("the certificate expired at {}", leaf.not_after));
    }
    if leaf.dns_names.is_empty() {
        return Err(
            "the certificate has no DNS subject alternative names; clients verify the broker's name against them"
                .into(),
        );
    }
    Ok(leaf)
}

fn self_signed(der: &[u8]) -> bool {
    X509Certificate::from_der(der).is_ok_and(|(_, c)| c.issuer() == c.subject())
}

/// Check key and certificate when no CA is given — a cert-manager or public-CA Secret without
/// `ca.crt`. The chain the certificate carries must verify: to its own last certificate when
/// that is a self-signed root the issuer included (that root is then the CA clients trust), or
/// else to the public web roots (the CA shown and published is then the chain above the leaf;
/// clients trust the public root from their system store).
pub(crate) fn check_without_ca(cert_pem: &str, key_pem: &str, now: Timestamp) -> Result<Material, String> {
    let chain = certificates(cert_pem, "the certificate")?;
    if chain.len() > 1 && self_signed(&chain[chain.len() - 1]) {
        let (served, root) = chain.split_at(chain.len() - 1);
        let mut m = check(&crate::pki::pem_certificates(served), key_pem, &crate::pki::pem_certificates(root), now)?;
        m.cert_pem = cert_pem.to_string();
        return Ok(m);
    }
    // Key, validity and names as for a given CA; then the chain against the public roots.
    let leaf = check_leaf(&chain, key_pem, now)?;
    let mut store = rustls::RootCertStore::empty();
    store.extend(webpki_roots::TLS_SERVER_ROOTS.iter().cloned());
    verify_chain_in(&chain, store, &leaf.dns_names[0], now).map_err(|_| {
        "there is no CA certificate (no ca.crt / cacert) and the chain in the certificate verifies neither to a \
         root it includes nor to a public root; add the issuing CA certificate to the Secret (ca.crt)"
            .to_string()
    })?;
    let above = &chain[1..];
    let ca_fingerprint = above.last().map(|d| fingerprint(d)).unwrap_or_default();
    Ok(Material {
        cert_pem: cert_pem.to_string(),
        key_pem: key_pem.to_string(),
        ca_pem: crate::pki::pem_certificates(above),
        leaf,
        ca_fingerprint,
    })
}

/// Verify `chain` (leaf first) against `roots` as a TLS client would, for `dns_name`.
pub(crate) fn verify_chain(chain: &[Vec<u8>], roots: &[Vec<u8>], dns_name: &str, now: Timestamp) -> Result<(), String> {
    let mut store = rustls::RootCertStore::empty();
    for r in roots {
        store
            .add(CertificateDer::from(r.clone()))
            .map_err(|e| format!("the CA certificate is not usable as a trust anchor: {e}"))?;
    }
    verify_chain_in(chain, store, dns_name, now)
}

fn verify_chain_in(
    chain: &[Vec<u8>],
    store: rustls::RootCertStore,
    dns_name: &str,
    now: Timestamp,
) -> Result<(), String> {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let verifier = rustls::client::WebPkiServerVerifier::builder_with_provider(Arc::new(store), provider)
        .build()
        .map_err(|e| format!("cannot build a verifier for the CA: {e}"))?;
    let name = dns_name.strip_prefix("*.").map(|rest| format!("x.{rest}")).unwrap_or_else(|| dns_name.to_string());
    let server_name = ServerName::try_from(name).map_err(|_| format!("{dns_name:?} is not a valid DNS name"))?;
    let end = CertificateDer::from(chain[0].clone());
    let intermediates: Vec<CertificateDer<'_>> = chain[1..].iter().map(|c| CertificateDer::from(c.clone())).collect();
    let at = UnixTime::since_unix_epoch(std::time::Duration::from_secs(now.as_second().max(0).unsigned_abs()));
    verifier
        .verify_server_cert(&end, &intermediates, &server_name, &[], at)
        .map(|_| ())
        .map_err(|e| format!("the certificate does not chain to the given CA certificate ({e})"))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::pki;

    fn now() -> Timestamp {
        Timestamp::now()
    }

    #[test]
    fn accepts_good_material_and_names_each_problem() {
        let ca = pki::new_ca("a", now(), 30).unwrap();
        let other_ca = pki::new_ca("b", now(), 30).unwrap();
        let sans = vec!["broker.kafka.svc".to_string()];
        let leaf = pki::issue_leaf(&ca, "broker", &sans, pki::Usage::Server, now(), 10).unwrap();
        let m = check(&leaf.cert_pem, &leaf.key_pem, &ca.cert_pem, now()).unwrap();
        assert_eq!(m.leaf.dns_names, sans);
        assert_eq!(m.ca_fingerprint.len(), 32 * 3 - 1);
        assert!(!format!("{m:?}").contains("PRIVATE KEY"));

        let other = pki::issue_leaf(&ca, "broker", &sans, pki::Usage::Server, now(), 10).unwrap();
        let err = |r: Result<Material, String>| r.unwrap_err();
        assert!(err(check(&leaf.cert_pem, &other.key_pem, &ca.cert_pem, now())).contains("does not match"));
        assert!(err(check(&leaf.cert_pem, &leaf.key_pem, &other_ca.cert_pem, now())).contains("does not chain"));
        assert!(err(check("garbage", &leaf.key_pem, &ca.cert_pem, now())).contains("no PEM certificate"));
        let later = Timestamp::from_second(now().as_second() + 20 * 86_400).unwrap();
        assert!(err(check(&leaf.cert_pem, &leaf.key_pem, &ca.cert_pem, later)).contains("expired"));
        let sec1 = "-----BEGIN EC PRIVATE KEY-----\nAAAA\n-----END EC PRIVATE KEY-----\n";
        assert!(err(check(&leaf.cert_pem, sec1, &ca.cert_pem, now())).contains("not PKCS#8"));
        let no_san = pki::issue_leaf(&ca, "broker", &[], pki::Usage::Server, now(), 10).unwrap();
        assert!(err(check(&no_san.cert_pem, &no_san.key_pem, &ca.cert_pem, now()))
            .contains("no DNS subject alternative names"));
        let ca_with_key = format!("{}{}", ca.cert_pem, ca.key_pem);
        let e = err(check(&leaf.cert_pem, &leaf.key_pem, &ca_with_key, now()));
        assert!(e.contains("holds a private key block") && !e.contains(&ca.key_pem[40..80]), "{e}");
    }

    #[test]
    fn without_a_ca_the_chain_verifies_to_its_own_root_or_is_refused() {
        let ca = pki::new_ca("issuer", now(), 30).unwrap();
        let sans = vec!["broker.kafka.svc".to_string()];
        let leaf = pki::issue_leaf(&ca, "broker", &sans, pki::Usage::Server, now(), 10).unwrap();
        // cert-manager with a CA issuer that appends its root: the root becomes the CA.
        let with_root = format!("{}{}", leaf.cert_pem, ca.cert_pem);
        let m = check_without_ca(&with_root, &leaf.key_pem, now()).unwrap();
        let root = &certificates(&ca.cert_pem, "ca").unwrap()[0];
        assert_eq!(m.ca_fingerprint, fingerprint(root));
        assert_eq!(m.ca_pem, crate::pki::certificates_only(&ca.cert_pem).0);
        assert_eq!(m.cert_pem, with_root, "the brokers serve the chain as given");
        // A private CA's leaf alone verifies to no public root: refused, saying what to add.
        let e = check_without_ca(&leaf.cert_pem, &leaf.key_pem, now()).unwrap_err();
        assert!(e.contains("add the issuing CA certificate"), "{e}");
        // Key and validity are checked as with a CA.
        let other = pki::issue_leaf(&ca, "broker", &sans, pki::Usage::Server, now(), 10).unwrap();
        assert!(check_without_ca(&with_root, &other.key_pem, now()).unwrap_err().contains("does not match"));
    }
}
