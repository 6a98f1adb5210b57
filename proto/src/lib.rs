//! The gRPC contract between nhi-sensor and its collector.
//!
//! The protobuf sources live next to this crate, in `proto/nhisensor/v1/`, and are the
//! reference documentation of the wire format:
//!
//! * `events.proto`: the event model ([`v1::Event`] and its kind-specific payloads), which
//!   mirrors the sensor's JSON-lines output field by field, plus the shipping header
//!   ([`v1::SensorIdentity`], [`v1::Event::sequence`]) and the placeholder
//!   [`v1::Workload`] and [`v1::Identity`] messages a later version fills.
//! * `collector.proto`: the `Collector` service (`Ship`, at-least-once delivery of
//!   [`v1::EventBatch`]es acknowledged by [`v1::Ack`]s) and the `Subscriptions` service
//!   (`Subscribe`, a live feed of events filtered server-side by a
//!   [`v1::SubscribeRequest`]).
//!
//! [`v1`] holds the code `tonic-prost-build` generates from them: one Rust type per message
//! and enum, the clients ([`v1::collector_client::CollectorClient`],
//! [`v1::subscriptions_client::SubscriptionsClient`]) and the server traits and wrappers
//! ([`v1::collector_server`], [`v1::subscriptions_server`]). [`FILE_DESCRIPTOR_SET`] holds
//! the compiled descriptors, for gRPC server reflection.
//!
//! Building needs no system `protoc`: the build script uses the one vendored by
//! `protoc-bin-vendored`.

/// Generated code of the protobuf package `nhisensor.v1`.
///
/// Message types derive [`prost::Message`]; enums are Rust enums whose values are stored in
/// messages as `i32` (use the generated getters and setters, e.g. [`v1::Event::kind`] and
/// [`v1::Event::set_kind`], to go through the enum type). Kind-specific payloads are the
/// [`v1::event::Payload`] oneof.
pub mod v1 {
    // Generated code: not ours to lint (e.g. prost's markdown clean-up of the .proto
    // comments indents list continuations in a way `clippy::doc_lazy_continuation` rejects).
    // An `allow`, not an `expect`: what fires depends on the comments and the tool versions.
    // Kept to this module so the rest of the crate is linted as usual.
    #![allow(clippy::all)]

    tonic::include_proto!("nhisensor.v1");
}

/// The serialized `google.protobuf.FileDescriptorSet` of `nhisensor/v1/*.proto` and of
/// every file they import (the well-known types included), with source comments: what a
/// gRPC server reflection service needs to describe both services.
pub const FILE_DESCRIPTOR_SET: &[u8] =
    tonic::include_file_descriptor_set!("nhisensor_v1_descriptor");

#[cfg(test)]
mod tests {
    use std::{
        net::SocketAddr,
        pin::Pin,
        sync::{Arc, Mutex},
        time::Duration,
    };

    use prost::Message;
    use tonic::{
        Request, Response, Status, Streaming,
        codegen::tokio_stream::{self, Stream, StreamExt, wrappers::ReceiverStream},
        transport::{Channel, Server, server::TcpIncoming},
    };

    use super::v1::{
        self, Ack, Ancestor, CloseReason, CredChange, CredSyscall, CredentialEndpoint,
        CredentialVar, Credentials, Device, Direction, Dns, DnsAnswer, Errno, Event, EventBatch,
        EventKind, Exec, Exit, FileAccess, FileClose, FileMatch, FileOpen, FilePath, Fork,
        InventoryRequest, InventoryResponse, KernelStats, Loss, LossReason, Namespaces, Network,
        NetworkProtocol, NetworkResult, Process, SensorIdentity, SensorStats, SocketAddress,
        SpoolStats, StringList, SubscribeRequest, UnixConnect, event::Payload,
    };

    fn sensor() -> SensorIdentity {
        SensorIdentity {
            sensor_id: "sensor-0123".into(),
            node_name: "node-a".into(),
            boot_id: "6f1d0c2e-7b7a-4f0e-9d57-1c3c8e9b2a10".into(),
            stream_id: "0b8f6a52-2d0e-4f43-a1f4-8f6f3e1c9d77".into(),
            sensor_version: "0.1.0".into(),
        }
    }

