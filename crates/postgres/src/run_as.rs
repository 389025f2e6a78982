//! Running PostgreSQL programs as the configured OS user. PostgreSQL refuses to run as root,
//! so an agent running as root switches to `os_user` for every program it starts; an agent
//! running as an ordinary user can only run them as itself.

use std::os::unix::fs::PermissionsExt;
use std::path::Path;

use nix::unistd::{Gid, Uid, User};

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OsUser {
    pub name: String,
    pub uid: u32,
    pub gid: u32,
    /// Whether programs must switch to this user (the agent runs as root).
    switch: bool,
    /// Its home directory: where libpq, run as this user, looks for its own files
    /// (`~/.postgresql/`), never root's.
    home: std::path::PathBuf,
}

impl OsUser {
    /// Look up `name` and check that this process may run programs as that user.
    pub fn lookup(name: &str) -> Result<OsUser, String> {
        let user = User::from_name(name)
            .map_err(|e| format!("looking up OS user {name:?}: {e}"))?
            .ok_or_else(|| format!("OS user {name:?} does not exist (create it or set os_user)"))?;
        let me = Uid::effective();
        if user.uid.is_root() {
            return Err(
                "os_user is root, but PostgreSQL refuses to run as root: set os_user to \
                 the PostgreSQL owner (usually postgres)"
                    .to_string(),
            );
        }
        if !me.is_root() && me != user.uid {
            return Err(format!(
                "os_user is {name:?} but the agent runs as uid {me}: run the agent as root or as \
                 {name:?}, or set os_user to the agent's own user"
            ));
        }
        Ok(OsUser {
            name: name.to_string(),
            uid: user.uid.as_raw(),
            gid: user.gid.as_raw(),
            switch: me.is_root(),
            home: user.dir,
        })
    }

    /// The OS user this process runs as (for the lab run by an ordinary user).
    pub fn current() -> Result<OsUser, String> {
        let uid = Uid::effective();
        let user = User::from_uid(uid)
            .map_err(|e| format!("looking up uid {uid}: {e}"))?
            .ok_or_else(|| format!("uid {uid} has no user name"))?;
        OsUser::lookup(&user.name)
    }

    /// A command that runs `program` as this user.
    pub fn command(&self, program: impl AsRef<Path>) -> tokio::process::Command {
        tokio::process::Command::from(self.std_command(program))
    }

    /// The same, as a `std::process::Command` (to be run from a thread of one's choosing).
    pub fn std_command(&self, program: impl AsRef<Path>) -> std::process::Command {
        use std::os::unix::process::CommandExt as _;
        let mut cmd = std::process::Command::new(program.as_ref());
        if self.switch {
            // std drops root's supplementary groups (setgroups) before switching. The
            // environment follows the user: libpq run with root's HOME tries to read
            // /root/.postgresql/postgresql.crt and fails on the permission.
            cmd.uid(self.uid)
                .gid(self.gid)
                .env("HOME", &self.home)
                .env("USER", &self.name)
                .env("LOGNAME", &self.name);
        }
        cmd.env_remove("PGPASSWORD");
        cmd
    }

    /// Whether this user can read `file`: every directory above it lets it through and
    /// the file lets it read (always, when the agent runs as this user). The error says
    /// which directory or file is in the way, and the fix.
    pub fn can_read(&self, file: &Path) -> Result<(), String> {
        use std::os::unix::fs::MetadataExt;
        if !self.switch {
            return Ok(());
        }
        let allowed = |meta: &std::fs::Metadata, bits: u32| {
            let mode = meta.mode();
            if meta.uid() == self.uid {
                mode & (bits << 6) != 0
            } else if meta.gid() == self.gid {
                mode & (bits << 3) != 0
            } else {
                mode & bits != 0
            }
        };
        for dir in file
            .ancestors()
            .skip(1)
            .filter(|d| !d.as_os_str().is_empty())
        {
            let Ok(meta) = std::fs::metadata(dir) else {
                continue;
            };
            if !allowed(&meta, 0o1) {
                return Err(format!(
                    "{} (mode {:o}) does not let {} through to {} (chmod o+x {}, as pgfm \
                     init's instructions and the package make /etc/pgfm: mode 711)",
                    dir.display(),
                    meta.mode() & 0o7777,
                    self.name,
                    file.display(),
                    dir.display()
                ));
            }
        }
        match std::fs::metadata(file) {
            Ok(meta) if !allowed(&meta, 0o4) => Err(format!(
                "{} is not readable by {} (chown {} {})",
                file.display(),
                self.name,
                self.name,
                file.display()
            )),
            _ => Ok(()),
        }
    }

    /// Give `path` to this user (a no-op unless the agent runs as root).
    pub fn own(&self, path: &Path) -> std::io::Result<()> {
        if self.switch {
            nix::unistd::chown(
                path,
                Some(Uid::from_raw(self.uid)),
                Some(Gid::from_raw(self.gid)),
            )?;
        }
        Ok(())
    }

    /// Create `dir` (and parents) owned by this user with mode 0700, as PostgreSQL wants.
    pub fn make_private_dir(&self, dir: &Path) -> std::io::Result<()> {
        std::fs::create_dir_all(dir)?;
        self.own(dir)?;
        std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o700))
    }

    /// Write a file PostgreSQL will read, owned by this user.
    pub fn write_file(&self, path: &Path, contents: &str, mode: u32) -> std::io::Result<()> {
        let tmp = path.with_extension("pgfm-tmp");
        std::fs::write(&tmp, contents)?;
        std::fs::set_permissions(&tmp, std::fs::Permissions::from_mode(mode))?;
        self.own(&tmp)?;
        std::fs::rename(&tmp, path)
    }
}

/// Write a secret to a new file `path`, mode 600 from its first byte on, owned by `owner`
/// if given (the passfile PostgreSQL's tools read, a password for initdb).
pub fn write_private(path: &Path, contents: &str, owner: Option<&OsUser>) -> anyhow::Result<()> {
    use anyhow::Context as _;
    use std::io::Write as _;
    use std::os::unix::fs::OpenOptionsExt as _;
    let mut file = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(path)
        .with_context(|| format!("creating {}", path.display()))?;
    file.write_all(contents.as_bytes())
        .with_context(|| format!("writing {}", path.display()))?;
    if let Some(user) = owner {
        user.own(path)
            .with_context(|| format!("giving {} to {}", path.display(), user.name))?;
    }
    Ok(())
}
