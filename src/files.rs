//! Files and folders that hold users' data (the database, the spool, the journal, the outbox,
//! the SMS log): created readable by mailpush's user only, whatever the umask.

use std::fs::{self, File, OpenOptions};
use std::io;
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt, PermissionsExt};
use std::path::Path;

/// Creates `dir` and any missing parents with mode 0700 (existing ones are left as they are).
pub fn create_private_dir(dir: &Path) -> io::Result<()> {
    fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(dir)
}

/// Opens `path` for appending, creating it with mode 0600.
pub fn open_private_append(path: &Path) -> io::Result<File> {
    OpenOptions::new()
        .create(true)
        .append(true)
        .mode(0o600)
        .open(path)
}

/// Creates `path` empty with mode 0600 if it is missing, and takes the group's and others'
/// bits off a file an earlier version created wider. SQLite gives its `-wal` and `-shm` files
/// the database's own mode, so this covers them too.
pub fn make_private(path: &Path) -> io::Result<()> {
    let file = OpenOptions::new()
        .create(true)
        .append(true)
        .mode(0o600)
        .open(path)?;
    let mode = file.metadata()?.permissions().mode();
    if mode & 0o077 != 0 {
        file.set_permissions(fs::Permissions::from_mode(mode & 0o700))?;
        tracing::info!(path = %path.display(), "made private (mode 0600)");
    }
    Ok(())
}

/// Writes a new secret (a key, a token secret) to `path` with mode 0600, synced, creating its
/// folder private too. Returns false, writing nothing, when the file exists already: another
/// process made it first, and its secret is the one to use.
pub fn create_secret(path: &Path, contents: &[u8]) -> io::Result<bool> {
    if let Some(dir) = path.parent() {
        create_private_dir(dir)?;
    }
    let mut file = match OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(path)
    {
        Ok(file) => file,
        Err(err) if err.kind() == io::ErrorKind::AlreadyExists => return Ok(false),
        Err(err) => return Err(err),
    };
    io::Write::write_all(&mut file, contents)?;
    file.sync_all()?;
    Ok(true)
}

/// Warns when a secret file can be read by group or others.
pub fn warn_if_readable_by_others(path: &Path, what: &str) {
    if let Ok(meta) = fs::metadata(path)
        && meta.permissions().mode() & 0o077 != 0
    {
        tracing::warn!(path = %path.display(), "{what} file is readable by group or others; chmod 600 it");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn mode(path: &Path) -> u32 {
        fs::metadata(path).unwrap().permissions().mode() & 0o777
    }

    #[test]
    fn files_and_folders_are_private() {
        let dir = tempfile::tempdir().unwrap();
        let data = dir.path().join("a/b");
        create_private_dir(&data).unwrap();
        assert_eq!(mode(&data), 0o700);
        let journal = data.join("journal");
        drop(open_private_append(&journal).unwrap());
        assert_eq!(mode(&journal), 0o600);
        let old = data.join("old.db");
        fs::write(&old, b"x").unwrap();
        fs::set_permissions(&old, fs::Permissions::from_mode(0o644)).unwrap();
        make_private(&old).unwrap();
        assert_eq!(mode(&old), 0o600);
        assert_eq!(fs::read(&old).unwrap(), b"x", "contents kept");
    }
}
