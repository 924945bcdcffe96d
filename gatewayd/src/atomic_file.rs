//! Files replaced atomically and durably.

/// Writes `bytes` to `path` so that a crash leaves the old or the new content: a temporary file beside it, flushed to
/// disk, renamed over `path`, and the directory flushed. The API writes its rules and roster files
/// this way, and the store its watermark.
pub fn write_atomic(path: &std::path::Path, bytes: &[u8]) -> std::io::Result<()> {
    use std::io::Write as _;
    let mut tmp = path.as_os_str().to_owned();
    tmp.push(".tmp");
    let tmp = std::path::PathBuf::from(tmp);
    let mut f = std::fs::File::create(&tmp)?;
    f.write_all(bytes)?;
    f.sync_all()?;
    std::fs::rename(&tmp, path)?;
    if let Some(dir) = path.parent() {
        std::fs::File::open(dir)?.sync_all()?;
    }
    Ok(())
}
