//! Messaging: quorum-durable sends, the receive stream served from the local
//! replica, batched acks. Ephemeral content (typing, call signaling) takes
//! another path: validated on the local replica and pushed to the connected
//! streams of the recipient's provider on every node, never stored (see
//! [`crate::ephemeral`]).

use super::{status, validate};
use crate::ctx::Ctx;
use crate::identity::provider_of;
use router_core::{Command, Outcome, ProviderId, Rejection, SendEnvelope, Seq};
use router_proto::v1::messaging_server::Messaging;
use router_proto::v1::*;
use std::pin::Pin;
use std::sync::atomic::Ordering;
use std::time::Duration;
use tokio::sync::mpsc;
use tokio_stream::Stream;
use tokio_stream::wrappers::ReceiverStream;
use tonic::{Code, Request, Response, Status};
use tracing::Instrument;

pub struct MessagingService {
    pub ctx: Ctx,
}

type EntryStream = Pin<Box<dyn Stream<Item = Result<MailboxEntry, Status>> + Send>>;

#[tonic::async_trait]
impl Messaging for MessagingService {
    async fn send(&self, req: Request<SendRequest>) -> Result<Response<SendResponse>, Status> {
        let sender = provider_of(&req)?;
        send_one(&self.ctx, sender, req.into_inner()).instrument(send_span()).await.map(Response::new)
    }

    /// Every send of the batch goes its own way (`send_one`), all at once:
    /// the stored ones meet in the writer's queue and share Raft entries.
    #[tracing::instrument(skip_all, fields(provider, sends))]
    async fn send_batch(&self, req: Request<SendBatchRequest>) -> Result<Response<SendBatchResponse>, Status> {
        let sender = provider_of(&req)?;
        let sends = req.into_inner().sends;
        tracing::Span::current().record("provider", sender.as_str()).record("sends", sends.len());
        if sends.is_empty() {
            return Err(status::invalid_field("sends", "EMPTY", "at least one send is required"));
        }
        if sends.len() > self.ctx.limits.max_send_batch {
            return Err(status::over_limit("sends", self.ctx.limits.max_send_batch as u64, sends.len() as u64));
        }
        let answers = futures::future::join_all(
            sends.into_iter().map(|r| send_one(&self.ctx, sender.clone(), r).instrument(send_span())),
        )
        .await;
        let items = &self.ctx.metrics.send_batch_items;
        let results = answers
            .into_iter()
            .map(|answer| {
                let code = answer.as_ref().map_or_else(|s| s.code(), |_| Code::Ok);
                items.with_label_values(&[&crate::metrics::code_label(code)]).inc();
                SendResult {
                    result: Some(match answer {
                        Ok(accepted) => send_result::Result::Accepted(accepted),
                        Err(refused) => send_result::Result::Error(status::send_error(&refused)),
                    }),
                }
            })
            .collect();
        Ok(Response::new(SendBatchResponse { results }))
    }

    type ReceiveStream = EntryStream;

    async fn receive(&self, req: Request<ReceiveRequest>) -> Result<Response<Self::ReceiveStream>, Status> {
        let provider = provider_of(&req)?;
        self.ctx.require_onboarded(&provider).await?;
        let limits = &self.ctx.limits;
        let window = match req.get_ref().window {
            0 => limits.default_receive_window,
            w if w > limits.max_receive_window => {
                return Err(status::over_limit("window", u64::from(limits.max_receive_window), u64::from(w)));
            }
            w => w,
        };
        let (tx, rx) = mpsc::channel(window.min(256) as usize);
        // Registered before the stream is handed out: from here on, ephemeral
        // content sent to this provider reaches this stream.
        let ephemeral = self.ctx.ephemeral.register(&provider);
        crate::spawn(deliver(self.ctx.clone(), provider, window as usize, tx, ephemeral));
        Ok(Response::new(Box::pin(ReceiverStream::new(rx))))
    }

