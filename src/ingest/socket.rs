//! Socket files for the Unix listeners: replace a stale file, refuse a live one, set the mode
//! and group that let Cyrus (running as its own user) write to it.

use std::fs;
use std::io::ErrorKind;
use std::os::unix::fs::{FileTypeExt, PermissionsExt};
use std::path::Path;

use anyhow::{Context, bail};

/// Who may write to the socket files.
#[derive(Debug, Clone)]
pub struct SocketAccess {
    /// File mode, e.g. `0o660`.
    pub mode: u32,
    /// Group name or numeric gid.
    pub group: Option<String>,
}

/// Whether a socket file is in use by a live listener; decides replace vs refuse.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    Datagram,
    Stream,
}

/// Clears the way for binding at `path`: creates the parent folder, removes a stale socket
/// file, and fails if another process is listening there or the path is not a socket.
pub fn prepare(path: &Path, kind: Kind) -> anyhow::Result<()> {
    if let Some(dir) = path.parent().filter(|dir| !dir.as_os_str().is_empty()) {
        fs::create_dir_all(dir).with_context(|| format!("cannot create {}", dir.display()))?;
    }
    let meta = match fs::symlink_metadata(path) {
        Ok(meta) => meta,
        Err(err) if err.kind() == ErrorKind::NotFound => return Ok(()),
        Err(err) => return Err(err).with_context(|| format!("cannot inspect {}", path.display())),
    };
    if !meta.file_type().is_socket() {
        bail!(
            "{} exists and is not a socket; refusing to replace it",
            path.display()
        );
    }
    let probe = match kind {
        Kind::Datagram => {
            std::os::unix::net::UnixDatagram::unbound().and_then(|socket| socket.connect(path))
        }
        Kind::Stream => std::os::unix::net::UnixStream::connect(path).map(drop),
    };
    match probe {
        Ok(()) => bail!("another process is listening on {}", path.display()),
        Err(err) if err.kind() == ErrorKind::ConnectionRefused => {
            fs::remove_file(path)
                .with_context(|| format!("cannot remove stale socket {}", path.display()))?;
            tracing::info!(path = %path.display(), "removed stale socket file");
            Ok(())
        }
        Err(err) => {
            Err(err).with_context(|| format!("cannot probe existing socket {}", path.display()))
        }
    }
}

/// Sets the mode and group of a freshly bound socket file.
pub fn apply_access(path: &Path, access: &SocketAccess) -> anyhow::Result<()> {
    fs::set_permissions(path, fs::Permissions::from_mode(access.mode))
        .with_context(|| format!("cannot chmod {:o} {}", access.mode, path.display()))?;
    if let Some(group) = &access.group {
        let gid = resolve_group(group)?;
        std::os::unix::fs::chown(path, None, Some(gid))
            .with_context(|| format!("cannot give {} to group {group}", path.display()))?;
    }
    Ok(())
}

/// A numeric gid, or a name looked up in `/etc/group` (no NSS: list the group there or give
/// its number).
fn resolve_group(group: &str) -> anyhow::Result<u32> {
    if let Ok(gid) = group.parse() {
        return Ok(gid);
    }
    let groups = fs::read_to_string("/etc/group").context("cannot read /etc/group")?;
    gid_in_group_file(&groups, group)
        .with_context(|| format!("group {group} is not in /etc/group; give its numeric id"))
}

fn gid_in_group_file(groups: &str, name: &str) -> Option<u32> {
    groups.lines().find_map(|line| {
        let mut fields = line.split(':');
        let found = fields.next()? == name;
        let gid = fields.nth(1)?.parse().ok()?;
        found.then_some(gid)
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn group_file_lookup() {
        let groups = "root:x:0:\nmail:x:8:\ncyrus:x:120:cyrus\nbroken\n";
        assert_eq!(gid_in_group_file(groups, "cyrus"), Some(120));
        assert_eq!(gid_in_group_file(groups, "root"), Some(0));
        assert_eq!(gid_in_group_file(groups, "nobody"), None);
        assert_eq!(gid_in_group_file(groups, "broken"), None);
    }

    #[test]
    fn stale_sockets_are_replaced_and_live_ones_refused() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("sub/notify.sock");
        prepare(&path, Kind::Datagram).unwrap();
        let live = std::os::unix::net::UnixDatagram::bind(&path).unwrap();
        let err = prepare(&path, Kind::Datagram).unwrap_err();
        assert!(
            err.to_string().contains("another process is listening"),
            "{err}"
        );
        drop(live);
        prepare(&path, Kind::Datagram).unwrap();
        assert!(!path.exists(), "stale socket removed");

        let file = dir.path().join("plain");
        fs::write(&file, b"x").unwrap();
        let err = prepare(&file, Kind::Stream).unwrap_err();
        assert!(err.to_string().contains("not a socket"), "{err}");

        let stream_path = dir.path().join("dlist.sock");
        let listener = std::os::unix::net::UnixListener::bind(&stream_path).unwrap();
        assert!(prepare(&stream_path, Kind::Stream).is_err());
        drop(listener);
        prepare(&stream_path, Kind::Stream).unwrap();
    }
}
