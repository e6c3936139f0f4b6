//! The S3 backend (storage.md §3, §4) against a real S3 server: `s3s-fs` started on loopback with
//! a fresh bucket (installed by scripts/ensure-s3.sh), or an external S3 through
//! `CALLFS_TEST_S3_ENDPOINT`/`_BUCKET`/`_ACCESS_KEY`/`_SECRET_KEY`. Every suite runs on SQLite and
//! on PostgreSQL: `cargo test --release --test s3 sqlite::`.

#[macro_use]
mod common;
#[path = "common/s3server.rs"]
mod s3server;

use std::io::Read;
use std::time::Duration;

use common::*;
use s3server::S3Server;
use serde_json::json;

const MIB: u64 = 1024 * 1024;

fn s3_node(db: Db, s3: &S3Server) -> Node {
    Node::start(s3.node_options(NodeOptions::new(db)))
}

fn fetch(n: &Node, path: &str) -> Vec<u8> {
    let r = n.get(&format!("/v1/files{path}"), ALICE_KEY);
    assert_eq!(r.status, 200, "GET {path}: {}", r.describe());
    r.body
}

fn vm_hwm_kib(pid: Option<u32>) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{}/status", pid.unwrap_or(0))).unwrap_or_default();
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmHWM:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap_or(0)
}

/// Create, overwrite, read, Range, zero bytes, rename, directory move, delete: every file goes to
/// the bucket (`backend_type = s3`, no instance) and nothing to the local disk.
fn s3_file_api(db: Db) {
    let s3 = S3Server::start();
    let n = s3_node(db, &s3);

    let r = n.post("/v1/files/docs/a.txt", ALICE_KEY, b"hello s3");
    assert_eq!(r.status, 201, "POST: {}", r.describe());
    assert_eq!(fetch(&n, "/docs/a.txt"), b"hello s3");
    let h = n.head("/v1/files/docs/a.txt", ALICE_KEY);
    assert_eq!(h.header("x-callfs-backend"), Some("s3"), "{}", h.describe());
    assert_eq!(h.header("x-callfs-size"), Some("8"));
    assert_eq!(h.header("x-callfs-instance-id"), Some(INSTANCE_ID), "the serving node");
    if s3.is_local() {
        assert_eq!(s3.objects().len(), 1, "one object in the bucket");
    }
    assert!(blob_files(&n.data_root).is_empty(), "no localfs blob for an S3 file");

    // Overwrite: a new object; the old one is garbage (deleted by the sweep after the grace period).
    let big: Vec<u8> = random_bytes((9 * MIB + 123) as usize, 7);
    let r = n.put("/v1/files/docs/a.txt", ALICE_KEY, &big);
    assert_eq!(r.status, 200, "PUT: {}", r.describe());
    let (r, sha, len) = n.get_hashed("/v1/files/docs/a.txt", ALICE_KEY);
    assert_eq!(r.status, 200);
    assert_eq!((sha, len), (sha256_hex(&big), big.len() as u64), "multipart object read back");

    // Range reads inside and across the part boundary.
    let r = n.get_h("/v1/files/docs/a.txt", ALICE_KEY, &[("Range", "bytes=8388600-8388620")]);
    assert_eq!(r.status, 206, "Range: {}", r.describe());
    assert_eq!(r.body, &big[8_388_600..=8_388_620]);
    let r = n.get_h("/v1/files/docs/a.txt", ALICE_KEY, &[("Range", "bytes=-5")]);
    assert_eq!(r.status, 206);
    assert_eq!(r.body, &big[big.len() - 5..]);
    let r = n.get_h("/v1/files/docs/a.txt", ALICE_KEY, &[("Range", "bytes=100000-")]);
    assert_eq!(r.status, 206);
    assert_eq!(r.body.len(), big.len() - 100_000);
    assert_eq!(sha256_hex(&r.body), sha256_hex(&big[100_000..]));

    // Zero bytes.
    let r = n.post("/v1/files/docs/empty.bin", ALICE_KEY, b"");
    assert_eq!(r.status, 201, "empty POST: {}", r.describe());
    let r = n.get("/v1/files/docs/empty.bin", ALICE_KEY);
    assert_eq!((r.status, r.body.len()), (200, 0), "{}", r.describe());

    // Rename and directory move: metadata only, the bytes stay where they are.
    let before = s3.objects();
    let r = n.patch_json("/v1/files/docs/a.txt", ALICE_KEY, &json!({"name": "b.txt"}));
    assert_eq!(r.status, 200, "rename: {}", r.describe());
    let r = n.patch_json("/v1/files/docs", ALICE_KEY, &json!({"destination": "/archive/docs", "create_parents": true}));
    assert_eq!(r.status, 200, "directory move: {}", r.describe());
    let (r, sha, _) = n.get_hashed("/v1/files/archive/docs/b.txt", ALICE_KEY);
    assert_eq!(r.status, 200);
    assert_eq!(sha, sha256_hex(&big));
    assert_eq!(fetch(&n, "/archive/docs/empty.bin"), b"");
    assert_eq!(s3.objects(), before, "no object copied by a rename or move");

    // Delete: the row goes now, the object after the grace period.
    let r = n.delete("/v1/files/archive/docs/b.txt", ALICE_KEY);
    assert_eq!(r.status, 204, "DELETE: {}", r.describe());
    assert_eq!(n.get("/v1/files/archive/docs/b.txt", ALICE_KEY).status, 404);

    // Readiness checks the bucket; S3 operations are counted under backend_type="s3".
    let r = n.get("/ready", NO_AUTH);
    assert_eq!(r.status, 200, "{}", r.describe());
    assert_eq!(r.json()["checks"]["s3"], "ok");
    let m = n.metrics();
    let ok = metric_value(&m, "callfs_backend_ops_total", &[("backend_type", "s3"), ("status", "success")]);
    assert!(ok > 0.0, "S3 backend ops counted:\n{m}");
}

