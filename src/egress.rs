//! The egress policy: which destinations outside the pod a container may reach, as a typed
//! value parsed once from the spec's `allowed_outbound_hosts`.
//!
//! This module owns the rule syntax ([`EgressRule::parse`], with errors that say what to
//! write), the policy ([`EgressPolicy`]) and its decisions on names, addresses and ports
//! ([`EgressPolicy::allows`], [`EgressPolicy::allows_ip`], [`EgressPolicy::allows_name`]). It is a
//! leaf: it depends on nothing else of the crate, so the spec lowers `allowed_outbound_hosts`
//! into it and the network enforces it without either importing the other. It does not dial,
//! resolve or report: the per-container egress state, the dialer and the bridge live in
//! `net::egress`.
//!
//! Rules, on purpose:
//! - Default deny: an empty policy reaches nothing outside the pod.
//! - `127.0.0.0/8`, `::1`, `0.0.0.0`, `::` and `localhost` always mean the pod, never the host,
//!   so rules naming them are rejected: they could never match. The host's own loopback is
//!   named [`HOST_INTERNAL`], which resolves to [`HOST_GATEWAY`]; a rule naming that address
//!   directly is rejected too (write the name).
//! - `*.example.com` matches names below `example.com`, not `example.com` itself (as TLS
//!   wildcards do); a port of `*` matches every port. There is no bare `*` host: list what a
//!   container needs.
//! - Rules never match an address by reverse lookup: a name rule covers an address only when
//!   the network remembers that a lookup of that name returned it.

use std::fmt;
use std::net::{IpAddr, Ipv4Addr};

/// The name of the host's own loopback, as seen from inside a pod.
pub const HOST_INTERNAL: &str = "host.wasmpod.internal";

/// What `host.wasmpod.internal` resolves to inside a pod. It cannot be `127.0.0.1` (that is
/// the pod itself), so it is a link-local address: never routed off a link, so no real
/// destination a guest might want is shadowed by it.
pub const HOST_GATEWAY: IpAddr = IpAddr::V4(Ipv4Addr::new(169, 254, 77, 1));

/// Longest DNS name (RFC 1035).
const MAX_NAME_LEN: usize = 253;

/// True for the addresses that always mean the pod itself (loopback and unspecified, v4 or v6,
/// v4-mapped included): a rule naming one could never reach outside the pod.
pub fn is_pod_address(ip: IpAddr) -> bool {
    match ip.to_canonical() {
        IpAddr::V4(v4) => v4.is_loopback() || v4.is_unspecified(),
        IpAddr::V6(v6) => v6.is_loopback() || v6.is_unspecified(),
    }
}

/// Why one `allowed_outbound_hosts` entry is not a rule; each message says what to write.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RuleError {
    #[error("{0:?} has no port; write HOST:PORT, e.g. \"{0}:443\", or \"{0}:*\" for any port")]
    MissingPort(String),
    #[error("{entry:?} has port {port:?}; use a number from 1 to 65535, or * for any port")]
    BadPort { entry: String, port: String },
    #[error("{0:?} has an IPv6 address without brackets; write it as \"[2001:db8::1]:443\"")]
    UnbracketedIpv6(String),
    #[error(
        "{entry:?} has host {host:?}, which {reason}; use a DNS name (\"db.example.com\"), a wildcard (\"*.example.com\"), an IP address, or \"host.wasmpod.internal\""
    )]
    BadHost {
        entry: String,
        host: String,
        reason: &'static str,
    },
    #[error(
        "{entry:?} names {host}, which inside a pod is the pod itself, never the host; to reach a port on the host's loopback write \"host.wasmpod.internal:{port}\""
    )]
    PodAddress { entry: String, host: String, port: String },
}

