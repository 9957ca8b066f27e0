//! cluster-security-operator: declarative broker security policy, certificate rotation and KMS
//! key vault mode for Kubernetes. See README.md and the API contract in docs/.

pub mod api;
pub mod certs;
pub mod cli;
pub mod conditions;
pub mod controller;
pub mod health;
pub mod http;
pub mod kms;
pub mod leader;
pub mod metrics;
pub mod operation;
pub mod pki;
pub mod policy;
pub mod rollout;
pub mod testbed;
pub mod validate;
pub mod webhook;
