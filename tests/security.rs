//! Black-box tests for issue 8, "One decision per request": one test per finding, each asserting
//! the exact status, the victim's bytes (SHA-256) and owner, and the node's log, plus property
//! tests of the endpoint classification (on a running node and on `Endpoint::classify` itself).
//! Run with `cargo test --release --test security -- --test-threads=2`; the PostgreSQL variants
//! need `CALLFS_TEST_PG_DSN` (`scripts/with-postgres.sh`).

#[macro_use]
mod common;

use std::collections::{BTreeMap, BTreeSet};
use std::io::{BufReader, Write};
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use actix_web::http::Method;
use callfs::http::endpoint::{Endpoint, Guard};
use callfs::path::{parse_json_path, MAX_PATH_BYTES};
use common::*;
use proptest::prelude::*;
use proptest::test_runner::{Config as ProptestConfig, TestCaseError, TestRunner};
use serde_json::{json, Value};

db_tests!(put_is_reauthorised_at_commit);

// ---------------------------------------------------------------------------------------------
// Helpers
// ---------------------------------------------------------------------------------------------

fn sqlite_node() -> Node {
    Node::start(NodeOptions::new(Db::Sqlite))
}

fn create(n: &Node, path: &str, key: &str, body: &[u8]) {
    let r = n.post(&format!("/v1/files{path}"), key, body);
    assert_eq!(r.status, 201, "POST {path}: {}", r.describe());
}

/// The file's bytes (by SHA-256), size and owner are exactly `data` and `owner`.
fn assert_file(n: &Node, path: &str, data: &[u8], owner: &str, ctx: &str) {
    let r = n.get(&format!("/v1/files{path}"), ALICE_KEY);
    assert_eq!(r.status, 200, "{ctx}: GET {path}: {}", r.describe());
    assert_eq!(r.sha256(), sha256_hex(data), "{ctx}: bytes of {path} (sha256)");
    assert_eq!(r.header("x-callfs-owner"), Some(owner), "{ctx}: owner of {path}");
    assert_eq!(r.header("x-callfs-size"), Some(data.len().to_string().as_str()), "{ctx}: size of {path}");
}

fn assert_absent(n: &Node, path: &str, ctx: &str) {
    let r = n.get(&format!("/v1/files{path}"), ALICE_KEY);
    assert_error(&r, 404, "FILE_NOT_FOUND", &format!("{ctx}: {path} must not exist"));
}

fn settle_metrics(n: &Node) -> String {
    // Requests are counted when their response completes; give the node a moment.
    std::thread::sleep(Duration::from_millis(400));
    n.metrics()
}

/// Every log line is JSON (a panic printed raw would not be) and none reports a panic.
fn assert_no_panic_logged(n: &Node, ctx: &str) {
    let text = n.log_text();
    for line in text.lines().filter(|l| !l.trim().is_empty()) {
        assert!(!line.contains("panicked at"), "{ctx}: a panic reached the log: {line}");
        let v: Value =
            serde_json::from_str(line).unwrap_or_else(|e| panic!("{ctx}: log line is not JSON ({e}): {line}"));
        let msg = v["msg"].as_str().unwrap_or("").to_ascii_lowercase();
        assert!(!msg.contains("panic") && v.get("panic").is_none(), "{ctx}: a panic was logged: {line}");
    }
}

/// True when the server has written something to `s` (without consuming it).
fn has_response(s: &TcpStream) -> bool {
    s.set_nonblocking(true).expect("set_nonblocking");
    let mut b = [0u8; 1];
    let ready = matches!(s.peek(&mut b), Ok(n) if n > 0);
    s.set_nonblocking(false).expect("set_nonblocking");
    ready
}

fn read_resp(s: &TcpStream, timeout: Duration) -> std::io::Result<Resp> {
    s.set_read_timeout(Some(timeout))?;
    read_response(&mut BufReader::new(s), false)
}

/// Every directory below `root` (relative paths), sorted.
fn dirs_under(root: &Path) -> BTreeSet<PathBuf> {
    fn walk(root: &Path, p: &Path, out: &mut BTreeSet<PathBuf>) {
        if let Ok(rd) = std::fs::read_dir(p) {
            for e in rd.flatten() {
                if e.file_type().map(|t| t.is_dir()).unwrap_or(false) {
                    let path = e.path();
                    out.insert(path.strip_prefix(root).unwrap_or(&path).to_path_buf());
                    walk(root, &path, out);
                }
            }
        }
    }
    let mut out = BTreeSet::new();
    walk(root, root, &mut out);
    out
}

