//! The path-lock table: exclusive locks per canonical path, bounded waiting, hand-off to the next
//! waiter on release. A [`LockGuard`] releases its lock when dropped, so no error path can leak one.

use std::collections::{HashMap, VecDeque};
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use actix::prelude::*;
use diesel::prelude::*;
use diesel::r2d2::Pool;
use diesel::sql_types::{BigInt, Text};
use tokio::sync::oneshot;

use crate::error::ActorError;
use crate::metadata::PgManager;
use crate::metrics::{now_ms, ErrorKind, LockOp, Metrics};

/// Cluster-wide leases in PostgreSQL (cluster.md §6), taken after the local lock so that contenders
/// on one node queue in memory and only one of them polls the database.
#[derive(Clone)]
pub struct Leases {
    pub store: Addr<LeaseStore>,
    pub instance_id: String,
    pub ttl: Duration,
}

struct Held {
    token: u64,
    acquired_at_ms: u64,
    /// The database lease holder id, once the lease is ours.
    lease_holder: Option<String>,
}

pub struct LockTable {
    held: HashMap<String, Held>,
    waiters: HashMap<String, VecDeque<oneshot::Sender<u64>>>,
    next_token: u64,
    metrics: Metrics,
    leases: Option<Leases>,
}

impl LockTable {
    pub fn new(metrics: Metrics) -> Self {
        Self { held: HashMap::new(), waiters: HashMap::new(), next_token: 1, metrics, leases: None }
    }

    pub fn with_leases(metrics: Metrics, leases: Leases) -> Self {
        Self { leases: Some(leases), ..Self::new(metrics) }
    }

    fn renew_leases(&mut self, _ctx: &mut Context<Self>) {
        let Some(leases) = self.leases.clone() else {
            return;
        };
        for (key, held) in &self.held {
            let Some(holder) = held.lease_holder.clone() else {
                continue;
            };
            let metrics = self.metrics.clone();
            let key = key.clone();
            let store = leases.store.clone();
            let ttl = leases.ttl;
            actix::spawn(async move {
                let started = Instant::now();
                let renewed = store.send(RenewLease { key: key.clone(), holder: holder.clone(), ttl }).await;
                let ok = matches!(renewed, Ok(Ok(true)));
                metrics.record_lock(LockOp::Renew, ok, started.elapsed());
                if !ok {
                    metrics.record_error(ErrorKind::LeaseLost);
                    log::error!(key = key.as_str(), holder = holder.as_str(); "lock lease lost");
                }
            });
        }
    }

    fn grant(&mut self, key: &str) -> u64 {
        let token = self.next_token;
        self.next_token += 1;
        self.held.insert(key.to_string(), Held { token, acquired_at_ms: now_ms(), lease_holder: None });
        token
    }

    fn publish_gauges(&self) {
        self.metrics.active_locks.set(self.held.len() as i64);
        let oldest = self.held.values().map(|h| h.acquired_at_ms).min().unwrap_or(0);
        self.metrics.oldest_lock_since_ms.store(oldest, Ordering::Relaxed);
    }

    /// Passes the lock to the first waiter still listening, or frees it.
    fn hand_off(&mut self, key: &str) {
        while let Some(waiter) = self.waiters.get_mut(key).and_then(VecDeque::pop_front) {
            let token = self.next_token;
            self.next_token += 1;
            if waiter.send(token).is_ok() {
                self.held.insert(key.to_string(), Held { token, acquired_at_ms: now_ms(), lease_holder: None });
                return;
            }
        }
        self.waiters.remove(key);
        self.held.remove(key);
    }
}

impl Actor for LockTable {
    type Context = Context<Self>;

    fn started(&mut self, ctx: &mut Self::Context) {
        if let Some(leases) = &self.leases {
            let every = (leases.ttl / 3).max(Duration::from_millis(100));
            ctx.run_interval(every, Self::renew_leases);
        }
    }
}

/// Take the exclusive lock on `key`, waiting at most `timeout`.
#[derive(Message)]
#[rtype(result = "Result<LockGuard, ActorError>")]
pub struct AcquireLock {
    pub key: String,
    pub timeout: Duration,
}

