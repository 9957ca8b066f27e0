#![forbid(unsafe_code)]

use clap::Parser;
use cluster_security_operator::{run, Cli, Command};

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    match Cli::parse().command {
        Command::Crd => {
            print!("{}", cluster_security_api::manifests::crds_yaml());
            Ok(())
        }
        Command::Metrics => {
            print!("{}", cluster_security_operator::metrics_catalogue());
            Ok(())
        }
        Command::Run(args) => run(*args).await,
    }
}
