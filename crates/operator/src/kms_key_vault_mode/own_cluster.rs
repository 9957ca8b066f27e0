//! KMS acts on its own cluster: before an operation opens (so before any cloud write), the
//! managed cluster `spec.provider` names must be the one the operator runs in. On AKS every node
//! carries the label `kubernetes.azure.com/cluster` with the managed cluster's node resource
//! group (`properties.nodeResourceGroup`); the two are compared. Pointed at another cluster, a
//! switch would turn KMS off there while this cluster's Secrets are rewritten: refused, Stalled
//! `ForeignCluster`. Where the nodes cannot say (no such label: not AKS nodes, virtual nodes
//! only; or no right to list Nodes), the switch is refused the same way unless the object carries
//! the explicit override annotation `clustersecurity.io/managed-cluster-check: skip`.
//!
//! What this module may touch: nothing; it lists Nodes' metadata.

use std::collections::BTreeSet;

use k8s_openapi::api::core::v1::Node;
use kube::api::ListParams;
use kube::{Api, Client};

use super::provider::ClusterIdentity;
use crate::reconciler::{Error, Named};

/// The label AKS puts on every node: the managed cluster's node resource group.
pub const NODE_CLUSTER_LABEL: &str = "kubernetes.azure.com/cluster";
/// Set to `skip` on a KmsKeyVaultMode to act without the check (clusters whose nodes cannot
/// tell, after checking by hand that `spec.provider` names this cluster).
pub const CHECK_ANNOTATION: &str = "clustersecurity.io/managed-cluster-check";

/// What the check found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Verdict {
    /// The managed cluster is this one.
    Same,
    /// The check was skipped by the annotation.
    Skipped,
    /// Another cluster, or no way to tell: the message says which, and the way out.
    Refused(String),
}

/// The nodes' values of [`NODE_CLUSTER_LABEL`] (first page), or None when Nodes may not be listed.
pub async fn local_node_groups(client: &Client) -> Result<Option<BTreeSet<String>>, Error> {
    let lp = ListParams::default().labels(NODE_CLUSTER_LABEL).limit(100);
    match Api::<Node>::all(client.clone()).list_metadata(&lp).await {
        Ok(list) => Ok(Some(
            list.items
                .into_iter()
                .filter_map(|n| n.metadata.labels.and_then(|mut l| l.remove(NODE_CLUSTER_LABEL)))
                .collect(),
        )),
        Err(kube::Error::Api(e)) if e.code == 403 => Ok(None),
        Err(source) => Err(Error::Read { object: Named::new("Node", "", "*"), source: Box::new(source) }),
    }
}

/// Judge whether `cloud` (named `cluster` in messages) is the cluster whose nodes carry `local`
/// (None: Nodes not readable). `skip`: the override annotation is set.
pub fn judge(cloud: &ClusterIdentity, local: Option<&BTreeSet<String>>, skip: bool, cluster: &str) -> Verdict {
    if skip {
        return Verdict::Skipped;
    }
    let override_hint = format!(
        "if spec.provider does name the cluster the operator runs in, annotate the KmsKeyVaultMode {CHECK_ANNOTATION}=skip"
    );
    let Some(local) = local.filter(|l| !l.is_empty()) else {
        let why = match local {
            None => {
                "the operator may not list Nodes (the chart grants it with the KmsKeyVaultMode controller)".to_string()
            }
            Some(_) => format!("no node of this cluster carries the label {NODE_CLUSTER_LABEL}"),
        };
        return Verdict::Refused(format!(
            "Cannot tell whether {cluster} is the cluster the operator runs in: {why}. Nothing was changed; {override_hint}."
        ));
    };
    match cloud.node_resource_group.as_deref() {
        Some(group) if local.iter().any(|l| l.eq_ignore_ascii_case(group)) => Verdict::Same,
        Some(group) => Verdict::Refused(format!(
            "{cluster} is not the cluster the operator runs in: its node resource group is {group}, while this cluster's \
             nodes carry {NODE_CLUSTER_LABEL}={}. Switching it would turn KMS off there while this cluster's Secrets are \
             rewritten, so nothing was changed: point spec.provider at this cluster.",
            local.iter().cloned().collect::<Vec<_>>().join(",")
        )),
        None => Verdict::Refused(format!(
            "Cannot tell whether {cluster} is the cluster the operator runs in: the cloud reports no node resource group \
             for it. Nothing was changed; {override_hint}."
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cloud(group: Option<&str>) -> ClusterIdentity {
        ClusterIdentity { node_resource_group: group.map(String::from) }
    }

    fn nodes(labels: &[&str]) -> BTreeSet<String> {
        labels.iter().map(|s| s.to_string()).collect()
    }

    #[test]
    fn the_managed_cluster_must_be_the_one_whose_nodes_the_operator_sees() {
        let ours = nodes(&["MC_rg_aks_westeurope"]);
        assert_eq!(judge(&cloud(Some("mc_rg_aks_westeurope")), Some(&ours), false, "aks"), Verdict::Same);
        let Verdict::Refused(m) = judge(&cloud(Some("MC_rg_other_westeurope")), Some(&ours), false, "other") else {
            panic!("another cluster was accepted")
        };
        assert!(m.contains("MC_rg_other_westeurope") && m.contains("MC_rg_aks_westeurope"), "{m}");
        for (local, says) in [(None, "may not list Nodes"), (Some(nodes(&[])), "no node of this cluster carries")] {
            let Verdict::Refused(m) = judge(&cloud(Some("MC_rg_aks_westeurope")), local.as_ref(), false, "aks") else {
                panic!("accepted without a way to tell")
            };
            assert!(m.contains(says) && m.contains(CHECK_ANNOTATION), "{m}");
        }
        let Verdict::Refused(m) = judge(&cloud(None), Some(&ours), false, "aks") else { panic!("no group accepted") };
        assert!(m.contains("no node resource group"), "{m}");
        assert_eq!(judge(&cloud(Some("x")), None, true, "aks"), Verdict::Skipped, "the explicit override");
    }
}
