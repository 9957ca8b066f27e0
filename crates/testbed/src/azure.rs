//! A local twin of the Azure side of KmsKeyVaultMode, for tests and the demo (Azure itself cannot
//! be reached from here). An HTTPS server that implements the documented contracts the operator
//! uses (../shared/design/REFERENCE.md):
//!
//! - Entra ID token endpoint `POST /{tenant}/oauth2/v2.0/token` (client secret or federated
//!   workload identity assertion), tokens bound to their audience;
//! - managed cluster GET/PUT with eTag/If-Match (412), 409 while an update runs, long-running
//!   operations with `Azure-AsyncOperation` (or `Location`) and `Retry-After`, AKS's validation of
//!   the KMS block (Private needs keyVaultResourceId, Public needs it empty, the key must exist,
//!   the mode of an attached vault cannot change while KMS is on);
//! - key vault PATCH of `publicNetworkAccess`; Key Vault data-plane key GET (404 KeyNotFound);
//! - `GET {resource}/providers/Microsoft.Authorization/permissions` on the cluster and the vaults:
//!   the caller's effective permissions (by default `*`), or 403 AuthorizationFailed when the
//!   caller may not read them.
//!
//! Like AKS, a KMS change really reconfigures the cluster: the `apply` hook (see
//! [`kms_hook`]) rewrites the test control plane's EncryptionConfiguration and restarts its
//! kube-apiserver before the operation reports Succeeded. Faults can be injected: a failing next
//! update, 409 conflicts, 429 throttling, slow operations, Location-only polling, deleted keys.

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use crate::https::Https;
use axum::extract::{Form, Path, Query, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use serde_json::{json, Value};

use crate::pki;

/// What the emulated subscription holds at start.
#[derive(Debug, Clone)]
pub struct Spec {
    pub tenant_id: String,
    pub client_id: String,
    pub client_secret: String,
    /// The service account token the workload identity webhook would project.
    pub federated_token: String,
    pub subscription_id: String,
    pub resource_group: String,
    pub cluster_name: String,
    pub location: String,
    /// Initial `azureKeyVaultKms` block of the cluster.
    pub kms: Value,
    /// Vault name → public network access enabled.
    pub vaults: BTreeMap<String, bool>,
    /// `vault/name/version` of existing, enabled keys.
    pub keys: Vec<String>,
}

impl Spec {
    /// A subscription with one AKS cluster and the given vaults, each with key `etcd/<version>`.
    pub fn new(cluster_name: &str, vaults: &[&str], version: &str) -> Self {
        Self {
            tenant_id: "72f988bf-86f1-41af-91ab-2d7cd011db47".into(),
            client_id: "0b2c6a4e-58c1-4b7e-9c1a-6f1d2e3a4b5c".into(),
            client_secret: "CSOP-MARKER-azure-client-secret-4d2b".into(),
            federated_token: "emulator-federated-token".into(),
            subscription_id: "00000000-0000-0000-0000-000000000001".into(),
            resource_group: "rg-orders".into(),
            cluster_name: cluster_name.into(),
            location: "westeurope".into(),
            kms: json!({"enabled": false}),
            vaults: vaults.iter().map(|v| (v.to_string(), true)).collect(),
            keys: vaults.iter().map(|v| format!("{v}/etcd/{version}")).collect(),
        }
    }

    /// The managed cluster's node resource group, as AKS names it (`MC_<rg>_<cluster>_<location>`):
    /// the value of the label `kubernetes.azure.com/cluster` on every one of its nodes.
    pub fn node_resource_group(&self) -> String {
        format!("MC_{}_{}_{}", self.resource_group, self.cluster_name, self.location)
    }

    /// Label Node `node` (created if missing, without a kubelet) as a node of this managed
    /// cluster, as AKS labels its nodes: the operator checks it before switching KMS.
    pub async fn label_node(&self, client: &kube::Client, node: &str) -> anyhow::Result<()> {
        label_node(client, node, &self.node_resource_group()).await
    }

    pub fn key_id(&self, vault: &str, version: &str) -> String {
        format!("https://{vault}.vault.azure.net/keys/etcd/{version}")
    }

    pub fn vault_resource_id(&self, vault: &str) -> String {
        format!(
            "/subscriptions/{}/resourceGroups/{}/providers/Microsoft.KeyVault/vaults/{vault}",
            self.subscription_id, self.resource_group
        )
    }
}

/// Called with the new `azureKeyVaultKms` block when an update changes it; blocking (it may
/// restart kube-apiserver). An error fails the operation.
pub type ApplyKms = Arc<dyn Fn(&Value) -> anyhow::Result<()> + Send + Sync>;

/// The hook that makes KMS changes real on a testbed control plane: write the
/// EncryptionConfiguration for the new settings (the KMS provider of the key's vault first, or
/// identity first when KMS is off; see [`super::kms_plugin::encryption_config`]) and restart
/// kube-apiserver, which v1.20 needs to read it.
pub fn kms_hook(cp: Arc<super::ControlPlane>, endpoint: String, vaults: Vec<String>) -> ApplyKms {
    Arc::new(move |kms: &Value| {
        let vaults: Vec<&str> = vaults.iter().map(String::as_str).collect();
        let config = super::kms_plugin::encryption_config(&endpoint, active_vault(kms).as_deref(), &vaults);
        cp.set_encryption_config(&config)?;
        cp.restart_apiserver()
    })
}

/// The vault whose key a KMS block uses while KMS is on.
pub fn active_vault(kms: &Value) -> Option<String> {
    if !kms.get("enabled").and_then(Value::as_bool).unwrap_or(false) {
        return None;
    }
    let key = kms.get("keyId").and_then(Value::as_str)?;
    cluster_security_api::validate::parse_key_id(key).ok().map(|k| k.vault.to_string())
}

#[derive(Debug, Clone)]
struct Op {
    status: &'static str,
    polls_left: u32,
    error: Option<(String, String)>,
    start: String,
}

#[derive(Default)]
struct Faults {
    fail_next_update: Option<(String, String)>,
    /// Refuse (400) every cluster PUT that turns KMS on with this network access: (access, code).
    refuse_enable: Option<(String, String)>,
    /// Refuse (400) the next this many key vault PATCHes.
    refuse_vault_patches: u32,
    /// Refuse every key vault PATCH with 403 and this ARM code (`RequestDisallowedByPolicy`,
    /// `AuthorizationFailed`) until cleared, as Azure does for a policy deny or a missing role.
    forbid_vault_patches: Option<String>,
    /// The caller's permissions on the cluster and vaults (`actions`, `notActions`); None: `*`.
    permissions: Option<(Vec<String>, Vec<String>)>,
    /// Answer the permissions read with 403 AuthorizationFailed.
    permissions_refused: bool,
    conflicts: u32,
    throttles: u32,
    location_only: bool,
    /// Announce operations under this base URL instead of the emulator's own (a hostile or
    /// broken Resource Manager pointing the client elsewhere).
    poll_base: Option<String>,
    lro_polls: u32,
    lro_delay: Duration,
}

struct World {
    spec: Spec,
    cluster: Value,
    etag: u64,
    vaults: BTreeMap<String, bool>,
    keys: Vec<String>,
    tokens: HashMap<String, String>,
    ops: HashMap<String, Op>,
    busy: bool,
    faults: Faults,
    log: Vec<String>,
    token_grants: Vec<&'static str>,
}

struct Shared {
    world: Mutex<World>,
    apply: Option<ApplyKms>,
    base: String,
}

type S = State<Arc<Shared>>;

/// A running emulator; stops when dropped.
pub struct AzureEmulator {
    shared: Arc<Shared>,
    handle: axum_server::Handle,
    pub url: String,
    pub ca_pem: String,
    pub spec: Spec,
}

fn now_text() -> String {
    k8s_openapi::jiff::Timestamp::now().to_string()
}

fn arm_error(status: StatusCode, code: &str, message: &str) -> Response {
    (status, Json(json!({"error": {"code": code, "message": message}}))).into_response()
}

impl AzureEmulator {
    /// Start on a free loopback port with a certificate from a fresh CA (`ca_pem`).
    pub async fn start(spec: Spec, apply: Option<ApplyKms>) -> anyhow::Result<Self> {
        let https = Https::bind("azure-emulator").await?;
        let port = https.port;
        let base = format!("https://127.0.0.1:{port}");
        let cluster = json!({
            "id": format!("/subscriptions/{}/resourceGroups/{}/providers/Microsoft.ContainerService/managedClusters/{}", spec.subscription_id, spec.resource_group, spec.cluster_name),
            "name": spec.cluster_name, "type": "Microsoft.ContainerService/ManagedClusters",
            "location": spec.location, "eTag": "1",
            "properties": {"provisioningState": "Succeeded", "kubernetesVersion": "1.20.2",
                "nodeResourceGroup": spec.node_resource_group(),
                "fqdn": format!("{}-dns.hcp.{}.azmk8s.io", spec.cluster_name, spec.location),
                "securityProfile": {"azureKeyVaultKms": spec.kms.clone()}}
        });
        let world = World {
            cluster,
            etag: 1,
            vaults: spec.vaults.clone(),
            keys: spec.keys.clone(),
            tokens: HashMap::new(),
            ops: HashMap::new(),
            busy: false,
            faults: Faults { lro_polls: 1, ..Default::default() },
            log: Vec::new(),
            token_grants: Vec::new(),
            spec: spec.clone(),
        };
        let shared = Arc::new(Shared { world: Mutex::new(world), apply, base: base.clone() });
        let app = Router::new()
            .route("/{tenant}/oauth2/v2.0/token", post(token))
            .route(
                "/subscriptions/{sub}/resourceGroups/{rg}/providers/Microsoft.ContainerService/managedClusters/{name}",
                get(get_cluster).put(put_cluster),
            )
            .route(
                "/subscriptions/{sub}/providers/Microsoft.ContainerService/locations/{loc}/operations/{id}",
                get(async_status),
            )
            .route(
                "/subscriptions/{sub}/providers/Microsoft.ContainerService/locations/{loc}/operationresults/{id}",
                get(location_status),
            )
            .route(
                "/subscriptions/{sub}/resourceGroups/{rg}/providers/Microsoft.KeyVault/vaults/{vault}",
                get(get_vault).patch(patch_vault),
            )
            .route(
                "/subscriptions/{sub}/resourceGroups/{rg}/providers/Microsoft.ContainerService/managedClusters/{name}/providers/Microsoft.Authorization/permissions",
                get(cluster_permissions),
            )
            .route(
                "/subscriptions/{sub}/resourceGroups/{rg}/providers/Microsoft.KeyVault/vaults/{name}/providers/Microsoft.Authorization/permissions",
                get(vault_permissions),
            )
            .route("/keyvault/{vault}/keys/{name}/{version}", get(get_key))
            .route(
                "/subscriptions/{sub}/resourceGroups/{rg}/providers/Microsoft.KeyVault/vaults/{vault}/keys/{name}/versions/{version}",
                get(get_key_version),
            )
            .with_state(shared.clone());
        let ca_pem = https.ca.cert_pem.clone();
        let handle = https.serve(app, "Azure emulator").await;
        Ok(Self { shared, handle, url: base, ca_pem, spec })
    }

    /// Point an operator at this emulator: store its client secret in the Secret
    /// `azure-credentials` of the operator's namespace, write its CA next to the control plane's
    /// files, and return the `run` flags that use both (blocking: runs kubectl).
    pub fn operator_args(&self, cp: &super::ControlPlane) -> anyhow::Result<Vec<String>> {
        let creds = format!(
            "apiVersion: v1\nkind: Secret\nmetadata: {{name: azure-credentials, namespace: {}}}\nstringData: {{AZURE_TENANT_ID: {}, AZURE_CLIENT_ID: {}, AZURE_CLIENT_SECRET: {}}}\n",
            super::operator::NAMESPACE,
            self.spec.tenant_id,
            self.spec.client_id,
            self.spec.client_secret
        );
        let out = cp.kubectl_with_stdin(&["apply", "-f", "-"], Some(&creds));
        anyhow::ensure!(
            out.status.success(),
            "creating the Azure credentials Secret failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        let ca_file = cp.dir().join("azure-emulator-ca.pem");
        std::fs::write(&ca_file, &self.ca_pem)?;
        Ok(vec![
            format!("--azure-arm-endpoint={}", self.url),
            format!("--azure-authority-host={}", self.url),
            format!("--azure-key-vault-endpoint={}", self.key_vault_endpoint()),
            format!("--azure-ca-file={}", ca_file.display()),
            "--azure-credentials-secret=azure-credentials".to_string(),
            "--azure-poll-interval-seconds=1".to_string(),
        ])
    }

    fn world(&self) -> std::sync::MutexGuard<'_, World> {
        self.shared.world.lock().expect("emulator lock")
    }

    /// Key Vault data-plane endpoint template (`{vault}` for the vault name).
    pub fn key_vault_endpoint(&self) -> String {
        format!("{}/keyvault/{{vault}}", self.url)
    }

    /// The cluster's current `azureKeyVaultKms` block.
    pub fn kms(&self) -> Value {
        self.world().cluster.pointer("/properties/securityProfile/azureKeyVaultKms").cloned().unwrap_or(Value::Null)
    }

    /// Set the managed cluster's API server host names (`properties.fqdn`, and
    /// `properties.privateFQDN` when given), as the managed cluster GET reports them.
    pub fn set_fqdn(&self, fqdn: &str, private_fqdn: Option<&str>) {
        let mut w = self.world();
        let props = w.cluster.pointer_mut("/properties").and_then(Value::as_object_mut).expect("cluster properties");
        props.insert("fqdn".into(), json!(fqdn));
        match private_fqdn {
            Some(p) => props.insert("privateFQDN".into(), json!(p)),
            None => props.remove("privateFQDN"),
        };
    }

    pub fn provisioning_state(&self) -> String {
        self.world().cluster.pointer("/properties/provisioningState").and_then(Value::as_str).unwrap_or("").into()
    }

    /// Public network access of a vault.
    pub fn vault_public(&self, vault: &str) -> Option<bool> {
        self.world().vaults.get(vault).copied()
    }

    /// What changed, in order: `PUT kms …`, `PATCH vault …`, `FAILED …`.
    pub fn log(&self) -> Vec<String> {
        self.world().log.clone()
    }

    /// Grant types of the token requests served (`client_secret`, `client_assertion`).
    pub fn token_grants(&self) -> Vec<&'static str> {
        self.world().token_grants.clone()
    }

    /// The next accepted cluster update ends Failed with this error.
    pub fn fail_next_update(&self, code: &str, message: &str) {
        self.world().faults.fail_next_update = Some((code.into(), message.into()));
    }

    /// Refuse (400 `code`) every cluster update that turns KMS on with network access `access`
    /// (`Public` or `Private`) until [`Self::clear_refusals`]: a target that cannot be reached.
    pub fn refuse_enable(&self, access: &str, code: &str) {
        self.world().faults.refuse_enable = Some((access.into(), code.into()));
    }

    /// Refuse (400 Forbidden-by-policy) the next `n` key vault PATCHes.
    pub fn refuse_vault_patches(&self, n: u32) {
        self.world().faults.refuse_vault_patches = n;
    }

    /// Answer every key vault PATCH with 403 `code` (e.g. `RequestDisallowedByPolicy`,
    /// `AuthorizationFailed`), as Azure does, until [`Self::clear_refusals`].
    pub fn forbid_vault_patches(&self, code: &str) {
        self.world().faults.forbid_vault_patches = Some(code.into());
    }

    /// The caller's effective permissions (`actions`, `notActions`) that
    /// `Microsoft.Authorization/permissions` reports on the cluster and the vaults (default `*`).
    pub fn set_permissions(&self, actions: &[&str], not_actions: &[&str]) {
        let own = |v: &[&str]| v.iter().map(|s| s.to_string()).collect();
        self.world().faults.permissions = Some((own(actions), own(not_actions)));
    }

    /// The permissions read answers 403 AuthorizationFailed (the caller may not read them).
    pub fn refuse_permissions_read(&self, on: bool) {
        self.world().faults.permissions_refused = on;
    }

    /// Stop refusing; permissions back to `*`.
    pub fn clear_refusals(&self) {
        let mut w = self.world();
        w.faults.refuse_enable = None;
        w.faults.refuse_vault_patches = 0;
        w.faults.forbid_vault_patches = None;
        w.faults.permissions = None;
        w.faults.permissions_refused = false;
    }

    /// The next `n` cluster PUTs answer 409 OperationNotAllowed.
    pub fn conflict_next(&self, n: u32) {
        self.world().faults.conflicts = n;
    }

    /// The next `n` Resource Manager requests answer 429 with Retry-After.
    pub fn throttle_next(&self, n: u32) {
        self.world().faults.throttles = n;
    }

    /// Long-running operations answer InProgress at least `polls` times and take at least `delay`.
    pub fn set_lro(&self, polls: u32, delay: Duration) {
        let mut w = self.world();
        w.faults.lro_polls = polls;
        w.faults.lro_delay = delay;
    }

    /// Announce operations with `Location` only (no `Azure-AsyncOperation`).
    pub fn location_only(&self, on: bool) {
        self.world().faults.location_only = on;
    }

    /// Announce long-running operations under `base` (e.g. another host) instead of the
    /// emulator's own URL.
    pub fn announce_operations_at(&self, base: &str) {
        self.world().faults.poll_base = Some(base.to_string());
    }

    /// Delete a key (`vault/name/version`).
    pub fn delete_key(&self, key: &str) {
        self.world().keys.retain(|k| k != key);
    }
}

