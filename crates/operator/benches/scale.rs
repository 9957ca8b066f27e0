//! Operator memory at scale: RSS with 0, 5,000 and 20,000 Secrets in the cluster, plus 1,000
//! Pods, 300 StatefulSets and 300 of each of our kinds (300 ClusterSecurityPolicies and 300
//! CertificateRotations on those StatefulSets, 300 KmsKeyVaultModes). Brings up its own control
//! plane and runs the operator binary under the chart's ServiceAccount.
//!
//! Side by side in one run: baseline = unbounded concurrent reconciles (kube-runtime's default),
//! operator = the default `--concurrent-reconciles=8`. Also: time until 300 CertificateRotations
//! created at once are all UPDATE_COMPLETE, rollouts per rotation (pod-template changes of its
//! StatefulSet) and write requests per object (kube-apiserver's request counter).
//!
//! `cargo bench --bench scale` ends with
//! `scale: rss_mib_0=<MiB> rss_mib_5000=<MiB> rss_mib_20000=<MiB> rss_mib_max=<MiB>`
//! (RSS after each stage has settled; max = the process's peak, VmHWM). Target: flat, < 64 MiB.

use std::path::PathBuf;
use std::time::{Duration, Instant};

use cluster_security_testbed::operator::{self, Operator};
use cluster_security_testbed::{free_port, ControlPlane, Options};
use futures::StreamExt;
use k8s_openapi::api::core::v1::{Namespace, Pod, Secret};
use k8s_openapi::ByteString;
use kube::api::{ObjectMeta, PostParams};
use kube::{Api, Client};
use serde_json::json;

/// Objects of each kind (and StatefulSets); CSO_SCALE_OBJECTS overrides, to see the slope.
fn objects() -> usize {
    std::env::var("CSO_SCALE_OBJECTS").ok().and_then(|v| v.parse().ok()).unwrap_or(300)
}
const PODS: usize = 1000;

fn proc_mib(pid: u32, field: &str) -> f64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .unwrap_or_default()
        .lines()
        .find_map(|l| l.strip_prefix(field))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<f64>().ok())
        .map(|kb| kb / 1024.0)
        .unwrap_or(f64::NAN)
}

fn operator_binary() -> PathBuf {
    PathBuf::from(env!("CARGO_BIN_EXE_cluster-security-operator"))
}

async fn create_all<K, F>(api: Api<K>, n: usize, make: F)
where
    K: kube::Resource + Clone + serde::Serialize + serde::de::DeserializeOwned + std::fmt::Debug,
    F: Fn(usize) -> K,
{
    let pp = PostParams::default();
    futures::stream::iter((0..n).map(make))
        .for_each_concurrent(32, |obj| {
            let (api, pp) = (api.clone(), pp.clone());
            async move {
                if let Err(e) = api.create(&pp, &obj).await {
                    if !matches!(&e, kube::Error::Api(s) if s.code == 409) {
                        panic!("create: {e}");
                    }
                }
            }
        })
        .await;
}

async fn namespace(client: &Client, name: &str) {
    let ns = Namespace { metadata: ObjectMeta { name: Some(name.into()), ..Default::default() }, ..Default::default() };
    let _ = Api::<Namespace>::all(client.clone()).create(&PostParams::default(), &ns).await;
}

fn dynamic(kind: &str, plural: &str) -> kube::api::ApiResource {
    kube::api::ApiResource {
        group: "clustersecurity.io".into(),
        version: "v1alpha1".into(),
        api_version: "clustersecurity.io/v1alpha1".into(),
        kind: kind.into(),
        plural: plural.into(),
    }
}

/// How many of our objects of `plural` have status for their generation.
async fn observed(client: &Client, kind: &str, plural: &str) -> usize {
    let ar = dynamic(kind, plural);
    let api: Api<kube::core::DynamicObject> = Api::all_with(client.clone(), &ar);
    let list = api.list(&Default::default()).await.map(|l| l.items).unwrap_or_default();
    list.iter()
        .filter(|o| {
            o.data["status"]["observedGeneration"].as_i64().is_some()
                && o.data["status"]["observedGeneration"].as_i64() == o.metadata.generation
        })
        .count()
}

