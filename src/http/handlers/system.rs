//! `/health`, `/ready`, `/metrics` (api.md §7).

use std::time::Duration;

use actix_web::{web, HttpResponse};
use callfs_actors::locks::PingLeases;
use callfs_actors::metadata::Ping;
use callfs_actors::metrics::{RenderMetrics, CONTENT_TYPE};
use callfs_actors::storage::localfs::CheckRoot;
use serde_json::{json, Map, Value};

use crate::error::ApiError;
use crate::node::Node;

const READY_CHECK_TIMEOUT: Duration = Duration::from_secs(2);

pub async fn health() -> HttpResponse {
    HttpResponse::Ok().content_type("application/json").body(r#"{"status":"ok"}"#)
}

/// A short, path-free verdict for the unauthenticated body; the detail goes to the log.
fn verdict<E: std::fmt::Display>(check: &str, result: Result<Result<(), E>, tokio::time::error::Elapsed>) -> String {
    match result {
        Ok(Ok(())) => "ok".to_string(),
        Ok(Err(err)) => {
            let detail = err.to_string();
            log::warn!(check = check, error = detail.as_str(); "readiness check failed");
            "failed: unavailable".to_string()
        }
        Err(_) => "failed: timed out".to_string(),
    }
}

pub async fn ready(node: web::Data<Node>) -> HttpResponse {
    ready_on(&node).await
}

async fn ready_on(node: &Node) -> HttpResponse {
    let metadata = tokio::time::timeout(READY_CHECK_TIMEOUT, async {
        node.metadata.send(Ping).await.map_err(|e| e.to_string())?.map_err(|e| e.to_string())
    });
    let localfs = tokio::time::timeout(READY_CHECK_TIMEOUT, async {
        node.localfs.send(CheckRoot).await.map_err(|e| e.to_string())?.map_err(|e| e.to_string())
    });
    let locks = async {
        match &node.lease_store {
            Some(store) => Some(
                tokio::time::timeout(READY_CHECK_TIMEOUT, async {
                    store.send(PingLeases).await.map_err(|e| e.to_string())?.map_err(|e| e.to_string())
                })
                .await,
            ),
            None => None,
        }
    };
    let s3 = async {
        match &node.s3 {
            Some(worker) => Some(tokio::time::timeout(READY_CHECK_TIMEOUT, worker.check_bucket()).await),
            None => None,
        }
    };
    let (metadata, localfs, locks, s3) = tokio::join!(metadata, localfs, locks, s3);
    let mut checks = Map::new();
    checks.insert("metadata_store".into(), Value::String(verdict("metadata_store", metadata)));
    if let Some(locks) = locks {
        checks.insert("locks".into(), Value::String(verdict("locks", locks)));
    }
    checks.insert("localfs".into(), Value::String(verdict("localfs", localfs)));
    if let Some(s3) = s3 {
        checks.insert("s3".into(), Value::String(verdict("s3", s3)));
    }
    let ok = checks.values().all(|v| v == "ok");
    let body = json!({"status": if ok { "ready" } else { "not_ready" }, "checks": checks});
    let mut res = if ok { HttpResponse::Ok() } else { HttpResponse::ServiceUnavailable() };
    res.content_type("application/json").body(body.to_string())
}

pub async fn metrics(node: web::Data<Node>) -> Result<HttpResponse, ApiError> {
    metrics_on(&node).await
}

pub async fn metrics_on(node: &Node) -> Result<HttpResponse, ApiError> {
    let text = node
        .metrics_actor
        .send(RenderMetrics)
        .await?
        .map_err(|e| ApiError::Internal(format!("metrics encoding: {e}")))?;
    Ok(HttpResponse::Ok().content_type(CONTENT_TYPE).body(text))
}
