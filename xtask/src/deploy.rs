//! `cargo xtask deploy-check` and `cargo xtask deb [--install-test]`: the deployment artifacts
//! of `deploy/` checked offline, and the Debian package built and really installed.
//!
//! `deploy-check` (no cluster, no running systemd needed):
//! - every manifest of `deploy/kubernetes/` against the Kubernetes API schemas of the oldest
//!   and newest version we support ([`K8S_VERSIONS`]), strictly (unknown fields fail), with
//!   the PyPI package `kubernetes-validate` from `target/pyenv`; `kustomization.yaml` lists
//!   exactly the other manifests;
//! - the units of `deploy/systemd/` with `systemd-analyze verify` (any diagnostic fails: the
//!   tool itself exits 0 on unknown keys);
//! - every `nhi-sensor` invocation (container `args` in the manifests, `ExecStart=` of the
//!   units with the `$VARS` of their `/etc/default` files) parsed by the release binary itself:
//!   `nhi-sensor ARGS --help` exits 0 only when clap accepts every flag and value before
//!   `--help`; every `NHI_*` variable named there must be one the subcommand reads;
//! - the config files (the ConfigMap's and the package's) with `nhi-sensor config check`.
//!
//! `deb` packages the release binary already built (`cargo deb --no-build`, cargo-deb pinned
//! to [`CARGO_DEB_VERSION`], installed when absent). `--install-test` then installs it with
//! `dpkg -i` on this machine, checks files, modes, conffiles and the user, runs the installed
//! binary (`--version`, `check` as root, then `check` and a real `run` as the unit's user with
//! exactly the unit's capabilities), verifies the installed units, purges the package and
//! checks that nothing is left. State an operator may have on this machine
//! (`/var/lib/nhi-sensor`, `/etc/nhi-sensor`, ...) is moved aside for the test and put back.

use std::{
    collections::{BTreeMap, BTreeSet},
    fs,
    io::{Read as _, Write as _},
    net::{TcpListener, TcpStream},
    os::unix::fs::{MetadataExt as _, PermissionsExt as _},
    path::{Path, PathBuf},
    process::{Command, Stdio},
    time::{Duration, Instant},
};

use anyhow::{Context as _, bail};
use clap::Subcommand;
use serde_json::Value;

use crate::{cmd_ok, run, setup};

/// Kubernetes versions the manifests are validated against: the first with the
/// `appArmorProfile` field (1.30) and the newest schema `kubernetes-validate` ships.
const K8S_VERSIONS: &[&str] = &["1.30.0", "1.37.0"];
/// Pinned so every machine builds the same package layout and maintainer scripts.
const CARGO_DEB_VERSION: &str = "3.8.0";
/// Where the package installs the binary; units and manifests name it so.
const INSTALLED_BIN: &str = "/usr/bin/nhi-sensor";
/// Variables the units' `/etc/default` files define for their own `ExecStart=` (not read by the
/// binary).
const ARGS_VARIABLES: &[&str] = &["NHI_SENSOR_ARGS", "NHI_COLLECTOR_ARGS"];
/// Paths the package (or its units) own. The install test moves any that exist aside and puts
/// them back afterwards, so a developer's state survives it.
const PACKAGE_STATE: &[&str] = &[
    "/var/lib/nhi-sensor",
    "/var/lib/nhi-collector",
    "/var/lib/private/nhi-collector",
    "/etc/nhi-sensor",
    "/etc/default/nhi-sensor",
    "/etc/default/nhi-collector",
];
/// How long the installed sensor may take to answer `/readyz` (it loads and attaches its
/// programs and scans /proc first; a few seconds here).
const READY_TIMEOUT: Duration = Duration::from_secs(90);

#[derive(Subcommand)]
pub enum Cmd {
    /// Check `deploy/` offline: Kubernetes manifests against the API schemas (strict), systemd
    /// units with `systemd-analyze verify`, every `nhi-sensor` flag and variable they use
    /// against the release binary, and the example configs.
    DeployCheck,
    /// Build the Debian package (`target/debian/`) from the release binary with cargo-deb.
    Deb {
        /// Then install it on this machine (`dpkg -i`, needs root), check what it installed,
        /// run the installed sensor as its unit would, and purge it.
        #[arg(long)]
        install_test: bool,
    },
}

/// `cargo xtask deploy-check` / `cargo xtask deb`.
pub fn main(root: &Path, cmd: Cmd) -> anyhow::Result<()> {
    setup::setup()?;
    crate::build_release()?;
    match cmd {
        Cmd::DeployCheck => check(root),
        Cmd::Deb { install_test } => {
            // A package to ship gets full compression; one that is only installed here, fast.
            let deb = build_deb(root, install_test)?;
            if install_test {
                install_test_deb(root, &deb)?;
            }
            Ok(())
        }
    }
}

/// The part of `cargo xtask test`: everything `deploy-check` checks, then the package built and
/// install-tested. Needs the release binary (built before) and root.
pub fn ci(root: &Path) -> anyhow::Result<()> {
    check(root)?;
    let deb = build_deb(root, true)?;
    install_test_deb(root, &deb)
}

// ---------------------------------------------------------------------------------------------
// deploy-check
// ---------------------------------------------------------------------------------------------

