//! Files that hold secrets, and the data directory they live in: readable by Drover's
//! user only. The data directory is made (or tightened to) mode 0700, so nothing in it
//! (the SQLite database and its WAL, the admin token, the secret key, compiled plugins) is
//! open to other users of the machine whatever the umask; the SQLite files themselves and
//! every secret file are 0600 besides.

use std::io::Write;
use std::path::Path;

/// Create `path` with `contents`, mode 0600; an existing file is not overwritten.
pub fn write_private(path: &Path, contents: &[u8]) -> std::io::Result<()> {
    let mut options = std::fs::OpenOptions::new();
    options.write(true).create_new(true);
    #[cfg(unix)]
    std::os::unix::fs::OpenOptionsExt::mode(&mut options, 0o600);
    options.open(path)?.write_all(contents)
}

/// Make the data directory (mode 0700), or take an existing one down to 0700.
pub fn private_dir(dir: &Path) -> std::io::Result<()> {
    std::fs::create_dir_all(dir)?;
    restrict(dir, 0o700)
}

/// Take the files of a SQLite database (`sqlite://PATH`: the database, its WAL and shared
/// memory) down to mode 0600, once they exist.
pub fn private_sqlite(url: &str) -> std::io::Result<()> {
    let Some(path) = url.strip_prefix("sqlite://").or_else(|| url.strip_prefix("sqlite:")) else { return Ok(()) };
    let path = path.split('?').next().unwrap_or(path);
    for suffix in ["", "-wal", "-shm"] {
        let file = format!("{path}{suffix}");
        if Path::new(&file).exists() {
            restrict(Path::new(&file), 0o600)?;
        }
    }
    Ok(())
}

#[cfg(unix)]
fn restrict(path: &Path, mode: u32) -> std::io::Result<()> {
    use std::os::unix::fs::PermissionsExt;
    let current = std::fs::metadata(path)?.permissions().mode() & 0o777;
    if current & !mode != 0 {
        std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode))?;
    }
    Ok(())
}

#[cfg(not(unix))]
fn restrict(_path: &Path, _mode: u32) -> std::io::Result<()> {
    Ok(())
}
