//! The identity inventory: which non-human identities were seen, which credentials they used,
//! from which workloads, binaries, users and hosts, and where they connected (with the DNS
//! names the sensor saw resolved) — plus lifecycle signals (orphan candidates, never rotated,
//! shared).
//!
//! It is aggregated as events are committed ([`record`], in the store's batch transaction),
//! into small tables keyed by what the inventory groups by, so a query reads aggregates, never
//! the event history. The aggregates outlive the events' retention on purpose: "last used 40
//! days ago" is exactly what an orphan check needs after the events themselves expired.
//! Only events stored after this table set existed are counted (older stores start empty).

use std::{
    collections::{BTreeMap, HashMap},
    io::Write as _,
    path::PathBuf,
    time::Duration,
};

use anyhow::Context as _;
use clap::{Args, ValueEnum};
use nhi_proto::v1 as pb;
use rusqlite::{Connection, OpenFlags, Transaction, params};
use serde::Serialize;
use serde_json::Value;

use super::{ocsf, store};

pub(super) const SCHEMA: &str = "
CREATE TABLE IF NOT EXISTS inv_identity_use (
    identity  TEXT NOT NULL,
    kind      TEXT NOT NULL,        -- identity kind, e.g. kubernetes_service_account
    spiffe_id TEXT NOT NULL,
    workload  TEXT NOT NULL,        -- inv_workloads.id
    exe       TEXT NOT NULL,
    user      TEXT NOT NULL,
    node      TEXT NOT NULL,
    first_ns  INTEGER NOT NULL,
    last_ns   INTEGER NOT NULL,
    events    INTEGER NOT NULL,
    PRIMARY KEY (identity, workload, exe, user, node)
);
CREATE TABLE IF NOT EXISTS inv_workloads (
    id     TEXT PRIMARY KEY,
    detail TEXT NOT NULL            -- JSON object, the latest description
);
CREATE TABLE IF NOT EXISTS inv_credentials (
    fingerprint TEXT PRIMARY KEY,
    kind        TEXT NOT NULL,
    format      TEXT NOT NULL,
    identifiers TEXT NOT NULL,      -- JSON object, as of the latest use
    mtime       TEXT,               -- file mtime at the latest use
    first_ns    INTEGER NOT NULL,
    last_ns     INTEGER NOT NULL,
    uses        INTEGER NOT NULL
);
CREATE TABLE IF NOT EXISTS inv_credential_use (
    fingerprint TEXT NOT NULL,
    identity    TEXT NOT NULL,
    workload    TEXT NOT NULL,
    exe         TEXT NOT NULL,
    user        TEXT NOT NULL,
    node        TEXT NOT NULL,
    path        TEXT NOT NULL,
    first_ns    INTEGER NOT NULL,
    last_ns     INTEGER NOT NULL,
    uses        INTEGER NOT NULL,
    PRIMARY KEY (fingerprint, identity, workload, exe, user, node, path)
);
CREATE INDEX IF NOT EXISTS inv_credential_use_identity ON inv_credential_use (identity);
CREATE TABLE IF NOT EXISTS inv_destinations (
    identity TEXT NOT NULL,
    protocol TEXT NOT NULL,
    ip       TEXT NOT NULL,
    port     INTEGER NOT NULL,
    first_ns INTEGER NOT NULL,
    last_ns  INTEGER NOT NULL,
    connects INTEGER NOT NULL,
    PRIMARY KEY (identity, protocol, ip, port)
);
CREATE TABLE IF NOT EXISTS inv_destination_names (
    identity TEXT NOT NULL,
    protocol TEXT NOT NULL,
    ip       TEXT NOT NULL,
    port     INTEGER NOT NULL,
    name     TEXT NOT NULL,
    PRIMARY KEY (identity, protocol, ip, port, name)
);
";

/// First and last time (Unix ns) and count of what one aggregate row counts.
#[derive(Clone, Copy)]
struct Seen {
    first: i64,
    last: i64,
    n: i64,
}

impl Seen {
    fn new(t: i64) -> Self {
        Self {
            first: t,
            last: t,
            n: 1,
        }
    }

    fn add(&mut self, t: i64) {
        self.first = self.first.min(t);
        self.last = self.last.max(t);
        self.n += 1;
    }
}

fn seen<K: std::hash::Hash + Eq>(m: &mut HashMap<K, Seen>, k: K, t: i64) {
    m.entry(k)
        .and_modify(|s| s.add(t))
        .or_insert_with(|| Seen::new(t));
}

