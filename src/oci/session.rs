//! The conversation with one registry: requests over hyper (plain HTTP to loopback registries,
//! rustls with the web's root certificates to every other), the login a 401 asks for (`Basic`
//! from the Docker config, or the `Bearer` token flow), redirects of blob downloads to storage,
//! and the upload steps of a push.

use std::time::Duration;

use bytes::Bytes;
use http::{HeaderMap, Method, Request, Uri, header};
use http_body_util::{BodyExt, Full, Limited};
use tokio::io::{AsyncRead, AsyncWrite};
use wasmtime_wasi_http::io::TokioIo;

use super::credentials::{self, Login};
use super::{Digest, OciError, Reference};

const CONNECT_TIMEOUT: Duration = Duration::from_secs(30);
/// One request, body included: generous for a large component on a slow link, but bounded.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(600);
const MAX_REDIRECTS: usize = 5;
/// Token and error bodies are small.
const MAX_SMALL_BODY: usize = 64 << 10;

/// One registry's answer.
pub(super) struct Answer {
    status: u16,
    headers: HeaderMap,
    pub(super) body: Bytes,
    /// `Docker-Content-Digest`, when the registry sent one.
    pub(super) content_digest: Option<String>,
}

pub(super) struct Session {
    registry: String,
    base: String,
    repository: String,
    /// `pull` or `pull,push`: the scope asked for in a token request.
    actions: &'static str,
    login: Option<Login>,
    /// The `Authorization` value in use once a 401 asked for one.
    authorization: Option<String>,
}

impl Session {
    pub(super) fn new(reference: &Reference, actions: &'static str) -> Result<Session, OciError> {
        Ok(Session {
            registry: reference.registry.clone(),
            base: reference.base_url(),
            repository: reference.repository.clone(),
            actions,
            login: credentials::login_for(&reference.registry).map_err(OciError::Credentials)?,
            authorization: None,
        })
    }

    /// GET `path` (under the registry's base URL), which must answer 200.
    pub(super) async fn get(&mut self, path: &str, accept: &str, limit: usize, what: &str) -> Result<Answer, OciError> {
        let url = format!("{}{path}", self.base);
        let headers = vec![(header::ACCEPT, accept.to_owned())];
        let answer = self.send(Method::GET, &url, headers, Bytes::new(), limit).await?;
        self.expect(answer, &[200], &format!("GET {what}"))
    }

    /// A blob's bytes, at most `size`.
    pub(super) async fn blob(&mut self, digest: &Digest, size: usize, what: &str) -> Result<Bytes, OciError> {
        let path = format!("/v2/{}/blobs/{digest}", self.repository);
        Ok(self.get(&path, "*/*", size, what).await?.body)
    }

    /// Uploads a blob unless the registry has it: POST to open an upload, PUT it whole.
    pub(super) async fn upload_blob(&mut self, digest: &Digest, bytes: Bytes) -> Result<(), OciError> {
        let blob_url = format!("{}/v2/{}/blobs/{digest}", self.base, self.repository);
        let exists = self.send(Method::HEAD, &blob_url, Vec::new(), Bytes::new(), 0).await?;
        if exists.status == 200 {
            return Ok(());
        }
        let start = format!("{}/v2/{}/blobs/uploads/", self.base, self.repository);
        let opened = self
            .send(Method::POST, &start, Vec::new(), Bytes::new(), MAX_SMALL_BODY)
            .await?;
        let opened = self.expect(opened, &[202], "POST (open a blob upload)")?;
        let location = opened
            .headers
            .get(header::LOCATION)
            .and_then(|value| value.to_str().ok())
            .ok_or_else(|| self.status_error(202, "POST (open a blob upload)", " without a Location".into()))?;
        let location = if location.starts_with('/') {
            format!("{}{location}", self.base)
        } else {
            location.to_owned()
        };
        let separator = if location.contains('?') { '&' } else { '?' };
        let put_url = format!("{location}{separator}digest={digest}");
        let headers = vec![(header::CONTENT_TYPE, "application/octet-stream".to_owned())];
        let stored = self.send(Method::PUT, &put_url, headers, bytes, MAX_SMALL_BODY).await?;
        self.expect(stored, &[201], "PUT (a blob)")?;
        Ok(())
    }

