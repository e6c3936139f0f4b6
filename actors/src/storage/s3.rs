//! S3 storage (storage.md §3) on the `rust-s3` crate: blob `b` is the object `blobs/<b>`; no path
//! is ever part of a key and directories have no marker objects.
//!
//! rust-s3 runs on reqwest, whose connections are tasks of the runtime that opened them. actix-web
//! drives each worker on its own single-threaded runtime, so a pooled connection opened on one
//! worker would be driven by another worker's thread. [`S3Worker`] therefore owns one dedicated
//! multi-threaded tokio runtime (on its own thread, alive for the process) and runs every S3 call
//! there; callers await the task's `JoinHandle`, and bodies cross between runtimes through bounded
//! channels (one 8 MiB part filling beside one in flight for uploads, two chunks for downloads).

use std::future::Future;
use std::io;
use std::pin::Pin;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use bytes::{Bytes, BytesMut};
use futures_util::{Stream, StreamExt};
use s3::creds::Credentials;
use s3::error::S3Error;
use s3::request::tokio_backend::ReqwestRequest;
use s3::request::Request;
use s3::serde_types::Part;
use s3::{Bucket, Region};
use tokio::runtime::Handle;
use tokio::sync::mpsc;
use tokio::task::JoinHandle;

use crate::error::ActorError;
use crate::storage::localfs::is_blob_id;

/// Multipart part size (and the largest body sent as one PutObject).
pub const PART_SIZE: usize = 8 * 1024 * 1024;
/// S3's limit on the number of parts of one upload.
const MAX_PARTS: u32 = 10_000;
/// Larger part sizes are whole MiB, so the parts of one upload are round and few sizes occur.
const PART_STEP: u64 = 1024 * 1024;
/// S3's largest object (storage.md §5).
pub const MAX_OBJECT: u64 = 5 * 1024 * 1024 * 1024 * 1024;
/// Retries of an idempotent call after the first attempt, with exponential backoff from 100 ms.
const RETRIES: u32 = 3;
const BACKOFF_BASE: Duration = Duration::from_millis(100);
/// Chunks buffered between the S3 runtime and the client of a download.
const READ_QUEUE: usize = 2;

/// The `backend.s3_*` settings the worker needs.
#[derive(Debug, Clone, Default)]
pub struct S3Settings {
    pub bucket: String,
    pub region: String,
    pub endpoint: String,
    pub access_key: String,
    pub secret_key: String,
    pub server_side_encryption: String,
    pub kms_key_id: String,
    pub acl: String,
}

/// A handle on the bucket; cheap to clone.
#[derive(Clone)]
pub struct S3Worker {
    inner: Arc<Inner>,
}

struct Inner {
    /// Reads, completion, deletes, listing; presigns the part uploads.
    bucket: Box<Bucket>,
    /// Sends the part uploads (presigned, see [`S3Upload::send_part`]).
    http: reqwest::Client,
    /// PutObject and multipart initiation: the same bucket plus the SSE and ACL headers.
    write_bucket: Box<Bucket>,
    runtime: Handle,
}

impl std::fmt::Debug for S3Worker {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("S3Worker").field("bucket", &self.inner.bucket.name()).finish()
    }
}

/// The object key of a checked blob id.
pub fn object_key(blob: &str) -> Result<String, ActorError> {
    if !is_blob_id(blob) {
        return Err(ActorError::InvalidInput("malformed blob id".into()));
    }
    Ok(format!("/blobs/{blob}"))
}

/// The SSE and ACL headers of uploads (storage.md §3), as `(name, value)` pairs.
pub fn upload_headers(settings: &S3Settings) -> Vec<(&'static str, String)> {
    let mut headers = Vec::new();
    match settings.server_side_encryption.as_str() {
        "" => {}
        "aws:kms" => {
            headers.push(("x-amz-server-side-encryption", "aws:kms".to_string()));
            if !settings.kms_key_id.is_empty() {
                headers.push(("x-amz-server-side-encryption-aws-kms-key-id", settings.kms_key_id.clone()));
            }
        }
        other => headers.push(("x-amz-server-side-encryption", other.to_string())),
    }
    if !settings.acl.is_empty() {
        headers.push(("x-amz-acl", settings.acl.clone()));
    }
    headers
}

