DROP TABLE blob_garbage;
DROP TABLE blob_intents;
ALTER TABLE inodes DROP CONSTRAINT inodes_parent_fk;
DROP INDEX inodes_blob;
ALTER TABLE inodes DROP COLUMN blob;
