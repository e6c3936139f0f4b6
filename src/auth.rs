//! Bearer-key authentication and effective identities (`security.md` §1, §2, §4).
//!
//! [`KeyRing`] holds only SHA-256 digests of the configured keys and the internal proxy secret. Every presented token is
//! hashed and compared with every digest in constant time, so neither which key matched nor key lengths leak.

use sha2::{Digest, Sha256};
use subtle::{Choice, ConditionallySelectable, ConstantTimeEq};

/// User id of requests authenticated with the internal proxy secret (and no honoured original user).
pub const INTERNAL_PROXY_USER: &str = "internal-proxy";
/// Owner of `/`; an admin identity that no key can have.
pub const ROOT_USER: &str = "root";
/// Longest accepted user id, in bytes.
pub const MAX_USER_ID_BYTES: usize = 128;

/// Who presented a valid credential.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Principal {
    /// An API key; the user id it maps to.
    User(String),
    /// The internal proxy secret.
    InternalProxy,
}

/// The effective identity a request runs as.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Identity {
    /// Effective user id (stored as `owner`, logged as `user_id`).
    pub user_id: String,
    /// Bypasses every authorisation check (`root`, `internal-proxy`).
    pub is_admin: bool,
    /// Authenticated with the internal proxy secret.
    pub internal: bool,
    /// Instance id of the forwarding node (`X-CallFS-Proxied-By`), honoured only for internal requests.
    pub proxied_by: Option<String>,
}

type KeyDigest = [u8; 32];

/// The configured credentials, as digests. Built once at start.
pub struct KeyRing {
    users: Vec<(String, KeyDigest)>,
    internal: Option<KeyDigest>,
}

impl std::fmt::Debug for KeyRing {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Never print digests or ids of keys.
        f.debug_struct("KeyRing")
            .field("keys", &self.users.len())
            .field("internal_secret", &self.internal.is_some())
            .finish()
    }
}

fn digest(secret: &str) -> KeyDigest {
    Sha256::digest(secret.as_bytes()).into()
}

/// Why a header did not yield a principal (logged at debug level; never includes the token).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Failure {
    Missing,
    EmptyToken,
    UnknownKey,
}

impl Failure {
    fn as_str(self) -> &'static str {
        match self {
            Failure::Missing => "missing",
            Failure::EmptyToken => "empty token",
            Failure::UnknownKey => "unknown key",
        }
    }
}

impl KeyRing {
    /// `identities` are `(user id, key)` pairs (named and positional forms already merged); empty keys and an empty
    /// internal secret never match. Only SHA-256 digests are kept.
    pub fn new(identities: Vec<(String, String)>, internal_secret: &str) -> Self {
        let users =
            identities.into_iter().filter(|(_, key)| !key.is_empty()).map(|(user, key)| (user, digest(&key))).collect();
        let internal = (!internal_secret.is_empty()).then(|| digest(internal_secret));
        KeyRing { users, internal }
    }

    /// Number of configured API keys (not counting the internal secret).
    pub fn len(&self) -> usize {
        self.users.len()
    }

    /// True when no API key is configured.
    pub fn is_empty(&self) -> bool {
        self.users.is_empty()
    }

    /// Authenticates an `Authorization` header value (`security.md` §1.1). `None` means 401.
    pub fn authenticate(&self, authorization_header: Option<&str>) -> Option<Principal> {
        match self.check(authorization_header) {
            Ok(principal) => Some(principal),
            Err(failure) => {
                log::debug!(reason = failure.as_str(); "authentication failed");
                None
            }
        }
    }

    fn check(&self, header: Option<&str>) -> Result<Principal, Failure> {
        let value = header.map(str::trim).unwrap_or("");
        if value.is_empty() {
            return Err(Failure::Missing);
        }
        let token = extract_token(value);
        if token.is_empty() {
            return Err(Failure::EmptyToken);
        }
        let presented = digest(token);

        // Compare with every digest, always all of them, without data-dependent branches.
        let mut matched = Choice::from(0);
        let mut index: u64 = 0;
        for (i, (_, key)) in self.users.iter().enumerate() {
            let eq = key.ct_eq(&presented);
            index.conditional_assign(&(i as u64), eq);
            matched |= eq;
        }
        let internal = match &self.internal {
            Some(secret) => secret.ct_eq(&presented),
            None => Choice::from(0),
        };

        if bool::from(internal) {
            return Ok(Principal::InternalProxy);
        }
        if bool::from(matched) {
            let user = usize::try_from(index)
                .ok()
                .and_then(|i| self.users.get(i))
                .map(|(user, _)| user.clone())
                .ok_or(Failure::UnknownKey)?;
            return Ok(Principal::User(user));
        }
        Err(Failure::UnknownKey)
    }
}

/// Steps 2 of §1.1: `Bearer` (any case) followed by at least one space → the trimmed remainder; otherwise the whole value.
fn extract_token(value: &str) -> &str {
    const SCHEME: &str = "bearer ";
    match value.get(..SCHEME.len()) {
        Some(prefix) if prefix.eq_ignore_ascii_case(SCHEME) => value[SCHEME.len()..].trim(),
        _ => value,
    }
}

