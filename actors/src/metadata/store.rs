use std::time::{Duration, Instant};

use actix::prelude::*;
use chrono::{NaiveDateTime, Utc};
use diesel::connection::SimpleConnection;
use diesel::prelude::*;
use diesel::r2d2::{ConnectionManager, CustomizeConnection, PooledConnection};
use diesel::result::{DatabaseErrorKind, Error as DieselError};
use diesel_migrations::{embed_migrations, EmbeddedMigrations, MigrationHarness};

use super::schema::{blob_garbage, blob_intents, inodes, single_use_links};
use super::{Inode, DIRECTORY, FILE};
use crate::error::ActorError;
use crate::metrics::{ErrorKind, MetadataOp, Metrics};
use crate::storage::Backend;

const SQLITE_MIGRATIONS: EmbeddedMigrations = embed_migrations!("../migrations/sqlite");
const POSTGRES_MIGRATIONS: EmbeddedMigrations = embed_migrations!("../migrations/postgres");
/// Serialises migrations of nodes that start together against one PostgreSQL database.
const MIGRATION_LOCK_ID: i64 = 0x6361_6c6c_6673;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StoreKind {
    Sqlite,
    Postgres,
}

#[derive(Clone)]
pub enum Pool {
    Sqlite(diesel::r2d2::Pool<ConnectionManager<SqliteConnection>>),
    Pg(diesel::r2d2::Pool<PgManager>),
}

pub(super) enum Conn {
    Sqlite(PooledConnection<ConnectionManager<SqliteConnection>>),
    Pg(PooledConnection<PgManager>),
}

/// A PostgreSQL connection the store can mark as dead. Checkouts are not tested (a validity query
/// per checkout would double every round trip), so a connection whose query failed for want of a
/// server (a restart, a network cut) is marked here and r2d2 drops it instead of reusing it.
pub struct TrackedPg {
    conn: PgConnection,
    pub(super) broken: bool,
}

impl std::ops::Deref for TrackedPg {
    type Target = PgConnection;
    fn deref(&self) -> &PgConnection {
        &self.conn
    }
}

impl std::ops::DerefMut for TrackedPg {
    fn deref_mut(&mut self) -> &mut PgConnection {
        &mut self.conn
    }
}

impl TrackedPg {
    /// The server is gone under this connection: r2d2 drops it instead of reusing it.
    pub fn mark_broken(&mut self) {
        self.broken = true;
    }
}

#[derive(Debug)]
pub struct PgManager(ConnectionManager<PgConnection>);

impl PgManager {
    pub fn new(dsn: &str) -> Self {
        PgManager(ConnectionManager::new(dsn))
    }
}

impl diesel::r2d2::ManageConnection for PgManager {
    type Connection = TrackedPg;
    type Error = diesel::r2d2::Error;

    fn connect(&self) -> Result<TrackedPg, Self::Error> {
        Ok(TrackedPg { conn: self.0.connect()?, broken: false })
    }

    fn is_valid(&self, conn: &mut TrackedPg) -> Result<(), Self::Error> {
        self.0.is_valid(&mut conn.conn)
    }

    fn has_broken(&self, conn: &mut TrackedPg) -> bool {
        conn.broken || self.0.has_broken(&mut conn.conn)
    }
}

/// Runs the same diesel code on whichever backend the connection is.
macro_rules! with_conn {
    ($conn:expr, $c:ident => $body:expr) => {
        match $conn {
            Conn::Sqlite(pooled) => {
                let $c: &mut SqliteConnection = &mut *pooled;
                $body
            }
            Conn::Pg(pooled) => {
                let $c: &mut PgConnection = &mut *pooled;
                $body
            }
        }
    };
}

/// A write transaction: SQLite takes the write lock up front so concurrent writers queue on
/// busy_timeout instead of failing on lock upgrade.
macro_rules! write_tx {
    ($conn:expr, $c:ident => $body:expr) => {
        match $conn {
            Conn::Sqlite(pooled) => {
                let conn: &mut SqliteConnection = &mut *pooled;
                conn.immediate_transaction(|$c| $body)
            }
            Conn::Pg(pooled) => {
                let conn: &mut PgConnection = &mut *pooled;
                conn.transaction(|$c| $body)
            }
        }
    };
}

#[derive(Debug)]
struct SqlitePragmas {
    /// Connections of the listing readers: they never write (`query_only`).
    read_only: bool,
}

impl CustomizeConnection<SqliteConnection, diesel::r2d2::Error> for SqlitePragmas {
    fn on_acquire(&self, conn: &mut SqliteConnection) -> Result<(), diesel::r2d2::Error> {
        conn.batch_execute(
            // busy_timeout first: switching to WAL needs the write lock, which another connection may hold.
            "PRAGMA busy_timeout = 10000; PRAGMA journal_mode = WAL; PRAGMA synchronous = NORMAL; \
             PRAGMA case_sensitive_like = ON; PRAGMA foreign_keys = ON;",
        )
        .map_err(diesel::r2d2::Error::QueryError)?;
        if self.read_only {
            conn.batch_execute("PRAGMA query_only = ON;").map_err(diesel::r2d2::Error::QueryError)?;
        }
        Ok(())
    }
}

#[derive(Debug)]
struct PgUtc;

impl CustomizeConnection<TrackedPg, diesel::r2d2::Error> for PgUtc {
    fn on_acquire(&self, conn: &mut TrackedPg) -> Result<(), diesel::r2d2::Error> {
        conn.conn.batch_execute("SET TIME ZONE 'UTC'").map_err(diesel::r2d2::Error::QueryError)
    }
}

impl From<DieselError> for ActorError {
    fn from(err: DieselError) -> Self {
        match err {
            DieselError::DatabaseError(DatabaseErrorKind::UniqueViolation, _) => ActorError::AlreadyExists,
            // A parent deleted or a child inserted by a concurrent transaction.
            DieselError::DatabaseError(DatabaseErrorKind::ForeignKeyViolation, _) => ActorError::Changed,
            DieselError::DatabaseError(
                DatabaseErrorKind::ClosedConnection | DatabaseErrorKind::UnableToSendCommand,
                info,
            ) => ActorError::MetadataUnavailable(info.message().to_string()),
            // The server went away under the connection (restart, admin shutdown, network cut).
            DieselError::DatabaseError(_, info) if connection_lost(info.message()) => {
                ActorError::MetadataUnavailable(info.message().to_string())
            }
            other => ActorError::Metadata(other.to_string()),
        }
    }
}

fn connection_lost(message: &str) -> bool {
    let m = message.to_ascii_lowercase();
    ["no connection to the server", "server closed the connection", "terminating connection", "connection refused"]
        .iter()
        .any(|needle| m.contains(needle))
}

/// Now, at the precision both databases keep (microseconds), so a row built here equals its read.
fn now() -> NaiveDateTime {
    use chrono::SubsecRound;
    Utc::now().naive_utc().trunc_subsecs(6)
}

/// Opens the pool, applies migrations and makes sure the root row exists.
pub fn connect(
    kind: StoreKind,
    target: &str,
    max_connections: u32,
    op_timeout: Duration,
    metrics: &Metrics,
) -> Result<Pool, ActorError> {
    let started = Instant::now();
    let pool = build_pool(kind, target, max_connections, op_timeout, false)?;
    let mut conn = checkout(&pool)?;
    migrate(&mut conn)?;
    ensure_root(&mut conn)?;
    metrics.record_metadata(MetadataOp::Migrate, started.elapsed());
    Ok(pool)
}

/// A pool of its own for the listing readers (started after [`connect`] migrated): a listing
/// holds its connection and read transaction while the client reads, and must never take the
/// connections of the writers. SQLite in WAL mode lets these readers run beside a writer.
pub fn connect_readers(kind: StoreKind, target: &str, readers: u32, op_timeout: Duration) -> Result<Pool, ActorError> {
    build_pool(kind, target, readers, op_timeout, true)
}

