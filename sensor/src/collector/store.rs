//! The collector's embedded store: SQLite (compiled in), one file `events.db` in the store
//! directory. It is the collector's source of truth: a batch is acknowledged to its sensor
//! only once committed here, every sink (OCSF file, subscribers) is fed from what was
//! committed, and the deduplication state (per sensor stream: how far it is stored) lives
//! in the same transaction as the events, so a `kill -9` at any point neither loses an
//! acknowledged event nor stores one twice.
//!
//! Durability: WAL journal with `synchronous = NORMAL` by default: a committed transaction
//! survives the collector process dying at any point; after a power loss of the collector's
//! machine the last transactions before it may be rolled back although their sensors were
//! told they are stored. `--store-sync full` closes that window at the cost of one fsync per
//! batch.

use std::{
    path::{Path, PathBuf},
    sync::{Arc, Mutex},
};

use anyhow::Context as _;
use nhi_proto::v1 as pb;
use prost::Message as _;
use rusqlite::{Connection, OptionalExtension as _, params};

const SCHEMA: &str = "
CREATE TABLE IF NOT EXISTS events (
    id        INTEGER PRIMARY KEY,  -- arrival order: what sinks follow
    sensor_id TEXT NOT NULL,
    stream_id TEXT NOT NULL,
    seq       INTEGER NOT NULL,
    time_ns   INTEGER NOT NULL,     -- wall clock, Unix ns
    kind      TEXT NOT NULL,        -- the sensor's dotted kind, e.g. file.open
    node      TEXT NOT NULL,
    identity  TEXT,                 -- Identity.id
    namespace TEXT,
    pod       TEXT,
    exe       TEXT,
    path      TEXT,                 -- file path, socket path or destination ip:port
    event     BLOB NOT NULL,        -- the nhisensor.v1.Event, protobuf-encoded
    UNIQUE (sensor_id, stream_id, seq)
);
CREATE INDEX IF NOT EXISTS events_time ON events (time_ns);
CREATE INDEX IF NOT EXISTS events_identity ON events (identity, time_ns);
CREATE TABLE IF NOT EXISTS streams (
    sensor_id  TEXT NOT NULL,
    stream_id  TEXT NOT NULL,
    durable    INTEGER NOT NULL,    -- every sequence <= durable is stored or declared lost
    stored     INTEGER NOT NULL,
    duplicates INTEGER NOT NULL,
    lost       INTEGER NOT NULL,    -- events the sensor's loss records declared lost
    gaps       INTEGER NOT NULL,    -- missing sequences no loss record explained
    node       TEXT NOT NULL,
    boot_id    TEXT NOT NULL,
    last_seen_ns INTEGER NOT NULL,
    PRIMARY KEY (sensor_id, stream_id)
);
CREATE TABLE IF NOT EXISTS credential_nodes (  -- the fleet view (fleet.rs)
    fingerprint TEXT NOT NULL,
    node        TEXT NOT NULL,
    first_ns    INTEGER NOT NULL,
    PRIMARY KEY (fingerprint, node)
);
CREATE TABLE IF NOT EXISTS sink_positions (
    sink     TEXT PRIMARY KEY,
    position INTEGER NOT NULL       -- last events.id the sink has written
);
";

/// How a committed batch changed a stream.
#[derive(Debug, Default, Clone)]
pub struct Committed {
    /// The stream's new durable position: what to acknowledge.
    pub durable: u64,
    /// Newly stored events, in order, with their store ids.
    pub stored: Vec<(i64, Arc<pb::Event>)>,
    pub duplicates: u64,
    pub lost: u64,
    pub gaps: u64,
}

/// Totals per sensor stream (for `nhi-sensor events --streams`, metrics and tests).
#[derive(Debug, Clone, serde::Serialize)]
pub struct StreamRow {
    pub sensor_id: String,
    pub stream_id: String,
    pub node: String,
    pub durable: u64,
    pub stored: u64,
    pub duplicates: u64,
    pub lost: u64,
    pub gaps: u64,
}

