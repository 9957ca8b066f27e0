//! `kubectl clustersecurity`: the operator's kubectl plugin (binary `kubectl-clustersecurity`,
//! docs/plugin.md). Day-2 work from the command line:
//! - [`status`]: one screen per object — spec, the operation in force, certificates, trust,
//!   verification, the last events (`-o json|yaml` too);
//! - [`annotate`]: `renew`, `renew-ca`, `retry`, `pause`, `resume`, `confirm-trust` — each writes
//!   the documented annotation (a merge patch) and prints the `kubectl annotate` line that does
//!   the same, so GitOps users can keep doing it by hand;
//! - [`inspect`]: what the operator sees in a Secret before a CertificateRotation names it (the
//!   operator's own checks, `certificate_rotation::inspect`);
//! - [`reencrypt`]: every Secret rewritten through the API server by the product's engine
//!   (`kms_key_vault_mode::reencrypt`), with progress, a checkpoint file and a verification pass.
//!
//! What this module may touch: it is a client. It reads our three kinds, Events, the Secrets and
//! ConfigMaps it is pointed at; it writes annotations on our kinds (never spec or status) and,
//! for `reencrypt`, the no-op merge patch `{}` on Secrets, and one local checkpoint file. It
//! never prints a Secret's values (keys and certificates' public facts only).

mod annotate;
mod inspect;
mod output;
mod reencrypt;
mod status;
mod target;

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};

use self::output::Format;

/// How the plugin ends, for scripts (docs/plugin.md#exit-codes).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Exit {
    /// Done.
    Ok = 0,
    /// The action did not happen or did not fully succeed: nothing waits to be confirmed,
    /// Secrets could not be rewritten, the operator would refuse the inspected material.
    Failed = 1,
    /// Bad arguments (clap's own code for usage errors too).
    Usage = 2,
    /// The cluster cannot be reached, or refused us (no kubeconfig, connection, 401, 403).
    Unreachable = 3,
    /// The object or Secret named does not exist.
    NotFound = 4,
    /// `reencrypt`: the verification pass found Secrets still stored under an older provider.
    Unverified = 5,
    /// `reencrypt`: interrupted (Ctrl-C); the checkpoint holds where it stopped.
    Interrupted = 130,
}

/// Why a subcommand stopped: the exit code and what to tell the user (stderr).
#[derive(Debug)]
pub(crate) struct Failure {
    pub exit: Exit,
    pub message: String,
}

impl Failure {
    pub(crate) fn new(exit: Exit, message: impl Into<String>) -> Self {
        Self { exit, message: message.into() }
    }

    pub(crate) fn usage(message: impl Into<String>) -> Self {
        Self::new(Exit::Usage, message)
    }

    /// An API error about `what` (e.g. "certificaterotation kafka/certs"), with the code a script
    /// can tell apart.
    pub(crate) fn kube(what: &str, e: kube::Error) -> Self {
        match &e {
            kube::Error::Api(s) if s.code == 404 => Self::new(Exit::NotFound, format!("{what} not found")),
            kube::Error::Api(s) if s.code == 401 || s.code == 403 => Self::new(
                Exit::Unreachable,
                format!("the cluster refused access to {what} ({} {}): {}", s.code, s.reason, s.message),
            ),
            kube::Error::Api(s) => Self::new(Exit::Failed, format!("{what}: {} {}: {}", s.code, s.reason, s.message)),
            _ => Self::new(Exit::Unreachable, format!("cannot reach the cluster ({what}): {e}")),
        }
    }
}

pub(crate) type Outcome = Result<Exit, Failure>;

#[derive(Parser, Debug)]
#[command(
    name = "kubectl-clustersecurity",
    bin_name = "kubectl clustersecurity",
    version,
    about = "Day-2 operations for cluster-security-operator's ClusterSecurityPolicy, CertificateRotation and KmsKeyVaultMode",
    after_help = "Exit codes: 0 done, 1 failed (nothing done or not all), 2 usage, 3 cluster unreachable or access refused, 4 not found, 5 reencrypt verification found stale Secrets, 130 interrupted. See docs/plugin.md."
)]
pub(crate) struct Cli {
    /// Path to the kubeconfig file (default: KUBECONFIG, then ~/.kube/config, then in-cluster).
    #[arg(long, global = true)]
    kubeconfig: Option<PathBuf>,
    /// The kubeconfig context to use.
    #[arg(long, global = true)]
    context: Option<String>,
    #[command(subcommand)]
    command: Cmd,
}

/// `-n` of the commands that name one object.
#[derive(clap::Args, Debug, Clone, PartialEq, Eq)]
pub(crate) struct Target {
    /// `<kind>/<name>`: csp/NAME (clustersecuritypolicy), certrot/NAME (certificaterotation),
    /// kmsmode/NAME (kmskeyvaultmode, cluster-scoped).
    #[arg(value_name = "KIND/NAME")]
    target: String,
    /// Namespace of the object (default: the context's namespace).
    #[arg(short = 'n', long)]
    namespace: Option<String>,
}

