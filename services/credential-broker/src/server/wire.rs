//! Wire checks and conversions of the broker's API.

use super::*;

pub(crate) fn caller<T>(request: &Request<T>) -> Result<String, Status> {
    PeerIdentity::of(request)
        .map(|p| p.spiffe_id.to_string())
        .ok_or_else(|| Status::unauthenticated("no verified peer identity"))
}

pub(crate) fn timestamp(ns: i64) -> Option<prost_types::Timestamp> {
    (ns != 0 && ns != i64::MAX).then(|| prost_types::Timestamp {
        seconds: ns.div_euclid(NS),
        nanos: i32::try_from(ns.rem_euclid(NS)).unwrap_or(0),
    })
}

pub(super) fn ts_ns(
    field: &str,
    ts: Option<&prost_types::Timestamp>,
) -> Result<Option<i64>, Status> {
    let Some(ts) = ts else { return Ok(None) };
    if !(0..1_000_000_000).contains(&ts.nanos) || ts.seconds < 0 || ts.seconds > 253_402_300_799 {
        return Err(Status::invalid_argument(format!(
            "{field}: is not a valid timestamp between 1970 and 9999"
        )));
    }
    Ok(Some(ts.seconds * NS + i64::from(ts.nanos)))
}

pub(crate) fn text(field: &str, value: &str, max: usize, required: bool) -> Result<(), Status> {
    if required && value.trim().is_empty() {
        return Err(Status::invalid_argument(format!("{field}: is required")));
    }
    if value.len() > max || value.chars().any(char::is_control) {
        return Err(Status::invalid_argument(format!(
            "{field}: at most {max} bytes, no control characters"
        )));
    }
    Ok(())
}

pub(crate) fn uuid(field: &str, value: &str) -> Result<Uuid, Status> {
    Uuid::try_parse(value).map_err(|_| {
        Status::invalid_argument(format!(
            "{field}: {} is not a UUID",
            steward_errors::shown(value)
        ))
    })
}

pub(crate) fn kind_to_pb(kind: Kind) -> i32 {
    match kind {
        Kind::X509Svid => pb::CredentialKind::X509Svid as i32,
        Kind::JwtSvid => pb::CredentialKind::JwtSvid as i32,
        Kind::ApiToken => pb::CredentialKind::ApiToken as i32,
        Kind::DatabaseRole => pb::CredentialKind::DatabaseRole as i32,
    }
}

pub(super) fn state_to_pb(state: LeaseState) -> i32 {
    match state {
        LeaseState::Active => pb::LeaseState::Active as i32,
        LeaseState::Revoked => pb::LeaseState::Revoked as i32,
        LeaseState::Expired => pb::LeaseState::Expired as i32,
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

/// A checked task: the incident and window a credential serves.
#[derive(Debug, Clone)]
pub(crate) struct Task {
    pub(crate) incident_ref: String,
    pub(crate) window_start_ns: i64,
    pub(crate) window_end_ns: i64,
    pub(crate) reason: String,
    pub(crate) correlation_id: String,
}

pub(crate) fn check_task(task: Option<&pb::Task>, now: i64) -> Result<Task, Status> {
    let task = task.ok_or_else(|| {
        Status::invalid_argument("task: is required (the incident and task window)")
    })?;
    text("task.incident_ref", &task.incident_ref, 256, true)?;
    text("task.correlation_id", &task.correlation_id, 256, false)?;
    if task.reason.len() > 1024 || task.reason.chars().any(|c| c.is_control() && c != '\n') {
        return Err(Status::invalid_argument(
            "task.reason: at most 1024 bytes, no control characters",
        ));
    }
    let start = ts_ns("task.window_start", task.window_start.as_ref())?.unwrap_or(now);
    let end = ts_ns("task.window_end", task.window_end.as_ref())?.unwrap_or(i64::MAX);
    if end <= start {
        return Err(Status::invalid_argument(
            "task.window_end: ends before the window starts",
        ));
    }
    if end <= now {
        return Err(Status::invalid_argument(
            "task.window_end: the task window has already ended",
        ));
    }
    Ok(Task {
        incident_ref: task.incident_ref.clone(),
        window_start_ns: start,
        window_end_ns: end,
        reason: task.reason.trim().to_owned(),
        correlation_id: task.correlation_id.clone(),
    })
}

pub(crate) fn check_audience(audience: &[String]) -> Result<(), Status> {
    if audience.is_empty() {
        return Err(Status::invalid_argument(
            "audience: at least one is required (JWT-SVIDs are always audience-bound)",
        ));
    }
    if audience.len() > 16 {
        return Err(Status::invalid_argument("audience: at most 16"));
    }
    for (i, a) in audience.iter().enumerate() {
        text(&format!("audience[{i}]"), a, 256, true)?;
    }
    Ok(())
}

pub(crate) fn check_scopes(scopes: &[String]) -> Result<(), Status> {
    if scopes.len() > 32 {
        return Err(Status::invalid_argument("scopes: at most 32"));
    }
    for (i, s) in scopes.iter().enumerate() {
        let ok = !s.is_empty()
            && s.len() <= 128
            && s.chars()
                .all(|c| c.is_ascii_alphanumeric() || ":._/-*".contains(c));
        if !ok {
            return Err(Status::invalid_argument(format!(
                "scopes[{i}]: 1 to 128 of A-Z a-z 0-9 : . _ / - *"
            )));
        }
    }
    Ok(())
}

pub(crate) fn sha256(bytes: &[u8]) -> Vec<u8> {
    ring::digest::digest(&ring::digest::SHA256, bytes)
        .as_ref()
        .to_vec()
}

pub(super) fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}
