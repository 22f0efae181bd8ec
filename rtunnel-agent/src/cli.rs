//! The `rtunnel-agent` command line: `run` (the default) and `forward`.
//!
//! Every flag has an environment variable; flags win. Exit codes: 0 when
//! closed on purpose, 2 for bad flags or configuration, 1 for any other
//! failure, always with one clear line on stderr.

use rtunnel_core::ids::SessionId;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use clap::{Args, Parser, Subcommand};

use crate::agent::{Agent, AgentError, AgentExit, Endpoint};
use crate::config::FileServices;
use crate::forward::{ForwardConfig, ForwardError, ForwardTarget, Forwarder};
use crate::http_proxy::Proxy;
use crate::services::{ServiceSpec, parse_services};
use rtunnel_core::cli_config::{self, ConfigFile};

/// `rtunnel-agent`: connects this system to an rtunnel server, or forwards a
/// local port to a service of a support session.
#[derive(Debug, Parser)]
#[command(name = "rtunnel-agent", version, about, long_about = None, args_conflicts_with_subcommands = true)]
pub struct Cli {
    /// Log lines as `text` or `json` (one object per line); the level is
    /// RTUNNEL_LOG's (default info).
    #[arg(
        long,
        env = "RTUNNEL_LOG_FORMAT",
        default_value = "text",
        global = true
    )]
    log_format: rtunnel_core::logging::LogFormat,
    #[command(subcommand)]
    command: Option<Command>,
    #[command(flatten)]
    run: RunArgs,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Connect this system to the server (the default).
    Run(RunArgs),
    /// Check the settings without connecting for real: the server's URL,
    /// TLS, proxy and credentials, and that each service answers. Exits 1
    /// with one line per failure.
    Check(RunArgs),
    /// Forward a local port to a service of a support session.
    Forward(ForwardArgs),
    /// Open a system's terminal here, in this terminal (raw mode, resized
    /// with it); exits with the remote shell's exit code, 255 when the
    /// terminal cannot be opened or the connection is lost.
    Shell(ShellArgs),
    /// Print a shell completion script (bash, zsh, fish, elvish,
    /// powershell).
    Completions {
        /// The shell.
        shell: clap_complete::Shell,
    },
    /// Print the man page (roff).
    Man,
}

