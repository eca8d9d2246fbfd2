//! Cutting a string at a byte limit, visibly.
//!
//! Every string the agent sends has a limit (a command line [`MAX_COMMAND_LINE_BYTES`],
//! any field [`crate::wire::MAX_STRING_BYTES`]). A value over its limit is cut with
//! [`cut`]: at a character boundary, never longer than the limit, and ending with
//! [`MARKER`] so that nobody reading the stored value mistakes it for the whole.

/// Appended to a value that was cut, inside the limit: `…` (U+2026, 3 bytes in UTF-8).
pub const MARKER: char = '…';

/// Longest command line the agent keeps, in bytes (marker included).
pub const MAX_COMMAND_LINE_BYTES: usize = 4096;

/// `s` if it fits in `max_bytes`; otherwise its longest prefix that ends at a character
/// boundary and leaves room for [`MARKER`], followed by the marker. The flag says whether
/// `s` was cut.
///
/// The result is never longer than `max_bytes`. A limit too small to hold the marker
/// (under 3 bytes) cuts a too-long value to the empty string, still flagged.
pub fn cut(s: &str, max_bytes: usize) -> (String, bool) {
    cut_read(s, max_bytes, false)
}

/// [`cut`] for a value read only in part (`more_unread`: its source holds more than was
/// read, as when a file is read up to a limit): such a value is cut and marked even when
/// the part read fits.
pub fn cut_read(s: &str, max_bytes: usize, more_unread: bool) -> (String, bool) {
    if s.len() <= max_bytes && !more_unread {
        return (s.to_string(), false);
    }
    let Some(room) = max_bytes.checked_sub(MARKER.len_utf8()) else {
        return (String::new(), true);
    };
    let end = floor_char_boundary(s, room);
    let mut out = String::with_capacity(end + MARKER.len_utf8());
    out.push_str(&s[..end]);
    out.push(MARKER);
    (out, true)
}

/// [`cut`] in place, for a value already owned; returns whether it was cut.
pub fn cut_in_place(s: &mut String, max_bytes: usize) -> bool {
    if s.len() <= max_bytes {
        return false;
    }
    let (out, cut) = cut(s, max_bytes);
    *s = out;
    cut
}

/// The largest index at most `index` that is a character boundary of `s`
/// (`str::floor_char_boundary`, not yet stable).
fn floor_char_boundary(s: &str, index: usize) -> usize {
    if index >= s.len() {
        return s.len();
    }
    // A UTF-8 character is at most 4 bytes: a boundary is within 3 bytes below `index`.
    (index.saturating_sub(3)..=index)
        .rev()
        .find(|&i| s.is_char_boundary(i))
        .unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::*;

    #[test]
    fn a_value_within_its_limit_is_kept_whole() {
        assert_eq!(cut("postgres", 8), ("postgres".to_string(), false));
        assert_eq!(cut("", 0), (String::new(), false));
    }

    #[test]
    fn a_value_over_its_limit_ends_with_the_marker_inside_the_limit() {
        assert_eq!(cut("postgres -D /data", 8), ("postg…".to_string(), true));
        // `ł` is 2 bytes: the cut does not split it.
        assert_eq!(cut("żółć-gęś", 8), ("żó…".to_string(), true));
        assert_eq!(cut("abcd", 3), ("…".to_string(), true));
        assert_eq!(cut("abcd", 2), (String::new(), true));
    }

    #[test]
    fn a_value_read_in_part_is_marked_even_when_it_fits() {
        assert_eq!(cut_read("postgres", 8, true), ("postg…".to_string(), true));
        assert_eq!(cut_read("pg", 8, true), ("pg…".to_string(), true));
        assert_eq!(cut_read("pg", 8, false), ("pg".to_string(), false));
    }

    #[test]
    fn in_place_cuts_the_same() {
        let mut s = "postgres -D /data".to_string();
        assert!(cut_in_place(&mut s, 8));
        assert_eq!(s, "postg…");
        assert!(!cut_in_place(&mut s, 8));
    }

    proptest! {
        /// Valid UTF-8 (a `String`), within the limit, a prefix of the input before the
        /// marker, and marked exactly when cut.
        #[test]
        fn cut_is_clean(
            s in "\\PC{0,64}|[a-zé€😀\\x00 ]{0,64}",
            max in 0usize..80,
            more_unread: bool,
        ) {
            let (out, was_cut) = cut_read(&s, max, more_unread);
            prop_assert!(out.len() <= max, "{out:?} over {max}");
            prop_assert_eq!(was_cut, s.len() > max || more_unread);
            if was_cut {
                if max >= MARKER.len_utf8() {
                    let kept = out.strip_suffix(MARKER);
                    prop_assert!(kept.is_some(), "{out:?} has no marker");
                    let kept = kept.unwrap_or_default();
                    prop_assert!(s.starts_with(kept));
                    // The longest such prefix: one more character would not fit.
                    if let Some(next) = s[kept.len()..].chars().next() {
                        prop_assert!(kept.len() + next.len_utf8() + MARKER.len_utf8() > max);
                    }
                } else {
                    prop_assert_eq!(out, "");
                }
            } else {
                prop_assert_eq!(&out, &s);
            }
            if !more_unread {
                prop_assert_eq!(cut(&s, max), cut_read(&s, max, false));
            }
        }
    }
}
