//! The interface addresses of a network namespace the agent cannot enter, read through
//! one of its processes: IPv4 from `/proc/<pid>/net/fib_trie`, IPv6 from
//! `/proc/<pid>/net/if_inet6`. Both are world-readable where `/proc/<pid>/net/tcp` is,
//! so a pod's wildcard binds are scoped by the pod's own addresses without CAP_SYS_ADMIN.
//!
//! `fib_trie` names no interface: IPv4 addresses read this way have an empty
//! `interface`. Their prefix length is that of the most specific connected route that
//! holds them (the interface's subnet, or a local range such as `127.0.0.0/8`), 32 when
//! none does.

use std::fs;
use std::io;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::path::Path;

use portolan_core::InterfaceAddress;

/// The interface addresses of the namespace of `pid`, `netns` set, sorted and without
/// duplicates. Fails only when neither file can be read (the process exited); IPv6 may
/// be disabled, and an IPv6-only namespace has an empty IPv4 table.
pub(crate) fn read(proc_root: &Path, pid: u32, netns: u64) -> io::Result<Vec<InterfaceAddress>> {
    let dir = proc_root.join(pid.to_string()).join("net");
    let v4 = fs::read_to_string(dir.join("fib_trie"));
    let v6 = fs::read_to_string(dir.join("if_inet6"));
    let mut out = Vec::new();
    let mut first_error = None;
    match v4 {
        Ok(text) => out.extend(parse_fib_trie(&text)),
        Err(e) => first_error = Some(e),
    }
    match v6 {
        Ok(text) => out.extend(parse_if_inet6(&text)),
        Err(e) => {
            if let Some(first) = first_error {
                return Err(first);
            }
            // IPv6 disabled in the namespace: no such file, nothing to add.
            drop(e);
        }
    }
    for a in &mut out {
        a.netns = netns;
    }
    out.sort();
    out.dedup();
    Ok(out)
}

/// The local IPv4 addresses of a `fib_trie` listing (the `/32 host LOCAL` leaves), with
/// the prefix length of the subnet they are on.
pub(crate) fn parse_fib_trie(text: &str) -> Vec<InterfaceAddress> {
    let mut locals: Vec<Ipv4Addr> = Vec::new();
    // (network, prefix length) of every `link UNICAST` route: the connected subnets.
    let mut subnets: Vec<(Ipv4Addr, u8)> = Vec::new();
    let mut leaf: Option<Ipv4Addr> = None;
    for line in text.lines() {
        let trimmed = line.trim_start();
        if let Some(rest) = trimmed.strip_prefix("|-- ") {
            leaf = rest.trim().parse().ok();
            continue;
        }
        if !trimmed.starts_with('/') {
            // A `+--` node, a table name: no leaf until the next `|--`.
            leaf = None;
            continue;
        }
        let Some(address) = leaf else { continue };
        let mut fields = trimmed.split_whitespace();
        let Some(len) = fields.next().and_then(|l| l[1..].parse::<u8>().ok()) else {
            continue;
        };
        let (scope, kind) = (fields.next(), fields.next());
        match (scope, kind) {
            (Some("host"), Some("LOCAL")) if len == 32 => locals.push(address),
            // A connected subnet, or a local range such as 127.0.0.0/8 on `lo`.
            (Some("link"), Some("UNICAST")) | (Some("host"), Some("LOCAL")) if len < 32 => {
                subnets.push((address, len))
            }
            _ => {}
        }
    }
    locals.sort_unstable();
    locals.dedup();
    locals
        .into_iter()
        .map(|address| InterfaceAddress {
            interface: String::new(),
            address: IpAddr::V4(address),
            prefix_len: subnets
                .iter()
                .filter(|(net, len)| contains(*net, *len, address))
                .map(|(_, len)| *len)
                .max()
                .unwrap_or(32),
            netns: 0,
        })
        .collect()
}

fn contains(network: Ipv4Addr, len: u8, address: Ipv4Addr) -> bool {
    let mask = u32::MAX.checked_shl(32 - u32::from(len)).unwrap_or(0);
    u32::from(network) & mask == u32::from(address) & mask
}

