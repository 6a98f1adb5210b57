//! What the detections learn, persisted so a restart does not re-learn from zero: baselines
//! (destinations and executables per workload and credential, with when each scope started
//! learning) and which workloads used each credential. One SQLite file (`detections.db`) in the
//! store directory (the embedded collector's) or, when events are shipped, in the spool's.
//! Writes happen only when something new is learned, so the cost is per novelty, not per event.

use std::{
    collections::{HashMap, HashSet},
    path::Path,
};

use anyhow::Context as _;
use rusqlite::{Connection, params};

const SCHEMA: &str = "
PRAGMA journal_mode = WAL;
PRAGMA synchronous = NORMAL;
CREATE TABLE IF NOT EXISTS scopes (
    rule     TEXT NOT NULL,
    scope    TEXT NOT NULL,      -- workload key | credential id
    since_s  INTEGER NOT NULL,   -- Unix seconds: learning started
    PRIMARY KEY (rule, scope)
);
CREATE TABLE IF NOT EXISTS items (
    rule     TEXT NOT NULL,
    scope    TEXT NOT NULL,
    item     TEXT NOT NULL,      -- destination ip:port, or exe path + sha256
    first_s  INTEGER NOT NULL,
    PRIMARY KEY (rule, scope, item)
);
CREATE TABLE IF NOT EXISTS credential_users (
    credential TEXT NOT NULL,    -- keyed fingerprint
    workload   TEXT NOT NULL,
    env        TEXT,             -- the workload's environment, when mapped
    first_s    INTEGER NOT NULL,
    PRIMARY KEY (credential, workload)
);
";

/// A user of a credential: its workload key and environment.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct User {
    pub workload: String,
    pub env: Option<String>,
}

