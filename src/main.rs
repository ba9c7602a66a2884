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
use mailpush::store::{JobState, Store, UserUpdate};

/// mimalloc: each event allocates a dozen small strings and frees them within microseconds,
/// and each stream holds a few small objects for hours; mimalloc's size-class pages serve both
/// faster and more densely than glibc's arenas (benches/README.md has the figures).
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

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
        /// Add the admin claim, which opens the status page (GET /status).
        #[arg(long)]
        admin: bool,
    },
    /// Exit 0 if the server on http.listen answers GET /healthz, else 1 (for HEALTHCHECK).
    Health,
    /// Check the mail store's configuration against mailpush's, line by line; exit 0 only when
    /// nothing is at fault. With neither option, checks /etc/imapd.conf.
    Doctor {
        /// Cyrus's imapd.conf.
        #[arg(long, value_name = "FILE")]
        cyrus: Option<PathBuf>,
        /// Dovecot's dovecot.conf (what it includes is read too).
        #[arg(long, value_name = "FILE")]
        dovecot: Option<PathBuf>,
    },
    /// Show or change a user's notification settings (language, SMS number and credit).
    #[command(subcommand)]
    User(UserCommand),
    /// List the job queue (newest first), or send a dead job round again.
    Jobs {
        /// Only jobs in this state: queued, running, done or dead.
        #[arg(long)]
        state: Option<String>,
        /// At most this many jobs.
        #[arg(long, default_value_t = 50)]
        limit: i64,
        #[command(subcommand)]
        command: Option<JobsCommand>,
    },
}

#[derive(Debug, Subcommand)]
enum UserCommand {
    /// Create or change a user's settings; options not given keep their value.
    Set {
        user: String,
        /// Language of notification emails (`en`, `de`); `en` is the fallback.
        #[arg(long)]
        language: Option<String>,
        /// E.164 number for Sieve `sms` notifications that name none.
        #[arg(long)]
        sms_number: Option<String>,
        /// Text messages the user may still be sent.
        #[arg(long)]
        sms_credit: Option<i64>,
    },
    /// Print a user's settings.
    Show { user: String },
}

#[derive(Debug, Subcommand)]
enum JobsCommand {
    /// Queue a dead job again, with its attempts reset.
    Retry { id: i64 },
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
        Command::Token { user, ttl, admin } => {
            init_logging(&config);
            print_token(&config, &user, ttl, admin)
        }
        Command::Serve => {
            let log_level = init_logging(&config);
            serve(config, config_path, log_level)
        }
        Command::Health => health(&config),
        Command::Doctor { cyrus, dovecot } => return doctor(&config, cyrus, dovecot),
        Command::User(command) => with_store(&config, |store| user_command(store, command)),
        Command::Jobs {
            state,
            limit,
            command,
        } => with_store(&config, |store| jobs_command(store, state, limit, command)),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(err) => {
            eprintln!("mailpush: {err:#}");
            ExitCode::FAILURE
        }
    }
}

/// Prints the doctor's report on the mail stores' configuration files (Cyrus's
/// `/etc/imapd.conf` when none is named); exit 0 only when nothing is at fault.
fn doctor(config: &Config, cyrus: Option<PathBuf>, dovecot: Option<PathBuf>) -> ExitCode {
    let cyrus = match (&cyrus, &dovecot) {
        (None, None) => Some(PathBuf::from("/etc/imapd.conf")),
        _ => cyrus,
    };
    let mut report = mailpush::doctor::Report::default();
    if let Some(imapd_conf) = cyrus {
        let text = match std::fs::read_to_string(&imapd_conf) {
            Ok(text) => text,
            Err(err) => {
                eprintln!("mailpush: cannot read {}: {err}", imapd_conf.display());
                return ExitCode::FAILURE;
            }
        };
        report.extend(mailpush::doctor::check_cyrus(&text, &imapd_conf, config));
    }
    if let Some(dovecot_conf) = dovecot {
        report.extend(mailpush::doctor::check_dovecot(&dovecot_conf, config));
    }
    print!("{}", report.render());
    if report.healthy() {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    }
}

fn print_token(config: &Config, user: &str, ttl: u64, admin: bool) -> anyhow::Result<()> {
    anyhow::ensure!(!user.is_empty(), "--user must not be empty");
    let keys = TokenKeys::load(&config.auth, &config.storage.data_dir)?;
    println!("{}", keys.mint(user, ttl, admin)?);
    Ok(())
}

fn serve(config: Config, config_path: Option<PathBuf>, log_level: LogLevel) -> anyhow::Result<()> {
    let threads = config.runtime.threads();
    let runtime = match threads {
        1 => tokio::runtime::Builder::new_current_thread(),
        _ => {
            let mut builder = tokio::runtime::Builder::new_multi_thread();
            builder.worker_threads(threads);
            builder
        }
    }
    .enable_all()
    .build()
    .context("cannot start the async runtime")?;
    tracing::info!(worker_threads = threads, "runtime started");
    runtime.block_on(async {
        let listeners = Listeners::bind(&config).await?;
        tokio::spawn(reload_log_level_on_hangup(config_path, log_level));
        app::run(config, listeners, shutdown_signal()).await
    })
}

