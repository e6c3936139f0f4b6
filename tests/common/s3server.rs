//! The S3 server of tests/s3.rs: `s3s-fs` (installed by scripts/ensure-s3.sh) on a free loopback
//! port with a fresh bucket directory, or the external S3 named by `CALLFS_TEST_S3_ENDPOINT`,
//! `CALLFS_TEST_S3_BUCKET`, `CALLFS_TEST_S3_ACCESS_KEY` and `CALLFS_TEST_S3_SECRET_KEY`.

#![allow(dead_code)]

use std::fs;
use std::net::TcpStream;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::{json, Value};

use super::common::{free_port, random_hex, NodeOptions};

pub struct S3Server {
    child: Option<Child>,
    pub endpoint: String,
    pub bucket: String,
    pub access_key: String,
    pub secret_key: String,
    port: u16,
    /// The bucket folder of a local s3s-fs (None for an external S3).
    pub bucket_dir: Option<PathBuf>,
    dir: Option<tempfile::TempDir>,
}

fn s3s_fs_binary() -> PathBuf {
    if let Some(path) =
        std::env::var_os("PATH").iter().flat_map(std::env::split_paths).map(|d| d.join("s3s-fs")).find(|p| p.is_file())
    {
        return path;
    }
    let cargo_home = std::env::var_os("CARGO_HOME")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(std::env::var_os("HOME").unwrap_or_default()).join(".cargo"));
    let path = cargo_home.join("bin").join("s3s-fs");
    assert!(path.is_file(), "s3s-fs is not installed: run scripts/ensure-s3.sh (make test does)");
    path
}

impl S3Server {
    pub fn start() -> S3Server {
        if let Ok(endpoint) = std::env::var("CALLFS_TEST_S3_ENDPOINT") {
            let var = |k: &str| std::env::var(k).unwrap_or_default();
            return S3Server {
                child: None,
                endpoint,
                bucket: var("CALLFS_TEST_S3_BUCKET"),
                access_key: var("CALLFS_TEST_S3_ACCESS_KEY"),
                secret_key: var("CALLFS_TEST_S3_SECRET_KEY"),
                port: 0,
                bucket_dir: None,
                dir: None,
            };
        }
        let dir = tempfile::Builder::new().prefix("callfs-s3-").tempdir().expect("tempdir");
        let bucket = format!("callfs-{}", random_hex(4));
        let bucket_dir = dir.path().join("root").join(&bucket);
        fs::create_dir_all(&bucket_dir).expect("bucket folder");
        let port = free_port();
        let mut server = S3Server {
            child: None,
            endpoint: format!("http://127.0.0.1:{port}"),
            bucket,
            access_key: format!("AK{}", random_hex(8)),
            secret_key: random_hex(20),
            port,
            bucket_dir: Some(bucket_dir),
            dir: Some(dir),
        };
        server.spawn();
        server
    }

    fn spawn(&mut self) {
        let Some(dir) = &self.dir else { return };
        let log = fs::File::create(dir.path().join("s3s-fs.log")).expect("s3s-fs log");
        let child = Command::new(s3s_fs_binary())
            .arg("--host")
            .arg("127.0.0.1")
            .arg("--port")
            .arg(self.port.to_string())
            .arg("--access-key")
            .arg(&self.access_key)
            .arg("--secret-key")
            .arg(&self.secret_key)
            .arg(dir.path().join("root"))
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .expect("spawn s3s-fs");
        self.child = Some(child);
        let deadline = Instant::now() + Duration::from_secs(20);
        while TcpStream::connect(("127.0.0.1", self.port)).is_err() {
            assert!(Instant::now() < deadline, "s3s-fs did not listen on port {} within 20 s", self.port);
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// True when this is a local s3s-fs that the test may kill and restart.
    pub fn is_local(&self) -> bool {
        self.dir.is_some()
    }

    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(Child::id)
    }

    pub fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Starts the local server again on the same port and folder.
    pub fn restart(&mut self) {
        self.kill();
        self.spawn();
    }

    /// Blob ids stored in the bucket (local s3s-fs only: files under `<bucket>/blobs/`).
    pub fn objects(&self) -> Vec<String> {
        let Some(dir) = &self.bucket_dir else { return Vec::new() };
        let mut out: Vec<String> = fs::read_dir(dir.join("blobs"))
            .map(|rd| rd.flatten().map(|e| e.file_name().to_string_lossy().into_owned()).collect())
            .unwrap_or_default();
        out.retain(|name| name.len() == 32 && name.bytes().all(|b| b.is_ascii_hexdigit()));
        out.sort();
        out
    }

    /// The settings that store new files in this bucket.
    pub fn settings(&self) -> Vec<(String, Value)> {
        [
            ("backend.default_backend", json!("s3")),
            ("backend.s3_bucket_name", json!(self.bucket)),
            ("backend.s3_endpoint", json!(self.endpoint)),
            ("backend.s3_region", json!("us-east-1")),
            ("backend.s3_access_key", json!(self.access_key)),
            ("backend.s3_secret_key", json!(self.secret_key)),
        ]
        .into_iter()
        .map(|(k, v)| (k.to_string(), v))
        .collect()
    }

    /// Node options storing new files in this bucket.
    pub fn node_options(&self, opts: NodeOptions) -> NodeOptions {
        self.settings().into_iter().fold(opts, |opts, (k, v)| opts.set(&k, v))
    }
}

impl Drop for S3Server {
    fn drop(&mut self) {
        self.kill();
    }
}
