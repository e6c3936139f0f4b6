//! The request pipeline around every route (api.md §3): correlation ids, the API rate limit,
//! authentication, security headers, and — when the body has been sent or the client went away —
//! exactly one metrics record and one request log line.

use std::cell::RefCell;
use std::future::{ready, Future, Ready};
use std::net::{IpAddr, Ipv4Addr};
use std::pin::Pin;
use std::rc::Rc;
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use actix_web::body::{BodySize, BoxBody, MessageBody};
use actix_web::dev::Payload;
use actix_web::dev::{Service, ServiceRequest, ServiceResponse, Transform};
use actix_web::http::header::{self, HeaderName, HeaderValue};
use actix_web::{web, Error, HttpMessage, ResponseError};
use bytes::Bytes;
use callfs_actors::metrics::{LimiterLabel, LimiterLabels, MethodLabel, Metrics, RouteLabel};

use crate::auth::{resolve_identity, Identity};
use crate::correlation::{request_id, TraceContext};
use crate::error::ApiError;
use crate::http::endpoint::{Endpoint, Guard, Limiter};
use crate::http::routes::Classified;
use crate::http::stall::{self, ConnectionFd, Progress};
use crate::logging::format_duration;
use crate::node::Node;
use crate::rate_limit::client_ip;

const SECURITY_HEADERS: [(&str, &str); 7] = [
    (
        "content-security-policy",
        "default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self' data:; object-src 'none'; base-uri 'self'; form-action 'self'",
    ),
    ("x-content-type-options", "nosniff"),
    ("x-frame-options", "DENY"),
    ("referrer-policy", "strict-origin-when-cross-origin"),
    (
        "permissions-policy",
        "geolocation=(), microphone=(), camera=(), payment=(), usb=(), magnetometer=(), gyroscope=(), accelerometer=()",
    ),
    ("cross-origin-opener-policy", "same-origin"),
    ("cross-origin-embedder-policy", "require-corp"),
];

/// Correlation data of one request, available to handlers through the request extensions.
#[derive(Debug, Clone)]
pub struct RequestContext {
    pub request_id: String,
    pub trace: TraceContext,
    pub client_ip: IpAddr,
}

pub struct Pipeline;

impl<S, B> Transform<S, ServiceRequest> for Pipeline
where
    S: Service<ServiceRequest, Response = ServiceResponse<B>, Error = Error> + 'static,
    B: MessageBody + 'static,
{
    type Response = ServiceResponse<RecordedBody>;
    type Error = Error;
    type Transform = PipelineService<S>;
    type InitError = ();
    type Future = Ready<Result<Self::Transform, Self::InitError>>;

    fn new_transform(&self, service: S) -> Self::Future {
        ready(Ok(PipelineService { service: Rc::new(service) }))
    }
}

pub struct PipelineService<S> {
    service: Rc<S>,
}

