//! The gRPC adapter: protobuf in, validated domain values to the store,
//! protobuf out. Every error becomes a precise status here and nowhere else.

pub mod convert;
pub mod gate;
mod registration;
mod reports;
mod reviews;

use std::collections::BTreeSet;

use steward_identity::{PeerIdentity, SpiffeId, TrustDomain};
use steward_proto::steward::inventory::v1 as pb;
use steward_proto::steward::inventory::v1::inventory_service_server::InventoryService;
use tonic::{Request, Response, Status};
use uuid::Uuid;

use crate::domain::risk::assess;
use crate::domain::selector::{self, Selector};
use crate::domain::{
    self, ChangeContext, Error, FieldError, Identity, MAX_NAME, MAX_TEXT, UPDATABLE, now_ns,
    optional, parse_id, required,
};
use crate::import::{self, Defaults};
use crate::store::Store;
use crate::store::activity::{Permission, Signal};
use crate::store::import::DriftKind;
use crate::store::registration::RegistrationEntry;
use crate::store::reviews::{Attestation, Campaign, Decision};
use crate::store::transitions::{TransitionRequest, Transitions};
use convert::*;
use steward_errors::wire::page_size;

/// The most a signal or usage time may lie ahead of the server's clock.
const CLOCK_SKEW_NS: i64 = 300 * steward_evidence::clock::NANOS_PER_SECOND;

#[derive(Debug, Clone)]
pub struct InventoryServer {
    store: Store,
    transitions: Transitions,
    trust_domain: TrustDomain,
    gate: gate::LifecycleGate,
}

impl InventoryServer {
    pub fn new(
        store: Store,
        transitions: Transitions,
        trust_domain: TrustDomain,
        gate: gate::LifecycleGate,
    ) -> Self {
        Self {
            store,
            transitions,
            trust_domain,
            gate,
        }
    }

    /// The wire identity with its risk as of now.
    async fn present(&self, identity: &Identity) -> Result<pb::Identity, Status> {
        self.present_all(std::slice::from_ref(identity))
            .await?
            .pop()
            .ok_or_else(|| status(Error::Internal("no identity to present")))
    }

    async fn present_all(&self, identities: &[Identity]) -> Result<Vec<pb::Identity>, Status> {
        let names: Vec<String> = identities.iter().flat_map(Identity::owner_names).collect();
        let departed = self.store.departed_among(&names).await.map_err(status)?;
        let now = now_ns();
        Ok(identities
            .iter()
            .map(|i| {
                let gone = i.owner_names().iter().any(|n| departed.contains(n));
                identity_to_pb(i, assess(i, gone, now))
            })
            .collect())
    }
}

/// The one place domain errors become statuses: a field error carries a
/// `google.rpc.BadRequest`, storage detail is logged, never returned.
pub fn status(error: Error) -> Status {
    steward_errors::to_status(&error)
}

/// A refused field: named in the message and in a `google.rpc.BadRequest`.
fn invalid(e: FieldError) -> Status {
    status(Error::Invalid(e))
}

/// The verified caller and the request's change context.
fn context<T>(
    request: &Request<T>,
    wire: Option<&pb::ChangeContext>,
) -> Result<ChangeContext, Status> {
    let actor = PeerIdentity::caller(request)?;
    let wire = wire.cloned().unwrap_or_default();
    let context = ChangeContext {
        actor,
        incident_ref: wire.incident_ref,
        correlation_id: wire.correlation_id,
    };
    context.validate().map_err(invalid)?;
    Ok(context)
}

fn id(field: &str, value: &str) -> Result<Uuid, Status> {
    parse_id(field, value).map_err(invalid)
}

fn version(expected: i64) -> Option<i64> {
    (expected != 0).then_some(expected)
}

fn permission(system: &str, perm: &str, resource: &str) -> Result<Permission, Status> {
    required("system", system, MAX_NAME).map_err(invalid)?;
    required("permission", perm, MAX_NAME).map_err(invalid)?;
    optional("resource", resource, MAX_TEXT).map_err(invalid)?;
    Ok(Permission {
        system: system.to_owned(),
        permission: perm.to_owned(),
        resource: if resource.is_empty() {
            "*".to_owned()
        } else {
            resource.to_owned()
        },
    })
}