/// On SIGHUP, reads the configuration again and applies its `log.level` (the app reloads the
/// templates on the same signal). `RUST_LOG`, when set, keeps precedence.
async fn reload_log_level_on_hangup(config_path: Option<PathBuf>, log_level: LogLevel) {
    use tokio::signal::unix::{SignalKind, signal};
    let Ok(mut hangups) = signal(SignalKind::hangup()) else {
        return;
    };
    while hangups.recv().await.is_some() {
        if std::env::var_os("RUST_LOG").is_some() {
            continue;
        }
        match Config::load_file(config_path.as_deref()) {
            Ok(config) => {
                let reloaded = tracing_subscriber::EnvFilter::try_new(&config.log.level)
                    .ok()
                    .is_some_and(|filter| log_level.reload(filter).is_ok());
                if reloaded {
                    tracing::info!(level = %config.log.level, "log level reloaded");
                } else {
                    tracing::error!(level = %config.log.level, "log level not reloaded");
                }
            }
            Err(err) => tracing::error!(error = %err, "configuration not reloaded"),
        }
    }
}

/// Asks the local server for `/healthz` over plain HTTP/1.1, with a short timeout.
fn health(config: &Config) -> anyhow::Result<()> {
    use std::io::{Read, Write};
    let mut addr = config.http.listen;
    if addr.ip().is_unspecified() {
        addr.set_ip(std::net::Ipv4Addr::LOCALHOST.into());
    }
    let timeout = std::time::Duration::from_secs(3);
    let mut stream = std::net::TcpStream::connect_timeout(&addr, timeout)
        .with_context(|| format!("cannot connect to {addr}"))?;
    stream.set_read_timeout(Some(timeout))?;
    stream.write_all(
        format!("GET /healthz HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n").as_bytes(),
    )?;
    let mut reply = String::new();
    stream.read_to_string(&mut reply)?;
    anyhow::ensure!(
        reply.starts_with("HTTP/1.1 200"),
        "unhealthy: {}",
        reply.lines().next().unwrap_or("no answer")
    );
    Ok(())
}

/// Opens the configured database and runs one admin command on it.
fn with_store<F, Fut>(config: &Config, command: F) -> anyhow::Result<()>
where
    F: FnOnce(Store) -> Fut,
    Fut: std::future::Future<Output = anyhow::Result<()>>,
{
    let runtime = tokio::runtime::Runtime::new().context("cannot start the async runtime")?;
    runtime.block_on(async {
        let url = config.database.url.as_ref().map(|url| url.expose());
        let store = Store::connect(url, &config.default_database_file()).await?;
        command(store).await
    })
}

async fn user_command(store: Store, command: UserCommand) -> anyhow::Result<()> {
    let user = match command {
        UserCommand::Set {
            user,
            language,
            sms_number,
            sms_credit,
        } => {
            anyhow::ensure!(
                sms_credit.is_none_or(|credit| credit >= 0),
                "--sms-credit must not be negative"
            );
            let update = UserUpdate {
                language,
                sms_number,
                sms_credit,
            };
            store.set_user(&user, &update).await?
        }
        UserCommand::Show { user } => store.user(&user).await?,
    };
    println!("user:       {}", printable(&user.user_id));
    println!("language:   {}", user.language);
    println!(
        "sms_number: {}",
        printable(user.sms_number.as_deref().unwrap_or("-"))
    );
    println!("sms_credit: {}", user.sms_credit);
    Ok(())
}

async fn jobs_command(
    store: Store,
    state: Option<String>,
    limit: i64,
    command: Option<JobsCommand>,
) -> anyhow::Result<()> {
    if let Some(JobsCommand::Retry { id }) = command {
        let requeued = store.requeue_job(id, mailpush::notify::now_ms()).await?;
        anyhow::ensure!(requeued, "job {id} is not a dead job");
        println!("job {id} queued again");
        return Ok(());
    }
    let state = match state.as_deref() {
        Some(name) => Some(
            JobState::parse(name)
                .with_context(|| format!("--state {name}: not queued, running, done or dead"))?,
        ),
        None => None,
    };
    println!(
        "{:>8}  {:<8}  {:<12}  {:<16}  {:>8}  last error",
        "id", "state", "kind", "user", "attempts"
    );
    for job in store.jobs(state, limit).await? {
        println!(
            "{:>8}  {:<8}  {:<12}  {:<16}  {:>8}  {}",
            job.id,
            job.state.as_str(),
            printable(&job.kind),
            printable(&job.user_id),
            job.attempts,
            printable(job.last_error.as_deref().unwrap_or(""))
        );
    }
    Ok(())
}

/// Text from the database as the terminal should see it: control characters (an escape
/// sequence in a user id, say) are shown escaped, never sent to the terminal.
fn printable(text: &str) -> std::borrow::Cow<'_, str> {
    if !text.chars().any(char::is_control) {
        return text.into();
    }
    text.chars()
        .map(|c| {
            if c.is_control() {
                c.escape_default().to_string()
            } else {
                c.to_string()
            }
        })
        .collect::<String>()
        .into()
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

/// The handle that swaps the log filter at run time.
type LogLevel =
    tracing_subscriber::reload::Handle<tracing_subscriber::EnvFilter, tracing_subscriber::Registry>;

fn init_logging(config: &Config) -> LogLevel {
    use tracing_subscriber::layer::SubscriberExt;
    use tracing_subscriber::util::SubscriberInitExt;
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .or_else(|_| tracing_subscriber::EnvFilter::try_new(&config.log.level))
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let (filter, handle) = tracing_subscriber::reload::Layer::new(filter);
    let registry = tracing_subscriber::registry().with(filter);
    let layer = tracing_subscriber::fmt::layer().with_writer(std::io::stderr);
    match config.log.format {
        LogFormat::Json => registry.with(layer.json()).init(),
        LogFormat::Text => registry
            .with(layer.with_ansi(std::io::stderr().is_terminal()))
            .init(),
    }
    handle
}
