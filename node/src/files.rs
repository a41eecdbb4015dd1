//! Files replaced whole: the node's keys and certificates (`pki.rs`), its kept QUIC
//! address tokens (`net/tokens.rs`), and the demo's manifest of tokens.

use std::io::Write as _;
use std::path::Path;

/// Replace the file at `path` with `bytes`, whole or not at all: written to `.<name>.tmp`
/// beside it, then renamed over it. A temporary file left by a crash is removed and made
/// anew, so its mode is the one set here (the owner's only if `private`, from its creation)
/// and nothing placed at its name is followed; a failed write leaves none behind. With
/// `durable`, the data and then the folder are flushed, so the rename survives a crash.
pub fn replace(path: &Path, bytes: &[u8], private: bool, durable: bool) -> std::io::Result<()> {
    let name = path
        .file_name()
        .ok_or_else(|| std::io::Error::other("no file name"))?
        .to_string_lossy();
    let dir = folder_of(path);
    let tmp = dir.join(format!(".{name}.tmp"));
    match std::fs::remove_file(&tmp) {
        Err(e) if e.kind() != std::io::ErrorKind::NotFound => return Err(e),
        _ => {}
    }
    let written = create_new(&tmp, private).and_then(|mut file| {
        file.write_all(bytes)?;
        if durable {
            file.sync_all()?;
        }
        Ok(())
    });
    if let Err(e) = written.and_then(|()| std::fs::rename(&tmp, path)) {
        // Never leave a partial copy (of a key, say) behind.
        let _ = std::fs::remove_file(&tmp);
        return Err(e);
    }
    #[cfg(unix)]
    if durable {
        std::fs::File::open(dir).and_then(|d| d.sync_all())?;
    }
    Ok(())
}

/// The folder holding `file` (`.` for a bare name).
pub(crate) fn folder_of(file: &Path) -> &Path {
    file.parent()
        .filter(|d| !d.as_os_str().is_empty())
        .unwrap_or(Path::new("."))
}

/// Make a new, empty file at `path`, readable and writable by its owner only from its
/// creation (a mode set afterwards leaves a moment in which another local user may open it
/// and keep reading). Fails if there is one already.
pub(crate) fn new_private(path: &Path) -> std::io::Result<()> {
    create_new(path, true).map(drop)
}

/// [`new_private`], open for writing. Never opens what is there already, a symbolic link
/// included: a command run as root in a folder its node's user owns writes only its own file.
pub(crate) fn new_private_file(path: &Path) -> std::io::Result<std::fs::File> {
    create_new(path, true)
}

/// A new file at `path` (none may be there), for writing; the owner's only from its
/// creation if `private`.
fn create_new(path: &Path, private: bool) -> std::io::Result<std::fs::File> {
    let mut options = std::fs::OpenOptions::new();
    options.write(true).create_new(true);
    #[cfg(unix)]
    if private {
        use std::os::unix::fs::OpenOptionsExt;
        options.mode(0o600);
    }
    options.open(path)
}

/// [`new_private`] for a store file; made by root, it is given to the owner of its folder:
/// a store an operator's command (run as root) makes for a node that runs as its own user
/// must be that user's, or the node cannot open it. `Ok(false)` when there is a file there
/// already.
pub(crate) fn new_store_file(path: &Path) -> std::io::Result<bool> {
    match new_private(path) {
        Ok(()) => {}
        Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => return Ok(false),
        Err(e) => return Err(e),
    }
    if let Err(e) = give_if_root(path, owner_ids(folder_of(path))) {
        // Not left behind: a second run would take it as there already and keep root's.
        let _ = std::fs::remove_file(path);
        return Err(e);
    }
    Ok(true)
}

/// [`give`] `path` to `owner` if root owns it (made by a command run as root).
pub(crate) fn give_if_root(path: &Path, owner: Option<(u32, u32)>) -> std::io::Result<()> {
    if owner_ids(path).is_some_and(|(uid, _)| uid == 0) {
        give(path, owner)?;
    }
    Ok(())
}

/// The owner (user, group) of `path`.
#[cfg(unix)]
pub(crate) fn owner_ids(path: &Path) -> Option<(u32, u32)> {
    use std::os::unix::fs::MetadataExt;
    std::fs::metadata(path).ok().map(|m| (m.uid(), m.gid()))
}

#[cfg(not(unix))]
pub(crate) fn owner_ids(_path: &Path) -> Option<(u32, u32)> {
    None
}

/// Give `path` to `owner` unless it is theirs already: a file made by an operator's command
/// (run as root) for a node that runs as its own user must be that user's.
#[cfg(unix)]
pub(crate) fn give(path: &Path, owner: Option<(u32, u32)>) -> std::io::Result<()> {
    let Some((uid, gid)) = owner else {
        return Ok(());
    };
    if owner_ids(path) == Some((uid, gid)) {
        return Ok(());
    }
    std::os::unix::fs::chown(path, Some(uid), Some(gid))
}

#[cfg(not(unix))]
pub(crate) fn give(_path: &Path, _owner: Option<(u32, u32)>) -> std::io::Result<()> {
    Ok(())
}

/// [`give`] an open file: whatever its path names by now, the file itself.
#[cfg(unix)]
pub(crate) fn give_file(file: &std::fs::File, owner: Option<(u32, u32)>) -> std::io::Result<()> {
    use std::os::unix::fs::MetadataExt;
    let Some((uid, gid)) = owner else {
        return Ok(());
    };
    let meta = file.metadata()?;
    if (meta.uid(), meta.gid()) == (uid, gid) {
        return Ok(());
    }
    std::os::unix::fs::fchown(file, Some(uid), Some(gid))
}

#[cfg(not(unix))]
pub(crate) fn give_file(_file: &std::fs::File, _owner: Option<(u32, u32)>) -> std::io::Result<()> {
    Ok(())
}
