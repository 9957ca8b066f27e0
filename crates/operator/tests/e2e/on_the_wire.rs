//! Verified on the wire (`spec.verify`): the play kubelet gives every pod its own loopback
//! address and serves, there, the TLS listeners its mounted `server.properties` names with the
//! certificates its mounted Secrets held when it started. An operation completes only once every
//! pod presents what was put in place; a pod that keeps its old certificate holds the operation
//! and is named; an unreachable one is told apart; `verify: Off` skips the check. The tests check
//! the brokers with their own rustls client (chain **and** DNS name, as a Kafka client does), not
//! with the operator's code. Whom the operator connects to is part of it: only the workload's own
//! pods (not another pod with its labels, not a pod on the host's network) and only the ports it
//! rendered (not those of an edited ConfigMap).

use std::net::SocketAddr;

use crate::support::{apply, env, wait_jsonpath, wait_sts_ready, webhook_ready};
use cluster_security_testbed::{brokers, pki};
use k8s_openapi::api::core::v1::{ConfigMap, Pod, Secret};
use kube::api::DeleteParams;
use kube::Api;

/// A namespace, a headless Service and a StatefulSet `kafka` of `replicas` pods.
fn cluster(ns: &str, replicas: i32) -> String {
    format!(
        "apiVersion: v1\nkind: Namespace\nmetadata: {{name: {ns}}}\n---\napiVersion: v1\nkind: Service\nmetadata: {{name: kafka, namespace: {ns}}}\nspec:\n  clusterIP: None\n  selector: {{app: kafka}}\n  ports: [{{name: tls, port: 9094}}]\n---\napiVersion: apps/v1\nkind: StatefulSet\nmetadata: {{name: kafka, namespace: {ns}}}\nspec:\n  serviceName: kafka\n  replicas: {replicas}\n  selector: {{matchLabels: {{app: kafka}}}}\n  template:\n    metadata: {{labels: {{app: kafka}}}}\n    spec:\n      containers: [{{name: kafka, image: apache/kafka:3.9.0}}]\n"
    )
}

/// mTLS clients over TLS, TLS between brokers: listeners TLS (9094) and REPLICATION (9091).
fn policy(ns: &str, extra: &str) -> String {
    format!(
        "apiVersion: clustersecurity.io/v1alpha1\nkind: ClusterSecurityPolicy\nmetadata: {{name: policy, namespace: {ns}}}\nspec:\n  clusterRef: {{kind: StatefulSet, name: kafka}}\n  clientAuthentication: {{tls: {{enabled: true}}}}\n  encryptionInTransit: {{clientBroker: TLS, inCluster: true}}\n  rolloutTimeoutSeconds: 300\n{extra}"
    )
}

fn rotation(ns: &str, label: &str, extra: &str) -> String {
    format!(
        "apiVersion: clustersecurity.io/v1alpha1\nkind: CertificateRotation\nmetadata: {{name: certs, namespace: {ns}}}\nspec:\n  clusterRef: {{kind: StatefulSet, name: kafka}}\n  external: {{label: {label}}}\n  internal: {{label: i1}}\n  rolloutTimeoutSeconds: 300\n{extra}"
    )
}

/// Wait until the newest operation of `kind/name` is `state` for the current generation; the
/// Stalled reason, if any.
async fn wait_state(ns: &str, kind: &str, name: &str, state: &str, seconds: u64) -> String {
    let path = "{.status.operations[0].operationState}/{.status.observedGeneration}/{.metadata.generation}/{.status.conditions[?(@.type==\"Stalled\")].reason}";
    let text = wait_jsonpath(&env().cp, (kind, ns, name), path, seconds, |t| {
        let p: Vec<&str> = t.split('/').collect();
        p.len() == 4 && p[0] == state && p[1] == p[2]
    })
    .await;
    text.rsplit('/').next().unwrap_or_default().to_string()
}

fn jsonpath(ns: &str, kind: &str, name: &str, path: &str) -> String {
    crate::support::stdout(&env().cp.kubectl(&["get", kind, name, "-n", ns, "-o", &format!("jsonpath={path}")]))
}

/// A namespace whose brokers run both kinds' artefacts, both operations complete.
async fn secured(ns: &str, replicas: i32) {
    let cp = &env().cp;
    webhook_ready(cp).await;
    apply(cp, &cluster(ns, replicas));
    wait_sts_ready(cp, ns, "kafka").await;
    apply(cp, &policy(ns, ""));
    apply(cp, &rotation(ns, "e1", ""));
    wait_state(ns, "clustersecuritypolicy", "policy", "UPDATE_COMPLETE", 180).await;
    wait_state(ns, "certificaterotation", "certs", "UPDATE_COMPLETE", 180).await;
    wait_sts_ready(cp, ns, "kafka").await;
}

/// SHA-256 of the certificate in `tls.crt` of Secret `name`, and the PEM of its `ca.crt`.
async fn secret_certificate(ns: &str, name: &str) -> (String, String) {
    let s = Api::<Secret>::namespaced(env().cp.client().await.unwrap(), ns).get(name).await.unwrap();
    let data = s.data.unwrap();
    let pem = |k: &str| String::from_utf8(data.get(k).unwrap().0.clone()).unwrap();
    (pki::pem_fingerprint(&pem("tls.crt")).unwrap(), pem("ca.crt"))
}

