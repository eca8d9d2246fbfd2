//! Layered configuration for Portolan's binaries.
//!
//! Precedence, highest first: flags > `PORTOLAN_*` environment > TOML file > defaults.
//! Every layer is merged as a TOML tree before the result is deserialised once, so every
//! layer is checked by the same `deny_unknown_fields` structs. The environment is passed
//! in as a map: nothing here reads the process environment.
//!
//! Environment names are the key path in upper case joined by `_` after the prefix:
//! `[clickhouse] url` is `PORTOLAN_CLICKHOUSE_URL`. Only keys present in the defaults can
//! be set from the environment (so that `_` in key names stays unambiguous), and the
//! value is parsed as the default's type (a table or array is given as inline TOML).
//!
//! [`exit`] is the exit status convention the binaries share (64 usage or configuration,
//! 69 unavailable, 77 not allowed, 1 other).
#![forbid(unsafe_code)]

pub mod exit;

use std::collections::BTreeMap;
use std::path::Path;
use std::time::Duration;

use serde::Serialize;
use serde::de::DeserializeOwned;
use toml::{Table, Value};

/// A configuration that cannot be loaded.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ConfigError {
    /// The file could not be read.
    #[error("cannot read config file {path}: {error}")]
    Read {
        /// The file.
        path: String,
        /// Why. Part of the message, not a source: a printed chain would say it twice.
        error: std::io::Error,
    },
    /// The file is not valid TOML or does not fit the configuration.
    #[error("config file {path} is invalid: {message}")]
    File {
        /// The file.
        path: String,
        /// What is wrong, with line and column when known.
        message: String,
    },
    /// An environment variable's value does not fit the key's type.
    #[error("environment variable `{name}`: {message}")]
    Env {
        /// The variable.
        name: String,
        /// What is wrong.
        message: String,
    },
    /// The merged configuration does not fit (a flag, or a combination).
    #[error("invalid configuration: {0}")]
    Invalid(String),
}

/// Loads a configuration of type `T`.
///
/// `file` is the TOML file (optional), `env` the environment (pass
/// `std::env::vars().collect()` from `main`), `prefix` e.g. `PORTOLAN_`, `flags` a TOML
/// table of values given on the command line.
pub fn load<T>(
    file: Option<&Path>,
    env: &BTreeMap<String, String>,
    prefix: &str,
    flags: Table,
) -> Result<T, ConfigError>
where
    T: Serialize + DeserializeOwned + Default,
{
    let defaults = to_table(&T::default())?;
    let mut merged = defaults.clone();
    if let Some(path) = file {
        let display = path.display().to_string();
        let text = std::fs::read_to_string(path).map_err(|error| ConfigError::Read {
            path: display.clone(),
            error,
        })?;
        let table: Table = text
            .parse()
            .map_err(|e: toml::de::Error| ConfigError::File {
                path: display.clone(),
                message: e.to_string(),
            })?;
        // Check the file alone first so that its errors name the file.
        toml::Value::Table(table.clone())
            .try_into::<T>()
            .map_err(|e| ConfigError::File {
                path: display.clone(),
                message: e.to_string(),
            })?;
        merge(&mut merged, table);
    }
    let env_table = env_overrides(&defaults, env, prefix)?;
    merge(&mut merged, env_table);
    merge(&mut merged, flags);
    Value::Table(merged)
        .try_into::<T>()
        .map_err(|e| ConfigError::Invalid(e.to_string()))
}

/// Renders a configuration as TOML (for `--print-config`).
pub fn to_toml<T: Serialize>(config: &T) -> Result<String, ConfigError> {
    toml::to_string_pretty(config).map_err(|e| ConfigError::Invalid(e.to_string()))
}

fn to_table<T: Serialize>(value: &T) -> Result<Table, ConfigError> {
    match Value::try_from(value) {
        Ok(Value::Table(t)) => Ok(t),
        Ok(_) => Err(ConfigError::Invalid("configuration is not a table".into())),
        Err(e) => Err(ConfigError::Invalid(e.to_string())),
    }
}

/// Deep-merges `over` into `base`: tables merge key by key, anything else replaces.
pub fn merge(base: &mut Table, over: Table) {
    for (key, value) in over {
        match (base.get_mut(&key), value) {
            (Some(Value::Table(b)), Value::Table(o)) => merge(b, o),
            (_, value) => {
                base.insert(key, value);
            }
        }
    }
}

fn env_overrides(
    defaults: &Table,
    env: &BTreeMap<String, String>,
    prefix: &str,
) -> Result<Table, ConfigError> {
    let mut out = Table::new();
    let mut paths = Vec::new();
    collect_paths(defaults, &mut Vec::new(), &mut paths);
    for (path, default) in paths {
        let name = format!("{prefix}{}", path.join("_").to_uppercase());
        let Some(raw) = env.get(&name) else { continue };
        let value = parse_like(&default, raw).map_err(|message| ConfigError::Env {
            name: name.clone(),
            message,
        })?;
        insert_path(&mut out, &path, value);
    }
    Ok(out)
}