    fn process() -> Process {
        Process {
            key: "9a3f00c1d2e4b5a6".into(),
            pid: 4242,
            tid: 4243,
            ppid: 1,
            parent_key: "0000000000000001".into(),
            start_ns: 12_345_678_901,
            comm: "backup".into(),
            exe: Some(FilePath {
                text: "/usr/bin/backup".into(),
                raw: Vec::new(),
            }),
            argv: Some(StringList {
                values: vec!["backup".into(), "--all".into()],
            }),
            uid: 998,
            gid: 998,
            euid: 998,
            egid: 998,
            suid: 998,
            sgid: 998,
            fsuid: 998,
            fsgid: 998,
            user: Some("backup".into()),
            cap_effective: 0,
            cap_permitted: 0x0000_01ff_ffff_ffff,
            loginuid: None,
            sessionid: Some(7),
            tty: None,
            cgroup_id: 8842,
            cgroup: Some("/system.slice/backup.service".into()),
            ns: Some(Namespaces {
                pid: 4_026_531_836,
                mnt: 4_026_531_841,
                net: 4_026_531_840,
                user: 4_026_531_837,
                uts: 4_026_531_838,
                ipc: 4_026_531_839,
                cgroup: 4_026_531_835,
            }),
            ancestry: vec![Ancestor {
                pid: 1,
                key: "0000000000000001".into(),
                exe: Some(FilePath {
                    text: "/usr/lib/systemd/systemd".into(),
                    raw: Vec::new(),
                }),
            }],
        }
    }

    fn event(sequence: u64, kind: EventKind, payload: Payload) -> Event {
        let mut event = Event {
            sensor: Some(sensor()),
            sequence,
            time: Some(prost_types::Timestamp {
                seconds: 1_795_370_400,
                nanos: 123_456_789,
            }),
            boot_ns: 98_765_432_100 + sequence,
            process: (kind != EventKind::SensorStats).then(process),
            payload: Some(payload),
            ..Event::default()
        };
        event.set_kind(kind);
        event
    }

    fn credentials(uid: u32, caps: u64) -> Credentials {
        Credentials {
            uid,
            gid: uid,
            euid: uid,
            egid: uid,
            suid: uid,
            sgid: uid,
            fsuid: uid,
            fsgid: uid,
            cap_effective: caps,
        }
    }

