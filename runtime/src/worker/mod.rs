//! `sluice worker`: runs the partitions the master assigns, exchanges shuffle blocks with the
//! other workers, and writes its partitions' state to the checkpoint store.
//!
//! - [`service`]: the gRPC side, which only passes messages;
//! - [`executor`]: the thread that runs job work (tasks, state, checkpoint I/O) by command;
//! - here: serving, registering with the master, and the hand-off on shutdown.

mod executor;
mod service;

use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::sync::oneshot;

use crate::checkpoint::Checkpointer;
use crate::job::Job;
use crate::rpc::{AddToken, CheckToken, MAX_MESSAGE_BYTES, PROTOCOL_VERSION, Tls, channel, pb};
use crate::time::now_ms;
use executor::{Current, executor_thread};
use service::WorkerService;

/// How a worker runs.
pub struct WorkerOptions {
    pub id: String,
    /// Where to serve.
    pub listen: SocketAddr,
    /// How peers and the master reach this worker (`host:port`).
    pub advertise: String,
    pub master: String,
    pub fingerprint: String,
    pub token: String,
    /// Mutual TLS with the master and the other workers.
    pub tls: Option<Tls>,
    /// Where to serve `grpc.health.v1` for probes: ready once registered with the master.
    pub health: Option<SocketAddr>,
}

/// Serves until `shutdown` resolves; then asks the master to hand its partitions off.
pub async fn run(
    job: Job,
    ckpt: Checkpointer,
    options: WorkerOptions,
    shutdown: impl std::future::Future<Output = ()> + Send + 'static,
) -> Result<(), String> {
    let partitions = job.partitions();
    let epoch = Arc::new(AtomicU64::new(0));
    let current: Current = Arc::default();
    let (tx, rx) = std::sync::mpsc::channel();
    {
        let (current, epoch) = (current.clone(), epoch.clone());
        std::thread::Builder::new()
            .name("sluice-worker-exec".into())
            .spawn(move || executor_thread(job, ckpt, current, epoch, rx))
            .map_err(|e| format!("cannot start the executor thread: {e}"))?;
    }
    let last_contact = Arc::new(AtomicU64::new(0));
    let service = WorkerService {
        id: options.id.clone(),
        address: options.advertise.clone(),
        fingerprint: options.fingerprint.clone(),
        token: options.token.clone(),
        epoch,
        last_contact: last_contact.clone(),
        commands: Mutex::new(tx),
        current,
        peers: Mutex::default(),
        tls: options.tls.clone(),
        partitions,
        rejected: AtomicU64::new(0),
    };
    // Blocks up to the same limit peers send; larger messages are refused by tonic with an error
    // (the batch fails and is retried), never a crash.
    let server = tonic::service::interceptor::InterceptedService::new(
        pb::worker_server::WorkerServer::new(service).max_decoding_message_size(MAX_MESSAGE_BYTES),
        CheckToken::new(&options.token),
    );
    let (stop_tx, stop_rx) = oneshot::channel::<()>();
    let listen = options.listen;
    let mut builder = crate::rpc::listener::server(options.tls.as_ref())?;
    let incoming = crate::rpc::listener::bind(listen, Default::default())
        .await
        .map_err(|e| format!("cannot listen on {listen}: {e}"))?;
    let serve = tokio::spawn(async move {
        builder
            .add_service(server)
            .serve_with_incoming_shutdown(incoming, async {
                let _ = stop_rx.await;
            })
            .await
    });
    tracing::info!(id = %options.id, listen = %options.listen, advertise = %options.advertise, master = %options.master, "worker serving");
    let health = match options.health {
        Some(addr) => {
            Some(crate::rpc::health::Health::serve(addr, crate::rpc::health::WORKER).await?)
        }
        None => None,
    };
    let register = tokio::spawn(register_loop(
        Registration {
            id: options.id.clone(),
            address: options.advertise.clone(),
            master: options.master.clone(),
            fingerprint: options.fingerprint.clone(),
            token: options.token.clone(),
            tls: options.tls.clone(),
        },
        last_contact,
        health,
    ));
    shutdown.await;
    register.abort();
    // Scale-down: the master snapshots and moves our partitions before it lets us go.
    let token = AddToken::new(&options.token)?;
    if let Ok(ch) = channel(
        &options.master,
        Duration::from_secs(60),
        options.tls.as_ref(),
    ) {
        let mut master = pb::master_client::MasterClient::with_interceptor(ch, token);
        match master
            .leave(pb::LeaveRequest {
                worker_id: options.id.clone(),
            })
            .await
        {
            Ok(_) => tracing::info!("the master took our partitions; leaving"),
            Err(e) => {
                tracing::warn!(error = %e.message(), "could not hand off to the master; leaving anyway")
            }
        }
    }
    let _ = stop_tx.send(());
    let _ = serve.await;
    Ok(())
}

/// Who a worker is, as it registers.
struct Registration {
    id: String,
    /// Where the master and the other workers reach it.
    address: String,
    master: String,
    fingerprint: String,
    token: String,
    tls: Option<Tls>,
}

/// How long a registration may take, connection included.
const REGISTER_TIMEOUT: Duration = Duration::from_secs(5);

/// Registers with the master, and again whenever the master has been silent for a while (it
/// restarted, or lost us); says the worker is ready while it is registered.
async fn register_loop(
    me: Registration,
    last_contact: Arc<AtomicU64>,
    health: Option<crate::rpc::health::Health>,
) {
    let Registration {
        id,
        address,
        master,
        fingerprint,
        token,
        tls,
    } = me;
    let incarnation = format!("{}-{}", std::process::id(), now_ms());
    let mut backoff = Duration::from_millis(100);
    loop {
        let silent = now_ms().saturating_sub(last_contact.load(Ordering::Relaxed));
        if silent > 1500 {
            let result = async {
                let ch = channel(&master, Duration::from_secs(5), tls.as_ref())?;
                let mut client =
                    pb::master_client::MasterClient::with_interceptor(ch, AddToken::new(&token)?);
                client
                    .register(pb::RegisterRequest {
                        protocol_version: PROTOCOL_VERSION,
                        fingerprint: fingerprint.clone(),
                        worker_id: id.clone(),
                        incarnation: incarnation.clone(),
                        address: address.clone(),
                    })
                    .await
                    .map_err(|e| format!("{}: {}", e.code(), e.message()))
            };
            // Bounded whole: a master whose process is frozen accepts the connection and never
            // answers, and the channel's own timeouts do not cover the HTTP/2 handshake. Its
            // successor, under the same name, is found at the next try.
            let result = match tokio::time::timeout(REGISTER_TIMEOUT, result).await {
                Ok(result) => result,
                Err(_) => Err(format!("no answer within {} s", REGISTER_TIMEOUT.as_secs())),
            };
            match result {
                Ok(_) => {
                    tracing::info!(%master, "registered with the master");
                    if let Some(h) = &health {
                        h.ready(true).await;
                    }
                    last_contact.store(now_ms(), Ordering::Relaxed);
                    backoff = Duration::from_millis(100);
                }
                Err(e) => {
                    tracing::warn!(%master, error = %e, retry_in = ?backoff, "cannot register with the master; retrying");
                    if let Some(h) = &health {
                        h.ready(false).await;
                    }
                    tokio::time::sleep(backoff).await;
                    // Capped low: a master that starts with its workers (a resume, a new job)
                    // is found within a second of answering, and a try costs one connection.
                    backoff = (backoff * 2).min(Duration::from_secs(1));
                    continue;
                }
            }
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
}