fn build_pool(
    kind: StoreKind,
    target: &str,
    max_connections: u32,
    op_timeout: Duration,
    read_only: bool,
) -> Result<Pool, ActorError> {
    Ok(match kind {
        StoreKind::Sqlite => {
            if let Some(parent) = std::path::Path::new(target).parent().filter(|p| !p.as_os_str().is_empty()) {
                std::fs::create_dir_all(parent).map_err(|e| ActorError::MetadataUnavailable(e.to_string()))?;
            }
            let pool = diesel::r2d2::Pool::builder()
                .max_size(max_connections.clamp(1, 4))
                .connection_timeout(op_timeout)
                // A validity query on every checkout doubles the cost of each round trip; a broken
                // connection fails its real query instead and is replaced.
                .test_on_check_out(false)
                .connection_customizer(Box::new(SqlitePragmas { read_only }))
                .build(ConnectionManager::<SqliteConnection>::new(target))
                .map_err(|e| ActorError::MetadataUnavailable(e.to_string()))?;
            Pool::Sqlite(pool)
        }
        StoreKind::Postgres => {
            let pool = diesel::r2d2::Pool::builder()
                .max_size(max_connections.max(1))
                .min_idle(Some(1))
                .test_on_check_out(false)
                .connection_timeout(op_timeout.max(Duration::from_secs(5)))
                .connection_customizer(Box::new(PgUtc))
                .build(PgManager(ConnectionManager::<PgConnection>::new(target)))
                .map_err(|e| ActorError::MetadataUnavailable(e.to_string()))?;
            Pool::Pg(pool)
        }
    })
}

pub(super) fn checkout(pool: &Pool) -> Result<Conn, ActorError> {
    match pool {
        Pool::Sqlite(p) => p.get().map(Conn::Sqlite),
        Pool::Pg(p) => p.get().map(Conn::Pg),
    }
    .map_err(|e| ActorError::MetadataUnavailable(e.to_string()))
}

fn run_migrations<C>(conn: &mut C, migrations: EmbeddedMigrations) -> Result<(), ActorError>
where
    C: MigrationHarness<C::Backend> + Connection,
{
    let known: Vec<String> = diesel::migration::MigrationSource::<C::Backend>::migrations(&migrations)
        .map_err(|e| ActorError::Metadata(e.to_string()))?
        .iter()
        .map(|m| m.name().version().to_string())
        .collect();
    let applied = conn.applied_migrations().map_err(|e| ActorError::Metadata(e.to_string()))?;
    if let Some(unknown) = applied.iter().map(|v| v.to_string()).find(|v| !known.contains(v)) {
        return Err(ActorError::Metadata(format!(
            "database has migration {unknown} unknown to this binary (database is newer); refusing to start"
        )));
    }
    conn.run_pending_migrations(migrations).map_err(|e| ActorError::Metadata(e.to_string()))?;
    Ok(())
}

fn migrate(conn: &mut Conn) -> Result<(), ActorError> {
    match conn {
        Conn::Sqlite(c) => run_migrations(&mut **c, SQLITE_MIGRATIONS),
        Conn::Pg(c) => {
            let c: &mut PgConnection = c;
            diesel::sql_query(format!("SELECT pg_advisory_lock({MIGRATION_LOCK_ID})")).execute(c)?;
            let result = run_migrations(c, POSTGRES_MIGRATIONS);
            diesel::sql_query(format!("SELECT pg_advisory_unlock({MIGRATION_LOCK_ID})")).execute(c)?;
            result
        }
    }
}

fn ensure_root(conn: &mut Conn) -> Result<(), ActorError> {
    let t = now();
    let root = NewInode {
        parent_id: None,
        name: "/".into(),
        path: "/".into(),
        kind: DIRECTORY.into(),
        size: 0,
        mode: "0755".into(),
        owner: "root".into(),
        atime: t,
        mtime: t,
        ctime: t,
        backend_type: "localfs".into(),
        callfs_instance_id: None,
        created_at: t,
        updated_at: t,
        blob: None,
    };
    with_conn!(conn, c => diesel::insert_into(inodes::table).values(&root).on_conflict(inodes::path).do_nothing().execute(c))?;
    Ok(())
}

#[derive(Insertable, Debug, Clone)]
#[diesel(table_name = inodes)]
struct NewInode {
    parent_id: Option<i64>,
    name: String,
    path: String,
    kind: String,
    size: i64,
    mode: String,
    owner: String,
    atime: NaiveDateTime,
    mtime: NaiveDateTime,
    ctime: NaiveDateTime,
    backend_type: String,
    callfs_instance_id: Option<String>,
    created_at: NaiveDateTime,
    updated_at: NaiveDateTime,
    blob: Option<String>,
}

/// What a create needs to know; the canonical `path` decides name and parent.
#[derive(Debug, Clone)]
pub struct NewEntry {
    pub path: String,
    pub is_dir: bool,
    pub size: i64,
    pub owner: String,
    pub backend_type: String,
    pub instance_id: Option<String>,
    /// The committed blob of a file (its intent is settled in the same transaction).
    pub blob: Option<String>,
}

fn parent_and_name(path: &str) -> (&str, &str) {
    match path.rfind('/') {
        Some(0) => ("/", &path[1..]),
        Some(i) => (&path[..i], &path[i + 1..]),
        None => ("/", path),
    }
}

/// "/a/b/c" → ["/a", "/a/b"] (the root always exists).
fn ancestors_below_root(path: &str) -> Vec<&str> {
    path.match_indices('/').skip(1).map(|(i, _)| &path[..i]).collect()
}

fn new_row(entry: &NewEntry, parent_id: i64, path: &str, is_dir: bool) -> NewInode {
    let t = now();
    let (_, name) = parent_and_name(path);
    NewInode {
        parent_id: Some(parent_id),
        name: name.to_string(),
        path: path.to_string(),
        kind: if is_dir { DIRECTORY } else { FILE }.to_string(),
        size: if is_dir { 0 } else { entry.size },
        mode: if is_dir { "0755" } else { "0644" }.to_string(),
        owner: entry.owner.clone(),
        atime: t,
        mtime: t,
        ctime: t,
        backend_type: entry.backend_type.clone(),
        callfs_instance_id: entry.instance_id.clone(),
        created_at: t,
        updated_at: t,
        blob: if is_dir { None } else { entry.blob.clone() },
    }
}

/// A path lock's lease, checked inside the commit transaction it guards (cluster.md §6): a node
/// that lost its lease can never commit under it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Fence {
    pub key: String,
    pub holder: String,
}

/// A blob and where it lives.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BlobRef {
    pub blob: String,
    pub backend_type: String,
    pub instance_id: Option<String>,
}

/// How long a blob stays readable after its row stopped referencing it.
const GARBAGE_GRACE: chrono::Duration = chrono::Duration::seconds(60);

/// Within a transaction: every fence's lease must still be ours; the row lock taken here keeps it
/// ours until the commit.
macro_rules! check_fences {
    ($c:ident, $fences:expr, $is_pg:expr) => {{
        if $is_pg {
            for fence in $fences.iter() {
                let held = diesel::sql_query(
                    "UPDATE callfs_locks SET expires_at = expires_at \
                     WHERE lock_key = $1 AND holder = $2 AND expires_at > now()",
                )
                .bind::<diesel::sql_types::Text, _>(&fence.key)
                .bind::<diesel::sql_types::Text, _>(&fence.holder)
                .execute($c)?;
                if held == 0 {
                    return Err(ActorError::LeaseLost);
                }
            }
        }
    }};
}

