//! Real-kernel tests of the detection rules (README, "Detections"): for every rule, real
//! processes (the test actor, in real cgroup v2 groups named like the kubelet's pods) do the
//! thing, and a benign look-alike that must not fire does something close to it first. The
//! findings are read from `nhi-sensor run --format json` and checked for their rule, mapping
//! and evidence.
//!
//! ```text
//! cargo build --release -p nhi-sensor
//! sudo -E cargo test -p nhi-sensor-tests --test detections -- --test-threads=1
//! ```
//!
//! Cgroups, network namespaces and files are removed on drop, also when an assertion fails.

use std::os::unix::process::CommandExt as _;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::MutexGuard;
use std::time::Duration;

use nhi_sensor_tests::cgroups::CgroupGuard;
use nhi_sensor_tests::pods::{kubelet_pod, mint_jwt, projected_claims};
use nhi_sensor_tests::{
    Actor, Sensor, TempDir, WAIT, actor_bin, actor_command, get, get_str, is_kind, spawn_actor,
};
use serde_json::Value;

fn setup(test: &str) -> Option<MutexGuard<'static, ()>> {
    nhi_sensor_tests::init_actor_bin!();
    nhi_sensor_tests::serial_root_test(test)
}

fn s(p: &Path) -> &str {
    p.to_str().expect("UTF-8 test path")
}

/// A pod UID unique to this test run.
fn pod_uid(n: u8) -> String {
    format!(
        "{n:02x}d0c0de-0000-4a5b-8c6d-{:012x}",
        u64::from(std::process::id())
    )
}

/// One test's world: a temp dir (kubelet root, store, fingerprint key, fixtures) and its
/// cgroups.
struct World {
    d: TempDir,
    cgroups: CgroupGuard,
}

impl World {
    fn new(tag: &str) -> World {
        let d = TempDir::new(tag);
        std::fs::create_dir_all(d.join("kubelet/pods")).unwrap();
        World {
            d,
            cgroups: CgroupGuard::new(),
        }
    }

    fn kubelet(&self) -> PathBuf {
        self.d.join("kubelet")
    }

    /// A pod's container cgroup (cgroupfs driver layout).
    fn pod(&mut self, uid: &str) -> PathBuf {
        let cid = format!("{:0>64}", uid.replace('-', ""));
        self.cgroups
            .create(&format!("kubepods/besteffort/pod{uid}/{cid}"))
    }

    /// `run --format json` with this world's kubelet root, store and key, `[detections]` from
    /// `detections` (TOML lines), and `--watch` on the fixtures.
    fn sensor(&self, detections: &str) -> Sensor {
        let config = self.d.join("config.toml");
        std::fs::write(&config, format!("[detections]\n{detections}\n")).unwrap();
        std::fs::create_dir_all(self.d.join("files")).unwrap();
        Sensor::start(&[
            "run",
            "--format",
            "json",
            "--config",
            s(&config),
            "--kubelet-root",
            s(&self.kubelet()),
            "--fingerprint-key-file",
            s(&self.d.join("fingerprint.key")),
            "--store",
            s(&self.d.join("store")),
            "--spool",
            s(&self.d.join("spool")),
            "--watch",
            &format!("{}/", s(&self.d.join("files"))),
            "--ocsf-out",
            s(&self.d.join("ocsf.jsonl")),
        ])
    }

