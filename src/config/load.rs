//! Loading: serialized defaults < YAML/JSON file < `CALLFS_*` environment, then conversion, unknown-key
//! detection, normalisation and validation (`config.md` §1, §4).

use std::path::Path;

use figment::providers::{Format, Json, Serialized, Yaml};
use figment::Figment;
use serde_json::{Map, Value};

use super::{env, validate, Config, Loaded, MAP_SECTIONS};

/// Files tried, in order, when no `--config` is given.
const DEFAULT_FILES: [&str; 3] = ["config.yaml", "config.yml", "config.json"];

/// Upper bound on conversion errors collected from one load (each resets one key and retries).
const MAX_CONVERSION_ERRORS: usize = 200;

/// [`load`] for commands that stop on an invalid configuration: prints
/// `Configuration validation failed:` and one error per line to stderr, and returns `None`.
pub fn load_or_report(path: Option<&Path>) -> Option<Loaded> {
    match load(path) {
        Ok(loaded) => Some(loaded),
        Err(errors) => {
            eprintln!("Configuration validation failed:");
            for error in errors {
                eprintln!("  {error}");
            }
            None
        }
    }
}

/// Loads the configuration from defaults, the file and the process environment.
///
/// `path` is the `--config` value (the file must exist); `None` uses the first existing of
/// `./config.yaml`, `./config.yml`, `./config.json`, or no file. Errors: file missing, unreadable or
/// unparsable; environment values that cannot be converted (naming the variable); every validation
/// failure. One string per problem, each starting with its key path (or the file path).
pub fn load(path: Option<&Path>) -> Result<Loaded, Vec<String>> {
    load_from(path, env::process_vars())
}

/// [`load`] with an explicit environment (tests, embedding).
pub fn load_from(path: Option<&Path>, env: impl IntoIterator<Item = (String, String)>) -> Result<Loaded, Vec<String>> {
    load_in(Path::new("."), path, env)
}

/// [`load_from`] searching the default file names in `dir` instead of the working directory.
pub(crate) fn load_in(
    dir: &Path,
    path: Option<&Path>,
    env_vars: impl IntoIterator<Item = (String, String)>,
) -> Result<Loaded, Vec<String>> {
    let source = match path {
        Some(p) => Some(p.to_path_buf()),
        None => DEFAULT_FILES.iter().map(|name| dir.join(name)).find(|candidate| candidate.is_file()),
    };
    let defaults = serde_json::to_value(Config::default())
        .map_err(|e| vec![format!("internal error: cannot serialize defaults: {e}")])?;
    let mut figment = Figment::from(Serialized::defaults(&defaults));
    if let Some(file) = &source {
        let mut file_tree = read_file(file).map_err(|e| vec![e])?;
        // A key left empty (`rate_limit:`) keeps its default rather than erasing it.
        drop_nulls(&mut file_tree);
        figment = figment.merge(Serialized::defaults(file_tree));
    }
    let (figment, env::Problems { mut errors, mut warnings }) = env::merge(figment, env_vars);
    let mut tree: Value =
        figment.extract().map_err(|e| vec![format!("internal error: cannot merge the configuration: {e}")])?;
    let mut unknown = Vec::new();
    unknown_keys(&defaults, &tree, "", &mut unknown);
    warnings.extend(unknown.into_iter().map(|key| format!("{key}: unknown key, ignored")));

    let mut config = extract(&mut tree, &defaults, &figment, source.as_deref(), &mut errors)?;
    config.normalize();
    let (invalid, validation_warnings) = validate(&config);
    errors.extend(invalid);
    warnings.extend(validation_warnings);
    if errors.is_empty() {
        Ok(Loaded { config, warnings, source })
    } else {
        Err(errors)
    }
}