/// Everything `cargo xtask deploy-check` checks; prints one line per check.
pub fn check(root: &Path) -> anyhow::Result<()> {
    let started = Instant::now();
    let sensor = Sensor::new(root.join("target/release/nhi-sensor"))?;
    let k8s_dir = root.join("deploy/kubernetes");
    let mut yamls = files_with_suffix(&k8s_dir, ".yaml")?;
    let kustomization = k8s_dir.join("kustomization.yaml");
    yamls.retain(|p| p != &kustomization);
    if yamls.is_empty() {
        bail!("no manifests in {}", k8s_dir.display());
    }

    let t = Instant::now();
    validate_schemas(root, &yamls)?;
    step(
        "Kubernetes schemas (strict)",
        t,
        &format!("{} files, {K8S_VERSIONS:?}", yamls.len()),
    );

    let t = Instant::now();
    let mut all = yamls.clone();
    all.push(kustomization.clone());
    let docs = load_yaml(root, &all)?;
    check_kustomization(&kustomization, &yamls, &docs)?;
    let manifests: Vec<(&Path, &Value)> = yamls
        .iter()
        .flat_map(|f| docs[f].iter().map(move |d| (f.as_path(), d)))
        .collect();
    let invocations = check_containers(&sensor, &manifests)?;
    let configs = configmap_configs(root, &manifests)?;
    step(
        "manifests: kustomization, nhi-sensor args and env",
        t,
        &format!("{invocations} containers"),
    );

    let t = Instant::now();
    let units = files_with_suffix(&root.join("deploy/systemd"), ".service")?;
    if units.is_empty() {
        bail!("no units in deploy/systemd/");
    }
    verify_units(root, &sensor, &units)?;
    for unit in &units {
        check_unit_invocation(root, &sensor, unit)?;
    }
    step(
        "systemd units (systemd-analyze verify, ExecStart, env files)",
        t,
        &format!("{} units", units.len()),
    );

    let t = Instant::now();
    let mut config_files = configs;
    config_files.push((
        root.join("deploy/debian/config.toml"),
        "deploy/debian/config.toml".to_string(),
    ));
    let how = check_configs(root, &sensor, &config_files)?;
    step(
        "config files",
        t,
        &format!("{} files, {how}", config_files.len()),
    );

    eprintln!(
        "deploy-check: ok in {:.1}s",
        started.elapsed().as_secs_f64()
    );
    Ok(())
}

fn step(what: &str, started: Instant, detail: &str) {
    eprintln!(
        "deploy-check: {what}: ok ({detail}, {:.1}s)",
        started.elapsed().as_secs_f64()
    );
}

/// The files of `dir` whose names end with `suffix`, sorted.
fn files_with_suffix(dir: &Path, suffix: &str) -> anyhow::Result<Vec<PathBuf>> {
    let mut out = Vec::new();
    for entry in fs::read_dir(dir).with_context(|| format!("reading {}", dir.display()))? {
        let path = entry?.path();
        if path.is_file() && path.to_string_lossy().ends_with(suffix) {
            out.push(path);
        }
    }
    out.sort();
    Ok(out)
}

/// `kubernetes-validate --strict` for each supported version; its messages pass through.
fn validate_schemas(root: &Path, files: &[PathBuf]) -> anyhow::Result<()> {
    let tool = root.join(xtask::VENV_DIR).join("bin/kubernetes-validate");
    if !tool.exists() {
        bail!(
            "{} is missing: `cargo xtask setup` installs it (tests/py/requirements.txt)",
            tool.display()
        );
    }
    for version in K8S_VERSIONS {
        run(Command::new(&tool)
            .args(["--strict", "--quiet", "--kubernetes-version", version])
            .args(files))
        .with_context(|| format!("the manifests do not validate against Kubernetes {version}"))?;
    }
    Ok(())
}

/// Every YAML document of `files`, as JSON, keyed by file (PyYAML from the test venv: the
/// workspace has no YAML parser of its own for xtask).
fn load_yaml(root: &Path, files: &[PathBuf]) -> anyhow::Result<BTreeMap<PathBuf, Vec<Value>>> {
    const SCRIPT: &str = "import json, sys, yaml\n\
        out = {}\n\
        for f in sys.argv[1:]:\n\
        \x20   with open(f) as fh:\n\
        \x20       out[f] = [d for d in yaml.safe_load_all(fh) if d is not None]\n\
        json.dump(out, sys.stdout)\n";
    let out = Command::new(xtask::venv_python(root))
        .arg("-c")
        .arg(SCRIPT)
        .args(files)
        .output()
        .context("running the venv's Python to read the manifests")?;
    if !out.status.success() {
        bail!(
            "reading the manifests as YAML failed:\n{}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    let parsed: BTreeMap<String, Vec<Value>> =
        serde_json::from_slice(&out.stdout).context("parsing the manifests' JSON")?;
    Ok(parsed
        .into_iter()
        .map(|(f, docs)| (PathBuf::from(f), docs))
        .collect())
}

/// `kustomization.yaml` lists every other manifest, and nothing else.
fn check_kustomization(
    path: &Path,
    manifests: &[PathBuf],
    docs: &BTreeMap<PathBuf, Vec<Value>>,
) -> anyhow::Result<()> {
    let [k] = docs[path].as_slice() else {
        bail!("{} must hold one document", path.display());
    };
    let listed: BTreeSet<&str> = k["resources"]
        .as_array()
        .context("kustomization.yaml has no resources list")?
        .iter()
        .map(|r| r.as_str().context("a resource that is not a string"))
        .collect::<anyhow::Result<_>>()?;
    let present: BTreeSet<&str> = manifests
        .iter()
        .map(|p| {
            p.file_name()
                .and_then(|n| n.to_str())
                .expect("UTF-8 file names")
        })
        .collect();
    if listed != present {
        bail!(
            "kustomization.yaml lists {listed:?} but deploy/kubernetes/ holds {present:?}: keep them equal"
        );
    }
    Ok(())
}

/// The pod spec of a workload document, if it is one.
fn pod_spec(doc: &Value) -> Option<&Value> {
    match doc["kind"].as_str()? {
        "Pod" => Some(&doc["spec"]),
        "DaemonSet" | "Deployment" | "StatefulSet" | "ReplicaSet" | "Job" => {
            Some(&doc["spec"]["template"]["spec"])
        }
        "CronJob" => Some(&doc["spec"]["jobTemplate"]["spec"]["template"]["spec"]),
        _ => None,
    }
}

/// Every container running the nhi-sensor image: its `args` must parse (`nhi-sensor ARGS
/// --help`), its environment names only variables the subcommand reads, and a `--config` must
/// point into the mounted ConfigMap. Returns how many containers were checked.
fn check_containers(sensor: &Sensor, docs: &[(&Path, &Value)]) -> anyhow::Result<usize> {
    let configmaps: BTreeMap<&str, &Value> = docs
        .iter()
        .filter(|(_, d)| d["kind"] == "ConfigMap")
        .filter_map(|(_, d)| Some((d["metadata"]["name"].as_str()?, &d["data"])))
        .collect();
    let mut checked = 0;
    for (file, doc) in docs {
        let Some(spec) = pod_spec(doc) else { continue };
        let name = doc["metadata"]["name"].as_str().unwrap_or("?");
        let containers = [&spec["containers"], &spec["initContainers"]]
            .into_iter()
            .filter_map(Value::as_array)
            .flatten();
        for c in containers {
            let image = c["image"].as_str().unwrap_or_default();
            let base = image.rsplit('/').next().unwrap_or_default();
            if base.split([':', '@']).next() != Some("nhi-sensor") {
                continue;
            }
            let what = format!(
                "{}: {name}, container {}",
                file.display(),
                c["name"].as_str().unwrap_or("?")
            );
            if !c["command"].is_null() {
                bail!("{what}: the image's entrypoint is nhi-sensor: put everything in `args`");
            }
            let args: Vec<String> = c["args"]
                .as_array()
                .with_context(|| format!("{what}: no args (the subcommand goes first)"))?
                .iter()
                .map(|a| a.as_str().map(str::to_string).context("a non-string arg"))
                .collect::<anyhow::Result<_>>()?;
            if args.iter().any(|a| a.contains("$(")) {
                bail!("{what}: $(VAR) references in args are not checked: spell the value out");
            }
            sensor.check_args(&args).with_context(|| what.clone())?;
            let sub = &args[0];
            for e in c["env"].as_array().into_iter().flatten() {
                let var = e["name"].as_str().unwrap_or_default();
                sensor.check_env(sub, var).with_context(|| what.clone())?;
            }
            if let Some(config) = flag_value(&args, "--config") {
                check_config_mount(spec, c, &configmaps, config).with_context(|| what.clone())?;
            }
            checked += 1;
        }
    }
    if checked == 0 {
        bail!("no container in deploy/kubernetes/ runs the nhi-sensor image");
    }
    Ok(checked)
}

/// The value of `--flag VALUE` or `--flag=VALUE` in `args`.
fn flag_value<'a>(args: &'a [String], flag: &str) -> Option<&'a str> {
    args.iter().enumerate().find_map(|(i, a)| {
        if a == flag {
            args.get(i + 1).map(String::as_str)
        } else {
            a.strip_prefix(flag)?.strip_prefix('=')
        }
    })
}

