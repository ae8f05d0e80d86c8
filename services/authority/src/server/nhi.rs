//! An NHI's facts with their Cedar entity: from the facts cache while it
//! holds inventory's lease, else from inventory (ADR 0008). Fails closed.

use super::*;

impl AuthorityServer {
    /// The NHI's facts with their Cedar entity: from the facts cache while
    /// it holds inventory's lease, else from inventory. Fails closed.
    pub(crate) async fn facts(&self, id: &Uuid) -> Result<Arc<Resource>, Status> {
        let cache = &self.shared.facts;
        match cache.get(id) {
            Lookup::Hit(resource) => return Ok(resource),
            Lookup::Refresh(resource, token) => {
                let this = self.clone();
                let id = *id;
                tokio::spawn(async move {
                    let cache = &this.shared.facts;
                    match this
                        .read_facts(&id)
                        .await
                        .map(|f| this.shared.engine.resource(f))
                    {
                        Ok(Ok(fresh)) => cache.fill(&id, token, fresh),
                        _ => cache.refresh_failed(&id, token),
                    }
                });
                return Ok(resource);
            }
            Lookup::Miss => {}
        }
        let token = cache.reserve(id);
        let resource = self
            .shared
            .engine
            .resource(self.read_facts(id).await?)
            .map_err(|e| Status::internal(e.to_string()))?;
        if let Some(token) = token {
            cache.fill(id, token, Arc::clone(&resource));
        }
        Ok(resource)
    }

    /// The NHI's facts, read from inventory.
    pub(super) async fn read_facts(&self, id: &Uuid) -> Result<NhiFacts, Status> {
        let mut client = self.inventory.clone();
        let identity = match client
            .get_identity(inventory::GetIdentityRequest {
                id: id.hyphenated().to_string(),
            })
            .await
        {
            Ok(r) => r
                .into_inner()
                .identity
                .ok_or_else(|| Status::unavailable("inventory returned no identity"))?,
            Err(s) if s.code() == tonic::Code::NotFound => {
                return Err(Status::not_found(format!(
                    "resource_id: identity {id} does not exist in inventory"
                )));
            }
            Err(s) => {
                tracing::warn!(code = ?s.code(), message = s.message(), "inventory unreachable; refusing to decide");
                return Err(Status::unavailable(
                    "inventory is unreachable; authority does not decide without the identity's facts",
                ));
            }
        };
        let state = inventory::LifecycleState::try_from(identity.state)
            .map(|s| {
                s.as_str_name()
                    .trim_start_matches("LIFECYCLE_STATE_")
                    .to_ascii_lowercase()
            })
            .unwrap_or_default();
        let kind = inventory::IdentityKind::try_from(identity.kind)
            .map(|s| {
                s.as_str_name()
                    .trim_start_matches("IDENTITY_KIND_")
                    .to_ascii_lowercase()
            })
            .unwrap_or_default();
        Ok(NhiFacts {
            id: identity.id,
            kind,
            environment: identity.environment,
            state,
            risk_score: i64::from(identity.risk.map_or(0, |r| r.score)),
            business_owner: identity.business_owner.map(|o| o.name).unwrap_or_default(),
            technical_owner: identity.technical_owner.map(|o| o.name).unwrap_or_default(),
            business_service: identity.business_service,
            source_system: identity.source_system,
            spiffe_id: identity.spiffe_id,
            labels: identity.labels.into_iter().collect(),
        })
    }
}
