//! Inventory, as the decision path reads an NHI's facts from it.

use super::*;
use crate::decide::Inventory;
use crate::error::Error;

/// Inventory's `GetIdentity`, over the peer channel.
#[derive(Debug, Clone)]
pub(crate) struct InventoryFacts(pub InventoryServiceClient<TracedChannel>);

#[tonic::async_trait]
impl Inventory for InventoryFacts {
    async fn facts(&self, id: &Uuid) -> Result<NhiFacts, Error> {
        let unreachable =
            "inventory is unreachable; authority does not decide without the identity's facts";
        let answer = self
            .0
            .clone()
            .get_identity(inventory::GetIdentityRequest {
                id: id.hyphenated().to_string(),
            })
            .await;
        let identity = match answer {
            Ok(r) => r
                .into_inner()
                .identity
                .ok_or_else(|| Error::unavailable(unreachable, "inventory returned no identity"))?,
            Err(s) if s.code() == tonic::Code::NotFound => return Err(Error::NoSuchIdentity(*id)),
            Err(s) => {
                let detail = format!("{:?}: {}", s.code(), s.message());
                return Err(Error::unavailable(unreachable, detail));
            }
        };
        Ok(facts_of(identity))
    }
}

/// An identity as policies see it.
fn facts_of(identity: inventory::Identity) -> NhiFacts {
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
    NhiFacts {
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
    }
}
