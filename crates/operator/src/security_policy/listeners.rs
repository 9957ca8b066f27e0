//! Which listeners a set of security settings opens (the MSK port convention).
//!
//! One documented choice beyond the seed: when mTLS and unauthenticated access are both enabled
//! with TLS encryption, a TLS listener can't both require and not require client certificates
//! (Kafka's `ssl.client.auth=requested` is discouraged: "a false sense of security"), so the
//! unauthenticated TLS clients get their own listener, `TLS_UNAUTHENTICATED` on port 9095.

use crate::api::{ClientBroker, Listener, SecuritySettings};

/// Kafka security protocol of a listener.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Protocol {
    Plaintext,
    Ssl,
    SaslSsl,
}

impl Protocol {
    pub(crate) fn as_str(self) -> &'static str {
        match self {
            Self::Plaintext => "PLAINTEXT",
            Self::Ssl => "SSL",
            Self::SaslSsl => "SASL_SSL",
        }
    }
}

/// How clients authenticate on a listener.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum ClientAuth {
    None,
    MutualTls,
    Scram,
    OAuthBearer,
}

impl ClientAuth {
    pub(crate) fn as_str(self) -> &'static str {
        match self {
            Self::None => "none",
            Self::MutualTls => "mTLS",
            Self::Scram => "SCRAM-SHA-512",
            Self::OAuthBearer => "OAUTHBEARER",
        }
    }
}

/// One listener of the broker.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct ListenerDef {
    pub name: &'static str,
    pub port: u16,
    pub protocol: Protocol,
    pub auth: ClientAuth,
}

pub(crate) const PLAINTEXT_PORT: u16 = 9092;
pub(crate) const TLS_PORT: u16 = 9094;
pub(crate) const TLS_UNAUTHENTICATED_PORT: u16 = 9095;
pub(crate) const SASL_SCRAM_PORT: u16 = 9096;
pub(crate) const SASL_IAM_PORT: u16 = 9098;
/// Broker-to-broker listener.
pub(crate) const REPLICATION_PORT: u16 = 9091;
pub(crate) const REPLICATION: &str = "REPLICATION";

/// Client listeners, in port order.
pub(crate) fn client_listeners(s: &SecuritySettings) -> Vec<ListenerDef> {
    let auth = &s.client_authentication;
    let cb = s.encryption_in_transit.client_broker;
    let plaintext_allowed = matches!(cb, ClientBroker::Plaintext | ClientBroker::TlsPlaintext);
    let tls_allowed = matches!(cb, ClientBroker::Tls | ClientBroker::TlsPlaintext);
    let mut out = Vec::new();
    // The seed: with TLS_PLAINTEXT and mTLS, clients also get an unauthenticated plaintext listener.
    if plaintext_allowed && (auth.unauthenticated_enabled() || auth.tls_enabled()) {
        out.push(ListenerDef {
            name: "PLAINTEXT",
            port: PLAINTEXT_PORT,
            protocol: Protocol::Plaintext,
            auth: ClientAuth::None,
        });
    }
    if tls_allowed && auth.tls_enabled() {
        out.push(ListenerDef { name: "TLS", port: TLS_PORT, protocol: Protocol::Ssl, auth: ClientAuth::MutualTls });
        if auth.unauthenticated_enabled() {
            out.push(ListenerDef {
                name: "TLS_UNAUTHENTICATED",
                port: TLS_UNAUTHENTICATED_PORT,
                protocol: Protocol::Ssl,
                auth: ClientAuth::None,
            });
        }
    } else if tls_allowed && auth.unauthenticated_enabled() {
        out.push(ListenerDef { name: "TLS", port: TLS_PORT, protocol: Protocol::Ssl, auth: ClientAuth::None });
    }
    if auth.scram_enabled() {
        out.push(ListenerDef {
            name: "SASL_SCRAM",
            port: SASL_SCRAM_PORT,
            protocol: Protocol::SaslSsl,
            auth: ClientAuth::Scram,
        });
    }
    if auth.iam_enabled() {
        out.push(ListenerDef {
            name: "SASL_IAM",
            port: SASL_IAM_PORT,
            protocol: Protocol::SaslSsl,
            auth: ClientAuth::OAuthBearer,
        });
    }
    out
}

/// The broker-to-broker listener: TLS with mutual authentication when in-cluster encryption is on.
pub(crate) fn replication_listener(s: &SecuritySettings) -> ListenerDef {
    if s.encryption_in_transit.in_cluster {
        ListenerDef { name: REPLICATION, port: REPLICATION_PORT, protocol: Protocol::Ssl, auth: ClientAuth::MutualTls }
    } else {
        ListenerDef { name: REPLICATION, port: REPLICATION_PORT, protocol: Protocol::Plaintext, auth: ClientAuth::None }
    }
}

/// Every entry of a Kafka `listeners` value (`NAME://host:port,…`) that parses: name and port.
pub(crate) fn parse_listeners(value: &str) -> impl Iterator<Item = (&str, u16)> {
    value.split(',').filter_map(|entry| {
        let (name, address) = entry.trim().split_once("://")?;
        Some((name, address.rsplit(':').next()?.parse().ok()?))
    })
}

/// Listeners as `status.listeners` shows them.
pub(crate) fn status_listeners(s: &SecuritySettings) -> Vec<Listener> {
    client_listeners(s)
        .into_iter()
        .map(|l| Listener {
            name: l.name.into(),
            port: l.port,
            protocol: l.protocol.as_str().into(),
            authentication: l.auth.as_str().into(),
        })
        .collect()
}