async fn settle(client: &Client, pid: u32, what: &str) -> f64 {
    let started = Instant::now();
    loop {
        let counts = [
            observed(client, "ClusterSecurityPolicy", "clustersecuritypolicies").await,
            observed(client, "CertificateRotation", "certificaterotations").await,
            observed(client, "KmsKeyVaultMode", "kmskeyvaultmodes").await,
        ];
        if counts.iter().all(|c| *c == objects()) || started.elapsed() > Duration::from_secs(600) {
            eprintln!("{what}: {counts:?} of {} observed after {:.0?}", objects(), started.elapsed());
            break;
        }
        tokio::time::sleep(Duration::from_secs(2)).await;
    }
    // Let the watches deliver what was just created and the reconciles that follow run.
    tokio::time::sleep(Duration::from_secs(15)).await;
    proc_mib(pid, "VmRSS:")
}

async fn add_secrets(client: &Client, from: usize, to: usize) {
    let api: Api<Secret> = Api::namespaced(client.clone(), "bulk");
    create_all(api, to - from, |i| Secret {
        metadata: ObjectMeta { name: Some(format!("s-{:05}", from + i)), ..Default::default() },
        data: Some([("password".to_string(), ByteString(vec![b'x'; 64]))].into()),
        ..Default::default()
    })
    .await;
}

/// What the operator writes (the rest of the counter is kube-controller-manager's work:
/// controllerrevisions, statefulsets/status, endpoints).
const OPERATOR_WRITES: &[&str] = &[
    "clustersecuritypolicies/status",
    "certificaterotations/status",
    "kmskeyvaultmodes/status",
    "statefulsets",
    "configmaps",
    "secrets",
    "events",
];

/// Write requests so far, by resource (kube-apiserver's own request counter; the
/// bench itself only reads after the operator starts).
fn write_requests(cp: &ControlPlane) -> std::collections::BTreeMap<String, f64> {
    let text = String::from_utf8_lossy(&cp.kubectl(&["get", "--raw", "/metrics"]).stdout).into_owned();
    let mut out = std::collections::BTreeMap::new();
    for line in text.lines().filter(|l| l.starts_with("apiserver_request_total{")) {
        let label = |k: &str| line.split(&format!("{k}=\"")).nth(1).and_then(|r| r.split('"').next()).unwrap_or("");
        if !["POST", "PATCH", "PUT", "APPLY"].contains(&label("verb")) {
            continue;
        }
        let sub = label("subresource");
        let key = if sub.is_empty() { label("resource").to_string() } else { format!("{}/{sub}", label("resource")) };
        let v: f64 = line.rsplit(' ').next().and_then(|v| v.parse().ok()).unwrap_or(0.0);
        *out.entry(key).or_insert(0.0) += v;
    }
    out
}

