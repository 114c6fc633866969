//! The master's gRPC service: workers register and leave through it, the operator reads the
//! job's status. It only records requests; the coordinator's loop acts on them between
//! batches.

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::sync::oneshot;
use tonic::{Request, Response, Status};

use crate::exec::lock_unpoisoned;
use crate::rpc::{PROTOCOL_VERSION, pb};

/// A worker that registered: its id, address and process incarnation.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Joining {
    pub id: String,
    pub address: String,
    pub incarnation: String,
}

/// What the gRPC side shares with the loop.
#[derive(Default)]
pub struct Shared {
    pub joins: Vec<Joining>,
    /// Workers asking to leave, each released by its sender once its partitions moved.
    pub leaves: Vec<(String, oneshot::Sender<()>)>,
    pub status: pb::StatusReply,
}

pub struct MasterService {
    pub fingerprint: String,
    pub shared: Arc<Mutex<Shared>>,
}

/// How long a leaving worker waits for its hand-off.
const LEAVE_TIMEOUT: Duration = Duration::from_secs(60);

#[tonic::async_trait]
impl pb::master_server::Master for MasterService {
    async fn register(
        &self,
        request: Request<pb::RegisterRequest>,
    ) -> Result<Response<pb::RegisterReply>, Status> {
        let r = request.into_inner();
        if r.protocol_version != PROTOCOL_VERSION {
            return Err(Status::failed_precondition(format!(
                "worker {} speaks protocol {}, this master {PROTOCOL_VERSION}: run the same sluice version",
                r.worker_id, r.protocol_version
            )));
        }
        if r.fingerprint != self.fingerprint {
            return Err(Status::failed_precondition(format!(
                "worker {} runs job {}, this master {}: give both the same manifest",
                r.worker_id, r.fingerprint, self.fingerprint
            )));
        }
        if r.worker_id.is_empty()
            || r.address.parse::<SocketAddr>().is_err() && !r.address.contains(':')
        {
            return Err(Status::invalid_argument(
                "worker_id and a host:port address are required",
            ));
        }
        // Workers register again whenever the master is silent (a long back-off): only a new
        // or restarted one is worth a line, when the loop takes it.
        tracing::debug!(worker = %r.worker_id, address = %r.address, "worker registered");
        lock_unpoisoned(&self.shared).joins.push(Joining {
            id: r.worker_id,
            address: r.address,
            incarnation: r.incarnation,
        });
        Ok(Response::new(pb::RegisterReply {
            master_id: format!("master-{}", std::process::id()),
        }))
    }

    async fn leave(
        &self,
        request: Request<pb::LeaveRequest>,
    ) -> Result<Response<pb::LeaveReply>, Status> {
        let id = request.into_inner().worker_id;
        let (tx, rx) = oneshot::channel();
        lock_unpoisoned(&self.shared).leaves.push((id.clone(), tx));
        tracing::info!(worker = %id, "worker asks to leave");
        let _ = tokio::time::timeout(LEAVE_TIMEOUT, rx).await;
        Ok(Response::new(pb::LeaveReply {}))
    }

    async fn status(
        &self,
        _request: Request<pb::StatusRequest>,
    ) -> Result<Response<pb::StatusReply>, Status> {
        Ok(Response::new(lock_unpoisoned(&self.shared).status.clone()))
    }
}
