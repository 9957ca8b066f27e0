//! Issue 33: the chart's CRDs are a template (`crds.enabled`, `crds.keep`), so `helm upgrade`
//! upgrades them and `helm uninstall` keeps them. On a control plane of its own: the previous
//! chart (tests/fixtures/chart-f55fa84.tgz: the chart as of commit f55fa84, CRDs in `crds/`,
//! packaged as it was) installed with Helm's library, an object created, the live CRD changed
//! the way an older version's would differ; `helm upgrade` to this chart writes the chart's
//! CRDs over it (spec restored, Helm's ownership and the keep policy on them); `helm uninstall`
//! removes the operator and leaves the CRDs and the object. No pod runs here: nothing waits for
//! the Deployment.

use cluster_security_testbed::operator;
use cluster_security_testbed::{ControlPlane, Options};

const RELEASE: &str = "csop";
const NAMESPACE: &str = "csop-system";
const CRDS: [&str; 3] = [
    "clustersecuritypolicies.clustersecurity.io",
    "certificaterotations.clustersecurity.io",
    "kmskeyvaultmodes.clustersecurity.io",
];

fn kubectl_ok(cp: &ControlPlane, args: &[&str]) -> String {
    let out = cp.kubectl(args);
    assert!(out.status.success(), "kubectl {}: {}", args.join(" "), String::from_utf8_lossy(&out.stderr));
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// scripts/helm-release.py: install/upgrade/uninstall with Helm's library.
fn helm_run(cp: &ControlPlane, args: &[&str]) -> std::process::Output {
    let root = cluster_security_testbed::repo_root();
    let kubeconfig = cp.kubeconfig_path();
    std::process::Command::new("python3")
        .arg(root.join("scripts/helm-release.py"))
        .args([kubeconfig.to_str().unwrap(), NAMESPACE, RELEASE])
        .args(args)
        .output()
        .expect("python3 runs")
}

fn helm(cp: &ControlPlane, args: &[&str]) -> String {
    let out = helm_run(cp, args);
    assert!(
        out.status.success(),
        "helm {}: {}{}",
        args.join(" "),
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

fn crd_field(cp: &ControlPlane, crd: &str, jsonpath: &str) -> String {
    kubectl_ok(cp, &["get", "crd", crd, "-o", &format!("jsonpath={jsonpath}")])
}

const KEEP: &str = "{.metadata.annotations.helm\\.sh/resource-policy}";
const OWNER: &str = "{.metadata.annotations.meta\\.helm\\.sh/release-name}";
const MANAGED_BY: &str = "{.metadata.labels.app\\.kubernetes\\.io/managed-by}";
const DESCRIPTION: &str = "{.spec.versions[0].schema.openAPIV3Schema.description}";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn helm_upgrade_upgrades_the_crds_and_uninstall_keeps_them() {
    let cp = ControlPlane::start(Options::default()).expect("control plane starts");
    let root = cluster_security_testbed::repo_root();
    let previous = root.join("crates/operator/tests/fixtures/chart-f55fa84.tgz");
    helm(&cp, &["install", previous.to_str().unwrap()]);
    operator::wait_established(&cp).unwrap();
    // The previous chart installed its CRDs from crds/: not part of the release, no keep policy.
    for crd in CRDS {
        assert_eq!(crd_field(&cp, crd, KEEP), "", "{crd}");
        assert_eq!(crd_field(&cp, crd, OWNER), "", "{crd}");
    }
    let chart_description = crd_field(&cp, CRDS[2], DESCRIPTION);
    assert!(!chart_description.is_empty(), "the KmsKeyVaultMode CRD has a description");

    // No operator runs here to answer the webhook: remove it, then create an object to keep.
    kubectl_ok(&cp, &["delete", "validatingwebhookconfiguration", "cluster-security-operator"]);
    kubectl_ok(&cp, &["apply", "-f", root.join("examples/kmskeyvaultmode.yaml").to_str().unwrap()]);
    let uid = || kubectl_ok(&cp, &["get", "kmsmode", "cluster", "-o", "jsonpath={.metadata.uid}"]);
    let before = uid();
    assert!(!before.is_empty());
    // The live CRD as an older version left it: a chart with crds/ would never change it again.
    let older = r#"[{"op": "replace", "path": "/spec/versions/0/schema/openAPIV3Schema/description", "value": "an older version's schema"}]"#;
    // Written the way this version's docs told to upgrade CRDs: kubectl apply --server-side
    // (field manager kubectl), which Helm's server-side apply then meets as a conflict.
    kubectl_ok(&cp, &["patch", "crd", CRDS[2], "--type=json", "-p", older, "--field-manager=kubectl"]);
    assert_eq!(crd_field(&cp, CRDS[2], DESCRIPTION), "an older version's schema");

    // helm upgrade to this chart: Helm does not take over objects it did not create (the
    // previous chart's crds/ were created outside the release) ...
    let chart = root.join("charts/cluster-security-operator");
    let refused = helm_run(&cp, &["upgrade", chart.to_str().unwrap()]);
    let err = String::from_utf8_lossy(&refused.stderr);
    assert!(!refused.status.success() && err.contains("invalid ownership metadata"), "{err}");
    // ... until they carry the release's ownership: the one-time step docs/install.md gives
    // (or helm upgrade --take-ownership).
    for crd in CRDS {
        kubectl_ok(&cp, &["label", "crd", crd, "app.kubernetes.io/managed-by=Helm"]);
        let (name, ns) =
            (format!("meta.helm.sh/release-name={RELEASE}"), format!("meta.helm.sh/release-namespace={NAMESPACE}"));
        kubectl_ok(&cp, &["annotate", "crd", crd, &name, &ns]);
    }
    assert_eq!(crd_field(&cp, CRDS[2], KEEP), "", "not yet the chart's CRDs");
    // Fields another manager wrote: helm upgrade --force-conflicts takes them over (the other
    // step docs/install.md gives); without it Helm refuses, naming the field.
    let refused = helm_run(&cp, &["upgrade", chart.to_str().unwrap()]);
    let err = String::from_utf8_lossy(&refused.stderr);
    assert!(!refused.status.success() && err.contains("conflict with \"kubectl\""), "{err}");
    // Then the CRDs are the chart's, owned by the release, kept.
    helm(&cp, &["upgrade-force-conflicts", chart.to_str().unwrap()]);
    operator::wait_established(&cp).unwrap();
    assert_eq!(crd_field(&cp, CRDS[2], DESCRIPTION), chart_description, "helm upgrade wrote the chart's CRD");
    for crd in CRDS {
        assert_eq!(crd_field(&cp, crd, KEEP), "keep", "{crd}");
        assert_eq!(crd_field(&cp, crd, OWNER), RELEASE, "{crd}");
        assert_eq!(crd_field(&cp, crd, MANAGED_BY), "Helm", "{crd}");
    }
    assert_eq!(uid(), before, "the object survives the upgrade");

    // helm uninstall: the operator goes, the CRDs and the object stay.
    helm(&cp, &["uninstall"]);
    let left = kubectl_ok(&cp, &["get", "deploy,clusterrole,validatingwebhookconfiguration", "-A", "-o", "name"]);
    assert!(!left.contains("cluster-security-operator"), "the release is uninstalled: {left}");
    let crds = kubectl_ok(&cp, &["get", "crd", "-o", "name"]);
    for crd in CRDS {
        assert!(crds.contains(crd), "{crd} kept by helm uninstall: {crds}");
    }
    operator::wait_established(&cp).unwrap();
    assert_eq!(uid(), before, "the object survives the uninstall");
}
