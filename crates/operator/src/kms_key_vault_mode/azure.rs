//! The Azure side of KmsKeyVaultMode, spoken as the Azure Resource Manager contract (there is no
//! maintained AKS management crate, so the calls are plain REST, as `az aks update` makes them):
//!
//! - the managed cluster's `properties.securityProfile.azureKeyVaultKms` is changed by
//!   read-modify-write: GET the cluster, change the KMS block, PUT it back with `If-Match` set to
//!   the eTag read, then follow the long-running operation (`Azure-AsyncOperation`, else
//!   `Location`) honouring `Retry-After`;
//! - the vault's network access is a PATCH of `properties.publicNetworkAccess`;
//! - the key is checked on the Key Vault data plane.
//! - the operator's effective permissions are read (`Microsoft.Authorization/permissions`) before
//!   a switch, to refuse one that could not finish.
//!
//! A 401 (or a token that cannot be had) is [`ProviderError::Auth`]; a 403 carrying an ARM error
//! code is [`ProviderError::Refused`], naming the code, the action refused and the fix.
//!
//! Tokens come from `azure_identity` (workload identity or a client secret). Throttling and
//! server errors are retried with backoff (backon) honouring `Retry-After`; "another operation is
//! in progress" and eTag mismatches are reported as transient, so the controller tries again later
//! instead of failing the step.

use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use azure_core::credentials::TokenCredential;
use backon::{ExponentialBuilder, Retryable};
use reqwest::{header, Method, StatusCode};
use serde_json::{json, Value};

use super::provider::{
    permitted, ClusterIdentity, ClusterKms, KeyState, KmsProvider, Permission, PermissionCheck, ProviderError,
    CLUSTER_READ, CLUSTER_WRITE, VAULT_WRITE,
};
use crate::api::{AzureProvider, KmsSettings, NetworkAccess};
use crate::validate::{parse_key_id, parse_key_vault_resource_id};

/// Azure Resource Manager endpoint of the public cloud.
pub(crate) const DEFAULT_ARM_ENDPOINT: &str = "https://management.azure.com";
/// Key Vault data-plane endpoint; `{vault}` is the vault name.
pub(crate) const DEFAULT_KEY_VAULT_ENDPOINT: &str = "https://{vault}.vault.azure.net";
/// api-version of Microsoft.ContainerService/managedClusters.
pub(crate) const MANAGED_CLUSTER_API_VERSION: &str = "2025-10-01";
/// api-version of Microsoft.KeyVault/vaults.
pub(crate) const VAULT_API_VERSION: &str = "2022-07-01";
/// api-version of the Key Vault data plane.
pub(crate) const KEY_API_VERSION: &str = "7.4";
/// Key versions through Resource Manager (`Microsoft.KeyVault/vaults/keys/versions`): the
/// management plane, which a private vault's network rules do not close.
pub(crate) const ARM_KEY_API_VERSION: &str = "2023-07-01";
/// api-version of `Microsoft.Authorization/permissions` (the caller's effective permissions).
pub(crate) const PERMISSIONS_API_VERSION: &str = "2022-04-01";
/// Polling a managed cluster's long-running operation.
const OPERATION_READ: &str = "Microsoft.ContainerService/locations/operations/read";
const ARM_SCOPE: &str = "https://management.azure.com/.default";
const VAULT_SCOPE: &str = "https://vault.azure.net/.default";

/// How the operator authenticates to Azure.
#[derive(Clone)]
pub(crate) enum Credentials {
    /// Azure workload identity: the federated service account token exchanged at the token
    /// endpoint. Unset fields come from AZURE_TENANT_ID, AZURE_CLIENT_ID and
    /// AZURE_FEDERATED_TOKEN_FILE, which the workload identity webhook sets on the operator's pod.
    WorkloadIdentity { tenant_id: Option<String>, client_id: Option<String>, token_file: Option<std::path::PathBuf> },
    /// A service principal's client secret (read from a Kubernetes Secret by the controller).
    ClientSecret { tenant_id: String, client_id: String, secret: String },
}

impl std::fmt::Debug for Credentials {
    // Never print the secret.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Credentials::WorkloadIdentity { tenant_id, client_id, token_file } => f
                .debug_struct("WorkloadIdentity")
                .field("tenant_id", tenant_id)
                .field("client_id", client_id)
                .field("token_file", token_file)
                .finish(),
            Credentials::ClientSecret { tenant_id, client_id, .. } => f
                .debug_struct("ClientSecret")
                .field("tenant_id", tenant_id)
                .field("client_id", client_id)
                .finish_non_exhaustive(),
        }
    }
}

