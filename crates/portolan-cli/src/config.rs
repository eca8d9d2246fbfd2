//! Where the query verbs find the collector and their certificates.
//!
//! Each setting comes from, highest first: a flag (`--collector`), a `PORTOLAN_*`
//! environment variable (`PORTOLAN_COLLECTOR`), the config file, the default. The config
//! file is `--config FILE`, else `$PORTOLAN_CONFIG`, else
//! `$XDG_CONFIG_HOME/portolan/config.toml` or `~/.config/portolan/config.toml` when it
//! exists:
//!
//! ```toml
//! version = 1
//! collector = "https://collector.example.net:7443"
//! ca = "ca.pem"              # relative paths are relative to this file
//! cert = "~/.config/portolan/operator.pem"
//! key = "~/.config/portolan/operator.key"
//! server_name = ""           # empty: the collector endpoint's host
//! ```
//!
//! The environment is passed in as a map; nothing here reads the process environment.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use clap::Args;
use serde::{Deserialize, Serialize};

/// The prefix of the environment variables.
pub const ENV_PREFIX: &str = "PORTOLAN_";
/// The environment variable naming the config file.
pub const CONFIG_ENV: &str = "PORTOLAN_CONFIG";
/// The config file version this build reads.
pub const VERSION: u32 = 1;

/// The connection settings, after layering (and the shape of the config file).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Settings {
    /// Version of the file's format; must be 1.
    pub version: u32,
    /// Collector query endpoint.
    pub collector: String,
    /// CA certificates the collector's certificate must chain to.
    pub ca: PathBuf,
    /// Operator certificate.
    pub cert: PathBuf,
    /// Key of the operator certificate.
    pub key: PathBuf,
    /// Name to verify in the collector's certificate; empty: the endpoint's host.
    pub server_name: String,
}

impl Default for Settings {
    fn default() -> Self {
        Settings {
            version: VERSION,
            collector: "https://localhost:7443".into(),
            ca: "ca.pem".into(),
            cert: "operator.pem".into(),
            key: "operator.key".into(),
            server_name: String::new(),
        }
    }
}

/// The connection flags (global: before or after the verb).
#[derive(Debug, Clone, Default, Args)]
#[command(next_help_heading = "Connection (flag > PORTOLAN_* environment > config file > default)")]
pub struct ConnectionFlags {
    /// Config file [env: PORTOLAN_CONFIG] [default: ~/.config/portolan/config.toml, if it exists]
    #[arg(long, value_name = "FILE", global = true)]
    pub config: Option<PathBuf>,
    /// Collector query endpoint [env: PORTOLAN_COLLECTOR] [default: https://localhost:7443]
    #[arg(long, value_name = "URL", global = true)]
    pub collector: Option<String>,
    /// CA certificates the collector's certificate must chain to [env: PORTOLAN_CA] [default: ca.pem]
    #[arg(long, value_name = "FILE", global = true)]
    pub ca: Option<PathBuf>,
    /// Operator certificate (`portolan pki issue-operator`) [env: PORTOLAN_CERT] [default: operator.pem]
    #[arg(long, value_name = "FILE", global = true)]
    pub cert: Option<PathBuf>,
    /// Key of the operator certificate [env: PORTOLAN_KEY] [default: operator.key]
    #[arg(long, value_name = "FILE", global = true)]
    pub key: Option<PathBuf>,
    /// Name to verify in the collector's certificate [env: PORTOLAN_SERVER_NAME] [default: the endpoint's host]
    #[arg(long, value_name = "NAME", global = true)]
    pub server_name: Option<String>,
}

/// Settings that cannot be loaded. Every message names the file or variable at fault
/// and fits on one line.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ConfigError {
    /// The config file cannot be read.
    #[error("cannot read config file {path}: {source} ({hint})")]
    Read {
        /// The file.
        path: String,
        /// Why.
        source: std::io::Error,
        /// What to do.
        hint: &'static str,
    },
    /// The config file is not valid TOML or has a wrong key or value.
    #[error(
        "config file {path}{at}: {message} (fix the file, or name another with --config or PORTOLAN_CONFIG)"
    )]
    File {
        /// The file.
        path: String,
        /// `, line 3, key `ca`` (empty when unknown).
        at: String,
        /// What is wrong.
        message: String,
    },
}

