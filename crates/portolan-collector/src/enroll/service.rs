//! `portolan.v1.EnrollmentService`: enrollment and renewal for agents, tokens and host
//! keys for admins. Who may call what is `crate::authz`'s table; this answers.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use portolan_core::enrollment::{
    Decision, KeyRecord, KeyState, Policy, TokenRule, check_token, decide,
};
use portolan_proto::v1 as pb;
use portolan_proto::v1::enrollment_service_server::EnrollmentService;
use portolan_store::Store;
use portolan_store::enrollment::{StoredHostKey, StoredToken, next_version, now_secs};
use portolan_tls::enroll::{CheckedCsr, check_csr};
use portolan_tls::peer_info;
use tonic::{Request, Response, Status};
use tracing::{info, warn};

use super::signer::SignerHandle;
use super::{Gate, tokens};
use crate::authz;
use crate::metrics;

/// A token's lifetime when the request names none.
pub const DEFAULT_TOKEN_TTL: Duration = Duration::from_secs(24 * 3600);
/// The longest lifetime a token may have.
pub const MAX_TOKEN_TTL: Duration = Duration::from_secs(366 * 24 * 3600);

/// Enrollment attempts one source address may make per second on average, and at once:
/// enough for a node pool behind one NAT address to join together, while a client that
/// guesses tokens cannot make the collector read ClickHouse at will.
const ENROLL_RATE: (u32, u32) = (10, 100);

/// What `decided_by` says when a token's rules bound a key.
const BY_TOKEN: &str = "token";
/// What `decided_by` says when a hand-issued certificate's key was adopted at renewal.
const BY_RENEWAL: &str = "renewal";

/// The enrollment service of one replica.
#[derive(Debug, Clone)]
pub struct Enrollment {
    store: Arc<Store>,
    gate: Gate,
    signer: Option<SignerHandle>,
    policy: Policy,
    lifetime: Duration,
    /// One decision at a time in this replica: a token's uses and a host's keys are read
    /// and written without another enrollment in between.
    deciding: Arc<tokio::sync::Mutex<()>>,
    /// Enrollment attempts per source address.
    attempts: crate::rate::RateLimiter,
}

impl Enrollment {
    /// The service over `store` and `gate`; `signer` is `None` when this replica does not
    /// enrol (the admin verbs still work).
    pub fn new(
        store: Arc<Store>,
        gate: Gate,
        signer: Option<SignerHandle>,
        policy: Policy,
        lifetime: Duration,
    ) -> Enrollment {
        Enrollment {
            store,
            gate,
            signer,
            policy,
            lifetime,
            deciding: Arc::new(tokio::sync::Mutex::new(())),
            attempts: crate::rate::RateLimiter::new(ENROLL_RATE.0, ENROLL_RATE.1),
        }
    }

    fn signer(&self) -> Result<Arc<portolan_tls::enroll::Signer>, Status> {
        self.signer
            .as_ref()
            .and_then(SignerHandle::current)
            .ok_or_else(|| {
                Status::failed_precondition(
                    "this collector does not enrol agents (set `[enrollment] enabled = true` with a signer from `portolan pki issue-signer`, or issue the agent's certificate with `portolan pki issue-agent`)",
                )
            })
    }

    fn store_error(e: portolan_store::StoreError) -> Status {
        metrics::global().clickhouse_errors.inc(&[]);
        Status::unavailable(format!(
            "cannot read or write enrollment state in ClickHouse: {e} (retry; the agent does by itself)"
        ))
    }

    fn sign(&self, csr: CheckedCsr, host_id: &str) -> Result<portolan_tls::enroll::Issued, Status> {
        self.signer()?
            .sign_agent(csr, host_id, self.lifetime)
            .map_err(|e| Status::internal(e.to_string()))
    }

    async fn token_rule(&self, token: &StoredToken) -> Result<TokenRule, Status> {
        let uses = self
            .store
            .enroll_token_uses()
            .await
            .map_err(Self::store_error)?;
        Ok(TokenRule {
            host_patterns: token.host_patterns.clone(),
            expires_at: token.expires_at,
            max_uses: token.max_uses,
            uses: uses.get(&token.id).copied().unwrap_or(0),
            revoked: token.revoked,
        })
    }

