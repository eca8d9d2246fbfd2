//! Hosts in network namespaces, wired to a bridge in the root namespace.
//!
//! # Address plan
//!
//! A [`Lab`] takes one free subnet index `N` (1 ..= 254) for the whole machine and owns:
//!
//! | what | name | IPv4 | IPv6 |
//! |---|---|---|---|
//! | bridge, in the root namespace | `ptlbrN` | `10.77.N.1/24` | `fd77:N::1/64` |
//! | host `x` (2nd, 3rd … added) | namespace `ptl-<pid>-<seq>-<prefix>-<name>`, interface `eth0` | `10.77.N.x/24` | `fd77:N::x/64` |
//! | host's cable, root end, on the bridge | `ptlNhx` | — | — |
//!
//! `N` and `x` are written with the same digits in both families (`10.77.12.3` is
//! `fd77:12::3`). Hosts have no default route and the root namespace does not forward,
//! so hosts reach each other and the bridge address (where a collector in the root
//! namespace listens) and nothing else. In the root namespace, [`Lab::new`] also installs
//! `unreachable 10.77.0.0/16` and `unreachable fd77::/16` with metric 4077 (once, left in
//! place): a lab's own /24 and /64 are more specific and win while the lab exists, and
//! traffic to a lab that is gone fails at once instead of leaving by the default route.
//!
//! The subnet index is claimed by creating the bridge `ptlbrN`: the kernel refuses a
//! second interface of the same name, so labs in parallel tests and processes never share
//! a subnet. Interfaces carry the alias `portolan-testkit pid=<pid>` and namespace names
//! carry the pid, so [`Lab::cleanup_stale`] can remove what a crashed run left behind.

use std::ffi::OsStr;
use std::fmt;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::ops::{Deref, DerefMut};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Mutex, Once};

use crate::error::{Error, Result, io_error};
use crate::ss::{SsSocket, ss_sockets};
use crate::util::{describe, ip, pid_alive, run};

/// Every namespace and interface a lab creates starts with this.
const FAMILY: &str = "ptl";
/// Metric of the safety routes, chosen to be recognisable.
const SAFETY_METRIC: &str = "4077";
/// The alias every interface of a lab carries, followed by the creating pid.
const ALIAS_PREFIX: &str = "portolan-testkit pid=";

static LAB_SEQ: AtomicU32 = AtomicU32::new(0);

/// Fails with [`Error::NotRoot`] unless this process may create network namespaces and
/// configure interfaces (CAP_SYS_ADMIN and CAP_NET_ADMIN in its effective set).
pub fn check_privileges() -> Result<()> {
    const CAP_NET_ADMIN: u32 = 12;
    const CAP_SYS_ADMIN: u32 = 21;
    let status = std::fs::read_to_string("/proc/self/status")
        .map_err(io_error("cannot read `/proc/self/status`"))?;
    let effective = status
        .lines()
        .find_map(|l| l.strip_prefix("CapEff:"))
        .and_then(|hex| u64::from_str_radix(hex.trim(), 16).ok())
        .unwrap_or(0);
    let has = |cap: u32| effective & (1 << cap) != 0;
    if has(CAP_NET_ADMIN) && has(CAP_SYS_ADMIN) {
        Ok(())
    } else {
        Err(Error::NotRoot)
    }
}

/// An isolated test network: a bridge in the root namespace and hosts in their own
/// network namespaces. Everything it created is removed on drop, including processes
/// still running inside its namespaces.
#[derive(Debug)]
pub struct Lab {
    prefix: String,
    subnet: u8,
    bridge: String,
    hosts: Mutex<Vec<NetnsHost>>,
}

/// What [`Lab::cleanup_stale`] removed.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct StaleCleanup {
    /// Namespaces deleted.
    pub namespaces: Vec<String>,
    /// Interfaces deleted.
    pub links: Vec<String>,
}

