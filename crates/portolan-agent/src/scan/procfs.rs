//! Process attribution through `/proc`: one walk of every `/proc/<pid>/fd` per scan maps
//! socket inodes to pids, then the owning processes alone are read in detail.

use std::collections::HashMap;
use std::fs;
use std::io::{self, Read};
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};
use std::time::SystemTime;

use nix::errno::Errno;
use portolan_core::Process;
use portolan_core::process::{parse_cgroup, parse_pod_uid};

/// Longest command line kept, in bytes.
pub(crate) const MAX_COMMAND_LINE: u64 = 4096;

/// What one walk of `/proc/*/fd` saw besides the inode → pid pairs.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub(crate) struct WalkOutcome {
    /// Some `/proc/<pid>/fd` (or `/proc` itself) could not be read.
    pub(crate) unreadable: bool,
    /// Some process vanished during the walk.
    pub(crate) vanished: bool,
    /// First error that was neither a permission problem nor a vanished process, for the
    /// scan's warnings.
    pub(crate) other_error: Option<String>,
}

/// Walks `/proc/<pid>/fd` of every process; reuses its buffers from scan to scan.
#[derive(Debug, Default)]
pub(crate) struct FdWalker {
    /// `(inode, pid)` of every socket fd, sorted and deduplicated after [`FdWalker::walk`].
    pub(crate) owners: Vec<(u64, u32)>,
    path: PathBuf,
}

impl FdWalker {
    /// Walks every thread-group leader under `proc_root`. Never fails: what could not be
    /// read is reported in the outcome.
    pub(crate) fn walk(&mut self, proc_root: &Path) -> WalkOutcome {
        self.owners.clear();
        let mut outcome = WalkOutcome::default();
        let entries = match fs::read_dir(proc_root) {
            Ok(entries) => entries,
            Err(e) => {
                outcome.unreadable = true;
                outcome.other_error = Some(format!("cannot read `{}`: {e}", proc_root.display()));
                return outcome;
            }
        };
        for entry in entries {
            let Ok(entry) = entry else {
                outcome.unreadable = true;
                continue;
            };
            let name = entry.file_name();
            let Some(pid) = parse_u32(name.as_bytes()) else {
                continue;
            };
            self.path.clear();
            self.path.push(proc_root);
            self.path.push(&name);
            self.path.push("fd");
            self.walk_fds(pid, &mut outcome);
        }
        self.owners.sort_unstable();
        self.owners.dedup();
        outcome
    }

    /// Reads the fd directory at `self.path`.
    fn walk_fds(&mut self, pid: u32, outcome: &mut WalkOutcome) {
        let fds = match fs::read_dir(&self.path) {
            Ok(fds) => fds,
            Err(e) => {
                record(&e, &self.path, outcome);
                return;
            }
        };
        for fd in fds {
            let fd = match fd {
                Ok(fd) => fd,
                Err(e) => {
                    record(&e, &self.path, outcome);
                    return;
                }
            };
            self.path.push(fd.file_name());
            // An fd closed since the listing is not a vanished process: ignore it.
            if let Ok(target) = fs::read_link(&self.path)
                && let Some(inode) = socket_inode(target.as_os_str().as_bytes())
            {
                self.owners.push((inode, pid));
            }
            self.path.pop();
        }
    }

    /// Pids holding `inode`, in ascending order.
    pub(crate) fn pids_of(&self, inode: u64) -> impl Iterator<Item = u32> + '_ {
        let start = self.owners.partition_point(|(i, _)| *i < inode);
        self.owners[start..]
            .iter()
            .take_while(move |(i, _)| *i == inode)
            .map(|(_, pid)| *pid)
    }
}

pub(crate) fn record(e: &io::Error, path: &Path, outcome: &mut WalkOutcome) {
    match e.raw_os_error().map(Errno::from_raw) {
        Some(Errno::ENOENT | Errno::ESRCH) => outcome.vanished = true,
        Some(Errno::EACCES | Errno::EPERM) => outcome.unreadable = true,
        _ => {
            outcome.unreadable = true;
            if outcome.other_error.is_none() {
                outcome.other_error = Some(format!("cannot read `{}`: {e}", path.display()));
            }
        }
    }
}

