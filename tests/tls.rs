//! `server.protocol` https and auto (security.md §6) against the real binary.

use std::io::{Read, Write};
use std::net::TcpStream;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use openssl::ssl::{SslConnector, SslMethod, SslVerifyMode};

struct Running(Child);

impl Drop for Running {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
}

fn start(dir: &std::path::Path, protocol: &str, cert: &str) -> (Running, u16) {
    let port = free_port();
    let config = format!(
        "server:\n  listen_addr: \"127.0.0.1:{port}\"\n  protocol: \"{protocol}\"\n  cert_file: \"{cert}\"\n  key_file: \"{key}\"\n\
         auth:\n  api_key_users:\n    alice: \"alice-key-0123456789abcdef\"\n  internal_proxy_secret: \"internal-secret-0123456789\"\n  \
         single_use_link_secret: \"link-secret-0123456789abc\"\nbackend:\n  localfs_root_path: \"{root}\"\n\
         metadata_store:\n  sqlite_path: \"{db}\"\n",
        key = dir.join("key.pem").display(),
        root = dir.join("data").display(),
        db = dir.join("db.sqlite3").display(),
    );
    let path = dir.join(format!("{protocol}.yaml"));
    std::fs::write(&path, config).unwrap();
    let child = Command::new(env!("CARGO_BIN_EXE_callfs"))
        .args(["server", "--config"])
        .arg(&path)
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    (Running(child), port)
}

fn request(port: u16, tls: bool) -> Option<String> {
    let stream = TcpStream::connect(("127.0.0.1", port)).ok()?;
    stream.set_read_timeout(Some(Duration::from_secs(5))).ok()?;
    let req = "GET /health HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n";
    let mut out = String::new();
    if tls {
        let mut builder = SslConnector::builder(SslMethod::tls()).unwrap();
        builder.set_verify(SslVerifyMode::NONE);
        let mut stream = builder.build().connect("localhost", stream).ok()?;
        stream.write_all(req.as_bytes()).ok()?;
        stream.read_to_string(&mut out).ok()?;
    } else {
        let mut stream = stream;
        stream.write_all(req.as_bytes()).ok()?;
        stream.read_to_string(&mut out).ok()?;
    }
    Some(out)
}

fn wait_for(port: u16, tls: bool) -> String {
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        if let Some(answer) = request(port, tls).filter(|a| a.starts_with("HTTP/1.1 200")) {
            return answer;
        }
        assert!(Instant::now() < deadline, "node on {port} never answered (tls={tls})");
        std::thread::sleep(Duration::from_millis(100));
    }
}

fn self_signed(dir: &std::path::Path) {
    let status = Command::new("openssl")
        .args(["req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1", "-subj", "/CN=localhost"])
        .arg("-keyout")
        .arg(dir.join("key.pem"))
        .arg("-out")
        .arg(dir.join("cert.pem"))
        .stderr(Stdio::null())
        .status()
        .expect("the openssl command line tool");
    assert!(status.success());
}

#[test]
fn https_serves_tls_with_hsts_and_refuses_plain_http() {
    let dir = tempfile::tempdir().unwrap();
    self_signed(dir.path());
    let cert = dir.path().join("cert.pem").display().to_string();
    let (_node, port) = start(dir.path(), "https", &cert);
    let answer = wait_for(port, true).to_ascii_lowercase();
    assert!(answer.contains("strict-transport-security: max-age=31536000; includesubdomains; preload"), "{answer}");
    assert!(answer.contains("{\"status\":\"ok\"}"));
    let plain = request(port, false).unwrap_or_default();
    assert!(!plain.starts_with("HTTP/1.1 200"), "plain HTTP must not be served on a TLS listener: {plain}");
}

#[test]
fn auto_without_certificate_files_serves_plain_http_without_hsts() {
    let dir = tempfile::tempdir().unwrap();
    let missing = dir.path().join("missing.pem").display().to_string();
    let (_node, port) = start(dir.path(), "auto", &missing);
    let answer = wait_for(port, false).to_ascii_lowercase();
    assert!(!answer.contains("strict-transport-security"), "{answer}");
    assert!(answer.contains("x-content-type-options: nosniff"));
}
