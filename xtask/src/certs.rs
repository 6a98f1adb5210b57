//! A test PKI: `cargo xtask certs [--out DIR]` (default `target/certs`), or
//! [`generate`] from a test (`xtask` is a dev-dependency of the test crate).
//!
//! **These are TEST certificates for local use and the test suite only.** Every key is generated
//! on this machine, stored unencrypted, and the CA key lies next to the keys it signed, so anyone
//! who can read the directory can mint certificates. In production, bring your own PKI: issue the
//! collector's and the sensors' certificates from your organisation's CA, e.g. with cert-manager
//! in Kubernetes or as SPIRE X.509-SVIDs (short-lived and rotated for you), and point the
//! collector and the sensors at those files.
//!
//! What [`generate`] writes (keys PKCS#8 PEM, mode 0600; certificates PEM, mode 0644; every key
//! ECDSA P-256):
//!
//! | files                               | what                                                  |
//! |-------------------------------------|-------------------------------------------------------|
//! | `ca.pem`, `ca.key`                  | the test CA, which signs the three certificates below |
//! | `collector.pem`, `collector.key`    | server (serverAuth), CN `nhi-collector`, SANs DNS `localhost`, `nhi-collector`, IP `127.0.0.1`, `::1` |
//! | `sensor.pem`, `sensor.key`          | client (clientAuth), CN and SAN DNS `sensor-test`     |
//! | `subscriber.pem`, `subscriber.key`  | client (clientAuth), CN and SAN DNS `subscriber-test` |
//! | `other-ca.pem`                      | a second CA, unrelated to the first                   |
//! | `rogue.pem`, `rogue.key`            | client (clientAuth), CN `rogue-test`, signed by `other-ca`: a server trusting `ca.pem` must refuse it |
//!
//! Idempotent: when every file is there and every certificate stays valid for more than a day,
//! nothing is rewritten. Otherwise all of them are generated again (a new CA means new leaves).
//! Concurrent callers (parallel tests, several test binaries) are serialized by a lock file in the
//! directory, so they never see a CA that does not match its leaves.

use std::{
    fs::{self, File, OpenOptions},
    io::Write as _,
    os::unix::fs::OpenOptionsExt as _,
    path::Path,
    time::Duration,
};

use anyhow::Context as _;
use rcgen::{
    BasicConstraints, CertificateParams, CertifiedIssuer, DistinguishedName, DnType,
    ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair, KeyUsagePurpose,
};
use time::{Date, Month, OffsetDateTime};

/// Long enough that a developer's `target/certs` does not expire under them; short enough that a
/// copied test key is not good forever.
const VALIDITY: Duration = Duration::from_secs(365 * 24 * 3600);
/// Certificates start this far in the past, so a peer whose clock lags a little accepts them.
const BACKDATE: Duration = Duration::from_secs(3600);
/// A PKI that expires sooner than this is regenerated: a test run must not see it expire.
const MIN_REMAINING: Duration = Duration::from_secs(24 * 3600);

/// Every certificate file; each has a `.key` beside it except `other-ca.pem`, whose key is not
/// kept (nothing more is signed with it).
const CERTS: &[&str] = &[
    "ca.pem",
    "collector.pem",
    "sensor.pem",
    "subscriber.pem",
    "other-ca.pem",
    "rogue.pem",
];
const KEYS: &[&str] = &[
    "ca.key",
    "collector.key",
    "sensor.key",
    "subscriber.key",
    "rogue.key",
];