/// An entry of a policy that is not a rule, and where it is in the list.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("allowed_outbound_hosts[{index}]: {error}")]
pub struct EgressError {
    pub index: usize,
    #[source]
    pub error: RuleError,
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum HostPattern {
    /// A lowercase DNS name without a trailing dot.
    Name(String),
    /// `*.example.com`, stored as `.example.com` so a suffix test is one `ends_with`.
    Below(String),
    Ip(IpAddr),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum PortPattern {
    Any,
    Exactly(u16),
}

/// One allowed destination, `HOST:PORT`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EgressRule {
    host: HostPattern,
    port: PortPattern,
}

impl EgressRule {
    /// Parses one `allowed_outbound_hosts` entry (see the module doc for the forms).
    pub fn parse(entry: &str) -> Result<Self, RuleError> {
        let (host, port) = split_host_port(entry)?;
        let port = match port {
            "*" => PortPattern::Any,
            p => match p.parse::<u16>() {
                Ok(n) if n != 0 && p.bytes().all(|b| b.is_ascii_digit()) => PortPattern::Exactly(n),
                _ => {
                    return Err(RuleError::BadPort {
                        entry: entry.to_string(),
                        port: p.to_string(),
                    });
                }
            },
        };
        let bad_host = |reason: &'static str| RuleError::BadHost {
            entry: entry.to_string(),
            host: host.to_string(),
            reason,
        };
        let pod_address = || RuleError::PodAddress {
            entry: entry.to_string(),
            host: host.to_string(),
            port: match port {
                PortPattern::Any => "*".to_string(),
                PortPattern::Exactly(n) => n.to_string(),
            },
        };
        let host = if let Some(inner) = host.strip_prefix('[') {
            let ip = inner
                .strip_suffix(']')
                .and_then(|i| i.parse::<std::net::Ipv6Addr>().ok())
                .ok_or_else(|| bad_host("is not an IPv6 address"))?;
            HostPattern::Ip(IpAddr::V6(ip))
        } else if let Ok(ip) = host.parse::<IpAddr>() {
            HostPattern::Ip(ip)
        } else if host == "*" {
            return Err(bad_host("would allow every host"));
        } else if let Some(suffix) = host.strip_prefix("*.") {
            let suffix = normalize_name(suffix).ok_or_else(|| bad_host("is not a DNS name"))?;
            HostPattern::Below(format!(".{suffix}"))
        } else if host.contains('*') {
            return Err(bad_host("has a * that is not a leading \"*.\""));
        } else {
            HostPattern::Name(normalize_name(host).ok_or_else(|| bad_host("is not a DNS name"))?)
        };
        match &host {
            HostPattern::Ip(ip) if is_pod_address(*ip) => return Err(pod_address()),
            HostPattern::Ip(ip) if *ip == HOST_GATEWAY => return Err(pod_address()),
            HostPattern::Ip(ip) if ip.is_multicast() => {
                return Err(bad_host("is a multicast address"));
            }
            HostPattern::Name(n) if n == "localhost" || n.ends_with(".localhost") => {
                return Err(pod_address());
            }
            _ => {}
        }
        Ok(Self { host, port })
    }

    fn port_matches(&self, port: u16) -> bool {
        match self.port {
            PortPattern::Any => true,
            PortPattern::Exactly(p) => p == port,
        }
    }

    /// True if the host part covers `name` (lowercase, no trailing dot).
    fn name_matches(&self, name: &str) -> bool {
        match &self.host {
            HostPattern::Name(n) => n == name,
            // Strictly below the suffix: `*.example.com` does not match `example.com`.
            HostPattern::Below(suffix) => name.len() > suffix.len() && name.ends_with(suffix),
            HostPattern::Ip(_) => false,
        }
    }
}

impl fmt::Display for EgressRule {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.host {
            HostPattern::Name(n) => f.write_str(n)?,
            HostPattern::Below(s) => write!(f, "*{s}")?,
            HostPattern::Ip(IpAddr::V6(ip)) => write!(f, "[{ip}]")?,
            HostPattern::Ip(ip) => write!(f, "{ip}")?,
        }
        match self.port {
            PortPattern::Any => f.write_str(":*"),
            PortPattern::Exactly(p) => write!(f, ":{p}"),
        }
    }
}