/// What a client trusting `trust` sees on `port` of each pod, reached as
/// `<pod>.kafka.<ns>.svc`: SHA-256 of the verified certificate, by pod.
async fn presented(ns: &str, pods: &[&str], port: u16, trust: &str) -> Vec<String> {
    let api = Api::<Pod>::namespaced(env().cp.client().await.unwrap(), ns);
    let mut out = Vec::new();
    for pod in pods {
        let ip: std::net::IpAddr = api.get(pod).await.unwrap().status.unwrap().pod_ip.unwrap().parse().unwrap();
        assert!(ip.is_loopback() && ip.to_string() != "127.0.0.1", "{pod} has its own address: {ip}");
        let name = format!("{pod}.kafka.{ns}.svc");
        let der = brokers::trusted_certificate(SocketAddr::new(ip, port), trust, &name)
            .await
            .unwrap_or_else(|e| panic!("{pod}:{port} as {name}: {e}"));
        out.push(pki::fingerprint(&der));
    }
    out
}

#[tokio::test]
async fn a_rotation_completes_once_every_broker_presents_the_new_certificate_to_a_client_that_trusts_it() {
    let ns = "wire";
    let pods = ["kafka-0", "kafka-1", "kafka-2"];
    secured(ns, 3).await;
    let trust = |cm: ConfigMap| cm.data.unwrap().remove("ca.crt").unwrap();
    let cms = Api::<ConfigMap>::namespaced(env().cp.client().await.unwrap(), ns);
    let (old, _) = secret_certificate(ns, "kafka-external-tls").await;
    let bundle = trust(cms.get("kafka-external-trust").await.unwrap());
    assert_eq!(presented(ns, &pods, 9094, &bundle).await, vec![old.clone(); 3]);

    apply(&env().cp, &rotation(ns, "e2", ""));
    wait_state(ns, "certificaterotation", "certs", "UPDATE_COMPLETE", 180).await;
    let (new, _) = secret_certificate(ns, "kafka-external-tls").await;
    assert_ne!(new, old, "a new label issues a new certificate");
    // Complete means: what a client sees now, on every broker, is the new certificate.
    let bundle = trust(cms.get("kafka-external-trust").await.unwrap());
    assert_eq!(presented(ns, &pods, 9094, &bundle).await, vec![new; 3]);
    let (internal, internal_ca) = secret_certificate(ns, "kafka-internal-tls").await;
    assert_eq!(presented(ns, &pods, 9091, &internal_ca).await, vec![internal; 3]);
    // ... and the operation says what was checked.
    let verification = jsonpath(ns, "certificaterotation", "certs", "{.status.operations[0].verification}");
    assert!(
        verification.starts_with("3 pod(s) present the expected certificate on TLS (9094), REPLICATION (9091)"),
        "{verification}"
    );
    let ready = jsonpath(ns, "certificaterotation", "certs", "{.status.conditions[?(@.type==\"Ready\")].status}");
    assert_eq!(ready, "True");
    crate::support::assert_no_secret_leaks(&[]).await;
}

#[tokio::test]
async fn a_broker_that_keeps_its_old_certificate_holds_the_operation_and_is_named() {
    let ns = "wire-stale";
    secured(ns, 2).await;
    let (old, _) = secret_certificate(ns, "kafka-external-tls").await;
    // kafka-0 restarts with the new template but keeps serving what it served before.
    env().held.serve_old_material(ns, "kafka-0", true);
    apply(&env().cp, &rotation(ns, "e2", ""));
    let message = wait_jsonpath(
        &env().cp,
        ("certificaterotation", ns, "certs"),
        "{.status.conditions[?(@.type==\"Stalled\")].reason}: {.status.conditions[?(@.type==\"Stalled\")].message}",
        180,
        |t| t.starts_with("VerificationFailed: "),
    )
    .await;
    assert!(message.contains("pod kafka-0 port 9094 (TLS) presents serial"), "{message}");
    assert!(message.contains(&old[..16]), "what it presents is named by fingerprint: {message}");
    assert!(!message.contains("kafka-1"), "the pod that serves the new certificate is not named: {message}");
    let state = jsonpath(ns, "certificaterotation", "certs", "{.status.operations[0].operationState}");
    assert_eq!(state, "UPDATE_IN_PROGRESS", "not complete while a broker presents the old certificate");
    let ready = jsonpath(ns, "certificaterotation", "certs", "{.status.conditions[?(@.type==\"Ready\")].status}");
    assert_eq!(ready, "False");

    // The broker is fixed and restarted: the operation completes.
    env().held.serve_old_material(ns, "kafka-0", false);
    let pods = Api::<Pod>::namespaced(env().cp.client().await.unwrap(), ns);
    pods.delete("kafka-0", &DeleteParams::default()).await.unwrap();
    wait_state(ns, "certificaterotation", "certs", "UPDATE_COMPLETE", 180).await;
    let verification = jsonpath(ns, "certificaterotation", "certs", "{.status.operations[0].verification}");
    assert!(verification.starts_with("2 pod(s) present the expected certificate"), "{verification}");
    crate::support::assert_no_secret_leaks(&[]).await;
}

