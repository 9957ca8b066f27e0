//! What the contract installs into a cluster: the three CustomResourceDefinitions (what `crds/`
//! holds and `cluster-security-operator crd` prints) and the ValidatingWebhookConfiguration.

use k8s_openapi::api::admissionregistration::v1::{
    RuleWithOperations, ValidatingWebhook, ValidatingWebhookConfiguration, WebhookClientConfig,
};
use kube::CustomResourceExt;

use crate::{CertificateRotation, ClusterSecurityPolicy, KmsKeyVaultMode, GROUP, VERSION};

type Crd = k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;

/// All three CRDs, in a stable order (what `crds/` holds and `crd` prints).
pub fn all_crds() -> Vec<Crd> {
    [ClusterSecurityPolicy::crd(), CertificateRotation::crd(), KmsKeyVaultMode::crd()]
        .into_iter()
        .map(strip_null_enum_values)
        .collect()
}

/// An optional enum comes out of schemars as `enum: [A, B, null]` beside `nullable: true`;
/// Kubernetes' OpenAPI validation (kubectl apply) rejects the null entry, and `nullable` already
/// allows it, so drop it.
fn strip_null_enum_values(crd: Crd) -> Crd {
    fn walk(v: &mut serde_json::Value) {
        match v {
            serde_json::Value::Object(map) => {
                if let Some(serde_json::Value::Array(values)) = map.get_mut("enum") {
                    values.retain(|e| !e.is_null());
                }
                map.values_mut().for_each(walk);
            }
            serde_json::Value::Array(items) => items.iter_mut().for_each(walk),
            _ => {}
        }
    }
    let mut value = serde_json::to_value(&crd).expect("a CRD always serializes");
    walk(&mut value);
    serde_json::from_value(value).expect("the CRD is still a CRD")
}

/// The CRDs as one multi-document YAML stream.
pub fn crds_yaml() -> String {
    all_crds()
        .iter()
        .map(|crd| serde_yaml::to_string(crd).expect("a CRD always serializes"))
        .collect::<Vec<_>>()
        .join("---\n")
}

/// Path the ValidatingWebhookConfiguration points at.
pub const VALIDATE_PATH: &str = "/validate";

/// Name of the ValidatingWebhookConfiguration.
pub const WEBHOOK_CONFIGURATION_NAME: &str = "cluster-security-operator";
/// Name of its one webhook.
pub const WEBHOOK_NAME: &str = "validate.clustersecurity.io";

/// The ValidatingWebhookConfiguration for all three kinds. CREATE and UPDATE only: deletes never
/// pass through the webhook, so a broken webhook can't block cleanup.
pub fn webhook_configuration(client_config: WebhookClientConfig) -> ValidatingWebhookConfiguration {
    ValidatingWebhookConfiguration {
        metadata: kube::core::ObjectMeta { name: Some(WEBHOOK_CONFIGURATION_NAME.into()), ..Default::default() },
        webhooks: Some(vec![ValidatingWebhook {
            name: WEBHOOK_NAME.into(),
            admission_review_versions: vec!["v1".into()],
            client_config,
            failure_policy: Some("Fail".into()),
            match_policy: Some("Equivalent".into()),
            side_effects: "None".into(),
            timeout_seconds: Some(5),
            rules: Some(vec![RuleWithOperations {
                api_groups: Some(vec![GROUP.into()]),
                api_versions: Some(vec![VERSION.into()]),
                operations: Some(vec!["CREATE".into(), "UPDATE".into()]),
                resources: Some(vec![
                    "clustersecuritypolicies".into(),
                    "certificaterotations".into(),
                    "kmskeyvaultmodes".into(),
                ]),
                scope: Some("*".into()),
            }]),
            ..Default::default()
        }]),
    }
}
