//! The Azure provider against the local Azure emulator (Azure Resource Manager, Entra ID and Key
//! Vault contracts over HTTPS): read-modify-write of the KMS block with eTags, long-running
//! operations through Azure-AsyncOperation and Location, Retry-After, 429 and 409 handling,
//! AKS's refusals, key checks, and both ways of authenticating. No control plane is involved.

use std::time::Duration;

use super::azure::{AzureKms, AzureSettings, Credentials};
use super::provider::{KeyState, KmsProvider, ProviderError};
use crate::api::{AzureProvider, KmsSettings, NetworkAccess};
use cluster_security_testbed::azure::{AzureEmulator, Spec};
use serde_json::json;

fn settings(emu: &AzureEmulator) -> AzureSettings {
    AzureSettings {
        arm_endpoint: emu.url.clone(),
        authority_host: Some(emu.url.clone()),
        key_vault_endpoint: emu.key_vault_endpoint(),
        extra_ca_pem: Some(emu.ca_pem.clone().into_bytes()),
        poll_interval: Duration::from_millis(200),
        operation_timeout: Duration::from_secs(60),
        metrics: None,
    }
}

fn target(spec: &Spec) -> AzureProvider {
    AzureProvider {
        subscription_id: spec.subscription_id.clone(),
        resource_group: spec.resource_group.clone(),
        cluster_name: spec.cluster_name.clone(),
    }
}

fn secret(spec: &Spec) -> Credentials {
    Credentials::ClientSecret {
        tenant_id: spec.tenant_id.clone(),
        client_id: spec.client_id.clone(),
        secret: spec.client_secret.clone(),
    }
}

fn enabled(spec: &Spec, vault: &str, mode: NetworkAccess) -> KmsSettings {
    KmsSettings {
        enabled: true,
        key_id: Some(spec.key_id(vault, "v1")),
        network_access: Some(mode),
        key_vault_resource_id: (mode == NetworkAccess::Private).then(|| spec.vault_resource_id(vault)),
    }
}

fn off() -> KmsSettings {
    KmsSettings { enabled: false, key_id: None, network_access: None, key_vault_resource_id: None }
}

async fn emulator(initial: serde_json::Value) -> AzureEmulator {
    let mut spec = Spec::new("aks-orders", &["kv-orders", "kv-other"], "v1");
    spec.kms = initial;
    AzureEmulator::start(spec, None).await.expect("emulator starts")
}

#[tokio::test]
async fn mode_switch_follows_the_four_steps_with_client_secret() {
    let emu = emulator(json!({"enabled": false})).await;
    let spec = emu.spec.clone();
    let az = AzureKms::new(&target(&spec), settings(&emu), &secret(&spec)).unwrap();

    assert_eq!(az.check_key(&spec.key_id("kv-orders", "v1"), None).await.unwrap(), KeyState::Usable { expires: None });
    emu.set_lro(3, Duration::from_millis(300));
    let public = enabled(&spec, "kv-orders", NetworkAccess::Public);
    az.set_kms(&public).await.expect("enable KMS Public");
    assert_eq!(az.get_kms().await.unwrap().settings, public);

    // AKS refuses to change the mode of the attached vault while KMS is on.
    let private = enabled(&spec, "kv-orders", NetworkAccess::Private);
    match az.set_kms(&private).await {
        Err(ProviderError::Rejected { code, message }) => {
            assert_eq!(code, "OperationNotAllowed");
            assert!(message.contains("turn KMS off first"), "{message}");
        }
        other => panic!("expected a refusal, got {other:?}"),
    }
    // The seed's steps: off, vault private, on with Private.
    az.set_kms(&off()).await.expect("disable");
    az.set_vault_network_access(&spec.vault_resource_id("kv-orders"), NetworkAccess::Private).await.unwrap();
    assert_eq!(emu.vault_public("kv-orders"), Some(false));
    az.set_kms(&private).await.expect("enable Private");
    // Idempotent: the same settings again change nothing.
    az.set_kms(&private).await.unwrap();
    assert_eq!(
        emu.log(),
        vec![
            "PUT kms enabled=true vault=kv-orders access=Public",
            "PUT kms enabled=false",
            "PATCH vault kv-orders publicNetworkAccess=Disabled",
            "PUT kms enabled=true vault=kv-orders access=Private",
        ]
    );
    assert_eq!(emu.kms()["keyVaultResourceId"], spec.vault_resource_id("kv-orders"));
    // Public mode needs a publicly reachable vault: AKS's refusal reaches us with its code.
    let other_public = enabled(&spec, "kv-other", NetworkAccess::Public);
    az.set_vault_network_access(&spec.vault_resource_id("kv-other"), NetworkAccess::Private).await.unwrap();
    match az.set_kms(&other_public).await {
        Err(ProviderError::Rejected { code, .. }) => assert_eq!(code, "AzureKeyVaultKmsKeyVaultNotReachable"),
        other => panic!("expected a refusal, got {other:?}"),
    }
    assert!(emu.token_grants().iter().all(|g| *g == "client_secret"));
}

