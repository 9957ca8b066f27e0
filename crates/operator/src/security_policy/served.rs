//! What the brokers of a cluster are configured to present on their TLS listeners. The listeners
//! are those the operator renders into `server.properties` for the settings it recorded — the
//! ClusterSecurityPolicy's operation in progress, else its `status.applied` — each with the
//! mounted directory its keystore comes from; never what ConfigMap `<cluster>-security` holds
//! now, which whoever edits ConfigMaps in the namespace can change (and so choose where the
//! operator connects, or leave it no TLS listener to check). The TLS Secret behind a directory
//! (`<cluster>-external-tls`, `<cluster>-internal-tls`) holds the certificate and, in `ca.crt`,
//! the CA it must chain to (the CA the external trust bundle publishes).
//!
//! Both rolling kinds check this on the wire before an operation completes (`spec.verify`), so a
//! certificate rotation is checked on the listeners the policy opened, and a policy change on
//! the certificates in place. Reads only: the namespace's ClusterSecurityPolicies that target
//! the cluster (their status: found in the policy controller's cache, each read fresh) and the
//! TLS Secrets.

use std::collections::BTreeMap;

use k8s_openapi::api::core::v1::Secret;
use kube::api::ListParams;
use kube::{Api, ResourceExt};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::CertificateDer;

use super::listeners::parse_listeners;
use super::properties::{render_server_properties, EXTERNAL_TLS_DIR, INTERNAL_TLS_DIR};
use crate::api::{ClusterSecurityPolicy, OperationState, SecuritySettings};
use crate::pki::fingerprint;
use crate::reconciler::verify::{Expectation, ListenerExpectation};
use crate::reconciler::Noted as _;
use crate::reconciler::{Context, Error, Named};

/// Secret `<cluster>-<slot>-tls` (`slot`: external, internal): the certificate the listeners
/// whose keystore is in `/etc/kafka/security/<slot>-tls` present.
pub(crate) fn tls_secret_name(cluster: &str, slot: &str) -> String {
    format!("{cluster}-{slot}-tls")
}

/// The listeners with a TLS keystore in `server.properties`: (name, port, keystore directory).
pub(crate) fn tls_listeners(server_properties: &str) -> Vec<(String, u16, String)> {
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
pub(crate) async fn when_verified(
    ctx: &Context,
    namespace: &str,
    cluster: &str,
    verify: Option<&crate::api::Verify>,
) -> Result<Option<Expectation>, Error> {
    if !crate::api::Verify::enabled(verify) {
        return Ok(None);
    }
    expectation(ctx, namespace, cluster).await.map(Some)
}

/// The TLS listeners the operator renders for `settings`: (name, port, keystore directory). From
/// the operator's own rendering, so every port is one the operator chose.
pub(crate) fn rendered_tls_listeners(settings: &SecuritySettings) -> Vec<(String, u16, String)> {
    tls_listeners(&render_server_properties(settings, "", None))
}

/// The ClusterSecurityPolicy whose listeners the brokers of `cluster` run, and the settings the
/// operator last rendered for them, from its status (which only the operator writes): the target
/// of an operation that has started rolling (its `server.properties` is written then), else the
/// settings applied. When several policies target `cluster`, the oldest with such settings (a
/// newer one is refused as a `Conflict` and renders nothing).
pub(crate) fn rendered_settings<'a>(
    policies: &'a [ClusterSecurityPolicy],
    cluster: &str,
) -> Option<(&'a ClusterSecurityPolicy, SecuritySettings)> {
    let settings = |p: &ClusterSecurityPolicy| {
        let status = p.status.as_ref()?;
        let rolling = status
            .current_operation
            .as_ref()
            .filter(|o| o.operation_state == OperationState::UpdateInProgress)
            .and_then(|o| o.target_info.clone());
        rolling.or_else(|| status.applied.clone())
    };
    let mut found: Vec<(&ClusterSecurityPolicy, SecuritySettings)> =
        policies.iter().filter(|p| targets(p, cluster)).filter_map(|p| Some((p, settings(p)?))).collect();
    found.sort_by_key(|(p, _)| (p.creation_timestamp(), p.name_any()));
    found.into_iter().next()
}

/// Whether `policy` is (or was recorded as) for `cluster`.
fn targets(policy: &ClusterSecurityPolicy, cluster: &str) -> bool {
    let recorded = policy.status.as_ref().and_then(|s| s.cluster_ref.as_ref());
    recorded.unwrap_or(&policy.spec.cluster_ref).name == cluster
}

/// Policies listed per page when the policy controller's cache is not at hand.
const POLICY_PAGE: u32 = 50;

/// The policies in `namespace` that target `cluster`, as stored now. The candidates come from
/// the policy controller's cache (a policy's `clusterRef` never changes, and a policy is in the
/// cache before its first status write), and each is read fresh; where that controller does not
/// run, a paged list keeps only them. Either way memory stays flat however many policies the
/// namespace holds (a list of all of them, on every check of every object, was the operator's
/// largest use of memory at scale: benches/scale.rs).
async fn policies_for(ctx: &Context, namespace: &str, cluster: &str) -> Result<Vec<ClusterSecurityPolicy>, Error> {
    let api = Api::<ClusterSecurityPolicy>::namespaced(ctx.client.clone(), namespace);
    let named = Named::new("ClusterSecurityPolicies", namespace, cluster);
    let mut found = Vec::new();
    if let Some(cache) = ctx.caches.get::<ClusterSecurityPolicy>() {
        let candidates: Vec<String> = cache
            .state()
            .iter()
            .filter(|p| p.namespace().as_deref() == Some(namespace) && targets(p, cluster))
            .map(|p| p.name_any())
            .collect();
        for name in candidates {
            found.extend(api.get_opt(&name).await.reading(&named)?);
        }
        return Ok(found);
    }
    let mut page = ListParams::default().limit(POLICY_PAGE);
    loop {
        let list = api.list(&page).await.reading(&named)?;
        found.extend(list.items.into_iter().filter(|p| targets(p, cluster)));
        match list.metadata.continue_.filter(|c| !c.is_empty()) {
            Some(token) => page = page.continue_token(&token),
            None => return Ok(found),
        }
    }
}

