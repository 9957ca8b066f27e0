//! KMS acts on its own cluster: right before an operation opens (so before any cloud write), the
//! managed cluster `spec.provider` names must be the one the operator runs in. Pointed at another
//! cluster, a switch would turn KMS off there while this cluster's Secrets are rewritten: refused,
//! Stalled `ForeignCluster`, nothing called in the cloud.
//!
//! Two things tell, both read from what the managed cluster GET returns anyway:
//! - **the nodes**: on AKS every node carries the label `kubernetes.azure.com/cluster` with the
//!   managed cluster's node resource group (`properties.nodeResourceGroup`). Labelled nodes that
//!   name another group are a foreign cluster, whatever else says;
//! - **the API server's host**: the managed cluster's `properties.fqdn` / `privateFQDN` against the
//!   host the operator talks to (its kubeconfig's server, or `KUBERNETES_SERVICE_HOST`, which AKS
//!   can set to the FQDN). A match says "this cluster"; no match says nothing (in-cluster the host
//!   is usually the `kubernetes` Service's IP).
//!
//! Where neither tells (no labelled node — not AKS nodes, virtual nodes only — or no right to list
//! Nodes, and no FQDN match), the switch is refused the same way unless the object carries the
//! explicit override annotation `clustersecurity.io/managed-cluster-check: skip`.
//!
//! The check runs only where an operation would open: never while the cluster is in sync, never
//! during an operation (which acts on the provider recorded when it opened, whatever the spec says
//! later). A changed provider is so checked again before its first write.
//!
//! What this module may touch: nothing; it lists Nodes' metadata and reads its own kubeconfig.

use std::collections::BTreeSet;

use k8s_openapi::api::core::v1::Node;
use kube::api::ListParams;
use kube::{Api, Client};

use super::provider::ClusterIdentity;
use crate::reconciler::{Error, Named};

/// The label AKS puts on every node: the managed cluster's node resource group.
pub(crate) const NODE_CLUSTER_LABEL: &str = "kubernetes.azure.com/cluster";
/// Set to `skip` on a KmsKeyVaultMode to act without the check (clusters where neither the nodes
/// nor the API server's host can tell, after checking by hand that `spec.provider` names this
/// cluster).
pub(crate) const CHECK_ANNOTATION: &str = "clustersecurity.io/managed-cluster-check";
/// The one value of [`CHECK_ANNOTATION`] that skips the check.
pub(crate) const CHECK_SKIP: &str = "skip";

/// What the check found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Verdict {
    /// The managed cluster is this one; the text says what showed it.
    Same(String),
    /// The check was skipped by the annotation.
    Skipped,
    /// Another cluster, or no way to tell: the message says what was compared, and the way out.
    Refused(String),
}

/// What the operator sees of the cluster it runs in.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub(crate) struct Local {
    /// The nodes' values of [`NODE_CLUSTER_LABEL`] (first page); None when Nodes may not be listed.
    pub node_groups: Option<BTreeSet<String>>,
    /// The hosts the operator reaches its API server at.
    pub api_hosts: BTreeSet<String>,
}

/// Read [`Local`]: the labelled Nodes' metadata, and the API server's host from the same
/// configuration the client was built from (kubeconfig, or in-cluster) plus `KUBERNETES_SERVICE_HOST`.
pub(crate) async fn local(client: &Client) -> Result<Local, Error> {
    let lp = ListParams::default().labels(NODE_CLUSTER_LABEL).limit(100);
    let node_groups = match Api::<Node>::all(client.clone()).list_metadata(&lp).await {
        Ok(list) => Some(
            list.items
                .into_iter()
                .filter_map(|n| n.metadata.labels.and_then(|mut l| l.remove(NODE_CLUSTER_LABEL)))
                .collect(),
        ),
        Err(kube::Error::Api(e)) if e.code == 403 => None,
        Err(source) => return Err(Error::Read { object: Named::new("Node", "", "*"), source: Box::new(source) }),
    };
    let mut api_hosts = BTreeSet::new();
    if let Ok(config) = kube::Config::infer().await {
        api_hosts.extend(config.cluster_url.host().map(host));
    }
    api_hosts.extend(std::env::var("KUBERNETES_SERVICE_HOST").ok().filter(|h| !h.is_empty()).as_deref().map(host));
    Ok(Local { node_groups, api_hosts })
}

/// A host name compared: lower case, without a trailing dot or IPv6 brackets.
fn host(h: &str) -> String {
    h.trim_start_matches('[').trim_end_matches(']').trim_end_matches('.').to_ascii_lowercase()
}