#[derive(Debug, Args)]
pub(crate) struct RunArgs {
    /// Settings file (TOML): the long flags' names as keys, services as
    /// [services.NAME] tables (target, tls, host) and `exclude` (names
    /// never offered, `*` matching anything). Flags and environment
    /// variables win over it.
    #[arg(short = 'c', long, env = "RTUNNEL_CONFIG")]
    config: Option<PathBuf>,
    /// How often the --config file is read again for its services (as on
    /// SIGHUP); a changed list is offered without reconnecting. `0s`: only
    /// on SIGHUP.
    #[arg(long, env = "RTUNNEL_DISCOVERY_INTERVAL", default_value = "5m", value_parser = humantime::parse_duration)]
    discovery_interval: Duration,
    /// Tunnel URL: ws(s)://HOST[:PORT]/api/v1/tunnel. Several (comma
    /// separated, or the flag repeated) for the nodes of a cluster: the
    /// agent fails over between them in order.
    #[arg(short, long, env = "RTUNNEL_URL", value_delimiter = ',')]
    url: Vec<String>,
    /// System key.
    #[arg(short, long, env = "RTUNNEL_KEY")]
    key: Option<String>,
    /// System secret (prefer RTUNNEL_SECRET or --secret-file: flags show in ps).
    #[arg(short, long, env = "RTUNNEL_SECRET", hide_env_values = true)]
    secret: Option<String>,
    /// File holding the system secret.
    #[arg(long, env = "RTUNNEL_SECRET_FILE")]
    secret_file: Option<PathBuf>,
    /// Services: name=host:port[:tls][:host=NAME|:host=public],...
    /// (`:tls` dials the service over TLS; `:host=` picks the `Host` the
    /// subdomain proxy sends: a virtual host name, also asked for in the
    /// TLS handshake, or the public proxy host).
    #[arg(long, env = "RTUNNEL_STATIC_SERVICES", default_value = "")]
    static_services: String,
    /// First reconnect delay; doubles with jitter.
    #[arg(long, env = "RTUNNEL_RECONNECT_DELAY", default_value = "5s", value_parser = humantime::parse_duration)]
    reconnect_delay: Duration,
    /// Longest reconnect delay.
    #[arg(long, env = "RTUNNEL_MAX_RECONNECT_DELAY", default_value = "5m", value_parser = humantime::parse_duration)]
    max_reconnect_delay: Duration,
    /// Accept a self-signed certificate from a wss:// server.
    #[arg(long, env = "RTUNNEL_TLS_INSECURE")]
    tls_insecure: bool,
    /// CA certificates (PEM) trusted besides the system's roots, for the
    /// server and for :tls services.
    #[arg(long, env = "RTUNNEL_CA_FILE")]
    ca_file: Option<PathBuf>,
    /// Serve Prometheus metrics at GET /metrics on this address (no login:
    /// keep it on this machine or an internal network). Default: off.
    #[arg(long, env = "RTUNNEL_METRICS_LISTEN")]
    metrics_listen: Option<SocketAddr>,
    /// Keep the session and its reconnect token here (created 0700), so a
    /// restarted agent resumes its session within the grace period.
    #[arg(long, env = "RTUNNEL_STATE_DIR")]
    state_dir: Option<std::path::PathBuf>,
    /// HTTP proxy to dial out through with CONNECT: http://[user:pass@]host:port
    /// (default: HTTPS_PROXY or HTTP_PROXY, honoring NO_PROXY).
    #[arg(long, env = "RTUNNEL_PROXY", hide_env_values = true)]
    proxy: Option<String>,
    /// Offer no terminal: `terminal` leaves the manifest and terminal
    /// streams are refused.
    #[arg(long, env = "RTUNNEL_NO_TERMINAL")]
    no_terminal: bool,
    /// Shell for terminals (default: the login shell of the terminal user).
    #[arg(long, env = "RTUNNEL_SHELL")]
    shell: Option<PathBuf>,
    /// Ask the customer when an operator first comes in: `none`, `notify`
    /// (the --consent-command runs, access opens) or `approve` (its exit
    /// code decides: 0 allows).
    #[arg(long, env = "RTUNNEL_CONSENT", default_value = "none")]
    consent: rtunnel_core::proto::ConsentMode,
    /// The command that tells or asks the customer (`/bin/sh -c`), with
    /// RTUNNEL_OPERATOR, RTUNNEL_SERVICE, RTUNNEL_SESSION and
    /// RTUNNEL_CONSENT in its environment; its first output line is the
    /// reason an operator is given for a refusal.
    #[arg(long, env = "RTUNNEL_CONSENT_COMMAND")]
    consent_command: Option<String>,
    /// How long `approve` waits for the answer; no answer refuses.
    #[arg(long, env = "RTUNNEL_CONSENT_TIMEOUT", default_value = "60s", value_parser = humantime::parse_duration)]
    consent_timeout: Duration,
    /// Ask for every connection, not once per operator and session.
    #[arg(long, env = "RTUNNEL_CONSENT_PER_CONNECTION")]
    consent_per_connection: bool,
    /// How long a refusal stands before the customer is asked again.
    #[arg(long, env = "RTUNNEL_CONSENT_REFUSAL_STANDS", default_value = "30s", value_parser = humantime::parse_duration)]
    consent_refusal_stands: Duration,
    /// Append a JSON line per stream served or refused (when, operator,
    /// service, bytes, duration) to this file, created 0600.
    #[arg(long, env = "RTUNNEL_ACCESS_LOG")]
    access_log: Option<PathBuf>,
    /// How long a terminal whose last viewer left (a closed tab) keeps its
    /// shell for someone to attach again; `0s` ends it at once.
    #[arg(long, env = "RTUNNEL_TERMINAL_DETACH_TIMEOUT", default_value = "5m", value_parser = humantime::parse_duration)]
    terminal_detach_timeout: Duration,
    /// Start terminals as this user (uid, groups, HOME and shell from the
    /// user database); needs the agent to run as root. Default: the
    /// agent's own user.
    #[arg(long, env = "RTUNNEL_TERMINAL_USER")]
    terminal_user: Option<String>,
}