/// A wire time no later than now (plus skew); unset means now.
fn observed(field: &str, ts: Option<&prost_types::Timestamp>) -> Result<i64, Status> {
    let now = now_ns();
    match nanos(field, ts).map_err(invalid)? {
        None => Ok(now),
        Some(t) if t > now + CLOCK_SKEW_NS => {
            Err(steward_errors::invalid(field, "is in the future").into())
        }
        Some(t) => Ok(t),
    }
}

#[tonic::async_trait]
impl InventoryService for InventoryServer {
    steward_server::forward_rpcs! {
        create_registration_entry(pb::CreateRegistrationEntryRequest) -> pb::CreateRegistrationEntryResponse
            = create_registration_entry_impl(tonic);
        update_registration_entry(pb::UpdateRegistrationEntryRequest) -> pb::UpdateRegistrationEntryResponse
            = update_registration_entry_impl(tonic);
        delete_registration_entry(pb::DeleteRegistrationEntryRequest) -> pb::DeleteRegistrationEntryResponse
            = delete_registration_entry_impl(tonic);
        list_registration_entries(pb::ListRegistrationEntriesRequest) -> pb::ListRegistrationEntriesResponse
            = list_registration_entries_impl(tonic);
        match_selectors(pb::MatchSelectorsRequest) -> pb::MatchSelectorsResponse
            = match_selectors_impl(tonic);
        start_review_campaign(pb::StartReviewCampaignRequest) -> pb::StartReviewCampaignResponse
            = start_review_campaign_impl(tonic);
        get_review_campaign(pb::GetReviewCampaignRequest) -> pb::GetReviewCampaignResponse
            = get_review_campaign_impl(tonic);
        list_review_items(pb::ListReviewItemsRequest) -> pb::ListReviewItemsResponse
            = list_review_items_impl(tonic);
        attest_review(pb::AttestReviewRequest) -> pb::AttestReviewResponse
            = attest_review_impl(tonic);
        get_posture_report(pb::GetPostureReportRequest) -> pb::GetPostureReportResponse
            = get_posture_report_impl(tonic);
        import_identities(pb::ImportIdentitiesRequest) -> pb::ImportIdentitiesResponse
            = import_identities_impl(tonic);
    }

    type WatchIdentityChangesStream =
        tokio_stream::wrappers::UnboundedReceiverStream<Result<pb::IdentityChange, Status>>;

    async fn watch_identity_changes(
        &self,
        request: Request<tonic::Streaming<pb::IdentityChangesAck>>,
    ) -> Result<Response<Self::WatchIdentityChangesStream>, Status> {
        let mut acks = request.into_inner();
        let (out, rx) = tokio::sync::mpsc::unbounded_channel();
        let changes = std::sync::Arc::clone(&self.store.changes);
        let id = changes.watch(out);
        tokio::spawn(async move {
            while let Ok(Some(ack)) = acks.message().await {
                changes.ack(id, ack.applied_sequence, ack.lease_request);
            }
            changes.gone(id);
        });
        Ok(Response::new(
            tokio_stream::wrappers::UnboundedReceiverStream::new(rx),
        ))
    }

    async fn create_identity(
        &self,
        request: Request<pb::CreateIdentityRequest>,
    ) -> Result<Response<pb::CreateIdentityResponse>, Status> {
        let context = context(&request, request.get_ref().context.as_ref())?;
        let wire = request
            .get_ref()
            .identity
            .as_ref()
            .ok_or_else(|| steward_errors::invalid("identity", "is required"))?;
        let spec = spec(wire).map_err(invalid)?;
        let now = now_ns();
        let identity = Identity {
            id: Uuid::now_v7(),
            spec,
            state: domain::State::Active,
            created_at: now,
            updated_at: now,
            state_changed_at: now,
            version: 1,
            signal_score: 0,
            signal_summary: String::new(),
            entitlement_idle_since: None,
            consumer_count: 0,
        };
        let record = crate::evidence::record(
            &context,
            "identity.create",
            Some((&identity.id, identity.spec.kind)),
            "",
            [
                ("source_system", identity.spec.source_system.clone()),
                ("external_id", identity.spec.external_id.clone()),
                ("unowned", identity.spec.unowned.to_string()),
            ],
        );
        self.store
            .create(&identity, &record)
            .await
            .map_err(status)?;
        Ok(Response::new(pb::CreateIdentityResponse {
            identity: Some(self.present(&identity).await?),
        }))
    }

