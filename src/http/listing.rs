//! Listing requests and bodies (api.md §8.1, §9): the query rules, the opaque page cursor, and
//! the JSON written batch by batch as the rows arrive, so no listing is ever held whole.

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine;
use bytes::Bytes;
use callfs_actors::metadata::{Inode, ListingCursor, ListingShape};
use futures_util::{Stream, StreamExt};
use serde::Serialize;

use crate::error::ApiError;

const DEFAULT_MAX_DEPTH: u32 = 100;
const MAX_DEPTH_CAP: u32 = 1000;
const MAX_LIMIT: u32 = 10_000;
/// Longer than any cursor of a valid name (a canonical path is at most 4096 bytes).
const MAX_CURSOR: usize = 6000;

/// `recursive` is on only for exactly `true`; `max_depth` falls back to 100 and is capped at 1000.
pub fn listing_options(query: &str) -> (bool, u32) {
    let mut recursive = false;
    let mut max_depth = DEFAULT_MAX_DEPTH;
    for (key, value) in pairs(query) {
        match key {
            "recursive" => recursive = value == "true",
            "max_depth" => {
                max_depth = value
                    .parse::<i64>()
                    .ok()
                    .filter(|d| *d >= 0)
                    .map_or(DEFAULT_MAX_DEPTH, |d| d.min(i64::from(MAX_DEPTH_CAP)) as u32)
            }
            _ => {}
        }
    }
    (recursive, max_depth)
}

fn pairs(query: &str) -> impl Iterator<Item = (&str, &str)> {
    query.split('&').filter(|p| !p.is_empty()).map(|pair| pair.split_once('=').unwrap_or((pair, "")))
}

/// `limit` and `after` of a non-recursive listing. Each may appear once: a repeated one is refused
/// rather than letting one of two values win silently.
pub fn page(query: &str) -> Result<ListingShape, ApiError> {
    let mut limit = None;
    let mut after = None;
    for (key, value) in pairs(query) {
        match key {
            "limit" if limit.is_some() => return Err(ApiError::BadRequest("limit given more than once".into())),
            "after" if after.is_some() => return Err(ApiError::BadRequest("after given more than once".into())),
            "limit" => limit = Some(parse_limit(value)?),
            "after" => after = Some(decode_cursor(value)?),
            _ => {}
        }
    }
    Ok(ListingShape::Children { limit, after })
}

/// The shape of a `/v1/directories` listing; page parameters apply to non-recursive ones only.
pub fn shape(query: &str) -> Result<(bool, Option<u32>, ListingShape), ApiError> {
    match listing_options(query) {
        (true, max_depth) => Ok((true, Some(max_depth), ListingShape::Tree { max_depth })),
        (false, _) => Ok((false, None, page(query)?)),
    }
}

fn parse_limit(value: &str) -> Result<u32, ApiError> {
    let invalid = || ApiError::BadRequest(format!("limit must be an integer from 1 to {MAX_LIMIT}"));
    if value.is_empty() || value.len() > 5 || !value.bytes().all(|b| b.is_ascii_digit()) {
        return Err(invalid());
    }
    value.parse::<u32>().ok().filter(|n| (1..=MAX_LIMIT).contains(n)).ok_or_else(invalid)
}

/// The cursor is the base64url of `f/<name>` or `d/<name>`: opaque to clients, checked here.
pub fn encode_cursor(cursor: &ListingCursor) -> String {
    let kind = if cursor.is_dir { "d/" } else { "f/" };
    URL_SAFE_NO_PAD.encode(format!("{kind}{}", cursor.name))
}

