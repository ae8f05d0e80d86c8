//! Trust-domain federation (the SPIFFE Trust Domain and Bundle
//! specification, section 5; ADR 0021).
//!
//! - This trust domain's bundle is published at a bundle endpoint
//!   ([`endpoint`]): its CA roots and JWT-SVID keys as a SPIFFE bundle
//!   document, over HTTPS with the `https_spiffe` profile.
//! - Foreign trust domains' bundles are fetched from theirs on a refresh
//!   schedule ([`fetch`]), each change stored with its evidence, and held
//!   here for the Workload API and SDS to serve beside the own bundle.
//!
//! A foreign bundle is trusted for its own trust domain only: workloads get
//! it under that trust domain's name, and a JWT-SVID is checked only
//! against the keys of the trust domain its `sub` names.

pub mod endpoint;
pub mod fetch;

use std::collections::BTreeMap;
use std::sync::Arc;

use steward_identity::TrustDomain;
use steward_identity::bundle::SpiffeBundle;
use tokio::sync::watch;

use crate::config::FederationConfig;
use crate::issuance::Issuer;
use crate::store::Store;

/// The foreign bundles by trust domain name.
pub type ForeignBundles = Arc<BTreeMap<String, SpiffeBundle>>;

/// The foreign bundles workloads get, and who hears of changes.
#[derive(Debug)]
pub struct Federation {
    foreign: watch::Sender<ForeignBundles>,
}

impl Default for Federation {
    fn default() -> Self {
        Self {
            foreign: watch::channel(ForeignBundles::default()).0,
        }
    }
}

impl Federation {
    /// The foreign bundles now.
    pub fn foreign(&self) -> ForeignBundles {
        self.foreign.borrow().clone()
    }

    /// Changes whenever a foreign bundle is installed or replaced.
    pub fn changes(&self) -> watch::Receiver<ForeignBundles> {
        self.foreign.subscribe()
    }

    /// Installs `bundle` in place of its trust domain's last one.
    pub fn install(&self, bundle: SpiffeBundle) {
        self.foreign.send_modify(|bundles| {
            let mut next = BTreeMap::clone(bundles);
            next.insert(bundle.trust_domain.name().to_owned(), bundle);
            *bundles = Arc::new(next);
        });
    }

    /// Installs the stored bundles: what was last fetched survives a
    /// restart, so an `https_spiffe` endpoint whose keys rotated meanwhile
    /// is still authenticated by the bundle that announced them.
    pub async fn load(&self, store: &Store) -> Result<(), String> {
        let stored = store
            .foreign_bundles()
            .await
            .map_err(|e| steward_errors::causes(&e))?;
        for row in stored {
            let trust_domain = TrustDomain::parse(&row.trust_domain)
                .map_err(|e| format!("stored bundle of {:?}: {e}", row.trust_domain))?;
            let bundle = SpiffeBundle::parse(trust_domain, row.document.as_bytes())
                .map_err(|e| format!("stored bundle of {}: {e}", row.trust_domain))?;
            self.install(bundle);
        }
        Ok(())
    }
}

/// Starts federation as `config` says: checks every foreign trust domain
/// (reading its files), binds the bundle endpoint, installs the stored
/// bundles and, where none is stored, the out-of-band ones, then follows
/// each foreign endpoint and serves this one. Any mistake stops the broker
/// from starting.
pub async fn start(
    context: &steward_server::ServiceContext,
    issuer: &Arc<Issuer>,
    config: &FederationConfig,
) -> Result<Arc<Federation>, steward_server::StartError> {
    use steward_server::StartError;
    let foreign = config
        .trust_domains
        .iter()
        .map(|f| fetch::Foreign::check(f, issuer.own.trust_domain()))
        .collect::<Result<Vec<_>, _>>()
        .map_err(StartError::Init)?;
    let listener = match config.bundle_endpoint {
        Some(addr) => Some(endpoint::bind(addr).await.map_err(StartError::Init)?),
        None => None,
    };
    let federation = Arc::new(Federation::default());
    federation
        .load(&issuer.store)
        .await
        .map_err(StartError::Init)?;
    for foreign in &foreign {
        fetch::bootstrap(&federation, &issuer.store, &issuer.own.to_string(), foreign)
            .await
            .map_err(|e| {
                StartError::Init(format!(
                    "federation: cannot store the out-of-band bundle of {}: {e}",
                    foreign.trust_domain
                ))
            })?;
    }
    for foreign in foreign {
        context.spawn(fetch::follow(
            federation.clone(),
            issuer.store.clone(),
            issuer.own.to_string(),
            foreign,
            context.shutdown(),
        ));
    }
    if let Some(listener) = listener {
        let (issuer, hint) = (issuer.clone(), config.refresh_hint_secs);
        let shutdown = context.shutdown();
        context.spawn(async move {
            if let Err(error) = endpoint::serve(issuer, listener, hint, shutdown).await {
                tracing::error!(%error, "the SPIFFE bundle endpoint stopped");
            }
        });
    }
    Ok(federation)
}

/// This trust domain's bundle as the endpoint publishes it: the CA roots
/// and JWT-SVID keys workloads get now, under the sequence number that
/// content is published under.
pub async fn own_bundle(issuer: &Issuer, refresh_hint_secs: u64) -> Result<SpiffeBundle, String> {
    let authorities = issuer.authorities();
    let mut bundle = SpiffeBundle {
        trust_domain: issuer.own.trust_domain().clone(),
        x509_authorities: authorities.roots.clone(),
        jwt_authorities: authorities.jwks.keys.clone(),
        sequence: 0,
        refresh_hint: Some(refresh_hint_secs),
    };
    let content = bundle.to_document().map_err(|e| e.to_string())?;
    let digest = crate::issuance::sha256_hex(&content);
    bundle.sequence = issuer
        .store
        .publication(&digest, crate::now_ns())
        .await
        .map_err(|e| steward_errors::causes(&e))?;
    Ok(bundle)
}
