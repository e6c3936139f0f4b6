//! Range and conditional GET (api.md §12), as pure functions.

use chrono::{DateTime, NaiveDateTime, Utc};

/// What a GET on a file should send.
#[derive(Debug, PartialEq, Eq)]
pub enum Plan {
    /// `304 Not Modified`.
    NotModified,
    Full,
    /// `206` with the inclusive byte range.
    Partial {
        first: u64,
        last: u64,
    },
    /// `416` with `Content-Range: bytes */size`.
    Unsatisfiable,
}

pub struct Validators<'a> {
    pub etag: &'a str,
    pub mtime: NaiveDateTime,
}

#[derive(Default)]
pub struct Conditions<'a> {
    pub range: Option<&'a str>,
    pub if_range: Option<&'a str>,
    pub if_none_match: Option<&'a str>,
    pub if_modified_since: Option<&'a str>,
}

pub fn http_date(t: NaiveDateTime) -> String {
    t.and_utc().format("%a, %d %b %Y %H:%M:%S GMT").to_string()
}

fn parse_http_date(s: &str) -> Option<i64> {
    DateTime::parse_from_rfc2822(s.trim()).ok().map(|d| d.with_timezone(&Utc).timestamp())
}

fn etag_matches(list: &str, etag: &str) -> bool {
    list.split(',').map(str::trim).any(|t| t == "*" || t == etag || t.strip_prefix("W/") == Some(etag))
}

pub fn plan(c: &Conditions, v: &Validators, size: u64) -> Plan {
    let mtime = v.mtime.and_utc().timestamp();
    if let Some(list) = c.if_none_match {
        if etag_matches(list, v.etag) {
            return Plan::NotModified;
        }
    } else if let Some(since) = c.if_modified_since.and_then(parse_http_date) {
        if since >= mtime {
            return Plan::NotModified;
        }
    }
    let Some(range) = c.range else {
        return Plan::Full;
    };
    if let Some(if_range) = c.if_range {
        let fresh = if if_range.trim_start().starts_with('"') || if_range.trim_start().starts_with("W/") {
            if_range.trim() == v.etag
        } else {
            parse_http_date(if_range) == Some(mtime)
        };
        if !fresh {
            return Plan::Full;
        }
    }
    match parse_range(range, size) {
        Some(Ok((first, last))) => Plan::Partial { first, last },
        Some(Err(())) => Plan::Unsatisfiable,
        None => Plan::Full,
    }
}

/// `None`: ignore the header (invalid, several ranges, other unit); `Some(Err)`: unsatisfiable.
fn parse_range(header: &str, size: u64) -> Option<Result<(u64, u64), ()>> {
    let spec = header.trim().strip_prefix("bytes=")?;
    if spec.contains(',') {
        return None;
    }
    let (start, end) = spec.split_once('-')?;
    let (start, end) = (start.trim(), end.trim());
    if start.is_empty() {
        let suffix: u64 = end.parse().ok()?;
        if suffix == 0 || size == 0 {
            return Some(Err(()));
        }
        return Some(Ok((size.saturating_sub(suffix), size - 1)));
    }
    let first: u64 = start.parse().ok()?;
    let last: Option<u64> = if end.is_empty() { None } else { Some(end.parse().ok()?) };
    if last.is_some_and(|l| l < first) {
        return None;
    }
    if first >= size {
        return Some(Err(()));
    }
    Some(Ok((first, last.unwrap_or(size - 1).min(size - 1))))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn v() -> Validators<'static> {
        Validators { etag: "\"7-2\"", mtime: DateTime::from_timestamp(1_752_575_400, 0).unwrap().naive_utc() }
    }

    fn range(r: &str, size: u64) -> Plan {
        plan(&Conditions { range: Some(r), ..Default::default() }, &v(), size)
    }

    #[test]
    fn single_ranges() {
        assert_eq!(range("bytes=0-99", 1000), Plan::Partial { first: 0, last: 99 });
        assert_eq!(range("bytes=990-2000", 1000), Plan::Partial { first: 990, last: 999 });
        assert_eq!(range("bytes=-10", 1000), Plan::Partial { first: 990, last: 999 });
        assert_eq!(range("bytes=5-", 1000), Plan::Partial { first: 5, last: 999 });
        assert_eq!(range("bytes=1000-", 1000), Plan::Unsatisfiable);
        assert_eq!(range("bytes=0-", 0), Plan::Unsatisfiable);
    }

    #[test]
    fn ignored_ranges_serve_everything() {
        assert_eq!(range("bytes=0-1,5-6", 100), Plan::Full);
        assert_eq!(range("items=0-1", 100), Plan::Full);
        assert_eq!(range("bytes=x-y", 100), Plan::Full);
        assert_eq!(range("bytes=9-3", 100), Plan::Full);
    }

    #[test]
    fn conditionals() {
        let c = Conditions { if_none_match: Some("\"7-2\""), ..Default::default() };
        assert_eq!(plan(&c, &v(), 10), Plan::NotModified);
        let c = Conditions { if_none_match: Some("\"7-1\""), ..Default::default() };
        assert_eq!(plan(&c, &v(), 10), Plan::Full);
        let date = http_date(v().mtime);
        let c = Conditions { if_modified_since: Some(&date), ..Default::default() };
        assert_eq!(plan(&c, &v(), 10), Plan::NotModified);
        let c = Conditions { range: Some("bytes=0-1"), if_range: Some("\"other\""), ..Default::default() };
        assert_eq!(plan(&c, &v(), 10), Plan::Full);
        let c = Conditions { range: Some("bytes=0-1"), if_range: Some("\"7-2\""), ..Default::default() };
        assert_eq!(plan(&c, &v(), 10), Plan::Partial { first: 0, last: 1 });
    }
}
