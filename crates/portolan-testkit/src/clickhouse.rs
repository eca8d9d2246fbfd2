//! Queries over ClickHouse's HTTP interface for benchmarks and soaks that time their own
//! reads: plain HTTP/1.0, one connection a query, no client library in the measurement.

use std::io::{Read, Write};
use std::net::TcpStream;
use std::time::Duration;

use crate::error::{Error, Result, io_error};

/// Runs `query` in `database` on the server at `url` (`http://host:port`); the body.
pub fn http_query(url: &str, database: &str, query: &str) -> Result<String> {
    let authority = url.trim_start_matches("http://").trim_end_matches('/');
    let mut stream = TcpStream::connect(authority)
        .map_err(io_error(format!("cannot connect to ClickHouse at {url}")))?;
    stream
        .set_read_timeout(Some(Duration::from_secs(60)))
        .map_err(io_error("cannot set a read timeout"))?;
    write!(
        stream,
        "POST /?database={database} HTTP/1.0\r\nHost: {authority}\r\nContent-Length: {}\r\n\r\n{query}",
        query.len()
    )
    .map_err(io_error(format!("cannot send a query to ClickHouse at {url}")))?;
    let mut response = String::new();
    stream
        .read_to_string(&mut response)
        .map_err(io_error(format!(
            "cannot read ClickHouse's answer from {url}"
        )))?;
    match response.split_once("\r\n\r\n") {
        Some((head, body)) if head.contains(" 200 ") => Ok(body.to_string()),
        _ => Err(Error::ClickHouse {
            url: url.to_string(),
            query: query.to_string(),
            response,
        }),
    }
}

/// `n` with a comma between each group of three digits, as the benchmark tables print it.
pub fn thousands(n: usize) -> String {
    let digits = n.to_string();
    let mut out = String::new();
    for (i, c) in digits.chars().enumerate() {
        if i > 0 && (digits.len() - i).is_multiple_of(3) {
            out.push(',');
        }
        out.push(c);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn thousands_groups_digits_by_three() {
        assert_eq!(thousands(0), "0");
        assert_eq!(thousands(999), "999");
        assert_eq!(thousands(1_000), "1,000");
        assert_eq!(thousands(100_008), "100,008");
        assert_eq!(thousands(1_234_567), "1,234,567");
    }
}