#[tokio::test]
async fn workload_identity_location_polling_throttling_and_conflicts() {
    let emu = emulator(json!({"enabled": false})).await;
    let spec = emu.spec.clone();
    let dir = tempfile::tempdir().unwrap();
    let token_file = dir.path().join("azure-identity-token");
    std::fs::write(&token_file, &spec.federated_token).unwrap();
    let wi = Credentials::WorkloadIdentity {
        tenant_id: Some(spec.tenant_id.clone()),
        client_id: Some(spec.client_id.clone()),
        token_file: Some(token_file.clone()),
    };
    let az = AzureKms::new(&target(&spec), settings(&emu), &wi).unwrap();

    // Location-only long-running operation, behind two throttled answers.
    emu.location_only(true);
    emu.set_lro(2, Duration::from_millis(100));
    emu.throttle_next(2);
    let public = enabled(&spec, "kv-orders", NetworkAccess::Public);
    az.set_kms(&public).await.expect("enable through Location polling after 429s");
    assert_eq!(emu.provisioning_state(), "Succeeded");
    assert!(emu.token_grants().iter().all(|g| *g == "client_assertion"), "workload identity exchanged its token");

    // Another operation in progress: transient, and nothing changed.
    emu.conflict_next(1);
    let err = az.set_kms(&off()).await.unwrap_err();
    assert!(err.is_transient(), "{err}");
    assert_eq!(az.get_kms().await.unwrap().settings, public);

    // An update that ends Failed is a refusal with Azure's code and message.
    emu.location_only(false);
    emu.fail_next_update("KMSPluginUnavailable", "the KMS plugin could not reach the key vault");
    match az.set_kms(&off()).await {
        Err(ProviderError::Rejected { code, message }) => {
            assert_eq!(code, "KMSPluginUnavailable");
            assert!(message.contains("could not reach"), "{message}");
        }
        other => panic!("expected the failed operation, got {other:?}"),
    }
    assert_eq!(emu.provisioning_state(), "Failed");
    assert!(emu.kms()["enabled"].as_bool().unwrap(), "a failed update leaves KMS as it was");
    // Retrying after a failure works.
    az.set_kms(&off()).await.expect("disable on retry");

    // A deleted key is reported unusable, with what to do.
    emu.delete_key("kv-orders/etcd/v1");
    match az.check_key(&spec.key_id("kv-orders", "v1"), None).await.unwrap() {
        KeyState::Unusable(m) => assert!(m.contains("recover"), "{m}"),
        other @ KeyState::Usable { .. } => panic!("expected unusable, got {other:?}"),
    }

    // A wrong federated token fails authentication, and says so.
    std::fs::write(&token_file, "not-the-token").unwrap();
    let az = AzureKms::new(&target(&spec), settings(&emu), &wi).unwrap();
    let err = az.get_kms().await.unwrap_err();
    assert!(matches!(err, ProviderError::Auth(_)), "{err}");
}

