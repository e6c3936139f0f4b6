//! Crash safety (storage.md §2, invariant "a metadata row never points at bytes that are missing"):
//! SIGKILL the node in the middle of 200 MiB uploads, restart on the same data, check that nothing
//! half-written is visible and that leftover temporary files are swept.
//! `cargo test --release --test crash` (postgres variants need `CALLFS_TEST_PG_DSN`).

#[macro_use]
mod common;

use std::io::{BufReader, Read, Write};
use std::net::TcpStream;
use std::time::{Duration, Instant};

use common::*;
use serde_json::Value;

db_tests!(kill9_during_uploads, sweep_spares_uploads_started_after_restart);

const DECLARED: u64 = 200 * 1024 * 1024;
const SENT: u64 = 50 * 1024 * 1024;

fn stream(s: &mut TcpStream, seed: u64, len: u64) {
    let mut g = GenReader::new(seed, len);
    let mut buf = vec![0u8; MIB];
    loop {
        let k = g.read(&mut buf).unwrap();
        if k == 0 {
            break;
        }
        s.write_all(&buf[..k]).expect("streaming body to the node");
    }
    s.flush().unwrap();
}

fn all_items(n: &Node) -> Vec<Value> {
    let r = n.get("/v1/directories/?recursive=true&max_depth=1000", ALICE_KEY);
    assert_eq!(r.status, 200, "recursive listing of /: {}", r.describe());
    r.json()["items"].as_array().cloned().unwrap_or_default()
}

fn kill9_during_uploads(db: Db) {
    let mut n = Node::start(NodeOptions::new(db));
    let old = random_bytes(MIB, 5);
    let r = n.post("/v1/files/crash/existing.bin", ALICE_KEY, &old);
    assert_eq!(r.status, 201);
    let r = n.post("/v1/files/other/small.txt", BOB_KEY, b"small");
    assert_eq!(r.status, 201);

    // Two uploads in flight: a new path and an overwrite of the 1 MiB file.
    let cl = DECLARED.to_string();
    let mut s_new = n.raw_open("PUT", "/v1/files/crash/new.bin", ALICE_KEY, &[("Content-Length", &cl)]);
    stream(&mut s_new, 1, SENT);
    let mut s_over = n.raw_open("PUT", "/v1/files/crash/existing.bin", ALICE_KEY, &[("Content-Length", &cl)]);
    stream(&mut s_over, 2, SENT);
    std::thread::sleep(Duration::from_millis(500));
    let in_flight = n.tmp_files();
    assert!(!in_flight.is_empty(), "in-flight uploads are streamed into .callfs-tmp-* files under <root>/tmp/");
    for t in &in_flight {
        assert_eq!(t.parent(), Some(n.data_root.join("tmp").as_path()), "temporary file lives in <root>/tmp: {t:?}");
    }

    n.kill9();
    abort_stream(s_new);
    abort_stream(s_over);
    n.restart();

    // Nothing of the interrupted uploads is visible.
    let h = n.head("/v1/files/crash/new.bin", ALICE_KEY);
    assert_eq!(h.status, 404, "interrupted create must not exist after restart");
    let (g, sha, len) = n.get_hashed("/v1/files/crash/existing.bin", ALICE_KEY);
    assert_eq!(g.status, 200);
    assert_eq!(len, MIB as u64, "interrupted overwrite keeps the old size");
    assert_eq!(sha, sha256_hex(&old), "interrupted overwrite keeps the old bytes");
    let h = n.head("/v1/files/crash/existing.bin", ALICE_KEY);
    assert_eq!(h.header("x-callfs-size"), Some(MIB.to_string().as_str()));

    // Temporary files are never visible through the API.
    let items = all_items(&n);
    for it in &items {
        let name = it["name"].as_str().unwrap_or("");
        assert!(!name.starts_with(".callfs-tmp-"), "temporary file visible: {it}");
    }
    let listing = n.get("/v1/files/crash/", ALICE_KEY).json();
    let names: Vec<&str> = listing.as_array().unwrap().iter().map(|i| i["name"].as_str().unwrap_or("")).collect();
    assert_eq!(names, vec!["existing.bin"], "/crash listing after restart");

    // The sweep removes the leftovers within a few seconds.
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let left = n.tmp_files();
        if left.is_empty() {
            break;
        }
        assert!(Instant::now() < deadline, "leftover temporary files not swept within 10 s of restart: {left:?}");
        std::thread::sleep(Duration::from_millis(200));
    }

    // No row without bytes: every file's GET byte count equals its HEAD size and listing size.
    let items = all_items(&n);
    let files: Vec<&Value> = items.iter().filter(|i| i["type"] == "file").collect();
    assert_eq!(files.len(), 2, "exactly the two committed files: {items:?}");
    for f in files {
        let path = f["path"].as_str().unwrap();
        let h = n.head(&format!("/v1/files{path}"), ALICE_KEY);
        assert_eq!(h.status, 200, "HEAD {path}");
        let size: u64 = h.header("x-callfs-size").unwrap().parse().unwrap();
        assert_eq!(f["size"].as_u64(), Some(size), "listing size of {path}");
        let (g, _, len) = n.get_hashed(&format!("/v1/files{path}"), ALICE_KEY);
        assert_eq!(g.status, 200, "GET {path}");
        assert_eq!(len, size, "GET byte count equals HEAD size for {path}");
    }

    // The node is fully usable again at the same paths.
    let fresh = random_bytes(3 * MIB, 9);
    let r = n.put("/v1/files/crash/new.bin", ALICE_KEY, &fresh);
    assert_eq!(r.status, 201, "create after restart: {}", r.describe());
    assert_eq!(n.get("/v1/files/crash/new.bin", ALICE_KEY).sha256(), sha256_hex(&fresh));
    let r = n.put("/v1/files/crash/existing.bin", ALICE_KEY, b"new version");
    assert_eq!(r.status, 200);
    assert_eq!(n.get("/v1/files/crash/existing.bin", ALICE_KEY).body, b"new version");
}

