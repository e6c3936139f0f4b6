//! Black-box test harness: starts the real `callfs` binary on 127.0.0.1 with a generated
//! configuration in a temporary directory, talks HTTP to it, and kills it (by pid) on drop.
//!
//! Environment:
//! * `CALLFS_TEST_PG_DSN` — a PostgreSQL *server* DSN (e.g. `postgres://postgres@127.0.0.1:5432/postgres`).
//!   Each postgres-backed node gets a fresh database `callfs_t_<hex>` created with `psql`.
//! * `CALLFS_TEST_SKIP_PG=1` — when the DSN is unset, postgres variants return early instead of failing.
#![allow(dead_code)]

pub mod cluster;

use std::collections::BTreeMap;
use std::fs::{self, OpenOptions};
use std::io::{BufRead, BufReader, Read, Write};
use std::net::{Shutdown, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use serde_json::{json, Value};
use sha2::{Digest, Sha256};

pub const ALICE_KEY: &str = "alice-test-key-5f1c2e9a7b3d4c6e";
pub const BOB_KEY: &str = "bob-test-key-8e2d4f6a1c3b5d7f9";
pub const INTERNAL_SECRET: &str = "internal-secret-3a9c7e1f5b2d8046";
pub const LINK_SECRET: &str = "link-secret-c4e6a8b0d2f41357";
/// Empty key = send no `Authorization` header.
pub const NO_AUTH: &str = "";
pub const INSTANCE_ID: &str = "test-node-1";
pub const SECRETS: [&str; 4] = [ALICE_KEY, BOB_KEY, INTERNAL_SECRET, LINK_SECRET];

pub const KIB: usize = 1024;
pub const MIB: usize = 1024 * 1024;

/// The exact §5.1 security headers (HSTS excluded: plain HTTP).
pub const SECURITY_HEADERS: [(&str, &str); 7] = [
    (
        "content-security-policy",
        "default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self' data:; object-src 'none'; base-uri 'self'; form-action 'self'",
    ),
    ("x-content-type-options", "nosniff"),
    ("x-frame-options", "DENY"),
    ("referrer-policy", "strict-origin-when-cross-origin"),
    (
        "permissions-policy",
        "geolocation=(), microphone=(), camera=(), payment=(), usb=(), magnetometer=(), gyroscope=(), accelerometer=()",
    ),
    ("cross-origin-opener-policy", "same-origin"),
    ("cross-origin-embedder-policy", "require-corp"),
];

// ---------------------------------------------------------------------------------------------
// Database selection
// ---------------------------------------------------------------------------------------------

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Db {
    Sqlite,
    Postgres,
}

/// True when the postgres variant should be skipped (DSN unset and `CALLFS_TEST_SKIP_PG=1`).
pub fn skip_postgres() -> bool {
    let unset = std::env::var("CALLFS_TEST_PG_DSN").map(|v| v.trim().is_empty()).unwrap_or(true);
    if unset && std::env::var("CALLFS_TEST_SKIP_PG").as_deref() == Ok("1") {
        eprintln!("SKIPPED: CALLFS_TEST_PG_DSN unset and CALLFS_TEST_SKIP_PG=1");
        return true;
    }
    false
}

/// The PostgreSQL server DSN; panics with a clear message when unset.
pub fn pg_server_dsn() -> String {
    match std::env::var("CALLFS_TEST_PG_DSN") {
        Ok(v) if !v.trim().is_empty() => v.trim().to_string(),
        _ => panic!(
            "CALLFS_TEST_PG_DSN is not set: postgres variants of the integration tests need a PostgreSQL server DSN, \
             e.g. CALLFS_TEST_PG_DSN=postgres://postgres@127.0.0.1:5432/postgres \
             (set CALLFS_TEST_SKIP_PG=1 to skip them explicitly)"
        ),
    }
}

/// Replace the database name of a `postgres://user@host:port/db?query` DSN.
pub fn dsn_with_db(dsn: &str, db: &str) -> String {
    let scheme_end = dsn.find("://").map(|i| i + 3).unwrap_or(0);
    let rest = &dsn[scheme_end..];
    let (authority, tail) = match rest.find('/') {
        Some(i) => (&rest[..i], &rest[i + 1..]),
        None => match rest.find('?') {
            Some(i) => (&rest[..i], &rest[i..]),
            None => (rest, ""),
        },
    };
    let query = match tail.find('?') {
        Some(i) => &tail[i..],
        None if tail.starts_with('?') => tail,
        None => "",
    };
    format!("{}{}/{}{}", &dsn[..scheme_end], authority, db, query)
}

/// Run one statement with psql; the unaligned, tuples-only output.
pub fn psql(dsn: &str, sql: &str) -> Result<String, String> {
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

struct PgDb {
    server_dsn: String,
    name: String,
}

impl PgDb {
    fn create() -> PgDb {
        let server_dsn = pg_server_dsn();
        let name = format!("callfs_t_{}", random_hex(12));
        psql(&server_dsn, &format!("CREATE DATABASE {name}"))
            .unwrap_or_else(|e| panic!("creating test database {name}: {e}"));
        PgDb { server_dsn, name }
    }

    fn dsn(&self) -> String {
        dsn_with_db(&self.server_dsn, &self.name)
    }
}

impl Drop for PgDb {
    fn drop(&mut self) {
        let _ = psql(&self.server_dsn, &format!("DROP DATABASE IF EXISTS {} WITH (FORCE)", self.name));
    }
}

// ---------------------------------------------------------------------------------------------
// Small utilities
// ---------------------------------------------------------------------------------------------

static COUNTER: AtomicU64 = AtomicU64::new(0);

/// Non-cryptographic random hex (time, pid and a counter mixed with splitmix64).
pub fn random_hex(bytes: usize) -> String {
    let nanos = SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_nanos() as u64).unwrap_or(0);
    let seed = nanos
        ^ ((std::process::id() as u64) << 32)
        ^ COUNTER.fetch_add(1, Ordering::Relaxed).wrapping_mul(0x9E37_79B9_7F4A_7C15);
    let mut rng = Prng::new(seed);
    let mut s = String::new();
    for _ in 0..bytes {
        s.push_str(&format!("{:02x}", rng.next_u64() as u8));
    }
    s
}

/// A free TCP port on 127.0.0.1 (bind port 0, read it, drop the listener).
pub fn free_port() -> u16 {
    let l = TcpListener::bind("127.0.0.1:0").expect("bind 127.0.0.1:0");
    l.local_addr().expect("local_addr").port()
}

/// splitmix64: deterministic pseudo-random bytes.
#[derive(Clone)]
pub struct Prng(u64);

impl Prng {
    pub fn new(seed: u64) -> Prng {
        Prng(seed)
    }
    pub fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }
    pub fn fill(&mut self, buf: &mut [u8]) {
        for chunk in buf.chunks_mut(8) {
            let v = self.next_u64().to_le_bytes();
            chunk.copy_from_slice(&v[..chunk.len()]);
        }
    }
}