/// The addresses of an `if_inet6` listing: `address ifindex prefix_len scope flags name`,
/// the address as 32 hex digits and the numbers in hex.
pub(crate) fn parse_if_inet6(text: &str) -> Vec<InterfaceAddress> {
    text.lines()
        .filter_map(|line| {
            let mut f = line.split_whitespace();
            let hex = f.next()?;
            let _index = f.next()?;
            let prefix_len = u8::from_str_radix(f.next()?, 16).ok()?;
            let _scope = f.next()?;
            let _flags = f.next()?;
            let interface = f.next()?.to_string();
            if hex.len() != 32 || prefix_len > 128 {
                return None;
            }
            let address = Ipv6Addr::from(u128::from_str_radix(hex, 16).ok()?);
            Some(InterfaceAddress {
                interface,
                address: IpAddr::V6(address),
                prefix_len,
                netns: 0,
            })
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    /// One table of `/proc/net/fib_trie` of a namespace with `10.77.0.2/24` on
    /// a veth and `203.0.113.7/32` on `lo`, as Linux 6 prints it.
    const TABLE: &str = "  +-- 0.0.0.0/0 3 0 5
     +-- 10.77.0.0/24 2 0 2
        +-- 10.77.0.0/30 2 0 2
           |-- 10.77.0.0
              /24 link UNICAST
           |-- 10.77.0.2
              /32 host LOCAL
        |-- 10.77.0.255
           /32 link BROADCAST
     +-- 127.0.0.0/8 2 0 2
        +-- 127.0.0.0/31 1 0 0
           |-- 127.0.0.0
              /8 host LOCAL
           |-- 127.0.0.1
              /32 host LOCAL
        |-- 127.255.255.255
           /32 link BROADCAST
     |-- 203.0.113.7
        /32 host LOCAL
";

    /// The whole file: the kernel prints the same trie under `Main:` and `Local:`.
    fn fib_trie() -> String {
        format!("Main:\n{TABLE}Local:\n{TABLE}")
    }

    fn v4(a: &str, len: u8) -> InterfaceAddress {
        InterfaceAddress {
            interface: String::new(),
            address: a.parse().expect("test address"),
            prefix_len: len,
            netns: 0,
        }
    }

    #[test]
    fn fib_trie_local_addresses_with_their_subnets() {
        assert_eq!(
            parse_fib_trie(&fib_trie()),
            vec![
                v4("10.77.0.2", 24),
                v4("127.0.0.1", 8),
                v4("203.0.113.7", 32)
            ]
        );
    }

    #[test]
    fn fib_trie_with_several_leaf_entries_and_garbage() {
        // One leaf can carry several prefixes; a broadcast is not an address of the host.
        let text = "Local:\n  +-- 0.0.0.0/0 3 0 5\n     |-- 192.168.1.10\n        /24 link UNICAST\n        /32 host LOCAL\n     |-- 192.168.1.255\n        /32 link BROADCAST\n     |-- not-an-address\n        /32 host LOCAL\n        /x host LOCAL\n";
        assert_eq!(parse_fib_trie(text), vec![v4("192.168.1.10", 24)]);
        assert_eq!(parse_fib_trie(""), vec![]);
    }

    #[test]
    fn if_inet6_lines() {
        let text = "fd000000000000000000000000000005 02 40 00 c0      vfb\n\
                    00000000000000000000000000000001 01 80 10 80       lo\n\
                    short 01 80 10 80 lo\n\
                    fe800000000000000000000000000001 03 zz 20 80 eth0\n";
        assert_eq!(
            parse_if_inet6(text),
            vec![
                InterfaceAddress {
                    interface: "vfb".into(),
                    address: "fd00::5".parse().expect("test address"),
                    prefix_len: 64,
                    netns: 0,
                },
                InterfaceAddress {
                    interface: "lo".into(),
                    address: "::1".parse().expect("test address"),
                    prefix_len: 128,
                    netns: 0,
                },
            ]
        );
    }

    /// This process's own namespace, read through procfs, has the addresses
    /// `getifaddrs` lists (IPv4 without interface names).
    #[test]
    fn own_namespace_matches_getifaddrs() {
        let read = read(Path::new("/proc"), std::process::id(), 7).expect("read own net");
        let listed = super::super::host::interface_addresses().expect("getifaddrs");
        for want in &listed {
            let found = read.iter().any(|a| {
                a.address == want.address
                    && a.prefix_len == want.prefix_len
                    && a.netns == 7
                    && (a.address.is_ipv4() || a.interface == want.interface)
            });
            assert!(found, "{want:?} not in {read:?}");
        }
        assert_eq!(read.len(), listed.len(), "{read:?} vs {listed:?}");
    }
}