/// One batch folded in memory: a batch is mostly the same few processes doing the same
/// things, so each distinct row is written once per batch instead of once per event.
#[derive(Default)]
struct Batch {
    /// (identity, workload, exe, user) → identity kind and SPIFFE id (latest).
    identity_kinds: HashMap<(String, String, String, String), (String, String)>,
    identity_use: HashMap<(String, String, String, String), Seen>,
    workloads: HashMap<String, Value>,
    /// fingerprint → (kind, format, identifiers, mtime) as of the latest use in the batch.
    credentials: HashMap<String, (i64, String, String, String, Option<String>)>,
    credential_seen: HashMap<String, Seen>,
    /// (fingerprint, identity, workload, exe, user, path).
    credential_use: HashMap<(String, String, String, String, String, String), Seen>,
    /// (identity, protocol, ip, port).
    destinations: HashMap<(String, String, String, u32), Seen>,
    names: std::collections::HashSet<(String, String, String, u32, String)>,
}

fn time_ns(ev: &pb::Event) -> i64 {
    ev.time
        .as_ref()
        .map(|t| t.seconds.saturating_mul(1_000_000_000) + i64::from(t.nanos))
        .unwrap_or(0)
}

impl Batch {
    fn add(&mut self, node: &str, ev: &pb::Event) {
        let (Some(id), Some(p)) = (ev.identity.as_ref(), ev.process.as_ref()) else {
            return;
        };
        if id.id.is_empty() {
            return;
        }
        let t = time_ns(ev);
        let (workload, detail) = workload_of(ev.workload.as_ref(), node);
        let exe = p.exe.as_ref().map(|e| e.text.clone()).unwrap_or_default();
        let user = p.user.clone().unwrap_or_else(|| p.uid.to_string());
        let key = (id.id.clone(), workload.clone(), exe.clone(), user.clone());
        self.identity_kinds
            .insert(key.clone(), (identity_kind(id), id.spiffe_id.clone()));
        seen(&mut self.identity_use, key, t);
        self.workloads.insert(workload.clone(), detail);

        use pb::event::Payload;
        match &ev.payload {
            Some(Payload::FileOpen(f)) => {
                let Some(c) = &ev.credential else { return };
                // Without a fingerprint (unreadable, over the size cap) two files cannot be
                // told apart or matched across workloads: such uses stay in the event history.
                let Some(fp) = c.fingerprint.clone() else {
                    return;
                };
                let path = f.path.as_ref().map(|p| p.text.clone()).unwrap_or_default();
                if self.credentials.get(&fp).is_none_or(|(at, ..)| t >= *at) {
                    let ids = Value::Object(ocsf::identifiers(c)).to_string();
                    self.credentials.insert(
                        fp.clone(),
                        (t, c.kind.clone(), c.format.clone(), ids, c.mtime.clone()),
                    );
                }
                seen(&mut self.credential_seen, fp.clone(), t);
                seen(
                    &mut self.credential_use,
                    (fp, id.id.clone(), workload, exe, user, path),
                    t,
                );
            }
            Some(Payload::Network(n)) => {
                let kind = ev.kind();
                let outbound = matches!(
                    kind,
                    pb::EventKind::NetworkConnect | pb::EventKind::NetworkUdpSend
                );
                if !outbound && kind != pb::EventKind::NetworkConnectResult {
                    return;
                }
                let Some(dst) = &n.dst else { return };
                let protocol = ocsf::enum_str(
                    n.protocol,
                    "NETWORK_PROTOCOL_",
                    |p: &pb::NetworkProtocol| p.as_str_name(),
                );
                let key = (id.id.clone(), protocol, dst.ip.clone(), dst.port);
                for name in &n.dst_dns_names {
                    let (i, pr, ip, port) = key.clone();
                    self.names.insert((i, pr, ip, port, name.clone()));
                }
                // A connect_result is the outcome of a connect already counted: names only.
                if outbound {
                    seen(&mut self.destinations, key, t);
                }
            }
            _ => {}
        }
    }

