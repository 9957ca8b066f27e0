//! A real Kubernetes control plane on loopback for tests and the demo: etcd (Debian's
//! `etcd-server`), kube-apiserver and kube-controller-manager v1.20 built from Debian's source
//! package (`scripts/build-control-plane.sh`, cached under `~/.cache/`), with certificates issued
//! here by rcgen. No kubelet or scheduler runs; [`kubelet::PlayKubelet`] stands in for nodes.
//!
//! Free loopback ports, a temporary directory per control plane, and children that die with the
//! process (see [`spawn`]): parallel runs never collide and nothing is left behind.

pub mod azure;
pub mod brokers;
pub mod faults;
pub mod gate;
pub mod https;
pub mod kms_plugin;
pub mod kubelet;
pub mod leaks;
pub mod operator;
pub mod pki;
pub mod spawn;

use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use anyhow::{bail, Context as _};
use k8s_openapi::jiff::Timestamp;
use rcgen::KeyPair;

/// How to start a control plane.
#[derive(Debug, Clone, Default)]
pub struct Options {
    /// Contents of an `EncryptionConfiguration` for `--encryption-provider-config`.
    pub encryption_config: Option<String>,
}

/// A running etcd + kube-apiserver + kube-controller-manager.
pub struct ControlPlane {
    dir: PathBuf,
    /// Behind locks so that they can be restarted (the Azure emulator restarts the apiserver,
    /// like AKS does; fault trials restart either) while tests hold the control plane shared.
    etcd: Mutex<Process>,
    apiserver: Mutex<Process>,
    controller_manager: Child,
    bin_dir: PathBuf,
    pub etcd_port: u16,
    pub apiserver_port: u16,
}

/// A control-plane process and the flags to start it again with.
struct Process {
    child: Child,
    args: Vec<String>,
}

impl Process {
    /// Stop the process (SIGTERM, SIGKILL after 10 s) and start `bin` again with the same flags.
    fn restart(&mut self, bin: &Path, dir: &Path, name: &str) -> anyhow::Result<()> {
        spawn::stop(&mut self.child, Duration::from_secs(10));
        self.child = start_process(bin, &self.args, dir, name)?;
        Ok(())
    }
}

/// A free TCP port on 127.0.0.1 (the OS picks it; nothing is hard-coded).
/// The repository's top folder (scripts/, crds/, deploy/, examples/ live there).
pub fn repo_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../..").canonicalize().expect("the repository is on disk")
}

pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0").and_then(|l| l.local_addr()).map(|a| a.port()).expect("bind a free loopback port")
}

/// Directory with kube-apiserver and kube-controller-manager: `CSO_KUBE_BIN_DIR`, else built (once)
/// and cached by `scripts/build-control-plane.sh`.
pub fn kube_bin_dir() -> anyhow::Result<PathBuf> {
    if let Ok(dir) = std::env::var("CSO_KUBE_BIN_DIR") {
        return Ok(PathBuf::from(dir));
    }
    let script = repo_root().join("scripts/build-control-plane.sh");
    let out =
        Command::new("bash").arg(&script).stderr(Stdio::inherit()).output().context("run build-control-plane.sh")?;
    if !out.status.success() {
        bail!("{} failed; see its output above", script.display());
    }
    let stdout = String::from_utf8_lossy(&out.stdout);
    let dir = stdout.lines().last().context("build-control-plane.sh printed no directory")?.trim().to_string();
    Ok(PathBuf::from(dir))
}

fn b64(s: &str) -> String {
    use base64::Engine as _;
    base64::engine::general_purpose::STANDARD.encode(s)
}

fn write(path: &Path, contents: &str) -> anyhow::Result<()> {
    std::fs::write(path, contents).with_context(|| format!("write {}", path.display()))
}

fn log_file(dir: &Path, name: &str) -> anyhow::Result<(Stdio, Stdio)> {
    // Append, so a restarted component's earlier log stays readable.
    let f = std::fs::OpenOptions::new().create(true).append(true).open(dir.join(format!("{name}.log")))?;
    Ok((Stdio::from(f.try_clone()?), Stdio::from(f)))
}

fn start_process(bin: &Path, args: &[String], dir: &Path, name: &str) -> anyhow::Result<Child> {
    let (out, err) = log_file(dir, name)?;
    let mut cmd = Command::new(bin);
    cmd.args(args).stdin(Stdio::null()).stdout(out).stderr(err);
    spawn::spawn(cmd).with_context(|| format!("start {}", bin.display()))
}

