//! `apply`: one log entry's commands, dispatched to the state's operations.

use super::State;
use crate::command::{Batch, Command};
use crate::outcome::{Outcome, Rejection};
use crate::payload::RequestId;
use crate::provider::{ProviderRecord, ProviderStatus};
use std::collections::BTreeMap;

impl State {
    /// Applies `command` unless `request` was applied before; then answers
    /// what it answered then. A rejection is not remembered: it changed
    /// nothing (a rejected request leaves the state as it was), so a retry
    /// may simply be applied.
    fn apply_once(&mut self, request: &RequestId, command: &Command) -> Result<Outcome, Rejection> {
        if let Some(answer) = self.once.get(request) {
            return Ok(answer.clone());
        }
        let outcome = self.apply(command);
        if !matches!(outcome, Outcome::Rejected(_)) {
            self.once.insert(self.clock_ms, *request, outcome.clone());
        }
        Ok(outcome)
    }

    /// Applies one log entry. Deterministic: depends only on `self` and `batch`.
    pub fn apply_batch(&mut self, batch: &Batch) -> Vec<Outcome> {
        self.clock_ms = self.next_clock(batch.stamp_ms);
        // A restore under way may not have placed a sender's mailbox yet,
        // where an expiry report would go: time resumes when it finishes.
        if self.restore.is_none() {
            self.expire();
        }
        self.dedup.prune(self.clock_ms, &self.limits);
        self.once.prune(self.clock_ms);
        if self.clock_ms >= self.buckets_pruned_at_ms.saturating_add(60_000) {
            self.prune_claim_buckets();
            self.buckets_pruned_at_ms = self.clock_ms;
        }
        batch.commands.iter().map(|c| self.apply(c)).collect()
    }

    fn apply(&mut self, cmd: &Command) -> Outcome {
        if self.restore.is_some() && !cmd.runs_during_restore() {
            return Outcome::Rejected(Rejection::RestoreInProgress);
        }
        let result = match cmd {
            Command::AddProvider { provider } => {
                let now = self.clock_ms;
                let rec = self.providers.entry(provider.clone()).or_insert_with(|| ProviderRecord {
                    id: provider.clone(),
                    status: ProviderStatus::Active,
                    name: provider.0.clone(),
                    contact: String::new(),
                    media_hosts: Vec::new(),
                    requested_at_ms: now,
                    activated_at_ms: Some(now),
                    status_changed_at_ms: now,
                });
                if rec.status != ProviderStatus::Active {
                    rec.status = ProviderStatus::Active;
                    rec.activated_at_ms.get_or_insert(now);
                    rec.status_changed_at_ms = now;
                }
                Ok(Outcome::Done)
            }
            Command::RequestProvider { provider, name, contact, media_hosts } => {
                self.request_provider(provider, name, contact, media_hosts)
            }
            Command::SetProviderStatus { provider, action } => self.set_provider_status(provider, *action),
            Command::SetMediaHosts { provider, media_hosts } => self.onboarded(provider).map(|()| {
                let rec = self.providers.get_mut(provider).expect("onboarded providers have a record");
                rec.media_hosts = media_hosts.clone();
                Outcome::Done
            }),
            Command::SetLimits { limits } => {
                self.limits = limits.clone();
                Ok(Outcome::Done)
            }
            Command::RegisterUser { provider, user } => self.register_user(provider, user),
            Command::DeregisterUser { provider, user } => self.deregister_user(provider, user),
            Command::RegisterDevice { provider, user, device, registration_id } => {
                self.register_device(provider, user, *device, *registration_id)
            }
            Command::RemoveDevice { provider, user, device } => self.remove_device(provider, user, *device),
            Command::UploadPrekeys { provider, user, device, upload } => {
                self.upload_prekeys(provider, user, *device, upload)
            }
            Command::ClaimPrekeys { requester, user, device } => self.claim(requester, user, *device),
            Command::Send(env) => self.send(env),
            Command::Ack { provider, seqs } => self.ack(provider, seqs),
            Command::Restore { state } => self.restore(state),
            Command::CreateGroup { provider, creator, group, members } => {
                self.create_group(provider, creator, group, members, &BTreeMap::new())
            }
            Command::ChangeGroup { provider, actor, group, set, remove } => {
                self.change_group(provider, actor, group, set, remove, &BTreeMap::new())
            }
            Command::SendGroup(g) => self.send_group(g),
            Command::RegisterPeer { peer, endpoints, ca_pem, providers, max_queue } => {
                self.register_peer(peer, endpoints, ca_pem, providers, *max_queue)
            }
            Command::SetPeerStatus { peer, status } => self.set_peer_status(peer, *status),
            Command::RemovePeer { peer } => self.remove_peer(peer),
            Command::RelaySend { peer, recipient_provider, envelope } => {
                self.relay_send(peer, recipient_provider, envelope)
            }
            Command::AcceptRelayed { origin, items } => self.accept_relayed(origin, items),
            Command::RelayAcked { peer, delivered, refused } => self.relay_acked(peer, delivered, refused),
            Command::FederatedGroup { provider, actor, group, create, set, remote, remove } => {
                self.federated_group(provider, actor, group, *create, set, remote, remove)
            }
            Command::SendGroupFromPeer { origin, send } => self.send_group_from_peer(origin, send),
            Command::RestoreFederation { federation } => {
                self.federation = (**federation).clone();
                Ok(Outcome::Done)
            }
            Command::SetClusterVersion { version } => self.set_cluster_version(*version),
            Command::SetIncarnation { node, incarnation } => self.set_incarnation(*node, *incarnation),
            Command::Once { request, command } => self.apply_once(request, command),
            Command::RestoreBegin { id } => self.restore_begin(*id),
            Command::RestoreItems { id, part, items } => self.restore_items(*id, *part, items),
            Command::RestoreFinish { id, parts } => self.restore_finish(*id, *parts),
        };
        result.unwrap_or_else(Outcome::Rejected)
    }
}
