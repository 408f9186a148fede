//! [`Blob`]: an opaque ciphertext the router stores and hands back unread,
//! either held in memory or kept by a [`BlobSource`] (a payload file of the
//! node's storage) and read back on demand.
//!
//! The core never does I/O itself: a stored blob is a handle (source,
//! offset, length) that a storage layer made. Whoever needs the bytes (a
//! receive stream, a snapshot encoder) asks the handle for them.
//!
//! On the wire, in log entries, snapshots and backups a blob is encoded as
//! plain bytes, whichever way it is held: a blob's place is a property of one
//! replica, not of the replicated state. While a [`BlobSink`] is installed on
//! the decoding thread ([`decode_with_sink`]), decoded blobs of at least
//! [`BlobSink::min_len`] bytes go straight to the sink instead of to memory,
//! so a large snapshot decodes with memory bounded by its metadata.
//!
//! A node's own snapshot file names its stored blobs by place instead
//! ([`encode_with_places`], [`decode_with_places`]): the source's number
//! (a payload segment), offset and length, so a snapshot does not copy the
//! mail the node already keeps in files. That form never leaves the node.

use bytes::Bytes;
use serde::{Deserialize, Deserializer, Serialize, Serializer};
use std::cell::RefCell;
use std::sync::Arc;

/// Where stored blobs are read back from.
pub trait BlobSource: Send + Sync + std::fmt::Debug + 'static {
    /// The `len` bytes at `offset`, checked (a damaged record is an error).
    fn read(&self, offset: u64, len: u32) -> std::io::Result<Bytes>;

    /// The number a node's own snapshot names this source by, or `None`:
    /// blobs of such a source are written out as bytes there too.
    fn place(&self) -> Option<u64> {
        None
    }

    /// Makes what was written to this source durable. Called only on
    /// sources that name a place, before a snapshot that names them counts.
    fn sync(&self) -> std::io::Result<()> {
        Ok(())
    }
}

/// Finds the sources a node's own snapshot names by place.
pub trait BlobPlaces: Send + Sync + 'static {
    /// The source numbered `place`; an error if it is gone.
    fn source(&self, place: u64) -> std::io::Result<Arc<dyn BlobSource>>;
}

/// The sources a snapshot names, by place: what it keeps alive.
pub type PlacedSources = std::collections::BTreeMap<u64, Arc<dyn BlobSource>>;

impl BlobPlaces for PlacedSources {
    fn source(&self, place: u64) -> std::io::Result<Arc<dyn BlobSource>> {
        self.get(&place).cloned().ok_or_else(|| {
            std::io::Error::new(std::io::ErrorKind::NotFound, format!("no payload source numbered {place}"))
        })
    }
}

/// A blob as a node's own snapshot writes it.
#[derive(Serialize, Deserialize)]
enum Placed {
    Bytes(Bytes),
    At { place: u64, offset: u64, len: u32 },
}

/// Where a decoder puts the blobs it reads (see [`decode_with_sink`]).
pub trait BlobSink: Send + Sync + 'static {
    /// Blobs shorter than this stay in memory: a handle would not be smaller.
    fn min_len(&self) -> usize;
    /// Stores `bytes` and answers the handle that reads them back. On an
    /// error the decoder keeps the blob in memory; the sink counts it.
    fn store(&self, bytes: &[u8]) -> std::io::Result<Blob>;
}

#[derive(Clone)]
pub struct Blob(Repr);

#[derive(Clone)]
enum Repr {
    Inline(Bytes),
    Stored { source: Arc<dyn BlobSource>, offset: u64, len: u32 },
}

impl Blob {
    pub const fn from_static(bytes: &'static [u8]) -> Self {
        Blob(Repr::Inline(Bytes::from_static(bytes)))
    }

    /// A handle on `len` bytes at `offset` of `source`.
    pub fn stored(source: Arc<dyn BlobSource>, offset: u64, len: u32) -> Self {
        Blob(Repr::Stored { source, offset, len })
    }