/// Content-Type of an object by the extension of the file's path (storage.md §3).
pub fn content_type_for(path: &str) -> &'static str {
    let ext = path.rsplit('/').next().and_then(|name| name.rsplit_once('.')).map(|(_, e)| e.to_ascii_lowercase());
    match ext.as_deref() {
        Some("html" | "htm") => "text/html",
        Some("css") => "text/css",
        Some("js") => "application/javascript",
        Some("json") => "application/json",
        Some("xml") => "application/xml",
        Some("pdf") => "application/pdf",
        Some("jpg" | "jpeg") => "image/jpeg",
        Some("png") => "image/png",
        Some("gif") => "image/gif",
        Some("svg") => "image/svg+xml",
        Some("txt") => "text/plain",
        Some("md") => "text/markdown",
        _ => "application/octet-stream",
    }
}

/// The part size of an upload (storage.md §3, §5): 8 MiB, or for a known length above 10,000 such
/// parts, `ceil(len / 10,000)` rounded up to a whole MiB, so no upload needs more than 10,000
/// parts. Unknown lengths keep 8 MiB (so at most ~78 GiB each).
pub fn part_size_for(expected_len: Option<u64>) -> usize {
    let Some(len) = expected_len else { return PART_SIZE };
    let per_part = len.div_ceil(u64::from(MAX_PARTS)).div_ceil(PART_STEP) * PART_STEP;
    // At most 5 TiB / 10,000 (about 525 MiB): `len` is checked against MAX_OBJECT first.
    usize::try_from(per_part).map_or(PART_SIZE, |size| size.max(PART_SIZE))
}

/// Connection errors, timeouts, 5xx, 408, 429 and `SlowDown` are worth another attempt.
fn transient(err: &S3Error) -> bool {
    match err {
        S3Error::HttpFailWithBody(status, body) => {
            *status >= 500 || *status == 408 || *status == 429 || body.contains("SlowDown")
        }
        S3Error::Reqwest(_) | S3Error::Io(_) => true,
        _ => false,
    }
}

/// Maps an S3 failure: a missing object is `NotFound`, everything else makes the backend unavailable.
fn classify(err: S3Error) -> ActorError {
    match err {
        S3Error::HttpFailWithBody(404, _) => ActorError::NotFound,
        S3Error::HttpFailWithBody(403, _) => ActorError::BackendUnavailable("S3 denied the request (403)".into()),
        S3Error::HttpFailWithBody(status, body) => {
            let code =
                body.split("<Code>").nth(1).and_then(|rest| rest.split("</Code>").next()).unwrap_or("").to_string();
            ActorError::BackendUnavailable(format!("S3 answered {status} {code}"))
        }
        other => ActorError::BackendUnavailable(format!("S3: {other}")),
    }
}

/// The outcome of a CompleteMultipartUpload answered with a success status. S3 may still report a
/// failure in a 200 body (`<Error>`), so that body is checked; but the name of the success root
/// differs between servers (AWS and s3s-fs: `CompleteMultipartUploadResult`; moto:
/// `CompleteMultipartUploadResponse`), so any other root is success. rust-s3's own
/// `complete_multipart_upload` insists on the AWS name and so fails every upload on moto.
fn completion_outcome(status: u16, body: &[u8]) -> Result<(), ActorError> {
    let text = String::from_utf8_lossy(body);
    let root = text
        .split('<')
        .map(str::trim_start)
        .find(|tag| !tag.is_empty() && !tag.starts_with('?') && !tag.starts_with('!'))
        .map(|tag| tag.split(|c: char| c.is_whitespace() || c == '>' || c == '/').next().unwrap_or(""));
    match root {
        Some("Error") => Err(classify(S3Error::HttpFailWithBody(status, text.into_owned()))),
        _ => Ok(()),
    }
}

/// Runs an idempotent call, retrying transient failures with exponential backoff.
async fn retried<T, F, Fut>(mut call: F) -> Result<T, ActorError>
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Result<T, S3Error>>,
{
    let mut attempt = 0;
    loop {
        match call().await {
            Ok(value) => return Ok(value),
            Err(err) if attempt < RETRIES && transient(&err) => {
                tokio::time::sleep(BACKOFF_BASE * 2u32.pow(attempt)).await;
                attempt += 1;
            }
            Err(err) => return Err(classify(err)),
        }
    }
}