#[tokio::test]
async fn an_unreachable_listener_is_its_own_reason_fails_at_the_deadline_and_verify_off_skips_the_check() {
    let cp = &env().cp;
    let ns = "wire-off";
    webhook_ready(cp).await;
    apply(cp, &cluster(ns, 1));
    wait_sts_ready(cp, ns, "kafka").await;
    apply(cp, &policy(ns, "  verify: {enabled: false}\n"));
    wait_state(ns, "clustersecuritypolicy", "policy", "UPDATE_COMPLETE", 120).await;
    // The certificates are not mounted: the broker cannot open its TLS listeners.
    let rotation_short =
        |extra: &str| rotation(ns, "e1", extra).replace("rolloutTimeoutSeconds: 300", "rolloutTimeoutSeconds: 25");
    apply(cp, &rotation_short("  mounts: {enabled: false}\n"));
    let message = wait_jsonpath(
        cp,
        ("certificaterotation", ns, "certs"),
        "{.status.conditions[?(@.type==\"Stalled\")].reason}: {.status.conditions[?(@.type==\"Stalled\")].message}",
        120,
        |t| t.starts_with("BrokerUnreachable: "),
    )
    .await;
    assert!(message.contains("pod kafka-0 port 9094 (TLS)") && message.contains("NetworkPolicy"), "{message}");
    assert!(message.contains("spec.verify.enabled: false"), "{message}");
    // Past rolloutTimeoutSeconds the operation fails with that reason.
    wait_state(ns, "certificaterotation", "certs", "UPDATE_FAILED", 120).await;
    let code = jsonpath(ns, "certificaterotation", "certs", "{.status.operations[0].errorInfo.code}");
    assert_eq!(code, "BrokerUnreachable");

    // verify disabled: the next operation completes without connecting, and says so.
    apply(cp, &rotation_short("  mounts: {enabled: false}\n  verify: {enabled: false}\n"));
    wait_state(ns, "certificaterotation", "certs", "UPDATE_COMPLETE", 120).await;
    let verification = jsonpath(ns, "certificaterotation", "certs", "{.status.operations[0].verification}");
    assert_eq!(verification, "Not checked on the wire (spec.verify.enabled: false).");
    crate::support::assert_no_secret_leaks(&[]).await;
}

/// `tls.clients`: the operator issues a client certificate from its client CA into the named
/// Secret; with it (and the published trust bundle) a client completes a mutual-TLS handshake
/// with every broker, whose listener requires a certificate from that CA. Listing another client
/// rolls nothing; a deleted client Secret is issued again.
#[tokio::test]
async fn a_client_certificate_on_request_opens_every_brokers_mtls_listener() {
    let cp = &env().cp;
    let ns = "wire-clients";
    let pods = ["kafka-0", "kafka-1"];
    secured(ns, 2).await;
    let with_clients = |clients: &str| {
        policy(ns, "").replace(
            "clientAuthentication: {tls: {enabled: true}}",
            &format!("clientAuthentication: {{tls: {{enabled: true, clients: [{clients}]}}}}"),
        )
    };
    let sts = Api::<k8s_openapi::api::apps::v1::StatefulSet>::namespaced(cp.client().await.unwrap(), ns);
    let generation = sts.get("kafka").await.unwrap().metadata.generation;
    apply(cp, &with_clients("{name: orders-app, secretName: orders-app-tls}"));
    wait_state(ns, "clustersecuritypolicy", "policy", "UPDATE_COMPLETE", 120).await;
    let ops = jsonpath(ns, "clustersecuritypolicy", "policy", "{.status.operations[*].operationId}");
    assert_eq!(ops.split_whitespace().count(), 2, "listing a client is an operation: {ops}");
    assert_eq!(sts.get("kafka").await.unwrap().metadata.generation, generation, "and rolls nothing");

    let secrets = Api::<Secret>::namespaced(cp.client().await.unwrap(), ns);
    let client = |s: Secret| {
        let d = s.data.unwrap();
        let text = |k: &str| String::from_utf8(d[k].0.clone()).unwrap();
        (text("tls.crt"), text("tls.key"))
    };
    let (cert, key) = client(secrets.get("orders-app-tls").await.unwrap());
    let der = pki::certificates(&cert).unwrap().remove(0);
    let (_, parsed) = x509_parser::parse_x509_certificate(&der).unwrap();
    // Kafka's principal for it: User:CN=orders-app,OU=clustersecurity-clients (RFC 2253 order),
    // never a broker's (CN=<service>, no unit).
    assert_eq!(parsed.subject().to_string(), "OU=clustersecurity-clients, CN=orders-app");
    let cms = Api::<ConfigMap>::namespaced(cp.client().await.unwrap(), ns);
    let bundle = cms.get("kafka-external-trust").await.unwrap().data.unwrap().remove("ca.crt").unwrap();
    let api = Api::<Pod>::namespaced(cp.client().await.unwrap(), ns);
    for pod in pods {
        let ip: std::net::IpAddr = api.get(pod).await.unwrap().status.unwrap().pod_ip.unwrap().parse().unwrap();
        let addr = SocketAddr::new(ip, 9094);
        let name = format!("{pod}.kafka.{ns}.svc");
        brokers::mutual_tls_handshake(addr, &bundle, &name, &cert, &key)
            .await
            .unwrap_or_else(|e| panic!("{pod}: the issued client certificate is accepted: {e}"));
        // A certificate from another CA is not (the listener really checks).
        let stranger_ca = pki::new_ca("stranger", k8s_openapi::jiff::Timestamp::now(), 1).unwrap();
        let stranger = pki::leaf(
            &stranger_ca,
            "orders-app",
            None,
            &[],
            pki::Usage::Client,
            k8s_openapi::jiff::Timestamp::now(),
            1,
        )
        .unwrap();
        let refused = brokers::mutual_tls_handshake(addr, &bundle, &name, &stranger.cert_pem, &stranger.key_pem).await;
        assert!(refused.is_err(), "{pod} accepts a certificate from another CA");
    }

    // Deleted by someone: issued again.
    secrets.delete("orders-app-tls", &DeleteParams::default()).await.unwrap();
    cluster_security_testbed::wait_until(std::time::Duration::from_secs(60), "client Secret issued again", || {
        let secrets = secrets.clone();
        async move {
            let s = secrets.get_opt("orders-app-tls").await.map_err(|e| e.to_string())?;
            s.filter(|s| s.data.as_ref().is_some_and(|d| d.contains_key("tls.crt")))
                .map(|_| ())
                .ok_or("absent".to_string())
        }
    })
    .await
    .unwrap();
    let (again, _) = client(secrets.get("orders-app-tls").await.unwrap());
    assert_ne!(again, cert, "a new certificate");
    assert_eq!(sts.get("kafka").await.unwrap().metadata.generation, generation, "still nothing rolled");
    crate::support::assert_no_secret_leaks(&[]).await;
}

