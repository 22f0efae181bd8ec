//! The `rtunnel-server` command line: `serve` and the admin subcommands.
//!
//! Every flag has an environment variable; flags win. Exit codes: 0 on
//! success, 2 for bad flags or configuration, 1 for any other failure.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use clap::{Args, Parser, Subcommand};
use rtunnel_core::ids::SystemId;
use rtunnel_core::store::sql::SqlStore;
use rtunnel_core::store::{AuditKind, IdentityStore, Role, StoreError, User, now_millis};
use serde_json::json;
use uuid::Uuid;

mod lists;
mod remove;

use crate::config::ServerConfig;
use crate::enroll;
use crate::server::Server;

/// `rtunnel-server`: the rtunnel remote-support gateway.
#[derive(Debug, Parser)]
#[command(name = "rtunnel-server", version, about, long_about = None)]
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
    /// Settings file (TOML): the keys are the long flags' names
    /// (`listen = "0.0.0.0:8080"`, `grace_period = "60s"`); flags and
    /// environment variables win over it.
    #[arg(short = 'c', long, env = "RTUNNEL_CONFIG", global = true)]
    config: Option<PathBuf>,
    #[command(flatten)]
    store: StoreArgs,
    #[command(flatten)]
    serve: ServeArgs,
    #[command(subcommand)]
    command: Option<Command>,
}

#[derive(Debug, Args)]
struct StoreArgs {
    /// Directory for the database and the secret key.
    #[arg(
        long,
        env = "RTUNNEL_DATA_DIR",
        default_value = "./rtunnel-data",
        global = true
    )]
    data_dir: PathBuf,
    /// Database URL (default: sqlite://<data-dir>/rtunnel.db).
    #[arg(long, env = "RTUNNEL_DATABASE_URL", global = true)]
    database_url: Option<String>,
}

