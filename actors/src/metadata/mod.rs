//! The metadata store: diesel over an r2d2 pool of SQLite or PostgreSQL connections, run on a
//! SyncArbiter so no query ever blocks an async thread. Every round trip is counted and timed.

mod listing;
mod schema;
mod store;

use chrono::NaiveDateTime;
use diesel::prelude::*;

pub use listing::{ListingCursor, ListingEvent, ListingSender, ListingShape, StreamListing, LISTING_BATCH};
pub use store::{
    connect, connect_readers, sort_listing, AdoptBlob, BlobRef, BlobReferences, CleanupLinks, ConsumeLink, CreateEntry,
    CreateLink, DeleteEntry, DropGarbage, DropIntent, DueGarbage, Fence, GetEntries, GetEntry, GetLink, HasChildren,
    LegacyFiles, LinkRow, ListBlobReferences, MetadataStore, NewEntry, Ping, RecordIntent, RenameEntry, StaleIntents,
    StoreKind, SwitchBlob, TouchIntent,
};

pub const FILE: &str = "file";
pub const DIRECTORY: &str = "directory";

/// One row of `inodes`.
#[derive(Queryable, Selectable, Debug, Clone, PartialEq)]
#[diesel(table_name = schema::inodes)]
pub struct Inode {
    pub id: i64,
    pub parent_id: Option<i64>,
    pub name: String,
    pub path: String,
    pub kind: String,
    pub size: i64,
    pub mode: String,
    pub owner: String,
    pub atime: NaiveDateTime,
    pub mtime: NaiveDateTime,
    pub ctime: NaiveDateTime,
    pub backend_type: String,
    pub callfs_instance_id: Option<String>,
    pub content_version: i64,
    pub erasure_coded: bool,
    pub symlink_target: Option<String>,
    pub created_at: NaiveDateTime,
    pub updated_at: NaiveDateTime,
    /// The immutable blob holding a file's content; `None` for directories.
    pub blob: Option<String>,
}

impl Inode {
    pub fn is_dir(&self) -> bool {
        self.kind == DIRECTORY
    }

    pub fn is_file(&self) -> bool {
        self.kind == FILE
    }

    /// The backend holding the row's bytes; an unknown value reads as `localfs` (revision 1 rows).
    pub fn backend(&self) -> crate::storage::Backend {
        crate::storage::Backend::parse(&self.backend_type).unwrap_or(crate::storage::Backend::Localfs)
    }

    pub fn etag(&self) -> String {
        format!("\"{}-{}\"", self.id, self.content_version)
    }
}
