//! Immutable blobs against real nodes (issue 9; storage.md revision 2, cluster.md §5, §6, §8):
//! each test reproduces one failure of the path-keyed layout of revision 1 on three `callfs`
//! processes sharing one PostgreSQL database (tests/common/cluster.rs), and checks what the
//! blob layout promises instead: bytes never change under a row, renames and directory moves are
//! one metadata transaction, relocations verify before they switch, `callfs fsck` stays clean.
//!
//! `scripts/with-postgres.sh cargo test --release --test blobs -- --test-threads=2`
//! (`CALLFS_TEST_PG_DSN` as in tests/cluster.rs). The tests run one at a time (`serial()`).

mod common;

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::fs;
use std::path::Path;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Barrier, Mutex};
use std::thread;
use std::time::{Duration, Instant};

use common::cluster::*;
use common::*;
use serde_json::json;

/// Every row's path is its parent's path plus its name (a child never outlives its parent, and
/// a subtree move rewrites every descendant): the rows that break that, as
/// `path (parent <its parent row's path>; <whether a directory row exists at the path's parent>)`.
fn broken_parent_links(c: &Cluster) -> Vec<String> {
    let sql = "SELECT c.path || ' (parent ' || COALESCE(p.path, 'missing') || '; ' || \
               CASE WHEN EXISTS (SELECT 1 FROM inodes d WHERE d.type = 'directory' AND \
               d.path = regexp_replace(c.path, '/[^/]*$', '')) THEN 'its path''s directory exists' \
               ELSE 'no directory at its path''s parent' END || ')' FROM inodes c \
               LEFT JOIN inodes p ON p.id = c.parent_id WHERE c.path <> '/' AND (p.id IS NULL OR c.path <> \
               (CASE WHEN p.path = '/' THEN '' ELSE p.path END) || '/' || c.name OR p.type <> 'directory')";
    c.sql(sql).lines().map(str::to_string).filter(|l| !l.is_empty()).collect()
}

/// `callfs fsck` on every node: exit 0 and "clean".
#[track_caller]
fn assert_fsck_clean(c: &Cluster, ctx: &str) {
    for (i, id) in IDS.iter().enumerate() {
        let (code, out) = c.fsck(i);
        assert_eq!(code, 0, "{ctx}: callfs fsck on {id} exited {code}:\n{out}");
        assert!(out.contains("fsck: clean"), "{ctx}: callfs fsck on {id}:\n{out}");
    }
}

fn tally(map: &mut BTreeMap<String, usize>, key: impl Into<String>) {
    *map.entry(key.into()).or_default() += 1;
}

/// `status` or `status CODE` of a response, `transport` for no response.
fn outcome(r: &Result<Resp, String>) -> String {
    match r {
        Ok(r) if r.status < 400 => r.status.to_string(),
        Ok(r) => format!("{} {}", r.status, error_code(r)),
        Err(_) => "transport".to_string(),
    }
}

