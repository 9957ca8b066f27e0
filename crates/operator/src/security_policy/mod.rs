//! ClusterSecurityPolicy: client authentication and encryption in transit of a broker cluster,
//! rolled into the brokers as an MSK-style UPDATE_SECURITY operation by the kit's rolling
//! driver. This module decides; [`listeners`] and [`properties`] render (pure).
//!
//! What this module may touch: the `<cluster>-security` ConfigMap and the `<cluster>-client-ca`
//! Secret in the policy's namespace, and read the CA Secrets the spec names.

#[cfg(test)]
mod api_tests;
mod clients;
mod existing;
pub(crate) mod listeners;
pub(crate) mod properties;
#[cfg(test)]
mod rendering_tests;
pub(crate) mod served;

use std::collections::BTreeMap;
use std::time::Duration;

use k8s_openapi::api::core::v1::{ConfigMap, Secret};
use kube::runtime::controller::Controller;
use kube::{Api, Client, Resource, ResourceExt};
use serde_json::{json, Value};

use crate::api::{
    ClusterSecurityPolicy, ClusterSecurityPolicySpec, ClusterSecurityPolicyStatus, ClusterState, Operation,
    OperationType, SecuritySettings,
};
use crate::reconciler::conditions::reason;
use crate::reconciler::derived::{self, Derived};
use crate::reconciler::events::reason as event;
use crate::reconciler::operation;
use crate::reconciler::rolling::{self, Idle, PrepareError, Rolling, SourceChange};
use crate::reconciler::round::{Artefact, ArtefactKind};
use crate::reconciler::verify::Expectation;
use crate::reconciler::watch::{self, TargetsWorkload};
use crate::reconciler::wiring::{Mount, Source, Wiring};
use crate::reconciler::workload::{self, Workload};
use crate::reconciler::Noted as _;
use crate::reconciler::{Context, Error, Health, Named, Outcome, Reconcile, Round};
use crate::validate::Violations;
use crate::{pki, validate};
use kube::runtime::events::EventType;

/// Name of the ConfigMap holding `server.properties` and `security.json`.
pub(crate) fn configmap_name(cluster: &str) -> String {
    format!("{cluster}-security")
}

/// Name of the Secret the brokers mount with the client CA bundle (`ca.crt` only).
pub(crate) fn client_ca_secret_name(cluster: &str) -> String {
    format!("{cluster}-client-ca")
}

/// Name of the Secret keeping the client CA the operator generates (`ca.crt`, `ca.key`): apart
/// from the bundle, so no broker ever mounts the key that signs client certificates.
pub(crate) fn client_ca_key_secret_name(cluster: &str) -> String {
    format!("{cluster}-client-ca-key")
}

/// Pod-template annotation whose change rolls the brokers.
pub(crate) const SECURITY_HASH_ANNOTATION: &str = "clustersecurity.io/security-hash";

/// Validity of the client CA the operator keeps when the spec names none.
const CLIENT_CA_DAYS: u32 = 3650;

/// The settings a spec asks for.
pub(crate) fn desired_settings(spec: &ClusterSecurityPolicySpec) -> SecuritySettings {
    SecuritySettings {
        client_authentication: spec.client_authentication.clone(),
        encryption_in_transit: spec.encryption_in_transit.clone(),
        controller_listener: spec.controller_listener.clone(),
    }
}

/// The in-cluster setting can't change after the first operation applied it (webhook-less path).
/// `inCluster` is fixed at creation: compared with what was applied, else with the first
/// operation ever recorded (also while it waits in PENDING: without the webhook, a change then
/// would otherwise slip through), else with the value first seen (before any operation: one
/// held back by a conflict, say).
fn in_cluster_violation(csp: &ClusterSecurityPolicy, status: &ClusterSecurityPolicyStatus) -> Option<Violations> {
    let first_recorded = || {
        let oldest = status.operations.last().or(status.current_operation.as_ref());
        oldest.and_then(|o| o.target_info.as_ref())
    };
    let applied = status
        .applied
        .as_ref()
        .or_else(first_recorded)
        .map(|s| s.encryption_in_transit.in_cluster)
        .or(status.first_seen_in_cluster)?;
    (applied != csp.spec.encryption_in_transit.in_cluster).then(|| {
        Violations::one(
            validate::rule::IN_CLUSTER_IMMUTABLE,
            "spec.encryptionInTransit.inCluster",
            format!(
                "you can't change the in-cluster (broker-to-broker) encryption setting after creation (it is {applied}); put back inCluster: {applied}"
            ),
        )
    })
}

