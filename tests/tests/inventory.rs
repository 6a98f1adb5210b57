//! Real-kernel tests of the identity inventory (`nhi-sensor inventory`).
//!
//! ```text
//! cargo build --release -p nhi-sensor
//! sudo -E cargo test -p nhi-sensor-tests --test inventory -- --test-threads=1
//! ```
//!
//! Real processes in real cgroup v2 groups (named like docker containers, so each is its own
//! workload and identity) read credential files the test writes; the sensor stores what it
//! saw in its embedded store and the test checks the inventory the CLI prints from it. Every
//! cgroup and file is removed on drop, also when an assertion fails.

use std::net::TcpListener;
use std::path::Path;
use std::sync::MutexGuard;

use nhi_sensor_tests::{
    CgroupGuard, Sensor, TempDir, WAIT, get_str, is_kind_pid, run_with_timeout, sensor_bin,
    spawn_actor,
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
