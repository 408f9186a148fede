//! The amnesia scenario (docs/design/incarnations.md): a voter that lost its
//! disk must not help elect a leader that lacks an entry it had acknowledged.
//!
//! ```text
//!  A leads; C is cut off; E commits on A and B (acknowledged to the sender)
//!  B loses its disk and starts empty (a new incarnation); A dies; C is healed
//!  C campaigns: B's empty log would grant its vote, and C has no E
//!  A comes back; B is replaced as join does (remove, record, learner, promote)
//!  every replica must hold E
//! ```
//!
//! With the incarnation checks (as routerd runs) C cannot win with B's vote
//! and E survives; with them off (`check_incarnations = false`, the checker's
//! own test) C wins and A's E is overwritten: the run must report it.

use crate::cluster::Cluster;
use crate::net::Net;
use crate::workload::{self, World};
use crate::{Report, drive, fault, heal_network};
use rand::SeedableRng;
use rand::rngs::StdRng;
use router_core::{Command, MailboxItem, MessageId, Outcome, ProviderId};
use std::sync::atomic::AtomicBool;
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::time::Instant;

/// The entry the scenario must not lose.
pub const ENTRY: &str = "amnesia-e";

pub(crate) async fn scenario(check_incarnations: bool) -> Report {
    let mut rng = StdRng::seed_from_u64(17);
    let net = Net::new(StdRng::seed_from_u64(18));
    net.lock().check_incarnations = check_incarnations;
    let mut cluster = Cluster::start(3, net.clone(), &mut rng, false).await;
    let world = World {
        net: net.clone(),
        history: Arc::new(Mutex::new(workload::History::default())),
        t0: Instant::now(),
        stop: Arc::new(AtomicBool::new(false)),
    };
    let mut report = Report { seed: 0, nodes: 3, ..Default::default() };
    let setup = {
        let (w, cmds) = (world.clone(), workload::setup_commands(&cluster.incarnations(), 1, 10));
        let mut r = StdRng::seed_from_u64(20);
        tokio::spawn(async move {
            let deadline = Instant::now() + Duration::from_secs(30);
            for cmd in cmds {
                w.must(&mut r, cmd, deadline).await?;
            }
            Ok::<(), String>(())
        })
    };
    if let Err(e) = drive(&mut cluster, &mut rng, setup).await {
        report.violations.push(format!("setup failed: {e}"));
        cluster.shutdown().await;
        return report;
    }
    let Some(a) = settle(&mut cluster, &mut rng, Duration::from_secs(10)).await else {
        report.violations.push("no leader after the setup".into());
        cluster.shutdown().await;
        return report;
    };
    let others: Vec<u64> = cluster.up_ids().into_iter().filter(|id| *id != a).collect();
    let (b, c) = (others[0], others[1]);

    {
        let mut n = net.lock();
        for other in [a, b] {
            n.cut.insert((c, other));
            n.cut.insert((other, c));
        }
    }
    fault(&world, format!("node {c} cut off"));
    let send = {
        let w = world.clone();
        let env = router_core::SendEnvelope { message_id: MessageId::new(ENTRY), ..workload::probe_envelope() };
        tokio::spawn(async move {
            let mut r = StdRng::seed_from_u64(21);
            w.must(&mut r, Command::Send(env), Instant::now() + Duration::from_secs(10)).await
        })
    };
    match drive(&mut cluster, &mut rng, send).await {
        Ok(Outcome::Sent { .. }) => {}
        other => {
            report.violations.push(format!("E was not acknowledged: {other:?}"));
            cluster.shutdown().await;
            return report;
        }
    }
    cluster.wipe(b).await;
    fault(&world, format!("node {b} lost its disk and started empty"));
    cluster.crash(a, 0).await;
    fault(&world, format!("node {a} crashed"));
    heal_network(&net);
    fault(&world, format!("node {c} healed"));
    let alone_until = Instant::now() + Duration::from_secs(5);
    while Instant::now() < alone_until {
        cluster.tick(&mut rng).await;
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    cluster.boot(a).await;
    fault(&world, format!("node {a} restarted"));

    // What `join` does for a node that lost its disk (it waits for a leader).
    let readmitted = crate::rejoin::readmit(&mut cluster, &mut rng, &world, b).await;
    cluster.wiped.remove(&b);
    if let Err(e) = readmitted {
        report.violations.push(format!("node {b} was not readmitted: {e}"));
    }
    if settle(&mut cluster, &mut rng, Duration::from_secs(20)).await.is_none() {
        report.violations.push("replicas did not converge".into());
    }
    let beta = ProviderId::new(workload::BETA);
    for id in cluster.up_ids() {
        let Some(state) = cluster.state_of(id) else { continue };
        let holds = state.mailboxes.get(&beta).is_some_and(|m| {
            m.entries.values().any(|e| matches!(&e.item, MailboxItem::Envelope(env) if env.message_id.0 == ENTRY))
        });
        if !holds {
            report.violations.push(format!("acknowledged entry {ENTRY} lost: not in node {id}'s replica"));
        }
    }
    report.terms = cluster.leaders.len();
    report.violations.append(&mut cluster.violations);
    report.virtual_ms = world.now_ms();
    cluster.shutdown().await;
    report
}

/// Ticks until every up node applied the same index under one leader.
async fn settle(cluster: &mut Cluster, rng: &mut StdRng, within: Duration) -> Option<u64> {
    let deadline = Instant::now() + within;
    while Instant::now() < deadline {
        cluster.tick(rng).await;
        let applied: std::collections::BTreeSet<_> = cluster.up_ids().iter().map(|&id| cluster.applied(id)).collect();
        if let Some(leader) = cluster.agreed_leader().filter(|_| applied.len() == 1) {
            return Some(leader);
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    None
}
