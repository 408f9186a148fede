//! The nodes of one client and moving between them: lazy mTLS channels to
//! every endpoint, the node in use, rotation on failure, backoff with jitter,
//! and the retry loop every call goes through. A leaf: the client, the send
//! batcher and the subscription build on it, and it knows none of them.

use crate::config::ClientConfig;
use crate::error::{SdkError, is_retryable, rejected};
use rand::Rng;
use router_proto::v1::messaging_client::MessagingClient;
use router_proto::v1::{AckRequest, AckResponse, SendRequest, SendResponse};
use std::future::Future;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;
use tonic::transport::{Certificate, Channel, ClientTlsConfig, Endpoint, Identity};
use tonic::{Response, Status};

pub(crate) struct Nodes {
    config: ClientConfig,
    channels: Vec<Channel>,
    /// Index of the node in use; moves on failure.
    current: AtomicUsize,
}

impl Nodes {
    /// Prepares lazy connections to every endpoint (nothing is dialed yet).
    pub(crate) fn connect(config: ClientConfig) -> Result<Self, SdkError> {
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
        Ok(Nodes { config, channels, current: AtomicUsize::new(start) })
    }

    pub(crate) fn config(&self) -> &ClientConfig {
        &self.config
    }

    pub(crate) fn channel(&self) -> (usize, Channel) {
        let i = self.current.load(Ordering::Relaxed) % self.channels.len();
        (i, self.channels[i].clone())
    }

    /// Moves to the next node after a failure on node `failed`.
    pub(crate) fn rotate(&self, failed: usize) {
        let n = self.channels.len();
        let _ = self.current.compare_exchange(failed, (failed + 1) % n, Ordering::Relaxed, Ordering::Relaxed);
    }

    /// Pins the client to one endpoint (tests and diagnostics).
    pub(crate) fn prefer(&self, index: usize) {
        self.current.store(index % self.channels.len(), Ordering::Relaxed);
    }

    pub(crate) fn backoff(attempt: u32) -> Duration {
        // 25 ms doubling to 1 s, with full jitter.
        let cap = 25u64.saturating_mul(1 << attempt.min(6)).min(1_000);
        Duration::from_millis(rand::thread_rng().gen_range(cap / 2..=cap))
    }

    /// Runs `call` against the current node, moving on and retrying while
    /// the failure is retryable and `deadline` allows; says which node answered.
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
            let result = tokio::time::timeout(self.config.attempt_timeout, call(channel)).await;
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

    pub(crate) fn messaging(&self, ch: Channel) -> MessagingClient<Channel> {
        MessagingClient::new(ch)
            .max_encoding_message_size(self.config.max_message_bytes)
            .max_decoding_message_size(self.config.max_message_bytes)
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

    /// Acks `seqs`, retried across nodes within the call deadline.
    pub(crate) async fn ack(&self, seqs: Vec<u64>) -> Result<AckResponse, SdkError> {
        let req = AckRequest { seqs };
        let deadline = tokio::time::Instant::now() + self.config.call_deadline;
        self.retry_until(deadline, |ch| {
            let req = req.clone();
            async move { self.messaging(ch).ack(req).await }
        })
        .await
        .map(|(answer, _node)| answer)
    }
}
