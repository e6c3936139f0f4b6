//! A request is classified exactly once, from the raw request path as sent on the wire, into an
//! [`Endpoint`]. That one value decides the authentication guard, the rate limiters, the metrics
//! `path` label, the request-log path and the handler that runs (`routes::dispatch`); nothing else
//! looks at the request path to decide behaviour. A path that is not literally one of the route
//! prefixes below matches nothing: `/%76%31/files/x` is not `/v1/files/x`, so it can never be
//! authenticated as one thing and served as another.

use actix_web::http::Method;
use callfs_actors::metrics::RouteLabel;

use crate::path::{parse_url_path, ParsedPath, PathError};

/// The `{path}` of a file route: parsed with the route, reported (as `400`) only after
/// authentication and route resolution (api.md §3 stages 4, 5, 7).
pub type UrlPath = Result<ParsedPath, PathError>;

/// Who may call an endpoint (api.md §2, security.md §4).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Guard {
    /// No credentials needed.
    Public,
    /// Any API key or the internal secret.
    Bearer,
    /// Only the internal secret: `401` without it, `403` for an ordinary key.
    Internal,
}

/// A rate limiter of api.md §11.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Limiter {
    /// The optional API limiter, before authentication.
    Api,
    /// The download limiter, before the token is looked up.
    Downloads,
    /// The link-generation limiter, after authentication.
    Links,
}

/// Every request the node answers, with everything its handler needs from the URL.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Endpoint {
    Health,
    Ready,
    Metrics,
    GetFile(UrlPath),
    HeadFile(UrlPath),
    PostFile(UrlPath),
    PutFile(UrlPath),
    PatchFile(UrlPath),
    DeleteFile(UrlPath),
    ListDirectory(UrlPath),
    GenerateLink,
    /// `None` when the token cannot be a token (bad escape, `/`): answered like an unknown token.
    DownloadLink(Option<String>),
    /// `/v1/internal/blobs/{blob}`: the raw id, checked by the handler (`400` unless 32 hex).
    GetBlob(String),
    HeadBlob(String),
    /// A known route with a method it does not support.
    MethodNotAllowed {
        route: RouteLabel,
        allow: &'static str,
    },
    /// No route matches.
    NotFound,
}

const FILES: &str = "/v1/files";
const DIRECTORIES: &str = "/v1/directories";
const DOWNLOAD: &str = "/download/";
const INTERNAL: &str = "/v1/internal/";
const INTERNAL_BLOBS: &str = "/v1/internal/blobs/";

/// `rest` when `path` is `prefix` or `prefix/...`.
fn tail<'a>(path: &'a str, prefix: &str) -> Option<&'a str> {
    path.strip_prefix(prefix).filter(|rest| rest.is_empty() || rest.starts_with('/'))
}

impl Endpoint {
    /// Classifies a request from its method and raw (undecoded) URL path.
    pub fn classify(method: &Method, raw_path: &str) -> Endpoint {
        use Endpoint::*;
        let m = method.as_str();
        let get_or_head = |e: Endpoint, route| match m {
            "GET" | "HEAD" => e,
            _ => MethodNotAllowed { route, allow: "GET, HEAD" },
        };
        match raw_path {
            "/health" => return get_or_head(Health, RouteLabel::Health),
            "/ready" => return get_or_head(Ready, RouteLabel::Ready),
            "/metrics" => return get_or_head(Metrics, RouteLabel::Metrics),
            "/v1/links/generate" => {
                return match m {
                    "POST" => GenerateLink,
                    _ => MethodNotAllowed { route: RouteLabel::LinksGenerate, allow: "POST" },
                }
            }
            _ => {}
        }
        if let Some(rest) = tail(raw_path, FILES) {
            let path = parse_url_path(rest);
            return match m {
                "GET" => GetFile(path),
                "HEAD" => HeadFile(path),
                "POST" => PostFile(path),
                "PUT" => PutFile(path),
                "PATCH" => PatchFile(path),
                "DELETE" => DeleteFile(path),
                _ => MethodNotAllowed { route: RouteLabel::Files, allow: "GET, HEAD, POST, PUT, PATCH, DELETE" },
            };
        }
        if let Some(rest) = tail(raw_path, DIRECTORIES) {
            return match m {
                "GET" => ListDirectory(parse_url_path(rest)),
                _ => MethodNotAllowed { route: RouteLabel::Directories, allow: "GET" },
            };
        }
        if let Some(token) = raw_path.strip_prefix(DOWNLOAD).filter(|t| !t.is_empty()) {
            return match m {
                "GET" => DownloadLink(decode_token(token)),
                _ => MethodNotAllowed { route: RouteLabel::Download, allow: "GET" },
            };
        }
        if let Some(blob) = raw_path.strip_prefix(INTERNAL_BLOBS).filter(|b| !b.is_empty()) {
            return match m {
                "GET" => GetBlob(blob.to_string()),
                "HEAD" => HeadBlob(blob.to_string()),
                _ => MethodNotAllowed { route: RouteLabel::InternalBlobs, allow: "GET, HEAD" },
            };
        }
        NotFound
    }

