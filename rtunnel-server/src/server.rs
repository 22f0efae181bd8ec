//! Assembling and running a server: [`Server::builder`].

use std::future::Future;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use rtunnel_core::proto::CloseCode;
use rtunnel_core::store::sql::SqlStore;
use rtunnel_core::store::{StoreError, now_millis};
use rtunnel_core::token::TokenSigner;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

use crate::cluster::Cluster;
use crate::config::ServerConfig;
use crate::registry::Registry;
use crate::revocation::AccessWatch;
use crate::state::{AppState, Stores};

/// How long shutdown waits for agents to be told and tunnels to end.
pub(crate) const SHUTDOWN_DRAIN: Duration = Duration::from_secs(3);

/// Why a server could not be built.
#[derive(Debug, thiserror::Error)]
pub enum ServerError {
    /// The store could not be opened or prepared.
    #[error("store: {0}")]
    Store(#[from] StoreError),
    /// The configuration is unusable.
    #[error("configuration: {0}")]
    Config(String),
}

/// Builds a [`Server`].
#[derive(Default)]
pub struct ServerBuilder {
    config: ServerConfig,
    stores: Option<Stores>,
    signer: Option<Arc<dyn TokenSigner>>,
    recordings: Option<Arc<dyn rtunnel_core::recording::RecordingStore>>,
}

impl std::fmt::Debug for ServerBuilder {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ServerBuilder")
            .field("config", &self.config)
            .finish_non_exhaustive()
    }
}

impl ServerBuilder {
    /// Sets the configuration (default: [`ServerConfig::default`]).
    pub fn config(mut self, config: ServerConfig) -> Self {
        self.config = config;
        self
    }

    /// Uses these stores instead of SQLite in the data directory.
    pub fn stores(mut self, stores: Stores) -> Self {
        self.stores = Some(stores);
        self
    }

    /// Keeps terminal recordings here instead of in files under
    /// `<data-dir>/recordings`.
    pub fn recordings(mut self, store: Arc<dyn rtunnel_core::recording::RecordingStore>) -> Self {
        self.recordings = Some(store);
        self
    }

    /// Uses this token signer instead of one keyed from the data directory.
    pub fn signer(mut self, signer: Arc<dyn TokenSigner>) -> Self {
        self.signer = Some(signer);
        self
    }

    /// Connects to the cluster's Redis and opens the node mesh listener;
    /// tickets and rate limits move to Redis, where every node sees them.
    #[cfg(feature = "redis")]
    async fn join_cluster(
        config: &ServerConfig,
        url: &str,
        node_id: &str,
        registry: &Arc<Registry>,
        access: &AccessWatch,
        stores: &mut Stores,
    ) -> Result<(Cluster, TcpListener), ServerError> {
        use rtunnel_core::store::redis::{RedisConnection, RedisRateLimiter, RedisTicketStore};
        let key_path = config
            .cluster_key_file
            .clone()
            .unwrap_or_else(|| config.data_dir.join("cluster.key"));
        let (key, identity, seal) =
            crate::keys::load_or_create_cluster_key(&key_path, config.production)?;
        let redis = RedisConnection::connect(url, &config.redis_prefix, seal).await?;
        // Live state every node must agree on lives in Redis.
        stores.tickets = Arc::new(RedisTicketStore::new(redis.clone()));
        stores.limiter = Arc::new(RedisRateLimiter::new(redis.clone()));
        let listen = config
            .node_listen
            .ok_or_else(|| ServerError::Config("--redis-url needs --node-listen".into()))?;
        let listener = TcpListener::bind(listen).await.map_err(|e| {
            ServerError::Config(format!("cannot listen on --node-listen {listen}: {e}"))
        })?;
        let bound = listener.local_addr().unwrap_or(listen);
        let address = crate::cluster::advertised_address(config.node_advertise.as_deref(), bound)
            .map_err(ServerError::Config)?;
        tracing::info!(node = %node_id, %address, "joining the cluster");
        let membership = crate::cluster::Membership {
            redis,
            address,
            key,
            identity,
            sessions: stores.sessions.clone(),
        };
        let cluster = Cluster::member(
            node_id.to_owned(),
            registry.clone(),
            access.clone(),
            membership,
        )
        .map_err(ServerError::Config)?;
        Ok((cluster, listener))
    }

