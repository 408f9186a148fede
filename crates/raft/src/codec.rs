//! How values are laid out on disk: one format-version byte, then bincode.
//!
//! ```text
//!  [FORMAT_VERSION: u8][bincode(value)]
//! ```
//!
//! Every stored value (log entries, vote, committed, purged id, snapshots)
//! goes through [`encode`] / [`decode`]. A value written by a newer build is
//! refused with [`FormatError::Newer`] instead of being misread: a rolled-back
//! binary must stop, not diverge.

use std::fmt::Display;

use openraft::{AnyError, ErrorSubject, ErrorVerb, StorageIOError};
use serde::Serialize;
use serde::de::DeserializeOwned;

use crate::types::{NodeId, StorageError};

/// The layout this build writes, and the newest it can read.
pub const FORMAT_VERSION: u8 = 1;

/// A stored value could not be encoded or decoded.
#[derive(Debug, thiserror::Error)]
pub enum FormatError {
    #[error("stored value is empty (no format version byte)")]
    Empty,
    #[error(
        "stored value has format version {found}, but this build reads only up to version {supported}; \
         it was written by a newer router-raft: upgrade this binary instead of rolling back"
    )]
    Newer { found: u8, supported: u8 },
    #[error("stored value has unknown format version {found}")]
    Unknown { found: u8 },
    #[error("bincode: {0}")]
    Bincode(#[from] bincode::Error),
}

/// Encodes `value` behind the current format version byte.
pub fn encode<T: Serialize + ?Sized>(value: &T) -> Result<Vec<u8>, FormatError> {
    let mut buf = vec![FORMAT_VERSION];
    bincode::serialize_into(&mut buf, value)?;
    Ok(buf)
}

/// Decodes a value written by [`encode`], refusing versions this build does not know.
pub fn decode<T: DeserializeOwned>(bytes: &[u8]) -> Result<T, FormatError> {
    let (&version, body) = bytes.split_first().ok_or(FormatError::Empty)?;
    match version {
        FORMAT_VERSION => Ok(bincode::deserialize(body)?),
        v if v > FORMAT_VERSION => Err(FormatError::Newer { found: v, supported: FORMAT_VERSION }),
        v => Err(FormatError::Unknown { found: v }),
    }
}

/// Builds an openraft storage error that keeps `source` and says what we were doing.
pub(crate) fn io_error<E>(
    subject: ErrorSubject<NodeId>,
    verb: ErrorVerb,
    source: &E,
    context: impl Display,
) -> StorageError
where
    E: std::error::Error + 'static,
{
    let any = AnyError::new(source).add_context(|| context);
    StorageIOError::new(subject, verb, any).into()
}