impl Reconcile for ClusterSecurityPolicy {
    /// Under deletionPolicy Delete only: what goes with it must not be mounted any more.
    const FINALIZER: Option<&'static str> = Some(rolling::MOUNTED_OBJECTS_FINALIZER);

    fn wants_finalizer(&self) -> bool {
        self.spec.deletion_policy == crate::api::DeletionPolicy::Delete
    }

    fn may_go(&self, _: &ClusterSecurityPolicyStatus, outcome: &Outcome) -> bool {
        rolling::may_go(outcome)
    }

    type Deps = ();

    fn api(client: Client, obj: &Self) -> Api<Self> {
        Api::namespaced(client, &obj.namespace().unwrap_or_default())
    }

    fn validate(&self, status: &ClusterSecurityPolicyStatus, _: &()) -> Result<(), Violations> {
        validate::security_policy(&self.spec, None)?;
        rolling::cluster_ref_violation(self, status).map_or(Ok(()), Err)?;
        in_cluster_violation(self, status).map_or(Ok(()), Err)
    }

    async fn advance(&self, round: &mut Round<Self>, ctx: &Context, _: &()) -> Result<Outcome, Error> {
        round.status.first_seen_in_cluster.get_or_insert(self.spec.encryption_in_transit.in_cluster);
        rolling::advance(self, round, ctx).await
    }

    /// Its workloads (rollout progress), what it wrote (drift), and the CA Secrets it names.
    fn watches(controller: Controller<Self>, ctx: &Context) -> Controller<Self> {
        let ca_refs = |p: &Self| {
            let refs = p.spec.client_authentication.tls.iter().flat_map(|t| t.certificate_authority_secret_refs.iter());
            refs.map(|r| r.name.clone()).collect()
        };
        let controller = derived::watch(watch::workloads(controller, ctx), ctx);
        watch::referenced_secrets(controller, ctx, ca_refs)
    }
}

impl TargetsWorkload for ClusterSecurityPolicy {
    fn cluster_ref(&self) -> &crate::api::ClusterRef {
        &self.spec.cluster_ref
    }
}

impl Rolling for ClusterSecurityPolicy {
    const OPERATION: OperationType = OperationType::UpdateSecurity;
    const WHAT: &'static str = "security settings";

    fn recorded_cluster_ref(status: &ClusterSecurityPolicyStatus) -> Option<&crate::api::ClusterRef> {
        status.cluster_ref.as_ref()
    }

    fn record_cluster_ref(status: &mut ClusterSecurityPolicyStatus, target: &crate::api::ClusterRef) {
        status.cluster_ref = Some(target.clone());
    }

    fn desired(&self) -> SecuritySettings {
        desired_settings(&self.spec)
    }

    fn rollout_timeout_seconds(&self) -> u32 {
        self.spec.rollout_timeout_seconds
    }

    fn deletion_policy(&self) -> crate::api::DeletionPolicy {
        self.spec.deletion_policy
    }

    fn observe(&self, status: &mut ClusterSecurityPolicyStatus, workload: Option<&Workload>) {
        let methods: Vec<&str> = self.spec.client_authentication.enabled_methods().iter().map(|m| m.label()).collect();
        status.authentication = Some(methods.join(","));
        status.cluster_state = Some(workload::cluster_state(workload));
    }

