//! What the brokers of a cluster are configured to present on their TLS listeners, read from what
//! the operator wrote for them: the `server.properties` of ConfigMap `<cluster>-security` names the
//! listeners and, for each, the mounted directory its keystore comes from; the TLS Secret behind
//! that directory (`<cluster>-external-tls`, `<cluster>-internal-tls`) holds the certificate and,
//! in `ca.crt`, the CA it must chain to (the CA the external trust bundle publishes).
//!
//! Both rolling kinds check this on the wire before an operation completes (`spec.verify`), so a
//! certificate rotation is checked on the listeners the policy opened, and a policy change on
//! the certificates in place. Reads only.

use std::collections::BTreeMap;

use k8s_openapi::api::core::v1::{ConfigMap, Secret};
use kube::{Api, Client};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::CertificateDer;

use super::listeners::parse_listeners;
use super::properties::{EXTERNAL_TLS_DIR, INTERNAL_TLS_DIR};
use crate::pki::fingerprint;
use crate::reconciler::verify::{Expectation, ListenerExpectation};
use crate::reconciler::{Error, Named};

/// Secret `<cluster>-<slot>-tls` (`slot`: external, internal): the certificate the listeners
/// whose keystore is in `/etc/kafka/security/<slot>-tls` present.
pub fn tls_secret_name(cluster: &str, slot: &str) -> String {
    format!("{cluster}-{slot}-tls")
}

/// The listeners with a TLS keystore in `server.properties`: (name, port, keystore directory).
pub fn tls_listeners(server_properties: &str) -> Vec<(String, u16, String)> {
    let config: BTreeMap<&str, &str> = server_properties
        .lines()
        .map(str::trim)
        .filter(|l| !l.starts_with('#'))
        .filter_map(|l| l.split_once('='))
        .collect();
    let listeners = config.get("listeners").copied().unwrap_or_default();
    parse_listeners(listeners)
        .filter_map(|(name, port)| {
            let key = format!("listener.name.{}.ssl.keystore.certificate.chain", name.to_lowercase());
            let reference = config.get(key.as_str())?;
            let (dir, _file) = reference.strip_prefix("${dir:")?.strip_suffix('}')?.rsplit_once(':')?;
            Some((name.to_string(), port, dir.to_string()))
        })
        .collect()
}

/// [`expectation`] when the spec's `verify` is enabled, else None: nothing is checked.
pub async fn when_verified(
    client: &Client,
    namespace: &str,
    cluster: &str,
    verify: Option<&crate::api::Verify>,
) -> Result<Option<Expectation>, Error> {
    if !crate::api::Verify::enabled(verify) {
        return Ok(None);
    }
    expectation(client, namespace, cluster).await.map(Some)
}

/// What every broker pod of `cluster` should present, from the operator's ConfigMap and the TLS
/// Secrets; what cannot be known goes to `unchecked`, with why.
pub async fn expectation(client: &Client, namespace: &str, cluster: &str) -> Result<Expectation, Error> {
    let mut out = Expectation::default();
    let cm_name = super::configmap_name(cluster);
    let cm = Api::<ConfigMap>::namespaced(client.clone(), namespace).get_opt(&cm_name).await.map_err(|source| {
        Error::Read { object: Named::new("ConfigMap", namespace, &cm_name), source: Box::new(source) }
    })?;
    let Some(properties) = cm.and_then(|c| c.data).and_then(|d| d.get("server.properties").cloned()) else {
        out.unchecked
            .push(format!("the TLS listeners (no ClusterSecurityPolicy has written ConfigMap {namespace}/{cm_name})"));
        return Ok(out);
    };
    let secrets: Api<Secret> = Api::namespaced(client.clone(), namespace);
    for (name, port, dir) in tls_listeners(&properties) {
        let slot = match dir.as_str() {
            EXTERNAL_TLS_DIR => "external",
            INTERNAL_TLS_DIR => "internal",
            other => {
                out.unchecked.push(format!("{name} ({port}): its keystore is in {other}, not written by the operator"));
                continue;
            }
        };
        let secret_name = tls_secret_name(cluster, slot);
        let secret = secrets.get_opt(&secret_name).await.map_err(|source| Error::Read {
            object: Named::new("Secret", namespace, &secret_name),
            source: Box::new(source),
        })?;
        let data = secret.and_then(|s| s.data).unwrap_or_default();
        let source = format!("Secret {namespace}/{secret_name}");
        let Some(leaf) = data.get("tls.crt").and_then(|c| CertificateDer::pem_slice_iter(&c.0).next()?.ok()) else {
            out.unchecked.push(format!("{name} ({port}): {source} does not exist or holds no certificate"));
            continue;
        };
        let trust: Vec<Vec<u8>> = data
            .get("ca.crt")
            .map(|c| CertificateDer::pem_slice_iter(&c.0).filter_map(Result::ok).map(|d| d.to_vec()).collect())
            .unwrap_or_default();
        if trust.is_empty() {
            out.unchecked.push(format!("the chain on {name} ({port}): {source} has no ca.crt"));
        }
        out.listeners.push(ListenerExpectation {
            name,
            port,
            fingerprint_sha256: fingerprint(&leaf),
            trust_source: format!("{source} (ca.crt)"),
            source,
            trust,
        });
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::api::{ClientBroker, ClusterSecurityPolicySpec};
    use crate::security_policy::{desired_settings, properties::render_server_properties};

    #[test]
    fn every_tls_listener_of_the_rendered_properties_is_found_with_its_keystore_directory() {
        let spec: ClusterSecurityPolicySpec = serde_json::from_value(serde_json::json!({
            "clusterRef": {"kind": "StatefulSet", "name": "orders-kafka"},
            "clientAuthentication": {"tls": {"enabled": true}, "unauthenticated": {"enabled": true},
                "sasl": {"scram": {"enabled": true}}},
            "encryptionInTransit": {"clientBroker": "TLS_PLAINTEXT", "inCluster": true}
        }))
        .unwrap();
        let settings = desired_settings(&spec);
        assert_eq!(settings.encryption_in_transit.client_broker, ClientBroker::TlsPlaintext);
        let found = tls_listeners(&render_server_properties(&settings, "kafka/orders", Some("k.kafka.svc")));
        let ext = EXTERNAL_TLS_DIR.to_string();
        assert_eq!(
            found,
            [
                ("TLS".to_string(), 9094, ext.clone()),
                ("TLS_UNAUTHENTICATED".to_string(), 9095, ext.clone()),
                ("SASL_SCRAM".to_string(), 9096, ext),
                ("REPLICATION".to_string(), 9091, INTERNAL_TLS_DIR.to_string()),
            ]
        );
    }
}
