//! Real-kernel tests of the identity inventory (`nhi-sensor inventory`).
//!
//! ```text
//! cargo build --release -p nhi-sensor
//! sudo -E cargo test -p nhi-sensor-tests --test inventory -- --test-threads=1
//! ```
//!
//! Real processes in real cgroup v2 groups (named like docker containers, so each is its own
//! workload and identity) read credential files the test writes; the sensor stores what it
//! saw in its embedded store and the test checks the inventory the CLI prints from it. The DNS
//! test runs its own resolver on a loopback address and talks only to loopback. Every cgroup
//! and file is removed on drop, also when an assertion fails.

use std::net::{Ipv4Addr, TcpListener, UdpSocket};
use std::path::Path;
use std::sync::MutexGuard;
use std::time::{Duration, Instant};

use nhi_sensor_tests::{
    CgroupGuard, Sensor, TempDir, WAIT, get, get_str, is_kind_pid, run_with_timeout, sensor_bin,
    shipping, spawn_actor,
};
use serde_json::Value;

fn setup(test: &str) -> Option<MutexGuard<'static, ()>> {
    nhi_sensor_tests::init_actor_bin!();
    nhi_sensor_tests::serial_root_test(test)
}

fn s(p: &Path) -> &str {
    p.to_str().expect("UTF-8 test path")
}

/// A 64-hex container id, distinct per test run and seed.
fn container_id(seed: u32) -> String {
    format!("{seed:04x}{:08x}{:052x}", std::process::id(), 0)
}

fn aws_ini(key_id: &str, seed: &str) -> String {
    format!(
        "[default]\naws_access_key_id = {key_id}\naws_secret_access_key = \
         wJalrXUtnFEMI/K7MDENG/{seed}xRfiCYINVKEY{}\n",
        std::process::id()
    )
}

fn strings(v: &Value) -> Vec<&str> {
    v.as_array()
        .unwrap_or_else(|| panic!("not an array: {v}"))
        .iter()
        .map(|x| x.as_str().expect("string"))
        .collect()
}

fn inventory(store: &Path) -> Value {
    let mut cmd = std::process::Command::new(sensor_bin());
    cmd.args(["inventory", "--store", s(store), "--format", "json"]);
    let out = run_with_timeout(cmd, WAIT);
    assert!(out.status.success(), "inventory failed: {}", out.stderr);
    serde_json::from_str(&out.stdout)
        .unwrap_or_else(|e| panic!("inventory JSON: {e}: {}", out.stdout))
}

