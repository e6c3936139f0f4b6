//! Local-disk storage (storage.md §2): immutable blobs under `<root>/blobs/<aa>/<bb>/<id>`, uploads
//! in progress under `<root>/tmp/`. No namespace path ever reaches the filesystem: blob ids are
//! generated here and checked against `^[0-9a-f]{32}$` before any use. All blocking calls run on
//! SyncArbiter threads (or the blocking pool), never on the threads that drive network I/O.

use std::fs::{self, File, OpenOptions};
use std::future::Future;
use std::io::{self, Read, Seek, SeekFrom, Write};
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::pin::Pin;
use std::task::{Context as TaskContext, Poll};
use std::time::{Duration, Instant, SystemTime};

use actix::prelude::*;
use bytes::{Bytes, BytesMut};
use futures_util::Stream;
use tokio::task::JoinHandle;

use crate::error::ActorError;
use crate::metadata::{EntryReader, Inode};
use crate::storage::Backend;

/// Prefix of in-flight upload files in `tmp/`.
pub const TEMP_PREFIX: &str = ".callfs-tmp-";
/// Largest read and write unit; also the bound on per-transfer buffering.
const IO_CHUNK: usize = 256 * 1024;

/// A new blob id: 128 random bits as 32 lowercase hex characters.
pub fn new_blob_id() -> String {
    hex::encode(rand::random::<[u8; 16]>())
}

/// True for a well-formed blob id; anything else never reaches a file name.
pub fn is_blob_id(id: &str) -> bool {
    id.len() == 32 && id.bytes().all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
}

pub struct LocalFsWorker {
    root: PathBuf,
    fsync: bool,
    /// Row lookups for [`OpenEntry`], and the node whose localfs blobs are these.
    reader: Option<(EntryReader, String)>,
}

impl LocalFsWorker {
    pub fn new(root: PathBuf, fsync: bool) -> Self {
        Self { root, fsync, reader: None }
    }

    /// A worker that also answers [`OpenEntry`]: rows through `reader`, blobs of `instance_id`.
    pub fn with_reader(root: PathBuf, fsync: bool, reader: EntryReader, instance_id: String) -> Self {
        Self { root, fsync, reader: Some((reader, instance_id)) }
    }

    fn blobs(&self) -> PathBuf {
        self.root.join("blobs")
    }

    fn tmp(&self) -> PathBuf {
        self.root.join("tmp")
    }

    /// `<root>/blobs/<aa>/<bb>/<id>` for a checked id.
    fn blob_path(&self, id: &str) -> Result<PathBuf, ActorError> {
        if !is_blob_id(id) {
            return Err(ActorError::InvalidInput("malformed blob id".into()));
        }
        Ok(self.blobs().join(&id[0..2]).join(&id[2..4]).join(id))
    }

    fn sync_dir(&self, dir: &Path) -> io::Result<()> {
        if self.fsync {
            File::open(dir)?.sync_all()?;
        }
        Ok(())
    }

    /// `mkdir -p` that fsyncs the parent of every directory it creates.
    fn create_dirs(&self, dir: &Path) -> io::Result<()> {
        if dir.is_dir() {
            return Ok(());
        }
        if let Some(parent) = dir.parent() {
            self.create_dirs(parent)?;
        }
        match fs::create_dir(dir) {
            Ok(()) => {
                fs::set_permissions(dir, fs::Permissions::from_mode(0o755))?;
                if let Some(parent) = dir.parent() {
                    self.sync_dir(parent)?;
                }
                Ok(())
            }
            Err(e) if e.kind() == io::ErrorKind::AlreadyExists && dir.is_dir() => Ok(()),
            Err(e) => Err(e),
        }
    }

    /// Creates a new temporary file in `tmp/` for a blob being written.
    fn open_staging(&self, blob: &str) -> Result<Staging, ActorError> {
        let target = self.blob_path(blob)?;
        let tmp = self.tmp();
        self.create_dirs(&tmp).map_err(|e| ActorError::from_io(&e))?;
        let temp = tmp.join(format!("{TEMP_PREFIX}{}", hex::encode(rand::random::<[u8; 8]>())));
        let file = OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .open(&temp)
            .map_err(|e| ActorError::from_io(&e))?;
        Ok(Staging { file: Some(file), temp, target, blob: blob.to_string(), size: 0, fsync: self.fsync })
    }

