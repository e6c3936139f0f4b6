//! Field deserializers that accept both native values (YAML/JSON) and strings (environment variables).
//!
//! Environment values always arrive as strings, so every typed field goes through one of these:
//! booleans `true/false/1/0` (case-insensitive), decimal integers, durations, comma-separated or
//! JSON-array lists, and maps given as a JSON object string.

use std::collections::BTreeMap;
use std::fmt;
use std::marker::PhantomData;
use std::str::FromStr;
use std::time::Duration;

use serde::de::{self, Deserializer, MapAccess, SeqAccess, Visitor};
use serde::Serializer;

use super::duration;

/// A string field that also takes numbers and booleans (`api_key: 1234567890123456` unquoted in YAML).
pub fn string<'de, D: Deserializer<'de>>(d: D) -> Result<String, D::Error> {
    d.deserialize_any(StringVisitor)
}

struct StringVisitor;

impl Visitor<'_> for StringVisitor {
    type Value = String;
    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str("a string")
    }
    fn visit_str<E: de::Error>(self, v: &str) -> Result<String, E> {
        Ok(v.to_string())
    }
    fn visit_string<E: de::Error>(self, v: String) -> Result<String, E> {
        Ok(v)
    }
    fn visit_bool<E: de::Error>(self, v: bool) -> Result<String, E> {
        Ok(v.to_string())
    }
    fn visit_i64<E: de::Error>(self, v: i64) -> Result<String, E> {
        Ok(v.to_string())
    }
    fn visit_u64<E: de::Error>(self, v: u64) -> Result<String, E> {
        Ok(v.to_string())
    }
    fn visit_f64<E: de::Error>(self, v: f64) -> Result<String, E> {
        Ok(v.to_string())
    }
    fn visit_char<E: de::Error>(self, v: char) -> Result<String, E> {
        Ok(v.to_string())
    }
}

/// `true/false/1/0`, case-insensitive, or a native boolean.
pub fn boolean<'de, D: Deserializer<'de>>(d: D) -> Result<bool, D::Error> {
    d.deserialize_any(BoolVisitor)
}

struct BoolVisitor;

impl Visitor<'_> for BoolVisitor {
    type Value = bool;
    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str("a boolean (true, false, 1 or 0)")
    }
    fn visit_bool<E: de::Error>(self, v: bool) -> Result<bool, E> {
        Ok(v)
    }
    fn visit_str<E: de::Error>(self, v: &str) -> Result<bool, E> {
        match v.trim().to_ascii_lowercase().as_str() {
            "true" | "1" => Ok(true),
            "false" | "0" => Ok(false),
            _ => Err(E::custom(format!("expected true, false, 1 or 0, got \"{v}\""))),
        }
    }
    fn visit_i64<E: de::Error>(self, v: i64) -> Result<bool, E> {
        match v {
            0 => Ok(false),
            1 => Ok(true),
            _ => Err(E::custom(format!("expected true, false, 1 or 0, got {v}"))),
        }
    }
    fn visit_u64<E: de::Error>(self, v: u64) -> Result<bool, E> {
        match v {
            0 => Ok(false),
            1 => Ok(true),
            _ => Err(E::custom(format!("expected true, false, 1 or 0, got {v}"))),
        }
    }
}

/// An integer of type `T` from a native number or a decimal string.
pub fn integer<'de, D, T>(d: D) -> Result<T, D::Error>
where
    D: Deserializer<'de>,
    T: TryFrom<i64> + TryFrom<u64> + FromStr,
{
    d.deserialize_any(IntVisitor(PhantomData))
}

struct IntVisitor<T>(PhantomData<T>);

impl<T> IntVisitor<T>
where
    T: TryFrom<i64> + TryFrom<u64> + FromStr,
{
    fn out_of_range<E: de::Error>(v: impl fmt::Display) -> E {
        if v.to_string().starts_with('-') {
            E::custom(format!("must not be negative, got {v}"))
        } else {
            E::custom(format!("integer {v} out of range"))
        }
    }
}

