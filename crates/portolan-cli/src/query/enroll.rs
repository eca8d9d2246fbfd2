//! Enrollment's admin verbs: `portolan token create|list|revoke`, `portolan keys`,
//! `portolan approve`, `portolan deny`, `portolan retire`.

use std::io::Write;

use anyhow::{Context as _, Result};
use clap::{Args, Subcommand};
use portolan_cli::config::Settings;
use portolan_cli::output::{self, Context};
use portolan_cli::rows::enrollment::{HostKeyRow, TokenRow};
use portolan_cli::rows::parse_labels_text;
use portolan_cli::when;
use portolan_proto::v1 as pb;
use portolan_proto::v1::enrollment_service_client::EnrollmentServiceClient;

use super::{call, connect_channel};
use crate::usage::usage;

/// `portolan token …`.
#[derive(Debug, Args)]
pub struct TokenArgs {
    #[command(subcommand)]
    pub command: TokenCommand,
}

/// The token verbs.
#[derive(Debug, Subcommand)]
pub enum TokenCommand {
    /// Create a bootstrap token; prints it once (only its hash is stored).
    #[command(after_help = "\
Examples:
  portolan token create --host 'web-*' --uses 50 --ttl 7d --label env=prod
  portolan token create --description 'autoscaled node pool' --ttl 365d

Give the printed token to agents (`[enrollment] token_file`, or the chart's token Secret).
An agent with the token and the CA enrols by itself: it makes its key on the host and gets
a short-lived certificate for its host_id. --uses counts host keys bound; a host that
enrols again with its bound key spends none. An admin certificate is needed.")]
    Create(CreateArgs),
    /// List tokens (never their secrets), with their uses.
    List,
    /// Revoke a token: no agent enrols with it again (enrolled hosts keep renewing).
    Revoke {
        /// The token's id (the part before the `.`).
        id: String,
    },
}

/// `portolan token create`.
#[derive(Debug, Args)]
pub struct CreateArgs {
    /// A host_id pattern the token admits, `*` for any run of characters (repeatable;
    /// none: any host_id).
    #[arg(long = "host", value_name = "PATTERN")]
    hosts: Vec<String>,
    /// A label every host enrolled with it carries, `key=value` (repeatable).
    #[arg(long = "label", value_name = "KEY=VALUE")]
    labels: Vec<String>,
    /// How long the token admits new hosts (24h, 7d; at most 366d).
    #[arg(long, value_name = "DURATION", default_value = "24h")]
    ttl: String,
    /// How many host keys it may bind (0: unlimited).
    #[arg(long, value_name = "N", default_value_t = 0)]
    uses: u32,
    /// What it is for.
    #[arg(long, value_name = "TEXT", default_value = "")]
    description: String,
}

/// `portolan keys [HOST] [--state S]`.
#[derive(Debug, Args)]
#[command(after_help = "\
Examples:
  portolan keys --state pending
  portolan keys web-1 -o wide

Every key an agent enrolled with: `bound` (the host's key), `pending` (waits for
`portolan approve`), `denied`, `superseded` (another key was approved) and `retired`.")]
pub struct KeysArgs {
    /// Only this host's keys.
    host_id: Option<String>,
    /// Only keys in this state.
    #[arg(long, value_name = "STATE")]
    state: Option<String>,
}

/// `portolan approve|deny HOST [--key-id PREFIX]`.
#[derive(Debug, Args)]
#[command(after_help = "\
Example:
  portolan approve web-1 --key-id 3f2a9c0d

The key is named by the start of its SHA-256 (`portolan keys HOST --state pending`); it
may be left out when the host has one pending key. Approving makes it the host's key: a
key bound before is superseded and its certificates refused. An admin certificate is
needed.")]
pub struct DecideArgs {
    /// The host.
    host_id: String,
    /// The start of the pending key's SHA-256.
    #[arg(long, value_name = "PREFIX", default_value = "")]
    key_id: String,
}

/// `portolan retire HOST`.
#[derive(Debug, Args)]
#[command(after_help = "\
Example:
  portolan retire web-1

Retiring a host refuses its certificates on every collector and ends its streams, removes
its current sockets and flows (its findings resolve at the next evaluation), and keeps its
history. Its host_id is free to enrol again with a token. An admin certificate is needed.")]
pub struct RetireArgs {
    /// The host.
    host_id: String,
}

async fn client(settings: &Settings) -> Result<EnrollmentServiceClient<tonic::transport::Channel>> {
    Ok(EnrollmentServiceClient::new(
        connect_channel(settings).await?,
    ))
}

/// Runs `portolan token …`.
pub async fn token(
    settings: &Settings,
    ctx: &Context,
    args: TokenArgs,
    out: &mut dyn Write,
) -> Result<bool> {
    let mut client = client(settings).await?;
    match args.command {
        TokenCommand::Create(args) => {
            let labels = parse_labels_text(&args.labels.join(","))
                .map_err(|e| usage(format!("--label: {e}")))?;
            let ttl = when::parse_duration(&args.ttl).map_err(|e| usage(format!("--ttl: {e}")))?;
            let answer = call(
                client
                    .create_token(pb::CreateTokenRequest {
                        host_patterns: args.hosts,
                        labels: labels.into_iter().collect(),
                        ttl_seconds: ttl.as_secs(),
                        max_uses: args.uses,
                        description: args.description,
                    })
                    .await,
                settings,
            )?;
            let token = answer
                .token
                .context("the collector answered without the token")?;
            // The secret alone on stdout, so that `$(portolan token create …)` is the
            // token; what it admits on stderr.
            writeln!(out, "{}", answer.secret)?;
            let row = TokenRow::from(&token);
            eprintln!(
                "token {} admits {} for {} use(s), until {}; it is shown once",
                row.id,
                if row.host_patterns.is_empty() {
                    "any host_id".to_owned()
                } else {
                    row.host_patterns.join(", ")
                },
                if row.max_uses == 0 {
                    "unlimited".to_owned()
                } else {
                    row.max_uses.to_string()
                },
                ctx.instant(row.expires_unix)
            );
            Ok(true)
        }
        TokenCommand::List => {
            let answer = call(client.list_tokens(pb::ListTokensRequest {}).await, settings)?;
            let rows: Vec<TokenRow> = answer.tokens.iter().map(TokenRow::from).collect();
            output::write_list(out, ctx, &rows)?;
            Ok(!rows.is_empty())
        }
        TokenCommand::Revoke { id } => {
            let answer = call(
                client.revoke_token(pb::RevokeTokenRequest { id }).await,
                settings,
            )?;
            let token = answer
                .token
                .context("the collector answered without the token")?;
            output::write_one(out, ctx, &TokenRow::from(&token))?;
            Ok(true)
        }
    }
}

/// Runs `portolan keys`.
pub async fn keys(
    settings: &Settings,
    ctx: &Context,
    args: KeysArgs,
    out: &mut dyn Write,
) -> Result<bool> {
    let answer = call(
        client(settings)
            .await?
            .list_host_keys(pb::ListHostKeysRequest {
                host_id: args.host_id.unwrap_or_default(),
                state: args.state.unwrap_or_default(),
            })
            .await,
        settings,
    )?;
    let rows: Vec<HostKeyRow> = answer.keys.iter().map(HostKeyRow::from).collect();
    output::write_list(out, ctx, &rows)?;
    Ok(!rows.is_empty())
}

/// Runs `portolan approve` (`approve` true) or `portolan deny`.
pub async fn decide(
    settings: &Settings,
    ctx: &Context,
    args: DecideArgs,
    approve: bool,
    out: &mut dyn Write,
) -> Result<bool> {
    let mut client = client(settings).await?;
    let key = if approve {
        call(
            client
                .approve_host(pb::ApproveHostRequest {
                    host_id: args.host_id,
                    key_sha256: args.key_id,
                })
                .await,
            settings,
        )?
        .key
    } else {
        call(
            client
                .deny_host(pb::DenyHostRequest {
                    host_id: args.host_id,
                    key_sha256: args.key_id,
                })
                .await,
            settings,
        )?
        .key
    };
    let key = key.context("the collector answered without the key")?;
    output::write_one(out, ctx, &HostKeyRow::from(&key))?;
    Ok(true)
}

/// Runs `portolan retire`.
pub async fn retire(
    settings: &Settings,
    ctx: &Context,
    args: RetireArgs,
    out: &mut dyn Write,
) -> Result<bool> {
    let answer = call(
        client(settings)
            .await?
            .retire_host(pb::RetireHostRequest {
                host_id: args.host_id.clone(),
            })
            .await,
        settings,
    )?;
    let rows: Vec<HostKeyRow> = answer.keys.iter().map(HostKeyRow::from).collect();
    output::write_list(out, ctx, &rows)?;
    eprintln!(
        "retired {}: {} current socket and flow rows removed, history kept",
        args.host_id, answer.current_rows_removed
    );
    Ok(true)
}
