//! Directory listings read from one snapshot and handed over in batches (api.md §9 "Large
//! directories"): the count first, then rows in listing order through a bounded channel, so
//! neither this thread nor the HTTP side ever holds more than a few batches, whatever the size of
//! the directory. Pages are keyset queries on the `inodes_listing` index `(parent_id, type, name)`.

use std::time::Instant;

use actix::prelude::*;
use diesel::dsl::sql;
use diesel::prelude::*;
use diesel::sql_types::{BigInt, Bool, Text};
use tokio::sync::mpsc;

use super::schema::inodes;
use super::store::{checkout, Conn};
use super::{Inode, MetadataStore, DIRECTORY, FILE};
use crate::error::ActorError;
use crate::metrics::{ErrorKind, MetadataOp};

/// Rows per query and per channel message.
pub const LISTING_BATCH: usize = 1000;
/// Child directories fetched at a time while descending a recursive listing (held per level).
const DESCENT_BATCH: i64 = 256;

/// A position in listing order: strictly after the entry of this kind and name.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ListingCursor {
    pub is_dir: bool,
    pub name: String,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ListingShape {
    /// The immediate children; `limit` items at most, strictly after `after`.
    Children { limit: Option<u32>, after: Option<ListingCursor> },
    /// Depth-first by whole child lists, entries of depth ≤ `max_depth + 1`.
    Tree { max_depth: u32 },
}

/// What a listing channel carries: one `Head`, then `Rows` in listing order until it closes.
#[derive(Debug)]
pub enum ListingEvent {
    /// `count` items follow; `next_after` is set when a page stopped before the end.
    Head {
        count: u64,
        next_after: Option<ListingCursor>,
    },
    Rows(Vec<Inode>),
}

pub type ListingSender = mpsc::Sender<Result<ListingEvent, ActorError>>;

/// Streams the listing of directory `dir_id`. The reply is the channel: the handler's own
/// result only says the reader is done.
#[derive(Message)]
#[rtype(result = "()")]
pub struct StreamListing {
    pub dir_id: i64,
    pub shape: ListingShape,
    /// Whether the head needs the count (the files endpoint's bare array does not).
    pub counted: bool,
    pub events: ListingSender,
}

impl Handler<StreamListing> for MetadataStore {
    type Result = ();
    fn handle(&mut self, msg: StreamListing, _ctx: &mut Self::Context) {
        self.stream_listing(msg);
    }
}

/// Why a listing stopped early.
enum Stop {
    /// The receiver is gone (client disconnected, or the request gave up waiting): not an error.
    Gone,
    Failed(ActorError),
}

impl From<diesel::result::Error> for Stop {
    fn from(err: diesel::result::Error) -> Self {
        Stop::Failed(err.into())
    }
}

impl From<ActorError> for Stop {
    fn from(err: ActorError) -> Self {
        Stop::Failed(err)
    }
}

impl MetadataStore {
    pub fn stream_listing(&self, msg: StreamListing) {
        // Queued behind other listings until the request gave up: nothing to do.
        if msg.events.is_closed() {
            return;
        }
        let op = match msg.shape {
            ListingShape::Children { .. } => MetadataOp::ListChildren,
            ListingShape::Tree { .. } => MetadataOp::ListSubtree,
        };
        let mut out = Batches { events: &msg.events, pending: Vec::new(), started: Instant::now(), op };
        let result = checkout(&self.pool).map_err(Stop::from).and_then(|mut conn| {
            let result = read_snapshot(&mut conn, &msg, &mut out, &self.metrics);
            if let (Err(Stop::Failed(ActorError::MetadataUnavailable(_))), Conn::Pg(pooled)) = (&result, &mut conn) {
                pooled.broken = true;
            }
            result
        });
        if let Err(Stop::Failed(err)) = result {
            match &err {
                ActorError::MetadataUnavailable(_) => self.metrics.record_error(ErrorKind::MetadataUnavailable),
                ActorError::NotFound => {}
                _ => self.metrics.record_error(ErrorKind::QueryFailed),
            }
            // Before the head this becomes the response status; after it, an aborted body.
            let _ = msg.events.blocking_send(Err(err));
        }
    }
}

