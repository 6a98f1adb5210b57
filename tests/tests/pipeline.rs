//! The event pipeline, end to end, with real processes: the sensor (real eBPF programs, a
//! real workload) ships over gRPC with mutual TLS on loopback to a collector started as a
//! separate process; the tests kill either side with SIGKILL and check, from the collector's
//! store and OCSF output, that every event arrived exactly once and every loss is stated.
//!
//! Root is needed (the sensor loads programs). The Python parts (OCSF schema validation, the
//! grpcio subscriber) use `$NHI_PYTHON`, which `cargo xtask test` sets up.

use std::{
    collections::{BTreeMap, BTreeSet},
    io::{BufRead as _, BufReader, Read as _, Write as _},
    net::{TcpListener, TcpStream},
    process::{Command, Stdio},
    sync::MutexGuard,
    time::{Duration, Instant},
};

use nhi_proto::v1 as pb;
use nhi_sensor_tests::{
    TempDir, WAIT, get_str, get_u64, is_kind, run_with_timeout, scaled,
    shipping::{
        Collector, assert_exactly_once, certs, file_events_for, free_port, http_get, metric,
        ocsf_lines, ok_step, poll, python, query, ship_args, start_sensor, stored, streams,
        uid_seq,
    },
    spawn_actor, workspace_root,
};
use serde_json::Value;

fn setup(test: &str) -> Option<MutexGuard<'static, ()>> {
    nhi_sensor_tests::init_actor_bin!();
    nhi_sensor_tests::serial_root_test(test)
}

