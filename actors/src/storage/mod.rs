//! Storage backends behind one blob-store seam (storage.md §2–§4). Blobs are immutable and named
//! by generated ids; names, directories and moves live in metadata only.
//!
//! The seam is [`BlobStore`], an enum over the backend handles rather than a trait: the set of
//! backends is closed (localfs, s3; the peer proxy is the third "backend" for bytes on another
//! node), each backend keeps its natural execution model (`LocalFsWorker` is a SyncArbiter actor
//! for blocking file I/O, `S3Worker` a dedicated tokio runtime for rust-s3), and an enum gives the
//! callers plain `async fn`s without boxed futures or `async-trait`. Its operations are the whole
//! interface: write a new blob from a chunk stream ([`BlobStore::create`] then
//! [`BlobWriter::write`]/[`BlobWriter::finish`]), open a blob for reading with a range
//! ([`BlobStore::open`] then [`OpenedBlob::range`]), stat, delete and list.

pub mod localfs;
pub mod s3;

use std::io;
use std::path::PathBuf;
use std::pin::Pin;
use std::time::SystemTime;

use actix::prelude::*;
use bytes::Bytes;
use futures_util::Stream;

use crate::error::ActorError;
use localfs::{DeleteBlob, DiscardTemp, FileChunks, LocalFsWorker, OpenBlob, OpenStaging, PublishBlob, Staging};
use s3::{S3Upload, S3Worker};

/// Where a file's bytes are stored: the `backend_type` column.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Backend {
    Localfs,
    S3,
}

impl Backend {
    pub fn parse(value: &str) -> Option<Self> {
        match value {
            "localfs" => Some(Backend::Localfs),
            "s3" => Some(Backend::S3),
            _ => None,
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Backend::Localfs => "localfs",
            Backend::S3 => "s3",
        }
    }

    /// Localfs blobs belong to one node; S3 blobs to the shared bucket (no instance).
    pub fn is_shared(self) -> bool {
        self == Backend::S3
    }
}

/// A download body: chunks streamed from the backend, at most one chunk buffered here.
pub type ByteChunks = Pin<Box<dyn Stream<Item = io::Result<Bytes>>>>;

/// The body of a download: bytes already in memory, or a stream with the number of bytes it yields.
pub enum BlobContent {
    Inline(Bytes),
    Stream(ByteChunks, u64),
}

enum OpenedBody {
    Inline(Bytes),
    File(std::fs::File),
    S3(S3Worker, String),
}

/// A blob opened for reading: every range is planned on `total`, the real length of the blob.
pub struct OpenedBlob {
    pub total: u64,
    body: OpenedBody,
}

impl OpenedBlob {
    /// `len` bytes from `offset`, clamped to what was opened: never out of bounds.
    pub fn range(self, offset: u64, len: u64) -> BlobContent {
        let offset = offset.min(self.total);
        let len = len.min(self.total - offset);
        match self.body {
            OpenedBody::Inline(bytes) => BlobContent::Inline(bytes.slice(offset as usize..(offset + len) as usize)),
            OpenedBody::File(file) => BlobContent::Stream(Box::pin(FileChunks::new(file, offset, len)), len),
            OpenedBody::S3(worker, blob) => {
                let whole = offset == 0 && len == self.total;
                BlobContent::Stream(Box::pin(worker.get_range(&blob, offset, len, whole)), len)
            }
        }
    }

    pub fn whole(self) -> BlobContent {
        let total = self.total;
        self.range(0, total)
    }
}

impl From<localfs::OpenedFile> for OpenedBlob {
    fn from(opened: localfs::OpenedFile) -> Self {
        match (opened.inline, opened.file) {
            (Some(bytes), _) => OpenedBlob { total: bytes.len() as u64, body: OpenedBody::Inline(bytes) },
            (None, Some(file)) => OpenedBlob { total: opened.len, body: OpenedBody::File(file) },
            (None, None) => OpenedBlob { total: 0, body: OpenedBody::Inline(Bytes::new()) },
        }
    }
}

/// One backend's blobs.
#[derive(Clone)]
pub enum BlobStore {
    Localfs(Addr<LocalFsWorker>),
    S3(S3Worker),
}

fn mailbox(err: MailboxError) -> ActorError {
    ActorError::Internal(format!("storage mailbox: {err}"))
}

impl BlobStore {
    pub fn backend(&self) -> Backend {
        match self {
            BlobStore::Localfs(_) => Backend::Localfs,
            BlobStore::S3(_) => Backend::S3,
        }
    }

