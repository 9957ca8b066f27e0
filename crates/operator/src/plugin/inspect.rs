//! `inspect secret <name>`: what the operator sees in a Secret before a CertificateRotation of
//! `type: secret` names it — which keys it reads, the chain (subject, issuer, serial, validity,
//! SHA-256, DNS names), the CA, whether the key matches, and the verdict of the operator's own
//! check (`certificate_rotation::inspect::check` / `check_without_ca`, the code that decides at
//! rollout time). May touch: reads the one Secret; prints public facts only, never a key.

use k8s_openapi::api::core::v1::Secret;
use k8s_openapi::jiff::Timestamp;
use kube::Api;
use x509_parser::prelude::{FromDer, X509Certificate};

use super::{Cluster, Exit, Failure, Outcome};
use crate::certificate_rotation::inspect;

#[derive(clap::Args, Debug, Clone)]
pub(crate) struct Args {
    /// The Secret's name.
    pub name: String,
    /// Its namespace (default: the context's namespace).
    #[arg(short = 'n', long)]
    pub namespace: Option<String>,
    /// The key holding the private key, as `spec.external.key` would name it.
    #[arg(long)]
    pub key: Option<String>,
    /// The key holding the certificate (chain), as `spec.external.cert` would name it.
    #[arg(long)]
    pub cert: Option<String>,
    /// The key holding the CA certificate, as `spec.external.cacert` would name it.
    #[arg(long)]
    pub cacert: Option<String>,
}

/// Which keys the operator reads (the rule of `certificate_rotation::material`: keys the spec
/// names win, the CA then required; else the seed's `key`/`cert`/`cacert` when `cert` is there;
/// else cert-manager's `tls.key`/`tls.crt`/`ca.crt`, where `ca.crt` may be missing).
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Layout {
    pub key: String,
    pub cert: String,
    pub ca: String,
    pub ca_required: bool,
    pub name: &'static str,
}

pub(crate) fn layout(args: &Args, has: impl Fn(&str) -> bool) -> Layout {
    let named = args.key.is_some() || args.cert.is_some() || args.cacert.is_some();
    let cert_manager = !named && !has("cert") && has("tls.crt");
    let (key, cert, ca, name) = if cert_manager {
        ("tls.key", "tls.crt", "ca.crt", "cert-manager / kubernetes.io/tls")
    } else if named {
        ("key", "cert", "cacert", "as named")
    } else {
        ("key", "cert", "cacert", "key / cert / cacert")
    };
    Layout {
        key: args.key.clone().unwrap_or_else(|| key.into()),
        cert: args.cert.clone().unwrap_or_else(|| cert.into()),
        ca: args.cacert.clone().unwrap_or_else(|| ca.into()),
        ca_required: !cert_manager,
        name,
    }
}

/// One certificate's public facts, as lines.
fn describe(der: &[u8], now: Timestamp, out: &mut Vec<String>) {
    let Ok(info) = inspect::info(der, "the certificate") else {
        out.push("    not a valid X.509 certificate".into());
        return;
    };
    if let Ok((_, c)) = X509Certificate::from_der(der) {
        out.push(format!("    subject      {}", c.subject()));
        out.push(format!("    issuer       {}", c.issuer()));
        let ca = c.basic_constraints().ok().flatten().is_some_and(|b| b.value.ca);
        if ca {
            out.push("    CA           yes".into());
        }
    }
    out.push(format!("    serial       {}", info.serial_number));
    let left = (info.not_after.as_second() - now.as_second()).div_euclid(86_400);
    let when = if left < 0 { format!("expired {} days ago", -left) } else { format!("{left} days left") };
    out.push(format!("    valid        {} to {} ({when})", info.not_before, info.not_after));
    out.push(format!("    SHA-256      {}", info.fingerprint_sha256));
    if !info.dns_names.is_empty() {
        out.push(format!("    DNS names    {}", info.dns_names.join(", ")));
    }
}

/// Whether the PEM key is the certificate's (their public keys compared; the key never leaves
/// this function).
fn key_matches(key_pem: &str, cert_der: &[u8]) -> Result<bool, String> {
    let key = rcgen::KeyPair::from_pem(key_pem).map_err(|_| "does not parse as a PKCS#8 key".to_string())?;
    let (_, cert) = X509Certificate::from_der(cert_der).map_err(|_| "the certificate does not parse".to_string())?;
    Ok(cert.public_key().raw == rcgen::PublicKeyData::subject_public_key_info(&key).as_slice())
}

