//! `crds/` is generated from the Rust types; this fails when someone changes the types and
//! forgets `cargo run -q -- crd > crds/clustersecurity.io_crds.yaml`.

use cluster_security_api::manifests as api;

#[test]
fn crds_directory_matches_the_code() {
    let path = concat!(env!("CARGO_MANIFEST_DIR"), "/../../crds/clustersecurity.io_crds.yaml");
    let on_disk = std::fs::read_to_string(path).expect("crds/clustersecurity.io_crds.yaml exists");
    assert!(
        on_disk == api::crds_yaml(),
        "crds/ is out of date with the API types; regenerate it with\n  cargo run -q -- crd > crds/clustersecurity.io_crds.yaml"
    );
}

#[test]
fn deploy_and_chart_copies_match_the_code() {
    for copy in ["deploy/crds.yaml", "charts/cluster-security-operator/crd-sources/clustersecurity.io_crds.yaml"] {
        let path = format!("{}/../../{copy}", env!("CARGO_MANIFEST_DIR"));
        let on_disk = std::fs::read_to_string(&path).unwrap_or_else(|_| panic!("{copy} exists"));
        assert!(
            on_disk == api::crds_yaml(),
            "{copy} is out of date; regenerate it with\n  cargo run -q -- crd > {copy}"
        );
    }
}

#[test]
fn crds_follow_the_contract() {
    let crds = api::all_crds();
    let names: Vec<(&str, &str, Vec<String>)> = crds
        .iter()
        .map(|c| {
            (c.spec.names.kind.as_str(), c.spec.scope.as_str(), c.spec.names.short_names.clone().unwrap_or_default())
        })
        .collect();
    assert_eq!(
        names,
        vec![
            ("ClusterSecurityPolicy", "Namespaced", vec!["csp".to_string()]),
            ("CertificateRotation", "Namespaced", vec!["certrot".to_string()]),
            ("KmsKeyVaultMode", "Cluster", vec!["kmsmode".to_string()]),
        ]
    );
    let columns = |i: usize| -> Vec<String> {
        crds[i].spec.versions[0]
            .additional_printer_columns
            .as_ref()
            .unwrap()
            .iter()
            .map(|c| c.name.to_uppercase())
            .collect()
    };
    assert_eq!(columns(0), ["CLUSTER", "AUTH", "CLIENT-BROKER", "STATE", "OPERATION", "READY", "REASON", "AGE"]);
    assert_eq!(
        columns(1),
        ["CLUSTER", "EXTERNAL-LABEL", "INTERNAL-LABEL", "CLIENT-IMPACT", "OPERATION", "READY", "REASON", "AGE"]
    );
    assert_eq!(columns(2), ["MODE", "KMS", "PHASE", "PROGRESS", "READY", "REASON", "AGE"]);
    for crd in &crds {
        assert_eq!(crd.spec.group, "clustersecurity.io");
        assert_eq!(crd.spec.names.categories.as_deref(), Some(&["clustersecurity".to_string()][..]));
        let v = &crd.spec.versions[0];
        assert_eq!(v.name, "v1alpha1");
        assert!(v.subresources.as_ref().and_then(|s| s.status.as_ref()).is_some(), "status subresource");
        let schema = serde_json::to_string(&v.schema).unwrap();
        assert!(!schema.contains("Auto-generated derived type"), "kubectl explain needs real descriptions");
    }
}

/// `kubectl explain` documents every field: each property of spec and status, at any depth,
/// carries a description.
#[test]
fn every_field_is_explained() {
    fn walk(path: &str, schema: &serde_json::Value, missing: &mut Vec<String>) {
        if let Some(props) = schema.get("properties").and_then(|p| p.as_object()) {
            for (name, prop) in props {
                let here = format!("{path}.{name}");
                let described = prop.get("description").and_then(|d| d.as_str()).is_some_and(|d| !d.trim().is_empty());
                if !described {
                    missing.push(here.clone());
                }
                walk(&here, prop, missing);
            }
        }
        if let Some(items) = schema.get("items") {
            walk(&format!("{path}[]"), items, missing);
        }
        for key in ["anyOf", "oneOf", "allOf"] {
            for sub in schema.get(key).and_then(|a| a.as_array()).into_iter().flatten() {
                walk(path, sub, missing);
            }
        }
    }
    let mut missing = Vec::new();
    for crd in api::all_crds() {
        let schema = serde_json::to_value(&crd.spec.versions[0].schema).unwrap();
        let root = &schema["openAPIV3Schema"]["properties"];
        for part in ["spec", "status"] {
            walk(&format!("{}.{part}", crd.spec.names.kind), &root[part], &mut missing);
        }
    }
    assert!(missing.is_empty(), "fields without a description ({}):\n{}", missing.len(), missing.join("\n"));
}