/// A certificate from the user's CA `ca`, valid for every broker name under the Service, in the
/// cert-manager layout (`tls.crt`, `tls.key`, `ca.crt`).
fn corp_secret(ns: &str, name: &str, ca: &pki::KeyedCert) -> String {
    let now = k8s_openapi::jiff::Timestamp::now();
    let sans = vec![format!("*.kafka.{ns}.svc"), format!("kafka.{ns}.svc")];
    let leaf = pki::issue_leaf(ca, "kafka", &sans, pki::Usage::Server, now, 30).unwrap();
    let q = |s: &str| serde_json::to_string(s).unwrap();
    format!(
        "apiVersion: v1\nkind: Secret\nmetadata: {{name: {name}, namespace: {ns}}}\ntype: kubernetes.io/tls\nstringData:\n  tls.crt: {}\n  tls.key: {}\n  ca.crt: {}\n",
        q(&leaf.cert_pem),
        q(&leaf.key_pem),
        q(&ca.cert_pem)
    )
}

/// Trust first: a certificate from another CA is not rolled until clients can trust it. The new
/// CA is published next to the old one while every broker keeps presenting the old certificate;
/// once the user confirms, the brokers switch, and a client holding the bundle published before
/// the switch completes a verified handshake with every broker at every moment of the roll.
#[tokio::test]
async fn a_ca_change_publishes_the_new_ca_first_and_no_client_holding_that_bundle_fails_during_the_switch() {
    use std::sync::atomic::{AtomicBool, Ordering};
    use std::sync::Arc;
    let cp = &env().cp;
    let ns = "wire-trust";
    let pods = ["kafka-0", "kafka-1"];
    webhook_ready(cp).await;
    apply(cp, &cluster(ns, 2));
    wait_sts_ready(cp, ns, "kafka").await;
    let now = k8s_openapi::jiff::Timestamp::now();
    let (ca_a, ca_b) = (pki::new_ca("corp A", now, 30).unwrap(), pki::new_ca("corp B", now, 30).unwrap());
    apply(cp, &corp_secret(ns, "corp-a", &ca_a));
    apply(cp, &corp_secret(ns, "corp-b", &ca_b));
    let external = |label: &str, secret: &str| {
        rotation(ns, label, "").replace(
            &format!("external: {{label: {label}}}"),
            &format!("external: {{label: {label}, type: secret, secretName: {secret}, trustTransitionSeconds: 3600}}"),
        )
    };
    apply(cp, &policy(ns, ""));
    apply(cp, &external("a", "corp-a"));
    wait_state(ns, "clustersecuritypolicy", "policy", "UPDATE_COMPLETE", 180).await;
    wait_state(ns, "certificaterotation", "certs", "UPDATE_COMPLETE", 180).await;
    wait_sts_ready(cp, ns, "kafka").await;
    let cms = Api::<ConfigMap>::namespaced(cp.client().await.unwrap(), ns);
    let bundle = || async { cms.get("kafka-external-trust").await.unwrap().data.unwrap().remove("ca.crt").unwrap() };
    let old_bundle = bundle().await;
    let (cert_a, _) = secret_certificate(ns, "kafka-external-tls").await;
    assert_eq!(presented(ns, &pods, 9094, &old_bundle).await, vec![cert_a.clone(); 2]);

    // The change: published, not rolled.
    apply(cp, &external("b", "corp-b"));
    let condition = "{.status.conditions[?(@.type==\"WaitingForClientTrust\")].status}";
    wait_jsonpath(cp, ("certificaterotation", ns, "certs"), condition, 60, |t| t == "True").await;
    let state = jsonpath(ns, "certificaterotation", "certs", "{.status.currentOperation.operationState}");
    assert_eq!(state, "PENDING", "nothing rolls while clients may lack the new CA");
    let published = bundle().await;
    assert_eq!(published.matches("BEGIN CERTIFICATE").count(), 2, "the new and the old CA");
    assert_eq!(presented(ns, &pods, 9094, &old_bundle).await, vec![cert_a.clone(); 2], "brokers unchanged");
    let message =
        jsonpath(ns, "certificaterotation", "certs", "{.status.conditions[?(@.type==\"Reconciling\")].message}");
    let op_id = jsonpath(ns, "certificaterotation", "certs", "{.status.currentOperation.operationId}");
    assert!(message.contains(&format!("clustersecurity.io/client-trust-updated={op_id}")), "{message}");

    // A client that took the published bundle polls every broker through the switch.
    let stop = Arc::new(AtomicBool::new(false));
    let poller = {
        let (stop, bundle, ns) = (stop.clone(), published.clone(), ns.to_string());
        let api = Api::<Pod>::namespaced(cp.client().await.unwrap(), &ns);
        tokio::spawn(async move {
            let (mut verified, mut failures, mut seen) = (0u32, Vec::new(), std::collections::BTreeSet::new());
            while !stop.load(Ordering::Relaxed) {
                for p in api.list(&Default::default()).await.map(|l| l.items).unwrap_or_default() {
                    let Some(ip) = p.status.and_then(|s| s.pod_ip).and_then(|ip| ip.parse().ok()) else { continue };
                    let name = format!("{}.kafka.{ns}.svc", p.metadata.name.unwrap_or_default());
                    match brokers::trusted_certificate(SocketAddr::new(ip, 9094), &bundle, &name).await {
                        Ok(der) => {
                            verified += 1;
                            seen.insert(pki::fingerprint(&der));
                        }
                        // A broker restarting is unreachable for a moment, as in a real cluster;
                        // what must not happen is a broker the client does not trust.
                        Err(e)
                            if e.downcast_ref::<std::io::Error>()
                                .is_some_and(|io| io.kind() == std::io::ErrorKind::InvalidData) =>
                        {
                            failures.push(format!("{name}: {e}"))
                        }
                        Err(_) => {}
                    }
                }
            }
            (verified, failures, seen)
        })
    };
    let out = cp.kubectl(&[
        "annotate",
        "certrot",
        "certs",
        "-n",
        ns,
        &format!("clustersecurity.io/client-trust-updated={op_id}"),
    ]);
    assert!(out.status.success(), "{}", crate::support::stderr(&out));
    wait_state(ns, "certificaterotation", "certs", "UPDATE_COMPLETE", 180).await;
    wait_sts_ready(cp, ns, "kafka").await;
    stop.store(true, Ordering::Relaxed);
    let (verified, failures, seen) = poller.await.unwrap();
    assert!(failures.is_empty(), "a client holding the published bundle failed: {failures:?}");
    let (cert_b, _) = secret_certificate(ns, "kafka-external-tls").await;
    assert!(verified > 0 && seen.contains(&cert_b), "the poller saw the switch: {verified} handshakes, {seen:?}");
    assert_eq!(presented(ns, &pods, 9094, &published).await, vec![cert_b; 2]);
    // ... which a client with only the old bundle would not have survived.
    let ip: std::net::IpAddr = Api::<Pod>::namespaced(cp.client().await.unwrap(), ns)
        .get("kafka-0")
        .await
        .unwrap()
        .status
        .unwrap()
        .pod_ip
        .unwrap()
        .parse()
        .unwrap();
    let stale =
        brokers::trusted_certificate(SocketAddr::new(ip, 9094), &old_bundle, &format!("kafka-0.kafka.{ns}.svc")).await;
    assert!(stale.is_err(), "the old bundle alone does not trust the new certificate");
    let after = jsonpath(
        ns,
        "certificaterotation",
        "certs",
        "{.status.conditions[?(@.type==\"WaitingForClientTrust\")].status}/{.status.trustTransition.switchedAt}",
    );
    assert!(after.starts_with("False/") && after.len() > "False/".len(), "{after}");
    crate::support::assert_no_secret_leaks(&[]).await;
}

