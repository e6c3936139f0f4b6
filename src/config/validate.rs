//! Validation rules 1–33 of `config.md` §4 and the start-up warnings. Every failure is reported, each
//! message starting with the full key path. Keys and secrets are never printed.

use std::collections::BTreeMap;
use std::net::{IpAddr, Ipv6Addr};
use std::time::Duration;

use super::{Config, PLACEHOLDER_API_KEY, PLACEHOLDER_INTERNAL_PROXY_SECRET, PLACEHOLDER_LINK_SECRET};

const MIN_SECRET_LEN: usize = 16;

/// Checks `cfg` (normalised first, on a copy) and returns `(errors, warnings)`.
///
/// Pure apart from one check: `backend.internal_proxy_ca_file`, when set, must be readable.
pub fn validate(cfg: &Config) -> (Vec<String>, Vec<String>) {
    let mut c = cfg.clone();
    c.normalize();
    let mut v = Report::default();
    server(&c, &mut v);
    auth(&c, &mut v);
    log_and_metrics(&c, &mut v);
    backend(&c, &mut v);
    stores(&c, &mut v);
    discovery(&c, &mut v);
    rate_limit(&c, &mut v);
    later_features(&c, &mut v);
    (v.errors, v.warnings)
}

#[derive(Default)]
struct Report {
    errors: Vec<String>,
    warnings: Vec<String>,
}

impl Report {
    fn error(&mut self, msg: impl Into<String>) {
        self.errors.push(msg.into());
    }
    fn warn(&mut self, msg: impl Into<String>) {
        self.warnings.push(msg.into());
    }
}

fn server(c: &Config, v: &mut Report) {
    let s = &c.server;
    // Rule 1.
    if s.listen_addr.trim().is_empty() {
        v.error("server.listen_addr: required");
    } else if !is_host_port(&s.listen_addr) {
        v.error("server.listen_addr: not a valid host:port");
    }
    // Rule 2.
    let protocol_ok = matches!(s.protocol.as_str(), "http" | "https" | "auto");
    if !protocol_ok {
        v.error("server.protocol: expected http, https or auto");
    }
    // Rule 3.
    if s.protocol == "https" && (s.cert_file.trim().is_empty() || s.key_file.trim().is_empty()) {
        v.error("server.cert_file, server.key_file: both required for protocol https");
    }
    // Rule 4.
    for (key, value) in [
        ("read_timeout", s.read_timeout),
        ("write_timeout", s.write_timeout),
        ("idle_timeout", s.idle_timeout),
        ("file_op_timeout", s.file_op_timeout),
        ("metadata_op_timeout", s.metadata_op_timeout),
    ] {
        if value.is_zero() {
            v.error(format!("server.{key}: must be positive"));
        }
    }
    if s.max_upload_bytes == 0 {
        v.error("server.max_upload_bytes: must be positive");
    }
    if s.max_header_bytes < 4096 {
        v.error("server.max_header_bytes: must be at least 4096");
    }
    // Rule 5.
    if let Some((scheme, _)) = s.external_url.trim().split_once("://") {
        if !scheme.eq_ignore_ascii_case("http") && !scheme.eq_ignore_ascii_case("https") {
            v.error("server.external_url: scheme must be http or https");
        }
    }
    // Rule 6.
    for entry in &s.trusted_proxies {
        let t = entry.trim();
        if t.parse::<IpAddr>().is_err() && t.parse::<ipnet::IpNet>().is_err() {
            v.error(format!("server.trusted_proxies: \"{}\" is not an IP address or CIDR", entry.escape_debug()));
        }
    }
}