impl<S, B> Service<ServiceRequest> for PipelineService<S>
where
    S: Service<ServiceRequest, Response = ServiceResponse<B>, Error = Error> + 'static,
    B: MessageBody + 'static,
{
    type Response = ServiceResponse<RecordedBody>;
    type Error = Error;
    type Future = Pin<Box<dyn Future<Output = Result<Self::Response, Self::Error>>>>;

    actix_web::dev::forward_ready!(service);

    fn call(&self, mut req: ServiceRequest) -> Self::Future {
        let service = Rc::clone(&self.service);
        let request_body = hold_payload(&mut req);
        Box::pin(async move {
            let Some(node) = req.app_data::<web::Data<Node>>().cloned() else {
                return Err(actix_web::error::ErrorInternalServerError("node state missing"));
            };
            let endpoint = Endpoint::classify(req.method(), req.path());
            let mut record = Record::begin(&req, &node, &endpoint);
            let secure = req.app_config().secure();
            let ctx = RequestContext {
                request_id: record.request_id.clone(),
                trace: record.trace.clone(),
                client_ip: record.client_ip,
            };
            req.extensions_mut().insert(ctx);

            let guard = endpoint.guard(req.path(), node.settings.metrics_require_auth);
            let early = admit(&req, &node, &endpoint, guard, record.client_ip).map(|identity| {
                if let Some(identity) = identity {
                    record.user_id = Some(identity.user_id.clone());
                    record.via = identity.proxied_by.clone();
                    req.extensions_mut().insert(identity);
                }
            });
            req.extensions_mut().insert(Classified { endpoint, guard });
            let mut res = match early {
                Ok(()) => service.call(req).await?.map_into_boxed_body(),
                Err(err) => req.error_response(err).map_into_boxed_body(),
            };
            if let Some(err) = res.response().error() {
                if res.status().is_server_error() {
                    record.error = Some(err.to_string());
                }
            }
            decorate(res.headers_mut(), &record, secure);
            record.status = res.status().as_u16();
            record.head_request = res.request().method() == actix_web::http::Method::HEAD;
            let large = match res.response().body().size() {
                BodySize::Stream => true,
                BodySize::Sized(n) => n > WATCHED_BODY_BYTES,
                BodySize::None => false,
            };
            let fd = res.request().conn_data::<ConnectionFd>().copied();
            let stall = fd.filter(|_| large && !record.head_request).map(|fd| (fd, node.settings.write_timeout));
            Ok(res.map_body(|_, body| RecordedBody {
                body,
                record: Some(record),
                failed: false,
                stall,
                progress: None,
                _request_body: request_body,
            }))
        })
    }
}

/// True when the request announces a body (`Content-Length` > 0 or a transfer coding).
fn announces_body(headers: &actix_web::http::header::HeaderMap) -> bool {
    headers.contains_key(header::TRANSFER_ENCODING)
        || headers
            .get(header::CONTENT_LENGTH)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.trim().parse::<u64>().ok())
            .is_some_and(|n| n > 0)
}

/// The request body, shared between the handler and the response. The HTTP/1 dispatcher drains
/// a chunked body whose reader was dropped, with no deadline, so a client that stops half way
/// would hold the connection forever; while this holder lives (until the response body is
/// dropped) an unread body makes the dispatcher close the connection after the response instead.
type HeldPayload = Rc<RefCell<Payload>>;

struct SharedPayload(HeldPayload);

impl futures_util::Stream for SharedPayload {
    type Item = Result<Bytes, actix_web::error::PayloadError>;

    fn poll_next(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        Pin::new(&mut *self.0.borrow_mut()).poll_next(cx)
    }
}

/// Moves the request body behind a shared holder and returns the holder (requests without a body
/// pay nothing).
fn hold_payload(req: &mut ServiceRequest) -> Option<HeldPayload> {
    if !announces_body(req.headers()) {
        return None;
    }
    let held = Rc::new(RefCell::new(req.take_payload()));
    req.set_payload(Payload::Stream { payload: Box::pin(SharedPayload(Rc::clone(&held))) });
    Some(held)
}

/// Bytes of the request line and headers as sent (`server.max_header_bytes`).
fn head_size(req: &ServiceRequest) -> u64 {
    // The length of the URI as it displays, without rendering it.
    let uri = req.uri();
    let uri_len = uri.scheme_str().map_or(0, |s| s.len() + 3)
        + uri.authority().map_or(0, |a| a.as_str().len())
        + uri.path().len()
        + uri.query().map_or(0, |q| q.len() + 1);
    let line = req.method().as_str().len() + uri_len + 12;
    let headers: usize = req.headers().iter().map(|(k, v)| k.as_str().len() + v.len() + 4).sum();
    (line + headers) as u64
}

