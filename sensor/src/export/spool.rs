//! The exporter's bounded on-disk spool of events the collector has not acknowledged yet: they
//! survive a collector outage and a sensor restart (kill -9 included).
//!
//! Records are opaque bytes numbered 1, 2, 3, ... within a stream. Acks are cumulative ("all
//! ≤ N is stored") and free whole segments. Over `max_bytes` the oldest segments are evicted and
//! their sequences kept as a lost range, which reads return as [`Entry::Lost`] so the collector
//! learns what it will never get.
//!
//! # On disk (`dir` created 0700, files 0600)
//! - `00000000000000000001.seg`, named by its first sequence: a 16-byte header (`NHSP`, format
//!   version u32 LE, first sequence u64 LE), then frames: length u32 LE, CRC-32 u32 LE, payload.
//!   The CRC covers the length too, so zeros (what power loss can leave) never parse as empty
//!   records. A record's sequence is the segment's first + its index.
//! - `state.json` `{version, stream_id, acked, high_water, lost: [[first, last], ...]}`, replaced
//!   by write + rename. `lock` is `flock`ed while open: two sensors cannot share a spool. Other
//!   files are ignored.
//!
//! # Durability
//! After [`Spool::flush`] a process crash loses nothing; after [`Spool::sync`] (on each segment
//! roll, and about once a second by the owner) power loss neither. Dropping a `Spool` does not
//! flush: like a crash, it loses unflushed appends, whose sequences are then assigned again
//! unless a state write had counted them (then they are reported lost). A sequence a reader has
//! seen is never reused: reads flush first, and evicted ranges are fsynced into the state before
//! their files go. An ack that frees a segment is renamed into place and fsynced before the
//! segment is deleted, so power loss can only roll it back to records that still exist; an ack
//! that frees none is written by the next sync (a crash before it resends stored events).
//!
//! # Recovery
//! [`Spool::open`] scans every segment. A bad frame at the end of the newest one (cut short, or
//! followed by nothing but zeros) is a write cut by a crash: truncated away, counted in
//! `torn_records_total`. Any other bad frame is damage: logged with file and offset, counted in
//! `corrupt_records_total`, and the rest of its segment is lost (so is a damaged record that a
//! read finds later: the exporter never wedges). Then whatever in `(acked, high_water]` is
//! neither stored nor lost becomes lost.
//!
//! An unparsable `state.json` is moved to `state.json.corrupt-<unix time>` and a new stream is
//! started (`tracing::error`, `state_resets_total`), as when it is missing next to segments.
//! Refusing to start would stop all export; the old stream id with guessed positions could make
//! the collector drop new events as duplicates of old sequences. The segments left are sent again
//! under the new stream, with their sequences (records embed them): duplicates, but no loss.

use std::{
    collections::VecDeque,
    fs::{self, DirBuilder, File, OpenOptions},
    io::{self, BufRead, BufReader, Read, Seek, SeekFrom},
    os::unix::fs::{DirBuilderExt, FileExt, OpenOptionsExt},
    path::{Path, PathBuf},
    time::{SystemTime, UNIX_EPOCH},
};

use anyhow::{Context, Result, anyhow, bail, ensure};
use serde::{Deserialize, Serialize};
use tracing::{debug, error, info, warn};

/// At a busy node's ~1 MB/s of events this is four minutes of backlog, at a typical ~50 KB/s
/// over an hour: enough to ride out a collector deploy or a short network outage, and still a
/// small share of the `/var` partition a node agent may use.
pub const DEFAULT_MAX_BYTES: u64 = 256 << 20;
/// The unit of deletion and eviction, with one fsync per roll. 4 MiB keeps ~64 files at the
/// default limit and bounds what an fsync or a cursor reset touches. Clamped to `max_bytes / 4`
/// by [`Spool::open`], so that one eviction drops at most about a quarter of the spool.
pub const DEFAULT_SEGMENT_BYTES: u64 = 4 << 20;
/// Events are 300 B–4 KiB; the limit keeps a damaged length field from making recovery
/// allocate gigabytes.
pub const MAX_RECORD_BYTES: usize = 1 << 20;
/// Appends are buffered up to this much before a write(2): ~200 typical records per syscall.
const WRITE_BUFFER_BYTES: usize = 64 << 10;
/// Segments are read sequentially; large reads keep syscalls rare.
const READ_BUFFER_BYTES: usize = 64 << 10;
const MAGIC: &[u8; 4] = b"NHSP";
const FORMAT_VERSION: u32 = 1;
const HEADER_LEN: u64 = 16;
/// Length and CRC in front of each payload.
const FRAME_LEN: usize = 8;
/// Sequences stay below this (a million events a second for 146,000 years), so that arithmetic
/// on odd file names or state cannot overflow.
const MAX_SEQUENCE: u64 = 1 << 62;
const STATE_VERSION: u32 = 1;
const STATE_FILE: &str = "state.json";
const STATE_TMP: &str = "state.json.tmp";
const LOCK_FILE: &str = "lock";

pub struct SpoolConfig {
    /// Holds the spool and nothing else of ours.
    pub dir: PathBuf,
    /// Limit of the segments' total size, approximate by one segment: the segment being written
    /// is never evicted.
    pub max_bytes: u64,
    /// A segment is closed once it reaches this size (so it exceeds it by up to one record).
    pub segment_bytes: u64,
}

/// What a read returns, in increasing sequence order.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Entry {
    Record {
        seq: u64,
        bytes: Vec<u8>,
    },
    /// Sequences `first..=last` were evicted or damaged and will never be sent.
    Lost {
        first: u64,
        last: u64,
    },
}

/// For metrics and logs.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct SpoolStats {
    /// Size of the segments, appends not yet flushed included.
    pub bytes: u64,
    pub segments: usize,
    pub unacked_records: u64,
    pub acked: u64,
    pub next_sequence: u64,
    /// Records this process evicted because the spool was full.
    pub evicted_records_total: u64,
    /// Lost ranges (evicted or damaged) not yet acknowledged.
    pub evicted_ranges_pending: usize,
    /// Damaged records found; each made the rest of its segment lost.
    pub corrupt_records_total: u64,
    /// Records cut short by a crash, truncated away at open.
    pub torn_records_total: u64,
    /// The state was unreadable, or missing next to segments, and a new stream was started.
    pub state_resets_total: u64,
}

