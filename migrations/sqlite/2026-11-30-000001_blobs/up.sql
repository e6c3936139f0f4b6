-- Storage revision 2: bytes live in immutable blobs named by generated ids. SQLite cannot add a
-- foreign key to an existing table, so the table is rebuilt with it.
CREATE TABLE inodes_v2 (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    parent_id INTEGER REFERENCES inodes_v2 (id) ON DELETE RESTRICT,
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
    updated_at TEXT NOT NULL,
    blob TEXT
);
INSERT INTO inodes_v2 (id, parent_id, name, path, type, size, mode, owner, atime, mtime, ctime, backend_type,
    callfs_instance_id, content_version, erasure_coded, symlink_target, created_at, updated_at)
SELECT id, parent_id, name, path, type, size, mode, owner, atime, mtime, ctime, backend_type,
    callfs_instance_id, content_version, erasure_coded, symlink_target, created_at, updated_at FROM inodes;
DROP TABLE inodes;
ALTER TABLE inodes_v2 RENAME TO inodes;
CREATE INDEX inodes_listing ON inodes (parent_id, type, name);
CREATE INDEX inodes_instance ON inodes (callfs_instance_id);
CREATE INDEX inodes_blob ON inodes (blob);

CREATE TABLE blob_intents (
    blob TEXT PRIMARY KEY,
    backend_type TEXT NOT NULL,
    instance_id TEXT,
    created_at TEXT NOT NULL,
    touched_at TEXT NOT NULL
);
CREATE INDEX blob_intents_instance ON blob_intents (instance_id, created_at);

CREATE TABLE blob_garbage (
    blob TEXT PRIMARY KEY,
    backend_type TEXT NOT NULL,
    instance_id TEXT,
    delete_after TEXT NOT NULL
);
CREATE INDEX blob_garbage_due ON blob_garbage (instance_id, delete_after);
