//! Secrets stay secret: an audit, run at the end of every end-to-end test, that takes every value
//! of every Secret in the cluster (plus the test's own markers) and fails if any of it appears in
//! an operator log, in an Event, in the status of one of our objects, or in any ConfigMap (trust
//! bundles are ConfigMaps anyone in the namespace may read).
//!
//! What counts as secret, and why:
//! - PEM values: the body lines of every `PRIVATE KEY` block, and the base64 of the whole value
//!   (how a key is written in a spec). Certificates are public; fingerprints and trust bundles
//!   are meant to be shown, so certificate blocks are skipped.
//! - Other values (passwords, tokens, client secrets): the value and its base64, when at least
//!   [`MIN_VALUE_LEN`] bytes long. Shorter ones (`default`, `original-7`) are ordinary
//!   words that would match by chance.
//! - Names of Secrets, namespaces and keys are not secret: the operator names them in messages.
//!   So the `namespace` of a service-account token Secret (the name of its namespace, often
//!   longer than 16 bytes) is skipped; its `token` is looked for.
//!
//! The literal text `PRIVATE KEY` is refused too: a key block shown whole, whatever its origin.

use std::collections::BTreeMap;
use std::fmt;
use std::path::PathBuf;

use anyhow::{bail, Context as _};
use base64::Engine as _;
use k8s_openapi::api::core::v1::{ConfigMap, Event, Secret};
use kube::api::{ApiResource, DynamicObject, ListParams};
use kube::{Api, ResourceExt as _};
use serde_json::Value;

use super::ControlPlane;
use cluster_security_api::{CertificateRotation, ClusterSecurityPolicy, KmsKeyVaultMode};

/// Non-PEM values shorter than this are not looked for (they false-positive on ordinary words).
pub const MIN_VALUE_LEN: usize = 16;

/// Characters of a leaked value shown in the message: enough to recognise it, too few to use it.
const SHOWN: usize = 12;

/// Reported at most, so that a systematic leak does not flood the test output.
const MAX_FINDINGS: usize = 20;

/// The strings that must appear nowhere, each with where it came from (named in the message).
#[derive(Debug, Default, Clone)]
pub struct Forbidden {
    strings: BTreeMap<String, String>,
    /// Secrets whose values were taken.
    pub secrets: usize,
    /// `PRIVATE KEY` blocks among them (and the markers).
    pub key_blocks: usize,
    /// Non-PEM values long enough to look for (passwords, tokens, client secrets).
    pub values: usize,
}

impl Forbidden {
    /// Every value of `secret`.
    pub fn add_secret(&mut self, secret: &Secret) {
        self.secrets += 1;
        let name = format!("Secret {}/{}", secret.namespace().unwrap_or_default(), secret.name_any());
        let token = secret.type_.as_deref() == Some("kubernetes.io/service-account-token");
        for (key, value) in secret.data.iter().flatten() {
            if token && key == "namespace" {
                continue; // the Secret's own namespace name (`token` and `ca.crt` are looked at)
            }
            self.add_value(&format!("{name} key {key}"), &value.0);
        }
    }

    /// A value given by a test: PEM is handled like a Secret's; anything else is looked for (with
    /// its base64) whatever its length, since the test chose it to be unique.
    pub fn add_marker(&mut self, origin: &str, marker: &str) {
        if is_pem(marker) {
            self.add_value(origin, marker.as_bytes());
        } else if !marker.is_empty() {
            self.insert(marker.to_string(), origin);
            self.insert(b64(marker.as_bytes()), &format!("{origin}, base64"));
        }
    }

    fn add_value(&mut self, origin: &str, value: &[u8]) {
        let text = String::from_utf8_lossy(value);
        if is_pem(&text) {
            let blocks = key_blocks(&text);
            if blocks.is_empty() {
                return; // certificates only: public
            }
            self.key_blocks += blocks.len();
            for line in blocks.into_iter().flatten() {
                self.insert(line, &format!("{origin}, private key line"));
            }
            self.insert(b64(value), &format!("{origin}, base64"));
        } else if value.len() >= MIN_VALUE_LEN {
            self.values += 1;
            if let Ok(text) = std::str::from_utf8(value) {
                self.insert(text.to_string(), origin);
            }
            self.insert(b64(value), &format!("{origin}, base64"));
        }
    }

