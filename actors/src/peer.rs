//! The peer proxy: forwards a request to the node that holds the bytes and streams both bodies
//! through bounded channels, so neither side is ever held whole in memory. It also probes every
//! peer's `/health` for `callfs_peer_up`.
//!
//! HTTP client objects are not `Send`, so each HTTP worker thread runs its own proxy (a local
//! mailbox, no thread hop on the hot path), and one more on its own arbiter runs the probes and the
//! node-to-node calls of background work. They speak only through `Send` messages and channels.

use std::collections::BTreeMap;
use std::pin::Pin;
use std::task::{Context as TaskContext, Poll};
use std::time::{Duration, Instant};

use actix::prelude::*;
use awc::body::{BodySize, MessageBody};
use awc::error::SendRequestError;
use bytes::Bytes;
use futures_util::StreamExt;
use tokio::sync::mpsc;

use crate::error::ActorError;
use crate::metrics::{BackendLabel, BackendOp, CrossServerOp, ErrorKind, Metrics};

/// Chunks buffered per direction of a proxied transfer.
const RELAY_QUEUE: usize = 8;
const PROBE_TIMEOUT: Duration = Duration::from_secs(2);

#[derive(Clone)]
pub struct PeerSettings {
    pub instance_id: String,
    pub internal_secret: String,
    pub peers: BTreeMap<String, String>,
    pub connect_timeout: Duration,
    /// Wait for response headers; also body inactivity.
    pub timeout: Duration,
    pub probe_interval: Duration,
    /// Whether this instance runs the `/health` probes (exactly one per node does).
    pub probes: bool,
    pub skip_tls_verify: bool,
    pub ca_file: Option<String>,
}

pub struct PeerProxy {
    settings: PeerSettings,
    client: awc::Client,
    metrics: Metrics,
    peer_state: BTreeMap<String, bool>,
}

impl PeerProxy {
    /// Must run on the arbiter that will own the actor (the client is bound to its thread).
    pub fn new(settings: PeerSettings, metrics: Metrics) -> Self {
        let mut connector = awc::Connector::new().timeout(settings.connect_timeout);
        if let Some(ssl) = ssl_connector(&settings) {
            connector = connector.openssl(ssl);
        }
        let client = awc::Client::builder().connector(connector).timeout(settings.timeout).disable_redirects().finish();
        Self { settings, client, metrics, peer_state: BTreeMap::new() }
    }

    fn probe_all(&mut self, ctx: &mut Context<Self>) {
        for (peer, endpoint) in self.settings.peers.clone() {
            let url = format!("{}/health", endpoint.trim_end_matches('/'));
            let request = self.client.get(url).timeout(PROBE_TIMEOUT).send();
            let fut = async move { matches!(request.await, Ok(res) if res.status().is_success()) };
            ctx.spawn(fut.into_actor(self).map(move |up, act, _ctx| {
                act.metrics.set_peer_up(&peer, up);
                let before = act.peer_state.insert(peer.clone(), up);
                if before != Some(up) {
                    if up {
                        log::info!(peer = peer.as_str(), endpoint = endpoint.as_str(); "peer up");
                    } else {
                        log::warn!(peer = peer.as_str(), endpoint = endpoint.as_str(); "peer down");
                    }
                }
            }));
        }
    }
}

fn ssl_connector(settings: &PeerSettings) -> Option<openssl::ssl::SslConnector> {
    use openssl::ssl::{SslConnector, SslMethod, SslVerifyMode};
    let mut builder = SslConnector::builder(SslMethod::tls()).ok()?;
    if settings.skip_tls_verify {
        builder.set_verify(SslVerifyMode::NONE);
    }
    if let Some(ca) = settings.ca_file.as_deref().filter(|f| !f.is_empty()) {
        if let Err(err) = builder.set_ca_file(ca) {
            log::error!(file = ca, error = err.to_string().as_str(); "cannot load internal_proxy_ca_file");
        }
    }
    builder.set_alpn_protos(b"\x08http/1.1").ok()?;
    Some(builder.build())
}

