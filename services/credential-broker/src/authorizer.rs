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

use opentelemetry::trace::SpanContext;
use steward_batch::{Group, limits};
use steward_proto::steward::authority::v1 as pb;
use steward_proto::steward::authority::v1::authority_service_client::AuthorityServiceClient;
use steward_telemetry::{Batched, TracedChannel};
use tokio::sync::{Semaphore, mpsc, oneshot};
use tonic::Status;

/// Connections to authority, and so batches in flight.
pub const CONNECTIONS: usize = 4;

type Reply = oneshot::Sender<Result<pb::Decision, Unanswered>>;

/// Why authority gave a request no decision.
#[derive(Debug, Clone)]
pub enum Unanswered {
    /// Authority's own status for the request (or for the whole batch).
    Refused(Status),
    /// Authority's answer broke the protocol: what was wrong.
    Malformed(String),
    /// The broker is stopping, or has no connection to authority.
    Stopping,
}

impl From<Unanswered> for Status {
    /// UNAVAILABLE unless authority refused the request itself: the broker
    /// cannot tell a deciding authority from one that did not answer.
    fn from(unanswered: Unanswered) -> Self {
        match unanswered {
            Unanswered::Refused(status) => status,
            Unanswered::Malformed(what) => Status::unavailable(what),
            Unanswered::Stopping => Status::unavailable("the broker is stopping"),
        }
    }
}

/// A queued request: what to ask, the span it was asked in, and where the
/// answer goes.
type Queued = (pb::AuthorizeRequest, SpanContext, Reply);

/// The queue in front of the dispatcher.
#[derive(Debug, Clone)]
pub struct Authorizer {
    queue: mpsc::Sender<Queued>,
    /// For a decision that carries its caller's bearer token (RotateCa by
    /// a person): a batch carries no per-request metadata.
    direct: Option<AuthorityServiceClient<TracedChannel>>,
}

impl Authorizer {
    /// The authorizer over `clients` (one per connection) and its
    /// dispatcher, which stops when `shutdown` resolves.
    pub fn start(
        clients: Vec<AuthorityServiceClient<TracedChannel>>,
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
    ) -> Result<pb::Decision, Unanswered> {
        let mut client = self.direct.clone().ok_or(Unanswered::Stopping)?;
        client
            .authorize(request)
            .await
            .map_err(Unanswered::Refused)?
            .into_inner()
            .decision
            .ok_or_else(|| Unanswered::Malformed("authority answered without a decision".into()))
    }

    /// Authority's answer to `request`: its decision, or the status
    /// `Authorize` would have returned. UNAVAILABLE if authority cannot
    /// be reached.
    /// The batch that carries it links to the caller's span.
    pub async fn decide(&self, request: pb::AuthorizeRequest) -> Result<pb::Decision, Unanswered> {
        let (reply, answer) = oneshot::channel();
        let origin = steward_telemetry::grpc::origin();
        self.queue
            .send((request, origin, reply))
            .await
            .map_err(|_| Unanswered::Stopping)?;
        answer.await.map_err(|_| Unanswered::Stopping)?
    }
}

async fn dispatch(
    clients: Vec<AuthorityServiceClient<TracedChannel>>,
    mut rx: Group<Queued>,
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
        let mut requests = Vec::with_capacity(group.len());
        let mut origins = Vec::with_capacity(group.len());
        let mut replies = Vec::with_capacity(group.len());
        for (request, origin, reply) in group {
            requests.push(request);
            origins.push(origin);
            replies.push(reply);
        }
        let mut client = clients[next % clients.len()].clone();
        next = next.wrapping_add(1);
        tokio::spawn(async move {
            let answers = send(&mut client, requests, origins).await;
            drop(permit);
            for (reply, answer) in replies.into_iter().zip(answers) {
                // A caller that gave up no longer listens.
                let _ = reply.send(answer);
            }
        });
    }
}

/// One batch's answers, one per request, in order. The call's span is a
/// child of the first request's and links to every request's.
async fn send(
    client: &mut AuthorityServiceClient<TracedChannel>,
    requests: Vec<pb::AuthorizeRequest>,
    origins: Vec<SpanContext>,
) -> Vec<Result<pb::Decision, Unanswered>> {
    let n = requests.len();
    let mut batch = tonic::Request::new(pb::AuthorizeBatchRequest { requests });
    batch.extensions_mut().insert(Batched(origins));
    let results = match client.authorize_batch(batch).await {
        Ok(response) => response.into_inner().results,
        Err(status) => return vec![Err(Unanswered::Refused(status)); n],
    };
    if results.len() != n {
        let wrong = Unanswered::Malformed(format!(
            "authority answered {} results for {n} requests",
            results.len()
        ));
        return vec![Err(wrong); n];
    }
    results
        .into_iter()
        .map(|r| match r.result {
            Some(pb::authorize_result::Result::Decision(decision)) => Ok(decision),
            Some(pb::authorize_result::Result::Error(e)) if e.code != 0 => Err(
                Unanswered::Refused(Status::new(tonic::Code::from(e.code), e.message)),
            ),
            _ => Err(Unanswered::Malformed(
                "authority answered a request with neither a decision nor an error".into(),
            )),
        })
        .collect()
}
