//! The actors of a callfs node: the path-lock table, the metadata store, the storage workers and the
//! metrics catalogue. Nothing here knows about HTTP; every failure is an [`ActorError`].

pub mod error;
pub mod locks;
pub mod metadata;
pub mod metrics;
pub mod peer;
pub mod storage;
pub mod sweep;

pub use error::ActorError;
