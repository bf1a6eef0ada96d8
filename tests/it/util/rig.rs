//! What `scripts/rig-up.sh` prepared and which part of it a test run uses: the backend
//! (`VELO_TEST_BACKEND`), the PostgreSQL major (`VELO_TEST_PG`), the pool, the images, the
//! test user's directories and the PostgreSQL binaries. `scripts/test.sh` sets them all.

use std::path::PathBuf;
use std::process::Command;

/// The storage and runtime a suite runs velo on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Backend {
    /// ZFS datasets (zfs-fuse) served by Docker containers, as root.
    ZfsDocker,
    /// Btrfs subvolumes served by the host's PostgreSQL, as the test user.
    BtrfsNative,
    /// Reflinked trees on XFS served by the host's PostgreSQL, as the test user.
    ReflinkNative,
    /// Plain copies on ext4 served by the host's PostgreSQL, as the test user.
    CopyNative,
}

impl Backend {
    pub const ALL: [Backend; 4] = [
        Backend::ZfsDocker,
        Backend::BtrfsNative,
        Backend::ReflinkNative,
        Backend::CopyNative,
    ];

    /// The suite's backend, from `VELO_TEST_BACKEND` (default `zfs-docker`).
    pub fn from_env() -> Backend {
        let Ok(name) = std::env::var("VELO_TEST_BACKEND") else {
            return Backend::ZfsDocker;
        };
        Backend::ALL
            .into_iter()
            .find(|b| b.name() == name)
            .unwrap_or_else(|| {
                let names: Vec<_> = Backend::ALL.iter().map(|b| b.name()).collect();
                panic!(
                    "VELO_TEST_BACKEND={name} is not a backend: use one of {}",
                    names.join(", ")
                )
            })
    }

    pub fn name(self) -> &'static str {
        match self {
            Backend::ZfsDocker => "zfs-docker",
            Backend::BtrfsNative => "btrfs-native",
            Backend::ReflinkNative => "reflink-native",
            Backend::CopyNative => "copy-native",
        }
    }

    /// Whether velo runs servers from the host's binaries, as the test user.
    pub fn is_native(self) -> bool {
        self != Backend::ZfsDocker
    }

    /// `--storage`.
    pub fn storage(self) -> &'static str {
        match self {
            Backend::ZfsDocker => "zfs",
            Backend::BtrfsNative => "btrfs",
            Backend::ReflinkNative => "reflink",
            Backend::CopyNative => "copy",
        }
    }

    /// The variable naming the test user's directory on this backend's file system.
    pub fn dir_var(self) -> Option<&'static str> {
        match self {
            Backend::ZfsDocker => None,
            Backend::BtrfsNative => Some("VELO_TEST_BTRFS_DIR"),
            Backend::ReflinkNative => Some("VELO_TEST_XFS_DIR"),
            Backend::CopyNative => Some("VELO_TEST_EXT4_DIR"),
        }
    }
}

/// The PostgreSQL major the suite runs (`VELO_TEST_PG`, default 17).
pub fn suite_major() -> u32 {
    match std::env::var("VELO_TEST_PG") {
        Ok(v) => v
            .parse()
            .unwrap_or_else(|_| panic!("VELO_TEST_PG={v} is not a major version such as 17")),
        Err(_) => 17,
    }
}

/// A variable `scripts/test.sh` sets; missing is a hard failure: these tests must run against
/// the real rig.
pub fn var(name: &str) -> String {
    std::env::var(name).unwrap_or_else(|_| {
        panic!("{name} is not set: run the integration tests through scripts/test.sh, which sets up the rig")
    })
}

/// The pool and images `scripts/rig-up.sh` prepared.
#[derive(Debug, Clone)]
pub struct Rig {
    pub pool: String,
    /// The image of the sandbox's major (Docker backends).
    pub image: String,
}

impl Rig {
    pub fn for_major(major: u32) -> Rig {
        Rig {
            pool: var("VELO_TEST_POOL"),
            image: image_for(major),
        }
    }
}

/// `velo-test/postgres:<major>`, or `VELO_TEST_IMAGE` for the suite's own major.
pub fn image_for(major: u32) -> String {
    match std::env::var("VELO_TEST_IMAGE") {
        Ok(image) if major == suite_major() => image,
        _ => format!("velo-test/postgres:{major}"),
    }
}

/// The directory of PostgreSQL server binaries by major (`VELO_PG_ROOT`: `<major>/bin`).
pub fn pg_root() -> PathBuf {
    PathBuf::from(var("VELO_PG_ROOT"))
}

/// A user of the host, as tests run velo as them.
#[derive(Debug, Clone)]
pub struct User {
    pub name: String,
    pub uid: u32,
    pub gid: u32,
    pub home: PathBuf,
}

impl User {
    /// The rig's non-root test user (`VELO_TEST_USER`, made by rig-up).
    pub fn test_user() -> User {
        User::named(&std::env::var("VELO_TEST_USER").unwrap_or_else(|_| "velo-ci".into()))
    }

    /// A user from the password database.
    pub fn named(name: &str) -> User {
        let out = Command::new("getent")
            .args(["passwd", name])
            .output()
            .expect("getent runs");
        let line = String::from_utf8_lossy(&out.stdout).trim().to_string();
        match line.split(':').collect::<Vec<_>>().as_slice() {
            [_, _, uid, gid, _, home, _] => User {
                name: name.to_string(),
                uid: uid.parse().expect("a numeric uid"),
                gid: gid.parse().expect("a numeric gid"),
                home: PathBuf::from(home),
            },
            _ => panic!("no user {name} (getent passwd said {line:?}): run scripts/rig-up.sh"),
        }
    }

    /// `setpriv` as this user, with a clean environment holding only `env`.
    pub fn command(&self, program: &std::path::Path, env: &[(String, String)]) -> Command {
        let mut cmd = Command::new("setpriv");
        cmd.args([
            "--reuid",
            &self.name,
            "--regid",
            &self.name,
            "--init-groups",
        ])
        .arg(program)
        .env_clear()
        .env("HOME", &self.home)
        .env("USER", &self.name)
        .env("LOGNAME", &self.name)
        .env("PATH", "/usr/local/bin:/usr/bin:/bin")
        .env("LANG", "C.UTF-8");
        for (k, v) in env {
            cmd.env(k, v);
        }
        cmd
    }

    /// Gives `path` to this user, mode 0700.
    pub fn own(&self, path: &std::path::Path) {
        use std::os::unix::fs::PermissionsExt;
        std::os::unix::fs::chown(path, Some(self.uid), Some(self.gid)).expect("chown");
        std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o700)).expect("chmod");
    }
}

/// Held while a test changes the host's user database (`useradd`, `userdel`, or `velo setup`
/// adding a user to a group): those tools lock `/etc/passwd` and `/etc/group` and fail, not
/// wait, when another holds the lock.
pub fn user_database() -> std::sync::MutexGuard<'static, ()> {
    static LOCK: std::sync::Mutex<()> = std::sync::Mutex::new(());
    LOCK.lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
}