/// One read transaction: REPEATABLE READ READ ONLY on PostgreSQL; on SQLite (WAL) a deferred
/// transaction whose first read fixes the snapshot.
fn read_snapshot(
    conn: &mut Conn,
    msg: &StreamListing,
    out: &mut Batches,
    metrics: &crate::metrics::Metrics,
) -> Result<(), Stop> {
    match conn {
        Conn::Sqlite(pooled) => {
            let c: &mut SqliteConnection = pooled;
            c.transaction(|c| list_in(c, msg, out, metrics))
        }
        Conn::Pg(pooled) => {
            let c: &mut PgConnection = pooled;
            c.build_transaction().repeatable_read().read_only().run(|c| list_in(c, msg, out, metrics))
        }
    }
}

fn list_in<C: ListingQueries>(
    c: &mut C,
    msg: &StreamListing,
    out: &mut Batches,
    metrics: &crate::metrics::Metrics,
) -> Result<(), Stop> {
    // The directory as this snapshot sees it (it may have gone since the request read it).
    if !c.is_directory(msg.dir_id)? {
        return Err(Stop::Failed(ActorError::NotFound));
    }
    match &msg.shape {
        ListingShape::Children { limit, after } => {
            let (files_after, dirs_after) = segments(after.as_ref());
            let (count, next_after) = match limit {
                Some(limit) => page_head(c, msg.dir_id, files_after, dirs_after, u64::from(*limit))?,
                None if msg.counted => {
                    let files = files_after.map_or(Ok(0), |a| c.count_children(msg.dir_id, FILE, a))?;
                    (files + c.count_children(msg.dir_id, DIRECTORY, dirs_after)?, None)
                }
                None => (0, None),
            };
            out.head(count, next_after.clone(), metrics)?;
            let mut left = limit.map_or(u64::MAX, u64::from);
            if let Some(after) = files_after {
                left -= emit_children(c, msg.dir_id, FILE, after, left, out)?;
            }
            emit_children(c, msg.dir_id, DIRECTORY, dirs_after, left, out)?;
        }
        ListingShape::Tree { max_depth } => {
            let deepest = u64::from(*max_depth) + 1;
            let count = if msg.counted { c.count_tree(msg.dir_id, deepest)? } else { 0 };
            out.head(count, None, metrics)?;
            walk(c, msg.dir_id, 1, deepest, out)?;
        }
    }
    out.flush()
}

/// Where each group resumes after `after`: files after a file cursor (none after a directory
/// cursor), directories after a directory cursor (all of them after a file cursor). An empty
/// name sorts before every real name, which are never empty.
fn segments(after: Option<&ListingCursor>) -> (Option<&str>, &str) {
    match after {
        None => (Some(""), ""),
        Some(ListingCursor { is_dir: false, name }) => (Some(name.as_str()), ""),
        Some(ListingCursor { is_dir: true, name }) => (None, name.as_str()),
    }
}

/// Count and continuation of a page: at most `limit` items, and the cursor of its last item when
/// at least one more follows (all in the snapshot, so the page and its cursor agree).
fn page_head<C: ListingQueries>(
    c: &mut C,
    dir: i64,
    files_after: Option<&str>,
    dirs_after: &str,
    limit: u64,
) -> Result<(u64, Option<ListingCursor>), Stop> {
    // Counting stops one past the page: enough to know whether more follow.
    let cap = limit + 1;
    let files = match files_after {
        Some(after) => c.count_children_capped(dir, FILE, after, cap)?,
        None => 0,
    };
    let dirs = if files < cap { c.count_children_capped(dir, DIRECTORY, dirs_after, cap - files)? } else { 0 };
    if files + dirs <= limit {
        return Ok((files + dirs, None));
    }
    // The page's last item is the limit-th after the cursor.
    let last = match files_after {
        Some(after) if files >= limit => {
            ListingCursor { is_dir: false, name: c.nth_child(dir, FILE, after, limit - 1)?.ok_or(ActorError::Changed)? }
        }
        _ => ListingCursor {
            is_dir: true,
            name: c.nth_child(dir, DIRECTORY, dirs_after, limit - files - 1)?.ok_or(ActorError::Changed)?,
        },
    };
    Ok((limit, Some(last)))
}

