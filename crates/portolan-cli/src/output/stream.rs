//! Rows that arrive one at a time (`portolan watch`): each is printed, and flushed, as
//! soon as it comes.
//!
//! - `json`: one compact JSON object per line (NDJSON), for scripts that read line by
//!   line.
//! - `csv`: the header row once, then a record per row.
//! - `table` and `wide`: the header with the first row, then a line per row. Columns
//!   cannot be sized to rows not yet seen: each is as wide as the widest cell so far
//!   (the header is aligned to the first row), and in `table` the free-text columns are
//!   cut to the terminal's width.

use std::io::{self, Write};
use std::marker::PhantomData;

use super::table::{EMPTY, fit, sanitize, write_line};
use super::{Context, Fit, Format, Record, csv};

/// Prints rows of kind `R` as they arrive.
#[derive(Debug)]
pub struct Lines<R> {
    /// Widths so far (`table`, `wide`).
    widths: Vec<usize>,
    /// Whether the header was printed.
    started: bool,
    rows: PhantomData<fn(&R)>,
}

impl<R: Record> Default for Lines<R> {
    fn default() -> Self {
        Lines {
            widths: Vec::new(),
            started: false,
            rows: PhantomData,
        }
    }
}

impl<R: Record> Lines<R> {
    /// A printer that has printed nothing yet.
    pub fn new() -> Self {
        Self::default()
    }

    /// Starts the output: the CSV header row, so that a program reading a watch that
    /// has nothing to say yet knows its columns. (A table's header waits for the first
    /// row, to be aligned with it.)
    pub fn start(&mut self, out: &mut dyn Write, ctx: &Context) -> io::Result<()> {
        if self.started || matches!(ctx.format, Format::Table | Format::Wide) {
            return Ok(());
        }
        self.started = true;
        if ctx.format == Format::Csv {
            let keys = R::COLUMNS
                .iter()
                .filter(|c| c.shown_in(ctx.format))
                .map(|c| c.key);
            csv::write_record(out, keys)?;
        }
        out.flush()
    }

    /// Prints one row (after the header, the first time) and flushes.
    pub fn write(&mut self, out: &mut dyn Write, ctx: &Context, row: &R) -> io::Result<()> {
        self.start(out, ctx)?;
        let shown: Vec<_> = R::COLUMNS
            .iter()
            .filter(|c| c.shown_in(ctx.format))
            .collect();
        match ctx.format {
            Format::Json => {
                serde_json::to_writer(&mut *out, row).map_err(io::Error::from)?;
                writeln!(out)?;
            }
            Format::Csv => {
                let cells: Vec<String> = shown.iter().map(|c| (c.value)(row, ctx)).collect();
                csv::write_record(out, cells.iter().map(String::as_str))?;
            }
            Format::Table | Format::Wide => {
                let cells: Vec<String> = shown
                    .iter()
                    .map(|c| {
                        let text = sanitize(&(c.value)(row, ctx));
                        if text.is_empty() { EMPTY.into() } else { text }
                    })
                    .collect();
                let headers: Vec<usize> = shown.iter().map(|c| c.header.chars().count()).collect();
                if self.widths.is_empty() {
                    self.widths = shown
                        .iter()
                        .zip(&headers)
                        .map(|(c, h)| c.stream_width.max(*h))
                        .collect();
                }
                for (w, cell) in self.widths.iter_mut().zip(&cells) {
                    *w = (*w).max(cell.chars().count());
                }
                let fits: Vec<Fit> = shown.iter().map(|c| c.fit).collect();
                let limit = if ctx.format == Format::Table {
                    ctx.width
                } else {
                    None
                };
                let widths = fit(&self.widths, &fits, &headers, limit);
                if !self.started {
                    self.started = true;
                    let names: Vec<String> = shown.iter().map(|c| c.header.to_string()).collect();
                    write_line(out, &names, &widths, |_| None)?;
                }
                write_line(out, &cells, &widths, |i| {
                    if ctx.color {
                        (shown[i].paint)(row)
                    } else {
                        None
                    }
                })?;
            }
        }
        out.flush()
    }
}
