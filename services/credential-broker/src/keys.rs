//! Private keys at rest: sealed under a key-encryption key (KEK).
//!
//! The broker never stores a CA or signing key in the clear. [`KeyEncryption`]
//! seals and opens them; [`LocalKek`] does it with AES-256-GCM under a
//! 32-byte key read from a file or the environment. A KMS or HSM plugs in
//! behind the same trait.
//!
//! A sealed key is `SKv1 | id length | KEK id | 96-bit nonce | ciphertext
//! and tag`. The additional data binds it to its purpose (for example
//! `ca/intermediate`), so a sealed key cannot be swapped for another. The
//! KEK id (a hash of the key, never the key itself) says which KEK sealed
//! it, so a wrong KEK is reported as such rather than as corruption.

use ring::aead::{AES_256_GCM, Aad, LessSafeKey, NONCE_LEN, Nonce, UnboundKey};
use ring::rand::{SecureRandom, SystemRandom};

/// Why a key could not be sealed or opened.
#[derive(Debug, thiserror::Error)]
pub enum KeyError {
    #[error("the key-encryption key must be 32 bytes written as 64 hex digits ({0})")]
    BadKek(String),
    #[error("cannot read the key-encryption key from {path}: {reason}")]
    Unreadable { path: String, reason: String },
    #[error(
        "the key was sealed with key-encryption key {sealed_with}, but {configured} is configured"
    )]
    WrongKek {
        sealed_with: String,
        configured: String,
    },
    #[error("the sealed key is corrupt or was altered")]
    Corrupt,
    #[error("no randomness available")]
    Random,
    #[error("{0}")]
    Missing(String),
}

/// Seals and opens private keys. Implementations never log what they seal.
pub trait KeyEncryption: Send + Sync + std::fmt::Debug {
    /// A stable id of the key-encryption key, stored with what it sealed.
    fn kek_id(&self) -> &str;
    /// Seals `plaintext` for `purpose`.
    fn seal(&self, purpose: &str, plaintext: &[u8]) -> Result<Vec<u8>, KeyError>;
    /// Opens what [`KeyEncryption::seal`] returned for the same `purpose`.
    fn open(&self, purpose: &str, sealed: &[u8]) -> Result<Vec<u8>, KeyError>;
}

const MAGIC: &[u8; 4] = b"SKv1";

/// AES-256-GCM under a local 32-byte key.
pub struct LocalKek {
    id: String,
    key: LessSafeKey,
    random: SystemRandom,
}

impl std::fmt::Debug for LocalKek {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LocalKek")
            .field("id", &self.id)
            .finish_non_exhaustive()
    }
}

impl LocalKek {
    /// A KEK from 64 hex digits (surrounding whitespace ignored).
    pub fn from_hex(text: &str) -> Result<Self, KeyError> {
        let text = text.trim();
        if text.len() != 64 {
            return Err(KeyError::BadKek(format!("{} characters", text.len())));
        }
        let mut bytes = [0u8; 32];
        for (i, byte) in bytes.iter_mut().enumerate() {
            *byte = text
                .get(2 * i..2 * i + 2)
                .and_then(|h| u8::from_str_radix(h, 16).ok())
                .ok_or_else(|| KeyError::BadKek("not hexadecimal".to_owned()))?;
        }
        Self::from_bytes(&bytes)
    }

    /// A KEK read from a file holding 64 hex digits.
    pub fn from_file(path: &std::path::Path) -> Result<Self, KeyError> {
        let text = std::fs::read_to_string(path).map_err(|e| KeyError::Unreadable {
            path: path.display().to_string(),
            reason: e.to_string(),
        })?;
        Self::from_hex(&text)
    }

    /// A new random KEK, and its hex form to store (`steward dev up`).
    pub fn generate() -> Result<(Self, String), KeyError> {
        let mut bytes = [0u8; 32];
        SystemRandom::new()
            .fill(&mut bytes)
            .map_err(|_| KeyError::Random)?;
        let hex: String = bytes.iter().map(|b| format!("{b:02x}")).collect();
        Ok((Self::from_bytes(&bytes)?, hex))
    }

