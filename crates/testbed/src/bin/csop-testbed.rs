//! `csop-testbed demo`: the operator's whole job on a local control plane, from a fresh machine.
//! Starts a KMS plugin, etcd + kube-apiserver (Secrets encrypted with KMS) + kube-controller-manager
//! on loopback and the local Azure emulator, installs the CRDs and the webhook, runs the operator
//! and the play kubelet, applies `examples/`, shows an invalid example being refused, prints
//! `kubectl get clustersecurity` until everything settles, and shows a broker presenting the
//! certificate of a rotation (with the play kubelet's broker stand-ins).

use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Context as _;
use clap::Parser;
use cluster_security_testbed::azure::{kms_hook, AzureEmulator, Spec};
use cluster_security_testbed::kms_plugin::KmsPlugin;
use cluster_security_testbed::kubelet::PlayKubelet;
use cluster_security_testbed::operator::{self, Operator};
use cluster_security_testbed::{brokers, free_port, last_lines, pki, ControlPlane, Options};

#[derive(Parser)]
#[command(about = "Local control plane for the cluster-security-operator demo")]
enum Cmd {
    /// Run the demo; keeps the control plane up until Ctrl-C unless --exit is given.
    Demo {
        /// Stop everything once the resources have settled (for CI).
        #[arg(long)]
        exit: bool,
        /// How long to wait for the resources to settle.
        #[arg(long, default_value = "240")]
        settle_seconds: u64,
    },
}

fn say(msg: &str) {
    println!("\n==> {msg}");
}

fn show(out: &std::process::Output) -> String {
    format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr))
}

fn operator_binary() -> anyhow::Result<PathBuf> {
    let exe = std::env::current_exe()?;
    let bin = exe.with_file_name("cluster-security-operator");
    anyhow::ensure!(bin.exists(), "{} not found: build it with `cargo build --bins`", bin.display());
    Ok(bin)
}

/// Every object of ours reports the generation it last reconciled.
fn settled(cp: &ControlPlane) -> bool {
    let out = cp.kubectl(&[
        "get",
        "clustersecurity",
        "-A",
        "-o",
        "jsonpath={range .items[*]}{.metadata.generation}={.status.observedGeneration}={.status.currentOperation.operationId} {end}",
    ]);
    let text = String::from_utf8_lossy(&out.stdout);
    // The KmsKeyVaultMode example must have switched the vault to Private.
    let kms =
        cp.kubectl(&["get", "kmsmode", "cluster", "-o", "jsonpath={.status.conditions[?(@.type==\"Ready\")].status}"]);
    let kms_ready = String::from_utf8_lossy(&kms.stdout).trim() == "True";
    let reconciled = kms_ready
        && out.status.success()
        && !text.trim().is_empty()
        && text.split_whitespace().all(|p| {
            // generation observed, and no operation still running
            let parts: Vec<&str> = p.split('=').collect();
            parts.len() == 3 && parts[0] == parts[1] && parts[2].is_empty()
        });
    // ...and the play kubelet brought the example brokers up.
    let sts = cp.kubectl(&[
        "get",
        "statefulset",
        "orders-kafka",
        "-n",
        "kafka",
        "-o",
        "jsonpath={.status.readyReplicas}/{.spec.replicas}",
    ]);
    let sts = String::from_utf8_lossy(&sts.stdout);
    reconciled && sts.split_once('/').is_some_and(|(a, b)| a == b)
}