/// Seconds until every CertificateRotation's newest operation is UPDATE_COMPLETE.
async fn rotations_complete(client: &Client, started: Instant) -> f64 {
    let api: Api<kube::core::DynamicObject> =
        Api::all_with(client.clone(), &dynamic("CertificateRotation", "certificaterotations"));
    loop {
        let list = api.list(&Default::default()).await.map(|l| l.items).unwrap_or_default();
        let done =
            list.iter().filter(|o| o.data["status"]["operations"][0]["operationState"] == "UPDATE_COMPLETE").count();
        if done == objects() || started.elapsed() > Duration::from_secs(600) {
            return started.elapsed().as_secs_f64();
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
}

struct Run {
    rss: [f64; 3],
    max: f64,
    ablation: Vec<Restart>,
    rotations_secs: f64,
    rollouts_per_rotation: f64,
    writes_per_object: f64,
    writes: std::collections::BTreeMap<String, f64>,
}

/// One restart of [`ablate`]: what was switched off, and the memory it took (MiB).
struct Restart {
    variant: &'static str,
    rss: f64,
    peak: f64,
    /// RssAnon and RssFile once settled: heap, and the binary's pages.
    anon: f64,
    file: f64,
}

/// One environment variable of a restart: name, value.
type EnvVar = (&'static str, &'static str);

/// The restarts of [`ablate`]: a name, an extra flag, an extra environment variable.
const VARIANTS: [(&str, &str, Option<EnvVar>); 5] = [
    ("all controllers", "", None),
    ("ClusterSecurityPolicy alone", "--controllers=ClusterSecurityPolicy", None),
    ("CertificateRotation alone", "--controllers=CertificateRotation", None),
    ("KmsKeyVaultMode alone", "--controllers=KmsKeyVaultMode", None),
    ("all, MALLOC_ARENA_MAX=1", "", Some(("MALLOC_ARENA_MAX", "1"))),
];

/// Where the memory goes: the operator restarted on the same cluster (every object reconciled
/// again, 20,000 Secrets), all of it, then with each controller alone, then with glibc's malloc
/// kept to one arena; each one's settled and peak RSS and the settled split into heap and code.
/// The next regression shows in the row of what grew.
async fn ablate(cp: &ControlPlane, client: &Client, args: &[String]) -> anyhow::Result<Vec<Restart>> {
    let mut rows = Vec::new();
    for (variant, flag, env) in VARIANTS {
        let mut all: Vec<String> = args.to_vec();
        all.extend((!flag.is_empty()).then(|| flag.to_string()));
        let env: Vec<(String, String)> = env.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect();
        let kubeconfig = operator::service_account_kubeconfig(cp)?;
        let op = Operator::start_as(cp, &operator_binary(), free_port(), &all, &env, kubeconfig)?;
        let pid = op.pid();
        let rss = settle(client, pid, variant).await;
        let (peak, anon, file) = (proc_mib(pid, "VmHWM:"), proc_mib(pid, "RssAnon:"), proc_mib(pid, "RssFile:"));
        rows.push(Restart { variant, rss, peak, anon, file });
    }
    Ok(rows)
}

/// One control plane, the objects, then the operator with `--concurrent-reconciles=<c>`.
async fn run(concurrency: u16) -> anyhow::Result<Run> {
    let cp = ControlPlane::start(Options::default())?;
    operator::install(&cp, None)?;
    let client = cp.client().await?;
    for ns in ["bulk", "pods", "brokers"] {
        namespace(&client, ns).await;
    }
    let n = objects();
    // 1,000 Pods (unscheduled: no kubelet); StatefulSets with no replicas to roll: c-* for the
    // policies, r-* for the rotations (so each rotation's rollouts can be counted alone).
    let pods: Api<Pod> = Api::namespaced(client.clone(), "pods");
    create_all(pods, PODS, |i| {
        serde_json::from_value(json!({"metadata": {"name": format!("p-{i:04}"), "labels": {"app": "filler"}},
            "spec": {"automountServiceAccountToken": false, "containers": [{"name": "c", "image": "busybox"}]}}))
        .unwrap()
    })
    .await;
    let sts: Api<k8s_openapi::api::apps::v1::StatefulSet> = Api::namespaced(client.clone(), "brokers");
    create_all(sts.clone(), 2 * n, |i| {
        let name = if i < n { format!("c-{i:03}") } else { format!("r-{:03}", i - n) };
        serde_json::from_value(json!({"metadata": {"name": name}, "spec": {"replicas": 0, "serviceName": "b",
            "selector": {"matchLabels": {"app": name}},
            "template": {"metadata": {"labels": {"app": name}}, "spec": {"containers": [{"name": "kafka", "image": "kafka"}]}}}}))
        .unwrap()
    })
    .await;
    let csp: Api<kube::core::DynamicObject> =
        Api::namespaced_with(client.clone(), "brokers", &dynamic("ClusterSecurityPolicy", "clustersecuritypolicies"));
    create_all(csp, n, |i| {
        serde_json::from_value(json!({"apiVersion": "clustersecurity.io/v1alpha1", "kind": "ClusterSecurityPolicy",
            "metadata": {"name": format!("c-{i:03}")},
            "spec": {"clusterRef": {"kind": "StatefulSet", "name": format!("c-{i:03}")},
                     "clientAuthentication": {"tls": {"enabled": true}},
                     "encryptionInTransit": {"clientBroker": "TLS", "inCluster": true}}}))
        .unwrap()
    })
    .await;
    // 300 rotations in one apply (created together before the operator starts).
    let certrot: Api<kube::core::DynamicObject> =
        Api::namespaced_with(client.clone(), "brokers", &dynamic("CertificateRotation", "certificaterotations"));
    create_all(certrot, n, |i| {
        serde_json::from_value(json!({"apiVersion": "clustersecurity.io/v1alpha1", "kind": "CertificateRotation",
            "metadata": {"name": format!("r-{i:03}")},
            "spec": {"clusterRef": {"kind": "StatefulSet", "name": format!("r-{i:03}")},
                     "external": {"label": "e1"}, "internal": {"label": "i1"}}}))
        .unwrap()
    })
    .await;
    let kms: Api<kube::core::DynamicObject> =
        Api::all_with(client.clone(), &dynamic("KmsKeyVaultMode", "kmskeyvaultmodes"));
    create_all(kms, n, |i| {
        serde_json::from_value(json!({"apiVersion": "clustersecurity.io/v1alpha1", "kind": "KmsKeyVaultMode",
            "metadata": {"name": format!("k-{i:03}")},
            "spec": {"networkAccess": "Public", "keyId": format!("https://kv{i}.vault.azure.net/keys/etcd/0123456789abcdef"),
                     "provider": {"azure": {"subscriptionId": "00000000-0000-0000-0000-000000000000", "resourceGroup": "rg", "clusterName": format!("c{i}")}}}}))
        .unwrap()
    })
    .await;

    // Azure is unreachable on purpose (a closed port, no credentials): the KmsKeyVaultModes stall.
    let closed = format!("https://127.0.0.1:{}", free_port());
    let args = [
        "--disable-webhook".to_string(),
        format!("--concurrent-reconciles={concurrency}"),
        format!("--azure-arm-endpoint={closed}"),
        format!("--azure-authority-host={closed}"),
        "--azure-credentials-secret=missing".to_string(),
    ];
    let writes_before = write_requests(&cp);
    let started = Instant::now();
    let op = Operator::start(&cp, &operator_binary(), free_port(), &args)?;
    let pid = op.pid();
    let rotations_secs = rotations_complete(&client, started).await;
    let rss_0 = settle(&client, pid, "0 Secrets").await;
    let writes_after = write_requests(&cp);
    let writes: std::collections::BTreeMap<String, f64> = writes_after
        .iter()
        .map(|(k, v)| (k.clone(), v - writes_before.get(k).copied().unwrap_or(0.0)))
        .filter(|(k, v)| *v > 0.0 && OPERATOR_WRITES.contains(&k.as_str()))
        .collect();
    // Each r-* StatefulSet: generation 1 at creation, +1 per pod-template change.
    let rollouts: i64 = sts
        .list(&Default::default())
        .await?
        .items
        .iter()
        .filter(|s| s.metadata.name.as_deref().is_some_and(|n| n.starts_with("r-")))
        .map(|s| s.metadata.generation.unwrap_or(1) - 1)
        .sum();
    add_secrets(&client, 0, 5000).await;
    let rss_5000 = settle(&client, pid, "5,000 Secrets").await;
    add_secrets(&client, 5000, 20000).await;
    let rss_20000 = settle(&client, pid, "20,000 Secrets").await;
    let max = proc_mib(pid, "VmHWM:");
    drop(op);
    let ablation = if concurrency == 0 { Vec::new() } else { ablate(&cp, &client, &args).await? };
    Ok(Run {
        rss: [rss_0, rss_5000, rss_20000],
        max,
        ablation,
        rotations_secs,
        rollouts_per_rotation: rollouts as f64 / n as f64,
        writes_per_object: writes.values().sum::<f64>() / (3 * n) as f64,
        writes,
    })
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let _ = rustls::crypto::ring::default_provider().install_default();
    let n = objects();
    eprintln!("{n} of each kind, {PODS} Pods; baseline = unbounded reconciles (kube-runtime's default), operator = --concurrent-reconciles=8");
    let mut runs = Vec::new();
    // CSO_SCALE_RUNS=operator: the operator's run only (when profiling it).
    let only = std::env::var("CSO_SCALE_RUNS").unwrap_or_default();
    let all = [("baseline", 0u16), ("operator", cluster_security_operator::CONCURRENT_RECONCILES)];
    for (name, c) in all.into_iter().filter(|(name, _)| only.is_empty() || only.split(',').any(|o| o == *name)) {
        let r = run(c).await?;
        println!(
            "{name:8}: rss_mib 0={:.1} 5000={:.1} 20000={:.1} max={:.1}  {n} rotations complete in {:.1} s, rollouts/rotation={:.2}, writes/object={:.1}",
            r.rss[0], r.rss[1], r.rss[2], r.max, r.rotations_secs, r.rollouts_per_rotation, r.writes_per_object
        );
        println!("{name:8}: writes by resource {:?}", r.writes);
        for x in &r.ablation {
            println!(
                "{name:8}: restarted, {:28} rss_mib={:5.1} peak={:5.1} (now: heap/anonymous {:5.1}, code/file-backed {:4.1})",
                x.variant, x.rss, x.peak, x.anon, x.file
            );
        }
        runs.push(r);
    }
    let r = runs.last().expect("a run");
    println!(
        "scale: rss_mib_0={:.1} rss_mib_5000={:.1} rss_mib_20000={:.1} rss_mib_max={:.1}",
        r.rss[0], r.rss[1], r.rss[2], r.max
    );
    Ok(())
}
