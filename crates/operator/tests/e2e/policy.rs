//! ClusterSecurityPolicy against a real apiserver with the play kubelet: every row of the seed's
//! table reaches UPDATE_COMPLETE with its listeners and properties; re-applying changes nothing;
//! a change during a rollout waits in PENDING; a rollout that can't finish fails with
//! RolloutFailed; deleting the policy removes its artefacts.

use crate::support;

/// SASL/IAM as a spec must give it: what the brokers check each token against.
macro_rules! iam {
    () => {
        "iam: {enabled: true, issuer: 'https://idp.example/t', audience: kafka, jwksEndpointUrl: 'https://idp.example/t/keys'}"
    };
}

use std::time::Duration;

use crate::support::{apply, brokers, env, stderr, stdout, wait_sts_ready, webhook_ready};
use cluster_security_api::{ClusterSecurityPolicy, OperationState};
use cluster_security_testbed::wait_until;
use k8s_openapi::api::apps::v1::StatefulSet;
use k8s_openapi::api::core::v1::{ConfigMap, Secret};
use kube::Api;

fn policy(ns: &str, cluster: &str, auth: &str, cb: &str, in_cluster: bool, timeout: u32) -> String {
    format!(
        "apiVersion: clustersecurity.io/v1alpha1\nkind: ClusterSecurityPolicy\nmetadata: {{name: policy, namespace: {ns}}}\nspec:\n  clusterRef: {{kind: StatefulSet, name: {cluster}}}\n  clientAuthentication: {auth}\n  encryptionInTransit: {{clientBroker: {cb}, inCluster: {in_cluster}}}\n  rolloutTimeoutSeconds: {timeout}\n"
    )
}

async fn csp_api(ns: &str) -> Api<ClusterSecurityPolicy> {
    Api::namespaced(env().cp.client().await.unwrap(), ns)
}

/// Wait until the latest operation is in `state` and the status describes the current generation.
async fn wait_op(ns: &str, state: OperationState, timeout: u64) -> ClusterSecurityPolicy {
    let api = csp_api(ns).await;
    wait_until(Duration::from_secs(timeout), &format!("{ns}/policy operation {state:?}"), || {
        let api = api.clone();
        async move {
            let o = api.get("policy").await.map_err(|e| e.to_string())?;
            let st = o.status.clone().unwrap_or_default();
            let latest = st.operations.first().map(|op| op.operation_state);
            (latest == Some(state) && st.observed_generation == o.metadata.generation)
                .then_some(o)
                .ok_or_else(|| format!("{:?} {:?}", latest, st.conditions))
        }
    })
    .await
    .unwrap()
}

async fn sts_generation(ns: &str, name: &str) -> i64 {
    let api: Api<StatefulSet> = Api::namespaced(env().cp.client().await.unwrap(), ns);
    api.get(name).await.unwrap().metadata.generation.unwrap()
}

/// Two brokers with a SASL/SCRAM policy applied and rolled out: where the change tests start.
async fn applied_scram(ns: &str, timeout: u32) -> ClusterSecurityPolicy {
    let cp = &env().cp;
    webhook_ready(cp).await;
    brokers(cp, ns, "kafka", 2).await;
    apply(cp, &policy(ns, "kafka", "{sasl: {scram: {enabled: true}}}", "TLS", true, timeout));
    let o = wait_op(ns, OperationState::UpdateComplete, 120).await;
    wait_sts_ready(cp, ns, "kafka").await;
    o
}

fn condition(o: &ClusterSecurityPolicy, type_: &str) -> Option<(String, String)> {
    o.status.as_ref()?.conditions.iter().find(|c| c.type_ == type_).map(|c| (c.status.clone(), c.reason.clone()))
}

