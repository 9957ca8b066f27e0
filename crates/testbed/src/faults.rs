//! Fault trials against a real control plane, shared by `benches/faults.rs` (many seeded trials,
//! figures) and `tests/e2e_faults.rs` (a few of each in CI).
//!
//! A trial starts an operation, injects one fault at a seeded moment — SIGKILL of the operator,
//! a kube-apiserver restart or an etcd restart — and checks that the operation ends right:
//! UPDATE_COMPLETE, exactly one operation record, one rollout of the change (one pod-template
//! change of the workload; for KmsKeyVaultMode one cluster update per KMS change), and no Secret
//! lost or overwritten. `Err` says what went wrong.

use std::collections::BTreeMap;
use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use k8s_openapi::api::apps::v1::StatefulSet;
use k8s_openapi::api::core::v1::Secret;
use kube::{Api, Client};
use serde_json::json;

use super::azure::{kms_hook, AzureEmulator, Spec};
use super::kms_plugin::{self, KmsPlugin};
use super::kubelet::PlayKubelet;
use super::operator::{self, Operator};
use super::{free_port, ControlPlane, Options};
use crate::pki;
use cluster_security_api::{
    CertificateRotation, ClusterSecurityPolicy, KmsKeyVaultMode, Operated, OperationRecord, OperationState,
};

/// splitmix64: a seeded, dependency-free sequence, enough to place faults reproducibly.
pub struct Rng(pub u64);

impl Rng {
    pub fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }
}

/// The seed of trial `i` of plan row `row` in a run seeded with `seed` (printed, so one trial can
/// be replayed).
pub fn trial_seed(seed: u64, row: u64, i: u64) -> u64 {
    seed.wrapping_mul(1_000_003).wrapping_add(row * 10_000 + i)
}

/// What goes wrong in the middle of the operation.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Fault {
    /// SIGKILL of the operator, then a restart (as the kubelet would).
    KillOperator,
    /// kube-apiserver stopped and started again (etcd keeps running).
    RestartApiserver,
    /// etcd stopped and started again (the apiserver keeps running and reconnects).
    RestartEtcd,
}

/// A refusal by the cloud in the middle of a KmsKeyVaultMode switch ([`KmsTrials::run_refused`]).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Refusal {
    /// The key vault PATCH refused this many times (the operator tries 4 times before it rolls
    /// back: up to 3 is a switch that completes, 4 or more one that rolls back).
    VaultPatch(u32),
    /// Every update turning KMS on with the target's network access refused: the switch must
    /// roll back to the source settings.
    EnableKms,
}

/// Which kind's operation the fault lands in (KmsKeyVaultMode: see [`KmsTrials`]).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Kind {
    Policy,
    Rotation,
}

/// Restart the operator after a fault, retrying as the kubelet would: right after a control
/// plane restart it may exit at start (the API server not answering yet).
fn restart_operator(op: &mut Operator) -> Result<(), String> {
    let mut last = String::new();
    for _ in 0..10 {
        match op.restart() {
            Ok(()) => return Ok(()),
            Err(e) => last = format!("{e:#}"),
        }
        std::thread::sleep(Duration::from_secs(2));
    }
    Err(format!("the operator did not come back: {}", last.lines().next().unwrap_or_default()))
}

/// Inject `fault` now (its blocking parts off the async workers); a killed operator is restarted
/// at once.
fn inject(cp: &ControlPlane, op: &mut Operator, fault: Fault) -> Result<(), String> {
    tokio::task::block_in_place(|| match fault {
        Fault::KillOperator => {
            op.kill();
            restart_operator(op)
        }
        Fault::RestartApiserver => cp.restart_apiserver().map_err(|e| format!("apiserver restart: {e:#}")),
        Fault::RestartEtcd => cp.restart_etcd().map_err(|e| format!("etcd restart: {e:#}")),
    })
}

fn kubectl_apply(cp: &ControlPlane, manifest: &str) -> Result<(), String> {
    let out = cp.kubectl_with_stdin(&["apply", "-f", "-"], Some(manifest));
    if out.status.success() {
        Ok(())
    } else {
        Err(format!("kubectl apply: {}", String::from_utf8_lossy(&out.stderr)))
    }
}