/// The subject CN of the client certificate kube-apiserver presents to admission webhooks.
pub const WEBHOOK_CLIENT_NAME: &str = "kube-apiserver-webhook-client";
const WEBHOOK_CLIENT_CA_FILE: &str = "webhook-client-ca.crt";

impl ControlPlane {
    /// Start a control plane and wait until the apiserver is ready.
    pub fn start(opts: Options) -> anyhow::Result<Self> {
        let bin_dir = kube_bin_dir()?;
        // Removed on drop or at exit (see spawn::remove_at_exit), unless CSO_TESTBED_KEEP is set.
        let dir = tempfile::Builder::new().prefix("cso-testbed-").tempdir()?.keep();
        spawn::remove_at_exit(&dir);
        let d = dir.as_path();
        let now = Timestamp::now();

        let ca = pki::new_ca("testbed cluster CA", now, 30)?;
        let sans: Vec<String> =
            ["127.0.0.1", "localhost", "kubernetes", "kubernetes.default.svc"].map(String::from).into();
        let serving = pki::issue_leaf(&ca, "kube-apiserver", &sans, pki::Usage::Server, now, 30)?;
        let admin = pki::leaf(&ca, "admin", Some("system:masters"), &[], pki::Usage::Client, now, 30)?;
        let sa = KeyPair::generate()?;
        write(&d.join("ca.crt"), &ca.cert_pem)?;
        write(&d.join("apiserver.crt"), &serving.cert_pem)?;
        write(&d.join("apiserver.key"), &serving.key_pem)?;
        write(&d.join("sa.key"), &sa.serialize_pem())?;
        write(&d.join("sa.pub"), &sa.public_key_pem())?;
        // The client certificate kube-apiserver presents to admission webhooks (from its
        // AdmissionConfiguration), from a CA of its own as a cluster would have: a webhook run
        // with --webhook-client-ca-file answers only it. Webhooks that ask for none get none.
        let webhook_ca = pki::new_ca("testbed webhook client CA", now, 30)?;
        let webhook_client = pki::issue_leaf(&webhook_ca, WEBHOOK_CLIENT_NAME, &[], pki::Usage::Client, now, 30)?;
        write(&d.join(WEBHOOK_CLIENT_CA_FILE), &webhook_ca.cert_pem)?;
        write(
            &d.join("webhook-client.kubeconfig"),
            &format!(
                "apiVersion: v1\nkind: Config\nusers:\n- name: '*'\n  user:\n    client-certificate-data: {}\n    client-key-data: {}\n",
                b64(&webhook_client.cert_pem),
                b64(&webhook_client.key_pem)
            ),
        )?;
        let webhook_admission = format!(
            "  configuration:\n    apiVersion: apiserver.config.k8s.io/v1\n    kind: WebhookAdmissionConfiguration\n    kubeConfigFile: {}\n",
            d.join("webhook-client.kubeconfig").display()
        );
        write(
            &d.join("admission.yaml"),
            &format!(
                "apiVersion: apiserver.config.k8s.io/v1\nkind: AdmissionConfiguration\nplugins:\n- name: ValidatingAdmissionWebhook\n{webhook_admission}- name: MutatingAdmissionWebhook\n{webhook_admission}"
            ),
        )?;

        let (etcd_port, peer_port, apiserver_port) = (free_port(), free_port(), free_port());
        let etcd_url = format!("http://127.0.0.1:{etcd_port}");
        let peer_url = format!("http://127.0.0.1:{peer_port}");
        let etcd_args: Vec<String> = vec![
            format!("--data-dir={}", d.join("etcd").display()),
            "--name=testbed".into(),
            format!("--listen-client-urls={etcd_url}"),
            format!("--advertise-client-urls={etcd_url}"),
            format!("--listen-peer-urls={peer_url}"),
            format!("--initial-advertise-peer-urls={peer_url}"),
            format!("--initial-cluster=testbed={peer_url}"),
            "--log-level=warn".into(),
        ];
        let etcd = start_process(Path::new("/usr/bin/etcd"), &etcd_args, d, "etcd")?;

        let mut apiserver_args: Vec<String> = vec![
            format!("--etcd-servers={etcd_url}"),
            format!("--secure-port={apiserver_port}"),
            "--bind-address=127.0.0.1".into(),
            "--advertise-address=127.0.0.1".into(),
            "--insecure-port=0".into(),
            format!("--cert-dir={}", d.display()),
            format!("--tls-cert-file={}", d.join("apiserver.crt").display()),
            format!("--tls-private-key-file={}", d.join("apiserver.key").display()),
            format!("--client-ca-file={}", d.join("ca.crt").display()),
            format!("--service-account-key-file={}", d.join("sa.pub").display()),
            format!("--service-account-signing-key-file={}", d.join("sa.key").display()),
            "--service-account-issuer=https://kubernetes.default.svc".into(),
            "--authorization-mode=RBAC".into(),
            "--service-cluster-ip-range=10.96.0.0/16".into(),
            "--allow-privileged=true".into(),
            format!("--admission-control-config-file={}", d.join("admission.yaml").display()),
            "--v=1".into(),
        ];
        if let Some(cfg) = &opts.encryption_config {
            write(&d.join("encryption.yaml"), cfg)?;
            apiserver_args.push(format!("--encryption-provider-config={}", d.join("encryption.yaml").display()));
        }
        let apiserver = start_process(&bin_dir.join("kube-apiserver"), &apiserver_args, d, "kube-apiserver")?;

        let kubeconfig = format!(
            "apiVersion: v1\nkind: Config\nclusters:\n- name: testbed\n  cluster:\n    server: https://127.0.0.1:{apiserver_port}\n    certificate-authority-data: {}\nusers:\n- name: admin\n  user:\n    client-certificate-data: {}\n    client-key-data: {}\ncontexts:\n- name: testbed\n  context: {{cluster: testbed, user: admin, namespace: default}}\ncurrent-context: testbed\n",
            b64(&ca.cert_pem),
            b64(&admin.cert_pem),
            b64(&admin.key_pem)
        );
        write(&d.join("kubeconfig"), &kubeconfig)?;

        let mut cp = ControlPlane {
            dir,
            etcd: Mutex::new(Process { child: etcd, args: etcd_args }),
            apiserver: Mutex::new(Process { child: apiserver, args: apiserver_args }),
            controller_manager: Command::new("true").spawn()?, // replaced below once the apiserver is up
            bin_dir,
            etcd_port,
            apiserver_port,
        };
        cp.wait_ready(Duration::from_secs(90))?;
        let _ = cp.controller_manager.wait();
        let kcm_args: Vec<String> = vec![
            format!("--kubeconfig={}", cp.kubeconfig_path().display()),
            format!("--service-account-private-key-file={}", cp.dir.as_path().join("sa.key").display()),
            format!("--root-ca-file={}", cp.dir.as_path().join("ca.crt").display()),
            "--leader-elect=false".into(),
            "--controllers=*,-nodeipam,-nodelifecycle,-cloud-node-lifecycle".into(),
            "--port=0".into(),
            "--secure-port=0".into(),
        ];
        cp.controller_manager = start_process(
            &cp.bin_dir.join("kube-controller-manager"),
            &kcm_args,
            cp.dir.as_path(),
            "kube-controller-manager",
        )?;
        Ok(cp)
    }