/// Reproduction 1: a relocation whose source dies mid-copy answered 200 and kept a truncated
/// copy. Now the copy is verified before the switch: the PATCH fails (502/504), the row and the
/// bytes stay on node-1, and node-3 keeps nothing of the copy (cluster.md §5 steps 2–3).
#[test]
fn relocation_with_the_source_killed_mid_copy_keeps_the_file() {
    let _guard = serial();
    let Some(c) = Cluster::start_with(|_, cfg| cfg["dlm"]["lease_ttl"] = json!("3s")) else { return };
    const LEN: u64 = 150 * MIB as u64;
    const SEED: u64 = 0x150_0001;
    let sha = stream_sha(SEED, LEN);
    let path = "/v1/files/reloc/big.bin";
    assert_status(&c.upload_stream(0, "POST", path, ALICE, LEN, SEED), 201, "POST 150 MiB on node-1");
    let etag = c.head(0, path, ALICE).header("etag").map(str::to_string);
    assert!(etag.is_some(), "HEAD on node-1 has an ETag");

    for round in 1..=2 {
        let (result, took, killed_at, copied) = thread::scope(|s| {
            let request = s.spawn(|| {
                let t = Instant::now();
                let r = c.try_patch(1, path, ALICE, &json!({"destination": "/reloc/big.bin", "instance": "node-3"}));
                (r, t.elapsed())
            });
            // Kill the source once node-3 has part of the copy in its tmp/ (at most ~0.1 s in),
            // so that the kill lands mid-copy however fast the machine copies.
            let t = Instant::now();
            let mut copied = 0u64;
            while t.elapsed() < Duration::from_millis(100) && copied < 64 * MIB as u64 {
                copied = c.tmp_files(2).iter().filter_map(|p| fs::metadata(p).ok()).map(|m| m.len()).sum();
                thread::sleep(Duration::from_micros(200));
            }
            c.kill9(0);
            let killed_at = t.elapsed();
            let (result, took) = request.join().unwrap();
            (result, took, killed_at, copied)
        });
        eprintln!(
            "round {round}: node-1 killed after {killed_at:?} with {copied} bytes in node-3's tmp/; \
             PATCH answered {} after {took:?}",
            outcome(&result)
        );
        let r = result.unwrap_or_else(|e| panic!("round {round}: node-2 must answer the PATCH: {e}"));
        assert!(
            r.status == 502 || r.status == 504,
            "round {round}: a relocation whose source died mid-copy must fail with 502/504, got {}",
            r.describe()
        );
        // The row never moved: listings are metadata only and answer with node-1 down.
        let listing = c.list(2, "/reloc", ALICE);
        assert_eq!(listing["items"][0]["size"], json!(LEN), "round {round}: row size: {listing}");
        // Nothing of the copy stays on the target: neither a blob, nor a temporary file, nor an intent.
        let mut left = (Vec::new(), Vec::new(), String::new());
        let cleaned = wait_until(Duration::from_secs(10), || {
            left = (c.blob_files(2), c.tmp_files(2), c.sql("SELECT count(*) FROM blob_intents"));
            left.0.is_empty() && left.1.is_empty() && left.2 == "0"
        });
        assert!(cleaned, "round {round}: node-3 kept part of the failed copy (blobs, tmp files, intents): {left:?}");

        c.restart(0);
        for (via, id) in IDS.iter().enumerate() {
            let h = c.head(via, path, ALICE);
            assert_status(&h, 200, &format!("round {round}: HEAD via {id} after the restart"));
            assert_eq!(h.header("x-callfs-instance-id"), Some("node-1"), "round {round}: the file stays on node-1");
            assert_eq!(h.header("x-callfs-size"), Some(LEN.to_string().as_str()), "round {round}: size");
            assert_eq!(h.header("etag").map(str::to_string), etag, "round {round}: content version unchanged");
        }
        for via in [1, 2] {
            let (r, got, n) = c.get_hashed(via, path, BOB);
            assert_status(&r, 200, &format!("round {round}: GET via {}", IDS[via]));
            assert_eq!((got.as_str(), n), (sha.as_str(), LEN), "round {round}: bytes via {}", IDS[via]);
        }
    }

    // Control: undisturbed, the same relocation succeeds (and takes well over the 0.1 s above).
    let t = Instant::now();
    let r = c.patch(1, path, ALICE, &json!({"destination": "/reloc/big.bin", "instance": "node-3"}));
    eprintln!("undisturbed relocation of 150 MiB: {} after {:?}", r.status, t.elapsed());
    assert_status(&r, 200, "the relocation with every node up");
    let h = c.head(0, path, ALICE);
    assert_eq!(h.header("x-callfs-instance-id"), Some("node-3"), "relocated");
    assert_eq!(h.header("etag").map(str::to_string), etag, "a relocation keeps the content version");
    let (r, got, n) = c.get_hashed(0, path, BOB);
    assert_status(&r, 200, "GET via node-1 after the relocation");
    assert_eq!((got.as_str(), n), (sha.as_str(), LEN), "bytes after the relocation");
}

