//! What stdout is: a terminal (how wide) or a pipe, and the [`Context`] that follows.

use std::collections::BTreeMap;
use std::io::IsTerminal;
use std::time::SystemTime;

use super::{ColorChoice, Context, Format};

/// What is known about stdout.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Stdout {
    /// Whether it is a terminal.
    pub is_terminal: bool,
    /// Its width in columns, when it is a terminal that says.
    pub columns: Option<usize>,
}

impl Stdout {
    /// Asks the operating system about this process's stdout.
    pub fn detect() -> Self {
        let is_terminal = std::io::stdout().is_terminal();
        let columns = if is_terminal {
            terminal_size::terminal_size()
                .map(|(w, _)| usize::from(w.0))
                .filter(|w| *w > 0)
        } else {
            None
        };
        Stdout {
            is_terminal,
            columns,
        }
    }
}

/// The width a `table` may use: the terminal's when stdout is one, else `COLUMNS` (a
/// positive number) when set, else unlimited.
pub fn width(stdout: Stdout, env: &BTreeMap<String, String>) -> Option<usize> {
    stdout.columns.or_else(|| {
        env.get("COLUMNS")
            .and_then(|c| c.trim().parse::<usize>().ok())
            .filter(|c| *c > 0)
    })
}

/// The rendering context for this run.
pub fn context(
    format: Format,
    color: ColorChoice,
    stdout: Stdout,
    env: &BTreeMap<String, String>,
    now: SystemTime,
) -> Context {
    Context::new(
        format,
        width(stdout, env),
        color.enabled(stdout.is_terminal, env),
        now,
    )
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
    fn the_terminal_wins_then_columns_then_unlimited() {
        let tty = Stdout {
            is_terminal: true,
            columns: Some(120),
        };
        let pipe = Stdout {
            is_terminal: false,
            columns: None,
        };
        assert_eq!(width(tty, &env(&[("COLUMNS", "80")])), Some(120));
        assert_eq!(width(pipe, &env(&[("COLUMNS", "80")])), Some(80));
        assert_eq!(width(pipe, &env(&[])), None);
        assert_eq!(width(pipe, &env(&[("COLUMNS", "wide")])), None);
        assert_eq!(width(pipe, &env(&[("COLUMNS", "0")])), None);
    }

    #[test]
    fn a_pipe_gets_no_colour_unless_asked() {
        let pipe = Stdout {
            is_terminal: false,
            columns: None,
        };
        let now = SystemTime::UNIX_EPOCH;
        assert!(!context(Format::Table, ColorChoice::Auto, pipe, &env(&[]), now).color);
        assert!(context(Format::Table, ColorChoice::Always, pipe, &env(&[]), now).color);
    }
}