impl<T> Visitor<'_> for IntVisitor<T>
where
    T: TryFrom<i64> + TryFrom<u64> + FromStr,
{
    type Value = T;
    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str("an integer")
    }
    fn visit_i64<E: de::Error>(self, v: i64) -> Result<T, E> {
        T::try_from(v).map_err(|_| Self::out_of_range(v))
    }
    fn visit_u64<E: de::Error>(self, v: u64) -> Result<T, E> {
        T::try_from(v).map_err(|_| Self::out_of_range(v))
    }
    fn visit_f64<E: de::Error>(self, v: f64) -> Result<T, E> {
        if v.is_finite() && v.fract() == 0.0 && v.abs() < 9.0e15 {
            // Exact: whole number well inside the i64 range.
            self.visit_i64(v as i64)
        } else {
            Err(E::custom(format!("expected an integer, got {v}")))
        }
    }
    fn visit_str<E: de::Error>(self, v: &str) -> Result<T, E> {
        let t = v.trim();
        let digits = t.strip_prefix(['+', '-']).unwrap_or(t);
        if digits.is_empty() || !digits.bytes().all(|b| b.is_ascii_digit()) {
            return Err(E::custom(format!("expected a decimal integer, got \"{v}\"")));
        }
        if let Ok(n) = t.parse::<i64>() {
            return self.visit_i64(n);
        }
        if let Ok(n) = t.parse::<u64>() {
            return self.visit_u64(n);
        }
        t.parse::<T>().map_err(|_| Self::out_of_range(t))
    }
}

/// A finite number from a native number or a decimal string (rates).
pub fn float<'de, D: Deserializer<'de>>(d: D) -> Result<f64, D::Error> {
    d.deserialize_any(FloatVisitor)
}

struct FloatVisitor;

impl Visitor<'_> for FloatVisitor {
    type Value = f64;
    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str("a number")
    }
    fn visit_i64<E: de::Error>(self, v: i64) -> Result<f64, E> {
        Ok(v as f64)
    }
    fn visit_u64<E: de::Error>(self, v: u64) -> Result<f64, E> {
        Ok(v as f64)
    }
    fn visit_f64<E: de::Error>(self, v: f64) -> Result<f64, E> {
        if v.is_finite() {
            Ok(v)
        } else {
            Err(E::custom(format!("expected a finite number, got {v}")))
        }
    }
    fn visit_str<E: de::Error>(self, v: &str) -> Result<f64, E> {
        let t = v.trim();
        let plain =
            !t.is_empty() && t.bytes().all(|b| b.is_ascii_digit() || matches!(b, b'.' | b'-' | b'+' | b'e' | b'E'));
        match t.parse::<f64>() {
            Ok(n) if plain && n.is_finite() => Ok(n),
            _ => Err(E::custom(format!("expected a number, got \"{v}\""))),
        }
    }
}

/// `Duration` fields: strings like `30s`/`1m30s`/`1.5s`, bare numbers as seconds; serialized as a string.
pub mod duration_str {
    use super::*;

    pub fn serialize<S: Serializer>(d: &Duration, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&duration::format(*d))
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Duration, D::Error> {
        d.deserialize_any(DurationVisitor)
    }

    struct DurationVisitor;

    impl Visitor<'_> for DurationVisitor {
        type Value = Duration;
        fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
            f.write_str("a duration such as 30s, 1m30s or 300ms")
        }
        fn visit_str<E: de::Error>(self, v: &str) -> Result<Duration, E> {
            duration::parse(v).map_err(E::custom)
        }
        fn visit_u64<E: de::Error>(self, v: u64) -> Result<Duration, E> {
            Ok(Duration::from_secs(v))
        }
        fn visit_i64<E: de::Error>(self, v: i64) -> Result<Duration, E> {
            u64::try_from(v)
                .map(Duration::from_secs)
                .map_err(|_| E::custom(format!("invalid duration {v}: must not be negative")))
        }
        fn visit_f64<E: de::Error>(self, v: f64) -> Result<Duration, E> {
            duration::from_secs_f64(v).map_err(E::custom)
        }
    }
}