fn auth(c: &Config, v: &mut Report) {
    let a = &c.auth;
    // Rule 7.
    if a.api_keys.is_empty() && a.api_key_users.is_empty() {
        v.error("auth: no API keys configured (set auth.api_key_users or auth.api_keys)");
    }
    // Every key with the name of its entry, named users first (the order of `Config::identities`).
    let entries: Vec<(String, &str)> = a
        .api_key_users
        .iter()
        .map(|(id, key)| (format!("auth.api_key_users.{}", id.escape_debug()), key.as_str()))
        .chain(a.api_keys.iter().enumerate().map(|(i, key)| (format!("auth.api_keys[{i}]"), key.as_str())))
        .collect();
    // Rule 8.
    for (entry, key) in &entries {
        if *key == PLACEHOLDER_API_KEY {
            v.error(format!("{entry}: placeholder key not allowed"));
        } else if key.chars().count() < MIN_SECRET_LEN {
            v.error(format!("{entry}: key shorter than {MIN_SECRET_LEN} characters"));
        }
    }
    // Rules 9 and 10.
    for id in a.api_key_users.keys() {
        if !is_valid_user_id(id) {
            v.error(format!(
                "auth.api_key_users: empty or invalid user id \"{}\" (non-blank, at most 128 bytes, no whitespace or control characters)",
                id.escape_debug()
            ));
        } else if is_reserved_user_id(id) {
            v.error(format!("auth.api_key_users.{id}: user id is reserved"));
        }
    }
    // Rule 11.
    let mut first_use: BTreeMap<&str, &str> = BTreeMap::new();
    for (entry, key) in &entries {
        match first_use.get(key) {
            Some(other) => v.error(format!("{entry}: key already used by {other}")),
            None => {
                first_use.insert(*key, entry.as_str());
            }
        }
    }
    // Rule 12.
    let internal = a.internal_proxy_secret.as_str();
    if internal.trim().is_empty() || internal == PLACEHOLDER_INTERNAL_PROXY_SECRET {
        v.error("auth.internal_proxy_secret: missing or placeholder value");
    } else {
        // Rule 13.
        if first_use.contains_key(internal) {
            v.error("auth.internal_proxy_secret: same value as an API key");
        }
        if internal.chars().count() < MIN_SECRET_LEN {
            v.warn(format!("auth.internal_proxy_secret: shorter than {MIN_SECRET_LEN} characters"));
        }
    }
    // Rule 14.
    let link = a.single_use_link_secret.as_str();
    if link.trim().is_empty() || link == PLACEHOLDER_LINK_SECRET {
        v.error("auth.single_use_link_secret: missing or placeholder value");
    } else if link.chars().count() < MIN_SECRET_LEN {
        v.warn(format!("auth.single_use_link_secret: shorter than {MIN_SECRET_LEN} characters"));
    }
    if !a.api_keys.is_empty() {
        v.warn(format!(
            "auth.api_keys: {} legacy positional key(s) in use; their user ids (api-user-<index>) change when the list is reordered, prefer auth.api_key_users",
            a.api_keys.len()
        ));
    }
}

fn log_and_metrics(c: &Config, v: &mut Report) {
    // Rule 15.
    if !matches!(c.log.level.as_str(), "debug" | "info" | "warn" | "error") {
        v.error("log.level: expected debug, info, warn or error");
    }
    if !matches!(c.log.format.as_str(), "json" | "console") {
        v.error("log.format: expected json or console");
    }
    // Rule 16.
    let m = c.metrics.listen_addr.trim();
    if !m.is_empty() {
        if !is_host_port(m) {
            v.error("metrics.listen_addr: not a valid host:port");
        } else if same_listener(m, &c.server.listen_addr) {
            v.error("metrics.listen_addr: same address as server.listen_addr");
        }
    }
}

fn backend(c: &Config, v: &mut Report) {
    let b = &c.backend;
    // Rule 17.
    let default_backend = b.default_backend.as_str();
    if !matches!(default_backend, "localfs" | "s3") {
        v.error(format!("backend.default_backend: expected localfs or s3, got \"{}\"", default_backend.escape_debug()));
    }
    // Rule 18.
    if default_backend == "localfs" && b.localfs_root_path.trim().is_empty() {
        v.error("backend.localfs_root_path: required when default_backend is localfs");
    }
    // Rule 19.
    if default_backend == "s3" && b.s3_bucket_name.trim().is_empty() {
        v.error("backend.s3_bucket_name: required when default_backend is s3");
    }
    // Rule 20.
    if !matches!(b.s3_server_side_encryption.as_str(), "" | "AES256" | "aws:kms") {
        v.error("backend.s3_server_side_encryption: expected \"\", AES256 or aws:kms");
    }
    // Rule 21.
    for (key, value) in [
        ("internal_proxy_connect_timeout", b.internal_proxy_connect_timeout),
        ("internal_proxy_timeout", b.internal_proxy_timeout),
    ] {
        if value.is_zero() {
            v.error(format!("backend.{key}: must be positive"));
        }
    }
    if !b.internal_proxy_ca_file.is_empty() {
        if let Err(e) = std::fs::read(&b.internal_proxy_ca_file) {
            v.error(format!("backend.internal_proxy_ca_file: cannot read {}: {e}", b.internal_proxy_ca_file));
        }
    }
    if b.internal_proxy_skip_tls_verify {
        v.warn("backend.internal_proxy_skip_tls_verify: peer TLS certificates are not verified (test setups only)");
    }
}