/// Operator-wide Azure settings (flags of `run`).
#[derive(Debug, Clone)]
pub struct AzureSettings {
    /// Resource Manager endpoint, e.g. `https://management.azure.com`.
    pub arm_endpoint: String,
    /// Entra ID authority host; None: AZURE_AUTHORITY_HOST, else the public cloud.
    pub authority_host: Option<String>,
    /// Key Vault data-plane endpoint with `{vault}` for the vault name.
    pub key_vault_endpoint: String,
    /// Extra CA certificates (PEM) to trust besides the public web roots.
    pub extra_ca_pem: Option<Vec<u8>>,
    /// Interval between polls of a long-running operation when Azure gives no Retry-After.
    pub poll_interval: Duration,
    /// Give up waiting for one long-running operation after this long (then retried later).
    pub operation_timeout: Duration,
    /// Where requests are counted (`csop_azure_requests_total`); None: nowhere.
    pub metrics: Option<Arc<crate::metrics::Metrics>>,
}

impl Default for AzureSettings {
    fn default() -> Self {
        Self {
            arm_endpoint: DEFAULT_ARM_ENDPOINT.into(),
            authority_host: None,
            key_vault_endpoint: DEFAULT_KEY_VAULT_ENDPOINT.into(),
            extra_ca_pem: None,
            poll_interval: Duration::from_secs(10),
            operation_timeout: Duration::from_secs(45 * 60),
            metrics: None,
        }
    }
}

/// One AKS managed cluster and the vaults around it.
pub(crate) struct AzureKms {
    http: reqwest::Client,
    credential: Arc<dyn TokenCredential>,
    settings: AzureSettings,
    cluster_url: String,
    cluster_name: String,
}

fn config_error(what: &str, e: impl std::fmt::Display) -> ProviderError {
    ProviderError::Config(format!("{what}: {e}"))
}

impl AzureKms {
    pub(crate) fn new(
        target: &AzureProvider,
        settings: AzureSettings,
        credentials: &Credentials,
    ) -> Result<Self, ProviderError> {
        let http = crate::http::https_client(settings.extra_ca_pem.as_deref(), true)
            .map_err(|e| config_error("Azure HTTPS client", e))?;
        let credential = credential(credentials, &settings, http.clone())?;
        let cluster_url = format!(
            "{}/subscriptions/{}/resourceGroups/{}/providers/Microsoft.ContainerService/managedClusters/{}",
            settings.arm_endpoint.trim_end_matches('/'),
            target.subscription_id,
            target.resource_group,
            target.cluster_name
        );
        Ok(Self { http, credential, settings, cluster_url, cluster_name: target.cluster_name.clone() })
    }

    async fn token(&self, scope: &str) -> Result<String, ProviderError> {
        let t = self.credential.get_token(&[scope], None).await.map_err(|e| ProviderError::Auth(e.to_string()))?;
        Ok(t.token.secret().to_string())
    }

    /// One request, retried with backoff on transport errors, 429 and 5xx (honouring
    /// Retry-After); any other answer is returned as is.
    async fn send(
        &self,
        method: Method,
        url: &str,
        scope: &str,
        body: Option<&Value>,
        if_match: Option<&str>,
    ) -> Result<Answer, ProviderError> {
        let token = self.token(scope).await?;
        let operation = operation_of(&method, url);
        let attempt = || async {
            let mut req = self.http.request(method.clone(), url).bearer_auth(&token);
            if let Some(b) = body {
                req = req.json(b);
            }
            if let Some(etag) = if_match {
                req = req.header(header::IF_MATCH, etag);
            }
            let started = std::time::Instant::now();
            let sent = req.send().await;
            if let Some(m) = &self.settings.metrics {
                m.azure_request(operation, sent.as_ref().ok().map(|r| r.status().as_u16()), started.elapsed());
            }
            let resp = sent.map_err(|e| Retry::Transport(e.without_url().to_string()))?;
            let answer = Answer::read(resp).await.map_err(|e| Retry::Transport(e.without_url().to_string()))?;
            if answer.status == StatusCode::TOO_MANY_REQUESTS || answer.status.is_server_error() {
                return Err(Retry::Status(answer));
            }
            Ok(answer)
        };
        let result = attempt
            .retry(
                ExponentialBuilder::default()
                    .with_min_delay(Duration::from_millis(500))
                    .with_max_delay(Duration::from_secs(30))
                    .with_max_times(5)
                    .with_jitter(),
            )
            .adjust(|e: &Retry, backoff| match e {
                Retry::Status(a) => a.retry_after().or(backoff),
                Retry::Transport(_) => backoff,
            })
            .await;
        match result {
            Ok(a) => Ok(a),
            Err(Retry::Status(a)) => {
                Err(ProviderError::Transient(format!("{method} {}: {}", path_of(url), a.error_text())))
            }
            Err(Retry::Transport(e)) => Err(ProviderError::Transient(format!("{method} {}: {e}", path_of(url)))),
        }
    }

