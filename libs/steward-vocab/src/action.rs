//! What a principal may be allowed to do: the actions of authority's Cedar
//! schema, which the broker asks for and inventory's gate names.

crate::names!(
    /// One action of the policy schema.
    Action {
        Issue => "issue",
        Renew => "renew",
        Rotate => "rotate",
        Revoke => "revoke",
        Suspend => "suspend",
        Restrict => "restrict",
        Watchlist => "watchlist",
        Elevate => "elevate",
        Approve => "approve",
        BreakGlass => "break_glass",
        Attest => "attest",
        Reinstate => "reinstate",
        CloseIncident => "close_incident",
        ManagePolicy => "manage_policy",
        ActFor => "act_for",
        RotateCa => "rotate_ca",
    }
);

impl Action {
    /// The actions whose resource is an NHI: the ones `Authorize` decides
    /// about an identity, in the order the API lists them.
    pub const ON_IDENTITIES: &'static [Action] = &[
        Action::Issue,
        Action::Renew,
        Action::Rotate,
        Action::Revoke,
        Action::Suspend,
        Action::Restrict,
        Action::Watchlist,
        Action::Elevate,
        Action::Approve,
        Action::BreakGlass,
        Action::Attest,
        Action::Reinstate,
    ];

    /// Whether this action's resource is an NHI.
    pub fn is_on_identity(self) -> bool {
        Self::ON_IDENTITIES.contains(&self)
    }

    /// The action that parses from `text` and is about an NHI.
    pub fn on_identity(text: &str) -> Option<Self> {
        Self::parse(text).filter(|a| a.is_on_identity())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_action_reads_back_from_its_name() {
        for action in Action::ALL {
            assert_eq!(Action::parse(action.as_str()), Some(*action));
        }
        assert_eq!(Action::parse("Issue"), None);
        assert_eq!(Action::on_identity("rotate_ca"), None);
        assert_eq!(Action::on_identity("rotate"), Some(Action::Rotate));
        let others: Vec<_> = Action::ALL.iter().filter(|a| !a.is_on_identity()).collect();
        assert_eq!(others.len(), 4);
    }
}
