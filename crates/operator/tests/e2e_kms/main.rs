//! End-to-end tests of encryption at rest: the re-encryption engine on an aescbc control plane,
//! and KmsKeyVaultMode switches on a KMS-encrypted control plane with the Azure emulator. Each
//! test starts the control plane it needs.

mod kms;
mod reencrypt;