impl S3Worker {
    /// Builds the bucket handles and starts the S3 runtime thread. No network call.
    pub fn new(settings: &S3Settings) -> Result<Self, ActorError> {
        let config = |e: &dyn std::fmt::Display| ActorError::InvalidInput(format!("S3 configuration: {e}"));
        // Our own retry policy (3 retries, 100 ms base) replaces the crate's (1 s, 4 s, ...).
        s3::set_retries(0);
        let credentials = if settings.access_key.is_empty() && settings.secret_key.is_empty() {
            Credentials::default().map_err(|e| config(&e))?
        } else {
            Credentials::new(Some(&settings.access_key), Some(&settings.secret_key), None, None, None)
                .map_err(|e| config(&e))?
        };
        let region = if settings.endpoint.is_empty() {
            settings.region.parse::<Region>().map_err(|e| config(&e))?
        } else {
            Region::Custom { region: settings.region.clone(), endpoint: settings.endpoint.trim_end_matches('/').into() }
        };
        let mut bucket = Bucket::new(&settings.bucket, region, credentials).map_err(|e| config(&e))?;
        if !settings.endpoint.is_empty() {
            bucket.set_path_style();
        }
        let mut write_bucket = bucket.clone();
        for (name, value) in upload_headers(settings) {
            write_bucket.add_header(name, &value);
        }
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .thread_name("callfs-s3")
            .enable_all()
            .build()
            .map_err(|e| ActorError::Internal(format!("S3 runtime: {e}")))?;
        let http = reqwest::Client::builder()
            .timeout(bucket.request_timeout().unwrap_or(Duration::from_secs(60)))
            .build()
            .map_err(|e| ActorError::Internal(format!("S3 HTTP client: {e}")))?;
        let handle = runtime.handle().clone();
        std::thread::Builder::new()
            .name("callfs-s3-runtime".into())
            .spawn(move || runtime.block_on(std::future::pending::<()>()))
            .map_err(|e| ActorError::Internal(format!("S3 runtime thread: {e}")))?;
        Ok(Self { inner: Arc::new(Inner { bucket, http, write_bucket, runtime: handle }) })
    }

    pub fn bucket_name(&self) -> String {
        self.inner.bucket.name()
    }

    /// Runs `f` on the S3 runtime and waits for it from whatever runtime the caller is on.
    async fn run<T, F, Fut>(&self, f: F) -> Result<T, ActorError>
    where
        F: FnOnce(Arc<Inner>) -> Fut,
        Fut: Future<Output = Result<T, ActorError>> + Send + 'static,
        T: Send + 'static,
    {
        let task = self.inner.runtime.spawn(f(self.inner.clone()));
        task.await.map_err(|e| ActorError::Internal(format!("S3 task: {e}")))?
    }

    /// HEAD on the bucket (readiness, start-up).
    pub async fn check_bucket(&self) -> Result<(), ActorError> {
        self.run(|inner| async move {
            retried(|| async {
                let request = ReqwestRequest::new(&inner.bucket, "/", s3::command::Command::HeadObject).await?;
                request.response_header().await
            })
            .await
            .map(|_| ())
        })
        .await
    }

    /// The length of a blob's object; `NotFound` when it is absent.
    pub async fn stat(&self, blob: &str) -> Result<u64, ActorError> {
        let key = object_key(blob)?;
        self.run(|inner| async move {
            let (head, _) = retried(|| inner.bucket.head_object(&key)).await?;
            Ok(head.content_length.unwrap_or(0).max(0) as u64)
        })
        .await
    }

    /// Deletes a blob's object; an absent object is not an error.
    pub async fn delete(&self, blob: &str) -> Result<(), ActorError> {
        let key = object_key(blob)?;
        self.run(|inner| async move {
            match retried(|| inner.bucket.delete_object(&key)).await {
                Ok(_) | Err(ActorError::NotFound) => Ok(()),
                Err(err) => Err(err),
            }
        })
        .await
    }

    /// Deletes a blob's object in the background, on the S3 runtime (cleanup from `Drop`).
    pub fn delete_later(&self, blob: &str) {
        let worker = self.clone();
        let blob = blob.to_string();
        self.inner.runtime.spawn(async move {
            if worker.delete(&blob).await.is_err() {
                log::warn!(blob = blob.as_str(); "could not delete an uncommitted S3 blob; the sweep settles its intent");
            }
        });
    }

