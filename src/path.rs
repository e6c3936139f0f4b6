//! The canonical path parser (`api.md` §4).
//!
//! Every logical path that enters the node — the `{path}` part of a URL, the `path` of link generation, the `destination`
//! and `name` of PATCH — goes through this module before anything else sees it. Downstream code only ever handles a
//! [`CanonicalPath`], which cannot escape the namespace, contains no forbidden character and respects the length limits.

use std::fmt;

/// Longest allowed path segment, in UTF-8 bytes.
pub const MAX_SEGMENT_BYTES: usize = 255;
/// Longest allowed canonical path, in UTF-8 bytes (including the leading `/`).
pub const MAX_PATH_BYTES: usize = 4096;
/// Segments starting with this prefix are reserved for in-flight writes.
pub const RESERVED_PREFIX: &str = ".callfs-tmp-";

/// A canonical logical path: starts with `/`, no empty, `.` or `..` segments, no trailing `/` (except the root `/`).
///
/// Only this module constructs values, so holding one proves the path passed every rule of `api.md` §4.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct CanonicalPath(String);

/// The result of parsing a request path.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ParsedPath {
    /// The canonical path.
    pub path: CanonicalPath,
    /// The (decoded) input was empty or ended with `/` — taken before canonicalisation.
    pub directory_form: bool,
}

/// Why a path was rejected; every variant maps to `400 BAD_REQUEST`.
#[derive(Debug, thiserror::Error, PartialEq, Eq, Clone, Copy)]
pub enum PathError {
    /// A `..` segment with nothing left to remove.
    #[error("path escapes the root")]
    EscapesRoot,
    /// A `..` segment that only exists because of percent-decoding (see [`parse_url_path`]).
    #[error("percent-encoded parent-directory segment")]
    EncodedTraversal,
    /// A `%` not followed by two hex digits.
    #[error("invalid percent-encoding")]
    InvalidPercentEncoding,
    /// The decoded bytes are not UTF-8.
    #[error("path is not valid UTF-8")]
    InvalidUtf8,
    /// NUL, a control character other than TAB, DEL, `\` or a bidirectional override.
    #[error("path contains a forbidden character")]
    ForbiddenCharacter,
    /// A segment over [`MAX_SEGMENT_BYTES`].
    #[error("path segment longer than 255 bytes")]
    SegmentTooLong,
    /// A canonical path over [`MAX_PATH_BYTES`].
    #[error("path longer than 4096 bytes")]
    PathTooLong,
    /// A segment starting with [`RESERVED_PREFIX`].
    #[error("reserved name")]
    ReservedName,
    /// A PATCH `name` that is empty, contains `/`, or is `.` or `..`.
    #[error("name must be a single path segment other than \".\" and \"..\"")]
    InvalidName,
}

impl CanonicalPath {
    /// The root directory `/`.
    pub fn root() -> Self {
        CanonicalPath("/".to_owned())
    }

    /// The canonical string, e.g. `/a/b`.
    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// Consumes the path, returning the canonical string.
    pub fn into_string(self) -> String {
        self.0
    }

    /// True for `/`.
    pub fn is_root(&self) -> bool {
        self.0 == "/"
    }

    /// The parent directory; `None` for the root.
    pub fn parent(&self) -> Option<CanonicalPath> {
        if self.is_root() {
            return None;
        }
        match self.0.rfind('/') {
            Some(0) | None => Some(Self::root()),
            Some(idx) => Some(CanonicalPath(self.0[..idx].to_owned())),
        }
    }

    /// The last segment; `/` for the root.
    pub fn name(&self) -> &str {
        if self.is_root() {
            return "/";
        }
        match self.0.rfind('/') {
            Some(idx) => &self.0[idx + 1..],
            None => &self.0,
        }
    }

    /// Appends one segment. The segment must already be valid ([`validate_segment`]); use [`CanonicalPath::join_checked`]
    /// for untrusted input, which also enforces the total length limit.
    pub fn join(&self, segment: &str) -> CanonicalPath {
        debug_assert!(validate_segment(segment).is_ok(), "join with an invalid segment");
        if self.is_root() {
            CanonicalPath(format!("/{segment}"))
        } else {
            CanonicalPath(format!("{}/{segment}", self.0))
        }
    }