#[derive(Debug, Args)]
struct ServeArgs {
    /// Address to listen on.
    #[arg(
        long,
        env = "RTUNNEL_LISTEN",
        default_value = "127.0.0.1:8080",
        global = true
    )]
    listen: SocketAddr,
    /// Public base URL (default http://<listen>).
    #[arg(long, env = "RTUNNEL_PUBLIC_URL", global = true)]
    public_url: Option<String>,
    /// Domain of the subdomain proxy.
    #[arg(
        long,
        env = "RTUNNEL_PROXY_DOMAIN",
        default_value = "localhost",
        global = true
    )]
    proxy_domain: String,
    /// Serve every route under this path (such as /support), for a reverse
    /// proxy that maps a path to rtunnel; agents then dial
    /// ws://HOST/support/api/v1/tunnel.
    #[arg(long, env = "RTUNNEL_PATH_PREFIX", default_value = "", global = true)]
    path_prefix: String,
    /// Signing key file (default <data-dir>/secret.key, generated on first start).
    #[arg(long, env = "RTUNNEL_SECRET_KEY_FILE", global = true)]
    secret_key_file: Option<PathBuf>,
    /// Session launcher key file, shared with external gateways (default
    /// <data-dir>/launch.key, generated on first start).
    #[arg(long, env = "RTUNNEL_LAUNCH_KEY_FILE", global = true)]
    launch_key_file: Option<PathBuf>,
    /// How long a lost tunnel's session waits for its agent.
    #[arg(long, env = "RTUNNEL_GRACE_PERIOD", default_value = "60s", value_parser = humantime::parse_duration, global = true)]
    grace_period: Duration,
    /// How long a session lives.
    #[arg(long, env = "RTUNNEL_SESSION_TTL", default_value = "24h", value_parser = humantime::parse_duration, global = true)]
    session_ttl: Duration,
    /// How long a subdomain proxy token (and its browser cookie) lasts.
    #[arg(long, env = "RTUNNEL_PROXY_TOKEN_TTL", default_value = "1h", value_parser = humantime::parse_duration, global = true)]
    proxy_token_ttl: Duration,
    /// Most streams open at once on one tunnel.
    #[arg(long, env = "RTUNNEL_MAX_STREAMS", default_value_t = 64, global = true)]
    max_streams_per_tunnel: usize,
    /// Interval between heartbeats; a peer silent for three is dead.
    #[arg(long, env = "RTUNNEL_HEARTBEAT_INTERVAL", default_value = "15s", value_parser = humantime::parse_duration, global = true)]
    heartbeat_interval: Duration,
    /// Redis shared by the nodes of a cluster (none: this node is alone).
    #[arg(long, env = "RTUNNEL_REDIS_URL", global = true)]
    redis_url: Option<String>,
    /// Prefix of every Redis key and channel (deployments sharing one Redis
    /// use different ones).
    #[arg(
        long,
        env = "RTUNNEL_REDIS_PREFIX",
        default_value = "rtunnel:",
        global = true
    )]
    redis_prefix: String,
    /// This node's id in a cluster (default: kept in <data-dir>/node-id).
    #[arg(long, env = "RTUNNEL_NODE_ID", global = true)]
    node_id: Option<String>,
    /// Internal address of the node mesh, where other nodes reach this
    /// one's tunnels (required with --redis-url; keep it off the internet).
    #[arg(long, env = "RTUNNEL_NODE_LISTEN", global = true)]
    node_listen: Option<SocketAddr>,
    /// HOST:PORT other nodes dial for the node mesh (default: the bound
    /// --node-listen address).
    #[arg(long, env = "RTUNNEL_NODE_ADVERTISE", global = true)]
    node_advertise: Option<String>,
    /// Cluster key file, the same on every node (default
    /// <data-dir>/cluster.key, generated on first start).
    #[arg(long, env = "RTUNNEL_CLUSTER_KEY_FILE", global = true)]
    cluster_key_file: Option<PathBuf>,
    /// Reverse proxies whose X-Forwarded-For is believed: addresses and
    /// CIDR networks, comma-separated (default: none, the header is
    /// ignored).
    #[arg(long, env = "RTUNNEL_TRUSTED_PROXIES", default_value = "", value_parser = crate::client_addr::TrustedProxies::parse, global = true)]
    trusted_proxies: crate::client_addr::TrustedProxies,
    /// The most streams of one tunnel one operator may hold (default: half
    /// of --max-streams-per-tunnel), so one cannot take them all.
    #[arg(long, env = "RTUNNEL_MAX_STREAMS_PER_USER", global = true)]
    max_streams_per_user: Option<usize>,
    /// Connections the server holds at once, in all; more are answered 503.
    #[arg(
        long,
        env = "RTUNNEL_MAX_CONNECTIONS",
        default_value_t = 16_384,
        global = true
    )]
    max_connections: usize,
    /// Connections held at once from one address (IPv4, or IPv6 /64; the
    /// --trusted-proxies are exempt); more are answered 429.
    #[arg(
        long,
        env = "RTUNNEL_MAX_CONNECTIONS_PER_ADDRESS",
        default_value_t = 512,
        global = true
    )]
    max_connections_per_address: usize,
    /// Tunnels set up at once; agents beyond wait up to 2 s, then are told
    /// to come back later (503 server_busy with a spread Retry-After).
    #[arg(
        long,
        env = "RTUNNEL_MAX_TUNNEL_SETUPS",
        default_value_t = 64,
        global = true
    )]
    max_tunnel_setups: usize,
    /// Serve connections on this many threads, each a runtime of its own
    /// that a connection and its streams stay on (an operator's forward
    /// joins its tunnel's thread); 0 serves them on the shared runtime
    /// (see docs/OPERATIONS.md, "Threads"). Default: one per CPU.
    #[arg(long, env = "RTUNNEL_THREADS", global = true)]
    threads: Option<usize>,
    /// Serve HTTPS with this certificate chain (PEM, leaf first); with
    /// --tls-key. Read again on SIGHUP. Default: plain HTTP (for a reverse
    /// proxy in front that does TLS).
    #[arg(long, env = "RTUNNEL_TLS_CERT", requires = "tls_key", global = true)]
    tls_cert: Option<PathBuf>,
    /// The private key of --tls-cert (PEM).
    #[arg(long, env = "RTUNNEL_TLS_KEY", requires = "tls_cert", global = true)]
    tls_key: Option<PathBuf>,
    /// Serve Prometheus metrics at GET /metrics on this address (a listener
    /// of its own, no login: keep it internal). Default: off.
    #[arg(long, env = "RTUNNEL_METRICS_LISTEN", global = true)]
    metrics_listen: Option<SocketAddr>,
    /// How long audit events and closed access-log entries are kept
    /// (pruned daily), or `never` to keep them forever.
    #[arg(long, env = "RTUNNEL_AUDIT_RETENTION", default_value = "365d", value_parser = parse_retention, global = true)]
    audit_retention: Retention,
    /// How often refusals that are counted, not audited one by one, are
    /// reported (log lines, aggregated audit events).
    #[arg(long, env = "RTUNNEL_REFUSAL_REPORT_INTERVAL", default_value = "60s", value_parser = humantime::parse_duration, global = true, hide = true)]
    refusal_report_interval: Duration,
}

/// The command line, with `--config FILE` filling what flags and
/// environment variables left. Bad flags end the process as clap does.
fn parse_command_line() -> Result<Cli, Failure> {
    use clap::{CommandFactory, FromArgMatches};
    use rtunnel_core::cli_config::{self, ConfigFile};
    let mut argv: Vec<std::ffi::OsString> = std::env::args_os().collect();
    let first = Cli::command().get_matches_from(&argv);
    let given = cli_config::chain(&first);
    if let Some(path) = cli_config::path_in(&given, "config") {
        let file = ConfigFile::load(&path).map_err(|e| Failure::usage(e.to_string()))?;
        let flags = file
            .flags(&Cli::command(), &given)
            .map_err(|e| Failure::usage(e.to_string()))?;
        argv.extend(flags.into_iter().map(Into::into));
        let matches = Cli::command()
            .try_get_matches_from(&argv)
            .map_err(|e| Failure::usage(file.error(cli_config::describe(&e)).to_string()))?;
        return Cli::from_arg_matches(&matches).map_err(|e| Failure::usage(e.to_string()));
    }
    Cli::from_arg_matches(&first).map_err(|e| Failure::usage(e.to_string()))
}

/// `--audit-retention`: a duration, or none.
#[derive(Debug, Clone, Copy)]
struct Retention(Option<Duration>);

