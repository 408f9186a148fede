//! Power-loss faults: a crash that also loses every write the node had not
//! fsynced, done to real `routerd` processes.
//!
//! Each node's data directory is its own ext4 filesystem, made in an image
//! file and loop-mounted there ([`LoopDisk`]). A write a process makes sits in
//! that filesystem's page cache until writeback or an fsync pushes it through
//! the loop device into the image file; reading the image file therefore shows
//! what the "disk" holds. A power cut is:
//!
//! ```text
//! SIGKILL the node        its writes so far are in the page cache, synced or not
//! copy the image file     what reached the device: fsynced data plus whatever writeback sent
//! unmount, drop the old   (unmounting flushes the page cache into the old image only)
//! mount the copy          ext4 replays its journal, as after a real power loss
//! ```
//!
//! The filesystem is mounted with `commit=600`, so ext4 commits its journal
//! only when someone fsyncs (or after ten minutes): metadata of unsynced
//! writes (new file sizes, newly allocated blocks) is lost with them, as on a
//! disk whose cache was never flushed. The image is copied while the node is
//! dead, so nothing fsyncs during the copy; a background writeback landing in
//! the middle of it can only add unsynced data a real disk could also have
//! kept.
//!
//! Needs root (mount) and mkfs.ext4. `deploy/chaos.sh --profile power-loss`
//! runs the runner in a private mount namespace (`unshare --mount`), so no
//! mount outlives the run; `mount -o loop` sets autoclear, so the loop device
//! goes when the filesystem is unmounted.

use anyhow::{Context, Result, bail};
use serde::Serialize;
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::Command;

/// Size of each node's filesystem (a sparse file: only what is used takes space).
pub const IMAGE_BYTES: u64 = 512 << 20;

fn run(program: &str, args: &[&str]) -> Result<()> {
    let out = Command::new(program).args(args).output().with_context(|| format!("run {program}"))?;
    if !out.status.success() {
        bail!("{program} {}: {}", args.join(" "), String::from_utf8_lossy(&out.stderr).trim());
    }
    Ok(())
}

fn path_str(p: &Path) -> Result<&str> {
    p.to_str().with_context(|| format!("{} is not UTF-8", p.display()))
}

/// Refuses early, with the command that works, when this process cannot mount.
pub fn require_root_and_tools() -> Result<()> {
    let uid = Command::new("id").arg("-u").output().context("run id -u")?;
    if String::from_utf8_lossy(&uid.stdout).trim() != "0" {
        bail!(
            "power-loss faults mount a filesystem per node and need root: run them through \
             `bash deploy/chaos.sh --profile power-loss` as root"
        );
    }
    for tool in ["mkfs.ext4", "mount", "umount", "cp"] {
        if Command::new("sh").args(["-c", &format!("command -v {tool}")]).output().map_or(true, |o| !o.status.success())
        {
            bail!("power-loss faults need {tool} (deploy/install-deps.sh --with-diskfaults)");
        }
    }
    Ok(())
}

/// What a power cut took from one node's data directory, comparing what the
/// process had written (the page cache) with what the disk kept.
#[derive(Clone, Debug, Default, Serialize)]
pub struct PowerCutLoss {
    /// Bytes in the data directory as the process left it.
    pub written_bytes: u64,
    /// Bytes in it after the power cut and the journal replay.
    pub kept_bytes: u64,
    /// Files whose content (or existence) differs between the two.
    pub files_changed: Vec<String>,
}

impl std::fmt::Display for PowerCutLoss {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "{} bytes written, {} kept after the power cut; {} file(s) rolled back",
            self.written_bytes,
            self.kept_bytes,
            self.files_changed.len()
        )?;
        if !self.files_changed.is_empty() {
            write!(f, " ({})", self.files_changed.join(", "))?;
        }
        Ok(())
    }
}

/// An ext4 filesystem in `image`, mounted on `mountpoint`; unmounted on drop.
#[derive(Debug)]
pub struct LoopDisk {
    image: PathBuf,
    mountpoint: PathBuf,
    mounted: bool,
}

impl LoopDisk {
    /// Makes a fresh filesystem in `image` and mounts it on `mountpoint`
    /// (created if missing, must be empty).
    pub fn create(image: &Path, mountpoint: &Path) -> Result<LoopDisk> {
        std::fs::File::create(image)
            .and_then(|f| f.set_len(IMAGE_BYTES))
            .with_context(|| format!("create {}", image.display()))?;
        // Inode tables and journal zeroed now, not by a kernel thread after
        // mount that would write into the image while it is being copied.
        run("mkfs.ext4", &["-q", "-F", "-E", "lazy_itable_init=0,lazy_journal_init=0", path_str(image)?])?;
        std::fs::create_dir_all(mountpoint)?;
        let mut disk = LoopDisk { image: image.to_path_buf(), mountpoint: mountpoint.to_path_buf(), mounted: false };
        disk.mount()?;
        Ok(disk)
    }

    fn mount(&mut self) -> Result<()> {
        run("mount", &["-t", "ext4", "-o", "loop,commit=600", path_str(&self.image)?, path_str(&self.mountpoint)?])?;
        self.mounted = true;
        Ok(())
    }

    fn unmount(&mut self) -> Result<()> {
        if self.mounted {
            run("umount", &[path_str(&self.mountpoint)?])?;
            self.mounted = false;
        }
        Ok(())
    }

    /// The power cut, for a node that was just SIGKILLed: the filesystem
    /// comes back as the disk holds it, unsynced writes gone.
    pub fn power_cut(&mut self) -> Result<PowerCutLoss> {
        let written = contents(&self.mountpoint)?;
        let cut = self.image.with_extension("cut");
        run("cp", &["--sparse=always", path_str(&self.image)?, path_str(&cut)?])?;
        self.unmount()?;
        std::fs::rename(&cut, &self.image).with_context(|| format!("replace {}", self.image.display()))?;
        self.mount()?;
        let kept = contents(&self.mountpoint)?;
        let mut names: Vec<&String> = written.keys().chain(kept.keys()).collect();
        names.sort();
        names.dedup();
        let files_changed = names.into_iter().filter(|n| written.get(*n) != kept.get(*n)).cloned().collect();
        let total = |m: &BTreeMap<String, Vec<u8>>| m.values().map(|v| v.len() as u64).sum();
        Ok(PowerCutLoss { written_bytes: total(&written), kept_bytes: total(&kept), files_changed })
    }
}

impl Drop for LoopDisk {
    fn drop(&mut self) {
        if self.mounted {
            // Lazy: a process that still has a file open must not keep the mount.
            let _ = Command::new("umount").arg("-l").arg(&self.mountpoint).output();
        }
    }
}

/// Every regular file under `dir` (relative name -> content); `lost+found` skipped.
fn contents(dir: &Path) -> Result<BTreeMap<String, Vec<u8>>> {
    let mut out = BTreeMap::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        for entry in std::fs::read_dir(&d).with_context(|| format!("read {}", d.display()))? {
            let entry = entry?;
            let path = entry.path();
            let kind = entry.file_type()?;
            if kind.is_dir() {
                if path.file_name().is_some_and(|n| n != "lost+found") {
                    stack.push(path);
                }
            } else if kind.is_file() {
                let name = path.strip_prefix(dir).unwrap_or(&path).display().to_string();
                out.insert(name, std::fs::read(&path).with_context(|| format!("read {}", path.display()))?);
            }
        }
    }
    Ok(out)
}
