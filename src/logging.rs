//! Log output (`observability.md` §2): an `env_logger` backend rendering one `json` or `console` line per event on stderr.
//!
//! Events are written with the `log` macros and structured key-values, e.g.
//! `log::info!(method = m, status = 201; "HTTP request")`. [`render`] turns a record into a line and is pure, so both
//! formats are unit-tested without installing a global logger.

use std::io::{self, Write as _};
use std::time::Duration;

use chrono::{DateTime, SecondsFormat, Utc};
use log::kv::{self, VisitSource, VisitValue};
use log::{Level, LevelFilter, Record};
use serde::Serializer as _;
use serde_json::ser::{CompactFormatter, Formatter};

/// Our crates: they log at the configured level; every other crate at `warn` or above.
const OWN_CRATES: [&str; 2] = ["callfs", "callfs_actors"];

/// Names of the common fields; a key-value with one of these names is written as `field.<name>` so it cannot replace them.
const COMMON_FIELDS: [&str; 4] = ["level", "ts", "caller", "msg"];

/// Output format (`log.format`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Format {
    /// One JSON object per line.
    Json,
    /// Tab-separated `ts`, `LEVEL`, `caller`, `msg`, then the fields as one compact JSON object.
    Console,
}

impl Format {
    /// Parses `json` or `console` (case-insensitive).
    pub fn parse(s: &str) -> Option<Format> {
        match s.trim().to_ascii_lowercase().as_str() {
            "json" => Some(Format::Json),
            "console" => Some(Format::Console),
            _ => None,
        }
    }
}

/// Parses `debug`, `info`, `warn` or `error` (case-insensitive).
pub fn parse_level(s: &str) -> Option<LevelFilter> {
    match s.trim().to_ascii_lowercase().as_str() {
        "debug" => Some(LevelFilter::Debug),
        "info" => Some(LevelFilter::Info),
        "warn" => Some(LevelFilter::Warn),
        "error" => Some(LevelFilter::Error),
        _ => None,
    }
}

/// Installs the global logger. Unknown values (rejected earlier by configuration validation) fall back to `info` and
/// `console`. A second call is a no-op.
pub fn init(level: &str, format: &str) {
    let logger = build_logger(level, format);
    let max = logger.filter();
    // Err only when a logger is already installed (tests, repeated init): keep the first one.
    if log::set_boxed_logger(Box::new(logger)).is_ok() {
        log::set_max_level(max);
        // A panic is one log line in the configured format, never raw text in a JSON log.
        std::panic::set_hook(Box::new(|info| {
            let location = info.location().map(|l| format!("{}:{}", l.file(), l.line())).unwrap_or_default();
            let payload = info.payload();
            let what = payload
                .downcast_ref::<&str>()
                .map(|s| (*s).to_string())
                .or_else(|| payload.downcast_ref::<String>().cloned())
                .unwrap_or_default();
            log::error!(panic = what.as_str(), location = location.as_str(); "panic");
        }));
    }
}

/// The logger [`init`] installs, without installing it.
fn build_logger(level: &str, format: &str) -> env_logger::Logger {
    let level = parse_level(level).unwrap_or(LevelFilter::Info);
    let format = Format::parse(format).unwrap_or(Format::Console);
    let mut builder = env_logger::Builder::new();
    builder
        .target(env_logger::Target::Stderr)
        .write_style(env_logger::WriteStyle::Never)
        .filter_level(dependency_level(level));
    for own in OWN_CRATES {
        builder.filter_module(own, level);
    }
    builder.format(move |buf, record| {
        let line = render(record, format, Utc::now());
        buf.write_all(line.as_bytes())?;
        buf.write_all(b"\n")
    });
    builder.build()
}

/// Level for crates other than ours: the configured level, but never more verbose than `warn`.
fn dependency_level(level: LevelFilter) -> LevelFilter {
    level.min(LevelFilter::Warn)
}