/// Within a transaction: a blob that stopped being referenced, kept readable for the grace period.
macro_rules! record_garbage {
    ($c:ident, $blob:expr, $backend:expr, $instance:expr) => {{
        diesel::insert_into(blob_garbage::table)
            .values((
                blob_garbage::blob.eq($blob),
                blob_garbage::backend_type.eq($backend),
                blob_garbage::instance_id.eq($instance),
                blob_garbage::delete_after.eq(now() + GARBAGE_GRACE),
            ))
            .on_conflict(blob_garbage::blob)
            .do_nothing()
            .execute($c)?;
    }};
}

/// Escapes `%`, `_` and `\` for a LIKE prefix match.
fn like_prefix(path: &str) -> String {
    let mut escaped = String::with_capacity(path.len() + 2);
    for ch in path.chars() {
        if matches!(ch, '%' | '_' | '\\') {
            escaped.push('\\');
        }
        escaped.push(ch);
    }
    escaped.push_str("/%");
    escaped
}

/// Within a transaction: makes every missing ancestor of `path` a directory owned by the entry's
/// owner and returns the id of the immediate parent.
macro_rules! ensure_parents {
    ($c:ident, $entry:expr, $path:expr) => {{
        let mut parent_id: i64 = inodes::table.filter(inodes::path.eq("/")).select(inodes::id).get_result($c)?;
        for dir in ancestors_below_root($path) {
            let row = new_row($entry, parent_id, dir, true);
            diesel::insert_into(inodes::table).values(&row).on_conflict(inodes::path).do_nothing().execute($c)?;
            let found: Option<(i64, String)> = inodes::table
                .filter(inodes::path.eq(dir))
                .select((inodes::id, inodes::kind))
                .get_result($c)
                .optional()?;
            // Taken and then moved away by a concurrent transaction: plan the create again.
            let Some((id, kind)) = found else { return Err(ActorError::Changed) };
            if kind != DIRECTORY {
                return Err(ActorError::NotADirectory);
            }
            parent_id = id;
        }
        parent_id
    }};
}

pub struct MetadataStore {
    pub(super) pool: Pool,
    pub(super) metrics: Metrics,
}

impl MetadataStore {
    pub fn new(pool: Pool, metrics: Metrics) -> Self {
        Self { pool, metrics }
    }

    /// Checks out a connection, runs `f` and records the round trip.
    fn run<T>(&self, op: MetadataOp, f: impl FnOnce(&mut Conn) -> Result<T, ActorError>) -> Result<T, ActorError> {
        run(&self.pool, &self.metrics, op, f)
    }
}

/// Checks out a connection of `pool`, runs `f` and records the round trip.
fn run<T>(
    pool: &Pool,
    metrics: &Metrics,
    op: MetadataOp,
    f: impl FnOnce(&mut Conn) -> Result<T, ActorError>,
) -> Result<T, ActorError> {
    let started = Instant::now();
    let result = checkout(pool).and_then(|mut conn| {
        let result = f(&mut conn);
        if let (Err(ActorError::MetadataUnavailable(_)), Conn::Pg(pooled)) = (&result, &mut conn) {
            pooled.broken = true;
        }
        result
    });
    metrics.record_metadata(op, started.elapsed());
    match &result {
        Err(ActorError::MetadataUnavailable(_)) => metrics.record_error(ErrorKind::MetadataUnavailable),
        Err(ActorError::Metadata(_)) => metrics.record_error(ErrorKind::QueryFailed),
        _ => {}
    }
    result
}

/// The row at `path`: one statement, no transaction.
fn entry_at(conn: &mut Conn, path: &str) -> Result<Option<Inode>, ActorError> {
    Ok(with_conn!(conn, c => inodes::table
        .filter(inodes::path.eq(path))
        .select(Inode::as_select())
        .get_result(c)
        .optional())?)
}

/// Point reads of `inodes` for a blocking worker other than the store (the localfs worker reads a
/// small file's row and bytes on one thread). Its own pool: the store's connections stay free for
/// writes. Counted and timed like the store's own reads.
#[derive(Clone)]
pub struct EntryReader {
    pool: Pool,
    metrics: Metrics,
}

impl EntryReader {
    /// A pool of up to `max_connections` read connections to the store `connect` opened (no
    /// migrations: the store has run them); one is opened now, the rest on demand.
    pub fn connect(
        kind: StoreKind,
        target: &str,
        max_connections: u32,
        op_timeout: Duration,
        metrics: Metrics,
    ) -> Result<Self, ActorError> {
        let pool = match kind {
            StoreKind::Sqlite => Pool::Sqlite(
                diesel::r2d2::Pool::builder()
                    .max_size(max_connections.max(1))
                    .min_idle(Some(1))
                    .connection_timeout(op_timeout)
                    .test_on_check_out(false)
                    .connection_customizer(Box::new(SqlitePragmas { read_only: true }))
                    .build(ConnectionManager::<SqliteConnection>::new(target))
                    .map_err(|e| ActorError::MetadataUnavailable(e.to_string()))?,
            ),
            StoreKind::Postgres => Pool::Pg(
                diesel::r2d2::Pool::builder()
                    .max_size(max_connections.max(1))
                    .min_idle(Some(1))
                    .test_on_check_out(false)
                    .connection_timeout(op_timeout.max(Duration::from_secs(5)))
                    .connection_customizer(Box::new(PgUtc))
                    .build(PgManager(ConnectionManager::<PgConnection>::new(target)))
                    .map_err(|e| ActorError::MetadataUnavailable(e.to_string()))?,
            ),
        };
        Ok(Self { pool, metrics })
    }

    /// The row at a canonical path, if any (what [`GetEntry`] answers).
    pub fn entry(&self, path: &str) -> Result<Option<Inode>, ActorError> {
        run(&self.pool, &self.metrics, MetadataOp::Get, |conn| entry_at(conn, path))
    }
}

impl Actor for MetadataStore {
    type Context = SyncContext<Self>;
}

/// A trivial query (readiness).
#[derive(Message)]
#[rtype(result = "Result<(), ActorError>")]
pub struct Ping;

impl Handler<Ping> for MetadataStore {
    type Result = Result<(), ActorError>;
    fn handle(&mut self, _msg: Ping, _ctx: &mut Self::Context) -> Self::Result {
        self.run(MetadataOp::Ping, |conn| {
            let pending = match conn {
                Conn::Sqlite(c) => c.has_pending_migration(SQLITE_MIGRATIONS),
                Conn::Pg(c) => c.has_pending_migration(POSTGRES_MIGRATIONS),
            }
            .map_err(|e| ActorError::MetadataUnavailable(e.to_string()))?;
            if pending {
                return Err(ActorError::MetadataUnavailable("migrations are not applied".into()));
            }
            Ok(())
        })
    }
}

/// The row at a canonical path, if any.
#[derive(Message)]
#[rtype(result = "Result<Option<Inode>, ActorError>")]
pub struct GetEntry {
    pub path: String,
}

impl Handler<GetEntry> for MetadataStore {
    type Result = Result<Option<Inode>, ActorError>;
    fn handle(&mut self, msg: GetEntry, _ctx: &mut Self::Context) -> Self::Result {
        self.run(MetadataOp::Get, |conn| entry_at(conn, &msg.path))
    }
}

/// The rows at several paths in one round trip (a path and its ancestors, say).
#[derive(Message)]
#[rtype(result = "Result<Vec<Inode>, ActorError>")]
pub struct GetEntries {
    pub paths: Vec<String>,
}

impl Handler<GetEntries> for MetadataStore {
    type Result = Result<Vec<Inode>, ActorError>;
    fn handle(&mut self, msg: GetEntries, _ctx: &mut Self::Context) -> Self::Result {
        self.run(MetadataOp::Get, |conn| {
            Ok(with_conn!(conn, c => inodes::table
                .filter(inodes::path.eq_any(&msg.paths))
                .select(Inode::as_select())
                .load(c))?)
        })
    }
}

