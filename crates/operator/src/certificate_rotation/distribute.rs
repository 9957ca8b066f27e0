//! Trust where clients live (`spec.trustDistribution`): copies of the external trust bundle
//! `<cluster>-external-trust` (same name, `ca.crt` and `current-ca.crt`) in the namespaces the
//! spec lists or whose labels match, kept equal to the original on every round — so during a CA
//! change clients everywhere get the new CA before any broker presents it. A copy carries the
//! label `clustersecurity.io/trust-source=<uid of the CertificateRotation>`; a namespace that
//! leaves the list (or the selector) loses its copy. When the CertificateRotation is deleted,
//! `deletionPolicy: Delete` removes the copies with it (no owner reference can reach another
//! namespace: its finalizer gives the operator the moment to); `Retain` keeps them.
//!
//! A namespace receives copies only when it consents: its Namespace object carries the
//! annotation `clustersecurity.io/accept-trust-from` naming the source namespace (a
//! comma-separated list, or `*`). Namespace objects are a cluster admin's to edit — a namespace
//! editor cannot consent on another namespace's behalf, so a tenant cannot plant a CA of its
//! choosing where others' clients look for trust. Only certificates are copied, only from a
//! bundle the operator wrote for this resource, and never over (or instead of) an object that
//! is not this resource's copy: the adopt annotation does not reach across namespaces.
//!
//! What this module may touch: ConfigMaps `<cluster>-external-trust` in consenting target
//! namespaces that are this resource's own copies (created by it: managed-by and source
//! labels; written through the round), and deleting those; it reads Namespaces' labels and
//! annotations and the original bundle. A round reads first ([`select`]), decides without the
//! API server ([`plan`]), then writes.

use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

use k8s_openapi::api::core::v1::{ConfigMap, Namespace};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use kube::api::{DeleteParams, ListParams, Preconditions};
use kube::runtime::events::EventType;
use kube::{Api, ResourceExt};
use serde_json::json;

use super::trust_configmap;
use crate::api::{CertificateRotation, TrustDistribution, FIELD_MANAGER};
use crate::reconciler::conditions::{self, reason};
use crate::reconciler::derived::{self, MANAGED_BY_LABEL};
use crate::reconciler::Noted as _;
use crate::reconciler::{Context, Error, Named, Round};

/// Label of every copy: the uid of the CertificateRotation it copies for.
pub(super) const SOURCE_LABEL: &str = "clustersecurity.io/trust-source";
/// Annotation of every copy: `<namespace>/<name>` of that CertificateRotation, for people.
const SOURCE_ANNOTATION: &str = "clustersecurity.io/trust-source-object";
/// Annotation of a Namespace that accepts trust bundle copies: the source namespaces, comma
/// separated, or `*` for any.
pub(super) const ACCEPT_ANNOTATION: &str = "clustersecurity.io/accept-trust-from";
/// How often copies are compared with the original when nothing else happens (a namespace
/// that gains the selector's labels is noticed at once by a watch in cluster-wide installs).
pub(super) const RESYNC: Duration = Duration::from_secs(300);

/// Bring the copies in line with the original and the spec; record where they are in
/// `status.trustDistributedTo` and the `TrustDistributed` condition. Every failure (a namespace
/// not managed or forbidden, someone else's ConfigMap, the API server) is reported there and
/// never fails the round: the round has written its Secrets and its status must be saved.
/// Returns when to look again.
pub(super) async fn sync(
    cr: &CertificateRotation,
    round: &mut Round<CertificateRotation>,
    ctx: &Context,
) -> Option<Duration> {
    match copy(cr, round, ctx).await {
        Ok(resync) => resync,
        Err(e) => {
            let message = format!("The trust bundle copies could not be brought up to date: {e}; retried.");
            round.set_condition(conditions::TRUST_DISTRIBUTED, false, reason::TRUST_DISTRIBUTION_FAILED, &message);
            Some(RESYNC_AFTER_ERROR)
        }
    }
}

/// When copies are looked at again after the API server failed a read or write.
const RESYNC_AFTER_ERROR: Duration = Duration::from_secs(30);