    /// Without the `redis` feature there is no cluster to join
    /// ([`Config::validate`] refuses `redis_url` first).
    #[cfg(not(feature = "redis"))]
    async fn join_cluster(
        _: &ServerConfig,
        _: &str,
        _: &str,
        _: &Arc<Registry>,
        _: &AccessWatch,
        _: &mut Stores,
    ) -> Result<(Cluster, TcpListener), ServerError> {
        Err(ServerError::Config(crate::config::NO_REDIS.into()))
    }

    /// Opens the stores, ends sessions a previous process left open, and
    /// returns a server ready to [`Server::serve`].
    pub async fn build(self) -> Result<Server, ServerError> {
        self.config.validate().map_err(ServerError::Config)?;
        crate::keys::ensure_data_dir(&self.config.data_dir)?;
        let stores = match self.stores {
            Some(stores) => stores,
            None => {
                Stores::sqlite(SqlStore::open(&default_database_path(&self.config.data_dir)).await?)
            }
        };
        let signer = match self.signer {
            Some(s) => s,
            None => {
                let path = self.config.secret_key_path();
                Arc::new(crate::keys::load_or_create_signer(
                    &path,
                    self.config.production,
                )?)
            }
        };
        let launch_key = self.config.launch_key_path();
        let launch_signer =
            crate::keys::load_or_create_launch_signer(&launch_key, self.config.production)?;
        let node_id =
            crate::cluster::resolve_node_id(self.config.node_id.as_deref(), &self.config.data_dir)
                .map_err(ServerError::Config)?;
        let registry = Arc::new(Registry::default());
        let access = AccessWatch::default();
        let mut stores = stores;
        let (cluster, node_listener) = match &self.config.redis_url {
            None => (
                Cluster::single(node_id.clone(), registry.clone(), access.clone()),
                None,
            ),
            Some(url) => {
                let (cluster, listener) = Self::join_cluster(
                    &self.config,
                    url,
                    &node_id,
                    &registry,
                    &access,
                    &mut stores,
                )
                .await?;
                (cluster, Some(listener))
            }
        };
        let tls = match &self.config.tls {
            None => None,
            Some(files) => Some(Arc::new(
                crate::TlsReloader::new(files.clone()).map_err(ServerError::Config)?,
            )),
        };
        let metrics_listener = match self.config.metrics_listen {
            None => None,
            Some(addr) => Some(TcpListener::bind(addr).await.map_err(|e| {
                ServerError::Config(format!("--metrics-listen: cannot listen on {addr}: {e}"))
            })?),
        };
        // Tunnels die with the process that held them: this node's sessions
        // get a grace period for their agents to come back.
        let grace_ms = self.config.grace_period.as_millis() as i64;
        let recovered = stores
            .sessions
            .recover_unfinished(&node_id, grace_ms, now_millis())
            .await?;
        if recovered > 0 {
            tracing::info!(
                sessions = recovered,
                "sessions left open by a previous run wait for their agents"
            );
        }
        let recordings = self.recordings.unwrap_or_else(|| {
            Arc::new(rtunnel_core::recording::FileRecordingStore::new(
                self.config.data_dir.join("recordings"),
            ))
        });
        let cluster = Arc::new(cluster);
        let audit = crate::state::Audit::new(stores.audit.clone());
        let streams = crate::streams::Streams::new(
            cluster.clone(),
            stores.sessions.clone(),
            audit.clone(),
            self.config.stream_setup_timeout,
        );
        let proxy = crate::proxy::Proxy::new(streams.clone());
        let max_tunnel_setups = self.config.max_tunnel_setups;
        let lifecycle = crate::lifecycle::Lifecycle::new(
            stores.sessions.clone(),
            audit.clone(),
            cluster.clone(),
        );
        let access_log = crate::access_log::AccessLogWriter::new(stores.sessions.clone());
        let tickets = crate::tickets::Tickets::new(stores.tickets.clone(), stores.limiter.clone());
        let access = crate::revocation::Access::new(
            access,
            stores.identity.clone(),
            stores.logins.clone(),
            signer.clone(),
        );
        let tunnels = crate::routing::Tunnels::new(
            registry,
            cluster,
            streams,
            crate::tunnel::Setups::new(max_tunnel_setups),
        );
        Ok(Server {
            node_listener,
            metrics_listener,
            tls,
            state: Arc::new(AppState {
                browser: crate::api::browser::BrowserPolicy::of(&self.config),
                config: self.config,
                audit,
                lifecycle,
                tickets,
                access_log,
                stores,
                tunnels,
                proxy,
                shutdown: CancellationToken::new(),
                signer,
                launch_signer,
                access,
                recordings,
                terminal_recordings: Default::default(),
                refusals: Default::default(),
                password_checks: Arc::new(tokio::sync::Semaphore::new(
                    crate::api::login::PASSWORD_CHECKS,
                )),
            }),
        })
    }
}

