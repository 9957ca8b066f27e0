//! End-to-end tests that break things: operator SIGKILLs, kube-apiserver and etcd restarts,
//! leader hand-over between two replicas. Each test owns its control plane.

#[path = "../e2e/support.rs"]
mod support;

mod chart_upgrade;
mod faults;
mod ha;
mod invalid_object;
mod restart;
mod scoped;
mod upgrade;
mod webhook_client;
