//! The three-node harness shared by tests/cluster.rs, tests/blobs.rs and tests/soak.rs: three
//! real `callfs` processes on 127.0.0.1 sharing ONE fresh PostgreSQL database
//! (`metadata_store.type: postgres`, `dlm.type: postgres`), each with its own localfs root and
//! the other two as `peer_endpoints`.
//!
//! Environment: `CALLFS_TEST_PG_DSN` (a PostgreSQL *server* DSN; every cluster creates its own
//! database there with `psql` and drops it afterwards). Unset → the cluster tests fail, unless
//! `CALLFS_TEST_SKIP_PG=1` (then `Cluster::start` answers `None` and they return early).
//! `scripts/with-postgres.sh cargo test --release --test cluster` provides a throw-away server.
//!
//! Each node: a YAML config, `callfs server --config FILE` with stdout and stderr in a log file,
//! `/health` polling, SIGKILL by pid on drop. Processes sit behind a mutex so that a node can be
//! killed or restarted while other threads send requests through `&Cluster`. A failed test prints
//! the last log lines of every node; `CALLFS_TEST_KEEP=1` also keeps its directories and database.

use std::fs::{self, OpenOptions};
use std::io::Read;
use std::path::{Path, PathBuf};
use std::process::Child;
use std::sync::{Mutex, MutexGuard};
use std::time::{Duration, Instant};

use serde_json::{json, Value};

use super::{
    callfs_cmd, dsn_with_db, free_port, hash_reader, is_json_content_type, parse_metrics, pg_server_dsn, psql,
    random_hex, sha256_hex, skip_postgres, to_yaml, GenReader, Resp, NO_AUTH,
};

pub const ALICE: &str = "alice-cluster-key-7d3f9a1c5e2b";
pub const BOB: &str = "bob-cluster-key-4a8c2e6f0b1d93";
pub const INTERNAL: &str = "cluster-internal-secret-9e1a7c3f";
pub const LINK: &str = "cluster-link-secret-2b6d0f4a8c1e";
pub const IDS: [&str; 3] = ["node-1", "node-2", "node-3"];

pub const CROSS: &str = "callfs_cross_server_operations_total";
pub const BACKEND: &str = "callfs_backend_ops_total";

// =============================================================================================
// Small utilities
// =============================================================================================

static SERIAL: Mutex<()> = Mutex::new(());

/// One cluster test at a time (a failed test must not poison the others): each starts three
/// nodes, and several measure timing or memory.
pub fn serial() -> MutexGuard<'static, ()> {
    SERIAL.lock().unwrap_or_else(|e| e.into_inner())
}

/// Peak resident set (`VmHWM`, KiB) of a process.
pub fn vm_hwm_kib(pid: u32) -> u64 {
    let status =
        fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_else(|e| panic!("read /proc/{pid}/status: {e}"));
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmHWM:"))
        .and_then(|v| v.split_whitespace().next())
        .and_then(|v| v.parse().ok())
        .unwrap_or_else(|| panic!("no VmHWM in /proc/{pid}/status"))
}

