#!/usr/bin/env python3
"""What a rename and a directory move cost (storage revision 2: one metadata transaction each).

Starts one callfs node (SQLite, localfs, fsync on) on a free 127.0.0.1 port in a temp dir, fills a
directory with BENCH_MOVE_FILES files (4 KiB each), then times:
  * file rename (PATCH {"name"}) of one file, BENCH_MOVE_REPEAT times back and forth;
  * directory move (PATCH {"destination"}) of the whole tree, BENCH_MOVE_REPEAT times back and forth;
and prints median/p95 in ms plus the bytes written to disk during the moves (from the blob folder's
size, which must not change). Stops only the node it started, by pid.

    python3 bench/moves.py            # or: make bench-moves
"""
import http.client, json, os, shutil, signal, socket, statistics, subprocess, sys, tempfile, time

BIN = os.environ.get("CALLFS_BIN", os.path.join(os.path.dirname(__file__), "..", "target", "release", "callfs"))
FILES = int(os.environ.get("BENCH_MOVE_FILES", "2000"))
REPEAT = int(os.environ.get("BENCH_MOVE_REPEAT", "20"))
KEY = "bench-key-0123456789abcdef"


def free_port():
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()
    return port


def request(conn, method, path, body=None, headers=None):
    h = {"Authorization": f"Bearer {KEY}"}
    h.update(headers or {})
    conn.request(method, path, body=body, headers=h)
    r = conn.getresponse()
    data = r.read()
    return r.status, data


def disk_bytes(root):
    total = 0
    for d, _, files in os.walk(os.path.join(root, "blobs")):
        total += sum(os.path.getsize(os.path.join(d, f)) for f in files)
    return total


def timed(conn, method, path, body):
    t = time.perf_counter()
    status, data = request(conn, method, path, json.dumps(body).encode(), {"Content-Type": "application/json"})
    elapsed = (time.perf_counter() - t) * 1000
    if status != 200:
        sys.exit(f"{method} {path} {body}: {status} {data[:200]!r}")
    return elapsed


def main():
    tmp = tempfile.mkdtemp(prefix="callfs-bench-moves-")
    port = free_port()
    cfg = os.path.join(tmp, "config.yaml")
    with open(cfg, "w") as f:
        f.write(f"""server: {{listen_addr: "127.0.0.1:{port}", protocol: http}}
auth:
  api_key_users: {{bench: "{KEY}"}}
  internal_proxy_secret: "bench-internal-secret-0123456789"
  single_use_link_secret: "bench-link-secret-0123456789ab"
backend: {{localfs_root_path: "{tmp}/data"}}
metadata_store: {{type: sqlite, sqlite_path: "{tmp}/meta.db"}}
log: {{level: error}}
""")
    node = subprocess.Popen([BIN, "server", "--config", cfg], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        conn = None
        for _ in range(200):
            try:
                conn = http.client.HTTPConnection("127.0.0.1", port, timeout=60)
                if request(conn, "GET", "/health")[0] == 200:
                    break
            except OSError:
                time.sleep(0.05)
        body = b"x" * 4096
        for i in range(FILES):
            status, _ = request(conn, "PUT", f"/v1/files/tree/d{i % 20}/f{i}.bin", body)
            assert status == 201, status
        before = disk_bytes(os.path.join(tmp, "data"))
        renames = [timed(conn, "PATCH", f"/v1/files/tree/d0/{n}", {"name": m})
                   for k in range(REPEAT) for n, m in [(("f0.bin", "g0.bin"), ("g0.bin", "f0.bin"))[k % 2]]]
        moves = [timed(conn, "PATCH", f"/v1/files/{a}", {"destination": f"/{b}"})
                 for k in range(REPEAT) for a, b in [(("tree", "moved"), ("moved", "tree"))[k % 2]]]
        after = disk_bytes(os.path.join(tmp, "data"))
        q = lambda xs: (statistics.median(xs), sorted(xs)[max(0, int(len(xs) * 0.95) - 1)])
        (rm, rp), (mm, mp) = q(renames), q(moves)
        print(f"| operation | median ms | p95 ms |\n|---|---|---|")
        print(f"| file rename | {rm:.2f} | {rp:.2f} |")
        print(f"| directory move ({FILES} files, 20 subdirectories) | {mm:.2f} | {mp:.2f} |")
        print(f"blob bytes on disk before/after the moves: {before}/{after} (no byte moved: {before == after})")
    finally:
        node.send_signal(signal.SIGTERM)
        try:
            node.wait(timeout=10)
        except subprocess.TimeoutExpired:
            node.kill()
        shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    main()
