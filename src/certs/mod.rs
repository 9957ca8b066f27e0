//! CertificateRotation: certificate issuance and checks (pure), client-impact analysis, and the
//! reconciler that rolls new certificates into the pods when a label changes.

pub mod inspect;
pub mod reconcile;

use k8s_openapi::jiff::Timestamp;

use crate::api::ClientImpact;

/// External (clients) or internal (pod-to-pod) certificate.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Slot {
    External,
    Internal,
}

impl Slot {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::External => "external",
            Self::Internal => "internal",
        }
    }
    /// Secret `<cluster>-<slot>-tls` with tls.crt, tls.key, ca.crt.
    pub fn tls_secret(self, cluster: &str) -> String {
        format!("{cluster}-{}-tls", self.as_str())
    }
    /// Secret `<cluster>-<slot>-ca` with the CA the operator keeps for self-signed certificates.
    pub fn ca_secret(self, cluster: &str) -> String {
        format!("{cluster}-{}-ca", self.as_str())
    }
    /// Pod-template annotation carrying the label.
    pub fn label_annotation(self) -> String {
        format!("clustersecurity.io/{}-certificate-label", self.as_str())
    }
}

/// ConfigMap with the CA(s) clients of the external listeners should trust.
pub fn trust_configmap(cluster: &str) -> String {
    format!("{cluster}-external-trust")
}

/// Pod-template annotation that changes with the certificates themselves (renewals keep labels).
pub const CERTIFICATE_HASH_ANNOTATION: &str = "clustersecurity.io/certificate-hash";

/// TLS Secret annotation: the operation its certificate was issued for. An operator restarted
/// after issuing but before recording the rollout finds it and reuses the certificate instead of
/// issuing (and rolling) another.
pub const OPERATION_ANNOTATION: &str = "clustersecurity.io/operation-id";

/// Default SANs: the names a client uses to reach the brokers through their Service.
pub fn default_dns_names(service: &str, namespace: &str) -> Vec<String> {
    vec![
        service.to_string(),
        format!("{service}.{namespace}"),
        format!("{service}.{namespace}.svc"),
        format!("{service}.{namespace}.svc.cluster.local"),
        format!("*.{service}.{namespace}.svc"),
        format!("*.{service}.{namespace}.svc.cluster.local"),
    ]
}

/// The seed's "Updating clients after certificate change": clients keep working when the new
/// certificate chains to the CA they already trust. None for a first issue.
pub fn client_impact(old_ca_fingerprint: Option<&str>, new_ca_fingerprint: &str) -> Option<ClientImpact> {
    old_ca_fingerprint.map(|old| {
        if old == new_ca_fingerprint {
            ClientImpact::None
        } else {
            ClientImpact::TrustUpdateRequired
        }
    })
}

/// When a self-signed certificate is renewed: two thirds into its validity.
pub fn renewal_time(not_before: Timestamp, not_after: Timestamp) -> Timestamp {
    let span = not_after.as_second() - not_before.as_second();
    Timestamp::from_second(not_after.as_second() - span / 3).unwrap_or(not_after)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn impact_and_renewal() {
        assert_eq!(client_impact(None, "A"), None);
        assert_eq!(client_impact(Some("A"), "A"), Some(ClientImpact::None));
        assert_eq!(client_impact(Some("A"), "B"), Some(ClientImpact::TrustUpdateRequired));
        let (nb, na) = (Timestamp::from_second(0).unwrap(), Timestamp::from_second(300).unwrap());
        assert_eq!(renewal_time(nb, na).as_second(), 200);
        assert!(default_dns_names("orders-kafka", "kafka").contains(&"*.orders-kafka.kafka.svc".to_string()));
    }
}
