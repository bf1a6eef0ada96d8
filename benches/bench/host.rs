//! The host: shell commands, what the machine is, and the space of a file system.

use std::collections::BTreeMap;
use std::path::Path;
use std::process::Command;
use std::time::Duration;

use anyhow::{Context as _, Result, bail};

/// Runs a shell command; its trimmed stdout, or "" if it could not run. For the machine's
/// description and best-effort cleanup, where a failure is worth no more than an empty answer.
pub fn sh(cmd: &str) -> String {
    Command::new("sh")
        .args(["-c", cmd])
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_string())
        .unwrap_or_default()
}

/// Runs a program that must succeed; its trimmed stdout.
pub fn run(program: &str, args: &[&str]) -> Result<String> {
    let out = Command::new(program)
        .args(args)
        .output()
        .with_context(|| format!("running {program}"))?;
    if !out.status.success() {
        bail!(
            "{program} {} failed: {}",
            args.join(" "),
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    Ok(String::from_utf8_lossy(&out.stdout).trim().to_string())
}

/// Bytes in use on the file system holding `dir`, after its pending writes are committed
/// (`sync -f`; on Btrfs that ends the transaction, so its space accounting is current).
pub fn fs_used(dir: &Path) -> Result<f64> {
    let d = dir.display().to_string();
    run("sync", &["-f", &d])?;
    let (total, free, block) = statfs(&d)?;
    Ok((total - free) * block)
}

/// Bytes available to root on the file system holding `path`.
pub fn fs_free(path: &str) -> Result<f64> {
    let (_, free, block) = statfs(path)?;
    Ok(free * block)
}

/// Total and free blocks, and the block size.
fn statfs(path: &str) -> Result<(f64, f64, f64)> {
    let text = run("stat", &["-f", "-c", "%b %f %S", path])?;
    let n: Vec<f64> = text
        .split_whitespace()
        .map(str::parse)
        .collect::<Result<_, _>>()
        .with_context(|| format!("stat -f {path}: `{text}`"))?;
    match n[..] {
        [total, free, block] => Ok((total, free, block)),
        _ => bail!("stat -f {path}: `{text}`"),
    }
}

/// Where a loop-mounted file system keeps its image: the backing file of the device mounted
/// at (or above) `dir`, if it is a loop device.
pub fn backing_file(dir: &Path) -> Option<String> {
    let d = dir.display().to_string();
    let source = run("findmnt", &["-n", "-o", "SOURCE", "--target", &d]).ok()?;
    let back = run("losetup", &["-n", "-O", "BACK-FILE", &source]).ok()?;
    (!back.is_empty()).then_some(back)
}

/// Gives a loop-mounted file system's freed blocks back to the file under it (the images are
/// sparse), so that the root file system gets its space back between sizes.
pub fn trim(dir: &Path) {
    let d = dir.display().to_string();
    sh(&format!(
        "fstrim \"$(findmnt -n -o TARGET --target '{d}')\""
    ));
}

/// Cores, memory, kernel, ZFS and Docker of this machine, and what else was running.
pub fn machine() -> BTreeMap<&'static str, String> {
    BTreeMap::from([
        ("cores", sh("nproc")),
        (
            "cpu",
            sh("grep -m1 'model name' /proc/cpuinfo | cut -d: -f2"),
        ),
        ("memory", sh("free -h | awk '/^Mem:/ { print $2 }'")),
        ("kernel", sh("uname -sr")),
        (
            "zfs",
            sh(
                "if command -v zfs-fuse >/dev/null; then echo \"zfs-fuse $(dpkg-query -W -f='${Version}' zfs-fuse 2>/dev/null)\"; else zfs version 2>/dev/null | head -1; fi",
            ),
        ),
        (
            "docker",
            sh(
                "docker version --format 'client {{.Client.Version}}, server {{.Server.Version}} (API {{.Server.APIVersion}})'",
            ),
        ),
        (
            "postgresql (native)",
            sh("/usr/lib/postgresql/15/bin/postgres --version"),
        ),
        ("load average at start", sh("cut -d' ' -f1-3 /proc/loadavg")),
        ("other containers at start", sh("docker ps -q | wc -l")),
    ])
}

/// `zfs destroy -r`, unmounting first: zfs-fuse calls a mounted dataset busy, and may do so
/// for a moment after its last user went away.
pub fn zfs_destroy(dataset: &str) -> Result<()> {
    for _ in 0..20 {
        sh(&format!("zfs unmount {dataset} 2>/dev/null"));
        if run("zfs", &["destroy", "-r", dataset]).is_ok() {
            return Ok(());
        }
        std::thread::sleep(Duration::from_millis(500));
    }
    bail!("cannot destroy {dataset}: zfs says it is busy")
}
