//! The backup file format. Since version 3 a backup is the state as a
//! stream of items (`router_core::StateItem`) in checksummed frames, which a
//! restore loads as a sequence of bounded log entries:
//!
//! ```text
//!  "IRBK" [3] [applied index u64 BE]
//!  'F' [len u32 BE] [crc32 u32 BE] [bincode(Vec<StateItem>), about FRAME_BYTES]    one per frame
//!  'E' [frames u64 BE] [items u64 BE] [SHA-256 of every byte before it]           the end
//! ```
//!
//! Versions 1 and 2 (older builds) are the bincode-encoded `State` after the
//! same header, in version 2 followed by the federation peers; they are still
//! read. A backup is a consistent state: one node's replica at one applied index.

use router_core::{Federation, State, StateItem};
use sha2::Digest as _;
use std::io::{Read, Write};

const MAGIC: &[u8; 4] = b"IRBK";
const HEADER_BYTES: usize = 13;
/// Without federation peers (older builds).
const BASE_BACKUP_FORMAT: u8 = 1;
/// The state and its federation section (older builds).
const FEDERATION_BACKUP_FORMAT: u8 = 2;
/// Items in checksummed frames.
pub const BACKUP_FORMAT_VERSION: u8 = 3;
/// What a frame holds about: one restore part, one log entry.
pub const FRAME_BYTES: usize = 1 << 20;
/// A frame read larger than this is damage, not data (one item may pass
/// `FRAME_BYTES`, but no item the state holds comes near this).
const MAX_FRAME_BYTES: u32 = 64 << 20;
const FRAME_TAG: u8 = b'F';
const END_TAG: u8 = b'E';
const DIGEST_BYTES: usize = 32;

#[derive(Debug, thiserror::Error)]
pub enum BackupError {
    #[error("not an Interop Router backup (bad magic)")]
    BadMagic,
    #[error("backup format version {found} is newer than this build reads ({supported}); use a newer routerd")]
    NewerVersion { found: u8, supported: u8 },
    #[error("backup format version {0} is unknown")]
    UnknownVersion(u8),
    #[error("backup is truncated")]
    Truncated,
    #[error("backup is corrupt: {0}")]
    Corrupt(#[from] bincode::Error),
    #[error("backup is damaged: frame {frame} {why}")]
    BadFrame { frame: u64, why: String },
    #[error("backup is damaged: {0}")]
    BadEnd(String),
    #[error("backup I/O: {0}")]
    Io(#[from] std::io::Error),
}

/// A backup of `state` in memory.
#[cfg(test)]
fn encode(state: &State, applied_index: u64) -> Result<Vec<u8>, BackupError> {
    let mut out = Vec::new();
    write(&mut out, state.clone(), applied_index)?;
    Ok(out)
}

/// Writes a backup of `state` to `out` as it is encoded: queued ciphertexts
/// are read back from the payload files one item at a time, so a backup
/// never sits in memory whole. Does not flush.
pub fn write<W: Write>(out: W, state: State, applied_index: u64) -> Result<(), BackupError> {
    write_frames(out, state, applied_index, FRAME_BYTES)
}

fn write_frames<W: Write>(out: W, state: State, applied_index: u64, frame_bytes: usize) -> Result<(), BackupError> {
    let mut out = Hashing { inner: out, sha: sha2::Sha256::new() };
    out.write_all(&header(BACKUP_FORMAT_VERSION, applied_index))?;
    let (mut frames, mut items) = (0u64, 0u64);
    let mut frame = Frame::new(frame_bytes);
    for item in state.into_items() {
        frame.push(&item)?;
        items += 1;
        if frame.is_full() {
            frame.write_to(&mut out)?;
            frames += 1;
        }
    }
    if !frame.is_empty() {
        frame.write_to(&mut out)?;
        frames += 1;
    }
    out.write_all(&[END_TAG])?;
    out.write_all(&frames.to_be_bytes())?;
    out.write_all(&items.to_be_bytes())?;
    let digest = out.sha.finalize();
    out.inner.write_all(&digest)?;
    Ok(())
}

fn header(version: u8, applied_index: u64) -> Vec<u8> {
    let mut header = MAGIC.to_vec();
    header.push(version);
    header.extend_from_slice(&applied_index.to_be_bytes());
    header
}

/// Items encoded as a bincode `Vec` (u64 count, then the items), the count
/// filled in when the frame is written.
struct Frame {
    buf: Vec<u8>,
    count: u64,
    target: usize,
}

impl Frame {
    fn new(target: usize) -> Self {
        let mut buf = Vec::with_capacity(target + (64 << 10));
        buf.extend_from_slice(&[0; 8]);
        Frame { buf, count: 0, target }
    }

    fn push(&mut self, item: &StateItem) -> Result<(), BackupError> {
        bincode::serialize_into(&mut self.buf, item)?;
        self.count += 1;
        Ok(())
    }

    fn is_full(&self) -> bool {
        self.buf.len() >= self.target
    }

    fn is_empty(&self) -> bool {
        self.count == 0
    }

    fn write_to<W: Write>(&mut self, out: &mut W) -> Result<(), BackupError> {
        self.buf[..8].copy_from_slice(&self.count.to_le_bytes());
        let len = u32::try_from(self.buf.len()).map_err(|_| BackupError::BadEnd("an item over 4 GiB".into()))?;
        out.write_all(&[FRAME_TAG])?;
        out.write_all(&len.to_be_bytes())?;
        out.write_all(&crc32fast::hash(&self.buf).to_be_bytes())?;
        out.write_all(&self.buf)?;
        self.buf.truncate(8);
        self.count = 0;
        Ok(())
    }
}

/// A writer (or reader) that hashes what passes through it.
struct Hashing<T> {
    inner: T,
    sha: sha2::Sha256,
}

impl<W: Write> Write for Hashing<W> {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        let n = self.inner.write(buf)?;
        self.sha.update(&buf[..n]);
        Ok(n)
    }
    fn flush(&mut self) -> std::io::Result<()> {
        self.inner.flush()
    }
}

impl<R: Read> Read for Hashing<R> {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        let n = self.inner.read(buf)?;
        self.sha.update(&buf[..n]);
        Ok(n)
    }
}

