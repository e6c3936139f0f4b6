//! Cluster black-box tests: three real `callfs` nodes on 127.0.0.1 sharing ONE fresh PostgreSQL
//! database (`metadata_store.type: postgres`, `dlm.type: postgres`), each with its own localfs root
//! and the other two as `peer_endpoints`. Checked against the specification: cluster.md (all),
//! api.md §8 and the §15 "Cluster" and PATCH rows, security.md §4, observability.md §1 and §5.
//!
//! Environment:
//! * `CALLFS_TEST_PG_DSN` — PostgreSQL *server* DSN (e.g. `postgres://postgres@127.0.0.1:5432/postgres`);
//!   every test creates its own database there with `psql` and drops it afterwards.
//!   Unset → the PostgreSQL tests fail, unless `CALLFS_TEST_SKIP_PG=1` (then they return early).
//!   `scripts/with-postgres.sh cargo test --release --test cluster` provides a throw-away server.
//! * `promtool` on PATH (scripts/ensure-deps.sh installs it).
//!
//! The harness is self-contained (tests/common is not used): free ports, a YAML config per node,
//! `callfs server --config FILE` with stderr in a log file, `/health` polling, SIGKILL by pid on
//! drop. The cluster tests run one at a time (a process-wide mutex): each starts three nodes,
//! and several measure timing (peer probes, 502 deadlines) or memory.

use std::collections::{BTreeMap, BTreeSet};
use std::fs::{self, OpenOptions};
use std::io::Read;
use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Barrier, Mutex, MutexGuard};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use serde_json::{json, Value};
use sha2::{Digest, Sha256};

const ALICE: &str = "alice-cluster-key-7d3f9a1c5e2b";
const BOB: &str = "bob-cluster-key-4a8c2e6f0b1d93";
const INTERNAL: &str = "cluster-internal-secret-9e1a7c3f";
const LINK: &str = "cluster-link-secret-2b6d0f4a8c1e";
const NO_AUTH: &str = "";
const IDS: [&str; 3] = ["node-1", "node-2", "node-3"];
const KIB: usize = 1024;
const MIB: usize = 1024 * 1024;

// =============================================================================================
// Small utilities
// =============================================================================================

static SERIAL: Mutex<()> = Mutex::new(());

/// One cluster test at a time (a failed test must not poison the others).
fn serial() -> MutexGuard<'static, ()> {
    SERIAL.lock().unwrap_or_else(|e| e.into_inner())
}

static COUNTER: AtomicU64 = AtomicU64::new(1);

/// splitmix64.
struct Prng(u64);

impl Prng {
    fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }
}

fn fresh_seed() -> u64 {
    let nanos = SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_nanos() as u64).unwrap_or(0);
    nanos
        ^ ((std::process::id() as u64) << 32)
        ^ COUNTER.fetch_add(1, Ordering::Relaxed).wrapping_mul(0xD6E8_FEB8_6659_FD93)
}

fn random_hex(bytes: usize) -> String {
    let mut rng = Prng(fresh_seed());
    (0..bytes).map(|_| format!("{:02x}", rng.next_u64() as u8)).collect()
}

fn random_bytes(n: usize, seed: u64) -> Vec<u8> {
    let mut rng = Prng(seed);
    let mut v = vec![0u8; n];
    for chunk in v.chunks_mut(8) {
        let x = rng.next_u64().to_le_bytes();
        chunk.copy_from_slice(&x[..chunk.len()]);
    }
    v
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

fn sha256_hex(data: &[u8]) -> String {
    hex(&Sha256::digest(data))
}

/// A pseudo-random `Read` of exactly `len` bytes (the same bytes as `random_bytes(len, seed)`).
struct GenReader {
    rng: Prng,
    remaining: u64,
    buf: [u8; 8],
    pos: usize,
}

impl GenReader {
    fn new(seed: u64, len: u64) -> GenReader {
        GenReader { rng: Prng(seed), remaining: len, buf: [0; 8], pos: 8 }
    }
}

impl Read for GenReader {
    fn read(&mut self, out: &mut [u8]) -> std::io::Result<usize> {
        let n = (out.len() as u64).min(self.remaining) as usize;
        for b in out.iter_mut().take(n) {
            if self.pos == 8 {
                self.buf = self.rng.next_u64().to_le_bytes();
                self.pos = 0;
            }
            *b = self.buf[self.pos];
            self.pos += 1;
        }
        self.remaining -= n as u64;
        Ok(n)
    }
}

/// SHA-256 and length of everything `r` yields, streamed.
fn hash_reader(mut r: impl Read) -> std::io::Result<(String, u64)> {
    let mut h = Sha256::new();
    let mut buf = vec![0u8; 256 * KIB];
    let mut total = 0u64;
    loop {
        let n = r.read(&mut buf)?;
        if n == 0 {
            break;
        }
        h.update(&buf[..n]);
        total += n as u64;
    }
    Ok((hex(&h.finalize()), total))
}

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0").and_then(|l| l.local_addr()).map(|a| a.port()).expect("bind 127.0.0.1:0")
}

/// Peak resident set (`VmHWM`, KiB) of a process.
fn vm_hwm_kib(pid: u32) -> u64 {
    let status =
        fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_else(|e| panic!("read /proc/{pid}/status: {e}"));
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmHWM:"))
        .and_then(|v| v.split_whitespace().next())
        .and_then(|v| v.parse().ok())
        .unwrap_or_else(|| panic!("no VmHWM in /proc/{pid}/status"))
}

fn wait_until(timeout: Duration, mut cond: impl FnMut() -> bool) -> bool {
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

// =============================================================================================
// PostgreSQL
// =============================================================================================

/// The server DSN, `None` when the PostgreSQL tests are explicitly skipped; panics when unset.
fn pg_server_dsn() -> Option<String> {
    match std::env::var("CALLFS_TEST_PG_DSN") {
        Ok(v) if !v.trim().is_empty() => Some(v.trim().to_string()),
        _ if std::env::var("CALLFS_TEST_SKIP_PG").as_deref() == Ok("1") => {
            eprintln!("SKIPPED: CALLFS_TEST_PG_DSN is unset and CALLFS_TEST_SKIP_PG=1");
            None
        }
        _ => panic!(
            "CALLFS_TEST_PG_DSN is not set: the cluster tests need a PostgreSQL server DSN, e.g. \
             CALLFS_TEST_PG_DSN=postgres://postgres@127.0.0.1:5432/postgres, or run them through \
             `scripts/with-postgres.sh cargo test --release --test cluster` (CALLFS_TEST_SKIP_PG=1 skips them)"
        ),
    }
}

/// Replace the database name of a `postgres://user@host:port/db?query` DSN.
fn dsn_with_db(dsn: &str, db: &str) -> String {
    let scheme_end = dsn.find("://").map(|i| i + 3).unwrap_or(0);
    let rest = &dsn[scheme_end..];
    let (rest, query) = match rest.find('?') {
        Some(i) => (&rest[..i], &rest[i..]),
        None => (rest, ""),
    };
    let authority = rest.split('/').next().unwrap_or(rest);
    format!("{}{}/{}{}", &dsn[..scheme_end], authority, db, query)
}

/// Run one statement with psql; the unaligned, tuples-only output.
fn psql(dsn: &str, sql: &str) -> Result<String, String> {
    let out = Command::new("psql")
        .arg(dsn)
        .args(["-X", "-q", "-A", "-t", "-v", "ON_ERROR_STOP=1", "-c", sql])
        .stdin(Stdio::null())
        .output()
        .map_err(|e| format!("cannot run psql ({e}); run scripts/ensure-deps.sh"))?;
    if out.status.success() {
        Ok(String::from_utf8_lossy(&out.stdout).trim().to_string())
    } else {
        Err(format!("psql {sql:?} failed ({}): {}", out.status, String::from_utf8_lossy(&out.stderr).trim()))
    }
}

// =============================================================================================
// HTTP
// =============================================================================================

#[derive(Debug, Clone)]
struct Resp {
    status: u16,
    /// Lower-cased names, received order.
    headers: Vec<(String, String)>,
    body: Vec<u8>,
}

impl Resp {
    fn header(&self, name: &str) -> Option<&str> {
        let name = name.to_ascii_lowercase();
        self.headers.iter().find(|(k, _)| *k == name).map(|(_, v)| v.as_str())
    }
    fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }
    fn json(&self) -> Value {
        serde_json::from_slice(&self.body).unwrap_or_else(|e| panic!("body is not JSON ({e}): {}", self.describe()))
    }
    fn describe(&self) -> String {
        let mut b = self.text();
        if b.len() > 400 {
            b.truncate(400);
            b.push('…');
        }
        format!("status {} body {:?}", self.status, b)
    }
}

fn agent() -> ureq::Agent {
    ureq::AgentBuilder::new()
        .timeout_connect(Duration::from_secs(5))
        .timeout_read(Duration::from_secs(120))
        .timeout_write(Duration::from_secs(120))
        .redirects(0)
        .max_idle_connections(0)
        .build()
}