    /// Path of an admin kubeconfig for this control plane.
    pub fn kubeconfig_path(&self) -> PathBuf {
        self.dir.as_path().join("kubeconfig")
    }

    /// Write `file_name` (in [`Self::dir`]): a kubeconfig that authenticates as the ServiceAccount
    /// `namespace/name` with a bearer token from the TokenRequest API, valid for a day: what the
    /// kubelet projects into a pod running as that ServiceAccount, so the API server
    /// authenticates and authorizes it as it would in a cluster. The ServiceAccount must exist.
    pub fn service_account_kubeconfig(&self, namespace: &str, name: &str, file_name: &str) -> anyhow::Result<PathBuf> {
        use k8s_openapi::api::authentication::v1::{TokenRequest, TokenRequestSpec};
        use k8s_openapi::api::core::v1::ServiceAccount;
        // Its own thread and runtime: callers are sync, some of them inside a runtime.
        let token = std::thread::scope(|scope| {
            scope
                .spawn(|| -> anyhow::Result<String> {
                    let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build()?;
                    runtime.block_on(async {
                        let accounts: kube::Api<ServiceAccount> =
                            kube::Api::namespaced(self.client().await?, namespace);
                        let spec = TokenRequestSpec { expiration_seconds: Some(86_400), ..Default::default() };
                        let request = TokenRequest { spec: Some(spec), ..Default::default() };
                        let answer = accounts.create_token_request(name, &Default::default(), &request).await?;
                        answer.status.and_then(|s| s.token).context("the TokenRequest answer holds no token")
                    })
                })
                .join()
                .map_err(|_| anyhow::anyhow!("the TokenRequest thread panicked"))?
        })
        .with_context(|| format!("a token for ServiceAccount {namespace}/{name}"))?;
        let mut kubeconfig: serde_yaml::Value =
            serde_yaml::from_str(&std::fs::read_to_string(self.kubeconfig_path())?)?;
        let users = kubeconfig.get_mut("users").and_then(|u| u.as_sequence_mut()).context("kubeconfig has users")?;
        for user in users {
            let mut credentials = serde_yaml::Mapping::new();
            credentials.insert("token".into(), token.clone().into());
            user["user"] = credentials.into();
        }
        let path = self.dir.as_path().join(file_name);
        write(&path, &serde_yaml::to_string(&kubeconfig)?)?;
        Ok(path)
    }

