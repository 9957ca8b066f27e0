//! Client certificates on request (`spec.clientAuthentication.tls.clients`): each listed client
//! gets a certificate (subject `OU=clustersecurity-clients, CN=<name>`, which Kafka prints
//! `CN=<name>,OU=clustersecurity-clients` and the rendered principal mapping names
//! `User:<name>`, never a broker's; client authentication only) from the client CA the
//! operator keeps, in a Secret of its own (`tls.crt`, `tls.key`, `ca.crt` = the client CA, type
//! `kubernetes.io/tls`). Issued when missing, when no longer signed by the current CA or for
//! another name, and once two thirds of its validity have passed; otherwise left as it is. The
//! brokers trust the CA, not the certificates: nothing rolls for a client.
//!
//! What this module may touch: the listed client Secrets (reads; the writes it plans go through
//! the round, under the field manager, never over a Secret that is not the operator's).

use k8s_openapi::api::core::v1::Secret;
use k8s_openapi::jiff::Timestamp;
use kube::{Api, ResourceExt};
use serde_json::json;

use crate::api::{ClusterSecurityPolicy, TlsClient};
use crate::pki::{self, KeyedCert};
use crate::reconciler::derived;
use crate::reconciler::round::Artefact;
use crate::reconciler::Noted as _;
use crate::reconciler::{Error, Named};

/// Validity of a client certificate.
pub(super) const CLIENT_DAYS: u32 = 365;
/// Annotation on a client Secret: the client it was issued for.
pub(super) const CLIENT_ANNOTATION: &str = "clustersecurity.io/tls-client";

/// The clients the spec lists, when the operator issues them (mTLS with its own CA).
pub(super) fn listed(csp: &ClusterSecurityPolicy) -> &[TlsClient] {
    match csp.spec.client_authentication.tls.as_ref() {
        Some(t) if t.enabled && t.certificate_authority_secret_refs.is_empty() => &t.clients,
        _ => &[],
    }
}

/// Whether the Secret (as read) must be issued again for `client` under the CA `ca_pem`.
pub(super) fn needs_issue(secret: Option<&Secret>, client: &TlsClient, ca_pem: &str, now: Timestamp) -> bool {
    let Some(cert) = secret.and_then(|s| s.data.as_ref()).and_then(|d| d.get("tls.crt")) else { return true };
    let Ok(cert) = std::str::from_utf8(&cert.0) else { return true };
    let renew_within = i64::from(CLIENT_DAYS) * 86_400 / 3;
    !pki::is_client_subject(cert, &client.name)
        || !pki::valid_client_of(cert, ca_pem, now)
        || pki::seconds_left(cert, now).is_none_or(|left| left < renew_within)
}

/// The Secrets of the [listed] clients as they are now, in that order.
pub(super) async fn current(secrets: &Api<Secret>, csp: &ClusterSecurityPolicy) -> Result<Vec<Option<Secret>>, Error> {
    let ns = csp.namespace().unwrap_or_default();
    let mut out = Vec::new();
    for client in listed(csp) {
        out.push(secrets.get_opt(&client.secret_name).await.reading(&Named::new(
            "Secret",
            &ns,
            &client.secret_name,
        ))?);
    }
    Ok(out)
}

/// The listed clients whose Secret (`current`, from [`current`]) must be issued (again) under
/// the CA `ca_pem`.
fn due<'c>(
    csp: &'c ClusterSecurityPolicy,
    current: &[Option<Secret>],
    ca_pem: &str,
    now: Timestamp,
) -> Vec<&'c TlsClient> {
    let secrets = current.iter().map(Option::as_ref).chain(std::iter::repeat(None));
    listed(csp).iter().zip(secrets).filter(|(c, s)| needs_issue(*s, c, ca_pem, now)).map(|(c, _)| c).collect()
}