/// Renders one event as a single line (no trailing newline), written into one buffer as the
/// key-values are visited (no per-field strings: the request log line is on every request).
pub fn render(record: &Record<'_>, format: Format, now: DateTime<Utc>) -> String {
    let ts = now.to_rfc3339_opts(SecondsFormat::Millis, true);
    let caller = caller(record);
    let msg = record.args().to_string();
    let level = level_name(record.level());
    let mut out = Vec::with_capacity(256);
    match format {
        Format::Json => {
            out.push(b'{');
            for (key, value) in [("level", level), ("ts", &ts), ("caller", &caller), ("msg", &msg)] {
                if key != "level" {
                    out.push(b',');
                }
                write_json_str(&mut out, key);
                out.push(b':');
                write_json_str(&mut out, value);
            }
            let mut fields = FieldWriter { out, empty: false };
            // The writer never fails; a failing source just yields the fields written so far.
            let _ = record.key_values().visit(&mut fields);
            out = fields.out;
            out.push(b'}');
        }
        Format::Console => {
            out.extend_from_slice(ts.as_bytes());
            out.push(b'\t');
            out.extend_from_slice(level.to_ascii_uppercase().as_bytes());
            out.push(b'\t');
            write_unquoted(&mut out, &caller);
            out.push(b'\t');
            write_unquoted(&mut out, &msg);
            let mark = out.len();
            out.extend_from_slice(b"\t{");
            let mut fields = FieldWriter { out, empty: true };
            let _ = record.key_values().visit(&mut fields);
            let empty = fields.empty;
            out = fields.out;
            if empty {
                out.truncate(mark);
            } else {
                out.push(b'}');
            }
        }
    }
    String::from_utf8(out).unwrap_or_default()
}

/// `s` as a JSON string escaped by [`LineSafe`].
fn write_json_str(out: &mut Vec<u8>, s: &str) {
    // Writing to a Vec cannot fail.
    let _ = serde_json::Serializer::with_formatter(&mut *out, LineSafe).serialize_str(s);
}

/// `s` escaped as inside a JSON string, without the quotes (console columns).
fn write_unquoted(out: &mut Vec<u8>, s: &str) {
    let start = out.len();
    write_json_str(out, s);
    out.remove(start);
    out.pop();
}

fn level_name(level: Level) -> &'static str {
    match level {
        Level::Error => "error",
        Level::Warn => "warn",
        // `trace` is below every configurable level; render it as debug should it ever pass.
        Level::Info => "info",
        Level::Debug | Level::Trace => "debug",
    }
}

/// `file:line` of the logging statement. Files inside this workspace are already relative (`src/http/middleware.rs`);
/// absolute paths of dependencies are cut to `<crate dir>/src/...`.
fn caller(record: &Record<'_>) -> String {
    let file = match record.file() {
        Some(f) => shorten_path(f),
        None => record.module_path().unwrap_or("unknown"),
    };
    match record.line() {
        Some(line) => format!("{file}:{line}"),
        None => file.to_owned(),
    }
}

fn shorten_path(file: &str) -> &str {
    if !file.starts_with('/') {
        return file;
    }
    match file.rfind("/src/") {
        Some(idx) => match file[..idx].rfind('/') {
            Some(start) => &file[start + 1..],
            None => file,
        },
        None => file.rsplit('/').next().unwrap_or(file),
    }
}

/// serde_json's compact output, whose strings escape what JSON requires (`"`, `\\`, U+0000–U+001F), plus `\\u` escapes
/// for DEL, NEL and the Unicode line/paragraph separators, so no value can ever start a new line in any viewer.
struct LineSafe;

impl Formatter for LineSafe {
    fn write_string_fragment<W: ?Sized + io::Write>(&mut self, writer: &mut W, fragment: &str) -> io::Result<()> {
        let mut rest = fragment;
        while let Some(at) = rest.find(['\u{7f}', '\u{85}', '\u{2028}', '\u{2029}']) {
            let c = rest[at..].chars().next().unwrap_or_default();
            writer.write_all(&rest.as_bytes()[..at])?;
            write!(writer, "\\u{:04x}", u32::from(c))?;
            rest = &rest[at + c.len_utf8()..];
        }
        CompactFormatter.write_string_fragment(writer, rest)
    }
}

/// Writes the key-values in order as `,"key":value` (no comma before the first when the object
/// is `empty` so far); common field names are renamed to `field.<name>`, absent optional fields
/// (`None`) left out; integers, floats and booleans stay JSON numbers/booleans, everything else is
/// a string.
struct FieldWriter {
    out: Vec<u8>,
    empty: bool,
}

