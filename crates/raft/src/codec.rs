//! How values are laid out on disk: one format-version byte, then bincode.
//!
//! ```text
//!  version 1 (BASE_FORMAT)   [1][bincode(value)]
//!  version 2 (federation)    [2][bincode(value)]                       log entries holding a federation command
//!                            [2][bincode(value)][bincode(section)]     snapshots of a state with federation peers
//!  version 3 (cluster        [3][bincode(value)]                       log entries holding SetClusterVersion or Once
//!   versions)                [3][bincode(value)][bincode(extras)]      snapshots of a state past the base cluster
//!                                                                      version (extras: peers, version, Once answers)
//!  version 4 (restore in     [4][bincode(value)]                       log entries holding a restore's commands
//!   parts)                   [4][bincode(value)][bincode(extras, progress)]  snapshots of a state mid-restore
//!  version 5 (incarnations)  [5][bincode(value)]                       log entries holding SetIncarnation
//!                            [5][bincode(value)][bincode(extras, progress, incarnations)]
//!                                                                      snapshots of a state with members' incarnations
//!  version 6 (send answers   [6][bincode(value)]                       log entries with a restore part holding SenderAnswer
//!   per sender)              [6][bincode(value)][bincode(extras, progress, incarnations, sender windows)]
//!                                                                      snapshots of a state with per-sender windows
//!  version 7 (placed         [7][bincode(meta)]                        the meta file of a snapshot this node built
//!   snapshots)                                                         naming its payloads by place (never sent)
//! ```
//!
//! Every stored value (log entries, vote, committed, purged id, snapshots)
//! goes through [`encode`] / [`decode`] (or their `_at` / `_with_section`
//! forms). A value written by a newer build is refused with
//! [`FormatError::Newer`] instead of being misread: a rolled-back binary must
//! stop, not diverge.
//!
//! A value is written in the oldest format that can hold it: a cluster that
//! never federated writes only version 1, which builds from before
//! federation read, so they can run next to this one during a rolling
//! upgrade. Registering a federation peer (the first version-2 write) is
//! refused until every member reports `FEDERATION_FORMAT` (admin `Status`);
//! the cluster version is raised (the first version-3 write) only once every
//! member reports `CLUSTER_VERSION_FORMAT`.

use std::fmt::Display;

use openraft::{AnyError, ErrorSubject, ErrorVerb, StorageIOError};
use serde::Serialize;
use serde::de::DeserializeOwned;

use crate::types::{NodeId, StorageError};

/// The layout of values holding nothing federation added; what builds from
/// before federation read and write.
pub const BASE_FORMAT: u8 = 1;
/// Log entries with federation commands, snapshots with federation peers.
pub const FEDERATION_FORMAT: u8 = 2;
/// Log entries with `SetClusterVersion` / `Once`, snapshots of a state past
/// the base cluster version.
pub const CLUSTER_VERSION_FORMAT: u8 = 3;
/// Log entries with the commands of a restore in parts, snapshots of a
/// state with a restore under way (only at cluster version 3, which every
/// member applies).
pub const PARTED_RESTORE_FORMAT: u8 = 4;
/// Log entries with `SetIncarnation`, snapshots of a state with members'
/// incarnations (only at cluster version 4, which every member applies).
pub const INCARNATION_FORMAT: u8 = 5;
/// Snapshots of a state whose send answers are kept per sender, and log
/// entries with a restore part holding such answers (only at cluster
/// version 5, which every member applies).
pub const SENDER_WINDOWS_FORMAT: u8 = 6;
/// The meta file of a snapshot whose payloads are named by place in this
/// node's payload segments. Such a snapshot never leaves the node, so no
/// gate: the version only fences a rolled-back binary off the data directory.
pub const PLACED_SNAPSHOT_FORMAT: u8 = 7;
/// The newest layout this build reads and writes.
pub const FORMAT_VERSION: u8 = PLACED_SNAPSHOT_FORMAT;

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

/// Encodes `value` in the base format.
pub fn encode<T: Serialize + ?Sized>(value: &T) -> Result<Vec<u8>, FormatError> {
    encode_at(BASE_FORMAT, value)
}

/// Encodes `value` behind `version`: the caller knows the value needs it
/// (a log entry with a federation command).
pub fn encode_at<T: Serialize + ?Sized>(version: u8, value: &T) -> Result<Vec<u8>, FormatError> {
    let mut buf = vec![version];
    bincode::serialize_into(&mut buf, value)?;
    Ok(buf)
}

/// Encodes `value` followed by `section` when there is one (behind
/// `version`, which says how to read the section); without one, exactly
/// what [`encode`] writes.
pub fn encode_with_section<T: Serialize, S: Serialize>(
    version: u8,
    value: &T,
    section: Option<&S>,
) -> Result<Vec<u8>, FormatError> {
    let mut buf = Vec::new();
    write_with_section(&mut buf, version, value, section)?;
    Ok(buf)
}