    /// Stops the sensor (clean exit, JSON-only stdout), then checks the embedded collector's
    /// OCSF output: the findings of `rule` are Detection Findings (2004) naming the rule, and
    /// they validate against the published OCSF schema.
    fn stop(&self, sensor: Sensor, rule: &str) {
        let stopped = sensor.stop();
        stopped.assert_clean();
        let file = self.d.join("ocsf.jsonl");
        // The fixtures' secret keys (see `aws`) must appear nowhere: not in events, findings,
        // logs or the OCSF output.
        let ocsf = std::fs::read_to_string(&file).unwrap_or_default();
        let texts = stopped
            .events
            .iter()
            .map(Value::to_string)
            .chain(stopped.stderr.iter().cloned())
            .chain(std::iter::once(ocsf));
        for t in texts {
            assert!(!t.contains(SECRET_PREFIX), "a fixture secret leaked: {t}");
        }
        let findings: Vec<Value> = nhi_sensor_tests::shipping::ocsf_lines(&file)
            .into_iter()
            .filter(|l| l["class_uid"] == 2004)
            .collect();
        assert!(
            findings
                .iter()
                .any(|f| f["finding_info"]["analytic"]["uid"] == rule),
            "no OCSF Detection Finding for {rule} in {}",
            file.display()
        );
        for f in &findings {
            assert_eq!(f["type_uid"], 200_401, "{f}");
            assert!(
                f["finding_info"]["attacks"][0]["technique"]["uid"].is_string(),
                "{f}"
            );
        }
        let only = self.d.join("findings.ocsf.jsonl");
        let text: String = findings.iter().map(|f| format!("{f}\n")).collect();
        std::fs::write(&only, text).unwrap();
        let mut cmd = Command::new(nhi_sensor_tests::shipping::python());
        cmd.arg(nhi_sensor_tests::workspace_root().join("tests/py/validate_ocsf.py"))
            .arg(&only);
        let out = nhi_sensor_tests::run_with_timeout(cmd, Duration::from_secs(120));
        assert!(
            out.status.success(),
            "OCSF validation failed:\n{}\n{}",
            out.stdout,
            out.stderr
        );
    }

    /// A credential fixture under the watched `files/` directory.
    fn file(&self, rel: &str, content: &str) -> PathBuf {
        let p = self.d.join("files").join(rel);
        std::fs::create_dir_all(p.parent().unwrap()).unwrap();
        std::fs::write(&p, content).unwrap();
        p
    }
}

/// The start of every fixture's secret access key (never to be seen in any output).
const SECRET_PREFIX: &str = "wJalrXUtnFEMI/K7MDENG/bPxRfiCY";

/// An AWS shared-credentials file (test-only key material, seeded per test).
fn aws(seed: &str) -> String {
    format!(
        "[default]\naws_access_key_id = AKIAIOSFODNN7{:0>7}\naws_secret_access_key = \
         {SECRET_PREFIX}{seed:0>10}\n",
        &seed[..seed.len().min(7)]
    )
}

/// Runs the actor with `steps` (in `cgroup` when given) to its end; returns its pid.
fn act(cgroup: Option<&Path>, steps: &[&str]) -> u32 {
    let mut args: Vec<&str> = Vec::new();
    if let Some(g) = cgroup {
        args.extend(["--join-cgroup", s(g)]);
    }
    args.extend_from_slice(steps);
    finish(spawn_actor(&args))
}

fn finish(mut a: Actor) -> u32 {
    let pid = a.pid();
    let steps = a.rest();
    let status = a.wait();
    assert!(status.success(), "actor failed: {steps:?}");
    for st in &steps {
        assert_ne!(
            st.get("ok").and_then(Value::as_bool),
            Some(false),
            "actor step failed: {st}"
        );
    }
    pid
}

/// The actor without a controlling terminal and without a login uid (a service), or with a
/// login uid (a person's session).
fn actor_as(login: Option<u32>, cgroup: Option<&Path>, steps: &[&str]) -> u32 {
    let mut args: Vec<&str> = Vec::new();
    if let Some(g) = cgroup {
        args.extend(["--join-cgroup", s(g)]);
    }
    args.extend_from_slice(steps);
    let mut cmd = actor_command(&args);
    let value = login.unwrap_or(u32::MAX).to_string();
    // SAFETY: only async-signal-safe calls (setsid, open/write/close) between fork and exec.
    unsafe {
        cmd.pre_exec(move || {
            libc::setsid();
            std::fs::write("/proc/self/loginuid", &value)?;
            Ok(())
        });
    }
    finish(Actor::from_command(cmd))
}

fn is_finding(e: &Value, rule: &str) -> bool {
    is_kind(e, "finding") && get_str(e, "finding.rule_id") == Some(rule)
}

fn finding_of(sensor: &Sensor, rule: &str, pid: u32) -> Value {
    sensor.wait_for(&format!("{rule} for pid {pid}"), WAIT, |e| {
        is_finding(e, rule) && get(e, "process.pid").as_u64() == Some(u64::from(pid))
    })
}

fn findings_of(sensor: &Sensor, rule: &str, pid: u32) -> Vec<Value> {
    sensor
        .events()
        .into_iter()
        .filter(|e| is_finding(e, rule) && get(e, "process.pid").as_u64() == Some(u64::from(pid)))
        .collect()
}

