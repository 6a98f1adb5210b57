//! `nhi-sensor events`: queries the store of a collector (or of `run`'s embedded one) from
//! the command line. Read-only; safe while the collector runs.

use std::{io::Write as _, path::PathBuf, time::Duration};

use anyhow::Context as _;
use clap::{Args, ValueEnum};
use rusqlite::{OpenFlags, params_from_iter, types::Value};

use super::{ocsf, store};

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum QueryFormat {
    /// OCSF JSON, one event per line (what the collector's `--ocsf-out` writes).
    Json,
    /// A table: time, kind, node, identity, process, object.
    Table,
}

#[derive(Debug, Args)]
pub struct EventsArgs {
    /// The store directory (`collector --store`, `run --store`).
    #[arg(long, value_name = "DIR", default_value = super::DEFAULT_STORE)]
    pub store: PathBuf,
    /// Only events newer than this (e.g. `10m`, `2h`, `7d`).
    #[arg(long, value_name = "DURATION", value_parser = humantime::parse_duration)]
    pub since: Option<Duration>,
    /// Only events of this identity (`Identity.id`, e.g. `system:serviceaccount:prod:app`).
    #[arg(long)]
    pub identity: Option<String>,
    /// Only events of this kind (e.g. `file.open`).
    #[arg(long)]
    pub kind: Option<String>,
    /// Only events of this Kubernetes namespace.
    #[arg(long)]
    pub namespace: Option<String>,
    /// Only events from this sensor id.
    #[arg(long)]
    pub sensor: Option<String>,
    /// Only events whose path (file, socket, or destination `ip:port`) contains this.
    #[arg(long)]
    pub path: Option<String>,
    /// At most this many events, newest kept (0: no limit). 1000 keeps a terminal readable.
    #[arg(long, default_value_t = 1000)]
    pub limit: usize,
    #[arg(long, value_enum, default_value_t = QueryFormat::Table)]
    pub format: QueryFormat,
    /// Print the per-sensor-stream delivery counters (stored, duplicates, lost, gaps) as
    /// JSON instead of events.
    #[arg(long)]
    pub streams: bool,
}

pub fn run(args: &EventsArgs) -> anyhow::Result<()> {
    let db = store::db_path(&args.store);
    if !db.exists() {
        anyhow::bail!("no store at {} (is --store right?)", args.store.display());
    }
    let conn = rusqlite::Connection::open_with_flags(&db, OpenFlags::SQLITE_OPEN_READ_ONLY)
        .with_context(|| format!("opening {}", db.display()))?;
    conn.busy_timeout(Duration::from_secs(5))?;
    let mut out = std::io::stdout().lock();
    if args.streams {
        serde_json::to_writer_pretty(&mut out, &store::streams(&conn)?)?;
        writeln!(out)?;
        return Ok(());
    }
    let mut sql = String::from("SELECT event FROM events WHERE 1=1");
    let mut params: Vec<Value> = Vec::new();
    if let Some(since) = args.since {
        let cutoff = std::time::SystemTime::now()
            .checked_sub(since)
            .and_then(|t| t.duration_since(std::time::UNIX_EPOCH).ok())
            .map(|d| d.as_nanos() as i64)
            .unwrap_or(0);
        sql.push_str(" AND time_ns >= ?");
        params.push(cutoff.into());
    }
    for (col, v) in [
        ("identity", &args.identity),
        ("kind", &args.kind),
        ("namespace", &args.namespace),
        ("sensor_id", &args.sensor),
    ] {
        if let Some(v) = v {
            sql.push_str(&format!(" AND {col} = ?"));
            params.push(v.clone().into());
        }
    }
    if let Some(p) = &args.path {
        sql.push_str(" AND instr(path, ?) > 0");
        params.push(p.clone().into());
    }
    sql.push_str(" ORDER BY id DESC");
    if args.limit > 0 {
        sql.push_str(&format!(" LIMIT {}", args.limit));
    }
    let mut stmt = conn.prepare(&sql)?;
    let mut rows: Vec<Vec<u8>> = stmt
        .query_map(params_from_iter(params), |r| r.get(0))?
        .collect::<Result<_, _>>()?;
    rows.reverse();
    if args.format == QueryFormat::Table {
        writeln!(
            out,
            "{:<30} {:<22} {:<14} {:<40} {:<24} OBJECT",
            "TIME", "KIND", "NODE", "IDENTITY", "PROCESS"
        )?;
    }
    for blob in rows {
        let ev = match <nhi_proto::v1::Event as prost::Message>::decode(blob.as_slice()) {
            Ok(ev) => ev,
            Err(e) => {
                tracing::warn!(error = %e, "skipping an undecodable stored event");
                continue;
            }
        };
        match args.format {
            QueryFormat::Json => {
                serde_json::to_writer(&mut out, &ocsf::to_ocsf(&ev))?;
                writeln!(out)?;
            }
            QueryFormat::Table => writeln!(out, "{}", table_row(&ev))?,
        }
    }
    Ok(())
}

fn table_row(ev: &nhi_proto::v1::Event) -> String {
    use nhi_proto::v1::event::Payload;
    let time = ev
        .time
        .as_ref()
        .map(|t| {
            let st = std::time::UNIX_EPOCH
                + Duration::new(t.seconds.max(0) as u64, t.nanos.max(0) as u32);
            humantime::format_rfc3339_millis(st).to_string()
        })
        .unwrap_or_default();
    let node = ev
        .sensor
        .as_ref()
        .map(|s| s.node_name.as_str())
        .unwrap_or("");
    let identity = ev.identity.as_ref().map(|i| i.id.as_str()).unwrap_or("");
    let process = ev
        .process
        .as_ref()
        .map(|p| format!("{}[{}]", p.comm, p.pid))
        .unwrap_or_default();
    let object = match &ev.payload {
        Some(Payload::FileOpen(f)) => f.path.as_ref().map(|p| p.text.clone()).unwrap_or_default(),
        Some(Payload::FileClose(f)) => format!(
            "{} ({} bytes)",
            f.path.as_ref().map(|p| p.text.as_str()).unwrap_or("?"),
            f.bytes_read
        ),
        Some(Payload::Network(n)) => n
            .dst
            .as_ref()
            .map(|d| format!("{}:{}", d.ip, d.port))
            .unwrap_or_default(),
        Some(Payload::Unix(u)) => u.path.as_ref().map(|p| p.text.clone()).unwrap_or_default(),
        Some(Payload::Exec(x)) => x.argv.join(" "),
        Some(Payload::Loss(l)) => format!(
            "lost {} events (sequence {}..={})",
            l.count, l.first_sequence, l.last_sequence
        ),
        _ => String::new(),
    };
    format!(
        "{time:<30} {:<22} {node:<14} {identity:<40} {process:<24} {object}",
        store::kind_name(ev.kind())
    )
}