/// Writes the test PKI described in the module documentation into `out` (created if missing),
/// unless a complete one that stays valid for more than a day is already there. Prints what it
/// did on stderr.
pub fn generate(out: &Path) -> anyhow::Result<()> {
    fs::create_dir_all(out).with_context(|| format!("creating {}", out.display()))?;
    let lock = File::create(out.join(".lock"))
        .with_context(|| format!("creating {}", out.join(".lock").display()))?;
    lock.lock()
        .with_context(|| format!("locking {}", out.join(".lock").display()))?;

    let now = OffsetDateTime::now_utc();
    let why = match earliest_expiry(out) {
        Ok(expiry) if expiry > now + MIN_REMAINING => {
            eprintln!(
                "certs: {} already holds a valid test PKI (until {}), left as is",
                out.display(),
                expiry.date()
            );
            return Ok(());
        }
        Ok(expiry) => format!("it expires on {}", expiry.date()),
        Err(reason) => reason,
    };
    write_pki(out, now)?;
    eprintln!(
        "certs: wrote a new test PKI to {} (valid until {}; {why})",
        out.display(),
        (now + VALIDITY).date()
    );
    Ok(())
}

/// The earliest notAfter of the certificates in `out`, or why the directory does not hold a
/// complete PKI.
fn earliest_expiry(out: &Path) -> Result<OffsetDateTime, String> {
    if !CERTS.iter().chain(KEYS).any(|f| out.join(f).exists()) {
        return Err("there was none".to_string());
    }
    if let Some(missing) = KEYS.iter().find(|k| !out.join(k).is_file()) {
        return Err(format!("{missing} was missing"));
    }
    let mut earliest: Option<OffsetDateTime> = None;
    for name in CERTS {
        let text =
            fs::read_to_string(out.join(name)).map_err(|e| format!("{name} unreadable: {e}"))?;
        let der = pem::parse(text).map_err(|e| format!("{name} is not PEM: {e}"))?;
        let expiry =
            not_after(der.contents()).ok_or_else(|| format!("{name} is not a certificate"))?;
        earliest = Some(earliest.map_or(expiry, |e| e.min(expiry)));
    }
    earliest.ok_or_else(|| "no certificates".to_string())
}

fn write_pki(out: &Path, now: OffsetDateTime) -> anyhow::Result<()> {
    let not_before = now - BACKDATE;
    let not_after = now + VALIDITY;

    // `ca.pem` is removed first and written last: an interrupted run leaves no CA, so the next
    // one starts over instead of trusting leaves that the CA on disk did not sign.
    match fs::remove_file(out.join("ca.pem")) {
        Err(e) if e.kind() != std::io::ErrorKind::NotFound => {
            return Err(e).context("removing the old ca.pem");
        }
        _ => {}
    }

    let ca = new_ca("nhi-sensor test CA", not_before, not_after)?;
    let other_ca = new_ca("nhi-sensor unrelated test CA", not_before, not_after)?;
    use ExtendedKeyUsagePurpose::{ClientAuth, ServerAuth};
    let leaves = [
        Leaf {
            stem: "collector",
            issuer: &ca,
            cn: "nhi-collector",
            sans: &["localhost", "nhi-collector", "127.0.0.1", "::1"],
            eku: ServerAuth,
        },
        Leaf {
            stem: "sensor",
            issuer: &ca,
            cn: "sensor-test",
            sans: &["sensor-test"],
            eku: ClientAuth,
        },
        Leaf {
            stem: "subscriber",
            issuer: &ca,
            cn: "subscriber-test",
            sans: &["subscriber-test"],
            eku: ClientAuth,
        },
        Leaf {
            stem: "rogue",
            issuer: &other_ca,
            cn: "rogue-test",
            sans: &["rogue-test"],
            eku: ClientAuth,
        },
    ];
    for leaf in leaves {
        let Leaf {
            stem,
            issuer,
            cn,
            sans,
            eku,
        } = leaf;
        // Strings that parse as IP addresses become IP SANs, the others DNS SANs.
        let mut params =
            CertificateParams::new(sans.iter().map(|s| s.to_string()).collect::<Vec<_>>())
                .with_context(|| format!("SANs of {stem}"))?;
        params.distinguished_name = name(cn);
        params.is_ca = IsCa::ExplicitNoCa;
        params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
        params.extended_key_usages = vec![eku];
        params.use_authority_key_identifier_extension = true;
        params.not_before = not_before;
        params.not_after = not_after;
        let key = KeyPair::generate()?;
        let cert = params
            .signed_by(&key, issuer)
            .with_context(|| format!("signing {stem}"))?;
        write(
            &out.join(format!("{stem}.key")),
            &key.serialize_pem(),
            0o600,
        )?;
        write(&out.join(format!("{stem}.pem")), &cert.pem(), 0o644)?;
    }
    write(&out.join("other-ca.pem"), &other_ca.pem(), 0o644)?;
    write(&out.join("ca.key"), &ca.key().serialize_pem(), 0o600)?;
    write(&out.join("ca.pem"), &ca.pem(), 0o644)
}

