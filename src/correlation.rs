//! Request ids and W3C trace context (`api.md` §5.2, `observability.md` §3).

use rand::Rng;

/// Longest accepted incoming `X-Request-ID`.
const MAX_REQUEST_ID_LEN: usize = 128;

/// The request id: the incoming `X-Request-ID` when it matches `^[A-Za-z0-9._:-]{1,128}$`, else 16 new lowercase hex
/// characters (64 random bits).
pub fn request_id(incoming: Option<&str>) -> String {
    match incoming {
        Some(id) if is_valid_request_id(id) => id.to_owned(),
        _ => format!("{:016x}", rand::thread_rng().gen::<u64>()),
    }
}

fn is_valid_request_id(id: &str) -> bool {
    (1..=MAX_REQUEST_ID_LEN).contains(&id.len())
        && id.bytes().all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b':' | b'-'))
}

/// The trace context of one request on this node.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TraceContext {
    /// 32 lowercase hex characters, kept from a valid incoming `traceparent`.
    pub trace_id: String,
    /// 16 lowercase hex characters, new for this node.
    pub span_id: String,
    /// 2 hex characters, kept from a valid incoming `traceparent`, else `00`.
    pub flags: String,
}

impl TraceContext {
    /// Continues a valid incoming `traceparent` (`00-<32 hex>-<16 hex>-<2 hex>`, lowercase hex as W3C requires, trace id
    /// and parent id not all zeros), keeping its trace id and flags; otherwise starts a new trace with flags `00`.
    /// The span id is always new.
    pub fn from_header(traceparent: Option<&str>) -> Self {
        let span_id = random_hex_id(8);
        match traceparent.and_then(|h| parse_traceparent(h.trim())) {
            Some((trace_id, flags)) => TraceContext { trace_id: trace_id.to_owned(), span_id, flags: flags.to_owned() },
            None => TraceContext { trace_id: random_hex_id(16), span_id, flags: "00".to_owned() },
        }
    }

    /// The `traceparent` value to send (response header, and to peers on forwarded calls): `00-<trace>-<span>-<flags>`.
    pub fn header_value(&self) -> String {
        format!("00-{}-{}-{}", self.trace_id, self.span_id, self.flags)
    }
}

/// Returns `(trace_id, flags)` of a valid version-00 header.
fn parse_traceparent(value: &str) -> Option<(&str, &str)> {
    let mut parts = value.split('-');
    let version = parts.next()?;
    let trace_id = parts.next()?;
    let parent_id = parts.next()?;
    let flags = parts.next()?;
    if parts.next().is_some() || version != "00" {
        return None;
    }
    let valid = is_lower_hex(trace_id, 32)
        && is_lower_hex(parent_id, 16)
        && is_lower_hex(flags, 2)
        && !is_all_zeros(trace_id)
        && !is_all_zeros(parent_id);
    valid.then_some((trace_id, flags))
}

fn is_lower_hex(s: &str, len: usize) -> bool {
    s.len() == len && s.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f'))
}

fn is_all_zeros(s: &str) -> bool {
    s.bytes().all(|b| b == b'0')
}

/// `bytes` random bytes as lowercase hex, never all zeros (an invalid W3C id).
fn random_hex_id(bytes: usize) -> String {
    let mut rng = rand::thread_rng();
    let mut buf = vec![0u8; bytes];
    loop {
        rng.fill(buf.as_mut_slice());
        if buf.iter().any(|b| *b != 0) {
            return hex::encode(&buf);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashSet;

    const VALID: &str = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";

    fn is_hex_len(s: &str, len: usize) -> bool {
        is_lower_hex(s, len)
    }

    #[test]
    fn request_id_reused_when_valid() {
        for id in ["abc", "3f9a1c0b7d2e4a61", "A.b_c:d-e", "x", &"a".repeat(128)] {
            assert_eq!(request_id(Some(id)), id);
        }
    }

    #[test]
    fn request_id_regenerated_when_invalid() {
        let long = "a".repeat(129);
        for bad in ["", "has space", "new\nline", "semi;colon", "slash/x", "ünï", long.as_str()] {
            let id = request_id(Some(bad));
            assert_ne!(id, bad);
            assert!(is_hex_len(&id, 16), "{id}");
        }
        assert!(is_hex_len(&request_id(None), 16));
    }

    #[test]
    fn request_ids_are_unique() {
        let ids: HashSet<String> = (0..1000).map(|_| request_id(None)).collect();
        assert_eq!(ids.len(), 1000);
    }

    #[test]
    fn valid_traceparent_is_continued() {
        let ctx = TraceContext::from_header(Some(VALID));
        assert_eq!(ctx.trace_id, "4bf92f3577b34da6a3ce929d0e0e4736");
        assert_eq!(ctx.flags, "01");
        assert!(is_hex_len(&ctx.span_id, 16));
        assert_ne!(ctx.span_id, "00f067aa0ba902b7", "span id is new for this node");
        let with_spaces = TraceContext::from_header(Some(&format!(" {VALID} ")));
        assert_eq!(with_spaces.trace_id, ctx.trace_id);
    }

    #[test]
    fn invalid_traceparent_starts_new_trace() {
        let cases = [
            "",
            "garbage",
            // wrong version
            "01-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
            "ff-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
            // all-zero ids
            "00-00000000000000000000000000000000-00f067aa0ba902b7-01",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-0000000000000000-01",
            // wrong lengths
            "00-4bf92f3577b34da6a3ce929d0e0e473-00f067aa0ba902b7-01",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b-01",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-1",
            // non-hex / upper-case
            "00-4bf92f3577b34da6a3ce929d0e0e473g-00f067aa0ba902b7-01",
            "00-4BF92F3577B34DA6A3CE929D0E0E4736-00f067aa0ba902b7-01",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-0x",
            // extra part
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01-extra",
        ];
        for bad in cases {
            let ctx = TraceContext::from_header(Some(bad));
            assert_ne!(ctx.trace_id, "4bf92f3577b34da6a3ce929d0e0e4736", "{bad}");
            assert!(is_hex_len(&ctx.trace_id, 32), "{bad}");
            assert!(!is_all_zeros(&ctx.trace_id));
            assert_eq!(ctx.flags, "00", "{bad}");
        }
        let none = TraceContext::from_header(None);
        assert!(is_hex_len(&none.trace_id, 32));
        assert_eq!(none.flags, "00");
    }

    #[test]
    fn new_traces_differ() {
        let a = TraceContext::from_header(None);
        let b = TraceContext::from_header(None);
        assert_ne!(a.trace_id, b.trace_id);
        assert_ne!(a.span_id, b.span_id);
    }

    #[test]
    fn header_value_round_trips() {
        let ctx = TraceContext::from_header(Some(VALID));
        let header = ctx.header_value();
        assert_eq!(header, format!("00-4bf92f3577b34da6a3ce929d0e0e4736-{}-01", ctx.span_id));
        // A peer receiving our header continues the same trace.
        let next = TraceContext::from_header(Some(&header));
        assert_eq!(next.trace_id, ctx.trace_id);
        assert_eq!(next.flags, "01");
        assert_ne!(next.span_id, ctx.span_id);
        // A fresh context produces a valid header too.
        let fresh = TraceContext::from_header(None);
        assert!(parse_traceparent(&fresh.header_value()).is_some());
    }
}