fn stores(c: &Config, v: &mut Report) {
    let m = &c.metadata_store;
    // Rule 22.
    match m.kind.as_str() {
        "sqlite" | "postgres" => {}
        "redis" | "raft" => {
            v.error(format!("metadata_store.type: {} is not supported; use postgres for a cluster", m.kind))
        }
        _ => v.error("metadata_store.type: expected sqlite or postgres"),
    }
    // Rule 23.
    if m.kind == "postgres" && m.dsn.trim().is_empty() {
        v.error("metadata_store.dsn: required when type is postgres");
    }
    if m.kind == "sqlite" && m.sqlite_path.trim().is_empty() {
        v.error("metadata_store.sqlite_path: required when type is sqlite");
    }
    let d = &c.dlm;
    // Rule 24.
    match d.kind.as_str() {
        "local" | "postgres" => {}
        "redis" => v.error("dlm.type: redis is not supported; use postgres"),
        _ => v.error("dlm.type: expected local or postgres"),
    }
    // Rule 25.
    if d.kind == "postgres" && d.dsn.trim().is_empty() && m.kind != "postgres" {
        v.error("dlm.dsn: required when dlm.type is postgres and metadata_store.type is not postgres");
    }
    // Rule 26 (acquire_timeout >= 0 holds by type: negative durations fail to load).
    if d.lease_ttl < Duration::from_secs(1) {
        v.error("dlm.lease_ttl: must be at least 1s");
    }
    let peers = !c.instance_discovery.peer_endpoints.is_empty();
    if peers && d.kind == "local" {
        v.warn("dlm.type: local locks are per node while instance_discovery.peer_endpoints is set; use postgres for a cluster");
    }
    if peers && m.kind == "sqlite" {
        v.warn("metadata_store.type: sqlite is a single-node store but instance_discovery.peer_endpoints is set; use postgres for a cluster");
    }
}

fn discovery(c: &Config, v: &mut Report) {
    let d = &c.instance_discovery;
    // Rule 27.
    if d.instance_id.is_empty() {
        v.error("instance_discovery.instance_id: required");
    } else if !is_instance_id(&d.instance_id) {
        v.error("instance_discovery.instance_id: invalid characters (expected 1-100 of A-Z a-z 0-9 . _ -)");
    }
    // Rule 28.
    for (id, endpoint) in &d.peer_endpoints {
        let key = format!("instance_discovery.peer_endpoints.{}", id.escape_debug());
        if !is_instance_id(id) {
            v.error(format!("{key}: invalid peer id (expected 1-100 of A-Z a-z 0-9 . _ -)"));
        } else if *id == d.instance_id {
            v.error(format!("{key}: peer id equals instance_discovery.instance_id"));
        }
        match check_endpoint(endpoint) {
            Err(problem) => v.error(format!("{key}: {problem}")),
            Ok(Scheme::Http) => {
                v.warn(format!("{key}: plain http endpoint; the internal proxy secret travels unencrypted"))
            }
            Ok(Scheme::Https) => {}
        }
    }
    // Rule 29.
    if d.health_probe_interval < Duration::from_secs(1) {
        v.error("instance_discovery.health_probe_interval: must be at least 1s");
    }
}

fn rate_limit(c: &Config, v: &mut Report) {
    let r = &c.rate_limit;
    // Rule 30.
    for (name, rate, burst) in [
        ("links", r.links_per_second, r.links_burst),
        ("downloads", r.downloads_per_second, r.downloads_burst),
        ("api", r.api_per_second, r.api_burst),
    ] {
        if rate < 0.0 || rate.is_nan() {
            v.error(format!("rate_limit.{name}_per_second: must not be negative"));
        }
        if burst < 0 {
            v.error(format!("rate_limit.{name}_burst: must not be negative"));
        } else if rate > 0.0 && burst < 1 {
            v.error(format!("rate_limit.{name}_burst: must be at least 1 when {name}_per_second is positive"));
        }
    }
}

fn later_features(c: &Config, v: &mut Report) {
    // Rule 31.
    if c.ha.replication_enabled {
        if !matches!(c.ha.replica_backend.as_str(), "localfs" | "s3") {
            v.error("ha.replica_backend: expected localfs or s3 when replication is enabled");
        }
        v.warn("ha.replication_enabled: replication is not available in this version; ignored");
    }
    // Rule 32.
    if c.erasure.enabled {
        if u64::from(c.erasure.data_shards) + u64::from(c.erasure.parity_shards) > 256 {
            v.error("erasure: data_shards + parity_shards exceeds 256");
        }
        v.warn("erasure.enabled: erasure coding is not available in this version; ignored");
    }
    // Rule 33.
    let s = &c.server;
    if s.enable_quic {
        if s.cert_file.trim().is_empty() || s.key_file.trim().is_empty() {
            v.error("server.cert_file, server.key_file: both required when enable_quic is true");
        }
        if s.quic_listen_addr.trim().is_empty() {
            v.error("server.quic_listen_addr: required when enable_quic is true");
        }
        v.warn("server.enable_quic: HTTP/3 is not available in this version; ignored");
    }
}

/// `[host]:port`: host empty, a name, an IPv4 address or a bracketed IPv6 address; port 0–65535.
pub(crate) fn is_host_port(addr: &str) -> bool {
    let addr = addr.trim();
    let Some((host, port)) = addr.rsplit_once(':') else {
        return false;
    };
    is_port(port) && is_host(host, true)
}

