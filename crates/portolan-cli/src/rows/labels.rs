//! Labels as one table cell, `env=prod,role=db`, written so that the cell always reads
//! back as the same labels: a key or value that is empty or holds a separator (`,` `=`),
//! a quote, a backslash, white space or a control character is written in double quotes,
//! with `\"`, `\\`, `\n`, `\r`, `\t` and `\u{…}` escapes. Ordinary labels print as they are.

use std::collections::BTreeMap;

/// Labels sorted by key, as `key=value,key=value`, quoted where needed (see the module).
pub fn labels_text<'a>(labels: impl IntoIterator<Item = (&'a String, &'a String)>) -> String {
    let mut pairs: Vec<(&String, &String)> = labels.into_iter().collect();
    pairs.sort();
    let mut out = String::new();
    for (i, (key, value)) in pairs.into_iter().enumerate() {
        if i > 0 {
            out.push(',');
        }
        push_token(&mut out, key);
        out.push('=');
        push_token(&mut out, value);
    }
    out
}

/// Reads a cell written by [`labels_text`] back into its labels.
pub fn parse_labels_text(text: &str) -> Result<BTreeMap<String, String>, String> {
    let mut labels = BTreeMap::new();
    if text.is_empty() {
        return Ok(labels);
    }
    let mut chars = text.chars().peekable();
    loop {
        let key = token(&mut chars)?;
        if chars.next() != Some('=') {
            return Err(format!("label `{key}` has no `=`"));
        }
        let value = token(&mut chars)?;
        if labels.insert(key.clone(), value).is_some() {
            return Err(format!("label `{key}` appears twice"));
        }
        match chars.next() {
            None => return Ok(labels),
            Some(',') => {}
            Some(c) => return Err(format!("`{c}` after the value of label `{key}`")),
        }
    }
}

/// Whether `s` prints without quotes.
fn is_plain(s: &str) -> bool {
    !s.is_empty()
        && s.chars()
            .all(|c| !matches!(c, ',' | '=' | '"' | '\\') && !c.is_whitespace() && !c.is_control())
}

fn push_token(out: &mut String, s: &str) {
    if is_plain(s) {
        out.push_str(s);
        return;
    }
    out.push('"');
    for c in s.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            '\t' => out.push_str("\\t"),
            c if c.is_control() => out.push_str(&format!("\\u{{{:x}}}", u32::from(c))),
            c => out.push(c),
        }
    }
    out.push('"');
}

type Chars<'a> = std::iter::Peekable<std::str::Chars<'a>>;

fn token(chars: &mut Chars<'_>) -> Result<String, String> {
    if chars.peek() != Some(&'"') {
        let mut plain = String::new();
        while let Some(&c) = chars.peek() {
            if c == ',' || c == '=' {
                break;
            }
            plain.push(c);
            chars.next();
        }
        return if is_plain(&plain) {
            Ok(plain)
        } else {
            Err(format!("`{plain}` must be quoted"))
        };
    }
    chars.next();
    let mut quoted = String::new();
    loop {
        match chars.next() {
            None => return Err("a quoted label has no closing `\"`".into()),
            Some('"') => return Ok(quoted),
            Some('\\') => quoted.push(escape(chars)?),
            Some(c) => quoted.push(c),
        }
    }
}

fn escape(chars: &mut Chars<'_>) -> Result<char, String> {
    Ok(match chars.next() {
        Some('"') => '"',
        Some('\\') => '\\',
        Some('n') => '\n',
        Some('r') => '\r',
        Some('t') => '\t',
        Some('u') => {
            if chars.next() != Some('{') {
                return Err("`\\u` without `{`".into());
            }
            let hex: String = chars.by_ref().take_while(|c| *c != '}').collect();
            u32::from_str_radix(&hex, 16)
                .ok()
                .and_then(char::from_u32)
                .ok_or_else(|| format!("`\\u{{{hex}}}` is not a character"))?
        }
        other => return Err(format!("unknown escape `\\{}`", other.unwrap_or(' '))),
    })
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::*;

    fn map(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
        pairs
            .iter()
            .map(|(k, v)| ((*k).to_string(), (*v).to_string()))
            .collect()
    }

    #[test]
    fn ordinary_labels_print_as_they_are() {
        let labels = map(&[("role", "db"), ("env", "prod")]);
        assert_eq!(labels_text(&labels), "env=prod,role=db");
        assert_eq!(labels_text(&BTreeMap::new()), "");
    }

    #[test]
    fn separators_in_values_are_quoted() {
        // Unquoted, both would print `a=b,c=d`.
        let one = map(&[("a", "b,c=d")]);
        let two = map(&[("a", "b"), ("c", "d")]);
        assert_eq!(labels_text(&one), r#"a="b,c=d""#);
        assert_eq!(labels_text(&two), "a=b,c=d");
        assert_eq!(
            labels_text(&map(&[("k", "say \"hi\"\n"), ("", "x\\y")])),
            r#"""="x\\y",k="say \"hi\"\n""#
        );
    }

    #[test]
    fn malformed_cells_are_refused() {
        for bad in ["a", "a=b,", "a=\"b", "a=b c", "a=b,a=c", "a=\"\\q\""] {
            assert!(parse_labels_text(bad).is_err(), "{bad}");
        }
    }

    proptest! {
        #[test]
        fn the_printed_cell_parses_back_to_the_same_labels(
            labels in proptest::collection::btree_map(
                "(?s:.{0,8})|[a-z,=\"\\\\ ]{0,6}",
                "(?s:.{0,8})|[a-z,=\"\\\\ \n]{0,6}",
                0..5,
            )
        ) {
            let text = labels_text(&labels);
            prop_assert_eq!(parse_labels_text(&text), Ok(labels), "{}", text);
        }
    }
}
