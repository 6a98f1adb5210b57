//! A request/response server under load: redis-server on loopback, driven by redis-benchmark
//! (Debian's `redis-server` and `redis-tools`, installed by a full run when missing).

use std::{
    io::{Read as _, Write as _},
    path::PathBuf,
    process::{Command, Stdio},
    time::{Duration, Instant},
};

use anyhow::{Context as _, bail};

use super::{
    load::Outcome,
    procs::{Guarded, free_port, output},
};

/// A redis-server on a loopback port, without persistence; stopped on drop.
pub struct Redis {
    _server: Guarded,
    port: u16,
    benchmark: PathBuf,
}

impl Redis {
    /// Starts redis-server; installs the Debian packages first when they are missing and
    /// `install` is set.
    pub fn start(install: bool) -> anyhow::Result<Redis> {
        if (find("redis-server").is_none() || find("redis-benchmark").is_none()) && install {
            say!("installing redis-server and redis-tools (apt)");
            let apt = |args: &[&str]| {
                Command::new("apt-get")
                    .args(args)
                    .env("DEBIAN_FRONTEND", "noninteractive")
                    .stdin(Stdio::null())
                    .stdout(Stdio::null())
                    .status()
                    .is_ok_and(|s| s.success())
            };
            let install = [
                "install",
                "-y",
                "-q",
                "--no-install-recommends",
                "redis-server",
                "redis-tools",
            ];
            if !apt(&install) {
                // A stale package index is the usual reason.
                apt(&["update", "-q"]);
                apt(&install);
            }
        }
        let (Some(server), Some(benchmark)) = (find("redis-server"), find("redis-benchmark"))
        else {
            bail!(
                "redis-server/redis-benchmark not installed{}",
                if install {
                    " and `apt-get install redis-server redis-tools` failed"
                } else {
                    " (a smoke run does not install them; a full run does)"
                }
            );
        };
        let port = free_port()?;
        let server = Guarded::spawn(
            "redis-server",
            Command::new(server).args([
                "--port",
                &port.to_string(),
                "--bind",
                "127.0.0.1",
                "--save",
                "",
                "--appendonly",
                "no",
                "--daemonize",
                "no",
                "--protected-mode",
                "no",
                "--logfile",
                "",
            ]),
        )?;
        let deadline = Instant::now() + Duration::from_secs(10);
        while !ping(port) {
            if Instant::now() > deadline {
                bail!("redis-server did not answer PING on port {port}");
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        Ok(Redis {
            _server: server,
            port,
            benchmark,
        })
    }

    /// `redis-benchmark -q -n N -t TEST --csv` (50 clients, its default): requests per second
    /// as it reports them.
    pub fn benchmark(&self, test: &str, n: u64) -> anyhow::Result<Outcome> {
        let out = output(Command::new(&self.benchmark).args([
            "-h",
            "127.0.0.1",
            "-p",
            &self.port.to_string(),
            "-q",
            "-n",
            &n.to_string(),
            "-t",
            test,
            "--csv",
        ]))?;
        // `"test","rps",...` then `"SET","81967.21",...`.
        let rps = out
            .lines()
            .filter_map(|l| {
                let mut f = l.split(',').map(|x| x.trim_matches('"'));
                let name = f.next()?;
                let rps: f64 = f.next()?.parse().ok()?;
                name.eq_ignore_ascii_case(test).then_some(rps)
            })
            .next()
            .with_context(|| format!("no {test} result in redis-benchmark's output: {out}"))?;
        Ok(Outcome {
            ops: n,
            secs: n as f64 / rps,
        })
    }
}

fn find(name: &str) -> Option<PathBuf> {
    std::env::var_os("PATH")
        .map(|p| std::env::split_paths(&p).collect::<Vec<_>>())
        .unwrap_or_default()
        .into_iter()
        .chain([PathBuf::from("/usr/bin"), PathBuf::from("/usr/sbin")])
        .map(|d| d.join(name))
        .find(|p| p.is_file())
}

fn ping(port: u16) -> bool {
    let Ok(mut c) = std::net::TcpStream::connect(("127.0.0.1", port)) else {
        return false;
    };
    let _ = c.set_read_timeout(Some(Duration::from_secs(1)));
    let mut buf = [0u8; 7];
    c.write_all(b"PING\r\n").is_ok() && c.read_exact(&mut buf).is_ok() && &buf == b"+PONG\r\n"
}
