//! The fleet's view of the detections: what no single sensor can see. Today one rule,
//! `NHI-D006` across hosts: the same credential (keyed fingerprint — the same per-deployment key
//! on every sensor makes fingerprints comparable) read on more than one node.
//!
//! Like the OCSF writer it follows the store (its position is the sink `fleet`), so it misses
//! nothing across restarts and never slows ingest. Its findings are stored as events of the
//! collector's own stream (`sensor_id` `collector:<host>`), so they reach the OCSF output and
//! subscribers like every other event. Each collector replica correlates what it stores: behind
//! a load balancer, run the fleet view on one collector that all sensors (or a Kafka consumer)
//! feed, or correlate in the SIEM.

use std::{sync::Arc, time::Duration};

use nhi_proto::v1 as pb;

use super::{store::Store, subscribe::Hub};
use crate::detect::rules;

/// The sink name of the fleet view's position in the store.
const SINK: &str = "fleet";
/// How often the store is polled for new events (findings are not latency-critical; a second
/// keeps the cost of an idle collector negligible).
const POLL: Duration = Duration::from_secs(1);
/// Events read per store query.
const BATCH: usize = 2_000;

pub fn spawn(store: Store, hub: Arc<Hub>) -> anyhow::Result<()> {
    let host = crate::export::hostname();
    let identity = pb::SensorIdentity {
        sensor_id: format!("collector:{host}"),
        node_name: host,
        boot_id: crate::procfs::boot_id().unwrap_or_default(),
        // A new stream per start: its sequence numbers start at 1 again.
        stream_id: uuid::Uuid::new_v4().to_string(),
        sensor_version: env!("CARGO_PKG_VERSION").to_string(),
    };
    let reader = store.reader()?;
    std::thread::Builder::new()
        .name("fleet".into())
        .spawn(move || {
            let mut fleet = Fleet {
                store,
                identity,
                next_sequence: 1,
            };
            loop {
                if let Err(e) = fleet.step(&reader, &hub) {
                    tracing::warn!(error = %format!("{e:#}"), "fleet view: retrying");
                }
                std::thread::sleep(POLL);
            }
        })?;
    Ok(())
}

struct Fleet {
    store: Store,
    identity: pb::SensorIdentity,
    next_sequence: u64,
}

impl Fleet {
    fn step(&mut self, reader: &rusqlite::Connection, hub: &Hub) -> anyhow::Result<()> {
        loop {
            let after = self.store.sink_position(SINK)?.unwrap_or(0);
            let events = super::store::read_after(reader, after, BATCH)?;
            let Some(last) = events.last().map(|(id, _)| *id) else {
                return Ok(());
            };
            let mut findings = Vec::new();
            for (_, ev) in &events {
                if let Some(f) = self.observe(ev)? {
                    findings.push(f);
                }
            }
            if !findings.is_empty() {
                let committed = self.store.commit(&self.identity, findings)?;
                hub.publish(committed.stored);
            }
            self.store.set_sink_position(SINK, last)?;
            if events.len() < BATCH {
                return Ok(());
            }
        }
    }

    fn observe(&mut self, ev: &pb::Event) -> anyhow::Result<Option<pb::Event>> {
        if ev.kind() != pb::EventKind::FileOpen {
            return Ok(None);
        }
        let (Some(cred), Some(sensor)) = (&ev.credential, &ev.sensor) else {
            return Ok(None);
        };
        let Some(fp) = cred.fingerprint.as_deref() else {
            return Ok(None);
        };
        let others = self
            .store
            .add_credential_node(fp, &sensor.node_name, ev_time_ns(ev))?;
        if others.is_empty() {
            return Ok(None);
        }
        let rule = rules::by_id(rules::SHARED_CREDENTIAL).expect("rule");
        let path = match &ev.payload {
            Some(pb::event::Payload::FileOpen(f)) => f.path.as_ref().map(|p| p.text.clone()),
            _ => None,
        };
        let workload_key = ev
            .workload
            .as_ref()
            .map(|w| match (w.pod_uid.as_str(), w.container_id.as_str()) {
                ("", "") => format!("host:{}", sensor.node_name),
                ("", c) => format!("container:{c}"),
                (p, _) => format!("pod:{p}"),
            })
            .unwrap_or_default();
        let mut evidence = vec![pb::FindingEvidence {
            kind: "file.open".into(),
            time: super::ocsf::rfc3339(i128::from(ev_time_ns(ev))).unwrap_or_default(),
            pid: ev.process.as_ref().map(|p| p.pid),
            exe: ev
                .process
                .as_ref()
                .and_then(|p| p.exe.as_ref())
                .map(|e| e.text.clone()),
            path: path.clone(),
            credential_kind: Some(cred.kind.clone()),
            fingerprint: Some(fp.to_string()),
            workload_key: Some(workload_key.clone()),
            detail: Some(format!("node {}", sensor.node_name)),
            ..Default::default()
        }];
        evidence.extend(others.iter().map(|n| pb::FindingEvidence {
            kind: "credential.node".into(),
            credential_kind: Some(cred.kind.clone()),
            fingerprint: Some(fp.to_string()),
            detail: Some(format!("also used on node {n}")),
            ..Default::default()
        }));
        let summary = format!(
            "{} ({}) used on node {} and on {} other node(s): {}",
            path.as_deref().unwrap_or("a credential"),
            cred.kind,
            sensor.node_name,
            others.len(),
            others.join(", ")
        );
        let mut out = pb::Event {
            kind: pb::EventKind::Finding as i32,
            time: ev.time,
            boot_ns: ev.boot_ns,
            process: ev.process.clone(),
            workload: ev.workload.clone(),
            identity: ev.identity.clone(),
            credential: ev.credential.clone(),
            payload: Some(pb::event::Payload::Finding(pb::Finding {
                rule_id: rule.id.into(),
                title: rule.title.into(),
                severity: "high".into(),
                owasp: rule.owasp.iter().map(|s| s.to_string()).collect(),
                mitre_technique_id: rule.mitre.0.into(),
                mitre_technique: rule.mitre.1.into(),
                summary,
                workload_key,
                evidence,
            })),
            ..Default::default()
        };
        out.sequence = self.next_sequence;
        out.sensor = Some(self.identity.clone());
        self.next_sequence += 1;
        Ok(Some(out))
    }
}

fn ev_time_ns(ev: &pb::Event) -> i64 {
    ev.time.as_ref().map_or(0, |t| {
        t.seconds.saturating_mul(1_000_000_000) + i64::from(t.nanos)
    })
}