    async fn get_cluster(&self) -> Result<(Value, Option<String>), ProviderError> {
        let url = format!("{}?api-version={MANAGED_CLUSTER_API_VERSION}", self.cluster_url);
        let a = self.send(Method::GET, &url, ARM_SCOPE, None, None).await?;
        if !a.status.is_success() {
            return Err(a.into_error(&format!("reading managed cluster {}", self.cluster_name), CLUSTER_READ));
        }
        let etag = a.body.get("etag").or_else(|| a.body.get("eTag")).and_then(Value::as_str).map(String::from);
        let etag = etag.or(a.etag.clone());
        Ok((a.body, etag))
    }

    /// Poll GET of the cluster until no update runs on it.
    async fn wait_idle(&self) -> Result<ClusterKms, ProviderError> {
        let deadline = tokio::time::Instant::now() + self.settings.operation_timeout;
        loop {
            let (body, _) = self.get_cluster().await?;
            let kms = cluster_kms(&body);
            if !kms.busy() {
                return Ok(kms);
            }
            if tokio::time::Instant::now() > deadline {
                return Err(ProviderError::Transient(format!(
                    "managed cluster {} is still {} after {:?}",
                    self.cluster_name, kms.provisioning_state, self.settings.operation_timeout
                )));
            }
            tokio::time::sleep(self.settings.poll_interval).await;
        }
    }

    /// A URL Azure handed back to poll (`Azure-AsyncOperation`, `Location`), if it is on the
    /// configured Resource Manager host over https: the poll carries our bearer token, which must
    /// never go to a host a response names.
    fn poll_url(&self, started: &Answer, header: &str) -> Result<Option<String>, ProviderError> {
        let Some(url) = started.header(header) else { return Ok(None) };
        let arm =
            reqwest::Url::parse(&self.settings.arm_endpoint).map_err(|e| config_error("--azure-arm-endpoint", e))?;
        let same_origin = reqwest::Url::parse(&url).is_ok_and(|u| {
            u.scheme() == "https"
                && u.username().is_empty()
                && u.password().is_none()
                && u.host_str().is_some_and(|h| Some(h) == arm.host_str())
                && u.port_or_known_default() == arm.port_or_known_default()
        });
        if !same_origin {
            return Err(ProviderError::Rejected {
                code: "UntrustedPollUrl".into(),
                message: format!(
                    "Azure answered with a {header} URL that is not on the Resource Manager host {} over https; \
                     not followed (the request would carry the operator's token)",
                    arm.host_str().unwrap_or_default()
                ),
            });
        }
        Ok(Some(url))
    }