/// Real kernel events reach the collector over mTLS, land in its store and OCSF output (every
/// line valid against the OCSF schema of its class), and reach a Python grpcio subscriber
/// through a server-side filter, while a subscriber whose filter excludes them gets nothing.
#[test]
fn events_reach_ocsf_store_and_a_python_subscriber() {
    let Some(_g) = setup("events_reach_ocsf_store_and_a_python_subscriber") else {
        return;
    };
    let dir = TempDir::new("pipe-ocsf");
    let watched = dir.mkdir("watched");
    let secret = dir.write("watched/api-key", b"s3cr3t-value-never-shipped");
    let metrics_port = free_port();
    let col = Collector::start(
        dir.path(),
        &["--metrics-addr", &format!("127.0.0.1:{metrics_port}")],
    );
    let sensor = start_sensor(&watched, &ship_args(&col, &dir.join("spool")), &[]);

    let c = certs();
    let subscriber = |filter: &[&str], count: &str| {
        let mut cmd = Command::new(python());
        cmd.arg(workspace_root().join("tests/py/subscribe.py"))
            .arg("--proto-dir")
            .arg(workspace_root().join("proto"))
            .args(["--target", &format!("127.0.0.1:{}", col.port)])
            .arg("--ca")
            .arg(c.join("ca.pem"))
            .arg("--cert")
            .arg(c.join("subscriber.pem"))
            .arg("--key")
            .arg(c.join("subscriber.key"))
            .args(["--server-name", "localhost", "--count", count, "--timeout"])
            .arg(scaled(Duration::from_secs(40)).as_secs().to_string())
            .args(filter)
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        let mut child = cmd
            .spawn()
            .expect("python subscriber (run `cargo xtask setup`)");
        let mut err = BufReader::new(child.stderr.take().unwrap());
        let mut line = String::new();
        loop {
            line.clear();
            assert!(
                err.read_line(&mut line).unwrap() > 0,
                "subscriber exited before READY"
            );
            if line.contains("READY") {
                break;
            }
        }
        (child, err)
    };
    let (wanted, _e1) = subscriber(&["--kind", "EVENT_KIND_FILE_OPEN"], "1");
    let (excluded, _e2) = subscriber(&["--namespace", "no-such-namespace"], "1");

    let server = TcpListener::bind("127.0.0.1:0").unwrap();
    let port = server.local_addr().unwrap().port();
    let mut actor = spawn_actor(&[
        "--open",
        secret.to_str().unwrap(),
        "--read",
        "8",
        "--close",
        "--connect-tcp",
        &format!("127.0.0.1:{port}"),
    ]);
    ok_step(&mut actor, "open");
    ok_step(&mut actor, "connect");
    let pid = actor.pid();
    let secret_s = secret.to_str().unwrap().to_string();
    sensor.wait_for("the file.open on stdout", WAIT, |e| {
        is_kind(e, "file.open") && get_str(e, "file.path") == Some(secret_s.as_str())
    });

    // OCSF output: the open (File System Activity, Open) and the connect (Network Activity).
    let ocsf_file = dir.join("ocsf.jsonl");
    let lines = poll("OCSF lines for the open and the connect", WAIT * 2, || {
        let lines = ocsf_lines(&ocsf_file);
        let open = !file_events_for(&lines, &secret_s, 14).is_empty();
        let connect = lines.iter().any(|e| {
            get_u64(e, "class_uid") == Some(4001)
                && get_u64(e, "dst_endpoint.port") == Some(u64::from(port))
        });
        (open && connect).then_some(lines)
    });
    let open = file_events_for(&lines, &secret_s, 14)[0];
    assert_eq!(
        get_u64(open, "actor.process.pid"),
        Some(u64::from(pid)),
        "{open}"
    );
    assert!(
        !lines.iter().any(|l| l.to_string().contains("s3cr3t")),
        "the secret's content must never be shipped"
    );

    // Every line validates against the published OCSF schema of its class.
    let mut cmd = Command::new(python());
    cmd.arg(workspace_root().join("tests/py/validate_ocsf.py"))
        .arg(&ocsf_file);
    let out = run_with_timeout(cmd, Duration::from_secs(120));
    assert!(
        out.status.success(),
        "OCSF validation failed:\n{}\n{}",
        out.stdout,
        out.stderr
    );

    // The store answers queries.
    let q = query(
        &dir.join("store"),
        &["--kind", "file.open", "--since", "10m", "--format", "json"],
    );
    assert!(q.contains(&secret_s), "events --kind file.open: {q}");

    // The Python subscriber got the open through its kind filter; the other got nothing.
    let out = wanted.wait_with_output().unwrap();
    assert!(out.status.success(), "subscriber: {out:?}");
    let got: Value = serde_json::from_slice(&out.stdout).expect("one JSON event");
    assert_eq!(get_str(&got, "kind"), Some("EVENT_KIND_FILE_OPEN"), "{got}");
    assert!(
        get_str(&got, "sensor.sensor_id") == Some("test-sensor"),
        "{got}"
    );
    drop(actor);

    // Metrics and health answer with real values.
    let m = http_get(metrics_port, "/metrics");
    assert!(
        metric(&m, "nhi_collector_events_stored_total") >= 2.0,
        "{m}"
    );
    assert!(metric(&m, "nhi_collector_subscribers") >= 1.0, "{m}");
    assert!(http_get(metrics_port, "/readyz").starts_with("HTTP/1.1 200"));

    let stopped = sensor.stop();
    stopped.assert_clean();
    let mut excluded = excluded;
    let _ = excluded.kill();
    let out = excluded.wait_with_output().unwrap();
    assert!(
        out.stdout.is_empty(),
        "the namespace filter let events through: {out:?}"
    );
}