impl Actor for PeerProxy {
    type Context = Context<Self>;

    fn started(&mut self, ctx: &mut Self::Context) {
        if self.settings.probes {
            self.probe_all(ctx);
            ctx.run_interval(self.settings.probe_interval, |act, ctx| act.probe_all(ctx));
        }
    }
}

/// One piece of a request body on its way to a peer.
pub enum UploadChunk {
    Data(bytes::Bytes),
    /// The body ended where it should; anything else is an abort.
    Finish,
}

/// A request body on its way to a peer. Ends only with [`UploadChunk::Finish`]; anything else
/// aborts the forwarded request so the peer never stores a truncated file.
pub struct RequestBody {
    pub chunks: mpsc::Receiver<UploadChunk>,
    pub length: Option<u64>,
}

/// Forward one request to a peer. `path_and_query` is already percent-encoded.
#[derive(Message)]
#[rtype(result = "Result<ForwardedResponse, ActorError>")]
pub struct ForwardRequest {
    pub peer: String,
    pub method: String,
    pub path_and_query: String,
    pub headers: Vec<(String, String)>,
    pub body: Option<RequestBody>,
    pub operation: CrossServerOp,
    pub backend_op: BackendOp,
}

/// The peer's answer: status, headers and the body as a bounded stream of chunks.
pub struct ForwardedResponse {
    pub status: u16,
    pub headers: Vec<(String, Vec<u8>)>,
    pub body: mpsc::Receiver<Result<Bytes, String>>,
}

impl ForwardedResponse {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.iter().find(|(k, _)| k.eq_ignore_ascii_case(name)).and_then(|(_, v)| std::str::from_utf8(v).ok())
    }
}

struct ChannelBody {
    chunks: mpsc::Receiver<UploadChunk>,
    length: Option<u64>,
}

impl MessageBody for ChannelBody {
    type Error = std::io::Error;

    fn size(&self) -> BodySize {
        self.length.map_or(BodySize::Stream, BodySize::Sized)
    }

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut TaskContext<'_>) -> Poll<Option<Result<Bytes, Self::Error>>> {
        match self.chunks.poll_recv(cx) {
            Poll::Pending => Poll::Pending,
            Poll::Ready(Some(UploadChunk::Data(bytes))) => Poll::Ready(Some(Ok(bytes))),
            Poll::Ready(Some(UploadChunk::Finish)) => Poll::Ready(None),
            Poll::Ready(None) => Poll::Ready(Some(Err(std::io::Error::new(
                std::io::ErrorKind::UnexpectedEof,
                "client body ended early",
            )))),
        }
    }
}

/// Headers never copied between hops.
fn is_hop_by_hop(name: &str) -> bool {
    matches!(
        name.to_ascii_lowercase().as_str(),
        "connection" | "keep-alive" | "te" | "trailer" | "transfer-encoding" | "upgrade" | "cookie" | "set-cookie"
    ) || name.to_ascii_lowercase().starts_with("proxy-")
}

impl Handler<ForwardRequest> for PeerProxy {
    type Result = ResponseFuture<Result<ForwardedResponse, ActorError>>;