/// Reproduction 2: two identical relocations at once deleted the file (the second copied the
/// now-local file onto itself, then removed "the old bytes"). Now they end with one switch and
/// no-ops or `409 RESOURCE_CHANGED`; the file is never lost (cluster.md §5).
#[test]
fn concurrent_identical_relocations_never_lose_the_file() {
    let _guard = serial();
    let Some(c) = Cluster::start() else { return };
    let mut statuses = BTreeMap::new();
    let mut wrong = Vec::new();
    for round in 0..10u64 {
        for (label, len) in [("1k", 1000), ("1m", MIB)] {
            let rel = format!("/crel/r{round}-{label}.bin");
            let url = format!("/v1/files{rel}");
            let body = random_bytes(len, 0x2000 + round * 2 + len as u64);
            assert_status(&c.post(0, &url, ALICE, &body), 201, "POST on node-1");
            let barrier = Barrier::new(3);
            let results: Vec<Result<Resp, String>> = thread::scope(|s| {
                let handles: Vec<_> = (0..3)
                    .map(|via| {
                        let (c, barrier, url, rel) = (&c, &barrier, &url, &rel);
                        s.spawn(move || {
                            barrier.wait();
                            c.try_patch(via, url, ALICE, &json!({"destination": rel, "instance": "node-3"}))
                        })
                    })
                    .collect();
                handles.into_iter().map(|h| h.join().unwrap()).collect()
            });
            let mut switched = 0;
            for (via, r) in results.iter().enumerate() {
                tally(&mut statuses, outcome(r));
                match r {
                    Ok(r) if r.status == 200 => {
                        assert_eq!(r.json(), json!({"path": rel}), "{rel}: PATCH body via {}", IDS[via]);
                        switched += 1;
                    }
                    Ok(r) if r.status == 409 && error_code(r) == "RESOURCE_CHANGED" => {}
                    Ok(r) => wrong.push(format!("{rel} via {}: {}", IDS[via], r.describe())),
                    Err(e) => wrong.push(format!("{rel} via {}: {e}", IDS[via])),
                }
            }
            assert!(switched >= 1 || !wrong.is_empty(), "{rel}: no relocation succeeded and nothing failed");
            // Never lost, whatever the PATCHes answered.
            for (via, id) in IDS.iter().enumerate() {
                let h = c.head(via, &url, BOB);
                assert_status(&h, 200, &format!("{rel}: HEAD via {id}"));
                assert_eq!(h.header("x-callfs-instance-id"), Some("node-3"), "{rel}: relocated");
                assert_body(&c.get(via, &url, BOB), &body, &format!("{rel}: GET via {id}"));
            }
        }
    }
    eprintln!("concurrent identical relocations, PATCH outcomes: {statuses:?}");

    // The same relocation again, once the file is there: 200 and nothing done (cluster.md §5
    // step 1), through the target itself and through a node that forwards it.
    let url = "/v1/files/crel/r0-1m.bin";
    let blob = c.sql("SELECT blob FROM inodes WHERE path = '/crel/r0-1m.bin'");
    let etag = c.head(2, url, ALICE).header("etag").map(str::to_string);
    for via in [2, 0] {
        let r = c.patch(via, url, ALICE, &json!({"destination": "/crel/r0-1m.bin", "instance": "node-3"}));
        if r.status != 200 {
            wrong.push(format!("repeated relocation of a file already on node-3 via {}: {}", IDS[via], r.describe()));
        }
        assert_eq!(c.sql("SELECT blob FROM inodes WHERE path = '/crel/r0-1m.bin'"), blob, "nothing done");
        assert_eq!(c.head(1, url, ALICE).header("etag").map(str::to_string), etag, "nothing done");
    }
    assert!(wrong.is_empty(), "PATCHes must answer 200 or 409 RESOURCE_CHANGED; {} did not: {wrong:#?}", wrong.len());
}

/// Reproduction 3: kill -9 of the node executing a directory move stranded the subtree (bytes
/// of some nodes already under the new name, metadata under the old one). Now the move is one
/// metadata transaction: after the restart every file is readable at exactly one of the two
/// names, all at the same one (cluster.md §5).
#[test]
fn directory_move_survives_kill9_of_the_executing_node() {
    let _guard = serial();
    let Some(c) = Cluster::start_with(|_, cfg| cfg["dlm"]["lease_ttl"] = json!("2s")) else { return };
    let names = ["/mv-a", "/mv-b"];
    let files: Vec<(String, Vec<u8>)> = (0..12u64)
        .map(|k| (format!("/s{}/f{k}.bin", k % 2), random_bytes(1000 + 1500 * k as usize, 0x3000 + k)))
        .collect();
    for (k, (rel, body)) in files.iter().enumerate() {
        let r = c.post(k % 3, &format!("/v1/files{}{rel}", names[0]), ALICE, body);
        assert_status(&r, 201, &format!("POST {rel} via {}", IDS[k % 3]));
    }
    let mut cur = 0;
    let mut outcomes = BTreeMap::new();
    for delay_ms in 0..=12u64 {
        let x = delay_ms as usize % 3;
        let (from, to) = (names[cur], names[1 - cur]);
        // Leases left by the last kill expire first, so that the move starts at once.
        let live = "SELECT count(*) FROM callfs_locks WHERE expires_at > now()";
        assert!(wait_until(Duration::from_secs(10), || c.sql(live) == "0"), "leases outlive their TTL");
        let result = thread::scope(|s| {
            let request = s.spawn(|| c.try_patch(x, &format!("/v1/files{from}"), ALICE, &json!({"destination": to})));
            thread::sleep(Duration::from_millis(delay_ms));
            c.kill9(x);
            request.join().unwrap()
        });
        c.restart(x);
        let reader = (x + 1) % 3;
        let mut at = [0usize; 2];
        for (rel, body) in &files {
            let got: Vec<Resp> = [from, to].iter().map(|n| c.get(reader, &format!("/v1/files{n}{rel}"), BOB)).collect();
            let ctx = format!("kill after {delay_ms} ms of the move {from} -> {to} via {}: {rel}", IDS[x]);
            match (got[0].status, got[1].status) {
                (200, 404) => {
                    assert_body(&got[0], body, &ctx);
                    at[0] += 1;
                }
                (404, 200) => {
                    assert_body(&got[1], body, &ctx);
                    at[1] += 1;
                }
                _ => panic!(
                    "{ctx}: must be readable at exactly one name; old: {}, new: {}",
                    got[0].describe(),
                    got[1].describe()
                ),
            }
        }
        assert!(at[0] == 0 || at[1] == 0, "kill after {delay_ms} ms: the subtree is split between the names: {at:?}");
        let moved = at[1] == files.len();
        let label = format!("{} -> {}", outcome(&result), if moved { "moved" } else { "not moved" });
        eprintln!("kill after {delay_ms} ms via {}: PATCH {label}", IDS[x]);
        if let Ok(r) = &result {
            assert!(r.status != 200 || moved, "kill after {delay_ms} ms: the PATCH answered 200 but nothing moved");
            assert!(r.status < 500 || r.status == 503, "kill after {delay_ms} ms: PATCH {}", r.describe());
        }
        tally(&mut outcomes, label);
        let dir = c.head(reader, &format!("/v1/files{}", names[usize::from(moved) ^ cur]), BOB);
        assert_eq!(dir.header("x-callfs-type"), Some("directory"), "the tree's directory row: {}", dir.describe());
        if moved {
            cur = 1 - cur;
        }
    }
    eprintln!("directory move killed at 0-12 ms: {outcomes:?}");
    assert_eq!(broken_parent_links(&c), Vec::<String>::new(), "rows whose parent link is broken");
}