/// The collector is SIGKILLed in the middle of a 50,000-event burst and restarted: every
/// event reaches the store and the OCSF file exactly once.
#[test]
fn collector_killed_mid_burst_loses_nothing_and_duplicates_nothing() {
    let Some(_g) = setup("collector_killed_mid_burst_loses_nothing_and_duplicates_nothing") else {
        return;
    };
    const OPENS: usize = 25_000; // an open and a close each: 50,000 file events
    let dir = TempDir::new("pipe-kill-collector");
    let watched = dir.mkdir("watched");
    let key = dir.write("watched/token", b"x");
    let key_s = key.to_str().unwrap().to_string();
    // Small OCSF files: the output rotates several times, across the kill too.
    let mut col = Collector::start(
        dir.path(),
        &["--ocsf-max-bytes", "20000000", "--ocsf-keep", "50"],
    );
    let sensor = start_sensor(
        &watched,
        &ship_args(&col, &dir.join("spool")),
        // Room for the whole burst in the ring, and time to drain the backlog at the end.
        &["--ring-mib", "64", "--drain-timeout", "120"],
    );
    let mut actor = spawn_actor(&["--open-loop", &key_s, &OPENS.to_string()]);
    let store = dir.join("store");
    poll(
        "the first 5,000 events stored",
        Duration::from_secs(120),
        || {
            let s = streams(&store);
            (s.first().and_then(|r| get_u64(r, "stored")).unwrap_or(0) >= 5_000).then_some(())
        },
    );
    col.kill9();
    let at_kill = streams(&store)[0].clone();
    std::thread::sleep(Duration::from_secs(1));
    col.spawn();
    ok_step(&mut actor, "open-loop");
    drop(actor);
    let stopped = sensor.stop();
    stopped.assert_clean();
    let printed_opens = stopped
        .count(|e| is_kind(e, "file.open") && get_str(e, "file.path") == Some(key_s.as_str()));
    assert_eq!(
        get_u64(stopped.final_stats(), "stats.kernel_drops"),
        Some(0),
        "the kernel dropped events; the test needs all of them"
    );
    assert_eq!(printed_opens, OPENS);
    let final_spool = stopped.final_stats()["stats"]["spool"].clone();

    let events = stored(&store);
    let row = assert_exactly_once(&store, &events);
    assert!(
        get_u64(&at_kill, "stored").unwrap() < get_u64(&row, "stored").unwrap(),
        "the kill must happen mid-burst: {at_kill} then {row}"
    );
    assert_eq!(get_u64(&row, "lost"), Some(0), "{row}");
    // Everything the sensor printed was stored, once: every kind's count matches.
    let mut printed: BTreeMap<String, usize> = BTreeMap::new();
    for e in &stopped.events {
        *printed
            .entry(get_str(e, "kind").unwrap().to_string())
            .or_default() += 1;
    }
    assert_eq!(
        events.len(),
        stopped.events.len(),
        "stored vs printed events (printed by kind: {printed:?}); final spool {final_spool}"
    );
    assert_eq!(file_events_for(&events, &key_s, 14).len(), OPENS);

    // The OCSF file: the same events, each once, even across the kill.
    let lines = poll("the OCSF file to catch up", Duration::from_secs(60), || {
        let l = ocsf_lines(&dir.join("ocsf.jsonl"));
        (l.len() >= events.len()).then_some(l)
    });
    let uids: BTreeSet<String> = lines
        .iter()
        .map(|l| get_str(l, "metadata.uid").unwrap().to_string())
        .collect();
    assert_eq!(uids.len(), lines.len(), "duplicate lines in the OCSF file");
    assert_eq!(lines.len(), events.len(), "OCSF lines vs stored events");
    assert_eq!(file_events_for(&lines, &key_s, 14).len(), OPENS);
}

/// The sensor is SIGKILLed while its events are still spooled (collector down), then
/// restarted with the same spool: the spooled events are delivered, none twice.
#[test]
fn sensor_killed_with_spooled_events_delivers_them_once_after_restart() {
    let Some(_g) = setup("sensor_killed_with_spooled_events_delivers_them_once_after_restart")
    else {
        return;
    };
    const OPENS: usize = 300;
    let dir = TempDir::new("pipe-kill-sensor");
    let watched = dir.mkdir("watched");
    let key = dir.write("watched/id_ed25519", b"k");
    let key_s = key.to_str().unwrap().to_string();
    let spool = dir.join("spool");
    let mut col = Collector::start(dir.path(), &[]);
    let args = ship_args(&col, &spool);
    col.kill9();
    let sensor = start_sensor(&watched, &args, &[]);
    let mut actor = spawn_actor(&["--open-loop", &key_s, &OPENS.to_string()]);
    ok_step(&mut actor, "open-loop");
    sensor.wait_for_n("all opens printed (and so spooled)", WAIT, OPENS, |e| {
        is_kind(e, "file.open") && get_str(e, "file.path") == Some(key_s.as_str())
    });
    let first = sensor.kill9();
    assert!(
        !dir.join("store").join("events.db").exists()
            || streams(&dir.join("store"))
                .iter()
                .all(|r| get_u64(r, "stored") == Some(0)),
        "nothing can have been delivered yet"
    );
    drop(actor);

    col.spawn();
    let sensor = start_sensor(&watched, &args, &[]);
    let store = dir.join("store");
    poll(
        "the spooled opens delivered",
        Duration::from_secs(60),
        || {
            let ev = stored(&store);
            (file_events_for(&ev, &key_s, 14).len() >= OPENS).then_some(())
        },
    );
    let second = sensor.stop();
    second.assert_clean();
    let events = stored(&store);
    let row = assert_exactly_once(&store, &events);
    assert_eq!(file_events_for(&events, &key_s, 14).len(), OPENS, "{row}");
    assert_eq!(get_u64(&row, "lost"), Some(0));
    // One stream across the restart: the spool kept its stream id and numbering.
    assert!(events.len() >= first.events.len() + second.events.len() - 1);
}

