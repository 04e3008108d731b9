//! The `bfx-trainer` command.

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Context;
use clap::{Parser, Subcommand};

/// Train and evaluate batch-effect-robust models of microscopy screens.
#[derive(Parser)]
#[command(name = "bfx-trainer", version, about)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Validate a configuration file's [trainer] table and print it resolved.
    CheckConfig {
        /// Configuration file.
        file: PathBuf,
    },
}

fn main() -> ExitCode {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "warn".into()),
        )
        .with_writer(std::io::stderr)
        .init();
    match run(Cli::parse()) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    }
}

fn run(cli: Cli) -> anyhow::Result<()> {
    match cli.command {
        Command::CheckConfig { file } => {
            let c = bfx_config::load_trainer(&file).context("invalid configuration")?;
            println!("ok   config        {}", file.display());
            println!(
                "     data          {} (manifest {})",
                c.data.root.display(),
                c.data.manifest.display()
            );
            println!("     channels      {:?}", c.preprocess.channels);
            println!(
                "     model         {} width {} norm {:?}, embedding {}",
                c.model.arch, c.model.width, c.model.norm, c.model.embedding_dim
            );
            println!("     method        {}", c.method.name);
            println!(
                "     optimizer     lr {} weight decay {} batch {} steps {}",
                c.optim.lr, c.optim.weight_decay, c.optim.batch_size, c.optim.steps
            );
            println!(
                "     split         {:?} fold {}",
                c.split.level, c.split.fold
            );
            println!("     output        {}", c.out.display());
            Ok(())
        }
    }
}