    /// PUTs the manifest under `target` (a tag or digest); returns the digest the registry says
    /// it stored.
    pub(super) async fn put_manifest(&mut self, target: &str, manifest: Bytes) -> Result<Option<String>, OciError> {
        let url = format!("{}/v2/{}/manifests/{target}", self.base, self.repository);
        let headers = vec![(header::CONTENT_TYPE, super::MANIFEST_MEDIA_TYPE.to_owned())];
        let answer = self.send(Method::PUT, &url, headers, manifest, MAX_SMALL_BODY).await?;
        Ok(self.expect(answer, &[201], "PUT (the manifest)")?.content_digest)
    }

    fn expect(&self, answer: Answer, wanted: &[u16], what: &str) -> Result<Answer, OciError> {
        if wanted.contains(&answer.status) {
            return Ok(answer);
        }
        // Registries explain errors in a small JSON body; show its start.
        let text = String::from_utf8_lossy(&answer.body);
        let text: String = text.chars().filter(|c| !c.is_control()).take(300).collect();
        let detail = if text.is_empty() {
            String::new()
        } else {
            format!(": {text}")
        };
        Err(self.status_error(answer.status, what, detail))
    }

    fn status_error(&self, status: u16, what: &str, detail: String) -> OciError {
        OciError::Status {
            registry: self.registry.clone(),
            status,
            what: format!("{what} in {}", self.repository),
            detail,
        }
    }

    /// Sends a request, logging in once when the registry answers 401 and following redirects.
    async fn send(
        &mut self,
        method: Method,
        url: &str,
        headers: Vec<(header::HeaderName, String)>,
        body: Bytes,
        limit: usize,
    ) -> Result<Answer, OciError> {
        let mut answer = self.follow(method.clone(), url, &headers, body.clone(), limit).await?;
        if answer.status == 401 {
            let challenge = answer
                .headers
                .get(header::WWW_AUTHENTICATE)
                .and_then(|value| value.to_str().ok())
                .unwrap_or_default()
                .to_owned();
            self.authorization = Some(self.log_in(&challenge).await?);
            answer = self.follow(method, url, &headers, body, limit).await?;
            if answer.status == 401 {
                return Err(self.auth_error("the registry refused the login (check `docker login` for it)"));
            }
        }
        Ok(answer)
    }

    async fn follow(
        &self,
        method: Method,
        url: &str,
        headers: &[(header::HeaderName, String)],
        body: Bytes,
        limit: usize,
    ) -> Result<Answer, OciError> {
        let mut url: Uri = url
            .parse()
            .map_err(|e| self.unreachable(format!("bad URL {url}: {e}")))?;
        let origin = url.authority().cloned();
        for _ in 0..=MAX_REDIRECTS {
            // Credentials go only to the registry itself, never to where it redirects.
            let authorization = (url.authority() == origin.as_ref())
                .then_some(self.authorization.as_deref())
                .flatten();
            let answer = exchange(method.clone(), &url, headers, body.clone(), limit, authorization)
                .await
                .map_err(|message| self.unreachable(message))?;
            let redirect = matches!(answer.status, 301 | 302 | 303 | 307 | 308)
                && (method == Method::GET || method == Method::HEAD);
            if !redirect {
                return Ok(answer);
            }
            let location = answer
                .headers
                .get(header::LOCATION)
                .and_then(|value| value.to_str().ok())
                .ok_or_else(|| self.unreachable("a redirect without a Location".into()))?;
            url = if location.starts_with('/') {
                let scheme = url.scheme_str().unwrap_or("https");
                let authority = url.authority().map(|a| a.as_str()).unwrap_or_default();
                format!("{scheme}://{authority}{location}")
            } else {
                location.to_owned()
            }
            .parse()
            .map_err(|e| self.unreachable(format!("bad redirect {location}: {e}")))?;
        }
        Err(self.unreachable(format!("more than {MAX_REDIRECTS} redirects")))
    }