pub fn random_bytes(n: usize, seed: u64) -> Vec<u8> {
    let mut v = vec![0u8; n];
    Prng::new(seed).fill(&mut v);
    v
}

/// 0x00, 0x01, …, 0xFF, 0x00, …
pub fn pattern_bytes(n: usize) -> Vec<u8> {
    (0..n).map(|i| (i % 256) as u8).collect()
}

pub fn sha256_hex(data: &[u8]) -> String {
    hex(&Sha256::digest(data))
}

pub fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// A deterministic pseudo-random `Read` of exactly `len` bytes, hashing what it hands out.
pub struct GenReader {
    rng: Prng,
    remaining: u64,
    buf: [u8; 8],
    buf_pos: usize,
}

impl GenReader {
    pub fn new(seed: u64, len: u64) -> GenReader {
        GenReader { rng: Prng::new(seed), remaining: len, buf: [0; 8], buf_pos: 8 }
    }
}

impl Read for GenReader {
    fn read(&mut self, out: &mut [u8]) -> std::io::Result<usize> {
        let n = (out.len() as u64).min(self.remaining) as usize;
        for b in out.iter_mut().take(n) {
            if self.buf_pos == 8 {
                self.buf = self.rng.next_u64().to_le_bytes();
                self.buf_pos = 0;
            }
            *b = self.buf[self.buf_pos];
            self.buf_pos += 1;
        }
        self.remaining -= n as u64;
        Ok(n)
    }
}

/// SHA-256 and length of everything a reader yields (streamed, never buffered whole).
pub fn hash_reader(mut r: impl Read) -> std::io::Result<(String, u64)> {
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

/// Shape matcher: in `shape`, `d` = ASCII digit, `h` = lowercase hex digit, anything else literal.
pub fn matches_shape(s: &str, shape: &str) -> bool {
    let (a, b): (Vec<char>, Vec<char>) = (s.chars().collect(), shape.chars().collect());
    a.len() == b.len()
        && a.iter().zip(b.iter()).all(|(c, p)| match p {
            'd' => c.is_ascii_digit(),
            'h' => c.is_ascii_digit() || ('a'..='f').contains(c),
            _ => c == p,
        })
}

pub fn is_lower_hex(s: &str, len: usize) -> bool {
    s.len() == len && s.chars().all(|c| c.is_ascii_digit() || ('a'..='f').contains(&c))
}

/// RFC 3339 UTC whole seconds with `Z`: `2025-07-15T10:30:00Z`.
pub fn is_rfc3339_seconds(s: &str) -> bool {
    matches_shape(s, "dddd-dd-ddTdd:dd:ddZ")
}

/// IMF-fixdate: `Sun, 06 Nov 1994 08:49:37 GMT`.
pub fn is_imf_fixdate(s: &str) -> bool {
    let days = ["Mon", "Tue", "Wed", "Thu", "Fri", "Sat", "Sun"];
    let months = ["Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec"];
    s.len() == 29
        && days.contains(&&s[0..3])
        && months.contains(&&s[8..11])
        && matches_shape(&s[3..8], ", dd ")
        && matches_shape(&s[11..], " dddd dd:dd:dd GMT")
}

/// Convert `2025-07-15T10:30:00Z` to the date/time part of an IMF-fixdate (`15 Jul 2025 10:30:00 GMT`).
pub fn rfc3339_to_imf_tail(s: &str) -> String {
    let months = ["Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec"];
    let m: usize = s[5..7].parse().unwrap();
    format!("{} {} {} {} GMT", &s[8..10], months[m - 1], &s[0..4], &s[11..19])
}

// ---------------------------------------------------------------------------------------------
// Responses and raw HTTP
// ---------------------------------------------------------------------------------------------

#[derive(Debug, Clone)]
pub struct Resp {
    pub status: u16,
    /// Header names lower-cased, in received order.
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
}

impl Resp {
    pub fn header(&self, name: &str) -> Option<&str> {
        let name = name.to_ascii_lowercase();
        self.headers.iter().find(|(k, _)| *k == name).map(|(_, v)| v.as_str())
    }
    pub fn header_all(&self, name: &str) -> Vec<&str> {
        let name = name.to_ascii_lowercase();
        self.headers.iter().filter(|(k, _)| *k == name).map(|(_, v)| v.as_str()).collect()
    }
    pub fn has_header(&self, name: &str) -> bool {
        self.header(name).is_some()
    }
    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }
    pub fn json(&self) -> Value {
        serde_json::from_slice(&self.body).unwrap_or_else(|e| {
            panic!("response body is not JSON ({e}); status {} body {:?}", self.status, self.text())
        })
    }
    pub fn sha256(&self) -> String {
        sha256_hex(&self.body)
    }
    /// Short description for assertion messages.
    pub fn describe(&self) -> String {
        let mut b = self.text();
        if b.len() > 400 {
            b.truncate(400);
            b.push('…');
        }
        format!("status {} body {:?}", self.status, b)
    }
}