    async fn idle(
        &self,
        round: &mut Round<Self>,
        ctx: &Context,
        workload: Option<&Workload>,
    ) -> Result<Idle<SecuritySettings>, Error> {
        let desired = self.desired();
        if round.status.applied.as_ref() != Some(&desired) {
            return Ok(Idle::Start { source: round.status.applied.clone() });
        }
        // A changed CA bundle rolls with rollOnSourceChange, or when a new retry value asks.
        let retry = operation::retry_request(self.meta());
        let asked =
            retry.is_some() && retry != round.status.operations.first().and_then(|o| o.retry_request.as_deref());
        let mut change = ca_source_change(ctx, self).await?;
        if let Some(c) = change.as_mut().filter(|_| asked) {
            c.rolls = true;
        }
        rolling::report_source_change(round, change.as_ref());
        if change.is_some_and(|c| c.rolls) {
            return Ok(Idle::Start { source: round.status.applied.clone() });
        }
        // A client certificate deleted, or due for renewal: an operation issues it (nothing rolls).
        let clients_listed = !clients::listed(self).is_empty();
        let secrets: Api<Secret> = Api::namespaced(ctx.client.clone(), &self.namespace().unwrap_or_default());
        if clients_listed && clients::any_due(&secrets, self, round.now).await? {
            return Ok(Idle::Start { source: round.status.applied.clone() });
        }
        round.status.listeners = listeners::status_listeners(&desired);
        let wl = rolling::workload_text(round);
        let state = workload::cluster_state(workload);
        let health = if state == ClusterState::Active {
            Health::Ready { reason: reason::APPLIED, message: rolling::in_effect::<Self>(&wl) }
        } else {
            Health::NotReady {
                reason: reason::CLUSTER_NOT_ACTIVE,
                message: format!("Security settings applied, but {wl} is {}.", workload::state_text(state)),
            }
        };
        // Client certificates are looked at daily for renewal (a deleted one comes back sooner:
        // its Secret is watched).
        let recheck = clients_listed.then_some(Duration::from_secs(86_400));
        Ok(Idle::Settled(Outcome::new(health, recheck)))
    }

    async fn referenced_secrets_present(&self, ctx: &Context) -> Result<bool, Error> {
        let ns = self.namespace().unwrap_or_default();
        let api: Api<Secret> = Api::namespaced(ctx.client.clone(), &ns);
        let refs = self.spec.client_authentication.tls.iter().flat_map(|t| t.certificate_authority_secret_refs.iter());
        for r in refs {
            let found = api.get_metadata_opt(&r.name).await.reading(&Named::new("Secret", &ns, &r.name))?;
            if found.is_none() {
                return Ok(false);
            }
        }
        Ok(true)
    }

    async fn prepare(
        &self,
        round: &mut Round<Self>,
        ctx: &Context,
        op: &Operation<SecuritySettings>,
        workload: Option<&Workload>,
    ) -> Result<BTreeMap<String, String>, PrepareError> {
        let target = op.target_info.as_ref().expect("operations carry a target");
        // What would break the brokers half-way through the roll is refused before anything is written.
        if let Some(w) = workload {
            let container = w.mounts.target(&self.wiring(target)).unwrap_or_default();
            let env = w.mounts.env.get(&container).cloned().unwrap_or_default();
            let adopting = round.status.applied.is_none();
            let wl = rolling::workload_text(round);
            if let Some((code, message)) = existing::refusal(&env, target, adopting, &wl, &container) {
                return Err(PrepareError::refused(code, message));
            }
            // The brokers' certificates carry the service's name (the webhook knows only the
            // cluster's): a client of that name would carry their principal.
            let service = w.service_name.as_deref().unwrap_or_default();
            if let Some(c) = clients::listed(self).iter().find(|c| validate::names_broker(&c.name, service)) {
                let message = format!(
                    "spec.clientAuthentication.tls.clients: {} (rule {})",
                    validate::client_is_broker(&c.name),
                    validate::rule::CLIENT_NOT_BROKER
                );
                return Err(PrepareError::refused(reason::INVALID_SPEC, message));
            }
        }
        let domain = advertised_domain(self, workload);
        let referenced = dereference(ctx, self, target).await?;
        let Artefacts { writes, hash, issued } = plan(self, target, domain.as_deref(), referenced, round.now)?;
        round.write(writes).await?;
        if !issued.is_empty() {
            let note = format!(
                "Issued client certificates for {} from the client CA (spec.clientAuthentication.tls.clients).",
                issued.join(", ")
            );
            round.event(EventType::Normal, event::CLIENT_CERTIFICATES_ISSUED, note);
        }
        round.status.security_hash = Some(hash.clone());
        Ok(BTreeMap::from([(SECURITY_HASH_ANNOTATION.to_string(), hash)]))
    }

