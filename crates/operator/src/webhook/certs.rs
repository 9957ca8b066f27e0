//! The webhook's own serving certificate: a CA and a leaf issued with rcgen, kept in a Secret so
//! every replica serves the same certificate, and the CA published as the `caBundle` of the
//! ValidatingWebhookConfiguration.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::time::Duration;

use k8s_openapi::api::admissionregistration::v1::ValidatingWebhookConfiguration;
use k8s_openapi::api::core::v1::Secret;
use k8s_openapi::jiff::Timestamp;
use k8s_openapi::ByteString;
use kube::api::{ObjectMeta, Patch, PatchParams, PostParams};
use kube::{Api, Client};
use tracing::{info, warn};

use crate::pki::{self, KeyedCert, Usage};

const CA_DAYS: u32 = 3650;
const LEAF_DAYS: u32 = 365;
/// Renew the serving certificate when less than this is left.
pub(crate) const RENEW_BEFORE_SECONDS: i64 = 30 * 86_400;

/// How often the files of `--webhook-cert-dir` are checked for a renewed pair.
pub(crate) const RELOAD_CHECK: Duration = Duration::from_secs(10);

/// Serve the newest pair in `crt`/`key` (`--webhook-cert-dir`): cert-manager renews its Secret,
/// the kubelet swaps the mounted files, and the webhook serves the new pair within `every`,
/// without a restart. A changed pair that does not load (caught mid-swap, or broken) is logged
/// once and the pair being served stays.
pub(crate) async fn reload_on_change(
    config: axum_server::tls_rustls::RustlsConfig,
    crt: PathBuf,
    key: PathBuf,
    every: Duration,
    client_auth: Option<super::client_auth::ClientAuth>,
) {
    let read = || (std::fs::read(&crt).ok(), std::fs::read(&key).ok());
    let mut seen = read();
    loop {
        tokio::time::sleep(every).await;
        let now = read();
        if now == seen {
            continue;
        }
        seen = now.clone();
        let (Some(c), Some(k)) = now else { continue };
        match super::client_auth::server_config(&c, &k, client_auth.as_ref()) {
            Ok(server) => {
                config.reload_from_config(server);
                info!(file = %crt.display(), "webhook serving certificate reloaded")
            }
            Err(e) => {
                warn!(error = %e, file = %crt.display(), "the changed webhook certificate does not load; still serving the previous one")
            }
        }
    }
}

/// The material the webhook serves with.
#[derive(Clone, Debug)]
pub(crate) struct ServingMaterial {
    pub ca: KeyedCert,
    pub leaf: KeyedCert,
}