impl Lab {
    /// Creates a lab: claims a free subnet, creates and addresses the bridge. The
    /// namespace names of its hosts start with `ptl-<pid>-<seq>-<name_prefix>-`, so
    /// labs of parallel tests never collide. The first lab of a process first removes
    /// what crashed earlier runs left behind ([`Lab::cleanup_stale`]).
    pub fn new(name_prefix: &str) -> Result<Lab> {
        validate_name(name_prefix)?;
        check_privileges()?;
        static STALE: Once = Once::new();
        STALE.call_once(|| {
            if let Err(e) = Lab::cleanup_stale() {
                eprintln!("portolan-testkit: cannot clean up stale labs: {e}");
            }
        });
        install_safety_routes()?;
        let seq = LAB_SEQ.fetch_add(1, Ordering::Relaxed);
        let prefix = format!("{FAMILY}-{}-{seq}-{name_prefix}", std::process::id());
        let subnet = claim_subnet()?;
        // From here on, drop removes the bridge whatever fails next.
        let lab = Lab {
            prefix,
            subnet,
            bridge: format!("{FAMILY}br{subnet}"),
            hosts: Mutex::new(Vec::new()),
        };
        let bridge = lab.bridge.as_str();
        ip(["link", "set", "dev", bridge, "alias", &own_alias()])?;
        ip([
            "addr",
            "add",
            &format!("{}/24", lab.bridge_ipv4()),
            "dev",
            bridge,
        ])?;
        ip([
            "addr",
            "add",
            &format!("{}/64", lab.bridge_ipv6()),
            "dev",
            bridge,
            "nodad",
        ])?;
        ip(["link", "set", "dev", bridge, "up"])?;
        Ok(lab)
    }

    /// Adds a host: namespace `<prefix>-<name>` with `lo` up and `eth0` addressed
    /// `10.77.N.x/24` and `fd77:N::x/64` (usable at once: no duplicate address
    /// detection), cabled to the bridge. `x` counts from 2 in the order hosts are added.
    pub fn add_host(&self, name: &str) -> Result<NetnsHost> {
        validate_name(name)?;
        let mut hosts = self.hosts.lock().unwrap_or_else(|e| e.into_inner());
        if hosts.iter().any(|h| h.name == name) {
            return Err(Error::DuplicateHost {
                lab: self.prefix.clone(),
                name: name.to_string(),
            });
        }
        let index = u8::try_from(hosts.len() + 2)
            .ok()
            .filter(|i| *i <= 254)
            .ok_or_else(|| Error::LabFull(self.prefix.clone()))?;
        let host = NetnsHost {
            name: name.to_string(),
            netns: format!("{}-{name}", self.prefix),
            ipv4: Ipv4Addr::new(10, 77, self.subnet, index),
            ipv6: ula(self.subnet, index),
            veth: format!("{FAMILY}{}h{index}", self.subnet),
        };
        ip(["netns", "add", &host.netns])?;
        // Recorded before it is complete, so that drop removes whatever was created.
        hosts.push(host.clone());
        drop(hosts);
        let ns = host.netns.as_str();
        ip([
            "link", "add", &host.veth, "type", "veth", "peer", "name", "eth0", "netns", ns,
        ])?;
        ip([
            "link",
            "set",
            "dev",
            &host.veth,
            "alias",
            &own_alias(),
            "addrgenmode",
            "none",
            "master",
            &self.bridge,
            "up",
        ])?;
        ip(["-n", ns, "link", "set", "dev", "lo", "up"])?;
        ip([
            "-n",
            ns,
            "addr",
            "add",
            &format!("{}/24", host.ipv4),
            "dev",
            "eth0",
        ])?;
        ip([
            "-n",
            ns,
            "addr",
            "add",
            &format!("{}/64", host.ipv6),
            "dev",
            "eth0",
            "nodad",
        ])?;
        ip(["-n", ns, "link", "set", "dev", "eth0", "up"])?;
        Ok(host)
    }

    /// The hosts added so far.
    pub fn hosts(&self) -> Vec<NetnsHost> {
        self.hosts.lock().unwrap_or_else(|e| e.into_inner()).clone()
    }

    /// The subnet index `N`.
    pub fn subnet(&self) -> u8 {
        self.subnet
    }

    /// `ptl-<pid>-<seq>-<name_prefix>`, the start of every namespace name of the lab.
    pub fn prefix(&self) -> &str {
        &self.prefix
    }

    /// The bridge's name (`ptlbrN`), in the root namespace.
    pub fn bridge(&self) -> &str {
        &self.bridge
    }

