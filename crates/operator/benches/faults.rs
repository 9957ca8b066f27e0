//! Fault trials (see `cluster_security_testbed::faults`): a fault at a seeded moment of
//! an operation — SIGKILL of the operator, a kube-apiserver restart, an etcd restart — then checks
//! that the operation ends right: one operation record, one rollout, no Secret lost or
//! overwritten.
//!
//! `cargo bench --bench faults -- --trials 20 --seed 1 [--apiserver-restarts 5] [--etcd-restarts 5]
//! [--window-ms 700] [--kms-trials 20] [--kms-refusals 6] [--kms-only]` (or CSO_FAULT_TRIALS / _SEED /
//! _APISERVER_RESTARTS / _ETCD_RESTARTS / _KMS_TRIALS / _KMS_REFUSALS): `--trials` SIGKILLs per workload kind (ClusterSecurityPolicy,
//! CertificateRotation), then the restart trials per kind; then, with `--kms-trials`, the same for
//! KmsKeyVaultMode switches Public↔Private (`--kms-trials` SIGKILLs, then the restarts) on a
//! control plane with KMS encryption and the Azure emulator (`--kms-only`: only those, also with
//! `--kms-trials 0` for the restarts alone). `--kms-refusals` switches run while the cloud refuses
//! (EnableKms for good, or the vault PATCH 1-4 times, chosen by seed): each must end with KMS on
//! and every Secret KMS-encrypted, completed or rolled back. Each trial prints its seed and delay
//! so a failure can be replayed; the run ends with `faults: … kms_left_off=<n> passed=<n> failed=<n>`.

use std::collections::BTreeMap;
use std::path::Path;
use std::time::Instant;

use cluster_security_testbed::faults::{trial_seed, Fault, Kind, KmsTrials, Refusal, Rng, WorkloadTrials};
use cluster_security_testbed::leaks;

/// Faults land uniformly within this long after the apply (`--window-ms`): a policy or rotation
/// takes well under a second here, so most land inside it.
const WORKLOAD_WINDOW_MS: u64 = 700;
/// Secrets in the KMS trials' cluster (each switch rewrites them twice).
const KMS_SECRETS: usize = 300;

fn arg(name: &str, env: &str, default: u64) -> u64 {
    let args: Vec<String> = std::env::args().collect();
    args.iter()
        .position(|a| a == name)
        .and_then(|i| args.get(i + 1))
        .and_then(|v| v.parse().ok())
        .or_else(|| std::env::var(env).ok().and_then(|v| v.parse().ok()))
        .unwrap_or(default)
}

#[derive(Default)]
struct Tally {
    passed: u32,
    failed: u32,
    fault_points: BTreeMap<String, u32>,
    /// Trials that ended with KMS off on the cluster (must be 0).
    kms_left_off: u64,
}

impl Tally {
    /// `what`: the fault and kind; `i`: the trial's number among those.
    fn record(&mut self, what: &str, i: u64, seed: u64, delay_ms: u64, result: Result<String, String>) {
        match result {
            Ok(note) => {
                self.passed += 1;
                *self.fault_points.entry(format!("{what} {note}")).or_default() += 1;
                println!("trial {what} #{i} seed={seed} fault_after_ms={delay_ms}: ok ({note})");
            }
            Err(e) => {
                self.failed += 1;
                println!("trial {what} #{i} seed={seed} fault_after_ms={delay_ms}: FAILED: {e}");
                self.kms_left_off += e.contains("KMS left OFF") as u64;
            }
        }
    }
}