#[derive(Serialize, Deserialize)]
struct StateFile {
    version: u32,
    stream_id: String,
    acked: u64,
    high_water: u64,
    lost: Vec<(u64, u64)>,
}

/// Holds sequences `first..=last` (none when `last < first`).
struct Segment {
    first: u64,
    last: u64,
    bytes: u64,
}

/// Appends to the newest segment. Not a `BufWriter`: records are buffered here and written with
/// pwrite at `flushed`, so a failed write is simply retried (same bytes, same offset) and never
/// leaves half a record in front of later ones.
struct Writer {
    file: File,
    path: PathBuf,
    buf: Vec<u8>,
    flushed: u64,
    unsynced: bool,
}

impl Writer {
    fn flush(&mut self) -> Result<()> {
        if !self.buf.is_empty() {
            (self.file.write_all_at(&self.buf, self.flushed))
                .with_context(|| format!("writing spool segment {}", self.path.display()))?;
            self.flushed += self.buf.len() as u64;
            self.buf.clear();
            self.unsynced = true;
        }
        Ok(())
    }
}

/// Where the last read stopped: the next frame of segment `seg_first`, at `offset`, is `seq`.
struct Cursor {
    seg_first: u64,
    seq: u64,
    offset: u64,
    reader: BufReader<File>,
}

/// Owned by one task: every method takes `&mut self` and does blocking file I/O.
pub struct Spool {
    dir: PathBuf,
    dir_handle: File,
    _lock: File,
    max_bytes: u64,
    segment_bytes: u64,
    stream_id: String,
    acked: u64,
    next_seq: u64,
    /// Sorted, disjoint, not adjacent, all above `acked`.
    lost: Vec<(u64, u64)>,
    segments: VecDeque<Segment>,
    total_bytes: u64,
    /// Open on `segments.back()`; `None` makes the next append start a segment.
    writer: Option<Writer>,
    cursor: Option<Cursor>,
    scratch: Vec<u8>,
    /// The fsynced state has the current `acked` and `lost`, and `synced_high_water`.
    state_synced: bool,
    synced_high_water: u64,
    dir_dirty: bool,
    stats: SpoolStats,
}

impl Spool {
    /// Creates the dir (0700) or recovers the spool in it (see the module docs).
    pub fn open(config: SpoolConfig) -> Result<Spool> {
        let SpoolConfig {
            dir,
            max_bytes,
            segment_bytes,
        } = config;
        ensure!(max_bytes > 0, "spool max_bytes must be above 0");
        let segment_bytes = segment_bytes.min(max_bytes / 4).max(HEADER_LEN + 1);
        let shown = dir.display();
        (DirBuilder::new().recursive(true).mode(0o700).create(&dir))
            .with_context(|| format!("creating spool dir {shown}"))?;
        let lock =
            create(&dir.join(LOCK_FILE)).with_context(|| format!("creating a lock in {shown}"))?;
        (lock.try_lock())
            .map_err(|e| anyhow!("spool dir {shown} is in use by another process ({e})"))?;
        let dir_handle = File::open(&dir).with_context(|| format!("opening spool dir {shown}"))?;

        let mut firsts = Vec::new();
        for entry in fs::read_dir(&dir).with_context(|| format!("listing spool dir {shown}"))? {
            let entry = entry.with_context(|| format!("listing spool dir {shown}"))?;
            let is_file = entry.file_type().is_ok_and(|t| t.is_file());
            let name = entry.file_name();
            let name = name.to_str().unwrap_or("");
            match (name, is_file.then(|| parse_segment_name(name)).flatten()) {
                (STATE_FILE | LOCK_FILE, _) => {}
                (_, Some(first)) => firsts.push(first),
                (STATE_TMP, _) if is_file => fs::remove_file(entry.path()).unwrap_or_default(),
                _ => debug!(file = %entry.path().display(), "ignoring unrelated file in spool dir"),
            }
        }
        firsts.sort_unstable();

        let mut stats = SpoolStats::default();
        let state = load_state(&dir, &mut stats)?.unwrap_or_else(|| {
            if !firsts.is_empty() && stats.state_resets_total == 0 {
                warn!(dir = %shown, "spool state missing next to segments: starting a new stream");
                stats.state_resets_total += 1;
            }
            let acked = firsts.first().map_or(0, |f| f - 1);
            let stream_id = uuid::Uuid::new_v4().to_string();
            StateFile {
                version: STATE_VERSION,
                stream_id,
                acked,
                high_water: 0,
                lost: Vec::new(),
            }
        });
        let StateFile {
            stream_id,
            acked,
            mut high_water,
            mut lost,
            ..
        } = state;

        let mut segments = VecDeque::new();
        for (i, &first) in firsts.iter().enumerate() {
            let path = segment_path(&dir, first);
            let (records, mut bytes, bad) = scan_segment(&path, first)
                .with_context(|| format!("scanning spool segment {}", path.display()))?;
            let last = first - 1 + records;
            match bad {
                Some(bad) if bad.torn && i + 1 == firsts.len() => {
                    info!(file = %path.display(), offset = bad.offset, why = bad.why, "truncating a spool record cut short by a crash");
                    stats.torn_records_total += 1;
                    (OpenOptions::new()
                        .write(true)
                        .open(&path)
                        .and_then(|f| f.set_len(bad.offset)))
                    .with_context(|| format!("truncating {}", path.display()))?;
                    bytes = bad.offset;
                }
                Some(bad) => {
                    warn!(file = %path.display(), offset = bad.offset, why = bad.why, "corrupt spool record: the rest of the segment is lost");
                    stats.corrupt_records_total += 1;
                    high_water = high_water.max(last + 1);
                }
                None => {}
            }
            segments.push_back(Segment { first, last, bytes });
        }
        let lasts = segments
            .iter()
            .map(|s| s.last)
            .chain(lost.iter().map(|r| r.1));
        high_water = lasts.fold(high_water.max(acked), u64::max);
        lost.retain_mut(|r| {
            r.0 = r.0.max(acked + 1);
            r.0 <= r.1
        });
        // Segments holding nothing (acknowledged, evicted but not yet removed, empty) go.
        segments.retain(|s| {
            let lo = s.first.max(acked + 1);
            let keep = lo <= s.last && !lost.iter().any(|&(f, l)| f <= lo && s.last <= l);
            if !keep {
                let path = segment_path(&dir, s.first);
                fs::remove_file(&path).unwrap_or_else(
                    |e| warn!(file = %path.display(), error = %e, "removing spool segment"),
                );
            }
            keep
        });
        // Whatever is neither stored nor lost up to the high-water mark is lost too.
        let mut expect = acked + 1;
        let ends = segments.iter().map(|s| (s.first, s.last + 1));
        for (next, end) in ends.chain([(high_water + 1, 0)]) {
            if next > expect {
                if !lost.iter().any(|&(f, l)| f <= expect && next - 1 <= l) {
                    warn!(
                        first = expect,
                        last = next - 1,
                        "spooled events missing: reported lost"
                    );
                }
                add_lost(&mut lost, expect, next - 1);
            }
            expect = expect.max(end);
        }

        let mut spool = Spool {
            total_bytes: segments.iter().map(|s| s.bytes).sum(),
            dir,
            dir_handle,
            _lock: lock,
            max_bytes,
            segment_bytes,
            stream_id,
            acked,
            next_seq: high_water + 1,
            lost,
            segments,
            writer: None,
            cursor: None,
            scratch: Vec::new(),
            state_synced: false,
            synced_high_water: 0,
            dir_dirty: true,
            stats,
        };
        spool.write_state(true)?;
        info!(stream_id = %spool.stream_id, acked, next_sequence = spool.next_seq,
            segments = spool.segments.len(), lost_ranges = spool.lost.len(), "spool opened");
        Ok(spool)
    }