/// What every broker pod of `cluster` should present: on the listeners the operator rendered
/// ([`rendered_settings`]), the certificates of the TLS Secrets; what cannot be known goes to
/// `unchecked`, with why.
pub(crate) async fn expectation(ctx: &Context, namespace: &str, cluster: &str) -> Result<Expectation, Error> {
    let mut out = Expectation::default();
    let policies = policies_for(ctx, namespace, cluster).await?;
    let Some((_, settings)) = rendered_settings(&policies, cluster) else {
        out.unchecked.push(format!(
            "the TLS listeners (no ClusterSecurityPolicy in {namespace} has put listeners in place for {cluster})"
        ));
        return Ok(out);
    };
    let secrets: Api<Secret> = Api::namespaced(ctx.client.clone(), namespace);
    for (name, port, dir) in rendered_tls_listeners(&settings) {
        let slot = match dir.as_str() {
            EXTERNAL_TLS_DIR => "external",
            INTERNAL_TLS_DIR => "internal",
            other => {
                out.unchecked.push(format!("{name} ({port}): its keystore is in {other}, not written by the operator"));
                continue;
            }
        };
        let secret_name = tls_secret_name(cluster, slot);
        let secret = secrets.get_opt(&secret_name).await.reading(&Named::new("Secret", namespace, &secret_name))?;
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

    /// A policy `name` created at `created` for cluster `cluster`, with `status` (JSON).
    fn policy(name: &str, created: &str, cluster: &str, status: serde_json::Value) -> ClusterSecurityPolicy {
        serde_json::from_value(serde_json::json!({
            "apiVersion": "clustersecurity.io/v1alpha1", "kind": "ClusterSecurityPolicy",
            "metadata": {"name": name, "namespace": "kafka", "creationTimestamp": created},
            "spec": {"clusterRef": {"kind": "StatefulSet", "name": cluster},
                     "clientAuthentication": {"tls": {"enabled": true}},
                     "encryptionInTransit": {"clientBroker": "TLS", "inCluster": true}},
            "status": status
        }))
        .unwrap()
    }

    /// Settings as the status records them: mTLS (TLS 9094) or SCRAM (SASL_SCRAM 9096), and
    /// REPLICATION (9091) either way.
    fn settings(scram: bool) -> serde_json::Value {
        let auth = if scram {
            serde_json::json!({"sasl": {"scram": {"enabled": true}}})
        } else {
            serde_json::json!({"tls": {"enabled": true}})
        };
        serde_json::json!({"clientAuthentication": auth, "encryptionInTransit": {"clientBroker": "TLS", "inCluster": true}})
    }

    fn operation(state: &str, target: serde_json::Value) -> serde_json::Value {
        serde_json::json!({"operationId": "op", "operationType": "UPDATE_SECURITY", "operationState": state,
                           "creationTime": "2026-01-01T00:00:00Z", "targetInfo": target})
    }

    fn ports(found: Option<(&ClusterSecurityPolicy, SecuritySettings)>) -> Vec<(String, u16)> {
        let (_, s) = found.expect("settings");
        rendered_tls_listeners(&s).into_iter().map(|(n, p, _)| (n, p)).collect()
    }

    #[test]
    fn the_listeners_come_from_the_settings_the_operator_recorded_not_from_the_configmap() {
        let mtls = [("TLS".to_string(), 9094), ("REPLICATION".to_string(), 9091)];
        let scram = [("SASL_SCRAM".to_string(), 9096), ("REPLICATION".to_string(), 9091)];
        let t = "2026-01-01T00:00:00Z";
        // Settled: what was applied.
        let settled = [policy("p", t, "kafka", serde_json::json!({"applied": settings(false)}))];
        assert_eq!(ports(rendered_settings(&settled, "kafka")), mtls);
        // An operation rolling (its server.properties is written): its target.
        let rolling = [policy(
            "p",
            t,
            "kafka",
            serde_json::json!({"applied": settings(false), "currentOperation": operation("UPDATE_IN_PROGRESS", settings(true))}),
        )];
        assert_eq!(ports(rendered_settings(&rolling, "kafka")), scram);
        // One still PENDING has written nothing: still what was applied.
        let pending = [policy(
            "p",
            t,
            "kafka",
            serde_json::json!({"applied": settings(false), "currentOperation": operation("PENDING", settings(true))}),
        )];
        assert_eq!(ports(rendered_settings(&pending, "kafka")), mtls);
        // Another cluster's policy, and one that never put anything in place, do not count.
        let others = [
            policy("other", t, "other-kafka", serde_json::json!({"applied": settings(true)})),
            policy("new", t, "kafka", serde_json::json!({})),
        ];
        assert!(rendered_settings(&others, "kafka").is_none());
        // Two for one cluster: the older (the newer one is refused as a Conflict).
        let two = [
            policy("b-newer", "2026-02-01T00:00:00Z", "kafka", serde_json::json!({"applied": settings(true)})),
            policy("a-older", t, "kafka", serde_json::json!({"applied": settings(false)})),
        ];
        let (p, _) = rendered_settings(&two, "kafka").unwrap();
        assert_eq!(p.name_any(), "a-older");
    }
}
