//! Clock faults: a node's wall clock moved while it runs, with libfaketime
//! (Debian's `faketime` package) preloaded into `routerd`. Each node reads
//! its offset from a file of its own (`clock-<id>` in the scenario
//! directory, libfaketime's `+400d` syntax, re-read every second), so the
//! runner can jump one node's clock and set it right again; monotonic time
//! is left alone (`DONT_FAKE_MONOTONIC`), as when an NTP step or an
//! operator moves the wall clock.

use anyhow::{Context, Result, bail};
use std::path::{Path, PathBuf};

/// The preloadable libfaketime, wherever the distribution put it.
pub fn library() -> Result<String> {
    for dir in ["/usr/lib/x86_64-linux-gnu", "/usr/lib/aarch64-linux-gnu", "/usr/lib"] {
        let candidate = Path::new(dir).join("faketime/libfaketime.so.1");
        if candidate.is_file() {
            return Ok(candidate.display().to_string());
        }
    }
    bail!("clock faults need libfaketime: bash deploy/install-deps.sh --with-clockfaults (Debian's faketime)")
}

pub fn offset_file(scenario_dir: &Path, id: u64) -> PathBuf {
    scenario_dir.join(format!("clock-{id}"))
}

/// Sets the offset node `id` sees from its next clock read on (within a second).
pub fn set_offset(file: &Path, offset: &str) -> Result<()> {
    let tmp = file.with_extension("tmp");
    std::fs::write(&tmp, format!("{offset}\n")).with_context(|| format!("write {}", tmp.display()))?;
    std::fs::rename(&tmp, file).with_context(|| format!("rename to {}", file.display()))
}
