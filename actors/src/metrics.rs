//! The whole metrics catalogue (observability.md §1), registered once.
//!
//! Hot paths record through cloned [`Metrics`] handles (atomics, no mailbox round trip); the
//! [`MetricsActor`] owns the registry, the computed gauges and rendering.

use std::fmt::Write as _;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use actix::prelude::*;
use prometheus_client::encoding::{EncodeLabelSet, EncodeLabelValue, LabelValueEncoder};
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::Histogram;
use prometheus_client::registry::Registry;

const DEFAULT_BUCKETS: [f64; 11] = [0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0];
const FAST_BUCKETS: [f64; 15] =
    [0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0];

fn default_histogram() -> Histogram {
    Histogram::new(DEFAULT_BUCKETS)
}

fn fast_histogram() -> Histogram {
    Histogram::new(FAST_BUCKETS)
}

/// Recording switch, on by default. Only the benchmark turns it off, to measure what recording costs.
static RECORDING: AtomicBool = AtomicBool::new(true);

pub fn set_recording(on: bool) {
    RECORDING.store(on, Ordering::Relaxed);
}

fn recording() -> bool {
    RECORDING.load(Ordering::Relaxed)
}

type HistogramFamily<L> = Family<L, Histogram, fn() -> Histogram>;

fn hist<L: Clone + std::hash::Hash + Eq>() -> HistogramFamily<L> {
    Family::new_with_constructor(default_histogram as fn() -> Histogram)
}

fn fast<L: Clone + std::hash::Hash + Eq>() -> HistogramFamily<L> {
    Family::new_with_constructor(fast_histogram as fn() -> Histogram)
}

