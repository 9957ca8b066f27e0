//! Operator memory at scale: RSS with 0, 5,000 and 20,000 Secrets in the cluster, plus 1,000
//! Pods, 300 StatefulSets and 300 of each of our kinds (300 ClusterSecurityPolicies and 300
//! CertificateRotations on those StatefulSets, 300 KmsKeyVaultModes). Brings up its own control
//! plane and runs the operator binary under the chart's ServiceAccount.
//!
//! `cargo bench --bench scale` ends with
//! `scale: rss_mib_0=<MiB> rss_mib_5000=<MiB> rss_mib_20000=<MiB> rss_mib_max=<MiB>`
//! (RSS after each stage has settled; max = the process's peak, VmHWM). Target: flat, < 64 MiB.

use std::path::PathBuf;
use std::time::{Duration, Instant};

use cluster_security_operator::testbed::operator::{self, Operator};
use cluster_security_operator::testbed::{free_port, ControlPlane, Options};
use futures::StreamExt;
use k8s_openapi::api::core::v1::{Namespace, Pod, Secret};
use k8s_openapi::ByteString;
use kube::api::{ObjectMeta, PostParams};
use kube::{Api, Client};
use serde_json::json;

const OBJECTS: usize = 300;
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
        if counts.iter().all(|c| *c == OBJECTS) || started.elapsed() > Duration::from_secs(600) {
            eprintln!("{what}: {counts:?} of {OBJECTS} observed after {:.0?}", started.elapsed());
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

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let _ = rustls::crypto::ring::default_provider().install_default();
    let cp = ControlPlane::start(Options::default())?;
    operator::install(&cp, None)?;
    let client = cp.client().await?;
    for ns in ["bulk", "pods", "brokers"] {
        namespace(&client, ns).await;
    }
    // 1,000 Pods (unscheduled: no kubelet), 300 StatefulSets with no replicas to roll.
    let pods: Api<Pod> = Api::namespaced(client.clone(), "pods");
    create_all(pods, PODS, |i| {
        serde_json::from_value(json!({"metadata": {"name": format!("p-{i:04}"), "labels": {"app": "filler"}},
            "spec": {"containers": [{"name": "c", "image": "busybox"}]}}))
        .unwrap()
    })
    .await;
    let sts: Api<k8s_openapi::api::apps::v1::StatefulSet> = Api::namespaced(client.clone(), "brokers");
    create_all(sts, OBJECTS, |i| {
        serde_json::from_value(json!({"metadata": {"name": format!("b-{i:03}")}, "spec": {"replicas": 0, "serviceName": "b",
            "selector": {"matchLabels": {"app": format!("b-{i:03}")}},
            "template": {"metadata": {"labels": {"app": format!("b-{i:03}")}}, "spec": {"containers": [{"name": "kafka", "image": "kafka"}]}}}}))
        .unwrap()
    })
    .await;
    let t = Instant::now();
    let csp: Api<kube::core::DynamicObject> =
        Api::namespaced_with(client.clone(), "brokers", &dynamic("ClusterSecurityPolicy", "clustersecuritypolicies"));
    create_all(csp, OBJECTS, |i| {
        serde_json::from_value(json!({"apiVersion": "clustersecurity.io/v1alpha1", "kind": "ClusterSecurityPolicy",
            "metadata": {"name": format!("b-{i:03}")},
            "spec": {"clusterRef": {"kind": "StatefulSet", "name": format!("b-{i:03}")},
                     "clientAuthentication": {"tls": {"enabled": true}},
                     "encryptionInTransit": {"clientBroker": "TLS", "inCluster": true}}}))
        .unwrap()
    })
    .await;
    let certrot: Api<kube::core::DynamicObject> =
        Api::namespaced_with(client.clone(), "brokers", &dynamic("CertificateRotation", "certificaterotations"));
    create_all(certrot, OBJECTS, |i| {
        serde_json::from_value(json!({"apiVersion": "clustersecurity.io/v1alpha1", "kind": "CertificateRotation",
            "metadata": {"name": format!("b-{i:03}")},
            "spec": {"clusterRef": {"kind": "StatefulSet", "name": format!("b-{i:03}")},
                     "external": {"label": "e1"}, "internal": {"label": "i1"}}}))
        .unwrap()
    })
    .await;
    let kms: Api<kube::core::DynamicObject> =
        Api::all_with(client.clone(), &dynamic("KmsKeyVaultMode", "kmskeyvaultmodes"));
    create_all(kms, OBJECTS, |i| {
        serde_json::from_value(json!({"apiVersion": "clustersecurity.io/v1alpha1", "kind": "KmsKeyVaultMode",
            "metadata": {"name": format!("k-{i:03}")},
            "spec": {"networkAccess": "Public", "keyId": format!("https://kv{i}.vault.azure.net/keys/etcd/0123456789abcdef"),
                     "provider": {"azure": {"subscriptionId": "00000000-0000-0000-0000-000000000000", "resourceGroup": "rg", "clusterName": format!("c{i}")}}}}))
        .unwrap()
    })
    .await;
    eprintln!("created {PODS} pods, {OBJECTS} StatefulSets and {OBJECTS} of each kind in {:.1?}", t.elapsed());

    // Azure is unreachable on purpose (a closed port): the KmsKeyVaultModes end Stalled.
    let closed = format!("https://127.0.0.1:{}", free_port());
    let args = [
        "--disable-webhook".to_string(),
        format!("--azure-arm-endpoint={closed}"),
        format!("--azure-authority-host={closed}"),
        "--azure-credentials-secret=missing".to_string(),
    ];
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let op = Operator::start(&cp, &operator_binary(), free_port(), &args)?;
    let pid = op.pid();
    let rss_0 = settle(&client, pid, "0 Secrets").await;
    eprintln!("rss with 0 bulk Secrets: {rss_0:.1} MiB");
    add_secrets(&client, 0, 5000).await;
    let rss_5000 = settle(&client, pid, "5,000 Secrets").await;
    eprintln!("rss with 5,000 Secrets: {rss_5000:.1} MiB");
    add_secrets(&client, 5000, 20000).await;
    let rss_20000 = settle(&client, pid, "20,000 Secrets").await;
    eprintln!("rss with 20,000 Secrets: {rss_20000:.1} MiB");
    let max = proc_mib(pid, "VmHWM:");
    println!(
        "scale: rss_mib_0={rss_0:.1} rss_mib_5000={rss_5000:.1} rss_mib_20000={rss_20000:.1} rss_mib_max={max:.1}"
    );
    drop(op);
    Ok(())
}