    /// Follow a long-running operation to its end.
    async fn follow(&self, started: &Answer) -> Result<(), ProviderError> {
        let deadline = tokio::time::Instant::now() + self.settings.operation_timeout;
        let mut wait = started.retry_after().unwrap_or(self.settings.poll_interval);
        if let Some(url) = self.poll_url(started, "azure-asyncoperation")? {
            loop {
                tokio::time::sleep(wait).await;
                let a = self.send(Method::GET, &url, ARM_SCOPE, None, None).await?;
                if !a.status.is_success() {
                    return Err(a.into_error("polling the cluster update", OPERATION_READ));
                }
                match a.body.get("status").and_then(Value::as_str).unwrap_or("InProgress") {
                    "Succeeded" => return Ok(()),
                    "Failed" | "Canceled" => return Err(Answer::rejected(&a.body, "the cluster update failed")),
                    _ => {}
                }
                if tokio::time::Instant::now() > deadline {
                    return Err(ProviderError::Transient("the cluster update is taking longer than expected".into()));
                }
                wait = a.retry_after().unwrap_or(self.settings.poll_interval);
            }
        }
        if let Some(url) = self.poll_url(started, "location")? {
            loop {
                tokio::time::sleep(wait).await;
                let a = self.send(Method::GET, &url, ARM_SCOPE, None, None).await?;
                match a.status {
                    StatusCode::ACCEPTED => {}
                    s if s.is_success() => return Ok(()),
                    _ => return Err(a.into_error("the cluster update failed", CLUSTER_WRITE)),
                }
                if tokio::time::Instant::now() > deadline {
                    return Err(ProviderError::Transient("the cluster update is taking longer than expected".into()));
                }
                wait = a.retry_after().unwrap_or(self.settings.poll_interval);
            }
        }
        // No operation to follow: the provisioning state tells.
        let kms = self.wait_idle().await?;
        if kms.provisioning_state == "Succeeded" {
            Ok(())
        } else {
            Err(ProviderError::Rejected {
                code: kms.provisioning_state,
                message: format!("the update of managed cluster {} did not succeed", self.cluster_name),
            })
        }
    }
}

/// What a request does, for metrics: its method and the kind of resource its URL names.
fn operation_of(method: &Method, url: &str) -> &'static str {
    let path = url.split('?').next().unwrap_or(url);
    if path.contains("/operations/") || path.contains("/operationresults/") {
        "poll_operation"
    } else if path.contains("/keys/") {
        "get_key"
    } else if path.contains("Microsoft.KeyVault/vaults") {
        if *method == Method::PATCH {
            "patch_vault"
        } else {
            "get_vault"
        }
    } else if *method == Method::PUT {
        "put_cluster"
    } else {
        "get_cluster"
    }
}

fn credential(
    credentials: &Credentials,
    settings: &AzureSettings,
    http: reqwest::Client,
) -> Result<Arc<dyn TokenCredential>, ProviderError> {
    use azure_core::http::{ClientOptions, Transport};
    let mut options = ClientOptions { transport: Some(Transport::new(Arc::new(http))), ..Default::default() };
    if let Some(host) = &settings.authority_host {
        let mut custom = azure_core::cloud::CustomConfiguration::default();
        custom.authority_host = host.clone();
        options.cloud = Some(Arc::new(azure_core::cloud::CloudConfiguration::Custom(custom)));
    }
    let cred: Arc<dyn TokenCredential> = match credentials {
        Credentials::WorkloadIdentity { tenant_id, client_id, token_file } => {
            let mut o = azure_identity::WorkloadIdentityCredentialOptions::default();
            o.credential_options.client_options = options;
            o.tenant_id = tenant_id.clone();
            o.client_id = client_id.clone();
            o.token_file_path = token_file.clone();
            azure_identity::WorkloadIdentityCredential::new(Some(o)).map_err(|e| {
                config_error(
                    "Azure workload identity (needs AZURE_TENANT_ID, AZURE_CLIENT_ID, AZURE_FEDERATED_TOKEN_FILE)",
                    e,
                )
            })?
        }
        Credentials::ClientSecret { tenant_id, client_id, secret } => {
            let o = azure_identity::ClientSecretCredentialOptions { client_options: options };
            azure_identity::ClientSecretCredential::new(tenant_id, client_id.clone(), secret.clone().into(), Some(o))
                .map_err(|e| config_error("Azure client secret credential", e))?
        }
    };
    Ok(cred)
}

/// The URL path without query, for messages.
fn path_of(url: &str) -> &str {
    let no_query = url.split('?').next().unwrap_or(url);
    let host_start = no_query.find("://").map(|i| i + 3).unwrap_or(0);
    match no_query[host_start..].find('/') {
        Some(i) => &no_query[host_start + i..],
        None => "/",
    }
}

enum Retry {
    Transport(String),
    Status(Answer),
}

/// A read HTTP answer.
struct Answer {
    status: StatusCode,
    headers: header::HeaderMap,
    etag: Option<String>,
    body: Value,
}

impl Answer {
    async fn read(resp: reqwest::Response) -> Result<Self, reqwest::Error> {
        let status = resp.status();
        let headers = resp.headers().clone();
        let etag = headers.get(header::ETAG).and_then(|v| v.to_str().ok()).map(String::from);
        let bytes = resp.bytes().await?;
        let body = serde_json::from_slice(&bytes).unwrap_or(Value::Null);
        Ok(Self { status, headers, etag, body })
    }