    pub fn stream_id(&self) -> &str {
        &self.stream_id
    }

    pub fn acked(&self) -> u64 {
        self.acked
    }

    pub fn next_sequence(&self) -> u64 {
        self.next_seq
    }

    /// Assigns the next sequence, lets `encode` write the record (which embeds it) into an empty
    /// buffer, and appends it. Evicts the oldest segments first if the spool is over
    /// `max_bytes`. On error the sequence is not used.
    pub fn append(&mut self, encode: impl FnOnce(u64, &mut Vec<u8>)) -> Result<u64> {
        let seq = self.next_seq;
        let mut record = std::mem::take(&mut self.scratch);
        record.clear();
        encode(seq, &mut record);
        let result = self.append_record(&record);
        self.scratch = record;
        result
    }

    fn append_record(&mut self, record: &[u8]) -> Result<u64> {
        let len = record.len();
        ensure!(
            len <= MAX_RECORD_BYTES,
            "spool record of {len} bytes is over {MAX_RECORD_BYTES}"
        );
        let newest_bytes = self.segments.back().map_or(0, |s| s.bytes);
        if self.writer.is_none() || newest_bytes >= self.segment_bytes {
            self.roll()?;
        }
        self.evict_over_limit()?;
        let writer = self.writer.as_mut().expect("roll opens a writer");
        if writer.buf.len() >= WRITE_BUFFER_BYTES {
            writer.flush()?;
        }
        let len_field = (len as u32).to_le_bytes();
        writer.buf.extend_from_slice(&len_field);
        writer
            .buf
            .extend_from_slice(&frame_crc(&len_field, record).to_le_bytes());
        writer.buf.extend_from_slice(record);
        let seg = self.segments.back_mut().expect("the writer's segment");
        seg.last = self.next_seq;
        seg.bytes += (FRAME_LEN + len) as u64;
        self.total_bytes += (FRAME_LEN + len) as u64;
        self.next_seq += 1;
        Ok(seg.last)
    }

    /// Syncs and closes the segment being written, and starts one at the next sequence.
    fn roll(&mut self) -> Result<()> {
        if self.writer.is_some() {
            self.sync()?;
            self.writer = None;
        }
        let first = self.next_seq;
        let path = segment_path(&self.dir, first);
        let file = create(&path)
            .and_then(|f| f.write_all_at(&segment_header(first), 0).map(|()| f))
            .with_context(|| format!("creating spool segment {}", path.display()))?;
        self.segments.push_back(Segment {
            first,
            last: first - 1,
            bytes: HEADER_LEN,
        });
        self.total_bytes += HEADER_LEN;
        let buf = Vec::with_capacity(2 * WRITE_BUFFER_BYTES);
        self.writer = Some(Writer {
            file,
            path,
            buf,
            flushed: HEADER_LEN,
            unsynced: true,
        });
        self.dir_dirty = true;
        Ok(())
    }

    /// Evicts what is over the size limit now, and rolls a full segment, as the next append
    /// would: after this, appending one record evicts nothing (unless the record alone fills
    /// a segment).
    pub fn make_room(&mut self) -> Result<()> {
        let newest_bytes = self.segments.back().map_or(0, |s| s.bytes);
        if self.writer.is_none() || newest_bytes >= self.segment_bytes {
            self.roll()?;
        }
        self.evict_over_limit()
    }

    fn evict_over_limit(&mut self) -> Result<()> {
        let mut doomed = Vec::new();
        while self.total_bytes > self.max_bytes && self.segments.len() > 1 {
            let seg = self.segments.pop_front().expect("len > 1");
            self.total_bytes -= seg.bytes;
            let first = seg.first.max(self.acked + 1);
            if first <= seg.last {
                add_lost(&mut self.lost, first, seg.last);
                self.stats.evicted_records_total += seg.last - first + 1;
            }
            doomed.push(seg.first);
        }
        if !doomed.is_empty() {
            warn!(
                segments = doomed.len(),
                "spool full: evicted the oldest unacknowledged events"
            );
            self.state_synced = false;
            self.write_state(true)?;
            self.remove_segments(&doomed);
        }
        Ok(())
    }