/// The screen for a Secret's data, and whether the operator would accept it. Pure.
pub(crate) fn examine(
    what: &str,
    get: impl Fn(&str) -> Option<String>,
    args: &Args,
    now: Timestamp,
) -> (Vec<String>, bool) {
    let layout = layout(args, |k| get(k).is_some());
    let mut out = vec![format!(
        "{what}: read as {} (key {:?}, cert {:?}, CA {:?}{})",
        layout.name,
        layout.key,
        layout.cert,
        layout.ca,
        if layout.ca_required { "" } else { ", optional" }
    )];
    let (key, cert, ca) = (get(&layout.key), get(&layout.cert), get(&layout.ca));
    let chain = match cert.as_deref().map(|c| inspect::certificates(c, &format!("key {:?}", layout.cert))) {
        None => {
            out.push(format!("certificate: no key {:?}", layout.cert));
            None
        }
        Some(Err(e)) => {
            out.push(format!("certificate: {e}"));
            None
        }
        Some(Ok(chain)) => {
            out.push(format!("chain: {} certificate(s) in {:?}", chain.len(), layout.cert));
            for (i, der) in chain.iter().enumerate() {
                out.push(format!("  [{i}]{}", if i == 0 { " leaf" } else { "" }));
                describe(der, now, &mut out);
            }
            Some(chain)
        }
    };
    match ca.as_deref().map(|c| inspect::certificates(c, &format!("key {:?}", layout.ca))) {
        None if layout.ca_required => out.push(format!("CA: no key {:?} (required with this layout)", layout.ca)),
        None => out.push(format!(
            "CA: no key {:?}: the chain must verify to a root it carries or to a public root",
            layout.ca
        )),
        Some(Err(e)) => out.push(format!("CA: {e}")),
        Some(Ok(cas)) => {
            out.push(format!("CA: {} certificate(s) in {:?}", cas.len(), layout.ca));
            for der in &cas {
                describe(der, now, &mut out);
            }
        }
    }
    match (key.as_deref(), chain.as_ref().and_then(|c| c.first())) {
        (None, _) => out.push(format!("key: no key {:?}", layout.key)),
        (Some(k), _) if !k.contains("-----BEGIN PRIVATE KEY-----") => out.push(
            "key: not PKCS#8 ('-----BEGIN PRIVATE KEY-----'); convert it with `openssl pkcs8 -topk8 -nocrypt`".into(),
        ),
        (Some(k), Some(leaf)) => match key_matches(k, leaf) {
            Ok(true) => out.push("key: PKCS#8, matches the certificate".into()),
            Ok(false) => out.push("key: PKCS#8, does NOT match the certificate (their public keys differ)".into()),
            Err(e) => out.push(format!("key: {e}")),
        },
        (Some(_), None) => out.push("key: present (no certificate to match it against)".into()),
    }
    // The operator's own verdict, by the code that decides at rollout time.
    let verdict = match (key.as_deref(), cert.as_deref(), ca.as_deref()) {
        (Some(k), Some(c), Some(ca)) => inspect::check(c, k, ca, now),
        (Some(k), Some(c), None) if !layout.ca_required => inspect::check_without_ca(c, k, now),
        (None, _, _) => Err(format!("{what} has no key {:?}", layout.key)),
        (_, None, _) => Err(format!("{what} has no key {:?}", layout.cert)),
        (_, _, None) => Err(format!("{what} has no key {:?}", layout.ca)),
    };
    let accepted = match verdict {
        Ok(m) => {
            out.push(format!(
                "verdict: ACCEPTED — the operator would roll it: serial {}, valid until {}, CA SHA-256 {}",
                m.leaf.serial_number, m.leaf.not_after, m.ca_fingerprint
            ));
            let days = (m.leaf.not_after.as_second() - now.as_second()).div_euclid(86_400);
            if days < 30 {
                out.push(format!(
                    "warning: expires in {days} days: the CertificateRotation would report CertificateExpiring (RenewalNeeded)"
                ));
            }
            true
        }
        Err(e) => {
            out.push(format!("verdict: REFUSED — {e} (the operation would fail with InvalidCertificate)"));
            false
        }
    };
    (out, accepted)
}