/// Acting as each broker with what it loaded at start (its internal certificate and its
/// truststore), connect to every other broker's replication listener (9091, mutual TLS): Ok when
/// both accept each other. Counts handshakes, collects the refusals (a broker restarting is not
/// reachable for a moment: not a refusal).
async fn brokers_trust_each_other(api: &Api<Pod>, ns: &str, verified: &mut u32, failures: &mut Vec<String>) {
    let pods: Vec<(String, std::net::Ipv4Addr)> = api
        .list(&Default::default())
        .await
        .map(|l| l.items)
        .unwrap_or_default()
        .into_iter()
        .filter_map(|p| Some((p.metadata.name?, p.status?.pod_ip?.parse().ok()?)))
        .collect();
    for (a, a_ip) in &pods {
        let Some(me) = brokers::loaded(*a_ip).into_iter().find(|l| l.port == 9091) else { continue };
        let Some(trust) = me.trust_pem.as_deref() else { continue };
        for (b, b_ip) in pods.iter().filter(|(b, _)| b != a) {
            let addr = SocketAddr::new((*b_ip).into(), 9091);
            let name = format!("{b}.kafka.{ns}.svc");
            match brokers::mutual_tls_handshake(addr, trust, &name, &me.chain_pem, &me.key_pem).await {
                Ok(()) => *verified += 1,
                Err(e)
                    if e.downcast_ref::<std::io::Error>()
                        .is_some_and(|io| io.kind() == std::io::ErrorKind::InvalidData) =>
                {
                    failures.push(format!("{a} -> {b}: {e}"))
                }
                Err(_) => {}
            }
        }
    }
}