/// A 128 MiB upload and download through the bucket, compared by SHA-256, with the node's peak RSS
/// growing by less than half the file (one part filling, one in flight).
fn s3_large_transfer(db: Db) {
    let s3 = S3Server::start();
    let n = s3_node(db, &s3);
    const LEN: u64 = 128 * MIB;
    const SEED: u64 = 0x53_33;
    let (expected, _) = hash_reader(GenReader::new(SEED, LEN)).unwrap();
    let before = vm_hwm_kib(n.pid());
    let r = n.upload_reader("PUT", "/v1/files/big.bin", ALICE_KEY, LEN, GenReader::new(SEED, LEN));
    assert_eq!(r.status, 201, "128 MiB PUT: {}", r.describe());
    let after_put = vm_hwm_kib(n.pid());
    let (r, sha, len) = n.get_hashed("/v1/files/big.bin", ALICE_KEY);
    assert_eq!(r.status, 200);
    assert_eq!((len, sha), (LEN, expected), "128 MiB read back");
    let after_get = vm_hwm_kib(n.pid());
    eprintln!("MEMORY S3 128 MiB (VmHWM KiB): {before} -> {after_put} (PUT) -> {after_get} (GET)");
    let limit = 64 * 1024;
    assert!(after_get - before < limit, "128 MiB through S3 grew VmHWM by {} KiB (limit {limit})", after_get - before);
    if s3.is_local() {
        assert_eq!(s3.objects().len(), 1);
    }
}

/// A reader that kills the S3 server once `kill_at` bytes have been read, then keeps going.
struct KillingReader {
    inner: GenReader,
    read: u64,
    kill_at: u64,
    pid: Option<u32>,
}

impl Read for KillingReader {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        if self.read >= self.kill_at {
            if let Some(pid) = self.pid.take() {
                unsafe {
                    libc::kill(pid as libc::pid_t, libc::SIGKILL);
                }
            }
        }
        let n = self.inner.read(buf)?;
        self.read += n as u64;
        Ok(n)
    }
}

