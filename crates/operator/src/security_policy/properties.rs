//! Kafka `server.properties` and the broker-neutral `security.json` for a set of settings.
//!
//! Key material is never inlined: PEM stores point at mounted Secret files through Kafka's
//! DirectoryConfigProvider (KIP-632), as Strimzi does. Mount paths (documented in
//! docs/clustersecuritypolicy.md):
//! - `/etc/kafka/security/config/`       ← ConfigMap `<cluster>-security` (server.properties, security.json)
//! - `/etc/kafka/security/external-tls/` ← Secret `<cluster>-external-tls` (tls.crt, tls.key)
//! - `/etc/kafka/security/internal-tls/` ← Secret `<cluster>-internal-tls` (tls.crt, tls.key, ca.crt)
//! - `/etc/kafka/security/client-ca/`   ← Secret `<cluster>-client-ca` (ca.crt)
//! - `/etc/kafka/security/pod/`         ← the pod's name (downward API file `name`)

use std::fmt::Write as _;

use serde::Serialize;

use super::listeners::{client_listeners, replication_listener, ClientAuth, ListenerDef, Protocol};
use crate::api::{ControllerProtocol, IamAuthentication, SecuritySettings};

pub(crate) const CONFIG_DIR: &str = "/etc/kafka/security/config";
pub(crate) const EXTERNAL_TLS_DIR: &str = "/etc/kafka/security/external-tls";
pub(crate) const INTERNAL_TLS_DIR: &str = "/etc/kafka/security/internal-tls";
pub(crate) const CLIENT_CA_DIR: &str = "/etc/kafka/security/client-ca";
/// The pod's own name (a downward API file `name`), for `advertised.listeners`.
pub(crate) const POD_DIR: &str = "/etc/kafka/security/pod";

/// Every directory a `${dir:…}` reference of ours names.
pub(crate) const PROVIDER_PATHS: [&str; 4] = [EXTERNAL_TLS_DIR, INTERNAL_TLS_DIR, CLIENT_CA_DIR, POD_DIR];

fn dir_ref(dir: &str, file: &str) -> String {
    format!("${{dir:{dir}:{file}}}")
}

fn keystore(out: &mut Vec<(String, String)>, prefix: &str, dir: &str) {
    out.push((format!("{prefix}ssl.keystore.type"), "PEM".into()));
    out.push((format!("{prefix}ssl.keystore.certificate.chain"), dir_ref(dir, "tls.crt")));
    out.push((format!("{prefix}ssl.keystore.key"), dir_ref(dir, "tls.key")));
}

fn truststore(out: &mut Vec<(String, String)>, prefix: &str, dir: &str) {
    out.push((format!("{prefix}ssl.truststore.type"), "PEM".into()));
    out.push((format!("{prefix}ssl.truststore.certificates"), dir_ref(dir, "ca.crt")));
}

/// How the brokers name a client certificate on a client listener
/// (`listener.name.<listener>.ssl.principal.mapping.rules`, applied to the subject as Java prints
/// it, RFC 2253, last attribute first): a certificate the operator issued
/// (`CN=<name>,OU=clustersecurity-clients`, [`pki::CLIENT_UNIT`](crate::pki::CLIENT_UNIT)) is
/// `User:<name>`; any other subject that is a common name alone — the form of the brokers' own
/// certificates, `CN=<service>`, whichever CA a client's came from, or one issued before clients
/// had a unit — is `User:<common name>`; any other subject is itself (Kafka's DEFAULT). So no
/// certificate on a client listener is ever named `User:CN=<…>` alone, the brokers' principal
/// (their listener keeps Kafka's default); a name has no `,` or `=` to make it one. No backslash:
/// the properties file would read it as an escape.
pub(crate) const CLIENT_PRINCIPAL_RULES: &str =
    "RULE:^CN=([^,=]+),OU=clustersecurity-clients$/$1/,RULE:^CN=([^,=]+)$/$1/,DEFAULT";

