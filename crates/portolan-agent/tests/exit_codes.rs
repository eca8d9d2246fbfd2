//! The real agent binary's exit status follows the convention of the three binaries
//! (`portolan_config::exit`): 64 for a bad configuration or unusable TLS files.

use std::process::{Command, Output};

fn agent() -> Command {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_portolan-agent"));
    cmd.env("PORTOLAN_LOG", "warn")
        .env_remove("PORTOLAN_CONFIG")
        .env_remove("OTEL_EXPORTER_OTLP_ENDPOINT");
    cmd
}

fn shown(output: &Output) -> String {
    format!(
        "status {:?}\nstderr: {}",
        output.status.code(),
        String::from_utf8_lossy(&output.stderr)
    )
}

#[test]
fn a_bad_configuration_exits_64() -> Result<(), Box<dyn std::error::Error>> {
    let missing = agent()
        .args(["run", "--config", "/nonexistent/portolan-agent.toml"])
        .output()?;
    assert_eq!(missing.status.code(), Some(64), "{}", shown(&missing));
    let bad_flag = agent().args(["run", "--no-such-flag"]).output()?;
    assert_eq!(bad_flag.status.code(), Some(64), "{}", shown(&bad_flag));
    // A configuration that loads, whose certificate files do not exist.
    let dir = tempfile::tempdir()?;
    let output = agent()
        .args(["run", "--collector", "https://127.0.0.1:9"])
        .env("PORTOLAN_HOST_ID", "exit-codes-test")
        .env("PORTOLAN_TLS_CA", dir.path().join("ca.pem"))
        .env("PORTOLAN_TLS_CERT", dir.path().join("agent.pem"))
        .env("PORTOLAN_TLS_KEY", dir.path().join("agent.key"))
        .env("PORTOLAN_SPOOL_DIR", dir.path().join("spool"))
        .output()?;
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(stderr.contains("tls"), "{}", shown(&output));
    assert_eq!(output.status.code(), Some(64), "{}", shown(&output));
    Ok(())
}
