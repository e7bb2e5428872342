//! What a token holder may make the server touch on its host: storage accounts only in
//! directories under the configured storage roots, images imported only from the import
//! directory, freeze/thaw scripts only by name from the scripts directory (run as an
//! unprivileged user). Every check resolves symlinks and creates nothing, so a refused request
//! leaves the host as it was.

use std::path::{Component, Path, PathBuf};

use crate::error::{ControlError, Result};

/// The directories a request may reach, and who runs the scripts.
#[derive(Debug, Clone)]
pub struct Confinement {
    /// `file://` accounts must be in a directory under one of these (default `DATA/storage`).
    pub storage_roots: Vec<PathBuf>,
    /// Accept `memory://` accounts, whose points vanish at a restart (tests only).
    pub allow_memory_accounts: bool,
    /// `--image` files are read only from here (default `DATA/import`).
    pub import_dir: PathBuf,
    /// Freeze/thaw scripts are named files here (default `DATA/scripts`).
    pub scripts_dir: PathBuf,
    /// The user scripts run as when the server runs as root (default `nobody`).
    pub scripts_user: String,
}

impl Confinement {
    /// The defaults for the data directory `data`.
    pub fn under(data: &Path) -> Self {
        Confinement {
            storage_roots: vec![data.join("storage")],
            allow_memory_accounts: false,
            import_dir: data.join("import"),
            scripts_dir: data.join("scripts"),
            scripts_user: "nobody".into(),
        }
    }

    /// Create the directories of this confinement that are inside the data directory `data`
    /// (the defaults), so an operator finds where images and scripts go.
    pub(crate) fn create_dirs(&self, data: &Path) -> Result<()> {
        let dirs = self.storage_roots.iter();
        for dir in dirs.chain([&self.import_dir, &self.scripts_dir]) {
            if dir.starts_with(data) {
                std::fs::create_dir_all(dir).map_err(|e| {
                    ControlError::Internal(format!("create directory {}: {e}", dir.display()))
                })?;
            }
        }
        Ok(())
    }

    /// Check the URL of a new storage account, without creating anything; `data` is the
    /// server's data directory. Returns the URL to store.
    pub(crate) fn check_storage_url(&self, data: &Path, url: &str) -> Result<String> {
        let location =
            ferry_storage::location(url).map_err(|e| ControlError::invalid(e.to_string()))?;
        let dir = match location {
            ferry_storage::Location::Remote => return Ok(url.to_string()),
            ferry_storage::Location::Memory if self.allow_memory_accounts => {
                return Ok(url.to_string());
            }
            ferry_storage::Location::Memory => {
                return Err(ControlError::invalid(
                    "memory:// accounts lose every recovery point when the server stops: use \
                     file:///DIR under a storage root, az://CONTAINER or s3://BUCKET \
                     (memory:// is for tests: the server's allow_memory_accounts setting)",
                ));
            }
            ferry_storage::Location::Local(dir) => dir,
        };
        let shown = dir.display();
        let resolved = resolve(&dir).map_err(|e| {
            ControlError::invalid(format!("storage directory {shown} cannot be resolved: {e}"))
        })?;
        let data = resolve(data)
            .map_err(|e| ControlError::Internal(format!("resolve {}: {e}", data.display())))?;
        if data.starts_with(&resolved) {
            return Err(ControlError::invalid(format!(
                "storage directory {shown} is or holds the server's data directory {}: pick a \
                 directory of its own under a storage root ({})",
                data.display(),
                self.roots_shown()
            )));
        }
        let root = self.storage_roots.iter().find_map(|r| {
            let r = resolve(r).ok()?;
            (resolved.starts_with(&r) && resolved != r).then_some(r)
        });
        let Some(root) = root else {
            return Err(ControlError::invalid(format!(
                "storage directory {shown} (resolved {}) is not under a storage root: file:// \
                 accounts live in a directory under {}; add a root to the server's \
                 storage_roots setting to use another place",
                resolved.display(),
                self.roots_shown()
            )));
        };
        if resolved.starts_with(&data) && !root.starts_with(&data) {
            return Err(ControlError::invalid(format!(
                "storage directory {shown} is inside the server's data directory {}: pick one \
                 under {}",
                data.display(),
                self.roots_shown()
            )));
        }
        // The directory as checked, percent-encoded again where it must be.
        url::Url::from_file_path(&dir)
            .map(String::from)
            .map_err(|()| ControlError::invalid(format!("storage directory {shown} is not a path")))
    }