#[derive(Subcommand, Debug)]
pub(crate) enum Cmd {
    /// One screen on an object: spec, the operation in force, certificates, trust, verification, events.
    Status {
        #[command(flatten)]
        target: Target,
        /// text (default), json or yaml.
        #[arg(short = 'o', long, value_enum, default_value_t = Format::Text)]
        output: Format,
    },
    /// CertificateRotation: renew the certificates now, without a label change (annotation clustersecurity.io/renew).
    Renew(Target),
    /// CertificateRotation: renew the CAs the operator keeps now, trust first (clustersecurity.io/renew-ca).
    RenewCa(Target),
    /// Run a failed operation again without a spec change (clustersecurity.io/retry).
    Retry(Target),
    /// Stop every change the operator makes for the object (clustersecurity.io/reconcile=paused).
    Pause(Target),
    /// Undo pause (removes clustersecurity.io/reconcile).
    Resume(Target),
    /// CertificateRotation: confirm clients trust the new CA of the waiting operation
    /// (clustersecurity.io/client-trust-updated=<its id>); refused when nothing waits.
    ConfirmTrust(Target),
    /// What the operator sees in an object before you reference it.
    Inspect {
        #[command(subcommand)]
        what: InspectCmd,
    },
    /// Rewrite every Secret through the API server so it is stored under the current encryption
    /// configuration (after an aescbc/secretbox key rotation or a move to KMS).
    Reencrypt(reencrypt::Args),
}

#[derive(Subcommand, Debug)]
pub(crate) enum InspectCmd {
    /// A Secret a CertificateRotation of `type: secret` would read: chain, key match, expiry, issuer.
    Secret(inspect::Args),
}

/// Entry point of the `kubectl-clustersecurity` binary.
pub fn main() -> ExitCode {
    let cli = match Cli::try_parse() {
        Ok(cli) => cli,
        Err(e) => {
            // --help and --version print and succeed; usage errors exit 2 (clap's code).
            let _ = e.print();
            return ExitCode::from(u8::try_from(e.exit_code().clamp(0, 255)).unwrap_or(u8::MAX));
        }
    };
    let filter = tracing_subscriber::EnvFilter::try_from_env("KUBECTL_CLUSTERSECURITY_LOG")
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("warn"));
    tracing_subscriber::fmt().with_env_filter(filter).with_writer(std::io::stderr).init();
    let runtime = match tokio::runtime::Builder::new_multi_thread().enable_all().build() {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("error: cannot start the async runtime: {e}");
            return ExitCode::from(Exit::Failed as u8);
        }
    };
    let exit = match runtime.block_on(dispatch(cli)) {
        Ok(exit) => exit,
        Err(f) => {
            eprintln!("error: {}", f.message);
            f.exit
        }
    };
    ExitCode::from(exit as u8)
}

/// A client for the kubeconfig and context asked for, and the namespace to use when none is
/// given (the context's, else `default`).
pub(crate) struct Cluster {
    pub client: kube::Client,
    pub default_namespace: String,
    /// The API server's URL (recorded in a reencrypt checkpoint).
    pub server: String,
}

async fn connect(kubeconfig: Option<&PathBuf>, context: Option<&String>) -> Result<Cluster, Failure> {
    use kube::config::{KubeConfigOptions, Kubeconfig};
    let options = KubeConfigOptions { context: context.cloned(), ..Default::default() };
    let config = match kubeconfig {
        Some(path) => {
            let file = Kubeconfig::read_from(path).map_err(|e| {
                Failure::new(Exit::Unreachable, format!("cannot read the kubeconfig {}: {e}", path.display()))
            })?;
            kube::Config::from_custom_kubeconfig(file, &options).await.map_err(|e| e.to_string())
        }
        None if context.is_some() => kube::Config::from_kubeconfig(&options).await.map_err(|e| e.to_string()),
        None => kube::Config::infer().await.map_err(|e| e.to_string()),
    }
    .map_err(|e| Failure::new(Exit::Unreachable, format!("no usable cluster configuration: {e}")))?;
    let server = config.cluster_url.to_string();
    let default_namespace = config.default_namespace.clone();
    let client = kube::Client::try_from(config)
        .map_err(|e| Failure::new(Exit::Unreachable, format!("cannot build a client for the cluster: {e}")))?;
    Ok(Cluster { client, default_namespace, server })
}