/// A control plane with the play kubelet and the operator (webhook off), for trials on
/// ClusterSecurityPolicy and CertificateRotation.
pub struct WorkloadTrials {
    pub cp: ControlPlane,
    pub client: Client,
    pub op: Operator,
    kubelet: PlayKubelet,
}

impl WorkloadTrials {
    /// Call from a multi-threaded tokio runtime (the control plane starts blocking).
    pub async fn start(binary: &Path) -> anyhow::Result<Self> {
        let cp = tokio::task::block_in_place(|| ControlPlane::start(Options::default()))?;
        let client = cp.client().await?;
        let kubelet = PlayKubelet::start(client.clone(), "play-node").await?;
        let op = tokio::task::block_in_place(|| -> anyhow::Result<Operator> {
            operator::install(&cp, None)?;
            Operator::start(&cp, binary, free_port(), &["--disable-webhook"])
        })?;
        Ok(Self { cp, client, op, kubelet })
    }

    async fn sts(&self, ns: &str) -> Result<StatefulSet, String> {
        Api::<StatefulSet>::namespaced(self.client.clone(), ns).get("kafka").await.map_err(|e| e.to_string())
    }

    async fn sts_ready(&self, ns: &str) -> bool {
        let Ok(s) = self.sts(ns).await else { return false };
        let st = s.status.unwrap_or_default();
        st.ready_replicas == Some(1) && st.current_revision.is_some() && st.current_revision == st.update_revision
    }

    /// Newest operation state, how many operation records there are, and whether none is current.
    async fn operation(&self, kind: Kind, ns: &str) -> (Option<OperationState>, usize, bool) {
        async fn of<K>(api: Api<K>, name: &str) -> (Option<OperationState>, usize, bool)
        where
            K: Operated + kube::Resource + Clone + serde::de::DeserializeOwned + serde::Serialize + std::fmt::Debug,
        {
            let Some(o) = api.get_opt(name).await.ok().flatten() else { return (None, 0, true) };
            let status = serde_json::to_value(&o).map(|v| v["status"].clone()).unwrap_or_default();
            let records = status["operations"].as_array().map_or(0, Vec::len);
            (o.status().and_then(|s| s.newest_operation_state()), records, status["currentOperation"].is_null())
        }
        match kind {
            Kind::Policy => of(Api::<ClusterSecurityPolicy>::namespaced(self.client.clone(), ns), "p").await,
            Kind::Rotation => of(Api::<CertificateRotation>::namespaced(self.client.clone(), ns), "r").await,
        }
    }