/// Where the config file is, and whether it must exist.
fn config_path(flags: &ConnectionFlags, env: &BTreeMap<String, String>) -> Option<(PathBuf, bool)> {
    if let Some(path) = &flags.config {
        return Some((path.clone(), true));
    }
    if let Some(path) = env.get(CONFIG_ENV).filter(|p| !p.is_empty()) {
        return Some((PathBuf::from(path), true));
    }
    let base = match (env.get("XDG_CONFIG_HOME"), env.get("HOME")) {
        (Some(xdg), _) if Path::new(xdg).is_absolute() => PathBuf::from(xdg),
        (_, Some(home)) if !home.is_empty() => Path::new(home).join(".config"),
        _ => return None,
    };
    Some((base.join("portolan").join("config.toml"), false))
}

/// Loads the settings: `flags` over `env` over the config file over the defaults.
pub fn load(
    flags: &ConnectionFlags,
    env: &BTreeMap<String, String>,
) -> Result<Settings, ConfigError> {
    let file = match config_path(flags, env) {
        Some((path, required)) => read_file(&path, required)?.map(|text| (path, text)),
        None => None,
    };
    load_from(
        flags,
        env,
        file.as_ref().map(|(p, t)| (p.as_path(), t.as_str())),
    )
}

fn read_file(path: &Path, required: bool) -> Result<Option<String>, ConfigError> {
    match std::fs::read_to_string(path) {
        Ok(text) => Ok(Some(text)),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound && !required => Ok(None),
        Err(source) => Err(ConfigError::Read {
            path: path.display().to_string(),
            source,
            hint: "create it, or name another with --config or PORTOLAN_CONFIG",
        }),
    }
}

/// Loads the settings with the config file's text given (`path` only names it and
/// anchors its relative paths). No I/O.
///
/// Every setting is a string, so the layering is done here rather than through
/// `portolan_config::load` (which reads the file itself and reports its errors on several
/// lines); the environment names follow the same rule: `PORTOLAN_` and the key in upper
/// case.
pub fn load_from(
    flags: &ConnectionFlags,
    env: &BTreeMap<String, String>,
    file: Option<(&Path, &str)>,
) -> Result<Settings, ConfigError> {
    let mut settings = Settings::default();
    if let Some((path, text)) = file {
        let (from_file, keys) = parse_file(path, text)?;
        settings = from_file;
        // Paths written in the file are relative to the file, `~/` to the home directory.
        let dir = path.parent().unwrap_or(Path::new(""));
        let home = env.get("HOME").map(PathBuf::from);
        for (key, value) in [
            ("ca", &mut settings.ca),
            ("cert", &mut settings.cert),
            ("key", &mut settings.key),
        ] {
            if keys.contains(key) {
                *value = anchor(value, dir, home.as_deref());
            }
        }
    }
    // An empty variable counts as unset.
    let var = |key: &str| {
        env.get(&format!("{ENV_PREFIX}{}", key.to_ascii_uppercase()))
            .filter(|v| !v.is_empty())
    };
    if let Some(v) = flags
        .collector
        .clone()
        .or_else(|| var("collector").cloned())
    {
        settings.collector = v;
    }
    if let Some(v) = flags.ca.clone().or_else(|| var("ca").map(PathBuf::from)) {
        settings.ca = v;
    }
    if let Some(v) = flags
        .cert
        .clone()
        .or_else(|| var("cert").map(PathBuf::from))
    {
        settings.cert = v;
    }
    if let Some(v) = flags.key.clone().or_else(|| var("key").map(PathBuf::from)) {
        settings.key = v;
    }
    if let Some(v) = flags
        .server_name
        .clone()
        .or_else(|| var("server_name").cloned())
    {
        settings.server_name = v;
    }
    Ok(settings)
}

