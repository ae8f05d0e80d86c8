//! Changes authority owns are decided for their caller first: closing an
//! incident (`close_incident`), managing policies and rules
//! (`manage_policy`), with no activation that would lock the caller out.

use super::*;

impl AuthorityServer {
    /// Decides whether the verified caller may `action` `resource`, for a
    /// change this service is about to make. A refusal is recorded as a
    /// decision of its own and answered PERMISSION_DENIED, and nothing
    /// changes; an ALLOW is returned for the change's own evidence record.
    pub(crate) async fn admit(
        &self,
        actor: &Actor,
        action: &str,
        resource: Arc<Resource>,
        incident_ref: &str,
        correlation_id: &str,
    ) -> Result<EvidenceDecision, Status> {
        let (decision, version) = self
            .decider
            .admit(actor, action, resource, incident_ref, correlation_id)
            .await?;
        Ok(EvidenceDecision {
            policy_set_version: version.to_string(),
            effect: EvidenceEffect::Allow,
            policy_ids: decision.policy_ids.iter().take(MAX_IDS).cloned().collect(),
            approval_ids: Vec::new(),
        })
    }

    /// [`Self::admit`] for `manage_policy` on one of the two documents.
    pub(crate) async fn admit_document(
        &self,
        actor: &Actor,
        kind: SetKind,
    ) -> Result<EvidenceDecision, Status> {
        let name = match kind {
            SetKind::Policies => "policies",
            SetKind::ResponseRules => "response_rules",
        };
        let resource = self
            .shared
            .engine
            .document(name)
            .map_err(|e| Error::internal("the policy document makes no policy entity", e))?;
        self.admit(actor, "manage_policy", resource, "", "").await
    }

    /// Refuses to activate (or roll back to) a policy set under which the
    /// caller could no longer manage policy: it would have no way back.
    pub(super) async fn check_no_lockout(
        &self,
        actor: &Actor,
        version: Option<u64>,
    ) -> Result<(), Status> {
        let target = match version {
            Some(v) => v,
            None => match self
                .shared
                .store
                .rollback_target(SetKind::Policies)
                .await
                .map_err(store_status)?
            {
                // Nothing to roll back to: the store says so.
                0 => return Ok(()),
                v => v,
            },
        };
        let (target, set) = match self.shared.compiled(target).await {
            Ok(found) => found,
            // An unknown version is the store's to refuse, by name.
            Err(Error::Store(StoreError::NotFound(_))) => return Ok(()),
            Err(e) => return Err(e.into()),
        };
        let request =
            DecisionRequest {
                principal: self.decider.principal_of(actor)?,
                action: "manage_policy".to_owned(),
                resource: self.shared.engine.document("policies").map_err(|e| {
                    Error::internal("the policy document makes no policy entity", e)
                })?,
                context: own_context(actor, ""),
            };
        let decision = set
            .decide(&self.shared.engine, &request)
            .map_err(|e| Error::Policy(e.to_string()))?;
        if decision.effect != Effect::Allow {
            return Err(store_status(StoreError::FailedPrecondition(format!(
                "version: policy set {target} would refuse {} manage_policy ({}), leaving no way back; add a manage_policy permit to it (Steward's defaults have one)",
                steward_errors::shown(actor.name()),
                decision.reason
            ))));
        }
        Ok(())
    }
}
