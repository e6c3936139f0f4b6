//! `CALLFS_*` environment variables merged over the configuration by figment (`config.md` §1).
//!
//! `CALLFS_A__B_C=v` sets key `a.b_c` to the string `v`: the prefix is stripped, the rest lowercased and split on `__`.
//! Values stay strings; the field deserializers convert them. A map section given as a whole
//! (`CALLFS_AUTH__API_KEY_USERS={"Alice":"…"}`) replaces the map; per-entry variables merge into it.
//!
//! Each variable is a figment provider named after it, merged shallow keys first: figment nests and merges, and
//! `Figment::find_metadata` tells which variable set a value that does not convert. Only the name and value reading is
//! ours: figment's `Env::prefixed("CALLFS_").split("__")` breaks these rules (each pinned by a test below):
//! - it parses values, so `0123456789012345` becomes the number 123456789012345 (a 16-character key turned into a
//!   15-character one), `"k"` loses its quotes and ` k ` its blanks: keys and secrets would silently change;
//! - it takes `callfs_…` as well (the prefix is matched case-insensitively) and lowercases ASCII letters only;
//! - it also nests on `.`, so the peer `node-2.dc1` of `CALLFS_INSTANCE_DISCOVERY__PEER_ENDPOINTS__NODE-2.DC1` breaks;
//! - it drops a name with an empty segment (`CALLFS_SERVER____X`) without a word;
//! - a figment merge never replaces a map, it merges into it, so a whole map is merged as an empty value first.

use figment::value::{Dict, Map, Value};
use figment::{Figment, Metadata, Profile, Provider};

use super::MAP_SECTIONS;

pub const PREFIX: &str = "CALLFS_";

/// Problems found while reading the variables.
#[derive(Debug, Default)]
pub struct Problems {
    pub errors: Vec<String>,
    pub warnings: Vec<String>,
}

/// The process environment (names that are not Unicode cannot be `CALLFS_*` and are skipped).
pub fn process_vars() -> impl Iterator<Item = (String, String)> {
    std::env::vars_os().filter_map(|(k, v)| Some((k.into_string().ok()?, v.to_string_lossy().into_owned())))
}

/// Merges every `CALLFS_*` variable of `vars` over `figment`, shallow keys first (then by name).
pub fn merge(mut figment: Figment, vars: impl IntoIterator<Item = (String, String)>) -> (Figment, Problems) {
    let mut problems = Problems::default();
    let mut found: Vec<Var> = Vec::new();
    for (name, value) in vars {
        let Some(rest) = name.strip_prefix(PREFIX) else {
            continue;
        };
        let path: Vec<String> = rest.to_lowercase().split("__").map(str::to_string).collect();
        if path.iter().any(String::is_empty) {
            problems.warnings.push(format!("{name}: does not name a configuration key, ignored"));
            continue;
        }
        found.push(Var { name, path, value: Value::from(value) });
    }
    found.sort_by(|a, b| a.path.len().cmp(&b.path.len()).then_with(|| a.name.cmp(&b.name)));

    for var in found {
        let dotted = var.path.join(".");
        if !MAP_SECTIONS.contains(&dotted.as_str()) {
            figment = figment.merge(var);
            continue;
        }
        let text = var.value.as_str().unwrap_or_default();
        match map_value(text) {
            Ok(map) => {
                let clear = Var { value: Value::from(String::new()), ..var.clone() };
                figment = figment.merge(clear).merge(Var { value: map, ..var });
            }
            Err(problem) => problems.errors.push(format!("{dotted}: invalid value in {}: {problem}", var.name)),
        }
    }
    (figment, problems)
}

/// The variable named by `metadata`, when a variable provided the value.
pub fn variable(metadata: &Metadata) -> Option<&str> {
    Some(metadata.name.as_ref()).filter(|name| name.starts_with(PREFIX))
}

/// One variable as a figment provider: its value at its key path, under its own name.
#[derive(Debug, Clone)]
struct Var {
    name: String,
    path: Vec<String>,
    value: Value,
}

impl Provider for Var {
    fn metadata(&self) -> Metadata {
        Metadata::named(self.name.clone())
    }

    fn data(&self) -> Result<Map<Profile, Dict>, figment::Error> {
        // Nested by hand rather than by a dotted key: a segment may itself contain a `.`.
        let mut dict = Dict::new();
        let (last, parents) = self.path.split_last().ok_or_else(|| figment::Error::from("empty key"))?;
        dict.insert(last.clone(), self.value.clone());
        for key in parents.iter().rev() {
            dict = Dict::from([(key.clone(), Value::from(dict))]);
        }
        Ok(Profile::Default.collect(dict))
    }
}

