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
//! The harness lives in tests/common/cluster.rs (shared with tests/blobs.rs and tests/soak.rs): free
//! ports, a YAML config per node, `callfs server --config FILE` with stderr in a log file, `/health`
//! polling, SIGKILL by pid on drop. The cluster tests run one at a time (a process-wide mutex): each
//! starts three nodes, and several measure timing (peer probes, 502 deadlines) or memory.

mod common;

use std::collections::{BTreeMap, BTreeSet};
use std::fs;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Barrier;
use std::time::{Duration, Instant};

use common::cluster::*;
use common::*;
use serde_json::json;

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
    assert!(c.blob_with(0, &updated).is_some(), "the new bytes live in a blob on node-1's disk");
    assert!(c.blob_with(1, &updated).is_none(), "a forwarded PUT must not leave bytes on the forwarding node");

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
    assert!(is_json_content_type(&r), "409 Content-Type: {:?}", r.header("content-type"));
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
    let Some(c) = Cluster::start() else { return };
    let src = b"patch me through another node".to_vec();
    assert_status(&c.post(0, "/v1/files/p/src.txt", ALICE, &src), 201, "POST on N1");

    // A rename is metadata only: executed by the receiving node, never forwarded.
    let before = c.metrics(1);
    let r = c.patch(1, "/v1/files/p/src.txt", ALICE, &json!({"name": "x"}));
    assert_status(&r, 200, "PATCH {name} via N2 of an N1 file");
    assert_eq!(r.json(), json!({"path": "/p/x"}), "PATCH response body");
    let after = c.metrics(1);
    let mv = [("operation", "proxy_move"), ("peer", "node-1"), ("status", "success")];
    assert_delta(&before, &after, CROSS, &mv, 0.0, "a rename is not forwarded");
    let fop = [("operation", "rename"), ("backend_type", "localfs")];
    assert_delta(&before, &after, "callfs_file_operations_total", &fop, 1.0, "rename executed by N2");
    assert_body(&c.get(2, "/v1/files/p/x", BOB), &src, "renamed file via N3");
    assert_error(&c.get(2, "/v1/files/p/src.txt", BOB), 404, "FILE_NOT_FOUND", "old name via N3");
    let h = c.head(2, "/v1/files/p/x", BOB);
    assert_eq!(h.header("x-callfs-instance-id"), Some("node-1"), "rename keeps the node");
    assert_eq!(h.header("x-callfs-owner"), Some("alice"), "rename keeps the owner");
    assert!(c.blob_with(0, &src).is_some(), "the bytes did not move on node-1's disk");

    // Relocation, same path, requested via N2 (neither source nor target): executed by N3.
    let rel = random_bytes(MIB + 3, 41);
    assert_status(&c.post(0, "/v1/files/p/rel.bin", ALICE, &rel), 201, "POST rel.bin on N1");
    let etag = c.head(0, "/v1/files/p/rel.bin", ALICE).header("etag").map(str::to_string);
    let (m2, m3) = (c.metrics(1), c.metrics(2));
    let r = c.patch(1, "/v1/files/p/rel.bin", ALICE, &json!({"name": "rel.bin", "instance": "node-3"}));
    assert_status(&r, 200, "PATCH {instance: node-3} via N2");
    assert_eq!(r.json(), json!({"path": "/p/rel.bin"}), "PATCH response body");
    let (m2b, m3b) = (c.metrics(1), c.metrics(2));
    let to3 = [("operation", "proxy_move"), ("peer", "node-3"), ("status", "success")];
    assert_delta(&m2, &m2b, CROSS, &to3, 1.0, "relocation forwarded to the target");
    let rr = [("operation", "relocate_read"), ("peer", "node-1"), ("status", "success")];
    assert_delta(&m3, &m3b, CROSS, &rr, 1.0, "target reads the source blob");
    for via in 0..3 {
        let h = c.head(via, "/v1/files/p/rel.bin", ALICE);
        assert_status(&h, 200, "HEAD after relocation");
        assert_eq!(h.header("x-callfs-instance-id"), Some("node-3"), "instance after relocation via node {}", via + 1);
        assert_eq!(h.header("x-callfs-size"), Some(rel.len().to_string().as_str()));
        assert_eq!(h.header("etag").map(str::to_string), etag, "a relocation keeps the content version");
    }
    assert!(c.blob_with(2, &rel).is_some(), "bytes in a new blob on node-3's disk");

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

    // Overwrite rules: N1's file onto N3's file, via N2.
    let ow = b"overwriting source on node one".to_vec();
    assert_status(&c.post(0, "/v1/files/p/ow-src.txt", ALICE, &ow), 201, "POST ow-src on N1");
    assert_status(&c.post(2, "/v1/files/p/ow-dst.txt", ALICE, b"old destination"), 201, "POST ow-dst on N3");
    let r = c.patch(1, "/v1/files/p/ow-src.txt", ALICE, &json!({"destination": "/p/ow-dst.txt"}));
    assert_error(&r, 409, "FILE_ALREADY_EXISTS", "PATCH onto an existing destination without overwrite");
    assert_body(&c.get(0, "/v1/files/p/ow-dst.txt", BOB), b"old destination", "destination untouched");
    let r = c.patch(1, "/v1/files/p/ow-dst.txt", BOB, &json!({"destination": "/p/ow-src.txt", "overwrite": true}));
    assert_error(&r, 403, "PERMISSION_DENIED", "bob may not move or replace alice's files");
    let r = c.patch(1, "/v1/files/p/ow-src.txt", ALICE, &json!({"destination": "/p/ow-dst.txt", "overwrite": true}));
    assert_status(&r, 200, "PATCH with overwrite via N2");
    for via in 0..3 {
        assert_body(&c.get(via, "/v1/files/p/ow-dst.txt", BOB), &ow, "overwritten destination");
        assert_status(&c.head(via, "/v1/files/p/ow-src.txt", BOB), 404, "source gone after the move");
    }

    // A directory holding bytes on all three nodes, moved through N2: one transaction, no node
    // contacted, every byte stays where it is.
    let parts: [(usize, &str, Vec<u8>); 3] = [
        (0, "/tree/a.bin", random_bytes(3000, 51)),
        (1, "/tree/sub/b.bin", random_bytes(4000, 52)),
        (2, "/tree/c.bin", random_bytes(5000, 53)),
    ];
    for (node, path, body) in &parts {
        assert_status(&c.post(*node, &format!("/v1/files{path}"), ALICE, body), 201, "POST tree file");
    }
    let blobs_before: Vec<Option<PathBuf>> = parts.iter().map(|(n, _, b)| c.blob_with(*n, b)).collect();
    let before = c.metrics(1);
    let r = c.patch(1, "/v1/files/tree", ALICE, &json!({"destination": "/moved-tree"}));
    assert_status(&r, 200, "directory move via N2");
    assert_eq!(r.json(), json!({"path": "/moved-tree"}));
    let after = c.metrics(1);
    for peer in ["node-1", "node-3"] {
        let m = [("operation", "proxy_move"), ("peer", peer)];
        assert_delta(&before, &after, CROSS, &m, 0.0, "a directory move contacts no node");
    }
    for (i, (node, path, body)) in parts.iter().enumerate() {
        let new_path = path.replacen("/tree", "/moved-tree", 1);
        for via in 0..3 {
            assert_body(&c.get(via, &format!("/v1/files{new_path}"), BOB), body, "moved subtree file");
            assert_status(&c.head(via, &format!("/v1/files{path}"), BOB), 404, "old subtree path");
        }
        let h = c.head(*node, &format!("/v1/files{new_path}"), BOB);
        assert_eq!(h.header("x-callfs-instance-id"), Some(IDS[*node]), "{new_path} stays on its node");
        assert_eq!(c.blob_with(*node, body), blobs_before[i], "{new_path}: the same blob, untouched");
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

    // Renames and directory moves need no byte, so they work with the holder down; a relocation
    // to the dead node fails with 502 and changes nothing (cluster.md §5).
    let r = c.patch(1, "/v1/files/p/x", ALICE, &json!({"name": "y"}));
    assert_status(&r, 200, "rename of a file on dead node-1");
    let r = c.patch(1, "/v1/files/p/moved/rel2.bin", ALICE, &json!({"name": "rel2.bin", "instance": "node-1"}));
    assert_error(&r, 502, "PEER_UNAVAILABLE", "relocation to dead node-1");
    let r = c.patch(2, "/v1/files/moved-tree", ALICE, &json!({"destination": "/tree-again"}));
    assert_status(&r, 200, "directory move with a holder down");
    let names = listing_names(&c.list(1, "/p", ALICE));
    assert!(names.contains(&"y".to_string()) && !names.contains(&"x".to_string()), "/p after the rename: {names:?}");
    let h = c.head(2, "/v1/files/p/moved/rel2.bin", ALICE);
    assert_eq!(h.header("x-callfs-instance-id"), Some("node-3"), "failed relocation leaves the source");
    assert_body(&c.get(1, "/v1/files/p/moved/rel2.bin", BOB), &rel2, "source intact after a failed relocation");
    for (node, path, body) in parts.iter().filter(|(n, _, _)| *n != 0) {
        let new_path = path.replacen("/tree", "/tree-again", 1);
        assert_body(&c.get(3 - node, &format!("/v1/files{new_path}"), BOB), body, "subtree after the move");
    }
    // node-1 comes back: its files are served under their new names.
    c.restart(0);
    assert_body(&c.get(2, "/v1/files/p/y", BOB), &src, "renamed while its node was down");
    assert_body(&c.get(1, "/v1/files/tree-again/a.bin", BOB), &parts[0].2, "moved while its node was down");
}