    async fn get_identity(
        &self,
        request: Request<pb::GetIdentityRequest>,
    ) -> Result<Response<pb::GetIdentityResponse>, Status> {
        let id = id("id", &request.get_ref().id)?;
        let (identity, departed) = self.store.get_with_departure(&id).await.map_err(status)?;
        Ok(Response::new(pb::GetIdentityResponse {
            identity: Some(identity_to_pb(
                &identity,
                assess(&identity, departed, now_ns()),
            )),
        }))
    }

    async fn update_identity(
        &self,
        request: Request<pb::UpdateIdentityRequest>,
    ) -> Result<Response<pb::UpdateIdentityResponse>, Status> {
        let context = context(&request, request.get_ref().context.as_ref())?;
        let r = request.into_inner();
        let id = id("id", &r.id)?;
        let wire = r
            .identity
            .ok_or_else(|| steward_errors::invalid("identity", "is required"))?;
        let paths = r.update_mask.map(|m| m.paths).unwrap_or_default();
        if paths.is_empty() {
            return Err(steward_errors::invalid(
                "update_mask",
                "name at least one field to change",
            )
            .into());
        }
        for path in &paths {
            if matches!(path.as_str(), "kind" | "source_system" | "external_id") {
                return Err(steward_errors::invalid(
                    "update_mask",
                    format!("{path} cannot change; it identifies the credential in its source"),
                )
                .into());
            }
            if !UPDATABLE.contains(&path.as_str()) {
                return Err(steward_errors::invalid(
                    "update_mask",
                    format!(
                        "{} is not an updatable IdentitySpec field",
                        steward_errors::shown(path)
                    ),
                )
                .into());
            }
        }
        let updated = self
            .store
            .update(&id, version(r.expected_version), |identity| {
                for path in &paths {
                    apply_path(&mut identity.spec, &wire, path, "identity.")?;
                }
                // Owners and a purpose supplied for an identity filed for
                // triage clear the flag, unless the caller sets it.
                let mut fields = paths.join(",");
                if !paths.iter().any(|p| p == "unowned") && identity.spec.settle_triage() {
                    fields.push_str(",unowned");
                }
                identity
                    .spec
                    .validate()
                    .map_err(|e| prefixed("identity.", e))?;
                Ok(crate::evidence::record(
                    &context,
                    "identity.update",
                    Some((&identity.id, identity.spec.kind)),
                    "",
                    [("fields", fields)],
                ))
            })
            .await
            .map_err(status)?;
        Ok(Response::new(pb::UpdateIdentityResponse {
            identity: Some(self.present(&updated).await?),
        }))
    }

    async fn list_identities(
        &self,
        request: Request<pb::ListIdentitiesRequest>,
    ) -> Result<Response<pb::ListIdentitiesResponse>, Status> {
        let r = request.into_inner();
        let filter = filter(r.filter.as_ref(), "filter.").map_err(invalid)?;
        let (identities, next_page_token) = self
            .store
            .list(&filter, page_size(r.page_size)?, &r.page_token)
            .await
            .map_err(status)?;
        Ok(Response::new(pb::ListIdentitiesResponse {
            identities: self.present_all(&identities).await?,
            next_page_token,
        }))
    }

    async fn transition_state(
        &self,
        request: Request<pb::TransitionStateRequest>,
    ) -> Result<Response<pb::TransitionStateResponse>, Status> {
        let context = context(&request, request.get_ref().context.as_ref())?;
        let r = request.get_ref();
        let id = id("id", &r.id)?;
        let target = state("target_state", r.target_state).map_err(invalid)?;
        required("reason", &r.reason, MAX_TEXT).map_err(invalid)?;
        // An illegal move is refused before authority is asked, so that
        // only a decision about a change that can happen is recorded (the
        // writer checks again, against the state it commits on).
        let current = self.store.get(&id).await.map_err(status)?;
        current
            .state
            .transition_to(target)
            .map_err(|why| status(Error::FailedPrecondition(format!("target_state: {why}"))))?;
        let allowed = self
            .gate
            .decide(&request, &id, target, &r.reason, &context)
            .await?;
        let r = request.into_inner();
        let (identity, transition) = self
            .transitions
            .submit(TransitionRequest {
                id,
                target,
                reason: r.reason,
                expected_version: version(r.expected_version),
                context,
                allowed,
            })
            .await
            .map_err(status)?;
        Ok(Response::new(pb::TransitionStateResponse {
            identity: Some(self.present(&identity).await?),
            transition: Some(transition_to_pb(&transition)),
        }))
    }

