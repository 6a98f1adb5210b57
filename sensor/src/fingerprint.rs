//! Keyed fingerprints of secret material: `hmac-sha256:<64 hex>` = HMAC-SHA256(key, secret).
//!
//! Equal secrets get equal fingerprints on every host that shares the key, so a fleet can see one
//! credential used in many places (OWASP NHI8/NHI9) without any host shipping it. Without the key
//! a fingerprint cannot be reversed or even confirmed by guessing, which a plain hash of a
//! low-entropy secret would allow. Operators must distribute **the same key file to every host of
//! one deployment** (and keep it as secret as the credentials: with it, a guessed secret can be
//! confirmed); different deployments should use different keys so their fingerprints do not
//! correlate.

use std::{
    fs,
    io::{Read as _, Write as _},
    os::unix::fs::{MetadataExt as _, OpenOptionsExt as _},
    path::Path,
};

use anyhow::{Context as _, bail};
use hmac::{Hmac, Mac as _};
use sha2::Sha256;

use crate::secret::Secret;

/// Where the key lives unless `--fingerprint-key-file` says otherwise: the sensor's state
/// directory, root-owned, created on first start.
pub const DEFAULT_KEY_FILE: &str = "/var/lib/nhi-sensor/fingerprint.key";
/// Bytes of a generated key: 32 bytes is HMAC-SHA256's block-size-independent security level.
const KEY_BYTES: usize = 32;
/// A shorter key file is refused: 16 bytes is the least that still resists brute force.
const MIN_KEY_BYTES: usize = 16;

#[derive(Debug)]
pub struct FingerprintKey(Secret);

impl FingerprintKey {
    /// Reads the key file, or creates it (mode 0600, random bytes) when it does not exist.
    pub fn load_or_create(path: &Path) -> anyhow::Result<Self> {
        match fs::symlink_metadata(path) {
            Ok(meta) => {
                if !meta.is_file() {
                    bail!("fingerprint key {} is not a regular file", path.display());
                }
                if meta.mode() & 0o077 != 0 {
                    tracing::warn!(
                        path = %path.display(),
                        mode = format!("0{:o}", meta.mode() & 0o7777),
                        "the fingerprint key is readable by group or others; chmod 600 it"
                    );
                }
                let mut buf = Vec::new();
                fs::File::open(path)
                    .and_then(|f| f.take(4096).read_to_end(&mut buf))
                    .with_context(|| format!("reading fingerprint key {}", path.display()))?;
                if buf.len() < MIN_KEY_BYTES {
                    bail!(
                        "fingerprint key {} has {} bytes; at least {MIN_KEY_BYTES} are needed",
                        path.display(),
                        buf.len()
                    );
                }
                Ok(Self(Secret::new(buf)))
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                if let Some(dir) = path.parent() {
                    fs::create_dir_all(dir)
                        .with_context(|| format!("creating {}", dir.display()))?;
                }
                let mut key = vec![0u8; KEY_BYTES];
                getrandom(&mut key)?;
                let mut f = fs::OpenOptions::new()
                    .write(true)
                    .create_new(true)
                    .mode(0o600)
                    .open(path)
                    .with_context(|| format!("creating fingerprint key {}", path.display()))?;
                f.write_all(&key)
                    .and_then(|()| f.sync_all())
                    .with_context(|| format!("writing fingerprint key {}", path.display()))?;
                tracing::info!(
                    path = %path.display(),
                    "created a new fingerprint key; copy it to every host of this deployment"
                );
                Ok(Self(Secret::new(key)))
            }
            Err(e) => {
                Err(e).with_context(|| format!("checking fingerprint key {}", path.display()))
            }
        }
    }

    #[cfg(test)]
    pub fn for_tests(key: &[u8]) -> Self {
        Self(Secret::new(key.to_vec()))
    }

    pub fn fingerprint(&self, material: &[u8]) -> String {
        let mut mac = Hmac::<Sha256>::new_from_slice(self.0.expose())
            .expect("HMAC accepts keys of any length");
        mac.update(material);
        let out = mac.finalize().into_bytes();
        let mut s = String::with_capacity(12 + 64);
        s.push_str("hmac-sha256:");
        for b in out {
            s.push_str(&format!("{b:02x}"));
        }
        s
    }
}

fn getrandom(buf: &mut [u8]) -> anyhow::Result<()> {
    let mut filled = 0;
    while filled < buf.len() {
        // SAFETY: writes at most `len - filled` bytes into our buffer.
        let n =
            unsafe { libc::getrandom(buf[filled..].as_mut_ptr().cast(), buf.len() - filled, 0) };
        if n < 0 {
            let e = std::io::Error::last_os_error();
            if e.kind() == std::io::ErrorKind::Interrupted {
                continue;
            }
            return Err(e).context("getrandom");
        }
        filled += n as usize;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn equal_in_equal_out_and_keyed() {
        let k = FingerprintKey::for_tests(b"0123456789abcdef");
        let a = k.fingerprint(b"secret");
        assert_eq!(a, k.fingerprint(b"secret"));
        assert_ne!(a, k.fingerprint(b"secret2"));
        assert!(a.starts_with("hmac-sha256:") && a.len() == 12 + 64);
        let other = FingerprintKey::for_tests(b"fedcba9876543210");
        assert_ne!(a, other.fingerprint(b"secret"));
        assert!(!format!("{k:?}").contains("0123"));
    }

    #[test]
    fn key_file_is_created_private_and_reused() {
        let dir = std::env::temp_dir().join(format!("nhi-fpkey-{}", std::process::id()));
        let path = dir.join("sub/fp.key");
        let _ = fs::remove_dir_all(&dir);
        let k1 = FingerprintKey::load_or_create(&path).unwrap();
        assert_eq!(fs::metadata(&path).unwrap().mode() & 0o777, 0o600);
        let k2 = FingerprintKey::load_or_create(&path).unwrap();
        assert_eq!(k1.fingerprint(b"x"), k2.fingerprint(b"x"));
        fs::write(&path, b"short").unwrap();
        assert!(FingerprintKey::load_or_create(&path).is_err());
        let _ = fs::remove_dir_all(&dir);
    }
}
