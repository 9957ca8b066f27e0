//! Rendering of every valid combination of the seed's table: listeners on the MSK ports,
//! protocol map, client auth, SASL mechanisms, inter-broker listener.

use std::collections::BTreeMap;

use super::{desired_settings, listeners, properties};
use crate::api::{ClusterSecurityPolicySpec, SecuritySettings};
use crate::validate;
use serde_json::json;

const METHODS: [&str; 4] = ["unauthenticated", "tls", "scram", "iam"];

const ISSUER: &str = "https://login.example.com/tenant";
const JWKS: &str = "https://login.example.com/tenant/keys";

fn spec(methods: &[&str], cb: &str, in_cluster: bool) -> ClusterSecurityPolicySpec {
    let mut auth = json!({});
    for m in methods {
        match *m {
            "unauthenticated" => auth["unauthenticated"] = json!({"enabled": true}),
            "tls" => auth["tls"] = json!({"enabled": true}),
            "scram" => auth["sasl"]["scram"] = json!({"enabled": true}),
            "iam" => {
                auth["sasl"]["iam"] =
                    json!({"enabled": true, "issuer": ISSUER, "audience": "kafka", "jwksEndpointUrl": JWKS})
            }
            _ => unreachable!(),
        }
    }
    serde_json::from_value(json!({
        "clusterRef": {"kind": "StatefulSet", "name": "k"},
        "clientAuthentication": auth,
        "encryptionInTransit": {"clientBroker": cb, "inCluster": in_cluster}
    }))
    .unwrap()
}

fn props(s: &SecuritySettings) -> BTreeMap<String, String> {
    properties::server_properties(s, None).into_iter().collect()
}

fn names(s: &SecuritySettings) -> Vec<(String, u16)> {
    listeners::client_listeners(s).into_iter().map(|l| (l.name.to_string(), l.port)).collect()
}