/// Give back a lock; only the holder's token releases it.
#[derive(Message)]
#[rtype(result = "()")]
pub struct ReleaseLock {
    pub key: String,
    pub token: u64,
}

/// A held lock. Dropping it releases the lock.
#[derive(Debug)]
pub struct LockGuard {
    key: String,
    token: u64,
    table: Addr<LockTable>,
    /// The database lease behind the lock (`dlm.type: postgres`).
    lease_holder: Option<String>,
}

impl LockGuard {
    /// The fence a commit under this lock checks in its own transaction (none for local locks).
    pub fn fence(&self) -> Option<crate::metadata::Fence> {
        self.lease_holder
            .as_ref()
            .map(|holder| crate::metadata::Fence { key: self.key.clone(), holder: holder.clone() })
    }

    /// Confirms the lock (and its lease) is still held, right before committing under it.
    pub async fn verify(&self) -> Result<(), ActorError> {
        let check = VerifyLock { key: self.key.clone(), token: self.token };
        self.table.send(check).await.map_err(|e| ActorError::Internal(e.to_string()))?
    }
}

impl Drop for LockGuard {
    fn drop(&mut self) {
        self.table.do_send(ReleaseLock { key: std::mem::take(&mut self.key), token: self.token });
    }
}

impl Handler<AcquireLock> for LockTable {
    type Result = ResponseFuture<Result<LockGuard, ActorError>>;

    fn handle(&mut self, msg: AcquireLock, ctx: &mut Self::Context) -> Self::Result {
        let started = Instant::now();
        let deadline = tokio::time::Instant::now() + msg.timeout;
        let table = ctx.address();
        let metrics = self.metrics.clone();
        let leases = self.leases.clone();
        let local = if self.held.contains_key(&msg.key) {
            let (tx, rx) = oneshot::channel();
            self.waiters.entry(msg.key.clone()).or_default().push_back(tx);
            Err(rx)
        } else {
            let token = self.grant(&msg.key);
            self.publish_gauges();
            Ok(token)
        };
        Box::pin(async move {
            let token = match local {
                Ok(token) => Some(token),
                Err(mut rx) => match tokio::time::timeout_at(deadline, &mut rx).await {
                    Ok(Ok(token)) => Some(token),
                    Ok(Err(_)) => None,
                    Err(_) => {
                        // The hand-off may have raced the timeout: a token already sent is ours to return.
                        rx.close();
                        rx.try_recv().ok()
                    }
                },
            };
            let Some(token) = token else {
                metrics.record_lock(LockOp::Acquire, false, started.elapsed());
                metrics.record_error(ErrorKind::LockAcquireTimeout);
                return Err(ActorError::Locked);
            };
            let mut guard = LockGuard { key: msg.key.clone(), token, table: table.clone(), lease_holder: None };
            if let Some(leases) = leases {
                match take_lease(&leases, &msg.key, deadline).await {
                    Ok(holder) => {
                        guard.lease_holder = Some(holder.clone());
                        table.do_send(RecordLease { key: msg.key, token, holder });
                    }
                    Err(err) => {
                        metrics.record_lock(LockOp::Acquire, false, started.elapsed());
                        if err == ActorError::Locked {
                            metrics.record_error(ErrorKind::LockAcquireTimeout);
                        }
                        return Err(err);
                    }
                }
            }
            metrics.record_lock(LockOp::Acquire, true, started.elapsed());
            table.do_send(RefreshGauges);
            Ok(guard)
        })
    }
}

impl Handler<ReleaseLock> for LockTable {
    type Result = ();

    fn handle(&mut self, msg: ReleaseLock, _ctx: &mut Self::Context) {
        let started = Instant::now();
        let held = self.held.get_mut(&msg.key).filter(|h| h.token == msg.token);
        let is_holder = held.is_some();
        let lease_holder = held.and_then(|h| h.lease_holder.take());
        if is_holder {
            if let (Some(holder), Some(leases)) = (lease_holder, &self.leases) {
                leases.store.do_send(ReleaseLease { key: msg.key.clone(), holder });
            }
            self.hand_off(&msg.key);
            self.publish_gauges();
        }
        self.metrics.record_lock(LockOp::Release, is_holder, started.elapsed());
    }
}

