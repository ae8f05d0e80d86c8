//! The response-rule set handlers: validate, upload, list, get, activate,
//! roll back, and the record of what the rules did.

use std::collections::BTreeMap;

use steward_proto::steward::authority::v1 as pb;
use tonic::{Request, Status};

use super::approvals::{page, paged, uuid_field};
use super::{AuthorityServer, actor_record, now_ns, store_status, timestamp};
use crate::approvals::Actor;
use crate::rules::{RuleError, RuleSet};
use crate::store::{NewVersion, SetKind, StoredSet};

fn errors_to_pb(errors: &[RuleError]) -> Vec<pb::RuleError> {
    errors
        .iter()
        .map(|e| pb::RuleError {
            path: e.path.clone(),
            message: e.message.clone(),
        })
        .collect()
}

fn set_to_pb(s: &StoredSet, active: u64, with_text: bool) -> pb::ResponseRuleSet {
    pb::ResponseRuleSet {
        version: s.version,
        description: s.description.clone(),
        uploaded_by: s.uploaded_by.clone(),
        create_time: Some(timestamp(s.created_at_ns)),
        rule_ids: s.policy_ids.clone(),
        active: s.version == active,
        document: if with_text {
            s.policies.clone()
        } else {
            String::new()
        },
    }
}

impl AuthorityServer {
    async fn active_rules_version(&self) -> Result<u64, Status> {
        Ok(self
            .shared
            .store
            .active(SetKind::ResponseRules)
            .await
            .map_err(store_status)?
            .unwrap_or(0))
    }

    pub(super) fn validate_response_rules_impl(
        &self,
        r: &pb::ValidateResponseRulesRequest,
    ) -> pb::ValidateResponseRulesResponse {
        match RuleSet::parse(&r.document) {
            Ok(set) => pb::ValidateResponseRulesResponse {
                valid: true,
                errors: Vec::new(),
                rule_ids: set.ids(),
            },
            Err(errors) => pb::ValidateResponseRulesResponse {
                valid: false,
                errors: errors_to_pb(&errors),
                rule_ids: Vec::new(),
            },
        }
    }

    pub(super) async fn upload_response_rules_impl(
        &self,
        request: Request<pb::UploadResponseRulesRequest>,
    ) -> Result<pb::UploadResponseRulesResponse, Status> {
        let actor = self.actor(&request)?;
        let r = request.into_inner();
        let allowed = self.admit_document(&actor, SetKind::ResponseRules).await?;
        let by = actor.name().to_owned();
        if r.document.trim().is_empty() {
            return Err(steward_errors::invalid("document", "is required").into());
        }
        if r.document.len() > 1024 * 1024 {
            return Err(steward_errors::invalid("document", "at most 1 MiB").into());
        }
        if r.description.len() > 1024 {
            return Err(steward_errors::invalid("description", "at most 1024 bytes").into());
        }
        let set = RuleSet::parse(&r.document).map_err(|errors| {
            let first = &errors[0];
            steward_errors::invalid(
                "document",
                format!(
                    "{}: {}{}",
                    first.path,
                    first.message,
                    if errors.len() > 1 {
                        format!(
                            " (and {} more; ValidateResponseRules lists them all)",
                            errors.len() - 1
                        )
                    } else {
                        String::new()
                    }
                ),
            )
        })?;
        let ids = set.ids();
        let version = self
            .shared
            .store
            .upload(
                SetKind::ResponseRules,
                NewVersion {
                    text: &r.document,
                    description: &r.description,
                    ids: &ids,
                    uploaded_by: &by,
                    now_ns: now_ns(),
                },
                |v| {
                    let mut a = BTreeMap::new();
                    a.insert("version".to_owned(), v.to_string());
                    a.insert("rules".to_owned(), ids.len().to_string());
                    actor_record(&actor, "rules.upload", &r.description, a, &allowed)
                },
            )
            .await
            .map_err(store_status)?;
        let stored = self
            .shared
            .store
            .get(SetKind::ResponseRules, version)
            .await
            .map_err(store_status)?;
        Ok(pb::UploadResponseRulesResponse {
            rule_set: Some(set_to_pb(
                &stored,
                self.active_rules_version().await?,
                false,
            )),
        })
    }

    pub(super) async fn list_response_rules_impl(
        &self,
        r: pb::ListResponseRulesRequest,
    ) -> Result<pb::ListResponseRulesResponse, Status> {
        let (sets, next) = self
            .list_versions(SetKind::ResponseRules, &r.page_token, r.page_size)
            .await?;
        let active = self.active_rules_version().await?;
        Ok(pb::ListResponseRulesResponse {
            rule_sets: sets.iter().map(|s| set_to_pb(s, active, false)).collect(),
            next_page_token: next,
        })
    }

    pub(super) async fn get_response_rules_impl(
        &self,
        r: pb::GetResponseRulesRequest,
    ) -> Result<pb::GetResponseRulesResponse, Status> {
        let stored = self
            .shared
            .store
            .get(SetKind::ResponseRules, r.version)
            .await
            .map_err(store_status)?;
        Ok(pb::GetResponseRulesResponse {
            rule_set: Some(set_to_pb(&stored, self.active_rules_version().await?, true)),
        })
    }

    /// Activates a version (or rolls back when `None`).
    pub(super) async fn switch_rules(
        &self,
        actor: &Actor,
        version: Option<u64>,
        reason: &str,
    ) -> Result<(pb::ResponseRuleSet, u64), Status> {
        let (stored, previous) = self
            .activate_version(SetKind::ResponseRules, version, actor, reason)
            .await?;
        Ok((set_to_pb(&stored, stored.version, false), previous))
    }

    pub(super) async fn list_response_actions_impl(
        &self,
        r: pb::ListResponseActionsRequest,
    ) -> Result<pb::ListResponseActionsResponse, Status> {
        if !r.identity_id.is_empty() {
            uuid_field("identity_id", &r.identity_id)?;
        }
        if !r.signal_id.is_empty() {
            uuid_field("signal_id", &r.signal_id)?;
        }
        let before = if r.page_token.is_empty() {
            String::new()
        } else {
            uuid_field("page_token", &r.page_token)?
        };
        let limit = page(r.page_size)?;
        let rows = self
            .shared
            .store
            .response_actions(&r.identity_id, &r.signal_id, &before, limit + 1)
            .await
            .map_err(store_status)?;
        let (rows, next) = paged(rows, limit, |a| a.id.clone());
        Ok(pb::ListResponseActionsResponse {
            actions: rows
                .into_iter()
                .map(|a| pb::ResponseAction {
                    id: a.id,
                    signal_id: a.signal_id,
                    identity_id: a.identity_id,
                    rule_id: a.rule_id,
                    rule_version: a.rule_version,
                    action: a.action,
                    outcome: a.outcome,
                    detail: a.detail,
                    approval_request_id: a.approval_request_id,
                    action_time: Some(prost_types::Timestamp {
                        seconds: a.at,
                        nanos: 0,
                    }),
                })
                .collect(),
            next_page_token: next,
        })
    }
}