    /// The security ConfigMap, deleted or edited by someone, is written again as applied (same
    /// content: no roll). A ConfigMap of that name that is no longer ours is left alone.
    async fn repair_artefacts(
        &self,
        round: &mut Round<Self>,
        ctx: &Context,
        workload: Option<&Workload>,
    ) -> Result<Vec<String>, Error> {
        let Some(applied) = round.status.applied.clone() else { return Ok(Vec::new()) };
        let ns = self.namespace().unwrap_or_default();
        let (name, data) = security_configmap(self, &applied, advertised_domain(self, workload).as_deref());
        let current = Api::<ConfigMap>::namespaced(ctx.client.clone(), &ns)
            .get_opt(&name)
            .await
            .reading(&Named::new("ConfigMap", &ns, &name))?;
        match current {
            Some(cm)
                if cm.data.as_ref() == Some(&data) || !derived::may_write(&cm.metadata, &derived::Owner::of(self)) =>
            {
                Ok(Vec::new())
            }
            _ => {
                round.write(vec![configmap_artefact(self, &name, &data)]).await?;
                Ok(vec![format!("ConfigMap {ns}/{name}")])
            }
        }
    }

    /// The security ConfigMap, and the client CA Secret when mTLS is on.
    fn wiring(&self, target: &SecuritySettings) -> Wiring {
        let cluster = &self.spec.cluster_ref.name;
        let mut mounts = vec![
            Mount {
                volume: "csop-security-config",
                source: Source::ConfigMap(configmap_name(cluster)),
                path: properties::CONFIG_DIR,
            },
            // The pod's name, for advertised.listeners (`${dir:…/pod:name}`).
            Mount { volume: "csop-pod", source: Source::PodName, path: properties::POD_DIR },
        ];
        if target.client_authentication.tls_enabled() {
            mounts.push(Mount {
                volume: "csop-client-ca",
                source: Source::Secret(client_ca_secret_name(cluster)),
                path: properties::CLIENT_CA_DIR,
            });
        }
        Wiring::new(self.spec.mounts.as_ref(), mounts, &["csop-security-config", "csop-pod", "csop-client-ca"])
    }

    fn derived_objects(&self) -> Vec<Derived> {
        let cluster = &self.spec.cluster_ref.name;
        let mut out = vec![Derived::ConfigMap(configmap_name(cluster))];
        if self.spec.client_authentication.tls.as_ref().is_some_and(|t| t.enabled) {
            out.push(Derived::Secret(client_ca_secret_name(cluster)));
            if self
                .spec
                .client_authentication
                .tls
                .as_ref()
                .is_some_and(|t| t.certificate_authority_secret_refs.is_empty())
            {
                out.push(Derived::Secret(client_ca_key_secret_name(cluster)));
            }
        }
        out.extend(clients::listed(self).iter().map(|c| Derived::Secret(c.secret_name.clone())));
        out
    }

    fn expected(status: &ClusterSecurityPolicyStatus) -> BTreeMap<String, String> {
        BTreeMap::from([(SECURITY_HASH_ANNOTATION.to_string(), status.security_hash.clone().unwrap_or_default())])
    }

    async fn wire_expectation(&self, ctx: &Context) -> Result<Option<Expectation>, Error> {
        let ns = self.namespace().unwrap_or_default();
        served::when_verified(ctx, &ns, &self.spec.cluster_ref.name, self.spec.verify.as_ref()).await
    }

    fn completed(&self, status: &mut ClusterSecurityPolicyStatus, target: &SecuritySettings) {
        status.listeners = listeners::status_listeners(target);
        status.applied = Some(target.clone());
    }
}

/// What the artefacts of an operation are made from, read once per round.
struct Referenced {
    /// Where the client CA bundle comes from (mTLS on).
    client_ca: Option<ClientCaSource>,
    /// The listed clients' Secrets as they are now ([`clients::current`]).
    clients: Vec<Option<Secret>>,
}

/// What a round writes for an operation's target: the artefacts in order (client CA, client
/// certificates, the security ConfigMap), the hash that rolls the pods, the clients issued.
#[derive(Debug)]
struct Artefacts {
    writes: Vec<Artefact>,
    hash: String,
    issued: Vec<String>,
}