/// Reads a backup's header; answers its format version and applied index.
fn read_header<R: Read>(input: &mut R) -> Result<(u8, u64), BackupError> {
    let mut header = [0u8; HEADER_BYTES];
    let mut filled = 0;
    while filled < HEADER_BYTES {
        match input.read(&mut header[filled..])? {
            0 => break,
            n => filled += n,
        }
    }
    if filled < HEADER_BYTES {
        let magic_so_far = MAGIC[..filled.min(4)] == header[..filled.min(4)];
        return Err(if magic_so_far { BackupError::Truncated } else { BackupError::BadMagic });
    }
    if &header[..4] != MAGIC {
        return Err(BackupError::BadMagic);
    }
    let version = header[4];
    if version > BACKUP_FORMAT_VERSION {
        return Err(BackupError::NewerVersion { found: version, supported: BACKUP_FORMAT_VERSION });
    }
    if version < BASE_BACKUP_FORMAT {
        return Err(BackupError::UnknownVersion(version));
    }
    Ok((version, u64::from_be_bytes(header[5..].try_into().expect("8 bytes"))))
}

/// A backup opened for reading, frame by frame (format 3), or an older
/// backup whose state must be decoded whole.
pub enum Opened<R: Read> {
    Frames(FrameReader<R>),
    Legacy { version: u8, applied_index: u64, input: R },
}

pub fn open<R: Read>(mut input: R) -> Result<Opened<R>, BackupError> {
    let mut hashing = Hashing { inner: input, sha: sha2::Sha256::new() };
    let (version, applied_index) = read_header(&mut hashing)?;
    if version < BACKUP_FORMAT_VERSION {
        input = hashing.inner;
        return Ok(Opened::Legacy { version, applied_index, input });
    }
    Ok(Opened::Frames(FrameReader { input: hashing, applied_index, frames: 0, items: 0, ended: false }))
}

/// Reads the frames of a format-3 backup, checking each frame's CRC as it
/// goes and the digest over the whole file at the end.
pub struct FrameReader<R: Read> {
    input: Hashing<R>,
    pub applied_index: u64,
    frames: u64,
    items: u64,
    ended: bool,
}

impl<R: Read> FrameReader<R> {
    /// The next frame's items; `None` once the end record and the digest
    /// over the whole backup checked out.
    pub fn next_frame(&mut self) -> Result<Option<Vec<StateItem>>, BackupError> {
        if self.ended {
            return Ok(None);
        }
        let frame = self.frames;
        let bad = |why: &str| BackupError::BadFrame { frame, why: why.into() };
        let mut tag = [0u8];
        read_full(&mut self.input, &mut tag)?;
        match tag[0] {
            FRAME_TAG => {}
            END_TAG => return self.read_end().map(|()| None),
            _ => return Err(bad("does not start with a frame tag")),
        }
        let mut head = [0u8; 8];
        read_full(&mut self.input, &mut head)?;
        let len = u32::from_be_bytes(head[..4].try_into().expect("4 bytes"));
        let crc = u32::from_be_bytes(head[4..].try_into().expect("4 bytes"));
        if len > MAX_FRAME_BYTES {
            return Err(bad(&format!("claims {len} bytes, more than a frame holds ({MAX_FRAME_BYTES})")));
        }
        let mut data = vec![0u8; len as usize];
        read_full(&mut self.input, &mut data)?;
        if crc32fast::hash(&data) != crc {
            return Err(bad("fails its checksum"));
        }
        use bincode::Options as _;
        let options = bincode::DefaultOptions::new().with_fixint_encoding().with_limit(u64::from(len));
        let items: Vec<StateItem> = options.deserialize(&data).map_err(|e| bad(&format!("does not decode: {e}")))?;
        self.frames += 1;
        self.items += items.len() as u64;
        Ok(Some(items))
    }