    pub fn len(&self) -> usize {
        match &self.0 {
            Repr::Inline(b) => b.len(),
            Repr::Stored { len, .. } => *len as usize,
        }
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The bytes held in memory, or `None` for a stored blob.
    pub fn inline(&self) -> Option<&Bytes> {
        match &self.0 {
            Repr::Inline(b) => Some(b),
            Repr::Stored { .. } => None,
        }
    }

    /// The blob's bytes: shared for an in-memory blob, read back for a stored one.
    pub fn bytes(&self) -> std::io::Result<Bytes> {
        match &self.0 {
            Repr::Inline(b) => Ok(b.clone()),
            Repr::Stored { source, offset, len } => source.read(*offset, *len),
        }
    }
}

impl From<Bytes> for Blob {
    fn from(b: Bytes) -> Self {
        Blob(Repr::Inline(b))
    }
}

impl From<Vec<u8>> for Blob {
    fn from(v: Vec<u8>) -> Self {
        Blob(Repr::Inline(Bytes::from(v)))
    }
}

impl From<&'static str> for Blob {
    fn from(s: &'static str) -> Self {
        Blob::from_static(s.as_bytes())
    }
}

impl From<String> for Blob {
    fn from(s: String) -> Self {
        Blob::from(s.into_bytes())
    }
}

/// Compares contents. A stored blob that cannot be read back equals only
/// its own handle: equality is for tests and checks, which must not pass on
/// a payload that is gone.
impl PartialEq for Blob {
    fn eq(&self, other: &Self) -> bool {
        if let (Some(a), Some(b)) = (self.inline(), other.inline()) {
            return a == b;
        }
        if let (Repr::Stored { source: a, offset: x, len: m }, Repr::Stored { source: b, offset: y, len: n }) =
            (&self.0, &other.0)
            && Arc::ptr_eq(a, b)
            && (x, m) == (y, n)
        {
            return true;
        }
        self.len() == other.len()
            && match (self.bytes(), other.bytes()) {
                (Ok(a), Ok(b)) => a == b,
                _ => false,
            }
    }
}

impl Eq for Blob {}

/// An in-memory blob shows as its bytes (the simulation compares replicas by
/// this rendering); a stored one by its place and length.
impl std::fmt::Debug for Blob {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match &self.0 {
            Repr::Inline(b) => b.fmt(f),
            Repr::Stored { source, offset, len } => write!(f, "Blob({len} bytes at {offset} of {source:?})"),
        }
    }
}

impl Serialize for Blob {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        if let Some(placed) = PLACES_NAMED.with(|named| named.borrow_mut().as_mut().map(|named| self.placed(named))) {
            return placed
                .map_err(|e| serde::ser::Error::custom(format!("read stored blob: {e}")))?
                .serialize(serializer);
        }
        match &self.0 {
            Repr::Inline(b) => serializer.serialize_bytes(b),
            Repr::Stored { .. } => {
                let bytes = self.bytes().map_err(|e| serde::ser::Error::custom(format!("read stored blob: {e}")))?;
                serializer.serialize_bytes(&bytes)
            }
        }
    }
}

impl Blob {
    /// This blob as a node's own snapshot writes it, noting its source in `named`.
    fn placed(&self, named: &mut PlacedSources) -> std::io::Result<Placed> {
        if let Repr::Stored { source, offset, len } = &self.0
            && let Some(place) = source.place()
        {
            named.entry(place).or_insert_with(|| source.clone());
            return Ok(Placed::At { place, offset: *offset, len: *len });
        }
        Ok(Placed::Bytes(self.bytes()?))
    }
}

impl<'de> Deserialize<'de> for Blob {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        if let Some(places) = PLACES.with(|p| p.borrow().clone()) {
            return match Placed::deserialize(deserializer)? {
                Placed::Bytes(bytes) => Ok(Blob::from(bytes)),
                Placed::At { place, offset, len } => places
                    .source(place)
                    .map(|source| Blob::stored(source, offset, len))
                    .map_err(|e| serde::de::Error::custom(format!("stored blob: {e}"))),
            };
        }
        let bytes = Bytes::deserialize(deserializer)?;
        // A sink that cannot store (disk full) leaves the blob in memory:
        // the decode must not fail for want of a place to keep bytes it has.
        SINK.with(|sink| match sink.borrow().as_ref() {
            Some(sink) if bytes.len() >= sink.min_len() => Ok(sink.store(&bytes).unwrap_or_else(|_| Blob::from(bytes))),
            _ => Ok(Blob::from(bytes)),
        })
    }
}

