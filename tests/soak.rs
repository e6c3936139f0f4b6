//! Soak (issue 9): three nodes on one PostgreSQL under a journaled mixed workload — create,
//! overwrite, read, rename, directory move, relocation, delete — through all nodes, with a node
//! SIGKILLed and restarted every 20 s and PostgreSQL restarted once. At the end every
//! acknowledged write reads back by SHA-256, every acknowledged delete is gone, the listing
//! holds exactly the journal's files, `callfs fsck` is clean on every node and no temp file
//! remains under any `<root>/tmp`.
//!
//! Not part of `make test` (`#[ignore]`): `make soak DURATION=10m`, i.e.
//! `scripts/with-postgres.sh env CALLFS_SOAK_DURATION=10m cargo test --release --test soak -- --ignored --nocapture`.
//! `CALLFS_SOAK_DURATION` is seconds or a number with `s`, `m` or `h` (default 120 s). The
//! PostgreSQL restart needs `CALLFS_TEST_PG_RESTART` (set by scripts/with-postgres.sh when it
//! starts its own server); without it the restart is skipped and the summary says so.
//!
//! The journal: each worker owns a subtree `/soak/w<k>` and works in it sequentially, so it knows
//! what each of its files must hold. An answered operation is applied to the journal as answered;
//! one without a clear answer (5xx, no response) is ambiguous: the journal keeps every state it may
//! have produced and settles it from a metadata-only listing (which works while the holder is
//! down) — at once for what the receiving node executes itself (create, rename, directory move),
//! 5 s later for what it forwards (overwrite, delete: the holder may still commit a write whose
//! forwarding node died); meanwhile a read must return one of the states.

mod common;

use std::collections::{BTreeMap, BTreeSet};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Mutex;
use std::thread;
use std::time::{Duration, Instant};

use common::cluster::*;
use common::*;
use serde_json::{json, Value};

const WORKERS: usize = 4;
const KILL_EVERY: Duration = Duration::from_secs(20);
/// How long a killed node stays down before its restart.
const DOWN_FOR: Duration = Duration::from_secs(2);
/// How long after an ambiguous overwrite or delete the journal settles it from the listing.
const SETTLE_AFTER: Duration = Duration::from_secs(5);

fn soak_duration() -> Duration {
    let raw = std::env::var("CALLFS_SOAK_DURATION")
        .or_else(|_| std::env::var("CALLFS_SOAK_SECONDS"))
        .unwrap_or_else(|_| "120".into());
    let raw = raw.trim();
    let (num, unit) = match raw.find(|c: char| !c.is_ascii_digit()) {
        Some(i) => (&raw[..i], &raw[i..]),
        None => (raw, "s"),
    };
    let n: u64 = num.parse().unwrap_or_else(|_| panic!("CALLFS_SOAK_DURATION {raw:?}: want e.g. 600, 90s, 10m, 1h"));
    let factor = match unit {
        "s" => 1,
        "m" => 60,
        "h" => 3600,
        _ => panic!("CALLFS_SOAK_DURATION {raw:?}: unit must be s, m or h"),
    };
    Duration::from_secs(n * factor)
}

/// What a file may hold: `None` = absent, `Some((sha, size))` = those bytes.
type State = Option<(String, u64)>;

struct FileEntry {
    /// Index into the worker's directories.
    dir: usize,
    name: String,
    /// Every state the file may be in (one when the journal is sure).
    may: Vec<State>,
    /// The node believed to hold the bytes (a relocation picks another one).
    holder: usize,
    /// The last operations on this file, for the report of a violation.
    history: Vec<String>,
    /// An ambiguous overwrite or delete, to settle from the listing at this time: a write whose
    /// forwarding node died may still commit on the holder a moment later.
    settle_at: Option<Instant>,
}

impl FileEntry {
    fn note(&mut self, what: String) {
        if self.history.len() >= 16 {
            self.history.remove(0);
        }
        self.history.push(what);
    }
    fn known(&self) -> Option<&State> {
        (self.may.len() == 1).then(|| &self.may[0])
    }
    fn surely_present(&self) -> bool {
        self.settle_at.is_none() && self.may.iter().all(Option::is_some)
    }
}

