//! The broker's wire values: requests checked into the core's types, the
//! core's types as messages, and the core's errors as statuses. Prost
//! types stop here and in `peers`.

use steward_errors::wire::{reason, text, timestamp_ns};
use steward_errors::{invalid, to_status};
use steward_identity::PeerIdentity;
use steward_proto::steward::broker::v1 as pb;
use tonic::{Request, Status};

use crate::issuance::{Error, Task};
use crate::store::rotations::{Rotation, RotationState};
use crate::store::{Kind, Lease, LeaseState, StoreError};

impl From<Error> for Status {
    fn from(error: Error) -> Self {
        let mut status = to_status(&error);
        if let Error::ApprovalRequired { request_id, .. } = &error
            && let Ok(value) = request_id.parse()
        {
            status
                .metadata_mut()
                .insert("steward-approval-request-id", value);
        }
        status
    }
}

impl From<StoreError> for Status {
    fn from(error: StoreError) -> Self {
        Error::Store(error).into()
    }
}

/// The verified caller's SPIFFE ID.
pub fn caller<T>(request: &Request<T>) -> Result<String, Status> {
    PeerIdentity::caller(request)
}

/// Unix nanoseconds as a timestamp; none for 0 (never) and `i64::MAX`
/// (open-ended).
pub fn timestamp(ns: i64) -> Option<prost_types::Timestamp> {
    (ns != 0 && ns != i64::MAX).then(|| steward_evidence::clock::timestamp_of_ns(ns))
}

pub fn kind_to_pb(kind: Kind) -> i32 {
    match kind {
        Kind::X509Svid => pb::CredentialKind::X509Svid as i32,
        Kind::JwtSvid => pb::CredentialKind::JwtSvid as i32,
        Kind::ApiToken => pb::CredentialKind::ApiToken as i32,
        Kind::DatabaseRole => pb::CredentialKind::DatabaseRole as i32,
    }
}

fn state_to_pb(state: LeaseState) -> i32 {
    match state {
        LeaseState::Active => pb::LeaseState::Active as i32,
        LeaseState::Revoked => pb::LeaseState::Revoked as i32,
        LeaseState::Expired => pb::LeaseState::Expired as i32,
    }
}

/// A lease filter's state: none for UNSPECIFIED.
pub fn state_from_pb(state: i32) -> Result<Option<LeaseState>, Status> {
    match pb::LeaseState::try_from(state) {
        Ok(pb::LeaseState::Unspecified) => Ok(None),
        Ok(pb::LeaseState::Active) => Ok(Some(LeaseState::Active)),
        Ok(pb::LeaseState::Revoked) => Ok(Some(LeaseState::Revoked)),
        Ok(pb::LeaseState::Expired) => Ok(Some(LeaseState::Expired)),
        Err(_) => Err(invalid("state", format!("{state} is not a LeaseState")).into()),
    }
}

pub fn lease_to_pb(l: &Lease) -> pb::Lease {
    pb::Lease {
        lease_id: l.lease_id.clone(),
        identity_id: l.identity_id.clone(),
        kind: kind_to_pb(l.kind),
        holder: l.holder.clone(),
        spiffe_id: l.spiffe_id.clone(),
        incident_ref: l.incident_ref.clone(),
        window_start: timestamp(l.window_start_ns),
        window_end: timestamp(l.window_end_ns),
        issue_time: timestamp(l.issued_at_ns),
        expire_time: timestamp(l.expires_at_ns),
        max_expire_time: timestamp(l.max_expires_at_ns),
        renewable: l.renewable,
        state: state_to_pb(l.state),
        credential_ref: l.credential_ref.clone(),
        decision_id: l.decision_id.clone(),
        grant_id: l.grant_id.clone(),
        revoke_time: timestamp(l.revoked_at_ns),
        revoked_by: l.revoked_by.clone(),
        revoke_reason: l.revoke_reason.clone(),
        audience: l.audience.clone(),
        scopes: l.scopes.clone(),
    }
}

pub fn rotation_to_pb(r: &Rotation) -> pb::Rotation {
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

/// The request's task, checked: an incident, and a window that has not
/// ended (it starts now and is open-ended unless given).
pub fn task(task: Option<&pb::Task>, now: i64) -> Result<Task, Status> {
    let task = task.ok_or_else(|| invalid("task", "is required (the incident and task window)"))?;
    text("task.incident_ref", &task.incident_ref, 256, true)?;
    text("task.correlation_id", &task.correlation_id, 256, false)?;
    let reason = reason("task.reason", &task.reason, 1024)?;
    let start = timestamp_ns("task.window_start", task.window_start.as_ref())?.unwrap_or(now);
    let end = timestamp_ns("task.window_end", task.window_end.as_ref())?.unwrap_or(i64::MAX);
    if end <= start {
        return Err(invalid("task.window_end", "ends before the window starts").into());
    }
    if end <= now {
        return Err(invalid("task.window_end", "the task window has already ended").into());
    }
    Ok(Task {
        incident_ref: task.incident_ref.clone(),
        window_start_ns: start,
        window_end_ns: end,
        reason,
        correlation_id: task.correlation_id.clone(),
    })
}

pub fn audience(audience: &[String]) -> Result<(), Status> {
    if audience.is_empty() {
        return Err(invalid(
            "audience",
            "at least one is required (JWT-SVIDs are always audience-bound)",
        )
        .into());
    }
    if audience.len() > 16 {
        return Err(invalid("audience", "at most 16").into());
    }
    for (i, a) in audience.iter().enumerate() {
        text(&format!("audience[{i}]"), a, 256, true)?;
    }
    Ok(())
}

pub fn scopes(scopes: &[String]) -> Result<(), Status> {
    if scopes.len() > 32 {
        return Err(invalid("scopes", "at most 32").into());
    }
    for (i, s) in scopes.iter().enumerate() {
        let ok = !s.is_empty()
            && s.len() <= 128
            && s.chars()
                .all(|c| c.is_ascii_alphanumeric() || ":._/-*".contains(c));
        if !ok {
            return Err(invalid(
                format!("scopes[{i}]"),
                "1 to 128 of A-Z a-z 0-9 : . _ / - *",
            )
            .into());
        }
    }
    Ok(())
}

/// A DER PKCS#10 request of at most 16 KiB.
pub fn csr(csr: &[u8]) -> Result<(), Status> {
    if csr.is_empty() {
        return Err(invalid(
            "csr",
            "is required (a DER PKCS#10 request; the private key stays with the caller)",
        )
        .into());
    }
    if csr.len() > 16 * 1024 {
        return Err(invalid("csr", "at most 16 KiB").into());
    }
    Ok(())
}
