//! Watch rules: which file opens leave the kernel.
//!
//! Rules are compiled into four kernel maps (path-prefix LPM trie; exact, prefix and reversed
//! suffix file-name maps), so an open that matches nothing costs one or two map lookups and never
//! reaches userspace. The kernel keys are bounded (256-byte prefixes, 64-byte names): when a rule
//! is longer, the kernel matches a shorter, coarser key and [`RuleSet::matches`] decides exactly.

use std::{
    ffi::OsStr,
    os::unix::ffi::OsStrExt as _,
    path::{Path, PathBuf},
};

use crate::credentials::catalogue::Pattern;
use anyhow::{Context as _, bail};
use aya::{
    Ebpf,
    maps::{
        Array, HashMap, MapData,
        lpm_trie::{Key, LpmTrie},
    },
};
use sensor_common::{NAME_KEY_LEN, NameKeyData, PREFIX_KEY_LEN, PrefixKeyData, Setting};

/// One watch rule.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum WatchRule {
    /// Canonical absolute path prefix (byte prefix).
    Prefix(Vec<u8>),
    /// Exact file name.
    Name(Vec<u8>),
    /// File-name prefix: `id_*`.
    NamePrefix(Vec<u8>),
    /// File-name suffix: `*.pem`.
    NameSuffix(Vec<u8>),
}

impl WatchRule {
    /// Parses a `--watch-name` pattern: `name`, `prefix*` or `*suffix`.
    pub fn parse_name(pattern: &str) -> anyhow::Result<Self> {
        let bytes = pattern.as_bytes();
        if bytes.is_empty() || bytes.contains(&b'/') || bytes.contains(&0) {
            bail!("file-name pattern {pattern:?} must be non-empty and contain no '/' or NUL");
        }
        let stars = bytes.iter().filter(|b| **b == b'*').count();
        let rule = match (stars, bytes.first(), bytes.last()) {
            (0, _, _) => WatchRule::Name(bytes.to_vec()),
            (1, _, Some(b'*')) if bytes.len() > 1 => {
                WatchRule::NamePrefix(bytes[..bytes.len() - 1].to_vec())
            }
            (1, Some(b'*'), _) if bytes.len() > 1 => WatchRule::NameSuffix(bytes[1..].to_vec()),
            _ => bail!(
                "file-name pattern {pattern:?} is not supported: use `name`, `prefix*` or `*suffix`"
            ),
        };
        Ok(rule)
    }

    /// Parses a `--watch` path prefix. It must be absolute; when it exists it is canonicalized
    /// (symlinks resolved) because the kernel reports canonical paths, and a trailing `/` is kept.
    pub fn parse_prefix(path: &Path) -> anyhow::Result<Self> {
        let raw = path.as_os_str().as_bytes();
        if !raw.starts_with(b"/") {
            bail!("watch prefix {} is not an absolute path", path.display());
        }
        if raw.contains(&0) {
            bail!("watch prefix {} contains a NUL byte", path.display());
        }
        let trailing_slash = raw.len() > 1 && raw.ends_with(b"/");
        let mut bytes = match std::fs::canonicalize(path) {
            Ok(canon) => {
                if canon.as_path()
                    != Path::new(OsStr::from_bytes(raw.strip_suffix(b"/").unwrap_or(raw)))
                {
                    tracing::info!(given = %path.display(), canonical = %canon.display(), "watching the canonical form of a prefix");
                }
                canon.into_os_string().into_vec()
            }
            Err(_) => raw.to_vec(),
        };
        if trailing_slash && !bytes.ends_with(b"/") {
            bytes.push(b'/');
        }
        Ok(WatchRule::Prefix(bytes))
    }

    pub fn kind(&self) -> &'static str {
        match self {
            WatchRule::Prefix(_) => "prefix",
            WatchRule::Name(_) => "name",
            WatchRule::NamePrefix(_) => "name_prefix",
            WatchRule::NameSuffix(_) => "name_suffix",
        }
    }

    /// Exact match against a full path (`path` is absolute, `name` its last component).
    fn matches(&self, path: &[u8], name: &[u8]) -> bool {
        match self {
            WatchRule::Prefix(p) => path.starts_with(p),
            WatchRule::Name(n) => name == n.as_slice(),
            WatchRule::NamePrefix(p) => name.starts_with(p),
            WatchRule::NameSuffix(s) => name.ends_with(s),
        }
    }
}

use std::os::unix::ffi::OsStringExt as _;

/// What is watched: the operator's `--watch`/`--watch-name` rules, reported as they match, and
/// the credential catalogue, whose patterns are matched exactly (see [`Pattern`]).
#[derive(Clone, Debug, Default)]
pub struct RuleSet {
    pub rules: Vec<WatchRule>,
    pub patterns: Vec<Pattern>,
    /// Watched Unix sockets (connects, not file opens).
    pub sockets: crate::unix_sockets::UnixSockets,
}

