//! Command line: `crd` prints the CRDs, `run` runs the controllers and the webhook. Every flag of
//! `run` can also be set through the environment variable named in `--help`. Parsing only: what
//! the flags start is [`crate::runtime`].

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use clap::{Parser, Subcommand, ValueEnum};

use crate::kms_key_vault_mode::azure::{AzureSettings, DEFAULT_ARM_ENDPOINT, DEFAULT_KEY_VAULT_ENDPOINT};
use crate::kms_key_vault_mode::AzureFactory;
use crate::reconciler::CONCURRENT_RECONCILES;

#[derive(Parser, Debug)]
#[command(
    name = "cluster-security-operator",
    version,
    about = "Kubernetes operator for broker security policy, certificate rotation and KMS key vault mode"
)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Subcommand, Debug)]
pub enum Command {
    /// Print the three CustomResourceDefinitions as YAML (what crds/ holds).
    Crd,
    /// Print every metric family the operator exports: name, type, help.
    Metrics,
    /// Run the controllers and the admission webhook against the current cluster
    /// (in-cluster config, else KUBECONFIG, else ~/.kube/config).
    Run(Box<RunArgs>),
}

/// The controllers `run` can start (`--controllers`).
#[derive(ValueEnum, Clone, Copy, Debug, PartialEq, Eq)]
pub enum ControllerKind {
    #[value(name = "ClusterSecurityPolicy")]
    ClusterSecurityPolicy,
    #[value(name = "CertificateRotation")]
    CertificateRotation,
    #[value(name = "KmsKeyVaultMode")]
    KmsKeyVaultMode,
}

#[derive(ValueEnum, Clone, Copy, Debug, PartialEq, Eq)]
pub enum LogFormat {
    Text,
    Json,
}

/// `run`'s flags, one group per concern. Every flag keeps the name, environment variable and
/// default it had when the flags were flat: the chart, `deploy/` and the docs set them by those
/// names (`tests::every_flag_keeps_its_name_env_and_default` holds them), and each its old
/// field name as its id (what `requires` and the help's value names use).
#[derive(clap::Args, Debug, Clone)]
pub struct RunArgs {
    #[command(flatten)]
    pub replica: ReplicaArgs,
    #[command(flatten)]
    pub webhook: WebhookArgs,
    #[command(flatten)]
    pub controllers: ControllerArgs,
    #[command(flatten)]
    pub leader_election: LeaderElectionArgs,
    #[command(flatten)]
    pub observability: ObservabilityArgs,
    #[command(flatten)]
    pub azure: AzureArgs,
}

/// Where this replica runs and who it is.
#[derive(clap::Args, Debug, Clone)]
#[command(next_help_heading = "Replica")]
pub struct ReplicaArgs {
    /// Namespace the operator runs in (its Secrets live here).
    #[arg(
        id = "namespace",
        value_name = "NAMESPACE",
        long = "namespace",
        env = "POD_NAMESPACE",
        default_value = "cluster-security-operator"
    )]
    pub namespace: String,
    /// This replica's name (the pod's): its identity in the leader Lease and the instance of the
    /// Events it publishes; unset: host name and a random suffix in the Lease, no instance.
    #[arg(id = "pod_name", value_name = "POD_NAME", long = "pod-name", env = "POD_NAME")]
    pub pod_name: Option<String>,
}