    /// The `Authorization` value the challenge asks for.
    async fn log_in(&self, challenge: &str) -> Result<String, OciError> {
        let (scheme, params) = challenge.split_once(' ').unwrap_or((challenge, ""));
        if scheme.eq_ignore_ascii_case("basic") {
            return self
                .login
                .as_ref()
                .map(Login::basic_header)
                .ok_or_else(|| self.auth_error(&self.no_login()));
        }
        if !scheme.eq_ignore_ascii_case("bearer") {
            return Err(self.auth_error(&format!("unsupported challenge {challenge:?}")));
        }
        let params = challenge_params(params);
        let param = |key: &str| {
            params
                .iter()
                .find(|(k, _)| k.eq_ignore_ascii_case(key))
                .map(|(_, v)| v.as_str())
        };
        let realm = param("realm").ok_or_else(|| self.auth_error("a Bearer challenge without a realm"))?;
        let scope = format!("repository:{}:{}", self.repository, self.actions);
        let mut query = vec![("scope", param("scope").unwrap_or(&scope))];
        if let Some(service) = param("service") {
            query.push(("service", service));
        }
        let token_url = url::Url::parse_with_params(realm, &query)
            .map_err(|e| self.auth_error(&format!("bad token realm {realm:?}: {e}")))?;
        if token_url.scheme() != "https" && !self.base.starts_with("http://") {
            return Err(self.auth_error("the token realm is not HTTPS"));
        }
        let token_url: Uri = token_url
            .as_str()
            .parse()
            .map_err(|e| self.auth_error(&format!("bad token URL: {e}")))?;
        let basic = self.login.as_ref().map(Login::basic_header);
        let answer = exchange(
            Method::GET,
            &token_url,
            &[],
            Bytes::new(),
            MAX_SMALL_BODY,
            basic.as_deref(),
        )
        .await
        .map_err(|message| self.unreachable(format!("token service: {message}")))?;
        if answer.status != 200 {
            let why = if self.login.is_none() {
                self.no_login()
            } else {
                format!("the token service answered {}", answer.status)
            };
            return Err(self.auth_error(&why));
        }
        #[derive(serde::Deserialize)]
        struct Token {
            token: Option<String>,
            access_token: Option<String>,
        }
        let token: Token = serde_json::from_slice(&answer.body)
            .map_err(|e| self.auth_error(&format!("the token service's answer is not a token: {e}")))?;
        token
            .token
            .or(token.access_token)
            .map(|token| format!("Bearer {token}"))
            .ok_or_else(|| self.auth_error("the token service's answer has no token"))
    }

    fn no_login(&self) -> String {
        let file = credentials::docker_config_path()
            .map(|path| path.display().to_string())
            .unwrap_or_else(|| "~/.docker/config.json".into());
        format!("no login for it in {file} (run `docker login {}`)", self.registry)
    }

    fn auth_error(&self, message: &str) -> OciError {
        OciError::Auth {
            registry: self.registry.clone(),
            message: message.into(),
        }
    }

    fn unreachable(&self, message: String) -> OciError {
        OciError::Unreachable {
            registry: self.registry.clone(),
            message,
        }
    }
}

/// `realm="https://x/token",service="x",scope="repository:a:pull,push"`: values are quoted and
/// may hold commas.
fn challenge_params(text: &str) -> Vec<(String, String)> {
    let mut params = Vec::new();
    let mut rest = text.trim();
    while let Some((key, after)) = rest.split_once('=') {
        let key = key.trim().trim_start_matches(',').trim().to_owned();
        let (value, after) = if let Some(quoted) = after.strip_prefix('"') {
            match quoted.split_once('"') {
                Some((value, after)) => (value.to_owned(), after),
                None => (quoted.to_owned(), ""),
            }
        } else {
            match after.split_once(',') {
                Some((value, after)) => (value.trim().to_owned(), after),
                None => (after.trim().to_owned(), ""),
            }
        };
        params.push((key, value));
        rest = after.trim_start_matches([',', ' ']);
    }
    params
}

