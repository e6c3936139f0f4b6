//! Admission of upload bodies: a cap per client address and one for the node, so that one client's
//! slow uploads can never stall another's (a body holds a slot, never a thread).

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::{Arc, Mutex};

use crate::error::ApiError;

/// Concurrent upload bodies one client address may have in flight.
pub const PER_CLIENT: usize = 64;
/// Concurrent upload bodies the node accepts in all.
pub const PER_NODE: usize = 1024;

#[derive(Default)]
struct Counts {
    total: usize,
    by_client: HashMap<IpAddr, usize>,
}

/// The node's upload slots; cheap to clone.
#[derive(Clone)]
pub struct UploadSlots {
    counts: Arc<Mutex<Counts>>,
    per_client: usize,
    per_node: usize,
}

impl Default for UploadSlots {
    fn default() -> Self {
        Self::new(PER_CLIENT, PER_NODE)
    }
}

impl UploadSlots {
    pub fn new(per_client: usize, per_node: usize) -> Self {
        Self { counts: Arc::default(), per_client, per_node }
    }

    /// A slot for one body from `client`, held until the returned guard drops.
    /// `429` when the client has too many bodies in flight, `503` when the node has.
    pub fn admit(&self, client: IpAddr) -> Result<UploadSlot, ApiError> {
        let mut counts = self.counts.lock().unwrap_or_else(|e| e.into_inner());
        if counts.total >= self.per_node {
            return Err(ApiError::Saturated);
        }
        let mine = counts.by_client.entry(client).or_default();
        if *mine >= self.per_client {
            return Err(ApiError::RateLimited(1));
        }
        *mine += 1;
        counts.total += 1;
        Ok(UploadSlot { slots: self.clone(), client })
    }
}

/// One admitted body; frees its slot when dropped, however the upload ends.
pub struct UploadSlot {
    slots: UploadSlots,
    client: IpAddr,
}

impl Drop for UploadSlot {
    fn drop(&mut self) {
        let mut counts = self.slots.counts.lock().unwrap_or_else(|e| e.into_inner());
        counts.total -= 1;
        if let Some(n) = counts.by_client.get_mut(&self.client) {
            *n -= 1;
            if *n == 0 {
                counts.by_client.remove(&self.client);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn caps_per_client_and_per_node_and_frees_on_drop() {
        let slots = UploadSlots::new(2, 3);
        let a: IpAddr = "10.0.0.1".parse().unwrap();
        let b: IpAddr = "10.0.0.2".parse().unwrap();
        let a1 = slots.admit(a).unwrap();
        let _a2 = slots.admit(a).unwrap();
        assert!(matches!(slots.admit(a), Err(ApiError::RateLimited(_))));
        let _b1 = slots.admit(b).unwrap();
        assert!(matches!(slots.admit(b), Err(ApiError::Saturated)));
        drop(a1);
        assert!(slots.admit(b).is_ok());
        assert!(slots.counts.lock().unwrap().by_client.len() <= 2);
    }
}