#[derive(Clone)]
pub struct Store {
    writer: Arc<Mutex<Connection>>,
    path: PathBuf,
}

pub fn db_path(dir: &Path) -> PathBuf {
    dir.join("events.db")
}

fn open_conn(path: &Path, sync_full: bool) -> anyhow::Result<Connection> {
    let conn =
        Connection::open(path).with_context(|| format!("opening the store {}", path.display()))?;
    conn.pragma_update(None, "journal_mode", "WAL")?;
    conn.pragma_update(
        None,
        "synchronous",
        if sync_full { "FULL" } else { "NORMAL" },
    )?;
    // Readers (sinks, the CLI) never block the writer in WAL mode; a writer waits up to 5 s
    // for another writer (a second collector process on the same store) before failing.
    conn.busy_timeout(std::time::Duration::from_secs(5))?;
    Ok(conn)
}

impl Store {
    pub fn open(dir: &Path, sync_full: bool) -> anyhow::Result<Self> {
        std::fs::create_dir_all(dir)
            .with_context(|| format!("creating the store directory {}", dir.display()))?;
        let path = db_path(dir);
        let conn = open_conn(&path, sync_full)?;
        conn.execute_batch(SCHEMA)
            .and_then(|()| conn.execute_batch(super::inventory::SCHEMA))
            .with_context(|| format!("creating the schema in {}", path.display()))?;
        Ok(Self {
            writer: Arc::new(Mutex::new(conn)),
            path,
        })
    }

    /// A read-only connection, for a sink or a query.
    pub fn reader(&self) -> anyhow::Result<Connection> {
        open_conn(&self.path, false)
    }