fn parse_retention(s: &str) -> Result<Retention, String> {
    if s.eq_ignore_ascii_case("never") {
        return Ok(Retention(None));
    }
    let d = humantime::parse_duration(s).map_err(|e| format!("{e} (or `never`)"))?;
    if d < Duration::from_secs(24 * 3600) {
        return Err("must be at least 1d (or `never`)".into());
    }
    Ok(Retention(Some(d)))
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Run the server (the default).
    Serve,
    /// Apply database migrations and exit.
    Migrate,
    /// Print a shell completion script (bash, zsh, fish, elvish,
    /// powershell), such as `rtunnel-server completions bash >
    /// /etc/bash_completion.d/rtunnel-server`.
    Completions {
        /// The shell.
        shell: clap_complete::Shell,
    },
    /// Print the man page (roff), such as `rtunnel-server man >
    /// /usr/share/man/man1/rtunnel-server.1`.
    Man,
    /// Write a consistent copy of the SQLite database to PATH (a new file)
    /// while the server runs. Restore: stop the server, put the copy in
    /// place of <data-dir>/rtunnel.db, start it. Keep the key files too.
    Backup {
        /// The new file.
        path: PathBuf,
    },
    /// Manage users.
    #[command(subcommand)]
    User(UserCommand),
    /// Manage API tokens.
    #[command(subcommand)]
    Token(TokenCommand),
    /// Manage systems.
    #[command(subcommand)]
    System(SystemCommand),
    /// Give an operator access to a system (or, with --resource, let a
    /// user launch a resource).
    Grant {
        /// User name.
        user: String,
        /// System (or resource) name or id.
        system: String,
        /// SYSTEM names a launcher resource.
        #[arg(long)]
        resource: bool,
        /// The grant ends by itself after this long, such as 8h (default:
        /// until revoked).
        #[arg(long, value_parser = humantime::parse_duration)]
        expires_in: Option<Duration>,
    },
    /// List the active grants on systems.
    Grants {
        /// Only this user's.
        #[arg(long)]
        user: Option<String>,
        /// Only on this system.
        #[arg(long)]
        system: Option<String>,
        /// Print one JSON object.
        #[arg(long)]
        json: bool,
    },
    /// Take an operator's access to a system (or resource) away.
    Revoke {
        /// User name.
        user: String,
        /// System (or resource) name or id.
        system: String,
        /// SYSTEM names a launcher resource.
        #[arg(long)]
        resource: bool,
    },
}

#[derive(Debug, Subcommand)]
enum UserCommand {
    /// Create a user.
    Add {
        /// Login name.
        name: String,
        /// admin, operator or viewer.
        #[arg(long)]
        role: Role,
        /// Email address (the launcher's default TSPlus user).
        #[arg(long)]
        email: Option<String>,
        /// Read a password for `POST /api/v1/auth/login` from the first
        /// line of standard input.
        #[arg(long)]
        password_stdin: bool,
        /// Also create and print an API token.
        #[arg(long)]
        token: bool,
        /// Lifetime of that token, such as 30d, or `never`.
        #[arg(long, default_value = "90d", value_parser = parse_lifetime)]
        ttl: Lifetime,
        /// Print one JSON object.
        #[arg(long)]
        json: bool,
    },
    /// Set a user's password from the first line of standard input.
    Passwd {
        /// User name.
        name: String,
    },
    /// List users.
    List {
        /// Print one JSON object.
        #[arg(long)]
        json: bool,
    },
    /// Disable a user: their logins end and open connections are cut
    /// within a second.
    Disable {
        /// User name.
        name: String,
    },
    /// Enable a disabled user again.
    Enable {
        /// User name.
        name: String,
    },
    /// Delete a user with their grants, API tokens and logins (what they
    /// opened is cut within a second); the audit log keeps their name.
    Remove {
        /// User name.
        name: String,
    },
}

#[derive(Debug, Subcommand)]
enum TokenCommand {
    /// Print a new API token for a user.
    Create {
        /// User name.
        name: String,
        /// Lifetime, such as 30d, or `never`.
        #[arg(long, default_value = "90d", value_parser = parse_lifetime)]
        ttl: Lifetime,
        /// Print one JSON object.
        #[arg(long)]
        json: bool,
    },
    /// List API tokens, newest first (never their secrets).
    List {
        /// Only this user's.
        #[arg(long)]
        user: Option<String>,
        /// Print one JSON object.
        #[arg(long)]
        json: bool,
    },
    /// Revoke an API token: it is refused at once, and what was opened
    /// with it is cut within a second.
    Revoke {
        /// The token's id (`token list`, or the 32 hex digits after `rtk_`
        /// in the token itself).
        id: Uuid,
    },
}

/// A token's lifetime: a duration, or none.
#[derive(Debug, Clone, Copy)]
struct Lifetime(Option<Duration>);

fn parse_lifetime(s: &str) -> Result<Lifetime, String> {
    if s.eq_ignore_ascii_case("never") {
        return Ok(Lifetime(None));
    }
    humantime::parse_duration(s)
        .map(|d| Lifetime(Some(d)))
        .map_err(|e| format!("{e} (or `never`)"))
}

