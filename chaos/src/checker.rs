//! Offline checks of a recorded [`History`] against the guarantees in docs/design/delivery.md.
//!
//! Only `ok` operations create obligations; `unknown` ones may or may not have
//! taken effect, so they are allowed either way; `failed` ones must have
//! changed nothing.

use crate::history::{History, OpKind, Outcome};
use crate::workload::part_text;
use serde::Serialize;
use std::collections::{BTreeMap, BTreeSet};

#[derive(Clone, Debug, Serialize)]
pub struct Violation {
    pub invariant: &'static str,
    pub detail: String,
}

#[derive(Clone, Debug, Default, Serialize)]
pub struct Stats {
    /// (op kind, outcome) -> count.
    pub ops: BTreeMap<String, BTreeMap<String, u64>>,
    pub deliveries: usize,
    pub distinct_delivered: usize,
    /// Entries handed out again after a reconnect (allowed for unacked entries).
    pub redelivered: usize,
    /// Entries handed out again after their ack was answered ok (a lagging replica may do this).
    pub redelivered_after_ack: usize,
    pub unknown_sends_delivered: usize,
    pub prekeys_claimed: usize,
    /// Uploaded keys neither handed out in an ok claim nor in stock at the
    /// end (consumed by claims whose outcome is unknown).
    pub prekeys_unaccounted: u64,
    /// Longest interval inside the workload window without a send completing ok.
    pub max_unavailability_ms: u64,
}

fn cap(v: &mut Vec<Violation>, invariant: &'static str, items: Vec<String>) {
    if items.is_empty() {
        return;
    }
    let n = items.len();
    let mut detail = items.into_iter().take(5).collect::<Vec<_>>().join("; ");
    if n > 5 {
        detail.push_str(&format!("; and {} more", n - 5));
    }
    v.push(Violation { invariant, detail: format!("{n}: {detail}") });
}