/// A spool too small for an outage: the oldest events are discarded, and the loss records
/// state exactly which sequence numbers, in agreement with the sensor's and the collector's
/// counters.
#[test]
fn spool_overflow_is_reported_exactly() {
    let Some(_g) = setup("spool_overflow_is_reported_exactly") else {
        return;
    };
    const OPENS: usize = 3_000;
    let dir = TempDir::new("pipe-overflow");
    let watched = dir.mkdir("watched");
    let key = dir.write("watched/credentials", b"k");
    let key_s = key.to_str().unwrap().to_string();
    let mut col = Collector::start(dir.path(), &[]);
    let args = ship_args(&col, &dir.join("spool"));
    col.kill9();
    let sensor = start_sensor(&watched, &args, &["--spool-max-bytes", "262144"]);
    let mut actor = spawn_actor(&["--open-loop", &key_s, &OPENS.to_string()]);
    ok_step(&mut actor, "open-loop");
    drop(actor);
    sensor.wait_for(
        "the spool to discard events",
        Duration::from_secs(30),
        |e| is_kind(e, "sensor.stats") && get_u64(e, "stats.spool.evicted").unwrap_or(0) > 0,
    );
    col.spawn();
    let store = dir.join("store");
    poll("a loss record stored", Duration::from_secs(60), || {
        stored(&store)
            .iter()
            .any(|e| e["unmapped"]["loss"].is_object())
            .then_some(())
    });
    let stopped = sensor.stop();
    stopped.assert_clean();
    let evicted = get_u64(stopped.final_stats(), "stats.spool.evicted").unwrap();
    assert!(evicted > 0);

    let events = stored(&store);
    let row = assert_exactly_once(&store, &events);
    let mut declared = 0;
    let mut ranges = Vec::new();
    for e in &events {
        if let Some(first) = get_u64(e, "unmapped.loss.first_sequence") {
            let last = get_u64(e, "unmapped.loss.last_sequence").unwrap();
            assert_eq!(
                get_u64(e, "unmapped.loss.count"),
                Some(last - first + 1),
                "{e}"
            );
            assert_eq!(
                uid_seq(e).1,
                first,
                "a loss record takes its first lost number"
            );
            declared += last - first + 1;
            ranges.push((first, last));
        }
    }
    assert_eq!(
        declared,
        evicted,
        "loss records {ranges:?} vs the sensor's count; final stats: {}",
        stopped.final_stats()
    );
    assert_eq!(
        get_u64(&row, "lost"),
        Some(evicted),
        "collector's count: {row}"
    );
    // The stated numbers are exactly the missing ones.
    let present: BTreeSet<u64> = events.iter().map(|e| uid_seq(e).1).collect();
    for (first, last) in &ranges {
        for seq in first + 1..=*last {
            assert!(!present.contains(&seq), "{seq} is stored but declared lost");
        }
    }
    assert!(
        (file_events_for(&events, &key_s, 14).len() as u64) < OPENS as u64,
        "some opens must have been discarded"
    );
}