impl Drop for AzureEmulator {
    fn drop(&mut self) {
        self.handle.shutdown();
    }
}

/// Check the bearer token's audience; None when allowed.
fn unauthorized(w: &World, headers: &HeaderMap, audience: &str) -> Option<Response> {
    let token = headers.get("authorization").and_then(|v| v.to_str().ok()).and_then(|v| v.strip_prefix("Bearer "));
    match token.and_then(|t| w.tokens.get(t)) {
        Some(a) if a == audience => None,
        Some(_) => Some(arm_error(
            StatusCode::UNAUTHORIZED,
            "InvalidAuthenticationTokenAudience",
            "The access token has been obtained for the wrong audience or resource.",
        )),
        None => Some(arm_error(
            StatusCode::UNAUTHORIZED,
            "AuthenticationFailed",
            "Authentication failed. The 'Authorization' header is missing or invalid.",
        )),
    }
}

/// The checks every Resource Manager request goes through: token, api-version, throttling.
fn arm_gate(w: &mut World, headers: &HeaderMap, q: &HashMap<String, String>) -> Option<Response> {
    if let Some(r) = unauthorized(w, headers, "https://management.azure.com") {
        return Some(r);
    }
    if !q.contains_key("api-version") {
        return Some(arm_error(
            StatusCode::BAD_REQUEST,
            "MissingApiVersionParameter",
            "The api-version query parameter (?api-version=) is required for all requests.",
        ));
    }
    if w.faults.throttles > 0 {
        w.faults.throttles -= 1;
        let mut r = arm_error(StatusCode::TOO_MANY_REQUESTS, "TooManyRequests", "The request is being throttled.");
        r.headers_mut().insert("retry-after", "1".parse().expect("header"));
        return Some(r);
    }
    None
}

