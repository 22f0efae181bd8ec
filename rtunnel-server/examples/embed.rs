//! An axum app that embeds rtunnel under `/support`, next to its own routes
//! and its own fallback, on the embedded SQLite store, with an audit sink
//! of its own that also prints every event.
//!
//! ```text
//! EMBED_LISTEN=127.0.0.1:8090 EMBED_DATA_DIR=./embed-data \
//!     cargo run -p rtunnel-server --example embed
//! ```
//!
//! The first line on stdout is JSON: the admin's API token and a system
//! enrolled for this run (`id`, `key`, `secret`). Then:
//!
//! ```text
//! rtunnel-agent run --url ws://127.0.0.1:8090/support/api/v1/tunnel \
//!     --key KEY --secret-file FILE --static-services ssh=127.0.0.1:22
//! rtunnel-agent forward --server http://127.0.0.1:8090/support \
//!     --token TOKEN --session SESSION --service ssh --listen 127.0.0.1:2222
//! ```

// Printing is what this example is for.
#![allow(clippy::print_stdout, clippy::print_stderr)]

use std::net::SocketAddr;
use std::sync::Arc;

use axum::Router;
use axum::routing::get;
use rtunnel_core::store::sql::SqlStore;
use rtunnel_core::store::{AuditEvent, AuditSink, Role, StoreError};
use rtunnel_server::{Parts, Server, ServerConfig, Stores, enroll};

/// The app's own audit sink: every event still lands in SQLite (access
/// must not open unless it did), and is printed for the app's own log.
struct PrintingAudit {
    inner: Arc<dyn AuditSink>,
}

#[async_trait::async_trait]
impl AuditSink for PrintingAudit {
    async fn record(&self, event: &AuditEvent) -> Result<(), StoreError> {
        self.inner.record(event).await?;
        eprintln!(
            "audit: {} by {}",
            event.event,
            event.actor.as_deref().unwrap_or("-")
        );
        Ok(())
    }
}

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let listen: SocketAddr = std::env::var("EMBED_LISTEN")
        .unwrap_or_else(|_| "127.0.0.1:8090".into())
        .parse()?;
    let data_dir = std::path::PathBuf::from(
        std::env::var("EMBED_DATA_DIR").unwrap_or_else(|_| "./embed-data".into()),
    );

    let store = SqlStore::open(&data_dir.join("rtunnel.db")).await?;
    let mut stores = Stores::sqlite(store);
    stores.audit = Arc::new(PrintingAudit {
        inner: stores.audit.clone(),
    });
    let config = ServerConfig {
        listen,
        data_dir: data_dir.clone(),
        public_url: format!("http://{listen}"),
        ..ServerConfig::default()
    };
    let server = Server::builder()
        .config(config)
        .stores(stores.clone())
        .build()
        .await?;

    // An admin with a fresh API token, and a system enrolled for this run.
    let admin = match stores.identity.user_by_name("admin").await? {
        Some(user) => user,
        None => {
            let (user, _) =
                enroll::new_user("admin", Role::Admin, None, None).map_err(|e| e.message)?;
            stores.identity.create_user(&user).await?;
            user
        }
    };
    let day = 24 * 3600 * 1000;
    let (record, token) =
        enroll::new_api_token(admin.id, Some(rtunnel_core::store::now_millis() + day));
    stores.identity.create_api_token(&record).await?;
    if let Some(old) = stores.identity.system_by_name("demo").await? {
        stores.identity.delete_system(old.id).await?;
    }
    let (system, enrolled) = enroll::new_system("demo");
    stores.identity.create_system(&system).await?;
    println!(
        "{}",
        serde_json::json!({
            "token": token,
            "system": {"id": enrolled.id, "key": enrolled.key, "secret": enrolled.secret},
        })
    );

    // The app: its own routes and fallback, rtunnel under /support.
    let Parts {
        router,
        background,
        control,
    } = server.into_parts();
    let app = Router::new()
        .route("/", get(|| async { "the embedding app" }))
        .nest("/support", router)
        .fallback(|| async { (axum::http::StatusCode::NOT_FOUND, "not a page of this app") });
    let app = control.layer(app);
    let background = tokio::spawn(background);

    let listener = tokio::net::TcpListener::bind(listen).await?;
    eprintln!("listening on http://{listen}; agents dial ws://{listen}/support/api/v1/tunnel");
    axum::serve(
        listener,
        app.into_make_service_with_connect_info::<SocketAddr>(),
    )
    .with_graceful_shutdown(async move {
        let _ = tokio::signal::ctrl_c().await;
        // Agents are told to come back later; forwards and terminals end.
        control.shutdown().await;
    })
    .await?;
    let _ = background.await;
    Ok(())
}
