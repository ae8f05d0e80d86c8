//! The SPIFFE Workload API on a Unix domain socket.
//!
//! Any local process may connect; what it gets depends on who the kernel
//! says it is. Each call must carry the `workload.spiffe.io: true` header
//! (the specification's guard against browsers and confused proxies). The
//! caller is attested from the socket's peer credentials: `unix:uid:<uid>`,
//! `unix:gid:<gid>` and, when its executable can be read from `/proc`,
//! `unix:path:<path>`. Inventory matches these selectors against its
//! registration entries (`MatchSelectors`); each matching entry is one
//! identity the caller may act as.
//!
//! Every SVID is issued as any other: authority is asked (the workload as
//! principal, its identity as resource), the lease and its evidence commit
//! together. The broker generates the X.509-SVID's key (the Workload API
//! hands keys to workloads), and `FetchX509SVID` streams a fresh SVID at
//! half its lifetime, at once when one of the workload's leases is
//! revoked, and after a CA rotation; the bundle streams resend after a CA
//! rotation.
//!
//! Clients built on gRPC C-core (py-spiffe) and grpc-java send the
//! socket's path as the HTTP/2 authority; [`mend`] gives those streams a
//! valid one before the server sees them.

mod mend;
mod refusal;
mod renewal;
mod sds;
mod shared_match;

use renewal::{Held, HeldSvid, Issued, Renewals};

use std::collections::{BTreeMap, HashMap, HashSet};
use std::path::PathBuf;
use std::pin::Pin;
use std::time::Duration;

use prost_types::value::Kind as ValueKind;
use steward_identity::jwt::{self, VerifyingKeys};
use steward_proto::spiffe_workload as pb;
use steward_proto::spiffe_workload::spiffe_workload_api_server::SpiffeWorkloadApi;
use steward_proto::steward::inventory::v1 as inventory;
use steward_proto::steward::inventory::v1::inventory_service_client::InventoryServiceClient;
use steward_telemetry::TracedChannel;
use tokio::sync::{mpsc, watch};
use tokio_stream::Stream;
use tokio_stream::wrappers::ReceiverStream;
use tonic::transport::server::UdsConnectInfo;
use tonic::{Request, Response, Status};

use self::refusal::Refusal;
use crate::federation::Federation;
use crate::issuance::{Issuer, Make, Subject, Task};
use crate::now_ns;

/// The header every Workload API call must carry.
pub const SECURITY_HEADER: &str = "workload.spiffe.io";
/// The soonest a streamed SVID is replaced.
const MIN_REFRESH: Duration = Duration::from_secs(1);
const NS: i64 = steward_evidence::clock::NANOS_PER_SECOND;

type Stream_<T> = Pin<Box<dyn Stream<Item = Result<T, Status>> + Send>>;

/// The Workload API, issuing through the broker's core.
#[derive(Clone)]
pub struct WorkloadApi {
    issuer: std::sync::Arc<Issuer>,
    inventory: InventoryServiceClient<TracedChannel>,
    /// Turns true when the server stops: open streams end then.
    stopping: watch::Receiver<bool>,
    /// `MatchSelectors` lookups in flight, shared by callers that attest
    /// alike meanwhile.
    matching: std::sync::Arc<shared_match::Flights<Vec<Entry>>>,
    /// Foreign trust domains' bundles, served beside the own one.
    federation: std::sync::Arc<Federation>,
}

/// An identity the caller is registered as.
#[derive(Debug, Clone)]
struct Entry {
    /// The registration entry's id.
    id: String,
    spiffe_id: String,
    identity_id: String,
    x509_ttl: u32,
    jwt_ttl: u32,
    /// DNS SANs its X.509-SVIDs carry, as inventory checked them.
    dns_names: Vec<String>,
}

impl WorkloadApi {
    pub fn new(
        issuer: std::sync::Arc<Issuer>,
        inventory: TracedChannel,
        federation: std::sync::Arc<Federation>,
    ) -> Self {
        Self {
            issuer,
            inventory: InventoryServiceClient::new(inventory),
            stopping: watch::channel(false).1,
            matching: std::sync::Arc::default(),
            federation,
        }
    }

