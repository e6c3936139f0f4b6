use std::time::{Duration, Instant};

use actix::prelude::*;
use chrono::{NaiveDateTime, Utc};
use diesel::connection::SimpleConnection;
use diesel::prelude::*;
use diesel::r2d2::{ConnectionManager, CustomizeConnection, PooledConnection};
use diesel::result::{DatabaseErrorKind, Error as DieselError};
use diesel_migrations::{embed_migrations, EmbeddedMigrations, MigrationHarness};

use super::schema::{inodes, single_use_links};
use super::{Inode, DIRECTORY, FILE};
use crate::error::ActorError;
use crate::metrics::{ErrorKind, MetadataOp, Metrics};

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
    Pg(diesel::r2d2::Pool<ConnectionManager<PgConnection>>),
}

enum Conn {
    Sqlite(PooledConnection<ConnectionManager<SqliteConnection>>),
    Pg(PooledConnection<ConnectionManager<PgConnection>>),
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
struct SqlitePragmas;

impl CustomizeConnection<SqliteConnection, diesel::r2d2::Error> for SqlitePragmas {
    fn on_acquire(&self, conn: &mut SqliteConnection) -> Result<(), diesel::r2d2::Error> {
        conn.batch_execute(
            // busy_timeout first: switching to WAL needs the write lock, which another connection may hold.
            "PRAGMA busy_timeout = 10000; PRAGMA journal_mode = WAL; PRAGMA synchronous = NORMAL; \
             PRAGMA case_sensitive_like = ON;",
        )
        .map_err(diesel::r2d2::Error::QueryError)
    }
}

#[derive(Debug)]
struct PgUtc;

impl CustomizeConnection<PgConnection, diesel::r2d2::Error> for PgUtc {
    fn on_acquire(&self, conn: &mut PgConnection) -> Result<(), diesel::r2d2::Error> {
        conn.batch_execute("SET TIME ZONE 'UTC'").map_err(diesel::r2d2::Error::QueryError)
    }
}

impl From<DieselError> for ActorError {
    fn from(err: DieselError) -> Self {
        match err {
            DieselError::DatabaseError(DatabaseErrorKind::UniqueViolation, _) => ActorError::AlreadyExists,
            DieselError::DatabaseError(DatabaseErrorKind::ClosedConnection, info) => {
                ActorError::MetadataUnavailable(info.message().to_string())
            }
            other => ActorError::Metadata(other.to_string()),
        }
    }
}

fn now() -> NaiveDateTime {
    Utc::now().naive_utc()
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
    let pool = match kind {
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
                .connection_customizer(Box::new(SqlitePragmas))
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
                .build(ConnectionManager::<PgConnection>::new(target))
                .map_err(|e| ActorError::MetadataUnavailable(e.to_string()))?;
            Pool::Pg(pool)
        }
    };
    let mut conn = checkout(&pool)?;
    migrate(&mut conn)?;
    ensure_root(&mut conn)?;
    metrics.record_metadata(MetadataOp::Migrate, started.elapsed());
    Ok(pool)
}

fn checkout(pool: &Pool) -> Result<Conn, ActorError> {
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
    }
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
            let (id, kind): (i64, String) =
                inodes::table.filter(inodes::path.eq(dir)).select((inodes::id, inodes::kind)).get_result($c)?;
            if kind != DIRECTORY {
                return Err(ActorError::NotADirectory);
            }
            parent_id = id;
        }
        parent_id
    }};
}

pub struct MetadataStore {
    pool: Pool,
    metrics: Metrics,
}

impl MetadataStore {
    pub fn new(pool: Pool, metrics: Metrics) -> Self {
        Self { pool, metrics }
    }