fn wait_no_tmp(n: &Node, ctx: &str) {
    let deadline = Instant::now() + Duration::from_secs(5);
    while !n.tmp_files().is_empty() {
        assert!(Instant::now() < deadline, "{ctx}: temporary files left behind: {:?}", n.tmp_files());
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// `%XX` for every byte of `s`.
fn encode_all(s: &str, lower: bool) -> String {
    s.bytes().map(|b| if lower { format!("%{b:02x}") } else { format!("%{b:02X}") }).collect()
}

// ---------------------------------------------------------------------------------------------
// 1. Encoded routes: what is authenticated is what is served
// ---------------------------------------------------------------------------------------------

/// Issue 8's reproduction: `/%76%31/internal/localfs-move` decoded to the internal byte-move
/// endpoint and ran without credentials. No spelling that is not literally a route may reach a
/// handler: 404 (counted as `unmatched`) with or without credentials, and no byte moves. (The
/// byte-move route itself is gone since blobs; its literal path is now an internal 404, still
/// 401 without a key and 403 for an ordinary one.)
#[test]
fn encoded_internal_route_is_not_served() {
    let n = sqlite_node();
    let secret = random_bytes(10 * KIB, 81);
    let evil = b"bob's replacement bytes".to_vec();
    create(&n, "/alice/secret.txt", ALICE_KEY, &secret);
    create(&n, "/bob/evil.txt", BOB_KEY, &evil);
    let steal = json!({"from": "/alice/secret.txt", "to": "/away"}).to_string();
    let swap = json!({"from": "/bob/evil.txt", "to": "/alice/secret.txt"}).to_string();
    let json_ct = [("Content-Type", "application/json")];
    let before = settle_metrics(&n);

    // Not literally under /v1/: no route, no authentication needed to learn that.
    let unrouted = [
        "/%76%31/internal/localfs-move",
        "/%76%31/%69nternal/localfs-move",
        "/%2fv1/internal/localfs-move",
        "//v1/internal/localfs-move",
        "/v1%2Finternal/localfs-move",
        "/V1/internal/localfs-move",
        "/./v1/internal/localfs-move",
        "/x/../v1/internal/localfs-move",
    ];
    let mut sent_404 = 0.0;
    for target in unrouted {
        for (who, key) in [("no key", NO_AUTH), ("bob", BOB_KEY), ("internal secret", INTERNAL_SECRET)] {
            for body in [&steal, &swap] {
                let r = n.raw("POST", target, key, &json_ct, body.as_bytes());
                assert_error(&r, 404, "NOT_FOUND", &format!("POST {target} as {who} with {body}"));
                sent_404 += 1.0;
            }
        }
        assert_file(&n, "/alice/secret.txt", &secret, "alice", &format!("after POST {target}"));
    }
    // Literally under /v1/internal/ but not the route: the internal guard still applies.
    let internal_unrouted = [
        "/v1/internal/localfs%2Dmove",
        "/v1/internal/localfs%2dmove",
        "/v1/internal/./localfs-move",
        "/v1/internal//localfs-move",
    ];
    for target in internal_unrouted {
        let r = n.raw("POST", target, NO_AUTH, &json_ct, steal.as_bytes());
        assert_error(&r, 401, "AUTHENTICATION_FAILED", &format!("POST {target} without a key"));
        let r = n.raw("POST", target, BOB_KEY, &json_ct, swap.as_bytes());
        assert_error(&r, 403, "PERMISSION_DENIED", &format!("POST {target} with bob's key"));
        let r = n.raw("POST", target, INTERNAL_SECRET, &json_ct, swap.as_bytes());
        assert_error(&r, 404, "NOT_FOUND", &format!("POST {target} with the internal secret"));
    }
    // Under /v1/ but not internal: authentication first, then no route.
    for target in ["/v1/%69nternal/localfs-move", "/v1/Internal/localfs-move"] {
        let r = n.raw("POST", target, NO_AUTH, &json_ct, steal.as_bytes());
        assert_error(&r, 401, "AUTHENTICATION_FAILED", &format!("POST {target} without a key"));
        let r = n.raw("POST", target, BOB_KEY, &json_ct, swap.as_bytes());
        assert_error(&r, 404, "NOT_FOUND", &format!("POST {target} with bob's key"));
    }
    // The literal route: 401 without a key, 403 for an ordinary key.
    let literal = "/v1/internal/localfs-move";
    for body in [&steal, &swap] {
        assert_error(
            &n.raw("POST", literal, NO_AUTH, &json_ct, body.as_bytes()),
            401,
            "AUTHENTICATION_FAILED",
            "no key",
        );
        assert_error(&n.raw("POST", literal, BOB_KEY, &json_ct, body.as_bytes()), 403, "PERMISSION_DENIED", "bob");
    }
    assert_error(
        &n.raw("DELETE", "/%76%31/internal/localfs/alice/secret.txt", NO_AUTH, &[], b""),
        404,
        "NOT_FOUND",
        "encoded internal delete without a key",
    );
    assert_error(
        &n.raw("DELETE", "/v1/internal/localfs/alice/secret.txt", BOB_KEY, &[], b""),
        403,
        "PERMISSION_DENIED",
        "internal delete with bob's key",
    );

    assert_file(&n, "/alice/secret.txt", &secret, "alice", "victim after every attempt");
    assert_file(&n, "/bob/evil.txt", &evil, "bob", "bob's file after every attempt");
    assert_absent(&n, "/away", "nothing moved");
    assert_no_panic_logged(&n, "encoded internal routes");

    let after = settle_metrics(&n);
    let delta = |labels: &[(&str, &str)]| {
        metric_value(&after, "callfs_http_requests_total", labels)
            - metric_value(&before, "callfs_http_requests_total", labels)
    };
    let unmatched_posts = delta(&[("method", "POST"), ("path", "unmatched"), ("status_code", "404")]);
    // The unrouted POSTs plus the bob / internal-secret 404s under /v1/.
    let expected = sent_404 + internal_unrouted.len() as f64 + 2.0;
    assert_eq!(unmatched_posts, expected, "encoded requests are counted under path=\"unmatched\"");
    for status in ["200", "201", "204"] {
        assert_eq!(delta(&[("method", "POST"), ("status_code", status)]), 0.0, "no POST was answered {status}");
    }
}

/// The file under `dir` (recursively) whose bytes hash to `sha`.
fn find_file_by_sha(dir: &Path, sha: &str) -> Option<PathBuf> {
    for e in std::fs::read_dir(dir).ok()?.flatten() {
        let path = e.path();
        if path.is_dir() {
            if let Some(found) = find_file_by_sha(&path, sha) {
                return Some(found);
            }
        } else if std::fs::read(&path).map(|b| sha256_hex(&b) == sha).unwrap_or(false) {
            return Some(path);
        }
    }
    None
}

/// The internal blob endpoint serves bytes by id to the internal secret only; no spelling of it
/// that is not literally `/v1/internal/blobs/` reaches it, with or without credentials.
#[test]
fn encoded_internal_blob_route_is_not_served() {
    let n = sqlite_node();
    let secret = random_bytes(10 * KIB, 86);
    create(&n, "/alice/secret.txt", ALICE_KEY, &secret);
    let sha = sha256_hex(&secret);
    let blob_file = find_file_by_sha(&n.data_root, &sha).expect("alice's bytes are stored under the data root");
    let blob = blob_file.file_name().unwrap().to_string_lossy().into_owned();
    let literal = format!("/v1/internal/blobs/{blob}");
    let r = n.raw("GET", &literal, INTERNAL_SECRET, &[], b"");
    assert_eq!(r.status, 200, "GET {literal} with the internal secret: {}", r.describe());
    assert_eq!(r.sha256(), sha, "the blob endpoint serves the bytes to the internal secret");
    assert_error(&n.raw("GET", &literal, NO_AUTH, &[], b""), 401, "AUTHENTICATION_FAILED", "blob without a key");
    assert_error(&n.raw("GET", &literal, BOB_KEY, &[], b""), 403, "PERMISSION_DENIED", "blob with bob's key");
    for (target, no_key, bob) in [
        (format!("/%76%31/internal/blobs/{blob}"), 404, 404),
        (format!("/v1%2Finternal/blobs/{blob}"), 404, 404),
        (format!("//v1/internal/blobs/{blob}"), 404, 404),
        (format!("/v1/%69nternal/blobs/{blob}"), 401, 404),
        (format!("/v1/internal/blob%73/{blob}"), 401, 403),
        (format!("/v1/internal/./blobs/{blob}"), 401, 403),
    ] {
        for (who, key, want) in [("no key", NO_AUTH, no_key), ("bob", BOB_KEY, bob)] {
            for method in ["GET", "HEAD"] {
                let r = n.raw(method, &target, key, &[], b"");
                assert_eq!(r.status, want, "{method} {target} as {who}: {}", r.describe());
                assert_ne!(r.sha256(), sha, "{method} {target} as {who} served the bytes");
                if method == "GET" {
                    let code = match want {
                        401 => "AUTHENTICATION_FAILED",
                        403 => "PERMISSION_DENIED",
                        _ => "NOT_FOUND",
                    };
                    assert_error(&r, want, code, &format!("{method} {target} as {who}"));
                }
            }
        }
    }
    assert_file(&n, "/alice/secret.txt", &secret, "alice", "after the blob attempts");
    assert_no_panic_logged(&n, "encoded internal blob routes");
}

/// With `metrics.require_auth: true`, no spelling of `/metrics` hands out metrics without a key.
#[test]
fn encoded_metrics_route_needs_auth() {
    let n = Node::start(NodeOptions::new(Db::Sqlite).set("metrics.require_auth", json!(true)));
    let r = n.raw("GET", "/metrics", NO_AUTH, &[], b"");
    assert_error(&r, 401, "AUTHENTICATION_FAILED", "GET /metrics without a key");
    for target in [
        "/%6detrics",
        "/%6Detrics",
        "/%6d%65%74%72%69%63%73",
        "/metrics/",
        "//metrics",
        "/./metrics",
        "/METRICS",
        "/metrics%2F",
    ] {
        for method in ["GET", "HEAD"] {
            let r = n.raw(method, target, NO_AUTH, &[], b"");
            assert_ne!(r.status, 200, "{method} {target} without a key: {}", r.describe());
            assert!(!r.text().contains("callfs_"), "{method} {target} leaked metrics: {}", r.describe());
            if method == "GET" {
                assert_error(&r, 404, "NOT_FOUND", &format!("{method} {target} without a key"));
            }
        }
    }
    std::thread::sleep(Duration::from_millis(400));
    let r = n.raw("GET", "/metrics", ALICE_KEY, &[], b"");
    assert_eq!(r.status, 200, "GET /metrics with a key: {}", r.describe());
    assert!(r.text().contains("callfs_http_requests_total"));
    assert_eq!(
        metric_value(&r.text(), "callfs_http_requests_total", &[("path", "unmatched"), ("status_code", "404")]),
        16.0,
        "the encoded spellings (8 GETs, 8 HEADs) are counted as unmatched"
    );
    assert_eq!(
        metric_value(&r.text(), "callfs_http_requests_total", &[("path", "/metrics"), ("status_code", "200")]),
        0.0,
        "no unauthenticated request was served metrics"
    );
}

fn generate_link(n: &Node, path: &str) -> String {
    let r =
        n.post("/v1/links/generate", ALICE_KEY, json!({"path": path, "expiry_seconds": 600}).to_string().as_bytes());
    assert_eq!(r.status, 201, "generate link: {}", r.describe());
    r.json()["token"].as_str().expect("token").to_string()
}

fn link_node() -> Node {
    Node::start(
        NodeOptions::new(Db::Sqlite)
            .set("rate_limit.links_per_second", json!(1000))
            .set("rate_limit.links_burst", json!(1000))
            .set("rate_limit.downloads_per_second", json!(1000))
            .set("rate_limit.downloads_burst", json!(1000)),
    )
}

/// No request log line of a download (however its token is percent-encoded) holds the token.
fn assert_token_not_logged(n: &Node, token: &str, raw_tail: &str, ctx: &str) {
    // The request log line is written when the response completes.
    std::thread::sleep(Duration::from_millis(200));
    let text = n.log_text();
    for line in text.lines() {
        assert!(!line.contains(token), "{ctx}: the full token is in the log: {line}");
        assert!(raw_tail.len() <= 24 || !line.contains(raw_tail), "{ctx}: the encoded token is in the log: {line}");
    }
    for v in n.log_lines() {
        if let Some(p) = v["path"].as_str() {
            assert!(!p.contains(&token[..12]), "{ctx}: more than 8 token characters in a log path: {v}");
        }
    }
}

/// `/download/<token>` with the token percent-encoded in various ways: decoded once, served once,
/// and never logged whole (security.md §5, observability.md §2).
#[test]
fn encoded_download_tokens_are_never_logged() {
    let n = link_node();
    let data = random_bytes(3000, 82);
    create(&n, "/dl.bin", ALICE_KEY, &data);
    type Encode = fn(&str) -> String;
    let encodings: [(&str, Encode); 5] = [
        ("every character, upper hex", |t| encode_all(t, false)),
        ("every character, lower hex", |t| encode_all(t, true)),
        ("first character", |t| format!("{}{}", encode_all(&t[..1], false), &t[1..])),
        ("the dot", |t| t.replace('.', "%2E")),
        ("the padding", |t| t.replace('=', "%3d")),
    ];
    for (how, encode) in encodings {
        let token = generate_link(&n, "/dl.bin");
        let tail = encode(&token);
        let target = format!("/download/{tail}");
        let r = n.raw("GET", &target, NO_AUTH, &[], b"");
        assert_eq!(r.status, 200, "download with {how} encoded: {}", r.describe());
        assert_eq!(r.sha256(), sha256_hex(&data), "download with {how} encoded: bytes");
        let again = n.raw("GET", &format!("/download/{token}"), NO_AUTH, &[], b"");
        assert_error(&again, 410, "LINK_USED", &format!("token used through {how} encoding"));
        assert_token_not_logged(&n, &token, &tail, &format!("token with {how} encoded"));
    }
    // Tokens that cannot be tokens once decoded: unknown, and still not logged.
    let token = generate_link(&n, "/dl.bin");
    for tail in [format!("{token}%2Fx"), format!("{}%zz", encode_all(&token, false)), format!("{token}/x")] {
        let r = n.raw("GET", &format!("/download/{tail}"), NO_AUTH, &[], b"");
        assert_eq!(r.status, 404, "GET /download/{tail}: {}", r.describe());
        assert_token_not_logged(&n, &token, &tail, "undecodable token");
    }
    let r = n.raw("GET", &format!("/download/{token}"), NO_AUTH, &[], b"");
    assert_eq!(r.status, 200, "the token was not consumed by the bad spellings: {}", r.describe());
    // An encoded spelling of the route prefix is no route: not served, the token stays unused.
    // (Its log line is the subject of `token_under_encoded_download_prefix_is_not_logged`.)
    let token = generate_link(&n, "/dl.bin");
    for prefix in ENCODED_DOWNLOAD_PREFIXES {
        let r = n.raw("GET", &format!("{prefix}{token}"), NO_AUTH, &[], b"");
        assert_error(&r, 404, "NOT_FOUND", &format!("GET {prefix}<token>"));
    }
    let r = n.raw("GET", &format!("/download/{token}"), NO_AUTH, &[], b"");
    assert_eq!(r.status, 200, "the token was not consumed under an encoded prefix: {}", r.describe());
    assert_eq!(r.sha256(), sha256_hex(&data));
    assert_no_panic_logged(&n, "encoded download tokens");
}

const ENCODED_DOWNLOAD_PREFIXES: [&str; 4] =
    ["/%64ownload/", "/%64%6F%77%6E%6C%6F%61%64/", "/download%2F", "//download/"];

/// A token sent to a percent-encoded spelling of the route prefix (`/%64ownload/<token>`) is not
/// served, so it is still a live secret: it must not be logged whole either (security.md §5 and
/// §9: full link tokens are never written to logs, "including in the request log path").
#[test]
fn token_under_encoded_download_prefix_is_not_logged() {
    let n = link_node();
    create(&n, "/dl.txt", ALICE_KEY, b"download me");
    let token = generate_link(&n, "/dl.txt");
    for prefix in ENCODED_DOWNLOAD_PREFIXES {
        let r = n.raw("GET", &format!("{prefix}{token}"), NO_AUTH, &[], b"");
        assert_error(&r, 404, "NOT_FOUND", &format!("GET {prefix}<token>"));
    }
    assert_token_not_logged(&n, &token, &token, "token under an encoded /download/ prefix");
}

// ---------------------------------------------------------------------------------------------
// 2. Authorisation is held to the commit
// ---------------------------------------------------------------------------------------------

/// Bob's PUT planned on an empty path (or on his own file) must not replace the file alice
/// created while his body was still arriving: 403, alice's bytes and owner intact.
fn put_is_reauthorised_at_commit(db: Db) {
    let n = Node::start(NodeOptions::new(db));
    let bob_body = random_bytes(64 * KIB, 83);
    let half = bob_body.len() / 2;
    let alice_body = random_bytes(5000, 84);

    // (a) Empty path at plan time.
    let len = bob_body.len().to_string();
    let mut s = n.raw_open("PUT", "/v1/files/x.txt", BOB_KEY, &[("Content-Length", &len)]);
    s.write_all(&bob_body[..half]).unwrap();
    std::thread::sleep(Duration::from_millis(500));
    assert_eq!(n.head("/v1/files/x.txt", ALICE_KEY).status, 404, "bob's upload is not committed yet");
    create(&n, "/x.txt", ALICE_KEY, &alice_body);
    s.write_all(&bob_body[half..]).unwrap();
    let r = read_resp(&s, Duration::from_secs(30)).expect("bob's PUT must get a response");
    assert_error(&r, 403, "PERMISSION_DENIED", "bob's PUT finishing after alice created the path");
    assert_file(&n, "/x.txt", &alice_body, "alice", "after bob's late PUT");

    // (b) Bob's own file at plan time, alice's by the commit.
    let own = b"bob's own bytes".to_vec();
    create(&n, "/y.txt", BOB_KEY, &own);
    let mut s = n.raw_open("PUT", "/v1/files/y.txt", BOB_KEY, &[("Content-Length", &len)]);
    s.write_all(&bob_body[..half]).unwrap();
    std::thread::sleep(Duration::from_millis(500));
    assert_eq!(n.delete("/v1/files/y.txt", BOB_KEY).status, 204, "bob deletes his file");
    create(&n, "/y.txt", ALICE_KEY, &alice_body);
    s.write_all(&bob_body[half..]).unwrap();
    let r = read_resp(&s, Duration::from_secs(30)).expect("bob's PUT must get a response");
    assert_error(&r, 403, "PERMISSION_DENIED", "bob's PUT planned on his own file, committed on alice's");
    assert_file(&n, "/y.txt", &alice_body, "alice", "after bob's late PUT onto a replaced path");

    // Bob's own write still works.
    assert_eq!(n.put("/v1/files/z.txt", BOB_KEY, &bob_body).status, 201);
    assert_file(&n, "/z.txt", &bob_body, "bob", "bob's own PUT");
    wait_no_tmp(&n, "after the refused commits");
    assert_no_panic_logged(&n, "commit-time authorisation");
}

// ---------------------------------------------------------------------------------------------
// 3. PATCH overwrite needs Delete on the replaced destination
// ---------------------------------------------------------------------------------------------

#[test]
fn patch_overwrite_of_another_users_empty_directory_is_denied() {
    let n = sqlite_node();
    assert_eq!(n.post("/v1/files/adir/", ALICE_KEY, b"").status, 201, "alice's directory");
    assert_eq!(n.post("/v1/files/bdir/", BOB_KEY, b"").status, 201, "bob's directory");
    let attempts: [(&str, Value); 3] = [
        ("/v1/files/bdir", json!({"destination": "/adir", "overwrite": true})),
        ("/v1/files/bdir?overwrite=true", json!({"destination": "/adir"})),
        ("/v1/files/bdir", json!({"name": "adir", "overwrite": true})),
    ];
    for (target, body) in &attempts {
        let r = n.patch_json(target, BOB_KEY, body);
        assert_error(&r, 403, "PERMISSION_DENIED", &format!("bob PATCH {target} {body}"));
    }
    // Same with a file of bob's onto alice's empty file.
    create(&n, "/afile.txt", ALICE_KEY, b"");
    create(&n, "/bfile.txt", BOB_KEY, b"bob");
    let r = n.patch_json("/v1/files/bfile.txt", BOB_KEY, &json!({"destination": "/afile.txt", "overwrite": true}));
    assert_error(&r, 403, "PERMISSION_DENIED", "bob overwrites alice's empty file");

    for (path, owner) in [("/adir", "alice"), ("/bdir", "bob")] {
        let r = n.head(&format!("/v1/files{path}"), ALICE_KEY);
        assert_eq!(r.status, 200, "HEAD {path}: {}", r.describe());
        assert_eq!(r.header("x-callfs-type"), Some("directory"), "{path} is still a directory");
        assert_eq!(r.header("x-callfs-owner"), Some(owner), "{path} owner");
    }
    assert_file(&n, "/afile.txt", b"", "alice", "alice's empty file");
    assert_file(&n, "/bfile.txt", b"bob", "bob", "bob's source file");
    // The owner may overwrite her own empty directory.
    assert_eq!(n.post("/v1/files/a2/", ALICE_KEY, b"").status, 201);
    let r = n.patch_json("/v1/files/a2", ALICE_KEY, &json!({"destination": "/adir", "overwrite": true}));
    assert_eq!(r.status, 200, "alice overwrites her own empty directory: {}", r.describe());
    assert_eq!(r.json(), json!({"path": "/adir"}));
}

// ---------------------------------------------------------------------------------------------
// 4. Ranges are cut from the opened bytes
// ---------------------------------------------------------------------------------------------

#[test]
fn range_during_concurrent_replacements_never_panics() {
    let n = sqlite_node();
    let big = random_bytes(60_000, 85);
    let small = b"0123456789".to_vec();
    create(&n, "/race.bin", ALICE_KEY, &big);
    let stop = AtomicBool::new(false);
    let failures = Mutex::new(Vec::<String>::new());
    let counts = Mutex::new(BTreeMap::<u16, u32>::new());
    let puts = Mutex::new(0u32);
    let fail = |m: String| failures.lock().unwrap().push(m);
    let auth = format!("Bearer {ALICE_KEY}");
    std::thread::scope(|sc| {
        for w in 0..2 {
            let (n, big, small, stop, puts, fail) = (&n, &big, &small, &stop, &puts, &fail);
            sc.spawn(move || {
                let mut i = w;
                while !stop.load(Ordering::Relaxed) {
                    let body = if i % 2 == 0 { small } else { big };
                    match raw_http(
                        n.port,
                        "PUT",
                        "/v1/files/race.bin",
                        &[("Authorization", &format!("Bearer {ALICE_KEY}"))],
                        body,
                    ) {
                        Ok(r) if r.status == 200 => *puts.lock().unwrap() += 1,
                        Ok(r) => fail(format!("PUT of {} bytes: {}", body.len(), r.describe())),
                        Err(e) => fail(format!("PUT of {} bytes: transport error {e}", body.len())),
                    }
                    i += 1;
                }
            });
        }
        for _ in 0..2 {
            let (n, big, small, stop, counts, fail, auth) = (&n, &big, &small, &stop, &counts, &fail, &auth);
            sc.spawn(move || {
                while !stop.load(Ordering::Relaxed) {
                    let headers = [("Authorization", auth.as_str()), ("Range", "bytes=30000-30010")];
                    let r = match raw_http(n.port, "GET", "/v1/files/race.bin", &headers, b"") {
                        Ok(r) => r,
                        Err(e) => {
                            fail(format!("GET with Range: transport error {e}"));
                            continue;
                        }
                    };
                    *counts.lock().unwrap().entry(r.status).or_default() += 1;
                    match r.status {
                        206 => {
                            if r.body != big[30_000..=30_010]
                                || r.header("content-range") != Some("bytes 30000-30010/60000")
                            {
                                fail(format!(
                                    "206 with the wrong part: {:?} {}",
                                    r.header("content-range"),
                                    r.describe()
                                ));
                            }
                        }
                        416 => {
                            let ok = is_json_content_type(&r)
                                && r.json()["code"] == json!("RANGE_NOT_SATISFIABLE")
                                && r.header("content-range") == Some("bytes */10");
                            if !ok {
                                fail(format!("416 {:?} {}", r.header("content-range"), r.describe()));
                            }
                        }
                        200 if r.body == *big || r.body == *small => {}
                        _ => fail(format!("GET with Range: {}", r.describe())),
                    }
                }
            });
        }
        std::thread::sleep(Duration::from_secs(4));
        stop.store(true, Ordering::Relaxed);
    });
    let failures = failures.into_inner().unwrap();
    let counts = counts.into_inner().unwrap();
    assert!(
        failures.is_empty(),
        "{} bad outcomes, first ones: {:#?}",
        failures.len(),
        &failures[..failures.len().min(5)]
    );
    let puts = puts.into_inner().unwrap();
    assert!(puts >= 10, "the writers ran ({puts} PUTs)");
    assert!(counts.get(&206).copied().unwrap_or(0) > 0, "some GETs saw the 60,000-byte version: {counts:?}");
    assert!(counts.get(&416).copied().unwrap_or(0) > 0, "some GETs saw the 10-byte version: {counts:?}");
    assert_no_panic_logged(&n, "ranges during replacements");
}

// ---------------------------------------------------------------------------------------------
// 5. JSON bodies obey server.read_timeout
// ---------------------------------------------------------------------------------------------

#[test]
fn stalled_json_bodies_time_out() {
    let n = Node::start(NodeOptions::new(Db::Sqlite).set("server.read_timeout", json!("2s")));
    create(&n, "/stall.txt", ALICE_KEY, b"stay");
    let cases = [
        ("PATCH", "/v1/files/stall.txt", ALICE_KEY, &b"{\"name\":"[..]),
        ("POST", "/v1/links/generate", ALICE_KEY, &b"{\"path\":"[..]),
    ];
    let results: Vec<(String, Result<Resp, String>, Duration)> = std::thread::scope(|sc| {
        let handles: Vec<_> = cases
            .iter()
            .map(|(method, target, key, part)| {
                let n = &n;
                sc.spawn(move || {
                    let headers = [("Content-Length", "200"), ("Content-Type", "application/json")];
                    let mut s = n.raw_open(method, target, key, &headers);
                    s.write_all(part).unwrap();
                    let started = Instant::now();
                    let r = read_resp(&s, Duration::from_secs(12)).map_err(|e| e.to_string());
                    (format!("{method} {target}"), r, started.elapsed())
                })
            })
            .collect();
        handles.into_iter().map(|h| h.join().unwrap()).collect()
    });
    for (what, r, took) in results {
        let r = r.unwrap_or_else(|e| panic!("{what} with 8 of 200 body bytes: no response after {took:?} ({e})"));
        assert_error(&r, 408, "REQUEST_TIMEOUT", &format!("{what} with a stalled JSON body"));
        assert!(took >= Duration::from_millis(1500), "{what}: not before read_timeout (took {took:?})");
        assert!(took < Duration::from_secs(8), "{what}: within a few seconds of read_timeout (took {took:?})");
    }
    assert_file(&n, "/stall.txt", b"stay", "alice", "the stalled PATCH changed nothing");
}

// ---------------------------------------------------------------------------------------------
// 6. One client's slow uploads cannot stall another's
// ---------------------------------------------------------------------------------------------

#[test]
fn slow_uploads_from_one_client_do_not_stall_another() {
    let n = Node::start(NodeOptions::new(Db::Sqlite).set("server.trusted_proxies", json!(["127.0.0.1"])));
    const SLOW: usize = 135;
    const PER_CLIENT: usize = 64;
    let mut slow = Vec::with_capacity(SLOW);
    for i in 0..SLOW {
        let headers = [("Content-Length", "100"), ("X-Forwarded-For", "10.0.0.1")];
        let mut s = n.raw_open("POST", &format!("/v1/files/slow-{i}.bin"), ALICE_KEY, &headers);
        s.write_all(b"s").unwrap();
        slow.push(s);
    }
    // Let every slow upload reach admission (the refused ones answer at once).
    let deadline = Instant::now() + Duration::from_secs(5);
    while slow.iter().filter(|s| has_response(s)).count() < SLOW - PER_CLIENT && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(50));
    }

    let data = b"hello".to_vec();
    let started = Instant::now();
    let r = n.raw("POST", "/v1/files/fast.txt", BOB_KEY, &[("X-Forwarded-For", "10.0.0.2")], &data);
    let took = started.elapsed();
    assert_eq!(r.status, 201, "another client's 5-byte POST: {}", r.describe());
    assert!(took < Duration::from_secs(2), "another client's 5-byte POST took {took:?} (bound: 2 s)");
    assert_file(&n, "/fast.txt", &data, "bob", "the fast upload");

    let (refused, held): (Vec<_>, Vec<_>) = slow.into_iter().partition(has_response);
    assert_eq!(held.len(), PER_CLIENT, "slow uploads held open from one client");
    assert_eq!(refused.len(), SLOW - PER_CLIENT, "slow uploads beyond the per-client cap are refused");
    for s in &refused {
        let r = read_resp(s, Duration::from_secs(5)).expect("a refused upload's response");
        assert_error(&r, 429, "RATE_LIMIT_EXCEEDED", "upload beyond the per-client cap");
        assert!(r.header("retry-after").and_then(|v| v.parse::<u64>().ok()).is_some_and(|v| v >= 1), "Retry-After");
    }
    for s in held.into_iter().chain(refused) {
        abort_stream(s);
    }
    // The slots come back once the bodies are gone.
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let r = n.raw("POST", "/v1/files/after.txt", ALICE_KEY, &[("X-Forwarded-For", "10.0.0.1")], b"after");
        if r.status == 201 {
            break;
        }
        assert_error(&r, 429, "RATE_LIMIT_EXCEEDED", "upload while the aborted ones drain");
        assert!(Instant::now() < deadline, "the per-client slots were not released after the slow sockets closed");
        std::thread::sleep(Duration::from_millis(100));
    }
    for i in 0..SLOW {
        assert_eq!(
            n.head(&format!("/v1/files/slow-{i}.bin"), ALICE_KEY).status,
            404,
            "aborted slow-{i}.bin is not stored"
        );
    }
    wait_no_tmp(&n, "after the aborted slow uploads");
}

