//! Snapshot tests of the CLI's help: a change to any verb's help shows up as a diff of
//! `tests/snapshots/*.txt`, so it is deliberate. Run with `PORTOLAN_BLESS=1` to accept.

use std::path::Path;
use std::process::Command;

const VERBS: &[&[&str]] = &[
    &[],
    &["pki"],
    &["pki", "init"],
    &["pki", "issue-agent"],
    &["pki", "issue-collector"],
    &["pki", "issue-operator"],
    &["pki", "crl"],
    &["demo"],
    &["hosts"],
    &["host"],
    &["sockets"],
    &["who-listens"],
    &["flows"],
    &["findings"],
    &["ack"],
    &["unack"],
    &["history"],
    &["at"],
    &["watch"],
    &["watch", "findings"],
    &["watch", "host"],
    &["rules"],
    &["rules", "check"],
    &["rules", "test"],
    &["completions"],
];

#[test]
fn help_matches_the_snapshots() -> Result<(), String> {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/snapshots");
    let bless = std::env::var_os("PORTOLAN_BLESS").is_some();
    let mut stale = Vec::new();
    for verb in VERBS {
        let output = Command::new(env!("CARGO_BIN_EXE_portolan"))
            .args(*verb)
            .arg("--help")
            // Defaults shown in help must not depend on the caller's environment.
            .env_clear()
            .env("COLUMNS", "100")
            .output()
            .map_err(|e| format!("cannot run portolan: {e}"))?;
        if !output.status.success() {
            return Err(format!(
                "portolan {} --help exited {}",
                verb.join(" "),
                output.status
            ));
        }
        let help = String::from_utf8_lossy(&output.stdout).into_owned();
        let name = if verb.is_empty() {
            "portolan".to_string()
        } else {
            format!("portolan-{}", verb.join("-"))
        };
        let path = dir.join(format!("{name}.txt"));
        let stored = std::fs::read_to_string(&path).unwrap_or_default();
        if help != stored {
            if bless {
                std::fs::write(&path, &help)
                    .map_err(|e| format!("cannot write {}: {e}", path.display()))?;
            } else {
                stale.push(name);
            }
        }
    }
    if stale.is_empty() {
        Ok(())
    } else {
        Err(format!(
            "the help of {} changed; check the difference and accept it with `PORTOLAN_BLESS=1 cargo test -p portolan-cli --test help`",
            stale.join(", ")
        ))
    }
}
