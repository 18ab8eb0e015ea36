//! A client of the edge host's API, for `wasmpod apply`, `delete`, and `ps`, `logs` and
//! `events` of host pods (and tests).
//!
//! It owns the client side of the contract: where the host is (`--host`, `WASMPOD_HOST`, else
//! the local socket), the bearer token on TCP, and what `apply` sends: the spec is checked
//! locally first, each component file is uploaded only when the host lacks its digest, and the
//! spec goes up with `component = "sha256:HEX"` in place of the paths (and `host_path` volumes
//! made absolute, since the host resolves relative paths against its state directory).

use std::path::{Path, PathBuf};

use bytes::Bytes;
use http::{Method, Request, StatusCode};
use http_body_util::{BodyExt, Full};
use tokio::io::{AsyncRead, AsyncWrite};
use wasmtime_wasi_http::io::TokioIo;

use super::store::sha256_hex;
use crate::spec::{ComponentSource, PodSpec, SpecError, VolumeSource};

/// The environment variable that names the host when `--host` is not given.
pub const HOST_ENV: &str = "WASMPOD_HOST";

/// Why a request to the host failed.
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    #[error("cannot reach the host at {addr}: {source}")]
    Connect {
        addr: String,
        #[source]
        source: std::io::Error,
    },
    #[error("talking to the host at {addr}: {message}")]
    Protocol { addr: String, message: String },
    #[error("the host refused ({status}): {message}")]
    Refused { status: StatusCode, message: String },
    #[error("{0}")]
    Spec(#[from] SpecError),
    #[error("cannot read {}: {source}", path.display())]
    Read {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("cannot rewrite the spec for the host: {0}")]
    Rewrite(String),
}

/// Where the host's API is.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum HostAddr {
    /// A Unix socket path.
    Unix(PathBuf),
    /// `http://ADDR`: host and port.
    Tcp(String),
}

impl HostAddr {
    /// `http://ADDR` or a socket path; `None` picks `$WASMPOD_HOST`, else the local socket.
    pub fn pick(given: Option<&str>) -> HostAddr {
        let from_env = std::env::var(HOST_ENV).ok().filter(|v| !v.is_empty());
        match given.map(str::to_string).or(from_env) {
            Some(text) => match text.strip_prefix("http://") {
                Some(addr) => HostAddr::Tcp(addr.trim_end_matches('/').to_string()),
                None => HostAddr::Unix(PathBuf::from(text)),
            },
            None => HostAddr::Unix(super::default_socket()),
        }
    }
}

impl std::fmt::Display for HostAddr {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            HostAddr::Unix(path) => write!(f, "{}", path.display()),
            HostAddr::Tcp(addr) => write!(f, "http://{addr}"),
        }
    }
}

/// A client of one host.
#[derive(Debug, Clone)]
pub struct Client {
    addr: HostAddr,
    token: Option<String>,
}

impl Client {
    /// A client of the host at `addr`; `token` is sent as a bearer token (needed on TCP).
    pub fn new(addr: HostAddr, token: Option<String>) -> Client {
        Client { addr, token }
    }

    /// Where this client sends its requests.
    pub fn addr(&self) -> &HostAddr {
        &self.addr
    }

    /// Sends one request and returns the status and body.
    pub async fn request(&self, method: Method, path: &str, body: Bytes) -> Result<(StatusCode, Bytes), ClientError> {
        let response = self.send(method, path, body).await?;
        let status = response.status();
        let body = response
            .into_body()
            .collect()
            .await
            .map_err(|e| self.protocol(&e))?
            .to_bytes();
        Ok((status, body))
    }

