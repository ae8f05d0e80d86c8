//! The responder: follows inventory's signal feed and applies the active
//! response rules to each new signal, once.
//!
//! - Reversible actions run at once, through inventory's
//!   `TransitionState`, and never loosen a stricter state (a suspended
//!   identity is not moved back to watchlisted).
//! - Irreversible actions (and any the rule marks `approval: required`)
//!   open an approval request with authority itself as the principal; once
//!   approved, the grant is carried out on a later pass and spent.
//! - Every action is recorded with the signal that caused it; the signal
//!   id is the records' correlation id.
//!
//! Handling is at least once against inventory and exactly once in the
//! record: a signal's row, its actions and their evidence commit together,
//! and a pass that fails half-way is retried (transitions already made are
//! then skipped as "already in that state").

use std::collections::BTreeMap;
use std::time::Duration;

use steward_evidence::EvidenceRecord;
use steward_evidence::record::{MAX_ATTRIBUTE_VALUE, MAX_REASON, truncate_utf8};
use steward_proto::steward::inventory::v1 as inventory;
use tonic::Status;
use uuid::Uuid;

use super::AuthorityServer;
use super::approvals::now_s;
use crate::approvals::{ApprovalRequest, ApprovalState, GrantState, suggested_reviewers};
use crate::rules::{Action, Rule, RuleSet, strictness};
use crate::store::{ListFilter, ResponseAction, SetKind};

/// How often the feed is polled.
pub const POLL: Duration = Duration::from_secs(1);
/// Signals younger than this are read again on the next pass: on
/// PostgreSQL a signal can commit after one with a later id, so the cursor
/// never passes the most recent ones (handled signals are skipped).
const SETTLE_SECS: u64 = 10;
/// An approval a rule asks for stays open this long.
const RULE_APPROVAL_SECS: i64 = 24 * 3600;

/// The active rules, re-read when another version is activated.
#[derive(Debug, Default)]
pub struct Rules {
    version: u64,
    set: RuleSet,
}

fn signal_kind(signal: &inventory::Signal) -> String {
    inventory::SignalKind::try_from(signal.kind)
        .map(|k| {
            k.as_str_name()
                .trim_start_matches("SIGNAL_KIND_")
                .to_ascii_lowercase()
        })
        .unwrap_or_default()
}

fn severity(signal: &inventory::Signal) -> String {
    inventory::Severity::try_from(signal.severity)
        .map(|s| {
            s.as_str_name()
                .trim_start_matches("SEVERITY_")
                .to_ascii_lowercase()
        })
        .unwrap_or_default()
}

fn lifecycle(state: &str) -> inventory::LifecycleState {
    match state {
        "watchlisted" => inventory::LifecycleState::Watchlisted,
        "restricted" => inventory::LifecycleState::Restricted,
        "suspended" => inventory::LifecycleState::Suspended,
        _ => inventory::LifecycleState::Revoked,
    }
}

/// Whether inventory's answer will be the same on a retry: such a
/// failure is recorded, never retried, so one bad signal cannot stall the
/// feed.
fn permanent(code: tonic::Code) -> bool {
    matches!(
        code,
        tonic::Code::FailedPrecondition
            | tonic::Code::InvalidArgument
            | tonic::Code::NotFound
            | tonic::Code::PermissionDenied
            | tonic::Code::AlreadyExists
            | tonic::Code::OutOfRange
    )
}

/// The oldest UUIDv7 of `unix_ms`: ids below it were made before then.
fn uuid_floor(unix_ms: u64) -> String {
    let bytes = unix_ms.to_be_bytes();
    let mut raw = [0u8; 16];
    raw[..6].copy_from_slice(&bytes[2..]);
    Uuid::from_bytes(raw).hyphenated().to_string()
}