/// Splits `HOST:PORT`, with IPv6 hosts in brackets.
fn split_host_port(entry: &str) -> Result<(&str, &str), RuleError> {
    let split = if entry.starts_with('[') {
        // `[v6]:port`: the colon that matters is the one right after the bracket.
        entry.find("]:").map(|i| (&entry[..=i], &entry[i + 2..]))
    } else {
        entry.rsplit_once(':')
    };
    match split {
        Some((host, _)) if !host.starts_with('[') && host.contains(':') => {
            Err(RuleError::UnbracketedIpv6(entry.to_string()))
        }
        Some((host, port)) if !host.is_empty() && !port.is_empty() => Ok((host, port)),
        Some(("", _)) => Err(RuleError::BadHost {
            entry: entry.to_string(),
            host: String::new(),
            reason: "is empty",
        }),
        _ => Err(RuleError::MissingPort(entry.to_string())),
    }
}

/// The comparable form of a DNS name (lowercase, no trailing dot), or None if it is not one.
pub fn normalize_name(name: &str) -> Option<String> {
    let name = name.strip_suffix('.').unwrap_or(name);
    let ok = !name.is_empty()
        && name.len() <= MAX_NAME_LEN
        && name.split('.').all(|label| {
            !label.is_empty()
                && label.len() <= 63
                && label
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
        });
    ok.then(|| name.to_ascii_lowercase())
}

/// A container's outbound allow-list; empty (the default) allows nothing.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct EgressPolicy {
    rules: Vec<EgressRule>,
}

impl EgressPolicy {
    /// Allows nothing outside the pod.
    pub fn deny_all() -> Self {
        Self::default()
    }

    /// Parses `allowed_outbound_hosts`; the first bad entry is the error.
    pub fn parse(entries: &[String]) -> Result<Self, EgressError> {
        let rules = entries
            .iter()
            .enumerate()
            .map(|(index, e)| EgressRule::parse(e).map_err(|error| EgressError { index, error }))
            .collect::<Result<_, _>>()?;
        Ok(Self { rules })
    }

    /// Adds one rule (an `allowed_outbound_hosts` entry) after the others; a bad entry leaves
    /// the policy unchanged.
    pub fn allow(&mut self, entry: &str) -> Result<(), RuleError> {
        self.rules.push(EgressRule::parse(entry)?);
        Ok(())
    }

    /// The rules, in spec order.
    pub fn rules(&self) -> &[EgressRule] {
        &self.rules
    }

    /// True if the policy allows nothing outside the pod.
    pub fn is_empty(&self) -> bool {
        self.rules.is_empty()
    }

    /// True if a connection to `host` (a DNS name or an IP literal) on `port` is allowed.
    pub fn allows(&self, host: &str, port: u16) -> bool {
        let host = host.strip_prefix('[').and_then(|h| h.strip_suffix(']')).unwrap_or(host);
        if let Ok(ip) = host.parse::<IpAddr>() {
            return self.allows_ip(ip, port);
        }
        normalize_name(host)
            .is_some_and(|name| self.rules.iter().any(|r| r.port_matches(port) && r.name_matches(&name)))
    }

    /// True if some rule names `ip` itself (rules never match an address by reverse lookup).
    pub fn allows_ip(&self, ip: IpAddr, port: u16) -> bool {
        let ip = ip.to_canonical();
        self.rules
            .iter()
            .any(|r| r.port_matches(port) && matches!(r.host, HostPattern::Ip(rule) if rule.to_canonical() == ip))
    }

    /// True if some rule covers `name` on any port: only then may the name be resolved.
    pub fn allows_name(&self, name: &str) -> bool {
        normalize_name(name).is_some_and(|name| self.rules.iter().any(|r| r.name_matches(&name)))
    }
}

/// What a container tried to do that the policy refused: every refusal, whichever path it
/// came by, is reported as one kind of event with one of these.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DeniedKind {
    /// A TCP connect to a destination outside the pod.
    Connect,
    /// A name lookup of a name outside the pod.
    Lookup,
    /// An outgoing `wasi:http` request to a destination outside the pod.
    Http,
}