    /// GETs a newline-delimited JSON stream (`logs`, `events`, with `follow=true` endless) and
    /// hands each line to `line` as it arrives, until the stream ends or `line` returns false.
    /// A refusal (no such pod or container) is [`ClientError::Refused`].
    pub async fn lines(&self, path: &str, mut line: impl FnMut(&str) -> bool) -> Result<(), ClientError> {
        let response = self.send(Method::GET, path, Bytes::new()).await?;
        let status = response.status();
        let mut body = response.into_body();
        if !status.is_success() {
            let bytes = body.collect().await.map_err(|e| self.protocol(&e))?.to_bytes();
            return Err(refusal(status, &bytes));
        }
        let mut pending = Vec::new();
        while let Some(frame) = body.frame().await {
            let frame = frame.map_err(|e| self.protocol(&e))?;
            let Some(data) = frame.data_ref() else { continue };
            pending.extend_from_slice(data);
            while let Some(end) = pending.iter().position(|b| *b == b'\n') {
                let text = String::from_utf8_lossy(&pending[..end]).into_owned();
                pending.drain(..=end);
                if !text.is_empty() && !line(&text) {
                    return Ok(());
                }
            }
        }
        // A last line without its newline (a plain JSON answer).
        let text = String::from_utf8_lossy(&pending);
        if !text.trim().is_empty() {
            line(&text);
        }
        Ok(())
    }

    /// The status of every pod on the host.
    pub async fn pods(&self) -> Result<Vec<crate::control::StatusView>, ClientError> {
        let value = self.call(Method::GET, "/v1/pods", Bytes::new()).await?;
        serde_json::from_value(value).map_err(|e| self.protocol(&e))
    }

    /// The status of pod `name`; `Ok(None)` when the host runs no such pod.
    pub async fn status(&self, name: &str) -> Result<Option<crate::control::StatusView>, ClientError> {
        match self.call(Method::GET, &format!("/v1/pods/{name}"), Bytes::new()).await {
            Ok(value) => serde_json::from_value(value).map(Some).map_err(|e| self.protocol(&e)),
            Err(ClientError::Refused {
                status: StatusCode::NOT_FOUND,
                ..
            }) => Ok(None),
            Err(e) => Err(e),
        }
    }

    async fn send(
        &self,
        method: Method,
        path: &str,
        body: Bytes,
    ) -> Result<http::Response<hyper::body::Incoming>, ClientError> {
        match &self.addr {
            HostAddr::Unix(socket) => {
                let stream = tokio::net::UnixStream::connect(socket)
                    .await
                    .map_err(|source| self.connect_error(source))?;
                self.exchange(stream, "localhost", method, path, body).await
            }
            HostAddr::Tcp(addr) => {
                let stream = tokio::net::TcpStream::connect(addr.as_str())
                    .await
                    .map_err(|source| self.connect_error(source))?;
                self.exchange(stream, addr, method, path, body).await
            }
        }
    }

    fn protocol(&self, e: &dyn std::fmt::Display) -> ClientError {
        ClientError::Protocol {
            addr: self.addr.to_string(),
            message: e.to_string(),
        }
    }

    /// Like [`Client::request`], turning a non-2xx answer into [`ClientError::Refused`].
    pub async fn call(&self, method: Method, path: &str, body: Bytes) -> Result<serde_json::Value, ClientError> {
        let (status, body) = self.request(method, path, body).await?;
        if status.is_success() {
            return Ok(serde_json::from_slice(&body).unwrap_or(serde_json::Value::Null));
        }
        Err(refusal(status, &body))
    }