    /// Writes buffered appends to the OS: after this a process crash loses none of them.
    pub fn flush(&mut self) -> Result<()> {
        self.writer.as_mut().map_or(Ok(()), Writer::flush)
    }

    /// Flushes, then fsyncs the segment being written, the directory and the state: after this
    /// power loss loses nothing either.
    pub fn sync(&mut self) -> Result<()> {
        self.flush()?;
        if let Some(w) = self.writer.as_mut().filter(|w| w.unsynced) {
            let path = &w.path;
            w.file
                .sync_data()
                .with_context(|| format!("syncing {}", path.display()))?;
            w.unsynced = false;
        }
        if self.dir_dirty {
            let shown = self.dir.display();
            self.dir_handle
                .sync_all()
                .with_context(|| format!("syncing spool dir {shown}"))?;
            self.dir_dirty = false;
        }
        if !self.state_synced || self.synced_high_water != self.next_seq - 1 {
            self.write_state(true)?;
        }
        Ok(())
    }

    /// Cumulative ack: the collector durably stored everything ≤ `durable_sequence`. Deletes
    /// the segments and lost ranges entirely below it. An ack below the current one is ignored;
    /// one beyond the last assigned sequence is an error (and changes nothing).
    pub fn ack(&mut self, durable_sequence: u64) -> Result<()> {
        if durable_sequence <= self.acked {
            return Ok(());
        }
        let high = self.next_seq - 1;
        ensure!(
            durable_sequence <= high,
            "collector acked sequence {durable_sequence} of stream {}, beyond the last assigned ({high})",
            self.stream_id
        );
        self.acked = durable_sequence;
        self.lost.retain_mut(|r| {
            r.0 = r.0.max(durable_sequence + 1);
            r.0 <= r.1
        });
        let deletable = self.segments.len() - usize::from(self.writer.is_some());
        let segments = self.segments.iter().take(deletable);
        let n = segments.take_while(|s| s.last <= durable_sequence).count();
        self.state_synced = false;
        if n == 0 {
            // Nothing to delete: the next sync (about once a second) records the ack. Until
            // then a crash only makes the exporter resend what the collector holds (it
            // deduplicates), and a rename per ack cost more than the batch it acknowledged.
            return Ok(());
        }
        self.write_state(true)?;
        let doomed: Vec<u64> = self.segments.drain(..n).map(|s| s.first).collect();
        self.total_bytes = self.segments.iter().map(|s| s.bytes).sum();
        self.remove_segments(&doomed);
        Ok(())
    }

    /// Reads from sequence `from` (raised to `acked + 1`) up to `max_records` entries, stopping
    /// once about `max_bytes` of payload is read (at least one entry if there is any). Includes
    /// appends not yet flushed. A read starting where the previous one ended continues from a
    /// cursor; any other `from` moves it (reading its segment from the start).
    pub fn read_from(
        &mut self,
        from: u64,
        max_records: usize,
        max_bytes: usize,
    ) -> Result<Vec<Entry>> {
        self.flush()?;
        let mut seq = from.max(self.acked + 1);
        let (mut out, mut bytes) = (Vec::new(), 0);
        while out.len() < max_records
            && (out.is_empty() || bytes < max_bytes)
            && seq < self.next_seq
        {
            let i = self.lost.partition_point(|&(_, last)| last < seq);
            if let Some(&(first, last)) = self.lost.get(i)
                && first <= seq
            {
                out.push(Entry::Lost { first: seq, last });
                seq = last + 1;
            } else if let Some(record) = self.read_record(seq)? {
                bytes += record.len();
                out.push(Entry::Record { seq, bytes: record });
                seq += 1;
            } // else the record was damaged: the rest of its segment is now lost.
        }
        Ok(out)
    }

    fn read_record(&mut self, seq: u64) -> Result<Option<Vec<u8>>> {
        let idx = self.segments.partition_point(|s| s.last < seq);
        let Some(seg) = self.segments.get(idx).filter(|s| s.first <= seq) else {
            bail!("spool sequence {seq} is neither stored nor lost: inconsistent spool state");
        };
        let (seg_first, path) = (seg.first, segment_path(&self.dir, seg.first));
        if !self
            .cursor
            .as_ref()
            .is_some_and(|c| c.seg_first == seg_first && c.seq == seq)
        {
            let file = File::open(&path).with_context(|| format!("opening {}", path.display()))?;
            let mut reader = BufReader::with_capacity(READ_BUFFER_BYTES, file);
            reader.seek(SeekFrom::Start(HEADER_LEN))?;
            self.cursor = Some(Cursor {
                seg_first,
                seq: seg_first,
                offset: HEADER_LEN,
                reader,
            });
        }
        let c = self.cursor.as_mut().expect("positioned above");
        let mut payload = Vec::new();
        let why = loop {
            let frame = read_frame(&mut c.reader, &mut payload);
            match frame.with_context(|| format!("reading {}", path.display()))? {
                Frame::Record if c.seq == seq => break None,
                Frame::Record => {}
                Frame::End | Frame::Cut => break Some("segment ends early"),
                Frame::Bad(why) => break Some(why),
            }
            c.seq += 1;
            c.offset += (FRAME_LEN + payload.len()) as u64;
        };
        let Some(why) = why else {
            c.seq += 1;
            c.offset += (FRAME_LEN + payload.len()) as u64;
            return Ok(Some(payload));
        };
        // Damage: the rest of the segment is lost; appends move on if it is the newest.
        let (at, offset) = (c.seq, c.offset);
        let seg = &mut self.segments[idx];
        warn!(file = %path.display(), offset, why, first_lost = at, last_lost = seg.last, "corrupt spool record: the rest of the segment is lost");
        self.stats.corrupt_records_total += 1;
        if at.max(self.acked + 1) <= seg.last {
            add_lost(&mut self.lost, at.max(self.acked + 1), seg.last);
        }
        seg.last = at - 1;
        if idx + 1 == self.segments.len()
            && let Some(writer) = self.writer.take()
        {
            writer.file.sync_data().unwrap_or_default(); // it keeps the records before `at`
        }
        self.cursor = None;
        self.state_synced = false;
        Ok(None)
    }

