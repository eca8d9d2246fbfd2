//! How query answers are printed: `table`, `wide`, `csv` and `json`.
//!
//! Every kind of row (a host, a socket, a flow, a finding, …) is a plain serialisable
//! struct that implements [`Record`]: its serde shape is the JSON for scripts, and its
//! [`Record::COLUMNS`] list says what the table, wide and CSV formats show. A new verb
//! adds a row struct with its column list (see `crate::rows`) and calls [`write_list`]
//! or [`write_one`]; nothing here changes.
//!
//! - `table`: the columns for people, fitted to the terminal: when the row is wider
//!   than the terminal, the free-text columns ([`Fit::Shrink`]) are cut with `…`,
//!   widest first; key columns ([`Fit::Key`]) never are.
//! - `wide`: every column, uncut.
//! - `csv`: the same columns as `wide`, RFC 4180 quoting, a header row of column keys,
//!   times as RFC 3339.
//! - `json`: an array of the rows (one object for a single record), pretty-printed,
//!   never coloured.
//!
//! Colour (only in `table` and `wide`) comes from [`Column::paint`] and is switched by
//! [`Context::color`], which [`terminal`] decides from `--color`, `NO_COLOR` and
//! whether stdout is a terminal.

pub mod color;
pub mod csv;
pub mod stream;
pub mod table;
pub mod terminal;

use std::io::{self, Write};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use serde::Serialize;

pub use color::{ColorChoice, Paint};

/// Output formats of the query verbs (`--output`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, clap::ValueEnum)]
pub enum Format {
    /// Columns for people, fitted to the terminal's width.
    #[default]
    Table,
    /// Every column, untruncated.
    Wide,
    /// Comma-separated values with a header row: the columns of `wide`.
    Csv,
    /// JSON, stable for scripts: an array for lists, an object for `host`, `at`, `ack` and `rules test`, an object per line for `watch`.
    Json,
}

/// Everything rendering needs besides the rows: the format and what the terminal can do.
///
/// Built by [`terminal::context`] in the binary; tests build it by hand (a fixed `now`
/// and width make the output reproducible).
#[derive(Debug, Clone)]
pub struct Context {
    /// The format.
    pub format: Format,
    /// Columns available to a `table`; `None`: unlimited (stdout is not a terminal).
    pub width: Option<usize>,
    /// Whether to colour (`table` and `wide` only; [`Context::new`] keeps it off for the
    /// others).
    pub color: bool,
    /// The time that relative times ("5m ago") are counted from.
    pub now: SystemTime,
}

impl Context {
    /// A context; `color` is dropped for `csv` and `json`, which are never coloured.
    pub fn new(format: Format, width: Option<usize>, color: bool, now: SystemTime) -> Self {
        Context {
            format,
            width,
            color: color && matches!(format, Format::Table | Format::Wide),
            now,
        }
    }

    /// Whether the output is for programs (`csv`), where times are absolute and cells
    /// carry no decoration.
    pub fn machine(&self) -> bool {
        matches!(self.format, Format::Csv | Format::Json)
    }

    /// A Unix time as a cell: "5m ago" for people, RFC 3339 for programs; 0 or less is
    /// "never" (people) or empty (programs).
    pub fn time(&self, unix: i64) -> String {
        if unix <= 0 {
            return if self.machine() {
                String::new()
            } else {
                "never".into()
            };
        }
        let then = UNIX_EPOCH + Duration::from_secs(unix.unsigned_abs());
        if self.machine() {
            return humantime::format_rfc3339_seconds(then).to_string();
        }
        match self.now.duration_since(then) {
            Ok(age) => format!("{} ago", age_text(age)),
            Err(_) => "just now".into(),
        }
    }

    /// A Unix time as an absolute cell in every format: RFC 3339 in UTC
    /// (`2026-11-17T03:00:00Z`), what `portolan at` and `--from` take back; 0 or less is
    /// "never" (people) or empty (programs).
    pub fn instant(&self, unix: i64) -> String {
        if unix <= 0 {
            return if self.machine() {
                String::new()
            } else {
                "never".into()
            };
        }
        crate::when::rfc3339(unix)
    }