/// `socket:[12345]` → 12345.
pub(crate) fn socket_inode(link: &[u8]) -> Option<u64> {
    let digits = link.strip_prefix(b"socket:[")?.strip_suffix(b"]")?;
    parse_u64(digits)
}

fn parse_u64(digits: &[u8]) -> Option<u64> {
    if digits.is_empty() || digits.len() > 20 {
        return None;
    }
    let mut n: u64 = 0;
    for &b in digits {
        if !b.is_ascii_digit() {
            return None;
        }
        n = n.checked_mul(10)?.checked_add(u64::from(b - b'0'))?;
    }
    Some(n)
}

/// A pid directory name.
pub(crate) fn parse_u32(digits: &[u8]) -> Option<u32> {
    parse_u64(digits).and_then(|n| u32::try_from(n).ok())
}

/// Reads what the scan reports about one process. Fields that cannot be read (the process
/// exited, or belongs to another user) stay empty.
pub(crate) fn read_process(proc_root: &Path, pid: u32, users: &Users) -> Process {
    let dir = proc_root.join(pid.to_string());
    let name = fs::read(dir.join("comm"))
        .map(|b| String::from_utf8_lossy(trim_newline(&b)).into_owned())
        .unwrap_or_default();
    let executable = fs::read_link(dir.join("exe"))
        .map(|p| p.to_string_lossy().into_owned())
        .unwrap_or_default();
    let command_line = read_command_line(&dir.join("cmdline")).unwrap_or_default();
    let uid = fs::read(dir.join("status"))
        .ok()
        .and_then(|status| real_uid(&status));
    let cgroup = fs::read(dir.join("cgroup"))
        .map(|b| cgroup_path(&String::from_utf8_lossy(&b)))
        .unwrap_or_default();
    let (systemd_unit, container_id) = parse_cgroup(&cgroup);
    let pod_uid = parse_pod_uid(&cgroup);
    Process {
        pid,
        name,
        executable,
        command_line,
        uid: uid.unwrap_or_default(),
        user: uid.map(|uid| users.name(uid)).unwrap_or_default(),
        systemd_unit,
        container_id,
        cgroup,
        pod_uid,
        pod_name: String::new(),
        pod_namespace: String::new(),
    }
}

fn trim_newline(b: &[u8]) -> &[u8] {
    b.strip_suffix(b"\n").unwrap_or(b)
}

/// `/proc/<pid>/cmdline`, NUL-separated arguments joined by spaces, at most
/// [`MAX_COMMAND_LINE`] bytes.
fn read_command_line(path: &Path) -> io::Result<String> {
    let mut raw = Vec::new();
    fs::File::open(path)?
        .take(MAX_COMMAND_LINE)
        .read_to_end(&mut raw)?;
    Ok(command_line(&raw))
}

pub(crate) fn command_line(raw: &[u8]) -> String {
    let trimmed = match raw.iter().rposition(|b| *b != 0) {
        Some(last) => &raw[..=last],
        None => &[],
    };
    let spaced: Vec<u8> = trimmed
        .iter()
        .map(|b| if *b == 0 { b' ' } else { *b })
        .collect();
    String::from_utf8_lossy(&spaced).into_owned()
}

/// The real uid from `/proc/<pid>/status` (`Uid:\t<real>\t<effective>\t…`).
pub(crate) fn real_uid(status: &[u8]) -> Option<u32> {
    status
        .split(|b| *b == b'\n')
        .find_map(|line| line.strip_prefix(b"Uid:"))
        .and_then(|rest| {
            rest.split(|b| b.is_ascii_whitespace())
                .find(|f| !f.is_empty())
        })
        .and_then(parse_u32)
}

/// The cgroup path from `/proc/<pid>/cgroup`: the v2 line `0::/path`, else the path of
/// the first (v1) line.
pub(crate) fn cgroup_path(file: &str) -> String {
    if let Some(path) = file.lines().find_map(|l| l.strip_prefix("0::")) {
        return path.to_string();
    }
    file.lines()
        .next()
        .and_then(|l| l.splitn(3, ':').nth(2))
        .unwrap_or_default()
        .to_string()
}

/// User names by uid from a passwd file, read again only when the file changed.
#[derive(Debug)]
pub(crate) struct Users {
    path: PathBuf,
    modified: Option<SystemTime>,
    names: HashMap<u32, String>,
}

