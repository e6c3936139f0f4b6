//! Forwarding a client request to the node that owns the bytes (cluster.md §3) and relaying its answer.

use actix_web::http::StatusCode;
use actix_web::{web, HttpMessage, HttpRequest, HttpResponse};
use bytes::Bytes;
use callfs_actors::metrics::{BackendOp, CrossServerOp};
use callfs_actors::peer::UploadChunk;
use callfs_actors::peer::{ForwardRequest, ForwardedResponse, RequestBody};
use futures_util::StreamExt;
use percent_encoding::{utf8_percent_encode, AsciiSet, CONTROLS};
use tokio::sync::mpsc;

use crate::auth::Identity;
use crate::error::ApiError;
use crate::http::handlers::files::AnnouncedLength;
use crate::http::middleware::RequestContext;
use crate::node::Node;
use crate::path::CanonicalPath;

/// RFC 3986 path-segment encoding: everything but unreserved and sub-delims/':'/'@'.
const SEGMENT: &AsciiSet = &CONTROLS
    .add(b' ')
    .add(b'"')
    .add(b'#')
    .add(b'%')
    .add(b'/')
    .add(b'<')
    .add(b'>')
    .add(b'?')
    .add(b'[')
    .add(b'\\')
    .add(b']')
    .add(b'^')
    .add(b'`')
    .add(b'{')
    .add(b'|')
    .add(b'}');

/// `/v1/files/` + the canonical path with each segment percent-encoded.
pub fn files_url(path: &CanonicalPath) -> String {
    encoded_path("/v1/files", path)
}

/// `prefix` + the canonical path with each segment percent-encoded.
pub fn encoded_path(prefix: &str, path: &CanonicalPath) -> String {
    let mut url = String::from(prefix);
    for segment in path.segments() {
        url.push('/');
        url.extend(utf8_percent_encode(segment, SEGMENT));
    }
    if path.is_root() {
        url.push('/');
    }
    url
}

/// Client headers that travel with a forwarded request.
const COPIED: [&str; 6] =
    ["range", "if-range", "if-none-match", "if-modified-since", "content-type", "x-forwarded-for"];

/// Headers relayed from the peer's answer (plus every `X-CallFS-*`).
const RELAYED: [&str; 7] = [
    "content-type",
    "content-length",
    "content-range",
    "accept-ranges",
    "etag",
    "last-modified",
    "content-disposition",
];

pub struct Forward<'a> {
    pub peer: String,
    pub method: &'static str,
    pub path_and_query: String,
    pub operation: CrossServerOp,
    pub backend_op: BackendOp,
    /// `None` for link downloads and internal byte operations.
    pub original_user: Option<&'a Identity>,
    pub payload: Option<web::Payload>,
    /// A JSON body instead of the client's payload (PATCH).
    pub json: Option<Bytes>,
    /// Copy the client's Range/conditional headers (not for link downloads).
    pub client_headers: bool,
}

/// A request arriving through a peer is never forwarded again (the one-hop rule).
pub fn ensure_not_proxied(identity: &Identity) -> Result<(), ApiError> {
    if identity.internal && identity.proxied_by.is_some() {
        return Err(ApiError::PeerError("resource moved during forwarding; retry".into()));
    }
    Ok(())
}