/// A list of strings: a native sequence, a comma-separated string, or a JSON array string starting with `[`.
/// The empty string is the empty list.
pub fn list<'de, D: Deserializer<'de>>(d: D) -> Result<Vec<String>, D::Error> {
    d.deserialize_any(ListVisitor)
}

/// Splits `a, b,,c` into `["a","b","c"]` or parses a JSON array of scalars.
pub fn parse_list(v: &str) -> Result<Vec<String>, String> {
    let t = v.trim();
    if t.starts_with('[') {
        let items: Vec<serde_json::Value> = serde_json::from_str(t).map_err(|e| format!("invalid JSON array: {e}"))?;
        return items
            .into_iter()
            .map(|item| match item {
                serde_json::Value::String(s) => Ok(s),
                serde_json::Value::Number(n) => Ok(n.to_string()),
                serde_json::Value::Bool(b) => Ok(b.to_string()),
                _ => Err("JSON array items must be strings".to_string()),
            })
            .collect();
    }
    Ok(t.split(',').map(str::trim).filter(|s| !s.is_empty()).map(str::to_string).collect())
}

struct ListVisitor;

impl<'de> Visitor<'de> for ListVisitor {
    type Value = Vec<String>;
    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str("a list of strings or a comma-separated string")
    }
    fn visit_str<E: de::Error>(self, v: &str) -> Result<Vec<String>, E> {
        parse_list(v).map_err(E::custom)
    }
    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Vec<String>, A::Error> {
        let mut out = Vec::new();
        while let Some(item) = seq.next_element::<LenientString>()? {
            out.push(item.0);
        }
        Ok(out)
    }
    fn visit_unit<E: de::Error>(self) -> Result<Vec<String>, E> {
        Ok(Vec::new())
    }
}

/// An id → string map: a native map (values may be numbers), a JSON object string, or the empty string (empty map).
pub fn map<'de, D: Deserializer<'de>>(d: D) -> Result<BTreeMap<String, String>, D::Error> {
    d.deserialize_any(MapVisitor)
}

struct MapVisitor;

impl<'de> Visitor<'de> for MapVisitor {
    type Value = BTreeMap<String, String>;
    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str("a map of strings")
    }
    fn visit_map<A: MapAccess<'de>>(self, mut access: A) -> Result<Self::Value, A::Error> {
        let mut out = BTreeMap::new();
        while let Some((k, v)) = access.next_entry::<LenientString, LenientString>()? {
            out.insert(k.0, v.0);
        }
        Ok(out)
    }
    fn visit_str<E: de::Error>(self, v: &str) -> Result<Self::Value, E> {
        let t = v.trim();
        if t.is_empty() {
            return Ok(BTreeMap::new());
        }
        if !t.starts_with('{') {
            return Err(E::custom("expected a map or a JSON object"));
        }
        let obj: BTreeMap<String, serde_json::Value> =
            serde_json::from_str(t).map_err(|e| E::custom(format!("invalid JSON object: {e}")))?;
        obj.into_iter()
            .map(|(k, v)| match v {
                serde_json::Value::String(s) => Ok((k, s)),
                serde_json::Value::Number(n) => Ok((k, n.to_string())),
                _ => Err(E::custom(format!("value of \"{k}\" must be a string"))),
            })
            .collect()
    }
    fn visit_unit<E: de::Error>(self) -> Result<Self::Value, E> {
        Ok(BTreeMap::new())
    }
}

struct LenientString(String);

impl<'de> serde::Deserialize<'de> for LenientString {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        string(d).map(LenientString)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde::Deserialize;