    /// Stores a batch from one sensor stream, deduplicating on (sensor, stream, sequence),
    /// in one transaction. Blocking: call from a blocking thread.
    pub fn commit(
        &self,
        sensor: &pb::SensorIdentity,
        events: Vec<pb::Event>,
    ) -> anyhow::Result<Committed> {
        let mut conn = self.writer.lock().expect("store mutex");
        let tx = conn.transaction()?;
        let now_ns = now_ns();
        let mut c = Committed::default();
        let (mut durable, mut stored, mut dups, mut lost, mut gaps): (u64, u64, u64, u64, u64) = tx
            .prepare_cached(
                "SELECT durable, stored, duplicates, lost, gaps FROM streams
                 WHERE sensor_id = ?1 AND stream_id = ?2",
            )?
            .query_row(params![sensor.sensor_id, sensor.stream_id], |r| {
                Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?, r.get(4)?))
            })
            .optional()?
            .unwrap_or_default();
        {
            let mut insert = tx.prepare_cached(
                "INSERT OR IGNORE INTO events
                 (sensor_id, stream_id, seq, time_ns, kind, node, identity, namespace, pod, exe,
                  path, event)
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12)",
            )?;
            for mut ev in events {
                let seq = ev.sequence;
                if seq <= durable {
                    dups += 1;
                    c.duplicates += 1;
                    continue;
                }
                if seq > durable + 1 {
                    let missing = seq - durable - 1;
                    gaps += missing;
                    c.gaps += missing;
                    tracing::warn!(
                        sensor = %sensor.sensor_id, stream = %sensor.stream_id,
                        after = durable, missing,
                        "sequence gap that no loss record explains"
                    );
                }
                durable = seq;
                if let Some(pb::event::Payload::Loss(l)) = &ev.payload
                    && l.first_sequence == seq
                    && l.last_sequence >= seq
                {
                    durable = l.last_sequence;
                    lost += l.count;
                    c.lost += l.count;
                }
                if ev.sensor.is_none() {
                    ev.sensor = Some(sensor.clone());
                }
                let cols = Columns::of(&ev);
                let blob = ev.encode_to_vec();
                insert.execute(params![
                    sensor.sensor_id,
                    sensor.stream_id,
                    seq as i64,
                    cols.time_ns,
                    cols.kind,
                    sensor.node_name,
                    cols.identity,
                    cols.namespace,
                    cols.pod,
                    cols.exe,
                    cols.path,
                    blob,
                ])?;
                c.stored.push((tx.last_insert_rowid(), Arc::new(ev)));
                stored += 1;
            }
        }
        super::inventory::record(&tx, &sensor.node_name, c.stored.iter().map(|(_, e)| &**e))
            .context("updating the inventory")?;
        tx.prepare_cached(
            "INSERT INTO streams (sensor_id, stream_id, durable, stored, duplicates, lost, gaps,
                                  node, boot_id, last_seen_ns)
             VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10)
             ON CONFLICT (sensor_id, stream_id) DO UPDATE SET durable = ?3, stored = ?4,
                duplicates = ?5, lost = ?6, gaps = ?7, node = ?8, boot_id = ?9,
                last_seen_ns = ?10",
        )?
        .execute(params![
            sensor.sensor_id,
            sensor.stream_id,
            durable as i64,
            stored as i64,
            dups as i64,
            lost as i64,
            gaps as i64,
            sensor.node_name,
            sensor.boot_id,
            now_ns,
        ])?;
        tx.commit().context("committing a batch to the store")?;
        c.durable = durable;
        Ok(c)
    }

    /// How far a stream is stored (0 for a stream never seen).
    pub fn durable(&self, sensor_id: &str, stream_id: &str) -> anyhow::Result<u64> {
        let conn = self.writer.lock().expect("store mutex");
        Ok(conn
            .query_row(
                "SELECT durable FROM streams WHERE sensor_id = ?1 AND stream_id = ?2",
                params![sensor_id, stream_id],
                |r| r.get::<_, i64>(0),
            )
            .optional()?
            .unwrap_or(0) as u64)
    }

    /// Records that `fingerprint` was used on `node`; returns the other nodes known before when
    /// `node` is new to it (empty otherwise).
    pub fn add_credential_node(
        &self,
        fingerprint: &str,
        node: &str,
        time_ns: i64,
    ) -> anyhow::Result<Vec<String>> {
        let conn = self.writer.lock().expect("store mutex");
        let added = conn.execute(
            "INSERT OR IGNORE INTO credential_nodes (fingerprint, node, first_ns)
             VALUES (?1, ?2, ?3)",
            params![fingerprint, node, time_ns],
        )?;
        if added == 0 {
            return Ok(Vec::new());
        }
        let mut q = conn.prepare_cached(
            "SELECT node FROM credential_nodes WHERE fingerprint = ?1 AND node != ?2
             ORDER BY node",
        )?;
        let nodes = q
            .query_map(params![fingerprint, node], |r| r.get(0))?
            .collect::<Result<Vec<String>, _>>()?;
        Ok(nodes)
    }

    pub fn sink_position(&self, sink: &str) -> anyhow::Result<Option<i64>> {
        let conn = self.writer.lock().expect("store mutex");
        Ok(conn
            .query_row(
                "SELECT position FROM sink_positions WHERE sink = ?1",
                params![sink],
                |r| r.get(0),
            )
            .optional()?)
    }

    pub fn set_sink_position(&self, sink: &str, position: i64) -> anyhow::Result<()> {
        let conn = self.writer.lock().expect("store mutex");
        conn.execute(
            "INSERT INTO sink_positions (sink, position) VALUES (?1, ?2)
             ON CONFLICT (sink) DO UPDATE SET position = ?2",
            params![sink, position],
        )?;
        Ok(())
    }

    /// Deletes events older than `before_ns` (retention). Returns how many.
    pub fn expire(&self, before_ns: i64) -> anyhow::Result<usize> {
        let conn = self.writer.lock().expect("store mutex");
        Ok(conn.execute("DELETE FROM events WHERE time_ns < ?1", params![before_ns])?)
    }
}