impl RuleSet {
    /// `patterns` is the catalogue (built-in unless `--no-default-rules`, plus the config file's).
    pub fn from_args(
        prefixes: &[PathBuf],
        names: &[String],
        patterns: Vec<Pattern>,
    ) -> anyhow::Result<Self> {
        let mut rules = Vec::new();
        for p in prefixes {
            rules.push(WatchRule::parse_prefix(p)?);
        }
        for n in names {
            rules.push(WatchRule::parse_name(n)?);
        }
        rules.dedup();
        Ok(Self {
            rules,
            patterns,
            sockets: Default::default(),
        })
    }

    /// The rules loaded into the kernel: the operator's and one per catalogue pattern.
    fn kernel_rules(&self) -> Vec<WatchRule> {
        let mut all = self.rules.clone();
        for p in &self.patterns {
            let r = p.kernel_rule();
            if !all.contains(&r) {
                all.push(r);
            }
        }
        all
    }

    /// The first catalogue pattern `path` (opened by `reader_pid`) matches exactly. A truncated
    /// path can only be judged by patterns that look at its tail.
    pub fn credential(&self, path: &[u8], truncated: bool, reader_pid: u32) -> Option<&Pattern> {
        self.patterns
            .iter()
            .filter(|p| !(truncated && p.path_prefix.is_some()))
            .find(|p| p.matches(path, reader_pid))
    }

    /// The rule kinds that match `path` exactly: operator rules, and the kernel rule kind of a
    /// matching catalogue pattern. A truncated path (its head is missing) can only be judged by
    /// name rules.
    pub fn matches(&self, path: &[u8], truncated: bool, reader_pid: u32) -> Vec<&'static str> {
        let name = path.rsplit(|b| *b == b'/').next().unwrap_or(path);
        let mut kinds: Vec<&'static str> = self
            .rules
            .iter()
            .filter(|r| !(truncated && matches!(r, WatchRule::Prefix(_))))
            .filter(|r| r.matches(path, name))
            .map(WatchRule::kind)
            .collect();
        if let Some(p) = self.credential(path, truncated, reader_pid) {
            kinds.push(p.kernel_rule().kind());
        }
        kinds.sort_unstable();
        kinds.dedup();
        kinds
    }

    /// Writes the rules into the kernel maps and the rule counts into `SETTINGS`.
    /// The kernel map keys of these rules: (map, key bytes, LPM prefix length in bits; 0 for
    /// the exact-name hash map), with the setting that counts them.
    fn kernel_keys(&self) -> Vec<(&'static str, Setting, Vec<u8>, u32)> {
        let mut keys = Vec::new();
        for rule in self.kernel_rules() {
            match rule {
                WatchRule::Prefix(p) => {
                    let n = p.len().min(PREFIX_KEY_LEN);
                    keys.push((
                        "WATCH_PREFIXES",
                        Setting::PrefixRules,
                        p[..n].to_vec(),
                        (n * 8) as u32,
                    ));
                }
                // The kernel keeps names shorter than the key; longer ones match by prefix.
                WatchRule::Name(n) if n.len() < NAME_KEY_LEN => {
                    keys.push(("WATCH_NAMES", Setting::NameRules, n, 0));
                }
                WatchRule::Name(n) | WatchRule::NamePrefix(n) => {
                    let len = n.len().min(NAME_KEY_LEN);
                    keys.push((
                        "WATCH_NAME_PREFIXES",
                        Setting::NamePrefixRules,
                        n[..len].to_vec(),
                        (len * 8) as u32,
                    ));
                }
                WatchRule::NameSuffix(s) => {
                    let rev: Vec<u8> = s.iter().rev().copied().collect();
                    let len = rev.len().min(NAME_KEY_LEN);
                    keys.push((
                        "WATCH_NAME_SUFFIXES",
                        Setting::NameSuffixRules,
                        rev[..len].to_vec(),
                        (len * 8) as u32,
                    ));
                }
            }
        }
        keys.sort_by(|a, b| (a.0, &a.2, a.3).cmp(&(b.0, &b.2, b.3)));
        keys.dedup_by(|a, b| (a.0, &a.2, a.3) == (b.0, &b.2, b.3));
        keys
    }

    /// Inserts (`insert`) or deletes one key.
    fn update_key(
        ebpf: &mut Ebpf,
        map: &str,
        bytes: &[u8],
        bits: u32,
        insert: bool,
    ) -> anyhow::Result<()> {
        let m = ebpf.map_mut(map).with_context(|| format!("{map} map"))?;
        if map == "WATCH_NAMES" {
            let mut names: HashMap<&mut MapData, NameKeyData, u32> = HashMap::try_from(m)?;
            let key = name_key(bytes);
            if insert {
                names.insert(key, 1, 0).context("inserting a name rule")?;
            } else {
                names.remove(&key).context("removing a name rule")?;
            }
        } else if map == "WATCH_PREFIXES" {
            let mut trie: LpmTrie<&mut MapData, PrefixKeyData, u32> = LpmTrie::try_from(m)?;
            let mut data = [0u8; PREFIX_KEY_LEN];
            data[..bytes.len()].copy_from_slice(bytes);
            let key = Key::new(bits, data);
            if insert {
                trie.insert(&key, 1, 0).context("inserting a prefix rule")?;
            } else {
                trie.remove(&key).context("removing a prefix rule")?;
            }
        } else {
            let mut trie: LpmTrie<&mut MapData, NameKeyData, u32> = LpmTrie::try_from(m)?;
            let mut data = [0u8; NAME_KEY_LEN];
            data[..bytes.len()].copy_from_slice(bytes);
            let key = Key::new(bits, data);
            if insert {
                trie.insert(&key, 1, 0)
                    .with_context(|| format!("inserting into {map}"))?;
            } else {
                trie.remove(&key)
                    .with_context(|| format!("removing from {map}"))?;
            }
        }
        Ok(())
    }

    pub fn install(&self, ebpf: &mut Ebpf) -> anyhow::Result<()> {
        self.replace(&RuleSet::default(), ebpf)
    }

    /// Moves the kernel from `old`'s rules to these, without a moment in which a rule both
    /// share is missing: new keys are inserted first, then the counts updated, then the keys
    /// only `old` had are removed (SIGHUP reload).
    pub fn replace(&self, old: &RuleSet, ebpf: &mut Ebpf) -> anyhow::Result<()> {
        self.sockets.replace(&old.sockets, ebpf)?;
        let keys = self.kernel_keys();
        let mut counts = [0u32; 4];
        for (map, setting, bytes, bits) in &keys {
            Self::update_key(ebpf, map, bytes, *bits, true)?;
            counts[*setting as usize] += 1;
        }
        let mut settings: Array<&mut MapData, u32> =
            Array::try_from(ebpf.map_mut("SETTINGS").context("SETTINGS map")?)?;
        for (i, c) in counts.iter().enumerate() {
            settings.set(i as u32, c, 0)?;
        }
        let mut removed = 0;
        let kept = |k: &(&str, Setting, Vec<u8>, u32)| {
            keys.iter().any(|n| (n.0, &n.2, n.3) == (k.0, &k.2, k.3))
        };
        for stale in old.kernel_keys().iter().filter(|k| !kept(k)) {
            Self::update_key(ebpf, stale.0, &stale.2, stale.3, false)?;
            removed += 1;
        }
        tracing::info!(
            prefixes = counts[0],
            names = counts[1],
            name_prefixes = counts[2],
            name_suffixes = counts[3],
            removed,
            "watch rules loaded into the kernel"
        );
        Ok(())
    }
}

