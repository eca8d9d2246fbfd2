//! The `portolan` binary where no collector is needed: completions, config file errors,
//! usage errors and their exit codes. The environment is cleared for every run, so a
//! config file or `PORTOLAN_*` variable of the person running the tests cannot leak in.

use std::path::Path;
use std::process::{Command, Output};

/// Runs `portolan ARGS` with only the variables given.
fn portolan(args: &[&str], env: &[(&str, &str)]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_portolan"))
        .args(args)
        .env_clear()
        .envs(env.iter().copied())
        .output()
        .expect("run portolan")
}

fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

fn stdout(o: &Output) -> String {
    String::from_utf8_lossy(&o.stdout).into_owned()
}

#[test]
fn completions_for_bash_zsh_and_fish() {
    for (shell, marker) in [
        ("bash", "complete -F _portolan"),
        ("zsh", "#compdef portolan"),
        ("fish", "complete -c portolan"),
    ] {
        let o = portolan(&["completions", shell], &[]);
        assert!(o.status.success(), "{shell}: {}", stderr(&o));
        let script = stdout(&o);
        assert!(script.contains(marker), "{shell}: no `{marker}`");
        assert!(script.contains("who-listens"), "{shell}: verbs missing");
    }
    let o = portolan(&["completions", "tcsh"], &[]);
    assert_eq!(o.status.code(), Some(64), "{}", stderr(&o));
}

fn write_config(dir: &Path, text: &str) -> String {
    let path = dir.join("config.toml");
    std::fs::write(&path, text).expect("write config");
    path.to_str().expect("utf-8 temp path").to_string()
}

#[test]
fn a_malformed_config_file_is_one_line_naming_file_line_and_key() {
    let tmp = tempfile::tempdir().expect("temp dir");
    let path = write_config(
        tmp.path(),
        "version = 1\ncollector = \"https://c:7443\"\ncerts = \"op.pem\"\n",
    );
    for (args, env) in [
        (vec!["hosts"], vec![("PORTOLAN_CONFIG", path.as_str())]),
        (vec!["hosts", "--config", path.as_str()], vec![]),
    ] {
        let o = portolan(&args, &env);
        assert_eq!(o.status.code(), Some(64), "{}", stderr(&o));
        let err = stderr(&o);
        assert_eq!(err.lines().count(), 1, "{err}");
        assert!(
            err.starts_with(&format!(
                "error: config file {path}, line 3, key `certs`: unknown field `certs`"
            )),
            "{err}"
        );
    }
}

#[test]
fn a_missing_named_config_file_is_a_usage_error() {
    let o = portolan(
        &["sockets"],
        &[("PORTOLAN_CONFIG", "/nonexistent/portolan.toml")],
    );
    assert_eq!(o.status.code(), Some(64), "{}", stderr(&o));
    assert!(
        stderr(&o).starts_with("error: cannot read config file /nonexistent/portolan.toml"),
        "{}",
        stderr(&o)
    );
}

#[test]
fn a_default_config_file_that_is_absent_is_fine_and_paths_come_from_it() {
    let tmp = tempfile::tempdir().expect("temp dir");
    let home = tmp.path().to_str().expect("utf-8 temp path");
    // No file: the defaults (ca.pem in the working directory) are used and missing.
    let o = portolan(&["hosts"], &[("HOME", home)]);
    assert_eq!(o.status.code(), Some(64), "{}", stderr(&o));
    let err = stderr(&o);
    assert!(
        !err.contains("cannot read config file") && err.contains("ca.pem"),
        "{err}"
    );
    // A file under ~/.config: its relative `ca` is found beside it.
    let dir = tmp.path().join(".config/portolan");
    std::fs::create_dir_all(&dir).expect("config dir");
    write_config(&dir, "version = 1\nca = \"my-ca.pem\"\n");
    let o = portolan(&["hosts"], &[("HOME", home)]);
    assert_eq!(o.status.code(), Some(64), "{}", stderr(&o));
    assert!(
        stderr(&o).contains(&dir.join("my-ca.pem").display().to_string()),
        "{}",
        stderr(&o)
    );
}

#[test]
fn bad_flag_values_are_usage_errors() {
    for args in [
        &["sockets", "-o", "yaml"][..],
        &["sockets", "--color", "sometimes"][..],
    ] {
        let o = portolan(args, &[]);
        assert_eq!(o.status.code(), Some(64), "{args:?}: {}", stderr(&o));
    }
}

