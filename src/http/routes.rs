//! The single route table (api.md §2), driven by the [`Endpoint`] the pipeline classified: actix's
//! own router never sees the path, so what was authenticated is exactly what is served.

use std::panic::AssertUnwindSafe;

use actix_web::{web, HttpMessage, HttpRequest, HttpResponse};
use futures_util::FutureExt;

use crate::auth::Identity;
use crate::error::ApiError;
use crate::http::endpoint::{Endpoint, Guard};
use crate::http::handlers::{directories, files, internal, links, system};
use crate::http::middleware::RequestContext;
use crate::node::Node;

/// The main listener: every request lands here, after the pipeline.
pub fn configure(cfg: &mut web::ServiceConfig) {
    cfg.default_service(web::to(dispatch));
}

/// The dedicated metrics listener: `/metrics` and `/health` only, never authenticated.
pub fn configure_metrics_listener(cfg: &mut web::ServiceConfig) {
    cfg.route("/metrics", web::get().to(system::metrics)).route("/health", web::get().to(system::health));
}

/// Runs the handler of the request's endpoint; a panic becomes one logged `500 INTERNAL_ERROR`.
async fn dispatch(req: HttpRequest, node: web::Data<Node>, payload: web::Payload) -> Result<HttpResponse, ApiError> {
    let classified = req.extensions_mut().remove::<Classified>();
    let Some(Classified { endpoint, guard }) = classified else {
        return Err(ApiError::Internal("request was not classified".into()));
    };
    let identity = req.extensions().get::<Identity>().cloned();
    // Defence in depth: the pipeline authenticated, and the dispatcher refuses to run without it.
    let identity = match (guard, identity) {
        (Guard::Public, identity) => identity,
        (Guard::Bearer, Some(identity)) => Some(identity),
        (Guard::Internal, Some(identity)) if identity.internal => Some(identity),
        (Guard::Internal, Some(_)) => return Err(ApiError::PermissionDenied("internal endpoint".into())),
        (_, None) => return Err(ApiError::AuthenticationFailed),
    };
    let ctx = req
        .extensions()
        .get::<RequestContext>()
        .cloned()
        .ok_or_else(|| ApiError::Internal("request context missing".into()))?;
    let run = AssertUnwindSafe(serve(endpoint, req, node, identity, ctx, payload));
    match run.catch_unwind().await {
        Ok(result) => result,
        Err(panic) => {
            let what = panic
                .downcast_ref::<&str>()
                .map(|s| (*s).to_string())
                .or_else(|| panic.downcast_ref::<String>().cloned())
                .unwrap_or_default();
            log::error!(panic = what.as_str(); "request handler panicked");
            Err(ApiError::Internal(format!("handler panicked: {what}")))
        }
    }
}

/// The endpoint and the guard the pipeline applied, handed to [`dispatch`].
pub struct Classified {
    pub endpoint: Endpoint,
    pub guard: Guard,
}

async fn serve(
    endpoint: Endpoint,
    req: HttpRequest,
    node: web::Data<Node>,
    identity: Option<Identity>,
    ctx: RequestContext,
    payload: web::Payload,
) -> Result<HttpResponse, ApiError> {
    use Endpoint::*;
    let identity = || identity.clone().ok_or(ApiError::AuthenticationFailed);
    match endpoint {
        Health => Ok(system::health().await),
        Ready => Ok(system::ready(node).await),
        Metrics => system::metrics_on(&node).await,
        GetFile(path) => files::get(&req, &node, &identity()?, path?).await,
        HeadFile(path) => files::head(&req, &node, &identity()?, path?).await,
        PostFile(path) => files::post(&req, &node, &identity()?, path?, &ctx, payload).await,
        PutFile(path) => files::put(&req, &node, &identity()?, path?, &ctx, payload).await,
        PatchFile(path) => files::patch(&req, &node, &identity()?, path?, payload).await,
        DeleteFile(path) => files::delete(&req, &node, &identity()?, path?).await,
        ListDirectory(path) => directories::list(&req, &node, path?).await,
        GenerateLink => links::generate(&node, &identity()?, payload).await,
        DownloadLink(token) => links::download(&req, &node, &ctx, token).await,
        GetBlob(blob) => internal::get_blob(&req, &node, &identity()?, blob, false).await,
        HeadBlob(blob) => internal::get_blob(&req, &node, &identity()?, blob, true).await,
        MethodNotAllowed { allow, .. } => Err(ApiError::MethodNotAllowed(allow)),
        NotFound => Err(ApiError::RouteNotFound),
    }
}