impl<'kvs> VisitSource<'kvs> for FieldWriter {
    fn visit_pair(&mut self, key: kv::Key<'kvs>, value: kv::Value<'kvs>) -> Result<(), kv::Error> {
        let start = self.out.len();
        if !self.empty {
            self.out.push(b',');
        }
        let key = key.as_str();
        if COMMON_FIELDS.contains(&key) {
            write_json_str(&mut self.out, &format!("field.{key}"));
        } else {
            write_json_str(&mut self.out, key);
        }
        self.out.push(b':');
        let value_at = self.out.len();
        let mut field = ValueWriter { out: &mut self.out, null: false };
        let visited = value.visit(&mut field);
        let null = field.null;
        match visited {
            // `None` (null) is left out rather than written as null.
            Ok(()) if null => {
                self.out.truncate(start);
                return Ok(());
            }
            Ok(()) => {}
            Err(_) => {
                self.out.truncate(value_at);
                write_json_str(&mut self.out, &value.to_string());
            }
        }
        self.empty = false;
        Ok(())
    }
}

/// Writes one value as JSON; notes a null instead.
struct ValueWriter<'a> {
    out: &'a mut Vec<u8>,
    null: bool,
}

impl ValueWriter<'_> {
    fn json(&mut self) -> serde_json::Serializer<&mut Vec<u8>, LineSafe> {
        serde_json::Serializer::with_formatter(&mut *self.out, LineSafe)
    }
}

impl<'v> VisitValue<'v> for ValueWriter<'_> {
    fn visit_any(&mut self, value: kv::Value<'_>) -> Result<(), kv::Error> {
        write_json_str(self.out, &value.to_string());
        Ok(())
    }

    fn visit_null(&mut self) -> Result<(), kv::Error> {
        self.null = true;
        Ok(())
    }

    fn visit_u64(&mut self, value: u64) -> Result<(), kv::Error> {
        let _ = self.json().serialize_u64(value);
        Ok(())
    }

    fn visit_i64(&mut self, value: i64) -> Result<(), kv::Error> {
        let _ = self.json().serialize_i64(value);
        Ok(())
    }

    fn visit_u128(&mut self, value: u128) -> Result<(), kv::Error> {
        let _ = self.json().serialize_u128(value);
        Ok(())
    }

    fn visit_i128(&mut self, value: i128) -> Result<(), kv::Error> {
        let _ = self.json().serialize_i128(value);
        Ok(())
    }

    fn visit_f64(&mut self, value: f64) -> Result<(), kv::Error> {
        // NaN and infinities are not JSON numbers.
        if value.is_finite() {
            let _ = self.json().serialize_f64(value);
        } else {
            write_json_str(self.out, &value.to_string());
        }
        Ok(())
    }

    fn visit_bool(&mut self, value: bool) -> Result<(), kv::Error> {
        let _ = self.json().serialize_bool(value);
        Ok(())
    }

    fn visit_str(&mut self, value: &str) -> Result<(), kv::Error> {
        write_json_str(self.out, value);
        Ok(())
    }

    fn visit_char(&mut self, value: char) -> Result<(), kv::Error> {
        write_json_str(self.out, value.encode_utf8(&mut [0; 4]));
        Ok(())
    }
}

/// A duration as number + unit (`observability.md` §2.2): the largest of `ns`, `µs`, `ms`, `s` not exceeding the value, at
/// most 3 decimals (truncated), trailing zeros dropped: `52.3ms`, `850µs`, `1.5s`, `0s`.
pub fn format_duration(d: Duration) -> String {
    let nanos = d.as_nanos();
    if nanos == 0 {
        return "0s".to_owned();
    }
    let (unit_nanos, unit): (u128, &str) = if nanos >= 1_000_000_000 {
        (1_000_000_000, "s")
    } else if nanos >= 1_000_000 {
        (1_000_000, "ms")
    } else if nanos >= 1_000 {
        (1_000, "µs")
    } else {
        (1, "ns")
    };
    let whole = nanos / unit_nanos;
    let millis_of_unit = (nanos % unit_nanos) * 1000 / unit_nanos;
    if millis_of_unit == 0 {
        return format!("{whole}{unit}");
    }
    let frac = format!("{millis_of_unit:03}");
    format!("{whole}.{}{unit}", frac.trim_end_matches('0'))
}