    async fn write_keys(&self, keys: &[StoredHostKey]) -> Result<(), Status> {
        self.store
            .write_host_keys(keys)
            .await
            .map_err(Self::store_error)?;
        self.gate.record(keys);
        Ok(())
    }

    fn new_key(
        host_id: &str,
        key_sha256: &str,
        state: KeyState,
        token: &StoredToken,
        previous: Option<&StoredHostKey>,
    ) -> StoredHostKey {
        let now = now_secs();
        StoredHostKey {
            record: KeyRecord {
                host_id: host_id.to_owned(),
                key_sha256: key_sha256.to_owned(),
                state,
                decided_at: now,
            },
            token_id: token.id.clone(),
            labels: token.labels.clone(),
            requested_at: now,
            decided_by: BY_TOKEN.to_owned(),
            version: next_version(previous.map_or(0, |p| p.version)),
        }
    }

    async fn enroll_inner(&self, req: pb::EnrollRequest) -> Result<pb::EnrollResponse, Status> {
        let host_id = req.host_id;
        portolan_tls::identity::validate_name("host_id", &host_id)
            .map_err(|e| Status::invalid_argument(e.to_string()))?;
        let (id, secret) =
            tokens::parse(&req.token).map_err(|e| Status::invalid_argument(e.to_string()))?;
        let csr = check_csr(&req.csr_der, &host_id)
            .map_err(|e| Status::invalid_argument(e.to_string()))?;
        // Refuse before taking the lock when this replica cannot sign at all.
        self.signer()?;
        let _deciding = self.deciding.lock().await;
        let token = self
            .store
            .enroll_token(id)
            .await
            .map_err(Self::store_error)?
            .filter(|t| tokens::secret_matches(secret, &t.secret_sha256))
            .ok_or_else(|| {
                Status::permission_denied(format!(
                    "the enrollment token `{id}` is unknown or its secret is wrong: check the token given to the agent (`portolan token list` shows the tokens)"
                ))
            })?;
        let rule = self.token_rule(&token).await?;
        let now = now_secs();
        let refuse = |e: &dyn std::fmt::Display| Status::permission_denied(e.to_string());
        check_token(&rule, &host_id, now, false).map_err(|e| refuse(&e))?;
        let keys = self
            .store
            .host_keys_of(&host_id)
            .await
            .map_err(Self::store_error)?;
        let records: Vec<KeyRecord> = keys.iter().map(|k| k.record.clone()).collect();
        let previous = keys.iter().find(|k| k.record.key_sha256 == csr.key_sha256);
        match decide(&host_id, &records, &csr.key_sha256, self.policy) {
            Decision::Issue { new_binding } => {
                if new_binding {
                    check_token(&rule, &host_id, now, true).map_err(|e| refuse(&e))?;
                    let bound =
                        Self::new_key(&host_id, &csr.key_sha256, KeyState::Bound, &token, previous);
                    self.write_keys(&[bound]).await?;
                }
                let key = csr.key_sha256.clone();
                let issued = self.sign(csr, &host_id)?;
                info!(host = %host_id, token = %token.id, key = %&key[..16], new_binding, serial = %issued.serial_hex, not_after = issued.not_after, "enrolled");
                metrics::global().enrollments.inc(&[("result", "issued")]);
                Ok(pb::EnrollResponse {
                    status: "issued".into(),
                    certificate_chain_pem: issued.chain_pem,
                    not_after: issued.not_after,
                    message: String::new(),
                })
            }
            Decision::Hold { new_request } => {
                if new_request {
                    check_token(&rule, &host_id, now, true).map_err(|e| refuse(&e))?;
                    let pending = Self::new_key(
                        &host_id,
                        &csr.key_sha256,
                        KeyState::Pending,
                        &token,
                        previous,
                    );
                    self.write_keys(&[pending]).await?;
                    warn!(host = %host_id, token = %token.id, key = %&csr.key_sha256[..16], "enrollment held for an admin's approval (`portolan approve`)");
                }
                metrics::global().enrollments.inc(&[("result", "pending")]);
                Ok(pb::EnrollResponse {
                    status: "pending".into(),
                    certificate_chain_pem: String::new(),
                    not_after: 0,
                    message: format!(
                        "held for an admin's approval: `portolan approve {host_id} --key-id {}`",
                        &csr.key_sha256[..16]
                    ),
                })
            }
            Decision::Refuse(why) => Err(refuse(&why)),
        }
    }

