//! The one place where ingest errors become gRPC status codes.
//!
//! Agents decide from the code whether to retry: `InvalidArgument`, `PermissionDenied`,
//! `Unauthenticated` and `ResourceExhausted` are the agent's fault and not retried as is;
//! `Unavailable` (storage trouble) is retried with backoff.

use tonic::Status;

use portolan_store::StoreError;

/// Why an ingest stream is refused or ended.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum IngestError {
    /// The client certificate carries no usable Portolan identity.
    #[error("client certificate has no valid portolan identity: {0}")]
    NoIdentity(String),
    /// The client is not an agent.
    #[error(
        "`{0}` is not an agent certificate; only agents (spiffe://portolan/host/<host_id>) may stream inventories"
    )]
    NotAnAgent(String),
    /// The Hello claims another host than the certificate.
    #[error("certificate is for host `{certificate}` but Hello claims host `{claimed}`")]
    HostMismatch {
        /// host_id in the certificate.
        certificate: String,
        /// host_id in the Hello.
        claimed: String,
    },
    /// The conversation is out of order (no Hello first, a second Hello, …).
    #[error("protocol violation: {0}")]
    Protocol(String),
    /// A message's content is invalid.
    #[error("invalid message: {0}")]
    Invalid(String),
    /// A message is over a limit.
    #[error("{0}")]
    TooLarge(String),
    /// The client's certificate is revoked (the deny list, a CRL, or the enrollment gate);
    /// the reason says what to do.
    #[error("{0}: the stream is closed")]
    Revoked(String),
    /// The agent sends messages faster than `limits.max_messages_per_second` allows.
    #[error("{0}")]
    RateLimited(String),
    /// Storage failed; the data was not acknowledged.
    #[error("storage unavailable, nothing acknowledged (the agent retries): {0}")]
    Store(#[from] StoreError),
}

impl From<IngestError> for Status {
    fn from(e: IngestError) -> Status {
        let message = e.to_string();
        match e {
            IngestError::NoIdentity(_) => Status::unauthenticated(message),
            IngestError::NotAnAgent(_)
            | IngestError::HostMismatch { .. }
            | IngestError::Revoked(_) => Status::permission_denied(message),
            IngestError::Protocol(_) => Status::failed_precondition(message),
            IngestError::Invalid(_) => Status::invalid_argument(message),
            IngestError::TooLarge(_) | IngestError::RateLimited(_) => {
                Status::resource_exhausted(message)
            }
            IngestError::Store(_) => Status::unavailable(message),
        }
    }
}