/// Read what the artefacts of `target` are made from.
async fn dereference(
    ctx: &Context,
    csp: &ClusterSecurityPolicy,
    target: &SecuritySettings,
) -> Result<Referenced, Error> {
    let ns = csp.namespace().unwrap_or_default();
    let secrets: Api<Secret> = Api::namespaced(ctx.client.clone(), &ns);
    let client_ca = match target.client_authentication.tls.as_ref().filter(|t| t.enabled) {
        Some(tls) => Some(read_client_ca(&secrets, csp, tls).await?),
        None => None,
    };
    // Clients are issued only from a CA the operator keeps.
    let clients = match client_ca {
        Some(ClientCaSource::Kept { .. }) => clients::current(&secrets, csp).await?,
        _ => Vec::new(),
    };
    Ok(Referenced { client_ca, clients })
}

/// What the brokers read before the roll, for `target` (`domain`: [`advertised_domain`]): the
/// client CA bundle (mTLS), the client certificates due, and the security ConfigMap.
fn plan(
    csp: &ClusterSecurityPolicy,
    target: &SecuritySettings,
    domain: Option<&str>,
    referenced: Referenced,
    now: k8s_openapi::jiff::Timestamp,
) -> Result<Artefacts, PrepareError> {
    let mut writes = Vec::new();
    // Client CA bundle for mTLS: the Secrets named in the spec, or a CA the operator keeps.
    let (ca_bundle, own_ca) = match referenced.client_ca {
        Some(source) => plan_client_ca(csp, source, now, &mut writes)?,
        None => (String::new(), None),
    };
    // Client certificates on request, from the CA the operator keeps.
    let issued = match &own_ca {
        Some(ca) => {
            let (secrets, issued) = clients::issue(csp, &referenced.clients, ca, now)?;
            writes.extend(secrets);
            issued
        }
        None => Vec::new(),
    };
    let (cm_name, data) = security_configmap(csp, target, domain);
    let (server_properties, security_json) = (&data["server.properties"], &data["security.json"]);
    let hash =
        properties::security_hash(&[server_properties.as_bytes(), security_json.as_bytes(), ca_bundle.as_bytes()]);
    writes.push(configmap_artefact(csp, &cm_name, &data));
    Ok(Artefacts { writes, hash, issued })
}

/// The pods' DNS domain when each broker can advertise its own name: a StatefulSet's pods are
/// `<pod>.<serviceName>.<namespace>.svc`, and (`spec.mounts`) read their name from the pod-name
/// file. None for a Deployment (no stable pod names) or when the user wires the mounts.
fn advertised_domain(csp: &ClusterSecurityPolicy, workload: Option<&Workload>) -> Option<String> {
    // It goes into server.properties: a DNS label, nothing a properties file or Kafka's config
    // providers would read as syntax.
    let is_label = |s: &str| {
        !s.is_empty() && s.len() <= 63 && s.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
    };
    let service = workload?.service_name.as_deref().filter(|s| is_label(s))?;
    let wired = crate::api::Mounts::enabled(csp.spec.mounts.as_ref());
    wired.then(|| format!("{service}.{}.svc", csp.namespace().unwrap_or_default()))
}

/// The name and data of the security ConfigMap for `target` (`domain`: [`advertised_domain`]).
fn security_configmap(
    csp: &ClusterSecurityPolicy,
    target: &SecuritySettings,
    domain: Option<&str>,
) -> (String, BTreeMap<String, String>) {
    let source = format!("{}/{}", csp.namespace().unwrap_or_default(), csp.name_any());
    let data = BTreeMap::from([
        ("server.properties".to_string(), properties::render_server_properties(target, &source, domain)),
        ("security.json".to_string(), properties::render_security_json(target)),
    ]);
    (configmap_name(&csp.spec.cluster_ref.name), data)
}

/// The security ConfigMap `name` with `data`, as a derived object of `csp`.
fn configmap_artefact(csp: &ClusterSecurityPolicy, name: &str, data: &BTreeMap<String, String>) -> Artefact {
    Artefact::configmap(json!({
        "apiVersion": "v1", "kind": "ConfigMap",
        "metadata": derived::metadata(csp, name, csp.spec.deletion_policy, json!({})),
        "data": data,
    }))
}

/// What the Secrets in `certificateAuthoritySecretRefs` make now.
enum ReferencedCa {
    /// Their certificates, one PEM bundle.
    Bundle(String),
    /// The Secret of this name is missing or holds no PEM certificate under `ca.crt`.
    Missing(String),
}

