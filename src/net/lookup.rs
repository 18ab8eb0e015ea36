//! Name lookup inside a pod: which names mean "this pod", which mean the host, and which
//! may be asked of the host's resolver.
//!
//! `localhost` (and `*.localhost`) resolves to `127.0.0.1` and `::1`; an IP literal resolves
//! to itself; each container name of the pod resolves to the pod (`127.0.0.1`), as Compose
//! users expect. Those answers are local and never reported. Every other name is an egress
//! decision, made by the container's policy (`egress.rs`): `host.wasmpod.internal` resolves to
//! [`HOST_GATEWAY`] only when a rule names it, any other name is looked up with the host's
//! resolver (async) only when a rule covers it; otherwise the answer is `name-unresolvable` and
//! the refusal is reported.
//!
//! Names are first parsed as wasmtime-wasi parses them (`url::Host::parse`): non-ASCII names
//! are converted to their IDNA (punycode) form, and the WHATWG IPv4 spellings (`127.1`,
//! `2130706433`, `0x7f.1`) are addresses, so a guest sees the same answers as on wasmtime's
//! host network.

use super::egress::{HOST_GATEWAY, HOST_INTERNAL, normalize_name};
use super::{ContainerNet, NetError};
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

/// The answer to a lookup: known now, or to be asked of the host's resolver.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Resolution {
    Addresses(Vec<IpAddr>),
    /// An allowed name outside the pod (lowercase); resolve it with [`resolve_host`].
    Host(String),
}

/// Resolves `name` for the container attached as `net`, as far as that is possible without
/// asking the host's resolver.
pub fn resolve(net: &ContainerNet, name: &str) -> Result<Resolution, NetError> {
    if let Ok(ip) = name.parse::<IpAddr>() {
        return Ok(Resolution::Addresses(vec![ip]));
    }
    let domain = match url::Host::parse(name) {
        Ok(url::Host::Domain(domain)) => domain,
        Ok(url::Host::Ipv4(ip)) => return Ok(Resolution::Addresses(vec![IpAddr::V4(ip)])),
        Ok(url::Host::Ipv6(ip)) => return Ok(Resolution::Addresses(vec![IpAddr::V6(ip)])),
        Err(_) => return Err(NetError::InvalidArgument),
    };
    let lower = normalize_name(&domain).ok_or(NetError::InvalidArgument)?;
    if lower == "localhost" || lower.ends_with(".localhost") {
        return Ok(Resolution::Addresses(vec![
            IpAddr::V4(Ipv4Addr::LOCALHOST),
            IpAddr::V6(Ipv6Addr::LOCALHOST),
        ]));
    }
    if net.pod().has_name(&lower) {
        return Ok(Resolution::Addresses(vec![IpAddr::V4(Ipv4Addr::LOCALHOST)]));
    }
    net.egress().authorize_lookup(&lower)?;
    if lower == HOST_INTERNAL {
        return Ok(Resolution::Addresses(vec![HOST_GATEWAY]));
    }
    Ok(Resolution::Host(lower))
}