async fn copy(
    cr: &CertificateRotation,
    round: &mut Round<CertificateRotation>,
    ctx: &Context,
) -> Result<Option<Duration>, Error> {
    let uid = cr.uid().unwrap_or_default();
    let name = trust_configmap(&cr.spec.cluster_ref.name);
    let Some(spec) = cr.spec.trust_distribution.as_ref().filter(|_| cr.spec.external.is_some()) else {
        if !round.status.trust_distributed_to.is_empty() {
            remove_copies(ctx, &uid, &name, &BTreeSet::new()).await?;
            round.status.trust_distributed_to.clear();
        }
        round.sticky_condition(
            conditions::TRUST_DISTRIBUTED,
            None,
            (reason::NOT_DISTRIBUTED, "No spec.trustDistribution."),
        );
        return Ok(None);
    };
    let mut selection = select(cr, spec, ctx).await?;
    // Nothing published yet (the first operation has not installed a certificate).
    let Some(original) = selection.original.take() else { return Ok(Some(RESYNC)) };
    let data = match copyable(&original, cr) {
        Ok(data) => data,
        Err(why) => {
            // Copies already made stay as they are: the last bundle the operator vouched for.
            round.set_condition(conditions::TRUST_DISTRIBUTED, false, reason::TRUST_DISTRIBUTION_FAILED, &why);
            return Ok(Some(RESYNC));
        }
    };
    let Copies { writes, consenting, mut failed } = plan(cr, &selection, &data);
    let mut copied = Vec::new();
    for (ns, body) in writes {
        match round.apply_configmap_in(&ns, &body).await {
            Ok(()) => copied.push(ns),
            Err(e) => failed.push(format!("{ns}: {}", short(&e))),
        }
    }
    if selection.known {
        remove_copies(ctx, &uid, &name, &consenting).await?;
    }
    report(round, &name, copied, &failed);
    Ok(Some(RESYNC))
}

/// What the copies are decided from, read once per round.
struct Selection {
    /// The original bundle in the resource's namespace (None: not published yet).
    original: Option<ConfigMap>,
    /// Each target namespace (listed, or selected by labels; never the resource's own).
    targets: BTreeMap<String, Target>,
    /// Whether the selected namespaces are known: after a failed list, which copies are stale
    /// is not, and none is removed.
    known: bool,
    /// Why namespaces could not be selected.
    failed: Vec<String>,
}

/// A target namespace as read.
enum Target {
    /// Not a namespace the operator manages (watchNamespaces).
    NotManaged,
    /// No such namespace.
    Missing,
    /// Its Namespace could not be read: its copy (if any) is kept until it can.
    Unreadable(String),
    /// It does not accept trust bundles from the resource's namespace.
    Refuses,
    /// It consents; the ConfigMap of the bundle's name there, if any (Err: unreadable).
    Consents(Result<Option<Box<ObjectMeta>>, String>),
}

/// Read the original bundle, the target namespaces, their consent and what they hold under the
/// bundle's name.
async fn select(cr: &CertificateRotation, spec: &TrustDistribution, ctx: &Context) -> Result<Selection, Error> {
    let own = cr.namespace().unwrap_or_default();
    let name = trust_configmap(&cr.spec.cluster_ref.name);
    let mut failed = Vec::new();
    let mut listed: BTreeMap<String, Option<bool>> = spec.namespaces.iter().map(|n| (n.clone(), None)).collect();
    let mut known = true;
    let labels = spec.namespace_selector.as_ref().map(|s| &s.match_labels).filter(|l| !l.is_empty());
    if let Some(labels) = labels {
        if ctx.scope.watched().is_some() {
            failed.push(
                "namespaceSelector needs a cluster-wide install (the operator manages only watchNamespaces); list the namespaces instead".to_string(),
            );
        } else {
            let selector: Vec<String> = labels.iter().map(|(k, v)| format!("{k}={v}")).collect();
            let lp = ListParams::default().labels(&selector.join(","));
            match Api::<Namespace>::all(ctx.client.clone()).list_metadata(&lp).await {
                Ok(list) => listed.extend(list.items.iter().map(|n| (n.name_any(), Some(accepts(&n.metadata, &own))))),
                Err(e) => {
                    known = false;
                    failed.push(format!("namespaces matching {}: {}", selector.join(","), short(&e)))
                }
            }
        }
    }
    listed.remove(&own);
    let original = Api::<ConfigMap>::namespaced(ctx.client.clone(), &own).get_opt(&name).await.reading(&Named::new(
        "ConfigMap",
        &own,
        &name,
    ))?;
    let mut targets = BTreeMap::new();
    if original.is_some() {
        for (ns, consent) in listed {
            let target = read_target(ctx, &ns, consent, &own, &name).await;
            targets.insert(ns, target);
        }
    }
    Ok(Selection { original, targets, known, failed })
}

