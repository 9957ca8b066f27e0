//! Trust where clients live (`spec.trustDistribution`): copies of the external trust bundle
//! `<cluster>-external-trust` (same name, `ca.crt` and `current-ca.crt`) in the namespaces the
//! spec lists or whose labels match, kept equal to the original on every round — so during a CA
//! change clients everywhere get the new CA before any broker presents it. A copy carries the
//! label `clustersecurity.io/trust-source=<uid of the CertificateRotation>`; a namespace that
//! leaves the list (or the selector) loses its copy. When the CertificateRotation is deleted,
//! `deletionPolicy: Delete` removes the copies with it (no owner reference can reach another
//! namespace: its finalizer gives the operator the moment to); `Retain` keeps them.
//!
//! What this module may touch: ConfigMaps `<cluster>-external-trust` in the target namespaces
//! that are its own copies (created by it, or carrying that label), and deleting those; it reads
//! Namespaces' labels and the original bundle.

use std::collections::BTreeSet;
use std::time::Duration;

use k8s_openapi::api::core::v1::{ConfigMap, Namespace};
use kube::api::{DeleteParams, ListParams, Patch, PatchParams};
use kube::runtime::events::EventType;
use kube::{Api, ResourceExt};
use serde_json::json;

use super::trust_configmap;
use crate::api::{CertificateRotation, FIELD_MANAGER};
use crate::reconciler::conditions::{self, reason};
use crate::reconciler::derived::{self, MANAGED_BY_LABEL};
use crate::reconciler::{Context, Error, Named, Round};

/// Label of every copy: the uid of the CertificateRotation it copies for.
pub const SOURCE_LABEL: &str = "clustersecurity.io/trust-source";
/// Annotation of every copy: `<namespace>/<name>` of that CertificateRotation, for people.
const SOURCE_ANNOTATION: &str = "clustersecurity.io/trust-source-object";
/// How often copies are compared with the original when nothing else happens (a namespace
/// that gains the selector's labels is noticed at once by a watch in cluster-wide installs).
pub const RESYNC: Duration = Duration::from_secs(300);

/// Bring the copies in line with the original and the spec; record where they are in
/// `status.trustDistributedTo` and the `TrustDistributed` condition. Every failure (a namespace
/// not managed or forbidden, someone else's ConfigMap, the API server) is reported there and
/// never fails the round: the round has written its Secrets and its status must be saved.
/// Returns when to look again.
pub async fn sync(cr: &CertificateRotation, round: &mut Round<CertificateRotation>, ctx: &Context) -> Option<Duration> {
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
    let own = cr.namespace().unwrap_or_default();
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
    let mut failed = Vec::new();
    let mut targets: BTreeSet<String> = spec.namespaces.iter().cloned().collect();
    let labels = spec.namespace_selector.as_ref().map(|s| &s.match_labels).filter(|l| !l.is_empty());
    // Without the selected namespaces, which copies are stale is unknown: none is removed.
    let mut selection_known = true;
    if let Some(labels) = labels {
        if ctx.scope.watched().is_some() {
            failed.push(
                "namespaceSelector needs a cluster-wide install (the operator manages only watchNamespaces); list the namespaces instead".to_string(),
            );
        } else {
            let selector: Vec<String> = labels.iter().map(|(k, v)| format!("{k}={v}")).collect();
            match Api::<Namespace>::all(ctx.client.clone())
                .list_metadata(&ListParams::default().labels(&selector.join(",")))
                .await
            {
                Ok(list) => targets.extend(list.items.into_iter().map(|n| n.name_any())),
                Err(e) => {
                    selection_known = false;
                    failed.push(format!("namespaces matching {}: {}", selector.join(","), short(&e)))
                }
            }
        }
    }
    targets.remove(&own);
    let original = Api::<ConfigMap>::namespaced(ctx.client.clone(), &own)
        .get_opt(&name)
        .await
        .map_err(|source| Error::Read { object: Named::new("ConfigMap", &own, &name), source: Box::new(source) })?
        .and_then(|c| c.data);
    // Nothing published yet (the first operation has not installed a certificate).
    let Some(data) = original else { return Ok(Some(RESYNC)) };
    let data: std::collections::BTreeMap<String, String> =
        data.into_iter().filter(|(k, _)| k == "ca.crt" || k == "current-ca.crt").collect();
    let mut copied = Vec::new();
    for ns in &targets {
        if !ctx.scope.covers(Some(ns)) {
            failed.push(format!("{ns}: not a namespace the operator manages (watchNamespaces)"));
            continue;
        }
        let api = Api::<ConfigMap>::namespaced(ctx.client.clone(), ns);
        match api.get_metadata_opt(&name).await {
            Ok(Some(existing)) if !is_copy(&existing.metadata, &uid) => {
                failed.push(format!(
                    "{ns}: ConfigMap {name} exists and is not this resource's copy; rename or delete it, or annotate it {}=true",
                    derived::ADOPT_ANNOTATION
                ));
                continue;
            }
            Ok(_) => {}
            Err(e) => {
                failed.push(format!("{ns}: {}", short(&e)));
                continue;
            }
        }
        let body = json!({"apiVersion": "v1", "kind": "ConfigMap",
            "metadata": {"name": name, "namespace": ns,
                "labels": {MANAGED_BY_LABEL: FIELD_MANAGER, SOURCE_LABEL: uid},
                "annotations": {SOURCE_ANNOTATION: format!("{own}/{}", cr.name_any())}},
            "data": data});
        match api.patch(&name, &PatchParams::apply(FIELD_MANAGER).force(), &Patch::Apply(&body)).await {
            Ok(_) => copied.push(ns.clone()),
            Err(e) => failed.push(format!("{ns}: {}", short(&e))),
        }
    }
    if selection_known {
        remove_copies(ctx, &uid, &name, &targets).await?;
    }
    round.status.trust_distributed_to = copied.clone();
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
    round.set_condition(conditions::TRUST_DISTRIBUTED, ok, why, &message);
    Ok(Some(RESYNC))
}

