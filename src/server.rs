//! Start-up in the order of observability.md §4, then serve until SIGINT/SIGTERM.

use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime};

use actix::prelude::*;
use actix_web::{web, App, HttpServer};
use callfs_actors::locks::{LeaseStore, Leases, LockTable};
use callfs_actors::metadata::{self, EntryReader, MetadataStore, StoreKind};
use callfs_actors::metrics::{Metrics, MetricsActor};
use callfs_actors::peer::{PeerProxy, PeerSettings};
use callfs_actors::storage::localfs::{self, LocalFsWorker};

use crate::auth::KeyRing;
use crate::config::{self, Config};
use crate::http::middleware::{not_found, Pipeline};
use crate::http::routes;
use crate::node::{LocalPeerProxy, Node, Settings};
use crate::rate_limit::{self, parse_trusted, RateLimiter};
use crate::tls;

/// Threads for short blocking disk calls (open, rename, delete, mkdir).
const LOCALFS_THREADS: usize = 16;
/// Lease workers (`dlm.type: postgres`), each with its connection.
const LEASE_THREADS: usize = 4;
/// Read connections of the storage workers (SQLite; PostgreSQL takes at most `max_connections`).
const READER_CONNECTIONS: u32 = 8;
/// Listings streamed at once (each holds a thread, a connection and a read snapshot while its
/// client reads); further listings wait their turn, up to `server.metadata_op_timeout`.
const LISTING_READERS: usize = 4;

pub fn run(config_path: Option<&Path>) -> i32 {
    let Some(loaded) = config::load_or_report(config_path) else {
        return 1;
    };
    crate::logging::init(&loaded.config.log.level, &loaded.config.log.format);
    for warning in &loaded.warnings {
        let key = warning.split(':').next().unwrap_or("");
        log::warn!(key = key, warning = warning.as_str(); "configuration warning");
    }
    let config = loaded.config;
    if std::env::var_os("BENCH_DISABLE_METRICS").is_some_and(|v| v == "1") {
        // Only for `make bench`'s on/off comparison; /metrics then shows no request counts.
        callfs_actors::metrics::set_recording(false);
        log::warn!(variable = "BENCH_DISABLE_METRICS"; "metrics recording is off");
    }
    match actix_web::rt::System::new().block_on(serve(config)) {
        Ok(()) => 0,
        Err(err) => {
            log::error!(error = err.as_str(); "start-up failed");
            1
        }
    }
}

/// The `backend.s3_*` settings of the S3 worker.
pub fn s3_settings(config: &Config) -> callfs_actors::storage::s3::S3Settings {
    let b = &config.backend;
    callfs_actors::storage::s3::S3Settings {
        bucket: b.s3_bucket_name.clone(),
        region: b.s3_region.clone(),
        endpoint: b.s3_endpoint.clone(),
        access_key: b.s3_access_key.clone(),
        secret_key: b.s3_secret_key.clone(),
        server_side_encryption: b.s3_server_side_encryption.clone(),
        kms_key_id: b.s3_kms_key_id.clone(),
        acl: b.s3_acl.clone(),
    }
}

/// The S3 worker when a bucket is configured; its HEAD must succeed (storage.md §3), else start fails.
pub async fn start_s3(config: &Config) -> Result<Option<callfs_actors::storage::s3::S3Worker>, String> {
    if config.backend.s3_bucket_name.is_empty() {
        return Ok(None);
    }
    let worker = callfs_actors::storage::s3::S3Worker::new(&s3_settings(config)).map_err(|e| e.to_string())?;
    worker.check_bucket().await.map_err(|e| format!("S3 bucket {}: {e}", config.backend.s3_bucket_name))?;
    Ok(Some(worker))
}

fn settings(config: &Config) -> Settings {
    Settings {
        instance_id: config.instance_discovery.instance_id.clone(),
        max_upload_bytes: config.server.max_upload_bytes,
        max_header_bytes: config.server.max_header_bytes,
        read_timeout: config.server.read_timeout,
        write_timeout: config.server.write_timeout,
        file_op_timeout: config.server.file_op_timeout,
        metadata_op_timeout: config.server.metadata_op_timeout,
        lock_timeout: config.dlm.acquire_timeout,
        default_backend: config.backend.default_backend.clone(),
        metrics_require_auth: config.metrics.require_auth,
        peers: config.instance_discovery.peer_endpoints.clone(),
        trusted_proxies: parse_trusted(&config.server.trusted_proxies),
        external_url: config.external_base_url(),
    }
}

