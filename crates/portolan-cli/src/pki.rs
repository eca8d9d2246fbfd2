//! `portolan pki`: a development CA that issues collector, agent and operator certificates.

use std::io::{self, Write};
use std::net::IpAddr;
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime};

use anyhow::Context as _;
use clap::{Args, Subcommand, ValueEnum};
use portolan_tls::OperatorRole;
use portolan_tls::pki::{Ca, IssuedCert, PkiError, WriteMode};

use crate::usage::usage;

/// File name (without extension) of the CA certificate and key in the PKI directory.
const CA_NAME: &str = "ca";

#[derive(Debug, Args)]
#[command(after_help = "\
Example (a CA, one certificate of each kind, then a CRL revoking one):
  portolan pki init --dir ./pki
  portolan pki issue-collector --name collector-0 --dns collector.example.net --dir ./pki
  portolan pki issue-agent --host-id web-1 --dir ./pki
  portolan pki issue-operator --name alice --role reader --dir ./pki
  portolan pki crl --revoke-cert ./pki/agent-web-1.pem --dir ./pki")]
pub struct PkiArgs {
    #[command(subcommand)]
    command: PkiCommand,
}

#[derive(Debug, Subcommand)]
enum PkiCommand {
    /// Create a CA: writes `ca.pem` (give it to every participant as `tls.ca`) and `ca.key`.
    #[command(after_help = "\
Example:
  portolan pki init --dir ./pki

Writes ./pki/ca.pem and ./pki/ca.key (mode 0600). Refuses to replace an existing CA
unless --force is given: certificates issued by the old CA stop being trusted.")]
    Init(InitArgs),

    /// Issue a collector (server) certificate, for the names agents use to reach it.
    #[command(after_help = "\
Example:
  portolan pki issue-collector --name c0 --dns collector.example --ip 10.0.0.5 --validity 30d

Writes ./pki/collector-c0.pem and ./pki/collector-c0.key, with the identity
spiffe://portolan/collector/c0. Agents verify the collector against the host of their
endpoint, so list every DNS name and IP address they use. Without --dns and --ip the
certificate is for localhost, 127.0.0.1 and ::1.")]
    IssueCollector(IssueCollectorArgs),

    /// Issue an agent (client) certificate for one host.
    #[command(after_help = "\
Example:
  portolan pki issue-agent --host-id \"$(cat /etc/machine-id)\" --validity 90d

Writes ./pki/agent-<host-id>.pem and ./pki/agent-<host-id>.key, with the identity
spiffe://portolan/host/<host-id>. The collector refuses a stream whose host_id differs
from the certificate's.")]
    IssueAgent(IssueAgentArgs),

    /// Issue the enrollment signer: an intermediate CA the collector signs agent certificates with.
    #[command(after_help = "\
Example:
  portolan pki issue-signer --name s1 --validity 1y

Writes ./pki/signer-s1.pem and ./pki/signer-s1.key. Give both to the collectors
(`[enrollment] signer_cert` and `signer_key`); agents then enrol with a token
(`portolan token create`). The signer may sign agent certificates only: it cannot make
another CA (path length 0) nor any certificate a server could use (extended key usage
clientAuth only), and collectors refuse operator or collector identities it signed.
Rotate it by issuing a new one and replacing the collectors' files: they reload them.")]
    IssueSigner(IssueSignerArgs),

    /// Issue an operator (client) certificate for the query API.
    #[command(after_help = "\
Example:
  portolan pki issue-operator --name alice --role reader

Writes ./pki/operator-alice.pem and ./pki/operator-alice.key, with the identity
spiffe://portolan/operator/reader/alice.")]
    IssueOperator(IssueOperatorArgs),

    /// Write or update the CA's certificate revocation list (CRL) for the collector's `tls.crls`.
    #[command(after_help = "\
Example:
  portolan pki crl --revoke-cert ./pki/agent-web-1.pem --revoke 3a:f2:09 --next-update 7d

Writes ./pki/crl.pem, signed by ./pki/ca.pem. An existing CRL at --out is updated: its
entries are kept, the new serials are added, and its CRL number goes up by one. Run it with
no --revoke before --next-update passes to publish a fresh CRL: the collector warns about a
CRL past its next update (and keeps enforcing it). The file is replaced in one rename, so
a collector reading it (`tls.crls`) never sees half a CRL; it applies within a second.")]
    Crl(CrlArgs),
}

/// Options every verb shares.
#[derive(Debug, Args)]
struct DirArgs {
    /// Directory holding `ca.pem` and `ca.key`, where certificates are written.
    #[arg(long, value_name = "DIR", default_value = "./pki")]
    dir: PathBuf,

    /// Replace existing files.
    #[arg(long)]
    force: bool,
}