/// The highest event id stored.
pub fn last_id(conn: &Connection) -> anyhow::Result<i64> {
    Ok(conn.query_row("SELECT COALESCE(MAX(id), 0) FROM events", [], |r| r.get(0))?)
}

/// The store id of an event, by its uid parts.
pub fn id_of(
    conn: &Connection,
    sensor_id: &str,
    stream_id: &str,
    seq: u64,
) -> anyhow::Result<Option<i64>> {
    Ok(conn
        .query_row(
            "SELECT id FROM events WHERE sensor_id = ?1 AND stream_id = ?2 AND seq = ?3",
            params![sensor_id, stream_id, seq as i64],
            |r| r.get(0),
        )
        .optional()?)
}

/// Events with id > `after`, in id order, at most `limit`.
pub fn read_after(
    conn: &Connection,
    after: i64,
    limit: usize,
) -> anyhow::Result<Vec<(i64, pb::Event)>> {
    let mut stmt =
        conn.prepare_cached("SELECT id, event FROM events WHERE id > ?1 ORDER BY id LIMIT ?2")?;
    let rows = stmt.query_map(params![after, limit as i64], |r| {
        Ok((r.get::<_, i64>(0)?, r.get::<_, Vec<u8>>(1)?))
    })?;
    let mut out = Vec::new();
    for row in rows {
        let (id, blob) = row?;
        match pb::Event::decode(blob.as_slice()) {
            Ok(ev) => out.push((id, ev)),
            Err(e) => tracing::error!(id, error = %e, "undecodable event in the store; skipped"),
        }
    }
    Ok(out)
}

pub fn streams(conn: &Connection) -> anyhow::Result<Vec<StreamRow>> {
    let mut stmt = conn.prepare(
        "SELECT sensor_id, stream_id, node, durable, stored, duplicates, lost, gaps
         FROM streams ORDER BY sensor_id, stream_id",
    )?;
    let rows = stmt.query_map([], |r| {
        Ok(StreamRow {
            sensor_id: r.get(0)?,
            stream_id: r.get(1)?,
            node: r.get(2)?,
            durable: r.get::<_, i64>(3)? as u64,
            stored: r.get::<_, i64>(4)? as u64,
            duplicates: r.get::<_, i64>(5)? as u64,
            lost: r.get::<_, i64>(6)? as u64,
            gaps: r.get::<_, i64>(7)? as u64,
        })
    })?;
    Ok(rows.collect::<Result<_, _>>()?)
}

pub(super) fn now_ns() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_nanos() as i64)
        .unwrap_or(0)
}

/// The indexed columns of an event.
struct Columns {
    time_ns: i64,
    kind: &'static str,
    identity: Option<String>,
    namespace: Option<String>,
    pod: Option<String>,
    exe: Option<String>,
    path: Option<String>,
}

impl Columns {
    fn of(ev: &pb::Event) -> Self {
        use pb::event::Payload;
        let nonempty = |s: &str| (!s.is_empty()).then(|| s.to_string());
        let path = match &ev.payload {
            Some(Payload::FileOpen(f)) => f.path.as_ref().map(|p| p.text.clone()),
            Some(Payload::FileClose(f)) => f.path.as_ref().map(|p| p.text.clone()),
            Some(Payload::Unix(u)) => u.path.as_ref().map(|p| p.text.clone()),
            Some(Payload::Network(n)) => n.dst.as_ref().map(|d| format!("{}:{}", d.ip, d.port)),
            Some(Payload::Finding(f)) => Some(format!("{} {}", f.rule_id, f.summary)),
            _ => None,
        };
        Self {
            time_ns: ev
                .time
                .as_ref()
                .map(|t| t.seconds.saturating_mul(1_000_000_000) + t.nanos as i64)
                .unwrap_or(0),
            kind: kind_name(ev.kind()),
            identity: ev.identity.as_ref().and_then(|i| nonempty(&i.id)),
            namespace: ev.workload.as_ref().and_then(|w| nonempty(&w.namespace)),
            pod: ev.workload.as_ref().and_then(|w| nonempty(&w.pod_name)),
            exe: ev
                .process
                .as_ref()
                .and_then(|p| p.exe.as_ref())
                .map(|e| e.text.clone()),
            path,
        }
    }
}