/// kill -9 of N1: its files answer 502 PEER_UNAVAILABLE quickly, everything else keeps working,
/// callfs_peer_up drops to 0 and failure counters rise; a restart on the same data recovers
/// (cluster.md §4, §9; observability.md §1).
#[test]
fn peer_failure_and_recovery() {
    let _guard = serial();
    // A short header timeout so that the PEER_TIMEOUT case below stays quick.
    let Some(c) = Cluster::start_with(|_, cfg| cfg["backend"]["internal_proxy_timeout"] = json!("4s")) else {
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
    let a = random_bytes(100 * KIB, 61);
    assert_status(&c.post(0, "/v1/files/ie/a.txt", ALICE, &a), 201, "POST a on N1");
    let blob_file = c.blob_with(0, &a).expect("a's blob on node-1");
    let blob = blob_file.file_name().unwrap().to_string_lossy().into_owned();
    let url = format!("/v1/internal/blobs/{blob}");

    // The internal secret only.
    assert_error(&c.get(0, &url, NO_AUTH), 401, "AUTHENTICATION_FAILED", "internal GET without credentials");
    assert_error(&c.get(0, &url, ALICE), 403, "PERMISSION_DENIED", "internal GET with an API key");
    assert_error(&c.get(0, &url, "not-a-key-at-all-123"), 401, "AUTHENTICATION_FAILED", "unknown key");
    // The revision-1 byte endpoints are gone; nothing under /v1/internal/ answers without the secret.
    let body = json!({"from": "/ie/a.txt", "to": "/ie/b.txt"}).to_string();
    let r = c.call(0, "POST", "/v1/internal/localfs-move", NO_AUTH, &[], Some(body.as_bytes()));
    assert_error(&r, 401, "AUTHENTICATION_FAILED", "old move endpoint without credentials");
    let r = c.call(0, "POST", "/v1/internal/localfs-move", INTERNAL, &[], Some(body.as_bytes()));
    assert_error(&r, 404, "NOT_FOUND", "old move endpoint is gone");
    let r = c.call(0, "DELETE", &url, INTERNAL, &[], None);
    assert_error(&r, 405, "METHOD_NOT_ALLOWED", "no remote delete of a blob");
    assert_body(&c.get(1, "/v1/files/ie/a.txt", BOB), &a, "nothing moved or deleted");

    // Reads: the whole blob, a range, HEAD; malformed and absent ids.
    assert_body(&c.get(0, &url, INTERNAL), &a, "internal GET of a blob");
    let r = c.call(0, "GET", &url, INTERNAL, &[("Range", "bytes=10-19")], None);
    assert_status(&r, 206, "ranged internal GET");
    assert_eq!(r.body, a[10..20].to_vec(), "range of the blob");
    let r = c.call(0, "HEAD", &url, INTERNAL, &[], None);
    assert_eq!(r.header("content-length"), Some(a.len().to_string().as_str()), "HEAD length");
    let r = c.get(0, "/v1/internal/blobs/..%2F..%2Fetc%2Fpasswd", INTERNAL);
    assert_error(&r, 400, "BAD_REQUEST", "a malformed blob id");
    let r = c.get(0, &format!("/v1/internal/blobs/{}", "0".repeat(32)), INTERNAL);
    assert_error(&r, 404, "FILE_NOT_FOUND", "an absent blob");
    let r = c.get(1, &url, INTERNAL);
    assert_error(&r, 404, "FILE_NOT_FOUND", "a blob of another node is not here");

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
    assert_body(&c.get(2, "/v1/files/ie/a.txt", BOB), &a, "alice's file intact");
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
