//! KmsKeyVaultMode end to end, against a real kube-apiserver + etcd whose Secrets are encrypted by
//! a KMS v1 plugin, and the local Azure emulator that, like AKS, reconfigures that apiserver's
//! encryption (and restarts it) when KMS is turned on or off. etcd is read directly to see how
//! every Secret is stored.
//!
//! One control plane, the phases in order:
//! 0. The cluster's nodes belong to another managed cluster than `spec.provider` names: Stalled
//!    `ForeignCluster`, no cloud write, its events in the operator's namespace (not `default`).
//!    Then no labelled node and no FQDN match: Stalled `ForeignCluster` ("cannot tell", naming
//!    both and the override), still no cloud write.
//! 1. With the override annotation, Public → Private (a Warning event says the check was
//!    skipped) with another writer updating and deleting Secrets meanwhile: the five steps, every
//!    Secret plaintext after the disable step, KMS-encrypted at the end, the writer's last writes
//!    kept and deleted Secrets still deleted.
//! 2. Private → Public without the override: the managed cluster's FQDN is the operator's API
//!    server host.
//! 3. DisableKms fails: the Secrets are still rewritten, then the operation ends UPDATE_FAILED
//!    (the nodes now carry the managed cluster's label: that is what the check saw).
//! 4. SIGKILL of the operator in the middle of a Secret rewrite: it resumes, not starts over.
//! 5. The vault PATCH refused twice: retried with backoff, the switch completes; the key of
//!    the private vault read through Resource Manager; the previous key remembered and checked.
//! 6. EnableKms refused for good: four tries, then a rollback to the source settings — KMS on,
//!    every Secret KMS-encrypted, UPDATE_FAILED `RolledBack`, EncryptionDisabled back to False.
//! 7. A Secret rewrite refused by a policy webhook: the step is retried, the switch completes.
//! 8. Deleted while KMS is off (and its spec pointed at another cluster meanwhile): the finalizer
//!    holds the object until the switch is done, on the cluster it was recorded for.
//! 9. Deleted while idle: no cloud call.
//! 10. A second KmsKeyVaultMode for the same cluster: refused by the webhook; with the webhook
//!     gone, Stalled `Conflict` by the controller, with no cloud call.
//! 11. The operator's identity lacks `Microsoft.KeyVault/vaults/write` (Azure's permissions read):
//!     Stalled `MissingPermission` naming it, no cloud write, KMS never off.
//! 12. The vault PATCH denied for good by Azure Policy (403 `RequestDisallowedByPolicy`), and the
//!     permissions unreadable (the switch goes ahead, a Warning says so): four attempts, then the
//!     rollback without the refused call — KMS on as before, every Secret KMS-encrypted, KMS off
//!     for less than the default `rollbackAfterSeconds`.

use std::collections::BTreeMap;
use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use cluster_security_api::{
    KeyCheckResult, KmsKeyVaultMode, KmsKeyVaultModeStatus, Operation, OperationState, StepName, StepState,
};
use cluster_security_testbed::azure::{kms_hook, AzureEmulator, Spec};
use cluster_security_testbed::gate::{self, SecretGate};
use cluster_security_testbed::kms_plugin::{self, KmsPlugin};
use cluster_security_testbed::leaks;
use cluster_security_testbed::operator::{self, Operator};
use cluster_security_testbed::{client_from, create_numbered_secrets, free_port, wait_until, ControlPlane, Options};
use k8s_openapi::api::core::v1::Secret;
use k8s_openapi::ByteString;
use kube::api::{DeleteParams, PostParams};
use kube::Api;
use serde_json::json;

/// Secrets created up front, spread over three namespaces.
const SECRETS: usize = 3000;
const WRITER_NS: &str = "kms-writer";
const WRITER_SECRETS: usize = 10;
const DOOMED_NS: &str = "kms-doomed";
const DOOMED_SECRETS: usize = 20;

fn kms_yaml(spec: &Spec, vault: &str, mode: &str, reencryption: &str) -> String {
    format!(
        "apiVersion: clustersecurity.io/v1alpha1\nkind: KmsKeyVaultMode\nmetadata: {{name: cluster}}\nspec:\n  networkAccess: {mode}\n  keyId: {}\n  keyVaultResourceId: {}\n  provider:\n    azure: {{subscriptionId: {}, resourceGroup: {}, clusterName: {}}}\n  reencryption: {reencryption}\n",
        spec.key_id(vault, "v1"),
        spec.vault_resource_id(vault),
        spec.subscription_id,
        spec.resource_group,
        spec.cluster_name
    )
}

fn apply(cp: &ControlPlane, manifest: &str) {
    let out = cp.kubectl_with_stdin(&["apply", "-f", "-"], Some(manifest));
    assert!(out.status.success(), "kubectl apply failed: {}", String::from_utf8_lossy(&out.stderr));
}

async fn status(api: &Api<KmsKeyVaultMode>) -> Result<(Option<i64>, KmsKeyVaultModeStatus), String> {
    let o = api.get("cluster").await.map_err(|e| e.to_string())?;
    Ok((o.metadata.generation, o.status.unwrap_or_default()))
}

/// Wait until the operation for the current generation has ended; returns it with the status.
async fn wait_operation_end(
    cp: &ControlPlane,
    secs: u64,
) -> (Operation<cluster_security_api::KmsSettings>, KmsKeyVaultModeStatus) {
    wait_until(Duration::from_secs(secs), "KmsKeyVaultMode operation ends", || async {
        let api: Api<KmsKeyVaultMode> = Api::all(cp.client().await.map_err(|e| e.to_string())?);
        let (generation, s) = status(&api).await?;
        match s.operations.first() {
            Some(op)
                if op.generation == generation && op.operation_state.is_terminal() && s.current_operation.is_none() =>
            {
                Ok((op.clone(), s.clone()))
            }
            _ => Err(format!(
                "phase {:?}, progress {:?}, steps {:?}",
                s.phase,
                s.progress,
                s.steps.iter().map(|x| (x.name, x.state)).collect::<Vec<_>>()
            )),
        }
    })
    .await
    .unwrap()
}