pub fn check(h: &History) -> (Stats, Vec<Violation>) {
    let mut v = Vec::new();
    let mut stats = Stats::default();
    for op in &h.ops {
        let kind = match op.kind {
            OpKind::Send { .. } => "send",
            OpKind::Claim { .. } => "claim",
        };
        let outcome =
            serde_json::to_value(op.outcome).ok().and_then(|x| x.as_str().map(str::to_string)).unwrap_or_default();
        *stats.ops.entry(kind.into()).or_default().entry(outcome).or_default() += 1;
    }

    // Deliveries by message id.
    let mut by_id: BTreeMap<&str, Vec<&crate::history::Delivery>> = BTreeMap::new();
    for d in &h.deliveries {
        by_id.entry(&d.message_id).or_default().push(d);
    }
    stats.deliveries = h.deliveries.len();
    stats.distinct_delivered = by_id.len();
    let acked: BTreeSet<u64> = h.acked_seqs.iter().copied().collect();
    let mut first_seen: BTreeMap<u64, u64> = BTreeMap::new();
    for d in &h.deliveries {
        if let Some(prev) = first_seen.insert(d.seq, d.at_ms) {
            stats.redelivered += 1;
            if acked.contains(&d.seq) && prev < d.at_ms {
                stats.redelivered_after_ack += 1;
            }
        }
    }

    let sends: Vec<(&crate::history::Op, &str, u32, u64, Option<u64>)> = h
        .ops
        .iter()
        .filter_map(|op| match &op.kind {
            OpKind::Send { message_id, sender_device, n, mailbox_seq, .. } => {
                Some((op, message_id.as_str(), *sender_device, *n, *mailbox_seq))
            }
            _ => None,
        })
        .collect();
    let round_of: BTreeMap<&str, u64> = h
        .ops
        .iter()
        .filter_map(|op| match &op.kind {
            OpKind::Send { message_id, round, .. } => Some((message_id.as_str(), *round)),
            _ => None,
        })
        .collect();
    let sent: BTreeMap<&str, (Outcome, u32, u64)> =
        sends.iter().map(|(op, id, d, n, _)| (*id, (op.outcome, *d, *n))).collect();

    // 1. No acked send lost.
    let lost = sends
        .iter()
        .filter(|(op, id, ..)| op.outcome == Outcome::Ok && !by_id.contains_key(id))
        .map(|(_, id, ..)| id.to_string())
        .collect();
    cap(&mut v, "acked send lost", lost);

    // 2. Stored once: one mailbox seq per message id, and the seq the sender was told.
    let mut twice = Vec::new();
    for (id, ds) in &by_id {
        let seqs: BTreeSet<u64> = ds.iter().map(|d| d.seq).collect();
        if seqs.len() > 1 {
            twice.push(format!("{id} at seqs {seqs:?}"));
        }
    }
    for (op, id, _, _, told) in &sends {
        if let (Outcome::Ok, Some(told), Some(ds)) = (op.outcome, told, by_id.get(id))
            && ds.iter().any(|d| d.seq != *told)
        {
            twice.push(format!("{id}: answered seq {told}, delivered at {}", ds[0].seq));
        }
    }
    cap(&mut v, "message stored twice", twice);

    // 3. Nothing delivered that was never sent or was definitely rejected; content intact.
    let mut phantom = Vec::new();
    let mut altered = Vec::new();
    for (id, ds) in &by_id {
        match sent.get(id) {
            None => phantom.push(format!("{id} (never sent)")),
            Some((Outcome::Failed, ..)) => phantom.push(format!("{id} (its send was rejected)")),
            Some((outcome, d, n)) => {
                if *outcome == Outcome::Unknown {
                    stats.unknown_sends_delivered += 1;
                }
                let want: Vec<(u32, String)> =
                    crate::workload::RECIPIENT_DEVICES.iter().map(|&(r, _)| (r, part_text(*d, r, *n))).collect();
                if ds.iter().any(|x| x.parts != want) {
                    altered.push(format!("{id}: {:?}", ds[0].parts));
                }
            }
        }
    }
    cap(&mut v, "delivered but not sent (or rejected)", phantom);
    cap(&mut v, "ciphertext altered", altered);

    // 4. Order per (sender device, recipient device) among ok sends: a send
    //    issued after another was answered (a later round; one at a time,
    //    the next n) gets a higher mailbox seq. Sends of one round were in
    //    flight together, so their order among themselves is free. Every
    //    envelope carries a part for each recipient device in one mailbox
    //    entry, so one seq order serves both recipient devices; the part
    //    contents were checked above.
    let mut per_device: BTreeMap<u32, Vec<(u64, u64, u64)>> = BTreeMap::new();
    for (op, id, d, n, _) in &sends {
        if op.outcome == Outcome::Ok
            && let Some(ds) = by_id.get(id)
        {
            per_device.entry(*d).or_default().push((round_of[id], *n, ds[0].seq));
        }
    }
    let mut reordered = Vec::new();
    for (d, mut list) in per_device {
        list.sort();
        // The highest seq of any earlier round, and the send that had it.
        let mut earlier: Option<(u64, u64)> = None;
        let mut i = 0;
        while i < list.len() {
            let round = list[i].0;
            let this_round: Vec<_> = list[i..].iter().take_while(|x| x.0 == round).copied().collect();
            if let Some((n0, seq0)) = earlier {
                for &(_, n, seq) in this_round.iter().filter(|x| x.2 <= seq0) {
                    for &(r, _) in &crate::workload::RECIPIENT_DEVICES {
                        reordered.push(format!("s{d}->r{r}: n{n0} (seq {seq0}) before n{n} (seq {seq})"));
                    }
                }
            }
            let top = this_round.iter().max_by_key(|x| x.2).expect("a round has a send");
            if earlier.is_none_or(|(_, s)| top.2 > s) {
                earlier = Some((top.1, top.2));
            }
            i += this_round.len();
        }
    }
    cap(&mut v, "per-device order broken", reordered);

    // 5. One-time prekeys: each (device, key id) at most once across ok claims, and only stocked keys.
    let stocked: BTreeSet<(u32, u32)> = h.stocked.iter().copied().collect();
    let mut seen: BTreeMap<(u32, u32), u64> = BTreeMap::new();
    let (mut twice, mut foreign) = (Vec::new(), Vec::new());
    for op in &h.ops {
        if let (OpKind::Claim { keys, .. }, Outcome::Ok) = (&op.kind, op.outcome) {
            for k in keys {
                stats.prekeys_claimed += 1;
                if let Some(prev) = seen.insert(*k, op.start_ms) {
                    twice.push(format!("device {} key {} (claims at {prev} ms and {} ms)", k.0, k.1, op.start_ms));
                }
                if !stocked.contains(k) {
                    foreign.push(format!("device {} key {}", k.0, k.1));
                }
            }
        }
    }
    cap(&mut v, "one-time prekey handed out twice", twice);
    cap(&mut v, "prekey never uploaded handed out", foreign);
    stock(h, &seen, &mut stats, &mut v);

    // Availability: the longest stretch of the workload window without an ok send.
    let mut oks: Vec<u64> =
        sends.iter().filter(|(op, ..)| op.outcome == Outcome::Ok).map(|(op, ..)| op.end_ms).collect();
    oks.retain(|t| *t >= h.workload_start_ms && *t <= h.workload_end_ms);
    oks.sort_unstable();
    let mut points = vec![h.workload_start_ms];
    points.extend(oks);
    points.push(h.workload_end_ms);
    stats.max_unavailability_ms = points.windows(2).map(|w| w[1].saturating_sub(w[0])).max().unwrap_or(0);
    (stats, v)
}