/// Whether two `[host]:port` listeners would collide: same port and the same host, or either on all
/// interfaces (empty host, `0.0.0.0`, `[::]`).
fn same_listener(a: &str, b: &str) -> bool {
    let (Some((host_a, port_a)), Some((host_b, port_b))) = (a.trim().rsplit_once(':'), b.trim().rsplit_once(':'))
    else {
        return false;
    };
    let any = |h: &str| matches!(h, "" | "0.0.0.0" | "[::]");
    port_a.parse::<u16>().ok() == port_b.parse::<u16>().ok()
        && (host_a.eq_ignore_ascii_case(host_b) || any(host_a) || any(host_b))
}

fn is_port(port: &str) -> bool {
    !port.is_empty() && port.len() <= 5 && port.bytes().all(|b| b.is_ascii_digit()) && port.parse::<u16>().is_ok()
}

fn is_host(host: &str, allow_empty: bool) -> bool {
    if host.is_empty() {
        return allow_empty;
    }
    if let Some(inner) = host.strip_prefix('[') {
        return inner.strip_suffix(']').is_some_and(|ip| ip.parse::<Ipv6Addr>().is_ok());
    }
    host.bytes().all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_'))
}

enum Scheme {
    Http,
    Https,
}

/// An absolute `http(s)://host[:port][/path]` URL without query or fragment.
fn check_endpoint(url: &str) -> Result<Scheme, String> {
    const NOT_ABSOLUTE: &str = "endpoint must be an absolute http or https URL";
    if url.trim().is_empty() {
        return Err("endpoint required".to_string());
    }
    let (scheme, rest) = url.split_once("://").ok_or(NOT_ABSOLUTE)?;
    let scheme = if scheme.eq_ignore_ascii_case("http") {
        Scheme::Http
    } else if scheme.eq_ignore_ascii_case("https") {
        Scheme::Https
    } else {
        return Err(NOT_ABSOLUTE.to_string());
    };
    if rest.contains(['?', '#']) {
        return Err("endpoint must not contain a query or fragment".to_string());
    }
    if rest.chars().any(|ch| ch.is_whitespace() || ch.is_control()) {
        return Err(NOT_ABSOLUTE.to_string());
    }
    let authority = rest.split('/').next().unwrap_or("");
    let host_ok = if authority.ends_with(']') {
        is_host(authority, false)
    } else {
        match authority.rsplit_once(':') {
            Some((host, port)) => is_port(port) && is_host(host, false),
            None => is_host(authority, false),
        }
    };
    if !host_ok {
        return Err(NOT_ABSOLUTE.to_string());
    }
    Ok(scheme)
}

/// `^[A-Za-z0-9._-]{1,100}$`.
fn is_instance_id(id: &str) -> bool {
    (1..=100).contains(&id.len()) && id.bytes().all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-'))
}

/// Non-blank, at most 128 bytes, no whitespace or control characters.
fn is_valid_user_id(id: &str) -> bool {
    !id.is_empty() && id.len() <= 128 && !id.chars().any(|ch| ch.is_whitespace() || ch.is_control())
}

/// `root`, `internal-proxy`, or `api-user-<digits>`.
fn is_reserved_user_id(id: &str) -> bool {
    id == "root"
        || id == "internal-proxy"
        || id.strip_prefix("api-user-").is_some_and(|n| !n.is_empty() && n.bytes().all(|b| b.is_ascii_digit()))
}

#[cfg(test)]
mod tests {
    use super::*;

    const KEY_A: &str = "alice-key-0123456789";
    const KEY_B: &str = "bob-key-0123456789ab";

    /// A configuration that passes every rule without warnings.
    fn valid() -> Config {
        let mut c = Config::default();
        c.server.listen_addr = "127.0.0.1:8443".into();
        c.server.protocol = "http".into();
        c.server.external_url = "http://127.0.0.1:8443".into();
        c.auth.api_key_users.insert("alice".into(), KEY_A.into());
        c.auth.internal_proxy_secret = "internal-secret-0123456".into();
        c.auth.single_use_link_secret = "link-secret-0123456789".into();
        c.backend.localfs_root_path = "./data".into();
        c.instance_discovery.instance_id = "node-1".into();
        c
    }

    fn errors(c: &Config) -> Vec<String> {
        validate(c).0
    }

    fn warnings(c: &Config) -> Vec<String> {
        validate(c).1
    }

    /// Exactly one error, starting with `prefix`.
    #[track_caller]
    fn assert_one_error(c: &Config, prefix: &str) {
        let errs = errors(c);
        assert_eq!(errs.len(), 1, "expected one error starting with {prefix:?}, got {errs:?}");
        assert!(errs[0].starts_with(prefix), "expected {prefix:?}, got {:?}", errs[0]);
    }

    #[test]
    fn valid_config_has_no_errors_or_warnings() {
        assert_eq!(validate(&valid()), (vec![], vec![]));
    }

