//! File and directory operations: authorisation, existence rules, path locks and the commits.
//! Bytes live in immutable blobs named by generated ids; a content write stages a new blob and
//! switches the row to it in one transaction, and renames and moves touch metadata only. Handlers
//! call these and build responses.

use std::time::{Duration, Instant};

use actix_web::web::Payload;
use bytes::Bytes;
use bytes::BytesMut;
use callfs_actors::locks::LockGuard;
use callfs_actors::metadata::{
    BlobRef, CreateEntry, DeleteEntry, DropIntent, Fence, GetEntries, GetEntry, HasChildren, Inode, ListingCursor,
    ListingEvent, ListingShape, NewEntry, PrepareWrite, RecordIntent, RenameEntry, StreamListing, SwitchBlob,
    TouchIntent,
};
use callfs_actors::metrics::{BackendLabel, BackendOp, CrossServerOp, ErrorKind, FileOp};
use callfs_actors::storage::localfs::{is_blob_id, new_blob_id, OpenEntry, StoreBlob};
use callfs_actors::storage::s3::content_type_for;
pub use callfs_actors::storage::{Backend, BlobContent as Content, BlobStore, BlobWriter, OpenedBlob as Opened};
use callfs_actors::ActorError;
use futures_util::{Stream, StreamExt};
use tokio::sync::mpsc;

use crate::auth::Identity;
use crate::error::{ApiError, CrossServerConflict};
use crate::node::Node;
use crate::path::CanonicalPath;

/// Files up to this size are read in one storage call and sent from memory.
const INLINE_READ_LIMIT: u64 = 64 * 1024;
/// Bytes gathered from the network before one blocking write.
const WRITE_UNIT: usize = 256 * 1024;

/// Where the bytes of an entry are served from: the one routing decision of the node.
pub enum Route {
    Local,
    Peer(String),
}

pub fn route(node: &Node, entry: &Inode) -> Route {
    match entry.callfs_instance_id.as_deref() {
        Some(owner) if entry.is_file() && entry.backend() == Backend::Localfs && owner != node.settings.instance_id => {
            Route::Peer(owner.to_string())
        }
        _ => Route::Local,
    }
}

fn backend_label(entry: &Inode) -> BackendLabel {
    label(entry.backend())
}

fn label(backend: Backend) -> BackendLabel {
    match backend {
        Backend::S3 => BackendLabel::S3,
        Backend::Localfs => BackendLabel::Localfs,
    }
}

/// The entry at `path` and every existing ancestor, in one metadata round trip.
pub struct Lineage {
    pub target: Option<Inode>,
    /// Existing ancestors, nearest first.
    pub ancestors: Vec<Inode>,
    pub parent_path: Option<CanonicalPath>,
}

impl Lineage {
    pub fn parent(&self) -> Option<&Inode> {
        let parent = self.parent_path.as_ref()?;
        self.ancestors.iter().find(|a| a.path == parent.as_str())
    }

    /// An ancestor that is a file makes the path impossible.
    pub fn blocked_by_file(&self) -> bool {
        self.ancestors.iter().any(Inode::is_file)
    }
}

impl Lineage {
    /// Sorts the rows read at [`lineage_paths`] of `path`.
    fn of(path: &CanonicalPath, rows: Vec<Inode>) -> Self {
        let mut target = None;
        let mut found = Vec::new();
        for row in rows {
            if row.path == path.as_str() {
                target = Some(row);
            } else {
                found.push(row);
            }
        }
        found.sort_by_key(|r| std::cmp::Reverse(r.path.len()));
        Lineage { target, ancestors: found, parent_path: path.parent() }
    }
}

/// `path` and its ancestors.
fn lineage_paths(path: &CanonicalPath) -> Vec<String> {
    let mut paths: Vec<String> = path.ancestors().iter().map(|a| a.as_str().to_string()).collect();
    paths.push(path.as_str().to_string());
    paths
}

pub async fn lineage(node: &Node, path: &CanonicalPath) -> Result<Lineage, ApiError> {
    let rows = node.meta(GetEntries { paths: lineage_paths(path) }).await?;
    Ok(Lineage::of(path, rows))
}

pub async fn get_entry(node: &Node, path: &CanonicalPath) -> Result<Option<Inode>, ApiError> {
    node.meta(GetEntry { path: path.as_str().to_string() }).await
}

/// `Read`: every authenticated user may read what exists.
pub async fn read_entry(node: &Node, path: &CanonicalPath) -> Result<Inode, ApiError> {
    get_entry(node, path).await?.ok_or(ApiError::FileNotFound)
}

fn owns(identity: &Identity, entry: &Inode) -> bool {
    identity.is_admin || identity.user_id == entry.owner
}

/// `Write` (security.md §3).
pub fn check_write(identity: &Identity, lineage: &Lineage) -> Result<(), ApiError> {
    let denied = || ApiError::PermissionDenied("only the owner may modify this file".into());
    match (&lineage.target, lineage.parent()) {
        (Some(target), _) if target.is_dir() || owns(identity, target) => Ok(()),
        (Some(_), _) => Err(denied()),
        (None, Some(parent)) if parent.is_dir() || owns(identity, parent) => Ok(()),
        (None, Some(_)) => Err(denied()),
        (None, None) => Ok(()),
    }
}

/// `Delete` (security.md §3).
pub fn check_delete(identity: &Identity, entry: &Inode) -> Result<(), ApiError> {
    if owns(identity, entry) {
        Ok(())
    } else {
        Err(ApiError::PermissionDenied("only the owner may delete or move this entry".into()))
    }
}