    /// The bridge's IPv4 address `10.77.N.1`: the root namespace as hosts see it.
    pub fn bridge_ipv4(&self) -> Ipv4Addr {
        Ipv4Addr::new(10, 77, self.subnet, 1)
    }

    /// The bridge's IPv6 address `fd77:N::1`: the root namespace as hosts see it.
    pub fn bridge_ipv6(&self) -> Ipv6Addr {
        ula(self.subnet, 1)
    }

    /// Removes namespaces and interfaces that labs of dead processes left behind: the
    /// namespaces `ptl-<pid>-…` and the interfaces whose alias is
    /// `portolan-testkit pid=<pid>`, where no process `<pid>` exists any more. Processes
    /// still running inside such a namespace are killed first. (A pid reused by an
    /// unrelated process keeps its leftovers until that process exits; they are inert.)
    pub fn cleanup_stale() -> Result<StaleCleanup> {
        check_privileges()?;
        let mut removed = StaleCleanup::default();
        for netns in list_namespaces()? {
            let creator = netns
                .strip_prefix(FAMILY)
                .and_then(|rest| rest.strip_prefix('-'))
                .and_then(|rest| rest.split('-').next())
                .and_then(|pid| pid.parse::<u32>().ok());
            if let Some(pid) = creator
                && !pid_alive(pid)
            {
                kill_processes_in(&netns);
                if ip(["netns", "delete", &netns]).is_ok() {
                    removed.namespaces.push(netns);
                }
            }
        }
        let entries = std::fs::read_dir("/sys/class/net")
            .map_err(io_error("cannot list `/sys/class/net`"))?;
        let mut links: Vec<String> = entries
            .filter_map(|e| e.ok())
            .filter_map(|e| e.file_name().into_string().ok())
            .filter(|name| name.starts_with(FAMILY))
            .collect();
        // Cables before bridges, so that a bridge is empty when it goes.
        links.sort_by_key(|name| name.starts_with(&format!("{FAMILY}br")));
        for link in links {
            let alias = std::fs::read_to_string(format!("/sys/class/net/{link}/ifalias"))
                .unwrap_or_default();
            let creator = alias
                .trim()
                .strip_prefix(ALIAS_PREFIX)
                .and_then(|pid| pid.parse::<u32>().ok());
            if let Some(pid) = creator
                && !pid_alive(pid)
                && ip(["link", "delete", "dev", &link]).is_ok()
            {
                removed.links.push(link);
            }
        }
        Ok(removed)
    }
}

impl Drop for Lab {
    fn drop(&mut self) {
        let hosts = std::mem::take(self.hosts.get_mut().unwrap_or_else(|e| e.into_inner()));
        for host in &hosts {
            kill_processes_in(&host.netns);
            // Deleting the root end takes the pair with it at once, even while a process
            // somewhere still holds the namespace.
            let _ = ip(["link", "delete", "dev", &host.veth]);
            if let Err(e) = ip(["netns", "delete", &host.netns]) {
                eprintln!("portolan-testkit: {e}");
            }
        }
        if let Err(e) = ip(["link", "delete", "dev", &self.bridge]) {
            eprintln!("portolan-testkit: {e}");
        }
    }
}

/// One host of a [`Lab`]: a network namespace with `lo` and `eth0` up.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NetnsHost {
    /// The name given to [`Lab::add_host`].
    pub name: String,
    /// The namespace's name (`ptl-<pid>-<seq>-<prefix>-<name>`), for `ip netns exec`.
    pub netns: String,
    /// `10.77.N.x` on `eth0`.
    pub ipv4: Ipv4Addr,
    /// `fd77:N::x` on `eth0`.
    pub ipv6: Ipv6Addr,
    /// The root end of the host's cable, on the bridge.
    veth: String,
}

impl NetnsHost {
    /// `ip netns exec <netns> <program>`: add arguments, then run or spawn it. The program
    /// sees this host's network (and `/sys` remounted for it); files and pids are shared
    /// with the root namespace.
    pub fn command(&self, program: impl AsRef<OsStr>) -> Command {
        let mut command = Command::new("ip");
        command.args(["netns", "exec", &self.netns]).arg(program);
        command
    }

