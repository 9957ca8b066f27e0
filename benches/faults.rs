//! Fault trials: SIGKILL of the operator at a random moment of each kind's operation, then a
//! restart, and checks that the operation ends right — exactly one operation record, one rollout
//! (one pod-template change of the workload), the certificate in the Secret being the one the
//! status reports (no second issuance over it), and an unrelated Secret untouched.
//!
//! `cargo bench --bench faults -- --trials 20 --seed 1 [--apiserver-restarts 5]` (or
//! CSO_FAULT_TRIALS / CSO_FAULT_SEED / CSO_FAULT_APISERVER_RESTARTS): SIGKILL trials per kind,
//! then trials that restart kube-apiserver at the random point instead. Each trial prints its
//! seed and delay so a failure can be replayed; the run ends with
//! `faults: trials=<n per kind> kinds=2 apiserver_restarts=<n per kind> passed=<n> failed=<n>`. (The KmsKeyVaultMode
//! kill-and-resume trial is tests/e2e_kms.rs, which needs the KMS control plane and the Azure
//! emulator.)

use std::path::Path;
use std::time::{Duration, Instant};

use cluster_security_operator::api::{CertificateRotation, ClusterSecurityPolicy, OperationState};
use cluster_security_operator::certs::inspect;
use cluster_security_operator::controller::Reconciled;
use cluster_security_operator::testbed::kubelet::PlayKubelet;
use cluster_security_operator::testbed::operator::{self, Operator};
use cluster_security_operator::testbed::{free_port, ControlPlane, Options};
use k8s_openapi::api::apps::v1::StatefulSet;
use k8s_openapi::api::core::v1::Secret;
use kube::{Api, Client};

/// splitmix64: a seeded, dependency-free sequence, enough to place kills.
struct Rng(u64);
impl Rng {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }
}

/// Kills land uniformly within this long after the apply.
const KILL_WINDOW_MS: u64 = 700;

fn arg(name: &str, env: &str, default: u64) -> u64 {
    let args: Vec<String> = std::env::args().collect();
    args.iter()
        .position(|a| a == name)
        .and_then(|i| args.get(i + 1))
        .and_then(|v| v.parse().ok())
        .or_else(|| std::env::var(env).ok().and_then(|v| v.parse().ok()))
        .unwrap_or(default)
}

fn kubectl_apply(cp: &ControlPlane, manifest: &str) {
    let out = cp.kubectl_with_stdin(&["apply", "-f", "-"], Some(manifest));
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
}

async fn sts_generation(client: &Client, ns: &str) -> i64 {
    Api::<StatefulSet>::namespaced(client.clone(), ns).get("kafka").await.unwrap().metadata.generation.unwrap()
}

async fn sts_ready(client: &Client, ns: &str) -> bool {
    let s = Api::<StatefulSet>::namespaced(client.clone(), ns).get("kafka").await.unwrap();
    let st = s.status.unwrap_or_default();
    st.ready_replicas == Some(1) && st.current_revision.is_some() && st.current_revision == st.update_revision
}

/// What goes wrong in the middle of the operation.
#[derive(Clone, Copy, Debug)]
enum Fault {
    /// SIGKILL of the operator, then a restart.
    KillOperator,
    /// kube-apiserver stopped and started again (etcd keeps running).
    RestartApiserver,
}

#[derive(Clone, Copy, Debug)]
enum Kind {
    Policy,
    Rotation,
}

/// Newest operation state, how many operation records there are, and whether none is current.
async fn operation(client: &Client, kind: Kind, ns: &str) -> (Option<OperationState>, usize, bool) {
    async fn of<K: Reconciled>(api: Api<K>, name: &str) -> (Option<OperationState>, usize, bool) {
        let Some(o) = api.get_opt(name).await.ok().flatten() else { return (None, 0, true) };
        let status = serde_json::to_value(&o).map(|v| v["status"].clone()).unwrap_or_default();
        let records = status["operations"].as_array().map_or(0, Vec::len);
        (o.newest_operation_state(), records, status["currentOperation"].is_null())
    }
    match kind {
        Kind::Policy => of(Api::<ClusterSecurityPolicy>::namespaced(client.clone(), ns), "p").await,
        Kind::Rotation => of(Api::<CertificateRotation>::namespaced(client.clone(), ns), "r").await,
    }
}

