//! What a decision is asked about and what it answers.

use super::*;

/// Who asks: a workload or a human, with its groups (transitively).
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum Principal {
    Workload {
        spiffe_id: String,
        trust_domain: String,
        groups: Vec<String>,
    },
    Human {
        subject: String,
        issuer: String,
        groups: Vec<String>,
    },
}

impl Principal {
    pub fn id(&self) -> &str {
        match self {
            Self::Workload { spiffe_id, .. } => spiffe_id,
            Self::Human { subject, .. } => subject,
        }
    }

    pub(super) fn groups(&self) -> &[String] {
        match self {
            Self::Workload { groups, .. } | Self::Human { groups, .. } => groups,
        }
    }

    pub(super) fn uid(&self, engine: &Engine) -> EntityUid {
        match self {
            Self::Workload { spiffe_id, .. } => Types::uid(&engine.types.workload, spiffe_id),
            Self::Human { subject, .. } => Types::uid(&engine.types.human, subject),
        }
    }

    /// Its slice key: its type and id.
    pub(super) fn key(&self) -> (PrincipalType, &str) {
        match self {
            Self::Workload { spiffe_id, .. } => (PrincipalType::Workload, spiffe_id),
            Self::Human { subject, .. } => (PrincipalType::Human, subject),
        }
    }
}

/// What inventory knows about the NHI, at decision time.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct NhiFacts {
    pub id: String,
    pub kind: String,
    pub environment: String,
    pub state: String,
    pub risk_score: i64,
    pub business_owner: String,
    pub technical_owner: String,
    pub business_service: String,
    pub source_system: String,
    pub spiffe_id: String,
    pub labels: BTreeMap<String, String>,
}

/// Everything about the request that is not an entity.
#[derive(Debug, Clone, Default, PartialEq, Eq, Hash)]
pub struct RequestContext {
    pub incident_ref: String,
    /// Unix seconds.
    pub now: i64,
    pub window_start: i64,
    pub window_end: i64,
    pub approvers: BTreeSet<String>,
    pub break_glass: bool,
    pub requester: String,
    pub acting_workload: String,
    pub acting_human: String,
    pub requested_ttl: i64,
}

/// One question for the engine.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DecisionRequest {
    pub principal: Principal,
    pub action: String,
    pub resource: Arc<Resource>,
    pub context: RequestContext,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Effect {
    Allow,
    Deny,
    ApprovalRequired,
}

/// What the deciding policies demand of the executor.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Obligations {
    /// The smallest `@max_ttl` among the deciding permits.
    pub max_ttl: Option<u64>,
    /// The union of their `@obligations`.
    pub duties: BTreeSet<String>,
}

/// Approvals a permit still needs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ApprovalRequirement {
    pub approvals: u32,
    /// `technical_owner`, `business_owner` or `group:<name>`; empty for anyone
    /// the policy allows to approve.
    pub approver: String,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Decision {
    pub effect: Effect,
    /// The policies that decided: the satisfied forbids for a deny, the
    /// satisfied permits otherwise.
    pub policy_ids: Vec<String>,
    pub reason: String,
    pub obligations: Obligations,
    pub approval: Option<ApprovalRequirement>,
    /// Policies that failed to evaluate (they count as not satisfied).
    pub errors: Vec<String>,
}
