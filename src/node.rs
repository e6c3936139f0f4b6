//! The node's shared state: actor addresses and the settings requests need, plus the one place
//! where actor calls get their timeouts.

use std::collections::BTreeMap;
use std::time::Duration;

use actix::dev::ToEnvelope;
use actix::prelude::*;
use callfs_actors::locks::{AcquireLock, LockGuard, LockTable};
use callfs_actors::metadata::MetadataStore;
use callfs_actors::metrics::{Metrics, MetricsActor};
use callfs_actors::peer::PeerProxy;
use callfs_actors::storage::localfs::{EntryBlob, LocalFsWorker, OpenEntry};
use callfs_actors::storage::s3::S3Worker;
use callfs_actors::storage::{Backend, BlobStore};
use callfs_actors::ActorError;
use ipnet::IpNet;

use crate::auth::KeyRing;
use crate::error::ApiError;
use crate::rate_limit::RateLimiter;

/// The calling worker thread's own peer proxy (request forwarding stays on the thread).
#[derive(Clone)]
pub struct LocalPeerProxy(pub Addr<PeerProxy>);

/// Limits and switches taken from the configuration once at start.
#[derive(Debug, Clone)]
pub struct Settings {
    pub instance_id: String,
    pub max_upload_bytes: u64,
    pub max_header_bytes: u64,
    pub read_timeout: Duration,
    pub write_timeout: Duration,
    pub file_op_timeout: Duration,
    pub metadata_op_timeout: Duration,
    pub lock_timeout: Duration,
    pub default_backend: String,
    pub metrics_require_auth: bool,
    pub peers: BTreeMap<String, String>,
    pub trusted_proxies: Vec<IpNet>,
    /// Base of link URLs: scheme and authority, no trailing slash.
    pub external_url: String,
}

pub struct Node {
    pub settings: Settings,
    pub metadata: Addr<MetadataStore>,
    /// Listing readers: threads and connections of their own, so a listing held open by a slow
    /// client never takes a thread or connection from the requests above.
    pub listings: Addr<MetadataStore>,
    pub localfs: Addr<LocalFsWorker>,
    /// The shared bucket, when `backend.s3_bucket_name` is set.
    pub s3: Option<S3Worker>,
    /// Admission of upload bodies (per client and per node).
    pub upload_slots: crate::uploads::UploadSlots,
    pub locks: Addr<LockTable>,
    /// The PostgreSQL lease table, with `dlm.type: postgres`.
    pub lease_store: Option<Addr<callfs_actors::locks::LeaseStore>>,
    pub peers: Addr<PeerProxy>,
    pub metrics: Metrics,
    pub metrics_actor: Addr<MetricsActor>,
    pub keys: KeyRing,
    pub api_limiter: RateLimiter,
    pub link_limiter: RateLimiter,
    pub download_limiter: RateLimiter,
    pub link_key: crate::links::LinkKey,
}

/// Sends `msg` and waits at most `timeout`; a timeout becomes `on_timeout`.
async fn ask<A, M, T>(addr: &Addr<A>, msg: M, timeout: Duration, on_timeout: ApiError) -> Result<T, ApiError>
where
    A: Actor + Handler<M>,
    A::Context: ToEnvelope<A, M>,
    M: Message<Result = Result<T, ActorError>> + Send + 'static,
    T: Send + 'static,
{
    match tokio::time::timeout(timeout, addr.send(msg)).await {
        Ok(answer) => Ok(answer??),
        Err(_) => Err(on_timeout),
    }
}

impl Node {
    /// One metadata round trip, bounded by `server.metadata_op_timeout`.
    pub async fn meta<M, T>(&self, msg: M) -> Result<T, ApiError>
    where
        MetadataStore: Handler<M>,
        M: Message<Result = Result<T, ActorError>> + Send + 'static,
        T: Send + 'static,
    {
        let timeout = self.settings.metadata_op_timeout;
        ask(&self.metadata, msg, timeout, ApiError::MetadataUnavailable("metadata query timed out".into())).await
    }

    /// One storage call, bounded by `server.file_op_timeout`.
    pub async fn disk<M, T>(&self, msg: M) -> Result<T, ApiError>
    where
        LocalFsWorker: Handler<M>,
        M: Message<Result = Result<T, ActorError>> + Send + 'static,
        T: Send + 'static,
    {
        let timeout = self.settings.file_op_timeout;
        ask(&self.localfs, msg, timeout, ApiError::BackendUnavailable("storage call timed out".into())).await
    }

    /// A row lookup with the read of its blob on a storage worker (one blocking hop), bounded by
    /// both timeouts; a timeout is the metadata's (the lookup comes first).
    pub async fn open_entry(&self, msg: OpenEntry) -> Result<EntryBlob, ApiError> {
        let timeout = self.settings.metadata_op_timeout + self.settings.file_op_timeout;
        ask(&self.localfs, msg, timeout, ApiError::MetadataUnavailable("metadata query timed out".into())).await
    }

    /// The blob store of `backend`; S3 without a configured bucket is unavailable.
    pub fn store(&self, backend: Backend) -> Result<BlobStore, ApiError> {
        match backend {
            Backend::Localfs => Ok(BlobStore::Localfs(self.localfs.clone())),
            Backend::S3 => self
                .s3
                .clone()
                .map(BlobStore::S3)
                .ok_or_else(|| ApiError::BackendUnavailable("the s3 backend is not configured on this node".into())),
        }
    }

    /// Where new files go (`backend.default_backend`).
    pub fn default_backend(&self) -> Backend {
        Backend::parse(&self.settings.default_backend).unwrap_or(Backend::Localfs)
    }

    /// One blob-store call (not counting body streaming), bounded by `server.file_op_timeout`.
    pub async fn storage<T>(
        &self,
        call: impl std::future::Future<Output = Result<T, ActorError>>,
    ) -> Result<T, ApiError> {
        match tokio::time::timeout(self.settings.file_op_timeout, call).await {
            Ok(answer) => Ok(answer?),
            Err(_) => Err(ApiError::BackendUnavailable("storage call timed out".into())),
        }
    }

    /// Takes the path lock, waiting at most `dlm.acquire_timeout`.
    pub async fn lock(&self, key: &str) -> Result<LockGuard, ApiError> {
        let msg = AcquireLock { key: key.to_string(), timeout: self.settings.lock_timeout };
        Ok(self.locks.send(msg).await??)
    }

    /// Locks two paths in byte order so that concurrent moves cannot deadlock.
    pub async fn lock_pair(&self, a: &str, b: &str) -> Result<(LockGuard, Option<LockGuard>), ApiError> {
        if a == b {
            return Ok((self.lock(a).await?, None));
        }
        let (first, second) = if a.as_bytes() <= b.as_bytes() { (a, b) } else { (b, a) };
        let first = self.lock(first).await?;
        let second = self.lock(second).await?;
        Ok((first, Some(second)))
    }
}
