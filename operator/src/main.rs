use anyhow::Context as _;
use clap::{Parser, Subcommand};

/// The berth operator.
#[derive(Parser)]
#[command(version, about)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Print the Registry CustomResourceDefinition as YAML.
    Crd,
}

fn main() -> anyhow::Result<()> {
    match Cli::parse().command {
        Command::Crd => {
            print!(
                "{}",
                berth_operator::crdgen::crd_yaml().context("rendering the CRD")?
            );
        }
    }
    Ok(())
}