async fn serve(config: Config) -> Result<(), String> {
    let started_at = SystemTime::now();
    let instance_id = config.instance_discovery.instance_id.clone();
    let (metrics, registry) = Metrics::new(env!("CARGO_PKG_VERSION"), &instance_id);
    for peer in config.instance_discovery.peer_endpoints.keys() {
        metrics.set_peer_up(peer, false);
    }

    let (kind, target) = match config.metadata_store.kind.as_str() {
        "postgres" => (StoreKind::Postgres, config.metadata_store.dsn.clone()),
        _ => (StoreKind::Sqlite, config.metadata_store.sqlite_path.clone()),
    };
    let max_connections = config.metadata_store.max_connections;
    let op_timeout = config.server.metadata_op_timeout;
    let pool_metrics = metrics.clone();
    let reader_target = target.clone();
    let pool = web::block(move || metadata::connect(kind, &target, max_connections, op_timeout, &pool_metrics))
        .await
        .map_err(|e| e.to_string())?
        .map_err(|e| format!("metadata store: {e}"))?;
    let threads = match kind {
        StoreKind::Sqlite => 4,
        StoreKind::Postgres => max_connections.max(1) as usize,
    };
    let store_metrics = metrics.clone();
    let metadata = SyncArbiter::start(threads, move || MetadataStore::new(pool.clone(), store_metrics.clone()));
    let target = match kind {
        StoreKind::Postgres => config.metadata_store.dsn.clone(),
        StoreKind::Sqlite => config.metadata_store.sqlite_path.clone(),
    };
    let readers = web::block(move || metadata::connect_readers(kind, &target, LISTING_READERS as u32, op_timeout))
        .await
        .map_err(|e| e.to_string())?
        .map_err(|e| format!("metadata store (listing readers): {e}"))?;
    let reader_metrics = metrics.clone();
    let listings =
        SyncArbiter::start(LISTING_READERS, move || MetadataStore::new(readers.clone(), reader_metrics.clone()));

    let mut lease_store = None;
    let locks = match config.dlm.kind.as_str() {
        "postgres" => {
            let dsn = config.dlm_dsn();
            // One connection per lease worker: more would only sit idle on the server.
            let pool = web::block(move || LeaseStore::connect(&dsn, LEASE_THREADS as u32))
                .await
                .map_err(|e| e.to_string())?
                .map_err(|e| format!("lock manager: {e}"))?;
            let store = SyncArbiter::start(LEASE_THREADS, move || LeaseStore::new(pool.clone()));
            lease_store = Some(store.clone());
            let leases = Leases { store, instance_id: instance_id.clone(), ttl: config.dlm.lease_ttl };
            LockTable::with_leases(metrics.clone(), leases).start()
        }
        _ => LockTable::new(metrics.clone()).start(),
    };
    let root = PathBuf::from(&config.backend.localfs_root_path);
    let check = root.clone();
    web::block(move || localfs::check_root(&check))
        .await
        .map_err(|e| e.to_string())?
        .map_err(|e| format!("localfs root: {e}"))?;
    let fsync = config.backend.localfs_fsync;
    // The storage workers read the row of a GET themselves (one blocking hop for a small file), on
    // a pool of their own: the store's connections stay free for writes.
    let reader_size = match kind {
        StoreKind::Sqlite => READER_CONNECTIONS,
        StoreKind::Postgres => max_connections.clamp(1, READER_CONNECTIONS),
    };
    let reader_metrics = metrics.clone();
    let reader =
        web::block(move || EntryReader::connect(kind, &reader_target, reader_size, op_timeout, reader_metrics))
            .await
            .map_err(|e| e.to_string())?
            .map_err(|e| format!("metadata store: {e}"))?;
    let disk_instance = instance_id.clone();
    let localfs = SyncArbiter::start(LOCALFS_THREADS, move || {
        LocalFsWorker::with_reader(root.clone(), fsync, reader.clone(), disk_instance.clone())
    });
    // A revision-1 root is converted before the first request can look for a blob.
    crate::fsck::upgrade_layout(&metadata, &localfs, &instance_id).await?;
    let s3 = start_s3(&config).await?;
    // Garbage, abandoned intents and leftovers of uploads cut short by a crash: now and every minute.
    callfs_actors::sweep::Sweeper {
        instance_id: instance_id.clone(),
        metadata: metadata.clone(),
        localfs: localfs.clone(),
        s3: s3.clone(),
        metrics: metrics.clone(),
        started_at: chrono::DateTime::<chrono::Utc>::from(started_at).naive_utc(),
        started_at_system: started_at,
    }
    .start();

    let metrics_actor = MetricsActor::new(registry, metrics.clone()).start();
    let peer_settings = PeerSettings {
        instance_id: instance_id.clone(),
        internal_secret: config.auth.internal_proxy_secret.clone(),
        peers: config.instance_discovery.peer_endpoints.clone(),
        connect_timeout: config.backend.internal_proxy_connect_timeout,
        timeout: config.backend.internal_proxy_timeout,
        probe_interval: config.instance_discovery.health_probe_interval,
        skip_tls_verify: config.backend.internal_proxy_skip_tls_verify,
        ca_file: Some(config.backend.internal_proxy_ca_file.clone()),
        probes: true,
    };
    let worker_peer_settings = PeerSettings { probes: false, ..peer_settings.clone() };
    let worker_metrics = metrics.clone();
    // The HTTP client is bound to its thread: the proxy gets an arbiter of its own.
    let proxy_metrics = metrics.clone();
    let proxy_arbiter = Arbiter::new();
    let peers =
        PeerProxy::start_in_arbiter(&proxy_arbiter.handle(), move |_| PeerProxy::new(peer_settings, proxy_metrics));
    let rate = &config.rate_limit;
    let node = web::Data::new(Node {
        settings: settings(&config),
        metadata,
        listings,
        localfs,
        s3,
        upload_slots: crate::uploads::UploadSlots::default(),
        locks,
        lease_store,
        peers,
        metrics,
        metrics_actor,
        keys: KeyRing::new(config.identities(), &config.auth.internal_proxy_secret),
        api_limiter: RateLimiter::new(rate.api_per_second, rate.api_burst.max(0) as u32),
        link_limiter: RateLimiter::new(rate.links_per_second, rate.links_burst.max(0) as u32),
        download_limiter: RateLimiter::new(rate.downloads_per_second, rate.downloads_burst.max(0) as u32),
        link_key: crate::links::LinkKey::new(&config.auth.single_use_link_secret),
    });
    // Used and expired links answer 410 for a day, then are purged (security.md §5).
    let cleanup_node = node.clone();
    actix_web::rt::spawn(async move {
        let mut every = tokio::time::interval(Duration::from_secs(300));
        loop {
            every.tick().await;
            let purge = callfs_actors::metadata::CleanupLinks { retention: Duration::from_secs(24 * 3600) };
            if let Err(err) = cleanup_node.meta(purge).await {
                log::error!(error = err.to_string().as_str(); "link cleanup failed");
                cleanup_node.metrics.record_error(callfs_actors::metrics::ErrorKind::CleanupFailed);
            }
        }
    });
    // Clients whose bucket has refilled are dropped from the limiters here, never on the request path.
    let limiter_node = node.clone();
    actix_web::rt::spawn(async move {
        let mut every = tokio::time::interval(rate_limit::RETAIN_INTERVAL);
        loop {
            every.tick().await;
            for limiter in [&limiter_node.api_limiter, &limiter_node.link_limiter, &limiter_node.download_limiter] {
                limiter.retain_recent();
            }
        }
    });

    let api_node = node.clone();
    let server = HttpServer::new(move || {
        // Runs on each worker thread: its own peer proxy, reached without leaving the thread.
        let local_proxy = PeerProxy::new(worker_peer_settings.clone(), worker_metrics.clone()).start();
        App::new()
            .app_data(api_node.clone())
            .app_data(LocalPeerProxy(local_proxy))
            .wrap(Pipeline)
            .configure(routes::configure)
    })
    .on_connect(crate::http::stall::record_socket)
    .client_request_timeout(config.server.read_timeout)
    .keep_alive(config.server.idle_timeout)
    .client_disconnect_timeout(Duration::from_secs(1))
    .shutdown_timeout(30);

    let listen = config.listen_socket_addr();
    let protocol = effective_protocol(&config);
    let server = match protocol {
        "https" => {
            let acceptor = tls::acceptor(&config.server.cert_file, &config.server.key_file)?;
            server.bind_openssl(&listen, acceptor)
        }
        _ => server.bind(&listen),
    }
    .map_err(|e| format!("cannot listen on {listen}: {e}"))?;
    log::info!(addr = listen.as_str(), kind = "api"; "listener started");

    let api = server.run();
    let metrics_server = match config.metrics_socket_addr() {
        Some(addr) => {
            let metrics_node = node.clone();
            let server = HttpServer::new(move || {
                App::new()
                    .app_data(metrics_node.clone())
                    .configure(routes::configure_metrics_listener)
                    .default_service(web::to(not_found))
            })
            .workers(1)
            .bind(&addr)
            .map_err(|e| format!("cannot listen on {addr}: {e}"))?;
            log::info!(addr = addr.as_str(), kind = "metrics"; "listener started");
            Some(server.run())
        }
        None => None,
    };

    log::info!(
        instance_id = instance_id.as_str(),
        listen_addr = listen.as_str(),
        protocol = protocol,
        metadata_store = config.metadata_store.kind.as_str(),
        dlm = config.dlm.kind.as_str(),
        default_backend = config.backend.default_backend.as_str(),
        version = env!("CARGO_PKG_VERSION");
        "callfs started"
    );
    let result = match metrics_server {
        Some(metrics_server) => futures_util::future::try_join(api, metrics_server).await.map(|_| ()),
        None => api.await,
    };
    log::info!(in_flight = 0; "shutdown complete");
    result.map_err(|e| e.to_string())
}

/// `auto` serves TLS only when both certificate files exist.
fn effective_protocol(config: &Config) -> &'static str {
    match config.server.protocol.as_str() {
        "http" => "http",
        "auto" => {
            let present = |f: &str| !f.is_empty() && Path::new(f).exists();
            if present(&config.server.cert_file) && present(&config.server.key_file) {
                "https"
            } else {
                log::warn!(protocol = "auto"; "certificate files not found; serving plain HTTP");
                "http"
            }
        }
        _ => "https",
    }
}