/// A ready server.
///
/// Run it one of three ways:
///
/// - [`Server::serve`]: on a listener until a shutdown future resolves
///   (what `rtunnel-server serve` does);
/// - [`Server::start`]: on a listener in the background, stopped through the
///   returned [`ServerHandle`] (or when it is dropped);
/// - [`Server::into_parts`]: as routes for an axum app of your own, plus the
///   background work to spawn.
///
/// ```no_run
/// # async fn run() -> Result<(), Box<dyn std::error::Error>> {
/// use rtunnel_server::{Server, ServerConfig};
///
/// let config = ServerConfig {
///     data_dir: "/var/lib/rtunnel".into(),
///     ..ServerConfig::default()
/// };
/// let listener = tokio::net::TcpListener::bind(config.listen).await?;
/// let server = Server::builder().config(config).build().await?;
/// server.serve(listener, async { let _ = tokio::signal::ctrl_c().await; }).await?;
/// # Ok(()) }
/// ```
#[derive(Debug)]
pub struct Server {
    state: Arc<AppState>,
    node_listener: Option<TcpListener>,
    metrics_listener: Option<TcpListener>,
    tls: Option<Arc<crate::TlsReloader>>,
}

impl Server {
    /// Starts building a server.
    pub fn builder() -> ServerBuilder {
        ServerBuilder::default()
    }

    /// The shared state (stores, live tunnels, configuration).
    pub fn state(&self) -> &Arc<AppState> {
        &self.state
    }

    /// The HTTP routes as the server serves them (JSON fallbacks, the
    /// subdomain proxy, the configured path prefix). Serve them with
    /// `into_make_service_with_connect_info::<SocketAddr>()`; without the
    /// background work ([`Server::into_parts`]) sessions never expire.
    pub fn router(&self) -> Router {
        crate::api::router(self.state.clone())
    }

    /// The bound address of the node mesh, in a cluster.
    pub fn node_addr(&self) -> Option<std::net::SocketAddr> {
        self.node_listener.as_ref()?.local_addr().ok()
    }

    /// The server as parts for an app of your own: routes to nest or
    /// merge, the layers to put around the whole app, and the background
    /// work, which must run for the server to work.
    ///
    /// ```no_run
    /// # async fn run(server: rtunnel_server::Server) -> std::io::Result<()> {
    /// use axum::{Router, routing::get};
    ///
    /// let rtunnel_server::Parts { router, background, control } = server.into_parts();
    /// let app = Router::new()
    ///     .route("/", get(|| async { "my app" }))
    ///     .nest("/support", router)
    ///     .fallback(|| async { "not here" });
    /// let app = control.layer(app);
    /// tokio::spawn(background);
    /// let listener = tokio::net::TcpListener::bind("127.0.0.1:8090").await?;
    /// axum::serve(
    ///     listener,
    ///     app.into_make_service_with_connect_info::<std::net::SocketAddr>(),
    /// )
    /// .with_graceful_shutdown(async move {
    ///     let _ = tokio::signal::ctrl_c().await;
    ///     control.shutdown().await;
    /// })
    /// .await
    /// # }
    /// ```
    pub fn into_parts(self) -> Parts {
        Parts {
            router: crate::api::routes(self.state.clone()),
            background: Background::start(
                self.state.clone(),
                self.node_listener,
                self.metrics_listener,
                // An app serving the router itself has no connection
                // threads.
                None,
            ),
            control: ServerControl { state: self.state },
        }
    }

    /// The server's own TLS, when [`ServerConfig::tls`] is set: keep it to
    /// reload the certificate ([`crate::TlsReloader::reload`]; the binary
    /// does on SIGHUP).
    ///
    /// [`ServerConfig::tls`]: crate::ServerConfig::tls
    pub fn tls(&self) -> Option<Arc<crate::TlsReloader>> {
        self.tls.clone()
    }

