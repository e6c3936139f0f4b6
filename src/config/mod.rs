//! Configuration: key structs with their defaults, loading (defaults < file < `CALLFS_*` environment),
//! normalisation, validation and the `config validate` summary. See `config.md`.

mod de;
pub mod duration;
mod env;
mod load;
mod validate;

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::time::Duration;

use serde::{Deserialize, Serialize};

use de::duration_str;

pub use load::{load, load_from, load_or_report};
pub use validate::validate;

/// Placeholder defaults that validation refuses.
pub const PLACEHOLDER_API_KEY: &str = "default-api-key";
pub const PLACEHOLDER_INTERNAL_PROXY_SECRET: &str = "change-me-internal-secret";
pub const PLACEHOLDER_LINK_SECRET: &str = "change-me-link-secret";

/// Key paths whose children are free-form entries (id → value) rather than fixed keys.
pub(crate) const MAP_SECTIONS: [&str; 2] = ["auth.api_key_users", "instance_discovery.peer_endpoints"];

/// The whole configuration; every field is named after its key in `config.md` §2.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(default)]
pub struct Config {
    pub server: ServerConfig,
    pub auth: AuthConfig,
    pub log: LogConfig,
    pub metrics: MetricsConfig,
    pub backend: BackendConfig,
    pub metadata_store: MetadataStoreConfig,
    pub dlm: DlmConfig,
    pub instance_discovery: InstanceDiscoveryConfig,
    pub rate_limit: RateLimitConfig,
    pub ha: HaConfig,
    pub erasure: ErasureConfig,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default)]
pub struct ServerConfig {
    #[serde(deserialize_with = "de::string")]
    pub listen_addr: String,
    #[serde(deserialize_with = "de::string")]
    pub protocol: String,
    #[serde(deserialize_with = "de::string")]
    pub external_url: String,
    #[serde(deserialize_with = "de::string")]
    pub cert_file: String,
    #[serde(deserialize_with = "de::string")]
    pub key_file: String,
    #[serde(with = "duration_str")]
    pub read_timeout: Duration,
    #[serde(with = "duration_str")]
    pub write_timeout: Duration,
    #[serde(with = "duration_str")]
    pub idle_timeout: Duration,
    #[serde(with = "duration_str")]
    pub file_op_timeout: Duration,
    #[serde(with = "duration_str")]
    pub metadata_op_timeout: Duration,
    #[serde(deserialize_with = "de::integer")]
    pub max_upload_bytes: u64,
    #[serde(deserialize_with = "de::integer")]
    pub max_header_bytes: u64,
    #[serde(deserialize_with = "de::list")]
    pub trusted_proxies: Vec<String>,
    #[serde(deserialize_with = "de::boolean")]
    pub enable_quic: bool,
    #[serde(deserialize_with = "de::string")]
    pub quic_listen_addr: String,
}

impl Default for ServerConfig {
    fn default() -> Self {
        ServerConfig {
            listen_addr: ":8443".into(),
            protocol: "https".into(),
            external_url: "localhost:8443".into(),
            cert_file: "server.crt".into(),
            key_file: "server.key".into(),
            read_timeout: Duration::from_secs(30),
            write_timeout: Duration::from_secs(30),
            idle_timeout: Duration::from_secs(120),
            file_op_timeout: Duration::from_secs(10),
            metadata_op_timeout: Duration::from_secs(5),
            max_upload_bytes: 10_737_418_240,
            max_header_bytes: 32_768,
            trusted_proxies: Vec::new(),
            enable_quic: false,
            quic_listen_addr: ":8443".into(),
        }
    }
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default)]
pub struct AuthConfig {
    /// user id → key.
    #[serde(deserialize_with = "de::map")]
    pub api_key_users: BTreeMap<String, String>,
    /// Legacy positional keys; user id `api-user-<index>`.
    #[serde(deserialize_with = "de::list")]
    pub api_keys: Vec<String>,
    #[serde(deserialize_with = "de::string")]
    pub internal_proxy_secret: String,
    #[serde(deserialize_with = "de::string")]
    pub single_use_link_secret: String,
}