    fn insert(&mut self, s: String, origin: &str) {
        self.strings.entry(s).or_insert_with(|| origin.to_string());
    }

    /// How many distinct strings are looked for.
    pub fn len(&self) -> usize {
        self.strings.len()
    }

    /// Whether nothing is looked for.
    pub fn is_empty(&self) -> bool {
        self.strings.is_empty()
    }

    /// What of it appears in `text`, one message per finding naming `place` and the origin; a
    /// value is shown by its first characters only.
    pub fn find(&self, place: &str, text: &str) -> Vec<String> {
        let mut found: Vec<String> = self
            .strings
            .iter()
            .filter(|(s, _)| text.contains(s.as_str()))
            .map(|(s, origin)| format!("{place}: {}… (from {origin})", s.chars().take(SHOWN).collect::<String>()))
            .collect();
        if text.contains("PRIVATE KEY") {
            found.push(format!("{place}: the text `PRIVATE KEY`"));
        }
        found
    }
}

fn b64(bytes: &[u8]) -> String {
    base64::engine::general_purpose::STANDARD.encode(bytes)
}

fn is_pem(text: &str) -> bool {
    text.contains("-----BEGIN ")
}

/// Base64 body lines (long enough not to match by chance) of every `PRIVATE KEY` block of `pem`,
/// one list per block; certificate blocks and PEM headers (`Proc-Type: ...`) are left out.
pub fn key_blocks(pem: &str) -> Vec<Vec<String>> {
    let mut blocks = Vec::new();
    let mut current: Option<Vec<String>> = None;
    for line in pem.lines().map(str::trim) {
        if line.starts_with("-----BEGIN") {
            current = line.contains("PRIVATE KEY").then(Vec::new);
        } else if line.starts_with("-----END") {
            blocks.extend(current.take());
        } else if let Some(lines) = current.as_mut() {
            if line.len() >= MIN_VALUE_LEN && !line.contains(':') {
                lines.push(line.to_string());
            }
        }
    }
    blocks.extend(current); // a block cut short is still a key
    blocks
}

/// What an audit looked at, for tests to check that it saw real material and real output.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Report {
    pub secrets: usize,
    pub key_blocks: usize,
    pub values: usize,
    /// Distinct strings looked for.
    pub forbidden: usize,
    /// Operator log files, and their bytes.
    pub logs: usize,
    pub log_bytes: usize,
    pub events: usize,
    /// Objects of our kinds with a status.
    pub statuses: usize,
    /// ConfigMaps, all namespaces.
    pub configmaps: usize,
    /// All text scanned: logs, Events and statuses.
    pub bytes: usize,
}

impl fmt::Display for Report {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{} Secrets ({} private keys, {} other values; {} strings) looked for in {} operator logs ({} bytes), {} Events, {} statuses and {} ConfigMaps ({} bytes in all)",
            self.secrets, self.key_blocks, self.values, self.forbidden, self.logs, self.log_bytes, self.events, self.statuses, self.configmaps, self.bytes
        )
    }
}

/// Operator logs of a control plane: `operator.log`, `operator-2.log`, ... (see
/// [`super::operator::Operator::start`]).
fn operator_logs(cp: &ControlPlane) -> anyhow::Result<Vec<PathBuf>> {
    let mut logs: Vec<PathBuf> = std::fs::read_dir(cp.dir())
        .with_context(|| format!("list {}", cp.dir().display()))?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| {
            let name = p.file_name().and_then(|n| n.to_str()).unwrap_or_default();
            name == "operator.log"
                || name
                    .strip_prefix("operator-")
                    .and_then(|n| n.strip_suffix(".log"))
                    .is_some_and(|n| !n.is_empty() && n.bytes().all(|b| b.is_ascii_digit()))
        })
        .collect();
    logs.sort();
    Ok(logs)
}

