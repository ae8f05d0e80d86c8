//! Authority's decisions, as the core asks for and obeys them.

use steward_vocab::{Action, LifecycleState};

use super::{Error, Issuer, Task};

/// Who a decision is for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Principal {
    /// A workload, by its verified SPIFFE ID.
    Workload(String),
    /// The person of a bearer token the caller presented, forwarded for
    /// authority to verify.
    Bearer(String),
}

/// What a decision is about.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Resource {
    /// A non-human identity, by inventory id.
    Nhi(String),
    /// A trust domain, by name (CA rotation).
    TrustDomain(String),
}

/// One question for authority.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Ask {
    pub principal: Principal,
    pub action: Action,
    pub resource: Resource,
    pub task: Task,
    pub requested_ttl: u64,
    /// Whether this decision's record is left to the outcome's record
    /// (ADR 0012): true for an issuance, whose outcome is always recorded
    /// here (the credential with its lease, or the refusal).
    pub with_outcome: bool,
}

/// Authority's answer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Effect {
    Allow,
    Deny,
    ApprovalRequired,
}

/// Inventory's view of the identity, as the decision carries it.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Facts {
    pub kind: String,
    pub spiffe_id: String,
    /// None for a state this version does not know.
    pub state: Option<LifecycleState>,
}

/// A decision, as the broker uses it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Decision {
    pub decision_id: String,
    pub effect: Effect,
    pub reason: String,
    pub policy_set_version: u64,
    pub policy_ids: Vec<String>,
    /// The grant an ALLOW spent, if any.
    pub grant_id: String,
    /// The approval request an APPROVAL_REQUIRED opened.
    pub approval_request_id: String,
    /// Authority left this decision's record to the outcome's.
    pub recorded_with_outcome: bool,
    /// The policy's cap on the credential's lifetime.
    pub max_ttl_seconds: Option<u64>,
    pub duties: Vec<String>,
    pub facts: Facts,
}

/// Where decisions come from: authority, through `peers`, or a fake in
/// unit tests. An `Err` is a decision nobody made: the core does nothing
/// and passes it on.
#[tonic::async_trait]
pub trait Decide: Send + Sync {
    async fn decide(&self, ask: Ask) -> Result<Decision, Error>;
}

/// A decision that allowed.
#[derive(Debug, Clone)]
pub struct Allowed {
    pub decision: Decision,
}

impl Allowed {
    pub fn facts(&self) -> &Facts {
        &self.decision.facts
    }

    pub fn max_ttl(&self) -> Option<u64> {
        self.decision.max_ttl_seconds.filter(|t| *t > 0)
    }
}

impl Issuer {
    /// Asks authority whether `principal` may `action` on `identity_id`
    /// for `task`; anything but ALLOW is the caller's error.
    pub async fn authorize(
        &self,
        principal: &str,
        action: Action,
        identity_id: &str,
        task: &Task,
        requested_ttl: u64,
    ) -> Result<Allowed, Error> {
        let decision = self
            .decide
            .decide(Ask {
                principal: Principal::Workload(principal.to_owned()),
                action,
                resource: Resource::Nhi(identity_id.to_owned()),
                task: task.clone(),
                requested_ttl,
                with_outcome: action == Action::Issue,
            })
            .await?;
        match decision.effect {
            Effect::Allow => {}
            Effect::ApprovalRequired => {
                return Err(Error::ApprovalRequired {
                    request_id: decision.approval_request_id,
                    reason: decision.reason,
                });
            }
            Effect::Deny => {
                return Err(Error::Denied(format!(
                    "authority denied {action} on identity {identity_id} (decision {}): {}",
                    decision.decision_id, decision.reason
                )));
            }
        }
        let allowed = Allowed { decision };
        // A state this version does not know gets nothing either (fail
        // closed).
        let state = allowed.facts().state;
        if !state.is_some_and(LifecycleState::can_act) && action != Action::Revoke {
            let refused = Error::precondition_on(
                "identity_id",
                format!(
                    "identity {identity_id} is {} in inventory; it gets no credentials",
                    state.map_or(
                        "in a state this version does not know",
                        LifecycleState::as_str
                    )
                ),
            );
            self.record_refusal(&allowed, principal, identity_id, task, &refused)
                .await;
            return Err(refused);
        }
        Ok(allowed)
    }

    /// Asks authority `rotate_ca` on this trust domain for `principal`.
    /// Anything but ALLOW refuses the rotation; an unanswered ask rotates
    /// nothing (fail closed). Returns the decision as the `ca.rotate`
    /// record carries it.
    pub(super) async fn authorize_ca_rotation(
        &self,
        principal: Principal,
        reason: &str,
    ) -> Result<steward_evidence::record::Decision, Error> {
        let decision = self
            .decide
            .decide(Ask {
                principal,
                action: Action::RotateCa,
                resource: Resource::TrustDomain(self.own.trust_domain().name().to_owned()),
                task: Task {
                    incident_ref: String::new(),
                    window_start_ns: 0,
                    window_end_ns: i64::MAX,
                    reason: reason.to_owned(),
                    correlation_id: String::new(),
                },
                requested_ttl: 0,
                with_outcome: false,
            })
            .await?;
        if decision.effect != Effect::Allow {
            return Err(Error::Denied(format!(
                "authority denied rotate_ca (decision {}): {}",
                decision.decision_id, decision.reason
            )));
        }
        Ok(steward_evidence::record::Decision {
            policy_set_version: decision.policy_set_version.to_string(),
            effect: steward_evidence::record::Effect::Allow,
            policy_ids: decision.policy_ids,
            approval_ids: Vec::new(),
        })
    }
}