/// Header size, rate limits and authentication, as the endpoint asks (api.md §3 stages 2–4 and 6).
fn admit(
    req: &ServiceRequest,
    node: &Node,
    endpoint: &Endpoint,
    guard: Guard,
    client_ip: IpAddr,
) -> Result<Option<Identity>, ApiError> {
    if head_size(req) > node.settings.max_header_bytes {
        return Err(ApiError::HeaderTooLarge);
    }
    if let Some(limiter) = endpoint.pre_auth_limiter() {
        limit(node, limiter, client_ip)?;
    }
    if guard == Guard::Public {
        return Ok(None);
    }
    let header = |name: &str| req.headers().get(name).and_then(|v| v.to_str().ok());
    let principal = node.keys.authenticate(header("authorization")).ok_or_else(|| {
        log::debug!(route = endpoint.label().as_str(); "authentication failed");
        ApiError::AuthenticationFailed
    })?;
    let identity = resolve_identity(principal, header("x-callfs-original-user"), header("x-callfs-proxied-by"));
    if guard == Guard::Internal && !identity.internal {
        return Err(ApiError::PermissionDenied("internal endpoint".into()));
    }
    if let Some(limiter) = endpoint.post_auth_limiter() {
        limit(node, limiter, client_ip)?;
    }
    Ok(Some(identity))
}

fn limit(node: &Node, limiter: Limiter, client_ip: IpAddr) -> Result<(), ApiError> {
    let (label, limiter) = match limiter {
        Limiter::Api if !node.api_limiter.is_enabled() => return Ok(()),
        Limiter::Api => (LimiterLabel::Api, &node.api_limiter),
        Limiter::Downloads => (LimiterLabel::Downloads, &node.download_limiter),
        Limiter::Links => (LimiterLabel::Links, &node.link_limiter),
    };
    limiter.check(client_ip).map_err(|retry_after| {
        node.metrics.rate_limited.get_or_create(&LimiterLabels { limiter: label }).inc();
        ApiError::RateLimited(retry_after)
    })
}

fn decorate(headers: &mut actix_web::http::header::HeaderMap, record: &Record, secure: bool) {
    for (name, value) in SECURITY_HEADERS {
        headers.insert(HeaderName::from_static(name), HeaderValue::from_static(value));
    }
    if secure {
        headers.insert(
            HeaderName::from_static("strict-transport-security"),
            HeaderValue::from_static("max-age=31536000; includeSubDomains; preload"),
        );
    }
    if let Ok(v) = HeaderValue::from_str(&record.request_id) {
        headers.insert(HeaderName::from_static("x-request-id"), v);
    }
    if let Ok(v) = HeaderValue::from_str(&record.trace.header_value()) {
        headers.insert(HeaderName::from_static("traceparent"), v);
    }
}

/// Everything the final metrics record and log line need. Recorded exactly once, on drop.
pub struct Record {
    started: Instant,
    metrics: Metrics,
    method: String,
    route: RouteLabel,
    raw_path: String,
    user_agent: String,
    client_ip: IpAddr,
    request_id: String,
    trace: TraceContext,
    user_id: Option<String>,
    via: Option<String>,
    error: Option<String>,
    /// 499 until a status is known: a dropped request future means the client went away.
    status: u16,
    head_request: bool,
    body_done: bool,
}

impl Record {
    fn begin(req: &ServiceRequest, node: &Node, endpoint: &Endpoint) -> Self {
        let header = |name: &str| req.headers().get(name).and_then(|v| v.to_str().ok());
        let peer = req.peer_addr().map(|a| a.ip()).unwrap_or(IpAddr::V4(Ipv4Addr::LOCALHOST));
        let route = endpoint.label();
        let raw_path = endpoint.log_path(req.path());
        Record {
            started: Instant::now(),
            metrics: node.metrics.clone(),
            method: req.method().as_str().to_string(),
            route,
            raw_path,
            user_agent: header("user-agent").unwrap_or("").to_string(),
            client_ip: client_ip(peer, header("x-forwarded-for"), &node.settings.trusted_proxies),
            request_id: request_id(header("x-request-id")),
            trace: TraceContext::from_header(header("traceparent")),
            user_id: None,
            via: None,
            error: None,
            status: 499,
            head_request: false,
            body_done: false,
        }
    }
}