    fn handle(&mut self, msg: ForwardRequest, _ctx: &mut Self::Context) -> Self::Result {
        let endpoint = self.settings.peers.get(&msg.peer).cloned();
        let client = self.client.clone();
        let metrics = self.metrics.clone();
        let secret = self.settings.internal_secret.clone();
        let instance_id = self.settings.instance_id.clone();
        let inactivity = self.settings.timeout;
        Box::pin(async move {
            let started = Instant::now();
            let Some(endpoint) = endpoint else {
                metrics.record_cross_server(msg.operation, "unknown", false, None);
                metrics.record_backend(BackendLabel::InternalProxy, msg.backend_op, false, started.elapsed());
                metrics.record_error(ErrorKind::PeerUnavailable);
                return Err(ActorError::PeerUnavailable(format!("node {} has no configured endpoint", msg.peer)));
            };
            let url = format!("{}{}", endpoint.trim_end_matches('/'), msg.path_and_query);
            let method = awc::http::Method::from_bytes(msg.method.as_bytes())
                .map_err(|_| ActorError::Internal("bad method".into()))?;
            let retryable = msg.body.is_none() && matches!(msg.method.as_str(), "GET" | "HEAD");
            let mut body = msg.body;
            let mut attempt = 0;
            let response = loop {
                attempt += 1;
                let mut request = client
                    .request(method.clone(), &url)
                    .no_decompress()
                    .insert_header(("authorization", format!("Bearer {secret}")))
                    .insert_header(("x-callfs-proxied-by", instance_id.as_str()))
                    .insert_header(("user-agent", concat!("callfs/", env!("CARGO_PKG_VERSION"))));
                for (name, value) in &msg.headers {
                    if !is_hop_by_hop(name) {
                        request = request.insert_header((name.as_str(), value.as_str()));
                    }
                }
                let sent = match body.take() {
                    // Sending the body takes as long as the client does: only inactivity bounds it.
                    Some(b) => {
                        request
                            .timeout(Duration::from_secs(365 * 24 * 3600))
                            .send_body(ChannelBody { chunks: b.chunks, length: b.length })
                            .await
                    }
                    None => request.send().await,
                };
                match sent {
                    Ok(response) => break Ok(response),
                    Err(SendRequestError::Connect(_)) if retryable && attempt < 2 => continue,
                    Err(SendRequestError::Timeout) => break Err(ActorError::PeerTimeout),
                    Err(SendRequestError::Response(err)) => break Err(ActorError::PeerError(err.to_string())),
                    Err(SendRequestError::Body(err)) => {
                        break Err(ActorError::UploadAborted(format!("request body: {err}")));
                    }
                    Err(err) => break Err(ActorError::PeerUnavailable(err.to_string())),
                }
            };
            let elapsed = started.elapsed();
            let peer = msg.peer.as_str();
            let mut response = match response {
                Ok(response) => response,
                Err(err) => {
                    let client_fault = matches!(err, ActorError::UploadAborted(_));
                    metrics.record_cross_server(msg.operation, peer, client_fault, Some(elapsed));
                    metrics.record_backend(BackendLabel::InternalProxy, msg.backend_op, client_fault, elapsed);
                    metrics.record_error(match err {
                        ActorError::PeerTimeout => ErrorKind::PeerTimeout,
                        ActorError::PeerError(_) => ErrorKind::PeerError,
                        _ => ErrorKind::PeerUnavailable,
                    });
                    return Err(err);
                }
            };
            let status = response.status().as_u16();
            let ok = status < 500;
            metrics.record_cross_server(msg.operation, peer, ok, Some(elapsed));
            metrics.record_backend(BackendLabel::InternalProxy, msg.backend_op, ok, elapsed);
            if !ok {
                metrics.record_error(ErrorKind::PeerError);
            }
            let headers = response
                .headers()
                .iter()
                .filter(|(name, _)| !is_hop_by_hop(name.as_str()))
                .map(|(name, value)| (name.as_str().to_string(), value.as_bytes().to_vec()))
                .collect();
            let (tx, rx) = mpsc::channel(RELAY_QUEUE);
            actix::spawn(async move {
                loop {
                    let next = match tokio::time::timeout(inactivity, response.next()).await {
                        Err(_) => Some(Err("peer body stalled".to_string())),
                        Ok(next) => next.map(|r| r.map_err(|e| e.to_string())),
                    };
                    let Some(item) = next else { break };
                    let failed = item.is_err();
                    if tx.send(item).await.is_err() || failed {
                        break;
                    }
                }
            });
            Ok(ForwardedResponse { status, headers, body: rx })
        })
    }
}
