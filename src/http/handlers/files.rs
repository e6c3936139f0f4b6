//! `/v1/files/{path}` (api.md §8).

use std::time::Duration;

use actix_web::body::{BodySize, MessageBody};
use actix_web::http::header::{self, HeaderName};
use actix_web::http::StatusCode;
use actix_web::{web, HttpRequest, HttpResponse, HttpResponseBuilder};
use bytes::Bytes;
use callfs_actors::metadata::Inode;
use futures_util::StreamExt;
use serde::Deserialize;
use serde_json::json;

use crate::auth::Identity;
use crate::error::ApiError;
use crate::files::{self, Content, MovePlan, MoveRequest, WriteMode, WritePlan, Written};
use crate::http::conditional::{http_date, plan, Conditions, Plan, Validators};
use crate::http::extract::content_length;
use crate::http::forward::{ensure_not_proxied, files_url, forward, Forward};
use crate::http::listing::{encode_cursor, json_body, page};
use crate::http::middleware::RequestContext;
use crate::node::Node;
use crate::path::{parse_json_path, validate_segment, ParsedPath};
use callfs_actors::metrics::{BackendOp, CrossServerOp};

const PATCH_BODY_LIMIT: usize = 1024 * 1024;

/// `YYYY-MM-DDTHH:MM:SSZ`, written digit by digit (chrono's format interpreter cost a GET more
/// than its metrics); years outside 0–9999 go through chrono.
pub fn rfc3339(t: chrono::NaiveDateTime) -> String {
    use chrono::{Datelike, Timelike};
    if !(0..=9999).contains(&t.year()) {
        return t.and_utc().format("%Y-%m-%dT%H:%M:%SZ").to_string();
    }
    let mut out = String::with_capacity(20);
    let mut push = |n: u32, width: u32, then: Option<char>| {
        for i in (0..width).rev() {
            out.push(char::from(b'0' + (n / 10u32.pow(i) % 10) as u8));
        }
        if let Some(c) = then {
            out.push(c);
        }
    };
    push(t.year() as u32, 4, Some('-'));
    push(t.month(), 2, Some('-'));
    push(t.day(), 2, Some('T'));
    push(t.hour(), 2, Some(':'));
    push(t.minute(), 2, Some(':'));
    push(t.second(), 2, Some('Z'));
    out
}

/// The metadata headers of api.md §8.0. `X-CallFS-Instance-ID` names the node holding the bytes;
/// S3 files belong to no node, so it names the node that served them.
fn metadata_headers(res: &mut HttpResponseBuilder, entry: &Inode, node: &Node) {
    // Static names: a name given as text is parsed and lower-cased on every insert.
    res.insert_header((HeaderName::from_static("x-callfs-type"), entry.kind.as_str()))
        .insert_header((HeaderName::from_static("x-callfs-size"), entry.size.to_string()))
        .insert_header((HeaderName::from_static("x-callfs-mode"), entry.mode.as_str()))
        .insert_header((HeaderName::from_static("x-callfs-owner"), entry.owner.as_str()))
        .insert_header((HeaderName::from_static("x-callfs-mtime"), rfc3339(entry.mtime)))
        .insert_header((HeaderName::from_static("x-callfs-backend"), entry.backend_type.as_str()));
    let shared = entry.is_file() && entry.backend().is_shared();
    let instance = if shared { Some(node.settings.instance_id.as_str()) } else { entry.callfs_instance_id.as_deref() };
    if let Some(instance) = instance {
        res.insert_header((HeaderName::from_static("x-callfs-instance-id"), instance));
    }
    if entry.is_file() {
        res.insert_header((header::ETAG, entry.etag()))
            .insert_header((header::LAST_MODIFIED, http_date(entry.mtime)))
            .insert_header((header::ACCEPT_RANGES, "bytes"))
            .content_type("application/octet-stream");
    } else {
        res.content_type("application/json");
    }
}

/// An empty body that still announces a length: HEAD responses carry the file's `Content-Length`.
pub struct AnnouncedLength(pub u64);

impl MessageBody for AnnouncedLength {
    type Error = std::convert::Infallible;

