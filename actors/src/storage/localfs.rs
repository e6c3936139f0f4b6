//! Local-disk storage (storage.md §2). All blocking file-system calls run here, on SyncArbiter
//! threads, never on the threads that drive network I/O.

use std::fs::{self, File, OpenOptions};
use std::future::Future;
use std::io::{self, Read, Seek, SeekFrom, Write};
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::pin::Pin;
use std::task::{Context as TaskContext, Poll};
use std::time::SystemTime;

use actix::prelude::*;
use bytes::{Bytes, BytesMut};
use futures_util::Stream;
use tokio::task::JoinHandle;

use crate::error::ActorError;

/// Prefix of in-flight upload files; reserved in the namespace so they are never addressable.
pub const TEMP_PREFIX: &str = ".callfs-tmp-";
/// Largest read and write unit; also the bound on per-transfer buffering.
const IO_CHUNK: usize = 256 * 1024;

pub struct LocalFsWorker {
    root: PathBuf,
    fsync: bool,
}

impl LocalFsWorker {
    pub fn new(root: PathBuf, fsync: bool) -> Self {
        Self { root, fsync }
    }

    /// Maps a canonical path beneath the root, refusing symlinks that lead outside it.
    fn resolve(&self, path: &str) -> Result<PathBuf, ActorError> {
        let mut current = self.root.clone();
        let mut checking = true;
        for segment in path.split('/').filter(|s| !s.is_empty()) {
            current.push(segment);
            if !checking {
                continue;
            }
            match fs::symlink_metadata(&current) {
                Ok(meta) if meta.file_type().is_symlink() => {
                    let target = fs::canonicalize(&current).map_err(|e| ActorError::from_io(&e))?;
                    let root = fs::canonicalize(&self.root).map_err(|e| ActorError::from_io(&e))?;
                    if !target.starts_with(root) {
                        return Err(ActorError::OutsideRoot);
                    }
                }
                Ok(_) => {}
                // Nothing below a missing component can be a link.
                Err(_) => checking = false,
            }
        }
        Ok(current)
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

    /// Creates the temporary file of an upload beside its final name. Refuses (as invalid input,
    /// before creating anything) a location the OS could not name.
    fn open_staging(&self, path: &str) -> Result<Staging, ActorError> {
        let target = self.resolve(path)?;
        // The temp name is longer than any final name: check it against PATH_MAX up front.
        if target.as_os_str().len() + TEMP_PREFIX.len() + 16 >= MAX_OS_PATH {
            return Err(ActorError::InvalidInput("the path is too long for this node's storage".into()));
        }
        let dir = target.parent().ok_or_else(|| ActorError::InvalidInput("no parent directory".into()))?;
        self.create_dirs(dir).map_err(|e| ActorError::from_io(&e))?;
        let temp = dir.join(format!("{TEMP_PREFIX}{}", hex::encode(rand::random::<[u8; 8]>())));
        let file = OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .open(&temp)
            .map_err(|e| ActorError::from_io(&e))?;
        Ok(Staging { file: Some(file), temp, target, size: 0, fsync: self.fsync })
    }
}

/// Longest path the OS accepts (`PATH_MAX`, including the terminating NUL).
const MAX_OS_PATH: usize = 4096;

/// An upload being written: the temporary file, filled chunk by chunk on the blocking pool so that
/// a slow body never holds a thread between its chunks.
#[derive(Debug)]
pub struct Staging {
    file: Option<File>,
    pub temp: PathBuf,
    pub target: PathBuf,
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
    pub async fn finish(mut self) -> Result<StagedFile, ActorError> {
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
        Ok(StagedFile { temp: self.temp.clone(), target: self.target.clone(), size: self.size })
    }
}

impl Actor for LocalFsWorker {
    type Context = SyncContext<Self>;
}

/// A file opened for reading: small files come back inline, large ones as an open descriptor.
#[derive(Debug)]
pub struct OpenedFile {
    pub len: u64,
    pub inline: Option<Bytes>,
    pub file: Option<File>,
}

/// Open a file for reading; files up to `inline_limit` bytes are read at once.
#[derive(Message)]
#[rtype(result = "Result<OpenedFile, ActorError>")]
pub struct OpenFile {
    pub path: String,
    pub inline_limit: u64,
}

impl Handler<OpenFile> for LocalFsWorker {
    type Result = Result<OpenedFile, ActorError>;
    fn handle(&mut self, msg: OpenFile, _ctx: &mut Self::Context) -> Self::Result {
        let path = self.resolve(&msg.path)?;
        let mut file = File::open(&path).map_err(|e| ActorError::from_io(&e))?;
        let meta = file.metadata().map_err(|e| ActorError::from_io(&e))?;
        if meta.is_dir() {
            return Err(ActorError::IsADirectory);
        }
        let len = meta.len();
        if len <= msg.inline_limit {
            let mut buf = Vec::with_capacity(len as usize);
            file.read_to_end(&mut buf).map_err(|e| ActorError::from_io(&e))?;
            return Ok(OpenedFile { len: buf.len() as u64, inline: Some(Bytes::from(buf)), file: None });
        }
        Ok(OpenedFile { len, inline: None, file: Some(file) })
    }
}

/// Bytes written to a temporary file beside their final location, durable but not yet visible.
#[derive(Debug)]
pub struct StagedFile {
    pub temp: PathBuf,
    pub target: PathBuf,
    pub size: u64,
}

/// Create the temporary file of an upload (a short call; the body is written by [`Staging`]).
#[derive(Message)]
#[rtype(result = "Result<Staging, ActorError>")]
pub struct OpenStaging {
    pub path: String,
}

impl Handler<OpenStaging> for LocalFsWorker {
    type Result = Result<Staging, ActorError>;
    fn handle(&mut self, msg: OpenStaging, _ctx: &mut Self::Context) -> Self::Result {
        self.open_staging(&msg.path)
    }
}

/// Atomically move a staged file to its final name (replacing whatever is there) and fsync the directory.
#[derive(Message)]
#[rtype(result = "Result<(), ActorError>")]
pub struct PublishFile {
    pub temp: PathBuf,
    pub target: PathBuf,
}

impl Handler<PublishFile> for LocalFsWorker {
    type Result = Result<(), ActorError>;
    fn handle(&mut self, msg: PublishFile, _ctx: &mut Self::Context) -> Self::Result {
        let dir = msg.target.parent().ok_or_else(|| ActorError::InvalidInput("no parent".into()))?;
        // The parent may have been removed by a concurrent empty-directory delete since staging.
        self.create_dirs(dir).map_err(|e| ActorError::from_io(&e))?;
        fs::rename(&msg.temp, &msg.target).map_err(|e| ActorError::from_io(&e))?;
        self.sync_dir(dir).map_err(|e| ActorError::from_io(&e))
    }
}

/// Remove a file by its on-disk name (a staged temp file or a just-published file). Best effort.
#[derive(Message)]
#[rtype(result = "()")]
pub struct DiscardFile {
    pub path: PathBuf,
}

impl Handler<DiscardFile> for LocalFsWorker {
    type Result = ();
    fn handle(&mut self, msg: DiscardFile, _ctx: &mut Self::Context) {
        let _ = fs::remove_file(&msg.path);
    }
}

/// Remove the file at a canonical path. An absent file is not an error.
#[derive(Message)]
#[rtype(result = "Result<(), ActorError>")]
pub struct DeleteFile {
    pub path: String,
}

impl Handler<DeleteFile> for LocalFsWorker {
    type Result = Result<(), ActorError>;
    fn handle(&mut self, msg: DeleteFile, _ctx: &mut Self::Context) -> Self::Result {
        let path = self.resolve(&msg.path)?;
        match fs::symlink_metadata(&path) {
            Ok(meta) if meta.is_dir() => return Err(ActorError::IsADirectory),
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(()),
            _ => {}
        }
        match fs::remove_file(&path) {
            Ok(()) => {
                if let Some(dir) = path.parent() {
                    self.sync_dir(dir).map_err(|e| ActorError::from_io(&e))?;
                }
                Ok(())
            }
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
            Err(e) => Err(ActorError::from_io(&e)),
        }
    }
}

/// Create a directory (and its parents) at a canonical path.
#[derive(Message)]
#[rtype(result = "Result<(), ActorError>")]
pub struct MakeDir {
    pub path: String,
}

impl Handler<MakeDir> for LocalFsWorker {
    type Result = Result<(), ActorError>;
    fn handle(&mut self, msg: MakeDir, _ctx: &mut Self::Context) -> Self::Result {
        let path = self.resolve(&msg.path)?;
        self.create_dirs(&path).map_err(|e| ActorError::from_io(&e))
    }
}

/// Remove an empty directory; absent or non-empty (orphans) is silently kept.
#[derive(Message)]
#[rtype(result = "()")]
pub struct RemoveDir {
    pub path: String,
}

impl Handler<RemoveDir> for LocalFsWorker {
    type Result = ();
    fn handle(&mut self, msg: RemoveDir, _ctx: &mut Self::Context) {
        if let Ok(path) = self.resolve(&msg.path) {
            let _ = fs::remove_dir(path);
        }
    }
}

/// `rename(2)` a file or a directory subtree, creating the destination's parents.
#[derive(Message)]
#[rtype(result = "Result<(), ActorError>")]
pub struct MovePath {
    pub from: String,
    pub to: String,
    /// Replace a file or an empty directory at `to`; otherwise an existing `to` is `AlreadyExists`.
    pub replace: bool,
}

impl Handler<MovePath> for LocalFsWorker {
    type Result = Result<(), ActorError>;
    fn handle(&mut self, msg: MovePath, _ctx: &mut Self::Context) -> Self::Result {
        let from = self.resolve(&msg.from)?;
        let to = self.resolve(&msg.to)?;
        if fs::symlink_metadata(&from).is_err() {
            return Err(ActorError::NotFound);
        }
        let to_dir = to.parent().ok_or_else(|| ActorError::InvalidInput("no parent".into()))?;
        self.create_dirs(to_dir).map_err(|e| ActorError::from_io(&e))?;
        if let Ok(existing) = fs::symlink_metadata(&to) {
            let empty_dir = existing.is_dir() && fs::read_dir(&to).map(|mut d| d.next().is_none()).unwrap_or(false);
            if !msg.replace && !empty_dir {
                return Err(ActorError::AlreadyExists);
            }
            if existing.is_dir() && from.is_dir() {
                // rename(2) replaces a directory only when it is empty; an orphan-holding one is set aside.
                let _ = fs::remove_dir(&to);
            }
        }
        fs::rename(&from, &to).map_err(|e| ActorError::from_io(&e))?;
        self.sync_dir(to_dir).map_err(|e| ActorError::from_io(&e))?;
        if let Some(from_dir) = from.parent().filter(|d| *d != to_dir) {
            self.sync_dir(from_dir).map_err(|e| ActorError::from_io(&e))?;
        }
        Ok(())
    }
}

/// Delete leftovers of uploads that were in flight when the node stopped.
#[derive(Message)]
#[rtype(result = "usize")]
pub struct SweepTempFiles {
    pub older_than: SystemTime,
}

impl Handler<SweepTempFiles> for LocalFsWorker {
    type Result = usize;
    fn handle(&mut self, msg: SweepTempFiles, _ctx: &mut Self::Context) -> usize {
        sweep(&self.root, msg.older_than)
    }
}

fn sweep(dir: &Path, older_than: SystemTime) -> usize {
    let Ok(entries) = fs::read_dir(dir) else {
        return 0;
    };
    let mut removed = 0;
    for entry in entries.flatten() {
        let Ok(kind) = entry.file_type() else {
            continue;
        };
        if kind.is_dir() {
            removed += sweep(&entry.path(), older_than);
        } else if kind.is_file() && entry.file_name().to_string_lossy().starts_with(TEMP_PREFIX) {
            let stale = entry.metadata().and_then(|m| m.modified()).is_ok_and(|t| t < older_than);
            if stale && fs::remove_file(entry.path()).is_ok() {
                removed += 1;
            }
        }
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

/// Creates the root if needed and proves it is a writable directory.
pub fn check_root(root: &Path) -> Result<(), ActorError> {
    fs::create_dir_all(root).map_err(|e| ActorError::Storage(format!("cannot create {}: {e}", root.display())))?;
    let probe = root.join(format!("{TEMP_PREFIX}probe-{}", hex::encode(rand::random::<[u8; 4]>())));
    File::create(&probe)
        .and_then(|_| fs::remove_file(&probe))
        .map_err(|e| ActorError::Storage(format!("{} is not writable: {e}", root.display())))
}

/// Streams `len` bytes of a file from `offset`, reading on the blocking pool one chunk at a time,
/// so at most one chunk is buffered and a slow client slows the disk reads.
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
}

impl Stream for FileChunks {
    type Item = io::Result<Bytes>;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut TaskContext<'_>) -> Poll<Option<Self::Item>> {
        let this = &mut *self;
        if this.pending.is_none() {
            if this.remaining == 0 {
                return Poll::Ready(None);
            }
            let Some(mut file) = this.file.take() else {
                return Poll::Ready(None);
            };
            let want = this.remaining.min(IO_CHUNK as u64) as usize;
            let offset = this.offset.take();
            this.pending = Some(tokio::task::spawn_blocking(move || {
                let read = (|| {
                    if let Some(offset) = offset {
                        file.seek(SeekFrom::Start(offset))?;
                    }
                    let mut buf = BytesMut::zeroed(want);
                    let mut filled = 0;
                    while filled < want {
                        match file.read(&mut buf[filled..])? {
                            0 => break,
                            n => filled += n,
                        }
                    }
                    buf.truncate(filled);
                    Ok(buf.freeze())
                })();
                (file, read)
            }));
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
        (LocalFsWorker::new(dir.path().to_path_buf(), true), dir)
    }

    #[actix::test]
    async fn staged_upload_is_invisible_until_published() {
        let (w, dir) = worker();
        let mut staging = w.open_staging("/a/b.txt").unwrap();
        staging.write(Bytes::from_static(b"hello ")).await.unwrap();
        staging.write(Bytes::from_static(b"world")).await.unwrap();
        let staged = staging.finish().await.unwrap();
        assert_eq!(staged.size, 11);
        assert!(!dir.path().join("a/b.txt").exists());
        assert!(staged.temp.file_name().unwrap().to_string_lossy().starts_with(TEMP_PREFIX));
        fs::rename(&staged.temp, &staged.target).unwrap();
        assert_eq!(fs::read(dir.path().join("a/b.txt")).unwrap(), b"hello world");
    }

    #[test]
    fn a_path_the_os_cannot_name_is_refused_before_anything_is_created() {
        let (w, dir) = worker();
        let long: String = (0..17).map(|i| format!("/{}", "d".repeat(240) + &i.to_string())).collect();
        assert!(matches!(w.open_staging(&long), Err(ActorError::InvalidInput(_))));
        assert_eq!(fs::read_dir(dir.path()).unwrap().count(), 0, "no directory may remain");
    }

    #[test]
    fn sweep_removes_only_stale_temp_files() {
        let (_w, dir) = worker();
        fs::create_dir_all(dir.path().join("d")).unwrap();
        fs::write(dir.path().join("d/.callfs-tmp-old"), b"x").unwrap();
        fs::write(dir.path().join("d/keep.txt"), b"x").unwrap();
        let cutoff = SystemTime::now() + std::time::Duration::from_secs(1);
        assert_eq!(sweep(dir.path(), cutoff), 1);
        assert!(dir.path().join("d/keep.txt").exists());
        assert_eq!(sweep(dir.path(), SystemTime::UNIX_EPOCH), 0);
    }

    #[test]
    fn symlink_out_of_root_is_refused() {
        let (w, dir) = worker();
        let outside = tempfile::tempdir().unwrap();
        std::os::unix::fs::symlink(outside.path(), dir.path().join("escape")).unwrap();
        assert_eq!(w.resolve("/escape/passwd"), Err(ActorError::OutsideRoot));
        assert_eq!(w.resolve("/missing/x").unwrap(), dir.path().join("missing/x"));
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
