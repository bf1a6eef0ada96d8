//! Pulling an image: what to ask the daemon for, how far the pull got from its messages, and
//! which registry to name when it fails. Pure functions, unit-tested on the daemon's words.

use std::collections::BTreeMap;

/// How far a pull got: layers seen and finished, bytes downloaded of those known.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct PullProgress {
    pub layers: usize,
    pub layers_done: usize,
    pub bytes: u64,
    pub bytes_total: u64,
}

#[derive(Debug, Default)]
struct Layer {
    current: u64,
    total: u64,
    done: bool,
}

/// Follows the daemon's per-layer messages ("Pulling fs layer", "Downloading" with a byte
/// count, "Download complete", "Extracting", "Pull complete", "Already exists").
#[derive(Debug, Default)]
pub struct PullTracker {
    layers: BTreeMap<String, Layer>,
}

impl PullTracker {
    /// Takes one message in; returns the progress so far.
    pub fn apply(
        &mut self,
        id: Option<&str>,
        status: &str,
        current: Option<i64>,
        total: Option<i64>,
    ) -> PullProgress {
        // Messages without a layer ("Digest: …", "Status: …") and the opening "Pulling from
        // <repository>" (whose id is the tag) say nothing about layers.
        if let Some(id) = id.filter(|_| !status.starts_with("Pulling from")) {
            let layer = self.layers.entry(id.to_string()).or_default();
            let bytes = |n: Option<i64>| n.and_then(|n| u64::try_from(n).ok());
            match status {
                "Downloading" => {
                    layer.total = bytes(total).unwrap_or(layer.total);
                    layer.current = bytes(current).unwrap_or(layer.current).min(layer.total);
                }
                "Verifying Checksum" | "Download complete" | "Extracting" => {
                    layer.current = layer.total;
                }
                "Pull complete" | "Already exists" => {
                    layer.current = layer.total;
                    layer.done = true;
                }
                _ => {}
            }
        }
        self.progress()
    }

    pub fn progress(&self) -> PullProgress {
        PullProgress {
            layers: self.layers.len(),
            layers_done: self.layers.values().filter(|l| l.done).count(),
            bytes: self.layers.values().map(|l| l.current).sum(),
            bytes_total: self.layers.values().map(|l| l.total).sum(),
        }
    }
}

/// The repository and the tag (or digest) to ask the daemon for: an image named without
/// either means `latest`, as `docker pull` has it (the API would pull every tag instead).
pub fn split_reference(image: &str) -> (&str, &str) {
    if let Some((name, digest)) = image.split_once('@') {
        return (name, digest);
    }
    let last = image.rfind('/').map_or(0, |i| i + 1);
    match image[last..].rfind(':') {
        Some(i) => (&image[..last + i], &image[last + i + 1..]),
        None => (image, "latest"),
    }
}

/// The registry an image comes from: its first component when that names a host (has a `.`
/// or a `:`, or is `localhost`), else Docker Hub.
pub fn registry(image: &str) -> &str {
    match image.split_once('/') {
        Some((first, _)) if first.contains(['.', ':']) || first == "localhost" => first,
        _ => "docker.io",
    }
}

/// Whether the daemon's error says the registry could not be reached at all (rather than
/// that it answered "no").
pub fn unreachable_registry(message: &str) -> bool {
    const SIGNS: &[&str] = &[
        "connection refused",
        "no such host",
        "i/o timeout",
        "network is unreachable",
        "no route to host",
        "server misbehaving",
        "tls handshake timeout",
        "connection reset",
        "request canceled while waiting for connection",
        "dial tcp",
    ];
    let message = message.to_lowercase();
    SIGNS.iter().any(|s| message.contains(s))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn references_get_a_tag() {
        assert_eq!(
            split_reference("postgres:17-alpine"),
            ("postgres", "17-alpine")
        );
        assert_eq!(split_reference("postgres"), ("postgres", "latest"));
        assert_eq!(
            split_reference("127.0.0.1:5000/velo-test/postgres:17"),
            ("127.0.0.1:5000/velo-test/postgres", "17")
        );
        assert_eq!(
            split_reference("127.0.0.1:5000/velo-test/postgres"),
            ("127.0.0.1:5000/velo-test/postgres", "latest")
        );
        assert_eq!(
            split_reference("postgres@sha256:abcd"),
            ("postgres", "sha256:abcd")
        );
    }

    #[test]
    fn registries() {
        assert_eq!(registry("postgres:17"), "docker.io");
        assert_eq!(registry("library/postgres:17"), "docker.io");
        assert_eq!(registry("127.0.0.1:5999/x/y:1"), "127.0.0.1:5999");
        assert_eq!(registry("ghcr.io/a/b"), "ghcr.io");
        assert_eq!(registry("localhost/a"), "localhost");
    }

    #[test]
    fn unreachable_or_refused() {
        assert!(unreachable_registry(
            "Get \"https://127.0.0.1:5999/v2/\": dial tcp 127.0.0.1:5999: connect: connection refused"
        ));
        assert!(unreachable_registry(
            "Get \"https://registry-1.docker.io/v2/\": dial tcp: lookup registry-1.docker.io on 127.0.0.53:53: server misbehaving"
        ));
        assert!(!unreachable_registry(
            "manifest for 127.0.0.1:5000/velo-test/postgres:99 not found: manifest unknown: manifest unknown"
        ));
        assert!(!unreachable_registry(
            "pull access denied for velo-test/nope, repository does not exist or may require 'docker login'"
        ));
    }

    #[test]
    fn progress_from_the_daemons_messages() {
        let mut t = PullTracker::default();
        t.apply(Some("17"), "Pulling from velo-test/postgres", None, None);
        t.apply(Some("aaa"), "Pulling fs layer", None, None);
        t.apply(Some("bbb"), "Already exists", None, None);
        let p = t.apply(Some("aaa"), "Downloading", Some(400), Some(1000));
        assert_eq!(
            p,
            PullProgress {
                layers: 2,
                layers_done: 1,
                bytes: 400,
                bytes_total: 1000
            }
        );
        t.apply(Some("aaa"), "Download complete", None, None);
        t.apply(Some("aaa"), "Extracting", Some(10), Some(1000));
        let p = t.apply(Some("aaa"), "Pull complete", None, None);
        assert_eq!((p.layers_done, p.bytes, p.bytes_total), (2, 1000, 1000));
        let p = t.apply(None, "Status: Downloaded newer image", None, None);
        assert_eq!(p.layers, 2);
        // Nonsense numbers are ignored, not trusted.
        let p = t.apply(Some("ccc"), "Downloading", Some(-5), Some(-1));
        assert_eq!(p.bytes_total, 1000);
    }
}