fn other_node_conflict(node: &Node, entry: &Inode, for_directory: bool) -> Option<ApiError> {
    let Route::Peer(owner) = route(node, entry) else {
        return None;
    };
    let peer_label = if node.settings.peers.contains_key(&owner) { owner.as_str() } else { "unknown" };
    node.metrics.record_cross_server(CrossServerOp::ConflictCheck, peer_label, true, None);
    let update_url = (!for_directory)
        .then(|| node.settings.peers.get(&owner))
        .flatten()
        .map(|endpoint| format!("{}/v1/files{}", endpoint.trim_end_matches('/'), entry.path));
    Some(ApiError::CrossServerConflict(Box::new(CrossServerConflict {
        existing_path: entry.path.clone(),
        instance_id: owner,
        backend_type: entry.backend_type.clone(),
        suggestion: if for_directory {
            "The path is a file on another node; a directory cannot be created there."
        } else {
            "The file exists on another node; use PUT to update it."
        },
        update_url,
    })))
}

/// What a successful upload did.
#[derive(Debug, PartialEq, Eq)]
pub enum Written {
    Created,
    Replaced,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum WriteMode {
    /// POST: the path must not exist.
    CreateOnly,
    /// PUT: create or replace a file.
    CreateOrReplace,
}

/// Where an upload goes, decided before any byte of the body is read.
pub enum WritePlan<'a> {
    /// Store here.
    Local(LocalWrite<'a>),
    /// The file lives on another node: stream the body there.
    Forward(String),
}

/// An upload to store here, as planned: the file it replaces (`None`: it creates one) and its new
/// blob, whose intent the plan recorded (dropped unused, it drops the intent).
pub struct LocalWrite<'a> {
    existing: Option<Box<Inode>>,
    blob: NewBlob<'a>,
    /// The declared `Content-Length`, which sizes S3 parts.
    declared_length: Option<u64>,
}

/// What the existence rules make of the planned target.
enum Target {
    /// Store here; `Some` is the file being replaced.
    Local(Option<Box<Inode>>),
    /// The file lives on another node.
    Forward(String),
}

/// The checks of api.md §8.3/§8.4 in their order: size, `Write`, existence, ancestors. The rows are
/// read in the round trip that records the intent of the blob the write will create, so a local
/// write reads its lineage once: its commit is a compare-and-set on these rows.
pub async fn plan_write<'a>(
    node: &'a Node,
    identity: &Identity,
    path: &CanonicalPath,
    mode: WriteMode,
    declared_length: Option<u64>,
) -> Result<WritePlan<'a>, ApiError> {
    if declared_length.is_some_and(|len| len > node.settings.max_upload_bytes) {
        return Err(ApiError::PayloadTooLarge);
    }
    let (lineage, blob) = match node.store(node.default_backend()) {
        Ok(store) => {
            let mut blob = NewBlob::new(node, store);
            let ancestors = path.ancestors().iter().map(|a| a.as_str().to_string()).collect();
            let prepare = PrepareWrite { path: path.as_str().to_string(), ancestors, intent: blob.intent() };
            let rows = node.meta(prepare).await?;
            blob.armed = true;
            (Lineage::of(path, rows), Ok(blob))
        }
        // Reported where a missing backend always was: after the checks.
        Err(err) => (lineage(node, path).await?, Err(err)),
    };
    check_write(identity, &lineage)?;
    let target = match check_writable_target(node, &lineage, mode)? {
        // Forwarded here, but the file moved on meanwhile: the one-hop rule forbids forwarding
        // again, and a content write needs no old byte, so it is stored here and switched to.
        Target::Forward(_) if identity.proxied_by.is_some() => Target::Local(lineage.target.clone().map(Box::new)),
        target => target,
    };
    if lineage.blocked_by_file() {
        return Err(ApiError::NotADirectory);
    }
    Ok(match target {
        Target::Local(existing) => WritePlan::Local(LocalWrite { existing, blob: blob?, declared_length }),
        Target::Forward(owner) => WritePlan::Forward(owner),
    })
}

/// Streams an upload into a new blob, then commits it under the path lock (storage.md §2).
pub async fn write_file(
    node: &Node,
    identity: &Identity,
    path: &CanonicalPath,
    mode: WriteMode,
    local: LocalWrite<'_>,
    body: impl Stream<Item = Result<Bytes, ApiError>> + Unpin,
) -> Result<Written, ApiError> {
    let started = Instant::now();
    let op = if local.existing.is_some() { BackendOp::Update } else { BackendOp::Create };
    let backend = label(local.blob.backend());
    let result = stage_and_commit(node, identity, path, mode, local, body).await;
    node.metrics.record_backend(backend, op, backend_ok(&result), started.elapsed());
    let written = result?;
    let file_op = if written == Written::Created { FileOp::Create } else { FileOp::Update };
    node.metrics.record_file_op(file_op, backend);
    Ok(written)
}

/// Applies the existence rules before any byte is read.
fn check_writable_target(node: &Node, lineage: &Lineage, mode: WriteMode) -> Result<Target, ApiError> {
    let Some(target) = &lineage.target else {
        return Ok(Target::Local(None));
    };
    if target.is_dir() {
        return Err(match mode {
            WriteMode::CreateOnly => ApiError::AlreadyExists("the path is an existing directory".into()),
            WriteMode::CreateOrReplace => ApiError::BadRequest("the path is a directory".into()),
        });
    }
    match mode {
        WriteMode::CreateOnly => Err(other_node_conflict(node, target, false)
            .unwrap_or_else(|| ApiError::AlreadyExists("the file already exists; use PUT to replace it".into()))),
        WriteMode::CreateOrReplace => match route(node, target) {
            Route::Local => Ok(Target::Local(Some(Box::new(target.clone())))),
            Route::Peer(owner) => Ok(Target::Forward(owner)),
        },
    }
}

/// A backend failure (as opposed to a client or conflict outcome) for the backend metrics.
fn backend_ok<T>(result: &Result<T, ApiError>) -> bool {
    !matches!(result, Err(ApiError::Storage(_) | ApiError::InsufficientStorage | ApiError::BackendUnavailable(_)))
}

/// A new blob that no row references yet: unless committed (or left to the sweep after an
/// ambiguous commit), dropping it deletes the bytes and the intent. Cleanup is a value, not a call
/// on every error path (a blob still being written is removed by its [`BlobWriter`]).
struct NewBlob<'a> {
    node: &'a Node,
    store: BlobStore,
    blob: String,
    size: u64,
    /// The blob is complete under its id (so dropping deletes it).
    published: bool,
    /// Its intent is recorded (so dropping drops it).
    armed: bool,
}

