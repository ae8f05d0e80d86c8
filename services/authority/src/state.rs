//! What every part of authority shares: the engine, the store, the
//! active policy set, the facts cache, and who holds grants.

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, RwLock};

use steward_identity::SpiffeId;

use crate::approvals::Actor;
use crate::closures::Closures;
use crate::config::AuthorityConfig;
use crate::currency::Currency;
use crate::engine::{CompiledSet, Engine};
use crate::error::Error;
use crate::facts::FactsCache;
use crate::humans::Humans;
use crate::store::{SetKind, Store, StoreError};

/// The active policy set, compiled.
#[derive(Debug)]
pub struct Active {
    pub version: u64,
    pub set: Arc<CompiledSet>,
}

/// What the handlers share.
#[derive(Debug)]
pub struct Shared {
    pub engine: Engine,
    pub store: Store,
    pub active: RwLock<Arc<Active>>,
    /// Compiled versions other than the active one (DryRun, Explain).
    pub compiled: RwLock<HashMap<u64, Arc<CompiledSet>>>,
    pub config: AuthorityConfig,
    /// Verifies humans' bearer tokens.
    pub humans: Humans,
    /// This service's own SPIFFE ID (the actor of its sweeps).
    pub own: SpiffeId,
    /// The principals that hold an active grant: decisions for anyone else
    /// skip the grants query. Grants issued here are added at once; the
    /// set is re-read every two seconds for grants issued by other
    /// replicas (until then those principals are asked to get approval).
    pub grant_holders: RwLock<HashSet<String>>,
    /// NHIs' facts, kept coherent with inventory (ADR 0008).
    pub facts: Arc<FactsCache>,
    /// Closed incidents the broker must revoke the leases of.
    pub closures: Arc<Closures>,
    /// Until when this replica's active set is known to be current
    /// (ADR 0026).
    pub currency: Currency,
}

impl Shared {
    /// The service itself, as the actor of its background changes.
    pub fn own_actor(&self) -> Actor {
        Actor {
            workload: self.own.to_string(),
            ..Actor::default()
        }
    }

    /// Whether `principal` may hold an active grant.
    pub fn may_hold_grant(&self, principal: &str) -> bool {
        self.grant_holders
            .read()
            .map_or(true, |holders| holders.contains(principal))
    }

    /// Notes a grant issued to `principal`.
    pub fn holds_grant(&self, principal: &str) {
        if let Ok(mut holders) = self.grant_holders.write() {
            holders.insert(principal.to_owned());
        }
    }

    /// Re-reads the grant holders from the database.
    pub async fn refresh_grant_holders(&self) -> Result<(), StoreError> {
        let holders = self.store.grant_holders().await?;
        if let Ok(mut slot) = self.grant_holders.write() {
            *slot = holders;
        }
        Ok(())
    }

    pub fn active(&self) -> Arc<Active> {
        self.active
            .read()
            .map(|a| a.clone())
            .unwrap_or_else(|poisoned| poisoned.into_inner().clone())
    }

    /// The active set, for a decision: refused while this replica cannot
    /// confirm no other has activated a newer one.
    pub fn deciding(&self) -> Result<Arc<Active>, Error> {
        if !self.currency.current() {
            return Err(Error::unavailable(
                "authority cannot confirm its policy set is current; retry",
                "the policy follower has not renewed its promise",
            ));
        }
        Ok(self.active())
    }

    pub fn set_active(&self, active: Active) {
        let mut slot = self.active.write().unwrap_or_else(|p| p.into_inner());
        *slot = Arc::new(active);
    }

    /// Compiles a stored version (cached).
    pub async fn compiled(&self, version: u64) -> Result<(u64, Arc<CompiledSet>), Error> {
        let active = self.active();
        if version == 0 || version == active.version {
            return Ok((active.version, active.set.clone()));
        }
        if let Some(set) = self
            .compiled
            .read()
            .ok()
            .and_then(|c| c.get(&version).cloned())
        {
            return Ok((version, set));
        }
        let stored = self.store.get(SetKind::Policies, version).await?;
        let set = CompiledSet::compile(&self.engine, &stored.policies).map_err(|e| {
            let message = format!("stored policy set {version} no longer compiles");
            Error::internal(message, format!("{:?}", e.first()))
        })?;
        let set = Arc::new(set);
        if let Ok(mut cache) = self.compiled.write() {
            cache.insert(version, set.clone());
        }
        Ok((version, set))
    }
}