fn name_key(name: &[u8]) -> NameKeyData {
    let mut key = [0u8; NAME_KEY_LEN];
    let n = name.len().min(NAME_KEY_LEN);
    key[..n].copy_from_slice(&name[..n]);
    key
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn name_patterns() {
        assert_eq!(
            WatchRule::parse_name("token").unwrap(),
            WatchRule::Name(b"token".to_vec())
        );
        assert_eq!(
            WatchRule::parse_name("id_*").unwrap(),
            WatchRule::NamePrefix(b"id_".to_vec())
        );
        assert_eq!(
            WatchRule::parse_name("*.pem").unwrap(),
            WatchRule::NameSuffix(b".pem".to_vec())
        );
        for bad in ["", "a/b", "*", "a*b", "*a*", "**"] {
            assert!(WatchRule::parse_name(bad).is_err(), "{bad:?} accepted");
        }
    }

    #[test]
    fn prefixes_must_be_absolute_and_keep_their_slash() {
        assert!(WatchRule::parse_prefix(Path::new("relative/x")).is_err());
        let r = WatchRule::parse_prefix(Path::new("/nonexistent-nhi/dir/")).unwrap();
        assert_eq!(r, WatchRule::Prefix(b"/nonexistent-nhi/dir/".to_vec()));
    }

    #[test]
    fn exact_matching_in_userspace() {
        let set = RuleSet {
            rules: vec![
                WatchRule::Prefix(b"/srv/secrets/".to_vec()),
                WatchRule::NameSuffix(b".pem".to_vec()),
                WatchRule::NamePrefix(b"id_".to_vec()),
            ],
            patterns: Vec::new(),
            sockets: Default::default(),
        };
        assert_eq!(set.matches(b"/srv/secrets/a", false, 1), vec!["prefix"]);
        assert!(set.matches(b"/srv/secretsX/a", false, 1).is_empty());
        assert_eq!(set.matches(b"/x/key.pem", false, 1), vec!["name_suffix"]);
        assert_eq!(
            set.matches(b"/home/u/.ssh/id_rsa", false, 1),
            vec!["name_prefix"]
        );
        // A truncated path cannot be judged by its missing head.
        assert!(set.matches(b"/srv/secrets/a", true, 1).is_empty());
    }
}
