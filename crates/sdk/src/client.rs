//! Unary calls with failover across nodes.

use crate::batch::Queued;
use crate::error::{SdkError, is_retryable, rejected};
use crate::subscription::Subscription;
use rand::Rng;
use router_proto::v1::directory_client::DirectoryClient;
use router_proto::v1::messaging_client::MessagingClient;
use router_proto::v1::prekeys_client::PrekeysClient;
use router_proto::v1::*;
use std::future::Future;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::Duration;
use tokio::sync::{mpsc, oneshot};
use tonic::transport::{Certificate, Channel, ClientTlsConfig, Endpoint, Identity};
use tonic::{Response, Status};

/// Default [`ClientConfig::max_send_batch`].
pub const DEFAULT_MAX_SEND_BATCH: usize = 64;
/// Default [`ClientConfig::max_send_batch_calls`].
pub const DEFAULT_MAX_SEND_BATCH_CALLS: usize = 4;

#[derive(Clone, Debug)]
pub struct ClientConfig {
    /// `host:port` of each node's provider listener.
    pub endpoints: Vec<String>,
    pub ca_pem: Vec<u8>,
    /// This provider's certificate (URI SAN `spiffe://interop-router/provider/<id>`).
    pub cert_pem: Vec<u8>,
    pub key_pem: Vec<u8>,
    /// Name the node certificates are valid for.
    pub server_name: String,
    /// Per-attempt deadline.
    pub attempt_timeout: Duration,
    /// Total time one call may spend retrying.
    pub call_deadline: Duration,
    /// Largest message this client sends (envelopes; a `SendBatch` call).
    pub max_message_bytes: usize,
    /// Concurrent [`RouterClient::send`]s put in one `SendBatch` call at
    /// most; 0 or 1 sends each in its own `Send` call.
    pub max_send_batch: usize,
    /// `SendBatch` calls in flight at once; sends wait in the client's queue
    /// (and join the next call) while all are busy.
    pub max_send_batch_calls: usize,
}

impl ClientConfig {
    pub fn new(endpoints: Vec<String>, ca_pem: Vec<u8>, cert_pem: Vec<u8>, key_pem: Vec<u8>) -> Self {
        ClientConfig {
            endpoints,
            ca_pem,
            cert_pem,
            key_pem,
            server_name: "localhost".into(),
            attempt_timeout: Duration::from_secs(5),
            call_deadline: Duration::from_secs(20),
            max_message_bytes: 4 * 1024 * 1024,
            max_send_batch: DEFAULT_MAX_SEND_BATCH,
            max_send_batch_calls: DEFAULT_MAX_SEND_BATCH_CALLS,
        }
    }
}

