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
    pub fn install(&self, ebpf: &mut Ebpf) -> anyhow::Result<()> {
        self.sockets.install(ebpf)?;
        let mut counts = [0u32; 4];
        let rules = self.kernel_rules();
        {
            let mut prefixes: LpmTrie<&mut MapData, PrefixKeyData, u32> = LpmTrie::try_from(
                ebpf.map_mut("WATCH_PREFIXES")
                    .context("WATCH_PREFIXES map")?,
            )?;
            for (id, rule) in rules.iter().enumerate() {
                if let WatchRule::Prefix(p) = rule {
                    let n = p.len().min(PREFIX_KEY_LEN);
                    let mut data = [0u8; PREFIX_KEY_LEN];
                    data[..n].copy_from_slice(&p[..n]);
                    prefixes
                        .insert(&Key::new((n * 8) as u32, data), id as u32, 0)
                        .context("inserting a prefix rule")?;
                    counts[Setting::PrefixRules as usize] += 1;
                }
            }
        }
        {
            let mut names: HashMap<&mut MapData, NameKeyData, u32> =
                HashMap::try_from(ebpf.map_mut("WATCH_NAMES").context("WATCH_NAMES map")?)?;
            for (id, rule) in rules.iter().enumerate() {
                if let WatchRule::Name(n) = rule {
                    if n.len() >= NAME_KEY_LEN {
                        // The kernel keeps names shorter than the key; match it by prefix.
                        continue;
                    }
                    names
                        .insert(name_key(n), id as u32, 0)
                        .context("inserting a name rule")?;
                    counts[Setting::NameRules as usize] += 1;
                }
            }
        }
        for (map, setting, reversed) in [
            ("WATCH_NAME_PREFIXES", Setting::NamePrefixRules, false),
            ("WATCH_NAME_SUFFIXES", Setting::NameSuffixRules, true),
        ] {
            let mut trie: LpmTrie<&mut MapData, NameKeyData, u32> =
                LpmTrie::try_from(ebpf.map_mut(map).with_context(|| format!("{map} map"))?)?;
            for (id, rule) in rules.iter().enumerate() {
                let key_bytes: Vec<u8> = match (rule, reversed) {
                    (WatchRule::NamePrefix(p), false) => p.clone(),
                    (WatchRule::Name(n), false) if n.len() >= NAME_KEY_LEN => n.clone(),
                    (WatchRule::NameSuffix(s), true) => s.iter().rev().copied().collect(),
                    _ => continue,
                };
                let n = key_bytes.len().min(NAME_KEY_LEN);
                let mut data = [0u8; NAME_KEY_LEN];
                data[..n].copy_from_slice(&key_bytes[..n]);
                trie.insert(&Key::new((n * 8) as u32, data), id as u32, 0)
                    .with_context(|| format!("inserting into {map}"))?;
                counts[setting as usize] += 1;
            }
        }
        let mut settings: Array<&mut MapData, u32> =
            Array::try_from(ebpf.map_mut("SETTINGS").context("SETTINGS map")?)?;
        for (i, c) in counts.iter().enumerate() {
            settings.set(i as u32, c, 0)?;
        }
        tracing::info!(
            prefixes = counts[0],
            names = counts[1],
            name_prefixes = counts[2],
            name_suffixes = counts[3],
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