    async fn ack(&self, req: Request<AckRequest>) -> Result<Response<AckResponse>, Status> {
        let provider = provider_of(&req)?;
        let seqs = req.into_inner().seqs;
        if seqs.is_empty() {
            return Err(status::invalid_field("seqs", "EMPTY", "at least one sequence number is required"));
        }
        if seqs.len() > self.ctx.limits.max_ack_batch {
            return Err(status::over_limit("seqs", self.ctx.limits.max_ack_batch as u64, seqs.len() as u64));
        }
        match self.ctx.write(Command::Ack { provider, seqs }).await? {
            Outcome::Acked { removed, unknown } => Ok(Response::new(AckResponse { removed, unknown })),
            other => Err(status::unexpected(&other)),
        }
    }
}

/// The message id a delivered entry carries (`msg_id` in logs and spans);
/// empty for reports, which answer no message of their own.
fn entry_message_id(entry: &MailboxEntry) -> &str {
    match &entry.kind {
        Some(mailbox_entry::Kind::Envelope(env)) => &env.message_id,
        Some(mailbox_entry::Kind::Group(g)) => &g.message_id,
        _ => "",
    }
}

/// The span of one send, alone or in a batch; `send_one` fills its fields.
fn send_span() -> tracing::Span {
    tracing::info_span!("send", provider = tracing::field::Empty, msg_id = tracing::field::Empty)
}

/// One send, alone (`Send`) or in a batch (`SendBatch`), inside its `send` span.
async fn send_one(ctx: &Ctx, sender: ProviderId, r: SendRequest) -> Result<SendResponse, Status> {
    let mut env = validate::send_envelope(sender, r, &ctx.limits)?;
    tracing::Span::current().record("provider", env.sender.as_str()).record("msg_id", env.message_id.as_str());
    env.traceparent = crate::telemetry::current_traceparent();
    if let Some((fed, route)) = crate::federation::edge::route_if_remote(ctx, &env.recipient).await? {
        return crate::federation::edge::send(ctx, &fed, route, env).await;
    }
    if env.content_type.is_ephemeral() {
        return send_ephemeral(ctx, env).await;
    }
    if crate::mutation::active() == Some(crate::mutation::Mutation::AckBeforeQuorum) {
        return Ok(crate::mutation::acknowledge_early(ctx, Command::Send(env)));
    }
    match ctx.write(Command::Send(env)).await? {
        Outcome::Sent { seq, accepted_at_ms } => {
            Ok(SendResponse { mailbox_seq: seq, accepted_at_ms, delivered_streams: 0 })
        }
        other => Err(status::unexpected(&other)),
    }
}

