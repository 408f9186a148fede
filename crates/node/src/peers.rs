//! Connections from this node to its peers' peer ports (mTLS with the node
//! certificate). One lazily connected HTTP/2 channel per peer address, shared
//! by Raft replication and write forwarding.

use crate::tls::TlsMaterials;
use router_proto::v1::peer_client::PeerClient;
use router_raft::NodeId;
use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tonic::transport::{Channel, Endpoint};

/// Upper bound for one Raft or forwarding RPC on the wire; openraft passes
/// its own (shorter) deadlines for heartbeats.
const PEER_RPC_TIMEOUT: Duration = Duration::from_secs(10);
/// Forwarded writes and snapshots can be large.
pub const PEER_MAX_MESSAGE_BYTES: usize = 64 * 1024 * 1024;

#[derive(Clone)]
pub struct PeerPool {
    tls: Arc<TlsMaterials>,
    channels: Arc<Mutex<HashMap<(NodeId, String), Channel>>>,
}

impl PeerPool {
    pub fn new(tls: Arc<TlsMaterials>) -> Self {
        PeerPool { tls, channels: Arc::default() }
    }

    /// The admin service of a node known only by address (a seed); uses
    /// this node's certificate, which the admin API accepts.
    pub fn admin(
        &self,
        addr: &str,
    ) -> Result<router_proto::v1::admin_client::AdminClient<Channel>, tonic::transport::Error> {
        Ok(router_proto::v1::admin_client::AdminClient::new(self.channel(0, addr)?))
    }

    pub fn client(&self, id: NodeId, addr: &str) -> Result<PeerClient<Channel>, tonic::transport::Error> {
        Ok(PeerClient::new(self.channel(id, addr)?)
            .max_decoding_message_size(PEER_MAX_MESSAGE_BYTES)
            .max_encoding_message_size(PEER_MAX_MESSAGE_BYTES))
    }

    fn channel(&self, id: NodeId, addr: &str) -> Result<Channel, tonic::transport::Error> {
        let key = (id, addr.to_string());
        let mut channels = self.channels.lock().expect("peer pool lock poisoned");
        let channel = match channels.get(&key) {
            Some(c) => c.clone(),
            None => {
                let c = Endpoint::from_shared(format!("https://{addr}"))?
                    .tls_config(self.tls.client())?
                    .connect_timeout(Duration::from_millis(500))
                    .timeout(PEER_RPC_TIMEOUT)
                    .tcp_nodelay(true)
                    .http2_keep_alive_interval(Duration::from_secs(5))
                    .keep_alive_timeout(Duration::from_secs(5))
                    .connect_lazy();
                // A node that moved to a new address leaves the old entry behind.
                if id != 0 {
                    channels.retain(|(n, _), _| *n != id);
                }
                channels.insert(key, c.clone());
                c
            }
        };
        Ok(channel)
    }
}
