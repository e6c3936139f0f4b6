//! Arbitrary text → the canonical path parser (`parse_url_path`, `parse_json_path`).
//! Invariants: nothing panics; an accepted path is canonical (starts with `/`, no empty, `.` or
//! `..` segment, no trailing `/` but for the root, segments ≤ 255 bytes and not reserved, total
//! ≤ 4096 bytes); parsing its string again (as JSON, or percent-encoded as a URL) gives the same
//! path.
#![no_main]

use callfs::path::{
    parse_json_path, parse_url_path, ParsedPath, PathError, MAX_PATH_BYTES, MAX_SEGMENT_BYTES, RESERVED_PREFIX,
};
use libfuzzer_sys::fuzz_target;

fn check(input: &str, parsed: &Result<ParsedPath, PathError>) {
    let Ok(p) = parsed else {
        return;
    };
    let s = p.path.as_str();
    assert!(s.starts_with('/'), "{input:?} → {s:?}");
    assert!(s.len() <= MAX_PATH_BYTES, "{input:?} → {} bytes", s.len());
    if s != "/" {
        assert!(!s.ends_with('/'), "{input:?} → {s:?}");
        for segment in s[1..].split('/') {
            assert!(!segment.is_empty() && segment != "." && segment != "..", "{input:?} → {s:?}");
            assert!(segment.len() <= MAX_SEGMENT_BYTES, "{input:?} → segment of {} bytes", segment.len());
            assert!(!segment.starts_with(RESERVED_PREFIX), "{input:?} → reserved {segment:?}");
        }
    }
    let again = parse_json_path(s).unwrap_or_else(|e| panic!("{input:?} → {s:?}, which does not reparse: {e}"));
    assert_eq!(again.path, p.path, "{input:?}: JSON reparse of the canonical form");
    let encoded: String = s
        .bytes()
        .map(|b| if b == b'/' || b.is_ascii_alphanumeric() { (b as char).to_string() } else { format!("%{b:02X}") })
        .collect();
    let url = parse_url_path(&encoded).unwrap_or_else(|e| panic!("{input:?} → {s:?}, encoded {encoded:?} fails: {e}"));
    assert_eq!(url.path, p.path, "{input:?}: URL reparse of the percent-encoded canonical form");
}

fuzz_target!(|input: &str| {
    let url = parse_url_path(input);
    check(input, &url);
    check(input, &parse_json_path(input));
});