    /// Moves a complete temporary file to its blob location (never over an existing blob).
    fn publish(&self, temp: &Path, target: &Path) -> Result<(), ActorError> {
        let dir = target.parent().ok_or_else(|| ActorError::InvalidInput("no parent".into()))?;
        self.create_dirs(dir).map_err(|e| ActorError::from_io(&e))?;
        if fs::symlink_metadata(target).is_ok() {
            return Err(ActorError::AlreadyExists);
        }
        fs::rename(temp, target).map_err(|e| ActorError::from_io(&e))?;
        self.sync_dir(dir).map_err(|e| ActorError::from_io(&e))
    }

    fn delete_blob(&self, blob: &str) -> Result<(), ActorError> {
        let path = self.blob_path(blob)?;
        match fs::remove_file(&path) {
            Ok(()) => Ok(()),
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
            Err(e) => Err(ActorError::from_io(&e)),
        }
    }
}

impl Actor for LocalFsWorker {
    type Context = SyncContext<Self>;
}

/// An upload being written: the temporary file, filled chunk by chunk on the blocking pool so that
/// a slow body never holds a thread between its chunks.
#[derive(Debug)]
pub struct Staging {
    file: Option<File>,
    pub temp: PathBuf,
    target: PathBuf,
    pub blob: String,
    pub size: u64,
    fsync: bool,
}

impl Staging {
    /// Appends one chunk (one blocking call).
    pub async fn write(&mut self, data: Bytes) -> Result<(), ActorError> {
        let mut file = self.file.take().ok_or_else(|| ActorError::InvalidInput("staging file closed".into()))?;
        let len = data.len() as u64;
        let (file, written) = tokio::task::spawn_blocking(move || {
            let written = file.write_all(&data);
            (file, written)
        })
        .await
        .map_err(|e| ActorError::Storage(format!("writer task: {e}")))?;
        self.file = Some(file);
        written.map_err(|e| ActorError::from_io(&e))?;
        self.size += len;
        Ok(())
    }

    /// Makes the bytes durable (per `localfs_fsync`) and readable; the file is then complete.
    pub async fn finish(mut self) -> Result<StagedBlob, ActorError> {
        let file = self.file.take().ok_or_else(|| ActorError::InvalidInput("staging file closed".into()))?;
        let fsync = self.fsync;
        tokio::task::spawn_blocking(move || -> io::Result<()> {
            if fsync {
                file.sync_all()?;
            }
            file.set_permissions(fs::Permissions::from_mode(0o644))
        })
        .await
        .map_err(|e| ActorError::Storage(format!("writer task: {e}")))?
        .map_err(|e| ActorError::from_io(&e))?;
        Ok(StagedBlob {
            temp: self.temp.clone(),
            target: self.target.clone(),
            blob: self.blob.clone(),
            size: self.size,
        })
    }
}

/// A complete, durable temporary file, not yet at its blob location.
#[derive(Debug, Clone)]
pub struct StagedBlob {
    pub temp: PathBuf,
    target: PathBuf,
    pub blob: String,
    pub size: u64,
}

/// Create the temporary file of a new blob (a short call; the body is written by [`Staging`]).
#[derive(Message)]
#[rtype(result = "Result<Staging, ActorError>")]
pub struct OpenStaging {
    pub blob: String,
}

impl Handler<OpenStaging> for LocalFsWorker {
    type Result = Result<Staging, ActorError>;
    fn handle(&mut self, msg: OpenStaging, _ctx: &mut Self::Context) -> Self::Result {
        self.open_staging(&msg.blob)
    }
}

/// Move a staged file to its blob location and fsync the fan-out folder.
#[derive(Message)]
#[rtype(result = "Result<(), ActorError>")]
pub struct PublishBlob {
    pub staged: StagedBlob,
}

