//! `kubectl clustersecurity` — the operator's kubectl plugin (docs/plugin.md). Installed next to
//! kubectl as `kubectl-clustersecurity`; everything is in the library's `plugin` module.

#![forbid(unsafe_code)]

fn main() -> std::process::ExitCode {
    cluster_security_operator::plugin::main()
}
