//! Caller authorisation: a tower layer that checks every RPC's path against
//! an allowlist of SPIFFE IDs before the handler runs.
//!
//! Deny by default. An RPC is callable only if a rule names it (exactly, or
//! as `/package.Service/*`) and the caller's verified SPIFFE ID matches one
//! of the rule's callers (exactly, or below a `spiffe://td/prefix/*`). The
//! standard health and reflection services and Steward's `WhoAmI` are open to
//! every SVID of the server's own trust domain so that anyone can debug.

use std::collections::BTreeMap;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use crate::listener::PeerIdentity;
use crate::spiffe_id::{SpiffeId, SpiffeIdError, TrustDomain};

/// RPC services open to every SVID of the server's trust domain.
pub const OPEN_SERVICES: &[&str] = &[
    "/grpc.health.v1.Health/",
    "/grpc.reflection.v1.ServerReflection/",
    "/grpc.reflection.v1alpha.ServerReflection/",
    "/steward.common.v1.IdentityService/",
];

/// A rule from configuration was malformed.
#[derive(Debug, thiserror::Error)]
pub enum AllowlistError {
    #[error("rpc pattern {0:?} must be \"/package.Service/Method\" or \"/package.Service/*\"")]
    BadRpc(String),
    #[error("caller {caller:?} for {rpc} is not a spiffe id or \"spiffe://td/prefix/*\": {source}")]
    BadCaller {
        rpc: String,
        caller: String,
        source: SpiffeIdError,
    },
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum CallerMatcher {
    Exact(SpiffeId),
    Under(SpiffeId),
}

impl CallerMatcher {
    fn matches(&self, id: &SpiffeId) -> bool {
        match self {
            Self::Exact(want) => want == id,
            Self::Under(prefix) => id.is_under(prefix),
        }
    }
}

/// Which callers may invoke which RPCs.
#[derive(Debug, Clone)]
pub struct CallerAllowlist {
    trust_domain: TrustDomain,
    exact: BTreeMap<String, Vec<CallerMatcher>>,
    services: BTreeMap<String, Vec<CallerMatcher>>,
}

impl CallerAllowlist {
    /// Builds the allowlist from `rpc pattern → callers` rules. The trust
    /// domain is the server's own, whose members may call the open services.
    pub fn new(
        trust_domain: TrustDomain,
        rules: &BTreeMap<String, Vec<String>>,
    ) -> Result<Self, AllowlistError> {
        let mut exact = BTreeMap::new();
        let mut services = BTreeMap::new();
        for (rpc, callers) in rules {
            let matchers = callers
                .iter()
                .map(|caller| {
                    parse_caller(caller).map_err(|source| AllowlistError::BadCaller {
                        rpc: rpc.clone(),
                        caller: caller.clone(),
                        source,
                    })
                })
                .collect::<Result<Vec<_>, _>>()?;
            let Some(rest) = rpc.strip_prefix('/') else {
                return Err(AllowlistError::BadRpc(rpc.clone()));
            };
            match rest.split_once('/') {
                Some((service, "*")) if !service.is_empty() => {
                    services.insert(format!("/{service}/"), matchers);
                }
                Some((service, method))
                    if !service.is_empty() && !method.is_empty() && !method.contains('/') =>
                {
                    exact.insert(rpc.clone(), matchers);
                }
                _ => return Err(AllowlistError::BadRpc(rpc.clone())),
            }
        }
        Ok(Self {
            trust_domain,
            exact,
            services,
        })
    }

    /// Whether `caller` may invoke the RPC at `path` (`/pkg.Service/Method`).
    pub fn allows(&self, path: &str, caller: &SpiffeId) -> bool {
        if OPEN_SERVICES.iter().any(|open| path.starts_with(open)) {
            return caller.trust_domain() == &self.trust_domain;
        }
        if let Some(matchers) = self.exact.get(path) {
            return matchers.iter().any(|m| m.matches(caller));
        }
        let service = path
            .get(1..)
            .and_then(|rest| rest.find('/'))
            .and_then(|i| path.get(..i + 2));
        service
            .and_then(|s| self.services.get(s))
            .is_some_and(|matchers| matchers.iter().any(|m| m.matches(caller)))
    }
}

fn parse_caller(caller: &str) -> Result<CallerMatcher, SpiffeIdError> {
    match caller.strip_suffix("/*") {
        Some(prefix) => Ok(CallerMatcher::Under(SpiffeId::parse(prefix)?)),
        None => Ok(CallerMatcher::Exact(SpiffeId::parse(caller)?)),
    }
}

/// Layer that applies a [`CallerAllowlist`] to every request.
#[derive(Debug, Clone)]
pub struct AuthorizeCallerLayer {
    allowlist: Arc<CallerAllowlist>,
}

impl AuthorizeCallerLayer {
    pub fn new(allowlist: CallerAllowlist) -> Self {
        Self {
            allowlist: Arc::new(allowlist),
        }
    }
}

impl<S> tower::Layer<S> for AuthorizeCallerLayer {
    type Service = AuthorizeCaller<S>;