    fn roots_shown(&self) -> String {
        let roots: Vec<String> = self
            .storage_roots
            .iter()
            .map(|r| r.display().to_string())
            .collect();
        roots.join(", ")
    }

    /// The file an `--image` (or `--kernel`, `--initrd`: `flag`) names: a name in the import
    /// directory, or a path that is in it once normalised and its symlinks resolved.
    pub(crate) fn import_path(&self, image: &str, flag: &str) -> Result<PathBuf> {
        let dir = &self.import_dir;
        let outside = || {
            ControlError::invalid(format!(
                "{flag} {image:?} is not in the import directory {}: copy the file there and \
                 give its name",
                dir.display()
            ))
        };
        if image.is_empty() || image.chars().any(char::is_control) {
            return Err(outside());
        }
        let root = dir.canonicalize().map_err(|e| {
            ControlError::invalid(format!(
                "the import directory {} cannot be used ({e}): create it and copy images and \
                 boot files there (the server's import_dir setting names another)",
                dir.display()
            ))
        })?;
        let given = Path::new(image);
        let joined = if given.is_absolute() {
            given.to_path_buf()
        } else {
            dir.join(given)
        };
        let normal = normalise(&joined).ok_or_else(outside)?;
        if !normal.starts_with(dir) && !normal.starts_with(&root) {
            return Err(outside());
        }
        let real = normal.canonicalize().map_err(|e| {
            ControlError::invalid(format!(
                "{flag} {image:?}: {e} (in the import directory {})",
                dir.display()
            ))
        })?;
        if !real.starts_with(&root) || real == root {
            return Err(outside());
        }
        Ok(real)
    }

    /// The script a VM names (`--pre-freeze-script NAME`): a file in the scripts directory.
    pub(crate) fn script_path(&self, name: &str, what: &str) -> Result<PathBuf> {
        let plain = !name.is_empty()
            && name != "."
            && name != ".."
            && !name.contains('/')
            && !name.chars().any(char::is_control);
        if !plain {
            return Err(ControlError::invalid(format!(
                "--{what}-script {name:?} must be the name of a script in the scripts directory \
                 {} (no `/`, not `..`)",
                self.scripts_dir.display()
            )));
        }
        Ok(self.scripts_dir.join(name))
    }

    /// Check a script name at VM creation: plain, and a regular file in the scripts directory.
    pub(crate) fn check_script(&self, name: &str, what: &str) -> Result<()> {
        let path = self.script_path(name, what)?;
        if !std::fs::metadata(&path).is_ok_and(|m| m.is_file()) {
            return Err(ControlError::invalid(format!(
                "--{what}-script {name:?}: there is no script {} (put the script in the scripts \
                 directory first)",
                path.display()
            )));
        }
        Ok(())
    }

    /// Who scripts run as: `Some((uid, gid))` of the scripts user when the server runs as
    /// root, `None` (the server's own user) otherwise.
    pub fn script_identity(&self) -> Result<Option<(u32, u32)>> {
        if !nix::unistd::geteuid().is_root() {
            return Ok(None);
        }
        let user = nix::unistd::User::from_name(&self.scripts_user)
            .map_err(|e| {
                ControlError::Internal(format!("look up scripts user {}: {e}", self.scripts_user))
            })?
            .ok_or_else(|| {
                ControlError::Internal(format!(
                    "scripts user {} does not exist: create it or set scripts_user in the \
                     server's config",
                    self.scripts_user
                ))
            })?;
        Ok(Some((user.uid.as_raw(), user.gid.as_raw())))
    }
}

/// `path` with `.` dropped and `..` applied, or `None` if it climbs above `/`.
fn normalise(path: &Path) -> Option<PathBuf> {
    let mut out = PathBuf::new();
    for c in path.components() {
        match c {
            Component::ParentDir => {
                if !out.pop() || out.as_os_str().is_empty() {
                    return None;
                }
            }
            Component::CurDir => {}
            other => out.push(other),
        }
    }
    Some(out)
}