/// Every valid combination (all subsets of methods × clientBroker × inCluster) renders
/// consistently; the expected listener set is derived independently here from API.md's table.
#[test]
fn every_valid_combination_renders_consistently() {
    let mut valid = 0;
    for mask in 1u8..16 {
        let methods: Vec<&str> =
            METHODS.iter().enumerate().filter(|(i, _)| mask & (1 << i) != 0).map(|(_, m)| *m).collect();
        for cb in ["TLS", "TLS_PLAINTEXT", "PLAINTEXT"] {
            for in_cluster in [true, false] {
                let sp = spec(&methods, cb, in_cluster);
                if validate::security_policy(&sp, None).is_err() {
                    continue;
                }
                valid += 1;
                let s = desired_settings(&sp);
                let p = props(&s);
                let has = |m: &str| methods.contains(&m);
                let mut expected: Vec<(String, u16)> = Vec::new();
                if cb != "TLS" {
                    expected.push(("PLAINTEXT".into(), 9092));
                }
                if cb != "PLAINTEXT" && (has("tls") || has("unauthenticated")) {
                    expected.push(("TLS".into(), 9094));
                }
                if cb != "PLAINTEXT" && has("tls") && has("unauthenticated") {
                    expected.push(("TLS_UNAUTHENTICATED".into(), 9095));
                }
                if has("scram") {
                    expected.push(("SASL_SCRAM".into(), 9096));
                }
                if has("iam") {
                    expected.push(("SASL_IAM".into(), 9098));
                }
                let what = format!("{methods:?} {cb} inCluster={in_cluster}");
                assert_eq!(names(&s), expected, "{what}");
                // listeners and protocol map name the same listeners, replication last.
                let listed: Vec<&str> = p["listeners"].split(',').map(|l| l.split("://").next().unwrap()).collect();
                let mapped: Vec<&str> =
                    p["listener.security.protocol.map"].split(',').map(|l| l.split(':').next().unwrap()).collect();
                assert_eq!(listed, mapped, "{what}");
                assert_eq!(listed.last(), Some(&"REPLICATION"));
                assert_eq!(p["inter.broker.listener.name"], "REPLICATION");
                assert!(!p.contains_key("security.inter.broker.protocol"), "never both inter-broker settings");
                let repl_protocol = if in_cluster { "REPLICATION:SSL" } else { "REPLICATION:PLAINTEXT" };
                assert!(p["listener.security.protocol.map"].ends_with(repl_protocol), "{what}");
                assert_eq!(
                    p.get("listener.name.replication.ssl.client.auth").map(String::as_str),
                    in_cluster.then_some("required")
                );
                assert_eq!(
                    p.get("listener.name.tls.ssl.client.auth").map(String::as_str),
                    (cb != "PLAINTEXT" && (has("tls") || has("unauthenticated"))).then_some(if has("tls") {
                        "required"
                    } else {
                        "none"
                    }),
                    "{what}"
                );
                assert_eq!(p["sasl.enabled.mechanisms"], "", "GSSAPI off globally");
                assert_eq!(
                    p.get("listener.name.sasl_scram.sasl.enabled.mechanisms").map(String::as_str),
                    has("scram").then_some("SCRAM-SHA-512")
                );
                assert_eq!(
                    p.get("listener.name.sasl_iam.sasl.enabled.mechanisms").map(String::as_str),
                    has("iam").then_some("OAUTHBEARER")
                );
                if has("iam") {
                    assert!(p["listener.name.sasl_iam.oauthbearer.sasl.server.callback.handler.class"]
                        .ends_with("OAuthBearerValidatorCallbackHandler"));
                    // What each token is checked against, from the spec, on the IAM listener.
                    let token =
                        |k: &str| p[&format!("listener.name.sasl_iam.oauthbearer.sasl.oauthbearer.{k}")].as_str();
                    assert_eq!(token("jwks.endpoint.url"), JWKS);
                    assert_eq!(token("expected.issuer"), ISSUER);
                    assert_eq!(token("expected.audience"), "kafka");
                }
                assert!(!p.keys().any(|k| k.contains("oauthbearer") && !k.starts_with("listener.name.sasl_iam.")));
                for (k, v) in &p {
                    assert!(!v.contains("BEGIN"), "{k}: no PEM inlined");
                    if k.ends_with("ssl.keystore.type") || k.ends_with("ssl.truststore.type") {
                        assert_eq!(v, "PEM");
                    }
                    assert!(!k.ends_with("ssl.keystore.password"), "PEM stores take no password");
                }
                let sj: serde_json::Value = serde_json::from_str(&properties::render_security_json(&s)).unwrap();
                assert_eq!(sj["listeners"].as_array().unwrap().len(), expected.len());
                assert_eq!(sj["interBroker"]["protocol"], if in_cluster { "SSL" } else { "PLAINTEXT" });
            }
        }
    }
    assert!(valid > 20, "covered {valid} valid combinations");
}

#[test]
fn mtls_with_tls_plaintext_gives_two_listeners() {
    let s = desired_settings(&spec(&["tls"], "TLS_PLAINTEXT", true));
    assert_eq!(names(&s), vec![("PLAINTEXT".to_string(), 9092), ("TLS".to_string(), 9094)]);
    let st = listeners::status_listeners(&s);
    assert_eq!((st[0].authentication.as_str(), st[1].authentication.as_str()), ("none", "mTLS"));
}

#[test]
fn rendering_is_deterministic_and_hash_tracks_content() {
    let a = desired_settings(&spec(&["scram"], "TLS", true));
    let b = desired_settings(&spec(&["iam"], "TLS", true));
    let ra = properties::render_server_properties(&a, "kafka/orders", None);
    assert_eq!(ra, properties::render_server_properties(&a, "kafka/orders", None));
    let h = |s: &SecuritySettings| {
        properties::security_hash(&[
            properties::render_server_properties(s, "x", None).as_bytes(),
            properties::render_security_json(s).as_bytes(),
        ])
    };
    assert_eq!(h(&a), h(&a));
    assert_ne!(h(&a), h(&b));
    assert_eq!(h(&a).len(), 64);
}