/// An end-entity certificate to issue: `<stem>.pem` and `<stem>.key`.
struct Leaf<'a> {
    stem: &'a str,
    issuer: &'a Issuer<'a, KeyPair>,
    cn: &'a str,
    sans: &'a [&'a str],
    eku: ExtendedKeyUsagePurpose,
}

/// A self-signed CA that may sign end-entity certificates only (path length 0).
fn new_ca(
    cn: &str,
    not_before: OffsetDateTime,
    not_after: OffsetDateTime,
) -> anyhow::Result<CertifiedIssuer<'static, KeyPair>> {
    let mut params = CertificateParams::default();
    params.distinguished_name = name(cn);
    params.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
    params.key_usages = vec![
        KeyUsagePurpose::KeyCertSign,
        KeyUsagePurpose::CrlSign,
        KeyUsagePurpose::DigitalSignature,
    ];
    params.not_before = not_before;
    params.not_after = not_after;
    CertifiedIssuer::self_signed(params, KeyPair::generate()?)
        .with_context(|| format!("self-signing {cn}"))
}

fn name(cn: &str) -> DistinguishedName {
    let mut dn = DistinguishedName::new();
    dn.push(DnType::OrganizationName, "nhi-sensor tests");
    dn.push(DnType::CommonName, cn);
    dn
}

/// Writes `contents` with `mode` through a temporary file and a rename, so a reader never sees a
/// half-written file and a key is never readable by others, even briefly.
fn write(path: &Path, contents: &str, mode: u32) -> anyhow::Result<()> {
    let tmp = path.with_extension("tmp");
    let _ = fs::remove_file(&tmp);
    let mut f = OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(mode)
        .open(&tmp)
        .with_context(|| format!("creating {}", tmp.display()))?;
    f.write_all(contents.as_bytes())
        .and_then(|()| f.sync_all())
        .with_context(|| format!("writing {}", tmp.display()))?;
    fs::rename(&tmp, path).with_context(|| format!("renaming to {}", path.display()))?;
    Ok(())
}

/// The notAfter of a DER certificate, found by walking the first fields of its
/// TBSCertificate (RFC 5280 §4.1): version, serialNumber, signature, issuer, validity.
/// `None` when `der` is not shaped like a certificate.
fn not_after(der: &[u8]) -> Option<OffsetDateTime> {
    const SEQUENCE: u8 = 0x30;
    const INTEGER: u8 = 0x02;
    const VERSION: u8 = 0xa0; // [0] EXPLICIT
    let (cert, _) = tlv(der, SEQUENCE)?;
    let (tbs, _) = tlv(cert, SEQUENCE)?;
    let mut rest = tbs;
    if rest.first() == Some(&VERSION) {
        rest = tlv(rest, VERSION)?.1;
    }
    rest = tlv(rest, INTEGER)?.1; // serialNumber
    rest = tlv(rest, SEQUENCE)?.1; // signature algorithm
    rest = tlv(rest, SEQUENCE)?.1; // issuer
    let (validity, _) = tlv(rest, SEQUENCE)?;
    let (_, after_not_before) = tlv(validity, *validity.first()?)?;
    let tag = *after_not_before.first()?;
    let (time, _) = tlv(after_not_before, tag)?;
    der_time(tag, time)
}