    /// Serves on `listener` in the background; the handle stops it.
    pub fn start(self, listener: TcpListener) -> std::io::Result<ServerHandle> {
        let addr = listener.local_addr()?;
        let state = self.state.clone();
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        let task = tokio::spawn(self.serve(listener, async move {
            let _ = stopped.await;
        }));
        Ok(ServerHandle {
            addr,
            state,
            stop: Some(stop),
            task: Some(task),
        })
    }

    /// Serves on `listener` until `shutdown` resolves, then tells every agent
    /// the server is restarting and waits briefly for tunnels to end. In a
    /// cluster the node mesh is served too, on `--node-listen`.
    pub async fn serve<F>(self, listener: TcpListener, shutdown: F) -> std::io::Result<()>
    where
        F: Future<Output = ()> + Send + 'static,
    {
        let addr = listener.local_addr()?;
        let router = self.router();
        let prefix = self.state.config.path_prefix.clone();
        let scheme = if self.tls.is_some() { "https" } else { "http" };
        tracing::info!(%addr, scheme, node = %self.state.tunnels.cluster.node_id(), path_prefix = %prefix, threads = self.state.config.threads, version = env!("CARGO_PKG_VERSION"), "rtunnel-server listening");
        let state = self.state.clone();
        let shards = match state.config.threads {
            0 => None,
            n => Some(Arc::new(crate::shards::Shards::start(n)?)),
        };
        let background = Background::start(
            state.clone(),
            self.node_listener,
            self.metrics_listener,
            shards.clone(),
        );
        let head_timeout = state.config.request_head_timeout;
        let accepting = crate::accept::Accepting {
            tls: self.tls,
            head_timeout,
            limits: crate::accept::ConnectionLimits {
                total: state.config.max_connections,
                per_address: state.config.max_connections_per_address,
                exempt: state.config.trusted_proxies.clone(),
            },
            shards: shards.as_deref(),
        };
        let served =
            crate::accept::serve(listener, router, accepting, shutdown, drain(&state)).await;
        // The drain cancelled the shutdown token: the background ends.
        background.await;
        // Connections that ended during the drain queued their closes.
        flush_access_log(&state).await;
        // Last, the connection threads (what a connection left running,
        // such as the access log's writer, ran on them until here).
        drop(shards);
        served
    }
}

/// The server as parts of an app of your own ([`Server::into_parts`]).
#[derive(Debug)]
pub struct Parts {
    /// Every route (health, tunnel, API, console), with no fallback: nest
    /// it under a prefix (`Router::nest("/support", ...)`) or merge it.
    pub router: Router,
    /// Session expiry and grace periods, retention, the access epoch,
    /// refusal reports, the cluster and its node mesh: spawn it. It ends
    /// after [`ServerControl::shutdown`]; dropping it stops that work.
    pub background: Background,
    /// Layers for the app, the state, and shutdown.
    pub control: ServerControl,
}

/// What an app embedding the server holds on to ([`Parts::control`]).
#[derive(Clone)]
pub struct ServerControl {
    state: Arc<AppState>,
}

impl std::fmt::Debug for ServerControl {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ServerControl").finish_non_exhaustive()
    }
}

impl ServerControl {
    /// Puts the server's outer layers around `app`, your whole router: a
    /// request for a proxy host goes to the subdomain proxy before `app`
    /// sees it, and the client's address is taken from a trusted reverse
    /// proxy's headers. Serve the result with
    /// `into_make_service_with_connect_info::<SocketAddr>()`.
    pub fn layer(&self, app: Router) -> Router {
        crate::api::outer_layers(app, self.state.clone())
    }

    /// The shared state (stores, live tunnels, configuration).
    pub fn state(&self) -> &Arc<AppState> {
        &self.state
    }

    /// Tells every agent the server is restarting, waits briefly for their
    /// tunnels to end, and ends the forwards, terminals and background work
    /// (so a graceful shutdown of the app's listener can complete).
    pub async fn shutdown(&self) {
        drain(&self.state).await;
    }
}

/// The server's background work, as one future: it owns the tasks, which
/// stop when it is dropped, and resolves once they all ended (after
/// shutdown).
pub struct Background {
    tasks: tokio::task::JoinSet<()>,
}

impl std::fmt::Debug for Background {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Background")
            .field("tasks", &self.tasks.len())
            .finish()
    }
}

