//! How long a credential lives: the request's TTL (or the kind's default),
//! within the broker's maximum and the policy's cap, never beyond the task
//! window; and the lease that records it.

use uuid::Uuid;

use super::{Allowed, Error, NS, Task};
use crate::store::{Kind, Lease, LeaseState};

/// The lifetime to issue for: `requested` seconds (or `default` when 0),
/// within `broker_max` and the decision's cap, and never beyond the
/// window. Returns (ttl seconds, expiry ns). A request above the cap is
/// refused rather than shortened: the caller asked for something the
/// policy does not allow.
pub(super) fn lifetime(
    requested: u32,
    default: u64,
    broker_max: u64,
    allowed: &Allowed,
    task: &Task,
    now: i64,
) -> Result<(i64, i64), Error> {
    let mut ttl = if requested == 0 {
        default
    } else {
        u64::from(requested)
    };
    if let Some(cap) = allowed.max_ttl() {
        if requested != 0 && u64::from(requested) > cap {
            return Err(Error::precondition_on(
                "ttl_seconds",
                format!(
                    "{requested} is above the {cap} s the policy allows (decision {})",
                    allowed.decision.decision_id
                ),
            ));
        }
        ttl = ttl.min(cap);
    }
    let ttl = i64::try_from(ttl.min(broker_max)).unwrap_or(i64::MAX);
    let expires = now
        .saturating_add(ttl.saturating_mul(NS))
        .min(task.window_end_ns);
    Ok(((expires - now) / NS, expires))
}

/// Refuses a task window that has not started yet (a second of clock skew
/// allowed).
pub(super) fn started(task: &Task, now: i64) -> Result<(), Error> {
    if task.window_start_ns > now + NS {
        return Err(Error::precondition_on(
            "task.window_start",
            "the task window has not started; credentials are issued inside it",
        ));
    }
    Ok(())
}

/// Who a lease is for and under what.
pub(super) struct Holder<'a> {
    pub kind: Kind,
    pub identity_id: &'a str,
    pub holder: &'a str,
    pub spiffe_id: &'a str,
    pub task: &'a Task,
    pub allowed: &'a Allowed,
}

/// The lease for a credential issued at `now` to expire at `expires`. Only
/// an API token renews, up to the cap (the policy's, else `broker_max`)
/// and never past the window.
pub(super) fn lease(
    h: &Holder<'_>,
    (ttl, expires): (i64, i64),
    now: i64,
    broker_max: u64,
    credential_ref: String,
) -> Lease {
    let renewable = h.kind == Kind::ApiToken;
    let max_ttl = i64::try_from(h.allowed.max_ttl().unwrap_or(broker_max).min(broker_max))
        .unwrap_or(i64::MAX);
    let max_expires = if renewable {
        now.saturating_add(max_ttl.saturating_mul(NS))
            .min(h.task.window_end_ns)
            .max(expires)
    } else {
        expires
    };
    Lease {
        lease_id: Uuid::now_v7().hyphenated().to_string(),
        identity_id: h.identity_id.to_owned(),
        kind: h.kind,
        holder: h.holder.to_owned(),
        spiffe_id: h.spiffe_id.to_owned(),
        incident_ref: h.task.incident_ref.clone(),
        window_start_ns: h.task.window_start_ns,
        window_end_ns: h.task.window_end_ns,
        issued_at_ns: now,
        expires_at_ns: expires,
        max_expires_at_ns: max_expires,
        ttl_seconds: ttl,
        renewable,
        state: LeaseState::Active,
        credential_ref,
        token_hash: None,
        audience: Vec::new(),
        scopes: Vec::new(),
        decision_id: h.allowed.decision.decision_id.clone(),
        grant_id: h.allowed.decision.grant_id.clone(),
        revoked_at_ns: 0,
        revoked_by: String::new(),
        revoke_reason: String::new(),
        backend: String::new(),
        sealed_secret: None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::issuance::{Decision, Effect, Facts};

    const NOW: i64 = 1_900_000_000 * NS;

    fn allowed(cap: Option<u64>) -> Allowed {
        Allowed {
            decision: Decision {
                decision_id: "d-1".into(),
                effect: Effect::Allow,
                reason: String::new(),
                policy_set_version: 1,
                policy_ids: Vec::new(),
                grant_id: String::new(),
                approval_request_id: String::new(),
                recorded_with_outcome: false,
                max_ttl_seconds: cap,
                duties: Vec::new(),
                facts: Facts::default(),
            },
        }
    }

    fn task(end: i64) -> Task {
        Task {
            incident_ref: "INC-1".into(),
            window_start_ns: NOW,
            window_end_ns: end,
            reason: String::new(),
            correlation_id: String::new(),
        }
    }

    #[test]
    fn the_default_applies_when_no_ttl_is_asked_for() {
        let (ttl, expires) =
            lifetime(0, 300, 86_400, &allowed(None), &task(i64::MAX), NOW).unwrap();
        assert_eq!((ttl, expires), (300, NOW + 300 * NS));
    }

    #[test]
    fn the_policy_cap_shortens_the_default_and_refuses_a_longer_request() {
        let a = allowed(Some(60));
        assert_eq!(
            lifetime(0, 300, 86_400, &a, &task(i64::MAX), NOW)
                .unwrap()
                .0,
            60
        );
        assert_eq!(
            lifetime(30, 300, 86_400, &a, &task(i64::MAX), NOW)
                .unwrap()
                .0,
            30
        );
        let refused = lifetime(61, 300, 86_400, &a, &task(i64::MAX), NOW).unwrap_err();
        assert_eq!(
            refused.to_string(),
            "ttl_seconds: 61 is above the 60 s the policy allows (decision d-1)"
        );
    }

    #[test]
    fn the_window_end_and_the_broker_maximum_bound_every_lifetime() {
        let end = NOW + 10 * NS;
        assert_eq!(
            lifetime(3600, 300, 86_400, &allowed(None), &task(end), NOW).unwrap(),
            (10, end)
        );
        assert_eq!(
            lifetime(0, 300, 120, &allowed(None), &task(i64::MAX), NOW)
                .unwrap()
                .0,
            120
        );
    }

    #[test]
    fn a_window_that_has_not_started_is_refused_beyond_a_second_of_skew() {
        let mut t = task(i64::MAX);
        t.window_start_ns = NOW + NS;
        assert!(started(&t, NOW).is_ok());
        t.window_start_ns = NOW + NS + 1;
        assert!(started(&t, NOW).is_err());
    }

    #[test]
    fn only_an_api_token_renews_and_never_past_its_cap_or_window() {
        let a = allowed(Some(600));
        let t = task(NOW + 400 * NS);
        let holder = |kind| Holder {
            kind,
            identity_id: "i",
            holder: "h",
            spiffe_id: "",
            task: &t,
            allowed: &a,
        };
        let token = lease(
            &holder(Kind::ApiToken),
            (60, NOW + 60 * NS),
            NOW,
            86_400,
            "r".into(),
        );
        assert!(token.renewable);
        assert_eq!(token.max_expires_at_ns, NOW + 400 * NS);
        let svid = lease(
            &holder(Kind::JwtSvid),
            (60, NOW + 60 * NS),
            NOW,
            86_400,
            "r".into(),
        );
        assert!(!svid.renewable);
        assert_eq!(svid.max_expires_at_ns, NOW + 60 * NS);
        assert_eq!(svid.decision_id, "d-1");
    }
}