/// Judge whether `cloud` (named `cluster` in messages) is the cluster the operator sees as
/// `local`. `annotation`: the value of [`CHECK_ANNOTATION`] on the object, if any.
pub(crate) fn judge(cloud: &ClusterIdentity, local: &Local, annotation: Option<&str>, cluster: &str) -> Verdict {
    if annotation == Some(CHECK_SKIP) {
        return Verdict::Skipped;
    }
    let labelled = local.node_groups.as_ref().filter(|l| !l.is_empty());
    if let (Some(nodes), Some(group)) = (labelled, cloud.node_resource_group.as_deref()) {
        let listed = nodes.iter().cloned().collect::<Vec<_>>().join(",");
        if nodes.iter().any(|l| l.eq_ignore_ascii_case(group)) {
            return Verdict::Same(format!(
                "its node resource group {group} is this cluster's nodes' {NODE_CLUSTER_LABEL}"
            ));
        }
        return Verdict::Refused(format!(
            "{cluster} is not the cluster the operator runs in: its node resource group is {group}, while this \
             cluster's nodes carry {NODE_CLUSTER_LABEL}={listed}. Switching it would turn KMS off there while this \
             cluster's Secrets are rewritten, so nothing was changed: point spec.provider at this cluster."
        ));
    }
    let fqdns: Vec<String> = cloud.api_server_fqdns.iter().map(|f| host(f)).collect();
    if let Some(f) = fqdns.iter().find(|f| local.api_hosts.contains(*f)) {
        return Verdict::Same(format!("its API server FQDN {f} is the host the operator reaches its API server at"));
    }
    let nodes = match (&local.node_groups, labelled) {
        (None, _) => "the operator may not list Nodes (the chart grants it with the KmsKeyVaultMode controller)".into(),
        (Some(_), None) => format!("no node of this cluster carries the label {NODE_CLUSTER_LABEL}"),
        (Some(_), Some(l)) => format!(
            "the cloud reports no node resource group for it (this cluster's nodes carry {NODE_CLUSTER_LABEL}={})",
            l.iter().cloned().collect::<Vec<_>>().join(",")
        ),
    };
    let fqdn = if fqdns.is_empty() {
        "the cloud reports no API server FQDN for it".to_string()
    } else {
        let hosts = local.api_hosts.iter().cloned().collect::<Vec<_>>().join(", ");
        let hosts = if hosts.is_empty() { "none known".to_string() } else { hosts };
        format!(
            "its API server FQDN ({}) is not the host the operator reaches its API server at ({hosts})",
            fqdns.join(", ")
        )
    };
    let set = match annotation {
        Some(other) => format!(" (it is set to {other:?}; only {CHECK_SKIP:?} skips the check)"),
        None => String::new(),
    };
    Verdict::Refused(format!(
        "Cannot tell whether {cluster} is the cluster the operator runs in: {nodes}, and {fqdn}. Nothing was changed. \
         If spec.provider does name the cluster the operator runs in, annotate the KmsKeyVaultMode \
         {CHECK_ANNOTATION}={CHECK_SKIP}{set}."
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cloud(group: Option<&str>, fqdns: &[&str]) -> ClusterIdentity {
        ClusterIdentity {
            node_resource_group: group.map(String::from),
            api_server_fqdns: fqdns.iter().map(|s| s.to_string()).collect(),
        }
    }

    fn local(labels: Option<&[&str]>, hosts: &[&str]) -> Local {
        Local {
            node_groups: labels.map(|l| l.iter().map(|s| s.to_string()).collect()),
            api_hosts: hosts.iter().map(|s| s.to_string()).collect(),
        }
    }

    const FQDN: &str = "aks-dns-1a2b.hcp.westeurope.azmk8s.io";

    #[test]
    fn labelled_nodes_decide_another_group_is_refused_whatever_the_fqdn() {
        let ours = local(Some(&["MC_rg_aks_westeurope"]), &[FQDN]);
        let same = judge(&cloud(Some("mc_rg_aks_westeurope"), &[]), &ours, None, "aks");
        assert!(matches!(&same, Verdict::Same(m) if m.contains("node resource group")), "{same:?}");
        let Verdict::Refused(m) = judge(&cloud(Some("MC_rg_other_westeurope"), &[FQDN]), &ours, None, "other") else {
            panic!("another cluster was accepted: the nodes say so even if the FQDN matches")
        };
        assert!(m.contains("MC_rg_other_westeurope") && m.contains("MC_rg_aks_westeurope"), "{m}");
    }

    #[test]
    fn without_labelled_nodes_the_api_server_fqdn_can_tell() {
        for nodes in [None, Some(&[][..])] {
            let l = local(nodes, &["10.0.0.1", FQDN]);
            let v =
                judge(&cloud(Some("MC_rg_aks_westeurope"), &["other.example", &format!("{FQDN}.")]), &l, None, "aks");
            assert!(matches!(&v, Verdict::Same(m) if m.contains(FQDN)), "{v:?}");
        }
        // The private cluster's FQDN counts too, case aside.
        let l = local(Some(&[]), &["aks-1.privatelink.westeurope.azmk8s.io"]);
        let v = judge(&cloud(None, &[FQDN, "AKS-1.privatelink.westeurope.azmk8s.io"]), &l, None, "aks");
        assert!(matches!(v, Verdict::Same(_)), "{v:?}");
    }

    #[test]
    fn when_nothing_tells_it_is_refused_naming_what_was_compared_and_the_override() {
        let cases = [
            (local(None, &["10.0.0.1"]), "may not list Nodes"),
            (local(Some(&[]), &["10.0.0.1"]), "no node of this cluster carries"),
            (local(Some(&["MC_rg_aks_westeurope"]), &["10.0.0.1"]), "no node resource group"),
        ];
        for (l, says) in cases {
            let group = if says.contains("no node resource group") { None } else { Some("MC_rg_aks_westeurope") };
            let Verdict::Refused(m) = judge(&cloud(group, &[FQDN]), &l, None, "aks") else {
                panic!("accepted without a way to tell: {l:?}")
            };
            assert!(m.contains(says) && m.contains(FQDN) && m.contains("10.0.0.1"), "{m}");
            assert!(m.contains("clustersecurity.io/managed-cluster-check=skip"), "{m}");
        }
        let Verdict::Refused(m) = judge(&cloud(None, &[]), &local(Some(&[]), &[]), Some("true"), "aks") else {
            panic!("a value other than skip skipped the check")
        };
        assert!(m.contains("no API server FQDN") && m.contains("\"true\""), "{m}");
    }

    #[test]
    fn the_annotation_skips_the_check() {
        let v = judge(&cloud(Some("x"), &[]), &local(None, &[]), Some(CHECK_SKIP), "aks");
        assert_eq!(v, Verdict::Skipped);
    }
}
