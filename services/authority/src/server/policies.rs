//! The policy-set handlers' shared parts: paging stored versions,
//! activation and rollback, and the wire form of a set.

use super::*;

pub(super) fn errors_to_pb(errors: &[PolicyError]) -> Vec<pb::PolicyError> {
    errors
        .iter()
        .map(|e| pb::PolicyError {
            line: e.line,
            column: e.column,
            policy_id: e.policy_id.clone(),
            message: e.message.clone(),
        })
        .collect()
}

pub(super) fn set_to_pb(s: &StoredSet, active: u64, with_text: bool) -> pb::PolicySet {
    pb::PolicySet {
        version: s.version,
        description: s.description.clone(),
        uploaded_by: s.uploaded_by.clone(),
        create_time: Some(timestamp(s.created_at_ns)),
        policy_ids: s.policy_ids.clone(),
        active: s.version == active,
        policies: if with_text {
            s.policies.clone()
        } else {
            String::new()
        },
    }
}

impl AuthorityServer {
    /// A page of stored versions of `kind`, newest first, and the next
    /// page's token.
    pub(super) async fn list_versions(
        &self,
        kind: SetKind,
        page_token: &str,
        page_size: u32,
    ) -> Result<(Vec<StoredSet>, String), Status> {
        let before = if page_token.is_empty() {
            0
        } else {
            page_token.parse::<u64>().map_err(|_| {
                steward_errors::invalid("page_token", "not a token from a previous response")
            })?
        };
        let limit = approvals::page(page_size)?;
        let rows = self
            .shared
            .store
            .list(kind, before, limit + 1)
            .await
            .map_err(store_status)?;
        Ok(approvals::paged(rows, limit, |s| s.version.to_string()))
    }

    /// Activates a version (or rolls back) and makes it the one decisions use.
    /// Activates a stored version of `kind` (`None`: rolls back), with its
    /// evidence; returns it and the version active before.
    pub(super) async fn activate_version(
        &self,
        kind: SetKind,
        version: Option<u64>,
        actor: &Actor,
        reason: &str,
    ) -> Result<(StoredSet, u64), Status> {
        let reason = approvals::reason_field("reason", reason)?;
        let allowed = self.admit_document(actor, kind).await?;
        if kind == SetKind::Policies {
            self.check_no_lockout(actor, version).await?;
        }
        let by = actor.name();
        let event = format!(
            "{}.{}",
            kind.event_prefix(),
            if version.is_none() {
                "rollback"
            } else {
                "activate"
            }
        );
        let (target, previous) = self
            .shared
            .store
            .activate(kind, version, by, &reason, now_ns(), |target, previous| {
                let mut a = BTreeMap::new();
                a.insert("version".to_owned(), target.to_string());
                a.insert("previous_version".to_owned(), previous.to_string());
                actor_record(actor, &event, &reason, a, &allowed)
            })
            .await
            .map_err(store_status)?;
        let stored = self
            .shared
            .store
            .get(kind, target)
            .await
            .map_err(store_status)?;
        Ok((stored, previous))
    }

    /// Activates a policy set version (or rolls back) and makes it the one
    /// decisions use.
    pub(super) async fn switch(
        &self,
        version: Option<u64>,
        actor: &Actor,
        reason: &str,
    ) -> Result<(pb::PolicySet, u64), Status> {
        let (stored, previous) = self
            .activate_version(SetKind::Policies, version, actor, reason)
            .await?;
        let (_, set) = self.shared.compiled(stored.version).await?;
        self.shared.set_active(crate::state::Active {
            version: stored.version,
            set,
        });
        // No replica decides with the set this one replaced once this
        // returns (ADR 0026).
        self.shared.currency.reached(&self.shared.store).await;
        Ok((set_to_pb(&stored, stored.version, false), previous))
    }

    /// Checks, compiles and stores a policy set as the next version, once
    /// the caller may `manage_policy`.
    pub(super) async fn upload_policy_set_impl(
        &self,
        request: Request<pb::UploadPolicySetRequest>,
    ) -> Result<pb::UploadPolicySetResponse, Status> {
        let actor = self.actor(&request)?;
        let r = request.into_inner();
        let allowed = self.admit_document(&actor, SetKind::Policies).await?;
        let by = actor.name().to_owned();
        if r.policies.trim().is_empty() {
            return Err(steward_errors::invalid("policies", "is required").into());
        }
        if r.policies.len() > 4 * 1024 * 1024 {
            return Err(steward_errors::invalid("policies", "at most 4 MiB").into());
        }
        if r.description.len() > 1024 {
            return Err(steward_errors::invalid("description", "at most 1024 bytes").into());
        }
        let set = CompiledSet::compile(&self.shared.engine, &r.policies).map_err(|errors| {
            let first = &errors[0];
            steward_errors::invalid(
                "policies",
                format!(
                    "line {}, column {}{}: {}{}",
                    first.line,
                    first.column,
                    if first.policy_id.is_empty() {
                        String::new()
                    } else {
                        format!(" (policy {})", first.policy_id)
                    },
                    first.message,
                    if errors.len() > 1 {
                        format!(
                            " (and {} more; ValidatePolicySet lists them all)",
                            errors.len() - 1
                        )
                    } else {
                        String::new()
                    }
                ),
            )
        })?;
        let ids = set.policy_ids();
        let now = now_ns();
        let version = self
            .shared
            .store
            .upload(
                SetKind::Policies,
                NewVersion {
                    text: &r.policies,
                    description: &r.description,
                    ids: &ids,
                    uploaded_by: &by,
                    now_ns: now,
                },
                |v| {
                    let mut a = BTreeMap::new();
                    a.insert("version".to_owned(), v.to_string());
                    a.insert("policies".to_owned(), ids.len().to_string());
                    actor_record(&actor, "policy.upload", &r.description, a, &allowed)
                },
            )
            .await
            .map_err(store_status)?;
        if let Ok(mut cache) = self.shared.compiled.write() {
            cache.insert(version, Arc::new(set));
        }
        let stored = self
            .shared
            .store
            .get(SetKind::Policies, version)
            .await
            .map_err(store_status)?;
        Ok(pb::UploadPolicySetResponse {
            policy_set: Some(set_to_pb(&stored, self.shared.active().version, false)),
        })
    }
}