    /// The metrics `path` label: a route pattern, never the raw path.
    pub fn label(&self) -> RouteLabel {
        use Endpoint::*;
        match self {
            Health => RouteLabel::Health,
            Ready => RouteLabel::Ready,
            Metrics => RouteLabel::Metrics,
            GetFile(_) | HeadFile(_) | PostFile(_) | PutFile(_) | PatchFile(_) | DeleteFile(_) => RouteLabel::Files,
            ListDirectory(_) => RouteLabel::Directories,
            GenerateLink => RouteLabel::LinksGenerate,
            DownloadLink(_) => RouteLabel::Download,
            GetBlob(_) | HeadBlob(_) => RouteLabel::InternalBlobs,
            MethodNotAllowed { route, .. } => *route,
            NotFound => RouteLabel::Unmatched,
        }
    }

    /// Who may call it. Unmatched paths under `/v1/` authenticate first (401 before 404), and
    /// under `/v1/internal/` only the internal secret gets as far as the 404.
    pub fn guard(&self, raw_path: &str, metrics_require_auth: bool) -> Guard {
        use Endpoint::*;
        match self {
            Health | Ready | DownloadLink(_) => Guard::Public,
            Metrics if metrics_require_auth => Guard::Bearer,
            Metrics => Guard::Public,
            GetBlob(_) | HeadBlob(_) => Guard::Internal,
            MethodNotAllowed { route, .. } => match route {
                RouteLabel::Health | RouteLabel::Ready | RouteLabel::Download => Guard::Public,
                RouteLabel::Metrics if !metrics_require_auth => Guard::Public,
                RouteLabel::InternalBlobs => Guard::Internal,
                _ => Guard::Bearer,
            },
            NotFound if raw_path.starts_with(INTERNAL) => Guard::Internal,
            NotFound if raw_path.starts_with("/v1/") || raw_path == "/v1" => Guard::Bearer,
            NotFound => Guard::Public,
            _ => Guard::Bearer,
        }
    }

    /// The limiter applied before authentication.
    pub fn pre_auth_limiter(&self) -> Option<Limiter> {
        use Endpoint::*;
        match self {
            DownloadLink(_) => Some(Limiter::Downloads),
            GetFile(_) | HeadFile(_) | PostFile(_) | PutFile(_) | PatchFile(_) | DeleteFile(_) | ListDirectory(_) => {
                Some(Limiter::Api)
            }
            _ => None,
        }
    }

    /// The limiter applied after authentication and route resolution.
    pub fn post_auth_limiter(&self) -> Option<Limiter> {
        matches!(self, Endpoint::GenerateLink).then_some(Limiter::Links)
    }

    /// The path as the request log shows it: a link token — wherever a `/download/` segment
    /// appears in a path that is not a file path — cut to its first characters (security.md §5).
    pub fn log_path(&self, raw_path: &str) -> String {
        match self {
            Endpoint::DownloadLink(Some(token)) => format!("{DOWNLOAD}{}", crate::logging::short_token(token)),
            Endpoint::DownloadLink(None) => format!("{DOWNLOAD}..."),
            Endpoint::MethodNotAllowed { .. } | Endpoint::NotFound => shorten_tokens(raw_path),
            _ => raw_path.to_string(),
        }
    }
}

/// An unmatched path as logged: every segment longer than 16 bytes is cut to its first 8
/// characters, so a link token is never logged whole however its path was spelled
/// (`/Download/…`, `/%64ownload/…`, `/download%2F…`).
fn shorten_tokens(raw_path: &str) -> String {
    raw_path
        .split('/')
        .map(|segment| if segment.len() > 16 { crate::logging::short_token(segment) } else { segment.to_string() })
        .collect::<Vec<_>>()
        .join("/")
}