impl Handler<PublishBlob> for LocalFsWorker {
    type Result = Result<(), ActorError>;
    fn handle(&mut self, msg: PublishBlob, _ctx: &mut Self::Context) -> Self::Result {
        self.publish(&msg.staged.temp, &msg.staged.target)
    }
}

/// Write a whole small blob in one call: temporary file, bytes, fsync (per `localfs_fsync`), then
/// its blob location and the fsync of the fan-out folder, the sequence of [`OpenStaging`],
/// [`Staging::write`], [`Staging::finish`] and [`PublishBlob`] on one thread. Nothing is left in
/// `tmp/` when it fails. Returns the size.
#[derive(Message)]
#[rtype(result = "Result<u64, ActorError>")]
pub struct StoreBlob {
    pub blob: String,
    pub data: Bytes,
}

impl Handler<StoreBlob> for LocalFsWorker {
    type Result = Result<u64, ActorError>;
    fn handle(&mut self, msg: StoreBlob, _ctx: &mut Self::Context) -> Self::Result {
        let mut staging = self.open_staging(&msg.blob)?;
        let stored = (|| {
            let mut file = staging.file.take().ok_or_else(|| ActorError::InvalidInput("staging file closed".into()))?;
            let io = |e: io::Error| ActorError::from_io(&e);
            file.write_all(&msg.data).map_err(io)?;
            if self.fsync {
                file.sync_all().map_err(io)?;
            }
            file.set_permissions(fs::Permissions::from_mode(0o644)).map_err(io)?;
            drop(file);
            self.publish(&staging.temp, &staging.target)
        })();
        if stored.is_err() {
            let _ = fs::remove_file(&staging.temp);
        }
        stored.map(|()| msg.data.len() as u64)
    }
}

/// Remove a temporary file (an upload that failed). Best effort.
#[derive(Message)]
#[rtype(result = "()")]
pub struct DiscardTemp {
    pub path: PathBuf,
}

impl Handler<DiscardTemp> for LocalFsWorker {
    type Result = ();
    fn handle(&mut self, msg: DiscardTemp, _ctx: &mut Self::Context) {
        // Only files of our own tmp/ folder.
        if msg.path.parent() == Some(self.tmp().as_path()) {
            let _ = fs::remove_file(&msg.path);
        }
    }
}

/// Delete a blob; an absent blob is not an error.
#[derive(Message)]
#[rtype(result = "Result<(), ActorError>")]
pub struct DeleteBlob {
    pub blob: String,
}

impl Handler<DeleteBlob> for LocalFsWorker {
    type Result = Result<(), ActorError>;
    fn handle(&mut self, msg: DeleteBlob, _ctx: &mut Self::Context) -> Self::Result {
        self.delete_blob(&msg.blob)
    }
}

/// A blob opened for reading: small blobs come back inline, large ones as an open descriptor.
#[derive(Debug)]
pub struct OpenedFile {
    pub len: u64,
    pub inline: Option<Bytes>,
    pub file: Option<File>,
}

/// Open a blob for reading (`O_NOFOLLOW`); blobs up to `inline_limit` bytes are read at once.
#[derive(Message)]
#[rtype(result = "Result<OpenedFile, ActorError>")]
pub struct OpenBlob {
    pub blob: String,
    pub inline_limit: u64,
}

impl Handler<OpenBlob> for LocalFsWorker {
    type Result = Result<OpenedFile, ActorError>;
    fn handle(&mut self, msg: OpenBlob, _ctx: &mut Self::Context) -> Self::Result {
        self.open_blob(&msg.blob, msg.inline_limit)
    }
}

impl LocalFsWorker {
    fn open_blob(&self, blob: &str, inline_limit: u64) -> Result<OpenedFile, ActorError> {
        let path = self.blob_path(blob)?;
        let mut file = OpenOptions::new()
            .read(true)
            .custom_flags(libc::O_NOFOLLOW)
            .open(&path)
            .map_err(|e| ActorError::from_io(&e))?;
        let meta = file.metadata().map_err(|e| ActorError::from_io(&e))?;
        if !meta.is_file() {
            return Err(ActorError::Storage("blob is not a regular file".into()));
        }
        let len = meta.len();
        if len <= inline_limit {
            // Blobs are immutable: exactly `len` bytes, read into one buffer that becomes the body.
            let mut buf = BytesMut::zeroed(len as usize);
            let mut filled = 0;
            while filled < buf.len() {
                match file.read(&mut buf[filled..]).map_err(|e| ActorError::from_io(&e))? {
                    0 => break,
                    n => filled += n,
                }
            }
            buf.truncate(filled);
            return Ok(OpenedFile { len: filled as u64, inline: Some(buf.freeze()), file: None });
        }
        Ok(OpenedFile { len, inline: None, file: Some(file) })
    }
}

