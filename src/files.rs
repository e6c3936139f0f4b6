//! File and directory operations (api.md §8, storage.md §2): authorisation, existence rules, the
//! bytes-first-then-metadata ordering and the path locks. Handlers call these and build responses.

use std::time::{Duration, Instant};

use actix_web::web::Payload;
use bytes::Bytes;
use bytes::BytesMut;
use callfs_actors::metadata::{
    CreateEntry, DeleteEntry, GetEntries, GetEntry, Inode, ListChildren, ListSubtree, NewEntry, RenameEntry,
    UpdateContent,
};
use callfs_actors::metrics::{BackendLabel, BackendOp, CrossServerOp, ErrorKind, FileOp};
use callfs_actors::storage::localfs::{
    DeleteFile, DiscardFile, FileChunks, MakeDir, MovePath, OpenFile, OpenStaging, PublishFile, RemoveDir, StagedFile,
    Staging,
};
use futures_util::{Stream, StreamExt};

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
        Some(owner) if entry.is_file() && entry.backend_type == "localfs" && owner != node.settings.instance_id => {
            Route::Peer(owner.to_string())
        }
        _ => Route::Local,
    }
}

fn backend_label(entry: &Inode) -> BackendLabel {
    match entry.backend_type.as_str() {
        "s3" => BackendLabel::S3,
        _ => BackendLabel::Localfs,
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

pub async fn lineage(node: &Node, path: &CanonicalPath) -> Result<Lineage, ApiError> {
    let ancestors = path.ancestors();
    let mut paths: Vec<String> = ancestors.iter().map(|a| a.as_str().to_string()).collect();
    paths.push(path.as_str().to_string());
    let rows = node.meta(GetEntries { paths }).await?;
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
    Ok(Lineage { target, ancestors: found, parent_path: path.parent() })
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
pub enum WritePlan {
    /// Store here; `Some` is the file being replaced.
    Local(Option<Box<Inode>>),
    /// The file lives on another node: stream the body there.
    Forward(String),
}

/// The checks of api.md §8.3/§8.4 in their order: size, `Write`, existence, ancestors.
pub async fn plan_write(
    node: &Node,
    identity: &Identity,
    path: &CanonicalPath,
    mode: WriteMode,
    declared_length: Option<u64>,
) -> Result<WritePlan, ApiError> {
    if declared_length.is_some_and(|len| len > node.settings.max_upload_bytes) {
        return Err(ApiError::PayloadTooLarge);
    }
    let lineage = lineage(node, path).await?;
    check_write(identity, &lineage)?;
    let plan = check_writable_target(node, &lineage, mode)?;
    if lineage.blocked_by_file() {
        return Err(ApiError::NotADirectory);
    }
    Ok(plan)
}

/// Streams an upload to a temporary file, then publishes it under the path lock and commits the row.
pub async fn write_file(
    node: &Node,
    identity: &Identity,
    path: &CanonicalPath,
    mode: WriteMode,
    existing: Option<Box<Inode>>,
    body: impl Stream<Item = Result<Bytes, ApiError>> + Unpin,
) -> Result<Written, ApiError> {
    let started = Instant::now();
    let op = if existing.is_some() { BackendOp::Update } else { BackendOp::Create };
    let result = stage_and_commit(node, identity, path, mode, body).await;
    node.metrics.record_backend(BackendLabel::Localfs, op, backend_ok(&result), started.elapsed());
    let written = result?;
    let file_op = if written == Written::Created { FileOp::Create } else { FileOp::Update };
    node.metrics.record_file_op(file_op, BackendLabel::Localfs);
    Ok(written)
}

/// Applies the existence rules before any byte is read.
fn check_writable_target(node: &Node, lineage: &Lineage, mode: WriteMode) -> Result<WritePlan, ApiError> {
    let Some(target) = &lineage.target else {
        return Ok(WritePlan::Local(None));
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
            Route::Local => Ok(WritePlan::Local(Some(Box::new(target.clone())))),
            Route::Peer(owner) => Ok(WritePlan::Forward(owner)),
        },
    }
}

/// A backend failure (as opposed to a client or conflict outcome) for the backend metrics.
fn backend_ok<T>(result: &Result<T, ApiError>) -> bool {
    !matches!(result, Err(ApiError::Storage(_) | ApiError::InsufficientStorage | ApiError::BackendUnavailable(_)))
}

/// A staged file that removes itself unless it was published: cleanup is a value, not a call on
/// every error path.
struct StagedGuard<'a> {
    node: &'a Node,
    staged: Option<StagedFile>,
}

impl StagedGuard<'_> {
    fn file(&self) -> &StagedFile {
        self.staged.as_ref().expect("a guard holds its file until published")
    }

    /// Renames the bytes to their final name; from then on they belong to whatever commits them.
    async fn publish(mut self) -> Result<StagedFile, ApiError> {
        let file = self.file();
        node_disk_publish(self.node, file).await?;
        Ok(self.staged.take().expect("a guard holds its file until published"))
    }
}