    fn write(self, tx: &Transaction<'_>, node: &str) -> rusqlite::Result<()> {
        let mut st = tx.prepare_cached(
            "INSERT INTO inv_identity_use VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10)
             ON CONFLICT DO UPDATE SET kind = ?2, spiffe_id = ?3, first_ns = min(first_ns, ?8),
                last_ns = max(last_ns, ?9), events = events + ?10",
        )?;
        for (k, s) in &self.identity_use {
            let (kind, spiffe) = &self.identity_kinds[k];
            let (identity, workload, exe, user) = k;
            st.execute(params![
                identity, kind, spiffe, workload, exe, user, node, s.first, s.last, s.n
            ])?;
        }
        let mut st = tx.prepare_cached(
            "INSERT INTO inv_workloads VALUES (?1, ?2) ON CONFLICT DO UPDATE SET detail = ?2",
        )?;
        for (w, detail) in &self.workloads {
            st.execute(params![w, detail.to_string()])?;
        }
        let mut st = tx.prepare_cached(
            "INSERT INTO inv_credentials VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8)
             ON CONFLICT DO UPDATE SET first_ns = min(first_ns, ?6), uses = uses + ?8,
                kind = iif(?7 >= last_ns, ?2, kind), format = iif(?7 >= last_ns, ?3, format),
                identifiers = iif(?7 >= last_ns, ?4, identifiers),
                mtime = iif(?7 >= last_ns, ?5, mtime), last_ns = max(last_ns, ?7)",
        )?;
        for (fp, (_, kind, format, ids, mtime)) in &self.credentials {
            let s = self.credential_seen[fp];
            st.execute(params![fp, kind, format, ids, mtime, s.first, s.last, s.n])?;
        }
        let mut st = tx.prepare_cached(
            "INSERT INTO inv_credential_use VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10)
             ON CONFLICT DO UPDATE SET first_ns = min(first_ns, ?8),
                last_ns = max(last_ns, ?9), uses = uses + ?10",
        )?;
        for ((fp, identity, workload, exe, user, path), s) in &self.credential_use {
            st.execute(params![
                fp, identity, workload, exe, user, node, path, s.first, s.last, s.n
            ])?;
        }
        let mut st = tx.prepare_cached(
            "INSERT INTO inv_destinations VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7)
             ON CONFLICT DO UPDATE SET first_ns = min(first_ns, ?5),
                last_ns = max(last_ns, ?6), connects = connects + ?7",
        )?;
        for ((identity, protocol, ip, port), s) in &self.destinations {
            st.execute(params![identity, protocol, ip, port, s.first, s.last, s.n])?;
        }
        let mut st = tx.prepare_cached(
            "INSERT OR IGNORE INTO inv_destination_names VALUES (?1, ?2, ?3, ?4, ?5)",
        )?;
        for (identity, protocol, ip, port, name) in &self.names {
            st.execute(params![identity, protocol, ip, port, name])?;
        }
        Ok(())
    }
}

/// Folds a committed batch's newly stored events into the aggregates, inside the commit's
/// transaction.
pub(super) fn record<'a>(
    tx: &Transaction<'_>,
    node: &str,
    events: impl IntoIterator<Item = &'a pb::Event>,
) -> rusqlite::Result<()> {
    let mut batch = Batch::default();
    for ev in events {
        batch.add(node, ev);
    }
    batch.write(tx, node)
}

/// The sensor's name of an identity kind (`kubernetes_service_account`, `unix_user`, ...).
fn identity_kind(i: &pb::Identity) -> String {
    ocsf::enum_str(i.kind, "IDENTITY_KIND_", |k: &pb::IdentityKind| {
        k.as_str_name()
    })
}

/// A workload's inventory id and description. Pods and containers are named by their
/// (cluster-wide unique) uid and id; systemd units and host processes only mean something
/// on their node, so the node is part of their id.
fn workload_of(w: Option<&pb::Workload>, node: &str) -> (String, Value) {
    use pb::WorkloadKind as W;
    let nonempty = |s: &str| (!s.is_empty()).then(|| s.to_string());
    let Some(w) = w else {
        return (
            format!("unknown:{node}"),
            serde_json::json!({"kind": "unknown", "node": node}),
        );
    };
    let (kind, id) = match w.kind() {
        W::KubernetesPod => ("kubernetes", format!("kubernetes:{}", w.pod_uid)),
        W::Container => (
            "container",
            format!(
                "container:{}:{}",
                if w.runtime.is_empty() {
                    "unknown"
                } else {
                    &w.runtime
                },
                w.container_id
            ),
        ),
        W::SystemdUnit => ("systemd", format!("systemd:{node}:{}", w.unit)),
        W::Host => ("host", format!("host:{node}")),
        W::Unspecified => ("unknown", format!("unknown:{node}")),
    };
    let detail = serde_json::json!({
        "kind": kind,
        "node": node,
        "namespace": nonempty(&w.namespace),
        "pod_name": nonempty(&w.pod_name),
        "pod_uid": nonempty(&w.pod_uid),
        "container_id": (kind == "container").then(|| w.container_id.clone()),
        "runtime": nonempty(&w.runtime),
        "unit": nonempty(&w.unit),
    });
    (id, detail)
}