pub fn decode_cursor(value: &str) -> Result<ListingCursor, ApiError> {
    let malformed = || ApiError::BadRequest("malformed listing cursor in after".into());
    if value.is_empty() || value.len() > MAX_CURSOR {
        return Err(malformed());
    }
    let raw = URL_SAFE_NO_PAD.decode(value).map_err(|_| malformed())?;
    let text = String::from_utf8(raw).map_err(|_| malformed())?;
    let (is_dir, name) = match text.split_at_checked(2) {
        Some(("f/", name)) => (false, name),
        Some(("d/", name)) => (true, name),
        _ => return Err(malformed()),
    };
    if name.is_empty() || name.contains('/') {
        return Err(malformed());
    }
    Ok(ListingCursor { is_dir, name: name.to_string() })
}

/// The listing item of api.md §8.1, fields in the spec's order.
#[derive(Serialize)]
pub struct Item<'a> {
    name: &'a str,
    path: &'a str,
    #[serde(rename = "type")]
    kind: &'a str,
    size: i64,
    mode: &'a str,
    owner: &'a str,
    #[serde(serialize_with = "rfc3339")]
    mtime: chrono::NaiveDateTime,
}

fn rfc3339<S: serde::Serializer>(t: &chrono::NaiveDateTime, s: S) -> Result<S::Ok, S::Error> {
    s.collect_str(&t.and_utc().format("%Y-%m-%dT%H:%M:%SZ"))
}

pub fn item(entry: &Inode) -> Item<'_> {
    Item {
        name: &entry.name,
        path: &entry.path,
        kind: &entry.kind,
        size: entry.size,
        mode: &entry.mode,
        owner: &entry.owner,
        mtime: entry.mtime,
    }
}

/// The opening of a `/v1/directories` body, up to and including `"items":[`.
pub fn directory_head(path: &str, recursive: bool, max_depth: Option<u32>, count: u64) -> Vec<u8> {
    let mut head = serde_json::json!({"path": path, "type": "directory", "recursive": recursive});
    if let Some(max_depth) = max_depth {
        head["max_depth"] = max_depth.into();
    }
    head["count"] = count.into();
    let mut out = head.to_string().into_bytes();
    out.pop(); // the closing brace: the items follow
    out.extend_from_slice(br#","items":["#);
    out
}

/// `open`, then every row as a JSON item separated by commas, then `close`: one chunk per batch.
pub fn json_body(
    open: Vec<u8>,
    rows: impl Stream<Item = Result<Vec<Inode>, ApiError>> + 'static,
    close: &'static [u8],
) -> impl Stream<Item = Result<Bytes, ApiError>> + 'static {
    let mut first = true;
    let items = rows.map(move |batch| {
        let batch = batch?;
        let mut out = Vec::with_capacity(batch.len() * 192);
        for entry in &batch {
            if !std::mem::take(&mut first) {
                out.push(b',');
            }
            serde_json::to_writer(&mut out, &item(entry)).map_err(|e| ApiError::Internal(e.to_string()))?;
        }
        Ok(Bytes::from(out))
    });
    futures_util::stream::once(async move { Ok(Bytes::from(open)) })
        .chain(items)
        .chain(futures_util::stream::once(async move { Ok(Bytes::from_static(close)) }))
}

#[cfg(test)]
mod tests {
    use super::*;
    use chrono::NaiveDateTime;

    fn entry(name: &str, dir: bool) -> Inode {
        let t = NaiveDateTime::parse_from_str("2025-07-15 10:30:00", "%Y-%m-%d %H:%M:%S").unwrap();
        Inode {
            id: 1,
            parent_id: Some(1),
            name: name.into(),
            path: format!("/d/{name}"),
            kind: if dir { "directory" } else { "file" }.into(),
            size: if dir { 0 } else { 5 },
            mode: if dir { "0755" } else { "0644" }.into(),
            owner: "alice".into(),
            atime: t,
            mtime: t,
            ctime: t,
            backend_type: "localfs".into(),
            callfs_instance_id: None,
            content_version: 1,
            erasure_coded: false,
            symlink_target: None,
            created_at: t,
            updated_at: t,
            blob: None,
        }
    }