impl Drop for StagedGuard<'_> {
    fn drop(&mut self) {
        if let Some(staged) = self.staged.take() {
            self.node.localfs.do_send(DiscardFile { path: staged.temp });
        }
    }
}

async fn node_disk_publish(node: &Node, file: &StagedFile) -> Result<(), ApiError> {
    node.disk(PublishFile { temp: file.temp.clone(), target: file.target.clone() }).await
}

/// Writes `body` into a new temporary file for `path`, chunk by chunk, never holding a thread
/// between chunks. At most `max_bytes` are accepted.
async fn stage<'a>(
    node: &'a Node,
    path: &CanonicalPath,
    mut body: impl Stream<Item = Result<Bytes, ApiError>> + Unpin,
    max_bytes: u64,
) -> Result<StagedGuard<'a>, ApiError> {
    let mut staging = node.disk(OpenStaging { path: path.as_str().to_string() }).await?;
    let discard = |staging: Staging| node.localfs.do_send(DiscardFile { path: staging.temp });
    let mut buffer = BytesMut::new();
    loop {
        let next = body.next().await;
        let done = match next {
            None => true,
            Some(Ok(chunk)) => {
                if staging.size + (buffer.len() + chunk.len()) as u64 > max_bytes {
                    discard(staging);
                    return Err(ApiError::PayloadTooLarge);
                }
                buffer.extend_from_slice(&chunk);
                false
            }
            Some(Err(err)) => {
                discard(staging);
                return Err(err);
            }
        };
        if (done && !buffer.is_empty()) || buffer.len() >= WRITE_UNIT {
            if let Err(err) = staging.write(buffer.split().freeze()).await {
                discard(staging);
                return Err(err.into());
            }
        }
        if done {
            break;
        }
    }
    let temp = staging.temp.clone();
    match staging.finish().await {
        Ok(staged) => Ok(StagedGuard { node, staged: Some(staged) }),
        Err(err) => {
            node.localfs.do_send(DiscardFile { path: temp });
            Err(err.into())
        }
    }
}