/// `--config PATH` names a key of a ConfigMap that is mounted at PATH's directory.
fn check_config_mount(
    spec: &Value,
    container: &Value,
    configmaps: &BTreeMap<&str, &Value>,
    config: &str,
) -> anyhow::Result<()> {
    let path = Path::new(config);
    let (dir, key) = (
        path.parent().context("--config has no directory")?,
        path.file_name()
            .and_then(|k| k.to_str())
            .context("--config has no file name")?,
    );
    for m in container["volumeMounts"].as_array().into_iter().flatten() {
        if m["mountPath"].as_str().map(Path::new) != Some(dir) {
            continue;
        }
        let volume = spec["volumes"]
            .as_array()
            .into_iter()
            .flatten()
            .find(|v| v["name"] == m["name"])
            .context("a volumeMount without its volume")?;
        let cm = volume["configMap"]["name"]
            .as_str()
            .with_context(|| format!("{} is not mounted from a ConfigMap", dir.display()))?;
        let data = configmaps
            .get(cm)
            .with_context(|| format!("ConfigMap {cm} is not in deploy/kubernetes/"))?;
        if data[key].is_null() {
            bail!("ConfigMap {cm} has no key {key} for --config {config}");
        }
        return Ok(());
    }
    bail!("--config {config}: nothing is mounted at {}", dir.display())
}

/// The config files of the ConfigMaps the manifests hold (each `*.toml` key), written to
/// `target/deploy-check/` for `config check`, each with where it came from.
fn configmap_configs(
    root: &Path,
    docs: &[(&Path, &Value)],
) -> anyhow::Result<Vec<(PathBuf, String)>> {
    let dir = root.join("target/deploy-check");
    fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
    let mut out = Vec::new();
    for (file, doc) in docs.iter().filter(|(_, d)| d["kind"] == "ConfigMap") {
        let name = doc["metadata"]["name"].as_str().unwrap_or("configmap");
        for (key, value) in doc["data"].as_object().into_iter().flatten() {
            if !key.ends_with(".toml") {
                continue;
            }
            let path = dir.join(format!("{name}.{key}"));
            fs::write(&path, value.as_str().unwrap_or_default())
                .with_context(|| format!("writing {}", path.display()))?;
            let from = format!("ConfigMap {name} ({}), key {key}", file.display());
            out.push((path, from));
        }
    }
    Ok(out)
}

/// `systemd-analyze verify` on copies of the units whose `ExecStart=` runs the release binary
/// instead of the installed one (verify requires the executable to exist). Any diagnostic
/// fails: verify exits 0 on unknown keys and unparsable values.
fn verify_units(root: &Path, sensor: &Sensor, units: &[PathBuf]) -> anyhow::Result<()> {
    if !cmd_ok(Command::new("systemd-analyze").arg("--version")) {
        setup::ensure_debian_packages(&["systemd".to_string()])?;
    }
    let dir = root.join("target/deploy-check/units");
    let _ = fs::remove_dir_all(&dir);
    fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
    let mut copies = Vec::new();
    for unit in units {
        let text =
            fs::read_to_string(unit).with_context(|| format!("reading {}", unit.display()))?;
        let copy = dir.join(unit.file_name().expect("a file"));
        fs::write(
            &copy,
            text.replace(
                &format!("{INSTALLED_BIN} "),
                &format!("{} ", sensor.path.display()),
            ),
        )?;
        copies.push(copy);
    }
    let out = Command::new("systemd-analyze")
        .args(["verify", "--man=no", "--recursive-errors=no"])
        .args(&copies)
        .output()
        .context("running systemd-analyze verify")?;
    let said = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    if !out.status.success() || !said.trim().is_empty() {
        bail!("systemd-analyze verify deploy/systemd/*.service:\n{said}");
    }
    Ok(())
}

