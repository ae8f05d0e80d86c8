//! An NHI's facts with their Cedar entity: from the facts cache while it
//! holds inventory's lease, else from inventory (ADR 0008). Fails closed.

use std::sync::Arc;

use uuid::Uuid;

use super::Decider;
use crate::engine::{NhiFacts, Resource};
use crate::error::Error;
use crate::facts::Lookup;

/// Where the facts of an NHI come from: inventory, over gRPC in the
/// service (`server::nhi`), scripted in tests.
#[tonic::async_trait]
pub trait Inventory: Send + Sync {
    /// The identity's facts: [`Error::NoSuchIdentity`] when inventory has
    /// none, UNAVAILABLE when it cannot answer.
    async fn facts(&self, id: &Uuid) -> Result<NhiFacts, Error>;
}

impl Decider {
    /// The NHI's facts with their Cedar entity: from the facts cache while
    /// it holds inventory's lease, else from inventory. Fails closed.
    pub async fn facts(&self, id: &Uuid) -> Result<Arc<Resource>, Error> {
        let cache = &self.shared.facts;
        match cache.get(id) {
            Lookup::Hit(resource) => {
                metrics::counter!("steward_authority_facts_cache_hits_total").increment(1);
                return Ok(resource);
            }
            Lookup::Refresh(resource, token) => {
                metrics::counter!("steward_authority_facts_cache_hits_total").increment(1);
                let this = self.clone();
                let id = *id;
                tokio::spawn(async move {
                    let cache = &this.shared.facts;
                    match this.read(&id).await {
                        Ok(fresh) => cache.fill(&id, token, fresh),
                        Err(_) => cache.refresh_failed(&id, token),
                    }
                });
                return Ok(resource);
            }
            Lookup::Miss => {
                metrics::counter!("steward_authority_facts_cache_misses_total").increment(1);
            }
        }
        let token = cache.reserve(id);
        let resource = self.read(id).await?;
        if let Some(token) = token {
            cache.fill(id, token, Arc::clone(&resource));
        }
        Ok(resource)
    }

    /// The NHI's facts read from inventory, as a policy entity.
    async fn read(&self, id: &Uuid) -> Result<Arc<Resource>, Error> {
        let facts = self.inventory.facts(id).await?;
        self.shared
            .engine
            .resource(facts)
            .map_err(|e| Error::internal("the identity's facts make no policy entity", e))
    }
}
