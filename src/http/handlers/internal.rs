//! The internal blob endpoint (cluster.md §8): this node's localfs blobs by id, for relocations
//! by other nodes. Only a caller holding the internal secret may reach it; the handler checks that
//! itself as well as the pipeline.

use actix_web::http::{header, StatusCode};
use actix_web::{HttpRequest, HttpResponse};

use crate::auth::Identity;
use crate::error::ApiError;
use crate::files::{self, Content};
use crate::http::conditional::{plan, Conditions, Plan, Validators};
use crate::http::handlers::files::AnnouncedLength;
use crate::node::Node;

fn require_internal(identity: &Identity) -> Result<(), ApiError> {
    if identity.internal {
        Ok(())
    } else {
        Err(ApiError::PermissionDenied("internal endpoint".into()))
    }
}

/// `GET` / `HEAD /v1/internal/blobs/{blob}`: the blob's bytes (`Range` honoured).
pub async fn get_blob(
    req: &HttpRequest,
    node: &Node,
    identity: &Identity,
    blob: String,
    head: bool,
) -> Result<HttpResponse, ApiError> {
    require_internal(identity)?;
    let opened = files::open_local_blob(node, blob).await?;
    let total = opened.total;
    let mut res = HttpResponse::Ok();
    res.content_type("application/octet-stream").insert_header((header::ACCEPT_RANGES, "bytes"));
    if head {
        return Ok(res.body(AnnouncedLength(total)));
    }
    let range = req.headers().get(header::RANGE).and_then(|v| v.to_str().ok());
    let conditions = Conditions { range, if_range: None, if_none_match: None, if_modified_since: None };
    let validators = Validators { etag: "", mtime: chrono::NaiveDateTime::default() };
    let (offset, len) = match plan(&conditions, &validators, total) {
        Plan::Unsatisfiable => return Err(ApiError::RangeNotSatisfiable(total)),
        Plan::Partial { first, last } => {
            res.status(StatusCode::PARTIAL_CONTENT)
                .insert_header((header::CONTENT_RANGE, format!("bytes {first}-{last}/{total}")));
            (first, last - first + 1)
        }
        Plan::Full | Plan::NotModified => (0, total),
    };
    Ok(match opened.range(offset, len) {
        Content::Inline(bytes) => res.body(bytes),
        Content::Stream(stream, len) => res.no_chunking(len).streaming(stream),
    })
}
