//! The node's HA epoch (its takeover count) kept in a file across restarts (docs/ha.md, B5).
//!
//! The other node compares the epoch of every Hello with the last one it saw (`BesideWatch`): a
//! node whose epoch moved took over at some point, possibly behind a partition, and may have
//! sealed on the active's CHILD SAs above their ceilings; the active then caps and rekeys them.
//! Kept only in memory, the count went back to 0 with a restart, and a node that took over behind
//! a partition and restarted went unnoticed.

use std::fs;
use std::io::Write;
use std::path::Path;

/// The epoch stored in `path`: 0 when there is no file (a node that never took over). A file that
/// exists but does not hold an epoch is an error: guessing 0 could hide a takeover.
pub fn read(path: &Path) -> Result<u64, String> {
    match fs::read_to_string(path) {
        Ok(s) => s.trim().parse().map_err(|_| {
            format!("[ha] state-file {}: {:?} is not an epoch (a number); remove the file only if this node never took over since the other node last saw it", path.display(), s.trim())
        }),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(0),
        Err(e) => Err(format!("[ha] state-file {}: {e}", path.display())),
    }
}

/// Store `epoch` in `path`, durably (written to a temporary file, flushed to disk, renamed over
/// the old one), so neither a crash nor a power loss leaves a torn or lost count.
pub fn write(path: &Path, epoch: u64) -> std::io::Result<()> {
    let tmp = path.with_extension("epoch.tmp");
    {
        let mut f = fs::File::create(&tmp)?;
        writeln!(f, "{epoch}")?;
        f.sync_all()?;
    }
    fs::rename(&tmp, path)?;
    if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
        fs::File::open(dir)?.sync_all()?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_epoch_survives_and_a_bad_file_is_refused() {
        let dir = std::env::temp_dir().join(format!("tandem-epoch-{}", std::process::id()));
        fs::create_dir_all(&dir).unwrap();
        let p = dir.join("ha.epoch");
        let _ = fs::remove_file(&p);
        assert_eq!(read(&p), Ok(0), "no file: never took over");
        write(&p, 3).unwrap();
        assert_eq!(read(&p), Ok(3));
        write(&p, 4).unwrap();
        assert_eq!(read(&p), Ok(4), "replaced");
        fs::write(&p, "garbage").unwrap();
        assert!(read(&p).unwrap_err().contains("not an epoch"));
        fs::remove_dir_all(&dir).unwrap();
    }
}
