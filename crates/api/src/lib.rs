//! The contract of cluster-security-operator (docs/api.md): the three custom resource kinds of
//! `clustersecurity.io/v1alpha1`, the status types they share, every validation rule
//! ([`validate`]) and the manifests derived from them ([`manifests`]: CRDs, the webhook
//! configuration).
//!
//! What this crate may touch: nothing. No client, no runtime, no I/O — values in, values out.
//! The operator, its webhook and the test harness all read the contract from here.

#![forbid(unsafe_code)]
// The contract is read by people writing manifests and by the other crates: every public item says what it is.
#![warn(missing_docs)]

// clippy reads the repeated `printcolumn(type_ = ...)` arguments of the derive as duplicates.
#[allow(clippy::duplicated_attributes)]
pub mod certificate_rotation;
pub mod common;
#[allow(clippy::duplicated_attributes)]
pub mod kms_key_vault_mode;
pub mod maintenance;
pub mod manifests;
#[allow(clippy::duplicated_attributes)]
pub mod security_policy;
pub mod validate;

pub use certificate_rotation::*;
pub use common::*;
pub use kms_key_vault_mode::*;
pub use security_policy::*;

/// API group of every kind.
pub const GROUP: &str = "clustersecurity.io";
/// API version of every kind.
pub const VERSION: &str = "v1alpha1";
/// Field manager used for every server-side apply the operator makes.
pub const FIELD_MANAGER: &str = "cluster-security-operator";
