use thiserror::Error;

/// Every failure an actor can report. The HTTP layer maps each variant to a status and code.
#[derive(Debug, Error, Clone, PartialEq, Eq)]
pub enum ActorError {
    #[error("file or directory not found")]
    NotFound,
    #[error("the path already exists")]
    AlreadyExists,
    #[error("an ancestor of the path is a file")]
    NotADirectory,
    #[error("the directory is not empty")]
    DirectoryNotEmpty,
    #[error("the path is a directory")]
    IsADirectory,
    #[error("the path is locked by another operation")]
    Locked,
    #[error("the path lock lease was lost")]
    LeaseLost,
    #[error("the entry changed since it was read")]
    Changed,
    #[error("{0}")]
    InvalidInput(String),
    #[error("path resolves outside the storage root")]
    OutsideRoot,
    #[error("insufficient storage")]
    InsufficientStorage,
    #[error("storage error: {0}")]
    Storage(String),
    #[error("storage call timed out")]
    StorageTimeout,
    #[error("storage backend unavailable: {0}")]
    BackendUnavailable(String),
    #[error("metadata store unavailable: {0}")]
    MetadataUnavailable(String),
    #[error("metadata query failed: {0}")]
    Metadata(String),
    #[error("upload aborted: {0}")]
    UploadAborted(String),
    #[error("upload exceeds the size limit")]
    TooLarge,
    #[error("internal error: {0}")]
    Internal(String),
    #[error("peer unavailable: {0}")]
    PeerUnavailable(String),
    #[error("peer did not answer in time")]
    PeerTimeout,
    #[error("peer error: {0}")]
    PeerError(String),
}

impl ActorError {
    /// Classifies an I/O error the way the spec asks: disk full is its own status.
    pub fn from_io(err: &std::io::Error) -> Self {
        match err.raw_os_error() {
            Some(libc::ENOSPC) | Some(libc::EDQUOT) => ActorError::InsufficientStorage,
            _ if err.kind() == std::io::ErrorKind::NotFound => ActorError::NotFound,
            _ => ActorError::Storage(err.to_string()),
        }
    }
}