async fn token(State(s): S, Path(tenant): Path<String>, Form(form): Form<HashMap<String, String>>) -> Response {
    let mut w = s.world.lock().expect("emulator lock");
    let bad = |code: &str, desc: &str| {
        (StatusCode::BAD_REQUEST, Json(json!({"error": code, "error_description": desc}))).into_response()
    };
    if tenant != w.spec.tenant_id {
        return bad("invalid_request", "AADSTS90002: Tenant not found.");
    }
    if form.get("grant_type").map(String::as_str) != Some("client_credentials") {
        return bad("unsupported_grant_type", "AADSTS70003: grant_type must be client_credentials.");
    }
    if form.get("client_id") != Some(&w.spec.client_id) {
        return bad("unauthorized_client", "AADSTS700016: Application not found in the directory.");
    }
    let grant = if let Some(secret) = form.get("client_secret") {
        if *secret != w.spec.client_secret {
            return (StatusCode::UNAUTHORIZED, Json(json!({"error": "invalid_client", "error_description": "AADSTS7000215: Invalid client secret provided."}))).into_response();
        }
        "client_secret"
    } else if form.get("client_assertion_type").map(String::as_str)
        == Some("urn:ietf:params:oauth:client-assertion-type:jwt-bearer")
    {
        if form.get("client_assertion") != Some(&w.spec.federated_token) {
            return (StatusCode::UNAUTHORIZED, Json(json!({"error": "invalid_client", "error_description": "AADSTS700211: No matching federated identity record found for presented assertion."}))).into_response();
        }
        "client_assertion"
    } else {
        return bad(
            "invalid_request",
            "AADSTS900144: The request body must contain client_secret or client_assertion.",
        );
    };
    let Some(audience) = form.get("scope").and_then(|s| s.strip_suffix("/.default")) else {
        return bad("invalid_scope", "AADSTS70011: The scope must end with /.default.");
    };
    let token = format!("emulator-token-{}", pki::random_hex());
    w.tokens.insert(token.clone(), audience.to_string());
    w.token_grants.push(grant);
    Json(json!({"token_type": "Bearer", "expires_in": 3599, "ext_expires_in": 3599, "access_token": token}))
        .into_response()
}