/// A KRaft combined node keeps its controller listener: in `listeners`, the protocol map and
/// `controller.listener.names`, never as the inter-broker listener; with SSL, mutual TLS with the
/// internal certificate, like replication.
#[test]
fn a_kraft_controller_listener_is_kept_in_the_rendered_configuration() {
    let mut sp = spec(&["tls"], "TLS", true);
    let plain = props(&desired_settings(&sp));
    assert!(!plain.contains_key("controller.listener.names"));
    assert!(!plain["listeners"].contains("CONTROLLER"));

    sp.controller_listener = serde_json::from_value(json!({"name": "CONTROLLER", "port": 9093})).unwrap();
    validate::security_policy(&sp, None).unwrap();
    let p = props(&desired_settings(&sp));
    assert_eq!(p["listeners"], "TLS://:9094,REPLICATION://:9091,CONTROLLER://:9093");
    assert_eq!(p["listener.security.protocol.map"], "TLS:SSL,REPLICATION:SSL,CONTROLLER:PLAINTEXT");
    assert_eq!(p["controller.listener.names"], "CONTROLLER");
    assert_eq!(p["inter.broker.listener.name"], "REPLICATION");
    assert!(!p.keys().any(|k| k.starts_with("listener.name.controller.")), "PLAINTEXT: no TLS settings");

    sp.controller_listener =
        serde_json::from_value(json!({"name": "KRAFT", "port": 19093, "protocol": "SSL"})).unwrap();
    let p = props(&desired_settings(&sp));
    assert!(p["listener.security.protocol.map"].ends_with(",KRAFT:SSL"));
    assert_eq!(p["listener.name.kraft.ssl.client.auth"], "required");
    assert_eq!(
        p["listener.name.kraft.ssl.keystore.certificate.chain"],
        "${dir:/etc/kafka/security/internal-tls:tls.crt}"
    );
    assert_eq!(p["listener.name.kraft.ssl.truststore.certificates"], "${dir:/etc/kafka/security/internal-tls:ca.crt}");
}

/// The controller listener is refused with a name or port of the operator's, a bad name, and any
/// change once set (a running quorum cannot move in a rolling restart).
#[test]
fn the_controller_listener_rule() {
    let with = |l: serde_json::Value| {
        let mut sp = spec(&["tls"], "TLS", true);
        sp.controller_listener = serde_json::from_value(l).unwrap();
        sp
    };
    for bad in [
        json!({"name": "REPLICATION"}),
        json!({"name": "controller"}),
        json!({"name": "CONTROLLER", "port": 9094}),
        json!({"name": "9CONTROLLER"}),
    ] {
        let err = validate::security_policy(&with(bad.clone()), None).unwrap_err().to_string();
        assert!(err.contains("rule ControllerListener"), "{bad}: {err}");
    }
    let old = with(json!({"name": "CONTROLLER", "port": 9093}));
    validate::security_policy(&old, Some(&old)).unwrap();
    let moved = with(json!({"name": "CONTROLLER", "port": 9193}));
    let err = validate::security_policy(&moved, Some(&old)).unwrap_err().to_string();
    assert!(err.contains("cannot change") && err.contains("CONTROLLER://:9093 (PLAINTEXT)"), "{err}");
    let mut gone = old.clone();
    gone.controller_listener = None;
    assert!(validate::security_policy(&gone, Some(&old)).is_err());
    // Added to a policy that had none: the brokers already run it; now it is kept.
    let mut before = old.clone();
    before.controller_listener = None;
    validate::security_policy(&old, Some(&before)).unwrap();
}

/// With the pods' DNS domain, every broker listener (not the controller's) is advertised under
/// the pod's own name, read from the pod-name file through the DirectoryConfigProvider.
#[test]
fn each_broker_advertises_its_own_dns_name() {
    let mut sp = spec(&["tls", "scram"], "TLS", true);
    sp.controller_listener = serde_json::from_value(json!({"name": "CONTROLLER"})).unwrap();
    let s = desired_settings(&sp);
    assert!(!props(&s).contains_key("advertised.listeners"), "without a domain: Kafka's default");
    let p: BTreeMap<String, String> =
        properties::server_properties(&s, Some("orders-kafka.kafka.svc")).into_iter().collect();
    let host = "${dir:/etc/kafka/security/pod:name}.orders-kafka.kafka.svc";
    assert_eq!(
        p["advertised.listeners"],
        format!("TLS://{host}:9094,SASL_SCRAM://{host}:9096,REPLICATION://{host}:9091")
    );
    assert_eq!(p["config.providers"], "dir", "the pod name comes through the provider already in use");
}