/// Feeds one receive stream from the local replica, and from the ephemeral
/// registry.
///
/// `cursor` is the next sequence to send. Every entry below it that is still
/// in the mailbox was sent on this stream and not yet acked, so their count is
/// the number in flight; at most `window` are. A new stream starts at 0, so
/// after a reconnect every unacked entry is delivered again. Ephemeral entries
/// (seq 0) are interleaved as they come, outside the window; one that expired
/// while the stream was behind is dropped, not delivered late.
async fn deliver(
    ctx: Ctx,
    provider: ProviderId,
    window: usize,
    tx: mpsc::Sender<Result<MailboxEntry, Status>>,
    ephemeral: (crate::ephemeral::Registration, mpsc::Receiver<MailboxEntry>),
) {
    ctx.open_streams.fetch_add(1, Ordering::Relaxed);
    let _guard = StreamGuard(ctx.clone());
    // Unregisters when this task ends, whichever way.
    let (_registration, mut ephemeral_rx) = ephemeral;
    let mut applied = ctx.applied.clone();
    let mut shutdown = ctx.shutdown.clone();
    let mut cursor = 0u64;
    let delivered = ctx.metrics.delivered.with_label_values(&[provider.as_str()]);
    let delivery_seconds = ctx.metrics.delivery_seconds.with_label_values(&[provider.as_str()]);
    loop {
        // One read per wakeup: the provider's standing and the next entries.
        // Entries past their expiry are passed over, never handed out: the
        // state removes and reports them a grace period later (cluster
        // version 2), so a report means the entry was not delivered.
        // Payloads are read back after the lock is released: apply waits for it.
        let next: Result<(Vec<std::sync::Arc<router_core::MailboxEntry>>, Seq), Rejection> = ctx.read(|s| {
            if let Some(refusal) = s.provider_refusal(&provider) {
                return Err(refusal);
            }
            let Some(mb) = s.mailboxes.get(&provider) else { return Ok((Vec::new(), cursor)) };
            let in_flight = mb.entries.range(..cursor).count();
            let room = window.saturating_sub(in_flight);
            let now = replica_now_ms(s);
            let mut passed = cursor;
            let mut batch = Vec::new();
            for e in mb.range_from(cursor, room) {
                passed = e.seq + 1;
                if e.expires_at_ms <= now {
                    continue;
                }
                batch.push(e.clone());
            }
            Ok((batch, passed))
        });
        // A suspended (or revoked) provider's stream is closed; its mail stays queued.
        let batch = match next {
            Ok((batch, passed)) => {
                cursor = passed;
                batch
            }
            Err(refusal) => {
                let _ = tx.send(Err(status::rejection(&refusal))).await;
                return;
            }
        };
        for core_entry in batch {
            let traceparent = match &core_entry.item {
                router_core::MailboxItem::Envelope(env) => env.traceparent.clone(),
                router_core::MailboxItem::Group(g) => g.traceparent.clone(),
                _ => None,
            };
            let seq = core_entry.seq;
            let entry = match super::wire::mailbox_entry(std::sync::Arc::unwrap_or_clone(core_entry)) {
                Ok(entry) => entry,
                Err(e) => {
                    // A payload this replica accepted and cannot read back:
                    // the stream ends; the entry stays queued, unacked.
                    tracing::error!(provider = %provider, seq, error = %e, "cannot read a queued payload");
                    let _ = tx.send(Err(status::payload_unreadable(seq, &e))).await;
                    return;
                }
            };
            // Not a child of the Receive call's span, which lasts as long as
            // the stream: its parent is the send's context stored with the entry.
            let span = tracing::info_span!(
                parent: None,
                "deliver",
                node_id = ctx.node_id,
                provider = %provider,
                seq = entry.seq,
                msg_id = entry_message_id(&entry),
                otel.kind = "producer"
            );
            if let Some(tp) = &traceparent {
                crate::telemetry::set_parent_from(&span, tp);
            }
            let age_ms = now_ms().saturating_sub(entry.accepted_at_ms);
            if tx.send(Ok(entry)).instrument(span).await.is_err() {
                return;
            }
            delivered.inc();
            delivery_seconds.observe(age_ms as f64 / 1000.0);
        }
        if *shutdown.borrow() {
            let _ = tx.send(Err(status::write_error(crate::writer::WriteError::ShuttingDown))).await;
            return;
        }
        tokio::select! {
            changed = applied.changed() => if changed.is_err() { return },
            _ = shutdown.changed() => {}
            _ = tx.closed() => return,
            Some(entry) = ephemeral_rx.recv() => {
                if !forward_ephemeral(&ctx, &tx, entry).await {
                    return;
                }
            }
        }
    }
}

/// This node's idea of the replicated clock now: its own clock, but never
/// below the last applied stamp nor further ahead of it than one entry may
/// move it (an idle leader stamps an entry every `writer::IDLE_TICK`).
fn replica_now_ms(s: &router_core::State) -> u64 {
    s.clock_ms.max(now_ms().min(s.clock_ms.saturating_add(router_core::version::MAX_CLOCK_STEP_MS)))
}

/// Hands one ephemeral entry to the stream unless it expired while waiting
/// for room. False when the stream is gone.
async fn forward_ephemeral(ctx: &Ctx, tx: &mpsc::Sender<Result<MailboxEntry, Status>>, entry: MailboxEntry) -> bool {
    let Ok(permit) = tx.reserve().await else { return false };
    if entry.expires_at_ms <= now_ms() {
        ctx.ephemeral.stats.dropped_expired.fetch_add(1, Ordering::Relaxed);
        return true;
    }
    permit.send(Ok(entry));
    true
}

