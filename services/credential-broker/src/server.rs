//! The `steward.broker.v1.CredentialBroker` gRPC adapter.
//!
//! Every issue, renewal and revocation asks authority first, with the
//! caller as principal and the request's incident and task window, and
//! obeys the decision: DENY is PERMISSION_DENIED, APPROVAL_REQUIRED is
//! FAILED_PRECONDITION naming the approval request, and an unreachable
//! authority is UNAVAILABLE with nothing issued. The decision also carries
//! inventory's view of the identity: a suspended, revoked or decommissioned
//! identity gets nothing, whatever the policies say.

use std::pin::Pin;
use std::sync::Arc;

use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use ring::rand::{SecureRandom, SystemRandom};
use steward_evidence::EvidenceRecord;
use steward_evidence::record::{
    Effect as EvidenceEffect, MAX_REASON, OutcomeStatus, truncate_utf8,
};
use steward_identity::{PeerIdentity, SpiffeId};
use steward_proto::steward::authority::v1 as authority_pb;
use steward_proto::steward::broker::v1 as pb;
use steward_proto::steward::broker::v1::credential_broker_server::CredentialBroker;
use steward_proto::steward::inventory::v1::inventory_service_client::InventoryServiceClient;
use tokio_stream::Stream;
use tonic::transport::Channel;
use tonic::{Request, Response, Status};
use uuid::Uuid;

use crate::authorities::Authorities;
use crate::backends::{BackendCredential, BackendError, CredentialBackend};
use crate::ca::IssuedSvid;
use crate::config::TtlConfig;
use crate::keys::KeyEncryption;
use crate::now_ns;
use crate::store::writer::{Applied, Change, RevocationEvidence, Writer};
use crate::store::{Kind, Lease, LeaseFilter, LeaseState, Store, StoreError};

mod decision;
mod issuance;
pub mod rotation;
mod watch;
mod wire;

pub(crate) use decision::Allowed;
pub use issuance::lease_record;
pub(crate) use issuance::{Made, Make};
pub(crate) use wire::*;

/// Most leases one `RevokeLeases` call ends.
const MAX_BULK_REVOKE: usize = 10_000;
/// The prefix of every API token (so scanners can recognise a leaked one).
pub const TOKEN_PREFIX: &str = "stw_";
/// Characters of a token kept, after the prefix, as its public reference.
const TOKEN_REF_CHARS: usize = 8;
const NS: i64 = 1_000_000_000;

/// What the broker shares between requests.
pub struct Shared {
    pub own: SpiffeId,
    pub store: Store,
    pub writer: Writer,
    /// The signing authorities; replaced whole by a CA rotation.
    pub authorities: std::sync::RwLock<Arc<Authorities>>,
    /// How generated CA certificates live (for rotations).
    pub ca_config: crate::config::CaConfig,
    /// Counts CA rotations: the Workload API's streams resend bundles and
    /// SVIDs when it moves.
    pub rotated: tokio::sync::watch::Sender<u64>,
    /// Decisions, batched.
    pub authority: crate::authorizer::Authorizer,
    /// For risk signals (a rotation whose revocation was not confirmed).
    pub inventory: InventoryServiceClient<Channel>,
    /// The external credential backend, if one is configured.
    pub backend: Option<Arc<dyn CredentialBackend>>,
    /// Seals backend secrets at rest.
    pub kek: Arc<dyn KeyEncryption>,
    pub ttl: TtlConfig,
    pub random: SystemRandom,
}

#[derive(Clone)]
pub struct BrokerServer {
    pub(crate) shared: Arc<Shared>,
}

impl BrokerServer {
    pub fn new(shared: Arc<Shared>) -> Self {
        Self { shared }
    }

    /// The broker's own SPIFFE ID.
    pub fn own(&self) -> &SpiffeId {
        &self.shared.own
    }

    /// The CA and JWT signing key.
    pub fn authorities(&self) -> Arc<Authorities> {
        self.shared
            .authorities
            .read()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .clone()
    }

    /// How long replaced CA and JWT keys stay published: the longest a
    /// credential they signed can live.
    pub fn overlap(&self) -> time::Duration {
        time::Duration::seconds(i64::try_from(self.shared.ttl.max).unwrap_or(i64::MAX))
    }

    /// Changes whenever the CA is rotated.
    pub fn ca_changes(&self) -> tokio::sync::watch::Receiver<u64> {
        self.shared.rotated.subscribe()
    }

    /// The lease writer (and its live revocation feed).
    pub fn writer(&self) -> &Writer {
        &self.shared.writer
    }
}

