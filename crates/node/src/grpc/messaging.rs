//! Messaging: quorum-durable sends, the receive stream served from the local
//! replica, batched acks.

use super::{status, validate};
use crate::ctx::Ctx;
use crate::identity::provider_of;
use router_core::{Command, Outcome, ProviderId, SendEnvelope};
use router_proto::v1::messaging_server::Messaging;
use router_proto::v1::*;
use std::pin::Pin;
use std::sync::atomic::Ordering;
use tokio::sync::mpsc;
use tracing::Instrument;
use tokio_stream::Stream;
use tokio_stream::wrappers::ReceiverStream;
use tonic::{Code, Request, Response, Status};

pub struct MessagingService {
    pub ctx: Ctx,
}

type EntryStream = Pin<Box<dyn Stream<Item = Result<MailboxEntry, Status>> + Send>>;

#[tonic::async_trait]
impl Messaging for MessagingService {
    #[tracing::instrument(skip_all, fields(provider, msg_id))]
    async fn send(&self, req: Request<SendRequest>) -> Result<Response<SendResponse>, Status> {
        let sender = provider_of(&req)?;
        let r = req.into_inner();
        let limits = &self.ctx.limits;
        let message_id = validate::message_id(&r.message_id, limits)?;
        tracing::Span::current().record("provider", sender.as_str()).record("msg_id", message_id.as_str());
        let recipient = validate::user_id("recipient_user_id", &r.recipient_user_id, limits)?;
        let content_type = validate::content_type(r.content_type)?;
        if content_type.is_ephemeral() {
            return Err(status::with_detail(
                Code::Unimplemented,
                "ephemeral content (typing, call signaling) is not stored; its live delivery path is not available yet",
                ErrorDetail { reason: "EPHEMERAL_UNSUPPORTED".into(), field: "content_type".into(), ..Default::default() },
            ));
        }
        let ttl_ms = validate::ttl_ms(r.ttl_seconds, limits)?;
        let (sender_user, sender_device) = match (r.sender_user_id.as_str(), r.sender_device_id) {
            ("", 0) => (None, None),
            ("", _) => {
                return Err(status::invalid_field(
                    "sender_device_id",
                    "UNEXPECTED",
                    "sender_device_id is set without sender_user_id",
                ));
            }
            (user, device) => (
                Some(validate::user_id("sender_user_id", user, limits)?),
                Some(validate::device_id("sender_device_id", device)?),
            ),
        };
        let parts = validate::parts(r.parts, limits)?;
        let env = SendEnvelope {
            sender,
            sender_user,
            sender_device,
            message_id,
            recipient,
            content_type,
            ttl_ms,
            parts,
            traceparent: crate::telemetry::current_traceparent(),
        };
        match self.ctx.write(Command::Send(env)).await? {
            Outcome::Sent { seq, accepted_at_ms } => {
                Ok(Response::new(SendResponse { mailbox_seq: seq, accepted_at_ms }))
            }
            other => Err(status::unexpected(&other)),
        }
    }

    type ReceiveStream = EntryStream;

    async fn receive(&self, req: Request<ReceiveRequest>) -> Result<Response<Self::ReceiveStream>, Status> {
        let provider = provider_of(&req)?;
        self.ctx.require_onboarded(&provider)?;
        let limits = &self.ctx.limits;
        let window = match req.get_ref().window {
            0 => limits.default_receive_window,
            w if w > limits.max_receive_window => {
                return Err(status::over_limit("window", u64::from(limits.max_receive_window), u64::from(w)));
            }
            w => w,
        };
        let (tx, rx) = mpsc::channel(window.min(256) as usize);
        tokio::spawn(deliver(self.ctx.clone(), provider, window as usize, tx));
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

/// Feeds one receive stream from the local replica.
///
/// `cursor` is the next sequence to send. Every entry below it that is still
/// in the mailbox was sent on this stream and not yet acked, so their count is
/// the number in flight; at most `window` are. A new stream starts at 0, so
/// after a reconnect every unacked entry is delivered again.
async fn deliver(ctx: Ctx, provider: ProviderId, window: usize, tx: mpsc::Sender<Result<MailboxEntry, Status>>) {
    ctx.open_streams.fetch_add(1, Ordering::Relaxed);
    let _guard = StreamGuard(ctx.clone());
    let mut applied = ctx.applied.clone();
    let mut shutdown = ctx.shutdown.clone();
    let mut cursor = 0u64;
    loop {
        let batch: Vec<(MailboxEntry, Option<String>)> = ctx.read(|s| {
            let Some(mb) = s.mailboxes.get(&provider) else { return Vec::new() };
            let in_flight = mb.entries.range(..cursor).count();
            let room = window.saturating_sub(in_flight);
            mb.range_from(cursor, room)
                .map(|e| {
                    let tp = match &e.item {
                        router_core::MailboxItem::Envelope(env) => env.traceparent.clone(),
                        _ => None,
                    };
                    (MailboxEntry::from(e), tp)
                })
                .collect()
        });
        for (entry, traceparent) in batch {
            cursor = entry.seq + 1;
            let span = tracing::info_span!("deliver", provider = %provider, seq = entry.seq, otel.kind = "producer");
            if let Some(tp) = &traceparent {
                crate::telemetry::set_parent_from(&span, tp);
            }
            let age_ms = now_ms().saturating_sub(entry.accepted_at_ms);
            if tx.send(Ok(entry)).instrument(span).await.is_err() {
                return;
            }
            ctx.metrics.delivered.with_label_values(&[provider.as_str()]).inc();
            ctx.metrics.delivery_seconds.with_label_values(&[provider.as_str()]).observe(age_ms as f64 / 1000.0);
        }
        // A suspended (or revoked) provider's stream is closed; its mail stays queued.
        if let Some(refusal) = ctx.read(|s| s.provider_refusal(&provider)) {
            let _ = tx.send(Err(status::rejection(&refusal))).await;
            return;
        }
        if *shutdown.borrow() {
            let _ = tx.send(Err(status::write_error(crate::writer::WriteError::ShuttingDown))).await;
            return;
        }
        tokio::select! {
            changed = applied.changed() => if changed.is_err() { return },
            _ = shutdown.changed() => {}
            _ = tx.closed() => return,
        }
    }
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
