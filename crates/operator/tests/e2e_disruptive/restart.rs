//! The operator against a real apiserver when things go wrong: CRDs missing (it says how to
//! install them), no webhook (an invalid spec that got in is Stalled with InvalidSpec and nothing
//! is applied), and an apiserver restart (it reconnects and keeps reconciling).

use std::path::Path;
use std::time::Duration;

use cluster_security_api::ClusterSecurityPolicy;
use cluster_security_testbed::leaks;
use cluster_security_testbed::operator::{self, Operator};
use cluster_security_testbed::{free_port, wait_until, ControlPlane, Options};
use kube::Api;

const OPERATOR: &str = env!("CARGO_BIN_EXE_cluster-security-operator");

fn policy(client_broker: &str) -> String {
    format!(
        "apiVersion: clustersecurity.io/v1alpha1\nkind: ClusterSecurityPolicy\nmetadata: {{name: orders, namespace: kafka}}\nspec:\n  clusterRef: {{kind: StatefulSet, name: orders-kafka}}\n  clientAuthentication: {{sasl: {{scram: {{enabled: true}}}}}}\n  encryptionInTransit: {{clientBroker: {client_broker}}}\n"
    )
}

async fn wait_condition(api: &Api<ClusterSecurityPolicy>, generation: i64, stalled: bool) -> ClusterSecurityPolicy {
    // Generous: after an apiserver restart the watches reconnect with kube-runtime's default
    // exponential backoff (up to 30 s between attempts; seen taking up to ~100 s in all).
    wait_until(Duration::from_secs(240), &format!("generation {generation} reconciled, stalled={stalled}"), || {
        let api = api.clone();
        async move {
            let o = api.get("orders").await.map_err(|e| e.to_string())?;
            let st = o.status.clone().unwrap_or_default();
            let is_stalled = st.conditions.iter().any(|c| c.type_ == "Stalled" && c.status == "True");
            (st.observed_generation == Some(generation) && is_stalled == stalled)
                .then_some(o)
                .ok_or_else(|| format!("{st:?}"))
        }
    })
    .await
    .unwrap()
}

#[tokio::test]
async fn missing_crds_invalid_spec_and_apiserver_restart() {
    let cp = ControlPlane::start(Options::default()).expect("control plane starts");
    let binary = Path::new(OPERATOR);

    // 1. No CRDs: the operator stops at once and says how to install them.
    let err = Operator::start(&cp, binary, free_port(), &["--disable-webhook"]).err().expect("operator refuses to run");
    let text = format!("{err:#}");
    assert!(text.contains("is not installed") && text.contains("kubectl apply -f crds/"), "{text}");

    // 2. CRDs but no webhook: an invalid spec gets in, and is Stalled with InvalidSpec.
    operator::install(&cp, None).unwrap();
    let mut op = Operator::start(&cp, binary, free_port(), &["--disable-webhook"]).expect("operator starts");
    let ns = cp.kubectl_with_stdin(&["create", "namespace", "kafka"], None);
    assert!(ns.status.success());
    let out = cp.kubectl_with_stdin(&["apply", "-f", "-"], Some(&policy("PLAINTEXT")));
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let api: Api<ClusterSecurityPolicy> = Api::namespaced(cp.client().await.unwrap(), "kafka");
    let o = wait_condition(&api, 1, true).await;
    let conds = o.status.unwrap().conditions;
    let stalled = conds.iter().find(|c| c.type_ == "Stalled").unwrap();
    assert_eq!(stalled.reason, "InvalidSpec");
    assert!(
        stalled.message.contains("SASL/SCRAM authentication allows client-broker encryption TLS"),
        "{}",
        stalled.message
    );
    let ready = conds.iter().find(|c| c.type_ == "Ready").unwrap();
    assert_eq!((ready.status.as_str(), ready.reason.as_str()), ("False", "InvalidSpec"));
    assert!(conds.iter().all(|c| c.type_ != "Reconciling"));
    // A Warning event tells `kubectl describe` readers the same.
    wait_until(Duration::from_secs(30), "InvalidSpec warning event", || {
        let out =
            cp.kubectl(&["get", "events", "-n", "kafka", "-o", "jsonpath={range .items[*]}{.type}/{.reason} {end}"]);
        let text = String::from_utf8_lossy(&out.stdout).into_owned();
        async move { text.contains("Warning/InvalidSpec").then_some(()).ok_or(text) }
    })
    .await
    .unwrap();

    // 3. Restart the apiserver; the operator reconnects and reconciles the corrected spec.
    cp.restart_apiserver().unwrap();
    let out = cp.kubectl_with_stdin(&["apply", "-f", "-"], Some(&policy("TLS")));
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let api: Api<ClusterSecurityPolicy> = Api::namespaced(cp.client().await.unwrap(), "kafka");
    let o = wait_condition(&api, 2, false).await;
    let conds = o.status.unwrap().conditions;
    assert!(conds.iter().all(|c| c.type_ != "Stalled"), "Stalled is removed once the spec is fixed");
    assert!(op.is_running(), "operator survived the apiserver restart:\n{}", op.log_text());

    // 4. Still without the webhook: a second policy for the same workload changes nothing.
    let second = policy("TLS").replace("name: orders,", "name: orders-copy,");
    let out = cp.kubectl_with_stdin(&["apply", "-f", "-"], Some(&second));
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let conflict = wait_until(Duration::from_secs(60), "the newer policy is Stalled Conflict", || async {
        let o = api.get("orders-copy").await.map_err(|e| e.to_string())?;
        let st = o.status.unwrap_or_default();
        let stalled = st.conditions.iter().find(|c| c.type_ == "Stalled" && c.reason == "Conflict");
        match stalled {
            Some(c) => Ok((c.message.clone(), st.operations.len() + st.current_operation.iter().count())),
            None => Err(format!("{:?}", st.conditions)),
        }
    })
    .await
    .unwrap();
    assert!(conflict.0.contains("OneResourcePerWorkload") && conflict.0.contains("\"orders\""), "{}", conflict.0);
    assert_eq!(conflict.1, 0, "the newer policy recorded no operation");
    op.stop();
    leaks::assert_none(&cp, &[]).await;
}
