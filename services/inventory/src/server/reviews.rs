//! The access-review handlers: campaigns, items and attestations (the
//! reviewer is the person authority verified).

use super::*;

impl InventoryServer {
    pub(super) async fn start_review_campaign_impl(
        &self,
        request: Request<pb::StartReviewCampaignRequest>,
    ) -> Result<Response<pb::StartReviewCampaignResponse>, Status> {
        let context = context(&request, request.get_ref().context.as_ref())?;
        let r = request.into_inner();
        required("name", &r.name, MAX_NAME).map_err(invalid)?;
        let filter = filter(r.filter.as_ref(), "filter.").map_err(invalid)?;
        let now = now_ns();
        let deadline = nanos("deadline", r.deadline.as_ref())
            .map_err(invalid)?
            .ok_or_else(|| steward_errors::invalid("deadline", "is required"))?;
        if deadline <= now {
            return Err(steward_errors::invalid("deadline", "must be in the future").into());
        }
        let mut campaign = Campaign {
            id: Uuid::now_v7(),
            name: r.name,
            filter,
            deadline,
            open: true,
            created_by: context.actor.clone(),
            created_at: now,
            pending: 0,
            still_needed: 0,
            revoked: 0,
            flagged: 0,
        };
        campaign.pending = self
            .store
            .start_campaign(&campaign, &context)
            .await
            .map_err(status)?;
        Ok(Response::new(pb::StartReviewCampaignResponse {
            campaign: Some(campaign_to_pb(&campaign)),
        }))
    }

    pub(super) async fn get_review_campaign_impl(
        &self,
        request: Request<pb::GetReviewCampaignRequest>,
    ) -> Result<Response<pb::GetReviewCampaignResponse>, Status> {
        let context = context(&request, None)?;
        let campaign_id = id("id", &request.get_ref().id)?;
        let campaign = self
            .store
            .campaign(&campaign_id, &context)
            .await
            .map_err(status)?;
        Ok(Response::new(pb::GetReviewCampaignResponse {
            campaign: Some(campaign_to_pb(&campaign)),
        }))
    }

    pub(super) async fn list_review_items_impl(
        &self,
        request: Request<pb::ListReviewItemsRequest>,
    ) -> Result<Response<pb::ListReviewItemsResponse>, Status> {
        let context = context(&request, None)?;
        let r = request.into_inner();
        let campaign_id = id("campaign_id", &r.campaign_id)?;
        let decision = if r.decision == 0 {
            None
        } else {
            Some(decision("decision", r.decision).map_err(invalid)?)
        };
        // Flags overdue items first, so the list is never stale.
        self.store
            .campaign(&campaign_id, &context)
            .await
            .map_err(status)?;
        let (items, next_page_token) = self
            .store
            .review_items(
                &campaign_id,
                decision,
                page_size(r.page_size)?,
                &r.page_token,
            )
            .await
            .map_err(status)?;
        Ok(Response::new(pb::ListReviewItemsResponse {
            items: items.iter().map(item_to_pb).collect(),
            next_page_token,
        }))
    }

    pub(super) async fn attest_review_impl(
        &self,
        request: Request<pb::AttestReviewRequest>,
    ) -> Result<Response<pb::AttestReviewResponse>, Status> {
        let context = context(&request, request.get_ref().context.as_ref())?;
        let campaign_id = id("campaign_id", &request.get_ref().campaign_id)?;
        let identity_id = id("identity_id", &request.get_ref().identity_id)?;
        optional("reviewer", &request.get_ref().reviewer, MAX_NAME).map_err(invalid)?;
        optional("reason", &request.get_ref().reason, MAX_TEXT).map_err(invalid)?;
        // The reviewer is the person authority verified, never the field.
        let (reviewer, allowed) = self
            .gate
            .attester(&request, &identity_id, &request.get_ref().reason, &context)
            .await?;
        let r = request.into_inner();
        if !(r.reviewer.is_empty() || r.reviewer == reviewer) {
            return Err(status(Error::PermissionDenied(format!(
                "reviewer: the reviewer is the person of the bearer token ({}); leave it empty",
                steward_errors::shown(&reviewer)
            ))));
        }
        let decision = decision("decision", r.decision).map_err(invalid)?;
        let new_expires_at =
            nanos("new_expire_time", r.new_expire_time.as_ref()).map_err(invalid)?;
        match decision {
            Decision::StillNeeded => match new_expires_at {
                None => {
                    return Err(steward_errors::invalid(
                        "new_expire_time",
                        "is required when the identity is still needed",
                    )
                    .into());
                }
                Some(t) if t <= now_ns() => {
                    return Err(steward_errors::invalid(
                        "new_expire_time",
                        "must be in the future",
                    )
                    .into());
                }
                Some(_) => {}
            },
            Decision::Revoke => {
                if r.reason.trim().is_empty() {
                    return Err(
                        steward_errors::invalid("reason", "is required when revoking").into(),
                    );
                }
            }
            other => {
                return Err(steward_errors::invalid(
                    "decision",
                    format!("must be STILL_NEEDED or REVOKE, not {other}"),
                )
                .into());
            }
        }
        let item = self
            .store
            .attest(
                &Attestation {
                    campaign_id,
                    identity_id,
                    reviewer,
                    allowed: Some(allowed),
                    decision,
                    reason: r.reason,
                    new_expires_at: if decision == Decision::StillNeeded {
                        new_expires_at
                    } else {
                        None
                    },
                },
                &context,
            )
            .await
            .map_err(status)?;
        let identity = self.store.get(&identity_id).await.map_err(status)?;
        Ok(Response::new(pb::AttestReviewResponse {
            item: Some(item_to_pb(&item)),
            identity: Some(self.present(&identity).await?),
        }))
    }
}