pub(crate) async fn run(cluster: &Cluster, args: &Args) -> Outcome {
    let ns = args.namespace.clone().unwrap_or_else(|| cluster.default_namespace.clone());
    let what = format!("Secret {ns}/{}", args.name);
    let api: Api<Secret> = Api::namespaced(cluster.client.clone(), &ns);
    let secret = api.get(&args.name).await.map_err(|e| Failure::kube(&what, e))?;
    let get = |k: &str| secret.data.as_ref().and_then(|d| d.get(k)).map(|v| String::from_utf8_lossy(&v.0).into_owned());
    let (lines, accepted) = examine(&what, get, args, Timestamp::now());
    for l in lines {
        println!("{l}");
    }
    Ok(if accepted { Exit::Ok } else { Exit::Failed })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::pki;
    use std::collections::BTreeMap;

    fn args() -> Args {
        Args { name: "s".into(), namespace: None, key: None, cert: None, cacert: None }
    }

    #[test]
    fn the_layout_is_the_operators() {
        let keys = |ks: &'static [&'static str]| move |k: &str| ks.contains(&k);
        let l = layout(&args(), keys(&["tls.crt", "tls.key"]));
        assert_eq!(
            (l.key.as_str(), l.cert.as_str(), l.ca.as_str(), l.ca_required),
            ("tls.key", "tls.crt", "ca.crt", false)
        );
        let l = layout(&args(), keys(&["cert", "key", "cacert", "tls.crt"]));
        assert_eq!((l.cert.as_str(), l.ca_required), ("cert", true), "the seed's layout wins when cert is there");
        let named = Args { cert: Some("server.pem".into()), ..args() };
        let l = layout(&named, keys(&["tls.crt"]));
        assert_eq!(
            (l.key.as_str(), l.cert.as_str(), l.ca.as_str(), l.ca_required),
            ("key", "server.pem", "cacert", true)
        );
    }

    #[test]
    fn good_material_is_accepted_and_each_problem_named() {
        let now = Timestamp::now();
        let ca = pki::new_ca("orders CA", now, 30).unwrap();
        let leaf = pki::issue_leaf(&ca, "orders", &["orders.kafka.svc".into()], pki::Usage::Server, now, 90).unwrap();
        let run = |data: BTreeMap<&str, String>| {
            let (lines, ok) = examine("Secret kafka/s", |k| data.get(k).cloned(), &args(), now);
            (lines.join("\n"), ok)
        };
        let good: BTreeMap<&str, String> =
            [("tls.crt", leaf.cert_pem.clone()), ("tls.key", leaf.key_pem.clone()), ("ca.crt", ca.cert_pem.clone())]
                .into();
        let (screen, ok) = run(good.clone());
        assert!(ok, "{screen}");
        for expected in [
            "read as cert-manager",
            "chain: 1 certificate(s)",
            "issuer       CN=orders CA",
            "DNS names    orders.kafka.svc",
            "key: PKCS#8, matches the certificate",
            "verdict: ACCEPTED",
            "CA           yes",
        ] {
            assert!(screen.contains(expected), "missing {expected:?}:\n{screen}");
        }
        assert!(
            !screen.contains("PRIVATE KEY") && !screen.contains(&leaf.key_pem[30..60]),
            "no key material:\n{screen}"
        );

        let other = pki::issue_leaf(&ca, "orders", &["orders".into()], pki::Usage::Server, now, 90).unwrap();
        let (screen, ok) = run([
            ("tls.crt", leaf.cert_pem.clone()),
            ("tls.key", other.key_pem.clone()),
            ("ca.crt", ca.cert_pem.clone()),
        ]
        .into());
        assert!(!ok);
        assert!(
            screen.contains("does NOT match the certificate")
                && screen.contains("verdict: REFUSED — the private key does not match"),
            "{screen}"
        );

        let stranger = pki::new_ca("someone else", now, 30).unwrap();
        let (screen, ok) = run([
            ("tls.crt", leaf.cert_pem.clone()),
            ("tls.key", leaf.key_pem.clone()),
            ("ca.crt", stranger.cert_pem.clone()),
        ]
        .into());
        assert!(!ok && screen.contains("does not chain"), "{screen}");

        let short = pki::issue_leaf(&ca, "orders", &["orders".into()], pki::Usage::Server, now, 10).unwrap();
        let (screen, ok) = run([
            ("tls.crt", short.cert_pem.clone()),
            ("tls.key", short.key_pem.clone()),
            ("ca.crt", ca.cert_pem.clone()),
        ]
        .into());
        assert!(ok && screen.contains("warning: expires in 10 days"), "{screen}");

        let (screen, ok) = run([("cert", leaf.cert_pem.clone()), ("key", leaf.key_pem.clone())].into());
        assert!(
            !ok && screen.contains("CA: no key \"cacert\" (required") && screen.contains("has no key \"cacert\""),
            "{screen}"
        );
    }
}