    /// A Unix time that may be ahead (a deadline): "in 4h" or "5m ago" for people,
    /// RFC 3339 for programs; 0 or less is empty.
    pub fn deadline(&self, unix: i64) -> String {
        if unix <= 0 {
            return String::new();
        }
        if self.machine() {
            return crate::when::rfc3339(unix);
        }
        let then = UNIX_EPOCH + Duration::from_secs(unix.unsigned_abs());
        match then.duration_since(self.now) {
            Ok(ahead) => format!("in {}", age_text(ahead)),
            Err(_) => self.time(unix),
        }
    }
}

/// An age in at most two units, without spaces: `42s`, `3m12s`, `2h5m`, `3d4h`.
pub fn age_text(age: Duration) -> String {
    let s = age.as_secs();
    let (d, h, m, s) = (s / 86_400, s / 3_600 % 24, s / 60 % 60, s % 60);
    match (d, h, m) {
        (0, 0, 0) => format!("{s}s"),
        (0, 0, _) if s == 0 => format!("{m}m"),
        (0, 0, _) => format!("{m}m{s}s"),
        (0, _, 0) => format!("{h}h"),
        (0, _, _) => format!("{h}h{m}m"),
        (_, 0, _) => format!("{d}d"),
        _ => format!("{d}d{h}h"),
    }
}

/// Whether a column is in `table` or only in `wide` and `csv`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Show {
    /// In every format.
    Always,
    /// Only in `wide` and `csv`.
    Wide,
}

/// How a column gives way when a `table` is wider than the terminal.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Fit {
    /// Never cut: identifies the row (host, port, state, …).
    Key,
    /// Free text (command line, evidence, labels): cut with `…` when the row does not
    /// fit, widest first, down to `min` characters (or the header, if longer).
    Shrink {
        /// The narrowest it gets.
        min: usize,
    },
}

/// One column of a row type: its header, CSV key, how it fits, how its cell is made and
/// coloured. Column lists are `const` (see [`Record::COLUMNS`]); build them with
/// [`Column::key`] or [`Column::free`] and the modifiers.
pub struct Column<R> {
    /// Header in `table` and `wide` (`LAST SEEN`).
    pub header: &'static str,
    /// Header in `csv`, snake_case and stable (`last_seen`).
    pub key: &'static str,
    /// In `table`, or only `wide` and `csv`.
    pub show: Show,
    /// How it gives way to the terminal's width.
    pub fit: Fit,
    /// The cell's text (not yet sanitised or cut).
    pub value: fn(&R, &Context) -> String,
    /// The cell's colour, when colour is on.
    pub paint: fn(&R) -> Option<Paint>,
    /// The width a stream of rows ([`stream::Lines`]) reserves for the column before it
    /// has seen them, so that its lines stay aligned (0: the header's).
    pub stream_width: usize,
}

impl<R> std::fmt::Debug for Column<R> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Column")
            .field("header", &self.header)
            .field("key", &self.key)
            .field("show", &self.show)
            .field("fit", &self.fit)
            .finish_non_exhaustive()
    }
}

fn no_paint<R>(_: &R) -> Option<Paint> {
    None
}

impl<R> Column<R> {
    /// A key column: shown in `table`, never cut.
    pub const fn key(
        header: &'static str,
        key: &'static str,
        value: fn(&R, &Context) -> String,
    ) -> Self {
        Column {
            header,
            key,
            show: Show::Always,
            fit: Fit::Key,
            value,
            paint: no_paint::<R>,
            stream_width: 0,
        }
    }

    /// A free-text column: shown in `table`, cut down to `min` characters when needed.
    pub const fn free(
        header: &'static str,
        key: &'static str,
        min: usize,
        value: fn(&R, &Context) -> String,
    ) -> Self {
        Column {
            fit: Fit::Shrink { min },
            ..Column::key(header, key, value)
        }
    }

    /// Only in `wide` and `csv`.
    pub const fn wide(self) -> Self {
        Column {
            show: Show::Wide,
            ..self
        }
    }

    /// Coloured by `paint` when colour is on.
    pub const fn paint(self, paint: fn(&R) -> Option<Paint>) -> Self {
        Column { paint, ..self }
    }

    /// At least `width` wide in a stream of rows, where later rows cannot widen the lines
    /// already printed (`portolan watch`).
    pub const fn stream_width(self, width: usize) -> Self {
        Column {
            stream_width: width,
            ..self
        }
    }

