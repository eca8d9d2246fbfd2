//! Conditions on addresses: the classes core defines, and networks a rule names.

use std::net::IpAddr;

use crate::model::Cidr;

/// An address column with IPv4-mapped IPv6 addresses (`::ffff:a.b.c.d`) written as IPv4.
pub(crate) fn unmapped(expr: &str) -> String {
    format!("replaceRegexpOne({expr}, '^::ffff:([0-9.]+)$', '\\\\1')")
}

/// `addr` (unmapped) is a loopback address.
pub(crate) fn is_loopback(addr: &str) -> String {
    format!("(startsWith({addr}, '127.') OR {addr} = '::1')")
}

/// `addr` (unmapped) is a link-local address.
pub(crate) fn is_link_local(addr: &str) -> String {
    format!("(startsWith({addr}, '169.254.') OR startsWith(lower({addr}), 'fe80:'))")
}

/// `addr` (unmapped) is in one of `networks` (`0` when there are none).
pub(crate) fn in_networks(addr: &str, networks: &[Cidr]) -> String {
    if networks.is_empty() {
        return "0".into();
    }
    let parts: Vec<String> = networks
        .iter()
        .map(|n| match (n.first(), n.last()) {
            (IpAddr::V4(first), IpAddr::V4(last)) => format!(
                "(match({addr}, '^[0-9]+[.][0-9]+[.][0-9]+[.][0-9]+$') AND IPv4StringToNum({addr}) >= {} AND IPv4StringToNum({addr}) <= {})",
                u32::from(first),
                u32::from(last)
            ),
            (first, last) => format!(
                "(position({addr}, ':') > 0 AND hex(IPv6StringToNum({addr})) >= '{:032X}' AND hex(IPv6StringToNum({addr})) <= '{:032X}')",
                ipv6_number(first),
                ipv6_number(last)
            ),
        })
        .collect();
    format!("({})", parts.join(" OR "))
}

fn ipv6_number(addr: IpAddr) -> u128 {
    match addr {
        IpAddr::V6(a) => u128::from(a),
        IpAddr::V4(a) => u128::from(a.to_ipv6_mapped()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn networks_compile_to_numeric_ranges() {
        let nets = [
            Cidr::parse("10.1.0.0/16").expect("v4"),
            Cidr::parse("2001:db8::/32").expect("v6"),
        ];
        let sql = in_networks("a", &nets);
        assert!(
            sql.contains("IPv4StringToNum(a) >= 167837696 AND IPv4StringToNum(a) <= 167903231"),
            "{sql}"
        );
        assert!(sql.contains("'20010DB8000000000000000000000000'"), "{sql}");
        assert!(sql.contains("'20010DB8FFFFFFFFFFFFFFFFFFFFFFFF'"), "{sql}");
    }
}