    #[test]
    fn defaults_fail_on_keys_and_placeholders() {
        let errs = errors(&Config::default());
        assert!(errs.iter().any(|e| e.starts_with("auth: no API keys configured")), "{errs:?}");
        assert!(errs.iter().any(|e| e.starts_with("auth.internal_proxy_secret: missing or placeholder value")));
        assert!(errs.iter().any(|e| e.starts_with("auth.single_use_link_secret: missing or placeholder value")));
        assert_eq!(errs.len(), 3, "{errs:?}");
    }

    #[test]
    fn rule_01_listen_addr() {
        let mut c = valid();
        c.server.listen_addr = String::new();
        assert_one_error(&c, "server.listen_addr: required");
        for bad in ["8443", "host:", "host:99999", "a b:80", "::1:80", "[::1:80", "host:8x"] {
            c.server.listen_addr = bad.into();
            assert_one_error(&c, "server.listen_addr: not a valid host:port");
        }
        for good in [":8443", "0.0.0.0:1", "[::]:8443", "[::1]:80", "localhost:0", "my-host.example:443"] {
            c.server.listen_addr = good.into();
            assert!(errors(&c).is_empty(), "{good}");
        }
    }

    #[test]
    fn rule_02_protocol() {
        let mut c = valid();
        c.server.protocol = "ftp".into();
        assert_one_error(&c, "server.protocol: expected http, https or auto");
        c.server.protocol = "AUTO".into();
        assert!(errors(&c).is_empty());
    }

    #[test]
    fn rule_03_https_needs_cert_and_key() {
        let mut c = valid();
        c.server.protocol = "https".into();
        assert!(errors(&c).is_empty());
        c.server.key_file = String::new();
        assert_one_error(&c, "server.cert_file, server.key_file: both required for protocol https");
        c.server.protocol = "http".into();
        assert!(errors(&c).is_empty());
    }

    #[test]
    fn rule_04_server_limits() {
        for key in ["read_timeout", "write_timeout", "idle_timeout", "file_op_timeout", "metadata_op_timeout"] {
            let mut c = valid();
            match key {
                "read_timeout" => c.server.read_timeout = Duration::ZERO,
                "write_timeout" => c.server.write_timeout = Duration::ZERO,
                "idle_timeout" => c.server.idle_timeout = Duration::ZERO,
                "file_op_timeout" => c.server.file_op_timeout = Duration::ZERO,
                _ => c.server.metadata_op_timeout = Duration::ZERO,
            }
            assert_one_error(&c, &format!("server.{key}: must be positive"));
        }
        let mut c = valid();
        c.server.max_upload_bytes = 0;
        assert_one_error(&c, "server.max_upload_bytes: must be positive");
        let mut c = valid();
        c.server.max_header_bytes = 4095;
        assert_one_error(&c, "server.max_header_bytes: must be at least 4096");
        c.server.max_header_bytes = 4096;
        assert!(errors(&c).is_empty());
    }

    #[test]
    fn rule_05_external_url_scheme() {
        let mut c = valid();
        c.server.external_url = "ftp://example.com".into();
        assert_one_error(&c, "server.external_url: scheme must be http or https");
        c.server.external_url = "example.com:8443".into();
        assert!(errors(&c).is_empty());
    }

    #[test]
    fn rule_06_trusted_proxies() {
        let mut c = valid();
        c.server.trusted_proxies = vec!["10.0.0.1".into(), "10.0.0.0/8".into(), "::1".into(), "fd00::/8".into()];
        assert!(errors(&c).is_empty());
        c.server.trusted_proxies.push("proxy.local".into());
        assert_one_error(&c, "server.trusted_proxies: \"proxy.local\" is not an IP address or CIDR");
    }

    #[test]
    fn rule_07_needs_a_key() {
        let mut c = valid();
        c.auth.api_key_users.clear();
        assert_one_error(&c, "auth: no API keys configured (set auth.api_key_users or auth.api_keys)");
    }

    #[test]
    fn rule_08_key_length_and_placeholder() {
        let mut c = valid();
        c.auth.api_keys = vec!["short".into()];
        let errs = errors(&c);
        assert!(errs.iter().any(|e| e.starts_with("auth.api_keys[0]: key shorter than 16 characters")), "{errs:?}");
        assert!(!errs.iter().any(|e| e.contains("short\"") || e.contains(": short")), "key printed: {errs:?}");
        let mut c = valid();
        c.auth.api_key_users.insert("bob".into(), "default-api-key".into());
        assert_one_error(&c, "auth.api_key_users.bob: placeholder key not allowed");
        let mut c = valid();
        c.auth.api_key_users.insert("carol".into(), "fifteen-chars15".into());
        assert_one_error(&c, "auth.api_key_users.carol: key shorter than 16 characters");
    }

    #[test]
    fn rule_09_user_id_shape() {
        for bad in ["", " ", "a b", "tab\there", &"x".repeat(129)] {
            let mut c = valid();
            c.auth.api_key_users.insert(bad.to_string(), KEY_B.into());
            assert_one_error(&c, "auth.api_key_users: empty or invalid user id");
        }
        let mut c = valid();
        c.auth.api_key_users.insert("x".repeat(128), KEY_B.into());
        assert!(errors(&c).is_empty());
    }