/// Read target namespace `ns` (`consent`: already known from the selector's list).
async fn read_target(ctx: &Context, ns: &str, consent: Option<bool>, own: &str, name: &str) -> Target {
    if !ctx.scope.covers(Some(ns)) {
        return Target::NotManaged;
    }
    let consent = match consent {
        Some(c) => c,
        None => match Api::<Namespace>::all(ctx.client.clone()).get_metadata_opt(ns).await {
            Ok(Some(n)) => accepts(&n.metadata, own),
            Ok(None) => return Target::Missing,
            Err(e) => return Target::Unreadable(short(&e)),
        },
    };
    if !consent {
        return Target::Refuses;
    }
    let existing = Api::<ConfigMap>::namespaced(ctx.client.clone(), ns).get_metadata_opt(name).await;
    Target::Consents(existing.map(|o| o.map(|m| Box::new(m.metadata))).map_err(|e| short(&e)))
}

/// What a round writes: each copy (namespace, body), the namespaces whose copy stays, and why
/// the others get none.
struct Copies {
    writes: Vec<(String, serde_json::Value)>,
    consenting: BTreeSet<String>,
    failed: Vec<String>,
}

/// The copies of `data` for `selection`: written only over this resource's own copy (guarded by
/// its resourceVersion: a 409 if it changed meanwhile), never over someone else's ConfigMap.
fn plan(cr: &CertificateRotation, selection: &Selection, data: &BTreeMap<String, String>) -> Copies {
    let uid = cr.uid().unwrap_or_default();
    let own = cr.namespace().unwrap_or_default();
    let source_object = format!("{own}/{}", cr.name_any());
    let name = trust_configmap(&cr.spec.cluster_ref.name);
    let mut copies = Copies { writes: Vec::new(), consenting: BTreeSet::new(), failed: selection.failed.clone() };
    for (ns, target) in &selection.targets {
        let existing = match target {
            Target::NotManaged => {
                copies.failed.push(format!("{ns}: not a namespace the operator manages (watchNamespaces)"));
                continue;
            }
            Target::Missing => {
                copies.failed.push(format!("{ns}: no such namespace"));
                continue;
            }
            Target::Unreadable(e) => {
                copies.consenting.insert(ns.clone());
                copies.failed.push(format!("{ns}: {e}"));
                continue;
            }
            Target::Refuses => {
                copies.failed.push(format!(
                    "{ns}: the namespace does not accept trust bundles from {own}; a cluster admin consents with \
                     `kubectl annotate namespace {ns} {ACCEPT_ANNOTATION}={own}`"
                ));
                continue;
            }
            Target::Consents(existing) => existing,
        };
        copies.consenting.insert(ns.clone());
        let mut body = json!({"apiVersion": "v1", "kind": "ConfigMap",
            "metadata": {"name": name, "namespace": ns,
                "labels": {MANAGED_BY_LABEL: FIELD_MANAGER, SOURCE_LABEL: uid},
                "annotations": {SOURCE_ANNOTATION: source_object}},
            "data": data});
        match existing {
            Ok(Some(meta)) if is_copy(meta, &uid, &source_object) => {
                body["metadata"]["resourceVersion"] = json!(meta.resource_version);
            }
            Ok(Some(_)) => {
                copies.failed.push(format!(
                    "{ns}: ConfigMap {name} exists and is not this resource's copy, so it is left untouched; \
                     its owner renames or deletes it"
                ));
                continue;
            }
            Ok(None) => {}
            Err(e) => {
                copies.failed.push(format!("{ns}: {e}"));
                continue;
            }
        }
        copies.writes.push((ns.clone(), body));
    }
    copies
}