    /// One event of every kind, each with its payload.
    fn one_of_each() -> Vec<Event> {
        let mut file_open = FileOpen {
            // Not valid UTF-8: the lossy text plus the exact bytes.
            path: Some(FilePath {
                text: "/home/svc/.ssh/id_\u{fffd}".into(),
                raw: b"/home/svc/.ssh/id_\xff".to_vec(),
            }),
            path_truncated: false,
            path_resolved: true,
            dev: Some(Device {
                major: 259,
                minor: 2,
            }),
            ino: 1_311_768,
            mode: Some(0o100_600),
            flags: 0o2_000_000,
            fd: Some(5),
            error: None,
            repeats: Some(3),
            ..FileOpen::default()
        };
        file_open.set_access(FileAccess::Read);
        file_open.matched = vec![FileMatch::NamePrefix.into(), FileMatch::Prefix.into()];

        let failed_open = FileOpen {
            path: Some(FilePath {
                text: "/etc/shadow".into(),
                raw: Vec::new(),
            }),
            path_resolved: false,
            mode: None,
            fd: None,
            error: Some(Errno {
                errno: 13,
                name: "EACCES".into(),
            }),
            matched: vec![FileMatch::Name.into()],
            ..FileOpen::default()
        };

        let mut file_close = FileClose {
            path: Some(FilePath {
                text: "/var/run/secrets/token".into(),
                raw: Vec::new(),
            }),
            fd: 5,
            dev: Some(Device {
                major: 0,
                minor: 42,
            }),
            ino: 77,
            bytes_read: 1_024,
            reads: 2,
            ..FileClose::default()
        };
        file_close.set_reason(CloseReason::Exit);

        let mut connect = Network {
            src: Some(SocketAddress {
                ip: "10.0.0.5".into(),
                port: 51_234,
            }),
            dst: Some(SocketAddress {
                ip: "192.0.2.10".into(),
                port: 443,
            }),
            v4_mapped: false,
            cookie: 0x1234_5678_9abc,
            error: None,
            ..Network::default()
        };
        connect.set_protocol(NetworkProtocol::Tcp);
        connect.set_family(v1::AddressFamily::Ipv4);
        connect.set_direction(Direction::Outbound);
        connect.set_result(NetworkResult::Established);

        let mut refused = connect.clone();
        refused.set_result(NetworkResult::Refused);
        refused.src = None;
        refused.error = Some(Errno {
            errno: 111,
            name: "ECONNREFUSED".into(),
        });

        let mut udp = connect.clone();
        udp.set_protocol(NetworkProtocol::Udp);
        udp.set_family(v1::AddressFamily::Ipv6);
        udp.v4_mapped = true;
        udp.dst = Some(SocketAddress {
            ip: "::ffff:192.0.2.53".into(),
            port: 53,
        });
        udp.set_result(NetworkResult::Sent);

        let mut accept = connect.clone();
        accept.set_direction(Direction::Inbound);
        accept.set_result(NetworkResult::Accepted);

        let mut cred_change = CredChange {
            old: Some(credentials(998, 0)),
            new: Some(credentials(0, 0x0000_01ff_ffff_ffff)),
            ..CredChange::default()
        };
        cred_change.set_syscall(CredSyscall::Setresuid);

        vec![
            event(
                1,
                EventKind::ProcessExec,
                Payload::Exec(Exec {
                    filename: Some(FilePath {
                        text: "./backup.sh".into(),
                        raw: Vec::new(),
                    }),
                    argv: vec!["/bin/sh".into(), "./backup.sh".into()],
                    argv_truncated: true,
                    old_pid: 4242,
                    credential_env: vec![CredentialVar {
                        name: "AWS_SECRET_ACCESS_KEY".into(),
                        fingerprint: "hmac-sha256:00ff".into(),
                        value: None,
                    }],
                    env_truncated: false,
                }),
            ),
            event(
                2,
                EventKind::ProcessFork,
                Payload::Fork(Fork {
                    child_pid: 4250,
                    child_key: "77aa00c1d2e4b5a6".into(),
                }),
            ),
            event(
                3,
                EventKind::ProcessExit,
                Payload::Exit(Exit {
                    status: 9,
                    code: 0,
                    signal: 9,
                }),
            ),
            event(
                4,
                EventKind::ProcessCredChange,
                Payload::CredChange(cred_change),
            ),
            event(5, EventKind::FileOpen, Payload::FileOpen(file_open)),
            event(6, EventKind::FileOpen, Payload::FileOpen(failed_open)),
            event(7, EventKind::FileClose, Payload::FileClose(file_close)),
            event(8, EventKind::NetworkConnect, Payload::Network(connect)),
            event(9, EventKind::NetworkConnect, Payload::Network(refused)),
            event(10, EventKind::NetworkUdpSend, Payload::Network(udp)),
            event(11, EventKind::NetworkAccept, Payload::Network(accept)),
            event(
                12,
                EventKind::SensorStats,
                Payload::Stats(SensorStats {
                    kernel: Some(KernelStats {
                        ringbuf_full: 3,
                        no_scratch: 0,
                        map_full: 1,
                        read_error: 2,
                        emitted: 10_000,
                        opens_seen: 250_000,
                        opens_matched: 40,
                        paths_truncated: 1,
                        udp_deduped: 900,
                        opens_deduped: 120,
                    }),
                    kernel_drops: 6,
                    decoded: 9_994,
                    decode_errors: 0,
                    r#final: true,
                    filtered_in_userspace: 2,
                    orphan_results: 0,
                    processes_tracked: 312,
                    dns_malformed: 2,
                    dns_cache_evicted: 0,
                    spool: Some(SpoolStats {
                        bytes: 4096,
                        unacked: 3,
                        acked: 9,
                        evicted: 0,
                        corrupt: 0,
                    }),
                }),
            ),
            event(
                13,
                EventKind::NetworkUnixConnect,
                Payload::Unix(UnixConnect {
                    path: Some(FilePath {
                        text: "/run/spire/sockets/agent.sock".into(),
                        raw: Vec::new(),
                    }),
                    r#abstract: false,
                    result: "connected".into(),
                    error: None,
                    endpoint: Some(CredentialEndpoint {
                        kind: "spiffe_workload_api".into(),
                        service: "spire_agent".into(),
                    }),
                }),
            ),
            event(
                14,
                EventKind::SensorLoss,
                Payload::Loss(Loss {
                    reason: LossReason::SpoolFull as i32,
                    first_sequence: 14,
                    last_sequence: 20,
                    count: 7,
                }),
            ),
            event(
                15,
                EventKind::Finding,
                Payload::Finding(crate::v1::Finding {
                    rule_id: "NHI-D001".into(),
                    title: "Credential of another workload read".into(),
                    severity: "high".into(),
                    owasp: vec!["NHI2".into()],
                    mitre_technique_id: "T1552.001".into(),
                    mitre_technique: "Unsecured Credentials: Credentials In Files".into(),
                    summary: "cat (pod:b) read a credential of pod a".into(),
                    workload_key: "pod:b".into(),
                    evidence: vec![crate::v1::FindingEvidence {
                        kind: "file.open".into(),
                        path: Some("/var/lib/kubelet/pods/a/volumes/x/token".into()),
                        ..Default::default()
                    }],
                }),
            ),
            event(
                16,
                EventKind::NetworkDns,
                Payload::Dns(Dns {
                    query: "api.example.test".into(),
                    query_type: "A".into(),
                    rcode: "NOERROR".into(),
                    id: 4660,
                    answers: vec![DnsAnswer {
                        name: "api.example.test".into(),
                        r#type: "A".into(),
                        data: "192.0.2.10".into(),
                        ttl: 60,
                    }],
                    resolver: Some(SocketAddress {
                        ip: "127.0.0.53".into(),
                        port: 53,
                    }),
                    client: None,
                    cgroup_id: 42,
                    truncated: false,
                }),
            ),
        ]
    }