/// Polls the lease table with backoff (10 ms → 200 ms) until the lease is ours or the deadline passes.
async fn take_lease(leases: &Leases, key: &str, deadline: tokio::time::Instant) -> Result<String, ActorError> {
    let holder = format!("{}:{}", leases.instance_id, hex::encode(rand::random::<[u8; 16]>()));
    let mut backoff = Duration::from_millis(10);
    loop {
        let attempt = TryAcquireLease { key: key.to_string(), holder: holder.clone(), ttl: leases.ttl };
        let taken = leases.store.send(attempt).await.map_err(|e| ActorError::Internal(e.to_string()))??;
        if taken {
            return Ok(holder);
        }
        let now = tokio::time::Instant::now();
        if now >= deadline {
            return Err(ActorError::Locked);
        }
        tokio::time::sleep(backoff.min(deadline - now)).await;
        backoff = (backoff * 2).min(Duration::from_millis(200));
    }
}

#[derive(Message)]
#[rtype(result = "()")]
struct RecordLease {
    key: String,
    token: u64,
    holder: String,
}

impl Handler<RecordLease> for LockTable {
    type Result = ();

    fn handle(&mut self, msg: RecordLease, _ctx: &mut Self::Context) {
        match self.held.get_mut(&msg.key).filter(|h| h.token == msg.token) {
            Some(held) => held.lease_holder = Some(msg.holder),
            // Released before the lease was recorded: give the lease back at once.
            None => {
                if let Some(leases) = &self.leases {
                    leases.store.do_send(ReleaseLease { key: msg.key, holder: msg.holder });
                }
            }
        }
    }
}

/// The `callfs_locks` table, on a SyncArbiter (diesel blocks).
pub struct LeaseStore {
    pool: Pool<PgManager>,
}

impl LeaseStore {
    /// Connects and makes sure the lease table exists (the DSN may differ from the metadata store's).
    /// Checkouts are not tested (a `SELECT 1` before each lease statement would double its round
    /// trips); a connection whose statement failed for want of a server is dropped instead.
    pub fn connect(dsn: &str, max_connections: u32) -> Result<Pool<PgManager>, ActorError> {
        let pool = Pool::builder()
            .max_size(max_connections.max(2))
            .min_idle(Some(1))
            .test_on_check_out(false)
            .connection_timeout(Duration::from_secs(5))
            .build(PgManager::new(dsn))
            .map_err(|e| ActorError::MetadataUnavailable(e.to_string()))?;
        let store = Self::new(pool.clone());
        store.with_conn(|conn| {
            diesel::sql_query(
                "CREATE TABLE IF NOT EXISTS callfs_locks (lock_key TEXT PRIMARY KEY, holder TEXT NOT NULL, \
                 acquired_at TIMESTAMPTZ NOT NULL, expires_at TIMESTAMPTZ NOT NULL)",
            )
            .execute(conn)
        })?;
        Ok(pool)
    }

    pub fn new(pool: Pool<PgManager>) -> Self {
        Self { pool }
    }

    /// Runs `f` on a pooled connection; a connection the server dropped leaves the pool.
    fn with_conn<T>(&self, f: impl FnOnce(&mut PgConnection) -> QueryResult<T>) -> Result<T, ActorError> {
        let mut pooled = self.pool.get().map_err(|e| ActorError::MetadataUnavailable(e.to_string()))?;
        let result = f(&mut pooled).map_err(ActorError::from);
        if matches!(result, Err(ActorError::MetadataUnavailable(_))) {
            pooled.mark_broken();
        }
        result
    }
}

impl Actor for LeaseStore {
    type Context = SyncContext<Self>;
}

#[derive(QueryableByName)]
struct HolderRow {
    #[diesel(sql_type = Text)]
    holder: String,
}

/// Insert the lease, or take over an expired one; `true` when it is ours.
#[derive(Message)]
#[rtype(result = "Result<bool, ActorError>")]
pub struct TryAcquireLease {
    pub key: String,
    pub holder: String,
    pub ttl: Duration,
}