#[derive(Debug, Args)]
struct ForwardArgs {
    /// Server base URL: http(s)://HOST[:PORT].
    #[arg(long, env = "RTUNNEL_SERVER")]
    server: String,
    /// API token (prefer RTUNNEL_TOKEN: flags show in ps).
    #[arg(long, env = "RTUNNEL_TOKEN", hide_env_values = true)]
    token: Option<String>,
    /// Support session id.
    #[arg(long, required_unless_present = "system", conflicts_with = "system")]
    session: Option<SessionId>,
    /// Or a system's name (or id): its current session, found again at
    /// each reconnection, so the forward follows the system to a new one.
    #[arg(long)]
    system: Option<String>,
    /// Service name.
    #[arg(long)]
    service: String,
    /// Local address to listen on.
    #[arg(long, default_value = "127.0.0.1:2222")]
    listen: SocketAddr,
    /// Accept a self-signed certificate from an https:// server.
    #[arg(long, env = "RTUNNEL_TLS_INSECURE")]
    tls_insecure: bool,
    /// CA certificates (PEM) trusted besides the system's roots.
    #[arg(long, env = "RTUNNEL_CA_FILE")]
    ca_file: Option<PathBuf>,
    /// HTTP proxy to dial out through with CONNECT: http://[user:pass@]host:port
    /// (default: HTTPS_PROXY or HTTP_PROXY, honoring NO_PROXY).
    #[arg(long, env = "RTUNNEL_PROXY", hide_env_values = true)]
    proxy: Option<String>,
}

#[derive(Debug, Args)]
struct ShellArgs {
    /// Server base URL: http(s)://HOST[:PORT].
    #[arg(long, env = "RTUNNEL_SERVER")]
    server: String,
    /// API token (prefer RTUNNEL_TOKEN: flags show in ps).
    #[arg(long, env = "RTUNNEL_TOKEN", hide_env_values = true)]
    token: Option<String>,
    /// The system's name (or id): the terminal of its current session.
    #[arg(long)]
    system: String,
    /// Attach to this live terminal (an id from GET
    /// /api/v1/sessions/{id}/terminals) instead of starting a shell: the
    /// same shell, its recent screen first.
    #[arg(long)]
    attach: Option<uuid::Uuid>,
    /// Watch only (what a viewer may do): what is typed here is not sent.
    #[arg(long)]
    watch: bool,
    /// Accept a self-signed certificate from an https:// server.
    #[arg(long, env = "RTUNNEL_TLS_INSECURE")]
    tls_insecure: bool,
    /// CA certificates (PEM) trusted besides the system's roots.
    #[arg(long, env = "RTUNNEL_CA_FILE")]
    ca_file: Option<PathBuf>,
    /// HTTP proxy to dial out through with CONNECT: http://[user:pass@]host:port
    /// (default: HTTPS_PROXY or HTTP_PROXY, honoring NO_PROXY).
    #[arg(long, env = "RTUNNEL_PROXY", hide_env_values = true)]
    proxy: Option<String>,
}

pub(crate) struct Failure {
    pub code: u8,
    pub message: String,
}

/// The settings file, as read at start.
pub(crate) struct Loaded {
    path: PathBuf,
    first: ConfigFile,
    services: FileServices,
}