/// Three containers read one shared credential file, one of them also a second credential
/// and connects to a local listener: the inventory lists the three identities, the two
/// credentials with their users, the sharing flag only on the shared one, and the
/// destination.
#[test]
fn three_workloads_share_a_credential_one_uses_two() {
    let Some(_g) = setup("three_workloads_share_a_credential_one_uses_two") else {
        return;
    };
    let d = TempDir::new("inv");
    d.mkdir("shared");
    d.mkdir("own");
    let shared = d.write(
        "shared/credentials",
        aws_ini("AKIAINVSHARED0000001", "s").as_bytes(),
    );
    let own = d.write(
        "own/credentials",
        aws_ini("AKIAINVOWN000000002", "o").as_bytes(),
    );
    let listener = TcpListener::bind("127.0.0.1:0").expect("listen");
    let dest = listener.local_addr().unwrap();
    let store = d.join("store");
    let mut cgroups = CgroupGuard::new();
    let ids: Vec<String> = (1..=3).map(container_id).collect();
    let groups: Vec<_> = ids
        .iter()
        .map(|id| cgroups.create(&format!("system.slice/docker-{id}.scope")))
        .collect();

    let sensor = Sensor::start(&[
        "run",
        "--format",
        "json",
        "--fingerprint-key-file",
        s(&d.join("fingerprint.key")),
        "--spool",
        s(&d.join("spool")),
        "--store",
        s(&store),
    ]);
    let mut pids = Vec::new();
    for (i, g) in groups.iter().enumerate() {
        let mut args = vec!["--join-cgroup", s(g), "--open", s(&shared), "--read", "8"];
        let dest_s = dest.to_string();
        if i == 0 {
            args.extend(["--open", s(&own), "--read", "8", "--connect-tcp"]);
            args.push(&dest_s);
        }
        let mut a = spawn_actor(&args);
        a.expect_step("start");
        a.expect_ok("join-cgroup");
        for step in a.rest() {
            assert!(step.get("errno").is_none(), "actor step failed: {step}");
        }
        a.wait();
        pids.push(a.pid());
    }
    for &pid in &pids {
        sensor.wait_for("the shared credential's open", WAIT, |e| {
            is_kind_pid(e, "file.open", pid)
                && get_str(e, "file.path") == Some(s(&shared))
                && get_str(e, "credential.fingerprint").is_some()
        });
    }
    sensor.wait_for("the connect", WAIT, |e| {
        is_kind_pid(e, "network.connect", pids[0])
    });
    let stopped = sensor.stop();
    stopped.assert_clean();

    let inv = inventory(&store);
    let fp_of = |path: &Path| {
        stopped
            .find(|e| get_str(e, "file.path") == Some(s(path)))
            .and_then(|e| get_str(e, "credential.fingerprint").map(str::to_string))
            .expect("fingerprint")
    };
    let (fp_shared, fp_own) = (fp_of(&shared), fp_of(&own));
    let identity_of = |i: usize| format!("docker:{}", &ids[i][..12]);
    let workload_of = |i: usize| format!("container:docker:{}", ids[i]);

    let creds = inv["credentials"].as_array().expect("credentials");
    let cred = |fp: &str| {
        creds
            .iter()
            .find(|c| c["fingerprint"] == fp)
            .unwrap_or_else(|| panic!("credential {fp} missing: {inv:#}"))
    };
    let c = cred(&fp_shared);
    assert_eq!(c["kind"], "credentials_file", "{c}");
    assert_eq!(c["shared"], true, "{c}");
    assert_eq!(c["orphan_candidate"], false, "{c}");
    assert_eq!(c["never_rotated"], false, "{c}");
    assert_eq!(c["uses"], 3, "{c}");
    let mut want: Vec<String> = (0..3).map(workload_of).collect();
    want.sort();
    assert_eq!(strings(&c["workloads"]), want, "{c}");
    let mut want: Vec<String> = (0..3).map(identity_of).collect();
    want.sort();
    assert_eq!(strings(&c["identities"]), want, "{c}");
    assert_eq!(strings(&c["paths"]), vec![s(&shared)], "{c}");
    let open = stopped
        .find(|e| get_str(e, "file.path") == Some(s(&shared)))
        .unwrap();
    assert_eq!(c["format"], open["credential"]["format"], "{c}");
    let c = cred(&fp_own);
    assert_eq!(c["shared"], false, "{c}");
    assert_eq!(strings(&c["workloads"]), vec![workload_of(0)], "{c}");

    let idents = inv["identities"].as_array().expect("identities");
    for i in 0..3 {
        let id = identity_of(i);
        let e = idents
            .iter()
            .find(|x| x["id"] == id.as_str())
            .unwrap_or_else(|| panic!("identity {id} missing: {inv:#}"));
        assert_eq!(e["kind"], "container", "{e}");
        assert_eq!(strings(&e["workloads"]), vec![workload_of(i)], "{e}");
        assert!(
            strings(&e["binaries"])
                .iter()
                .any(|b| b.ends_with("/nhi-actor")),
            "{e}"
        );
        assert_eq!(strings(&e["users"]), vec!["root"], "{e}");
        let used: Vec<&str> = e["credentials"]
            .as_array()
            .unwrap()
            .iter()
            .map(|c| c["fingerprint"].as_str().unwrap())
            .collect();
        let mut want = vec![fp_shared.as_str()];
        if i == 0 {
            want.push(&fp_own);
        }
        want.sort();
        assert_eq!(used, want, "{e}");
        let dests = e["destinations"].as_array().unwrap();
        if i == 0 {
            assert!(
                dests.iter().any(|x| x["ip"] == "127.0.0.1"
                    && x["port"] == dest.port()
                    && x["protocol"] == "tcp"),
                "{e}"
            );
        } else {
            assert!(dests.is_empty(), "{e}");
        }
    }
    // Sorted deterministically.
    let order: Vec<&str> = idents.iter().map(|x| x["id"].as_str().unwrap()).collect();
    let mut sorted = order.clone();
    sorted.sort();
    assert_eq!(order, sorted);
    drop(listener);
}

/// A tiny DNS responder on 127.0.0.153:53 (a loopback address systemd-resolved does not use):
/// `api-*` names get a CNAME to `edge-*` and an A record with `addr`; `loop-*` names get an
/// answer whose owner name is a compression pointer to itself; `short-*` names a response cut
/// inside its answer. The thread ends when the test drops the returned socket's clone.
struct Responder {
    socket: UdpSocket,
    thread: Option<std::thread::JoinHandle<()>>,
}

const RESOLVER: &str = "127.0.0.153:53";