impl<'a> NewBlob<'a> {
    /// A fresh id in `store`; nothing recorded or written yet.
    fn new(node: &'a Node, store: BlobStore) -> Self {
        NewBlob { node, store, blob: new_blob_id(), size: 0, published: false, armed: false }
    }

    fn backend(&self) -> Backend {
        self.store.backend()
    }

    /// The `instance_id` of rows and intents of this blob: none for the shared bucket.
    fn instance_id(&self) -> Option<String> {
        (!self.backend().is_shared()).then(|| self.node.settings.instance_id.clone())
    }

    fn intent(&self) -> BlobRef {
        BlobRef {
            blob: self.blob.clone(),
            backend_type: self.backend().as_str().into(),
            instance_id: self.instance_id(),
        }
    }

    /// Settled by a commit: the row references it and the intent is gone.
    fn committed(mut self) {
        self.armed = false;
    }

    /// The commit's outcome is unknown: the intent (or the row) settles it later, nothing is deleted.
    fn left_to_the_sweep(mut self) {
        self.armed = false;
    }
}

impl Drop for NewBlob<'_> {
    fn drop(&mut self) {
        if !self.armed {
            return;
        }
        if self.published {
            self.store.delete_later(&self.blob);
        }
        self.node.metadata.do_send(DropIntent { blob: self.blob.clone() });
    }
}

/// True when a failed metadata call may still have committed (timeout, lost connection).
fn ambiguous(err: &ApiError) -> bool {
    matches!(err, ApiError::MetadataUnavailable(_))
}

/// How often a long upload refreshes its intent, so the sweep never takes it for abandoned.
const INTENT_TOUCH: Duration = Duration::from_secs(60);

/// Writes `body` into a new blob of `backend`: intent first, then the bytes (see [`fill_blob`]).
async fn write_blob<'a>(
    node: &'a Node,
    backend: Backend,
    path: &str,
    expected_len: Option<u64>,
    body: impl Stream<Item = Result<Bytes, ApiError>> + Unpin,
    max_bytes: u64,
) -> Result<NewBlob<'a>, ApiError> {
    let mut new = NewBlob::new(node, node.store(backend)?);
    node.meta(RecordIntent { blob: new.intent() }).await?;
    new.armed = true;
    fill_blob(node, new, path, expected_len, body, max_bytes).await
}

/// Writes `body` into `new`, whose intent is recorded. A localfs body that ends within the first
/// write unit is stored by one worker call (temporary file, bytes, fsync, final name); a longer one
/// chunk by chunk, never holding a thread between chunks (localfs stages in `tmp/`, S3 sends parts
/// as they fill), then published under the blob's final name. At most `max_bytes` are accepted.
/// `path` only picks the S3 Content-Type; `expected_len` (a declared or known length) only sizes
/// S3 parts.
async fn fill_blob<'a>(
    node: &'a Node,
    mut new: NewBlob<'a>,
    path: &str,
    expected_len: Option<u64>,
    mut body: impl Stream<Item = Result<Bytes, ApiError>> + Unpin,
    max_bytes: u64,
) -> Result<NewBlob<'a>, ApiError> {
    let mut buffer = BytesMut::new();
    let mut ended = false;
    while buffer.len() < WRITE_UNIT {
        match body.next().await {
            None => {
                ended = true;
                break;
            }
            Some(Ok(chunk)) => {
                if (buffer.len() + chunk.len()) as u64 > max_bytes {
                    return Err(ApiError::PayloadTooLarge);
                }
                buffer.extend_from_slice(&chunk);
            }
            Some(Err(err)) => return Err(err),
        }
    }
    if ended && new.backend() == Backend::Localfs {
        new.size = node.disk(StoreBlob { blob: new.blob.clone(), data: buffer.freeze() }).await?;
        new.published = true;
        return Ok(new);
    }
    let mut writer = node.storage(new.store.create(&new.blob, content_type_for(path), expected_len)).await?;
    let mut touched = Instant::now();
    loop {
        if (ended && !buffer.is_empty()) || buffer.len() >= WRITE_UNIT {
            writer.write(buffer.split().freeze()).await?;
        }
        if touched.elapsed() >= INTENT_TOUCH {
            touched = Instant::now();
            node.metadata.do_send(TouchIntent { blob: new.blob.clone() });
        }
        if ended {
            break;
        }
        match body.next().await {
            None => ended = true,
            Some(Ok(chunk)) => {
                if writer.size() + (buffer.len() + chunk.len()) as u64 > max_bytes {
                    return Err(ApiError::PayloadTooLarge);
                }
                buffer.extend_from_slice(&chunk);
            }
            Some(Err(err)) => return Err(err),
        }
    }
    new.size = match new.backend() {
        Backend::Localfs => node.storage(writer.finish()).await?,
        // The last part and the completion: bounded by the S3 client's request timeout.
        Backend::S3 => writer.finish().await?,
    };
    new.published = true;
    Ok(new)
}