/// The CA bundle the Secrets in `certificateAuthoritySecretRefs` make now.
async fn referenced_ca_bundle(
    secrets: &Api<Secret>,
    ns: &str,
    refs: &[crate::api::SecretRef],
) -> Result<ReferencedCa, Error> {
    let mut bundle = String::new();
    for r in refs {
        let s = secrets.get_opt(&r.name).await.reading(&Named::new("Secret", ns, &r.name))?;
        let crt =
            s.and_then(|s| s.data).and_then(|d| d.get("ca.crt").and_then(|v| String::from_utf8(v.0.clone()).ok()));
        // Only the certificates go on: this bundle is mounted by the brokers, and whatever else
        // the user's Secret holds next to them (a CA key) is not theirs to see.
        match crt.map(|c| pki::certificates_only(&c).0) {
            Some(c) if !c.is_empty() => bundle.push_str(&c),
            _ => return Ok(ReferencedCa::Missing(r.name.clone())),
        }
    }
    Ok(ReferencedCa::Bundle(bundle))
}

/// The CA Secrets the spec names hold another bundle than the brokers trust (the
/// `<cluster>-client-ca` Secret the last operation wrote).
async fn ca_source_change(ctx: &Context, csp: &ClusterSecurityPolicy) -> Result<Option<SourceChange>, Error> {
    let Some(tls) = csp.spec.client_authentication.tls.as_ref().filter(|t| t.enabled) else { return Ok(None) };
    if tls.certificate_authority_secret_refs.is_empty() {
        return Ok(None);
    }
    let ns = csp.namespace().unwrap_or_default();
    let secrets: Api<Secret> = Api::namespaced(ctx.client.clone(), &ns);
    let ReferencedCa::Bundle(now) = referenced_ca_bundle(&secrets, &ns, &tls.certificate_authority_secret_refs).await?
    else {
        return Ok(None); // a missing CA Secret: the next operation reports it
    };
    let name = client_ca_secret_name(&csp.spec.cluster_ref.name);
    let trusted = secrets
        .get_opt(&name)
        .await
        .reading(&Named::new("Secret", &ns, &name))?
        .and_then(|s| s.data)
        .and_then(|d| d.get("ca.crt").and_then(|v| String::from_utf8(v.0.clone()).ok()));
    if trusted.as_deref() == Some(now.as_str()) || trusted.is_none() {
        return Ok(None);
    }
    let names: Vec<&str> = tls.certificate_authority_secret_refs.iter().map(|r| r.name.as_str()).collect();
    let rolls = csp.spec.roll_on_source_change;
    let what = if rolls {
        "It is rolled out now (rollOnSourceChange)."
    } else {
        "Set a new clustersecurity.io/retry value or rollOnSourceChange: true to roll it out."
    };
    let message = format!(
        "The CA Secrets {} hold another bundle than the brokers trust (Secret {ns}/{name}). {what}",
        names.join(", ")
    );
    Ok(Some(SourceChange { message, rolls }))
}

/// Where the client CA bundle comes from.
enum ClientCaSource {
    /// The operator keeps the CA: its pair from `<cluster>-client-ca-key` or, left by earlier
    /// versions, from inside the mounted bundle Secret (`legacy_key`: that Secret still holds
    /// the key).
    Kept { pair: Option<(String, String)>, legacy_key: bool },
    /// The Secrets the spec names.
    Referenced(ReferencedCa),
}

/// Read where the client CA bundle comes from.
async fn read_client_ca(
    secrets: &Api<Secret>,
    csp: &ClusterSecurityPolicy,
    tls: &crate::api::TlsAuthentication,
) -> Result<ClientCaSource, Error> {
    let ns = csp.namespace().unwrap_or_default();
    if !tls.certificate_authority_secret_refs.is_empty() {
        let referenced = referenced_ca_bundle(secrets, &ns, &tls.certificate_authority_secret_refs).await?;
        return Ok(ClientCaSource::Referenced(referenced));
    }
    let cluster = &csp.spec.cluster_ref.name;
    let ns = &ns;
    let read = |name: String| async move { secrets.get_opt(&name).await.reading(&Named::new("Secret", ns, &name)) };
    let pair = |s: Option<Secret>| {
        s.and_then(|s| s.data).and_then(|d| {
            let get = |k: &str| d.get(k).and_then(|v| String::from_utf8(v.0.clone()).ok());
            Some((get("ca.crt")?, get("ca.key")?))
        })
    };
    let bundle_secret = read(client_ca_secret_name(cluster)).await?;
    let legacy_key = bundle_secret.as_ref().and_then(|s| s.data.as_ref()).is_some_and(|d| d.contains_key("ca.key"));
    // Earlier versions kept the key inside the mounted bundle Secret: it moves out, once.
    let pair = pair(read(client_ca_key_secret_name(cluster)).await?).or_else(|| pair(bundle_secret));
    Ok(ClientCaSource::Kept { pair, legacy_key })
}