/// The client Secrets to write for what is due (from `current`), and the clients issued.
pub(super) fn issue(
    csp: &ClusterSecurityPolicy,
    current: &[Option<Secret>],
    ca: &KeyedCert,
    now: Timestamp,
) -> Result<(Vec<Artefact>, Vec<String>), Error> {
    let (mut writes, mut issued) = (Vec::new(), Vec::new());
    for client in due(csp, current, &ca.cert_pem, now) {
        let name = &client.secret_name;
        let leaf = pki::issue_client(ca, &client.name, now, CLIENT_DAYS)
            .map_err(|source| Error::Issue { what: format!("client certificate {}", client.name), source })?;
        let annotations = json!({"annotations": {CLIENT_ANNOTATION: client.name}});
        writes.push(Artefact::secret(json!({"apiVersion": "v1", "kind": "Secret",
            "metadata": derived::metadata(csp, name, csp.spec.deletion_policy, annotations),
            "type": "kubernetes.io/tls",
            "stringData": {"tls.crt": leaf.cert_pem, "tls.key": leaf.key_pem, "ca.crt": ca.cert_pem}})));
        issued.push(client.name.clone());
    }
    Ok((writes, issued))
}

/// While settled: whether a listed client's certificate is due under the client CA the operator
/// keeps (none kept yet: due — the next operation creates it, with the certificates).
pub(super) async fn any_due(secrets: &Api<Secret>, csp: &ClusterSecurityPolicy, now: Timestamp) -> Result<bool, Error> {
    let ns = csp.namespace().unwrap_or_default();
    let key_name = super::client_ca_key_secret_name(&csp.spec.cluster_ref.name);
    let kept = secrets.get_opt(&key_name).await.reading(&Named::new("Secret", &ns, &key_name))?;
    let ca = kept.and_then(|s| s.data).and_then(|d| d.get("ca.crt").and_then(|c| String::from_utf8(c.0.clone()).ok()));
    match ca {
        Some(ca) => Ok(!due(csp, &current(secrets, csp).await?, &ca, now).is_empty()),
        None => Ok(true),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use k8s_openapi::ByteString;

    fn secret(pem: &str) -> Secret {
        Secret {
            data: Some([("tls.crt".to_string(), ByteString(pem.as_bytes().to_vec()))].into()),
            ..Default::default()
        }
    }

    #[test]
    fn issued_again_when_missing_for_another_name_or_ca_or_due() {
        let now = Timestamp::now();
        let ca = pki::new_ca("client CA", now, 3650).unwrap();
        let other = pki::new_ca("other CA", now, 3650).unwrap();
        let client = TlsClient { name: "orders-app".into(), secret_name: "orders-app-tls".into() };
        let fresh = pki::issue_client(&ca, "orders-app", now, CLIENT_DAYS).unwrap();
        assert!(needs_issue(None, &client, &ca.cert_pem, now));
        assert!(!needs_issue(Some(&secret(&fresh.cert_pem)), &client, &ca.cert_pem, now));
        // One issued before clients had a unit of their own: its principal could be a broker's.
        let unitless = pki::issue_leaf(&ca, "orders-app", &[], pki::Usage::Client, now, CLIENT_DAYS).unwrap();
        assert!(needs_issue(Some(&secret(&unitless.cert_pem)), &client, &ca.cert_pem, now));
        let renamed = TlsClient { name: "billing".into(), ..client.clone() };
        assert!(needs_issue(Some(&secret(&fresh.cert_pem)), &renamed, &ca.cert_pem, now));
        assert!(needs_issue(Some(&secret(&fresh.cert_pem)), &client, &other.cert_pem, now), "another CA");
        // Two thirds into its validity (and a day), it is renewed.
        let later = Timestamp::from_second(now.as_second() + i64::from(CLIENT_DAYS) * 86_400 * 2 / 3 + 86_400).unwrap();
        assert!(needs_issue(Some(&secret(&fresh.cert_pem)), &client, &ca.cert_pem, later));
        // A server certificate is not a client certificate.
        let server = pki::issue_leaf(&ca, "orders-app", &[], pki::Usage::Server, now, CLIENT_DAYS).unwrap();
        assert!(needs_issue(Some(&secret(&server.cert_pem)), &client, &ca.cert_pem, now));
    }
}