/// Encode `data` as a chunked body with chunks of `chunk` bytes (plus the final zero chunk).
pub fn chunked_body(data: &[u8], chunk: usize) -> Vec<u8> {
    let mut out = Vec::with_capacity(data.len() + data.len() / chunk.max(1) * 12 + 16);
    for c in data.chunks(chunk.max(1)) {
        out.extend_from_slice(format!("{:x}\r\n", c.len()).as_bytes());
        out.extend_from_slice(c);
        out.extend_from_slice(b"\r\n");
    }
    out.extend_from_slice(b"0\r\n\r\n");
    out
}

/// Send one request verbatim (`target` goes on the request line untouched) with `Connection: close`.
/// `Content-Length` is added for a non-empty body unless `headers` already carry
/// `Content-Length` or `Transfer-Encoding`.
pub fn raw_http(port: u16, method: &str, target: &str, headers: &[(&str, &str)], body: &[u8]) -> std::io::Result<Resp> {
    let mut s = TcpStream::connect(("127.0.0.1", port))?;
    s.set_read_timeout(Some(Duration::from_secs(60)))?;
    s.set_write_timeout(Some(Duration::from_secs(60)))?;
    let mut head = format!("{method} {target} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nConnection: close\r\n");
    let has = |n: &str| headers.iter().any(|(k, _)| k.eq_ignore_ascii_case(n));
    for (k, v) in headers {
        head.push_str(&format!("{k}: {v}\r\n"));
    }
    if !body.is_empty() && !has("content-length") && !has("transfer-encoding") {
        head.push_str(&format!("Content-Length: {}\r\n", body.len()));
    }
    head.push_str("\r\n");
    let mut req = head.into_bytes();
    req.extend_from_slice(body);
    // A server may answer early (413, 409) and close: keep going to read what it said.
    let write_result = s.write_all(&req).and_then(|_| s.flush());
    let resp = read_response(&mut BufReader::new(&s), method == "HEAD");
    match (resp, write_result) {
        (Ok(r), _) => Ok(r),
        (Err(e), Ok(())) => Err(e),
        (Err(e), Err(we)) => Err(std::io::Error::new(e.kind(), format!("{e} (after write error: {we})"))),
    }
}

/// Read one HTTP/1.1 response (skipping 1xx interim responses).
pub fn read_response(r: &mut impl BufRead, is_head: bool) -> std::io::Result<Resp> {
    loop {
        let mut line = String::new();
        if r.read_line(&mut line)? == 0 {
            return Err(std::io::Error::new(
                std::io::ErrorKind::UnexpectedEof,
                "connection closed before a status line",
            ));
        }
        let line = line.trim_end().to_string();
        if line.is_empty() {
            continue;
        }
        let mut parts = line.splitn(3, ' ');
        let _version = parts.next();
        let status: u16 = parts
            .next()
            .and_then(|c| c.parse().ok())
            .ok_or_else(|| std::io::Error::new(std::io::ErrorKind::InvalidData, format!("bad status line {line:?}")))?;
        let mut headers = Vec::new();
        loop {
            let mut h = String::new();
            if r.read_line(&mut h)? == 0 {
                break;
            }
            let h = h.trim_end_matches(['\r', '\n']);
            if h.is_empty() {
                break;
            }
            if let Some((k, v)) = h.split_once(':') {
                headers.push((k.trim().to_ascii_lowercase(), v.trim().to_string()));
            }
        }
        if (100..200).contains(&status) {
            continue;
        }
        let mut resp = Resp { status, headers, body: Vec::new() };
        if is_head || status == 204 || status == 304 {
            return Ok(resp);
        }
        let chunked =
            resp.header("transfer-encoding").map(|v| v.to_ascii_lowercase().contains("chunked")).unwrap_or(false);
        if chunked {
            loop {
                let mut size_line = String::new();
                r.read_line(&mut size_line)?;
                let size_str = size_line.trim().split(';').next().unwrap_or("").trim();
                let size = usize::from_str_radix(size_str, 16).map_err(|_| {
                    std::io::Error::new(std::io::ErrorKind::InvalidData, format!("bad chunk size {size_line:?}"))
                })?;
                if size == 0 {
                    // trailers until empty line
                    loop {
                        let mut t = String::new();
                        if r.read_line(&mut t)? == 0 || t.trim().is_empty() {
                            break;
                        }
                    }
                    break;
                }
                let mut chunk = vec![0u8; size];
                r.read_exact(&mut chunk)?;
                resp.body.extend_from_slice(&chunk);
                let mut crlf = String::new();
                r.read_line(&mut crlf)?;
            }
        } else if let Some(len) = resp.header("content-length") {
            let len: usize =
                len.parse().map_err(|_| std::io::Error::new(std::io::ErrorKind::InvalidData, "bad content-length"))?;
            resp.body = vec![0u8; len];
            r.read_exact(&mut resp.body)?;
        } else {
            r.read_to_end(&mut resp.body)?;
        }
        return Ok(resp);
    }
}

