//! Host facts: interface addresses and the ephemeral port range.

use std::fs;
use std::net::IpAddr;
use std::path::Path;

use nix::ifaddrs::getifaddrs;
use nix::sys::socket::SockaddrStorage;
use portolan_core::InterfaceAddress;

/// IPv4 and IPv6 addresses of every interface of this network namespace, sorted and
/// without duplicates; an error when `getifaddrs` fails.
pub(crate) fn interface_addresses() -> nix::Result<Vec<InterfaceAddress>> {
    let mut addresses: Vec<InterfaceAddress> = getifaddrs()?
        .filter_map(|ifaddr| {
            let address = ip(ifaddr.address.as_ref()?)?;
            let prefix_len = ifaddr
                .netmask
                .as_ref()
                .and_then(ip)
                .map(prefix_len)
                .unwrap_or(match address {
                    IpAddr::V4(_) => 32,
                    IpAddr::V6(_) => 128,
                });
            Some(InterfaceAddress {
                interface: ifaddr.interface_name,
                address,
                prefix_len,
                netns: 0,
            })
        })
        .collect();
    addresses.sort();
    addresses.dedup();
    Ok(addresses)
}

fn ip(storage: &SockaddrStorage) -> Option<IpAddr> {
    if let Some(v4) = storage.as_sockaddr_in() {
        Some(IpAddr::V4(v4.ip()))
    } else {
        storage.as_sockaddr_in6().map(|v6| IpAddr::V6(v6.ip()))
    }
}

/// Prefix length of a netmask: its leading one bits.
pub(crate) fn prefix_len(mask: IpAddr) -> u8 {
    let ones = match mask {
        IpAddr::V4(m) => u32::from(m).leading_ones(),
        IpAddr::V6(m) => u128::from(m).leading_ones(),
    };
    u8::try_from(ones).unwrap_or(u8::MAX)
}

/// `<proc_root>/sys/net/ipv4/ip_local_port_range`, `None` when unreadable or malformed.
pub(crate) fn ephemeral_ports(proc_root: &Path) -> Option<(u16, u16)> {
    let text = fs::read_to_string(proc_root.join("sys/net/ipv4/ip_local_port_range")).ok()?;
    parse_port_range(&text)
}

pub(crate) fn parse_port_range(text: &str) -> Option<(u16, u16)> {
    let mut fields = text.split_whitespace().map(str::parse::<u16>);
    let low = fields.next()?.ok()?;
    let high = fields.next()?.ok()?;
    (low <= high).then_some((low, high))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn port_range() {
        assert_eq!(parse_port_range("32768\t60999\n"), Some((32768, 60999)));
        assert_eq!(parse_port_range("1024 65535"), Some((1024, 65535)));
        assert_eq!(parse_port_range("60999 32768"), None);
        assert_eq!(parse_port_range("x"), None);
        assert_eq!(parse_port_range(""), None);
    }

    #[test]
    fn prefix_lengths() {
        let ip = |s: &str| s.parse::<IpAddr>().expect("test address");
        assert_eq!(prefix_len(ip("255.255.255.0")), 24);
        assert_eq!(prefix_len(ip("255.0.0.0")), 8);
        assert_eq!(prefix_len(ip("0.0.0.0")), 0);
        assert_eq!(prefix_len(ip("ffff:ffff:ffff:ffff::")), 64);
        assert_eq!(
            prefix_len(ip("ffff:ffff:ffff:ffff:ffff:ffff:ffff:ffff")),
            128
        );
    }
}