/// The command line, with `--config FILE` (of `run` and `check`) filling
/// what flags and environment variables left. Bad flags end the process
/// as clap does.
fn parse_command_line() -> Result<(Cli, Option<Loaded>), Failure> {
    use clap::{CommandFactory, FromArgMatches};
    let mut argv: Vec<std::ffi::OsString> = std::env::args_os().collect();
    let first = Cli::command().get_matches_from(&argv);
    let mut command = Cli::command();
    command.build();
    let scope = match first.subcommand_name() {
        None => Some(command.clone()),
        Some(name @ ("run" | "check")) => command.find_subcommand(name).cloned(),
        Some(_) => None,
    };
    let given = cli_config::chain(&first);
    let (Some(scope), Some(path)) = (scope, cli_config::path_in(&given, "config")) else {
        let cli = Cli::from_arg_matches(&first).map_err(|e| usage(e.to_string()))?;
        return Ok((cli, None));
    };
    let mut file = ConfigFile::load(&path).map_err(|e| usage(e.to_string()))?;
    let services = FileServices::take(&mut file).map_err(|e| usage(e.to_string()))?;
    let flags = file
        .flags(&scope, &given)
        .map_err(|e| usage(e.to_string()))?;
    argv.extend(flags.into_iter().map(Into::into));
    let matches = Cli::command()
        .try_get_matches_from(&argv)
        .map_err(|e| usage(file.error(cli_config::describe(&e)).to_string()))?;
    let cli = Cli::from_arg_matches(&matches).map_err(|e| usage(e.to_string()))?;
    Ok((
        cli,
        Some(Loaded {
            path,
            first: file,
            services,
        }),
    ))
}

/// Parses the command line and runs it.
pub async fn main() -> ExitCode {
    let (cli, loaded) = match parse_command_line() {
        Ok(parsed) => parsed,
        Err(f) => {
            eprintln!("rtunnel-agent: {}", f.message);
            return ExitCode::from(f.code);
        }
    };
    // Generated from the command line itself.
    use rtunnel_core::cli_docs::{Doc, print};
    match &cli.command {
        Some(Command::Completions { shell }) => {
            return print(
                <Cli as clap::CommandFactory>::command(),
                Doc::Completions(*shell),
            );
        }
        Some(Command::Man) => return print(<Cli as clap::CommandFactory>::command(), Doc::Man),
        _ => {}
    }
    // Before anything else: the shells this process starts must not read
    // its secret or token from /proc.
    let protected = crate::harden::protect_process();
    if let Err(e) = rtunnel_core::logging::init(cli.log_format) {
        eprintln!("rtunnel-agent: {e}");
        return ExitCode::from(2);
    }
    if let Err(e) = protected {
        tracing::warn!(
            "cannot make the process non-dumpable, so a shell it starts could read its secret: {e}"
        );
    }
    if let Some(loaded) = &loaded
        && loaded.first.table().contains_key("secret")
        && cli_config::readable_by_others(&loaded.path)
    {
        tracing::warn!(
            "{} holds the secret and every user of this machine can read it: chmod 600 it",
            loaded.path.display()
        );
    }
    if let Some(Command::Shell(args)) = cli.command {
        return shell(args).await;
    }
    let result = match cli.command {
        Some(Command::Run(args)) => run(args, loaded).await,
        Some(Command::Check(args)) => crate::check::check(args, loaded).await,
        Some(Command::Forward(args)) => forward(args).await,
        // Answered above, before anything started.
        Some(Command::Completions { .. } | Command::Man | Command::Shell(_)) => Ok(()),
        None => run(cli.run, loaded).await,
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(f) => {
            eprintln!("rtunnel-agent: {}", f.message);
            ExitCode::from(f.code)
        }
    }
}

pub(crate) fn usage(message: impl Into<String>) -> Failure {
    Failure {
        code: 2,
        message: message.into(),
    }
}

