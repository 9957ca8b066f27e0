#!/usr/bin/env python3
"""Lint and render the Helm chart with Helm's own engine (PyPI helm-python-sdk), offline.

Usage: helm-render.py CHART_DIR NAMESPACE [VALUES_JSON]  -> rendered manifests (CRDs first) on
stdout. Exits non-zero when lint reports an error (including values that break
values.schema.json) or a template fails to render.
"""
import json
import sys

from helm_python import chart as helm_chart


def render(path, namespace, values=None, crds=True):
    """Lint, then render: a list of YAML documents, CRDs first (templates/crds.yaml, the
    chart's crds.enabled). `crds=False` renders with crds.enabled=false (deploy/operator.yaml:
    deploy/ ships the CRDs in a file of their own). Raises ValueError with lint's findings."""
    if not crds:
        values = dict(values or {})
        values["crds"] = {**(values.get("crds") or {}), "enabled": False}
    report = helm_chart.lint(path, values=values, namespace=namespace, strict=True)
    problems = [m for m in report.get("messages") or [] if m.get("severity", 0) >= 2] + list(report.get("errors") or [])
    if problems:
        raise ValueError(f"helm lint: {problems}")
    loaded = helm_chart.Chart.load(path)
    rendered = loaded.render(values, name="cluster-security-operator", namespace=namespace, is_install=True)
    # CRDs first (templates/crds.yaml, or a subchart's), so that kubectl apply knows the kinds.
    keys = sorted(rendered, key=lambda k: (not k.endswith("/templates/crds.yaml"), k))
    docs = [rendered[k] for k in keys if rendered[k].strip()]
    return [d.strip() for d in docs]


def main() -> int:
    path, namespace = sys.argv[1], sys.argv[2]
    values = json.loads(sys.argv[3]) if len(sys.argv) > 3 else None
    try:
        docs = render(path, namespace, values)
    except ValueError as e:
        print(e, file=sys.stderr)
        return 1
    print("\n---\n".join(docs))
    return 0


if __name__ == "__main__":
    sys.exit(main())