async fn stage_and_commit(
    node: &Node,
    identity: &Identity,
    path: &CanonicalPath,
    mode: WriteMode,
    local: LocalWrite<'_>,
    body: impl Stream<Item = Result<Bytes, ApiError>> + Unpin,
) -> Result<Written, ApiError> {
    let LocalWrite { existing, blob, declared_length } = local;
    let new = fill_blob(node, blob, path.as_str(), declared_length, body, node.settings.max_upload_bytes).await?;
    let lock = node.lock(path.as_str()).await?;
    let fences: Vec<Fence> = lock.fence().into_iter().collect();
    // The commit is a compare-and-set on the rows the plan read: the replaced file still at this
    // path with the content version read, or no row at the path for a create.
    let committed = match commit(node, identity, path, existing.as_deref(), &new, fences.clone()).await {
        Err(ApiError::ResourceChanged(_) | ApiError::AlreadyExists(_)) => {
            // The path changed since the plan (created, replaced or moved): decide again under the
            // lock, on what is there now, which is what this write is authorised against.
            let lineage = lineage(node, path).await?;
            check_write(identity, &lineage)?;
            let replace = match check_writable_target(node, &lineage, mode)? {
                Target::Local(now) => now,
                // Created (or moved) on another node since the plan: the new content is already a
                // blob here, so the row simply switches to it; the old blob goes to its node's garbage.
                Target::Forward(_) => lineage.target.clone().map(Box::new),
            };
            if lineage.blocked_by_file() {
                return Err(ApiError::NotADirectory);
            }
            commit(node, identity, path, replace.as_deref(), &new, fences).await.map_err(|err| match err {
                ApiError::AlreadyExists(_) => ApiError::AlreadyExists("the path was created concurrently".into()),
                other => other,
            })
        }
        other => other,
    };
    match committed {
        Ok(written) => {
            new.committed();
            Ok(written)
        }
        Err(err) if ambiguous(&err) => {
            log::warn!(path = path.as_str(), blob = new.blob.as_str(), error = err.to_string().as_str(); "commit outcome unknown; the sweep settles the blob");
            new.left_to_the_sweep();
            Err(err)
        }
        // Definitely not committed: the new blob is deleted as `new` drops.
        Err(err) => Err(err),
    }
}

/// One commit transaction of a content write: switch `replace` to the new blob (compare-and-set on
/// its id, content version and path) or create the file.
async fn commit(
    node: &Node,
    identity: &Identity,
    path: &CanonicalPath,
    replace: Option<&Inode>,
    new: &NewBlob<'_>,
    fences: Vec<Fence>,
) -> Result<Written, ApiError> {
    match replace {
        Some(entry) => {
            let switch = SwitchBlob {
                id: entry.id,
                expect_version: entry.content_version,
                expect_blob: None,
                expect_path: Some(path.as_str().to_string()),
                blob: new.blob.clone(),
                size: new.size as i64,
                backend_type: new.backend().as_str().into(),
                instance_id: new.instance_id(),
                content_write: true,
                fences,
            };
            node.meta(switch).await.map(|_| Written::Replaced)
        }
        None => {
            let entry = NewEntry {
                path: path.as_str().to_string(),
                is_dir: false,
                size: new.size as i64,
                owner: identity.user_id.clone(),
                backend_type: new.backend().as_str().into(),
                instance_id: new.instance_id(),
                blob: Some(new.blob.clone()),
            };
            node.meta(CreateEntry { entry, fences }).await.map(|_| Written::Created)
        }
    }
}

/// A request body as a stream of chunks: each must arrive within `inactivity`
/// (`server.read_timeout`, else 408); a body cut short is a client error.
pub fn body_stream(payload: Payload, inactivity: Duration) -> impl Stream<Item = Result<Bytes, ApiError>> + Unpin {
    Box::pin(futures_util::stream::unfold(Some(payload), move |payload| async move {
        let mut payload = payload?;
        match tokio::time::timeout(inactivity, payload.next()).await {
            Err(_) => Some((Err(ApiError::RequestTimeout), None)),
            Ok(None) => None,
            Ok(Some(Ok(chunk))) => Some((Ok(chunk), Some(payload))),
            Ok(Some(Err(actix_web::error::PayloadError::Overflow))) => Some((Err(ApiError::PayloadTooLarge), None)),
            Ok(Some(Err(other))) => {
                Some((Err(ApiError::BadRequest(format!("request body ended early: {other}"))), None))
            }
        }
    }))
}

/// Creates a directory (and missing ancestors). `Ok(false)` when it already existed.
pub async fn create_directory(node: &Node, identity: &Identity, path: &CanonicalPath) -> Result<bool, ApiError> {
    if path.is_root() {
        return Ok(false);
    }
    // One decision, under the lock: what is there now is what this create is authorised against.
    let lock = node.lock(path.as_str()).await?;
    let lineage = lineage(node, path).await?;
    check_write(identity, &lineage)?;
    match &lineage.target {
        Some(existing) if existing.is_dir() => return Ok(false),
        Some(existing) => {
            return Err(other_node_conflict(node, existing, true)
                .unwrap_or_else(|| ApiError::AlreadyExists("the path is an existing file".into())))
        }
        None => {}
    }
    if lineage.blocked_by_file() {
        return Err(ApiError::NotADirectory);
    }
    let entry = NewEntry {
        path: path.as_str().to_string(),
        is_dir: true,
        size: 0,
        owner: identity.user_id.clone(),
        backend_type: node.settings.default_backend.clone(),
        instance_id: Some(node.settings.instance_id.clone()),
        blob: None,
    };
    let fences: Vec<Fence> = lock.fence().into_iter().collect();
    match node.meta(CreateEntry { entry, fences }).await {
        Ok(_) => Ok(true),
        Err(ApiError::AlreadyExists(_)) => match get_entry(node, path).await? {
            Some(now) if now.is_dir() => Ok(false),
            _ => Err(ApiError::AlreadyExists("the path is an existing file".into())),
        },
        Err(err) => Err(err),
    }
}

/// DELETE checks (api.md §8.6): the entry to delete here, or the node to forward to.
pub async fn plan_delete(
    node: &Node,
    identity: &Identity,
    path: &CanonicalPath,
) -> Result<Result<Inode, String>, ApiError> {
    if path.is_root() {
        return Err(ApiError::BadRequest("the root directory cannot be deleted".into()));
    }
    let entry = read_entry(node, path).await?;
    check_delete(identity, &entry)?;
    Ok(match route(node, &entry) {
        Route::Peer(owner) => Err(owner),
        Route::Local => Ok(entry),
    })
}

