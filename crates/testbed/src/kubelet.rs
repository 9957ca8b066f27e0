//! The "play kubelet": with no scheduler or kubelet in the testbed, it binds pending pods to one
//! Node, reports them Running and Ready, and finishes graceful deletions, so Deployment and
//! StatefulSet controllers roll pods exactly as in a real cluster. It stands in for nodes; it runs
//! no containers.
//!
//! A pod annotated `testbed.clustersecurity.io/hold-not-ready: "true"` (set it on the pod
//! template) is reported Running but never Ready, and so is every pod that is not Ready yet in a
//! namespace passed to [`PlayKubelet::hold_new_pods`]: that is how tests make a rollout stall.
//!
//! Each pod gets its own loopback address as `podIP`, and on it, from the moment it starts until
//! it goes, the [`brokers`](crate::brokers) stand-in serves the TLS listeners its mounted
//! `server.properties` names, with the certificates its mounted Secrets held at start. A pod
//! passed to [`Held::serve_old_material`] serves, when it starts again, what its previous
//! instance served: a broker that does not read what is mounted.

use std::collections::{HashMap, HashSet};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use k8s_openapi::api::core::v1::{Binding, Node, ObjectReference, Pod};
use kube::api::{DeleteParams, ListParams, ObjectMeta, Patch, PatchParams, PostParams, Preconditions};
use kube::{Api, Client, ResourceExt};
use serde_json::json;
use tracing::debug;

use crate::brokers::{self, Addresses, Listener, Serving};

/// The longest one round over all pods may take.
const TICK_DEADLINE: Duration = Duration::from_secs(10);

/// Annotation that keeps a pod not ready.
pub const HOLD_NOT_READY: &str = "testbed.clustersecurity.io/hold-not-ready";

/// A running play kubelet; stops when dropped.
pub struct PlayKubelet {
    stop: Arc<AtomicBool>,
    held: Held,
    ticks: Arc<Mutex<Ticks>>,
    task: tokio::task::JoinHandle<()>,
    pub node: String,
}

