//! Podman as these tests drive it: runc and cgroupfs (what works on machines without
//! systemd-managed cgroups), explicit ulimits, and containers removed when their guard drops.

use std::path::PathBuf;
use std::process::{Command, Output};

use anyhow::{Context, Result, bail};

/// The flags every `podman` invocation of these tests carries.
const GLOBAL: [&str; 4] = ["--runtime", "runc", "--cgroup-manager", "cgroupfs"];

/// `--ulimit` flags within this process's own hard limits: podman's defaults (a million open
/// files) are above what an unprivileged or nested runtime may grant, and runc then fails
/// with "error setting rlimits".
pub fn ulimits() -> Vec<String> {
    let limits = std::fs::read_to_string("/proc/self/limits").unwrap_or_default();
    let hard = |name: &str, default: u64| -> u64 {
        limits
            .lines()
            .find(|l| l.starts_with(name))
            .and_then(|l| l[name.len()..].split_whitespace().nth(1))
            .and_then(|v| v.parse().ok())
            .unwrap_or(default)
    };
    let nofile = hard("Max open files", 1024).min(65_536);
    let nproc = hard("Max processes", 4096).min(8192);
    vec![
        "--ulimit".into(),
        format!("nofile={nofile}:{nofile}"),
        "--ulimit".into(),
        format!("nproc={nproc}:{nproc}"),
    ]
}

/// `podman <GLOBAL> ARGS`, not yet run.
pub fn command(args: &[&str]) -> Command {
    let mut command = Command::new("podman");
    command.args(GLOBAL).args(args);
    command
}

/// `podman run --rm <ulimits> ARGS`: stdout, or an error with its stderr.
pub fn run_once(args: &[&str]) -> Result<String> {
    let limits = ulimits();
    let mut all = vec!["run", "--rm"];
    all.extend(limits.iter().map(String::as_str));
    all.extend(args);
    run(&all)
}

/// Runs `podman ARGS`; fails with its stderr unless it succeeds. Returns stdout.
pub fn run(args: &[&str]) -> Result<String> {
    let output = output(args)?;
    if !output.status.success() {
        bail!(
            "podman {} failed ({}): {}",
            args.join(" "),
            output.status,
            String::from_utf8_lossy(&output.stderr).trim()
        );
    }
    Ok(String::from_utf8_lossy(&output.stdout).into_owned())
}

/// Runs `podman ARGS` and returns what it did, whatever its status.
pub fn output(args: &[&str]) -> Result<Output> {
    command(args).output().context(
        "cannot run podman: install it (`apt-get install podman runc buildah`; `just image` does)",
    )
}

/// The reference `just image` tags (the Helm chart's default image), from
/// `tools/image/reference`; fails with what to run when the image is not built.
pub fn image() -> Result<String> {
    let script = repo().join("tools/image/reference");
    let output = Command::new(&script)
        .output()
        .with_context(|| format!("cannot run {}", script.display()))?;
    if !output.status.success() {
        bail!("{}", String::from_utf8_lossy(&output.stderr).trim());
    }
    let reference = String::from_utf8_lossy(&output.stdout).trim().to_string();
    if !output_ok(&["image", "exists", &reference])? {
        bail!("the image {reference} is not built: run `just image` (`just test` does)");
    }
    Ok(reference)
}

fn output_ok(args: &[&str]) -> Result<bool> {
    Ok(output(args)?.status.success())
}

/// The repository's root (this crate is `tests/`).
pub fn repo() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .map(PathBuf::from)
        .unwrap_or_default()
}

/// The log (stdout and stderr) of a container, for failure messages.
pub fn logs(container: &str) -> String {
    match output(&["logs", container]) {
        Ok(o) => format!(
            "{}{}",
            String::from_utf8_lossy(&o.stdout),
            String::from_utf8_lossy(&o.stderr)
        ),
        Err(e) => format!("(no log: {e:#})"),
    }
}

/// A container started with `podman run -d`, removed (with its anonymous volumes) on drop.
pub struct Container {
    pub name: String,
}

impl Container {
    /// `podman run -d --name NAME <ulimits> ARGS`.
    pub fn start(name: &str, args: &[&str]) -> Result<Container> {
        // A container left by an earlier, interrupted run of the same test.
        let _ = output(&["rm", "-f", "-v", name]);
        let limits = ulimits();
        let mut all = vec!["run", "-d", "--name", name];
        all.extend(limits.iter().map(String::as_str));
        all.extend(args);
        // The guard first: a container created and then failing to start is removed too.
        let container = Container {
            name: name.to_string(),
        };
        run(&all)?;
        Ok(container)
    }

    /// Its log (stdout and stderr), for failure messages.
    pub fn logs(&self) -> String {
        logs(&self.name)
    }

    /// Whether it is still running.
    pub fn running(&self) -> bool {
        run(&["inspect", "--format", "{{.State.Running}}", &self.name])
            .map(|s| s.trim() == "true")
            .unwrap_or(false)
    }
}

impl Drop for Container {
    fn drop(&mut self) {
        let _ = output(&["rm", "-f", "-v", "-t", "5", &self.name]);
    }
}