#[tokio::test]
async fn wrong_client_secret_is_an_authentication_error_without_the_secret() {
    let emu = emulator(json!({"enabled": false})).await;
    let spec = emu.spec.clone();
    let bad = Credentials::ClientSecret {
        tenant_id: spec.tenant_id.clone(),
        client_id: spec.client_id.clone(),
        secret: "s3cr3t-marker-value".into(),
    };
    let az = AzureKms::new(&target(&spec), settings(&emu), &bad).unwrap();
    let err = az.get_kms().await.unwrap_err();
    let text = err.to_string();
    assert!(matches!(err, ProviderError::Auth(_)), "{text}");
    assert!(text.contains("AADSTS7000215"), "{text}");
    assert!(!text.contains("s3cr3t-marker-value"), "the secret must not appear: {text}");
    assert!(!format!("{bad:?}").contains("s3cr3t-marker-value"));
}

#[tokio::test]
async fn a_private_vaults_key_is_read_through_resource_manager() {
    let emu = emulator(json!({"enabled": false})).await;
    let spec = emu.spec.clone();
    let az = AzureKms::new(&target(&spec), settings(&emu), &secret(&spec)).unwrap();
    let (key, rid) = (spec.key_id("kv-orders", "v1"), spec.vault_resource_id("kv-orders"));
    az.set_vault_network_access(&rid, NetworkAccess::Private).await.unwrap();
    // The data plane of a private vault is closed to the operator (as Azure answers from outside
    // its private link): the key cannot be checked there...
    let closed = az.check_key(&key, None).await.unwrap_err();
    assert!(closed.to_string().contains("Public network access is disabled"), "{closed}");
    // ...but Resource Manager, the management plane, reads it.
    assert_eq!(az.check_key(&key, Some(&rid)).await.unwrap(), KeyState::Usable { expires: None });
    emu.delete_key("kv-orders/etcd/v1");
    match az.check_key(&key, Some(&rid)).await.unwrap() {
        KeyState::Unusable(m) => assert!(m.contains("recover"), "{m}"),
        other @ KeyState::Usable { .. } => panic!("expected unusable, got {other:?}"),
    }
}