    /// [`NetnsHost::command`] for async tests.
    pub fn tokio_command(&self, program: impl AsRef<OsStr>) -> tokio::process::Command {
        tokio::process::Command::from(self.command(program))
    }

    /// Starts `program` with `args` in this host, stdin closed, stdout and stderr
    /// inherited. The process is killed when the guard drops (`ip netns exec` execs the
    /// program, so the child is the program itself).
    pub fn spawn<I, S>(&self, program: impl AsRef<OsStr>, args: I) -> Result<ChildGuard>
    where
        I: IntoIterator<Item = S>,
        S: AsRef<OsStr>,
    {
        let mut command = self.command(program);
        command.args(args).stdin(Stdio::null());
        ChildGuard::spawn(&mut command)
    }

    /// Runs `program` with `args` in this host to completion and returns its stdout; an
    /// error with its stderr when it fails.
    pub fn output<I, S>(&self, program: impl AsRef<OsStr>, args: I) -> Result<String>
    where
        I: IntoIterator<Item = S>,
        S: AsRef<OsStr>,
    {
        run(self.command(program).args(args).stdin(Stdio::null()))
    }

    /// Plugs (`true`) or unplugs (`false`) the host's cable at the bridge. Unplugged, the
    /// host keeps its addresses and sockets but its `eth0` has no carrier: nothing gets
    /// in or out, connections stall and retransmit as in a real network partition.
    pub fn set_link(&self, up: bool) -> Result<()> {
        ip([
            "link",
            "set",
            "dev",
            &self.veth,
            if up { "up" } else { "down" },
        ])
        .map(drop)
    }

    /// The sockets the kernel holds in this host, as `ss` lists them.
    pub fn sockets(&self) -> Result<Vec<SsSocket>> {
        ss_sockets(Some(&self.netns))
    }

    /// `ipv4:port`.
    pub fn ipv4_addr(&self, port: u16) -> SocketAddr {
        SocketAddr::new(IpAddr::V4(self.ipv4), port)
    }

    /// `[ipv6]:port`.
    pub fn ipv6_addr(&self, port: u16) -> SocketAddr {
        SocketAddr::new(IpAddr::V6(self.ipv6), port)
    }
}

impl fmt::Display for NetnsHost {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "host `{}` ({}, {})", self.name, self.ipv4, self.ipv6)
    }
}

/// A child process killed and reaped when dropped. Derefs to [`Child`].
#[derive(Debug)]
pub struct ChildGuard {
    child: Option<Child>,
}

impl ChildGuard {
    /// Spawns `command`.
    pub fn spawn(command: &mut Command) -> Result<ChildGuard> {
        let child = command.spawn().map_err(|source| Error::Spawn {
            command: describe(command),
            source,
        })?;
        Ok(ChildGuard { child: Some(child) })
    }

    /// Gives up the guard: the process is no longer killed on drop.
    pub fn into_inner(mut self) -> Child {
        self.child
            .take()
            .expect("the child is present until into_inner or drop")
    }
}

impl Deref for ChildGuard {
    type Target = Child;

    fn deref(&self) -> &Child {
        self.child
            .as_ref()
            .expect("the child is present until into_inner or drop")
    }
}

impl DerefMut for ChildGuard {
    fn deref_mut(&mut self) -> &mut Child {
        self.child
            .as_mut()
            .expect("the child is present until into_inner or drop")
    }
}