// ------------------------------------------------------------------------------------------
// The query.

/// Credentials whose last use is older than this are orphan candidates. 30 days: longer than
/// any batch or monthly job's period, short enough to flag a decommissioned workload's key
/// within one review cycle.
pub const DEFAULT_UNUSED_DAYS: u64 = 30;
/// Rotation policy for kinds without their own: 90 days, the rotation period AWS and CIS
/// benchmarks recommend for long-lived access keys.
pub const DEFAULT_ROTATION_DAYS: u64 = 90;
/// Per-kind rotation policies (days). Projected service-account tokens are rewritten by the
/// kubelet at least daily (80% of a 1 h default TTL, at most 24 h): one older than a day
/// means a legacy or copied token.
const KIND_ROTATION_DAYS: &[(&str, u64)] = &[("kubernetes_sa_token", 1)];

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum InventoryFormat {
    /// The documented JSON document (README, "Inventory").
    Json,
    /// Tables for a terminal: identities, then credentials.
    Table,
}

#[derive(Debug, Args)]
pub struct InventoryArgs {
    /// The store directory (`collector --store`, `run --store`).
    #[arg(long, value_name = "DIR", default_value = super::DEFAULT_STORE)]
    pub store: PathBuf,
    #[arg(long, value_enum, default_value_t = InventoryFormat::Table)]
    pub format: InventoryFormat,
    #[command(flatten)]
    pub policy: PolicyArgs,
}

#[derive(Debug, Args, Clone, Default)]
pub struct PolicyArgs {
    /// A credential last used more than this many days ago is an orphan candidate.
    #[arg(long, value_name = "DAYS", default_value_t = DEFAULT_UNUSED_DAYS)]
    pub unused_days: u64,
    /// Rotation policy: a credential whose content (fingerprint) is older than this many days
    /// is flagged never rotated (kinds without a `--rotation KIND=DAYS` of their own).
    #[arg(long, value_name = "DAYS", default_value_t = DEFAULT_ROTATION_DAYS)]
    pub rotation_days: u64,
    /// Per-kind rotation policy (repeatable), e.g. `ssh_private_key=365`. Built in:
    /// `kubernetes_sa_token=1`.
    #[arg(long = "rotation", value_name = "KIND=DAYS", value_parser = parse_kind_days)]
    pub rotation: Vec<(String, u64)>,
}

fn parse_kind_days(s: &str) -> Result<(String, u64), String> {
    let (k, d) = s
        .split_once('=')
        .ok_or_else(|| format!("{s:?}: expected KIND=DAYS"))?;
    let days = d
        .parse()
        .map_err(|_| format!("{s:?}: {d:?} is not a number of days"))?;
    Ok((k.to_string(), days))
}

#[derive(Debug, Serialize)]
pub struct Policy {
    pub unused_days: u64,
    pub rotation_days_default: u64,
    pub rotation_days: BTreeMap<String, u64>,
}

impl Policy {
    pub fn from_args(a: &PolicyArgs) -> Self {
        let PolicyArgs {
            unused_days,
            rotation_days,
            rotation,
        } = a;
        let mut per_kind: BTreeMap<String, u64> = KIND_ROTATION_DAYS
            .iter()
            .map(|(k, d)| (k.to_string(), *d))
            .collect();
        per_kind.extend(rotation.iter().cloned());
        Self {
            unused_days: *unused_days,
            rotation_days_default: *rotation_days,
            rotation_days: per_kind,
        }
    }

    fn rotation_for(&self, kind: &str) -> u64 {
        self.rotation_days
            .get(kind)
            .copied()
            .unwrap_or(self.rotation_days_default)
    }
}

#[derive(Debug, Serialize)]
pub struct Inventory {
    pub generated_at: String,
    pub policy: Policy,
    pub identities: Vec<IdentityEntry>,
    pub credentials: Vec<CredentialEntry>,
    pub workloads: Vec<WorkloadEntry>,
}

