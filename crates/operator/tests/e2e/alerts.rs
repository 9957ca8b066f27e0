//! Alerts that name the object: every object has its own series in `/metrics` while it exists
//! (and none once it is gone), and the chart's PrometheusRule, evaluated by Prometheus' own rule
//! engine (`promtool test rules`) over a real scrape, fires alerts that carry the object's kind,
//! namespace and name and link to its runbook entry in docs/troubleshooting.md.

use std::collections::BTreeSet;
use std::time::Duration;

use crate::support::{apply, env, helm_render, stderr, stdout, wait_jsonpath, webhook_ready};
use cluster_security_testbed::operator::http_get;
use cluster_security_testbed::wait_until;

const FAILING: &str = "alerts-failing";
const HEALTHY: &str = "alerts-healthy";
/// With promtool's clock at the epoch, certificates valid for years "expire within" this many
/// days, so that the expiry alert fires over the scrape's real expiry times.
const EXPIRY_DAYS: u32 = 40_000;

fn rotation(ns: &str, container: &str) -> String {
    format!(
        "apiVersion: clustersecurity.io/v1alpha1\nkind: CertificateRotation\nmetadata: {{name: certs, namespace: {ns}}}\nspec:\n  clusterRef: {{kind: StatefulSet, name: kafka}}\n  external: {{label: e1}}\n  internal: {{label: i1}}\n  rolloutTimeoutSeconds: 120\n  mounts: {{container: {container}}}\n"
    )
}

async fn wait_state(ns: &str, state: &str) -> String {
    let path = "{.status.operations[0].operationState}/{.status.conditions[?(@.type==\"Stalled\")].reason}";
    wait_jsonpath(&env().cp, ("certificaterotation", ns, "certs"), path, 120, |t| t.starts_with(state)).await
}

/// `/metrics` once `done` holds for it.
async fn scrape_until(what: &str, done: impl Fn(&str) -> bool) -> String {
    let port = env().operator.health_port;
    let done = &done;
    wait_until(Duration::from_secs(60), what, || async move {
        let (_, text) = http_get(port, "/metrics").ok_or("no answer")?;
        if done(&text) {
            Ok(text)
        } else {
            Err(text)
        }
    })
    .await
    .unwrap()
}

/// The samples of a scrape about `namespaces` or about no object (no `namespace` label), as
/// promtool input series (`name{labels}` and its value): other tests' objects share the
/// operator, and promtool wants the exact set of alerts.
fn input_series(scrape: &str, namespaces: &[&str]) -> Vec<(String, String)> {
    scrape
        .lines()
        .filter(|l| !l.starts_with('#') && !l.is_empty())
        .filter(|l| {
            !l.contains("namespace=\"") || namespaces.iter().any(|ns| l.contains(&format!("namespace=\"{ns}\"")))
        })
        .filter(|l| !l.contains("kmskeyvaultmode=\""))
        .map(|l| {
            let (series, value) = l.rsplit_once(' ').unwrap();
            (series.to_string(), value.to_string())
        })
        .collect()
}

/// One alert promtool must see: its labels and annotations, exactly.
fn alert(labels: &[(&str, &str)], annotations: &[(&str, String)]) -> serde_json::Value {
    let labels: serde_json::Map<_, _> = labels.iter().map(|(k, v)| (k.to_string(), (*v).into())).collect();
    let annotations: serde_json::Map<_, _> =
        annotations.iter().map(|(k, v)| (k.to_string(), v.as_str().into())).collect();
    serde_json::json!({"exp_labels": labels, "exp_annotations": annotations})
}

/// The rendered PrometheusRule's rules, by alert name.
fn rules(values: &str) -> (serde_yaml::Value, Vec<serde_yaml::Value>) {
    let out = helm_render(Some(values));
    assert!(out.status.success(), "{}", stderr(&out));
    let rendered = stdout(&out);
    let doc = rendered.split("\n---\n").find(|d| d.contains("kind: PrometheusRule")).expect("a PrometheusRule");
    let rule: serde_yaml::Value = serde_yaml::from_str(doc).unwrap();
    let list = rule["spec"]["groups"][0]["rules"].as_sequence().unwrap().clone();
    (rule["spec"].clone(), list)
}