/// A unit's `ExecStart=`, with the `$VARS` of its `EnvironmentFile=` (the package's
/// `/etc/default` file from `deploy/debian/`) expanded, parses; every `NHI_*` variable the unit
/// and that file mention (comments included: they are the operator's documentation) is one
/// the subcommand reads.
fn check_unit_invocation(root: &Path, sensor: &Sensor, unit: &Path) -> anyhow::Result<()> {
    let what = unit.display().to_string();
    let text = fs::read_to_string(unit).with_context(|| format!("reading {what}"))?;
    let settings = unit_settings(&text);
    let exec = settings
        .get("ExecStart")
        .and_then(|v| v.last())
        .with_context(|| format!("{what}: no ExecStart="))?;
    let mut env = BTreeMap::new();
    let mut env_text = String::new();
    for file in settings.get("EnvironmentFile").into_iter().flatten() {
        let installed = file.trim_start_matches('-');
        let name = installed
            .strip_prefix("/etc/default/")
            .with_context(|| format!("{what}: EnvironmentFile={file} is not under /etc/default"))?;
        let source = root.join("deploy/debian").join(format!("{name}.default"));
        env_text = fs::read_to_string(&source)
            .with_context(|| format!("{what}: reading {}", source.display()))?;
        env.extend(env_file(&env_text));
    }
    let words = expand_exec(exec, &env).with_context(|| format!("{what}: ExecStart={exec}"))?;
    let (bin, args) = words.split_first().context("empty ExecStart")?;
    if bin != INSTALLED_BIN {
        bail!("{what}: ExecStart must run {INSTALLED_BIN} (what the package installs)");
    }
    sensor
        .check_args(args)
        .with_context(|| format!("{what}: ExecStart"))?;
    let sub = args.first().context("ExecStart without a subcommand")?;
    let used: BTreeSet<&str> = [text.as_str(), env_text.as_str()]
        .into_iter()
        .flat_map(nhi_variables)
        .collect();
    for var in used {
        if !ARGS_VARIABLES.contains(&var) {
            sensor
                .check_env(sub, var)
                .with_context(|| format!("{what} or its /etc/default file"))?;
        }
    }
    Ok(())
}

/// `Key=value` settings of a unit file (every section; comments skipped), in order.
fn unit_settings(text: &str) -> BTreeMap<String, Vec<String>> {
    let mut out: BTreeMap<String, Vec<String>> = BTreeMap::new();
    for line in text.lines().map(str::trim) {
        if line.starts_with(['#', ';', '[']) {
            continue;
        }
        if let Some((k, v)) = line.split_once('=') {
            out.entry(k.trim().to_string())
                .or_default()
                .push(v.trim().to_string());
        }
    }
    out
}

/// The assignments of an `EnvironmentFile=` (comments skipped; one level of quotes removed).
fn env_file(text: &str) -> BTreeMap<String, String> {
    text.lines()
        .map(str::trim)
        .filter(|l| !l.starts_with('#'))
        .filter_map(|l| l.split_once('='))
        .map(|(k, v)| {
            let v = v.trim();
            let unquoted = v
                .strip_prefix('"')
                .and_then(|v| v.strip_suffix('"'))
                .unwrap_or(v);
            (k.trim().to_string(), unquoted.to_string())
        })
        .collect()
}

/// systemd's expansion of a command line: `$VAR` (a whole word) becomes the value split at
/// whitespace, `${VAR}` one word. Quoting is not supported (our units need none).
fn expand_exec(exec: &str, env: &BTreeMap<String, String>) -> anyhow::Result<Vec<String>> {
    if exec.contains(['"', '\'', '\\']) {
        bail!("quoting in ExecStart is not supported by this check");
    }
    let mut words = Vec::new();
    for w in exec.split_whitespace() {
        if let Some(var) = w.strip_prefix("${").and_then(|w| w.strip_suffix('}')) {
            words.push(
                env.get(var)
                    .with_context(|| format!("${{{var}}} is not set"))?
                    .clone(),
            );
        } else if let Some(var) = w.strip_prefix('$') {
            let value = env
                .get(var)
                .with_context(|| format!("${var} is not set by the unit's EnvironmentFile"))?;
            words.extend(value.split_whitespace().map(str::to_string));
        } else {
            words.push(w.to_string());
        }
    }
    Ok(words)
}

/// The `NHI_*` variable names in `text`.
fn nhi_variables(text: &str) -> impl Iterator<Item = &str> {
    text.split(|c: char| !(c.is_ascii_uppercase() || c.is_ascii_digit() || c == '_'))
        .filter(|w| w.starts_with("NHI_") && w.len() > 4)
}

/// Each config file passes `nhi-sensor config check`. Returns how they were checked.
fn check_configs(
    root: &Path,
    sensor: &Sensor,
    files: &[(PathBuf, String)],
) -> anyhow::Result<&'static str> {
    if sensor.has_config_check() {
        for (f, from) in files {
            let out = Command::new(&sensor.path)
                .args(["config", "check"])
                .arg(f)
                .output()
                .context("running nhi-sensor config check")?;
            if !out.status.success() {
                bail!(
                    "{from}: nhi-sensor config check {} failed:\n{}{}",
                    f.display(),
                    String::from_utf8_lossy(&out.stdout),
                    String::from_utf8_lossy(&out.stderr)
                );
            }
        }
        return Ok("nhi-sensor config check");
    }
    // A binary from before `config check`: TOML syntax only, with Python's parser.
    eprintln!("deploy-check: this nhi-sensor has no `config check`: checking TOML syntax only");
    run(Command::new(xtask::venv_python(root))
        .args([
            "-c",
            "import sys, tomllib\nfor f in sys.argv[1:]:\n    tomllib.load(open(f, 'rb'))",
        ])
        .args(files.iter().map(|(f, _)| f)))
    .context("a config file is not valid TOML")?;
    Ok("TOML syntax only")
}

