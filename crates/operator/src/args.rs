//! Command line: `crd` prints the CRDs, `run` runs the controllers and the webhook. Every flag of
//! `run` can also be set through the environment variable named in `--help`. Parsing only: what
//! the flags start is [`crate::runtime`].

use std::net::SocketAddr;
use std::path::PathBuf;
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

#[derive(clap::Args, Debug, Clone)]
pub struct RunArgs {
    /// Address of the HTTPS admission webhook.
    #[arg(long, env = "CSO_WEBHOOK_ADDR", default_value = "0.0.0.0:8443")]
    pub webhook_addr: SocketAddr,
    /// Do not serve the admission webhook (the controllers still refuse invalid specs with Stalled).
    #[arg(long, env = "CSO_DISABLE_WEBHOOK")]
    pub disable_webhook: bool,
    /// Serve the webhook with tls.crt/tls.key from this directory (e.g. from cert-manager)
    /// instead of the operator's own certificate.
    #[arg(long, env = "CSO_WEBHOOK_CERT_DIR")]
    pub webhook_cert_dir: Option<PathBuf>,
    /// Answer only clients with a certificate chained to the CA in this PEM file: kube-apiserver,
    /// given a client certificate by its AdmissionConfiguration (see docs/security.md). Unset:
    /// any client that reaches the port may send reviews.
    #[arg(long, env = "CSO_WEBHOOK_CLIENT_CA_FILE")]
    pub webhook_client_ca_file: Option<PathBuf>,
    /// With --webhook-client-ca-file: the client certificate must also name one of these (subject
    /// CN or DNS SAN), so that other certificates of the same CA are refused (comma-separated).
    #[arg(long, env = "CSO_WEBHOOK_CLIENT_NAMES", value_delimiter = ',', requires = "webhook_client_ca_file")]
    pub webhook_client_names: Vec<String>,
    /// Secret (in --namespace) where the operator keeps its own webhook CA and certificate.
    #[arg(long, env = "CSO_WEBHOOK_SECRET", default_value = "cluster-security-operator-webhook-tls")]
    pub webhook_secret: String,
    /// ValidatingWebhookConfiguration whose caBundle the operator keeps current.
    #[arg(long, env = "CSO_WEBHOOK_CONFIG", default_value = "cluster-security-operator")]
    pub webhook_config: String,
    /// Service in front of the webhook; its DNS names go into the serving certificate.
    #[arg(long, env = "CSO_WEBHOOK_SERVICE", default_value = "cluster-security-operator-webhook")]
    pub webhook_service: String,
    /// Extra subject alternative names (DNS names or IPs) for the serving certificate.
    #[arg(long, env = "CSO_WEBHOOK_EXTRA_SANS", value_delimiter = ',', default_value = "127.0.0.1,localhost")]
    pub webhook_extra_sans: Vec<String>,
    /// Namespace the operator runs in (its Secrets live here).
    #[arg(long, env = "POD_NAMESPACE", default_value = "cluster-security-operator")]
    pub namespace: String,
    /// Address of /healthz, /readyz and /metrics (plain HTTP).
    #[arg(long, env = "CSO_HEALTH_ADDR", default_value = "0.0.0.0:8080")]
    pub health_addr: SocketAddr,
    /// This replica's name (the pod's): its identity in the leader Lease; unset: host name and a
    /// random suffix.
    #[arg(long, env = "POD_NAME")]
    pub pod_name: Option<String>,
    /// Namespaces whose workloads, Secrets and ConfigMaps the operator manages (comma-separated;
    /// empty: all). Objects of our kinds elsewhere get Stalled `NamespaceNotWatched`. Grant the
    /// operator's RBAC to match (chart value watchNamespaces).
    #[arg(long, env = "CSO_WATCH_NAMESPACES", value_delimiter = ',', default_value = "")]
    pub watch_namespaces: Vec<String>,
    /// Controllers to run (comma-separated). Leaving KmsKeyVaultMode out is what allows the
    /// operator to run without cluster-wide rights on Secrets.
    #[arg(
        long,
        env = "CSO_CONTROLLERS",
        value_enum,
        value_delimiter = ',',
        default_value = "ClusterSecurityPolicy,CertificateRotation,KmsKeyVaultMode"
    )]
    pub controllers: Vec<ControllerKind>,
    /// Objects each controller reconciles at once (0: unbounded).
    #[arg(long, env = "CSO_CONCURRENT_RECONCILES", default_value_t = CONCURRENT_RECONCILES)]
    pub concurrent_reconciles: u16,
    /// Run the controllers only while holding the leader Lease (for more than one replica).
    #[arg(long, env = "CSO_LEADER_ELECT")]
    pub leader_elect: bool,
    /// Name of the leader Lease (in --namespace).
    #[arg(long, env = "CSO_LEADER_ELECT_LEASE", default_value = "cluster-security-operator")]
    pub leader_elect_lease: String,
    /// Seconds a leader Lease lasts without renewal (a killed leader is replaced after at most this).
    #[arg(long, env = "CSO_LEADER_ELECT_LEASE_SECONDS", default_value_t = 15)]
    pub leader_elect_lease_seconds: u64,
    /// Seconds before expiry at which the leader renews its Lease.
    #[arg(long, env = "CSO_LEADER_ELECT_RENEW_BEFORE_SECONDS", default_value_t = 5)]
    pub leader_elect_renew_before_seconds: u64,
    /// Log format.
    #[arg(long, env = "CSO_LOG_FORMAT", value_enum, default_value = "text")]
    pub log_format: LogFormat,
    /// Azure Resource Manager endpoint (KmsKeyVaultMode).
    #[arg(long, env = "CSO_AZURE_ARM_ENDPOINT", default_value = DEFAULT_ARM_ENDPOINT)]
    pub azure_arm_endpoint: String,
    /// Entra ID authority host; unset: the public cloud.
    #[arg(long, env = "AZURE_AUTHORITY_HOST")]
    pub azure_authority_host: Option<String>,
    /// DNS suffix of the cloud's key vaults: a KmsKeyVaultMode keyId must be
    /// https://<vault>.<suffix>/keys/<name>/<version> (vault.azure.cn, vault.usgovcloudapi.net
    /// in other clouds).
    #[arg(long, env = "CSO_AZURE_KEY_VAULT_DNS_SUFFIX", default_value = crate::validate::DEFAULT_VAULT_DNS_SUFFIX)]
    pub azure_key_vault_dns_suffix: String,
    /// Key Vault data-plane endpoint; `{vault}` stands for the vault name.
    #[arg(long, env = "CSO_AZURE_KEY_VAULT_ENDPOINT", default_value = DEFAULT_KEY_VAULT_ENDPOINT)]
    pub azure_key_vault_endpoint: String,
    /// PEM file of extra CAs to trust for Azure endpoints (a private cloud, a proxy, the emulator).
    #[arg(long, env = "CSO_AZURE_CA_FILE")]
    pub azure_ca_file: Option<PathBuf>,
    /// Secret (`name` in --namespace, or `namespace/name`) with AZURE_TENANT_ID, AZURE_CLIENT_ID and
    /// AZURE_CLIENT_SECRET; unset: Azure workload identity (AZURE_* variables on the pod).
    #[arg(long, env = "CSO_AZURE_CREDENTIALS_SECRET")]
    pub azure_credentials_secret: Option<String>,
    /// Seconds between polls of an Azure long-running operation when Azure sends no Retry-After.
    #[arg(long, env = "CSO_AZURE_POLL_INTERVAL_SECONDS", default_value_t = 10)]
    pub azure_poll_interval_seconds: u64,
}

