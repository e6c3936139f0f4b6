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
    CreateLink, DeleteEntry, DropGarbage, DropIntent, DueGarbage, EntryReader, Fence, GetEntries, GetEntry, GetLink,
    HasChildren, LegacyFiles, LinkRow, ListBlobReferences, MetadataStore, NewEntry, PgManager, Ping, PrepareWrite,
    RecordIntent, RenameEntry, StaleIntents, StoreKind, SwitchBlob, TouchIntent,
};

pub const FILE: &str = "file";
pub const DIRECTORY: &str = "directory";

/// A timestamp column as read. SQLite keeps timestamps as text, which diesel parses by trying
/// chrono format strings one after another (about a fifth of the instructions of a small GET went
/// there); the text diesel writes (`YYYY-MM-DD HH:MM:SS[.fraction]`) is read here by hand, and
/// anything else still through chrono. PostgreSQL's binary timestamps go through diesel as before.
#[derive(diesel::deserialize::FromSqlRow)]
pub struct DbTime(NaiveDateTime);

impl From<DbTime> for NaiveDateTime {
    fn from(t: DbTime) -> Self {
        t.0
    }
}

impl diesel::deserialize::FromSql<diesel::sql_types::Timestamp, diesel::sqlite::Sqlite> for DbTime {
    fn from_sql(mut value: diesel::sqlite::SqliteValue<'_, '_, '_>) -> diesel::deserialize::Result<Self> {
        let text = value.read_text();
        if let Some(t) = parse_sqlite_time(text) {
            return Ok(DbTime(t));
        }
        for format in ["%F %T%.f", "%F %T%.f%:z", "%F %T", "%FT%T%.f", "%FT%T%.fZ"] {
            if let Ok(t) = NaiveDateTime::parse_from_str(text, format) {
                return Ok(DbTime(t));
            }
        }
        Err(format!("invalid datetime {text}").into())
    }
}

impl diesel::deserialize::FromSql<diesel::sql_types::Timestamp, diesel::pg::Pg> for DbTime {
    fn from_sql(value: diesel::pg::PgValue<'_>) -> diesel::deserialize::Result<Self> {
        <NaiveDateTime as diesel::deserialize::FromSql<diesel::sql_types::Timestamp, diesel::pg::Pg>>::from_sql(value)
            .map(DbTime)
    }
}

/// `YYYY-MM-DD HH:MM:SS` with an optional `.` and 1 to 9 fraction digits; `None` otherwise.
fn parse_sqlite_time(text: &str) -> Option<NaiveDateTime> {
    let b = text.as_bytes();
    if b.len() < 19 || b[4] != b'-' || b[7] != b'-' || b[10] != b' ' || b[13] != b':' || b[16] != b':' {
        return None;
    }
    let num = |range: std::ops::Range<usize>| -> Option<u32> {
        b[range].iter().try_fold(0u32, |n, &d| d.is_ascii_digit().then(|| n * 10 + u32::from(d - b'0')))
    };
    let mut nanos = 0;
    if b.len() > 19 {
        let fraction = &b[20..];
        if b[19] != b'.' || fraction.is_empty() || fraction.len() > 9 {
            return None;
        }
        nanos = num(20..b.len())? * 10u32.pow(9 - fraction.len() as u32);
    }
    let date = chrono::NaiveDate::from_ymd_opt(num(0..4)? as i32, num(5..7)?, num(8..10)?)?;
    date.and_hms_nano_opt(num(11..13)?, num(14..16)?, num(17..19)?, nanos)
}

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
    #[diesel(deserialize_as = DbTime)]
    pub atime: NaiveDateTime,
    #[diesel(deserialize_as = DbTime)]
    pub mtime: NaiveDateTime,
    #[diesel(deserialize_as = DbTime)]
    pub ctime: NaiveDateTime,
    pub backend_type: String,
    pub callfs_instance_id: Option<String>,
    pub content_version: i64,
    pub erasure_coded: bool,
    pub symlink_target: Option<String>,
    #[diesel(deserialize_as = DbTime)]
    pub created_at: NaiveDateTime,
    #[diesel(deserialize_as = DbTime)]
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sqlite_times_parse_like_chrono() {
        for text in [
            "2026-11-30 17:22:05",
            "2026-11-30 17:22:05.5",
            "2026-11-30 17:22:05.123456",
            "2024-02-29 00:00:00.000000001",
        ] {
            let expected = NaiveDateTime::parse_from_str(text, "%F %T%.f").unwrap();
            assert_eq!(parse_sqlite_time(text), Some(expected), "{text}");
        }
        for text in
            ["2026-11-30T17:22:05", "2026-13-01 00:00:00", "2026-11-30 17:22:05.", "2026-11-30 17:22:05+01:00", "x"]
        {
            assert_eq!(parse_sqlite_time(text), None, "{text}");
        }
    }
}
