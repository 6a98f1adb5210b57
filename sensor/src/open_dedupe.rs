//! Open dedupe, userspace half. The kernel reports a watched open once per window per
//! (process, inode, open flags) and counts the repeats in `OPEN_DEDUPE` (a running total per
//! key). Here each reported open gets the repeats counted since the previous report of its key
//! (`file.repeats`), and repeats that no later open reports are sent as a summary `file.open`
//! (no `fd`) once the window has passed, or when the process exits or execs.

use std::{
    collections::HashMap,
    time::{Duration, Instant},
};

use aya::maps::{HashMap as BpfHashMap, MapData};
use sensor_common::{OpenDedupeKey, OpenDedupeState};

use crate::{event, identity::Identity, workload::Workload};

/// What a summary event repeats: the last reported open of a key.
#[derive(Clone)]
pub struct Reported {
    pub process: event::Process,
    pub workload: Option<Workload>,
    pub identity: Option<Identity>,
    pub credential: Option<crate::credentials::classify::Credential>,
    pub file: event::File,
}

struct Tracked {
    /// The kernel's total (low 32 bits) when it was last reported.
    total: u32,
    at: Instant,
    last: Reported,
}

/// (flags, dev, ino): the rest of an [`OpenDedupeKey`] under its process.
type FileKey = (u32, u64, u64);

pub struct OpenDedupe {
    window: Duration,
    map: BpfHashMap<MapData, OpenDedupeKey, OpenDedupeState>,
    by_tgid: HashMap<u32, HashMap<FileKey, Tracked>>,
}

/// A summary to emit: the repeats counted after the last report of a key.
pub struct Summary {
    pub repeats: u64,
    pub last: Reported,
}

impl OpenDedupe {
    pub fn new(window: Duration, map: BpfHashMap<MapData, OpenDedupeKey, OpenDedupeState>) -> Self {
        Self {
            window,
            map,
            by_tgid: HashMap::new(),
        }
    }

    pub fn enabled(&self) -> bool {
        !self.window.is_zero()
    }

    /// The repeats a reported open stands for: the kernel's `total` for the key minus what was
    /// reported before (a key the kernel evicted and recreated starts again from 0).
    pub fn repeats_before(&self, tgid: u32, key: FileKey, total: u32) -> u64 {
        let before = self
            .by_tgid
            .get(&tgid)
            .and_then(|m| m.get(&key))
            .map_or(0, |t| t.total);
        u64::from(if total >= before {
            total - before
        } else {
            total
        })
    }

    /// Remembers the open just reported for `key`.
    pub fn reported(&mut self, tgid: u32, key: FileKey, total: u32, last: Reported) {
        self.by_tgid.entry(tgid).or_default().insert(
            key,
            Tracked {
                total,
                at: Instant::now(),
                last,
            },
        );
    }

    fn kernel_total(&self, tgid: u32, (flags, dev, ino): FileKey) -> Option<u32> {
        let key = OpenDedupeKey {
            tgid,
            flags,
            dev,
            ino,
        };
        self.map.get(&key, 0).ok().map(|s| s.repeats as u32)
    }

    /// Keys whose window has passed with repeats no open reported (periodic).
    pub fn due(&mut self) -> Vec<Summary> {
        let mut out = Vec::new();
        let mut gone = Vec::new();
        for (&tgid, files) in &self.by_tgid {
            for (&key, t) in files {
                if t.at.elapsed() < self.window {
                    continue;
                }
                match self.kernel_total(tgid, key) {
                    Some(total) if total != t.total => out.push((tgid, key, total)),
                    Some(_) => {}
                    // Evicted: its repeats were reported up to here, the next open is new.
                    None => gone.push((tgid, key)),
                }
            }
        }
        for (tgid, key) in gone {
            self.forget(tgid, key);
        }
        out.into_iter()
            .filter_map(|(tgid, key, total)| {
                let repeats = self.repeats_before(tgid, key, total);
                let t = self.by_tgid.get_mut(&tgid)?.get_mut(&key)?;
                t.total = total;
                t.at = Instant::now();
                Some(Summary {
                    repeats,
                    last: t.last.clone(),
                })
            })
            .collect()
    }

    fn forget(&mut self, tgid: u32, key: FileKey) {
        if let Some(files) = self.by_tgid.get_mut(&tgid) {
            files.remove(&key);
            if files.is_empty() {
                self.by_tgid.remove(&tgid);
            }
        }
    }

    /// The process exited or replaced its program: what its keys still hold, and the kernel
    /// forgets them (a new program's first open of a file is reported).
    pub fn end(&mut self, tgid: u32) -> Vec<Summary> {
        let Some(files) = self.by_tgid.remove(&tgid) else {
            return Vec::new();
        };
        let mut out = Vec::new();
        for ((flags, dev, ino), t) in files {
            let key = OpenDedupeKey {
                tgid,
                flags,
                dev,
                ino,
            };
            if let Ok(s) = self.map.get(&key, 0) {
                let total = s.repeats as u32;
                let _ = self.map.remove(&key);
                let repeats = u64::from(if total >= t.total {
                    total - t.total
                } else {
                    total
                });
                if repeats > 0 {
                    out.push(Summary {
                        repeats,
                        last: t.last,
                    });
                }
            }
        }
        out
    }
}