/// A whole map from one variable: a JSON object, or the empty string for an empty map.
fn map_value(value: &str) -> Result<Value, String> {
    let t = value.trim();
    if t.is_empty() {
        return Ok(Value::from(Dict::new()));
    }
    if !t.starts_with('{') {
        return Err("expected a JSON object (or set single entries with <VARIABLE>__<ID>)".to_string());
    }
    match serde_json::from_str::<serde_json::Value>(t) {
        Ok(v @ serde_json::Value::Object(_)) => Value::serialize(v).map_err(|e| e.to_string()),
        Ok(_) => Err("expected a JSON object".to_string()),
        Err(e) => Err(format!("invalid JSON object: {e}")),
    }
}

#[cfg(test)]
// `figment::Jail` closures return `figment::Result`, whose error is large.
#[allow(clippy::result_large_err)]
mod tests {
    use super::*;
    use figment::providers::{Env, Serialized};
    use figment::Jail;
    use serde_json::json;

    fn vars(list: &[(&str, &str)]) -> Vec<(String, String)> {
        list.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect()
    }

    /// `base` with `list` merged over it, as JSON, and the problems found.
    fn apply(base: serde_json::Value, list: &[(&str, &str)]) -> (serde_json::Value, Figment, Problems) {
        let (figment, problems) = merge(Figment::from(Serialized::defaults(base)), vars(list));
        (figment.extract().unwrap(), figment, problems)
    }

    fn origin(figment: &Figment, key: &str) -> Option<String> {
        figment.find_metadata(key).and_then(variable).map(str::to_string)
    }

    #[test]
    fn nests_on_double_underscore_and_lowercases() {
        let (tree, figment, p) = apply(
            json!({"server": {"listen_addr": ":8443", "protocol": "https"}}),
            &[
                ("CALLFS_SERVER__LISTEN_ADDR", ":9999"),
                ("CALLFS_BACKEND__LOCALFS_ROOT_PATH", "/data"),
                ("CALLFS_AUTH__API_KEY_USERS__ALICE", "k"),
                ("OTHER_VAR", "x"),
            ],
        );
        assert!(p.errors.is_empty() && p.warnings.is_empty());
        assert_eq!(tree["server"], json!({"listen_addr": ":9999", "protocol": "https"}));
        assert_eq!(tree["backend"]["localfs_root_path"], "/data");
        assert_eq!(tree["auth"]["api_key_users"]["alice"], "k");
        assert_eq!(origin(&figment, "server.listen_addr").as_deref(), Some("CALLFS_SERVER__LISTEN_ADDR"));
        assert_eq!(origin(&figment, "server.protocol"), None);
    }

