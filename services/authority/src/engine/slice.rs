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
//! Keys are entity ids under their type, so a lookup borrows the request's
//! strings and allocates nothing. Assembled slices are kept: requests with
//! the same principal and action share one Cedar policy set.

use std::collections::HashMap;
use std::sync::{Arc, RwLock};

use cedar_policy::{
    ActionConstraint, EntityUid, Policy, PolicySet, PrincipalConstraint, ResourceConstraint,
};

use super::ResourceType;

/// The principal types a scope can name, as index dimensions.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum PrincipalType {
    Workload,
    Human,
    Group,
}

impl PrincipalType {
    fn of(uid: &EntityUid) -> Option<Self> {
        match uid.type_name().to_string().as_str() {
            "Steward::Workload" => Some(Self::Workload),
            "Steward::Human" => Some(Self::Human),
            "Steward::Group" => Some(Self::Group),
            _ => None,
        }
    }
}

/// Whom a policy's principal scope can match.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
enum PrincipalKey {
    Any,
    Named(PrincipalType, String),
    /// A type no Steward principal has: matches nobody.
    Nobody,
}

/// Which resource a policy's resource scope can match.
#[derive(Debug, Clone)]
enum ResourceKey {
    Any,
    Named(ResourceType, String),
    Nobody,
}

/// The policies under one action key.
#[derive(Debug, Clone, Default)]
struct ByPrincipal {
    any: Vec<u32>,
    named: HashMap<PrincipalType, HashMap<String, Vec<u32>>>,
}

/// Most assembled slices kept; past it the cache starts over.
const SLICE_CACHE: usize = 8192;

#[derive(Debug, Clone, Default)]
pub struct SliceIndex {
    /// Action id → its policies by principal.
    actions: HashMap<String, ByPrincipal>,
    /// The policies for any action.
    any_action: ByPrincipal,
    /// Per policy: the resource it is scoped to.
    resources: Vec<ResourceKey>,
    /// Assembled slices by their policy positions.
    sets: Arc<RwLock<HashMap<Vec<u32>, Arc<PolicySet>>>>,
}

fn push(bucket: &mut Vec<u32>, position: u32) {
    if bucket.last() != Some(&position) {
        bucket.push(position);
    }
}

impl SliceIndex {
    pub fn build(policies: &[Policy]) -> Self {
        let mut actions: HashMap<String, ByPrincipal> = HashMap::new();
        let mut any_action = ByPrincipal::default();
        let mut resources = Vec::with_capacity(policies.len());
        for (position, policy) in policies.iter().enumerate() {
            let position = u32::try_from(position).unwrap_or(u32::MAX);
            let keys: Vec<Option<String>> = match policy.action_constraint() {
                ActionConstraint::Any => vec![None],
                ActionConstraint::Eq(uid) => vec![Some(uid.id().unescaped().to_owned())],
                ActionConstraint::In(uids) => uids
                    .iter()
                    .map(|u| Some(u.id().unescaped().to_owned()))
                    .collect(),
            };
            let principal = match policy.principal_constraint() {
                PrincipalConstraint::Eq(uid)
                | PrincipalConstraint::In(uid)
                | PrincipalConstraint::IsIn(_, uid) => match PrincipalType::of(&uid) {
                    Some(t) => PrincipalKey::Named(t, uid.id().unescaped().to_owned()),
                    None => PrincipalKey::Nobody,
                },
                PrincipalConstraint::Any | PrincipalConstraint::Is(_) => PrincipalKey::Any,
            };
            for key in keys {
                let by = match key {
                    Some(key) => actions.entry(key).or_default(),
                    None => &mut any_action,
                };
                match &principal {
                    PrincipalKey::Any => push(&mut by.any, position),
                    PrincipalKey::Named(t, id) => push(
                        by.named
                            .entry(*t)
                            .or_default()
                            .entry(id.clone())
                            .or_default(),
                        position,
                    ),
                    PrincipalKey::Nobody => {}
                }
            }
            resources.push(match policy.resource_constraint() {
                ResourceConstraint::Eq(uid) => match ResourceType::of(&uid) {
                    Some(t) => ResourceKey::Named(t, uid.id().unescaped().to_owned()),
                    None => ResourceKey::Nobody,
                },
                // Only principals (the resources of `act_for`) have
                // parents: `in` a group is left to Cedar. Anything else is
                // `in` only itself.
                ResourceConstraint::In(uid) | ResourceConstraint::IsIn(_, uid) => {
                    match ResourceType::of(&uid) {
                        Some(t) => ResourceKey::Named(t, uid.id().unescaped().to_owned()),
                        None if uid.type_name().to_string() == "Steward::Group" => ResourceKey::Any,
                        None => ResourceKey::Nobody,
                    }
                }
                ResourceConstraint::Any | ResourceConstraint::Is(_) => ResourceKey::Any,
            });
        }
        Self {
            actions,
            any_action,
            resources,
            sets: Arc::default(),
        }
    }

    /// The positions of the policies that can apply, ascending, once each.
    /// `actions` are the ids of the action and its groups; `principals`
    /// the principal's type and id and its groups' ids; `resource` the
    /// resource's type and id.
    pub fn candidates(
        &self,
        actions: &[String],
        principal: (PrincipalType, &str),
        groups: &[String],
        resource: (ResourceType, &str),
    ) -> Vec<u32> {
        let mut out: Vec<u32> = Vec::new();
        let named = actions.iter().filter_map(|a| self.actions.get(a.as_str()));
        for by in named.chain([&self.any_action]) {
            let mut take = |bucket: Option<&Vec<u32>>| {
                if let Some(bucket) = bucket {
                    out.extend(bucket.iter().copied().filter(|p| {
                        self.resources.get(*p as usize).is_some_and(|r| match r {
                            ResourceKey::Any => true,
                            ResourceKey::Named(t, id) => *t == resource.0 && id == resource.1,
                            ResourceKey::Nobody => false,
                        })
                    }));
                }
            };
            take(Some(&by.any));
            take(by.named.get(&principal.0).and_then(|m| m.get(principal.1)));
            if let Some(named) = by.named.get(&PrincipalType::Group) {
                for g in groups {
                    take(named.get(g.as_str()));
                }
            }
        }
        out.sort_unstable();
        out.dedup();
        out
    }

    /// The Cedar policy set of `slice`, assembled once.
    pub fn set(&self, slice: Vec<u32>, policies: &[Policy]) -> Result<Arc<PolicySet>, String> {
        if let Some(set) = self.sets.read().ok().and_then(|s| s.get(&slice).cloned()) {
            return Ok(set);
        }
        let set = Arc::new(
            PolicySet::from_policies(
                slice
                    .iter()
                    .filter_map(|i| policies.get(*i as usize).cloned()),
            )
            .map_err(|e| e.to_string())?,
        );
        if let Ok(mut sets) = self.sets.write() {
            if sets.len() >= SLICE_CACHE {
                sets.clear();
            }
            sets.insert(slice, Arc::clone(&set));
        }
        Ok(set)
    }
}