/// So few ok claims would leave the stock checks nothing to check.
const MIN_OK_CLAIMS: usize = 10;

/// Check 6, prekey stock: every uploaded key was handed out in an ok claim or is
/// still in stock (`History::remaining`), apart from at most one per device
/// for each claim whose outcome is unknown; and enough claims succeeded for
/// that to mean something.
fn stock(h: &History, handed: &BTreeMap<(u32, u32), u64>, stats: &mut Stats, v: &mut Vec<Violation>) {
    if h.stocked.is_empty() {
        return;
    }
    let claims = |outcome: Outcome| {
        h.ops.iter().filter(|o| matches!(o.kind, OpKind::Claim { .. }) && o.outcome == outcome).count()
    };
    let ok = claims(Outcome::Ok);
    if ok < MIN_OK_CLAIMS {
        let detail = format!("{ok} ok claims, at least {MIN_OK_CLAIMS} needed");
        v.push(Violation { invariant: "too few claims to check the prekey stock", detail });
    }
    let Some(remaining) = &h.remaining else {
        let detail = "the remaining stock could not be read at the end".into();
        v.push(Violation { invariant: "prekey stock accounted", detail });
        return;
    };
    let unknown = claims(Outcome::Unknown) as u64;
    let devices: BTreeSet<u32> = h.stocked.iter().map(|(d, _)| *d).collect();
    let (mut over, mut lost) = (Vec::new(), Vec::new());
    for d in devices {
        let uploaded = h.stocked.iter().filter(|(dev, _)| *dev == d).count() as u64;
        let out = handed.keys().filter(|(dev, _)| *dev == d).count() as u64;
        let left = u64::from(remaining.get(&d).copied().unwrap_or(0));
        if out + left > uploaded {
            over.push(format!("device {d}: {out} handed out + {left} in stock > {uploaded} uploaded"));
        }
        let missing = uploaded.saturating_sub(out + left);
        stats.prekeys_unaccounted += missing;
        if h.claims_exactly_once && missing > unknown {
            lost.push(format!(
                "device {d}: {missing} of {uploaded} keys neither handed out nor in stock ({unknown} claims unknown)"
            ));
        }
    }
    cap(v, "prekey stock: more keys than uploaded", over);
    cap(v, "prekey stock: keys consumed without an answer", lost);
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::history::{Delivery, Op};

    fn send(id: &str, d: u32, n: u64, outcome: Outcome, start: u64) -> Op {
        Op {
            client: "t".into(),
            kind: OpKind::Send { message_id: id.into(), sender_device: d, n, round: n, mailbox_seq: None },
            start_ms: start,
            end_ms: start + 5,
            outcome,
            error: String::new(),
        }
    }

    fn delivery(id: &str, seq: u64, d: u32, n: u64) -> Delivery {
        let parts = crate::workload::RECIPIENT_DEVICES.iter().map(|&(r, _)| (r, part_text(d, r, n))).collect();
        Delivery { message_id: id.into(), seq, at_ms: 0, parts }
    }

    #[test]
    fn finds_loss_duplicates_reordering_and_double_claims() {
        let mut h = History { workload_end_ms: 100, ..History::default() };
        h.ops = vec![
            send("a0", 1, 0, Outcome::Ok, 0),
            send("a1", 1, 1, Outcome::Ok, 10),
            send("a2", 1, 2, Outcome::Unknown, 20),
            send("a3", 1, 3, Outcome::Ok, 30),
            send("a4", 1, 4, Outcome::Failed, 40),
        ];
        h.deliveries =
            vec![delivery("a1", 5, 1, 1), delivery("a0", 6, 1, 0), delivery("a0", 9, 1, 0), delivery("a4", 7, 1, 4)];
        h.stocked = vec![(1, 1), (1, 2)];
        h.ops.push(Op {
            client: "c".into(),
            kind: OpKind::Claim { keys: vec![(1, 1)], exhausted: 0 },
            start_ms: 1,
            end_ms: 2,
            outcome: Outcome::Ok,
            error: String::new(),
        });
        h.ops.push(Op {
            client: "c".into(),
            kind: OpKind::Claim { keys: vec![(1, 1), (1, 7)], exhausted: 0 },
            start_ms: 3,
            end_ms: 4,
            outcome: Outcome::Ok,
            error: String::new(),
        });
        h.remaining = Some(BTreeMap::from([(1, 2)]));
        let (_, v) = check(&h);
        let names: BTreeSet<&str> = v.iter().map(|x| x.invariant).collect();
        for want in [
            "prekey stock: more keys than uploaded",
            "too few claims to check the prekey stock",
            "acked send lost",
            "message stored twice",
            "delivered but not sent (or rejected)",
            "per-device order broken",
            "one-time prekey handed out twice",
            "prekey never uploaded handed out",
        ] {
            assert!(names.contains(want), "{want} missing from {v:?}");
        }
    }

    #[test]
    fn sends_of_one_round_may_land_in_any_order_but_not_before_an_earlier_round() {
        let in_round = |id: &str, n: u64, round: u64| {
            let mut op = send(id, 1, n, Outcome::Ok, round * 10);
            op.kind = OpKind::Send { message_id: id.into(), sender_device: 1, n, round, mailbox_seq: None };
            op
        };
        let mut h = History { workload_end_ms: 100, ..History::default() };
        // Round 0: n0..n2 in flight together, stored as n2, n0, n1; round 3 after them.
        h.ops = vec![in_round("b0", 0, 0), in_round("b1", 1, 0), in_round("b2", 2, 0), in_round("b3", 3, 3)];
        h.deliveries =
            vec![delivery("b2", 1, 1, 2), delivery("b0", 2, 1, 0), delivery("b1", 3, 1, 1), delivery("b3", 4, 1, 3)];
        let (_, v) = check(&h);
        assert!(v.is_empty(), "{v:?}");
        // A send of a later round stored before one of an earlier round is a violation.
        h.deliveries =
            vec![delivery("b2", 1, 1, 2), delivery("b0", 2, 1, 0), delivery("b1", 5, 1, 1), delivery("b3", 4, 1, 3)];
        let (_, v) = check(&h);
        assert!(v.iter().any(|x| x.invariant == "per-device order broken" && x.detail.contains("n3 (seq 4)")), "{v:?}");
    }

    #[test]
    fn the_prekey_stock_must_add_up_and_enough_claims_succeed() {
        let claim = |keys: Vec<(u32, u32)>, outcome| Op {
            client: "c".into(),
            kind: OpKind::Claim { keys, exhausted: 0 },
            start_ms: 1,
            end_ms: 2,
            outcome,
            error: String::new(),
        };
        let mut h = History { workload_end_ms: 50, claims_exactly_once: true, ..History::default() };
        h.stocked = (1..=20).map(|k| (1, k)).collect();
        h.ops = (1..=12).map(|k| claim(vec![(1, k)], Outcome::Ok)).collect();
        h.ops.push(claim(Vec::new(), Outcome::Unknown));
        // 12 handed out, 1 taken by the unknown claim, 7 left: it adds up.
        h.remaining = Some(BTreeMap::from([(1, 7)]));
        let (stats, v) = check(&h);
        assert!(v.is_empty(), "{v:?}");
        assert_eq!(stats.prekeys_unaccounted, 1);
        // Two keys gone with one unknown claim: consumed without an answer.
        h.remaining = Some(BTreeMap::from([(1, 6)]));
        let (_, v) = check(&h);
        assert!(v.iter().any(|x| x.invariant == "prekey stock: keys consumed without an answer"), "{v:?}");
        // Not read at all: the check cannot pass by default.
        h.remaining = None;
        let (_, v) = check(&h);
        assert!(v.iter().any(|x| x.invariant == "prekey stock accounted"), "{v:?}");
    }

    #[test]
    fn a_clean_history_passes() {
        let mut h = History { workload_end_ms: 50, ..History::default() };
        h.ops = vec![
            send("a0", 1, 0, Outcome::Ok, 0),
            send("a1", 1, 1, Outcome::Unknown, 10),
            send("a2", 1, 2, Outcome::Ok, 20),
        ];
        h.deliveries = vec![delivery("a0", 1, 1, 0), delivery("a2", 2, 1, 2), delivery("a2", 2, 1, 2)];
        let (stats, v) = check(&h);
        assert!(v.is_empty(), "{v:?}");
        assert_eq!(stats.redelivered, 1);
        assert_eq!(stats.max_unavailability_ms, 25);
    }
}
