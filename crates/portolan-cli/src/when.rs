//! Instants and durations as the command line takes them.
//!
//! An instant (`portolan at TIME`, `--at`, `--from`, `--to`) is any of:
//!
//! - RFC 3339: `2026-11-17T03:00:00Z`, with an offset (`2026-11-17T04:00:00+01:00`),
//!   without one (UTC), with a space for the `T`, or a date alone (its midnight, UTC);
//! - a Unix timestamp in seconds: `1794884400`;
//! - how long ago: `2h`, `3d`, `90m`, `1h30m`, optionally followed by ` ago`.
//!
//! A duration (`--since`, `--for`, `--step`) is `30s`, `15m`, `4h`, `7d`, `1h30m`.
//! Nothing here reads the clock: `now` is passed in.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

/// What an instant may be written as, for error messages.
const INSTANT_FORMS: &str =
    "use RFC 3339 (2026-11-17T03:00:00Z), a Unix timestamp (1794884400) or how long ago (2h, 3d)";

/// Parses an instant; relative forms count back from `now` (Unix seconds).
pub fn parse_instant(text: &str, now: i64) -> Result<i64, String> {
    let text = text.trim();
    if let Some(unix) = parse_absolute_opt(text)? {
        return Ok(unix);
    }
    let ago = text.strip_suffix("ago").map_or(text, str::trim_end);
    match humantime::parse_duration(ago) {
        Ok(d) => {
            let secs = i64::try_from(d.as_secs()).unwrap_or(i64::MAX);
            let at = now.saturating_sub(secs);
            if at <= 0 {
                Err(format!("`{text}` ago is before 1970: {INSTANT_FORMS}"))
            } else {
                Ok(at)
            }
        }
        Err(_) => Err(format!("`{text}` is not a time: {INSTANT_FORMS}")),
    }
}

/// Parses an absolute instant: RFC 3339 or a Unix timestamp (no "how long ago", which
/// would be a trap where a future instant is meant, as in `--until`).
pub fn parse_absolute(text: &str) -> Result<i64, String> {
    parse_absolute_opt(text.trim())?.ok_or_else(|| {
        format!(
            "`{}` is not a time: use RFC 3339 (2026-12-01T00:00:00Z) or a Unix timestamp (1796083200)",
            text.trim()
        )
    })
}

/// `Some` when `text` is RFC 3339 or a Unix timestamp; `Err` when it looks like one of
/// them but is wrong; `None` when it looks like neither.
fn parse_absolute_opt(text: &str) -> Result<Option<i64>, String> {
    if text.is_empty() {
        return Err(format!("an empty time: {INSTANT_FORMS}"));
    }
    if text.bytes().all(|b| b.is_ascii_digit()) {
        return text
            .parse::<i64>()
            .map(Some)
            .map_err(|_| format!("`{text}` is too large for a Unix timestamp"));
    }
    // RFC 3339 starts with a four-digit year and a dash.
    let looks_like_a_date = text.len() >= 10
        && text.as_bytes()[..4].iter().all(u8::is_ascii_digit)
        && text.as_bytes()[4] == b'-';
    if !looks_like_a_date {
        return Ok(None);
    }
    let bad = || format!("`{text}` is not a valid RFC 3339 time: {INSTANT_FORMS}");
    let (local, offset) = split_offset(text).ok_or_else(bad)?;
    let local = if local.len() == 10 {
        format!("{local}T00:00:00")
    } else {
        local.to_string()
    };
    let at = humantime::parse_rfc3339_weak(&local).map_err(|_| bad())?;
    let unix = match at.duration_since(UNIX_EPOCH) {
        Ok(d) => i64::try_from(d.as_secs()).map_err(|_| bad())?,
        Err(e) => -i64::try_from(e.duration().as_secs()).map_err(|_| bad())?,
    };
    Ok(Some(unix - offset))
}

/// Splits a trailing `Z`, `+HH:MM` or `-HH:MM` off an RFC 3339 text: (the rest, the
/// offset east of UTC in seconds). `None` for a malformed offset.
fn split_offset(text: &str) -> Option<(&str, i64)> {
    if let Some(rest) = text.strip_suffix(['Z', 'z']) {
        return Some((rest, 0));
    }
    // A date alone has dashes but no time, hence no offset.
    let Some(t) = text.find(['T', 't', ' ']) else {
        return Some((text, 0));
    };
    let time = &text[t + 1..];
    let Some(sign_at) = time.rfind(['+', '-']) else {
        return Some((text, 0));
    };
    let offset = &time[sign_at + 1..];
    let (hh, mm) = offset.split_once(':')?;
    if hh.len() != 2 || mm.len() != 2 {
        return None;
    }
    let (hh, mm) = (hh.parse::<i64>().ok()?, mm.parse::<i64>().ok()?);
    if hh > 23 || mm > 59 {
        return None;
    }
    let sign = if time.as_bytes()[sign_at] == b'-' {
        -1
    } else {
        1
    };
    Some((&text[..t + 1 + sign_at], sign * (hh * 3600 + mm * 60)))
}