fn assert_mapping(f: &Value, owasp: &str, mitre: &str) {
    let list = get(f, "finding.owasp").as_array().expect("owasp list");
    assert!(list.iter().any(|o| o == owasp), "{f}");
    assert_eq!(get_str(f, "finding.mitre_technique_id"), Some(mitre), "{f}");
    assert!(
        get_str(f, "finding.title").is_some_and(|t| !t.is_empty()),
        "{f}"
    );
    assert!(get_str(f, "finding.severity").is_some(), "{f}");
}

fn evidence_paths(f: &Value) -> Vec<String> {
    get(f, "finding.evidence")
        .as_array()
        .expect("evidence")
        .iter()
        .filter_map(|e| e.get("path").and_then(Value::as_str).map(str::to_string))
        .collect()
}

fn open_read(path: &Path) -> Vec<String> {
    vec![
        "--open".into(),
        s(path).into(),
        "--read".into(),
        "64".into(),
        "--close".into(),
    ]
}

fn strs(v: &[String]) -> Vec<&str> {
    v.iter().map(String::as_str).collect()
}

#[test]
fn d001_cross_workload_read_of_a_pod_token() {
    let Some(_g) = setup("d001") else { return };
    let mut w = World::new("d001");
    let (a, b, c) = (pod_uid(1), pod_uid(2), pod_uid(3));
    let token = mint_jwt(&projected_claims("shop", "cart", "cart-1", &a), "d001");
    let vol = kubelet_pod(&w.kubelet(), &a, &token);
    let (pa, pb, pc) = (w.pod(&a), w.pod(&b), w.pod(&c));
    // The actor's own path is declared a node daemon: exempt on the host, never in a pod.
    let actor = actor_bin();
    let sensor = w.sensor(&format!("node_daemons = [{:?}]", s(&actor)));
    let read = open_read(&vol.join("token"));

    let own = act(Some(&pa), &strs(&read));
    let daemon = act(None, &strs(&read));
    let renamed = act(Some(&pc), &strs(&read));
    let thief = act(Some(&pb), &strs(&read));

    let f = finding_of(&sensor, "NHI-D001", thief);
    assert_mapping(&f, "NHI2", "T1552.001");
    assert_eq!(get_str(&f, "finding.severity"), Some("high"));
    assert_eq!(get_str(&f, "workload.pod_uid"), Some(b.as_str()), "{f}");
    assert!(
        get_str(&f, "finding.summary").is_some_and(|m| m.contains(&a)),
        "{f}"
    );
    assert!(
        evidence_paths(&f).iter().any(|p| p.ends_with("/token")),
        "{f}"
    );
    assert_eq!(
        get_str(&f, "credential.kind"),
        Some("kubernetes_sa_token_node"),
        "{f}"
    );
    // The node-daemon exemption is by path and host context: the same binary in a pod fires.
    finding_of(&sensor, "NHI-D001", renamed);
    for benign in [own, daemon] {
        assert!(
            findings_of(&sensor, "NHI-D001", benign).is_empty(),
            "pid {benign}"
        );
    }
    w.stop(sensor, "NHI-D001");
}

#[test]
fn d002_human_use_of_a_service_credential() {
    let Some(_g) = setup("d002") else { return };
    let w = World::new("d002");
    let svc = w.file("svc/.aws/credentials", &aws("d002svc"));
    let mine = w.file("alice/.aws/credentials", &aws("d002mine"));
    // Owned by a system account (a service's key) and by the person's own uid.
    std::os::unix::fs::chown(&svc, Some(999), Some(999)).unwrap();
    std::os::unix::fs::chown(&mine, Some(1000), Some(1000)).unwrap();
    let sensor = w.sensor("");

    let service = actor_as(None, None, &strs(&open_read(&svc)));
    let own_key = actor_as(Some(1000), None, &strs(&open_read(&mine)));
    let person = actor_as(Some(1000), None, &strs(&open_read(&svc)));

    let f = finding_of(&sensor, "NHI-D002", person);
    assert_mapping(&f, "NHI10", "T1078");
    assert_eq!(get(&f, "process.loginuid").as_u64(), Some(1000), "{f}");
    assert!(
        get_str(&f, "finding.summary").is_some_and(|m| m.contains("login uid 1000")),
        "{f}"
    );
    assert_eq!(evidence_paths(&f), vec![s(&svc).to_string()], "{f}");
    for benign in [service, own_key] {
        assert!(
            findings_of(&sensor, "NHI-D002", benign).is_empty(),
            "pid {benign}"
        );
    }
    w.stop(sensor, "NHI-D002");
}

