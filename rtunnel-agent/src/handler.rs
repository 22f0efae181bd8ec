//! Services served inside the agent's own process.
//!
//! A service embedding the agent can offer more than TCP targets: a
//! [`StreamHandler`] gets every stream an operator opens to its name (a
//! forwarded connection, a proxied HTTP connection) as a [`ServiceStream`],
//! bytes both ways, with the name of the operator the server authenticated.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use rtunnel_core::mux::MuxStream;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

/// A boxed future a handler returns.
pub type HandlerFuture = Pin<Box<dyn Future<Output = ()> + Send + 'static>>;

/// Serves streams to an in-process service. Any
/// `Fn(ServiceStream) -> impl Future<Output = ()>` is one.
///
/// ```
/// use rtunnel_agent::ServiceStream;
/// use tokio::io::{AsyncReadExt, AsyncWriteExt};
///
/// // Echoes whatever the operator sends.
/// let echo = |mut stream: ServiceStream| async move {
///     let mut buf = [0u8; 4096];
///     while let Ok(n) = stream.read(&mut buf).await {
///         if n == 0 || stream.write_all(&buf[..n]).await.is_err() {
///             break;
///         }
///     }
/// };
/// let agent = rtunnel_agent::Agent::builder()
///     .url("ws://127.0.0.1:8080/api/v1/tunnel")
///     .credentials("sys_0123456789abcdef01234567", "secret")
///     .handler("echo", echo)
///     .build();
/// assert!(agent.is_ok());
/// ```
pub trait StreamHandler: Send + Sync + 'static {
    /// Serves one stream until it ends.
    fn serve(&self, stream: ServiceStream) -> HandlerFuture;
}

impl<F, Fut> StreamHandler for F
where
    F: Fn(ServiceStream) -> Fut + Send + Sync + 'static,
    Fut: Future<Output = ()> + Send + 'static,
{
    fn serve(&self, stream: ServiceStream) -> HandlerFuture {
        Box::pin(self(stream))
    }
}

/// An in-process service of the manifest.
#[derive(Clone)]
pub(crate) struct HandlerService {
    pub(crate) name: String,
    pub(crate) handler: Arc<dyn StreamHandler>,
}

impl std::fmt::Debug for HandlerService {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("HandlerService")
            .field("name", &self.name)
            .finish_non_exhaustive()
    }
}

/// One stream to an in-process service: read what the operator sends,
/// write what goes back; dropping it closes the stream.
#[derive(Debug)]
pub struct ServiceStream {
    io: MuxStream,
    operator: Option<String>,
    service: String,
}

impl ServiceStream {
    pub(crate) fn new(io: MuxStream, operator: Option<String>, service: String) -> Self {
        ServiceStream {
            io,
            operator,
            service,
        }
    }

    /// The operator the server authenticated (never chosen by the operator).
    pub fn operator(&self) -> Option<&str> {
        self.operator.as_deref()
    }

    /// The service's name in the manifest.
    pub fn service(&self) -> &str {
        &self.service
    }
}

impl AsyncRead for ServiceStream {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.get_mut().io).poll_read(cx, buf)
    }
}

impl AsyncWrite for ServiceStream {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        Pin::new(&mut self.get_mut().io).poll_write(cx, buf)
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.get_mut().io).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.get_mut().io).poll_shutdown(cx)
    }
}