    pub fn stats(&self) -> SpoolStats {
        let lost: u64 = self.lost.iter().map(|(f, l)| l - f + 1).sum();
        SpoolStats {
            bytes: self.total_bytes,
            segments: self.segments.len(),
            unacked_records: self.next_seq - 1 - self.acked - lost,
            acked: self.acked,
            next_sequence: self.next_seq,
            evicted_ranges_pending: self.lost.len(),
            ..self.stats
        }
    }

    /// Replaces state.json; `durable` also fsyncs it and the directory.
    fn write_state(&mut self, durable: bool) -> Result<()> {
        let high_water = self.next_seq - 1;
        let (stream_id, acked, lost) = (self.stream_id.clone(), self.acked, self.lost.clone());
        let state = StateFile {
            version: STATE_VERSION,
            stream_id,
            acked,
            high_water,
            lost,
        };
        let json = serde_json::to_vec(&state).context("encoding spool state")?;
        let (tmp, path) = (self.dir.join(STATE_TMP), self.dir.join(STATE_FILE));
        let write = || -> io::Result<()> {
            let file = create(&tmp)?;
            file.write_all_at(&json, 0)?;
            if durable {
                file.sync_data()?;
            }
            fs::rename(&tmp, &path)?;
            if durable {
                self.dir_handle.sync_all()?;
            }
            Ok(())
        };
        write().with_context(|| format!("writing spool state {}", path.display()))?;
        if durable {
            (self.state_synced, self.synced_high_water, self.dir_dirty) = (true, high_water, false);
        }
        Ok(())
    }

    fn remove_segments(&mut self, firsts: &[u64]) {
        for &first in firsts {
            let path = segment_path(&self.dir, first);
            if let Err(e) = fs::remove_file(&path) {
                warn!(file = %path.display(), error = %e, "removing spool segment (retried at the next start)");
            }
        }
        self.dir_dirty = true;
    }
}

/// Reads state.json; `None` when there is none or it was unreadable and moved aside.
fn load_state(dir: &Path, stats: &mut SpoolStats) -> Result<Option<StateFile>> {
    let path = dir.join(STATE_FILE);
    let raw = match fs::read(&path) {
        Ok(raw) => raw,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(e).with_context(|| format!("reading {}", path.display())),
    };
    let e = match parse_state(&raw) {
        Ok(state) => return Ok(Some(state)),
        Err(e) => e,
    };
    let secs = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs());
    let aside = dir.join(format!("{STATE_FILE}.corrupt-{secs}"));
    error!(file = %path.display(), error = %format!("{e:#}"), moved_to = %aside.display(),
        "unreadable spool state: starting a new stream, spooled events are sent again");
    fs::rename(&path, &aside).with_context(|| format!("moving {} aside", path.display()))?;
    stats.state_resets_total += 1;
    Ok(None)
}

fn parse_state(raw: &[u8]) -> Result<StateFile> {
    let s: StateFile = serde_json::from_slice(raw).context("not valid spool state JSON")?;
    let (id, acked, high) = (&s.stream_id, s.acked, s.high_water);
    ensure!(
        s.version == STATE_VERSION,
        "unsupported version {}",
        s.version
    );
    let id_ok = (1..=64).contains(&id.len()) && id.bytes().all(|b| b.is_ascii_graphic());
    ensure!(id_ok, "bad stream_id {id:?}");
    let ok = acked <= high && high < MAX_SEQUENCE;
    ensure!(ok, "acked {acked} and high_water {high} do not fit");
    let mut prev = 0;
    for &(first, last) in &s.lost {
        let ok = prev < first && first <= last && last <= high;
        ensure!(
            ok,
            "lost range [{first}, {last}] is out of order or above high_water"
        );
        prev = last;
    }
    Ok(s)
}

fn segment_path(dir: &Path, first: u64) -> PathBuf {
    dir.join(format!("{first:020}.seg"))
}

fn parse_segment_name(name: &str) -> Option<u64> {
    let digits = name.strip_suffix(".seg")?;
    let all_digits = digits.len() == 20 && digits.bytes().all(|b| b.is_ascii_digit());
    digits
        .parse()
        .ok()
        .filter(|&first| all_digits && (1..MAX_SEQUENCE).contains(&first))
}

fn segment_header(first: u64) -> [u8; HEADER_LEN as usize] {
    let mut header = [0; HEADER_LEN as usize];
    header[..4].copy_from_slice(MAGIC);
    header[4..8].copy_from_slice(&FORMAT_VERSION.to_le_bytes());
    header[8..].copy_from_slice(&first.to_le_bytes());
    header
}

fn create(path: &Path) -> io::Result<File> {
    OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(path)
}

fn frame_crc(len_field: &[u8], payload: &[u8]) -> u32 {
    let mut crc = crc32fast::Hasher::new();
    crc.update(len_field);
    crc.update(payload);
    crc.finalize()
}

/// Adds `first..=last` to the sorted lost ranges, merging overlapping and adjacent ones.
fn add_lost(lost: &mut Vec<(u64, u64)>, first: u64, last: u64) {
    let start = lost.partition_point(|&(_, l)| l.saturating_add(1) < first);
    let (mut end, mut merged) = (start, (first, last));
    while let Some(&(f, l)) = lost.get(end)
        && f <= merged.1.saturating_add(1)
    {
        merged = (merged.0.min(f), merged.1.max(l));
        end += 1;
    }
    lost.splice(start..end, [merged]);
}