/// A path from the config file: `~/x` under `home`, a relative path under `dir`.
fn anchor(path: &Path, dir: &Path, home: Option<&Path>) -> PathBuf {
    match (path.strip_prefix("~"), home) {
        (Ok(rest), Some(home)) => home.join(rest),
        _ if path.is_relative() => dir.join(path),
        _ => path.to_path_buf(),
    }
}

/// Parses and checks the file's text: TOML, known keys of the right types, `version = 1`.
/// Returns the settings (defaults for keys it lacks) and the keys it sets.
fn parse_file(
    path: &Path,
    text: &str,
) -> Result<(Settings, std::collections::BTreeSet<String>), ConfigError> {
    let display = path.display().to_string();
    let invalid = |at: String, message: String| ConfigError::File {
        path: display.clone(),
        at,
        message,
    };
    let table: toml::Table = toml::from_str(text).map_err(|e: toml::de::Error| {
        let at = e
            .span()
            .map(|span| location(text, span.start))
            .unwrap_or_default();
        invalid(at, one_line(e.message()))
    })?;
    let settings: Settings = toml::from_str(text).map_err(|e: toml::de::Error| {
        let at = e
            .span()
            .map(|span| location(text, span.start))
            .unwrap_or_default();
        invalid(at, one_line(e.message()))
    })?;
    if !table.contains_key("version") {
        return Err(invalid(
            String::new(),
            format!("no `version` key (add `version = {VERSION}` at the top)"),
        ));
    }
    if settings.version != VERSION {
        let at = text
            .find("version")
            .map(|offset| location(text, offset))
            .unwrap_or_default();
        return Err(invalid(
            at,
            format!(
                "version {} is not one this portolan reads (it reads version {VERSION}; upgrade portolan or rewrite the file)",
                settings.version
            ),
        ));
    }
    Ok((settings, table.keys().cloned().collect()))
}

/// `, line N, key `k`` for a byte offset into the file: the key is the one assigned on
/// that line, when there is one.
fn location(text: &str, offset: usize) -> String {
    let offset = offset.min(text.len());
    let before = text.get(..offset).unwrap_or(text);
    let line_number = before.matches('\n').count() + 1;
    let start = before.rfind('\n').map_or(0, |i| i + 1);
    let line = text
        .get(start..)
        .and_then(|rest| rest.lines().next())
        .unwrap_or("");
    let key = line
        .split_once('=')
        .map(|(k, _)| k.trim().trim_matches(['"', '\'']))
        .filter(|k| !k.is_empty() && !k.starts_with(['[', '#']));
    match key {
        Some(key) => format!(", line {line_number}, key `{key}`"),
        None => format!(", line {line_number}"),
    }
}