/// What a reader of a failed run needs to find why it did not settle (the control plane's
/// directory is removed on exit, and in CI the machine with it): the pods, the events, the
/// KmsKeyVaultMode's conditions, the play kubelet's rounds and the tails of the logs.
fn diagnose(cp: &ControlPlane, op: &Operator, kubelet: &PlayKubelet) {
    say("the resources did not settle; what the cluster shows");
    for args in [
        &["get", "pods", "-n", "kafka", "-o", "wide"][..],
        &["get", "events", "-A", "--sort-by=.lastTimestamp"],
        &["describe", "kmsmode", "cluster"],
        &["get", "clustersecurity", "-A", "-o", "jsonpath={range .items[*]}{.kind}/{.metadata.name}: {range .status.conditions[*]}{.type}={.status} {.reason}: {.message}; {end}{\"\\n\"}{end}"],
    ] {
        println!("--- kubectl {}", args.join(" "));
        println!("{}", last_lines(&show(&cp.kubectl(args)), 60));
    }
    println!("--- {}", kubelet.ticks());
    for name in ["kube-controller-manager", "kube-apiserver"] {
        // Their lines can run to kilobytes (whole objects in an event's error).
        let tail: Vec<String> = cp.log_tail(name, 30).lines().map(|l| l.chars().take(400).collect()).collect();
        println!("--- {name} log, last 30 lines\n{}", tail.join("\n"));
    }
    println!("--- operator log, last 40 lines\n{}", last_lines(&op.log_text(), 40));
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let Cmd::Demo { exit, settle_seconds } = Cmd::parse();
    let root = cluster_security_testbed::repo_root();

    say("starting a KMS v1 plugin (gRPC on an abstract unix socket) for etcd encryption of Secrets");
    let plugin = KmsPlugin::start().await?;
    say("starting etcd, kube-apiserver and kube-controller-manager on loopback, Secrets encrypted with KMS (first run builds them: ~5-8 min)");
    let vaults = ["orders-kv"];
    let cp = Arc::new(ControlPlane::start(Options {
        encryption_config: Some(plugin.encryption_config(Some("orders-kv"), &vaults)),
    })?);
    let kubeconfig = cp.kubeconfig_path();
    println!("    control plane up; files and logs in {}", cp.dir().display());

    say("starting the LOCAL AZURE EMULATOR (Azure itself cannot be reached from here): Resource Manager, Entra ID and Key Vault contracts over HTTPS; like AKS, a KMS change rewrites the apiserver's encryption config and restarts it");
    let mut spec = Spec::new("orders-aks", &vaults, "0123abcd");
    spec.subscription_id = "00000000-0000-0000-0000-000000000000".into();
    spec.resource_group = "orders-rg".into();
    spec.kms = serde_json::json!({"enabled": true, "keyId": spec.key_id("orders-kv", "0123abcd"), "keyVaultNetworkAccess": "Public", "keyVaultResourceId": ""});
    let hook = kms_hook(cp.clone(), plugin.endpoint.clone(), vaults.iter().map(|v| v.to_string()).collect());
    let emu = AzureEmulator::start(spec.clone(), Some(hook)).await?;
    println!("    emulator at {}; cluster orders-aks has KMS on with key vault orders-kv, Public", emu.url);

    say("installing the CRDs and the validating webhook configuration (URL webhook on 127.0.0.1)");
    let webhook_port = free_port();
    operator::install(&cp, Some(webhook_port))?;
    let args = emu.operator_args(&cp)?;

    say("starting the operator (cluster-security-operator run), pointed at the emulator");
    let op = Operator::start(&cp, &operator_binary()?, webhook_port, &args)?;
    println!("    operator ready; log: {}", op.log.display());

    say(
        "starting the play kubelet: it STANDS IN FOR NODES (binds pods, reports them Running/Ready); no containers run: \
         each pod gets a loopback IP where a broker stand-in serves real TLS from what the pod mounts",
    );
    let client = cp.client().await?;
    let kubelet = PlayKubelet::start(client.clone(), "play-node").await?;
    // As AKS labels its nodes: the operator switches KMS only on the cluster it runs in.
    spec.label_node(&client, "play-node").await?;

    say("kubectl apply -k examples/ && kubectl apply -f examples/kmskeyvaultmode.yaml");
    let examples = root.join("examples");
    let kms = examples.join("kmskeyvaultmode.yaml");
    let mut applied = false;
    let deadline = Instant::now() + Duration::from_secs(30);
    while !applied {
        // The webhook's caBundle lands a moment after the operator starts.
        let mut out = cp.kubectl(&["apply", "-k", examples.to_str().context("utf-8 path")?]);
        if out.status.success() {
            out = cp.kubectl(&["apply", "-f", kms.to_str().context("utf-8 path")?]);
        }
        applied = out.status.success();
        if applied || Instant::now() > deadline {
            print!("{}", show(&out));
            anyhow::ensure!(applied, "applying examples/ failed");
        } else {
            tokio::time::sleep(Duration::from_millis(500)).await;
        }
    }

    say("an invalid example is refused by the webhook: kubectl apply -f examples/invalid/csp-scram-plaintext.yaml");
    let bad = examples.join("invalid/csp-scram-plaintext.yaml");
    // The KMS example restarts kube-apiserver (as AKS does) meanwhile: ask again until it answers.
    let deadline = Instant::now() + Duration::from_secs(120);
    loop {
        let out = cp.kubectl(&["apply", "-f", bad.to_str().context("utf-8 path")?]);
        anyhow::ensure!(!out.status.success(), "the invalid example was accepted");
        let refused = String::from_utf8_lossy(&out.stderr).contains("denied the request");
        if refused || Instant::now() > deadline {
            print!("{}", show(&out));
            anyhow::ensure!(refused, "the invalid example was not refused by the webhook");
            break;
        }
        tokio::time::sleep(Duration::from_secs(1)).await;
    }

    say("kubectl get clustersecurity -A (until every object reports its current generation, no operation runs, and the brokers are ready)");
    let deadline = Instant::now() + Duration::from_secs(settle_seconds);
    loop {
        let done = settled(&cp);
        if done || Instant::now() > deadline {
            print!("{}", show(&cp.kubectl(&["get", "clustersecurity", "-A"])));
            print!("{}", show(&cp.kubectl(&["get", "statefulset", "-n", "kafka"])));
            if !done {
                diagnose(&cp, &op, &kubelet);
            }
            anyhow::ensure!(
                done,
                "resources did not settle within {settle_seconds}s; operator log: {}",
                op.log.display()
            );
            break;
        }
        tokio::time::sleep(Duration::from_secs(1)).await;
    }

    say("what a broker pod mounts from the operator (spec.mounts): kubectl get pod orders-kafka-0 -n kafka -o jsonpath=…");
    let mounts = cp.kubectl(&[
        "get",
        "pod",
        "orders-kafka-0",
        "-n",
        "kafka",
        "-o",
        "jsonpath={range .spec.containers[?(@.name==\"kafka\")].volumeMounts[*]}    {.mountPath} <- {.name}{\"\\n\"}{end}",
    ]);
    print!("{}", show(&mounts));
    let text = String::from_utf8_lossy(&mounts.stdout);
    anyhow::ensure!(
        ["config", "pod", "client-ca", "external-tls", "internal-tls"]
            .iter()
            .all(|d| text.contains(&format!("/etc/kafka/security/{d} <- csop-"))),
        "the broker pod does not mount the operator's artefacts:\n{text}"
    );

    say("what each broker presents on its TLS listener (a rustls client trusting ConfigMap orders-kafka-external-trust)");
    let before = presented(&cp).await?;
    say("rotate the external certificate: kubectl patch certrot orders -n kafka -p '{\"spec\":{\"external\":{\"label\":\"demo-rotated\"}}}'");
    let patch = r#"{"spec":{"external":{"label":"demo-rotated"}}}"#;
    let out = cp.kubectl(&["patch", "certrot", "orders", "-n", "kafka", "--type=merge", "-p", patch]);
    print!("{}", show(&out));
    anyhow::ensure!(out.status.success(), "the rotation could not be requested");
    let deadline = Instant::now() + Duration::from_secs(settle_seconds);
    let path = "jsonpath={.status.operations[0].targetInfo.externalLabel}={.status.operations[0].operationState}={.status.operations[0].verification}";
    loop {
        let out = cp.kubectl(&["get", "certrot", "orders", "-n", "kafka", "-o", path]);
        let text = String::from_utf8_lossy(&out.stdout).to_string();
        let parts: Vec<&str> = text.splitn(3, '=').collect();
        let done = parts.len() == 3 && parts[0] == "demo-rotated" && parts[1] == "UPDATE_COMPLETE";
        if done || Instant::now() > deadline {
            anyhow::ensure!(done, "the rotation did not complete: {text}; operator log: {}", op.log.display());
            println!("    operation complete; checked on the wire: {}", parts[2]);
            break;
        }
        tokio::time::sleep(Duration::from_secs(1)).await;
    }
    let after = presented(&cp).await?;
    anyhow::ensure!(
        before.iter().zip(&after).all(|(b, a)| b != a),
        "a broker still presents the certificate from before the rotation"
    );

    if exit {
        say("demo finished; stopping everything");
        return Ok(());
    }
    say("the control plane keeps running. In another shell:");
    println!("    export KUBECONFIG={}", kubeconfig.display());
    println!("    kubectl get clustersecurity -A");
    println!("    kubectl describe csp orders -n kafka");
    println!("    kubectl describe kmsmode cluster");
    println!("    kubectl patch kmsmode cluster --type=merge -p '{{\"spec\":{{\"networkAccess\":\"Public\"}}}}'");
    println!("Press Ctrl-C to stop the control plane, the operator and the play kubelet.");
    // Ctrl-C or SIGTERM: return normally so every process and file is cleaned up.
    shutdown_signal().await;
    say("stopping");
    Ok(())
}