/// The S3 server dies in the middle of a multipart upload: a clear error (or a cut connection),
/// a failure counter, no row without its object; after a restart of the server everything works.
fn s3_server_killed_mid_upload(db: Db) {
    let mut s3 = S3Server::start();
    if !s3.is_local() {
        return;
    }
    let n = s3_node(db, &s3);
    const LEN: u64 = 48 * MIB;
    let reader = KillingReader { inner: GenReader::new(1, LEN), read: 0, kill_at: 20 * MIB, pid: s3.pid() };
    let mut req = ureq::AgentBuilder::new()
        .timeout(Duration::from_secs(60))
        .build()
        .put(&n.url("/v1/files/cut.bin"))
        .set("Content-Length", &LEN.to_string());
    req = req.set("Authorization", &format!("Bearer {ALICE_KEY}"));
    match req.send(reader) {
        Ok(r) => panic!("upload succeeded with the S3 server dead: {}", r.status()),
        Err(ureq::Error::Status(status, r)) => {
            let body = r.into_string().unwrap_or_default();
            assert_eq!(status, 503, "{body}");
            assert!(body.contains("BACKEND_UNAVAILABLE"), "{body}");
        }
        // The node answered and closed while the body was still being sent.
        Err(ureq::Error::Transport(_)) => {}
    }
    let m = n.metrics();
    let failed = metric_value(&m, "callfs_backend_ops_total", &[("backend_type", "s3"), ("status", "failure")]);
    assert!(failed >= 1.0, "S3 failure counted:\n{m}");
    assert_eq!(n.get("/v1/files/cut.bin", ALICE_KEY).status, 404, "no row for the failed upload");
    let r = n.get("/ready", NO_AUTH);
    assert_eq!(r.status, 503, "{}", r.describe());

    // Reads of existing S3 files fail cleanly while it is down, and recover.
    s3.restart();
    let r = n.post("/v1/files/after.txt", ALICE_KEY, b"back");
    assert_eq!(r.status, 201, "after restart: {}", r.describe());
    s3.kill();
    let r = n.get("/v1/files/after.txt", ALICE_KEY);
    assert_eq!(r.status, 503, "read with S3 down: {}", r.describe());
    s3.restart();
    assert_eq!(fetch(&n, "/after.txt"), b"back");
    assert_eq!(n.get("/ready", NO_AUTH).status, 200);
    assert_eq!(s3.objects().len(), 1, "only the committed object is in the bucket");
}

fn s3_failures(n: &Node) -> f64 {
    metric_value(&n.metrics(), "callfs_backend_ops_total", &[("backend_type", "s3"), ("status", "failure")])
}

/// The S3 server dies in the middle of a download: the client's body is cut short in bounded time
/// (never a hang, never a silently short 200), the failure is counted; with S3 still down a GET
/// answers 503 BACKEND_UNAVAILABLE with Retry-After after the bounded retries; once S3 is back the
/// same file reads back whole.
fn s3_server_killed_mid_download(db: Db) {
    let mut s3 = S3Server::start();
    if !s3.is_local() {
        return;
    }
    let n = s3_node(db, &s3);
    const LEN: u64 = 64 * MIB;
    const SEED: u64 = 0xd0;
    let (expected, _) = hash_reader(GenReader::new(SEED, LEN)).unwrap();
    let r = n.upload_reader("PUT", "/v1/files/dl.bin", ALICE_KEY, LEN, GenReader::new(SEED, LEN));
    assert_eq!(r.status, 201, "PUT: {}", r.describe());
    let failures_before = s3_failures(&n);

    let agent = ureq::AgentBuilder::new().timeout(Duration::from_secs(30)).build();
    let started = std::time::Instant::now();
    let response =
        agent.get(&n.url("/v1/files/dl.bin")).set("Authorization", &format!("Bearer {ALICE_KEY}")).call().unwrap();
    assert_eq!(response.status(), 200);
    assert_eq!(response.header("content-length"), Some(LEN.to_string().as_str()));
    let mut body = response.into_reader();
    let mut buf = vec![0u8; 256 * 1024];
    let mut received = 0u64;
    // Read a few MiB, kill the server, then drain what the sockets still hold.
    while received < 4 * MIB {
        let got = body.read(&mut buf).expect("read before the kill");
        assert!(got > 0, "body ended early before the kill");
        received += got as u64;
    }
    s3.kill();
    let outcome = loop {
        match body.read(&mut buf) {
            Ok(0) => break "eof",
            Ok(got) => received += got as u64,
            Err(_) => break "error",
        }
    };
    let took = started.elapsed();
    assert!(received < LEN, "the whole body arrived although S3 died ({outcome})");
    assert!(took < Duration::from_secs(20), "the cut body took {took:?} to end ({outcome})");
    eprintln!("S3 killed mid-download: {received} of {LEN} bytes, ended by {outcome} after {took:?}");
    // The failure is counted once the node saw the cut connection.
    let deadline = std::time::Instant::now() + Duration::from_secs(5);
    while s3_failures(&n) <= failures_before {
        assert!(std::time::Instant::now() < deadline, "no S3 failure counted:\n{}", n.metrics());
        std::thread::sleep(Duration::from_millis(50));
    }

    // S3 still down: bounded retries, then 503 with the spec's code and a Retry-After.
    let failures_down = s3_failures(&n);
    let asked = std::time::Instant::now();
    let r = n.get("/v1/files/dl.bin", ALICE_KEY);
    let took = asked.elapsed();
    assert_error(&r, 503, "BACKEND_UNAVAILABLE", "GET with S3 down");
    assert_eq!(r.header("retry-after"), Some("1"), "{}", r.describe());
    assert!(took < Duration::from_secs(5), "503 after {took:?}: the retries are bounded");
    assert!(s3_failures(&n) > failures_down, "the failed open is counted");

    s3.restart();
    let (r, sha, len) = n.get_hashed("/v1/files/dl.bin", ALICE_KEY);
    assert_eq!(r.status, 200, "after restart: {}", r.describe());
    assert_eq!((len, sha), (LEN, expected), "the whole file after the restart");
}

