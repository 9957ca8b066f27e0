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

/// All three CRDs, in a stable order (what `crds/` holds and `crd` prints).
pub fn all_crds() -> Vec<k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition> {
    vec![ClusterSecurityPolicy::crd(), CertificateRotation::crd(), KmsKeyVaultMode::crd()]
}

/// The CRDs as one multi-document YAML stream.
pub fn crds_yaml() -> String {
    all_crds()
        .iter()
        .map(|crd| serde_yaml::to_string(crd).expect("a CRD always serializes"))
        .collect::<Vec<_>>()
        .join("---\n")
}