    async fn renew_inner(
        &self,
        request: Request<pb::RenewRequest>,
    ) -> Result<pb::RenewResponse, Status> {
        let caller = authz::caller(&request)?;
        let Some(host_id) = caller.identity.host_id().map(str::to_owned) else {
            return Err(Status::internal(
                "only agents may renew (authorisation table)",
            ));
        };
        let cert = peer_info(&request)
            .and_then(|p| p.cert.clone())
            .ok_or_else(|| Status::unauthenticated("no client certificate on this connection"))?;
        let csr = check_csr(&request.get_ref().csr_der, &host_id)
            .map_err(|e| Status::invalid_argument(e.to_string()))?;
        if csr.key_sha256 != cert.key_sha256 {
            return Err(Status::invalid_argument(
                "the renewal request is signed with another key than the calling certificate's: renew with the host's key (a new key enrols with a token)",
            ));
        }
        // The call passed the gate already (its key is bound, or it is a hand-issued
        // certificate of a host with no bound key): a key without a record is adopted.
        {
            let _deciding = self.deciding.lock().await;
            let keys = self
                .store
                .host_keys_of(&host_id)
                .await
                .map_err(Self::store_error)?;
            let known = keys.iter().find(|k| k.record.key_sha256 == cert.key_sha256);
            match known.map(|k| k.record.state) {
                Some(KeyState::Bound) => {}
                Some(state) => {
                    return Err(Status::permission_denied(format!(
                        "this key of host `{host_id}` is {state}: enrol the host again with a token"
                    )));
                }
                None => {
                    let now = now_secs();
                    let adopted = StoredHostKey {
                        record: KeyRecord {
                            host_id: host_id.clone(),
                            key_sha256: cert.key_sha256.clone(),
                            state: KeyState::Bound,
                            decided_at: now,
                        },
                        token_id: String::new(),
                        labels: BTreeMap::new(),
                        requested_at: now,
                        decided_by: BY_RENEWAL.to_owned(),
                        version: next_version(0),
                    };
                    self.write_keys(&[adopted]).await?;
                }
            }
        }
        let issued = self.sign(csr, &host_id)?;
        info!(host = %host_id, serial = %issued.serial_hex, not_after = issued.not_after, "renewed");
        metrics::global().enrollments.inc(&[("result", "renewed")]);
        Ok(pb::RenewResponse {
            certificate_chain_pem: issued.chain_pem,
            not_after: issued.not_after,
        })
    }

