//! `[metrics]`: where the HTTP listener of `/metrics`, `/healthz` and `/readyz` binds.

/// `[metrics]`: Prometheus metrics and the health endpoints over plain HTTP.
#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct MetricsSection {
    /// `host:port` to serve `/metrics`, `/healthz` and `/readyz` on (plain HTTP, no
    /// authentication: bind it where only the scraper and the prober reach). Empty: no
    /// HTTP server.
    pub listen: String,
}

impl MetricsSection {
    /// The address to serve on, `None` when off; invalid addresses are reported by
    /// `validate()`.
    pub fn listen_addr(&self) -> Option<std::net::SocketAddr> {
        self.listen.parse().ok()
    }

    /// Adds a problem to `problems` when `listen` is set but not an address and port.
    pub fn validate(&self, problems: &mut Vec<String>) {
        if !self.listen.is_empty() && self.listen.parse::<std::net::SocketAddr>().is_err() {
            problems.push(format!(
                "`metrics.listen` is `{}`; use an address and port such as `0.0.0.0:9464`, or empty for no metrics and health endpoints",
                self.listen
            ));
        }
    }
}
