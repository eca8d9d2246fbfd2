//! The real collector binary's log lines carry terminal colour codes only on a terminal:
//! written to a file or a pipe (systemd, `2>collector.log`) they are plain text, and
//! `NO_COLOR` turns colour off on a terminal too.
//!
//! The collector logs before it reads its configuration when trace export is configured
//! ("exporting traces over OTLP/gRPC"), so a missing config file makes it log one line and
//! exit 64 without starting anything else.

use std::process::{Command, Output};

const ESCAPE: &str = "\x1b[";

fn collector() -> Command {
    with_env(Command::new(env!("CARGO_BIN_EXE_portolan-collector")))
}

/// The environment of every run: colour allowed, trace export configured.
fn with_env(mut cmd: Command) -> Command {
    cmd.env_remove("NO_COLOR")
        .env_remove("PORTOLAN_LOG")
        .env("TERM", "xterm-256color")
        // Nothing listens on the discard port: the exporter connects lazily, on its
        // first batch, and there is none.
        .env("OTEL_EXPORTER_OTLP_ENDPOINT", "http://127.0.0.1:9");
    cmd
}

fn text(output: &Output) -> String {
    format!(
        "stdout: {}\nstderr: {}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    )
}

#[test]
fn logs_to_a_pipe_carry_no_colour_codes() -> Result<(), Box<dyn std::error::Error>> {
    let output = collector()
        .args(["--config", "/nonexistent/portolan-collector.toml"])
        .output()?;
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        stderr.contains("exporting traces over OTLP/gRPC"),
        "the collector logged nothing: {}",
        text(&output)
    );
    assert_eq!(output.status.code(), Some(64), "{}", text(&output));
    assert!(
        !stderr.contains(ESCAPE),
        "colour codes in a pipe: {stderr:?}"
    );
    Ok(())
}

/// Runs the collector under a pseudo-terminal (util-linux `script`), so that its stderr
/// is a terminal; returns what the terminal showed.
fn on_a_terminal(no_color: Option<&str>) -> Result<String, Box<dyn std::error::Error>> {
    let binary = env!("CARGO_BIN_EXE_portolan-collector");
    let mut cmd = with_env(Command::new("script"));
    if let Some(value) = no_color {
        cmd.env("NO_COLOR", value);
    }
    let output = cmd
        .args([
            "--quiet",
            "--return",
            "--command",
            &format!("{binary} --config /nonexistent/portolan-collector.toml"),
            "/dev/null",
        ])
        .output();
    let output = match output {
        Ok(o) => o,
        Err(e) => return Err(format!("cannot run util-linux `script`: {e}").into()),
    };
    let shown = String::from_utf8_lossy(&output.stdout).into_owned();
    assert!(
        shown.contains("exporting traces over OTLP/gRPC"),
        "the collector logged nothing on the terminal: {}",
        text(&output)
    );
    Ok(shown)
}

#[test]
fn logs_on_a_terminal_are_coloured_unless_no_color() -> Result<(), Box<dyn std::error::Error>> {
    let coloured = on_a_terminal(None)?;
    assert!(
        coloured.contains(ESCAPE),
        "no colour on a terminal: {coloured:?}"
    );
    let plain = on_a_terminal(Some("1"))?;
    assert!(
        !plain.contains(ESCAPE),
        "colour codes despite NO_COLOR: {plain:?}"
    );
    Ok(())
}
