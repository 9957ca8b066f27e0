//! What the brokers run now, as far as their container's environment says it — the Apache Kafka
//! image's `KAFKA_*` settings (`KAFKA_LISTENERS` → `listeners`), Bitnami's `KAFKA_CFG_*` — and the
//! two changes the operator refuses rather than roll, because a rolling restart would break the
//! cluster half-way:
//!
//! - a KRaft **controller listener** the spec does not keep (the rendered `listeners` replaces
//!   the brokers'; a combined node without its controller listener does not start, and one with
//!   another one leaves the quorum);
//! - a first adoption that **moves the inter-broker listener** to the operator's `REPLICATION`:
//!   rolled brokers would fetch from `REPLICATION` on brokers that do not have it yet.
//!
//! Pure: decides from the environment and the target settings; nothing is read or written here.

use std::collections::BTreeMap;

use crate::api::{ControllerListener, SecuritySettings};
use crate::reconciler::conditions::reason;

use super::listeners::{parse_listeners, REPLICATION, REPLICATION_PORT};

/// A listener as the environment declares it; port and protocol when it says them.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) struct Declared {
    pub name: String,
    pub port: Option<u16>,
    pub protocol: Option<String>,
}

impl Declared {
    fn text(&self) -> String {
        let port = self.port.map(|p| p.to_string()).unwrap_or_else(|| "?".into());
        format!("{}://:{port} ({})", self.name, self.protocol.as_deref().unwrap_or("PLAINTEXT"))
    }
}

/// A setting from the image's environment: `KAFKA_<KEY>` or `KAFKA_CFG_<KEY>`.
fn setting<'e>(env: &'e BTreeMap<String, String>, key: &str) -> Option<&'e str> {
    env.get(&format!("KAFKA_{key}"))
        .or_else(|| env.get(&format!("KAFKA_CFG_{key}")))
        .map(String::as_str)
        .map(str::trim)
        .filter(|v| !v.is_empty())
}

fn declared(env: &BTreeMap<String, String>, name: &str) -> Declared {
    let port = setting(env, "LISTENERS").and_then(|ls| parse_listeners(ls).find(|(n, _)| *n == name).map(|(_, p)| p));
    let protocol = setting(env, "LISTENER_SECURITY_PROTOCOL_MAP").and_then(|m| {
        m.split(',').find_map(|p| p.trim().split_once(':').filter(|(n, _)| *n == name).map(|(_, v)| v.to_string()))
    });
    Declared { name: name.to_string(), port, protocol }
}

/// The controller listener the environment declares (`CONTROLLER_LISTENER_NAMES`, first name).
pub(super) fn controller_listener(env: &BTreeMap<String, String>) -> Option<Declared> {
    let name = setting(env, "CONTROLLER_LISTENER_NAMES")?.split(',').next()?.trim();
    (!name.is_empty()).then(|| declared(env, name))
}

/// The inter-broker listener the environment declares (`INTER_BROKER_LISTENER_NAME`, or the
/// listener named like `SECURITY_INTER_BROKER_PROTOCOL`).
pub(super) fn inter_broker_listener(env: &BTreeMap<String, String>) -> Option<Declared> {
    let name = setting(env, "INTER_BROKER_LISTENER_NAME").or_else(|| setting(env, "SECURITY_INTER_BROKER_PROTOCOL"))?;
    Some(declared(env, name))
}

fn matches(spec: &ControllerListener, d: &Declared) -> bool {
    spec.name == d.name
        && d.port.is_none_or(|p| p == spec.port)
        && d.protocol.as_deref().is_none_or(|p| p == spec.protocol.as_str())
}