    #[test]
    fn whole_map_object_replaces_then_entries_merge() {
        let (tree, _, p) = apply(
            json!({"auth": {"api_key_users": {"old": "x"}}}),
            &[("CALLFS_AUTH__API_KEY_USERS__BOB", "b"), ("CALLFS_AUTH__API_KEY_USERS", r#"{"Alice": "a"}"#)],
        );
        assert!(p.errors.is_empty());
        assert_eq!(tree["auth"]["api_key_users"], json!({"Alice": "a", "bob": "b"}));
        let (tree, _, _) =
            apply(json!({"auth": {"api_key_users": {"old": "x"}}}), &[("CALLFS_AUTH__API_KEY_USERS", " ")]);
        assert_eq!(tree["auth"]["api_key_users"], json!({}));
    }

    #[test]
    fn bad_map_value_names_the_variable() {
        let (_, _, p) = apply(json!({}), &[("CALLFS_INSTANCE_DISCOVERY__PEER_ENDPOINTS", "n2=http://x")]);
        assert_eq!(p.errors.len(), 1);
        assert!(p.errors[0].starts_with(
            "instance_discovery.peer_endpoints: invalid value in CALLFS_INSTANCE_DISCOVERY__PEER_ENDPOINTS"
        ));
        let (_, _, p) = apply(json!({}), &[("CALLFS_AUTH__API_KEY_USERS", "[1]")]);
        assert!(p.errors[0].contains("expected a JSON object"), "{:?}", p.errors);
    }

    #[test]
    fn empty_segments_are_ignored_with_a_warning() {
        let (tree, _, p) = apply(json!({}), &[("CALLFS_", "x"), ("CALLFS_SERVER____X", "y"), ("CALLFS_LOG__", "z")]);
        assert_eq!(p.warnings.len(), 3, "{:?}", p.warnings);
        assert_eq!(p.warnings[1], "CALLFS_SERVER____X: does not name a configuration key, ignored");
        assert_eq!(tree, json!({}));
    }

    #[test]
    fn deeper_variables_win_and_name_themselves() {
        // A section set as a scalar and a key inside it: the key, applied after, makes the section an object again.
        let (tree, figment, _) =
            apply(json!({"log": {"level": "info"}}), &[("CALLFS_LOG__LEVEL", "warn"), ("CALLFS_LOG", "debug")]);
        assert_eq!(tree["log"], json!({"level": "warn"}));
        assert_eq!(origin(&figment, "log").as_deref(), Some("CALLFS_LOG__LEVEL"));
        // A key turned into an object by a deeper variable is that variable's.
        let (tree, figment, _) =
            apply(json!({"server": {"listen_addr": ":1"}}), &[("CALLFS_SERVER__LISTEN_ADDR__PORT", "2")]);
        assert_eq!(tree["server"]["listen_addr"], json!({"port": "2"}));
        assert_eq!(origin(&figment, "server.listen_addr").as_deref(), Some("CALLFS_SERVER__LISTEN_ADDR__PORT"));
    }

    #[test]
    fn values_stay_verbatim_strings() {
        let cases =
            ["0123456789012345", "\"quoted\"", " padded ", "1.50", "'x'", "{a=b}", "true", "7", "a,b", "[1, 2]"];
        for value in cases {
            let (tree, _, _) = apply(json!({}), &[("CALLFS_AUTH__INTERNAL_PROXY_SECRET", value)]);
            assert_eq!(tree["auth"]["internal_proxy_secret"], value);
        }
    }

    // Why names and values are not read through figment's `Env::prefixed("CALLFS_").split("__")`: each case below is
    // what that provider does, next to what the spec asks (and `merge` does).

    #[test]
    fn figment_env_parses_values() {
        Jail::expect_with(|jail| {
            jail.set_env("CALLFS_AUTH__API_KEY_USERS__ALICE", "0123456789012345");
            jail.set_env("CALLFS_AUTH__INTERNAL_PROXY_SECRET", "\" padded secret \"");
            let env = Figment::from(Env::prefixed(PREFIX).split("__"));
            let key = env.find_value("auth.api_key_users.alice")?;
            assert_eq!(key.to_u128(), Some(123_456_789_012_345), "a number: the leading zero is gone");
            let secret = env.find_value("auth.internal_proxy_secret")?;
            assert_eq!(secret.as_str(), Some(" padded secret "), "quotes stripped");

            let (figment, _) = merge(Figment::new(), process_vars());
            assert_eq!(figment.extract_inner::<String>("auth.api_key_users.alice")?, "0123456789012345");
            assert_eq!(figment.extract_inner::<String>("auth.internal_proxy_secret")?, "\" padded secret \"");
            Ok(())
        });
    }

    #[test]
    fn figment_env_names_differ() {
        Jail::expect_with(|jail| {
            jail.set_env("callfs_log__level", "debug");
            jail.set_env("CALLFS_AUTH__API_KEY_USERS__ÉMILE", "k");
            jail.set_env("CALLFS_INSTANCE_DISCOVERY__PEER_ENDPOINTS__NODE-2.DC1", "https://n2:8443");
            jail.set_env("CALLFS_SERVER____X", "y");
            let env = Figment::from(Env::prefixed(PREFIX).split("__"));
            assert!(env.contains("log.level"), "lowercase prefix taken");
            assert!(env.contains("auth.api_key_users.Émile"), "only ASCII lowercased");
            assert!(env.contains("instance_discovery.peer_endpoints.node-2.dc1"), "nested on the dot");
            assert!(env.find_value("instance_discovery.peer_endpoints.node-2")?.as_dict().is_some());
            assert!(!env.contains("server.x"));

            let (figment, problems) = merge(Figment::new(), process_vars());
            let tree: serde_json::Value = figment.extract()?;
            assert!(tree.get("log").is_none());
            assert_eq!(tree["auth"]["api_key_users"], json!({"émile": "k"}));
            assert_eq!(tree["instance_discovery"]["peer_endpoints"], json!({"node-2.dc1": "https://n2:8443"}));
            assert_eq!(problems.warnings, ["CALLFS_SERVER____X: does not name a configuration key, ignored"]);
            Ok(())
        });
    }

    #[test]
    fn figment_merge_keeps_map_entries() {
        let base = Figment::from(Serialized::defaults(json!({"auth": {"api_key_users": {"old": "x"}}})));
        let merged = base.clone().merge(Serialized::default("auth.api_key_users", json!({"new": "y"})));
        assert!(merged.contains("auth.api_key_users.old"), "a plain merge keeps the old entry");
        let (replaced, _) = merge(base, vars(&[("CALLFS_AUTH__API_KEY_USERS", r#"{"new": "y"}"#)]));
        assert!(!replaced.contains("auth.api_key_users.old"));
    }
}