/// A syntactically valid user id: non-blank, at most 128 bytes, no whitespace or control characters.
pub fn is_valid_user_id(id: &str) -> bool {
    !id.is_empty() && id.len() <= MAX_USER_ID_BYTES && !id.chars().any(|c| c.is_whitespace() || c.is_control())
}

/// A valid instance id (`^[A-Za-z0-9._-]{1,100}$`, `config.md` rule 27).
fn is_valid_instance_id(id: &str) -> bool {
    (1..=100).contains(&id.len()) && id.bytes().all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-'))
}

fn is_admin_id(id: &str) -> bool {
    id == ROOT_USER || id == INTERNAL_PROXY_USER
}

/// Effective identity (`security.md` §4).
///
/// * `Principal::InternalProxy`: a valid `X-CallFS-Original-User` (trimmed; see [`is_valid_user_id`]; `root` is never
///   accepted since no client can be root) becomes the user id, with that user's privileges; otherwise the request acts
///   as `internal-proxy` (admin). A valid `X-CallFS-Proxied-By` (trimmed instance id) is kept.
/// * `Principal::User`: both headers are ignored.
pub fn resolve_identity(p: Principal, original_user: Option<&str>, proxied_by: Option<&str>) -> Identity {
    match p {
        Principal::User(user_id) => {
            Identity { is_admin: is_admin_id(&user_id), user_id, internal: false, proxied_by: None }
        }
        Principal::InternalProxy => {
            let original = original_user.map(str::trim).filter(|u| is_valid_user_id(u) && *u != ROOT_USER);
            let user_id = original.unwrap_or(INTERNAL_PROXY_USER).to_owned();
            let proxied_by = proxied_by.map(str::trim).filter(|v| is_valid_instance_id(v)).map(str::to_owned);
            Identity { is_admin: is_admin_id(&user_id), user_id, internal: true, proxied_by }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const ALICE_KEY: &str = "alice-key-0123456789";
    const BOB_KEY: &str = "bob-key-abcdefghijkl";
    const SECRET: &str = "internal-secret-xyz-123";

    fn ring() -> KeyRing {
        KeyRing::new(
            vec![
                ("alice".to_owned(), ALICE_KEY.to_owned()),
                ("bob".to_owned(), BOB_KEY.to_owned()),
                ("api-user-0".to_owned(), "positional-key-0000".to_owned()),
            ],
            SECRET,
        )
    }

    fn user(id: &str) -> Option<Principal> {
        Some(Principal::User(id.to_owned()))
    }

    #[test]
    fn bearer_scheme() {
        let r = ring();
        assert_eq!(r.authenticate(Some(&format!("Bearer {ALICE_KEY}"))), user("alice"));
        assert_eq!(r.authenticate(Some(&format!("Bearer {BOB_KEY}"))), user("bob"));
        assert_eq!(r.authenticate(Some("Bearer positional-key-0000")), user("api-user-0"));
    }

    #[test]
    fn scheme_is_case_insensitive_and_spaces_trimmed() {
        let r = ring();
        for h in [
            format!("bearer {ALICE_KEY}"),
            format!("BEARER {ALICE_KEY}"),
            format!("BeArEr    {ALICE_KEY}   "),
            format!("  Bearer {ALICE_KEY}"),
            format!("Bearer {ALICE_KEY}\t"),
        ] {
            assert_eq!(r.authenticate(Some(&h)), user("alice"), "{h:?}");
        }
    }

    #[test]
    fn bare_key_accepted() {
        let r = ring();
        assert_eq!(r.authenticate(Some(ALICE_KEY)), user("alice"));
        assert_eq!(r.authenticate(Some(&format!("  {BOB_KEY} "))), user("bob"));
    }

    #[test]
    fn missing_or_empty_rejected() {
        let r = ring();
        assert_eq!(r.authenticate(None), None);
        assert_eq!(r.authenticate(Some("")), None);
        assert_eq!(r.authenticate(Some("   ")), None);
        assert_eq!(r.authenticate(Some("Bearer ")), None);
        assert_eq!(r.authenticate(Some("Bearer    ")), None);
        assert_eq!(r.authenticate(Some("Bearer")), None);
    }

    #[test]
    fn unknown_and_near_miss_keys_rejected() {
        let r = ring();
        assert_eq!(r.authenticate(Some("Bearer nope-nope-nope-nope")), None);
        assert_eq!(r.authenticate(Some(&format!("Bearer {ALICE_KEY}x"))), None);
        assert_eq!(r.authenticate(Some(&ALICE_KEY[1..])), None);
        assert_eq!(r.authenticate(Some(&format!("Bearer {}", ALICE_KEY.to_uppercase()))), None);
        // Another scheme is not stripped: the whole value is the token.
        assert_eq!(r.authenticate(Some(&format!("Basic {ALICE_KEY}"))), None);
        // Only a space separates the scheme.
        assert_eq!(r.authenticate(Some(&format!("Bearer\t{ALICE_KEY}"))), None);
        assert_eq!(r.authenticate(Some(&format!("Bearer{ALICE_KEY}"))), None);
    }

    #[test]
    fn internal_secret() {
        let r = ring();
        assert_eq!(r.authenticate(Some(&format!("Bearer {SECRET}"))), Some(Principal::InternalProxy));
        assert_eq!(r.authenticate(Some(SECRET)), Some(Principal::InternalProxy));
    }

    #[test]
    fn empty_secrets_never_match() {
        let r = KeyRing::new(vec![("x".to_owned(), String::new())], "");
        assert!(r.is_empty());
        assert_eq!(r.authenticate(Some("Bearer ")), None);
        assert_eq!(r.authenticate(Some("anything-at-all-here")), None);
    }

    #[test]
    fn only_digests_are_stored() {
        let r = ring();
        assert_eq!(r.len(), 3);
        assert_eq!(r.users[0].1, digest(ALICE_KEY));
        assert_eq!(r.internal, Some(digest(SECRET)));
        let debug = format!("{r:?}");
        assert!(!debug.contains(ALICE_KEY));
        assert!(!debug.contains("alice"));
        assert!(!debug.contains(SECRET));
    }

    #[test]
    fn last_key_in_ring_is_found() {
        // No early exit must not mean "first match wins" bugs for later entries.
        let ids: Vec<(String, String)> =
            (0..50).map(|i| (format!("u{i}"), format!("key-number-{i:04}-padding"))).collect();
        let r = KeyRing::new(ids, SECRET);
        assert_eq!(r.authenticate(Some("key-number-0049-padding")), user("u49"));
        assert_eq!(r.authenticate(Some("key-number-0000-padding")), user("u0"));
        assert_eq!(r.authenticate(Some("key-number-0023-padding")), user("u23"));
    }

    #[test]
    fn user_principal_ignores_proxy_headers() {
        let id = resolve_identity(Principal::User("alice".into()), Some("bob"), Some("node-2"));
        assert_eq!(id, Identity { user_id: "alice".into(), is_admin: false, internal: false, proxied_by: None });
    }

    #[test]
    fn internal_without_original_user_is_admin() {
        let id = resolve_identity(Principal::InternalProxy, None, None);
        assert_eq!(id.user_id, "internal-proxy");
        assert!(id.is_admin);
        assert!(id.internal);
        assert_eq!(id.proxied_by, None);
    }

    #[test]
    fn internal_with_original_user_runs_as_that_user() {
        let id = resolve_identity(Principal::InternalProxy, Some("alice"), Some("node-1"));
        assert_eq!(id.user_id, "alice");
        assert!(!id.is_admin);
        assert!(id.internal);
        assert_eq!(id.proxied_by.as_deref(), Some("node-1"));
        let id = resolve_identity(Principal::InternalProxy, Some(" api-user-3 "), None);
        assert_eq!(id.user_id, "api-user-3");
        assert!(!id.is_admin);
    }

    #[test]
    fn invalid_original_user_falls_back_to_internal_proxy() {
        for bad in ["", "   ", "a b", "a\nb", "x\u{7f}", "root"] {
            let id = resolve_identity(Principal::InternalProxy, Some(bad), None);
            assert_eq!(id.user_id, "internal-proxy", "{bad:?}");
            assert!(id.is_admin);
        }
        let long = "u".repeat(129);
        let id = resolve_identity(Principal::InternalProxy, Some(&long), None);
        assert_eq!(id.user_id, "internal-proxy");
        let ok = "u".repeat(128);
        let id = resolve_identity(Principal::InternalProxy, Some(&ok), None);
        assert_eq!(id.user_id, ok);
    }

    #[test]
    fn forwarded_internal_proxy_stays_admin() {
        let id = resolve_identity(Principal::InternalProxy, Some("internal-proxy"), Some("n1"));
        assert_eq!(id.user_id, "internal-proxy");
        assert!(id.is_admin);
    }

    #[test]
    fn proxied_by_validation() {
        for (raw, want) in [
            (" node-2 ", Some("node-2")),
            ("callfs-instance-1", Some("callfs-instance-1")),
            ("", None),
            ("bad id", None),
            ("x\r\ny", None),
        ] {
            let id = resolve_identity(Principal::InternalProxy, None, Some(raw));
            assert_eq!(id.proxied_by.as_deref(), want, "{raw:?}");
        }
        let id = resolve_identity(Principal::InternalProxy, None, Some(&"n".repeat(101)));
        assert_eq!(id.proxied_by, None);
    }

    #[test]
    fn root_user_is_admin() {
        let id = resolve_identity(Principal::User("root".into()), None, None);
        assert!(id.is_admin);
        assert!(!id.internal);
    }

    #[test]
    fn user_id_validation() {
        assert!(is_valid_user_id("alice"));
        assert!(is_valid_user_id("api-user-0"));
        assert!(is_valid_user_id("ünïcode"));
        assert!(!is_valid_user_id(""));
        assert!(!is_valid_user_id("a\tb"));
        assert!(!is_valid_user_id("a\u{0}"));
        assert!(!is_valid_user_id(&"x".repeat(129)));
    }
}
