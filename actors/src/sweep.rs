//! The sweep (storage.md §1.4): the only code that deletes a node's blobs. At start and every
//! minute it deletes this node's garbage blobs whose grace period is over, the blobs of intents no
//! live write can still commit, and stale files in `tmp/`. Every deletion is settled by a recorded
//! row, so nothing is deleted that a row may still reference. With S3 configured, every node also
//! settles the shared bucket's garbage and abandoned intents; on PostgreSQL each row is claimed
//! (`FOR UPDATE SKIP LOCKED`, see `DueGarbage`) so two nodes never delete and count the same blob.

use std::time::{Duration, SystemTime};

use actix::prelude::*;
use chrono::NaiveDateTime;

use crate::metadata::{DropGarbage, DropIntent, DueGarbage, MetadataStore, StaleIntents};
use crate::metrics::{Metrics, Outcome, SweepKind, SweepLabels};
use crate::storage::localfs::{LocalFsWorker, SweepTempFiles};
use crate::storage::s3::S3Worker;
use crate::storage::{Backend, BlobStore};

const INTERVAL: Duration = Duration::from_secs(60);
/// Garbage rows handled per round; the next round takes the rest.
const BATCH: i64 = 1000;
/// Batches per round at most: 50,000 blobs a minute per node and store.
const MAX_BATCHES: usize = 50;

pub struct Sweeper {
    pub instance_id: String,
    pub metadata: Addr<MetadataStore>,
    pub localfs: Addr<LocalFsWorker>,
    pub s3: Option<S3Worker>,
    pub metrics: Metrics,
    /// Intents created before this (node start) belong to writes that died with the last run.
    pub started_at: NaiveDateTime,
    pub started_at_system: SystemTime,
}

impl Actor for Sweeper {
    type Context = Context<Self>;

    fn started(&mut self, ctx: &mut Self::Context) {
        ctx.notify(SweepNow);
        ctx.run_interval(INTERVAL, |_, ctx| ctx.notify(SweepNow));
    }
}

/// Run one sweep round now; answers how many blobs and files it removed.
#[derive(Message)]
#[rtype(result = "usize")]
pub struct SweepNow;

impl Handler<SweepNow> for Sweeper {
    type Result = ResponseFuture<usize>;

    fn handle(&mut self, _msg: SweepNow, _ctx: &mut Self::Context) -> Self::Result {
        let round = Round {
            instance_id: self.instance_id.clone(),
            metadata: self.metadata.clone(),
            localfs: self.localfs.clone(),
            s3: self.s3.clone(),
            metrics: self.metrics.clone(),
            started_at: self.started_at,
            started_at_system: self.started_at_system,
        };
        Box::pin(async move { round.run().await })
    }
}

struct Round {
    instance_id: String,
    metadata: Addr<MetadataStore>,
    localfs: Addr<LocalFsWorker>,
    s3: Option<S3Worker>,
    metrics: Metrics,
    started_at: NaiveDateTime,
    started_at_system: SystemTime,
}

impl Round {
    fn count(&self, kind: SweepKind, ok: bool, n: u64) {
        if n > 0 {
            self.metrics.blob_sweeps.get_or_create(&SweepLabels { kind, status: Outcome::of(ok) }).inc_by(n);
        }
    }

    async fn run(self) -> usize {
        let mut removed = 0;
        let mut stores = vec![BlobStore::Localfs(self.localfs.clone())];
        stores.extend(self.s3.clone().map(BlobStore::S3));
        for store in &stores {
            removed += self.settle(store).await;
        }
        if let Ok(n) = self.localfs.send(SweepTempFiles { older_than: self.started_at_system }).await {
            self.count(SweepKind::Tmp, true, n as u64);
            removed += n;
        }
        removed
    }

    /// Due garbage, then stale intents, of one store.
    async fn settle(&self, store: &BlobStore) -> usize {
        let mut removed = 0;
        let backend: Backend = store.backend();
        // Batch after batch while batches come back full, so a busy node's garbage never outgrows
        // the sweep (bounded per round; the next round takes the rest).
        for _ in 0..MAX_BATCHES {
            let due = DueGarbage { instance_id: self.instance_id.clone(), limit: BATCH, backend };
            let Ok(Ok(garbage)) = self.metadata.send(due).await else { break };
            let full = garbage.len() as i64 == BATCH;
            let mut all_ok = true;
            for blob in garbage {
                // Bytes first, then the row: a crash in between leaves a row that the next round settles.
                let ok = self.delete_then_forget(store, &blob, true).await;
                self.count(SweepKind::Garbage, ok, 1);
                removed += usize::from(ok);
                all_ok &= ok;
            }
            if !full || !all_ok {
                break;
            }
        }
        let stale = StaleIntents { instance_id: self.instance_id.clone(), started_at: self.started_at, backend };
        if let Ok(Ok(intents)) = self.metadata.send(stale).await {
            for blob in intents {
                let ok = self.delete_then_forget(store, &blob, false).await;
                self.count(SweepKind::Intent, ok, 1);
                removed += usize::from(ok);
            }
        }
        removed
    }

    async fn delete_then_forget(&self, store: &BlobStore, blob: &str, garbage: bool) -> bool {
        if store.delete(blob).await.is_err() {
            log::warn!(blob = blob, backend = store.backend().as_str(); "sweep could not delete a blob; retried next round");
            return false;
        }
        let forgot = if garbage {
            self.metadata.send(DropGarbage { blob: blob.to_string() }).await
        } else {
            self.metadata.send(DropIntent { blob: blob.to_string() }).await
        };
        matches!(forgot, Ok(Ok(())))
    }
}