    /// Uploads what the host lacks of the spec's components, then puts the spec. Returns the
    /// host's word: `created`, `updated` or `unchanged`.
    pub async fn apply(&self, spec_file: &Path) -> Result<String, ClientError> {
        let text = std::fs::read_to_string(spec_file).map_err(|source| ClientError::Read {
            path: spec_file.to_path_buf(),
            source,
        })?;
        let spec = PodSpec::from_toml(&text, spec_file)?;
        let mut table: toml::Table = toml::from_str(&text).map_err(|e| ClientError::Rewrite(e.to_string()))?;
        for (key, containers) in [
            ("init_containers", &spec.init_containers),
            ("containers", &spec.containers),
        ] {
            for (index, container) in containers.iter().enumerate() {
                let bytes = match &container.component {
                    ComponentSource::File(path) => std::fs::read(path).map_err(|source| ClientError::Read {
                        path: path.clone(),
                        source,
                    })?,
                    ComponentSource::Bytes(bytes) => bytes.to_vec(),
                    // The host pulls registry images itself, verified by digest.
                    ComponentSource::Image(_) => continue,
                };
                let digest = format!("sha256:{}", sha256_hex(&bytes));
                let blob_path = format!("/v1/blobs/{digest}");
                let (status, _) = self.request(Method::HEAD, &blob_path, Bytes::new()).await?;
                if status == StatusCode::NOT_FOUND {
                    self.call(Method::PUT, &blob_path, Bytes::from(bytes)).await?;
                }
                let entry = table
                    .get_mut(key)
                    .and_then(|v| v.as_array_mut())
                    .and_then(|array| array.get_mut(index))
                    .and_then(|v| v.as_table_mut())
                    .ok_or_else(|| ClientError::Rewrite(format!("{key}[{index}] is not a table")))?;
                entry.insert("component".into(), toml::Value::String(digest));
            }
        }
        for (index, volume) in spec.volumes.iter().enumerate() {
            if let VolumeSource::HostPath(path) = &volume.source
                && let Some(entry) = table
                    .get_mut("volumes")
                    .and_then(|v| v.as_array_mut())
                    .and_then(|array| array.get_mut(index))
                    .and_then(|v| v.as_table_mut())
            {
                entry.insert("host_path".into(), toml::Value::String(path.display().to_string()));
            }
        }
        let rewritten = toml::to_string(&table).map_err(|e| ClientError::Rewrite(e.to_string()))?;
        let answer = self
            .call(Method::PUT, &format!("/v1/pods/{}", spec.name), Bytes::from(rewritten))
            .await?;
        Ok(answer["result"].as_str().unwrap_or("applied").to_string())
    }

    /// Stops and removes pod `name` on the host.
    pub async fn delete(&self, name: &str) -> Result<(), ClientError> {
        self.call(Method::DELETE, &format!("/v1/pods/{name}"), Bytes::new())
            .await
            .map(|_| ())
    }

    fn connect_error(&self, source: std::io::Error) -> ClientError {
        ClientError::Connect {
            addr: self.addr.to_string(),
            source,
        }
    }

    async fn exchange<IO>(
        &self,
        io: IO,
        authority: &str,
        method: Method,
        path: &str,
        body: Bytes,
    ) -> Result<http::Response<hyper::body::Incoming>, ClientError>
    where
        IO: AsyncRead + AsyncWrite + Unpin + Send + 'static,
    {
        let protocol = |e: &dyn std::fmt::Display| self.protocol(e);
        let (mut sender, connection) = hyper::client::conn::http1::handshake(TokioIo::new(io))
            .await
            .map_err(|e| protocol(&e))?;
        tokio::spawn(connection);
        let mut request = Request::builder()
            .method(method)
            .uri(path)
            .header(http::header::HOST, authority);
        if let Some(token) = &self.token {
            request = request.header(http::header::AUTHORIZATION, format!("Bearer {token}"));
        }
        let request = request.body(Full::new(body)).map_err(|e| protocol(&e))?;
        sender.send_request(request).await.map_err(|e| protocol(&e))
    }
}

/// A non-2xx answer as an error: the host's message, and every problem of a spec error.
fn refusal(status: StatusCode, body: &[u8]) -> ClientError {
    let value: serde_json::Value = serde_json::from_slice(body).unwrap_or(serde_json::Value::Null);
    let mut message = value["error"].as_str().unwrap_or("no message").to_string();
    if let Some(problems) = value["problems"].as_array()
        && problems.len() > 1
    {
        for problem in problems {
            message.push_str("\n  ");
            message.push_str(problem["message"].as_str().unwrap_or(""));
        }
    }
    ClientError::Refused { status, message }
}