    #[test]
    fn rule_10_reserved_user_ids() {
        for id in ["root", "internal-proxy", "api-user-0", "api-user-17"] {
            let mut c = valid();
            c.auth.api_key_users.insert(id.into(), KEY_B.into());
            assert_one_error(&c, &format!("auth.api_key_users.{id}: user id is reserved"));
        }
        let mut c = valid();
        c.auth.api_key_users.insert("api-user-x".into(), KEY_B.into());
        assert!(errors(&c).is_empty());
    }

    #[test]
    fn rule_11_duplicate_keys_name_the_other_entry() {
        let mut c = valid();
        c.auth.api_key_users.insert("bob".into(), KEY_A.into());
        assert_one_error(&c, "auth.api_key_users.bob: key already used by auth.api_key_users.alice");
        assert!(!errors(&c)[0].contains(KEY_A));
        let mut c = valid();
        c.auth.api_keys = vec![KEY_B.into(), KEY_A.into()];
        let errs = errors(&c);
        assert_eq!(errs, ["auth.api_keys[1]: key already used by auth.api_key_users.alice"]);
    }

    #[test]
    fn rule_12_internal_secret_required() {
        let mut c = valid();
        c.auth.internal_proxy_secret = String::new();
        assert_one_error(&c, "auth.internal_proxy_secret: missing or placeholder value");
        c.auth.internal_proxy_secret = "change-me-internal-secret".into();
        assert_one_error(&c, "auth.internal_proxy_secret: missing or placeholder value");
    }

    #[test]
    fn rule_13_internal_secret_not_an_api_key() {
        let mut c = valid();
        c.auth.internal_proxy_secret = KEY_A.into();
        assert_one_error(&c, "auth.internal_proxy_secret: same value as an API key");
    }

    #[test]
    fn rule_14_link_secret_required() {
        let mut c = valid();
        c.auth.single_use_link_secret = "change-me-link-secret".into();
        assert_one_error(&c, "auth.single_use_link_secret: missing or placeholder value");
        c.auth.single_use_link_secret = " ".into();
        assert_one_error(&c, "auth.single_use_link_secret: missing or placeholder value");
    }

    #[test]
    fn rule_15_log_level_and_format() {
        let mut c = valid();
        c.log.level = "trace".into();
        assert_one_error(&c, "log.level: expected debug, info, warn or error");
        let mut c = valid();
        c.log.format = "text".into();
        assert_one_error(&c, "log.format: expected json or console");
        let mut c = valid();
        c.log.level = "ERROR".into();
        c.log.format = "console".into();
        assert!(errors(&c).is_empty());
    }

    #[test]
    fn rule_16_metrics_listen_addr() {
        let mut c = valid();
        c.metrics.listen_addr = "nope".into();
        assert_one_error(&c, "metrics.listen_addr: not a valid host:port");
        c.metrics.listen_addr = "127.0.0.1:8443".into();
        assert_one_error(&c, "metrics.listen_addr: same address as server.listen_addr");
        c.server.listen_addr = ":9000".into();
        c.metrics.listen_addr = "0.0.0.0:9000".into();
        assert_one_error(&c, "metrics.listen_addr: same address as server.listen_addr");
        c.metrics.listen_addr = "127.0.0.1:9000".into();
        assert_one_error(&c, "metrics.listen_addr: same address as server.listen_addr");
        c.server.listen_addr = "10.0.0.1:9000".into();
        assert!(errors(&c).is_empty());
        c.metrics.listen_addr = ":9090".into();
        assert!(errors(&c).is_empty());
    }

    #[test]
    fn rule_17_default_backend() {
        let mut c = valid();
        c.backend.default_backend = "gcs".into();
        assert_one_error(&c, "backend.default_backend: expected localfs or s3, got \"gcs\"");
    }

    #[test]
    fn rule_18_localfs_root_required() {
        let mut c = valid();
        c.backend.localfs_root_path = String::new();
        assert_one_error(&c, "backend.localfs_root_path: required when default_backend is localfs");
    }

    #[test]
    fn rule_19_s3_bucket_required() {
        let mut c = valid();
        c.backend.default_backend = "s3".into();
        assert_one_error(&c, "backend.s3_bucket_name: required when default_backend is s3");
        c.backend.s3_bucket_name = "bucket".into();
        assert!(errors(&c).is_empty());
    }

    #[test]
    fn rule_20_server_side_encryption() {
        let mut c = valid();
        c.backend.s3_server_side_encryption = "aes256".into();
        assert_one_error(&c, "backend.s3_server_side_encryption: expected \"\", AES256 or aws:kms");
        for ok in ["", "AES256", "aws:kms"] {
            c.backend.s3_server_side_encryption = ok.into();
            assert!(errors(&c).is_empty(), "{ok}");
        }
    }