/// The admission webhook: where it serves and the certificate it serves with.
#[derive(clap::Args, Debug, Clone)]
#[command(next_help_heading = "Admission webhook")]
pub struct WebhookArgs {
    /// Address of the HTTPS admission webhook.
    #[arg(
        id = "webhook_addr",
        value_name = "WEBHOOK_ADDR",
        long = "webhook-addr",
        env = "CSO_WEBHOOK_ADDR",
        default_value = "0.0.0.0:8443"
    )]
    pub addr: SocketAddr,
    /// Do not serve the admission webhook (the controllers still refuse invalid specs with Stalled).
    #[arg(id = "disable_webhook", long = "disable-webhook", env = "CSO_DISABLE_WEBHOOK")]
    pub disabled: bool,
    /// Serve the webhook with tls.crt/tls.key from this directory (e.g. from cert-manager)
    /// instead of the operator's own certificate.
    #[arg(
        id = "webhook_cert_dir",
        value_name = "WEBHOOK_CERT_DIR",
        long = "webhook-cert-dir",
        env = "CSO_WEBHOOK_CERT_DIR"
    )]
    pub cert_dir: Option<PathBuf>,
    /// Answer only clients with a certificate chained to the CA in this PEM file: kube-apiserver,
    /// given a client certificate by its AdmissionConfiguration (see docs/security.md). Unset:
    /// any client that reaches the port may send reviews.
    #[arg(
        id = "webhook_client_ca_file",
        value_name = "WEBHOOK_CLIENT_CA_FILE",
        long = "webhook-client-ca-file",
        env = "CSO_WEBHOOK_CLIENT_CA_FILE"
    )]
    pub client_ca_file: Option<PathBuf>,
    /// With --webhook-client-ca-file: the client certificate must also name one of these (subject
    /// CN or DNS SAN), so that other certificates of the same CA are refused (comma-separated).
    #[arg(
        id = "webhook_client_names",
        value_name = "WEBHOOK_CLIENT_NAMES",
        long = "webhook-client-names",
        env = "CSO_WEBHOOK_CLIENT_NAMES",
        value_delimiter = ',',
        requires = "webhook_client_ca_file"
    )]
    pub client_names: Vec<String>,
    /// Secret (in --namespace) where the operator keeps its own webhook CA and certificate.
    #[arg(
        id = "webhook_secret",
        value_name = "WEBHOOK_SECRET",
        long = "webhook-secret",
        env = "CSO_WEBHOOK_SECRET",
        default_value = "cluster-security-operator-webhook-tls"
    )]
    pub secret: String,
    /// ValidatingWebhookConfiguration whose caBundle the operator keeps current.
    #[arg(
        id = "webhook_config",
        value_name = "WEBHOOK_CONFIG",
        long = "webhook-config",
        env = "CSO_WEBHOOK_CONFIG",
        default_value = "cluster-security-operator"
    )]
    pub config: String,
    /// Service in front of the webhook; its DNS names go into the serving certificate.
    #[arg(
        id = "webhook_service",
        value_name = "WEBHOOK_SERVICE",
        long = "webhook-service",
        env = "CSO_WEBHOOK_SERVICE",
        default_value = "cluster-security-operator-webhook"
    )]
    pub service: String,
    /// Extra subject alternative names (DNS names or IPs) for the serving certificate.
    #[arg(
        id = "webhook_extra_sans",
        value_name = "WEBHOOK_EXTRA_SANS",
        long = "webhook-extra-sans",
        env = "CSO_WEBHOOK_EXTRA_SANS",
        value_delimiter = ',',
        default_value = "127.0.0.1,localhost"
    )]
    pub extra_sans: Vec<String>,
}

/// Which controllers run, over which namespaces, how many reconciles at once.
#[derive(clap::Args, Debug, Clone)]
#[command(next_help_heading = "Controllers and watch scope")]
pub struct ControllerArgs {
    /// Namespaces whose workloads, Secrets and ConfigMaps the operator manages (comma-separated;
    /// empty: all). Objects of our kinds elsewhere get Stalled `NamespaceNotWatched`. Grant the
    /// operator's RBAC to match (chart value watchNamespaces).
    #[arg(
        id = "watch_namespaces",
        value_name = "WATCH_NAMESPACES",
        long = "watch-namespaces",
        env = "CSO_WATCH_NAMESPACES",
        value_delimiter = ',',
        default_value = ""
    )]
    pub watch_namespaces: Vec<String>,
    /// Controllers to run (comma-separated). Leaving KmsKeyVaultMode out is what allows the
    /// operator to run without cluster-wide rights on Secrets.
    #[arg(
        id = "controllers",
        value_name = "CONTROLLERS",
        long = "controllers",
        env = "CSO_CONTROLLERS",
        value_enum,
        value_delimiter = ',',
        default_value = "ClusterSecurityPolicy,CertificateRotation,KmsKeyVaultMode"
    )]
    pub enabled: Vec<ControllerKind>,
    /// Objects each controller reconciles at once (0: unbounded).
    #[arg(id = "concurrent_reconciles", value_name = "CONCURRENT_RECONCILES", long = "concurrent-reconciles", env = "CSO_CONCURRENT_RECONCILES", default_value_t = CONCURRENT_RECONCILES)]
    pub concurrent_reconciles: u16,
}

