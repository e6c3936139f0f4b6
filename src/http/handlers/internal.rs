//! Internal byte endpoints (cluster.md §8): this node's localfs bytes only, never metadata.

use actix_web::{web, HttpRequest, HttpResponse};
use callfs_actors::storage::localfs::{DeleteFile, MovePath};
use serde::Deserialize;

use crate::error::ApiError;
use crate::http::extract::path_under;
use crate::http::handlers::files::read_limited;
use crate::node::Node;
use crate::path::parse_json_path;

pub async fn delete_bytes(req: HttpRequest, node: web::Data<Node>) -> Result<HttpResponse, ApiError> {
    let parsed = path_under(&req, "/v1/internal/localfs")?;
    node.disk(DeleteFile { path: parsed.path.as_str().to_string() }).await?;
    Ok(HttpResponse::NoContent().finish())
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct MoveBody {
    from: String,
    to: String,
}

pub async fn move_bytes(node: web::Data<Node>, payload: web::Payload) -> Result<HttpResponse, ApiError> {
    let body = read_limited(payload, 64 * 1024).await?;
    let body: MoveBody =
        serde_json::from_slice(&body).map_err(|e| ApiError::BadRequest(format!("invalid JSON body: {e}")))?;
    let from = parse_json_path(&body.from)?.path;
    let to = parse_json_path(&body.to)?.path;
    if from.is_root() || to.is_root() {
        return Err(ApiError::BadRequest("the root cannot be moved".into()));
    }
    node.disk(MovePath { from: from.as_str().into(), to: to.as_str().into(), replace: false }).await?;
    Ok(HttpResponse::NoContent().finish())
}