#[derive(Debug, Serialize)]
pub struct IdentityEntry {
    pub id: String,
    pub kind: String,
    pub spiffe_id: Option<String>,
    pub first_seen: String,
    pub last_seen: String,
    pub events: u64,
    pub workloads: Vec<String>,
    pub binaries: Vec<String>,
    pub users: Vec<String>,
    pub hosts: Vec<String>,
    pub credentials: Vec<CredentialUse>,
    pub destinations: Vec<Destination>,
}

#[derive(Debug, Serialize)]
pub struct CredentialUse {
    pub fingerprint: String,
    pub kind: String,
    pub first_use: String,
    pub last_use: String,
    pub uses: u64,
}

#[derive(Debug, Serialize)]
pub struct Destination {
    pub protocol: String,
    pub ip: String,
    pub port: u32,
    pub dns_names: Vec<String>,
    pub first_seen: String,
    pub last_seen: String,
    pub connects: u64,
}

#[derive(Debug, Serialize)]
pub struct CredentialEntry {
    pub fingerprint: String,
    pub kind: String,
    pub format: String,
    pub identifiers: Value,
    pub paths: Vec<String>,
    pub mtime: Option<String>,
    /// Seconds from the file's mtime (or the first use, when older) to now.
    pub age_s: i64,
    pub first_use: String,
    pub last_use: String,
    pub uses: u64,
    pub identities: Vec<String>,
    pub workloads: Vec<String>,
    pub binaries: Vec<String>,
    pub users: Vec<String>,
    pub hosts: Vec<String>,
    pub shared: bool,
    pub orphan_candidate: bool,
    pub never_rotated: bool,
    pub rotation_policy_days: u64,
}

#[derive(Debug, Serialize)]
pub struct WorkloadEntry {
    pub id: String,
    #[serde(flatten)]
    pub detail: Value,
    pub identities: Vec<String>,
    pub credentials: Vec<String>,
}

fn rfc3339(ns: i64) -> String {
    let t = std::time::UNIX_EPOCH + Duration::from_nanos(ns.max(0) as u64);
    humantime::format_rfc3339_nanos(t).to_string()
}

/// `SELECT DISTINCT col FROM table WHERE key = ? ORDER BY col`.
fn distinct(
    conn: &Connection,
    table: &str,
    col: &str,
    key: &str,
    v: &str,
) -> anyhow::Result<Vec<String>> {
    let mut stmt = conn.prepare_cached(&format!(
        "SELECT DISTINCT {col} FROM {table} WHERE {key} = ?1 AND {col} != '' ORDER BY {col}"
    ))?;
    let rows = stmt.query_map([v], |r| r.get(0))?;
    Ok(rows.collect::<Result<_, _>>()?)
}