    fn from_bytes(bytes: &[u8; 32]) -> Result<Self, KeyError> {
        let key = UnboundKey::new(&AES_256_GCM, bytes)
            .map_err(|_| KeyError::BadKek("rejected by AES-256-GCM".to_owned()))?;
        let digest = ring::digest::digest(
            &ring::digest::SHA256,
            &[b"steward kek id\0".as_slice(), bytes].concat(),
        );
        let id = digest.as_ref()[..8]
            .iter()
            .map(|b| format!("{b:02x}"))
            .collect();
        Ok(Self {
            id,
            key: LessSafeKey::new(key),
            random: SystemRandom::new(),
        })
    }
}

fn aad(purpose: &str) -> Vec<u8> {
    format!("steward/credential-broker/{purpose}").into_bytes()
}

impl KeyEncryption for LocalKek {
    fn kek_id(&self) -> &str {
        &self.id
    }

    fn seal(&self, purpose: &str, plaintext: &[u8]) -> Result<Vec<u8>, KeyError> {
        let mut nonce = [0u8; NONCE_LEN];
        self.random.fill(&mut nonce).map_err(|_| KeyError::Random)?;
        let mut body = plaintext.to_vec();
        self.key
            .seal_in_place_append_tag(
                Nonce::assume_unique_for_key(nonce),
                Aad::from(aad(purpose)),
                &mut body,
            )
            .map_err(|_| KeyError::Corrupt)?;
        let id = self.id.as_bytes();
        let mut out = Vec::with_capacity(MAGIC.len() + 1 + id.len() + NONCE_LEN + body.len());
        out.extend_from_slice(MAGIC);
        out.push(u8::try_from(id.len()).map_err(|_| KeyError::Corrupt)?);
        out.extend_from_slice(id);
        out.extend_from_slice(&nonce);
        out.extend_from_slice(&body);
        Ok(out)
    }

    fn open(&self, purpose: &str, sealed: &[u8]) -> Result<Vec<u8>, KeyError> {
        let rest = sealed.strip_prefix(MAGIC).ok_or(KeyError::Corrupt)?;
        let (&id_len, rest) = rest.split_first().ok_or(KeyError::Corrupt)?;
        let (id, rest) = rest
            .split_at_checked(usize::from(id_len))
            .ok_or(KeyError::Corrupt)?;
        if id != self.id.as_bytes() {
            return Err(KeyError::WrongKek {
                sealed_with: String::from_utf8_lossy(id).into_owned(),
                configured: self.id.clone(),
            });
        }
        let (nonce, body) = rest.split_at_checked(NONCE_LEN).ok_or(KeyError::Corrupt)?;
        let nonce = Nonce::try_assume_unique_for_key(nonce).map_err(|_| KeyError::Corrupt)?;
        let mut body = body.to_vec();
        let plain = self
            .key
            .open_in_place(nonce, Aad::from(aad(purpose)), &mut body)
            .map_err(|_| KeyError::Corrupt)?;
        Ok(plain.to_vec())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sealed_keys_open_only_with_their_kek_and_purpose() {
        let (kek, hex) = LocalKek::generate().unwrap();
        let sealed = kek.seal("ca/root", b"private key").unwrap();
        assert!(!sealed.windows(11).any(|w| w == b"private key"));
        assert_eq!(kek.open("ca/root", &sealed).unwrap(), b"private key");
        // The same KEK from its hex form opens it too.
        let again = LocalKek::from_hex(&format!("  {hex}\n")).unwrap();
        assert_eq!(again.kek_id(), kek.kek_id());
        assert_eq!(again.open("ca/root", &sealed).unwrap(), b"private key");

        assert!(matches!(
            kek.open("ca/intermediate", &sealed),
            Err(KeyError::Corrupt)
        ));
        let (other, _) = LocalKek::generate().unwrap();
        assert!(matches!(
            other.open("ca/root", &sealed),
            Err(KeyError::WrongKek { .. })
        ));
        for i in [0, 5, sealed.len() - 1] {
            let mut tampered = sealed.clone();
            tampered[i] ^= 1;
            assert!(kek.open("ca/root", &tampered).is_err(), "byte {i}");
        }
        assert!(kek.open("ca/root", &sealed[..10]).is_err());
    }

    #[test]
    fn bad_keks_are_refused_without_echoing_them() {
        for bad in ["", "abc", &"zz".repeat(32), &"00".repeat(31)] {
            let e = LocalKek::from_hex(bad).unwrap_err().to_string();
            assert!(bad.is_empty() || !e.contains(bad), "{e}");
        }
        let (kek, hex) = LocalKek::generate().unwrap();
        assert!(!format!("{kek:?}").contains(&hex));
    }
}