/// A network namespace whose loopback holds the instance-metadata address, so a connect to
/// it never leaves the test; deleted on drop.
struct MetadataNetns(String);

impl MetadataNetns {
    fn new() -> MetadataNetns {
        let name = format!("nhi-imds-{}", std::process::id());
        let ip = |args: &[&str]| {
            let st = Command::new("ip").args(args).status().expect("ip");
            assert!(st.success(), "ip {args:?}");
        };
        let _ = Command::new("ip")
            .args(["netns", "del", &name])
            .stderr(std::process::Stdio::null())
            .status();
        ip(&["netns", "add", &name]);
        let ns = MetadataNetns(name.clone());
        ip(&["-n", &name, "link", "set", "lo", "up"]);
        ip(&[
            "-n",
            &name,
            "addr",
            "add",
            "169.254.169.254/32",
            "dev",
            "lo",
        ]);
        ns
    }

    /// The actor inside the namespace (`nsenter --net` only: `ip netns exec` would also
    /// remount /sys, hiding the cgroup tree), started inside `cgroup` (as a container's
    /// processes are: its exec is the workload's) with only `env` and PATH as environment.
    fn actor(&self, env: &[(&str, &str)], cgroup: Option<&Path>) -> u32 {
        let mut cmd = Command::new("nsenter");
        cmd.arg(format!("--net=/run/netns/{}", self.0))
            .arg("--")
            .arg(actor_bin())
            .args(["--connect-tcp", "169.254.169.254:80"])
            .env_clear()
            .env("PATH", "/usr/sbin:/usr/bin:/sbin:/bin")
            .envs(env.iter().copied())
            .stdin(std::process::Stdio::piped())
            .stdout(std::process::Stdio::piped());
        if let Some(g) = cgroup {
            let procs = g.join("cgroup.procs");
            // SAFETY: only open/write/close between fork and exec.
            unsafe {
                cmd.pre_exec(move || std::fs::write(&procs, "0"));
            }
        }
        // Nothing listens there: the connect is refused, which is fine (it was attempted).
        let mut a = Actor::from_command(cmd);
        let pid = a.pid();
        let steps = a.rest();
        a.wait();
        assert!(
            steps
                .iter()
                .any(|st| st.get("step").and_then(Value::as_str) == Some("connect")),
            "the actor did not get to connect: {steps:?}"
        );
        for st in &steps {
            let step = st.get("step").and_then(Value::as_str);
            let failed = st.get("ok").and_then(Value::as_bool) == Some(false);
            assert!(
                step == Some("connect") || !failed,
                "actor step failed: {st}"
            );
        }
        pid
    }
}

impl Drop for MetadataNetns {
    fn drop(&mut self) {
        let _ = Command::new("ip").args(["netns", "del", &self.0]).status();
    }
}

#[test]
fn d003_cloud_metadata_from_a_workload() {
    let Some(_g) = setup("d003") else { return };
    let mut w = World::new("d003");
    let (plain, allowed, federated) = (pod_uid(1), pod_uid(2), pod_uid(3));
    let (pp, pa, pf) = (w.pod(&plain), w.pod(&allowed), w.pod(&federated));
    let ns = MetadataNetns::new();
    let sensor = w.sensor(&format!(
        "imds_allowed = [\"pod:{allowed}\", \"pod:{federated}\"]"
    ));

    let host = ns.actor(&[], None);
    let ok = ns.actor(&[], Some(&pa));
    let irsa = ns.actor(
        &[
            ("AWS_ROLE_ARN", "arn:aws:iam::111122223333:role/cart"),
            (
                "AWS_WEB_IDENTITY_TOKEN_FILE",
                "/var/run/secrets/eks.amazonaws.com/serviceaccount/token",
            ),
        ],
        Some(&pf),
    );
    let stray = ns.actor(&[], Some(&pp));

    let f = finding_of(&sensor, "NHI-D003", stray);
    assert_mapping(&f, "NHI5", "T1552.005");
    assert_eq!(
        get_str(&f, "finding.evidence.0.destination"),
        Some("169.254.169.254:80"),
        "{f}"
    );
    let fed = finding_of(&sensor, "NHI-D003", irsa);
    assert!(
        get_str(&fed, "finding.summary").is_some_and(|m| m.contains("federated identity")),
        "{fed}"
    );
    for benign in [host, ok] {
        assert!(
            findings_of(&sensor, "NHI-D003", benign).is_empty(),
            "pid {benign}"
        );
    }
    w.stop(sensor, "NHI-D003");
}