/// The sensor's dotted name of a kind.
pub fn kind_name(k: pb::EventKind) -> &'static str {
    use pb::EventKind as K;
    match k {
        K::ProcessExec => "process.exec",
        K::ProcessFork => "process.fork",
        K::ProcessExit => "process.exit",
        K::ProcessCredChange => "process.cred_change",
        K::FileOpen => "file.open",
        K::FileClose => "file.close",
        K::FileRead => "file.read",
        K::NetworkConnect => "network.connect",
        K::NetworkConnectResult => "network.connect_result",
        K::NetworkUdpSend => "network.udp_send",
        K::NetworkAccept => "network.accept",
        K::NetworkUnixConnect => "network.unix_connect",
        K::SensorStats => "sensor.stats",
        K::SensorLoss => "sensor.loss",
        K::Finding => "finding",
        K::NetworkDns => "network.dns",
        K::Unspecified => "unknown",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sensor() -> pb::SensorIdentity {
        pb::SensorIdentity {
            sensor_id: "s1".into(),
            node_name: "n1".into(),
            boot_id: "b".into(),
            stream_id: "st".into(),
            sensor_version: "0".into(),
        }
    }

    fn ev(seq: u64) -> pb::Event {
        pb::Event {
            sequence: seq,
            kind: pb::EventKind::FileOpen as i32,
            ..Default::default()
        }
    }

    fn loss(first: u64, last: u64) -> pb::Event {
        pb::Event {
            sequence: first,
            kind: pb::EventKind::SensorLoss as i32,
            payload: Some(pb::event::Payload::Loss(pb::Loss {
                reason: pb::LossReason::SpoolFull as i32,
                first_sequence: first,
                last_sequence: last,
                count: last - first + 1,
            })),
            ..Default::default()
        }
    }

    #[test]
    fn dedupes_counts_losses_and_gaps_and_survives_reopen() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path(), false).unwrap();
        let c = store.commit(&sensor(), (1..=3).map(ev).collect()).unwrap();
        assert_eq!((c.durable, c.stored.len(), c.duplicates), (3, 3, 0));
        // Redelivery of 2..3 plus new 4: only 4 is stored.
        let c = store.commit(&sensor(), (2..=4).map(ev).collect()).unwrap();
        assert_eq!((c.durable, c.stored.len(), c.duplicates), (4, 1, 2));
        // A loss record for 5..9, then 10.
        let c = store.commit(&sensor(), vec![loss(5, 9), ev(10)]).unwrap();
        assert_eq!((c.durable, c.lost, c.gaps), (10, 5, 0));
        // An unexplained gap: 11..12 missing.
        let c = store.commit(&sensor(), vec![ev(13)]).unwrap();
        assert_eq!((c.durable, c.gaps), (13, 2));
        drop(store);
        let store = Store::open(dir.path(), false).unwrap();
        assert_eq!(store.durable("s1", "st").unwrap(), 13);
        let reader = store.reader().unwrap();
        let rows = streams(&reader).unwrap();
        assert_eq!(
            (
                rows[0].stored,
                rows[0].duplicates,
                rows[0].lost,
                rows[0].gaps
            ),
            (7, 2, 5, 2)
        );
        let all = read_after(&reader, 0, 100).unwrap();
        let seqs: Vec<u64> = all.iter().map(|(_, e)| e.sequence).collect();
        assert_eq!(seqs, vec![1, 2, 3, 4, 5, 10, 13]);
        assert_eq!(all[0].1.sensor.as_ref().unwrap().node_name, "n1");
        assert_eq!(id_of(&reader, "s1", "st", 10).unwrap(), Some(all[5].0));
    }
}