impl PlayKubelet {
    /// Register Node `node` and start serving pods.
    pub async fn start(client: Client, node: &str) -> anyhow::Result<Self> {
        let nodes: Api<Node> = Api::all(client.clone());
        if nodes.get_opt(node).await?.is_none() {
            let n =
                Node { metadata: ObjectMeta { name: Some(node.into()), ..Default::default() }, ..Default::default() };
            nodes.create(&PostParams::default(), &n).await?;
        }
        let status = json!({"status": {"conditions": [{"type": "Ready", "status": "True", "reason": "PlayKubelet", "message": "stands in for a node; runs no containers"}]}});
        nodes.patch_status(node, &PatchParams::default(), &Patch::Merge(&status)).await?;
        let stop = Arc::new(AtomicBool::new(false));
        let held = Held::default();
        let ticks = Arc::new(Mutex::new(Ticks::default()));
        let (stop2, node2, held2, ticks2) = (stop.clone(), node.to_string(), held.clone(), ticks.clone());
        let task = tokio::spawn(async move {
            let mut running = Running::default();
            while !stop2.load(Ordering::Relaxed) {
                // A request caught by an API server restart (the Azure emulator restarts it, as AKS
                // does) can hang until the client's read timeout, minutes: give a tick a deadline.
                let failure =
                    match tokio::time::timeout(TICK_DEADLINE, tick(&client, &node2, &held2, &mut running)).await {
                        Ok(Ok(())) => None,
                        Ok(Err(e)) => Some(format!("failed: {e}")),
                        Err(_) => Some(format!("took longer than {TICK_DEADLINE:?}")),
                    };
                if let Some(f) = &failure {
                    debug!(failure = %f, "play kubelet tick did not finish; starting over");
                }
                ticks2.lock().expect("ticks lock").record(failure);
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
        });
        Ok(Self { stop, held, ticks, task, node: node.into() })
    }

    /// A handle to hold new pods not ready, usable from any thread.
    pub fn held(&self) -> Held {
        self.held.clone()
    }

    /// How its rounds over the pods went, for a report when pods do not come up.
    pub fn ticks(&self) -> String {
        let t = self.ticks.lock().expect("ticks lock");
        format!(
            "play kubelet: {} rounds finished, {} did not (the last {} in a row); last failure: {}",
            t.finished,
            t.failed,
            t.failed_in_a_row,
            t.last_failure.as_deref().unwrap_or("none")
        )
    }

    /// Stop serving pods (they keep their last reported state).
    pub fn stop(&self) {
        self.stop.store(true, Ordering::Relaxed);
    }
}

impl Drop for PlayKubelet {
    fn drop(&mut self) {
        self.stop();
        self.task.abort();
    }
}

/// How the rounds over the pods went.
#[derive(Default)]
struct Ticks {
    finished: u64,
    failed: u64,
    failed_in_a_row: u64,
    last_failure: Option<String>,
}

impl Ticks {
    fn record(&mut self, failure: Option<String>) {
        match failure {
            None => {
                self.finished += 1;
                self.failed_in_a_row = 0;
            }
            Some(f) => {
                self.failed += 1;
                self.failed_in_a_row += 1;
                self.last_failure = Some(f);
            }
        }
    }
}

/// Namespaces whose pods that are not Ready yet stay not ready (pods already Ready keep running),
/// and pods that keep serving old material.
#[derive(Clone, Default)]
pub struct Held(Arc<Mutex<HashSet<String>>>, Arc<Mutex<HashSet<(String, String)>>>);

impl Held {
    /// Hold (or release) new pods of `namespace`.
    pub fn hold_new_pods(&self, namespace: &str, hold: bool) {
        let mut set = self.0.lock().expect("held lock");
        if hold {
            set.insert(namespace.into());
        } else {
            set.remove(namespace);
        }
    }
    fn contains(&self, namespace: &str) -> bool {
        self.0.lock().expect("held lock").contains(namespace)
    }
    /// From now on (`on`), pod `pod` of `namespace` serves, each time it starts again, what its
    /// previous instance served, whatever is mounted: a broker whose keystore is not the mounted
    /// Secret (or that never reloads it).
    pub fn serve_old_material(&self, namespace: &str, pod: &str, on: bool) {
        let mut set = self.1.lock().expect("held lock");
        let key = (namespace.to_string(), pod.to_string());
        if on {
            set.insert(key);
        } else {
            set.remove(&key);
        }
    }
    fn serves_old_material(&self, namespace: &str, pod: &str) -> bool {
        self.1.lock().expect("held lock").contains(&(namespace.to_string(), pod.to_string()))
    }
}

/// The pods started on this node, by uid, with what their stand-ins serve; and what each pod
/// name served last, by (namespace, name).
#[derive(Default)]
struct Running {
    addresses: Addresses,
    pods: HashMap<String, Serving>,
    last: HashMap<(String, String), Vec<Listener>>,
}

async fn tick(client: &Client, node: &str, held: &Held, running: &mut Running) -> kube::Result<()> {
    let pods: Api<Pod> = Api::all(client.clone());
    let listed = pods.list(&ListParams::default()).await?;
    // A pod that is gone or terminating stops serving.
    let live: HashSet<String> =
        listed.items.iter().filter(|p| p.metadata.deletion_timestamp.is_none()).filter_map(|p| p.uid()).collect();
    running.pods.retain(|uid, _| live.contains(uid));
    let mut failed = None;
    for pod in listed {
        let ns = pod.namespace().unwrap_or_default();
        let name = pod.name_any();
        let api: Api<Pod> = Api::namespaced(client.clone(), &ns);
        let bound_to = pod.spec.as_ref().and_then(|s| s.node_name.clone());
        if pod.metadata.deletion_timestamp.is_some() {
            // A kubelet confirms graceful deletion; do it at once.
            if bound_to.as_deref() == Some(node) {
                let dp = DeleteParams {
                    grace_period_seconds: Some(0),
                    preconditions: Some(Preconditions { uid: pod.uid(), resource_version: None }),
                    ..Default::default()
                };
                let _ = api.delete(&name, &dp).await;
            }
            continue;
        }
        match bound_to.as_deref() {
            None => {
                let binding = Binding {
                    metadata: ObjectMeta {
                        name: Some(name.clone()),
                        namespace: Some(ns.clone()),
                        ..Default::default()
                    },
                    target: ObjectReference {
                        kind: Some("Node".into()),
                        name: Some(node.into()),
                        api_version: Some("v1".into()),
                        ..Default::default()
                    },
                };
                let _: kube::Result<serde_json::Value> =
                    api.create_subresource("binding", &name, &PostParams::default(), &binding).await;
            }
            Some(n) if n == node => {
                let uid = pod.uid().unwrap_or_default();
                if !running.pods.contains_key(&uid) && !is_running(&pod) {
                    // The pod starts now: its stand-in reads what is mounted at this moment.
                    let key = (ns.clone(), name.clone());
                    let listeners = match running.last.get(&key) {
                        Some(old) if held.serves_old_material(&ns, &name) => old.clone(),
                        _ => brokers::read_listeners(client, &pod).await,
                    };
                    running.last.insert(key, listeners.clone());
                    let ip = running.addresses.allocate();
                    running.pods.insert(uid.clone(), brokers::serve(ip, listeners).await);
                }
                let ip = running.pods.get(&uid).map(|s| s.ip.to_string());
                // One pod's failed report must not keep every pod after it from being reported.
                if let Err(e) = report_status(&api, &pod, held.contains(&ns), ip.as_deref()).await {
                    failed.get_or_insert(e);
                }
            }
            Some(_) => {}
        }
    }
    failed.map_or(Ok(()), Err)
}

fn is_running(pod: &Pod) -> bool {
    pod.status.as_ref().and_then(|s| s.phase.as_deref()) == Some("Running")
}

/// Report the pod Running, Ready unless held, at `ip` (its stand-in's address; 127.0.0.1 for a
/// pod that started before this kubelet did).
async fn report_status(api: &Api<Pod>, pod: &Pod, namespace_held: bool, ip: Option<&str>) -> kube::Result<()> {
    let status = pod.status.as_ref();
    let phase_ok = is_running(pod);
    let ready_now = status
        .and_then(|s| s.conditions.as_ref())
        .and_then(|c| c.iter().find(|c| c.type_ == "Ready"))
        .map(|c| c.status.as_str());
    let held = pod.annotations().get(HOLD_NOT_READY).is_some_and(|v| v == "true")
        || (namespace_held && ready_now != Some("True"));
    let ready = if held { "False" } else { "True" };
    if phase_ok && ready_now == Some(ready) {
        return Ok(());
    }
    let containers: Vec<serde_json::Value> =
        pod.spec
            .as_ref()
            .map(|s| {
                s.containers.iter().map(|c| json!({
            "name": c.name, "image": c.image.clone().unwrap_or_default(), "imageID": "", "ready": !held,
            "restartCount": 0, "started": true, "state": {"running": {"startedAt": "2026-01-01T00:00:00Z"}}
        })).collect()
            })
            .unwrap_or_default();
    let now = k8s_openapi::jiff::Timestamp::now().to_string();
    let pod_ip = status.and_then(|s| s.pod_ip.as_deref()).or(ip).unwrap_or("127.0.0.1");
    let patch = json!({"status": {
        "phase": "Running",
        "hostIP": "127.0.0.1", "podIP": pod_ip,
        "startTime": now,
        "conditions": [
            {"type": "PodScheduled", "status": "True", "lastTransitionTime": now},
            {"type": "Initialized", "status": "True", "lastTransitionTime": now},
            {"type": "ContainersReady", "status": ready, "lastTransitionTime": now},
            {"type": "Ready", "status": ready, "lastTransitionTime": now},
        ],
        "containerStatuses": containers,
    }});
    api.patch_status(&pod.name_any(), &PatchParams::default(), &Patch::Merge(&patch)).await.map(|_| ())
}
