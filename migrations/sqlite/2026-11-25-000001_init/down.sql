DROP TABLE single_use_links;
DROP TABLE inodes;