/// How long an issued certificate is valid.
#[derive(Debug, Args)]
struct ValidityArgs {
    /// How long the certificate is valid, e.g. `90d`, `12h`, `1h 30m`.
    #[arg(long, value_name = "DURATION", default_value = "90d", value_parser = parse_validity)]
    validity: Duration,
}

#[derive(Debug, Args)]
struct InitArgs {
    #[command(flatten)]
    dir: DirArgs,

    /// How long the CA is valid.
    #[arg(long, value_name = "DURATION", default_value = "10y", value_parser = parse_validity)]
    validity: Duration,

    /// Common name of the CA certificate.
    #[arg(long, value_name = "NAME", default_value = "Portolan development CA")]
    common_name: String,
}

#[derive(Debug, Args)]
struct IssueCollectorArgs {
    /// The collector's name (`[A-Za-z0-9._-]`, at most 128 characters).
    #[arg(long, value_name = "NAME")]
    name: String,

    /// A DNS name agents use to reach the collector (repeatable).
    #[arg(long = "dns", value_name = "NAME")]
    dns: Vec<String>,

    /// An IP address agents use to reach the collector (repeatable).
    #[arg(long = "ip", value_name = "IP")]
    ips: Vec<IpAddr>,

    #[command(flatten)]
    dir: DirArgs,

    #[command(flatten)]
    validity: ValidityArgs,
}

#[derive(Debug, Args)]
struct IssueSignerArgs {
    /// The signer's name (`[A-Za-z0-9._-]`), e.g. the year or a rotation number.
    #[arg(long, value_name = "NAME")]
    name: String,

    #[command(flatten)]
    dir: DirArgs,

    /// How long the signer is valid (no certificate it signs outlives it).
    #[arg(long, value_name = "DURATION", default_value = "1y", value_parser = parse_validity)]
    validity: Duration,
}

#[derive(Debug, Args)]
struct IssueAgentArgs {
    /// The host's stable id (`[A-Za-z0-9._-]`, at most 128 characters), as its agent
    /// reports it (`/etc/machine-id` by default).
    #[arg(long, value_name = "ID")]
    host_id: String,

    #[command(flatten)]
    dir: DirArgs,

    #[command(flatten)]
    validity: ValidityArgs,
}

#[derive(Debug, Args)]
struct IssueOperatorArgs {
    /// The operator's name (`[A-Za-z0-9._-]`, at most 128 characters).
    #[arg(long, value_name = "NAME")]
    name: String,

    /// What the operator may do.
    #[arg(long, value_enum)]
    role: Role,

    #[command(flatten)]
    dir: DirArgs,

    #[command(flatten)]
    validity: ValidityArgs,
}

#[derive(Debug, Args)]
struct CrlArgs {
    /// Serial of a certificate to revoke, in hexadecimal as `portolan pki issue-*` and
    /// `openssl x509 -noout -serial` print it (repeatable).
    #[arg(long = "revoke", value_name = "SERIAL", value_parser = parse_serial_arg)]
    revoke: Vec<Serial>,

    /// A certificate to revoke, PEM (repeatable); it must be one this CA issued.
    #[arg(long = "revoke-cert", value_name = "CERT")]
    revoke_cert: Vec<PathBuf>,

    /// The CRL to write, and to update if it exists [default: <DIR>/crl.pem].
    #[arg(long, value_name = "FILE")]
    out: Option<PathBuf>,

    /// How long until the CRL's next update, e.g. `7d`, `12h`.
    #[arg(long, value_name = "DURATION", default_value = "7d", value_parser = parse_validity)]
    next_update: Duration,

    /// Directory holding `ca.pem` and `ca.key`.
    #[arg(long, value_name = "DIR", default_value = "./pki")]
    dir: PathBuf,
}

/// A serial to revoke, big-endian bytes.
#[derive(Debug, Clone)]
struct Serial(Vec<u8>);

fn parse_serial_arg(s: &str) -> Result<Serial, String> {
    portolan_tls::pki::parse_serial(s)
        .map(Serial)
        .map_err(|e| e.to_string())
}

/// Operator roles as the command line spells them.
#[derive(Debug, Clone, Copy, ValueEnum)]
enum Role {
    /// Read inventories, flows and findings.
    Reader,
    /// Read, and change rules and findings.
    Admin,
}

impl From<Role> for OperatorRole {
    fn from(role: Role) -> Self {
        match role {
            Role::Reader => OperatorRole::Reader,
            Role::Admin => OperatorRole::Admin,
        }
    }
}

fn parse_validity(s: &str) -> Result<Duration, String> {
    let d = humantime::parse_duration(s).map_err(|e| format!("{e} (e.g. `90d`, `12h`)"))?;
    if d < Duration::from_secs(1) {
        return Err("must be at least 1s".to_owned());
    }
    Ok(d)
}