/// One request on its own connection.
async fn exchange(
    method: Method,
    url: &Uri,
    headers: &[(header::HeaderName, String)],
    body: Bytes,
    limit: usize,
    authorization: Option<&str>,
) -> Result<Answer, String> {
    let host = url.host().ok_or_else(|| format!("{url} has no host"))?;
    let https = match url.scheme_str() {
        Some("https") => true,
        Some("http") => false,
        _ => return Err(format!("{url} is neither http nor https")),
    };
    let port = url.port_u16().unwrap_or(if https { 443 } else { 80 });
    let bare_host = host.trim_start_matches('[').trim_end_matches(']');
    let connect = tokio::net::TcpStream::connect((bare_host, port));
    let stream = tokio::time::timeout(CONNECT_TIMEOUT, connect)
        .await
        .map_err(|_| format!("connecting to {host}:{port} timed out"))?
        .map_err(|e| format!("cannot connect to {host}:{port}: {e}"))?;

    let mut request = Request::builder()
        .method(method.clone())
        .uri(url.path_and_query().map(|p| p.as_str()).unwrap_or("/"));
    let authority = url.authority().map(|a| a.as_str()).unwrap_or(host);
    request = request.header(header::HOST, authority);
    request = request.header(header::USER_AGENT, concat!("wasmpod/", env!("CARGO_PKG_VERSION")));
    for (name, value) in headers {
        request = request.header(name, value);
    }
    if let Some(authorization) = authorization {
        request = request.header(header::AUTHORIZATION, authorization);
    }
    if method == Method::PUT || method == Method::POST {
        request = request.header(header::CONTENT_LENGTH, body.len());
    }
    let request = request.body(Full::new(body)).map_err(|e| format!("bad request: {e}"))?;

    let work = async {
        if https {
            let tls = crate::tls::connect(bare_host, stream)
                .await
                .map_err(|e| e.to_string())?;
            send_on(tls, request, method == Method::HEAD, limit).await
        } else {
            send_on(stream, request, method == Method::HEAD, limit).await
        }
    };
    tokio::time::timeout(REQUEST_TIMEOUT, work)
        .await
        .map_err(|_| format!("no complete answer within {REQUEST_TIMEOUT:?}"))?
}

async fn send_on<S>(stream: S, request: Request<Full<Bytes>>, head: bool, limit: usize) -> Result<Answer, String>
where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let (mut sender, connection) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
        .await
        .map_err(|e| format!("HTTP handshake: {e}"))?;
    let driver = tokio::spawn(connection);
    let response = sender.send_request(request).await.map_err(|e| format!("request: {e}"));
    let result = async {
        let response = response?;
        let status = response.status().as_u16();
        let headers = response.headers().clone();
        let body = if head {
            Bytes::new()
        } else {
            // Error answers are read with the small limit whatever the caller expects.
            let limit = if (200..300).contains(&status) {
                limit
            } else {
                MAX_SMALL_BODY
            };
            Limited::new(response.into_body(), limit)
                .collect()
                .await
                .map_err(|e| format!("reading the answer (at most {limit} bytes): {e}"))?
                .to_bytes()
        };
        let content_digest = headers
            .get("docker-content-digest")
            .and_then(|value| value.to_str().ok())
            .map(str::to_owned);
        Ok(Answer {
            status,
            headers,
            body,
            content_digest,
        })
    }
    .await;
    driver.abort();
    result
}

#[cfg(test)]
mod tests {
    use super::challenge_params;

    #[test]
    fn bearer_challenge_params_keep_commas_inside_quotes() {
        let params =
            challenge_params(r#"realm="https://auth.example/token",service="reg",scope="repository:a/b:pull,push""#);
        assert_eq!(
            params,
            vec![
                ("realm".to_string(), "https://auth.example/token".to_string()),
                ("service".to_string(), "reg".to_string()),
                ("scope".to_string(), "repository:a/b:pull,push".to_string()),
            ]
        );
    }
}
