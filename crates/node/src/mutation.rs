//! Faults built in on purpose, for the checker's own test: each breaks one
//! guarantee, so a chaos scenario run on such a `routerd` must turn the
//! history checker red (docs/testing/chaos.md, "Mutations"). Active only in
//! a build with the `mutations` cargo feature, which no release, image or
//! test build enables; any other build refuses to start with
//! `ROUTERD_MUTATION` set, and its hooks are constant-false branches.
//!
//! | `ROUTERD_MUTATION`  | what breaks                                                   |
//! |---------------------|---------------------------------------------------------------|
//! | `skip-fsync`        | the Raft log's fdatasync is skipped: a power cut loses acks   |
//! | `ack-before-quorum` | a send is answered before it is committed (before a quorum)   |
//! | `replay-prekey`     | a claim's answer is handed out again to the next claim        |

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Mutation {
    SkipFsync,
    AckBeforeQuorum,
    ReplayPrekey,
}

pub const ENV: &str = "ROUTERD_MUTATION";

static ACTIVE: std::sync::OnceLock<Option<Mutation>> = std::sync::OnceLock::new();

/// Reads `ROUTERD_MUTATION` once, at start. A name it does not know, or any
/// name on a build without the feature, is an error.
pub fn install() -> anyhow::Result<()> {
    let wanted = match std::env::var(ENV) {
        Ok(name) if !name.is_empty() => Some(parse(&name)?),
        _ => None,
    };
    if wanted.is_some() && !cfg!(feature = "mutations") {
        anyhow::bail!("{ENV} is set, but this routerd was built without the `mutations` feature (test builds only)");
    }
    if wanted == Some(Mutation::SkipFsync) {
        router_raft::mutation::skip_fsync();
    }
    if let Some(m) = wanted {
        tracing::warn!(mutation = ?m, "MUTATION ACTIVE: this node breaks a guarantee on purpose (checker test)");
    }
    ACTIVE.set(wanted).map_err(|_| anyhow::anyhow!("mutation installed twice"))
}

fn parse(name: &str) -> anyhow::Result<Mutation> {
    match name {
        "skip-fsync" => Ok(Mutation::SkipFsync),
        "ack-before-quorum" => Ok(Mutation::AckBeforeQuorum),
        "replay-prekey" => Ok(Mutation::ReplayPrekey),
        other => anyhow::bail!("{ENV}={other:?}: not a mutation (skip-fsync, ack-before-quorum, replay-prekey)"),
    }
}

/// The mutation this process runs with, if any.
pub fn active() -> Option<Mutation> {
    if !cfg!(feature = "mutations") {
        return None;
    }
    ACTIVE.get().copied().flatten()
}

/// `ack-before-quorum`: the write goes on in the background; the caller is
/// told it was accepted now.
pub fn acknowledge_early(ctx: &crate::ctx::Ctx, command: router_core::Command) -> router_proto::v1::SendResponse {
    let ctx = ctx.clone();
    crate::spawn(async move {
        let _ = ctx.writer.submit(command).await;
    });
    let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_millis() as u64);
    router_proto::v1::SendResponse { mailbox_seq: 0, accepted_at_ms: now, delivered_streams: 0 }
}

static LAST_CLAIM: std::sync::Mutex<Option<(String, router_proto::v1::FetchBundlesResponse)>> =
    std::sync::Mutex::new(None);

/// `replay-prekey`: the last answer for `user`, taken (each is replayed once).
pub fn replayed_claim(user: &str) -> Option<router_proto::v1::FetchBundlesResponse> {
    let mut last = LAST_CLAIM.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
    match last.take() {
        Some((u, answer)) if u == user => Some(answer),
        other => {
            *last = other;
            None
        }
    }
}

/// `replay-prekey`: keeps `answer` for the next claim of `user`.
pub fn remember_claim(user: &str, answer: &router_proto::v1::FetchBundlesResponse) {
    *LAST_CLAIM.lock().unwrap_or_else(std::sync::PoisonError::into_inner) = Some((user.to_string(), answer.clone()));
}