/// What a file write reads before its body (api.md §8.3/§8.4): the rows at `paths` (the path and
/// its ancestors), and the intent of the blob it is about to write recorded in the same round trip
/// (storage.md §1.4: before the first byte). A write that goes no further drops the intent.
#[derive(Message)]
#[rtype(result = "Result<Vec<Inode>, ActorError>")]
pub struct PrepareWrite {
    pub path: String,
    /// Every ancestor, the parent last (empty for the root).
    pub ancestors: Vec<String>,
    pub intent: BlobRef,
}

impl Handler<PrepareWrite> for MetadataStore {
    type Result = Result<Vec<Inode>, ActorError>;
    fn handle(&mut self, msg: PrepareWrite, _ctx: &mut Self::Context) -> Self::Result {
        let rows = self.run(MetadataOp::Get, |conn| lineage_rows(conn, &msg.path, &msg.ancestors))?;
        self.record_intent(&msg.intent)?;
        Ok(rows)
    }
}

/// The rows of a path's lineage (the path and its ancestors, parent last). A directory has only
/// directories above it, so the path and its parent, read by one statement of fixed shape (prepared
/// once per connection), answer whenever the parent exists; the other ancestors are read only when
/// it does not (a write that creates its parents).
fn lineage_rows(conn: &mut Conn, path: &str, ancestors: &[String]) -> Result<Vec<Inode>, ActorError> {
    let parent = ancestors.last().map_or(path, String::as_str);
    let rows: Vec<Inode> = with_conn!(conn, c => inodes::table
        .filter(inodes::path.eq(path).or(inodes::path.eq(parent)))
        .select(Inode::as_select())
        .load(c))?;
    if rows.iter().any(|r| r.path == parent && r.is_dir()) || ancestors.is_empty() {
        return Ok(rows);
    }
    let mut paths = ancestors.to_vec();
    paths.push(path.to_string());
    Ok(with_conn!(conn, c => inodes::table
        .filter(inodes::path.eq_any(&paths))
        .select(Inode::as_select())
        .load(c))?)
}

/// Whether a directory has any child (one indexed row read, whatever its size).
#[derive(Message)]
#[rtype(result = "Result<bool, ActorError>")]
pub struct HasChildren {
    pub parent_id: i64,
}

impl Handler<HasChildren> for MetadataStore {
    type Result = Result<bool, ActorError>;
    fn handle(&mut self, msg: HasChildren, _ctx: &mut Self::Context) -> Self::Result {
        self.run(MetadataOp::ListChildren, |conn| {
            let first: Option<i64> = with_conn!(conn, c => inodes::table
                .filter(inodes::parent_id.eq(msg.parent_id))
                .select(inodes::id)
                .first(c)
                .optional())?;
            Ok(first.is_some())
        })
    }
}

/// Listing order: files before directories, then byte order of the name. The listing queries
/// (`listing.rs`) produce exactly this order; this is its reference.
pub fn sort_listing(rows: &mut [Inode]) {
    rows.sort_by(|a, b| (a.is_dir(), a.name.as_bytes()).cmp(&(b.is_dir(), b.name.as_bytes())));
}

/// Insert a file or directory, creating missing ancestors; a taken path is `AlreadyExists`. The
/// parent is resolved inside the transaction (and held by the foreign key), so a create racing
/// with a move or delete of its parent lands wholly before or after it.
#[derive(Message)]
#[rtype(result = "Result<Inode, ActorError>")]
pub struct CreateEntry {
    pub entry: NewEntry,
    pub fences: Vec<Fence>,
}

impl Handler<CreateEntry> for MetadataStore {
    type Result = Result<Inode, ActorError>;
    fn handle(&mut self, msg: CreateEntry, _ctx: &mut Self::Context) -> Self::Result {
        self.create_entry(msg.entry, &msg.fences)
    }
}

impl MetadataStore {
    fn is_pg(&self) -> bool {
        matches!(self.pool, Pool::Pg(_))
    }

    pub fn create_entry(&self, entry: NewEntry, fences: &[Fence]) -> Result<Inode, ActorError> {
        // A parent deleted between our read of it and the insert: create it again, once.
        match self.create_entry_once(&entry, fences) {
            Err(ActorError::Changed) => self.create_entry_once(&entry, fences),
            other => other,
        }
    }

    fn create_entry_once(&self, entry: &NewEntry, fences: &[Fence]) -> Result<Inode, ActorError> {
        let is_pg = self.is_pg();
        self.run(MetadataOp::Create, |conn| {
            write_tx!(conn, c => {
                check_fences!(c, fences, is_pg);
                let parent_id = ensure_parents!(c, entry, &entry.path);
                if is_pg {
                    // Holds the parent against a concurrent delete or move until this commit.
                    // The path is checked again after any wait: a parent moved meanwhile no longer
                    // matches, and the create is planned again under its new shape.
                    let (parent_path, _) = parent_and_name(&entry.path);
                    let held = diesel::sql_query("SELECT id FROM inodes WHERE id = $1 AND path = $2 FOR SHARE")
                        .bind::<diesel::sql_types::BigInt, _>(parent_id)
                        .bind::<diesel::sql_types::Text, _>(parent_path)
                        .execute(c)?;
                    if held == 0 {
                        return Err(ActorError::Changed);
                    }
                }
                let row = new_row(entry, parent_id, &entry.path, entry.is_dir);
                let inode = diesel::insert_into(inodes::table)
                    .values(&row)
                    .returning(Inode::as_returning())
                    .get_result(c)?;
                if let Some(blob) = &entry.blob {
                    diesel::delete(blob_intents::table.filter(blob_intents::blob.eq(blob))).execute(c)?;
                }
                Ok::<_, ActorError>(inode)
            })
        })
    }
}

/// Switch a file to another blob by compare-and-set (storage.md §1.1): only when the row still has
/// `expect_version` (and `expect_blob`, for relocations). The old blob goes to garbage and the new
/// blob's intent is settled in the same transaction. A miss is [`ActorError::Changed`].
#[derive(Message, Debug, Clone)]
#[rtype(result = "Result<Inode, ActorError>")]
pub struct SwitchBlob {
    pub id: i64,
    pub expect_version: i64,
    pub expect_blob: Option<String>,
    /// The row must still be at this path (a write planned before its lock: a rename keeps the id).
    pub expect_path: Option<String>,
    pub blob: String,
    pub size: i64,
    pub backend_type: String,
    pub instance_id: Option<String>,
    /// A content write (new version, fresh mtime); a relocation keeps both.
    pub content_write: bool,
    pub fences: Vec<Fence>,
}

impl Handler<SwitchBlob> for MetadataStore {
    type Result = Result<Inode, ActorError>;
    fn handle(&mut self, msg: SwitchBlob, _ctx: &mut Self::Context) -> Self::Result {
        self.switch_blob(msg)
    }
}

