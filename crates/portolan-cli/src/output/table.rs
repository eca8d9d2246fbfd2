//! `table` and `wide`: aligned columns for people.
//!
//! Cells are made safe for a terminal first ([`sanitize`]: a command line or a hostname
//! comes from a monitored host and may hold escape sequences), then the columns are
//! fitted to the width ([`fit`]) and cut ([`truncate`]). Widths count characters, so a
//! double-width character (CJK) makes its row one column wider than the others.

use std::io::{self, Write};

use super::{Column, Context, Fit, Format};

/// Spaces between two columns.
const GAP: usize = 2;

/// What stands for an empty cell, so that columns stay easy to read by eye.
pub(crate) const EMPTY: &str = "-";

/// The cell's text for a terminal: control characters (newline, tab, escape, …) are
/// shown escaped (`\n`, `\t`, `\x1b`) so that they can neither break the layout nor
/// drive the terminal.
pub fn sanitize(text: &str) -> String {
    if !text.chars().any(char::is_control) {
        return text.to_string();
    }
    let mut out = String::with_capacity(text.len() + 8);
    for c in text.chars() {
        match c {
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            '\t' => out.push_str("\\t"),
            c if c.is_control() => out.push_str(&format!("\\x{:02x}", u32::from(c))),
            c => out.push(c),
        }
    }
    out
}

/// `text` cut to `width` characters, the last one `…` when anything was cut.
pub fn truncate(text: &str, width: usize) -> String {
    if text.chars().count() <= width {
        return text.to_string();
    }
    match width {
        0 => String::new(),
        w => text.chars().take(w - 1).chain(['…']).collect(),
    }
}

/// Column widths that fit `limit` characters (gaps included), from each column's
/// natural width (its widest cell or header) and its fit.
///
/// Key columns keep their natural width. When the row is too wide, free columns give
/// way widest first: they are capped at one level, the highest at which the row fits,
/// but none gets narrower than its floor: its `min` (or its header, if wider). When the
/// row does not fit even so, the floor is the header. When even that does not fit, the
/// row is as narrow as it can be and the terminal wraps it. No column is ever wider
/// than its natural width.
pub fn fit(natural: &[usize], fits: &[Fit], headers: &[usize], limit: Option<usize>) -> Vec<usize> {
    let gaps = GAP * natural.len().saturating_sub(1);
    let total = |widths: &[usize]| widths.iter().sum::<usize>() + gaps;
    let Some(limit) = limit else {
        return natural.to_vec();
    };
    if total(natural) <= limit {
        return natural.to_vec();
    }
    let soft = |i: usize| match fits[i] {
        Fit::Key => natural[i],
        Fit::Shrink { min } => natural[i].min(min.max(headers[i])),
    };
    let hard = |i: usize| natural[i].min(headers[i]);
    let soft_fits = total(&(0..natural.len()).map(soft).collect::<Vec<_>>()) <= limit;
    let floor = |i: usize| if soft_fits { soft(i) } else { hard(i) };
    let at_level = |level: usize| -> Vec<usize> {
        (0..natural.len())
            .map(|i| match fits[i] {
                Fit::Key => natural[i],
                Fit::Shrink { .. } => natural[i].min(level).max(floor(i)),
            })
            .collect()
    };
    // The highest level at which the row fits (total is monotone in the level).
    let (mut lo, mut hi) = (0, natural.iter().copied().max().unwrap_or(0));
    if total(&at_level(lo)) > limit {
        return at_level(lo);
    }
    while lo < hi {
        let mid = lo + (hi - lo).div_ceil(2);
        if total(&at_level(mid)) <= limit {
            lo = mid;
        } else {
            hi = mid - 1;
        }
    }
    // Hand what is left over, one character each, to the columns held at the level.
    let mut widths = at_level(lo);
    let mut spare = limit - total(&widths);
    for (i, w) in widths.iter_mut().enumerate() {
        if spare == 0 {
            break;
        }
        if matches!(fits[i], Fit::Shrink { .. }) && *w == lo && *w < natural[i] {
            *w += 1;
            spare -= 1;
        }
    }
    widths
}