/// What every broker pod presents on 9094 to a client that trusts the published bundle and checks
/// the pod's DNS name, once each presents the certificate of the TLS Secret (asked again for up to
/// 30 s: a pod may be starting); printed. SHA-256 fingerprints by pod.
async fn presented(cp: &ControlPlane) -> anyhow::Result<Vec<String>> {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        match presented_once(cp).await {
            Ok((lines, fingerprints)) => {
                println!("{lines}");
                return Ok(fingerprints);
            }
            Err(e) if Instant::now() > deadline => return Err(e),
            Err(_) => tokio::time::sleep(Duration::from_secs(1)).await,
        }
    }
}

async fn presented_once(cp: &ControlPlane) -> anyhow::Result<(String, Vec<String>)> {
    use base64::Engine as _;
    let jsonpath = |args: &[&str]| String::from_utf8_lossy(&cp.kubectl(args).stdout).to_string();
    let trust = jsonpath(&[
        "get",
        "configmap",
        "orders-kafka-external-trust",
        "-n",
        "kafka",
        "-o",
        "jsonpath={.data.ca\\.crt}",
    ]);
    let secret =
        jsonpath(&["get", "secret", "orders-kafka-external-tls", "-n", "kafka", "-o", "jsonpath={.data.tls\\.crt}"]);
    let expected =
        pki::pem_fingerprint(&String::from_utf8(base64::engine::general_purpose::STANDARD.decode(secret.trim())?)?)?;
    let (mut lines, mut fingerprints) = (Vec::new(), Vec::new());
    for pod in ["orders-kafka-0", "orders-kafka-1", "orders-kafka-2"] {
        let ip: std::net::IpAddr =
            jsonpath(&["get", "pod", pod, "-n", "kafka", "-o", "jsonpath={.status.podIP}"]).trim().parse()?;
        let name = format!("{pod}.orders-kafka.kafka.svc");
        let der = brokers::trusted_certificate(std::net::SocketAddr::new(ip, 9094), &trust, &name)
            .await
            .with_context(|| format!("{name} ({ip}:9094)"))?;
        let (_, cert) = x509_parser::parse_x509_certificate(&der)?;
        let fingerprint = pki::fingerprint(&der);
        lines.push(format!(
            "    {name} ({ip}:9094): serial {}, SHA-256 {}…",
            cert.raw_serial_as_string(),
            &fingerprint[..23]
        ));
        anyhow::ensure!(
            fingerprint == expected,
            "{pod} does not present the certificate of Secret orders-kafka-external-tls"
        );
        fingerprints.push(fingerprint);
    }
    Ok((lines.join("\n"), fingerprints))
}

/// SIGTERM or Ctrl-C.
async fn shutdown_signal() {
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()).expect("SIGTERM handler");
    tokio::select! {
        _ = term.recv() => {}
        _ = tokio::signal::ctrl_c() => {}
    }
}