fn listener_properties(out: &mut Vec<(String, String)>, l: &ListenerDef, internal: bool) {
    let prefix = format!("listener.name.{}.", l.name.to_lowercase());
    let cert_dir = if internal { INTERNAL_TLS_DIR } else { EXTERNAL_TLS_DIR };
    if matches!(l.protocol, Protocol::Ssl | Protocol::SaslSsl) {
        keystore(out, &prefix, cert_dir);
    }
    match l.auth {
        ClientAuth::MutualTls => {
            out.push((format!("{prefix}ssl.client.auth"), "required".into()));
            truststore(out, &prefix, if internal { INTERNAL_TLS_DIR } else { CLIENT_CA_DIR });
            if !internal {
                out.push((format!("{prefix}ssl.principal.mapping.rules"), CLIENT_PRINCIPAL_RULES.into()));
            }
        }
        ClientAuth::None if l.protocol == Protocol::Ssl => {
            out.push((format!("{prefix}ssl.client.auth"), "none".into()));
        }
        ClientAuth::None => {}
        ClientAuth::Scram => {
            out.push((format!("{prefix}sasl.enabled.mechanisms"), "SCRAM-SHA-512".into()));
            out.push((
                format!("{prefix}scram-sha-512.sasl.jaas.config"),
                "org.apache.kafka.common.security.scram.ScramLoginModule required;".into(),
            ));
        }
        ClientAuth::OAuthBearer => {
            out.push((format!("{prefix}sasl.enabled.mechanisms"), "OAUTHBEARER".into()));
            out.push((
                format!("{prefix}oauthbearer.sasl.jaas.config"),
                "org.apache.kafka.common.security.oauthbearer.OAuthBearerLoginModule required;".into(),
            ));
            // Validate signed tokens; the default handler would accept unsecured JWTs.
            out.push((
                format!("{prefix}oauthbearer.sasl.server.callback.handler.class"),
                "org.apache.kafka.common.security.oauthbearer.OAuthBearerValidatorCallbackHandler".into(),
            ));
        }
    }
}

/// What the validating handler checks each token against (`spec.clientAuthentication.sasl.iam`;
/// validation refuses a spec without all three). Listener-prefixed like every SASL setting.
fn token_validation(out: &mut Vec<(String, String)>, l: &ListenerDef, iam: &IamAuthentication) {
    let prefix = format!("listener.name.{}.oauthbearer.", l.name.to_lowercase());
    let settings = [
        ("sasl.oauthbearer.jwks.endpoint.url", &iam.jwks_endpoint_url),
        ("sasl.oauthbearer.expected.issuer", &iam.issuer),
        ("sasl.oauthbearer.expected.audience", &iam.audience),
    ];
    for (key, value) in settings {
        if let Some(v) = value {
            out.push((format!("{prefix}{key}"), v.clone()));
        }
    }
}

