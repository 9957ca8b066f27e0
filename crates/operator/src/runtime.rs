//! The composition root: from parsed arguments to a running operator — the Kubernetes client,
//! logging, the health and metrics endpoints, the admission webhook (every replica), leader
//! election, and the three controllers (on the leader) until SIGTERM / Ctrl-C.

use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use axum_server::tls_rustls::RustlsConfig;
use futures::future::OptionFuture;
use tracing::{error, info, warn};

use crate::api::{CertificateRotation, ClusterSecurityPolicy, KmsKeyVaultMode};
use crate::args::{ControllerKind, LogFormat, RunArgs};
use crate::health::{self, Readiness};
use crate::kms_key_vault_mode::ProviderFactory;
use crate::metrics::Metrics;
use crate::reconciler::{self, Clock, Context, SystemClock};
use crate::{leader, webhook};

/// Set up `tracing`; RUST_LOG overrides the default level (info).
fn init_logging(format: LogFormat) {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "info,kube=warn".into());
    // Colour only on a terminal: log files and collectors get plain text.
    let ansi = std::io::IsTerminal::is_terminal(&std::io::stdout());
    let builder = tracing_subscriber::fmt().with_env_filter(filter).with_ansi(ansi);
    match format {
        LogFormat::Json => builder.json().init(),
        LogFormat::Text => builder.init(),
    }
}

/// Load or create the webhook's serving material and keep it renewed in the background.
async fn webhook_tls(client: &kube::Client, args: &RunArgs, clock: Arc<dyn Clock>) -> anyhow::Result<RustlsConfig> {
    let client_auth = match &args.webhook_client_ca_file {
        Some(path) => {
            let pem = std::fs::read(path)
                .map_err(|e| anyhow::anyhow!("reading --webhook-client-ca-file {}: {e}", path.display()))?;
            Some(webhook::client_auth::ClientAuth::from_pem(&pem, args.webhook_client_names.clone())?)
        }
        None => None,
    };
    let serving = |crt: &[u8], key: &[u8]| webhook::client_auth::server_config(crt, key, client_auth.as_ref());
    if let Some(dir) = &args.webhook_cert_dir {
        let (crt, key) = (dir.join("tls.crt"), dir.join("tls.key"));
        let config = RustlsConfig::from_config(serving(&std::fs::read(&crt)?, &std::fs::read(&key)?)?);
        let reload =
            webhook::certs::reload_on_change(config.clone(), crt, key, webhook::certs::RELOAD_CHECK, client_auth);
        tokio::spawn(reload);
        return Ok(config);
    }
    let sans = args.webhook_sans();
    let material = webhook::certs::ensure(client, &args.namespace, &args.webhook_secret, &sans, clock.now()).await?;
    webhook::certs::publish_ca_bundle(client, &args.webhook_config, &material.ca.cert_pem).await?;
    let config =
        RustlsConfig::from_config(serving(material.leaf.cert_pem.as_bytes(), material.leaf.key_pem.as_bytes())?);
    // Renewal: check hourly; a renewed leaf is reloaded without a restart.
    let (client, args, reload) = (client.clone(), args.clone(), config.clone());
    tokio::spawn(async move {
        let mut served = material.leaf.cert_pem;
        loop {
            tokio::time::sleep(Duration::from_secs(3600)).await;
            match webhook::certs::ensure(&client, &args.namespace, &args.webhook_secret, &sans, clock.now()).await {
                Ok(m) if m.leaf.cert_pem != served => {
                    if let Err(e) =
                        webhook::certs::publish_ca_bundle(&client, &args.webhook_config, &m.ca.cert_pem).await
                    {
                        warn!(error = %e, "could not publish renewed caBundle");
                    }
                    match webhook::client_auth::server_config(
                        m.leaf.cert_pem.as_bytes(),
                        m.leaf.key_pem.as_bytes(),
                        client_auth.as_ref(),
                    ) {
                        Ok(server) => {
                            reload.reload_from_config(server);
                            info!("webhook serving certificate renewed");
                            served = m.leaf.cert_pem;
                        }
                        Err(e) => warn!(error = %e, "could not reload renewed webhook certificate"),
                    }
                }
                Ok(_) => {}
                Err(e) => warn!(error = %e, "webhook certificate renewal check failed"),
            }
        }
    });
    Ok(config)
}