impl MetadataStore {
    pub fn switch_blob(&self, msg: SwitchBlob) -> Result<Inode, ActorError> {
        let is_pg = self.is_pg();
        self.run(MetadataOp::Update, |conn| {
            write_tx!(conn, c => {
                check_fences!(c, msg.fences, is_pg);
                let current: Option<Inode> = inodes::table
                    .filter(inodes::id.eq(msg.id))
                    .select(Inode::as_select())
                    .get_result(c)
                    .optional()?;
                let Some(current) = current else { return Err(ActorError::Changed) };
                if current.content_version != msg.expect_version
                    || msg.expect_blob.as_ref().is_some_and(|b| current.blob.as_ref() != Some(b))
                    || msg.expect_path.as_ref().is_some_and(|p| &current.path != p)
                    || !current.is_file()
                {
                    return Err(ActorError::Changed);
                }
                let t = now();
                let version = if msg.content_write { current.content_version + 1 } else { current.content_version };
                let mtime = if msg.content_write { t } else { current.mtime };
                // No RETURNING: the row is `current` with these columns (a statement of fixed
                // shape, prepared once per connection).
                let switched = diesel::update(
                    inodes::table
                        .filter(inodes::id.eq(msg.id))
                        .filter(inodes::content_version.eq(msg.expect_version)),
                )
                .set((
                    inodes::blob.eq(&msg.blob),
                    inodes::size.eq(msg.size),
                    inodes::backend_type.eq(&msg.backend_type),
                    inodes::callfs_instance_id.eq(&msg.instance_id),
                    inodes::content_version.eq(version),
                    inodes::mtime.eq(mtime),
                    inodes::ctime.eq(t),
                    inodes::updated_at.eq(t),
                ))
                .execute(c)?;
                if switched == 0 {
                    return Err(ActorError::Changed);
                }
                let updated = Inode {
                    blob: Some(msg.blob.clone()),
                    size: msg.size,
                    backend_type: msg.backend_type.clone(),
                    callfs_instance_id: msg.instance_id.clone(),
                    content_version: version,
                    mtime,
                    ctime: t,
                    updated_at: t,
                    ..current.clone()
                };
                if let Some(old) = &current.blob {
                    record_garbage!(c, old, &current.backend_type, &current.callfs_instance_id);
                }
                diesel::delete(blob_intents::table.filter(blob_intents::blob.eq(&msg.blob))).execute(c)?;
                Ok::<_, ActorError>(updated)
            })
        })
    }
}

/// Remove one row; a directory with children is refused in the same transaction. A file's blob
/// goes to garbage.
#[derive(Message)]
#[rtype(result = "Result<(), ActorError>")]
pub struct DeleteEntry {
    pub id: i64,
    pub fences: Vec<Fence>,
}

impl Handler<DeleteEntry> for MetadataStore {
    type Result = Result<(), ActorError>;
    fn handle(&mut self, msg: DeleteEntry, _ctx: &mut Self::Context) -> Self::Result {
        let is_pg = self.is_pg();
        // A child inserted concurrently keeps the directory (foreign key): it is not empty.
        let not_empty = |err| if err == ActorError::Changed { ActorError::DirectoryNotEmpty } else { err };
        self.run(MetadataOp::Delete, |conn| {
            write_tx!(conn, c => {
                check_fences!(c, msg.fences, is_pg);
                let children: i64 = inodes::table.filter(inodes::parent_id.eq(msg.id)).count().get_result(c)?;
                if children > 0 {
                    return Err(ActorError::DirectoryNotEmpty);
                }
                let deleted: Option<Inode> = diesel::delete(inodes::table.filter(inodes::id.eq(msg.id)))
                    .returning(Inode::as_returning())
                    .get_result(c)
                    .optional()?;
                let Some(deleted) = deleted else { return Err(ActorError::NotFound) };
                if let Some(blob) = &deleted.blob {
                    record_garbage!(c, blob, &deleted.backend_type, &deleted.callfs_instance_id);
                }
                Ok(())
            })
        })
        .map_err(not_empty)
    }
}

/// Record a blob about to be written, before its first byte (storage.md §1.4).
#[derive(Message)]
#[rtype(result = "Result<(), ActorError>")]
pub struct RecordIntent {
    pub blob: BlobRef,
}

impl Handler<RecordIntent> for MetadataStore {
    type Result = Result<(), ActorError>;
    fn handle(&mut self, msg: RecordIntent, _ctx: &mut Self::Context) -> Self::Result {
        self.record_intent(&msg.blob)
    }
}

impl MetadataStore {
    fn record_intent(&self, blob: &BlobRef) -> Result<(), ActorError> {
        self.run(MetadataOp::Create, |conn| {
            let t = now();
            with_conn!(conn, c => diesel::insert_into(blob_intents::table)
                .values((
                    blob_intents::blob.eq(&blob.blob),
                    blob_intents::backend_type.eq(&blob.backend_type),
                    blob_intents::instance_id.eq(&blob.instance_id),
                    blob_intents::created_at.eq(t),
                    blob_intents::touched_at.eq(t),
                ))
                .execute(c))?;
            Ok(())
        })
    }
}

/// A long upload is still alive: its intent must not look abandoned.
#[derive(Message)]
#[rtype(result = "Result<(), ActorError>")]
pub struct TouchIntent {
    pub blob: String,
}

impl Handler<TouchIntent> for MetadataStore {
    type Result = Result<(), ActorError>;
    fn handle(&mut self, msg: TouchIntent, _ctx: &mut Self::Context) -> Self::Result {
        self.run(MetadataOp::Update, |conn| {
            with_conn!(conn, c => diesel::update(blob_intents::table.filter(blob_intents::blob.eq(&msg.blob)))
                .set(blob_intents::touched_at.eq(now()))
                .execute(c))?;
            Ok(())
        })
    }
}

/// Forget an intent (its blob was deleted or never written).
#[derive(Message)]
#[rtype(result = "Result<(), ActorError>")]
pub struct DropIntent {
    pub blob: String,
}

impl Handler<DropIntent> for MetadataStore {
    type Result = Result<(), ActorError>;
    fn handle(&mut self, msg: DropIntent, _ctx: &mut Self::Context) -> Self::Result {
        self.run(MetadataOp::Delete, |conn| {
            with_conn!(conn, c => diesel::delete(blob_intents::table.filter(blob_intents::blob.eq(&msg.blob))).execute(c))?;
            Ok(())
        })
    }
}

/// Forget a garbage row whose bytes were deleted.
#[derive(Message)]
#[rtype(result = "Result<(), ActorError>")]
pub struct DropGarbage {
    pub blob: String,
}

impl Handler<DropGarbage> for MetadataStore {
    type Result = Result<(), ActorError>;
    fn handle(&mut self, msg: DropGarbage, _ctx: &mut Self::Context) -> Self::Result {
        self.run(MetadataOp::Delete, |conn| {
            with_conn!(conn, c => diesel::delete(blob_garbage::table.filter(blob_garbage::blob.eq(&msg.blob))).execute(c))?;
            Ok(())
        })
    }
}

/// Garbage of one node's localfs whose grace period is over.
#[derive(Message)]
#[rtype(result = "Result<Vec<String>, ActorError>")]
pub struct DueGarbage {
    pub instance_id: String,
    pub limit: i64,
    /// `Localfs`: this node's localfs garbage; `S3`: the shared bucket's garbage, whoever recorded it.
    pub backend: Backend,
}

/// How long an S3 garbage row claimed by one node's sweep stays invisible to the others: far longer
/// than a batch of deletes takes. A node that dies mid-batch leaves its rows to whoever comes next.
const S3_GARBAGE_CLAIM: chrono::Duration = chrono::Duration::minutes(5);

#[derive(QueryableByName)]
struct ClaimedBlob {
    #[diesel(sql_type = diesel::sql_types::Text)]
    blob: String,
}

fn claimed(rows: Vec<ClaimedBlob>) -> Vec<String> {
    rows.into_iter().map(|row| row.blob).collect()
}

fn pg(pooled: &mut PooledConnection<PgManager>) -> &mut PgConnection {
    pooled
}

impl Handler<DueGarbage> for MetadataStore {
    type Result = Result<Vec<String>, ActorError>;
    fn handle(&mut self, msg: DueGarbage, _ctx: &mut Self::Context) -> Self::Result {
        self.run(MetadataOp::Get, |conn| {
            Ok(match (msg.backend, conn) {
                // Any node may settle the shared bucket's garbage: each row is claimed by pushing
                // its `delete_after` past the claim period, skipping rows another node is claiming
                // right now, so two sweeps never delete and count the same blob. The row itself
                // stays until its bytes are gone (bytes first, then the row).
                (Backend::S3, Conn::Pg(pooled)) => claimed(
                    diesel::sql_query(
                        "UPDATE blob_garbage SET delete_after = $1 WHERE blob IN (\
                       SELECT blob FROM blob_garbage WHERE backend_type = 's3' AND delete_after < $2 \
                       ORDER BY delete_after LIMIT $3 FOR UPDATE SKIP LOCKED) RETURNING blob",
                    )
                    .bind::<diesel::sql_types::Timestamp, _>(now() + S3_GARBAGE_CLAIM)
                    .bind::<diesel::sql_types::Timestamp, _>(now())
                    .bind::<diesel::sql_types::BigInt, _>(msg.limit)
                    .load::<ClaimedBlob>(pg(pooled))?,
                ),
                (backend, conn) => due_garbage(conn, backend, &msg)?,
            })
        })
    }
}

