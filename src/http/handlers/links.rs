//! Single-use links (api.md §10): generation and the unauthenticated download.

use actix_web::http::header;
use actix_web::{web, HttpRequest, HttpResponse};
use callfs_actors::metadata::{ConsumeLink, CreateLink, GetLink};
use callfs_actors::metrics::{BackendOp, CrossServerOp, LinkConsumptionLabels, LinkStatus};
use chrono::Utc;
use serde::Deserialize;
use serde_json::json;

use crate::auth::Identity;
use crate::error::ApiError;
use crate::files::{self, Content};
use crate::http::forward::{files_url, forward, Forward};
use crate::http::handlers::files::read_json_object;
use crate::http::middleware::RequestContext;
use crate::links::content_disposition;
use crate::node::Node;
use crate::path::parse_json_path;

const BODY_LIMIT: usize = 4096;
const MAX_EXPIRY_SECONDS: i64 = 86_400;

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct GenerateBody {
    path: Option<String>,
    expiry_seconds: Option<serde_json::Value>,
}

pub async fn generate(node: &Node, identity: &Identity, payload: web::Payload) -> Result<HttpResponse, ApiError> {
    let body: GenerateBody = read_json_object(payload, BODY_LIMIT, node.settings.read_timeout).await?;
    let raw_path =
        body.path.filter(|p| !p.is_empty()).ok_or_else(|| ApiError::BadRequest("path is required".into()))?;
    let path = parse_json_path(&raw_path)?.path;
    let expiry = body
        .expiry_seconds
        .as_ref()
        .and_then(serde_json::Value::as_i64)
        .filter(|s| (1..=MAX_EXPIRY_SECONDS).contains(s))
        .ok_or_else(|| ApiError::BadRequest("expiry_seconds must be an integer from 1 to 86400".into()))?;
    let entry = files::read_entry(node, &path).await?;
    if entry.is_dir() {
        return Err(ApiError::BadRequest("links can only be generated for files".into()));
    }
    let (token, signature) = node.link_key.issue(path.as_str());
    let expires = Utc::now() + chrono::Duration::seconds(expiry);
    node.meta(CreateLink {
        token: token.clone(),
        file_path: path.as_str().to_string(),
        expires_at: expires.naive_utc(),
        signature,
        created_by: identity.user_id.clone(),
    })
    .await?;
    node.metrics.link_generations.inc();
    let short = crate::logging::short_token(&token);
    log::info!(path = path.as_str(), user_id = identity.user_id.as_str(), token = short.as_str(); "link generated");
    let expires = expires.to_rfc3339_opts(chrono::SecondsFormat::Secs, true);
    Ok(HttpResponse::Created().json(json!({
        "url": format!("{}/download/{token}", node.settings.external_url),
        "token": token,
        "expires": expires,
        "expires_at": expires,
    })))
}

fn consumption(node: &Node, status: LinkStatus) {
    node.metrics.link_consumptions.get_or_create(&LinkConsumptionLabels { status }).inc();
}

pub async fn download(
    req: &HttpRequest,
    node: &Node,
    ctx: &RequestContext,
    token: Option<String>,
) -> Result<HttpResponse, ApiError> {
    let link = match &token {
        Some(token) => node.meta(GetLink { token: token.clone() }).await?,
        None => None,
    };
    let (Some(link), Some(token)) = (link, token) else {
        consumption(node, LinkStatus::NotFound);
        return Err(ApiError::LinkNotFound);
    };
    if link.expires_at <= Utc::now().naive_utc() {
        consumption(node, LinkStatus::Expired);
        return Err(ApiError::LinkGone("LINK_EXPIRED", "the link has expired"));
    }
    if link.status != "active" {
        consumption(node, LinkStatus::Invalid);
        return Err(ApiError::LinkGone("LINK_USED", "the link has already been used"));
    }
    if !node.link_key.verify(&token, &link.file_path) {
        consumption(node, LinkStatus::Invalid);
        return Err(ApiError::LinkGone("LINK_INVALID", "the link signature does not verify"));
    }
    if !node.meta(ConsumeLink { token: token.clone(), client_ip: ctx.client_ip.to_string() }).await? {
        consumption(node, LinkStatus::Invalid);
        return Err(ApiError::LinkGone("LINK_USED", "the link has already been used"));
    }
    consumption(node, LinkStatus::Success);
    let short = crate::logging::short_token(&token);
    let ip = ctx.client_ip.to_string();
    log::info!(path = link.file_path.as_str(), client_ip = ip.as_str(), token = short.as_str(); "link consumed");

    let path = parse_json_path(&link.file_path)?.path;
    let entry = files::read_entry(node, &path).await?;
    if entry.is_dir() {
        return Err(ApiError::FileNotFound);
    }
    let disposition = content_disposition(&link.file_path);
    if let files::Route::Peer(owner) = files::route(node, &entry) {
        let f = Forward {
            peer: owner,
            method: "GET",
            path_and_query: files_url(&path),
            operation: CrossServerOp::ProxyRead,
            backend_op: BackendOp::Open,
            original_user: None,
            payload: None,
            json: None,
            client_headers: false,
        };
        let mut res = forward(req, node, f).await?;
        if res.status().is_success() {
            let headers = res.headers_mut();
            headers.insert(header::CONTENT_TYPE, header::HeaderValue::from_static("application/octet-stream"));
            headers.insert(header::CACHE_CONTROL, header::HeaderValue::from_static("no-store"));
            if let Ok(value) = header::HeaderValue::from_str(&disposition) {
                headers.insert(header::CONTENT_DISPOSITION, value);
            }
        }
        return Ok(res);
    }
    let (entry, opened) = files::open(node, entry).await?;
    let total = opened.total;
    let content = files::download_body(node, &entry, opened, 0, total);
    let mut res = HttpResponse::Ok();
    res.content_type("application/octet-stream")
        .insert_header((header::CONTENT_DISPOSITION, disposition))
        .insert_header((header::CACHE_CONTROL, "no-store"));
    Ok(match content {
        Content::Inline(bytes) => res.body(bytes),
        Content::Stream(stream, len) => res.no_chunking(len).streaming(stream),
    })
}