    async fn decide_key(
        &self,
        host_id: &str,
        key_prefix: &str,
        from: KeyState,
        to: KeyState,
        admin: String,
    ) -> Result<StoredHostKey, Status> {
        let _deciding = self.deciding.lock().await;
        let keys = self
            .store
            .host_keys_of(host_id)
            .await
            .map_err(Self::store_error)?;
        let candidates: Vec<&StoredHostKey> = keys
            .iter()
            .filter(|k| k.record.state == from && k.record.key_sha256.starts_with(key_prefix))
            .collect();
        let chosen = match candidates.as_slice() {
            [one] => *one,
            [] => {
                return Err(Status::not_found(format!(
                    "host `{host_id}` has no {from} key{} (`portolan keys {host_id}` lists its keys)",
                    if key_prefix.is_empty() {
                        String::new()
                    } else {
                        format!(" starting with `{key_prefix}`")
                    }
                )));
            }
            _ => {
                return Err(Status::invalid_argument(format!(
                    "host `{host_id}` has {} {from} keys: name one with `--key-id` (`portolan keys {host_id}`)",
                    candidates.len()
                )));
            }
        };
        let now = now_secs();
        let decided = |k: &StoredHostKey, state: KeyState| StoredHostKey {
            record: KeyRecord {
                state,
                decided_at: now,
                ..k.record.clone()
            },
            decided_by: admin.clone(),
            version: next_version(k.version),
            ..k.clone()
        };
        let mut writes = vec![decided(chosen, to)];
        if to == KeyState::Bound {
            // One bound key per host: approving supersedes the one bound before.
            writes.extend(
                keys.iter()
                    .filter(|k| k.record.state == KeyState::Bound)
                    .map(|k| decided(k, KeyState::Superseded)),
            );
        }
        self.write_keys(&writes).await?;
        info!(host = %host_id, key = %&chosen.record.key_sha256[..16.min(chosen.record.key_sha256.len())], %to, by = %admin, "host key decided");
        Ok(writes.swap_remove(0))
    }
    /// Retires `host_id` (`by`: who decided, an admin's identity URI or the silence
    /// policy): every key of it retired (and a retirement record for certificates issued by
    /// hand), its current state deleted. Returns the keys written and the current rows
    /// removed.
    pub async fn retire(
        &self,
        host_id: &str,
        by: &str,
    ) -> Result<(Vec<StoredHostKey>, u64), Status> {
        portolan_tls::identity::validate_name("host_id", host_id)
            .map_err(|e| Status::invalid_argument(e.to_string()))?;
        let _deciding = self.deciding.lock().await;
        let keys = self
            .store
            .host_keys_of(host_id)
            .await
            .map_err(Self::store_error)?;
        let known = !keys.is_empty()
            || self
                .store
                .host(host_id)
                .await
                .map_err(Self::store_error)?
                .is_some();
        if !known {
            return Err(Status::not_found(format!(
                "no host `{host_id}` (`portolan hosts` lists the fleet's hosts)"
            )));
        }
        let now = now_secs();
        let retire = |k: &StoredHostKey| StoredHostKey {
            record: KeyRecord {
                state: KeyState::Retired,
                decided_at: now,
                ..k.record.clone()
            },
            decided_by: by.to_owned(),
            version: next_version(k.version),
            ..k.clone()
        };
        // Every key not retired yet; then the retirement itself (the record without a key),
        // for certificates issued by hand: every one issued before now is refused.
        let mut writes: Vec<StoredHostKey> = keys
            .iter()
            .filter(|k| k.record.state != KeyState::Retired && !k.record.key_sha256.is_empty())
            .map(retire)
            .collect();
        let record = keys
            .iter()
            .find(|k| k.record.key_sha256.is_empty())
            .cloned()
            .unwrap_or_else(|| StoredHostKey {
                record: KeyRecord {
                    host_id: host_id.to_owned(),
                    key_sha256: String::new(),
                    state: KeyState::Retired,
                    decided_at: now,
                },
                token_id: String::new(),
                labels: BTreeMap::new(),
                requested_at: now,
                decided_by: by.to_owned(),
                version: 0,
            });
        writes.push(retire(&record));
        self.write_keys(&writes).await?;
        let removed = self
            .store
            .delete_current_state(host_id)
            .await
            .map_err(Self::store_error)?;
        info!(host = %host_id, %by, keys = writes.len(), current_rows = removed, "host retired: its certificates are refused, its current state removed, its history kept");
        Ok((writes, removed))
    }

    /// Retires, once, every host that has not reported for `silence` (and is not retired
    /// already): what `[enrollment] retire_after_silence` runs.
    pub async fn retire_silent(&self, silence: std::time::Duration) -> Result<Vec<String>, Status> {
        let hosts = self
            .store
            .list_hosts(&Default::default())
            .await
            .map_err(Self::store_error)?;
        let now = std::time::SystemTime::now();
        let by = format!("policy: silent for {}", humantime::format_duration(silence));
        let mut retired = Vec::new();
        for h in hosts.iter().filter(|h| h.retired_at.is_none()) {
            let silent = h
                .last_seen
                .is_some_and(|seen| now.duration_since(seen).is_ok_and(|age| age >= silence));
            if silent {
                self.retire(&h.host.host_id, &by).await?;
                retired.push(h.host.host_id.clone());
            }
        }
        Ok(retired)
    }
}

fn key_to_pb(k: &StoredHostKey) -> pb::HostKey {
    pb::HostKey {
        host_id: k.record.host_id.clone(),
        key_sha256: k.record.key_sha256.clone(),
        state: k.record.state.as_str().to_owned(),
        token_id: k.token_id.clone(),
        labels: k.labels.clone().into_iter().collect(),
        requested_at: k.requested_at,
        decided_at: k.record.decided_at,
        decided_by: k.decided_by.clone(),
    }
}

