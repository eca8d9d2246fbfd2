//! `csv`: RFC 4180 fields, a header row of column keys, the columns of `wide`.
//!
//! Lines end in `\n` rather than RFC 4180's `\r\n`, as Unix tools expect; every CSV
//! reader accepts both. Cells are written as they are (no sanitising, no cutting): a
//! field with a comma, a quote, or a line break is quoted, quotes doubled.

use std::borrow::Cow;
use std::io::{self, Write};

use super::{Column, Context};

/// One field, quoted when it must be.
pub fn field(text: &str) -> Cow<'_, str> {
    if text.contains([',', '"', '\n', '\r']) {
        Cow::Owned(format!("\"{}\"", text.replace('"', "\"\"")))
    } else {
        Cow::Borrowed(text)
    }
}

/// One record: its fields joined by commas, and a newline.
pub fn write_record<'a>(
    out: &mut dyn Write,
    fields: impl IntoIterator<Item = &'a str>,
) -> io::Result<()> {
    let line: Vec<Cow<'_, str>> = fields.into_iter().map(field).collect();
    writeln!(out, "{}", line.join(","))
}

/// Prints the header row (column keys) and one record per row.
pub fn write<R>(
    out: &mut dyn Write,
    ctx: &Context,
    columns: &[Column<R>],
    rows: &[R],
) -> io::Result<()> {
    let shown: Vec<&Column<R>> = columns.iter().filter(|c| c.shown_in(ctx.format)).collect();
    write_record(out, shown.iter().map(|c| c.key))?;
    for row in rows {
        let cells: Vec<String> = shown.iter().map(|c| (c.value)(row, ctx)).collect();
        write_record(out, cells.iter().map(String::as_str))?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn line(fields: &[&str]) -> String {
        let mut out = Vec::new();
        write_record(&mut out, fields.iter().copied()).expect("writes to a Vec");
        String::from_utf8(out).expect("utf-8")
    }

    #[test]
    fn plain_fields_are_bare() {
        assert_eq!(line(&["db-1", "tcp", "5432", ""]), "db-1,tcp,5432,\n");
    }

    #[test]
    fn commas_quotes_and_line_breaks_are_quoted() {
        assert_eq!(line(&["env=prod,role=db"]), "\"env=prod,role=db\"\n");
        assert_eq!(line(&["say \"hi\"", "x"]), "\"say \"\"hi\"\"\",x\n");
        assert_eq!(line(&["a\nb", "c\rd"]), "\"a\nb\",\"c\rd\"\n");
        // Leading spaces and other punctuation need no quotes.
        assert_eq!(line(&[" a ", "'b'", ";"]), " a ,'b',;\n");
    }

    proptest! {
        /// Whatever the fields hold, a real CSV parser reads back exactly them.
        #[test]
        fn a_csv_parser_reads_back_the_fields(
            rows in proptest::collection::vec(
                proptest::collection::vec("(?s:.{0,12})|[,\"\r\n a]{0,6}", 1..5), 1..5)
        ) {
            let width = rows[0].len();
            let rows: Vec<Vec<String>> = rows.into_iter().map(|mut r| { r.resize(width, String::new()); r }).collect();
            let mut out = Vec::new();
            // A header first, as `write` does (readers drop a byte-order mark that
            // starts the input, so data never comes first).
            let header: Vec<String> = (0..width).map(|i| format!("c{i}")).collect();
            write_record(&mut out, header.iter().map(String::as_str)).expect("writes to a Vec");
            for r in &rows {
                write_record(&mut out, r.iter().map(String::as_str)).expect("writes to a Vec");
            }
            let mut reader = ::csv::ReaderBuilder::new()
                .has_headers(true)
                .flexible(false)
                .from_reader(out.as_slice());
            let mut back = Vec::new();
            for record in reader.records() {
                let record = record.map_err(|e| TestCaseError::fail(e.to_string()))?;
                back.push(record.iter().map(str::to_string).collect::<Vec<_>>());
            }
            // A line holding only one empty field is an empty line to every CSV reader.
            let want: Vec<Vec<String>> = rows.into_iter().filter(|r| !(r.len() == 1 && r[0].is_empty())).collect();
            prop_assert_eq!(back, want);
        }
    }
}
