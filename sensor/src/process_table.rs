//! Every live process the sensor knows: filled from `/proc` at start-up, then kept current by
//! fork/exec/exit events, so events carry the executable, argv and ancestry even for processes
//! that started before the sensor or that are gone by the time their event is read.
//!
//! A process is identified by (pid, start time): pids are reused, the pair is not. Its `key`
//! adds the boot id, so it stays the same across sensor restarts.

use std::{
    collections::HashMap,
    time::{Duration, Instant},
};

use crate::procfs;

/// How long an exited process stays in the table: events it emitted just before exiting may
/// still be in the ring buffer or waiting for a connect outcome. 30 s is far longer than either.
const EXITED_GRACE: Duration = Duration::from_secs(30);
/// Ancestors listed on each event (parent first). 8 covers init → runtime → shim → shell → tool
/// chains without bloating every event.
pub const MAX_ANCESTRY: usize = 8;

#[derive(Clone, Debug)]
pub struct ProcEntry {
    pub pid: u32,
    pub start_ticks: u64,
    pub key: String,
    pub ppid: u32,
    pub parent_start_ticks: u64,
    pub exe: Option<Vec<u8>>,
    pub argv: Option<Vec<Vec<u8>>>,
    exited: Option<Instant>,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Ancestor {
    pub pid: u32,
    pub key: String,
    pub exe: Option<Vec<u8>>,
}

pub struct ProcessTable {
    boot_id: String,
    by_pid: HashMap<u32, ProcEntry>,
}

impl ProcessTable {
    pub fn new(boot_id: String) -> Self {
        Self {
            boot_id,
            by_pid: HashMap::new(),
        }
    }

    pub fn len(&self) -> usize {
        self.by_pid.len()
    }

    pub fn key(&self, pid: u32, start_ticks: u64) -> String {
        procfs::process_key(&self.boot_id, pid, start_ticks)
    }

    fn entry_from_snapshot(&self, s: procfs::ProcSnapshot, parent_start_ticks: u64) -> ProcEntry {
        ProcEntry {
            pid: s.pid,
            start_ticks: s.start_ticks,
            key: self.key(s.pid, s.start_ticks),
            ppid: s.ppid,
            parent_start_ticks,
            exe: s.exe,
            argv: Some(s.argv),
            exited: None,
        }
    }

    /// Fills the table from a `/proc` scan.
    pub fn load_snapshots(&mut self, snapshots: Vec<procfs::ProcSnapshot>) {
        let starts: HashMap<u32, u64> = snapshots.iter().map(|s| (s.pid, s.start_ticks)).collect();
        for s in snapshots {
            let parent_start = starts.get(&s.ppid).copied().unwrap_or(0);
            let entry = self.entry_from_snapshot(s, parent_start);
            self.by_pid.insert(entry.pid, entry);
        }
    }

    /// The entry for (pid, start); read from `/proc` if the table does not have it (a process
    /// that started between the scan and the first event, or whose fork we missed).
    pub fn get_or_load(&mut self, pid: u32, start_ticks: u64) -> Option<&mut ProcEntry> {
        let known = self
            .by_pid
            .get(&pid)
            .is_some_and(|e| e.start_ticks == start_ticks);
        if !known {
            let snap = procfs::read_process(pid).ok()?;
            if snap.start_ticks != start_ticks {
                return None;
            }
            let parent_start = self
                .by_pid
                .get(&snap.ppid)
                .map(|p| p.start_ticks)
                .unwrap_or(0);
            let entry = self.entry_from_snapshot(snap, parent_start);
            self.by_pid.insert(pid, entry);
        }
        self.by_pid.get_mut(&pid)
    }

    /// Keeps the parent link current (reparenting to a subreaper or init happens).
    pub fn observe(&mut self, pid: u32, start_ticks: u64, ppid: u32, parent_start_ticks: u64) {
        if let Some(e) = self.get_or_load(pid, start_ticks) {
            e.ppid = ppid;
            e.parent_start_ticks = parent_start_ticks;
        }
    }