#[test]
fn d004_stale_credential_in_use() {
    let Some(_g) = setup("d004") else { return };
    let w = World::new("d004");
    let fresh = w.file("fresh/.aws/credentials", &aws("d004fresh"));
    let old = w.file("old/.aws/credentials", &aws("d004old"));
    let st = Command::new("touch")
        .args(["-d", "400 days ago", s(&old)])
        .status()
        .unwrap();
    assert!(st.success());
    let sensor = w.sensor("max_age_days = { default = 90, aws_shared_credentials = 180 }");

    let benign = act(None, &strs(&open_read(&fresh)));
    let user = act(None, &strs(&open_read(&old)));

    let f = finding_of(&sensor, "NHI-D004", user);
    assert_mapping(&f, "NHI7", "T1078");
    let detail = get_str(&f, "finding.evidence.0.detail").unwrap_or_default();
    assert!(
        detail.contains("400 days") && detail.contains("180 days"),
        "{f}"
    );
    assert!(findings_of(&sensor, "NHI-D004", benign).is_empty());
    w.stop(sensor, "NHI-D004");
}

fn listener() -> (std::net::TcpListener, String) {
    let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let a = l.local_addr().unwrap().to_string();
    (l, a)
}

#[test]
fn d005_new_destination_after_a_credential_read_survives_a_restart() {
    let Some(_g) = setup("d005") else { return };
    let mut w = World::new("d005");
    let uid = pod_uid(5);
    let pod = w.pod(&uid);
    let cred = w.file("app/.aws/credentials", &aws("d005"));
    let ((_la, a), (_lb, b), (_lc, c)) = (listener(), listener(), listener());
    let read_then = |dst: &str| {
        let mut steps = open_read(&cred);
        steps.extend(["--connect-tcp-blocking".to_string(), dst.to_string()]);
        act(Some(&pod), &strs(&steps))
    };
    let config = "learning_period_s = 3";

    let sensor = w.sensor(config);
    let learning = read_then(&a);
    sensor.wait_for("the learning connect", WAIT, |e| {
        is_kind(e, "network.connect") && get(e, "process.pid").as_u64() == Some(learning.into())
    });
    std::thread::sleep(Duration::from_secs(4));
    let known = read_then(&a);
    let novel = read_then(&b);
    let f = finding_of(&sensor, "NHI-D005", novel);
    assert_mapping(&f, "NHI2", "T1041");
    assert_eq!(
        get_str(&f, "finding.evidence.0.kind"),
        Some("file.open"),
        "{f}"
    );
    assert_eq!(
        get_str(&f, "finding.evidence.1.destination"),
        Some(b.as_str()),
        "{f}"
    );
    for benign in [learning, known] {
        assert!(
            findings_of(&sensor, "NHI-D005", benign).is_empty(),
            "pid {benign}"
        );
    }
    sensor.stop().assert_clean();

    // The baseline is in the store: a restart does not learn from zero.
    let sensor = w.sensor(config);
    let again = read_then(&a);
    let novel = read_then(&c);
    finding_of(&sensor, "NHI-D005", novel);
    assert!(findings_of(&sensor, "NHI-D005", again).is_empty());
    assert!(w.d.join("store/detections.db").exists());
    w.stop(sensor, "NHI-D005");
}