/// Due garbage by a plain query: this node's localfs, or S3 on SQLite (a single node).
fn due_garbage(conn: &mut Conn, backend: Backend, msg: &DueGarbage) -> Result<Vec<String>, ActorError> {
    Ok(match backend {
        Backend::Localfs => with_conn!(conn, c => blob_garbage::table
                    .filter(blob_garbage::instance_id.eq(&msg.instance_id))
                    .filter(blob_garbage::backend_type.eq("localfs"))
                    .filter(blob_garbage::delete_after.lt(now()))
                    .select(blob_garbage::blob)
                    .limit(msg.limit)
                    .load(c))?,
        Backend::S3 => with_conn!(conn, c => blob_garbage::table
                    .filter(blob_garbage::backend_type.eq("s3"))
                    .filter(blob_garbage::delete_after.lt(now()))
                    .select(blob_garbage::blob)
                    .limit(msg.limit)
                    .load(c))?,
    })
}

/// Intents of one node that no live write can still settle: created before the node started, or
/// untouched for an hour.
#[derive(Message)]
#[rtype(result = "Result<Vec<String>, ActorError>")]
pub struct StaleIntents {
    pub instance_id: String,
    pub started_at: NaiveDateTime,
    /// `S3`: intents of the shared bucket (no instance), stale only when untouched for an hour.
    pub backend: Backend,
}

impl Handler<StaleIntents> for MetadataStore {
    type Result = Result<Vec<String>, ActorError>;
    fn handle(&mut self, msg: StaleIntents, _ctx: &mut Self::Context) -> Self::Result {
        let idle = now() - chrono::Duration::hours(1);
        self.run(MetadataOp::Get, |conn| {
            Ok(match msg.backend {
                Backend::Localfs => with_conn!(conn, c => blob_intents::table
                    .filter(blob_intents::instance_id.eq(&msg.instance_id))
                    .filter(blob_intents::backend_type.eq("localfs"))
                    .filter(blob_intents::created_at.lt(msg.started_at).or(blob_intents::touched_at.lt(idle)))
                    .select(blob_intents::blob)
                    .load(c))?,
                // Claimed like S3 garbage: touching the intent hides it from the other nodes'
                // sweeps for another hour, so one node deletes and counts each abandoned blob.
                Backend::S3 => match conn {
                    Conn::Pg(pooled) => claimed(
                        diesel::sql_query(
                            "UPDATE blob_intents SET touched_at = $1 WHERE blob IN (\
                           SELECT blob FROM blob_intents WHERE backend_type = 's3' AND touched_at < $2 \
                           FOR UPDATE SKIP LOCKED) RETURNING blob",
                        )
                        .bind::<diesel::sql_types::Timestamp, _>(now())
                        .bind::<diesel::sql_types::Timestamp, _>(idle)
                        .load::<ClaimedBlob>(pg(pooled))?,
                    ),
                    conn => with_conn!(conn, c => blob_intents::table
                        .filter(blob_intents::backend_type.eq("s3"))
                        .filter(blob_intents::touched_at.lt(idle))
                        .select(blob_intents::blob)
                        .load(c))?,
                },
            })
        })
    }
}

/// Everything that references blobs of one node: rows (with their paths), intents, garbage.
#[derive(Message)]
#[rtype(result = "Result<BlobReferences, ActorError>")]
pub struct ListBlobReferences {
    pub instance_id: String,
    /// `Localfs`: this node's blobs; `S3`: the shared bucket's (every node's).
    pub backend: Backend,
}

#[derive(Debug, Default)]
pub struct BlobReferences {
    /// `(blob, path)` of every localfs file row of the node.
    pub rows: Vec<(String, String)>,
    pub intents: Vec<String>,
    pub garbage: Vec<String>,
}

/// `(blob, path)` of a file row as stored (the blob may be NULL on revision-1 rows).
type BlobRow = (Option<String>, String);

impl Handler<ListBlobReferences> for MetadataStore {
    type Result = Result<BlobReferences, ActorError>;
    fn handle(&mut self, msg: ListBlobReferences, _ctx: &mut Self::Context) -> Self::Result {
        self.run(MetadataOp::ListSubtree, |conn| {
            with_conn!(conn, c => {
                let (rows, intents, garbage): (Vec<BlobRow>, Vec<String>, Vec<String>) = match msg.backend {
                    Backend::Localfs => (
                        inodes::table
                            .filter(inodes::kind.eq(FILE))
                            .filter(inodes::backend_type.eq("localfs"))
                            .filter(inodes::callfs_instance_id.eq(&msg.instance_id))
                            .select((inodes::blob, inodes::path))
                            .load(c)?,
                        blob_intents::table
                            .filter(blob_intents::instance_id.eq(&msg.instance_id))
                            .select(blob_intents::blob)
                            .load(c)?,
                        blob_garbage::table
                            .filter(blob_garbage::instance_id.eq(&msg.instance_id))
                            .select(blob_garbage::blob)
                            .load(c)?,
                    ),
                    Backend::S3 => (
                        inodes::table
                            .filter(inodes::kind.eq(FILE))
                            .filter(inodes::backend_type.eq("s3"))
                            .select((inodes::blob, inodes::path))
                            .load(c)?,
                        blob_intents::table
                            .filter(blob_intents::backend_type.eq("s3"))
                            .select(blob_intents::blob)
                            .load(c)?,
                        blob_garbage::table
                            .filter(blob_garbage::backend_type.eq("s3"))
                            .select(blob_garbage::blob)
                            .load(c)?,
                    ),
                };
                let rows = rows.into_iter().map(|(b, p)| (b.unwrap_or_default(), p)).collect();
                Ok::<_, ActorError>(BlobReferences { rows, intents, garbage })
            })
        })
    }
}

/// Revision-1 files of this node: file rows without a blob (storage.md §2, upgrade).
#[derive(Message)]
#[rtype(result = "Result<Vec<(i64, String)>, ActorError>")]
pub struct LegacyFiles {
    pub instance_id: String,
}

impl Handler<LegacyFiles> for MetadataStore {
    type Result = Result<Vec<(i64, String)>, ActorError>;
    fn handle(&mut self, msg: LegacyFiles, _ctx: &mut Self::Context) -> Self::Result {
        self.run(MetadataOp::Get, |conn| {
            Ok(with_conn!(conn, c => inodes::table
                .filter(inodes::kind.eq(FILE))
                .filter(inodes::backend_type.eq("localfs"))
                .filter(inodes::blob.is_null())
                .filter(inodes::callfs_instance_id.eq(&msg.instance_id).or(inodes::callfs_instance_id.is_null()))
                .select((inodes::id, inodes::path))
                .load(c))?)
        })
    }
}

/// Give a revision-1 row its converted blob (only while it still has none).
#[derive(Message)]
#[rtype(result = "Result<bool, ActorError>")]
pub struct AdoptBlob {
    pub id: i64,
    pub blob: String,
    pub instance_id: String,
}

impl Handler<AdoptBlob> for MetadataStore {
    type Result = Result<bool, ActorError>;
    fn handle(&mut self, msg: AdoptBlob, _ctx: &mut Self::Context) -> Self::Result {
        self.run(MetadataOp::Update, |conn| {
            let n = with_conn!(conn, c => diesel::update(
                inodes::table.filter(inodes::id.eq(msg.id)).filter(inodes::blob.is_null()),
            )
            .set((inodes::blob.eq(&msg.blob), inodes::callfs_instance_id.eq(&msg.instance_id)))
            .execute(c))?;
            Ok(n == 1)
        })
    }
}

