//! KmsKeyVaultMode: the re-encryption engine (usable on its own), the step planner, the cloud
//! provider behind a trait (Azure first) and the controller that drives the steps.

pub mod azure;
pub mod provider;
pub mod reconcile;
pub mod reencrypt;
pub mod steps;