fn token_to_pb(t: &StoredToken, uses: u32) -> pb::EnrollmentToken {
    pb::EnrollmentToken {
        id: t.id.clone(),
        host_patterns: t.host_patterns.clone(),
        labels: t.labels.clone().into_iter().collect(),
        created_at: t.created_at,
        expires_at: t.expires_at,
        max_uses: t.max_uses,
        uses,
        revoked: t.revoked,
        created_by: t.created_by.clone(),
        description: t.description.clone(),
    }
}

fn admin_of<T>(request: &Request<T>) -> Result<String, Status> {
    Ok(authz::caller(request)?.identity.uri())
}

fn refused<T>(result: Result<T, Status>) -> Result<T, Status> {
    if let Err(status) = &result {
        let reason = match status.code() {
            tonic::Code::PermissionDenied => "refused",
            tonic::Code::InvalidArgument => "invalid",
            _ => "failed",
        };
        metrics::global().enrollments.inc(&[("result", reason)]);
    }
    result
}

#[tonic::async_trait]
impl EnrollmentService for Enrollment {
    async fn enroll(
        &self,
        request: Request<pb::EnrollRequest>,
    ) -> Result<Response<pb::EnrollResponse>, Status> {
        let remote = peer_info(&request).map(|p| p.remote_addr.to_string());
        let host = request.get_ref().host_id.clone();
        if let Some(ip) = peer_info(&request).map(|p| p.remote_addr.ip().to_string())
            && self.attempts.check(&ip, std::time::Instant::now()).is_err()
        {
            metrics::global().enrollments.inc(&[("result", "refused")]);
            return Err(Status::resource_exhausted(format!(
                "too many enrollment attempts from {ip} (over {} per second): retry later (agents back off by themselves)",
                ENROLL_RATE.0
            )));
        }
        let result = refused(self.enroll_inner(request.into_inner()).await);
        if let Err(status) = &result {
            warn!(remote = remote.as_deref().unwrap_or("?"), %host, code = ?status.code(), reason = %status.message(), "refused enrollment");
        }
        result.map(Response::new)
    }

    async fn renew(
        &self,
        request: Request<pb::RenewRequest>,
    ) -> Result<Response<pb::RenewResponse>, Status> {
        refused(self.renew_inner(request).await).map(Response::new)
    }

    async fn create_token(
        &self,
        request: Request<pb::CreateTokenRequest>,
    ) -> Result<Response<pb::CreateTokenResponse>, Status> {
        let admin = admin_of(&request)?;
        let req = request.into_inner();
        tokens::check_patterns(&req.host_patterns).map_err(Status::invalid_argument)?;
        crate::ingest::check_labels(&req.labels)
            .map_err(|e| Status::invalid_argument(format!("token labels: {e}")))?;
        let ttl = match req.ttl_seconds {
            0 => DEFAULT_TOKEN_TTL,
            s => Duration::from_secs(s),
        };
        if ttl > MAX_TOKEN_TTL {
            return Err(Status::invalid_argument(format!(
                "a token lives at most {} days: use a shorter --ttl and create a new token when it expires",
                MAX_TOKEN_TTL.as_secs() / 86_400
            )));
        }
        let new = tokens::generate().map_err(Status::internal)?;
        let now = now_secs();
        let token = StoredToken {
            id: new.id.clone(),
            secret_sha256: new.secret_sha256,
            host_patterns: req.host_patterns,
            labels: req.labels.into_iter().collect(),
            created_by: admin.clone(),
            description: req.description,
            created_at: now,
            expires_at: now.saturating_add(i64::try_from(ttl.as_secs()).unwrap_or(i64::MAX)),
            max_uses: req.max_uses,
            revoked: false,
            version: next_version(0),
        };
        self.store
            .write_enroll_token(&token)
            .await
            .map_err(Self::store_error)?;
        info!(token = %token.id, by = %admin, patterns = ?token.host_patterns, max_uses = token.max_uses, expires_at = token.expires_at, "enrollment token created");
        Ok(Response::new(pb::CreateTokenResponse {
            token: Some(token_to_pb(&token, 0)),
            secret: new.token,
        }))
    }