pub async fn forward(req: &HttpRequest, node: &Node, f: Forward<'_>) -> Result<HttpResponse, ApiError> {
    let mut headers: Vec<(String, String)> = Vec::new();
    for name in COPIED.iter().filter(|_| f.client_headers) {
        if let Some(value) = req.headers().get(*name).and_then(|v| v.to_str().ok()) {
            headers.push((name.to_string(), value.to_string()));
        }
    }
    if let Some(ctx) = req.extensions().get::<RequestContext>() {
        headers.push(("x-request-id".into(), ctx.request_id.clone()));
        headers.push((
            "traceparent".into(),
            format!("00-{}-{}-{}", ctx.trace.trace_id, ctx.trace.span_id, ctx.trace.flags),
        ));
        let forwarded_for = match req.headers().get("x-forwarded-for").and_then(|v| v.to_str().ok()) {
            Some(chain) => format!("{chain}, {}", ctx.client_ip),
            None => ctx.client_ip.to_string(),
        };
        headers.retain(|(k, _)| k != "x-forwarded-for");
        headers.push(("x-forwarded-for".into(), forwarded_for));
    }
    if let Some(identity) = f.original_user {
        headers.push(("x-callfs-original-user".into(), identity.user_id.clone()));
    }

    let (body, pump) = match (f.payload, f.json) {
        (Some(payload), _) => {
            let (tx, rx) = mpsc::channel(16);
            let length = crate::http::extract::content_length(req);
            (Some(RequestBody { chunks: rx, length }), Some((payload, tx)))
        }
        (None, Some(json)) => {
            let (tx, rx) = mpsc::channel(2);
            let length = Some(json.len() as u64);
            let _ = tx.try_send(UploadChunk::Data(json));
            let _ = tx.try_send(UploadChunk::Finish);
            headers.retain(|(k, _)| k != "content-type");
            headers.push(("content-type".into(), "application/json".into()));
            (Some(RequestBody { chunks: rx, length }), None)
        }
        (None, None) => (None, None),
    };
    let message = ForwardRequest {
        peer: f.peer,
        method: f.method.to_string(),
        path_and_query: f.path_and_query,
        headers,
        body,
        operation: f.operation,
        backend_op: f.backend_op,
    };
    let inactivity = node.settings.read_timeout;
    let proxy = match req.app_data::<crate::node::LocalPeerProxy>() {
        Some(local) => local.0.clone(),
        None => node.peers.clone(),
    };
    let send = proxy.send(message);
    let answer = match pump {
        Some((payload, tx)) => {
            let (answer, _) = tokio::join!(send, pump_payload(payload, tx, inactivity));
            answer
        }
        None => send.await,
    };
    let answer = answer??;
    if answer.status == 401 {
        // The client passed our authentication; only the shared secret can fail on the peer.
        return Err(ApiError::PeerError(
            "a peer rejected the internal proxy secret (check auth.internal_proxy_secret)".into(),
        ));
    }
    Ok(relay(answer, f.method == "HEAD"))
}

async fn pump_payload(mut payload: web::Payload, tx: mpsc::Sender<UploadChunk>, inactivity: std::time::Duration) {
    loop {
        match tokio::time::timeout(inactivity, payload.next()).await {
            Ok(Some(Ok(chunk))) => {
                if tx.send(UploadChunk::Data(chunk)).await.is_err() {
                    return;
                }
            }
            Ok(None) => {
                let _ = tx.send(UploadChunk::Finish).await;
                return;
            }
            // Dropping the sender without Finish aborts the forwarded upload.
            _ => return,
        }
    }
}

/// The peer's answer as our response: status, the relayed headers, the body streamed through.
fn relay(answer: ForwardedResponse, head: bool) -> HttpResponse {
    let status = StatusCode::from_u16(answer.status).unwrap_or(StatusCode::BAD_GATEWAY);
    let mut res = HttpResponse::build(status);
    for (name, value) in &answer.headers {
        let lower = name.to_ascii_lowercase();
        if (RELAYED.contains(&lower.as_str()) && lower != "content-length") || lower.starts_with("x-callfs-") {
            res.append_header((name.as_str(), value.as_slice()));
        }
    }
    let length = answer.header("content-length").and_then(|v| v.parse::<u64>().ok());
    if status == StatusCode::NOT_MODIFIED || status == StatusCode::NO_CONTENT {
        return res.finish();
    }
    if head {
        return res.body(AnnouncedLength(length.unwrap_or(0)));
    }
    let stream = futures_util::stream::unfold(answer.body, |mut rx| async move {
        let item = rx.recv().await?;
        Some((item.map_err(std::io::Error::other), rx))
    });
    match length {
        Some(len) => res.no_chunking(len).streaming(stream),
        None => res.streaming(stream),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::path::parse_json_path;

    #[test]
    fn segments_are_encoded_one_by_one() {
        let path = parse_json_path("/dir with space/a+b@c/x%y.txt").unwrap().path;
        assert_eq!(files_url(&path), "/v1/files/dir%20with%20space/a+b@c/x%25y.txt");
        assert_eq!(files_url(&parse_json_path("/").unwrap().path), "/v1/files/");
    }
}