/// One DER element with tag `tag` at the start of `input`: (its contents, what follows it).
fn tlv(input: &[u8], tag: u8) -> Option<(&[u8], &[u8])> {
    let (&t, rest) = input.split_first()?;
    if t != tag {
        return None;
    }
    let (&first, mut rest) = rest.split_first()?;
    let len = if first < 0x80 {
        usize::from(first)
    } else {
        let n = usize::from(first & 0x7f);
        if n == 0 || n > 4 {
            return None;
        }
        let (bytes, r) = rest.split_at_checked(n)?;
        rest = r;
        bytes.iter().fold(0, |acc, &b| (acc << 8) | usize::from(b))
    };
    rest.split_at_checked(len)
}

/// A UTCTime (`YYMMDDHHMMSSZ`, tag 0x17) or GeneralizedTime (`YYYYMMDDHHMMSSZ`, tag 0x18), the
/// only forms RFC 5280 allows in a certificate.
fn der_time(tag: u8, bytes: &[u8]) -> Option<OffsetDateTime> {
    let s = std::str::from_utf8(bytes).ok()?.strip_suffix('Z')?;
    let (year, rest) = match tag {
        0x17 => {
            let yy: i32 = s.get(..2)?.parse().ok()?;
            (if yy >= 50 { 1900 + yy } else { 2000 + yy }, s.get(2..)?)
        }
        0x18 => (s.get(..4)?.parse().ok()?, s.get(4..)?),
        _ => return None,
    };
    if rest.len() != 10 {
        return None;
    }
    let two = |i: usize| rest.get(i..i + 2)?.parse::<u8>().ok();
    let date = Date::from_calendar_date(year, Month::try_from(two(0)?).ok()?, two(2)?).ok()?;
    Some(date.with_hms(two(4)?, two(6)?, two(8)?).ok()?.assume_utc())
}

#[cfg(test)]
mod tests {
    use std::{os::unix::fs::PermissionsExt as _, path::PathBuf, process::Command};

    use super::*;

    struct TempDir(PathBuf);
    impl TempDir {
        fn new(tag: &str) -> Self {
            let dir =
                std::env::temp_dir().join(format!("xtask-certs-{}-{tag}", std::process::id()));
            let _ = fs::remove_dir_all(&dir);
            Self(dir)
        }
    }
    impl Drop for TempDir {
        fn drop(&mut self) {
            let _ = fs::remove_dir_all(&self.0);
        }
    }

    fn contents(dir: &Path) -> Vec<(String, String)> {
        CERTS
            .iter()
            .chain(KEYS)
            .map(|f| (f.to_string(), fs::read_to_string(dir.join(f)).unwrap()))
            .collect()
    }

    #[test]
    fn writes_every_file_with_private_keys() {
        let dir = TempDir::new("files");
        generate(&dir.0).unwrap();
        for f in CERTS {
            let text = fs::read_to_string(dir.0.join(f)).unwrap();
            assert!(text.starts_with("-----BEGIN CERTIFICATE-----"), "{f}");
        }
        for f in KEYS {
            let path = dir.0.join(f);
            assert!(
                fs::read_to_string(&path)
                    .unwrap()
                    .starts_with("-----BEGIN PRIVATE KEY-----"),
                "{f} is PKCS#8"
            );
            let mode = fs::metadata(&path).unwrap().permissions().mode() & 0o777;
            assert_eq!(mode, 0o600, "{f}");
        }
    }

    #[test]
    fn is_idempotent_and_repairs_an_incomplete_directory() {
        let dir = TempDir::new("idem");
        generate(&dir.0).unwrap();
        let first = contents(&dir.0);
        generate(&dir.0).unwrap();
        assert_eq!(first, contents(&dir.0), "a valid PKI is left as is");

        fs::remove_file(dir.0.join("sensor.key")).unwrap();
        generate(&dir.0).unwrap();
        let second = contents(&dir.0);
        for ((name, a), (_, b)) in first.iter().zip(&second) {
            assert_ne!(a, b, "{name}: everything is regenerated, the CA included");
        }
    }