/// DELETE: one transaction removes the row and records its blob as garbage; the owning node's
/// sweep deletes the bytes after the grace period.
pub async fn delete_entry(node: &Node, identity: &Identity, path: &CanonicalPath) -> Result<(), ApiError> {
    let lock = node.lock(path.as_str()).await?;
    // Authorised against what is there now, not what the plan saw.
    let entry = read_entry(node, path).await?;
    check_delete(identity, &entry)?;
    if let Route::Peer(_) = route(node, &entry) {
        return Err(ApiError::ResourceChanged("the file moved to another node meanwhile; retry".into()));
    }
    let started = Instant::now();
    let deleted = node.meta(DeleteEntry { id: entry.id, fences: lock.fence().into_iter().collect() }).await;
    if entry.is_file() {
        node.metrics.record_backend(backend_label(&entry), BackendOp::Delete, backend_ok(&deleted), started.elapsed());
    }
    deleted?;
    if entry.is_file() {
        node.metrics.record_file_op(FileOp::Delete, backend_label(&entry));
    }
    Ok(())
}

/// Opens the blob of `entry`. A blob collected after its grace period (the row changed since it
/// was read) is resolved once more from a fresh row; the row actually served is returned so that
/// every header names the bytes sent.
pub async fn open(node: &Node, entry: Inode) -> Result<(Inode, Opened), ApiError> {
    match open_blob(node, &entry).await {
        Err(ApiError::FileNotFound) => {
            let path = crate::path::parse_json_path(&entry.path)?.path;
            let fresh = read_entry(node, &path).await?;
            if fresh.blob == entry.blob || !fresh.is_file() {
                return Err(missing_bytes(node, &entry));
            }
            match open_blob(node, &fresh).await {
                Ok(opened) => Ok((fresh, opened)),
                Err(ApiError::FileNotFound) => Err(missing_bytes(node, &fresh)),
                Err(err) => Err(err),
            }
        }
        Ok(opened) => Ok((entry, opened)),
        Err(err) => Err(err),
    }
}

/// `len` bytes from `offset` of an opened blob, as a download body. A backend that fails after the
/// open (an S3 server dying mid-body) cuts the body short and counts one failed backend operation,
/// so the failure shows in `callfs_backend_ops_total` and not only as a closed connection.
pub fn download_body(node: &Node, entry: &Inode, opened: Opened, offset: u64, len: u64) -> Content {
    match opened.range(offset, len) {
        Content::Stream(chunks, len) => {
            let (metrics, backend, started) = (node.metrics.clone(), backend_label(entry), Instant::now());
            let mut counted = false;
            let chunks = chunks.inspect(move |chunk| {
                if chunk.is_err() && !counted {
                    counted = true;
                    metrics.record_backend(backend, BackendOp::Open, false, started.elapsed());
                }
            });
            Content::Stream(Box::pin(chunks), len)
        }
        inline => inline,
    }
}

fn missing_bytes(node: &Node, entry: &Inode) -> ApiError {
    log::error!(path = entry.path.as_str(), blob = entry.blob.as_deref().unwrap_or(""), backend = entry.backend().as_str(); "metadata row points at missing bytes");
    node.metrics.record_error(ErrorKind::MissingBytes);
    ApiError::FileNotFound
}

/// A read's row with its blob as the storage worker opened it (none for a directory or a file of
/// another node or backend), in one blocking hop. Nothing is counted until [`open_prefetched`]
/// uses the blob, so a `304` counts no read, as before.
pub async fn read_entry_prefetched(node: &Node, path: &CanonicalPath) -> Result<(Inode, Option<Prefetched>), ApiError> {
    let found = node.open_entry(OpenEntry { path: path.as_str().to_string(), inline_limit: INLINE_READ_LIMIT }).await?;
    let entry = found.entry.ok_or(ApiError::FileNotFound)?;
    Ok((entry, found.opened.map(|(opened, took)| Prefetched { opened, took })))
}

/// A blob opened by the storage worker together with its row, and how long the open took.
pub struct Prefetched {
    opened: Result<callfs_actors::storage::localfs::OpenedFile, callfs_actors::ActorError>,
    took: Duration,
}

/// [`open`], using the blob the storage worker already opened with the row; a missing blob takes
/// the path of [`open`] (the row may have moved on meanwhile).
pub async fn open_prefetched(
    node: &Node,
    entry: Inode,
    prefetched: Option<Prefetched>,
) -> Result<(Inode, Opened), ApiError> {
    match prefetched {
        Some(Prefetched { opened: Err(callfs_actors::ActorError::NotFound), .. }) | None => open(node, entry).await,
        Some(Prefetched { opened, took }) => {
            let opened = opened.map(Opened::from).map_err(ApiError::from);
            let opened = settle_open(node, &entry, opened, took)?;
            Ok((entry, opened))
        }
    }
}

async fn open_blob(node: &Node, entry: &Inode) -> Result<Opened, ApiError> {
    let Some(blob) = entry.blob.clone() else {
        return Err(ApiError::FileNotFound);
    };
    let store = node.store(entry.backend())?;
    let started = Instant::now();
    let opened = node.storage(store.open(&blob, INLINE_READ_LIMIT)).await;
    settle_open(node, entry, opened, started.elapsed())
}

/// Counts an open of `entry`'s blob and checks its length against the row.
fn settle_open(
    node: &Node,
    entry: &Inode,
    opened: Result<Opened, ApiError>,
    took: Duration,
) -> Result<Opened, ApiError> {
    node.metrics.record_backend(backend_label(entry), BackendOp::Open, backend_ok(&opened), took);
    let opened = opened?;
    if opened.total != entry.size as u64 {
        log::warn!(path = entry.path.as_str(), expected = entry.size, actual = opened.total; "stored size differs from metadata");
        node.metrics.record_error(ErrorKind::SizeMismatch);
    }
    node.metrics.record_file_op(FileOp::Read, backend_label(entry));
    Ok(opened)
}

/// Opens a blob of this node by id (the internal blob endpoint).
pub async fn open_local_blob(node: &Node, blob: String) -> Result<Opened, ApiError> {
    if !is_blob_id(&blob) {
        return Err(ApiError::BadRequest("malformed blob id".into()));
    }
    let store = node.store(Backend::Localfs)?;
    node.storage(store.open(&blob, INLINE_READ_LIMIT)).await
}

