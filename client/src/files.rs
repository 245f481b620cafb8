//! Writing a credential to a file: never partially, never readable by others. The value goes to a
//! new file (mode 0600, created exclusively) in the same directory, is synced, and is renamed over
//! the target, so a reader sees the old file or the new one, never half of either.

use crate::error::{Error, Result};
use std::io::Write;
use std::os::unix::fs::OpenOptionsExt;
use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};

static COUNTER: AtomicU64 = AtomicU64::new(0);

pub fn write_atomically(path: &Path, contents: &[u8]) -> Result<()> {
    let name = path
        .file_name()
        .ok_or_else(|| Error::Usage(format!("{} is not a file path", path.display())))?;
    let dir = match path.parent() {
        Some(dir) if !dir.as_os_str().is_empty() => dir,
        _ => Path::new("."),
    };
    let temp = dir.join(format!(
        ".{}.nhi-{}-{}",
        name.to_string_lossy(),
        std::process::id(),
        COUNTER.fetch_add(1, Ordering::Relaxed)
    ));
    let fail = |what: &str, e: std::io::Error| Error::Failed(format!("cannot {what} {}: {}", path.display(), e.kind()));
    let written = (|| {
        let mut file = std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .open(&temp)?;
        file.write_all(contents)?;
        file.sync_all()
    })();
    if let Err(e) = written {
        let _ = std::fs::remove_file(&temp);
        return Err(fail("write", e));
    }
    if let Err(e) = std::fs::rename(&temp, path) {
        let _ = std::fs::remove_file(&temp);
        return Err(fail("replace", e));
    }
    // The rename itself survives a crash once the directory is synced.
    if let Ok(dir) = std::fs::File::open(dir) {
        let _ = dir.sync_all();
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    #[test]
    fn replaces_the_file_with_mode_0600_and_leaves_no_temporary() {
        let dir = std::env::temp_dir().join(format!("nhi-files-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("secret");
        std::fs::write(&path, "old").unwrap();
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o644)).unwrap();
        write_atomically(&path, b"new").unwrap();
        assert_eq!(std::fs::read_to_string(&path).unwrap(), "new");
        assert_eq!(std::fs::metadata(&path).unwrap().permissions().mode() & 0o777, 0o600);
        let names: Vec<_> = std::fs::read_dir(&dir)
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .collect();
        assert_eq!(names, vec![std::ffi::OsString::from("secret")]);
    }

    #[test]
    fn a_missing_directory_is_a_clear_error_that_never_names_the_value() {
        let err = write_atomically(Path::new("/nonexistent-nhi-dir/secret"), b"value-123").unwrap_err();
        assert!(err.to_string().contains("/nonexistent-nhi-dir/secret"));
        assert!(!err.to_string().contains("value-123"));
    }
}
