//! Adopting a running cluster: what the brokers' container says they run (the Apache Kafka
//! image's `KAFKA_*` environment) is kept or the change refused before anything is written — a
//! KRaft combined node keeps its controller listener in the rendered configuration; a first
//! adoption that would move the inter-broker listener in one roll is refused with the two rolls
//! to do first.

use crate::support::{apply, env, stdout, wait_jsonpath, wait_sts_ready, webhook_ready};
use k8s_openapi::api::apps::v1::StatefulSet;
use k8s_openapi::api::core::v1::ConfigMap;
use kube::Api;

/// A 2-broker StatefulSet whose container declares `env` (flow YAML list items).
fn brokers(ns: &str, env: &str) -> String {
    format!(
        "apiVersion: v1\nkind: Namespace\nmetadata: {{name: {ns}}}\n---\napiVersion: apps/v1\nkind: StatefulSet\nmetadata: {{name: kafka, namespace: {ns}}}\nspec:\n  serviceName: kafka\n  replicas: 2\n  selector: {{matchLabels: {{app: kafka}}}}\n  template:\n    metadata: {{labels: {{app: kafka}}}}\n    spec:\n      containers:\n      - name: kafka\n        image: apache/kafka:3.9.0\n        env: [{env}]\n"
    )
}

fn policy(ns: &str, extra: &str) -> String {
    format!(
        "apiVersion: clustersecurity.io/v1alpha1\nkind: ClusterSecurityPolicy\nmetadata: {{name: policy, namespace: {ns}{extra}}}\nspec:\n  clusterRef: {{kind: StatefulSet, name: kafka}}\n  clientAuthentication: {{tls: {{enabled: true}}}}\n  encryptionInTransit: {{clientBroker: TLS, inCluster: true}}\n  rolloutTimeoutSeconds: 120\n"
    )
}

/// `state/stalled reason` of the newest operation, once it is `state` for the current generation.
async fn wait_state(ns: &str, state: &str) -> String {
    let path = "{.status.operations[0].operationState}/{.status.observedGeneration}/{.metadata.generation}/{.status.conditions[?(@.type==\"Stalled\")].reason}";
    let text = wait_jsonpath(&env().cp, ("clustersecuritypolicy", ns, "policy"), path, 120, |t| {
        let p: Vec<&str> = t.split('/').collect();
        p.len() == 4 && p[0] == state && p[1] == p[2]
    })
    .await;
    text.rsplit('/').next().unwrap_or_default().to_string()
}

async fn template_generation(ns: &str) -> i64 {
    let sts = Api::<StatefulSet>::namespaced(env().cp.client().await.unwrap(), ns).get("kafka").await.unwrap();
    sts.metadata.generation.unwrap()
}

fn stalled_message(ns: &str) -> String {
    let path = "jsonpath={.status.conditions[?(@.type==\"Stalled\")].message}";
    stdout(&env().cp.kubectl(&["get", "csp", "policy", "-n", ns, "-o", path]))
}