impl AuthorityServer {
    /// Runs the responder until `shutdown`.
    pub async fn respond(self, shutdown: impl std::future::Future<Output = ()>) {
        tokio::pin!(shutdown);
        let mut rules = Rules::default();
        loop {
            if let Err(status) = self.respond_once(&mut rules).await {
                tracing::warn!(
                    code = ?status.code(),
                    status_message = status.message(),
                    "response rules: pass failed; retrying"
                );
            }
            tokio::select! {
                () = &mut shutdown => return,
                () = tokio::time::sleep(POLL) => {}
            }
        }
    }

    /// One pass: new signals, then approved rule actions.
    pub async fn respond_once(&self, rules: &mut Rules) -> Result<(), Status> {
        self.refresh_rules(rules).await?;
        let mut cursor = self
            .shared
            .store
            .response_cursor()
            .await
            .map_err(super::store_status)?;
        let settle = u64::try_from(time::OffsetDateTime::now_utc().unix_timestamp())
            .unwrap_or(0)
            .saturating_sub(SETTLE_SECS)
            * 1000;
        let floor = uuid_floor(settle);
        loop {
            let page = self
                .inventory
                .clone()
                .list_signal_feed(inventory::ListSignalFeedRequest {
                    after_id: cursor.clone(),
                    page_size: 200,
                })
                .await?
                .into_inner()
                .signals;
            let Some(last) = page.last().map(|s| s.id.clone()) else {
                break;
            };
            for signal in &page {
                if !self
                    .shared
                    .store
                    .signal_handled(&signal.id)
                    .await
                    .map_err(super::store_status)?
                {
                    self.handle(rules, signal).await?;
                }
            }
            // Past settled signals only; recent ones are re-read next pass.
            let settled = if last < floor {
                last.clone()
            } else {
                floor.clone()
            };
            if settled > cursor {
                self.shared
                    .store
                    .set_response_cursor(&settled)
                    .await
                    .map_err(super::store_status)?;
            }
            if page.len() < 200 || last >= floor {
                break;
            }
            cursor = last;
        }
        self.carry_out_approved().await
    }

    async fn refresh_rules(&self, rules: &mut Rules) -> Result<(), Status> {
        let active = self
            .shared
            .store
            .active(SetKind::ResponseRules)
            .await
            .map_err(super::store_status)?
            .unwrap_or(0);
        if active == rules.version {
            return Ok(());
        }
        let stored = self
            .shared
            .store
            .get(SetKind::ResponseRules, active)
            .await
            .map_err(super::store_status)?;
        let set = RuleSet::parse(&stored.policies).map_err(|e| {
            crate::error::Error::internal(
                format!("stored response rules {active} no longer parse"),
                format!("{:?}", e.first()),
            )
        })?;
        tracing::info!(
            version = active,
            rules = set.rules.len(),
            "response rules active"
        );
        *rules = Rules {
            version: active,
            set,
        };
        Ok(())
    }

    /// Applies the matching rules to one signal and records the result.
    async fn handle(&self, rules: &Rules, signal: &inventory::Signal) -> Result<(), Status> {
        let kind = signal_kind(signal);
        let level = severity(signal);
        let matched: Vec<&Rule> = rules.set.matching(&kind, &level).collect();
        let now = now_s();
        let mut actions = Vec::new();
        let mut records = Vec::new();
        if !matched.is_empty() {
            let id = Uuid::try_parse(&signal.identity_id).map_err(|e| {
                crate::error::Error::internal("inventory sent a signal with a bad identity id", e)
            })?;
            let facts = match self.decider.facts(&id).await.map_err(Status::from) {
                Ok(resource) => resource.facts().clone(),
                Err(s) if permanent(s.code()) => {
                    tracing::warn!(signal = %signal.id, status_message = s.message(), "response rules: the signal's identity cannot be read; recorded, not acted on");
                    crate::engine::NhiFacts {
                        id: signal.identity_id.clone(),
                        state: "unknown".to_owned(),
                        ..Default::default()
                    }
                }
                Err(s) => return Err(s),
            };
            let mut state = facts.state.clone();
            for rule in matched {
                for action in &rule.actions {
                    let (outcome, detail, approval) = self
                        .apply(rule, *action, signal, &facts, &mut state, &kind, &level)
                        .await?;
                    let done = ResponseAction {
                        id: Uuid::now_v7().hyphenated().to_string(),
                        signal_id: signal.id.clone(),
                        identity_id: signal.identity_id.clone(),
                        rule_id: rule.id.clone(),
                        rule_version: rules.version,
                        action: action.as_str().to_owned(),
                        outcome: outcome.to_owned(),
                        detail,
                        approval_request_id: approval,
                        at: now,
                    };
                    records.push(self.response_record(&done, &facts.kind));
                    actions.push(done);
                }
            }
        }
        self.shared
            .store
            .record_response(
                &signal.id,
                &signal.identity_id,
                rules.version,
                &actions,
                &records,
                now,
            )
            .await
            .map_err(super::store_status)?;
        Ok(())
    }