/// Reproduction 4: files created inside a directory while it moved became unreadable (rows
/// without bytes, orphan files, stranded temp files). Now a create lands wholly before the move
/// (and moves with the directory) or wholly after it (then it creates the old name afresh,
/// api.md §8.3): every acknowledged create is readable at exactly one of the two, the listing
/// holds exactly the acknowledged files, and `callfs fsck` is clean on every node.
#[test]
fn creates_inside_a_moving_directory_are_never_lost() {
    let _guard = serial();
    let Some(c) = Cluster::start() else { return };
    const MOVES: usize = 300;
    const WRITERS: usize = 4;
    let budget = Duration::from_secs(40);
    assert_status(&c.post(0, "/v1/files/dm/d0/", ALICE, b""), 201, "mkdir /dm/d0");
    let generation = AtomicUsize::new(0);
    let done = AtomicBool::new(false);
    let acked: Mutex<Vec<(usize, String, String)>> = Mutex::new(Vec::new());
    let writer_statuses: Mutex<BTreeMap<String, usize>> = Mutex::new(BTreeMap::new());
    let mut mover_statuses = BTreeMap::new();
    let started = Instant::now();
    thread::scope(|s| {
        for t in 0..WRITERS {
            let (c, generation, done, acked, writer_statuses) = (&c, &generation, &done, &acked, &writer_statuses);
            s.spawn(move || {
                let mut n = 0u64;
                while !done.load(Ordering::SeqCst) {
                    let k = generation.load(Ordering::SeqCst);
                    let name = format!("w{t}-{n}.bin");
                    let body = random_bytes(200 + (n as usize * 37) % 5000, ((t as u64) << 32) | n);
                    let r = c.try_call(
                        (t + n as usize) % 3,
                        "POST",
                        &format!("/v1/files/dm/d{k}/{name}"),
                        ALICE,
                        &[],
                        Some(&body),
                    );
                    tally(&mut writer_statuses.lock().unwrap(), outcome(&r));
                    if matches!(&r, Ok(r) if r.status == 201) {
                        acked.lock().unwrap().push((k, name, sha256_hex(&body)));
                    }
                    n += 1;
                }
            });
        }
        let mut k = 0;
        while k < MOVES && started.elapsed() < budget {
            let r = c.try_patch(
                k % 3,
                &format!("/v1/files/dm/d{k}"),
                ALICE,
                &json!({"destination": format!("/dm/d{}", k + 1)}),
            );
            tally(&mut mover_statuses, outcome(&r));
            if matches!(&r, Ok(r) if r.status == 200) {
                k += 1;
                generation.store(k, Ordering::SeqCst);
            }
        }
        done.store(true, Ordering::SeqCst);
    });
    let writer_statuses = writer_statuses.into_inner().unwrap();
    let acked = acked.into_inner().unwrap();
    let last = generation.load(Ordering::SeqCst);
    eprintln!("{last} moves in {:?}; mover: {mover_statuses:?}; writers: {writer_statuses:?}", started.elapsed());
    assert!(last >= 100, "only {last} directory moves succeeded in {budget:?}: {mover_statuses:?}");
    for (what, statuses) in [("mover", &mover_statuses), ("writers", &writer_statuses)] {
        let bad: Vec<&String> = statuses.keys().filter(|k| !k.starts_with('2') && !k.starts_with("409")).collect();
        assert!(bad.is_empty(), "{what}: statuses other than 2xx/409: {statuses:?}");
    }

    // Where every acknowledged create is now: in the moved directory, or (created after a move)
    // in a fresh directory at the name it was sent to.
    let tree = c.get(1, "/v1/directories/dm?recursive=true", ALICE);
    assert_status(&tree, 200, "recursive listing of /dm");
    let listed: BTreeSet<String> = tree.json()["items"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|i| i["type"] == json!("file"))
        .map(|i| i["path"].as_str().unwrap().to_string())
        .collect();
    let mut expected = BTreeSet::new();
    let (mut moved, mut fresh) = (0, 0);
    for (n, (k, name, sha)) in acked.iter().enumerate() {
        let in_dir = format!("/dm/d{last}/{name}");
        let at_old = format!("/dm/d{k}/{name}");
        let found = if *k == last {
            vec![in_dir.clone()]
        } else {
            [&in_dir, &at_old].into_iter().filter(|p| listed.contains(*p)).cloned().collect()
        };
        assert_eq!(found.len(), 1, "acknowledged create {at_old}: listed at {found:?} (want exactly one place)");
        let r = c.get(n % 3, &format!("/v1/files{}", found[0]), BOB);
        assert_status(&r, 200, &format!("GET {}", found[0]));
        assert_eq!(&r.sha256(), sha, "bytes of {}", found[0]);
        if found[0] == in_dir {
            moved += 1;
        } else {
            fresh += 1;
        }
        expected.insert(found[0].clone());
    }
    eprintln!(
        "{} acknowledged creates: {moved} under /dm/d{last}, {fresh} in a fresh directory at an old name",
        acked.len()
    );
    assert_eq!(listed, expected, "the listing of /dm holds exactly the acknowledged creates");
    assert_eq!(broken_parent_links(&c), Vec::<String>::new(), "rows whose parent link is broken");
    for (i, id) in IDS.iter().enumerate() {
        assert!(
            wait_until(Duration::from_secs(5), || c.tmp_files(i).is_empty()),
            "temp files left on {id}: {:?}",
            c.tmp_files(i)
        );
    }
    // A failed write hands its blob and intent to two workers: give them a moment.
    thread::sleep(Duration::from_secs(1));
    assert_fsck_clean(&c, "after the moves");
}

