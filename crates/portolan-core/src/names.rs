//! The names of the domain's enums, defined once.
//!
//! Rules, storage, the CLI and text forms all spell a [`crate::Protocol`], a
//! [`crate::SocketState`], a [`crate::Scope`], an [`crate::Attribution`] or a
//! [`crate::Direction`] the same way: each enum lists its variants once (`ALL`) and names
//! each once (`as_str`). [`Named`] ties the two together, and [`named_enum!`] derives
//! `Display` and `FromStr` from them, so a name read anywhere is checked against that one
//! list and refused with the list of accepted names.
//!
//! [`named_enum!`]: crate::named_enum

/// An enum whose every variant has one name.
pub trait Named: Sized + Copy + Eq + 'static {
    /// What a value is, for error messages: `protocol`, `socket state`.
    const WHAT: &'static str;
    /// Every variant, in the enum's own order.
    const VARIANTS: &'static [Self];
    /// The variant's name.
    fn name(self) -> &'static str;
}

/// A name that is not one of an enum's.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("unknown {what} `{got}` (expected one of {})", .accepted.join(", "))]
#[non_exhaustive]
pub struct UnknownName {
    /// What was being named: `protocol`, `socket state`.
    pub what: &'static str,
    /// The name given.
    pub got: String,
    /// Every accepted name, in the enum's order.
    pub accepted: Vec<&'static str>,
}

/// Every name of `T`, in the enum's order.
pub fn names<T: Named>() -> Vec<&'static str> {
    T::VARIANTS.iter().map(|v| v.name()).collect()
}

/// The variant of `T` named exactly `name` (names are case-sensitive).
///
/// # Errors
///
/// [`UnknownName`] listing every accepted name when `name` is none of them.
pub fn parse_name<T: Named>(name: &str) -> Result<T, UnknownName> {
    T::VARIANTS
        .iter()
        .copied()
        .find(|v| v.name() == name)
        .ok_or_else(|| UnknownName {
            what: T::WHAT,
            got: name.to_string(),
            accepted: names::<T>(),
        })
}

/// Implements [`Named`], `Display` and `FromStr` for an enum from its inherent `ALL`
/// constant and `as_str(self)` method: `named_enum!(Protocol, "protocol");`.
#[macro_export]
macro_rules! named_enum {
    ($ty:ty, $what:literal) => {
        impl $crate::names::Named for $ty {
            const WHAT: &'static str = $what;
            const VARIANTS: &'static [Self] = &<$ty>::ALL;
            fn name(self) -> &'static str {
                self.as_str()
            }
        }

        impl ::std::fmt::Display for $ty {
            fn fmt(&self, f: &mut ::std::fmt::Formatter<'_>) -> ::std::fmt::Result {
                f.write_str(self.as_str())
            }
        }

        impl ::std::str::FromStr for $ty {
            type Err = $crate::names::UnknownName;
            fn from_str(s: &str) -> ::std::result::Result<Self, Self::Err> {
                $crate::names::parse_name(s)
            }
        }
    };
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeSet;
    use std::fmt::Debug;
    use std::str::FromStr;

    use proptest::prelude::*;

    use super::*;
    use crate::{Attribution, Direction, Protocol, Scope, SocketState};

    /// Names are unique, and every variant is named, displayed and parsed back as itself.
    fn laws<T>()
    where
        T: Named + Debug + std::fmt::Display + FromStr<Err = UnknownName>,
    {
        let names = names::<T>();
        let unique: BTreeSet<&str> = names.iter().copied().collect();
        assert_eq!(unique.len(), names.len(), "{names:?}");
        for v in T::VARIANTS {
            assert_eq!(v.to_string(), v.name());
            assert_eq!(v.name().parse::<T>(), Ok(*v));
        }
    }

    #[test]
    fn every_enum_round_trips_its_names() {
        laws::<Protocol>();
        laws::<SocketState>();
        laws::<Scope>();
        laws::<Attribution>();
        laws::<Direction>();
    }

    #[test]
    fn an_unknown_name_lists_the_accepted_ones() {
        let err = "icmp".parse::<Protocol>().expect_err("not a protocol");
        assert_eq!(
            err.to_string(),
            "unknown protocol `icmp` (expected one of tcp, udp, raw, unix, sctp)"
        );
        assert!(
            "TCP".parse::<Protocol>().is_err(),
            "names are case-sensitive"
        );
    }

    /// `s` parses when it is a name, and is refused with every name otherwise.
    fn parses_exactly_its_names<T>(s: &str) -> Result<(), TestCaseError>
    where
        T: Named + Debug + FromStr<Err = UnknownName>,
    {
        match s.parse::<T>() {
            Ok(v) => prop_assert_eq!(v.name(), s),
            Err(e) => {
                prop_assert!(!names::<T>().contains(&s));
                prop_assert_eq!(&e.accepted, &names::<T>());
                prop_assert_eq!(e.got.as_str(), s);
                for name in names::<T>() {
                    prop_assert!(e.to_string().contains(name));
                }
            }
        }
        Ok(())
    }

    proptest! {
        #[test]
        fn only_names_parse(
            s in prop_oneof![
                "[a-zA-Z_0-9]{0,12}",
                proptest::sample::select(
                    names::<Protocol>()
                        .into_iter()
                        .chain(names::<SocketState>())
                        .chain(names::<Scope>())
                        .chain(names::<Attribution>())
                        .chain(names::<Direction>())
                        .collect::<Vec<_>>()
                )
                .prop_map(str::to_string),
            ]
        ) {
            parses_exactly_its_names::<Protocol>(&s)?;
            parses_exactly_its_names::<SocketState>(&s)?;
            parses_exactly_its_names::<Scope>(&s)?;
            parses_exactly_its_names::<Attribution>(&s)?;
            parses_exactly_its_names::<Direction>(&s)?;
        }

        #[test]
        fn variants_round_trip(p in proptest::sample::select(Protocol::ALL.to_vec()),
                               s in proptest::sample::select(SocketState::ALL.to_vec()),
                               c in proptest::sample::select(Scope::ALL.to_vec()),
                               a in proptest::sample::select(Attribution::ALL.to_vec()),
                               d in proptest::sample::select(Direction::ALL.to_vec())) {
            prop_assert_eq!(Protocol::from_str(p.as_str()), Ok(p));
            prop_assert_eq!(SocketState::from_str(s.as_str()), Ok(s));
            prop_assert_eq!(Scope::from_str(c.as_str()), Ok(c));
            prop_assert_eq!(Attribution::from_str(a.as_str()), Ok(a));
            prop_assert_eq!(Direction::from_str(d.as_str()), Ok(d));
        }
    }
}
