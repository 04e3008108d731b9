//! The `bfx-daemon` command.

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Context;
use clap::{Parser, Subcommand};

/// Batch-corrected embeddings of microscopy screens, beside the microscope.
#[derive(Parser)]
#[command(name = "bfx-daemon", version, about)]
struct Cli {
    /// Log lines as text (default) or JSON objects.
    #[arg(long, global = true, value_enum, default_value = "text")]
    log_format: LogFormat,
    #[command(subcommand)]
    command: Command,
}

#[derive(Clone, Copy, clap::ValueEnum)]
enum LogFormat {
    Text,
    Json,
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
    /// Check everything a long unattended run needs: configuration, ONNX
    /// Runtime and its execution providers, bundle, acquisition roots, a
    /// writable store, free disk space and the inotify watch limit.
    Doctor {
        /// Configuration file with a [daemon] table.
        #[arg(long)]
        config: PathBuf,
    },
    /// Run the service: watch the acquisition folders and write embeddings
    /// to the store until SIGINT or SIGTERM, then drain and commit.
    Run {
        /// Configuration file with a [daemon] table.
        #[arg(long)]
        config: PathBuf,
    },
    /// Copy an acquisition into a watched folder file by file, writing
    /// each progressively like an instrument.
    Replay {
        /// Folder to copy from.
        src: PathBuf,
        /// Watched folder to copy into.
        dest: PathBuf,
        /// Files per second (0: as fast as possible).
        #[arg(long, default_value_t = 10.0)]
        rate: f64,
    },
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let filter = || {
        tracing_subscriber::EnvFilter::try_from_default_env()
            .unwrap_or_else(|_| "info,ort=warn".into())
    };
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter())
        .with_writer(std::io::stderr);
    match cli.log_format {
        LogFormat::Text => builder.init(),
        LogFormat::Json => builder.json().init(),
    }
    match run(cli) {
        Ok(code) => code,
        Err(e) => {
            eprintln!("error: {}", report(&e));
            ExitCode::FAILURE
        }
    }
}

fn run(cli: Cli) -> anyhow::Result<ExitCode> {
    match cli.command {
        Command::Doctor { config } => {
            let config = bfx_config::load_daemon(&config).context("invalid configuration")?;
            let checks = bfx_daemon::doctor::doctor(&config);
            Ok(print_checks(&checks))
        }
        Command::Run { config: path } => {
            let config = bfx_config::load_daemon(&path).context("invalid configuration")?;
            let timeout = config.shutdown_timeout;
            let mut builder = tokio::runtime::Builder::new_multi_thread();
            if config.inference.first {
                // Inference first: see bfx_daemon::priority.
                bfx_daemon::priority::start_spawner().context("cannot start the spawner thread")?;
                builder.on_thread_start(bfx_daemon::priority::lower_this_thread);
            }
            let runtime = builder
                .enable_all()
                .build()
                .context("cannot start the async runtime")?;
            runtime.block_on(async move {
                let (stop, shutdown) = tokio::sync::watch::channel(false);
                let (hup_tx, hup) = tokio::sync::mpsc::channel(1);
                let mut hangups = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::hangup())
                    .context("cannot listen for SIGHUP")?;
                tokio::spawn(async move {
                    while hangups.recv().await.is_some() {
                        tracing::info!("SIGHUP: reloading the configuration and bundle");
                        // A reload already queued covers this one too.
                        let _ = hup_tx.try_send(());
                    }
                });
                let mut daemon = tokio::spawn(bfx_daemon::pipeline::run_reloading(config, Some(path), shutdown, hup));
                let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
                    .context("cannot listen for SIGTERM")?;
                let finished = tokio::select! {
                    result = &mut daemon => Some(result),
                    _ = tokio::signal::ctrl_c() => None,
                    _ = term.recv() => None,
                };
                let result = match finished {
                    Some(result) => result,
                    None => {
                        tracing::info!("stopping: draining the pipeline");
                        let _ = sd_notify::notify(&[sd_notify::NotifyState::Stopping]);
                        let _ = stop.send(true);
                        tokio::time::timeout(timeout, daemon)
                            .await
                            .context("shutdown took longer than daemon.shutdown_timeout; uncommitted sites are embedded again at the next start")?
                    }
                };
                let summary = result.context("the daemon failed")??;
                let total: usize = summary.rows.values().sum();
                eprintln!("stopped: {total} sites in the store over {} plates; refusals recorded in {}", summary.rows.len(), summary.journal.display());
                Ok::<_, anyhow::Error>(ExitCode::SUCCESS)
            })
        }
        Command::Replay { src, dest, rate } => {
            let n =
                bfx_daemon::replay::replay(&src, &dest, rate, |_, _| {}).with_context(|| {
                    format!("cannot replay {} into {}", src.display(), dest.display())
                })?;
            eprintln!("replayed {n} files into {}", dest.display());
            Ok(ExitCode::SUCCESS)
        }
        Command::CheckConfig { file, skip_bundle } => {
            let config = bfx_config::load_daemon(&file).context("invalid configuration")?;
            println!("ok   config        {}", file.display());
            let checks = bfx_daemon::check::check_config(&config, skip_bundle);
            Ok(print_checks(&checks))
        }
    }
}

/// The error and its causes on one line, leaving out a cause whose text
/// an outer message already includes (library errors often name their
/// source in their own message).
fn report(e: &anyhow::Error) -> String {
    let mut text = e.to_string();
    for cause in e.chain().skip(1) {
        let cause = cause.to_string();
        if !text.contains(&cause) {
            text.push_str(": ");
            text.push_str(&cause);
        }
    }
    text
}

/// One line per check; failure if any failed.
fn print_checks(checks: &[bfx_daemon::check::Check]) -> ExitCode {
    for check in checks {
        println!("{check}");
    }
    if checks.iter().all(|c| c.ok) {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    }
}