/// The release binary, asked about its own command line.
struct Sensor {
    path: PathBuf,
}

impl Sensor {
    fn new(path: PathBuf) -> anyhow::Result<Self> {
        if !path.exists() {
            bail!("{} is missing: `cargo xtask build` first", path.display());
        }
        Ok(Self { path })
    }

    /// `nhi-sensor ARGS --help` exits 0 only if clap accepts every argument (name and value)
    /// before `--help`; required arguments are not demanded.
    fn check_args(&self, args: &[String]) -> anyhow::Result<()> {
        let out = Command::new(&self.path)
            .args(args)
            .arg("--help")
            .env_clear()
            .output()
            .context("running nhi-sensor --help")?;
        if !out.status.success() {
            bail!(
                "nhi-sensor refuses `{}`:\n{}",
                args.join(" "),
                String::from_utf8_lossy(&out.stderr)
            );
        }
        Ok(())
    }

    /// `var` is read by `nhi-sensor SUB` (its help says `[env: VAR=]`).
    fn check_env(&self, sub: &str, var: &str) -> anyhow::Result<()> {
        let out = Command::new(&self.path)
            .args([sub, "--help"])
            .env_clear()
            .output()
            .context("running nhi-sensor --help")?;
        if !String::from_utf8_lossy(&out.stdout).contains(&format!("[env: {var}=")) {
            bail!("nhi-sensor {sub} does not read the environment variable {var}");
        }
        Ok(())
    }

    fn has_config_check(&self) -> bool {
        cmd_ok(Command::new(&self.path).args(["config", "check", "--help"]))
    }
}

// ---------------------------------------------------------------------------------------------
// deb
// ---------------------------------------------------------------------------------------------

/// `cargo deb --no-build`: the package of the release binary already built. Returns its path.
fn build_deb(root: &Path, fast: bool) -> anyhow::Result<PathBuf> {
    let t = Instant::now();
    ensure_cargo_deb()?;
    let mut cmd = Command::new("cargo");
    cmd.args(["deb", "-p", "nhi-sensor", "--no-build"]);
    if fast {
        cmd.arg("--fast");
    }
    let out = cmd
        .current_dir(root)
        .stderr(Stdio::inherit())
        .output()
        .context("running cargo deb")?;
    if !out.status.success() {
        bail!("cargo deb failed: {}", out.status);
    }
    let stdout = String::from_utf8_lossy(&out.stdout);
    let deb = stdout
        .lines()
        .rev()
        .find(|l| l.trim().ends_with(".deb"))
        .map(|l| PathBuf::from(l.trim()))
        .with_context(|| format!("cargo deb did not say where the package is:\n{stdout}"))?;
    eprintln!(
        "deb: built {} ({:.1}s)",
        deb.display(),
        t.elapsed().as_secs_f64()
    );
    Ok(deb)
}

/// cargo-deb [`CARGO_DEB_VERSION`], installed with `cargo install --locked` when absent.
pub(crate) fn ensure_cargo_deb() -> anyhow::Result<()> {
    let version = Command::new("cargo").args(["deb", "--version"]).output();
    if let Ok(out) = &version
        && out.status.success()
        && String::from_utf8_lossy(&out.stdout).trim() == format!("cargo-deb {CARGO_DEB_VERSION}")
    {
        return Ok(());
    }
    eprintln!("deb: installing cargo-deb {CARGO_DEB_VERSION} (about 4 minutes on 2 cores, once)");
    run(Command::new("cargo").args([
        "install",
        "cargo-deb",
        "--version",
        CARGO_DEB_VERSION,
        "--locked",
    ]))
}

/// Installs `deb` with dpkg, checks it, runs it as its unit would, and purges it.
fn install_test_deb(root: &Path, deb: &Path) -> anyhow::Result<()> {
    let started = Instant::now();
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } != 0 {
        bail!("the package install test runs dpkg: run it as root");
    }
    if package_installed() {
        bail!(
            "nhi-sensor is already installed on this machine: the install test would replace \
             and purge it (dpkg --purge nhi-sensor first, if that is what you want)"
        );
    }
    // The package depends on systemd (systemd-sysusers creates its user).
    setup::ensure_debian_packages(&["systemd".to_string()])?;
    let mut guard = InstallGuard::new()?;
    let work = root.join("target/deb-install-test");
    let _ = fs::remove_dir_all(&work);
    fs::create_dir_all(&work).with_context(|| format!("creating {}", work.display()))?;

    let t = Instant::now();
    guard.installed = true;
    run(Command::new("dpkg")
        .arg("-i")
        .arg(deb)
        .env("DEBIAN_FRONTEND", "noninteractive")
        .stdin(Stdio::null()))
    .context("dpkg -i")?;
    eprintln!("deb: installed ({:.1}s)", t.elapsed().as_secs_f64());

    let t = Instant::now();
    check_installed_files(root)?;
    let version = dpkg_query("${Version}")?;
    // Debian version = upstream version, '-', package revision.
    let upstream = version
        .rsplit_once('-')
        .map_or(version.as_str(), |(u, _)| u);
    let out = Command::new(INSTALLED_BIN).arg("--version").output()?;
    let said = String::from_utf8_lossy(&out.stdout).trim().to_string();
    if !out.status.success() || said != format!("nhi-sensor {upstream}") {
        bail!("{INSTALLED_BIN} --version said {said:?}; package version is {version}");
    }
    run_logged(
        Command::new(INSTALLED_BIN).arg("check"),
        &work.join("check-root.log"),
    )
    .context("the installed binary's `check` as root")?;
    eprintln!(
        "deb: files, modes, conffiles, user, --version, check as root: ok ({:.1}s)",
        t.elapsed().as_secs_f64()
    );

    let t = Instant::now();
    let unit_dir = installed_unit_dir()?;
    let out = Command::new("systemd-analyze")
        .args(["verify", "--man=no", "--recursive-errors=no"])
        .arg(unit_dir.join("nhi-sensor.service"))
        .arg(unit_dir.join("nhi-collector.service"))
        .output()?;
    let said = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    if !out.status.success() || !said.trim().is_empty() {
        bail!("systemd-analyze verify of the installed units:\n{said}");
    }
    let unit = UnitRun::parse(&unit_dir.join("nhi-sensor.service"))?;
    run_logged(
        &mut unit.command(&[INSTALLED_BIN, "check"]),
        &work.join("check-unit.log"),
    )
    .with_context(|| {
        format!(
            "`nhi-sensor check` as {} with only {}",
            unit.user,
            unit.ambient.join(" ")
        )
    })?;
    run_like_unit(&unit, &work)?;
    eprintln!(
        "deb: installed units verified; check and run as {} with {}: ok ({:.1}s)",
        unit.user,
        unit.ambient.join(" "),
        t.elapsed().as_secs_f64()
    );

    let t = Instant::now();
    guard.purge()?;
    for path in [
        INSTALLED_BIN,
        "/etc/nhi-sensor",
        "/etc/default/nhi-sensor",
        "/var/lib/nhi-sensor",
        "/usr/lib/sysusers.d/nhi-sensor.conf",
    ] {
        if Path::new(path).exists() {
            bail!("{path} is still there after dpkg --purge");
        }
    }
    for unit in ["nhi-sensor.service", "nhi-collector.service"] {
        if unit_dir.join(unit).exists() {
            bail!("{unit} is still installed after dpkg --purge");
        }
    }
    eprintln!(
        "deb: purged, nothing left ({:.1}s)",
        t.elapsed().as_secs_f64()
    );
    drop(guard);
    eprintln!(
        "deb: install test ok in {:.1}s",
        started.elapsed().as_secs_f64()
    );
    Ok(())
}