fn cluster_path_ok(w: &World, sub: &str, rg: &str, name: &str) -> bool {
    sub == w.spec.subscription_id && rg.eq_ignore_ascii_case(&w.spec.resource_group) && name == w.spec.cluster_name
}

fn not_found(what: &str) -> Response {
    arm_error(StatusCode::NOT_FOUND, "ResourceNotFound", &format!("The Resource '{what}' was not found."))
}

async fn get_cluster(
    State(s): S,
    Path((sub, rg, name)): Path<(String, String, String)>,
    Query(q): Query<HashMap<String, String>>,
    headers: HeaderMap,
) -> Response {
    let mut w = s.world.lock().expect("emulator lock");
    if let Some(r) = arm_gate(&mut w, &headers, &q) {
        return r;
    }
    if !cluster_path_ok(&w, &sub, &rg, &name) {
        return not_found(&format!("Microsoft.ContainerService/managedClusters/{name}"));
    }
    let mut r = Json(w.cluster.clone()).into_response();
    r.headers_mut().insert("etag", w.etag.to_string().parse().expect("header"));
    r
}

/// AKS's checks of a KMS block against the current one; Err is (code, message).
fn check_kms(w: &World, new: &Value) -> Result<(), (String, String)> {
    let err = |c: &str, m: String| Err((c.to_string(), m));
    let enabled = new.get("enabled").and_then(Value::as_bool).unwrap_or(false);
    if !enabled {
        return Ok(());
    }
    let key_id = new.get("keyId").and_then(Value::as_str).unwrap_or("");
    let Ok(key) = cluster_security_api::validate::parse_key_id(key_id) else {
        return err("InvalidParameter", format!("keyId {key_id:?} is not a key vault key identifier"));
    };
    let key_path = format!("{}/{}/{}", key.vault, key.name, key.version);
    if !w.keys.contains(&key_path) {
        return err("AzureKeyVaultKmsKeyNotFound", format!("key {key_id} was not found in key vault {}", key.vault));
    }
    let access = new.get("keyVaultNetworkAccess").and_then(Value::as_str).unwrap_or("Public");
    let rid = new.get("keyVaultResourceId").and_then(Value::as_str).unwrap_or("");
    match access {
        "Private" => {
            let Ok(vault) = cluster_security_api::validate::parse_key_vault_resource_id(rid) else {
                return err(
                    "InvalidParameter",
                    "keyVaultResourceId must be set when keyVaultNetworkAccess is Private".into(),
                );
            };
            if !vault.eq_ignore_ascii_case(key.vault) {
                return err(
                    "InvalidParameter",
                    format!("keyVaultResourceId names vault {vault} but the key is in {}", key.vault),
                );
            }
        }
        "Public" => {
            if !rid.is_empty() {
                return err(
                    "InvalidParameter",
                    "keyVaultResourceId must be empty when keyVaultNetworkAccess is Public".into(),
                );
            }
            if w.vaults.get(key.vault) == Some(&false) {
                return err("AzureKeyVaultKmsKeyVaultNotReachable", format!("key vault {} has public network access disabled; keyVaultNetworkAccess Public needs it enabled", key.vault));
            }
        }
        other => return err("InvalidParameter", format!("keyVaultNetworkAccess {other:?} is not Public or Private")),
    }
    let old = w.cluster.pointer("/properties/securityProfile/azureKeyVaultKms").cloned().unwrap_or(Value::Null);
    let vault_of = |b: &Value| {
        b.get("keyId")
            .and_then(Value::as_str)
            .and_then(|k| cluster_security_api::validate::parse_key_id(k).ok().map(|k| k.vault.to_ascii_lowercase()))
    };
    if old.get("enabled").and_then(Value::as_bool) == Some(true)
        && vault_of(&old) == Some(key.vault.to_ascii_lowercase())
        && old.get("keyVaultNetworkAccess").and_then(Value::as_str).unwrap_or("Public") != access
    {
        return err("OperationNotAllowed", "Changing the network access of the attached key vault is not allowed while KMS is enabled; turn KMS off first, then turn it on with the new mode.".into());
    }
    Ok(())
}