    /// Whether the column is shown in `format`.
    pub fn shown_in(&self, format: Format) -> bool {
        match format {
            Format::Table => self.show == Show::Always,
            Format::Wide | Format::Csv | Format::Json => true,
        }
    }
}

/// A kind of row: serialises to its JSON object and lists its columns.
///
/// The serde field names are the JSON contract documented in `docs/json-output.md`;
/// rename or remove one only deliberately (the snapshot tests in
/// `tests/output.rs` fail until the snapshots are blessed again).
pub trait Record: Serialize + Sized + 'static {
    /// The columns of `table` (those with [`Show::Always`]), `wide` and `csv` (all), in
    /// order.
    const COLUMNS: &'static [Column<Self>];
}

/// Prints rows in the context's format: a table, CSV, or a JSON array.
pub fn write_list<R: Record>(out: &mut dyn Write, ctx: &Context, rows: &[R]) -> io::Result<()> {
    match ctx.format {
        Format::Json => write_json(out, &rows),
        Format::Csv => csv::write(out, ctx, R::COLUMNS, rows),
        Format::Table | Format::Wide => table::write(out, ctx, R::COLUMNS, rows),
    }
}

/// Prints one record: `label: value` lines for people, a one-row CSV, or a JSON object.
pub fn write_one<R: Record>(out: &mut dyn Write, ctx: &Context, row: &R) -> io::Result<()> {
    match ctx.format {
        Format::Json => write_json(out, row),
        Format::Csv => csv::write(out, ctx, R::COLUMNS, std::slice::from_ref(row)),
        Format::Table | Format::Wide => table::write_record(out, ctx, R::COLUMNS, row),
    }
}

/// Prints a document that is not a list of rows (`portolan at`, `portolan rules test`)
/// as pretty JSON.
pub fn write_document<T: Serialize>(out: &mut dyn Write, value: &T) -> io::Result<()> {
    write_json(out, value)
}

/// Pretty JSON and a newline. A closed stdout stays an [`io::Error`] of kind
/// `BrokenPipe`, so that `main` treats it as success.
fn write_json<T: Serialize + ?Sized>(out: &mut dyn Write, value: &T) -> io::Result<()> {
    serde_json::to_writer_pretty(&mut *out, value).map_err(io::Error::from)?;
    writeln!(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ages_use_at_most_two_units() {
        let cases = [
            (0, "0s"),
            (42, "42s"),
            (60, "1m"),
            (192, "3m12s"),
            (3_600, "1h"),
            (7_500, "2h5m"),
            (86_400, "1d"),
            (86_400 + 59, "1d"),
            (3 * 86_400 + 4 * 3_600 + 5, "3d4h"),
        ];
        for (secs, want) in cases {
            assert_eq!(age_text(Duration::from_secs(secs)), want, "{secs}s");
        }
    }

    #[test]
    fn times_are_relative_for_people_and_absolute_for_programs() {
        let now = UNIX_EPOCH + Duration::from_secs(1_700_000_300);
        let people = Context::new(Format::Table, None, false, now);
        let programs = Context::new(Format::Csv, None, false, now);
        assert_eq!(people.time(1_700_000_000), "5m ago");
        assert_eq!(people.time(1_700_000_400), "just now");
        assert_eq!(people.time(0), "never");
        assert_eq!(programs.time(1_700_000_000), "2023-11-14T22:13:20Z");
        assert_eq!(programs.time(0), "");
        assert_eq!(people.instant(1_700_000_000), "2023-11-14T22:13:20Z");
        assert_eq!(people.instant(0), "never");
        assert_eq!(programs.instant(0), "");
        assert_eq!(people.deadline(1_700_000_300 + 4 * 3600), "in 4h");
        assert_eq!(people.deadline(1_700_000_000), "5m ago");
        assert_eq!(people.deadline(0), "");
        assert_eq!(programs.deadline(1_700_000_000), "2023-11-14T22:13:20Z");
    }

    #[test]
    fn csv_and_json_are_never_coloured() {
        let now = UNIX_EPOCH;
        assert!(Context::new(Format::Table, None, true, now).color);
        assert!(Context::new(Format::Wide, None, true, now).color);
        assert!(!Context::new(Format::Csv, None, true, now).color);
        assert!(!Context::new(Format::Json, None, true, now).color);
    }
}
