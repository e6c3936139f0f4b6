//! Arbitrary method and raw URL path → `Endpoint::classify`, then every decision derived from it.
//! Invariants: nothing panics; classification is deterministic; a public guard only ever goes
//! with a public endpoint; `/v1/...` always needs a key and `/v1/internal/...` the internal
//! secret; `/metrics` with `require_auth` is never public; no route label without a literal
//! route prefix; parsed `{path}`s are canonical; a download token never reaches the log whole.
#![no_main]

use actix_web::http::Method;
use callfs::http::endpoint::{Endpoint, Guard};
use callfs::path::{parse_json_path, MAX_PATH_BYTES};
use libfuzzer_sys::fuzz_target;

const METHODS: [&str; 9] = ["GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS", "TRACE", "PROPFIND"];
const PUBLIC_ROUTES: [&str; 4] = ["/health", "/ready", "/metrics", "/download/{token}"];

fuzz_target!(|data: &[u8]| {
    let Some((&m, rest)) = data.split_first() else {
        return;
    };
    let method = Method::from_bytes(METHODS[m as usize % METHODS.len()].as_bytes()).expect("a valid method");
    let raw = String::from_utf8_lossy(rest);
    let raw = raw.as_ref();

    let endpoint = Endpoint::classify(&method, raw);
    assert_eq!(endpoint, Endpoint::classify(&method, raw), "classification is deterministic");
    let label = endpoint.label().as_str();
    let guard = endpoint.guard(raw, false);
    let _ = (endpoint.pre_auth_limiter(), endpoint.post_auth_limiter());

    if guard == Guard::Public {
        let public = match &endpoint {
            Endpoint::Health | Endpoint::Ready | Endpoint::Metrics | Endpoint::DownloadLink(_) => true,
            Endpoint::NotFound => !raw.starts_with("/v1/") && raw != "/v1",
            Endpoint::MethodNotAllowed { route, .. } => PUBLIC_ROUTES.contains(&route.as_str()),
            _ => false,
        };
        assert!(public, "{method} {raw:?} → {endpoint:?} must not be public");
    }
    if raw.starts_with("/v1/internal/") {
        assert_eq!(guard, Guard::Internal, "{method} {raw:?} → {endpoint:?}");
    } else if raw.starts_with("/v1/") {
        assert_eq!(guard, Guard::Bearer, "{method} {raw:?} → {endpoint:?}");
    }
    if label == "/metrics" {
        assert_eq!(endpoint.guard(raw, true), Guard::Bearer, "{method} {raw:?} with metrics.require_auth");
    }
    assert_eq!(label == "unmatched", endpoint == Endpoint::NotFound, "{method} {raw:?} → {endpoint:?}");
    let literal_prefix = match label {
        "/v1/files/*" => raw.starts_with("/v1/files"),
        "/v1/directories/*" => raw.starts_with("/v1/directories"),
        "/download/{token}" => raw.starts_with("/download/"),
        "/v1/internal/blobs/*" => raw.starts_with("/v1/internal/blobs/"),
        "unmatched" => true,
        exact => raw == exact,
    };
    assert!(literal_prefix, "{method} {raw:?} labelled {label} without its literal route");

    let parsed = match &endpoint {
        Endpoint::GetFile(p)
        | Endpoint::HeadFile(p)
        | Endpoint::PostFile(p)
        | Endpoint::PutFile(p)
        | Endpoint::PatchFile(p)
        | Endpoint::DeleteFile(p)
        | Endpoint::ListDirectory(p) => Some(p),
        Endpoint::GetBlob(blob) | Endpoint::HeadBlob(blob) => {
            assert!(!blob.is_empty(), "{method} {raw:?}: empty blob id");
            None
        }
        _ => None,
    };
    if let Some(Ok(p)) = parsed {
        let s = p.path.as_str();
        assert!(s.starts_with('/') && s.len() <= MAX_PATH_BYTES, "canonical path {s:?}");
        assert_eq!(parse_json_path(s).map(|q| q.path), Ok(p.path.clone()), "canonical path {s:?} reparses to itself");
    }

    let logged = endpoint.log_path(raw);
    if let Endpoint::DownloadLink(token) = &endpoint {
        assert!(logged.starts_with("/download/") && logged.ends_with("..."), "download log path {logged:?}");
        assert!(logged.chars().count() <= "/download/".len() + 11, "download log path {logged:?}");
        if let Some(token) = token {
            assert!(!token.is_empty() && !token.contains('/'), "token {token:?}");
            // At most the first 8 characters of the token reach the log.
            let shown: String = token.chars().take(8).collect();
            assert_eq!(logged, format!("/download/{shown}..."), "token {token:?} logged as {logged:?}");
        }
    } else {
        assert_eq!(logged, raw, "other endpoints log the path as received");
    }
});
