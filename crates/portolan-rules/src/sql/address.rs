//! Conditions on addresses: the classes core defines, and networks a rule names.
//!
//! The classes are rendered from core's own tables ([`LOOPBACK`], [`LINK_LOCAL`]), the
//! ones [`portolan_core::classify`] decides by, so the SQL cannot disagree with the
//! agent about what a link-local address is.

use std::fmt::Write as _;
use std::net::IpAddr;

use portolan_core::AddressBlock;
use portolan_core::scope::{LINK_LOCAL, LOOPBACK};

use super::literal::sql_string;
use crate::model::Cidr;

/// `addr` is written as a dotted-quad IPv4 address.
fn is_dotted_quad(addr: &str) -> String {
    format!("match({addr}, '^[0-9]+[.][0-9]+[.][0-9]+[.][0-9]+$')")
}

/// `addr` is written as an IPv6 address.
fn is_colon_hex(addr: &str) -> String {
    format!("position({addr}, ':') > 0")
}

/// An address column with IPv4-mapped IPv6 addresses (`::ffff:a.b.c.d`) written as IPv4.
pub(crate) fn unmapped(expr: &str) -> String {
    format!("replaceRegexpOne({expr}, '^::ffff:([0-9.]+)$', '\\\\1')")
}

/// `addr` (unmapped) is a loopback address, as core classifies it.
pub(crate) fn is_loopback(addr: &str) -> String {
    in_blocks(addr, &LOOPBACK)
}

/// `addr` (unmapped) is a link-local address, as core classifies it.
pub(crate) fn is_link_local(addr: &str) -> String {
    in_blocks(addr, &LINK_LOCAL)
}

/// `addr` (unmapped) is in one of `blocks` (`0` when there are none): IPv4 blocks
/// compare the masked number, IPv6 blocks match the 32 hex digits of the address
/// against a pattern with one character class per digit.
pub(crate) fn in_blocks(addr: &str, blocks: &[AddressBlock]) -> String {
    if blocks.is_empty() {
        return "0".into();
    }
    let parts: Vec<String> = blocks
        .iter()
        .map(|b| match *b {
            AddressBlock::V4 { bits, mask } => format!(
                "({} AND bitAnd(IPv4StringToNum({addr}), {mask}) = {bits})",
                is_dotted_quad(addr)
            ),
            AddressBlock::V6 { bits, mask } => format!(
                "({} AND match(hex(IPv6StringToNum({addr})), {}))",
                is_colon_hex(addr),
                sql_string(&hex_pattern(bits, mask))
            ),
        })
        .collect();
    format!("({})", parts.join(" OR "))
}