/// Every string in `v` (object keys too), one per line: what a reader of the object sees, with
/// JSON escapes undone.
fn strings_of(v: &Value) -> String {
    fn walk(v: &Value, out: &mut String) {
        match v {
            Value::String(s) => {
                out.push_str(s);
                out.push('\n');
            }
            Value::Array(a) => a.iter().for_each(|x| walk(x, out)),
            Value::Object(o) => o.iter().for_each(|(k, x)| {
                out.push_str(k);
                out.push('\n');
                walk(x, out);
            }),
            _ => {}
        }
    }
    let mut out = String::new();
    walk(v, &mut out);
    out
}

/// Look for every Secret value of `cp` (and `markers`, see [`Forbidden::add_marker`]) in every
/// operator log of `cp`, all Events, the status of every object of our kinds (not the spec: it
/// legitimately holds provided keys), and the data of every ConfigMap. Err names each place and origin, never a whole value.
pub async fn audit(cp: &ControlPlane, markers: &[&str]) -> anyhow::Result<Report> {
    let client = cp.client().await?;
    let mut report = Report::default();
    // What is shown is read before the Secrets are listed: whatever was shown by then is
    // covered if its Secret still exists, and a Secret created meanwhile is simply not shown yet.
    let mut places: Vec<(String, String)> = Vec::new();
    for log in operator_logs(cp)? {
        let bytes = std::fs::read(&log).with_context(|| format!("read {}", log.display()))?;
        report.logs += 1;
        report.log_bytes += bytes.len();
        places.push((format!("operator log {}", log.display()), String::from_utf8_lossy(&bytes).into_owned()));
    }
    for e in Api::<Event>::all(client.clone()).list(&ListParams::default()).await.context("list Events")? {
        report.events += 1;
        let place = format!(
            "Event {}/{} ({})",
            e.namespace().unwrap_or_default(),
            e.name_any(),
            e.reason.as_deref().unwrap_or("")
        );
        places.push((place, strings_of(&serde_json::to_value(&e)?)));
    }
    for ar in [
        ApiResource::erase::<ClusterSecurityPolicy>(&()),
        ApiResource::erase::<CertificateRotation>(&()),
        ApiResource::erase::<KmsKeyVaultMode>(&()),
    ] {
        let objects = match Api::<DynamicObject>::all_with(client.clone(), &ar).list(&ListParams::default()).await {
            Ok(list) => list.items,
            // The CRDs are not installed (a test of the engine alone): nothing has a status.
            Err(kube::Error::Api(e)) if e.code == 404 => Vec::new(),
            Err(e) => return Err(e).with_context(|| format!("list {}", ar.plural)),
        };
        for o in objects {
            if let Some(status) = o.data.get("status") {
                report.statuses += 1;
                let place = format!("status of {} {}/{}", ar.kind, o.namespace().unwrap_or_default(), o.name_any());
                places.push((place, strings_of(status)));
            }
        }
    }

    for cm in Api::<ConfigMap>::all(client.clone()).list(&ListParams::default()).await.context("list ConfigMaps")? {
        report.configmaps += 1;
        let place = format!("ConfigMap {}/{}", cm.namespace().unwrap_or_default(), cm.name_any());
        places.push((place, strings_of(&serde_json::to_value(&cm.data)?)));
    }

    let mut forbidden = Forbidden::default();
    for s in Api::<Secret>::all(client).list(&ListParams::default()).await.context("list Secrets")? {
        forbidden.add_secret(&s);
    }
    for (i, m) in markers.iter().enumerate() {
        forbidden.add_marker(&format!("marker {}", i + 1), m);
    }
    (report.secrets, report.key_blocks, report.values, report.forbidden) =
        (forbidden.secrets, forbidden.key_blocks, forbidden.values, forbidden.len());

    let mut found = Vec::new();
    for (place, text) in &places {
        report.bytes += text.len();
        found.extend(forbidden.find(place, text));
    }
    if !found.is_empty() {
        let n = found.len();
        found.truncate(MAX_FINDINGS);
        bail!("secret material shown ({n} finding(s); values cut short; {report}):\n{}", found.join("\n"));
    }
    Ok(report)
}

