//! End-to-end tests that share one control plane (kube-apiserver + etcd + controller-manager),
//! one operator with its webhook, and the play kubelet (`support::env`), each test in its own
//! namespace. Tests that restart or replace parts of the control plane are in
//! `e2e_disruptive`; those needing an encrypted control plane in `e2e_kms`.

mod support;

mod adoption;
mod alerts;
mod certrot;
mod chart;
mod conflicts;
mod foundation;
mod hostile;
mod on_the_wire;
mod plugin;
mod policy;
mod secrets;
mod tenants;
mod wiring;