async fn stage_and_commit(
    node: &Node,
    identity: &Identity,
    path: &CanonicalPath,
    mode: WriteMode,
    body: impl Stream<Item = Result<Bytes, ApiError>> + Unpin,
) -> Result<Written, ApiError> {
    let staged = stage(node, path, body, node.settings.max_upload_bytes).await?;
    let lock = node.lock(path.as_str()).await?;
    lock.verify().await?;
    // Decide again under the lock: the path may have been created, replaced or moved since the
    // plan, and whatever is there now is what this write is authorised against.
    let lineage = lineage(node, path).await?;
    check_write(identity, &lineage)?;
    let replace = match check_writable_target(node, &lineage, mode)? {
        WritePlan::Local(now) => now,
        WritePlan::Forward(_) => {
            return Err(ApiError::ResourceChanged("the file moved to another node meanwhile; retry".into()))
        }
    };
    if lineage.blocked_by_file() {
        return Err(ApiError::NotADirectory);
    }
    let size = staged.file().size as i64;
    let published = staged.publish().await?;
    match replace {
        Some(entry) => {
            node.meta(UpdateContent { id: entry.id, size }).await?;
            Ok(Written::Replaced)
        }
        None => {
            let entry = NewEntry {
                path: path.as_str().to_string(),
                is_dir: false,
                size,
                owner: identity.user_id.clone(),
                backend_type: "localfs".into(),
                instance_id: Some(node.settings.instance_id.clone()),
            };
            match node.meta(CreateEntry { entry }).await {
                Ok(_) => Ok(Written::Created),
                // The row certainly did not land: its bytes must not outlive it.
                Err(err @ (ApiError::AlreadyExists(_) | ApiError::NotADirectory | ApiError::BadRequest(_))) => {
                    node.localfs.do_send(DiscardFile { path: published.target });
                    Err(match err {
                        ApiError::AlreadyExists(_) => {
                            ApiError::AlreadyExists("the path was created concurrently".into())
                        }
                        other => other,
                    })
                }
                // Ambiguous (a timeout, a lost connection): the row may still commit, so the bytes stay.
                Err(err) => {
                    log::warn!(path = path.as_str(), error = err.to_string().as_str(); "create outcome unknown; bytes kept");
                    Err(err)
                }
            }
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
    let _lock = node.lock(path.as_str()).await?;
    let started = Instant::now();
    let made = node.disk(MakeDir { path: path.as_str().to_string() }).await;
    node.metrics.record_backend(BackendLabel::Localfs, BackendOp::Mkdir, backend_ok(&made), started.elapsed());
    made?;
    let entry = NewEntry {
        path: path.as_str().to_string(),
        is_dir: true,
        size: 0,
        owner: identity.user_id.clone(),
        backend_type: node.settings.default_backend.clone(),
        instance_id: Some(node.settings.instance_id.clone()),
    };
    match node.meta(CreateEntry { entry }).await {
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

/// DELETE: the row first, then the bytes (an unlink failure leaves invisible orphan bytes).
pub async fn delete_entry(node: &Node, identity: &Identity, path: &CanonicalPath) -> Result<(), ApiError> {
    let _lock = node.lock(path.as_str()).await?;
    // Authorised against what is there now, not what the plan saw.
    let entry = read_entry(node, path).await?;
    check_delete(identity, &entry)?;
    if let Route::Peer(_) = route(node, &entry) {
        return Err(ApiError::ResourceChanged("the file moved to another node meanwhile; retry".into()));
    }
    node.meta(DeleteEntry { id: entry.id }).await?;
    if entry.is_dir() {
        node.localfs.do_send(RemoveDir { path: path.as_str().to_string() });
        return Ok(());
    }
    let started = Instant::now();
    let removed = node.disk(DeleteFile { path: path.as_str().to_string() }).await;
    node.metrics.record_backend(backend_label(&entry), BackendOp::Delete, removed.is_ok(), started.elapsed());
    if let Err(err) = removed {
        log::warn!(backend = "localfs", key = path.as_str(), error = err.to_string().as_str(); "orphan bytes left after a failed cleanup");
        node.metrics.record_error(ErrorKind::OrphanBytes);
    }
    node.metrics.record_file_op(FileOp::Delete, backend_label(&entry));
    Ok(())
}

/// The body of a download: bytes already in memory, or an open file streamed chunk by chunk
/// (with the number of bytes the stream yields).
pub enum Content {
    Inline(Bytes),
    Stream(FileChunks, u64),
}

/// The bytes of a file, opened: every range is planned on `total`, the length of what was opened.
pub struct Opened {
    pub total: u64,
    inline: Option<Bytes>,
    file: Option<std::fs::File>,
}

impl Opened {
    /// `len` bytes from `offset`, clamped to what was opened: never out of bounds.
    pub fn range(self, offset: u64, len: u64) -> Content {
        let offset = offset.min(self.total);
        let len = len.min(self.total - offset);
        match (self.inline, self.file) {
            (Some(bytes), _) => Content::Inline(bytes.slice(offset as usize..(offset + len) as usize)),
            (None, Some(file)) => Content::Stream(FileChunks::new(file, offset, len), len),
            (None, None) => Content::Inline(Bytes::new()),
        }
    }

    pub fn whole(self) -> Content {
        let total = self.total;
        self.range(0, total)
    }
}

/// Opens `entry`'s bytes.
pub async fn open(node: &Node, entry: &Inode) -> Result<Opened, ApiError> {
    let started = Instant::now();
    let opened = node.disk(OpenFile { path: entry.path.clone(), inline_limit: INLINE_READ_LIMIT }).await;
    node.metrics.record_backend(backend_label(entry), BackendOp::Open, backend_ok(&opened), started.elapsed());
    let opened = opened.inspect_err(|err| {
        if matches!(err, ApiError::FileNotFound) {
            log::error!(path = entry.path.as_str(), backend = "localfs"; "metadata row points at missing bytes");
            node.metrics.record_error(ErrorKind::MissingBytes);
        }
    })?;
    if opened.len != entry.size as u64 {
        log::warn!(path = entry.path.as_str(), expected = entry.size, actual = opened.len; "stored size differs from metadata");
        node.metrics.record_error(ErrorKind::SizeMismatch);
    }
    let total = match &opened.inline {
        Some(bytes) => bytes.len() as u64,
        None => opened.len,
    };
    node.metrics.record_file_op(FileOp::Read, backend_label(entry));
    Ok(Opened { total, inline: opened.inline, file: opened.file })
}

pub async fn list_children(node: &Node, dir: &Inode) -> Result<Vec<Inode>, ApiError> {
    node.meta(ListChildren { parent_id: dir.id }).await
}

/// A recursive listing in the spec's order: a whole child list, then each child directory's items.
pub async fn list_tree(node: &Node, dir: &Inode, max_depth: u32) -> Result<Vec<Inode>, ApiError> {
    let rows = node.meta(ListSubtree { path: dir.path.clone() }).await?;
    Ok(order_tree(dir, rows, max_depth))
}

/// Orders a subtree depth-first by whole child lists, keeping entries of depth ≤ `max_depth + 1`.
pub fn order_tree(dir: &Inode, rows: Vec<Inode>, max_depth: u32) -> Vec<Inode> {
    use std::collections::HashMap;
    let mut children: HashMap<i64, Vec<Inode>> = HashMap::new();
    for row in rows {
        if let Some(parent) = row.parent_id {
            children.entry(parent).or_default().push(row);
        }
    }
    for list in children.values_mut() {
        callfs_actors::metadata::sort_listing(list);
    }
    let mut out = Vec::new();
    emit(&mut children, dir.id, 1, max_depth as u64 + 1, &mut out);
    out
}

fn emit(
    children: &mut std::collections::HashMap<i64, Vec<Inode>>,
    id: i64,
    depth: u64,
    limit: u64,
    out: &mut Vec<Inode>,
) {
    if depth > limit {
        return;
    }
    let Some(list) = children.remove(&id) else {
        return;
    };
    let dirs: Vec<i64> = list.iter().filter(|e| e.is_dir()).map(|e| e.id).collect();
    out.extend(list);
    for child in dirs {
        emit(children, child, depth + 1, limit, out);
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
    /// Rename/move in place on this node.
    Local,
    /// Copy the bytes to this node, then re-key (a change of `instance`).
    Relocate,
    /// Another node executes it.
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

/// PATCH checks on the receiving node (api.md §8.5 steps 4–5) and the routing of cluster.md §5.
pub async fn plan_move(node: &Node, identity: &Identity, req: &MoveRequest) -> Result<MovePlan, ApiError> {
    let source = read_entry(node, &req.source).await?;
    check_delete(identity, &source)?;
    let dst_lineage = lineage(node, &req.destination).await?;
    check_destination_rights(identity, req, &source, &dst_lineage)?;
    check_move_shape(node, req, &source)?;
    let target = req.instance.as_deref().filter(|i| source.callfs_instance_id.as_deref() != Some(*i));
    Ok(match (target, route(node, &source)) {
        (Some(t), _) if t != node.settings.instance_id => MovePlan::Forward(t.to_string()),
        (Some(_), _) => MovePlan::Relocate,
        (None, Route::Peer(owner)) => MovePlan::Forward(owner),
        (None, Route::Local) => MovePlan::Local,
    })
}

/// Destination rules checked under the locks (api.md §8.5 step 6), authorisation included.
async fn check_destination(
    node: &Node,
    identity: &Identity,
    req: &MoveRequest,
    source: &Inode,
) -> Result<(), ApiError> {
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
        if existing.is_dir() && !list_children(node, existing).await?.is_empty() {
            return Err(ApiError::DirectoryNotEmpty);
        }
    }
    Ok(())
}

fn rename_message(
    node: &Node,
    req: &MoveRequest,
    source: &Inode,
    relocate_to: Option<(String, Option<String>)>,
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
        },
        relocate_to,
    }
}

/// Moves a file's bytes to this node (from its owner or local disk), then re-keys the row and
/// removes the old bytes: bytes first, metadata second, the source untouched until the commit.
pub async fn relocate_entry(node: &Node, identity: &Identity, req: MoveRequest) -> Result<CanonicalPath, ApiError> {
    let locks = node.lock_pair(req.source.as_str(), req.destination.as_str()).await?;
    let source = read_entry(node, &req.source).await?;
    check_delete(identity, &source)?;
    check_destination(node, identity, &req, &source).await?;
    if source.callfs_instance_id.as_deref() == Some(node.settings.instance_id.as_str()) {
        // An identical relocation got here first: nothing left to copy.
        if req.destination == req.source {
            return Ok(req.destination);
        }
        return Err(ApiError::ResourceChanged("the file was relocated meanwhile; retry".into()));
    }
    let started = Instant::now();
    let body = source_stream(node, &source).await?;
    let staged = stage(node, &req.destination, body, u64::MAX).await?;
    // End of stream is not success: a copy is only good if it has every byte the row promises.
    if staged.file().size != source.size as u64 {
        return Err(ApiError::PeerError(format!(
            "relocation copy has {} of {} bytes",
            staged.file().size,
            source.size
        )));
    }
    // The copy may have outlived a lease: never commit without it.
    match &locks {
        (first, Some(second)) => {
            first.verify().await?;
            second.verify().await?;
        }
        (first, None) => first.verify().await?,
    }
    let published = staged.publish().await?;
    node.metrics.record_backend(BackendLabel::Localfs, BackendOp::Create, true, started.elapsed());
    let relocate_to = Some(("localfs".to_string(), Some(node.settings.instance_id.clone())));
    if let Err(err) = node.meta(rename_message(node, &req, &source, relocate_to)).await {
        if !matches!(err, ApiError::MetadataUnavailable(_)) {
            node.localfs.do_send(DiscardFile { path: published.target });
        }
        return Err(err);
    }
    remove_old_bytes(node, &source).await;
    node.metrics.record_file_op(FileOp::Move, BackendLabel::Localfs);
    Ok(req.destination)
}

type ByteStream = std::pin::Pin<Box<dyn Stream<Item = Result<Bytes, ApiError>>>>;

/// The source file's bytes, from local disk or from the owning peer.
async fn source_stream(node: &Node, source: &Inode) -> Result<ByteStream, ApiError> {
    let path = crate::path::parse_json_path(&source.path)?.path;
    match route(node, source) {
        Route::Local => Ok(match open(node, source).await?.whole() {
            Content::Inline(bytes) => Box::pin(futures_util::stream::once(async move { Ok(bytes) })),
            Content::Stream(chunks, _) => Box::pin(chunks.map(|c| c.map_err(|e| ApiError::Storage(e.to_string())))),
        }),
        Route::Peer(owner) => {
            let message = callfs_actors::peer::ForwardRequest {
                peer: owner.clone(),
                method: "GET".into(),
                path_and_query: crate::http::forward::files_url(&path),
                headers: Vec::new(),
                body: None,
                operation: CrossServerOp::RelocateRead,
                backend_op: BackendOp::Open,
            };
            let answer = node.peers.send(message).await??;
            if answer.status != 200 {
                return Err(ApiError::PeerError(format!(
                    "node {owner} answered {} to a relocation read",
                    answer.status
                )));
            }
            let body = answer.body;
            Ok(Box::pin(futures_util::stream::unfold(body, |mut body| async move {
                let chunk = body.recv().await?;
                Some((chunk.map_err(ApiError::PeerError), body))
            })))
        }
    }
}

/// After a relocation: delete the old bytes where they were; a failure leaves counted orphans.
async fn remove_old_bytes(node: &Node, source: &Inode) {
    let removed = match route(node, source) {
        Route::Local => node.disk(DeleteFile { path: source.path.clone() }).await,
        Route::Peer(owner) => remote_delete(node, &owner, &source.path).await,
    };
    if let Err(err) = removed {
        log::warn!(backend = "localfs", key = source.path.as_str(), error = err.to_string().as_str(); "orphan bytes left after a failed cleanup");
        node.metrics.record_error(ErrorKind::OrphanBytes);
    }
}

/// `DELETE {peer}/v1/internal/localfs/{path}`: the owner removes bytes whose row has moved on.
async fn remote_delete(node: &Node, peer: &str, path: &str) -> Result<(), ApiError> {
    let path = crate::path::parse_json_path(path)?.path;
    let url = crate::http::forward::encoded_path("/v1/internal/localfs", &path);
    let delete = CrossServerOp::RemoteDelete;
    match crate::peers::internal_call(node, peer, "DELETE", url, None, delete, BackendOp::Delete).await? {
        204 => Ok(()),
        other => Err(ApiError::PeerError(format!("node {peer} answered {other} to a byte delete"))),
    }
}

/// PATCH rename/move within this node and backend (api.md §8.5 step 6).
pub async fn move_entry(node: &Node, identity: &Identity, req: MoveRequest) -> Result<CanonicalPath, ApiError> {
    let _locks = node.lock_pair(req.source.as_str(), req.destination.as_str()).await?;
    let source = read_entry(node, &req.source).await?;
    check_delete(identity, &source)?;
    if let Route::Peer(_) = route(node, &source) {
        return Err(ApiError::ResourceChanged("the file moved to another node meanwhile; retry".into()));
    }
    check_destination(node, identity, &req, &source).await?;

    let started = Instant::now();
    let moved = node
        .disk(MovePath {
            from: req.source.as_str().into(),
            to: req.destination.as_str().into(),
            replace: req.overwrite,
        })
        .await;
    let moved = match moved {
        // A directory holding only other nodes' files may have no physical tree here.
        Err(ApiError::FileNotFound) if source.is_dir() => Ok(false),
        Ok(()) => Ok(true),
        Err(err) => Err(err),
    };
    node.metrics.record_backend(backend_label(&source), BackendOp::Move, backend_ok(&moved), started.elapsed());
    let bytes_moved = moved?;
    let remote_moved = if source.is_dir() {
        match move_remote_subtrees(node, &req).await {
            Ok(moved) => moved,
            Err(err) => {
                if bytes_moved {
                    let back = MovePath {
                        from: req.destination.as_str().into(),
                        to: req.source.as_str().into(),
                        replace: true,
                    };
                    let _ = node.disk(back).await;
                }
                return Err(err);
            }
        }
    } else {
        Vec::new()
    };
    let rename = rename_message(node, &req, &source, None);
    if let Err(err) = node.meta(rename).await {
        undo_remote_moves(node, &req, &remote_moved).await;
        if bytes_moved {
            // Put the bytes back so the source stays whole.
            let back =
                MovePath { from: req.destination.as_str().into(), to: req.source.as_str().into(), replace: true };
            if node.disk(back).await.is_err() {
                node.metrics.record_error(ErrorKind::OrphanBytes);
            }
        }
        return Err(err);
    }
    let op = if req.is_rename { FileOp::Rename } else { FileOp::Move };
    node.metrics.record_file_op(op, backend_label(&source));
    Ok(req.destination)
}

/// Moves the physical subtree on every other node holding files below the directory (cluster.md §5).
async fn move_remote_subtrees(node: &Node, req: &MoveRequest) -> Result<Vec<String>, ApiError> {
    let rows = node.meta(ListSubtree { path: req.source.as_str().to_string() }).await?;
    let mut holders: Vec<String> = rows
        .iter()
        .filter(|r| r.is_file() && r.backend_type == "localfs")
        .filter_map(|r| r.callfs_instance_id.clone())
        .filter(|id| *id != node.settings.instance_id)
        .collect();
    holders.sort();
    holders.dedup();
    let mut done = Vec::new();
    for holder in holders {
        match remote_move(node, &holder, &req.source, &req.destination).await {
            Ok(()) => done.push(holder),
            Err(err) => {
                undo_remote_moves(node, req, &done).await;
                return Err(err);
            }
        }
    }
    Ok(done)
}

async fn undo_remote_moves(node: &Node, req: &MoveRequest, holders: &[String]) {
    for holder in holders.iter().rev() {
        if remote_move(node, holder, &req.destination, &req.source).await.is_err() {
            node.metrics.record_error(ErrorKind::OrphanBytes);
        }
    }
}

/// `POST {peer}/v1/internal/localfs-move`; an absent source subtree there is fine.
async fn remote_move(node: &Node, peer: &str, from: &CanonicalPath, to: &CanonicalPath) -> Result<(), ApiError> {
    let body = serde_json::json!({"from": from.as_str(), "to": to.as_str()}).to_string();
    let status = crate::peers::internal_call(
        node,
        peer,
        "POST",
        "/v1/internal/localfs-move".into(),
        Some(Bytes::from(body)),
        CrossServerOp::RemoteMove,
        BackendOp::Move,
    )
    .await?;
    match status {
        204 | 404 => Ok(()),
        other => Err(ApiError::PeerError(format!("node {peer} answered {other} to a subtree move"))),
    }
}

/// The receiving-node checks of api.md §8.5 step 5.
fn check_move_shape(node: &Node, req: &MoveRequest, source: &Inode) -> Result<(), ApiError> {
    if req.source.is_root() || req.destination.is_root() {
        return Err(ApiError::BadRequest("the root directory cannot be moved".into()));
    }
    let backend_change = req.backend.as_deref().is_some_and(|b| b != source.backend_type);
    let instance_change = req.instance.as_deref().is_some_and(|i| source.callfs_instance_id.as_deref() != Some(i));
    if req.destination == req.source && !backend_change && !instance_change {
        return Err(ApiError::BadRequest("destination equals source".into()));
    }
    if req.destination.is_within(&req.source) && req.destination != req.source {
        return Err(ApiError::BadRequest("cannot move a directory into its own subtree".into()));
    }
    if let Some(backend) = req.backend.as_deref() {
        if backend != "localfs" && backend != "s3" {
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
    if backend_change {
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
        }
    }

    #[test]
    fn tree_order_is_whole_child_lists_then_descend() {
        let root = inode(1, 0, "/p", true);
        let rows = vec![
            inode(2, 1, "/p/b", true),
            inode(3, 1, "/p/a", true),
            inode(4, 1, "/p/z.txt", false),
            inode(5, 3, "/p/a/x.txt", false),
            inode(6, 2, "/p/b/y.txt", false),
            inode(7, 3, "/p/a/deep", true),
            inode(8, 7, "/p/a/deep/leaf.txt", false),
        ];
        let names = |v: Vec<Inode>| v.into_iter().map(|i| i.path).collect::<Vec<_>>();
        assert_eq!(
            names(order_tree(&root, rows.clone(), 100)),
            vec!["/p/z.txt", "/p/a", "/p/b", "/p/a/x.txt", "/p/a/deep", "/p/a/deep/leaf.txt", "/p/b/y.txt"]
        );
        assert_eq!(names(order_tree(&root, rows.clone(), 0)), vec!["/p/z.txt", "/p/a", "/p/b"]);
        assert_eq!(names(order_tree(&root, rows, 1)).len(), 6);
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