/// Builds the inventory from the aggregates. Every list is sorted, so equal stores give
/// byte-equal JSON (apart from `generated_at` and the ages).
pub fn build(conn: &Connection, policy: Policy, now_ns: i64) -> anyhow::Result<Inventory> {
    let mut identities = Vec::new();
    {
        let mut stmt = conn.prepare(
            "SELECT identity, max(kind), max(spiffe_id), min(first_ns), max(last_ns), sum(events)
             FROM inv_identity_use GROUP BY identity ORDER BY identity",
        )?;
        let rows = stmt.query_map([], |r| {
            Ok((
                r.get::<_, String>(0)?,
                r.get::<_, String>(1)?,
                r.get::<_, String>(2)?,
                r.get::<_, i64>(3)?,
                r.get::<_, i64>(4)?,
                r.get::<_, i64>(5)?,
            ))
        })?;
        for row in rows {
            let (id, kind, spiffe, first, last, events) = row?;
            let mut creds = conn.prepare_cached(
                "SELECT u.fingerprint, c.kind, min(u.first_ns), max(u.last_ns), sum(u.uses)
                 FROM inv_credential_use u JOIN inv_credentials c USING (fingerprint)
                 WHERE u.identity = ?1 GROUP BY u.fingerprint ORDER BY u.fingerprint",
            )?;
            let credentials = creds
                .query_map([&id], |r| {
                    Ok(CredentialUse {
                        fingerprint: r.get(0)?,
                        kind: r.get(1)?,
                        first_use: rfc3339(r.get(2)?),
                        last_use: rfc3339(r.get(3)?),
                        uses: r.get::<_, i64>(4)? as u64,
                    })
                })?
                .collect::<Result<_, _>>()?;
            let mut dests = conn.prepare_cached(
                "SELECT protocol, ip, port, first_ns, last_ns, connects FROM inv_destinations
                 WHERE identity = ?1 ORDER BY ip, port, protocol",
            )?;
            let mut destinations: Vec<Destination> = dests
                .query_map([&id], |r| {
                    Ok(Destination {
                        protocol: r.get(0)?,
                        ip: r.get(1)?,
                        port: r.get(2)?,
                        dns_names: Vec::new(),
                        first_seen: rfc3339(r.get(3)?),
                        last_seen: rfc3339(r.get(4)?),
                        connects: r.get::<_, i64>(5)? as u64,
                    })
                })?
                .collect::<Result<_, _>>()?;
            let mut names = conn.prepare_cached(
                "SELECT name FROM inv_destination_names
                 WHERE identity = ?1 AND protocol = ?2 AND ip = ?3 AND port = ?4 ORDER BY name",
            )?;
            for d in &mut destinations {
                d.dns_names = names
                    .query_map(params![id, d.protocol, d.ip, d.port], |r| r.get(0))?
                    .collect::<Result<_, _>>()?;
            }
            identities.push(IdentityEntry {
                workloads: distinct(conn, "inv_identity_use", "workload", "identity", &id)?,
                binaries: distinct(conn, "inv_identity_use", "exe", "identity", &id)?,
                users: distinct(conn, "inv_identity_use", "user", "identity", &id)?,
                hosts: distinct(conn, "inv_identity_use", "node", "identity", &id)?,
                spiffe_id: (!spiffe.is_empty()).then_some(spiffe),
                first_seen: rfc3339(first),
                last_seen: rfc3339(last),
                events: events as u64,
                credentials,
                destinations,
                id,
                kind,
            });
        }
    }

    let mut credentials = Vec::new();
    {
        let mut stmt = conn.prepare(
            "SELECT fingerprint, kind, format, identifiers, mtime, first_ns, last_ns, uses
             FROM inv_credentials ORDER BY fingerprint",
        )?;
        let rows = stmt.query_map([], |r| {
            Ok((
                r.get::<_, String>(0)?,
                r.get::<_, String>(1)?,
                r.get::<_, String>(2)?,
                r.get::<_, String>(3)?,
                r.get::<_, Option<String>>(4)?,
                r.get::<_, i64>(5)?,
                r.get::<_, i64>(6)?,
                r.get::<_, i64>(7)?,
            ))
        })?;
        for row in rows {
            let (fp, kind, format, ids, mtime, first, last, uses) = row?;
            let workloads = distinct(conn, "inv_credential_use", "workload", "fingerprint", &fp)?;
            // The content is at least as old as its file's mtime and as its first use here.
            let mtime_ns = mtime
                .as_deref()
                .and_then(|m| humantime::parse_rfc3339_weak(m).ok())
                .and_then(|t| t.duration_since(std::time::UNIX_EPOCH).ok())
                .map(|d| d.as_nanos() as i64);
            let born = mtime_ns.map_or(first, |m| m.min(first));
            let age_s = (now_ns - born).max(0) / 1_000_000_000;
            let rotation = policy.rotation_for(&kind);
            let day_s = 86_400_i64;
            credentials.push(CredentialEntry {
                identifiers: serde_json::from_str(&ids).unwrap_or(Value::Null),
                paths: distinct(conn, "inv_credential_use", "path", "fingerprint", &fp)?,
                identities: distinct(conn, "inv_credential_use", "identity", "fingerprint", &fp)?,
                binaries: distinct(conn, "inv_credential_use", "exe", "fingerprint", &fp)?,
                users: distinct(conn, "inv_credential_use", "user", "fingerprint", &fp)?,
                hosts: distinct(conn, "inv_credential_use", "node", "fingerprint", &fp)?,
                shared: workloads.len() > 1,
                workloads,
                orphan_candidate: (now_ns - last) / 1_000_000_000
                    > policy.unused_days as i64 * day_s,
                never_rotated: age_s > rotation as i64 * day_s,
                rotation_policy_days: rotation,
                mtime,
                age_s,
                first_use: rfc3339(first),
                last_use: rfc3339(last),
                uses: uses as u64,
                fingerprint: fp,
                kind,
                format,
            });
        }
    }

    let mut workloads = Vec::new();
    {
        let mut stmt = conn.prepare("SELECT id, detail FROM inv_workloads ORDER BY id")?;
        let rows = stmt.query_map([], |r| Ok((r.get::<_, String>(0)?, r.get::<_, String>(1)?)))?;
        for row in rows {
            let (id, detail) = row?;
            let mut detail: Value = serde_json::from_str(&detail).unwrap_or(Value::Null);
            if let Value::Object(m) = &mut detail {
                m.retain(|_, v| !v.is_null());
            }
            workloads.push(WorkloadEntry {
                identities: distinct(conn, "inv_identity_use", "identity", "workload", &id)?,
                credentials: distinct(conn, "inv_credential_use", "fingerprint", "workload", &id)?,
                detail,
                id,
            });
        }
    }

    Ok(Inventory {
        generated_at: rfc3339(now_ns),
        policy,
        identities,
        credentials,
        workloads,
    })
}