#[derive(Debug, Subcommand)]
enum SystemCommand {
    /// Enroll a system; prints its id, key and secret (the secret only here).
    Add {
        /// Unique name.
        name: String,
        /// Print one JSON object.
        #[arg(long)]
        json: bool,
    },
    /// List systems: whether each agent is connected, its current session.
    List {
        /// Print one JSON object.
        #[arg(long)]
        json: bool,
    },
    /// Delete a system with its sessions, access logs and grants; its
    /// tunnel is closed within a second and its agent refused from then on.
    Remove {
        /// Its name.
        name: String,
    },
    /// Rename a system (its key, secret and sessions stay).
    Rename {
        /// Its name now.
        name: String,
        /// Its new name.
        new_name: String,
    },
}

/// A failure with its exit code.
#[derive(Debug)]
struct Failure {
    code: u8,
    message: String,
}

/// A store's refusal said to an administrator: a name already taken in
/// plain words, with what to do instead (not the database's constraint
/// text); anything else after `doing`.
fn store_failure(e: StoreError, doing: &str, taken: &str) -> Failure {
    match e {
        StoreError::Conflict(_) => Failure::other(taken),
        e => Failure::other(format!("{doing}: {e}")),
    }
}

impl Failure {
    fn usage(message: impl Into<String>) -> Self {
        Failure {
            code: 2,
            message: message.into(),
        }
    }
    fn other(message: impl Into<String>) -> Self {
        Failure {
            code: 1,
            message: message.into(),
        }
    }
}

/// Parses the command line and runs it.
pub async fn main() -> ExitCode {
    let cli = match parse_command_line() {
        Ok(cli) => cli,
        Err(f) => {
            eprintln!("rtunnel-server: {}", f.message);
            return ExitCode::from(f.code);
        }
    };
    // Generated from the command line itself: no logging, no database.
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
    if let Err(e) = rtunnel_core::logging::init(cli.log_format) {
        eprintln!("rtunnel-server: {e}");
        return ExitCode::from(2);
    }
    // Whatever this process creates (database, WAL, keys, node id,
    // recordings, directories) is its user's alone.
    crate::keys::private_files();
    match run(cli).await {
        Ok(()) => ExitCode::SUCCESS,
        Err(f) => {
            eprintln!("rtunnel-server: {}", f.message);
            ExitCode::from(f.code)
        }
    }
}

/// Opens the database. Only `serve` and `migrate` may create it: an admin
/// command pointed at the wrong data directory would otherwise make a new,
/// empty database there and print keys no server knows.
async fn open_store(args: &StoreArgs, may_create: bool) -> Result<SqlStore, Failure> {
    if !may_create {
        let file = match args.database_url.as_deref() {
            None => Some(crate::server::default_database_path(&args.data_dir)),
            Some(url) => url
                .strip_prefix("sqlite://")
                .or_else(|| url.strip_prefix("sqlite:"))
                .map(|rest| PathBuf::from(rest.split('?').next().unwrap_or(rest))),
        };
        if let Some(file) = file.filter(|f| !f.exists()) {
            return Err(Failure::usage(format!(
                "there is no database at {}: admin commands work on the database a server \
                 created; pass the --data-dir (or RTUNNEL_DATA_DIR) the server uses, or \
                 create it with `rtunnel-server serve` or `rtunnel-server migrate`",
                file.display()
            )));
        }
    }
    let result = match &args.database_url {
        Some(url)
            if ["sqlite:", "postgres://", "postgresql://"]
                .iter()
                .any(|scheme| url.starts_with(scheme)) =>
        {
            SqlStore::connect(url).await
        }
        Some(_) => {
            return Err(Failure::usage(
                "unsupported --database-url: use sqlite://PATH or postgres://USER@HOST[:PORT]/DATABASE",
            ));
        }
        None => SqlStore::open(&crate::server::default_database_path(&args.data_dir)).await,
    };
    result.map_err(|e| Failure::other(format!("cannot open the database: {e}")))
}

