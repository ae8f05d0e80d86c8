//! Rotation with confirmed revocation.
//!
//! `Rotate` asks authority for `rotate`, issues the replacement under that
//! decision, and records the rotation (the new lease, the old ones, when
//! their overlap ends) with its evidence. When the overlap ends (at once
//! for an overlap of 0, else by the loop in [`run`]), the old leases are
//! revoked and each is checked the way a relying party would see it: an
//! API token through introspection, an SVID through the revocation log
//! that `WatchRevocations` serves. The outcome is evidence; a check that
//! still accepts an old credential marks the rotation FAILED and reports a
//! ROTATION_FAILED risk signal to inventory.

use std::time::Duration;

use steward_evidence::record::{MAX_REASON, truncate_utf8};
use steward_proto::steward::broker::v1 as pb;
use steward_proto::steward::inventory::v1 as inventory;
use tonic::{Request, Status};
use uuid::Uuid;

use steward_evidence::EvidenceRecord;

use super::{
    Allowed, BrokerServer, Made, Make, Task, caller, check_audience, check_scopes, kind_to_pb,
    lease_record, lease_to_pb, store_status, timestamp,
};
use crate::now_ns;
use crate::store::rotations::{Rotation, RotationState};
use crate::store::{Kind, Lease, LeaseFilter, LeaseState};

/// The longest overlap a rotation may ask for.
pub const MAX_OVERLAP_SECONDS: u32 = 3600;
/// How often due rotations are looked for.
const POLL: Duration = Duration::from_millis(500);
const NS: i64 = 1_000_000_000;

pub fn to_pb(r: &Rotation) -> pb::Rotation {
    pb::Rotation {
        rotation_id: r.rotation_id.clone(),
        identity_id: r.identity_id.clone(),
        kind: kind_to_pb(r.kind),
        new_lease_id: r.new_lease_id.clone(),
        old_lease_ids: r.old_lease_ids.clone(),
        state: match r.state {
            RotationState::Overlap => pb::RotationState::Overlap as i32,
            RotationState::Confirmed => pb::RotationState::Confirmed as i32,
            RotationState::Failed => pb::RotationState::Failed as i32,
        },
        revoke_time: timestamp(r.revoke_at_ns),
        confirm_time: timestamp(r.confirmed_at_ns),
        detail: r.detail.clone(),
        incident_ref: r.incident_ref.clone(),
        actor: r.actor.clone(),
    }
}

