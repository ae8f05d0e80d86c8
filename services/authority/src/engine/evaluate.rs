//! Evaluating a request with Cedar: its entities and context, and Steward's
//! reading of the response (deciding policies, reasons, obligations,
//! approvals still needed).

use super::*;

impl CompiledSet {
    pub(super) fn evaluate(
        &self,
        engine: &Engine,
        request: &DecisionRequest,
        set: &PolicySet,
    ) -> Result<Decision, EngineError> {
        let (cedar_request, entities) = cedar_inputs(engine, request)?;
        let response = engine
            .authorizer
            .is_authorized(&cedar_request, set, &entities);
        let mut policy_ids: Vec<String> = response
            .diagnostics()
            .reason()
            .map(ToString::to_string)
            .collect();
        policy_ids.sort();
        let errors: Vec<String> = response
            .diagnostics()
            .errors()
            .map(ToString::to_string)
            .collect();
        let reasons = |ids: &[String]| {
            ids.iter()
                .filter_map(|id| self.meta.get(id))
                .map(|m| m.reason.clone())
                .filter(|r| !r.is_empty())
                .collect::<Vec<_>>()
                .join("; ")
        };
        if response.decision() == cedar_policy::Decision::Deny {
            let reason = if policy_ids.is_empty() {
                "no policy permits this request".to_owned()
            } else {
                let r = reasons(&policy_ids);
                if r.is_empty() {
                    format!("forbidden by {}", policy_ids.join(", "))
                } else {
                    r
                }
            };
            return Ok(Decision {
                effect: Effect::Deny,
                policy_ids,
                reason,
                obligations: Obligations::default(),
                approval: None,
                errors,
            });
        }
        let metas: Vec<&PolicyMeta> = policy_ids
            .iter()
            .filter_map(|id| self.meta.get(id))
            .collect();
        let mut obligations = Obligations::default();
        for m in &metas {
            if let Some(ttl) = m.max_ttl {
                obligations.max_ttl = Some(obligations.max_ttl.map_or(ttl, |t| t.min(ttl)));
            }
            obligations.duties.extend(m.duties.iter().cloned());
        }
        // A permit with no approval condition allows outright; otherwise the
        // least demanding permit says how many approvals are needed.
        let held = u32::try_from(request.context.approvers.len()).unwrap_or(u32::MAX);
        let needed = metas
            .iter()
            .map(|m| (m.approvals.unwrap_or(0), m.approver.clone()))
            .min_by_key(|(n, _)| *n);
        let (effect, approval) = match needed {
            Some((n, approver)) if n > held => (
                Effect::ApprovalRequired,
                Some(ApprovalRequirement {
                    approvals: n,
                    approver,
                }),
            ),
            _ => (Effect::Allow, None),
        };
        let reason = match effect {
            Effect::ApprovalRequired => {
                let r = reasons(&policy_ids);
                let need = approval.as_ref().map_or(0, |a| a.approvals);
                format!(
                    "{} approval{} required, {held} held{}",
                    need,
                    if need == 1 { "" } else { "s" },
                    if r.is_empty() {
                        String::new()
                    } else {
                        format!(": {r}")
                    }
                )
            }
            _ => {
                let r = reasons(&policy_ids);
                if r.is_empty() {
                    format!("permitted by {}", policy_ids.join(", "))
                } else {
                    r
                }
            }
        };
        Ok(Decision {
            effect,
            policy_ids,
            reason,
            obligations,
            approval,
            errors,
        })
    }
}

pub(super) fn string(s: &str) -> RestrictedExpression {
    RestrictedExpression::new_string(s.to_owned())
}

/// The Cedar request and entities for one decision: the resource's store
/// plus the action's and the principal's entities, all built before.
pub(super) fn cedar_inputs(
    engine: &Engine,
    request: &DecisionRequest,
) -> Result<(Request, Entities), EngineError> {
    let actions = engine.action_entities.get(&request.action).ok_or_else(|| {
        request_error(
            "action",
            format!("{:?} is not a Steward action", request.action),
        )
    })?;
    // Group entities themselves need not exist: `principal in Group` is
    // answered from the principal's own ancestors.
    let principal = engine.principal_entity(&request.principal)?;
    let principal_uid = principal.uid();
    let entities = request
        .resource
        .store
        .clone()
        .add_entities(actions.iter().cloned().chain([principal]), None)
        .map_err(|e| request_error("entities", e.to_string()))?;
    let context = engine.context(&request.context)?;
    let action = Types::uid(&engine.types.action, &request.action);
    let cedar_request = Request::new(
        principal_uid,
        action,
        request.resource.uid.clone(),
        context,
        None,
    )
    .map_err(|e| request_error("request", e.to_string()))?;
    Ok((cedar_request, entities))
}

impl Engine {
    /// The Cedar context of `c`, from the cache when it was built before.
    pub(super) fn context(&self, c: &RequestContext) -> Result<Context, EngineError> {
        if let Some(context) = self.contexts.read().ok().and_then(|m| m.get(c).cloned()) {
            return Ok(context);
        }
        let context = Context::from_pairs([
            ("incident_ref".to_owned(), string(&c.incident_ref)),
            (
                "has_incident".to_owned(),
                RestrictedExpression::new_bool(!c.incident_ref.is_empty()),
            ),
            ("now".to_owned(), RestrictedExpression::new_long(c.now)),
            (
                "window_start".to_owned(),
                RestrictedExpression::new_long(c.window_start),
            ),
            (
                "window_end".to_owned(),
                RestrictedExpression::new_long(c.window_end),
            ),
            (
                "approvals".to_owned(),
                RestrictedExpression::new_long(
                    i64::try_from(c.approvers.len()).unwrap_or(i64::MAX),
                ),
            ),
            (
                "approvers".to_owned(),
                RestrictedExpression::new_set(c.approvers.iter().map(|a| string(a))),
            ),
            (
                "break_glass".to_owned(),
                RestrictedExpression::new_bool(c.break_glass),
            ),
            ("requester".to_owned(), string(&c.requester)),
            ("acting_workload".to_owned(), string(&c.acting_workload)),
            ("acting_human".to_owned(), string(&c.acting_human)),
            (
                "requested_ttl".to_owned(),
                RestrictedExpression::new_long(c.requested_ttl),
            ),
        ])
        .map_err(|e| request_error("context", e.to_string()))?;
        if let Ok(mut cache) = self.contexts.write() {
            if cache.len() >= CONTEXT_CACHE {
                cache.clear();
            }
            cache.insert(c.clone(), context.clone());
        }
        Ok(context)
    }
}
