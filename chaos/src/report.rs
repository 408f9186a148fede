//! The run's verdict: counts, timings, and the checks that decide the exit code.

use crate::traffic::{ReceiveLog, SendLog};
use std::collections::BTreeSet;
use std::time::Duration;
use tokio::time::Instant;

/// What happened to the node that was killed.
#[derive(Clone, Debug, Default)]
pub struct Rejoin {
    pub killed: u64,
    pub new_leader: Option<u64>,
    /// `docker start` to "voter, follows a leader, applied index >= the leader's".
    pub caught_up_after: Option<Duration>,
    pub role: String,
    pub applied: u64,
    pub leader_applied: u64,
    pub voters: Vec<u64>,
    /// Whether the restarted node answered a provider call on its own endpoint.
    pub serves_providers: bool,
    /// Why the rejoin check failed, if it did.
    pub problem: Option<String>,
}

#[derive(Clone, Debug)]
pub struct Report {
    pub sent: usize,
    pub acked: usize,
    pub send_failures: Vec<(String, String)>,
    pub delivered: usize,
    pub lost: Vec<String>,
    /// Message ids handed to the application more than once.
    pub duplicates: Vec<String>,
    /// Message ids stored under more than one sequence number.
    pub stored_twice: Vec<String>,
    /// Delivered, but never acknowledged to the sender (allowed: e.g. the answer was lost).
    pub unexpected: usize,
    pub acked_after_kill: usize,
    pub failover_next_ack: Option<Duration>,
    pub longest_ack_gap: Option<Duration>,
    pub receive_complete: bool,
    pub receiver_reconnects: u32,
    pub receiver_errors: usize,
    pub leader_before: u64,
    pub rejoin: Rejoin,
}

impl Report {
    pub fn build(
        send: &SendLog,
        recv: &ReceiveLog,
        killed_at: Option<Instant>,
        leader_before: u64,
        rejoin: Rejoin,
    ) -> Report {
        let acked: BTreeSet<&String> = send.acked.iter().map(|(id, _)| id).collect();
        let lost: Vec<String> =
            acked.iter().filter(|id| !recv.by_message.contains_key(**id)).map(|s| s.to_string()).collect();
        let duplicates = recv.by_message.iter().filter(|(_, seqs)| seqs.len() > 1).map(|(id, _)| id.clone()).collect();
        let stored_twice = recv
            .by_message
            .iter()
            .filter(|(_, seqs)| seqs.iter().collect::<BTreeSet<_>>().len() > 1)
            .map(|(id, _)| id.clone())
            .collect();
        let times: Vec<Instant> = send.acked.iter().map(|(_, t)| *t).collect();
        let longest_ack_gap = times.windows(2).map(|w| w[1] - w[0]).max();
        let (acked_after_kill, failover_next_ack) = match killed_at {
            Some(k) => {
                let after: Vec<&Instant> = times.iter().filter(|t| **t > k).collect();
                (after.len(), after.first().map(|t| **t - k))
            }
            None => (0, None),
        };
        Report {
            sent: send.sent,
            acked: send.acked.len(),
            send_failures: send.failed.clone(),
            delivered: acked.len() - lost.len(),
            lost,
            duplicates,
            stored_twice,
            unexpected: recv.by_message.keys().filter(|id| !acked.contains(id)).count(),
            acked_after_kill,
            failover_next_ack,
            longest_ack_gap,
            receive_complete: recv.complete,
            receiver_reconnects: recv.reconnects,
            receiver_errors: recv.errors.len(),
            leader_before,
            rejoin,
        }
    }

