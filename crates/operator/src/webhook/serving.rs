//! Where the webhook's serving certificate comes from, and how it stays current without a
//! restart: either files mounted from elsewhere (cert-manager; reloaded when they change, see
//! [`certs::reload_on_change`]) or the operator's own CA and leaf kept in a Secret, renewed by
//! [`renew`] — hourly, publishing a new CA as the configuration's `caBundle` before the new
//! leaf is served.
//!
//! What this module may touch: the webhook's Secret (in the operator's namespace) and the
//! `caBundle` of its ValidatingWebhookConfiguration, both through [`certs`].

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use axum_server::tls_rustls::RustlsConfig;
use kube::Client;
use tracing::{info, warn};

use super::certs;
use super::client_auth::{self, ClientAuth};
use crate::reconciler::Clock;

/// How often the operator's own serving certificate is checked for renewal (it is renewed
/// [`certs::RENEW_BEFORE_SECONDS`] before it expires, so an hour is plenty).
pub(crate) const RENEWAL_CHECK: Duration = Duration::from_secs(3600);

/// What the serving certificate is made from (the webhook flags, resolved).
#[derive(Debug, Clone)]
pub(crate) struct Source {
    /// A directory with tls.crt and tls.key (cert-manager): served as they are, reloaded on change.
    pub cert_dir: Option<PathBuf>,
    /// Otherwise: the operator's own material, kept in this Secret of `namespace`…
    pub namespace: String,
    pub secret: String,
    /// …its CA published to this ValidatingWebhookConfiguration…
    pub config: String,
    /// …and its leaf naming these.
    pub sans: Vec<String>,
    /// Only clients with a certificate this accepts (None: any client).
    pub client_auth: Option<ClientAuth>,
}

/// The serving configuration, loaded or created now; the task that keeps it current runs in the
/// background.
pub(crate) async fn serving_config(
    client: &Client,
    source: Source,
    clock: Arc<dyn Clock>,
) -> anyhow::Result<RustlsConfig> {
    let serving = |crt: &[u8], key: &[u8]| client_auth::server_config(crt, key, source.client_auth.as_ref());
    if let Some(dir) = &source.cert_dir {
        let (crt, key) = (dir.join("tls.crt"), dir.join("tls.key"));
        let config = RustlsConfig::from_config(serving(&std::fs::read(&crt)?, &std::fs::read(&key)?)?);
        tokio::spawn(certs::reload_on_change(config.clone(), crt, key, certs::RELOAD_CHECK, source.client_auth));
        return Ok(config);
    }
    let material = certs::ensure(client, &source.namespace, &source.secret, &source.sans, clock.now()).await?;
    certs::publish_ca_bundle(client, &source.config, &material.ca.cert_pem).await?;
    let config =
        RustlsConfig::from_config(serving(material.leaf.cert_pem.as_bytes(), material.leaf.key_pem.as_bytes())?);
    tokio::spawn(renew(client.clone(), source, clock, config.clone(), material.leaf.cert_pem));
    Ok(config)
}

/// Every [`RENEWAL_CHECK`]: renew the operator's own material when it is due (any replica may;
/// the Secret is shared), publish its CA, and serve the new leaf from `config` once it differs
/// from `served`. Failures are logged and tried again at the next check: the current leaf
/// stays valid for [`certs::RENEW_BEFORE_SECONDS`] yet.
async fn renew(client: Client, source: Source, clock: Arc<dyn Clock>, config: RustlsConfig, mut served: String) {
    loop {
        tokio::time::sleep(RENEWAL_CHECK).await;
        let material = match certs::ensure(&client, &source.namespace, &source.secret, &source.sans, clock.now()).await
        {
            Ok(m) if m.leaf.cert_pem != served => m,
            Ok(_) => continue,
            Err(e) => {
                warn!(error = %e, "webhook certificate renewal check failed");
                continue;
            }
        };
        if let Err(e) = certs::publish_ca_bundle(&client, &source.config, &material.ca.cert_pem).await {
            warn!(error = %e, "could not publish renewed caBundle");
        }
        let leaf = &material.leaf;
        match client_auth::server_config(leaf.cert_pem.as_bytes(), leaf.key_pem.as_bytes(), source.client_auth.as_ref())
        {
            Ok(server) => {
                config.reload_from_config(server);
                info!("webhook serving certificate renewed");
                served = material.leaf.cert_pem;
            }
            Err(e) => warn!(error = %e, "could not reload renewed webhook certificate"),
        }
    }
}