/// The row at a canonical path and, when it is a localfs file of this node, its blob opened (read
/// whole up to `inline_limit`): the lookup and the read of a small GET on one thread.
#[derive(Message)]
#[rtype(result = "Result<EntryBlob, ActorError>")]
pub struct OpenEntry {
    pub path: String,
    pub inline_limit: u64,
}

/// What [`OpenEntry`] found: no row, a row only (a directory, another node's or backend's file),
/// or a row with the outcome of opening its blob and how long that took.
#[derive(Debug)]
pub struct EntryBlob {
    pub entry: Option<Inode>,
    pub opened: Option<(Result<OpenedFile, ActorError>, Duration)>,
}

impl Handler<OpenEntry> for LocalFsWorker {
    type Result = Result<EntryBlob, ActorError>;
    fn handle(&mut self, msg: OpenEntry, _ctx: &mut Self::Context) -> Self::Result {
        let Some((reader, instance_id)) = &self.reader else {
            return Err(ActorError::Internal("this storage worker reads no metadata".into()));
        };
        let entry = reader.entry(&msg.path)?;
        let blob = entry.as_ref().filter(|e| {
            e.is_file()
                && e.backend() == Backend::Localfs
                && e.callfs_instance_id.as_deref().is_none_or(|owner| owner == instance_id)
        });
        let opened = blob.and_then(|e| e.blob.as_deref()).map(|blob| {
            let started = Instant::now();
            let opened = self.open_blob(blob, msg.inline_limit);
            (opened, started.elapsed())
        });
        Ok(EntryBlob { entry, opened })
    }
}

/// Every blob id on this disk (for `callfs fsck`), with its modification time.
#[derive(Message)]
#[rtype(result = "Result<Vec<(String, SystemTime)>, ActorError>")]
pub struct ListBlobs;

impl Handler<ListBlobs> for LocalFsWorker {
    type Result = Result<Vec<(String, SystemTime)>, ActorError>;
    fn handle(&mut self, _msg: ListBlobs, _ctx: &mut Self::Context) -> Self::Result {
        list_blobs(&self.blobs()).map_err(|e| ActorError::from_io(&e))
    }
}

fn list_blobs(dir: &Path) -> io::Result<Vec<(String, SystemTime)>> {
    let mut out = Vec::new();
    let subdirs = |dir: &Path| -> Vec<PathBuf> {
        fs::read_dir(dir)
            .map(|rd| rd.flatten().filter(|e| e.file_type().is_ok_and(|k| k.is_dir())).map(|e| e.path()).collect())
            .unwrap_or_default()
    };
    for a in subdirs(dir) {
        for b in subdirs(&a) {
            for blob in fs::read_dir(&b)?.flatten() {
                let name = blob.file_name().to_string_lossy().into_owned();
                if is_blob_id(&name) {
                    let modified = blob.metadata().and_then(|m| m.modified()).unwrap_or(SystemTime::UNIX_EPOCH);
                    out.push((name, modified));
                }
            }
        }
    }
    Ok(out)
}

/// Delete leftovers in `tmp/` of uploads that were in flight when the node stopped.
#[derive(Message)]
#[rtype(result = "usize")]
pub struct SweepTempFiles {
    pub older_than: SystemTime,
}

impl Handler<SweepTempFiles> for LocalFsWorker {
    type Result = usize;
    fn handle(&mut self, msg: SweepTempFiles, _ctx: &mut Self::Context) -> usize {
        sweep_tmp(&self.tmp(), msg.older_than)
    }
}