pub fn store_status(error: StoreError) -> Status {
    match error {
        StoreError::NotFound(m) => Status::not_found(m),
        StoreError::FailedPrecondition(m) => Status::failed_precondition(m),
        StoreError::Storage(detail) => {
            tracing::error!(error = %detail, "broker storage error");
            Status::unavailable("the broker's storage is unavailable; nothing was changed; retry")
        }
        StoreError::StorageFull(detail) => {
            tracing::error!(error = %detail, "broker storage is full");
            Status::resource_exhausted(steward_db::FULL)
        }
        StoreError::Corrupt(detail) => {
            tracing::error!(error = %detail, "broker storage holds a value it cannot read");
            Status::data_loss(
                "the broker's storage holds a value it cannot read; nothing was changed",
            )
        }
    }
}

type WatchStream = Pin<Box<dyn Stream<Item = Result<pb::Revocation, Status>> + Send>>;

#[tonic::async_trait]
impl CredentialBroker for BrokerServer {
    async fn get_trust_bundle(
        &self,
        _request: Request<pb::GetTrustBundleRequest>,
    ) -> Result<Response<pb::GetTrustBundleResponse>, Status> {
        let authorities = self.authorities();
        Ok(Response::new(pb::GetTrustBundleResponse {
            trust_domain: self.shared.own.trust_domain().name().to_owned(),
            x509_authorities: authorities.roots.clone(),
            jwt_authorities: serde_json::to_vec(&authorities.jwks)
                .map_err(|e| Status::internal(e.to_string()))?,
            x509_intermediates: authorities.intermediates.clone(),
        }))
    }

    async fn rotate_ca(
        &self,
        request: Request<pb::RotateCaRequest>,
    ) -> Result<Response<pb::RotateCaResponse>, Status> {
        let caller = caller(&request)?;
        text("reason", &request.get_ref().reason, 1024, true)?;
        let allowed = self
            .authorize_ca_rotation(&request, &caller, &request.get_ref().reason)
            .await?;
        let r = request.into_inner();
        let what = if r.rotate_root {
            crate::authorities::CaRotation::Root
        } else {
            crate::authorities::CaRotation::Intermediate
        };
        let trust_domain = self.shared.own.trust_domain().name().to_owned();
        let current = self.authorities();
        current
            .rotate(
                &self.shared.store,
                self.shared.kek.as_ref(),
                &self.shared.ca_config,
                &crate::authorities::RotationOrder {
                    actor: &caller,
                    what,
                    reason: &r.reason,
                    decision: &allowed,
                },
            )
            .await
            .map_err(|e| {
                tracing::error!(error = e, "CA rotation failed");
                Status::unavailable("the CA could not be rotated; nothing changed")
            })?;
        let reloaded = Authorities::load_or_generate(
            &self.shared.store,
            self.shared.kek.as_ref(),
            &trust_domain,
            &self.shared.ca_config,
            &self.shared.own.to_string(),
            self.overlap(),
        )
        .await
        .map_err(|e| {
            tracing::error!(error = e, "cannot load the rotated CA");
            Status::unavailable("the rotated CA could not be loaded; restart the broker")
        })?;
        *self
            .shared
            .authorities
            .write()
            .unwrap_or_else(std::sync::PoisonError::into_inner) = Arc::new(reloaded);
        self.shared.rotated.send_modify(|n| *n += 1);
        let bundle = self
            .get_trust_bundle(Request::new(pb::GetTrustBundleRequest {}))
            .await?
            .into_inner();
        Ok(Response::new(pb::RotateCaResponse {
            bundle: Some(bundle),
        }))
    }

    async fn issue_x509_svid(
        &self,
        request: Request<pb::IssueX509SvidRequest>,
    ) -> Result<Response<pb::IssueX509SvidResponse>, Status> {
        let caller = caller(&request)?;
        let r = request.into_inner();
        let (task, now) = self.checked(&r.identity_id, r.ttl_seconds, r.task.as_ref())?;
        if r.csr.is_empty() {
            return Err(Status::invalid_argument(
                "csr: is required (a DER PKCS#10 request; the private key stays with the caller)",
            ));
        }
        if r.csr.len() > 16 * 1024 {
            return Err(Status::invalid_argument("csr: at most 16 KiB"));
        }
        let (lease, made) = self
            .issue(
                &caller,
                &r.identity_id,
                Make::X509 {
                    csr: &r.csr,
                    dns_names: &[],
                },
                r.ttl_seconds,
                &task,
                now,
            )
            .await?;
        Ok(Response::new(pb::IssueX509SvidResponse {
            lease: Some(lease_to_pb(&lease)),
            x509_svid: made.x509_chain(),
            bundle: self.authorities().roots.clone(),
        }))
    }

