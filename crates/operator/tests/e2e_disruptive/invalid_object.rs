//! One object the operator's types cannot decode does not stall its kind (issue 31, item 5). An
//! older, looser CRD let `rolloutTimeoutSeconds: "soon"` in; the current CRD went back on top,
//! and the API server does not re-validate what it stores. Another one, written with no webhook
//! in the way, holds a number the schema allows and the type does not (above u32). The
//! operator, started with the first in its list, reports both (Warning Event, metric, log; the
//! second also Stalled `InvalidObject` in its status, which the API server refuses for the
//! first) and
//! reconciles the other ClusterSecurityPolicy in the same namespace to Ready (the controller's
//! first list, of typed objects, failed whole on the bad one, and so did every relist). Its own control
//! plane: the test changes a CRD, which every other test's objects share.

use std::path::Path;
use std::time::Duration;

use cluster_security_testbed::kubelet::PlayKubelet;
use cluster_security_testbed::operator::{self, Operator};
use cluster_security_testbed::{free_port, wait_until, ControlPlane, Options};

use crate::support;

const OPERATOR: &str = env!("CARGO_BIN_EXE_cluster-security-operator");
const NS: &str = "undecodable";

fn kubectl_ok(cp: &ControlPlane, args: &[&str], stdin: Option<&str>) -> String {
    let out = cp.kubectl_with_stdin(args, stdin);
    assert!(out.status.success(), "kubectl {}: {}", args.join(" "), support::stderr(&out));
    support::stdout(&out)
}

fn policy(name: &str, statefulset: &str, rollout_timeout: &str) -> String {
    format!(
        "apiVersion: clustersecurity.io/v1alpha1\nkind: ClusterSecurityPolicy\nmetadata: {{name: {name}, namespace: {NS}}}\nspec:\n  clusterRef: {{kind: StatefulSet, name: {statefulset}}}\n  clientAuthentication: {{tls: {{enabled: true}}}}\n  encryptionInTransit: {{clientBroker: TLS}}\n  rolloutTimeoutSeconds: {rollout_timeout}\n"
    )
}