/// The columns shown in the context's format, with each row's cells (sanitised, empty
/// cells shown as `-`).
fn cells<'c, R>(
    ctx: &Context,
    columns: &'c [Column<R>],
    rows: &[R],
) -> (Vec<&'c Column<R>>, Vec<Vec<String>>) {
    let shown: Vec<&Column<R>> = columns.iter().filter(|c| c.shown_in(ctx.format)).collect();
    let cells = rows
        .iter()
        .map(|row| {
            shown
                .iter()
                .map(|c| {
                    let text = sanitize(&(c.value)(row, ctx));
                    if text.is_empty() {
                        EMPTY.to_string()
                    } else {
                        text
                    }
                })
                .collect()
        })
        .collect();
    (shown, cells)
}

/// Prints rows as a table: header, then one line per row; fitted to the width in
/// `table`, uncut in `wide`.
pub fn write<R>(
    out: &mut dyn Write,
    ctx: &Context,
    columns: &[Column<R>],
    rows: &[R],
) -> io::Result<()> {
    let (shown, cells) = cells(ctx, columns, rows);
    let headers: Vec<usize> = shown.iter().map(|c| c.header.chars().count()).collect();
    let mut natural = headers.clone();
    for row in &cells {
        for (w, cell) in natural.iter_mut().zip(row) {
            *w = (*w).max(cell.chars().count());
        }
    }
    let fits: Vec<Fit> = shown.iter().map(|c| c.fit).collect();
    let limit = if ctx.format == Format::Table {
        ctx.width
    } else {
        None
    };
    let widths = fit(&natural, &fits, &headers, limit);
    let header: Vec<String> = shown.iter().map(|c| c.header.to_string()).collect();
    write_line(out, &header, &widths, |_| None)?;
    for (row, line) in rows.iter().zip(&cells) {
        write_line(out, line, &widths, |i| {
            if ctx.color {
                (shown[i].paint)(row)
            } else {
                None
            }
        })?;
    }
    Ok(())
}

/// One line: cells cut and padded to their widths, coloured, without trailing spaces.
pub(crate) fn write_line(
    out: &mut dyn Write,
    cells: &[String],
    widths: &[usize],
    paint: impl Fn(usize) -> Option<super::Paint>,
) -> io::Result<()> {
    let mut line = String::new();
    let mut pending = 0; // spaces owed before the next cell
    for (i, (cell, width)) in cells.iter().zip(widths).enumerate() {
        let text = truncate(cell, *width);
        let len = text.chars().count();
        if i > 0 {
            pending += GAP;
        }
        line.extend(std::iter::repeat_n(' ', pending));
        match paint(i) {
            Some(p) => line.push_str(&p.apply(&text)),
            None => line.push_str(&text),
        }
        pending = width.saturating_sub(len);
    }
    writeln!(out, "{}", line.trim_end_matches(' '))
}

