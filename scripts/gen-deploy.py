#!/usr/bin/env python3
"""Write deploy/operator.yaml from the Helm chart (default values, namespace
cluster-security-operator), so that `kubectl apply -k deploy/` installs exactly what the chart
does. `--check` writes nothing and fails when deploy/ has drifted from the chart.

Usage: scripts/gen-deploy.py [--check]
"""
import difflib
import importlib.util
import pathlib
import sys

ROOT = pathlib.Path(__file__).resolve().parent.parent
TARGET = ROOT / "deploy" / "operator.yaml"
HEADER = """# Generated from charts/cluster-security-operator by scripts/gen-deploy.py; do not edit.
# tests/e2e_foundation.rs fails when this file and the chart differ.
"""


def generate() -> str:
    spec = importlib.util.spec_from_file_location("helm_render", ROOT / "scripts" / "helm-render.py")
    helm_render = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(helm_render)
    docs = helm_render.render(str(ROOT / "charts" / "cluster-security-operator"), "cluster-security-operator", crds=False)
    # Plain manifests are not managed by Helm.
    docs = [d.replace("app.kubernetes.io/managed-by: Helm", "app.kubernetes.io/managed-by: kubectl") for d in docs]
    return HEADER + "---\n" + "\n---\n".join(docs) + "\n"


def main() -> int:
    text = generate()
    if "--check" in sys.argv[1:]:
        current = TARGET.read_text() if TARGET.exists() else ""
        if current != text:
            diff = difflib.unified_diff(current.splitlines(), text.splitlines(), "deploy/operator.yaml", "chart", lineterm="")
            print("deploy/operator.yaml differs from the chart; run scripts/gen-deploy.py\n" + "\n".join(diff), file=sys.stderr)
            return 1
        return 0
    TARGET.write_text(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