// ---------------------------------------------------------------------------------------------
// 7. Paths too long for the OS: 400, nothing left behind
// ---------------------------------------------------------------------------------------------

/// A valid path whose on-disk form would exceed PATH_MAX is never a 500 and leaves nothing behind:
/// either it is refused with 400 before anything is created, or (bytes stored under generated
/// ids) it is stored and served like any other path.
#[test]
fn paths_too_long_for_the_os_are_handled_cleanly() {
    let n = sqlite_node();
    let root_len = n.data_root.as_os_str().len();
    // A valid logical path (segments ≤ 255 bytes, total ≤ 4096) longer than PATH_MAX once joined
    // to the data root.
    let total = 4070.max(4097 - root_len).min(MAX_PATH_BYTES);
    let mut long = String::new();
    let mut i = 0u8;
    while long.len() < total {
        let seg = (total - long.len() - 1).min(254);
        long.push('/');
        long.push((b'a' + i % 26) as char);
        long.push_str(&"x".repeat(seg - 1));
        i += 1;
    }
    assert_eq!(long.len(), total);
    assert!(parse_json_path(&long).is_ok(), "the path itself is valid");
    // Many short segments, the same total.
    let deep: String = "/d".repeat(total / 2);
    let segments: BTreeSet<&str> = long.split('/').chain(deep.split('/')).filter(|s| !s.is_empty()).collect();
    for (what, path) in [("long segments", &long), ("deep nesting", &deep)] {
        assert!(root_len + path.len() >= 4096, "{what}: the on-disk path must exceed PATH_MAX");
        let target = format!("/v1/files{path}");
        let ctx = |m: &str| format!("{m} of a {}-byte path ({what})", path.len());
        let r = n.raw("POST", &target, ALICE_KEY, &[], b"first");
        if r.status == 201 {
            assert_file(&n, path, b"first", "alice", &ctx("POST"));
            let r = n.raw("PUT", &target, ALICE_KEY, &[], b"second");
            assert_eq!(r.status, 200, "{}: {}", ctx("PUT"), r.describe());
            assert_file(&n, path, b"second", "alice", &ctx("PUT"));
        } else {
            assert_error(&r, 400, "BAD_REQUEST", &ctx("POST"));
            let r = n.raw("PUT", &target, ALICE_KEY, &[], b"second");
            assert_error(&r, 400, "BAD_REQUEST", &ctx("PUT"));
            let first = &path[..path[1..].find('/').map(|i| i + 1).unwrap_or(path.len())];
            assert_absent(&n, first, &format!("{what}: no parent entry was created"));
        }
    }
    for dir in dirs_under(&n.data_root) {
        for part in dir.components() {
            let name = part.as_os_str().to_string_lossy();
            assert!(!segments.contains(name.as_ref()), "a directory named after a path segment: {}", dir.display());
        }
    }
    wait_no_tmp(&n, "after the long paths");
    // A path that fits is stored as usual.
    let fits = format!("/{}/ok.txt", "f".repeat(200));
    create(&n, &fits, ALICE_KEY, b"fits");
    assert_file(&n, &fits, b"fits", "alice", "a path that fits");
    assert_no_panic_logged(&n, "long paths");
}