#[tokio::test]
async fn every_row_of_the_table_reaches_update_complete() {
    let cp = &env().cp;
    webhook_ready(cp).await;
    let rows = [
        (
            "row-unauth",
            "{unauthenticated: {enabled: true}}",
            "PLAINTEXT",
            false,
            vec![("PLAINTEXT", 9092)],
            "REPLICATION:PLAINTEXT",
        ),
        (
            "row-mtls",
            "{tls: {enabled: true}}",
            "TLS_PLAINTEXT",
            true,
            vec![("PLAINTEXT", 9092), ("TLS", 9094)],
            "REPLICATION:SSL",
        ),
        ("row-scram", "{sasl: {scram: {enabled: true}}}", "TLS", true, vec![("SASL_SCRAM", 9096)], "REPLICATION:SSL"),
        ("row-iam", concat!("{sasl: {", iam!(), "}}"), "TLS", true, vec![("SASL_IAM", 9098)], "REPLICATION:SSL"),
    ];
    for (ns, ..) in &rows {
        brokers(cp, ns, "kafka", 2).await;
    }
    for (ns, auth, cb, in_cluster, ..) in &rows {
        apply(cp, &policy(ns, "kafka", auth, cb, *in_cluster, 120));
    }
    let client = cp.client().await.unwrap();
    for (ns, _, _, _, listeners, replication) in &rows {
        let o = wait_op(ns, OperationState::UpdateComplete, 120).await;
        let st = o.status.clone().unwrap();
        let got: Vec<(&str, u16)> = st.listeners.iter().map(|l| (l.name.as_str(), l.port)).collect();
        assert_eq!(&got, listeners, "{ns}");
        assert_eq!(condition(&o, "Ready"), Some(("True".into(), "Applied".into())), "{ns}");
        assert_eq!(st.cluster_state.map(|s| format!("{s:?}")), Some("Active".into()));
        let op = &st.operations[0];
        assert!(op.end_time.is_some() && op.target_info.is_some() && op.source_info.is_none(), "{op:?}");
        assert!(st.current_operation.is_none());
        // The artefacts: ConfigMap with the properties, pod template annotated with the hash.
        let cm = Api::<ConfigMap>::namespaced(client.clone(), ns).get("kafka-security").await.unwrap();
        let props = cm.data.as_ref().unwrap()["server.properties"].clone();
        for (name, port) in listeners {
            assert!(props.contains(&format!("{name}://:{port}")), "{ns}: {props}");
        }
        assert!(props.contains(replication), "{ns}: {props}");
        if *ns == "row-iam" {
            // Tokens are checked against the spec's issuer, audience and key set.
            for line in [
                "listener.name.sasl_iam.oauthbearer.sasl.oauthbearer.jwks.endpoint.url=https://idp.example/t/keys",
                "listener.name.sasl_iam.oauthbearer.sasl.oauthbearer.expected.issuer=https://idp.example/t",
                "listener.name.sasl_iam.oauthbearer.sasl.oauthbearer.expected.audience=kafka",
            ] {
                assert!(props.lines().any(|l| l == line), "{line} in {props}");
            }
        }
        assert!(cm.data.as_ref().unwrap().contains_key("security.json"));
        let sts = Api::<StatefulSet>::namespaced(client.clone(), ns).get("kafka").await.unwrap();
        let ann = sts.spec.template.metadata.unwrap().annotations.unwrap();
        assert_eq!(ann.get("clustersecurity.io/security-hash"), st.security_hash.as_ref(), "{ns}");
        wait_sts_ready(cp, ns, "kafka").await;
    }
    // mTLS without a CA given: the operator generated one, labelled as its own and, under the
    // default deletionPolicy Retain, owned by nobody (it outlives the policy).
    let ca = Api::<Secret>::namespaced(client.clone(), "row-mtls").get("kafka-client-ca").await.unwrap();
    let data = ca.data.unwrap();
    assert!(String::from_utf8_lossy(&data["ca.crt"].0).contains("BEGIN CERTIFICATE"));
    assert_eq!(ca.metadata.labels.unwrap()["app.kubernetes.io/managed-by"], "cluster-security-operator");
    assert!(ca.metadata.owner_references.unwrap_or_default().is_empty());
    // The brokers mount that bundle: it holds the CA certificate only; the key that signs client
    // certificates is kept apart, in a Secret no broker mounts.
    assert_eq!(data.keys().collect::<Vec<_>>(), vec!["ca.crt"], "no key in the mounted bundle");
    let kept = Api::<Secret>::namespaced(client.clone(), "row-mtls").get("kafka-client-ca-key").await.unwrap();
    let kept = kept.data.unwrap();
    assert_eq!(kept["ca.crt"], data["ca.crt"], "the kept CA is the one in the bundle");
    assert!(String::from_utf8_lossy(&kept["ca.key"].0).contains("PRIVATE KEY"));
    let props = stdout(&cp.kubectl(&[
        "get",
        "cm",
        "kafka-security",
        "-n",
        "row-mtls",
        "-o",
        "jsonpath={.data.server\\.properties}",
    ]));
    assert!(props.contains("listener.name.tls.ssl.client.auth=required"), "{props}");
    // The printer columns show the outcome.
    let table = stdout(&cp.kubectl(&["get", "csp", "-n", "row-scram"]));
    assert!(
        table.contains("SASL/SCRAM")
            && table.contains("ACTIVE")
            && table.contains("UPDATE_COMPLETE")
            && table.contains("True"),
        "{table}"
    );
    support::assert_no_secret_leaks(&[]).await;
}

