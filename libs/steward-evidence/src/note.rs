//! C2SP `signed-note` with Ed25519 keys, and the C2SP `tlog-checkpoint`
//! body it carries.
//!
//! - Key ID: the first four bytes of `SHA-256(name ‖ "\n" ‖ 0x01 ‖ public key)`
//!   (0x01 is the Ed25519 signature type).
//! - Verifier key: `<name>+<key ID as 8 hex digits>+<base64(0x01 ‖ public key)>`.
//! - Note: the text (ending in a newline), a blank line, then one line per
//!   signature: `— <name> <base64(key ID ‖ signature)>`. The signature covers
//!   the text only.
//! - Checkpoint text: `<origin>\n<tree size>\n<base64 root hash>\n`, with
//!   optional extension lines after the third.

use base64::Engine;
use base64::engine::general_purpose::STANDARD as B64;
use ring::signature::{ED25519, Ed25519KeyPair, KeyPair, UnparsedPublicKey};
use sha2::{Digest, Sha256};

use crate::merkle::Hash;

/// The signature type byte of Ed25519 in signed notes.
const ALG_ED25519: u8 = 0x01;
/// The signature line prefix: an em dash and a space.
const SIG_PREFIX: &str = "\u{2014} ";

/// Why a key, note or checkpoint is unusable.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum NoteError {
    #[error(
        "invalid key name {0:?}: it must be non-empty and free of spaces, plus signs and newlines"
    )]
    BadName(String),
    #[error("invalid ed25519 private key (expected PKCS#8)")]
    BadPrivateKey,
    #[error("malformed verifier key: {0}")]
    BadVerifierKey(&'static str),
    #[error("malformed note: {0}")]
    Malformed(&'static str),
    #[error("no valid signature by {0}")]
    NotSigned(String),
    #[error("malformed checkpoint: {0}")]
    BadCheckpoint(&'static str),
}

fn key_id(name: &str, public_key: &[u8]) -> [u8; 4] {
    let mut h = Sha256::new();
    h.update(name.as_bytes());
    h.update(b"\n");
    h.update([ALG_ED25519]);
    h.update(public_key);
    let digest = h.finalize();
    [digest[0], digest[1], digest[2], digest[3]]
}

fn check_name(name: &str) -> Result<(), NoteError> {
    if name.is_empty() || name.contains([' ', '+', '\n', '\t']) {
        return Err(NoteError::BadName(name.to_owned()));
    }
    Ok(())
}

/// Signs notes with an Ed25519 key under a key name.
pub struct NoteSigner {
    name: String,
    key: Ed25519KeyPair,
    id: [u8; 4],
}

impl std::fmt::Debug for NoteSigner {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("NoteSigner")
            .field("name", &self.name)
            .finish_non_exhaustive()
    }
}

impl NoteSigner {
    /// A signer from a PKCS#8 (v1 or v2) Ed25519 private key.
    pub fn from_pkcs8(name: &str, pkcs8: &[u8]) -> Result<Self, NoteError> {
        check_name(name)?;
        let key = Ed25519KeyPair::from_pkcs8_maybe_unchecked(pkcs8)
            .map_err(|_| NoteError::BadPrivateKey)?;
        let id = key_id(name, key.public_key().as_ref());
        Ok(Self {
            name: name.to_owned(),
            key,
            id,
        })
    }

    /// A fresh PKCS#8 v2 Ed25519 private key.
    pub fn generate_pkcs8() -> Result<Vec<u8>, NoteError> {
        let rng = ring::rand::SystemRandom::new();
        Ed25519KeyPair::generate_pkcs8(&rng)
            .map(|doc| doc.as_ref().to_vec())
            .map_err(|_| NoteError::BadPrivateKey)
    }

    pub fn name(&self) -> &str {
        &self.name
    }

    /// The verifier key, `<name>+<hex key id>+<base64(0x01 ‖ public key)>`.
    pub fn verifier_key(&self) -> String {
        let mut key = vec![ALG_ED25519];
        key.extend_from_slice(self.key.public_key().as_ref());
        format!("{}+{}+{}", self.name, hex(&self.id), B64.encode(key))
    }

    /// Signs `text` (which must end with a newline) into a signed note.
    pub fn sign(&self, text: &str) -> Result<String, NoteError> {
        if !text.ends_with('\n') {
            return Err(NoteError::Malformed("note text must end with a newline"));
        }
        let signature = self.key.sign(text.as_bytes());
        let mut blob = self.id.to_vec();
        blob.extend_from_slice(signature.as_ref());
        Ok(format!(
            "{text}\n{SIG_PREFIX}{} {}\n",
            self.name,
            B64.encode(blob)
        ))
    }
}

/// A parsed verifier key.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NoteVerifier {
    name: String,
    id: [u8; 4],
    public_key: Vec<u8>,
}