// ---------------------------------------------------------------------------------------------
// 8. /ready shows short reasons, never paths
// ---------------------------------------------------------------------------------------------

#[test]
fn ready_reasons_are_short_and_carry_no_paths() {
    let n = sqlite_node();
    let r = n.get("/ready", NO_AUTH);
    assert_eq!(r.status, 200, "ready at start: {}", r.describe());
    // The storage root becomes a regular file (chmod is no use when the node runs as root).
    std::fs::remove_dir_all(&n.data_root).expect("remove the storage root");
    std::fs::write(&n.data_root, b"not a directory any more\n").expect("put a file at the storage root");
    let deadline = Instant::now() + Duration::from_secs(10);
    let r = loop {
        let r = n.get("/ready", NO_AUTH);
        if r.status == 503 || Instant::now() > deadline {
            break r;
        }
        std::thread::sleep(Duration::from_millis(200));
    };
    assert_eq!(r.status, 503, "not ready without a storage root: {}", r.describe());
    assert!(is_json_content_type(&r), "JSON body");
    let v = r.json();
    assert_eq!(v["status"], json!("not_ready"), "{v}");
    assert_eq!(v["checks"]["metadata_store"], json!("ok"), "{v}");
    let checks = v["checks"].as_object().unwrap_or_else(|| panic!("checks object: {v}"));
    let localfs = v["checks"]["localfs"].as_str().unwrap_or_else(|| panic!("localfs check: {v}"));
    assert!(localfs.starts_with("failed: "), "localfs reason: {v}");
    for (name, reason) in checks {
        let reason = reason.as_str().unwrap_or_else(|| panic!("{name}: reason is a string: {v}"));
        assert!(reason.len() <= 40, "{name}: short reason, got {reason:?}");
        assert!(!reason.contains('/') && !reason.contains('\\'), "{name}: no path in {reason:?}");
        assert!(!reason.contains("os error"), "{name}: no raw OS error text in {reason:?}");
    }
    let body = r.text();
    let root = n.data_root.to_string_lossy();
    assert!(!body.contains(root.as_ref()), "the data root appears in /ready: {body}");
    assert!(!body.contains(n.dir.path().to_string_lossy().as_ref()), "the node directory appears in /ready: {body}");
    assert_eq!(n.head("/ready", NO_AUTH).status, 503, "HEAD /ready");

    // Back to ready once the root is a writable directory again.
    std::fs::remove_file(&n.data_root).unwrap();
    std::fs::create_dir(&n.data_root).unwrap();
    let deadline = Instant::now() + Duration::from_secs(10);
    while n.get("/ready", NO_AUTH).status != 200 {
        assert!(Instant::now() < deadline, "ready again after the root came back");
        std::thread::sleep(Duration::from_millis(200));
    }
}