/// Parses the file by extension (`.json` → JSON, anything else → YAML) into a JSON tree.
fn read_file(path: &Path) -> Result<Value, String> {
    let shown = path.display();
    let text = std::fs::read_to_string(path).map_err(|e| format!("{shown}: cannot read configuration file: {e}"))?;
    if text.trim().is_empty() {
        return Ok(Value::Object(Map::new()));
    }
    let is_json = path.extension().is_some_and(|ext| ext.eq_ignore_ascii_case("json"));
    let (format, figment) = if is_json {
        ("JSON", Figment::from(Json::string(&text)))
    } else {
        ("YAML", Figment::from(Yaml::string(&text)))
    };
    let value: Value = figment.extract().map_err(|e| format!("{shown}: cannot parse {format}: {}", e.kind))?;
    if value.is_object() {
        Ok(value)
    } else {
        Err(format!("{shown}: cannot parse {format}: top level must be a mapping"))
    }
}

/// Removes every `null` member of every object in `tree` (array items stay).
fn drop_nulls(tree: &mut Value) {
    if let Value::Object(members) = tree {
        members.retain(|_, v| !v.is_null());
        members.values_mut().for_each(drop_nulls);
    }
}

/// Key paths present in `tree` but not in `known` (the serialized defaults); map sections take any entry.
/// An unknown section is reported once, not per sub-key.
fn unknown_keys(known: &Value, tree: &Value, prefix: &str, out: &mut Vec<String>) {
    let (Value::Object(known), Value::Object(tree)) = (known, tree) else {
        return;
    };
    for (key, value) in tree {
        let path = if prefix.is_empty() { key.clone() } else { format!("{prefix}.{key}") };
        match known.get(key) {
            None => out.push(path),
            Some(_) if MAP_SECTIONS.contains(&path.as_str()) => {}
            Some(known_value) => unknown_keys(known_value, value, &path, out),
        }
    }
}

/// Converts the merged tree into a [`Config`]. On a conversion failure the offending key is reported
/// (naming the variable or file that supplied it), reset to its default, and conversion retried, so
/// every bad value is reported at once. `Err` only when the tree cannot be converted at all.
fn extract(
    tree: &mut Value,
    defaults: &Value,
    sources: &Figment,
    source: Option<&Path>,
    errors: &mut Vec<String>,
) -> Result<Config, Vec<String>> {
    for _ in 0..MAX_CONVERSION_ERRORS {
        let err = match Figment::from(Serialized::defaults(&*tree)).extract::<Config>() {
            Ok(config) => return Ok(config),
            Err(err) => err,
        };
        let key = err.path.join(".");
        let from = match (variable_behind(sources, &err.path), source) {
            (Some(var), _) => format!(" in {var}"),
            (None, Some(file)) => format!(" in {}", file.display()),
            (None, None) => String::new(),
        };
        let label = if key.is_empty() { "configuration" } else { &key };
        errors.push(format!("{label}: invalid value{from}: {}", err.kind));
        if !reset(tree, defaults, &err.path) {
            return Err(std::mem::take(errors));
        }
    }
    errors.push("configuration: too many invalid values".to_string());
    Err(std::mem::take(errors))
}

/// The variable that set the value at `path`, or at the nearest parent that exists.
fn variable_behind<'a>(sources: &'a Figment, path: &[String]) -> Option<&'a str> {
    let set_by = (1..=path.len()).rev().find_map(|depth| sources.find_metadata(&path[..depth].join(".")))?;
    env::variable(set_by)
}

/// Replaces the deepest existing node on `path` by its default (or removes it when it has none).
/// Returns false when nothing could be changed.
fn reset(tree: &mut Value, defaults: &Value, path: &[String]) -> bool {
    let mut depth = 0;
    {
        let mut node = &*tree;
        for key in path {
            match node.get(key) {
                Some(next) => {
                    node = next;
                    depth += 1;
                }
                None => break,
            }
        }
    }
    if depth == 0 {
        return false;
    }
    let target = &path[..depth];
    let default = target.iter().try_fold(defaults, |node, key| node.get(key)).cloned();
    let Some(parent) = target[..depth - 1].iter().try_fold(tree, |node, key| node.get_mut(key)) else {
        return false;
    };
    let Value::Object(obj) = parent else {
        return false;
    };
    let last = &target[depth - 1];
    match default {
        Some(value) => {
            if obj.get(last) == Some(&value) {
                return false;
            }
            obj.insert(last.clone(), value);
        }
        None => {
            obj.remove(last);
        }
    }
    true
}