    fn size(&self) -> BodySize {
        BodySize::Sized(self.0)
    }

    fn poll_next(
        self: std::pin::Pin<&mut Self>,
        _cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Option<Result<Bytes, Self::Error>>> {
        std::task::Poll::Ready(None)
    }
}

fn header_str(req: &HttpRequest, name: header::HeaderName) -> Option<&str> {
    req.headers().get(name).and_then(|v| v.to_str().ok())
}

/// A forwarded call on behalf of the client (api.md §8, cluster.md §3).
fn to_owner<'a>(
    owner: String,
    method: &'static str,
    path: &crate::path::CanonicalPath,
    identity: &'a Identity,
    ops: (CrossServerOp, BackendOp),
) -> Forward<'a> {
    Forward {
        peer: owner,
        method,
        path_and_query: files_url(path),
        operation: ops.0,
        backend_op: ops.1,
        original_user: Some(identity),
        payload: None,
        json: None,
        client_headers: true,
    }
}

pub async fn get(
    req: &HttpRequest,
    node: &Node,
    identity: &Identity,
    parsed: ParsedPath,
) -> Result<HttpResponse, ApiError> {
    let (entry, prefetched) = files::read_entry_prefetched(node, &parsed.path).await?;
    if let files::Route::Peer(owner) = files::route(node, &entry) {
        ensure_not_proxied(identity)?;
        let ops = (CrossServerOp::ProxyRead, BackendOp::Open);
        return forward(req, node, to_owner(owner, "GET", &parsed.path, identity, ops)).await;
    }
    if entry.is_dir() {
        let mut res = HttpResponse::Ok();
        metadata_headers(&mut res, &entry, node);
        let listing = files::open_listing(node, &entry, page(req.query_string())?, false).await?;
        if let Some(next) = &listing.next_after {
            res.insert_header(("X-CallFS-Next-After", encode_cursor(next)));
        }
        return Ok(res.streaming(json_body(b"[".to_vec(), listing.rows(), b"]")));
    }
    let conditions = Conditions {
        range: header_str(req, header::RANGE),
        if_range: header_str(req, header::IF_RANGE),
        if_none_match: header_str(req, header::IF_NONE_MATCH),
        if_modified_since: header_str(req, header::IF_MODIFIED_SINCE),
    };
    let etag = entry.etag();
    let validators = Validators { etag: &etag, mtime: entry.mtime };
    if plan(&conditions, &validators, entry.size as u64) == Plan::NotModified {
        let mut res = HttpResponse::NotModified();
        metadata_headers(&mut res, &entry, node);
        return Ok(res.finish());
    }
    // Headers and ranges come from the row whose blob was opened: they always name the bytes sent.
    let (entry, opened) = files::open_prefetched(node, entry, prefetched).await?;
    let mut res = HttpResponse::Ok();
    metadata_headers(&mut res, &entry, node);
    let etag = entry.etag();
    let validators = Validators { etag: &etag, mtime: entry.mtime };
    let total = opened.total;
    let (offset, len) = match plan(&conditions, &validators, total) {
        Plan::NotModified | Plan::Full => (0, total),
        Plan::Unsatisfiable => return Err(ApiError::RangeNotSatisfiable(total)),
        Plan::Partial { first, last } => {
            res.status(StatusCode::PARTIAL_CONTENT)
                .insert_header((header::CONTENT_RANGE, format!("bytes {first}-{last}/{total}")));
            (first, last - first + 1)
        }
    };
    Ok(match files::download_body(node, &entry, opened, offset, len) {
        Content::Inline(bytes) => res.body(bytes),
        Content::Stream(stream, len) => res.no_chunking(len).streaming(stream),
    })
}