impl Handler<TryAcquireLease> for LeaseStore {
    type Result = Result<bool, ActorError>;
    fn handle(&mut self, msg: TryAcquireLease, _ctx: &mut Self::Context) -> Self::Result {
        let rows: Vec<HolderRow> = self.with_conn(|conn| {
            diesel::sql_query(
                "INSERT INTO callfs_locks (lock_key, holder, acquired_at, expires_at) \
             VALUES ($1, $2, now(), now() + $3 * interval '1 millisecond') \
             ON CONFLICT (lock_key) DO UPDATE SET holder = EXCLUDED.holder, acquired_at = now(), \
             expires_at = EXCLUDED.expires_at WHERE callfs_locks.expires_at < now() RETURNING holder",
            )
            .bind::<Text, _>(&msg.key)
            .bind::<Text, _>(&msg.holder)
            .bind::<BigInt, _>(msg.ttl.as_millis() as i64)
            .load(conn)
        })?;
        Ok(rows.iter().any(|r| r.holder == msg.holder))
    }
}

/// Extend a held lease; `false` when it was lost.
#[derive(Message)]
#[rtype(result = "Result<bool, ActorError>")]
pub struct RenewLease {
    pub key: String,
    pub holder: String,
    pub ttl: Duration,
}

impl Handler<RenewLease> for LeaseStore {
    type Result = Result<bool, ActorError>;
    fn handle(&mut self, msg: RenewLease, _ctx: &mut Self::Context) -> Self::Result {
        let updated = self.with_conn(|conn| {
            diesel::sql_query(
                "UPDATE callfs_locks SET expires_at = now() + $3 * interval '1 millisecond' \
             WHERE lock_key = $1 AND holder = $2",
            )
            .bind::<Text, _>(&msg.key)
            .bind::<Text, _>(&msg.holder)
            .bind::<BigInt, _>(msg.ttl.as_millis() as i64)
            .execute(conn)
        })?;
        Ok(updated == 1)
    }
}

/// Is the lease still held by `holder` and unexpired (database clock)?
#[derive(Message)]
#[rtype(result = "Result<bool, ActorError>")]
pub struct CheckLease {
    pub key: String,
    pub holder: String,
}

impl Handler<CheckLease> for LeaseStore {
    type Result = Result<bool, ActorError>;
    fn handle(&mut self, msg: CheckLease, _ctx: &mut Self::Context) -> Self::Result {
        let rows: Vec<HolderRow> = self.with_conn(|conn| {
            diesel::sql_query(
                "SELECT holder FROM callfs_locks WHERE lock_key = $1 AND holder = $2 AND expires_at > now()",
            )
            .bind::<Text, _>(&msg.key)
            .bind::<Text, _>(&msg.holder)
            .load(conn)
        })?;
        Ok(!rows.is_empty())
    }
}

/// The lease table answers (readiness).
#[derive(Message)]
#[rtype(result = "Result<(), ActorError>")]
pub struct PingLeases;

impl Handler<PingLeases> for LeaseStore {
    type Result = Result<(), ActorError>;
    fn handle(&mut self, _msg: PingLeases, _ctx: &mut Self::Context) -> Self::Result {
        self.with_conn(|conn| diesel::sql_query("SELECT 1 FROM callfs_locks LIMIT 1").execute(conn))?;
        Ok(())
    }
}

/// Delete a lease if still ours.
#[derive(Message)]
#[rtype(result = "()")]
pub struct ReleaseLease {
    pub key: String,
    pub holder: String,
}

impl Handler<ReleaseLease> for LeaseStore {
    type Result = ();
    fn handle(&mut self, msg: ReleaseLease, _ctx: &mut Self::Context) {
        let released = self.with_conn(|conn| {
            diesel::sql_query("DELETE FROM callfs_locks WHERE lock_key = $1 AND holder = $2")
                .bind::<Text, _>(&msg.key)
                .bind::<Text, _>(&msg.holder)
                .execute(conn)
        });
        if let Err(err) = released {
            log::error!(key = msg.key.as_str(), error = err.to_string().as_str(); "lease release failed");
        }
    }
}

#[derive(Message)]
#[rtype(result = "()")]
struct RefreshGauges;

impl Handler<RefreshGauges> for LockTable {
    type Result = ();

    fn handle(&mut self, _msg: RefreshGauges, _ctx: &mut Self::Context) {
        self.publish_gauges();
    }
}