impl Default for AuthConfig {
    fn default() -> Self {
        AuthConfig {
            api_key_users: BTreeMap::new(),
            api_keys: Vec::new(),
            internal_proxy_secret: PLACEHOLDER_INTERNAL_PROXY_SECRET.into(),
            single_use_link_secret: PLACEHOLDER_LINK_SECRET.into(),
        }
    }
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default)]
pub struct LogConfig {
    #[serde(deserialize_with = "de::string")]
    pub level: String,
    #[serde(deserialize_with = "de::string")]
    pub format: String,
}

impl Default for LogConfig {
    fn default() -> Self {
        LogConfig { level: "info".into(), format: "json".into() }
    }
}

#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(default)]
pub struct MetricsConfig {
    /// Empty: no separate metrics listener.
    #[serde(deserialize_with = "de::string")]
    pub listen_addr: String,
    #[serde(deserialize_with = "de::boolean")]
    pub require_auth: bool,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default)]
pub struct BackendConfig {
    #[serde(deserialize_with = "de::string")]
    pub default_backend: String,
    #[serde(deserialize_with = "de::string")]
    pub localfs_root_path: String,
    #[serde(deserialize_with = "de::boolean")]
    pub localfs_fsync: bool,
    #[serde(deserialize_with = "de::string")]
    pub s3_access_key: String,
    #[serde(deserialize_with = "de::string")]
    pub s3_secret_key: String,
    #[serde(deserialize_with = "de::string")]
    pub s3_region: String,
    #[serde(deserialize_with = "de::string")]
    pub s3_bucket_name: String,
    #[serde(deserialize_with = "de::string")]
    pub s3_endpoint: String,
    #[serde(deserialize_with = "de::string")]
    pub s3_server_side_encryption: String,
    #[serde(deserialize_with = "de::string")]
    pub s3_acl: String,
    #[serde(deserialize_with = "de::string")]
    pub s3_kms_key_id: String,
    #[serde(deserialize_with = "de::boolean")]
    pub internal_proxy_skip_tls_verify: bool,
    #[serde(deserialize_with = "de::string")]
    pub internal_proxy_ca_file: String,
    #[serde(with = "duration_str")]
    pub internal_proxy_connect_timeout: Duration,
    #[serde(with = "duration_str")]
    pub internal_proxy_timeout: Duration,
}

impl Default for BackendConfig {
    fn default() -> Self {
        BackendConfig {
            default_backend: "localfs".into(),
            localfs_root_path: "/var/lib/callfs".into(),
            localfs_fsync: true,
            s3_access_key: String::new(),
            s3_secret_key: String::new(),
            s3_region: "us-east-1".into(),
            s3_bucket_name: String::new(),
            s3_endpoint: String::new(),
            s3_server_side_encryption: "AES256".into(),
            s3_acl: "private".into(),
            s3_kms_key_id: String::new(),
            internal_proxy_skip_tls_verify: false,
            internal_proxy_ca_file: String::new(),
            internal_proxy_connect_timeout: Duration::from_secs(5),
            internal_proxy_timeout: Duration::from_secs(30),
        }
    }
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default)]
pub struct MetadataStoreConfig {
    /// `sqlite` or `postgres`.
    #[serde(rename = "type", deserialize_with = "de::string")]
    pub kind: String,
    #[serde(deserialize_with = "de::string")]
    pub sqlite_path: String,
    #[serde(deserialize_with = "de::string")]
    pub dsn: String,
    #[serde(deserialize_with = "de::integer")]
    pub max_connections: u32,
}

