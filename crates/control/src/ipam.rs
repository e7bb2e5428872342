//! Private IP addresses: validation of networks and the next free address of a subnet.

use std::net::IpAddr;

use ipnet::IpNet;

use crate::error::{ControlError, Result};

pub(crate) fn parse_cidr(s: &str, what: &str) -> Result<IpNet> {
    let net: IpNet = s.parse().map_err(|_| {
        ControlError::invalid(format!(
            "invalid CIDR {s:?} for {what}: use an address/prefix such as 10.1.0.0/16"
        ))
    })?;
    if net.trunc() != net {
        return Err(ControlError::invalid(format!(
            "invalid CIDR {s:?} for {what}: host bits are set; did you mean {}?",
            net.trunc()
        )));
    }
    Ok(net)
}

/// Choose an address in `subnet`: `wanted` if it is in the subnet and free, else (when
/// `fallback`) the next free one after the first four (reserved, as in Azure).
pub(crate) fn choose(
    subnet: &IpNet,
    used: &[IpAddr],
    wanted: Option<IpAddr>,
    fallback: bool,
) -> Result<IpAddr> {
    if let Some(ip) = wanted {
        if let Some(role) = reserved(subnet, ip) {
            if !fallback {
                return Err(ControlError::invalid(format!(
                    "IP {ip} is the {role} of subnet {subnet}: pick another, or leave --ip out \
                     to get the next free one"
                )));
            }
        } else if !subnet.contains(&ip) {
            if !fallback {
                return Err(ControlError::invalid(format!(
                    "IP {ip} is not in subnet {subnet}"
                )));
            }
        } else if !used.contains(&ip) {
            return Ok(ip);
        } else if !fallback {
            return Err(ControlError::conflict(format!(
                "IP {ip} is already in use in subnet {subnet}"
            )));
        }
    }
    subnet
        .hosts()
        .skip(3)
        .find(|ip| !used.contains(ip))
        .ok_or_else(|| ControlError::conflict(format!("subnet {subnet} has no free address left")))
}

/// What `ip` is in `subnet` if no VM may have it: the network address, the gateway (the
/// first host), the two after it (reserved, as in Azure) or the broadcast address.
fn reserved(subnet: &IpNet, ip: IpAddr) -> Option<&'static str> {
    if !subnet.contains(&ip) {
        return None;
    }
    if ip == subnet.network() {
        return Some("network address");
    }
    if matches!(subnet, IpNet::V4(_)) && ip == subnet.broadcast() {
        return Some("broadcast address");
    }
    let mut hosts = subnet.hosts();
    if hosts.next() == Some(ip) {
        return Some("gateway address");
    }
    if hosts.take(2).any(|h| h == ip) {
        return Some("reserved address");
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cidrs_are_checked() {
        assert!(parse_cidr("10.1.0.0/16", "x").is_ok());
        assert!(parse_cidr("10.1.0.0/33", "x").is_err());
        assert!(
            parse_cidr("10.1.0.1/16", "x")
                .unwrap_err()
                .to_string()
                .contains("10.1.0.0/16")
        );
        assert!(parse_cidr("banana", "x").is_err());
    }

    #[test]
    fn next_free_address_skips_reserved_and_used() {
        let s: IpNet = "10.1.0.0/24".parse().unwrap();
        let first = choose(&s, &[], None, true).unwrap();
        assert_eq!(first.to_string(), "10.1.0.4");
        let next = choose(&s, &[first], Some(first), true).unwrap();
        assert_eq!(next.to_string(), "10.1.0.5");
        assert!(choose(&s, &[first], Some(first), false).is_err());
        assert!(choose(&s, &[], Some("10.2.0.9".parse().unwrap()), false).is_err());
    }

    #[test]
    fn network_gateway_reserved_and_broadcast_addresses_are_refused() {
        let s: IpNet = "10.1.0.0/24".parse().unwrap();
        for (ip, role) in [
            ("10.1.0.0", "network address"),
            ("10.1.0.1", "gateway address"),
            ("10.1.0.2", "reserved address"),
            ("10.1.0.3", "reserved address"),
            ("10.1.0.255", "broadcast address"),
        ] {
            let err = choose(&s, &[], Some(ip.parse().unwrap()), false).unwrap_err();
            assert!(matches!(err, ControlError::Invalid(_)), "{ip}: {err:?}");
            assert!(err.to_string().contains(role), "{ip}: {err}");
        }
        let ok = choose(&s, &[], Some("10.1.0.254".parse().unwrap()), false).unwrap();
        assert_eq!(ok.to_string(), "10.1.0.254");
    }
}