    #[test]
    fn rule_21_proxy_timeouts_and_ca_file() {
        let mut c = valid();
        c.backend.internal_proxy_connect_timeout = Duration::ZERO;
        assert_one_error(&c, "backend.internal_proxy_connect_timeout: must be positive");
        let mut c = valid();
        c.backend.internal_proxy_timeout = Duration::ZERO;
        assert_one_error(&c, "backend.internal_proxy_timeout: must be positive");
        let mut c = valid();
        c.backend.internal_proxy_ca_file = "/nonexistent/ca.pem".into();
        assert_one_error(&c, "backend.internal_proxy_ca_file: cannot read /nonexistent/ca.pem");
        let dir = tempfile::tempdir().unwrap();
        let ca = dir.path().join("ca.pem");
        std::fs::write(&ca, "pem").unwrap();
        c.backend.internal_proxy_ca_file = ca.to_string_lossy().into_owned();
        assert!(errors(&c).is_empty());
    }

    #[test]
    fn rule_22_metadata_store_type() {
        let mut c = valid();
        c.metadata_store.kind = "mysql".into();
        assert_one_error(&c, "metadata_store.type: expected sqlite or postgres");
        for dropped in ["redis", "raft"] {
            c.metadata_store.kind = dropped.into();
            assert_one_error(
                &c,
                &format!("metadata_store.type: {dropped} is not supported; use postgres for a cluster"),
            );
        }
    }

    #[test]
    fn rule_23_store_location_required() {
        let mut c = valid();
        c.metadata_store.kind = "postgres".into();
        c.metadata_store.dsn = String::new();
        assert_one_error(&c, "metadata_store.dsn: required when type is postgres");
        let mut c = valid();
        c.metadata_store.sqlite_path = String::new();
        assert_one_error(&c, "metadata_store.sqlite_path: required when type is sqlite");
    }

    #[test]
    fn rule_24_dlm_type() {
        let mut c = valid();
        c.dlm.kind = "etcd".into();
        assert_one_error(&c, "dlm.type: expected local or postgres");
        c.dlm.kind = "redis".into();
        assert_one_error(&c, "dlm.type: redis is not supported; use postgres");
    }

    #[test]
    fn rule_25_dlm_postgres_needs_a_dsn() {
        let mut c = valid();
        c.dlm.kind = "postgres".into();
        assert_one_error(&c, "dlm.dsn: required when dlm.type is postgres and metadata_store.type is not postgres");
        c.dlm.dsn = "postgres://locks@db/locks".into();
        assert!(errors(&c).is_empty());
        c.dlm.dsn = String::new();
        c.metadata_store.kind = "postgres".into();
        assert!(errors(&c).is_empty());
    }

    #[test]
    fn rule_26_lease_ttl() {
        let mut c = valid();
        c.dlm.lease_ttl = Duration::from_millis(999);
        assert_one_error(&c, "dlm.lease_ttl: must be at least 1s");
        c.dlm.lease_ttl = Duration::from_secs(1);
        c.dlm.acquire_timeout = Duration::ZERO;
        assert!(errors(&c).is_empty());
    }

    #[test]
    fn rule_27_instance_id() {
        let mut c = valid();
        c.instance_discovery.instance_id = String::new();
        assert_one_error(&c, "instance_discovery.instance_id: required");
        for bad in ["node 1", "node/1", "nöde", &"n".repeat(101)] {
            c.instance_discovery.instance_id = bad.to_string();
            assert_one_error(&c, "instance_discovery.instance_id: invalid characters");
        }
        c.instance_discovery.instance_id = "Node_1.a-b".into();
        assert!(errors(&c).is_empty());
    }

    #[test]
    fn rule_28_peer_endpoints() {
        let cases = [
            ("bad id", "https://n2:8443", "instance_discovery.peer_endpoints.bad id: invalid peer id"),
            ("node-1", "https://n1:8443", "instance_discovery.peer_endpoints.node-1: peer id equals"),
            ("n2", "n2:8443", "instance_discovery.peer_endpoints.n2: endpoint must be an absolute"),
            ("n2", "ftp://n2", "instance_discovery.peer_endpoints.n2: endpoint must be an absolute"),
            ("n2", "https://", "instance_discovery.peer_endpoints.n2: endpoint must be an absolute"),
            ("n2", "https://n2:99999", "instance_discovery.peer_endpoints.n2: endpoint must be an absolute"),
            ("n2", "https://n2:8443/?a=b", "instance_discovery.peer_endpoints.n2: endpoint must not contain a query"),
            ("n2", "https://n2:8443#x", "instance_discovery.peer_endpoints.n2: endpoint must not contain a query"),
            ("n2", "", "instance_discovery.peer_endpoints.n2: endpoint required"),
        ];
        for (id, url, prefix) in cases {
            let mut c = valid();
            c.metadata_store.kind = "postgres".into();
            c.dlm.kind = "postgres".into();
            c.instance_discovery.peer_endpoints.insert(id.into(), url.into());
            assert_one_error(&c, prefix);
        }
        let mut c = valid();
        c.metadata_store.kind = "postgres".into();
        c.dlm.kind = "postgres".into();
        for (id, url) in [
            ("n2", "https://10.0.0.2:8443"),
            ("n3", "https://[fd00::3]:8443/base"),
            ("n4", "HTTPS://n4"),
            ("n5", "https://[fd00::5]"),
        ] {
            c.instance_discovery.peer_endpoints.insert(id.into(), url.into());
        }
        assert_eq!(validate(&c), (vec![], vec![]));
    }