impl RunArgs {
    /// The KmsKeyVaultMode provider factory from the Azure flags.
    pub fn azure_factory(&self, metrics: std::sync::Arc<crate::metrics::Metrics>) -> anyhow::Result<AzureFactory> {
        let extra_ca_pem = match &self.azure_ca_file {
            Some(p) => Some(std::fs::read(p).map_err(|e| anyhow::anyhow!("--azure-ca-file {}: {e}", p.display()))?),
            None => None,
        };
        let credentials_secret = self.azure_credentials_secret.as_ref().map(|s| match s.split_once('/') {
            Some((ns, name)) => (ns.to_string(), name.to_string()),
            None => (self.namespace.clone(), s.clone()),
        });
        Ok(AzureFactory {
            settings: AzureSettings {
                arm_endpoint: self.azure_arm_endpoint.clone(),
                authority_host: self.azure_authority_host.clone(),
                key_vault_endpoint: self.azure_key_vault_endpoint.clone(),
                extra_ca_pem,
                poll_interval: Duration::from_secs(self.azure_poll_interval_seconds.max(1)),
                metrics: Some(metrics),
                ..Default::default()
            },
            credentials_secret,
            vault_dns_suffix: self.azure_key_vault_dns_suffix.clone(),
        })
    }

    /// What the admission webhook's rules need from the flags.
    pub fn webhook_settings(&self) -> crate::webhook::Settings {
        crate::webhook::Settings { vault_dns_suffix: self.azure_key_vault_dns_suffix.clone() }
    }

    /// Names the serving certificate must carry.
    pub fn webhook_sans(&self) -> Vec<String> {
        let (svc, ns) = (&self.webhook_service, &self.namespace);
        let mut sans = vec![format!("{svc}.{ns}.svc"), format!("{svc}.{ns}.svc.cluster.local")];
        for s in &self.webhook_extra_sans {
            if !s.is_empty() && !sans.contains(s) {
                sans.push(s.clone());
            }
        }
        sans
    }
}