#[tokio::main(flavor = "multi_thread", worker_threads = 4)]
async fn main() -> anyhow::Result<()> {
    let _ = rustls::crypto::ring::default_provider().install_default();
    let trials = arg("--trials", "CSO_FAULT_TRIALS", 20);
    let seed = arg("--seed", "CSO_FAULT_SEED", 1);
    let apiserver_restarts = arg("--apiserver-restarts", "CSO_FAULT_APISERVER_RESTARTS", 0);
    let etcd_restarts = arg("--etcd-restarts", "CSO_FAULT_ETCD_RESTARTS", 0);
    let kms_trials = arg("--kms-trials", "CSO_FAULT_KMS_TRIALS", 0);
    let kms_refusals = arg("--kms-refusals", "CSO_FAULT_KMS_REFUSALS", 0);
    let window_ms = arg("--window-ms", "CSO_FAULT_WINDOW_MS", WORKLOAD_WINDOW_MS).max(1);
    let binary = Path::new(env!("CARGO_BIN_EXE_cluster-security-operator"));
    let mut tally = Tally::default();
    let started = Instant::now();

    let plan = [
        (Fault::KillOperator, trials),
        (Fault::RestartApiserver, apiserver_restarts),
        (Fault::RestartEtcd, etcd_restarts),
    ];
    let kms_only = std::env::args().any(|a| a == "--kms-only");
    if !kms_only && plan.iter().any(|(_, n)| *n > 0) {
        let mut bed = WorkloadTrials::start(binary).await?;
        let mut row = 0;
        for (fault, n) in plan {
            for kind in [Kind::Policy, Kind::Rotation] {
                for i in 0..n {
                    let seed = trial_seed(seed, row, i);
                    let delay_ms = Rng(seed).next_u64() % window_ms;
                    let result = bed.run(fault, kind, i, delay_ms).await;
                    tally.record(&format!("{fault:?} {kind:?}"), i, seed, delay_ms, result);
                }
                row += 1;
            }
        }
        // Every trial's operator log, Events and status: no Secret value in any of it.
        println!("secret scan: {}", leaks::audit(&bed.cp, &[]).await?);
        bed.stop();
    }

    if kms_only || kms_trials > 0 || kms_refusals > 0 {
        let mut bed = KmsTrials::start(binary, KMS_SECRETS).await?;
        // One switch without a fault says how long a switch takes: the kills spread over it.
        let t = Instant::now();
        bed.run(None, 0).await.map_err(|e| anyhow::anyhow!("the unfaulted switch failed: {e}"))?;
        let switch_ms = t.elapsed().as_millis() as u64;
        println!("kms: one switch without a fault took {switch_ms} ms ({KMS_SECRETS} Secrets)");
        let kms_plan = [
            (Fault::KillOperator, kms_trials),
            (Fault::RestartApiserver, apiserver_restarts),
            (Fault::RestartEtcd, etcd_restarts),
        ];
        for (row, (fault, n)) in kms_plan.into_iter().enumerate() {
            for i in 0..n {
                let seed = trial_seed(seed, 100 + row as u64, i);
                let delay_ms = Rng(seed).next_u64() % switch_ms.max(1);
                let result = bed.run(Some(fault), delay_ms).await;
                tally.record(&format!("{fault:?} KmsKeyVaultMode"), i, seed, delay_ms, result);
            }
        }
        // The cloud refusing mid-switch: never a trial that ends with KMS off.
        for i in 0..kms_refusals {
            let seed = trial_seed(seed, 200, i);
            let refusal = match Rng(seed).next_u64() % 3 {
                0 => Refusal::EnableKms,
                1 => Refusal::VaultPatch(1 + (Rng(seed ^ 1).next_u64() % 3) as u32),
                _ => Refusal::VaultPatch(4),
            };
            let result = bed.run_refused(refusal).await;
            tally.record(&format!("{refusal:?} KmsKeyVaultMode"), i, seed, 0, result);
        }
        let marker = bed.emulator.spec.client_secret.clone();
        println!("secret scan: {}", leaks::audit(&bed.cp, &[&marker]).await?);
    }

    println!("where the faults landed:");
    for (point, n) in &tally.fault_points {
        println!("  {n:>3}  {point}");
    }
    println!(
        "faults: trials={trials} apiserver_restarts={apiserver_restarts} etcd_restarts={etcd_restarts} kms_trials={kms_trials} kms_refusals={kms_refusals} kms_left_off={} passed={} failed={} seconds={}",
        tally.kms_left_off,
        tally.passed,
        tally.failed,
        started.elapsed().as_secs()
    );
    anyhow::ensure!(tally.failed == 0, "{} trials failed", tally.failed);
    Ok(())
}