fn sweep_tmp(dir: &Path, older_than: SystemTime) -> usize {
    let Ok(entries) = fs::read_dir(dir) else {
        return 0;
    };
    let mut removed = 0;
    for entry in entries.flatten() {
        let is_file = entry.file_type().is_ok_and(|k| k.is_file());
        if is_file && entry.file_name().to_string_lossy().starts_with(TEMP_PREFIX) {
            let stale = entry.metadata().and_then(|m| m.modified()).is_ok_and(|t| t < older_than);
            if stale && fs::remove_file(entry.path()).is_ok() {
                removed += 1;
            }
        }
    }
    removed
}

/// Convert revision-1 files (bytes at `<root>/<path>`) to blobs: each `(id, path)` whose old file
/// exists is renamed to a new blob. Returns `(id, blob)` of the converted ones; the caller records
/// them in metadata, then asks for [`RemoveLegacyFolders`].
#[derive(Message)]
#[rtype(result = "Vec<(i64, String)>")]
pub struct ConvertLegacy {
    pub files: Vec<(i64, String)>,
}

impl Handler<ConvertLegacy> for LocalFsWorker {
    type Result = Vec<(i64, String)>;
    fn handle(&mut self, msg: ConvertLegacy, _ctx: &mut Self::Context) -> Self::Result {
        let mut converted = Vec::new();
        for (id, path) in msg.files {
            let Some(old) = self.legacy_path(&path) else { continue };
            if !fs::symlink_metadata(&old).is_ok_and(|m| m.is_file()) {
                continue;
            }
            let blob = new_blob_id();
            let Ok(target) = self.blob_path(&blob) else { continue };
            if self.publish(&old, &target).is_ok() {
                converted.push((id, blob));
            }
        }
        converted
    }
}

impl LocalFsWorker {
    /// Where revision 1 kept a canonical path's bytes; `None` for anything that could leave the root.
    fn legacy_path(&self, path: &str) -> Option<PathBuf> {
        let mut out = self.root.clone();
        for segment in path.split('/').filter(|s| !s.is_empty()) {
            if segment == "." || segment == ".." || segment.contains('\0') {
                return None;
            }
            out.push(segment);
        }
        (out != self.root).then_some(out)
    }
}

/// After a conversion: remove every empty revision-1 folder (and stale temp files in them).
#[derive(Message)]
#[rtype(result = "usize")]
pub struct RemoveLegacyFolders;

impl Handler<RemoveLegacyFolders> for LocalFsWorker {
    type Result = usize;
    fn handle(&mut self, _msg: RemoveLegacyFolders, _ctx: &mut Self::Context) -> usize {
        let Ok(entries) = fs::read_dir(&self.root) else {
            return 0;
        };
        let mut removed = 0;
        for entry in entries.flatten() {
            let name = entry.file_name();
            if name == "blobs" || name == "tmp" {
                continue;
            }
            if entry.file_type().is_ok_and(|k| k.is_dir()) {
                removed += remove_empty_tree(&entry.path());
            }
        }
        removed
    }
}

/// Removes empty folders bottom-up (and revision-1 temp files); keeps anything else.
fn remove_empty_tree(dir: &Path) -> usize {
    let mut removed = 0;
    if let Ok(entries) = fs::read_dir(dir) {
        for entry in entries.flatten() {
            let kind = entry.file_type();
            if kind.as_ref().is_ok_and(|k| k.is_dir()) {
                removed += remove_empty_tree(&entry.path());
            } else if entry.file_name().to_string_lossy().starts_with(TEMP_PREFIX) {
                let _ = fs::remove_file(entry.path());
            }
        }
    }
    if fs::remove_dir(dir).is_ok() {
        removed += 1;
    }
    removed
}

/// The root exists and accepts writes (readiness).
#[derive(Message)]
#[rtype(result = "Result<(), ActorError>")]
pub struct CheckRoot;

impl Handler<CheckRoot> for LocalFsWorker {
    type Result = Result<(), ActorError>;
    fn handle(&mut self, _msg: CheckRoot, _ctx: &mut Self::Context) -> Self::Result {
        check_root(&self.root)
    }
}