    /// The caller's selectors, after the header check.
    fn attest<T>(request: &Request<T>) -> Result<Vec<inventory::Selector>, Status> {
        let header = request.metadata().get(SECURITY_HEADER);
        if header.and_then(|v| v.to_str().ok()) != Some("true") {
            return Err(Refusal::NoSecurityHeader.into());
        }
        Self::peer_selectors(request)
    }

    /// The caller's selectors, from the kernel's credentials of the
    /// socket's peer (SDS clients send no security header).
    fn peer_selectors<T>(request: &Request<T>) -> Result<Vec<inventory::Selector>, Status> {
        let credentials = request
            .extensions()
            .get::<UdsConnectInfo>()
            .and_then(|info| info.peer_cred)
            .ok_or(Refusal::NotAttested)?;
        let selector = |value: String| inventory::Selector {
            r#type: "unix".to_owned(),
            value,
        };
        let mut selectors = vec![
            selector(format!("uid:{}", credentials.uid())),
            selector(format!("gid:{}", credentials.gid())),
        ];
        if let Some(pid) = credentials.pid()
            && let Ok(path) = std::fs::read_link(format!("/proc/{pid}/exe"))
            && let Some(path) = path.to_str()
        {
            selectors.push(selector(format!("path:{path}")));
        }
        Ok(selectors)
    }