#[tokio::test]
async fn same_settings_start_nothing_and_changes_roll_once() {
    let cp = &env().cp;
    let ns = "idempotent";
    let first = applied_scram(ns, 120).await;
    let gen_before = sts_generation(ns, "kafka").await;
    // Same settings, new generation (only the timeout changed): no operation, no rollout.
    apply(cp, &policy(ns, "kafka", "{sasl: {scram: {enabled: true}}}", "TLS", true, 300));
    let api = csp_api(ns).await;
    let after = wait_until(Duration::from_secs(30), "generation 2 observed", || {
        let api = api.clone();
        async move {
            let o = api.get("policy").await.map_err(|e| e.to_string())?;
            (o.status.as_ref().and_then(|s| s.observed_generation) == Some(2))
                .then_some(o)
                .ok_or_else(|| "not yet".to_string())
        }
    })
    .await
    .unwrap();
    assert_eq!(after.status.as_ref().unwrap().operations.len(), first.status.as_ref().unwrap().operations.len());
    assert_eq!(sts_generation(ns, "kafka").await, gen_before, "no rollout for unchanged settings");
    assert_eq!(condition(&after, "Ready"), Some(("True".into(), "Applied".into())));

    // A real change: one new operation, one new workload generation, source = old settings.
    apply(cp, &policy(ns, "kafka", concat!("{sasl: {scram: {enabled: true}, ", iam!(), "}}"), "TLS", true, 300));
    let o = wait_op(ns, OperationState::UpdateComplete, 120).await;
    let st = o.status.unwrap();
    assert_eq!(st.operations.len(), 2);
    assert_ne!(st.operations[0].operation_id, st.operations[1].operation_id);
    let src = st.operations[0].source_info.as_ref().unwrap();
    assert!(src.client_authentication.scram_enabled() && !src.client_authentication.iam_enabled());
    assert_eq!(sts_generation(ns, "kafka").await, gen_before + 1, "exactly one rollout");
    assert_eq!(st.listeners.iter().map(|l| l.port).collect::<Vec<_>>(), vec![9096, 9098]);
    support::assert_no_secret_leaks(&[]).await;
}

#[tokio::test]
async fn change_during_rollout_waits_pending_then_proceeds() {
    let cp = &env().cp;
    let held = &env().held;
    let ns = "pending";
    applied_scram(ns, 300).await;

    // Someone else starts a rollout that can't finish yet (new pods stay not ready).
    held.hold_new_pods(ns, true);
    let out = cp.kubectl(&[
        "patch",
        "statefulset",
        "kafka",
        "-n",
        ns,
        "--type=merge",
        "-p",
        r#"{"spec":{"template":{"metadata":{"annotations":{"team/restart":"1"}}}}}"#,
    ]);
    assert!(out.status.success());
    apply(cp, &policy(ns, "kafka", concat!("{sasl: {", iam!(), "}}"), "TLS", true, 300));
    let o = wait_op(ns, OperationState::Pending, 60).await;
    assert_eq!(condition(&o, "Reconciling").map(|c| c.1), Some("WaitingForActiveCluster".into()));
    let gen_pending = sts_generation(ns, "kafka").await;

    // The other rollout finishes: the queued operation runs and completes.
    held.hold_new_pods(ns, false);
    let o = wait_op(ns, OperationState::UpdateComplete, 120).await;
    let st = o.status.unwrap();
    assert!(st.applied.unwrap().client_authentication.iam_enabled());
    assert_eq!(sts_generation(ns, "kafka").await, gen_pending + 1);
    support::assert_no_secret_leaks(&[]).await;
}