    /// One action of one rule: (outcome, detail, approval request id).
    #[allow(clippy::too_many_arguments)]
    async fn apply(
        &self,
        rule: &Rule,
        action: Action,
        signal: &inventory::Signal,
        facts: &crate::engine::NhiFacts,
        state: &mut String,
        kind: &str,
        level: &str,
    ) -> Result<(&'static str, String, String), Status> {
        let why = format!(
            "response rule {}: {kind} signal ({level}) from {}{}",
            rule.id,
            signal.source,
            if rule.reason.is_empty() {
                String::new()
            } else {
                format!(": {}", rule.reason)
            }
        );
        let Some((target, strict)) = action.target_state() else {
            return Ok(("ticket_requested", why, String::new()));
        };
        if state == "unknown" {
            return Ok((
                "refused",
                "inventory could not return the identity".to_owned(),
                String::new(),
            ));
        }
        if strict <= strictness(state) {
            return Ok((
                "skipped",
                format!("the identity is already {state}"),
                String::new(),
            ));
        }
        if !rule.automatic(action) {
            let approval = self
                .request_rule_approval(rule, action, signal, facts, &why)
                .await?;
            return Ok(("approval_requested", why, approval));
        }
        match self
            .transition(&signal.identity_id, target, &why, &signal.id)
            .await?
        {
            Ok(()) => {
                *state = target.to_owned();
                Ok(("applied", why, String::new()))
            }
            Err(refused) => Ok(("refused", refused, String::new())),
        }
    }

    /// Moves an identity in inventory; `Ok(Err(why))` when inventory
    /// refuses the transition for good (already there, final, or a request
    /// it will never accept). Only transient failures are `Err`, and are
    /// retried on the next pass.
    async fn transition(
        &self,
        identity_id: &str,
        target: &str,
        reason: &str,
        correlation_id: &str,
    ) -> Result<Result<(), String>, Status> {
        let result = self
            .inventory
            .clone()
            .transition_state(inventory::TransitionStateRequest {
                id: identity_id.to_owned(),
                target_state: lifecycle(target) as i32,
                reason: truncate_utf8(reason.to_owned(), MAX_REASON),
                expected_version: 0,
                context: Some(inventory::ChangeContext {
                    incident_ref: String::new(),
                    correlation_id: correlation_id.to_owned(),
                }),
            })
            .await;
        match result {
            Ok(_) => Ok(Ok(())),
            Err(s) if permanent(s.code()) => Ok(Err(s.message().to_owned())),
            Err(s) => Err(s),
        }
    }