// ---------------------------------------------------------------------------------------------
// 9. JSON bodies must be objects
// ---------------------------------------------------------------------------------------------

#[test]
fn json_bodies_must_be_objects() {
    let n = link_node();
    create(&n, "/a.txt", ALICE_KEY, b"aaa");
    let before = settle_metrics(&n);
    let ct = [("Content-Type", "application/json")];
    for body in [r#"["/a.txt",60]"#, r#""/a.txt""#, "60", "null", "[]"] {
        let r = n.raw("POST", "/v1/links/generate", ALICE_KEY, &ct, body.as_bytes());
        assert_error(&r, 400, "BAD_REQUEST", &format!("links/generate with body {body}"));
    }
    // serde would read a struct from a sequence in field order: that form must not rename.
    for body in
        [r#"["renamed.txt",null,null,null,null,null]"#, r#"[null,"/moved.txt",null,null,true,null]"#, r#"["x"]"#]
    {
        let r = n.raw("PATCH", "/v1/files/a.txt", ALICE_KEY, &ct, body.as_bytes());
        assert_error(&r, 400, "BAD_REQUEST", &format!("PATCH with body {body}"));
    }
    assert_file(&n, "/a.txt", b"aaa", "alice", "after the array bodies");
    assert_absent(&n, "/renamed.txt", "no rename");
    assert_absent(&n, "/moved.txt", "no move");
    let after = settle_metrics(&n);
    let links = |t: &str| metric_value(t, "callfs_single_use_link_generations_total", &[]);
    assert_eq!(links(&after) - links(&before), 0.0, "no link was generated");
    // The object forms still work.
    let r = n.raw("POST", "/v1/links/generate", ALICE_KEY, &ct, br#"{"path":"/a.txt","expiry_seconds":60}"#);
    assert_eq!(r.status, 201, "object body: {}", r.describe());
    let r = n.patch_json("/v1/files/a.txt", ALICE_KEY, &json!({"name": "renamed.txt"}));
    assert_eq!(r.status, 200, "object body: {}", r.describe());
}

// ---------------------------------------------------------------------------------------------
// 10. Property tests of the classification
// ---------------------------------------------------------------------------------------------

/// Route prefixes (and near misses) the generated paths start from.
const BASES: &[&str] = &[
    "/v1/files/",
    "/v1/files",
    "/v1/directories/",
    "/v1/directories",
    "/v1/internal/blobs/",
    "/v1/internal/blobs/0123456789abcdef0123456789abcdef",
    "/v1/internal/localfs-move",
    "/v1/internal/localfs/",
    "/v1/internal/",
    "/v1/links/generate",
    "/metrics",
    "/health",
    "/ready",
    "/download/x",
    "/download/",
    "/v1/",
    "/v1",
    "/",
];

/// Segments appended to a base: names, dot segments, escapes valid and invalid.
const SEGMENTS: &[&str] = &[
    "a.txt",
    "dir",
    "..",
    ".",
    "",
    "%2e%2e",
    "%2E",
    "%2F",
    "%2f..%2f",
    "%zz",
    "%",
    "%00",
    "%C3%A9",
    "%FF",
    ".callfs-tmp-x",
    "internal",
    "localfs-move",
    "metrics",
    "v1",
    "files",
    "x~y_z-1",
];

const METHODS: &[&str] = &["GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"];

/// Builds a raw request path from a base and segments, then (driven by `seed`) doubles slashes,
/// inserts dot segments, flips the case of letters and percent-encodes bytes (any byte, `/` and
/// `%` included) with upper- or lower-case hex. Only characters legal in a request-target result.
fn mutate(base: usize, segments: &[usize], seed: u64, structure: u8, case: u8, encode: u8) -> String {
    let mut rng = Prng::new(seed);
    let mut s = BASES[base].to_string();
    for (i, seg) in segments.iter().enumerate() {
        if i > 0 || !s.ends_with('/') {
            s.push('/');
        }
        s.push_str(SEGMENTS[*seg]);
    }
    for _ in 0..structure {
        let slashes: Vec<usize> = s.match_indices('/').map(|(i, _)| i).collect();
        let at = slashes[(rng.next_u64() as usize) % slashes.len()];
        let insert = ["/", "./", "../", "x/../", "//"][(rng.next_u64() % 5) as usize];
        s.insert_str(at + 1, insert);
    }
    if case > 0 {
        s =
            s.chars()
                .map(|c| {
                    if c.is_ascii_alphabetic() && rng.next_u64() % 8 < case as u64 {
                        (c as u8 ^ 0x20) as char
                    } else {
                        c
                    }
                })
                .collect();
    }
    if encode > 0 {
        let mut out = String::with_capacity(s.len() * 3);
        for (i, b) in s.bytes().enumerate() {
            // The leading `/` stays: a request-target in origin form starts with it.
            if i > 0 && rng.next_u64() % 12 < encode as u64 {
                if rng.next_u64().is_multiple_of(2) {
                    out.push_str(&format!("%{b:02X}"));
                } else {
                    out.push_str(&format!("%{b:02x}"));
                }
            } else {
                out.push(b as char);
            }
        }
        s = out;
    }
    s
}

fn raw_path_strategy() -> impl Strategy<Value = String> {
    (0..BASES.len(), proptest::collection::vec(0..SEGMENTS.len(), 0..4), any::<u64>(), 0u8..4, 0u8..4, 0u8..5)
        .prop_map(|(base, segs, seed, structure, case, encode)| mutate(base, &segs, seed, structure, case, encode))
}

fn method_strategy() -> impl Strategy<Value = &'static str> {
    (0..METHODS.len()).prop_map(|i| METHODS[i])
}

/// The route label a raw path must get, from api.md §2 read literally: routes are prefixes of the
/// path as sent, never of its decoding.
fn expected_label(raw: &str) -> &'static str {
    match raw {
        "/health" => return "/health",
        "/ready" => return "/ready",
        "/metrics" => return "/metrics",
        "/v1/links/generate" => return "/v1/links/generate",
        _ => {}
    }
    let under = |p: &str| raw == p || raw.strip_prefix(p).is_some_and(|r| r.starts_with('/'));
    let below = |p: &str| raw.strip_prefix(p).is_some_and(|r| !r.is_empty());
    if under("/v1/files") {
        "/v1/files/*"
    } else if under("/v1/directories") {
        "/v1/directories/*"
    } else if below("/download/") {
        "/download/{token}"
    } else if below("/v1/internal/blobs/") {
        "/v1/internal/blobs/*"
    } else {
        "unmatched"
    }
}

