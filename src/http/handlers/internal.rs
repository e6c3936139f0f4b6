//! Internal byte endpoints (cluster.md §8): this node's localfs bytes only, never metadata.
//! Only a caller holding the internal secret may reach them; each handler checks that itself.

use actix_web::{web, HttpResponse};
use callfs_actors::storage::localfs::{DeleteFile, MovePath};
use serde::Deserialize;

use crate::auth::Identity;
use crate::error::ApiError;
use crate::http::handlers::files::read_json_object;
use crate::node::Node;
use crate::path::{parse_json_path, ParsedPath};

fn require_internal(identity: &Identity) -> Result<(), ApiError> {
    if identity.internal {
        Ok(())
    } else {
        Err(ApiError::PermissionDenied("internal endpoint".into()))
    }
}

pub async fn delete_bytes(node: &Node, identity: &Identity, parsed: ParsedPath) -> Result<HttpResponse, ApiError> {
    require_internal(identity)?;
    if parsed.path.is_root() {
        return Err(ApiError::BadRequest("the root cannot be deleted".into()));
    }
    node.disk(DeleteFile { path: parsed.path.as_str().to_string() }).await?;
    Ok(HttpResponse::NoContent().finish())
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct MoveBody {
    from: String,
    to: String,
}

pub async fn move_bytes(node: &Node, identity: &Identity, payload: web::Payload) -> Result<HttpResponse, ApiError> {
    require_internal(identity)?;
    let body: MoveBody = read_json_object(payload, 64 * 1024, node.settings.read_timeout).await?;
    let from = parse_json_path(&body.from)?.path;
    let to = parse_json_path(&body.to)?.path;
    if from.is_root() || to.is_root() {
        return Err(ApiError::BadRequest("the root cannot be moved".into()));
    }
    node.disk(MovePath { from: from.as_str().into(), to: to.as_str().into(), replace: false }).await?;
    Ok(HttpResponse::NoContent().finish())
}