async fn put_cluster(
    State(s): S,
    Path((sub, rg, name)): Path<(String, String, String)>,
    Query(q): Query<HashMap<String, String>>,
    headers: HeaderMap,
    Json(body): Json<Value>,
) -> Response {
    let mut w = s.world.lock().expect("emulator lock");
    if let Some(r) = arm_gate(&mut w, &headers, &q) {
        return r;
    }
    if !cluster_path_ok(&w, &sub, &rg, &name) {
        return not_found(&format!("Microsoft.ContainerService/managedClusters/{name}"));
    }
    if w.faults.conflicts > 0 || w.busy {
        w.faults.conflicts = w.faults.conflicts.saturating_sub(1);
        return arm_error(StatusCode::CONFLICT, "OperationNotAllowed", "Operation is not allowed because there's an in progress update managed cluster operation on the managed cluster started.");
    }
    if let Some(m) = headers.get("if-match").and_then(|v| v.to_str().ok()) {
        if m != "*" && m != w.etag.to_string() {
            return arm_error(
                StatusCode::PRECONDITION_FAILED,
                "PreconditionFailed",
                "Operation failed since the provided eTag does not match the resource's current eTag.",
            );
        }
    }
    let new =
        body.pointer("/properties/securityProfile/azureKeyVaultKms").cloned().unwrap_or(json!({"enabled": false}));
    if let Err((code, message)) = check_kms(&w, &new) {
        return arm_error(StatusCode::BAD_REQUEST, &code, &message);
    }
    if let Some((access, code)) = w.faults.refuse_enable.clone() {
        let enabling = new.get("enabled").and_then(Value::as_bool) == Some(true);
        if enabling && new.get("keyVaultNetworkAccess").and_then(Value::as_str).unwrap_or("Public") == access {
            w.log.push(format!("REFUSED {code}: {}", summary(&new)));
            return arm_error(StatusCode::BAD_REQUEST, &code, "the KMS settings were refused (injected fault)");
        }
    }
    let old = w.cluster.pointer("/properties/securityProfile/azureKeyVaultKms").cloned().unwrap_or(Value::Null);
    let changed = old != new;
    w.cluster["properties"]["securityProfile"]["azureKeyVaultKms"] = new.clone();
    w.cluster["properties"]["provisioningState"] = json!("Updating");
    w.etag += 1;
    w.cluster["eTag"] = json!(w.etag.to_string());
    w.busy = true;
    let id = pki::random_hex();
    let failure = w.faults.fail_next_update.take();
    let polls = w.faults.lro_polls;
    w.ops.insert(id.clone(), Op { status: "InProgress", polls_left: polls, error: None, start: now_text() });
    w.log.push(format!("PUT kms {}", summary(&new)));
    let (delay, location_only) = (w.faults.lro_delay, w.faults.location_only);
    let base = w.faults.poll_base.clone().unwrap_or_else(|| s.base.clone());
    let body = w.cluster.clone();
    let etag = w.etag;
    drop(w);

    let (shared, op_id) = (s.clone(), id.clone());
    tokio::spawn(async move {
        tokio::time::sleep(delay).await;
        let result = match failure {
            Some(f) => Err(f),
            None if changed => match &shared.apply {
                Some(apply) => {
                    let (apply, block) = (apply.clone(), new.clone());
                    match tokio::task::spawn_blocking(move || apply(&block)).await {
                        Ok(Ok(())) => Ok(()),
                        Ok(Err(e)) => {
                            Err(("InternalOperationError".to_string(), format!("applying KMS settings: {e}")))
                        }
                        Err(e) => Err(("InternalOperationError".to_string(), e.to_string())),
                    }
                }
                None => Ok(()),
            },
            None => Ok(()),
        };
        let mut w = shared.world.lock().expect("emulator lock");
        let op = w.ops.get_mut(&op_id).expect("operation recorded");
        match result {
            Ok(()) => op.status = "Succeeded",
            Err(e) => {
                op.status = "Failed";
                op.error = Some(e.clone());
            }
        }
        let failed = op.status == "Failed";
        if failed {
            w.cluster["properties"]["securityProfile"]["azureKeyVaultKms"] = old;
            w.cluster["properties"]["provisioningState"] = json!("Failed");
            let line = format!("FAILED {}: {}", e_code(&w.ops[&op_id]), summary(&new));
            w.log.push(line);
        } else {
            w.cluster["properties"]["provisioningState"] = json!("Succeeded");
        }
        w.etag += 1;
        w.cluster["eTag"] = json!(w.etag.to_string());
        w.busy = false;
    });

    let ops = format!(
        "{}/subscriptions/{sub}/providers/Microsoft.ContainerService/locations/{}",
        base,
        body["location"].as_str().unwrap_or("westeurope")
    );
    let mut r = (StatusCode::OK, Json(body)).into_response();
    let h = r.headers_mut();
    if location_only {
        h.insert("location", format!("{ops}/operationresults/{id}?api-version=2017-08-31").parse().expect("header"));
    } else {
        h.insert(
            "azure-asyncoperation",
            format!("{ops}/operations/{id}?api-version=2017-08-31").parse().expect("header"),
        );
    }
    h.insert("retry-after", "1".parse().expect("header"));
    h.insert("etag", etag.to_string().parse().expect("header"));
    r
}

