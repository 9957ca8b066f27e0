#!/usr/bin/env python3
"""Drive a Helm release with Helm's own library (PyPI helm-python-sdk), as `helm` would: the
chart upgrade test (crates/operator/tests/e2e_disruptive/chart_upgrade.rs) installs the previous
chart, upgrades to this one and uninstalls, against a control plane of its own. Never waits for
the Deployment (the test control plane runs no pods).

Usage: helm-release.py KUBECONFIG NAMESPACE RELEASE install|upgrade CHART [VALUES_JSON]
       helm-release.py KUBECONFIG NAMESPACE RELEASE upgrade-force-conflicts CHART [VALUES_JSON]
       helm-release.py KUBECONFIG NAMESPACE RELEASE uninstall
upgrade-force-conflicts is `helm upgrade --force-conflicts` (server-side apply takes over fields
another field manager wrote, e.g. CRDs last applied with `kubectl apply --server-side`); the
library's Config.upgrade has no parameter for it, so it calls the same native function with it.
Prints the release as JSON (name, version, info.status) on success; exits 1 with Helm's error.
"""
import json
import sys

from helm_python import _native
from helm_python import chart as helm_chart
from helm_python.config import Config, _loads_obj, _opts


def upgrade_force_conflicts(config, loaded, release, values, namespace):
    """Config.upgrade with force_conflicts (an option of the native helm_upgrade)."""
    payload = _native.call_string(
        "helm_upgrade",
        config._raw(),
        config._context_arg(None),
        loaded._raw(),
        None,
        release,
        None if values is None else json.dumps(values),
        _opts(namespace=namespace, timeout_seconds=120, force_conflicts=True),
    )
    return _loads_obj(payload)


def main() -> int:
    kubeconfig, namespace, release, action = sys.argv[1:5]
    config = Config(kubeconfig_path=kubeconfig, namespace=namespace)
    try:
        if action == "uninstall":
            result = config.uninstall(release)
        else:
            path = sys.argv[5]
            values = json.loads(sys.argv[6]) if len(sys.argv) > 6 else None
            loaded = helm_chart.Chart.load_archive(open(path, "rb").read()) if path.endswith(".tgz") else helm_chart.Chart.load(path)
            if action == "install":
                result = config.install(loaded, release, values, namespace=namespace, create_namespace=True, timeout=120)
            elif action == "upgrade":
                result = config.upgrade(loaded, release, values, namespace=namespace, timeout=120)
            elif action == "upgrade-force-conflicts":
                result = upgrade_force_conflicts(config, loaded, release, values, namespace)
            else:
                print(f"unknown action {action}", file=sys.stderr)
                return 2
    except Exception as e:  # Helm's error, for the test's message
        print(f"helm {action}: {type(e).__name__}: {e}", file=sys.stderr)
        return 1
    print(json.dumps(result, default=str)[:2000])
    return 0


if __name__ == "__main__":
    sys.exit(main())
