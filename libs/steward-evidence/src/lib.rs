//! The evidence log's data and cryptography, shared by the audit service and
//! by offline verifiers (`steward audit verify`):
//!
//! - [`record`]: evidence records, their validation, and the canonical leaf
//!   encoding specified in `docs/evidence-encoding.md`;
//! - [`merkle`]: the RFC 6962 / RFC 9162 Merkle tree, proofs and verifiers;
//! - [`note`]: C2SP signed notes (Ed25519) and tlog-checkpoints.

pub mod clock;
pub mod merkle;
pub mod note;
pub mod record;
pub mod wire;

pub use merkle::{Hash, MerkleTree, leaf_hash};
pub use note::{Checkpoint, NoteSigner, NoteVerifier};
pub use record::{EvidenceRecord, FieldError, Trace};