/// CA renewal, trust first: `renew-ca` renews both kept CAs (outside the maintenance window: a
/// manual trigger). The brokers first roll to trust the new internal CA next to the old one,
/// then wait for clients to trust the new external CA, then switch, keeping the old CA; the
/// old CA's removal is automatic, so it waits for a maintenance window. Brokers acting with what
/// they loaded accept each other at every moment, and the phases appear in order.
#[tokio::test]
async fn a_ca_renewal_rolls_trust_before_certificates_and_brokers_trust_each_other_at_every_moment() {
    use std::sync::atomic::{AtomicBool, Ordering};
    use std::sync::Arc;
    let cp = &env().cp;
    let ns = "wire-ca";
    let closed = "maintenanceWindows: ['0 0 1 1 *']\n  oldCaRetentionSeconds: 1\n";
    webhook_ready(cp).await;
    apply(cp, &cluster(ns, 3));
    wait_sts_ready(cp, ns, "kafka").await;
    apply(cp, &policy(ns, ""));
    apply(cp, &rotation(ns, "e1", &format!("  {closed}")));
    wait_state(ns, "clustersecuritypolicy", "policy", "UPDATE_COMPLETE", 180).await;
    wait_state(ns, "certificaterotation", "certs", "UPDATE_COMPLETE", 180).await;
    wait_sts_ready(cp, ns, "kafka").await;
    let (old_internal, old_internal_ca) = secret_certificate(ns, "kafka-internal-tls").await;
    let ca_fp = |pem: &str| pki::pem_fingerprint(pem).unwrap();
    let old_ca = ca_fp(&old_internal_ca);

    // Brokers act as each other, and the phase is read (on its own, every 100 ms: a round of
    // handshakes can take seconds while pods restart), all through the renewal.
    let stop = Arc::new(AtomicBool::new(false));
    let client = cp.client().await.unwrap();
    let poller = {
        let (stop, ns, pods) = (stop.clone(), ns.to_string(), Api::<Pod>::namespaced(client.clone(), ns));
        tokio::spawn(async move {
            let (mut verified, mut failures) = (0u32, Vec::new());
            while !stop.load(Ordering::Relaxed) {
                brokers_trust_each_other(&pods, &ns, &mut verified, &mut failures).await;
            }
            (verified, failures)
        })
    };
    let phase_reader = {
        let stop = stop.clone();
        let rotations = Api::<cluster_security_api::CertificateRotation>::namespaced(client, ns);
        tokio::spawn(async move {
            let mut phases = Vec::<String>::new();
            loop {
                // One last read after the stop: the phase the test saw last is in the list.
                let last = stop.load(Ordering::Relaxed);
                if let Some(t) = rotations.get("certs").await.ok().and_then(|c| c.status?.trust_transition) {
                    let phase = t.phase.as_str().to_string();
                    if phases.last() != Some(&phase) {
                        phases.push(phase);
                    }
                }
                if last {
                    return phases;
                }
                tokio::time::sleep(std::time::Duration::from_millis(100)).await;
            }
        })
    };
    let annotate = |kv: &str| {
        let out = cp.kubectl(&["annotate", "certrot", "certs", "-n", ns, kv, "--overwrite"]);
        assert!(out.status.success(), "{}", crate::support::stderr(&out));
    };
    annotate("clustersecurity.io/renew-ca=1");
    // The external CA changes too: the brokers wait for clients (trustTransitionSeconds a day).
    let phase = "{.status.trustTransition.phase}";
    wait_jsonpath(cp, ("certificaterotation", ns, "certs"), phase, 240, |t| t == "WaitingForClients").await;
    let (still, both) = secret_certificate(ns, "kafka-internal-tls").await;
    assert_eq!(still, old_internal, "the certificate in force is kept while trust rolls");
    assert_eq!(both.matches("BEGIN CERTIFICATE").count(), 2, "the new internal CA is trusted next to the old");
    let op_id = jsonpath(ns, "certificaterotation", "certs", "{.status.currentOperation.operationId}");
    annotate(&format!("clustersecurity.io/client-trust-updated={op_id}"));
    wait_jsonpath(cp, ("certificaterotation", ns, "certs"), phase, 240, |t| t == "OldCaRetained").await;
    wait_state(ns, "certificaterotation", "certs", "UPDATE_COMPLETE", 60).await;
    wait_sts_ready(cp, ns, "kafka").await;
    let (new_internal, trust) = secret_certificate(ns, "kafka-internal-tls").await;
    assert_ne!(new_internal, old_internal, "the brokers switched to a certificate from the new CA");
    let new_ca = jsonpath(ns, "certificaterotation", "certs", "{.status.internal.caFingerprintSHA256}");
    assert_ne!(new_ca, old_ca, "the internal CA was renewed");
    assert_eq!(trust.matches("BEGIN CERTIFICATE").count(), 2, "the old CA is still trusted after the switch");
    assert_eq!(presented(ns, &["kafka-0", "kafka-1", "kafka-2"], 9091, &trust).await, vec![new_internal; 3]);

    // Removing the old CA is automatic: it waits for the maintenance window ...
    let ready = "{.status.conditions[?(@.type==\"Ready\")].message}";
    let waiting =
        wait_jsonpath(cp, ("certificaterotation", ns, "certs"), ready, 60, |m| m.contains("maintenance window")).await;
    assert!(waiting.contains("clustersecurity.io/renew-ca"), "{waiting}");
    assert_eq!(jsonpath(ns, "certificaterotation", "certs", phase), "OldCaRetained");
    // ... and runs once one is open.
    apply(cp, &rotation(ns, "e1", "  maintenanceWindows: ['* * * * *']\n  oldCaRetentionSeconds: 1\n"));
    wait_jsonpath(cp, ("certificaterotation", ns, "certs"), phase, 120, |t| t == "OldCaRemoved").await;
    wait_state(ns, "certificaterotation", "certs", "UPDATE_COMPLETE", 180).await;
    wait_sts_ready(cp, ns, "kafka").await;
    let (_, trust) = secret_certificate(ns, "kafka-internal-tls").await;
    assert_eq!(ca_fp(&trust), new_ca, "only the new internal CA is trusted");
    let cms = Api::<ConfigMap>::namespaced(cp.client().await.unwrap(), ns);
    let bundle = cms.get("kafka-external-trust").await.unwrap().data.unwrap().remove("ca.crt").unwrap();
    assert_eq!(bundle.matches("BEGIN CERTIFICATE").count(), 1, "the clients' bundle holds the new CA only");

    stop.store(true, Ordering::Relaxed);
    let (verified, failures) = poller.await.unwrap();
    let phases = phase_reader.await.unwrap();
    assert!(failures.is_empty(), "brokers refused each other: {failures:?}");
    assert!(verified > 6, "brokers acted as each other {verified} times");
    let expected = ["TrustRolling", "WaitingForClients", "Switching", "OldCaRetained", "OldCaRemoved"];
    let order: Vec<usize> = phases.iter().map(|p| expected.iter().position(|e| e == p).unwrap()).collect();
    assert!(order.windows(2).all(|w| w[0] < w[1]), "phases in order: {phases:?}");
    for must in ["TrustRolling", "WaitingForClients", "OldCaRetained", "OldCaRemoved"] {
        assert!(phases.iter().any(|p| p == must), "{must} seen: {phases:?}");
    }
    crate::support::assert_no_secret_leaks(&[]).await;
}

