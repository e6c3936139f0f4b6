//! Range and conditional GET (api.md §12), as pure functions.

use std::time::UNIX_EPOCH;

use chrono::NaiveDateTime;

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
    // httpdate writes the IMF-fixdate digit by digit; chrono's format interpreter is several times
    // dearer. Times before the epoch (never written by this node) go through chrono.
    match u64::try_from(t.and_utc().timestamp()) {
        Ok(secs) => httpdate::fmt_http_date(UNIX_EPOCH + std::time::Duration::from_secs(secs)),
        Err(_) => t.and_utc().format("%a, %d %b %Y %H:%M:%S GMT").to_string(),
    }
}

/// Seconds since the epoch of an HTTP-date in any of the three forms a recipient must accept (RFC 9110 §5.6.7):
/// IMF-fixdate, RFC 850 and asctime. Anything else (including RFC 2822 dates with a numeric zone) is `None`.
fn parse_http_date(s: &str) -> Option<i64> {
    let t = httpdate::parse_http_date(s.trim()).ok()?;
    i64::try_from(t.duration_since(UNIX_EPOCH).ok()?.as_secs()).ok()
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
    #[test]
    fn http_date_matches_chrono() {
        for text in ["2026-11-30 07:02:05.25", "1970-01-01 00:00:00", "2000-02-29 23:59:59"] {
            let t = chrono::NaiveDateTime::parse_from_str(text, "%F %T%.f").unwrap();
            assert_eq!(super::http_date(t), t.and_utc().format("%a, %d %b %Y %H:%M:%S GMT").to_string());
        }
    }

    use super::*;

    use chrono::DateTime;

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

    #[test]
    fn all_three_http_date_forms() {
        // 1_752_575_400 is Tuesday, 15 July 2025, 10:30:00 GMT.
        assert_eq!(http_date(v().mtime), "Tue, 15 Jul 2025 10:30:00 GMT");
        for form in ["Tue, 15 Jul 2025 10:30:00 GMT", "Tuesday, 15-Jul-25 10:30:00 GMT", "Tue Jul 15 10:30:00 2025"] {
            assert_eq!(parse_http_date(form), Some(1_752_575_400), "{form}");
            assert_eq!(parse_http_date(&format!(" {form} ")), Some(1_752_575_400), "{form} with blanks");
            let c = Conditions { if_modified_since: Some(form), ..Default::default() };
            assert_eq!(plan(&c, &v(), 10), Plan::NotModified, "If-Modified-Since: {form}");
            let c = Conditions { range: Some("bytes=0-1"), if_range: Some(form), ..Default::default() };
            assert_eq!(plan(&c, &v(), 10), Plan::Partial { first: 0, last: 1 }, "If-Range: {form}");
        }
        // asctime pads a one-digit day with a space.
        assert_eq!(parse_http_date("Sun Nov  6 08:49:37 1994"), Some(784_111_777));
        assert_eq!(parse_http_date("Sunday, 06-Nov-94 08:49:37 GMT"), Some(784_111_777));
    }

    #[test]
    fn other_dates_are_ignored() {
        for bad in [
            "",
            "yesterday",
            "Tue, 15 Jul 2025 12:30:00 +0200",
            "2025-07-15T10:30:00Z",
            "Tue, 32 Jul 2025 10:30:00 GMT",
        ] {
            assert_eq!(parse_http_date(bad), None, "{bad}");
            let c = Conditions { if_modified_since: Some(bad), ..Default::default() };
            assert_eq!(plan(&c, &v(), 10), Plan::Full, "If-Modified-Since: {bad}");
        }
        // An earlier date is older than the file: send it.
        let c = Conditions { if_modified_since: Some("Mon, 14 Jul 2025 10:30:00 GMT"), ..Default::default() };
        assert_eq!(plan(&c, &v(), 10), Plan::Full);
        // If-Range with a date that is not the file's: the whole file.
        let c =
            Conditions { range: Some("bytes=0-1"), if_range: Some("Tue Jul 15 10:30:01 2025"), ..Default::default() };
        assert_eq!(plan(&c, &v(), 10), Plan::Full);
    }
}