#[tokio::test]
async fn rollout_that_cannot_finish_fails_and_stalls() {
    let cp = &env().cp;
    let held = &env().held;
    let ns = "stuck";
    webhook_ready(cp).await;
    brokers(cp, ns, "kafka", 2).await;
    held.hold_new_pods(ns, true);
    // Long enough for the retry below to roll two pods, short enough to fail soon when held.
    apply(cp, &policy(ns, "kafka", "{sasl: {scram: {enabled: true}}}", "TLS", true, 15));
    let o = wait_op(ns, OperationState::UpdateFailed, 90).await;
    let st = o.status.clone().unwrap();
    let err = st.operations[0].error_info.clone().unwrap();
    assert_eq!(err.code, "RolloutFailed");
    assert!(err.message.contains("rolloutTimeoutSeconds=15"), "{}", err.message);
    assert_eq!(condition(&o, "Stalled"), Some(("True".into(), "RolloutFailed".into())));
    assert!(st.applied.is_none(), "nothing is reported applied");
    held.hold_new_pods(ns, false);
    // kubectl wait sees the failure the way GitOps tools do.
    let out = cp.kubectl(&["wait", "csp/policy", "-n", ns, "--for=condition=Stalled", "--timeout=5s"]);
    assert!(out.status.success());
    let failed_id = st.operations[0].operation_id.clone();

    // The cause is gone (pods start again): a new retry value re-runs it, with no spec change.
    wait_sts_ready(cp, ns, "kafka").await;
    let out = cp.kubectl(&["annotate", "csp", "policy", "-n", ns, "clustersecurity.io/retry=after-fix-1"]);
    assert!(out.status.success(), "{}", stderr(&out));
    let o = wait_op(ns, OperationState::UpdateComplete, 120).await;
    let st = o.status.clone().unwrap();
    assert_eq!(st.operations.len(), 2, "one more operation, for the same generation");
    assert_eq!(st.operations[0].generation, st.operations[1].generation);
    assert_eq!(st.operations[0].retry_request.as_deref(), Some("after-fix-1"));
    assert_eq!(st.operations[1].operation_id, failed_id);
    assert_eq!(condition(&o, "Ready"), Some(("True".into(), "Applied".into())));

    // Paused: a spec change is seen (observedGeneration) but nothing is recorded or rolled.
    let out = cp.kubectl(&["annotate", "csp", "policy", "-n", ns, "clustersecurity.io/reconcile=paused"]);
    assert!(out.status.success(), "{}", stderr(&out));
    let template = || async {
        let sts = Api::<StatefulSet>::namespaced(cp.client().await.unwrap(), ns).get("kafka").await.unwrap();
        sts.spec.template.metadata.and_then(|m| m.annotations).unwrap_or_default()
    };
    let before = template().await;
    apply(cp, &policy(ns, "kafka", concat!("{sasl: {scram: {enabled: true}, ", iam!(), "}}"), "TLS", true, 60));
    let api = csp_api(ns).await;
    let paused = wait_until(Duration::from_secs(60), "Ready=False Paused for the new generation", || {
        let api = api.clone();
        async move {
            let o = api.get("policy").await.map_err(|e| e.to_string())?;
            let st = o.status.clone().unwrap_or_default();
            let ready = st.conditions.iter().find(|c| c.type_ == "Ready");
            if ready.is_some_and(|c| c.reason == "Paused" && c.observed_generation == o.metadata.generation) {
                Ok(st)
            } else {
                Err(format!("{:?}", st.conditions))
            }
        }
    })
    .await
    .unwrap();
    assert_eq!(paused.operations.len(), 2, "no operation recorded while paused");
    assert!(paused.current_operation.is_none());
    assert_eq!(template().await, before, "the workload was not touched");
    let out = cp.kubectl(&["annotate", "csp", "policy", "-n", ns, "clustersecurity.io/reconcile-"]);
    assert!(out.status.success(), "{}", stderr(&out));
    wait_until(Duration::from_secs(120), "resumed: the change applied by a third operation", || {
        let api = api.clone();
        async move {
            let st = api.get("policy").await.map_err(|e| e.to_string())?.status.unwrap_or_default();
            let states: Vec<_> = st.operations.iter().map(|o| o.operation_state).collect();
            (states.len() == 3 && states[0] == OperationState::UpdateComplete)
                .then_some(())
                .ok_or(format!("{states:?}"))
        }
    })
    .await
    .unwrap();
    assert_ne!(template().await, before, "rolled once resumed");
    support::assert_no_secret_leaks(&[]).await;
}