    #[test]
    fn rule_29_health_probe_interval() {
        let mut c = valid();
        c.instance_discovery.health_probe_interval = Duration::from_millis(500);
        assert_one_error(&c, "instance_discovery.health_probe_interval: must be at least 1s");
    }

    #[test]
    fn rule_30_rate_limits() {
        let mut c = valid();
        c.rate_limit.links_per_second = -1.0;
        assert_one_error(&c, "rate_limit.links_per_second: must not be negative");
        let mut c = valid();
        c.rate_limit.downloads_burst = -1;
        assert_one_error(&c, "rate_limit.downloads_burst: must not be negative");
        let mut c = valid();
        c.rate_limit.api_per_second = 5.0;
        assert_one_error(&c, "rate_limit.api_burst: must be at least 1");
        c.rate_limit.api_burst = 1;
        assert!(errors(&c).is_empty());
    }

    #[test]
    fn rule_31_replica_backend() {
        let mut c = valid();
        c.ha.replication_enabled = true;
        assert_one_error(&c, "ha.replica_backend: expected localfs or s3 when replication is enabled");
        c.ha.replica_backend = "s3".into();
        assert!(errors(&c).is_empty());
        assert!(warnings(&c).iter().any(|w| w.starts_with("ha.replication_enabled:")));
    }

    #[test]
    fn rule_32_erasure_shards() {
        let mut c = valid();
        c.erasure.enabled = true;
        c.erasure.data_shards = 200;
        c.erasure.parity_shards = 57;
        assert_one_error(&c, "erasure: data_shards + parity_shards exceeds 256");
        c.erasure.parity_shards = 56;
        assert!(errors(&c).is_empty());
        assert!(warnings(&c).iter().any(|w| w.starts_with("erasure.enabled:")));
        // Below-minimum counts are replaced silently.
        c.erasure.data_shards = 0;
        c.erasure.parity_shards = 0;
        assert!(errors(&c).is_empty());
    }

    #[test]
    fn rule_33_quic() {
        let mut c = valid();
        c.server.enable_quic = true;
        assert!(errors(&c).is_empty());
        assert!(warnings(&c).iter().any(|w| w.starts_with("server.enable_quic:")));
        c.server.quic_listen_addr = String::new();
        assert_one_error(&c, "server.quic_listen_addr: required when enable_quic is true");
        c.server.quic_listen_addr = ":8443".into();
        c.server.cert_file = String::new();
        assert_one_error(&c, "server.cert_file, server.key_file: both required when enable_quic is true");
    }

    #[test]
    fn every_failure_is_reported() {
        let mut c = valid();
        c.server.protocol = "ftp".into();
        c.log.level = "loud".into();
        c.dlm.lease_ttl = Duration::ZERO;
        c.auth.api_keys = vec!["short".into()];
        let errs = errors(&c);
        assert_eq!(errs.len(), 4, "{errs:?}");
    }

    #[test]
    fn warnings_for_risky_settings() {
        let mut c = valid();
        c.auth.api_keys = vec![KEY_B.into(), "carol-key-0123456789".into()];
        c.auth.internal_proxy_secret = "short-internal".into();
        c.auth.single_use_link_secret = "short-link".into();
        c.backend.internal_proxy_skip_tls_verify = true;
        c.instance_discovery.peer_endpoints.insert("n2".into(), "http://10.0.0.2:8443".into());
        let (errs, warns) = validate(&c);
        assert!(errs.is_empty(), "{errs:?}");
        let has = |prefix: &str| warns.iter().any(|w| w.starts_with(prefix));
        assert!(has("auth.api_keys: 2 legacy"), "{warns:?}");
        assert!(has("auth.internal_proxy_secret: shorter than 16"), "{warns:?}");
        assert!(has("auth.single_use_link_secret: shorter than 16"), "{warns:?}");
        assert!(has("backend.internal_proxy_skip_tls_verify:"), "{warns:?}");
        assert!(has("instance_discovery.peer_endpoints.n2: plain http"), "{warns:?}");
        assert!(has("dlm.type: local locks are per node"), "{warns:?}");
        assert!(has("metadata_store.type: sqlite is a single-node store"), "{warns:?}");
        for secret in [KEY_B, "short-internal", "short-link"] {
            assert!(!warns.iter().any(|w| w.contains(secret)), "{warns:?}");
        }
    }
}