#[cfg(test)]
// `figment::Jail` closures return `figment::Result`, whose error is large.
#[allow(clippy::result_large_err)]
mod tests {
    use super::*;
    use std::path::PathBuf;
    use std::time::Duration;

    const VALID_YAML: &str = r#"
server:
  listen_addr: "127.0.0.1:8443"
  protocol: "http"
  external_url: "http://127.0.0.1:8443"
auth:
  api_key_users:
    alice: "dev-key-at-least-16-chars"
  internal_proxy_secret: "dev-internal-secret-16+"
  single_use_link_secret: "dev-link-secret-16-chars"
backend:
  localfs_root_path: "./data"
metadata_store:
  type: "sqlite"
  sqlite_path: "./callfs.sqlite3"
log:
  level: "info"
  format: "console"
instance_discovery:
  instance_id: "node-1"
"#;

    fn no_env() -> Vec<(String, String)> {
        Vec::new()
    }

    fn env(list: &[(&str, &str)]) -> Vec<(String, String)> {
        list.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect()
    }

    fn write(dir: &tempfile::TempDir, name: &str, text: &str) -> PathBuf {
        let path = dir.path().join(name);
        std::fs::write(&path, text).unwrap();
        path
    }

    fn yaml_file(text: &str) -> (tempfile::TempDir, PathBuf) {
        let dir = tempfile::tempdir().unwrap();
        let path = write(&dir, "config.yaml", text);
        (dir, path)
    }

    #[track_caller]
    fn load_err(path: &Path, vars: Vec<(String, String)>) -> Vec<String> {
        match load_from(Some(path), vars) {
            Ok(loaded) => panic!("expected errors, loaded {:?}", loaded.config),
            Err(errs) => errs,
        }
    }

    #[test]
    fn spec_example_yaml_loads() {
        let (_dir, path) = yaml_file(VALID_YAML);
        let loaded = load_from(Some(&path), no_env()).unwrap();
        assert_eq!(loaded.source.as_deref(), Some(path.as_path()));
        assert!(loaded.warnings.is_empty(), "{:?}", loaded.warnings);
        let c = loaded.config;
        assert_eq!(c.server.listen_addr, "127.0.0.1:8443");
        assert_eq!(c.server.protocol, "http");
        assert_eq!(c.log.format, "console");
        assert_eq!(c.instance_discovery.instance_id, "node-1");
        assert_eq!(c.identities(), [("alice".to_string(), "dev-key-at-least-16-chars".to_string())]);
        // Untouched keys keep their defaults.
        assert_eq!(c.server.read_timeout, Duration::from_secs(30));
        assert_eq!(c.rate_limit.downloads_burst, 5);
    }

