//! `spec.mounts`: the operator puts its ConfigMap and Secrets into the broker container of the
//! pod template (and so into the pods), both kinds side by side under one field manager; a change
//! of content and wiring rolls once; what someone removes is put back; an opt-out takes only that
//! kind's mounts away; a container that does not exist fails the operation before anything is
//! written to the workload.

use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

use crate::support::{apply, env, stderr, stdout, wait_jsonpath, wait_sts_ready, webhook_ready};
use cluster_security_testbed::wait_until;
use k8s_openapi::api::apps::v1::StatefulSet;
use k8s_openapi::api::core::v1::{Pod, PodSpec};
use kube::Api;

/// A StatefulSet whose broker container is not the first one.
fn brokers_with_sidecar(ns: &str) -> String {
    format!(
        "apiVersion: v1\nkind: Namespace\nmetadata: {{name: {ns}}}\n---\napiVersion: apps/v1\nkind: StatefulSet\nmetadata: {{name: kafka, namespace: {ns}}}\nspec:\n  serviceName: kafka\n  replicas: 2\n  selector: {{matchLabels: {{app: kafka}}}}\n  template:\n    metadata: {{labels: {{app: kafka}}}}\n    spec:\n      containers:\n      - {{name: metrics, image: busybox}}\n      - name: kafka\n        image: apache/kafka:3.9.0\n        volumeMounts: [{{name: data, mountPath: /var/lib/kafka}}]\n      volumes: [{{name: data, emptyDir: {{}}}}]\n"
    )
}

fn policy(ns: &str, auth: &str) -> String {
    format!(
        "apiVersion: clustersecurity.io/v1alpha1\nkind: ClusterSecurityPolicy\nmetadata: {{name: policy, namespace: {ns}}}\nspec:\n  clusterRef: {{kind: StatefulSet, name: kafka}}\n  clientAuthentication: {auth}\n  rolloutTimeoutSeconds: 120\n  mounts: {{container: kafka}}\n"
    )
}

fn rotation(ns: &str, mounts: &str) -> String {
    format!(
        "apiVersion: clustersecurity.io/v1alpha1\nkind: CertificateRotation\nmetadata: {{name: certs, namespace: {ns}}}\nspec:\n  clusterRef: {{kind: StatefulSet, name: kafka}}\n  external: {{label: e1}}\n  internal: {{label: i1}}\n  rolloutTimeoutSeconds: 120\n  mounts: {mounts}\n"
    )
}

/// Wait until the newest operation of `kind/name` is `state` for the current generation.
async fn wait_state(ns: &str, kind: &str, name: &str, state: &str) -> String {
    let path = "{.status.operations[0].operationState}/{.status.observedGeneration}/{.metadata.generation}/{.status.conditions[?(@.type==\"Stalled\")].reason}";
    wait_jsonpath(&env().cp, (kind, ns, name), path, 120, |t| {
        let p: Vec<&str> = t.split('/').collect();
        p.len() == 4 && p[0] == state && p[1] == p[2]
    })
    .await
}

/// (container, volume, mountPath, source) of every mount the operator added (`csop-…`).
fn wired(spec: &PodSpec) -> BTreeSet<(String, String, String, String)> {
    let sources: BTreeMap<String, String> = spec
        .volumes
        .iter()
        .flatten()
        .filter(|v| v.name.starts_with("csop-"))
        .map(|v| {
            let source = match (&v.config_map, &v.secret, &v.downward_api) {
                (Some(cm), _, _) => format!("configmap/{}", cm.name),
                (_, Some(s), _) => format!("secret/{}", s.secret_name.clone().unwrap_or_default()),
                (_, _, Some(d)) => {
                    let items = d.items.iter().flatten();
                    let fields: Vec<String> = items
                        .map(|i| {
                            format!("{}={}", i.path, i.field_ref.as_ref().map(|f| f.field_path.as_str()).unwrap_or("?"))
                        })
                        .collect();
                    format!("downwardAPI/{}", fields.join(","))
                }
                _ => "other".into(),
            };
            (v.name.clone(), source)
        })
        .collect();
    let mut out = BTreeSet::new();
    for c in &spec.containers {
        for m in c.volume_mounts.iter().flatten().filter(|m| m.name.starts_with("csop-")) {
            assert_eq!(m.read_only, Some(true), "{} is mounted read-only", m.name);
            let source = sources.get(&m.name).cloned().unwrap_or_else(|| "no volume".into());
            out.insert((c.name.clone(), m.name.clone(), m.mount_path.clone(), source));
        }
    }
    assert_eq!(sources.len(), out.len(), "every volume of ours is mounted once: {sources:?} {out:?}");
    out
}

