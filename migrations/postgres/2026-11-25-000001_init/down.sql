DROP TABLE callfs_locks;
DROP TABLE single_use_links;
DROP TABLE inodes;
