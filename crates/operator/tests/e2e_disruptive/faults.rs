//! A few seeded fault trials in CI (the full runs, 20 per kind and KMS switches, are
//! `cargo bench --bench faults`; see docs/reliability.md): for ClusterSecurityPolicy and
//! CertificateRotation, SIGKILL of the operator, a kube-apiserver restart and an etcd restart in
//! the middle of the operation. Each must end UPDATE_COMPLETE with one operation record, one
//! rollout, the certificates the status reports and an unrelated Secret untouched
//! (`testbed::faults::WorkloadTrials::run`).

use std::path::Path;

use cluster_security_testbed::faults::{trial_seed, Fault, Kind, Rng, WorkloadTrials};
use cluster_security_testbed::leaks;

/// Seed of this suite's trials; a failure prints the trial's own seed and delay.
const SEED: u64 = 11;
/// Faults land within this long after the apply (the operation takes well under a second).
const WINDOW_MS: u64 = 500;

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn operations_survive_operator_kills_and_control_plane_restarts() {
    let binary = Path::new(env!("CARGO_BIN_EXE_cluster-security-operator"));
    let mut bed = WorkloadTrials::start(binary).await.expect("control plane and operator start");
    let mut failures = Vec::new();
    let plan = [(Fault::KillOperator, 2), (Fault::RestartEtcd, 1), (Fault::RestartApiserver, 1)];
    for (row, (fault, n)) in plan.into_iter().enumerate() {
        for (k, kind) in [Kind::Policy, Kind::Rotation].into_iter().enumerate() {
            for i in 0..n {
                let seed = trial_seed(SEED, (row * 2 + k) as u64, i);
                let delay_ms = Rng(seed).next_u64() % WINDOW_MS;
                match bed.run(fault, kind, i, delay_ms).await {
                    Ok(note) => println!("{fault:?} {kind:?} #{i} seed={seed} after {delay_ms} ms: ok ({note})"),
                    Err(e) => failures.push(format!("{fault:?} {kind:?} #{i} seed={seed} after {delay_ms} ms: {e}")),
                }
            }
        }
    }
    assert!(failures.is_empty(), "trials failed:\n{}", failures.join("\n"));
    // Restarted operators logged into the same file: nothing secret in any of it.
    let report = leaks::assert_none(&bed.cp, &[]).await;
    println!("secret scan: {report}");
    bed.stop();
}
