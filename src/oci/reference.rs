//! Image references as a spec or the command line writes them: `REGISTRY/REPO:TAG` or
//! `REGISTRY/REPO@sha256:HEX`, parsed once into their parts, and the registry's address (plain
//! HTTP for loopback registries, as Docker does, HTTPS for every other one).

use std::fmt;
use std::str::FromStr;

use sha2::{Digest as _, Sha256};

/// A content digest, `sha256:` and 64 lowercase hex digits (the only algorithm accepted).
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct Digest(String);

impl Digest {
    /// The digest of `bytes`.
    pub fn of(bytes: &[u8]) -> Digest {
        let hash = Sha256::digest(bytes);
        let mut text = String::with_capacity(71);
        text.push_str("sha256:");
        for byte in hash {
            text.push_str(&format!("{byte:02x}"));
        }
        Digest(text)
    }

    /// The 64 hex digits (a file name in the cache).
    pub fn hex(&self) -> &str {
        &self.0["sha256:".len()..]
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl FromStr for Digest {
    type Err = String;
    fn from_str(text: &str) -> Result<Digest, String> {
        let hex = text
            .strip_prefix("sha256:")
            .ok_or_else(|| format!("digest {text:?} is not `sha256:` followed by 64 hex digits"))?;
        if hex.len() == 64 && hex.bytes().all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b)) {
            Ok(Digest(text.to_owned()))
        } else {
            Err(format!(
                "digest {text:?} is not `sha256:` followed by 64 lowercase hex digits"
            ))
        }
    }
}

impl fmt::Display for Digest {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// What a reference names inside its repository.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Target {
    Tag(String),
    Digest(Digest),
}

/// `REGISTRY/REPO:TAG` or `REGISTRY/REPO@sha256:HEX`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Reference {
    /// `host`, `host:port`, `[v6]:port` as written (`docker.io` is kept as written too).
    pub registry: String,
    pub repository: String,
    pub target: Target,
}

impl Reference {
    /// `REGISTRY/REPO` without the tag or digest.
    pub fn name(&self) -> String {
        format!("{}/{}", self.registry, self.repository)
    }

    /// The host without its port or brackets.
    pub fn host(&self) -> &str {
        let registry = self.registry.as_str();
        if let Some(rest) = registry.strip_prefix('[') {
            return rest.split(']').next().unwrap_or(rest);
        }
        registry.rsplit_once(':').map_or(registry, |(host, _)| host)
    }

    /// Loopback registries are spoken to over plain HTTP, like Docker's default for them.
    pub fn is_loopback(&self) -> bool {
        let host = self.host();
        host == "localhost"
            || host
                .parse::<std::net::IpAddr>()
                .is_ok_and(|address| address.is_loopback())
    }

    /// The base URL of the registry's API (`http://` only for loopback registries).
    pub fn base_url(&self) -> String {
        let scheme = if self.is_loopback() { "http" } else { "https" };
        // Docker Hub's short name is not the host its API answers on.
        let authority = if self.registry == "docker.io" {
            "registry-1.docker.io"
        } else {
            &self.registry
        };
        format!("{scheme}://{authority}")
    }

    /// The tag or digest as it goes into a manifest URL.
    pub fn target_text(&self) -> &str {
        match &self.target {
            Target::Tag(tag) => tag,
            Target::Digest(digest) => digest.as_str(),
        }
    }
}

impl fmt::Display for Reference {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.target {
            Target::Tag(tag) => write!(f, "{}/{}:{tag}", self.registry, self.repository),
            Target::Digest(digest) => write!(f, "{}/{}@{digest}", self.registry, self.repository),
        }
    }
}

impl FromStr for Reference {
    type Err = String;

    fn from_str(text: &str) -> Result<Reference, String> {
        let bad =
            |why: &str| format!("image reference {text:?} {why}; write REGISTRY/REPO:TAG or REGISTRY/REPO@sha256:HEX");
        let (name, digest) = match text.split_once('@') {
            Some((name, digest)) => (name, Some(digest.parse::<Digest>().map_err(|e| bad(&e))?)),
            None => (text, None),
        };
        let (registry, path) = name.split_once('/').ok_or_else(|| bad("names no registry"))?;
        // A registry is a host: it has a dot, a port or brackets, or is `localhost`; anything
        // else would be Docker Hub's implicit `library/` namespace, which is not guessed here.
        let looks_like_host = registry.contains('.') || registry.contains(':') || registry == "localhost";
        if registry.is_empty() || !looks_like_host {
            return Err(bad(
                "does not start with a registry host (like `ghcr.io` or `localhost:5000`)",
            ));
        }
        if !registry
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b".-:[]".contains(&b))
        {
            return Err(bad("has an invalid registry host"));
        }
        let (repository, tag) = match (digest.is_some(), path.rsplit_once(':')) {
            (false, Some((repository, tag))) => (repository, Some(tag)),
            (true, Some(_)) => return Err(bad("has both a tag and a digest")),
            (_, None) => (path, None),
        };
        let component_ok = |c: &str| {
            !c.is_empty()
                && c.bytes()
                    .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b"._-".contains(&b))
                && c.bytes().next().is_some_and(|b| b.is_ascii_alphanumeric())
        };
        if repository.is_empty() || !repository.split('/').all(component_ok) {
            return Err(bad(
                "has an invalid repository (lowercase letters, digits, `._-`, separated by `/`)",
            ));
        }
        let target = match (digest, tag) {
            (Some(digest), _) => Target::Digest(digest),
            (None, Some(tag)) => {
                let valid = !tag.is_empty()
                    && tag.len() <= 128
                    && tag.bytes().all(|b| b.is_ascii_alphanumeric() || b"._-".contains(&b))
                    && !tag.starts_with(['.', '-']);
                if !valid {
                    return Err(bad("has an invalid tag"));
                }
                Target::Tag(tag.to_owned())
            }
            (None, None) => Target::Tag("latest".to_owned()),
        };
        Ok(Reference {
            registry: registry.to_owned(),
            repository: repository.to_owned(),
            target,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_tags_digests_and_loopback() {
        let tagged: Reference = "localhost:5000/demo/hello:v1".parse().unwrap();
        assert_eq!(tagged.registry, "localhost:5000");
        assert_eq!(tagged.repository, "demo/hello");
        assert_eq!(tagged.target, Target::Tag("v1".into()));
        assert!(tagged.is_loopback());
        assert_eq!(tagged.base_url(), "http://localhost:5000");

        let hex = "a".repeat(64);
        let pinned: Reference = format!("ghcr.io/acme/app@sha256:{hex}").parse().unwrap();
        assert!(!pinned.is_loopback());
        assert_eq!(pinned.base_url(), "https://ghcr.io");
        assert_eq!(pinned.to_string(), format!("ghcr.io/acme/app@sha256:{hex}"));

        let v6: Reference = "[::1]:5000/app".parse().unwrap();
        assert!(v6.is_loopback());
        assert_eq!(v6.target, Target::Tag("latest".into()));
        assert!("127.0.0.1:5/a:b".parse::<Reference>().unwrap().is_loopback());
    }

    #[test]
    fn refuses_malformed_references() {
        for bad in [
            "hello",
            "library/hello:1",
            "ghcr.io/Acme/app:1",
            "ghcr.io/app@sha256:abc",
            "ghcr.io/app:1@sha256:0000000000000000000000000000000000000000000000000000000000000000",
            "ghcr.io/app:-x",
            "ghcr.io//app",
        ] {
            assert!(bad.parse::<Reference>().is_err(), "{bad} parsed");
        }
    }
}