    #[test]
    fn every_payload_round_trips() {
        let events = one_of_each();
        let mut payloads_seen = std::collections::BTreeSet::new();
        for event in &events {
            let bytes = event.encode_to_vec();
            assert_eq!(bytes.len(), event.encoded_len());
            let decoded = Event::decode(bytes.as_slice()).expect("decodes");
            assert_eq!(&decoded, event);
            // The enum accessors see the same values as the raw i32 fields.
            assert_eq!(decoded.kind(), event.kind());
            let name = match decoded.payload.as_ref().expect("payload") {
                Payload::Exec(_) => "exec",
                Payload::Fork(_) => "fork",
                Payload::Exit(_) => "exit",
                Payload::CredChange(_) => "cred_change",
                Payload::FileOpen(_) => "file_open",
                Payload::FileClose(_) => "file_close",
                Payload::Network(_) => "network",
                Payload::Stats(_) => "stats",
                Payload::Unix(_) => "unix",
                Payload::Loss(_) => "loss",
                Payload::Finding(_) => "finding",
                Payload::Dns(_) => "dns",
            };
            payloads_seen.insert(name);
        }
        assert_eq!(
            payloads_seen.len(),
            12,
            "one event per payload: {payloads_seen:?}"
        );

        // A whole batch round-trips as well.
        let batch = EventBatch {
            sensor: Some(sensor()),
            first_sequence: 1,
            events,
        };
        let decoded = EventBatch::decode(batch.encode_to_vec().as_slice()).expect("decodes");
        assert_eq!(decoded, batch);
    }

    #[test]
    fn enum_names_match_the_proto() {
        assert_eq!(EventKind::FileOpen.as_str_name(), "EVENT_KIND_FILE_OPEN");
        assert_eq!(
            EventKind::from_str_name("EVENT_KIND_SENSOR_STATS"),
            Some(EventKind::SensorStats)
        );
        assert_eq!(EventKind::default(), EventKind::Unspecified);
        // An enum value this build does not know survives decoding as its number, and the
        // accessor falls back to UNSPECIFIED instead of failing.
        let event = Event {
            kind: 99,
            ..Event::default()
        };
        let decoded = Event::decode(event.encode_to_vec().as_slice()).expect("decodes");
        assert_eq!(decoded.kind, 99);
        assert_eq!(decoded.kind(), EventKind::Unspecified);
    }

    #[test]
    fn truncated_input_is_an_error_not_a_panic() {
        for event in one_of_each() {
            let bytes = event.encode_to_vec();
            // Cutting the last byte always leaves an incomplete field behind.
            assert!(
                Event::decode(&bytes[..bytes.len() - 1]).is_err(),
                "{:?}",
                event.kind()
            );
            // No prefix panics; a prefix that ends on a field boundary may decode (to a
            // different event), all others fail.
            let mut errors = 0;
            for len in 0..bytes.len() {
                match Event::decode(&bytes[..len]) {
                    Ok(partial) => assert_ne!(partial, event),
                    Err(_) => errors += 1,
                }
            }
            assert!(errors > 0);
        }
        // Garbage fails too: an invalid wire type, a length running past the end.
        assert!(Event::decode(&[0xff, 0xff, 0xff][..]).is_err());
        assert!(Event::decode(&[0x32, 0x7f, 0x00][..]).is_err());
        assert!(EventBatch::decode(&[0x1a, 0x05, 0x08][..]).is_err());
    }