    async fn issue_jwt_svid(
        &self,
        request: Request<pb::IssueJwtSvidRequest>,
    ) -> Result<Response<pb::IssueJwtSvidResponse>, Status> {
        let caller = caller(&request)?;
        let r = request.into_inner();
        let (task, now) = self.checked(&r.identity_id, r.ttl_seconds, r.task.as_ref())?;
        check_audience(&r.audience)?;
        let (lease, made) = self
            .issue(
                &caller,
                &r.identity_id,
                Make::Jwt {
                    audience: &r.audience,
                },
                r.ttl_seconds,
                &task,
                now,
            )
            .await?;
        Ok(Response::new(pb::IssueJwtSvidResponse {
            lease: Some(lease_to_pb(&lease)),
            token: made.secret(),
        }))
    }

    async fn issue_api_token(
        &self,
        request: Request<pb::IssueApiTokenRequest>,
    ) -> Result<Response<pb::IssueApiTokenResponse>, Status> {
        let caller = caller(&request)?;
        let r = request.into_inner();
        let (task, now) = self.checked(&r.identity_id, r.ttl_seconds, r.task.as_ref())?;
        check_scopes(&r.scopes)?;
        let (lease, made) = self
            .issue(
                &caller,
                &r.identity_id,
                Make::Token { scopes: &r.scopes },
                r.ttl_seconds,
                &task,
                now,
            )
            .await?;
        Ok(Response::new(pb::IssueApiTokenResponse {
            lease: Some(lease_to_pb(&lease)),
            token: made.secret(),
        }))
    }

    async fn issue_database_credential(
        &self,
        request: Request<pb::IssueDatabaseCredentialRequest>,
    ) -> Result<Response<pb::IssueDatabaseCredentialResponse>, Status> {
        let caller = caller(&request)?;
        let r = request.into_inner();
        let (task, now) = self.checked(&r.identity_id, r.ttl_seconds, r.task.as_ref())?;
        text("template", &r.template, 64, true)?;
        let (lease, made) = self
            .issue(
                &caller,
                &r.identity_id,
                Make::DatabaseRole {
                    template: &r.template,
                },
                r.ttl_seconds,
                &task,
                now,
            )
            .await?;
        let Made::DatabaseRole(credential) = made else {
            return Err(Status::internal("the backend answered out of kind"));
        };
        Ok(Response::new(pb::IssueDatabaseCredentialResponse {
            lease: Some(lease_to_pb(&lease)),
            username: credential.username,
            password: credential.password,
        }))
    }

    async fn introspect(
        &self,
        request: Request<pb::IntrospectRequest>,
    ) -> Result<Response<pb::IntrospectResponse>, Status> {
        let token = request.into_inner().token;
        if token.is_empty() || token.len() > 256 {
            return Err(Status::invalid_argument(
                "token: is required (at most 256 bytes)",
            ));
        }
        let inactive = || Response::new(pb::IntrospectResponse::default());
        if !token.starts_with(TOKEN_PREFIX) {
            return Ok(inactive());
        }
        let Some(lease) = self
            .introspection(&sha256(token.as_bytes()))
            .await
            .map_err(store_status)?
        else {
            return Ok(inactive());
        };
        Ok(Response::new(pb::IntrospectResponse {
            active: true,
            lease_id: lease.lease_id,
            identity_id: lease.identity_id,
            subject: lease.spiffe_id,
            scopes: lease.scopes,
            expire_time: timestamp(lease.expires_at_ns),
            issue_time: timestamp(lease.issued_at_ns),
            holder: lease.holder,
            incident_ref: lease.incident_ref,
        }))
    }

    async fn get_lease(
        &self,
        request: Request<pb::GetLeaseRequest>,
    ) -> Result<Response<pb::GetLeaseResponse>, Status> {
        let id = request.into_inner().lease_id;
        uuid("lease_id", &id)?;
        let lease = self.shared.store.lease(&id).await.map_err(store_status)?;
        Ok(Response::new(pb::GetLeaseResponse {
            lease: Some(lease_to_pb(&lease)),
        }))
    }

