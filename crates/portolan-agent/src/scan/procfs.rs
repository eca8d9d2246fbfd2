//! Process attribution through `/proc`: one walk of every `/proc/<pid>/fd` per scan maps
//! socket inodes to pids, then the owning processes alone are read in detail.
//!
//! The walk is the agent's hottest loop (one `readlinkat` per open fd on the host), so it
//! lists directories with `getdents64` into reused buffers, opens `<pid>/fd` relative
//! to the `/proc` directory and reads each link into a stack buffer: no path and no
//! allocation per process or per fd.

use std::collections::HashMap;
use std::ffi::CStr;
use std::fmt;
use std::fs;
use std::io::{self, Read};
use std::mem::MaybeUninit;
use std::os::fd::{AsFd, BorrowedFd};
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};
use std::time::SystemTime;

use nix::errno::Errno;
use portolan_core::Process;
use portolan_core::limit::{cut, cut_read};
use portolan_core::process::{parse_cgroup, parse_pod_uid};
use portolan_core::wire::MAX_STRING_BYTES;
use rustix::fs::{CWD, Mode, OFlags, RawDir, openat, readlinkat_raw};

/// Longest command line kept, in bytes, marker of a cut included.
pub(crate) const MAX_COMMAND_LINE: usize = portolan_core::limit::MAX_COMMAND_LINE_BYTES;

/// Bytes of `cmdline` read: a command line of [`MAX_COMMAND_LINE`] bytes and its final NUL,
/// and one more byte, whose presence says the file holds more.
const COMMAND_LINE_READ: usize = MAX_COMMAND_LINE + 2;

/// Bytes of directory entries read per `getdents64` call (a few hundred entries).
const DIR_BUFFER: usize = 16 * 1024;

/// Bytes read of an fd's link: `socket:[18446744073709551615]` takes 29, and a longer
/// target (a file path) is not a socket.
const LINK_BUFFER: usize = 64;

/// `<pid>/fd` with its NUL: a pid directory name has at most 20 digits ([`parse_u32`]).
const FD_PATH_BUFFER: usize = 32;

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
#[derive(Default)]
pub(crate) struct FdWalker {
    /// `(inode, pid)` of every socket fd, sorted and deduplicated after [`FdWalker::walk`].
    pub(crate) owners: Vec<(u64, u32)>,
    /// `getdents64` buffer of the `/proc` listing.
    root_buffer: Vec<MaybeUninit<u8>>,
    /// `getdents64` buffer of one process's fd listing.
    fd_buffer: Vec<MaybeUninit<u8>>,
}

impl fmt::Debug for FdWalker {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("FdWalker")
            .field("owners", &self.owners.len())
            .finish_non_exhaustive()
    }
}

impl FdWalker {
    /// Walks every thread-group leader under `proc_root`. Never fails: what could not be
    /// read is reported in the outcome.
    pub(crate) fn walk(&mut self, proc_root: &Path) -> WalkOutcome {
        self.owners.clear();
        let mut outcome = WalkOutcome::default();
        let root = match open_directory(CWD, proc_root) {
            Ok(root) => root,
            Err(e) => {
                outcome.unreadable = true;
                outcome.other_error = Some(format!(
                    "cannot read `{}`: {}",
                    proc_root.display(),
                    io::Error::from(e)
                ));
                return outcome;
            }
        };
        let FdWalker {
            owners,
            root_buffer,
            fd_buffer,
        } = self;
        ensure_len(root_buffer, DIR_BUFFER);
        ensure_len(fd_buffer, DIR_BUFFER);
        let mut entries = RawDir::new(&root, root_buffer);
        while let Some(entry) = entries.next() {
            let Ok(entry) = entry else {
                // getdents64 would fail again: the listing ends here, as `ReadDir` does
                outcome.unreadable = true;
                break;
            };
            let name = entry.file_name().to_bytes();
            let Some(pid) = parse_u32(name) else {
                continue;
            };
            let fds = FdDirectory {
                proc_root,
                root: root.as_fd(),
                name,
                pid,
            };
            fds.walk(fd_buffer, owners, &mut outcome);
        }
        owners.sort_unstable();
        owners.dedup();
        outcome
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

/// `<proc_root>/<name>/fd` of one process.
struct FdDirectory<'a> {
    proc_root: &'a Path,
    root: BorrowedFd<'a>,
    /// The pid directory's name as listed.
    name: &'a [u8],
    pid: u32,
}

impl FdDirectory<'_> {
    /// Pushes `(inode, pid)` for every socket fd onto `owners`.
    fn walk(
        &self,
        buffer: &mut [MaybeUninit<u8>],
        owners: &mut Vec<(u64, u32)>,
        outcome: &mut WalkOutcome,
    ) {
        let mut path = [0u8; FD_PATH_BUFFER];
        let Some(relative) = fd_path(self.name, &mut path) else {
            return;
        };
        let fds = match open_directory(self.root, relative) {
            Ok(fds) => fds,
            Err(e) => return self.record(e, outcome),
        };
        let mut entries = RawDir::new(&fds, buffer);
        while let Some(entry) = entries.next() {
            let entry = match entry {
                Ok(entry) => entry,
                Err(e) => return self.record(e, outcome),
            };
            let fd = entry.file_name();
            if matches!(fd.to_bytes(), b"." | b"..") {
                continue;
            }
            let mut link = [MaybeUninit::<u8>::uninit(); LINK_BUFFER];
            // An fd closed since the listing is not a vanished process: ignore it.
            if let Ok((target, _)) = readlinkat_raw(&fds, fd, &mut link)
                && target.len() < LINK_BUFFER
                && let Some(inode) = socket_inode(target)
            {
                owners.push((inode, self.pid));
            }
        }
    }

