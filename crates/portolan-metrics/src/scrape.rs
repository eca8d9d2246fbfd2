//! One scrape of `/metrics`: the format the scraper asked for ([`Format::negotiate`]) and
//! the families written in it by `prometheus-client`'s encoders ([`Exposition`]).

use std::fmt;

use prometheus_client::collector::Collector;
use prometheus_client::encoding::{DescriptorEncoder, prometheus_text, text};
use prometheus_client::registry::Registry;

/// A format of the exposition.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Format {
    /// The Prometheus text format 0.0.4 (`text/plain`), for every scraper.
    Text,
    /// OpenMetrics 1.0.0 text (`application/openmetrics-text`, ends with `# EOF`).
    OpenMetrics,
}

impl Format {
    /// The `Content-Type` of a response in this format.
    pub fn content_type(self) -> &'static str {
        match self {
            Format::Text => prometheus_text::CONTENT_TYPE,
            Format::OpenMetrics => "application/openmetrics-text; version=1.0.0; charset=utf-8",
        }
    }

    /// The format an `Accept` header asks for: OpenMetrics when it accepts
    /// `application/openmetrics-text` (version 1.0.0 or unversioned) at least as much as
    /// the text format, the text format otherwise (no header, `text/plain`, `*/*`, a
    /// header that cannot be read).
    pub fn negotiate(accept: Option<&str>) -> Format {
        let (mut openmetrics, mut plain) = (0.0_f64, 0.0_f64);
        for range in accept.unwrap_or_default().split(',') {
            let mut parts = range.split(';').map(str::trim);
            let media = parts.next().unwrap_or_default().to_ascii_lowercase();
            let (mut q, mut version) = (1.0_f64, None);
            for param in parts {
                match param.split_once('=').map(|(k, v)| (k.trim(), v.trim())) {
                    Some(("q", v)) => q = v.parse().unwrap_or(0.0),
                    Some(("version", v)) => version = Some(v.to_string()),
                    _ => {}
                }
            }
            match media.as_str() {
                "application/openmetrics-text"
                    if version.as_deref().is_none_or(|v| v == "1.0.0") =>
                {
                    openmetrics = openmetrics.max(q)
                }
                "text/plain" | "text/*" | "*/*" => plain = plain.max(q),
                _ => {}
            }
        }
        if openmetrics > 0.0 && openmetrics >= plain {
            Format::OpenMetrics
        } else {
            Format::Text
        }
    }
}

/// What writes the families of a scrape.
type Encode = dyn Fn(&mut DescriptorEncoder<'_>) -> fmt::Result + Send + Sync;

/// The families of a process, encoded at each scrape in the format asked for.
#[derive(Debug)]
pub struct Exposition {
    registry: Registry,
}

struct Families(Box<Encode>);

impl fmt::Debug for Families {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Families").finish_non_exhaustive()
    }
}

impl Collector for Families {
    fn encode(&self, mut encoder: DescriptorEncoder<'_>) -> fmt::Result {
        (self.0)(&mut encoder)
    }
}

impl Exposition {
    /// The exposition of the families `encode` writes (read at each scrape, so that
    /// figures computed then are current).
    pub fn new(
        encode: impl Fn(&mut DescriptorEncoder<'_>) -> fmt::Result + Send + Sync + 'static,
    ) -> Exposition {
        let mut registry = Registry::default();
        registry.register_collector(Box::new(Families(Box::new(encode))));
        Exposition { registry }
    }

    /// One scrape in `format`.
    pub fn render(&self, format: Format) -> String {
        let mut out = String::new();
        let written = match format {
            Format::Text => prometheus_text::encode(&mut out, &self.registry),
            Format::OpenMetrics => text::encode(&mut out, &self.registry),
        };
        // Writing into a String does not fail; a family that refused to encode leaves
        // the scrape cut short, which Prometheus reports as a parse error.
        if written.is_err() {
            tracing::error!("metrics: a family could not be encoded; the scrape is cut short");
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn negotiates_openmetrics_only_when_asked() {
        // What Prometheus 2 and 3 send.
        let prometheus = "application/openmetrics-text;version=1.0.0;q=0.5,\
            application/openmetrics-text;version=0.0.1;q=0.4,text/plain;version=0.0.4;q=0.3,*/*;q=0.1";
        assert_eq!(Format::negotiate(Some(prometheus)), Format::OpenMetrics);
        assert_eq!(
            Format::negotiate(Some("application/openmetrics-text")),
            Format::OpenMetrics
        );
        assert_eq!(Format::negotiate(None), Format::Text);
        assert_eq!(Format::negotiate(Some("*/*")), Format::Text);
        assert_eq!(
            Format::negotiate(Some("text/plain;version=0.0.4")),
            Format::Text
        );
        assert_eq!(
            Format::negotiate(Some("application/openmetrics-text;version=0.0.1")),
            Format::Text
        );
        assert_eq!(
            Format::negotiate(Some("application/openmetrics-text;q=0.2,text/plain")),
            Format::Text
        );
        assert_eq!(
            Format::negotiate(Some("application/openmetrics-text;q=0")),
            Format::Text
        );
    }
}
