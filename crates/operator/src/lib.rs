//! cluster-security-operator: declarative broker security policy, certificate rotation and KMS
//! key vault mode for Kubernetes. See README.md and the contract in docs/api.md.
//!
//! The house, top down (imports point down only):
//! - [`runtime`]: the composition root — client, health, webhook, leader election, the three
//!   controllers, shutdown. [`args`]: the command line.
//! - one folder per kind: `security_policy`, `certificate_rotation`, `kms_key_vault_mode` —
//!   each implements the kit's `Reconcile` (and the two that roll pods, `Rolling`).
//! - `reconciler`: the kind-agnostic kit (runner, round, the one operation driver, status,
//!   events, conditions, watches). It never names a kind.
//! - leaves: `webhook`, `health`, `metrics`, `leader`, `pki`, `http`.
//!
//! The contract (kinds, rules, manifests) is the `cluster-security-api` crate. Modules are
//! private; what is public here is the command line and the re-encryption engine, which the
//! benchmarks and end-to-end tests drive on its own.

#![forbid(unsafe_code)]

mod args;
mod certificate_rotation;
mod health;
mod http;
mod kms_key_vault_mode;
mod leader;
mod metrics;
mod pki;
/// `kubectl clustersecurity` (binary `kubectl-clustersecurity`): only its `main` is public.
pub mod plugin;
mod reconciler;
mod runtime;
mod security_policy;
mod task;
mod webhook;

// The contract, under the names the modules use.
use cluster_security_api as api;
use cluster_security_api::validate;

pub use args::{Cli, Command};
/// The re-encryption engine: every Secret stored again under the API server's current first
/// encryption provider (what the ReencryptSecrets step runs).
pub use kms_key_vault_mode::reencrypt;
/// Default of `--concurrent-reconciles` (the scale benchmark compares it with unbounded).
pub use reconciler::CONCURRENT_RECONCILES;
pub use runtime::run;

/// Every metric family the operator exports (`cluster-security-operator metrics`).
pub fn metrics_catalogue() -> String {
    metrics::Metrics::catalogue()
}

#[cfg(test)]
mod fake_api;
#[cfg(test)]
mod fuzz_tests;
