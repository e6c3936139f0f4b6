//! `CALLFS_*` environment variables as an overlay on the configuration tree (`config.md` §1).
//!
//! `CALLFS_A__B_C=v` sets key `a.b_c` to the string `v`: the prefix is stripped, the rest lowercased and
//! split on `__`. Values stay strings; the field deserializers convert them. A map section given as a
//! whole (`CALLFS_AUTH__API_KEY_USERS={"Alice":"…"}`) replaces the map; per-entry variables merge into it.

use serde_json::{Map, Value};

use super::MAP_SECTIONS;

pub const PREFIX: &str = "CALLFS_";

/// Which variable set which key path, for naming the variable in conversion errors.
pub struct Origin {
    pub path: Vec<String>,
    pub var: String,
}

#[derive(Default)]
pub struct Overlay {
    pub origins: Vec<Origin>,
    pub errors: Vec<String>,
    pub warnings: Vec<String>,
}

impl Overlay {
    /// The variable that set `path`, a parent of it or a child of it.
    pub fn origin_of(&self, path: &[String]) -> Option<&str> {
        self.origins
            .iter()
            .rev()
            .find(|o| o.path.starts_with(path) || path.starts_with(&o.path))
            .map(|o| o.var.as_str())
    }
}

/// Applies every `CALLFS_*` variable of `vars` to `tree` (an object), shallow keys first.
pub fn apply(tree: &mut Value, vars: impl IntoIterator<Item = (String, String)>) -> Overlay {
    let mut overlay = Overlay::default();
    let mut entries: Vec<(Vec<String>, String, String)> = Vec::new();
    for (name, value) in vars {
        let Some(rest) = name.strip_prefix(PREFIX) else {
            continue;
        };
        let path: Vec<String> = rest.to_lowercase().split("__").map(str::to_string).collect();
        if path.iter().any(String::is_empty) {
            overlay.warnings.push(format!("{name}: does not name a configuration key, ignored"));
            continue;
        }
        entries.push((path, name, value));
    }
    entries.sort_by(|a, b| a.0.len().cmp(&b.0.len()).then_with(|| a.1.cmp(&b.1)));

    for (path, name, value) in entries {
        let dotted = path.join(".");
        let new_value = if MAP_SECTIONS.contains(&dotted.as_str()) {
            match map_value(&value) {
                Ok(v) => v,
                Err(problem) => {
                    overlay.errors.push(format!("{dotted}: invalid value in {name}: {problem}"));
                    continue;
                }
            }
        } else {
            Value::String(value)
        };
        set(tree, &path, new_value);
        overlay.origins.push(Origin { path, var: name });
    }
    overlay
}

/// A whole map from one variable: a JSON object, or the empty string for an empty map.
fn map_value(value: &str) -> Result<Value, String> {
    let t = value.trim();
    if t.is_empty() {
        return Ok(Value::Object(Map::new()));
    }
    if !t.starts_with('{') {
        return Err("expected a JSON object (or set single entries with <VARIABLE>__<ID>)".to_string());
    }
    match serde_json::from_str::<Value>(t) {
        Ok(v @ Value::Object(_)) => Ok(v),
        Ok(_) => Err("expected a JSON object".to_string()),
        Err(e) => Err(format!("invalid JSON object: {e}")),
    }
}

/// Sets `path` in `tree`, turning missing or non-object intermediate nodes into objects.
fn set(tree: &mut Value, path: &[String], value: Value) {
    let mut node = tree;
    for key in &path[..path.len() - 1] {
        if !node.is_object() {
            *node = Value::Object(Map::new());
        }
        let Value::Object(obj) = node else {
            return;
        };
        node = obj.entry(key.clone()).or_insert_with(|| Value::Object(Map::new()));
    }
    if !node.is_object() {
        *node = Value::Object(Map::new());
    }
    if let Value::Object(obj) = node {
        obj.insert(path[path.len() - 1].clone(), value);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn vars(list: &[(&str, &str)]) -> Vec<(String, String)> {
        list.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect()
    }

    #[test]
    fn nests_on_double_underscore_and_lowercases() {
        let mut tree = json!({"server": {"listen_addr": ":8443"}});
        let o = apply(
            &mut tree,
            vars(&[
                ("CALLFS_SERVER__LISTEN_ADDR", ":9999"),
                ("CALLFS_BACKEND__LOCALFS_ROOT_PATH", "/data"),
                ("CALLFS_AUTH__API_KEY_USERS__ALICE", "k"),
                ("OTHER_VAR", "x"),
            ]),
        );
        assert!(o.errors.is_empty());
        assert_eq!(tree["server"]["listen_addr"], ":9999");
        assert_eq!(tree["backend"]["localfs_root_path"], "/data");
        assert_eq!(tree["auth"]["api_key_users"]["alice"], "k");
        assert_eq!(o.origin_of(&["server".into(), "listen_addr".into()]), Some("CALLFS_SERVER__LISTEN_ADDR"));
        assert_eq!(o.origin_of(&["other".into()]), None);
    }

    #[test]
    fn whole_map_object_replaces_then_entries_merge() {
        let mut tree = json!({"auth": {"api_key_users": {"old": "x"}}});
        let o = apply(
            &mut tree,
            vars(&[("CALLFS_AUTH__API_KEY_USERS__BOB", "b"), ("CALLFS_AUTH__API_KEY_USERS", r#"{"Alice": "a"}"#)]),
        );
        assert!(o.errors.is_empty());
        assert_eq!(tree["auth"]["api_key_users"], json!({"Alice": "a", "bob": "b"}));
    }

    #[test]
    fn bad_map_value_names_the_variable() {
        let mut tree = json!({});
        let o = apply(&mut tree, vars(&[("CALLFS_INSTANCE_DISCOVERY__PEER_ENDPOINTS", "n2=http://x")]));
        assert_eq!(o.errors.len(), 1);
        assert!(o.errors[0].starts_with(
            "instance_discovery.peer_endpoints: invalid value in CALLFS_INSTANCE_DISCOVERY__PEER_ENDPOINTS"
        ));
    }

    #[test]
    fn empty_segments_are_ignored_with_a_warning() {
        let mut tree = json!({});
        let o = apply(&mut tree, vars(&[("CALLFS_", "x"), ("CALLFS_SERVER____X", "y")]));
        assert_eq!(o.warnings.len(), 2);
        assert_eq!(tree, json!({}));
    }
}
