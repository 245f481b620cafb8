//! Types that keep secret material out of logs, errors and `Debug` output.
//!
//! Anything that is a credential (a subject token, an issued token, a secret value) is held in a
//! [`SecretString`] from the moment it enters the process. Its `Debug`/`Display` print neither
//! the value nor a fingerprint of it (a short unsalted hash of a weak secret value can be tested
//! against guesses offline): a caller that wants to name a token (random and signed, nothing to
//! guess) asks for [`SecretString::fingerprint`] explicitly. Its memory is zeroed on drop.

use std::fmt;
use zeroize::Zeroize;

/// Short, stable SHA-256 fingerprint for correlating a credential across logs and audit without
/// revealing it: `sha256:` followed by the first 16 hex digits (64 bits) of the digest.
pub fn fingerprint(bytes: &[u8]) -> String {
    fingerprint_of_sha256(&crate::crypto::sha256(bytes))
}

/// The fingerprint of bytes whose SHA-256 is `digest` (for a caller that hashed them anyway).
pub fn fingerprint_of_sha256(digest: &[u8]) -> String {
    format!("sha256:{}", hex::encode(&digest[..8]))
}

/// A secret string: zeroized on drop, never printed.
#[derive(Clone, Default, PartialEq, Eq)]
pub struct SecretString(String);

impl SecretString {
    pub fn new(value: String) -> Self {
        Self(value)
    }

    /// The secret itself. Call sites are few and deliberate: signing, verification, the response body.
    pub fn expose(&self) -> &str {
        self.0.as_str()
    }

    pub fn len(&self) -> usize {
        self.0.len()
    }

    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    pub fn fingerprint(&self) -> String {
        fingerprint(self.0.as_bytes())
    }
}

impl Drop for SecretString {
    fn drop(&mut self) {
        zero(&mut std::mem::take(&mut self.0).into_bytes());
    }
}

/// Zeroes all of `bytes`' buffer, its spare capacity too. In bulk: `zeroize` zeroes a `Vec` (so
/// a `Zeroizing<String>`) one volatile byte write at a time, a cost per request for a subject
/// token of a kilobyte or two; a slice it zeroes with one fill that an optimization barrier keeps
/// the compiler from removing.
fn zero(bytes: &mut Vec<u8>) {
    bytes.as_mut_slice().zeroize();
    bytes.spare_capacity_mut().zeroize();
}

impl From<String> for SecretString {
    fn from(value: String) -> Self {
        Self::new(value)
    }
}

impl fmt::Debug for SecretString {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("SecretString([REDACTED])")
    }
}

impl fmt::Display for SecretString {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("[REDACTED]")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn debug_and_display_show_neither_the_value_nor_its_fingerprint() {
        let s = SecretString::new("hunter2-very-secret".into());
        let shown = format!("{s:?} {s} {:?} {:#?}", Some(&s), s);
        assert!(!shown.contains("hunter2"), "{shown}");
        let digest = hex::encode(crate::crypto::sha256(b"hunter2-very-secret"));
        assert!(
            !shown.contains(&digest[..8]),
            "a fingerprint of the value is shown: {shown}"
        );
        assert_eq!(format!("{s}"), "[REDACTED]");
    }

    #[test]
    fn zero_clears_the_whole_buffer_spare_capacity_too() {
        let mut bytes = Vec::with_capacity(100);
        bytes.extend_from_slice(&[0xbb; 100]);
        bytes.truncate(37);
        zero(&mut bytes);
        assert_eq!((bytes.len(), bytes.capacity()), (37, 100));
        assert!(bytes.iter().all(|&b| b == 0));
        // SAFETY: every byte of the spare capacity was written (0xbb, then zero).
        assert!(
            bytes
                .spare_capacity_mut()
                .iter()
                .all(|b| unsafe { b.assume_init() } == 0)
        );
    }

    #[test]
    fn fingerprint_is_stable_and_short() {
        assert_eq!(fingerprint(b"abc"), "sha256:ba7816bf8f01cfea");
        assert_eq!(fingerprint(b"abc"), fingerprint(b"abc"));
        assert_ne!(fingerprint(b"abc"), fingerprint(b"abd"));
    }
}