/// Emits up to `left` children of one kind after `after`; returns how many.
fn emit_children<C: ListingQueries>(
    c: &mut C,
    dir: i64,
    kind: &str,
    after: &str,
    left: u64,
    out: &mut Batches,
) -> Result<u64, Stop> {
    let mut after = after.to_string();
    let mut sent = 0;
    while sent < left {
        let want = (left - sent).min(LISTING_BATCH as u64) as i64;
        let rows = c.children(dir, kind, &after, want)?;
        let got = rows.len() as u64;
        if let Some(last) = rows.last() {
            after = last.name.clone();
        }
        sent += got;
        out.push(rows)?;
        if got < want as u64 {
            break;
        }
    }
    Ok(sent)
}

/// The recursive order of api.md §9: the whole child list of `dir` (depth `depth`), then each
/// child directory's items in turn. Only a keyset position per level is held, never a list.
fn walk<C: ListingQueries>(c: &mut C, dir: i64, depth: u64, deepest: u64, out: &mut Batches) -> Result<(), Stop> {
    if depth > deepest {
        return Ok(());
    }
    emit_children(c, dir, FILE, "", u64::MAX, out)?;
    emit_children(c, dir, DIRECTORY, "", u64::MAX, out)?;
    if depth + 1 > deepest {
        return Ok(());
    }
    let mut after = String::new();
    loop {
        let dirs = c.child_dirs(dir, &after, DESCENT_BATCH)?;
        for (id, _) in &dirs {
            walk(c, *id, depth + 1, deepest, out)?;
        }
        match dirs.last() {
            Some((_, name)) if dirs.len() as i64 == DESCENT_BATCH => after = name.clone(),
            _ => return Ok(()),
        }
    }
}

/// Gathers rows into batches of [`LISTING_BATCH`] and sends them; a full channel blocks this
/// reader (backpressure from the client), a closed one stops it.
struct Batches<'a> {
    events: &'a ListingSender,
    pending: Vec<Inode>,
    started: Instant,
    op: MetadataOp,
}

impl Batches<'_> {
    fn send(&self, event: ListingEvent) -> Result<(), Stop> {
        self.events.blocking_send(Ok(event)).map_err(|_| Stop::Gone)
    }

    /// The head ends the metadata round trip as metrics see it (the rest runs at the client's pace).
    fn head(
        &self,
        count: u64,
        next_after: Option<ListingCursor>,
        metrics: &crate::metrics::Metrics,
    ) -> Result<(), Stop> {
        metrics.record_metadata(self.op, self.started.elapsed());
        self.send(ListingEvent::Head { count, next_after })
    }

    fn push(&mut self, rows: Vec<Inode>) -> Result<(), Stop> {
        if self.pending.is_empty() && rows.len() >= LISTING_BATCH {
            return self.send(ListingEvent::Rows(rows));
        }
        self.pending.extend(rows);
        if self.pending.len() >= LISTING_BATCH {
            self.flush()?;
        }
        Ok(())
    }

    fn flush(&mut self) -> Result<(), Stop> {
        if self.pending.is_empty() {
            return Ok(());
        }
        let rows = std::mem::take(&mut self.pending);
        self.send(ListingEvent::Rows(rows))
    }
}

#[derive(QueryableByName)]
struct Total {
    #[diesel(sql_type = BigInt)]
    n: i64,
}

/// The listing's queries, in each dialect. Names compare in byte order, as `sort_listing` does:
/// SQLite's default BINARY collation, PostgreSQL's `COLLATE "C"` (which the index also uses).
trait ListingQueries {
    fn is_directory(&mut self, id: i64) -> QueryResult<bool>;
    /// Children of one kind strictly after `after`, by name.
    fn children(&mut self, dir: i64, kind: &str, after: &str, limit: i64) -> QueryResult<Vec<Inode>>;
    fn count_children(&mut self, dir: i64, kind: &str, after: &str) -> QueryResult<u64>;
    fn count_children_capped(&mut self, dir: i64, kind: &str, after: &str, cap: u64) -> QueryResult<u64>;
    /// The name of the `n`-th (from 0) child of one kind after `after`.
    fn nth_child(&mut self, dir: i64, kind: &str, after: &str, n: u64) -> QueryResult<Option<String>>;
    fn child_dirs(&mut self, dir: i64, after: &str, limit: i64) -> QueryResult<Vec<(i64, String)>>;
    /// Entries of depth ≤ `deepest` below `dir` (its children have depth 1).
    fn count_tree(&mut self, dir: i64, deepest: u64) -> QueryResult<u64>;
}