/// Builds the agent from the flags and the settings file.
pub(crate) fn build(args: &RunArgs, loaded: Option<&Loaded>) -> Result<Agent, Failure> {
    let secret = match (&args.secret, &args.secret_file) {
        (_, Some(path)) => std::fs::read_to_string(path)
            .map(|s| s.trim().to_owned())
            .map_err(|e| usage(format!("cannot read --secret-file {}: {e}", path.display())))?,
        (Some(s), None) => s.clone(),
        (None, None) => String::new(),
    };
    hide_credential(
        args.secret.as_deref(),
        "the secret",
        "RTUNNEL_SECRET or --secret-file",
    );
    let flag_services = parse_services(&args.static_services).map_err(|e| usage(e.to_string()))?;
    let (services, no_terminal) = match loaded {
        Some(l) => (
            l.services.offered(&flag_services),
            args.no_terminal || l.services.excludes(crate::terminal::TERMINAL_SERVICE),
        ),
        None => (flag_services, args.no_terminal),
    };
    let terminal_user = match (&args.terminal_user, no_terminal) {
        (Some(name), false) => Some(crate::terminal::TerminalUser::lookup(name).map_err(usage)?),
        _ => None,
    };
    let mut builder = Agent::builder()
        .services(services)
        .reconnect_delay(args.reconnect_delay)
        .max_reconnect_delay(args.max_reconnect_delay)
        .tls_insecure(args.tls_insecure)
        .ca_file(args.ca_file.clone())
        .consent(crate::consent::ConsentConfig {
            mode: args.consent,
            command: args.consent_command.clone(),
            timeout: args.consent_timeout,
            per_connection: args.consent_per_connection,
            refusal_stands: args.consent_refusal_stands,
        })
        .access_log(args.access_log.clone())
        .terminal_detach_timeout(args.terminal_detach_timeout)
        .state_dir(args.state_dir.clone())
        .terminal((!no_terminal).then(|| crate::terminal::TerminalConfig {
            shell: args.shell.clone(),
            user: terminal_user,
        }))
        .credentials(args.key.clone().unwrap_or_default(), secret);
    for url in args
        .url
        .iter()
        .map(|u| u.trim().to_owned())
        .filter(|u| !u.is_empty())
    {
        let proxy = resolve_proxy(args.proxy.as_deref(), &url)?;
        builder = builder.endpoint(Endpoint { url, proxy });
    }
    builder.build().map_err(|e| usage(e.to_string()))
}

async fn run(args: RunArgs, loaded: Option<Loaded>) -> Result<(), Failure> {
    let agent = build(&args, loaded.as_ref())?;
    if let Some(addr) = args.metrics_listen {
        let listener = tokio::net::TcpListener::bind(addr)
            .await
            .map_err(|e| usage(format!("--metrics-listen: cannot listen on {addr}: {e}")))?;
        if let Ok(bound) = listener.local_addr() {
            tracing::info!(addr = %bound, "metrics at GET /metrics");
        }
        tokio::spawn(rtunnel_core::metrics::serve(
            listener,
            || async { crate::metrics::global().render() },
            std::future::pending::<()>(),
        ));
    }
    let config = agent.config();
    let urls: Vec<&str> = config.endpoints.iter().map(|e| e.url.as_str()).collect();
    let services: Vec<&str> = config.services.iter().map(|s| s.name.as_str()).collect();
    tracing::info!(
        version = env!("CARGO_PKG_VERSION"),
        config_file = ?loaded.as_ref().map(|l| &l.path),
        urls = %urls.join(","),
        proxy = ?config.endpoints.first().and_then(|e| e.proxy.as_ref()),
        key = %config.key,
        services = %services.join(","),
        terminal = config.terminal.is_some(),
        "rtunnel-agent starting"
    );
    let flag_services = parse_services(&args.static_services).map_err(|e| usage(e.to_string()))?;
    let rereads = rereads(&agent, loaded, flag_services, args.discovery_interval);
    let ended = tokio::select! {
        ended = agent.run(rtunnel_core::signal::terminated()) => ended,
        _ = rereads => unreachable!("never ends"),
    };
    match ended {
        Ok(AgentExit::SessionClosed(_)) => Ok(()),
        Ok(AgentExit::Shutdown) => {
            if args.state_dir.is_none() && !agent.had_session() {
                tracing::info!("stopped before the server gave this agent a session");
            } else if args.state_dir.is_some() {
                tracing::info!(
                    "stopped; the session waits for this agent during the server's grace period, and a restart with the same --state-dir resumes it"
                );
            } else {
                tracing::info!(
                    "stopped; the session waits during the server's grace period (a restart starts a new session; --state-dir keeps it)"
                );
            }
            Ok(())
        }
        Err(AgentError::Config(m)) => Err(usage(m)),
        Err(e) => Err(Failure {
            code: 1,
            message: e.to_string(),
        }),
    }
}