/// Record where the copies are (`status.trustDistributedTo`) and the `TrustDistributed`
/// condition.
fn report(round: &mut Round<CertificateRotation>, name: &str, copied: Vec<String>, failed: &[String]) {
    let (ok, why, message) = if failed.is_empty() {
        let message = format!("ConfigMap {name} is copied to {} namespace(s): {}.", copied.len(), copied.join(", "));
        (true, reason::TRUST_DISTRIBUTED, message)
    } else {
        let message = format!(
            "ConfigMap {name} is copied to {} namespace(s){}; not to: {}.",
            copied.len(),
            if copied.is_empty() { String::new() } else { format!(" ({})", copied.join(", ")) },
            failed.join("; ")
        );
        (false, reason::TRUST_DISTRIBUTION_FAILED, message)
    };
    round.status.trust_distributed_to = copied;
    round.set_condition(conditions::TRUST_DISTRIBUTED, ok, why, &message);
}

/// The CertificateRotation is deleted under `deletionPolicy: Delete`: remove its copies. A
/// failure is reported (a Warning event naming the command that removes them) and the deletion
/// goes on: a copy left behind vouches for a CA no broker of this resource presents any more.
pub(super) async fn release(cr: &CertificateRotation, round: &mut Round<CertificateRotation>, ctx: &Context) {
    let uid = cr.uid().unwrap_or_default();
    let name = trust_configmap(&cr.spec.cluster_ref.name);
    if let Err(e) = remove_copies(ctx, &uid, &name, &BTreeSet::new()).await {
        let note = format!(
            "The trust bundle copies could not all be removed ({e}); remove them with `kubectl delete configmap -A -l {SOURCE_LABEL}={uid}`."
        );
        round.event(EventType::Warning, reason::TRUST_DISTRIBUTION_FAILED, note);
    }
}

/// A ConfigMap this resource may write or delete: its own copy — the operator's label, and this
/// resource's uid as source or (a CertificateRotation deleted and created again under the same
/// name) its `<namespace>/<name>`. Never one a user marked for adoption: an annotation written in
/// the target namespace does not let a resource of another namespace take its object.
fn is_copy(meta: &ObjectMeta, uid: &str, source_object: &str) -> bool {
    let label = |k: &str| meta.labels.as_ref().and_then(|l| l.get(k)).map(String::as_str);
    let annotation = meta.annotations.as_ref().and_then(|a| a.get(SOURCE_ANNOTATION)).map(String::as_str);
    !uid.is_empty()
        && label(MANAGED_BY_LABEL) == Some(FIELD_MANAGER)
        && (label(SOURCE_LABEL) == Some(uid) || annotation == Some(source_object))
}

/// Whether a Namespace with this metadata accepts copies from namespace `source`.
fn accepts(meta: &ObjectMeta, source: &str) -> bool {
    let Some(value) = meta.annotations.as_ref().and_then(|a| a.get(ACCEPT_ANNOTATION)) else { return false };
    value.split(',').map(str::trim).any(|s| s == "*" || s == source)
}

/// What may be copied of the original bundle: `ca.crt` and `current-ca.crt` only, only when the
/// operator wrote the bundle for this resource, and only when each holds certificates and
/// nothing else. The reason otherwise.
fn copyable(original: &ConfigMap, cr: &CertificateRotation) -> Result<BTreeMap<String, String>, String> {
    let name = original.name_any();
    if !derived::written_for(&original.metadata, &derived::Owner::of(cr)) {
        return Err(format!(
            "ConfigMap {name} was not written by the operator for this CertificateRotation, so it is not copied anywhere."
        ));
    }
    let mut data = BTreeMap::new();
    for (key, value) in original.data.iter().flatten().filter(|(k, _)| *k == "ca.crt" || *k == "current-ca.crt") {
        if !certificates_only(value) {
            return Err(format!(
                "ConfigMap {name} key {key} holds more than PEM certificates, so it is not copied anywhere; \
                 the operator writes it again from the CA in force."
            ));
        }
        data.insert(key.clone(), value.clone());
    }
    Ok(data)
}

