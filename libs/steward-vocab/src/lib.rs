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

/// A closed set of names declared with [`names!`], for code that works on
/// any of them (a wire enum's filter, a stored column).
pub trait Named: Copy + Sized + 'static {
    /// Every name, in declaration order.
    const ALL: &'static [Self];
    /// The stored (and documented) name.
    fn as_str(self) -> &'static str;
    /// The value a stored name stands for.
    fn parse(text: &str) -> Option<Self>;
}

/// Declares a closed set of names stored as short lowercase strings; or,
/// with `Variant = code => "name"`, stored as a small integer code and
/// named by the string in evidence and logs (`code`, `from_code`).
#[macro_export]
macro_rules! names {
    ($(#[$meta:meta])* $name:ident { $($(#[$vmeta:meta])* $variant:ident = $code:literal => $text:literal),+ $(,)? }) => {
        $(#[$meta])*
        #[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, ::serde::Serialize, ::serde::Deserialize)]
        #[serde(rename_all = "snake_case")]
        pub enum $name { $($(#[$vmeta])* $variant = $code),+ }

        $crate::names!(@named $name { $($variant => $text),+ });

        impl $name {
            /// The stored code.
            pub fn code(self) -> i64 {
                self as i64
            }

            /// The name a stored code stands for; `None` for a code no
            /// version wrote (a corrupt row).
            pub fn from_code(code: i64) -> Option<Self> {
                match code { $($code => Some($name::$variant),)+ _ => None }
            }
        }
    };
    ($(#[$meta:meta])* $name:ident { $($(#[$vmeta:meta])* $variant:ident => $text:literal),+ $(,)? }) => {
        $(#[$meta])*
        #[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, ::serde::Serialize, ::serde::Deserialize)]
        #[serde(rename_all = "snake_case")]
        pub enum $name { $($(#[$vmeta])* $variant),+ }

        $crate::names!(@named $name { $($variant => $text),+ });
    };
    (@named $name:ident { $($variant:ident => $text:literal),+ }) => {
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

        impl $crate::Named for $name {
            const ALL: &'static [$name] = $name::ALL;

            fn as_str(self) -> &'static str {
                $name::as_str(self)
            }

            fn parse(text: &str) -> Option<Self> {
                $name::parse(text)
            }
        }

        impl std::fmt::Display for $name {
            fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str(self.as_str())
            }
        }
    };
}
