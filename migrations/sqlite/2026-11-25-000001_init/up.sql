CREATE TABLE inodes (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    parent_id INTEGER,
    name TEXT NOT NULL,
    path TEXT NOT NULL UNIQUE,
    type TEXT NOT NULL CHECK (type IN ('file', 'directory')),
    size BIGINT NOT NULL DEFAULT 0,
    mode TEXT NOT NULL,
    owner TEXT NOT NULL DEFAULT '',
    atime TEXT NOT NULL,
    mtime TEXT NOT NULL,
    ctime TEXT NOT NULL,
    backend_type TEXT NOT NULL CHECK (backend_type IN ('localfs', 's3', 'erasure')),
    callfs_instance_id TEXT,
    content_version BIGINT NOT NULL DEFAULT 1,
    erasure_coded BOOLEAN NOT NULL DEFAULT 0,
    symlink_target TEXT,
    created_at TEXT NOT NULL,
    updated_at TEXT NOT NULL
);
CREATE INDEX inodes_listing ON inodes (parent_id, type, name);
CREATE INDEX inodes_instance ON inodes (callfs_instance_id);

CREATE TABLE single_use_links (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    token TEXT NOT NULL UNIQUE,
    file_path TEXT NOT NULL,
    status TEXT NOT NULL CHECK (status IN ('active', 'used', 'expired')),
    expires_at TEXT NOT NULL,
    used_at TEXT,
    used_by_ip TEXT,
    hmac_signature TEXT NOT NULL,
    created_by TEXT NOT NULL DEFAULT '',
    created_at TEXT NOT NULL,
    updated_at TEXT NOT NULL
);
CREATE INDEX single_use_links_status ON single_use_links (status);
CREATE INDEX single_use_links_expires ON single_use_links (expires_at);