    async fn list_tokens(
        &self,
        _request: Request<pb::ListTokensRequest>,
    ) -> Result<Response<pb::ListTokensResponse>, Status> {
        let tokens = self
            .store
            .enroll_tokens()
            .await
            .map_err(Self::store_error)?;
        let uses = self
            .store
            .enroll_token_uses()
            .await
            .map_err(Self::store_error)?;
        Ok(Response::new(pb::ListTokensResponse {
            tokens: tokens
                .iter()
                .map(|t| token_to_pb(t, uses.get(&t.id).copied().unwrap_or(0)))
                .collect(),
        }))
    }

    async fn revoke_token(
        &self,
        request: Request<pb::RevokeTokenRequest>,
    ) -> Result<Response<pb::RevokeTokenResponse>, Status> {
        let admin = admin_of(&request)?;
        let id = request.into_inner().id;
        let token = self
            .store
            .enroll_token(&id)
            .await
            .map_err(Self::store_error)?
            .ok_or_else(|| {
                Status::not_found(format!(
                    "no enrollment token `{id}` (`portolan token list` shows them)"
                ))
            })?;
        let revoked = StoredToken {
            revoked: true,
            version: next_version(token.version),
            ..token
        };
        self.store
            .write_enroll_token(&revoked)
            .await
            .map_err(Self::store_error)?;
        info!(token = %id, by = %admin, "enrollment token revoked");
        let uses = self
            .store
            .enroll_token_uses()
            .await
            .map_err(Self::store_error)?;
        Ok(Response::new(pb::RevokeTokenResponse {
            token: Some(token_to_pb(&revoked, uses.get(&id).copied().unwrap_or(0))),
        }))
    }

    async fn list_host_keys(
        &self,
        request: Request<pb::ListHostKeysRequest>,
    ) -> Result<Response<pb::ListHostKeysResponse>, Status> {
        let req = request.into_inner();
        let state = match req.state.as_str() {
            "" => None,
            s => Some(
                s.parse::<KeyState>()
                    .map_err(|e| Status::invalid_argument(e.to_string()))?,
            ),
        };
        let keys = if req.host_id.is_empty() {
            self.store.host_keys().await
        } else {
            self.store.host_keys_of(&req.host_id).await
        }
        .map_err(Self::store_error)?;
        Ok(Response::new(pb::ListHostKeysResponse {
            keys: keys
                .iter()
                .filter(|k| state.is_none_or(|s| k.record.state == s))
                .map(key_to_pb)
                .collect(),
        }))
    }

    async fn approve_host(
        &self,
        request: Request<pb::ApproveHostRequest>,
    ) -> Result<Response<pb::ApproveHostResponse>, Status> {
        let admin = admin_of(&request)?;
        let req = request.into_inner();
        let key = self
            .decide_key(
                &req.host_id,
                &req.key_sha256,
                KeyState::Pending,
                KeyState::Bound,
                admin,
            )
            .await?;
        Ok(Response::new(pb::ApproveHostResponse {
            key: Some(key_to_pb(&key)),
        }))
    }

    async fn deny_host(
        &self,
        request: Request<pb::DenyHostRequest>,
    ) -> Result<Response<pb::DenyHostResponse>, Status> {
        let admin = admin_of(&request)?;
        let req = request.into_inner();
        let key = self
            .decide_key(
                &req.host_id,
                &req.key_sha256,
                KeyState::Pending,
                KeyState::Denied,
                admin,
            )
            .await?;
        Ok(Response::new(pb::DenyHostResponse {
            key: Some(key_to_pb(&key)),
        }))
    }

    async fn retire_host(
        &self,
        request: Request<pb::RetireHostRequest>,
    ) -> Result<Response<pb::RetireHostResponse>, Status> {
        let admin = admin_of(&request)?;
        let host_id = request.into_inner().host_id;
        let (keys, removed) = self.retire(&host_id, &admin).await?;
        Ok(Response::new(pb::RetireHostResponse {
            keys: keys.iter().map(key_to_pb).collect(),
            current_rows_removed: removed,
        }))
    }
}