#[tokio::test]
async fn deleting_the_policy_keeps_its_artefacts_unless_the_policy_says_delete() {
    let cp = &env().cp;
    let ns = "cleanup";
    webhook_ready(cp).await;
    brokers(cp, ns, "kafka", 1).await;
    let artefacts = || async {
        let text = stdout(&cp.kubectl(&["get", "cm,secret", "-n", ns, "-o", "name"]));
        (text.contains("configmap/kafka-security"), text.contains("secret/kafka-client-ca"))
    };
    // Default (Retain): the brokers keep what they mount when the policy goes (a GitOps prune).
    apply(cp, &policy(ns, "kafka", "{tls: {enabled: true}}", "TLS", true, 120));
    let done = wait_op(ns, OperationState::UpdateComplete, 120).await;
    let ca_before = Api::<Secret>::namespaced(cp.client().await.unwrap(), ns).get("kafka-client-ca").await.unwrap();
    let out = cp.kubectl(&["delete", "csp", "policy", "-n", ns, "--wait=true"]);
    assert!(out.status.success());
    assert_eq!(artefacts().await, (true, true), "Retain: the ConfigMap and the client CA stay");
    // Re-created for the same cluster: the kept client CA is reused, clients keep their trust.
    apply(cp, &policy(ns, "kafka", "{tls: {enabled: true}}", "TLS", true, 120));
    let again = wait_op(ns, OperationState::UpdateComplete, 120).await;
    let ca_after = Api::<Secret>::namespaced(cp.client().await.unwrap(), ns).get("kafka-client-ca").await.unwrap();
    assert_eq!(ca_after.data.as_ref().unwrap()["ca.crt"], ca_before.data.as_ref().unwrap()["ca.crt"], "same client CA");
    assert_ne!(again.metadata.uid, done.metadata.uid, "a new object");
    // Delete: a new operation writes the artefacts owned by the policy; they go with it.
    let deleting = policy(ns, "kafka", "{tls: {enabled: true}, sasl: {scram: {enabled: true}}}", "TLS", true, 120)
        + "  deletionPolicy: Delete\n";
    apply(cp, &deleting);
    wait_op(ns, OperationState::UpdateComplete, 120).await;
    // ... but not while the brokers mount them: pods restarted later would not start.
    let out = cp.kubectl(&["delete", "csp", "policy", "-n", ns, "--wait=false"]);
    assert!(out.status.success());
    let stalled =
        "{.status.conditions[?(@.type==\"Stalled\")].reason}/{.status.conditions[?(@.type==\"Stalled\")].message}";
    let held =
        support::wait_jsonpath(cp, ("csp", ns, "policy"), stalled, 60, |t| t.starts_with("DeletionBlocked/")).await;
    assert!(held.contains("ConfigMap kafka-security") && held.contains("spec.mounts.enabled: false"), "{held}");
    assert_eq!(artefacts().await, (true, true), "still there while mounted");
    // Opting out of the mounts: the operator takes them out of the template, then lets go.
    apply(cp, &format!("{deleting}  mounts: {{enabled: false}}\n"));
    wait_until(Duration::from_secs(60), "artefacts garbage-collected", || async {
        let left = artefacts().await;
        (left == (false, false)).then_some(()).ok_or(format!("{left:?}"))
    })
    .await
    .unwrap();
    let out = cp.kubectl(&["get", "statefulset", "kafka", "-n", ns, "-o", "jsonpath={.spec.template.spec.volumes}"]);
    assert!(out.status.success(), "the workload stays");
    assert!(!stdout(&out).contains("kafka-security"), "and no longer mounts what went: {}", stdout(&out));
    support::assert_no_secret_leaks(&[]).await;
}

