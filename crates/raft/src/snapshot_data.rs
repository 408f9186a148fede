//! [`SnapshotData`]: what openraft moves when it sends, receives and
//! installs a snapshot. A file under the snapshot directory for a node on
//! disk (`snapshot_files`), an in-memory buffer for the simulation's
//! `MemBackend` layout, or a file made on first read: a snapshot this node
//! built names its payloads by place, and the bytes form a peer needs is
//! written only when openraft reads it to send it (openraft also asks for
//! the current snapshot at start and after every build, for its meta only).
//! Depends on nothing else in the crate: the type configuration (`types`)
//! names it.

use std::future::Future as _;
use std::io;
use std::path::PathBuf;
use std::pin::Pin;
use std::task::{Context, Poll};

use tokio::io::{AsyncRead, AsyncSeek, AsyncWrite, ReadBuf};

/// A snapshot's bytes as openraft reads, writes and seeks them.
#[derive(Debug)]
pub enum SnapshotData {
    Memory(io::Cursor<Vec<u8>>),
    /// A file under the snapshot directory, and its path.
    File(tokio::fs::File, PathBuf),
    /// Bytes written to a file on first read or seek. Read-only.
    Deferred(Deferred),
}

type Make = Box<dyn FnOnce() -> io::Result<std::fs::File> + Send + 'static>;

/// A file made by a blocking task the first time it is read or sought.
pub struct Deferred {
    stage: Stage,
    /// A seek asked for before the file existed, applied once it does.
    seek: Option<io::SeekFrom>,
}

enum Stage {
    Waiting(Make),
    /// Making it failed; every later read answers the same.
    Failed(io::ErrorKind, String),
    Making(tokio::task::JoinHandle<io::Result<std::fs::File>>),
    Ready(tokio::fs::File),
}

impl std::fmt::Debug for Deferred {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let stage = match &self.stage {
            Stage::Waiting(_) => "waiting",
            Stage::Failed(..) => "failed",
            Stage::Making(_) => "making",
            Stage::Ready(_) => "ready",
        };
        f.debug_struct("Deferred").field("stage", &stage).finish()
    }
}

impl Deferred {
    /// The file, once `make` (run on a blocking thread) has made it.
    fn poll_file(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<&mut tokio::fs::File>> {
        std::task::ready!(self.poll_made(cx))?;
        match &mut self.stage {
            Stage::Ready(file) => Poll::Ready(Ok(file)),
            _ => unreachable!("poll_made answers ready only once the file is"),
        }
    }

    fn poll_made(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        // Every chunk read comes here: the made file answers at once.
        if matches!(self.stage, Stage::Ready(_)) {
            return Poll::Ready(Ok(()));
        }
        loop {
            match std::mem::replace(&mut self.stage, Stage::Failed(io::ErrorKind::Other, "busy".into())) {
                Stage::Waiting(make) => self.stage = Stage::Making(tokio::task::spawn_blocking(make)),
                Stage::Making(mut task) => match Pin::new(&mut task).poll(cx) {
                    Poll::Pending => {
                        self.stage = Stage::Making(task);
                        return Poll::Pending;
                    }
                    Poll::Ready(joined) => {
                        let made = joined
                            .map_err(|e| io::Error::other(format!("making the snapshot file: {e}")))
                            .and_then(|made| made)
                            .and_then(|file| {
                                let mut file = tokio::fs::File::from_std(file);
                                if let Some(seek) = self.seek.take() {
                                    Pin::new(&mut file).start_seek(seek)?;
                                }
                                Ok(file)
                            });
                        match made {
                            Ok(file) => self.stage = Stage::Ready(file),
                            Err(e) => {
                                self.stage = Stage::Failed(e.kind(), e.to_string());
                                return Poll::Ready(Err(e));
                            }
                        }
                    }
                },
                Stage::Failed(kind, why) => {
                    let e = io::Error::new(kind, why.clone());
                    self.stage = Stage::Failed(kind, why);
                    return Poll::Ready(Err(e));
                }
                ready @ Stage::Ready(_) => {
                    self.stage = ready;
                    return Poll::Ready(Ok(()));
                }
            }
        }
    }
}

impl SnapshotData {
    pub fn memory(bytes: Vec<u8>) -> Self {
        SnapshotData::Memory(io::Cursor::new(bytes))
    }