/// A download token from the URL: percent-decoded once; anything that cannot be a token is `None`.
fn decode_token(raw: &str) -> Option<String> {
    let mut out = Vec::with_capacity(raw.len());
    let bytes = raw.as_bytes();
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'%' {
            let hex = bytes.get(i + 1..i + 3)?;
            let hex = std::str::from_utf8(hex).ok()?;
            out.push(u8::from_str_radix(hex, 16).ok()?);
            i += 3;
        } else {
            out.push(bytes[i]);
            i += 1;
        }
    }
    let token = String::from_utf8(out).ok()?;
    let plausible = token.bytes().all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'=' | b'.'));
    plausible.then_some(token)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn classify(method: &str, path: &str) -> Endpoint {
        Endpoint::classify(&Method::from_bytes(method.as_bytes()).unwrap(), path)
    }

    #[test]
    fn routes_are_literal_prefixes_of_the_raw_path() {
        assert!(matches!(classify("GET", "/v1/files/a.txt"), Endpoint::GetFile(Ok(p)) if p.path.as_str() == "/a.txt"));
        assert!(matches!(classify("GET", "/v1/files"), Endpoint::GetFile(Ok(p)) if p.path.is_root()));
        assert_eq!(classify("POST", "/%76%31/internal/localfs-move"), Endpoint::NotFound);
        assert_eq!(classify("POST", "/v1/internal/localfs%2Dmove"), Endpoint::NotFound);
        assert_eq!(classify("GET", "/v1/file%73/a.txt"), Endpoint::NotFound);
        assert_eq!(classify("GET", "/v1/filesystem"), Endpoint::NotFound);
        assert_eq!(classify("GET", "//v1/files/a"), Endpoint::NotFound);
        assert_eq!(classify("GET", "/%6detrics"), Endpoint::NotFound);
        assert!(matches!(classify("GET", "/v1/files/%2e%2e/x"), Endpoint::GetFile(Err(_))));
        assert!(matches!(classify("OPTIONS", "/v1/files/a"), Endpoint::MethodNotAllowed { .. }));
        assert!(matches!(classify("HEAD", "/download/abc"), Endpoint::MethodNotAllowed { .. }));
        assert_eq!(classify("GET", "/download/"), Endpoint::NotFound);
        assert_eq!(classify("GET", "/v1/internal/blobs/abc"), Endpoint::GetBlob("abc".into()));
        assert!(matches!(classify("DELETE", "/v1/internal/blobs/abc"), Endpoint::MethodNotAllowed { .. }));
        assert_eq!(classify("GET", "/v1/internal/blobs/"), Endpoint::NotFound);
        assert_eq!(classify("POST", "/v1/internal/localfs-move"), Endpoint::NotFound);
    }

    #[test]
    fn guards_follow_the_endpoint() {
        let guard = |m, p| classify(m, p).guard(p, false);
        assert_eq!(guard("GET", "/metrics"), Guard::Public);
        assert_eq!(classify("GET", "/metrics").guard("/metrics", true), Guard::Bearer);
        assert_eq!(classify("POST", "/metrics").guard("/metrics", true), Guard::Bearer);
        assert_eq!(guard("GET", "/v1/internal/blobs/x"), Guard::Internal);
        assert_eq!(guard("PUT", "/v1/internal/blobs/x"), Guard::Internal);
        assert_eq!(guard("POST", "/v1/internal/localfs-move"), Guard::Internal);
        assert_eq!(guard("POST", "/v1/internal/nothing"), Guard::Internal);
        assert_eq!(guard("GET", "/v1/nothing"), Guard::Bearer);
        assert_eq!(guard("GET", "/%76%31/internal/localfs-move"), Guard::Public);
        assert_eq!(guard("GET", "/v1/files/x"), Guard::Bearer);
        assert_eq!(guard("GET", "/download/abc"), Guard::Public);
    }

    #[test]
    fn download_tokens_are_decoded_once_and_never_logged_whole() {
        let e = classify("GET", "/download/AbCdEfGhIjKl%3D.sig");
        assert_eq!(e, Endpoint::DownloadLink(Some("AbCdEfGhIjKl=.sig".into())));
        assert_eq!(e.log_path("/download/AbCdEfGhIjKl%3D.sig"), "/download/AbCdEfGh...");
        assert_eq!(classify("GET", "/download/a%2Fb"), Endpoint::DownloadLink(None));
        assert_eq!(classify("GET", "/download/a/b"), Endpoint::DownloadLink(None));
        assert_eq!(classify("GET", "/download/%zz"), Endpoint::DownloadLink(None));
        let token = "dkS9IPnQ9WgqXYZ.sig";
        for (method, path) in
            [("HEAD", "/download/"), ("POST", "/download/"), ("GET", "/Download/"), ("GET", "//download/")]
        {
            let raw = format!("{path}{token}");
            let logged = classify(method, &raw).log_path(&raw);
            assert!(!logged.contains(token) && logged.ends_with("..."), "{method} {raw} logged as {logged}");
        }
    }
}
