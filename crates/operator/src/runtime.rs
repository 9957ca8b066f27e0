//! The composition root: from parsed arguments to a running operator — the Kubernetes client,
//! logging, the health and metrics endpoints, the admission webhook (every replica), leader
//! election, and the three controllers (on the leader) until SIGTERM / Ctrl-C.

use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use axum_server::tls_rustls::RustlsConfig;
use futures::future::OptionFuture;
use tracing::{error, info};

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

/// The webhook's serving configuration from its flags (kept current by [`webhook::serving`]).
async fn webhook_tls(client: &kube::Client, args: &RunArgs, clock: Arc<dyn Clock>) -> anyhow::Result<RustlsConfig> {
    let flags = &args.webhook;
    let client_auth = match &flags.client_ca_file {
        Some(path) => {
            let pem = std::fs::read(path)
                .map_err(|e| anyhow::anyhow!("reading --webhook-client-ca-file {}: {e}", path.display()))?;
            Some(webhook::client_auth::ClientAuth::from_pem(&pem, flags.client_names.clone())?)
        }
        None => None,
    };
    let source = webhook::serving::Source {
        cert_dir: flags.cert_dir.clone(),
        namespace: args.replica.namespace.clone(),
        secret: flags.secret.clone(),
        config: flags.config.clone(),
        sans: args.webhook_sans(),
        client_auth,
    };
    webhook::serving::serving_config(client, source, clock).await
}

/// Serve the admission webhook in the background; readiness follows it (ready once it listens,
/// not ready if it stops).
async fn serve_webhook(
    client: &kube::Client,
    args: &RunArgs,
    clock: Arc<dyn Clock>,
    handle: &axum_server::Handle,
    ready: &Arc<Readiness>,
    metrics: &Arc<Metrics>,
) -> anyhow::Result<()> {
    let tls = webhook_tls(client, args, clock).await?;
    let (addr, handle2, ready2, client2) = (args.webhook.addr, handle.clone(), ready.clone(), client.clone());
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
    Ok(())
}

/// `run`: webhook, health endpoints and the three controllers (on the leader) until SIGTERM /
/// Ctrl-C.
pub async fn run(args: RunArgs) -> anyhow::Result<()> {
    init_logging(args.observability.log_format);
    let _ = rustls::crypto::ring::default_provider().install_default();
    let client = kube::Client::try_default().await.map_err(|e| {
        anyhow::anyhow!("cannot reach a Kubernetes cluster (in-cluster config, KUBECONFIG or ~/.kube/config): {e}")
    })?;
    let clock: Arc<dyn Clock> = Arc::new(SystemClock);
    let ready = Arc::new(Readiness::default());
    let metrics = Arc::new(Metrics::new());
    ready.standby.store(args.leader_election.enabled, Ordering::Release);

    let health = tokio::spawn(health::serve(args.observability.health_addr, ready.clone(), metrics.clone()));
    let handle = axum_server::Handle::new();
    if args.webhook.disabled {
        ready.webhook.store(true, Ordering::Release);
    } else {
        serve_webhook(&client, &args, clock.clone(), &handle, &ready, &metrics).await?;
    }
    let kms: Arc<dyn ProviderFactory> = Arc::new(args.azure.factory(&args.replica.namespace, metrics.clone())?);
    let ctx = Context::new(client.clone(), clock, metrics.clone(), ready.clone(), args.context_settings());
    let controllers = args.controllers.enabled.clone();
    let result = if args.leader_election.enabled {
        let election = args.election();
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
