//! A receive stream that survives node failures.
//!
//! The router redelivers every unacked entry on a new stream, so after a
//! reconnect entries already handed to the application come again; they are
//! skipped here until acked. The application sees each entry at least once
//! overall (a crash of the application itself leads to redelivery) and at
//! most once per subscription.
//!
//! Ephemeral entries (`entry.ephemeral`: typing indicators, call signaling)
//! are different: the router pushes them only to streams connected when they
//! were sent, never stores or redelivers them, and gives them no sequence
//! number (seq 0). They bypass the dedup above, are returned as they arrive,
//! and need no [`Subscription::ack`] (an ack of seq 0 is only counted as
//! unknown). One sent while the stream was reconnecting is simply lost, which
//! is what typing indicators and call signaling expect; check
//! `expires_at_ms` if a late one matters.

use crate::error::{SdkError, is_retryable, rejected};
use crate::failover::Nodes;
use router_proto::v1::{AckResponse, MailboxEntry, ReceiveRequest};
use std::collections::BTreeSet;
use std::sync::Arc;
use tonic::Streaming;

pub struct Subscription {
    client: Arc<Nodes>,
    window: u32,
    stream: Option<(usize, Streaming<MailboxEntry>)>,
    /// Handed to the application, not yet acked by it.
    outstanding: BTreeSet<u64>,
    reconnects: u32,
}

impl Subscription {
    pub(crate) fn new(client: Arc<Nodes>, window: u32) -> Self {
        Subscription { client, window, stream: None, outstanding: BTreeSet::new(), reconnects: 0 }
    }

    /// How many times the stream was re-established.
    pub fn reconnects(&self) -> u32 {
        self.reconnects
    }

    /// The next new entry. Retries across nodes until the client's call
    /// deadline passes without any node answering.
    pub async fn next(&mut self) -> Result<MailboxEntry, SdkError> {
        let mut attempt = 0u32;
        let mut deadline = tokio::time::Instant::now() + self.client.config().call_deadline;
        loop {
            if self.stream.is_none() {
                let (index, channel) = self.client.channel();
                let req = ReceiveRequest { window: self.window };
                match self.client.messaging(channel).receive(req).await {
                    Ok(resp) => self.stream = Some((index, resp.into_inner())),
                    Err(status) if !is_retryable(&status) => return Err(rejected(status)),
                    Err(status) => {
                        self.client.rotate(index);
                        attempt += 1;
                        if tokio::time::Instant::now() >= deadline {
                            return Err(SdkError::Unavailable { attempts: attempt, last: status.message().into() });
                        }
                        tokio::time::sleep(Nodes::backoff(attempt)).await;
                        continue;
                    }
                }
            }
            let (index, stream) = self.stream.as_mut().expect("stream set above");
            let index = *index;
            match stream.message().await {
                Ok(Some(entry)) => {
                    attempt = 0;
                    deadline = tokio::time::Instant::now() + self.client.config().call_deadline;
                    // Not in the mailbox: no sequence to dedupe by, nothing to ack.
                    if entry.ephemeral {
                        return Ok(entry);
                    }
                    if self.outstanding.insert(entry.seq) {
                        return Ok(entry);
                    }
                }
                Ok(None) | Err(_) => {
                    // Stream ended or broke (node died or shut down): reconnect elsewhere.
                    self.stream = None;
                    self.reconnects += 1;
                    self.client.rotate(index);
                    attempt += 1;
                    tokio::time::sleep(Nodes::backoff(attempt)).await;
                }
            }
        }
    }

    /// Acks entries handed out by [`Subscription::next`]. Ephemeral entries
    /// are never acked (they are not stored).
    pub async fn ack(&mut self, seqs: Vec<u64>) -> Result<AckResponse, SdkError> {
        let resp = self.client.ack(seqs.clone()).await?;
        for s in seqs {
            self.outstanding.remove(&s);
        }
        Ok(resp)
    }
}