/// Runs a `portolan pki` verb, printing each written path on `out`.
pub fn run(args: PkiArgs, out: &mut dyn Write) -> anyhow::Result<()> {
    match args.command {
        PkiCommand::Init(args) => init(args, out),
        PkiCommand::IssueCollector(args) => {
            let ca = load_ca(&args.dir.dir)?;
            let (dns, ips) = if args.dns.is_empty() && args.ips.is_empty() {
                (
                    vec!["localhost".to_owned()],
                    vec![
                        IpAddr::from([127, 0, 0, 1]),
                        IpAddr::from([0u16, 0, 0, 0, 0, 0, 0, 1]),
                    ],
                )
            } else {
                (args.dns, args.ips)
            };
            let cert = ca
                .issue_collector(&args.name, &dns, &ips, args.validity.validity)
                .map_err(pki_error)?;
            let names: Vec<String> = dns
                .iter()
                .cloned()
                .chain(ips.iter().map(IpAddr::to_string))
                .collect();
            let what = format!(
                "spiffe://portolan/collector/{} for {}",
                args.name,
                names.join(", ")
            );
            write(
                &cert,
                &args.dir,
                &format!("collector-{}", args.name),
                &what,
                out,
            )
        }
        PkiCommand::IssueSigner(args) => {
            let ca = load_ca(&args.dir.dir)?;
            if !ca.allows_intermediate() {
                return Err(usage(format!(
                    "the CA in {} allows no intermediate below it (path length 0: it was made by an older `portolan pki init`); make a new CA with `portolan pki init --force`, reissue the collectors' and operators' certificates, or issue agents' certificates by hand",
                    args.dir.dir.display()
                )));
            }
            let cert = ca
                .issue_signer(&args.name, args.validity)
                .map_err(pki_error)?;
            let what = format!(
                "enrollment signer `{}` (agent certificates only)",
                args.name
            );
            write(
                &cert,
                &args.dir,
                &format!("signer-{}", args.name),
                &what,
                out,
            )
        }
        PkiCommand::IssueAgent(args) => {
            let ca = load_ca(&args.dir.dir)?;
            let cert = ca
                .issue_agent(&args.host_id, args.validity.validity)
                .map_err(pki_error)?;
            let what = format!("spiffe://portolan/host/{}", args.host_id);
            write(
                &cert,
                &args.dir,
                &format!("agent-{}", args.host_id),
                &what,
                out,
            )
        }
        PkiCommand::IssueOperator(args) => {
            let ca = load_ca(&args.dir.dir)?;
            let role = OperatorRole::from(args.role);
            let cert = ca
                .issue_operator(&args.name, role, args.validity.validity)
                .map_err(pki_error)?;
            let what = format!("spiffe://portolan/operator/{role}/{}", args.name);
            write(
                &cert,
                &args.dir,
                &format!("operator-{}", args.name),
                &what,
                out,
            )
        }
        PkiCommand::Crl(args) => crl(args, out),
    }
}

/// Writes or updates `<dir>/crl.pem` (or `--out`).
fn crl(args: CrlArgs, out: &mut dyn Write) -> anyhow::Result<()> {
    let ca = load_ca(&args.dir)?;
    let path = args.out.unwrap_or_else(|| args.dir.join("crl.pem"));
    let previous = match std::fs::read(&path) {
        Ok(bytes) => Some(bytes),
        Err(e) if e.kind() == io::ErrorKind::NotFound => None,
        Err(e) => {
            return Err(usage(format!(
                "cannot read the existing CRL {}: {e} (check the file's owner and mode, or choose another `--out`)",
                path.display()
            )));
        }
    };
    let mut serials: Vec<Vec<u8>> = args.revoke.into_iter().map(|s| s.0).collect();
    for cert in &args.revoke_cert {
        let pem = std::fs::read_to_string(cert).map_err(|e| {
            usage(format!(
                "cannot read the certificate to revoke {}: {e}",
                cert.display()
            ))
        })?;
        let serial = ca
            .serial_of(&pem)
            .map_err(pki_error)
            .with_context(|| format!("cannot revoke {}", cert.display()))?;
        serials.push(serial);
    }
    let crl = ca
        .crl(previous.as_deref(), &serials, args.next_update)
        .map_err(pki_error)
        .with_context(|| format!("cannot write the CRL {}", path.display()))?;
    replace_file(&path, crl.pem.as_bytes())?;
    print_paths(out, &[&path])?;
    let listed = match crl.revoked.len() {
        1 => "1 revoked certificate".to_owned(),
        n => format!("{n} revoked certificates"),
    };
    eprintln!(
        "wrote CRL number {} with {listed} ({} new), next update {}",
        crl.number,
        crl.added,
        rfc3339(crl.next_update)
    );
    Ok(())
}