impl Default for MetadataStoreConfig {
    fn default() -> Self {
        MetadataStoreConfig {
            kind: "sqlite".into(),
            sqlite_path: "./callfs.sqlite3".into(),
            dsn: "postgres://callfs:callfs@localhost/callfs?sslmode=require".into(),
            max_connections: 10,
        }
    }
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default)]
pub struct DlmConfig {
    /// `local` or `postgres`.
    #[serde(rename = "type", deserialize_with = "de::string")]
    pub kind: String,
    /// Empty: `metadata_store.dsn` (see [`Config::dlm_dsn`]).
    #[serde(deserialize_with = "de::string")]
    pub dsn: String,
    #[serde(with = "duration_str")]
    pub lease_ttl: Duration,
    #[serde(with = "duration_str")]
    pub acquire_timeout: Duration,
}

impl Default for DlmConfig {
    fn default() -> Self {
        DlmConfig {
            kind: "local".into(),
            dsn: String::new(),
            lease_ttl: Duration::from_secs(30),
            acquire_timeout: Duration::from_secs(10),
        }
    }
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default)]
pub struct InstanceDiscoveryConfig {
    #[serde(deserialize_with = "de::string")]
    pub instance_id: String,
    /// peer instance id → base URL (`http(s)://host:port`).
    #[serde(deserialize_with = "de::map")]
    pub peer_endpoints: BTreeMap<String, String>,
    #[serde(with = "duration_str")]
    pub health_probe_interval: Duration,
}

impl Default for InstanceDiscoveryConfig {
    fn default() -> Self {
        InstanceDiscoveryConfig {
            instance_id: "callfs-instance-1".into(),
            peer_endpoints: BTreeMap::new(),
            health_probe_interval: Duration::from_secs(10),
        }
    }
}

/// Rates are tokens per second (0 = unlimited); bursts are signed so that negatives can be reported.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default)]
pub struct RateLimitConfig {
    #[serde(deserialize_with = "de::float")]
    pub links_per_second: f64,
    #[serde(deserialize_with = "de::integer")]
    pub links_burst: i64,
    #[serde(deserialize_with = "de::float")]
    pub downloads_per_second: f64,
    #[serde(deserialize_with = "de::integer")]
    pub downloads_burst: i64,
    #[serde(deserialize_with = "de::float")]
    pub api_per_second: f64,
    #[serde(deserialize_with = "de::integer")]
    pub api_burst: i64,
}

impl Default for RateLimitConfig {
    fn default() -> Self {
        RateLimitConfig {
            links_per_second: 100.0,
            links_burst: 1,
            downloads_per_second: 10.0,
            downloads_burst: 5,
            api_per_second: 0.0,
            api_burst: 0,
        }
    }
}

#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(default)]
pub struct HaConfig {
    #[serde(deserialize_with = "de::boolean")]
    pub replication_enabled: bool,
    #[serde(deserialize_with = "de::string")]
    pub replica_backend: String,
    #[serde(deserialize_with = "de::boolean")]
    pub require_replica_success: bool,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default)]
pub struct ErasureConfig {
    #[serde(deserialize_with = "de::boolean")]
    pub enabled: bool,
    #[serde(deserialize_with = "de::integer")]
    pub data_shards: u32,
    #[serde(deserialize_with = "de::integer")]
    pub parity_shards: u32,
    #[serde(deserialize_with = "de::integer")]
    pub min_file_size: u64,
    #[serde(deserialize_with = "de::string")]
    pub shard_backend: String,
    #[serde(deserialize_with = "de::string")]
    pub shard_path: String,
}

impl Default for ErasureConfig {
    fn default() -> Self {
        ErasureConfig {
            enabled: false,
            data_shards: 4,
            parity_shards: 2,
            min_file_size: 1_048_576,
            shard_backend: "localfs".into(),
            shard_path: String::new(),
        }
    }
}

/// A loaded, normalised and validated configuration.
#[derive(Debug, Clone)]
pub struct Loaded {
    pub config: Config,
    /// Unknown keys and validation warnings, each starting with its key path.
    pub warnings: Vec<String>,
    /// The configuration file used, if any.
    pub source: Option<PathBuf>,
}