    fn read_end(&mut self) -> Result<(), BackupError> {
        let mut counts = [0u8; 16];
        read_full(&mut self.input, &mut counts)?;
        let computed = self.input.sha.clone().finalize();
        let mut digest = [0u8; DIGEST_BYTES];
        read_full(&mut self.input.inner, &mut digest)?;
        let frames = u64::from_be_bytes(counts[..8].try_into().expect("8 bytes"));
        let items = u64::from_be_bytes(counts[8..].try_into().expect("8 bytes"));
        if (frames, items) != (self.frames, self.items) {
            return Err(BackupError::BadEnd(format!(
                "the end record counts {frames} frames and {items} items, the file holds {} and {}",
                self.frames, self.items
            )));
        }
        if computed.as_slice() != digest {
            return Err(BackupError::BadEnd("the SHA-256 over the file does not match its end record".into()));
        }
        let mut more = [0u8];
        if self.input.inner.read(&mut more)? != 0 {
            return Err(BackupError::BadEnd("bytes follow the end record".into()));
        }
        self.ended = true;
        Ok(())
    }
}

fn read_full<R: Read>(input: &mut R, buf: &mut [u8]) -> Result<(), BackupError> {
    input.read_exact(buf).map_err(|e| match e.kind() {
        std::io::ErrorKind::UnexpectedEof => BackupError::Truncated,
        _ => BackupError::Io(e),
    })
}

/// The state of an older backup (format 1 or 2), decoded as it is read;
/// `limit` bounds what the decode may allocate (the input's length).
pub fn read_legacy<R: Read>(version: u8, input: R, limit: u64) -> Result<State, BackupError> {
    use bincode::Options as _;
    use serde::Deserialize as _;
    let options = bincode::DefaultOptions::new().with_fixint_encoding().allow_trailing_bytes().with_limit(limit);
    let mut de = bincode::Deserializer::with_reader(input, options);
    let mut state = State::deserialize(&mut de)?;
    if version == FEDERATION_BACKUP_FORMAT {
        state.federation = Federation::deserialize(&mut de)?;
    }
    Ok(state)
}

/// A file in `dir` that is gone from the directory at once: nothing to
/// clean up whatever happens next. Blocking.
pub fn unlinked_file(dir: &std::path::Path, purpose: &str) -> std::io::Result<std::fs::File> {
    static NEXT: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
    let n = NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    let path = dir.join(format!("{purpose}-{}-{n}.tmp", std::process::id()));
    let file = std::fs::OpenOptions::new().read(true).write(true).create_new(true).open(&path)?;
    std::fs::remove_file(&path)?;
    Ok(file)
}

/// Writes a backup of `state` to an unlinked file in `dir` and answers it,
/// positioned at its start, with its length. Blocking: call it off the runtime.
pub fn write_to_unlinked_file(
    dir: &std::path::Path,
    state: State,
    applied_index: u64,
) -> std::io::Result<(std::fs::File, u64)> {
    use std::io::{Seek, SeekFrom};
    let mut file = unlinked_file(dir, "backup")?;
    let mut out = std::io::BufWriter::with_capacity(1 << 20, &mut file);
    write(&mut out, state, applied_index).map_err(std::io::Error::other)?;
    out.into_inner().map_err(|e| e.into_error())?;
    let len = file.seek(SeekFrom::End(0))?;
    file.seek(SeekFrom::Start(0))?;
    Ok((file, len))
}