thread_local! {
    static SINK: RefCell<Option<Arc<dyn BlobSink>>> = const { RefCell::new(None) };
    /// Set while a node's own snapshot is encoded: the sources it named so far.
    static PLACES_NAMED: RefCell<Option<PlacedSources>> = const { RefCell::new(None) };
    /// Set while a node's own snapshot is decoded.
    static PLACES: RefCell<Option<Arc<dyn BlobPlaces>>> = const { RefCell::new(None) };
}

/// Runs `run` with `value` in this thread's `slot`, then puts back what
/// was there before (also when `run` panics); answers `run`'s result and
/// what the slot held at its end.
fn with_slot<V: 'static, T>(
    slot: &'static std::thread::LocalKey<RefCell<Option<V>>>,
    value: V,
    run: impl FnOnce() -> T,
) -> (T, Option<V>) {
    struct Restore<V: 'static>(&'static std::thread::LocalKey<RefCell<Option<V>>>, Option<V>);
    impl<V: 'static> Drop for Restore<V> {
        fn drop(&mut self) {
            let previous = self.1.take();
            self.0.with(|s| *s.borrow_mut() = previous);
        }
    }
    let previous = slot.with(|s| s.borrow_mut().replace(value));
    let restore = Restore(slot, previous);
    let done = run();
    let left = slot.with(|s| s.borrow_mut().take());
    drop(restore);
    (done, left)
}

/// Runs `encode` with the stored blobs serialized on this thread written by
/// place (in-memory blobs and sources without a place as bytes); answers
/// its result and every source it named. Only [`decode_with_places`] reads
/// what it wrote.
pub fn encode_with_places<T>(encode: impl FnOnce() -> T) -> (T, PlacedSources) {
    let (done, named) = with_slot(&PLACES_NAMED, PlacedSources::new(), encode);
    (done, named.unwrap_or_default())
}

/// Runs `decode` reading blobs as [`encode_with_places`] wrote them, their
/// places found in `places`.
pub fn decode_with_places<T>(places: Arc<dyn BlobPlaces>, decode: impl FnOnce() -> T) -> T {
    with_slot(&PLACES, places, decode).0
}