#[tokio::test]
async fn operation_urls_off_the_resource_manager_host_are_not_followed() {
    let emu = emulator(json!({"enabled": false})).await;
    let spec = emu.spec.clone();
    let metrics = std::sync::Arc::new(crate::metrics::Metrics::new());
    let counted = AzureSettings { metrics: Some(metrics.clone()), ..settings(&emu) };
    let az = AzureKms::new(&target(&spec), counted, &secret(&spec)).unwrap();
    let port = emu.url.rsplit(':').next().unwrap().to_string();
    let public = enabled(&spec, "kv-orders", NetworkAccess::Public);
    // Another host, the same host over plain http, the same host on another port, user info:
    // each would carry the operator's Resource Manager token somewhere else.
    for (i, (base, location_only)) in [
        ("https://attacker.example".to_string(), false),
        (format!("http://127.0.0.1:{port}"), true),
        ("https://127.0.0.1:1".to_string(), false),
        (format!("https://user@127.0.0.1:{port}"), true),
    ]
    .into_iter()
    .enumerate()
    {
        emu.announce_operations_at(&base);
        emu.location_only(location_only);
        // Each case changes the settings, so that each starts an operation to follow.
        let change = if i % 2 == 0 { public.clone() } else { off() };
        // The previous case's operation, not followed, ends by itself: "wait" is transient.
        let mut result = az.set_kms(&change).await;
        for _ in 0..20 {
            if !matches!(&result, Err(e) if e.is_transient()) {
                break;
            }
            result = az.set_kms(&change).await;
        }
        match result {
            Err(ProviderError::Rejected { code, message }) => {
                assert_eq!(code, "UntrustedPollUrl", "{base}");
                assert!(message.contains("not on the Resource Manager host"), "{message}");
            }
            other => panic!("{base}: expected the poll URL to be refused, got {other:?}"),
        }
    }
    // Each request was counted, by operation and answer.
    let text = metrics.encode();
    assert!(text.contains(r#"csop_azure_requests_total{operation="put_cluster",code="#), "{text}");
    assert!(text.contains(r#"csop_azure_requests_total{operation="get_cluster",code="200"}"#), "{text}");
    // The emulator's own URL is followed as before.
    emu.announce_operations_at(&emu.url.clone());
    let mut result = az.set_kms(&public).await;
    for _ in 0..20 {
        if !matches!(&result, Err(e) if e.is_transient()) {
            break;
        }
        result = az.set_kms(&public).await;
    }
    result.expect("operation on the Resource Manager host is followed");
    assert_eq!(az.get_kms().await.unwrap().settings, public);
    assert_eq!(emu.provisioning_state(), "Succeeded");
}

#[tokio::test]
async fn a_403_with_a_code_is_a_refusal_naming_the_action_a_401_is_credentials() {
    use super::provider::{PermissionCheck, CLUSTER_READ, CLUSTER_WRITE, VAULT_WRITE};
    let emu = emulator(json!({"enabled": false})).await;
    let spec = emu.spec.clone();
    let az = AzureKms::new(&target(&spec), settings(&emu), &secret(&spec)).unwrap();
    let rid = spec.vault_resource_id("kv-orders");

    // An Azure Policy deny of the vault PATCH: a refusal of that request, with the fix.
    emu.forbid_vault_patches("RequestDisallowedByPolicy");
    match az.set_vault_network_access(&rid, NetworkAccess::Private).await {
        Err(e @ ProviderError::Refused { .. }) => {
            let text = e.to_string();
            assert!(text.starts_with("RequestDisallowedByPolicy"), "{text}");
            assert!(text.contains(VAULT_WRITE) && text.contains("policy exemption"), "{text}");
            assert!(!text.contains("authentication"), "a policy denial is not a login problem: {text}");
        }
        other => panic!("expected a refusal, got {other:?}"),
    }
    // A missing role: AuthorizationFailed, the role to grant named.
    emu.forbid_vault_patches("AuthorizationFailed");
    match az.set_vault_network_access(&rid, NetworkAccess::Private).await {
        Err(ProviderError::Refused { code, action, .. }) => {
            assert_eq!((code.as_str(), action.as_str()), ("AuthorizationFailed", VAULT_WRITE));
        }
        other => panic!("expected a refusal, got {other:?}"),
    }
    let text = az.set_vault_network_access(&rid, NetworkAccess::Private).await.unwrap_err().to_string();
    assert!(text.contains("Key Vault Contributor"), "{text}");
    assert_eq!(emu.vault_public("kv-orders"), Some(true), "nothing changed");
    emu.clear_refusals();

    // The effective permissions, with wildcards and notActions.
    let actions = [CLUSTER_READ, CLUSTER_WRITE];
    assert_eq!(az.check_permissions(None, &actions).await.unwrap(), PermissionCheck::Allowed, "default: *");
    emu.set_permissions(&["Microsoft.ContainerService/*", "Microsoft.KeyVault/vaults/*"], &["*/vaults/write"]);
    assert_eq!(az.check_permissions(None, &actions).await.unwrap(), PermissionCheck::Allowed);
    assert_eq!(
        az.check_permissions(Some(&rid), &[VAULT_WRITE]).await.unwrap(),
        PermissionCheck::Missing(vec![VAULT_WRITE.to_string()])
    );
    emu.refuse_permissions_read(true);
    match az.check_permissions(Some(&rid), &[VAULT_WRITE]).await {
        Err(ProviderError::Refused { code, .. }) => assert_eq!(code, "AuthorizationFailed"),
        other => panic!("the read itself refused: expected Refused, got {other:?}"),
    }
    emu.clear_refusals();

    // No token to be had: credentials.
    let bad = Credentials::ClientSecret {
        tenant_id: spec.tenant_id.clone(),
        client_id: spec.client_id.clone(),
        secret: "wrong".into(),
    };
    let az = AzureKms::new(&target(&spec), settings(&emu), &bad).unwrap();
    assert!(matches!(az.get_kms().await.unwrap_err(), ProviderError::Auth(_)), "no token: credentials");
}