/// How long the accepting node waits for one peer's `DeliverEphemeral`.
const EPHEMERAL_PEER_TIMEOUT: Duration = Duration::from_millis(1500);

/// The ephemeral send path: validation on the local replica, then a push to
/// every connected stream of the recipient's provider, on this node and (all
/// at once, each with a short timeout) on every other member. Nothing is
/// written anywhere.
async fn send_ephemeral(ctx: &Ctx, env: SendEnvelope) -> Result<SendResponse, Status> {
    ctx.require_member()?;
    let recipient_provider = ctx.read(|s| check_ephemeral(s, &env)).map_err(|r| status::rejection(&r))?;
    let accepted_at_ms = now_ms();
    let ttl_ms = env.ttl_ms;
    let delivery = crate::ephemeral::EphemeralDelivery {
        provider: recipient_provider,
        accepted_at_ms,
        expires_at_ms: accepted_at_ms.saturating_add(ttl_ms),
        envelope: env,
    };
    let mut delivered = ctx.ephemeral.push(&delivery.provider, &delivery.entry());

    let peers: Vec<(router_raft::NodeId, String)> = {
        ctx.raft
            .metrics()
            .borrow()
            .membership_config
            .membership()
            .nodes()
            .filter(|(id, _)| **id != ctx.node_id)
            .map(|(id, addr)| (*id, addr.peer.clone()))
            .collect()
    };
    if !peers.is_empty() {
        let data: bytes::Bytes = bincode::serialize(&delivery)
            .map_err(|e| Status::internal(format!("encode ephemeral delivery: {e}")))?
            .into();
        let calls = peers.into_iter().map(|(id, addr)| {
            let data = data.clone();
            async move {
                let mut client = match ctx.peers.client(id, &addr) {
                    Ok(c) => c,
                    Err(e) => {
                        tracing::debug!(peer_node_id = id, "ephemeral delivery: no channel: {e}");
                        return 0;
                    }
                };
                let mut request = Request::new(crate::network::payload(data));
                request.set_timeout(EPHEMERAL_PEER_TIMEOUT);
                let answer = tokio::time::timeout(EPHEMERAL_PEER_TIMEOUT, client.deliver_ephemeral(request)).await;
                match answer {
                    Ok(Ok(resp)) => bincode::deserialize::<u32>(&resp.into_inner().data).unwrap_or_else(|e| {
                        tracing::warn!(peer_node_id = id, "ephemeral delivery: bad answer: {e}");
                        0
                    }),
                    Ok(Err(status)) => {
                        tracing::debug!(peer_node_id = id, "ephemeral delivery failed: {}", status.message());
                        0
                    }
                    Err(_) => {
                        tracing::debug!(peer_node_id = id, "ephemeral delivery timed out");
                        0
                    }
                }
            }
        });
        delivered += futures::future::join_all(calls).await.into_iter().sum::<u32>();
    }
    if delivered == 0 {
        return Err(status::with_detail(
            Code::FailedPrecondition,
            format!(
                "no receive stream of provider {} is connected; ephemeral content (typing, call signaling) is not stored, so it was dropped",
                delivery.provider
            ),
            ErrorDetail { reason: "RECIPIENT_NOT_CONNECTED".into(), ..Default::default() },
        ));
    }
    Ok(SendResponse { mailbox_seq: 0, accepted_at_ms, delivered_streams: delivered })
}

/// The checks `apply` makes for a stored send, on the local replica: the
/// sender may act and owns the named sender user, the recipient exists and
/// the send addresses exactly its devices. Answers the recipient's provider.
fn check_ephemeral(s: &router_core::State, env: &SendEnvelope) -> Result<ProviderId, Rejection> {
    if let Some(refusal) = s.provider_refusal(&env.sender) {
        return Err(refusal);
    }
    s.route(env)
}

struct StreamGuard(Ctx);

impl Drop for StreamGuard {
    fn drop(&mut self) {
        self.0.open_streams.fetch_sub(1, Ordering::Relaxed);
    }
}

fn now_ms() -> u64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_millis() as u64)
}