    fn header(&self, name: &str) -> Option<String> {
        self.headers.get(name).and_then(|v| v.to_str().ok()).map(String::from)
    }

    fn retry_after(&self) -> Option<Duration> {
        let secs: u64 = self.header("retry-after")?.trim().parse().ok()?;
        Some(Duration::from_secs(secs.min(300)))
    }

    /// `code: message` of an ARM error body, else the status.
    fn error_text(&self) -> String {
        match (self.body.pointer("/error/code"), self.body.pointer("/error/message")) {
            (Some(c), Some(m)) => format!("{} {}: {}", self.status, c.as_str().unwrap_or(""), m.as_str().unwrap_or("")),
            _ => self.status.to_string(),
        }
    }

    fn rejected(body: &Value, fallback: &str) -> ProviderError {
        let code = body.pointer("/error/code").and_then(Value::as_str).unwrap_or("Failed").to_string();
        let message = body.pointer("/error/message").and_then(Value::as_str).unwrap_or(fallback).to_string();
        ProviderError::Rejected { code, message }
    }

    /// The error for an unsuccessful answer to `what`, a request that needs `action`. A 401 (or
    /// a 403 without an ARM error code) is a credentials problem; a 403 with a code
    /// (`AuthorizationFailed`, `RequestDisallowedByPolicy`, `ForbiddenByPolicy`, …) is a refusal
    /// of this request by an authenticated caller.
    fn into_error(self, what: &str, action: &str) -> ProviderError {
        let code = self.body.pointer("/error/code").and_then(Value::as_str).unwrap_or("").to_string();
        match self.status {
            StatusCode::FORBIDDEN if !code.is_empty() => {
                let message = self.body.pointer("/error/message").and_then(Value::as_str).unwrap_or("").to_string();
                ProviderError::Refused { code, action: action.to_string(), message: format!("{what}: {message}") }
            }
            StatusCode::UNAUTHORIZED | StatusCode::FORBIDDEN => {
                ProviderError::Auth(format!("{what}: {}", self.error_text()))
            }
            // Another operation on the same resource, or it changed under us: later.
            StatusCode::CONFLICT | StatusCode::PRECONDITION_FAILED => {
                ProviderError::Transient(format!("{what}: {}", self.error_text()))
            }
            s if s.is_server_error() || s == StatusCode::TOO_MANY_REQUESTS => {
                ProviderError::Transient(format!("{what}: {}", self.error_text()))
            }
            _ => ProviderError::Rejected {
                code: if code.is_empty() { self.status.as_u16().to_string() } else { code },
                message: format!("{what}: {}", self.error_text()),
            },
        }
    }
}

fn non_empty(v: Option<&Value>) -> Option<String> {
    v.and_then(Value::as_str).filter(|s| !s.is_empty()).map(String::from)
}

/// KMS settings and provisioning state from a managed cluster resource.
pub(crate) fn cluster_kms(cluster: &Value) -> ClusterKms {
    let kms = cluster.pointer("/properties/securityProfile/azureKeyVaultKms");
    let enabled = kms.and_then(|k| k.get("enabled")).and_then(Value::as_bool).unwrap_or(false);
    let network_access = match kms.and_then(|k| k.get("keyVaultNetworkAccess")).and_then(Value::as_str) {
        Some("Private") => NetworkAccess::Private,
        _ => NetworkAccess::Public,
    };
    let settings = KmsSettings {
        enabled,
        key_id: non_empty(kms.and_then(|k| k.get("keyId"))),
        network_access: Some(network_access),
        key_vault_resource_id: non_empty(kms.and_then(|k| k.get("keyVaultResourceId"))),
    };
    let provisioning_state =
        cluster.pointer("/properties/provisioningState").and_then(Value::as_str).unwrap_or("Succeeded").to_string();
    let identity = ClusterIdentity {
        node_resource_group: non_empty(cluster.pointer("/properties/nodeResourceGroup")),
        api_server_fqdns: ["/properties/fqdn", "/properties/privateFQDN"]
            .iter()
            .filter_map(|p| non_empty(cluster.pointer(p)))
            .collect(),
    };
    ClusterKms { settings, provisioning_state, identity }
}