/// Hostile clients are refused or cut off with a clear status while a well-behaved sensor
/// on the same collector keeps flowing.
#[test]
fn hostile_clients_are_refused_while_a_sensor_keeps_flowing() {
    let Some(_g) = setup("hostile_clients_are_refused_while_a_sensor_keeps_flowing") else {
        return;
    };
    let dir = TempDir::new("pipe-hostile");
    let watched = dir.mkdir("watched");
    let key = dir.write("watched/token", b"k");
    let key_s = key.to_str().unwrap().to_string();
    let col = Collector::start(dir.path(), &["--stream-idle-secs", "8"]);
    let sensor = start_sensor(&watched, &ship_args(&col, &dir.join("spool")), &[]);
    let store = dir.join("store");
    let c = certs();
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();

    let mut opens = 0;
    let mut flows = |what: &str| {
        opens += 1;
        let mut actor = spawn_actor(&["--open", &key_s, "--close"]);
        ok_step(&mut actor, "open");
        drop(actor);
        let n = opens;
        poll(
            &format!("the sensor's events still flowing after {what}"),
            WAIT * 2,
            || (file_events_for(&stored(&store), &key_s, 14).len() >= n).then_some(()),
        );
    };
    flows("start");

    let pem = |f: &str| std::fs::read(c.join(f)).unwrap();
    let endpoint = |identity: Option<(&str, &str)>| {
        let mut tls = tonic::transport::ClientTlsConfig::new()
            .ca_certificate(tonic::transport::Certificate::from_pem(pem("ca.pem")))
            .domain_name("localhost");
        if let Some((cert, key)) = identity {
            tls = tls.identity(tonic::transport::Identity::from_pem(pem(cert), pem(key)));
        }
        tonic::transport::Endpoint::from_shared(format!("https://localhost:{}", col.port))
            .unwrap()
            .tls_config(tls)
            .unwrap()
            .connect_timeout(Duration::from_secs(5))
    };
    let ship = |ep: tonic::transport::Endpoint, batches: Vec<pb::EventBatch>, hold: bool| {
        rt.block_on(async move {
            let ch = ep.connect().await.map_err(|e| format!("connect: {e:?}"))?;
            let mut client =
                pb::collector_client::CollectorClient::new(ch).max_encoding_message_size(64 << 20);
            let (tx, rx) = tokio::sync::mpsc::channel(4);
            for b in batches {
                tx.send(b).await.unwrap();
            }
            if !hold {
                drop(tx);
            } else {
                std::mem::forget(tx); // a stream that stalls: never sends, never closes
            }
            let mut acks = client
                .ship(tokio_stream::wrappers::ReceiverStream::new(rx))
                .await
                .map_err(|s| format!("{:?}: {}", s.code(), s.message()))?
                .into_inner();
            loop {
                match acks.message().await {
                    Ok(Some(_)) => continue,
                    Ok(None) => return Ok(()),
                    Err(s) => return Err(format!("{:?}: {}", s.code(), s.message())),
                }
            }
        })
    };
    let sensor_id = pb::SensorIdentity {
        sensor_id: "hostile".into(),
        stream_id: "hostile-stream".into(),
        ..Default::default()
    };

    // 1. No client certificate.
    let err = ship(endpoint(None), vec![], false).unwrap_err();
    eprintln!("no certificate: {err}");
    flows("a client without a certificate");
    // 2. A certificate from another CA.
    let err = ship(endpoint(Some(("rogue.pem", "rogue.key"))), vec![], false).unwrap_err();
    eprintln!("rogue certificate: {err}");
    flows("a client with a certificate from another CA");
    // 3. Garbage bytes instead of a TLS handshake.
    let mut s = TcpStream::connect(("127.0.0.1", col.port)).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    let _ = s.write_all(&[0x16, 0x03, 0x01, 0xff, 0xff, 0xde, 0xad, 0xbe, 0xef].repeat(100));
    let mut buf = [0u8; 512];
    let n = s.read(&mut buf).unwrap_or(0);
    let n2 = s.read(&mut buf).unwrap_or(0);
    assert!(
        n < 512 && n2 == 0,
        "the connection must be closed on garbage"
    );
    flows("garbage bytes");
    // 4. An oversized message (5 MiB > the 4 MiB limit).
    let huge = pb::EventBatch {
        sensor: Some(sensor_id.clone()),
        first_sequence: 1,
        events: vec![pb::Event {
            sequence: 1,
            kind: pb::EventKind::ProcessExec as i32,
            payload: Some(pb::event::Payload::Exec(pb::Exec {
                argv: vec!["A".repeat(5 << 20)],
                ..Default::default()
            })),
            ..Default::default()
        }],
    };
    let good = Some(("sensor.pem", "sensor.key"));
    let err = ship(endpoint(good), vec![huge], false).unwrap_err();
    assert!(
        err.starts_with("OutOfRange") || err.starts_with("ResourceExhausted"),
        "oversized message: {err}"
    );
    flows("an oversized message");
    // 5. A malformed batch (sequence numbers going backwards).
    let bad = pb::EventBatch {
        sensor: Some(sensor_id.clone()),
        first_sequence: 2,
        events: vec![
            pb::Event {
                sequence: 2,
                ..Default::default()
            },
            pb::Event {
                sequence: 1,
                ..Default::default()
            },
        ],
    };
    let err = ship(endpoint(good), vec![bad], false).unwrap_err();
    assert!(err.starts_with("InvalidArgument"), "malformed batch: {err}");
    // 6. A stream that stalls is cut off after the idle limit.
    let started = Instant::now();
    let err = ship(endpoint(good), vec![], true).unwrap_err();
    assert!(err.starts_with("DeadlineExceeded"), "stalled stream: {err}");
    assert!(started.elapsed() < scaled(Duration::from_secs(30)));
    flows("a stalled stream");

    let stopped = sensor.stop();
    stopped.assert_clean();
    // Nothing the hostile clients sent was stored.
    let rows = streams(&store);
    assert!(
        rows.iter()
            .all(|r| get_str(r, "sensor_id") == Some("test-sensor")),
        "{rows:?}"
    );
}