fn e_code(op: &Op) -> String {
    op.error.as_ref().map(|e| e.0.clone()).unwrap_or_default()
}

fn summary(kms: &Value) -> String {
    let enabled = kms.get("enabled").and_then(Value::as_bool).unwrap_or(false);
    if !enabled {
        return "enabled=false".into();
    }
    let vault = kms
        .get("keyId")
        .and_then(Value::as_str)
        .and_then(|k| cluster_security_api::validate::parse_key_id(k).ok().map(|k| k.vault.to_string()))
        .unwrap_or_default();
    format!(
        "enabled=true vault={vault} access={}",
        kms.get("keyVaultNetworkAccess").and_then(Value::as_str).unwrap_or("Public")
    )
}

/// One poll of an operation: its status now (counting down the InProgress answers owed).
fn poll(w: &mut World, id: &str) -> Option<Op> {
    let op = w.ops.get_mut(id)?;
    if op.polls_left > 0 {
        op.polls_left -= 1;
        let mut shown = op.clone();
        shown.status = "InProgress";
        return Some(shown);
    }
    Some(op.clone())
}

async fn async_status(
    State(s): S,
    Path((_sub, _loc, id)): Path<(String, String, String)>,
    Query(q): Query<HashMap<String, String>>,
    headers: HeaderMap,
) -> Response {
    let mut w = s.world.lock().expect("emulator lock");
    if let Some(r) = arm_gate(&mut w, &headers, &q) {
        return r;
    }
    let Some(op) = poll(&mut w, &id) else { return not_found(&format!("operation {id}")) };
    let mut body = json!({"name": id, "status": op.status, "startTime": op.start});
    if let Some((code, message)) = &op.error {
        body["error"] = json!({"code": code, "message": message});
    }
    let mut r = Json(body).into_response();
    if op.status == "InProgress" {
        r.headers_mut().insert("retry-after", "1".parse().expect("header"));
    }
    r
}