/// Whether the cluster's settings already are the desired ones (what AKS compares).
pub(crate) fn same_kms(current: &KmsSettings, desired: &KmsSettings) -> bool {
    if !desired.enabled || !current.enabled {
        return current.enabled == desired.enabled;
    }
    let mode = |s: &KmsSettings| s.network_access.unwrap_or(NetworkAccess::Public);
    let rid = |s: &KmsSettings| s.key_vault_resource_id.clone().unwrap_or_default().to_ascii_lowercase();
    current.key_id == desired.key_id && mode(current) == mode(desired) && rid(current) == rid(desired)
}

/// The KMS block to PUT: enabling sets all four fields, disabling only `enabled` (as azure-cli's
/// `az aks update` does), keeping what the cluster had.
pub(crate) fn kms_block(read: Option<&Value>, desired: &KmsSettings) -> Value {
    if !desired.enabled {
        let mut block = read.cloned().filter(Value::is_object).unwrap_or_else(|| json!({}));
        block["enabled"] = json!(false);
        return block;
    }
    let access = match desired.network_access.unwrap_or(NetworkAccess::Public) {
        NetworkAccess::Public => "Public",
        NetworkAccess::Private => "Private",
    };
    json!({
        "enabled": true,
        "keyId": desired.key_id,
        "keyVaultNetworkAccess": access,
        "keyVaultResourceId": desired.key_vault_resource_id.clone().unwrap_or_default(),
    })
}

#[async_trait]
impl KmsProvider for AzureKms {
    fn describe(&self) -> String {
        format!("AKS cluster {}", self.cluster_name)
    }

    async fn get_kms(&self) -> Result<ClusterKms, ProviderError> {
        Ok(cluster_kms(&self.get_cluster().await?.0))
    }

    async fn set_kms(&self, desired: &KmsSettings) -> Result<(), ProviderError> {
        let (mut cluster, etag) = self.get_cluster().await?;
        let current = cluster_kms(&cluster);
        if current.busy() {
            // An update from before a restart (or someone else's): let it finish, then decide.
            let current = self.wait_idle().await?;
            return if same_kms(&current.settings, desired) && current.provisioning_state == "Succeeded" {
                Ok(())
            } else {
                Err(ProviderError::Transient(format!(
                    "an update of {} was running; trying again now that it ended",
                    self.cluster_name
                )))
            };
        }
        if same_kms(&current.settings, desired) && current.provisioning_state == "Succeeded" {
            return Ok(());
        }
        let block = kms_block(cluster.pointer("/properties/securityProfile/azureKeyVaultKms"), desired);
        let props = cluster
            .as_object_mut()
            .ok_or_else(|| ProviderError::Transient("managed cluster body is not an object".into()))?
            .entry("properties")
            .or_insert_with(|| json!({}));
        if props.get("securityProfile").is_none_or(|v| !v.is_object()) {
            props["securityProfile"] = json!({});
        }
        props["securityProfile"]["azureKeyVaultKms"] = block;
        let url = format!("{}?api-version={MANAGED_CLUSTER_API_VERSION}", self.cluster_url);
        let a = self.send(Method::PUT, &url, ARM_SCOPE, Some(&cluster), etag.as_deref()).await?;
        if !a.status.is_success() {
            return Err(a.into_error(&format!("updating managed cluster {}", self.cluster_name), CLUSTER_WRITE));
        }
        self.follow(&a).await?;
        // Trust, but verify: the cluster must now report what we asked for.
        let after = self.get_kms().await?;
        if same_kms(&after.settings, desired) {
            Ok(())
        } else {
            Err(ProviderError::Rejected {
                code: "KmsNotApplied".into(),
                message: format!(
                    "the update of {} ended {} but the cluster reports KMS enabled={} key={:?}",
                    self.cluster_name, after.provisioning_state, after.settings.enabled, after.settings.key_id
                ),
            })
        }
    }

    async fn set_vault_network_access(
        &self,
        key_vault_resource_id: &str,
        access: NetworkAccess,
    ) -> Result<(), ProviderError> {
        let vault = parse_key_vault_resource_id(key_vault_resource_id)
            .map_err(|e| config_error("keyVaultResourceId", e))?
            .to_string();
        let value = match access {
            NetworkAccess::Public => "Enabled",
            NetworkAccess::Private => "Disabled",
        };
        let url = format!(
            "{}{}?api-version={VAULT_API_VERSION}",
            self.settings.arm_endpoint.trim_end_matches('/'),
            key_vault_resource_id
        );
        let body = json!({"properties": {"publicNetworkAccess": value}});
        let a = self.send(Method::PATCH, &url, ARM_SCOPE, Some(&body), None).await?;
        if !a.status.is_success() {
            return Err(
                a.into_error(&format!("setting public network access of key vault {vault} to {value}"), VAULT_WRITE)
            );
        }
        let now = a.body.pointer("/properties/publicNetworkAccess").and_then(Value::as_str);
        if now.is_some_and(|v| !v.eq_ignore_ascii_case(value)) {
            return Err(ProviderError::Rejected {
                code: "NetworkAccessNotApplied".into(),
                message: format!("key vault {vault} reports publicNetworkAccess {now:?} after it was set to {value}"),
            });
        }
        Ok(())
    }

