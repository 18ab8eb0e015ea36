//! Name lookup inside a pod: which names mean "this pod" and what they resolve to.
//!
//! `localhost` (and `*.localhost`) resolves to `127.0.0.1` and `::1`; an IP literal resolves
//! to itself; each container name of the pod resolves to the pod (`127.0.0.1`), as Compose
//! users expect. Everything else is `name-unresolvable` for now: real DNS is an egress
//! decision and will be made by the egress policy, not here. No resolver is ever queried.

use super::{NetError, PodNetwork};
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

/// Longest DNS name accepted (RFC 1035), so a guest cannot make us lowercase megabytes.
const MAX_NAME_LEN: usize = 253;

/// Resolves `name` for a container of `pod`.
pub fn resolve(pod: &PodNetwork, name: &str) -> Result<Vec<IpAddr>, NetError> {
    if let Ok(ip) = name.parse::<IpAddr>() {
        return Ok(vec![ip]);
    }
    if let Some(inner) = name.strip_prefix('[').and_then(|n| n.strip_suffix(']')) {
        return inner
            .parse::<Ipv6Addr>()
            .map(|ip| vec![IpAddr::V6(ip)])
            .map_err(|_| NetError::InvalidArgument);
    }
    let name = name.strip_suffix('.').unwrap_or(name);
    if name.is_empty() || name.len() > MAX_NAME_LEN || !name.split('.').all(valid_label) {
        return Err(NetError::InvalidArgument);
    }
    let lower = name.to_ascii_lowercase();
    if lower == "localhost" || lower.ends_with(".localhost") {
        return Ok(vec![
            IpAddr::V4(Ipv4Addr::LOCALHOST),
            IpAddr::V6(Ipv6Addr::LOCALHOST),
        ]);
    }
    if pod.has_name(&lower) {
        return Ok(vec![IpAddr::V4(Ipv4Addr::LOCALHOST)]);
    }
    Err(NetError::NameUnresolvable)
}

/// A DNS label as hosts accept it (letters, digits, `-`, `_`; 1..=63 bytes).
fn valid_label(label: &str) -> bool {
    !label.is_empty()
        && label.len() <= 63
        && label
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names() {
        let pod = PodNetwork::new();
        let _web = pod.attach("web");
        pod.register_name("db");
        let both = vec![
            IpAddr::V4(Ipv4Addr::LOCALHOST),
            IpAddr::V6(Ipv6Addr::LOCALHOST),
        ];
        assert_eq!(resolve(&pod, "localhost").unwrap(), both);
        assert_eq!(resolve(&pod, "LocalHost.").unwrap(), both);
        assert_eq!(
            resolve(&pod, "web").unwrap(),
            vec![IpAddr::V4(Ipv4Addr::LOCALHOST)]
        );
        assert_eq!(
            resolve(&pod, "DB").unwrap(),
            vec![IpAddr::V4(Ipv4Addr::LOCALHOST)]
        );
        assert_eq!(
            resolve(&pod, "10.1.2.3").unwrap(),
            vec!["10.1.2.3".parse::<IpAddr>().unwrap()]
        );
        assert_eq!(
            resolve(&pod, "::1").unwrap(),
            vec![IpAddr::V6(Ipv6Addr::LOCALHOST)]
        );
        assert_eq!(
            resolve(&pod, "[::1]").unwrap(),
            vec![IpAddr::V6(Ipv6Addr::LOCALHOST)]
        );
        assert_eq!(
            resolve(&pod, "example.com"),
            Err(NetError::NameUnresolvable)
        );
        assert_eq!(resolve(&pod, ""), Err(NetError::InvalidArgument));
        assert_eq!(resolve(&pod, "a b"), Err(NetError::InvalidArgument));
        assert_eq!(resolve(&pod, "[nope]"), Err(NetError::InvalidArgument));
        // Another pod's names are not ours.
        let other = PodNetwork::new();
        assert_eq!(resolve(&other, "web"), Err(NetError::NameUnresolvable));
    }
}
