//! Re-encryption of N Secrets after an encryption-provider change, side by side in one run:
//! baseline = the AKS seed's `kubectl get secrets --all-namespaces -o json | kubectl replace -f -`,
//! engine  = this operator's names-only paged listing + server-side no-op patch.
//! Both rewrite the same Secrets (the key changes before each run); etcd confirms the result.
//!
//! `cargo bench --bench reencrypt -- --secrets 5000` (or CSO_BENCH_SECRETS; default 5000). Prints
//! one line per method and a closing line
//! `reencrypt: engine=<Secrets/s> kubectl=<Secrets/s> ratio=<engine/kubectl> engine_rss_mib=<MiB>
//! kubectl_rss_mib=<MiB> verified=<true|false>`.

use std::collections::BTreeMap;
use std::process::{Command, Stdio};
use std::time::Instant;

use base64::Engine as _;
use cluster_security_operator::reencrypt::{self, Settings};
use cluster_security_testbed::{ControlPlane, Options};
use futures::StreamExt;
use k8s_openapi::api::core::v1::{Namespace, Secret};
use k8s_openapi::ByteString;
use kube::api::{ObjectMeta, PostParams};
use kube::Api;

/// An EncryptionConfiguration writing with the first of `keys` (identity when empty) and able
/// to read all of them, as a key rotation needs.
fn config(keys: &[&str]) -> String {
    let providers = if keys.is_empty() {
        "  - identity: {}\n".to_string()
    } else {
        let list: String = keys
            .iter()
            .map(|k| {
                format!(
                    "      - {{name: {k}, secret: {}}}\n",
                    base64::engine::general_purpose::STANDARD.encode([k.len() as u8; 32])
                )
            })
            .collect();
        format!("  - aescbc:\n      keys:\n{list}  - identity: {{}}\n")
    };
    format!("apiVersion: apiserver.config.k8s.io/v1\nkind: EncryptionConfiguration\nresources:\n- resources: [secrets]\n  providers:\n{providers}")
}

use cluster_security_testbed::spawn::children_max_rss_mib;

/// Peak RSS (MiB) of this process.
fn self_hwm_mib() -> f64 {
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmHWM:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<f64>().ok())
        .map(|kb| kb / 1024.0)
        .unwrap_or(0.0)
}

fn count_with_prefix(cp: &ControlPlane, prefix: &[u8], n: usize) -> usize {
    // Sample every 50th Secret: etcdctl per key is slow, and the engine is all-or-report.
    (0..n)
        .step_by(50)
        .filter(|i| {
            cp.etcd_get(&format!("/registry/secrets/bench/s-{i:05}")).unwrap().is_some_and(|v| v.starts_with(prefix))
        })
        .count()
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    // `-- --secrets N` (cargo passes `--bench` too, which is ignored), else CSO_BENCH_SECRETS.
    let args: Vec<String> = std::env::args().collect();
    let from_args =
        args.iter().position(|a| a == "--secrets").and_then(|i| args.get(i + 1)).and_then(|v| v.parse().ok());
    let n: usize =
        from_args.or_else(|| std::env::var("CSO_BENCH_SECRETS").ok().and_then(|v| v.parse().ok())).unwrap_or(5000);
    let cp = ControlPlane::start(Options { encryption_config: Some(config(&[])) })?;
    let client = cp.client().await?;
    let ns =
        Namespace { metadata: ObjectMeta { name: Some("bench".into()), ..Default::default() }, ..Default::default() };
    Api::<Namespace>::all(client.clone()).create(&PostParams::default(), &ns).await?;
    let secrets: Api<Secret> = Api::namespaced(client.clone(), "bench");
    let t = Instant::now();
    futures::stream::iter(0..n)
        .map(|i| {
            let secrets = secrets.clone();
            async move {
                let mut data = BTreeMap::new();
                data.insert("payload".to_string(), ByteString(vec![b'x'; 1800]));
                let s = Secret {
                    metadata: ObjectMeta { name: Some(format!("s-{i:05}")), ..Default::default() },
                    data: Some(data),
                    ..Default::default()
                };
                secrets.create(&PostParams::default(), &s).await.map(|_| ())
            }
        })
        .buffer_unordered(16)
        .collect::<Vec<_>>()
        .await
        .into_iter()
        .collect::<Result<Vec<_>, _>>()?;
    println!("setup: created {n} Secrets of ~1.8 KiB in {:.1}s", t.elapsed().as_secs_f64());
    let sample = n.div_ceil(50);

    // Baseline: the seed's kubectl pipeline, after switching to key "a".
    cp.set_encryption_config(&config(&["a"]))?;
    cp.restart_apiserver()?;
    let kubeconfig = cp.kubeconfig_path();
    let t = Instant::now();
    let get = Command::new("kubectl")
        .env("KUBECONFIG", &kubeconfig)
        .args(["get", "secrets", "--all-namespaces", "-o", "json"])
        .stdout(Stdio::piped())
        .spawn()?;
    let replace = Command::new("kubectl")
        .env("KUBECONFIG", &kubeconfig)
        .args(["replace", "-f", "-"])
        .stdin(get.stdout.unwrap())
        .stdout(Stdio::null())
        .status()?;
    let kubectl_secs = t.elapsed().as_secs_f64();
    anyhow::ensure!(replace.success(), "kubectl replace failed");
    let kubectl_rss = children_max_rss_mib();
    let kubectl_ok = count_with_prefix(&cp, b"k8s:enc:aescbc:v1:a:", n);

    // Engine, after switching to key "bb".
    cp.set_encryption_config(&config(&["bb", "a"]))?;
    cp.restart_apiserver()?;
    let client = cp.client().await?;
    let before_hwm = self_hwm_mib();
    let t = Instant::now();
    let p =
        reencrypt::run(&client, Settings { concurrency: 16, page_size: 500, attempts: 5 }, Default::default(), |_| {})
            .await?;
    let engine_secs = t.elapsed().as_secs_f64();
    let engine_ok = count_with_prefix(&cp, b"k8s:enc:aescbc:v1:bb:", n);

    println!("kubectl get|replace: {kubectl_secs:.1}s, {:.0} Secrets/s, client peak RSS {kubectl_rss:.0} MiB, {kubectl_ok}/{sample} sampled re-encrypted", n as f64 / kubectl_secs);
    println!(
        "engine (names-only pages + no-op patch, 16 at once): {engine_secs:.1}s, {:.0} Secrets/s, process peak RSS {:.0} MiB (was {before_hwm:.0} MiB before the run), {engine_ok}/{sample} sampled re-encrypted; {p:?}",
        p.total as f64 / engine_secs,
        self_hwm_mib()
    );
    let (engine_rate, kubectl_rate) = (p.total as f64 / engine_secs, n as f64 / kubectl_secs);
    let verified = engine_ok == sample && kubectl_ok == sample && p.failed == 0;
    println!(
        "reencrypt: engine={engine_rate:.0} kubectl={kubectl_rate:.0} ratio={:.1} engine_rss_mib={:.0} kubectl_rss_mib={kubectl_rss:.0} verified={verified}",
        engine_rate / kubectl_rate,
        self_hwm_mib()
    );
    anyhow::ensure!(verified, "a method left Secrets behind (etcd sample)");
    Ok(())
}