    async fn list_transitions(
        &self,
        request: Request<pb::ListTransitionsRequest>,
    ) -> Result<Response<pb::ListTransitionsResponse>, Status> {
        let r = request.into_inner();
        let identity_id = id("identity_id", &r.identity_id)?;
        let (transitions, next_page_token) = self
            .store
            .transitions(&identity_id, page_size(r.page_size)?, &r.page_token)
            .await
            .map_err(status)?;
        Ok(Response::new(pb::ListTransitionsResponse {
            transitions: transitions.iter().map(transition_to_pb).collect(),
            next_page_token,
        }))
    }

    async fn add_signal(
        &self,
        request: Request<pb::AddSignalRequest>,
    ) -> Result<Response<pb::AddSignalResponse>, Status> {
        let context = context(&request, request.get_ref().context.as_ref())?;
        let r = request.into_inner();
        let identity_id = id("identity_id", &r.identity_id)?;
        let kind = signal_kind("kind", r.kind).map_err(invalid)?;
        let severity = severity("severity", r.severity).map_err(invalid)?;
        required("source", &r.source, MAX_NAME).map_err(invalid)?;
        optional("evidence_ref", &r.evidence_ref, MAX_TEXT).map_err(invalid)?;
        optional("summary", &r.summary, MAX_TEXT).map_err(invalid)?;
        let observed_at = observed("observe_time", r.observe_time.as_ref())?;
        let signal = Signal {
            id: Uuid::now_v7(),
            identity_id,
            kind,
            severity,
            source: r.source,
            observed_at,
            evidence_ref: r.evidence_ref,
            summary: r.summary,
            open: true,
            resolution: String::new(),
            resolved_at: None,
            reported_by: context.actor.clone(),
        };
        self.store
            .add_signal(&signal, &context)
            .await
            .map_err(status)?;
        let identity = self
            .present(&self.store.get(&identity_id).await.map_err(status)?)
            .await?;
        Ok(Response::new(pb::AddSignalResponse {
            signal: Some(signal_to_pb(&signal)),
            risk: identity.risk,
        }))
    }

    async fn resolve_signal(
        &self,
        request: Request<pb::ResolveSignalRequest>,
    ) -> Result<Response<pb::ResolveSignalResponse>, Status> {
        let context = context(&request, request.get_ref().context.as_ref())?;
        let r = request.into_inner();
        let signal_id = id("signal_id", &r.signal_id)?;
        required("resolution", &r.resolution, MAX_TEXT).map_err(invalid)?;
        let signal = self
            .store
            .resolve_signal(&signal_id, &r.resolution, &context)
            .await
            .map_err(status)?;
        let identity = self
            .present(&self.store.get(&signal.identity_id).await.map_err(status)?)
            .await?;
        Ok(Response::new(pb::ResolveSignalResponse {
            signal: Some(signal_to_pb(&signal)),
            risk: identity.risk,
        }))
    }

    async fn list_signals(
        &self,
        request: Request<pb::ListSignalsRequest>,
    ) -> Result<Response<pb::ListSignalsResponse>, Status> {
        let r = request.into_inner();
        let identity_id = id("identity_id", &r.identity_id)?;
        let (signals, next_page_token) = self
            .store
            .signals(
                &identity_id,
                r.open_only,
                page_size(r.page_size)?,
                &r.page_token,
            )
            .await
            .map_err(status)?;
        Ok(Response::new(pb::ListSignalsResponse {
            signals: signals.iter().map(signal_to_pb).collect(),
            next_page_token,
        }))
    }

    async fn list_signal_feed(
        &self,
        request: Request<pb::ListSignalFeedRequest>,
    ) -> Result<Response<pb::ListSignalFeedResponse>, Status> {
        let r = request.into_inner();
        let limit = page_size(r.page_size)?;
        let signals = self
            .store
            .signal_feed(&r.after_id, limit)
            .await
            .map_err(|e| match e {
                crate::domain::Error::Invalid(_) => {
                    steward_errors::invalid("after_id", "is not a signal id").into()
                }
                other => status(other),
            })?;
        Ok(Response::new(pb::ListSignalFeedResponse {
            signals: signals.iter().map(signal_to_pb).collect(),
        }))
    }