/// Directories whose children are included (depth + 1 ≤ deepest), then their children counted:
/// the recursion carries directories only, so its working set is small even for a flat directory.
const COUNT_TREE_SQLITE: &str = "WITH RECURSIVE d(id, depth) AS ( \
       SELECT CAST(? AS BIGINT), 0 \
       UNION ALL \
       SELECT i.id, d.depth + 1 FROM inodes i JOIN d ON i.parent_id = d.id \
       WHERE i.type = 'directory' AND d.depth + 1 < ?) \
     SELECT CAST(COALESCE(SUM((SELECT count(*) FROM inodes c WHERE c.parent_id = d.id)), 0) AS BIGINT) AS n FROM d";
const COUNT_TREE_PG: &str = "WITH RECURSIVE d(id, depth) AS ( \
       SELECT CAST($1 AS BIGINT), CAST(0 AS BIGINT) \
       UNION ALL \
       SELECT i.id, d.depth + 1 FROM inodes i JOIN d ON i.parent_id = d.id \
       WHERE i.type = 'directory' AND d.depth + 1 < $2) \
     SELECT CAST(COALESCE(SUM((SELECT count(*) FROM inodes c WHERE c.parent_id = d.id)), 0) AS BIGINT) AS n FROM d";

macro_rules! listing_queries {
    ($conn:ty, $name:expr, $count_tree:expr) => {
        impl ListingQueries for $conn {
            fn is_directory(&mut self, id: i64) -> QueryResult<bool> {
                let kind: Option<String> =
                    inodes::table.filter(inodes::id.eq(id)).select(inodes::kind).get_result(self).optional()?;
                Ok(kind.as_deref() == Some(DIRECTORY))
            }

            fn children(&mut self, dir: i64, kind: &str, after: &str, limit: i64) -> QueryResult<Vec<Inode>> {
                inodes::table
                    .filter(inodes::parent_id.eq(dir))
                    .filter(inodes::kind.eq(kind))
                    .filter(sql::<Bool>(concat!($name, " > ")).bind::<Text, _>(after))
                    .order(sql::<Text>($name))
                    .limit(limit)
                    .select(Inode::as_select())
                    .load(self)
            }

            fn count_children(&mut self, dir: i64, kind: &str, after: &str) -> QueryResult<u64> {
                let n: i64 = inodes::table
                    .filter(inodes::parent_id.eq(dir))
                    .filter(inodes::kind.eq(kind))
                    .filter(sql::<Bool>(concat!($name, " > ")).bind::<Text, _>(after))
                    .count()
                    .get_result(self)?;
                Ok(n as u64)
            }

            fn count_children_capped(&mut self, dir: i64, kind: &str, after: &str, cap: u64) -> QueryResult<u64> {
                // At most `cap` ids (≤ 10,001): bounded, and cheaper than counting a huge tail.
                let ids: Vec<i64> = inodes::table
                    .filter(inodes::parent_id.eq(dir))
                    .filter(inodes::kind.eq(kind))
                    .filter(sql::<Bool>(concat!($name, " > ")).bind::<Text, _>(after))
                    .order(sql::<Text>($name))
                    .limit(cap as i64)
                    .select(inodes::id)
                    .load(self)?;
                Ok(ids.len() as u64)
            }

            fn nth_child(&mut self, dir: i64, kind: &str, after: &str, n: u64) -> QueryResult<Option<String>> {
                inodes::table
                    .filter(inodes::parent_id.eq(dir))
                    .filter(inodes::kind.eq(kind))
                    .filter(sql::<Bool>(concat!($name, " > ")).bind::<Text, _>(after))
                    .order(sql::<Text>($name))
                    .offset(n as i64)
                    .limit(1)
                    .select(inodes::name)
                    .get_result(self)
                    .optional()
            }

            fn child_dirs(&mut self, dir: i64, after: &str, limit: i64) -> QueryResult<Vec<(i64, String)>> {
                inodes::table
                    .filter(inodes::parent_id.eq(dir))
                    .filter(inodes::kind.eq(DIRECTORY))
                    .filter(sql::<Bool>(concat!($name, " > ")).bind::<Text, _>(after))
                    .order(sql::<Text>($name))
                    .limit(limit)
                    .select((inodes::id, inodes::name))
                    .load(self)
            }

            fn count_tree(&mut self, dir: i64, deepest: u64) -> QueryResult<u64> {
                let total: Total = diesel::sql_query($count_tree)
                    .bind::<BigInt, _>(dir)
                    .bind::<BigInt, _>(deepest as i64)
                    .get_result(self)?;
                Ok(total.n as u64)
            }
        }
    };
}