    async fn list_leases(
        &self,
        request: Request<pb::ListLeasesRequest>,
    ) -> Result<Response<pb::ListLeasesResponse>, Status> {
        let r = request.into_inner();
        let page_size = match r.page_size {
            0 => 100,
            n if n > 1000 => {
                return Err(Status::invalid_argument("page_size: at most 1000"));
            }
            n => n as usize,
        };
        if !r.identity_id.is_empty() {
            uuid("identity_id", &r.identity_id)?;
        }
        text("incident_ref", &r.incident_ref, 256, false)?;
        text("holder", &r.holder, 2048, false)?;
        if !r.page_token.is_empty() {
            uuid("page_token", &r.page_token)?;
        }
        let state = match pb::LeaseState::try_from(r.state) {
            Ok(pb::LeaseState::Unspecified) => None,
            Ok(pb::LeaseState::Active) => Some(LeaseState::Active),
            Ok(pb::LeaseState::Revoked) => Some(LeaseState::Revoked),
            Ok(pb::LeaseState::Expired) => Some(LeaseState::Expired),
            Err(_) => {
                return Err(Status::invalid_argument(format!(
                    "state: {} is not a LeaseState",
                    r.state
                )));
            }
        };
        let some = |s: String| (!s.is_empty()).then_some(s);
        let filter = LeaseFilter {
            identity_id: some(r.identity_id),
            incident_ref: some(r.incident_ref),
            holder: some(r.holder),
            state,
        };
        let mut leases = self
            .shared
            .store
            .list(&filter, &r.page_token, page_size + 1)
            .await
            .map_err(store_status)?;
        let more = leases.len() > page_size;
        leases.truncate(page_size);
        let next_page_token = if more {
            leases
                .last()
                .map(|l| l.lease_id.clone())
                .unwrap_or_default()
        } else {
            String::new()
        };
        Ok(Response::new(pb::ListLeasesResponse {
            leases: leases.iter().map(lease_to_pb).collect(),
            next_page_token,
        }))
    }

    async fn renew_lease(
        &self,
        request: Request<pb::RenewLeaseRequest>,
    ) -> Result<Response<pb::RenewLeaseResponse>, Status> {
        let caller = caller(&request)?;
        let r = request.into_inner();
        uuid("lease_id", &r.lease_id)?;
        self.check_ttl(r.ttl_seconds)?;
        let lease = self
            .shared
            .store
            .lease(&r.lease_id)
            .await
            .map_err(store_status)?;
        let now = now_ns();
        let ttl = if r.ttl_seconds == 0 {
            lease.ttl_seconds
        } else {
            i64::from(r.ttl_seconds)
        };
        // Refused before authority is asked: a policy cap only shortens it.
        if let Some(why) = lease.renewal_refused(now, now.saturating_add(ttl.saturating_mul(NS))) {
            return Err(Status::failed_precondition(why));
        }
        let task = Task {
            incident_ref: lease.incident_ref.clone(),
            window_start_ns: lease.window_start_ns,
            window_end_ns: lease.window_end_ns,
            reason: format!("renew lease {}", lease.lease_id),
            correlation_id: String::new(),
        };
        let allowed = self
            .authorize(
                &caller,
                "renew",
                &lease.identity_id,
                &task,
                u64::try_from(ttl).unwrap_or(0),
            )
            .await?;
        let ttl = allowed
            .max_ttl()
            .map_or(ttl, |cap| ttl.min(i64::try_from(cap).unwrap_or(i64::MAX)));
        let expires_at_ns = now.saturating_add(ttl.saturating_mul(NS));
        let decision_id = allowed.decision.decision_id.clone();
        let evidence = Box::new(move |lease: &Lease| {
            let mut record = lease_record(lease, &caller, "credential.renew");
            record.decision.effect = EvidenceEffect::Allow;
            record
                .attributes
                .insert("renew_decision_id".into(), decision_id.clone());
            record
        });
        match self
            .shared
            .writer
            .submit(Change::Renew {
                lease_id: lease.lease_id,
                expires_at_ns,
                evidence,
            })
            .await
            .map_err(store_status)?
        {
            Applied::Renewed(lease) => Ok(Response::new(pb::RenewLeaseResponse {
                lease: Some(lease_to_pb(&lease)),
            })),
            _ => Err(Status::internal("the lease writer answered out of kind")),
        }
    }