/// Before a commit: is this guard's lock (and its database lease, if any) still ours?
#[derive(Message)]
#[rtype(result = "Result<(), ActorError>")]
pub struct VerifyLock {
    pub key: String,
    pub token: u64,
}

impl Handler<VerifyLock> for LockTable {
    type Result = ResponseFuture<Result<(), ActorError>>;

    fn handle(&mut self, msg: VerifyLock, _ctx: &mut Self::Context) -> Self::Result {
        let held = self.held.get(&msg.key).filter(|h| h.token == msg.token);
        let lease = match (held, &self.leases) {
            (None, _) => return Box::pin(async { Err(ActorError::LeaseLost) }),
            (Some(held), Some(leases)) => held.lease_holder.clone().map(|holder| (leases.store.clone(), holder)),
            (Some(_), None) => None,
        };
        let metrics = self.metrics.clone();
        let key = msg.key;
        Box::pin(async move {
            let Some((store, holder)) = lease else { return Ok(()) };
            let valid = store.send(CheckLease { key: key.clone(), holder: holder.clone() }).await;
            match valid {
                Ok(Ok(true)) => Ok(()),
                Ok(Err(err)) => Err(err),
                _ => {
                    metrics.record_error(ErrorKind::LeaseLost);
                    log::error!(key = key.as_str(), holder = holder.as_str(); "lock lease lost");
                    Err(ActorError::LeaseLost)
                }
            }
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Number of locks currently held.
    #[derive(Message)]
    #[rtype(result = "usize")]
    pub struct CountLocks;

    impl Handler<CountLocks> for LockTable {
        type Result = usize;

        fn handle(&mut self, _msg: CountLocks, _ctx: &mut Self::Context) -> usize {
            self.held.len()
        }
    }

    fn table() -> (Addr<LockTable>, Metrics) {
        let (metrics, _registry) = Metrics::new("test", "node-1");
        (LockTable::new(metrics.clone()).start(), metrics)
    }

    #[actix::test]
    async fn second_acquire_waits_until_release() {
        let (addr, metrics) = table();
        let first =
            addr.send(AcquireLock { key: "/a".into(), timeout: Duration::from_secs(1) }).await.unwrap().unwrap();
        assert_eq!(metrics.active_locks.get(), 1);
        let waiter = addr.send(AcquireLock { key: "/a".into(), timeout: Duration::from_secs(5) });
        let releaser = async {
            tokio::time::sleep(Duration::from_millis(50)).await;
            drop(first);
        };
        let (second, ()) = tokio::join!(waiter, releaser);
        let second = second.unwrap().unwrap();
        assert_eq!(addr.send(CountLocks).await.unwrap(), 1);
        drop(second);
        tokio::time::sleep(Duration::from_millis(20)).await;
        assert_eq!(addr.send(CountLocks).await.unwrap(), 0);
        assert_eq!(metrics.active_locks.get(), 0);
    }

    #[actix::test]
    async fn contention_times_out_with_locked() {
        let (addr, _metrics) = table();
        let _held =
            addr.send(AcquireLock { key: "/b".into(), timeout: Duration::from_secs(1) }).await.unwrap().unwrap();
        let err =
            addr.send(AcquireLock { key: "/b".into(), timeout: Duration::from_millis(30) }).await.unwrap().unwrap_err();
        assert_eq!(err, ActorError::Locked);
    }

    #[actix::test]
    async fn different_keys_do_not_block() {
        let (addr, metrics) = table();
        let a = addr.send(AcquireLock { key: "/x".into(), timeout: Duration::ZERO }).await.unwrap();
        let b = addr.send(AcquireLock { key: "/y".into(), timeout: Duration::ZERO }).await.unwrap();
        assert!(a.is_ok() && b.is_ok());
        assert_eq!(metrics.active_locks.get(), 2);
    }

    #[actix::test]
    async fn stale_token_does_not_release_new_holder() {
        let (addr, _metrics) = table();
        let guard = addr.send(AcquireLock { key: "/c".into(), timeout: Duration::ZERO }).await.unwrap().unwrap();
        addr.send(ReleaseLock { key: "/c".into(), token: guard.token + 100 }).await.unwrap();
        assert_eq!(addr.send(CountLocks).await.unwrap(), 1);
    }
}