/// `run`: webhook, health endpoints and the three controllers (on the leader) until SIGTERM /
/// Ctrl-C.
pub async fn run(args: RunArgs) -> anyhow::Result<()> {
    init_logging(args.log_format);
    let _ = rustls::crypto::ring::default_provider().install_default();
    let client = kube::Client::try_default().await.map_err(|e| {
        anyhow::anyhow!("cannot reach a Kubernetes cluster (in-cluster config, KUBECONFIG or ~/.kube/config): {e}")
    })?;
    let clock: Arc<dyn Clock> = Arc::new(SystemClock);
    let ready = Arc::new(Readiness::default());
    let metrics = Arc::new(Metrics::new());
    ready.standby.store(args.leader_elect, Ordering::Release);

    let health = tokio::spawn(health::serve(args.health_addr, ready.clone(), metrics.clone()));
    let handle = axum_server::Handle::new();
    if args.disable_webhook {
        ready.webhook.store(true, Ordering::Release);
    } else {
        let tls = webhook_tls(&client, &args, clock.clone()).await?;
        let (addr, handle2, ready2, client2) = (args.webhook_addr, handle.clone(), ready.clone(), client.clone());
        let (settings, metrics2) = (args.webhook_settings(), metrics.clone());
        tokio::spawn(async move {
            if let Err(e) = webhook::serve(addr, tls, handle2, client2, settings, metrics2).await {
                error!(error = %e, %addr, "webhook server stopped");
                ready2.webhook.store(false, Ordering::Release);
            }
        });
        if let Some(bound) = handle.listening().await {
            info!(addr = %bound, "admission webhook serving");
            ready.webhook.store(true, Ordering::Release);
        }
    }
    let kms: Arc<dyn ProviderFactory> = Arc::new(args.azure_factory(metrics.clone())?);
    let mut ctx = Context::new(client.clone(), clock, metrics.clone(), ready.clone());
    ctx.concurrency = args.concurrent_reconciles;
    ctx.scope = reconciler::Scope::namespaces(&args.watch_namespaces);
    ctx.namespace = args.namespace.clone();
    let controllers = args.controllers.clone();
    let result = if args.leader_elect {
        let election = leader::Election {
            namespace: args.namespace.clone(),
            lease: args.leader_elect_lease.clone(),
            identity: leader::identity(args.pod_name.as_deref()),
            duration: Duration::from_secs(args.leader_elect_lease_seconds),
            renew_before: Duration::from_secs(args.leader_elect_renew_before_seconds),
        };
        let mut leadership = leader::Leadership::join(client, &election).await?;
        let result = tokio::select! {
            _ = leadership.acquired() => {
                metrics.set_leader(true);
                ready.standby.store(false, Ordering::Release);
                tokio::select! {
                    r = run_controllers(ctx, kms, &controllers) => r.map_err(anyhow::Error::from),
                    _ = leadership.lost() => Err(anyhow::anyhow!(
                        "lost the leader lease {}/{}; exiting so that this replica re-joins the election afresh",
                        election.namespace, election.lease
                    )),
                }
            }
            _ = shutdown_signal() => Ok(()),
        };
        leadership.release().await;
        result
    } else {
        metrics.set_leader(true);
        run_controllers(ctx, kms, &controllers).await.map_err(anyhow::Error::from)
    };
    handle.graceful_shutdown(Some(Duration::from_secs(5)));
    health.abort();
    info!("stopped");
    result
}

/// Run the enabled controllers until SIGTERM / Ctrl-C; `kms_providers` makes the cloud provider
/// of each KmsKeyVaultMode.
async fn run_controllers(
    ctx: Context,
    kms_providers: Arc<dyn ProviderFactory>,
    enabled: &[ControllerKind],
) -> Result<(), reconciler::Error> {
    let on = |k: ControllerKind| enabled.contains(&k);
    let (csp, certrot, kms) = (
        on(ControllerKind::ClusterSecurityPolicy),
        on(ControllerKind::CertificateRotation),
        on(ControllerKind::KmsKeyVaultMode),
    );
    if csp {
        reconciler::check_crd::<ClusterSecurityPolicy>(&ctx.client).await?;
    }
    if certrot {
        reconciler::check_crd::<CertificateRotation>(&ctx.client).await?;
    }
    if kms {
        reconciler::check_crd::<KmsKeyVaultMode>(&ctx.client).await?;
    }
    // One per enabled kind, as joined below; readiness waits for each one's cache.
    ctx.readiness.controllers.store([csp, certrot, kms].iter().filter(|x| **x).count(), Ordering::Release);
    info!(controllers = ?enabled, namespaces = %ctx.scope.describe(), "starting controllers");
    let ctx = Arc::new(ctx);
    // A controller that is off is a future that is done at once.
    let (csp, certrot, kms): (OptionFuture<_>, OptionFuture<_>, OptionFuture<_>) = (
        csp.then(|| reconciler::run::<ClusterSecurityPolicy>(ctx.clone(), Arc::new(()))).into(),
        certrot.then(|| reconciler::run::<CertificateRotation>(ctx.clone(), Arc::new(()))).into(),
        kms.then(|| reconciler::run::<KmsKeyVaultMode>(ctx.clone(), Arc::new(kms_providers))).into(),
    );
    futures::join!(csp, certrot, kms);
    Ok(())
}

/// SIGTERM (Kubernetes stopping the pod) or Ctrl-C: for a standby replica (the controllers listen
/// for these themselves).
async fn shutdown_signal() {
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()).expect("SIGTERM handler");
    tokio::select! {
        _ = term.recv() => {}
        _ = tokio::signal::ctrl_c() => {}
    }
}
