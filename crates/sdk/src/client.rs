//! Unary calls with failover across nodes.

use crate::batch::Queued;
pub use crate::config::{ClientConfig, DEFAULT_MAX_SEND_BATCH, DEFAULT_MAX_SEND_BATCH_CALLS};
use crate::error::SdkError;
use crate::failover::Nodes;
use crate::subscription::Subscription;
use router_proto::v1::directory_client::DirectoryClient;
use router_proto::v1::prekeys_client::PrekeysClient;
use router_proto::v1::*;
use std::future::Future;
use std::sync::{Arc, OnceLock};
use tokio::sync::{mpsc, oneshot};
use tonic::transport::Channel;
use tonic::{Response, Status};

struct Inner {
    nodes: Arc<Nodes>,
    /// The queue of the send batcher (`crate::batch`), started by the first
    /// send; the batcher ends when the client (and with it this sender) goes.
    send_queue: OnceLock<mpsc::Sender<Queued>>,
}

/// A provider's handle on a cluster. Cheap to clone.
#[derive(Clone)]
pub struct RouterClient {
    inner: Arc<Inner>,
}

impl RouterClient {
    /// Prepares lazy connections to every endpoint (nothing is dialed yet).
    pub fn connect(config: ClientConfig) -> Result<Self, SdkError> {
        let nodes = Arc::new(Nodes::connect(config)?);
        Ok(RouterClient { inner: Arc::new(Inner { nodes, send_queue: OnceLock::new() }) })
    }

    pub fn config(&self) -> &ClientConfig {
        self.inner.nodes.config()
    }

    /// Pins the client to one endpoint (tests and diagnostics).
    pub fn prefer(&self, index: usize) {
        self.inner.nodes.prefer(index);
    }

    /// Runs `call` on the current node, moving on and retrying while the
    /// failure is retryable and the call deadline allows (`failover`).
    async fn retry<T, F, Fut>(&self, call: F) -> Result<T, SdkError>
    where
        F: FnMut(Channel) -> Fut,
        Fut: Future<Output = Result<Response<T>, Status>>,
    {
        let deadline = tokio::time::Instant::now() + self.config().call_deadline;
        self.inner.nodes.retry_until(deadline, call).await.map(|(answer, _node)| answer)
    }

    fn directory(&self, ch: Channel) -> DirectoryClient<Channel> {
        DirectoryClient::new(ch)
    }

    fn prekeys(&self, ch: Channel) -> PrekeysClient<Channel> {
        PrekeysClient::new(ch)
    }

    pub async fn register_user(&self, user_id: &str) -> Result<(), SdkError> {
        let req = RegisterUserRequest { user_id: user_id.into() };
        self.retry(|ch| {
            let req = req.clone();
            async move { self.directory(ch).register_user(req).await }
        })
        .await
        .map(drop)
    }

    pub async fn deregister_user(&self, user_id: &str) -> Result<(), SdkError> {
        let req = DeregisterUserRequest { user_id: user_id.into() };
        self.retry(|ch| {
            let req = req.clone();
            async move { self.directory(ch).deregister_user(req).await }
        })
        .await
        .map(drop)
    }

    pub async fn register_device(&self, user_id: &str, device_id: u32, registration_id: u32) -> Result<(), SdkError> {
        let req = RegisterDeviceRequest { user_id: user_id.into(), device_id, registration_id };
        self.retry(|ch| {
            let req = req.clone();
            async move { self.directory(ch).register_device(req).await }
        })
        .await
        .map(drop)
    }

    pub async fn remove_device(&self, user_id: &str, device_id: u32) -> Result<(), SdkError> {
        let req = RemoveDeviceRequest { user_id: user_id.into(), device_id };
        self.retry(|ch| {
            let req = req.clone();
            async move { self.directory(ch).remove_device(req).await }
        })
        .await
        .map(drop)
    }

    pub async fn resolve(&self, user_id: &str) -> Result<ResolveResponse, SdkError> {
        let req = ResolveRequest { user_id: user_id.into() };
        self.retry(|ch| {
            let req = req.clone();
            async move { self.directory(ch).resolve(req).await }
        })
        .await
    }

    pub async fn upload_prekeys(&self, req: UploadPrekeysRequest) -> Result<UploadPrekeysResponse, SdkError> {
        self.retry(|ch| {
            let req = req.clone();
            async move { self.prekeys(ch).upload_prekeys(req).await }
        })
        .await
    }

