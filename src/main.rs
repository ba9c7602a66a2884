//! The `mailpush` command: parse arguments, load the configuration, set up logging, and run
//! the chosen subcommand.

use std::io::IsTerminal;
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::Context;
use clap::{Parser, Subcommand};
use mailpush::app::{self, Listeners};
use mailpush::auth::TokenKeys;
use mailpush::config::{Config, LogFormat};

/// Exit status for a configuration error (sysexits EX_USAGE).
const EXIT_CONFIG: u8 = 64;

/// The configuration file read when --config is not given, if it exists.
const DEFAULT_CONFIG: &str = "mailpush.toml";

#[derive(Debug, Parser)]
#[command(
    name = "mailpush",
    version,
    about = "Push-notification gateway for mail servers: Cyrus events in, EventSource updates out",
    after_help = "Every configuration key can be set in the environment as MAILPUSH_<SECTION>__<KEY>, \
                  e.g. MAILPUSH_HTTP__LISTEN=127.0.0.1:9000. Without --config, ./mailpush.toml is \
                  read if it exists; otherwise the embedded defaults apply."
)]
struct Cli {
    /// TOML configuration file.
    #[arg(long, global = true, value_name = "FILE", env = "MAILPUSH_CONFIG")]
    config: Option<PathBuf>,
    /// Log format (overrides log.format).
    #[arg(long, global = true, value_enum)]
    log_format: Option<LogFormat>,
    #[command(subcommand)]
    command: Option<Command>,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Run the gateway (the default when no command is given).
    Serve,
    /// Print the effective configuration with secrets redacted; exit 64 if it is invalid.
    CheckConfig,
    /// Print a client token for USER, signed with the configured or generated secret.
    Token {
        /// The user id the token speaks for (the JWT `sub`).
        #[arg(long)]
        user: String,
        /// Lifetime in seconds.
        #[arg(long, default_value_t = 3600)]
        ttl: u64,
    },
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    // One TLS crypto provider for the whole process (provider clients, PostgreSQL).
    let _ = rustls::crypto::aws_lc_rs::default_provider().install_default();
    let config_path = cli.config.clone().or_else(|| {
        let default = Path::new(DEFAULT_CONFIG);
        default.exists().then(|| default.to_path_buf())
    });
    let mut config = match Config::load_file(config_path.as_deref()) {
        Ok(config) => config,
        Err(err) => {
            eprintln!("mailpush: invalid configuration: {err}");
            return ExitCode::from(EXIT_CONFIG);
        }
    };
    if let Some(format) = cli.log_format {
        config.log.format = format;
    }
    let result = match cli.command.unwrap_or(Command::Serve) {
        Command::CheckConfig => {
            print!("{}", config.to_redacted_toml());
            Ok(())
        }
        Command::Token { user, ttl } => {
            init_logging(&config);
            print_token(&config, &user, ttl)
        }
        Command::Serve => {
            init_logging(&config);
            serve(config)
        }
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(err) => {
            eprintln!("mailpush: {err:#}");
            ExitCode::FAILURE
        }
    }
}

fn print_token(config: &Config, user: &str, ttl: u64) -> anyhow::Result<()> {
    anyhow::ensure!(!user.is_empty(), "--user must not be empty");
    let keys = TokenKeys::load(&config.auth, &config.storage.data_dir)?;
    println!("{}", keys.mint(user, ttl, false)?);
    Ok(())
}

fn serve(config: Config) -> anyhow::Result<()> {
    let runtime = tokio::runtime::Runtime::new().context("cannot start the async runtime")?;
    runtime.block_on(async {
        let listeners = Listeners::bind(&config).await?;
        app::run(config, listeners, shutdown_signal()).await
    })
}

/// Resolves on SIGTERM or SIGINT.
async fn shutdown_signal() {
    use tokio::signal::unix::{SignalKind, signal};
    let mut term = match signal(SignalKind::terminate()) {
        Ok(term) => term,
        Err(err) => {
            tracing::error!(error = %err, "cannot watch SIGTERM; stop with SIGINT");
            let _ = tokio::signal::ctrl_c().await;
            return;
        }
    };
    tokio::select! {
        _ = term.recv() => {}
        _ = tokio::signal::ctrl_c() => {}
    }
}

fn init_logging(config: &Config) {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .or_else(|_| tracing_subscriber::EnvFilter::try_new(&config.log.level))
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    match config.log.format {
        LogFormat::Json => builder.json().init(),
        LogFormat::Text => builder.with_ansi(std::io::stderr().is_terminal()).init(),
    }
}