    /// The identities the caller may act as; PERMISSION_DENIED when none.
    async fn entries(&self, selectors: Vec<inventory::Selector>) -> Result<Vec<Entry>, Status> {
        let key = selectors
            .iter()
            .map(|s| format!("{}:{}", s.r#type, s.value))
            .collect();
        self.matching.answer(key, self.match_now(selectors)).await
    }

    async fn match_now(&self, selectors: Vec<inventory::Selector>) -> Result<Vec<Entry>, Status> {
        let mut client = self.inventory.clone();
        let found = client
            .match_selectors(inventory::MatchSelectorsRequest { selectors })
            .await
            .map_err(|s| {
                tracing::warn!(code = ?s.code(), status_message = s.message(), "inventory cannot match selectors");
                Refusal::InventoryUnreachable
            })?
            .into_inner()
            .entries;
        if found.is_empty() {
            return Err(Refusal::NotRegistered.into());
        }
        let ttl = &self.issuer.ttl;
        Ok(found
            .into_iter()
            .map(|e| Entry {
                id: e.id,
                spiffe_id: e.spiffe_id,
                identity_id: e.identity_id,
                x509_ttl: ttl.entry_ttl(u32::try_from(e.x509_svid_ttl).unwrap_or(0)),
                jwt_ttl: ttl.entry_ttl(u32::try_from(e.jwt_svid_ttl).unwrap_or(0)),
                dns_names: e.dns_names,
            })
            .collect())
    }

    fn task() -> Task {
        Task {
            incident_ref: String::new(),
            window_start_ns: now_ns(),
            window_end_ns: i64::MAX,
            reason: "SPIFFE Workload API".to_owned(),
            correlation_id: String::new(),
        }
    }

    fn trust_domain_id(&self) -> String {
        format!("spiffe://{}", self.issuer.own.trust_domain())
    }

    fn bundle(&self) -> Vec<u8> {
        self.issuer.authorities().roots.concat()
    }

    /// Foreign trust domains' CA certificates, DER, by trust domain ID:
    /// an X.509-SVID answer's `federated_bundles`.
    fn federated_x509(&self) -> HashMap<String, Vec<u8>> {
        self.federation
            .foreign()
            .values()
            .map(|b| (b.trust_domain.id().to_string(), b.x509_authorities.concat()))
            .collect()
    }

    /// Every trust domain's X.509 bundle: this one's and the federated.
    fn x509_bundles(&self) -> HashMap<String, Vec<u8>> {
        let mut bundles = self.federated_x509();
        bundles.insert(self.trust_domain_id(), self.bundle());
        bundles
    }

    /// Every trust domain's JWT bundle (a JWKS document each).
    fn jwt_bundles(&self) -> Result<HashMap<String, Vec<u8>>, Status> {
        let jwks = |set: &jwt::JwkSet| {
            serde_json::to_vec(set)
                .map_err(|e| Status::from(Refusal::internal("a JWT bundle cannot be encoded", e)))
        };
        let mut bundles = HashMap::new();
        for bundle in self.federation.foreign().values() {
            bundles.insert(bundle.trust_domain.id().to_string(), jwks(&bundle.jwks())?);
        }
        bundles.insert(
            self.trust_domain_id(),
            jwks(&self.issuer.authorities().jwks)?,
        );
        Ok(bundles)
    }

    /// One entry's X.509-SVID, with a key the broker makes for it.
    async fn x509_svid(
        &self,
        entry: &Entry,
        now: i64,
    ) -> Result<(pb::X509svid, crate::store::Lease), Status> {
        let key = rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256)
            .map_err(|e| Refusal::internal("no key could be made for the SVID", e))?;
        let (lease, made) = self
            .issuer
            .issue(
                &entry.spiffe_id,
                &entry.identity_id,
                Make::X509 {
                    subject: Subject::Generated(&key),
                    dns_names: &entry.dns_names,
                },
                entry.x509_ttl,
                &Self::task(),
                now,
            )
            .await?;
        let svid = pb::X509svid {
            spiffe_id: entry.spiffe_id.clone(),
            x509_svid: made.x509_chain().concat(),
            x509_svid_key: key.serialize_der(),
            bundle: self.bundle(),
            hint: String::new(),
        };
        Ok((svid, lease))
    }

    /// An X.509-SVID for every entry: the one `held` still has while it is
    /// not due (half its lifetime, as issued for the entry as it is now),
    /// a fresh one otherwise, so each SVID rotates on its own schedule.
    /// With the leases served and the time until the next one is due.
    async fn x509_svids(
        &self,
        entries: &[Entry],
        held: &mut Held,
    ) -> Result<(pb::X509svidResponse, HashSet<String>, Duration), Status> {
        let now = now_ns();
        let mut svids = Vec::new();
        let mut leases = HashSet::new();
        let mut refresh = Duration::MAX;
        let mut refused = Vec::new();
        let mut kept = BTreeMap::new();
        for entry in entries {
            let fresh = match held.svids.remove(&entry.id) {
                Some(h) if h.renew_at_ns > now && h.issued_as == Issued::of(entry) => Some(h),
                _ => match self.x509_svid(entry, now).await {
                    Ok((svid, lease)) => Some(HeldSvid {
                        issued_as: Issued::of(entry),
                        svid,
                        lease_id: lease.lease_id,
                        renew_at_ns: now + (lease.expires_at_ns - now) / 2,
                    }),
                    Err(status) => {
                        refused.push((entry.spiffe_id.as_str(), status));
                        None
                    }
                },
            };
            if let Some(h) = fresh {
                let due = u64::try_from(h.renew_at_ns - now).unwrap_or(0);
                refresh = refresh.min(Duration::from_nanos(due).max(MIN_REFRESH));
                leases.insert(h.lease_id.clone());
                svids.push(h.svid.clone());
                kept.insert(entry.id.clone(), h);
            }
        }
        held.svids = kept;
        served(svids.is_empty(), refused)?;
        Ok((
            pb::X509svidResponse {
                svids,
                crl: Vec::new(),
                federated_bundles: self.federated_x509(),
            },
            leases,
            refresh,
        ))
    }

    /// Resolves when the server stops.
    fn stopped(&self) -> impl std::future::Future<Output = ()> + Send + 'static {
        let mut stopping = self.stopping.clone();
        async move {
            let _ = stopping.wait_for(|stop| *stop).await;
        }
    }