/// An absolute, normal `path` with its deepest existing ancestor canonicalised (symlinks
/// resolved) and the rest appended: where a directory created there would really be.
pub(crate) fn resolve(path: &Path) -> std::io::Result<PathBuf> {
    let mut rest = Vec::new();
    let mut at = path;
    loop {
        match at.canonicalize() {
            Ok(real) => {
                let mut out = real;
                out.extend(rest.iter().rev());
                return Ok(out);
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                let (Some(parent), Some(name)) = (at.parent(), at.file_name()) else {
                    return Err(e);
                };
                rest.push(name.to_owned());
                at = parent;
            }
            Err(e) => return Err(e),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn setup() -> (tempfile::TempDir, Confinement, PathBuf) {
        let dir = tempfile::tempdir().unwrap();
        let data = dir.path().join("data");
        std::fs::create_dir_all(data.join("storage")).unwrap();
        let c = Confinement::under(&data);
        (dir, c, data)
    }

    #[test]
    fn storage_urls_stay_under_the_roots() {
        let (dir, c, data) = setup();
        let ok = format!("file://{}/storage/a1", data.display());
        assert_eq!(c.check_storage_url(&data, &ok).unwrap(), ok);
        let outside = dir.path().join("elsewhere");
        std::fs::create_dir(&outside).unwrap();
        std::os::unix::fs::symlink(&outside, data.join("storage/link")).unwrap();
        for (url, says) in [
            ("file:///etc".to_string(), "not under a storage root"),
            ("file:///".to_string(), "plain directory"),
            ("file:///proc/self".to_string(), "not under a storage root"),
            (format!("file://{}", data.display()), "data directory"),
            (format!("file://{}", dir.path().display()), "data directory"),
            (
                format!("file://{}/storage", data.display()),
                "not under a storage root",
            ),
            (
                format!("file://{}/storage/link/x", data.display()),
                "not under a storage root",
            ),
            (
                format!("file://{}/storage/a%2F..%2F..%2Fx", data.display()),
                "plain directory",
            ),
            ("file:relative".to_string(), "file:///"),
            ("memory://".to_string(), "allow_memory_accounts"),
        ] {
            let err = c.check_storage_url(&data, &url).unwrap_err();
            assert!(matches!(err, ControlError::Invalid(_)), "{url}: {err:?}");
            assert!(err.to_string().contains(says), "{url}: {err}");
        }
        assert!(!outside.join("x").exists());
        let mem = Confinement {
            allow_memory_accounts: true,
            ..c.clone()
        };
        assert!(mem.check_storage_url(&data, "memory://").is_ok());
        assert!(c.check_storage_url(&data, "s3://bucket/p").is_ok());
        let odd = format!("file://{}/storage/a%2520b", data.display());
        let stored = c.check_storage_url(&data, &odd).unwrap();
        assert_eq!(stored, odd, "the stored URL names the directory checked");
        let Ok(ferry_storage::Location::Local(d)) = ferry_storage::location(&stored) else {
            panic!("{stored} is local")
        };
        assert_eq!(d, data.join("storage/a%20b"));
    }

    #[test]
    fn images_come_from_the_import_directory_only() {
        let (dir, c, data) = setup();
        std::fs::write(data.join("admin-token"), "secret").unwrap();
        assert!(
            c.import_path("disk.img", "--image")
                .unwrap_err()
                .to_string()
                .contains("create it")
        );
        std::fs::create_dir(&c.import_dir).unwrap();
        std::fs::write(c.import_dir.join("disk.img"), "img").unwrap();
        std::os::unix::fs::symlink(data.join("admin-token"), c.import_dir.join("token")).unwrap();
        let want = c.import_dir.join("disk.img").canonicalize().unwrap();
        assert_eq!(c.import_path("disk.img", "--image").unwrap(), want);
        assert_eq!(
            c.import_path(c.import_dir.join("disk.img").to_str().unwrap(), "--kernel")
                .unwrap(),
            want
        );
        assert_eq!(c.import_path("sub/../disk.img", "--image").unwrap(), want);
        for bad in [
            data.join("admin-token").display().to_string(),
            "../admin-token".to_string(),
            "token".to_string(),
            "/etc/passwd".to_string(),
            format!("{}/../admin-token", c.import_dir.display()),
            String::new(),
        ] {
            let err = c.import_path(&bad, "--image").unwrap_err().to_string();
            assert!(err.contains("not in the import directory"), "{bad}: {err}");
        }
        drop(dir);
    }

    #[test]
    fn scripts_are_names_in_the_scripts_directory() {
        let (_dir, c, _data) = setup();
        for bad in ["/bin/sh", "../x", "..", "a/b", ""] {
            let err = c.script_path(bad, "pre-freeze").unwrap_err().to_string();
            assert!(err.contains("must be the name of a script"), "{bad}: {err}");
        }
        assert_eq!(
            c.script_path("freeze.sh", "pre-freeze").unwrap(),
            c.scripts_dir.join("freeze.sh")
        );
        let err = c
            .check_script("freeze.sh", "pre-freeze")
            .unwrap_err()
            .to_string();
        assert!(err.contains("no script"), "{err}");
    }
}