/// Everything shared by the workers, the killer and the final check.
struct Soak<'a> {
    c: &'a Cluster,
    up: [AtomicBool; 3],
    stop: AtomicBool,
    seq: AtomicU64,
    /// "op outcome" → count.
    ops: Mutex<BTreeMap<String, u64>>,
    violations: Mutex<Vec<String>>,
    started: Instant,
    /// When each `500` was answered (seconds into the run).
    server_errors: Mutex<Vec<f64>>,
}

impl Soak<'_> {
    fn count(&self, op: &str, outcome: &str) {
        if outcome.starts_with("500") {
            self.server_errors.lock().unwrap().push(self.started.elapsed().as_secs_f64());
        }
        *self.ops.lock().unwrap().entry(format!("{op:<9} {outcome}")).or_default() += 1;
    }
    fn violation(&self, v: String) {
        eprintln!("VIOLATION: {v}");
        self.violations.lock().unwrap().push(v);
    }
    fn next(&self) -> u64 {
        self.seq.fetch_add(1, Ordering::Relaxed)
    }
    /// A node that is up (never fails: at most one node is down at a time).
    fn node(&self, hint: u64) -> usize {
        (0..3).map(|k| (hint as usize + k) % 3).find(|&i| self.up[i].load(Ordering::SeqCst)).unwrap_or(0)
    }
}

fn outcome(r: &Result<Resp, String>) -> String {
    match r {
        Ok(r) if r.status < 400 => r.status.to_string(),
        Ok(r) => format!("{} {}", r.status, error_code(r)),
        Err(_) => "no-response".to_string(),
    }
}

/// A server error or no answer at all: the operation may or may not have happened.
fn ambiguous(r: &Result<Resp, String>) -> bool {
    match r {
        Ok(r) => r.status >= 500,
        Err(_) => true,
    }
}

struct Worker<'a, 'b> {
    s: &'b Soak<'a>,
    k: usize,
    rng: Prng,
    /// Current names of the worker's directories (below `/soak/w<k>`).
    dirs: Vec<String>,
    files: Vec<FileEntry>,
    /// Paths of acknowledged deletes.
    deleted: Vec<String>,
    /// How long the last request took.
    took: Duration,
}

impl Worker<'_, '_> {
    fn base(&self) -> String {
        format!("/soak/w{}", self.k)
    }
    fn path(&self, f: &FileEntry) -> String {
        format!("{}/{}/{}", self.base(), self.dirs[f.dir], f.name)
    }
    /// Journal an operation on file `f` in its history.
    fn note(&mut self, f: usize, op: &str, node: usize, r: &Result<Resp, String>, detail: &str) {
        let t = self.s.started.elapsed().as_secs_f64();
        let path = self.path(&self.files[f]);
        let error = match r {
            Err(e) => format!(" ({e})"),
            Ok(r) if r.status >= 500 => format!(" ({})", r.describe()),
            Ok(_) => String::new(),
        };
        let took = self.took.as_secs_f64();
        self.files[f].note(format!(
            "{t:.3}s {op} {path} via {} in {took:.3}s: {}{error} {detail}",
            IDS[node],
            outcome(r)
        ));
    }

    /// One request, timed (`took`); a body cut short counts as no response.
    fn call(&mut self, node: usize, method: &str, path: &str, key: &str, body: Option<&[u8]>) -> Result<Resp, String> {
        let t = Instant::now();
        let r = self.s.c.try_call_whole(node, method, &format!("/v1/files{path}"), key, &[], body);
        self.took = t.elapsed();
        r
    }

    fn patch(&mut self, node: usize, path: &str, v: Value) -> Result<Resp, String> {
        let t = Instant::now();
        let r = self.s.c.try_patch(node, &format!("/v1/files{path}"), ALICE, &v);
        self.took = t.elapsed();
        r
    }

    fn pick(&mut self, n: usize) -> usize {
        (self.rng.next_u64() % n as u64) as usize
    }
    fn node(&mut self) -> usize {
        let hint = self.rng.next_u64();
        self.s.node(hint)
    }