/// Leader election among replicas (the webhook serves on every replica regardless).
#[derive(clap::Args, Debug, Clone)]
#[command(next_help_heading = "Leader election")]
pub struct LeaderElectionArgs {
    /// Run the controllers only while holding the leader Lease (for more than one replica).
    #[arg(id = "leader_elect", long = "leader-elect", env = "CSO_LEADER_ELECT")]
    pub enabled: bool,
    /// Name of the leader Lease (in --namespace).
    #[arg(
        id = "leader_elect_lease",
        value_name = "LEADER_ELECT_LEASE",
        long = "leader-elect-lease",
        env = "CSO_LEADER_ELECT_LEASE",
        default_value = "cluster-security-operator"
    )]
    pub lease: String,
    /// Seconds a leader Lease lasts without renewal (a killed leader is replaced after at most this).
    #[arg(
        id = "leader_elect_lease_seconds",
        value_name = "LEADER_ELECT_LEASE_SECONDS",
        long = "leader-elect-lease-seconds",
        env = "CSO_LEADER_ELECT_LEASE_SECONDS",
        default_value_t = 15
    )]
    pub lease_seconds: u64,
    /// Seconds before expiry at which the leader renews its Lease.
    #[arg(
        id = "leader_elect_renew_before_seconds",
        value_name = "LEADER_ELECT_RENEW_BEFORE_SECONDS",
        long = "leader-elect-renew-before-seconds",
        env = "CSO_LEADER_ELECT_RENEW_BEFORE_SECONDS",
        default_value_t = 5
    )]
    pub renew_before_seconds: u64,
}

/// The health and metrics endpoint, and the logs.
#[derive(clap::Args, Debug, Clone)]
#[command(next_help_heading = "Health, metrics and logs")]
pub struct ObservabilityArgs {
    /// Address of /healthz, /readyz and /metrics (plain HTTP).
    #[arg(
        id = "health_addr",
        value_name = "HEALTH_ADDR",
        long = "health-addr",
        env = "CSO_HEALTH_ADDR",
        default_value = "0.0.0.0:8080"
    )]
    pub health_addr: SocketAddr,
    /// Log format.
    #[arg(
        id = "log_format",
        value_name = "LOG_FORMAT",
        long = "log-format",
        env = "CSO_LOG_FORMAT",
        value_enum,
        default_value = "text"
    )]
    pub log_format: LogFormat,
}

