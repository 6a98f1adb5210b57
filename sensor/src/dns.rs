//! DNS responses captured in the kernel (UDP from port 53, cgroup ingress): parsed here, and
//! remembered per (receiving cgroup, answered address) so that a later connect from that
//! cgroup to that address carries the names (`network.dst_dns_names`).
//!
//! The parser is written for hostile input: every read is bounds-checked, a compression
//! pointer must point strictly backwards (so a name cannot loop), names are limited to the
//! RFC 1035 255 bytes, and at most [`MAX_RECORDS`] records are looked at. A message that
//! does not parse is counted and skipped; nothing here panics on packet content.

use std::{
    collections::HashMap,
    net::{IpAddr, Ipv4Addr, Ipv6Addr},
    time::{Duration, Instant},
};

/// Records of one section looked at, at most: a real answer to an A/AAAA question has a few;
/// this bounds the work a crafted message can cause.
const MAX_RECORDS: usize = 64;
/// RFC 1035 §2.3.4: a name is at most 255 bytes on the wire.
const MAX_NAME: usize = 255;

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Answer {
    pub name: String,
    pub rtype: u16,
    pub ttl: u32,
    pub data: AnswerData,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum AnswerData {
    Addr(IpAddr),
    Cname(String),
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Message {
    pub id: u16,
    pub rcode: u8,
    pub truncated: bool,
    pub query: String,
    pub qtype: u16,
    pub answers: Vec<Answer>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum ParseError {
    #[error("shorter than its contents say")]
    Short,
    #[error("not a response")]
    NotResponse,
    #[error("no question")]
    NoQuestion,
    #[error("compression pointer that does not point backwards")]
    BadPointer,
    #[error("name longer than 255 bytes")]
    LongName,
    #[error("reserved label type")]
    BadLabel,
}

fn u16_at(m: &[u8], at: usize) -> Result<u16, ParseError> {
    let b = m.get(at..at + 2).ok_or(ParseError::Short)?;
    Ok(u16::from_be_bytes([b[0], b[1]]))
}

fn u32_at(m: &[u8], at: usize) -> Result<u32, ParseError> {
    let b = m.get(at..at + 4).ok_or(ParseError::Short)?;
    Ok(u32::from_be_bytes([b[0], b[1], b[2], b[3]]))
}

/// Reads the name at `at`; returns it (lower case, dotted, no trailing dot) and the offset
/// after it in the original position (a pointer ends the name there).
fn name_at(m: &[u8], at: usize) -> Result<(String, usize), ParseError> {
    let mut out = String::new();
    let mut pos = at;
    let mut end = None;
    let mut wire_len = 0usize;
    loop {
        let len = *m.get(pos).ok_or(ParseError::Short)?;
        match len & 0xc0 {
            0x00 => {
                if len == 0 {
                    return Ok((out, end.unwrap_or(pos + 1)));
                }
                let label = m
                    .get(pos + 1..pos + 1 + len as usize)
                    .ok_or(ParseError::Short)?;
                wire_len += 1 + label.len();
                if wire_len > MAX_NAME {
                    return Err(ParseError::LongName);
                }
                if !out.is_empty() {
                    out.push('.');
                }
                for &c in label {
                    // Printable ASCII kept (lower-cased); anything else escaped, as dig does.
                    if c.is_ascii_graphic() && c != b'.' && c != b'\\' {
                        out.push(c.to_ascii_lowercase() as char);
                    } else {
                        out.push_str(&format!("\\{c:03}"));
                    }
                }
                pos += 1 + label.len();
            }
            0xc0 => {
                let target = (u16_at(m, pos)? & 0x3fff) as usize;
                // Strictly backwards from where this pointer is: every jump makes progress
                // towards the start, so a chain of pointers cannot loop.
                if target >= pos {
                    return Err(ParseError::BadPointer);
                }
                end.get_or_insert(pos + 2);
                pos = target;
            }
            _ => return Err(ParseError::BadLabel),
        }
    }
}

/// Parses a DNS response (the UDP payload).
pub fn parse(m: &[u8]) -> Result<Message, ParseError> {
    let id = u16_at(m, 0)?;
    let flags = u16_at(m, 2)?;
    if flags & 0x8000 == 0 {
        return Err(ParseError::NotResponse);
    }
    let qd = u16_at(m, 4)?;
    let an = u16_at(m, 6)? as usize;
    if qd == 0 {
        return Err(ParseError::NoQuestion);
    }
    let (query, mut pos) = name_at(m, 12)?;
    let qtype = u16_at(m, pos)?;
    pos += 4;
    // Further questions (never sent in practice) are skipped.
    for _ in 1..(qd as usize).min(MAX_RECORDS) {
        pos = name_at(m, pos)?.1 + 4;
    }
    let mut answers = Vec::new();
    for _ in 0..an.min(MAX_RECORDS) {
        let (name, p) = name_at(m, pos)?;
        let rtype = u16_at(m, p)?;
        let ttl = u32_at(m, p + 4)?;
        let rdlen = u16_at(m, p + 8)? as usize;
        let rdata_at = p + 10;
        let rdata = m.get(rdata_at..rdata_at + rdlen).ok_or(ParseError::Short)?;
        pos = rdata_at + rdlen;
        let data = match (rtype, rdata.len()) {
            (1, 4) => AnswerData::Addr(IpAddr::V4(Ipv4Addr::new(
                rdata[0], rdata[1], rdata[2], rdata[3],
            ))),
            (28, 16) => {
                let b: [u8; 16] = rdata.try_into().map_err(|_| ParseError::Short)?;
                AnswerData::Addr(IpAddr::V6(Ipv6Addr::from(b)))
            }
            (5, _) => AnswerData::Cname(name_at(m, rdata_at)?.0),
            _ => continue,
        };
        answers.push(Answer {
            name,
            rtype,
            ttl,
            data,
        });
    }
    Ok(Message {
        id,
        rcode: (flags & 0x000f) as u8,
        truncated: flags & 0x0200 != 0,
        query,
        qtype,
        answers,
    })
}

pub fn type_name(t: u16) -> String {
    match t {
        1 => "A".into(),
        5 => "CNAME".into(),
        28 => "AAAA".into(),
        2 => "NS".into(),
        6 => "SOA".into(),
        12 => "PTR".into(),
        15 => "MX".into(),
        16 => "TXT".into(),
        33 => "SRV".into(),
        65 => "HTTPS".into(),
        t => format!("TYPE{t}"),
    }
}

pub fn rcode_name(r: u8) -> String {
    match r {
        0 => "NOERROR".into(),
        1 => "FORMERR".into(),
        2 => "SERVFAIL".into(),
        3 => "NXDOMAIN".into(),
        4 => "NOTIMP".into(),
        5 => "REFUSED".into(),
        r => format!("RCODE{r}"),
    }
}

/// For each answered address, the names that lead to it: the query name, then the CNAME
/// chain in order (each name once).
pub fn names_by_address(msg: &Message) -> Vec<(IpAddr, Vec<String>, u32)> {
    let mut out = Vec::new();
    for a in &msg.answers {
        let AnswerData::Addr(ip) = a.data else {
            continue;
        };
        // Walk back from the address record's owner through the CNAMEs that point to it.
        let mut chain = vec![a.name.clone()];
        let mut ttl = a.ttl;
        for _ in 0..MAX_RECORDS {
            let last = chain.last().cloned().unwrap_or_default();
            let Some(prev) = msg.answers.iter().find(|c| {
                matches!(&c.data, AnswerData::Cname(t) if *t == last) && !chain.contains(&c.name)
            }) else {
                break;
            };
            ttl = ttl.min(prev.ttl);
            chain.push(prev.name.clone());
        }
        chain.reverse();
        if chain.first() != Some(&msg.query) && !chain.contains(&msg.query) {
            chain.insert(0, msg.query.clone());
        }
        out.push((ip, chain, ttl));
    }
    out
}

/// An answer is remembered at least this long whatever its TTL: the connect that follows a
/// lookup with TTL 0 (load balancers use it) comes milliseconds later and should be named.
const TTL_FLOOR: Duration = Duration::from_secs(30);
/// And at most this long: an address re-used by another service after a day-long TTL would
/// otherwise carry a stale name; an hour outlasts the connection pools that resolve once.
const TTL_CAP: Duration = Duration::from_secs(3600);
/// Entries (cgroup, address) kept, at most: ~100 bytes each, 16384 ≈ 2 MiB; a node's
/// workloads rarely hold more distinct live answers. Beyond it the entry closest to expiry
/// is evicted and counted.
pub const CACHE_ENTRIES: usize = 16_384;

fn key_ip(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V6(v6) => v6.to_ipv4_mapped().map_or(ip, IpAddr::V4),
        v4 => v4,
    }
}

struct Entry {
    names: Vec<String>,
    expires: Instant,
}

/// (cgroup id, address) → names, honouring the TTLs (bounded by the floor and cap above).
pub struct Cache {
    entries: HashMap<(u64, IpAddr), Entry>,
    capacity: usize,
    pub evicted: u64,
}

impl Default for Cache {
    fn default() -> Self {
        Self::with_capacity(CACHE_ENTRIES)
    }
}

impl Cache {
    pub fn with_capacity(capacity: usize) -> Self {
        Self {
            entries: HashMap::new(),
            capacity: capacity.max(1),
            evicted: 0,
        }
    }

    pub fn insert(&mut self, cgroup: u64, msg: &Message, now: Instant) {
        for (ip, names, ttl) in names_by_address(msg) {
            let ttl = Duration::from_secs(u64::from(ttl)).clamp(TTL_FLOOR, TTL_CAP);
            let key = (cgroup, key_ip(ip));
            if !self.entries.contains_key(&key) && self.entries.len() >= self.capacity {
                self.make_room(now);
            }
            self.entries.insert(
                key,
                Entry {
                    names,
                    expires: now + ttl,
                },
            );
        }
    }

    fn make_room(&mut self, now: Instant) {
        self.entries.retain(|_, e| e.expires > now);
        if self.entries.len() < self.capacity {
            return;
        }
        if let Some(k) = self
            .entries
            .iter()
            .min_by_key(|(_, e)| e.expires)
            .map(|(k, _)| *k)
        {
            self.entries.remove(&k);
            self.evicted += 1;
        }
    }

    /// The names of `ip` as answered to `cgroup`, if the answer is still live.
    pub fn names_at(&self, cgroup: u64, ip: IpAddr, now: Instant) -> Vec<String> {
        self.entries
            .get(&(cgroup, key_ip(ip)))
            .filter(|e| e.expires > now)
            .map(|e| e.names.clone())
            .unwrap_or_default()
    }

    pub fn names(&self, cgroup: u64, ip: IpAddr) -> Vec<String> {
        self.names_at(cgroup, ip, Instant::now())
    }

    #[cfg(test)]
    pub fn len(&self) -> usize {
        self.entries.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A response: question `name`/A, then `answers` already encoded.
    fn response(name: &str, an: u16, answers: &[u8], flags: u16) -> Vec<u8> {
        let mut m = vec![0x12, 0x34];
        m.extend_from_slice(&flags.to_be_bytes());
        m.extend_from_slice(&[0, 1]);
        m.extend_from_slice(&an.to_be_bytes());
        m.extend_from_slice(&[0, 0, 0, 0]);
        for l in name.split('.') {
            m.push(l.len() as u8);
            m.extend_from_slice(l.as_bytes());
        }
        m.extend_from_slice(&[0, 0, 1, 0, 1]);
        m.extend_from_slice(answers);
        m
    }

    fn rr(owner: &[u8], rtype: u16, ttl: u32, rdata: &[u8]) -> Vec<u8> {
        let mut r = owner.to_vec();
        r.extend_from_slice(&rtype.to_be_bytes());
        r.extend_from_slice(&[0, 1]);
        r.extend_from_slice(&ttl.to_be_bytes());
        r.extend_from_slice(&(rdata.len() as u16).to_be_bytes());
        r.extend_from_slice(rdata);
        r
    }

    #[test]
    fn parses_cname_chain_and_addresses() {
        // api.example.test CNAME edge.cdn.test (pointer to the question at 12), A 192.0.2.7.
        let mut ans = rr(&[0xc0, 12], 5, 300, b"\x04edge\x03cdn\x04test\x00");
        let cname_at = 12 + 18 + 4 + 12; // header + question + RR header before its rdata
        ans.extend(rr(&[0xc0, cname_at as u8], 1, 60, &[192, 0, 2, 7]));
        ans.extend(rr(
            &[0xc0, cname_at as u8],
            28,
            60,
            &Ipv6Addr::LOCALHOST.octets(),
        ));
        let m = response("API.example.test", 3, &ans, 0x8180);
        let msg = parse(&m).unwrap();
        assert_eq!(msg.query, "api.example.test");
        assert_eq!(msg.rcode, 0);
        assert_eq!(msg.answers.len(), 3);
        let by = names_by_address(&msg);
        assert_eq!(
            by[0],
            (
                IpAddr::V4(Ipv4Addr::new(192, 0, 2, 7)),
                vec!["api.example.test".to_string(), "edge.cdn.test".to_string()],
                60
            )
        );
        let mut cache = Cache::with_capacity(2);
        let now = Instant::now();
        cache.insert(7, &msg, now);
        let mapped: IpAddr = "::ffff:192.0.2.7".parse().unwrap();
        assert_eq!(cache.names_at(7, mapped, now).len(), 2);
        assert!(cache.names_at(8, mapped, now).is_empty(), "other cgroup");
        assert!(
            cache
                .names_at(7, mapped, now + Duration::from_secs(61))
                .is_empty(),
            "expired"
        );
        // Full: a third address evicts one and counts it.
        let other = response("b.test", 1, &rr(&[0xc0, 12], 1, 5, &[10, 0, 0, 1]), 0x8180);
        cache.insert(9, &parse(&other).unwrap(), now);
        assert_eq!((cache.len(), cache.evicted), (2, 1));
        // The TTL floor keeps a 5 s answer for 30 s.
        assert!(
            !cache
                .names_at(
                    9,
                    "10.0.0.1".parse().unwrap(),
                    now + Duration::from_secs(20)
                )
                .is_empty()
        );
    }

    #[test]
    fn hostile_messages_are_errors_not_panics() {
        // A pointer to itself, a forward pointer, a truncated record, a reserved label.
        let looping = response("a.test", 1, &rr(&[0xc0, 24], 1, 1, &[1, 2, 3, 4]), 0x8180);
        assert_eq!(parse(&looping), Err(ParseError::BadPointer));
        let mut forward = response("a.test", 1, &[], 0x8180);
        forward.extend_from_slice(&[0xc0, 0xff]);
        assert!(parse(&forward).is_err());
        let ok = response("a.test", 1, &rr(&[0xc0, 12], 1, 1, &[1, 2, 3, 4]), 0x8180);
        for cut in 0..ok.len() {
            assert!(parse(&ok[..cut]).is_err(), "cut at {cut}");
        }
        let mut reserved = ok.clone();
        reserved[12] = 0x40;
        assert_eq!(parse(&reserved), Err(ParseError::BadLabel));
        assert_eq!(
            parse(&response("a.test", 0, &[], 0x0100)),
            Err(ParseError::NotResponse)
        );
        // Random bytes never panic.
        let mut x: u32 = 0x9e37_79b9;
        for _ in 0..2000 {
            let len = (x % 80) as usize;
            let buf: Vec<u8> = (0..len)
                .map(|_| {
                    x ^= x << 13;
                    x ^= x >> 17;
                    x ^= x << 5;
                    x as u8
                })
                .collect();
            let _ = parse(&buf);
        }
    }
}