    /// Streams `make()` now and again after every CA rotation, until the
    /// client leaves or the server stops.
    fn bundles<T, F>(&self, make: F) -> Stream_<T>
    where
        T: Send + 'static,
        F: Fn(&WorkloadApi) -> Result<T, Status> + Send + 'static,
    {
        let (tx, rx) = mpsc::channel(1);
        let stopped = self.stopped();
        let mut changes = self.issuer.ca_changes();
        let mut federated = self.federation.changes();
        let api = self.clone();
        tokio::spawn(async move {
            tokio::pin!(stopped);
            loop {
                if tx.send(make(&api)).await.is_err() {
                    return;
                }
                tokio::select! {
                    () = tx.closed() => return,
                    () = &mut stopped => return,
                    changed = changes.changed() => if changed.is_err() { return },
                    changed = federated.changed() => if changed.is_err() { return },
                }
            }
        });
        Box::pin(ReceiverStream::new(rx))
    }
}

/// The trust domain a JWT's `sub` names, read before its signature is
/// checked (only to choose the keys that check it).
fn unverified_trust_domain(token: &str) -> Option<steward_identity::TrustDomain> {
    use base64::Engine as _;
    let payload = token.split('.').nth(1)?;
    let payload = base64::engine::general_purpose::URL_SAFE_NO_PAD
        .decode(payload.trim_end_matches('='))
        .ok()?;
    let claims: serde_json::Value = serde_json::from_slice(&payload).ok()?;
    let subject = steward_identity::SpiffeId::parse(claims.get("sub")?.as_str()?).ok()?;
    Some(subject.trust_domain().clone())
}

/// A JSON value as a protobuf `Value`.
fn to_value(value: &serde_json::Value) -> prost_types::Value {
    let kind = match value {
        serde_json::Value::Null => ValueKind::NullValue(0),
        serde_json::Value::Bool(b) => ValueKind::BoolValue(*b),
        serde_json::Value::Number(n) => ValueKind::NumberValue(n.as_f64().unwrap_or(0.0)),
        serde_json::Value::String(s) => ValueKind::StringValue(s.clone()),
        serde_json::Value::Array(items) => ValueKind::ListValue(prost_types::ListValue {
            values: items.iter().map(to_value).collect(),
        }),
        serde_json::Value::Object(map) => ValueKind::StructValue(to_struct(map)),
    };
    prost_types::Value { kind: Some(kind) }
}

fn to_struct(map: &serde_json::Map<String, serde_json::Value>) -> prost_types::Struct {
    prost_types::Struct {
        fields: map
            .iter()
            .map(|(k, v)| (k.clone(), to_value(v)))
            .collect::<BTreeMap<_, _>>()
            .into_iter()
            .collect(),
    }
}

#[tonic::async_trait]
impl SpiffeWorkloadApi for WorkloadApi {
    type FetchX509SVIDStream = Stream_<pb::X509svidResponse>;

    async fn fetch_x509svid(
        &self,
        request: Request<pb::X509svidRequest>,
    ) -> Result<Response<Self::FetchX509SVIDStream>, Status> {
        let selectors = Self::attest(&request)?;
        let entries = self.entries(selectors.clone()).await?;
        let mut held = Held::default();
        let (first, mut leases, mut refresh) = self.x509_svids(&entries, &mut held).await?;
        let (tx, rx) = mpsc::channel(2);
        let api = self.clone();
        let mut renewals = Renewals::of(&self.issuer, &self.federation);
        let stopped = self.stopped();
        tokio::spawn(async move {
            tokio::pin!(stopped);
            if tx.send(Ok(first)).await.is_err() {
                return;
            }
            loop {
                // Wait for half-life, for one of these leases to end, or
                // for a CA rotation.
                tokio::select! {
                    () = tx.closed() => return,
                    () = &mut stopped => return,
                    wake = renewals.next(refresh, &leases) => if !held.apply(wake) { return },
                }
                // Attest again: the entries may have changed.
                let next = match api.entries(selectors.clone()).await {
                    Ok(entries) => api.x509_svids(&entries, &mut held).await,
                    Err(status) => Err(status),
                };
                match next {
                    Ok((response, next_leases, next_refresh)) => {
                        leases = next_leases;
                        refresh = next_refresh;
                        if tx.send(Ok(response)).await.is_err() {
                            return;
                        }
                    }
                    Err(status) => {
                        let _ = tx.send(Err(status)).await;
                        return;
                    }
                }
            }
        });
        Ok(Response::new(Box::pin(ReceiverStream::new(rx))))
    }