    /// One trial: a broker in a namespace of its own, the operation, `fault` after `delay_ms`.
    /// `Ok` says in which state the fault found the operation.
    pub async fn run(&mut self, fault: Fault, kind: Kind, i: u64, delay_ms: u64) -> Result<String, String> {
        let fault_name = match fault {
            Fault::KillOperator => "kill",
            Fault::RestartApiserver => "apiserver",
            Fault::RestartEtcd => "etcd",
        };
        let ns = format!("{fault_name}-{}-{i}", if kind == Kind::Policy { "csp" } else { "certrot" });
        kubectl_apply(
            &self.cp,
            &format!(
                "apiVersion: v1\nkind: Namespace\nmetadata: {{name: {ns}}}\n---\napiVersion: v1\nkind: Secret\nmetadata: {{name: app-data, namespace: {ns}}}\nstringData: {{password: keep-me}}\n---\napiVersion: apps/v1\nkind: StatefulSet\nmetadata: {{name: kafka, namespace: {ns}}}\nspec:\n  serviceName: kafka\n  replicas: 1\n  selector: {{matchLabels: {{app: kafka}}}}\n  template:\n    metadata: {{labels: {{app: kafka}}}}\n    spec:\n      containers: [{{name: kafka, image: apache/kafka:3.9.0}}]\n"
            ),
        )?;
        let deadline = Instant::now() + Duration::from_secs(60);
        while !self.sts_ready(&ns).await {
            if Instant::now() > deadline {
                return Err("broker never ready".into());
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
        let generation = self.sts(&ns).await?.metadata.generation.unwrap_or_default();
        let secrets = Api::<Secret>::namespaced(self.client.clone(), &ns);
        let app_data_rv = secrets.get("app-data").await.map_err(|e| e.to_string())?.metadata.resource_version;
        let manifest = match kind {
            Kind::Policy => format!(
                "apiVersion: clustersecurity.io/v1alpha1\nkind: ClusterSecurityPolicy\nmetadata: {{name: p, namespace: {ns}}}\nspec:\n  clusterRef: {{kind: StatefulSet, name: kafka}}\n  clientAuthentication: {{tls: {{enabled: true}}}}\n  encryptionInTransit: {{clientBroker: TLS, inCluster: true}}\n  rolloutTimeoutSeconds: 120\n"
            ),
            Kind::Rotation => format!(
                "apiVersion: clustersecurity.io/v1alpha1\nkind: CertificateRotation\nmetadata: {{name: r, namespace: {ns}}}\nspec:\n  clusterRef: {{kind: StatefulSet, name: kafka}}\n  external: {{label: e1}}\n  internal: {{label: i1}}\n  rolloutTimeoutSeconds: 120\n"
            ),
        };
        kubectl_apply(&self.cp, &manifest)?;
        tokio::time::sleep(Duration::from_millis(delay_ms)).await;
        let (at_fault, _, _) = self.operation(kind, &ns).await;
        inject(&self.cp, &mut self.op, fault)?;
        if !self.op.is_running() {
            return Err(format!("the operator exited on the {fault:?}:\n{}", self.op.log_text()));
        }
        let deadline = Instant::now() + Duration::from_secs(240);
        let records = loop {
            let (state, records, no_current) = self.operation(kind, &ns).await;
            if state == Some(OperationState::UpdateComplete) && no_current {
                break records;
            }
            if state == Some(OperationState::UpdateFailed) || Instant::now() > deadline {
                return Err(format!("ended {state:?} (fault at {at_fault:?})"));
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        };
        if records != 1 {
            return Err(format!("{records} operation records (fault at {at_fault:?})"));
        }
        let rollouts = self.sts(&ns).await?.metadata.generation.unwrap_or_default() - generation;
        if rollouts != 1 {
            return Err(format!("{rollouts} rollouts (fault at {at_fault:?})"));
        }
        let rv = secrets.get("app-data").await.map_err(|e| e.to_string())?.metadata.resource_version;
        if rv != app_data_rv {
            return Err("an unrelated Secret was rewritten".into());
        }
        if kind == Kind::Rotation {
            let o = Api::<CertificateRotation>::namespaced(self.client.clone(), &ns)
                .get("r")
                .await
                .map_err(|e| e.to_string())?;
            let st = o.status.unwrap_or_default();
            for (which, status) in [("external", st.external), ("internal", st.internal)] {
                let secret = secrets.get(&format!("kafka-{which}-tls")).await.map_err(|e| e.to_string())?;
                let crt = secret.data.unwrap_or_default().get("tls.crt").map(|b| b.0.clone()).unwrap_or_default();
                let presented = pki::pem_fingerprint(&String::from_utf8_lossy(&crt)).map_err(|e| e.to_string())?;
                if status.and_then(|s| s.fingerprint_sha256) != Some(presented) {
                    return Err(format!("the {which} certificate in the Secret is not the one the status reports"));
                }
            }
        }
        Ok(format!("fault at {at_fault:?}"))
    }

    pub fn stop(self) {
        self.kubelet.stop();
    }
}

/// Secrets the KMS trials create (their values are checked after every trial).
pub const KMS_DATA_NS: &str = "kms-data";
pub const VAULT: &str = "kv-orders";

/// A control plane whose Secrets are encrypted by a KMS plugin, the Azure emulator reconfiguring
/// it like AKS (each KMS change restarts kube-apiserver), and the operator: for trials that
/// switch a KmsKeyVaultMode between Public and Private.
pub struct KmsTrials {
    pub cp: Arc<ControlPlane>,
    pub op: Operator,
    pub emulator: AzureEmulator,
    spec: Spec,
    secrets: usize,
    /// Switches so far; the vault starts Public, so an even count means the next is to Private.
    switches: u64,
    /// Switches tried under a cloud refusal ([`Self::run_refused`]).
    refusals: u64,
    /// `spec.reencryption` of the switches (YAML flow map; `{}`: the defaults).
    pub reencryption: String,
    pub plugin: KmsPlugin,
}

impl KmsTrials {
    /// Call from a multi-threaded tokio runtime with at least 3 workers (the plugin, the
    /// emulator and the hook's blocking apiserver restarts share it).
    pub async fn start(binary: &Path, secrets: usize) -> anyhow::Result<Self> {
        let plugin = KmsPlugin::start().await?;
        let vaults = [VAULT];
        let config = plugin.encryption_config(Some(VAULT), &vaults);
        let cp =
            Arc::new(tokio::task::block_in_place(|| ControlPlane::start(Options { encryption_config: Some(config) }))?);
        let mut spec = Spec::new("aks-orders", &vaults, "v1");
        spec.kms = json!({"enabled": true, "keyId": spec.key_id(VAULT, "v1"), "keyVaultNetworkAccess": "Public", "keyVaultResourceId": ""});
        let hook = kms_hook(cp.clone(), plugin.endpoint.clone(), vec![VAULT.to_string()]);
        let emulator = AzureEmulator::start(spec.clone(), Some(hook)).await?;
        emulator.set_lro(1, Duration::from_millis(200));
        let client = cp.client().await?;
        super::create_numbered_secrets(&client, KMS_DATA_NS, "s", secrets).await?;
        // A node of the managed cluster, as AKS labels it: the operator checks that the
        // KmsKeyVaultMode names its own cluster before it switches anything.
        spec.label_node(&client, "aks-node").await?;
        let op = tokio::task::block_in_place(|| -> anyhow::Result<Operator> {
            operator::install(&cp, None)?;
            let mut args = emulator.operator_args(&cp)?;
            args.push("--disable-webhook".into());
            Operator::start(&cp, binary, free_port(), &args)
        })?;
        let reencryption = "{concurrency: 8, pageSize: 100}".to_string();
        Ok(Self { cp, op, emulator, spec, secrets, switches: 0, refusals: 0, reencryption, plugin })
    }

    /// The KmsKeyVaultMode `cluster` asking for `mode` (Public or Private).
    pub fn manifest(&self, mode: &str) -> String {
        format!(
            "apiVersion: clustersecurity.io/v1alpha1\nkind: KmsKeyVaultMode\nmetadata: {{name: cluster}}\nspec:\n  networkAccess: {mode}\n  keyId: {}\n  keyVaultResourceId: {}\n  provider:\n    azure: {{subscriptionId: {}, resourceGroup: {}, clusterName: {}}}\n  reencryption: {}\n",
            self.spec.key_id(VAULT, "v1"),
            self.spec.vault_resource_id(VAULT),
            self.spec.subscription_id,
            self.spec.resource_group,
            self.spec.cluster_name,
            self.reencryption
        )
    }

    async fn object(&self) -> Result<KmsKeyVaultMode, String> {
        let client = self.cp.client().await.map_err(|e| e.to_string())?;
        Api::<KmsKeyVaultMode>::all(client).get("cluster").await.map_err(|e| e.to_string())
    }

    /// One switch to the other mode with `fault` (None: none, to measure how long a switch takes)
    /// `delay_ms` after the apply. `Ok` says where the fault found the operation.
    pub async fn run(&mut self, fault: Option<Fault>, delay_ms: u64) -> Result<String, String> {
        let mode = if self.switches % 2 == 0 { "Private" } else { "Public" };
        self.switches += 1;
        let log_before = self.emulator.log().len();
        kubectl_apply(&self.cp, &self.manifest(mode))?;
        tokio::time::sleep(Duration::from_millis(delay_ms)).await;
        // Where the fault lands, as the operator recorded it. The API server is often down (the
        // emulator restarts it for each KMS change): a killed operator writes nothing more, so
        // its last record is read after the kill, however long the API server takes to return.
        let before = self.where_is_the_operation(Duration::from_secs(1)).await;
        let at_fault = match fault {
            None => before,
            Some(Fault::KillOperator) => {
                self.op.kill();
                let at = self.where_is_the_operation(Duration::from_secs(120)).await.or(before);
                tokio::task::block_in_place(|| restart_operator(&mut self.op))?;
                at
            }
            Some(restart) => {
                inject(&self.cp, &mut self.op, restart)?;
                before
            }
        };
        let at_fault = at_fault.unwrap_or((None, "the API server not answering".into()));
        let (o, s) =
            self.wait_end(Duration::from_secs(300)).await.map_err(|e| format!("{e} (fault at {at_fault:?})"))?;
        let done = &s.operations[0];
        if done.operation_state != OperationState::UpdateComplete {
            return Err(format!("ended {:?}: {:?} (fault at {at_fault:?})", done.operation_state, done.error_info));
        }
        if let Some(id) = &at_fault.0 {
            if &done.operation_id != id {
                return Err(format!("the operation at the fault was {id}, the one that ended {}", done.operation_id));
            }
        }
        let records = s.operations.iter().filter(|x| x.generation == o.metadata.generation).count();
        if records != 1 {
            return Err(format!("{records} operation records for one change (fault at {at_fault:?})"));
        }
        // One cluster update per KMS change: a repeated PUT would restart the API server again.
        let log = self.emulator.log()[log_before..].to_vec();
        let puts = |what: &str| log.iter().filter(|l| l.starts_with(what)).count();
        let (off, on) = (puts("PUT kms enabled=false"), puts("PUT kms enabled=true"));
        if (off, on) != (1, 1) {
            return Err(format!("cluster updates {log:?} (fault at {at_fault:?})"));
        }
        let want_public = mode == "Public";
        if self.emulator.vault_public(VAULT) != Some(want_public)
            || self.emulator.kms()["keyVaultNetworkAccess"] != mode
        {
            return Err(format!("the vault or cluster is not {mode}: {}", self.emulator.kms()));
        }
        self.check_secrets().await?;
        Ok(format!("fault at {}", at_fault.1))
    }

    /// One switch to the other mode while the cloud refuses as `refusal` says. Whatever the
    /// refusal, the switch ends with KMS on and every Secret KMS-encrypted in etcd: completed
    /// (a refusal the retries outlast) or rolled back to the source mode (UPDATE_FAILED
    /// `RolledBack`, the vault as before). `Ok` says which.
    pub async fn run_refused(&mut self, refusal: Refusal) -> Result<String, String> {
        let (source, target) = if self.switches % 2 == 0 { ("Public", "Private") } else { ("Private", "Public") };
        // A new generation each time: a failed switch is not retried for an unchanged spec.
        self.reencryption = format!("{{concurrency: 8, pageSize: {}}}", 100 + self.switches + self.refusals);
        self.refusals += 1;
        let rolls_back = match refusal {
            Refusal::VaultPatch(n) => {
                self.emulator.refuse_vault_patches(n);
                n >= 4
            }
            Refusal::EnableKms => {
                self.emulator.refuse_enable(target, "InjectedRefusal");
                true
            }
        };
        let applied = kubectl_apply(&self.cp, &self.manifest(target));
        let ended = match applied {
            Ok(()) => self.wait_end(Duration::from_secs(400)).await,
            Err(e) => Err(e),
        };
        self.emulator.clear_refusals();
        let (_, s) = ended?;
        let done = &s.operations[0];
        let kms = self.emulator.kms();
        if kms["enabled"] != true {
            return Err(format!("KMS left OFF after {refusal:?}: {kms}"));
        }
        self.check_secrets().await?;
        let (want_state, want_mode) = if rolls_back {
            (OperationState::UpdateFailed, source)
        } else {
            self.switches += 1;
            (OperationState::UpdateComplete, target)
        };
        if done.operation_state != want_state || kms["keyVaultNetworkAccess"] != want_mode {
            return Err(format!(
                "after {refusal:?}: ended {:?} ({:?}) with the cluster {kms}; expected {want_state:?} in {want_mode}",
                done.operation_state, done.error_info
            ));
        }
        if self.emulator.vault_public(VAULT) != Some(want_mode == "Public") {
            return Err(format!("after {refusal:?} the vault's access does not match {want_mode}"));
        }
        Ok(if rolls_back { format!("rolled back to {source}") } else { format!("completed to {target}") })
    }

    /// The object once the operation for its generation has ended.
    async fn wait_end(
        &self,
        patience: Duration,
    ) -> Result<(KmsKeyVaultMode, cluster_security_api::KmsKeyVaultModeStatus), String> {
        let deadline = Instant::now() + patience;
        loop {
            if let Ok(o) = self.object().await {
                let s = o.status.clone().unwrap_or_default();
                let done = s
                    .operations
                    .first()
                    .is_some_and(|x| x.generation == o.metadata.generation && x.operation_state.is_terminal())
                    && s.current_operation.is_none();
                if done {
                    return Ok((o, s));
                }
            }
            if Instant::now() > deadline {
                return Err(format!("no end within {} s", patience.as_secs()));
            }
            tokio::time::sleep(Duration::from_millis(250)).await;
        }
    }

    /// The running operation's id and where it is ("step 4/5 EnableKms", "between steps 2 and 3",
    /// "no operation running"), read within `patience` (None: the API server did not answer).
    async fn where_is_the_operation(&self, patience: Duration) -> Option<(Option<String>, String)> {
        let deadline = Instant::now() + patience;
        loop {
            if let Ok(Ok(o)) = tokio::time::timeout(Duration::from_secs(2), self.object()).await {
                let s = o.status.unwrap_or_default();
                let total = s.steps.len();
                let running = s.steps.iter().position(|x| x.state == cluster_security_api::StepState::InProgress);
                let done = s.steps.iter().filter(|x| x.state == cluster_security_api::StepState::Succeeded).count();
                let place = match (&s.current_operation, running) {
                    (None, _) => "no operation running".to_string(),
                    (Some(_), Some(i)) => format!("step {}/{total} {:?}", i + 1, s.steps[i].name),
                    (Some(_), None) if done == 0 => "operation recorded, no step started".to_string(),
                    (Some(_), None) => format!("between steps {done} and {}", done + 1),
                };
                return Some((s.current_operation.map(|c| c.operation_id), place));
            }
            if Instant::now() >= deadline {
                return None;
            }
            tokio::time::sleep(Duration::from_millis(250)).await;
        }
    }

    /// Every Secret the trials created still holds its value, and etcd holds every Secret
    /// encrypted with the vault's key (the last rewrite reached them all).
    async fn check_secrets(&self) -> Result<(), String> {
        let client = self.cp.client().await.map_err(|e| e.to_string())?;
        let list = Api::<Secret>::namespaced(client, KMS_DATA_NS)
            .list(&Default::default())
            .await
            .map_err(|e| e.to_string())?;
        let values: BTreeMap<String, Vec<u8>> =
            list.items.into_iter().filter_map(|s| Some((s.metadata.name?, s.data?.get("v")?.0.clone()))).collect();
        if values.len() != self.secrets {
            return Err(format!("{} of {} Secrets left", values.len(), self.secrets));
        }
        for i in 0..self.secrets {
            let name = super::numbered_name("s", i);
            if values.get(&name).map(Vec::as_slice) != Some(super::numbered_value(i).as_bytes()) {
                return Err(format!("Secret {KMS_DATA_NS}/{name} no longer holds its value"));
            }
        }
        let stored = self.cp.etcd_get_prefix("/registry/secrets/").map_err(|e| e.to_string())?;
        let plain = stored.iter().filter(|(_, v)| !kms_plugin::stored_with_kms(v, VAULT)).count();
        if plain > 0 {
            return Err(format!("{plain} of {} Secrets in etcd not encrypted with the vault's key", stored.len()));
        }
        Ok(())
    }
}