/// Asks the host's resolver for an allowed name from [`resolve`], and remembers the answer for
/// `net`'s egress checks. The future owns what it needs, so it can run on a spawned task.
pub fn resolve_host(
    net: &ContainerNet,
    name: String,
) -> impl Future<Output = Result<Vec<IpAddr>, NetError>> + Send + 'static {
    net.egress().clone().resolve(name)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::net::PodNetwork;

    fn addrs(net: &ContainerNet, name: &str) -> Result<Vec<IpAddr>, NetError> {
        match resolve(net, name)? {
            Resolution::Addresses(a) => Ok(a),
            Resolution::Host(n) => panic!("{name} would be asked of the host as {n}"),
        }
    }

    #[test]
    fn names() {
        let pod = PodNetwork::new();
        let web = pod.attach("web");
        pod.register_name("db");
        let both = vec![IpAddr::V4(Ipv4Addr::LOCALHOST), IpAddr::V6(Ipv6Addr::LOCALHOST)];
        assert_eq!(addrs(&web, "localhost").unwrap(), both);
        assert_eq!(addrs(&web, "LocalHost.").unwrap(), both);
        assert_eq!(addrs(&web, "web").unwrap(), vec![IpAddr::V4(Ipv4Addr::LOCALHOST)]);
        assert_eq!(addrs(&web, "DB").unwrap(), vec![IpAddr::V4(Ipv4Addr::LOCALHOST)]);
        assert_eq!(
            addrs(&web, "10.1.2.3").unwrap(),
            vec!["10.1.2.3".parse::<IpAddr>().unwrap()]
        );
        assert_eq!(addrs(&web, "::1").unwrap(), vec![IpAddr::V6(Ipv6Addr::LOCALHOST)]);
        assert_eq!(addrs(&web, "[::1]").unwrap(), vec![IpAddr::V6(Ipv6Addr::LOCALHOST)]);
        assert_eq!(addrs(&web, "example.com"), Err(NetError::NameUnresolvable));
        assert_eq!(addrs(&web, ""), Err(NetError::InvalidArgument));
        assert_eq!(addrs(&web, "a b"), Err(NetError::InvalidArgument));
        assert_eq!(addrs(&web, "[nope]"), Err(NetError::InvalidArgument));
        // WHATWG IPv4 spellings are addresses, as in wasmtime (and stay in the pod).
        assert_eq!(addrs(&web, "127.1").unwrap(), vec![IpAddr::V4(Ipv4Addr::LOCALHOST)]);
        assert_eq!(
            addrs(&web, "2130706433").unwrap(),
            vec![IpAddr::V4(Ipv4Addr::LOCALHOST)]
        );
        // Another pod's names are not ours.
        let other = PodNetwork::new().attach("x");
        assert_eq!(addrs(&other, "web"), Err(NetError::NameUnresolvable));
    }

    #[test]
    fn host_internal_and_outside_names_follow_the_policy() {
        let pod = PodNetwork::new();
        let seen = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
        let s2 = seen.clone();
        let hook: crate::net::DeniedHook =
            std::sync::Arc::new(move |d: crate::net::Denied| s2.lock().unwrap().push(d.destination));
        let closed = pod.attach_with("closed", crate::net::EgressPolicy::deny_all(), Some(hook));
        assert_eq!(addrs(&closed, "host.wasmpod.internal"), Err(NetError::NameUnresolvable));
        assert_eq!(addrs(&closed, "Example.com."), Err(NetError::NameUnresolvable));
        // Local answers are never egress, so never reported.
        assert!(addrs(&closed, "localhost").is_ok());
        assert_eq!(*seen.lock().unwrap(), ["host.wasmpod.internal", "example.com"]);

        let rules = vec![
            "host.wasmpod.internal:5432".to_string(),
            "*.example.com:443".to_string(),
        ];
        let open = pod.attach_with("open", crate::net::EgressPolicy::parse(&rules).unwrap(), None);
        assert_eq!(addrs(&open, "HOST.wasmpod.internal").unwrap(), vec![HOST_GATEWAY]);
        assert_eq!(
            resolve(&open, "api.example.com").unwrap(),
            Resolution::Host("api.example.com".into())
        );
        assert_eq!(resolve(&open, "example.com"), Err(NetError::NameUnresolvable));
    }

    /// Non-ASCII names go through IDNA, as in wasmtime, instead of being rejected.
    #[test]
    fn non_ascii_names_are_converted_with_idna() {
        let pod = PodNetwork::new();
        let rules = vec!["xn--bcher-kva.example:443".to_string()];
        let net = pod.attach_with("c", crate::net::EgressPolicy::parse(&rules).unwrap(), None);
        assert_eq!(
            resolve(&net, "Bücher.example").unwrap(),
            Resolution::Host("xn--bcher-kva.example".into())
        );
        // A member name written with full-width letters maps onto the ASCII name.
        pod.register_name("db");
        assert_eq!(addrs(&net, "ｄｂ").unwrap(), vec![IpAddr::V4(Ipv4Addr::LOCALHOST)]);
        // Not allowed: refused by the policy, not rejected as invalid input.
        assert_eq!(addrs(&net, "bücher.test"), Err(NetError::NameUnresolvable));
        assert_eq!(addrs(&net, "a b"), Err(NetError::InvalidArgument));
    }
}