/// [`audit`] for tests: panics with the findings (every end-to-end test ends with it).
pub async fn assert_none(cp: &ControlPlane, markers: &[&str]) -> Report {
    audit(cp, markers).await.unwrap_or_else(|e| panic!("{e:#}"))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::pki;
    use k8s_openapi::ByteString;

    fn secret(name: &str, data: &[(&str, &str)]) -> Secret {
        let mut s = Secret::default();
        s.metadata.name = Some(name.into());
        s.metadata.namespace = Some("ns".into());
        s.data = Some(data.iter().map(|(k, v)| (k.to_string(), ByteString(v.as_bytes().to_vec()))).collect());
        s
    }

    #[test]
    fn private_keys_and_long_values_are_forbidden_certificates_and_names_are_not() {
        let now = k8s_openapi::jiff::Timestamp::now();
        let ca = pki::new_ca("leaks CA", now, 1).unwrap();
        let password = "hunter2-but-much-longer";
        let mut f = Forbidden::default();
        f.add_secret(&secret(
            "tls",
            &[("tls.key", &ca.key_pem), ("tls.crt", &ca.cert_pem), ("password", password), ("namespace", "default")],
        ));
        f.add_marker("marker 1", "MARK");
        assert_eq!((f.secrets, f.key_blocks, f.values), (1, 1, 1));

        let key_line = key_blocks(&ca.key_pem).concat().into_iter().next().unwrap();
        let log = format!("2024 INFO reconciling Secret ns/tls key tls.key in namespace default\n{}", ca.cert_pem);
        assert!(f.find("log", &log).is_empty(), "names, short values and certificates are not secret");

        for (shown, origin) in [
            (key_line.clone(), "Secret ns/tls key tls.key, private key line"),
            (b64(ca.key_pem.as_bytes()), "Secret ns/tls key tls.key, base64"),
            (format!("pw={password};"), "Secret ns/tls key password)"),
            (b64(password.as_bytes()), "Secret ns/tls key password, base64"),
            ("xMARKx".into(), "marker 1"),
        ] {
            let found = f.find("operator log x", &format!("before {shown} after"));
            assert_eq!(found.len(), 1, "{shown}: {found:?}");
            assert!(found[0].starts_with("operator log x: ") && found[0].contains(origin), "{found:?}");
            assert!(!found[0].contains(&key_line) && !found[0].contains(password), "never the whole value: {found:?}");
        }
        let found = f.find("status", "-----BEGIN PRIVATE KEY-----");
        assert_eq!(found, vec!["status: the text `PRIVATE KEY`".to_string()]);
    }

    #[test]
    fn service_account_token_namespace_is_a_name_its_token_is_secret() {
        let mut token = secret(
            "sa-token-x",
            &[("namespace", "cluster-security-operator"), ("token", "eyJhbGciOiJSUzI1NiJ9.e30.c2ln")],
        );
        token.type_ = Some("kubernetes.io/service-account-token".into());
        let mut f = Forbidden::default();
        f.add_secret(&token);
        assert!(f.find("log", "namespace=cluster-security-operator").is_empty());
        assert_eq!(f.find("log", "bearer eyJhbGciOiJSUzI1NiJ9.e30.c2ln").len(), 1);
    }

    #[test]
    fn key_blocks_take_only_private_keys() {
        let pem = "-----BEGIN CERTIFICATE-----\nCERTLINECERTLINECERTLINE\n-----END CERTIFICATE-----\n\
                   -----BEGIN EC PRIVATE KEY-----\nProc-Type: 4,ENCRYPTED\nKEYLINEKEYLINEKEYLINE\nshort\n-----END EC PRIVATE KEY-----\n";
        assert_eq!(key_blocks(pem), vec![vec!["KEYLINEKEYLINEKEYLINE".to_string()]]);
    }

    #[test]
    fn json_strings_are_read_unescaped() {
        let v = serde_json::json!({"message": "a \"quoted\" <value>", "n": 1, "list": ["x"]});
        let text = strings_of(&v);
        assert!(text.contains("a \"quoted\" <value>") && text.contains("message") && text.contains('x'));
    }
}