/// The client CA bundle for mTLS from `source`, and the CA the operator keeps (if it does); the
/// writes pushed on `writes`: the kept CA in `<cluster>-client-ca-key` (a new one when none is
/// kept), the legacy key dropped from the bundle Secret, the bundle in `<cluster>-client-ca`
/// (what the brokers mount). Refused when a Secret the spec names is missing.
fn plan_client_ca(
    csp: &ClusterSecurityPolicy,
    source: ClientCaSource,
    now: k8s_openapi::jiff::Timestamp,
    writes: &mut Vec<Artefact>,
) -> Result<(String, Option<pki::KeyedCert>), PrepareError> {
    let ns = csp.namespace().unwrap_or_default();
    let cluster = &csp.spec.cluster_ref.name;
    let ca_name = client_ca_secret_name(cluster);
    let secret = |name: &str, data: Value| {
        Artefact::secret(json!({
            "apiVersion": "v1", "kind": "Secret",
            "metadata": derived::metadata(csp, name, csp.spec.deletion_policy, json!({})),
            "type": "Opaque",
            "stringData": data,
        }))
    };
    let (ca_bundle, own_ca) = match source {
        ClientCaSource::Kept { pair, legacy_key } => {
            let (crt, key) = match pair {
                Some(p) => p,
                None => {
                    let ca = pki::new_ca(&format!("{cluster} client CA"), now, CLIENT_CA_DAYS)
                        .map_err(|source| Error::Issue { what: format!("client CA of {cluster}"), source })?;
                    (ca.cert_pem, ca.key_pem)
                }
            };
            writes.push(secret(&client_ca_key_secret_name(cluster), json!({"ca.crt": crt, "ca.key": key})));
            if legacy_key {
                writes.push(Artefact::Patch(ArtefactKind::Secret, ca_name.clone(), json!({"data": {"ca.key": null}})));
            }
            (crt.clone(), Some(pki::KeyedCert { cert_pem: crt, key_pem: key }))
        }
        ClientCaSource::Referenced(ReferencedCa::Bundle(bundle)) => (bundle, None),
        ClientCaSource::Referenced(ReferencedCa::Missing(name)) => {
            return Err(PrepareError::refused(
                reason::SECRET_NOT_FOUND,
                format!(
                    "Secret {ns}/{name} with a PEM certificate under key ca.crt is required by spec.clientAuthentication.tls.certificateAuthoritySecretRefs; create it (kubectl create secret generic {name} -n {ns} --from-file=ca.crt=ca.pem) and the operator retries"
                ),
            ))
        }
    };
    writes.push(secret(&ca_name, json!({"ca.crt": ca_bundle})));
    Ok((ca_bundle, own_ca))
}

#[cfg(test)]
mod in_cluster_tests {
    use super::*;
    use crate::reconciler::operation;

    fn csp(in_cluster: bool) -> ClusterSecurityPolicy {
        serde_json::from_value(serde_json::json!({
            "apiVersion": "clustersecurity.io/v1alpha1", "kind": "ClusterSecurityPolicy",
            "metadata": {"name": "p", "namespace": "n"},
            "spec": {"clusterRef": {"kind": "StatefulSet", "name": "kafka"},
                     "clientAuthentication": {"sasl": {"scram": {"enabled": true}}},
                     "encryptionInTransit": {"clientBroker": "TLS", "inCluster": in_cluster}}
        }))
        .unwrap()
    }

