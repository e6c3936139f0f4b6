//! Storage upkeep outside the request path: converting a revision-1 root at start, and
//! `callfs fsck [--repair]`, which compares this node's localfs blobs and the S3 bucket's objects
//! with the metadata that references them (storage.md §1.4, §2, §3).

use std::collections::HashSet;
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime};

use actix::prelude::*;
use callfs_actors::metadata::{self, AdoptBlob, LegacyFiles, ListBlobReferences, MetadataStore, StoreKind};
use callfs_actors::metrics::Metrics;
use callfs_actors::storage::localfs::{self, ConvertLegacy, LocalFsWorker, RemoveLegacyFolders};
use callfs_actors::storage::BlobStore;

use crate::config;

/// Unreferenced blobs younger than this may belong to a write in progress; `--repair` keeps them.
const REPAIR_MIN_AGE: Duration = Duration::from_secs(3600);

/// Converts the files of a revision-1 root (bytes at `<root>/<path>`) into blobs, then removes the
/// emptied folders. Returns `(converted, rows whose old file is missing)`.
pub async fn upgrade_layout(
    metadata: &Addr<MetadataStore>,
    localfs: &Addr<LocalFsWorker>,
    instance_id: &str,
) -> Result<(usize, usize), String> {
    let legacy = metadata
        .send(LegacyFiles { instance_id: instance_id.to_string() })
        .await
        .map_err(|e| e.to_string())?
        .map_err(|e| format!("metadata store: {e}"))?;
    if legacy.is_empty() {
        return Ok((0, 0));
    }
    let wanted = legacy.len();
    let converted = localfs.send(ConvertLegacy { files: legacy }).await.map_err(|e| e.to_string())?;
    let mut adopted = 0;
    for (id, blob) in converted {
        let adopt = AdoptBlob { id, blob, instance_id: instance_id.to_string() };
        if let Ok(Ok(true)) = metadata.send(adopt).await {
            adopted += 1;
        }
    }
    let folders = localfs.send(RemoveLegacyFolders).await.unwrap_or(0);
    let missing = wanted - adopted;
    log::info!(converted = adopted, missing = missing, folders_removed = folders; "storage root converted to the blob layout");
    if missing > 0 {
        log::error!(missing = missing; "rows without bytes after the layout conversion; run callfs fsck");
    }
    Ok((adopted, missing))
}

/// What `callfs fsck` found on this node.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Report {
    /// Paths of rows whose blob is missing.
    pub missing: Vec<String>,
    /// Blobs no row, intent or garbage row references, with their age.
    pub unreferenced: Vec<(String, Duration)>,
}

impl Report {
    pub fn is_clean(&self) -> bool {
        self.missing.is_empty() && self.unreferenced.is_empty()
    }
}

/// Compares the references with the blobs on disk.
pub fn compare(references: &metadata::BlobReferences, on_disk: &[(String, SystemTime)], now: SystemTime) -> Report {
    let present: HashSet<&str> = on_disk.iter().map(|(b, _)| b.as_str()).collect();
    let mut referenced: HashSet<&str> = references.intents.iter().map(String::as_str).collect();
    referenced.extend(references.garbage.iter().map(String::as_str));
    let mut report = Report::default();
    for (blob, path) in &references.rows {
        referenced.insert(blob.as_str());
        if !present.contains(blob.as_str()) {
            report.missing.push(path.clone());
        }
    }
    for (blob, modified) in on_disk {
        if !referenced.contains(blob.as_str()) {
            report.unreferenced.push((blob.clone(), now.duration_since(*modified).unwrap_or_default()));
        }
    }
    report.missing.sort();
    report.unreferenced.sort();
    report
}

