//! Re-encryption of every Secret after an encryption-key change, four ways side by side on one
//! control plane and the same Secrets (the key changes before each, so each rewrites them all):
//!
//! - kubectl:  the AKS seed's `kubectl get secrets --all-namespaces -o json | kubectl replace -f -`;
//! - ceiling:  a plain names-only list then a no-op PATCH per Secret, written here without our
//!   engine, at 8, 16, 32 and 64 connections; the best of the four is the ceiling;
//! - product:  what users run — a KmsKeyVaultMode switch (Public → Private) through the running
//!   operator with default settings; its ReencryptSecrets steps timed from the operator's own
//!   status (polled every 50 ms), each from the end of the step before it (so the count of the
//!   Secrets that opens the step is in the time);
//! - engine:   `reencrypt::run` alone with default settings.
//!
//! Every method authenticates as a ServiceAccount with a bearer token, as in a cluster: the product
//! as the operator's (exactly the chart's RBAC), the others as one bound to cluster-admin.
//!
//! Secrets are encrypted by a KMS v1 plugin (the AKS case: every data key not in the API
//! server's cache is a plugin call); `--aescbc` encrypts them with aescbc keys instead (no
//! product then: a KmsKeyVaultMode switch is the KMS case). Every Secret in etcd is checked
//! after each method.
//!
//! `cargo bench --bench reencrypt -- --secrets N` (or CSO_BENCH_SECRETS; default 5000).
//! `--skip-kubectl` leaves the slowest method out (for large N); `--product-only` runs only the
//! product (and the resume trial), for scale runs. `--resume-trial` switches back
//! (Private → Public) killing the operator when the first ReencryptSecrets step is half done, then
//! once more without a kill, and prints what the kill cost: read from the status (how long until
//! the restarted operator is past the point of the kill, how many Secrets it handles twice), and
//! the whole step next to the mean of the same step without a kill before and after it (etcd
//! compacted before each switch). Last line:
//! `reencrypt: engine=<product Secrets/s> kubectl=<…> ceiling=<…> ratio=<product/kubectl>
//! ceiling_ratio=<product/ceiling> engine_rss_mib=<…> kubectl_rss_mib=<…> verified=<true|false>`.

use std::path::Path;
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use cluster_security_api::{KmsKeyVaultMode, StepName, StepState};
use cluster_security_operator::reencrypt::{self, Settings};
use cluster_security_testbed::faults::{KmsTrials, VAULT};
use cluster_security_testbed::kms_plugin;
use cluster_security_testbed::spawn::children_max_rss_mib;
use cluster_security_testbed::{client_from, create_numbered_secrets, ControlPlane, Options};
use futures::StreamExt;
use k8s_openapi::api::core::v1::Secret;
use kube::api::{ListParams, Patch, PatchParams};
use kube::{Api, Client, ResourceExt};

