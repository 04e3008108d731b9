//! The `bfx-daemon` command.

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Context;
use clap::{Parser, Subcommand};

/// Batch-corrected embeddings of microscopy screens, beside the microscope.
#[derive(Parser)]
#[command(name = "bfx-daemon", version, about)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Validate a configuration, load ONNX Runtime, and verify the bundle it names.
    CheckConfig {
        /// Configuration file with a [daemon] table.
        file: PathBuf,
        /// Do not check the bundle (e.g. before a model is deployed).
        #[arg(long)]
        skip_bundle: bool,
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
        Ok(code) => code,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    }
}

fn run(cli: Cli) -> anyhow::Result<ExitCode> {
    match cli.command {
        Command::CheckConfig { file, skip_bundle } => {
            let config = bfx_config::load_daemon(&file).context("invalid configuration")?;
            println!("ok   config        {}", file.display());
            let checks = bfx_daemon::check::check_config(&config, skip_bundle);
            for check in &checks {
                println!("{check}");
            }
            Ok(if checks.iter().all(|c| c.ok) {
                ExitCode::SUCCESS
            } else {
                ExitCode::FAILURE
            })
        }
    }
}
