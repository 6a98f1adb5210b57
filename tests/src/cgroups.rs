//! cgroup v2 groups created by tests, removed on drop (also when an assertion fails).

use std::path::PathBuf;

/// The cgroup2 mount point, from /proc/self/mountinfo (never hard-coded).
pub fn cgroup2_root() -> PathBuf {
    let info = std::fs::read_to_string("/proc/self/mountinfo").expect("mountinfo");
    for line in info.lines() {
        let Some((left, right)) = line.split_once(" - ") else {
            continue;
        };
        if right.split_whitespace().next() == Some("cgroup2") {
            let mnt = left.split_whitespace().nth(4).expect("mount point field");
            return PathBuf::from(mnt.replace("\\040", " "));
        }
    }
    panic!("no cgroup2 mount in /proc/self/mountinfo");
}

/// cgroup directories created by a test; on drop, processes still inside go back to the root
/// group and the directories are removed deepest first.
pub struct CgroupGuard {
    root: PathBuf,
    created: Vec<PathBuf>,
}

impl Default for CgroupGuard {
    fn default() -> Self {
        Self::new()
    }
}

impl CgroupGuard {
    pub fn new() -> Self {
        Self {
            root: cgroup2_root(),
            created: Vec::new(),
        }
    }

    /// `mkdir -p root/rel`, remembering what did not exist; returns the absolute path.
    pub fn create(&mut self, rel: &str) -> PathBuf {
        let mut p = self.root.clone();
        for seg in rel.split('/').filter(|s| !s.is_empty()) {
            p.push(seg);
            if !p.exists() {
                std::fs::create_dir(&p).unwrap_or_else(|e| panic!("mkdir {}: {e}", p.display()));
                self.created.push(p.clone());
            }
        }
        p
    }
}

impl Drop for CgroupGuard {
    fn drop(&mut self) {
        for dir in self.created.iter().rev() {
            for _ in 0..50 {
                if let Ok(procs) = std::fs::read_to_string(dir.join("cgroup.procs")) {
                    for pid in procs.lines() {
                        let _ = std::fs::write(self.root.join("cgroup.procs"), pid);
                    }
                }
                match std::fs::remove_dir(dir) {
                    Ok(()) => break,
                    Err(e) if e.kind() == std::io::ErrorKind::NotFound => break,
                    Err(_) => std::thread::sleep(std::time::Duration::from_millis(50)),
                }
            }
            if dir.exists() {
                eprintln!("[test] could not remove cgroup {}", dir.display());
            }
        }
    }
}
