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
        if !subnet.contains(&ip) {
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
}