    /// A new process: it runs its parent's image until it execs.
    pub fn on_fork(&mut self, parent: (u32, u64), child: (u32, u64)) {
        let (exe, argv) = self
            .by_pid
            .get(&parent.0)
            .filter(|p| p.start_ticks == parent.1)
            .map(|p| (p.exe.clone(), p.argv.clone()))
            .unwrap_or((None, None));
        let entry = ProcEntry {
            pid: child.0,
            start_ticks: child.1,
            key: self.key(child.0, child.1),
            ppid: parent.0,
            parent_start_ticks: parent.1,
            exe,
            argv,
            exited: None,
        };
        self.by_pid.insert(child.0, entry);
    }

    pub fn on_exec(
        &mut self,
        pid: u32,
        start_ticks: u64,
        exe: Option<Vec<u8>>,
        argv: Vec<Vec<u8>>,
    ) {
        let key = self.key(pid, start_ticks);
        let entry = self.by_pid.entry(pid).or_insert_with(|| ProcEntry {
            pid,
            start_ticks,
            key: key.clone(),
            ppid: 0,
            parent_start_ticks: 0,
            exe: None,
            argv: None,
            exited: None,
        });
        if entry.start_ticks != start_ticks {
            entry.start_ticks = start_ticks;
            entry.key = key;
        }
        entry.exe = exe;
        entry.argv = Some(argv);
        entry.exited = None;
    }

    pub fn on_exit(&mut self, pid: u32, start_ticks: u64) {
        if let Some(e) = self.by_pid.get_mut(&pid)
            && e.start_ticks == start_ticks
        {
            e.exited = Some(Instant::now());
        }
    }

    /// Parent first, at most [`MAX_ANCESTRY`] entries; stops at pid 0 or an unknown parent.
    pub fn ancestry(&mut self, ppid: u32, parent_start_ticks: u64) -> Vec<Ancestor> {
        let mut out = Vec::new();
        let (mut pid, mut start) = (ppid, parent_start_ticks);
        while pid != 0 && out.len() < MAX_ANCESTRY {
            let Some(e) = self.get_or_load(pid, start) else {
                break;
            };
            out.push(Ancestor {
                pid: e.pid,
                key: e.key.clone(),
                exe: e.exe.clone(),
            });
            (pid, start) = (e.ppid, e.parent_start_ticks);
        }
        out
    }

    /// Drops processes that exited more than [`EXITED_GRACE`] ago.
    pub fn reap(&mut self) {
        let now = Instant::now();
        self.by_pid.retain(|_, e| {
            e.exited
                .is_none_or(|t| now.duration_since(t) < EXITED_GRACE)
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fork_exec_exit_and_ancestry() {
        let mut t = ProcessTable::new("boot".into());
        t.on_exec(100, 5, Some(b"/bin/sh".to_vec()), vec![b"sh".to_vec()]);
        t.on_fork((100, 5), (200, 7));
        assert_eq!(
            t.get_or_load(200, 7).unwrap().exe.as_deref(),
            Some(&b"/bin/sh"[..])
        );
        t.on_exec(200, 7, Some(b"/bin/cat".to_vec()), vec![b"cat".to_vec()]);
        let a = t.ancestry(200, 7);
        assert_eq!(a[0].pid, 200);
        assert_eq!(a[0].exe.as_deref(), Some(&b"/bin/cat"[..]));
        assert_eq!(a[1].pid, 100);
        // Same pid, another start: not the same process.
        assert!(t.by_pid.get(&200).is_some_and(|e| e.start_ticks == 7));
        assert_ne!(t.key(200, 7), t.key(200, 8));
        t.on_exit(200, 7);
        t.reap();
        assert!(t.by_pid.contains_key(&200), "kept during the grace period");
    }
}
