//! `portolan.v1.EnrollmentService`: enrollment and renewal for agents, tokens and host
//! keys for admins. Who may call what is `crate::authz`'s table; this answers.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use portolan_core::enrollment::{
    Decision, KeyRecord, KeyState, Policy, TokenRule, admit, check_token, decide,
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
    /// How long after a retirement its current state is deleted once more: rows that a
    /// stream on another replica (which learns of the retirement within its refresh
    /// interval) or a write in flight stored after the first deletion.
    settle: Duration,
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
            settle: Duration::from_secs(10),
        }
    }

    /// The same, deleting a retired host's current state once more `settle` after its
    /// retirement (the replicas' refresh interval, plus a write in flight).
    pub fn with_settle(mut self, settle: Duration) -> Enrollment {
        self.settle = settle;
        self
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
        let signer = self.signer()?;
        // No certificate outlives the signer: one that would live under a tenth of its
        // lifetime (or a minute) is refused rather than issued, so that agents do not renew
        // in a loop while the signer runs out.
        let left = signer.not_after().saturating_sub(now_secs());
        let least = i64::try_from(self.lifetime.as_secs() / 10)
            .unwrap_or(i64::MAX)
            .max(60);
        if left < least {
            warn!(
                signer_not_after = signer.not_after(),
                "the enrollment signer expires too soon to sign: issue a new one"
            );
            return Err(Status::failed_precondition(format!(
                "the enrollment signer expires at {} (Unix seconds): an admin must issue a new one with `portolan pki issue-signer` and replace `enrollment.signer_cert` and `signer_key` (collectors reload them)",
                signer.not_after()
            )));
        }
        signer
            .sign_agent(csr, host_id, self.lifetime)
            .map_err(|e| Status::internal(e.to_string()))
    }

    async fn token_rule(&self, token: &StoredToken) -> Result<TokenRule, Status> {
        let uses = self
            .store
            .enroll_token_uses_of(&token.id)
            .await
            .map_err(Self::store_error)?;
        Ok(TokenRule {
            host_patterns: token.host_patterns.clone(),
            expires_at: token.expires_at,
            max_uses: token.max_uses,
            uses,
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
        token: Option<&StoredToken>,
        decided_by: &str,
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
            token_id: token.map(|t| t.id.clone()).unwrap_or_default(),
            labels: token.map(|t| t.labels.clone()).unwrap_or_default(),
            requested_at: previous.map_or(now, |p| p.requested_at),
            decided_by: decided_by.to_owned(),
            version: next_version(previous.map_or(0, |p| p.version)),
        }
    }

    async fn keys_of(&self, host_id: &str) -> Result<Vec<StoredHostKey>, Status> {
        self.store
            .host_keys_of(host_id)
            .await
            .map_err(Self::store_error)
    }

    /// Writes `bound` as the host's key, then reads the host's keys back: if another
    /// replica bound another key at the same time, the first bound one wins
    /// ([`admit`]) and this one is recorded as superseded and refused.
    async fn bind(&self, host_id: &str, bound: StoredHostKey) -> Result<(), Status> {
        let key = bound.record.key_sha256.clone();
        self.write_keys(std::slice::from_ref(&bound)).await?;
        let keys = self.keys_of(host_id).await?;
        if let Err(refusal) = admit(host_id, &records(&keys), &key, i64::MAX) {
            let lost = StoredHostKey {
                record: KeyRecord {
                    state: KeyState::Superseded,
                    ..bound.record.clone()
                },
                decided_by: "race: another key was bound first".to_owned(),
                version: next_version(bound.version),
                ..bound
            };
            self.write_keys(&[lost]).await?;
            return Err(Status::permission_denied(refusal.to_string()));
        }
        Ok(())
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
        // The token's secret is checked before the decision lock: guessed tokens never
        // hold up real enrollments, renewals or admin verbs.
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
        let _deciding = self.deciding.lock().await;
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
                    let bound = Self::new_key(
                        &host_id,
                        &csr.key_sha256,
                        KeyState::Bound,
                        Some(&token),
                        BY_TOKEN,
                        previous,
                    );
                    self.bind(&host_id, bound).await?;
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
                        Some(&token),
                        BY_TOKEN,
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
        // The gate admitted the call, from keys read up to `refresh_interval` ago: decide
        // again on the keys as stored now. A key without a record (a certificate issued by
        // hand) is adopted as the host's.
        {
            let _deciding = self.deciding.lock().await;
            let keys = self.keys_of(&host_id).await?;
            admit(&host_id, &records(&keys), &cert.key_sha256, cert.not_before)
                .map_err(|refusal| Status::permission_denied(refusal.to_string()))?;
            if !keys.iter().any(|k| k.record.key_sha256 == cert.key_sha256) {
                let adopted = Self::new_key(
                    &host_id,
                    &cert.key_sha256,
                    KeyState::Bound,
                    None,
                    BY_RENEWAL,
                    None,
                );
                self.bind(&host_id, adopted).await?;
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
        let (store, host, settle) = (self.store.clone(), host_id.to_owned(), self.settle);
        tokio::spawn(async move {
            tokio::time::sleep(settle).await;
            if let Err(e) = store.delete_current_state(&host).await {
                warn!(%host, error = %e, "cannot delete the retired host's late current rows; retire it again to retry");
            }
        });
        info!(host = %host_id, %by, keys = writes.len(), current_rows = removed, "host retired: its certificates are refused, its current state removed, its history kept");
        Ok((writes, removed))
    }

    /// Retires, once, every host that has not reported for `silence`, counted from its
    /// last report or from `since` (this replica's start), whichever is later, and is not
    /// retired already: what `[enrollment] retire_after_silence` runs. A host that cannot
    /// be retired now is logged and tried again at the next check; the others go on.
    pub async fn retire_silent(
        &self,
        silence: std::time::Duration,
        since: std::time::SystemTime,
    ) -> Vec<String> {
        let hosts = match self.store.list_hosts(&Default::default()).await {
            Ok(hosts) => hosts,
            Err(e) => {
                warn!(error = %e, "cannot list hosts to retire silent ones; trying again at the next check");
                return Vec::new();
            }
        };
        let now = std::time::SystemTime::now();
        let by = format!("policy: silent for {}", humantime::format_duration(silence));
        let mut retired = Vec::new();
        for h in hosts.iter().filter(|h| h.retired_at.is_none()) {
            let heard = h.last_seen.map_or(since, |seen| seen.max(since));
            if now.duration_since(heard).is_ok_and(|age| age >= silence) {
                match self.retire(&h.host.host_id, &by).await {
                    Ok(_) => retired.push(h.host.host_id.clone()),
                    Err(e) => {
                        warn!(host = %h.host.host_id, error = %e.message(), "cannot retire a silent host now; trying again at the next check")
                    }
                }
            }
        }
        retired
    }
}

/// The decision-relevant part of each key.
fn records(keys: &[StoredHostKey]) -> Vec<KeyRecord> {
    keys.iter().map(|k| k.record.clone()).collect()
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
