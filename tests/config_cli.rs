//! Configuration and CLI conformance (config.md §1, §4, §5, §8; security.md §1, §9).
//! `cargo test --release --test config_cli`

mod common;

use std::fs;
use std::path::{Path, PathBuf};
use std::process::{Child, Stdio};
use std::time::{Duration, Instant};

use common::*;
use serde_json::{json, Value};

struct Out {
    code: Option<i32>,
    stdout: String,
    stderr: String,
}

impl Out {
    fn all(&self) -> String {
        format!("{}\n{}", self.stdout, self.stderr)
    }
    fn describe(&self) -> String {
        format!("exit {:?}\n--- stdout ---\n{}\n--- stderr ---\n{}", self.code, self.stdout, self.stderr)
    }
}

/// Kills (by pid) the server it holds on drop.
struct ChildGuard(Option<Child>);

impl Drop for ChildGuard {
    fn drop(&mut self) {
        if let Some(mut c) = self.0.take() {
            unsafe {
                libc::kill(c.id() as libc::pid_t, libc::SIGKILL);
            }
            let _ = c.wait();
        }
    }
}

/// Run the binary with `args` in `cwd` with extra env; stdout/stderr captured through files.
fn run(cwd: &Path, args: &[&str], env: &[(&str, &str)]) -> Out {
    let tag = random_hex(6);
    let out_p = cwd.join(format!("out-{tag}.txt"));
    let err_p = cwd.join(format!("err-{tag}.txt"));
    let mut cmd = callfs_cmd();
    cmd.args(args).current_dir(cwd).stdout(fs::File::create(&out_p).unwrap()).stderr(fs::File::create(&err_p).unwrap());
    for (k, v) in env {
        cmd.env(k, v);
    }
    let mut guard = ChildGuard(Some(cmd.spawn().expect("spawn callfs")));
    let deadline = Instant::now() + Duration::from_secs(30);
    let code = loop {
        if let Some(st) = guard.0.as_mut().unwrap().try_wait().unwrap() {
            guard.0 = None;
            break st.code();
        }
        if Instant::now() > deadline {
            drop(guard);
            panic!(
                "callfs {args:?} did not exit within 30 s; stderr: {}",
                fs::read_to_string(&err_p).unwrap_or_default()
            );
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    Out {
        code,
        stdout: fs::read_to_string(&out_p).unwrap_or_default(),
        stderr: fs::read_to_string(&err_p).unwrap_or_default(),
    }
}

fn write_config(dir: &Path, name: &str, cfg: &Value) -> PathBuf {
    let p = dir.join(name);
    let text = if name.ends_with(".json") { serde_json::to_string_pretty(cfg).unwrap() } else { to_yaml(cfg) };
    fs::write(&p, text).unwrap();
    p
}

fn validate(dir: &Path, cfg: &Value, env: &[(&str, &str)]) -> Out {
    let p = write_config(dir, &format!("cfg-{}.yaml", random_hex(4)), cfg);
    run(dir, &["config", "validate", "-c", p.to_str().unwrap()], env)
}

fn tmp() -> tempfile::TempDir {
    tempfile::Builder::new().prefix("callfs-cfg-").tempdir().unwrap()
}

fn assert_no_secrets(text: &str, ctx: &str) {
    for s in SECRETS {
        assert!(!text.contains(s), "{ctx}: secret {s:?} printed");
    }
}

/// A line of the output that (after an optional bullet) starts with `key`.
fn has_line_starting_with(text: &str, key: &str) -> bool {
    text.lines().any(|l| {
        let t = l.trim_start();
        let t = t.strip_prefix("- ").or_else(|| t.strip_prefix("* ")).unwrap_or(t).trim_start();
        t.starts_with(key)
    })
}

// ---------------------------------------------------------------------------------------------
// config validate
// ---------------------------------------------------------------------------------------------

#[test]
fn validate_valid_yaml() {
    let d = tmp();
    let port = free_port();
    let cfg = base_config(d.path(), port);
    let p = write_config(d.path(), "config.yaml", &cfg);
    let o = run(d.path(), &["config", "validate", "-c", p.to_str().unwrap()], &[]);
    assert_eq!(o.code, Some(0), "valid YAML: {}", o.describe());
    assert!(o.stdout.contains("Configuration is valid"), "{}", o.describe());
    assert!(o.stdout.contains(INSTANCE_ID), "summary names the instance id: {}", o.describe());
    assert!(o.stdout.contains(&format!("127.0.0.1:{port}")), "summary names the listen address: {}", o.describe());
    assert_no_secrets(&o.all(), "config validate");
    // Long flag form too.
    let o = run(d.path(), &["config", "validate", "--config", p.to_str().unwrap()], &[]);
    assert_eq!(o.code, Some(0), "--config: {}", o.describe());
}

#[test]
fn validate_valid_json() {
    let d = tmp();
    let cfg = base_config(d.path(), free_port());
    let p = write_config(d.path(), "config.json", &cfg);
    let o = run(d.path(), &["config", "validate", "-c", p.to_str().unwrap()], &[]);
    assert_eq!(o.code, Some(0), "valid JSON: {}", o.describe());
    assert!(o.stdout.contains("Configuration is valid"), "{}", o.describe());
    // The same JSON text under a .yaml name is still fine (YAML is a superset of JSON).
    let text = fs::read_to_string(&p).unwrap();
    let p2 = d.path().join("json-as.yaml");
    fs::write(&p2, text).unwrap();
    let o = run(d.path(), &["config", "validate", "-c", p2.to_str().unwrap()], &[]);
    assert_eq!(o.code, Some(0), "JSON text in .yaml: {}", o.describe());
}

#[test]
fn validate_masks_dsn_password() {
    let d = tmp();
    let mut cfg = base_config(d.path(), free_port());
    set_path(
        &mut cfg,
        "metadata_store",
        json!({"type": "postgres", "dsn": "postgres://callfs:sekret-pass-4711@db.invalid:5432/callfs"}),
    );
    let o = validate(d.path(), &cfg, &[]);
    assert_eq!(o.code, Some(0), "postgres config validates without connecting: {}", o.describe());
    assert!(o.stdout.contains("Configuration is valid"));
    assert!(!o.all().contains("sekret-pass-4711"), "DSN password must be masked: {}", o.describe());
}

#[test]
fn validate_accepted_forms() {
    let d = tmp();
    let mut cfg = base_config(d.path(), free_port());
    // Durations in every documented form, unknown and dropped keys, later-feature keys on.
    set_path(&mut cfg, "server.read_timeout", json!("1m30s"));
    set_path(&mut cfg, "server.write_timeout", json!("1.5s"));
    set_path(&mut cfg, "server.idle_timeout", json!(120));
    set_path(&mut cfg, "server.file_op_timeout", json!("300ms"));
    set_path(&mut cfg, "server.metadata_op_timeout", json!("5000000us"));
    set_path(&mut cfg, "dlm.lease_ttl", json!("1m"));
    set_path(&mut cfg, "dlm.acquire_timeout", json!("0s"));
    set_path(&mut cfg, "server.protocol", json!("HTTP"));
    set_path(&mut cfg, "server.trusted_proxies", json!(["10.0.0.1", "192.168.0.0/16", "::1"]));
    set_path(&mut cfg, "totally_unknown_key", json!("x"));
    set_path(&mut cfg, "metadata_store.redis_addr", json!("localhost:6379"));
    set_path(&mut cfg, "raft", json!({"node_id": "n1"}));
    set_path(&mut cfg, "ha", json!({"replication_enabled": true, "replica_backend": "localfs"}));
    set_path(&mut cfg, "erasure", json!({"enabled": true}));
    set_path(&mut cfg, "rate_limit", json!({"api_per_second": 5, "api_burst": 10}));
    set_path(
        &mut cfg,
        "instance_discovery.peer_endpoints",
        json!({"node-2": "http://127.0.0.1:1", "node.3_x": "https://example.invalid:8443"}),
    );
    let o = validate(d.path(), &cfg, &[]);
    assert_eq!(o.code, Some(0), "accepted forms must validate: {}", o.describe());
    assert!(o.stdout.contains("Configuration is valid"));
    assert!(o.all().contains("totally_unknown_key"), "unknown keys are listed by config validate: {}", o.describe());
}

#[test]
fn validate_short_key_names_auth_api_keys() {
    let d = tmp();
    let mut cfg = base_config(d.path(), free_port());
    remove_path(&mut cfg, "auth.api_key_users");
    set_path(&mut cfg, "auth.api_keys", json!(["short"]));
    let o = validate(d.path(), &cfg, &[]);
    assert_ne!(o.code, Some(0), "short key must fail: {}", o.describe());
    assert_eq!(o.code, Some(1), "invalid configuration exits 1: {}", o.describe());
    assert!(o.all().contains("auth.api_keys"), "message names auth.api_keys: {}", o.describe());
    assert!(o.all().contains("Configuration validation failed:"), "{}", o.describe());
}

#[test]
fn validate_no_keys_fails() {
    let d = tmp();
    let mut cfg = base_config(d.path(), free_port());
    remove_path(&mut cfg, "auth.api_key_users");
    let o = validate(d.path(), &cfg, &[]);
    assert_ne!(o.code, Some(0), "no keys must fail: {}", o.describe());
    assert!(has_line_starting_with(&o.all(), "auth"), "{}", o.describe());
}

#[test]
fn validate_missing_file_fails() {
    let d = tmp();
    let o = run(d.path(), &["config", "validate", "--config", "/nonexistent.yaml"], &[]);
    assert_ne!(o.code, Some(0), "missing file: {}", o.describe());
    assert_eq!(o.code, Some(1), "missing file exits 1: {}", o.describe());
    let o = run(d.path(), &["server", "--config", "/nonexistent.yaml"], &[]);
    assert_eq!(o.code, Some(1), "server with a missing file exits 1: {}", o.describe());
}

#[test]
fn validate_discovers_default_file_in_cwd() {
    let d = tmp();
    let mut cfg = base_config(d.path(), free_port());
    write_config(d.path(), "config.yaml", &cfg);
    let o = run(d.path(), &["config", "validate"], &[]);
    assert_eq!(o.code, Some(0), "./config.yaml discovered: {}", o.describe());
    // Make ./config.yaml invalid: discovery must pick it up and fail.
    set_path(&mut cfg, "server.protocol", json!("ftp"));
    write_config(d.path(), "config.yaml", &cfg);
    let o = run(d.path(), &["config", "validate"], &[]);
    assert_eq!(o.code, Some(1), "./config.yaml (invalid) discovered: {}", o.describe());
    assert!(o.all().contains("server.protocol"), "{}", o.describe());
}

#[test]
fn validate_reports_every_error() {
    let d = tmp();
    let mut cfg = base_config(d.path(), free_port());
    set_path(&mut cfg, "server.protocol", json!("ftp"));
    set_path(&mut cfg, "log.level", json!("verbose"));
    set_path(&mut cfg, "dlm.type", json!("zookeeper"));
    let o = validate(d.path(), &cfg, &[]);
    assert_eq!(o.code, Some(1), "{}", o.describe());
    for key in ["server.protocol", "log.level", "dlm.type"] {
        assert!(has_line_starting_with(&o.all(), key), "all failures reported; missing {key}: {}", o.describe());
    }
}

#[test]
fn validate_bad_env_value_names_variable() {
    let d = tmp();
    let cfg = base_config(d.path(), free_port());
    let o = validate(d.path(), &cfg, &[("CALLFS_SERVER__MAX_UPLOAD_BYTES", "abc")]);
    assert_ne!(o.code, Some(0), "unconvertible env value: {}", o.describe());
    assert!(o.all().contains("CALLFS_SERVER__MAX_UPLOAD_BYTES"), "error names the variable: {}", o.describe());
}

/// Environment values reach the configuration verbatim and names keep dots: a 16-character key with a leading zero stays
/// 16 characters (a parser of typed values would read the number 123456789012345), and `NODE-2.DC1` is one peer id.
#[test]
fn validate_env_values_verbatim_and_dotted_ids() {
    let d = tmp();
    let mut cfg = base_config(d.path(), free_port());
    remove_path(&mut cfg, "auth.api_key_users");
    let env = [
        ("CALLFS_AUTH__API_KEY_USERS__ALICE", "0123456789012345"),
        ("CALLFS_INSTANCE_DISCOVERY__PEER_ENDPOINTS__NODE-2.DC1", "https://127.0.0.1:9"),
        ("CALLFS_NOT_A_SECTION", "x"),
    ];
    let o = validate(d.path(), &cfg, &env);
    assert_eq!(o.code, Some(0), "{}", o.describe());
    assert!(o.all().contains("not_a_section: unknown key, ignored"), "{}", o.describe());
    let o = validate(d.path(), &cfg, &[("CALLFS_AUTH__API_KEY_USERS__ALICE", "012345678901234")]);
    assert!(o.all().contains("auth.api_key_users.alice: key shorter than 16 characters"), "{}", o.describe());
}

/// config.md §4: each rule broken in isolation → exit 1 with a line starting with its key path.
#[test]
fn validation_rules_table() {
    let d = tmp();
    let port = free_port();
    let base = base_config(d.path(), port);
    let listen = format!("127.0.0.1:{port}");
    type Case = (u32, &'static str, Vec<(&'static str, Option<Value>)>);
    let cases: Vec<Case> = vec![
        (1, "server.listen_addr", vec![("server.listen_addr", Some(json!("")))]),
        (1, "server.listen_addr", vec![("server.listen_addr", Some(json!("not-an-address")))]),
        (1, "server.listen_addr", vec![("server.listen_addr", Some(json!("127.0.0.1:notaport")))]),
        (2, "server.protocol", vec![("server.protocol", Some(json!("ftp")))]),
        (3, "server.cert_file", vec![("server.protocol", Some(json!("https"))), ("server.cert_file", Some(json!("")))]),
        (4, "server.read_timeout", vec![("server.read_timeout", Some(json!("0s")))]),
        (4, "server.write_timeout", vec![("server.write_timeout", Some(json!("0s")))]),
        (4, "server.idle_timeout", vec![("server.idle_timeout", Some(json!("0s")))]),
        (4, "server.file_op_timeout", vec![("server.file_op_timeout", Some(json!("0s")))]),
        (4, "server.metadata_op_timeout", vec![("server.metadata_op_timeout", Some(json!("0s")))]),
        (4, "server.max_upload_bytes", vec![("server.max_upload_bytes", Some(json!(0)))]),
        (4, "server.max_header_bytes", vec![("server.max_header_bytes", Some(json!(1000)))]),
        (5, "server.external_url", vec![("server.external_url", Some(json!("ftp://example.com")))]),
        (6, "server.trusted_proxies", vec![("server.trusted_proxies", Some(json!(["not-an-ip"])))]),
        (6, "server.trusted_proxies", vec![("server.trusted_proxies", Some(json!(["10.0.0.0/33"])))]),
        (7, "auth", vec![("auth.api_key_users", None)]),
        (8, "auth.api_keys", vec![("auth.api_keys", Some(json!(["short"])))]),
        (8, "auth.api_keys", vec![("auth.api_keys", Some(json!(["default-api-key"])))]),
        (8, "auth.api_key_users.alice", vec![("auth.api_key_users.alice", Some(json!("short")))]),
        (8, "auth.api_key_users.alice", vec![("auth.api_key_users.alice", Some(json!("default-api-key")))]),
        (9, "auth.api_key_users", vec![("auth.api_key_users.bad id", Some(json!("valid-key-for-bad-id-0001")))]),
        (9, "auth.api_key_users", vec![("auth.api_key_users. ", Some(json!("valid-key-for-blank-id-01")))]),
        (
            9,
            "auth.api_key_users",
            vec![(
                Box::leak(format!("auth.api_key_users.{}", "u".repeat(129)).into_boxed_str()),
                Some(json!("valid-key-for-long-id-0001")),
            )],
        ),
        (10, "auth.api_key_users.root", vec![("auth.api_key_users.root", Some(json!("valid-key-for-root-00001")))]),
        (
            10,
            "auth.api_key_users.internal-proxy",
            vec![("auth.api_key_users.internal-proxy", Some(json!("valid-key-for-proxy-0001")))],
        ),
        (
            10,
            "auth.api_key_users.api-user-3",
            vec![("auth.api_key_users.api-user-3", Some(json!("valid-key-for-apiuser-01")))],
        ),
        (11, "auth.api_key_users.", vec![("auth.api_key_users.bob", Some(json!(ALICE_KEY)))]),
        (11, "auth.api_key", vec![("auth.api_keys", Some(json!([BOB_KEY])))]),
        (
            12,
            "auth.internal_proxy_secret",
            vec![("auth.internal_proxy_secret", Some(json!("change-me-internal-secret")))],
        ),
        (12, "auth.internal_proxy_secret", vec![("auth.internal_proxy_secret", Some(json!("")))]),
        (12, "auth.internal_proxy_secret", vec![("auth.internal_proxy_secret", None)]),
        (13, "auth.internal_proxy_secret", vec![("auth.internal_proxy_secret", Some(json!(ALICE_KEY)))]),
        (
            14,
            "auth.single_use_link_secret",
            vec![("auth.single_use_link_secret", Some(json!("change-me-link-secret")))],
        ),
        (14, "auth.single_use_link_secret", vec![("auth.single_use_link_secret", None)]),
        (15, "log.level", vec![("log.level", Some(json!("verbose")))]),
        (15, "log.format", vec![("log.format", Some(json!("xml")))]),
        (16, "metrics.listen_addr", vec![("metrics.listen_addr", Some(json!(listen.clone())))]),
        (16, "metrics.listen_addr", vec![("metrics.listen_addr", Some(json!("garbage")))]),
        (17, "backend.default_backend", vec![("backend.default_backend", Some(json!("ftp")))]),
        (18, "backend.localfs_root_path", vec![("backend.localfs_root_path", Some(json!("")))]),
        (
            19,
            "backend.s3_bucket_name",
            vec![("backend.default_backend", Some(json!("s3"))), ("backend.s3_bucket_name", Some(json!("")))],
        ),
        (20, "backend.s3_server_side_encryption", vec![("backend.s3_server_side_encryption", Some(json!("DES")))]),
        (21, "backend.internal_proxy_timeout", vec![("backend.internal_proxy_timeout", Some(json!("0s")))]),
        (
            21,
            "backend.internal_proxy_connect_timeout",
            vec![("backend.internal_proxy_connect_timeout", Some(json!("0s")))],
        ),
        (
            21,
            "backend.internal_proxy_ca_file",
            vec![("backend.internal_proxy_ca_file", Some(json!("/nonexistent/ca.pem")))],
        ),
        (22, "metadata_store.type", vec![("metadata_store.type", Some(json!("mysql")))]),
        (22, "metadata_store.type", vec![("metadata_store.type", Some(json!("redis")))]),
        (22, "metadata_store.type", vec![("metadata_store.type", Some(json!("raft")))]),
        (
            23,
            "metadata_store.dsn",
            vec![("metadata_store.type", Some(json!("postgres"))), ("metadata_store.dsn", Some(json!("")))],
        ),
        (23, "metadata_store.sqlite_path", vec![("metadata_store.sqlite_path", Some(json!("")))]),
        (24, "dlm.type", vec![("dlm.type", Some(json!("zookeeper")))]),
        (24, "dlm.type", vec![("dlm.type", Some(json!("redis")))]),
        (25, "dlm.dsn", vec![("dlm.type", Some(json!("postgres"))), ("dlm.dsn", Some(json!("")))]),
        (26, "dlm.lease_ttl", vec![("dlm.lease_ttl", Some(json!("500ms")))]),
        (26, "dlm.acquire_timeout", vec![("dlm.acquire_timeout", Some(json!("-1s")))]),
        (27, "instance_discovery.instance_id", vec![("instance_discovery.instance_id", Some(json!("")))]),
        (27, "instance_discovery.instance_id", vec![("instance_discovery.instance_id", Some(json!("bad id!")))]),
        (27, "instance_discovery.instance_id", vec![("instance_discovery.instance_id", Some(json!("x".repeat(101))))]),
        (
            28,
            "instance_discovery.peer_endpoints",
            vec![("instance_discovery.peer_endpoints", Some(json!({"bad id!": "http://127.0.0.1:1"})))],
        ),
        (
            28,
            "instance_discovery.peer_endpoints.test-node-1",
            vec![("instance_discovery.peer_endpoints", Some(json!({(INSTANCE_ID): "http://127.0.0.1:1"})))],
        ),
        (
            28,
            "instance_discovery.peer_endpoints.node-2",
            vec![("instance_discovery.peer_endpoints", Some(json!({"node-2": "ftp://127.0.0.1:1"})))],
        ),
        (
            28,
            "instance_discovery.peer_endpoints.node-2",
            vec![("instance_discovery.peer_endpoints", Some(json!({"node-2": "http://127.0.0.1:1/?q=1"})))],
        ),
        (
            28,
            "instance_discovery.peer_endpoints.node-2",
            vec![("instance_discovery.peer_endpoints", Some(json!({"node-2": "http://127.0.0.1:1/#frag"})))],
        ),
        (
            28,
            "instance_discovery.peer_endpoints.node-2",
            vec![("instance_discovery.peer_endpoints", Some(json!({"node-2": "not a url"})))],
        ),
        (
            29,
            "instance_discovery.health_probe_interval",
            vec![("instance_discovery.health_probe_interval", Some(json!("500ms")))],
        ),
        (30, "rate_limit.links_per_second", vec![("rate_limit.links_per_second", Some(json!(-1)))]),
        (30, "rate_limit.api_burst", vec![("rate_limit.api_burst", Some(json!(-1)))]),
        (
            30,
            "rate_limit.downloads",
            vec![("rate_limit.downloads_per_second", Some(json!(5))), ("rate_limit.downloads_burst", Some(json!(0)))],
        ),
        (31, "ha.replica_backend", vec![("ha.replication_enabled", Some(json!(true)))]),
        (
            31,
            "ha.replica_backend",
            vec![("ha.replication_enabled", Some(json!(true))), ("ha.replica_backend", Some(json!("ftp")))],
        ),
        (
            32,
            "erasure",
            vec![
                ("erasure.enabled", Some(json!(true))),
                ("erasure.data_shards", Some(json!(200))),
                ("erasure.parity_shards", Some(json!(100))),
            ],
        ),
        (
            33,
            "server.quic_listen_addr",
            vec![("server.enable_quic", Some(json!(true))), ("server.quic_listen_addr", Some(json!("")))],
        ),
    ];
    let mut failures = Vec::new();
    let mut covered = std::collections::BTreeSet::new();
    for (rule, key, muts) in &cases {
        covered.insert(*rule);
        let mut cfg = base.clone();
        for (k, v) in muts {
            match v {
                Some(v) => set_path(&mut cfg, k, v.clone()),
                None => remove_path(&mut cfg, k),
            }
        }
        let o = validate(d.path(), &cfg, &[]);
        let all = o.all();
        let mut problems = Vec::new();
        if o.code != Some(1) {
            problems.push(format!("exit {:?} (expected 1)", o.code));
        }
        if !all.contains("Configuration validation failed:") {
            problems.push("no 'Configuration validation failed:' header".to_string());
        }
        if !has_line_starting_with(&all, key) {
            problems.push(format!("no line starting with {key:?}"));
        }
        for s in SECRETS {
            if all.contains(s) {
                problems.push(format!("secret {s:?} printed"));
            }
        }
        if !problems.is_empty() {
            failures.push(format!(
                "rule {rule} ({key}) with {muts:?}: {}\n  output: {}",
                problems.join("; "),
                all.trim().replace('\n', "\n          ")
            ));
        }
    }
    assert_eq!(covered.len(), 33, "every rule 1–33 has a case");
    assert!(
        failures.is_empty(),
        "{} of {} validation cases failed:\n{}",
        failures.len(),
        cases.len(),
        failures.join("\n")
    );
}

// ---------------------------------------------------------------------------------------------
// Environment overrides (server)
// ---------------------------------------------------------------------------------------------

#[test]
fn env_listen_addr_overrides_file() {
    let n = Node::start(
        NodeOptions::new(Db::Sqlite).env("CALLFS_SERVER__LISTEN_ADDR", "127.0.0.1:{port2}").listen_on_port2(),
    );
    let r = raw_http(n.port2, "GET", "/health", &[], b"").expect("health on the env port");
    assert_eq!(r.status, 200);
    assert!(
        raw_http(n.file_port, "GET", "/health", &[], b"").is_err(),
        "the file's port must not be served when the env overrides it"
    );
}

#[test]
fn env_log_level_error_suppresses_info() {
    let n = Node::start(NodeOptions::new(Db::Sqlite).debug().env("CALLFS_LOG__LEVEL", "error"));
    assert_eq!(n.post("/v1/files/lvl.txt", ALICE_KEY, b"x").status, 201);
    assert_eq!(n.get("/v1/files/lvl.txt", ALICE_KEY).status, 200);
    assert_eq!(n.get("/v1/files/none.txt", ALICE_KEY).status, 404);
    assert_eq!(n.get("/health", NO_AUTH).status, 200);
    std::thread::sleep(Duration::from_millis(500));
    let text = n.log_text();
    for l in text.lines().filter(|l| !l.trim().is_empty()) {
        let v: Value = serde_json::from_str(l).unwrap_or_else(|e| panic!("log line not JSON ({e}): {l}"));
        assert_eq!(v["level"], json!("error"), "only error lines at log.level=error: {l}");
    }
}

#[test]
fn env_named_key_without_file_keys() {
    let d = tmp();
    let mut cfg = base_config(d.path(), free_port());
    remove_path(&mut cfg, "auth.api_key_users");
    let o = validate(d.path(), &cfg, &[("CALLFS_AUTH__API_KEY_USERS__ALICE", ALICE_KEY)]);
    assert_eq!(o.code, Some(0), "env-defined named key is valid: {}", o.describe());
    assert_no_secrets(&o.all(), "validate with env key");

    let n = Node::start(
        NodeOptions::new(Db::Sqlite).remove("auth.api_key_users").env("CALLFS_AUTH__API_KEY_USERS__ALICE", ALICE_KEY),
    );
    let r = n.post("/v1/files/env-owner.txt", ALICE_KEY, b"x");
    assert_eq!(r.status, 201, "env key authenticates: {}", r.describe());
    let h = n.head("/v1/files/env-owner.txt", ALICE_KEY);
    assert_eq!(h.header("x-callfs-owner"), Some("alice"), "id lowercased from ..._ALICE");
    assert_eq!(n.get("/v1/files/env-owner.txt", BOB_KEY).status, 401, "bob is not configured");
    assert_no_secrets(&n.log_text(), "server log");
}

#[test]
fn env_map_entry_merges_with_file() {
    let carol = "carol-env-key-0123456789abcdef";
    let n = Node::start(NodeOptions::new(Db::Sqlite).env("CALLFS_AUTH__API_KEY_USERS__CAROL", carol));
    assert_eq!(n.post("/v1/files/c.txt", carol, b"c").status, 201);
    assert_eq!(n.head("/v1/files/c.txt", ALICE_KEY).header("x-callfs-owner"), Some("carol"));
    assert_eq!(n.post("/v1/files/a.txt", ALICE_KEY, b"a").status, 201, "file entries kept (maps merge)");
}

#[test]
fn env_map_json_object_replaces_map() {
    let dave = "dave-env-key-0123456789abcdef0";
    let n = Node::start(
        NodeOptions::new(Db::Sqlite).env("CALLFS_AUTH__API_KEY_USERS", &format!("{{\"Dave\": \"{dave}\"}}")),
    );
    assert_eq!(n.post("/v1/files/d.txt", dave, b"d").status, 201);
    assert_eq!(n.head("/v1/files/d.txt", dave).header("x-callfs-owner"), Some("Dave"), "JSON object keeps case");
    assert_eq!(n.get("/v1/files/d.txt", ALICE_KEY).status, 401, "the JSON object replaces the map");
}

#[test]
fn env_integer_override_applies() {
    let n = Node::start(NodeOptions::new(Db::Sqlite).env("CALLFS_SERVER__MAX_UPLOAD_BYTES", "100"));
    let r = n.post("/v1/files/big.bin", ALICE_KEY, &[0u8; 200]);
    assert_eq!(r.status, 413, "env max_upload_bytes=100: {}", r.describe());
    assert_eq!(n.post("/v1/files/ok.bin", ALICE_KEY, &[0u8; 100]).status, 201);
}

// ---------------------------------------------------------------------------------------------
// Legacy keys
// ---------------------------------------------------------------------------------------------

const K0: &str = "legacy-key-zero-0123456789ab";
const K1: &str = "legacy-key-one-0123456789abc";

fn assert_legacy_owners(n: &Node) {
    assert_eq!(n.post("/v1/files/k0.txt", K0, b"0").status, 201);
    assert_eq!(n.post("/v1/files/k1.txt", K1, b"1").status, 201);
    assert_eq!(n.head("/v1/files/k0.txt", K0).header("x-callfs-owner"), Some("api-user-0"));
    assert_eq!(n.head("/v1/files/k1.txt", K0).header("x-callfs-owner"), Some("api-user-1"));
    // Ownership follows the positional ids.
    assert_eq!(n.delete("/v1/files/k1.txt", K0).status, 403);
}

#[test]
fn legacy_api_keys_positional_ids() {
    let n =
        Node::start(NodeOptions::new(Db::Sqlite).remove("auth.api_key_users").set("auth.api_keys", json!([K0, K1])));
    assert_legacy_owners(&n);
    let log = n.log_text();
    assert!(
        n.log_lines().iter().any(|v| v["level"] == json!("warn")),
        "a warning is logged when auth.api_keys is used: {log}"
    );
    assert!(!log.contains(K0) && !log.contains(K1), "legacy keys never logged");
}

#[test]
fn legacy_api_keys_from_env_list() {
    let n = Node::start(
        NodeOptions::new(Db::Sqlite).remove("auth.api_key_users").env("CALLFS_AUTH__API_KEYS", &format!("{K0},{K1}")),
    );
    assert_legacy_owners(&n);
}

#[test]
fn legacy_api_keys_from_env_json_array() {
    let n = Node::start(
        NodeOptions::new(Db::Sqlite)
            .remove("auth.api_key_users")
            .env("CALLFS_AUTH__API_KEYS", &format!("[\"{K0}\",\"{K1}\"]")),
    );
    assert_legacy_owners(&n);
}

// ---------------------------------------------------------------------------------------------
// CLI
// ---------------------------------------------------------------------------------------------

#[test]
fn cli_version_and_help() {
    let d = tmp();
    let version = env!("CARGO_PKG_VERSION");
    for args in [&["--version"][..], &["version"][..]] {
        let o = run(d.path(), args, &[]);
        assert_eq!(o.code, Some(0), "callfs {args:?}: {}", o.describe());
        assert!(o.stdout.contains(version), "callfs {args:?} prints {version}: {}", o.describe());
    }
    for args in [&["--help"][..], &["config", "validate", "--help"][..], &["server", "--help"][..]] {
        let o = run(d.path(), args, &[]);
        assert_eq!(o.code, Some(0), "callfs {args:?}: {}", o.describe());
        assert!(!o.stdout.trim().is_empty(), "callfs {args:?} prints usage");
    }
}

#[test]
fn cli_unknown_command_and_flag_exit_2() {
    let d = tmp();
    for args in
        [&["frobnicate"][..], &["--bogus-flag"][..], &["config", "validate", "--bogus"][..], &["config", "frob"][..]]
    {
        let o = run(d.path(), args, &[]);
        assert_eq!(o.code, Some(2), "callfs {args:?} exits 2: {}", o.describe());
        assert!(!o.stderr.trim().is_empty(), "callfs {args:?} prints usage on stderr");
    }
}

#[test]
fn server_refuses_invalid_config() {
    let d = tmp();
    let mut cfg = base_config(d.path(), free_port());
    set_path(&mut cfg, "auth.api_key_users.alice", json!("short"));
    let p = write_config(d.path(), "bad.yaml", &cfg);
    let o = run(d.path(), &["server", "--config", p.to_str().unwrap()], &[]);
    assert_eq!(o.code, Some(1), "server with invalid config exits 1: {}", o.describe());
    assert!(o.stderr.contains("auth.api_key_users.alice"), "error on stderr: {}", o.describe());
}

#[test]
fn no_arguments_runs_server_with_cwd_config() {
    let d = tmp();
    let port = free_port();
    let cfg = base_config(d.path(), port);
    write_config(d.path(), "config.yaml", &cfg);
    let log = fs::File::create(d.path().join("server.log")).unwrap();
    let mut cmd = callfs_cmd();
    cmd.current_dir(d.path()).stdout(Stdio::null()).stderr(log);
    let _guard = ChildGuard(Some(cmd.spawn().unwrap()));
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        if let Ok(r) = raw_http(port, "GET", "/health", &[], b"") {
            assert_eq!(r.status, 200);
            break;
        }
        assert!(
            Instant::now() < deadline,
            "`callfs` without arguments did not serve ./config.yaml: {}",
            fs::read_to_string(d.path().join("server.log")).unwrap_or_default()
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}