/// Decodes a whole backup held in memory: its state and applied index.
#[cfg(test)]
fn decode(bytes: &[u8]) -> Result<(State, u64), BackupError> {
    match open(bytes)? {
        Opened::Legacy { version, applied_index, input } => {
            Ok((read_legacy(version, input, bytes.len() as u64)?, applied_index))
        }
        Opened::Frames(mut reader) => {
            let mut all = Vec::new();
            while let Some(items) = reader.next_frame()? {
                all.extend(items);
            }
            Ok((State::from_items(all), reader.applied_index))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use router_core::{Batch, Command, ProviderId, UserId};

    /// A state with a few hundred items: users and their mailboxes.
    fn state_with_users(n: usize) -> State {
        let mut state = State::new(router_core::Limits::default());
        let mut commands = vec![Command::AddProvider { provider: ProviderId::new("alpha") }];
        for u in 0..n {
            commands
                .push(Command::RegisterUser { provider: ProviderId::new("alpha"), user: UserId::new(format!("u{u}")) });
        }
        state.apply_batch(&Batch { stamp_ms: 5, commands });
        state
    }

    fn frames_of(bytes: &[u8]) -> Result<u64, BackupError> {
        let Opened::Frames(mut reader) = open(bytes)? else { panic!("format 3") };
        let mut frames = 0;
        while reader.next_frame()?.is_some() {
            frames += 1;
        }
        Ok(frames)
    }

    #[test]
    fn round_trip_in_several_frames() {
        let state = state_with_users(300);
        let mut bytes = Vec::new();
        write_frames(&mut bytes, state.clone(), 42, 1_000).unwrap();
        assert_eq!(bytes[4], BACKUP_FORMAT_VERSION);
        assert!(frames_of(&bytes).unwrap() > 3, "small frames: several of them");
        assert_eq!(decode(&bytes).unwrap(), (state.clone(), 42));
        assert_eq!(decode(&encode(&state, 7).unwrap()).unwrap(), (state, 7));
    }

    #[test]
    fn truncated_altered_and_foreign_backups_are_refused() {
        let mut bytes = Vec::new();
        write_frames(&mut bytes, state_with_users(300), 42, 1_000).unwrap();
        assert!(matches!(decode(b"nope-nope-nope"), Err(BackupError::BadMagic)));
        assert!(matches!(decode(&bytes[..8]), Err(BackupError::Truncated)));
        for cut in [bytes.len() - 1, bytes.len() - 40, bytes.len() / 2, HEADER_BYTES + 3] {
            assert!(matches!(frames_of(&bytes[..cut]), Err(BackupError::Truncated)), "cut at {cut}");
        }
        // A flipped byte inside the first frame's items fails its checksum.
        let mut flipped = bytes.clone();
        flipped[HEADER_BYTES + 20] ^= 0x40;
        let err = frames_of(&flipped).unwrap_err();
        assert!(matches!(err, BackupError::BadFrame { frame: 0, .. }), "{err}");
        assert!(err.to_string().contains("checksum"), "{err}");
        // An altered frame with its checksum recomputed still fails the digest.
        let mut forged = bytes.clone();
        let len = u32::from_be_bytes(forged[HEADER_BYTES + 1..HEADER_BYTES + 5].try_into().unwrap()) as usize;
        let data = HEADER_BYTES + 9;
        let user = forged[data..data + len].windows(2).position(|w| w == b"u1").unwrap() + data;
        forged[user + 1] = b'9';
        let crc = crc32fast::hash(&forged[data..data + len]);
        forged[HEADER_BYTES + 5..HEADER_BYTES + 9].copy_from_slice(&crc.to_be_bytes());
        let err = frames_of(&forged).unwrap_err();
        assert!(matches!(err, BackupError::BadEnd(_)), "{err}");
        assert!(err.to_string().contains("SHA-256"), "{err}");
        // Bytes after the end record.
        let mut longer = bytes.clone();
        longer.push(0);
        assert!(matches!(frames_of(&longer), Err(BackupError::BadEnd(_))));
        let mut newer = bytes.clone();
        newer[4] = BACKUP_FORMAT_VERSION + 1;
        assert!(matches!(decode(&newer), Err(BackupError::NewerVersion { .. })));
        let mut zero = bytes;
        zero[4] = 0;
        assert!(matches!(decode(&zero), Err(BackupError::UnknownVersion(0))));
    }

    #[test]
    fn backups_of_older_builds_are_read() {
        let state = state_with_users(3);
        let mut v1 = header(BASE_BACKUP_FORMAT, 9);
        bincode::serialize_into(&mut v1, &state).unwrap();
        assert_eq!(decode(&v1).unwrap(), (state.clone(), 9));
        let mut federated = state.clone();
        federated.apply_batch(&Batch {
            stamp_ms: 6,
            commands: vec![Command::RegisterPeer {
                peer: router_core::ClusterId::new("eu-hub"),
                endpoints: vec!["127.0.0.1:9".into()],
                ca_pem: "CA".into(),
                providers: vec![ProviderId::new("beta")],
                max_queue: 0,
            }],
        });
        let mut v2 = header(FEDERATION_BACKUP_FORMAT, 10);
        bincode::serialize_into(&mut v2, &federated).unwrap();
        bincode::serialize_into(&mut v2, &federated.federation).unwrap();
        assert_eq!(decode(&v2).unwrap(), (federated.clone(), 10));
        // And this build's format keeps the peers too.
        assert_eq!(decode(&encode(&federated, 11).unwrap()).unwrap(), (federated, 11));
        assert!(matches!(decode(&v1[..v1.len() - 3]), Err(BackupError::Corrupt(_))));
    }
}
