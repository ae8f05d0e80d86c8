//! Rotation with confirmed revocation.
//!
//! `rotate` asks authority for `rotate`, issues the replacement under that
//! decision, and records the rotation (the new lease, the old ones, when
//! their overlap ends) with its evidence. When the overlap ends (at once
//! for an overlap of 0, else by the loop in [`run`]), the old leases are
//! revoked and each is checked the way a relying party would see it: an
//! API token through introspection, an SVID through the revocation log
//! that `WatchRevocations` serves. The outcome is evidence; a check that
//! still accepts an old credential marks the rotation FAILED and reports a
//! ROTATION_FAILED risk signal through [`Signals`].

use std::sync::Arc;
use std::time::Duration;

use steward_evidence::EvidenceRecord;
use steward_evidence::record::{MAX_REASON, OutcomeStatus, truncate_utf8};
use steward_vocab::Action;
use uuid::Uuid;

use super::{Allowed, Error, Issuer, Made, Make, NS, Task, lease_record, mint};
use crate::now_ns;
use crate::store::rotations::{Rotation, RotationState};
use crate::store::{Kind, Lease, LeaseFilter, LeaseState};

/// The longest overlap a rotation may ask for.
pub const MAX_OVERLAP_SECONDS: u32 = 3600;
/// How often due rotations are looked for.
const POLL: Duration = Duration::from_millis(500);

/// Where a rotation whose old credential is still accepted is reported.
#[tonic::async_trait]
pub trait Signals: Send + Sync {
    /// A ROTATION_FAILED risk signal on the rotation's identity (best
    /// effort: the failure is evidence either way).
    async fn rotation_failed(&self, rotation: &Rotation, detail: &str);
}

/// A rotation as asked.
pub struct Order<'a> {
    pub caller: &'a str,
    pub identity_id: &'a str,
    pub kind: Kind,
    pub what: Make<'a>,
    pub ttl_seconds: u32,
    pub overlap_seconds: u32,
    pub task: &'a Task,
    pub now: i64,
}

/// The `credential.rotate` record: the new lease, the leases it replaces,
/// the overlap and the decision.
fn rotation_record(
    lease: &Lease,
    rotation: &Rotation,
    task: &Task,
    overlap_seconds: u32,
    allowed: &Allowed,
) -> EvidenceRecord {
    let mut record = lease_record(lease, &rotation.actor, "credential.rotate");
    record.outcome.reason = truncate_utf8(task.reason.clone(), MAX_REASON);
    record.correlation_id.clone_from(&rotation.correlation_id);
    let attributes = &mut record.attributes;
    attributes.insert("rotation_id".into(), rotation.rotation_id.clone());
    attributes.insert(
        "old_lease_ids".into(),
        truncate_utf8(rotation.old_lease_ids.join(" "), 1024),
    );
    attributes.insert("overlap_seconds".into(), overlap_seconds.to_string());
    attributes.insert(
        "rotate_decision_id".into(),
        allowed.decision.decision_id.clone(),
    );
    record
}

impl Issuer {
    /// Replaces every live credential of `order.kind` the identity has:
    /// the new one at once, the old ones revoked when the overlap ends.
    pub async fn rotate(&self, order: &Order<'_>) -> Result<(Rotation, Lease, Made), Error> {
        if order.overlap_seconds > MAX_OVERLAP_SECONDS {
            return Err(steward_errors::invalid(
                "overlap_seconds",
                format!("at most {MAX_OVERLAP_SECONDS}"),
            )
            .into());
        }
        let allowed = self
            .authorize(
                order.caller,
                Action::Rotate,
                order.identity_id,
                order.task,
                u64::from(order.ttl_seconds),
            )
            .await?;
        // The credentials being replaced: every live one of this kind.
        let old: Vec<String> = self
            .store
            .list(
                &LeaseFilter {
                    identity_id: Some(order.identity_id.to_owned()),
                    state: Some(LeaseState::Active),
                    ..LeaseFilter::default()
                },
                "",
                10_000,
            )
            .await?
            .into_iter()
            .filter(|l| l.kind == order.kind)
            .map(|l| l.lease_id)
            .collect();
        let (lease, made) = self
            .make(
                &allowed,
                &mint::Order {
                    principal: order.caller,
                    identity_id: order.identity_id,
                    what: order.what,
                    ttl_seconds: order.ttl_seconds,
                    task: order.task,
                    now: order.now,
                },
            )
            .await?;
        let rotation = Rotation {
            rotation_id: Uuid::now_v7().hyphenated().to_string(),
            identity_id: order.identity_id.to_owned(),
            kind: order.kind,
            new_lease_id: lease.lease_id.clone(),
            old_lease_ids: old,
            state: RotationState::Overlap,
            revoke_at_ns: order.now + i64::from(order.overlap_seconds) * NS,
            confirmed_at_ns: 0,
            detail: String::new(),
            incident_ref: order.task.incident_ref.clone(),
            actor: order.caller.to_owned(),
            created_at_ns: order.now,
            correlation_id: truncate_utf8(order.task.correlation_id.clone(), 256),
        };
        let record = rotation_record(
            &lease,
            &rotation,
            order.task,
            order.overlap_seconds,
            &allowed,
        );
        self.store.insert_rotation(&rotation, &[record]).await?;
        let rotation = if order.overlap_seconds == 0 {
            self.finish(rotation).await?
        } else {
            rotation
        };
        Ok((rotation, lease, made))
    }