fn ureq_response(r: ureq::Response) -> Resp {
    let status = r.status();
    let mut headers = Vec::new();
    for name in r.headers_names() {
        for v in r.all(&name) {
            headers.push((name.to_ascii_lowercase(), v.to_string()));
        }
    }
    let mut body = Vec::new();
    let _ = r.into_reader().read_to_end(&mut body);
    Resp { status, headers, body }
}

// ---------------------------------------------------------------------------------------------
// Error / header assertions
// ---------------------------------------------------------------------------------------------

/// `Content-Type` media type is `application/json` (parameters such as charset tolerated).
/// Every blob file under `<root>/blobs/<aa>/<bb>/` (storage layout revision 2), sorted.
pub fn blob_files(root: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    let Ok(level1) = fs::read_dir(root.join("blobs")) else {
        return out;
    };
    for a in level1.flatten() {
        for b in fs::read_dir(a.path()).into_iter().flatten().flatten() {
            for blob in fs::read_dir(b.path()).into_iter().flatten().flatten() {
                out.push(blob.path());
            }
        }
    }
    out.sort();
    out
}

/// The blob file holding exactly `content`, if one does.
pub fn blob_with(root: &Path, content: &[u8]) -> Option<PathBuf> {
    blob_files(root).into_iter().find(|p| fs::read(p).map(|b| b == content).unwrap_or(false))
}

pub fn is_json_content_type(resp: &Resp) -> bool {
    resp.header("content-type")
        .map(|v| v.split(';').next().unwrap_or("").trim().eq_ignore_ascii_case("application/json"))
        .unwrap_or(false)
}

/// §6: status, `Content-Type: application/json`, body with exactly `code` and `message` strings.
pub fn assert_error(resp: &Resp, status: u16, code: &str, ctx: &str) {
    assert_eq!(resp.status, status, "{ctx}: expected status {status} ({code}), got {}", resp.describe());
    assert!(
        is_json_content_type(resp),
        "{ctx}: error Content-Type must be application/json, got {:?}",
        resp.header("content-type")
    );
    let v = resp.json();
    let obj = v.as_object().unwrap_or_else(|| panic!("{ctx}: error body is not an object: {v}"));
    let mut keys: Vec<&String> = obj.keys().collect();
    keys.sort();
    assert_eq!(keys, vec!["code", "message"], "{ctx}: error body must have exactly code and message, got {v}");
    assert_eq!(obj["code"].as_str(), Some(code), "{ctx}: expected code {code}, got {v}");
    assert!(
        obj["message"].as_str().map(|m| !m.is_empty()).unwrap_or(false),
        "{ctx}: message must be a non-empty string: {v}"
    );
}

/// Like `assert_error` but for any of several statuses/codes (spec alternatives).
pub fn assert_error_shape(resp: &Resp, ctx: &str) {
    assert!(
        is_json_content_type(resp),
        "{ctx}: error Content-Type must be application/json, got {:?} ({})",
        resp.header("content-type"),
        resp.describe()
    );
    let v = resp.json();
    let obj = v.as_object().expect("error body object");
    assert_eq!(obj.len(), 2, "{ctx}: exactly code and message: {v}");
    assert!(obj.get("code").map(|c| c.is_string()).unwrap_or(false), "{ctx}: {v}");
    assert!(obj.get("message").map(|c| c.is_string()).unwrap_or(false), "{ctx}: {v}");
}

pub fn assert_security_headers(resp: &Resp, ctx: &str) {
    for (name, value) in SECURITY_HEADERS {
        assert_eq!(resp.header(name), Some(value), "{ctx}: security header {name} (status {})", resp.status);
    }
    assert!(
        resp.header("strict-transport-security").is_none(),
        "{ctx}: Strict-Transport-Security must be absent on plain HTTP"
    );
}

// ---------------------------------------------------------------------------------------------
// Metrics parsing
// ---------------------------------------------------------------------------------------------