/// The kind a rotation replaces and how to mint its successor, from the
/// request's kind and that kind's fields.
fn what_to_rotate(r: &pb::RotateRequest) -> Result<(Kind, Make<'_>), Status> {
    Ok(match pb::CredentialKind::try_from(r.kind) {
        Ok(pb::CredentialKind::X509Svid) => {
            if r.csr.is_empty() || r.csr.len() > 16 * 1024 {
                return Err(Status::invalid_argument(
                    "csr: is required to rotate an X.509-SVID (a DER PKCS#10 request of at most 16 KiB)",
                ));
            }
            (
                Kind::X509Svid,
                Make::X509 {
                    csr: &r.csr,
                    dns_names: &[],
                },
            )
        }
        Ok(pb::CredentialKind::JwtSvid) => {
            check_audience(&r.audience)?;
            (
                Kind::JwtSvid,
                Make::Jwt {
                    audience: &r.audience,
                },
            )
        }
        Ok(pb::CredentialKind::ApiToken) => {
            check_scopes(&r.scopes)?;
            (Kind::ApiToken, Make::Token { scopes: &r.scopes })
        }
        Ok(pb::CredentialKind::DatabaseRole) => {
            super::text("template", &r.template, 64, true)?;
            (
                Kind::DatabaseRole,
                Make::DatabaseRole {
                    template: &r.template,
                },
            )
        }
        _ => {
            return Err(Status::invalid_argument(
                "kind: one of CREDENTIAL_KIND_X509_SVID, CREDENTIAL_KIND_JWT_SVID, CREDENTIAL_KIND_API_TOKEN, CREDENTIAL_KIND_DATABASE_ROLE",
            ));
        }
    })
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

/// What the caller gets: the rotation, the new lease and its secret.
fn response(rotation: &Rotation, lease: &Lease, made: Made) -> pb::RotateResponse {
    let mut response = pb::RotateResponse {
        rotation: Some(to_pb(rotation)),
        lease: Some(lease_to_pb(lease)),
        ..Default::default()
    };
    match made {
        Made::X509(issued) => response.x509_svid = issued.chain_der,
        Made::DatabaseRole(credential) => {
            response.username = credential.username;
            response.password = credential.password;
        }
        other => response.token = other.secret(),
    }
    response
}

impl BrokerServer {
    pub(crate) async fn rotate_impl(
        &self,
        request: Request<pb::RotateRequest>,
    ) -> Result<pb::RotateResponse, Status> {
        let caller = caller(&request)?;
        let r = request.into_inner();
        let (task, now) = self.checked(&r.identity_id, r.ttl_seconds, r.task.as_ref())?;
        let (kind, what) = what_to_rotate(&r)?;
        if r.overlap_seconds > MAX_OVERLAP_SECONDS {
            return Err(Status::invalid_argument(format!(
                "overlap_seconds: at most {MAX_OVERLAP_SECONDS}"
            )));
        }
        let allowed = self
            .authorize(
                &caller,
                "rotate",
                &r.identity_id,
                &task,
                u64::from(r.ttl_seconds),
            )
            .await?;
        // The credentials being replaced: every live one of this kind.
        let old: Vec<String> = self
            .shared
            .store
            .list(
                &LeaseFilter {
                    identity_id: Some(r.identity_id.clone()),
                    state: Some(LeaseState::Active),
                    ..LeaseFilter::default()
                },
                "",
                10_000,
            )
            .await
            .map_err(store_status)?
            .into_iter()
            .filter(|l| l.kind == kind)
            .map(|l| l.lease_id)
            .collect();
        let (lease, made) = self
            .make(
                &allowed,
                &caller,
                &r.identity_id,
                what,
                r.ttl_seconds,
                &task,
                now,
            )
            .await?;
        let rotation = Rotation {
            rotation_id: Uuid::now_v7().hyphenated().to_string(),
            identity_id: r.identity_id.clone(),
            kind,
            new_lease_id: lease.lease_id.clone(),
            old_lease_ids: old,
            state: RotationState::Overlap,
            revoke_at_ns: now + i64::from(r.overlap_seconds) * NS,
            confirmed_at_ns: 0,
            detail: String::new(),
            incident_ref: task.incident_ref.clone(),
            actor: caller.clone(),
            created_at_ns: now,
            correlation_id: truncate_utf8(task.correlation_id.clone(), 256),
        };
        let record = rotation_record(&lease, &rotation, &task, r.overlap_seconds, &allowed);
        self.shared
            .store
            .insert_rotation(&rotation, &[record])
            .await
            .map_err(store_status)?;
        let rotation = if r.overlap_seconds == 0 {
            self.finish(rotation).await?
        } else {
            rotation
        };
        Ok(response(&rotation, &lease, made))
    }

    /// Revokes a rotation's old leases, confirms each is rejected, and
    /// records the outcome (and reports a failure to inventory).
    pub(crate) async fn finish(&self, rotation: Rotation) -> Result<Rotation, Status> {
        let store = &self.shared.store;
        let mut old = Vec::new();
        for id in &rotation.old_lease_ids {
            old.push(store.lease(id).await.map_err(store_status)?);
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
        let now = now_ns();
        let new_lease = store
            .lease(&rotation.new_lease_id)
            .await
            .map_err(store_status)?;
        let action = match state {
            RotationState::Confirmed => "credential.rotation_confirmed",
            _ => "credential.rotation_failed",
        };
        let mut record = lease_record(&new_lease, &self.shared.own.to_string(), action);
        record.outcome.reason = truncate_utf8(detail.clone(), MAX_REASON);
        record.correlation_id.clone_from(&rotation.correlation_id);
        if state == RotationState::Failed {
            record.outcome.status = steward_evidence::record::OutcomeStatus::Failed;
        }
        record
            .attributes
            .insert("rotation_id".into(), rotation.rotation_id.clone());
        let finished = store
            .finish_rotation(&rotation.rotation_id, state, &detail, now, &[record])
            .await
            .map_err(store_status)?;
        if finished && state == RotationState::Failed {
            self.report_failure(&rotation, &detail).await;
        }
        store
            .rotation(&rotation.rotation_id)
            .await
            .map_err(store_status)
    }

    /// Checks that `lease`'s credential is rejected, as its relying
    /// parties would check it.
    async fn confirm_rejected(&self, lease: &Lease) -> Result<(), String> {
        let store = &self.shared.store;
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
            Kind::DatabaseRole => {
                let backend = self
                    .shared
                    .backend
                    .clone()
                    .ok_or_else(|| format!("no backend to check lease {}", lease.lease_id))?;
                let sealed = lease
                    .sealed_secret
                    .as_deref()
                    .ok_or_else(|| format!("lease {} has no secret left to try", lease.lease_id))?;
                let password =
                    crate::backends::open(self.shared.kek.as_ref(), &lease.lease_id, sealed)?;
                // Revoked in the backend now, not when the log follower
                // gets to it: the login attempt below must be refused.
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
            Kind::X509Svid | Kind::JwtSvid => {
                let now_live = store
                    .lease(&lease.lease_id)
                    .await
                    .map(|l| l.live(now_ns()))
                    .map_err(|e| e.to_string())?;
                let logged = store
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

    /// A ROTATION_FAILED signal on the identity (best effort: the failure
    /// is evidence either way).
    async fn report_failure(&self, rotation: &Rotation, detail: &str) {
        let mut client = self.shared.inventory.clone();
        let signal = inventory::AddSignalRequest {
            identity_id: rotation.identity_id.clone(),
            kind: inventory::SignalKind::RotationFailed as i32,
            severity: inventory::Severity::High as i32,
            source: "credential-broker".into(),
            observe_time: None,
            evidence_ref: format!("rotation:{}", rotation.rotation_id),
            summary: truncate_utf8(format!("rotation not confirmed: {detail}"), 512),
            context: None,
        };
        if let Err(status) = client.add_signal(signal).await {
            tracing::error!(
                rotation = rotation.rotation_id,
                code = ?status.code(),
                message = status.message(),
                "cannot report a failed rotation to inventory"
            );
        }
    }
}

/// Finishes rotations whose overlap has ended, until `shutdown`.
pub async fn run(broker: BrokerServer, shutdown: impl std::future::Future<Output = ()>) {
    tokio::pin!(shutdown);
    loop {
        tokio::select! {
            () = &mut shutdown => return,
            () = tokio::time::sleep(POLL) => {}
        }
        let due = match broker.shared.store.due_rotations(now_ns(), 50).await {
            Ok(due) => due,
            Err(error) => {
                tracing::warn!(%error, "cannot read due rotations; retrying");
                continue;
            }
        };
        for rotation in due {
            let id = rotation.rotation_id.clone();
            if let Err(status) = broker.finish(rotation).await {
                tracing::warn!(
                    rotation = id,
                    message = status.message(),
                    "cannot finish a rotation yet; retrying"
                );
            }
        }
    }
}