fn package_installed() -> bool {
    dpkg_query("${Status}").is_ok_and(|s| s.contains("install ok installed"))
}

fn dpkg_query(format: &str) -> anyhow::Result<String> {
    let out = Command::new("dpkg-query")
        .args(["-W", &format!("-f={format}"), "nhi-sensor"])
        .stderr(Stdio::null())
        .output()
        .context("running dpkg-query")?;
    if !out.status.success() {
        bail!("dpkg-query: nhi-sensor is not known");
    }
    Ok(String::from_utf8_lossy(&out.stdout).to_string())
}

/// Where the package put the units (`/usr/lib/systemd/system` or `/lib/systemd/system`).
fn installed_unit_dir() -> anyhow::Result<PathBuf> {
    let out = Command::new("dpkg").args(["-L", "nhi-sensor"]).output()?;
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .find(|l| l.ends_with("/nhi-sensor.service"))
        .and_then(|l| Path::new(l).parent().map(Path::to_path_buf))
        .context("the package installed no nhi-sensor.service")
}

/// What the package installed: files with their modes and owners, byte-identical to
/// `deploy/`; the conffiles; the system user; the state directory.
fn check_installed_files(root: &Path) -> anyhow::Result<()> {
    let unit_dir = installed_unit_dir()?;
    let expect: Vec<(PathBuf, u32, Option<PathBuf>)> = vec![
        (INSTALLED_BIN.into(), 0o755, None),
        (
            unit_dir.join("nhi-sensor.service"),
            0o644,
            Some(root.join("deploy/systemd/nhi-sensor.service")),
        ),
        (
            unit_dir.join("nhi-collector.service"),
            0o644,
            Some(root.join("deploy/systemd/nhi-collector.service")),
        ),
        (
            "/etc/nhi-sensor/config.toml".into(),
            0o644,
            Some(root.join("deploy/debian/config.toml")),
        ),
        (
            "/etc/default/nhi-sensor".into(),
            0o644,
            Some(root.join("deploy/debian/nhi-sensor.default")),
        ),
        (
            "/etc/default/nhi-collector".into(),
            0o644,
            Some(root.join("deploy/debian/nhi-collector.default")),
        ),
        (
            "/usr/lib/sysusers.d/nhi-sensor.conf".into(),
            0o644,
            Some(root.join("deploy/debian/nhi-sensor.sysusers")),
        ),
    ];
    for (path, mode, source) in &expect {
        let meta =
            fs::metadata(path).with_context(|| format!("{} is not installed", path.display()))?;
        let got = meta.permissions().mode() & 0o7777;
        if got != *mode || meta.uid() != 0 || meta.gid() != 0 {
            bail!(
                "{}: mode {got:o} owner {}:{}, expected {mode:o} root:root",
                path.display(),
                meta.uid(),
                meta.gid()
            );
        }
        if let Some(source) = source
            && fs::read(path)? != fs::read(source)?
        {
            bail!("{} differs from {}", path.display(), source.display());
        }
    }
    let conffiles = dpkg_query("${Conffiles}")?;
    for f in [
        "/etc/nhi-sensor/config.toml",
        "/etc/default/nhi-sensor",
        "/etc/default/nhi-collector",
    ] {
        if !conffiles
            .lines()
            .any(|l| l.split_whitespace().next() == Some(f))
        {
            bail!("{f} is not a conffile (an upgrade would overwrite the operator's edits)");
        }
    }
    let user = getent("passwd", "nhi-sensor")?.context("the package created no nhi-sensor user")?;
    let fields: Vec<&str> = user.split(':').collect();
    let uid: u32 = fields
        .get(2)
        .and_then(|u| u.parse().ok())
        .unwrap_or(u32::MAX);
    if uid >= 1000 || !fields.get(6).is_some_and(|s| s.ends_with("nologin")) {
        bail!("nhi-sensor should be a system user without a login shell: {user}");
    }
    let state = fs::metadata("/var/lib/nhi-sensor").context("no /var/lib/nhi-sensor")?;
    if state.permissions().mode() & 0o7777 != 0o700 || state.uid() != uid {
        bail!(
            "/var/lib/nhi-sensor: mode {:o} owner {}, expected 700 nhi-sensor",
            state.permissions().mode() & 0o7777,
            state.uid()
        );
    }
    Ok(())
}