    /// Directory holding the control plane's files and logs.
    pub fn dir(&self) -> &Path {
        self.dir.as_path()
    }

    /// The CA of the client certificate kube-apiserver presents to admission webhooks (whose
    /// subject CN is [`WEBHOOK_CLIENT_NAME`]), for `--webhook-client-ca-file`.
    pub fn webhook_client_ca_path(&self) -> PathBuf {
        self.dir.as_path().join(WEBHOOK_CLIENT_CA_FILE)
    }

    /// `http://127.0.0.1:<port>` of etcd (for etcdctl).
    pub fn etcd_endpoint(&self) -> String {
        format!("http://127.0.0.1:{}", self.etcd_port)
    }

    /// A kube client with admin rights.
    pub async fn client(&self) -> anyhow::Result<kube::Client> {
        client_from(&self.kubeconfig_path()).await
    }

    /// Run kubectl against this control plane.
    pub fn kubectl(&self, args: &[&str]) -> Output {
        self.kubectl_with_stdin(args, None)
    }

    /// Run kubectl with `stdin` as its standard input. The testbed restarts kube-apiserver
    /// itself (the Azure emulator applying a KMS change, a fault trial): a command that finds it
    /// down (connection refused: nothing was sent) runs again once it is ready, as a user would.
    pub fn kubectl_with_stdin(&self, args: &[&str], stdin: Option<&str>) -> Output {
        let out = self.kubectl_once(args, stdin);
        // kubectl says "The connection to the server ... was refused" when discovery finds the
        // server down, "dial tcp ...: connect: connection refused" when a request does.
        let stderr = String::from_utf8_lossy(&out.stderr);
        let refused = stderr.contains("was refused") || stderr.contains("connection refused");
        if !out.status.success() && refused && self.wait_ready(Duration::from_secs(90)).is_ok() {
            return self.kubectl_once(args, stdin);
        }
        out
    }

    fn kubectl_once(&self, args: &[&str], stdin: Option<&str>) -> Output {
        use std::io::Write;
        let mut cmd = Command::new("kubectl");
        cmd.env("KUBECONFIG", self.kubeconfig_path()).args(args).stdout(Stdio::piped()).stderr(Stdio::piped());
        cmd.stdin(if stdin.is_some() { Stdio::piped() } else { Stdio::null() });
        let mut child = cmd.spawn().expect("kubectl is installed");
        if let Some(input) = stdin {
            child.stdin.take().expect("piped").write_all(input.as_bytes()).expect("write kubectl stdin");
        }
        child.wait_with_output().expect("kubectl runs")
    }

    /// Wait until `/readyz` answers ok, or fail with the apiserver's log tail.
    pub fn wait_ready(&self, timeout: Duration) -> anyhow::Result<()> {
        let deadline = Instant::now() + timeout;
        loop {
            if let Ok(Some(status)) = self.apiserver.lock().expect("apiserver lock").child.try_wait() {
                bail!("kube-apiserver exited ({status}):\n{}", self.log_tail("kube-apiserver", 30));
            }
            let out = self.kubectl_once(&["get", "--raw", "/readyz"], None);
            if out.status.success() && String::from_utf8_lossy(&out.stdout).trim() == "ok" {
                return Ok(());
            }
            if Instant::now() > deadline {
                bail!("kube-apiserver not ready after {timeout:?}:\n{}", self.log_tail("kube-apiserver", 30));
            }
            std::thread::sleep(Duration::from_millis(250));
        }
    }

