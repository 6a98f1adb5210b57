//! The OCSF JSON-lines sink: follows the store in arrival order and writes one line per event
//! to stdout or to a file rotated by size.
//!
//! Exactly once into the file, across crashes: the sink's position is the last event in the
//! file itself. At start the file's tail is read back (a torn last line, from a crash in the
//! middle of a write, is cut off) and its `metadata.uid` is looked up in the store; writing
//! resumes after it. The position is also kept in the store, for when the file was rotated
//! or removed. On stdout there is nothing to read back: it starts with the events committed
//! from then on.

use std::{
    fs::{File, OpenOptions},
    io::{BufWriter, Read as _, Seek as _, SeekFrom, Write},
    path::{Path, PathBuf},
    sync::Arc,
    time::Duration,
};

use anyhow::Context as _;
use rusqlite::Connection;

use super::{
    Hub,
    metrics::CollectorMetrics,
    ocsf,
    store::{self, Store},
};

/// Rotate the file when it reaches this size. 100 MiB keeps a file quick to ship and grep.
pub const DEFAULT_MAX_BYTES: u64 = 100 << 20;
/// Rotated files kept (`FILE.1` newest ... `FILE.N` oldest).
pub const DEFAULT_KEEP: usize = 5;
/// Events read from the store per round.
const CHUNK: usize = 2048;
const SINK: &str = "ocsf";

pub struct OcsfOut {
    pub path: Option<PathBuf>,
    pub max_bytes: u64,
    pub keep: usize,
}

enum Target {
    Stdout(BufWriter<std::io::Stdout>),
    File {
        path: PathBuf,
        out: BufWriter<File>,
        size: u64,
        max_bytes: u64,
        keep: usize,
    },
}

impl Target {
    fn write_line(&mut self, line: &[u8]) -> anyhow::Result<()> {
        match self {
            Target::Stdout(w) => {
                w.write_all(line)?;
                w.write_all(b"\n")?;
            }
            Target::File {
                path,
                out,
                size,
                max_bytes,
                keep,
            } => {
                if *size > 0 && *size + line.len() as u64 + 1 > *max_bytes {
                    out.flush()?;
                    rotate(path, *keep)?;
                    *out = BufWriter::new(open_append(path)?);
                    *size = 0;
                }
                out.write_all(line)?;
                out.write_all(b"\n")?;
                *size += line.len() as u64 + 1;
            }
        }
        Ok(())
    }

    fn flush(&mut self) -> anyhow::Result<()> {
        match self {
            Target::Stdout(w) => w.flush()?,
            Target::File { out, .. } => out.flush()?,
        }
        Ok(())
    }
}

fn open_append(path: &Path) -> anyhow::Result<File> {
    OpenOptions::new()
        .create(true)
        .append(true)
        .open(path)
        .with_context(|| format!("opening the OCSF output {}", path.display()))
}

fn rotated(path: &Path, n: usize) -> PathBuf {
    let mut s = path.as_os_str().to_owned();
    s.push(format!(".{n}"));
    PathBuf::from(s)
}

fn rotate(path: &Path, keep: usize) -> anyhow::Result<()> {
    if keep == 0 {
        std::fs::remove_file(path).ok();
        return Ok(());
    }
    std::fs::remove_file(rotated(path, keep)).ok();
    for n in (1..keep).rev() {
        std::fs::rename(rotated(path, n), rotated(path, n + 1)).ok();
    }
    std::fs::rename(path, rotated(path, 1)).with_context(|| format!("rotating {}", path.display()))
}

/// The last complete line of `path`, after cutting off a torn one. `None` when empty/absent.
fn last_line(path: &Path) -> anyhow::Result<Option<String>> {
    let Ok(mut f) = OpenOptions::new().read(true).write(true).open(path) else {
        return Ok(None);
    };
    let len = f.metadata()?.len();
    // An OCSF line is a few KiB; 1 MiB always holds the last complete one.
    let start = len.saturating_sub(1 << 20);
    f.seek(SeekFrom::Start(start))?;
    let mut tail = Vec::new();
    f.read_to_end(&mut tail)?;
    let complete = match tail.iter().rposition(|b| *b == b'\n') {
        Some(i) => i + 1,
        None => 0,
    };
    if complete < tail.len() {
        tracing::warn!(
            file = %path.display(),
            bytes = tail.len() - complete,
            "cutting off a torn last line (the collector died while writing it)"
        );
        f.set_len(start + complete as u64)?;
    }
    let body = &tail[..complete.saturating_sub(1)];
    let line = match body.iter().rposition(|b| *b == b'\n') {
        Some(i) => &body[i + 1..],
        None => body,
    };
    Ok((!line.is_empty()).then(|| String::from_utf8_lossy(line).into_owned()))
}