/// Poll `cond` every 100 ms until it holds (true) or `timeout` passes (false).
pub fn wait_until(timeout: Duration, mut cond: impl FnMut() -> bool) -> bool {
    let deadline = Instant::now() + timeout;
    loop {
        if cond() {
            return true;
        }
        if Instant::now() > deadline {
            return false;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// The PostgreSQL server DSN, `None` when the PostgreSQL tests are explicitly skipped.
fn cluster_server_dsn() -> Option<String> {
    if skip_postgres() {
        return None;
    }
    if std::env::var("CALLFS_TEST_PG_DSN").map(|v| v.trim().is_empty()).unwrap_or(true) {
        panic!(
            "CALLFS_TEST_PG_DSN is not set: the cluster tests need a PostgreSQL server DSN, e.g. \
             CALLFS_TEST_PG_DSN=postgres://postgres@127.0.0.1:5432/postgres, or run them through \
             `scripts/with-postgres.sh cargo test --release --test cluster` (CALLFS_TEST_SKIP_PG=1 skips them)"
        );
    }
    Some(pg_server_dsn())
}

// =============================================================================================
// HTTP
// =============================================================================================

pub fn agent() -> ureq::Agent {
    ureq::AgentBuilder::new()
        .timeout_connect(Duration::from_secs(5))
        .timeout_read(Duration::from_secs(120))
        .timeout_write(Duration::from_secs(120))
        .redirects(0)
        .max_idle_connections(0)
        .build()
}

pub enum Body<'a> {
    None,
    Bytes(&'a [u8]),
    /// Streamed with an explicit `Content-Length`.
    Stream(u64, Box<dyn Read + 'a>),
}

/// One request; any status (also ≥ 400) is `Ok`, only transport failures are `Err`.
pub fn send(
    agent: &ureq::Agent,
    method: &str,
    url: &str,
    key: &str,
    headers: &[(&str, &str)],
    body: Body,
) -> Result<ureq::Response, String> {
    let mut req = agent.request(method, url);
    if !key.is_empty() {
        req = req.set("Authorization", &format!("Bearer {key}"));
    }
    for (k, v) in headers {
        req = req.set(k, v);
    }
    let result = match body {
        Body::None => req.call(),
        Body::Bytes(b) => req.send_bytes(b),
        Body::Stream(len, r) => req.set("Content-Length", &len.to_string()).send(r),
    };
    match result {
        Ok(r) => Ok(r),
        Err(ureq::Error::Status(_, r)) => Ok(r),
        Err(e) => Err(format!("{method} {url}: transport error: {e}")),
    }
}

pub fn response_headers(r: &ureq::Response) -> Vec<(String, String)> {
    let mut headers = Vec::new();
    for name in r.headers_names() {
        for v in r.all(&name) {
            headers.push((name.to_ascii_lowercase(), v.to_string()));
        }
    }
    headers
}

/// The whole response; a body cut short is an `Err` (a truncated body must never pass for a
/// complete one).
pub fn try_collect(r: ureq::Response) -> Result<Resp, String> {
    let status = r.status();
    let headers = response_headers(&r);
    let mut body = Vec::new();
    r.into_reader().read_to_end(&mut body).map_err(|e| format!("reading the body (status {status}): {e}"))?;
    Ok(Resp { status, headers, body })
}

pub fn collect(r: ureq::Response) -> Resp {
    let status = r.status();
    let headers = response_headers(&r);
    let mut body = Vec::new();
    let _ = r.into_reader().read_to_end(&mut body);
    Resp { status, headers, body }
}

// =============================================================================================
// Metrics
// =============================================================================================

/// Sum of the samples named `name` whose labels include all of `labels`; `None` when there is none.
pub fn metric_opt(text: &str, name: &str, labels: &[(&str, &str)]) -> Option<f64> {
    parse_metrics(text)
        .into_iter()
        .filter(|(n, l, _)| n == name && labels.iter().all(|(k, v)| l.get(*k).map(|x| x == v).unwrap_or(false)))
        .map(|(_, _, v)| v)
        .reduce(|a, b| a + b)
}

pub fn metric(text: &str, name: &str, labels: &[(&str, &str)]) -> f64 {
    metric_opt(text, name, labels).unwrap_or(0.0)
}

#[track_caller]
pub fn assert_delta(before: &str, after: &str, name: &str, labels: &[(&str, &str)], expected: f64, ctx: &str) {
    let d = metric(after, name, labels) - metric(before, name, labels);
    assert!((d - expected).abs() < 1e-9, "{ctx}: {name}{labels:?} should rise by exactly {expected}, rose by {d}");
}

#[track_caller]
pub fn assert_delta_at_least(before: &str, after: &str, name: &str, labels: &[(&str, &str)], min: f64, ctx: &str) {
    let d = metric(after, name, labels) - metric(before, name, labels);
    assert!(d >= min, "{ctx}: {name}{labels:?} should rise by at least {min}, rose by {d}");
}

// =============================================================================================
// Assertions
// =============================================================================================

#[track_caller]
pub fn assert_status(resp: &Resp, status: u16, ctx: &str) {
    assert_eq!(resp.status, status, "{ctx}: expected {status}, got {}", resp.describe());
}

#[track_caller]
pub fn assert_body(resp: &Resp, expected: &[u8], ctx: &str) {
    assert_status(resp, 200, ctx);
    assert_eq!(
        sha256_hex(&resp.body),
        sha256_hex(expected),
        "{ctx}: body differs (got {} bytes, expected {})",
        resp.body.len(),
        expected.len()
    );
}

/// The `code` of a JSON error body ("" when there is none).
pub fn error_code(resp: &Resp) -> String {
    if !is_json_content_type(resp) {
        return String::new();
    }
    serde_json::from_slice::<Value>(&resp.body)
        .ok()
        .and_then(|v| v["code"].as_str().map(str::to_string))
        .unwrap_or_default()
}

pub fn listing_names(v: &Value) -> Vec<String> {
    v["items"]
        .as_array()
        .unwrap_or_else(|| panic!("listing without items array: {v}"))
        .iter()
        .map(|i| i["name"].as_str().unwrap_or("").to_string())
        .collect()
}

// =============================================================================================
// Nodes and the cluster
// =============================================================================================

pub fn node_config(dir: &Path, i: usize, ports: &[u16; 3], metadata: Value) -> Value {
    let mut peers = serde_json::Map::new();
    for j in 0..3 {
        if j != i {
            peers.insert(IDS[j].to_string(), json!(format!("http://127.0.0.1:{}", ports[j])));
        }
    }
    json!({
        "server": {
            "listen_addr": format!("127.0.0.1:{}", ports[i]),
            "protocol": "http",
            "external_url": format!("http://127.0.0.1:{}", ports[i]),
        },
        "auth": {
            "api_key_users": {"alice": ALICE, "bob": BOB},
            "internal_proxy_secret": INTERNAL,
            "single_use_link_secret": LINK,
        },
        "backend": {
            "default_backend": "localfs",
            "localfs_root_path": dir.join(IDS[i]).join("data").to_string_lossy(),
            "localfs_fsync": false,
        },
        "metadata_store": metadata,
        "dlm": {"type": "postgres"},
        "log": {"level": "info", "format": "json"},
        "instance_discovery": {
            "instance_id": IDS[i],
            "health_probe_interval": "1s",
            "peer_endpoints": Value::Object(peers),
        },
    })
}

pub struct NodeProc {
    pub id: &'static str,
    pub port: u16,
    pub config_path: PathBuf,
    pub log_path: PathBuf,
    pub data_root: PathBuf,
    child: Mutex<Option<Child>>,
}

impl NodeProc {
    fn child(&self) -> MutexGuard<'_, Option<Child>> {
        self.child.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Start the process (a running one is killed first).
    pub fn spawn(&self) {
        self.kill9();
        let log = OpenOptions::new().create(true).append(true).open(&self.log_path).expect("open node log");
        let out = log.try_clone().expect("clone log handle");
        let child = callfs_cmd()
            .arg("server")
            .arg("--config")
            .arg(&self.config_path)
            .current_dir(self.config_path.parent().unwrap())
            .stdout(out)
            .stderr(log)
            .spawn()
            .expect("spawn callfs");
        *self.child() = Some(child);
    }

    pub fn wait_healthy(&self, agent: &ureq::Agent) {
        let deadline = Instant::now() + Duration::from_secs(30);
        let url = format!("http://127.0.0.1:{}/health", self.port);
        loop {
            if let Some(child) = self.child().as_mut() {
                if let Ok(Some(status)) = child.try_wait() {
                    panic!("{} exited during start-up ({status}); log:\n{}", self.id, self.log_text());
                }
            }
            if let Ok(r) = send(agent, "GET", &url, NO_AUTH, &[], Body::None) {
                if r.status() == 200 {
                    return;
                }
            }
            if Instant::now() > deadline {
                panic!("{} did not answer /health within 30 s; log:\n{}", self.id, self.log_text());
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// SIGKILL by pid, then reap.
    pub fn kill9(&self) {
        if let Some(mut child) = self.child().take() {
            // SAFETY: plain kill(2) on the pid of a child we spawned and have not reaped yet.
            unsafe {
                libc::kill(child.id() as libc::pid_t, libc::SIGKILL);
            }
            let _ = child.wait();
        }
    }

    pub fn is_running(&self) -> bool {
        self.child().as_mut().map(|c| matches!(c.try_wait(), Ok(None))).unwrap_or(false)
    }

    pub fn pid(&self) -> u32 {
        self.child().as_ref().map(|c| c.id()).unwrap_or_else(|| panic!("{} is not running", self.id))
    }

    pub fn log_text(&self) -> String {
        fs::read(&self.log_path).map(|b| String::from_utf8_lossy(&b).into_owned()).unwrap_or_default()
    }

    pub fn log_lines(&self) -> Vec<Value> {
        self.log_text()
            .lines()
            .filter_map(|l| serde_json::from_str::<Value>(l).ok())
            .filter(|v| v.is_object())
            .collect()
    }
}

pub struct Cluster {
    pub nodes: Vec<NodeProc>,
    pub agent: ureq::Agent,
    pub server_dsn: String,
    pub db_name: String,
    /// DSN of this cluster's database.
    pub dsn: String,
    // Last: removed after the nodes are killed.
    pub dir: tempfile::TempDir,
}

impl Cluster {
    /// Three nodes on a fresh database; `None` when PostgreSQL tests are skipped.
    pub fn start() -> Option<Cluster> {
        Cluster::start_with(|_, _| {})
    }

    /// Like `start`, with `tweak(node index, config)` applied to each node's configuration.
    pub fn start_with(tweak: impl Fn(usize, &mut Value)) -> Option<Cluster> {
        let server_dsn = cluster_server_dsn()?;
        let db_name = format!("callfs_cluster_{}", random_hex(8));
        psql(&server_dsn, &format!("CREATE DATABASE {db_name}"))
            .unwrap_or_else(|e| panic!("creating database {db_name}: {e}"));
        let dsn = dsn_with_db(&server_dsn, &db_name);
        let dir = tempfile::Builder::new().prefix("callfs-cluster-").tempdir().expect("tempdir");
        let ports = [free_port(), free_port(), free_port()];
        let mut nodes = Vec::new();
        for (i, id) in IDS.iter().enumerate() {
            let node_dir = dir.path().join(id);
            fs::create_dir_all(&node_dir).expect("node dir");
            let mut config = node_config(dir.path(), i, &ports, json!({"type": "postgres", "dsn": dsn}));
            tweak(i, &mut config);
            let config_path = node_dir.join("config.yaml");
            fs::write(&config_path, to_yaml(&config)).expect("write config");
            nodes.push(NodeProc {
                id,
                port: ports[i],
                config_path,
                log_path: node_dir.join("callfs.log"),
                data_root: node_dir.join("data"),
                child: Mutex::new(None),
            });
        }
        let cluster = Cluster { nodes, agent: agent(), server_dsn, db_name, dsn, dir };
        // Started together: migrations must tolerate that (advisory lock, storage.md §1).
        for n in &cluster.nodes {
            n.spawn();
        }
        for n in &cluster.nodes {
            n.wait_healthy(&cluster.agent);
        }
        Some(cluster)
    }

    pub fn url(&self, i: usize, path: &str) -> String {
        format!("http://127.0.0.1:{}{}", self.nodes[i].port, path)
    }

    pub fn try_call(
        &self,
        i: usize,
        method: &str,
        path: &str,
        key: &str,
        headers: &[(&str, &str)],
        body: Option<&[u8]>,
    ) -> Result<Resp, String> {
        let body = body.map(Body::Bytes).unwrap_or(Body::None);
        send(&self.agent, method, &self.url(i, path), key, headers, body).map(collect)
    }

    /// Like `try_call`, but a body cut short is a transport error too.
    pub fn try_call_whole(
        &self,
        i: usize,
        method: &str,
        path: &str,
        key: &str,
        headers: &[(&str, &str)],
        body: Option<&[u8]>,
    ) -> Result<Resp, String> {
        let body = body.map(Body::Bytes).unwrap_or(Body::None);
        send(&self.agent, method, &self.url(i, path), key, headers, body).and_then(try_collect)
    }

    pub fn call(
        &self,
        i: usize,
        method: &str,
        path: &str,
        key: &str,
        headers: &[(&str, &str)],
        body: Option<&[u8]>,
    ) -> Resp {
        self.try_call(i, method, path, key, headers, body)
            .unwrap_or_else(|e| panic!("{} (via {}): {e}", path, self.nodes[i].id))
    }

    pub fn get(&self, i: usize, path: &str, key: &str) -> Resp {
        self.call(i, "GET", path, key, &[], None)
    }
    pub fn head(&self, i: usize, path: &str, key: &str) -> Resp {
        self.call(i, "HEAD", path, key, &[], None)
    }
    pub fn delete(&self, i: usize, path: &str, key: &str) -> Resp {
        self.call(i, "DELETE", path, key, &[], None)
    }
    pub fn post(&self, i: usize, path: &str, key: &str, body: &[u8]) -> Resp {
        self.call(i, "POST", path, key, &[], Some(body))
    }
    pub fn put(&self, i: usize, path: &str, key: &str, body: &[u8]) -> Resp {
        self.call(i, "PUT", path, key, &[], Some(body))
    }
    pub fn patch(&self, i: usize, path: &str, key: &str, v: &Value) -> Resp {
        self.try_patch(i, path, key, v).unwrap_or_else(|e| panic!("{} (via {}): {e}", path, self.nodes[i].id))
    }
    pub fn try_patch(&self, i: usize, path: &str, key: &str, v: &Value) -> Result<Resp, String> {
        let body = v.to_string();
        self.try_call(i, "PATCH", path, key, &[("Content-Type", "application/json")], Some(body.as_bytes()))
    }

    /// POST/PUT `len` pseudo-random bytes (seed) streamed with a `Content-Length`.
    pub fn upload_stream(&self, i: usize, method: &str, path: &str, key: &str, len: u64, seed: u64) -> Resp {
        let body = Body::Stream(len, Box::new(GenReader::new(seed, len)));
        send(&self.agent, method, &self.url(i, path), key, &[], body).map(collect).unwrap_or_else(|e| panic!("{e}"))
    }

    /// GET hashing the body while it streams: (headers-only response, sha256, length).
    pub fn get_hashed(&self, i: usize, path: &str, key: &str) -> (Resp, String, u64) {
        let r = send(&self.agent, "GET", &self.url(i, path), key, &[], Body::None).unwrap_or_else(|e| panic!("{e}"));
        let status = r.status();
        let headers = response_headers(&r);
        let (sha, n) = hash_reader(r.into_reader()).expect("read body");
        (Resp { status, headers, body: Vec::new() }, sha, n)
    }

    pub fn metrics(&self, i: usize) -> String {
        let r = self.get(i, "/metrics", NO_AUTH);
        assert_status(&r, 200, &format!("GET /metrics on {}", self.nodes[i].id));
        r.text()
    }

    pub fn list(&self, i: usize, path: &str, key: &str) -> Value {
        let r = self.get(i, &format!("/v1/directories{path}"), key);
        assert_status(&r, 200, &format!("listing {path} via {}", self.nodes[i].id));
        r.json()
    }

    /// The first request log line (`msg: HTTP request`) with this request id, polled up to 5 s.
    pub fn request_log(&self, i: usize, request_id: &str) -> Option<Value> {
        let mut found = None;
        wait_until(Duration::from_secs(5), || {
            found = self.nodes[i]
                .log_lines()
                .into_iter()
                .find(|v| v["msg"] == json!("HTTP request") && v["request_id"] == json!(request_id));
            found.is_some()
        });
        found
    }

    pub fn peer_up(&self, i: usize, peer: &str) -> Option<f64> {
        metric_opt(&self.metrics(i), "callfs_peer_up", &[("peer", peer)])
    }

    pub fn wait_peer_up(&self, i: usize, peer: &str, want: f64, timeout: Duration) -> bool {
        wait_until(timeout, || self.peer_up(i, peer) == Some(want))
    }

    /// SIGKILL node `i` (by pid) and reap it.
    pub fn kill9(&self, i: usize) {
        self.nodes[i].kill9();
    }

    /// Kill node `i` if it runs, start it again on the same data and wait for `/health`.
    pub fn restart(&self, i: usize) {
        self.nodes[i].spawn();
        self.nodes[i].wait_healthy(&self.agent);
    }

    /// The blob file on node `i` holding exactly `content`, if any (bytes live in blobs named by
    /// id, never at their path).
    pub fn blob_with(&self, i: usize, content: &[u8]) -> Option<PathBuf> {
        super::blob_with(&self.nodes[i].data_root, content)
    }

    /// Every blob file under node `i`'s `<root>/blobs/`.
    pub fn blob_files(&self, i: usize) -> Vec<PathBuf> {
        super::blob_files(&self.nodes[i].data_root)
    }

    /// Every file under node `i`'s `<root>/tmp/` (uploads in progress or left behind).
    pub fn tmp_files(&self, i: usize) -> Vec<PathBuf> {
        let mut out: Vec<PathBuf> = fs::read_dir(self.nodes[i].data_root.join("tmp"))
            .into_iter()
            .flatten()
            .flatten()
            .map(|e| e.path())
            .collect();
        out.sort();
        out
    }

    /// `callfs fsck --config <node i's config>`: (exit code, stdout + stderr).
    pub fn fsck(&self, i: usize) -> (i32, String) {
        let out = callfs_cmd()
            .arg("fsck")
            .arg("--config")
            .arg(&self.nodes[i].config_path)
            .current_dir(self.nodes[i].config_path.parent().unwrap())
            .output()
            .expect("run callfs fsck");
        let text = format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
        (out.status.code().unwrap_or(-1), text)
    }

    /// Every `error` log line of every node, as `node: msg (path): error`.
    pub fn error_lines(&self) -> Vec<String> {
        let mut out = Vec::new();
        for n in &self.nodes {
            for v in n.log_lines().into_iter().filter(|v| v["level"] == json!("error")) {
                let s = |k: &str| v[k].as_str().unwrap_or("").to_string();
                out.push(format!("{}: {} {} {}: {}", n.id, s("msg"), s("method"), s("path"), s("error")));
            }
        }
        out
    }

    /// Run one statement on this cluster's database.
    pub fn sql(&self, sql: &str) -> String {
        psql(&self.dsn, sql).unwrap_or_else(|e| panic!("{e}"))
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        for n in &self.nodes {
            n.kill9();
        }
        if std::thread::panicking() {
            for n in &self.nodes {
                let log = n.log_text();
                let tail: Vec<&str> = log.lines().rev().take(40).collect();
                eprintln!("---- last log lines of {} (newest first) ----", n.id);
                for l in tail {
                    eprintln!("{l}");
                }
            }
            eprintln!("(node directories: {})", self.dir.path().display());
            // CALLFS_TEST_KEEP=1: keep the node directories (logs, roots) and the database.
            if std::env::var("CALLFS_TEST_KEEP").as_deref() == Ok("1") {
                self.dir.disable_cleanup(true);
                eprintln!("(kept, with database {} at {})", self.db_name, self.server_dsn);
                return;
            }
        }
        let _ = psql(&self.server_dsn, &format!("DROP DATABASE IF EXISTS {} WITH (FORCE)", self.db_name));
    }
}

/// SHA-256 of `len` pseudo-random bytes of `seed` (what `upload_stream` sends), streamed.
pub fn stream_sha(seed: u64, len: u64) -> String {
    hash_reader(GenReader::new(seed, len)).expect("hash generated bytes").0
}
