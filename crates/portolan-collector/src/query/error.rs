//! The one place where query errors become gRPC status codes.
//!
//! Clients decide from the code what is worth retrying: `InvalidArgument`, `NotFound`,
//! `PermissionDenied` and `Unauthenticated` are not; `Unavailable` (ClickHouse trouble)
//! and `ResourceExhausted` (too many watch streams) are, after a while.

use tonic::Status;

use portolan_store::StoreError;

/// Why a query was refused or failed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum QueryError {
    /// The connection carries no client certificate information.
    #[error("no client certificate on this connection")]
    NoCertificate,
    /// The client certificate carries no usable Portolan identity.
    #[error("client certificate has no valid portolan identity: {0}")]
    NoIdentity(String),
    /// The client is not an operator.
    #[error(
        "`{0}` is not an operator certificate; queries need one (spiffe://portolan/operator/<reader|admin>/<name>, `portolan pki issue-operator`)"
    )]
    NotAnOperator(String),
    /// The operator may read but not change.
    #[error(
        "`{0}` is a reader certificate; {1} needs an admin one (`portolan pki issue-operator --role admin`)"
    )]
    NotAnAdmin(String, &'static str),
    /// A request field is invalid.
    #[error("{0}")]
    Invalid(String),
    /// Something the request names does not exist.
    #[error("{0}")]
    NotFound(String),
    /// The collector serves its maximum of watch streams.
    #[error(
        "this collector already serves {0} watch streams, its maximum; close one or ask another replica"
    )]
    TooManyWatches(usize),
    /// Reading ClickHouse failed.
    #[error("cannot read ClickHouse: {0}")]
    Read(StoreError),
    /// Writing ClickHouse failed; nothing was stored.
    #[error("cannot store in ClickHouse, nothing changed (retry later): {0}")]
    Write(StoreError),
}

impl From<QueryError> for Status {
    fn from(e: QueryError) -> Status {
        let message = e.to_string();
        match e {
            QueryError::NoCertificate | QueryError::NoIdentity(_) => {
                Status::unauthenticated(message)
            }
            QueryError::NotAnOperator(_) | QueryError::NotAnAdmin(..) => {
                Status::permission_denied(message)
            }
            QueryError::Invalid(_) => Status::invalid_argument(message),
            QueryError::NotFound(_) => Status::not_found(message),
            QueryError::TooManyWatches(_) => Status::resource_exhausted(message),
            QueryError::Read(StoreError::Corrupt { .. })
            | QueryError::Write(StoreError::Corrupt { .. }) => Status::internal(message),
            QueryError::Read(_) | QueryError::Write(_) => Status::unavailable(message),
        }
    }
}

/// Reads that fail become [`QueryError::Read`].
impl From<StoreError> for QueryError {
    fn from(e: StoreError) -> QueryError {
        QueryError::Read(e)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn codes_follow_whose_fault_it_is() {
        let cases = [
            (QueryError::NoCertificate, tonic::Code::Unauthenticated),
            (
                QueryError::NotAnOperator("spiffe://portolan/host/h".into()),
                tonic::Code::PermissionDenied,
            ),
            (
                QueryError::NotAnAdmin("spiffe://portolan/operator/reader/r".into(), "x"),
                tonic::Code::PermissionDenied,
            ),
            (
                QueryError::Invalid("bad".into()),
                tonic::Code::InvalidArgument,
            ),
            (QueryError::NotFound("no".into()), tonic::Code::NotFound),
            (
                QueryError::TooManyWatches(3),
                tonic::Code::ResourceExhausted,
            ),
        ];
        for (e, code) in cases {
            let status = Status::from(e);
            assert_eq!(status.code(), code, "{}", status.message());
            let first = status.message().chars().next().unwrap_or('x');
            assert!(!first.is_uppercase(), "{}", status.message());
        }
    }
}