/// Parses a duration (`30s`, `15m`, `4h`, `7d`, `1h30m`) of at least a second.
pub fn parse_duration(text: &str) -> Result<Duration, String> {
    let text = text.trim();
    match humantime::parse_duration(text) {
        Ok(d) if d.as_secs() >= 1 => Ok(Duration::from_secs(d.as_secs())),
        Ok(_) => Err(format!("`{text}` is shorter than a second")),
        Err(_) => Err(format!(
            "`{text}` is not a duration: use 30s, 15m, 4h, 7d or 1h30m"
        )),
    }
}

/// Unix seconds now, from `clock`.
pub fn unix(clock: SystemTime) -> i64 {
    clock
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| i64::try_from(d.as_secs()).unwrap_or(i64::MAX))
}

/// An instant as RFC 3339 in UTC (`2026-11-17T03:00:00Z`).
pub fn rfc3339(unix: i64) -> String {
    let at = if unix >= 0 {
        UNIX_EPOCH + Duration::from_secs(unix.unsigned_abs())
    } else {
        UNIX_EPOCH - Duration::from_secs(unix.unsigned_abs())
    };
    humantime::format_rfc3339_seconds(at).to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    /// 2026-11-17T03:00:00Z.
    const T: i64 = 1_794_884_400;

    #[test]
    fn rfc3339_in_its_forms() {
        for text in [
            "2026-11-17T03:00:00Z",
            "2026-11-17T03:00:00z",
            "2026-11-17T03:00:00",
            "2026-11-17 03:00:00",
            "2026-11-17T03:00:00.750Z",
            "2026-11-17T04:00:00+01:00",
            "2026-11-16T22:30:00-04:30",
            " 2026-11-17T03:00:00Z ",
        ] {
            assert_eq!(parse_instant(text, 0), Ok(T), "{text}");
        }
        assert_eq!(parse_instant("2026-11-17", 0), Ok(T - 3 * 3600));
        assert_eq!(rfc3339(T), "2026-11-17T03:00:00Z");
    }

    #[test]
    fn unix_timestamps_and_ages() {
        assert_eq!(parse_instant("1794884400", 0), Ok(T));
        assert_eq!(parse_instant("2h", T), Ok(T - 7200));
        assert_eq!(parse_instant("3d", T), Ok(T - 3 * 86_400));
        assert_eq!(parse_instant("1h30m ago", T), Ok(T - 5400));
        assert_eq!(parse_instant("90s ago", T), Ok(T - 90));
    }

    #[test]
    fn mistakes_say_what_is_accepted() {
        for text in ["yesterday", "2h from now", "", "12:00"] {
            let e = parse_instant(text, T).expect_err(text);
            assert!(e.contains("RFC 3339"), "{text}: {e}");
        }
        for text in [
            "2026-13-01T00:00:00Z",
            "2026-11-17T03:00:00+1:00",
            "2026-11-17T25:00:00Z",
        ] {
            let e = parse_instant(text, T).expect_err(text);
            assert!(e.contains("not a valid RFC 3339 time"), "{text}: {e}");
        }
        assert!(parse_instant("99999999999999999999", T).is_err());
        assert!(parse_instant("60y", T).is_err(), "before 1970");
    }

    #[test]
    fn absolute_instants_refuse_ages() {
        assert_eq!(parse_absolute("2026-11-17T03:00:00Z"), Ok(T));
        assert_eq!(parse_absolute("1794884400"), Ok(T));
        let e = parse_absolute("4h").expect_err("an age");
        assert!(e.contains("Unix timestamp"), "{e}");
    }

    #[test]
    fn durations() {
        assert_eq!(parse_duration("7d"), Ok(Duration::from_secs(7 * 86_400)));
        assert_eq!(parse_duration("1h30m"), Ok(Duration::from_secs(5400)));
        assert!(parse_duration("0s").is_err());
        assert!(parse_duration("500ms").is_err());
        assert!(parse_duration("a week").is_err());
    }
}
