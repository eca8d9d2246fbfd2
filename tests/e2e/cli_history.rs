//! The CLI's verbs for the past and the live, as the real `portolan` binary runs them
//! against a real collector, ClickHouse and an agent in a namespace host: `at` shows what
//! was open at an instant and not what is open now, `history` the add and the remove of
//! a port, `ack` by an admin (and not by a reader) shows in `findings`, `watch host` and
//! `watch findings` print changes as they happen and end cleanly on Ctrl-C, and
//! `rules test` finds over the test's own history a rule that matched earlier.

use std::collections::BTreeSet;
use std::io::{BufRead, BufReader};
use std::net::{IpAddr, SocketAddr};
use std::process::{Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use anyhow::{Context, Result, bail, ensure};
use portolan_core::Protocol;
use portolan_testkit::{ChildGuard, Lab, SocketFixture, eventually_async, fixture_binary};
use portolan_tls::OperatorRole;
use portolan_tls::pki::WriteMode;
use serde_json::Value;

use crate::query::Cli;
use crate::support::{Cluster, Limits};

const HOST: &str = "host-cli";

fn now_unix() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| i64::try_from(d.as_secs()).unwrap_or(i64::MAX))
}

fn rfc3339(unix: i64) -> String {
    humantime::format_rfc3339_seconds(UNIX_EPOCH + Duration::from_secs(unix.unsigned_abs()))
        .to_string()
}

/// The local ports of a JSON array of sockets.
fn ports(sockets: &Value) -> BTreeSet<u64> {
    sockets
        .as_array()
        .map(|a| a.iter().filter_map(|s| s["local_port"].as_u64()).collect())
        .unwrap_or_default()
}

/// A CLI with a fresh operator certificate of `role`; its identity URI too.
fn operator<'a>(cluster: &'a Cluster, name: &str, role: OperatorRole) -> Result<(Cli<'a>, String)> {
    let written = cluster
        .pki
        .ca
        .issue_operator(name, role, Duration::from_secs(3600))?
        .write_files(
            &cluster.pki.dir,
            &format!("operator-{name}"),
            WriteMode::Overwrite,
        )?;
    let cli = Cli {
        cluster,
        cert: written.cert,
        key: written.key,
        port: cluster.collector_port,
    };
    Ok((
        cli,
        format!("spiffe://portolan/operator/{}/{name}", role.as_str()),
    ))
}

/// A `portolan watch …` running in the background: its stdout and stderr lines as they
/// come.
struct Watch {
    child: ChildGuard,
    out: mpsc::Receiver<String>,
    err: mpsc::Receiver<String>,
    /// Every stderr line so far, for failure messages.
    said: Vec<String>,
}

impl Watch {
    fn spawn(mut command: Command) -> Result<Watch> {
        command
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        let mut child = ChildGuard::spawn(&mut command)?;
        let out = lines(child.stdout.take().context("the watch's stdout")?);
        let err = lines(child.stderr.take().context("the watch's stderr")?);
        Ok(Watch {
            child,
            out,
            err,
            said: Vec::new(),
        })
    }