/// Prints one record as `label: value` lines (`host`). In `table` the free-text values
/// are cut to the width; in `wide` nothing is.
pub fn write_record<R>(
    out: &mut dyn Write,
    ctx: &Context,
    columns: &[Column<R>],
    row: &R,
) -> io::Result<()> {
    let (shown, cells) = cells(ctx, columns, std::slice::from_ref(row));
    let labels: Vec<String> = shown
        .iter()
        .map(|c| format!("{}:", c.header.to_lowercase()))
        .collect();
    let label_width = labels.iter().map(|l| l.chars().count()).max().unwrap_or(0) + 1;
    let Some(values) = cells.first() else {
        return Ok(());
    };
    for ((column, label), value) in shown.iter().zip(&labels).zip(values) {
        let value = match (ctx.format, ctx.width, column.fit) {
            (Format::Table, Some(width), Fit::Shrink { min }) => {
                truncate(value, width.saturating_sub(label_width).max(min))
            }
            _ => value.clone(),
        };
        let value = match (ctx.color, (column.paint)(row)) {
            (true, Some(p)) => p.apply(&value),
            _ => value,
        };
        writeln!(out, "{label:<label_width$}{value}")?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    const FREE: Fit = Fit::Shrink { min: 4 };

    /// The floor of column `i` in `fit`: (soft, hard).
    fn floors(natural: &[usize], fits: &[Fit], headers: &[usize], i: usize) -> (usize, usize) {
        match fits[i] {
            Fit::Key => (natural[i], natural[i]),
            Fit::Shrink { min } => (
                natural[i].min(min.max(headers[i])),
                natural[i].min(headers[i]),
            ),
        }
    }

    #[test]
    fn truncation_marks_the_cut() {
        assert_eq!(truncate("postgres", 10), "postgres");
        assert_eq!(truncate("postgres", 8), "postgres");
        assert_eq!(truncate("postgres", 5), "post…");
        assert_eq!(truncate("postgres", 1), "…");
        assert_eq!(truncate("postgres", 0), "");
        assert_eq!(truncate("żółć-gęś", 4), "żół…");
    }

    #[test]
    fn control_characters_are_escaped() {
        assert_eq!(sanitize("plain"), "plain");
        assert_eq!(sanitize("a\nb\tc"), "a\\nb\\tc");
        assert_eq!(sanitize("\x1b[31mred"), "\\x1b[31mred");
        assert_eq!(sanitize("\u{9b}x"), "\\x9bx");
    }

    #[test]
    fn a_row_that_fits_is_left_alone() {
        let natural = [4, 10, 30];
        let fits = [Fit::Key, Fit::Key, FREE];
        assert_eq!(fit(&natural, &fits, &[4, 4, 4], Some(48)), natural);
        assert_eq!(fit(&natural, &fits, &[4, 4, 4], None), natural);
    }

    #[test]
    fn the_widest_free_column_gives_way_first() {
        // 10 + 2 + 20 + 2 + 40 = 74 > 60: the 40-wide column shrinks to 26.
        let natural = [10, 20, 40];
        let fits = [Fit::Key, FREE, FREE];
        assert_eq!(fit(&natural, &fits, &[4, 4, 4], Some(60)), [10, 20, 26]);
        // At 40 both free columns shrink to one level (13 and 13).
        assert_eq!(fit(&natural, &fits, &[4, 4, 4], Some(40)), [10, 13, 13]);
    }

    #[test]
    fn key_columns_are_never_cut_and_free_ones_stop_at_their_floor() {
        let natural = [30, 30, 30];
        let fits = [Fit::Key, Fit::Shrink { min: 8 }, Fit::Key];
        // At 72 the free column stops at its `min`, 8.
        assert_eq!(fit(&natural, &fits, &[4, 4, 4], Some(72)), [30, 8, 30]);
        // At 70 `min` does not fit: the free column goes down to its header, 6.
        assert_eq!(fit(&natural, &fits, &[4, 4, 4], Some(70)), [30, 6, 30]);
        // Even at 20 columns: keys keep 30, the free one stops at its header.
        assert_eq!(fit(&natural, &fits, &[4, 4, 4], Some(20)), [30, 4, 30]);
        assert_eq!(fit(&natural, &fits, &[4, 12, 4], Some(20)), [30, 12, 30]);
    }

    proptest! {
        /// Laws of `fit`: keys keep their width; nothing grows; free columns stay at or
        /// above their floor; the row fits whenever the floors do, using all the room.
        #[test]
        fn fit_laws(
            cols in proptest::collection::vec((1usize..60, any::<bool>(), 1usize..12, 1usize..10), 1..8),
            limit in 10usize..200,
        ) {
            let natural: Vec<usize> = cols.iter().map(|c| c.0).collect();
            let fits: Vec<Fit> = cols.iter().map(|c| if c.1 { Fit::Key } else { Fit::Shrink { min: c.2 } }).collect();
            let headers: Vec<usize> = cols.iter().map(|c| c.3.min(c.0)).collect();
            let widths = fit(&natural, &fits, &headers, Some(limit));
            let gaps = GAP * (natural.len() - 1);
            let soft: usize = (0..natural.len()).map(|i| floors(&natural, &fits, &headers, i).0).sum::<usize>() + gaps;
            let hard: usize = (0..natural.len()).map(|i| floors(&natural, &fits, &headers, i).1).sum::<usize>() + gaps;
            for (i, width) in widths.iter().enumerate() {
                prop_assert!(*width <= natural[i]);
                prop_assert!(*width >= floors(&natural, &fits, &headers, i).1);
                if soft <= limit {
                    prop_assert!(*width >= floors(&natural, &fits, &headers, i).0);
                }
            }
            let total = widths.iter().sum::<usize>() + gaps;
            let natural_total = natural.iter().sum::<usize>() + gaps;
            if natural_total <= limit {
                prop_assert_eq!(&widths, &natural);
            } else if hard <= limit {
                prop_assert_eq!(total, limit);
            } else {
                prop_assert_eq!(total, hard);
            }
        }
    }
}