/// The CertificateRotation is deleted under `deletionPolicy: Delete`: remove its copies. A
/// failure is reported (a Warning event naming the command that removes them) and the deletion
/// goes on: a copy left behind vouches for a CA no broker of this resource presents any more.
pub async fn release(cr: &CertificateRotation, round: &mut Round<CertificateRotation>, ctx: &Context) {
    let uid = cr.uid().unwrap_or_default();
    let name = trust_configmap(&cr.spec.cluster_ref.name);
    if let Err(e) = remove_copies(ctx, &uid, &name, &BTreeSet::new()).await {
        let note = format!(
            "The trust bundle copies could not all be removed ({e}); remove them with `kubectl delete configmap -A -l {SOURCE_LABEL}={uid}`."
        );
        round.event(EventType::Warning, reason::TRUST_DISTRIBUTION_FAILED, note);
    }
}

/// A ConfigMap this resource may write: its own copy, or one a user lets it adopt.
fn is_copy(meta: &k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta, uid: &str) -> bool {
    let source = meta.labels.as_ref().and_then(|l| l.get(SOURCE_LABEL)).map(String::as_str);
    let adopt = meta.annotations.as_ref().and_then(|a| a.get(derived::ADOPT_ANNOTATION)).map(String::as_str);
    (derived::ours(meta) && source == Some(uid)) || adopt == Some("true")
}

/// Delete this resource's copies outside `keep`.
async fn remove_copies(ctx: &Context, uid: &str, name: &str, keep: &BTreeSet<String>) -> Result<(), Error> {
    if uid.is_empty() {
        return Ok(());
    }
    let lp = ListParams::default().labels(&format!("{SOURCE_LABEL}={uid}"));
    for api in ctx.scope.apis::<ConfigMap>(&ctx.client) {
        let copies = api
            .list_metadata(&lp)
            .await
            .map_err(|source| Error::Read { object: Named::new("ConfigMaps", "", name), source: Box::new(source) })?;
        for copy in copies.items.into_iter().filter(|c| c.name_any() == name) {
            let ns = copy.namespace().unwrap_or_default();
            if keep.contains(&ns) {
                continue;
            }
            match Api::<ConfigMap>::namespaced(ctx.client.clone(), &ns).delete(name, &DeleteParams::default()).await {
                Ok(_) => {}
                Err(kube::Error::Api(e)) if e.code == 404 => {}
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