/// What [`encode_with_section`] makes, written to `out` as it is encoded
/// (a snapshot is never a buffer in memory). Does not flush.
pub fn write_with_section<W: std::io::Write, T: Serialize, S: Serialize>(
    mut out: W,
    version: u8,
    value: &T,
    section: Option<&S>,
) -> Result<(), FormatError> {
    let version = if section.is_some() { version } else { BASE_FORMAT };
    out.write_all(&[version]).map_err(|e| FormatError::Bincode(Box::new(bincode::ErrorKind::Io(e))))?;
    bincode::serialize_into(&mut out, value)?;
    if let Some(section) = section {
        bincode::serialize_into(&mut out, section)?;
    }
    Ok(())
}

/// Reads the format version byte that starts an encoded value.
pub fn read_version<R: std::io::Read>(mut input: R) -> Result<u8, FormatError> {
    let mut version = [0u8];
    input.read_exact(&mut version).map_err(|e| match e.kind() {
        std::io::ErrorKind::UnexpectedEof => FormatError::Empty,
        _ => FormatError::Bincode(Box::new(bincode::ErrorKind::Io(e))),
    })?;
    check_version(version[0])?;
    Ok(version[0])
}

/// [`decode_with_section`] from a reader, after [`read_version`] read
/// `version`. `limit` bounds what the decode may allocate in all (the
/// input's length): a damaged length field is an error, not an abort.
pub fn read_with_section<R: std::io::Read, T: DeserializeOwned, S: DeserializeOwned>(
    version: u8,
    input: R,
    limit: u64,
) -> Result<(T, Option<S>), FormatError> {
    use bincode::Options as _;
    let options = bincode::DefaultOptions::new().with_fixint_encoding().allow_trailing_bytes().with_limit(limit);
    let mut de = bincode::Deserializer::with_reader(input, options);
    let value = T::deserialize(&mut de)?;
    if version == BASE_FORMAT {
        return Ok((value, None));
    }
    Ok((value, Some(S::deserialize(&mut de)?)))
}

fn check_version(version: u8) -> Result<(), FormatError> {
    match version {
        BASE_FORMAT..=FORMAT_VERSION => Ok(()),
        v if v > FORMAT_VERSION => Err(FormatError::Newer { found: v, supported: FORMAT_VERSION }),
        v => Err(FormatError::Unknown { found: v }),
    }
}

/// Decodes a value written by [`encode`] or [`encode_at`], refusing versions
/// this build does not know.
pub fn decode<T: DeserializeOwned>(bytes: &[u8]) -> Result<T, FormatError> {
    let (&version, body) = bytes.split_first().ok_or(FormatError::Empty)?;
    check_version(version)?;
    Ok(bincode::deserialize(body)?)
}

/// The format version byte of an encoded value.
pub fn version_of(bytes: &[u8]) -> Result<u8, FormatError> {
    let &version = bytes.first().ok_or(FormatError::Empty)?;
    check_version(version)?;
    Ok(version)
}

/// Decodes what [`encode_with_section`] wrote: the value, and the section
/// if the writer had one (the caller picks `S` by [`version_of`]).
pub fn decode_with_section<T: DeserializeOwned, S: DeserializeOwned>(
    bytes: &[u8],
) -> Result<(T, Option<S>), FormatError> {
    let version = version_of(bytes)?;
    read_with_section(version, &bytes[1..], bytes.len() as u64)
}

/// The format a log entry is written in: federation commands need version
/// 2, cluster-version commands version 3, a restore's commands version 4.
pub fn entry_format(entry: &openraft::Entry<crate::types::TypeConfig>) -> u8 {
    match &entry.payload {
        openraft::EntryPayload::Normal(batch) => commands_format(&batch.commands),
        _ => BASE_FORMAT,
    }
}

/// The oldest format that holds all of `commands`.
pub fn commands_format<'a>(commands: impl IntoIterator<Item = &'a router_core::Command>) -> u8 {
    commands.into_iter().fold(BASE_FORMAT, |format, c| {
        let needed = if c.needs_sender_windows_format() {
            SENDER_WINDOWS_FORMAT
        } else if c.needs_incarnation_format() {
            INCARNATION_FORMAT
        } else if c.needs_parted_restore_format() {
            PARTED_RESTORE_FORMAT
        } else if c.needs_cluster_version_format() {
            CLUSTER_VERSION_FORMAT
        } else if c.is_federation() {
            FEDERATION_FORMAT
        } else {
            BASE_FORMAT
        };
        format.max(needed)
    })
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
