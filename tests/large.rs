//! Large streamed transfers (api.md §8.3/§8.4 "Stream bodies", §13 limits are inactivity based).
//! `cargo test --release --test large`

mod common;

use std::io::Read;

use common::*;

const SIZE: u64 = 100 * 1024 * 1024;

/// 100 MiB streamed PUT (generated reader, explicit Content-Length) and streamed GET,
/// compared by SHA-256 computed while reading; then a streamed overwrite and a range at the tail.
#[test]
fn large_100mib_streamed_roundtrip() {
    let n = Node::start(NodeOptions::new(Db::Sqlite));
    let (expected_sha, expected_len) = hash_reader(GenReader::new(42, SIZE)).unwrap();
    assert_eq!(expected_len, SIZE);

    let r = n.upload_reader("PUT", "/v1/files/large/100mib.bin", ALICE_KEY, SIZE, GenReader::new(42, SIZE));
    assert_eq!(r.status, 201, "PUT 100 MiB: {}", r.describe());

    let h = n.head("/v1/files/large/100mib.bin", ALICE_KEY);
    assert_eq!(h.status, 200);
    assert_eq!(h.header("x-callfs-size"), Some(SIZE.to_string().as_str()));
    assert_eq!(h.header("content-length"), Some(SIZE.to_string().as_str()));

    let (g, sha, len) = n.get_hashed("/v1/files/large/100mib.bin", BOB_KEY);
    assert_eq!(g.status, 200, "GET 100 MiB");
    assert_eq!(g.header("content-length"), Some(SIZE.to_string().as_str()));
    assert_eq!(len, SIZE, "downloaded byte count");
    assert_eq!(sha, expected_sha, "SHA-256 of the 100 MiB download");

    // Tail range of the big file.
    let r = n.get_h("/v1/files/large/100mib.bin", ALICE_KEY, &[("Range", "bytes=-16")]);
    assert_eq!(r.status, 206);
    assert_eq!(r.header("content-range"), Some(format!("bytes {}-{}/{}", SIZE - 16, SIZE - 1, SIZE).as_str()));
    assert_eq!(r.body, gen_tail(42, SIZE, 16), "last 16 bytes");

    // Streamed overwrite with different content; old version fully replaced.
    let (sha2, _) = hash_reader(GenReader::new(43, SIZE)).unwrap();
    let r = n.upload_reader("PUT", "/v1/files/large/100mib.bin", ALICE_KEY, SIZE, GenReader::new(43, SIZE));
    assert_eq!(r.status, 200, "overwrite 100 MiB: {}", r.describe());
    let (_, sha, len) = n.get_hashed("/v1/files/large/100mib.bin", ALICE_KEY);
    assert_eq!(len, SIZE);
    assert_eq!(sha, sha2, "SHA-256 after overwrite");
    assert!(n.tmp_files().is_empty(), "no temporary files left: {:?}", n.tmp_files());
}

/// The last `n` bytes of the generated stream.
fn gen_tail(seed: u64, size: u64, n: u64) -> Vec<u8> {
    let mut g = GenReader::new(seed, size);
    std::io::copy(&mut (&mut g).take(size - n), &mut std::io::sink()).unwrap();
    let mut v = Vec::new();
    g.read_to_end(&mut v).unwrap();
    v
}