/// Azure endpoints and credentials (KmsKeyVaultMode).
#[derive(clap::Args, Debug, Clone)]
#[command(next_help_heading = "Azure (KmsKeyVaultMode)")]
pub struct AzureArgs {
    /// Azure Resource Manager endpoint (KmsKeyVaultMode).
    #[arg(id = "azure_arm_endpoint", value_name = "AZURE_ARM_ENDPOINT", long = "azure-arm-endpoint", env = "CSO_AZURE_ARM_ENDPOINT", default_value = DEFAULT_ARM_ENDPOINT)]
    pub arm_endpoint: String,
    /// Entra ID authority host; unset: the public cloud.
    #[arg(
        id = "azure_authority_host",
        value_name = "AZURE_AUTHORITY_HOST",
        long = "azure-authority-host",
        env = "AZURE_AUTHORITY_HOST"
    )]
    pub authority_host: Option<String>,
    /// DNS suffix of the cloud's key vaults: a KmsKeyVaultMode keyId must be
    /// https://<vault>.<suffix>/keys/<name>/<version> (vault.azure.cn, vault.usgovcloudapi.net
    /// in other clouds).
    #[arg(id = "azure_key_vault_dns_suffix", value_name = "AZURE_KEY_VAULT_DNS_SUFFIX", long = "azure-key-vault-dns-suffix", env = "CSO_AZURE_KEY_VAULT_DNS_SUFFIX", default_value = crate::validate::DEFAULT_VAULT_DNS_SUFFIX)]
    pub key_vault_dns_suffix: String,
    /// Key Vault data-plane endpoint; `{vault}` stands for the vault name.
    #[arg(id = "azure_key_vault_endpoint", value_name = "AZURE_KEY_VAULT_ENDPOINT", long = "azure-key-vault-endpoint", env = "CSO_AZURE_KEY_VAULT_ENDPOINT", default_value = DEFAULT_KEY_VAULT_ENDPOINT)]
    pub key_vault_endpoint: String,
    /// PEM file of extra CAs to trust for Azure endpoints (a private cloud, a proxy, the emulator).
    #[arg(id = "azure_ca_file", value_name = "AZURE_CA_FILE", long = "azure-ca-file", env = "CSO_AZURE_CA_FILE")]
    pub ca_file: Option<PathBuf>,
    /// Secret (`name` in --namespace, or `namespace/name`) with AZURE_TENANT_ID, AZURE_CLIENT_ID and
    /// AZURE_CLIENT_SECRET; unset: Azure workload identity (AZURE_* variables on the pod).
    #[arg(
        id = "azure_credentials_secret",
        value_name = "AZURE_CREDENTIALS_SECRET",
        long = "azure-credentials-secret",
        env = "CSO_AZURE_CREDENTIALS_SECRET"
    )]
    pub credentials_secret: Option<String>,
    /// Seconds between polls of an Azure long-running operation when Azure sends no Retry-After.
    #[arg(
        id = "azure_poll_interval_seconds",
        value_name = "AZURE_POLL_INTERVAL_SECONDS",
        long = "azure-poll-interval-seconds",
        env = "CSO_AZURE_POLL_INTERVAL_SECONDS",
        default_value_t = 10
    )]
    pub poll_interval_seconds: u64,
}

impl AzureArgs {
    /// The KmsKeyVaultMode provider factory from the Azure flags; a credentials Secret named
    /// without a namespace is in `namespace` (the operator's).
    pub fn factory(&self, namespace: &str, metrics: Arc<crate::metrics::Metrics>) -> anyhow::Result<AzureFactory> {
        let extra_ca_pem = match &self.ca_file {
            Some(p) => Some(std::fs::read(p).map_err(|e| anyhow::anyhow!("--azure-ca-file {}: {e}", p.display()))?),
            None => None,
        };
        let credentials_secret = self.credentials_secret.as_ref().map(|s| match s.split_once('/') {
            Some((ns, name)) => (ns.to_string(), name.to_string()),
            None => (namespace.to_string(), s.clone()),
        });
        Ok(AzureFactory {
            settings: AzureSettings {
                arm_endpoint: self.arm_endpoint.clone(),
                authority_host: self.authority_host.clone(),
                key_vault_endpoint: self.key_vault_endpoint.clone(),
                extra_ca_pem,
                poll_interval: Duration::from_secs(self.poll_interval_seconds.max(1)),
                metrics: Some(metrics),
                ..Default::default()
            },
            credentials_secret,
            vault_dns_suffix: self.key_vault_dns_suffix.clone(),
        })
    }
}

impl RunArgs {
    /// What the controllers' context takes from the flags.
    pub(crate) fn context_settings(&self) -> crate::reconciler::Settings {
        crate::reconciler::Settings {
            concurrency: self.controllers.concurrent_reconciles,
            scope: crate::reconciler::Scope::namespaces(&self.controllers.watch_namespaces),
            namespace: self.replica.namespace.clone(),
            instance: self.replica.pod_name.clone(),
        }
    }