    #[test]
    fn descriptor_set_describes_both_services() {
        let set =
            prost_types::FileDescriptorSet::decode(crate::FILE_DESCRIPTOR_SET).expect("decodes");
        let names: Vec<&str> = set.file.iter().map(|f| f.name()).collect();
        for expected in [
            "nhisensor/v1/events.proto",
            "nhisensor/v1/collector.proto",
            // Imports are included, so reflection clients can resolve Event.time.
            "google/protobuf/timestamp.proto",
        ] {
            assert!(
                names.contains(&expected),
                "{expected} missing from {names:?}"
            );
        }

        let collector_file = set
            .file
            .iter()
            .find(|f| f.name() == "nhisensor/v1/collector.proto")
            .expect("collector.proto");
        assert_eq!(collector_file.package(), "nhisensor.v1");
        let service = |name: &str| {
            collector_file
                .service
                .iter()
                .find(|s| s.name() == name)
                .unwrap_or_else(|| panic!("service {name} missing"))
        };

        let ship = &service("Collector").method[0];
        assert_eq!(ship.name(), "Ship");
        assert_eq!(ship.input_type(), ".nhisensor.v1.EventBatch");
        assert_eq!(ship.output_type(), ".nhisensor.v1.Ack");
        assert!(ship.client_streaming() && ship.server_streaming());

        let subscribe = &service("Subscriptions").method[0];
        assert_eq!(subscribe.name(), "Subscribe");
        assert_eq!(subscribe.input_type(), ".nhisensor.v1.SubscribeRequest");
        assert_eq!(subscribe.output_type(), ".nhisensor.v1.Event");
        assert!(!subscribe.client_streaming() && subscribe.server_streaming());

        // The generated servers agree on the fully-qualified names.
        assert_eq!(v1::collector_server::SERVICE_NAME, "nhisensor.v1.Collector");
        assert_eq!(
            v1::subscriptions_server::SERVICE_NAME,
            "nhisensor.v1.Subscriptions"
        );

        // Source comments are kept (reflection clients show them).
        assert!(
            set.file
                .iter()
                .all(|f| !f.name().starts_with("nhisensor/") || f.source_code_info.is_some())
        );
    }

    /// A subscriber of [`MemoryCollector`]: its kind filter and where its events go.
    type Subscriber = (Vec<i32>, tokio::sync::mpsc::Sender<Result<Event, Status>>);

    /// A minimal in-memory collector: acknowledges every batch at once and forwards events
    /// to subscribers whose kind filter matches.
    #[derive(Default)]
    struct MemoryCollector {
        subscribers: Mutex<Vec<Subscriber>>,
    }

    type BoxStream<T> = Pin<Box<dyn Stream<Item = Result<T, Status>> + Send>>;

    #[tonic::async_trait]
    impl v1::collector_server::Collector for Arc<MemoryCollector> {
        type ShipStream = BoxStream<Ack>;

        async fn ship(
            &self,
            request: Request<Streaming<EventBatch>>,
        ) -> Result<Response<Self::ShipStream>, Status> {
            let mut batches = request.into_inner();
            let (acks, rx) = tokio::sync::mpsc::channel(16);
            let this = Arc::clone(self);
            tokio::spawn(async move {
                let mut durable = 0;
                while let Some(batch) = batches.next().await {
                    let batch = match batch {
                        Ok(batch) => batch,
                        Err(status) => {
                            let _ = acks.send(Err(status)).await;
                            return;
                        }
                    };
                    let Some(sensor) = batch.sensor else {
                        let _ = acks
                            .send(Err(Status::invalid_argument("batch without sensor")))
                            .await;
                        return;
                    };
                    for (offset, mut event) in (0u64..).zip(batch.events) {
                        let sequence = batch.first_sequence + offset;
                        if sequence <= durable {
                            continue; // A duplicate: already stored.
                        }
                        event.sensor.get_or_insert_with(|| sensor.clone());
                        event.sequence = sequence;
                        durable = sequence;
                        this.publish(&event).await;
                    }
                    if acks
                        .send(Ok(Ack {
                            durable_sequence: durable,
                        }))
                        .await
                        .is_err()
                    {
                        return;
                    }
                }
            });
            Ok(Response::new(Box::pin(ReceiverStream::new(rx))))
        }

        async fn inventory(
            &self,
            _request: Request<InventoryRequest>,
        ) -> Result<Response<InventoryResponse>, Status> {
            Err(Status::unimplemented("no store in this test collector"))
        }
    }

