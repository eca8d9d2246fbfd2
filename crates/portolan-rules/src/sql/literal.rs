//! SQL literals: every user string reaches the SQL through [`sql_string`], every glob
//! through [`glob_regex`] and then [`sql_string`].

use std::fmt::Write as _;

use crate::model::Glob;

/// A ClickHouse string literal holding exactly `s`, quotes included.
///
/// Backslashes and quotes are escaped; control characters and `?` are written as `\xHH`
/// escapes, so the literal is one line and holds no `?`.
pub fn sql_string(s: &str) -> String {
    let mut out = String::with_capacity(s.len() + 2);
    out.push('\'');
    for c in s.chars() {
        match c {
            '\\' => out.push_str("\\\\"),
            '\'' => out.push_str("\\'"),
            '?' => out.push_str("\\x3F"),
            c if (c as u32) < 0x20 || c as u32 == 0x7f => {
                let _ = write!(out, "\\x{:02X}", c as u32);
            }
            c => out.push(c),
        }
    }
    out.push('\'');
    out
}

/// The RE2 regular expression (anchored at both ends) that matches what `glob` matches.
pub fn glob_regex(glob: &Glob) -> String {
    let mut re = String::from("^");
    for c in glob.0.chars() {
        match c {
            '*' => re.push_str(".*"),
            '?' => re.push('.'),
            c if c.is_ascii_punctuation() => {
                re.push('\\');
                re.push(c);
            }
            c if c.is_control() => {
                let _ = write!(re, "\\x{{{:X}}}", c as u32);
            }
            c => re.push(c),
        }
    }
    re.push('$');
    re
}

/// Reads a ClickHouse string literal at the start of `s`: its value and the rest.
#[cfg(test)]
pub(crate) fn read_literal(s: &str) -> Option<(String, &str)> {
    let mut chars = s.strip_prefix('\'')?.char_indices();
    let mut out = String::new();
    while let Some((i, c)) = chars.next() {
        match c {
            '\'' => return Some((out, &s[i + 2..])),
            '\\' => match chars.next()?.1 {
                'x' => {
                    let hi = chars.next()?.1.to_digit(16)?;
                    let lo = chars.next()?.1.to_digit(16)?;
                    out.push(char::from_u32(hi * 16 + lo)?);
                }
                other => out.push(other),
            },
            c => out.push(c),
        }
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn literals_escape_quotes_backslashes_and_controls() {
        assert_eq!(sql_string("it's"), r"'it\'s'");
        assert_eq!(sql_string(r"a\b"), r"'a\\b'");
        assert_eq!(sql_string("a\nb?"), r"'a\x0Ab\x3F'");
    }

    proptest! {
        #[test]
        fn literal_holds_exactly_its_string(s in any::<String>()) {
            let lit = sql_string(&s);
            prop_assert!(!lit.contains('?'));
            prop_assert!(!lit.contains('\n'));
            let (value, rest) = read_literal(&lit).expect("a closed literal");
            prop_assert_eq!(value, s);
            prop_assert_eq!(rest, "");
        }
    }
}