/// Creates the root (with `blobs/` and `tmp/`) if needed and proves it is writable.
pub fn check_root(root: &Path) -> Result<(), ActorError> {
    for dir in [root.to_path_buf(), root.join("blobs"), root.join("tmp")] {
        fs::create_dir_all(&dir).map_err(|e| ActorError::Storage(format!("cannot create {}: {e}", dir.display())))?;
    }
    let probe = root.join("tmp").join(format!("{TEMP_PREFIX}probe-{}", hex::encode(rand::random::<[u8; 4]>())));
    File::create(&probe)
        .and_then(|_| fs::remove_file(&probe))
        .map_err(|e| ActorError::Storage(format!("{} is not writable: {e}", root.display())))
}

/// Streams `len` bytes of a file from `offset`, reading on the blocking pool one chunk at a time.
/// The next chunk is read while the previous one is being sent (read-ahead of one chunk), so disk
/// reads and socket writes overlap; at most two chunks are buffered, and a slow client still slows
/// the disk reads.
pub struct FileChunks {
    file: Option<File>,
    remaining: u64,
    pending: Option<JoinHandle<(File, io::Result<Bytes>)>>,
    offset: Option<u64>,
}

impl FileChunks {
    pub fn new(file: File, offset: u64, len: u64) -> Self {
        Self { file: Some(file), remaining: len, pending: None, offset: Some(offset) }
    }

    /// Starts reading the next chunk on the blocking pool, if any bytes remain.
    fn read_next(&mut self) {
        if self.remaining == 0 {
            return;
        }
        let Some(file) = self.file.take() else {
            return;
        };
        let want = self.remaining.min(IO_CHUNK as u64);
        let offset = self.offset.take();
        self.pending = Some(tokio::task::spawn_blocking(move || {
            let mut file = file;
            let read = (|| {
                if let Some(offset) = offset {
                    file.seek(SeekFrom::Start(offset))?;
                }
                // read_to_end reads into the spare capacity without zeroing it first.
                let mut buf = Vec::with_capacity(want as usize);
                (&mut file).take(want).read_to_end(&mut buf)?;
                Ok(Bytes::from(buf))
            })();
            (file, read)
        }));
    }
}