impl NoteVerifier {
    /// Parses `<name>+<hex key id>+<base64(0x01 ‖ public key)>` and checks
    /// that the key id matches the key.
    pub fn parse(vkey: &str) -> Result<Self, NoteError> {
        let vkey = vkey.trim();
        let mut parts = vkey.splitn(3, '+');
        let (Some(name), Some(id_hex), Some(key_b64)) = (parts.next(), parts.next(), parts.next())
        else {
            return Err(NoteError::BadVerifierKey("expected name+keyid+key"));
        };
        check_name(name).map_err(|_| NoteError::BadVerifierKey("bad name"))?;
        let id =
            parse_hex4(id_hex).ok_or(NoteError::BadVerifierKey("key id is not 8 hex digits"))?;
        let key = B64
            .decode(key_b64)
            .map_err(|_| NoteError::BadVerifierKey("key is not base64"))?;
        let Some((&ALG_ED25519, public_key)) = key.split_first() else {
            return Err(NoteError::BadVerifierKey("not an ed25519 key"));
        };
        if public_key.len() != 32 {
            return Err(NoteError::BadVerifierKey("ed25519 key is not 32 bytes"));
        }
        if key_id(name, public_key) != id {
            return Err(NoteError::BadVerifierKey("key id does not match the key"));
        }
        Ok(Self {
            name: name.to_owned(),
            id,
            public_key: public_key.to_vec(),
        })
    }

    pub fn name(&self) -> &str {
        &self.name
    }

    /// Checks that `note` carries a valid signature by this key and returns
    /// the signed text.
    pub fn verify<'n>(&self, note: &'n str) -> Result<&'n str, NoteError> {
        let split = note
            .rfind("\n\n")
            .ok_or(NoteError::Malformed("no blank line before signatures"))?;
        let (text, sigs) = (&note[..split + 1], &note[split + 2..]);
        if !sigs.ends_with('\n') {
            return Err(NoteError::Malformed(
                "signature block must end with a newline",
            ));
        }
        let key = UnparsedPublicKey::new(&ED25519, &self.public_key);
        for line in sigs.lines() {
            let rest = line
                .strip_prefix(SIG_PREFIX)
                .ok_or(NoteError::Malformed("signature line lacks the em dash"))?;
            let (name, blob) = rest
                .split_once(' ')
                .ok_or(NoteError::Malformed("signature line lacks a name"))?;
            if name != self.name {
                continue;
            }
            let Ok(blob) = B64.decode(blob) else { continue };
            if blob.len() != 4 + 64 || blob[..4] != self.id {
                continue;
            }
            if key.verify(text.as_bytes(), &blob[4..]).is_ok() {
                return Ok(text);
            }
        }
        Err(NoteError::NotSigned(self.name.clone()))
    }
}

/// A tree head as a C2SP tlog-checkpoint.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Checkpoint {
    pub origin: String,
    pub tree_size: u64,
    pub root_hash: Hash,
}

impl Checkpoint {
    /// The note text: origin, decimal size, base64 root, each on its line.
    pub fn to_text(&self) -> String {
        format!(
            "{}\n{}\n{}\n",
            self.origin,
            self.tree_size,
            B64.encode(self.root_hash)
        )
    }