    /// Every blob in the bucket (`blobs/` prefix) with its modification time.
    pub async fn list(&self) -> Result<Vec<(String, SystemTime)>, ActorError> {
        self.run(|inner| async move {
            let pages = retried(|| inner.bucket.list("blobs/".into(), None)).await?;
            let mut out = Vec::new();
            for page in pages {
                for object in page.contents {
                    let Some(blob) = object.key.strip_prefix("blobs/") else { continue };
                    if !is_blob_id(blob) {
                        continue;
                    }
                    let modified = chrono::DateTime::parse_from_rfc3339(&object.last_modified)
                        .ok()
                        .and_then(|t| u64::try_from(t.timestamp()).ok())
                        .map(|secs| SystemTime::UNIX_EPOCH + Duration::from_secs(secs))
                        .unwrap_or(SystemTime::UNIX_EPOCH);
                    out.push((blob.to_string(), modified));
                }
            }
            Ok(out)
        })
        .await
    }

    /// Reads a whole small object into memory.
    pub async fn get_small(&self, blob: &str) -> Result<Bytes, ActorError> {
        let key = object_key(blob)?;
        self.run(|inner| async move {
            let data = retried(|| inner.bucket.get_object(&key)).await?;
            Ok(data.bytes().clone())
        })
        .await
    }

    /// Streams `len` bytes of a blob from `offset` with a ranged GET (nothing for `len == 0`); a
    /// `whole` object is a plain GET, which servers serve more cheaply than a range (s3s-fs spent
    /// 60% more CPU on `bytes=0-<last>` than on the same bytes without a Range).
    /// The GET runs on the S3 runtime and feeds a two-chunk queue, so a slow client slows the read;
    /// a body shorter than asked ends with an error, never silently.
    pub fn get_range(&self, blob: &str, offset: u64, len: u64, whole: bool) -> ObjectChunks {
        let (tx, rx) = mpsc::channel::<io::Result<Bytes>>(READ_QUEUE);
        if len > 0 {
            let key = object_key(blob);
            let inner = self.inner.clone();
            self.inner.runtime.spawn(async move {
                let key = match key {
                    Ok(key) => key,
                    Err(e) => {
                        let _ = tx.send(Err(io::Error::other(e.to_string()))).await;
                        return;
                    }
                };
                let end = offset + len - 1;
                let opened = retried(|| async {
                    let command = if whole {
                        s3::command::Command::GetObject
                    } else {
                        s3::command::Command::GetObjectRange { start: offset, end: Some(end) }
                    };
                    let request = ReqwestRequest::new(&inner.bucket, &key, command).await?;
                    request.response_data_to_stream().await
                })
                .await;
                let mut stream = match opened {
                    Ok(stream) => stream.bytes,
                    Err(e) => {
                        let _ = tx.send(Err(io::Error::other(e.to_string()))).await;
                        return;
                    }
                };
                let mut remaining = len;
                while let Some(chunk) = stream.next().await {
                    let item = match chunk {
                        Ok(bytes) if bytes.len() as u64 > remaining => Ok(bytes.slice(..remaining as usize)),
                        Ok(bytes) => Ok(bytes),
                        Err(e) => Err(io::Error::other(format!("S3 read: {e}"))),
                    };
                    let failed = item.is_err();
                    if let Ok(bytes) = &item {
                        remaining -= bytes.len() as u64;
                    }
                    if tx.send(item).await.is_err() || failed {
                        return;
                    }
                    if remaining == 0 {
                        return;
                    }
                }
                if remaining > 0 {
                    let _ = tx
                        .send(Err(io::Error::new(io::ErrorKind::UnexpectedEof, "S3 object shorter than announced")))
                        .await;
                }
            });
        }
        ObjectChunks { rx }
    }