/// Whether `pem` is one or more PEM `CERTIFICATE` blocks, each a parseable X.509 certificate,
/// with nothing but white space around them.
fn certificates_only(pem: &str) -> bool {
    let mut rest = pem.trim();
    let mut found = false;
    while !rest.is_empty() {
        let Some(after) = rest.strip_prefix("-----BEGIN CERTIFICATE-----") else { return false };
        let Some((block, tail)) = after.split_once("-----END CERTIFICATE-----") else { return false };
        let der = base64::Engine::decode(
            &base64::engine::general_purpose::STANDARD,
            block.chars().filter(|c| !c.is_whitespace()).collect::<String>(),
        );
        if !der.is_ok_and(|d| x509_parser::parse_x509_certificate(&d).is_ok_and(|(left, _)| left.is_empty())) {
            return false;
        }
        found = true;
        rest = tail.trim_start();
    }
    found
}

/// Delete this resource's copies outside `keep`.
async fn remove_copies(ctx: &Context, uid: &str, name: &str, keep: &BTreeSet<String>) -> Result<(), Error> {
    if uid.is_empty() {
        return Ok(());
    }
    let lp = ListParams::default().labels(&format!("{SOURCE_LABEL}={uid}"));
    for api in ctx.scope.apis::<ConfigMap>(&ctx.client) {
        let copies = api.list_metadata(&lp).await.reading(&Named::new("ConfigMaps", "", name))?;
        // Listed by this uid: the source label decides (no source object needed).
        for copy in copies.items.into_iter().filter(|c| c.name_any() == name && is_copy(&c.metadata, uid, "")) {
            let ns = copy.namespace().unwrap_or_default();
            if keep.contains(&ns) {
                continue;
            }
            // The very object listed: one put in its place meanwhile is not deleted.
            let dp = DeleteParams {
                preconditions: copy.uid().map(|uid| Preconditions { uid: Some(uid), resource_version: None }),
                ..Default::default()
            };
            match Api::<ConfigMap>::namespaced(ctx.client.clone(), &ns).delete(name, &dp).await {
                Ok(_) => {}
                Err(kube::Error::Api(e)) if e.code == 404 || e.code == 409 => {}
                Err(source) => {
                    return Err(Error::Write { object: Named::new("ConfigMap", &ns, name), source: Box::new(source) })
                }
            }
        }
    }
    Ok(())
}

