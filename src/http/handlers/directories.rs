//! `GET /v1/directories/{path}` (api.md §9).

use actix_web::{HttpRequest, HttpResponse};
use serde_json::json;

use crate::error::ApiError;
use crate::files;
use crate::http::handlers::files::item;
use crate::node::Node;
use crate::path::ParsedPath;

const DEFAULT_MAX_DEPTH: u32 = 100;
const MAX_DEPTH_CAP: u32 = 1000;

/// `recursive` is on only for exactly `true`; `max_depth` falls back to 100 and is capped at 1000.
pub fn listing_options(query: &str) -> (bool, u32) {
    let mut recursive = false;
    let mut max_depth = DEFAULT_MAX_DEPTH;
    for pair in query.split('&') {
        let (key, value) = pair.split_once('=').unwrap_or((pair, ""));
        match key {
            "recursive" => recursive = value == "true",
            "max_depth" => {
                max_depth = value
                    .parse::<i64>()
                    .ok()
                    .filter(|d| *d >= 0)
                    .map_or(DEFAULT_MAX_DEPTH, |d| d.min(i64::from(MAX_DEPTH_CAP)) as u32)
            }
            _ => {}
        }
    }
    (recursive, max_depth)
}

pub async fn list(req: &HttpRequest, node: &Node, parsed: ParsedPath) -> Result<HttpResponse, ApiError> {
    let dir = files::read_entry(node, &parsed.path).await?;
    if !dir.is_dir() {
        return Err(ApiError::BadRequest("the path is not a directory".into()));
    }
    let (recursive, max_depth) = listing_options(req.query_string());
    let entries = if recursive {
        files::list_tree(node, &dir, max_depth).await?
    } else {
        files::list_children(node, &dir).await?
    };
    let items: Vec<_> = entries.iter().map(item).collect();
    let mut body = json!({"path": dir.path, "type": "directory", "recursive": recursive});
    if recursive {
        body["max_depth"] = json!(max_depth);
    }
    body["count"] = json!(items.len());
    body["items"] = serde_json::Value::Array(items);
    Ok(HttpResponse::Ok()
        .insert_header(("X-CallFS-Type", "directory"))
        .insert_header(("X-CallFS-Count", entries.len().to_string()))
        .insert_header(("X-CallFS-Recursive", recursive.to_string()))
        .content_type("application/json")
        .body(body.to_string()))
}

#[cfg(test)]
mod tests {
    use super::listing_options;

    #[test]
    fn query_rules() {
        assert_eq!(listing_options(""), (false, 100));
        assert_eq!(listing_options("recursive=true&max_depth=2"), (true, 2));
        assert_eq!(listing_options("recursive=TRUE"), (false, 100));
        assert_eq!(listing_options("recursive=true&max_depth=-1"), (true, 100));
        assert_eq!(listing_options("recursive=true&max_depth=x"), (true, 100));
        assert_eq!(listing_options("recursive=true&max_depth=5000"), (true, 1000));
        assert_eq!(listing_options("recursive=true&max_depth=0"), (true, 0));
    }
}