async fn location_status(
    State(s): S,
    Path((_sub, _loc, id)): Path<(String, String, String)>,
    Query(q): Query<HashMap<String, String>>,
    headers: HeaderMap,
) -> Response {
    let mut w = s.world.lock().expect("emulator lock");
    if let Some(r) = arm_gate(&mut w, &headers, &q) {
        return r;
    }
    let Some(op) = poll(&mut w, &id) else { return not_found(&format!("operation {id}")) };
    match (op.status, &op.error) {
        ("InProgress", _) => {
            let mut r = StatusCode::ACCEPTED.into_response();
            r.headers_mut().insert("retry-after", "1".parse().expect("header"));
            r
        }
        (_, Some((code, message))) => arm_error(StatusCode::BAD_REQUEST, code, message),
        _ => Json(w.cluster.clone()).into_response(),
    }
}

fn vault_body(w: &World, name: &str, public: bool) -> Value {
    json!({
        "id": w.spec.vault_resource_id(name), "name": name, "type": "Microsoft.KeyVault/vaults", "location": w.spec.location,
        "properties": {"vaultUri": format!("https://{name}.vault.azure.net/"), "publicNetworkAccess": if public { "Enabled" } else { "Disabled" }}
    })
}

async fn get_vault(
    State(s): S,
    Path((sub, rg, vault)): Path<(String, String, String)>,
    Query(q): Query<HashMap<String, String>>,
    headers: HeaderMap,
) -> Response {
    let mut w = s.world.lock().expect("emulator lock");
    if let Some(r) = arm_gate(&mut w, &headers, &q) {
        return r;
    }
    match w.vaults.get(&vault).copied() {
        Some(public) if sub == w.spec.subscription_id && rg.eq_ignore_ascii_case(&w.spec.resource_group) => {
            Json(vault_body(&w, &vault, public)).into_response()
        }
        _ => not_found(&format!("Microsoft.KeyVault/vaults/{vault}")),
    }
}

async fn patch_vault(
    State(s): S,
    Path((sub, rg, vault)): Path<(String, String, String)>,
    Query(q): Query<HashMap<String, String>>,
    headers: HeaderMap,
    Json(body): Json<Value>,
) -> Response {
    let mut w = s.world.lock().expect("emulator lock");
    if let Some(r) = arm_gate(&mut w, &headers, &q) {
        return r;
    }
    if !w.vaults.contains_key(&vault)
        || sub != w.spec.subscription_id
        || !rg.eq_ignore_ascii_case(&w.spec.resource_group)
    {
        return not_found(&format!("Microsoft.KeyVault/vaults/{vault}"));
    }
    let public = match body.pointer("/properties/publicNetworkAccess").and_then(Value::as_str) {
        Some("Enabled") => true,
        Some("Disabled") => false,
        other => {
            return arm_error(
                StatusCode::BAD_REQUEST,
                "BadRequest",
                &format!("publicNetworkAccess {other:?} must be Enabled or Disabled"),
            )
        }
    };
    if let Some(code) = w.faults.forbid_vault_patches.clone() {
        w.log.push(format!("REFUSED {code} vault {vault} PATCH"));
        let message = match code.as_str() {
            "AuthorizationFailed" => format!(
                "The client '{}' with object id '{}' does not have authorization to perform action \
                 'Microsoft.KeyVault/vaults/write' over scope '{}' or the scope is invalid.",
                w.spec.client_id,
                w.spec.client_id,
                w.spec.vault_resource_id(&vault)
            ),
            _ => format!(
                "Resource '{vault}' was disallowed by policy. Reasons: 'Key vaults must keep public network \
                 access as set'. See error details for policy resource IDs."
            ),
        };
        return arm_error(StatusCode::FORBIDDEN, &code, &message);
    }
    if w.faults.refuse_vault_patches > 0 {
        w.faults.refuse_vault_patches -= 1;
        w.log.push(format!("REFUSED vault {vault} PATCH"));
        return arm_error(
            StatusCode::BAD_REQUEST,
            "RequestDisallowedByPolicy",
            "the key vault update was disallowed by policy (injected fault)",
        );
    }
    w.vaults.insert(vault.clone(), public);
    w.log.push(format!("PATCH vault {vault} publicNetworkAccess={}", if public { "Enabled" } else { "Disabled" }));
    Json(vault_body(&w, &vault, public)).into_response()
}

/// `Microsoft.Authorization/permissions` on a resource: the caller's effective permissions there
/// (one entry; `*` unless set otherwise).
async fn cluster_permissions(
    State(s): S,
    Path((sub, rg, name)): Path<(String, String, String)>,
    Query(q): Query<HashMap<String, String>>,
    headers: HeaderMap,
) -> Response {
    let w = s.world.lock().expect("emulator lock");
    let known = cluster_path_ok(&w, &sub, &rg, &name);
    permissions(
        w,
        &q,
        &headers,
        known.then_some(()).ok_or(format!("Microsoft.ContainerService/managedClusters/{name}")),
    )
}