    async fn grant_entitlement(
        &self,
        request: Request<pb::GrantEntitlementRequest>,
    ) -> Result<Response<pb::GrantEntitlementResponse>, Status> {
        let context = context(&request, request.get_ref().context.as_ref())?;
        let r = request.into_inner();
        let identity_id = id("identity_id", &r.identity_id)?;
        let permission = permission(&r.system, &r.permission, &r.resource)?;
        let (entitlement, created) = self
            .store
            .grant(&identity_id, &permission, &context)
            .await
            .map_err(status)?;
        Ok(Response::new(pb::GrantEntitlementResponse {
            entitlement: Some(entitlement_to_pb(&entitlement)),
            created,
        }))
    }

    async fn record_usage(
        &self,
        request: Request<pb::RecordUsageRequest>,
    ) -> Result<Response<pb::RecordUsageResponse>, Status> {
        let context = context(&request, None)?;
        let r = request.into_inner();
        let identity_id = id("identity_id", &r.identity_id)?;
        let named = !(r.system.is_empty() && r.permission.is_empty() && r.resource.is_empty());
        let permission = if named {
            Some(permission(&r.system, &r.permission, &r.resource)?)
        } else {
            None
        };
        optional("consumer", &r.consumer, MAX_NAME).map_err(invalid)?;
        let at = observed("use_time", r.use_time.as_ref())?;
        let entitlement = self
            .store
            .record_usage(&identity_id, permission.as_ref(), &r.consumer, at, &context)
            .await
            .map_err(status)?;
        Ok(Response::new(pb::RecordUsageResponse {
            entitlement: entitlement.as_ref().map(entitlement_to_pb),
        }))
    }

    async fn remove_entitlement(
        &self,
        request: Request<pb::RemoveEntitlementRequest>,
    ) -> Result<Response<pb::RemoveEntitlementResponse>, Status> {
        let context = context(&request, request.get_ref().context.as_ref())?;
        let r = request.into_inner();
        let identity_id = id("identity_id", &r.identity_id)?;
        let permission = permission(&r.system, &r.permission, &r.resource)?;
        optional("reason", &r.reason, MAX_TEXT).map_err(invalid)?;
        self.store
            .remove_entitlement(&identity_id, &permission, &r.reason, &context)
            .await
            .map_err(status)?;
        Ok(Response::new(pb::RemoveEntitlementResponse {}))
    }

    async fn list_entitlements(
        &self,
        request: Request<pb::ListEntitlementsRequest>,
    ) -> Result<Response<pb::ListEntitlementsResponse>, Status> {
        let r = request.into_inner();
        let identity_id = id("identity_id", &r.identity_id)?;
        let (entitlements, next_page_token) = self
            .store
            .entitlements(&identity_id, page_size(r.page_size)?, &r.page_token)
            .await
            .map_err(status)?;
        Ok(Response::new(pb::ListEntitlementsResponse {
            entitlements: entitlements.iter().map(entitlement_to_pb).collect(),
            next_page_token,
        }))
    }

    async fn set_owner_status(
        &self,
        request: Request<pb::SetOwnerStatusRequest>,
    ) -> Result<Response<pb::SetOwnerStatusResponse>, Status> {
        let context = context(&request, request.get_ref().context.as_ref())?;
        let r = request.into_inner();
        required("owner", &r.owner, MAX_NAME).map_err(invalid)?;
        optional("reason", &r.reason, MAX_TEXT).map_err(invalid)?;
        let owned = self
            .store
            .set_owner_status(&r.owner, r.departed, &r.reason, &context)
            .await
            .map_err(status)?;
        Ok(Response::new(pb::SetOwnerStatusResponse {
            owned_identities: owned,
        }))
    }

    async fn get_registration_entry(
        &self,
        request: Request<pb::GetRegistrationEntryRequest>,
    ) -> Result<Response<pb::GetRegistrationEntryResponse>, Status> {
        let entry_id = id("id", &request.get_ref().id)?;
        let entry = self.store.entry(&entry_id).await.map_err(status)?;
        Ok(Response::new(pb::GetRegistrationEntryResponse {
            entry: Some(entry_to_pb(&entry)),
        }))
    }
}
