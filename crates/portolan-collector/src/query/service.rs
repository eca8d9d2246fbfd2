//! The gRPC handlers: each hands its request to the module that answers it. Who may call
//! which is not checked here but in [`crate::authz`], in front of every service.

use portolan_proto::v1 as pb;
use portolan_proto::v1::query_service_server::QueryService;
use tokio_stream::wrappers::ReceiverStream;
use tonic::{Request, Response, Status};

use super::{Query, test_rules};
use crate::revocation::Revocable;

/// The identity URI of the caller, whom the authorisation layer let through
/// ([`crate::authz`]): recorded with changes, logged with watches.
fn who<T>(request: &Request<T>) -> Result<String, Status> {
    Ok(crate::authz::caller(request)?.identity.uri())
}

#[tonic::async_trait]
impl QueryService for Query {
    async fn list_hosts(
        &self,
        request: Request<pb::ListHostsRequest>,
    ) -> Result<Response<pb::ListHostsResponse>, Status> {
        Ok(Response::new(
            self.list_hosts_inner(request.into_inner()).await?,
        ))
    }

    async fn get_host(
        &self,
        request: Request<pb::GetHostRequest>,
    ) -> Result<Response<pb::GetHostResponse>, Status> {
        Ok(Response::new(
            self.get_host_inner(request.into_inner().host_id).await?,
        ))
    }

    async fn list_sockets(
        &self,
        request: Request<pb::ListSocketsRequest>,
    ) -> Result<Response<pb::ListSocketsResponse>, Status> {
        Ok(Response::new(
            self.list_sockets_inner(request.into_inner()).await?,
        ))
    }

    async fn who_listens(
        &self,
        request: Request<pb::WhoListensRequest>,
    ) -> Result<Response<pb::WhoListensResponse>, Status> {
        Ok(Response::new(
            self.who_listens_inner(request.into_inner()).await?,
        ))
    }

    async fn list_findings(
        &self,
        request: Request<pb::ListFindingsRequest>,
    ) -> Result<Response<pb::ListFindingsResponse>, Status> {
        Ok(Response::new(
            self.list_findings_inner(request.into_inner()).await?,
        ))
    }

    async fn list_flows(
        &self,
        request: Request<pb::ListFlowsRequest>,
    ) -> Result<Response<pb::ListFlowsResponse>, Status> {
        Ok(Response::new(
            self.list_flows_inner(request.into_inner()).await?,
        ))
    }

    async fn ack_finding(
        &self,
        request: Request<pb::AckFindingRequest>,
    ) -> Result<Response<pb::AckFindingResponse>, Status> {
        let who = who(&request)?;
        Ok(Response::new(
            self.ack_finding_inner(who, request.into_inner()).await?,
        ))
    }

    async fn unack_finding(
        &self,
        request: Request<pb::UnackFindingRequest>,
    ) -> Result<Response<pb::UnackFindingResponse>, Status> {
        let who = who(&request)?;
        let finding = self
            .ack_inner(who, request.into_inner().fingerprint, None)
            .await?;
        Ok(Response::new(pb::UnackFindingResponse {
            finding: Some(finding),
        }))
    }

    async fn list_events(
        &self,
        request: Request<pb::ListEventsRequest>,
    ) -> Result<Response<pb::ListEventsResponse>, Status> {
        Ok(Response::new(
            self.list_events_inner(request.into_inner()).await?,
        ))
    }

    async fn get_snapshot(
        &self,
        request: Request<pb::GetSnapshotRequest>,
    ) -> Result<Response<pb::GetSnapshotResponse>, Status> {
        Ok(Response::new(
            self.get_snapshot_inner(request.into_inner()).await?,
        ))
    }

    type WatchFindingsStream = Revocable<ReceiverStream<Result<pb::WatchFindingsResponse, Status>>>;

    async fn watch_findings(
        &self,
        request: Request<pb::WatchFindingsRequest>,
    ) -> Result<Response<Self::WatchFindingsStream>, Status> {
        let who = who(&request)?;
        let live = self.live(&request)?;
        let stream = self.watch_findings_inner(who, request.into_inner()).await?;
        Ok(Response::new(live.guard(stream)))
    }

    async fn test_rules(
        &self,
        request: Request<pb::TestRulesRequest>,
    ) -> Result<Response<pb::TestRulesResponse>, Status> {
        Ok(Response::new(
            test_rules::test_rules(&self.store, request.into_inner()).await?,
        ))
    }

    type WatchHostStream = Revocable<ReceiverStream<Result<pb::WatchHostResponse, Status>>>;

    async fn watch_host(
        &self,
        request: Request<pb::WatchHostRequest>,
    ) -> Result<Response<Self::WatchHostStream>, Status> {
        let who = who(&request)?;
        let live = self.live(&request)?;
        let stream = self.watch_host_inner(who, request.into_inner()).await?;
        Ok(Response::new(live.guard(stream)))
    }
}
