//! Colour: when to use it (`--color`, `NO_COLOR`, a terminal) and the few colours used.

use std::collections::BTreeMap;

/// `--color`: when to colour `table` and `wide` output.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, clap::ValueEnum)]
pub enum ColorChoice {
    /// When stdout is a terminal, `NO_COLOR` is unset or empty and `TERM` is not `dumb`.
    #[default]
    Auto,
    /// Always, even into a pipe (`… | less -R`).
    Always,
    /// Never.
    Never,
}

impl ColorChoice {
    /// Whether to colour. An explicit `--color always` wins over `NO_COLOR`, as
    /// <https://no-color.org> asks of command-line flags.
    pub fn enabled(self, stdout_is_terminal: bool, env: &BTreeMap<String, String>) -> bool {
        match self {
            ColorChoice::Always => true,
            ColorChoice::Never => false,
            ColorChoice::Auto => {
                stdout_is_terminal
                    && env.get("NO_COLOR").is_none_or(|v| v.is_empty())
                    && env.get("TERM").is_none_or(|t| t != "dumb")
            }
        }
    }
}

/// A cell's colour.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Paint {
    /// Needs attention now (critical findings, public exposure).
    BoldRed,
    /// Bad (high findings).
    Red,
    /// Worth a look (medium findings, wildcard binds, stale hosts, outside peers).
    Yellow,
    /// Fine or informative (listeners, low findings).
    Green,
    /// Informative.
    Cyan,
    /// Unimportant (loopback, resolved findings).
    Dim,
}

impl Paint {
    /// The ANSI SGR parameters.
    fn sgr(self) -> &'static str {
        match self {
            Paint::BoldRed => "1;31",
            Paint::Red => "31",
            Paint::Yellow => "33",
            Paint::Green => "32",
            Paint::Cyan => "36",
            Paint::Dim => "2",
        }
    }

    /// `text` wrapped in the colour's escape sequences.
    pub fn apply(self, text: &str) -> String {
        format!("\x1b[{}m{text}\x1b[0m", self.sgr())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn env(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    #[test]
    fn auto_colours_only_a_terminal_without_no_color() {
        let none = env(&[]);
        assert!(ColorChoice::Auto.enabled(true, &none));
        assert!(!ColorChoice::Auto.enabled(false, &none));
        assert!(!ColorChoice::Auto.enabled(true, &env(&[("NO_COLOR", "1")])));
        // An empty NO_COLOR does not count (no-color.org).
        assert!(ColorChoice::Auto.enabled(true, &env(&[("NO_COLOR", "")])));
        assert!(!ColorChoice::Auto.enabled(true, &env(&[("TERM", "dumb")])));
    }

    #[test]
    fn flags_win_over_the_environment() {
        let no_color = env(&[("NO_COLOR", "1")]);
        assert!(ColorChoice::Always.enabled(false, &no_color));
        assert!(!ColorChoice::Never.enabled(true, &env(&[])));
    }

    #[test]
    fn paint_wraps_and_resets() {
        assert_eq!(Paint::Red.apply("HIGH"), "\x1b[31mHIGH\x1b[0m");
    }
}