/// Batches a listing reader may run ahead of the client before it waits.
const LISTING_QUEUE: usize = 4;

/// An open listing: the head read from the snapshot, then its rows as the reader sends them.
pub struct Listing {
    pub count: u64,
    /// Set when a page stopped before the end: where the next page starts.
    pub next_after: Option<ListingCursor>,
    events: mpsc::Receiver<Result<ListingEvent, ActorError>>,
}

impl Listing {
    /// The rows in listing order, a batch at a time; a failure after the head ends the stream
    /// with an error (the response is then aborted, never cut short silently).
    pub fn rows(self) -> impl Stream<Item = Result<Vec<Inode>, ApiError>> {
        futures_util::stream::unfold(Some(self.events), |events| async move {
            let mut events = events?;
            match events.recv().await? {
                Ok(ListingEvent::Rows(rows)) => Some((Ok(rows), Some(events))),
                Ok(ListingEvent::Head { .. }) => Some((Err(ApiError::Internal("second listing head".into())), None)),
                Err(err) => Some((Err(err.into()), None)),
            }
        })
    }
}

/// Starts a listing of `dir` on the listing readers and waits (at most `metadata_op_timeout`)
/// for its head: the count and, for a page, the cursor of the next one.
pub async fn open_listing(node: &Node, dir: &Inode, shape: ListingShape, counted: bool) -> Result<Listing, ApiError> {
    let (events, mut rx) = mpsc::channel(LISTING_QUEUE);
    node.listings.do_send(StreamListing { dir_id: dir.id, shape, counted, events });
    let head = tokio::time::timeout(node.settings.metadata_op_timeout, rx.recv())
        .await
        .map_err(|_| ApiError::MetadataUnavailable("listing did not start in time".into()))?;
    match head {
        Some(Ok(ListingEvent::Head { count, next_after })) => Ok(Listing { count, next_after, events: rx }),
        Some(Err(err)) => Err(err.into()),
        Some(Ok(ListingEvent::Rows(_))) => Err(ApiError::Internal("listing rows before its head".into())),
        None => Err(ApiError::Internal("listing reader stopped".into())),
    }
}

/// PATCH request, validated.
#[derive(Debug, Clone)]
pub struct MoveRequest {
    pub source: CanonicalPath,
    pub destination: CanonicalPath,
    pub overwrite: bool,
    pub create_parents: bool,
    pub is_rename: bool,
    pub backend: Option<String>,
    pub instance: Option<String>,
}

/// Who executes a PATCH (cluster.md §5).
#[derive(Debug, PartialEq, Eq)]
pub enum MovePlan {
    /// Nothing to change: the file already is where the request asks (`200`, nothing done).
    Unchanged,
    /// Rename or move: metadata only, executed here whatever node holds the bytes.
    Local,
    /// Copy the bytes to this node into a new blob, then switch the row (a change of `instance`).
    Relocate,
    /// The relocation target is another node: it executes the relocation.
    Forward(String),
}

/// `Write` on the destination, and `Delete` on an existing destination that an overwrite replaces
/// (security.md §3: a non-owner gets 403 whatever its kind, empty directories included).
fn check_destination_rights(
    identity: &Identity,
    req: &MoveRequest,
    source: &Inode,
    dst_lineage: &Lineage,
) -> Result<(), ApiError> {
    check_write(identity, dst_lineage)?;
    match dst_lineage.target.as_ref().filter(|e| e.id != source.id) {
        Some(existing) if req.overwrite => check_delete(identity, existing),
        _ => Ok(()),
    }
}

/// The node a PATCH relocates the file to, when it changes node (S3 files have no node: naming
/// one is not a change of node when the backend stays S3).
fn relocation_target<'a>(req: &'a MoveRequest, source: &Inode) -> Option<&'a str> {
    if target_backend(req, source) == Backend::S3 {
        return None;
    }
    req.instance.as_deref().filter(|i| source.callfs_instance_id.as_deref() != Some(*i))
}

/// The backend a PATCH leaves the file on (default: its current one).
fn target_backend(req: &MoveRequest, source: &Inode) -> Backend {
    req.backend.as_deref().and_then(Backend::parse).unwrap_or(source.backend())
}

/// The PATCH changes the file's backend (tiering): a relocation, executed by the receiving node.
fn backend_change(req: &MoveRequest, source: &Inode) -> bool {
    source.is_file() && target_backend(req, source) != source.backend()
}

/// PATCH checks on the receiving node (api.md §8.5 steps 4–5) and the routing of cluster.md §5.
pub async fn plan_move(node: &Node, identity: &Identity, req: &MoveRequest) -> Result<MovePlan, ApiError> {
    let source = read_entry(node, &req.source).await?;
    check_delete(identity, &source)?;
    let dst_lineage = lineage(node, &req.destination).await?;
    check_destination_rights(identity, req, &source, &dst_lineage)?;
    check_move_shape(node, req, &source)?;
    Ok(match relocation_target(req, &source) {
        Some(t) if t != node.settings.instance_id => MovePlan::Forward(t.to_string()),
        Some(_) => MovePlan::Relocate,
        None if backend_change(req, &source) => MovePlan::Relocate,
        None if req.destination == req.source => MovePlan::Unchanged,
        None => MovePlan::Local,
    })
}