/// One trial; Err says what went wrong.
async fn trial(
    cp: &ControlPlane,
    client: &Client,
    op: &mut Operator,
    (fault, kind): (Fault, Kind),
    i: u64,
    delay_ms: u64,
) -> Result<String, String> {
    let ns = format!(
        "{}-{}-{i}",
        if matches!(fault, Fault::KillOperator) { "kill" } else { "apiserver" },
        if matches!(kind, Kind::Policy) { "csp" } else { "certrot" }
    );
    kubectl_apply(
        cp,
        &format!(
            "apiVersion: v1\nkind: Namespace\nmetadata: {{name: {ns}}}\n---\napiVersion: v1\nkind: Secret\nmetadata: {{name: app-data, namespace: {ns}}}\nstringData: {{password: keep-me}}\n---\napiVersion: apps/v1\nkind: StatefulSet\nmetadata: {{name: kafka, namespace: {ns}}}\nspec:\n  serviceName: kafka\n  replicas: 1\n  selector: {{matchLabels: {{app: kafka}}}}\n  template:\n    metadata: {{labels: {{app: kafka}}}}\n    spec:\n      containers: [{{name: kafka, image: apache/kafka:3.9.0}}]\n"
        ),
    );
    let deadline = Instant::now() + Duration::from_secs(60);
    while !sts_ready(client, &ns).await {
        if Instant::now() > deadline {
            return Err("broker never ready".into());
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let generation = sts_generation(client, &ns).await;
    let app_data_rv =
        Api::<Secret>::namespaced(client.clone(), &ns).get("app-data").await.unwrap().metadata.resource_version;
    let manifest = match kind {
        Kind::Policy => format!(
            "apiVersion: clustersecurity.io/v1alpha1\nkind: ClusterSecurityPolicy\nmetadata: {{name: p, namespace: {ns}}}\nspec:\n  clusterRef: {{kind: StatefulSet, name: kafka}}\n  clientAuthentication: {{tls: {{enabled: true}}}}\n  encryptionInTransit: {{clientBroker: TLS, inCluster: true}}\n  rolloutTimeoutSeconds: 120\n"
        ),
        Kind::Rotation => format!(
            "apiVersion: clustersecurity.io/v1alpha1\nkind: CertificateRotation\nmetadata: {{name: r, namespace: {ns}}}\nspec:\n  clusterRef: {{kind: StatefulSet, name: kafka}}\n  external: {{label: e1}}\n  internal: {{label: i1}}\n  rolloutTimeoutSeconds: 120\n"
        ),
    };
    kubectl_apply(cp, &manifest);
    tokio::time::sleep(Duration::from_millis(delay_ms)).await;
    let (at_kill, _, _) = operation(client, kind, &ns).await;
    match fault {
        Fault::KillOperator => {
            op.kill();
            tokio::task::block_in_place(|| op.restart()).map_err(|e| format!("restart: {e}"))?;
        }
        Fault::RestartApiserver => {
            tokio::task::block_in_place(|| cp.restart_apiserver()).map_err(|e| format!("apiserver restart: {e}"))?;
        }
    }
    let deadline = Instant::now() + Duration::from_secs(180);
    let (records, _) = loop {
        let (state, records, no_current) = operation(client, kind, &ns).await;
        if state == Some(OperationState::UpdateComplete) && no_current {
            break (records, state);
        }
        if state == Some(OperationState::UpdateFailed) || Instant::now() > deadline {
            return Err(format!("ended {state:?} (killed at {at_kill:?})"));
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    if records != 1 {
        return Err(format!("{records} operation records (killed at {at_kill:?})"));
    }
    let rollouts = sts_generation(client, &ns).await - generation;
    if rollouts != 1 {
        return Err(format!("{rollouts} rollouts (killed at {at_kill:?})"));
    }
    let rv = Api::<Secret>::namespaced(client.clone(), &ns).get("app-data").await.unwrap().metadata.resource_version;
    if rv != app_data_rv {
        return Err("an unrelated Secret was rewritten".into());
    }
    if matches!(kind, Kind::Rotation) {
        let o = Api::<CertificateRotation>::namespaced(client.clone(), &ns).get("r").await.unwrap();
        let st = o.status.unwrap();
        for (which, status) in [("external", st.external), ("internal", st.internal)] {
            let secret =
                Api::<Secret>::namespaced(client.clone(), &ns).get(&format!("kafka-{which}-tls")).await.unwrap();
            let pem = String::from_utf8(secret.data.unwrap()["tls.crt"].0.clone()).unwrap();
            let der = inspect::certificates(&pem, "tls.crt").map_err(|e| e.to_string())?;
            let in_secret = inspect::fingerprint(&der[0]);
            if status.and_then(|s| s.fingerprint_sha256) != Some(in_secret) {
                return Err(format!("the {which} certificate in the Secret is not the one the status reports"));
            }
        }
    }
    Ok(format!("killed at {at_kill:?}"))
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() -> anyhow::Result<()> {
    let _ = rustls::crypto::ring::default_provider().install_default();
    let trials = arg("--trials", "CSO_FAULT_TRIALS", 20);
    let seed = arg("--seed", "CSO_FAULT_SEED", 1);
    let cp = ControlPlane::start(Options::default())?;
    let client = cp.client().await?;
    let kubelet = PlayKubelet::start(client.clone(), "play-node").await?;
    operator::install(&cp, None)?;
    let binary = Path::new(env!("CARGO_BIN_EXE_cluster-security-operator"));
    let mut op = tokio::task::block_in_place(|| Operator::start(&cp, binary, free_port(), &["--disable-webhook"]))?;
    let restarts = arg("--apiserver-restarts", "CSO_FAULT_APISERVER_RESTARTS", 0);
    let (mut passed, mut failed) = (0, 0);
    let mut kill_states = std::collections::BTreeMap::<String, u32>::new();
    let plan = [
        (Fault::KillOperator, Kind::Policy, trials),
        (Fault::KillOperator, Kind::Rotation, trials),
        (Fault::RestartApiserver, Kind::Policy, restarts),
        (Fault::RestartApiserver, Kind::Rotation, restarts),
    ];
    for (k, (fault, kind, trials)) in plan.into_iter().enumerate() {
        for i in 0..trials {
            let trial_seed = seed.wrapping_mul(1_000_003).wrapping_add(k as u64 * 10_000 + i);
            // An operation takes well under a second here: most kills land inside it.
            let delay_ms = Rng(trial_seed).next() % KILL_WINDOW_MS;
            match trial(&cp, &client, &mut op, (fault, kind), i, delay_ms).await {
                Ok(note) => {
                    passed += 1;
                    *kill_states.entry(format!("{fault:?} {kind:?} {note}")).or_default() += 1;
                    println!("trial {fault:?} {kind:?} #{i} seed={trial_seed} fault_after_ms={delay_ms}: ok ({note})");
                }
                Err(e) => {
                    failed += 1;
                    println!("trial {fault:?} {kind:?} #{i} seed={trial_seed} fault_after_ms={delay_ms}: FAILED: {e}");
                }
            }
        }
    }
    println!("fault points: {kill_states:?}");
    println!("faults: trials={trials} kinds=2 apiserver_restarts={restarts} passed={passed} failed={failed}");
    kubelet.stop();
    drop(op);
    anyhow::ensure!(failed == 0, "{failed} trials failed");
    Ok(())
}
