//! Steward's identity layer: SPIFFE IDs, X.509-SVIDs, and mutual TLS where
//! every peer is authenticated by its SPIFFE ID and every RPC is authorised
//! against an allowlist of SPIFFE IDs.
//!
//! - [`SpiffeId`] / [`TrustDomain`]: the SPIFFE ID specification, exactly.
//! - [`SvidSource`]: an SVID, key and bundle on disk, reloaded when they
//!   change; builds rustls server and client configurations.
//! - [`listener::incoming`]: accepts mTLS connections whose requests carry
//!   the peer's [`PeerIdentity`].
//! - [`connector::connect`]: tonic channels that verify the server's SPIFFE ID.
//! - [`AuthorizeCallerLayer`]: deny-by-default caller authorisation.
//! - [`jwt`]: ES256/RS256 tokens verified against a JWKS (OIDC bearer
//!   tokens for humans).

pub mod authz;
pub mod bundle;
pub mod connector;
pub mod jwt;
pub mod listener;
pub mod spiffe_id;
pub mod svid;
pub mod tls;

pub use authz::{AuthorizeCallerLayer, CallerAllowlist};
pub use listener::PeerIdentity;
pub use spiffe_id::{SpiffeId, SpiffeIdError, TrustDomain};
pub use svid::{SvidError, SvidPaths};
pub use tls::{ServerAuthorizer, SvidSource, TlsError};