/// One sample: name, labels, value.
pub fn parse_metrics(text: &str) -> Vec<(String, BTreeMap<String, String>, f64)> {
    let mut out = Vec::new();
    for line in text.lines() {
        let line = line.trim();
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        let name_end = line.find(['{', ' ']).unwrap_or(line.len());
        let name = line[..name_end].to_string();
        let mut labels = BTreeMap::new();
        let mut rest = &line[name_end..];
        if rest.starts_with('{') {
            let bytes: Vec<char> = rest.chars().collect();
            let mut i = 1;
            let mut consumed = rest.len();
            while i < bytes.len() {
                while i < bytes.len() && (bytes[i] == ',' || bytes[i] == ' ') {
                    i += 1;
                }
                if i < bytes.len() && bytes[i] == '}' {
                    consumed = bytes[..=i].iter().map(|c| c.len_utf8()).sum();
                    break;
                }
                let mut key = String::new();
                while i < bytes.len() && bytes[i] != '=' {
                    key.push(bytes[i]);
                    i += 1;
                }
                i += 1; // '='
                i += 1; // opening quote
                let mut val = String::new();
                while i < bytes.len() && bytes[i] != '"' {
                    if bytes[i] == '\\' && i + 1 < bytes.len() {
                        i += 1;
                        val.push(match bytes[i] {
                            'n' => '\n',
                            c => c,
                        });
                    } else {
                        val.push(bytes[i]);
                    }
                    i += 1;
                }
                i += 1; // closing quote
                labels.insert(key.trim().to_string(), val);
            }
            rest = &rest[consumed..];
        }
        let value_str = rest.split_whitespace().next().unwrap_or("");
        let value = match value_str {
            "+Inf" => f64::INFINITY,
            "-Inf" => f64::NEG_INFINITY,
            "NaN" => f64::NAN,
            v => match v.parse::<f64>() {
                Ok(x) => x,
                Err(_) => continue,
            },
        };
        out.push((name, labels, value));
    }
    out
}

/// Sum of every sample named `name` whose labels include all of `labels` (0 when none).
pub fn metric_value(text: &str, name: &str, labels: &[(&str, &str)]) -> f64 {
    parse_metrics(text)
        .into_iter()
        .filter(|(n, l, _)| n == name && labels.iter().all(|(k, v)| l.get(*k).map(|x| x == v).unwrap_or(false)))
        .map(|(_, _, v)| v)
        .sum()
}

/// Label sets of every sample named `name`.
pub fn metric_series(text: &str, name: &str) -> Vec<BTreeMap<String, String>> {
    parse_metrics(text).into_iter().filter(|(n, _, _)| n == name).map(|(_, l, _)| l).collect()
}

// ---------------------------------------------------------------------------------------------
// Configuration
// ---------------------------------------------------------------------------------------------

/// Set `a.b.c` in a JSON object tree, creating objects on the way.
pub fn set_path(root: &mut Value, dotted: &str, v: Value) {
    let mut cur = root;
    let parts: Vec<&str> = dotted.split('.').collect();
    for (i, p) in parts.iter().enumerate() {
        if !cur.is_object() {
            *cur = json!({});
        }
        let obj = cur.as_object_mut().unwrap();
        if i == parts.len() - 1 {
            obj.insert(p.to_string(), v);
            return;
        }
        cur = obj.entry(p.to_string()).or_insert_with(|| json!({}));
    }
}

pub fn remove_path(root: &mut Value, dotted: &str) {
    let parts: Vec<&str> = dotted.split('.').collect();
    let mut cur = root;
    for p in &parts[..parts.len() - 1] {
        match cur.get_mut(*p) {
            Some(c) => cur = c,
            None => return,
        }
    }
    if let Some(obj) = cur.as_object_mut() {
        obj.remove(*parts.last().unwrap());
    }
}

/// Render a JSON tree as block-style YAML (scalars and arrays as JSON flow values, which YAML accepts).
pub fn to_yaml(v: &Value) -> String {
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
    let mut s = String::from("# generated by tests/common\n");
    emit(v, 0, &mut s);
    s
}

/// A valid single-node configuration (plain HTTP, alice and bob, SQLite, localfs, JSON logs).
pub fn base_config(dir: &Path, port: u16) -> Value {
    json!({
        "server": {
            "listen_addr": format!("127.0.0.1:{port}"),
            "protocol": "http",
            "external_url": format!("http://127.0.0.1:{port}"),
        },
        "auth": {
            "api_key_users": {"alice": ALICE_KEY, "bob": BOB_KEY},
            "internal_proxy_secret": INTERNAL_SECRET,
            "single_use_link_secret": LINK_SECRET,
        },
        "backend": {
            "default_backend": "localfs",
            "localfs_root_path": dir.join("data").to_string_lossy(),
        },
        "metadata_store": {
            "type": "sqlite",
            "sqlite_path": dir.join("callfs.sqlite3").to_string_lossy(),
        },
        "log": {"level": "info", "format": "json"},
        "instance_discovery": {"instance_id": INSTANCE_ID},
    })
}

fn substitute(v: &mut Value, subs: &[(&str, String)]) {
    match v {
        Value::String(s) => {
            for (k, r) in subs {
                if s.contains(k) {
                    *s = s.replace(k, r);
                }
            }
        }
        Value::Array(a) => a.iter_mut().for_each(|x| substitute(x, subs)),
        Value::Object(o) => o.values_mut().for_each(|x| substitute(x, subs)),
        _ => {}
    }
}

/// A `Command` for the binary with every inherited `CALLFS_*` (and `RUST_LOG`) removed.
pub fn callfs_cmd() -> Command {
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

/// How to start a node. String values in `set` and `env` may use the placeholders
/// `{port}` (API port), `{port2}` (a second free port) and `{dir}` (the node's temp dir).
#[derive(Clone, Debug)]
pub struct NodeOptions {
    pub db: Db,
    pub debug: bool,
    pub sets: Vec<(String, Value)>,
    pub removes: Vec<String>,
    pub env: Vec<(String, String)>,
    /// Port to poll for /health instead of the configured one (`{port2}` when `use_port2`).
    pub use_port2: bool,
}

thread_local! {
    /// Settings every `NodeOptions::new` of this test thread starts from: how the `*_s3` variants
    /// of a suite (`s3_db_tests!`) run its unchanged tests with `default_backend: s3`.
    static BASE_SETS: std::cell::RefCell<Vec<(String, Value)>> = const { std::cell::RefCell::new(Vec::new()) };
}

/// While alive, nodes started by this thread get `sets` first (a test's own `set`s still win).
pub struct BaseSettings(());

impl BaseSettings {
    pub fn apply(sets: Vec<(String, Value)>) -> BaseSettings {
        BASE_SETS.with(|base| *base.borrow_mut() = sets);
        BaseSettings(())
    }
}

/// The `backend_type` new files of this test thread get: `s3` in the `*_s3` variants.
pub fn default_backend() -> &'static str {
    let s3 = BASE_SETS.with(|base| base.borrow().iter().any(|(k, v)| k == "backend.default_backend" && v == "s3"));
    if s3 {
        "s3"
    } else {
        "localfs"
    }
}