listing_queries!(SqliteConnection, "name", COUNT_TREE_SQLITE);
listing_queries!(PgConnection, "name COLLATE \"C\"", COUNT_TREE_PG);

#[cfg(test)]
mod tests {
    use super::*;
    use crate::metadata::store::tests::store;
    use crate::metadata::{sort_listing, NewEntry};

    fn create(s: &MetadataStore, path: &str, is_dir: bool) -> Inode {
        let entry = NewEntry {
            path: path.into(),
            is_dir,
            size: 1,
            owner: "alice".into(),
            backend_type: "localfs".into(),
            instance_id: None,
            blob: None,
        };
        s.create_entry(entry, &[]).unwrap()
    }

    /// Runs a listing on its own thread (the reader blocks on the bounded channel) and collects it.
    fn list(
        s: &std::sync::Arc<MetadataStore>,
        dir_id: i64,
        shape: ListingShape,
    ) -> (u64, Option<ListingCursor>, Vec<String>) {
        let (events, mut rx) = mpsc::channel(2);
        let reader = std::sync::Arc::clone(s);
        let handle =
            std::thread::spawn(move || reader.stream_listing(StreamListing { dir_id, shape, counted: true, events }));
        let Some(Ok(ListingEvent::Head { count, next_after })) = rx.blocking_recv() else { panic!("no head") };
        let mut paths = Vec::new();
        while let Some(event) = rx.blocking_recv() {
            match event.unwrap() {
                ListingEvent::Rows(rows) => paths.extend(rows.into_iter().map(|r| r.path)),
                ListingEvent::Head { .. } => panic!("second head"),
            }
        }
        handle.join().unwrap();
        (count, next_after, paths)
    }

    #[test]
    fn pages_follow_sort_listing_and_the_tree_order() {
        let (s, _dir) = store();
        let root = create(&s, "/p", true);
        let names = ["b.txt", "a.txt", "Z.txt", "é.txt", "a b", "zz"];
        let mut rows: Vec<Inode> = names.iter().map(|n| create(&s, &format!("/p/{n}"), false)).collect();
        rows.extend(["sub", "Adir", "b"].iter().map(|n| create(&s, &format!("/p/{n}"), true)));
        create(&s, "/p/b/deep/leaf.txt", false);
        create(&s, "/p/Adir/x.txt", false);
        sort_listing(&mut rows);
        let expected: Vec<String> = rows.iter().map(|r| r.path.clone()).collect();
        let s = std::sync::Arc::new(s);

        let whole = list(&s, root.id, ListingShape::Children { limit: None, after: None });
        assert_eq!(whole, (9, None, expected.clone()), "one query order = sort_listing");

        // Pages of 4: 4 + 4 + 1, crossing from files into directories.
        let mut after = None;
        let mut walked = Vec::new();
        let mut counts = Vec::new();
        loop {
            let (count, next, page) =
                list(&s, root.id, ListingShape::Children { limit: Some(4), after: after.clone() });
            assert_eq!(count as usize, page.len());
            counts.push(count);
            walked.extend(page);
            match next {
                Some(next) => after = Some(next),
                None => break,
            }
        }
        assert_eq!(counts, vec![4, 4, 1]);
        assert_eq!(walked, expected);

        let (count, next, tree) = list(&s, root.id, ListingShape::Tree { max_depth: 100 });
        let mut tree_expected = expected.clone();
        tree_expected.extend(["/p/Adir/x.txt", "/p/b/deep", "/p/b/deep/leaf.txt"].map(String::from));
        assert_eq!((count, next, tree), (12, None, tree_expected));
        let (count, _, tree) = list(&s, root.id, ListingShape::Tree { max_depth: 1 });
        assert_eq!((count, tree.len()), (11, 11), "depth 3 (leaf.txt) left out");
    }
}