/// Files already on localfs keep working when the default becomes S3.
fn localfs_files_survive_the_switch(db: Db) {
    let s3 = S3Server::start();
    let mut opts = NodeOptions::new(db);
    opts = s3.node_options(opts).set("backend.default_backend", json!("localfs"));
    let mut n = Node::start(opts);
    let r = n.post("/v1/files/local.txt", ALICE_KEY, b"on disk");
    assert_eq!(r.status, 201);
    assert_eq!(n.head("/v1/files/local.txt", ALICE_KEY).header("x-callfs-backend"), Some("localfs"));
    // Restart with default_backend s3 on the same data and database.
    let mut config = n.config.clone();
    set_path(&mut config, "backend.default_backend", json!("s3"));
    std::fs::write(&n.config_path, to_yaml(&config)).unwrap();
    n.restart();
    assert_eq!(fetch(&n, "/local.txt"), b"on disk");
    let r = n.post("/v1/files/remote.txt", ALICE_KEY, b"in the bucket");
    assert_eq!(r.status, 201);
    assert_eq!(n.head("/v1/files/remote.txt", ALICE_KEY).header("x-callfs-backend"), Some("s3"));
    assert_eq!(fetch(&n, "/remote.txt"), b"in the bucket");
}

/// Tiering (cluster.md §5): PATCH {"backend":"s3"} copies a localfs file into a new object and
/// switches the row; {"backend":"localfs"} brings it back to this node; a rename may ride along.
fn tiering_both_ways(db: Db) {
    let s3 = S3Server::start();
    let opts = s3.node_options(NodeOptions::new(db)).set("backend.default_backend", json!("localfs"));
    let n = Node::start(opts);
    let data = random_bytes((8 * MIB + 17) as usize, 3);
    assert_eq!(n.post("/v1/files/t/f.bin", ALICE_KEY, &data).status, 201);
    assert_eq!(n.head("/v1/files/t/f.bin", ALICE_KEY).header("x-callfs-backend"), Some("localfs"));

    let r = n.patch_json("/v1/files/t/f.bin", ALICE_KEY, &json!({"name": "f.bin", "backend": "s3"}));
    assert_eq!(r.status, 200, "to s3: {}", r.describe());
    let h = n.head("/v1/files/t/f.bin", ALICE_KEY);
    assert_eq!(h.header("x-callfs-backend"), Some("s3"), "{}", h.describe());
    assert_eq!(fetch(&n, "/t/f.bin"), data);
    if s3.is_local() {
        assert_eq!(s3.objects().len(), 1);
    }
    // Same backend again: a request already satisfied, nothing done.
    let r = n.patch_json("/v1/files/t/f.bin", ALICE_KEY, &json!({"name": "f.bin", "backend": "s3"}));
    assert_eq!(r.status, 200, "no change: {}", r.describe());
    if s3.is_local() {
        assert_eq!(s3.objects().len(), 1, "no second copy");
    }

    let r = n.patch_json("/v1/files/t/f.bin", ALICE_KEY, &json!({"backend": "localfs", "name": "g.bin"}));
    assert_eq!(r.status, 200, "back to localfs with a rename: {}", r.describe());
    assert_eq!(r.json(), json!({"path": "/t/g.bin"}));
    let h = n.head("/v1/files/t/g.bin", ALICE_KEY);
    assert_eq!(h.header("x-callfs-backend"), Some("localfs"));
    assert_eq!(h.header("x-callfs-instance-id"), Some(INSTANCE_ID));
    assert_eq!(fetch(&n, "/t/g.bin"), data);
    assert_eq!(n.get("/v1/files/t/f.bin", ALICE_KEY).status, 404);
    assert!(blob_with(&n.data_root, &data).is_some(), "the bytes are a localfs blob again");
}

