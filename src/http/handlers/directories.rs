//! `GET /v1/directories/{path}` (api.md §9).

use actix_web::{HttpRequest, HttpResponse};

use crate::error::ApiError;
use crate::files;
use crate::http::listing::{directory_head, encode_cursor, json_body, shape};
use crate::node::Node;
use crate::path::ParsedPath;

pub async fn list(req: &HttpRequest, node: &Node, parsed: ParsedPath) -> Result<HttpResponse, ApiError> {
    let dir = files::read_entry(node, &parsed.path).await?;
    if !dir.is_dir() {
        return Err(ApiError::BadRequest("the path is not a directory".into()));
    }
    let (recursive, max_depth, shape) = shape(req.query_string())?;
    let listing = files::open_listing(node, &dir, shape, true).await?;
    let mut res = HttpResponse::Ok();
    res.insert_header(("X-CallFS-Type", "directory"))
        .insert_header(("X-CallFS-Count", listing.count.to_string()))
        .insert_header(("X-CallFS-Recursive", recursive.to_string()))
        .content_type("application/json");
    if let Some(next) = &listing.next_after {
        res.insert_header(("X-CallFS-Next-After", encode_cursor(next)));
    }
    let head = directory_head(&dir.path, recursive, max_depth, listing.count);
    Ok(res.streaming(json_body(head, listing.rows(), b"]}")))
}