impl Users {
    pub(crate) fn new(path: PathBuf) -> Users {
        Users {
            path,
            modified: None,
            names: HashMap::new(),
        }
    }

    /// Re-reads the passwd file if its modification time changed since the last read.
    pub(crate) fn refresh(&mut self) {
        let modified = fs::metadata(&self.path).and_then(|m| m.modified()).ok();
        if modified.is_some() && modified == self.modified {
            return;
        }
        self.modified = modified;
        self.names = fs::read(&self.path)
            .map(|b| parse_passwd(&String::from_utf8_lossy(&b)))
            .unwrap_or_default();
    }

    /// The user name of `uid`, or the uid as a string when the passwd file does not know it.
    pub(crate) fn name(&self, uid: u32) -> String {
        self.names
            .get(&uid)
            .cloned()
            .unwrap_or_else(|| uid.to_string())
    }
}

/// `name:x:uid:gid:…` lines; the first name of a uid wins, as with `getpwuid`.
pub(crate) fn parse_passwd(file: &str) -> HashMap<u32, String> {
    let mut names = HashMap::new();
    for line in file.lines() {
        let mut fields = line.split(':');
        let (Some(name), Some(_), Some(uid)) = (fields.next(), fields.next(), fields.next()) else {
            continue;
        };
        if name.is_empty() || name.starts_with('#') {
            continue;
        }
        if let Ok(uid) = uid.parse::<u32>() {
            names.entry(uid).or_insert_with(|| name.to_string());
        }
    }
    names
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn socket_links() {
        assert_eq!(socket_inode(b"socket:[123]"), Some(123));
        assert_eq!(
            socket_inode(b"socket:[18446744073709551615]"),
            Some(u64::MAX)
        );
        assert_eq!(socket_inode(b"socket:[18446744073709551616]"), None);
        assert_eq!(socket_inode(b"socket:[]"), None);
        assert_eq!(socket_inode(b"socket:[12a]"), None);
        assert_eq!(socket_inode(b"pipe:[123]"), None);
        assert_eq!(socket_inode(b"/dev/null"), None);
        assert_eq!(socket_inode(b"anon_inode:[eventfd]"), None);
    }

    #[test]
    fn command_lines() {
        assert_eq!(command_line(b"nginx: master\0"), "nginx: master");
        assert_eq!(
            command_line(b"/usr/bin/python3\0-m\0http.server\0\0"),
            "/usr/bin/python3 -m http.server"
        );
        assert_eq!(command_line(b""), "");
        assert_eq!(command_line(b"\0\0"), "");
    }

    #[test]
    fn status_uid_is_the_real_one() {
        let status = b"Name:\tsshd\nUmask:\t0022\nState:\tS (sleeping)\nUid:\t1000\t0\t0\t0\nGid:\t0\t0\t0\t0\n";
        assert_eq!(real_uid(status), Some(1000));
        assert_eq!(real_uid(b"Name:\tx\n"), None);
    }

    #[test]
    fn cgroup_v2_then_v1() {
        assert_eq!(
            cgroup_path("0::/system.slice/nginx.service\n"),
            "/system.slice/nginx.service"
        );
        assert_eq!(
            cgroup_path("12:pids:/docker/abc\n11:cpu:/docker/abc\n0::/\n"),
            "/"
        );
        assert_eq!(
            cgroup_path("12:pids:/docker/abc\n11:cpu:/x\n"),
            "/docker/abc"
        );
        assert_eq!(cgroup_path("1:name=systemd:/a:b\n"), "/a:b");
        assert_eq!(cgroup_path(""), "");
    }

    #[test]
    fn passwd_first_name_wins_and_junk_is_skipped() {
        let names = parse_passwd(
            "root:x:0:0:root:/root:/bin/bash\ntoor:x:0:0::/:/bin/sh\n# comment\nbroken\nweb:x:33:33::/var/www:/usr/sbin/nologin\n",
        );
        assert_eq!(names.get(&0).map(String::as_str), Some("root"));
        assert_eq!(names.get(&33).map(String::as_str), Some("web"));
        assert_eq!(names.len(), 2);
    }
}
