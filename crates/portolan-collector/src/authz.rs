//! Who may call what: every RPC of the collector with the certificates that may call it,
//! declared once ([`RULES`]) and enforced in one tower layer ([`AuthorizeLayer`]) in front
//! of every service.
//!
//! The layer reads the caller's identity from its certificate ([`portolan_tls::peer_info`]),
//! refuses the call when the table does not allow it, and otherwise hands the handler a
//! [`Caller`] (read with [`caller`]). Handlers check no role themselves. A path the table
//! does not name is refused (UNIMPLEMENTED): an RPC added to the protocol is unreachable
//! until it has a rule, and a test of this module fails until then.

use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll};

use portolan_tls::{Identity, OperatorRole, PeerInfo};
use tonic::Status;
use tonic::codegen::http;
use tracing::warn;

use crate::error::IngestError;
use crate::metrics;
use crate::query::QueryError;

/// Which certificates may call an RPC.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Allowed {
    /// Agents (`spiffe://portolan/host/<host_id>`), each for its own host.
    Agents,
    /// Operators of either role, reader or admin.
    Operators,
    /// Admin operators only; `what` names the action in a reader's refusal.
    Admins {
        /// The action, as in "`…` is a reader certificate; {what} needs an admin one".
        what: &'static str,
    },
    /// Any certificate of the fleet's CA, whatever identity it names (health checks and
    /// reflection, for load balancers and grpcurl).
    AnyCertificate,
    /// Anyone, with or without a certificate: enrollment only, which authenticates the
    /// caller by its bootstrap token.
    Anyone,
}

/// Every RPC of `portolan.v1` and who may call it, by gRPC path.
pub const RULES: &[(&str, Allowed)] = &[
    (
        "/portolan.v1.IngestService/StreamInventory",
        Allowed::Agents,
    ),
    ("/portolan.v1.QueryService/ListHosts", Allowed::Operators),
    ("/portolan.v1.QueryService/GetHost", Allowed::Operators),
    ("/portolan.v1.QueryService/ListSockets", Allowed::Operators),
    ("/portolan.v1.QueryService/WhoListens", Allowed::Operators),
    ("/portolan.v1.QueryService/ListFlows", Allowed::Operators),
    ("/portolan.v1.QueryService/ListFindings", Allowed::Operators),
    (
        "/portolan.v1.QueryService/AckFinding",
        Allowed::Admins {
            what: "acknowledging a finding",
        },
    ),
    (
        "/portolan.v1.QueryService/UnackFinding",
        Allowed::Admins {
            what: "clearing an acknowledgement",
        },
    ),
    ("/portolan.v1.QueryService/ListEvents", Allowed::Operators),
    ("/portolan.v1.QueryService/GetSnapshot", Allowed::Operators),
    (
        "/portolan.v1.QueryService/WatchFindings",
        Allowed::Operators,
    ),
    ("/portolan.v1.QueryService/WatchHost", Allowed::Operators),
    ("/portolan.v1.QueryService/TestRules", Allowed::Operators),
    ("/portolan.v1.EnrollmentService/Enroll", Allowed::Anyone),
    ("/portolan.v1.EnrollmentService/Renew", Allowed::Agents),
    (
        "/portolan.v1.EnrollmentService/CreateToken",
        Allowed::Admins {
            what: "creating an enrollment token",
        },
    ),
    (
        "/portolan.v1.EnrollmentService/ListTokens",
        Allowed::Admins {
            what: "listing enrollment tokens",
        },
    ),
    (
        "/portolan.v1.EnrollmentService/RevokeToken",
        Allowed::Admins {
            what: "revoking an enrollment token",
        },
    ),
    (
        "/portolan.v1.EnrollmentService/ListHostKeys",
        Allowed::Operators,
    ),
    (
        "/portolan.v1.EnrollmentService/ApproveHost",
        Allowed::Admins {
            what: "approving a host",
        },
    ),
    (
        "/portolan.v1.EnrollmentService/DenyHost",
        Allowed::Admins {
            what: "denying a host",
        },
    ),
    (
        "/portolan.v1.EnrollmentService/RetireHost",
        Allowed::Admins {
            what: "retiring a host",
        },
    ),
];