/// Reads the settings file again on SIGHUP and every `interval` (unless
/// zero), offering its services when they changed. Never returns.
async fn rereads(
    agent: &Agent,
    loaded: Option<Loaded>,
    flag_services: Vec<ServiceSpec>,
    interval: Duration,
) {
    let mut hangups = rtunnel_core::signal::hangups();
    let Some(loaded) = loaded else {
        loop {
            hangups.recv().await;
            tracing::info!("SIGHUP: there is no --config file to read again");
        }
    };
    let mut ticks = (!interval.is_zero()).then(|| {
        let mut t = tokio::time::interval_at(tokio::time::Instant::now() + interval, interval);
        t.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        t
    });
    let mut warned: Vec<String> = Vec::new();
    let terminal_at_start = !loaded.services.excludes(crate::terminal::TERMINAL_SERVICE);
    loop {
        let why = tokio::select! {
            _ = hangups.recv() => "SIGHUP",
            _ = async { match &mut ticks { Some(t) => { t.tick().await; } None => std::future::pending().await } } => "--discovery-interval",
        };
        let (services, changed) = match crate::config::reread(&loaded.path, &loaded.first) {
            Ok(ok) => ok,
            Err(e) => {
                tracing::warn!("{why}: {e}; keeping the services offered now");
                continue;
            }
        };
        if !changed.is_empty() && changed != warned {
            tracing::warn!(
                "{why}: {} changed in {}; only services and exclude are read again, the rest takes effect at restart",
                changed.join(", "),
                loaded.path.display()
            );
        }
        warned = changed;
        let terminal_now = !services.excludes(crate::terminal::TERMINAL_SERVICE);
        if terminal_now != terminal_at_start {
            tracing::warn!(
                "{why}: the terminal is {} in {} now; that takes effect at restart",
                if terminal_now {
                    "no longer excluded"
                } else {
                    "excluded"
                },
                loaded.path.display()
            );
        }
        let offered = services.offered(&flag_services);
        let count = offered.len();
        match agent.set_services(offered) {
            Ok(true) => tracing::info!(
                "{why}: {} read again, {count} services offered",
                loaded.path.display()
            ),
            Ok(false) => tracing::debug!("{why}: services unchanged"),
            Err(e) => tracing::warn!(
                "{why}: {}: {e}; keeping the services offered now",
                loaded.path.display()
            ),
        }
    }
}

/// A credential given as a flag shows in `ps`: overwrite it in the
/// process's command line (and environment), and say that it was seen
/// meanwhile. `instead` names the better ways to pass it.
fn hide_credential(value: Option<&str>, what: &str, instead: &str) {
    // An empty value (a variable set to nothing) is no credential to hide.
    let Some(value) = value.filter(|v| !v.is_empty()) else {
        return;
    };
    let scrubbed = crate::harden::scrub_from_process(value);
    // Whatever the scrub did, the command line as it reads now decides.
    let visible = std::env::args_os().any(|a| a.to_string_lossy().contains(value));
    match (scrubbed, visible) {
        (Ok(s), false) if s.command_line > 0 => tracing::warn!(
            "{what} was given on the command line: it is hidden from ps now, but was visible until this moment; use {instead}"
        ),
        (_, false) => {}
        (Ok(_), true) => tracing::warn!(
            "{what} was given on the command line, where ps shows it (too short to hide safely); use {instead}"
        ),
        (Err(e), true) => tracing::warn!(
            "{what} was given on the command line, where ps shows it, and cannot be hidden ({e}); use {instead}"
        ),
    }
}