    /// The leader election the flags ask for (with `--leader-elect`).
    pub(crate) fn election(&self) -> crate::leader::Election {
        let flags = &self.leader_election;
        crate::leader::Election {
            namespace: self.replica.namespace.clone(),
            lease: flags.lease.clone(),
            identity: crate::leader::identity(self.replica.pod_name.as_deref()),
            duration: Duration::from_secs(flags.lease_seconds),
            renew_before: Duration::from_secs(flags.renew_before_seconds),
        }
    }

    /// What the admission webhook's rules need from the flags.
    pub fn webhook_settings(&self) -> crate::webhook::Settings {
        crate::webhook::Settings { vault_dns_suffix: self.azure.key_vault_dns_suffix.clone() }
    }

    /// Names the serving certificate must carry.
    pub fn webhook_sans(&self) -> Vec<String> {
        let (svc, ns) = (&self.webhook.service, &self.replica.namespace);
        let mut sans = vec![format!("{svc}.{ns}.svc"), format!("{svc}.{ns}.svc.cluster.local")];
        for s in &self.webhook.extra_sans {
            if !s.is_empty() && !sans.contains(s) {
                sans.push(s.clone());
            }
        }
        sans
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use clap::{CommandFactory, Parser};
    use serde::Deserialize as _;

    use super::*;

    /// Every flag of `run` as `--long ENV [defaults] action`, sorted: what the chart, `deploy/`
    /// and the docs rely on.
    fn flag_table() -> String {
        let cli = Cli::command();
        let run = cli.find_subcommand("run").expect("run subcommand");
        let mut rows: Vec<String> = run
            .get_arguments()
            .filter_map(|a| {
                let long = a.get_long()?;
                let env = a.get_env().map(|e| e.to_string_lossy().into_owned()).unwrap_or_default();
                let defaults: Vec<_> =
                    a.get_default_values().iter().map(|v| v.to_string_lossy().into_owned()).collect();
                Some(format!("--{long} {env} {defaults:?} {:?}", a.get_action()))
            })
            .collect();
        rows.sort();
        rows.join("\n")
    }

    /// Taken from the flat `RunArgs` before it was grouped: not one name, variable or default moved.
    const FLAGS_BEFORE_GROUPING: &str = r#"
--azure-arm-endpoint CSO_AZURE_ARM_ENDPOINT ["https://management.azure.com"] Set
--azure-authority-host AZURE_AUTHORITY_HOST [] Set
--azure-ca-file CSO_AZURE_CA_FILE [] Set
--azure-credentials-secret CSO_AZURE_CREDENTIALS_SECRET [] Set
--azure-key-vault-dns-suffix CSO_AZURE_KEY_VAULT_DNS_SUFFIX ["vault.azure.net"] Set
--azure-key-vault-endpoint CSO_AZURE_KEY_VAULT_ENDPOINT ["https://{vault}.vault.azure.net"] Set
--azure-poll-interval-seconds CSO_AZURE_POLL_INTERVAL_SECONDS ["10"] Set
--concurrent-reconciles CSO_CONCURRENT_RECONCILES ["8"] Set
--controllers CSO_CONTROLLERS ["ClusterSecurityPolicy,CertificateRotation,KmsKeyVaultMode"] Append
--disable-webhook CSO_DISABLE_WEBHOOK [] SetTrue
--health-addr CSO_HEALTH_ADDR ["0.0.0.0:8080"] Set
--leader-elect CSO_LEADER_ELECT [] SetTrue
--leader-elect-lease CSO_LEADER_ELECT_LEASE ["cluster-security-operator"] Set
--leader-elect-lease-seconds CSO_LEADER_ELECT_LEASE_SECONDS ["15"] Set
--leader-elect-renew-before-seconds CSO_LEADER_ELECT_RENEW_BEFORE_SECONDS ["5"] Set
--log-format CSO_LOG_FORMAT ["text"] Set
--namespace POD_NAMESPACE ["cluster-security-operator"] Set
--pod-name POD_NAME [] Set
--watch-namespaces CSO_WATCH_NAMESPACES [""] Append
--webhook-addr CSO_WEBHOOK_ADDR ["0.0.0.0:8443"] Set
--webhook-cert-dir CSO_WEBHOOK_CERT_DIR [] Set
--webhook-client-ca-file CSO_WEBHOOK_CLIENT_CA_FILE [] Set
--webhook-client-names CSO_WEBHOOK_CLIENT_NAMES [] Append
--webhook-config CSO_WEBHOOK_CONFIG ["cluster-security-operator"] Set
--webhook-extra-sans CSO_WEBHOOK_EXTRA_SANS ["127.0.0.1,localhost"] Append
--webhook-secret CSO_WEBHOOK_SECRET ["cluster-security-operator-webhook-tls"] Set
--webhook-service CSO_WEBHOOK_SERVICE ["cluster-security-operator-webhook"] Set
"#;

    #[test]
    fn every_flag_keeps_its_name_env_and_default() {
        assert_eq!(flag_table(), FLAGS_BEFORE_GROUPING.trim());
    }

    fn run_args(argv: &[&str]) -> RunArgs {
        let cli = Cli::try_parse_from(std::iter::once("cluster-security-operator").chain(argv.iter().copied()))
            .unwrap_or_else(|e| panic!("{argv:?}: {e}"));
        match cli.command {
            Command::Run(args) => *args,
            other => panic!("not run: {other:?}"),
        }
    }

    /// `env` entries with a literal value as the flag that reads that variable, so that the test
    /// needs no process environment (which every test thread shares).
    fn as_flags(env: &[(String, String)]) -> Vec<String> {
        let cli = Cli::command();
        let run = cli.find_subcommand("run").expect("run subcommand");
        env.iter()
            .filter_map(|(name, value)| {
                let arg = run.get_arguments().find(|a| a.get_env().is_some_and(|e| e == name.as_str()));
                match arg {
                    Some(a) => Some(format!("--{}={value}", a.get_long().expect("long flag"))),
                    // RUST_LOG and the like are read by others, not by a flag.
                    None => {
                        assert!(!name.starts_with("CSO_"), "{name} is set by the chart but no flag reads it");
                        None
                    }
                }
            })
            .collect()
    }

    /// The operator container of `deploy/operator.yaml` (the chart rendered with its defaults):
    /// its args, the names of all its env entries, and the entries that carry a literal value.
    fn deployed_container() -> (Vec<String>, Vec<String>, Vec<(String, String)>) {
        let text = include_str!("../../../deploy/operator.yaml");
        for doc in serde_yaml::Deserializer::from_str(text) {
            let doc = serde_yaml::Value::deserialize(doc).expect("YAML");
            if doc["kind"] != "Deployment" {
                continue;
            }
            let container = &doc["spec"]["template"]["spec"]["containers"][0];
            let args = container["args"].as_sequence().expect("args").iter().map(|a| a.as_str().unwrap().to_string());
            let env = container["env"].as_sequence().expect("env");
            let names = env.iter().filter_map(|e| e["name"].as_str().map(String::from));
            let literal =
                env.iter().filter_map(|e| Some((e["name"].as_str()?.to_string(), e["value"].as_str()?.to_string())));
            return (args.collect(), names.collect(), literal.collect());
        }
        panic!("no Deployment in deploy/operator.yaml");
    }

    #[test]
    fn the_deployed_args_and_env_parse_into_their_groups() {
        let (args, names, literal) = deployed_container();
        assert_eq!(args.first().map(String::as_str), Some("run"), "{args:?}");
        assert!(names.iter().any(|n| n == "POD_NAME") && names.iter().any(|n| n == "POD_NAMESPACE"), "{names:?}");
        let mut argv: Vec<String> = args.clone();
        argv.extend(as_flags(&literal));
        // The downward-API variables, as the pod would see them.
        argv.extend(as_flags(&[("POD_NAME".into(), "op-0".into()), ("POD_NAMESPACE".into(), "ops".into())]));
        let argv: Vec<&str> = argv.iter().map(String::as_str).collect();
        let parsed = run_args(&argv);
        assert!(parsed.leader_election.enabled, "{args:?}");
        assert_eq!((parsed.leader_election.lease_seconds, parsed.leader_election.renew_before_seconds), (15, 5));
        assert_eq!(parsed.observability.log_format, LogFormat::Json);
        assert_eq!(
            parsed.controllers.enabled,
            [
                ControllerKind::ClusterSecurityPolicy,
                ControllerKind::CertificateRotation,
                ControllerKind::KmsKeyVaultMode
            ]
        );
        assert_eq!((parsed.replica.pod_name.as_deref(), parsed.replica.namespace.as_str()), (Some("op-0"), "ops"));
        assert_eq!(parsed.azure.key_vault_dns_suffix, "vault.azure.net");
        assert_eq!(parsed.azure.key_vault_endpoint, "https://{vault}.vault.azure.net");
        assert!(!parsed.webhook.disabled);
    }

    #[test]
    fn flags_land_in_their_groups_and_defaults_hold() {
        let parsed = run_args(&["run"]);
        assert_eq!(parsed.webhook.addr.to_string(), "0.0.0.0:8443");
        assert_eq!(parsed.webhook.extra_sans, ["127.0.0.1", "localhost"]);
        assert_eq!(parsed.replica.namespace, "cluster-security-operator");
        assert_eq!(parsed.replica.pod_name, None);
        assert_eq!(parsed.controllers.concurrent_reconciles, CONCURRENT_RECONCILES);
        assert!(!parsed.leader_election.enabled);
        assert_eq!(parsed.azure.poll_interval_seconds, 10);

        let parsed = run_args(&[
            "run",
            "--namespace=ops",
            "--pod-name=op-0",
            "--webhook-service=hook",
            "--webhook-client-ca-file=/ca.crt",
            "--webhook-client-names=kube-apiserver,other",
            "--watch-namespaces=a,b",
            "--leader-elect-lease=mine",
            "--azure-credentials-secret=azure",
            "--health-addr=127.0.0.1:9000",
        ]);
        assert_eq!(parsed.replica.pod_name.as_deref(), Some("op-0"));
        assert_eq!(parsed.webhook.client_names, ["kube-apiserver", "other"]);
        assert_eq!(parsed.controllers.watch_namespaces, ["a", "b"]);
        assert_eq!(parsed.leader_election.lease, "mine");
        assert_eq!(parsed.observability.health_addr.port(), 9000);
        assert_eq!(
            parsed.webhook_sans(),
            ["hook.ops.svc", "hook.ops.svc.cluster.local", "127.0.0.1", "localhost"],
            "the service and namespace of their groups"
        );
        let settings = parsed.context_settings();
        assert_eq!((settings.namespace.as_str(), settings.instance.as_deref()), ("ops", Some("op-0")));
        assert_eq!(settings.scope, crate::reconciler::Scope::namespaces(&["a".into(), "b".into()]));
        let election = parsed.election();
        assert_eq!((election.namespace.as_str(), election.lease.as_str()), ("ops", "mine"));
        assert_eq!(election.identity, "op-0");
        let metrics = Arc::new(crate::metrics::Metrics::new());
        let factory = parsed.azure.factory(&parsed.replica.namespace, metrics).unwrap();
        assert_eq!(factory.credentials_secret, Some(("ops".into(), "azure".into())), "in --namespace");
    }

    #[test]
    fn client_names_still_require_the_client_ca() {
        let err = Cli::try_parse_from(["cluster-security-operator", "run", "--webhook-client-names=x"]).unwrap_err();
        assert_eq!(err.kind(), clap::error::ErrorKind::MissingRequiredArgument, "{err}");
    }
}