impl Background {
    fn start(
        state: Arc<AppState>,
        node_listener: Option<TcpListener>,
        metrics_listener: Option<TcpListener>,
        shards: Option<Arc<crate::shards::Shards>>,
    ) -> Self {
        let mut tasks = tokio::task::JoinSet::new();
        tasks.spawn(state.lifecycle.clone().sweep(state.shutdown.clone()));
        tasks.spawn(crate::refusals::reporter(state.clone()));
        tasks.spawn(crate::retention::pruner(state.clone()));
        tasks.spawn(state.access.clone().watch_epoch(state.shutdown.clone()));
        tasks.spawn(state.tunnels.clone().cut_deleted_systems(
            state.stores.identity.clone(),
            state.access.watch().subscribe(),
            state.shutdown.clone(),
        ));
        tasks.spawn(Cluster::run(state.clone()));
        if let Some(listener) = metrics_listener {
            if let Ok(addr) = listener.local_addr() {
                tracing::info!(%addr, "metrics at GET /metrics");
            }
            let scraped = state.clone();
            let shutdown = state.shutdown.clone();
            tasks.spawn(rtunnel_core::metrics::serve(
                listener,
                move || {
                    let state = scraped.clone();
                    async move { crate::metrics::global().render(&state).await }
                },
                shutdown.cancelled_owned(),
            ));
        }
        #[cfg(feature = "redis")]
        if let Some(node_listener) = node_listener {
            tasks.spawn(crate::cluster::mesh::serve(
                state.clone(),
                node_listener,
                shards,
            ));
        }
        #[cfg(not(feature = "redis"))]
        drop((node_listener, shards));
        Background { tasks }
    }
}

impl Future for Background {
    type Output = ();

    fn poll(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<()> {
        loop {
            match self.tasks.poll_join_next(cx) {
                std::task::Poll::Ready(Some(Err(e))) if e.is_panic() => {
                    tracing::error!(error = %e, "a background task of the server panicked");
                }
                std::task::Poll::Ready(Some(_)) => {}
                std::task::Poll::Ready(None) => return std::task::Poll::Ready(()),
                std::task::Poll::Pending => return std::task::Poll::Pending,
            }
        }
    }
}

/// A server running in the background ([`Server::start`]). Dropping it
/// stops the server at once; [`ServerHandle::shutdown`] stops it gracefully.
#[derive(Debug)]
pub struct ServerHandle {
    addr: std::net::SocketAddr,
    state: Arc<AppState>,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    task: Option<tokio::task::JoinHandle<std::io::Result<()>>>,
}

impl ServerHandle {
    /// Where it listens.
    pub fn local_addr(&self) -> std::net::SocketAddr {
        self.addr
    }

    /// The shared state (stores, live tunnels, configuration).
    pub fn state(&self) -> &Arc<AppState> {
        &self.state
    }

    /// Tells every agent the server is restarting, waits for the drain and
    /// the background work to end.
    pub async fn shutdown(mut self) -> std::io::Result<()> {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        match self.task.take() {
            Some(task) => task
                .await
                .unwrap_or_else(|e| Err(std::io::Error::other(e.to_string()))),
            None => Ok(()),
        }
    }
}

impl Drop for ServerHandle {
    fn drop(&mut self) {
        self.state.shutdown.cancel();
        if let Some(task) = self.task.take() {
            task.abort();
        }
    }
}

async fn drain(state: &AppState) {
    let tunnels = state.tunnels.registry.all();
    tracing::info!(
        tunnels = tunnels.len(),
        "shutting down: telling agents to reconnect"
    );
    for t in &tunnels {
        t.close(CloseCode::ServerRestarting, "the server is restarting")
            .await;
    }
    state.shutdown.cancel();
    let deadline = tokio::time::Instant::now() + SHUTDOWN_DRAIN;
    while !state.tunnels.registry.is_empty() && tokio::time::Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    state.tunnels.cluster.leave().await;
    flush_access_log(state).await;
}

/// Writes out the access-log closes still queued, waiting a bounded time.
async fn flush_access_log(state: &AppState) {
    if tokio::time::timeout(SHUTDOWN_DRAIN, state.access_log.flush())
        .await
        .is_err()
    {
        tracing::warn!("shutting down with access-log closes not yet written");
    }
}

/// Path of the default SQLite database in a data directory.
pub(crate) fn default_database_path(data_dir: &std::path::Path) -> PathBuf {
    data_dir.join("rtunnel.db")
}
