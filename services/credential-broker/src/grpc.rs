//! The `steward.broker.v1.CredentialBroker` gRPC adapter: each RPC checks
//! its request (`convert`), calls the issuance core with the verified
//! caller, and answers with the core's result or its error's status.

mod watch;

use std::pin::Pin;
use std::sync::Arc;

use steward_errors::invalid;
use steward_errors::wire::{text, uuid};
use steward_identity::SpiffeId;
use steward_proto::steward::broker::v1 as pb;
use steward_proto::steward::broker::v1::credential_broker_server::CredentialBroker;
use tokio_stream::Stream;
use tonic::{Request, Response, Status};

use crate::authorities::CaRotation;
use crate::convert::{self, caller, lease_to_pb, rotation_to_pb, timestamp};
use crate::issuance::{Error, Issuer, Made, Make, Principal, Subject, Task, rotation};
use crate::now_ns;
use crate::store::{Kind, LeaseFilter, LeaseState};

/// Most leases one `RevokeLeases` call ends.
const MAX_BULK_REVOKE: usize = 10_000;

#[derive(Clone)]
pub struct BrokerServer {
    issuer: Arc<Issuer>,
}

impl BrokerServer {
    pub fn new(issuer: Arc<Issuer>) -> Self {
        Self { issuer }
    }

    /// The checks every issuance makes first: the identity, the TTL and
    /// the task. Returns the task and the time of the request.
    fn checked(
        &self,
        identity_id: &str,
        ttl_seconds: u32,
        task: Option<&pb::Task>,
    ) -> Result<(Task, i64), Status> {
        let now = now_ns();
        uuid("identity_id", identity_id)?;
        self.issuer.check_ttl(ttl_seconds)?;
        Ok((convert::task(task, now)?, now))
    }

    fn bundle(&self) -> Result<pb::GetTrustBundleResponse, Status> {
        let authorities = self.issuer.authorities();
        Ok(pb::GetTrustBundleResponse {
            trust_domain: self.issuer.own.trust_domain().name().to_owned(),
            x509_authorities: authorities.roots.clone(),
            jwt_authorities: serde_json::to_vec(&authorities.jwks)
                .map_err(|e| Error::internal("the JWT bundle could not be encoded", e))?,
            x509_intermediates: authorities.intermediates.clone(),
        })
    }
}

/// The kind a rotation replaces and how to mint its successor, from the
/// request's kind and that kind's fields.
fn what_to_rotate(r: &pb::RotateRequest) -> Result<(Kind, Make<'_>), Status> {
    Ok(match pb::CredentialKind::try_from(r.kind) {
        Ok(pb::CredentialKind::X509Svid) => {
            if r.csr.is_empty() || r.csr.len() > 16 * 1024 {
                return Err(invalid(
                    "csr",
                    "is required to rotate an X.509-SVID (a DER PKCS#10 request of at most 16 KiB)",
                )
                .into());
            }
            let what = Make::X509 {
                subject: Subject::Csr(&r.csr),
                dns_names: &[],
            };
            (Kind::X509Svid, what)
        }
        Ok(pb::CredentialKind::JwtSvid) => {
            convert::audience(&r.audience)?;
            let what = Make::Jwt {
                audience: &r.audience,
            };
            (Kind::JwtSvid, what)
        }
        Ok(pb::CredentialKind::ApiToken) => {
            convert::scopes(&r.scopes)?;
            (Kind::ApiToken, Make::Token { scopes: &r.scopes })
        }
        Ok(pb::CredentialKind::DatabaseRole) => {
            text("template", &r.template, 64, true)?;
            let what = Make::DatabaseRole {
                template: &r.template,
            };
            (Kind::DatabaseRole, what)
        }
        _ => {
            return Err(invalid(
                "kind",
                "one of CREDENTIAL_KIND_X509_SVID, CREDENTIAL_KIND_JWT_SVID, CREDENTIAL_KIND_API_TOKEN, CREDENTIAL_KIND_DATABASE_ROLE",
            )
            .into());
        }
    })
}

/// The leases a `RevokeLeases` selector names.
fn selected(selector: Option<pb::revoke_leases_request::Selector>) -> Result<LeaseFilter, Status> {
    use pb::revoke_leases_request::Selector;
    Ok(match selector {
        Some(Selector::IncidentRef(i)) => {
            text("incident_ref", &i, 256, true)?;
            LeaseFilter {
                incident_ref: Some(i),
                ..LeaseFilter::default()
            }
        }
        Some(Selector::IdentityId(i)) => {
            uuid("identity_id", &i)?;
            LeaseFilter {
                identity_id: Some(i),
                ..LeaseFilter::default()
            }
        }
        Some(Selector::Holder(h)) => {
            SpiffeId::parse(&h).map_err(|e| invalid("holder", e.to_string()))?;
            LeaseFilter {
                holder: Some(h),
                ..LeaseFilter::default()
            }
        }
        None => {
            return Err(invalid(
                "selector",
                "one of incident_ref, identity_id or holder is required",
            )
            .into());
        }
    })
}