fn fsck(n: &Node) -> (i32, String) {
    let out = callfs_cmd().arg("fsck").arg("--config").arg(&n.config_path).output().expect("run callfs fsck");
    (out.status.code().unwrap_or(-1), String::from_utf8_lossy(&out.stdout).into_owned())
}

/// `callfs fsck` covers the bucket: rows whose object is missing and objects nothing references.
fn fsck_covers_the_bucket(db: Db) {
    let s3 = S3Server::start();
    let Some(bucket_dir) = s3.bucket_dir.clone() else { return };
    let n = s3_node(db, &s3);
    assert_eq!(n.post("/v1/files/kept.txt", ALICE_KEY, b"kept").status, 201);
    assert_eq!(n.post("/v1/files/lost.txt", ALICE_KEY, b"lost").status, 201);
    let (code, out) = fsck(&n);
    assert_eq!(code, 0, "clean bucket: {out}");
    assert!(out.contains("fsck: clean"), "{out}");

    // An object without a row, and a row without its object.
    let objects = s3.objects();
    assert_eq!(objects.len(), 2);
    let stray = "0123456789abcdef0123456789abcdef";
    std::fs::copy(bucket_dir.join("blobs").join(&objects[0]), bucket_dir.join("blobs").join(stray)).unwrap();
    let lost_blob =
        objects.iter().find(|b| std::fs::read(bucket_dir.join("blobs").join(b)).unwrap() == b"lost").unwrap().clone();
    std::fs::remove_file(bucket_dir.join("blobs").join(&lost_blob)).unwrap();
    let (code, out) = fsck(&n);
    assert_eq!(code, 1, "{out}");
    assert!(out.contains(&format!("unreferenced blob: {stray}")), "{out}");
    assert!(out.contains("missing bytes: /lost.txt"), "{out}");
    // The node reports the missing object as a missing file.
    assert_eq!(n.get("/v1/files/lost.txt", ALICE_KEY).status, 404);
    assert_eq!(fetch(&n, "/kept.txt"), b"kept");
}

/// Sum of a counter family over all its series.
fn family_sum(text: &str, name: &str) -> f64 {
    parse_metrics(text).into_iter().filter(|(n, _, _)| n == name).map(|(_, _, v)| v).sum()
}

/// Two nodes sharing one PostgreSQL database and one bucket: a file written through node 1 is read
/// through node 2 with no peer hop, and stays readable after node 1 is killed.
#[test]
fn two_nodes_share_the_bucket() {
    if skip_postgres() {
        return;
    }
    let s3 = S3Server::start();
    let mut n1 = Node::start(s3.node_options(NodeOptions::new(Db::Postgres)));
    let dsn = n1.config["metadata_store"]["dsn"].as_str().unwrap().to_string();
    let n2 = Node::start(
        s3.node_options(NodeOptions::new(Db::Sqlite))
            .set("metadata_store", json!({"type": "postgres", "dsn": dsn}))
            .set("instance_discovery.instance_id", json!("test-node-2")),
    );
    let data = random_bytes((3 * MIB) as usize, 11);
    assert_eq!(n1.post("/v1/files/shared/f.bin", ALICE_KEY, &data).status, 201);
    let before = family_sum(&n2.metrics(), "callfs_cross_server_operations_total");
    let r = n2.get("/v1/files/shared/f.bin", BOB_KEY);
    assert_eq!(r.status, 200, "{}", r.describe());
    assert_eq!(sha256_hex(&r.body), sha256_hex(&data));
    assert_eq!(r.header("x-callfs-instance-id"), Some("test-node-2"), "served by node 2 itself");
    // An overwrite through node 2, read back through node 1.
    assert_eq!(n2.put("/v1/files/shared/f.bin", BOB_KEY, b"v2").status, 403, "bob does not own it");
    assert_eq!(n2.put("/v1/files/shared/f.bin", ALICE_KEY, b"v2").status, 200);
    assert_eq!(fetch(&n1, "/shared/f.bin"), b"v2");
    assert_eq!(family_sum(&n2.metrics(), "callfs_cross_server_operations_total"), before, "no peer hop for S3 files");
    n1.kill9();
    assert_eq!(fetch(&n2, "/shared/f.bin"), b"v2", "readable with node 1 dead");
}