async fn run(cli: Cli) -> Result<(), Failure> {
    let may_create = matches!(
        cli.command,
        None | Some(Command::Serve) | Some(Command::Migrate)
    );
    let store = open_store(&cli.store, may_create).await?;
    match cli.command {
        None | Some(Command::Serve) => serve(cli.store, cli.serve, cli.config, store).await,
        Some(Command::Migrate) => {
            eprintln!("rtunnel-server: database is up to date");
            Ok(())
        }
        // Answered by `main` before the database is opened.
        Some(Command::Completions { .. } | Command::Man) => Ok(()),
        Some(Command::Backup { path }) => backup(&cli.store, &store, &path).await,
        Some(Command::User(UserCommand::Add {
            name,
            role,
            email,
            password_stdin,
            token,
            ttl,
            json,
        })) => {
            let password = password_stdin.then(read_password).transpose()?;
            let (user, hash) = enroll::new_user(&name, role, email, password.as_deref())
                .map_err(|e| Failure::usage(e.message))?;
            let token = token.then_some(ttl.0);
            user_add(&store, user, hash, token, json).await
        }
        Some(Command::User(UserCommand::Passwd { name })) => {
            let user = find_user(&store, &name).await?;
            let hash = rtunnel_auth::password::hash_password(&read_password()?)
                .map_err(|e| Failure::usage(e.to_string()))?;
            audit_admin(
                &store,
                AuditKind::UserPasswordSet,
                None,
                json!({"name": name}),
            )
            .await?;
            let ended = enroll::set_password(&store, &store, user.id, Some(&hash))
                .await
                .map_err(|e| Failure::other(e.to_string()))?
                .unwrap_or(0);
            eprintln!("{name}: password set; {ended} login(s) ended");
            Ok(())
        }
        Some(Command::User(UserCommand::List { json })) => lists::users(&store, json).await,
        Some(Command::User(UserCommand::Remove { name })) => remove::user(&store, &name).await,
        Some(Command::System(SystemCommand::Remove { name })) => {
            remove::system(&store, &name).await
        }
        Some(Command::System(SystemCommand::List { json })) => lists::systems(&store, json).await,
        Some(Command::System(SystemCommand::Rename { name, new_name })) => {
            lists::rename_system(&store, &name, &new_name).await
        }
        Some(Command::Grants { user, system, json }) => {
            lists::grants(&store, user.as_deref(), system.as_deref(), json).await
        }
        Some(Command::User(UserCommand::Disable { name })) => {
            set_user_disabled(&store, &name, true).await
        }
        Some(Command::User(UserCommand::Enable { name })) => {
            set_user_disabled(&store, &name, false).await
        }
        Some(Command::Token(TokenCommand::Create { name, ttl, json })) => {
            let user = find_user(&store, &name).await?;
            let (id, token) = create_token(&store, &user, ttl.0).await?;
            print_out(
                json,
                json!({"id": id, "user": user.name, "token": token}),
                &token,
            );
            Ok(())
        }
        Some(Command::Token(TokenCommand::List { user, json })) => {
            token_list(&store, user.as_deref(), json).await
        }
        Some(Command::Token(TokenCommand::Revoke { id })) => {
            let revoked = store
                .revoke_api_token(id, now_millis())
                .await
                .map_err(|e| Failure::other(e.to_string()))?;
            if !revoked {
                let known = store
                    .api_token(id)
                    .await
                    .map_err(|e| Failure::other(e.to_string()))?;
                return match known {
                    Some(_) => {
                        eprintln!("token {id}: already revoked");
                        Ok(())
                    }
                    None => Err(Failure::other(format!("no token with id {id}"))),
                };
            }
            audit_admin(
                &store,
                AuditKind::ApiTokenRevoked,
                None,
                json!({"token_id": id}),
            )
            .await?;
            eprintln!("token {id}: revoked");
            Ok(())
        }
        Some(Command::System(SystemCommand::Add { name, json })) => {
            enroll::validate_name(&name).map_err(|e| Failure::usage(e.message))?;
            let (system, enrolled) = enroll::new_system(&name);
            store.create_system(&system).await.map_err(|e| {
                store_failure(
                    e,
                    &format!("cannot create system {name:?}"),
                    &format!(
                        "a system named {name:?} exists already \
                             (`rtunnel-server system list`; pick another name, or \
                             `rtunnel-server system remove {name}` first)"
                    ),
                )
            })?;
            audit_admin(
                &store,
                AuditKind::SystemCreated,
                Some(system.id),
                json!({"name": name}),
            )
            .await?;
            let text = format!(
                "id:     {}\nkey:    {}\nsecret: {}\n(the secret is shown only now)",
                enrolled.id, enrolled.key, enrolled.secret
            );
            print_out(
                json,
                serde_json::to_value(&enrolled).unwrap_or_default(),
                &text,
            );
            Ok(())
        }
        Some(Command::Grant {
            user,
            system,
            resource,
            expires_in,
        }) => grant_or_revoke(&store, &user, &system, resource, Some(expires_in)).await,
        Some(Command::Revoke {
            user,
            system,
            resource,
        }) => grant_or_revoke(&store, &user, &system, resource, None).await,
    }
}