/// What a rotation's caller gets: the rotation, the new lease and its
/// secret.
fn rotated(
    rotation: &crate::store::rotations::Rotation,
    lease: &crate::store::Lease,
    made: Made,
) -> pb::RotateResponse {
    let mut response = pb::RotateResponse {
        rotation: Some(rotation_to_pb(rotation)),
        lease: Some(lease_to_pb(lease)),
        ..Default::default()
    };
    match made {
        Made::X509(issued) => response.x509_svid = issued.chain_der,
        Made::DatabaseRole(credential) => {
            response.username = credential.username;
            response.password = credential.password;
        }
        other => response.token = other.secret(),
    }
    response
}

type WatchStream = Pin<Box<dyn Stream<Item = Result<pb::Revocation, Status>> + Send>>;

#[tonic::async_trait]
impl CredentialBroker for BrokerServer {
    async fn get_trust_bundle(
        &self,
        _request: Request<pb::GetTrustBundleRequest>,
    ) -> Result<Response<pb::GetTrustBundleResponse>, Status> {
        Ok(Response::new(self.bundle()?))
    }

    async fn rotate_ca(
        &self,
        request: Request<pb::RotateCaRequest>,
    ) -> Result<Response<pb::RotateCaResponse>, Status> {
        let caller = caller(&request)?;
        text("reason", &request.get_ref().reason, 1024, true)?;
        // The person of a bearer token (forwarded), else the caller.
        let principal = match request.metadata().get("authorization") {
            Some(token) => Principal::Bearer(
                token
                    .to_str()
                    .map_err(|_| invalid("authorization", "is not a valid header value"))?
                    .to_owned(),
            ),
            None => Principal::Workload(caller.clone()),
        };
        let r = request.into_inner();
        let what = if r.rotate_root {
            CaRotation::Root
        } else {
            CaRotation::Intermediate
        };
        self.issuer
            .rotate_ca(principal, &caller, what, &r.reason)
            .await?;
        Ok(Response::new(pb::RotateCaResponse {
            bundle: Some(self.bundle()?),
        }))
    }

    async fn issue_x509_svid(
        &self,
        request: Request<pb::IssueX509SvidRequest>,
    ) -> Result<Response<pb::IssueX509SvidResponse>, Status> {
        let caller = caller(&request)?;
        let r = request.into_inner();
        let (task, now) = self.checked(&r.identity_id, r.ttl_seconds, r.task.as_ref())?;
        convert::csr(&r.csr)?;
        let what = Make::X509 {
            subject: Subject::Csr(&r.csr),
            dns_names: &[],
        };
        let (lease, made) = self
            .issuer
            .issue(&caller, &r.identity_id, what, r.ttl_seconds, &task, now)
            .await?;
        Ok(Response::new(pb::IssueX509SvidResponse {
            lease: Some(lease_to_pb(&lease)),
            x509_svid: made.x509_chain(),
            bundle: self.issuer.authorities().roots.clone(),
        }))
    }

    async fn issue_jwt_svid(
        &self,
        request: Request<pb::IssueJwtSvidRequest>,
    ) -> Result<Response<pb::IssueJwtSvidResponse>, Status> {
        let caller = caller(&request)?;
        let r = request.into_inner();
        let (task, now) = self.checked(&r.identity_id, r.ttl_seconds, r.task.as_ref())?;
        convert::audience(&r.audience)?;
        let what = Make::Jwt {
            audience: &r.audience,
        };
        let (lease, made) = self
            .issuer
            .issue(&caller, &r.identity_id, what, r.ttl_seconds, &task, now)
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
        convert::scopes(&r.scopes)?;
        let what = Make::Token { scopes: &r.scopes };
        let (lease, made) = self
            .issuer
            .issue(&caller, &r.identity_id, what, r.ttl_seconds, &task, now)
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
        let what = Make::DatabaseRole {
            template: &r.template,
        };
        let (lease, made) = self
            .issuer
            .issue(&caller, &r.identity_id, what, r.ttl_seconds, &task, now)
            .await?;
        let Made::DatabaseRole(credential) = made else {
            return Err(Error::internal(
                "the backend answered out of kind",
                "a database credential was asked for",
            )
            .into());
        };
        let (username, password) = (credential.username, credential.password);
        Ok(Response::new(pb::IssueDatabaseCredentialResponse {
            lease: Some(lease_to_pb(&lease)),
            username,
            password,
        }))
    }

