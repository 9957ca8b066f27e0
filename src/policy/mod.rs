//! ClusterSecurityPolicy: listeners and Kafka properties rendered from the settings (pure), and
//! the reconciler that rolls them into the brokers as an MSK-style operation.

pub mod listeners;
pub mod properties;
pub mod reconcile;

use crate::api::{ClusterSecurityPolicySpec, SecuritySettings};

/// Name of the ConfigMap holding `server.properties` and `security.json`.
pub fn configmap_name(cluster: &str) -> String {
    format!("{cluster}-security")
}

/// Name of the Secret holding the client CA bundle (`ca.crt`; `ca.key` when generated).
pub fn client_ca_secret_name(cluster: &str) -> String {
    format!("{cluster}-client-ca")
}

/// Pod-template annotation whose change rolls the brokers.
pub const SECURITY_HASH_ANNOTATION: &str = "clustersecurity.io/security-hash";

/// The settings a spec asks for.
pub fn desired_settings(spec: &ClusterSecurityPolicySpec) -> SecuritySettings {
    SecuritySettings {
        client_authentication: spec.client_authentication.clone(),
        encryption_in_transit: spec.encryption_in_transit.clone(),
    }
}