/// A token shortened for logs: its first 8 characters followed by `...`.
pub fn short_token(token: &str) -> String {
    let mut out: String = token.chars().take(8).collect();
    out.push_str("...");
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use chrono::TimeZone;

    fn now() -> DateTime<Utc> {
        Utc.with_ymd_and_hms(2025, 7, 15, 10, 30, 0).unwrap() + chrono::Duration::milliseconds(52)
    }

    /// Renders a record built with `log::Record::builder()` and the given key-values.
    fn render_with(
        level: Level,
        msg: std::fmt::Arguments<'_>,
        kvs: &[(&str, kv::Value<'_>)],
        format: Format,
    ) -> String {
        let source: &dyn kv::Source = &kvs;
        let record = Record::builder()
            .level(level)
            .target("callfs::http::middleware")
            .file(Some("src/http/middleware.rs"))
            .line(Some(80))
            .module_path(Some("callfs::http::middleware"))
            .args(msg)
            .key_values(source)
            .build();
        render(&record, format, now())
    }

    fn parse(line: &str) -> serde_json::Value {
        serde_json::from_str(line).unwrap_or_else(|e| panic!("not JSON: {line}: {e}"))
    }

    #[test]
    fn json_request_line() {
        let kvs = [
            ("method", kv::Value::from("PUT")),
            ("path", kv::Value::from("/v1/files/reports/quarterly.pdf")),
            ("status", kv::Value::from(201u16)),
            ("duration", kv::Value::from("52.3ms")),
        ];
        let line = render_with(Level::Info, format_args!("HTTP request"), &kvs, Format::Json);
        assert_eq!(
            line,
            r#"{"level":"info","ts":"2025-07-15T10:30:00.052Z","caller":"src/http/middleware.rs:80","msg":"HTTP request","method":"PUT","path":"/v1/files/reports/quarterly.pdf","status":201,"duration":"52.3ms"}"#
        );
        let v = parse(&line);
        assert_eq!(v["status"], 201);
    }

    #[test]
    fn json_value_types() {
        let kvs = [
            ("count", kv::Value::from(-3i64)),
            ("big", kv::Value::from(u64::MAX)),
            ("ok", kv::Value::from(true)),
            ("ratio", kv::Value::from(0.5f64)),
            ("nan", kv::Value::from(f64::NAN)),
            ("c", kv::Value::from('x')),
            ("text", kv::Value::from("42")),
        ];
        let v = parse(&render_with(Level::Warn, format_args!("m"), &kvs, Format::Json));
        assert_eq!(v["level"], "warn");
        assert_eq!(v["count"], -3);
        assert_eq!(v["big"], u64::MAX);
        assert_eq!(v["ok"], true);
        assert_eq!(v["ratio"], 0.5);
        assert_eq!(v["nan"], "NaN");
        assert_eq!(v["c"], "x");
        assert_eq!(v["text"], "42", "a string stays a string");
    }

    #[test]
    fn display_and_debug_values_are_strings() {
        let addr: std::net::IpAddr = "192.168.1.10".parse().unwrap();
        let list = vec![1, 2];
        let kvs = [("remote_addr", kv::Value::from_display(&addr)), ("dbg", kv::Value::from_debug(&list))];
        let v = parse(&render_with(Level::Info, format_args!("m"), &kvs, Format::Json));
        assert_eq!(v["remote_addr"], "192.168.1.10");
        assert_eq!(v["dbg"], "[1, 2]");
    }

    #[test]
    fn macro_key_values_are_rendered() {
        // The same path the `log::info!(k = v; "msg")` macro takes, through a capturing logger.
        struct Capture(std::sync::Mutex<Vec<String>>);
        impl log::Log for Capture {
            fn enabled(&self, _: &log::Metadata<'_>) -> bool {
                true
            }
            fn log(&self, record: &Record<'_>) {
                self.0.lock().unwrap().push(render(record, Format::Json, now()));
            }
            fn flush(&self) {}
        }
        let capture = Capture(std::sync::Mutex::new(Vec::new()));
        let method = "PUT";
        let status: u16 = 201;
        log::info!(logger: capture, method = method, status = status, ok = true; "HTTP request");
        let lines = capture.0.lock().unwrap();
        let v = parse(&lines[0]);
        assert_eq!(v["msg"], "HTTP request");
        assert_eq!(v["method"], "PUT");
        assert_eq!(v["status"], 201);
        assert_eq!(v["ok"], true);
        assert!(v["caller"].as_str().unwrap().starts_with("src/logging.rs:"));
    }

    #[test]
    fn json_levels() {
        for (level, name) in
            [(Level::Error, "error"), (Level::Warn, "warn"), (Level::Info, "info"), (Level::Debug, "debug")]
        {
            let v = parse(&render_with(level, format_args!("x"), &[], Format::Json));
            assert_eq!(v["level"], name);
        }
    }

    #[test]
    fn json_escapes_injection() {
        let evil = "a\"b\\c\nd\re\tf\u{0}g\u{7f}h\u{2028}i\u{85}j";
        let kvs = [("user_agent", kv::Value::from(evil))];
        let line = render_with(Level::Info, format_args!("msg\n{{\"level\":\"error\"}}"), &kvs, Format::Json);
        assert!(!line.contains('\n'));
        assert!(!line.contains('\r'));
        assert!(!line.contains('\u{2028}'));
        assert!(!line.contains('\u{85}'));
        let v = parse(&line);
        assert_eq!(v["user_agent"], evil);
        assert_eq!(v["msg"], "msg\n{\"level\":\"error\"}");
        assert_eq!(v["level"], "info");
    }

    #[test]
    fn field_cannot_override_common_fields() {
        let kvs = [("msg", kv::Value::from("spoofed")), ("level", kv::Value::from("error"))];
        let v = parse(&render_with(Level::Info, format_args!("real"), &kvs, Format::Json));
        assert_eq!(v["msg"], "real");
        assert_eq!(v["level"], "info");
        assert_eq!(v["field.msg"], "spoofed");
        assert_eq!(v["field.level"], "error");
    }

    #[test]
    fn console_format() {
        let kvs = [("method", kv::Value::from("PUT")), ("status", kv::Value::from(201u16))];
        let line = render_with(Level::Info, format_args!("HTTP request"), &kvs, Format::Console);
        assert_eq!(
            line,
            "2025-07-15T10:30:00.052Z\tINFO\tsrc/http/middleware.rs:80\tHTTP request\t{\"method\":\"PUT\",\"status\":201}"
        );
        let fields = line.split('\t').nth(4).unwrap();
        assert_eq!(parse(fields)["status"], 201);
    }

    #[test]
    fn console_without_fields() {
        let line = render_with(Level::Error, format_args!("boom"), &[], Format::Console);
        assert_eq!(line, "2025-07-15T10:30:00.052Z\tERROR\tsrc/http/middleware.rs:80\tboom");
        let warn = render_with(Level::Warn, format_args!("w"), &[], Format::Console);
        assert!(warn.contains("\tWARN\t"));
        let debug = render_with(Level::Debug, format_args!("d"), &[], Format::Console);
        assert!(debug.contains("\tDEBUG\t"));
    }

    #[test]
    fn console_escapes_injection() {
        let kvs = [("path", kv::Value::from("/x\n2025-01-01T00:00:00.000Z\tERROR\tfake"))];
        let line = render_with(Level::Info, format_args!("a\tb\nc"), &kvs, Format::Console);
        assert!(!line.contains('\n'));
        let columns: Vec<&str> = line.split('\t').collect();
        assert_eq!(columns.len(), 5, "{line}");
        assert_eq!(columns[3], "a\\tb\\nc");
        assert_eq!(parse(columns[4])["path"], "/x\n2025-01-01T00:00:00.000Z\tERROR\tfake");
    }

    #[test]
    fn caller_of_dependency_is_shortened() {
        let record = Record::builder()
            .level(Level::Warn)
            .file(Some("/home/u/.cargo/registry/src/index.crates.io-1/actix-server-2.5.0/src/worker.rs"))
            .line(Some(7))
            .args(format_args!("x"))
            .build();
        let v = parse(&render(&record, Format::Json, now()));
        assert_eq!(v["caller"], "actix-server-2.5.0/src/worker.rs:7");
        let no_file = Record::builder().module_path(Some("some::module")).args(format_args!("x")).build();
        let v = parse(&render(&no_file, Format::Json, now()));
        assert_eq!(v["caller"], "some::module");
    }

    #[test]
    fn timestamp_has_millis_and_z() {
        let ts = Utc.with_ymd_and_hms(2025, 1, 2, 3, 4, 5).unwrap();
        let record = Record::builder().args(format_args!("x")).build();
        let v = parse(&render(&record, Format::Json, ts));
        assert_eq!(v["ts"], "2025-01-02T03:04:05.000Z");
    }

    #[test]
    fn level_and_format_parsing() {
        assert_eq!(parse_level("debug"), Some(LevelFilter::Debug));
        assert_eq!(parse_level("INFO"), Some(LevelFilter::Info));
        assert_eq!(parse_level("warn"), Some(LevelFilter::Warn));
        assert_eq!(parse_level("error"), Some(LevelFilter::Error));
        assert_eq!(parse_level("trace"), None);
        assert_eq!(parse_level("warning"), None);
        assert_eq!(Format::parse("json"), Some(Format::Json));
        assert_eq!(Format::parse("Console"), Some(Format::Console));
        assert_eq!(Format::parse("text"), None);
    }

    #[test]
    fn dependencies_never_below_warn() {
        assert_eq!(dependency_level(LevelFilter::Debug), LevelFilter::Warn);
        assert_eq!(dependency_level(LevelFilter::Info), LevelFilter::Warn);
        assert_eq!(dependency_level(LevelFilter::Warn), LevelFilter::Warn);
        assert_eq!(dependency_level(LevelFilter::Error), LevelFilter::Error);
    }

    fn enabled(logger: &env_logger::Logger, level: Level, target: &str) -> bool {
        log::Log::enabled(logger, &log::Metadata::builder().level(level).target(target).build())
    }

    #[test]
    fn logger_filters_own_crates_and_dependencies() {
        let logger = build_logger("debug", "json");
        assert_eq!(logger.filter(), LevelFilter::Debug);
        assert!(enabled(&logger, Level::Debug, "callfs::http::middleware"));
        assert!(enabled(&logger, Level::Debug, "callfs_actors::locks"));
        assert!(enabled(&logger, Level::Debug, "callfs"));
        assert!(!enabled(&logger, Level::Trace, "callfs"));
        assert!(!enabled(&logger, Level::Info, "actix_server::worker"));
        assert!(enabled(&logger, Level::Warn, "actix_server::worker"));

        let logger = build_logger("warn", "console");
        assert!(!enabled(&logger, Level::Info, "callfs::x"));
        assert!(enabled(&logger, Level::Warn, "callfs::x"));

        let logger = build_logger("error", "json");
        assert!(!enabled(&logger, Level::Warn, "callfs::x"));
        assert!(!enabled(&logger, Level::Warn, "diesel"));
        assert!(enabled(&logger, Level::Error, "diesel"));
    }

    #[test]
    fn logger_falls_back_to_info() {
        let logger = build_logger("bogus", "bogus");
        assert!(enabled(&logger, Level::Info, "callfs::x"));
        assert!(!enabled(&logger, Level::Debug, "callfs::x"));
    }

    #[test]
    fn init_twice_does_not_panic() {
        init("info", "json");
        init("debug", "console");
        log::debug!(probe = 1; "logging test");
    }

    #[test]
    fn durations() {
        let cases = [
            (Duration::ZERO, "0s"),
            (Duration::from_nanos(1), "1ns"),
            (Duration::from_nanos(999), "999ns"),
            (Duration::from_nanos(1_000), "1µs"),
            (Duration::from_nanos(1_500), "1.5µs"),
            (Duration::from_micros(850), "850µs"),
            (Duration::from_nanos(850_123_999), "850.123ms"),
            (Duration::from_micros(52_300), "52.3ms"),
            (Duration::from_micros(52_340), "52.34ms"),
            (Duration::from_nanos(52_345_678), "52.345ms"),
            (Duration::from_micros(999_999), "999.999ms"),
            (Duration::from_millis(1_000), "1s"),
            (Duration::from_millis(1_500), "1.5s"),
            (Duration::from_millis(1_050), "1.05s"),
            (Duration::from_secs(3_600), "3600s"),
            (Duration::from_nanos(1_000_000_999), "1s"),
        ];
        for (d, want) in cases {
            assert_eq!(format_duration(d), want, "{d:?}");
        }
    }

    #[test]
    fn short_tokens() {
        assert_eq!(short_token("abcdefghijklmnop"), "abcdefgh...");
        assert_eq!(short_token("abc"), "abc...");
        assert_eq!(short_token("éééééééééé"), "éééééééé...");
    }
}