enum Frame {
    Record,
    /// The file ends where the next frame would start.
    End,
    /// The file ends inside the frame.
    Cut,
    Bad(&'static str),
}

/// Reads the next frame of a segment, its payload into `payload`.
fn read_frame(r: &mut impl Read, payload: &mut Vec<u8>) -> io::Result<Frame> {
    let mut head = [0; FRAME_LEN];
    match read_full(r, &mut head)? {
        0 => return Ok(Frame::End),
        FRAME_LEN => {}
        _ => return Ok(Frame::Cut),
    }
    let len = u32::from_le_bytes([head[0], head[1], head[2], head[3]]) as usize;
    if len > MAX_RECORD_BYTES {
        return Ok(Frame::Bad("length above MAX_RECORD_BYTES"));
    }
    payload.clear();
    payload.resize(len, 0);
    Ok(if read_full(r, payload)? < len {
        Frame::Cut
    } else if frame_crc(&head[..4], payload).to_le_bytes() != head[4..] {
        Frame::Bad("checksum mismatch")
    } else {
        Frame::Record
    })
}

/// Reads until `buf` is full or the input ends; returns how much was read.
fn read_full(r: &mut impl Read, buf: &mut [u8]) -> io::Result<usize> {
    let mut n = 0;
    while n < buf.len() {
        match r.read(&mut buf[n..]) {
            Ok(0) => break,
            Ok(k) => n += k,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(n)
}

struct Bad {
    offset: u64,
    why: &'static str,
    /// Looks like a write cut short by a crash rather than like damage.
    torn: bool,
}

/// Checks a segment: how many good records it starts with, its size, and what stopped the scan.
fn scan_segment(path: &Path, first: u64) -> io::Result<(u64, u64, Option<Bad>)> {
    let file = File::open(path)?;
    let len = file.metadata()?.len();
    let mut reader = BufReader::with_capacity(READ_BUFFER_BYTES, &file);
    let mut head = [0; HEADER_LEN as usize];
    let (mut records, mut offset, mut payload) = (0, 0, Vec::new());
    let (why, cut) = if read_full(&mut reader, &mut head)? < head.len() {
        ("truncated header", true)
    } else if head != segment_header(first) {
        ("bad segment header", false)
    } else {
        offset = HEADER_LEN;
        loop {
            match read_frame(&mut reader, &mut payload)? {
                Frame::Record => records += 1,
                Frame::End => return Ok((records, len, None)),
                Frame::Cut => break ("record cut short", true),
                // Power loss can leave the last record's blocks unwritten: a bad checksum.
                Frame::Bad(why) => break (why, reader.fill_buf()?.is_empty()),
            }
            offset += (FRAME_LEN + payload.len()) as u64;
        }
    };
    // Power loss can also leave zeros after it (the size extended, blocks unwritten).
    let torn = cut || all_zero(&file, offset)?;
    Ok((records, len, Some(Bad { offset, why, torn })))
}

fn all_zero(file: &File, mut offset: u64) -> io::Result<bool> {
    let mut chunk = vec![0; READ_BUFFER_BYTES];
    loop {
        match file.read_at(&mut chunk, offset)? {
            0 => return Ok(true),
            n if chunk[..n].iter().any(|&b| b != 0) => return Ok(false),
            n => offset += n as u64,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config(dir: &Path, max_bytes: u64, segment_bytes: u64) -> SpoolConfig {
        let dir = dir.to_path_buf();
        SpoolConfig {
            dir,
            max_bytes,
            segment_bytes,
        }
    }

    fn open(dir: &Path, max_bytes: u64, segment_bytes: u64) -> Spool {
        Spool::open(config(dir, max_bytes, segment_bytes)).unwrap()
    }

    /// Appends `n` records of `len` bytes that embed their sequence, as encoded events do.
    fn append(spool: &mut Spool, n: usize, len: usize) -> u64 {
        let encode = |seq: u64, buf: &mut Vec<u8>| {
            buf.extend_from_slice(&seq.to_le_bytes());
            buf.resize(len, seq as u8);
        };
        (0..n)
            .map(|_| spool.append(encode).unwrap())
            .last()
            .unwrap()
    }

    /// Entries as text: runs of records and `!`lost ranges, e.g. "1-2 !3-9 10-30".
    fn render(entries: &[Entry]) -> String {
        let mut runs: Vec<(&str, u64, u64)> = Vec::new();
        for entry in entries {
            let (kind, first, last) = match entry {
                Entry::Record { seq, bytes }
                    if bytes.len() < 8 || bytes[..8] == seq.to_le_bytes() =>
                {
                    ("", *seq, *seq)
                }
                Entry::Record { seq, .. } => panic!("record {seq} does not embed its sequence"),
                Entry::Lost { first, last } => ("!", *first, *last),
            };
            match runs.last_mut() {
                Some(run) if kind.is_empty() && run.0.is_empty() && run.2 + 1 == first => {
                    run.2 = last
                }
                _ => runs.push((kind, first, last)),
            }
        }
        let runs = runs.iter().map(|&(kind, f, l)| {
            if f == l {
                format!("{kind}{f}")
            } else {
                format!("{kind}{f}-{l}")
            }
        });
        runs.collect::<Vec<_>>().join(" ")
    }

    /// Everything unacknowledged, read in chunks of 7 that each continue where the last ended.
    fn read_all(spool: &mut Spool) -> String {
        let (mut all, mut from) = (Vec::new(), spool.acked() + 1);
        while let Some(last) = spool
            .read_from(from, 7, usize::MAX)
            .unwrap()
            .into_iter()
            .inspect(|e| all.push(e.clone()))
            .last()
        {
            from = match last {
                Entry::Record { seq, .. } => seq + 1,
                Entry::Lost { last, .. } => last + 1,
            };
        }
        render(&all)
    }

    fn segment_files(dir: &Path) -> Vec<PathBuf> {
        let mut files: Vec<_> = fs::read_dir(dir)
            .unwrap()
            .map(|e| e.unwrap().path())
            .collect();
        files.retain(|p| p.extension().is_some_and(|x| x == "seg"));
        files.sort();
        files
    }

    fn first_of(segment: &Path) -> u64 {
        parse_segment_name(segment.file_name().unwrap().to_str().unwrap()).unwrap()
    }

    fn flip_byte(path: &Path, offset: u64) {
        let file = File::options().read(true).write(true).open(path).unwrap();
        let mut byte = [0];
        file.read_exact_at(&mut byte, offset).unwrap();
        file.write_all_at(&[byte[0] ^ 0x5a], offset).unwrap();
    }

    fn set_len(path: &Path, len: u64) {
        File::options()
            .write(true)
            .open(path)
            .unwrap()
            .set_len(len)
            .unwrap();
    }

    #[test]
    fn appends_reads_and_acks_in_sequence() {
        let tmp = tempfile::tempdir().unwrap();
        let mut spool = open(tmp.path(), 1 << 20, 4096);
        assert!(uuid::Uuid::parse_str(spool.stream_id()).is_ok());
        assert_eq!(append(&mut spool, 100, 300), 100);
        assert_eq!(read_all(&mut spool), "1-100");
        let files = segment_files(tmp.path()).len();
        spool.ack(50).unwrap();
        assert!(files >= 7 && segment_files(tmp.path()).len() < files);
        spool.ack(10).unwrap(); // ignored
        assert_eq!(render(&spool.read_from(1, 1, 0).unwrap()), "51");
        spool.ack(100).unwrap();
        let stats = spool.stats();
        assert_eq!(
            (stats.segments, stats.unacked_records, stats.acked),
            (1, 0, 100)
        );
        let err = spool.ack(101).unwrap_err().to_string();
        assert!(err.contains("beyond the last assigned (100)"), "{err}");
        drop(spool);
        let mut spool = open(tmp.path(), 1 << 20, 4096);
        assert_eq!(
            (spool.acked(), spool.next_sequence(), read_all(&mut spool)),
            (100, 101, String::new())
        );
    }

    #[test]
    fn restart_keeps_what_was_flushed() {
        let tmp = tempfile::tempdir().unwrap();
        let mut spool = open(tmp.path(), 1 << 20, 1 << 20);
        let stream_id = spool.stream_id().to_owned();
        append(&mut spool, 10, 300);
        spool.flush().unwrap();
        append(&mut spool, 5, 300);
        drop(spool); // without flush, as in a crash
        let mut spool = open(tmp.path(), 1 << 20, 1 << 20);
        assert_eq!(read_all(&mut spool), "1-10");
        assert_eq!(spool.stream_id(), stream_id);
        assert_eq!(append(&mut spool, 3, 300), 13);
        spool.sync().unwrap();
        drop(spool);
        let mut spool = open(tmp.path(), 1 << 20, 1 << 20);
        assert_eq!(read_all(&mut spool), "1-13");
        assert_eq!(
            spool.stats().torn_records_total + spool.stats().corrupt_records_total,
            0
        );
    }

    #[test]
    fn torn_tail_is_truncated_and_counted() {
        let tmp = tempfile::tempdir().unwrap();
        let mut spool = open(tmp.path(), 1 << 20, 1 << 20);
        append(&mut spool, 5, 100);
        spool.flush().unwrap();
        drop(spool);
        let segment = &segment_files(tmp.path())[0];
        let len = HEADER_LEN + 5 * 108;
        assert_eq!(fs::metadata(segment).unwrap().len(), len);
        set_len(segment, len - 3); // cut mid-record
        let mut spool = open(tmp.path(), 1 << 20, 1 << 20);
        assert_eq!(
            (read_all(&mut spool).as_str(), spool.next_sequence()),
            ("1-4", 5)
        );
        assert_eq!(fs::metadata(segment).unwrap().len(), len - 108);
        drop(spool);
        // A bad checksum on the last record. The state written at the last open counted 4 as
        // assigned (it may have been sent), so it is reported lost rather than reused.
        flip_byte(segment, len - 108 - 50);
        assert_eq!(read_all(&mut open(tmp.path(), 1 << 20, 1 << 20)), "1-3 !4");
        set_len(segment, len + 4096); // a zero-filled tail
        let mut spool = open(tmp.path(), 1 << 20, 1 << 20);
        assert_eq!(read_all(&mut spool), "1-3 !4");
        let stats = spool.stats();
        assert_eq!(
            (stats.torn_records_total, stats.corrupt_records_total),
            (1, 0)
        );
        assert_eq!(append(&mut spool, 1, 100), 5);
        assert_eq!(read_all(&mut spool), "1-3 !4 5");
    }

    #[test]
    fn damage_is_lost_and_reported() {
        let tmp = tempfile::tempdir().unwrap();
        let mut spool = open(tmp.path(), 1 << 20, 1000);
        append(&mut spool, 30, 100);
        spool.flush().unwrap();
        drop(spool);
        let files = segment_files(tmp.path());
        let second_end = first_of(&files[2]) - 1;
        flip_byte(&files[0], HEADER_LEN + 2 * 108 + 20); // record 3
        flip_byte(&files[1], HEADER_LEN); // the first record of the second segment
        let mut spool = open(tmp.path(), 1 << 20, 1000);
        assert_eq!(
            read_all(&mut spool),
            format!("1-2 !3-{second_end} {}-30", second_end + 1)
        );
        let stats = spool.stats();
        assert_eq!(
            (stats.corrupt_records_total, stats.evicted_ranges_pending),
            (2, 1)
        );
        assert_eq!(stats.unacked_records, 30 - (second_end - 2));

        // Found by a read while running: record 2 of the segment being written.
        spool.ack(second_end).unwrap();
        append(&mut spool, 3, 100);
        spool.flush().unwrap();
        flip_byte(
            segment_files(tmp.path()).last().unwrap(),
            HEADER_LEN + 108 + 20,
        );
        assert_eq!(
            read_all(&mut spool),
            format!("{}-31 !32-33", second_end + 1)
        );
        assert_eq!(spool.stats().corrupt_records_total, 3);
        assert_eq!(append(&mut spool, 1, 100), 34); // in a new segment
        assert_eq!(
            render(&spool.read_from(31, 10, usize::MAX).unwrap()),
            "31 !32-33 34"
        );
    }

    #[test]
    fn eviction_records_exact_lost_ranges() {
        let tmp = tempfile::tempdir().unwrap();
        // Segments of 5 records: 16 + 5 * 108 = 556 bytes reach 2000 / 4.
        let mut spool = open(tmp.path(), 2000, 1 << 20);
        append(&mut spool, 40, 100);
        let oldest = first_of(&segment_files(tmp.path())[0]);
        assert!(oldest > 1 && (oldest - 1).is_multiple_of(5) && spool.stats().bytes <= 2000 + 556);
        assert_eq!(
            read_all(&mut spool),
            format!("!1-{} {oldest}-40", oldest - 1)
        );
        assert_eq!(spool.stats().evicted_records_total, oldest - 1);

        // A partly acknowledged segment loses only the rest; adjacent ranges merge.
        spool.ack(oldest + 2).unwrap();
        append(&mut spool, 10, 100);
        let oldest = first_of(&segment_files(tmp.path())[0]);
        let lost = format!("!{}-{}", spool.acked() + 1, oldest - 1);
        assert_eq!(render(&spool.read_from(1, 1, 0).unwrap()), lost);
        assert_eq!(spool.stats().evicted_ranges_pending, 1);

        // Persisted; and after everything is gone the numbers still go on.
        spool.sync().unwrap();
        let next = spool.next_sequence();
        drop(spool);
        let mut spool = open(tmp.path(), 2000, 1 << 20);
        assert_eq!(
            (
                render(&spool.read_from(1, 1, 0).unwrap()),
                spool.next_sequence()
            ),
            (lost, next)
        );
        drop(spool);
        segment_files(tmp.path())
            .iter()
            .for_each(|f| fs::remove_file(f).unwrap());
        let mut spool = open(tmp.path(), 2000, 1 << 20);
        assert_eq!(
            read_all(&mut spool),
            format!("!{}-{}", spool.acked() + 1, next - 1)
        );
        assert_eq!(append(&mut spool, 1, 100), next);
    }

    #[test]
    fn read_cursor_follows_and_resets() {
        let tmp = tempfile::tempdir().unwrap();
        let mut spool = open(tmp.path(), 1 << 20, 2000);
        append(&mut spool, 40, 100); // not flushed
        let mut read = |from, n| render(&spool.read_from(from, n, usize::MAX).unwrap());
        let reads = [
            read(1, 5),
            read(6, 20),
            read(3, 2),
            read(38, 10),
            read(41, 10),
        ];
        assert_eq!(reads, ["1-5", "6-25", "3-4", "38-40", ""]);
        append(&mut spool, 1, 100);
        assert_eq!(render(&spool.read_from(41, 10, usize::MAX).unwrap()), "41");
        assert_eq!(render(&spool.read_from(1, 100, 250).unwrap()), "1-3");
        assert_eq!(render(&spool.read_from(1, 0, 250).unwrap()), "");
    }

    #[test]
    fn record_sizes_from_empty_to_the_maximum() {
        let tmp = tempfile::tempdir().unwrap();
        let mut spool = open(tmp.path(), DEFAULT_MAX_BYTES, DEFAULT_SEGMENT_BYTES);
        assert_eq!(spool.append(|_, _| {}).unwrap(), 1);
        assert_eq!(
            spool
                .append(|_, buf| buf.resize(MAX_RECORD_BYTES, 7))
                .unwrap(),
            2
        );
        assert!(
            spool
                .append(|_, buf| buf.resize(MAX_RECORD_BYTES + 1, 7))
                .is_err()
        );
        assert_eq!(spool.append(|_, buf| buf.push(1)).unwrap(), 3);
        spool.flush().unwrap();
        drop(spool);
        let mut spool = open(tmp.path(), DEFAULT_MAX_BYTES, DEFAULT_SEGMENT_BYTES);
        let entries = spool.read_from(1, 10, usize::MAX).unwrap();
        let lens = entries.iter().map(|e| match e {
            Entry::Record { bytes, .. } => bytes.len(),
            Entry::Lost { .. } => panic!("nothing was lost"),
        });
        assert_eq!(lens.collect::<Vec<_>>(), [0, MAX_RECORD_BYTES, 1]);
    }

    #[test]
    fn unreadable_state_starts_a_new_stream_and_odd_files_are_ignored() {
        let tmp = tempfile::tempdir().unwrap();
        let mut spool = open(tmp.path(), 1 << 20, 1 << 20);
        append(&mut spool, 5, 100);
        spool.flush().unwrap();
        let old_id = spool.stream_id().to_owned();
        assert!(
            Spool::open(config(tmp.path(), 1 << 20, 1 << 20)).is_err(),
            "the spool is locked"
        );
        drop(spool);
        fs::write(
            tmp.path().join(STATE_FILE),
            "{\"version\": 1, \"stream_id\": ",
        )
        .unwrap();
        fs::write(tmp.path().join("README"), "not ours").unwrap();
        fs::create_dir(tmp.path().join("00000000000000000009.seg")).unwrap();
        let mut spool = open(tmp.path(), 1 << 20, 1 << 20);
        assert!(spool.stream_id() != old_id && spool.stats().state_resets_total == 1);
        let names = fs::read_dir(tmp.path())
            .unwrap()
            .map(|e| e.unwrap().file_name());
        assert!(
            names
                .into_iter()
                .any(|n| n.to_string_lossy().starts_with("state.json.corrupt-"))
        );
        assert_eq!(
            (read_all(&mut spool), append(&mut spool, 1, 100)),
            ("1-5".into(), 6)
        );
    }

    /// `cargo test --release -- --ignored --nocapture throughput`
    #[test]
    #[ignore = "a measurement, not a check"]
    fn throughput() {
        let tmp = tempfile::tempdir().unwrap();
        let mut spool = open(tmp.path(), 1 << 30, DEFAULT_SEGMENT_BYTES);
        let start = std::time::Instant::now();
        for _ in 0..1000 {
            append(&mut spool, 1000, 300);
            spool.flush().unwrap();
        }
        let appends = 1e6 / start.elapsed().as_secs_f64();
        let (start, mut from) = (std::time::Instant::now(), 1);
        while let Some(Entry::Record { seq, .. }) =
            spool.read_from(from, 1000, 1 << 20).unwrap().last()
        {
            from = seq + 1;
        }
        let reads = 1e6 / start.elapsed().as_secs_f64();
        println!("{appends:.0} appends/s, {reads:.0} reads/s of 300-byte records");
    }
}