/// How etcd stores every Secret: `kms:<vault>`, `plain` or `other`.
fn etcd_secrets(cp: &ControlPlane) -> Vec<(String, String)> {
    cp.etcd_get_prefix("/registry/secrets/")
        .unwrap()
        .into_iter()
        .map(|(k, v)| {
            let how = ["kv-orders", "kv-other"]
                .iter()
                .find(|vault| kms_plugin::stored_with_kms(&v, vault))
                .map(|vault| format!("kms:{vault}"))
                .unwrap_or_else(|| if kms_plugin::stored_plain(&v) { "plain".into() } else { "other".into() });
            (k, how)
        })
        .collect()
}

fn assert_all_stored(cp: &ControlPlane, want: &str, when: &str) {
    let all = etcd_secrets(cp);
    assert!(all.len() >= SECRETS, "{when}: only {} Secrets in etcd", all.len());
    let wrong: Vec<_> = all.iter().filter(|(_, how)| *how != want).take(5).collect();
    assert!(wrong.is_empty(), "{when}: every Secret should be stored {want}; not: {wrong:?} (of {})", all.len());
}

/// Another writer: replaces the writer Secrets' data over and over (read-modify-write, retried
/// across apiserver restarts) and deletes the doomed Secrets one by one, until told to stop.
/// Returns the last value it wrote to each Secret.
fn start_writer(
    kubeconfig: std::path::PathBuf,
    stop: Arc<Mutex<bool>>,
) -> tokio::task::JoinHandle<BTreeMap<String, String>> {
    tokio::spawn(async move {
        let client = || async { client_from(&kubeconfig).await.unwrap() };
        let mut last = BTreeMap::new();
        let mut round = 0usize;
        let mut doomed = 0usize;
        while !*stop.lock().unwrap() {
            let c = client().await;
            let api: Api<Secret> = Api::namespaced(c.clone(), WRITER_NS);
            let name = format!("w-{:05}", round % WRITER_SECRETS);
            let value = format!("round-{round}");
            if let Ok(mut s) = api.get(&name).await {
                s.data = Some([("v".to_string(), ByteString(value.clone().into_bytes()))].into());
                if api.replace(&name, &PostParams::default(), &s).await.is_ok() {
                    last.insert(name, value);
                    round += 1;
                }
            }
            if doomed < DOOMED_SECRETS && round % 3 == 0 {
                let d: Api<Secret> = Api::namespaced(c, DOOMED_NS);
                match d.delete(&format!("d-{doomed:05}"), &DeleteParams::default()).await {
                    Ok(_) => doomed += 1,
                    Err(kube::Error::Api(e)) if e.code == 404 => doomed += 1,
                    Err(_) => {}
                }
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        assert_eq!(doomed, DOOMED_SECRETS, "the writer deleted every doomed Secret");
        last
    })
}

fn step_names(s: &KmsKeyVaultModeStatus) -> Vec<StepName> {
    s.steps.iter().map(|x| x.name).collect()
}

/// The label AKS puts on its nodes (the managed cluster's node resource group).
fn own_cluster_label() -> &'static str {
    "kubernetes.azure.com/cluster"
}

/// The host the operator reaches this control plane's API server at (its kubeconfig's server).
fn apiserver_host(cp: &ControlPlane) -> String {
    let kubeconfig = std::fs::read_to_string(cp.kubeconfig_path()).unwrap();
    let server = kubeconfig.lines().find_map(|l| l.trim().strip_prefix("server: https://")).expect("a server");
    server.rsplit_once(':').map_or(server, |(host, _)| host).to_string()
}

/// `<reason>: <message>` of the KmsKeyVaultMode events in `namespace` whose reason is `reason`
/// (every one when empty), a line each.
fn kms_events(cp: &ControlPlane, namespace: &str, reason: &str) -> String {
    let mut selector = "involvedObject.kind=KmsKeyVaultMode".to_string();
    if !reason.is_empty() {
        selector.push_str(&format!(",reason={reason}"));
    }
    let template = "jsonpath={range .items[*]}{.reason}: {.message}{\"\\n\"}{end}";
    let out = cp.kubectl(&["get", "events", "-n", namespace, "--field-selector", &selector, "-o", template]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    String::from_utf8_lossy(&out.stdout).into_owned()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn key_vault_mode_switches_against_a_real_apiserver_and_the_azure_emulator() {
    let plugin = KmsPlugin::start().await.unwrap();
    let vaults = ["kv-orders", "kv-other"];
    let cp = Arc::new(tokio::task::block_in_place(|| {
        ControlPlane::start(Options { encryption_config: Some(plugin.encryption_config(Some("kv-orders"), &vaults)) })
            .unwrap()
    }));
    let client = cp.client().await.unwrap();

    // The AKS cluster starts with KMS on, vault kv-orders, Public.
    let mut spec = Spec::new("aks-orders", &vaults, "v1");
    spec.kms = json!({"enabled": true, "keyId": spec.key_id("kv-orders", "v1"), "keyVaultNetworkAccess": "Public", "keyVaultResourceId": ""});
    let hook = kms_hook(cp.clone(), plugin.endpoint.clone(), vaults.iter().map(|v| v.to_string()).collect());
    let emu = AzureEmulator::start(spec.clone(), Some(hook)).await.unwrap();

    // Secrets before anything: stored with KMS.
    create_numbered_secrets(&client, "kms-a", "s", SECRETS / 3).await.unwrap();
    create_numbered_secrets(&client, "kms-b", "s", SECRETS / 3).await.unwrap();
    create_numbered_secrets(&client, "kms-c", "s", SECRETS - 2 * (SECRETS / 3)).await.unwrap();
    create_numbered_secrets(&client, WRITER_NS, "w", WRITER_SECRETS).await.unwrap();
    create_numbered_secrets(&client, DOOMED_NS, "d", DOOMED_SECRETS).await.unwrap();
    assert_all_stored(&cp, "kms:kv-orders", "at start");

    // The operator, authenticating with a client secret kept in a Secret, trusting the
    // emulator's CA.
    let port = free_port();
    tokio::task::block_in_place(|| operator::install(&cp, Some(port))).unwrap();
    let args = tokio::task::block_in_place(|| emu.operator_args(&cp)).unwrap();
    let binary = Path::new(env!("CARGO_BIN_EXE_cluster-security-operator"));
    let mut op = tokio::task::block_in_place(|| Operator::start(&cp, binary, port, &args)).unwrap();

    // ---- 0. spec.provider names another cluster than the one the operator runs in. --------
    // This control plane's node carries another managed cluster's node resource group.
    cluster_security_testbed::azure::label_node(&client, "aks-node", "MC_rg-other_aks-other_westeurope").await.unwrap();
    apply(&cp, &kms_yaml(&spec, "kv-orders", "Private", "{concurrency: 8, pageSize: 250}"));
    let conditions =
        "{.status.conditions[?(@.type==\"Stalled\")].reason}/{.status.conditions[?(@.type==\"Stalled\")].message}";
    let text = wait_until(Duration::from_secs(60), "Stalled ForeignCluster", || {
        let out = cp.kubectl(&["get", "kmsmode", "cluster", "-o", &format!("jsonpath={conditions}")]);
        let text = String::from_utf8_lossy(&out.stdout).into_owned();
        async move { text.starts_with("ForeignCluster/").then_some(text.clone()).ok_or(text) }
    })
    .await
    .unwrap();
    assert!(text.contains("MC_rg-other_aks-other_westeurope") && text.contains(&spec.node_resource_group()), "{text}");
    assert!(emu.log().is_empty(), "the cloud was written: {:?}", emu.log());
    let events = |ns: &str| {
        let out = cp.kubectl(&[
            "get",
            "events",
            "-n",
            ns,
            "--field-selector",
            "involvedObject.kind=KmsKeyVaultMode",
            "-o",
            "jsonpath={range .items[*]}{.reason} {end}",
        ]);
        String::from_utf8_lossy(&out.stdout).into_owned()
    };
    let in_operator_ns = wait_until(Duration::from_secs(30), "the ForeignCluster event", || {
        let text = events(operator::NAMESPACE);
        async move { text.contains("ForeignCluster").then_some(text.clone()).ok_or(text) }
    })
    .await
    .unwrap();
    assert!(events("default").is_empty(), "events of a cluster-scoped kind in default: {}", events("default"));
    println!("KmsKeyVaultMode events in {}: {in_operator_ns}", operator::NAMESPACE);
    // Gone again (nothing ran).
    let out = cp.kubectl(&["delete", "kmsmode", "cluster", "--wait=true", "--timeout=60s"]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));

    // ---- 0b. Nothing tells: no labelled node, and the operator reaches its API server at this
    // control plane's host, not at the managed cluster's FQDN. Refused the same way, naming both.
    let out = cp.kubectl(&["label", "node", "aks-node", &format!("{}-", own_cluster_label())]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    apply(&cp, &kms_yaml(&spec, "kv-orders", "Private", "{concurrency: 8, pageSize: 250}"));
    let text = wait_until(Duration::from_secs(60), "Stalled ForeignCluster (cannot tell)", || {
        let out = cp.kubectl(&["get", "kmsmode", "cluster", "-o", &format!("jsonpath={conditions}")]);
        let text = String::from_utf8_lossy(&out.stdout).into_owned();
        async move { text.starts_with("ForeignCluster/Cannot tell").then_some(text.clone()).ok_or(text) }
    })
    .await
    .unwrap();
    let api_host = apiserver_host(&cp);
    for part in ["no node of this cluster carries", "aks-orders-dns.hcp.westeurope.azmk8s.io", &api_host] {
        assert!(text.contains(part), "{part} in {text}");
    }
    assert!(text.contains("clustersecurity.io/managed-cluster-check=skip"), "the override is named: {text}");
    assert!(emu.log().is_empty(), "the cloud was written: {:?}", emu.log());

    // ---- 1. Public → Private, with another writer at work: the explicit override lets the
    // switch of 0b go ahead (a Warning event says the check was skipped). ----------------------
    emu.set_lro(1, Duration::from_secs(6)); // a window to look at etcd before KMS comes back on
    let stop = Arc::new(Mutex::new(false));
    let writer = start_writer(cp.kubeconfig_path(), stop.clone());
    let out = cp.kubectl(&["annotate", "kmsmode", "cluster", "clustersecurity.io/managed-cluster-check=skip"]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));

    // While EnableKms runs (KMS still off), every Secret is plaintext: the disable step's
    // rewrite reached them all, and the writer's writes are plaintext too.
    wait_until(Duration::from_secs(180), "EnableKms in progress", || async {
        let api: Api<KmsKeyVaultMode> = Api::all(cp.client().await.map_err(|e| e.to_string())?);
        let (_, s) = status(&api).await?;
        s.steps
            .iter()
            .any(|x| x.name == StepName::EnableKms && x.state == StepState::InProgress)
            .then_some(())
            .ok_or(format!("steps {:?}", s.steps.iter().map(|x| (x.name, x.state)).collect::<Vec<_>>()))
    })
    .await
    .unwrap();
    assert_eq!(emu.vault_public("kv-orders"), Some(false), "the vault went private before KMS came back");
    assert_all_stored(&cp, "plain", "after DisableKms + ReencryptSecrets");

    let (done, s) = wait_operation_end(&cp, 240).await;
    *stop.lock().unwrap() = true;
    let last_writes = writer.await.unwrap();
    assert_eq!(done.operation_state, OperationState::UpdateComplete, "{:?}", done.error_info);
    assert_eq!(
        step_names(&s),
        vec![
            StepName::DisableKms,
            StepName::ReencryptSecrets,
            StepName::UpdateKeyVaultNetworkAccess,
            StepName::EnableKms,
            StepName::ReencryptSecrets
        ]
    );
    assert!(s.steps.iter().all(|x| x.state == StepState::Succeeded && x.start_time.is_some() && x.end_time.is_some()));
    assert_eq!(s.kms.as_deref(), Some("Enabled"));
    assert_eq!(s.phase.as_deref(), Some("Idle"));
    assert_eq!(s.key_check.as_ref().map(|k| k.result), Some(KeyCheckResult::Usable));
    let r = s.reencryption.clone().unwrap();
    assert!(r.rewritten >= SECRETS as u64, "{r:?}");
    assert_eq!(r.failed, 0);
    assert!(s.conditions.iter().any(|c| c.type_ == "Ready" && c.status == "True"), "{:?}", s.conditions);
    assert_eq!(emu.kms()["keyVaultNetworkAccess"], "Private");
    assert_eq!(
        emu.log(),
        vec![
            "PUT kms enabled=false",
            "PATCH vault kv-orders publicNetworkAccess=Disabled",
            "PUT kms enabled=true vault=kv-orders access=Private"
        ]
    );
    assert_all_stored(&cp, "kms:kv-orders", "after Public → Private");
    // Nothing lost or overwritten: the writer's last writes are there, deleted Secrets are gone.
    assert!(last_writes.len() == WRITER_SECRETS, "the writer wrote every Secret: {last_writes:?}");
    let wapi: Api<Secret> = Api::namespaced(cp.client().await.unwrap(), WRITER_NS);
    for (name, value) in &last_writes {
        let got = wapi.get(name).await.unwrap().data.unwrap()["v"].0.clone();
        assert_eq!(String::from_utf8(got).unwrap(), *value, "{name} keeps the writer's last write");
    }
    let doomed =
        Api::<Secret>::namespaced(cp.client().await.unwrap(), DOOMED_NS).list(&Default::default()).await.unwrap();
    let left: Vec<_> =
        doomed.items.iter().filter_map(|s| s.metadata.name.clone()).filter(|n| n.starts_with("d-")).collect();
    assert!(left.is_empty(), "deleted Secrets stay deleted: {left:?}");
    let events = cp.kubectl(&[
        "get",
        "events",
        "-A",
        "--field-selector",
        "involvedObject.kind=KmsKeyVaultMode",
        "-o",
        "jsonpath={.items[*].reason}",
    ]);
    let reasons = String::from_utf8_lossy(&events.stdout).to_string();
    for r in ["OperationPending", "UpdateStarted", "DisableKmsSucceeded", "UpdateComplete"] {
        assert!(reasons.contains(r), "event {r} in {reasons}");
    }
    let skipped = kms_events(&cp, operator::NAMESPACE, "ManagedClusterCheckSkipped");
    assert!(skipped.contains("clustersecurity.io/managed-cluster-check=skip"), "the override is said: {skipped}");
    assert_eq!(kms_events(&cp, "default", ""), "", "events of a cluster-scoped kind in default");

    // ---- 2. Private → Public: without the override, the managed cluster's API server FQDN is
    // the host the operator reaches its API server at (as where AKS sets KUBERNETES_SERVICE_HOST
    // to it), with still no labelled node: this cluster. -------------------------------------
    let out = cp.kubectl(&["annotate", "kmsmode", "cluster", "clustersecurity.io/managed-cluster-check-"]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    emu.set_fqdn(&api_host, None);
    emu.set_lro(1, Duration::from_millis(200));
    apply(&cp, &kms_yaml(&spec, "kv-orders", "Public", "{concurrency: 8, pageSize: 250}"));
    let (done, s) = wait_operation_end(&cp, 240).await;
    assert_eq!(done.operation_state, OperationState::UpdateComplete, "{:?}", done.error_info);
    assert_eq!(s.steps.len(), 5);
    let checked = kms_events(&cp, operator::NAMESPACE, "ManagedClusterChecked");
    assert!(checked.contains(&format!("its API server FQDN {api_host} is the host")), "{checked}");
    // From here on the node is this managed cluster's, as AKS labels its nodes (3 checks it).
    spec.label_node(&client, "aks-node").await.unwrap();
    assert_eq!(emu.vault_public("kv-orders"), Some(true));
    assert_eq!(emu.kms()["keyVaultNetworkAccess"], "Public");
    assert_all_stored(&cp, "kms:kv-orders", "after Private → Public");
    let printed = cp.kubectl(&["get", "kmsmode", "cluster"]);
    let printed = String::from_utf8_lossy(&printed.stdout).to_string();
    assert!(
        printed.contains("MODE")
            && printed.contains("PROGRESS")
            && printed.contains("Enabled")
            && printed.contains("Idle"),
        "{printed}"
    );

    // ---- 3. DisableKms fails: the Secrets are still rewritten, then UPDATE_FAILED. ------------
    let puts_before = emu.log().len();
    emu.fail_next_update("KMSPluginUnavailable", "the KMS plugin could not be stopped");
    apply(&cp, &kms_yaml(&spec, "kv-orders", "Private", "{concurrency: 8, pageSize: 250}"));
    let (done, s) = wait_operation_end(&cp, 240).await;
    let checked = kms_events(&cp, operator::NAMESPACE, "ManagedClusterChecked");
    assert!(checked.contains(&format!("its node resource group {} is", spec.node_resource_group())), "{checked}");
    assert_eq!(done.operation_state, OperationState::UpdateFailed);
    let err = done.error_info.unwrap();
    assert!(err.message.contains("DisableKms") && err.message.contains("KMSPluginUnavailable"), "{err:?}");
    let states: Vec<(StepName, StepState)> = s.steps.iter().map(|x| (x.name, x.state)).collect();
    assert_eq!(
        &states[..3],
        &[
            (StepName::DisableKms, StepState::Failed),
            (StepName::ReencryptSecrets, StepState::Succeeded),
            (StepName::UpdateKeyVaultNetworkAccess, StepState::Pending)
        ]
    );
    assert!(s.conditions.iter().any(|c| c.type_ == "Stalled" && c.reason == "OperationFailed"), "{:?}", s.conditions);
    assert_eq!(emu.log()[puts_before..], ["PUT kms enabled=false", "FAILED KMSPluginUnavailable: enabled=false"]);
    assert_eq!(emu.vault_public("kv-orders"), Some(true), "nothing after the failed step ran");
    assert_all_stored(&cp, "kms:kv-orders", "after the failed DisableKms (KMS still on)");

    // ---- 4. SIGKILL in the middle of a rewrite: the run resumes from where it stopped. ---------
    // A move to the other vault: UpdateKms, then one slow rewrite (one Secret at a time).
    let secrets_total =
        Api::<Secret>::all(cp.client().await.unwrap()).list_metadata(&Default::default()).await.unwrap().items.len()
            as u64;
    apply(&cp, &kms_yaml(&spec, "kv-other", "Public", "{concurrency: 1, pageSize: 20}"));
    let seen = wait_until(Duration::from_secs(180), "half of the Secrets rewritten", || async {
        let api: Api<KmsKeyVaultMode> = Api::all(cp.client().await.map_err(|e| e.to_string())?);
        let (_, s) = status(&api).await?;
        let r = s.reencryption.clone().unwrap_or_default();
        let handled = r.rewritten + r.unchanged + r.deleted + r.failed;
        let running = s.steps.iter().any(|x| x.name == StepName::ReencryptSecrets && x.state == StepState::InProgress);
        (running && handled * 2 >= secrets_total).then_some((handled, s.clone())).ok_or(format!("{:?}", s.progress))
    })
    .await
    .unwrap();
    op.kill();
    let (handled_at_kill, at_kill) = seen;
    let op_id = at_kill.current_operation.clone().unwrap().operation_id;
    tokio::task::block_in_place(|| op.restart()).unwrap();
    let (done, s) = wait_operation_end(&cp, 240).await;
    assert_eq!(done.operation_state, OperationState::UpdateComplete, "{:?}", done.error_info);
    assert_eq!(done.operation_id, op_id, "the same operation finished");
    assert_eq!(s.operations.iter().filter(|o| o.operation_id == op_id).count(), 1, "no duplicate operation record");
    assert_eq!(step_names(&s), vec![StepName::UpdateKms, StepName::ReencryptSecrets]);
    let r = s.reencryption.clone().unwrap();
    let secrets_now =
        Api::<Secret>::all(cp.client().await.unwrap()).list_metadata(&Default::default()).await.unwrap().items.len()
            as u64;
    let handled = r.rewritten + r.unchanged + r.deleted + r.failed;
    assert_eq!(r.total, secrets_total, "the count of Secrets to rewrite");
    assert_eq!(r.start_time, at_kill.reencryption.clone().unwrap().start_time, "the run kept its start");
    assert_eq!(handled, secrets_now, "every Secret counted once: resumed, not started over ({r:?})");
    assert!(
        r.unchanged < handled_at_kill,
        "only the pages after the last saved resume point were redone ({r:?}, {handled_at_kill} handled at the kill)"
    );
    assert_eq!(emu.kms()["keyId"], spec.key_id("kv-other", "v1"));
    assert_all_stored(&cp, "kms:kv-other", "after the resumed rewrite: every Secret under the new vault's key");
    let log = op.log_text();
    assert!(
        log.lines().any(|l| l.contains("resuming the Secret rewrite") && l.contains("from_its_page=true")),
        "the restarted operator resumed from the saved page's continuation"
    );
    // …and listed again less than that page (pageSize 20), not every Secret before the point.
    let listed_again = log
        .lines()
        .rfind(|l| l.contains("re-encryption pass finished"))
        .and_then(|l| l.split("listed_again=").nth(1)?.split(' ').next()?.parse::<u64>().ok())
        .expect("the resumed pass logs what it listed again");
    assert!(listed_again < 20, "listed again: {listed_again}");
    // The restarted operator's metrics carry the run's final counters.
    let (_, metrics) = operator::http_get(op.health_port, "/metrics").expect("metrics served");
    for (counter, v) in [("total", r.total), ("rewritten", r.rewritten), ("failed", r.failed)] {
        let line = format!("csop_reencryption_secrets{{kmskeyvaultmode=\"cluster\",counter=\"{counter}\"}} {v}.0");
        assert!(metrics.lines().any(|l| l == line), "{line} missing from:\n{metrics}");
    }
    // The Azure client secret (from the credentials Secret; named too in case that Secret is
    // gone), and every other Secret value, is nowhere the operator writes.
    let report = leaks::assert_none(&cp, &[&spec.client_secret]).await;
    assert!(report.secrets >= SECRETS && report.statuses == 1, "{report}");
    eprintln!("secret leak audit: {report}");

    // ---- 5. The vault PATCH is refused twice, then passes: retried, the switch completes. -----
    let log_before = emu.log().len();
    emu.refuse_vault_patches(2);
    apply(&cp, &kms_yaml(&spec, "kv-other", "Private", "{concurrency: 8, pageSize: 250}"));
    let (done, s) = wait_operation_end(&cp, 240).await;
    assert_eq!(done.operation_state, OperationState::UpdateComplete, "{:?}", done.error_info);
    let vault_step = s.steps.iter().find(|x| x.name == StepName::UpdateKeyVaultNetworkAccess).unwrap();
    assert_eq!((vault_step.state, vault_step.attempts), (StepState::Succeeded, 3), "{vault_step:?}");
    assert_eq!(
        emu.log()[log_before..],
        [
            "PUT kms enabled=false",
            "REFUSED vault kv-other PATCH",
            "REFUSED vault kv-other PATCH",
            "PATCH vault kv-other publicNetworkAccess=Disabled",
            "PUT kms enabled=true vault=kv-other access=Private"
        ]
    );
    assert_all_stored(&cp, "kms:kv-other", "after the retried vault PATCH");
    // Since the move to kv-other (phase 4), the key used before is remembered and checked.
    assert_eq!(s.previous_key_id.as_deref(), Some(spec.key_id("kv-orders", "v1").as_str()));
    assert_eq!(s.previous_key_check.as_ref().map(|k| k.result), Some(KeyCheckResult::Usable));
    // kv-other is private now: its key was read through Resource Manager (the emulator's data
    // plane refuses a private vault), so the check says Usable, not Unknown.
    assert_eq!(s.key_check.as_ref().map(|k| k.result), Some(KeyCheckResult::Usable), "{:?}", s.key_check);
    // Someone deletes the previous key: the next look says so.
    emu.delete_key("kv-orders/etcd/v1");

    // ---- 6. EnableKms refused for good: the operation rolls back, KMS is never left off. -----
    let log_before = emu.log().len();
    emu.refuse_enable("Public", "AzureKeyVaultKmsNotSupported");
    apply(&cp, &kms_yaml(&spec, "kv-other", "Public", "{concurrency: 8, pageSize: 250}"));
    let (done, s) = wait_operation_end(&cp, 300).await;
    emu.clear_refusals();
    assert_eq!(done.operation_state, OperationState::UpdateFailed);
    let err = done.error_info.clone().unwrap();
    assert_eq!(err.code, "RolledBack", "{err:?}");
    assert!(
        err.message.contains("EnableKms failed 4 times") && err.message.contains("AzureKeyVaultKmsNotSupported"),
        "{err:?}"
    );
    let rollback = s.rollback.clone().expect("status.rollback says where the rollback started");
    let states: Vec<(StepName, StepState)> = s.steps.iter().map(|x| (x.name, x.state)).collect();
    assert_eq!(
        states,
        vec![
            (StepName::DisableKms, StepState::Succeeded),
            (StepName::ReencryptSecrets, StepState::Succeeded),
            (StepName::UpdateKeyVaultNetworkAccess, StepState::Succeeded),
            (StepName::EnableKms, StepState::Failed),
            (StepName::ReencryptSecrets, StepState::Skipped),
            (StepName::UpdateKeyVaultNetworkAccess, StepState::Succeeded),
            (StepName::EnableKms, StepState::Succeeded),
            (StepName::ReencryptSecrets, StepState::Succeeded),
        ]
    );
    assert_eq!(rollback.first_step, 5);
    let refused = "REFUSED AzureKeyVaultKmsNotSupported: enabled=true vault=kv-other access=Public";
    assert_eq!(
        emu.log()[log_before..],
        [
            "PUT kms enabled=false",
            "PATCH vault kv-other publicNetworkAccess=Enabled",
            refused,
            refused,
            refused,
            refused,
            "PATCH vault kv-other publicNetworkAccess=Disabled",
            "PUT kms enabled=true vault=kv-other access=Private"
        ],
        "four tries, then the source settings back: vault private again, KMS on as before"
    );
    assert_eq!(emu.kms()["enabled"], true);
    assert_eq!(emu.kms()["keyVaultNetworkAccess"], "Private");
    assert_eq!(emu.vault_public("kv-other"), Some(false));
    assert_all_stored(&cp, "kms:kv-other", "after the rollback: every Secret KMS-encrypted again");
    assert_eq!(s.kms.as_deref(), Some("Enabled"));
    let condition = |s: &KmsKeyVaultModeStatus, t: &str| s.conditions.iter().find(|c| c.type_ == t).cloned();
    let off = condition(&s, "EncryptionDisabled").expect("EncryptionDisabled appeared while KMS was off");
    assert_eq!((off.status.as_str(), off.reason.as_str()), ("False", "KmsEnabled"));
    assert_eq!(condition(&s, "Stalled").map(|c| c.reason), Some("RolledBack".to_string()));
    let events = cp.kubectl(&[
        "get",
        "events",
        "-A",
        "--field-selector",
        "involvedObject.kind=KmsKeyVaultMode,type=Warning",
        "-o",
        "jsonpath={.items[*].reason}",
    ]);
    let warnings = String::from_utf8_lossy(&events.stdout).to_string();
    assert_eq!(s.previous_key_check.as_ref().map(|k| k.result), Some(KeyCheckResult::Unusable));
    for r in ["KmsDisabled", "RollingBack", "UpdateFailed", "PreviousKeyCheck"] {
        assert!(warnings.contains(r), "Warning event {r} in {warnings}");
    }
    let (_, metrics) = operator::http_get(op.health_port, "/metrics").expect("metrics served");
    let line = "csop_kms_encryption_disabled{kmskeyvaultmode=\"cluster\"} 0";
    assert!(metrics.lines().any(|l| l == line), "{line} missing from:\n{metrics}");

    // ---- 7. A Secret rewrite refused (a policy webhook): retried, KMS never left off. ---------
    let gate = SecretGate::start(cp.clone(), "g-").await.unwrap();
    let gated = "kms-gated";
    create_numbered_secrets(&cp.client().await.unwrap(), gated, "g", 1).await.unwrap();
    let labelled = cp.kubectl(&["label", "namespace", gated, gate::NAMESPACE_LABEL]);
    assert!(labelled.status.success(), "{}", String::from_utf8_lossy(&labelled.stderr));
    gate.close(true);
    apply(&cp, &kms_yaml(&spec, "kv-other", "Public", "{concurrency: 8, pageSize: 300}"));
    // The rewrite with KMS off fails for the gated Secret: the step is Failed, waiting to retry.
    wait_until(Duration::from_secs(180), "a ReencryptSecrets pass failed on the refused Secret", || async {
        let api: Api<KmsKeyVaultMode> = Api::all(cp.client().await.map_err(|e| e.to_string())?);
        let (_, s) = status(&api).await?;
        let failed = s.steps.iter().any(|x| x.name == StepName::ReencryptSecrets && x.state == StepState::Failed);
        failed.then_some(()).ok_or(format!("steps {:?}", s.steps.iter().map(|x| (x.name, x.state)).collect::<Vec<_>>()))
    })
    .await
    .unwrap();
    assert!(gate.denied() >= 1);
    gate.close(false);
    let (done, s) = wait_operation_end(&cp, 300).await;
    assert_eq!(done.operation_state, OperationState::UpdateComplete, "{:?}", done.error_info);
    let first_rewrite = &s.steps[1];
    assert_eq!(
        (first_rewrite.name, first_rewrite.state),
        (StepName::ReencryptSecrets, StepState::Succeeded),
        "the failed pass was run again, not skipped"
    );
    assert!(first_rewrite.attempts >= 2, "{first_rewrite:?}");
    assert_eq!(s.reencryption.as_ref().map(|r| r.failed), Some(0));
    assert_eq!(emu.kms()["enabled"], true);
    assert_all_stored(&cp, "kms:kv-other", "after a refused rewrite was retried");
    drop(gate);

    // ---- 8. Deleted in the middle of a switch: the switch finishes before the object goes. ----
    // Each cloud update takes 10 s: KMS stays off, with the API server up, for the vault's
    // update and the start of KMS's own (with 4 s the window was ~10 s, and a status read that
    // hung across an API server restart could miss it).
    emu.set_lro(1, Duration::from_secs(10));
    apply(&cp, &kms_yaml(&spec, "kv-other", "Private", "{concurrency: 8, pageSize: 200}"));
    wait_until(Duration::from_secs(120), "KMS off, mid-switch", || async {
        let api: Api<KmsKeyVaultMode> = Api::all(cp.client().await.map_err(|e| e.to_string())?);
        let (_, s) = status(&api).await?;
        (s.kms.as_deref() == Some("Disabled") && s.current_operation.is_some())
            .then_some(())
            .ok_or(format!("kms {:?}, phase {:?}, steps {:?}", s.kms, s.phase, s.steps))
    })
    .await
    .unwrap_or_else(|e| {
        let log = op.log_text();
        let tail: Vec<&str> = log.lines().rev().take(40).collect();
        panic!("{e:#}\noperator log, last lines first:\n{}", tail.join("\n"))
    });
    // The spec now names another cluster: the running switch stays on the one it was recorded
    // for (were it to follow the spec, every step would hit a cluster that does not exist, and
    // the deletion below would never end).
    let elsewhere = kms_yaml(&spec, "kv-other", "Private", "{concurrency: 8, pageSize: 200}")
        .replace(&format!("clusterName: {}", spec.cluster_name), "clusterName: aks-elsewhere");
    apply(&cp, &elsewhere);
    let deleted = cp.kubectl(&["delete", "kmsmode", "cluster", "--wait=false"]);
    assert!(deleted.status.success(), "{}", String::from_utf8_lossy(&deleted.stderr));
    // Read again while kube-apiserver is down: the emulator restarts it whenever KMS is switched,
    // and the one for "KMS off" may still be under way (CI once read during it: refused).
    let held = wait_until(Duration::from_secs(90), "the finalizer holds the object while KMS is off", || async {
        let api: Api<KmsKeyVaultMode> = Api::all(cp.client().await.map_err(|e| e.to_string())?);
        api.get("cluster").await.map_err(|e| e.to_string())
    })
    .await
    .unwrap();
    assert!(held.metadata.deletion_timestamp.is_some());
    assert!(held.metadata.finalizers.unwrap_or_default().contains(&"clustersecurity.io/kms-switch".to_string()));
    wait_until(Duration::from_secs(240), "the deleted KmsKeyVaultMode goes after its switch", || async {
        let api: Api<KmsKeyVaultMode> = Api::all(cp.client().await.map_err(|e| e.to_string())?);
        match api.get_opt("cluster").await.map_err(|e| e.to_string())? {
            None => Ok(()),
            Some(o) => Err(format!("still there: phase {:?}", o.status.and_then(|s| s.phase))),
        }
    })
    .await
    .unwrap();
    assert_eq!(emu.kms()["enabled"], true, "the switch finished: KMS on");
    assert_eq!(emu.kms()["keyVaultNetworkAccess"], "Private");
    assert_all_stored(&cp, "kms:kv-other", "after a deletion mid-switch");

    // ---- 9. Deleting an idle KmsKeyVaultMode changes nothing in Azure. -------------------------
    emu.set_lro(1, Duration::from_millis(200));
    apply(&cp, &kms_yaml(&spec, "kv-other", "Private", "{concurrency: 8, pageSize: 200}"));
    wait_until(Duration::from_secs(60), "the re-created object is Ready (in sync)", || async {
        let api: Api<KmsKeyVaultMode> = Api::all(cp.client().await.map_err(|e| e.to_string())?);
        let (_, s) = status(&api).await?;
        condition(&s, "Ready").filter(|c| c.status == "True").map(|_| ()).ok_or(format!("{:?}", s.conditions))
    })
    .await
    .unwrap();
    let log_before = emu.log().len();
    let deleted = cp.kubectl(&["delete", "kmsmode", "cluster", "--timeout=60s"]);
    assert!(deleted.status.success(), "{}", String::from_utf8_lossy(&deleted.stderr));
    assert_eq!(emu.log()[log_before..], [] as [&str; 0], "no cloud call for an idle deletion");

    // ---- 10. One KmsKeyVaultMode per managed cluster: refused at admission, Stalled without it. -
    let first = kms_yaml(&spec, "kv-other", "Private", "{concurrency: 8, pageSize: 200}");
    apply(&cp, &first);
    let second = first.replace("name: cluster", "name: second").replace("Private", "Public");
    let refused = cp.kubectl_with_stdin(&["apply", "-f", "-"], Some(&second));
    let stderr = String::from_utf8_lossy(&refused.stderr).to_string();
    assert!(!refused.status.success() && stderr.contains("OneKmsKeyVaultModePerCluster"), "{stderr}");
    assert!(stderr.contains("\"cluster\" already manages"), "the refusal names the object in charge: {stderr}");
    // With the webhook gone, the controller holds the line: the newer object changes nothing.
    let log_before = emu.log().len();
    let unhooked = cp.kubectl(&["delete", "validatingwebhookconfiguration", "--all"]);
    assert!(unhooked.status.success(), "{}", String::from_utf8_lossy(&unhooked.stderr));
    apply(&cp, &second);
    wait_until(Duration::from_secs(60), "the second KmsKeyVaultMode is Stalled Conflict", || async {
        let api: Api<KmsKeyVaultMode> = Api::all(cp.client().await.map_err(|e| e.to_string())?);
        let s = api.get("second").await.map_err(|e| e.to_string())?.status.unwrap_or_default();
        condition(&s, "Stalled")
            .filter(|c| c.reason == "Conflict" && c.message.contains("\"cluster\" already manages"))
            .map(|_| ())
            .ok_or(format!("{:?}", s.conditions))
    })
    .await
    .unwrap();
    assert_eq!(emu.log()[log_before..], [] as [&str; 0], "the conflicting object made no cloud call");
    assert_eq!(emu.kms()["keyVaultNetworkAccess"], "Private");
    let out = cp.kubectl(&["delete", "kmsmode", "second", "--timeout=60s"]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));

    // ---- 11. A permission the switch needs is missing: refused before anything changes. ------
    let log_before = emu.log().len();
    emu.set_permissions(&["*"], &["Microsoft.KeyVault/vaults/write"]);
    apply(&cp, &kms_yaml(&spec, "kv-other", "Public", "{concurrency: 8, pageSize: 300}"));
    let text = wait_until(Duration::from_secs(60), "Stalled MissingPermission", || {
        let out = cp.kubectl(&["get", "kmsmode", "cluster", "-o", &format!("jsonpath={conditions}")]);
        let text = String::from_utf8_lossy(&out.stdout).into_owned();
        async move { text.starts_with("MissingPermission/").then_some(text.clone()).ok_or(text) }
    })
    .await
    .unwrap();
    assert!(text.contains("Microsoft.KeyVault/vaults/write") && text.contains("vaults/kv-other"), "{text}");
    assert_eq!(emu.log()[log_before..], [] as [&str; 0], "nothing was called: KMS never went off");
    assert_eq!(emu.kms()["enabled"], true);

    // Gone (idle: no cloud call), so that no reconcile of the stalled generation can open an
    // operation of its own once the permission is back.
    let out = cp.kubectl(&["delete", "kmsmode", "cluster", "--timeout=60s"]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    assert_eq!(emu.log()[log_before..], [] as [&str; 0]);

    // ---- 12. The vault PATCH denied for good by Azure Policy: rolled back, not waited on. -----
    emu.clear_refusals();
    emu.forbid_vault_patches("RequestDisallowedByPolicy");
    emu.refuse_permissions_read(true); // "when it is allowed": an unreadable check does not block
    let log_before = emu.log().len();
    apply(&cp, &kms_yaml(&spec, "kv-other", "Public", "{concurrency: 8, pageSize: 250}"));
    let (done, s) = wait_operation_end(&cp, 300).await;
    emu.clear_refusals();
    assert_eq!(done.operation_state, OperationState::UpdateFailed);
    let err = done.error_info.clone().unwrap();
    assert_eq!(err.code, "RolledBack", "{err:?}");
    for part in [
        "UpdateKeyVaultNetworkAccess failed 4 times",
        "RequestDisallowedByPolicy",
        "Microsoft.KeyVault/vaults/write",
        "policy exemption",
    ] {
        assert!(err.message.contains(part), "{part} in {err:?}");
    }
    assert!(!err.message.contains("authentication"), "a policy denial is not a login problem: {err:?}");
    let states: Vec<(StepName, StepState)> = s.steps.iter().map(|x| (x.name, x.state)).collect();
    assert_eq!(
        states,
        vec![
            (StepName::DisableKms, StepState::Succeeded),
            (StepName::ReencryptSecrets, StepState::Succeeded),
            (StepName::UpdateKeyVaultNetworkAccess, StepState::Failed),
            (StepName::EnableKms, StepState::Skipped),
            (StepName::ReencryptSecrets, StepState::Skipped),
            (StepName::EnableKms, StepState::Succeeded),
            (StepName::ReencryptSecrets, StepState::Succeeded),
        ],
        "the refused vault PATCH is not part of the way back"
    );
    assert_eq!(s.steps[2].attempts, 4, "{:?}", s.steps[2]);
    let denied = "REFUSED RequestDisallowedByPolicy vault kv-other PATCH";
    assert_eq!(
        emu.log()[log_before..],
        ["PUT kms enabled=false", denied, denied, denied, denied, "PUT kms enabled=true vault=kv-other access=Private"]
    );
    assert_eq!(emu.vault_public("kv-other"), Some(false));
    assert_eq!(emu.kms()["keyVaultNetworkAccess"], "Private");
    assert_all_stored(&cp, "kms:kv-other", "after the rollback of a policy-denied switch");
    assert_eq!(condition(&s, "Stalled").map(|c| c.reason), Some("RolledBack".to_string()));
    let time = |t: &Option<String>| t.as_deref().unwrap().parse::<k8s_openapi::jiff::Timestamp>().unwrap();
    let off_for = time(&s.steps[5].end_time).duration_since(time(&s.steps[0].end_time));
    let bound = cluster_security_api::kms_key_vault_mode::DEFAULT_ROLLBACK_AFTER_SECONDS;
    println!(
        "policy-denied vault PATCH: KMS off for {} s (bound: rollbackAfterSeconds default {bound} s)",
        off_for.as_secs()
    );
    assert!(off_for.as_secs() < bound.into(), "KMS off for {off_for:?}");
    let warnings = cp.kubectl(&[
        "get",
        "events",
        "-n",
        operator::NAMESPACE,
        "--field-selector",
        "involvedObject.kind=KmsKeyVaultMode,type=Warning",
        "-o",
        "jsonpath={.items[*].reason}",
    ]);
    let warnings = String::from_utf8_lossy(&warnings.stdout).to_string();
    assert!(warnings.contains("PermissionsUnknown"), "the unreadable permissions were said: {warnings}");
    drop(plugin);
}