impl Drop for BaseSettings {
    fn drop(&mut self) {
        BASE_SETS.with(|base| base.borrow_mut().clear());
    }
}

impl NodeOptions {
    pub fn new(db: Db) -> NodeOptions {
        let sets = BASE_SETS.with(|base| base.borrow().clone());
        NodeOptions { db, debug: false, sets, removes: Vec::new(), env: Vec::new(), use_port2: false }
    }
    /// `log.level: debug`.
    pub fn debug(mut self) -> Self {
        self.debug = true;
        self
    }
    pub fn set(mut self, key: &str, v: Value) -> Self {
        self.sets.push((key.to_string(), v));
        self
    }
    pub fn remove(mut self, key: &str) -> Self {
        self.removes.push(key.to_string());
        self
    }
    pub fn env(mut self, k: &str, v: &str) -> Self {
        self.env.push((k.to_string(), v.to_string()));
        self
    }
    /// The node is expected to listen on `{port2}` (e.g. overridden by an env var).
    pub fn listen_on_port2(mut self) -> Self {
        self.use_port2 = true;
        self
    }
}

// ---------------------------------------------------------------------------------------------
// The node
// ---------------------------------------------------------------------------------------------

pub struct Node {
    child: Option<Child>,
    pg: Option<PgDb>,
    agent: ureq::Agent,
    /// Port the node answers on.
    pub port: u16,
    /// Port written in the file's `server.listen_addr`.
    pub file_port: u16,
    pub port2: u16,
    pub config: Value,
    pub config_path: PathBuf,
    pub log_path: PathBuf,
    pub stdout_path: PathBuf,
    pub data_root: PathBuf,
    pub env: Vec<(String, String)>,
    pub db: Db,
    // Last field: removed after the process is killed and the database dropped.
    pub dir: tempfile::TempDir,
}

impl Node {
    pub fn start(opts: NodeOptions) -> Node {
        let dir = tempfile::Builder::new().prefix("callfs-test-").tempdir().expect("tempdir");
        let port = free_port();
        let port2 = free_port();
        let mut config = base_config(dir.path(), port);
        if opts.debug {
            set_path(&mut config, "log.level", json!("debug"));
        }
        let pg = match opts.db {
            Db::Sqlite => None,
            Db::Postgres => {
                let pg = PgDb::create();
                set_path(&mut config, "metadata_store", json!({"type": "postgres", "dsn": pg.dsn()}));
                Some(pg)
            }
        };
        for k in &opts.removes {
            remove_path(&mut config, k);
        }
        for (k, v) in &opts.sets {
            set_path(&mut config, k, v.clone());
        }
        let subs = [
            ("{port}", port.to_string()),
            ("{port2}", port2.to_string()),
            ("{dir}", dir.path().to_string_lossy().into_owned()),
        ];
        substitute(&mut config, &subs);
        let env: Vec<(String, String)> = opts
            .env
            .iter()
            .map(|(k, v)| {
                let mut v = Value::String(v.clone());
                substitute(&mut v, &subs);
                (k.clone(), v.as_str().unwrap().to_string())
            })
            .collect();
        let config_path = dir.path().join("config.yaml");
        fs::write(&config_path, to_yaml(&config)).expect("write config");
        let data_root = config
            .pointer("/backend/localfs_root_path")
            .and_then(|v| v.as_str())
            .map(PathBuf::from)
            .unwrap_or_else(|| dir.path().join("data"));
        let agent = ureq::AgentBuilder::new()
            .timeout_connect(Duration::from_secs(5))
            .timeout_read(Duration::from_secs(120))
            .timeout_write(Duration::from_secs(120))
            .redirects(0)
            .max_idle_connections(0)
            .build();
        let mut node = Node {
            child: None,
            pg,
            agent,
            port: if opts.use_port2 { port2 } else { port },
            file_port: port,
            port2,
            config,
            config_path,
            log_path: dir.path().join("callfs.log"),
            stdout_path: dir.path().join("callfs.stdout"),
            data_root,
            env,
            db: opts.db,
            dir,
        };
        node.spawn();
        node
    }

    fn spawn(&mut self) {
        let log = OpenOptions::new().create(true).append(true).open(&self.log_path).expect("open log file");
        let out = OpenOptions::new().create(true).append(true).open(&self.stdout_path).expect("open stdout file");
        let mut cmd = callfs_cmd();
        cmd.arg("server").arg("--config").arg(&self.config_path).current_dir(self.dir.path()).stdout(out).stderr(log);
        for (k, v) in &self.env {
            cmd.env(k, v);
        }
        let child = cmd.spawn().expect("spawn callfs binary");
        self.child = Some(child);
        self.wait_healthy();
    }