    /// Checks out a connection, runs `f` and records the round trip.
    fn run<T>(&self, op: MetadataOp, f: impl FnOnce(&mut Conn) -> Result<T, ActorError>) -> Result<T, ActorError> {
        let started = Instant::now();
        let result = checkout(&self.pool).and_then(|mut conn| f(&mut conn));
        self.metrics.record_metadata(op, started.elapsed());
        match &result {
            Err(ActorError::MetadataUnavailable(_)) => self.metrics.record_error(ErrorKind::MetadataUnavailable),
            Err(ActorError::Metadata(_)) => self.metrics.record_error(ErrorKind::QueryFailed),
            _ => {}
        }
        result
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
        self.run(MetadataOp::Get, |conn| {
            Ok(with_conn!(conn, c => inodes::table
                .filter(inodes::path.eq(&msg.path))
                .select(Inode::as_select())
                .get_result(c)
                .optional())?)
        })
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

/// Children of a directory: files first, then directories, each by name in byte order.
#[derive(Message)]
#[rtype(result = "Result<Vec<Inode>, ActorError>")]
pub struct ListChildren {
    pub parent_id: i64,
}

impl Handler<ListChildren> for MetadataStore {
    type Result = Result<Vec<Inode>, ActorError>;
    fn handle(&mut self, msg: ListChildren, _ctx: &mut Self::Context) -> Self::Result {
        let mut rows = self.run(MetadataOp::ListChildren, |conn| {
            Ok(with_conn!(conn, c => inodes::table
                .filter(inodes::parent_id.eq(msg.parent_id))
                .select(Inode::as_select())
                .load(c))?)
        })?;
        sort_listing(&mut rows);
        Ok(rows)
    }
}

/// Files before directories, then byte order of the name (independent of database collation).
pub fn sort_listing(rows: &mut [Inode]) {
    rows.sort_by(|a, b| (a.is_dir(), a.name.as_bytes()).cmp(&(b.is_dir(), b.name.as_bytes())));
}

/// Every row strictly below a directory.
#[derive(Message)]
#[rtype(result = "Result<Vec<Inode>, ActorError>")]
pub struct ListSubtree {
    pub path: String,
}

impl Handler<ListSubtree> for MetadataStore {
    type Result = Result<Vec<Inode>, ActorError>;
    fn handle(&mut self, msg: ListSubtree, _ctx: &mut Self::Context) -> Self::Result {
        let pattern = if msg.path == "/" { "/%".to_string() } else { like_prefix(&msg.path) };
        self.run(MetadataOp::ListSubtree, |conn| {
            Ok(with_conn!(conn, c => inodes::table
                .filter(inodes::path.like(&pattern).escape('\\'))
                .filter(inodes::path.ne("/"))
                .select(Inode::as_select())
                .load(c))?)
        })
    }
}

/// Insert a file or directory, creating missing ancestors; a taken path is `AlreadyExists`.
#[derive(Message)]
#[rtype(result = "Result<Inode, ActorError>")]
pub struct CreateEntry {
    pub entry: NewEntry,
}

impl Handler<CreateEntry> for MetadataStore {
    type Result = Result<Inode, ActorError>;
    fn handle(&mut self, msg: CreateEntry, _ctx: &mut Self::Context) -> Self::Result {
        self.create_entry(msg.entry)
    }
}

impl MetadataStore {
    pub fn create_entry(&self, entry: NewEntry) -> Result<Inode, ActorError> {
        self.run(MetadataOp::Create, |conn| {
            write_tx!(conn, c => {
                let parent_id = ensure_parents!(c, &entry, &entry.path);
                let row = new_row(&entry, parent_id, &entry.path, entry.is_dir);
                let inode = diesel::insert_into(inodes::table)
                    .values(&row)
                    .returning(Inode::as_returning())
                    .get_result(c)?;
                Ok::<_, ActorError>(inode)
            })
        })
    }
}

/// Record a content write: new size, fresh mtime/ctime, next content version.
#[derive(Message)]
#[rtype(result = "Result<Inode, ActorError>")]
pub struct UpdateContent {
    pub id: i64,
    pub size: i64,
}

impl Handler<UpdateContent> for MetadataStore {
    type Result = Result<Inode, ActorError>;
    fn handle(&mut self, msg: UpdateContent, _ctx: &mut Self::Context) -> Self::Result {
        self.run(MetadataOp::Update, |conn| {
            let t = now();
            let updated = with_conn!(conn, c => diesel::update(inodes::table.filter(inodes::id.eq(msg.id)))
                .set((
                    inodes::size.eq(msg.size),
                    inodes::mtime.eq(t),
                    inodes::ctime.eq(t),
                    inodes::updated_at.eq(t),
                    inodes::content_version.eq(inodes::content_version + 1),
                ))
                .returning(Inode::as_returning())
                .get_result(c)
                .optional())?;
            updated.ok_or(ActorError::NotFound)
        })
    }
}

/// Remove one row; a directory with children is refused in the same transaction.
#[derive(Message)]
#[rtype(result = "Result<(), ActorError>")]
pub struct DeleteEntry {
    pub id: i64,
}

impl Handler<DeleteEntry> for MetadataStore {
    type Result = Result<(), ActorError>;
    fn handle(&mut self, msg: DeleteEntry, _ctx: &mut Self::Context) -> Self::Result {
        self.run(MetadataOp::Delete, |conn| {
            write_tx!(conn, c => {
                let children: i64 = inodes::table.filter(inodes::parent_id.eq(msg.id)).count().get_result(c)?;
                if children > 0 {
                    return Err(ActorError::DirectoryNotEmpty);
                }
                let deleted = diesel::delete(inodes::table.filter(inodes::id.eq(msg.id))).execute(c)?;
                if deleted == 0 {
                    return Err(ActorError::NotFound);
                }
                Ok(())
            })
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
    /// New backend/instance for the moved row (relocation), `None` to keep.
    pub relocate_to: Option<(String, Option<String>)>,
}

impl Handler<RenameEntry> for MetadataStore {
    type Result = Result<Inode, ActorError>;
    fn handle(&mut self, msg: RenameEntry, _ctx: &mut Self::Context) -> Self::Result {
        self.rename_entry(msg)
    }
}

impl MetadataStore {
    pub fn rename_entry(&self, msg: RenameEntry) -> Result<Inode, ActorError> {
        let is_pg = matches!(self.pool, Pool::Pg(_));
        self.run(MetadataOp::Rename, |conn| {
            write_tx!(conn, c => {
                let source: Inode = inodes::table
                    .filter(inodes::path.eq(&msg.source_path))
                    .select(Inode::as_select())
                    .get_result(c)
                    .optional()?
                    .ok_or(ActorError::NotFound)?;
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
                }
                let t = now();
                let (backend_type, instance_id) = msg
                    .relocate_to
                    .clone()
                    .unwrap_or((source.backend_type.clone(), source.callfs_instance_id.clone()));
                let moved = diesel::update(inodes::table.filter(inodes::id.eq(source.id)))
                    .set((
                        inodes::path.eq(&msg.destination_path),
                        inodes::name.eq(name),
                        inodes::parent_id.eq(parent_id),
                        inodes::ctime.eq(t),
                        inodes::updated_at.eq(t),
                        inodes::backend_type.eq(backend_type),
                        inodes::callfs_instance_id.eq(instance_id),
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
mod tests {
    use super::*;

    fn store() -> (MetadataStore, tempfile::TempDir) {
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
        }
    }

    fn create(s: &MetadataStore, path: &str, is_dir: bool) -> Result<Inode, ActorError> {
        s.create_entry(entry(path, is_dir))
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
            relocate_to: None,
        };
        let moved = actor.rename_entry(msg);
        assert_eq!(moved.unwrap().path, "/dst");
        assert!(get(&actor, "/dst/inner/deep.txt").is_some());
        assert!(get(&actor, "/src/inner").is_none());
        assert!(get(&actor, "/src_sibling.txt").is_some(), "prefix match must stop at the separator");
    }

    #[test]
    fn like_prefix_escapes_wildcards() {
        assert_eq!(like_prefix("/a_b%c\\"), "/a\\_b\\%c\\\\/%");
        assert_eq!(ancestors_below_root("/a/b/c"), vec!["/a", "/a/b"]);
        assert_eq!(parent_and_name("/a"), ("/", "a"));
        assert_eq!(parent_and_name("/a/b"), ("/a", "b"));
    }
}
