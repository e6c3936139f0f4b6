-- Storage revision 2: bytes live in immutable blobs named by generated ids.
ALTER TABLE inodes ADD COLUMN blob TEXT;
CREATE INDEX inodes_blob ON inodes (blob);
-- A child can never outlive its parent. NOT VALID: rows stranded by revision 1 do not block the
-- upgrade; every new or changed row is checked.
ALTER TABLE inodes ADD CONSTRAINT inodes_parent_fk
    FOREIGN KEY (parent_id) REFERENCES inodes (id) ON DELETE RESTRICT NOT VALID;

CREATE TABLE blob_intents (
    blob TEXT PRIMARY KEY,
    backend_type TEXT NOT NULL,
    instance_id TEXT,
    created_at TIMESTAMPTZ NOT NULL,
    touched_at TIMESTAMPTZ NOT NULL
);
CREATE INDEX blob_intents_instance ON blob_intents (instance_id, created_at);

CREATE TABLE blob_garbage (
    blob TEXT PRIMARY KEY,
    backend_type TEXT NOT NULL,
    instance_id TEXT,
    delete_after TIMESTAMPTZ NOT NULL
);
CREATE INDEX blob_garbage_due ON blob_garbage (instance_id, delete_after);