fn brokers(name: &str) -> String {
    format!(
        "apiVersion: apps/v1\nkind: StatefulSet\nmetadata: {{name: {name}, namespace: {NS}}}\nspec:\n  serviceName: {name}\n  replicas: 1\n  selector: {{matchLabels: {{app: {name}}}}}\n  template:\n    metadata: {{labels: {{app: {name}}}}}\n    spec:\n      containers: [{{name: kafka, image: apache/kafka:3.9.0}}]\n"
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_object_that_does_not_decode_is_stalled_and_the_others_reconcile() {
    let cp = ControlPlane::start(Options::default()).expect("control plane starts");
    let client = cp.client().await.unwrap();
    let kubelet = PlayKubelet::start(client, "play-node").await.unwrap();
    operator::install(&cp, None).unwrap();
    kubectl_ok(&cp, &["create", "namespace", NS], None);

    // The looser CRD an older version might have had: rolloutTimeoutSeconds an int or a string.
    let crd = "crd/clustersecuritypolicies.clustersecurity.io";
    let field = "/spec/versions/0/schema/openAPIV3Schema/properties/spec/properties/rolloutTimeoutSeconds";
    let loosen =
        format!(r#"[{{"op": "replace", "path": "{field}", "value": {{"x-kubernetes-int-or-string": true}}}}]"#);
    kubectl_ok(&cp, &["patch", crd, "--type=json", "-p", &loosen], None);
    operator::wait_established(&cp).unwrap();
    // The schema change is served a moment later: until then the API server refuses the string.
    wait_until(Duration::from_secs(30), "the looser schema served", || {
        let out = cp.kubectl_with_stdin(&["apply", "-f", "-"], Some(&policy("bad", "bad-kafka", "soon")));
        async move { out.status.success().then_some(()).ok_or_else(|| support::stderr(&out)) }
    })
    .await
    .unwrap();
    // This version's CRDs again, as an upgrade applies them: the stored object stays as it is.
    let crds = operator::crds_path();
    kubectl_ok(&cp, &["apply", "--server-side", "--force-conflicts", "-f", crds.to_str().unwrap()], None);
    operator::wait_established(&cp).unwrap();
    let stored =
        kubectl_ok(&cp, &["get", "csp", "bad", "-n", NS, "-o", "jsonpath={.spec.rolloutTimeoutSeconds}"], None);
    assert_eq!(stored, "soon", "the API server keeps what it stored");
    let refused = cp.kubectl_with_stdin(&["apply", "-f", "-"], Some(&policy("refused", "kafka", "\"later\"")));
    assert!(!refused.status.success(), "the current schema refuses a string again");

    // Started with the undecodable object in its first list.
    let mut op =
        Operator::start(&cp, Path::new(OPERATOR), free_port(), &["--disable-webhook"]).expect("operator starts");
    kubectl_ok(&cp, &["apply", "-f", "-"], Some(&brokers("kafka")));
    kubectl_ok(&cp, &["apply", "-f", "-"], Some(&policy("good", "kafka", "120")));

    // The good one: Ready, though an object of its kind in its namespace does not decode.
    let ready = "{.status.conditions[?(@.type==\"Ready\")].status}";
    support::wait_jsonpath(&cp, ("clustersecuritypolicy", NS, "good"), ready, 150, |s| s == "True").await;

    // Past the webhook (none here), within the schema, beyond the type: a u32 field above u32::MAX.
    kubectl_ok(&cp, &["apply", "-f", "-"], Some(&policy("huge", "huge-kafka", "5000000000")));

    // The one the schema allows: Stalled InvalidObject, the value named, Ready False.
    let stalled =
        "{.status.conditions[?(@.type==\"Stalled\")].reason}: {.status.conditions[?(@.type==\"Stalled\")].message}";
    let text = support::wait_jsonpath(&cp, ("clustersecuritypolicy", NS, "huge"), stalled, 60, |s| {
        s.starts_with("InvalidObject")
    })
    .await;
    assert!(text.contains("5000000000"), "{text}");
    let ready_huge = kubectl_ok(&cp, &["get", "csp", "huge", "-n", NS, "-o", &format!("jsonpath={ready}")], None);
    assert_eq!(ready_huge, "False");

    // Both: a Warning Event, their metric series, the log.
    wait_until(Duration::from_secs(30), "Warning InvalidObject events about bad and huge", || {
        let out = cp.kubectl(&[
            "get",
            "events",
            "-n",
            NS,
            "-o",
            "jsonpath={range .items[*]}{.type}/{.reason}/{.regarding.name}{.involvedObject.name} {end}",
        ]);
        let text = support::stdout(&out);
        let both = text.contains("Warning/InvalidObject/bad ") && text.contains("Warning/InvalidObject/huge ");
        async move { both.then_some(()).ok_or(text) }
    })
    .await
    .unwrap();
    let port = op.health_port;
    for name in ["bad", "huge"] {
        wait_until(Duration::from_secs(30), &format!("the stalled series of {name}"), || async move {
            let metrics = operator::http_get(port, "/metrics").ok_or("no answer")?.1;
            let series = |l: &&str| {
                l.starts_with("csop_resource_stalled{")
                    && l.contains(&format!("name=\"{name}\""))
                    && l.contains("reason=\"InvalidObject\"")
                    && l.ends_with(" 1")
            };
            metrics.lines().find(series).map(|_| ()).ok_or_else(|| {
                metrics.lines().filter(|l| l.starts_with("csop_resource_stalled")).collect::<Vec<_>>().join("\n")
            })
        })
        .await
        .unwrap();
    }
    let log = op.log_text();
    assert!(log.contains("object does not decode") && log.contains("name=huge"), "the log says so too");
    // The one the current schema refuses: the API server refuses every status write of it too
    // (it validates the whole object), so the Event, the metric and the log are what say it.
    assert!(log.contains("could not write the status of an object that does not decode"), "{log}");
    let conditions = kubectl_ok(&cp, &["get", "csp", "bad", "-n", NS, "-o", "jsonpath={.status.conditions}"], None);
    assert_eq!(conditions, "", "nothing could be written");

    // Fixed, it is reconciled like any other (its workload does not exist: not InvalidObject).
    let fix = r#"{"spec":{"rolloutTimeoutSeconds":120}}"#;
    kubectl_ok(&cp, &["patch", "csp", "huge", "-n", NS, "--type=merge", "-p", fix], None);
    support::wait_jsonpath(&cp, ("clustersecuritypolicy", NS, "huge"), stalled, 60, |s| {
        !s.starts_with("InvalidObject")
    })
    .await;
    op.stop();
    kubelet.stop();
}