    fn layer(&self, inner: S) -> Self::Service {
        AuthorizeCaller {
            inner,
            allowlist: self.allowlist.clone(),
        }
    }
}

/// The service built by [`AuthorizeCallerLayer`].
#[derive(Debug, Clone)]
pub struct AuthorizeCaller<S> {
    inner: S,
    allowlist: Arc<CallerAllowlist>,
}

type BoxFuture<T> = Pin<Box<dyn Future<Output = T> + Send>>;

impl<S, ReqBody, ResBody> tower::Service<http::Request<ReqBody>> for AuthorizeCaller<S>
where
    S: tower::Service<http::Request<ReqBody>, Response = http::Response<ResBody>>
        + Clone
        + Send
        + 'static,
    S::Future: Send + 'static,
    S::Error: Send + 'static,
    ReqBody: Send + 'static,
    ResBody: Default + Send + 'static,
{
    type Response = S::Response;
    type Error = S::Error;
    type Future = BoxFuture<Result<Self::Response, Self::Error>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, request: http::Request<ReqBody>) -> Self::Future {
        let path = request.uri().path();
        let denial = match request.extensions().get::<PeerIdentity>() {
            None => Some(tonic::Status::unauthenticated(format!(
                "{path} requires an mtls connection with an x.509-svid"
            ))),
            Some(peer) if !self.allowlist.allows(path, &peer.spiffe_id) => {
                tracing::warn!(peer = %peer.spiffe_id, rpc = %path, "caller not allowed");
                Some(tonic::Status::permission_denied(format!(
                    "{} is not allowed to call {path}",
                    peer.spiffe_id
                )))
            }
            Some(_) => None,
        };
        match denial {
            Some(status) => Box::pin(std::future::ready(Ok(status.into_http()))),
            None => {
                // The clone took the readiness of `self.inner`; swap so the
                // ready instance serves this call.
                let clone = self.inner.clone();
                let mut inner = std::mem::replace(&mut self.inner, clone);
                Box::pin(inner.call(request))
            }
        }
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;

    fn allowlist(rules: &[(&str, &[&str])]) -> CallerAllowlist {
        let rules = rules
            .iter()
            .map(|(rpc, callers)| {
                (
                    rpc.to_string(),
                    callers.iter().map(|c| c.to_string()).collect(),
                )
            })
            .collect();
        CallerAllowlist::new(TrustDomain::parse("td").unwrap(), &rules).unwrap()
    }

    fn id(s: &str) -> SpiffeId {
        SpiffeId::parse(s).unwrap()
    }

    #[test]
    fn denies_by_default() {
        let list = allowlist(&[]);
        assert!(!list.allows(
            "/steward.audit.v1.AuditService/Append",
            &id("spiffe://td/x")
        ));
    }

    #[test]
    fn open_services_admit_only_the_own_trust_domain() {
        let list = allowlist(&[]);
        assert!(list.allows("/grpc.health.v1.Health/Check", &id("spiffe://td/anyone")));
        assert!(list.allows(
            "/steward.common.v1.IdentityService/WhoAmI",
            &id("spiffe://td/a")
        ));
        assert!(!list.allows("/grpc.health.v1.Health/Check", &id("spiffe://other/a")));
    }

    #[test]
    fn exact_and_service_rules_with_exact_and_prefix_callers() {
        let list = allowlist(&[
            ("/p.S/Append", &["spiffe://td/service/inventory"]),
            ("/p.S/*", &["spiffe://td/operator/*"]),
        ]);
        assert!(list.allows("/p.S/Append", &id("spiffe://td/service/inventory")));
        assert!(!list.allows("/p.S/Append", &id("spiffe://td/service/authority")));
        // an exact rule wins over the service rule
        assert!(!list.allows("/p.S/Append", &id("spiffe://td/operator/admin")));
        assert!(list.allows("/p.S/Get", &id("spiffe://td/operator/admin")));
        assert!(!list.allows("/p.S/Get", &id("spiffe://td/operators/admin")));
        assert!(!list.allows("/p.Sx/Get", &id("spiffe://td/operator/admin")));
    }

    #[test]
    fn malformed_rules_are_rejected() {
        let bad_rpc = BTreeMap::from([("p.S/M".to_string(), vec![])]);
        assert!(CallerAllowlist::new(TrustDomain::parse("td").unwrap(), &bad_rpc).is_err());
        let bad_caller =
            BTreeMap::from([("/p.S/M".to_string(), vec!["spiffe://TD/x".to_string()])]);
        assert!(CallerAllowlist::new(TrustDomain::parse("td").unwrap(), &bad_caller).is_err());
    }
}
