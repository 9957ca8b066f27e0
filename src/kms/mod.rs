//! KmsKeyVaultMode. So far: the re-encryption engine, usable on its own.

pub mod reencrypt;