impl Config {
    /// Applies the load-time normalisations: `server.protocol` lowercased (empty → `https`),
    /// empty `backend.default_backend` → `localfs`, empty `metadata_store.type` → `sqlite`,
    /// empty `dlm.type` → `local`, `log.level`/`log.format` lowercased, and erasure shard counts
    /// below their minimum replaced by the defaults (data < 2 → 4, parity < 1 → 2).
    pub fn normalize(&mut self) {
        self.server.protocol = self.server.protocol.trim().to_ascii_lowercase();
        if self.server.protocol.is_empty() {
            self.server.protocol = "https".into();
        }
        if self.backend.default_backend.trim().is_empty() {
            self.backend.default_backend = "localfs".into();
        }
        if self.metadata_store.kind.trim().is_empty() {
            self.metadata_store.kind = "sqlite".into();
        }
        if self.dlm.kind.trim().is_empty() {
            self.dlm.kind = "local".into();
        }
        self.log.level = self.log.level.trim().to_ascii_lowercase();
        self.log.format = self.log.format.trim().to_ascii_lowercase();
        if self.erasure.data_shards < 2 {
            self.erasure.data_shards = 4;
        }
        if self.erasure.parity_shards < 1 {
            self.erasure.parity_shards = 2;
        }
    }

    /// Every configured key with its user id: named users (in id order), then the legacy
    /// `auth.api_keys` as `api-user-<index>`.
    pub fn identities(&self) -> Vec<(String, String)> {
        let named = self.auth.api_key_users.iter().map(|(id, key)| (id.clone(), key.clone()));
        let legacy = self.auth.api_keys.iter().enumerate().map(|(i, key)| (format!("api-user-{i}"), key.clone()));
        named.chain(legacy).collect()
    }

    /// The API listener address for binding: `:8443` → `0.0.0.0:8443`; `host:port` unchanged.
    pub fn listen_socket_addr(&self) -> String {
        socket_addr(&self.server.listen_addr)
    }

    /// The dedicated metrics listener address, `None` when `metrics.listen_addr` is empty.
    pub fn metrics_socket_addr(&self) -> Option<String> {
        let addr = self.metrics.listen_addr.trim();
        (!addr.is_empty()).then(|| socket_addr(addr))
    }

    /// The QUIC (UDP) listener address for binding, same rules as [`Config::listen_socket_addr`].
    pub fn quic_socket_addr(&self) -> String {
        socket_addr(&self.server.quic_listen_addr)
    }

    /// `server.external_url` with a scheme (`https://` when none is given) and no trailing slash.
    pub fn external_base_url(&self) -> String {
        let url = self.server.external_url.trim().trim_end_matches('/');
        if url.contains("://") {
            url.to_string()
        } else {
            format!("https://{url}")
        }
    }

    /// The DSN of the PostgreSQL lock manager: `dlm.dsn`, or `metadata_store.dsn` when empty.
    pub fn dlm_dsn(&self) -> String {
        if self.dlm.dsn.trim().is_empty() {
            self.metadata_store.dsn.clone()
        } else {
            self.dlm.dsn.clone()
        }
    }

    /// The `config validate` summary (`config.md` §5), one `Name: value` line each, no secrets.
    pub fn summary(&self) -> String {
        let mut lines = vec![
            format!("Instance ID: {}", self.instance_discovery.instance_id),
            format!("Listen address: {}", self.server.listen_addr),
            format!("Protocol: {}", self.server.protocol),
        ];
        let store = if self.metadata_store.kind == "postgres" {
            format!("postgres ({})", mask_dsn(&self.metadata_store.dsn))
        } else {
            format!("{} ({})", self.metadata_store.kind, self.metadata_store.sqlite_path)
        };
        lines.push(format!("Metadata store: {store}"));
        let dlm = if self.dlm.kind == "postgres" {
            format!("postgres ({})", mask_dsn(&self.dlm_dsn()))
        } else {
            self.dlm.kind.clone()
        };
        lines.push(format!("Lock manager: {dlm}"));
        let root =
            if self.backend.localfs_root_path.is_empty() { "(disabled)" } else { &self.backend.localfs_root_path };
        lines.push(format!("Local storage root: {root}"));
        lines.push(format!("Default backend: {}", self.backend.default_backend));
        if !self.backend.s3_bucket_name.is_empty() {
            lines.push(format!("S3 bucket: {} (region {})", self.backend.s3_bucket_name, self.backend.s3_region));
        }
        lines.push(format!("Peers: {}", self.instance_discovery.peer_endpoints.len()));
        lines.join("\n")
    }
}