fn collect_paths(table: &Table, prefix: &mut Vec<String>, out: &mut Vec<(Vec<String>, Value)>) {
    for (key, value) in table {
        prefix.push(key.clone());
        match value {
            // An empty table is a map (labels): settable as a whole, as inline TOML.
            Value::Table(t) if !t.is_empty() => collect_paths(t, prefix, out),
            other => out.push((prefix.clone(), other.clone())),
        }
        prefix.pop();
    }
}

fn parse_like(default: &Value, raw: &str) -> Result<Value, String> {
    Ok(match default {
        Value::String(_) => Value::String(raw.to_string()),
        Value::Integer(_) => Value::Integer(
            raw.trim()
                .parse()
                .map_err(|_| format!("`{raw}` is not an integer"))?,
        ),
        Value::Float(_) => Value::Float(
            raw.trim()
                .parse()
                .map_err(|_| format!("`{raw}` is not a number"))?,
        ),
        Value::Boolean(_) => Value::Boolean(match raw.trim() {
            "true" | "1" | "yes" => true,
            "false" | "0" | "no" => false,
            _ => return Err(format!("`{raw}` is not a boolean (true or false)")),
        }),
        Value::Array(_) | Value::Table(_) | Value::Datetime(_) => {
            let doc: Table = format!("v = {raw}")
                .parse()
                .map_err(|e: toml::de::Error| format!("`{raw}` is not a TOML value: {e}"))?;
            doc.get("v")
                .cloned()
                .ok_or_else(|| format!("`{raw}` is empty"))?
        }
    })
}

fn insert_path(table: &mut Table, path: &[String], value: Value) {
    match path {
        [] => {}
        [last] => {
            table.insert(last.clone(), value);
        }
        [first, rest @ ..] => {
            let entry = table
                .entry(first.clone())
                .or_insert_with(|| Value::Table(Table::new()));
            if let Value::Table(t) = entry {
                insert_path(t, rest, value);
            }
        }
    }
}

/// Sets `path` (dotted, e.g. `clickhouse.url`) in a flags table, for flags given on the
/// command line.
pub fn set_flag(flags: &mut Table, dotted: &str, value: impl Into<Value>) {
    let path: Vec<String> = dotted.split('.').map(str::to_string).collect();
    insert_path(flags, &path, value.into());
}

/// Checks a documented example configuration against the code: it must load (so every
/// key exists), hold exactly the defaults, and show every key the defaults have (so a
/// new key cannot go undocumented). For drift tests of `deploy/config/*.toml`.
pub fn check_example<T>(path: &Path) -> Result<(), String>
where
    T: Serialize + DeserializeOwned + Default + PartialEq + std::fmt::Debug,
{
    let loaded: T =
        load(Some(path), &BTreeMap::new(), "", Table::new()).map_err(|e| e.to_string())?;
    if loaded != T::default() {
        return Err(format!(
            "{} differs from the defaults:\n{loaded:#?}",
            path.display()
        ));
    }
    let text = std::fs::read_to_string(path).map_err(|e| e.to_string())?;
    let example: Table = text.parse().map_err(|e: toml::de::Error| e.to_string())?;
    let defaults = to_table(&T::default()).map_err(|e| e.to_string())?;
    let mut missing = Vec::new();
    missing_keys(&defaults, &example, "", &mut missing);
    if missing.is_empty() {
        Ok(())
    } else {
        Err(format!(
            "{} does not show {}",
            path.display(),
            missing.join(", ")
        ))
    }
}

fn missing_keys(defaults: &Table, example: &Table, prefix: &str, out: &mut Vec<String>) {
    for (key, value) in defaults {
        let path = format!("{prefix}{key}");
        match (value, example.get(key)) {
            (_, None) => out.push(format!("`{path}`")),
            (Value::Table(d), Some(Value::Table(e))) => {
                missing_keys(d, e, &format!("{path}."), out)
            }
            _ => {}
        }
    }
}

/// Serde helpers for durations written as `"10s"`, `"5m"`, `"250ms"`.
pub mod duration {
    use super::Duration;
    use serde::{Deserialize, Deserializer, Serializer};

    /// Serialises as humantime text.
    pub fn serialize<S: Serializer>(d: &Duration, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&humantime::format_duration(*d).to_string())
    }

    /// Parses humantime text.
    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Duration, D::Error> {
        let text = String::deserialize(d)?;
        humantime::parse_duration(&text).map_err(|e| {
            serde::de::Error::custom(format!(
                "`{text}` is not a duration like \"10s\" or \"5m\": {e}"
            ))
        })
    }
}

/// Serde helpers for sizes written as `"64MiB"`, `"512KiB"`, `"1GiB"` or a plain number of
/// bytes (binary units only: a spool bound is a count of bytes on disk).
pub mod bytes {
    use serde::{Deserialize, Deserializer, Serializer};

    const UNITS: [(&str, u64); 4] = [
        ("GiB", 1 << 30),
        ("MiB", 1 << 20),
        ("KiB", 1 << 10),
        ("B", 1),
    ];