    fn wait_healthy(&mut self) {
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            if let Some(child) = self.child.as_mut() {
                if let Ok(Some(status)) = child.try_wait() {
                    panic!(
                        "callfs exited during start-up ({status}); log:\n{}\nstdout:\n{}",
                        self.log_text(),
                        fs::read_to_string(&self.stdout_path).unwrap_or_default()
                    );
                }
            }
            if let Ok(r) = raw_http(self.port, "GET", "/health", &[], b"") {
                if r.status == 200 {
                    return;
                }
            }
            if Instant::now() > deadline {
                panic!(
                    "callfs did not answer GET /health with 200 on port {} within 20 s; log:\n{}",
                    self.port,
                    self.log_text()
                );
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(|c| c.id())
    }

    /// SIGKILL the node (by pid) and reap it.
    pub fn kill9(&mut self) {
        if let Some(mut child) = self.child.take() {
            unsafe {
                libc::kill(child.id() as libc::pid_t, libc::SIGKILL);
            }
            let _ = child.wait();
        }
    }

    /// Kill (if running) and start again on the same directory, config and database.
    pub fn restart(&mut self) {
        self.kill9();
        self.spawn();
    }

    pub fn url(&self, path: &str) -> String {
        format!("http://127.0.0.1:{}{}", self.port, path)
    }

    /// A request through ureq (which normalises `.`/`..`; use `raw` for verbatim paths).
    /// `key == ""` sends no `Authorization` header.
    pub fn request(&self, method: &str, path: &str, key: &str, headers: &[(&str, &str)], body: Option<&[u8]>) -> Resp {
        let mut req = self.agent.request(method, &self.url(path));
        if !key.is_empty() {
            req = req.set("Authorization", &format!("Bearer {key}"));
        }
        for (k, v) in headers {
            req = req.set(k, v);
        }
        let result = match body {
            Some(b) => req.send_bytes(b),
            None => req.call(),
        };
        match result {
            Ok(r) => ureq_response(r),
            Err(ureq::Error::Status(_, r)) => ureq_response(r),
            Err(e) => panic!("{method} {path}: transport error: {e}"),
        }
    }

    pub fn get(&self, path: &str, key: &str) -> Resp {
        self.request("GET", path, key, &[], None)
    }
    pub fn get_h(&self, path: &str, key: &str, headers: &[(&str, &str)]) -> Resp {
        self.request("GET", path, key, headers, None)
    }
    pub fn head(&self, path: &str, key: &str) -> Resp {
        self.request("HEAD", path, key, &[], None)
    }
    pub fn delete(&self, path: &str, key: &str) -> Resp {
        self.request("DELETE", path, key, &[], None)
    }
    pub fn post(&self, path: &str, key: &str, body: &[u8]) -> Resp {
        self.request("POST", path, key, &[], Some(body))
    }
    pub fn put(&self, path: &str, key: &str, body: &[u8]) -> Resp {
        self.request("PUT", path, key, &[], Some(body))
    }
    /// PATCH with `Content-Type: application/json` and the given raw body.
    pub fn patch(&self, path: &str, key: &str, body: &[u8]) -> Resp {
        self.request("PATCH", path, key, &[("Content-Type", "application/json")], Some(body))
    }
    pub fn patch_json(&self, path: &str, key: &str, v: &Value) -> Resp {
        self.patch(path, key, v.to_string().as_bytes())
    }

    /// PUT/POST streaming from a reader with an explicit `Content-Length`.
    pub fn upload_reader(&self, method: &str, path: &str, key: &str, len: u64, reader: impl Read) -> Resp {
        let mut req = self.agent.request(method, &self.url(path)).set("Content-Length", &len.to_string());
        if !key.is_empty() {
            req = req.set("Authorization", &format!("Bearer {key}"));
        }
        match req.send(reader) {
            Ok(r) => ureq_response(r),
            Err(ureq::Error::Status(_, r)) => ureq_response(r),
            Err(e) => panic!("{method} {path}: transport error: {e}"),
        }
    }

    /// GET and hash the body while reading: (status, headers-only Resp, sha256, byte count).
    pub fn get_hashed(&self, path: &str, key: &str) -> (Resp, String, u64) {
        let mut req = self.agent.get(&self.url(path));
        if !key.is_empty() {
            req = req.set("Authorization", &format!("Bearer {key}"));
        }
        let r = match req.call() {
            Ok(r) => r,
            Err(ureq::Error::Status(_, r)) => r,
            Err(e) => panic!("GET {path}: transport error: {e}"),
        };
        let status = r.status();
        let mut headers = Vec::new();
        for name in r.headers_names() {
            for v in r.all(&name) {
                headers.push((name.to_ascii_lowercase(), v.to_string()));
            }
        }
        let (sha, n) = hash_reader(r.into_reader()).expect("read body");
        (Resp { status, headers, body: Vec::new() }, sha, n)
    }

    /// Verbatim request line; `key == ""` sends no `Authorization` header.
    pub fn raw(&self, method: &str, target: &str, key: &str, headers: &[(&str, &str)], body: &[u8]) -> Resp {
        let auth = format!("Bearer {key}");
        let mut h: Vec<(&str, &str)> = Vec::new();
        if !key.is_empty() {
            h.push(("Authorization", auth.as_str()));
        }
        h.extend_from_slice(headers);
        raw_http(self.port, method, target, &h, body).unwrap_or_else(|e| panic!("raw {method} {target}: {e}"))
    }

    /// Chunked upload over raw HTTP.
    pub fn raw_chunked(&self, method: &str, target: &str, key: &str, data: &[u8], chunk: usize) -> Resp {
        self.raw(method, target, key, &[("Transfer-Encoding", "chunked")], &chunked_body(data, chunk))
    }

    /// Open a raw connection and send only the request head (for partial-body tests).
    pub fn raw_open(&self, method: &str, target: &str, key: &str, headers: &[(&str, &str)]) -> TcpStream {
        let mut s = TcpStream::connect(("127.0.0.1", self.port)).expect("connect");
        s.set_write_timeout(Some(Duration::from_secs(60))).unwrap();
        s.set_read_timeout(Some(Duration::from_secs(60))).unwrap();
        let mut head = format!("{method} {target} HTTP/1.1\r\nHost: 127.0.0.1:{}\r\nConnection: close\r\n", self.port);
        if !key.is_empty() {
            head.push_str(&format!("Authorization: Bearer {key}\r\n"));
        }
        for (k, v) in headers {
            head.push_str(&format!("{k}: {v}\r\n"));
        }
        head.push_str("\r\n");
        s.write_all(head.as_bytes()).expect("write head");
        s
    }

    pub fn metrics(&self) -> String {
        let r = self.get("/metrics", NO_AUTH);
        assert_eq!(r.status, 200, "GET /metrics: {}", r.describe());
        r.text()
    }

    /// Directory listing JSON (`/v1/directories` + `path_and_query`), asserting 200.
    pub fn list(&self, path_and_query: &str, key: &str) -> Value {
        let r = self.get(&format!("/v1/directories{path_and_query}"), key);
        assert_eq!(r.status, 200, "list {path_and_query}: {}", r.describe());
        r.json()
    }

    pub fn log_text(&self) -> String {
        fs::read(&self.log_path).map(|b| String::from_utf8_lossy(&b).into_owned()).unwrap_or_default()
    }

    /// Every log line that parses as a JSON object.
    pub fn log_lines(&self) -> Vec<Value> {
        self.log_text()
            .lines()
            .filter_map(|l| serde_json::from_str::<Value>(l).ok())
            .filter(|v| v.is_object())
            .collect()
    }

    /// Poll the log for a line matching `pred` (up to `timeout`).
    pub fn wait_log(&self, timeout: Duration, pred: impl Fn(&Value) -> bool) -> Option<Value> {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(v) = self.log_lines().into_iter().find(|v| pred(v)) {
                return Some(v);
            }
            if Instant::now() > deadline {
                return None;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// Every `.callfs-tmp-*` file under the localfs root.
    pub fn tmp_files(&self) -> Vec<PathBuf> {
        fn walk(p: &Path, out: &mut Vec<PathBuf>) {
            if let Ok(rd) = fs::read_dir(p) {
                for e in rd.flatten() {
                    let path = e.path();
                    let name = e.file_name().to_string_lossy().into_owned();
                    if name.starts_with(".callfs-tmp-") {
                        out.push(path.clone());
                    }
                    if e.file_type().map(|t| t.is_dir()).unwrap_or(false) {
                        walk(&path, out);
                    }
                }
            }
        }
        let mut out = Vec::new();
        walk(&self.data_root, &mut out);
        out
    }
}

impl Drop for Node {
    fn drop(&mut self) {
        self.kill9();
        // `pg` drops next (database removed), then `dir`.
    }
}

/// Close a raw connection abruptly (both directions).
pub fn abort_stream(s: TcpStream) {
    let _ = s.shutdown(Shutdown::Both);
    drop(s);
}

/// The same suites with `backend.default_backend: s3`: `sqlite_s3::<name>` and `postgres_s3::<name>`
/// (named so that a `sqlite::` filter does not pick them). Each test gets its own S3 server with
/// a fresh bucket (`S3Server::start`: a local s3s-fs, or the external S3 of `CALLFS_TEST_S3_*`),
/// killed after the test's nodes. The including file declares `mod s3server` (common/s3server.rs).
#[allow(unused_macros)]
macro_rules! s3_db_tests {
    ($($name:ident),* $(,)?) => {
        mod sqlite_s3 {
            $(
                #[test]
                fn $name() {
                    let s3 = $crate::s3server::S3Server::start();
                    let _base = $crate::common::BaseSettings::apply(s3.settings());
                    super::$name($crate::common::Db::Sqlite)
                }
            )*
        }
        mod postgres_s3 {
            $(
                #[test]
                fn $name() {
                    if $crate::common::skip_postgres() {
                        return;
                    }
                    let s3 = $crate::s3server::S3Server::start();
                    let _base = $crate::common::BaseSettings::apply(s3.settings());
                    super::$name($crate::common::Db::Postgres)
                }
            )*
        }
    };
}

/// Generate test suites running on both databases: `sqlite::<name>` and `postgres::<name>`,
/// each calling `fn <name>(db: Db)` of the including file.
#[allow(unused_macros)]
macro_rules! db_tests {
    ($($name:ident),* $(,)?) => {
        mod sqlite {
            $(
                #[test]
                fn $name() {
                    super::$name($crate::common::Db::Sqlite)
                }
            )*
        }
        mod postgres {
            $(
                #[test]
                fn $name() {
                    if $crate::common::skip_postgres() {
                        return;
                    }
                    super::$name($crate::common::Db::Postgres)
                }
            )*
        }
    };
}
