//! Ids that must not be mixed up: an identity's, a lease's, a decision's,
//! a grant's. Each is a UUID on the wire and in storage.

use std::fmt;

use steward_errors::Invalid;
use uuid::Uuid;

macro_rules! id {
    ($(#[$meta:meta])* $name:ident, $what:literal) => {
        $(#[$meta])*
        #[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
        pub struct $name(Uuid);

        impl $name {
            /// A new id: a UUIDv7, so ids sort by creation time.
            pub fn new() -> Self {
                Self(Uuid::now_v7())
            }

            /// The id in `field`, refused by name unless it is a UUID.
            pub fn parse(field: &str, text: &str) -> Result<Self, Invalid> {
                Uuid::try_parse(text).map(Self).map_err(|_| {
                    steward_errors::invalid(field, concat!("is not ", $what, " (UUID)"))
                })
            }

            pub fn uuid(&self) -> &Uuid {
                &self.0
            }
        }

        impl Default for $name {
            fn default() -> Self {
                Self::new()
            }
        }

        impl From<Uuid> for $name {
            fn from(id: Uuid) -> Self {
                Self(id)
            }
        }

        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                self.0.hyphenated().fmt(f)
            }
        }
    };
}

id!(
    /// An NHI in inventory.
    IdentityId,
    "an identity id"
);
id!(
    /// A credential's lease in the broker.
    LeaseId,
    "a lease id"
);
id!(
    /// One decision of authority's, and its evidence record.
    DecisionId,
    "a decision id"
);
id!(
    /// A grant from an approval or break-glass.
    GrantId,
    "a grant id"
);

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_id_reads_back_and_a_bad_one_is_refused_by_name() {
        let id = IdentityId::new();
        assert_eq!(IdentityId::parse("id", &id.to_string()), Ok(id));
        let refused = LeaseId::parse("lease_id", "lease-7").unwrap_err();
        assert_eq!(refused.to_string(), "lease_id: is not a lease id (UUID)");
        assert!(LeaseId::new() < LeaseId::new(), "v7 ids sort by creation");
    }
}