#[test]
fn d006_credential_shared_across_workloads_and_environments() {
    let Some(_g) = setup("d006") else { return };
    let mut w = World::new("d006");
    let (a, b, prod, dev) = (pod_uid(1), pod_uid(2), pod_uid(3), pod_uid(4));
    // Two pods whose tokens put them in namespaces the config maps to environments.
    for (uid, ns) in [(&prod, "payments-prod"), (&dev, "payments-dev")] {
        let token = mint_jwt(&projected_claims(ns, "api", "api-1", uid), "d006");
        kubelet_pod(&w.kubelet(), uid, &token);
    }
    let (pa, pb, pprod, pdev) = (w.pod(&a), w.pod(&b), w.pod(&prod), w.pod(&dev));
    let cred = w.file("shared/.aws/credentials", &aws("d006"));
    let key = w.file("deploy/.aws/credentials", &aws("d006env"));
    let sensor =
        w.sensor("environments = { \"payments-prod\" = \"prod\", \"payments-dev\" = \"dev\" }");
    let read = open_read(&cred);

    let first = act(Some(&pa), &strs(&read));
    let same_workload = act(Some(&pa), &strs(&read));
    let other = act(Some(&pb), &strs(&read));
    let in_prod = act(Some(&pprod), &strs(&open_read(&key)));
    let in_dev = act(Some(&pdev), &strs(&open_read(&key)));

    let f = finding_of(&sensor, "NHI-D006", other);
    assert_mapping(&f, "NHI9", "T1078");
    assert_eq!(get_str(&f, "finding.severity"), Some("medium"), "{f}");
    let ev = get(&f, "finding.evidence").as_array().unwrap();
    assert!(
        ev.iter()
            .any(|e| e.get("workload_key").and_then(Value::as_str) == Some(&format!("pod:{a}"))),
        "{f}"
    );
    let cross = finding_of(&sensor, "NHI-D006", in_dev);
    assert_eq!(get_str(&cross, "finding.severity"), Some("high"), "{cross}");
    assert!(
        get_str(&cross, "finding.summary").is_some_and(|m| m.contains("another environment")),
        "{cross}"
    );
    for benign in [first, same_workload, in_prod] {
        assert!(
            findings_of(&sensor, "NHI-D006", benign).is_empty(),
            "pid {benign}"
        );
    }
    w.stop(sensor, "NHI-D006");
}

#[test]
fn d007_projected_token_replayed_in_another_pod() {
    let Some(_g) = setup("d007") else { return };
    let mut w = World::new("d007");
    let (a, b) = (pod_uid(1), pod_uid(2));
    let token_a = mint_jwt(&projected_claims("shop", "cart", "cart-1", &a), "d007");
    let vol_a = kubelet_pod(&w.kubelet(), &a, &token_a);
    // Pod B's own volume holds pod A's token: the path says B, the claims say A.
    let vol_b = kubelet_pod(&w.kubelet(), &b, &token_a);
    let (pa, pb) = (w.pod(&a), w.pod(&b));
    let sensor = w.sensor("");

    let legit = act(Some(&pa), &strs(&open_read(&vol_a.join("token"))));
    let replay = act(Some(&pb), &strs(&open_read(&vol_b.join("token"))));

    let f = finding_of(&sensor, "NHI-D007", replay);
    assert_mapping(&f, "NHI9", "T1550.001");
    assert!(
        get_str(&f, "finding.summary").is_some_and(|m| m.contains(&a)),
        "{f}"
    );
    assert!(findings_of(&sensor, "NHI-D007", legit).is_empty());
    // Not a cross-workload read: the file is in B's own volume.
    assert!(findings_of(&sensor, "NHI-D001", replay).is_empty());
    w.stop(sensor, "NHI-D007");
}

#[test]
fn d008_credential_hunting() {
    let Some(_g) = setup("d008") else { return };
    let w = World::new("d008");
    let files: Vec<PathBuf> = (0..12)
        .map(|i| {
            w.file(
                &format!("home{i}/.aws/credentials"),
                &aws(&format!("d008{i}")),
            )
        })
        .collect();
    let sensor = w.sensor("hunting_threshold = 10");
    let steps =
        |n: usize| -> Vec<String> { files[..n].iter().flat_map(|f| open_read(f)).collect() };

    let sdk = act(None, &strs(&steps(3)));
    let hunter = act(None, &strs(&steps(12)));

    let f = finding_of(&sensor, "NHI-D008", hunter);
    assert_mapping(&f, "NHI2", "T1552.001");
    assert!(
        get_str(&f, "finding.summary").is_some_and(|m| m.contains("10 distinct")),
        "{f}"
    );
    assert_eq!(
        findings_of(&sensor, "NHI-D008", hunter).len(),
        1,
        "reported once"
    );
    assert!(findings_of(&sensor, "NHI-D008", sdk).is_empty());
    w.stop(sensor, "NHI-D008");
}

