//! Key files readable by their owner alone: the vault's master key and the checkpoint key live
//! in such files under the data directory.

use std::io::Write;
use std::path::{Path, PathBuf};

use base64::engine::general_purpose::STANDARD as BASE64;
use base64::Engine;

/// Why a key could not be read.
#[derive(Debug, thiserror::Error)]
pub enum KeyError {
    #[error("{}: {source}", .path.display())]
    File {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("{} may be read by others (mode {mode:o}): chmod 600 it", .path.display())]
    Readable { path: PathBuf, mode: u32 },
    #[error("{whence}: it is not base64")]
    NotBase64 {
        whence: String,
        #[source]
        source: base64::DecodeError,
    },
    #[error("{whence}: it is {len} bytes long, not 32")]
    Length { whence: String, len: usize },
}

/// The text of the key file at `path`, or `None` when there is none. A file others may read is
/// refused, with what to do about it.
pub fn read_private(path: &Path) -> Result<Option<String>, KeyError> {
    let file_error = |source| KeyError::File {
        path: path.to_owned(),
        source,
    };
    match std::fs::read_to_string(path) {
        Ok(text) => {
            #[cfg(unix)]
            {
                use std::os::unix::fs::PermissionsExt;
                let mode = std::fs::metadata(path)
                    .map_err(file_error)?
                    .permissions()
                    .mode();
                if mode & 0o077 != 0 {
                    return Err(KeyError::Readable {
                        path: path.to_owned(),
                        mode: mode & 0o777,
                    });
                }
            }
            Ok(Some(text))
        }
        Err(error) if error.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(error) => Err(file_error(error)),
    }
}

/// A 32-byte key written as base64 (surrounding whitespace ignored); `whence` names where the
/// text came from, for the error.
pub fn seed_from_base64(text: &str, whence: &str) -> Result<[u8; 32], KeyError> {
    let bytes = BASE64
        .decode(text.trim())
        .map_err(|source| KeyError::NotBase64 {
            whence: whence.to_owned(),
            source,
        })?;
    bytes.try_into().map_err(|bytes: Vec<u8>| KeyError::Length {
        whence: whence.to_owned(),
        len: bytes.len(),
    })
}

/// Writes `text` and a newline to a new file at `path` (never over an existing one), readable
/// by its owner alone, and syncs it. The file appears whole or not at all: it is written and
/// synced under a temporary name beside `path`, then linked to `path` (which fails, changing
/// nothing, if `path` exists), so a process killed mid-write never leaves a short key file.
pub fn write_new_private(path: &Path, text: &str) -> std::io::Result<()> {
    let mut name = path
        .file_name()
        .ok_or_else(|| std::io::Error::other("a key file needs a file name"))?
        .to_os_string();
    name.push(format!(".{}.partial", uuid::Uuid::now_v7().simple()));
    let partial = path.with_file_name(name);
    let mut options = std::fs::OpenOptions::new();
    options.write(true).create_new(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt;
        options.mode(0o600);
    }
    let written = options.open(&partial).and_then(|mut file| {
        file.write_all(text.as_bytes())?;
        file.write_all(b"\n")?;
        file.sync_all()
    });
    let linked = written.and_then(|()| std::fs::hard_link(&partial, path));
    // The partial name goes either way; what matters is whether `path` holds the key.
    let _ = std::fs::remove_file(&partial);
    linked
}

/// Syncs the directory holding `path`, so that a file created or renamed there survives a
/// crash under its new name.
pub fn sync_parent(path: &Path) -> std::io::Result<()> {
    let parent = match path.parent() {
        Some(parent) if !parent.as_os_str().is_empty() => parent,
        _ => Path::new("."),
    };
    std::fs::File::open(parent)?.sync_all()
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn a_key_file_is_written_whole_and_never_over_another() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("master.key");
        write_new_private(&path, "first").unwrap();
        assert_eq!(read_private(&path).unwrap().as_deref(), Some("first\n"));
        let again = write_new_private(&path, "second").unwrap_err();
        assert_eq!(again.kind(), std::io::ErrorKind::AlreadyExists);
        assert_eq!(read_private(&path).unwrap().as_deref(), Some("first\n"));
        // Nothing else is left beside it.
        let names: Vec<_> = std::fs::read_dir(dir.path())
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .collect();
        assert_eq!(names, [std::ffi::OsString::from("master.key")]);
    }
}