/// An API error in a few words (the reason and the message, never a body).
fn short(e: &kube::Error) -> String {
    match e {
        kube::Error::Api(a) => format!("{} ({})", a.message, a.reason),
        other => other.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ns_meta(annotation: Option<&str>) -> ObjectMeta {
        ObjectMeta {
            annotations: annotation.map(|v| [(ACCEPT_ANNOTATION.to_string(), v.to_string())].into()),
            ..Default::default()
        }
    }

    #[test]
    fn the_plan_copies_only_where_consented_and_only_over_its_own_copy() {
        let cr: CertificateRotation = serde_json::from_value(json!({
            "apiVersion": "clustersecurity.io/v1alpha1", "kind": "CertificateRotation",
            "metadata": {"name": "certs", "namespace": "kafka", "uid": "u1"},
            "spec": {"clusterRef": {"kind": "StatefulSet", "name": "orders"},
                     "external": {"label": "v1", "type": "selfsigned"}}
        }))
        .unwrap();
        let ours = ObjectMeta {
            labels: Some(
                [(MANAGED_BY_LABEL.to_string(), FIELD_MANAGER.to_string()), (SOURCE_LABEL.to_string(), "u1".into())]
                    .into(),
            ),
            resource_version: Some("42".into()),
            ..Default::default()
        };
        let targets = BTreeMap::from([
            ("apps".to_string(), Target::Consents(Ok(Some(Box::new(ours))))),
            ("fresh".to_string(), Target::Consents(Ok(None))),
            ("taken".to_string(), Target::Consents(Ok(Some(Box::default())))),
            ("closed".to_string(), Target::Refuses),
            ("flaky".to_string(), Target::Unreadable("timeout".into())),
            ("elsewhere".to_string(), Target::NotManaged),
        ]);
        let selection = Selection { original: None, targets, known: true, failed: vec!["selector".into()] };
        let data = BTreeMap::from([("ca.crt".to_string(), "PEM".to_string())]);
        let copies = plan(&cr, &selection, &data);
        let written: Vec<(&str, Option<&str>)> = copies
            .writes
            .iter()
            .map(|(ns, body)| (ns.as_str(), body["metadata"]["resourceVersion"].as_str()))
            .collect();
        assert_eq!(written, [("apps", Some("42")), ("fresh", None)], "guarded by the copy's resourceVersion");
        assert_eq!(copies.writes[0].1["data"], json!({"ca.crt": "PEM"}));
        let kept: Vec<&str> = copies.consenting.iter().map(String::as_str).collect();
        assert_eq!(kept, ["apps", "flaky", "fresh", "taken"], "an unreadable namespace keeps its copy");
        let failed = copies.failed.join("\n");
        for why in ["selector", "closed: the namespace does not accept", "elsewhere: not a namespace", "flaky: timeout"]
        {
            assert!(failed.contains(why), "{why} missing from {failed}");
        }
        assert!(
            failed.contains("taken: ConfigMap orders-external-trust exists and is not this resource's copy"),
            "{failed}"
        );
    }

    #[test]
    fn a_namespace_accepts_copies_only_from_the_sources_it_names() {
        assert!(!accepts(&ns_meta(None), "tenant"), "no annotation: no consent");
        assert!(accepts(&ns_meta(Some("tenant")), "tenant"));
        assert!(accepts(&ns_meta(Some("other, tenant")), "tenant"));
        assert!(accepts(&ns_meta(Some("*")), "tenant"));
        assert!(!accepts(&ns_meta(Some("tenant-b")), "tenant"));
        assert!(!accepts(&ns_meta(Some("tenant*")), "tenant"), "no patterns but *");
        assert!(!accepts(&ns_meta(Some("")), "tenant"));
    }

    #[test]
    fn only_certificates_are_copied() {
        let now = k8s_openapi::jiff::Timestamp::now();
        let (a, b) = (crate::pki::new_ca("a", now, 1).unwrap(), crate::pki::new_ca("b", now, 1).unwrap());
        assert!(certificates_only(&a.cert_pem));
        assert!(certificates_only(&format!("{}\n{}", a.cert_pem, b.cert_pem)));
        assert!(!certificates_only(""), "nothing");
        assert!(!certificates_only(&format!("{}{}", a.cert_pem, a.key_pem)), "a private key");
        assert!(!certificates_only(&format!("hello\n{}", a.cert_pem)), "text before");
        assert!(!certificates_only(&format!("{}\nfoo=bar", a.cert_pem)), "text after");
        let broken = a.cert_pem.replacen("MII", "MIX", 1);
        assert!(!certificates_only(&broken), "not a certificate");
    }

    #[test]
    fn a_copy_is_only_what_this_resource_wrote_never_an_adopted_object() {
        let labels = |uid: &str| {
            Some(
                [
                    (MANAGED_BY_LABEL.to_string(), FIELD_MANAGER.to_string()),
                    (SOURCE_LABEL.to_string(), uid.to_string()),
                ]
                .into(),
            )
        };
        assert!(is_copy(&ObjectMeta { labels: labels("u1"), ..Default::default() }, "u1", "ns/certs"));
        assert!(!is_copy(&ObjectMeta { labels: labels("u2"), ..Default::default() }, "u1", "ns/certs"));
        let annotations = |source: &str| Some([(SOURCE_ANNOTATION.to_string(), source.to_string())].into());
        let predecessor =
            ObjectMeta { labels: labels("u0"), annotations: annotations("ns/certs"), ..Default::default() };
        assert!(is_copy(&predecessor, "u1", "ns/certs"), "the copy of the same resource, deleted and created again");
        assert!(!is_copy(&predecessor, "u1", "other/certs"), "another namespace's resource of that name");
        let adopted = ObjectMeta {
            annotations: Some([(derived::ADOPT_ANNOTATION.to_string(), "true".to_string())].into()),
            ..Default::default()
        };
        assert!(!is_copy(&adopted, "u1", "ns/certs"), "the adopt annotation does not reach across namespaces");
    }
}
