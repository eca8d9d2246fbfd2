//! What `--print-config` shows of secrets: nothing. The ClickHouse password, every
//! notification header value (they carry tokens) and the password of any URL's
//! `user:password@` are replaced by [`REDACTED`]; whether a secret is set stays visible.

use super::CollectorConfig;

/// What a secret is replaced by.
pub const REDACTED: &str = "**REDACTED**";

impl CollectorConfig {
    /// A copy with every secret replaced by [`REDACTED`] (empty values stay empty).
    pub fn redacted(&self) -> CollectorConfig {
        let mut config = self.clone();
        let ch = &mut config.clickhouse;
        if !ch.password.is_empty() {
            ch.password = REDACTED.to_string();
        }
        ch.url = redact_url(&ch.url);
        let notify = &mut config.notify;
        for (url, headers) in notify
            .alertmanager
            .iter_mut()
            .map(|r| (&mut r.url, &mut r.headers))
            .chain(
                notify
                    .webhook
                    .iter_mut()
                    .map(|r| (&mut r.url, &mut r.headers)),
            )
        {
            *url = redact_url(url);
            for value in headers.values_mut() {
                *value = REDACTED.to_string();
            }
        }
        config
    }
}

/// `scheme://userinfo@rest` split as (scheme, userinfo, rest), when the URL has a userinfo
/// (an `@` before the path, query or fragment).
fn split_userinfo(url: &str) -> Option<(&str, &str, &str)> {
    let (scheme, rest) = url.split_once("://")?;
    let authority_end = rest.find(['/', '?', '#']).unwrap_or(rest.len());
    let at = rest[..authority_end].rfind('@')?;
    Some((scheme, &rest[..at], &rest[at + 1..]))
}

/// `scheme://user:password@host/…` with the password replaced; anything else unchanged.
pub(crate) fn redact_url(url: &str) -> String {
    match split_userinfo(url) {
        Some((scheme, userinfo, rest)) => match userinfo.split_once(':') {
            Some((user, _password)) => format!("{scheme}://{user}:{REDACTED}@{rest}"),
            None => url.to_string(),
        },
        None => url.to_string(),
    }
}

/// `url` without the user and password it may carry (`http://user:secret@host` →
/// `http://host`), for what is served without authentication (readiness reasons).
pub(crate) fn without_credentials(url: &str) -> String {
    match split_userinfo(url) {
        Some((scheme, _, rest)) => format!("{scheme}://{rest}"),
        None => url.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use super::*;
    use crate::config::{AlertmanagerReceiver, WebhookReceiver};

    #[test]
    fn every_secret_is_replaced_and_nothing_else() {
        let mut config = CollectorConfig::default();
        config.clickhouse.url = "https://ingest:p4ss@ch.example:8443/?database=x".into();
        config.clickhouse.user = "ingest".into();
        config.clickhouse.password = "s3cret".into();
        config.notify.alertmanager.push(AlertmanagerReceiver {
            url: "http://am:9093".into(),
            headers: BTreeMap::from([("Authorization".into(), "Basic dXNlcjpwYXNz".into())]),
            ..AlertmanagerReceiver::default()
        });
        config.notify.webhook.push(WebhookReceiver {
            url: "https://bot:t0ken@hooks.example/portolan".into(),
            ..WebhookReceiver::default()
        });
        let shown = config.redacted();
        let text = portolan_config::to_toml(&shown).expect("a configuration renders");
        for secret in ["p4ss", "s3cret", "dXNlcjpwYXNz", "t0ken"] {
            assert!(!text.contains(secret), "{secret} shown:\n{text}");
        }
        assert_eq!(shown.clickhouse.password, REDACTED);
        assert_eq!(
            shown.clickhouse.url,
            "https://ingest:**REDACTED**@ch.example:8443/?database=x"
        );
        assert_eq!(shown.clickhouse.user, "ingest");
        assert_eq!(shown.notify.alertmanager[0].url, "http://am:9093");
        assert_eq!(
            shown.notify.alertmanager[0].headers["Authorization"],
            REDACTED
        );
        assert_eq!(
            shown.notify.webhook[0].url,
            "https://bot:**REDACTED**@hooks.example/portolan"
        );
        // Unset secrets stay visibly unset.
        assert_eq!(
            CollectorConfig::default().redacted().clickhouse.password,
            ""
        );
    }

    #[test]
    fn urls_without_a_password_are_unchanged() {
        for url in [
            "http://ch:8123",
            "https://user@ch/",
            "ch:8123",
            "http://a/b@c",
        ] {
            assert_eq!(redact_url(url), url);
        }
    }
}