/// Services (by path prefix) every method of which any fleet certificate may call.
pub const OPEN_SERVICES: &[&str] = &[
    "/grpc.health.v1.Health/",
    "/grpc.reflection.v1.ServerReflection/",
    "/grpc.reflection.v1alpha.ServerReflection/",
];

/// Who may call the RPC at `path`; `None`: nobody (no rule names it).
pub fn allowed(path: &str) -> Option<Allowed> {
    RULES
        .iter()
        .find(|(p, _)| *p == path)
        .map(|(_, allowed)| *allowed)
        .or_else(|| {
            OPEN_SERVICES
                .iter()
                .any(|prefix| path.starts_with(prefix))
                .then_some(Allowed::AnyCertificate)
        })
}

/// The identity of an authorised caller, in the extensions of every request the table
/// names for agents or operators.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Caller {
    /// The identity in the caller's certificate.
    pub identity: Identity,
}

/// The authorised caller of `request`; INTERNAL when the service was served without
/// [`AuthorizeLayer`] (a bug of the server's setup, never the client's fault).
pub fn caller<T>(request: &tonic::Request<T>) -> Result<&Caller, Status> {
    request.extensions().get::<Caller>().ok_or_else(|| {
        Status::internal(
            "this call bypassed the collector's authorisation layer; serve the services through `server::serve_connections`",
        )
    })
}

/// Decides a call to `path` by the peer `peer` (`None`: the connection carries no
/// certificate information): the caller to hand the handler (`None` for
/// [`Allowed::AnyCertificate`] calls), or the refusal.
pub fn authorize(path: &str, peer: Option<&PeerInfo>) -> Result<Option<Caller>, Status> {
    let Some(allowed) = allowed(path) else {
        return Err(Status::unimplemented(format!(
            "this collector serves no method `{path}` (check the client's portolan.v1 version)"
        )));
    };
    if allowed == Allowed::Anyone {
        return Ok(None);
    }
    let Some(peer) = peer else {
        return Err(Status::unauthenticated(
            "no client certificate on this connection",
        ));
    };
    if allowed == Allowed::AnyCertificate {
        return match &peer.identity {
            Err(portolan_tls::IdentityError::NoCertificate) => Err(Status::unauthenticated(
                "no client certificate on this connection (present a certificate of the fleet)",
            )),
            _ => Ok(None),
        };
    }
    let remote = peer.remote_addr;
    let identity = match &peer.identity {
        Ok(identity) => identity,
        Err(e) => {
            warn!(%remote, error = %e, path, "refused call: no identity in certificate");
            return Err(if allowed == Allowed::Agents {
                let e = IngestError::NoIdentity(e.to_string());
                metrics::global().record_refusal(&e);
                e.into()
            } else {
                QueryError::NoIdentity(e.to_string()).into()
            });
        }
    };
    let permitted = matches!(
        (allowed, identity),
        (Allowed::Agents, Identity::Agent { .. })
            | (Allowed::Operators, Identity::Operator { .. })
            | (
                Allowed::Admins { .. },
                Identity::Operator {
                    role: OperatorRole::Admin,
                    ..
                },
            )
            | (Allowed::AnyCertificate | Allowed::Anyone, _)
    );
    if permitted {
        return Ok(Some(Caller {
            identity: identity.clone(),
        }));
    }
    warn!(%remote, %identity, path, "refused call: the certificate's role may not call it");
    Err(match (allowed, identity) {
        (Allowed::Agents, _) => {
            let e = IngestError::NotAnAgent(identity.uri());
            metrics::global().record_refusal(&e);
            e.into()
        }
        (Allowed::Admins { what }, Identity::Operator { .. }) => {
            QueryError::NotAnAdmin(identity.uri(), what).into()
        }
        _ => QueryError::NotAnOperator(identity.uri()).into(),
    })
}

/// A tower layer applying [`authorize`] to every call: install it in front of every
/// service (see [`crate::server::serve_connections`]).
#[derive(Debug, Clone, Copy, Default)]
pub struct AuthorizeLayer;

impl<S> tower::Layer<S> for AuthorizeLayer {
    type Service = Authorize<S>;