/// Peak RSS (MiB) of a process, from /proc (VmHWM).
fn peak_rss_mib(pid: &str) -> f64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .unwrap_or_default()
        .lines()
        .find_map(|l| l.strip_prefix("VmHWM:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<f64>().ok())
        .map(|kb| kb / 1024.0)
        .unwrap_or(0.0)
}

/// How Secrets are encrypted at rest in this run.
enum Encryption {
    /// The KMS v1 plugin at this endpoint; a key is a vault.
    Kms(String),
    /// aescbc; a key is a key name.
    Aescbc,
}

impl Encryption {
    /// The EncryptionConfiguration writing with `key` and able to read every key in `all`.
    fn config(&self, key: &str, all: &[&str]) -> String {
        match self {
            Self::Kms(endpoint) => kms_plugin::encryption_config(endpoint, Some(key), all),
            Self::Aescbc => {
                use base64::Engine as _;
                let secret = |k: &str| {
                    let digest = ring::digest::digest(&ring::digest::SHA256, k.as_bytes());
                    base64::engine::general_purpose::STANDARD.encode(digest.as_ref())
                };
                let keys: String = std::iter::once(key)
                    .chain(all.iter().copied().filter(|k| *k != key))
                    .map(|k| format!("      - {{name: {k}, secret: {}}}\n", secret(k)))
                    .collect();
                format!("apiVersion: apiserver.config.k8s.io/v1\nkind: EncryptionConfiguration\nresources:\n- resources: [secrets]\n  providers:\n  - aescbc:\n      keys:\n{keys}  - identity: {{}}\n")
            }
        }
    }

    fn stored_under(&self, value: &[u8], key: &str) -> bool {
        match self {
            Self::Kms(_) => kms_plugin::stored_with_kms(value, key),
            Self::Aescbc => value.starts_with(format!("k8s:enc:aescbc:v1:{key}:").as_bytes()),
        }
    }

    /// Make `key` the one new writes use (the others stay readable), as a key change does.
    fn switch_key(&self, cp: &ControlPlane, key: &str, all: &[&str]) {
        cp.set_encryption_config(&self.config(key, all)).expect("encryption config written");
        cp.restart_apiserver().expect("kube-apiserver restarts");
    }

    /// (Secrets in etcd, how many are stored under `key`): every one, not a sample.
    fn stored(&self, cp: &ControlPlane, key: &str) -> (usize, usize) {
        let all = cp.etcd_get_prefix("/registry/secrets/").expect("etcd answers");
        let under = all.iter().filter(|(_, v)| self.stored_under(v, key)).count();
        (all.len(), under)
    }
}

/// The plain loop of the ceiling: list every name, then a no-op PATCH each, `connections` at once.
async fn plain_loop(client: &Client, connections: usize) -> usize {
    let api: Api<Secret> = Api::all(client.clone());
    let mut names = Vec::new();
    let mut token: Option<String> = None;
    loop {
        let mut lp = ListParams::default().limit(500);
        if let Some(t) = &token {
            lp = lp.continue_token(t);
        }
        let page = api.list_metadata(&lp).await.expect("list");
        names.extend(page.items.into_iter().map(|m| (m.namespace().unwrap_or_default(), m.name_any())));
        token = page.metadata.continue_.filter(|c| !c.is_empty());
        if token.is_none() {
            break;
        }
    }
    let n = names.len();
    futures::stream::iter(names)
        .map(|(ns, name)| {
            let api: Api<Secret> = Api::namespaced(client.clone(), &ns);
            async move { api.patch_metadata(&name, &PatchParams::default(), &Patch::Merge(serde_json::json!({}))).await }
        })
        .buffer_unordered(connections)
        .for_each(|r| {
            r.expect("no-op patch");
            futures::future::ready(())
        })
        .await;
    n
}

/// A kubeconfig acting as the ServiceAccount `default/reencrypt-bench`, bound to cluster-admin.
fn bench_kubeconfig(cp: &ControlPlane) -> anyhow::Result<std::path::PathBuf> {
    let account = "apiVersion: v1\nkind: ServiceAccount\nmetadata: {name: reencrypt-bench, namespace: default}\n---\napiVersion: rbac.authorization.k8s.io/v1\nkind: ClusterRoleBinding\nmetadata: {name: reencrypt-bench}\nroleRef: {apiGroup: rbac.authorization.k8s.io, kind: ClusterRole, name: cluster-admin}\nsubjects: [{kind: ServiceAccount, name: reencrypt-bench, namespace: default}]\n";
    let out = cp.kubectl_with_stdin(&["apply", "-f", "-"], Some(account));
    anyhow::ensure!(out.status.success(), "bench ServiceAccount: {}", String::from_utf8_lossy(&out.stderr));
    cp.service_account_kubeconfig("default", "reencrypt-bench", "bench-kubeconfig")
}

/// One ReencryptSecrets step as the bench saw it.
#[derive(Debug, Clone, Copy)]
struct StepRun {
    secs: f64,
    handled: u64,
    /// Found already stored under the current key: in a step that rewrites every Secret, those
    /// handled twice (after a kill).
    again: u64,
}

/// Apply `mode` and follow the switch to its end, timing each ReencryptSecrets step from the
/// status. With `kill_at_half`, the operator is SIGKILLed (and started again) when the first
/// ReencryptSecrets step has handled half of the Secrets.
async fn switch(trials: &mut KmsTrials, mode: &str, kill_at_half: bool) -> Vec<StepRun> {
    let out = trials.cp.kubectl_with_stdin(&["apply", "-f", "-"], Some(&trials.manifest(mode)));
    assert!(out.status.success(), "apply: {}", String::from_utf8_lossy(&out.stderr));
    let mut started: Vec<Option<Instant>> = Vec::new();
    let mut runs: Vec<Option<StepRun>> = Vec::new();
    let mut killed = !kill_at_half;
    // What the kill cost, read from the status: when it happened and how far the step had got.
    let mut kill_point: Option<(Instant, u64)> = None;
    let deadline = Instant::now() + Duration::from_secs(3600);
    let objects = Api::<KmsKeyVaultMode>::all(trials.cp.client().await.expect("a client for the control plane"));
    loop {
        assert!(Instant::now() < deadline, "the switch did not end within an hour");
        // One client for the whole switch (it reconnects across the API server's restarts): a new
        // one per poll would spend the CPU the measured step runs on.
        let got = tokio::time::timeout(Duration::from_secs(2), objects.get("cluster")).await;
        let Ok(Ok(o)) = got else {
            tokio::time::sleep(Duration::from_millis(50)).await;
            continue;
        };
        let s = o.status.clone().unwrap_or_default();
        let now = Instant::now();
        // Until this change's operation is recorded, the steps shown are the previous one's.
        let newest = s.current_operation.as_ref().or(s.operations.first()).map(|op| op.generation);
        if newest != Some(o.metadata.generation) {
            tokio::time::sleep(Duration::from_millis(50)).await;
            continue;
        }
        started.resize(s.steps.len(), None);
        runs.resize(s.steps.len(), None);
        if let (Some((at, handled)), Some(r)) = (kill_point, s.reencryption.as_ref()) {
            // The restarted operator is past the point of the kill: its cost in time, and the
            // Secrets it handled again (in a step that rewrites every Secret, those it finds
            // already rewritten: done before the kill, after the last saved resume point).
            if r.rewritten + r.unchanged > handled {
                println!(
                    "resume trial: the restarted operator was past the kill point {:.1}s after the SIGKILL; Secrets handled again so far: {}",
                    at.elapsed().as_secs_f64(),
                    r.unchanged
                );
                kill_point = None;
            }
        }
        for (i, step) in s.steps.iter().enumerate().filter(|(_, x)| x.name == StepName::ReencryptSecrets) {
            // The step starts when the one before it ends: its count of the Secrets comes
            // before it shows InProgress, and users wait for that too.
            let previous_done = i > 0 && s.steps[i - 1].state == StepState::Succeeded;
            if (previous_done || step.state != StepState::Pending) && started[i].is_none() {
                started[i] = Some(now);
            }
            if step.state == StepState::Succeeded && runs[i].is_none() {
                let r = s.reencryption.clone().unwrap_or_default();
                let handled = r.rewritten + r.unchanged + r.failed + r.deleted;
                let secs = (now - started[i].unwrap_or(now)).as_secs_f64();
                runs[i] = Some(StepRun { secs, handled, again: r.unchanged });
            }
            if !killed && step.state == StepState::InProgress {
                let r = s.reencryption.clone().unwrap_or_default();
                if r.total > 0 && (r.rewritten + r.unchanged) * 2 >= r.total {
                    kill_point = Some((Instant::now(), r.rewritten + r.unchanged));
                    trials.op.kill();
                    trials.op.restart().expect("operator starts again");
                    killed = true;
                    println!(
                        "resume trial: operator SIGKILLed at {}/{} of step {}",
                        r.rewritten + r.unchanged,
                        r.total,
                        i + 1
                    );
                }
            }
        }
        let ended = s.current_operation.is_none()
            && s.operations
                .first()
                .is_some_and(|op| op.generation == o.metadata.generation && op.operation_state.is_terminal());
        if ended {
            let op = &s.operations[0];
            assert!(op.operation_state == cluster_security_api::OperationState::UpdateComplete, "{:?}", op.error_info);
            return runs.into_iter().flatten().collect();
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::main(flavor = "multi_thread", worker_threads = 4)]
async fn main() -> anyhow::Result<()> {
    let _ = rustls::crypto::ring::default_provider().install_default();
    let args: Vec<String> = std::env::args().collect();
    let flag = |f: &str| args.iter().any(|a| a == f);
    let from_args =
        args.iter().position(|a| a == "--secrets").and_then(|i| args.get(i + 1)).and_then(|v| v.parse().ok());
    let n: usize =
        from_args.or_else(|| std::env::var("CSO_BENCH_SECRETS").ok().and_then(|v| v.parse().ok())).unwrap_or(5000);
    let binary = Path::new(env!("CARGO_BIN_EXE_cluster-security-operator"));
    let t = Instant::now();
    let (cp, enc, first_key, mut trials) = if flag("--aescbc") {
        let enc = Encryption::Aescbc;
        let cp = Arc::new(ControlPlane::start(Options { encryption_config: Some(enc.config("k0", &["k0"])) })?);
        create_numbered_secrets(&cp.client().await?, "bench", "s", n).await?;
        println!("setup: {n} Secrets of ~1.8 KiB under aescbc in {:.1}s", t.elapsed().as_secs_f64());
        (cp, enc, "k0".to_string(), None)
    } else {
        // Control plane encrypting Secrets with the KMS plugin, the Azure emulator, the operator.
        let mut trials = KmsTrials::start(binary, n).await?;
        trials.reencryption = "{}".into(); // the defaults: what users run
        println!("setup: {n} Secrets of ~1.8 KiB under KMS (vault {VAULT}) in {:.1}s", t.elapsed().as_secs_f64());
        (trials.cp.clone(), Encryption::Kms(trials.plugin.endpoint.clone()), VAULT.to_string(), Some(trials))
    };

    // (c) The product: a switch through the operator, defaults.
    let (mut product_rate, mut operator_rss, mut verified) = (f64::NAN, f64::NAN, true);
    if let Some(trials) = trials.as_mut() {
        if flag("--resume-trial") {
            cp.compact_etcd()?;
        }
        let runs = switch(trials, "Private", false).await;
        anyhow::ensure!(runs.len() == 2, "a switch has two ReencryptSecrets steps, saw {runs:?}");
        let product: Vec<f64> = runs.iter().map(|r| r.handled as f64 / r.secs).collect();
        product_rate = product.iter().sum::<f64>() / product.len() as f64;
        operator_rss = peak_rss_mib(&trials.op.pid().to_string());
        let (total, under) = enc.stored(&cp, VAULT);
        verified &= under == total;
        println!(
            "product (KmsKeyVaultMode switch, default settings): ReencryptSecrets {:.0} and {:.0} Secrets/s ({} Secrets in {:.1}s and {:.1}s), operator peak RSS {operator_rss:.0} MiB, etcd {under}/{total} under the vault's key",
            product[0], product[1], runs[0].handled, runs[0].secs, runs[1].secs
        );
        if flag("--resume-trial") {
            // The killed step against clean ones before and after it, each switch on a compacted
            // store: rewrites pile up revisions, which alone slow every later step.
            cp.compact_etcd()?;
            let resumed = switch(trials, "Public", true).await;
            cp.compact_etcd()?;
            let after = switch(trials, "Private", false).await;
            let clean = (runs[0].secs + after[0].secs) / 2.0;
            println!(
                "resume trial: first ReencryptSecrets step {:.1}s with a SIGKILL at half ({} of {} Secrets handled twice), {clean:.1}s without (mean of {:.1}s before and {:.1}s after): {:+.1}% time; operator peak RSS {:.0} MiB",
                resumed[0].secs,
                resumed[0].again,
                resumed[0].handled,
                runs[0].secs,
                after[0].secs,
                (resumed[0].secs / clean - 1.0) * 100.0,
                peak_rss_mib(&trials.op.pid().to_string())
            );
            let (total, under) = enc.stored(&cp, VAULT);
            verified &= under == total;
        }
        for line in trials.op.log_text().lines().filter(|l| l.contains("re-encryption pass finished")) {
            println!("operator: {line}");
        }
        trials.op.stop(); // the other methods run without the operator
        if flag("--product-only") {
            println!("reencrypt: engine={product_rate:.0} engine_rss_mib={operator_rss:.0} verified={verified}");
            anyhow::ensure!(verified, "Secrets left behind (etcd)");
            return Ok(());
        }
    } else {
        println!("product: not measured with --aescbc (a KmsKeyVaultMode switch is the KMS case)");
    }

    // The other methods authenticate as the product does, with a ServiceAccount token (here one
    // bound to cluster-admin: kubectl replace needs `update`), not the admin's client certificate,
    // which kube-apiserver v1.20 verifies on every request (a tenth of its CPU in this loop).
    let kubeconfig = bench_kubeconfig(&cp)?;

    // Every other method gets a key of its own, so each rewrites every Secret.
    let mut keys: Vec<String> = vec![first_key];
    let mut next_key = |cp: &ControlPlane| {
        let k = format!("k{}", keys.len());
        keys.push(k.clone());
        let all: Vec<&str> = keys.iter().map(String::as_str).collect();
        enc.switch_key(cp, &k, &all);
        k
    };

    // (a) The seed's kubectl pipeline.
    let mut kubectl_rate = f64::NAN;
    let mut kubectl_rss = f64::NAN;
    if !flag("--skip-kubectl") {
        let vault = next_key(&cp);
        let t = Instant::now();
        let get = Command::new("kubectl")
            .env("KUBECONFIG", &kubeconfig)
            .args(["get", "secrets", "--all-namespaces", "-o", "json"])
            .stdout(Stdio::piped())
            .spawn()?;
        let replace = Command::new("kubectl")
            .env("KUBECONFIG", &kubeconfig)
            .args(["replace", "-f", "-"])
            .stdin(get.stdout.expect("piped"))
            .stdout(Stdio::null())
            .status()?;
        let secs = t.elapsed().as_secs_f64();
        anyhow::ensure!(replace.success(), "kubectl replace failed");
        kubectl_rss = children_max_rss_mib();
        let (total, under) = enc.stored(&cp, &vault);
        verified &= under == total;
        kubectl_rate = total as f64 / secs;
        println!("kubectl get|replace: {secs:.1}s, {kubectl_rate:.0} Secrets/s, client peak RSS {kubectl_rss:.0} MiB, etcd {under}/{total}");
    }

    // (b) The ceiling: a plain loop at 8, 16, 32 and 64 connections; the best.
    let mut ceiling = 0f64;
    for connections in [8, 16, 32, 64] {
        let vault = next_key(&cp);
        let client = client_from(&kubeconfig).await?;
        let t = Instant::now();
        let count = plain_loop(&client, connections).await;
        let rate = count as f64 / t.elapsed().as_secs_f64();
        let (total, under) = enc.stored(&cp, &vault);
        verified &= under == total;
        ceiling = ceiling.max(rate);
        println!("ceiling, plain list + no-op PATCH at {connections:2}: {rate:.0} Secrets/s, etcd {under}/{total}");
    }

    // (d) The engine alone, default settings.
    let vault = next_key(&cp);
    let client = client_from(&kubeconfig).await?;
    let t = Instant::now();
    let p = reencrypt::run(&client, Settings::default(), Default::default(), |_| {}).await?;
    let engine_alone = p.total as f64 / t.elapsed().as_secs_f64();
    let (total, under) = enc.stored(&cp, &vault);
    verified &= under == total && p.failed == 0;
    println!("engine alone (default settings): {engine_alone:.0} Secrets/s, etcd {under}/{total}; {p:?}");

    println!(
        "reencrypt: engine={product_rate:.0} kubectl={kubectl_rate:.0} ceiling={ceiling:.0} ratio={:.1} ceiling_ratio={:.2} engine_rss_mib={operator_rss:.0} kubectl_rss_mib={kubectl_rss:.0} verified={verified}",
        product_rate / kubectl_rate,
        product_rate / ceiling
    );
    anyhow::ensure!(verified, "a method left Secrets behind (etcd)");
    Ok(())
}