#[derive(Debug, thiserror::Error)]
pub(crate) enum CertError {
    #[error(transparent)]
    Pki(#[from] pki::PkiError),
    #[error("reading or writing webhook certificate Secret {namespace}/{name}: {source}")]
    Secret { namespace: String, name: String, source: kube::Error },
    #[error("webhook certificate Secret {namespace}/{name} kept changing under us; will retry")]
    Contended { namespace: String, name: String },
    #[error("updating caBundle of ValidatingWebhookConfiguration {name}: {source}")]
    CaBundle { name: String, source: kube::Error },
}

/// What to do with the material found in the Secret (pure decision).
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum Plan {
    /// Usable as it is.
    Keep,
    /// CA is fine, the leaf is missing, expiring, or lacks a SAN.
    ReissueLeaf,
    /// No usable CA: start over.
    NewCa,
}

/// Decide whether stored material can be served for `sans` at `now`.
pub(crate) fn plan(stored: Option<&ServingMaterial>, sans: &[String], now: Timestamp) -> Plan {
    let Some(m) = stored else { return Plan::NewCa };
    match pki::seconds_left(&m.ca.cert_pem, now) {
        Some(left) if left > RENEW_BEFORE_SECONDS => {}
        _ => return Plan::NewCa,
    }
    let fresh = pki::seconds_left(&m.leaf.cert_pem, now).is_some_and(|left| left > RENEW_BEFORE_SECONDS);
    let covers = pki::subject_alt_names(&m.leaf.cert_pem).is_some_and(|have| sans.iter().all(|s| have.contains(s)));
    if fresh && covers {
        Plan::Keep
    } else {
        Plan::ReissueLeaf
    }
}

/// Carry out `plan`: material to serve.
pub(crate) fn build(
    plan: &Plan,
    stored: Option<ServingMaterial>,
    sans: &[String],
    now: Timestamp,
) -> Result<ServingMaterial, pki::PkiError> {
    let ca = match (plan, stored) {
        (Plan::Keep, Some(m)) => return Ok(m),
        (Plan::ReissueLeaf, Some(m)) => m.ca,
        _ => pki::new_ca("cluster-security-operator webhook CA", now, CA_DAYS)?,
    };
    let common_name = sans.first().map(String::as_str).unwrap_or("cluster-security-operator-webhook");
    let leaf = pki::issue_leaf(&ca, common_name, sans, Usage::Server, now, LEAF_DAYS)?;
    Ok(ServingMaterial { ca, leaf })
}

fn from_secret(secret: &Secret) -> Option<ServingMaterial> {
    let data = secret.data.as_ref()?;
    let get = |k: &str| data.get(k).and_then(|v| String::from_utf8(v.0.clone()).ok());
    Some(ServingMaterial {
        ca: KeyedCert { cert_pem: get("ca.crt")?, key_pem: get("ca.key")? },
        leaf: KeyedCert { cert_pem: get("tls.crt")?, key_pem: get("tls.key")? },
    })
}

fn secret_data(m: &ServingMaterial) -> BTreeMap<String, ByteString> {
    [("ca.crt", &m.ca.cert_pem), ("ca.key", &m.ca.key_pem), ("tls.crt", &m.leaf.cert_pem), ("tls.key", &m.leaf.key_pem)]
        .into_iter()
        .map(|(k, v)| (k.to_string(), ByteString(v.as_bytes().to_vec())))
        .collect()
}

/// Load the serving material from Secret `namespace/name`, renewing and storing it when needed.
/// Optimistic concurrency (create / replace with resourceVersion) makes replicas that start
/// together converge on one certificate. When the namespace does not exist (a local run), the
/// material is kept in memory only.
pub(crate) async fn ensure(
    client: &Client,
    namespace: &str,
    name: &str,
    sans: &[String],
    now: Timestamp,
) -> Result<ServingMaterial, CertError> {
    let api: Api<Secret> = Api::namespaced(client.clone(), namespace);
    let err = |source| CertError::Secret { namespace: namespace.into(), name: name.into(), source };
    for _ in 0..5 {
        let existing = api.get_opt(name).await.map_err(err)?;
        let stored = existing.as_ref().and_then(from_secret);
        let plan = plan(stored.as_ref(), sans, now);
        if plan == Plan::Keep {
            return Ok(stored.expect("Keep implies stored material"));
        }
        let material = build(&plan, stored, sans, now)?;
        info!(secret = %format!("{namespace}/{name}"), ?plan, "storing webhook serving certificate");
        let result = match existing {
            None => {
                let secret = Secret {
                    metadata: ObjectMeta {
                        name: Some(name.into()),
                        namespace: Some(namespace.into()),
                        ..Default::default()
                    },
                    type_: Some("kubernetes.io/tls".into()),
                    data: Some(secret_data(&material)),
                    ..Default::default()
                };
                api.create(&PostParams::default(), &secret).await
            }
            Some(mut secret) => {
                secret.data = Some(secret_data(&material));
                api.replace(name, &PostParams::default(), &secret).await
            }
        };
        match result {
            Ok(_) => return Ok(material),
            // Another replica wrote first: read what it wrote.
            Err(kube::Error::Api(s)) if s.code == 409 => continue,
            Err(kube::Error::Api(s)) if s.code == 404 => {
                warn!(namespace, "namespace not found; webhook certificate kept in memory only");
                return Ok(material);
            }
            Err(e) => return Err(err(e)),
        }
    }
    Err(CertError::Contended { namespace: namespace.into(), name: name.into() })
}

/// Make every webhook of `config_name` trust `ca_pem`. Missing configuration: nothing to do.
pub(crate) async fn publish_ca_bundle(client: &Client, config_name: &str, ca_pem: &str) -> Result<bool, CertError> {
    let api: Api<ValidatingWebhookConfiguration> = Api::all(client.clone());
    let err = |source| CertError::CaBundle { name: config_name.into(), source };
    let Some(cfg) = api.get_opt(config_name).await.map_err(err)? else {
        warn!(config_name, "ValidatingWebhookConfiguration not found; caBundle not published");
        return Ok(false);
    };
    let bundle = ByteString(ca_pem.as_bytes().to_vec());
    let mut webhooks = cfg.webhooks.clone().unwrap_or_default();
    if webhooks.iter().all(|w| w.client_config.ca_bundle.as_ref() == Some(&bundle)) {
        return Ok(false);
    }
    for w in &mut webhooks {
        w.client_config.ca_bundle = Some(bundle.clone());
    }
    // resourceVersion makes this a compare-and-swap: a concurrent edit makes it fail, not vanish.
    let patch = serde_json::json!({
        "metadata": {"resourceVersion": cfg.metadata.resource_version},
        "webhooks": webhooks,
    });
    api.patch(config_name, &PatchParams::default(), &Patch::Merge(&patch)).await.map_err(err)?;
    info!(config_name, "published webhook caBundle");
    Ok(true)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(days: i64) -> Timestamp {
        Timestamp::from_second(1_800_000_000 + days * 86_400).unwrap()
    }

    #[test]
    fn plan_keeps_renews_and_restarts() {
        let sans = vec!["hook.ns.svc".to_string(), "127.0.0.1".to_string()];
        assert_eq!(plan(None, &sans, at(0)), Plan::NewCa);
        let m = build(&Plan::NewCa, None, &sans, at(0)).unwrap();
        assert_eq!(plan(Some(&m), &sans, at(1)), Plan::Keep);
        // Close to the leaf's expiry: new leaf, same CA (clients keep trusting the bundle).
        assert_eq!(plan(Some(&m), &sans, at(LEAF_DAYS as i64 - 10)), Plan::ReissueLeaf);
        let renewed = build(&Plan::ReissueLeaf, Some(m.clone()), &sans, at(LEAF_DAYS as i64 - 10)).unwrap();
        assert_eq!(renewed.ca.cert_pem, m.ca.cert_pem);
        assert_ne!(renewed.leaf.cert_pem, m.leaf.cert_pem);
        // A SAN the leaf lacks forces a new leaf.
        let more = vec!["hook.ns.svc".to_string(), "127.0.0.1".to_string(), "other".to_string()];
        assert_eq!(plan(Some(&m), &more, at(1)), Plan::ReissueLeaf);
        // Expired CA: start over.
        assert_eq!(plan(Some(&m), &sans, at(CA_DAYS as i64)), Plan::NewCa);
    }
}
