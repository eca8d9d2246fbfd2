//! `HTTPS_PROXY`, `HTTP_PROXY` and `NO_PROXY`, through a real proxy (Debian's tinyproxy,
//! with basic authentication): an agent streams to its collector through the proxy's
//! `CONNECT` tunnel; wrong credentials are refused with a message that names the proxy;
//! `NO_PROXY` sends an agent direct; the collector's webhook notifications go through a
//! forwarding proxy.

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::time::Duration;

use anyhow::{Context, Result};
use portolan_core::Protocol;
use portolan_testkit::receiver::Receiver;
use portolan_testkit::{ChildGuard, SocketFixture, eventually_async, fixture_binary, free_port};

use crate::support::{Cluster, Limits};

const USER: &str = "portolan";
const PASSWORD: &str = "s3cret";

/// A tinyproxy on 127.0.0.1 requiring `USER`/`PASSWORD`, logging every request.
struct Tinyproxy {
    port: u16,
    log: PathBuf,
    _child: ChildGuard,
}

impl Tinyproxy {
    fn start(cluster: &Cluster) -> Result<Tinyproxy> {
        // tinyproxy drops to `nobody`: its directory must be writable by it.
        let dir = cluster.state.subdir("tinyproxy")?;
        std::fs::set_permissions(&dir, std::os::unix::fs::PermissionsExt::from_mode(0o777))?;
        let port = free_port()?;
        let log = dir.join("tinyproxy.log");
        let config = dir.join("tinyproxy.conf");
        std::fs::write(
            &config,
            format!(
                "Port {port}\nListen 127.0.0.1\nTimeout 60\nLogFile {log:?}\nLogLevel Info\nMaxClients 50\nAllow 127.0.0.1\nBasicAuth {USER} {PASSWORD}\nDisableViaHeader Yes\n"
            ),
        )?;
        let child = ChildGuard::spawn(
            Command::new("tinyproxy")
                .arg("-d")
                .arg("-c")
                .arg(&config)
                .stdout(Stdio::null())
                .stderr(Stdio::null()),
        )
        .context("cannot start tinyproxy (apt-get install tinyproxy; `just test` does)")?;
        let proxy = Tinyproxy {
            port,
            log,
            _child: child,
        };
        portolan_testkit::eventually!(timeout = Duration::from_secs(10), {
            std::net::TcpStream::connect((Ipv4Addr::LOCALHOST, port))
                .map(|_| ())
                .map_err(|e| format!("tinyproxy does not listen yet: {e}"))
        });
        Ok(proxy)
    }

    fn url(&self, credentials: bool) -> String {
        if credentials {
            format!("http://{USER}:{PASSWORD}@127.0.0.1:{}", self.port)
        } else {
            format!("http://127.0.0.1:{}", self.port)
        }
    }

    fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn agents_and_notifications_go_through_the_proxy_the_environment_names() -> Result<()> {
    let webhook = Receiver::start().await?;
    let rules = "version: 1\nrules:\n  - id: proxied\n    kind: listener\n    severity: info\n    sockets: {ports: [19777]}\n";
    let mut cluster = Cluster::start(
        "proxy",
        &[],
        Limits {
            rules: Some(rules.into()),
            collector_extra: format!(
                "\n[notify]\nbackoff = \"200ms\"\n\n[[notify.webhook]]\nurl = {:?}\n",
                webhook.url()
            ),
            ..Limits::default()
        },
    )
    .await?;
    let proxy = Tinyproxy::start(&cluster)?;
    // The collector posts its notifications through the proxy (plain HTTP: forwarded).
    cluster.set_collector_env(vec![("HTTP_PROXY".into(), proxy.url(true))]);
    cluster.kill_collector(0);
    cluster.start_collector(0).await?;
    let collector = SocketAddr::new(IpAddr::V4(Ipv4Addr::LOCALHOST), cluster.collector_port);
    let fixture = SocketFixture::spawn(None, &fixture_binary()?)?;
    fixture.listen(
        Protocol::Tcp,
        SocketAddr::new(IpAddr::V4(Ipv4Addr::LOCALHOST), 19777),
    )?;

    // Through the tunnel, with the proxy's credentials.
    let via = proxy.url(true);
    let _tunnelled = cluster.spawn_agent_with_env(
        None,
        "via-proxy",
        collector,
        Duration::from_secs(1),
        &[],
        &[("HTTPS_PROXY", &via)],
    )?;
    // Without credentials: refused by the proxy, and the agent says so.
    let bare = proxy.url(false);
    let _refused = cluster.spawn_agent_with_env(
        None,
        "no-credentials",
        collector,
        Duration::from_secs(1),
        &[],
        &[("HTTPS_PROXY", &bare)],
    )?;
    // NO_PROXY: direct, although the proxy it names does not exist.
    let nowhere = format!("http://127.0.0.1:{}", free_port()?);
    let _direct = cluster.spawn_agent_with_env(
        None,
        "direct",
        collector,
        Duration::from_secs(1),
        &[],
        &[
            ("HTTPS_PROXY", &nowhere),
            ("NO_PROXY", "localhost,127.0.0.1"),
        ],
    )?;

    let store = &cluster.store;
    for host in ["via-proxy", "direct"] {
        eventually_async!(
            timeout = Duration::from_secs(60),
            interval = Duration::from_millis(250),
            {
                let n = store
                    .current_sockets(host)
                    .await
                    .map_err(|e| e.to_string())?
                    .len();
                if n > 0 {
                    Ok(())
                } else {
                    Err(format!(
                        "nothing of {host} stored yet; agent log:\n{}",
                        cluster.agent_log(host)
                    ))
                }
            }
        );
    }
    let tunnel = format!("CONNECT 127.0.0.1:{}", cluster.collector_port);
    let log = proxy.log();
    assert!(
        log.contains(&tunnel),
        "no `{tunnel}` in the proxy's log:\n{log}"
    );
    let refused = eventually_async!(
        timeout = Duration::from_secs(30),
        interval = Duration::from_millis(250),
        {
            let log = cluster.agent_log("no-credentials");
            match log.lines().find(|l| l.contains("407")) {
                Some(line) => Ok(line.to_string()),
                None => Err(format!("no refusal in the agent's log:\n{log}")),
            }
        }
    );
    println!("refused: {refused}");
    assert!(
        refused.contains(&format!("proxy http://127.0.0.1:{}", proxy.port))
            && refused.contains("NO_PROXY"),
        "the refusal does not name the proxy and what to check: {refused}"
    );
    assert!(!refused.contains(PASSWORD), "{refused}");
    assert!(
        store.current_sockets("no-credentials").await?.is_empty(),
        "an agent refused by its proxy stored sockets"
    );

    // The webhook got the finding, and the proxy forwarded it.
    let forwarded = format!("POST http://127.0.0.1:{}/", webhook.addr().port());
    eventually_async!(
        timeout = Duration::from_secs(60),
        interval = Duration::from_millis(250),
        {
            let log = proxy.log();
            let posted = webhook
                .requests()
                .iter()
                .any(|r| r.text().contains("proxied"));
            if posted && log.contains(&forwarded) {
                Ok(())
            } else {
                Err(format!(
                    "webhook requests: {}, `{forwarded}` in the proxy's log: {}\ncollector log:\n{}",
                    webhook.count(),
                    log.contains(&forwarded),
                    cluster.collector_log()
                ))
            }
        }
    );
    Ok(())
}
