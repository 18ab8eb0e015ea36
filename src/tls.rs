//! TLS to servers outside the pod: one client configuration (the web's root certificates,
//! what wasmtime-wasi-http's own client trusts) built once per process and shared by every
//! outgoing connection — a guest's outgoing HTTPS request and a registry pull alike.

use std::sync::{Arc, OnceLock};

use tokio::io::{AsyncRead, AsyncWrite};

/// Why a TLS connection to a server was not made.
#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    /// The name is neither an IP address nor a valid DNS name for a certificate.
    #[error("{server:?} is not a name a TLS certificate can carry")]
    BadName { server: String },
    /// The handshake failed (an untrusted or mismatched certificate, a protocol error).
    #[error("TLS with {server}: {source}")]
    Handshake {
        server: String,
        #[source]
        source: std::io::Error,
    },
}

/// The shared client configuration; building the root store parses ~150 certificates, so it
/// is done once, not per connection.
fn client_config() -> Arc<rustls::ClientConfig> {
    static CONFIG: OnceLock<Arc<rustls::ClientConfig>> = OnceLock::new();
    CONFIG
        .get_or_init(|| {
            let roots = rustls::RootCertStore {
                roots: webpki_roots::TLS_SERVER_ROOTS.into(),
            };
            Arc::new(
                rustls::ClientConfig::builder()
                    .with_root_certificates(roots)
                    .with_no_client_auth(),
            )
        })
        .clone()
}

/// TLS over `stream` to `server` (a DNS name or an IP address, without port), verified
/// against the web's root certificates.
pub async fn connect<S>(server: &str, stream: S) -> Result<tokio_rustls::client::TlsStream<S>, TlsError>
where
    S: AsyncRead + AsyncWrite + Unpin,
{
    use rustls::pki_types::ServerName;
    let name = match server.parse::<std::net::IpAddr>() {
        Ok(ip) => ServerName::from(ip),
        Err(_) => ServerName::try_from(server.to_owned()).map_err(|_| TlsError::BadName {
            server: server.to_owned(),
        })?,
    };
    tokio_rustls::TlsConnector::from(client_config())
        .connect(name, stream)
        .await
        .map_err(|source| TlsError::Handshake {
            server: server.to_owned(),
            source,
        })
}