/// Declares a closed label-value set: the enum, its text and its encoding.
macro_rules! label_enum {
    ($(#[$meta:meta])* $name:ident { $($variant:ident => $text:literal),* $(,)? }) => {
        $(#[$meta])*
        #[derive(Clone, Copy, Debug, Hash, PartialEq, Eq)]
        pub enum $name { $($variant),* }
        impl $name {
            pub fn as_str(&self) -> &'static str {
                match self { $(Self::$variant => $text),* }
            }
        }
        impl EncodeLabelValue for $name {
            fn encode(&self, encoder: &mut LabelValueEncoder) -> Result<(), std::fmt::Error> {
                encoder.write_str(self.as_str())
            }
        }
    };
}

label_enum!(
    /// HTTP method label; anything unusual is `OTHER`.
    MethodLabel {
        Get => "GET", Head => "HEAD", Post => "POST", Put => "PUT", Patch => "PATCH",
        Delete => "DELETE", Options => "OPTIONS", Other => "OTHER",
    }
);

impl MethodLabel {
    pub fn from_method(method: &str) -> Self {
        match method {
            "GET" => Self::Get,
            "HEAD" => Self::Head,
            "POST" => Self::Post,
            "PUT" => Self::Put,
            "PATCH" => Self::Patch,
            "DELETE" => Self::Delete,
            "OPTIONS" => Self::Options,
            _ => Self::Other,
        }
    }
}

label_enum!(
    /// Route pattern label: never the raw path.
    RouteLabel {
        Health => "/health", Ready => "/ready", Metrics => "/metrics", Files => "/v1/files/*",
        Directories => "/v1/directories/*", LinksGenerate => "/v1/links/generate",
        Download => "/download/{token}", InternalBlobs => "/v1/internal/blobs/*", Unmatched => "unmatched",
    }
);

label_enum!(BackendLabel { Localfs => "localfs", S3 => "s3", InternalProxy => "internalproxy" });

label_enum!(BackendOp {
    Open => "open", Create => "create", Update => "update", Delete => "delete", Move => "move",
    Stat => "stat", Mkdir => "mkdir",
});

label_enum!(Outcome { Success => "success", Failure => "failure" });

impl Outcome {
    pub fn of(ok: bool) -> Self {
        if ok {
            Self::Success
        } else {
            Self::Failure
        }
    }
}

label_enum!(MetadataOp {
    Get => "get", ListChildren => "list_children", ListSubtree => "list_subtree", Create => "create",
    Update => "update", Delete => "delete", Rename => "rename", LinkCreate => "link_create",
    LinkGet => "link_get", LinkConsume => "link_consume", LinkCleanup => "link_cleanup", Ping => "ping",
    Migrate => "migrate",
});

label_enum!(LockOp { Acquire => "acquire", Release => "release", Renew => "renew" });

label_enum!(CrossServerOp {
    ProxyRead => "proxy_read", ProxyHead => "proxy_head", ProxyWrite => "proxy_write",
    ProxyDelete => "proxy_delete", ProxyMove => "proxy_move", ConflictCheck => "conflict_check",
    RelocateRead => "relocate_read",
});

label_enum!(FileOp {
    Create => "create", Read => "read", Update => "update", Delete => "delete", Rename => "rename",
    Move => "move",
});

label_enum!(LinkStatus { Success => "success", Expired => "expired", Invalid => "invalid", NotFound => "not_found" });

label_enum!(LimiterLabel { Links => "links", Downloads => "downloads", Api => "api" });

label_enum!(
    /// `callfs_errors_total{component, error_type}` pairs.
    ErrorKind {
        HttpPanic => "panic", StreamAborted => "stream_aborted", QueryFailed => "query_failed",
        MetadataUnavailable => "unavailable", IoError => "io_error", S3Error => "s3_error",
        InsufficientStorage => "insufficient_storage", SizeMismatch => "size_mismatch",
        MissingBytes => "missing_bytes", OrphanBytes => "orphan_bytes",
        LockAcquireTimeout => "acquire_timeout", LeaseLost => "lease_lost",
        ReleaseFailed => "release_failed", PeerUnavailable => "peer_unavailable",
        PeerTimeout => "peer_timeout", PeerError => "peer_error", CleanupFailed => "cleanup_failed",
    }
);

label_enum!(ComponentLabel {
    Http => "http", MetadataStore => "metadata_store", Backend => "backend", Locks => "locks",
    Proxy => "proxy", Links => "links",
});

impl ErrorKind {
    pub fn component(&self) -> ComponentLabel {
        use ErrorKind::*;
        match self {
            HttpPanic | StreamAborted => ComponentLabel::Http,
            QueryFailed | MetadataUnavailable => ComponentLabel::MetadataStore,
            IoError | S3Error | InsufficientStorage | SizeMismatch | MissingBytes | OrphanBytes => {
                ComponentLabel::Backend
            }
            LockAcquireTimeout | LeaseLost | ReleaseFailed => ComponentLabel::Locks,
            PeerUnavailable | PeerTimeout | PeerError => ComponentLabel::Proxy,
            CleanupFailed => ComponentLabel::Links,
        }
    }
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct HttpLabels {
    pub method: MethodLabel,
    pub path: RouteLabel,
    pub status_code: u16,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct HttpRouteLabels {
    pub method: MethodLabel,
    pub path: RouteLabel,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct BackendLabels {
    pub backend_type: BackendLabel,
    pub operation: BackendOp,
    pub status: Outcome,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct BackendDurationLabels {
    pub backend_type: BackendLabel,
    pub operation: BackendOp,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct MetadataLabels {
    pub operation: MetadataOp,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct LockLabels {
    pub operation: LockOp,
    pub status: Outcome,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct LockDurationLabels {
    pub operation: LockOp,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct CrossServerLabels {
    pub operation: CrossServerOp,
    pub peer: String,
    pub status: Outcome,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct CrossServerDurationLabels {
    pub operation: CrossServerOp,
    pub peer: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct PeerLabels {
    pub peer: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct FileOpLabels {
    pub operation: FileOp,
    pub backend_type: BackendLabel,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct LinkConsumptionLabels {
    pub status: LinkStatus,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct LimiterLabels {
    pub limiter: LimiterLabel,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ErrorLabels {
    pub component: ComponentLabel,
    pub error_type: ErrorKind,
}

label_enum!(SweepKind { Garbage => "garbage", Intent => "intent", Tmp => "tmp" });

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct SweepLabels {
    pub kind: SweepKind,
    pub status: Outcome,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct BuildLabels {
    pub version: String,
    pub instance_id: String,
}

/// Cloneable handles to every metric family. Recording is lock-free apart from the family map.
#[derive(Clone)]
pub struct Metrics {
    pub http_requests: Family<HttpLabels, Counter>,
    pub http_duration: HistogramFamily<HttpRouteLabels>,
    pub backend_ops: Family<BackendLabels, Counter>,
    pub backend_duration: HistogramFamily<BackendDurationLabels>,
    pub metadata_queries: Family<MetadataLabels, Counter>,
    pub metadata_duration: HistogramFamily<MetadataLabels>,
    pub lock_ops: Family<LockLabels, Counter>,
    pub lock_duration: HistogramFamily<LockDurationLabels>,
    pub active_locks: Gauge,
    oldest_lock_age: Gauge<f64, AtomicU64>,
    /// Unix time in ms at which the oldest held lock was acquired; 0 when none.
    pub oldest_lock_since_ms: Arc<AtomicU64>,
    pub cross_server_ops: Family<CrossServerLabels, Counter>,
    pub cross_server_duration: HistogramFamily<CrossServerDurationLabels>,
    pub peer_up: Family<PeerLabels, Gauge>,
    pub file_ops: Family<FileOpLabels, Counter>,
    pub link_generations: Counter,
    pub link_consumptions: Family<LinkConsumptionLabels, Counter>,
    pub rate_limited: Family<LimiterLabels, Counter>,
    pub errors: Family<ErrorLabels, Counter>,
    /// Blobs, intents and temp files settled by the sweep (storage.md §1.4).
    pub blob_sweeps: Family<SweepLabels, Counter>,
    build_info: Family<BuildLabels, Gauge>,
}

impl Metrics {
    /// Builds every family and registers it in a fresh registry.
    pub fn new(version: &str, instance_id: &str) -> (Self, Registry) {
        let metrics = Metrics {
            http_requests: Family::default(),
            http_duration: hist(),
            backend_ops: Family::default(),
            backend_duration: hist(),
            metadata_queries: Family::default(),
            metadata_duration: fast(),
            lock_ops: Family::default(),
            lock_duration: fast(),
            active_locks: Gauge::default(),
            oldest_lock_age: Gauge::default(),
            oldest_lock_since_ms: Arc::new(AtomicU64::new(0)),
            cross_server_ops: Family::default(),
            cross_server_duration: hist(),
            peer_up: Family::default(),
            file_ops: Family::default(),
            link_generations: Counter::default(),
            link_consumptions: Family::default(),
            rate_limited: Family::default(),
            errors: Family::default(),
            blob_sweeps: Family::default(),
            build_info: Family::default(),
        };
        metrics
            .build_info
            .get_or_create(&BuildLabels { version: version.to_string(), instance_id: instance_id.to_string() })
            .set(1);

        let mut r = Registry::default();
        let m = &metrics;
        r.register("callfs_http_requests", "HTTP requests on the main listener", m.http_requests.clone());
        r.register(
            "callfs_http_request_duration_seconds",
            "HTTP request latency, head received to body sent",
            m.http_duration.clone(),
        );
        r.register("callfs_backend_ops", "Storage backend operations", m.backend_ops.clone());
        r.register(
            "callfs_backend_op_duration_seconds",
            "Storage backend operation duration",
            m.backend_duration.clone(),
        );
        r.register("callfs_metadata_db_queries", "Metadata store round trips", m.metadata_queries.clone());
        r.register(
            "callfs_metadata_db_query_duration_seconds",
            "Metadata store round trip duration",
            m.metadata_duration.clone(),
        );
        r.register("callfs_lock_operations", "Path lock operations", m.lock_ops.clone());
        r.register(
            "callfs_lock_operation_duration_seconds",
            "Path lock operation duration (acquire includes waiting)",
            m.lock_duration.clone(),
        );
        r.register("callfs_active_locks", "Path locks currently held by this node", m.active_locks.clone());
        r.register(
            "callfs_oldest_lock_age_seconds",
            "Age of the oldest path lock held by this node",
            m.oldest_lock_age.clone(),
        );
        r.register("callfs_cross_server_operations", "Operations involving another node", m.cross_server_ops.clone());
        r.register(
            "callfs_cross_server_operation_duration_seconds",
            "Time to the peer's response headers",
            m.cross_server_duration.clone(),
        );
        r.register("callfs_peer_up", "1 if the last probe of the peer succeeded", m.peer_up.clone());
        r.register("callfs_file_operations", "Successful file-level API operations", m.file_ops.clone());
        r.register("callfs_single_use_link_generations", "Single-use links created", m.link_generations.clone());
        r.register(
            "callfs_single_use_link_consumptions",
            "Download attempts reaching token processing",
            m.link_consumptions.clone(),
        );
        r.register("callfs_rate_limited_requests", "Requests rejected with 429", m.rate_limited.clone());
        r.register("callfs_errors", "Error events by component", m.errors.clone());
        r.register("callfs_blob_sweeps", "Blobs, intents and temp files settled by the sweep", m.blob_sweeps.clone());
        r.register("callfs_build_info", "Build information (always 1)", m.build_info.clone());
        (metrics, r)
    }

    pub fn record_http(&self, method: MethodLabel, path: RouteLabel, status_code: u16, elapsed: Duration) {
        if !recording() {
            return;
        }
        self.http_requests.get_or_create(&HttpLabels { method, path, status_code }).inc();
        self.http_duration.get_or_create(&HttpRouteLabels { method, path }).observe(elapsed.as_secs_f64());
    }

    pub fn record_backend(&self, backend_type: BackendLabel, operation: BackendOp, ok: bool, elapsed: Duration) {
        if !recording() {
            return;
        }
        self.backend_ops.get_or_create(&BackendLabels { backend_type, operation, status: Outcome::of(ok) }).inc();
        self.backend_duration
            .get_or_create(&BackendDurationLabels { backend_type, operation })
            .observe(elapsed.as_secs_f64());
    }

    pub fn record_metadata(&self, operation: MetadataOp, elapsed: Duration) {
        if !recording() {
            return;
        }
        let labels = MetadataLabels { operation };
        self.metadata_queries.get_or_create(&labels).inc();
        self.metadata_duration.get_or_create(&labels).observe(elapsed.as_secs_f64());
    }

    pub fn record_lock(&self, operation: LockOp, ok: bool, elapsed: Duration) {
        if !recording() {
            return;
        }
        self.lock_ops.get_or_create(&LockLabels { operation, status: Outcome::of(ok) }).inc();
        self.lock_duration.get_or_create(&LockDurationLabels { operation }).observe(elapsed.as_secs_f64());
    }

    pub fn record_cross_server(&self, operation: CrossServerOp, peer: &str, ok: bool, elapsed: Option<Duration>) {
        if !recording() {
            return;
        }
        self.cross_server_ops
            .get_or_create(&CrossServerLabels { operation, peer: peer.to_string(), status: Outcome::of(ok) })
            .inc();
        if let Some(elapsed) = elapsed {
            self.cross_server_duration
                .get_or_create(&CrossServerDurationLabels { operation, peer: peer.to_string() })
                .observe(elapsed.as_secs_f64());
        }
    }

    pub fn record_file_op(&self, operation: FileOp, backend_type: BackendLabel) {
        if !recording() {
            return;
        }
        self.file_ops.get_or_create(&FileOpLabels { operation, backend_type }).inc();
    }

    pub fn record_error(&self, kind: ErrorKind) {
        if !recording() {
            return;
        }
        self.errors.get_or_create(&ErrorLabels { component: kind.component(), error_type: kind }).inc();
    }

    pub fn set_peer_up(&self, peer: &str, up: bool) {
        self.peer_up.get_or_create(&PeerLabels { peer: peer.to_string() }).set(i64::from(up));
    }

    fn refresh_computed_gauges(&self) {
        let since = self.oldest_lock_since_ms.load(Ordering::Relaxed);
        let age = if since == 0 { 0.0 } else { now_ms().saturating_sub(since) as f64 / 1000.0 };
        self.oldest_lock_age.set(age);
    }
}

pub fn now_ms() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_millis() as u64).unwrap_or(0)
}

/// Owns the registry; renders the exposition on request.
pub struct MetricsActor {
    registry: Registry,
    metrics: Metrics,
}

impl MetricsActor {
    pub fn new(registry: Registry, metrics: Metrics) -> Self {
        Self { registry, metrics }
    }
}

impl Actor for MetricsActor {
    type Context = Context<Self>;
}

/// Render the OpenMetrics text exposition.
#[derive(Message)]
#[rtype(result = "Result<String, std::fmt::Error>")]
pub struct RenderMetrics;

impl Handler<RenderMetrics> for MetricsActor {
    type Result = Result<String, std::fmt::Error>;

    fn handle(&mut self, _msg: RenderMetrics, _ctx: &mut Self::Context) -> Self::Result {
        self.metrics.refresh_computed_gauges();
        let mut out = String::with_capacity(16 * 1024);
        prometheus_client::encoding::text::encode(&mut out, &self.registry)?;
        Ok(out)
    }
}

/// Content type of what [`RenderMetrics`] produces.
pub const CONTENT_TYPE: &str = "application/openmetrics-text; version=1.0.0; charset=utf-8";

#[cfg(test)]
mod tests {
    use super::*;

    fn render(registry: &Registry) -> String {
        let mut out = String::new();
        prometheus_client::encoding::text::encode(&mut out, registry).unwrap();
        out
    }

    #[test]
    fn exposes_the_seed_names_and_labels() {
        let (m, registry) = Metrics::new("0.1.0", "node-1");
        m.record_http(MethodLabel::Put, RouteLabel::Files, 201, Duration::from_millis(3));
        m.record_backend(BackendLabel::Localfs, BackendOp::Create, false, Duration::from_millis(1));
        m.record_metadata(MetadataOp::Get, Duration::from_micros(300));
        m.record_lock(LockOp::Acquire, true, Duration::ZERO);
        m.record_cross_server(CrossServerOp::ProxyRead, "node-2", true, Some(Duration::from_millis(2)));
        let text = render(&registry);
        for expected in [
            r#"callfs_http_requests_total{method="PUT",path="/v1/files/*",status_code="201"} 1"#,
            r#"callfs_http_request_duration_seconds_bucket{le="0.005",method="PUT",path="/v1/files/*"} 1"#,
            r#"callfs_backend_ops_total{backend_type="localfs",operation="create",status="failure"} 1"#,
            r#"callfs_metadata_db_queries_total{operation="get"} 1"#,
            r#"callfs_lock_operations_total{operation="acquire",status="success"} 1"#,
            r#"callfs_cross_server_operations_total{operation="proxy_read",peer="node-2",status="success"} 1"#,
            "callfs_active_locks 0",
            r#"callfs_build_info{version="0.1.0",instance_id="node-1"} 1"#,
        ] {
            assert!(text.contains(expected), "missing {expected} in\n{text}");
        }
    }

    #[test]
    fn oldest_lock_age_is_computed_at_render() {
        let (m, registry) = Metrics::new("0.1.0", "node-1");
        m.oldest_lock_since_ms.store(now_ms() - 5_000, Ordering::Relaxed);
        m.refresh_computed_gauges();
        let text = render(&registry);
        let line = text.lines().find(|l| l.starts_with("callfs_oldest_lock_age_seconds ")).unwrap();
        let value: f64 = line.split(' ').nth(1).unwrap().parse().unwrap();
        assert!((4.9..10.0).contains(&value), "{line}");
    }

    #[test]
    fn error_kinds_carry_their_component() {
        assert_eq!(ErrorKind::OrphanBytes.component().as_str(), "backend");
        assert_eq!(ErrorKind::LeaseLost.component().as_str(), "locks");
        assert_eq!(ErrorKind::QueryFailed.component().as_str(), "metadata_store");
    }
}