    /// The size as text: the largest unit that divides it exactly.
    pub fn format(n: u64) -> String {
        for (unit, factor) in UNITS {
            if n >= factor && n.is_multiple_of(factor) {
                return format!("{}{unit}", n / factor);
            }
        }
        format!("{n}B")
    }

    /// Parses `"64MiB"`, `"512 KiB"`, `"1GiB"`, `"4096B"` or `"4096"`.
    pub fn parse(text: &str) -> Result<u64, String> {
        let t = text.trim();
        let (number, factor) = UNITS
            .iter()
            .find_map(|(unit, factor)| t.strip_suffix(unit).map(|n| (n.trim(), *factor)))
            .unwrap_or((t, 1));
        number
            .parse::<u64>()
            .ok()
            .and_then(|n| n.checked_mul(factor))
            .ok_or_else(|| format!("`{text}` is not a size like \"64MiB\", \"512KiB\" or \"1GiB\""))
    }

    /// Serialises as text (`"64MiB"`).
    pub fn serialize<S: Serializer>(n: &u64, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&format(*n))
    }

    /// Parses a size as text or a number of bytes.
    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<u64, D::Error> {
        #[derive(Deserialize)]
        #[serde(untagged)]
        enum Size {
            Bytes(u64),
            Text(String),
        }
        match Size::deserialize(d)? {
            Size::Bytes(n) => Ok(n),
            Size::Text(t) => parse(&t).map_err(serde::de::Error::custom),
        }
    }

    #[cfg(test)]
    mod tests {
        use super::*;

        #[test]
        fn sizes_round_trip_through_text() {
            for (text, n) in [
                ("64MiB", 64 << 20),
                ("512KiB", 512 << 10),
                ("1GiB", 1 << 30),
                ("100B", 100),
                ("4096", 4096),
                (" 2 MiB ", 2 << 20),
            ] {
                assert_eq!(parse(text), Ok(n), "{text}");
                assert_eq!(parse(&format(n)), Ok(n));
            }
            assert!(parse("64MB").is_err());
            assert!(parse("lots").is_err());
            assert!(parse("99999999999999GiB").is_err());
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde::Deserialize;

    #[derive(Debug, Serialize, Deserialize, PartialEq)]
    #[serde(deny_unknown_fields, default)]
    struct Conf {
        version: u32,
        name: String,
        #[serde(with = "duration")]
        interval: Duration,
        click: Click,
    }

    #[derive(Debug, Serialize, Deserialize, PartialEq)]
    #[serde(deny_unknown_fields, default)]
    struct Click {
        url: String,
        port: u16,
        labels: BTreeMap<String, String>,
    }

    impl Default for Conf {
        fn default() -> Self {
            Conf {
                version: 1,
                name: "a".into(),
                interval: Duration::from_secs(10),
                click: Click::default(),
            }
        }
    }

    impl Default for Click {
        fn default() -> Self {
            Click {
                url: String::new(),
                port: 8123,
                labels: BTreeMap::new(),
            }
        }
    }

    fn env(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    #[test]
    fn precedence_flag_env_file_default() -> Result<(), Box<dyn std::error::Error>> {
        let dir = tempfile::tempdir()?;
        let file = dir.path().join("c.toml");
        std::fs::write(
            &file,
            "name = \"file\"\n[click]\nurl = \"http://file\"\nport = 1\n",
        )?;
        let mut flags = Table::new();
        set_flag(&mut flags, "click.port", 3);
        let c: Conf = load(
            Some(&file),
            &env(&[
                ("P_CLICK_URL", "http://env"),
                ("P_CLICK_PORT", "2"),
                ("P_INTERVAL", "30s"),
                ("P_CLICK_LABELS", "{ env = \"prod\" }"),
            ]),
            "P_",
            flags,
        )?;
        assert_eq!(c.name, "file");
        assert_eq!(c.click.url, "http://env");
        assert_eq!(c.click.port, 3);
        assert_eq!(c.interval, Duration::from_secs(30));
        assert_eq!(c.click.labels.get("env").map(String::as_str), Some("prod"));
        Ok(())
    }

    #[test]
    fn unknown_key_in_file_names_the_file() -> Result<(), Box<dyn std::error::Error>> {
        let dir = tempfile::tempdir()?;
        let file = dir.path().join("bad.toml");
        std::fs::write(&file, "nmae = \"x\"\n")?;
        let err = load::<Conf>(Some(&file), &BTreeMap::new(), "P_", Table::new())
            .expect_err("unknown key");
        let text = err.to_string();
        assert!(text.contains("bad.toml") && text.contains("nmae"), "{text}");
        Ok(())
    }

    #[test]
    fn bad_env_value_names_the_variable() {
        let err = load::<Conf>(None, &env(&[("P_CLICK_PORT", "many")]), "P_", Table::new())
            .expect_err("bad port");
        assert_eq!(
            err.to_string(),
            "environment variable `P_CLICK_PORT`: `many` is not an integer"
        );
    }

    #[test]
    fn bad_duration_is_explained() {
        let err = load::<Conf>(None, &env(&[("P_INTERVAL", "soon")]), "P_", Table::new())
            .expect_err("bad duration");
        assert!(err.to_string().contains("not a duration"), "{err}");
    }
}