    /// Appends one untrusted segment: [`validate_segment`] plus the canonical length limit.
    pub fn join_checked(&self, segment: &str) -> Result<CanonicalPath, PathError> {
        validate_segment(segment)?;
        let joined = self.join(segment);
        if joined.0.len() > MAX_PATH_BYTES {
            return Err(PathError::PathTooLong);
        }
        Ok(joined)
    }

    /// Every proper ancestor, from the root down: `/a/b/c` → `["/", "/a", "/a/b"]`; empty for the root.
    pub fn ancestors(&self) -> Vec<CanonicalPath> {
        let mut out = Vec::new();
        let mut current = self.parent();
        while let Some(p) = current {
            current = p.parent();
            out.push(p);
        }
        out.reverse();
        out
    }

    /// True when `self` is `other` or lies below it.
    pub fn is_within(&self, other: &CanonicalPath) -> bool {
        if other.is_root() || self.0 == other.0 {
            return true;
        }
        self.0.len() > other.0.len() && self.0.starts_with(other.0.as_str()) && self.0.as_bytes()[other.0.len()] == b'/'
    }

    /// The segments in order; nothing for the root.
    pub fn segments(&self) -> impl Iterator<Item = &str> {
        self.0.split('/').filter(|s| !s.is_empty())
    }
}

impl fmt::Display for CanonicalPath {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl AsRef<str> for CanonicalPath {
    fn as_ref(&self) -> &str {
        &self.0
    }
}

/// Parses the `{path}` part of a URL exactly as sent on the wire (may start with `/` or be empty):
/// percent-decoded exactly once, then the rules of `api.md` §4.
///
/// One addition reconciles the algorithm with the table of `api.md` §4, which rejects
/// `test%20..%2F..%2Fetc%2Fpasswd` (plain canonicalisation would give `/etc/passwd`): a `..` segment that percent-decoding
/// created — one of its dots or one of its two delimiting slashes was escaped (`%2E`, `%2F`) — is a traversal attempt and
/// is rejected ([`PathError::EncodedTraversal`]) even when it would stay inside the root. Literal `..` segments are
/// resolved as the algorithm says, and encoded `.` segments are dropped.
pub fn parse_url_path(raw: &str) -> Result<ParsedPath, PathError> {
    let (bytes, escaped) = percent_decode_strict(raw)?;
    let decoded = String::from_utf8(bytes).map_err(|_| PathError::InvalidUtf8)?;
    parse_decoded(&decoded, &escaped)
}

/// Parses a path carried in a JSON body (no percent-decoding; a missing leading `/` is fine).
pub fn parse_json_path(s: &str) -> Result<ParsedPath, PathError> {
    parse_decoded(s, &[])
}

/// Validates a PATCH `name`: one segment (non-empty, no `/`, not `.` or `..`) obeying the character, length and reserved
/// name rules of `api.md` §4.
pub fn validate_segment(name: &str) -> Result<(), PathError> {
    if name.is_empty() || name == "." || name == ".." || name.contains('/') {
        return Err(PathError::InvalidName);
    }
    if name.chars().any(is_forbidden) {
        return Err(PathError::ForbiddenCharacter);
    }
    check_segment(name)
}

fn check_segment(segment: &str) -> Result<(), PathError> {
    if segment.len() > MAX_SEGMENT_BYTES {
        return Err(PathError::SegmentTooLong);
    }
    if segment.starts_with(RESERVED_PREFIX) {
        return Err(PathError::ReservedName);
    }
    Ok(())
}

/// NUL, controls U+0001–U+001F except TAB, DEL, backslash and the bidi overrides U+202A–U+202E, U+2066–U+2069.
fn is_forbidden(c: char) -> bool {
    matches!(c,
        '\u{0}'..='\u{8}' | '\u{a}'..='\u{1f}' | '\u{7f}' | '\\'
        | '\u{202a}'..='\u{202e}' | '\u{2066}'..='\u{2069}')
}

/// `escaped[i]` tells whether byte `i` of `decoded` came from a percent-escape (empty: none did).
fn parse_decoded(decoded: &str, escaped: &[bool]) -> Result<ParsedPath, PathError> {
    // Step 2: directory form, before canonicalisation.
    let directory_form = decoded.is_empty() || decoded.ends_with('/');
    // Step 3: forbidden characters anywhere.
    if decoded.chars().any(is_forbidden) {
        return Err(PathError::ForbiddenCharacter);
    }
    // Step 4: canonicalise.
    let was_escaped = |i: usize| escaped.get(i).copied().unwrap_or(false);
    let mut kept: Vec<&str> = Vec::new();
    let mut start = 0usize;
    for segment in decoded.split('/') {
        let end = start + segment.len();
        match segment {
            "" | "." => {}
            ".." => {
                if kept.pop().is_none() {
                    return Err(PathError::EscapesRoot);
                }
                let encoded =
                    (start..end).any(was_escaped) || (start > 0 && was_escaped(start - 1)) || was_escaped(end);
                if encoded {
                    return Err(PathError::EncodedTraversal);
                }
            }
            other => kept.push(other),
        }
        start = end + 1;
    }
    // Steps 5 and 6: limits and reserved names on the retained segments.
    let mut total = 0usize;
    for segment in &kept {
        check_segment(segment)?;
        total += 1 + segment.len();
    }
    if total > MAX_PATH_BYTES {
        return Err(PathError::PathTooLong);
    }
    let path = if kept.is_empty() {
        CanonicalPath::root()
    } else {
        let mut s = String::with_capacity(total);
        for segment in &kept {
            s.push('/');
            s.push_str(segment);
        }
        CanonicalPath(s)
    };
    Ok(ParsedPath { path, directory_form })
}

/// Percent-decodes once; a `%` not followed by two hex digits is an error (unlike the lenient `percent-encoding` crate).
/// Returns the bytes and, per byte, whether it came from an escape.
fn percent_decode_strict(raw: &str) -> Result<(Vec<u8>, Vec<bool>), PathError> {
    let bytes = raw.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut escaped = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'%' {
            let hi = bytes.get(i + 1).and_then(|b| hex_value(*b));
            let lo = bytes.get(i + 2).and_then(|b| hex_value(*b));
            match (hi, lo) {
                (Some(hi), Some(lo)) => out.push((hi << 4) | lo),
                _ => return Err(PathError::InvalidPercentEncoding),
            }
            escaped.push(true);
            i += 3;
        } else {
            out.push(bytes[i]);
            escaped.push(false);
            i += 1;
        }
    }
    Ok((out, escaped))
}