async fn vault_permissions(
    State(s): S,
    Path((sub, rg, name)): Path<(String, String, String)>,
    Query(q): Query<HashMap<String, String>>,
    headers: HeaderMap,
) -> Response {
    let w = s.world.lock().expect("emulator lock");
    let known = w.vaults.contains_key(&name)
        && sub == w.spec.subscription_id
        && rg.eq_ignore_ascii_case(&w.spec.resource_group);
    permissions(w, &q, &headers, known.then_some(()).ok_or(format!("Microsoft.KeyVault/vaults/{name}")))
}

fn permissions(
    mut w: std::sync::MutexGuard<'_, World>,
    q: &HashMap<String, String>,
    headers: &HeaderMap,
    known: Result<(), String>,
) -> Response {
    if let Some(r) = arm_gate(&mut w, headers, q) {
        return r;
    }
    if let Err(what) = known {
        return not_found(&what);
    }
    if w.faults.permissions_refused {
        return arm_error(
            StatusCode::FORBIDDEN,
            "AuthorizationFailed",
            "The client does not have authorization to perform action 'Microsoft.Authorization/permissions/read'.",
        );
    }
    let (actions, not_actions) = w.faults.permissions.clone().unwrap_or_else(|| (vec!["*".into()], vec![]));
    Json(json!({"value": [{"actions": actions, "notActions": not_actions, "dataActions": [], "notDataActions": []}]}))
        .into_response()
}

/// `Microsoft.KeyVault/vaults/keys/versions` through Resource Manager: the management plane, open
/// whatever the vault's public network access.
async fn get_key_version(
    State(s): S,
    Path((sub, rg, vault, name, version)): Path<(String, String, String, String, String)>,
    Query(q): Query<HashMap<String, String>>,
    headers: HeaderMap,
) -> Response {
    let mut w = s.world.lock().expect("emulator lock");
    if let Some(r) = arm_gate(&mut w, &headers, &q) {
        return r;
    }
    let in_scope = w.vaults.contains_key(&vault)
        && sub == w.spec.subscription_id
        && rg.eq_ignore_ascii_case(&w.spec.resource_group);
    if !in_scope || !w.keys.contains(&format!("{vault}/{name}/{version}")) {
        return not_found(&format!("Microsoft.KeyVault/vaults/{vault}/keys/{name}/versions/{version}"));
    }
    let uri = format!("https://{vault}.vault.azure.net/keys/{name}");
    Json(json!({
        "id": format!("/subscriptions/{sub}/resourceGroups/{rg}/providers/Microsoft.KeyVault/vaults/{vault}/keys/{name}/versions/{version}"),
        "name": version, "type": "Microsoft.KeyVault/vaults/keys/versions",
        "properties": {
            "attributes": {"enabled": true, "created": 1_700_000_000, "updated": 1_700_000_000, "recoveryLevel": "Recoverable+Purgeable"},
            "kty": "RSA", "keyUri": uri, "keyUriWithVersion": format!("{uri}/{version}")
        }
    }))
    .into_response()
}

async fn get_key(
    State(s): S,
    Path((vault, name, version)): Path<(String, String, String)>,
    headers: HeaderMap,
) -> Response {
    let w = s.world.lock().expect("emulator lock");
    if let Some(r) = unauthorized(&w, &headers, "https://vault.azure.net") {
        return r;
    }
    // A private vault's data plane answers only through its private link; the tests and the
    // operator are outside it (Key Vault's 403 ForbiddenByConnection).
    if w.vaults.get(&vault) == Some(&false) {
        return arm_error(
            StatusCode::FORBIDDEN,
            "Forbidden",
            "Public network access is disabled and request is not from a trusted service nor via an approved private link.",
        );
    }
    if !w.keys.contains(&format!("{vault}/{name}/{version}")) {
        return arm_error(
            StatusCode::NOT_FOUND,
            "KeyNotFound",
            &format!("A key with (name/id) {name}/{version} was not found in this key vault."),
        );
    }
    Json(json!({
        "key": {"kid": format!("https://{vault}.vault.azure.net/keys/{name}/{version}"), "kty": "RSA", "key_ops": ["wrapKey", "unwrapKey"]},
        "attributes": {"enabled": true, "created": 1_700_000_000, "updated": 1_700_000_000, "recoveryLevel": "Recoverable+Purgeable"}
    }))
    .into_response()
}

/// Give Node `node` (created if missing) the AKS label `kubernetes.azure.com/cluster=<group>`.
pub async fn label_node(client: &kube::Client, node: &str, group: &str) -> anyhow::Result<()> {
    use k8s_openapi::api::core::v1::Node;
    use kube::api::{Patch, PatchParams, PostParams};
    let nodes: kube::Api<Node> = kube::Api::all(client.clone());
    if nodes.get_opt(node).await?.is_none() {
        let mut n = Node::default();
        n.metadata.name = Some(node.into());
        nodes.create(&PostParams::default(), &n).await?;
    }
    let patch = json!({"metadata": {"labels": {"kubernetes.azure.com/cluster": group}}});
    nodes.patch(node, &PatchParams::default(), &Patch::Merge(&patch)).await?;
    Ok(())
}