/// Ordered `key=value` pairs of server.properties. `domain`: the pods' DNS domain
/// (`<service>.<namespace>.svc` of a StatefulSet whose pods get the pod-name file), to advertise
/// each listener as `<pod>.<domain>`; None: Kafka's default (`listeners`, the canonical host name).
pub(crate) fn server_properties(s: &SecuritySettings, domain: Option<&str>) -> Vec<(String, String)> {
    let clients = client_listeners(s);
    let replication = replication_listener(s);
    let all: Vec<&ListenerDef> = clients.iter().chain(std::iter::once(&replication)).collect();
    // A KRaft controller listener is kept as the quorum runs it (the operator owns `listeners`
    // and the protocol map, so leaving it out would stop a combined node).
    let controller = s.controller_listener.as_ref();
    let mut listeners: Vec<String> = all.iter().map(|l| format!("{}://:{}", l.name, l.port)).collect();
    let mut protocols: Vec<String> = all.iter().map(|l| format!("{}:{}", l.name, l.protocol.as_str())).collect();
    if let Some(c) = controller {
        listeners.push(format!("{}://:{}", c.name, c.port));
        protocols.push(format!("{}:{}", c.name, c.protocol.as_str()));
    }
    let mut out: Vec<(String, String)> = Vec::new();
    out.push(("listeners".into(), listeners.join(",")));
    out.push(("listener.security.protocol.map".into(), protocols.join(",")));
    if let Some(domain) = domain {
        // Every broker listener under the pod's own DNS name; not the controller listener (a
        // KRaft broker does not advertise it).
        let host = format!("{}.{domain}", dir_ref(POD_DIR, crate::reconciler::wiring::POD_NAME_FILE));
        let advertised: Vec<String> = all.iter().map(|l| format!("{}://{host}:{}", l.name, l.port)).collect();
        out.push(("advertised.listeners".into(), advertised.join(",")));
    }
    out.push(("inter.broker.listener.name".into(), replication.name.into()));
    if let Some(c) = controller {
        out.push(("controller.listener.names".into(), c.name.clone()));
    }
    out.push(("config.providers".into(), "dir".into()));
    out.push((
        "config.providers.dir.class".into(),
        "org.apache.kafka.common.config.provider.DirectoryConfigProvider".into(),
    ));
    // The provider reads only what the operator mounts (Kafka 3.8+, KIP-993; older brokers
    // ignore it): no value, even one that slipped past validation, can read the pod's other files
    // (its ServiceAccount token) into a setting.
    out.push(("config.providers.dir.param.allowed.paths".into(), PROVIDER_PATHS.join(",")));
    // Only GSSAPI is on by default: switch it off globally, enable mechanisms per listener.
    out.push(("sasl.enabled.mechanisms".into(), String::new()));
    for l in &clients {
        listener_properties(&mut out, l, false);
        if let (ClientAuth::OAuthBearer, Some(iam)) = (l.auth, s.client_authentication.iam()) {
            token_validation(&mut out, l, iam);
        }
    }
    listener_properties(&mut out, &replication, true);
    if let Some(c) = controller.filter(|c| c.protocol == ControllerProtocol::Ssl) {
        // Controllers authenticate each other like brokers do: the internal certificate, both ways.
        let prefix = format!("listener.name.{}.", c.name.to_lowercase());
        keystore(&mut out, &prefix, INTERNAL_TLS_DIR);
        out.push((format!("{prefix}ssl.client.auth"), "required".into()));
        truststore(&mut out, &prefix, INTERNAL_TLS_DIR);
    }
    out
}

/// server.properties as text.
pub(crate) fn render_server_properties(s: &SecuritySettings, source: &str, domain: Option<&str>) -> String {
    let mut text =
        format!("# Generated by cluster-security-operator from ClusterSecurityPolicy {source}; do not edit.\n");
    for (k, v) in server_properties(s, domain) {
        let _ = writeln!(text, "{k}={v}");
    }
    text
}

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct SecurityJson<'a> {
    client_authentication: &'a crate::api::ClientAuthentication,
    encryption_in_transit: &'a crate::api::EncryptionInTransit,
    listeners: Vec<crate::api::Listener>,
    inter_broker: InterBroker,
}

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct InterBroker {
    listener: &'static str,
    port: u16,
    protocol: &'static str,
}

/// The broker-neutral form of the same settings.
pub(crate) fn render_security_json(s: &SecuritySettings) -> String {
    let r = replication_listener(s);
    // The clients given certificates are not the brokers' business: listing one rolls nothing.
    let mut auth = s.client_authentication.clone();
    if let Some(tls) = auth.tls.as_mut() {
        tls.clients.clear();
    }
    let doc = SecurityJson {
        client_authentication: &auth,
        encryption_in_transit: &s.encryption_in_transit,
        listeners: super::listeners::status_listeners(s),
        inter_broker: InterBroker { listener: r.name, port: r.port, protocol: r.protocol.as_str() },
    };
    serde_json::to_string_pretty(&doc).expect("plain data serializes") + "\n"
}

/// SHA-256 (hex) over everything the brokers read: a change rolls them, no change doesn't.
pub(crate) fn security_hash(parts: &[&[u8]]) -> String {
    let mut ctx = ring::digest::Context::new(&ring::digest::SHA256);
    for p in parts {
        ctx.update(&(p.len() as u64).to_be_bytes());
        ctx.update(p);
    }
    ctx.finish().as_ref().iter().map(|b| format!("{b:02x}")).collect()
}