fn hex_value(b: u8) -> Option<u8> {
    match b {
        b'0'..=b'9' => Some(b - b'0'),
        b'a'..=b'f' => Some(b - b'a' + 10),
        b'A'..=b'F' => Some(b - b'A' + 10),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const PREFIX: &str = "/v1/files";

    /// Parses a full request path the way the router does: everything after the `/v1/files` prefix.
    fn url(full: &str) -> Result<ParsedPath, PathError> {
        let raw = full.strip_prefix(PREFIX).expect("test path starts with /v1/files");
        parse_url_path(raw)
    }

    fn canon(full: &str) -> String {
        url(full).unwrap_or_else(|e| panic!("{full}: {e}")).path.into_string()
    }

    fn p(s: &str) -> CanonicalPath {
        parse_json_path(s).unwrap().path
    }

    // ---- the table of api.md §4, row by row ----

    #[test]
    fn table_plain_path() {
        assert_eq!(canon("/v1/files/a/b/c.txt"), "/a/b/c.txt");
    }

    #[test]
    fn table_dotdot_inside_is_resolved() {
        assert_eq!(canon("/v1/files/dir/../secret.txt"), "/secret.txt");
    }

    #[test]
    fn table_double_slashes() {
        assert_eq!(canon("/v1/files/a//b"), "/a/b");
        assert_eq!(canon("/v1/files//slash-test.txt"), "/slash-test.txt");
    }

    #[test]
    fn table_dot_segments() {
        assert_eq!(canon("/v1/files/./x.txt"), "/x.txt");
        let parsed = url("/v1/files/a/./b/").unwrap();
        assert_eq!(parsed.path.as_str(), "/a/b");
        assert!(parsed.directory_form);
        assert!(!url("/v1/files/./x.txt").unwrap().directory_form);
    }

    #[test]
    fn table_root_forms() {
        assert_eq!(canon("/v1/files/."), "/");
        assert_eq!(canon("/v1/files/a/.."), "/");
        assert!(url("/v1/files/.").unwrap().path.is_root());
    }

    #[test]
    fn table_escapes_rejected() {
        for p in ["/v1/files/..", "/v1/files/../etc/passwd", "/v1/files/a/../.."] {
            assert_eq!(url(p), Err(PathError::EscapesRoot), "{p}");
        }
    }

    #[test]
    fn table_encoded_escapes_rejected() {
        assert_eq!(url("/v1/files/%2e%2e/%2e%2e/etc/passwd"), Err(PathError::EscapesRoot));
        assert_eq!(url("/v1/files/..%2F..%2Fetc%2Fpasswd"), Err(PathError::EscapesRoot));
    }

    #[test]
    fn table_space_dotdot_escapes() {
        // Plain canonicalisation would give `/etc/passwd`; the table (and §15) require 400.
        assert!(url("/v1/files/test%20..%2F..%2Fetc%2Fpasswd").is_err());
        assert_eq!(url("/v1/files/test%20..%2F..%2Fetc%2Fpasswd"), Err(PathError::EncodedTraversal));
    }

    #[test]
    fn table_decoded_once_only() {
        assert_eq!(canon("/v1/files/%252e%252e%252fetc"), "/%2e%2e%2fetc");
    }

    #[test]
    fn table_forbidden_characters() {
        for p in ["/v1/files/test%00file.txt", "/v1/files/a%01b", "/v1/files/test%5Cfile.txt"] {
            assert_eq!(url(p), Err(PathError::ForbiddenCharacter), "{p}");
        }
    }

    #[test]
    fn table_spaces() {
        assert_eq!(canon("/v1/files/file%20with%20spaces.txt"), "/file with spaces.txt");
    }

    #[test]
    fn table_plus_and_at() {
        assert_eq!(canon("/v1/files/file%2Bplus.txt"), "/file+plus.txt");
        assert_eq!(canon("/v1/files/file%40at.txt"), "/file@at.txt");
    }

    #[test]
    fn table_fullwidth_solidus_is_one_segment() {
        let parsed = url("/v1/files/test%EF%BC%8Ffile.txt").unwrap();
        assert_eq!(parsed.path.as_str(), "/test\u{ff0f}file.txt");
        assert_eq!(parsed.path.segments().count(), 1);
    }

    #[test]
    fn table_valid_dotty_names() {
        assert_eq!(canon("/v1/files/.hidden-file"), "/.hidden-file");
        assert_eq!(canon("/v1/files/trailing-dots..."), "/trailing-dots...");
        assert_eq!(canon("/v1/files/archive.tar.gz"), "/archive.tar.gz");
    }

    #[test]
    fn table_length_limits() {
        let seg = "s".repeat(256);
        assert_eq!(url(&format!("/v1/files/{seg}")), Err(PathError::SegmentTooLong));
        let long = "/abc".repeat(1025); // 4100 bytes
        assert_eq!(url(&format!("/v1/files{long}")), Err(PathError::PathTooLong));
    }

    #[test]
    fn table_malformed_escape() {
        assert_eq!(url("/v1/files/%zz"), Err(PathError::InvalidPercentEncoding));
    }

    // ---- additional rules ----

    #[test]
    fn malformed_escapes() {
        for raw in ["/%", "/%4", "/a%4", "/%4g", "/%g4", "/ok%"] {
            assert_eq!(parse_url_path(raw), Err(PathError::InvalidPercentEncoding), "{raw}");
        }
    }

    #[test]
    fn invalid_utf8_rejected() {
        assert_eq!(parse_url_path("/%ff%fe"), Err(PathError::InvalidUtf8));
        assert_eq!(parse_url_path("/%C3"), Err(PathError::InvalidUtf8));
    }

    #[test]
    fn plus_is_literal() {
        assert_eq!(parse_url_path("/a+b").unwrap().path.as_str(), "/a+b");
        assert_eq!(parse_url_path("/a%2bb").unwrap().path.as_str(), "/a+b");
    }

    #[test]
    fn encoded_slash_splits_segments() {
        let parsed = parse_url_path("/a%2Fb%2fc").unwrap();
        assert_eq!(parsed.path.as_str(), "/a/b/c");
        assert_eq!(parsed.path.segments().collect::<Vec<_>>(), ["a", "b", "c"]);
        assert!(parse_url_path("/a%2F").unwrap().directory_form);
    }

    #[test]
    fn encoded_dot_segments() {
        // `.` decoded from `%2E` is dropped like a literal one.
        assert_eq!(parse_url_path("/a/%2E/b").unwrap().path.as_str(), "/a/b");
        assert_eq!(parse_url_path("/a%2F.%2Fb").unwrap().path.as_str(), "/a/b");
        // A `..` created by decoding is rejected even inside the root.
        for raw in ["/a/%2E%2E/b", "/a/.%2e/b", "/a%2F../b", "/a/..%2Fb", "/a/..%2F", "a%2F.."] {
            assert_eq!(parse_url_path(raw), Err(PathError::EncodedTraversal), "{raw}");
        }
        // Literal `..` next to unrelated escapes is resolved normally.
        assert_eq!(parse_url_path("/a%20b/../c%20d").unwrap().path.as_str(), "/c d");
        assert_eq!(parse_url_path("/x/../%2e%2ey").unwrap().path.as_str(), "/..y");
        // JSON paths are never decoded, so their `..` segments are resolved.
        assert_eq!(parse_json_path("/a/../b").unwrap().path.as_str(), "/b");
    }

    #[test]
    fn segment_255_ok_256_rejected() {
        let ok = "x".repeat(255);
        assert_eq!(parse_url_path(&format!("/{ok}")).unwrap().path.as_str(), format!("/{ok}"));
        let bad = "x".repeat(256);
        assert_eq!(parse_url_path(&format!("/{bad}")), Err(PathError::SegmentTooLong));
        // Bytes, not characters: 128 two-byte characters = 256 bytes.
        let multibyte = "é".repeat(128);
        assert_eq!(parse_json_path(&multibyte), Err(PathError::SegmentTooLong));
        assert!(parse_json_path(&"é".repeat(127)).is_ok());
    }

    #[test]
    fn path_4096_ok_4097_rejected() {
        // 16 segments of 255 bytes = 16 * 256 = 4096 bytes.
        let seg = "y".repeat(255);
        let exact: String = (0..16).map(|_| format!("/{seg}")).collect();
        assert_eq!(exact.len(), 4096);
        assert_eq!(parse_json_path(&exact).unwrap().path.as_str(), exact);
        let over = format!("{exact}/z");
        assert_eq!(over.len(), 4098);
        assert_eq!(parse_json_path(&over), Err(PathError::PathTooLong));
        // Exactly 4097 bytes: 17 segments of 240 bytes.
        let seg240 = "w".repeat(240);
        let almost: String = (0..17).map(|_| format!("/{seg240}")).collect();
        assert_eq!(almost.len(), 4097);
        assert_eq!(parse_json_path(&almost), Err(PathError::PathTooLong));
        assert_eq!(parse_url_path(&almost[..4096]).map(|p| p.path.as_str().len()), Ok(4096));
    }

    #[test]
    fn limits_apply_to_canonical_form() {
        // Redundant slashes do not count against the limit.
        let seg = "y".repeat(255);
        let exact: String = (0..16).map(|_| format!("//{seg}/")).collect();
        assert!(exact.len() > 4096);
        assert_eq!(parse_json_path(&exact).unwrap().path.as_str().len(), 4096);
    }

    #[test]
    fn bidi_overrides_rejected() {
        for c in
            ['\u{202a}', '\u{202b}', '\u{202c}', '\u{202d}', '\u{202e}', '\u{2066}', '\u{2067}', '\u{2068}', '\u{2069}']
        {
            let s = format!("/evil{c}txt.exe");
            assert_eq!(parse_json_path(&s), Err(PathError::ForbiddenCharacter), "{c:?}");
        }
        assert_eq!(parse_url_path("/evil%E2%80%AEtxt.exe"), Err(PathError::ForbiddenCharacter));
        // Neighbours of the ranges are fine.
        assert!(parse_json_path("/a\u{2029}b").is_ok());
        assert!(parse_json_path("/a\u{206a}b").is_ok());
    }

    #[test]
    fn tab_allowed_del_and_controls_rejected() {
        assert_eq!(parse_url_path("/a%09b").unwrap().path.as_str(), "/a\tb");
        assert_eq!(parse_url_path("/a%7Fb"), Err(PathError::ForbiddenCharacter));
        for b in (0u8..0x20).filter(|b| *b != b'\t') {
            let raw = format!("/a%{b:02X}b");
            assert_eq!(parse_url_path(&raw), Err(PathError::ForbiddenCharacter), "{raw}");
        }
        assert_eq!(parse_json_path("a\\b"), Err(PathError::ForbiddenCharacter));
    }

    #[test]
    fn forbidden_characters_checked_before_canonicalisation() {
        // A forbidden character in a segment that `..` would remove still rejects the path.
        assert_eq!(parse_json_path("/a\0/../b"), Err(PathError::ForbiddenCharacter));
    }

    #[test]
    fn reserved_names() {
        assert_eq!(parse_json_path("/.callfs-tmp-x"), Err(PathError::ReservedName));
        assert_eq!(parse_url_path("/dir/.callfs-tmp-abc/file"), Err(PathError::ReservedName));
        assert!(parse_json_path("/.callfs-tmp").is_ok());
        assert!(parse_json_path("/x.callfs-tmp-x").is_ok());
    }

    #[test]
    fn directory_form() {
        assert!(parse_url_path("").unwrap().directory_form);
        assert!(parse_url_path("/").unwrap().directory_form);
        assert!(parse_url_path("/a/").unwrap().directory_form);
        assert!(!parse_url_path("/a").unwrap().directory_form);
        assert!(!parse_url_path("/a/.").unwrap().directory_form);
        assert!(parse_json_path("").unwrap().directory_form);
        assert!(parse_json_path("a/b/").unwrap().directory_form);
        assert!(parse_url_path("").unwrap().path.is_root());
    }

    #[test]
    fn url_raw_without_leading_slash() {
        assert_eq!(parse_url_path("a/b").unwrap().path.as_str(), "/a/b");
    }

    #[test]
    fn json_paths_are_not_decoded() {
        assert_eq!(p("a%20b").as_str(), "/a%20b");
        assert_eq!(p("%zz").as_str(), "/%zz");
        assert_eq!(p("x/../y").as_str(), "/y");
        assert_eq!(parse_json_path("../x"), Err(PathError::EscapesRoot));
    }

    #[test]
    fn no_unicode_normalisation() {
        // "é" precomposed vs decomposed stay distinct.
        assert_ne!(p("/caf\u{e9}"), p("/cafe\u{301}"));
    }

    #[test]
    fn canonicalisation_is_idempotent() {
        let inputs = [
            "/v1/files/a//b/./c/../d/",
            "/v1/files/%252e%252e%252fetc",
            "/v1/files/file%20with%20spaces.txt",
            "/v1/files/test%EF%BC%8Ffile.txt",
            "/v1/files/a%09b",
            "/v1/files/.",
            "/v1/files",
        ];
        for input in inputs {
            let first = url(input).unwrap().path;
            let again_json = parse_json_path(first.as_str()).unwrap().path;
            assert_eq!(first, again_json, "{input}");
            // The canonical string of a path without '%' also re-parses identically as a URL.
            if !first.as_str().contains('%') {
                assert_eq!(parse_url_path(first.as_str()).unwrap().path, first, "{input}");
            }
        }
    }

    #[test]
    fn validate_segment_rules() {
        assert_eq!(validate_segment("ok.txt"), Ok(()));
        assert_eq!(validate_segment("with space"), Ok(()));
        assert_eq!(validate_segment("tab\there"), Ok(()));
        assert_eq!(validate_segment(""), Err(PathError::InvalidName));
        assert_eq!(validate_segment("."), Err(PathError::InvalidName));
        assert_eq!(validate_segment(".."), Err(PathError::InvalidName));
        assert_eq!(validate_segment("a/b"), Err(PathError::InvalidName));
        assert_eq!(validate_segment("/"), Err(PathError::InvalidName));
        assert_eq!(validate_segment("a\0b"), Err(PathError::ForbiddenCharacter));
        assert_eq!(validate_segment("a\\b"), Err(PathError::ForbiddenCharacter));
        assert_eq!(validate_segment("a\u{7f}"), Err(PathError::ForbiddenCharacter));
        assert_eq!(validate_segment("a\u{202e}"), Err(PathError::ForbiddenCharacter));
        assert_eq!(validate_segment(&"n".repeat(255)), Ok(()));
        assert_eq!(validate_segment(&"n".repeat(256)), Err(PathError::SegmentTooLong));
        assert_eq!(validate_segment(".callfs-tmp-x"), Err(PathError::ReservedName));
        assert_eq!(validate_segment("..."), Ok(()));
    }

    #[test]
    fn error_messages() {
        assert_eq!(PathError::EscapesRoot.to_string(), "path escapes the root");
        assert_eq!(PathError::InvalidPercentEncoding.to_string(), "invalid percent-encoding");
        assert_eq!(PathError::ForbiddenCharacter.to_string(), "path contains a forbidden character");
        assert_eq!(PathError::SegmentTooLong.to_string(), "path segment longer than 255 bytes");
        assert_eq!(PathError::PathTooLong.to_string(), "path longer than 4096 bytes");
        assert_eq!(PathError::ReservedName.to_string(), "reserved name");
    }

    // ---- CanonicalPath methods ----

    #[test]
    fn root_properties() {
        let root = CanonicalPath::root();
        assert_eq!(root.as_str(), "/");
        assert!(root.is_root());
        assert_eq!(root.parent(), None);
        assert_eq!(root.name(), "/");
        assert!(root.ancestors().is_empty());
        assert_eq!(root.segments().count(), 0);
        assert_eq!(root.to_string(), "/");
    }

    #[test]
    fn parent_and_name() {
        let path = p("/a/b/c.txt");
        assert!(!path.is_root());
        assert_eq!(path.name(), "c.txt");
        assert_eq!(path.parent(), Some(p("/a/b")));
        assert_eq!(p("/a").parent(), Some(CanonicalPath::root()));
        assert_eq!(p("/a").name(), "a");
    }

    #[test]
    fn join_segments() {
        assert_eq!(CanonicalPath::root().join("a").as_str(), "/a");
        assert_eq!(p("/a").join("b").as_str(), "/a/b");
        assert_eq!(p("/a/b").join("c").parent(), Some(p("/a/b")));
    }

    #[test]
    fn join_checked_validates() {
        assert_eq!(p("/a").join_checked("b"), Ok(p("/a/b")));
        assert_eq!(p("/a").join_checked(".."), Err(PathError::InvalidName));
        assert_eq!(p("/a").join_checked("x/y"), Err(PathError::InvalidName));
        let seg = "y".repeat(255);
        let full: String = (0..16).map(|_| format!("/{seg}")).collect();
        let parent = p(&full).parent().unwrap();
        assert_eq!(parent.join_checked(&seg).map(|j| j.as_str().len()), Ok(4096));
        assert_eq!(p(&full).join_checked("z"), Err(PathError::PathTooLong));
    }

    #[test]
    fn ancestors_from_root_down() {
        let got: Vec<String> = p("/a/b/c").ancestors().into_iter().map(CanonicalPath::into_string).collect();
        assert_eq!(got, ["/", "/a", "/a/b"]);
        assert_eq!(p("/a").ancestors(), vec![CanonicalPath::root()]);
    }

    #[test]
    fn is_within() {
        let a = p("/a");
        assert!(p("/a").is_within(&a));
        assert!(p("/a/b").is_within(&a));
        assert!(p("/a/b/c").is_within(&a));
        assert!(!p("/ab").is_within(&a));
        assert!(!p("/b").is_within(&a));
        assert!(!a.is_within(&p("/a/b")));
        assert!(a.is_within(&CanonicalPath::root()));
        assert!(CanonicalPath::root().is_within(&CanonicalPath::root()));
        assert!(!CanonicalPath::root().is_within(&a));
    }

    #[test]
    fn segments_in_order() {
        assert_eq!(p("/x/y/z").segments().collect::<Vec<_>>(), ["x", "y", "z"]);
    }
}