fn expect(rows: &[(&str, &str, &str)]) -> BTreeSet<(String, String, String, String)> {
    rows.iter().map(|(v, p, s)| ("kafka".to_string(), v.to_string(), p.to_string(), s.to_string())).collect()
}

/// Wait until the StatefulSet's template carries exactly the `expected` mounts of ours.
async fn wait_wired(ns: &str, expected: &BTreeSet<(String, String, String, String)>, what: &str) {
    let sts = Api::<StatefulSet>::namespaced(env().cp.client().await.unwrap(), ns);
    wait_until(Duration::from_secs(60), what, || {
        let (sts, expected) = (sts.clone(), expected.clone());
        async move {
            let s = sts.get("kafka").await.map_err(|e| e.to_string())?;
            let now = wired(s.spec.template.spec.as_ref().unwrap());
            (now == expected).then_some(()).ok_or(format!("{now:?}"))
        }
    })
    .await
    .unwrap();
}

async fn template(ns: &str) -> (i64, PodSpec) {
    let sts = Api::<StatefulSet>::namespaced(env().cp.client().await.unwrap(), ns).get("kafka").await.unwrap();
    (sts.metadata.generation.unwrap(), sts.spec.template.spec.unwrap())
}

#[tokio::test]
async fn both_kinds_mount_into_the_broker_container_roll_once_repair_and_opt_out() {
    let cp = &env().cp;
    let ns = "wiring";
    webhook_ready(cp).await;
    apply(cp, &brokers_with_sidecar(ns));
    wait_sts_ready(cp, ns, "kafka").await;
    apply(cp, &policy(ns, "{tls: {enabled: true}}"));
    apply(cp, &rotation(ns, "{container: kafka}"));
    wait_state(ns, "clustersecuritypolicy", "policy", "UPDATE_COMPLETE").await;
    wait_state(ns, "certificaterotation", "certs", "UPDATE_COMPLETE").await;
    wait_sts_ready(cp, ns, "kafka").await;

    // Both kinds' artefacts in the named container (not the first), at the documented paths;
    // the user's own volume untouched.
    let all = expect(&[
        ("csop-security-config", "/etc/kafka/security/config", "configmap/kafka-security"),
        ("csop-pod", "/etc/kafka/security/pod", "downwardAPI/name=metadata.name"),
        ("csop-client-ca", "/etc/kafka/security/client-ca", "secret/kafka-client-ca"),
        ("csop-external-tls", "/etc/kafka/security/external-tls", "secret/kafka-external-tls"),
        ("csop-internal-tls", "/etc/kafka/security/internal-tls", "secret/kafka-internal-tls"),
    ]);
    let (generation, spec) = template(ns).await;
    assert_eq!(wired(&spec), all);
    let kafka = spec.containers.iter().find(|c| c.name == "kafka").unwrap();
    assert!(kafka.volume_mounts.iter().flatten().any(|m| m.name == "data" && m.mount_path == "/var/lib/kafka"));
    assert!(spec.volumes.iter().flatten().any(|v| v.name == "data" && v.empty_dir.is_some()));
    // ... and in the pods, which rolled to that template.
    let pods = Api::<Pod>::namespaced(cp.client().await.unwrap(), ns);
    for pod in ["kafka-0", "kafka-1"] {
        let p = pods.get(pod).await.unwrap();
        assert_eq!(wired(&p.spec.unwrap()), all, "{pod}");
    }

    // A change of both content and wiring (mTLS → SCRAM: new properties, no client CA to
    // mount) rolls once: one new template generation.
    apply(cp, &policy(ns, "{sasl: {scram: {enabled: true}}}"));
    wait_jsonpath(cp, ("clustersecuritypolicy", ns, "policy"), "{.status.operations[1].operationState}", 60, |t| {
        t == "UPDATE_COMPLETE"
    })
    .await;
    wait_state(ns, "clustersecuritypolicy", "policy", "UPDATE_COMPLETE").await;
    wait_sts_ready(cp, ns, "kafka").await;
    let (after, spec) = template(ns).await;
    assert_eq!(after, generation + 1, "content and wiring changed in one template change");
    let without_ca: BTreeSet<_> = all.iter().filter(|m| m.1 != "csop-client-ca").cloned().collect();
    assert_eq!(wired(&spec), without_ca);

    // Someone removes a mount and its volume: put back (one roll), and said so.
    let vi = spec.volumes.iter().flatten().position(|v| v.name == "csop-external-tls").unwrap();
    let ci = spec.containers.iter().position(|c| c.name == "kafka").unwrap();
    let mi = spec.containers[ci].volume_mounts.iter().flatten().position(|m| m.name == "csop-external-tls").unwrap();
    let patch = format!(
        r#"[{{"op": "remove", "path": "/spec/template/spec/containers/{ci}/volumeMounts/{mi}"}}, {{"op": "remove", "path": "/spec/template/spec/volumes/{vi}"}}]"#
    );
    let out = cp.kubectl(&["patch", "statefulset", "kafka", "-n", ns, "--type=json", "-p", &patch]);
    assert!(out.status.success(), "{}", stderr(&out));
    wait_wired(ns, &without_ca, "the removed mount put back").await;
    let events = stdout(&cp.kubectl(&["get", "events", "-n", ns, "-o", "jsonpath={.items[*].message}"]));
    assert!(events.contains("volumes and mounts of StatefulSet"), "{events}");
    wait_sts_ready(cp, ns, "kafka").await;

    // The rotation opts out: its mounts go, the policy's stay; no operation for it.
    apply(cp, &rotation(ns, "{enabled: false}"));
    let only_config = expect(&[
        ("csop-security-config", "/etc/kafka/security/config", "configmap/kafka-security"),
        ("csop-pod", "/etc/kafka/security/pod", "downwardAPI/name=metadata.name"),
    ]);
    wait_wired(ns, &only_config, "the rotation's mounts removed").await;
    let ops = certs_jsonpath(ns, "{.status.operations[*].operationId}");
    assert_eq!(ops.split_whitespace().count(), 1, "an opt-out is not an operation: {ops}");
}

