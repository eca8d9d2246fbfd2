//! `portolan-collector --print-config` shows the effective configuration without its
//! secrets: the ClickHouse password from the environment is masked, a password file is
//! named but not read, and `[clickhouse.tls]` is shown as configured.

use std::process::Command;

#[test]
fn print_config_masks_the_clickhouse_password_and_shows_the_tls_table() -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let password_file = dir.path().join("clickhouse-password");
    std::fs::write(&password_file, "file-s3cret\n")?;
    let config = dir.path().join("collector.toml");
    std::fs::write(
        &config,
        "version = 1\n[clickhouse]\nurl = \"https://ch.example:8443\"\nuser = \"ingest\"\n[clickhouse.tls]\nca = \"/etc/portolan/clickhouse-ca.pem\"\n",
    )?;
    let run = |env: &[(&str, &str)]| -> anyhow::Result<String> {
        let output = Command::new(env!("CARGO_BIN_EXE_portolan-collector"))
            .arg("--config")
            .arg(&config)
            .arg("--print-config")
            .env_remove("PORTOLAN_CONFIG")
            .env_remove("PORTOLAN_CLICKHOUSE_URL")
            .env_remove("PORTOLAN_CLICKHOUSE_PASSWORD")
            .env_remove("PORTOLAN_CLICKHOUSE_PASSWORD_FILE")
            .envs(env.iter().copied())
            .output()?;
        anyhow::ensure!(
            output.status.success(),
            "status {:?}: {}",
            output.status.code(),
            String::from_utf8_lossy(&output.stderr)
        );
        Ok(String::from_utf8(output.stdout)?)
    };

    let shown = run(&[("PORTOLAN_CLICKHOUSE_PASSWORD", "env-s3cret")])?;
    assert!(!shown.contains("env-s3cret"), "{shown}");
    assert!(shown.contains("password = \"**REDACTED**\""), "{shown}");
    assert!(
        shown.contains("[clickhouse.tls]\nca = \"/etc/portolan/clickhouse-ca.pem\""),
        "{shown}"
    );

    let file = password_file.display().to_string();
    let shown = run(&[("PORTOLAN_CLICKHOUSE_PASSWORD_FILE", file.as_str())])?;
    assert!(!shown.contains("file-s3cret"), "{shown}");
    assert!(
        shown.contains(&format!("password_file = \"{file}\"")),
        "{shown}"
    );
    assert!(shown.contains("password = \"\""), "{shown}");
    Ok(())
}