async fn dispatch(cli: Cli) -> Outcome {
    use annotate::Verb;
    // Usage is checked before the cluster is asked anything.
    match &cli.command {
        Cmd::Status { target, .. }
        | Cmd::Renew(target)
        | Cmd::RenewCa(target)
        | Cmd::Retry(target)
        | Cmd::Pause(target)
        | Cmd::Resume(target)
        | Cmd::ConfirmTrust(target) => {
            target::Ref::parse(&target.target).map_err(Failure::usage)?;
        }
        Cmd::Inspect { .. } => {}
        Cmd::Reencrypt(args) => args.check().map_err(Failure::usage)?,
    }
    let cluster = connect(cli.kubeconfig.as_ref(), cli.context.as_ref()).await?;
    match cli.command {
        Cmd::Status { target, output } => status::run(&cluster, &target, output).await,
        Cmd::Renew(t) => annotate::run(&cluster, &t, Verb::Renew).await,
        Cmd::RenewCa(t) => annotate::run(&cluster, &t, Verb::RenewCa).await,
        Cmd::Retry(t) => annotate::run(&cluster, &t, Verb::Retry).await,
        Cmd::Pause(t) => annotate::run(&cluster, &t, Verb::Pause).await,
        Cmd::Resume(t) => annotate::run(&cluster, &t, Verb::Resume).await,
        Cmd::ConfirmTrust(t) => annotate::run(&cluster, &t, Verb::ConfirmTrust).await,
        Cmd::Inspect { what: InspectCmd::Secret(args) } => inspect::run(&cluster, &args).await,
        Cmd::Reencrypt(args) => reencrypt::run(&cluster, &args).await,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(args: &[&str]) -> Result<Cli, clap::Error> {
        Cli::try_parse_from(std::iter::once("kubectl-clustersecurity").chain(args.iter().copied()))
    }

    #[test]
    fn every_subcommand_parses_with_its_options() {
        let cli = parse(&["status", "certrot/certs", "-n", "kafka", "-o", "json"]).unwrap();
        let Cmd::Status { target, output } = cli.command else { panic!("status") };
        assert_eq!(
            (target.target.as_str(), target.namespace.as_deref(), output),
            ("certrot/certs", Some("kafka"), Format::Json)
        );
        let cli = parse(&["--context", "prod", "confirm-trust", "certrot/certs", "--namespace", "kafka"]).unwrap();
        assert_eq!(cli.context.as_deref(), Some("prod"));
        assert!(
            matches!(cli.command, Cmd::ConfirmTrust(Target { ref namespace, .. }) if namespace.as_deref() == Some("kafka"))
        );
        for verb in ["renew", "renew-ca", "retry", "pause", "resume"] {
            assert!(parse(&[verb, "csp/orders"]).is_ok(), "{verb}");
        }
        let cli = parse(&["inspect", "secret", "orders-cert", "-n", "kafka"]).unwrap();
        assert!(matches!(cli.command, Cmd::Inspect { what: InspectCmd::Secret(ref a) } if a.name == "orders-cert"));
        let cli = parse(&["reencrypt", "-n", "a", "--namespace", "b,c", "--concurrency", "16", "--resume"]).unwrap();
        let Cmd::Reencrypt(args) = cli.command else { panic!("reencrypt") };
        assert_eq!(args.namespace, ["a", "b", "c"]);
        assert_eq!(args.concurrency, reencrypt::Concurrency::Fixed(16));
        assert!(args.resume);
        let Cmd::Reencrypt(auto) = parse(&["reencrypt"]).unwrap().command else { panic!() };
        assert_eq!(auto.concurrency, reencrypt::Concurrency::Auto);
    }

    #[test]
    fn the_krew_manifest_names_this_binary_at_this_version() {
        let manifest: serde_yaml::Value =
            serde_yaml::from_str(include_str!("../../../../plugins/krew/clustersecurity.yaml")).unwrap();
        assert_eq!(manifest["metadata"]["name"], "clustersecurity", "kubectl clustersecurity");
        assert_eq!(manifest["spec"]["version"].as_str(), Some(format!("v{}", env!("CARGO_PKG_VERSION")).as_str()));
        let platforms = manifest["spec"]["platforms"].as_sequence().unwrap();
        assert!(!platforms.is_empty());
        for p in platforms {
            assert_eq!(p["bin"], "kubectl-clustersecurity");
            let uri = p["uri"].as_str().unwrap();
            assert!(uri.ends_with(".tar.gz") && uri.contains(&format!("v{}", env!("CARGO_PKG_VERSION"))), "{uri}");
        }
        let cli = <Cli as clap::CommandFactory>::command();
        assert_eq!(cli.get_name(), "kubectl-clustersecurity");
        assert_eq!(cli.get_version(), Some(env!("CARGO_PKG_VERSION")), "the operator's version");
    }

    #[test]
    fn usage_errors_exit_2_and_name_what_is_wrong() {
        let e = parse(&["status", "certrot/certs", "-o", "xml"]).unwrap_err();
        assert_eq!(e.exit_code(), 2);
        assert_eq!(parse(&["renew"]).unwrap_err().exit_code(), 2, "a target is required");
        let e = parse(&["reencrypt", "--concurrency", "0"]).unwrap_err();
        assert!(e.to_string().contains("between 1 and 64"), "{e}");
        assert_eq!(e.exit_code(), 2);
        assert!(parse(&["reencrypt", "--concurrency", "lots"]).is_err());
        assert_eq!(parse(&["--version"]).unwrap_err().exit_code(), 0, "--version prints and succeeds");
    }
}