    impl MemoryCollector {
        async fn publish(&self, event: &Event) {
            let targets: Vec<_> = self
                .subscribers
                .lock()
                .expect("not poisoned")
                .iter()
                .filter(|(kinds, _)| kinds.is_empty() || kinds.contains(&event.kind))
                .map(|(_, tx)| tx.clone())
                .collect();
            for tx in targets {
                let _ = tx.send(Ok(event.clone())).await;
            }
        }
    }

    #[tonic::async_trait]
    impl v1::subscriptions_server::Subscriptions for Arc<MemoryCollector> {
        type SubscribeStream = BoxStream<Event>;

        async fn subscribe(
            &self,
            request: Request<SubscribeRequest>,
        ) -> Result<Response<Self::SubscribeStream>, Status> {
            let filter = request.into_inner();
            if filter.kinds.contains(&i32::from(EventKind::Unspecified)) {
                return Err(Status::invalid_argument("EVENT_KIND_UNSPECIFIED in kinds"));
            }
            let (tx, rx) = tokio::sync::mpsc::channel(64);
            self.subscribers
                .lock()
                .expect("not poisoned")
                .push((filter.kinds, tx));
            Ok(Response::new(Box::pin(ReceiverStream::new(rx))))
        }
    }

    async fn serve() -> SocketAddr {
        let incoming = TcpIncoming::bind("127.0.0.1:0".parse().expect("address")).expect("binds");
        let addr = incoming.local_addr().expect("local address");
        let collector = Arc::new(MemoryCollector::default());
        tokio::spawn(
            Server::builder()
                .add_service(v1::collector_server::CollectorServer::new(Arc::clone(
                    &collector,
                )))
                .add_service(v1::subscriptions_server::SubscriptionsServer::new(
                    collector,
                ))
                .serve_with_incoming(incoming),
        );
        addr
    }

    #[tokio::test]
    async fn ship_and_subscribe_over_grpc() {
        let addr = serve().await;
        let channel = Channel::from_shared(format!("http://{addr}"))
            .expect("uri")
            .connect_timeout(Duration::from_secs(5))
            .connect()
            .await
            .expect("connects");

        // Subscribe to file opens only; the response arrives once the server registered us.
        let mut subscription = v1::subscriptions_client::SubscriptionsClient::new(channel.clone())
            .subscribe(SubscribeRequest {
                kinds: vec![EventKind::FileOpen.into()],
                ..SubscribeRequest::default()
            })
            .await
            .expect("subscribes")
            .into_inner();

        // An invalid filter is refused.
        let refused = v1::subscriptions_client::SubscriptionsClient::new(channel.clone())
            .subscribe(SubscribeRequest {
                kinds: vec![EventKind::Unspecified.into()],
                ..SubscribeRequest::default()
            })
            .await
            .expect_err("refused");
        assert_eq!(refused.code(), tonic::Code::InvalidArgument);

        // Ship: an empty batch to learn the resume point, then all events (without their
        // per-event sensor: the batch carries it), then the last three again, as after a
        // reconnect, to check they are not stored twice.
        let mut events = one_of_each();
        for event in &mut events {
            event.sensor = None;
        }
        let resend = events[events.len() - 3..].to_vec();
        let last = events.len() as u64;
        let batches = vec![
            EventBatch {
                sensor: Some(sensor()),
                first_sequence: 1,
                events: Vec::new(),
            },
            EventBatch {
                sensor: Some(sensor()),
                first_sequence: 1,
                events,
            },
            EventBatch {
                sensor: Some(sensor()),
                first_sequence: last - 2,
                events: resend,
            },
        ];
        let mut acks = v1::collector_client::CollectorClient::new(channel)
            .ship(tokio_stream::iter(batches))
            .await
            .expect("ships")
            .into_inner();
        let mut durable = Vec::new();
        while let Some(ack) = acks.next().await {
            durable.push(ack.expect("ack").durable_sequence);
        }
        assert_eq!(durable, [0, last, last]);

        // The subscriber saw exactly the two file opens, with the batch's sensor filled in.
        let expected: Vec<Event> = one_of_each()
            .into_iter()
            .filter(|e| e.kind() == EventKind::FileOpen)
            .collect();
        assert_eq!(expected.len(), 2);
        for want in expected {
            let got = tokio::time::timeout(Duration::from_secs(5), subscription.next())
                .await
                .expect("in time")
                .expect("stream open")
                .expect("an event");
            assert_eq!(got, want);
        }
    }
}