    /// Waits until stderr says `what` (the watch stream is established).
    fn wait_until_watching(&mut self, what: &str, timeout: Duration) -> Result<()> {
        let deadline = Instant::now() + timeout;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match self.err.recv_timeout(left) {
                Ok(line) => {
                    let found = line.contains(what);
                    self.said.push(line);
                    if found {
                        return Ok(());
                    }
                }
                Err(_) => bail!(
                    "the watch did not say `{what}` within {timeout:?}; stderr: {:?}",
                    self.said
                ),
            }
        }
    }

    /// The first stdout line (a JSON object) that `wanted` accepts, skipping others.
    fn next_json(&mut self, timeout: Duration, wanted: impl Fn(&Value) -> bool) -> Result<Value> {
        let deadline = Instant::now() + timeout;
        let mut seen = Vec::new();
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match self.out.recv_timeout(left) {
                Ok(line) => {
                    let doc: Value = serde_json::from_str(&line)
                        .with_context(|| format!("a watch line that is not JSON: {line}"))?;
                    if wanted(&doc) {
                        return Ok(doc);
                    }
                    seen.push(line);
                }
                Err(_) => {
                    while let Ok(line) = self.err.try_recv() {
                        self.said.push(line);
                    }
                    bail!(
                        "no wanted line within {timeout:?}; lines: {seen:?}; stderr: {:?}",
                        self.said
                    )
                }
            }
        }
    }

    /// Waits until the watch ends by itself; its exit code and everything it said on
    /// stderr.
    fn ended(mut self, timeout: Duration) -> Result<(Option<i32>, String)> {
        let deadline = Instant::now() + timeout;
        let status = loop {
            if let Some(status) = self.child.try_wait()? {
                break status;
            }
            ensure!(
                Instant::now() < deadline,
                "the watch did not end within {timeout:?}; stderr: {:?}",
                self.said
            );
            std::thread::sleep(Duration::from_millis(50));
        };
        // The pipe's thread sends the last lines once the process is gone.
        while let Ok(line) = self.err.recv_timeout(Duration::from_secs(2)) {
            self.said.push(line);
        }
        Ok((status.code(), self.said.join("\n")))
    }

    /// Ctrl-C: the watch must end by itself, with exit status 0.
    fn interrupt(mut self) -> Result<()> {
        let pid = self.child.id().to_string();
        let status = Command::new("kill").args(["-INT", &pid]).status()?;
        ensure!(status.success(), "kill -INT {pid} failed");
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            if let Some(status) = self.child.try_wait()? {
                ensure!(
                    status.code() == Some(0),
                    "the watch ended with {status} on Ctrl-C; stderr: {:?}",
                    self.said
                );
                return Ok(());
            }
            ensure!(
                Instant::now() < deadline,
                "the watch did not end within 10 s of Ctrl-C"
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}

/// The lines of a pipe, sent as they are read by a thread of their own.
fn lines(pipe: impl std::io::Read + Send + 'static) -> mpsc::Receiver<String> {
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(pipe).lines() {
            let Ok(line) = line else { break };
            if tx.send(line).is_err() {
                break;
            }
        }
    });
    rx
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cli_shows_the_past_acknowledges_watches_and_tests_rules() -> Result<()> {
    let lab = Lab::new("clih")?;
    let host = lab.add_host("h")?;
    let bridge = IpAddr::V4(lab.bridge_ipv4());
    let rules = "rules:\n  - id: e2e-cli-7100\n    kind: listener\n    severity: high\n    sockets: {ports: [7100]}\n";
    let limits = Limits {
        rules: Some(rules.into()),
        ..Limits::default()
    };
    let mut cluster = Cluster::start("cli_history", &[bridge], limits).await?;
    let fixture = SocketFixture::spawn(Some(&host), &fixture_binary()?)?;
    let (l7001, _) = fixture.listen(Protocol::Tcp, "0.0.0.0:7001".parse()?)?;
    fixture.listen(Protocol::Tcp, "0.0.0.0:7100".parse()?)?;
    let _agent = cluster.spawn_agent(
        Some(&host),
        HOST,
        SocketAddr::new(bridge, cluster.collector_port),
        Duration::from_secs(1),
        &[("env", "test")],
    )?;
    let store = &cluster.store;
    let ports_stored = async |want: &[u16], gone: &[u16]| -> Result<(), String> {
        let sockets = store
            .current_sockets(HOST)
            .await
            .map_err(|e| e.to_string())?;
        let ports: BTreeSet<u16> = sockets.iter().map(|s| s.socket.key.local_port).collect();
        if want.iter().all(|p| ports.contains(p)) && !gone.iter().any(|p| ports.contains(p)) {
            Ok(())
        } else {
            Err(format!("stored ports {ports:?}"))
        }
    };
    eventually_async!(
        timeout = Duration::from_secs(60),
        interval = Duration::from_millis(250),
        ports_stored(&[7001, 7100], &[]).await
    );
    // T: 7001 is stored as open. It closes three seconds later: history tells the
    // changes apart at second precision, and the dry run below (an instant every two
    // seconds) cannot step over 7001's time.
    let t = now_unix();
    eventually_async!(
        timeout = Duration::from_secs(10),
        interval = Duration::from_millis(50),
        if now_unix() > t + 2 {
            Ok(())
        } else {
            Err("too early")
        }
    );
    fixture.close(l7001)?;
    fixture.listen(Protocol::Tcp, "0.0.0.0:7002".parse()?)?;
    eventually_async!(
        timeout = Duration::from_secs(30),
        interval = Duration::from_millis(250),
        ports_stored(&[7002, 7100], &[7001]).await
    );

    let (reader, _) = operator(&cluster, "reader", OperatorRole::Reader)?;
    let (admin, admin_uri) = operator(&cluster, "alice", OperatorRole::Admin)?;

    // `at T`: what was open then (7001), not what is open now (7002); RFC 3339 and a
    // Unix timestamp name the same instant.
    let at_t = rfc3339(t);
    let doc = reader.json(&["at", &at_t, HOST, "-o", "json"])?;
    let then = ports(&doc["sockets"]);
    assert!(
        then.contains(&7001) && then.contains(&7100) && !then.contains(&7002),
        "ports at {at_t}: {then:?}"
    );
    assert_eq!(doc["host_id"], HOST);
    assert_eq!(doc["at_unix"], t);
    let seq_at = doc["seq_at_unix"].as_i64().context("seq_at_unix")?;
    assert!(
        doc["seq"].as_u64().is_some_and(|s| s > 0) && seq_at <= t,
        "{doc}"
    );
    assert!(doc["flows"].is_null(), "no flows without --flows");
    let states: Vec<&str> = doc["sockets"]
        .as_array()
        .context("sockets")?
        .iter()
        .filter_map(|s| s["state"].as_str())
        .collect();
    let listeners = states.iter().take_while(|s| **s == "listen").count();
    assert!(
        states[listeners..].iter().all(|s| *s != "listen"),
        "listeners first: {states:?}"
    );
    assert_eq!(
        ports(&reader.json(&["at", &t.to_string(), HOST, "-o", "json"])?["sockets"]),
        then
    );
    // And now: 7002, not 7001.
    let now = ports(&reader.json(&["at", &now_unix().to_string(), HOST, "-o", "json"])?["sockets"]);
    assert!(
        now.contains(&7002) && !now.contains(&7001),
        "ports now: {now:?}"
    );
    // `sockets --at T` asks the same across the fleet.
    let doc = reader.json(&["sockets", "--listening", "--at", &at_t, "-o", "json"])?;
    assert!(
        ports(&doc).contains(&7001) && !ports(&doc).contains(&7002),
        "{doc}"
    );
    let doc = reader.json(&["at", &at_t, HOST, "--flows", "-o", "json"])?;
    assert!(doc["flows"].is_array(), "{doc}");
    let (code, table, err) = reader.run(&["at", &at_t, HOST])?;
    assert_eq!(code, 0, "{err}");
    assert!(table.starts_with(&format!("{HOST} at {at_t} (")), "{table}");
    println!("$ portolan at {at_t} {HOST}\n{table}");

    // `history --port 7001`: removed after T, added at or before it, newest first.
    let doc = reader.json(&["history", HOST, "--port", "7001", "-o", "json"])?;
    // Added at or before T, removed after it; a scan that caught the socket while it
    // closed may have stored a change between (its owner already gone).
    let events = doc.as_array().context("events")?;
    let kinds: Vec<&str> = events.iter().filter_map(|e| e["kind"].as_str()).collect();
    let (removed, added) = match (events.first(), events.last()) {
        (Some(r), Some(a)) if events.len() >= 2 => (r, a),
        _ => bail!("two events at least: {doc}"),
    };
    assert!(
        removed["kind"] == "removed"
            && added["kind"] == "added"
            && kinds[1..kinds.len() - 1].iter().all(|k| *k == "changed"),
        "newest first, removed … added: {kinds:?}"
    );
    assert_eq!(removed["socket"]["local_port"], 7001);
    let removed_at = removed["at_unix"].as_i64().context("removed at")?;
    let added_at = added["at_unix"].as_i64().context("added at")?;
    assert!(
        added_at <= t && removed_at > t,
        "added {added_at}, removed {removed_at}, T {t}"
    );
    // One socket by its key, oldest first.
    let key = removed["key"]
        .as_str()
        .context("the socket's key")?
        .to_string();
    let doc = reader.json(&[
        "history",
        HOST,
        "--socket-key",
        &key,
        "--oldest-first",
        "-o",
        "json",
    ])?;
    let oldest: Vec<&str> = doc
        .as_array()
        .context("events")?
        .iter()
        .filter_map(|e| e["kind"].as_str())
        .collect();
    let mut newest = kinds.clone();
    newest.reverse();
    assert_eq!(oldest, newest, "{doc}");
    // Since T: the changes after it only.
    let doc = reader.json(&["history", HOST, "--from", &rfc3339(t + 1), "-o", "json"])?;
    let kinds: BTreeSet<(String, u64)> = doc
        .as_array()
        .context("events")?
        .iter()
        .map(|e| {
            (
                e["kind"].as_str().unwrap_or_default().to_string(),
                e["socket"]["local_port"].as_u64().unwrap_or_default(),
            )
        })
        .collect();
    assert!(
        kinds.contains(&("removed".into(), 7001)) && kinds.contains(&("added".into(), 7002)),
        "{kinds:?}"
    );
    let (code, table, err) = reader.run(&["history", HOST, "--port", "7001"])?;
    assert_eq!(code, 0, "{err}");
    println!("$ portolan history {HOST} --port 7001\n{table}");

    // `rules test` over this history: 7001 matched before T and is closed now; 7002
    // opened after T and is open now.
    let file = cluster.state.path().join("dry-run.yaml");
    std::fs::write(
        &file,
        "version: 1\nrules:\n  - id: cli-was-7001\n    kind: listener\n    severity: medium\n    sockets: {ports: [7001]}\n  - id: cli-now-7002\n    kind: listener\n    severity: low\n    sockets: {ports: [7002]}\n",
    )?;
    let file = file.to_str().context("utf-8 path")?.to_string();
    let started = Instant::now();
    let (code, out, err) = reader.run(&[
        "rules", "test", &file, "--since", "1h", "--step", "2s", "-o", "json",
    ])?;
    println!(
        "rules test --since 1h --step 2s: {:?}; stderr: {err}",
        started.elapsed()
    );
    assert_eq!(code, 0, "{err}");
    let doc: Value =
        serde_json::from_str(&out).with_context(|| format!("rules test JSON: {out}"))?;
    assert_eq!(doc["rules"], 2);
    assert_eq!(doc["step_seconds"], 2);
    assert!(
        doc["failures"].as_array().is_some_and(Vec::is_empty),
        "{doc}"
    );
    let fired = |rule: &str| {
        doc["findings"]
            .as_array()
            .and_then(|a| a.iter().find(|f| f["rule_id"] == rule))
            .cloned()
    };
    let was = fired("cli-was-7001").context("cli-was-7001 would have fired")?;
    assert_eq!(was["host_id"], HOST);
    assert_eq!(was["hostname"], HOST);
    assert_eq!(was["open_now"], false, "{was}");
    // It matched from the scan that added 7001 to the one before the scan that removed it.
    let (first, last) = (
        was["first_unix"].as_i64().context("first_unix")?,
        was["last_unix"].as_i64().context("last_unix")?,
    );
    assert!(
        added_at <= first && first <= last && last < removed_at && was["episodes"] == 1,
        "{was}: added at {added_at}, removed at {removed_at}"
    );
    let now_open = fired("cli-now-7002").context("cli-now-7002 would have fired")?;
    assert_eq!(now_open["open_now"], true, "{now_open}");
    assert!(
        err.contains("2 rules × ") && err.contains("2 findings would have fired (1 open now)"),
        "{err}"
    );
    // The same for people, over a shorter window (each instant is a query per rule).
    let (code, table, err) =
        reader.run(&["rules", "test", &file, "--since", "10m", "--step", "2s"])?;
    assert_eq!(code, 0, "{err}");
    assert!(
        table.contains("cli-was-7001") && table.contains("2 rules × 301 evaluations over 10m"),
        "{table}"
    );
    println!("$ portolan rules test dry-run.yaml --since 10m --step 2s\n{table}");
    // A rule file with a mistake: the collector's problems, file:line:column, exit 64.
    let bad = cluster.state.path().join("bad.yaml");
    std::fs::write(
        &bad,
        "version: 1\nrules:\n  - id: broken\n    kind: listener\n    severity: urgent\n    sockets: {ports: [7001]}\n",
    )?;
    let bad = bad.to_str().context("utf-8 path")?.to_string();
    let (code, out, err) = reader.run(&["rules", "test", &bad, "--since", "1h"])?;
    println!("rules test with a mistake: exit {code}: {err}");
    assert_eq!(code, 64, "{err}");
    assert!(out.is_empty(), "{out}");
    assert!(
        err.lines().any(|l| l.starts_with(&format!("{bad}:5:"))),
        "file:line:column: {err}"
    );

    // The collector's rule opened a finding for 7100.
    let finding = eventually_async!(
        timeout = Duration::from_secs(30),
        interval = Duration::from_millis(500),
        {
            let doc = reader
                .json(&["findings", "-o", "json"])
                .map_err(|e| e.to_string())?;
            doc.as_array()
                .and_then(|a| a.iter().find(|f| f["rule_id"] == "e2e-cli-7100"))
                .cloned()
                .ok_or_else(|| format!("no finding yet: {doc}"))
        }
    );
    let fingerprint = finding["fingerprint"]
        .as_str()
        .context("fingerprint")?
        .to_string();
    assert!(finding["ack"].is_null(), "{finding}");

    // A reader may not acknowledge: exit 77, one line saying an admin certificate is needed.
    let reason = "maintenance window, firewalled upstream";
    let (code, _, err) = reader.run(&["ack", &fingerprint, "--reason", reason, "--for", "4h"])?;
    println!("ack with a reader certificate: exit {code}: {err}");
    assert_eq!(code, 77, "{err}");
    assert!(err.lines().count() == 1 && err.contains("admin"), "{err}");
    // An admin may: the acknowledgement is the admin's, with the reason and deadline.
    let before = now_unix();
    let acked = admin.json(&[
        "ack",
        &fingerprint,
        "--reason",
        reason,
        "--for",
        "4h",
        "-o",
        "json",
    ])?;
    assert_eq!(acked["fingerprint"], fingerprint.as_str());
    assert_eq!(acked["ack"]["acked_by"], admin_uri.as_str(), "{acked}");
    let doc = reader.json(&["findings", "-o", "json"])?;
    let listed = doc
        .as_array()
        .and_then(|a| a.iter().find(|f| f["fingerprint"] == fingerprint.as_str()))
        .context("the acknowledged finding listed")?;
    let ack = &listed["ack"];
    assert_eq!(ack["acked_by"], admin_uri.as_str(), "{listed}");
    assert_eq!(ack["reason"], reason, "{listed}");
    let until = ack["until_unix"].as_i64().context("until_unix")?;
    assert!(
        (before + 4 * 3600..=now_unix() + 4 * 3600).contains(&until),
        "until {until}, asked at {before} for 4h"
    );
    let acked_only = reader.json(&["findings", "--acked", "-o", "json"])?;
    assert_eq!(acked_only.as_array().map(Vec::len), Some(1), "{acked_only}");
    let (code, _, _) = reader.run(&["findings", "--unacked", "-o", "json"])?;
    assert_eq!(code, 1, "no unacknowledged findings: exit 1");
    let (code, table, err) = reader.run(&["findings"])?;
    assert_eq!(code, 0, "{err}");
    assert!(
        table.contains("alice") && (table.contains("in 4h") || table.contains("in 3h59m")),
        "{table}"
    );
    println!("$ portolan findings\n{table}");
    let (_, wide, _) = reader.run(&["findings", "-o", "wide"])?;
    assert!(wide.contains(reason), "{wide}");

    // `watch findings`: clearing the acknowledgement is printed as it happens.
    let mut watch =
        Watch::spawn(reader.command(&["watch", "findings", "--poll", "1s", "-o", "json"])?)?;
    watch.wait_until_watching("watching findings", Duration::from_secs(15))?;
    let (code, out, err) = admin.run(&["unack", &fingerprint, "-o", "json"])?;
    assert_eq!(code, 0, "{err}");
    let cleared: Value = serde_json::from_str(&out)?;
    assert!(cleared["ack"].is_null(), "{cleared}");
    let line = watch.next_json(Duration::from_secs(20), |l| {
        l["change"] == "unacked" && l["finding"]["fingerprint"] == fingerprint.as_str()
    })?;
    println!("watch findings printed: {line}");
    watch.interrupt()?;

    // `watch host`: a listener opened after it started is printed within seconds.
    let mut watch =
        Watch::spawn(reader.command(&["watch", "host", HOST, "--poll", "1s", "-o", "json"])?)?;
    watch.wait_until_watching("watching host", Duration::from_secs(15))?;
    let opened = Instant::now();
    fixture.listen(Protocol::Tcp, "0.0.0.0:7003".parse()?)?;
    let line = watch.next_json(Duration::from_secs(20), |e| {
        e["kind"] == "added" && e["socket"]["local_port"] == 7003
    })?;
    println!(
        "watch host printed 7003 {:?} after it opened: {line}",
        opened.elapsed()
    );
    assert_eq!(line["host_id"], HOST);
    assert!(line["seq"].as_u64().is_some_and(|s| s > 0), "{line}");
    watch.interrupt()?;

    // An agent certificate cannot use these verbs either.
    let (agent_cert, agent_key) = cluster.pki.agent(HOST)?;
    let as_agent = Cli {
        cluster: &cluster,
        cert: agent_cert,
        key: agent_key,
        port: cluster.collector_port,
    };
    let (code, _, err) = as_agent.run(&["at", &at_t, HOST])?;
    assert_eq!(code, 77, "{err}");

    // A watch whose stream breaks (the collector dies) says so and exits 69; it does not
    // reconnect.
    let mut watch = Watch::spawn(reader.command(&["watch", "host", HOST, "--poll", "1s"])?)?;
    watch.wait_until_watching("watching host", Duration::from_secs(15))?;
    cluster.kill_collector(0);
    let (code, said) = watch.ended(Duration::from_secs(30))?;
    println!("watch when the collector dies: exit {code:?}: {said}");
    assert_eq!(code, Some(69), "{said}");
    assert!(said.contains("run the command again"), "{said}");
    Ok(())
}