pub(crate) struct Inner {
    config: ClientConfig,
    channels: Vec<Channel>,
    /// Index of the node in use; moves on failure.
    current: AtomicUsize,
    /// The queue of the send batcher (`crate::batch`), started by the first send.
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
        if config.endpoints.is_empty() {
            return Err(SdkError::Config("at least one endpoint is required".into()));
        }
        let tls = ClientTlsConfig::new()
            .ca_certificate(Certificate::from_pem(&config.ca_pem))
            .identity(Identity::from_pem(&config.cert_pem, &config.key_pem))
            .domain_name(config.server_name.clone());
        let channels = config
            .endpoints
            .iter()
            .map(|e| {
                Ok(Endpoint::from_shared(format!("https://{e}"))
                    .map_err(|err| SdkError::Config(format!("endpoint {e}: {err}")))?
                    .tls_config(tls.clone())
                    .map_err(|err| SdkError::Config(format!("TLS: {err}")))?
                    .connect_timeout(Duration::from_secs(2))
                    .tcp_nodelay(true)
                    .http2_keep_alive_interval(Duration::from_secs(5))
                    .keep_alive_timeout(Duration::from_secs(5))
                    .connect_lazy())
            })
            .collect::<Result<Vec<_>, SdkError>>()?;
        let start = rand::thread_rng().gen_range(0..channels.len());
        Ok(RouterClient {
            inner: Arc::new(Inner { config, channels, current: AtomicUsize::new(start), send_queue: OnceLock::new() }),
        })
    }

    pub(crate) fn from_inner(inner: Arc<Inner>) -> Self {
        RouterClient { inner }
    }

    pub fn config(&self) -> &ClientConfig {
        &self.inner.config
    }

    pub(crate) fn channel(&self) -> (usize, Channel) {
        let i = self.inner.current.load(Ordering::Relaxed) % self.inner.channels.len();
        (i, self.inner.channels[i].clone())
    }

    /// Moves to the next node after a failure on node `failed`.
    pub(crate) fn rotate(&self, failed: usize) {
        let n = self.inner.channels.len();
        let _ = self.inner.current.compare_exchange(failed, (failed + 1) % n, Ordering::Relaxed, Ordering::Relaxed);
    }

    /// Pins the client to one endpoint (tests and diagnostics).
    pub fn prefer(&self, index: usize) {
        self.inner.current.store(index % self.inner.channels.len(), Ordering::Relaxed);
    }

    pub(crate) fn backoff(attempt: u32) -> Duration {
        // 25 ms doubling to 1 s, with full jitter.
        let cap = 25u64.saturating_mul(1 << attempt.min(6)).min(1_000);
        Duration::from_millis(rand::thread_rng().gen_range(cap / 2..=cap))
    }

    /// Runs `call` against the current node, moving on and retrying while
    /// the failure is retryable and the call deadline allows.
    async fn retry<T, F, Fut>(&self, call: F) -> Result<T, SdkError>
    where
        F: FnMut(Channel) -> Fut,
        Fut: Future<Output = Result<Response<T>, Status>>,
    {
        let deadline = tokio::time::Instant::now() + self.inner.config.call_deadline;
        self.retry_until(deadline, call).await.map(|(answer, _node)| answer)
    }

    /// [`Self::retry`] with a given deadline; also says which node answered.
    pub(crate) async fn retry_until<T, F, Fut>(
        &self,
        deadline: tokio::time::Instant,
        mut call: F,
    ) -> Result<(T, usize), SdkError>
    where
        F: FnMut(Channel) -> Fut,
        Fut: Future<Output = Result<Response<T>, Status>>,
    {
        let mut attempt = 0u32;
        loop {
            let (index, channel) = self.channel();
            attempt += 1;
            let result = tokio::time::timeout(self.inner.config.attempt_timeout, call(channel)).await;
            let status = match result {
                Ok(Ok(resp)) => return Ok((resp.into_inner(), index)),
                Ok(Err(status)) if !is_retryable(&status) => return Err(rejected(status)),
                Ok(Err(status)) => status,
                Err(_) => Status::deadline_exceeded("attempt timed out"),
            };
            tracing::debug!(node = index, code = ?status.code(), "call failed: {}; retrying", status.message());
            self.rotate(index);
            if tokio::time::Instant::now() >= deadline {
                return Err(SdkError::Unavailable { attempts: attempt, last: status.message().to_string() });
            }
            tokio::time::sleep(Self::backoff(attempt)).await;
        }
    }

    fn directory(&self, ch: Channel) -> DirectoryClient<Channel> {
        DirectoryClient::new(ch)
    }

    fn prekeys(&self, ch: Channel) -> PrekeysClient<Channel> {
        PrekeysClient::new(ch)
    }

    pub(crate) fn messaging(&self, ch: Channel) -> MessagingClient<Channel> {
        MessagingClient::new(ch)
            .max_encoding_message_size(self.inner.config.max_message_bytes)
            .max_decoding_message_size(self.inner.config.max_message_bytes)
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
        let deadline = tokio::time::Instant::now() + self.inner.config.call_deadline;
        let ephemeral =
            matches!(ContentType::try_from(req.content_type), Ok(ContentType::Typing | ContentType::CallSignaling));
        if ephemeral || self.inner.config.max_send_batch <= 1 {
            return self.send_alone(req, deadline).await;
        }
        let queue =
            self.inner.send_queue.get_or_init(|| crate::batch::start(Arc::downgrade(&self.inner), &self.inner.config));
        let (reply, answer) = oneshot::channel();
        match queue.send(Queued { req, deadline, reply }).await {
            Ok(()) => answer.await.unwrap_or_else(|_| {
                Err(SdkError::Unavailable {
                    attempts: 0,
                    last: "the send batcher stopped (runtime shutting down)".into(),
                })
            }),
            // The batcher is gone (the runtime is shutting down): send alone.
            Err(mpsc::error::SendError(q)) => self.send_alone(q.req, deadline).await,
        }
    }

    /// One send in its own `Send` call, retried across nodes until `deadline`.
    pub(crate) async fn send_alone(
        &self,
        req: SendRequest,
        deadline: tokio::time::Instant,
    ) -> Result<SendResponse, SdkError> {
        self.retry_until(deadline, |ch| {
            let req = req.clone();
            async move { self.messaging(ch).send(req).await }
        })
        .await
        .map(|(answer, _node)| answer)
    }

    pub async fn ack(&self, seqs: Vec<u64>) -> Result<AckResponse, SdkError> {
        let req = AckRequest { seqs };
        self.retry(|ch| {
            let req = req.clone();
            async move { self.messaging(ch).ack(req).await }
        })
        .await
    }

    fn groups(&self, ch: Channel) -> router_proto::v1::groups_client::GroupsClient<Channel> {
        router_proto::v1::groups_client::GroupsClient::new(ch)
            .max_encoding_message_size(self.inner.config.max_message_bytes)
            .max_decoding_message_size(self.inner.config.max_message_bytes)
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
        Subscription::new(self.clone(), window)
    }
}