#[test]
fn d009_environment_of_another_workload_read() {
    let Some(_g) = setup("d009") else { return };
    let mut w = World::new("d009");
    let (a, b) = (pod_uid(1), pod_uid(2));
    let (pa, pb) = (w.pod(&a), w.pod(&b));
    let sensor = w.sensor("");
    let mut target = spawn_actor(&["--join-cgroup", s(&pa), "--wait-stdin"]);
    target.expect_step("start");
    target.expect_ok("join-cgroup");
    let environ = format!("/proc/{}/environ", target.pid());
    let read = ["--open", environ.as_str(), "--read", "64", "--close"];

    let sibling = act(Some(&pa), &read);
    let spy = act(Some(&pb), &read);

    let f = finding_of(&sensor, "NHI-D009", spy);
    assert_mapping(&f, "NHI2", "T1552.007");
    assert_eq!(
        get_str(&f, "finding.evidence.0.workload_key"),
        Some(format!("pod:{a}").as_str()),
        "{f}"
    );
    assert!(findings_of(&sensor, "NHI-D009", sibling).is_empty());
    target.send_line("done");
    target.wait();
    w.stop(sensor, "NHI-D009");
}

#[test]
fn d010_unexpected_binary_reads_a_workload_secret() {
    let Some(_g) = setup("d010") else { return };
    let mut w = World::new("d010");
    let uid = pod_uid(10);
    let pod = w.pod(&uid);
    let cred = w.file("app/.aws/credentials", &aws("d010"));
    let copy = w.d.join("bin/nhi-actor-copy");
    std::fs::create_dir_all(copy.parent().unwrap()).unwrap();
    std::fs::copy(actor_bin(), &copy).unwrap();
    let sensor = w.sensor("learning_period_s = 3");
    let mut read = vec!["--join-cgroup".to_string(), s(&pod).to_string()];
    read.extend(open_read(&cred));

    let learned = act(None, &strs(&read));
    sensor.wait_for("the learning read", WAIT, |e| {
        is_kind(e, "file.open") && get(e, "process.pid").as_u64() == Some(learned.into())
    });
    std::thread::sleep(Duration::from_secs(4));
    let usual = act(None, &strs(&read));
    let mut cmd = Command::new(&copy);
    cmd.args(strs(&read))
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped());
    let other = finish(Actor::from_command(cmd));

    let f = finding_of(&sensor, "NHI-D010", other);
    assert_mapping(&f, "NHI2", "T1552.001");
    let detail = get_str(&f, "finding.evidence.0.detail").unwrap_or_default();
    assert!(
        detail.starts_with(s(&copy)) && detail.contains("sha256:"),
        "{f}"
    );
    for benign in [learned, usual] {
        assert!(
            findings_of(&sensor, "NHI-D010", benign).is_empty(),
            "pid {benign}"
        );
    }
    w.stop(sensor, "NHI-D010");
}

/// A sensor shipping to `col` as `node`, classifying only `dir` (one credential pattern).
fn fleet_sensor(
    w: &World,
    col: &nhi_sensor_tests::shipping::Collector,
    node: &str,
    dir: &Path,
) -> Sensor {
    let config = w.d.join(format!("{node}.toml"));
    std::fs::write(
        &config,
        format!(
            "[[credential]]\nkind = \"deploy_key\"\nformat = \"aws_ini\"\npath_prefix = \"{}/\"\n",
            s(dir)
        ),
    )
    .unwrap();
    let c = nhi_sensor_tests::shipping::certs();
    let spool = w.d.join(format!("spool-{node}"));
    let (key, ca) = (w.d.join("fingerprint.key"), c.join("ca.pem"));
    let (cert, tls_key) = (c.join("sensor.pem"), c.join("sensor.key"));
    let args = [
        "run",
        "--format",
        "json",
        "--no-default-rules",
        "--config",
        s(&config),
        "--watch",
        &format!("{}/", s(dir)),
        "--fingerprint-key-file",
        s(&key),
        "--collector",
        &col.url(),
        "--collector-ca",
        s(&ca),
        "--tls-cert",
        s(&cert),
        "--tls-key",
        s(&tls_key),
        "--spool",
        s(&spool),
        "--sensor-id",
        &format!("sensor-{node}"),
        "--node-name",
        node,
    ];
    Sensor::start(&args)
}