    type FetchX509BundlesStream = Stream_<pb::X509BundlesResponse>;

    async fn fetch_x509_bundles(
        &self,
        request: Request<pb::X509BundlesRequest>,
    ) -> Result<Response<Self::FetchX509BundlesStream>, Status> {
        let selectors = Self::attest(&request)?;
        self.entries(selectors).await?;
        Ok(Response::new(self.bundles(|api| {
            Ok(pb::X509BundlesResponse {
                crl: Vec::new(),
                bundles: api.x509_bundles(),
            })
        })))
    }

    async fn fetch_jwtsvid(
        &self,
        request: Request<pb::JwtsvidRequest>,
    ) -> Result<Response<pb::JwtsvidResponse>, Status> {
        let selectors = Self::attest(&request)?;
        let r = request.into_inner();
        if r.audience.is_empty() || r.audience.iter().any(String::is_empty) {
            return Err(steward_errors::invalid("audience", "at least one is required").into());
        }
        let mut entries = self.entries(selectors).await?;
        if !r.spiffe_id.is_empty() {
            entries.retain(|e| e.spiffe_id == r.spiffe_id);
            if entries.is_empty() {
                return Err(Refusal::NotRegisteredAs(steward_errors::shown(&r.spiffe_id)).into());
            }
        }
        let now = now_ns();
        let mut svids = Vec::new();
        let mut refused = Vec::new();
        for entry in &entries {
            let issued = self
                .issuer
                .issue(
                    &entry.spiffe_id,
                    &entry.identity_id,
                    Make::Jwt {
                        audience: &r.audience,
                    },
                    entry.jwt_ttl,
                    &Self::task(),
                    now,
                )
                .await;
            match issued {
                Ok((_, made)) => svids.push(pb::Jwtsvid {
                    spiffe_id: entry.spiffe_id.clone(),
                    svid: made.secret(),
                    hint: String::new(),
                }),
                Err(error) => refused.push((entry.spiffe_id.as_str(), error.into())),
            }
        }
        served(svids.is_empty(), refused)?;
        Ok(Response::new(pb::JwtsvidResponse { svids }))
    }

    type FetchJWTBundlesStream = Stream_<pb::JwtBundlesResponse>;

    async fn fetch_jwt_bundles(
        &self,
        request: Request<pb::JwtBundlesRequest>,
    ) -> Result<Response<Self::FetchJWTBundlesStream>, Status> {
        let selectors = Self::attest(&request)?;
        self.entries(selectors).await?;
        Ok(Response::new(self.bundles(|api| {
            Ok(pb::JwtBundlesResponse {
                bundles: api.jwt_bundles()?,
            })
        })))
    }