    /// Last `n` lines of a component's log.
    pub fn log_tail(&self, name: &str, n: usize) -> String {
        let text = std::fs::read_to_string(self.dir.as_path().join(format!("{name}.log"))).unwrap_or_default();
        last_lines(&text, n)
    }

    /// Replace the encryption configuration; it takes effect at the next apiserver (re)start (the
    /// v1.20 apiserver does not reload it).
    pub fn set_encryption_config(&self, config: &str) -> anyhow::Result<()> {
        let path = self.dir.join("encryption.yaml");
        write(&path, config)?;
        let flag = format!("--encryption-provider-config={}", path.display());
        let mut apiserver = self.apiserver.lock().expect("apiserver lock");
        if !apiserver.args.contains(&flag) {
            apiserver.args.push(flag);
        }
        Ok(())
    }

    /// The raw value etcd holds for a key (to see how the apiserver stored it).
    pub fn etcd_get(&self, key: &str) -> anyhow::Result<Option<Vec<u8>>> {
        let v: serde_json::Value = serde_json::from_slice(&self.etcdctl(&["get", key, "-w", "json"])?)?;
        use base64::Engine as _;
        let value =
            v["kvs"][0]["value"].as_str().map(|b| base64::engine::general_purpose::STANDARD.decode(b)).transpose()?;
        Ok(value)
    }

    /// Every key under `prefix` with its raw value, in one etcd read.
    pub fn etcd_get_prefix(&self, prefix: &str) -> anyhow::Result<Vec<(String, Vec<u8>)>> {
        use base64::Engine as _;
        let v: serde_json::Value = serde_json::from_slice(&self.etcdctl(&["get", prefix, "--prefix", "-w", "json"])?)?;
        let b64 = base64::engine::general_purpose::STANDARD;
        let mut kvs = Vec::new();
        for kv in v["kvs"].as_array().cloned().unwrap_or_default() {
            let key = String::from_utf8(b64.decode(kv["key"].as_str().unwrap_or_default())?)?;
            kvs.push((key, b64.decode(kv["value"].as_str().unwrap_or_default())?));
        }
        Ok(kvs)
    }

    /// Compact etcd to its current revision and defragment it, as a cluster's periodic compaction
    /// does: a measurement after many rewrites then starts from a store of the same size as one
    /// before them.
    pub fn compact_etcd(&self) -> anyhow::Result<()> {
        let status: serde_json::Value = serde_json::from_slice(&self.etcdctl(&["endpoint", "status", "-w", "json"])?)?;
        let revision = status[0]["Status"]["header"]["revision"].as_i64().context("etcd reports its revision")?;
        if let Err(e) = self.etcdctl(&["compact", &revision.to_string()]) {
            // The API server's own compaction may have got there first.
            if !e.to_string().contains("compacted") {
                return Err(e);
            }
        }
        self.etcdctl(&["defrag"])?;
        Ok(())
    }

    /// `etcdctl <args>` against this control plane's etcd: its standard output, or an error with
    /// what it printed on standard error.
    fn etcdctl(&self, args: &[&str]) -> anyhow::Result<Vec<u8>> {
        let out = Command::new("etcdctl")
            .env("ETCDCTL_API", "3")
            .args(["--endpoints", &self.etcd_endpoint()])
            .args(args)
            .output()
            .context("run etcdctl (Debian package etcd-client)")?;
        anyhow::ensure!(out.status.success(), "etcdctl {args:?} failed: {}", String::from_utf8_lossy(&out.stderr));
        Ok(out.stdout)
    }

    /// Stop kube-apiserver, start it again with the same flags, and wait until it is ready.
    /// The stop and the start happen under one lock: two restarts at once (the Azure emulator's
    /// and a fault trial's) follow each other instead of starting two apiservers.
    pub fn restart_apiserver(&self) -> anyhow::Result<()> {
        let bin = self.bin_dir.join("kube-apiserver");
        self.apiserver.lock().expect("apiserver lock").restart(&bin, self.dir.as_path(), "kube-apiserver")?;
        self.wait_ready(Duration::from_secs(90))
    }