#[tokio::test]
async fn a_container_that_does_not_exist_fails_the_operation_before_anything_is_written() {
    let cp = &env().cp;
    let ns = "wiring-missing";
    webhook_ready(cp).await;
    crate::support::brokers(cp, ns, "kafka", 1).await;
    let (generation, _) = template(ns).await;
    apply(cp, &rotation(ns, "{container: broker}"));
    let state = wait_state(ns, "certificaterotation", "certs", "UPDATE_FAILED").await;
    assert!(state.ends_with("/ContainerNotFound"), "{state}");
    let message = certs_jsonpath(ns, "{.status.conditions[?(@.type==\"Stalled\")].message}");
    assert!(message.contains("no container \"broker\"") && message.contains("kafka"), "{message}");
    let (after, spec) = template(ns).await;
    assert_eq!(after, generation, "the workload was not touched");
    assert!(wired(&spec).is_empty());
    let secrets = stdout(&cp.kubectl(&["get", "secrets", "-n", ns, "-o", "name"]));
    assert!(!secrets.contains("kafka-external-tls"), "nothing issued: {secrets}");
}

/// A StatefulSet of `replicas` pods with the given `updateStrategy` (flow YAML).
fn brokers_with_strategy(ns: &str, replicas: i32, strategy: &str) -> String {
    format!(
        "apiVersion: v1\nkind: Namespace\nmetadata: {{name: {ns}}}\n---\napiVersion: apps/v1\nkind: StatefulSet\nmetadata: {{name: kafka, namespace: {ns}}}\nspec:\n  serviceName: kafka\n  replicas: {replicas}\n  updateStrategy: {strategy}\n  selector: {{matchLabels: {{app: kafka}}}}\n  template:\n    metadata: {{labels: {{app: kafka}}}}\n    spec:\n      containers: [{{name: kafka, image: apache/kafka:3.9.0}}]\n"
    )
}

/// The `controller-revision-hash` of each pod, by name, and the StatefulSet's update revision.
async fn revisions(ns: &str) -> (BTreeMap<String, String>, String) {
    let client = env().cp.client().await.unwrap();
    let pods = Api::<Pod>::namespaced(client.clone(), ns).list(&Default::default()).await.unwrap();
    let by_pod = pods
        .items
        .into_iter()
        .map(|p| {
            let rev = p.metadata.labels.unwrap_or_default().remove("controller-revision-hash").unwrap_or_default();
            (p.metadata.name.unwrap_or_default(), rev)
        })
        .collect();
    let sts = Api::<StatefulSet>::namespaced(client, ns).get("kafka").await.unwrap();
    (by_pod, sts.status.unwrap_or_default().update_revision.unwrap_or_default())
}