    /// Claims one bundle per device (`device_id` 0) or for one device.
    pub async fn fetch_bundles(&self, user_id: &str, device_id: u32) -> Result<FetchBundlesResponse, SdkError> {
        let req = FetchBundlesRequest { user_id: user_id.into(), device_id };
        self.retry(|ch| {
            let req = req.clone();
            async move { self.prekeys(ch).fetch_bundles(req).await }
        })
        .await
    }

    pub async fn prekey_count(&self, user_id: &str, device_id: u32) -> Result<PrekeyCountResponse, SdkError> {
        let req = PrekeyCountRequest { user_id: user_id.into(), device_id };
        self.retry(|ch| {
            let req = req.clone();
            async move { self.prekeys(ch).prekey_count(req).await }
        })
        .await
    }

    /// Sends until the router answers; retries reuse the request's message
    /// id, so a send is stored once however often it is retried. Sends made
    /// concurrently on one client share `SendBatch` calls (see
    /// `ClientConfig::max_send_batch`); each still gets its own answer.
    ///
    /// Ephemeral content (typing, call signaling) always goes alone: it is
    /// not deduplicated, so it must not be resent because another send of a
    /// batch was slow. A send queued for a batch goes out even if the caller
    /// stops waiting for it (as a unary call already on the wire does).
    pub async fn send(&self, req: SendRequest) -> Result<SendResponse, SdkError> {
        let nodes = &self.inner.nodes;
        let deadline = tokio::time::Instant::now() + nodes.config().call_deadline;
        let ephemeral =
            matches!(ContentType::try_from(req.content_type), Ok(ContentType::Typing | ContentType::CallSignaling));
        if ephemeral || nodes.config().max_send_batch <= 1 {
            return nodes.send_alone(req, deadline).await;
        }
        let queue = self.inner.send_queue.get_or_init(|| crate::batch::start(nodes.clone()));
        let (reply, answer) = oneshot::channel();
        match queue.send(Queued { req, deadline, reply }).await {
            Ok(()) => answer.await.unwrap_or_else(|_| {
                Err(SdkError::Unavailable {
                    attempts: 0,
                    last: "the send batcher stopped (runtime shutting down)".into(),
                })
            }),
            // The batcher is gone (the runtime is shutting down): send alone.
            Err(mpsc::error::SendError(q)) => nodes.send_alone(q.req, deadline).await,
        }
    }

    pub async fn ack(&self, seqs: Vec<u64>) -> Result<AckResponse, SdkError> {
        self.inner.nodes.ack(seqs).await
    }

    fn groups(&self, ch: Channel) -> router_proto::v1::groups_client::GroupsClient<Channel> {
        router_proto::v1::groups_client::GroupsClient::new(ch)
            .max_encoding_message_size(self.config().max_message_bytes)
            .max_decoding_message_size(self.config().max_message_bytes)
    }

    pub async fn create_group(&self, req: CreateGroupRequest) -> Result<GroupEpochResponse, SdkError> {
        self.retry(|ch| {
            let req = req.clone();
            async move { self.groups(ch).create_group(req).await }
        })
        .await
    }

    pub async fn update_group(&self, req: UpdateGroupRequest) -> Result<GroupEpochResponse, SdkError> {
        self.retry(|ch| {
            let req = req.clone();
            async move { self.groups(ch).update_group(req).await }
        })
        .await
    }

    pub async fn get_group(&self, group_id: &str) -> Result<GroupInfo, SdkError> {
        let req = GetGroupRequest { group_id: group_id.into() };
        self.retry(|ch| {
            let req = req.clone();
            async move { self.groups(ch).get_group(req).await }
        })
        .await
    }

    /// Sends to a group; retries reuse the message id (stored once).
    pub async fn send_group(&self, req: SendGroupRequest) -> Result<SendGroupResponse, SdkError> {
        self.retry(|ch| {
            let req = req.clone();
            async move { self.groups(ch).send_group(req).await }
        })
        .await
    }

    /// Opens a reconnecting receive subscription (`window` 0: server default).
    pub fn subscribe(&self, window: u32) -> Subscription {
        Subscription::new(self.inner.nodes.clone(), window)
    }
}
