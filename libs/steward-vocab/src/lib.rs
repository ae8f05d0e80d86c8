//! The words every Steward service shares, so that a lifecycle state, an
//! action or an id means one thing from inventory through authority to the
//! broker: [`LifecycleState`] (with its state machine), [`Action`], the id
//! newtypes and [`UnixNanos`].

mod action;
mod ids;
mod lifecycle;
pub mod time;

pub use action::Action;
pub use ids::{DecisionId, GrantId, IdentityId, LeaseId};
pub use lifecycle::{LIVE, LifecycleState};
pub use time::UnixNanos;

/// Declares a closed set of names stored as short lowercase strings.
#[macro_export]
macro_rules! names {
    ($(#[$meta:meta])* $name:ident { $($variant:ident => $text:literal),+ $(,)? }) => {
        $(#[$meta])*
        #[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, ::serde::Serialize, ::serde::Deserialize)]
        #[serde(rename_all = "snake_case")]
        pub enum $name { $($variant),+ }

        impl $name {
            pub const ALL: &'static [$name] = &[$($name::$variant),+];

            /// The stored (and documented) name.
            pub fn as_str(self) -> &'static str {
                match self { $($name::$variant => $text),+ }
            }

            pub fn parse(text: &str) -> Option<Self> {
                match text { $($text => Some($name::$variant),)+ _ => None }
            }
        }

        impl std::fmt::Display for $name {
            fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str(self.as_str())
            }
        }
    };
}