/// OnDelete: the StatefulSet controller replaces nothing by itself; the operator deletes the pods
/// one at a time, and the operation completes with every pod on the new template.
#[tokio::test]
async fn an_on_delete_statefulset_is_rolled_by_deleting_its_pods_one_at_a_time() {
    let cp = &env().cp;
    let ns = "roll-ondelete";
    webhook_ready(cp).await;
    apply(cp, &brokers_with_strategy(ns, 3, "{type: OnDelete}"));
    wait_sts_ready(cp, ns, "kafka").await;
    apply(cp, &rotation(ns, "{}"));
    wait_state(ns, "certificaterotation", "certs", "UPDATE_COMPLETE").await;
    let (pods, current) = revisions(ns).await;
    assert_eq!(pods.len(), 3, "{pods:?}");
    assert!(pods.values().all(|r| *r == current), "every pod on the new template: {pods:?} vs {current}");
    let events = stdout(&cp.kubectl(&[
        "get",
        "events",
        "-n",
        ns,
        "--field-selector",
        "reason=PodReplaced",
        "-o",
        "jsonpath={range .items[*]}{.message}{\"\\n\"}{end}",
    ]));
    assert!(events.contains("Deleted pod kafka-2"), "{events}");
    assert_eq!(certs_jsonpath(ns, "{.status.conditions[?(@.type==\"Ready\")].reason}"), "Applied");
}

/// A partition: the pods above it roll, the operation waits (no deadline, reason
/// RolloutHeldByPartition) while the rest keep the previous template, and completes once the
/// user lowers it.
#[tokio::test]
async fn a_partition_holds_the_operation_until_the_user_lowers_it() {
    let cp = &env().cp;
    let ns = "roll-partition";
    webhook_ready(cp).await;
    apply(cp, &brokers_with_strategy(ns, 2, "{type: RollingUpdate, rollingUpdate: {partition: 1}}"));
    wait_sts_ready(cp, ns, "kafka").await;
    // A deadline shorter than the hold: it must not run while the partition holds.
    apply(cp, &rotation(ns, "{}").replace("rolloutTimeoutSeconds: 120", "rolloutTimeoutSeconds: 20"));
    let held = wait_jsonpath(
        cp,
        ("certificaterotation", ns, "certs"),
        "{.status.conditions[?(@.type==\"Reconciling\")].reason}",
        60,
        |t| t == "RolloutHeldByPartition",
    )
    .await;
    assert_eq!(held, "RolloutHeldByPartition");
    let (pods, current) = revisions(ns).await;
    assert_eq!(pods["kafka-1"], current, "above the partition: rolled");
    assert_ne!(pods["kafka-0"], current, "below the partition: held");
    // Held past the 20 s deadline: still in progress, not failed. (Waiting out a deadline is
    // what this checks, so it sleeps.)
    tokio::time::sleep(Duration::from_secs(25)).await;
    let state = certs_jsonpath(ns, "{.status.operations[0].operationState}");
    assert_eq!(state, "UPDATE_IN_PROGRESS");
    let message = certs_jsonpath(ns, "{.status.conditions[?(@.type==\"Reconciling\")].message}");
    assert!(message.contains("partition=1") && message.contains("Lower the partition"), "{message}");
    let out = cp.kubectl(&[
        "patch",
        "statefulset",
        "kafka",
        "-n",
        ns,
        "-p",
        r#"{"spec":{"updateStrategy":{"rollingUpdate":{"partition":0}}}}"#,
    ]);
    assert!(out.status.success(), "{}", stderr(&out));
    wait_state(ns, "certificaterotation", "certs", "UPDATE_COMPLETE").await;
    let (pods, current) = revisions(ns).await;
    assert!(pods.values().all(|r| *r == current), "{pods:?}");
}

/// `jsonpath` of CertificateRotation `certs` in `ns`, as kubectl prints it.
fn certs_jsonpath(ns: &str, jsonpath: &str) -> String {
    stdout(&env().cp.kubectl(&["get", "certificaterotation", "certs", "-n", ns, "-o", &format!("jsonpath={jsonpath}")]))
}
