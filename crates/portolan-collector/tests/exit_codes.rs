//! The real collector binary's exit status follows the convention of the three binaries
//! (`portolan_config::exit`): 64 for a bad configuration, 69 when ClickHouse cannot be
//! reached.

use std::net::{IpAddr, Ipv4Addr};
use std::process::{Command, Output};
use std::time::Duration;

use portolan_tls::pki::{Ca, WriteMode};

fn collector() -> Command {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_portolan-collector"));
    cmd.env("PORTOLAN_LOG", "warn")
        .env_remove("PORTOLAN_CONFIG")
        .env_remove("PORTOLAN_CLICKHOUSE_URL")
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
fn a_bad_configuration_exits_64() -> anyhow::Result<()> {
    let missing = collector()
        .args(["--config", "/nonexistent/portolan-collector.toml"])
        .output()?;
    assert_eq!(missing.status.code(), Some(64), "{}", shown(&missing));
    // The chain is printed once: the reason is not repeated.
    let stderr = String::from_utf8_lossy(&missing.stderr);
    assert_eq!(
        stderr.matches("os error 2").count(),
        1,
        "{}",
        shown(&missing)
    );
    let dir = tempfile::tempdir()?;
    let file = dir.path().join("collector.toml");
    std::fs::write(&file, "version = 1\nno_such_key = true\n")?;
    let unknown = collector().arg("--config").arg(&file).output()?;
    assert_eq!(unknown.status.code(), Some(64), "{}", shown(&unknown));
    Ok(())
}

#[test]
fn clickhouse_out_of_reach_exits_69() -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let ca = Ca::generate("exit codes test ca")?;
    let ca_files = ca.write_files(dir.path(), "ca", WriteMode::CreateNew)?;
    let collector_files = ca
        .issue_collector(
            "collector-1",
            &[],
            &[IpAddr::V4(Ipv4Addr::LOCALHOST)],
            Duration::from_secs(3600),
        )?
        .write_files(dir.path(), "collector", WriteMode::CreateNew)?;
    // A port nothing listens on: bind one, note it, close it.
    let closed = std::net::TcpListener::bind("127.0.0.1:0")?.local_addr()?;
    let output = collector()
        .env("PORTOLAN_TLS_CA", &ca_files.cert)
        .env("PORTOLAN_TLS_CERT", &collector_files.cert)
        .env("PORTOLAN_TLS_KEY", &collector_files.key)
        .arg("--clickhouse-url")
        .arg(format!("http://{closed}"))
        .arg("--listen")
        .arg("127.0.0.1:0")
        .arg("--state-dir")
        .arg(dir.path())
        .output()?;
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        stderr.contains("cannot reach ClickHouse"),
        "{}",
        shown(&output)
    );
    assert_eq!(output.status.code(), Some(69), "{}", shown(&output));
    Ok(())
}

#[test]
fn a_crl_it_cannot_use_exits_64_and_says_why() -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let ca = Ca::generate("exit codes test ca")?;
    let ca_files = ca.write_files(dir.path(), "ca", WriteMode::CreateNew)?;
    let collector_files = ca
        .issue_collector(
            "collector-1",
            &[],
            &[IpAddr::V4(Ipv4Addr::LOCALHOST)],
            Duration::from_secs(3600),
        )?
        .write_files(dir.path(), "collector", WriteMode::CreateNew)?;
    let garbage = dir.path().join("garbage.crl");
    std::fs::write(&garbage, "not a CRL\n")?;
    let foreign = dir.path().join("foreign.crl.pem");
    let stranger = Ca::generate("stranger")?;
    std::fs::write(
        &foreign,
        stranger
            .crl(None, &[], portolan_tls::pki::DEFAULT_CRL_VALIDITY)?
            .pem,
    )?;
    for (crl, expected) in [
        (&garbage, "neither a PEM `X509 CRL` block nor a DER CRL"),
        (&foreign, "which is none of the CAs in `tls.ca`"),
    ] {
        let output = collector()
            .env("PORTOLAN_TLS_CA", &ca_files.cert)
            .env("PORTOLAN_TLS_CERT", &collector_files.cert)
            .env("PORTOLAN_TLS_KEY", &collector_files.key)
            .env("PORTOLAN_TLS_CRLS", format!("[\"{}\"]", crl.display()))
            .arg("--listen")
            .arg("127.0.0.1:0")
            .arg("--state-dir")
            .arg(dir.path())
            .output()?;
        let stderr = String::from_utf8_lossy(&output.stderr);
        assert_eq!(output.status.code(), Some(64), "{}", shown(&output));
        assert!(
            stderr.contains("cannot load the CRLs (see `tls.crls`)")
                && stderr.contains(&crl.display().to_string())
                && stderr.contains(expected),
            "{}",
            shown(&output)
        );
    }
    Ok(())
}
