//! Identifier newtypes. Validation of their text (length, characters) happens
//! at the API edge (`router-node`); here they are plain ordered values.

use serde::{Deserialize, Serialize};
use std::fmt;

macro_rules! string_id {
    ($(#[$doc:meta])* $name:ident) => {
        $(#[$doc])*
        #[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
        pub struct $name(pub String);

        impl $name {
            pub fn new(s: impl Into<String>) -> Self {
                Self(s.into())
            }
            pub fn as_str(&self) -> &str {
                &self.0
            }
        }

        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(&self.0)
            }
        }
    };
}

string_id!(
    /// A provider (messaging service) as named in its certificate.
    ProviderId
);
string_id!(
    /// A user's cluster-wide identifier, e.g. `tel:+4915112345678`.
    UserId
);
string_id!(
    /// A sender-chosen idempotency key, unique per sender provider.
    MessageId
);

/// Signal device id.
pub type DeviceId = u32;
/// Signal registration id (changes when a device is reinstalled).
pub type RegistrationId = u32;
/// Position in one provider's mailbox; strictly increasing, never reused.
pub type Seq = u64;

/// What an envelope carries, as far as routing cares.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub enum ContentType {
    Message,
    Receipt,
    Typing,
    CallSignaling,
}

impl ContentType {
    /// Ephemeral content is delivered to connected providers only and never
    /// enters the replicated log.
    pub fn is_ephemeral(self) -> bool {
        matches!(self, ContentType::Typing | ContentType::CallSignaling)
    }
}