pub struct Baselines {
    db: Option<Connection>,
    scopes: HashMap<(&'static str, String), u64>,
    items: HashSet<(&'static str, String, String)>,
    users: HashMap<String, Vec<User>>,
    /// Failed writes (the in-memory view stays right; the next start re-learns those).
    pub write_errors: u64,
}

/// Whether `item` is known in its scope, and the scope's state.
#[derive(Debug, PartialEq, Eq)]
pub enum Seen {
    /// Still learning: recorded, nothing to report.
    Learning,
    Known,
    /// Learning is over and this is new (now recorded, so it is reported once).
    New {
        learning_since_s: u64,
    },
}

impl Baselines {
    /// Opens (or creates) `dir/detections.db` and loads it; `None` keeps everything in memory.
    pub fn open(dir: Option<&Path>) -> anyhow::Result<Self> {
        let mut b = Self {
            db: None,
            scopes: HashMap::new(),
            items: HashSet::new(),
            users: HashMap::new(),
            write_errors: 0,
        };
        let Some(dir) = dir else { return Ok(b) };
        std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
        let path = dir.join("detections.db");
        let db = Connection::open(&path).with_context(|| format!("opening {}", path.display()))?;
        db.execute_batch(SCHEMA)
            .with_context(|| format!("initialising {}", path.display()))?;
        {
            let mut q = db.prepare("SELECT rule, scope, since_s FROM scopes")?;
            let rows = q.query_map([], |r| {
                Ok((r.get::<_, String>(0)?, r.get(1)?, r.get::<_, i64>(2)?))
            })?;
            for row in rows {
                let (rule, scope, since) = row?;
                if let Some(rule) = super::rules::by_id(&rule) {
                    b.scopes.insert((rule.id, scope), since as u64);
                }
            }
            let mut q = db.prepare("SELECT rule, scope, item FROM items")?;
            let rows = q.query_map([], |r| Ok((r.get::<_, String>(0)?, r.get(1)?, r.get(2)?)))?;
            for row in rows {
                let (rule, scope, item) = row?;
                if let Some(rule) = super::rules::by_id(&rule) {
                    b.items.insert((rule.id, scope, item));
                }
            }
            let mut q = db.prepare("SELECT credential, workload, env FROM credential_users")?;
            let rows = q.query_map([], |r| Ok((r.get::<_, String>(0)?, r.get(1)?, r.get(2)?)))?;
            for row in rows {
                let (cred, workload, env) = row?;
                b.users
                    .entry(cred)
                    .or_default()
                    .push(User { workload, env });
            }
        }
        tracing::info!(
            path = %path.display(),
            scopes = b.scopes.len(),
            items = b.items.len(),
            credentials = b.users.len(),
            "detection baselines loaded"
        );
        b.db = Some(db);
        Ok(b)
    }

    fn write(&mut self, sql: &str, p: impl rusqlite::Params) {
        if let Some(db) = &self.db
            && let Err(e) = db.execute(sql, p)
        {
            self.write_errors += 1;
            if self.write_errors <= 5 {
                tracing::warn!(error = %e, "could not persist a detection baseline");
            }
        }
    }

    /// Looks `item` up in `(rule, scope)`, learning it while the scope is younger than
    /// `learning_s` (a scope starts learning the first time it is seen).
    pub fn check(
        &mut self,
        rule: &'static str,
        scope: &str,
        item: &str,
        now_s: u64,
        learning_s: u64,
    ) -> Seen {
        let since = match self.scopes.get(&(rule, scope.to_string())) {
            Some(s) => *s,
            None => {
                self.scopes.insert((rule, scope.to_string()), now_s);
                self.write(
                    "INSERT OR IGNORE INTO scopes (rule, scope, since_s) VALUES (?1, ?2, ?3)",
                    params![rule, scope, now_s as i64],
                );
                now_s
            }
        };
        let key = (rule, scope.to_string(), item.to_string());
        if self.items.contains(&key) {
            return Seen::Known;
        }
        self.items.insert(key);
        self.write(
            "INSERT OR IGNORE INTO items (rule, scope, item, first_s) VALUES (?1, ?2, ?3, ?4)",
            params![rule, scope, item, now_s as i64],
        );
        if now_s.saturating_sub(since) < learning_s {
            Seen::Learning
        } else {
            Seen::New {
                learning_since_s: since,
            }
        }
    }

    /// Records that `user` used `credential`; returns the other users known before, when
    /// `user` is new to it (empty when it was already known or is the first).
    pub fn add_user(&mut self, credential: &str, user: User, now_s: u64) -> Vec<User> {
        let users = self.users.entry(credential.to_string()).or_default();
        if users.iter().any(|u| u.workload == user.workload) {
            return Vec::new();
        }
        let before = users.clone();
        users.push(user.clone());
        self.write(
            "INSERT OR IGNORE INTO credential_users (credential, workload, env, first_s) \
             VALUES (?1, ?2, ?3, ?4)",
            params![credential, user.workload, user.env, now_s as i64],
        );
        before
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn learns_then_reports_new_items_once_and_survives_a_restart() {
        let dir = std::env::temp_dir().join(format!("nhi-baseline-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        let rule = super::super::rules::NEW_EGRESS_AFTER_READ;
        {
            let mut b = Baselines::open(Some(&dir)).unwrap();
            assert_eq!(b.check(rule, "w|c", "a:1", 100, 10), Seen::Learning);
            assert_eq!(b.check(rule, "w|c", "a:1", 105, 10), Seen::Known);
            assert_eq!(
                b.check(rule, "w|c", "b:2", 111, 10),
                Seen::New {
                    learning_since_s: 100
                }
            );
            assert_eq!(b.check(rule, "w|c", "b:2", 112, 10), Seen::Known);
            let u = |w: &str| User {
                workload: w.into(),
                env: None,
            };
            assert!(b.add_user("fp", u("x"), 1).is_empty());
            assert!(b.add_user("fp", u("x"), 2).is_empty());
            assert_eq!(b.add_user("fp", u("y"), 3), vec![u("x")]);
        }
        let mut b = Baselines::open(Some(&dir)).unwrap();
        assert_eq!(b.check(rule, "w|c", "a:1", 200, 10), Seen::Known);
        assert!(matches!(
            b.check(rule, "w|c", "c:3", 200, 10),
            Seen::New { .. }
        ));
        assert_eq!(b.users["fp"].len(), 2);
        let _ = std::fs::remove_dir_all(&dir);
    }
}