/// The status a request without credentials must get (api.md §2–§3).
fn expected_status(method: &str, raw: &str) -> &'static [u16] {
    if raw == "/v1" {
        return &[401, 404];
    }
    if raw.starts_with("/v1/") {
        return &[401];
    }
    let get_or_head = matches!(method, "GET" | "HEAD");
    match expected_label(raw) {
        "/health" | "/ready" | "/metrics" if get_or_head => &[200],
        "/health" | "/ready" | "/metrics" => &[405],
        "/download/{token}" if method == "GET" => &[404],
        "/download/{token}" => &[405],
        _ => &[404],
    }
}

/// Generated paths, no credentials, one running node: every request is answered as its literal
/// route says (401 under /v1/, 404 for no route, 2xx only for /health, /ready, /metrics), and the
/// metrics count each under the label of that route.
#[test]
fn property_unauthenticated_requests_reach_only_public_handlers() {
    let n = Node::start(
        NodeOptions::new(Db::Sqlite)
            .set("rate_limit.downloads_per_second", json!(10000))
            .set("rate_limit.downloads_burst", json!(10000)),
    );
    create(&n, "/a.txt", ALICE_KEY, b"a");
    let before = settle_metrics(&n);
    let sent = Mutex::new(BTreeMap::<&'static str, f64>::new());
    let config = ProptestConfig { cases: 300, failure_persistence: None, ..ProptestConfig::default() };
    let mut runner = TestRunner::new(config);
    let result = runner.run(&(method_strategy(), raw_path_strategy()), |(method, raw)| {
        let r = raw_http(n.port, method, &raw, &[], b"")
            .map_err(|e| TestCaseError::fail(format!("{method} {raw}: transport error {e}")))?;
        *sent.lock().unwrap().entry(expected_label(&raw)).or_default() += 1.0;
        let expected = expected_status(method, &raw);
        prop_assert!(expected.contains(&r.status), "{} {}: expected {:?}, got {}", method, raw, expected, r.describe());
        if raw.contains("internal") || raw.to_ascii_lowercase().contains("internal") {
            prop_assert!(!r.status.to_string().starts_with('2'), "{} {}: {}", method, raw, r.describe());
        }
        if r.status == 401 {
            prop_assert_eq!(r.header("www-authenticate"), Some(r#"Bearer realm="callfs""#));
        }
        if r.status >= 400 && method != "HEAD" {
            prop_assert!(is_json_content_type(&r), "{} {}: JSON error body: {}", method, raw, r.describe());
            let code = r.json()["code"].as_str().unwrap_or("").to_string();
            let expected_code = match r.status {
                401 => "AUTHENTICATION_FAILED",
                405 => "METHOD_NOT_ALLOWED",
                404 if expected_label(&raw) == "/download/{token}" => "LINK_NOT_FOUND",
                404 => "NOT_FOUND",
                _ => "",
            };
            prop_assert_eq!(code.as_str(), expected_code, "{} {}: {}", method, raw, r.describe());
        }
        Ok(())
    });
    if let Err(e) = result {
        panic!("{e}");
    }
    let after = settle_metrics(&n);
    let sent = sent.into_inner().unwrap();
    for label in sent.keys().copied().chain(["/metrics", "unmatched", "/v1/files/*"]) {
        let got = metric_value(&after, "callfs_http_requests_total", &[("path", label)])
            - metric_value(&before, "callfs_http_requests_total", &[("path", label)]);
        // The `before` scrape itself is counted under /metrics.
        let want = sent.get(label).copied().unwrap_or(0.0) + if label == "/metrics" { 1.0 } else { 0.0 };
        assert_eq!(got, want, "requests counted under path=\"{label}\"");
    }
    assert_eq!(n.get("/v1/files/a.txt", ALICE_KEY).body, b"a", "nothing changed the stored file");
    assert_no_panic_logged(&n, "generated unauthenticated requests");
}

/// A parsed `{path}` is canonical: parsing its string again gives the same path.
fn check_parsed(e: &Endpoint) -> Result<(), TestCaseError> {
    let parsed = match e {
        Endpoint::GetFile(p)
        | Endpoint::HeadFile(p)
        | Endpoint::PostFile(p)
        | Endpoint::PutFile(p)
        | Endpoint::PatchFile(p)
        | Endpoint::DeleteFile(p)
        | Endpoint::ListDirectory(p) => p,
        Endpoint::GetBlob(blob) | Endpoint::HeadBlob(blob) => {
            prop_assert!(!blob.is_empty(), "blob id");
            return Ok(());
        }
        _ => return Ok(()),
    };
    if let Ok(p) = parsed {
        let s = p.path.as_str();
        prop_assert!(s.starts_with('/') && s.len() <= MAX_PATH_BYTES, "canonical path {:?}", s);
        let again = parse_json_path(s).map_err(|err| TestCaseError::fail(format!("{s:?} reparsed: {err}")))?;
        prop_assert_eq!(&again.path, &p.path);
    }
    Ok(())
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 4000, failure_persistence: None, ..ProptestConfig::default() })]

    /// `Endpoint::classify` on its own: the label is the literal route's, a public guard only
    /// ever goes with a public endpoint, `/v1/internal/...` always needs the internal secret and
    /// other `/v1/...` paths a key, and `/metrics` with `require_auth` is never public.
    #[test]
    fn property_classification_follows_the_literal_route(method in method_strategy(), raw in raw_path_strategy()) {
        let m = Method::from_bytes(method.as_bytes()).unwrap();
        let e = Endpoint::classify(&m, &raw);
        prop_assert_eq!(e.label().as_str(), expected_label(&raw), "{} {} → {:?}", method, raw, e);
        let guard = e.guard(&raw, false);
        if guard == Guard::Public {
            let public = match &e {
                Endpoint::Health | Endpoint::Ready | Endpoint::Metrics | Endpoint::DownloadLink(_) => true,
                Endpoint::NotFound => !raw.starts_with("/v1/") && raw != "/v1",
                Endpoint::MethodNotAllowed { route, .. } => {
                    ["/health", "/ready", "/metrics", "/download/{token}"].contains(&route.as_str())
                }
                _ => false,
            };
            prop_assert!(public, "{} {} → {:?} is public", method, raw, e);
        }
        if raw.starts_with("/v1/internal/") {
            prop_assert_eq!(guard, Guard::Internal, "{} {} → {:?}", method, raw, e);
        } else if raw.starts_with("/v1/") {
            prop_assert_eq!(guard, Guard::Bearer, "{} {} → {:?}", method, raw, e);
        }
        if e.label().as_str() == "/metrics" {
            prop_assert_eq!(e.guard(&raw, true), Guard::Bearer, "{} {} with metrics.require_auth", method, raw);
        }
        if expected_label(&raw) == "unmatched" {
            prop_assert_eq!(&e, &Endpoint::NotFound, "{} {}", method, raw);
        }
        if let Endpoint::DownloadLink(Some(token)) = &e {
            prop_assert!(!token.is_empty() && !token.contains('/'), "token {:?}", token);
            let shown: String = token.chars().take(8).collect();
            prop_assert_eq!(e.log_path(&raw), format!("/download/{shown}..."), "at most 8 token characters are logged");
        }
        check_parsed(&e)?;
    }
}