/// Re-key a row (and its whole subtree) to a new path in one transaction.
#[derive(Message, Debug, Clone)]
#[rtype(result = "Result<Inode, ActorError>")]
pub struct RenameEntry {
    pub source_path: String,
    pub destination_path: String,
    pub overwrite: bool,
    pub create_parents: bool,
    /// Owner, backend and instance recorded on destination parents created on the way.
    pub parents: NewEntry,
    /// The source row as planned: a different row at the source path is [`ActorError::Changed`].
    pub source_id: i64,
    /// The destination row the caller was authorised to replace (`None`: the path was free). Any
    /// other row found there in the transaction is [`ActorError::Changed`], never replaced.
    pub destination_id: Option<i64>,
    pub fences: Vec<Fence>,
}

impl Handler<RenameEntry> for MetadataStore {
    type Result = Result<Inode, ActorError>;
    fn handle(&mut self, msg: RenameEntry, _ctx: &mut Self::Context) -> Self::Result {
        self.rename_entry(msg)
    }
}

impl MetadataStore {
    pub fn rename_entry(&self, msg: RenameEntry) -> Result<Inode, ActorError> {
        let is_pg = self.is_pg();
        self.run(MetadataOp::Rename, |conn| {
            write_tx!(conn, c => {
                check_fences!(c, msg.fences, is_pg);
                let source: Inode = inodes::table
                    .filter(inodes::path.eq(&msg.source_path))
                    .select(Inode::as_select())
                    .get_result(c)
                    .optional()?
                    .ok_or(ActorError::NotFound)?;
                if source.id != msg.source_id {
                    return Err(ActorError::Changed);
                }
                let (parent_path, name) = parent_and_name(&msg.destination_path);
                let existing: Option<Inode> = inodes::table
                    .filter(inodes::path.eq(&msg.destination_path))
                    .select(Inode::as_select())
                    .get_result(c)
                    .optional()?;
                let parent: Option<Inode> = inodes::table
                    .filter(inodes::path.eq(parent_path))
                    .select(Inode::as_select())
                    .get_result(c)
                    .optional()?;
                let parent_id = match parent {
                    Some(p) if p.is_dir() => p.id,
                    Some(_) => return Err(ActorError::NotADirectory),
                    None if msg.create_parents => {
                        let probe = NewEntry { path: msg.destination_path.clone(), ..msg.parents.clone() };
                        ensure_parents!(c, &probe, &msg.destination_path)
                    }
                    None => {
                        return Err(ActorError::InvalidInput("destination parent directory does not exist".into()))
                    }
                };
                let replaced = existing.as_ref().filter(|e| e.id != source.id).map(|e| e.id);
                if replaced.is_some() && replaced != msg.destination_id {
                    return Err(ActorError::Changed);
                }
                if let Some(existing) = existing.filter(|e| e.id != source.id) {
                    if !msg.overwrite || existing.kind != source.kind {
                        return Err(ActorError::AlreadyExists);
                    }
                    let children: i64 =
                        inodes::table.filter(inodes::parent_id.eq(existing.id)).count().get_result(c)?;
                    if children > 0 {
                        return Err(ActorError::DirectoryNotEmpty);
                    }
                    diesel::delete(inodes::table.filter(inodes::id.eq(existing.id))).execute(c)?;
                    if let Some(blob) = &existing.blob {
                        record_garbage!(c, blob, &existing.backend_type, &existing.callfs_instance_id);
                    }
                }
                let t = now();
                let moved = diesel::update(inodes::table.filter(inodes::id.eq(source.id)))
                    .set((
                        inodes::path.eq(&msg.destination_path),
                        inodes::name.eq(name),
                        inodes::parent_id.eq(parent_id),
                        inodes::ctime.eq(t),
                        inodes::updated_at.eq(t),
                    ))
                    .returning(Inode::as_returning())
                    .get_result(c)?;
                if source.is_dir() {
                    let sql = if is_pg {
                        "UPDATE inodes SET path = $1 || substr(path, $2), updated_at = $3 WHERE path LIKE $4 ESCAPE '\\'"
                    } else {
                        "UPDATE inodes SET path = ? || substr(path, ?), updated_at = ? WHERE path LIKE ? ESCAPE '\\'"
                    };
                    diesel::sql_query(sql)
                        .bind::<diesel::sql_types::Text, _>(&msg.destination_path)
                        .bind::<diesel::sql_types::Integer, _>(msg.source_path.chars().count() as i32 + 1)
                        .bind::<diesel::sql_types::Timestamp, _>(t)
                        .bind::<diesel::sql_types::Text, _>(like_prefix(&msg.source_path))
                        .execute(c)?;
                }
                Ok::<_, ActorError>(moved)
            })
        })
    }
}

/// One row of `single_use_links`.
#[derive(Queryable, Selectable, Debug, Clone)]
#[diesel(table_name = single_use_links)]
pub struct LinkRow {
    pub token: String,
    pub file_path: String,
    pub status: String,
    pub expires_at: NaiveDateTime,
    pub hmac_signature: String,
}

#[derive(Insertable)]
#[diesel(table_name = single_use_links)]
struct NewLink<'a> {
    token: &'a str,
    file_path: &'a str,
    status: &'a str,
    expires_at: NaiveDateTime,
    hmac_signature: &'a str,
    created_by: &'a str,
    created_at: NaiveDateTime,
    updated_at: NaiveDateTime,
}

/// Store a freshly generated link (`active`).
#[derive(Message)]
#[rtype(result = "Result<(), ActorError>")]
pub struct CreateLink {
    pub token: String,
    pub file_path: String,
    pub expires_at: NaiveDateTime,
    pub signature: String,
    pub created_by: String,
}

impl Handler<CreateLink> for MetadataStore {
    type Result = Result<(), ActorError>;
    fn handle(&mut self, msg: CreateLink, _ctx: &mut Self::Context) -> Self::Result {
        self.run(MetadataOp::LinkCreate, |conn| {
            let t = now();
            let row = NewLink {
                token: &msg.token,
                file_path: &msg.file_path,
                status: "active",
                expires_at: msg.expires_at,
                hmac_signature: &msg.signature,
                created_by: &msg.created_by,
                created_at: t,
                updated_at: t,
            };
            with_conn!(conn, c => diesel::insert_into(single_use_links::table).values(&row).execute(c))?;
            Ok(())
        })
    }
}

/// The link row of an exact token string.
#[derive(Message)]
#[rtype(result = "Result<Option<LinkRow>, ActorError>")]
pub struct GetLink {
    pub token: String,
}

impl Handler<GetLink> for MetadataStore {
    type Result = Result<Option<LinkRow>, ActorError>;
    fn handle(&mut self, msg: GetLink, _ctx: &mut Self::Context) -> Self::Result {
        self.run(MetadataOp::LinkGet, |conn| {
            Ok(with_conn!(conn, c => single_use_links::table
                .filter(single_use_links::token.eq(&msg.token))
                .select(LinkRow::as_select())
                .get_result(c)
                .optional())?)
        })
    }
}

/// The single compare-and-set that lets exactly one download through; `true` for the winner.
#[derive(Message)]
#[rtype(result = "Result<bool, ActorError>")]
pub struct ConsumeLink {
    pub token: String,
    pub client_ip: String,
}