/// Replaces `path` with `contents` in one rename, so that a reader sees the old file or
/// the new one, never half of one.
fn replace_file(path: &Path, contents: &[u8]) -> anyhow::Result<()> {
    let file_name = path
        .file_name()
        .ok_or_else(|| usage(format!("`--out` {} names no file", path.display())))?;
    let mut tmp_name = std::ffi::OsString::from(".");
    tmp_name.push(file_name);
    tmp_name.push(format!(".{}.tmp", std::process::id()));
    let tmp = path.with_file_name(tmp_name);
    let written = std::fs::File::create(&tmp).and_then(|mut file| {
        file.write_all(contents)?;
        file.sync_all()
    });
    let renamed = written.and_then(|()| std::fs::rename(&tmp, path));
    if let Err(e) = renamed {
        let _ = std::fs::remove_file(&tmp);
        return Err(anyhow::Error::new(e).context(format!(
            "cannot write {} (check that the directory exists and is writable)",
            path.display()
        )));
    }
    Ok(())
}

fn init(args: InitArgs, out: &mut dyn Write) -> anyhow::Result<()> {
    let ca = Ca::generate_with_validity(&args.common_name, args.validity).map_err(pki_error)?;
    let written = ca
        .write_files(&args.dir.dir, CA_NAME, write_mode(&args.dir))
        .map_err(|e| match e {
            PkiError::Exists(path) => usage(format!(
                "{} exists already: a CA is there (pass `--force` to replace it; certificates it issued will no longer be trusted)",
                path.display()
            )),
            e => pki_error(e),
        })?;
    print_paths(out, &[&written.cert, &written.key])?;
    eprintln!(
        "created CA `{}`, valid until {}",
        args.common_name,
        rfc3339(ca.not_after())
    );
    Ok(())
}

/// Loads `<dir>/ca.pem` and `<dir>/ca.key`.
fn load_ca(dir: &Path) -> anyhow::Result<Ca> {
    let read = |file: &str| {
        let path = dir.join(file);
        std::fs::read_to_string(&path).map_err(|e| {
            let reason = match e.kind() {
                io::ErrorKind::NotFound => format!(
                    "no such file (create the CA first with `portolan pki init --dir {}`)",
                    dir.display()
                ),
                io::ErrorKind::PermissionDenied => {
                    "permission denied (check the file's owner and mode)".to_owned()
                }
                _ => e.to_string(),
            };
            usage(format!("cannot read {}: {reason}", path.display()))
        })
    };
    let cert = read(&format!("{CA_NAME}.pem"))?;
    let key = read(&format!("{CA_NAME}.key"))?;
    Ca::from_pem(&cert, &key)
        .map_err(pki_error)
        .with_context(|| format!("cannot use the CA in {}", dir.display()))
}

/// Writes `<dir>/<name>.pem` and `.key` and reports what was issued.
fn write(
    cert: &IssuedCert,
    dir: &DirArgs,
    name: &str,
    what: &str,
    out: &mut dyn Write,
) -> anyhow::Result<()> {
    let written = cert
        .write_files(&dir.dir, name, write_mode(dir))
        .map_err(pki_error)?;
    print_paths(out, &[&written.cert, &written.key])?;
    match cert.serial_hex() {
        // The serial is what a `tls.revoked` entry names (`serial:<hex>`).
        Some(serial) => eprintln!(
            "issued {what}, serial {serial}, valid until {}",
            rfc3339(cert.not_after)
        ),
        None => eprintln!("issued {what}, valid until {}", rfc3339(cert.not_after)),
    }
    Ok(())
}

fn write_mode(dir: &DirArgs) -> WriteMode {
    if dir.force {
        WriteMode::Overwrite
    } else {
        WriteMode::CreateNew
    }
}

fn print_paths(out: &mut dyn Write, paths: &[&Path]) -> anyhow::Result<()> {
    for path in paths {
        writeln!(out, "{}", path.display())?;
    }
    Ok(())
}

/// Errors the user fixes (bad names, existing files, an unusable CA) exit with 64.
fn pki_error(e: PkiError) -> anyhow::Error {
    match e {
        PkiError::Generate { .. } | PkiError::Write { .. } => anyhow::Error::new(e),
        e => usage(e),
    }
}

fn rfc3339(t: SystemTime) -> humantime::Rfc3339Timestamp {
    humantime::format_rfc3339_seconds(t)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn validity_parses_human_durations() {
        assert_eq!(parse_validity("90d"), Ok(Duration::from_secs(90 * 86400)));
        assert_eq!(parse_validity("1h"), Ok(Duration::from_secs(3600)));
        assert!(parse_validity("0s").is_err());
        assert!(parse_validity("soon").is_err());
    }

    #[test]
    fn cli_is_well_formed() {
        use clap::CommandFactory;
        #[derive(Debug, clap::Parser)]
        struct Probe {
            #[command(subcommand)]
            command: PkiCommand,
        }
        Probe::command().debug_assert();
    }
}