impl DeniedKind {
    /// How events and logs name it.
    pub fn as_str(self) -> &'static str {
        match self {
            DeniedKind::Connect => "connection",
            DeniedKind::Lookup => "name lookup",
            DeniedKind::Http => "http request",
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn policy(entries: &[&str]) -> EgressPolicy {
        let entries: Vec<String> = entries.iter().map(|s| s.to_string()).collect();
        EgressPolicy::parse(&entries).unwrap()
    }

    #[test]
    fn exact_names_and_ports() {
        let p = policy(&["example.com:443", "DB.Example.com.:5432"]);
        assert!(p.allows("example.com", 443));
        assert!(p.allows("EXAMPLE.com.", 443));
        assert!(!p.allows("example.com", 80));
        assert!(!p.allows("www.example.com", 443));
        assert!(p.allows("db.example.com", 5432));
        assert!(p.allows_name("example.com"));
        assert!(!p.allows_name("example.org"));
        assert!(!EgressPolicy::deny_all().allows("example.com", 443));
    }

    #[test]
    fn wildcards() {
        let p = policy(&["*.wasmpod.internal:*", "*.example.com:8080"]);
        assert!(p.allows(HOST_INTERNAL, 1));
        assert!(p.allows(HOST_INTERNAL, 65535));
        assert!(p.allows_name(HOST_INTERNAL));
        assert!(p.allows("a.b.example.com", 8080));
        assert!(!p.allows("a.b.example.com", 8081));
        // Strictly below the suffix, and on a label boundary.
        assert!(!p.allows("example.com", 8080));
        assert!(!p.allows("badexample.com", 8080));
        assert!(!p.allows("wasmpod.internal", 80));
        assert!(!p.allows_name("example.com"));
    }

    #[test]
    fn ip_rules() {
        let p = policy(&["10.1.2.3:80", "[2001:db8::1]:*"]);
        assert!(p.allows("10.1.2.3", 80));
        assert!(!p.allows("10.1.2.3", 81));
        assert!(p.allows("[2001:db8::1]", 9));
        assert!(p.allows_ip("2001:db8::1".parse().unwrap(), 9));
        assert!(p.allows_ip("::ffff:10.1.2.3".parse().unwrap(), 80));
        assert!(!p.allows_name("10.1.2.3"));
        assert_eq!(p.rules()[1].to_string(), "[2001:db8::1]:*");
    }

    #[test]
    fn bad_entries_say_what_to_write() {
        let err = |e: &str| EgressRule::parse(e).unwrap_err();
        assert!(matches!(err("example.com"), RuleError::MissingPort(_)));
        assert!(matches!(err("example.com:"), RuleError::MissingPort(_)));
        assert!(matches!(err("example.com:0"), RuleError::BadPort { .. }));
        assert!(matches!(err("example.com:70000"), RuleError::BadPort { .. }));
        assert!(matches!(err("example.com:+80"), RuleError::BadPort { .. }));
        assert!(matches!(err("2001:db8::1:80"), RuleError::UnbracketedIpv6(_)));
        assert!(matches!(err(":80"), RuleError::BadHost { .. }));
        assert!(matches!(err("*:80"), RuleError::BadHost { .. }));
        assert!(matches!(err("a.*.com:80"), RuleError::BadHost { .. }));
        assert!(matches!(err("exa mple.com:80"), RuleError::BadHost { .. }));
        assert!(matches!(err("[nope]:80"), RuleError::BadHost { .. }));
        assert!(matches!(err("224.0.0.1:80"), RuleError::BadHost { .. }));
        for pod in [
            "127.0.0.1:8080",
            "[::1]:80",
            "0.0.0.0:1",
            "localhost:80",
            "169.254.77.1:80",
        ] {
            assert!(matches!(err(pod), RuleError::PodAddress { .. }), "{pod}");
        }
        let msg = err("127.0.0.1:8080").to_string();
        assert!(msg.contains("host.wasmpod.internal:8080"), "{msg}");
        let e = EgressPolicy::parse(&["a.com:1".into(), "b.com".into()]).unwrap_err();
        assert_eq!(e.index, 1);
    }

    #[test]
    fn allow_adds_a_rule_or_leaves_the_policy_unchanged() {
        let mut p = EgressPolicy::deny_all();
        assert!(p.is_empty());
        p.allow("example.com:443").unwrap();
        assert!(matches!(p.allow("example.com"), Err(RuleError::MissingPort(_))));
        assert_eq!(p, policy(&["example.com:443"]));
        assert!(p.allows("example.com", 443));
    }
}