#[tokio::test]
async fn a_kraft_combined_node_keeps_its_controller_listener_or_nothing_is_rolled() {
    let cp = &env().cp;
    let ns = "adopt-kraft";
    webhook_ready(cp).await;
    let kraft = "{name: KAFKA_PROCESS_ROLES, value: 'broker,controller'}, {name: KAFKA_CONTROLLER_LISTENER_NAMES, value: CONTROLLER}, {name: KAFKA_LISTENERS, value: 'PLAINTEXT://:9092,CONTROLLER://:9093'}, {name: KAFKA_LISTENER_SECURITY_PROTOCOL_MAP, value: 'PLAINTEXT:PLAINTEXT,CONTROLLER:PLAINTEXT'}";
    apply(cp, &brokers(ns, kraft));
    wait_sts_ready(cp, ns, "kafka").await;
    let generation = template_generation(ns).await;

    // Without spec.controllerListener the rendered listeners would drop it: refused, nothing written.
    apply(cp, &policy(ns, ""));
    assert_eq!(wait_state(ns, "UPDATE_FAILED").await, "ControllerListenerRequired");
    let message = stalled_message(ns);
    assert!(message.contains("CONTROLLER://:9093 (PLAINTEXT)"), "{message}");
    assert!(
        message.contains("spec.controllerListener: {name: CONTROLLER, port: 9093, protocol: PLAINTEXT}"),
        "{message}"
    );
    assert_eq!(template_generation(ns).await, generation, "nothing rolled");
    let cms = Api::<ConfigMap>::namespaced(cp.client().await.unwrap(), ns);
    assert!(cms.get_opt("kafka-security").await.unwrap().is_none(), "nothing written");

    // As the message says: the configuration keeps it, and the operation completes.
    let with = policy(ns, "").replace(
        "  rolloutTimeoutSeconds: 120\n",
        "  rolloutTimeoutSeconds: 120\n  controllerListener: {name: CONTROLLER, port: 9093, protocol: PLAINTEXT}\n",
    );
    apply(cp, &with);
    assert_eq!(wait_state(ns, "UPDATE_COMPLETE").await, "");
    let properties = cms.get("kafka-security").await.unwrap().data.unwrap().remove("server.properties").unwrap();
    let lines: Vec<&str> = properties.lines().collect();
    assert!(lines.contains(&"listeners=TLS://:9094,REPLICATION://:9091,CONTROLLER://:9093"), "{properties}");
    assert!(
        lines.contains(&"listener.security.protocol.map=TLS:SSL,REPLICATION:SSL,CONTROLLER:PLAINTEXT"),
        "{properties}"
    );
    assert!(lines.contains(&"controller.listener.names=CONTROLLER"), "{properties}");
    assert!(lines.contains(&"inter.broker.listener.name=REPLICATION"), "{properties}");
    // Each broker advertises its own name under the StatefulSet's headless Service (the pod name
    // comes from the mounted pod-name file); the controller listener is not advertised.
    let host = format!("${{dir:/etc/kafka/security/pod:name}}.kafka.{ns}.svc");
    let advertised = format!("advertised.listeners=TLS://{host}:9094,REPLICATION://{host}:9091");
    assert!(lines.contains(&advertised.as_str()), "{properties}");

    // ... and it stays as the quorum runs it.
    let moved = with.replace("port: 9093", "port: 9193");
    let out = cp.kubectl_with_stdin(&["apply", "-f", "-"], Some(&moved));
    assert!(!out.status.success(), "a moved controller listener is refused at admission");
    assert!(crate::support::stderr(&out).contains("rule ControllerListener"), "{}", crate::support::stderr(&out));
    crate::support::assert_no_secret_leaks(&[]).await;
}

#[tokio::test]
async fn a_first_adoption_that_would_move_the_inter_broker_listener_is_refused_until_the_brokers_moved() {
    let cp = &env().cp;
    let ns = "adopt-interbroker";
    webhook_ready(cp).await;
    let running =
        "{name: KAFKA_LISTENERS, value: 'BROKER://:29092'}, {name: KAFKA_INTER_BROKER_LISTENER_NAME, value: BROKER}";
    apply(cp, &brokers(ns, running));
    wait_sts_ready(cp, ns, "kafka").await;
    let generation = template_generation(ns).await;

    apply(cp, &policy(ns, ""));
    assert_eq!(wait_state(ns, "UPDATE_FAILED").await, "InterBrokerListenerChange");
    let message = stalled_message(ns);
    assert!(
        message.contains("BROKER://:29092") && message.contains("KAFKA_INTER_BROKER_LISTENER_NAME=REPLICATION"),
        "{message}"
    );
    assert_eq!(template_generation(ns).await, generation, "nothing rolled");

    // The user moves the brokers (here in one step), then asks again: one roll applies the policy.
    let moved = "{name: KAFKA_LISTENERS, value: 'BROKER://:29092,REPLICATION://:9091'}, {name: KAFKA_INTER_BROKER_LISTENER_NAME, value: REPLICATION}";
    apply(cp, &brokers(ns, moved));
    wait_sts_ready(cp, ns, "kafka").await;
    apply(cp, &policy(ns, ", annotations: {clustersecurity.io/retry: moved}"));
    assert_eq!(wait_state(ns, "UPDATE_COMPLETE").await, "");
    crate::support::assert_no_secret_leaks(&[]).await;
}
