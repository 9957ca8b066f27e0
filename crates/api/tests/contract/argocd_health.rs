//! The Argo CD health check (gitops/argocd/health.lua) run by a real Lua 5.1 interpreter (Debian
//! `lua5.1`, as Argo CD embeds gopher-lua, a Lua 5.1) against status fixtures: healthy,
//! progressing and degraded objects of each kind. Also: the argocd-cm snippet carries the script
//! verbatim for all three kinds.

use std::io::Write;
use std::process::{Command, Stdio};

use serde_json::Value;

const SCRIPT: &str = include_str!("../../../../gitops/argocd/health.lua");

/// A JSON value as a Lua table constructor.
fn lua(v: &Value) -> String {
    match v {
        Value::Null => "nil".into(),
        Value::Bool(b) => b.to_string(),
        Value::Number(n) => n.to_string(),
        Value::String(s) => format!("{s:?}"),
        Value::Array(a) => format!("{{{}}}", a.iter().map(lua).collect::<Vec<_>>().join(", ")),
        Value::Object(o) => {
            format!("{{{}}}", o.iter().map(|(k, v)| format!("[{k:?}] = {}", lua(v))).collect::<Vec<_>>().join(", "))
        }
    }
}

/// Run the health script on `obj` the way Argo CD does (the script's body as a function with
/// `obj` in scope): (status, message).
fn health(obj: &Value) -> (String, String) {
    let program = format!(
        "obj = {}\nlocal check = function()\n{SCRIPT}\nend\nlocal hs = check()\nio.write(hs.status, \"\\n\", hs.message or \"\")\n",
        lua(obj)
    );
    let mut child = Command::new("lua5.1")
        .arg("-")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("lua5.1 runs (Debian package lua5.1; .ci/run installs it)");
    child.stdin.take().unwrap().write_all(program.as_bytes()).unwrap();
    let out = child.wait_with_output().unwrap();
    assert!(out.status.success(), "lua: {}", String::from_utf8_lossy(&out.stderr));
    let text = String::from_utf8(out.stdout).unwrap();
    let (status, message) = text.split_once('\n').unwrap_or((&text, ""));
    (status.to_string(), message.to_string())
}

#[test]
fn health_of_every_fixture() {
    let cases: Vec<Value> =
        serde_yaml::from_str(include_str!("../fixtures/argocd/health-cases.yaml")).expect("fixtures parse");
    assert!(cases.len() >= 9, "healthy, progressing and degraded for each kind");
    for kind in ["ClusterSecurityPolicy", "CertificateRotation", "KmsKeyVaultMode"] {
        for want in ["Healthy", "Progressing", "Degraded"] {
            assert!(
                cases.iter().any(|c| c["expect"] == want && c["object"]["kind"] == kind),
                "no {want} fixture for {kind}"
            );
        }
    }
    for case in &cases {
        let (status, message) = health(&case["object"]);
        let name = case["name"].as_str().unwrap();
        assert_eq!(status, case["expect"].as_str().unwrap(), "{name}: {message}");
        if let Some(part) = case["messageContains"].as_str() {
            assert!(message.contains(part), "{name}: message {message:?} lacks {part:?}");
        }
    }
}

#[test]
fn argocd_cm_carries_the_script_for_every_kind() {
    let cm: Value = serde_yaml::from_str(include_str!("../../../../gitops/argocd/argocd-cm.yaml")).unwrap();
    for kind in ["ClusterSecurityPolicy", "CertificateRotation", "KmsKeyVaultMode"] {
        let key = format!("resource.customizations.health.clustersecurity.io_{kind}");
        assert_eq!(cm["data"][&key].as_str(), Some(SCRIPT), "{key} differs from gitops/argocd/health.lua");
    }
}