    /// A metadata-only listing (never forwarded), retried across nodes for up to 60 s:
    /// `name → size`.
    fn listing(&mut self, dir: &str) -> Option<BTreeMap<String, (String, u64)>> {
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            let i = self.node();
            match self.s.c.try_call_whole(i, "GET", &format!("/v1/directories{dir}"), ALICE, &[], None) {
                Ok(r) if r.status == 200 => {
                    let v: Value = r.json();
                    let items = v["items"].as_array().cloned().unwrap_or_default();
                    return Some(
                        items
                            .iter()
                            .map(|it| {
                                let name = it["name"].as_str().unwrap_or("").to_string();
                                let kind = it["type"].as_str().unwrap_or("").to_string();
                                (name, (kind, it["size"].as_u64().unwrap_or(0)))
                            })
                            .collect(),
                    );
                }
                Ok(r) if r.status == 404 => return None,
                _ => {}
            }
            if Instant::now() > deadline {
                panic!("worker {}: could not list {dir} for 60 s", self.k);
            }
            thread::sleep(Duration::from_millis(250));
        }
    }

    /// Settle an ambiguous create, overwrite or delete of file `f` from its directory's listing.
    fn settle_content(&mut self, f: usize) {
        let dir = format!("{}/{}", self.base(), self.dirs[self.files[f].dir]);
        let listed = self.listing(&dir).unwrap_or_default();
        let entry = &mut self.files[f];
        let before = entry.may.clone();
        match listed.get(&entry.name) {
            None => entry.may.retain(Option::is_none),
            Some((_, size)) => entry.may.retain(|m| m.as_ref().is_some_and(|(_, s)| s == size)),
        }
        let settled = format!(
            "{:.3}s settled from the listing: {:?}",
            self.s.started.elapsed().as_secs_f64(),
            listed.get(&entry.name)
        );
        entry.note(settled);
        if entry.may.is_empty() {
            let v = format!(
                "{dir}/{}: listed as {:?}, journal allows {before:?}; history {:#?}",
                entry.name,
                listed.get(&entry.name),
                entry.history
            );
            self.s.violation(v);
            entry.may = before;
        }
    }

    fn create(&mut self) {
        if self.files.len() > 60 {
            return;
        }
        let n = self.s.next();
        let size =
            if n.is_multiple_of(50) { 1 + (n as usize * 7919) % (4 * MIB) } else { (n as usize * 131) % (96 * KIB) };
        let body = random_bytes(size, 0xC0FF_EE00 + n);
        let dir = self.pick(self.dirs.len());
        let node = self.node();
        let entry = FileEntry {
            dir,
            name: format!("f{n}.bin"),
            may: vec![None],
            holder: node,
            history: Vec::new(),
            settle_at: None,
        };
        let path = self.path(&entry);
        let r = self.call(node, "POST", &path, ALICE, Some(&body));
        self.s.count("create", &outcome(&r));
        let state = Some((sha256_hex(&body), size as u64));
        self.files.push(entry);
        let f = self.files.len() - 1;
        self.note(f, "create", node, &r, &format!("{size} bytes {}", &state.as_ref().unwrap().0[..12]));
        match &r {
            Ok(r) if r.status == 201 => self.files[f].may = vec![state],
            _ if ambiguous(&r) => {
                self.files[f].may = vec![None, state];
                self.settle_content(f);
                if self.files[f].may == vec![None] {
                    self.files.pop();
                }
            }
            _ => {
                self.files.pop();
            }
        }
    }

    fn overwrite(&mut self) {
        let Some(f) = self.some_file() else { return };
        let n = self.s.next();
        let size = (n as usize * 977) % (200 * KIB) + 1;
        let body = random_bytes(size, 0xBEEF_0000 + n);
        let node = self.node();
        let path = self.path(&self.files[f]);
        let r = self.call(node, "PUT", &path, ALICE, Some(&body));
        self.s.count("overwrite", &outcome(&r));
        let state = Some((sha256_hex(&body), size as u64));
        self.note(f, "overwrite", node, &r, &format!("{size} bytes {}", &state.as_ref().unwrap().0[..12]));
        match &r {
            Ok(r) if r.status == 200 => self.files[f].may = vec![state],
            Ok(r) if r.status == 201 => self.s.violation(format!("PUT {path}: 201 for an existing file")),
            _ if ambiguous(&r) => {
                self.files[f].may.push(state);
                self.files[f].settle_at = Some(Instant::now() + SETTLE_AFTER);
            }
            _ => {}
        }
    }

    fn read(&mut self) {
        if self.files.is_empty() {
            return;
        }
        let f = self.pick(self.files.len());
        let node = self.node();
        let path = self.path(&self.files[f]);
        let r = self.call(node, "GET", &path, BOB, None);
        self.s.count("read", &outcome(&r));
        let detail = match &r {
            Ok(r) if r.status == 200 => format!("{} bytes {}", r.body.len(), &r.sha256()[..12]),
            _ => String::new(),
        };
        self.note(f, "read", node, &r, &detail);
        let entry = &mut self.files[f];
        match &r {
            Ok(r) if r.status == 200 => {
                let got = Some((r.sha256(), r.body.len() as u64));
                if entry.may.contains(&got) {
                    if entry.settle_at.is_none() {
                        entry.may = vec![got];
                    }
                } else {
                    let h = &entry.history;
                    self.s.violation(format!(
                        "GET {path}: {} bytes the journal does not allow; history {h:#?}",
                        r.body.len()
                    ));
                }
            }
            Ok(r) if r.status == 404 => {
                if entry.may.contains(&None) {
                    if entry.settle_at.is_none() {
                        entry.may = vec![None];
                    }
                } else {
                    let h = &entry.history;
                    self.s.violation(format!(
                        "GET {path}: 404 for an acknowledged file ({}); history {h:#?}",
                        r.describe()
                    ));
                }
            }
            _ => {}
        }
    }

    fn delete(&mut self) {
        let Some(f) = self.some_file() else { return };
        let node = self.node();
        let path = self.path(&self.files[f]);
        let r = self.call(node, "DELETE", &path, ALICE, None);
        self.s.count("delete", &outcome(&r));
        self.note(f, "delete", node, &r, "");
        match &r {
            Ok(r) if r.status == 204 => self.files[f].may = vec![None],
            _ if ambiguous(&r) => {
                self.files[f].may.push(None);
                self.files[f].settle_at = Some(Instant::now() + SETTLE_AFTER);
            }
            _ => {}
        }
        self.forget_if_gone(f);
    }

    /// A file known to be absent leaves the journal for the list of deletes.
    fn forget_if_gone(&mut self, f: usize) {
        if self.files[f].may == vec![None] && self.files[f].settle_at.is_none() {
            let gone = self.files.swap_remove(f);
            self.deleted.push(format!("{}/{}/{}", self.base(), self.dirs[gone.dir], gone.name));
        }
    }

    /// Settle the ambiguous writes whose time has come (all of them with `all`).
    fn settle_due(&mut self, all: bool) {
        for f in (0..self.files.len()).rev() {
            let Some(at) = self.files[f].settle_at else { continue };
            if !all && at > Instant::now() {
                continue;
            }
            thread::sleep(at.saturating_duration_since(Instant::now()));
            self.files[f].settle_at = None;
            self.settle_content(f);
            self.forget_if_gone(f);
        }
    }

    fn rename(&mut self) {
        let Some(f) = self.some_file() else { return };
        let n = self.s.next();
        let node = self.node();
        let path = self.path(&self.files[f]);
        let new_name = format!("f{n}.bin");
        let r = self.patch(node, &path, json!({"name": new_name}));
        self.s.count("rename", &outcome(&r));
        self.note(f, "rename", node, &r, &format!("to {new_name}"));
        match &r {
            Ok(r) if r.status == 200 => self.files[f].name = new_name,
            _ if ambiguous(&r) => {
                let dir = format!("{}/{}", self.base(), self.dirs[self.files[f].dir]);
                let listed = self.listing(&dir).unwrap_or_default();
                let old = self.files[f].name.clone();
                match (listed.contains_key(&old), listed.contains_key(&new_name)) {
                    (false, true) => self.files[f].name = new_name,
                    (true, false) => {}
                    other => self.s.violation(format!("rename {path} -> {new_name}: listed as {other:?}")),
                }
            }
            _ => {}
        }
    }

    fn move_directory(&mut self) {
        let d = self.pick(self.dirs.len());
        let n = self.s.next();
        let node = self.node();
        let (from, to) = (format!("{}/{}", self.base(), self.dirs[d]), format!("d{n}"));
        let dest = format!("{}/{to}", self.base());
        let r = self.patch(node, &from, json!({"destination": dest}));
        self.s.count("dir-move", &outcome(&r));
        let inside: Vec<usize> = (0..self.files.len()).filter(|&f| self.files[f].dir == d).collect();
        for f in inside {
            self.note(f, "dir-move", node, &r, &format!("to {dest}"));
        }
        match &r {
            Ok(r) if r.status == 200 => self.dirs[d] = to,
            _ if ambiguous(&r) => {
                let base = self.base();
                let listed = self.listing(&base).unwrap_or_default();
                match (listed.contains_key(&self.dirs[d]), listed.contains_key(&to)) {
                    (false, true) => self.dirs[d] = to,
                    (true, false) => {}
                    other => self.s.violation(format!("move {from} -> {dest}: listed as {other:?}")),
                }
            }
            _ => {}
        }
    }

    fn relocate(&mut self) {
        let Some(f) = self.some_file() else { return };
        let target = (self.files[f].holder + 1 + self.pick(2)) % 3;
        let node = self.node();
        let path = self.path(&self.files[f]);
        let body = json!({"destination": path, "instance": IDS[target]});
        let r = self.patch(node, &path, body);
        self.s.count("relocate", &outcome(&r));
        self.note(f, "relocate", node, &r, &format!("to {}", IDS[target]));
        if matches!(&r, Ok(r) if r.status == 200) {
            self.files[f].holder = target;
        }
        // Content and path never change with a relocation, whatever it answered.
    }

    fn make_directory(&mut self) {
        if self.dirs.len() >= 4 {
            return;
        }
        let n = self.s.next();
        let node = self.node();
        let name = format!("d{n}");
        let r = self.s.c.try_call(node, "POST", &format!("/v1/files{}/{name}/", self.base()), ALICE, &[], None);
        self.s.count("mkdir", &outcome(&r));
        let made = match &r {
            Ok(r) => r.status == 201,
            Err(_) => false,
        };
        if made || (ambiguous(&r) && self.listing(&self.base()).unwrap_or_default().contains_key(&name)) {
            self.dirs.push(name);
        }
    }

    /// A file the journal is sure exists.
    fn some_file(&mut self) -> Option<usize> {
        let present: Vec<usize> = (0..self.files.len()).filter(|&f| self.files[f].surely_present()).collect();
        (!present.is_empty()).then(|| present[self.pick(present.len())])
    }

    fn run(&mut self) {
        let r = self.s.c.try_call(
            self.s.node(self.k as u64),
            "POST",
            &format!("/v1/files{}/d0/", self.base()),
            ALICE,
            &[],
            None,
        );
        assert!(matches!(&r, Ok(r) if r.status == 201), "worker {}: mkdir: {}", self.k, outcome(&r));
        self.dirs.push("d0".into());
        while !self.s.stop.load(Ordering::SeqCst) {
            self.settle_due(false);
            match self.pick(100) {
                0..=24 => self.create(),
                25..=39 => self.overwrite(),
                40..=64 => self.read(),
                65..=72 => self.rename(),
                73..=77 => self.move_directory(),
                78..=87 => self.relocate(),
                88..=97 => self.delete(),
                _ => self.make_directory(),
            }
        }
    }
}