/// `callfs fsck --config FILE [--repair]`: prints the findings; exit 0 when clean, 1 otherwise
/// (also when the configuration or the metadata store fails).
pub fn run(config_path: Option<&Path>, repair: bool) -> i32 {
    let Some(loaded) = config::load_or_report(config_path) else {
        return 1;
    };
    let config = loaded.config;
    let system = actix::System::new();
    let result = system.block_on(async move { check(&config, repair).await });
    match result {
        Ok(report) => {
            for path in &report.missing {
                println!("missing bytes: {path}");
            }
            for (blob, age) in &report.unreferenced {
                println!("unreferenced blob: {blob} (age {}s)", age.as_secs());
            }
            if report.is_clean() {
                println!("fsck: clean");
                0
            } else {
                println!(
                    "fsck: {} row(s) without bytes, {} unreferenced blob(s)",
                    report.missing.len(),
                    report.unreferenced.len()
                );
                1
            }
        }
        Err(err) => {
            eprintln!("fsck: {err}");
            1
        }
    }
}

async fn check(config: &config::Config, repair: bool) -> Result<Report, String> {
    let instance_id = config.instance_discovery.instance_id.clone();
    let (metrics, _) = Metrics::new(env!("CARGO_PKG_VERSION"), &instance_id);
    let (kind, target) = match config.metadata_store.kind.as_str() {
        "postgres" => (StoreKind::Postgres, config.metadata_store.dsn.clone()),
        _ => (StoreKind::Sqlite, config.metadata_store.sqlite_path.clone()),
    };
    let timeout = config.server.metadata_op_timeout;
    let pool_metrics = metrics.clone();
    let pool = actix_web::web::block(move || metadata::connect(kind, &target, 2, timeout, &pool_metrics))
        .await
        .map_err(|e| e.to_string())?
        .map_err(|e| format!("metadata store: {e}"))?;
    let store = SyncArbiter::start(1, move || MetadataStore::new(pool.clone(), metrics.clone()));
    let root = PathBuf::from(&config.backend.localfs_root_path);
    localfs::check_root(&root).map_err(|e| format!("localfs root: {e}"))?;
    let fsync = config.backend.localfs_fsync;
    let disk = SyncArbiter::start(1, move || LocalFsWorker::new(root.clone(), fsync));
    let mut stores = vec![BlobStore::Localfs(disk)];
    stores.extend(crate::server::start_s3(config).await?.map(BlobStore::S3));
    let mut report = Report::default();
    for blobs in stores {
        let backend = blobs.backend();
        let references = store
            .send(ListBlobReferences { instance_id: instance_id.clone(), backend })
            .await
            .map_err(|e| e.to_string())?
            .map_err(|e| format!("metadata store: {e}"))?;
        let stored = blobs.list().await.map_err(|e| format!("{}: {e}", backend.as_str()))?;
        let found = compare(&references, &stored, SystemTime::now());
        report.missing.extend(found.missing);
        for (blob, age) in found.unreferenced {
            if repair && age >= REPAIR_MIN_AGE && blobs.delete(&blob).await.is_ok() {
                println!("deleted unreferenced blob: {blob} ({})", backend.as_str());
                continue;
            }
            report.unreferenced.push((blob, age));
        }
    }
    Ok(report)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn findings_are_missing_rows_and_unreferenced_blobs() {
        let now = SystemTime::now();
        let refs = metadata::BlobReferences {
            rows: vec![("a".repeat(32), "/a.txt".into()), ("b".repeat(32), "/b.txt".into())],
            intents: vec!["c".repeat(32)],
            garbage: vec!["d".repeat(32)],
        };
        let disk = vec![("a".repeat(32), now), ("c".repeat(32), now), ("d".repeat(32), now), ("e".repeat(32), now)];
        let report = compare(&refs, &disk, now);
        assert_eq!(report.missing, vec!["/b.txt".to_string()]);
        assert_eq!(report.unreferenced, vec![("e".repeat(32), Duration::ZERO)]);
        assert!(!report.is_clean());
        let clean = compare(&refs, &[("a".repeat(32), now), ("b".repeat(32), now)], now);
        assert!(clean.is_clean());
    }
}