    #[derive(Deserialize, Debug)]
    struct T {
        #[serde(deserialize_with = "boolean", default)]
        b: bool,
        #[serde(deserialize_with = "integer", default)]
        u: u64,
        #[serde(deserialize_with = "integer", default)]
        i: i64,
        #[serde(deserialize_with = "float", default)]
        f: f64,
        #[serde(with = "duration_str", default)]
        d: Duration,
        #[serde(deserialize_with = "list", default)]
        l: Vec<String>,
        #[serde(deserialize_with = "map", default)]
        m: BTreeMap<String, String>,
        #[serde(deserialize_with = "string", default)]
        s: String,
    }

    fn de(json: &str) -> Result<T, String> {
        serde_json::from_str(json).map_err(|e| e.to_string())
    }

    #[test]
    fn booleans_from_strings_and_natives() {
        for (text, want) in [("\"TRUE\"", true), ("\"0\"", false), ("\"1\"", true), ("false", false), ("1", true)] {
            assert_eq!(de(&format!("{{\"b\":{text}}}")).unwrap().b, want, "{text}");
        }
        assert!(de("{\"b\":\"yes\"}").unwrap_err().contains("expected true, false, 1 or 0"));
    }

    #[test]
    fn integers_from_strings_and_natives() {
        assert_eq!(de("{\"u\":\"42\"}").unwrap().u, 42);
        assert_eq!(de("{\"u\":42}").unwrap().u, 42);
        assert_eq!(de("{\"i\":\"-3\"}").unwrap().i, -3);
        assert!(de("{\"u\":\"-3\"}").unwrap_err().contains("negative"));
        assert!(de("{\"u\":\"4k\"}").is_err());
        assert!(de("{\"u\":1.5}").is_err());
        assert!(de("{\"u\":\"\"}").is_err());
    }

    #[test]
    fn floats() {
        assert_eq!(de("{\"f\":\"2.5\"}").unwrap().f, 2.5);
        assert_eq!(de("{\"f\":-1}").unwrap().f, -1.0);
        assert!(de("{\"f\":\"NaN\"}").is_err());
        assert!(de("{\"f\":\"inf\"}").is_err());
    }

    #[test]
    fn durations() {
        assert_eq!(de("{\"d\":\"1m30s\"}").unwrap().d, Duration::from_secs(90));
        assert_eq!(de("{\"d\":15}").unwrap().d, Duration::from_secs(15));
        assert_eq!(de("{\"d\":0.25}").unwrap().d, Duration::from_millis(250));
        assert!(de("{\"d\":-1}").is_err());
        assert!(de("{\"d\":\"soon\"}").unwrap_err().contains("invalid duration"));
    }

    #[test]
    fn lists() {
        assert_eq!(de("{\"l\":\"a, b,,c\"}").unwrap().l, ["a", "b", "c"]);
        assert_eq!(de("{\"l\":\"[\\\"x,y\\\",\\\"z\\\"]\"}").unwrap().l, ["x,y", "z"]);
        assert_eq!(de("{\"l\":[\"p\",7]}").unwrap().l, ["p", "7"]);
        assert!(de("{\"l\":\"\"}").unwrap().l.is_empty());
        assert!(de("{\"l\":\"[oops\"}").is_err());
    }

    #[test]
    fn maps() {
        let m = de("{\"m\":{\"a\":\"x\",\"b\":5}}").unwrap().m;
        assert_eq!(m.get("b").map(String::as_str), Some("5"));
        let m = de("{\"m\":\"{\\\"Alice\\\":\\\"k\\\"}\"}").unwrap().m;
        assert_eq!(m.get("Alice").map(String::as_str), Some("k"));
        assert!(de("{\"m\":\"\"}").unwrap().m.is_empty());
        assert!(de("{\"m\":\"alice=k\"}").is_err());
        assert!(de("{\"m\":{\"a\":[1]}}").is_err());
    }

    #[test]
    fn strings_accept_scalars() {
        assert_eq!(de("{\"s\":1234567890123456}").unwrap().s, "1234567890123456");
        assert_eq!(de("{\"s\":true}").unwrap().s, "true");
        assert!(de("{\"s\":[1]}").is_err());
    }
}