fn getent(db: &str, key: &str) -> anyhow::Result<Option<String>> {
    let out = Command::new("getent").args([db, key]).output()?;
    Ok(out
        .status
        .success()
        .then(|| String::from_utf8_lossy(&out.stdout).trim().to_string()))
}

/// Runs `cmd` with its output in `log`; on failure the log's tail is in the error.
fn run_logged(cmd: &mut Command, log: &Path) -> anyhow::Result<()> {
    let file = fs::File::create(log)?;
    let status = cmd
        .stdout(file.try_clone()?)
        .stderr(file)
        .status()
        .with_context(|| format!("starting {cmd:?}"))?;
    if !status.success() {
        bail!("{cmd:?} failed ({status}); its output:\n{}", tail(log));
    }
    Ok(())
}

fn tail(log: &Path) -> String {
    let text = fs::read_to_string(log).unwrap_or_default();
    let lines: Vec<&str> = text.lines().collect();
    lines[lines.len().saturating_sub(30)..].join("\n")
}

/// How the installed `nhi-sensor.service` runs the sensor, read from the unit itself: who,
/// with which capabilities, with which environment and command line. Reproduced with
/// `setpriv` (systemd is not PID 1 on every machine that runs this test).
struct UnitRun {
    user: String,
    group: String,
    ambient: Vec<String>,
    bounding: Vec<String>,
    no_new_privs: bool,
    env: BTreeMap<String, String>,
    exec: Vec<String>,
}

impl UnitRun {
    fn parse(unit: &Path) -> anyhow::Result<Self> {
        let text = fs::read_to_string(unit)?;
        let s = unit_settings(&text);
        let one = |k: &str| s.get(k).and_then(|v| v.last()).cloned();
        let caps = |k: &str| -> Vec<String> {
            one(k)
                .unwrap_or_default()
                .split_whitespace()
                .map(str::to_string)
                .collect()
        };
        let mut env = BTreeMap::new();
        for f in s.get("EnvironmentFile").into_iter().flatten() {
            let path = f.trim_start_matches('-');
            if let Ok(text) = fs::read_to_string(path) {
                env.extend(env_file(&text));
            }
        }
        let exec = expand_exec(&one("ExecStart").context("no ExecStart")?, &env)?;
        let user = one("User").context("the unit names no User=")?;
        Ok(Self {
            group: one("Group").unwrap_or_else(|| user.clone()),
            user,
            ambient: caps("AmbientCapabilities"),
            bounding: caps("CapabilityBoundingSet"),
            no_new_privs: one("NoNewPrivileges").as_deref() == Some("yes"),
            env,
            exec,
        })
    }

    /// `setpriv` running `argv` as the unit's user with exactly the unit's capabilities.
    fn command(&self, argv: &[&str]) -> Command {
        let set = |caps: &[String]| {
            let mut s = "-all".to_string();
            for c in caps {
                s.push_str(",+");
                s.push_str(&c.trim_start_matches("CAP_").to_lowercase());
            }
            s
        };
        let mut cmd = Command::new("setpriv");
        cmd.arg(format!("--reuid={}", self.user))
            .arg(format!("--regid={}", self.group))
            .arg("--init-groups")
            .arg(format!("--inh-caps={}", set(&self.ambient)))
            .arg(format!("--ambient-caps={}", set(&self.ambient)))
            .arg(format!("--bounding-set={}", set(&self.bounding)));
        if self.no_new_privs {
            cmd.arg("--no-new-privs");
        }
        cmd.arg("--").args(argv).env_clear().envs(&self.env);
        cmd
    }
}