/// Reproduction 5: one strong ETag was served for different bytes, Range pairs with `If-Range`
/// mixed two versions, and `X-CallFS-Size` disagreed with the body. Now a GET opens exactly the
/// row's immutable blob: PUTs of different sizes through node-1, read through node-2 and node-3
/// with full GETs and `Range` + `If-Range` pairs (storage.md §2 "Reads", api.md §12).
#[test]
fn overwrites_never_mix_versions_under_one_etag() {
    let _guard = serial();
    let Some(c) = Cluster::start() else { return };
    let url = "/v1/files/etag/f.bin";
    const SPLIT: usize = 6000;
    let body_of = |n: u64| random_bytes(8 * KIB + (n as usize * 7919) % (240 * KIB), 0x5000 + n);
    // sha → length of every body a PUT may have stored (recorded before the PUT is sent).
    let known: Mutex<HashMap<String, usize>> = Mutex::new(HashMap::new());
    let first = body_of(0);
    known.lock().unwrap().insert(sha256_hex(&first), first.len());
    assert_status(&c.post(0, url, ALICE, &first), 201, "POST on node-1");

    let done = AtomicBool::new(false);
    let etags: Mutex<HashMap<String, String>> = Mutex::new(HashMap::new());
    let problems: Mutex<Vec<String>> = Mutex::new(Vec::new());
    let counts: Mutex<BTreeMap<&str, usize>> = Mutex::new(BTreeMap::new());
    let puts = thread::scope(|s| {
        let writer = s.spawn(|| {
            let mut n = 1;
            let until = Instant::now() + Duration::from_secs(8);
            while Instant::now() < until {
                let body = body_of(n);
                known.lock().unwrap().insert(sha256_hex(&body), body.len());
                let r = c.put(0, url, ALICE, &body);
                assert_status(&r, 200, &format!("PUT #{n} via node-1"));
                n += 1;
            }
            done.store(true, Ordering::SeqCst);
            n - 1
        });
        for reader in 0..3usize {
            let (c, done, known, etags, problems, counts) = (&c, &done, &known, &etags, &problems, &counts);
            s.spawn(move || {
                let via = 1 + reader % 2;
                let problem = |p: String| problems.lock().unwrap().push(p);
                // ETag → sha; a second sha for one ETag is the failure this test is about.
                let seen = |etag: &str, sha: &str, what: &str| {
                    let mut map = etags.lock().unwrap();
                    let prior = map.entry(etag.to_string()).or_insert_with(|| sha.to_string());
                    if prior != sha {
                        problem(format!("ETag {etag} served two bodies ({what})"));
                    }
                };
                let whole = |r: &Resp, what: &str| {
                    let size = r.header("x-callfs-size").and_then(|v| v.parse::<usize>().ok());
                    if size != Some(r.body.len()) {
                        problem(format!("{what}: X-CallFS-Size {size:?} for a {}-byte body", r.body.len()));
                    }
                    if known.lock().unwrap().get(&r.sha256()) != Some(&r.body.len()) {
                        problem(format!("{what}: a {}-byte body no PUT sent", r.body.len()));
                    }
                    seen(r.header("etag").unwrap_or(""), &r.sha256(), what);
                };
                let mut round = 0;
                while !done.load(Ordering::SeqCst) {
                    round += 1;
                    if round % 2 == 0 {
                        let r = c.call(via, "GET", url, BOB, &[], None);
                        if r.status != 200 {
                            problem(format!("full GET via {}: {}", IDS[via], r.describe()));
                            continue;
                        }
                        whole(&r, "full GET");
                        *counts.lock().unwrap().entry("full GETs").or_default() += 1;
                        continue;
                    }
                    let range = format!("bytes=0-{}", SPLIT - 1);
                    let a = c.call(via, "GET", url, BOB, &[("Range", &range)], None);
                    if a.status != 206 {
                        problem(format!("first range via {}: {}", IDS[via], a.describe()));
                        continue;
                    }
                    let etag = a.header("etag").unwrap_or("").to_string();
                    let total: Option<usize> =
                        a.header("content-range").and_then(|v| v.rsplit('/').next()).and_then(|v| v.parse().ok());
                    let rest = format!("bytes={SPLIT}-");
                    let b = c.call(via, "GET", url, BOB, &[("Range", &rest), ("If-Range", &etag)], None);
                    match b.status {
                        206 => {
                            if b.header("etag") != Some(etag.as_str()) {
                                problem(format!("If-Range {etag} answered 206 with ETag {:?}", b.header("etag")));
                            }
                            let mut joined = a.body.clone();
                            joined.extend_from_slice(&b.body);
                            let sha = sha256_hex(&joined);
                            if Some(joined.len()) != total || known.lock().unwrap().get(&sha) != Some(&joined.len()) {
                                problem(format!(
                                    "mixed range pair under {etag}: {} bytes, total {total:?}",
                                    joined.len()
                                ));
                            }
                            seen(&etag, &sha, "range pair");
                            *counts.lock().unwrap().entry("range pairs (206+206)").or_default() += 1;
                        }
                        200 => {
                            if b.header("etag") == Some(etag.as_str()) {
                                problem(format!("If-Range {etag} matched but answered a full 200"));
                            }
                            whole(&b, "If-Range fallback");
                            *counts.lock().unwrap().entry("range pairs (206+200)").or_default() += 1;
                        }
                        _ => problem(format!("second range via {}: {}", IDS[via], b.describe())),
                    }
                }
            });
        }
        writer.join().unwrap()
    });
    let problems = problems.into_inner().unwrap();
    let counts = counts.into_inner().unwrap();
    let versions = etags.into_inner().unwrap().len();
    eprintln!("{puts} PUTs; reads {counts:?}; {versions} distinct ETags seen; {} problems", problems.len());
    assert!(problems.is_empty(), "{} problems, first ones: {:#?}", problems.len(), &problems[..problems.len().min(10)]);
    assert!(puts >= 20 && versions >= 10, "too little overlap to mean anything: {puts} PUTs, {versions} ETags");
    assert!(counts.get("range pairs (206+206)").copied().unwrap_or(0) >= 10, "range pairs: {counts:?}");
}