async fn serve(
    store_args: StoreArgs,
    args: ServeArgs,
    config_file: Option<PathBuf>,
    store: SqlStore,
) -> Result<(), Failure> {
    let listener = tokio::net::TcpListener::bind(args.listen)
        .await
        .map_err(|e| Failure::other(format!("cannot listen on {}: {e}", args.listen)))?;
    // Without --public-url, URLs handed out name the address really bound
    // (which matters with port 0).
    let bound = listener.local_addr().unwrap_or(args.listen);
    let config = ServerConfig {
        listen: bound,
        data_dir: store_args.data_dir,
        public_url: args.public_url.unwrap_or_else(|| {
            let scheme = if args.tls_cert.is_some() {
                "https"
            } else {
                "http"
            };
            format!("{scheme}://{bound}")
        }),
        proxy_domain: args.proxy_domain,
        path_prefix: args.path_prefix,
        proxy_token_ttl: args.proxy_token_ttl,
        session_ttl: args.session_ttl,
        grace_period: args.grace_period,
        max_streams_per_tunnel: args.max_streams_per_tunnel,
        heartbeat_interval: args.heartbeat_interval,
        secret_key_file: args.secret_key_file,
        production: std::env::var("RTUNNEL_ENV").is_ok_and(|v| v == "production"),
        launch_key_file: args.launch_key_file,
        // The launcher contract's own variable names.
        pomerium_base_url: std::env::var("POMERIUM_BASE_URL")
            .ok()
            .filter(|v| !v.is_empty()),
        tsplus_base_url: std::env::var("TSPLUS_BASE_URL")
            .ok()
            .filter(|v| !v.is_empty()),
        node_id: args.node_id,
        redis_url: args.redis_url,
        redis_prefix: args.redis_prefix,
        node_listen: args.node_listen,
        node_advertise: args.node_advertise,
        cluster_key_file: args.cluster_key_file,
        trusted_proxies: args.trusted_proxies,
        audit_retention: args.audit_retention.0,
        refusal_report_interval: args.refusal_report_interval,
        max_streams_per_user: args.max_streams_per_user,
        max_connections: args.max_connections,
        max_connections_per_address: args.max_connections_per_address,
        max_tunnel_setups: args.max_tunnel_setups,
        threads: args.threads.unwrap_or_else(threads_per_cpu),
        metrics_listen: args.metrics_listen,
        tls: match (args.tls_cert, args.tls_key) {
            (Some(cert), Some(key)) => Some(crate::TlsFiles { cert, key }),
            _ => None,
        },
        ..ServerConfig::default()
    };
    if config.tls.is_some() && config.public_url.starts_with("http://") {
        tracing::warn!(
            public_url = %config.public_url,
            "the server serves HTTPS but --public-url says http://: links and cookies will be wrong; use https://"
        );
    }
    config.validate().map_err(Failure::usage)?;
    let database = store_args.database_url.as_deref().map_or_else(
        || {
            crate::server::default_database_path(&config.data_dir)
                .display()
                .to_string()
        },
        rtunnel_core::redact::url,
    );
    tracing::info!(
        version = env!("CARGO_PKG_VERSION"),
        database,
        config_file = ?config_file,
        config = %config.summary(),
        "rtunnel-server starting"
    );
    let first_steps = first_steps(&store, &config).await;
    let server = Server::builder()
        .config(config)
        .stores(crate::state::Stores::sqlite(store))
        .build()
        .await
        .map_err(|e| match e {
            crate::server::ServerError::Config(m) => Failure::usage(m),
            other => Failure::other(other.to_string()),
        })?;
    tokio::spawn(reload_on_hangup(server.tls()));
    if let Some(hint) = first_steps {
        tracing::info!("{hint}");
    }
    server
        .serve(listener, rtunnel_core::signal::terminated())
        .await
        .map_err(|e| Failure::other(format!("server failed: {e}")))
}

/// What to do next on a database without users: a newcomer's server
/// otherwise says only that it listens.
async fn first_steps(store: &SqlStore, config: &ServerConfig) -> Option<String> {
    let page = rtunnel_core::store::Page {
        page: 1,
        page_size: 1,
    };
    let users = store.list_users(page).await.ok()?;
    (users.total == 0).then(|| {
        format!(
            "no users yet: in another terminal (same --data-dir or --database-url) create the first \
             admin with `rtunnel-server user add NAME --role admin --token` (prints an API \
             token), give it a password with `rtunnel-server user passwd NAME` to sign in to \
             the console at {}{}/console/, and enroll a system with `rtunnel-server system add \
             NAME`",
            config.public_url.trim_end_matches('/'),
            config.path_prefix
        )
    })
}

/// The binary's default connection threads: one per CPU it may use (its
/// affinity and cgroup quota), at most `MAX_THREADS`.
fn threads_per_cpu() -> usize {
    std::thread::available_parallelism()
        .map_or(1, std::num::NonZeroUsize::get)
        .min(crate::config::MAX_THREADS)
}

/// On SIGHUP, reads the TLS certificate and key again (a renewed
/// certificate); a failure keeps the one in use.
async fn reload_on_hangup(tls: Option<std::sync::Arc<crate::TlsReloader>>) {
    let mut hangups = rtunnel_core::signal::hangups();
    loop {
        hangups.recv().await;
        match &tls {
            None => tracing::info!("SIGHUP: nothing to reload (no --tls-cert)"),
            Some(tls) => match tls.reload() {
                Ok(()) => tracing::info!(
                    cert = %tls.files().cert.display(),
                    "SIGHUP: TLS certificate reloaded; new connections use it"
                ),
                Err(e) => tracing::error!("SIGHUP: {e}; keeping the certificate in use"),
            },
        }
    }
}

/// `backup PATH`: the copy, then what else a restore needs.
async fn backup(args: &StoreArgs, store: &SqlStore, path: &std::path::Path) -> Result<(), Failure> {
    store.backup_to(path).await.map_err(|e| match e {
        StoreError::Conflict(m) => Failure::usage(m),
        other => Failure::other(format!("backup failed: {other}")),
    })?;
    let size = std::fs::metadata(path).map(|m| m.len()).unwrap_or(0);
    print_out(false, serde_json::Value::Null, &path.display().to_string());
    let keys: Vec<String> = ["secret.key", "launch.key", "cluster.key"]
        .iter()
        .map(|k| args.data_dir.join(k))
        .filter(|k| k.exists())
        .map(|k| k.display().to_string())
        .collect();
    eprintln!(
        "rtunnel-server: wrote a consistent copy of the database ({size} bytes) to {}. \
         It holds every user, system, grant, session and the audit log, with password and \
         secret hashes: keep it as private as the data directory. Keep the key files with it \
         (not in the copy): {}",
        path.display(),
        if keys.is_empty() {
            "none found in the data directory".to_owned()
        } else {
            keys.join(", ")
        }
    );
    Ok(())
}