/// The DirectoryConfigProvider may read only the directories the operator mounts, and every
/// `${dir:…}` reference rendered points into one of them: whatever else a value might name (a
/// ServiceAccount token) the brokers will not read.
#[test]
fn the_config_provider_reads_only_what_the_operator_mounts() {
    let mut sp = spec(&["tls", "scram", "iam"], "TLS", true);
    sp.controller_listener = serde_json::from_value(json!({"name": "CONTROLLER"})).unwrap();
    let s = desired_settings(&sp);
    let p: BTreeMap<String, String> =
        properties::server_properties(&s, Some("orders-kafka.kafka.svc")).into_iter().collect();
    let allowed: Vec<&str> = p["config.providers.dir.param.allowed.paths"].split(',').collect();
    assert_eq!(allowed, properties::PROVIDER_PATHS);
    assert!(!allowed.iter().any(|a| a.starts_with("/var/run/secrets")), "{allowed:?}");
    let mut references = 0;
    for value in p.values() {
        for reference in value.split("${dir:").skip(1) {
            let dir = reference.split(':').next().unwrap();
            assert!(allowed.contains(&dir), "{dir} is not an allowed path");
            references += 1;
        }
    }
    assert!(references > 5, "the keystores, truststores and pod name are read through the provider");
}

/// A subject as Java prints it (`X500Principal.getName()`, RFC 2253: last attribute first), the
/// string Kafka's `ssl.principal.mapping.rules` apply to.
fn java_subject(cert_pem: &str) -> String {
    let (_, pem) = x509_parser::pem::parse_x509_pem(cert_pem.as_bytes()).unwrap();
    let cert = pem.parse_x509().unwrap();
    let mut rdns: Vec<String> = cert
        .subject()
        .iter()
        .map(|rdn| {
            let parts: Vec<String> = rdn
                .iter()
                .map(|a| {
                    let oid = a.attr_type().to_id_string();
                    let key = match oid.as_str() {
                        "2.5.4.3" => "CN",
                        "2.5.4.10" => "O",
                        "2.5.4.11" => "OU",
                        other => panic!("attribute {other} not expected here"),
                    };
                    let value = a.as_str().unwrap();
                    assert!(!value.contains([',', '=', '+', '\\', '"']), "no RFC 2253 escaping needed for {value}");
                    format!("{key}={value}")
                })
                .collect();
            parts.join("+")
        })
        .collect();
    rdns.reverse();
    rdns.join(",")
}

/// What Kafka's `SslPrincipalMapper` makes of `subject` under `rules`, for the pattern syntax the
/// operator renders (`^`, `$`, literals, `([^,=]+)`): a rule whose pattern uses anything else
/// fails the test rather than being guessed at.
fn principal(rules: &str, subject: &str) -> String {
    let mut rest = rules;
    while !rest.is_empty() {
        if let Some(after) = rest.strip_prefix("DEFAULT") {
            assert!(after.is_empty() || after.starts_with(','), "{rules}");
            return subject.to_string();
        }
        let rule = rest.strip_prefix("RULE:").unwrap_or_else(|| panic!("not a rule: {rest}"));
        let (pattern, after) = rule.split_once('/').unwrap();
        let (replacement, after) = after.split_once('/').unwrap();
        rest = after.strip_prefix(',').unwrap_or(after);
        assert!(!after.starts_with(['L', 'U']), "no case flags");
        let body = pattern.strip_prefix('^').and_then(|p| p.strip_suffix('$')).expect("anchored pattern");
        let (prefix, suffix) = body.split_once("([^,=]+)").expect("one group");
        for literal in [prefix, suffix] {
            assert!(!literal.contains(['\\', '[', ']', '(', ')', '.', '*', '+', '?', '|', '^', '$']), "{literal}");
        }
        let captured = subject.strip_prefix(prefix).and_then(|s| s.strip_suffix(suffix));
        if let Some(group) = captured.filter(|g| !g.is_empty() && !g.contains([',', '='])) {
            return replacement.replace("$1", group);
        }
    }
    panic!("no rule of {rules} applies to {subject}: Kafka refuses the connection");
}