/// Destination rules checked under the locks (api.md §8.5 step 6), authorisation included.
/// Returns the id of the destination entry an overwrite replaces, the one the commit expects.
async fn check_destination(
    node: &Node,
    identity: &Identity,
    req: &MoveRequest,
    source: &Inode,
) -> Result<Option<i64>, ApiError> {
    let dst_lineage = lineage(node, &req.destination).await?;
    check_destination_rights(identity, req, source, &dst_lineage)?;
    if dst_lineage.blocked_by_file() {
        return Err(ApiError::NotADirectory);
    }
    if dst_lineage.parent().is_none() && !req.create_parents {
        return Err(ApiError::BadRequest("destination parent directory does not exist".into()));
    }
    if let Some(existing) = dst_lineage.target.as_ref().filter(|e| e.id != source.id) {
        if !req.overwrite {
            return Err(ApiError::AlreadyExists("the destination already exists".into()));
        }
        if existing.kind != source.kind {
            return Err(ApiError::AlreadyExists("cannot overwrite between a file and a directory".into()));
        }
        if existing.is_dir() && node.meta(HasChildren { parent_id: existing.id }).await? {
            return Err(ApiError::DirectoryNotEmpty);
        }
        return Ok(Some(existing.id));
    }
    Ok(None)
}

fn rename_message(
    node: &Node,
    req: &MoveRequest,
    source: &Inode,
    destination_id: Option<i64>,
    fences: Vec<Fence>,
) -> RenameEntry {
    RenameEntry {
        source_path: req.source.as_str().into(),
        destination_path: req.destination.as_str().into(),
        overwrite: req.overwrite,
        create_parents: req.create_parents,
        parents: NewEntry {
            path: req.destination.as_str().into(),
            is_dir: true,
            size: 0,
            owner: source.owner.clone(),
            backend_type: node.settings.default_backend.clone(),
            instance_id: Some(node.settings.instance_id.clone()),
            blob: None,
        },
        source_id: source.id,
        destination_id,
        fences,
    }
}

fn fences_of(locks: &(LockGuard, Option<LockGuard>)) -> Vec<Fence> {
    locks.0.fence().into_iter().chain(locks.1.as_ref().and_then(LockGuard::fence)).collect()
}

/// PATCH rename/move of a file or a whole directory subtree (cluster.md §5): one metadata
/// transaction on this node, no byte touched; nodes holding bytes below may be down.
pub async fn move_entry(node: &Node, identity: &Identity, req: MoveRequest) -> Result<CanonicalPath, ApiError> {
    let locks = node.lock_pair(req.source.as_str(), req.destination.as_str()).await?;
    // Decide again under the locks.
    let source = read_entry(node, &req.source).await?;
    check_delete(identity, &source)?;
    check_move_shape(node, &req, &source)?;
    if relocation_target(&req, &source).is_some() || backend_change(&req, &source) {
        return Err(ApiError::ResourceChanged("the file was relocated meanwhile; retry".into()));
    }
    if req.destination == req.source {
        return Ok(req.destination);
    }
    let destination_id = check_destination(node, identity, &req, &source).await?;
    let started = Instant::now();
    let renamed = node.meta(rename_message(node, &req, &source, destination_id, fences_of(&locks))).await;
    node.metrics.record_backend(backend_label(&source), BackendOp::Move, backend_ok(&renamed), started.elapsed());
    renamed?;
    let op = if req.is_rename { FileOp::Rename } else { FileOp::Move };
    node.metrics.record_file_op(op, backend_label(&source));
    Ok(req.destination)
}

/// Relocation to this node (cluster.md §5): copy into a new blob, verify, then compare-and-set on
/// `(id, content_version, blob)`; a miss re-plans once, then `409 RESOURCE_CHANGED`.
pub async fn relocate_entry(node: &Node, identity: &Identity, req: MoveRequest) -> Result<CanonicalPath, ApiError> {
    for attempt in 0..2 {
        match relocate_once(node, identity, &req).await {
            Err(ApiError::ResourceChanged(_)) if attempt == 0 => continue,
            Err(ApiError::ResourceChanged(_)) => {
                return Err(ApiError::ResourceChanged("the file changed during the relocation; retry".into()))
            }
            other => return other.map(|()| req.destination.clone()),
        }
    }
    Err(ApiError::ResourceChanged("the file changed during the relocation; retry".into()))
}

async fn relocate_once(node: &Node, identity: &Identity, req: &MoveRequest) -> Result<(), ApiError> {
    let me = node.settings.instance_id.clone();
    let row = read_entry(node, &req.source).await?;
    check_delete(identity, &row)?;
    check_move_shape(node, req, &row)?;
    let target = target_backend(req, &row);
    let already_here =
        row.backend() == target && (target.is_shared() || row.callfs_instance_id.as_deref() == Some(me.as_str()));
    if already_here && req.destination == req.source {
        // An identical relocation got here first: nothing left to do.
        return Ok(());
    }
    if already_here {
        return move_entry(node, identity, req.clone()).await.map(|_| ());
    }
    let started = Instant::now();
    let (announced, body) = source_stream(node, &row).await?;
    let new = write_blob(node, target, req.source.as_str(), Some(row.size as u64), body, u64::MAX).await?;
    // End of stream is not success: the copy must have every byte the row and the source promised.
    if new.size != row.size as u64 || announced.is_some_and(|len| len != new.size) {
        return Err(ApiError::PeerError(format!("relocation copy has {} of {} bytes", new.size, row.size)));
    }
    node.metrics.record_backend(label(target), BackendOp::Create, true, started.elapsed());

    let locks = node.lock_pair(req.source.as_str(), req.destination.as_str()).await?;
    let now = read_entry(node, &req.source).await?;
    check_delete(identity, &now)?;
    let destination_id =
        if req.destination != req.source { check_destination(node, identity, req, &now).await? } else { None };
    let switch = SwitchBlob {
        id: row.id,
        expect_version: row.content_version,
        expect_blob: row.blob.clone(),
        expect_path: None,
        blob: new.blob.clone(),
        size: new.size as i64,
        backend_type: new.backend().as_str().into(),
        instance_id: new.instance_id(),
        content_write: false,
        fences: fences_of(&locks),
    };
    match node.meta(switch).await {
        Ok(_) => new.committed(),
        Err(err) if ambiguous(&err) => {
            new.left_to_the_sweep();
            return Err(err);
        }
        Err(err) => return Err(err),
    }
    if req.destination != req.source {
        let rename = rename_message(node, req, &now, destination_id, fences_of(&locks));
        node.meta(rename).await?;
    }
    node.metrics.record_file_op(FileOp::Move, label(target));
    Ok(())
}

