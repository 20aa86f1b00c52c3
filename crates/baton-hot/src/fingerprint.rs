//! Content fingerprints: what identifies a version of a module.

use std::fmt;

/// The BLAKE3 hash of a module file's bytes. Two saves of the same bytes
/// have the same fingerprint, so a `touch` or an identical save changes
/// nothing.
#[derive(Clone, Copy, PartialEq, Eq, Hash)]
pub struct Fingerprint([u8; 32]);

impl Fingerprint {
    /// Fingerprints `bytes`.
    pub fn of(bytes: &[u8]) -> Self {
        Self(*blake3::hash(bytes).as_bytes())
    }

    /// The whole hash, in hex.
    pub fn to_hex(&self) -> String {
        blake3::Hash::from_bytes(self.0).to_hex().to_string()
    }
}

/// The first 16 hex digits: enough to tell versions apart in a log.
impl fmt::Display for Fingerprint {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for b in &self.0[..8] {
            write!(f, "{b:02x}")?;
        }
        Ok(())
    }
}

impl fmt::Debug for Fingerprint {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Fingerprint({self})")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn same_bytes_same_fingerprint_and_short_display() {
        let a = Fingerprint::of(b"(component)");
        assert_eq!(a, Fingerprint::of(b"(component)"));
        assert_ne!(a, Fingerprint::of(b"(component) "));
        assert_eq!(a.to_string().len(), 16);
        assert!(a.to_hex().starts_with(&a.to_string()));
    }
}
