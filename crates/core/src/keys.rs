//! A device's prekeys as the directory stores them, and the claim rule:
//! each one-time key leaves the stock exactly once (it is popped inside
//! `apply`, so the Raft log orders every claim cluster-wide); when the EC
//! stock is empty the bundle has no one-time key; when the Kyber stock is
//! empty the last-resort Kyber key is handed out instead.

use crate::ids::{DeviceId, RegistrationId};
use bytes::Bytes;
use serde::{Deserialize, Serialize};
use std::collections::VecDeque;

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct OneTimePrekey {
    pub key_id: u32,
    /// 33-byte serialized Curve25519 public key.
    pub public_key: Bytes,
}

/// A key signed by the identity key: the signed EC prekey, or a Kyber key.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct SignedPrekey {
    pub key_id: u32,
    pub public_key: Bytes,
    /// 64-byte XEdDSA signature over `public_key`.
    pub signature: Bytes,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct DeviceKeys {
    pub identity_key: Bytes,
    pub signed_prekey: SignedPrekey,
    pub one_time: VecDeque<OneTimePrekey>,
    pub kyber_one_time: VecDeque<SignedPrekey>,
    pub kyber_last_resort: Option<SignedPrekey>,
}

/// What a claim hands out for one device.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Bundle {
    pub device: DeviceId,
    pub registration_id: RegistrationId,
    pub identity_key: Bytes,
    pub signed_prekey: SignedPrekey,
    pub one_time: Option<OneTimePrekey>,
    pub kyber: Option<SignedPrekey>,
    pub kyber_is_last_resort: bool,
}

impl Bundle {
    /// The EC one-time stock was empty when this bundle was claimed.
    pub fn one_time_exhausted(&self) -> bool {
        self.one_time.is_none()
    }
}

impl DeviceKeys {
    /// Pops one EC and one Kyber one-time key (falling back to last resort).
    pub fn claim(&mut self, device: DeviceId, registration_id: RegistrationId) -> Bundle {
        let one_time = self.one_time.pop_front();
        let (kyber, kyber_is_last_resort) = match self.kyber_one_time.pop_front() {
            Some(k) => (Some(k), false),
            None => (self.kyber_last_resort.clone(), self.kyber_last_resort.is_some()),
        };
        Bundle {
            device,
            registration_id,
            identity_key: self.identity_key.clone(),
            signed_prekey: self.signed_prekey.clone(),
            one_time,
            kyber,
            kyber_is_last_resort,
        }
    }
}