/// Where to resume: the store id of the last event already in the output.
fn resume_position(out: &OcsfOut, store: &Store, reader: &Connection) -> anyhow::Result<i64> {
    let Some(path) = &out.path else {
        return store::last_id(reader);
    };
    for candidate in [path.clone(), rotated(path, 1)] {
        if let Some(line) = last_line(&candidate)? {
            let v: serde_json::Value = serde_json::from_str(&line)
                .with_context(|| format!("the last line of {} is not JSON", candidate.display()))?;
            let uid = v["metadata"]["uid"].as_str().unwrap_or_default();
            let mut parts = uid.rsplitn(3, ':');
            let (seq, stream, sensor) = (parts.next(), parts.next(), parts.next());
            if let (Some(seq), Some(stream), Some(sensor)) = (seq, stream, sensor)
                && let Ok(seq) = seq.parse::<u64>()
                && let Some(id) = store::id_of(reader, sensor, stream, seq)?
            {
                return Ok(id);
            }
            tracing::warn!(uid, "the OCSF output's last event is not in the store");
            break;
        }
    }
    Ok(store.sink_position(SINK)?.unwrap_or(0))
}

/// Runs the sink until the process ends.
pub fn spawn(
    out: OcsfOut,
    store: Store,
    hub: Arc<Hub>,
    metrics: Arc<CollectorMetrics>,
) -> anyhow::Result<()> {
    let reader = store.reader()?;
    let mut position = resume_position(&out, &store, &reader)?;
    let mut target = match &out.path {
        None => Target::Stdout(BufWriter::with_capacity(1 << 16, std::io::stdout())),
        Some(p) => {
            let f = open_append(p)?;
            Target::File {
                size: f.metadata()?.len(),
                path: p.clone(),
                out: BufWriter::with_capacity(1 << 16, f),
                max_bytes: out.max_bytes,
                keep: out.keep,
            }
        }
    };
    tracing::info!(after_event = position, to = ?out.path, "OCSF output");
    let rt = tokio::runtime::Handle::current();
    std::thread::Builder::new()
        .name("ocsf-out".into())
        .spawn(move || {
            loop {
                let batch = match store::read_after(&reader, position, CHUNK) {
                    Ok(b) => b,
                    Err(e) => {
                        tracing::error!(error = %format!("{e:#}"), "reading the store for OCSF output");
                        std::thread::sleep(Duration::from_secs(1));
                        continue;
                    }
                };
                if batch.is_empty() {
                    // Woken by the next commit; the timeout covers a commit made while we read.
                    rt.block_on(async {
                        let _ = tokio::time::timeout(Duration::from_millis(500), hub.committed.notified()).await;
                    });
                    continue;
                }
                let last = batch.last().map(|(id, _)| *id).unwrap_or(position);
                let written = batch.len() as u64;
                let result = (|| -> anyhow::Result<()> {
                    for (_, ev) in &batch {
                        let line = serde_json::to_vec(&ocsf::to_ocsf(ev))?;
                        target.write_line(&line)?;
                    }
                    target.flush()
                })();
                if let Err(e) = result {
                    // Disk full, output removed...: say so and retry the same events.
                    tracing::error!(error = %format!("{e:#}"), "writing OCSF output; retrying in 1 s");
                    std::thread::sleep(Duration::from_secs(1));
                    continue;
                }
                position = last;
                metrics.ocsf_written.add(written);
                if let Err(e) = store.set_sink_position(SINK, position) {
                    tracing::warn!(error = %format!("{e:#}"), "saving the OCSF position");
                }
            }
        })
        .context("starting the OCSF writer")?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn torn_tail_is_cut_and_last_line_found() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("o.jsonl");
        assert_eq!(last_line(&p).unwrap(), None);
        std::fs::write(&p, b"{\"a\":1}\n{\"b\":2}\n{\"c\":").unwrap();
        assert_eq!(last_line(&p).unwrap().as_deref(), Some("{\"b\":2}"));
        assert_eq!(std::fs::read(&p).unwrap(), b"{\"a\":1}\n{\"b\":2}\n");
        std::fs::write(&p, b"{\"only\":1}\n").unwrap();
        assert_eq!(last_line(&p).unwrap().as_deref(), Some("{\"only\":1}"));
    }

    #[test]
    fn rotation_shifts_files() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("o.jsonl");
        let mut t = Target::File {
            path: p.clone(),
            out: BufWriter::new(open_append(&p).unwrap()),
            size: 0,
            max_bytes: 10,
            keep: 2,
        };
        for line in ["aaaaaa", "bbbbbb", "cccccc", "dddddd"] {
            t.write_line(line.as_bytes()).unwrap();
        }
        t.flush().unwrap();
        assert_eq!(std::fs::read_to_string(&p).unwrap(), "dddddd\n");
        assert_eq!(std::fs::read_to_string(rotated(&p, 1)).unwrap(), "cccccc\n");
        assert_eq!(std::fs::read_to_string(rotated(&p, 2)).unwrap(), "bbbbbb\n");
        assert!(!rotated(&p, 3).exists());
    }
}
