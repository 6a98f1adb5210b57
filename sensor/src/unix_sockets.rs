//! Watched Unix sockets: the local endpoints through which a process obtains an identity or
//! controls workloads — the SPIFFE workload API (SPIRE agent) and container-runtime sockets,
//! which are credential-equivalent. A `connect` to one of them is reported with the caller's
//! full context; connects to any other Unix socket never leave the kernel.

use std::{os::unix::ffi::OsStrExt as _, path::PathBuf};

use anyhow::{Context as _, bail};
use aya::{
    Ebpf,
    maps::{Array, HashMap, MapData},
};
use sensor_common::{Setting, UNIX_PATH_LEN, UnixPathKey};

use crate::endpoints::CredentialEndpoint;

/// `sizeof(sun_path)`: longer paths cannot be connected to.
const SUN_PATH_MAX: usize = 108;

/// Default sockets, both spellings where `/var/run` is the usual symlink to `/run` (the kernel
/// sees the path as the process passed it).
const BUILTIN: &[(&str, &str, &str)] = &[
    // SPIRE agent defaults (NHI-REFERENCE.md, "SPIFFE").
    (
        "/tmp/spire-agent/public/api.sock",
        "spiffe_workload_api",
        "spire_agent",
    ),
    (
        "/run/spire/sockets/agent.sock",
        "spiffe_workload_api",
        "spire_agent",
    ),
    (
        "/var/run/spire/sockets/agent.sock",
        "spiffe_workload_api",
        "spire_agent",
    ),
    ("/var/run/docker.sock", "container_runtime", "docker"),
    ("/run/docker.sock", "container_runtime", "docker"),
    (
        "/run/containerd/containerd.sock",
        "container_runtime",
        "containerd",
    ),
    (
        "/var/run/containerd/containerd.sock",
        "container_runtime",
        "containerd",
    ),
    ("/run/crio/crio.sock", "container_runtime", "cri-o"),
    ("/var/run/crio/crio.sock", "container_runtime", "cri-o"),
    ("/run/podman/podman.sock", "container_runtime", "podman"),
];

#[derive(Clone, Debug)]
struct Watched {
    path: Vec<u8>,
    endpoint: CredentialEndpoint,
}

#[derive(Clone, Debug, Default)]
pub struct UnixSockets {
    sockets: Vec<Watched>,
}

impl UnixSockets {
    /// `watch`: sockets to report (`--watch-socket`); `spiffe`: SPIFFE workload API sockets
    /// (`--spiffe-socket`, e.g. the path in `SPIFFE_ENDPOINT_SOCKET`); `defaults`: the built-in
    /// list above.
    pub fn new(watch: &[PathBuf], spiffe: &[PathBuf], defaults: bool) -> anyhow::Result<Self> {
        let mut sockets = Vec::new();
        let mut add = |path: &[u8], kind: &'static str, service: &'static str| {
            if path.is_empty() || path.len() > SUN_PATH_MAX || path.contains(&0) {
                bail!(
                    "Unix socket path {:?} must be 1 to {SUN_PATH_MAX} bytes without NUL",
                    String::from_utf8_lossy(path)
                );
            }
            if !sockets.iter().any(|w: &Watched| w.path == path) {
                sockets.push(Watched {
                    path: path.to_vec(),
                    endpoint: CredentialEndpoint { kind, service },
                });
            }
            Ok(())
        };
        for p in spiffe {
            add(
                p.as_os_str().as_bytes(),
                "spiffe_workload_api",
                "configured",
            )?;
        }
        for p in watch {
            add(p.as_os_str().as_bytes(), "watched_socket", "configured")?;
        }
        if defaults {
            for (path, kind, service) in BUILTIN {
                add(path.as_bytes(), kind, service)?;
            }
        }
        Ok(Self { sockets })
    }

    /// What the socket at `path` (as passed to connect) is.
    pub fn classify(&self, path: &[u8]) -> Option<CredentialEndpoint> {
        self.sockets
            .iter()
            .find(|w| w.path == path)
            .map(|w| w.endpoint.clone())
    }

    /// Loads the paths into `WATCH_SOCKETS` and their count into `SETTINGS`.
    /// Loads these sockets into the kernel in place of `old`'s (inserting before removing).
    pub fn replace(&self, old: &UnixSockets, ebpf: &mut Ebpf) -> anyhow::Result<()> {
        let key_of = |path: &[u8]| {
            let mut key = [0u8; UNIX_PATH_LEN];
            key[..path.len()].copy_from_slice(path);
            key
        };
        {
            let mut map: HashMap<&mut MapData, UnixPathKey, u32> =
                HashMap::try_from(ebpf.map_mut("WATCH_SOCKETS").context("WATCH_SOCKETS map")?)?;
            for (id, w) in self.sockets.iter().enumerate() {
                map.insert(key_of(&w.path), id as u32, 0)
                    .context("inserting a watched Unix socket")?;
            }
            for w in old
                .sockets
                .iter()
                .filter(|o| !self.sockets.iter().any(|n| n.path == o.path))
            {
                map.remove(&key_of(&w.path))
                    .context("removing a watched Unix socket")?;
            }
        }
        let mut settings: Array<&mut MapData, u32> =
            Array::try_from(ebpf.map_mut("SETTINGS").context("SETTINGS map")?)?;
        settings.set(Setting::UnixSockets as u32, self.sockets.len() as u32, 0)?;
        tracing::info!(
            sockets = self.sockets.len(),
            "watched Unix sockets loaded into the kernel"
        );
        Ok(())
    }
}

/// A Unix socket path for display: abstract sockets (leading NUL) as `@name`.
pub fn display_path(raw: &[u8]) -> (Vec<u8>, bool) {
    match raw.split_first() {
        Some((0, name)) => {
            let mut shown = vec![b'@'];
            shown.extend_from_slice(name);
            (shown, true)
        }
        _ => (raw.to_vec(), false),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn builtin_and_configured_sockets_classify() {
        let s = UnixSockets::new(
            &[PathBuf::from("/srv/app.sock")],
            &[PathBuf::from("/run/spire/custom.sock")],
            true,
        )
        .unwrap();
        assert_eq!(
            s.classify(b"/run/containerd/containerd.sock")
                .unwrap()
                .service,
            "containerd"
        );
        assert_eq!(
            s.classify(b"/run/spire/custom.sock").unwrap().kind,
            "spiffe_workload_api"
        );
        assert_eq!(s.classify(b"/srv/app.sock").unwrap().kind, "watched_socket");
        assert!(s.classify(b"/run/dbus/system_bus_socket").is_none());
    }

    #[test]
    fn hostile_paths_are_refused() {
        let long = PathBuf::from(format!("/{}", "x".repeat(200)));
        assert!(UnixSockets::new(&[long], &[], false).is_err());
        assert!(UnixSockets::new(&[PathBuf::from("")], &[], false).is_err());
    }

    #[test]
    fn abstract_sockets_display_with_at() {
        assert_eq!(display_path(b"\0hidden"), (b"@hidden".to_vec(), true));
        assert_eq!(
            display_path(b"/run/x.sock"),
            (b"/run/x.sock".to_vec(), false)
        );
    }
}