    async fn introspect(
        &self,
        request: Request<pb::IntrospectRequest>,
    ) -> Result<Response<pb::IntrospectResponse>, Status> {
        let token = request.into_inner().token;
        if token.is_empty() || token.len() > 256 {
            return Err(invalid("token", "is required (at most 256 bytes)").into());
        }
        let Some(lease) = self.issuer.introspect(&token).await? else {
            return Ok(Response::new(pb::IntrospectResponse::default()));
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
        let lease = self.issuer.store.lease(&id).await?;
        Ok(Response::new(pb::GetLeaseResponse {
            lease: Some(lease_to_pb(&lease)),
        }))
    }

    async fn list_leases(
        &self,
        request: Request<pb::ListLeasesRequest>,
    ) -> Result<Response<pb::ListLeasesResponse>, Status> {
        let r = request.into_inner();
        let page_size = steward_errors::wire::page_size(r.page_size)?;
        if !r.identity_id.is_empty() {
            uuid("identity_id", &r.identity_id)?;
        }
        text("incident_ref", &r.incident_ref, 256, false)?;
        text("holder", &r.holder, 2048, false)?;
        if !r.page_token.is_empty() {
            uuid("page_token", &r.page_token)?;
        }
        let state = convert::state_from_pb(r.state)?;
        let some = |s: String| (!s.is_empty()).then_some(s);
        let filter = LeaseFilter {
            identity_id: some(r.identity_id),
            incident_ref: some(r.incident_ref),
            holder: some(r.holder),
            state,
        };
        let mut leases = self
            .issuer
            .store
            .list(&filter, &r.page_token, page_size + 1)
            .await?;
        let more = leases.len() > page_size;
        leases.truncate(page_size);
        let next_page_token = match leases.last() {
            Some(last) if more => last.lease_id.clone(),
            _ => String::new(),
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
        let lease = self
            .issuer
            .renew(&caller, &r.lease_id, r.ttl_seconds)
            .await?;
        Ok(Response::new(pb::RenewLeaseResponse {
            lease: Some(lease_to_pb(&lease)),
        }))
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
            .issuer
            .revoke_one(&caller, &r.lease_id, &r.reason)
            .await?;
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
        let decided = matches!(
            r.selector,
            Some(pb::revoke_leases_request::Selector::IncidentRef(_))
        ) && SpiffeId::parse(&caller)
            .is_ok_and(|id| id.is_service(self.issuer.own.trust_domain(), "authority"));
        let filter = LeaseFilter {
            state: Some(LeaseState::Active),
            ..selected(r.selector)?
        };
        let mut leases = self
            .issuer
            .store
            .list(&filter, "", MAX_BULK_REVOKE + 1)
            .await?;
        let more = leases.len() > MAX_BULK_REVOKE;
        leases.truncate(MAX_BULK_REVOKE);
        if leases.is_empty() {
            return Ok(Response::new(pb::RevokeLeasesResponse::default()));
        }
        let ended = self
            .issuer
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
        let caller = caller(&request)?;
        let r = request.into_inner();
        let (task, now) = self.checked(&r.identity_id, r.ttl_seconds, r.task.as_ref())?;
        let (kind, what) = what_to_rotate(&r)?;
        let order = rotation::Order {
            caller: &caller,
            identity_id: &r.identity_id,
            kind,
            what,
            ttl_seconds: r.ttl_seconds,
            overlap_seconds: r.overlap_seconds,
            task: &task,
            now,
        };
        let (rotation, lease, made) = self.issuer.rotate(&order).await?;
        Ok(Response::new(rotated(&rotation, &lease, made)))
    }

    async fn get_rotation(
        &self,
        request: Request<pb::GetRotationRequest>,
    ) -> Result<Response<pb::GetRotationResponse>, Status> {
        let id = request.into_inner().rotation_id;
        uuid("rotation_id", &id)?;
        let rotation = self.issuer.store.rotation(&id).await?;
        Ok(Response::new(pb::GetRotationResponse {
            rotation: Some(rotation_to_pb(&rotation)),
        }))
    }

    type WatchRevocationsStream = WatchStream;

    async fn watch_revocations(
        &self,
        request: Request<pb::WatchRevocationsRequest>,
    ) -> Result<Response<Self::WatchRevocationsStream>, Status> {
        let after = request.into_inner().after_sequence;
        let after = match after.map(i64::try_from) {
            None => None,
            Some(Ok(a)) => Some(a),
            Some(Err(_)) => return Err(invalid("after_sequence", "out of range").into()),
        };
        let stream = watch::stream(self.issuer.store.clone(), &self.issuer.writer, after).await?;
        Ok(Response::new(Box::pin(stream)))
    }
}