    async fn check_permissions(
        &self,
        resource_id: Option<&str>,
        actions: &[&str],
    ) -> Result<PermissionCheck, ProviderError> {
        let base = match resource_id {
            Some(rid) => {
                parse_key_vault_resource_id(rid).map_err(|e| config_error("keyVaultResourceId", e))?;
                format!("{}{rid}", self.settings.arm_endpoint.trim_end_matches('/'))
            }
            None => self.cluster_url.clone(),
        };
        let url = format!("{base}/providers/Microsoft.Authorization/permissions?api-version={PERMISSIONS_API_VERSION}");
        let a = self.send(Method::GET, &url, ARM_SCOPE, None, None).await?;
        if !a.status.is_success() {
            return Err(a.into_error("reading the operator's permissions", "Microsoft.Authorization/permissions/read"));
        }
        let permissions: Vec<Permission> = a
            .body
            .get("value")
            .cloned()
            .and_then(|v| serde_json::from_value(v).ok())
            .ok_or_else(|| ProviderError::Transient("the permissions answer has no value list".into()))?;
        let missing: Vec<String> =
            actions.iter().filter(|a| !permitted(&permissions, a)).map(|a| a.to_string()).collect();
        Ok(if missing.is_empty() { PermissionCheck::Allowed } else { PermissionCheck::Missing(missing) })
    }

    async fn check_key(&self, key_id: &str, vault_resource_id: Option<&str>) -> Result<KeyState, ProviderError> {
        let key = parse_key_id(key_id).map_err(|e| config_error("keyId", e))?;
        // Through Resource Manager when the vault's resource id is known: that needs no
        // data-plane network access, so a private vault's key can be checked from anywhere.
        let (url, scope, attributes, action) = match vault_resource_id {
            Some(rid) => (
                format!(
                    "{}{}/keys/{}/versions/{}?api-version={ARM_KEY_API_VERSION}",
                    self.settings.arm_endpoint.trim_end_matches('/'),
                    rid,
                    key.name,
                    key.version
                ),
                ARM_SCOPE,
                "/properties",
                "Microsoft.KeyVault/vaults/keys/versions/read",
            ),
            None => {
                let base = self.settings.key_vault_endpoint.replace("{vault}", key.vault);
                let url = format!(
                    "{}/keys/{}/{}?api-version={KEY_API_VERSION}",
                    base.trim_end_matches('/'),
                    key.name,
                    key.version
                );
                (url, VAULT_SCOPE, "", "Microsoft.KeyVault/vaults/keys/read")
            }
        };
        let a = self.send(Method::GET, &url, scope, None, None).await?;
        if a.status == StatusCode::NOT_FOUND {
            return Ok(KeyState::Unusable(format!(
                "key {}/{} is not in key vault {} ({}); KMS needs it even while it is off: recover it \
                 (az keyvault key recover) or point keyId at an existing key",
                key.name,
                key.version,
                key.vault,
                a.error_text()
            )));
        }
        if !a.status.is_success() {
            return Err(
                a.into_error(&format!("reading key {}/{} in key vault {}", key.name, key.version, key.vault), action)
            );
        }
        let bundle = a.body.pointer(attributes).unwrap_or(&Value::Null);
        Ok(key_state(bundle, &format!("{}/{}", key.name, key.version), jiff_now()))
    }
}

fn jiff_now() -> i64 {
    k8s_openapi::jiff::Timestamp::now().as_second()
}