#[test]
#[ignore = "soak: make soak DURATION=10m"]
fn soak() {
    let duration = soak_duration();
    let _guard = serial();
    let Some(c) = Cluster::start_with(|_, cfg| {
        cfg["dlm"]["lease_ttl"] = json!("3s");
        cfg["log"]["level"] = json!("info");
    }) else {
        return;
    };
    let s = Soak {
        c: &c,
        up: [AtomicBool::new(true), AtomicBool::new(true), AtomicBool::new(true)],
        stop: AtomicBool::new(false),
        seq: AtomicU64::new(1),
        ops: Mutex::new(BTreeMap::new()),
        violations: Mutex::new(Vec::new()),
        started: Instant::now(),
        server_errors: Mutex::new(Vec::new()),
    };
    let pg_restart = std::env::var("CALLFS_TEST_PG_RESTART").ok().filter(|v| !v.is_empty());
    let mut events: Vec<String> = Vec::new();
    let mut pg_restarted_at: Option<f64> = None;
    let started = Instant::now();
    eprintln!("soak: {duration:?}, {WORKERS} workers, a node killed every {KILL_EVERY:?}");
    let workers: Vec<Worker> = thread::scope(|scope| {
        let handles: Vec<_> = (0..WORKERS)
            .map(|k| {
                let s = &s;
                scope.spawn(move || {
                    let mut w = Worker {
                        s,
                        k,
                        rng: Prng::new(0x50AC_0000 + k as u64),
                        dirs: Vec::new(),
                        files: Vec::new(),
                        deleted: Vec::new(),
                        took: Duration::ZERO,
                    };
                    w.run();
                    w.settle_due(true);
                    w
                })
            })
            .collect();
        // The killer (this thread): a node SIGKILLed and restarted every KILL_EVERY, PostgreSQL
        // restarted once half-way.
        let mut victim = 0;
        let mut next_kill = started + KILL_EVERY;
        let mut pg_due = pg_restart.as_ref().map(|_| started + duration / 2);
        while started.elapsed() < duration {
            thread::sleep(Duration::from_millis(200));
            if Instant::now() >= next_kill {
                s.up[victim].store(false, Ordering::SeqCst);
                c.kill9(victim);
                thread::sleep(DOWN_FOR);
                c.restart(victim);
                s.up[victim].store(true, Ordering::SeqCst);
                events.push(format!("{:>5.1}s SIGKILL + restart {}", started.elapsed().as_secs_f64(), IDS[victim]));
                victim = (victim + 1) % 3;
                next_kill += KILL_EVERY;
            }
            if pg_due.is_some_and(|t| Instant::now() >= t) {
                pg_due = None;
                let script = pg_restart.as_deref().unwrap();
                let out = std::process::Command::new(script).output().expect("run CALLFS_TEST_PG_RESTART");
                assert!(out.status.success(), "PostgreSQL restart failed: {}", String::from_utf8_lossy(&out.stderr));
                pg_restarted_at = Some(started.elapsed().as_secs_f64());
                events.push(format!("{:>5.1}s PostgreSQL restarted", started.elapsed().as_secs_f64()));
            }
        }
        s.stop.store(true, Ordering::SeqCst);
        handles.into_iter().map(|h| h.join().unwrap()).collect()
    });
    if pg_restart.is_none() {
        events.push("PostgreSQL restart skipped: CALLFS_TEST_PG_RESTART is unset (an external server)".into());
    }
    let run_time = started.elapsed();

    // Every node up; their start-up sweeps remove what the kills left in tmp/.
    for i in 0..3 {
        if !c.nodes[i].is_running() {
            c.restart(i);
        }
    }
    let check = |label: &str, problem: Option<String>, problems: &mut Vec<String>| {
        if let Some(p) = problem {
            problems.push(format!("{label}: {p}"));
        }
    };
    let mut problems: Vec<String> = s.violations.lock().unwrap().clone();
    // Final reads are retried while a holder restarts, within one overall budget.
    let retry_until = Instant::now() + Duration::from_secs(90);
    let (mut verified, mut gone, mut unsure) = (0, 0, 0);
    let mut expected_paths = BTreeSet::new();
    let mut maybe_paths = BTreeSet::new();
    for w in &workers {
        for f in &w.files {
            let path = w.path(f);
            if f.known().is_none() {
                unsure += 1;
                maybe_paths.insert(path.clone());
            } else if f.surely_present() {
                expected_paths.insert(path.clone());
            }
            for (via, id) in IDS.iter().enumerate() {
                // Reads through every node, retried while a holder restarts.
                let mut last = String::new();
                let patience = retry_until.saturating_duration_since(Instant::now()).min(Duration::from_secs(30));
                let ok = wait_until(patience, || {
                    let r = c.try_call_whole(via, "GET", &format!("/v1/files{path}"), BOB, &[], None);
                    last = outcome(&r);
                    match &r {
                        Ok(r) if r.status == 200 => {
                            let got = Some((r.sha256(), r.body.len() as u64));
                            if !f.may.contains(&got) {
                                last = format!("200 with {} bytes the journal does not allow", r.body.len());
                            }
                            f.may.contains(&got)
                        }
                        Ok(r) if r.status == 404 => f.may.contains(&None),
                        _ => false,
                    }
                });
                let problem = (!ok).then(|| {
                    format!("{path} via {}: {last}; journal allows {:?}; history {:#?}", id, f.may, f.history)
                });
                check("final read", problem, &mut problems);
            }
            verified += 1;
        }
        for path in &w.deleted {
            for (via, id) in IDS.iter().enumerate() {
                let r = c.try_call(via, "GET", &format!("/v1/files{path}"), BOB, &[], None);
                let problem = (!matches!(&r, Ok(r) if r.status == 404)).then(|| outcome(&r));
                check(&format!("deleted {path} via {}", id), problem, &mut problems);
            }
            gone += 1;
        }
    }
    // The recursive listing (metadata only) through any node that answers it.
    let mut failures = Vec::new();
    let mut listed: Option<BTreeSet<String>> = None;
    wait_until(Duration::from_secs(30), || {
        for (i, id) in IDS.iter().enumerate() {
            let tree = c.try_call_whole(i, "GET", "/v1/directories/soak?recursive=true", ALICE, &[], None);
            match &tree {
                Ok(r) if r.status == 200 => {
                    let items = r.json()["items"].as_array().cloned().unwrap_or_default();
                    let files = items.iter().filter(|i| i["type"] == json!("file"));
                    listed = Some(files.map(|i| i["path"].as_str().unwrap_or("").to_string()).collect());
                    return true;
                }
                _ => failures.push(format!("via {id}: {}", outcome(&tree))),
            }
        }
        false
    });
    let listed = listed.unwrap_or_else(|| {
        problems.push(format!("recursive listing of /soak failed on every node for 30 s: {failures:?}"));
        expected_paths.clone()
    });
    let missing: Vec<&String> = expected_paths.difference(&listed).collect();
    let extra: Vec<&String> = listed.difference(&expected_paths).filter(|p| !maybe_paths.contains(*p)).collect();
    check("listing lacks journaled files", (!missing.is_empty()).then(|| format!("{missing:?}")), &mut problems);
    check("listing has unjournaled files", (!extra.is_empty()).then(|| format!("{extra:?}")), &mut problems);
    let failed_listings = failures.len();
    let sql = "SELECT count(*) FROM inodes c LEFT JOIN inodes p ON p.id = c.parent_id WHERE c.path <> '/' AND \
               (p.id IS NULL OR c.path <> (CASE WHEN p.path = '/' THEN '' ELSE p.path END) || '/' || c.name)";
    let broken = c.sql(sql);
    check("rows with a broken parent link", (broken != "0").then_some(broken), &mut problems);
    for (i, id) in IDS.iter().enumerate() {
        let mut left = Vec::new();
        let clean = wait_until(Duration::from_secs(15), || {
            left = c.tmp_files(i);
            left.is_empty()
        });
        check(&format!("temp files on {}", id), (!clean).then(|| format!("{left:?}")), &mut problems);
    }
    thread::sleep(Duration::from_secs(1));
    let mut fsck = Vec::new();
    for (i, id) in IDS.iter().enumerate() {
        let (code, out) = c.fsck(i);
        fsck.push(format!("{} exit {code}", id));
        check(&format!("callfs fsck on {}", id), (code != 0).then_some(out), &mut problems);
    }

    let ops = s.ops.lock().unwrap().clone();
    let total: u64 = ops.values().sum();
    let intents = c.sql("SELECT count(*) FROM blob_intents");
    let garbage = c.sql("SELECT count(*) FROM blob_garbage");
    eprintln!("\n==== soak summary ({run_time:.0?}, {total} operations) ====");
    for (k, n) in &ops {
        eprintln!("  {k:<40} {n:>7}");
    }
    for e in &events {
        eprintln!("  event: {e}");
    }
    eprintln!(
        "  final: {verified} journaled files read back through all 3 nodes ({unsure} with an unsettled state), \
         {gone} acknowledged deletes gone, {} files listed; fsck: {}; rows left in blob_intents {intents}, \
         blob_garbage {garbage}",
        listed.len(),
        fsck.join(", ")
    );
    let mut errors: BTreeMap<String, usize> = BTreeMap::new();
    for line in c.error_lines() {
        let key: String = line.split(": ").skip(1).collect::<Vec<_>>().join(": ");
        let key = key.split_whitespace().filter(|w| !w.starts_with('/')).collect::<Vec<_>>().join(" ");
        *errors.entry(key).or_default() += 1;
    }
    for (e, n) in &errors {
        eprintln!("  error log: {n:>5} x {e}");
    }
    if failed_listings > 0 {
        eprintln!("  final recursive listing: {failed_listings} failed attempts before one answered");
    }
    // 500s by 10-second window: a node that never recovers from the PostgreSQL restart shows here.
    let mut windows: BTreeMap<u64, usize> = BTreeMap::new();
    for t in s.server_errors.lock().unwrap().iter() {
        *windows.entry((*t / 10.0) as u64 * 10).or_default() += 1;
    }
    let windows: Vec<String> = windows.iter().map(|(w, n)| format!("{w}-{}s: {n}", w + 10)).collect();
    eprintln!("  500 answers by time: {}", if windows.is_empty() { "none".into() } else { windows.join(", ") });
    if let Some(at) = pg_restarted_at {
        let late = s.server_errors.lock().unwrap().iter().filter(|t| **t > at + 15.0).count();
        eprintln!("  500 answers more than 15 s after the PostgreSQL restart: {late}");
    }
    eprintln!("  problems: {}", problems.len());
    assert!(problems.is_empty(), "soak found {} problems: {problems:#?}", problems.len());
}

