DROP TABLE blob_garbage;
DROP TABLE blob_intents;
DROP INDEX inodes_blob;
ALTER TABLE inodes DROP COLUMN blob;