fn annotation(rules: &[serde_yaml::Value], alert: &str, key: &str) -> String {
    let rule = rules.iter().find(|r| r["alert"].as_str() == Some(alert)).unwrap_or_else(|| panic!("no {alert}"));
    rule["annotations"][key].as_str().unwrap().to_string()
}

/// Every alert links to an entry that exists: its own in troubleshooting.md's Alerts section,
/// or (Stalled) the entry of its reason.
#[test]
fn every_alert_links_to_its_runbook_entry() {
    let base = "https://runbooks.example/troubleshooting.md";
    let (_, rules) =
        rules(&format!(r#"{{"metrics": {{"prometheusRule": {{"enabled": true, "runbookBaseUrl": "{base}"}}}}}}"#));
    let doc = std::fs::read_to_string(cluster_security_testbed::repo_root().join("docs/troubleshooting.md")).unwrap();
    let alerts_section = doc.split("\n## Alerts\n").nth(1).expect("troubleshooting.md has an Alerts section");
    for rule in &rules {
        let name = rule["alert"].as_str().unwrap();
        let url = rule["annotations"]["runbook_url"].as_str().unwrap_or_else(|| panic!("{name} has no runbook_url"));
        let anchor = url.strip_prefix(&format!("{base}#")).unwrap_or_else(|| panic!("{name}: {url}"));
        if name == "ClusterSecurityResourceStalled" {
            assert_eq!(anchor, "{{ $labels.reason | toLower }}", "the Stalled alert links to its reason's entry");
        } else {
            assert_eq!(anchor, name.to_lowercase(), "{name} links to its own entry");
            assert!(alerts_section.contains(&format!("\n### {name}\n")), "troubleshooting.md has no entry for {name}");
        }
    }
}

#[tokio::test]
async fn alerts_name_the_object_and_its_series_leave_with_it() {
    let cp = &env().cp;
    webhook_ready(cp).await;
    // A rotation that fails (no container `broker`: UPDATE_FAILED, Stalled ContainerNotFound) and
    // one that completes (its certificates have expiry series).
    crate::support::brokers(cp, FAILING, "kafka", 1).await;
    crate::support::brokers(cp, HEALTHY, "kafka", 1).await;
    apply(cp, &rotation(FAILING, "broker"));
    apply(cp, &rotation(HEALTHY, "kafka"));
    assert!(wait_state(FAILING, "UPDATE_FAILED").await.ends_with("/ContainerNotFound"));
    wait_state(HEALTHY, "UPDATE_COMPLETE").await;

    let object = |ns: &str| format!("kind=\"CertificateRotation\",namespace=\"{ns}\",name=\"certs\"");
    let (failing, healthy) = (object(FAILING), object(HEALTHY));
    let expected = [
        format!("csop_resource_ready{{{failing}}} 0"),
        format!("csop_resource_stalled{{{failing},reason=\"ContainerNotFound\"}} 1"),
        format!("csop_resource_operation_failed{{{failing}}} 1"),
        format!("csop_resource_ready{{{healthy}}} 1"),
    ];
    let scrape = scrape_until("each object's series", |t| expected.iter().all(|e| t.contains(e.as_str()))).await;
    assert!(!scrape.contains(&format!("csop_resource_stalled{{{healthy}")), "a healthy object is not stalled");
    assert!(!scrape.contains(&format!("csop_resource_operation_failed{{{healthy}")));
    let slots: BTreeSet<String> = scrape
        .lines()
        .filter_map(|l| l.strip_prefix("csop_certificate_expiration_timestamp_seconds{"))
        .filter(|l| l.contains(&format!("namespace=\"{HEALTHY}\"")))
        .filter_map(|l| Some(l.split("slot=\"").nth(1)?.split('"').next()?.to_string()))
        .collect();
    assert!(slots.contains("external") && slots.contains("internal"), "{slots:?}");

    // The chart's rules, evaluated over this scrape by Prometheus' engine.
    let base = "https://runbooks.example/troubleshooting.md";
    let values = format!(
        r#"{{"metrics": {{"prometheusRule": {{"enabled": true, "runbookBaseUrl": "{base}", "certificateExpiryDays": {EXPIRY_DAYS}}}}}}}"#
    );
    let (spec, rules) = rules(&values);
    let description = |alert: &str| {
        annotation(&rules, alert, "description")
            .replace("{{ $labels.kind }}", "CertificateRotation")
            .replace("{{ $labels.namespace }}", FAILING)
            .replace("{{ $labels.name }}", "certs")
            .replace("{{ $labels.reason }}", "ContainerNotFound")
    };
    let failed = alert(
        &[("severity", "warning"), ("kind", "CertificateRotation"), ("namespace", FAILING), ("name", "certs")],
        &[
            ("summary", format!("The latest operation of CertificateRotation {FAILING}/certs failed")),
            ("description", description("ClusterSecurityOperationFailed")),
            ("runbook_url", format!("{base}#clustersecurityoperationfailed")),
        ],
    );
    let stalled = alert(
        &[
            ("severity", "warning"),
            ("kind", "CertificateRotation"),
            ("namespace", FAILING),
            ("name", "certs"),
            ("reason", "ContainerNotFound"),
        ],
        &[
            ("summary", format!("CertificateRotation {FAILING}/certs stalled with reason ContainerNotFound for 15m")),
            ("description", description("ClusterSecurityResourceStalled")),
            ("runbook_url", format!("{base}#containernotfound")),
        ],
    );
    let expiring: Vec<serde_json::Value> = slots
        .iter()
        .map(|slot| {
            alert(
                &[
                    ("severity", "warning"),
                    ("kind", "CertificateRotation"),
                    ("namespace", HEALTHY),
                    ("name", "certs"),
                    ("slot", slot),
                ],
                &[
                    (
                        "summary",
                        format!(
                            "The {slot} certificate of CertificateRotation {HEALTHY}/certs expires within {EXPIRY_DAYS} days"
                        ),
                    ),
                    ("description", annotation(&rules, "ClusterSecurityCertificateExpiringSoon", "description")),
                    ("runbook_url", format!("{base}#clustersecuritycertificateexpiringsoon")),
                ],
            )
        })
        .collect();
    let series: Vec<serde_json::Value> = input_series(&scrape, &[FAILING, HEALTHY])
        .into_iter()
        .map(|(series, value)| serde_json::json!({"series": series, "values": format!("{value}+0x24")}))
        .collect();
    let eval = |alertname: &str, exp: Vec<serde_json::Value>| serde_json::json!({"eval_time": "120m", "alertname": alertname, "exp_alerts": exp});
    let test = serde_json::json!({
        "rule_files": ["rules.yaml"],
        "evaluation_interval": "1m",
        "tests": [{
            "interval": "5m",
            "input_series": series,
            "alert_rule_test": [
                eval("ClusterSecurityOperationFailed", vec![failed]),
                eval("ClusterSecurityResourceStalled", vec![stalled]),
                eval("ClusterSecurityCertificateExpiringSoon", expiring),
                // A leader, no shedding, errors not growing: these stay quiet.
                eval("ClusterSecurityOperatorNoLeader", vec![]),
                eval("ClusterSecurityWebhookShedding", vec![]),
                eval("ClusterSecurityReconcileErrors", vec![]),
            ],
        }],
    });
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("rules.yaml"), serde_yaml::to_string(&spec).unwrap()).unwrap();
    std::fs::write(dir.path().join("test.yaml"), serde_yaml::to_string(&test).unwrap()).unwrap();
    let promtool = |args: &[&str]| {
        std::process::Command::new("promtool")
            .args(args)
            .current_dir(dir.path())
            .output()
            .expect("promtool runs (Debian package prometheus; .ci/run installs it)")
    };
    let checked = promtool(&["check", "rules", "rules.yaml"]);
    assert!(checked.status.success(), "{}{}", stdout(&checked), stderr(&checked));
    let tested = promtool(&["test", "rules", "test.yaml"]);
    assert!(tested.status.success(), "promtool test rules:\n{}{}", stdout(&tested), stderr(&tested));

    // Deleted: no series names them any more.
    for ns in [FAILING, HEALTHY] {
        let out = cp.kubectl(&["delete", "certificaterotation", "certs", "-n", ns, "--wait=true"]);
        assert!(out.status.success(), "{}", stderr(&out));
    }
    scrape_until("no series of the deleted objects", |t| {
        !t.lines().any(|l| !l.starts_with('#') && (l.contains(FAILING) || l.contains(HEALTHY)))
    })
    .await;
    crate::support::assert_no_secret_leaks(&[]).await;
}