/// Reproduction 7: DELETE of an empty directory racing a create inside it left a file whose
/// parent was gone (GET 200, directory 404) and PUTs answered 500. Now the create resolves its
/// parent inside its commit: whatever both answer, the namespace stays whole (storage.md §1.1).
#[test]
fn empty_directory_delete_racing_a_create_keeps_the_namespace_whole() {
    let _guard = serial();
    let Some(c) = Cluster::start() else { return };
    let mut pairs = BTreeMap::new();
    let (mut wrong, mut broken) = (Vec::new(), Vec::new());
    for r in 0..200usize {
        let dir = format!("/race/d{r}");
        assert_status(&c.post(r % 3, &format!("/v1/files{dir}/"), ALICE, b""), 201, "mkdir");
        let body = format!("round {r}");
        let barrier = Barrier::new(2);
        let (del, post) = thread::scope(|s| {
            let del = s.spawn(|| {
                barrier.wait();
                c.try_call((r + 1) % 3, "DELETE", &format!("/v1/files{dir}"), ALICE, &[], None)
            });
            let post = s.spawn(|| {
                barrier.wait();
                c.try_call((r + 2) % 3, "POST", &format!("/v1/files{dir}/f.txt"), ALICE, &[], Some(body.as_bytes()))
            });
            (del.join().unwrap(), post.join().unwrap())
        });
        let (d, p) = (outcome(&del), outcome(&post));
        let ctx = format!("round {r}: DELETE {dir} {d}, POST {dir}/f.txt {p}");
        tally(&mut pairs, format!("DELETE {d} / POST {p}"));
        if !["204", "409 DIRECTORY_NOT_EMPTY", "409 RESOURCE_LOCKED"].contains(&d.as_str())
            || !["201", "409 RESOURCE_LOCKED"].contains(&p.as_str())
        {
            let bodies: Vec<String> =
                [&del, &post].iter().filter_map(|r| r.as_ref().ok()).map(Resp::describe).collect();
            wrong.push(format!("{ctx}: {bodies:?}"));
        }
        // Whatever they answered, the namespace is whole: the file is readable and listed in an
        // existing directory, or it is absent (and then its create was not acknowledged).
        let reader = r % 3;
        let file = c.get(reader, &format!("/v1/files{dir}/f.txt"), BOB);
        let parent = c.head(reader, &format!("/v1/files{dir}"), BOB);
        match file.status {
            200 => {
                assert_body(&file, body.as_bytes(), &ctx);
                let listed = c.get((r + 1) % 3, &format!("/v1/directories{dir}"), BOB);
                if parent.status != 200 || parent.header("x-callfs-type") != Some("directory") {
                    broken.push(format!("{ctx}: GET 200 for the file, HEAD of its directory {}", parent.describe()));
                } else if listed.status != 200 || listing_names(&listed.json()) != vec!["f.txt"] {
                    broken.push(format!("{ctx}: the file is not listed in its directory: {}", listed.describe()));
                }
            }
            404 => {
                if p == "201" {
                    broken.push(format!("{ctx}: the acknowledged create is gone"));
                }
                let want = if d == "204" { 404 } else { 200 };
                if parent.status != want {
                    broken.push(format!("{ctx}: HEAD of the directory {} (want {want})", parent.describe()));
                }
            }
            _ => broken.push(format!("{ctx}: GET of the file: {}", file.describe())),
        }
    }
    eprintln!("delete/create race outcomes: {pairs:?}");
    broken.extend(broken_parent_links(&c).into_iter().map(|row| format!("broken parent link: {row}")));
    let tree = c.get(0, "/v1/directories/race?recursive=true", ALICE);
    assert_status(&tree, 200, "recursive listing of /race");
    let files = tree.json()["items"].as_array().unwrap().iter().filter(|i| i["type"] == json!("file")).count();
    let created = pairs.iter().filter(|(k, _)| k.ends_with("POST 201")).map(|(_, n)| n).sum::<usize>();
    assert_eq!(files, created, "every acknowledged create is listed: {pairs:?}");
    assert!(broken.is_empty(), "the namespace is not whole ({} findings): {broken:#?}", broken.len());
    assert!(
        wrong.is_empty(),
        "{} rounds with a status outside 204/409 and 201/409: {wrong:#?}\nerror log lines: {:#?}",
        wrong.len(),
        c.error_lines()
    );
}