#[test]
fn a_closed_collector_port_is_unavailable() {
    // Certificates are needed before connecting: make a development PKI.
    let tmp = tempfile::tempdir().expect("temp dir");
    let d = tmp.path().to_str().expect("utf-8 temp path");
    for args in [
        &["pki", "init", "--dir", d][..],
        &[
            "pki",
            "issue-operator",
            "--name",
            "ana",
            "--role",
            "reader",
            "--dir",
            d,
        ][..],
    ] {
        let o = portolan(args, &[]);
        assert!(o.status.success(), "{args:?}: {}", stderr(&o));
    }
    let ca = format!("{d}/ca.pem");
    let cert = format!("{d}/operator-ana.pem");
    let key = format!("{d}/operator-ana.key");
    // Port 9 (discard) on loopback: nothing listens there in a test sandbox.
    let o = portolan(
        &["hosts", "--collector", "https://127.0.0.1:9"],
        &[
            ("PORTOLAN_CA", ca.as_str()),
            ("PORTOLAN_CERT", cert.as_str()),
            ("PORTOLAN_KEY", key.as_str()),
        ],
    );
    assert_eq!(o.status.code(), Some(69), "{}", stderr(&o));
}

#[test]
fn mistakes_in_the_new_verbs_are_usage_errors_found_before_connecting() {
    let tmp = tempfile::tempdir().expect("temp dir");
    let home = tmp.path().to_str().expect("utf-8 temp path");
    // (arguments, what stderr must say); none of them gets as far as the certificates.
    let cases: &[(&[&str], &str)] = &[
        (&["at", "yesterday", "db-1"], "`yesterday` is not a time"),
        (&["at", "2099-01-01T00:00:00Z", "db-1"], "is in the future"),
        (
            &["at", "2h", "db-1", "--flows", "-o", "csv"],
            "portolan flows --host db-1 --at 2h -o csv",
        ),
        (
            &["sockets", "--at", "2099-01-01T00:00:00Z"],
            "in the future",
        ),
        (
            &["flows", "--at", "tomorrow"],
            "--at: `tomorrow` is not a time",
        ),
        (
            &["ack", "a41f", "--reason", "x", "--until", "2h"],
            "--until: `2h` is not a time",
        ),
        (
            &[
                "ack",
                "a41f",
                "--reason",
                "x",
                "--until",
                "2020-01-01T00:00:00Z",
            ],
            "is not in the future",
        ),
        (&["ack", "a41f", "--reason", "  "], "--reason is empty"),
        (
            &["ack", "a41f", "--reason", "x", "--for", "soon"],
            "--for: `soon` is not a duration",
        ),
        (
            &["history", "db-1", "--from", "1h", "--to", "2h"],
            "is not after the start",
        ),
        (&["history", "db-1", "--since", "a while"], "--since"),
        (
            &["rules", "test", "/nonexistent/rules.yaml", "--since", "1h"],
            "cannot read rule file /nonexistent/rules.yaml",
        ),
        (
            &["rules", "test", "rules.yaml", "--since", "soon"],
            "--since: `soon` is not a duration",
        ),
        (&["watch", "host", "db-1", "--poll", "2m"], "over 60s"),
    ];
    for (args, says) in cases {
        let o = portolan(args, &[("HOME", home)]);
        assert_eq!(o.status.code(), Some(64), "{args:?}: {}", stderr(&o));
        let err = stderr(&o);
        assert!(err.contains(says), "{args:?}: want `{says}` in: {err}");
        assert_eq!(err.lines().count(), 1, "{args:?}: one line: {err}");
    }
    // Conflicting or missing flags are clap's usage errors.
    for args in [
        &["ack", "a41f"][..],
        &[
            "ack",
            "a41f",
            "--reason",
            "x",
            "--for",
            "4h",
            "--until",
            "2099-01-01T00:00:00Z",
        ][..],
        &["history", "db-1", "--since", "1d", "--from", "2h"][..],
        &["findings", "--acked", "--unacked"][..],
        &["sockets", "--limit", "0"][..],
        &["rules", "test", "rules.yaml"][..],
        &["watch"][..],
    ] {
        let o = portolan(args, &[("HOME", home)]);
        assert_eq!(o.status.code(), Some(64), "{args:?}: {}", stderr(&o));
    }
}

#[test]
fn rules_check_still_runs_without_a_collector() {
    let tmp = tempfile::tempdir().expect("temp dir");
    let file = tmp.path().join("rules.yaml");
    std::fs::write(
        &file,
        "version: 1\nrules:\n  - id: telnet\n    kind: listener\n    severity: high\n    sockets: {ports: [23]}\n",
    )
    .expect("write rules");
    let path = file.to_str().expect("utf-8 temp path");
    let o = portolan(&["rules", "check", path], &[]);
    assert!(o.status.success(), "{}", stderr(&o));
    assert!(stdout(&o).contains("1 rules ok"), "{}", stdout(&o));
}
