//! CRD upgrade and uninstall as docs/install.md tells them: the previous version's CRDs
//! installed, objects of every kind created under them, then this version's `crds/` applied
//! server-side over them (what `helm upgrade` does not do by itself). Every object is kept,
//! unchanged, and reads as this version's types; the new schema is served and enforced. Then the
//! operator is installed from `deploy/install.yaml` and uninstalled the documented way (`kubectl
//! delete -f deploy/operator.yaml`): the CRDs, every object and the Secrets the operator kept stay.

use cluster_security_api::{CertificateRotation, ClusterSecurityPolicy, KmsKeyVaultMode};
use cluster_security_testbed::operator;
use cluster_security_testbed::{ControlPlane, Options};
use kube::api::{Api, ListParams};
use kube::ResourceExt;

fn kubectl_ok(cp: &ControlPlane, args: &[&str]) -> String {
    let out = cp.kubectl(args);
    assert!(out.status.success(), "kubectl {}: {}", args.join(" "), String::from_utf8_lossy(&out.stderr));
    String::from_utf8_lossy(&out.stdout).into_owned()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn crds_upgrade_in_place_and_keep_every_object() {
    let cp = ControlPlane::start(Options::default()).expect("control plane starts");
    let root = cluster_security_testbed::repo_root();
    let previous = root.join("crates/operator/tests/fixtures/crds-previous.yaml");
    kubectl_ok(&cp, &["apply", "-f", previous.to_str().unwrap()]);
    operator::wait_established(&cp).unwrap();
    for f in [
        "00-namespace-and-brokers.yaml",
        "clustersecuritypolicy.yaml",
        "certificaterotation.yaml",
        "kmskeyvaultmode.yaml",
    ] {
        // Today's examples may use fields the previous schema does not have (spec.mounts): the
        // API server prunes them, as it did for anyone applying them then, and kubectl's
        // client-side check would refuse them first.
        kubectl_ok(&cp, &["apply", "--validate=false", "-f", root.join("examples").join(f).to_str().unwrap()]);
    }
    let uids = |cp: &ControlPlane| {
        kubectl_ok(
            cp,
            &[
                "get",
                "clustersecurity",
                "-A",
                "-o",
                "jsonpath={range .items[*]}{.kind}/{.metadata.name}/{.metadata.uid}/{.metadata.generation} {end}",
            ],
        )
        .split_whitespace()
        .map(String::from)
        .collect::<std::collections::BTreeSet<_>>()
    };
    let before = uids(&cp);
    assert_eq!(before.len(), 3, "{before:?}");

    // The documented upgrade step: this version's CRDs, server-side (they are too large for the
    // last-applied annotation of a client-side apply), taking over the fields the old apply set.
    let crds = root.join("crds");
    kubectl_ok(&cp, &["apply", "--server-side", "--force-conflicts", "-f", crds.to_str().unwrap()]);
    operator::wait_established(&cp).unwrap();
    assert_eq!(uids(&cp), before, "the same objects, unchanged (same uid and generation)");

    // They read as this version's types, and the new schema is served.
    let client = cp.client().await.unwrap();
    let csp = Api::<ClusterSecurityPolicy>::all(client.clone()).list(&ListParams::default()).await.unwrap();
    let rot = Api::<CertificateRotation>::all(client.clone()).list(&ListParams::default()).await.unwrap();
    let kms = Api::<KmsKeyVaultMode>::all(client).list(&ListParams::default()).await.unwrap();
    assert_eq!((csp.items.len(), rot.items.len(), kms.items.len()), (1, 1, 1));
    assert_eq!(csp.items[0].name_any(), "orders");
    let columns = kubectl_ok(&cp, &["get", "csp", "-n", "kafka"]);
    assert!(columns.lines().next().unwrap_or_default().contains("REASON"), "new printer column served: {columns}");
    // The new schema is enforced: a bound this version added (labels are at most 63 characters)
    // refuses what the previous CRDs let through, at the API server, with no webhook installed.
    let long = "x".repeat(64);
    let rotation = format!(
        "apiVersion: clustersecurity.io/v1alpha1\nkind: CertificateRotation\nmetadata: {{name: long, namespace: kafka}}\nspec:\n  clusterRef: {{kind: StatefulSet, name: orders-kafka}}\n  external: {{label: {long}}}\n"
    );
    let out = cp.kubectl_with_stdin(&["apply", "--dry-run=server", "-f", "-"], Some(&rotation));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success() && err.contains("spec.external.label"), "{err}");

    // Install the operator from the one file (server-side), then uninstall it as documented.
    let install = std::fs::read_to_string(root.join("deploy/install.yaml")).unwrap();
    let out = cp.kubectl_with_stdin(
        &["apply", "--server-side", "--force-conflicts", "-f", "-"],
        Some(&operator::served_by(&cp, &install)),
    );
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    // A CA the operator kept (deletionPolicy Retain): labelled as its own, owned by nobody.
    let kept = "apiVersion: v1\nkind: Secret\nmetadata:\n  name: orders-kafka-external-ca\n  namespace: kafka\n  labels: {app.kubernetes.io/managed-by: cluster-security-operator}\nstringData: {ca.crt: kept}\n";
    let out = cp.kubectl_with_stdin(&["apply", "-f", "-"], Some(kept));
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let operator_yaml = operator::served_by(&cp, &std::fs::read_to_string(root.join("deploy/operator.yaml")).unwrap());
    let out = cp.kubectl_with_stdin(&["delete", "--ignore-not-found", "--wait=true", "-f", "-"], Some(&operator_yaml));
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let gone = kubectl_ok(&cp, &["get", "deploy,validatingwebhookconfiguration,clusterrole", "-A", "-o", "name"]);
    assert!(!gone.contains("cluster-security-operator"), "the operator is gone: {gone}");
    operator::wait_established(&cp).unwrap();
    assert_eq!(uids(&cp), before, "every resource is kept");
    let secret = kubectl_ok(&cp, &["get", "secret", "orders-kafka-external-ca", "-n", "kafka", "-o", "name"]);
    assert_eq!(secret.trim(), "secret/orders-kafka-external-ca", "kept CA Secrets stay");
}