    /// Starts writing a new blob (no network call until the first part fills or the end);
    /// `expected_len`, when the body's length is known, picks the part size.
    pub fn create(
        &self,
        blob: &str,
        content_type: &'static str,
        expected_len: Option<u64>,
    ) -> Result<S3Upload, ActorError> {
        if expected_len.is_some_and(|len| len > MAX_OBJECT) {
            return Err(ActorError::TooLarge);
        }
        Ok(S3Upload {
            worker: self.clone(),
            key: object_key(blob)?,
            content_type,
            part_size: part_size_for(expected_len),
            buffer: BytesMut::new(),
            upload_id: None,
            parts: Vec::new(),
            in_flight: None,
            size: 0,
            done: false,
        })
    }
}

/// A download's chunks, received from the S3 runtime.
pub struct ObjectChunks {
    rx: mpsc::Receiver<io::Result<Bytes>>,
}

impl Stream for ObjectChunks {
    type Item = io::Result<Bytes>;
    fn poll_next(mut self: Pin<&mut Self>, cx: &mut std::task::Context<'_>) -> std::task::Poll<Option<Self::Item>> {
        self.rx.poll_recv(cx)
    }
}

/// An object being written: bodies up to one part go up as one PutObject at the end; longer ones
/// as a multipart upload with parts sent as they fill (one in flight beside the one filling).
/// Dropped before [`S3Upload::finish`] succeeded, it aborts its multipart upload on the server.
pub struct S3Upload {
    worker: S3Worker,
    key: String,
    content_type: &'static str,
    /// 8 MiB, more for a known length of over 10,000 such parts.
    part_size: usize,
    buffer: BytesMut,
    upload_id: Option<String>,
    parts: Vec<Part>,
    in_flight: Option<JoinHandle<Result<Part, ActorError>>>,
    pub size: u64,
    done: bool,
}

impl S3Upload {
    /// Appends a chunk; each part buffer is allocated once at its full size and handed whole to
    /// the part upload (no copy, no growth by doubling).
    pub async fn write(&mut self, data: Bytes) -> Result<(), ActorError> {
        self.size += data.len() as u64;
        let mut rest = &data[..];
        while !rest.is_empty() {
            if self.buffer.capacity() == 0 {
                self.buffer = BytesMut::with_capacity(self.part_size);
            }
            let take = rest.len().min(self.part_size - self.buffer.len());
            self.buffer.extend_from_slice(&rest[..take]);
            rest = &rest[take..];
            if self.buffer.len() == self.part_size {
                let part = std::mem::take(&mut self.buffer).freeze();
                self.send_part(part).await?;
            }
        }
        Ok(())
    }

    /// Waits for the part in flight, then starts uploading `part` in the background.
    async fn send_part(&mut self, part: Bytes) -> Result<(), ActorError> {
        self.settle_in_flight().await?;
        if self.upload_id.is_none() {
            let key = self.key.clone();
            let content_type = self.content_type;
            let started = self
                .worker
                .run(move |inner| async move {
                    inner.write_bucket.initiate_multipart_upload(&key, content_type).await.map_err(classify)
                })
                .await?;
            self.upload_id = Some(started.upload_id);
        }
        let number = self.parts.len() as u32 + 1;
        if number > MAX_PARTS {
            return Err(ActorError::TooLarge);
        }
        let (key, upload_id) = (self.key.clone(), self.upload_id.clone().unwrap_or_default());
        let inner = self.worker.inner.clone();
        // The part buffer is retained by the task, so a failed attempt is simply sent again.
        self.in_flight = Some(
            self.worker
                .inner
                .runtime
                .spawn(async move { retried(|| upload_part(&inner, &key, &upload_id, number, part.clone())).await }),
        );
        Ok(())
    }

    async fn settle_in_flight(&mut self) -> Result<(), ActorError> {
        if let Some(task) = self.in_flight.take() {
            let part = task.await.map_err(|e| ActorError::Internal(format!("S3 task: {e}")))??;
            self.parts.push(part);
        }
        Ok(())
    }