impl Handler<ConsumeLink> for MetadataStore {
    type Result = Result<bool, ActorError>;
    fn handle(&mut self, msg: ConsumeLink, _ctx: &mut Self::Context) -> Self::Result {
        let is_pg = matches!(self.pool, Pool::Pg(_));
        self.run(MetadataOp::LinkConsume, |conn| {
            let sql = if is_pg {
                "UPDATE single_use_links SET status = 'used', used_at = $1, used_by_ip = $2::inet, updated_at = $1 \
                 WHERE token = $3 AND status = 'active' AND expires_at > $1"
            } else {
                "UPDATE single_use_links SET status = 'used', used_at = ?1, used_by_ip = ?2, updated_at = ?1 \
                 WHERE token = ?3 AND status = 'active' AND expires_at > ?1"
            };
            let t = now();
            let updated = with_conn!(conn, c => diesel::sql_query(sql)
                .bind::<diesel::sql_types::Timestamp, _>(t)
                .bind::<diesel::sql_types::Text, _>(&msg.client_ip)
                .bind::<diesel::sql_types::Text, _>(&msg.token)
                .execute(c))?;
            Ok(updated == 1)
        })
    }
}

/// Purge links expired or used more than `retention` ago; returns how many went.
#[derive(Message)]
#[rtype(result = "Result<usize, ActorError>")]
pub struct CleanupLinks {
    pub retention: Duration,
}

impl Handler<CleanupLinks> for MetadataStore {
    type Result = Result<usize, ActorError>;
    fn handle(&mut self, msg: CleanupLinks, _ctx: &mut Self::Context) -> Self::Result {
        let cutoff = now() - chrono::Duration::from_std(msg.retention).unwrap_or_default();
        self.run(MetadataOp::LinkCleanup, |conn| {
            Ok(with_conn!(conn, c => diesel::delete(
                single_use_links::table.filter(
                    single_use_links::expires_at
                        .lt(cutoff)
                        .or(single_use_links::used_at.lt(cutoff)),
                ),
            )
            .execute(c))?)
        })
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    /// A store on a fresh SQLite file (also used by the listing tests).
    pub(crate) fn store() -> (MetadataStore, tempfile::TempDir) {
        let dir = tempfile::tempdir().unwrap();
        let (metrics, _) = Metrics::new("t", "node-1");
        let db = dir.path().join("meta.sqlite3");
        let pool = connect(StoreKind::Sqlite, db.to_str().unwrap(), 4, Duration::from_secs(5), &metrics).unwrap();
        (MetadataStore::new(pool, metrics), dir)
    }

    fn entry(path: &str, is_dir: bool) -> NewEntry {
        NewEntry {
            path: path.into(),
            is_dir,
            size: 3,
            owner: "alice".into(),
            backend_type: "localfs".into(),
            instance_id: Some("node-1".into()),
            blob: (!is_dir).then(|| format!("{:032x}", path.len())),
        }
    }

    fn create(s: &MetadataStore, path: &str, is_dir: bool) -> Result<Inode, ActorError> {
        s.create_entry(entry(path, is_dir), &[])
    }

    fn garbage(s: &MetadataStore) -> Vec<String> {
        s.run(MetadataOp::Get, |conn| {
            Ok(with_conn!(conn, c => blob_garbage::table.select(blob_garbage::blob).load(c))?)
        })
        .unwrap()
    }

    fn get(s: &MetadataStore, path: &str) -> Option<Inode> {
        s.run(MetadataOp::Get, |conn| {
            Ok(with_conn!(conn, c => inodes::table.filter(inodes::path.eq(path)).select(Inode::as_select()).get_result(c).optional())?)
        })
        .unwrap()
    }

    #[test]
    fn create_makes_ancestors_and_refuses_duplicates() {
        let (s, _dir) = store();
        let file = create(&s, "/a/b/c.txt", false).unwrap();
        assert_eq!(file.name, "c.txt");
        let b = get(&s, "/a/b").unwrap();
        assert!(b.is_dir());
        assert_eq!(file.parent_id, Some(b.id));
        assert_eq!(create(&s, "/a/b/c.txt", false), Err(ActorError::AlreadyExists));
        assert_eq!(create(&s, "/a/b/c.txt/d", false), Err(ActorError::NotADirectory));
        assert_eq!(get(&s, "/").unwrap().owner, "root");
    }

    #[test]
    fn rename_rekeys_the_subtree() {
        let (s, _dir) = store();
        create(&s, "/src/inner/deep.txt", false).unwrap();
        create(&s, "/src_sibling.txt", false).unwrap();
        let actor = s;
        let msg = RenameEntry {
            source_path: "/src".into(),
            destination_path: "/dst".into(),
            overwrite: false,
            create_parents: false,
            parents: entry("/dst", true),
            source_id: get(&actor, "/src").unwrap().id,
            destination_id: None,
            fences: Vec::new(),
        };
        let moved = actor.rename_entry(msg);
        assert_eq!(moved.unwrap().path, "/dst");
        assert!(get(&actor, "/dst/inner/deep.txt").is_some());
        assert!(get(&actor, "/src/inner").is_none());
        assert!(get(&actor, "/src_sibling.txt").is_some(), "prefix match must stop at the separator");
    }

    fn switch(file: &Inode, version: i64, blob: &str) -> SwitchBlob {
        SwitchBlob {
            expect_path: None,
            id: file.id,
            expect_version: version,
            expect_blob: None,
            blob: blob.into(),
            size: 9,
            backend_type: "localfs".into(),
            instance_id: Some("node-1".into()),
            content_write: true,
            fences: Vec::new(),
        }
    }

    #[test]
    fn content_switch_is_compare_and_set_and_collects_the_old_blob() {
        let (s, _dir) = store();
        let file = create(&s, "/f.txt", false).unwrap();
        let old = file.blob.clone().unwrap();
        let ctx_s = s;
        let updated = ctx_s.switch_blob(switch(&file, 1, "b".repeat(32).as_str())).unwrap();
        assert_eq!(updated.content_version, 2);
        assert_eq!(updated.blob.as_deref(), Some("b".repeat(32).as_str()));
        assert_eq!(garbage(&ctx_s), vec![old]);
        // A writer that read version 1 loses: nothing switches.
        let stale = ctx_s.switch_blob(switch(&file, 1, "c".repeat(32).as_str()));
        assert_eq!(stale.unwrap_err(), ActorError::Changed);
        assert_eq!(get(&ctx_s, "/f.txt").unwrap().blob.as_deref(), Some("b".repeat(32).as_str()));
    }

    #[test]
    fn a_rename_never_replaces_a_destination_it_was_not_authorised_against() {
        let (s, _dir) = store();
        create(&s, "/mine.txt", false).unwrap();
        // Planned onto a free path; a file appeared there before the commit (moved in with its
        // directory, say): the commit refuses rather than replacing someone else's file.
        let theirs = create(&s, "/dst/t.txt", false).unwrap();
        let mut msg = RenameEntry {
            source_path: "/mine.txt".into(),
            destination_path: "/dst/t.txt".into(),
            overwrite: true,
            create_parents: true,
            parents: entry("/dst", true),
            source_id: get(&s, "/mine.txt").unwrap().id,
            destination_id: None,
            fences: Vec::new(),
        };
        assert_eq!(s.rename_entry(msg.clone()), Err(ActorError::Changed));
        assert_eq!(get(&s, "/dst/t.txt").unwrap().id, theirs.id, "the other file survives");
        assert!(garbage(&s).is_empty(), "nothing released");
        msg.destination_id = Some(theirs.id);
        assert_eq!(s.rename_entry(msg).unwrap().path, "/dst/t.txt");
        assert_eq!(garbage(&s), vec![theirs.blob.unwrap()], "the authorised replacement is collected");
    }

    #[test]
    fn like_prefix_escapes_wildcards() {
        assert_eq!(like_prefix("/a_b%c\\"), "/a\\_b\\%c\\\\/%");
        assert_eq!(ancestors_below_root("/a/b/c"), vec!["/a", "/a/b"]);
        assert_eq!(parent_and_name("/a"), ("/", "a"));
        assert_eq!(parent_and_name("/a/b"), ("/a", "b"));
    }
}
