//! Registry credentials, read from the standard Docker config file (`$DOCKER_CONFIG/config.json`,
//! else `~/.docker/config.json`): its `auths` entries, `auth` (base64 `user:password`) or
//! `username` and `password`. Never from a pod spec: a spec is shared, a login is not.

use std::collections::HashMap;
use std::path::PathBuf;

use base64::Engine as _;
use serde::Deserialize;

#[derive(Deserialize, Default)]
struct DockerConfig {
    #[serde(default)]
    auths: HashMap<String, AuthEntry>,
}

#[derive(Deserialize, Default)]
struct AuthEntry {
    auth: Option<String>,
    username: Option<String>,
    password: Option<String>,
}

/// A login for one registry: the value of a `Basic` authorization.
#[derive(Clone)]
pub struct Login {
    basic: String,
}

impl std::fmt::Debug for Login {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Never print the secret.
        f.write_str("Login(..)")
    }
}

impl Login {
    /// The `Authorization` header value.
    pub fn basic_header(&self) -> String {
        format!("Basic {}", self.basic)
    }

    /// A login from a user name and password.
    pub fn new(username: &str, password: &str) -> Login {
        Login {
            basic: base64::engine::general_purpose::STANDARD.encode(format!("{username}:{password}")),
        }
    }
}

/// The Docker config file in use, if any.
pub fn docker_config_path() -> Option<PathBuf> {
    if let Some(dir) = std::env::var_os("DOCKER_CONFIG").filter(|d| !d.is_empty()) {
        return Some(PathBuf::from(dir).join("config.json"));
    }
    std::env::var_os("HOME").map(|home| PathBuf::from(home).join(".docker").join("config.json"))
}

/// The login for `registry` (`host[:port]`) from the Docker config file; `Ok(None)` when the file
/// or the entry is missing. A file that exists but cannot be read is an error, not "anonymous":
/// a silent anonymous pull against a private registry would only fail later, less clearly.
pub fn login_for(registry: &str) -> Result<Option<Login>, String> {
    let Some(path) = docker_config_path() else {
        return Ok(None);
    };
    let text = match std::fs::read_to_string(&path) {
        Ok(text) => text,
        Err(error) if error.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(error) => return Err(format!("cannot read {}: {error}", path.display())),
    };
    let config: DockerConfig = serde_json::from_str(&text)
        .map_err(|error| format!("{} is not a Docker config file: {error}", path.display()))?;
    Ok(config
        .auths
        .iter()
        .find(|(key, _)| {
            entry_host(key) == registry || (registry == "docker.io" && entry_host(key) == "index.docker.io")
        })
        .and_then(|(_, entry)| match (&entry.auth, &entry.username, &entry.password) {
            (Some(auth), _, _) if !auth.is_empty() => Some(Login { basic: auth.clone() }),
            (_, Some(username), Some(password)) => Some(Login::new(username, password)),
            _ => None,
        }))
}

/// `https://index.docker.io/v1/` → `index.docker.io`: Docker writes keys with and without a
/// scheme and path.
fn entry_host(key: &str) -> &str {
    let key = key
        .strip_prefix("https://")
        .or_else(|| key.strip_prefix("http://"))
        .unwrap_or(key);
    key.split('/').next().unwrap_or(key)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn entry_keys_match_with_or_without_scheme() {
        assert_eq!(entry_host("https://index.docker.io/v1/"), "index.docker.io");
        assert_eq!(entry_host("localhost:5000"), "localhost:5000");
        assert_eq!(Login::new("a", "b").basic_header(), "Basic YTpi");
    }
}