    async fn revoke_lease(
        &self,
        request: Request<pb::RevokeLeaseRequest>,
    ) -> Result<Response<pb::RevokeLeaseResponse>, Status> {
        let caller = caller(&request)?;
        let r = request.into_inner();
        uuid("lease_id", &r.lease_id)?;
        text("reason", &r.reason, 1024, true)?;
        let lease = self
            .shared
            .store
            .lease(&r.lease_id)
            .await
            .map_err(store_status)?;
        if lease.state != LeaseState::Active {
            // Already ended: nothing to do, and nothing to record.
            return Ok(Response::new(pb::RevokeLeaseResponse {
                lease: Some(lease_to_pb(&lease)),
            }));
        }
        let ended = self
            .revoke(&caller, std::slice::from_ref(&lease), &r.reason, "", false)
            .await?;
        let lease = match ended.into_iter().next() {
            Some(lease) => lease,
            // Ended meanwhile (the reaper, another revocation).
            None => self
                .shared
                .store
                .lease(&r.lease_id)
                .await
                .map_err(store_status)?,
        };
        Ok(Response::new(pb::RevokeLeaseResponse {
            lease: Some(lease_to_pb(&lease)),
        }))
    }

    async fn revoke_leases(
        &self,
        request: Request<pb::RevokeLeasesRequest>,
    ) -> Result<Response<pb::RevokeLeasesResponse>, Status> {
        let caller = caller(&request)?;
        let r = request.into_inner();
        text("reason", &r.reason, 1024, true)?;
        text("correlation_id", &r.correlation_id, 256, false)?;
        // Authority revoking a closed incident's leases has decided already:
        // closing the incident was its decision.
        let decided =
            matches!(
                r.selector,
                Some(pb::revoke_leases_request::Selector::IncidentRef(_))
            ) && SpiffeId::from_parts(self.shared.own.trust_domain(), "/service/authority")
                .is_ok_and(|authority| authority.to_string() == caller);
        let filter = match r.selector {
            Some(pb::revoke_leases_request::Selector::IncidentRef(i)) => {
                text("incident_ref", &i, 256, true)?;
                LeaseFilter {
                    incident_ref: Some(i),
                    ..LeaseFilter::default()
                }
            }
            Some(pb::revoke_leases_request::Selector::IdentityId(i)) => {
                uuid("identity_id", &i)?;
                LeaseFilter {
                    identity_id: Some(i),
                    ..LeaseFilter::default()
                }
            }
            Some(pb::revoke_leases_request::Selector::Holder(h)) => {
                SpiffeId::parse(&h)
                    .map_err(|e| Status::invalid_argument(format!("holder: {e}")))?;
                LeaseFilter {
                    holder: Some(h),
                    ..LeaseFilter::default()
                }
            }
            None => {
                return Err(Status::invalid_argument(
                    "selector: one of incident_ref, identity_id or holder is required",
                ));
            }
        };
        let mut leases = self
            .shared
            .store
            .list(
                &LeaseFilter {
                    state: Some(LeaseState::Active),
                    ..filter
                },
                "",
                MAX_BULK_REVOKE + 1,
            )
            .await
            .map_err(store_status)?;
        let more = leases.len() > MAX_BULK_REVOKE;
        leases.truncate(MAX_BULK_REVOKE);
        if leases.is_empty() {
            return Ok(Response::new(pb::RevokeLeasesResponse::default()));
        }
        let ended = self
            .revoke(&caller, &leases, &r.reason, &r.correlation_id, decided)
            .await?;
        Ok(Response::new(pb::RevokeLeasesResponse {
            lease_ids: ended.into_iter().map(|l| l.lease_id).collect(),
            more,
        }))
    }

    async fn rotate(
        &self,
        request: Request<pb::RotateRequest>,
    ) -> Result<Response<pb::RotateResponse>, Status> {
        self.rotate_impl(request).await.map(Response::new)
    }

    async fn get_rotation(
        &self,
        request: Request<pb::GetRotationRequest>,
    ) -> Result<Response<pb::GetRotationResponse>, Status> {
        let id = request.into_inner().rotation_id;
        uuid("rotation_id", &id)?;
        let rotation = self
            .shared
            .store
            .rotation(&id)
            .await
            .map_err(store_status)?;
        Ok(Response::new(pb::GetRotationResponse {
            rotation: Some(rotation::to_pb(&rotation)),
        }))
    }

    type WatchRevocationsStream = WatchStream;

    async fn watch_revocations(
        &self,
        request: Request<pb::WatchRevocationsRequest>,
    ) -> Result<Response<Self::WatchRevocationsStream>, Status> {
        let after = request.into_inner().after_sequence;
        if let Some(a) = after
            && i64::try_from(a).is_err()
        {
            return Err(Status::invalid_argument("after_sequence: out of range"));
        }
        let stream = watch::stream(
            self.shared.store.clone(),
            &self.shared.writer,
            after.map(|a| i64::try_from(a).unwrap_or(0)),
        )
        .await
        .map_err(store_status)?;
        Ok(Response::new(Box::pin(stream)))
    }
}