    /// (check, passed, detail) for every check.
    pub fn checks(&self) -> Vec<(&'static str, bool, String)> {
        let r = &self.rejoin;
        vec![
            (
                "every send acknowledged",
                self.send_failures.is_empty(),
                first(&self.send_failures.iter().map(|(id, e)| format!("{id}: {e}")).collect::<Vec<_>>()),
            ),
            (
                "sending continued after the kill",
                self.acked_after_kill > 0,
                format!("{} acked after the kill", self.acked_after_kill),
            ),
            ("every acked message delivered", self.lost.is_empty(), first(&self.lost)),
            ("no duplicates at the app", self.duplicates.is_empty(), first(&self.duplicates)),
            ("each message stored once", self.stored_twice.is_empty(), first(&self.stored_twice)),
            (
                "killed node rejoined (voter, caught up)",
                r.problem.is_none() && r.caught_up_after.is_some(),
                r.problem.clone().unwrap_or_else(|| {
                    format!("applied {} / leader {}, voters {:?}", r.applied, r.leader_applied, r.voters)
                }),
            ),
            ("killed node serves providers again", r.serves_providers, String::new()),
        ]
    }

    pub fn passed(&self) -> bool {
        self.checks().iter().all(|(_, ok, _)| *ok)
    }

    pub fn print(&self) {
        let ms = |d: Option<Duration>| d.map_or("-".to_string(), |d| format!("{}ms", d.as_millis()));
        let r = &self.rejoin;
        println!("== Report");
        let rows: Vec<(&str, String)> = vec![
            ("sent", self.sent.to_string()),
            ("acked by the router", self.acked.to_string()),
            ("delivered to the receiver", self.delivered.to_string()),
            ("lost (acked, never delivered)", self.lost.len().to_string()),
            ("delivered twice to the app", self.duplicates.len().to_string()),
            ("stored twice (two seqs, one id)", self.stored_twice.len().to_string()),
            ("delivered, not acked to sender", self.unexpected.to_string()),
            ("receiver reconnects / errors", format!("{} / {}", self.receiver_reconnects, self.receiver_errors)),
            (
                "leader",
                format!(
                    "node {} -> node {} (killed node {})",
                    self.leader_before,
                    r.new_leader.map_or("?".into(), |l| l.to_string()),
                    r.killed
                ),
            ),
            ("failover (kill -> next ack)", ms(self.failover_next_ack)),
            ("longest gap between acks", ms(self.longest_ack_gap)),
            ("rejoin (docker start -> caught up)", ms(r.caught_up_after)),
        ];
        for (k, v) in rows {
            println!("  {k:<36} {v}");
        }
        println!("== Checks");
        for (name, ok, detail) in self.checks() {
            let detail = if detail.is_empty() || ok { String::new() } else { format!("  ({detail})") };
            println!("  [{}] {name}{detail}", if ok { "ok" } else { "FAIL" });
        }
    }

    pub fn to_json(&self) -> serde_json::Value {
        let ms = |d: Option<Duration>| d.map(|d| d.as_millis() as u64);
        serde_json::json!({
            "sent": self.sent,
            "acked": self.acked,
            "send_failures": self.send_failures.len(),
            "delivered": self.delivered,
            "lost": self.lost,
            "duplicates": self.duplicates,
            "stored_twice": self.stored_twice,
            "delivered_not_acked": self.unexpected,
            "receiver_reconnects": self.receiver_reconnects,
            "leader_before": self.leader_before,
            "killed": self.rejoin.killed,
            "leader_after": self.rejoin.new_leader,
            "failover_next_ack_ms": ms(self.failover_next_ack),
            "longest_ack_gap_ms": ms(self.longest_ack_gap),
            "rejoin_ms": ms(self.rejoin.caught_up_after),
            "checks": self.checks().iter().map(|(n, ok, d)| serde_json::json!({"check": n, "ok": ok, "detail": d})).collect::<Vec<_>>(),
            "passed": self.passed(),
        })
    }
}

/// The first item and how many more there are, for a failed check's detail.
fn first(items: &[String]) -> String {
    match items {
        [] => String::new(),
        [one] => one.clone(),
        [one, rest @ ..] => format!("{one} and {} more", rest.len()),
    }
}