    /// Parses checkpoint text (extension lines are allowed and ignored).
    pub fn parse(text: &str) -> Result<Self, NoteError> {
        let mut lines = text.split('\n');
        let origin = lines
            .next()
            .filter(|o| !o.is_empty())
            .ok_or(NoteError::BadCheckpoint("missing origin"))?;
        let size = lines
            .next()
            .ok_or(NoteError::BadCheckpoint("missing tree size"))?;
        if size.is_empty()
            || (size.len() > 1 && size.starts_with('0'))
            || !size.bytes().all(|b| b.is_ascii_digit())
        {
            return Err(NoteError::BadCheckpoint(
                "tree size is not a canonical decimal",
            ));
        }
        let tree_size = size
            .parse()
            .map_err(|_| NoteError::BadCheckpoint("tree size overflows"))?;
        let root = lines
            .next()
            .ok_or(NoteError::BadCheckpoint("missing root hash"))?;
        let root_hash: Hash = B64
            .decode(root)
            .ok()
            .and_then(|r| r.try_into().ok())
            .ok_or(NoteError::BadCheckpoint("root hash is not 32 base64 bytes"))?;
        Ok(Self {
            origin: origin.to_owned(),
            tree_size,
            root_hash,
        })
    }
}

/// A PKCS#8 private key as PEM (`-----BEGIN PRIVATE KEY-----`).
pub fn private_key_pem(pkcs8: &[u8]) -> String {
    let body = B64.encode(pkcs8);
    let mut pem = String::from("-----BEGIN PRIVATE KEY-----\n");
    for chunk in body.as_bytes().chunks(64) {
        pem.push_str(&String::from_utf8_lossy(chunk));
        pem.push('\n');
    }
    pem.push_str("-----END PRIVATE KEY-----\n");
    pem
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

fn parse_hex4(s: &str) -> Option<[u8; 4]> {
    if s.len() != 8 {
        return None;
    }
    let mut out = [0u8; 4];
    for (i, byte) in out.iter_mut().enumerate() {
        *byte = u8::from_str_radix(s.get(2 * i..2 * i + 2)?, 16).ok()?;
    }
    Some(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn signer() -> NoteSigner {
        NoteSigner::from_pkcs8("steward.test/audit", &NoteSigner::generate_pkcs8().unwrap())
            .unwrap()
    }

    #[test]
    fn a_signed_checkpoint_verifies_with_the_published_key_and_round_trips() {
        let s = signer();
        let checkpoint = Checkpoint {
            origin: "steward.test/audit".into(),
            tree_size: 42,
            root_hash: [7; 32],
        };
        let note = s.sign(&checkpoint.to_text()).unwrap();
        assert!(note.contains("\n\n\u{2014} steward.test/audit "));
        let verifier = NoteVerifier::parse(&s.verifier_key()).unwrap();
        let text = verifier.verify(&note).unwrap();
        assert_eq!(Checkpoint::parse(text).unwrap(), checkpoint);
    }

    #[test]
    fn tampered_notes_and_foreign_keys_are_refused() {
        let s = signer();
        let note = s
            .sign("steward.test/audit\n1\nAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA=\n")
            .unwrap();
        let verifier = NoteVerifier::parse(&s.verifier_key()).unwrap();
        let tampered = note.replacen("\n1\n", "\n2\n", 1);
        assert!(verifier.verify(&tampered).is_err());
        let other = NoteVerifier::parse(&signer().verifier_key()).unwrap();
        assert!(other.verify(&note).is_err());
    }

    #[test]
    fn verifier_keys_with_a_wrong_key_id_are_refused() {
        let vkey = signer().verifier_key();
        let mut parts: Vec<&str> = vkey.split('+').collect();
        parts[1] = "00000000";
        assert!(NoteVerifier::parse(&parts.join("+")).is_err());
    }

    #[test]
    fn checkpoint_sizes_must_be_canonical_decimals() {
        let root = B64.encode([0u8; 32]);
        assert!(Checkpoint::parse(&format!("o\n01\n{root}\n")).is_err());
        assert!(Checkpoint::parse(&format!("o\n-1\n{root}\n")).is_err());
        assert!(Checkpoint::parse(&format!("o\n0\n{root}\n")).is_ok());
    }
}