/// Upgrading a revision-1 root (bytes at `<root>/<path>`): at start each file becomes a blob and
/// the row points at it, the old folders go, and `callfs fsck` is clean (storage.md §2). Then
/// fsck's findings: a row whose blob is gone and an old unreferenced blob (`--repair` deletes it).
#[test]
fn revision1_root_is_converted_at_start() {
    let _guard = serial();
    let Some(c) = Cluster::start() else { return };
    let files: Vec<(&str, Vec<u8>)> = vec![
        ("/top.txt", b"at the top".to_vec()),
        ("/up/a.txt", random_bytes(3000, 0x7001)),
        ("/up/empty.bin", Vec::new()),
        ("/up/sub/b.bin", random_bytes(MIB + 17, 0x7002)),
        ("/up/sub/deep/c d.bin", random_bytes(70 * KIB, 0x7003)),
    ];
    for (path, body) in &files {
        assert_status(&c.post(0, &format!("/v1/files{path}"), ALICE, body), 201, &format!("POST {path} on node-1"));
    }
    assert_status(&c.post(0, "/v1/files/up/emptydir/", ALICE, b""), 201, "mkdir on node-1");
    let other = random_bytes(5000, 0x7004);
    assert_status(&c.post(1, "/v1/files/up/on-two.bin", ALICE, &other), 201, "POST on node-2");

    // Back to revision 1 by hand: every node-1 file at `<root>/<path>`, `blob` NULL, no blobs/.
    c.kill9(0);
    let root = c.nodes[0].data_root.clone();
    let rows = c.sql("SELECT path || '|' || blob FROM inodes WHERE type = 'file' AND callfs_instance_id = 'node-1'");
    let rows: Vec<(String, String)> =
        rows.lines().map(|l| l.split_once('|').map(|(p, b)| (p.to_string(), b.to_string())).unwrap()).collect();
    assert_eq!(rows.len(), files.len(), "node-1's file rows: {rows:?}");
    for (path, blob) in &rows {
        let from = root.join("blobs").join(&blob[0..2]).join(&blob[2..4]).join(blob);
        let to = root.join(path.trim_start_matches('/'));
        fs::create_dir_all(to.parent().unwrap()).unwrap();
        fs::rename(&from, &to).unwrap_or_else(|e| panic!("moving {} to {}: {e}", from.display(), to.display()));
    }
    fs::remove_dir_all(root.join("blobs")).unwrap();
    fs::remove_dir_all(root.join("tmp")).unwrap();
    c.sql("UPDATE inodes SET blob = NULL WHERE type = 'file' AND callfs_instance_id = 'node-1'");

    c.restart(0);
    let mut entries: Vec<String> =
        fs::read_dir(&root).unwrap().flatten().map(|e| e.file_name().to_string_lossy().into_owned()).collect();
    entries.sort();
    assert_eq!(entries, vec!["blobs", "tmp"], "{} after the conversion", root.display());
    assert_eq!(c.blob_files(0).len(), files.len(), "one blob per converted file");
    assert_eq!(c.sql("SELECT count(*) FROM inodes WHERE type = 'file' AND blob IS NULL"), "0", "rows without a blob");
    let logged =
        c.nodes[0].log_lines().into_iter().find(|v| v["msg"] == json!("storage root converted to the blob layout"));
    let logged = logged.unwrap_or_else(|| panic!("no conversion log line on node-1:\n{}", c.nodes[0].log_text()));
    assert_eq!(logged["converted"], json!(files.len()), "conversion log line: {logged}");
    assert_eq!(logged["missing"], json!(0), "conversion log line: {logged}");
    for (path, body) in &files {
        for (via, id) in IDS.iter().enumerate() {
            assert_body(&c.get(via, &format!("/v1/files{path}"), BOB), body, &format!("{path} via {id}"));
        }
    }
    assert_body(&c.get(0, "/v1/files/up/on-two.bin", BOB), &other, "node-2's file");
    assert_status(&c.head(2, "/v1/files/up/emptydir", BOB), 200, "the empty directory");
    assert_fsck_clean(&c, "after the conversion");

    // fsck must also see trouble: a row without its blob, and an old blob nobody references.
    let lost = c.blob_with(0, &files[1].1).expect("a.txt's blob");
    let kept = fs::read(&lost).unwrap();
    fs::remove_file(&lost).unwrap();
    let stray_id = "0123456789abcdef0123456789abcdef";
    let stray = root.join("blobs/01/23").join(stray_id);
    fs::create_dir_all(stray.parent().unwrap()).unwrap();
    fs::write(&stray, b"nobody's bytes").unwrap();
    let old = std::time::SystemTime::now() - Duration::from_secs(2 * 3600);
    fs::File::options().write(true).open(&stray).unwrap().set_modified(old).unwrap();
    let (code, out) = c.fsck(0);
    assert_eq!(code, 1, "fsck with a missing and an unreferenced blob:\n{out}");
    assert!(out.contains("missing bytes: /up/a.txt"), "fsck names the row:\n{out}");
    assert!(out.contains(&format!("unreferenced blob: {stray_id}")), "fsck names the blob:\n{out}");
    let out = callfs_cmd()
        .args(["fsck", "--repair", "--config"])
        .arg(&c.nodes[0].config_path)
        .output()
        .expect("run callfs fsck --repair");
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    assert_eq!(out.status.code(), Some(1), "fsck --repair still reports the missing bytes:\n{text}");
    assert!(!stray.exists(), "fsck --repair deletes an unreferenced blob older than an hour:\n{text}");
    fs::write(&lost, kept).unwrap();
    assert_fsck_clean(&c, "after putting the blob back");
    assert!(Path::new(&lost).is_file());
}
