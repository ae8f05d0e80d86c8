//! The broker's decisions from authority, sent in batches (ADR 0014).
//!
//! Every issuance, renewal and revocation needs one decision. Callers
//! queue their requests here; one dispatcher sends whatever is queued as
//! one `AuthorizeBatch` call, with at most one batch in flight per
//! connection to authority. With nothing in flight a request goes at once,
//! alone, so an idle broker pays one call's latency; under load requests
//! gather behind the batches in flight and go together, and the per-call
//! cost of HTTP/2, TLS and the RPC stack is paid once per batch. Each
//! caller gets exactly the decision, or the status, authority gave its own
//! request.

use std::future::Future;
use std::sync::Arc;

use steward_batch::{Group, limits};
use steward_proto::steward::authority::v1 as pb;
use steward_proto::steward::authority::v1::authority_service_client::AuthorityServiceClient;
use tokio::sync::{Semaphore, mpsc, oneshot};
use tonic::Status;
use tonic::transport::Channel;

/// Connections to authority, and so batches in flight.
pub const CONNECTIONS: usize = 4;

type Reply = oneshot::Sender<Result<pb::Decision, Status>>;

/// The queue in front of the dispatcher.
#[derive(Debug, Clone)]
pub struct Authorizer {
    queue: mpsc::Sender<(pb::AuthorizeRequest, Reply)>,
    /// For a decision that carries its caller's bearer token (RotateCa by
    /// a person): a batch carries no per-request metadata.
    direct: Option<AuthorityServiceClient<Channel>>,
}

impl Authorizer {
    /// The authorizer over `clients` (one per connection) and its
    /// dispatcher, which stops when `shutdown` resolves.
    pub fn start(
        clients: Vec<AuthorityServiceClient<Channel>>,
        shutdown: impl Future<Output = ()> + Send + 'static,
    ) -> (Self, impl Future<Output = ()> + Send + 'static) {
        // Authority refuses a batch larger than its limit: the same constant.
        let (queue, rx) = steward_batch::queue(limits::AUTHORIZE_BATCH);
        let direct = clients.first().cloned();
        (Self { queue, direct }, dispatch(clients, rx, shutdown))
    }

    /// Authority's answer to one `Authorize` sent alone, with the metadata
    /// of `request` (a forwarded bearer token).
    pub async fn decide_alone(
        &self,
        request: tonic::Request<pb::AuthorizeRequest>,
    ) -> Result<pb::Decision, Status> {
        let mut client = self
            .direct
            .clone()
            .ok_or_else(|| Status::unavailable("no connection to authority"))?;
        client
            .authorize(request)
            .await?
            .into_inner()
            .decision
            .ok_or_else(|| Status::unavailable("authority answered without a decision"))
    }

    /// Authority's answer to `request`: its decision, or the status
    /// `Authorize` would have returned. UNAVAILABLE if authority cannot
    /// be reached.
    pub async fn decide(&self, request: pb::AuthorizeRequest) -> Result<pb::Decision, Status> {
        let (reply, answer) = oneshot::channel();
        self.queue
            .send((request, reply))
            .await
            .map_err(|_| Status::unavailable("the broker is stopping"))?;
        answer
            .await
            .map_err(|_| Status::unavailable("the broker is stopping"))?
    }
}

async fn dispatch(
    clients: Vec<AuthorityServiceClient<Channel>>,
    mut rx: Group<(pb::AuthorizeRequest, Reply)>,
    shutdown: impl Future<Output = ()> + Send + 'static,
) {
    let in_flight = Arc::new(Semaphore::new(clients.len().max(1)));
    let mut next = 0usize;
    tokio::pin!(shutdown);
    loop {
        // A free connection first, then everything that queued meanwhile.
        let permit = tokio::select! {
            () = &mut shutdown => return,
            permit = in_flight.clone().acquire_owned() => match permit {
                Ok(permit) => permit,
                Err(_) => return,
            },
        };
        let group = tokio::select! {
            () = &mut shutdown => return,
            group = rx.next() => match group {
                Some(group) => group,
                None => return,
            },
        };
        let (requests, replies): (Vec<_>, Vec<_>) = group.into_iter().unzip();
        let mut client = clients[next % clients.len()].clone();
        next = next.wrapping_add(1);
        tokio::spawn(async move {
            let answers = send(&mut client, requests).await;
            drop(permit);
            for (reply, answer) in replies.into_iter().zip(answers) {
                // A caller that gave up no longer listens.
                let _ = reply.send(answer);
            }
        });
    }
}

/// One batch's answers, one per request, in order.
async fn send(
    client: &mut AuthorityServiceClient<Channel>,
    requests: Vec<pb::AuthorizeRequest>,
) -> Vec<Result<pb::Decision, Status>> {
    let n = requests.len();
    let results = match client
        .authorize_batch(pb::AuthorizeBatchRequest { requests })
        .await
    {
        Ok(response) => response.into_inner().results,
        Err(status) => return vec![Err(status); n],
    };
    if results.len() != n {
        let wrong = Status::unavailable(format!(
            "authority answered {} results for {n} requests",
            results.len()
        ));
        return vec![Err(wrong); n];
    }
    results
        .into_iter()
        .map(|r| match r.result {
            Some(pb::authorize_result::Result::Decision(decision)) => Ok(decision),
            Some(pb::authorize_result::Result::Error(e)) if e.code != 0 => {
                Err(Status::new(tonic::Code::from(e.code), e.message))
            }
            _ => Err(Status::unavailable(
                "authority answered a request with neither a decision nor an error",
            )),
        })
        .collect()
}
