//! The host's listeners: the API (Unix socket by default, TCP with a bearer token) and the
//! shared HTTP entrance, bound together and stopped together.
//!
//! It owns binding, the addresses tests and the CLI read back, and the drain order on stop:
//! stop accepting and remove the socket first, then stop every pod and write the state
//! ([`super::Host::drain`]).

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;

use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

use super::Host;
use super::api::{self, Access};
use super::routing;

/// Where the API listens.
#[derive(Debug, Clone)]
pub enum ApiListen {
    /// A Unix socket (mode 0600); its directory is made private first.
    Unix(PathBuf),
    /// TCP, every request needing `Authorization: Bearer TOKEN`.
    Tcp { addr: SocketAddr, token: String },
}

/// Why a listener could not be opened.
#[derive(Debug, thiserror::Error)]
pub enum ServeError {
    #[error("cannot listen for the API on {what}: {source}")]
    Api {
        what: String,
        #[source]
        source: std::io::Error,
    },
    #[error("cannot listen for http on {addr}: {source}")]
    Http {
        addr: SocketAddr,
        #[source]
        source: std::io::Error,
    },
    #[error("the API token is empty; put a secret in the token file")]
    EmptyToken,
}

/// A host with its listeners open; [`Serving::shutdown`] drains it.
pub struct Serving {
    host: Host,
    stop: CancellationToken,
    /// The API's TCP address, when it listens on TCP.
    pub api_addr: Option<SocketAddr>,
    /// The API's socket, when it listens on one.
    pub api_socket: Option<PathBuf>,
    /// The socket file's device and inode: shutdown removes the file only while it is still
    /// this host's (a next host may have bound the path once this one stopped accepting).
    api_socket_file: Option<(u64, u64)>,
    /// The shared entrance's address, when it was asked for.
    pub http_addr: Option<SocketAddr>,
}

/// Opens the listeners and serves them in background tasks.
pub async fn serve(host: Host, api: ApiListen, http: Option<SocketAddr>) -> Result<Serving, ServeError> {
    let stop = CancellationToken::new();
    let mut serving = Serving {
        host: host.clone(),
        stop: stop.clone(),
        api_addr: None,
        api_socket: None,
        api_socket_file: None,
        http_addr: None,
    };
    match api {
        ApiListen::Unix(path) => {
            let api_error = |source| ServeError::Api {
                what: path.display().to_string(),
                source,
            };
            if let Some(dir) = path.parent() {
                crate::runtime_dir::ensure_private(dir).map_err(|e| api_error(std::io::Error::other(e.to_string())))?;
            }
            let listener = api::bind_unix(&path).map_err(api_error)?;
            tokio::spawn(api::serve_unix(host.clone(), listener, stop.clone()));
            serving.api_socket_file = file_identity(&path);
            serving.api_socket = Some(path);
        }
        ApiListen::Tcp { addr, token } => {
            let token = token.trim();
            if token.is_empty() {
                return Err(ServeError::EmptyToken);
            }
            let api_error = |source| ServeError::Api {
                what: addr.to_string(),
                source,
            };
            let listener = TcpListener::bind(addr).await.map_err(api_error)?;
            serving.api_addr = Some(listener.local_addr().map_err(api_error)?);
            let access = Access::Token(Arc::from(token));
            tokio::spawn(api::serve_tcp(host.clone(), listener, access, stop.clone()));
        }
    }
    if let Some(addr) = http {
        let http_error = |source| ServeError::Http { addr, source };
        let listener = crate::proxy::listen(addr, host.limits().entrance.backlog).map_err(http_error)?;
        serving.http_addr = Some(listener.local_addr().map_err(http_error)?);
        tokio::spawn(routing::serve(host, listener, stop));
    }
    Ok(serving)
}

impl Serving {
    /// The host being served.
    pub fn host(&self) -> &Host {
        &self.host
    }

    /// Stops accepting, stops every pod, checkpoints the state directory, removes the API
    /// socket.
    pub async fn shutdown(self) -> Result<(), super::HostError> {
        self.stop.cancel();
        // Gone with the listener: a client finds no host rather than one that does not answer,
        // and a next host may bind the path while this one drains.
        if let Some(socket) = &self.api_socket
            && self.api_socket_file.is_some()
            && file_identity(socket) == self.api_socket_file
        {
            let _ = std::fs::remove_file(socket);
        }
        self.host.drain().await
    }
}

/// A file's device and inode.
fn file_identity(path: &std::path::Path) -> Option<(u64, u64)> {
    use std::os::unix::fs::MetadataExt;
    std::fs::metadata(path).ok().map(|m| (m.dev(), m.ino()))
}

impl Drop for Serving {
    fn drop(&mut self) {
        // Dropped without `shutdown` (a test, a panic): at least stop accepting, so the host's
        // pods stop when the last handle to it goes.
        self.stop.cancel();
    }
}