    async fn validate_jwtsvid(
        &self,
        request: Request<pb::ValidateJwtsvidRequest>,
    ) -> Result<Response<pb::ValidateJwtsvidResponse>, Status> {
        Self::attest(&request)?;
        let r = request.into_inner();
        if r.audience.is_empty() {
            return Err(steward_errors::invalid("audience", "is required").into());
        }
        if r.svid.is_empty() {
            return Err(steward_errors::invalid("svid", "is required").into());
        }
        // The keys are the trust domain's the token claims to be from, and
        // only that one's: a federated trust domain's key never vouches for
        // a subject of another (this one included).
        let claimed = unverified_trust_domain(&r.svid).ok_or_else(|| {
            steward_errors::invalid("svid", "is not a JWT whose subject is a SPIFFE ID")
        })?;
        let jwks = if &claimed == self.issuer.own.trust_domain() {
            self.issuer.authorities().jwks.clone()
        } else {
            match self.federation.foreign().get(claimed.name()) {
                Some(bundle) => bundle.jwks(),
                None => {
                    return Err(steward_errors::invalid(
                        "svid",
                        "its subject's trust domain is neither this one nor a federated one",
                    )
                    .into());
                }
            }
        };
        let keys = VerifyingKeys::from_jwks(&jwks)
            .map_err(|e| Refusal::internal("a trust domain's JWT keys cannot be read", e))?;
        let validation = jwt::Validation {
            issuer: String::new(),
            audience: r.audience,
            leeway_secs: 0,
        };
        let claims = jwt::verify(&r.svid, &keys, &validation, now_ns() / NS)
            .map_err(|e| steward_errors::invalid("svid", format!("{e}")))?;
        let subject = steward_identity::SpiffeId::parse(&claims.subject).map_err(|e| {
            steward_errors::invalid("svid", format!("its subject is not a SPIFFE ID: {e}"))
        })?;
        // The subject was read twice, before and after the signature check,
        // by two parsers: should they ever disagree (a token with two `sub`
        // claims, say), the keys chosen were not the subject's.
        if subject.trust_domain() != &claimed {
            return Err(steward_errors::invalid(
                "svid",
                "its subject is not of the trust domain whose key signed it",
            )
            .into());
        }
        Ok(Response::new(pb::ValidateJwtsvidResponse {
            spiffe_id: claims.subject,
            claims: Some(to_struct(&claims.all)),
        }))
    }
}

/// Serves the Workload API at `socket` until `shutdown`. A stale socket
/// file from an earlier run is replaced; the socket is open to every local
/// user (attestation decides what each gets).
pub async fn serve(
    mut api: WorkloadApi,
    socket: PathBuf,
    shutdown: impl std::future::Future<Output = ()> + Send + 'static,
) -> Result<(), String> {
    let (stop, stopping) = watch::channel(false);
    api.stopping = stopping;
    let shutdown = async move {
        shutdown.await;
        let _ = stop.send(true);
    };
    use std::os::unix::fs::PermissionsExt as _;
    if let Some(dir) = socket.parent() {
        std::fs::create_dir_all(dir).map_err(|e| format!("{}: {e}", dir.display()))?;
    }
    match std::fs::remove_file(&socket) {
        Ok(()) => {}
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => return Err(format!("cannot replace {}: {e}", socket.display())),
    }
    let listener = tokio::net::UnixListener::bind(&socket)
        .map_err(|e| format!("cannot listen on {}: {e}", socket.display()))?;
    std::fs::set_permissions(&socket, std::fs::Permissions::from_mode(0o777))
        .map_err(|e| format!("{}: {e}", socket.display()))?;
    tracing::info!(socket = %socket.display(), "serving the SPIFFE Workload API");
    // Traced like every other server; a workload is known by what the
    // kernel says of its process, not by a certificate, so no caller.
    let served = tonic::transport::Server::builder()
        .layer(steward_telemetry::ServerLayer::new(|_| None))
        .add_service(
            steward_proto::spiffe_workload::spiffe_workload_api_server::SpiffeWorkloadApiServer::new(
                api.clone(),
            ),
        )
        .add_service(envoy_types::pb::envoy::service::secret::v3::secret_discovery_service_server::SecretDiscoveryServiceServer::new(api))
        .serve_with_incoming_shutdown(
            tokio_stream::StreamExt::map(
                tokio_stream::wrappers::UnixListenerStream::new(listener),
                |accepted| accepted.map(mend::Mended::new),
            ),
            shutdown,
        )
        .await
        .map_err(|e| e.to_string());
    let _ = std::fs::remove_file(&socket);
    served
}

/// Serves what could be issued: an entry whose SVID was refused (its
/// identity suspended, say) is left out and logged, as the spec asks,
/// and only when nothing at all could be issued does the call fail, with
/// the first refusal.
fn served(nothing: bool, refused: Vec<(&str, Status)>) -> Result<(), Status> {
    for (spiffe_id, status) in &refused {
        tracing::warn!(
            spiffe_id,
            code = ?status.code(),
            reason = status.message(),
            "workload api: an entry's svid was not issued; serving the others"
        );
    }
    match refused.into_iter().next() {
        Some((_, status)) if nothing => Err(status),
        _ => Ok(()),
    }
}
