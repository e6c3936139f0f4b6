//! Node-to-node calls that are not relays of a client request (internal byte operations).

use bytes::Bytes;
use callfs_actors::metrics::{BackendOp, CrossServerOp};
use callfs_actors::peer::UploadChunk;
use callfs_actors::peer::{ForwardRequest, RequestBody};
use tokio::sync::mpsc;

use crate::error::ApiError;
use crate::node::Node;

/// Sends a small request to `peer` with the internal secret and returns its status (body discarded).
pub async fn internal_call(
    node: &Node,
    peer: &str,
    method: &str,
    path: String,
    json: Option<Bytes>,
    operation: CrossServerOp,
    backend_op: BackendOp,
) -> Result<u16, ApiError> {
    let body = json.map(|json| {
        let (tx, rx) = mpsc::channel(2);
        let length = Some(json.len() as u64);
        let _ = tx.try_send(UploadChunk::Data(json));
        let _ = tx.try_send(UploadChunk::Finish);
        RequestBody { chunks: rx, length }
    });
    let headers = vec![("content-type".to_string(), "application/json".to_string())];
    let message = ForwardRequest {
        peer: peer.to_string(),
        method: method.to_string(),
        path_and_query: path,
        headers,
        body,
        operation,
        backend_op,
    };
    let mut answer = node.peers.send(message).await??;
    while answer.body.recv().await.is_some() {}
    if answer.status == 401 || answer.status == 403 {
        return Err(ApiError::PeerError(format!("node {peer} rejected the internal proxy secret")));
    }
    Ok(answer.status)
}