#[test]
fn d006_fleet_view_same_credential_on_two_hosts() {
    let Some(_g) = setup("d006_fleet") else {
        return;
    };
    let w = World::new("d006fleet");
    let col = nhi_sensor_tests::shipping::Collector::start(w.d.path(), &[]);
    let (dir_a, dir_b) = (w.d.join("files/node-a"), w.d.join("files/node-b"));
    let shared = aws("d006fleet");
    let shared_a = w.file("node-a/shared", &shared);
    let solo_a = w.file("node-a/solo", &aws("d006solo"));
    let shared_b = w.file("node-b/shared", &shared);
    // The per-deployment key is made by the first sensor and shared by the second.
    let a = fleet_sensor(&w, &col, "node-a", &dir_a);
    let b = fleet_sensor(&w, &col, "node-b", &dir_b);

    act(None, &strs(&open_read(&shared_a)));
    act(None, &strs(&open_read(&shared_a)));
    act(None, &strs(&open_read(&solo_a)));
    let reader_b = act(None, &strs(&open_read(&shared_b)));
    b.wait_for("node-b's open", WAIT, |e| {
        is_kind(e, "file.open") && get(e, "process.pid").as_u64() == Some(reader_b.into())
    });

    let store = w.d.join("store");
    let fleet = nhi_sensor_tests::shipping::poll("the fleet finding", WAIT * 3, || {
        let found: Vec<Value> = nhi_sensor_tests::shipping::stored(&store)
            .into_iter()
            .filter(|e| {
                e["class_uid"] == 2004
                    && e["metadata"]["uid"]
                        .as_str()
                        .is_some_and(|u| u.starts_with("collector:"))
            })
            .collect();
        (!found.is_empty()).then_some(found)
    });
    assert_eq!(fleet.len(), 1, "{fleet:?}");
    let f = &fleet[0];
    assert_eq!(f["finding_info"]["analytic"]["uid"], "NHI-D006", "{f}");
    let msg = f["message"].as_str().unwrap_or_default();
    assert!(msg.contains("node-b") && msg.contains("node-a"), "{f}");
    // Whichever node's open the collector stored second is the one the finding names.
    assert!(
        msg.contains(s(&shared_a)) || msg.contains(s(&shared_b)),
        "{f}"
    );
    assert!(!msg.contains(s(&solo_a)), "{f}");
    a.stop().assert_clean();
    b.stop().assert_clean();
}

/// The `[detections]` table reloads on SIGHUP: an allow-list entry added while the sensor runs
/// silences the next occurrence; the events themselves keep flowing.
#[test]
fn allow_list_reloads_on_sighup() {
    let Some(_g) = setup("allow_reload") else {
        return;
    };
    let w = World::new("allowreload");
    let old = w.file("legacy/.aws/credentials", &aws("reload"));
    let st = Command::new("touch")
        .args(["-d", "400 days ago", s(&old)])
        .status()
        .unwrap();
    assert!(st.success());
    let sensor = w.sensor("repeat_after_s = 0");
    let before = act(None, &strs(&open_read(&old)));
    finding_of(&sensor, "NHI-D004", before);

    let config = w.d.join("config.toml");
    std::fs::write(
        &config,
        format!(
            "[detections]\nrepeat_after_s = 0\n[[detections.allow]]\nrule = \"NHI-D004\"\n\
             path_prefix = \"{}/\"\n",
            s(&w.d.join("files/legacy"))
        ),
    )
    .unwrap();
    let check = Command::new(nhi_sensor_tests::sensor_bin())
        .args(["config", "check", s(&config)])
        .output()
        .unwrap();
    assert!(check.status.success(), "{check:?}");
    // SAFETY: kill with a valid signal number has no memory-safety preconditions.
    unsafe { libc::kill(sensor.pid() as i32, libc::SIGHUP) };
    nhi_sensor_tests::shipping::poll("the reload", WAIT, || {
        sensor
            .stderr()
            .iter()
            .any(|l| l.contains("SIGHUP: watch rules reloaded"))
            .then_some(())
    });
    let after = act(None, &strs(&open_read(&old)));
    sensor.wait_for("the open after the reload", WAIT, |e| {
        is_kind(e, "file.close") && get(e, "process.pid").as_u64() == Some(after.into())
    });
    assert!(findings_of(&sensor, "NHI-D004", after).is_empty());
    w.stop(sensor, "NHI-D004");
}