#[tokio::test]
async fn change_during_own_rollout_is_queued_not_interleaved() {
    let cp = &env().cp;
    let held = &env().held;
    let ns = "queued";
    applied_scram(ns, 300).await;

    // Our own rollout is stuck on not-ready pods...
    held.hold_new_pods(ns, true);
    apply(cp, &policy(ns, "kafka", concat!("{sasl: {", iam!(), "}}"), "TLS", true, 300));
    wait_op(ns, OperationState::UpdateInProgress, 60).await;
    let gen_rolling = sts_generation(ns, "kafka").await;
    // ...when the spec changes again: it is seen, but nothing new rolls meanwhile.
    apply(cp, &policy(ns, "kafka", concat!("{sasl: {scram: {enabled: true}, ", iam!(), "}}"), "TLS", true, 300));
    let o = wait_op(ns, OperationState::UpdateInProgress, 60).await;
    assert_eq!(o.status.as_ref().unwrap().observed_generation, Some(3));
    let current = o.status.as_ref().unwrap().current_operation.clone().unwrap();
    let target = current.target_info.unwrap().client_authentication;
    assert!(target.iam_enabled() && !target.scram_enabled(), "the running operation keeps its target");
    assert_eq!(sts_generation(ns, "kafka").await, gen_rolling, "no second rollout interleaved");

    // Released: the running operation completes, then the queued change runs on its own.
    held.hold_new_pods(ns, false);
    let api = csp_api(ns).await;
    let o = wait_until(Duration::from_secs(120), "the queued settings applied", || {
        let api = api.clone();
        async move {
            let o = api.get("policy").await.map_err(|e| e.to_string())?;
            let st = o.status.clone().unwrap_or_default();
            let done = st
                .applied
                .as_ref()
                .is_some_and(|a| a.client_authentication.scram_enabled() && a.client_authentication.iam_enabled())
                && st.current_operation.is_none();
            done.then_some(o)
                .ok_or_else(|| format!("{:?}", st.operations.iter().map(|op| op.operation_state).collect::<Vec<_>>()))
        }
    })
    .await
    .unwrap();
    let ops = o.status.unwrap().operations;
    assert_eq!(ops.len(), 3);
    assert!(ops.iter().all(|op| op.operation_state == OperationState::UpdateComplete), "{ops:?}");
    assert_eq!(sts_generation(ns, "kafka").await, gen_rolling + 1, "one rollout per operation");
    support::assert_no_secret_leaks(&[]).await;
}

