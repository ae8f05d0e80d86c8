//! The lifecycle state machine.
//!
//! ```text
//!              ┌──────────── undo ─────────────┐
//!   active ⇄ watchlisted ⇄ restricted ⇄ suspended ──► revoked ──► decommissioned
//!      └──────────────────────────────────────────────────┴──────────────►┘
//! ```
//!
//! Watchlist, restrict and suspend are reversible: from any of them the
//! identity can go to any other live state, back to active included.
//! Revoke and decommission are not: a revoked identity can only be
//! decommissioned, and a decommissioned one is final.

crate::names!(
    /// Where an NHI is in its life.
    LifecycleState {
        Active => "active",
        Watchlisted => "watchlisted",
        Restricted => "restricted",
        Suspended => "suspended",
        Revoked => "revoked",
        Decommissioned => "decommissioned",
    }
);

/// The states an identity can still act in (some with narrowed rights).
pub const LIVE: &[LifecycleState] = &[
    State::Active,
    State::Watchlisted,
    State::Restricted,
    State::Suspended,
];

use crate::Action;

/// Short for [`LifecycleState`] inside this module.
use LifecycleState as State;

impl State {
    /// Whether an identity in this state can be returned to a milder one.
    pub fn is_reversible(self) -> bool {
        !matches!(self, Self::Revoked | Self::Decommissioned)
    }

    /// Whether the identity may still act (possibly with narrowed rights):
    /// the states in which credentials are issued and renewed. Suspended,
    /// revoked and decommissioned identities get none.
    pub fn can_act(self) -> bool {
        matches!(self, Self::Active | Self::Watchlisted | Self::Restricted)
    }

    /// The policy action a move to this state is: what authority decides
    /// before inventory makes it.
    pub fn entered_by(self) -> Action {
        match self {
            Self::Active => Action::Reinstate,
            Self::Watchlisted => Action::Watchlist,
            Self::Restricted => Action::Restrict,
            Self::Suspended => Action::Suspend,
            // Both end the identity for good.
            Self::Revoked | Self::Decommissioned => Action::Revoke,
        }
    }

    /// Checks a transition; the error says why it is illegal.
    pub fn transition_to(self, target: State) -> Result<(), String> {
        if self == target {
            return Err(format!("the identity is already {self}"));
        }
        match (self, target) {
            (Self::Decommissioned, _) => {
                Err("the identity is decommissioned, which is final".to_owned())
            }
            (Self::Revoked, Self::Decommissioned) => Ok(()),
            (Self::Revoked, _) => Err(format!(
                "the identity is revoked, which cannot be undone; it can only be decommissioned, not made {target}"
            )),
            _ => Ok(()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn state() -> impl Strategy<Value = State> {
        proptest::sample::select(State::ALL.to_vec())
    }

    proptest! {
        /// Once revoked or decommissioned, no path leads back to a live state.
        #[test]
        fn irreversible_states_never_return_to_live(path in proptest::collection::vec(state(), 1..20)) {
            let mut current = State::Active;
            let mut ended = false;
            for next in path {
                if current.transition_to(next).is_ok() {
                    current = next;
                }
                if !current.is_reversible() {
                    ended = true;
                }
                prop_assert!(!(ended && LIVE.contains(&current)));
            }
        }
    }

    #[test]
    fn reversible_states_can_be_undone() {
        for from in [State::Watchlisted, State::Restricted, State::Suspended] {
            assert!(from.transition_to(State::Active).is_ok());
            assert!(from.transition_to(State::Revoked).is_ok());
        }
        assert!(State::Revoked.transition_to(State::Active).is_err());
        assert!(State::Revoked.transition_to(State::Decommissioned).is_ok());
        assert!(State::Decommissioned.transition_to(State::Revoked).is_err());
        assert!(State::Active.transition_to(State::Active).is_err());
    }
}
