//! Black-box proof that the operator kit works against reality: a real `callfs` node is scraped by
//! a real Prometheus (the Debian `prometheus` package; `scripts/ensure-deps.sh` installs it), and
//!
//! * every PromQL expression in `grafana/dashboards/*.json` evaluates without error, and the
//!   Traffic, Latency, Backends and Metadata store panels return data once the node has had load;
//! * the dashboards' `label_values(...)` variables list the node;
//! * every rule of `cluster/alerts.yml` evaluates cleanly, and (with `for:` shortened and the
//!   `[5m]` windows shrunk to `[30s]`) `CallFSHighErrorRate` and `CallFSBackendFailure` fire when
//!   uploads fail with 500, and `CallFSServiceDown` fires after the node is killed.
//!
//! Without `prometheus` the test fails (it never skips). Processes are started on free 127.0.0.1
//! ports and killed by pid when the test ends, whatever the outcome.

use std::collections::BTreeSet;
use std::fs::{self, File};
use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::thread::sleep;
use std::time::{Duration, Instant};

use serde_json::Value;

/// Upper bound for every wait in this file.
const WAIT: Duration = Duration::from_secs(60);
const API_KEY: &str = "monitoring-test-key-0123456789abcdef";
const USER: &str = "monitor";
/// Rows whose panels must return data after ordinary load (success-only traffic).
const ROWS_WITH_DATA: &[&str] = &["Traffic", "Latency", "Backends", "Metadata store", "Process"];
/// The rows observability.md §6 asks for, in order.
const REQUIRED_ROWS: &[&str] =
    &["Traffic", "Errors", "Latency", "Backends", "Metadata store", "Locks", "Cluster", "Links & limits", "Process"];