/// `keyAlgorithm: RSA2048` for clients that cannot use ECDSA: the kept CA and the certificate
/// are RSA (openssl says so), the broker presents it and the operation checked it on the wire.
#[tokio::test]
async fn an_rsa_certificate_is_issued_and_served_for_clients_that_cannot_use_ecdsa() {
    let cp = &env().cp;
    let ns = "wire-rsa";
    webhook_ready(cp).await;
    apply(cp, &cluster(ns, 1));
    wait_sts_ready(cp, ns, "kafka").await;
    apply(cp, &policy(ns, ""));
    apply(cp, &rotation(ns, "e1", "").replace("external: {label: e1}", "external: {label: e1, keyAlgorithm: RSA2048}"));
    wait_state(ns, "clustersecuritypolicy", "policy", "UPDATE_COMPLETE", 180).await;
    wait_state(ns, "certificaterotation", "certs", "UPDATE_COMPLETE", 180).await;
    wait_sts_ready(cp, ns, "kafka").await;
    let (leaf, ca) = secret_certificate(ns, "kafka-external-tls").await;
    assert_eq!(presented(ns, &["kafka-0"], 9094, &ca).await, vec![leaf]);
    let s = Api::<Secret>::namespaced(cp.client().await.unwrap(), ns).get("kafka-external-tls").await.unwrap();
    let data = s.data.unwrap();
    for (what, pem) in [("certificate", &data["tls.crt"].0), ("CA", &data["ca.crt"].0)] {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("c.pem"), pem).unwrap();
        let out = std::process::Command::new("openssl")
            .args(["x509", "-noout", "-text", "-in", "c.pem"])
            .current_dir(dir.path())
            .output()
            .unwrap();
        let text = String::from_utf8_lossy(&out.stdout);
        assert!(text.contains("rsaEncryption") && text.contains("(2048 bit)"), "the {what} is RSA 2048: {text}");
    }
    let status =
        jsonpath(ns, "certificaterotation", "certs", "{.status.external.keyAlgorithm}/{.status.internal.keyAlgorithm}");
    assert_eq!(status, "RSA2048/ECDSAP256");
    crate::support::assert_no_secret_leaks(&[]).await;
}

/// The brokers' labels on a pod the StatefulSet does not own (it serves nothing and runs no
/// template of the operator's): not probed, not counted, and it does not hold the operation.
#[tokio::test]
async fn a_pod_with_the_brokers_labels_that_the_statefulset_does_not_own_is_not_probed() {
    let cp = &env().cp;
    let ns = "wire-foreign";
    secured(ns, 2).await;
    apply(
        cp,
        &format!(
            "apiVersion: v1\nkind: Pod\nmetadata: {{name: impostor, namespace: {ns}, labels: {{app: kafka}}}}\nspec:\n  containers: [{{name: kafka, image: apache/kafka:3.9.0}}]\n"
        ),
    );
    wait_jsonpath(cp, ("pod", ns, "impostor"), "{.status.podIP}", 60, |ip| !ip.is_empty()).await;
    let owners = jsonpath(ns, "pod", "impostor", "{.metadata.ownerReferences}");
    assert!(owners.is_empty(), "the StatefulSet did not adopt it: {owners}");

    apply(cp, &rotation(ns, "e2", ""));
    wait_state(ns, "certificaterotation", "certs", "UPDATE_COMPLETE", 180).await;
    let verification = jsonpath(ns, "certificaterotation", "certs", "{.status.operations[0].verification}");
    assert!(
        verification.starts_with("2 pod(s) present the expected certificate on TLS (9094), REPLICATION (9091)"),
        "{verification}"
    );
    assert!(
        verification.contains("Not probed: pod impostor (the selector matches, but StatefulSet kafka does not own it)"),
        "{verification}"
    );
    crate::support::assert_no_secret_leaks(&[]).await;
}

/// Someone who may edit ConfigMaps moves the TLS listener in `kafka-security` to a port of their
/// choosing, and the brokers restarted by a rotation serve there. The check still connects to
/// the port the operator rendered (9094), never to the edited one, so the rotation does not
/// complete on the edited listeners; once the operator has put the ConfigMap back and the brokers
/// restart, it completes on 9094.
#[tokio::test]
async fn an_edited_security_configmap_does_not_move_the_ports_the_operator_checks() {
    let cp = &env().cp;
    let ns = "wire-edited";
    let pods = ["kafka-0", "kafka-1"];
    secured(ns, 2).await;
    // The policy is paused so that it does not put the ConfigMap back before the check runs.
    let out = cp.kubectl(&["annotate", "csp", "policy", "-n", ns, "clustersecurity.io/reconcile=paused"]);
    assert!(out.status.success(), "{}", crate::support::stderr(&out));
    let ready_reason = "{.status.conditions[?(@.type==\"Ready\")].reason}";
    wait_jsonpath(cp, ("clustersecuritypolicy", ns, "policy"), ready_reason, 60, |r| r == "Paused").await;
    let cms = Api::<ConfigMap>::namespaced(cp.client().await.unwrap(), ns);
    let rendered = cms.get("kafka-security").await.unwrap().data.unwrap().remove("server.properties").unwrap();
    assert!(rendered.contains("TLS://:9094"), "{rendered}");
    let edited = rendered.replace("TLS://:9094", "TLS://:19094").replace(":9094,", ":19094,");
    let patch = serde_json::json!({"data": {"server.properties": edited}});
    cms.patch("kafka-security", &kube::api::PatchParams::default(), &kube::api::Patch::Merge(&patch)).await.unwrap();

    apply(cp, &rotation(ns, "e2", ""));
    let message = wait_jsonpath(
        cp,
        ("certificaterotation", ns, "certs"),
        "{.status.conditions[?(@.type==\"Stalled\")].reason}: {.status.conditions[?(@.type==\"Stalled\")].message}",
        180,
        |t| t.starts_with("BrokerUnreachable: "),
    )
    .await;
    assert!(message.contains("port 9094 (TLS)"), "{message}");
    assert!(!message.contains("19094"), "the edited port is never what is checked: {message}");
    // The brokers do serve the new certificate, on the edited port: a check that took its ports
    // from the ConfigMap would have passed.
    let (new, _) = secret_certificate(ns, "kafka-external-tls").await;
    let bundle = cms.get("kafka-external-trust").await.unwrap().data.unwrap().remove("ca.crt").unwrap();
    assert_eq!(presented(ns, &pods, 19094, &bundle).await, vec![new.clone(); 2]);
    let state = jsonpath(ns, "certificaterotation", "certs", "{.status.operations[0].operationState}");
    assert_eq!(state, "UPDATE_IN_PROGRESS");

    // Resumed, the policy puts its ConfigMap back; the brokers restart on it and the rotation
    // completes, checked on the rendered port.
    let out = cp.kubectl(&["annotate", "csp", "policy", "-n", ns, "clustersecurity.io/reconcile-"]);
    assert!(out.status.success(), "{}", crate::support::stderr(&out));
    cluster_security_testbed::wait_until(std::time::Duration::from_secs(60), "the ConfigMap put back", || {
        let cms = cms.clone();
        let rendered = rendered.clone();
        async move {
            let now = cms.get("kafka-security").await.map_err(|e| e.to_string())?;
            let text = now.data.unwrap_or_default().remove("server.properties").unwrap_or_default();
            (text == rendered).then_some(()).ok_or(text)
        }
    })
    .await
    .unwrap();
    let api = Api::<Pod>::namespaced(cp.client().await.unwrap(), ns);
    for pod in pods {
        api.delete(pod, &DeleteParams::default()).await.unwrap();
    }
    wait_state(ns, "certificaterotation", "certs", "UPDATE_COMPLETE", 180).await;
    let verification = jsonpath(ns, "certificaterotation", "certs", "{.status.operations[0].verification}");
    assert!(
        verification.starts_with("2 pod(s) present the expected certificate on TLS (9094), REPLICATION (9091)"),
        "{verification}"
    );
    assert_eq!(presented(ns, &pods, 9094, &bundle).await, vec![new; 2]);
    crate::support::assert_no_secret_leaks(&[]).await;
}