    #[test]
    fn query_rules() {
        assert_eq!(listing_options(""), (false, 100));
        assert_eq!(listing_options("recursive=true&max_depth=2"), (true, 2));
        assert_eq!(listing_options("recursive=TRUE"), (false, 100));
        assert_eq!(listing_options("recursive=true&max_depth=-1"), (true, 100));
        assert_eq!(listing_options("recursive=true&max_depth=x"), (true, 100));
        assert_eq!(listing_options("recursive=true&max_depth=5000"), (true, 1000));
        assert_eq!(listing_options("recursive=true&max_depth=0"), (true, 0));
    }

    #[test]
    fn limit_is_an_integer_from_1_to_10000() {
        let limit = |q: &str| match page(q) {
            Ok(ListingShape::Children { limit, .. }) => Ok(limit),
            Ok(other) => panic!("{other:?}"),
            Err(err) => Err(err.to_string()),
        };
        assert_eq!(limit(""), Ok(None));
        assert_eq!(limit("limit=1"), Ok(Some(1)));
        assert_eq!(limit("limit=10000"), Ok(Some(10_000)));
        for bad in [
            "limit=",
            "limit",
            "limit=0",
            "limit=10001",
            "limit=abc",
            "limit=-1",
            "limit=+5",
            "limit=1.5",
            "limit=2&limit=3",
        ] {
            assert!(limit(bad).is_err(), "{bad}");
        }
        // Recursive listings take no page parameters.
        assert!(shape("recursive=true&limit=abc").is_ok());
        assert!(shape("recursive=false&limit=abc").is_err());
    }

    #[test]
    fn cursors_round_trip_and_reject_garbage() {
        for cursor in [
            ListingCursor { is_dir: false, name: "a.txt".into() },
            ListingCursor { is_dir: true, name: "é dir?&=".into() },
        ] {
            let encoded = encode_cursor(&cursor);
            assert!(encoded.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_'), "{encoded}");
            assert_eq!(decode_cursor(&encoded).unwrap(), cursor);
        }
        let b64 = |s: &str| URL_SAFE_NO_PAD.encode(s);
        for bad in
            [String::new(), "***".into(), b64("x/a"), b64("f/"), b64("d/a/b"), URL_SAFE_NO_PAD.encode([0xff, 0xfe])]
        {
            assert!(decode_cursor(&bad).is_err(), "{bad:?}");
        }
        let one = encode_cursor(&ListingCursor { is_dir: false, name: "a".into() });
        assert!(page(&format!("after={one}")).is_ok());
        assert!(page(&format!("after={one}&after={one}")).is_err());
    }

    #[test]
    fn body_bytes_are_the_compact_json_of_the_spec() {
        let head = directory_head("/d", false, None, 2);
        let rows = futures_util::stream::iter(vec![Ok(vec![entry("a.txt", false)]), Ok(vec![entry("sub", true)])]);
        let chunks: Vec<_> = tokio::runtime::Builder::new_current_thread()
            .build()
            .unwrap()
            .block_on(json_body(head, rows, b"]}").collect::<Vec<_>>());
        let body: Vec<u8> = chunks.into_iter().flat_map(|c| c.unwrap().to_vec()).collect();
        assert_eq!(
            String::from_utf8(body).unwrap(),
            concat!(
                r#"{"path":"/d","type":"directory","recursive":false,"count":2,"items":["#,
                r#"{"name":"a.txt","path":"/d/a.txt","type":"file","size":5,"mode":"0644","owner":"alice","mtime":"2025-07-15T10:30:00Z"},"#,
                r#"{"name":"sub","path":"/d/sub","type":"directory","size":0,"mode":"0755","owner":"alice","mtime":"2025-07-15T10:30:00Z"}]}"#
            )
        );
        assert_eq!(
            String::from_utf8(directory_head("/", true, Some(3), 0)).unwrap(),
            r#"{"path":"/","type":"directory","recursive":true,"max_depth":3,"count":0,"items":["#
        );
    }
}