/// The user's contract: these four rules must stay exactly as written (observability.md §5).
const CONTRACT_RULES: &[(&str, &str)] = &[
    (
        "CallFSHighErrorRate",
        r#"sum(rate(callfs_http_requests_total{status_code=~"5.."}[5m])) / sum(rate(callfs_http_requests_total[5m])) > 0.05"#,
    ),
    (
        "CallFSHighLatency",
        r#"histogram_quantile(0.95, sum(rate(callfs_http_request_duration_seconds_bucket[5m])) by (le)) > 2.0"#,
    ),
    ("CallFSBackendFailure", r#"rate(callfs_backend_ops_total{status="failure"}[5m]) > 0"#),
    ("CallFSServiceDown", r#"up{job="callfs"} == 0"#),
];

fn repo_path(rel: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join(rel)
}

fn free_port() -> u16 {
    TcpListener::bind(("127.0.0.1", 0)).and_then(|l| l.local_addr()).expect("bind a free port on 127.0.0.1").port()
}

/// JSON string literal = a valid YAML double-quoted scalar.
fn yaml_str(s: &str) -> String {
    Value::String(s.to_owned()).to_string()
}

// ------------------------------------------------------------------------------------------------
// Alert rule rewrite (fast copy for the live test)

/// Rewrites a Prometheus rule file for a quick live test: `for: 0…` stays `0s`, every other
/// `for:` becomes `5s`, and range windows given in minutes/hours/days (`[5m]`, `[10m]`) become
/// `[30s]`. Everything else is copied unchanged.
fn rules_for_fast_test(src: &str) -> String {
    let mut out = String::with_capacity(src.len());
    for line in src.lines() {
        let body = line.trim_start();
        let indent = &line[..line.len() - body.len()];
        if let Some(value) = body.strip_prefix("for:") {
            let value = value.trim();
            let zero = value.trim_start_matches('0').chars().all(|c| c.is_ascii_alphabetic());
            out.push_str(indent);
            out.push_str(if zero { "for: 0s" } else { "for: 5s" });
        } else {
            out.push_str(&shrink_windows(line));
        }
        out.push('\n');
    }
    out
}

/// `[<digits>m]`, `[<digits>h]`, `[<digits>d]` → `[30s]`.
fn shrink_windows(line: &str) -> String {
    let mut out = String::with_capacity(line.len());
    let mut rest = line;
    while let Some(start) = rest.find('[') {
        out.push_str(&rest[..start]);
        let after = &rest[start + 1..];
        let digits = after.bytes().take_while(u8::is_ascii_digit).count();
        let tail = &after[digits..];
        if digits > 0 && tail.len() >= 2 && matches!(&tail[..2], "m]" | "h]" | "d]") {
            out.push_str("[30s]");
            rest = &tail[2..];
        } else {
            out.push('[');
            rest = after;
        }
    }
    out.push_str(rest);
    out
}

// ------------------------------------------------------------------------------------------------
// Dashboards

#[derive(Debug, Clone)]
struct PanelExpr {
    file: String,
    row: String,
    panel: String,
    expr: String,
}

fn dashboard_files() -> Vec<PathBuf> {
    let dir = repo_path("grafana/dashboards");
    let mut files: Vec<PathBuf> = fs::read_dir(&dir)
        .unwrap_or_else(|e| panic!("read {}: {e}", dir.display()))
        .map(|e| e.expect("dir entry").path())
        .filter(|p| p.extension().is_some_and(|x| x == "json"))
        .collect();
    files.sort();
    assert!(!files.is_empty(), "no dashboards in {}", dir.display());
    files
}

fn load_json(path: &Path) -> Value {
    let text = fs::read_to_string(path).unwrap_or_else(|e| panic!("read {}: {e}", path.display()));
    serde_json::from_str(&text).unwrap_or_else(|e| panic!("{} is not valid JSON: {e}", path.display()))
}

/// Every string value under an `"expr"` key, anywhere in the document.
fn all_exprs(v: &Value, out: &mut Vec<String>) {
    match v {
        Value::Object(map) => {
            for (k, child) in map {
                match (k.as_str(), child) {
                    ("expr", Value::String(s)) => out.push(s.clone()),
                    _ => all_exprs(child, out),
                }
            }
        }
        Value::Array(items) => items.iter().for_each(|c| all_exprs(c, out)),
        _ => {}
    }
}

/// Panel expressions with the row they sit in (rows are `type: row` panels; the panels after a
/// row belong to it, and a collapsed row carries its panels inside).
fn panel_exprs(file: &str, dashboard: &Value) -> Vec<PanelExpr> {
    let mut out = Vec::new();
    let mut row = String::new();
    let panels = dashboard["panels"].as_array().cloned().unwrap_or_default();
    for p in &panels {
        if p["type"] == "row" {
            row = p["title"].as_str().unwrap_or_default().to_owned();
            for inner in p["panels"].as_array().into_iter().flatten() {
                push_panel(file, &row, inner, &mut out);
            }
        } else {
            push_panel(file, &row, p, &mut out);
        }
    }
    out
}

fn push_panel(file: &str, row: &str, panel: &Value, out: &mut Vec<PanelExpr>) {
    let mut exprs = Vec::new();
    all_exprs(panel, &mut exprs);
    for expr in exprs {
        out.push(PanelExpr {
            file: file.to_owned(),
            row: row.to_owned(),
            panel: panel["title"].as_str().unwrap_or_default().to_owned(),
            expr,
        });
    }
}

/// Replaces Grafana variables by values Prometheus accepts.
fn grafana_to_promql(expr: &str) -> String {
    expr.replace("${instance}", ".*")
        .replace("$instance", ".*")
        .replace("${__rate_interval}", "30s")
        .replace("$__rate_interval", "30s")
        .replace("${__interval}", "30s")
        .replace("$__interval", "30s")
        .replace("$__range", "30s")
}

/// Panels that must have data after success-only load: the rows above, minus panels that only
/// show failures (they get data in the error phase).
fn needs_data_after_load(p: &PanelExpr) -> bool {
    let failure_only = p.expr.contains(r#"status="failure""#) || p.expr.contains(r#"status_code=~"5"#);
    (ROWS_WITH_DATA.contains(&p.row.as_str()) && !failure_only) || p.expr.contains(r#"status_code=~"4.."#)
}

/// Panels that must have data once uploads fail with 500.
fn needs_data_after_errors(p: &PanelExpr) -> bool {
    p.expr.contains("callfs_backend_ops_total") && p.expr.contains(r#"status="failure""#)
        || p.expr.contains("callfs_http_requests_total") && p.expr.contains(r#"status_code=~"5.."#)
}

// ------------------------------------------------------------------------------------------------
// Processes

/// A child process whose stdout/stderr go to a log file; killed (SIGKILL, by pid) and reaped on
/// drop.
struct Proc {
    name: &'static str,
    child: Option<Child>,
    log: PathBuf,
}

impl Proc {
    fn spawn(name: &'static str, cmd: &mut Command, log: PathBuf) -> Proc {
        let out = File::create(&log).unwrap_or_else(|e| panic!("create {}: {e}", log.display()));
        let err = out.try_clone().expect("clone log handle");
        let child = cmd
            .stdin(Stdio::null())
            .stdout(out)
            .stderr(err)
            .spawn()
            .unwrap_or_else(|e| panic!("start {name} ({cmd:?}): {e}"));
        Proc { name, child: Some(child), log }
    }

    /// `Some(description)` if the process has exited.
    fn exited(&mut self) -> Option<String> {
        match self.child.as_mut().map(Child::try_wait) {
            None => Some("killed by the test".to_owned()),
            Some(Ok(Some(status))) => Some(status.to_string()),
            Some(Ok(None)) => None,
            Some(Err(e)) => Some(format!("wait failed: {e}")),
        }
    }

    fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill(); // SIGKILL to this pid only
            let _ = child.wait();
        }
    }

    fn log_tail(&self, lines: usize) -> String {
        let text = fs::read_to_string(&self.log).unwrap_or_default();
        let all: Vec<&str> = text.lines().collect();
        let from = all.len().saturating_sub(lines);
        format!(
            "--- last {} lines of {} log ({}):\n{}",
            all.len() - from,
            self.name,
            self.log.display(),
            all[from..].join("\n")
        )
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        self.kill();
    }
}

fn find_prometheus() -> PathBuf {
    let from_path = std::env::var_os("PATH")
        .and_then(|paths| std::env::split_paths(&paths).map(|d| d.join("prometheus")).find(|p| p.is_file()));
    from_path.or_else(|| Some(PathBuf::from("/usr/bin/prometheus")).filter(|p| p.is_file())).unwrap_or_else(|| {
        panic!(
            "prometheus not found on PATH or at /usr/bin/prometheus; this test needs a real \
                 Prometheus: run scripts/ensure-deps.sh (installs the Debian `prometheus` package)"
        )
    })
}

// ------------------------------------------------------------------------------------------------
// HTTP

fn agent() -> ureq::Agent {
    ureq::AgentBuilder::new().timeout_connect(Duration::from_secs(2)).timeout(Duration::from_secs(15)).build()
}

/// (status, body) for any HTTP answer; Err only for transport failures.
fn send(req: ureq::Request, body: Option<&[u8]>) -> Result<(u16, String), String> {
    let res = match body {
        Some(b) => req.send_bytes(b),
        None => req.call(),
    };
    match res {
        Ok(r) => {
            let code = r.status();
            Ok((code, r.into_string().unwrap_or_default()))
        }
        Err(ureq::Error::Status(code, r)) => Ok((code, r.into_string().unwrap_or_default())),
        Err(e) => Err(e.to_string()),
    }
}

struct Live {
    // Drop order = field order: processes first, the directory last.
    node: Proc,
    prom: Proc,
    http: ureq::Agent,
    node_url: String,
    node_target: String,
    prom_url: String,
    storage_root: PathBuf,
    _dir: tempfile::TempDir,
}

impl Live {
    fn fail(&self, msg: impl AsRef<str>) -> ! {
        panic!("{}\n{}\n{}", msg.as_ref(), self.node.log_tail(40), self.prom.log_tail(20));
    }

    fn node_call(&self, method: &str, path: &str, body: Option<&[u8]>) -> (u16, String) {
        let req = self
            .http
            .request(method, &format!("{}{}", self.node_url, path))
            .set("Authorization", &format!("Bearer {API_KEY}"));
        send(req, body).unwrap_or_else(|e| self.fail(format!("{method} {path}: {e}")))
    }

    fn expect_status(&self, method: &str, path: &str, body: Option<&[u8]>, ok: &[u16]) -> String {
        let (code, text) = self.node_call(method, path, body);
        if !ok.contains(&code) {
            self.fail(format!("{method} {path}: status {code}, expected one of {ok:?}; body: {text}"));
        }
        text
    }

    fn prom_get(&self, path: &str, params: &[(&str, &str)]) -> Result<Value, String> {
        let mut req = self.http.get(&format!("{}{}", self.prom_url, path));
        for (k, v) in params {
            req = req.query(k, v);
        }
        let (code, text) = send(req, None)?;
        let v: Value = serde_json::from_str(&text).map_err(|e| format!("HTTP {code}, not JSON ({e}): {text}"))?;
        if v["status"] != "success" {
            return Err(format!("HTTP {code}: {text}"));
        }
        Ok(v)
    }

    /// Instant query → result vector (Err = Prometheus rejected the query).
    fn query(&self, promql: &str) -> Result<Vec<Value>, String> {
        let v = self.prom_get("/api/v1/query", &[("query", promql)])?;
        Ok(v["data"]["result"].as_array().cloned().unwrap_or_default())
    }

    fn firing(&self, alertname: &str) -> Vec<Value> {
        let v = self.prom_get("/api/v1/alerts", &[]).unwrap_or_else(|e| self.fail(format!("/api/v1/alerts: {e}")));
        v["data"]["alerts"]
            .as_array()
            .into_iter()
            .flatten()
            .filter(|a| a["labels"]["alertname"] == alertname && a["state"] == "firing")
            .cloned()
            .collect()
    }

    /// Polls `check` every 500 ms until it returns Ok or WAIT has passed.
    fn wait_for(&mut self, what: &str, mut check: impl FnMut(&mut Self) -> Result<(), String>) {
        let deadline = Instant::now() + WAIT;
        loop {
            let last = match check(self) {
                Ok(()) => return,
                Err(e) => e,
            };
            if Instant::now() > deadline {
                self.fail(format!("timed out after {WAIT:?} waiting for {what}: {last}"));
            }
            sleep(Duration::from_millis(500));
        }
    }
}

fn start(prometheus: &Path) -> Live {
    let dir = tempfile::tempdir().expect("temp dir");
    let storage_root = dir.path().join("data");
    let http = agent();

    // ---- the node
    let port = free_port();
    let node_target = format!("127.0.0.1:{port}");
    let node_url = format!("http://{node_target}");
    let config = format!(
        "server:\n  listen_addr: {listen}\n  protocol: \"http\"\n  external_url: {url}\n\
         auth:\n  api_key_users:\n    {USER}: {key}\n  internal_proxy_secret: \"monitoring-internal-secret-0123\"\n  \
         single_use_link_secret: \"monitoring-link-secret-0123456\"\n\
         backend:\n  default_backend: \"localfs\"\n  localfs_root_path: {root}\n  localfs_fsync: false\n\
         metadata_store:\n  type: \"sqlite\"\n  sqlite_path: {db}\n\
         log:\n  level: \"info\"\n  format: \"json\"\n\
         instance_discovery:\n  instance_id: \"monitoring-node\"\n",
        listen = yaml_str(&node_target),
        url = yaml_str(&node_url),
        key = yaml_str(API_KEY),
        root = yaml_str(&storage_root.to_string_lossy()),
        db = yaml_str(&dir.path().join("callfs.sqlite3").to_string_lossy()),
    );
    let config_path = dir.path().join("callfs.yaml");
    fs::write(&config_path, config).expect("write node config");
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_callfs"));
    cmd.arg("server").arg("--config").arg(&config_path).current_dir(dir.path());
    for (k, _) in std::env::vars_os() {
        if k.to_string_lossy().starts_with("CALLFS_") {
            cmd.env_remove(k); // e.g. CALLFS_TEST_PG_DSN would be read as a config key
        }
    }
    let node = Proc::spawn("callfs", &mut cmd, dir.path().join("node.log"));

    // ---- Prometheus (started only after the node is up, see below)
    let prom_port = free_port();
    let mut live = Live {
        node,
        prom: Proc { name: "prometheus", child: None, log: dir.path().join("prometheus.log") },
        http,
        node_url,
        node_target,
        prom_url: format!("http://127.0.0.1:{prom_port}"),
        storage_root,
        _dir: dir,
    };

    live.wait_for("the node to answer GET /health with 200", |l| {
        if let Some(status) = l.node.exited() {
            l.fail(format!("callfs exited before answering /health ({status})"));
        }
        match send(l.http.get(&format!("{}/health", l.node_url)), None) {
            Ok((200, _)) => Ok(()),
            Ok((code, body)) => Err(format!("status {code}: {body}")),
            Err(e) => Err(e),
        }
    });

    let tmp = live._dir.path().to_path_buf();
    let rules_src = fs::read_to_string(repo_path("cluster/alerts.yml")).expect("read cluster/alerts.yml");
    let rules = tmp.join("alerts.yml");
    fs::write(&rules, rules_for_fast_test(&rules_src)).expect("write test rules");
    let prom_config = format!(
        "global:\n  scrape_interval: 1s\n  scrape_timeout: 1s\n  evaluation_interval: 1s\n\
         rule_files:\n  - {rules}\n\
         scrape_configs:\n  - job_name: callfs\n    metrics_path: /metrics\n    scheme: http\n    \
         static_configs:\n      - targets: [{target}]\n",
        rules = yaml_str(&rules.to_string_lossy()),
        target = yaml_str(&live.node_target),
    );
    let prom_config_path = tmp.join("prometheus.yml");
    fs::write(&prom_config_path, prom_config).expect("write prometheus config");
    let mut cmd = Command::new(prometheus);
    cmd.arg(format!("--config.file={}", prom_config_path.display()))
        .arg(format!("--storage.tsdb.path={}", tmp.join("tsdb").display()))
        .arg(format!("--web.listen-address=127.0.0.1:{prom_port}"))
        .arg("--log.level=warn")
        .current_dir(&tmp);
    live.prom = Proc::spawn("prometheus", &mut cmd, tmp.join("prometheus.log"));

    live.wait_for("Prometheus to be ready", |l| {
        if let Some(status) = l.prom.exited() {
            l.fail(format!("prometheus exited ({status})"));
        }
        match send(l.http.get(&format!("{}/-/ready", l.prom_url)), None) {
            Ok((200, _)) => Ok(()),
            Ok((code, body)) => Err(format!("status {code}: {body}")),
            Err(e) => Err(e),
        }
    });
    live.wait_for("Prometheus to scrape the node (up == 1)", |l| {
        let r = l.query(r#"up{job="callfs"} == 1"#)?;
        if r.is_empty() {
            Err("no successful scrape yet".to_owned())
        } else {
            Ok(())
        }
    });
    live
}

fn generate_load(l: &Live) {
    let created: &[u16] = &[200, 201];
    for i in 0..30 {
        let path = format!("/v1/files/monitoring/load-{i}.txt");
        let body = format!("monitoring payload {i}\n").repeat(i + 1);
        l.expect_status("PUT", &path, Some(body.as_bytes()), created);
        let got = l.expect_status("GET", &path, None, &[200]);
        if got != body {
            l.fail(format!("GET {path} returned {} bytes, expected {}", got.len(), body.len()));
        }
        l.expect_status("HEAD", &path, None, &[200]);
        l.expect_status("PUT", &path, Some(b"overwritten"), &[200]);
        if i % 3 == 0 {
            l.expect_status("DELETE", &path, None, &[204]);
        }
        // 404s: a missing file and a path no route matches
        l.expect_status("GET", &format!("/v1/files/monitoring/missing-{i}.txt"), None, &[404]);
        l.expect_status("GET", "/v1/no-such-route", None, &[404]);
    }
    l.expect_status("POST", "/v1/files/monitoring/posted.txt", Some(b"posted"), &[201]);
    l.expect_status("POST", "/v1/files/monitoring/subdir/", None, &[201]);
    l.expect_status("GET", "/v1/directories/monitoring", None, &[200]);
    l.expect_status("GET", "/v1/files/monitoring", None, &[200]);
}

// ------------------------------------------------------------------------------------------------
// Tests

#[test]
fn dashboards_and_alerts_work_against_real_prometheus() {
    let prometheus = find_prometheus();

    // Collect the dashboard expressions first: a broken dashboard fails before anything starts.
    let mut exprs: Vec<PanelExpr> = Vec::new();
    let mut variables: Vec<(String, String)> = Vec::new(); // (metric, label) of label_values()
    for file in dashboard_files() {
        let d = load_json(&file);
        let name = file.file_name().unwrap_or_default().to_string_lossy().into_owned();
        let mut every = Vec::new();
        all_exprs(&d, &mut every);
        let panels = panel_exprs(&name, &d);
        assert_eq!(every.len(), panels.len(), "{name}: some `expr` is outside the panels");
        exprs.extend(panels);
        for var in d["templating"]["list"].as_array().into_iter().flatten() {
            let q = var["query"]["query"].as_str().or_else(|| var["query"].as_str()).unwrap_or_default();
            if let Some(args) = q.strip_prefix("label_values(").and_then(|r| r.strip_suffix(')')) {
                if let Some((metric, label)) = args.split_once(',') {
                    variables.push((metric.trim().to_owned(), label.trim().to_owned()));
                }
            }
        }
    }
    assert!(!exprs.is_empty(), "no expressions found in the dashboards");

    let mut live = start(&prometheus);
    generate_load(&live);

    // (a) every dashboard expression is accepted; the traffic/latency/backend/metadata panels fill.
    live.wait_for("every dashboard query to succeed and the load-dependent panels to have data", |l| {
        let mut empty = Vec::new();
        for p in &exprs {
            let promql = grafana_to_promql(&p.expr);
            match l.query(&promql) {
                Err(e) => l.fail(format!("{} / {} / {}: query failed: {e}\n  expr: {promql}", p.file, p.row, p.panel)),
                Ok(r) if r.is_empty() && needs_data_after_load(p) => {
                    empty.push(format!("{} / {}: {promql}", p.row, p.panel))
                }
                Ok(_) => {}
            }
        }
        if empty.is_empty() {
            Ok(())
        } else {
            Err(format!("still empty:\n  {}", empty.join("\n  ")))
        }
    });

    eprintln!(
        "monitoring: {} dashboard expressions evaluated, {} with required data",
        exprs.len(),
        exprs.iter().filter(|p| needs_data_after_load(p)).count()
    );

    // the instance (and any other label_values) variable lists the node
    for (metric, label) in &variables {
        let v = live
            .prom_get(&format!("/api/v1/label/{label}/values"), &[("match[]", metric)])
            .unwrap_or_else(|e| live.fail(format!("label_values({metric}, {label}): {e}")));
        let values: BTreeSet<&str> = v["data"].as_array().into_iter().flatten().filter_map(Value::as_str).collect();
        if label == "instance" && !values.contains(live.node_target.as_str()) {
            live.fail(format!("label_values({metric}, instance) = {values:?}, expected {}", live.node_target));
        }
    }

    // every alert rule evaluates without error on real data
    live.wait_for("every alert rule to evaluate cleanly", |l| {
        let v = l.prom_get("/api/v1/rules", &[])?;
        let rules: Vec<&Value> = v["data"]["groups"]
            .as_array()
            .into_iter()
            .flatten()
            .flat_map(|g| g["rules"].as_array().into_iter().flatten())
            .collect();
        if rules.len() < CONTRACT_RULES.len() {
            return Err(format!("only {} rules loaded", rules.len()));
        }
        for r in &rules {
            if r["health"] == "err" {
                l.fail(format!("rule {} fails to evaluate: {}", r["name"], r["lastError"]));
            }
            if r["health"] != "ok" {
                return Err(format!("rule {} health {}", r["name"], r["health"]));
            }
        }
        Ok(())
    });

    // (b) make uploads fail with 500: the storage root becomes a regular file (chmod is no use
    // when the node runs as root).
    fs::remove_dir_all(&live.storage_root).expect("remove the storage root");
    fs::write(&live.storage_root, b"not a directory any more\n").expect("put a file at the storage root");
    let mut n = 0u32;
    live.wait_for("CallFSHighErrorRate and CallFSBackendFailure to fire", |l| {
        for _ in 0..10 {
            n += 1;
            let path = format!("/v1/files/broken/upload-{n}.txt");
            let (code, body) = l.node_call("PUT", &path, Some(b"this cannot be stored"));
            if code < 500 {
                l.fail(format!(
                    "PUT {path} with the storage root replaced by a file: status {code}, expected 5xx; body: {body}"
                ));
            }
        }
        let high = l.firing("CallFSHighErrorRate");
        let backend = l.firing("CallFSBackendFailure");
        match (high.is_empty(), backend.is_empty()) {
            (false, false) => Ok(()),
            _ => Err(format!(
                "CallFSHighErrorRate firing: {}, CallFSBackendFailure firing: {}",
                !high.is_empty(),
                !backend.is_empty()
            )),
        }
    });
    let backend = live.firing("CallFSBackendFailure");
    if !backend
        .iter()
        .any(|a| a["labels"]["backend_type"] == "localfs" && a["labels"]["instance"] == live.node_target.as_str())
    {
        live.fail(format!(
            "CallFSBackendFailure fired without backend_type=localfs / instance={}: {backend:?}",
            live.node_target
        ));
    }
    for p in exprs.iter().filter(|p| needs_data_after_errors(p)) {
        let promql = grafana_to_promql(&p.expr);
        match live.query(&promql) {
            Ok(r) if !r.is_empty() => {}
            other => {
                live.fail(format!("{} / {}: no data while uploads fail ({other:?})\n  expr: {promql}", p.row, p.panel))
            }
        }
    }

    eprintln!("monitoring: CallFSHighErrorRate and CallFSBackendFailure fired after {n} failing uploads");

    // kill the node; the scrape fails and CallFSServiceDown fires for exactly that target
    live.node.kill();
    live.wait_for("CallFSServiceDown to fire after the node was killed", |l| {
        let down = l.firing("CallFSServiceDown");
        if down.iter().any(|a| a["labels"]["instance"] == l.node_target.as_str() && a["labels"]["job"] == "callfs") {
            Ok(())
        } else {
            Err(format!("firing: {down:?}"))
        }
    });
    eprintln!("monitoring: CallFSServiceDown fired for {}", live.node_target);
}

#[test]
fn dashboards_are_well_formed() {
    for file in dashboard_files() {
        let name = file.display().to_string();
        let d = load_json(&file);
        let schema = d["schemaVersion"].as_i64().unwrap_or(0);
        assert!(schema >= 36, "{name}: schemaVersion {schema} < 36");
        assert!(d["uid"].as_str().is_some_and(|u| !u.is_empty()), "{name}: missing uid");

        // variables: a datasource variable and a multi-select, all-capable instance variable
        let vars = d["templating"]["list"].as_array().cloned().unwrap_or_default();
        let ds_var = vars
            .iter()
            .find(|v| v["type"] == "datasource" && v["query"] == "prometheus")
            .unwrap_or_else(|| panic!("{name}: no datasource variable of type prometheus"));
        let ds_ref = format!("${{{}}}", ds_var["name"].as_str().unwrap_or_default());
        let inst =
            vars.iter().find(|v| v["name"] == "instance").unwrap_or_else(|| panic!("{name}: no `instance` variable"));
        let q = inst["query"]["query"].as_str().or_else(|| inst["query"].as_str()).unwrap_or_default();
        assert_eq!(q, "label_values(callfs_build_info, instance)", "{name}: instance variable query");
        assert_eq!(inst["multi"], true, "{name}: instance variable must be multi-select");
        assert_eq!(inst["includeAll"], true, "{name}: instance variable must include All");

        // panels: unique ids, grid positions inside 24 columns, datasource variable, $instance
        let mut all = Vec::new();
        for p in d["panels"].as_array().into_iter().flatten() {
            all.push(p.clone());
            all.extend(p["panels"].as_array().cloned().unwrap_or_default());
        }
        let mut ids = BTreeSet::new();
        let mut rows = Vec::new();
        for p in &all {
            let title = p["title"].as_str().unwrap_or_default();
            let id = p["id"].as_i64().unwrap_or_else(|| panic!("{name}: panel {title:?} has no numeric id"));
            assert!(ids.insert(id), "{name}: duplicate panel id {id}");
            let g = &p["gridPos"];
            let [h, w, x, y] = ["h", "w", "x", "y"]
                .map(|k| g[k].as_i64().unwrap_or_else(|| panic!("{name}: panel {title:?} gridPos.{k} missing")));
            assert!(h > 0 && w > 0 && x >= 0 && y >= 0 && x + w <= 24, "{name}: panel {title:?} gridPos {g}");
            if p["type"] == "row" {
                rows.push(title.to_owned());
                continue;
            }
            assert_eq!(p["datasource"]["uid"], ds_ref.as_str(), "{name}: panel {title:?} datasource");
            let targets = p["targets"].as_array().cloned().unwrap_or_default();
            assert!(!targets.is_empty(), "{name}: panel {title:?} has no queries");
            for t in targets {
                let expr = t["expr"].as_str().unwrap_or_else(|| panic!("{name}: panel {title:?} target without expr"));
                assert!(
                    expr.contains(r#"instance=~"$instance""#),
                    "{name}: panel {title:?}: expression lacks the $instance filter: {expr}"
                );
            }
        }
        assert_eq!(rows, REQUIRED_ROWS, "{name}: rows");
    }
}

#[test]
fn alert_file_keeps_the_contract_rules() {
    let text = fs::read_to_string(repo_path("cluster/alerts.yml")).expect("read cluster/alerts.yml");
    for (name, expr) in CONTRACT_RULES {
        let rule = format!("- alert: {name}\n    expr: {expr}\n");
        assert!(text.contains(&rule), "cluster/alerts.yml: rule {name} must read exactly:\n{rule}");
    }
}

#[test]
fn fast_rule_rewrite() {
    let src = "groups:\n- name: g\n  rules:\n  - alert: A\n    expr: sum(rate(x{a=~\"[0-9]\"}[5m])) / sum(rate(x[10m])) > 0.05\n    for: 10m\n  - alert: B\n    expr: |\n      increase(y[1h]) > 2 and z[2d] offset 5m\n    for: 0m\n";
    let want = "groups:\n- name: g\n  rules:\n  - alert: A\n    expr: sum(rate(x{a=~\"[0-9]\"}[30s])) / sum(rate(x[30s])) > 0.05\n    for: 5s\n  - alert: B\n    expr: |\n      increase(y[30s]) > 2 and z[30s] offset 5m\n    for: 0s\n";
    assert_eq!(rules_for_fast_test(src), want);

    // the real file: nothing slower than 5s and no minute-long windows are left
    let real = fs::read_to_string(repo_path("cluster/alerts.yml")).expect("read cluster/alerts.yml");
    let fast = rules_for_fast_test(&real);
    assert_eq!(fast.matches("- alert:").count(), real.matches("- alert:").count());
    for line in fast.lines() {
        let t = line.trim();
        if t.starts_with("for:") {
            assert!(t == "for: 5s" || t == "for: 0s", "{line}");
        }
        assert!(!t.contains("m])") && !t.contains("m]))"), "window left: {line}");
    }
}