    #[test]
    fn in_cluster_is_fixed_by_the_first_recorded_operation_even_while_it_is_pending() {
        let first = csp(true);
        let mut status = ClusterSecurityPolicyStatus::default();
        assert!(in_cluster_violation(&csp(false), &status).is_none(), "nothing recorded yet");
        let op = operation::new(
            "id".into(),
            OperationType::UpdateSecurity,
            Some(1),
            None,
            first.desired(),
            k8s_openapi::jiff::Timestamp::UNIX_EPOCH,
        );
        status.current_operation = Some(op);
        let refused = in_cluster_violation(&csp(false), &status).expect("PENDING first operation fixes inCluster");
        let refused = refused.to_string();
        assert!(refused.contains("InClusterEncryptionImmutable"), "{refused}");
        assert!(in_cluster_violation(&first, &status).is_none());
    }

    fn mtls(refs: &[&str]) -> ClusterSecurityPolicy {
        let refs: Vec<_> = refs.iter().map(|r| json!({"name": r})).collect();
        serde_json::from_value(json!({
            "apiVersion": "clustersecurity.io/v1alpha1", "kind": "ClusterSecurityPolicy",
            "metadata": {"name": "p", "namespace": "n", "uid": "u"},
            "spec": {"clusterRef": {"kind": "StatefulSet", "name": "kafka"},
                     "clientAuthentication": {"tls": {"enabled": true, "certificateAuthoritySecretRefs": refs}},
                     "encryptionInTransit": {"clientBroker": "TLS", "inCluster": true}}
        }))
        .unwrap()
    }

    fn written(artefacts: &[Artefact]) -> Vec<String> {
        artefacts
            .iter()
            .map(|a| match a {
                Artefact::Apply(kind, body) => {
                    format!("apply {} {}", kind.name(), body["metadata"]["name"].as_str().unwrap())
                }
                Artefact::Patch(kind, name, patch) => format!("patch {} {name} {patch}", kind.name()),
            })
            .collect()
    }

    #[test]
    fn the_plan_moves_a_legacy_key_out_of_the_mounted_bundle_before_writing_it() {
        let csp = mtls(&[]);
        let (crt, key) = (TEST_CA.0.to_string(), TEST_CA.1.to_string());
        let referenced = Referenced {
            client_ca: Some(ClientCaSource::Kept { pair: Some((crt.clone(), key)), legacy_key: true }),
            clients: Vec::new(),
        };
        let now = k8s_openapi::jiff::Timestamp::UNIX_EPOCH;
        let plan = plan(&csp, &csp.desired(), None, referenced, now).unwrap();
        assert_eq!(
            written(&plan.writes),
            [
                "apply Secret kafka-client-ca-key",
                r#"patch Secret kafka-client-ca {"data":{"ca.key":null}}"#,
                "apply Secret kafka-client-ca",
                "apply ConfigMap kafka-security",
            ]
        );
        let Artefact::Apply(_, bundle) = &plan.writes[2] else { unreachable!() };
        assert_eq!(bundle["stringData"], json!({"ca.crt": crt}), "only the certificate is mounted");
    }

    #[test]
    fn the_plan_refuses_a_missing_ca_secret_and_writes_nothing() {
        let csp = mtls(&["corp-ca"]);
        let referenced = Referenced {
            client_ca: Some(ClientCaSource::Referenced(ReferencedCa::Missing("corp-ca".into()))),
            clients: Vec::new(),
        };
        let refused = plan(&csp, &csp.desired(), None, referenced, k8s_openapi::jiff::Timestamp::UNIX_EPOCH);
        let Err(PrepareError::Refused { reason: code, message }) = refused else { panic!("{refused:?}") };
        assert_eq!(code, reason::SECRET_NOT_FOUND);
        assert!(message.contains("Secret n/corp-ca"), "{message}");
    }

    /// Not a real CA: the plan copies what the key Secret holds and parses nothing.
    const TEST_CA: (&str, &str) = ("-----BEGIN CERTIFICATE-----\nx\n-----END CERTIFICATE-----\n", "key");

    #[test]
    fn in_cluster_is_fixed_by_the_value_first_seen_before_any_operation() {
        let status = ClusterSecurityPolicyStatus { first_seen_in_cluster: Some(true), ..Default::default() };
        let refused = in_cluster_violation(&csp(false), &status).expect("first seen fixes inCluster").to_string();
        assert!(refused.contains("InClusterEncryptionImmutable") && refused.contains("it is true"), "{refused}");
        assert!(in_cluster_violation(&csp(true), &status).is_none());
    }
}