/// A client certificate is never named like a broker. On the mTLS client listener (and only
/// there) the operator maps principals: its own client certificates
/// (`CN=<name>,OU=clustersecurity-clients`) are `User:<name>`; a certificate whose subject is a
/// common name alone — the brokers' own form, from whichever CA the spec trusts, or a client
/// certificate of an earlier version — is `User:<common name>`, never `User:CN=…`; other subjects
/// stay themselves. The replication listener keeps Kafka's default: brokers are `User:CN=<service>`.
#[test]
fn client_certificates_are_never_named_like_a_broker() {
    let s = desired_settings(&spec(&["tls", "unauthenticated", "scram"], "TLS_PLAINTEXT", true));
    let p = props(&s);
    let rules = &p["listener.name.tls.ssl.principal.mapping.rules"];
    assert_eq!(rules, properties::CLIENT_PRINCIPAL_RULES);
    assert!(rules.contains(&format!(",OU={}$", crate::pki::CLIENT_UNIT)), "{rules}");
    assert!(!rules.contains('\\') && !rules.contains("${"), "plain properties syntax: {rules}");
    let mapped: Vec<&String> = p.keys().filter(|k| k.ends_with("ssl.principal.mapping.rules")).collect();
    assert_eq!(mapped, ["listener.name.tls.ssl.principal.mapping.rules"], "only the mTLS client listener");

    let now = k8s_openapi::jiff::Timestamp::now();
    let ca = crate::pki::new_ca("client CA", now, 30).unwrap();
    let client = crate::pki::issue_client(&ca, "orders-app", now, 30).unwrap();
    let broker = crate::pki::issue_leaf(
        &ca,
        "orders-kafka",
        &["orders-kafka.kafka.svc".into()],
        crate::pki::Usage::ServerAndClient,
        now,
        30,
    )
    .unwrap();
    let old_client = crate::pki::issue_leaf(&ca, "orders-app", &[], crate::pki::Usage::Client, now, 30).unwrap();
    assert_eq!(java_subject(&client.cert_pem), "CN=orders-app,OU=clustersecurity-clients");
    assert_eq!(java_subject(&broker.cert_pem), "CN=orders-kafka");
    // Brokers, on their own listener (Kafka's default): the principal usually in super.users.
    assert_eq!(principal("DEFAULT", &java_subject(&broker.cert_pem)), "CN=orders-kafka");
    // On the client listener.
    assert_eq!(principal(rules, &java_subject(&client.cert_pem)), "orders-app");
    assert_eq!(principal(rules, &java_subject(&old_client.cert_pem)), "orders-app", "same as when issued again");
    assert_eq!(principal(rules, &java_subject(&broker.cert_pem)), "orders-kafka", "a broker's certificate, if trusted");
    assert_eq!(principal(rules, "CN=app,OU=payments,O=acme"), "CN=app,OU=payments,O=acme", "your CA's, as before");
    for subject in ["CN=orders-kafka", "CN=a,OU=clustersecurity-clients", "CN=CN\\=orders-kafka", "O=x"] {
        let name = principal(rules, subject);
        // A broker is `CN=<DNS name>`: letters, digits, '-' and '.'.
        let dns = |rest: &str| !rest.is_empty() && rest.chars().all(|c| c.is_ascii_alphanumeric() || "-.".contains(c));
        assert!(!name.strip_prefix("CN=").is_some_and(dns), "{subject} is named {name}, a broker's form");
    }
    // Without mTLS there is no client certificate to map.
    let p = props(&desired_settings(&spec(&["scram"], "TLS", true)));
    assert!(!p.keys().any(|k| k.contains("principal.mapping")), "{p:?}");
}