    fn record(&self, e: rustix::io::Errno, outcome: &mut WalkOutcome) {
        let path = self
            .proc_root
            .join(std::ffi::OsStr::from_bytes(self.name))
            .join("fd");
        record(&io::Error::from(e), &path, outcome);
    }
}

/// Opens a directory for listing, as `opendir` does.
fn open_directory<P: rustix::path::Arg>(
    at: impl AsFd,
    path: P,
) -> rustix::io::Result<std::os::fd::OwnedFd> {
    openat(
        at,
        path,
        OFlags::RDONLY | OFlags::DIRECTORY | OFlags::CLOEXEC | OFlags::NONBLOCK,
        Mode::empty(),
    )
}

/// `<name>/fd` as a C string in `buffer`; `None` if it does not fit.
fn fd_path<'b>(name: &[u8], buffer: &'b mut [u8; FD_PATH_BUFFER]) -> Option<&'b CStr> {
    const SUFFIX: &[u8] = b"/fd\0";
    let len = name.len() + SUFFIX.len();
    buffer.get_mut(..name.len())?.copy_from_slice(name);
    buffer.get_mut(name.len()..len)?.copy_from_slice(SUFFIX);
    CStr::from_bytes_with_nul(buffer.get(..len)?).ok()
}

/// Grows a reused buffer to `len` once; later walks find it allocated.
fn ensure_len(buffer: &mut Vec<MaybeUninit<u8>>, len: usize) {
    if buffer.len() < len {
        buffer.resize(len, MaybeUninit::uninit());
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
    // Paths are bounded by the kernel (4096 bytes), but bytes that are not UTF-8 grow
    // threefold when replaced: every string sent must fit the collector's limit.
    let executable = fs::read_link(dir.join("exe"))
        .map(|p| cut(&p.to_string_lossy(), MAX_STRING_BYTES).0)
        .unwrap_or_default();
    let command_line = read_command_line(&dir.join("cmdline")).unwrap_or_default();
    let uid = fs::read(dir.join("status"))
        .ok()
        .and_then(|status| real_uid(&status));
    let cgroup = fs::read(dir.join("cgroup"))
        .map(|b| cut(&cgroup_path(&String::from_utf8_lossy(&b)), MAX_STRING_BYTES).0)
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
/// [`MAX_COMMAND_LINE`] bytes: a longer one is cut and ends with
/// [`portolan_core::limit::MARKER`].
pub(crate) fn read_command_line(path: &Path) -> io::Result<String> {
    let mut raw = Vec::new();
    fs::File::open(path)?
        .take(COMMAND_LINE_READ as u64)
        .read_to_end(&mut raw)?;
    let more_unread = raw.len() >= COMMAND_LINE_READ;
    Ok(cut_read(&command_line(&raw), MAX_COMMAND_LINE, more_unread).0)
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
    fn fd_paths_are_c_strings() {
        let mut buffer = [0u8; FD_PATH_BUFFER];
        assert_eq!(fd_path(b"123", &mut buffer), Some(c"123/fd"));
        let longest = [b'9'; 20];
        assert!(fd_path(&longest, &mut buffer).is_some());
        assert_eq!(fd_path(&[b'1'; 29], &mut buffer), None);
    }

    /// The walk finds every socket this process holds, with this pid, in sorted and
    /// deduplicated owners; the reference is `std::fs` on `/proc/self/fd`.
    #[test]
    fn real_walk_finds_every_socket_of_this_process() {
        use std::os::fd::AsRawFd;
        let listeners: Vec<std::net::TcpListener> = (0..64)
            .map(|_| std::net::TcpListener::bind("127.0.0.1:0").expect("bind"))
            .collect();
        let inodes: Vec<u64> = listeners
            .iter()
            .map(|l| {
                let link = fs::read_link(format!("/proc/self/fd/{}", l.as_raw_fd()))
                    .expect("read own fd link");
                socket_inode(link.as_os_str().as_bytes()).expect("a socket link")
            })
            .collect();
        let mut walker = FdWalker::default();
        for _ in 0..2 {
            let outcome = walker.walk(Path::new("/proc"));
            assert!(outcome.other_error.is_none(), "{outcome:?}");
            let me = std::process::id();
            for inode in &inodes {
                assert!(
                    walker.pids_of(*inode).any(|pid| pid == me),
                    "socket:[{inode}] not attributed to {me}"
                );
            }
            assert!(walker.owners.windows(2).all(|w| w[0] < w[1]));
        }
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