impl Drop for Record {
    fn drop(&mut self) {
        let elapsed = self.started.elapsed();
        let aborted = !self.body_done && !self.head_request && self.status != 499;
        if aborted && self.error.is_none() {
            self.error = Some("response stream aborted".into());
            self.metrics.record_error(callfs_actors::metrics::ErrorKind::StreamAborted);
        }
        self.metrics.record_http(MethodLabel::from_method(&self.method), self.route, self.status, elapsed);
        let level = if self.status >= 500 || aborted {
            log::Level::Error
        } else if matches!(self.route, RouteLabel::Health | RouteLabel::Ready | RouteLabel::Metrics) {
            log::Level::Debug
        } else {
            log::Level::Info
        };
        if !log::log_enabled!(level) {
            return;
        }
        log_request(self, level, elapsed);
    }
}

fn log_request(r: &Record, level: log::Level, elapsed: Duration) {
    let duration = format_duration(elapsed);
    let remote_addr = r.client_ip.to_string();
    log::log!(
        level,
        method = r.method.as_str(),
        path = r.raw_path.as_str(),
        status = r.status,
        duration = duration.as_str(),
        user_agent = r.user_agent.as_str(),
        remote_addr = remote_addr.as_str(),
        request_id = r.request_id.as_str(),
        trace_id = r.trace.trace_id.as_str(),
        user_id = r.user_id.as_deref().filter(|u| !u.is_empty()),
        via = r.via.as_deref(),
        error = r.error.as_deref();
        "HTTP request"
    );
}

/// The response body, passed through untouched; completion or abort finishes the [`Record`].
pub struct RecordedBody {
    body: BoxBody,
    record: Option<Record>,
    failed: bool,
    /// Armed for bodies large enough to outlast the socket buffer (`server.write_timeout`).
    stall: Option<(ConnectionFd, Duration)>,
    progress: Option<Rc<Progress>>,
    /// Kept until the response is gone, so an unread request body closes the connection.
    _request_body: Option<HeldPayload>,
}

/// Bodies up to this size fit the socket buffers; only larger ones get a stall watchdog.
const WATCHED_BODY_BYTES: u64 = 256 * 1024;

impl MessageBody for RecordedBody {
    type Error = Box<dyn std::error::Error>;

    fn size(&self) -> BodySize {
        self.body.size()
    }

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Result<Bytes, Self::Error>>> {
        let this = &mut *self;
        if let Some(progress) = &this.progress {
            progress.touch();
        } else if let Some((fd, timeout)) = this.stall.take() {
            this.progress = Some(stall::watch(fd, timeout));
        }
        let polled = Pin::new(&mut this.body).poll_next(cx);
        if matches!(polled, Poll::Ready(None) | Poll::Ready(Some(Err(_)))) {
            if let Some(progress) = this.progress.take() {
                progress.finish();
            }
        }
        match &polled {
            Poll::Ready(None) => {
                if let Some(record) = this.record.as_mut() {
                    record.body_done = !this.failed;
                }
                this.record.take();
            }
            Poll::Ready(Some(Err(err))) => {
                this.failed = true;
                if let Some(record) = this.record.as_mut() {
                    record.error = Some(format!("response stream failed: {err}"));
                }
            }
            _ => {}
        }
        polled
    }
}

impl Drop for RecordedBody {
    fn drop(&mut self) {
        if let Some(progress) = self.progress.take() {
            progress.finish();
        }
        // A body that was never polled to its end (client gone, HEAD) finishes the record here.
        if let Some(record) = self.record.as_mut() {
            if matches!(self.body.size(), BodySize::None | BodySize::Sized(0)) {
                record.body_done = true;
            }
        }
    }
}

/// `404 NOT_FOUND` for unmatched paths.
pub async fn not_found() -> actix_web::HttpResponse {
    ApiError::RouteNotFound.error_response()
}