/// Runs `decode` with `sink` receiving the blobs decoded on this thread.
/// The sink is removed afterwards, also when `decode` panics.
pub fn decode_with_sink<T>(sink: Arc<dyn BlobSink>, decode: impl FnOnce() -> T) -> T {
    with_slot(&SINK, sink, decode).0
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Mutex;

    /// A source over one in-memory buffer, standing in for a payload file.
    #[derive(Debug, Default)]
    struct Buffer(Mutex<Vec<u8>>);

    impl BlobSource for Buffer {
        fn read(&self, offset: u64, len: u32) -> std::io::Result<Bytes> {
            let data = self.0.lock().unwrap();
            let range = offset as usize..offset as usize + len as usize;
            data.get(range).map(Bytes::copy_from_slice).ok_or_else(|| std::io::Error::other("past the end"))
        }
    }

    struct ToBuffer(Arc<Buffer>);

    impl BlobSink for ToBuffer {
        fn min_len(&self) -> usize {
            4
        }
        fn store(&self, bytes: &[u8]) -> std::io::Result<Blob> {
            let mut data = self.0.0.lock().unwrap();
            let offset = data.len() as u64;
            data.extend_from_slice(bytes);
            Ok(Blob::stored(self.0.clone(), offset, bytes.len() as u32))
        }
    }

    #[test]
    fn a_stored_blob_encodes_exactly_like_the_same_bytes_in_memory() {
        let buffer = Arc::new(Buffer::default());
        let stored = ToBuffer(buffer.clone()).store(b"ciphertext").unwrap();
        assert!(stored.inline().is_none());
        let inline = Blob::from_static(b"ciphertext");
        assert_eq!(bincode::serialize(&stored).unwrap(), bincode::serialize(&inline).unwrap());
        assert_eq!(stored, inline);
        assert_eq!(
            bincode::serialize(&inline).unwrap(),
            bincode::serialize(&Bytes::from_static(b"ciphertext")).unwrap()
        );
    }

    #[test]
    fn decoding_with_a_sink_stores_long_blobs_and_keeps_short_ones_in_memory() {
        let encoded = bincode::serialize(&(Blob::from_static(b"long enough"), Blob::from_static(b"abc"))).unwrap();
        let buffer = Arc::new(Buffer::default());
        let (long, short): (Blob, Blob) =
            decode_with_sink(Arc::new(ToBuffer(buffer.clone())), || bincode::deserialize(&encoded).unwrap());
        assert!(long.inline().is_none(), "a blob of min_len or more goes to the sink");
        assert_eq!(long.bytes().unwrap(), Bytes::from_static(b"long enough"));
        assert_eq!(short.inline().map(|b| &b[..]), Some(&b"abc"[..]));
        assert_eq!(&buffer.0.lock().unwrap()[..], b"long enough");
        // The sink was for that decode only.
        let (after, _): (Blob, Blob) = bincode::deserialize(&encoded).unwrap();
        assert!(after.inline().is_some());
    }

    /// A buffer that names its place, as a payload segment does.
    #[derive(Debug, Default)]
    struct Numbered(Buffer);

    impl BlobSource for Numbered {
        fn read(&self, offset: u64, len: u32) -> std::io::Result<Bytes> {
            self.0.read(offset, len)
        }
        fn place(&self) -> Option<u64> {
            Some(7)
        }
    }

    #[test]
    fn placed_encoding_names_stored_blobs_and_reads_them_back_through_their_places() {
        let numbered = Arc::new(Numbered::default());
        numbered.0.0.lock().unwrap().extend_from_slice(b"xxciphertext");
        let stored = Blob::stored(numbered.clone(), 2, 10);
        let unnamed = ToBuffer(Arc::new(Buffer::default())).store(b"no place").unwrap();
        let value = (stored.clone(), Blob::from_static(b"inline"), unnamed);
        let (encoded, named) = encode_with_places(|| bincode::serialize(&value).unwrap());
        assert_eq!(named.keys().copied().collect::<Vec<_>>(), vec![7], "only the numbered source is named");
        assert!(!encoded.windows(10).any(|w| w == b"ciphertext"), "a placed blob is not copied");
        let (a, b, c): (Blob, Blob, Blob) =
            decode_with_places(Arc::new(named), || bincode::deserialize(&encoded).unwrap());
        assert!(a.inline().is_none());
        assert_eq!(a.bytes().unwrap(), Bytes::from_static(b"ciphertext"));
        assert_eq!(
            (b.inline().map(|b| &b[..]), c.inline().map(|b| &b[..])),
            (Some(&b"inline"[..]), Some(&b"no place"[..]))
        );
        // Outside the closure, blobs encode as plain bytes again.
        assert_eq!(
            bincode::serialize(&stored).unwrap(),
            bincode::serialize(&Blob::from_static(b"ciphertext")).unwrap()
        );
        let missing = decode_with_places(Arc::new(PlacedSources::new()), || bincode::deserialize::<Blob>(&encoded));
        assert!(missing.is_err(), "a place that is gone fails the decode");
    }

    struct Full;

    impl BlobSink for Full {
        fn min_len(&self) -> usize {
            1
        }
        fn store(&self, _: &[u8]) -> std::io::Result<Blob> {
            Err(std::io::Error::other("no space left on device"))
        }
    }

    #[test]
    fn a_sink_that_cannot_store_leaves_the_blob_in_memory() {
        let encoded = bincode::serialize(&Blob::from_static(b"kept")).unwrap();
        let blob: Blob = decode_with_sink(Arc::new(Full), || bincode::deserialize(&encoded).unwrap());
        assert_eq!(blob.inline().map(|b| &b[..]), Some(&b"kept"[..]));
    }

    #[test]
    fn a_stored_blob_that_cannot_be_read_back_fails_its_encode_and_equals_nothing() {
        let lost = Blob::stored(Arc::new(Buffer::default()), 0, 3);
        assert!(bincode::serialize(&lost).is_err());
        assert_ne!(lost, Blob::from_static(b"abc"));
    }
}