/// A possibly multi-line parser message on one line.
fn one_line(message: &str) -> String {
    message
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty())
        .collect::<Vec<_>>()
        .join("; ")
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

    fn file(text: &str) -> Option<(&Path, &str)> {
        Some((Path::new("/etc/portolan/config.toml"), text))
    }

    #[test]
    fn defaults_without_file_env_or_flags() -> Result<(), ConfigError> {
        let s = load_from(&ConnectionFlags::default(), &env(&[]), None)?;
        assert_eq!(s, Settings::default());
        Ok(())
    }

    #[test]
    fn flag_beats_env_beats_file_beats_default() -> Result<(), ConfigError> {
        let text = "version = 1\ncollector = \"https://file:1\"\nca = \"ca-file.pem\"\ncert = \"/abs/op.pem\"\n";
        let vars = env(&[
            ("PORTOLAN_COLLECTOR", "https://env:2"),
            ("PORTOLAN_CA", "ca-env.pem"),
        ]);
        let flags = ConnectionFlags {
            collector: Some("https://flag:3".into()),
            ..ConnectionFlags::default()
        };
        let s = load_from(&flags, &vars, file(text))?;
        assert_eq!(s.collector, "https://flag:3");
        assert_eq!(s.ca, PathBuf::from("ca-env.pem"));
        assert_eq!(s.cert, PathBuf::from("/abs/op.pem"));
        assert_eq!(s.key, PathBuf::from("operator.key"));
        let s = load_from(&ConnectionFlags::default(), &vars, file(text))?;
        assert_eq!(s.collector, "https://env:2");
        let s = load_from(&ConnectionFlags::default(), &env(&[]), file(text))?;
        assert_eq!(s.collector, "https://file:1");
        Ok(())
    }

    #[test]
    fn file_paths_are_relative_to_the_file_or_home() -> Result<(), ConfigError> {
        let text = "version = 1\nca = \"ca.pem\"\ncert = \"~/op.pem\"\n";
        let s = load_from(
            &ConnectionFlags::default(),
            &env(&[("HOME", "/home/ana")]),
            file(text),
        )?;
        assert_eq!(s.ca, PathBuf::from("/etc/portolan/ca.pem"));
        assert_eq!(s.cert, PathBuf::from("/home/ana/op.pem"));
        // Defaults and flags stay relative to the working directory.
        assert_eq!(s.key, PathBuf::from("operator.key"));
        Ok(())
    }

    #[test]
    fn the_config_variable_and_version_are_not_settings() -> Result<(), ConfigError> {
        let vars = env(&[("PORTOLAN_CONFIG", "/x.toml"), ("PORTOLAN_VERSION", "7")]);
        let s = load_from(&ConnectionFlags::default(), &vars, None)?;
        assert_eq!(s, Settings::default());
        Ok(())
    }

    fn error(text: &str) -> String {
        match load_from(&ConnectionFlags::default(), &env(&[]), file(text)) {
            Ok(s) => panic!("{text:?} loaded: {s:?}"),
            Err(e) => e.to_string(),
        }
    }

    #[test]
    fn an_unknown_key_is_named_with_its_line() {
        let e = error("version = 1\n\ncolector = \"https://x\"\n");
        assert!(
            e.starts_with(
                "config file /etc/portolan/config.toml, line 3, key `colector`: unknown field `colector`"
            ),
            "{e}"
        );
        assert!(!e.contains('\n'), "{e}");
    }

    #[test]
    fn a_wrong_type_is_named_with_its_line_and_key() {
        let e = error("version = 1\nca = 5\n");
        assert!(
            e.starts_with("config file /etc/portolan/config.toml, line 2, key `ca`: invalid type"),
            "{e}"
        );
    }

    #[test]
    fn broken_toml_is_one_line() {
        let e = error("version = 1\ncollector = https://x\n");
        assert!(
            e.starts_with("config file /etc/portolan/config.toml, line 2, key `collector`:"),
            "{e}"
        );
        assert!(!e.contains('\n'), "{e}");
    }

    #[test]
    fn the_version_is_required_and_checked() {
        let e = error("collector = \"https://x\"\n");
        assert!(e.contains("no `version` key"), "{e}");
        let e = error("version = 2\n");
        assert!(
            e.starts_with(
                "config file /etc/portolan/config.toml, line 1, key `version`: version 2"
            ),
            "{e}"
        );
    }

    #[test]
    fn where_the_file_is() {
        let flags = ConnectionFlags {
            config: Some("/flag.toml".into()),
            ..ConnectionFlags::default()
        };
        let none = ConnectionFlags::default();
        assert_eq!(
            config_path(&flags, &env(&[("PORTOLAN_CONFIG", "/env.toml")])),
            Some((PathBuf::from("/flag.toml"), true))
        );
        assert_eq!(
            config_path(&none, &env(&[("PORTOLAN_CONFIG", "/env.toml")])),
            Some((PathBuf::from("/env.toml"), true))
        );
        assert_eq!(
            config_path(&none, &env(&[("HOME", "/home/ana")])),
            Some((
                PathBuf::from("/home/ana/.config/portolan/config.toml"),
                false
            ))
        );
        assert_eq!(
            config_path(
                &none,
                &env(&[("HOME", "/home/ana"), ("XDG_CONFIG_HOME", "/xdg")])
            ),
            Some((PathBuf::from("/xdg/portolan/config.toml"), false))
        );
        assert_eq!(config_path(&none, &env(&[])), None);
    }
}