enum Body<'a> {
    None,
    Bytes(&'a [u8]),
    /// Streamed with an explicit `Content-Length`.
    Stream(u64, Box<dyn Read + 'a>),
}

/// One request; any status (also ≥ 400) is `Ok`, only transport failures are `Err`.
fn send(
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

fn response_headers(r: &ureq::Response) -> Vec<(String, String)> {
    let mut headers = Vec::new();
    for name in r.headers_names() {
        for v in r.all(&name) {
            headers.push((name.to_ascii_lowercase(), v.to_string()));
        }
    }
    headers
}

fn collect(r: ureq::Response) -> Resp {
    let status = r.status();
    let headers = response_headers(&r);
    let mut body = Vec::new();
    let _ = r.into_reader().read_to_end(&mut body);
    Resp { status, headers, body }
}

// =============================================================================================
// Metrics and logs
// =============================================================================================

/// Sum of the samples named `name` whose labels include all of `labels`; `None` when there is none.
fn metric_opt(text: &str, name: &str, labels: &[(&str, &str)]) -> Option<f64> {
    let mut found = None;
    for line in text.lines() {
        let line = line.trim();
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        let name_end = line.find(['{', ' ']).unwrap_or(line.len());
        if &line[..name_end] != name {
            continue;
        }
        let mut rest = &line[name_end..];
        let mut got: BTreeMap<String, String> = BTreeMap::new();
        if let Some(stripped) = rest.strip_prefix('{') {
            let Some(close) = stripped.find('}') else {
                continue;
            };
            for pair in split_labels(&stripped[..close]) {
                if let Some((k, v)) = pair.split_once('=') {
                    got.insert(
                        k.trim().to_string(),
                        v.trim().trim_matches('"').replace("\\\"", "\"").replace("\\\\", "\\"),
                    );
                }
            }
            rest = &stripped[close + 1..];
        }
        if !labels.iter().all(|(k, v)| got.get(*k).map(|x| x == v).unwrap_or(false)) {
            continue;
        }
        if let Some(v) = rest.split_whitespace().next().and_then(|v| v.parse::<f64>().ok()) {
            found = Some(found.unwrap_or(0.0) + v);
        }
    }
    found
}

/// Split `a="x",b="y,z"` on the commas outside quotes.
fn split_labels(s: &str) -> Vec<String> {
    let mut out = Vec::new();
    let mut cur = String::new();
    let (mut quoted, mut escaped) = (false, false);
    for c in s.chars() {
        match c {
            _ if escaped => {
                cur.push(c);
                escaped = false;
            }
            '\\' => {
                cur.push(c);
                escaped = true;
            }
            '"' => {
                cur.push(c);
                quoted = !quoted;
            }
            ',' if !quoted => out.push(std::mem::take(&mut cur)),
            _ => cur.push(c),
        }
    }
    if !cur.trim().is_empty() {
        out.push(cur);
    }
    out
}

fn metric(text: &str, name: &str, labels: &[(&str, &str)]) -> f64 {
    metric_opt(text, name, labels).unwrap_or(0.0)
}

#[track_caller]
fn assert_delta(before: &str, after: &str, name: &str, labels: &[(&str, &str)], expected: f64, ctx: &str) {
    let d = metric(after, name, labels) - metric(before, name, labels);
    assert!((d - expected).abs() < 1e-9, "{ctx}: {name}{labels:?} should rise by exactly {expected}, rose by {d}");
}

#[track_caller]
fn assert_delta_at_least(before: &str, after: &str, name: &str, labels: &[(&str, &str)], min: f64, ctx: &str) {
    let d = metric(after, name, labels) - metric(before, name, labels);
    assert!(d >= min, "{ctx}: {name}{labels:?} should rise by at least {min}, rose by {d}");
}

const CROSS: &str = "callfs_cross_server_operations_total";
const BACKEND: &str = "callfs_backend_ops_total";

// =============================================================================================
// Assertions
// =============================================================================================

fn is_json(resp: &Resp) -> bool {
    resp.header("content-type")
        .map(|v| v.split(';').next().unwrap_or("").trim().eq_ignore_ascii_case("application/json"))
        .unwrap_or(false)
}

#[track_caller]
fn assert_status(resp: &Resp, status: u16, ctx: &str) {
    assert_eq!(resp.status, status, "{ctx}: expected {status}, got {}", resp.describe());
}

/// api.md §6: status, JSON content type, body with exactly `code` and `message`.
#[track_caller]
fn assert_error(resp: &Resp, status: u16, code: &str, ctx: &str) {
    assert_status(resp, status, ctx);
    assert!(is_json(resp), "{ctx}: error Content-Type must be application/json, got {:?}", resp.header("content-type"));
    let v = resp.json();
    let obj = v.as_object().unwrap_or_else(|| panic!("{ctx}: error body is not an object: {v}"));
    let keys: BTreeSet<&str> = obj.keys().map(|k| k.as_str()).collect();
    assert_eq!(keys, BTreeSet::from(["code", "message"]), "{ctx}: error body must have exactly code and message: {v}");
    assert_eq!(obj["code"], json!(code), "{ctx}: {v}");
    assert!(
        obj["message"].as_str().map(|m| !m.is_empty()).unwrap_or(false),
        "{ctx}: message must be a non-empty string: {v}"
    );
}

#[track_caller]
fn assert_body(resp: &Resp, expected: &[u8], ctx: &str) {
    assert_status(resp, 200, ctx);
    assert_eq!(
        sha256_hex(&resp.body),
        sha256_hex(expected),
        "{ctx}: body differs (got {} bytes, expected {})",
        resp.body.len(),
        expected.len()
    );
}

fn listing_names(v: &Value) -> Vec<String> {
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

/// Render a JSON tree as block YAML (scalars/arrays as JSON flow values, which YAML accepts).
fn to_yaml(v: &Value) -> String {
    fn emit(v: &Value, indent: usize, out: &mut String) {
        if let Some(obj) = v.as_object() {
            for (k, val) in obj {
                out.push_str(&" ".repeat(indent));
                out.push_str(&serde_json::to_string(k).unwrap());
                out.push(':');
                match val.as_object() {
                    Some(o) if !o.is_empty() => {
                        out.push('\n');
                        emit(val, indent + 2, out);
                    }
                    _ => {
                        out.push(' ');
                        out.push_str(&serde_json::to_string(val).unwrap());
                        out.push('\n');
                    }
                }
            }
        }
    }
    let mut s = String::from("# generated by tests/cluster.rs\n");
    emit(v, 0, &mut s);
    s
}

/// `callfs` with every inherited `CALLFS_*` and `RUST_LOG` removed.
fn callfs_cmd() -> Command {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_callfs"));
    for (k, _) in std::env::vars_os() {
        let k = k.to_string_lossy().into_owned();
        if k.starts_with("CALLFS_") || k == "RUST_LOG" {
            cmd.env_remove(k);
        }
    }
    cmd.stdin(Stdio::null());
    cmd
}

fn node_config(dir: &Path, i: usize, ports: &[u16; 3], metadata: Value) -> Value {
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

struct NodeProc {
    id: &'static str,
    port: u16,
    config_path: PathBuf,
    log_path: PathBuf,
    data_root: PathBuf,
    child: Option<Child>,
}

impl NodeProc {
    fn spawn(&mut self) {
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
        self.child = Some(child);
    }

    fn wait_healthy(&mut self, agent: &ureq::Agent) {
        let deadline = Instant::now() + Duration::from_secs(30);
        let url = format!("http://127.0.0.1:{}/health", self.port);
        loop {
            if let Some(child) = self.child.as_mut() {
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

    fn kill9(&mut self) {
        if let Some(mut child) = self.child.take() {
            // SAFETY: plain kill(2) on the pid of a child we spawned and have not reaped yet.
            unsafe {
                libc::kill(child.id() as libc::pid_t, libc::SIGKILL);
            }
            let _ = child.wait();
        }
    }

    fn pid(&self) -> u32 {
        self.child.as_ref().map(|c| c.id()).unwrap_or_else(|| panic!("{} is not running", self.id))
    }

    fn log_text(&self) -> String {
        fs::read(&self.log_path).map(|b| String::from_utf8_lossy(&b).into_owned()).unwrap_or_default()
    }

    fn log_lines(&self) -> Vec<Value> {
        self.log_text()
            .lines()
            .filter_map(|l| serde_json::from_str::<Value>(l).ok())
            .filter(|v| v.is_object())
            .collect()
    }
}

struct Cluster {
    nodes: Vec<NodeProc>,
    agent: ureq::Agent,
    server_dsn: String,
    db_name: String,
    /// DSN of this cluster's database.
    dsn: String,
    // Last: removed after the nodes are killed.
    dir: tempfile::TempDir,
}

impl Cluster {
    /// Three nodes on a fresh database; `None` when PostgreSQL tests are skipped.
    fn start() -> Option<Cluster> {
        Cluster::start_with(|_, _| {})
    }

    /// Like `start`, with `tweak(node index, config)` applied to each node's configuration.
    fn start_with(tweak: impl Fn(usize, &mut Value)) -> Option<Cluster> {
        let server_dsn = pg_server_dsn()?;
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
                child: None,
            });
        }
        let mut cluster = Cluster { nodes, agent: agent(), server_dsn, db_name, dsn, dir };
        // Started together: migrations must tolerate that (advisory lock, storage.md §1).
        for n in cluster.nodes.iter_mut() {
            n.spawn();
        }
        let agent = cluster.agent.clone();
        for n in cluster.nodes.iter_mut() {
            n.wait_healthy(&agent);
        }
        Some(cluster)
    }

    fn url(&self, i: usize, path: &str) -> String {
        format!("http://127.0.0.1:{}{}", self.nodes[i].port, path)
    }

    fn try_call(
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

    fn call(
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

    fn get(&self, i: usize, path: &str, key: &str) -> Resp {
        self.call(i, "GET", path, key, &[], None)
    }
    fn head(&self, i: usize, path: &str, key: &str) -> Resp {
        self.call(i, "HEAD", path, key, &[], None)
    }
    fn delete(&self, i: usize, path: &str, key: &str) -> Resp {
        self.call(i, "DELETE", path, key, &[], None)
    }
    fn post(&self, i: usize, path: &str, key: &str, body: &[u8]) -> Resp {
        self.call(i, "POST", path, key, &[], Some(body))
    }
    fn put(&self, i: usize, path: &str, key: &str, body: &[u8]) -> Resp {
        self.call(i, "PUT", path, key, &[], Some(body))
    }
    fn patch(&self, i: usize, path: &str, key: &str, v: &Value) -> Resp {
        self.call(i, "PATCH", path, key, &[("Content-Type", "application/json")], Some(v.to_string().as_bytes()))
    }

    /// POST/PUT `len` pseudo-random bytes (seed) streamed with a `Content-Length`.
    fn upload_stream(&self, i: usize, method: &str, path: &str, key: &str, len: u64, seed: u64) -> Resp {
        let body = Body::Stream(len, Box::new(GenReader::new(seed, len)));
        send(&self.agent, method, &self.url(i, path), key, &[], body).map(collect).unwrap_or_else(|e| panic!("{e}"))
    }

    /// GET hashing the body while it streams: (headers-only response, sha256, length).
    fn get_hashed(&self, i: usize, path: &str, key: &str) -> (Resp, String, u64) {
        let r = send(&self.agent, "GET", &self.url(i, path), key, &[], Body::None).unwrap_or_else(|e| panic!("{e}"));
        let status = r.status();
        let headers = response_headers(&r);
        let (sha, n) = hash_reader(r.into_reader()).expect("read body");
        (Resp { status, headers, body: Vec::new() }, sha, n)
    }

    fn metrics(&self, i: usize) -> String {
        let r = self.get(i, "/metrics", NO_AUTH);
        assert_status(&r, 200, &format!("GET /metrics on {}", self.nodes[i].id));
        r.text()
    }

    fn list(&self, i: usize, path: &str, key: &str) -> Value {
        let r = self.get(i, &format!("/v1/directories{path}"), key);
        assert_status(&r, 200, &format!("listing {path} via {}", self.nodes[i].id));
        r.json()
    }

    /// The first request log line (`msg: HTTP request`) with this request id, polled up to 5 s.
    fn request_log(&self, i: usize, request_id: &str) -> Option<Value> {
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

    fn peer_up(&self, i: usize, peer: &str) -> Option<f64> {
        metric_opt(&self.metrics(i), "callfs_peer_up", &[("peer", peer)])
    }

    fn wait_peer_up(&self, i: usize, peer: &str, want: f64, timeout: Duration) -> bool {
        wait_until(timeout, || self.peer_up(i, peer) == Some(want))
    }

    fn kill9(&mut self, i: usize) {
        self.nodes[i].kill9();
    }

    fn restart(&mut self, i: usize) {
        self.nodes[i].kill9();
        self.nodes[i].spawn();
        let agent = self.agent.clone();
        self.nodes[i].wait_healthy(&agent);
    }

    fn disk(&self, i: usize, path: &str) -> PathBuf {
        self.nodes[i].data_root.join(path.trim_start_matches('/'))
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        for n in self.nodes.iter_mut() {
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
        }
        let _ = psql(&self.server_dsn, &format!("DROP DATABASE IF EXISTS {} WITH (FORCE)", self.db_name));
    }
}

// =============================================================================================
// Tests
// =============================================================================================

/// Upload on N1; HEAD on N2; GET via N2/N3 (8 KiB and 5 MiB); PUT via N2 then GET via N1/N3;
/// DELETE via N3 then 404 everywhere (api.md §15 Cluster rows, cluster.md §3).
#[test]
fn forwarding_read_write_delete() {
    let _guard = serial();
    let Some(c) = Cluster::start() else { return };
    let small = random_bytes(8 * KIB, 11);
    let big = random_bytes(5 * MIB, 12);
    assert_status(&c.post(0, "/v1/files/fwd/small.bin", ALICE, &small), 201, "POST small on N1");
    assert_status(&c.post(0, "/v1/files/fwd/big.bin", ALICE, &big), 201, "POST big on N1");

    let local = c.head(0, "/v1/files/fwd/small.bin", ALICE);
    assert_status(&local, 200, "HEAD on the owner");
    let before = c.metrics(1);
    let h = c.head(1, "/v1/files/fwd/small.bin", BOB);
    assert_status(&h, 200, "HEAD via N2 of an N1 file");
    assert_eq!(h.header("x-callfs-instance-id"), Some("node-1"), "HEAD via N2");
    assert_eq!(h.header("x-callfs-size"), Some("8192"), "HEAD via N2");
    assert_eq!(h.header("x-callfs-type"), Some("file"), "HEAD via N2");
    assert_eq!(h.header("x-callfs-owner"), Some("alice"), "HEAD via N2");
    assert_eq!(h.header("etag"), local.header("etag"), "HEAD via N2 relays the owner's ETag");
    let after = c.metrics(1);
    let peer = [("operation", "proxy_head"), ("peer", "node-1"), ("status", "success")];
    assert_delta(&before, &after, CROSS, &peer, 1.0, "HEAD via N2");
    let stat = [("backend_type", "internalproxy"), ("operation", "stat"), ("status", "success")];
    assert_delta(&before, &after, BACKEND, &stat, 1.0, "HEAD via N2");

    for via in [1, 2] {
        let r = c.get(via, "/v1/files/fwd/small.bin", BOB);
        assert_body(&r, &small, &format!("GET 8 KiB via node {}", via + 1));
        assert_eq!(r.header("x-callfs-instance-id"), Some("node-1"));
        assert_eq!(r.header("content-length"), Some("8192"));
        let (r, sha, n) = c.get_hashed(via, "/v1/files/fwd/big.bin", ALICE);
        assert_status(&r, 200, "GET 5 MiB");
        assert_eq!((sha, n), (sha256_hex(&big), big.len() as u64), "GET 5 MiB via node {}", via + 1);
    }

    // Range is passed to the owner and its 206 relayed (cluster.md §3, api.md §12).
    let r = c.call(1, "GET", "/v1/files/fwd/small.bin", ALICE, &[("Range", "bytes=0-99")], None);
    assert_status(&r, 206, "ranged GET via N2");
    assert_eq!(r.header("content-range"), Some("bytes 0-99/8192"));
    assert_eq!(r.body, small[..100].to_vec(), "ranged GET via N2");

    // PUT via N2 → forwarded to the owner, which keeps the bytes and the instance id. Only the
    // executing node takes the path lock and counts the file operation (cluster.md §6,
    // observability.md §1.2).
    let updated = random_bytes(12 * KIB + 7, 13);
    let (before, owner_before) = (c.metrics(1), c.metrics(0));
    assert_status(&c.put(1, "/v1/files/fwd/small.bin", ALICE, &updated), 200, "PUT via N2");
    let (after, owner_after) = (c.metrics(1), c.metrics(0));
    let w = [("operation", "proxy_write"), ("peer", "node-1"), ("status", "success")];
    assert_delta(&before, &after, CROSS, &w, 1.0, "PUT via N2");
    let upd = [("backend_type", "internalproxy"), ("operation", "update"), ("status", "success")];
    assert_delta(&before, &after, BACKEND, &upd, 1.0, "PUT via N2");
    let acquire = [("operation", "acquire")];
    assert_delta(&before, &after, "callfs_lock_operations_total", &acquire, 0.0, "the forwarding node takes no lock");
    let acquired = [("operation", "acquire"), ("status", "success")];
    assert_delta_at_least(&owner_before, &owner_after, "callfs_lock_operations_total", &acquired, 1.0, "owner locks");
    let fop = [("operation", "update")];
    assert_delta(&before, &after, "callfs_file_operations_total", &fop, 0.0, "forwarding node: no file op");
    let fop = [("operation", "update"), ("backend_type", "localfs")];
    assert_delta(&owner_before, &owner_after, "callfs_file_operations_total", &fop, 1.0, "owner: one update");
    for via in [0, 2] {
        let r = c.get(via, "/v1/files/fwd/small.bin", ALICE);
        assert_body(&r, &updated, &format!("GET after PUT via node {}", via + 1));
    }
    let h = c.head(2, "/v1/files/fwd/small.bin", ALICE);
    assert_eq!(h.header("x-callfs-size"), Some("12295"), "size after PUT");
    assert_eq!(h.header("x-callfs-instance-id"), Some("node-1"), "owner unchanged by PUT");
    assert_ne!(h.header("etag"), local.header("etag"), "ETag changes on overwrite");
    assert_eq!(
        fs::read(c.disk(0, "/fwd/small.bin")).ok().map(|b| sha256_hex(&b)),
        Some(sha256_hex(&updated)),
        "the new bytes live on node-1's disk"
    );
    assert!(!c.disk(1, "/fwd/small.bin").exists(), "a forwarded PUT must not leave bytes on the forwarding node");

    // DELETE via N3 → 204; then 404 on every node.
    let before = c.metrics(2);
    let r = c.delete(2, "/v1/files/fwd/small.bin", ALICE);
    assert_status(&r, 204, "DELETE via N3");
    let after = c.metrics(2);
    let d = [("operation", "proxy_delete"), ("peer", "node-1"), ("status", "success")];
    assert_delta(&before, &after, CROSS, &d, 1.0, "DELETE via N3");
    for via in [0, 1] {
        let r = c.get(via, "/v1/files/fwd/small.bin", ALICE);
        assert_error(&r, 404, "FILE_NOT_FOUND", &format!("GET after DELETE via node {}", via + 1));
    }
    assert_status(&c.head(2, "/v1/files/fwd/small.bin", ALICE), 404, "HEAD after DELETE via N3");
    assert!(!c.disk(0, "/fwd/small.bin").exists(), "DELETE removes the bytes on the owner");
    let names = listing_names(&c.list(1, "/fwd", ALICE));
    assert_eq!(names, vec!["big.bin"], "listing after DELETE");
}

/// A single-use link generated on one node downloads through another, once; the consuming node
/// proxies the bytes from the owner (api.md §10.2 and §15 Links, cluster.md §3).
#[test]
fn link_generated_on_one_node_downloads_through_another() {
    let _guard = serial();
    let Some(c) = Cluster::start() else { return };
    let big = random_bytes(2 * MIB + 5, 14);
    assert_status(&c.post(0, "/v1/files/fwd/big.bin", ALICE, &big), 201, "POST on N1");
    let req = json!({"path": "/fwd/big.bin", "expiry_seconds": 600}).to_string();
    let r =
        c.call(0, "POST", "/v1/links/generate", ALICE, &[("Content-Type", "application/json")], Some(req.as_bytes()));
    assert_status(&r, 201, "link generation on N1");
    let token = r.json()["token"].as_str().unwrap_or_else(|| panic!("no token: {}", r.describe())).to_string();
    let before = c.metrics(2);
    let (r, sha, n) = c.get_hashed(2, &format!("/download/{token}"), NO_AUTH);
    assert_status(&r, 200, "link download via N3");
    assert_eq!((sha, n), (sha256_hex(&big), big.len() as u64), "link download via N3");
    let after = c.metrics(2);
    let read = [("operation", "proxy_read"), ("peer", "node-1"), ("status", "success")];
    assert_delta(&before, &after, CROSS, &read, 1.0, "link download of an N1 file via N3");
    assert_error(&c.get(1, &format!("/download/{token}"), NO_AUTH), 410, "LINK_USED", "second download via N2");

    // A file on N2, link made through N3 (never forwarded), downloaded through N1.
    assert_status(&c.post(1, "/v1/files/fwd/on-two.txt", BOB, b"two's bytes"), 201, "POST on N2");
    let req = json!({"path": "/fwd/on-two.txt", "expiry_seconds": 60}).to_string();
    let r =
        c.call(2, "POST", "/v1/links/generate", ALICE, &[("Content-Type", "application/json")], Some(req.as_bytes()));
    assert_status(&r, 201, "link generation on N3");
    let token = r.json()["token"].as_str().unwrap_or_else(|| panic!("no token: {}", r.describe())).to_string();
    let r = c.get(0, &format!("/download/{token}"), NO_AUTH);
    assert_body(&r, b"two's bytes", "link download via N1 of an N2 file");
    let cd = r.header("content-disposition").unwrap_or("");
    assert!(cd.contains("on-two.txt"), "Content-Disposition names the file: {cd:?}");
    assert_error(&c.get(2, &format!("/download/{token}"), NO_AUTH), 410, "LINK_USED", "second download via N3");
}

/// POST onto a path owned by another node → 409 cross-server body (api.md §8.3, cluster.md §7).
#[test]
fn post_conflict_names_the_owner() {
    let _guard = serial();
    let Some(c) = Cluster::start() else { return };
    let original = b"owned by node one".to_vec();
    assert_status(&c.post(0, "/v1/files/conf/a.txt", ALICE, &original), 201, "POST on N1");

    let before = c.metrics(1);
    let r = c.post(1, "/v1/files/conf/a.txt", ALICE, b"second writer");
    let after = c.metrics(1);
    assert_status(&r, 409, "POST of an N1 file via N2");
    assert!(is_json(&r), "409 Content-Type: {:?}", r.header("content-type"));
    let v = r.json();
    let keys: BTreeSet<&str> =
        v.as_object().unwrap_or_else(|| panic!("409 body is not an object: {v}")).keys().map(|k| k.as_str()).collect();
    assert_eq!(
        keys,
        BTreeSet::from([
            "code",
            "message",
            "error",
            "existing_path",
            "instance_id",
            "backend_type",
            "suggestion",
            "update_url"
        ]),
        "cross-server body fields: {v}"
    );
    assert_eq!(v["code"], json!("FILE_ALREADY_EXISTS"), "{v}");
    assert_eq!(v["message"], json!("the path already exists on another node"), "{v}");
    assert_eq!(v["error"], json!("resource exists on another node"), "{v}");
    assert_eq!(v["existing_path"], json!("/conf/a.txt"), "{v}");
    assert_eq!(v["instance_id"], json!("node-1"), "{v}");
    assert_eq!(v["backend_type"], json!("localfs"), "{v}");
    assert_eq!(v["suggestion"], json!("The file exists on another node; use PUT to update it."), "{v}");
    assert_eq!(v["update_url"], json!(format!("http://127.0.0.1:{}/v1/files/conf/a.txt", c.nodes[0].port)), "{v}");
    let cc = [("operation", "conflict_check"), ("peer", "node-1"), ("status", "success")];
    assert_delta(&before, &after, CROSS, &cc, 1.0, "conflict via N2");

    // Directory form over the file through N3: cross-server body without update_url.
    let before = c.metrics(2);
    let r = c.post(2, "/v1/files/conf/a.txt/", ALICE, b"");
    let after = c.metrics(2);
    assert_status(&r, 409, "directory POST over an N1 file via N3");
    let v = r.json();
    assert_eq!(v["code"], json!("FILE_ALREADY_EXISTS"), "{v}");
    assert_eq!(v["instance_id"], json!("node-1"), "{v}");
    assert_eq!(
        v["suggestion"],
        json!("The path is a file on another node; a directory cannot be created there."),
        "{v}"
    );
    assert!(v.get("update_url").is_none(), "no update_url for a directory POST: {v}");
    assert_delta(&before, &after, CROSS, &cc, 1.0, "directory conflict via N3");

    // Authorisation comes before the conflict: bob gets 403 (security.md §3).
    let r = c.post(1, "/v1/files/conf/a.txt", BOB, b"bob");
    assert_error(&r, 403, "PERMISSION_DENIED", "bob POSTs onto alice's N1 file via N2");

    // Directories are cluster-wide: an existing one is 200 through any node.
    assert_status(&c.post(1, "/v1/files/conf/", ALICE, b""), 200, "POST existing directory via N2");
    assert_status(&c.post(2, "/v1/files/conf/", BOB, b""), 200, "POST existing directory via N3");

    for via in 0..3 {
        assert_body(&c.get(via, "/v1/files/conf/a.txt", BOB), &original, "content unchanged");
    }
}

/// A forwarded GET counts exactly once as proxy_read + internalproxy open on the forwarding node,
/// and the owner's request log line carries `via` and the same request id (observability.md §1, §3).
#[test]
fn forwarded_get_metrics_and_log_correlation() {
    let _guard = serial();
    let Some(c) = Cluster::start() else { return };
    let body = random_bytes(3 * KIB, 21);
    assert_status(&c.post(0, "/v1/files/corr.bin", ALICE, &body), 201, "POST on N1");

    let request_id = format!("cluster-corr-{}", random_hex(6));
    let trace_id = random_hex(16);
    let traceparent = format!("00-{trace_id}-{}-01", random_hex(8));
    let before = c.metrics(1);
    let r = c.call(
        1,
        "GET",
        "/v1/files/corr.bin",
        ALICE,
        &[("X-Request-ID", &request_id), ("traceparent", &traceparent)],
        None,
    );
    assert_body(&r, &body, "GET via N2");
    let after = c.metrics(1);
    assert_eq!(r.header("x-request-id"), Some(request_id.as_str()));
    let tp = r.header("traceparent").unwrap_or("");
    assert!(tp.starts_with(&format!("00-{trace_id}-")), "traceparent keeps the trace id: {tp:?}");
    let read = [("operation", "proxy_read"), ("peer", "node-1"), ("status", "success")];
    assert_delta(&before, &after, CROSS, &read, 1.0, "forwarded GET");
    let open = [("backend_type", "internalproxy"), ("operation", "open"), ("status", "success")];
    assert_delta(&before, &after, BACKEND, &open, 1.0, "forwarded GET");
    // Nothing is counted as a failure, and N2 did not read its own disk.
    let failed = [("operation", "proxy_read"), ("status", "failure")];
    assert_delta(&before, &after, CROSS, &failed, 0.0, "forwarded GET");
    let local_open = [("backend_type", "localfs"), ("operation", "open")];
    assert_delta(&before, &after, BACKEND, &local_open, 0.0, "forwarding node");

    let owner = c
        .request_log(0, &request_id)
        .unwrap_or_else(|| panic!("node-1 logged no request line with request_id {request_id}"));
    assert_eq!(owner["via"], json!("node-2"), "owner's line: {owner}");
    assert_eq!(owner["trace_id"], json!(trace_id), "owner's line: {owner}");
    assert_eq!(owner["user_id"], json!("alice"), "effective user on the owner: {owner}");
    assert_eq!(owner["status"], json!(200), "owner's line: {owner}");
    assert_eq!(owner["method"], json!("GET"), "owner's line: {owner}");
    let fwd = c
        .request_log(1, &request_id)
        .unwrap_or_else(|| panic!("node-2 logged no request line with request_id {request_id}"));
    assert_eq!(fwd["trace_id"], json!(trace_id), "forwarder's line: {fwd}");
    assert!(fwd.get("via").map(|v| v.is_null()).unwrap_or(true), "the client-facing line has no via: {fwd}");
}

/// 64 MiB PUT through a non-owner and download through another non-owner: bytes intact and the
/// proxying nodes' peak RSS grows by less than the file size (cluster.md §3 "Streaming").
#[test]
fn large_proxied_transfer_streams() {
    let _guard = serial();
    let Some(c) = Cluster::start() else { return };
    const LEN: u64 = 64 * MIB as u64;
    const SEED: u64 = 0x64_4d1b;
    assert_status(&c.post(0, "/v1/files/large/blob.bin", ALICE, b"small"), 201, "POST on N1");
    let (expected_sha, _) = hash_reader(GenReader::new(SEED, LEN)).unwrap();

    let (n1, n2, n3) = (c.nodes[0].pid(), c.nodes[1].pid(), c.nodes[2].pid());
    let (n1_before, n2_before) = (vm_hwm_kib(n1), vm_hwm_kib(n2));
    let t = Instant::now();
    let r = c.upload_stream(1, "PUT", "/v1/files/large/blob.bin", ALICE, LEN, SEED);
    let put_time = t.elapsed();
    assert_status(&r, 200, "64 MiB PUT via N2 of an N1 file");
    let n2_after = vm_hwm_kib(n2);

    let n3_before = vm_hwm_kib(n3);
    let t = Instant::now();
    let (r, sha, n) = c.get_hashed(2, "/v1/files/large/blob.bin", BOB);
    let get_time = t.elapsed();
    assert_status(&r, 200, "64 MiB GET via N3");
    assert_eq!(n, LEN, "downloaded length");
    assert_eq!(sha, expected_sha, "SHA-256 of the 64 MiB file read via N3");
    let n3_after = vm_hwm_kib(n3);
    let n1_after = vm_hwm_kib(n1);
    let h = c.head(0, "/v1/files/large/blob.bin", ALICE);
    assert_eq!(h.header("x-callfs-size"), Some("67108864"));
    assert_eq!(h.header("x-callfs-instance-id"), Some("node-1"));

    eprintln!(
        "MEMORY 64 MiB proxied transfer (VmHWM KiB): N2 (PUT proxy) {n2_before} -> {n2_after} (+{}), \
         N3 (GET proxy) {n3_before} -> {n3_after} (+{}), N1 (owner) {n1_before} -> {n1_after} (+{}); \
         PUT {put_time:?}, GET {get_time:?}",
        n2_after - n2_before,
        n3_after - n3_before,
        n1_after.saturating_sub(n1_before),
    );
    let limit = 64 * 1024;
    assert!(
        n2_after - n2_before < limit,
        "proxying a 64 MiB PUT grew node-2's VmHWM by {} KiB (limit {limit} KiB)",
        n2_after - n2_before
    );
    assert!(
        n3_after - n3_before < limit,
        "proxying a 64 MiB GET grew node-3's VmHWM by {} KiB (limit {limit} KiB)",
        n3_after - n3_before
    );
}

/// Files created on every node appear in every listing; a directory made on N1 takes a file
/// via N2 that N3 lists and serves (api.md §15 Cluster rows).
#[test]
fn namespace_is_shared() {
    let _guard = serial();
    let Some(c) = Cluster::start() else { return };
    for (i, id) in IDS.iter().enumerate() {
        let r = c.post(i, &format!("/v1/files/from-{id}.txt"), ALICE, id.as_bytes());
        assert_status(&r, 201, &format!("POST via {id}"));
    }
    for (i, id) in IDS.iter().enumerate() {
        let names = listing_names(&c.list(i, "/", BOB));
        for want in IDS {
            assert!(names.contains(&format!("from-{want}.txt")), "listing / via {id} lacks from-{want}.txt: {names:?}");
        }
        // GET on a directory path is a listing array as well (api.md §8.1).
        let r = c.get(i, "/v1/files/", ALICE);
        assert_status(&r, 200, "GET /v1/files/");
        let arr = r.json();
        let n = arr.as_array().map(|a| a.iter().filter(|x| x["type"] == json!("file")).count());
        assert_eq!(n, Some(3), "three files in the root array via {id}: {arr}");
        for (j, other) in IDS.iter().enumerate() {
            let r = c.get(i, &format!("/v1/files/from-{other}.txt"), ALICE);
            assert_body(&r, other.as_bytes(), &format!("{other}'s file via {id}"));
            let h = c.head(i, &format!("/v1/files/from-{other}.txt"), ALICE);
            assert_eq!(h.header("x-callfs-instance-id"), Some(IDS[j]), "owner of from-{other}.txt");
        }
    }

    assert_status(&c.post(0, "/v1/files/shared-dir/", ALICE, b""), 201, "mkdir on N1");
    let inner = random_bytes(5000, 31);
    assert_status(&c.post(1, "/v1/files/shared-dir/in.bin", BOB, &inner), 201, "file via N2");
    let v = c.list(2, "/shared-dir", ALICE);
    let items = v["items"].as_array().cloned().unwrap_or_default();
    assert_eq!(items.len(), 1, "listing via N3: {v}");
    assert_eq!(items[0]["name"], json!("in.bin"), "{v}");
    assert_eq!(items[0]["path"], json!("/shared-dir/in.bin"), "{v}");
    assert_eq!(items[0]["size"], json!(5000), "{v}");
    assert_eq!(items[0]["owner"], json!("bob"), "{v}");
    assert_body(&c.get(2, "/v1/files/shared-dir/in.bin", ALICE), &inner, "GET via N3");
    let h = c.head(2, "/v1/files/shared-dir/in.bin", ALICE);
    assert_eq!(h.header("x-callfs-instance-id"), Some("node-2"), "file made via N2");
    let h = c.head(1, "/v1/files/shared-dir", ALICE);
    assert_status(&h, 200, "HEAD directory via N2");
    assert_eq!(h.header("x-callfs-type"), Some("directory"));
    assert_eq!(h.header("x-callfs-instance-id"), Some("node-1"), "creator of the directory");

    // Five concurrent POSTs of different files through different nodes: 201 each.
    let statuses: Vec<u16> = std::thread::scope(|s| {
        let handles: Vec<_> = (0..5)
            .map(|k| {
                let c = &c;
                s.spawn(move || {
                    let body = format!("concurrent file {k}");
                    c.post(k % 3, &format!("/v1/files/shared-dir/c{k}.txt"), ALICE, body.as_bytes()).status
                })
            })
            .collect();
        handles.into_iter().map(|h| h.join().unwrap()).collect()
    });
    assert_eq!(statuses, vec![201; 5], "five concurrent POSTs");
    for k in 0..5 {
        let r = c.get((k + 1) % 3, &format!("/v1/files/shared-dir/c{k}.txt"), BOB);
        assert_body(&r, format!("concurrent file {k}").as_bytes(), "concurrent file");
    }
}

/// Concurrent PUTs of one path through all nodes serialize on the PostgreSQL lease locks:
/// only 200/201/409, exactly one create, and every node serves the same complete body
/// (cluster.md §6, api.md §8.4).
#[test]
fn concurrent_puts_serialize() {
    let _guard = serial();
    let Some(c) = Cluster::start() else { return };

    fn race(c: &Cluster, path: &str, n: usize, seed: u64) -> (Vec<(usize, Resp)>, Vec<Vec<u8>>) {
        let bodies: Vec<Vec<u8>> = (0..n)
            .map(|k| {
                let mut b = format!("body #{k} ").into_bytes();
                b.extend(random_bytes(24 * KIB, seed + k as u64));
                b
            })
            .collect();
        let barrier = Barrier::new(n);
        let results = std::thread::scope(|s| {
            let handles: Vec<_> = (0..n)
                .map(|k| {
                    let (c, bodies, barrier) = (c, &bodies, &barrier);
                    s.spawn(move || {
                        barrier.wait();
                        let r = c
                            .try_call(k % 3, "PUT", path, ALICE, &[], Some(&bodies[k]))
                            .unwrap_or_else(|e| panic!("PUT #{k}: {e}"));
                        (k, r)
                    })
                })
                .collect();
            handles.into_iter().map(|h| h.join().unwrap()).collect::<Vec<_>>()
        });
        (results, bodies)
    }

    fn check(c: &Cluster, path: &str, results: &[(usize, Resp)], bodies: &[Vec<u8>], creates: usize) {
        let mut ok = BTreeSet::new();
        let mut counts: BTreeMap<String, usize> = BTreeMap::new();
        for (k, r) in results {
            let label = match r.status {
                200 | 201 => {
                    ok.insert(*k);
                    r.status.to_string()
                }
                409 => {
                    let v = r.json();
                    let code = v["code"].as_str().unwrap_or("").to_string();
                    assert!(
                        code == "RESOURCE_LOCKED" || code == "FILE_ALREADY_EXISTS",
                        "PUT #{k} via node {}: 409 with code {code:?}: {v}",
                        k % 3 + 1
                    );
                    if code == "RESOURCE_LOCKED" {
                        assert_eq!(r.header("retry-after"), Some("1"), "RESOURCE_LOCKED Retry-After");
                    }
                    format!("409 {code}")
                }
                _ => panic!("PUT #{k} via node {}: {}", k % 3 + 1, r.describe()),
            };
            *counts.entry(label).or_default() += 1;
        }
        eprintln!("{path}: statuses {counts:?}");
        assert_eq!(counts.get("201").copied().unwrap_or(0), creates, "{path}: number of 201 (creates): {counts:?}");
        assert!(!ok.is_empty(), "{path}: no PUT succeeded: {counts:?}");
        let finals: Vec<Vec<u8>> = (0..3)
            .map(|i| c.get(i, path, BOB))
            .map(|r| {
                assert_status(&r, 200, "final GET");
                r.body
            })
            .collect();
        assert!(finals[0] == finals[1] && finals[1] == finals[2], "{path}: nodes disagree on the final body");
        let winner = bodies.iter().position(|b| *b == finals[0]);
        let Some(winner) = winner else {
            panic!("{path}: the final body ({} bytes) is none of the request bodies", finals[0].len());
        };
        assert!(ok.contains(&winner), "{path}: the final body is #{winner}, whose PUT did not succeed");
    }

    // Fresh path: creation race, then overwrites forwarded to whichever node created it.
    let (results, bodies) = race(&c, "/v1/files/race/fresh.bin", 50, 1000);
    check(&c, "/v1/files/race/fresh.bin", &results, &bodies, 1);

    // Existing file owned by N1: two thirds of the writers are forwarded.
    assert_status(&c.post(0, "/v1/files/race/owned.bin", ALICE, b"seed"), 201, "POST on N1");
    let (results, bodies) = race(&c, "/v1/files/race/owned.bin", 30, 5000);
    check(&c, "/v1/files/race/owned.bin", &results, &bodies, 0);
    let h = c.head(2, "/v1/files/race/owned.bin", ALICE);
    assert_eq!(h.header("x-callfs-instance-id"), Some("node-1"), "owner unchanged");

    // Idle again: no lease left in PostgreSQL, no lock held by any node.
    let mut leases = String::new();
    let released = wait_until(Duration::from_secs(5), || {
        leases = psql(&c.dsn, "SELECT count(*) FROM callfs_locks").unwrap_or_else(|e| e);
        leases == "0"
    });
    assert!(released, "callfs_locks after the race (dlm.type postgres): {leases}");
    for (i, id) in IDS.iter().enumerate() {
        let m = c.metrics(i);
        assert_eq!(metric_opt(&m, "callfs_active_locks", &[]), Some(0.0), "callfs_active_locks on {id} when idle");
    }
}

/// PATCH through a non-owner (forwarded rename) and PATCH with `instance` (relocation) — the bytes
/// move to node-3 and stay readable with node-1 dead (cluster.md §5, api.md §8.5).
#[test]
fn patch_rename_and_relocation() {
    let _guard = serial();
    let Some(mut c) = Cluster::start() else { return };
    let src = b"patch me through another node".to_vec();
    assert_status(&c.post(0, "/v1/files/p/src.txt", ALICE, &src), 201, "POST on N1");

    let before = c.metrics(1);
    let r = c.patch(1, "/v1/files/p/src.txt", ALICE, &json!({"name": "x"}));
    assert_status(&r, 200, "PATCH {name} via N2 of an N1 file");
    assert_eq!(r.json(), json!({"path": "/p/x"}), "PATCH response body");
    let after = c.metrics(1);
    let mv = [("operation", "proxy_move"), ("peer", "node-1"), ("status", "success")];
    assert_delta(&before, &after, CROSS, &mv, 1.0, "forwarded rename");
    let bm = [("backend_type", "internalproxy"), ("operation", "move"), ("status", "success")];
    assert_delta(&before, &after, BACKEND, &bm, 1.0, "forwarded rename");
    assert_body(&c.get(2, "/v1/files/p/x", BOB), &src, "renamed file via N3");
    assert_error(&c.get(2, "/v1/files/p/src.txt", BOB), 404, "FILE_NOT_FOUND", "old name via N3");
    let h = c.head(2, "/v1/files/p/x", BOB);
    assert_eq!(h.header("x-callfs-instance-id"), Some("node-1"), "rename keeps the node");
    assert_eq!(h.header("x-callfs-owner"), Some("alice"), "rename keeps the owner");
    assert!(c.disk(0, "/p/x").is_file(), "renamed in place on node-1's disk");

    // Relocation, same path, requested via N2 (neither source nor target): executed by N3.
    let rel = random_bytes(MIB + 3, 41);
    assert_status(&c.post(0, "/v1/files/p/rel.bin", ALICE, &rel), 201, "POST rel.bin on N1");
    let (m2, m3) = (c.metrics(1), c.metrics(2));
    let r = c.patch(1, "/v1/files/p/rel.bin", ALICE, &json!({"name": "rel.bin", "instance": "node-3"}));
    assert_status(&r, 200, "PATCH {instance: node-3} via N2");
    assert_eq!(r.json(), json!({"path": "/p/rel.bin"}), "PATCH response body");
    let (m2b, m3b) = (c.metrics(1), c.metrics(2));
    let to3 = [("operation", "proxy_move"), ("peer", "node-3"), ("status", "success")];
    assert_delta(&m2, &m2b, CROSS, &to3, 1.0, "relocation forwarded to the target");
    let rr = [("operation", "relocate_read"), ("peer", "node-1"), ("status", "success")];
    assert_delta(&m3, &m3b, CROSS, &rr, 1.0, "target reads the source bytes");
    let rd = [("operation", "remote_delete"), ("peer", "node-1"), ("status", "success")];
    assert_delta(&m3, &m3b, CROSS, &rd, 1.0, "target removes the old bytes");
    for via in 0..3 {
        let h = c.head(via, "/v1/files/p/rel.bin", ALICE);
        assert_status(&h, 200, "HEAD after relocation");
        assert_eq!(h.header("x-callfs-instance-id"), Some("node-3"), "instance after relocation via node {}", via + 1);
        assert_eq!(h.header("x-callfs-size"), Some(rel.len().to_string().as_str()));
    }
    assert_eq!(
        fs::read(c.disk(2, "/p/rel.bin")).ok().map(|b| sha256_hex(&b)),
        Some(sha256_hex(&rel)),
        "bytes on node-3's disk"
    );
    assert!(!c.disk(0, "/p/rel.bin").exists(), "old bytes removed from node-1's disk");

    // Relocation with a new destination, executed by the target itself (N3 = R = T).
    let rel2 = random_bytes(200 * KIB, 42);
    assert_status(&c.post(0, "/v1/files/p/rel2.bin", ALICE, &rel2), 201, "POST rel2 on N1");
    let r = c.patch(
        2,
        "/v1/files/p/rel2.bin",
        ALICE,
        &json!({"destination": "/p/moved/rel2.bin", "instance": "node-3", "create_parents": true}),
    );
    assert_status(&r, 200, "PATCH {destination, instance} via N3");
    assert_eq!(r.json(), json!({"path": "/p/moved/rel2.bin"}));
    assert_error(&c.get(1, "/v1/files/p/rel2.bin", ALICE), 404, "FILE_NOT_FOUND", "old path");
    let h = c.head(1, "/v1/files/p/moved/rel2.bin", ALICE);
    assert_eq!(h.header("x-callfs-instance-id"), Some("node-3"));

    // Checks on the receiving node (api.md §8.5 step 5).
    let r = c.patch(1, "/v1/files/p/x", ALICE, &json!({"name": "x9", "instance": "node-9"}));
    assert_error(&r, 400, "BAD_REQUEST", "PATCH to an unknown instance");
    let r = c.patch(1, "/v1/files/p/moved", ALICE, &json!({"name": "moved2", "instance": "node-2"}));
    assert_error(&r, 400, "BAD_REQUEST", "PATCH of a directory with an instance change");

    // Overwrite rules through a non-owner: N1's file onto N3's file, via N2.
    let ow = b"overwriting source on node one".to_vec();
    assert_status(&c.post(0, "/v1/files/p/ow-src.txt", ALICE, &ow), 201, "POST ow-src on N1");
    assert_status(&c.post(2, "/v1/files/p/ow-dst.txt", ALICE, b"old destination"), 201, "POST ow-dst on N3");
    let r = c.patch(1, "/v1/files/p/ow-src.txt", ALICE, &json!({"destination": "/p/ow-dst.txt"}));
    assert_error(&r, 409, "FILE_ALREADY_EXISTS", "PATCH onto an existing destination without overwrite");
    assert_body(&c.get(0, "/v1/files/p/ow-dst.txt", BOB), b"old destination", "destination untouched");
    let r = c.patch(1, "/v1/files/p/ow-src.txt", ALICE, &json!({"destination": "/p/ow-dst.txt", "overwrite": true}));
    assert_status(&r, 200, "PATCH with overwrite via N2");
    for via in 0..3 {
        assert_body(&c.get(via, "/v1/files/p/ow-dst.txt", BOB), &ow, "overwritten destination");
        assert_status(&c.head(via, "/v1/files/p/ow-src.txt", BOB), 404, "source gone after the move");
    }

    // A directory holding bytes on all three nodes, moved through N2: every holder moves its
    // physical subtree (remote_move), metadata is re-keyed (cluster.md §5 "Directory rename/move").
    let parts: [(usize, &str, Vec<u8>); 3] = [
        (0, "/tree/a.bin", random_bytes(3000, 51)),
        (1, "/tree/sub/b.bin", random_bytes(4000, 52)),
        (2, "/tree/c.bin", random_bytes(5000, 53)),
    ];
    for (node, path, body) in &parts {
        assert_status(&c.post(*node, &format!("/v1/files{path}"), ALICE, body), 201, "POST tree file");
    }
    let before = c.metrics(1);
    let r = c.patch(1, "/v1/files/tree", ALICE, &json!({"destination": "/moved-tree"}));
    assert_status(&r, 200, "directory move via N2");
    assert_eq!(r.json(), json!({"path": "/moved-tree"}));
    let after = c.metrics(1);
    for peer in ["node-1", "node-3"] {
        let m = [("operation", "remote_move"), ("peer", peer), ("status", "success")];
        assert_delta(&before, &after, CROSS, &m, 1.0, "directory move: one remote move per holding peer");
    }
    for (node, path, body) in &parts {
        let new_path = path.replacen("/tree", "/moved-tree", 1);
        for via in 0..3 {
            assert_body(&c.get(via, &format!("/v1/files{new_path}"), BOB), body, "moved subtree file");
            assert_status(&c.head(via, &format!("/v1/files{path}"), BOB), 404, "old subtree path");
        }
        let h = c.head(*node, &format!("/v1/files{new_path}"), BOB);
        assert_eq!(h.header("x-callfs-instance-id"), Some(IDS[*node]), "{new_path} stays on its node");
        assert_eq!(fs::read(c.disk(*node, &new_path)).ok().as_ref(), Some(body), "{new_path} on disk");
        assert!(!c.disk(*node, path).exists(), "{path} moved away on disk");
    }

    // node-1 dies: the relocated files are still served, through every live node.
    c.kill9(0);
    for via in [1, 2] {
        let (r, sha, n) = c.get_hashed(via, "/v1/files/p/rel.bin", BOB);
        assert_status(&r, 200, "relocated file with node-1 dead");
        assert_eq!((sha, n), (sha256_hex(&rel), rel.len() as u64), "rel.bin via node {}", via + 1);
        assert_body(&c.get(via, "/v1/files/p/moved/rel2.bin", BOB), &rel2, "rel2 with node-1 dead");
    }
    // ...while the renamed one (still on node-1) is not.
    assert_error(&c.get(1, "/v1/files/p/x", BOB), 502, "PEER_UNAVAILABLE", "file on dead node-1");

    // Moves that need the dead node fail with 502 and change nothing (cluster.md §5).
    let r = c.patch(1, "/v1/files/p/x", ALICE, &json!({"name": "y"}));
    assert_error(&r, 502, "PEER_UNAVAILABLE", "rename of a file on dead node-1");
    let r = c.patch(1, "/v1/files/p/moved/rel2.bin", ALICE, &json!({"name": "rel2.bin", "instance": "node-1"}));
    assert_error(&r, 502, "PEER_UNAVAILABLE", "relocation to dead node-1");
    let r = c.patch(2, "/v1/files/moved-tree", ALICE, &json!({"destination": "/tree-again"}));
    assert_error(&r, 502, "PEER_UNAVAILABLE", "directory move with a holder down");
    let names = listing_names(&c.list(1, "/p", ALICE));
    assert!(names.contains(&"x".to_string()) && !names.contains(&"y".to_string()), "/p after failed rename: {names:?}");
    let h = c.head(2, "/v1/files/p/moved/rel2.bin", ALICE);
    assert_eq!(h.header("x-callfs-instance-id"), Some("node-3"), "failed relocation leaves the source");
    assert_body(&c.get(1, "/v1/files/p/moved/rel2.bin", BOB), &rel2, "source intact after a failed relocation");
    assert_status(&c.head(1, "/v1/files/tree-again", ALICE), 404, "failed directory move");
    for (node, path, body) in parts.iter().filter(|(n, _, _)| *n != 0) {
        let new_path = path.replacen("/tree", "/moved-tree", 1);
        assert_body(&c.get(3 - node, &format!("/v1/files{new_path}"), BOB), body, "subtree after a failed move");
        assert!(c.disk(*node, &new_path).is_file(), "{new_path} back in place on node {}", node + 1);
    }
}

/// kill -9 of N1: its files answer 502 PEER_UNAVAILABLE quickly, everything else keeps working,
/// callfs_peer_up drops to 0 and failure counters rise; a restart on the same data recovers
/// (cluster.md §4, §9; observability.md §1).
#[test]
fn peer_failure_and_recovery() {
    let _guard = serial();
    // A short header timeout so that the PEER_TIMEOUT case below stays quick.
    let Some(mut c) = Cluster::start_with(|_, cfg| cfg["backend"]["internal_proxy_timeout"] = json!("4s")) else {
        return;
    };
    let one = b"lives on node one".to_vec();
    let two = b"lives on node two".to_vec();
    assert_status(&c.post(0, "/v1/files/f/n1.txt", ALICE, &one), 201, "POST on N1");
    assert_status(&c.post(1, "/v1/files/f/n2.txt", ALICE, &two), 201, "POST on N2");

    // One series per configured peer; up while everything runs.
    for (i, id) in IDS.iter().enumerate() {
        for peer in IDS.iter().filter(|p| *p != id) {
            assert!(
                c.wait_peer_up(i, peer, 1.0, Duration::from_secs(10)),
                "callfs_peer_up{{peer=\"{peer}\"}} on {id} should reach 1 (now {:?})",
                c.peer_up(i, peer)
            );
        }
        assert_eq!(c.peer_up(i, id), None, "no callfs_peer_up series for the node itself");
    }

    let before = c.metrics(1);
    c.kill9(0);
    let t = Instant::now();
    let r = c.get(1, "/v1/files/f/n1.txt", ALICE);
    let took = t.elapsed();
    assert_error(&r, 502, "PEER_UNAVAILABLE", "GET of an N1 file via N2 with N1 dead");
    assert!(took < Duration::from_secs(10), "502 took {took:?} (limit 10 s)");
    eprintln!("TIMING dead-peer GET answered in {took:?}");
    let h = c.head(1, "/v1/files/f/n1.txt", ALICE);
    assert_status(&h, 502, "HEAD of an N1 file via N2 with N1 dead");

    // Everything not stored on N1 keeps working.
    assert_body(&c.get(1, "/v1/files/f/n2.txt", BOB), &two, "N2 file via N2");
    assert_body(&c.get(2, "/v1/files/f/n2.txt", BOB), &two, "N2 file via N3");
    let names = listing_names(&c.list(2, "/f", ALICE));
    assert_eq!(names, vec!["n1.txt", "n2.txt"], "listing is metadata only");
    assert_status(&c.post(2, "/v1/files/f/new.txt", ALICE, b"new"), 201, "POST via N3");
    assert_status(&c.head(1, "/v1/files/f/n1.txt", ALICE), 502, "HEAD");

    // Writes to N1's file fail without touching metadata.
    let r = c.put(2, "/v1/files/f/n1.txt", ALICE, b"lost update");
    assert_error(&r, 502, "PEER_UNAVAILABLE", "PUT via N3 with N1 dead");
    let r = c.delete(2, "/v1/files/f/n1.txt", ALICE);
    assert_error(&r, 502, "PEER_UNAVAILABLE", "DELETE via N3 with N1 dead");

    let went_down = c.wait_peer_up(1, "node-1", 0.0, Duration::from_secs(6));
    assert!(
        went_down,
        "callfs_peer_up{{peer=\"node-1\"}} on node-2 still {:?} 6 s after the kill (probe interval 1 s)",
        c.peer_up(1, "node-1")
    );
    assert!(c.wait_peer_up(2, "node-1", 0.0, Duration::from_secs(6)), "peer_up on node-3");
    assert_eq!(c.peer_up(1, "node-3"), Some(1.0), "node-3 stays up for node-2");
    let after = c.metrics(1);
    let failures = [("peer", "node-1"), ("status", "failure")];
    assert_delta_at_least(&before, &after, CROSS, &failures, 2.0, "GET+HEAD to the dead peer");
    let rf = [("operation", "proxy_read"), ("peer", "node-1"), ("status", "failure")];
    assert_delta_at_least(&before, &after, CROSS, &rf, 1.0, "GET to the dead peer");
    let bf = [("backend_type", "internalproxy"), ("status", "failure")];
    assert_delta_at_least(&before, &after, BACKEND, &bf, 2.0, "internalproxy failures");
    let ef = [("component", "proxy"), ("error_type", "peer_unavailable")];
    assert_delta_at_least(&before, &after, "callfs_errors_total", &ef, 2.0, "proxy errors");

    // Restart N1 on the same data: back up, and its file is served again through N2.
    c.restart(0);
    assert!(
        c.wait_peer_up(1, "node-1", 1.0, Duration::from_secs(8)),
        "callfs_peer_up{{peer=\"node-1\"}} on node-2 did not return to 1 (now {:?})",
        c.peer_up(1, "node-1")
    );
    assert_body(&c.get(1, "/v1/files/f/n1.txt", BOB), &one, "N1 file via N2 after restart");
    assert_body(&c.get(2, "/v1/files/f/n1.txt", BOB), &one, "failed PUT left the content");

    // A peer that accepts connections but never answers: 504 PEER_TIMEOUT after
    // backend.internal_proxy_timeout (4 s here), not a hang (cluster.md §4).
    let three = b"lives on node three".to_vec();
    assert_status(&c.post(2, "/v1/files/f/n3.txt", ALICE, &three), 201, "POST on N3");
    let n3 = c.nodes[2].pid();
    let before = c.metrics(1);
    // SAFETY: kill(2) on our own child; SIGCONT follows below (and SIGKILL on drop works anyway).
    unsafe {
        libc::kill(n3 as libc::pid_t, libc::SIGSTOP);
    }
    let t = Instant::now();
    let r = c.try_call(1, "GET", "/v1/files/f/n3.txt", ALICE, &[], None);
    let took = t.elapsed();
    // SAFETY: as above.
    unsafe {
        libc::kill(n3 as libc::pid_t, libc::SIGCONT);
    }
    let r = r.unwrap_or_else(|e| panic!("GET of a file on a stalled peer: {e}"));
    eprintln!("TIMING stalled-peer GET answered {} in {took:?}", r.status);
    assert_error(&r, 504, "PEER_TIMEOUT", "GET via N2 of a file on a stalled N3");
    assert!(
        took >= Duration::from_millis(3500) && took < Duration::from_secs(15),
        "PEER_TIMEOUT after {took:?}; internal_proxy_timeout is 4 s"
    );
    let after = c.metrics(1);
    let f = [("operation", "proxy_read"), ("peer", "node-3"), ("status", "failure")];
    assert_delta_at_least(&before, &after, CROSS, &f, 1.0, "stalled peer");
    let e = [("component", "proxy"), ("error_type", "peer_timeout")];
    assert_delta_at_least(&before, &after, "callfs_errors_total", &e, 1.0, "stalled peer");
    assert_body(&c.get(1, "/v1/files/f/n3.txt", BOB), &three, "N3 file via N2 once N3 runs again");

    // An instance id missing from peer_endpoints: 502 PEER_UNAVAILABLE, peer label `unknown`
    // (cluster.md §2). The row is pointed at a node nobody knows directly in the shared database.
    assert_status(&c.post(2, "/v1/files/f/ghost.txt", ALICE, b"ghost"), 201, "POST ghost on N3");
    psql(&c.dsn, "UPDATE inodes SET callfs_instance_id = 'node-9' WHERE path = '/f/ghost.txt'")
        .unwrap_or_else(|e| panic!("pointing /f/ghost.txt at node-9 (storage.md §1.1 columns): {e}"));
    let before = c.metrics(0);
    let r = c.get(0, "/v1/files/f/ghost.txt", ALICE);
    assert_error(&r, 502, "PEER_UNAVAILABLE", "GET of a file on an unknown node");
    let after = c.metrics(0);
    let unknown = [("peer", "unknown"), ("status", "failure")];
    assert_delta_at_least(&before, &after, CROSS, &unknown, 1.0, "unknown instance id");
}

/// The CallFSPeerUnreachable rule of cluster/alerts.yml fires for a peer down 5 minutes
/// (observability.md §5), checked with `promtool test rules`.
#[test]
fn promtool_peer_unreachable_alert() {
    let rules = Path::new(env!("CARGO_MANIFEST_DIR")).join("cluster/alerts.yml");
    assert!(rules.is_file(), "{} is missing", rules.display());
    let dir = tempfile::tempdir().expect("tempdir");

    let write_test = |name: &str, firing_at_5m: &str| -> PathBuf {
        let text = format!(
            r#"rule_files:
  - {rules}
evaluation_interval: 1m
tests:
  - name: node-1 unreachable from n2 for 5 minutes
    interval: 1m
    input_series:
      - series: 'callfs_peer_up{{instance="n2",peer="node-1"}}'
        values: '0x5'
      - series: 'callfs_peer_up{{instance="n2",peer="node-3"}}'
        values: '1x5'
    alert_rule_test:
      - eval_time: 1m
        alertname: CallFSPeerUnreachable
        exp_alerts: []
      - eval_time: 5m
        alertname: CallFSPeerUnreachable
        exp_alerts:{firing_at_5m}
"#,
            rules = serde_json::to_string(&rules.to_string_lossy()).unwrap(),
        );
        let path = dir.path().join(name);
        fs::write(&path, text).expect("write promtool test");
        path
    };
    let firing = "
          - exp_labels:
              severity: critical
              instance: n2
              peer: node-1
            exp_annotations:
              summary: \"n2 cannot reach peer node-1; files stored there are unavailable\"";
    let promtool = |file: &Path| match Command::new("promtool").args(["test", "rules"]).arg(file).output() {
        Ok(out) => out,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            panic!("promtool not found on PATH: run scripts/ensure-deps.sh (Debian package prometheus)")
        }
        Err(e) => panic!("cannot run promtool: {e}"),
    };

    let out = promtool(&write_test("fires.yml", firing));
    assert!(
        out.status.success(),
        "CallFSPeerUnreachable should fire for callfs_peer_up{{instance=\"n2\",peer=\"node-1\"}} = 0 \
         during 5 minutes:\n{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    // Control: the same input expecting silence must fail, or the check above proves nothing.
    let out = promtool(&write_test("silent.yml", " []"));
    assert!(
        !out.status.success(),
        "promtool accepted 'no alert' for a peer down 5 minutes:\n{}",
        String::from_utf8_lossy(&out.stdout)
    );
}

/// `X-CallFS-Original-User` / `X-CallFS-Proxied-By` from an ordinary key are ignored
/// (security.md §4): they neither widen privileges nor stop forwarding.
#[test]
fn spoofed_internal_headers_are_ignored() {
    let _guard = serial();
    let Some(c) = Cluster::start() else { return };
    let secret = b"alice's data".to_vec();
    assert_status(&c.post(0, "/v1/files/sec/alice.txt", ALICE, &secret), 201, "POST on N1");

    for (via, user) in [(0, "root"), (1, "root"), (2, "alice"), (0, "internal-proxy")] {
        let r = c.call(
            via,
            "DELETE",
            "/v1/files/sec/alice.txt",
            BOB,
            &[("X-CallFS-Original-User", user), ("X-CallFS-Proxied-By", "node-2")],
            None,
        );
        assert_error(&r, 403, "PERMISSION_DENIED", &format!("bob DELETE via node {} claiming to be {user}", via + 1));
        let r = c.call(
            via,
            "PUT",
            "/v1/files/sec/alice.txt",
            BOB,
            &[("X-CallFS-Original-User", user)],
            Some(b"overwritten by bob"),
        );
        assert_error(&r, 403, "PERMISSION_DENIED", &format!("bob PUT via node {} claiming to be {user}", via + 1));
    }
    let r = c.call(
        1,
        "PATCH",
        "/v1/files/sec/alice.txt",
        BOB,
        &[("Content-Type", "application/json"), ("X-CallFS-Original-User", "alice")],
        Some(br#"{"name":"stolen.txt"}"#),
    );
    assert_error(&r, 403, "PERMISSION_DENIED", "bob PATCH via N2 claiming to be alice");
    for via in 0..3 {
        assert_body(&c.get(via, "/v1/files/sec/alice.txt", BOB), &secret, "alice's file intact");
    }

    // A create with a claimed identity is owned by the key's user.
    let r = c.call(
        1,
        "POST",
        "/v1/files/sec/made-by-alice.txt",
        ALICE,
        &[("X-CallFS-Original-User", "bob")],
        Some(b"mine"),
    );
    assert_status(&r, 201, "alice POST via N2 claiming to be bob");
    let h = c.head(2, "/v1/files/sec/made-by-alice.txt", BOB);
    assert_eq!(h.header("x-callfs-owner"), Some("alice"), "owner is the key's user");
    assert_error(
        &c.delete(2, "/v1/files/sec/made-by-alice.txt", BOB),
        403,
        "PERMISSION_DENIED",
        "bob cannot delete it",
    );

    // A forged X-CallFS-Proxied-By does not stop forwarding (the one-hop rule needs the secret).
    let request_id = format!("forged-hop-{}", random_hex(6));
    let before = c.metrics(1);
    let r = c.call(
        1,
        "GET",
        "/v1/files/sec/alice.txt",
        BOB,
        &[("X-CallFS-Proxied-By", "node-3"), ("X-Request-ID", &request_id)],
        None,
    );
    assert_body(&r, &secret, "GET via N2 with a forged X-CallFS-Proxied-By");
    let after = c.metrics(1);
    let read = [("operation", "proxy_read"), ("peer", "node-1"), ("status", "success")];
    assert_delta(&before, &after, CROSS, &read, 1.0, "forged hop header is still forwarded");
    let owner = c
        .request_log(0, &request_id)
        .unwrap_or_else(|| panic!("node-1 logged no request line with request_id {request_id}"));
    assert_eq!(owner["via"], json!("node-2"), "the real forwarder: {owner}");
    assert_eq!(owner["user_id"], json!("bob"), "effective user: {owner}");
}

/// Internal endpoints: internal secret only (401/403 otherwise), bytes only (metadata untouched),
/// and the internal secret honours `X-CallFS-Original-User` (cluster.md §8, security.md §4).
#[test]
fn internal_endpoints() {
    let _guard = serial();
    let Some(c) = Cluster::start() else { return };
    let a = b"bytes of a".to_vec();
    assert_status(&c.post(0, "/v1/files/ie/a.txt", ALICE, &a), 201, "POST a on N1");
    assert_status(&c.post(0, "/v1/files/ie/c.txt", ALICE, b"c"), 201, "POST c on N1");
    let mv = |from: &str, to: &str| json!({"from": from, "to": to}).to_string();

    // Authentication.
    let r = c.delete(0, "/v1/internal/localfs/ie/a.txt", NO_AUTH);
    assert_error(&r, 401, "AUTHENTICATION_FAILED", "internal DELETE without credentials");
    let r = c.delete(0, "/v1/internal/localfs/ie/a.txt", ALICE);
    assert_error(&r, 403, "PERMISSION_DENIED", "internal DELETE with an API key");
    let body = mv("/ie/a.txt", "/ie/b.txt");
    let r = c.call(0, "POST", "/v1/internal/localfs-move", BOB, &[], Some(body.as_bytes()));
    assert_error(&r, 403, "PERMISSION_DENIED", "internal move with an API key");
    let r = c.call(0, "POST", "/v1/internal/localfs-move", "not-a-key-at-all-123", &[], Some(body.as_bytes()));
    assert_error(&r, 401, "AUTHENTICATION_FAILED", "internal move with an unknown key");
    assert!(c.disk(0, "/ie/a.txt").is_file(), "nothing moved or deleted");

    // Move: bytes only, parents created.
    let body = mv("/ie/a.txt", "/ie2/deep/b.txt");
    let r = c.call(0, "POST", "/v1/internal/localfs-move", INTERNAL, &[], Some(body.as_bytes()));
    assert_status(&r, 204, "internal move");
    assert!(!c.disk(0, "/ie/a.txt").exists(), "moved away");
    assert_eq!(fs::read(c.disk(0, "/ie2/deep/b.txt")).ok(), Some(a.clone()), "moved bytes");
    assert_status(&c.head(1, "/v1/files/ie/a.txt", ALICE), 200, "metadata untouched by a move");
    assert_status(&c.head(1, "/v1/files/ie2/deep/b.txt", ALICE), 404, "no metadata for the target");
    let body = mv("/ie2/deep/b.txt", "/ie/a.txt");
    let r = c.call(0, "POST", "/v1/internal/localfs-move", INTERNAL, &[], Some(body.as_bytes()));
    assert_status(&r, 204, "internal move back");
    assert_body(&c.get(2, "/v1/files/ie/a.txt", BOB), &a, "served again after moving back");
    let body = mv("/ie/absent.txt", "/ie/whatever.txt");
    let r = c.call(0, "POST", "/v1/internal/localfs-move", INTERNAL, &[], Some(body.as_bytes()));
    assert_error(&r, 404, "FILE_NOT_FOUND", "internal move of an absent source");
    let body = mv("/ie/a.txt", "/ie/c.txt");
    let r = c.call(0, "POST", "/v1/internal/localfs-move", INTERNAL, &[], Some(body.as_bytes()));
    assert_error(&r, 409, "FILE_ALREADY_EXISTS", "internal move onto an existing file");
    assert_eq!(fs::read(c.disk(0, "/ie/c.txt")).ok(), Some(b"c".to_vec()), "target untouched");

    // Delete: 204 also when absent, 400 for a directory, metadata untouched.
    let r = c.delete(0, "/v1/internal/localfs/ie/never-there.txt", INTERNAL);
    assert_status(&r, 204, "internal DELETE of an absent file");
    let r = c.delete(0, "/v1/internal/localfs/ie", INTERNAL);
    assert_error(&r, 400, "BAD_REQUEST", "internal DELETE of a directory");
    assert!(c.disk(0, "/ie/a.txt").is_file(), "directory delete refused");
    let r = c.delete(0, "/v1/internal/localfs/ie/c.txt", INTERNAL);
    assert_status(&r, 204, "internal DELETE");
    assert!(!c.disk(0, "/ie/c.txt").exists(), "bytes removed");
    assert_status(&c.head(1, "/v1/files/ie/c.txt", ALICE), 200, "metadata untouched by a delete");

    // One-hop rule (cluster.md §4): an internally proxied request for a file held by a third
    // node is not forwarded again.
    let n2 = b"held by node two".to_vec();
    assert_status(&c.post(1, "/v1/files/ie/n2.txt", ALICE, &n2), 201, "POST on N2");
    let before = c.metrics(0);
    let hop = [("X-CallFS-Proxied-By", "node-3"), ("X-CallFS-Original-User", "alice")];
    let r = c.call(0, "GET", "/v1/files/ie/n2.txt", INTERNAL, &hop, None);
    assert_error(&r, 502, "PEER_ERROR", "second hop refused");
    let after = c.metrics(0);
    let fwd = [("operation", "proxy_read")];
    assert_delta(&before, &after, CROSS, &fwd, 0.0, "a proxied request is never forwarded again");
    let r = c.call(0, "GET", "/v1/files/ie/n2.txt", INTERNAL, &[("X-CallFS-Original-User", "alice")], None);
    assert_body(&r, &n2, "internal secret without X-CallFS-Proxied-By is forwarded normally");

    // The internal secret acts as the original user when it is named (security.md §4).
    let r = c.call(0, "DELETE", "/v1/files/ie/a.txt", INTERNAL, &[("X-CallFS-Original-User", "bob")], None);
    assert_error(&r, 403, "PERMISSION_DENIED", "internal secret on behalf of bob deletes alice's file");
    let r = c.call(0, "POST", "/v1/files/ie/for-bob.txt", INTERNAL, &[("X-CallFS-Original-User", "bob")], Some(b"b"));
    assert_status(&r, 201, "internal secret creates on behalf of bob");
    let h = c.head(2, "/v1/files/ie/for-bob.txt", ALICE);
    assert_eq!(h.header("x-callfs-owner"), Some("bob"), "owned by the original user");
    let r = c.post(0, "/v1/files/ie/plain-internal.txt", INTERNAL, b"i");
    assert_status(&r, 201, "internal secret without an original user");
    let h = c.head(1, "/v1/files/ie/plain-internal.txt", ALICE);
    assert_eq!(h.header("x-callfs-owner"), Some("internal-proxy"));
}

/// A node whose `peer_endpoints` names its own instance id refuses to start (cluster.md §4,
/// config.md §4 rule 28).
#[test]
fn own_instance_id_in_peers_is_refused() {
    let dir = tempfile::tempdir().expect("tempdir");
    let ports = [free_port(), free_port(), free_port()];
    let mut config = node_config(
        dir.path(),
        0,
        &ports,
        json!({"type": "sqlite", "sqlite_path": dir.path().join("meta.sqlite3").to_string_lossy()}),
    );
    config["dlm"] = json!({"type": "local"});
    config["instance_discovery"]["peer_endpoints"]["node-1"] = json!(format!("http://127.0.0.1:{}", ports[0]));
    let config_path = dir.path().join("loop.yaml");
    fs::write(&config_path, to_yaml(&config)).unwrap();
    fs::create_dir_all(dir.path().join(IDS[0])).unwrap();

    let out = callfs_cmd()
        .args(["config", "validate", "--config"])
        .arg(&config_path)
        .output()
        .expect("run callfs config validate");
    let text = format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    assert!(!out.status.success(), "config validate accepted its own id as a peer:\n{text}");
    assert!(text.contains("instance_discovery.peer_endpoints.node-1"), "the error names the key:\n{text}");

    let log_path = dir.path().join("loop.log");
    let log = fs::File::create(&log_path).unwrap();
    let mut child = callfs_cmd()
        .args(["server", "--config"])
        .arg(&config_path)
        .current_dir(dir.path())
        .stdout(log.try_clone().unwrap())
        .stderr(log)
        .spawn()
        .expect("spawn callfs");
    let deadline = Instant::now() + Duration::from_secs(20);
    let status = loop {
        if let Some(status) = child.try_wait().expect("try_wait") {
            break Some(status);
        }
        if Instant::now() > deadline {
            break None;
        }
        std::thread::sleep(Duration::from_millis(50));
    };
    if status.is_none() {
        // SAFETY: kill(2) on our own unreaped child.
        unsafe {
            libc::kill(child.id() as libc::pid_t, libc::SIGKILL);
        }
        let _ = child.wait();
    }
    let log = fs::read_to_string(&log_path).unwrap_or_default();
    let status = status.unwrap_or_else(|| {
        panic!("a node with its own id in peer_endpoints was still running after 20 s; log:\n{log}")
    });
    assert!(
        !status.success(),
        "a node with its own id in peer_endpoints must exit non-zero, got {status}; log:\n{log}"
    );
}

#[test]
fn mismatched_internal_secret_is_a_clear_peer_error() {
    let _guard = serial();
    // Node 2 was deployed with another internal secret: its peers' forwarded calls are refused.
    let Some(c) = Cluster::start_with(|i, cfg| {
        if i == 1 {
            cfg["auth"]["internal_proxy_secret"] = json!("a-different-internal-secret-42");
        }
    }) else {
        return;
    };
    assert_status(&c.post(1, "/v1/files/wrong-secret.txt", ALICE, b"on node two"), 201, "POST on N2");
    let r = c.get(0, "/v1/files/wrong-secret.txt", ALICE);
    assert_error(&r, 502, "PEER_ERROR", "GET via N1 of a file on the misconfigured N2");
    assert!(r.text().contains("internal proxy secret"), "the message names the cause: {}", r.text());
    assert_body(&c.get(1, "/v1/files/wrong-secret.txt", ALICE), b"on node two", "N2 still serves its own file");
}