/// The first line of standard input, without its line ending.
/// On a terminal, asks for it twice without echoing it.
fn read_password() -> Result<String, Failure> {
    if std::io::IsTerminal::is_terminal(&std::io::stdin()) {
        let first = prompt_quietly("Password: ")?;
        let again = prompt_quietly("Again: ")?;
        if first != again {
            return Err(Failure::usage("the two passwords differ; nothing changed"));
        }
        return non_empty(first);
    }
    non_empty(read_line()?)
}

fn non_empty(password: String) -> Result<String, Failure> {
    if password.is_empty() {
        return Err(Failure::usage("no password on standard input"));
    }
    Ok(password)
}

fn read_line() -> Result<String, Failure> {
    let mut line = String::new();
    std::io::stdin()
        .read_line(&mut line)
        .map_err(|e| Failure::other(format!("cannot read the password from stdin: {e}")))?;
    let password = line.strip_suffix('\n').unwrap_or(&line);
    let password = password.strip_suffix('\r').unwrap_or(password);
    Ok(password.to_owned())
}

/// Shows `prompt` on stderr and reads a line from the terminal with its
/// echo off (restored after, also when reading fails).
fn prompt_quietly(prompt: &str) -> Result<String, Failure> {
    use rustix::termios::{LocalModes, OptionalActions, tcgetattr, tcsetattr};
    let stdin = std::io::stdin();
    let cannot = |e: rustix::io::Errno| Failure::other(format!("cannot turn the echo off: {e}"));
    let saved = tcgetattr(&stdin).map_err(cannot)?;
    let mut quiet = saved.clone();
    quiet.local_modes.remove(LocalModes::ECHO);
    quiet.local_modes.insert(LocalModes::ECHONL);
    tcsetattr(&stdin, OptionalActions::Flush, &quiet).map_err(cannot)?;
    eprint!("{prompt}");
    let line = read_line();
    let _ = tcsetattr(&stdin, OptionalActions::Now, &saved);
    line
}

async fn set_user_disabled(store: &SqlStore, name: &str, disabled: bool) -> Result<(), Failure> {
    let user = find_user(store, name).await?;
    enroll::set_disabled(store, store, user.id, disabled)
        .await
        .map_err(|e| Failure::other(e.to_string()))?;
    let event = if disabled {
        AuditKind::UserDisabled
    } else {
        AuditKind::UserEnabled
    };
    audit_admin(store, event, None, json!({"name": name})).await?;
    eprintln!("{name}: {}", if disabled { "disabled" } else { "enabled" });
    Ok(())
}

async fn user_add(
    store: &SqlStore,
    user: User,
    password_hash: Option<String>,
    with_token: Option<Option<Duration>>,
    json: bool,
) -> Result<(), Failure> {
    let name = user.name.clone();
    let role = user.role;
    store.create_user(&user).await.map_err(|e| {
        store_failure(
            e,
            &format!("cannot create user {name:?}"),
            &format!(
                "a user named {name:?} exists already; to set its password: \
                     `rtunnel-server user passwd {name}`"
            ),
        )
    })?;
    if let Some(hash) = &password_hash {
        store
            .set_password_hash(user.id, Some(hash))
            .await
            .map_err(|e| Failure::other(format!("cannot store the password: {e}")))?;
    }
    audit_admin(
        store,
        AuditKind::UserCreated,
        None,
        json!({"name": name, "role": role}),
    )
    .await?;
    let token = match with_token {
        Some(ttl) => Some(create_token(store, &user, ttl).await?),
        None => None,
    };
    let text = match &token {
        Some((_, t)) => t.clone(),
        None => format!("created user {name} ({})", role.as_str()),
    };
    let (token_id, token) = token.unzip();
    print_out(
        json,
        json!({"id": user.id, "name": name, "role": role, "token": token, "token_id": token_id}),
        &text,
    );
    Ok(())
}

/// A new API token for `user`: its id and the token, shown once.
async fn create_token(
    store: &SqlStore,
    user: &User,
    ttl: Option<Duration>,
) -> Result<(Uuid, String), Failure> {
    let expires_at = ttl.map(|t| now_millis().saturating_add(t.as_millis() as i64));
    let (record, token) = enroll::new_api_token(user.id, expires_at);
    store
        .create_api_token(&record)
        .await
        .map_err(|e| Failure::other(format!("cannot store the token: {e}")))?;
    audit_admin(
        store,
        AuditKind::ApiTokenCreated,
        None,
        json!({"token_id": record.id, "user": user.name, "expires_at": expires_at}),
    )
    .await?;
    Ok((record.id, token))
}