/// Opens a store read-only and builds its inventory (the CLI and the gRPC service).
pub fn build_from_store(dir: &std::path::Path, policy: Policy) -> anyhow::Result<Inventory> {
    let db = store::db_path(dir);
    if !db.exists() {
        anyhow::bail!("no store at {} (is --store right?)", dir.display());
    }
    let conn = Connection::open_with_flags(&db, OpenFlags::SQLITE_OPEN_READ_ONLY)
        .with_context(|| format!("opening {}", db.display()))?;
    conn.busy_timeout(Duration::from_secs(5))?;
    build(&conn, policy, store::now_ns())
        .with_context(|| format!("reading the inventory of {}", db.display()))
}

/// `nhi-sensor inventory`.
pub fn run(args: &InventoryArgs) -> anyhow::Result<()> {
    let inv = build_from_store(&args.store, Policy::from_args(&args.policy))?;
    let mut out = std::io::stdout().lock();
    match args.format {
        InventoryFormat::Json => {
            serde_json::to_writer_pretty(&mut out, &inv)?;
            writeln!(out)?;
        }
        InventoryFormat::Table => write_table(&mut out, &inv)?,
    }
    Ok(())
}

fn write_table(out: &mut impl std::io::Write, inv: &Inventory) -> std::io::Result<()> {
    writeln!(
        out,
        "{:<44} {:<26} {:>5} {:>5} {:>5} LAST SEEN",
        "IDENTITY", "KIND", "WKLDS", "CREDS", "DESTS"
    )?;
    for i in &inv.identities {
        writeln!(
            out,
            "{:<44} {:<26} {:>5} {:>5} {:>5} {}",
            i.id,
            i.kind,
            i.workloads.len(),
            i.credentials.len(),
            i.destinations.len(),
            i.last_seen
        )?;
        for d in &i.destinations {
            writeln!(
                out,
                "    → {}:{} {} {}",
                d.ip,
                d.port,
                d.protocol,
                d.dns_names.join(",")
            )?;
        }
    }
    writeln!(out)?;
    writeln!(
        out,
        "{:<30} {:<26} {:>5} {:<30} FLAGS",
        "CREDENTIAL", "KIND", "WKLDS", "LAST USE"
    )?;
    for c in &inv.credentials {
        let flags: Vec<&str> = [
            (c.shared, "shared"),
            (c.orphan_candidate, "orphan-candidate"),
            (c.never_rotated, "never-rotated"),
        ]
        .into_iter()
        .filter_map(|(on, f)| on.then_some(f))
        .collect();
        let fp: String = c.fingerprint.chars().take(29).collect();
        writeln!(
            out,
            "{fp:<30} {:<26} {:>5} {:<30} {}",
            c.kind,
            c.workloads.len(),
            c.last_use,
            flags.join(",")
        )?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::collector::store::Store;

    fn sensor() -> pb::SensorIdentity {
        pb::SensorIdentity {
            sensor_id: "s1".into(),
            node_name: "node-a".into(),
            boot_id: "b".into(),
            stream_id: "st".into(),
            sensor_version: "0".into(),
        }
    }

    fn ev(seq: u64, container: &str, kind: pb::EventKind, secs: i64) -> pb::Event {
        pb::Event {
            sequence: seq,
            kind: kind as i32,
            time: Some(prost_types::Timestamp {
                seconds: secs,
                nanos: 0,
            }),
            process: Some(pb::Process {
                exe: Some(pb::FilePath {
                    text: "/usr/bin/app".into(),
                    raw: Vec::new(),
                }),
                user: Some("app".into()),
                ..Default::default()
            }),
            workload: Some(pb::Workload {
                kind: pb::WorkloadKind::Container as i32,
                container_id: container.into(),
                runtime: "containerd".into(),
                ..Default::default()
            }),
            identity: Some(pb::Identity {
                kind: pb::IdentityKind::Container as i32,
                id: format!("containerd:{container}"),
                ..Default::default()
            }),
            ..Default::default()
        }
    }

    fn open(seq: u64, container: &str, fp: &str, secs: i64) -> pb::Event {
        let mut e = ev(seq, container, pb::EventKind::FileOpen, secs);
        e.credential = Some(pb::Credential {
            kind: "aws_shared_credentials".into(),
            format: "aws_ini".into(),
            fingerprint: Some(fp.into()),
            identifiers: [("profiles".to_string(), "[]".to_string())].into(),
            ..Default::default()
        });
        e.payload = Some(pb::event::Payload::FileOpen(pb::FileOpen {
            path: Some(pb::FilePath {
                text: format!("/creds/{fp}"),
                raw: Vec::new(),
            }),
            ..Default::default()
        }));
        e
    }

    #[test]
    fn aggregates_sharing_destinations_and_lifecycle() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path(), false).unwrap();
        let day = 86_400;
        let mut connect = ev(5, "c1", pb::EventKind::NetworkConnect, 10 * day);
        connect.payload = Some(pb::event::Payload::Network(pb::Network {
            protocol: pb::NetworkProtocol::Tcp as i32,
            dst: Some(pb::SocketAddress {
                ip: "192.0.2.7".into(),
                port: 443,
            }),
            dst_dns_names: vec!["api.example.test".into()],
            ..Default::default()
        }));
        let events = vec![
            open(1, "c1", "fp-shared", day),
            open(2, "c2", "fp-shared", 2 * day),
            open(3, "c3", "fp-shared", 3 * day),
            open(4, "c1", "fp-own", 40 * day),
            connect.clone(),
            // A second connect to the same place adds a count, not a row.
            pb::Event {
                sequence: 6,
                ..connect
            },
        ];
        store.commit(&sensor(), events).unwrap();
        let now = 45 * day * 1_000_000_000;
        let inv = build(
            &store.reader().unwrap(),
            Policy::from_args(&PolicyArgs {
                unused_days: 30,
                rotation_days: 90,
                rotation: vec![("aws_shared_credentials".into(), 20)],
            }),
            now,
        )
        .unwrap();
        let ids: Vec<&str> = inv.identities.iter().map(|i| i.id.as_str()).collect();
        assert_eq!(ids, ["containerd:c1", "containerd:c2", "containerd:c3"]);
        let c1 = &inv.identities[0];
        assert_eq!(c1.workloads, ["container:containerd:c1"]);
        assert_eq!(
            (c1.users.as_slice(), c1.hosts.as_slice()),
            (&["app".to_string()][..], &["node-a".to_string()][..])
        );
        let fps: Vec<&str> = c1
            .credentials
            .iter()
            .map(|c| c.fingerprint.as_str())
            .collect();
        assert_eq!(fps, ["fp-own", "fp-shared"]);
        assert_eq!(c1.destinations.len(), 1);
        assert_eq!(c1.destinations[0].connects, 2);
        assert_eq!(c1.destinations[0].dns_names, ["api.example.test"]);

        let shared = inv
            .credentials
            .iter()
            .find(|c| c.fingerprint == "fp-shared")
            .unwrap();
        assert!(shared.shared);
        assert_eq!(shared.workloads.len(), 3);
        assert_eq!(shared.uses, 3);
        // Last used on day 3, 42 days before "now": an orphan candidate; first seen 44 days
        // ago, over the 20-day policy of its kind: never rotated.
        assert!(shared.orphan_candidate);
        assert!(shared.never_rotated);
        assert_eq!(shared.rotation_policy_days, 20);
        let own = inv
            .credentials
            .iter()
            .find(|c| c.fingerprint == "fp-own")
            .unwrap();
        assert!(!own.shared && !own.orphan_candidate && !own.never_rotated);
        assert_eq!(inv.workloads.len(), 3);
        assert_eq!(inv.workloads[0].credentials, ["fp-own", "fp-shared"]);
    }
}
