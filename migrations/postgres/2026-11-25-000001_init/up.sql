CREATE TABLE inodes (
    id BIGSERIAL PRIMARY KEY,
    parent_id BIGINT,
    name TEXT NOT NULL,
    path TEXT COLLATE "C" NOT NULL UNIQUE,
    type TEXT NOT NULL CHECK (type IN ('file', 'directory')),
    size BIGINT NOT NULL DEFAULT 0,
    mode TEXT NOT NULL,
    owner TEXT NOT NULL DEFAULT '',
    atime TIMESTAMPTZ NOT NULL,
    mtime TIMESTAMPTZ NOT NULL,
    ctime TIMESTAMPTZ NOT NULL,
    backend_type TEXT NOT NULL CHECK (backend_type IN ('localfs', 's3', 'erasure')),
    callfs_instance_id VARCHAR(100),
    content_version BIGINT NOT NULL DEFAULT 1,
    erasure_coded BOOLEAN NOT NULL DEFAULT false,
    symlink_target TEXT,
    created_at TIMESTAMPTZ NOT NULL,
    updated_at TIMESTAMPTZ NOT NULL
);
CREATE INDEX inodes_listing ON inodes (parent_id, type, name COLLATE "C");
CREATE INDEX inodes_instance ON inodes (callfs_instance_id);
CREATE INDEX inodes_path_prefix ON inodes (path text_pattern_ops);

CREATE TABLE single_use_links (
    id BIGSERIAL PRIMARY KEY,
    token TEXT NOT NULL UNIQUE,
    file_path TEXT NOT NULL,
    status TEXT NOT NULL CHECK (status IN ('active', 'used', 'expired')),
    expires_at TIMESTAMPTZ NOT NULL,
    used_at TIMESTAMPTZ,
    used_by_ip INET,
    hmac_signature TEXT NOT NULL,
    created_by TEXT NOT NULL DEFAULT '',
    created_at TIMESTAMPTZ NOT NULL,
    updated_at TIMESTAMPTZ NOT NULL
);
CREATE INDEX single_use_links_status ON single_use_links (status);
CREATE INDEX single_use_links_expires ON single_use_links (expires_at);

CREATE TABLE callfs_locks (
    lock_key TEXT PRIMARY KEY,
    holder TEXT NOT NULL,
    acquired_at TIMESTAMPTZ NOT NULL,
    expires_at TIMESTAMPTZ NOT NULL
);
CREATE INDEX callfs_locks_expires ON callfs_locks (expires_at);
