//! The single route table (api.md §2).

use actix_web::web;

use crate::http::handlers::{directories, files, internal, links, system};
use crate::http::middleware::method_not_allowed;

pub fn configure(cfg: &mut web::ServiceConfig) {
    cfg.service(
        web::resource("/health")
            .route(web::get().to(system::health))
            .route(web::head().to(system::health))
            .default_service(web::to(method_not_allowed("GET, HEAD"))),
    )
    .service(
        web::resource("/ready")
            .route(web::get().to(system::ready))
            .route(web::head().to(system::ready))
            .default_service(web::to(method_not_allowed("GET, HEAD"))),
    )
    .service(
        web::resource("/metrics")
            .route(web::get().to(system::metrics))
            .route(web::head().to(system::metrics))
            .default_service(web::to(method_not_allowed("GET, HEAD"))),
    )
    .service(
        web::resource(["/v1/files", "/v1/files/{tail:.*}"])
            .route(web::get().to(files::get))
            .route(web::head().to(files::head))
            .route(web::post().to(files::post))
            .route(web::put().to(files::put))
            .route(web::patch().to(files::patch))
            .route(web::delete().to(files::delete))
            .default_service(web::to(method_not_allowed("GET, HEAD, POST, PUT, PATCH, DELETE"))),
    )
    .service(
        web::resource(["/v1/directories", "/v1/directories/{tail:.*}"])
            .route(web::get().to(directories::list))
            .default_service(web::to(method_not_allowed("GET"))),
    )
    .service(
        web::resource("/v1/links/generate")
            .route(web::post().to(links::generate))
            .default_service(web::to(method_not_allowed("POST"))),
    )
    .service(
        web::resource("/download/{token}")
            .route(web::get().to(links::download))
            .default_service(web::to(method_not_allowed("GET"))),
    )
    .service(
        web::resource("/v1/internal/localfs-move")
            .route(web::post().to(internal::move_bytes))
            .default_service(web::to(method_not_allowed("POST"))),
    )
    .service(
        web::resource("/v1/internal/localfs/{tail:.*}")
            .route(web::delete().to(internal::delete_bytes))
            .default_service(web::to(method_not_allowed("DELETE"))),
    );
}

/// The dedicated metrics listener: `/metrics` and `/health` only.
pub fn configure_metrics_listener(cfg: &mut web::ServiceConfig) {
    cfg.route("/metrics", web::get().to(system::metrics)).route("/health", web::get().to(system::health));
}