    /// Revokes a rotation's old leases, confirms each is rejected, and
    /// records the outcome (and reports a failure).
    async fn finish(&self, rotation: Rotation) -> Result<Rotation, Error> {
        let store = &self.store;
        let mut old = Vec::new();
        for id in &rotation.old_lease_ids {
            old.push(store.lease(id).await?);
        }
        let reason = format!(
            "rotated: replaced by lease {} (rotation {})",
            rotation.new_lease_id, rotation.rotation_id
        );
        let active: Vec<Lease> = old
            .iter()
            .filter(|l| l.state == LeaseState::Active)
            .cloned()
            .collect();
        if !active.is_empty() {
            // Part of the rotation authority allowed.
            self.revoke(
                &rotation.actor,
                &active,
                &reason,
                &rotation.correlation_id,
                true,
            )
            .await?;
        }
        let mut failures = Vec::new();
        for lease in &old {
            if let Err(what) = self.confirm_rejected(lease).await {
                failures.push(what);
            }
        }
        let (state, detail) = if failures.is_empty() {
            (
                RotationState::Confirmed,
                format!(
                    "{} old credential(s) revoked and confirmed rejected ({})",
                    old.len(),
                    match rotation.kind {
                        Kind::ApiToken => "introspection",
                        Kind::DatabaseRole => "a login attempt was refused",
                        _ => "revocation log",
                    }
                ),
            )
        } else {
            (RotationState::Failed, failures.join("; "))
        };
        let new_lease = store.lease(&rotation.new_lease_id).await?;
        let action = match state {
            RotationState::Confirmed => "credential.rotation_confirmed",
            _ => "credential.rotation_failed",
        };
        let mut record = lease_record(&new_lease, &self.own.to_string(), action);
        record.outcome.reason = truncate_utf8(detail.clone(), MAX_REASON);
        record.correlation_id.clone_from(&rotation.correlation_id);
        if state == RotationState::Failed {
            record.outcome.status = OutcomeStatus::Failed;
        }
        record
            .attributes
            .insert("rotation_id".into(), rotation.rotation_id.clone());
        let finished = store
            .finish_rotation(&rotation.rotation_id, state, &detail, now_ns(), &[record])
            .await?;
        if finished && state == RotationState::Failed {
            self.signals.rotation_failed(&rotation, &detail).await;
        }
        Ok(store.rotation(&rotation.rotation_id).await?)
    }

    /// Checks that `lease`'s credential is rejected, as its relying
    /// parties would check it.
    async fn confirm_rejected(&self, lease: &Lease) -> Result<(), String> {
        match lease.kind {
            Kind::ApiToken => {
                let hash = lease.token_hash.as_deref().unwrap_or_default();
                match self.introspection(hash).await {
                    Ok(None) => Ok(()),
                    Ok(Some(_)) => Err(format!(
                        "introspection still accepts {} (lease {})",
                        lease.credential_ref, lease.lease_id
                    )),
                    Err(e) => Err(format!("cannot introspect lease {}: {e}", lease.lease_id)),
                }
            }
            Kind::DatabaseRole => self.confirm_role_refused(lease).await,
            Kind::X509Svid | Kind::JwtSvid => {
                let now_live = self
                    .store
                    .lease(&lease.lease_id)
                    .await
                    .map(|l| l.live(now_ns()))
                    .map_err(|e| e.to_string())?;
                let logged = self
                    .store
                    .in_revocation_log(&lease.lease_id)
                    .await
                    .map_err(|e| e.to_string())?;
                if now_live || !logged {
                    Err(format!(
                        "{} {} (lease {}) is not in the revocation log",
                        lease.kind.as_str(),
                        lease.credential_ref,
                        lease.lease_id
                    ))
                } else {
                    Ok(())
                }
            }
        }
    }

    /// Revokes a database role in its backend now, not when the log
    /// follower gets to it, and checks that its password no longer logs in.
    async fn confirm_role_refused(&self, lease: &Lease) -> Result<(), String> {
        let backend = self
            .backend
            .clone()
            .ok_or_else(|| format!("no backend to check lease {}", lease.lease_id))?;
        let sealed = lease
            .sealed_secret
            .as_deref()
            .ok_or_else(|| format!("lease {} has no secret left to try", lease.lease_id))?;
        let password = crate::backends::open(self.kek.as_ref(), &lease.lease_id, sealed)?;
        backend
            .revoke(&lease.credential_ref)
            .await
            .map_err(|e| format!("cannot revoke role {}: {e}", lease.credential_ref))?;
        match backend.refuses(&lease.credential_ref, &password).await {
            Ok(true) => Ok(()),
            Ok(false) => Err(format!(
                "role {} can still log in (lease {})",
                lease.credential_ref, lease.lease_id
            )),
            Err(e) => Err(format!("cannot try role {}: {e}", lease.credential_ref)),
        }
    }
}

/// Finishes rotations whose overlap has ended, until `shutdown`.
pub async fn run(issuer: Arc<Issuer>, shutdown: impl std::future::Future<Output = ()>) {
    tokio::pin!(shutdown);
    loop {
        tokio::select! {
            () = &mut shutdown => return,
            () = tokio::time::sleep(POLL) => {}
        }
        let due = match issuer.store.due_rotations(now_ns(), 50).await {
            Ok(due) => due,
            Err(error) => {
                tracing::warn!(%error, "cannot read due rotations; retrying");
                continue;
            }
        };
        for rotation in due {
            let id = rotation.rotation_id.clone();
            if let Err(error) = issuer.finish(rotation).await {
                tracing::warn!(
                    rotation = id,
                    %error,
                    "cannot finish a rotation yet; retrying"
                );
            }
        }
    }
}
