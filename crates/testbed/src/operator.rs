//! Install the operator's cluster-side pieces into a testbed control plane (CRDs, namespace,
//! URL-based webhook on loopback) and run the operator binary against it as a child process.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{bail, Context as _};
use k8s_openapi::api::admissionregistration::v1::WebhookClientConfig;
use serde::Deserialize;

use super::{free_port, spawn, ControlPlane};
use cluster_security_api::manifests;

/// Namespace the operator keeps its Secrets in.
pub const NAMESPACE: &str = "cluster-security-operator";

/// Path of the generated CRDs in this repository.
pub fn crds_path() -> PathBuf {
    crate::repo_root().join("crds")
}

fn kubectl_ok(cp: &ControlPlane, args: &[&str], stdin: Option<&str>) -> anyhow::Result<String> {
    let out = cp.kubectl_with_stdin(args, stdin);
    if !out.status.success() {
        bail!("kubectl {} failed: {}", args.join(" "), String::from_utf8_lossy(&out.stderr));
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// Apply the CRDs and wait until all three are Established; create the operator's namespace and
/// a webhook configuration that points at `https://127.0.0.1:<webhook_port>/validate`.
pub fn install(cp: &ControlPlane, webhook_port: Option<u16>) -> anyhow::Result<()> {
    let crds = crds_path();
    kubectl_ok(cp, &["apply", "-f", crds.to_str().expect("utf-8 path")], None)?;
    wait_established(cp)?;
    let ns = format!("apiVersion: v1\nkind: Namespace\nmetadata:\n  name: {NAMESPACE}\n");
    kubectl_ok(cp, &["apply", "-f", "-"], Some(&ns))?;
    if let Some(port) = webhook_port {
        let cfg = manifests::webhook_configuration(WebhookClientConfig {
            url: Some(format!("https://127.0.0.1:{port}{}", manifests::VALIDATE_PATH)),
            ..Default::default()
        });
        kubectl_ok(cp, &["apply", "-f", "-"], Some(&serde_json::to_string(&cfg)?))?;
    }
    Ok(())
}

/// Wait until the three CRDs are Established (served).
pub fn wait_established(cp: &ControlPlane) -> anyhow::Result<()> {
    kubectl_ok(
        cp,
        &[
            "wait",
            "--for=condition=Established",
            "--timeout=60s",
            "crd/clustersecuritypolicies.clustersecurity.io",
            "crd/certificaterotations.clustersecurity.io",
            "crd/kmskeyvaultmodes.clustersecurity.io",
        ],
        None,
    )
    .map(|_| ())
}

/// The ServiceAccount the chart runs the operator as (in [`NAMESPACE`]).
pub const SERVICE_ACCOUNT: &str = "cluster-security-operator";

/// [`SERVICE_ACCOUNT`] as an API user.
pub const SERVICE_ACCOUNT_USER: &str = "system:serviceaccount:cluster-security-operator:cluster-security-operator";

/// Apply the chart's ServiceAccount and RBAC (from `deploy/operator.yaml`, which is generated from
/// the chart and drift-checked) into `cp`, and write a kubeconfig that authenticates as that
/// ServiceAccount with its own token, as the operator's pod does: the operator then has exactly
/// the chart's permissions, and a permission the chart lacks fails the test that needs it.
pub fn service_account_kubeconfig(cp: &ControlPlane) -> anyhow::Result<PathBuf> {
    let manifests = std::fs::read_to_string(crate::repo_root().join("deploy/operator.yaml"))?;
    service_account_kubeconfig_with(cp, &manifests)
}

/// The chart rendered by Helm's engine (scripts/helm-render.py) into the operator's namespace
/// with `values` (JSON): the manifests as one YAML stream.
pub fn render_chart(values: &str) -> anyhow::Result<String> {
    let root = crate::repo_root();
    let out = Command::new("python3")
        .arg(root.join("scripts/helm-render.py"))
        .arg(root.join("charts/cluster-security-operator"))
        .arg(NAMESPACE)
        .arg(values)
        .output()
        .context("python3 runs scripts/helm-render.py")?;
    if !out.status.success() {
        bail!("rendering the chart with {values} failed: {}", String::from_utf8_lossy(&out.stderr));
    }
    Ok(String::from_utf8(out.stdout)?)
}

/// `manifests` (YAML documents) without what this API server cannot serve: the `policy/v1`
/// PodDisruptionBudget our chart renders needs Kubernetes 1.21, the tests' server is v1.20 (on a
/// live cluster the chart picks `policy/v1beta1` by its Capabilities). Nothing else is dropped.
pub fn served_by(cp: &ControlPlane, manifests: &str) -> String {
    let versions = cp.kubectl(&["api-versions"]);
    let policy_v1 = String::from_utf8_lossy(&versions.stdout).lines().any(|v| v == "policy/v1");
    let docs: Vec<&str> = manifests.split("\n---\n").collect();
    let kept: Vec<&str> = docs
        .iter()
        .copied()
        .filter(|d| policy_v1 || !(d.contains("apiVersion: policy/v1\n") && d.contains("kind: PodDisruptionBudget")))
        .collect();
    assert!(docs.len() - kept.len() <= 1, "only the PodDisruptionBudget is dropped");
    kept.join("\n---\n")
}

/// Flags and environment variables (name, value) of a container.
pub type DeploymentCommand = (Vec<String>, Vec<(String, String)>);

/// The command line of the operator container of the Deployment in `manifests` (a chart
/// render): its flags after `run`, and its environment variables with literal values (those
/// taken from the pod, `POD_NAME`/`POD_NAMESPACE`, are the testbed's to set).
pub fn deployment_command(manifests: &str) -> anyhow::Result<DeploymentCommand> {
    for doc in serde_yaml::Deserializer::from_str(manifests) {
        let v = serde_yaml::Value::deserialize(doc)?;
        if v.get("kind").and_then(|k| k.as_str()) != Some("Deployment") {
            continue;
        }
        let container = &v["spec"]["template"]["spec"]["containers"][0];
        let args = container["args"]
            .as_sequence()
            .context("the container has args")?
            .iter()
            .filter_map(|a| a.as_str())
            .filter(|a| *a != "run")
            .map(String::from)
            .collect();
        let env = container["env"]
            .as_sequence()
            .into_iter()
            .flatten()
            .filter_map(|e| Some((e["name"].as_str()?.to_string(), e["value"].as_str()?.to_string())))
            .collect();
        return Ok((args, env));
    }
    bail!("no Deployment in the manifests")
}

/// [`service_account_kubeconfig`] with the ServiceAccount and RBAC of `manifests` (e.g. the
/// chart rendered with non-default values, see [`render_chart`]).
pub fn service_account_kubeconfig_with(cp: &ControlPlane, manifests: &str) -> anyhow::Result<PathBuf> {
    let ns = format!("apiVersion: v1\nkind: Namespace\nmetadata:\n  name: {NAMESPACE}\n");
    let mut rbac = vec![ns];
    for doc in serde_yaml::Deserializer::from_str(manifests) {
        let v = serde_yaml::Value::deserialize(doc)?;
        let kind = v.get("kind").and_then(|k| k.as_str()).unwrap_or_default();
        if ["ServiceAccount", "ClusterRole", "ClusterRoleBinding", "Role", "RoleBinding"].contains(&kind) {
            rbac.push(serde_yaml::to_string(&v)?);
        }
    }
    kubectl_ok(cp, &["apply", "-f", "-"], Some(&rbac.join("\n---\n")))?;
    cp.service_account_kubeconfig(NAMESPACE, SERVICE_ACCOUNT, "operator-kubeconfig")
}

/// The operator binary running as a child process.
pub struct Operator {
    child: Child,
    pub webhook_port: u16,
    pub health_port: u16,
    pub log: PathBuf,
    binary: PathBuf,
    args: Vec<String>,
    env: Vec<(String, String)>,
    kubeconfig: PathBuf,
}

impl Operator {
    /// Start `binary run` against `cp`, with the RBAC of `deploy/operator.yaml`, and wait until
    /// `/readyz` says ready.
    pub fn start(
        cp: &ControlPlane,
        binary: &Path,
        webhook_port: u16,
        extra_args: &[impl AsRef<str>],
    ) -> anyhow::Result<Self> {
        Self::start_as(cp, binary, webhook_port, extra_args, &[], service_account_kubeconfig(cp)?)
    }

    /// [`Operator::start`] acting through `kubeconfig` (see [`service_account_kubeconfig_with`]).
    pub fn start_as(
        cp: &ControlPlane,
        binary: &Path,
        webhook_port: u16,
        extra_args: &[impl AsRef<str>],
        env: &[(String, String)],
        kubeconfig: PathBuf,
    ) -> anyhow::Result<Self> {
        let health_port = free_port();
        let mut args: Vec<String> = vec![
            "run".into(),
            format!("--webhook-addr=127.0.0.1:{webhook_port}"),
            format!("--health-addr=127.0.0.1:{health_port}"),
            format!("--namespace={NAMESPACE}"),
        ];
        args.extend(extra_args.iter().map(|s| s.as_ref().to_string()));
        // One log per operator process of this control plane (the HA test runs two).
        let log = (1..)
            .map(|n| cp.dir().join(if n == 1 { "operator.log".to_string() } else { format!("operator-{n}.log") }))
            .find(|p| !p.exists())
            .expect("a free log name");
        std::fs::File::create(&log)?;
        let mut op = Operator {
            child: Command::new("true").spawn()?,
            webhook_port,
            health_port,
            log,
            binary: binary.to_path_buf(),
            args,
            env: env.to_vec(),
            kubeconfig,
        };
        op.restart()?;
        Ok(op)
    }

    /// Stop the operator with SIGTERM (as Kubernetes does).
    pub fn stop(&mut self) {
        spawn::stop(&mut self.child, Duration::from_secs(10));
    }

    /// Kill the operator with SIGKILL (a crash).
    pub fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    /// (Re)start the operator process and wait until it is ready.
    pub fn restart(&mut self) -> anyhow::Result<()> {
        self.stop();
        let f = std::fs::OpenOptions::new().create(true).append(true).open(&self.log)?;
        // CSOP_OPERATOR_WRAPPER (e.g. `heaptrack -o /tmp/operator`): run the operator under a
        // profiler; `pid()` is then the wrapper's, and stopping signals the wrapper only
        // (heaptrack's script leaves the operator running: `pkill -f cluster-security-operator`).
        let wrapper = std::env::var("CSOP_OPERATOR_WRAPPER").unwrap_or_default();
        let mut wrapper = wrapper.split_whitespace();
        let mut cmd = match wrapper.next() {
            Some(program) => {
                let mut cmd = Command::new(program);
                cmd.args(wrapper).arg(&self.binary);
                cmd
            }
            None => Command::new(&self.binary),
        };
        cmd.args(&self.args)
            .env("KUBECONFIG", &self.kubeconfig)
            .env("RUST_LOG", std::env::var("RUST_LOG").unwrap_or_else(|_| "info".into()))
            .envs(self.env.iter().map(|(k, v)| (k, v)))
            .stdin(Stdio::null())
            .stdout(Stdio::from(f.try_clone()?))
            .stderr(Stdio::from(f));
        self.child = spawn::spawn(cmd).with_context(|| format!("start {}", self.binary.display()))?;
        self.wait_ready(Duration::from_secs(60))
    }

    /// Process id of the running operator (for /proc/<pid>/status).
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Whether the process is still running.
    pub fn is_running(&mut self) -> bool {
        matches!(self.child.try_wait(), Ok(None))
    }

    fn wait_ready(&mut self, timeout: Duration) -> anyhow::Result<()> {
        let deadline = Instant::now() + timeout;
        loop {
            if let Ok(Some(status)) = self.child.try_wait() {
                bail!("operator exited ({status}):\n{}", self.log_text());
            }
            if http_get_ok(self.health_port, "/readyz") {
                return Ok(());
            }
            if Instant::now() > deadline {
                let readyz = http_get(self.health_port, "/readyz").map(|(_, b)| b).unwrap_or_default();
                bail!("operator not ready after {timeout:?} ({readyz}):\n{}", self.log_text());
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// Everything the operator logged so far.
    pub fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }
}

impl Drop for Operator {
    fn drop(&mut self) {
        self.stop();
    }
}

/// A plain HTTP GET on loopback; true on a 200 answer.
pub fn http_get_ok(port: u16, path: &str) -> bool {
    http_get(port, path).is_some_and(|(code, _)| code == 200)
}

/// A plain HTTP GET on loopback: status code and body (None: no answer).
pub fn http_get(port: u16, path: &str) -> Option<(u16, String)> {
    use std::io::{Read, Write};
    let mut s = std::net::TcpStream::connect_timeout(&([127, 0, 0, 1], port).into(), Duration::from_secs(1)).ok()?;
    let _ = s.set_read_timeout(Some(Duration::from_secs(5)));
    write!(s, "GET {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n").ok()?;
    let mut buf = String::new();
    let _ = s.read_to_string(&mut buf);
    let code = buf.strip_prefix("HTTP/1.1 ")?.get(..3)?.parse().ok()?;
    let body = buf.split_once("\r\n\r\n").map(|(_, b)| b.to_string()).unwrap_or_default();
    Some((code, body))
}
