//! Single-use link tokens (security.md §5): `id.sig`, HMAC-SHA256 over the id and the path.

use base64::engine::general_purpose::URL_SAFE;
use base64::Engine;
use hmac::{Hmac, Mac};
use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;

type HmacSha256 = Hmac<Sha256>;

/// The HMAC key: SHA-256 of the configured link secret.
#[derive(Clone)]
pub struct LinkKey([u8; 32]);

impl LinkKey {
    pub fn new(secret: &str) -> Self {
        Self(Sha256::digest(secret.as_bytes()).into())
    }

    fn sign(&self, id: &str, path: &str) -> String {
        // An HMAC accepts keys of any length, so this cannot fail.
        let mut mac = HmacSha256::new_from_slice(&self.0).expect("HMAC key of any length");
        mac.update(id.as_bytes());
        mac.update(path.as_bytes());
        URL_SAFE.encode(mac.finalize().into_bytes())
    }

    /// A new token for `path`: (token, signature).
    pub fn issue(&self, path: &str) -> (String, String) {
        let id = URL_SAFE.encode(rand::random::<[u8; 16]>());
        let sig = self.sign(&id, path);
        (format!("{id}.{sig}"), sig)
    }

    /// Recomputes the signature over the token's id and the stored path, in constant time.
    pub fn verify(&self, token: &str, path: &str) -> bool {
        let Some((id, sig)) = token.split_once('.') else { return false };
        let expected = self.sign(id, path);
        expected.as_bytes().ct_eq(sig.as_bytes()).into()
    }
}

/// `filename*=UTF-8''<name>` with every byte outside RFC 5987 attr-char percent-encoded.
pub fn content_disposition(path: &str) -> String {
    let name = path.rsplit('/').next().unwrap_or("");
    let mut encoded = String::with_capacity(name.len());
    for byte in name.bytes() {
        if byte.is_ascii_alphanumeric() || b"!#$&+-.^_`|~".contains(&byte) {
            encoded.push(byte as char);
        } else {
            encoded.push_str(&format!("%{byte:02X}"));
        }
    }
    format!("attachment; filename*=UTF-8''{encoded}")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tokens_are_path_bound() {
        let key = LinkKey::new("link-secret-0123456789");
        let (token, sig) = key.issue("/a.txt");
        let (id, _) = token.split_once('.').unwrap();
        assert_eq!(id.len(), 24);
        assert_eq!(sig.len(), 44);
        assert!(key.verify(&token, "/a.txt"));
        assert!(!key.verify(&token, "/b.txt"));
        assert!(!LinkKey::new("another-secret-0123456").verify(&token, "/a.txt"));
        assert!(!key.verify("no-dot", "/a.txt"));
    }

    #[test]
    fn disposition_encodes_outside_attr_chars() {
        assert_eq!(content_disposition("/d/report 1.pdf"), "attachment; filename*=UTF-8''report%201.pdf");
        assert_eq!(content_disposition("/ü.txt"), "attachment; filename*=UTF-8''%C3%BC.txt");
    }
}