/// Why the operation must not roll `target` into brokers whose container `container` of `wl`
/// has `env`, if it must not: (condition reason, message). `adopting`: no operation of this
/// policy has completed yet (the brokers run their own configuration).
pub(super) fn refusal(
    env: &BTreeMap<String, String>,
    target: &SecuritySettings,
    adopting: bool,
    wl: &str,
    container: &str,
) -> Option<(&'static str, String)> {
    if let Some(running) = controller_listener(env) {
        let keep = format!(
            "spec.controllerListener: {{name: {}, port: {}, protocol: {}}}",
            running.name,
            running.port.map(|p| p.to_string()).unwrap_or_else(|| "<its port>".into()),
            running.protocol.as_deref().unwrap_or("PLAINTEXT")
        );
        match &target.controller_listener {
            None => {
                return Some((reason::CONTROLLER_LISTENER_REQUIRED, format!(
                    "{wl} runs KRaft controllers on listener {} (container {container}: KAFKA_CONTROLLER_LISTENER_NAMES, KAFKA_LISTENERS); the configuration the operator renders replaces the brokers' listeners and would drop it, and a combined node without its controller listener does not start. Nothing was written or rolled. Set {keep}",
                    running.text()
                )))
            }
            Some(spec) if !matches(spec, &running) => {
                return Some((reason::CONTROLLER_LISTENER_REQUIRED, format!(
                    "spec.controllerListener {}://:{} ({}) is not the controller listener {wl} runs, {} (container {container}); a rolling restart cannot move a quorum to another listener. Nothing was written or rolled. Set {keep}",
                    spec.name, spec.port, spec.protocol.as_str(), running.text()
                )))
            }
            Some(_) => {}
        }
    }
    let inter_broker = inter_broker_listener(env).filter(|d| adopting && d.name != REPLICATION)?;
    Some((reason::INTER_BROKER_LISTENER_CHANGE, format!(
        "{wl} replicates over listener {} (container {container}: KAFKA_INTER_BROKER_LISTENER_NAME); the operator's configuration replicates over {REPLICATION} on port {REPLICATION_PORT}, and rolling that in at once would leave rolled brokers fetching from {REPLICATION} on brokers that do not have it yet. Nothing was written or rolled. Move the brokers in two rolls of your own first: (1) add {REPLICATION}://:{REPLICATION_PORT} to KAFKA_LISTENERS (and {REPLICATION}:<protocol> to KAFKA_LISTENER_SECURITY_PROTOCOL_MAP) and roll; (2) set KAFKA_INTER_BROKER_LISTENER_NAME={REPLICATION} and roll; then set a new value of the clustersecurity.io/retry annotation and this policy applies in one roll (docs/clustersecuritypolicy.md#adopting-a-running-cluster)",
        inter_broker.text()
    )))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::api::ClusterSecurityPolicySpec;

    fn env(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
        pairs.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect()
    }

    fn target(controller: Option<serde_json::Value>) -> SecuritySettings {
        let mut spec = serde_json::json!({"clusterRef": {"kind": "StatefulSet", "name": "k"},
            "clientAuthentication": {"tls": {"enabled": true}}});
        if let Some(c) = controller {
            spec["controllerListener"] = c;
        }
        super::super::desired_settings(&serde_json::from_value::<ClusterSecurityPolicySpec>(spec).unwrap())
    }

    const KRAFT: &[(&str, &str)] = &[
        ("KAFKA_PROCESS_ROLES", "broker,controller"),
        ("KAFKA_CONTROLLER_LISTENER_NAMES", "CONTROLLER"),
        ("KAFKA_LISTENERS", "PLAINTEXT://:9092,CONTROLLER://:9093"),
        ("KAFKA_LISTENER_SECURITY_PROTOCOL_MAP", "PLAINTEXT:PLAINTEXT,CONTROLLER:PLAINTEXT"),
    ];

    #[test]
    fn a_kraft_controller_listener_must_be_kept_as_it_runs() {
        let e = env(KRAFT);
        let (r, message) = refusal(&e, &target(None), false, "StatefulSet ns/k", "kafka").unwrap();
        assert_eq!(r, reason::CONTROLLER_LISTENER_REQUIRED);
        assert!(message.contains("CONTROLLER://:9093 (PLAINTEXT)"), "{message}");
        assert!(message.contains("spec.controllerListener: {name: CONTROLLER, port: 9093, protocol: PLAINTEXT}"));
        let other = target(Some(serde_json::json!({"name": "CONTROLLER", "port": 9193})));
        assert_eq!(refusal(&e, &other, false, "w", "c").map(|r| r.0), Some(reason::CONTROLLER_LISTENER_REQUIRED));
        let same = target(Some(serde_json::json!({"name": "CONTROLLER", "port": 9093})));
        assert_eq!(refusal(&e, &same, false, "w", "c"), None);
        // Bitnami's prefix says the same.
        let bitnami: BTreeMap<String, String> =
            e.iter().map(|(k, v)| (k.replace("KAFKA_", "KAFKA_CFG_"), v.clone())).collect();
        assert!(refusal(&bitnami, &target(None), false, "w", "c").is_some());
        // Not KRaft (or not declared): nothing to keep.
        assert_eq!(refusal(&env(&[("KAFKA_LISTENERS", "PLAINTEXT://:9092")]), &target(None), true, "w", "c"), None);
    }

    #[test]
    fn a_first_adoption_that_moves_the_inter_broker_listener_is_refused_with_the_two_rolls_to_do() {
        let e = env(&[("KAFKA_INTER_BROKER_LISTENER_NAME", "BROKER"), ("KAFKA_LISTENERS", "BROKER://:29092")]);
        let (r, message) = refusal(&e, &target(None), true, "StatefulSet ns/k", "kafka").unwrap();
        assert_eq!(r, reason::INTER_BROKER_LISTENER_CHANGE);
        assert!(
            message.contains("BROKER://:29092") && message.contains("KAFKA_INTER_BROKER_LISTENER_NAME=REPLICATION")
        );
        // Already moved, or not a first adoption (the operator's configuration runs): fine.
        assert_eq!(
            refusal(&env(&[("KAFKA_INTER_BROKER_LISTENER_NAME", "REPLICATION")]), &target(None), true, "w", "c"),
            None
        );
        assert_eq!(refusal(&e, &target(None), false, "w", "c"), None);
        let by_protocol = env(&[("KAFKA_SECURITY_INTER_BROKER_PROTOCOL", "PLAINTEXT")]);
        assert!(refusal(&by_protocol, &target(None), true, "w", "c").is_some());
    }
}