/// Brokers on the host's network: their pod IP is a node's, which the operator does not connect
/// to. The rotation does not complete as verified (`BrokerNotVerifiable`, though the stand-ins
/// serve the right certificate there); with `verify.enabled: false` it completes, unchecked.
#[tokio::test]
async fn a_host_network_broker_is_not_verifiable_and_verify_off_completes_without_the_check() {
    let cp = &env().cp;
    let ns = "wire-hostnet";
    webhook_ready(cp).await;
    apply(
        cp,
        &cluster(ns, 1)
            .replace("    spec:\n      containers:", "    spec:\n      hostNetwork: true\n      containers:"),
    );
    wait_sts_ready(cp, ns, "kafka").await;
    assert_eq!(jsonpath(ns, "statefulset", "kafka", "{.spec.template.spec.hostNetwork}"), "true");
    apply(cp, &policy(ns, "  verify: {enabled: false}\n"));
    wait_state(ns, "clustersecuritypolicy", "policy", "UPDATE_COMPLETE", 180).await;
    apply(cp, &rotation(ns, "e1", ""));
    let message = wait_jsonpath(
        cp,
        ("certificaterotation", ns, "certs"),
        "{.status.conditions[?(@.type==\"Stalled\")].reason}: {.status.conditions[?(@.type==\"Stalled\")].message}",
        180,
        |t| t.starts_with("BrokerNotVerifiable: "),
    )
    .await;
    assert!(message.contains("pod kafka-0 (hostNetwork: its IP "), "{message}");
    assert!(message.contains("spec.verify.enabled: false"), "{message}");
    let state = jsonpath(ns, "certificaterotation", "certs", "{.status.operations[0].operationState}");
    assert_eq!(state, "UPDATE_IN_PROGRESS", "not complete as verified");

    apply(cp, &rotation(ns, "e1", "  verify: {enabled: false}\n"));
    wait_state(ns, "certificaterotation", "certs", "UPDATE_COMPLETE", 120).await;
    let verification = jsonpath(ns, "certificaterotation", "certs", "{.status.operations[0].verification}");
    assert_eq!(verification, "Not checked on the wire (spec.verify.enabled: false).");
    crate::support::assert_no_secret_leaks(&[]).await;
}

/// A Deployment's brokers are its own pods through its ReplicaSets (`<deployment>-<hash>`, the
/// pods' `pod-template-hash`), as the controller-manager names them: both operations complete,
/// checked on every broker. Were they not recognised, no pod would count and the check would wait.
#[tokio::test]
async fn a_deployments_brokers_are_recognised_through_their_replicaset_and_checked() {
    let cp = &env().cp;
    let ns = "wire-deploy";
    webhook_ready(cp).await;
    let manifest =
        cluster(ns, 2).replace("kind: StatefulSet", "kind: Deployment").replace("  serviceName: kafka\n", "");
    apply(cp, &manifest);
    let deployment = |what: &str| policy(ns, "").replace("kind: StatefulSet", what);
    apply(cp, &deployment("kind: Deployment"));
    apply(cp, &rotation(ns, "e1", "").replace("kind: StatefulSet", "kind: Deployment"));
    wait_state(ns, "clustersecuritypolicy", "policy", "UPDATE_COMPLETE", 180).await;
    wait_state(ns, "certificaterotation", "certs", "UPDATE_COMPLETE", 180).await;
    let verification = jsonpath(ns, "certificaterotation", "certs", "{.status.operations[0].verification}");
    assert!(
        verification.starts_with("2 pod(s) present the expected certificate on TLS (9094), REPLICATION (9091)"),
        "{verification}"
    );
    assert!(!verification.contains("Not probed"), "{verification}");
    crate::support::assert_no_secret_leaks(&[]).await;
}