/// The regular expression matching the 32 upper-case hex digits of every address whose
/// bits under `mask` are `bits`: `^FE[89AB]` for fe80::/10, `^FF.2` for `ffX2::/16`.
fn hex_pattern(bits: u128, mask: u128) -> String {
    let mut re = String::from("^");
    for digit in 0..32 {
        let shift = 124 - 4 * digit;
        let (m, v) = ((mask >> shift) & 0xf, (bits >> shift) & 0xf);
        match m {
            0xf => {
                let _ = write!(re, "{v:X}");
            }
            0 => re.push('.'),
            _ => {
                re.push('[');
                for n in (0..16u128).filter(|n| n & m == v) {
                    let _ = write!(re, "{n:X}");
                }
                re.push(']');
            }
        }
    }
    re.trim_end_matches('.').to_string()
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
                "({} AND IPv4StringToNum({addr}) >= {} AND IPv4StringToNum({addr}) <= {})",
                is_dotted_quad(addr),
                u32::from(first),
                u32::from(last)
            ),
            (first, last) => format!(
                "({} AND hex(IPv6StringToNum({addr})) >= '{:032X}' AND hex(IPv6StringToNum({addr})) <= '{:032X}')",
                is_colon_hex(addr),
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
    use std::net::{Ipv4Addr, Ipv6Addr};

    use portolan_core::{Scope, classify};
    use proptest::prelude::*;

    use super::*;
    use crate::sql::literal::read_literal;

    /// What ClickHouse makes of the conditions [`in_blocks`] writes, for the address
    /// string `a` (the condition's column is named `a`). Anything else it cannot read
    /// fails the test: the evaluator must understand every condition written.
    fn eval(sql: &str, a: &str) -> bool {
        let inner = sql
            .strip_prefix('(')
            .and_then(|s| s.strip_suffix(')'))
            .unwrap_or_else(|| panic!("not parenthesised: {sql}"));
        inner.split(" OR ").any(|term| {
            let term = term
                .strip_prefix('(')
                .and_then(|s| s.strip_suffix(')'))
                .unwrap_or_else(|| panic!("not parenthesised: {term}"));
            term.split(" AND ").all(|cond| eval_cond(cond, a))
        })
    }

    fn eval_cond(cond: &str, a: &str) -> bool {
        let literal = |s: &str| {
            let (value, rest) = read_literal(s).unwrap_or_else(|| panic!("no literal: {s}"));
            assert_eq!(rest, ")", "{cond}");
            value
        };
        let v4 = a.parse::<Ipv4Addr>().map_or(0, u32::from);
        let v6_hex = format!("{:032X}", a.parse::<Ipv6Addr>().map_or(0, u128::from));
        if cond == "position(a, ':') > 0" {
            a.contains(':')
        } else if let Some(rest) = cond.strip_prefix("match(a, ") {
            regex_matches(&literal(rest), a)
        } else if let Some(rest) = cond.strip_prefix("match(hex(IPv6StringToNum(a)), ") {
            regex_matches(&literal(rest), &v6_hex)
        } else if let Some(rest) = cond.strip_prefix("bitAnd(IPv4StringToNum(a), ") {
            let (mask, bits) = rest.split_once(") = ").expect("a comparison");
            v4 & mask.parse::<u32>().expect("a mask") == bits.parse::<u32>().expect("bits")
        } else {
            panic!("the evaluator does not know {cond}")
        }
    }

    /// RE2 on the patterns written here: `^`, `$`, literals, `.`, classes with ranges,
    /// and `+`; unanchored at the end unless `$`.
    fn regex_matches(re: &str, s: &str) -> bool {
        let re = re.strip_prefix('^').expect("anchored patterns");
        let mut atoms: Vec<(Vec<char>, bool)> = Vec::new(); // (allowed, `+`)
        let mut chars = re.chars().peekable();
        let mut end = false;
        while let Some(c) = chars.next() {
            let allowed: Vec<char> = match c {
                '$' => {
                    end = true;
                    break;
                }
                '.' => vec![],
                '[' => {
                    let mut set = Vec::new();
                    while let Some(c) = chars.next() {
                        match (c, chars.peek()) {
                            (']', _) => break,
                            (lo, Some('-')) => {
                                chars.next();
                                let hi = chars.next().expect("a range end");
                                set.extend(lo..=hi);
                            }
                            (c, _) => set.push(c),
                        }
                    }
                    set
                }
                c => vec![c],
            };
            let plus = chars.next_if_eq(&'+').is_some();
            atoms.push((allowed, plus));
        }
        fn go(atoms: &[(Vec<char>, bool)], s: &[char], end: bool) -> bool {
            let Some(((allowed, plus), rest)) = atoms.split_first() else {
                return !end || s.is_empty();
            };
            let ok = |c: &char| allowed.is_empty() || allowed.contains(c);
            let run = s.iter().take_while(|c| ok(c)).count();
            let max = if *plus { run } else { run.min(1) };
            (1..=max).rev().any(|n| go(rest, &s[n..], end))
        }
        go(&atoms, &s.chars().collect::<Vec<_>>(), end)
    }

    /// The address as the store writes it, unmapped as [`unmapped`] does.
    fn stored(addr: IpAddr) -> String {
        let text = addr.to_string();
        match text.strip_prefix("::ffff:") {
            Some(v4) if !v4.is_empty() && v4.chars().all(|c| c.is_ascii_digit() || c == '.') => {
                v4.to_string()
            }
            _ => text,
        }
    }

    #[test]
    fn classes_render_core_s_tables() {
        assert_eq!(hex_pattern(0xfe80 << 112, 0xffc0 << 112), "^FE[89AB]");
        assert_eq!(hex_pattern(0xff02 << 112, 0xff0f << 112), "^FF.2");
        assert_eq!(hex_pattern(1, u128::MAX), format!("^{:032X}", 1));
        let sql = is_link_local("a");
        assert!(
            sql.contains("bitAnd(IPv4StringToNum(a), 4294901760) = 2851995648"),
            "169.254.0.0/16: {sql}"
        );
        assert!(sql.contains("'^FE[89AB]'"), "{sql}");
        for (addr, want) in [
            ("169.254.3.4", true),
            ("224.0.0.251", true),
            ("224.0.1.1", false),
            ("fe80::1", true),
            ("febf::1", true),
            ("fec0::1", false),
            ("ff02::fb", true),
            ("ff12::1", true),
            ("ff05::1", false),
            ("10.0.0.1", false),
            ("", false),
        ] {
            assert_eq!(eval(&sql, addr), want, "{addr}");
        }
        assert!(eval(&is_loopback("a"), "127.9.9.9"));
        assert!(eval(&is_loopback("a"), "::1"));
        assert!(!eval(&is_loopback("a"), "::2"));
    }

    fn address() -> impl Strategy<Value = IpAddr> {
        let group = prop_oneof![
            any::<u16>(),
            Just(0xfe80u16),
            Just(0xfebf),
            Just(0xfec0),
            (0u16..16).prop_map(|f| 0xff02 | (f << 4)),
            (0u16..16).prop_map(|f| 0xff01 | (f << 4)),
            (0u16..16).prop_map(|f| 0xff05 | (f << 4)),
        ];
        prop_oneof![
            any::<u32>().prop_map(|a| IpAddr::V4(Ipv4Addr::from(a))),
            (
                proptest::sample::select(vec![127u32, 169, 224, 10, 0]),
                any::<u32>()
            )
                .prop_map(|(first, a)| IpAddr::V4(Ipv4Addr::from((first << 24) | (a >> 8)))),
            (
                proptest::sample::select(vec![0xa9fe_u32, 0xa9ff, 0xe000]),
                0u32..0x200
            )
                .prop_map(|(top, low)| IpAddr::V4(Ipv4Addr::from((top << 16) | low))),
            any::<u128>().prop_map(|a| IpAddr::V6(Ipv6Addr::from(a))),
            (group, any::<u128>())
                .prop_map(|(g, a)| IpAddr::V6(Ipv6Addr::from((u128::from(g) << 112) | (a >> 16)))),
            any::<u32>().prop_map(|a| IpAddr::V6(Ipv4Addr::from(a).to_ipv6_mapped())),
            Just(IpAddr::V6(Ipv6Addr::LOCALHOST)),
        ]
    }

    proptest! {
        /// For any address, the SQL says link-local and loopback exactly where core does.
        #[test]
        fn sql_classes_agree_with_core(addr in address()) {
            let text = stored(addr);
            let class = classify(addr);
            prop_assert_eq!(eval(&is_link_local("a"), &text), class == Scope::LinkLocal, "{}", text);
            prop_assert_eq!(eval(&is_loopback("a"), &text), class == Scope::Loopback, "{}", text);
        }
    }

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