/// After a PostgreSQL restart every node serves again within seconds: pooled connections that
/// died with the server are replaced, not handed out again (observed in the soak: "no connection
/// to the server" on every request of a node for the rest of the run). Needs
/// `CALLFS_TEST_PG_RESTART` (scripts/with-postgres.sh); skipped otherwise.
#[test]
fn nodes_recover_after_a_postgresql_restart() {
    let Some(script) = std::env::var("CALLFS_TEST_PG_RESTART").ok().filter(|v| !v.is_empty()) else {
        eprintln!("SKIPPED: CALLFS_TEST_PG_RESTART is unset (scripts/with-postgres.sh sets it)");
        return;
    };
    let _guard = serial();
    let Some(c) = Cluster::start() else { return };
    let bodies: Vec<Vec<u8>> = (0..3).map(|i| random_bytes(3000 + i, 0x9000 + i as u64)).collect();
    for (i, body) in bodies.iter().enumerate() {
        assert_eq!(c.post(i, &format!("/v1/files/pg/f{i}.bin"), ALICE, body).status, 201, "POST via {}", IDS[i]);
    }
    // Every pooled connection has been used once before the restart.
    for _ in 0..20 {
        for i in 0..3 {
            assert_eq!(c.get(i, "/v1/files/pg/f0.bin", BOB).status, 200);
        }
    }
    let out = std::process::Command::new(&script).output().expect("run CALLFS_TEST_PG_RESTART");
    assert!(out.status.success(), "PostgreSQL restart failed: {}", String::from_utf8_lossy(&out.stderr));
    let restarted = Instant::now();

    // Within 15 s every node answers reads, creates and listings again, and keeps doing so.
    let mut last = BTreeMap::new();
    let mut n = 0;
    let recovered = wait_until(Duration::from_secs(15), || {
        last.clear();
        for round in 0..5 {
            for (i, id) in IDS.iter().enumerate() {
                for (j, body) in bodies.iter().enumerate() {
                    let r = c.get(i, &format!("/v1/files/pg/f{j}.bin"), BOB);
                    if r.status != 200 || r.body != *body {
                        *last.entry(format!("GET via {}: {}", id, r.describe())).or_insert(0) += 1;
                    }
                }
                n += 1;
                let r = c.post(i, &format!("/v1/files/pg/new-{n}-{round}.bin"), ALICE, b"x");
                if r.status != 201 {
                    *last.entry(format!("POST via {}: {}", id, r.describe())).or_insert(0) += 1;
                }
            }
        }
        last.is_empty()
    });
    eprintln!("after the PostgreSQL restart: {:?} until every request succeeds", restarted.elapsed());
    assert!(
        recovered,
        "15 s after a PostgreSQL restart requests still fail (failures in the last 5 rounds): {last:#?}"
    );
}