    #[test]
    fn same_config_as_json() {
        let dir = tempfile::tempdir().unwrap();
        let json = r#"{
            "server": {"listen_addr": "127.0.0.1:8443", "protocol": "HTTP", "read_timeout": 15,
                       "write_timeout": "1m30s", "max_upload_bytes": 1024},
            "auth": {"api_key_users": {"alice": "dev-key-at-least-16-chars"},
                     "internal_proxy_secret": "dev-internal-secret-16+",
                     "single_use_link_secret": "dev-link-secret-16-chars"},
            "backend": {"localfs_root_path": "./data", "localfs_fsync": false},
            "instance_discovery": {"instance_id": "node-1"}
        }"#;
        let path = write(&dir, "callfs.json", json);
        let c = load_from(Some(&path), no_env()).unwrap().config;
        assert_eq!(c.server.protocol, "http");
        assert_eq!(c.server.read_timeout, Duration::from_secs(15));
        assert_eq!(c.server.write_timeout, Duration::from_secs(90));
        assert_eq!(c.server.max_upload_bytes, 1024);
        assert!(!c.backend.localfs_fsync);
    }

    #[test]
    fn json_content_in_a_yaml_named_file_is_yaml() {
        // JSON is a YAML subset, so a .yaml file holding JSON still loads.
        let (_dir, path) = yaml_file(r#"{"auth": {"api_keys": ["0123456789abcdef"]}}"#);
        let errs = load_err(&path, no_env());
        assert!(errs.iter().all(|e| !e.contains("cannot parse")), "{errs:?}");
    }

    #[test]
    fn missing_explicit_file_is_an_error() {
        let errs = load_err(Path::new("/nonexistent/callfs.yaml"), no_env());
        assert_eq!(errs.len(), 1);
        assert!(errs[0].starts_with("/nonexistent/callfs.yaml: cannot read configuration file"), "{errs:?}");
    }

    #[test]
    fn unparsable_files_are_errors() {
        let (_dir, path) = yaml_file("server: [unclosed\n");
        let errs = load_err(&path, no_env());
        assert_eq!(errs.len(), 1, "{errs:?}");
        assert!(errs[0].contains("cannot parse YAML"), "{errs:?}");
        let dir = tempfile::tempdir().unwrap();
        let path = write(&dir, "c.json", "{\"server\": ");
        let errs = load_err(&path, no_env());
        assert!(errs[0].contains("cannot parse JSON"), "{errs:?}");
        let (_dir, path) = yaml_file("- a\n- b\n");
        let errs = load_err(&path, no_env());
        assert!(errs[0].contains("cannot parse YAML"), "{errs:?}");
    }

    #[test]
    fn default_file_search_order() {
        let dir = tempfile::tempdir().unwrap();
        // No file: defaults + environment only.
        let loaded = load_in(
            dir.path(),
            None,
            env(&[
                ("CALLFS_AUTH__API_KEY_USERS__ALICE", "dev-key-at-least-16-chars"),
                ("CALLFS_AUTH__INTERNAL_PROXY_SECRET", "dev-internal-secret-16+"),
                ("CALLFS_AUTH__SINGLE_USE_LINK_SECRET", "dev-link-secret-16-chars"),
            ]),
        )
        .unwrap();
        assert_eq!(loaded.source, None);
        write(&dir, "config.json", r#"{"log": {"level": "debug"}}"#);
        write(&dir, "config.yml", VALID_YAML.replace("level: \"info\"", "level: \"warn\"").as_str());
        let loaded = load_in(dir.path(), None, no_env()).unwrap();
        assert_eq!(loaded.source, Some(dir.path().join("config.yml")));
        assert_eq!(loaded.config.log.level, "warn");
        write(&dir, "config.yaml", &VALID_YAML.replace("level: \"info\"", "level: \"error\""));
        let loaded = load_in(dir.path(), None, no_env()).unwrap();
        assert_eq!(loaded.config.log.level, "error");
    }

    #[test]
    fn env_overrides_file_key_by_key() {
        let (_dir, path) = yaml_file(VALID_YAML);
        let loaded = load_from(
            Some(&path),
            env(&[
                ("CALLFS_SERVER__LISTEN_ADDR", ":9999"),
                ("CALLFS_LOG__LEVEL", "error"),
                ("CALLFS_BACKEND__LOCALFS_ROOT_PATH", "/data"),
                ("CALLFS_SERVER__READ_TIMEOUT", "1m30s"),
                ("CALLFS_SERVER__MAX_HEADER_BYTES", "65536"),
                ("CALLFS_BACKEND__LOCALFS_FSYNC", "FALSE"),
                ("CALLFS_METRICS__REQUIRE_AUTH", "1"),
                ("CALLFS_RATE_LIMIT__API_PER_SECOND", "2.5"),
                ("CALLFS_RATE_LIMIT__API_BURST", "3"),
                ("UNRELATED", "x"),
            ]),
        )
        .unwrap();
        let c = loaded.config;
        assert_eq!(c.server.listen_addr, ":9999");
        assert_eq!(c.listen_socket_addr(), "0.0.0.0:9999");
        assert_eq!(c.log.level, "error");
        assert_eq!(c.log.format, "console");
        assert_eq!(c.backend.localfs_root_path, "/data");
        assert_eq!(c.server.read_timeout, Duration::from_secs(90));
        assert_eq!(c.server.max_header_bytes, 65536);
        assert!(!c.backend.localfs_fsync);
        assert!(c.metrics.require_auth);
        assert_eq!((c.rate_limit.api_per_second, c.rate_limit.api_burst), (2.5, 3));
        assert!(loaded.warnings.is_empty(), "{:?}", loaded.warnings);
    }

    #[test]
    fn env_map_entries_merge_with_the_file() {
        let (_dir, path) = yaml_file(VALID_YAML);
        let c = load_from(
            Some(&path),
            env(&[
                ("CALLFS_AUTH__API_KEY_USERS__BOB", "bob-key-0123456789ab"),
                ("CALLFS_INSTANCE_DISCOVERY__PEER_ENDPOINTS__NODE-2", "https://10.0.0.2:8443"),
                ("CALLFS_METADATA_STORE__TYPE", "postgres"),
                ("CALLFS_DLM__TYPE", "postgres"),
            ]),
        )
        .unwrap()
        .config;
        let ids: Vec<String> = c.identities().into_iter().map(|(id, _)| id).collect();
        assert_eq!(ids, ["alice", "bob"]);
        assert_eq!(
            c.instance_discovery.peer_endpoints.get("node-2").map(String::as_str),
            Some("https://10.0.0.2:8443")
        );
    }

    #[test]
    fn env_key_alone_makes_a_valid_config() {
        let (_dir, path) = yaml_file(&VALID_YAML.replace("alice: \"dev-key-at-least-16-chars\"", ""));
        assert!(load_err(&path, no_env()).iter().any(|e| e.starts_with("auth: no API keys")));
        let c = load_from(Some(&path), env(&[("CALLFS_AUTH__API_KEY_USERS__ALICE", "alice-key-0123456789")]))
            .unwrap()
            .config;
        assert_eq!(c.identities(), [("alice".to_string(), "alice-key-0123456789".to_string())]);
    }

    #[test]
    fn env_whole_map_as_json_object_replaces_it() {
        let (_dir, path) = yaml_file(VALID_YAML);
        let c = load_from(Some(&path), env(&[("CALLFS_AUTH__API_KEY_USERS", r#"{"Alice": "alice-key-0123456789"}"#)]))
            .unwrap()
            .config;
        assert_eq!(c.identities(), [("Alice".to_string(), "alice-key-0123456789".to_string())]);
    }

    #[test]
    fn env_lists_comma_separated_or_json() {
        let (_dir, path) = yaml_file(VALID_YAML);
        let c = load_from(
            Some(&path),
            env(&[
                ("CALLFS_AUTH__API_KEYS", "first-legacy-key-0000,second-legacy-key-000"),
                ("CALLFS_SERVER__TRUSTED_PROXIES", r#"["10.0.0.0/8", "::1"]"#),
            ]),
        )
        .unwrap();
        let ids: Vec<String> = c.config.identities().into_iter().map(|(id, _)| id).collect();
        assert_eq!(ids, ["alice", "api-user-0", "api-user-1"]);
        assert_eq!(c.config.auth.api_keys, ["first-legacy-key-0000", "second-legacy-key-000"]);
        assert_eq!(c.config.server.trusted_proxies, ["10.0.0.0/8", "::1"]);
        assert!(c.warnings.iter().any(|w| w.starts_with("auth.api_keys: 2 legacy")));
    }

    #[test]
    fn env_empty_values_clear_keys() {
        let (_dir, path) = yaml_file(&format!("{VALID_YAML}\nmetrics:\n  listen_addr: \":9090\"\n"));
        let c =
            load_from(Some(&path), env(&[("CALLFS_METRICS__LISTEN_ADDR", ""), ("CALLFS_SERVER__TRUSTED_PROXIES", "")]))
                .unwrap()
                .config;
        assert_eq!(c.metrics.listen_addr, "");
        assert_eq!(c.metrics_socket_addr(), None);
        assert!(c.server.trusted_proxies.is_empty());
    }

    #[test]
    fn env_bad_bool_names_the_variable() {
        let (_dir, path) = yaml_file(VALID_YAML);
        let errs = load_err(&path, env(&[("CALLFS_BACKEND__LOCALFS_FSYNC", "maybe")]));
        assert_eq!(errs.len(), 1, "{errs:?}");
        assert!(
            errs[0].starts_with("backend.localfs_fsync: invalid value in CALLFS_BACKEND__LOCALFS_FSYNC"),
            "{errs:?}"
        );
    }

    #[test]
    fn every_conversion_error_is_reported_with_validation_errors() {
        let (_dir, path) = yaml_file(
            &VALID_YAML
                .replace("auth:\n  api_key_users:\n    alice: \"dev-key-at-least-16-chars\"\n", "auth:\n")
                .replace("server:\n", "server:\n  max_header_bytes: lots\n"),
        );
        let errs =
            load_err(&path, env(&[("CALLFS_SERVER__WRITE_TIMEOUT", "-5s"), ("CALLFS_ERASURE__DATA_SHARDS", "x")]));
        let has = |prefix: &str| errs.iter().any(|e| e.starts_with(prefix));
        assert!(has("server.write_timeout: invalid value in CALLFS_SERVER__WRITE_TIMEOUT"), "{errs:?}");
        assert!(has("erasure.data_shards: invalid value in CALLFS_ERASURE__DATA_SHARDS"), "{errs:?}");
        assert!(has("server.max_header_bytes: invalid value in "), "{errs:?}");
        assert!(has("auth: no API keys configured"), "{errs:?}");
        assert_eq!(errs.len(), 4, "{errs:?}");
    }

    #[test]
    fn section_replaced_by_a_scalar_is_an_error() {
        let (_dir, path) = yaml_file(VALID_YAML);
        let errs = load_err(&path, env(&[("CALLFS_LOG", "debug")]));
        assert!(errs[0].starts_with("log: invalid value in CALLFS_LOG"), "{errs:?}");
        let errs = load_err(&path, env(&[("CALLFS_SERVER__LISTEN_ADDR__PORT", "1")]));
        assert!(
            errs[0].starts_with("server.listen_addr: invalid value in CALLFS_SERVER__LISTEN_ADDR__PORT"),
            "{errs:?}"
        );
    }

    #[test]
    fn unknown_and_dropped_keys_warn_once_each() {
        let yaml = format!("{VALID_YAML}\nraft:\n  node_id: n1\n  peers: [a, b]\nextra_top: 1\n")
            .replace("  sqlite_path:", "  redis_addr: \"localhost:6379\"\n  sqlite_path:");
        let (_dir, path) = yaml_file(&yaml);
        let loaded = load_from(Some(&path), env(&[("CALLFS_DLM__REDIS_ADDR", "x:6379")])).unwrap();
        let mut w = loaded.warnings.clone();
        w.sort();
        assert_eq!(
            w,
            [
                "dlm.redis_addr: unknown key, ignored",
                "extra_top: unknown key, ignored",
                "metadata_store.redis_addr: unknown key, ignored",
                "raft: unknown key, ignored",
            ]
        );
    }

    #[test]
    fn map_sections_accept_any_entry_and_null_keeps_defaults() {
        let yaml = format!("{VALID_YAML}\nrate_limit:\nha: ~\n").replace(
            "  instance_id: \"node-1\"",
            "  instance_id: \"node-1\"\n  peer_endpoints:\n    any-name: \"https://n2:8443\"",
        );
        let (_dir, path) = yaml_file(&yaml);
        let loaded = load_from(
            Some(&path),
            env(&[("CALLFS_METADATA_STORE__TYPE", "postgres"), ("CALLFS_DLM__TYPE", "postgres")]),
        )
        .unwrap();
        assert!(loaded.warnings.is_empty(), "{:?}", loaded.warnings);
        assert_eq!(loaded.config.rate_limit.links_per_second, 100.0);
    }

    #[test]
    fn unquoted_numeric_keys_in_yaml_are_strings() {
        let yaml = VALID_YAML.replace("alice: \"dev-key-at-least-16-chars\"", "alice: 12345678901234567");
        let (_dir, path) = yaml_file(&yaml);
        let c = load_from(Some(&path), no_env()).unwrap().config;
        assert_eq!(c.auth.api_key_users["alice"], "12345678901234567");
    }

    #[test]
    fn normalizes_on_load() {
        let yaml = VALID_YAML.replace("protocol: \"http\"", "protocol: \"\"") + "dlm:\n  type: \"\"\n";
        let (_dir, path) = yaml_file(&yaml.replace("  type: \"sqlite\"", "  type: \"\""));
        let loaded = load_from(Some(&path), env(&[("CALLFS_BACKEND__DEFAULT_BACKEND", "")])).unwrap();
        let c = loaded.config;
        assert_eq!(c.server.protocol, "https");
        assert_eq!(c.backend.default_backend, "localfs");
        assert_eq!(c.metadata_store.kind, "sqlite");
        assert_eq!(c.dlm.kind, "local");
    }

    #[test]
    fn short_legacy_key_fails_naming_auth_api_keys() {
        let (_dir, path) = yaml_file(
            &VALID_YAML
                .replace("  api_key_users:\n    alice: \"dev-key-at-least-16-chars\"\n", "  api_keys: [\"short\"]\n"),
        );
        let errs = load_err(&path, no_env());
        assert_eq!(errs, ["auth.api_keys[0]: key shorter than 16 characters"]);
    }

    // Through `load`, as `main` calls it: the process environment, set inside a figment `Jail`.

    /// `VALID_YAML` without its API key, as `./config.yaml` of the jail.
    fn jail_config(jail: &figment::Jail) -> figment::Result<()> {
        jail.create_file("config.yaml", &VALID_YAML.replace("alice: \"dev-key-at-least-16-chars\"", ""))?;
        Ok(())
    }

    #[test]
    fn jail_env_values_are_taken_verbatim() {
        figment::Jail::expect_with(|jail| {
            jail_config(jail)?;
            jail.set_env("CALLFS_AUTH__API_KEY_USERS__ALICE", "0123456789012345");
            jail.set_env("CALLFS_AUTH__API_KEY_USERS__BOB", "\"bob-key-0123456789\"");
            jail.set_env("CALLFS_AUTH__INTERNAL_PROXY_SECRET", " padded-secret-0123 ");
            jail.set_env("CALLFS_SERVER__EXTERNAL_URL", "1.50");
            let loaded = load(None).unwrap();
            assert_eq!(loaded.source.as_deref(), Some(Path::new("./config.yaml")));
            let c = loaded.config;
            assert_eq!(c.auth.api_key_users["alice"], "0123456789012345");
            assert_eq!(c.auth.api_key_users["bob"], "\"bob-key-0123456789\"");
            assert_eq!(c.auth.internal_proxy_secret, " padded-secret-0123 ");
            assert_eq!(c.server.external_url, "1.50");
            Ok(())
        });
    }

    #[test]
    fn jail_env_names_keep_dots_case_and_unicode() {
        figment::Jail::expect_with(|jail| {
            jail_config(jail)?;
            jail.set_env("CALLFS_AUTH__API_KEY_USERS__ÉMILE", "emile-key-0123456789");
            jail.set_env("CALLFS_INSTANCE_DISCOVERY__PEER_ENDPOINTS__NODE-2.DC1", "https://10.0.0.2:8443");
            jail.set_env("CALLFS_METADATA_STORE__TYPE", "postgres");
            jail.set_env("CALLFS_DLM__TYPE", "postgres");
            jail.set_env("callfs_log__level", "bogus");
            jail.set_env("CALLFS_log__FORMAT", "json");
            let loaded = load(None).unwrap();
            let c = loaded.config;
            assert_eq!(c.identities(), [("émile".to_string(), "emile-key-0123456789".to_string())]);
            assert_eq!(c.instance_discovery.peer_endpoints.keys().collect::<Vec<_>>(), ["node-2.dc1"]);
            assert_eq!((c.log.level.as_str(), c.log.format.as_str()), ("info", "json"), "callfs_ is not the prefix");
            Ok(())
        });
    }

    #[test]
    fn jail_env_whole_map_replaces_file_then_entries_merge() {
        figment::Jail::expect_with(|jail| {
            jail.create_file("config.yaml", VALID_YAML)?;
            jail.set_env("CALLFS_AUTH__API_KEY_USERS", r#"{"Dave": "dave-key-0123456789"}"#);
            jail.set_env("CALLFS_AUTH__API_KEY_USERS__ERIN", "erin-key-0123456789");
            let ids: Vec<String> = load(None).unwrap().config.identities().into_iter().map(|(id, _)| id).collect();
            assert_eq!(ids, ["Dave", "erin"], "the file's alice is replaced");
            jail.set_env("CALLFS_AUTH__API_KEY_USERS", "alice=k");
            let errs = load(None).unwrap_err();
            assert!(errs[0].starts_with(
                "auth.api_key_users: invalid value in CALLFS_AUTH__API_KEY_USERS: expected a JSON object"
            ));
            Ok(())
        });
    }

    #[test]
    fn jail_env_unknown_keys_and_empty_segments_warn() {
        figment::Jail::expect_with(|jail| {
            jail.create_file("config.yaml", VALID_YAML)?;
            jail.set_env("CALLFS_NOPE", "1");
            jail.set_env("CALLFS_SERVER__NOPE__DEEPER", "1");
            jail.set_env("CALLFS_DLM__REDIS_PASSWORD", "x");
            jail.set_env("CALLFS_LOG____LEVEL", "debug");
            let mut w = load(None).unwrap().warnings;
            // The test harness's own CALLFS_TEST_* variables (a PostgreSQL DSN, say) are ambient here.
            w.retain(|warning| !warning.starts_with("test_"));
            w.sort();
            assert_eq!(
                w,
                [
                    "CALLFS_LOG____LEVEL: does not name a configuration key, ignored",
                    "dlm.redis_password: unknown key, ignored",
                    "nope: unknown key, ignored",
                    "server.nope: unknown key, ignored",
                ]
            );
            Ok(())
        });
    }

    #[test]
    fn jail_env_conversion_errors_name_the_variable_as_spelled() {
        figment::Jail::expect_with(|jail| {
            jail.create_file("config.yaml", VALID_YAML)?;
            jail.set_env("CALLFS_server__Read_Timeout", "soon");
            jail.set_env("CALLFS_INSTANCE_DISCOVERY__PEER_ENDPOINTS__N2__URL", "https://n2:8443");
            jail.set_env("CALLFS_RATE_LIMIT__API_BURST", "1e3");
            let errs = load(None).unwrap_err();
            let has = |prefix: &str, var: &str| {
                errs.iter().any(|e| e.starts_with(prefix) && e.contains(&format!(" in {var}: ")))
            };
            assert!(has("server.read_timeout: invalid value", "CALLFS_server__Read_Timeout"), "{errs:?}");
            assert!(
                has("instance_discovery.peer_endpoints", "CALLFS_INSTANCE_DISCOVERY__PEER_ENDPOINTS__N2__URL"),
                "{errs:?}"
            );
            assert!(has("rate_limit.api_burst: invalid value", "CALLFS_RATE_LIMIT__API_BURST"), "{errs:?}");
            assert_eq!(errs.len(), 3, "{errs:?}");
            Ok(())
        });
    }

    #[test]
    fn jail_env_lists_and_empty_values() {
        figment::Jail::expect_with(|jail| {
            let yaml = VALID_YAML.replace("server:\n", "server:\n  trusted_proxies: [10.0.0.1]\n");
            jail.create_file("config.yaml", &format!("{yaml}\nmetrics:\n  listen_addr: \":9090\"\n"))?;
            assert_eq!(load(None).unwrap().config.server.trusted_proxies, ["10.0.0.1"]);
            jail.set_env("CALLFS_METRICS__LISTEN_ADDR", "");
            jail.set_env("CALLFS_AUTH__API_KEYS", "first-legacy-key-0000, second-legacy-key-000");
            let c = load(None).unwrap().config;
            assert_eq!(c.metrics.listen_addr, "");
            assert_eq!(c.auth.api_keys, ["first-legacy-key-0000", "second-legacy-key-000"]);
            jail.set_env("CALLFS_SERVER__TRUSTED_PROXIES", r#"["10.0.0.0/8", "::1"]"#);
            assert_eq!(load(None).unwrap().config.server.trusted_proxies, ["10.0.0.0/8", "::1"]);
            jail.set_env("CALLFS_SERVER__TRUSTED_PROXIES", "");
            assert!(load(None).unwrap().config.server.trusted_proxies.is_empty());
            Ok(())
        });
    }
}