    /// Stop etcd (SIGTERM; its data directory stays), start it again with the same flags, and
    /// wait until the apiserver, which reconnects on its own, is ready again.
    pub fn restart_etcd(&self) -> anyhow::Result<()> {
        self.etcd.lock().expect("etcd lock").restart(Path::new("/usr/bin/etcd"), self.dir.as_path(), "etcd")?;
        self.wait_ready(Duration::from_secs(90))
    }
}

impl Drop for ControlPlane {
    fn drop(&mut self) {
        let grace = Duration::from_secs(5);
        spawn::stop(&mut self.controller_manager, grace);
        if let Ok(apiserver) = self.apiserver.get_mut() {
            spawn::stop(&mut apiserver.child, grace);
        }
        if let Ok(etcd) = self.etcd.get_mut() {
            spawn::stop(&mut etcd.child, grace);
        }
        if std::env::var_os("CSO_TESTBED_KEEP").is_none() {
            let _ = std::fs::remove_dir_all(&self.dir);
        }
    }
}

/// Name of the `i`-th Secret made by [`create_numbered_secrets`] with `prefix`.
/// The last `n` lines of `text`.
pub fn last_lines(text: &str, n: usize) -> String {
    let lines: Vec<&str> = text.lines().collect();
    lines[lines.len().saturating_sub(n)..].join("\n")
}

pub fn numbered_name(prefix: &str, i: usize) -> String {
    format!("{prefix}-{i:05}")
}

/// What the `i`-th Secret made by [`create_numbered_secrets`] holds under key `v`.
pub fn numbered_value(i: usize) -> String {
    format!("original-{i}")
}

/// Create namespace `ns` (if missing) and `n` Secrets in it named [`numbered_name`] holding
/// [`numbered_value`], 16 requests at a time: the bulk data of re-encryption and fault tests.
pub async fn create_numbered_secrets(client: &kube::Client, ns: &str, prefix: &str, n: usize) -> anyhow::Result<()> {
    use futures::StreamExt as _;
    use k8s_openapi::api::core::v1::{Namespace, Secret};
    use kube::api::{ObjectMeta, PostParams};
    let namespace =
        Namespace { metadata: ObjectMeta { name: Some(ns.into()), ..Default::default() }, ..Default::default() };
    match kube::Api::<Namespace>::all(client.clone()).create(&PostParams::default(), &namespace).await {
        Ok(_) => {}
        Err(kube::Error::Api(e)) if e.code == 409 => {}
        Err(e) => return Err(e).with_context(|| format!("create namespace {ns}")),
    }
    let api: kube::Api<Secret> = kube::Api::namespaced(client.clone(), ns);
    let created: Vec<kube::Result<Secret>> = futures::stream::iter(0..n)
        .map(|i| {
            let api = api.clone();
            async move {
                let s = Secret {
                    metadata: ObjectMeta { name: Some(numbered_name(prefix, i)), ..Default::default() },
                    data: Some([("v".to_string(), k8s_openapi::ByteString(numbered_value(i).into_bytes()))].into()),
                    ..Default::default()
                };
                api.create(&PostParams::default(), &s).await
            }
        })
        .buffer_unordered(16)
        .collect()
        .await;
    created.into_iter().collect::<kube::Result<Vec<_>>>().with_context(|| format!("create Secrets in {ns}"))?;
    Ok(())
}

/// A kube client acting as the kubeconfig at `path` says (e.g. one from
/// [`ControlPlane::service_account_kubeconfig`]).
pub async fn client_from(path: &Path) -> anyhow::Result<kube::Client> {
    let _ = rustls::crypto::ring::default_provider().install_default();
    let kubeconfig = kube::config::Kubeconfig::read_from(path)?;
    let config = kube::Config::from_custom_kubeconfig(kubeconfig, &Default::default()).await?;
    Ok(kube::Client::try_from(config)?)
}

/// Poll `check` until it yields a value, or fail after `timeout` saying what was awaited and
/// what was last seen.
pub async fn wait_until<T, F, Fut>(timeout: Duration, what: &str, mut check: F) -> anyhow::Result<T>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Result<T, String>>,
{
    let deadline = Instant::now() + timeout;
    loop {
        match check().await {
            Ok(v) => return Ok(v),
            Err(last) if Instant::now() > deadline => {
                bail!("timed out after {timeout:?} waiting for {what}; last seen: {last}")
            }
            Err(_) => tokio::time::sleep(Duration::from_millis(200)).await,
        }
    }
}