    /// Sends what is left and makes the object visible; returns its size.
    pub async fn finish(mut self) -> Result<u64, ActorError> {
        if self.upload_id.is_none() && self.in_flight.is_none() {
            let body = self.buffer.split().freeze();
            let (key, content_type) = (self.key.clone(), self.content_type);
            self.worker
                .run(move |inner| async move {
                    retried(|| inner.write_bucket.put_object_with_content_type(&key, &body, content_type)).await
                })
                .await?;
        } else {
            if !self.buffer.is_empty() {
                let last = self.buffer.split().freeze();
                self.send_part(last).await?;
            }
            self.settle_in_flight().await?;
            let (key, upload_id, parts) =
                (self.key.clone(), self.upload_id.clone().unwrap_or_default(), std::mem::take(&mut self.parts));
            self.worker
                .run(move |inner| async move {
                    let data = s3::serde_types::CompleteMultipartUploadData { parts };
                    let command = s3::command::Command::CompleteMultipartUpload { upload_id: &upload_id, data };
                    let response = ReqwestRequest::new(&inner.bucket, &key, command)
                        .await
                        .map_err(classify)?
                        .response_data(false)
                        .await
                        .map_err(classify)?;
                    completion_outcome(response.status_code(), response.as_slice())
                })
                .await?;
            // Parts travel with unsigned payloads: the assembled object must hold every byte sent,
            // or it is deleted here (nothing references it yet) and the write fails.
            let key = self.key.clone();
            let stored = self
                .worker
                .run(move |inner| async move {
                    let (head, _) = retried(|| inner.bucket.head_object(&key)).await?;
                    Ok(head.content_length.unwrap_or(-1))
                })
                .await?;
            if u64::try_from(stored).ok() != Some(self.size) {
                let blob = self.key.trim_start_matches("/blobs/").to_string();
                self.worker.delete_later(&blob);
                self.done = true;
                return Err(ActorError::BackendUnavailable(format!(
                    "S3 assembled {stored} of {} bytes of a multipart upload",
                    self.size
                )));
            }
        }
        self.done = true;
        Ok(self.size)
    }
}

/// How long a part upload's presigned URL stays valid: one attempt, signed just before it is sent.
const PART_URL_EXPIRY_SECS: u32 = 3600;

/// Uploads one part through a presigned URL, so its payload is `UNSIGNED-PAYLOAD` (as AWS's own
/// SDKs send it): rust-s3's UploadPart computes a SHA-256 and an MD5 of every byte it sends and the
/// server verifies both, which made callfs uploads CPU-bound at a quarter of a direct client's
/// speed on a 2-core node. The transport (TLS in production) protects the bytes instead, and
/// [`S3Upload::finish`] checks the assembled object's size against the bytes sent.
async fn upload_part(inner: &Inner, key: &str, upload_id: &str, number: u32, part: Bytes) -> Result<Part, S3Error> {
    let queries = std::collections::HashMap::from([
        ("partNumber".to_string(), number.to_string()),
        ("uploadId".to_string(), upload_id.to_string()),
    ]);
    let url = inner.bucket.presign_put(key, PART_URL_EXPIRY_SECS, None, Some(queries)).await?;
    let response = inner.http.put(url).body(part).send().await?;
    let status = response.status().as_u16();
    if !response.status().is_success() {
        let body = response.text().await.unwrap_or_default();
        return Err(S3Error::HttpFailWithBody(status, body));
    }
    let etag = response.headers().get("etag").and_then(|v| v.to_str().ok()).unwrap_or_default().to_string();
    if etag.is_empty() {
        return Err(S3Error::HttpFailWithBody(status, "part upload answered without an ETag".into()));
    }
    Ok(Part { etag, part_number: number })
}

