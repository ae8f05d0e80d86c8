//! Policy slicing: an index from a request's action, principal and resource
//! to the policies whose scope can match it.
//!
//! Each policy is filed under every action its scope names (or "any"), and
//! under the principal its scope names with `==` or `in` ("any" for an
//! unconstrained or type-only principal). A request looks up the cross
//! product of {its action, the action's groups, any} and {the principal,
//! its groups, any}, then drops policies whose resource scope names a
//! different resource. The result over-approximates the policies that can
//! be satisfied and never misses one, so Cedar decides the slice exactly as
//! it would decide the whole set.
//!
//! Keys are the uids' text (`Steward::Workload::"spiffe://…"`), so a lookup
//! borrows the request's strings and allocates nothing.

use std::collections::HashMap;

use cedar_policy::{ActionConstraint, EntityUid, Policy, PrincipalConstraint, ResourceConstraint};

/// The key of "any" in both dimensions.
const ANY: &str = "";

#[derive(Debug, Clone, Default)]
pub struct SliceIndex {
    /// action key → principal key → policy positions, ascending.
    buckets: HashMap<String, HashMap<String, Vec<u32>>>,
    /// Per policy: the one resource it is scoped to, if any.
    resources: Vec<Option<String>>,
}

/// The text an index key is made of.
pub fn key(uid: &EntityUid) -> String {
    uid.to_string()
}

impl SliceIndex {
    pub fn build(policies: &[Policy]) -> Self {
        let mut buckets: HashMap<String, HashMap<String, Vec<u32>>> = HashMap::new();
        let mut resources = Vec::with_capacity(policies.len());
        for (position, policy) in policies.iter().enumerate() {
            let position = u32::try_from(position).unwrap_or(u32::MAX);
            let actions: Vec<String> = match policy.action_constraint() {
                ActionConstraint::Any => vec![ANY.to_owned()],
                ActionConstraint::Eq(uid) => vec![key(&uid)],
                ActionConstraint::In(uids) => uids.iter().map(key).collect(),
            };
            let principal = match policy.principal_constraint() {
                PrincipalConstraint::Eq(uid)
                | PrincipalConstraint::In(uid)
                | PrincipalConstraint::IsIn(_, uid) => key(&uid),
                PrincipalConstraint::Any | PrincipalConstraint::Is(_) => ANY.to_owned(),
            };
            for action in actions {
                let bucket = buckets
                    .entry(action)
                    .or_default()
                    .entry(principal.clone())
                    .or_default();
                if bucket.last() != Some(&position) {
                    bucket.push(position);
                }
            }
            resources.push(match policy.resource_constraint() {
                // NHIs have no parents, so `in` an NHI means that NHI.
                ResourceConstraint::Eq(uid)
                | ResourceConstraint::In(uid)
                | ResourceConstraint::IsIn(_, uid) => Some(key(&uid)),
                ResourceConstraint::Any | ResourceConstraint::Is(_) => None,
            });
        }
        Self { buckets, resources }
    }

    /// The positions of the policies that can apply, ascending, once each.
    /// `actions` are the keys of the action and its groups; `principals`
    /// those of the principal and its groups; `resource` the resource's.
    pub fn candidates(
        &self,
        actions: &[String],
        principals: &[String],
        resource: &str,
    ) -> Vec<u32> {
        let mut out: Vec<u32> = Vec::new();
        for action in actions.iter().map(String::as_str).chain([ANY]) {
            let Some(by_principal) = self.buckets.get(action) else {
                continue;
            };
            for principal in principals.iter().map(String::as_str).chain([ANY]) {
                if let Some(bucket) = by_principal.get(principal) {
                    out.extend(bucket.iter().copied().filter(|p| {
                        self.resources
                            .get(*p as usize)
                            .is_some_and(|r| r.as_deref().is_none_or(|r| r == resource))
                    }));
                }
            }
        }
        out.sort_unstable();
        out.dedup();
        out
    }
}