/// Usable or not, from a Key Vault key bundle's attributes (`exp`/`nbf` are Unix seconds).
pub(crate) fn key_state(bundle: &Value, key: &str, now: i64) -> KeyState {
    let attrs = bundle.get("attributes");
    let enabled = attrs.and_then(|a| a.get("enabled")).and_then(Value::as_bool).unwrap_or(true);
    let exp = attrs.and_then(|a| a.get("exp")).and_then(Value::as_i64);
    let nbf = attrs.and_then(|a| a.get("nbf")).and_then(Value::as_i64);
    let when =
        |s: i64| k8s_openapi::jiff::Timestamp::from_second(s).map(|t| t.to_string()).unwrap_or_else(|_| s.to_string());
    if !enabled {
        return KeyState::Unusable(format!(
            "key {key} is disabled; KMS needs it even while it is off: enable it (az keyvault key set-attributes --enabled true)"
        ));
    }
    if let Some(exp) = exp.filter(|&e| e <= now) {
        return KeyState::Unusable(format!(
            "key {key} expired at {}; KMS needs it even while it is off: extend its expiry",
            when(exp)
        ));
    }
    if let Some(nbf) = nbf.filter(|&n| n > now) {
        return KeyState::Unusable(format!("key {key} is not valid before {}", when(nbf)));
    }
    KeyState::Usable { expires: exp.map(when) }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn on(mode: &str, rid: &str) -> Value {
        json!({"properties": {"provisioningState": "Succeeded", "securityProfile": {"azureKeyVaultKms": {
            "enabled": true, "keyId": "https://kv1.vault.azure.net/keys/etcd/1",
            "keyVaultNetworkAccess": mode, "keyVaultResourceId": rid}}}})
    }

    #[test]
    fn reads_and_compares_kms_blocks() {
        let public = cluster_kms(&on("Public", ""));
        assert!(public.settings.enabled);
        assert_eq!(public.settings.key_vault_resource_id, None, "empty resource id reads as none");
        assert!(!public.busy());
        let mut private = public.settings.clone();
        private.network_access = Some(NetworkAccess::Private);
        assert!(!same_kms(&public.settings, &private));
        let off = KmsSettings { enabled: false, key_id: None, network_access: None, key_vault_resource_id: None };
        assert!(same_kms(&cluster_kms(&json!({"properties": {}})).settings, &off), "no block means off");
        let updating = cluster_kms(&json!({"properties": {"provisioningState": "Updating"}}));
        assert!(updating.busy());
    }

    #[test]
    fn disabling_keeps_the_rest_enabling_sets_all_four() {
        let read = on("Public", "");
        let block = read.pointer("/properties/securityProfile/azureKeyVaultKms");
        let off = KmsSettings { enabled: false, key_id: None, network_access: None, key_vault_resource_id: None };
        let b = kms_block(block, &off);
        assert_eq!(b["enabled"], false);
        assert_eq!(b["keyId"], "https://kv1.vault.azure.net/keys/etcd/1");
        let desired = KmsSettings {
            enabled: true,
            key_id: Some("https://kv1.vault.azure.net/keys/etcd/1".into()),
            network_access: Some(NetworkAccess::Private),
            key_vault_resource_id: Some(
                "/subscriptions/x/resourceGroups/rg/providers/Microsoft.KeyVault/vaults/kv1".into(),
            ),
        };
        let b = kms_block(block, &desired);
        assert_eq!(b["keyVaultNetworkAccess"], "Private");
        assert_eq!(b.as_object().unwrap().len(), 4);
    }

    #[test]
    fn key_attributes_decide_usability() {
        let now = 1_800_000_000;
        assert_eq!(
            key_state(&json!({"attributes": {"enabled": true}}), "k/1", now),
            KeyState::Usable { expires: None }
        );
        assert!(
            matches!(key_state(&json!({"attributes": {"enabled": false}}), "k/1", now), KeyState::Unusable(m) if m.contains("disabled"))
        );
        assert!(
            matches!(key_state(&json!({"attributes": {"enabled": true, "exp": now - 1}}), "k/1", now), KeyState::Unusable(m) if m.contains("expired"))
        );
        assert!(matches!(
            key_state(&json!({"attributes": {"enabled": true, "exp": now + 60}}), "k/1", now),
            KeyState::Usable { expires: Some(_) }
        ));
        assert!(matches!(
            key_state(&json!({"attributes": {"enabled": true, "nbf": now + 60}}), "k/1", now),
            KeyState::Unusable(_)
        ));
    }

    #[test]
    fn messages_carry_paths_not_hosts_or_queries() {
        assert_eq!(path_of("https://management.azure.com/subscriptions/x/y?api-version=1"), "/subscriptions/x/y");
    }
}
