//! The three custom resource kinds of `clustersecurity.io/v1alpha1` (contract: API.md) and the
//! status types they share.

// clippy reads the repeated `printcolumn(type_ = ...)` arguments of the derive as duplicates.
#[allow(clippy::duplicated_attributes)]
pub mod certificate_rotation;
pub mod common;
#[allow(clippy::duplicated_attributes)]
pub mod kms_key_vault_mode;
#[allow(clippy::duplicated_attributes)]
pub mod security_policy;

pub use certificate_rotation::*;
pub use common::*;
pub use kms_key_vault_mode::*;
pub use security_policy::*;

use kube::CustomResourceExt;

/// API group of every kind.
pub const GROUP: &str = "clustersecurity.io";
/// API version of every kind.
pub const VERSION: &str = "v1alpha1";
/// Field manager used for every server-side apply the operator makes.
pub const FIELD_MANAGER: &str = "cluster-security-operator";

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