    #[test]
    fn reads_the_validity_it_wrote() {
        let dir = TempDir::new("expiry");
        let now = OffsetDateTime::now_utc().unix_timestamp();
        generate(&dir.0).unwrap();
        let expiry = earliest_expiry(&dir.0).unwrap().unix_timestamp();
        let expected = now + VALIDITY.as_secs() as i64;
        assert!((expected - expiry).abs() < 60, "{expiry} vs {expected}");
    }

    #[test]
    fn der_times() {
        let t = der_time(0x17, b"491231235959Z").unwrap();
        assert_eq!(t.unix_timestamp(), 2_524_607_999);
        let t = der_time(0x17, b"500101000000Z").unwrap();
        assert_eq!(t.unix_timestamp(), -631_152_000);
        let t = der_time(0x18, b"20500101000000Z").unwrap();
        assert_eq!(t.unix_timestamp(), 2_524_608_000);
        assert!(der_time(0x18, b"2050010100000Z").is_none());
        assert!(der_time(0x17, b"491231235959").is_none());
    }

    /// The chains and purposes, as an independent verifier (OpenSSL) sees them.
    #[test]
    fn openssl_accepts_the_chains_and_refuses_the_rogue() {
        if Command::new("openssl").arg("version").output().is_err() {
            eprintln!("SKIPPED: openssl is not installed (`cargo xtask setup` installs it)");
            return;
        }
        let dir = TempDir::new("openssl");
        generate(&dir.0).unwrap();
        let verify = |ca: &str, purpose: &str, cert: &str| {
            let out = Command::new("openssl")
                .current_dir(&dir.0)
                .args(["verify", "-CAfile", ca, "-purpose", purpose, cert])
                .output()
                .unwrap();
            out.status.success()
        };
        assert!(verify("ca.pem", "sslserver", "collector.pem"));
        assert!(verify("ca.pem", "sslclient", "sensor.pem"));
        assert!(verify("ca.pem", "sslclient", "subscriber.pem"));
        assert!(
            !verify("ca.pem", "sslclient", "collector.pem"),
            "server only"
        );
        assert!(!verify("ca.pem", "sslserver", "sensor.pem"), "client only");
        assert!(!verify("ca.pem", "sslclient", "rogue.pem"), "another CA");
        assert!(verify("other-ca.pem", "sslclient", "rogue.pem"));

        let out = Command::new("openssl")
            .current_dir(&dir.0)
            .args([
                "x509",
                "-noout",
                "-ext",
                "subjectAltName",
                "-in",
                "collector.pem",
            ])
            .output()
            .unwrap();
        let sans = String::from_utf8_lossy(&out.stdout);
        for want in [
            "DNS:localhost",
            "DNS:nhi-collector",
            "IP Address:127.0.0.1",
            "IP Address:0:0:0:0:0:0:0:1",
        ] {
            assert!(sans.contains(want), "{want} in {sans}");
        }
    }

    #[test]
    fn refuses_garbage() {
        assert!(not_after(b"").is_none());
        assert!(not_after(&[0x30, 0x03, 0x30, 0x01, 0x00]).is_none());
        let dir = TempDir::new("garbage");
        generate(&dir.0).unwrap();
        fs::write(dir.0.join("rogue.pem"), "not a certificate").unwrap();
        assert!(earliest_expiry(&dir.0).is_err());
    }

    #[test]
    fn bails_on_unwritable_dir() {
        // A file where the directory should be.
        let dir = TempDir::new("notadir");
        fs::write(&dir.0, "x").unwrap();
        assert!(generate(&dir.0).is_err());
        let _ = fs::remove_file(&dir.0);
    }
}