impl Stream for FileChunks {
    type Item = io::Result<Bytes>;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut TaskContext<'_>) -> Poll<Option<Self::Item>> {
        let this = &mut *self;
        if this.pending.is_none() {
            this.read_next();
        }
        let Some(pending) = this.pending.as_mut() else {
            return Poll::Ready(None);
        };
        match Pin::new(pending).poll(cx) {
            Poll::Pending => Poll::Pending,
            Poll::Ready(joined) => {
                this.pending = None;
                match joined {
                    Ok((file, Ok(bytes))) => {
                        if bytes.is_empty() {
                            // The file shrank under us: end with an error, never a silently short body.
                            return Poll::Ready(Some(Err(io::Error::new(
                                io::ErrorKind::UnexpectedEof,
                                "file shorter than announced",
                            ))));
                        }
                        this.remaining -= bytes.len() as u64;
                        this.file = Some(file);
                        this.read_next();
                        Poll::Ready(Some(Ok(bytes)))
                    }
                    Ok((_, Err(e))) => Poll::Ready(Some(Err(e))),
                    Err(e) => Poll::Ready(Some(Err(io::Error::other(e.to_string())))),
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use futures_util::StreamExt;

    fn worker() -> (LocalFsWorker, tempfile::TempDir) {
        let dir = tempfile::tempdir().unwrap();
        check_root(dir.path()).unwrap();
        (LocalFsWorker::new(dir.path().to_path_buf(), true), dir)
    }

    #[actix::test]
    async fn staged_blob_is_invisible_until_published() {
        let (w, dir) = worker();
        let blob = new_blob_id();
        let mut staging = w.open_staging(&blob).unwrap();
        staging.write(Bytes::from_static(b"hello ")).await.unwrap();
        staging.write(Bytes::from_static(b"world")).await.unwrap();
        let staged = staging.finish().await.unwrap();
        assert_eq!(staged.size, 11);
        let at = dir.path().join("blobs").join(&blob[0..2]).join(&blob[2..4]).join(&blob);
        assert!(!at.exists());
        assert!(staged.temp.starts_with(dir.path().join("tmp")));
        w.publish(&staged.temp, &staged.target).unwrap();
        assert_eq!(fs::read(&at).unwrap(), b"hello world");
        // Blobs are immutable: publishing onto an existing id is refused.
        let mut again = w.open_staging(&blob).unwrap();
        again.write(Bytes::from_static(b"x")).await.unwrap();
        let again = again.finish().await.unwrap();
        assert_eq!(w.publish(&again.temp, &again.target), Err(ActorError::AlreadyExists));
        assert_eq!(list_blobs(&dir.path().join("blobs")).unwrap().len(), 1);
        w.delete_blob(&blob).unwrap();
        w.delete_blob(&blob).unwrap();
        assert!(!at.exists());
    }

    #[test]
    fn only_well_formed_blob_ids_reach_the_disk() {
        let (w, _dir) = worker();
        for bad in ["../../etc/passwd", "ABCDEF0123456789abcdef0123456789", "abc", &"a".repeat(33), "/a/b"] {
            assert!(matches!(w.blob_path(bad), Err(ActorError::InvalidInput(_))), "{bad}");
        }
        assert!(w.blob_path(&new_blob_id()).is_ok());
        assert!(is_blob_id(&new_blob_id()));
    }

    #[test]
    fn legacy_files_are_converted_and_old_folders_removed() {
        let (w, dir) = worker();
        fs::create_dir_all(dir.path().join("a/b")).unwrap();
        fs::write(dir.path().join("a/b/c.txt"), b"old").unwrap();
        fs::create_dir_all(dir.path().join("empty/deeper")).unwrap();
        let mut w = w;
        let mut out = Vec::new();
        for (id, path) in [(7, "/a/b/c.txt".to_string()), (8, "/missing.txt".to_string())] {
            let old = w.legacy_path(&path).unwrap();
            if old.is_file() {
                let blob = new_blob_id();
                w.publish(&old, &w.blob_path(&blob).unwrap()).unwrap();
                out.push((id, blob));
            }
        }
        assert_eq!(out.len(), 1);
        let blob = &out[0].1;
        assert_eq!(fs::read(w.blob_path(blob).unwrap()).unwrap(), b"old");
        assert!(w.legacy_path("/../x").is_none());
        let removed = {
            let w = &mut w;
            let mut n = 0;
            for entry in fs::read_dir(&w.root).unwrap().flatten() {
                let name = entry.file_name();
                if name != "blobs" && name != "tmp" && entry.path().is_dir() {
                    n += remove_empty_tree(&entry.path());
                }
            }
            n
        };
        assert_eq!(removed, 4, "a, a/b, empty, empty/deeper");
        let left: Vec<_> = fs::read_dir(dir.path()).unwrap().flatten().map(|e| e.file_name()).collect();
        assert_eq!(left.len(), 2, "only blobs/ and tmp/ remain: {left:?}");
    }

    #[test]
    fn sweep_removes_only_stale_temp_files() {
        let (_w, dir) = worker();
        let tmp = dir.path().join("tmp");
        fs::write(tmp.join(".callfs-tmp-old"), b"x").unwrap();
        fs::write(tmp.join("keep.txt"), b"x").unwrap();
        let cutoff = SystemTime::now() + std::time::Duration::from_secs(1);
        assert_eq!(sweep_tmp(&tmp, cutoff), 1);
        assert!(tmp.join("keep.txt").exists());
        assert_eq!(sweep_tmp(&tmp, SystemTime::UNIX_EPOCH), 0);
    }

    #[actix::test]
    async fn file_chunks_stream_a_range() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("f");
        let data: Vec<u8> = (0..600_000u32).map(|i| (i % 251) as u8).collect();
        fs::write(&path, &data).unwrap();
        let stream = FileChunks::new(File::open(&path).unwrap(), 10, 500_000);
        let chunks: Vec<Bytes> = stream.map(|c| c.unwrap()).collect().await;
        let joined: Vec<u8> = chunks.concat();
        assert_eq!(joined, &data[10..500_010]);
    }
}