    /// Starts a new blob; `content_type` is recorded where the backend keeps one (S3), and
    /// `expected_len` (the body's length, when known) sizes S3 parts so an upload stays ≤ 10,000.
    pub async fn create(
        &self,
        blob: &str,
        content_type: &'static str,
        expected_len: Option<u64>,
    ) -> Result<BlobWriter, ActorError> {
        match self {
            BlobStore::Localfs(addr) => {
                let staging = addr.send(OpenStaging { blob: blob.to_string() }).await.map_err(mailbox)??;
                Ok(BlobWriter::Localfs { temp: Some(staging.temp.clone()), staging: Some(staging), addr: addr.clone() })
            }
            BlobStore::S3(worker) => Ok(BlobWriter::S3(Some(worker.create(blob, content_type, expected_len)?))),
        }
    }

    /// Opens a blob; blobs up to `inline_limit` bytes are read at once. `NotFound` when absent.
    pub async fn open(&self, blob: &str, inline_limit: u64) -> Result<OpenedBlob, ActorError> {
        match self {
            BlobStore::Localfs(addr) => {
                let opened = addr.send(OpenBlob { blob: blob.to_string(), inline_limit }).await.map_err(mailbox)??;
                Ok(OpenedBlob::from(opened))
            }
            BlobStore::S3(worker) => {
                let total = worker.stat(blob).await?;
                if total <= inline_limit {
                    let bytes = worker.get_small(blob).await?;
                    return Ok(OpenedBlob { total: bytes.len() as u64, body: OpenedBody::Inline(bytes) });
                }
                Ok(OpenedBlob { total, body: OpenedBody::S3(worker.clone(), blob.to_string()) })
            }
        }
    }

    /// The length of a blob; `NotFound` when absent.
    pub async fn stat(&self, blob: &str) -> Result<u64, ActorError> {
        match self {
            BlobStore::Localfs(_) => Ok(self.open(blob, 0).await?.total),
            BlobStore::S3(worker) => worker.stat(blob).await,
        }
    }

    /// Deletes a blob; an absent blob is not an error.
    pub async fn delete(&self, blob: &str) -> Result<(), ActorError> {
        match self {
            BlobStore::Localfs(addr) => addr.send(DeleteBlob { blob: blob.to_string() }).await.map_err(mailbox)?,
            BlobStore::S3(worker) => worker.delete(blob).await,
        }
    }

    /// Deletes a blob in the background (cleanup from `Drop`); failures are left to the sweep.
    pub fn delete_later(&self, blob: &str) {
        match self {
            BlobStore::Localfs(addr) => addr.do_send(DeleteBlob { blob: blob.to_string() }),
            BlobStore::S3(worker) => worker.delete_later(blob),
        }
    }

    /// Every blob of the store, with its modification time.
    pub async fn list(&self) -> Result<Vec<(String, SystemTime)>, ActorError> {
        match self {
            BlobStore::Localfs(addr) => addr.send(localfs::ListBlobs).await.map_err(mailbox)?,
            BlobStore::S3(worker) => worker.list().await,
        }
    }
}

/// A blob being written. Dropped before [`BlobWriter::finish`] succeeded, it removes what it wrote
/// (the temporary file, or the multipart upload).
pub enum BlobWriter {
    Localfs { staging: Option<Staging>, temp: Option<PathBuf>, addr: Addr<LocalFsWorker> },
    S3(Option<S3Upload>),
}

impl BlobWriter {
    pub fn size(&self) -> u64 {
        match self {
            BlobWriter::Localfs { staging, .. } => staging.as_ref().map_or(0, |s| s.size),
            BlobWriter::S3(upload) => upload.as_ref().map_or(0, |u| u.size),
        }
    }

    /// Appends one chunk (callers gather network chunks into units first).
    pub async fn write(&mut self, data: Bytes) -> Result<(), ActorError> {
        match self {
            BlobWriter::Localfs { staging, .. } => match staging.as_mut() {
                Some(staging) => staging.write(data).await,
                None => Err(ActorError::InvalidInput("staging file closed".into())),
            },
            BlobWriter::S3(upload) => match upload.as_mut() {
                Some(upload) => upload.write(data).await,
                None => Err(ActorError::InvalidInput("upload closed".into())),
            },
        }
    }

    /// Makes the blob durable and visible under its id; returns its size.
    pub async fn finish(mut self) -> Result<u64, ActorError> {
        match &mut self {
            BlobWriter::Localfs { staging, temp, addr } => {
                let staging = staging.take().ok_or_else(|| ActorError::InvalidInput("staging file closed".into()))?;
                let staged = staging.finish().await?;
                let size = staged.size;
                addr.send(PublishBlob { staged }).await.map_err(mailbox)??;
                *temp = None;
                Ok(size)
            }
            BlobWriter::S3(upload) => {
                let upload = upload.take().ok_or_else(|| ActorError::InvalidInput("upload closed".into()))?;
                upload.finish().await
            }
        }
    }
}

impl Drop for BlobWriter {
    fn drop(&mut self) {
        if let BlobWriter::Localfs { temp: Some(temp), addr, .. } = self {
            addr.do_send(DiscardTemp { path: temp.clone() });
        }
    }
}