#[tokio::test]
async fn missing_ca_secret_fails_then_retries_once_it_exists_and_a_changed_ca_is_rolled_on_request() {
    let cp = &env().cp;
    let ns = "missing-ca";
    webhook_ready(cp).await;
    brokers(cp, ns, "kafka", 1).await;
    let gen = sts_generation(ns, "kafka").await;
    let auth = "{tls: {enabled: true, certificateAuthoritySecretRefs: [{name: corp-ca}]}}";
    apply(cp, &policy(ns, "kafka", auth, "TLS", true, 120));
    let o = wait_op(ns, OperationState::UpdateFailed, 60).await;
    let err = o.status.as_ref().unwrap().operations[0].error_info.clone().unwrap();
    assert_eq!(err.code, "SecretNotFound");
    assert!(err.message.contains("corp-ca") && err.message.contains("ca.crt"), "{}", err.message);
    assert_eq!(condition(&o, "Stalled"), Some(("True".into(), "SecretNotFound".into())));
    assert_eq!(sts_generation(ns, "kafka").await, gen, "nothing rolled");

    // The Secret appears: the operator retries on its own and completes.
    let ca = cluster_security_testbed::pki::new_ca("corp", k8s_openapi::jiff::Timestamp::now(), 30).unwrap();
    apply(
        cp,
        &format!(
            "apiVersion: v1\nkind: Secret\nmetadata: {{name: corp-ca, namespace: {ns}}}\nstringData:\n  ca.crt: {}\n",
            serde_json::to_string(&ca.cert_pem).unwrap()
        ),
    );
    let o = wait_op(ns, OperationState::UpdateComplete, 90).await;
    assert_eq!(o.status.as_ref().unwrap().operations.len(), 2);
    let bundle = Api::<Secret>::namespaced(env().cp.client().await.unwrap(), ns).get("kafka-client-ca").await.unwrap();
    assert_eq!(
        String::from_utf8(bundle.data.unwrap()["ca.crt"].0.clone()).unwrap(),
        ca.cert_pem,
        "the given CA is the bundle"
    );
    wait_sts_ready(cp, ns, "kafka").await;

    // The CA Secret changes (a CA renewal): reported, not rolled — the brokers trust the old one.
    let renewed = cluster_security_testbed::pki::new_ca("corp 2", k8s_openapi::jiff::Timestamp::now(), 30).unwrap();
    let corp_ca = |pem: &str| {
        format!(
            "apiVersion: v1\nkind: Secret\nmetadata: {{name: corp-ca, namespace: {ns}}}\nstringData:\n  ca.crt: {}\n",
            serde_json::to_string(pem).unwrap()
        )
    };
    apply(cp, &corp_ca(&renewed.cert_pem));
    let api = csp_api(ns).await;
    let source_changed = |want: &'static str| {
        let api = api.clone();
        move || {
            let api = api.clone();
            async move {
                let o = api.get("policy").await.map_err(|e| e.to_string())?;
                let st = o.status.unwrap_or_default();
                let c = st.conditions.iter().find(|c| c.type_ == "SourceChanged");
                match c {
                    Some(c) if c.status == want => Ok(st.clone()),
                    _ => Err(format!("{:?}", st.conditions)),
                }
            }
        }
    };
    let st = wait_until(Duration::from_secs(60), "SourceChanged=True", source_changed("True")).await.unwrap();
    assert_eq!(st.operations.len(), 2, "nothing rolled by itself");
    let events =
        stdout(&cp.kubectl(&["get", "events", "-n", ns, "-o", "jsonpath={range .items[*]}{.type}/{.reason} {end}"]));
    assert!(events.contains("Warning/SourceSecretChanged"), "{events}");
    // rollOnSourceChange: the new bundle is rolled out by itself.
    apply(cp, &(policy(ns, "kafka", auth, "TLS", true, 120) + "  rollOnSourceChange: true\n"));
    let st = wait_until(Duration::from_secs(120), "SourceChanged=False after the roll", source_changed("False"))
        .await
        .unwrap();
    assert_eq!(st.operations.len(), 3, "one operation rolled the renewed CA");
    let bundle = Api::<Secret>::namespaced(env().cp.client().await.unwrap(), ns).get("kafka-client-ca").await.unwrap();
    assert_eq!(String::from_utf8(bundle.data.unwrap()["ca.crt"].0.clone()).unwrap(), renewed.cert_pem);
    support::assert_no_secret_leaks(&[]).await;
}