/// storage.md §2: the start-up sweep removes only temporary files older than the node's start;
/// an upload started after the restart survives it.
fn sweep_spares_uploads_started_after_restart(db: Db) {
    let mut n = Node::start(NodeOptions::new(db));
    // Leave an orphan temp file from a "previous life".
    let mut s =
        n.raw_open("PUT", "/v1/files/sweep/orphan.bin", ALICE_KEY, &[("Content-Length", &(20 * MIB).to_string())]);
    stream(&mut s, 3, 5 * MIB as u64);
    std::thread::sleep(Duration::from_millis(300));
    n.kill9();
    abort_stream(s);
    std::thread::sleep(Duration::from_millis(1100));
    n.restart();

    // Immediately start a slow upload after the restart.
    let total = 8 * MIB as u64;
    let mut s = n.raw_open("PUT", "/v1/files/sweep/fresh.bin", ALICE_KEY, &[("Content-Length", &total.to_string())]);
    let mut g = GenReader::new(77, total);
    let mut buf = vec![0u8; MIB];
    for _ in 0..4 {
        g.read_exact(&mut buf).unwrap();
        s.write_all(&buf).unwrap();
        std::thread::sleep(Duration::from_millis(1000));
    }
    std::io::copy(&mut g, &mut s).unwrap();
    s.flush().unwrap();
    let resp = read_response(&mut BufReader::new(&s), false).expect("response to the slow upload");
    assert_eq!(resp.status, 201, "upload started after restart: {}", resp.describe());
    let (expected, _) = hash_reader(GenReader::new(77, total)).unwrap();
    let (g, sha, len) = n.get_hashed("/v1/files/sweep/fresh.bin", ALICE_KEY);
    assert_eq!(g.status, 200);
    assert_eq!(len, total);
    assert_eq!(sha, expected, "upload running during the sweep is intact");
    assert_eq!(n.head("/v1/files/sweep/orphan.bin", ALICE_KEY).status, 404);
    let deadline = Instant::now() + Duration::from_secs(10);
    while !n.tmp_files().is_empty() {
        assert!(Instant::now() < deadline, "orphan not swept: {:?}", n.tmp_files());
        std::thread::sleep(Duration::from_millis(200));
    }
}