/// The unit's own command line (its config, its environment file) as its user: it must become
/// ready, stop cleanly on SIGTERM, and have stored events in its state directory.
fn run_like_unit(unit: &UnitRun, work: &Path) -> anyhow::Result<()> {
    // The unit's metrics address may be taken on this machine: a free port instead.
    let port = TcpListener::bind("127.0.0.1:0")?.local_addr()?.port();
    let addr = format!("127.0.0.1:{port}");
    let argv: Vec<&str> = unit.exec.iter().map(String::as_str).collect();
    let mut cmd = unit.command(&argv);
    cmd.env("NHI_SENSOR_METRICS_ADDR", &addr);
    let log = work.join("run-unit.log");
    let file = fs::File::create(&log)?;
    let mut child = cmd
        .stdout(file.try_clone()?)
        .stderr(file)
        .spawn()
        .context("starting the installed sensor as its unit does")?;
    let deadline = Instant::now() + READY_TIMEOUT;
    let ready = loop {
        if http_status(&addr, "/readyz").is_some_and(|s| s == 200) {
            break true;
        }
        if child.try_wait()?.is_some() || Instant::now() > deadline {
            break false;
        }
        std::thread::sleep(Duration::from_millis(200));
    };
    let metrics_ok = ready && http_status(&addr, "/metrics").is_some_and(|s| s == 200);
    // SAFETY: kill has no memory-safety preconditions; the pid is our own child's.
    unsafe { libc::kill(child.id() as i32, libc::SIGTERM) };
    let status = wait_timeout(&mut child, Duration::from_secs(30))?;
    if !ready || !metrics_ok {
        bail!(
            "the installed sensor did not become ready on {addr} within {READY_TIMEOUT:?}:\n{}",
            tail(&log)
        );
    }
    match status {
        Some(s) if s.success() => {}
        other => bail!(
            "the installed sensor did not stop cleanly on SIGTERM ({other:?}):\n{}",
            tail(&log)
        ),
    }
    let key = fs::metadata("/var/lib/nhi-sensor/fingerprint.key")
        .context("the sensor created no fingerprint key in its state directory")?;
    if key.permissions().mode() & 0o777 != 0o600 {
        bail!("fingerprint.key is not 0600");
    }
    let out = Command::new(INSTALLED_BIN)
        .args([
            "events",
            "--store",
            "/var/lib/nhi-sensor/store",
            "--since",
            "1h",
        ])
        .args(["--format", "json", "--limit", "5"])
        .output()?;
    if !out.status.success() || out.stdout.iter().filter(|&&b| b == b'\n').count() == 0 {
        bail!(
            "no events in the installed sensor's store:\n{}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    Ok(())
}

/// The HTTP status of `GET path` on `addr`, or None when it does not answer.
fn http_status(addr: &str, path: &str) -> Option<u16> {
    let mut s = TcpStream::connect(addr).ok()?;
    s.set_read_timeout(Some(Duration::from_secs(5))).ok()?;
    write!(
        s,
        "GET {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n"
    )
    .ok()?;
    let mut buf = Vec::new();
    s.read_to_end(&mut buf).ok()?;
    String::from_utf8_lossy(&buf)
        .split_whitespace()
        .nth(1)?
        .parse()
        .ok()
}

fn wait_timeout(
    child: &mut std::process::Child,
    limit: Duration,
) -> anyhow::Result<Option<std::process::ExitStatus>> {
    let deadline = Instant::now() + limit;
    loop {
        if let Some(s) = child.try_wait()? {
            return Ok(Some(s));
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            return Ok(None);
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// Undoes the install test whatever happens: purges the package if installed, removes the
/// user if the test created it, and puts back what was moved aside.
struct InstallGuard {
    installed: bool,
    user_existed: bool,
    moved: Vec<(PathBuf, PathBuf)>,
}

impl InstallGuard {
    fn new() -> anyhow::Result<Self> {
        let mut guard = Self {
            installed: false,
            user_existed: getent("passwd", "nhi-sensor")?.is_some(),
            moved: Vec::new(),
        };
        for path in PACKAGE_STATE.iter().map(Path::new) {
            let aside = PathBuf::from(format!("{}.xtask-deb-test", path.display()));
            if aside.exists() {
                bail!(
                    "{} exists: a previous install test did not finish; move it back to {} \
                     (or remove it) first",
                    aside.display(),
                    path.display()
                );
            }
            if path.symlink_metadata().is_ok() {
                fs::rename(path, &aside)
                    .with_context(|| format!("moving {} aside", path.display()))?;
                eprintln!("deb: moved {} aside for the test", path.display());
                guard.moved.push((path.to_path_buf(), aside));
            }
        }
        Ok(guard)
    }

    fn purge(&mut self) -> anyhow::Result<()> {
        self.installed = false;
        run(Command::new("dpkg")
            .args(["--purge", "nhi-sensor"])
            .env("DEBIAN_FRONTEND", "noninteractive")
            .stdin(Stdio::null()))
        .context("dpkg --purge nhi-sensor")?;
        if package_installed() {
            bail!("nhi-sensor is still installed after dpkg --purge");
        }
        Ok(())
    }
}

impl Drop for InstallGuard {
    fn drop(&mut self) {
        if self.installed
            && let Err(e) = self.purge()
        {
            eprintln!("deb: cleaning up: {e:#}");
        }
        if !self.user_existed && getent("passwd", "nhi-sensor").is_ok_and(|u| u.is_some()) {
            let _ = Command::new("userdel").arg("nhi-sensor").status();
            if getent("group", "nhi-sensor").is_ok_and(|g| g.is_some()) {
                let _ = Command::new("groupdel").arg("nhi-sensor").status();
            }
        }
        for (path, aside) in self.moved.drain(..) {
            // Whatever the test left at the original path goes; the original comes back.
            if path.is_dir() {
                let _ = fs::remove_dir_all(&path);
            } else {
                let _ = fs::remove_file(&path);
            }
            match fs::rename(&aside, &path) {
                Ok(()) => eprintln!("deb: put {} back", path.display()),
                Err(e) => eprintln!(
                    "deb: could not put {} back from {}: {e}",
                    path.display(),
                    aside.display()
                ),
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn exec_expansion_follows_systemd() {
        let env = BTreeMap::from([
            ("A".to_string(), "--x 1 --y=2".to_string()),
            ("B".to_string(), "one word".to_string()),
        ]);
        assert_eq!(
            expand_exec("/bin/p run $A ${B}", &env).unwrap(),
            ["/bin/p", "run", "--x", "1", "--y=2", "one word"]
        );
        assert!(expand_exec("/bin/p $MISSING", &env).is_err());
        assert!(expand_exec("/bin/p \"quoted\"", &env).is_err());
    }

    #[test]
    fn environment_files_and_variables() {
        let env = env_file("# NHI_X=commented\nNHI_A=1\nNHI_B=\"a b\"\n\nNHI_C=\n");
        assert_eq!(env["NHI_A"], "1");
        assert_eq!(env["NHI_B"], "a b");
        assert_eq!(env["NHI_C"], "");
        assert!(!env.contains_key("NHI_X"));
        let vars: Vec<&str> =
            nhi_variables("#NHI_X=1 $NHI_SENSOR_ARGS ${NHI_Y} NHI_ nhi_z").collect();
        assert_eq!(vars, ["NHI_X", "NHI_SENSOR_ARGS", "NHI_Y"]);
    }

    #[test]
    fn flag_values() {
        let args: Vec<String> = ["run", "--config", "/a", "--x=/b"].map(String::from).into();
        assert_eq!(flag_value(&args, "--config"), Some("/a"));
        assert_eq!(flag_value(&args, "--x"), Some("/b"));
        assert_eq!(flag_value(&args, "--y"), None);
    }

    #[test]
    fn unit_settings_skip_comments() {
        let s = unit_settings("# ExecStart=/no\n[Service]\nExecStart=/bin/a b\nUser=u\n");
        assert_eq!(s["ExecStart"], ["/bin/a b"]);
        assert_eq!(s["User"], ["u"]);
    }
}