pub async fn head(
    req: &HttpRequest,
    node: &Node,
    identity: &Identity,
    parsed: ParsedPath,
) -> Result<HttpResponse, ApiError> {
    let entry = files::read_entry(node, &parsed.path).await?;
    if let files::Route::Peer(owner) = files::route(node, &entry) {
        ensure_not_proxied(identity)?;
        let ops = (CrossServerOp::ProxyHead, BackendOp::Stat);
        return forward(req, node, to_owner(owner, "HEAD", &parsed.path, identity, ops)).await;
    }
    let mut res = HttpResponse::Ok();
    metadata_headers(&mut res, &entry, node);
    let length = if entry.is_file() { entry.size as u64 } else { 0 };
    Ok(res.body(AnnouncedLength(length)))
}

pub async fn post(
    req: &HttpRequest,
    node: &Node,
    identity: &Identity,
    parsed: ParsedPath,
    ctx: &RequestContext,
    payload: web::Payload,
) -> Result<HttpResponse, ApiError> {
    if parsed.directory_form {
        let created = files::create_directory(node, identity, &parsed.path).await?;
        return Ok(if created { HttpResponse::Created().finish() } else { HttpResponse::Ok().finish() });
    }
    let length = content_length(req);
    let plan = files::plan_write(node, identity, &parsed.path, WriteMode::CreateOnly, length).await?;
    let WritePlan::Local(local) = plan else {
        return Err(ApiError::Internal("a create was routed to another node".into()));
    };
    let _slot = node.upload_slots.admit(ctx.client_ip)?;
    let body = files::body_stream(payload, node.settings.read_timeout);
    files::write_file(node, identity, &parsed.path, WriteMode::CreateOnly, local, body).await?;
    Ok(HttpResponse::Created().finish())
}

pub async fn put(
    req: &HttpRequest,
    node: &Node,
    identity: &Identity,
    parsed: ParsedPath,
    ctx: &RequestContext,
    payload: web::Payload,
) -> Result<HttpResponse, ApiError> {
    if parsed.directory_form || parsed.path.is_root() {
        return Err(ApiError::BadRequest("PUT needs a file path, not a directory".into()));
    }
    let length = content_length(req);
    let mode = WriteMode::CreateOrReplace;
    let local = match files::plan_write(node, identity, &parsed.path, mode, length).await? {
        WritePlan::Local(local) => local,
        WritePlan::Forward(owner) => {
            ensure_not_proxied(identity)?;
            let ops = (CrossServerOp::ProxyWrite, BackendOp::Update);
            let f = Forward { payload: Some(payload), ..to_owner(owner, "PUT", &parsed.path, identity, ops) };
            return forward(req, node, f).await;
        }
    };
    let _slot = node.upload_slots.admit(ctx.client_ip)?;
    let body = files::body_stream(payload, node.settings.read_timeout);
    let written = files::write_file(node, identity, &parsed.path, mode, local, body).await?;
    Ok(match written {
        Written::Created => HttpResponse::Created().finish(),
        Written::Replaced => HttpResponse::Ok().finish(),
    })
}

pub async fn delete(
    req: &HttpRequest,
    node: &Node,
    identity: &Identity,
    parsed: ParsedPath,
) -> Result<HttpResponse, ApiError> {
    if let Err(owner) = files::plan_delete(node, identity, &parsed.path).await? {
        ensure_not_proxied(identity)?;
        let ops = (CrossServerOp::ProxyDelete, BackendOp::Delete);
        return forward(req, node, to_owner(owner, "DELETE", &parsed.path, identity, ops)).await;
    }
    files::delete_entry(node, identity, &parsed.path).await?;
    Ok(HttpResponse::NoContent().finish())
}

/// PATCH body (api.md §8.5); `null` means absent.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct PatchBody {
    name: Option<String>,
    destination: Option<String>,
    backend: Option<String>,
    instance: Option<String>,
    overwrite: Option<bool>,
    create_parents: Option<bool>,
}

