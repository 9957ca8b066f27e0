//! KmsKeyVaultMode. So far: the re-encryption engine (usable on its own) and the step planner;
//! the Azure provider and the controller that drives the steps come next.

pub mod reencrypt;
pub mod steps;