/// Any node may settle the shared bucket's garbage, but each blob is deleted and counted once: two
/// nodes sweeping the same due garbage at the same moment (both at start) claim disjoint rows.
#[test]
fn s3_garbage_is_swept_once_by_two_nodes() {
    if skip_postgres() {
        return;
    }
    let s3 = S3Server::start();
    if !s3.is_local() {
        return;
    }
    let mut n1 = Node::start(s3.node_options(NodeOptions::new(Db::Postgres)));
    let dsn = n1.config["metadata_store"]["dsn"].as_str().unwrap().to_string();
    let mut n2 = Node::start(
        s3.node_options(NodeOptions::new(Db::Sqlite))
            .set("metadata_store", json!({"type": "postgres", "dsn": dsn}))
            .set("instance_discovery.instance_id", json!("test-node-2")),
    );
    const FILES: usize = 200;
    for i in 0..FILES {
        assert_eq!(n1.post(&format!("/v1/files/g/{i}.txt"), ALICE_KEY, b"garbage soon").status, 201);
        assert_eq!(n1.delete(&format!("/v1/files/g/{i}.txt"), ALICE_KEY).status, 204);
    }
    assert_eq!(s3.objects().len(), FILES, "deleted files stay in the bucket for the grace period");
    // End the grace period now, then start both sweeps together (each node sweeps at start).
    psql(&dsn, "UPDATE blob_garbage SET delete_after = now() - interval '1 minute'").unwrap();
    std::thread::scope(|scope| {
        scope.spawn(|| n1.restart());
        scope.spawn(|| n2.restart());
    });
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    while !s3.objects().is_empty() || psql(&dsn, "SELECT count(*) FROM blob_garbage").unwrap() != "0" {
        assert!(std::time::Instant::now() < deadline, "garbage left: {} objects", s3.objects().len());
        std::thread::sleep(Duration::from_millis(100));
    }
    let swept = |n: &Node, status: &str| {
        metric_value(&n.metrics(), "callfs_blob_sweeps_total", &[("kind", "garbage"), ("status", status)])
    };
    let (one, two) = (swept(&n1, "success"), swept(&n2, "success"));
    eprintln!("S3 garbage swept: node 1 {one}, node 2 {two}");
    assert_eq!(one + two, FILES as f64, "each blob counted once (node 1 {one}, node 2 {two})");
    assert_eq!(swept(&n1, "failure") + swept(&n2, "failure"), 0.0);
}

/// A bucket that cannot be reached or refuses the keys stops the start (storage.md §3), exit 1.
#[test]
fn start_fails_without_a_usable_bucket() {
    let s3 = S3Server::start();
    if !s3.is_local() {
        return;
    }
    let closed = format!("http://127.0.0.1:{}", free_port());
    for (what, endpoint, secret) in
        [("unreachable", closed.as_str(), s3.secret_key.as_str()), ("wrong key", s3.endpoint.as_str(), "wrong-secret")]
    {
        let dir = tempfile::tempdir().unwrap();
        let mut config = base_config(dir.path(), free_port());
        set_path(&mut config, "backend.default_backend", json!("s3"));
        set_path(&mut config, "backend.s3_bucket_name", json!(s3.bucket));
        set_path(&mut config, "backend.s3_endpoint", json!(endpoint));
        set_path(&mut config, "backend.s3_access_key", json!(s3.access_key));
        set_path(&mut config, "backend.s3_secret_key", json!(secret));
        let path = dir.path().join("config.yaml");
        std::fs::write(&path, to_yaml(&config)).unwrap();
        let out = callfs_cmd()
            .arg("server")
            .arg("--config")
            .arg(&path)
            .current_dir(dir.path())
            .output()
            .expect("run callfs server");
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(1), "{what}: {stderr}");
        assert!(stderr.contains("S3 bucket"), "{what}: {stderr}");
    }
}

db_tests!(
    s3_file_api,
    fsck_covers_the_bucket,
    s3_large_transfer,
    s3_server_killed_mid_upload,
    s3_server_killed_mid_download,
    localfs_files_survive_the_switch,
    tiering_both_ways
);