/// `:port` → `0.0.0.0:port`; anything else unchanged.
fn socket_addr(addr: &str) -> String {
    let addr = addr.trim();
    if addr.starts_with(':') {
        format!("0.0.0.0{addr}")
    } else {
        addr.to_string()
    }
}

/// Hides the password of a PostgreSQL DSN: `postgres://user:***@host/db`, `password=***` in key/value
/// form and in the query string.
pub fn mask_dsn(dsn: &str) -> String {
    let mut out = dsn.to_string();
    if let Some(scheme_end) = dsn.find("://") {
        let rest_start = scheme_end + 3;
        let rest = &dsn[rest_start..];
        let authority_end = rest.find(['/', '?', '#']).unwrap_or(rest.len());
        let authority = &rest[..authority_end];
        if let Some(at) = authority.rfind('@') {
            let userinfo = &authority[..at];
            if let Some(colon) = userinfo.find(':') {
                out = format!("{}{}:***{}", &dsn[..rest_start], &userinfo[..colon], &dsn[rest_start + at..]);
            }
        }
    }
    let query = regex_lite::Regex::new(r"(?i)([?&]password=)[^&#]*").expect("static regex");
    let out = query.replace_all(&out, "${1}***").into_owned();
    let kv = regex_lite::Regex::new(r"(?i)(^|\s)(password\s*=\s*)('[^']*'|[^\s']\S*)").expect("static regex");
    kv.replace_all(&out, "${1}${2}***").into_owned()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_match_the_spec() {
        let c = Config::default();
        assert_eq!(c.server.listen_addr, ":8443");
        assert_eq!(c.server.protocol, "https");
        assert_eq!(c.server.external_url, "localhost:8443");
        assert_eq!(c.server.cert_file, "server.crt");
        assert_eq!(c.server.key_file, "server.key");
        assert_eq!(c.server.read_timeout, Duration::from_secs(30));
        assert_eq!(c.server.write_timeout, Duration::from_secs(30));
        assert_eq!(c.server.idle_timeout, Duration::from_secs(120));
        assert_eq!(c.server.file_op_timeout, Duration::from_secs(10));
        assert_eq!(c.server.metadata_op_timeout, Duration::from_secs(5));
        assert_eq!(c.server.max_upload_bytes, 10_737_418_240);
        assert_eq!(c.server.max_header_bytes, 32_768);
        assert!(c.server.trusted_proxies.is_empty());
        assert!(!c.server.enable_quic);
        assert_eq!(c.server.quic_listen_addr, ":8443");
        assert!(c.auth.api_key_users.is_empty() && c.auth.api_keys.is_empty());
        assert_eq!(c.auth.internal_proxy_secret, "change-me-internal-secret");
        assert_eq!(c.auth.single_use_link_secret, "change-me-link-secret");
        assert_eq!((c.log.level.as_str(), c.log.format.as_str()), ("info", "json"));
        assert_eq!(c.metrics.listen_addr, "");
        assert!(!c.metrics.require_auth);
        assert_eq!(c.backend.default_backend, "localfs");
        assert_eq!(c.backend.localfs_root_path, "/var/lib/callfs");
        assert!(c.backend.localfs_fsync);
        assert_eq!(c.backend.s3_region, "us-east-1");
        assert_eq!(c.backend.s3_server_side_encryption, "AES256");
        assert_eq!(c.backend.s3_acl, "private");
        assert_eq!(c.backend.internal_proxy_connect_timeout, Duration::from_secs(5));
        assert_eq!(c.backend.internal_proxy_timeout, Duration::from_secs(30));
        assert_eq!(c.metadata_store.kind, "sqlite");
        assert_eq!(c.metadata_store.sqlite_path, "./callfs.sqlite3");
        assert_eq!(c.metadata_store.dsn, "postgres://callfs:callfs@localhost/callfs?sslmode=require");
        assert_eq!(c.metadata_store.max_connections, 10);
        assert_eq!(c.dlm.kind, "local");
        assert_eq!(c.dlm.dsn, "");
        assert_eq!(c.dlm.lease_ttl, Duration::from_secs(30));
        assert_eq!(c.dlm.acquire_timeout, Duration::from_secs(10));
        assert_eq!(c.instance_discovery.instance_id, "callfs-instance-1");
        assert_eq!(c.instance_discovery.health_probe_interval, Duration::from_secs(10));
        let r = &c.rate_limit;
        assert_eq!((r.links_per_second, r.links_burst), (100.0, 1));
        assert_eq!((r.downloads_per_second, r.downloads_burst), (10.0, 5));
        assert_eq!((r.api_per_second, r.api_burst), (0.0, 0));
        assert!(!c.ha.replication_enabled && !c.ha.require_replica_success);
        assert_eq!(c.ha.replica_backend, "");
        assert!(!c.erasure.enabled);
        assert_eq!((c.erasure.data_shards, c.erasure.parity_shards), (4, 2));
        assert_eq!(c.erasure.min_file_size, 1_048_576);
        assert_eq!(c.erasure.shard_backend, "localfs");
        assert_eq!(c.erasure.shard_path, "");
    }

    #[test]
    fn serializes_durations_as_strings_and_uses_type_key() {
        let v = serde_json::to_value(Config::default()).unwrap();
        assert_eq!(v["server"]["read_timeout"], "30s");
        assert_eq!(v["server"]["idle_timeout"], "2m0s");
        assert_eq!(v["metadata_store"]["type"], "sqlite");
        assert_eq!(v["dlm"]["type"], "local");
        let back: Config = serde_json::from_value(v).unwrap();
        assert_eq!(back.server.idle_timeout, Duration::from_secs(120));
    }

    #[test]
    fn normalize_fills_empty_values() {
        let mut c = Config::default();
        c.server.protocol = " HTTP ".into();
        c.backend.default_backend = String::new();
        c.metadata_store.kind = String::new();
        c.dlm.kind = String::new();
        c.log.level = "WARN".into();
        c.erasure.data_shards = 1;
        c.erasure.parity_shards = 0;
        c.normalize();
        assert_eq!(c.server.protocol, "http");
        assert_eq!(c.backend.default_backend, "localfs");
        assert_eq!(c.metadata_store.kind, "sqlite");
        assert_eq!(c.dlm.kind, "local");
        assert_eq!(c.log.level, "warn");
        assert_eq!((c.erasure.data_shards, c.erasure.parity_shards), (4, 2));
        c.server.protocol = String::new();
        c.normalize();
        assert_eq!(c.server.protocol, "https");
    }

    #[test]
    fn identities_named_then_legacy_in_order() {
        let mut c = Config::default();
        c.auth.api_keys = vec!["first-legacy-key-0000".into(), "second-legacy-key-000".into()];
        c.auth.api_key_users.insert("bob".into(), "bob-key-0123456789".into());
        c.auth.api_key_users.insert("alice".into(), "alice-key-0123456789".into());
        let ids = c.identities();
        let names: Vec<&str> = ids.iter().map(|(id, _)| id.as_str()).collect();
        assert_eq!(names, ["alice", "bob", "api-user-0", "api-user-1"]);
        assert_eq!(ids[2].1, "first-legacy-key-0000");
        assert_eq!(ids[3].1, "second-legacy-key-000");
    }

    #[test]
    fn socket_addresses() {
        let mut c = Config::default();
        assert_eq!(c.listen_socket_addr(), "0.0.0.0:8443");
        c.server.listen_addr = "127.0.0.1:9000".into();
        assert_eq!(c.listen_socket_addr(), "127.0.0.1:9000");
        c.server.listen_addr = "[::1]:9000".into();
        assert_eq!(c.listen_socket_addr(), "[::1]:9000");
        assert_eq!(c.metrics_socket_addr(), None);
        c.metrics.listen_addr = ":9090".into();
        assert_eq!(c.metrics_socket_addr().as_deref(), Some("0.0.0.0:9090"));
    }

    #[test]
    fn external_base_url_adds_https() {
        let mut c = Config::default();
        assert_eq!(c.external_base_url(), "https://localhost:8443");
        c.server.external_url = "http://127.0.0.1:8443/".into();
        assert_eq!(c.external_base_url(), "http://127.0.0.1:8443");
    }

    #[test]
    fn dlm_dsn_falls_back_to_metadata_dsn() {
        let mut c = Config::default();
        assert_eq!(c.dlm_dsn(), c.metadata_store.dsn);
        c.dlm.dsn = "postgres://locks@db/locks".into();
        assert_eq!(c.dlm_dsn(), "postgres://locks@db/locks");
    }

    #[test]
    fn masks_dsn_passwords() {
        assert_eq!(mask_dsn("postgres://user:secret@host/db"), "postgres://user:***@host/db");
        assert_eq!(
            mask_dsn("postgresql://u:p%40ss@h:5432/db?sslmode=disable"),
            "postgresql://u:***@h:5432/db?sslmode=disable"
        );
        assert_eq!(mask_dsn("postgres://user@host/db"), "postgres://user@host/db");
        assert_eq!(
            mask_dsn("postgres://h/db?user=u&password=pw&sslmode=require"),
            "postgres://h/db?user=u&password=***&sslmode=require"
        );
        assert_eq!(mask_dsn("host=db user=u password=pw dbname=x"), "host=db user=u password=*** dbname=x");
        assert_eq!(mask_dsn("host=db password='a b' dbname=x"), "host=db password=*** dbname=x");
    }

    #[test]
    fn summary_masks_the_dsn_and_hides_secrets() {
        let mut c = Config::default();
        c.metadata_store.kind = "postgres".into();
        c.metadata_store.dsn = "postgres://callfs:hunter2@db.example/callfs".into();
        c.dlm.kind = "postgres".into();
        c.auth.internal_proxy_secret = "internal-secret-value".into();
        c.auth.api_key_users.insert("alice".into(), "alice-secret-key-123".into());
        c.backend.s3_bucket_name = "files".into();
        c.backend.s3_secret_key = "s3-secret-value".into();
        c.instance_discovery.peer_endpoints.insert("n2".into(), "https://n2:8443".into());
        let s = c.summary();
        assert!(s.contains("Metadata store: postgres (postgres://callfs:***@db.example/callfs)"), "{s}");
        assert!(s.contains("Lock manager: postgres (postgres://callfs:***@db.example/callfs)"), "{s}");
        assert!(s.contains("Instance ID: callfs-instance-1"), "{s}");
        assert!(s.contains("Listen address: :8443"), "{s}");
        assert!(s.contains("Protocol: https"), "{s}");
        assert!(s.contains("S3 bucket: files (region us-east-1)"), "{s}");
        assert!(s.contains("Peers: 1"), "{s}");
        for secret in ["hunter2", "internal-secret-value", "alice-secret-key-123", "s3-secret-value"] {
            assert!(!s.contains(secret), "summary leaks {secret}: {s}");
        }
    }

    #[test]
    fn summary_shows_sqlite_path_and_omits_empty_bucket() {
        let s = Config::default().summary();
        assert!(s.contains("Metadata store: sqlite (./callfs.sqlite3)"), "{s}");
        assert!(s.contains("Lock manager: local"), "{s}");
        assert!(s.contains("Local storage root: /var/lib/callfs"), "{s}");
        assert!(!s.contains("S3 bucket"), "{s}");
        assert!(s.contains("Peers: 0"), "{s}");
    }
}
