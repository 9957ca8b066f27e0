use clap::Parser;
use cluster_security_operator::{api, cli};

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args = cli::Cli::parse();
    match args.command {
        cli::Command::Crd => {
            print!("{}", api::crds_yaml());
            Ok(())
        }
        cli::Command::Run(run) => {
            cli::init_logging(run.log_format);
            cli::run(run).await
        }
    }
}
