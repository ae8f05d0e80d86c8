//! Risk signals and the risk score: open signals weighted by severity, plus
//! posture facts (no owner, expired while usable, never expires, not rotated,
//! dormant). The score is capped at 100 and always comes with its reasons.

use super::{Identity, NANOS_PER_DAY, Nanos, State};

super::names!(
    /// What a signal reports.
    SignalKind {
        SecretExposed => "secret_exposed",
        AnomalousLocation => "anomalous_location",
        PrivilegeSprawl => "privilege_sprawl",
        RotationFailed => "rotation_failed",
        Dormant => "dormant",
        OwnerDeparted => "owner_departed",
        PolicyViolation => "policy_violation",
        Custom => "custom",
    }
);

super::names!(
    Severity {
        Low => "low",
        Medium => "medium",
        High => "high",
        Critical => "critical",
    }
);

impl Severity {
    /// Points one open signal of this severity adds to the score.
    pub fn weight(self) -> u32 {
        match self {
            Self::Low => 5,
            Self::Medium => 15,
            Self::High => 30,
            Self::Critical => 50,
        }
    }
}

/// Days after which posture facts count.
pub const ROTATION_DAYS: i64 = 90;
pub const DORMANT_DAYS: i64 = 90;

/// The signal part of the score and its one-line summary, stored with the
/// identity so that lists need no extra query.
pub fn signal_part(open: &[(SignalKind, Severity)]) -> (u32, String) {
    if open.is_empty() {
        return (0, String::new());
    }
    let score: u32 = open.iter().map(|(_, s)| s.weight()).sum();
    let mut parts: Vec<(Severity, SignalKind)> = open.iter().map(|(k, s)| (*s, *k)).collect();
    parts.sort_by(|a, b| b.cmp(a));
    let listed: Vec<String> = parts
        .iter()
        .map(|(severity, kind)| format!("{severity} {kind}"))
        .collect();
    let summary = format!(
        "{} open signal{}: {}",
        open.len(),
        if open.len() == 1 { "" } else { "s" },
        listed.join(", ")
    );
    (score.min(100), summary)
}

/// The identity's risk now: score 0–100 and reasons, largest first.
pub fn assess(identity: &Identity, owner_departed: bool, now: Nanos) -> (u32, Vec<String>) {
    let mut parts: Vec<(u32, String)> = Vec::new();
    if identity.signal_score > 0 {
        parts.push((identity.signal_score, identity.signal_summary.clone()));
    }
    let live = super::lifecycle::LIVE.contains(&identity.state);
    let spec = &identity.spec;
    if live {
        if spec.unowned {
            parts.push((20, "no accountable owner".into()));
        } else if owner_departed {
            parts.push((20, "an owner has departed".into()));
        }
        match spec.expires_at {
            Some(expiry) if expiry <= now && identity.state.can_act() => {
                parts.push((25, "expired but still usable".into()));
            }
            None => parts.push((10, "never expires".into())),
            _ => {}
        }
        let rotated = spec.last_rotated_at.unwrap_or(identity.created_at);
        if now - rotated > ROTATION_DAYS * NANOS_PER_DAY {
            parts.push((
                10,
                format!("not rotated for {} days", (now - rotated) / NANOS_PER_DAY),
            ));
        }
        let active = spec.last_used_at.unwrap_or(identity.created_at);
        if now - active > DORMANT_DAYS * NANOS_PER_DAY {
            parts.push((
                5,
                format!("unused for {} days", (now - active) / NANOS_PER_DAY),
            ));
        }
    }
    if identity.state == State::Watchlisted {
        parts.push((0, "watchlisted".into()));
    }
    parts.sort_by_key(|p| std::cmp::Reverse(p.0));
    let score = parts.iter().map(|(p, _)| *p).sum::<u32>().min(100);
    (score, parts.into_iter().map(|(_, r)| r).collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn signals_are_weighted_and_summarised_worst_first() {
        let (score, summary) = signal_part(&[
            (SignalKind::Dormant, Severity::Low),
            (SignalKind::SecretExposed, Severity::Critical),
        ]);
        assert_eq!(score, 55);
        assert_eq!(
            summary,
            "2 open signals: critical secret_exposed, low dormant"
        );
        assert_eq!(signal_part(&[]).0, 0);
        let many = vec![(SignalKind::Custom, Severity::Critical); 5];
        assert_eq!(signal_part(&many).0, 100);
    }
}