/// The proxy for `target`: the flag, else the environment.
fn resolve_proxy(flag: Option<&str>, target: &str) -> Result<Option<Proxy>, Failure> {
    let proxy = Proxy::resolve(flag, target, |name| std::env::var(name).ok())
        .map_err(|e| usage(e.to_string()))?;
    if let Some(p) = &proxy {
        tracing::info!("dialing {target} through the proxy {p}");
    }
    Ok(proxy)
}

/// The operator's API token, from `--token` or `RTUNNEL_TOKEN`: missing,
/// a usage error that names both (clap's own names only the flag).
fn api_token(token: Option<String>) -> Result<String, Failure> {
    token.filter(|t| !t.is_empty()).ok_or_else(|| {
        usage(
            "an API token is needed: set RTUNNEL_TOKEN (or pass --token; a flag shows in `ps`); \
             an admin prints one with `rtunnel-server user add NAME --role operator --token` \
             or `rtunnel-server token create NAME`",
        )
    })
}

/// `shell`: the remote shell's exit code, or 255 with one line on stderr.
async fn shell(args: ShellArgs) -> ExitCode {
    use crate::shell::{SHELL_FAILED, ShellConfig};
    hide_credential(args.token.as_deref(), "the token", "RTUNNEL_TOKEN");
    let setup = || -> Result<ShellConfig, Failure> {
        let token = api_token(args.token.clone())?;
        Ok(ShellConfig {
            proxy: resolve_proxy(args.proxy.as_deref(), &args.server)?,
            ca_roots: match &args.ca_file {
                Some(path) => crate::tls::ExtraRoots::load(path).map_err(usage)?,
                None => Default::default(),
            },
            server: args.server.clone(),
            token,
            system: args.system.clone(),
            tls_insecure: args.tls_insecure,
            attach: args.attach,
            watch: args.watch,
        })
    };
    let config = match setup() {
        Ok(c) => c,
        Err(f) => {
            eprintln!("rtunnel-agent: {}", f.message);
            return ExitCode::from(f.code);
        }
    };
    match crate::shell::run(config).await {
        Ok(code) => ExitCode::from(code),
        Err(why) => {
            eprintln!("rtunnel-agent: {why}");
            ExitCode::from(SHELL_FAILED)
        }
    }
}

async fn forward(args: ForwardArgs) -> Result<(), Failure> {
    hide_credential(args.token.as_deref(), "the token", "RTUNNEL_TOKEN");
    let token = api_token(args.token)?;
    let proxy = resolve_proxy(args.proxy.as_deref(), &args.server)?;
    let config = ForwardConfig {
        server: args.server,
        token,
        target: match (args.session, args.system) {
            (Some(id), _) => ForwardTarget::Session(id),
            (None, Some(name)) => ForwardTarget::System(name),
            (None, None) => return Err(usage("--session or --system is required")),
        },
        service: args.service,
        tls_insecure: args.tls_insecure,
        ca_roots: match &args.ca_file {
            Some(path) => crate::tls::ExtraRoots::load(path).map_err(usage)?,
            None => Default::default(),
        },
        proxy,
    };
    let listener = tokio::net::TcpListener::bind(args.listen)
        .await
        .map_err(|e| Failure {
            code: 1,
            message: format!("cannot listen on {}: {e}", args.listen),
        })?;
    let fwd = Forwarder::connect(config.clone())
        .await
        .map_err(|e| match e {
            ForwardError::Config(m) => usage(m),
            other => Failure {
                code: 1,
                message: other.to_string(),
            },
        })?;
    tracing::info!(
        "forwarding {} to service {} of {}",
        args.listen,
        config.service,
        config.target
    );
    fwd.serve(listener, rtunnel_core::signal::terminated())
        .await
        .map_err(|e| Failure {
            code: 1,
            message: e.to_string(),
        })
}