impl Drop for ChildGuard {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

/// `fd77:N::x` with `N` and `x` written in the same digits as in `10.77.N.x`.
fn ula(subnet: u8, index: u8) -> Ipv6Addr {
    let digits = |n: u8| u16::from_str_radix(&n.to_string(), 16).unwrap_or(0);
    Ipv6Addr::new(0xfd77, digits(subnet), 0, 0, 0, 0, 0, digits(index))
}

fn own_alias() -> String {
    format!("{ALIAS_PREFIX}{}", std::process::id())
}

fn validate_name(name: &str) -> Result<()> {
    let ok = (1..=24).contains(&name.len())
        && name
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-');
    if ok {
        Ok(())
    } else {
        Err(Error::InvalidName(name.to_string()))
    }
}

/// Claims the first subnet index whose bridge name is free and whose /24 no route of the
/// root namespace uses; the bridge created is the claim.
fn claim_subnet() -> Result<u8> {
    let routes = ip(["-o", "-4", "route", "show", "table", "all"])?
        + &ip(["-o", "-6", "route", "show", "table", "all"])?;
    let used: Vec<u8> = routes
        .lines()
        .filter_map(|line| line.split_whitespace().find(|t| t.contains('/')))
        .filter_map(subnet_of_route)
        .collect();
    for subnet in (1..=254u8).filter(|n| !used.contains(n)) {
        let bridge = format!("{FAMILY}br{subnet}");
        let created = ip([
            "link",
            "add",
            "name",
            &bridge,
            "type",
            "bridge",
            "stp_state",
            "0",
            "forward_delay",
            "0",
            "mcast_snooping",
            "0",
        ]);
        match created {
            Ok(_) => return Ok(subnet),
            Err(Error::Command { stderr, .. }) if stderr.contains("File exists") => continue,
            Err(e) => return Err(e),
        }
    }
    Err(Error::NoFreeSubnet)
}

/// The lab subnet index a route's prefix falls in: `10.77.N.…` or `fd77:N::…`, but not
/// the safety routes `10.77.0.0/16` and `fd77::/16`.
fn subnet_of_route(prefix: &str) -> Option<u8> {
    let (addr, len) = prefix.split_once('/')?;
    let len: u8 = len.parse().ok()?;
    match addr.parse::<IpAddr>().ok()? {
        IpAddr::V4(a) if len >= 24 && a.octets()[..2] == [10, 77] => Some(a.octets()[2]),
        IpAddr::V6(a) if len >= 32 && a.segments()[0] == 0xfd77 => {
            let digits = format!("{:x}", a.segments()[1]);
            digits.parse().ok()
        }
        _ => None,
    }
}

/// Installs the `unreachable` routes for the whole lab range in the root namespace, once.
fn install_safety_routes() -> Result<()> {
    for (family, range) in [("-4", "10.77.0.0/16"), ("-6", "fd77::/16")] {
        let added = ip([
            family,
            "route",
            "add",
            "unreachable",
            range,
            "metric",
            SAFETY_METRIC,
        ]);
        match added {
            Ok(_) => {}
            Err(Error::Command { stderr, .. }) if stderr.contains("File exists") => {}
            Err(e) => return Err(e),
        }
    }
    Ok(())
}

fn list_namespaces() -> Result<Vec<String>> {
    Ok(ip(["netns", "list"])?
        .lines()
        .filter_map(|l| l.split_whitespace().next())
        .map(str::to_string)
        .collect())
}

/// Kills (SIGKILL) every process in `netns`: only ever called on a lab's own namespaces,
/// whose processes the tests started.
fn kill_processes_in(netns: &str) {
    let Ok(pids) = ip(["netns", "pids", netns]) else {
        return;
    };
    let pids: Vec<&str> = pids.split_whitespace().collect();
    if !pids.is_empty() {
        let _ = run(Command::new("kill").arg("-KILL").args(&pids));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ula_uses_the_digits_of_the_ipv4_address() {
        assert_eq!(ula(12, 3).to_string(), "fd77:12::3");
        assert_eq!(ula(254, 254).to_string(), "fd77:254::254");
        assert_eq!(ula(1, 1).to_string(), "fd77:1::1");
    }

    #[test]
    fn route_prefixes_map_to_subnet_indexes() {
        assert_eq!(subnet_of_route("10.77.12.0/24"), Some(12));
        assert_eq!(subnet_of_route("10.77.3.7/32"), Some(3));
        assert_eq!(subnet_of_route("fd77:12::/64"), Some(12));
        assert_eq!(subnet_of_route("10.77.0.0/16"), None);
        assert_eq!(subnet_of_route("fd77::/16"), None);
        assert_eq!(subnet_of_route("10.0.0.0/8"), None);
        assert_eq!(subnet_of_route("192.0.2.0/24"), None);
    }

    #[test]
    fn names_are_checked() {
        assert!(validate_name("e2e-fleet").is_ok());
        assert!(validate_name("a").is_ok());
        assert!(validate_name("").is_err());
        assert!(validate_name("Upper").is_err());
        assert!(validate_name("a/b").is_err());
        assert!(validate_name(&"x".repeat(25)).is_err());
    }
}