#[tokio::test]
async fn a_policy_stays_on_its_workload_and_a_workload_has_one_policy() {
    let cp = &env().cp;
    let ns = "retarget";
    webhook_ready(cp).await;
    brokers(cp, ns, "kafka", 1).await;
    brokers(cp, ns, "kafka-b", 1).await;
    apply(cp, &policy(ns, "kafka", "{sasl: {scram: {enabled: true}}}", "TLS", true, 120));
    let done = wait_op(ns, OperationState::UpdateComplete, 120).await;
    let recorded = done.status.unwrap().cluster_ref.expect("status.clusterRef records the workload");
    assert_eq!(recorded.name, "kafka");
    // Pointing it at another workload is refused: a new target is a new resource.
    let moved = policy(ns, "kafka-b", "{sasl: {scram: {enabled: true}}}", "TLS", true, 120);
    let out = cp.kubectl_with_stdin(&["apply", "-f", "-"], Some(&moved));
    assert!(!out.status.success() && stderr(&out).contains("ClusterRefImmutable"), "{}", stderr(&out));
    // A second policy for the same workload is refused, naming the one in charge.
    let second = policy(ns, "kafka", "{sasl: {scram: {enabled: true}}}", "TLS", true, 120)
        .replace("name: policy,", "name: policy-copy,");
    let out = cp.kubectl_with_stdin(&["apply", "-f", "-"], Some(&second));
    let text = stderr(&out);
    assert!(!out.status.success() && text.contains("OneResourcePerWorkload") && text.contains("\"policy\""), "{text}");
    // Another workload is fine.
    let other = policy(ns, "kafka-b", "{sasl: {scram: {enabled: true}}}", "TLS", true, 120)
        .replace("name: policy,", "name: policy-b,");
    apply(cp, &other);
}

#[tokio::test]
async fn what_someone_else_deletes_is_restored() {
    let cp = &env().cp;
    let ns = "drift";
    webhook_ready(cp).await;
    brokers(cp, ns, "kafka", 1).await;
    apply(cp, &policy(ns, "kafka", "{sasl: {scram: {enabled: true}}}", "TLS", true, 120));
    let done = wait_op(ns, OperationState::UpdateComplete, 120).await;
    let hash = done.status.unwrap().security_hash.unwrap();
    let cms = Api::<ConfigMap>::namespaced(cp.client().await.unwrap(), ns);
    let original = cms.get("kafka-security").await.unwrap().data;
    wait_sts_ready(cp, ns, "kafka").await;

    // The ConfigMap the brokers read, deleted: written again, the same.
    let out = cp.kubectl(&["delete", "configmap", "kafka-security", "-n", ns]);
    assert!(out.status.success(), "{}", stderr(&out));
    wait_until(Duration::from_secs(60), "the security ConfigMap restored", || {
        let cms = cms.clone();
        let original = original.clone();
        async move {
            let now = cms.get_opt("kafka-security").await.map_err(|e| e.to_string())?;
            (now.as_ref().map(|c| &c.data) == Some(&original)).then_some(()).ok_or("not yet".to_string())
        }
    })
    .await
    .unwrap();

    // The pod-template annotation that carries the applied state, removed: put back.
    let out = cp.kubectl(&[
        "patch",
        "statefulset",
        "kafka",
        "-n",
        ns,
        "--type=json",
        "-p",
        r#"[{"op": "remove", "path": "/spec/template/metadata/annotations/clustersecurity.io~1security-hash"}]"#,
    ]);
    assert!(out.status.success(), "{}", stderr(&out));
    let sts = Api::<StatefulSet>::namespaced(cp.client().await.unwrap(), ns);
    wait_until(Duration::from_secs(60), "the security-hash annotation restored", || {
        let sts = sts.clone();
        let hash = hash.clone();
        async move {
            let s = sts.get("kafka").await.map_err(|e| e.to_string())?;
            let ann = s.spec.template.metadata.and_then(|m| m.annotations);
            let ann = ann.unwrap_or_default();
            (ann.get("clustersecurity.io/security-hash") == Some(&hash)).then_some(()).ok_or(format!("{ann:?}"))
        }
    })
    .await
    .unwrap();
    let events = stdout(&cp.kubectl(&["get", "events", "-n", ns, "-o", "jsonpath={.items[*].reason}"]));
    // (Events of one reason are kept as one series: count the reason once.)
    assert!(events.contains("DriftRepaired"), "{events}");
    let o = wait_op(ns, OperationState::UpdateComplete, 60).await;
    assert_eq!(o.status.unwrap().operations.len(), 1, "repairs are not operations");
}