pub async fn patch(
    req: &HttpRequest,
    node: &Node,
    identity: &Identity,
    parsed: ParsedPath,
    payload: web::Payload,
) -> Result<HttpResponse, ApiError> {
    let body: PatchBody = read_json_object(payload, PATCH_BODY_LIMIT, node.settings.read_timeout).await?;
    let request = move_request(req, parsed.path, body)?;
    let owner = match files::plan_move(node, identity, &request).await? {
        MovePlan::Unchanged => return Ok(HttpResponse::Ok().json(json!({"path": request.destination.as_str()}))),
        MovePlan::Local => None,
        MovePlan::Relocate => {
            let destination = files::relocate_entry(node, identity, request).await?;
            return Ok(HttpResponse::Ok().json(json!({"path": destination.as_str()})));
        }
        MovePlan::Forward(owner) => Some(owner),
    };
    if let Some(owner) = owner {
        ensure_not_proxied(identity)?;
        let mut body = json!({
            "destination": request.destination.as_str(),
            "overwrite": request.overwrite,
            "create_parents": request.create_parents,
        });
        if let Some(instance) = &request.instance {
            body["instance"] = json!(instance);
        }
        let ops = (CrossServerOp::ProxyMove, BackendOp::Move);
        let f = Forward {
            json: Some(Bytes::from(body.to_string())),
            ..to_owner(owner, "PATCH", &request.source, identity, ops)
        };
        return forward(req, node, f).await;
    }
    let destination = files::move_entry(node, identity, request).await?;
    Ok(HttpResponse::Ok().json(json!({"path": destination.as_str()})))
}

fn move_request(
    req: &HttpRequest,
    source: crate::path::CanonicalPath,
    body: PatchBody,
) -> Result<MoveRequest, ApiError> {
    let name = body.name.filter(|n| !n.is_empty());
    let destination = body.destination.filter(|d| !d.is_empty());
    let (destination, is_rename) = match (name, destination) {
        (Some(name), None) => {
            validate_segment(&name)?;
            let parent = source.parent().ok_or_else(|| ApiError::BadRequest("the root cannot be renamed".into()))?;
            (parent.join(&name), true)
        }
        (None, Some(destination)) => (parse_json_path(&destination)?.path, false),
        _ => return Err(ApiError::BadRequest("exactly one of name and destination is required".into())),
    };
    let overwrite_query = req.query_string().split('&').any(|kv| kv == "overwrite=true");
    Ok(MoveRequest {
        source,
        destination,
        overwrite: body.overwrite.unwrap_or(false) || overwrite_query,
        create_parents: body.create_parents.unwrap_or(false),
        is_rename,
        backend: body.backend.filter(|b| !b.is_empty()),
        instance: body.instance.filter(|i| !i.is_empty()),
    })
}

/// Reads a small JSON body that must be an object: at most `limit` bytes, each read within
/// `inactivity` (`server.read_timeout`, else 408).
pub async fn read_json_object<T: serde::de::DeserializeOwned>(
    mut payload: web::Payload,
    limit: usize,
    inactivity: Duration,
) -> Result<T, ApiError> {
    let mut body = web::BytesMut::new();
    loop {
        let next = tokio::time::timeout(inactivity, payload.next()).await.map_err(|_| ApiError::RequestTimeout)?;
        let Some(chunk) = next else { break };
        let chunk = chunk.map_err(|e| ApiError::BadRequest(format!("request body: {e}")))?;
        if body.len() + chunk.len() > limit {
            return Err(ApiError::BadRequest(format!("JSON body larger than {limit} bytes")));
        }
        body.extend_from_slice(&chunk);
    }
    let value: serde_json::Value =
        serde_json::from_slice(&body).map_err(|e| ApiError::BadRequest(format!("invalid JSON body: {e}")))?;
    if !value.is_object() {
        return Err(ApiError::BadRequest("the JSON body must be an object".into()));
    }
    serde_json::from_value(value).map_err(|e| ApiError::BadRequest(format!("invalid JSON body: {e}")))
}

#[cfg(test)]
mod tests {
    #[test]
    fn rfc3339_matches_chrono() {
        for text in ["2026-11-30 07:02:05.25", "0999-01-09 23:59:59", "9999-12-31 00:00:00"] {
            let t = chrono::NaiveDateTime::parse_from_str(text, "%F %T%.f").unwrap();
            assert_eq!(super::rfc3339(t), t.and_utc().format("%Y-%m-%dT%H:%M:%SZ").to_string());
        }
    }
}