impl Responder {
    fn start(addr: Ipv4Addr) -> Responder {
        let socket = UdpSocket::bind(RESOLVER).expect("bind the test resolver on port 53");
        socket
            .set_read_timeout(Some(Duration::from_millis(200)))
            .unwrap();
        let s = socket.try_clone().unwrap();
        let thread = std::thread::spawn(move || {
            let mut buf = [0u8; 512];
            let deadline = Instant::now() + WAIT;
            while Instant::now() < deadline {
                let Ok((n, peer)) = s.recv_from(&mut buf) else {
                    if s.local_addr().is_err() {
                        return;
                    }
                    continue;
                };
                if n == 1 {
                    return; // the stop byte
                }
                let _ = s.send_to(&answer(&buf[..n], addr), peer);
            }
        });
        Responder {
            socket,
            thread: Some(thread),
        }
    }
}

impl Drop for Responder {
    fn drop(&mut self) {
        let _ = self.socket.send_to(&[0], RESOLVER);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// The response to `query` (id and question echoed).
fn answer(query: &[u8], addr: Ipv4Addr) -> Vec<u8> {
    let qend = 12 + query[12..].iter().position(|&b| b == 0).unwrap() + 1 + 4;
    let first_label = &query[13..13 + query[12] as usize];
    let mut m = query[..2].to_vec();
    m.extend_from_slice(&[0x81, 0x80, 0, 1]);
    let rr = |m: &mut Vec<u8>, owner: &[u8], rtype: u16, rdata: &[u8]| {
        m.extend_from_slice(owner);
        m.extend_from_slice(&rtype.to_be_bytes());
        m.extend_from_slice(&[0, 1, 0, 0, 0, 60]);
        m.extend_from_slice(&(rdata.len() as u16).to_be_bytes());
        m.extend_from_slice(rdata);
    };
    if first_label.starts_with(b"api-") {
        m.extend_from_slice(&[0, 2, 0, 0, 0, 0]);
        m.extend_from_slice(&query[12..qend]);
        // CNAME to "edge-<rest of the first label>" + the question's other labels.
        let mut target = vec![first_label.len() as u8 + 1];
        target.extend_from_slice(b"edge-");
        target.extend_from_slice(&first_label[4..]);
        let rest_at = 13 + first_label.len();
        target.extend_from_slice(&[0xc0, rest_at as u8]);
        let cname_rdata_at = m.len() + 12;
        rr(&mut m, &[0xc0, 12], 5, &target);
        rr(&mut m, &[0xc0, cname_rdata_at as u8], 1, &addr.octets());
    } else if first_label.starts_with(b"loop-") {
        m.extend_from_slice(&[0, 1, 0, 0, 0, 0]);
        m.extend_from_slice(&query[12..qend]);
        let here = m.len();
        rr(&mut m, &[0xc0, here as u8], 1, &addr.octets());
    } else {
        m.extend_from_slice(&[0, 1, 0, 0, 0, 0]);
        m.extend_from_slice(&query[12..qend]);
        rr(&mut m, &[0xc0, 12], 1, &addr.octets());
        m.truncate(m.len() - 3);
    }
    m
}

/// A process in its own (container) cgroup resolves a made-up name through the test's
/// resolver and connects to the answered address: the sensor reports the DNS response (query,
/// CNAME chain, address, resolver, workload), the connect carries the names, and the
/// inventory's destination shows them. Hostile responses (a compression loop, a cut answer)
/// are counted and skipped, and the sensor goes on.
#[test]
fn dns_answers_name_later_connects() {
    let Some(_g) = setup("dns_answers_name_later_connects") else {
        return;
    };
    let d = TempDir::new("dns");
    let target = Ipv4Addr::new(127, 0, 0, 77);
    let listener = TcpListener::bind((target, 0)).expect("listen on 127.0.0.77");
    let dest = listener.local_addr().unwrap();
    let responder = Responder::start(target);
    let store = d.join("store");
    let mut cgroups = CgroupGuard::new();
    let cid = container_id(9);
    let group = cgroups.create(&format!("system.slice/docker-{cid}.scope"));
    let sensor = Sensor::start(&[
        "run",
        "--format",
        "json",
        "--stats-interval",
        "1",
        "--fingerprint-key-file",
        s(&d.join("fingerprint.key")),
        "--spool",
        s(&d.join("spool")),
        "--store",
        s(&store),
    ]);
    let tag = format!("{:x}", std::process::id());
    let (name, edge) = (
        format!("api-{tag}.nhi.test"),
        format!("edge-{tag}.nhi.test"),
    );
    let dest_s = dest.to_string();
    let mut a = spawn_actor(&[
        "--join-cgroup",
        s(&group),
        "--dns-query",
        RESOLVER,
        &format!("loop-{tag}.nhi.test"),
        "--dns-query",
        RESOLVER,
        &format!("short-{tag}.nhi.test"),
        "--dns-query",
        RESOLVER,
        &name,
        "--connect-tcp",
        &dest_s,
    ]);
    let pid = a.pid();
    a.expect_step("start");
    for step in a.rest() {
        assert!(step.get("errno").is_none(), "actor step failed: {step}");
    }
    a.wait();

    let dns = sensor.wait_for("the network.dns event", WAIT, |e| {
        nhi_sensor_tests::is_kind(e, "network.dns")
            && get_str(e, "dns.query") == Some(name.as_str())
    });
    assert_eq!(get_str(&dns, "dns.query_type"), Some("A"), "{dns}");
    assert_eq!(get_str(&dns, "dns.rcode"), Some("NOERROR"), "{dns}");
    assert_eq!(
        get_str(&dns, "dns.resolver.ip"),
        Some("127.0.0.153"),
        "{dns}"
    );
    assert_eq!(get(&dns, "dns.resolver.port").as_u64(), Some(53), "{dns}");
    assert_eq!(get_str(&dns, "workload.kind"), Some("container"), "{dns}");
    assert_eq!(
        get_str(&dns, "workload.container_id"),
        Some(cid.as_str()),
        "{dns}"
    );
    assert!(dns.get("process").is_none(), "{dns}");
    let answers = get(&dns, "dns.answers");
    assert_eq!(answers[0]["type"], "CNAME", "{dns}");
    assert_eq!(answers[0]["data"], edge.as_str(), "{dns}");
    assert_eq!(answers[1]["type"], "A", "{dns}");
    assert_eq!(answers[1]["name"], edge.as_str(), "{dns}");
    assert_eq!(answers[1]["data"], "127.0.0.77", "{dns}");
    assert_eq!(answers[1]["ttl"], 60, "{dns}");

    let connect = sensor.wait_for("the named connect", WAIT, |e| {
        is_kind_pid(e, "network.connect", pid)
            && get(e, "network.dst.port").as_u64() == Some(u64::from(dest.port()))
    });
    assert_eq!(
        get(&connect, "network.dst_dns_names"),
        &serde_json::json!([name, edge]),
        "{connect}"
    );
    // The hostile responses were counted, not reported.
    sensor.wait_for("stats counting the malformed responses", WAIT, |e| {
        nhi_sensor_tests::is_kind(e, "sensor.stats")
            && get(e, "stats.dns_malformed").as_u64() >= Some(2)
    });
    let stopped = sensor.stop();
    stopped.assert_clean();
    assert!(
        stopped
            .find(|e| get_str(e, "dns.query").is_some_and(|q| q.starts_with("loop-")))
            .is_none()
    );
    drop(responder);

    let inv = inventory(&store);
    let id = format!("docker:{}", &cid[..12]);
    let ident = inv["identities"]
        .as_array()
        .unwrap()
        .iter()
        .find(|x| x["id"] == id.as_str())
        .unwrap_or_else(|| panic!("identity {id} missing: {inv:#}"));
    let dest_entry = ident["destinations"]
        .as_array()
        .unwrap()
        .iter()
        .find(|x| x["ip"] == "127.0.0.77" && x["port"] == dest.port())
        .unwrap_or_else(|| panic!("destination missing: {ident:#}"));
    let mut want = vec![name.as_str(), edge.as_str()];
    want.sort();
    assert_eq!(strings(&dest_entry["dns_names"]), want, "{dest_entry}");

    // The stored events, DNS Activity (4003) and the named connect among them, are valid
    // OCSF 1.8.0.
    let ocsf = shipping::query(&store, &["--format", "json", "--limit", "0"]);
    let dns_line = ocsf
        .lines()
        .map(|l| serde_json::from_str::<Value>(l).expect("OCSF JSON"))
        .find(|o| o["class_uid"] == 4003 && o["query"]["hostname"] == name.as_str())
        .unwrap_or_else(|| panic!("no DNS Activity for {name}"));
    assert_eq!(dns_line["answers"][1]["rdata"], "127.0.0.77", "{dns_line}");
    assert_eq!(dns_line["rcode_id"], 0, "{dns_line}");
    let file = d.write("ocsf.jsonl", ocsf.as_bytes());
    let mut cmd = std::process::Command::new(shipping::python());
    cmd.arg(nhi_sensor_tests::workspace_root().join("tests/py/validate_ocsf.py"))
        .arg(&file);
    let out = run_with_timeout(cmd, Duration::from_secs(120));
    assert!(
        out.status.success(),
        "OCSF validation failed:\n{}\n{}",
        out.stdout,
        out.stderr
    );
    drop(listener);
}