/// A subscriber that does not read never slows ingest: the store takes every event while it
/// sleeps, and when it reads again it is told, with a loss notice, how many it skipped.
#[test]
fn slow_subscriber_is_told_what_it_missed_and_never_slows_ingest() {
    let Some(_g) = setup("slow_subscriber_is_told_what_it_missed_and_never_slows_ingest") else {
        return;
    };
    const OPENS: usize = 3_000;
    let dir = TempDir::new("pipe-slow-sub");
    let watched = dir.mkdir("watched");
    let key = dir.write("watched/token", b"k");
    let key_s = key.to_str().unwrap().to_string();
    let col = Collector::start(dir.path(), &["--subscriber-buffer", "64"]);
    let sensor = start_sensor(&watched, &ship_args(&col, &dir.join("spool")), &[]);
    let c = certs();
    let pem = |f: &str| std::fs::read(c.join(f)).unwrap();
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let mut feed = rt.block_on(async {
        let tls = tonic::transport::ClientTlsConfig::new()
            .ca_certificate(tonic::transport::Certificate::from_pem(pem("ca.pem")))
            .identity(tonic::transport::Identity::from_pem(
                pem("subscriber.pem"),
                pem("subscriber.key"),
            ))
            .domain_name("localhost");
        let ch = tonic::transport::Endpoint::from_shared(col.url())
            .unwrap()
            .tls_config(tls)
            .unwrap()
            .connect()
            .await
            .expect("subscriber connects");
        pb::subscriptions_client::SubscriptionsClient::new(ch)
            .subscribe(pb::SubscribeRequest::default())
            .await
            .expect("subscribe")
            .into_inner()
    });
    // The subscriber sleeps while the burst is ingested.
    let mut actor = spawn_actor(&["--open-loop", &key_s, &OPENS.to_string()]);
    ok_step(&mut actor, "open-loop");
    drop(actor);
    let store = dir.join("store");
    poll("the whole burst stored", Duration::from_secs(120), || {
        (file_events_for(&stored(&store), &key_s, 14).len() >= OPENS).then_some(())
    });
    // Now it reads: a loss notice says how many it skipped.
    let (received, missed) = rt.block_on(async {
        let (mut received, mut missed) = (0u64, 0u64);
        // The sensor's periodic stats keep the feed going: stop once the burst is accounted
        // for, or after a bound.
        let deadline = tokio::time::Instant::now() + scaled(Duration::from_secs(60));
        while received + missed < 2 * OPENS as u64 || missed == 0 {
            let Ok(Ok(Some(ev))) = tokio::time::timeout_at(deadline, feed.message()).await else {
                break;
            };
            match ev.payload {
                Some(pb::event::Payload::Loss(l))
                    if l.reason == pb::LossReason::SubscriberLagged as i32 =>
                {
                    missed += l.count
                }
                _ => received += 1,
            }
        }
        (received, missed)
    });
    assert!(missed > 0, "no loss notice (received {received})");
    assert!(
        received + missed >= 2 * OPENS as u64,
        "received {received} + missed {missed} must cover the burst"
    );
    sensor.stop().assert_clean();
}