    async fn request_rule_approval(
        &self,
        rule: &Rule,
        action: Action,
        signal: &inventory::Signal,
        facts: &crate::engine::NhiFacts,
        why: &str,
    ) -> Result<String, Status> {
        let now = now_s();
        let own = self.shared.own.to_string();
        let request = ApprovalRequest {
            id: Uuid::now_v7().hyphenated().to_string(),
            principal: own.clone(),
            principal_issuer: String::new(),
            action: action.as_str().to_owned(),
            resource_id: signal.identity_id.clone(),
            incident_ref: String::new(),
            requester: own,
            reason: truncate_utf8(why.to_owned(), 1024),
            approvals_required: 1,
            approver: rule.approver.clone(),
            suggested_reviewers: suggested_reviewers(&rule.approver, facts),
            window_start: now,
            window_end: now + RULE_APPROVAL_SECS,
            claim_by: now + RULE_APPROVAL_SECS,
            policy_set_version: self.shared.active().version,
            decision_id: String::new(),
            correlation_id: signal.id.clone(),
            state: ApprovalState::Pending,
            created_at: now,
            expires_at: now + RULE_APPROVAL_SECS,
            decided_at: 0,
            grant_id: String::new(),
            reviews: Vec::new(),
        };
        let (opened, _) = self
            .shared
            .store
            .open_approval(request, &self.shared.own_actor(), now)
            .await
            .map_err(super::store_status)?;
        Ok(opened.id)
    }

    /// Carries out rule actions whose approval came through: each active
    /// grant held by authority itself.
    async fn carry_out_approved(&self) -> Result<(), Status> {
        let own = self.shared.own.to_string();
        let grants = self
            .shared
            .store
            .grants(&ListFilter {
                state: Some(GrantState::Active.as_str()),
                principal: own,
                limit: 100,
                ..ListFilter::default()
            })
            .await
            .map_err(super::store_status)?;
        let now = now_s();
        for grant in grants.into_iter().filter(|g| g.usable_at(now)) {
            let Some((target, _)) = Action::parse(&grant.action).and_then(Action::target_state)
            else {
                continue;
            };
            let why = format!(
                "approved by {} (approval request {})",
                grant.approvers.join(", "),
                grant.approval_request_id
            );
            let outcome = match self
                .transition(&grant.resource_id, target, &why, &grant.correlation_id)
                .await?
            {
                Ok(()) => "applied_after_approval",
                Err(_) => "skipped",
            };
            let actor = self.shared.own_actor();
            if !self
                .shared
                .store
                .claim_grant(&grant.id, &actor, "", now)
                .await
                .map_err(super::store_status)?
            {
                continue;
            }
            let done = ResponseAction {
                id: Uuid::now_v7().hyphenated().to_string(),
                signal_id: grant.correlation_id.clone(),
                identity_id: grant.resource_id.clone(),
                rule_id: String::new(),
                rule_version: 0,
                action: grant.action.clone(),
                outcome: outcome.to_owned(),
                detail: why,
                approval_request_id: grant.approval_request_id.clone(),
                at: now,
            };
            let record = self.response_record(&done, "");
            self.shared
                .store
                .record_actions(&[done], &[record])
                .await
                .map_err(super::store_status)?;
        }
        Ok(())
    }

    /// The evidence of one response action.
    fn response_record(&self, done: &ResponseAction, nhi_kind: &str) -> EvidenceRecord {
        let mut record = EvidenceRecord::new(
            &self.shared.own.to_string(),
            &format!("response.{}", done.action),
            crate::SERVICE,
        );
        record.target.nhi_id = done.identity_id.clone();
        record.target.nhi_kind = nhi_kind.to_owned();
        record.correlation_id = done.signal_id.clone();
        record.outcome.reason = truncate_utf8(done.detail.clone(), MAX_REASON);
        if !done.approval_request_id.is_empty() {
            record.decision.approval_ids = vec![done.approval_request_id.clone()];
        }
        let attributes: BTreeMap<String, String> = [
            ("signal_id", done.signal_id.clone()),
            ("rule_id", done.rule_id.clone()),
            ("rule_version", done.rule_version.to_string()),
            ("outcome", done.outcome.clone()),
            ("response_action_id", done.id.clone()),
        ]
        .into_iter()
        .filter(|(_, v)| !v.is_empty())
        .map(|(k, v)| (k.to_owned(), truncate_utf8(v, MAX_ATTRIBUTE_VALUE)))
        .collect();
        record.attributes = attributes;
        record
    }
}