    /// Data that `make` writes to a file (and answers it opened, at its
    /// start) the first time it is read or sought.
    pub fn deferred(make: impl FnOnce() -> io::Result<std::fs::File> + Send + 'static) -> Self {
        SnapshotData::Deferred(Deferred { stage: Stage::Waiting(Box::new(make)), seek: None })
    }
}

fn read_only() -> io::Error {
    io::Error::new(io::ErrorKind::PermissionDenied, "a snapshot this node built is read-only")
}

impl AsyncRead for SnapshotData {
    fn poll_read(self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            SnapshotData::Memory(c) => Pin::new(c).poll_read(cx, buf),
            SnapshotData::File(f, _) => Pin::new(f).poll_read(cx, buf),
            SnapshotData::Deferred(d) => match d.poll_file(cx) {
                Poll::Ready(Ok(file)) => Pin::new(file).poll_read(cx, buf),
                Poll::Ready(Err(e)) => Poll::Ready(Err(e)),
                Poll::Pending => Poll::Pending,
            },
        }
    }
}

impl AsyncWrite for SnapshotData {
    fn poll_write(self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &[u8]) -> Poll<io::Result<usize>> {
        match self.get_mut() {
            SnapshotData::Memory(c) => Pin::new(c).poll_write(cx, buf),
            SnapshotData::File(f, _) => Pin::new(f).poll_write(cx, buf),
            SnapshotData::Deferred(_) => Poll::Ready(Err(read_only())),
        }
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            SnapshotData::Memory(c) => Pin::new(c).poll_flush(cx),
            SnapshotData::File(f, _) => Pin::new(f).poll_flush(cx),
            SnapshotData::Deferred(_) => Poll::Ready(Ok(())),
        }
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            SnapshotData::Memory(c) => Pin::new(c).poll_shutdown(cx),
            SnapshotData::File(f, _) => Pin::new(f).poll_shutdown(cx),
            SnapshotData::Deferred(_) => Poll::Ready(Ok(())),
        }
    }
}

impl AsyncSeek for SnapshotData {
    fn start_seek(self: Pin<&mut Self>, position: io::SeekFrom) -> io::Result<()> {
        match self.get_mut() {
            SnapshotData::Memory(c) => Pin::new(c).start_seek(position),
            SnapshotData::File(f, _) => Pin::new(f).start_seek(position),
            SnapshotData::Deferred(d) => match &mut d.stage {
                Stage::Ready(file) => Pin::new(file).start_seek(position),
                _ => {
                    d.seek = Some(position);
                    Ok(())
                }
            },
        }
    }

    fn poll_complete(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<u64>> {
        match self.get_mut() {
            SnapshotData::Memory(c) => Pin::new(c).poll_complete(cx),
            SnapshotData::File(f, _) => Pin::new(f).poll_complete(cx),
            SnapshotData::Deferred(d) => match d.poll_file(cx) {
                Poll::Ready(Ok(file)) => Pin::new(file).poll_complete(cx),
                Poll::Ready(Err(e)) => Poll::Ready(Err(e)),
                Poll::Pending => Poll::Pending,
            },
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;
    use std::sync::atomic::{AtomicUsize, Ordering};
    use tokio::io::{AsyncReadExt as _, AsyncSeekExt as _};

    #[tokio::test]
    async fn deferred_data_is_made_once_on_first_use_and_honours_an_early_seek() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("made");
        let made = Arc::new(AtomicUsize::new(0));
        let counter = made.clone();
        let mut data = SnapshotData::deferred(move || {
            counter.fetch_add(1, Ordering::SeqCst);
            std::fs::write(&path, b"0123456789")?;
            std::fs::File::open(&path)
        });
        assert_eq!(made.load(Ordering::SeqCst), 0, "nothing is made before a read");
        assert_eq!(data.seek(io::SeekFrom::Start(4)).await.unwrap(), 4);
        let mut rest = String::new();
        data.read_to_string(&mut rest).await.unwrap();
        assert_eq!(rest, "456789");
        data.seek(io::SeekFrom::Start(0)).await.unwrap();
        let mut all = String::new();
        data.read_to_string(&mut all).await.unwrap();
        assert_eq!(all, "0123456789");
        assert_eq!(made.load(Ordering::SeqCst), 1);
    }

    #[tokio::test]
    async fn a_deferred_file_that_cannot_be_made_fails_its_reads() {
        let mut data = SnapshotData::deferred(|| Err(io::Error::other("disk gone")));
        let mut buf = Vec::new();
        let err = data.read_to_end(&mut buf).await.unwrap_err();
        assert!(err.to_string().contains("disk gone"), "{err}");
        let again = data.read_to_end(&mut buf).await.unwrap_err();
        assert!(again.to_string().contains("disk gone"), "and keeps failing with its cause: {again}");
    }
}