    fn layer(&self, inner: S) -> Authorize<S> {
        Authorize { inner }
    }
}

/// The service of [`AuthorizeLayer`].
#[derive(Debug, Clone)]
pub struct Authorize<S> {
    inner: S,
}

impl<S, B, R> tower::Service<http::Request<B>> for Authorize<S>
where
    S: tower::Service<http::Request<B>, Response = http::Response<R>> + Clone + Send + 'static,
    S::Future: Send + 'static,
    S::Error: Send + 'static,
    R: Default + Send + 'static,
{
    type Response = http::Response<R>;
    type Error = S::Error;
    type Future = Pin<Box<dyn Future<Output = Result<Self::Response, Self::Error>> + Send>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, mut request: http::Request<B>) -> Self::Future {
        let decision = authorize(request.uri().path(), request.extensions().get::<PeerInfo>());
        match decision {
            Ok(caller) => {
                if let Some(caller) = caller {
                    request.extensions_mut().insert(caller);
                }
                // The clone is ready only if `self.inner` was: take the ready one.
                let clone = self.inner.clone();
                let mut inner = std::mem::replace(&mut self.inner, clone);
                Box::pin(inner.call(request))
            }
            Err(status) => Box::pin(std::future::ready(Ok(status.into_http()))),
        }
    }
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeSet;
    use std::net::{IpAddr, Ipv4Addr, SocketAddr};

    use prost::Message as _;
    use prost_types::FileDescriptorSet;

    use super::*;

    /// Every method of every service in the embedded `portolan.v1` descriptors.
    fn declared_paths() -> BTreeSet<String> {
        let set = FileDescriptorSet::decode(portolan_proto::FILE_DESCRIPTOR_SET)
            .expect("the embedded descriptor set decodes");
        let mut paths = BTreeSet::new();
        for file in &set.file {
            for service in &file.service {
                for method in &service.method {
                    paths.insert(format!(
                        "/{}.{}/{}",
                        file.package(),
                        service.name(),
                        method.name()
                    ));
                }
            }
        }
        paths
    }

    #[test]
    fn every_rpc_has_exactly_one_rule_and_every_rule_an_rpc() {
        let declared = declared_paths();
        assert!(
            declared.contains("/portolan.v1.IngestService/StreamInventory")
                && declared.contains("/portolan.v1.QueryService/ListHosts"),
            "the descriptor set lists both services: {declared:?}"
        );
        let missing: Vec<_> = declared
            .iter()
            .filter(|p| !RULES.iter().any(|(r, _)| r == p))
            .collect();
        assert!(
            missing.is_empty(),
            "RPCs without an authorisation rule (add them to authz::RULES): {missing:?}"
        );
        let stale: Vec<_> = RULES
            .iter()
            .filter(|(r, _)| !declared.contains(*r))
            .collect();
        assert!(stale.is_empty(), "rules naming no RPC: {stale:?}");
        let unique: BTreeSet<_> = RULES.iter().map(|(r, _)| r).collect();
        assert_eq!(unique.len(), RULES.len(), "a path has two rules");
    }

    fn peer(identity: Identity) -> PeerInfo {
        PeerInfo::new(
            SocketAddr::new(IpAddr::V4(Ipv4Addr::LOCALHOST), 7443),
            Ok(identity),
            vec![1],
        )
    }

    fn code(path: &str, peer: Option<&PeerInfo>) -> tonic::Code {
        authorize(path, peer).map_or_else(|s| s.code(), |_| tonic::Code::Ok)
    }

    #[test]
    fn roles_reach_what_the_table_allows_and_nothing_else() {
        let agent = peer(Identity::agent("web-1").expect("valid"));
        let reader = peer(Identity::operator("ann", OperatorRole::Reader).expect("valid"));
        let admin = peer(Identity::operator("bob", OperatorRole::Admin).expect("valid"));
        let collector = peer(Identity::collector("c1").expect("valid"));
        let ingest = "/portolan.v1.IngestService/StreamInventory";
        let list = "/portolan.v1.QueryService/ListHosts";
        let ack = "/portolan.v1.QueryService/AckFinding";
        let health = "/grpc.health.v1.Health/Check";
        use tonic::Code::{Ok, PermissionDenied as Denied, Unauthenticated, Unimplemented};
        let cases = [
            (ingest, &agent, Ok),
            (ingest, &reader, Denied),
            (ingest, &admin, Denied),
            (list, &agent, Denied),
            (list, &reader, Ok),
            (list, &admin, Ok),
            (list, &collector, Denied),
            (ack, &reader, Denied),
            (ack, &admin, Ok),
            (ack, &agent, Denied),
            (health, &agent, Ok),
            (health, &collector, Ok),
            (
                "/portolan.v1.QueryService/DropTables",
                &admin,
                Unimplemented,
            ),
        ];
        for (path, p, want) in cases {
            assert_eq!(code(path, Some(p)), want, "{path} by {:?}", p.identity);
        }
        assert_eq!(code(list, None), Unauthenticated);
        let nameless = PeerInfo::new(
            agent.remote_addr,
            Err(portolan_tls::IdentityError::NoCertificate),
            vec![],
        );
        assert_eq!(code(ingest, Some(&nameless)), Unauthenticated);
        assert_eq!(code(list, Some(&nameless)), Unauthenticated);
        // Health and reflection need a certificate of the fleet, whatever it names; a
        // client without one (possible where enrollment is served) may only enrol.
        assert_eq!(code(health, Some(&nameless)), Unauthenticated);
        let uriless = PeerInfo::new(
            agent.remote_addr,
            Err(portolan_tls::IdentityError::NoUri),
            vec![2],
        );
        assert_eq!(code(health, Some(&uriless)), Ok);
        let enroll = "/portolan.v1.EnrollmentService/Enroll";
        let renew = "/portolan.v1.EnrollmentService/Renew";
        let create = "/portolan.v1.EnrollmentService/CreateToken";
        let retire = "/portolan.v1.EnrollmentService/RetireHost";
        let keys = "/portolan.v1.EnrollmentService/ListHostKeys";
        for p in [None, Some(&nameless), Some(&agent), Some(&admin)] {
            assert_eq!(code(enroll, p), Ok, "anyone may enrol");
        }
        for (path, p, want) in [
            (renew, &agent, Ok),
            (renew, &admin, Denied),
            (renew, &nameless, Unauthenticated),
            (create, &reader, Denied),
            (create, &agent, Denied),
            (create, &nameless, Unauthenticated),
            (create, &admin, Ok),
            (retire, &reader, Denied),
            (retire, &admin, Ok),
            (keys, &reader, Ok),
            (keys, &agent, Denied),
        ] {
            assert_eq!(code(path, Some(p)), want, "{path} by {:?}", p.identity);
        }
    }

    #[test]
    fn refusals_say_what_certificate_is_needed() {
        let reader = peer(Identity::operator("ann", OperatorRole::Reader).expect("valid"));
        let agent = peer(Identity::agent("web-1").expect("valid"));
        let refusal = |path: &str, p: &PeerInfo| {
            authorize(path, Some(p))
                .err()
                .map(|s| s.message().to_string())
                .unwrap_or_default()
        };
        let ack = refusal("/portolan.v1.QueryService/UnackFinding", &reader);
        assert!(
            ack.contains("reader certificate; clearing an acknowledgement needs an admin one"),
            "{ack}"
        );
        let query = refusal("/portolan.v1.QueryService/ListHosts", &agent);
        assert!(query.contains("is not an operator certificate"), "{query}");
        let ingest = refusal("/portolan.v1.IngestService/StreamInventory", &reader);
        assert!(ingest.contains("is not an agent certificate"), "{ingest}");
    }

    #[test]
    fn the_caller_is_handed_over_and_missing_without_the_layer() {
        let admin = peer(Identity::operator("bob", OperatorRole::Admin).expect("valid"));
        let caller = authorize("/portolan.v1.QueryService/AckFinding", Some(&admin))
            .ok()
            .flatten()
            .expect("an admin may ack");
        assert_eq!(caller.identity, admin.identity.clone().expect("valid"));
        let request = tonic::Request::new(());
        assert_eq!(
            super::caller(&request).map_err(|s| s.code()).err(),
            Some(tonic::Code::Internal)
        );
    }
}