impl Drop for S3Upload {
    fn drop(&mut self) {
        if self.done {
            return;
        }
        if let Some(task) = self.in_flight.take() {
            task.abort();
        }
        if let Some(upload_id) = self.upload_id.take() {
            let inner = self.worker.inner.clone();
            let key = self.key.clone();
            self.worker.inner.runtime.spawn(async move {
                if retried(|| inner.bucket.abort_upload(&key, &upload_id)).await.is_err() {
                    log::warn!(key = key.as_str(); "could not abort an S3 multipart upload");
                }
            });
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_are_blob_ids_under_blobs() {
        let blob = crate::storage::localfs::new_blob_id();
        assert_eq!(object_key(&blob).unwrap(), format!("/blobs/{blob}"));
        assert!(object_key("../x").is_err());
    }

    #[test]
    fn sse_and_acl_headers_follow_the_settings() {
        let mut s = S3Settings { server_side_encryption: "AES256".into(), acl: "private".into(), ..Default::default() };
        assert_eq!(
            upload_headers(&s),
            vec![("x-amz-server-side-encryption", "AES256".into()), ("x-amz-acl", "private".into())]
        );
        s.server_side_encryption = "aws:kms".into();
        s.kms_key_id = "key-1".into();
        s.acl = String::new();
        assert_eq!(
            upload_headers(&s),
            vec![
                ("x-amz-server-side-encryption", "aws:kms".into()),
                ("x-amz-server-side-encryption-aws-kms-key-id", "key-1".into())
            ]
        );
        s.server_side_encryption = String::new();
        assert!(upload_headers(&s).is_empty());
    }

    #[test]
    fn content_types_by_extension() {
        assert_eq!(content_type_for("/a/b.JSON"), "application/json");
        assert_eq!(content_type_for("/a.d/b"), "application/octet-stream");
        assert_eq!(content_type_for("/x.tar.gz"), "application/octet-stream");
        assert_eq!(content_type_for("/notes.md"), "text/markdown");
    }

    #[test]
    fn part_sizes_keep_uploads_within_10000_parts() {
        const MIB: u64 = 1024 * 1024;
        assert_eq!(part_size_for(None), PART_SIZE, "unknown length: 8 MiB");
        assert_eq!(part_size_for(Some(0)), PART_SIZE);
        assert_eq!(part_size_for(Some(10 * 1024 * MIB)), PART_SIZE, "10 GiB fits in 1,280 parts of 8 MiB");
        // Exactly 10,000 parts of 8 MiB still use 8 MiB; one byte more needs 9 MiB parts.
        assert_eq!(part_size_for(Some(10_000 * 8 * MIB)), PART_SIZE);
        assert_eq!(part_size_for(Some(10_000 * 8 * MIB + 1)), 9 * MIB as usize);
        // 100 GiB: ceil(10.24 MiB) = 11 MiB; 5 TiB: 525 MiB (under S3's 5 GiB part limit).
        assert_eq!(part_size_for(Some(100 * 1024 * MIB)), 11 * MIB as usize);
        assert_eq!(part_size_for(Some(MAX_OBJECT)), 525 * MIB as usize);
        for len in [1, 8 * MIB, 80 * 1024 * MIB, 80 * 1024 * MIB + 12_345, 777 * 1024 * MIB + 1, MAX_OBJECT] {
            let part = part_size_for(Some(len)) as u64;
            assert!(len.div_ceil(part) <= u64::from(MAX_PARTS), "{len} bytes in parts of {part}");
            assert!(part.is_multiple_of(MIB) && (8 * MIB..=5 * 1024 * MIB).contains(&part), "{len}: {part}");
        }
    }

    #[test]
    fn multipart_completion_accepts_any_success_root_but_error() {
        let aws = br#"<?xml version="1.0" encoding="UTF-8"?>
<CompleteMultipartUploadResult xmlns="http://s3.amazonaws.com/doc/2006-03-01/"><ETag>"x-2"</ETag></CompleteMultipartUploadResult>"#;
        let moto = br#"<?xml version="1.0" encoding="utf-8"?>
<CompleteMultipartUploadResponse xmlns="http://s3.amazonaws.com/doc/2006-03-01/"><ETag>"x-2"</ETag></CompleteMultipartUploadResponse>"#;
        let error = br#"<?xml version="1.0" encoding="UTF-8"?>
<Error><Code>InternalError</Code><Message>We encountered an internal error.</Message></Error>"#;
        assert_eq!(completion_outcome(200, aws), Ok(()));
        assert_eq!(completion_outcome(200, moto), Ok(()));
        assert!(matches!(
            completion_outcome(200, error),
            Err(ActorError::BackendUnavailable(m)) if m.contains("InternalError")
        ));
    }

    #[test]
    fn failures_are_classified() {
        assert_eq!(classify(S3Error::HttpFailWithBody(404, String::new())), ActorError::NotFound);
        assert!(transient(&S3Error::HttpFailWithBody(503, String::new())));
        assert!(transient(&S3Error::HttpFailWithBody(400, "<Code>SlowDown</Code>".into())));
        assert!(!transient(&S3Error::HttpFailWithBody(403, String::new())));
        assert!(matches!(
            classify(S3Error::HttpFailWithBody(500, "<Error><Code>InternalError</Code></Error>".into())),
            ActorError::BackendUnavailable(m) if m.contains("InternalError")
        ));
    }
}