type ByteStream = std::pin::Pin<Box<dyn Stream<Item = Result<Bytes, ApiError>>>>;

/// The bytes of `row`'s blob, from this node's disk or from the holding node's internal blob
/// endpoint, with the length the source announced.
async fn source_stream(node: &Node, row: &Inode) -> Result<(Option<u64>, ByteStream), ApiError> {
    let blob = row.blob.clone().ok_or(ApiError::FileNotFound)?;
    match route(node, row) {
        Route::Local => {
            let store = node.store(row.backend())?;
            let opened = node.storage(store.open(&blob, INLINE_READ_LIMIT)).await?;
            let total = opened.total;
            Ok((
                Some(total),
                match opened.whole() {
                    Content::Inline(bytes) => Box::pin(futures_util::stream::once(async move { Ok(bytes) })),
                    Content::Stream(chunks, _) => {
                        Box::pin(chunks.map(|c| c.map_err(|e| ApiError::Storage(e.to_string()))))
                    }
                },
            ))
        }
        Route::Peer(holder) => {
            let message = callfs_actors::peer::ForwardRequest {
                peer: holder.clone(),
                method: "GET".into(),
                path_and_query: format!("/v1/internal/blobs/{blob}"),
                headers: Vec::new(),
                body: None,
                operation: CrossServerOp::RelocateRead,
                backend_op: BackendOp::Open,
            };
            let answer = node.peers.send(message).await??;
            match answer.status {
                200 => {}
                401 | 403 => {
                    return Err(ApiError::PeerError(format!("node {holder} rejected the internal proxy secret")))
                }
                404 => return Err(ApiError::ResourceChanged("the source blob is gone; retry".into())),
                other => {
                    return Err(ApiError::PeerError(format!("node {holder} answered {other} to a relocation read")))
                }
            }
            let announced = answer
                .headers
                .iter()
                .find(|(name, _)| name.eq_ignore_ascii_case("content-length"))
                .and_then(|(_, v)| std::str::from_utf8(v).ok()?.trim().parse().ok());
            let body = answer.body;
            Ok((
                announced,
                Box::pin(futures_util::stream::unfold(body, |mut body| async move {
                    let chunk = body.recv().await?;
                    Some((chunk.map_err(ApiError::PeerUnavailable), body))
                })),
            ))
        }
    }
}

/// The receiving-node checks of api.md §8.5 step 5.
fn check_move_shape(node: &Node, req: &MoveRequest, source: &Inode) -> Result<(), ApiError> {
    if req.source.is_root() || req.destination.is_root() {
        return Err(ApiError::BadRequest("the root directory cannot be moved".into()));
    }
    let backend_change = req.backend.as_deref().is_some_and(|b| b != source.backend_type);
    let instance_change = req.instance.as_deref().is_some_and(|i| source.callfs_instance_id.as_deref() != Some(i));
    // Naming the file's current backend or node again is a request already satisfied (200, nothing
    // done, so identical concurrent relocations settle); naming nothing to change is an error.
    if req.destination == req.source && req.backend.is_none() && req.instance.is_none() {
        return Err(ApiError::BadRequest("destination equals source".into()));
    }
    if req.destination.is_within(&req.source) && req.destination != req.source {
        return Err(ApiError::BadRequest("cannot move a directory into its own subtree".into()));
    }
    if let Some(backend) = req.backend.as_deref() {
        if Backend::parse(backend).is_none() {
            return Err(ApiError::BadRequest(format!("unknown backend \"{backend}\"")));
        }
    }
    if let Some(instance) = req.instance.as_deref() {
        if instance != node.settings.instance_id && !node.settings.peers.contains_key(instance) {
            return Err(ApiError::BadRequest(format!("unknown instance \"{instance}\"")));
        }
    }
    if source.is_dir() && (backend_change || instance_change) {
        return Err(ApiError::BadRequest("moving a directory to another backend or node is not supported".into()));
    }
    if backend_change && req.backend.as_deref() == Some("s3") && node.s3.is_none() {
        return Err(ApiError::BadRequest("the s3 backend is not configured on this node".into()));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use chrono::NaiveDateTime;

    fn inode(id: i64, parent: i64, path: &str, dir: bool) -> Inode {
        let t = NaiveDateTime::default();
        Inode {
            id,
            parent_id: Some(parent),
            name: path.rsplit('/').next().unwrap().to_string(),
            path: path.to_string(),
            kind: if dir { "directory" } else { "file" }.to_string(),
            size: 0,
            mode: String::new(),
            owner: "alice".into(),
            atime: t,
            mtime: t,
            ctime: t,
            backend_type: "localfs".into(),
            callfs_instance_id: None,
            content_version: 1,
            erasure_coded: false,
            symlink_target: None,
            created_at: t,
            updated_at: t,
            blob: None,
        }
    }

    fn identity(user: &str) -> Identity {
        Identity { user_id: user.into(), is_admin: false, internal: false, proxied_by: None }
    }

    #[test]
    fn write_rules_follow_the_owner_and_parent() {
        let file = inode(2, 1, "/f", false);
        let dir = inode(3, 1, "/d", true);
        let lineage = |target: Option<Inode>, parent: Option<Inode>| Lineage {
            target,
            parent_path: parent.as_ref().map(|p| crate::path::parse_json_path(&p.path).unwrap().path),
            ancestors: parent.into_iter().collect(),
        };
        assert!(check_write(&identity("alice"), &lineage(Some(file.clone()), None)).is_ok());
        assert!(check_write(&identity("bob"), &lineage(Some(file.clone()), None)).is_err());
        assert!(check_write(&identity("bob"), &lineage(Some(dir.clone()), None)).is_ok());
        assert!(check_write(&identity("bob"), &lineage(None, Some(dir))).is_ok());
        assert!(check_write(&identity("bob"), &lineage(None, Some(file))).is_err());
        assert!(check_write(&identity("bob"), &lineage(None, None)).is_ok());
    }
}
