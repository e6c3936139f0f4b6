//! The path-lock table: exclusive locks per canonical path, bounded waiting, hand-off to the next
//! waiter on release. A [`LockGuard`] releases its lock when dropped, so no error path can leak one.

use std::collections::{HashMap, VecDeque};
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use actix::prelude::*;
use tokio::sync::oneshot;

use crate::error::ActorError;
use crate::metrics::{now_ms, ErrorKind, LockOp, Metrics};

struct Held {
    token: u64,
    acquired_at_ms: u64,
}

pub struct LockTable {
    held: HashMap<String, Held>,
    waiters: HashMap<String, VecDeque<oneshot::Sender<u64>>>,
    next_token: u64,
    metrics: Metrics,
}

impl LockTable {
    pub fn new(metrics: Metrics) -> Self {
        Self { held: HashMap::new(), waiters: HashMap::new(), next_token: 1, metrics }
    }

    fn grant(&mut self, key: &str) -> u64 {
        let token = self.next_token;
        self.next_token += 1;
        self.held.insert(key.to_string(), Held { token, acquired_at_ms: now_ms() });
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
                self.held.insert(key.to_string(), Held { token, acquired_at_ms: now_ms() });
                return;
            }
        }
        self.waiters.remove(key);
        self.held.remove(key);
    }
}

impl Actor for LockTable {
    type Context = Context<Self>;
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
}

impl LockGuard {
    pub fn key(&self) -> &str {
        &self.key
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
        let table = ctx.address();
        let metrics = self.metrics.clone();
        if !self.held.contains_key(&msg.key) {
            let token = self.grant(&msg.key);
            self.publish_gauges();
            metrics.record_lock(LockOp::Acquire, true, started.elapsed());
            return Box::pin(async move { Ok(LockGuard { key: msg.key, token, table }) });
        }
        let (tx, mut rx) = oneshot::channel();
        self.waiters.entry(msg.key.clone()).or_default().push_back(tx);
        Box::pin(async move {
            let granted = match tokio::time::timeout(msg.timeout, &mut rx).await {
                Ok(Ok(token)) => Some(token),
                Ok(Err(_)) => None,
                Err(_) => {
                    // The hand-off may have raced the timeout: a token already sent is ours to return.
                    rx.close();
                    rx.try_recv().ok()
                }
            };
            match granted {
                Some(token) => {
                    metrics.record_lock(LockOp::Acquire, true, started.elapsed());
                    // Gauges are refreshed by the table on its next change; nudge it now.
                    table.do_send(RefreshGauges);
                    Ok(LockGuard { key: msg.key, token, table })
                }
                None => {
                    metrics.record_lock(LockOp::Acquire, false, started.elapsed());
                    metrics.record_error(ErrorKind::LockAcquireTimeout);
                    Err(ActorError::Locked)
                }
            }
        })
    }
}

impl Handler<ReleaseLock> for LockTable {
    type Result = ();

    fn handle(&mut self, msg: ReleaseLock, _ctx: &mut Self::Context) {
        let started = Instant::now();
        let is_holder = self.held.get(&msg.key).is_some_and(|h| h.token == msg.token);
        if is_holder {
            self.hand_off(&msg.key);
            self.publish_gauges();
        }
        self.metrics.record_lock(LockOp::Release, is_holder, started.elapsed());
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

/// Number of locks currently held (for tests and readiness).
#[derive(Message)]
#[rtype(result = "usize")]
pub struct CountLocks;

impl Handler<CountLocks> for LockTable {
    type Result = usize;

    fn handle(&mut self, _msg: CountLocks, _ctx: &mut Self::Context) -> usize {
        self.held.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn table() -> (Addr<LockTable>, Metrics) {
        let (metrics, _registry) = Metrics::new("test", "node-1");
        (LockTable::new(metrics.clone()).start(), metrics)
    }

    #[actix::test]
    async fn second_acquire_waits_until_release() {
        let (addr, metrics) = table();
        let first = addr.send(AcquireLock { key: "/a".into(), timeout: Duration::from_secs(1) }).await.unwrap().unwrap();
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
        let _held = addr.send(AcquireLock { key: "/b".into(), timeout: Duration::from_secs(1) }).await.unwrap().unwrap();
        let err = addr
            .send(AcquireLock { key: "/b".into(), timeout: Duration::from_millis(30) })
            .await
            .unwrap()
            .unwrap_err();
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