/// `token list`: a table, or one JSON object with `items`.
async fn token_list(store: &SqlStore, user: Option<&str>, json: bool) -> Result<(), Failure> {
    let owner = match user {
        Some(name) => Some(find_user(store, name).await?),
        None => None,
    };
    let items = lists::all(|p| store.list_api_tokens(owner.as_ref().map(|u| u.id), p)).await?;
    let mut names = std::collections::HashMap::new();
    for t in &items {
        if let std::collections::hash_map::Entry::Vacant(slot) = names.entry(t.user_id) {
            let name = store
                .user_by_id(t.user_id)
                .await
                .map_err(|e| Failure::other(e.to_string()))?
                .map_or_else(|| t.user_id.to_string(), |u| u.name);
            slot.insert(name);
        }
    }
    let now = now_millis();
    let status = |t: &rtunnel_core::store::ApiTokenRecord| t.status(now);
    let rows: Vec<_> = items
        .iter()
        .map(|t| {
            json!({
                "id": t.id,
                "user": names[&t.user_id],
                "user_id": t.user_id,
                "created_at": rtunnel_core::store::rfc3339(t.created_at),
                "expires_at": t.expires_at.map(rtunnel_core::store::rfc3339),
                "revoked_at": t.revoked_at.map(rtunnel_core::store::rfc3339),
                "status": status(t),
            })
        })
        .collect();
    let day = lists::day;
    let mut text = format!(
        "{:<36}  {:<16}  {:<20}  {:<20}  STATUS",
        "ID", "USER", "CREATED", "EXPIRES"
    );
    for t in &items {
        text.push_str(&format!(
            "\n{:<36}  {:<16}  {:<20}  {:<20}  {}",
            t.id,
            names[&t.user_id],
            day(t.created_at),
            t.expires_at.map_or_else(|| "never".to_owned(), day),
            status(t)
        ));
    }
    let total = rows.len();
    print_out(json, json!({"items": rows, "total": total}), &text);
    Ok(())
}

async fn find_user(store: &SqlStore, name: &str) -> Result<User, Failure> {
    store
        .user_by_name(name)
        .await
        .map_err(|e| Failure::other(e.to_string()))?
        .ok_or_else(|| Failure::other(format!("no user named {name:?}")))
}

/// Grants (`grant` is `Some(expires_in)`) or revokes (`None`) a user's
/// access to a system, or to a launcher resource.
async fn grant_or_revoke(
    store: &SqlStore,
    user: &str,
    target: &str,
    resource: bool,
    grant: Option<Option<Duration>>,
) -> Result<(), Failure> {
    use rtunnel_core::store::ResourceStore;
    let give = grant.is_some();
    let user = find_user(store, user).await?;
    let by_id = Uuid::parse_str(target).ok();
    let other = |e: StoreError| Failure::other(e.to_string());
    let missing = || {
        let what = if resource { "resource" } else { "system" };
        Failure::other(format!("no {what} named {target:?}"))
    };
    /// What the grant is on: the two kinds of id stay apart.
    #[derive(Clone, Copy)]
    enum Target {
        System(SystemId),
        Resource(Uuid),
    }
    let (target, target_name) = if resource {
        let found = match by_id {
            Some(id) => store.resource(id).await,
            None => store.resource_by_name(target).await,
        };
        let r = found.map_err(other)?.ok_or_else(missing)?;
        (Target::Resource(r.id), r.name)
    } else {
        let found = match by_id {
            Some(id) => store.system(SystemId::from(id)).await,
            None => store.system_by_name(target).await,
        };
        let s = found.map_err(other)?.ok_or_else(missing)?;
        (Target::System(s.id), s.name)
    };
    let now = now_millis();
    let expires_at = grant.flatten().map(|d| now + d.as_millis() as i64);
    let changed = match (give, target) {
        (true, Target::System(id)) => store.grant(user.id, id, expires_at, now).await,
        (false, Target::System(id)) => store.revoke(user.id, id, now).await,
        (true, Target::Resource(id)) => store.grant_resource(user.id, id, expires_at, now).await,
        (false, Target::Resource(id)) => store.revoke_resource(user.id, id, now).await,
    }
    .map_err(other)?;
    let event = if give {
        AuditKind::GrantCreated
    } else {
        AuditKind::GrantRevoked
    };
    let mut details = json!({"user": user.name});
    let system_id = match target {
        Target::System(id) => Some(id),
        Target::Resource(id) => {
            details["resource_id"] = json!(id);
            details["resource_name"] = json!(target_name);
            None
        }
    };
    if let Some(at) = expires_at {
        details["expires_at"] = json!(rtunnel_core::store::rfc3339(at));
    }
    audit_admin(store, event, system_id, details).await?;
    let what = match (give, changed) {
        (true, true) => "granted",
        (true, false) => "already granted",
        (false, true) => "revoked",
        (false, false) => "had no active grant",
    };
    eprintln!("{}: {what} on {target_name}", user.name);
    Ok(())
}

async fn audit_admin(
    store: &SqlStore,
    event: AuditKind,
    system_id: Option<SystemId>,
    details: serde_json::Value,
) -> Result<(), Failure> {
    use rtunnel_core::store::AuditSink;
    let mut ev = rtunnel_core::store::AuditEvent::new(event);
    ev.actor = Some("cli".into());
    ev.system_id = system_id;
    ev.details = details;
    store
        .record(&ev)
        .await
        .map_err(|e| Failure::other(format!("cannot write the audit log: {e}")))
}

#[allow(clippy::print_stdout)]
fn print_out(json: bool, value: serde_json::Value, text: &str) {
    if json {
        println!("{value}");
    } else {
        println!("{text}");
    }
}
