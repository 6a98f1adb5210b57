//! Which kernel hook does each job, on this kernel.
//!
//! Every job lists its candidates best first. At start-up each candidate is *tried* — its
//! program loaded through the verifier and attached — and the first that works is chosen; a
//! kernel version is never trusted on its own. Candidates this build does not implement yet are
//! still probed (with a do-nothing program of the same type) so `nhi-sensor check` tells an
//! operator what their kernel would allow.

use std::{collections::HashMap, fmt, fs::File, path::Path};

use anyhow::Context as _;
use aya::{
    Btf, Ebpf,
    programs::{
        BtfTracePoint, CgroupAttachMode, CgroupSkb, CgroupSkbAttachType, CgroupSockAddr, FEntry,
        FExit, Lsm, RawTracePoint, TracePoint,
    },
};

#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum HookKind {
    Lsm,
    /// fentry and fexit trampolines.
    #[value(name = "fentry")]
    FEntry,
    BtfTracepoint,
    RawTracepoint,
    Tracepoint,
    CgroupSockAddr,
    CgroupSkb,
}

impl fmt::Display for HookKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            HookKind::Lsm => "lsm",
            HookKind::FEntry => "fentry",
            HookKind::BtfTracepoint => "btf-tracepoint",
            HookKind::RawTracepoint => "raw-tracepoint",
            HookKind::Tracepoint => "tracepoint",
            HookKind::CgroupSockAddr => "cgroup-sock-addr",
            HookKind::CgroupSkb => "cgroup-skb",
        })
    }
}

/// How a candidate is attached.
#[derive(Clone, Copy, Debug)]
enum Attach {
    /// One program attached to every named tracepoint of a category that exists here.
    Tracepoints {
        program: &'static str,
        category: &'static str,
        names: &'static [&'static str],
    },
    RawTracepoint {
        program: &'static str,
        name: &'static str,
    },
    BtfTracepoint {
        program: &'static str,
        name: &'static str,
    },
    /// fentry (`exit: false`) or fexit on a kernel function found in BTF. An `optional`
    /// function may be missing (static and inlined on some kernels) without failing the job.
    Trampoline {
        program: &'static str,
        function: &'static str,
        exit: bool,
        optional: bool,
    },
    /// Programs attached to the root of the cgroup v2 hierarchy (every process below it).
    Cgroup { programs: &'static [&'static str] },
    /// A `cgroup_skb/ingress` program on the root of the cgroup v2 hierarchy.
    CgroupIngress { program: &'static str },
    /// Not implemented by this build: only the program type is probed.
    ProbeOnly { program: &'static str },
}

struct Candidate {
    kind: HookKind,
    label: &'static str,
    attach: &'static [Attach],
}

struct Job {
    name: &'static str,
    what: &'static str,
    /// The sensor refuses to run without it.
    required: bool,
    candidates: &'static [Candidate],
}

const SET_ID_SYSCALLS_ENTER: &[&str] = &[
    "sys_enter_setuid",
    "sys_enter_setgid",
    "sys_enter_setreuid",
    "sys_enter_setregid",
    "sys_enter_setresuid",
    "sys_enter_setresgid",
    "sys_enter_setfsuid",
    "sys_enter_setfsgid",
    "sys_enter_setgroups",
    "sys_enter_capset",
];
const SET_ID_SYSCALLS_EXIT: &[&str] = &[
    "sys_exit_setuid",
    "sys_exit_setgid",
    "sys_exit_setreuid",
    "sys_exit_setregid",
    "sys_exit_setresuid",
    "sys_exit_setresgid",
    "sys_exit_setfsuid",
    "sys_exit_setfsgid",
    "sys_exit_setgroups",
    "sys_exit_capset",
];

const JOBS: &[Job] = &[
    Job {
        name: "process",
        what: "exec (exe, argv), fork, exit (code)",
        required: true,
        candidates: &[
            Candidate {
                kind: HookKind::BtfTracepoint,
                label: "tp_btf sched_process_{exec,fork,exit}",
                attach: &[
                    Attach::BtfTracepoint {
                        program: "btf_sched_process_exec",
                        name: "sched_process_exec",
                    },
                    Attach::BtfTracepoint {
                        program: "btf_sched_process_fork",
                        name: "sched_process_fork",
                    },
                    Attach::BtfTracepoint {
                        program: "btf_sched_process_exit",
                        name: "sched_process_exit",
                    },
                ],
            },
            Candidate {
                kind: HookKind::RawTracepoint,
                label: "raw_tp sched_process_{exec,fork,exit}",
                attach: &[
                    Attach::RawTracepoint {
                        program: "sched_process_exec",
                        name: "sched_process_exec",
                    },
                    Attach::RawTracepoint {
                        program: "sched_process_fork",
                        name: "sched_process_fork",
                    },
                    Attach::RawTracepoint {
                        program: "sched_process_exit",
                        name: "sched_process_exit",
                    },
                ],
            },
        ],
    },
    Job {
        name: "file-open",
        what: "opens of watched files (and failed opens), path resolved in the kernel",
        required: true,
        candidates: &[
            Candidate {
                kind: HookKind::Lsm,
                label: "lsm file_open (not in this build: fexit gives the fd and the outcome)",
                attach: &[Attach::ProbeOnly {
                    program: "probe_lsm",
                }],
            },
            Candidate {
                kind: HookKind::FEntry,
                label: "fexit do_sys_openat2",
                attach: &[
                    Attach::Trampoline {
                        program: "fexit_open",
                        function: "do_sys_openat2",
                        exit: true,
                        optional: false,
                    },
                    Attach::Trampoline {
                        program: "fexit_open_failed",
                        function: "do_sys_openat2",
                        exit: true,
                        optional: false,
                    },
                ],
            },
            Candidate {
                kind: HookKind::Tracepoint,
                label: "tracepoint syscalls:sys_{enter,exit}_{open,openat,openat2}",
                attach: &[
                    Attach::Tracepoints {
                        program: "file_open_exit",
                        category: "syscalls",
                        names: &["sys_exit_open", "sys_exit_openat", "sys_exit_openat2"],
                    },
                    // Failed opens: the entries keep the arguments, the exits report.
                    Attach::Tracepoints {
                        program: "file_open_failed_exit",
                        category: "syscalls",
                        names: &["sys_exit_open", "sys_exit_openat", "sys_exit_openat2"],
                    },
                    Attach::Tracepoints {
                        program: "file_open_enter",
                        category: "syscalls",
                        names: &["sys_enter_open"],
                    },
                    Attach::Tracepoints {
                        program: "file_openat_enter",
                        category: "syscalls",
                        names: &["sys_enter_openat"],
                    },
                    Attach::Tracepoints {
                        program: "file_openat2_enter",
                        category: "syscalls",
                        names: &["sys_enter_openat2"],
                    },
                ],
            },
        ],
    },
    Job {
        name: "file-read",
        what: "bytes read through watched fds, and their close",
        required: false,
        candidates: &[
            Candidate {
                kind: HookKind::FEntry,
                label: "fexit vfs_read, vfs_readv, do_splice_direct, do_splice; fentry filp_close",
                attach: &[
                    Attach::Trampoline {
                        program: "fexit_vfs_read",
                        function: "vfs_read",
                        exit: true,
                        optional: false,
                    },
                    Attach::Trampoline {
                        program: "fentry_filp_close",
                        function: "filp_close",
                        exit: false,
                        optional: false,
                    },
                    // Static functions: present unless the compiler inlined them.
                    Attach::Trampoline {
                        program: "fexit_vfs_readv",
                        function: "vfs_readv",
                        exit: true,
                        optional: true,
                    },
                    Attach::Trampoline {
                        program: "fexit_splice_direct",
                        function: "do_splice_direct",
                        exit: true,
                        optional: true,
                    },
                    Attach::Trampoline {
                        program: "fexit_splice",
                        function: "do_splice",
                        exit: true,
                        optional: true,
                    },
                ],
            },
            Candidate {
                kind: HookKind::Tracepoint,
                label: "tracepoint syscalls:sys_{enter,exit}_{read,readv,pread64,preadv,preadv2,splice,copy_file_range,sendfile64}, sys_enter_close",
                attach: &[
                    Attach::Tracepoints {
                        program: "file_read_enter",
                        category: "syscalls",
                        names: &[
                            "sys_enter_read",
                            "sys_enter_readv",
                            "sys_enter_pread64",
                            "sys_enter_preadv",
                            "sys_enter_preadv2",
                            "sys_enter_splice",
                            "sys_enter_copy_file_range",
                        ],
                    },
                    Attach::Tracepoints {
                        program: "file_sendfile_enter",
                        category: "syscalls",
                        names: &["sys_enter_sendfile64"],
                    },
                    Attach::Tracepoints {
                        program: "file_read_exit",
                        category: "syscalls",
                        names: &[
                            "sys_exit_read",
                            "sys_exit_readv",
                            "sys_exit_pread64",
                            "sys_exit_preadv",
                            "sys_exit_preadv2",
                            "sys_exit_splice",
                            "sys_exit_copy_file_range",
                            "sys_exit_sendfile64",
                        ],
                    },
                    Attach::Tracepoints {
                        program: "file_close_enter",
                        category: "syscalls",
                        names: &["sys_enter_close"],
                    },
                ],
            },
        ],
    },
    Job {
        name: "credentials",
        what: "credential changes with old and new ids",
        required: false,
        candidates: &[
            Candidate {
                kind: HookKind::FEntry,
                label: "fentry commit_creds",
                attach: &[Attach::Trampoline {
                    program: "fentry_commit_creds",
                    function: "commit_creds",
                    exit: false,
                    optional: false,
                }],
            },
            Candidate {
                kind: HookKind::Tracepoint,
                label: "tracepoint syscalls:sys_{enter,exit}_set*id,setgroups,capset",
                attach: &[
                    Attach::Tracepoints {
                        program: "cred_enter",
                        category: "syscalls",
                        names: SET_ID_SYSCALLS_ENTER,
                    },
                    Attach::Tracepoints {
                        program: "cred_exit",
                        category: "syscalls",
                        names: SET_ID_SYSCALLS_EXIT,
                    },
                ],
            },
        ],
    },
    Job {
        name: "connect",
        what: "outbound TCP connects and UDP flows, in the caller's context",
        required: false,
        candidates: &[Candidate {
            kind: HookKind::CgroupSockAddr,
            label: "cgroup connect4/connect6/sendmsg4/sendmsg6 on the cgroup v2 root",
            attach: &[Attach::Cgroup {
                programs: &[
                    "sock_connect4",
                    "sock_connect6",
                    "sock_sendmsg4",
                    "sock_sendmsg6",
                ],
            }],
        }],
    },
    Job {
        name: "dns",
        what: "DNS responses received (UDP from port 53), to name the destinations of connects",
        required: false,
        candidates: &[Candidate {
            kind: HookKind::CgroupSkb,
            label: "cgroup_skb/ingress on the cgroup v2 root",
            attach: &[Attach::CgroupIngress {
                program: "dns_ingress",
            }],
        }],
    },
    Job {
        name: "connect-return",
        what: "connects that fail before sending a SYN; connects to watched Unix sockets",
        required: false,
        candidates: &[
            Candidate {
                kind: HookKind::FEntry,
                label: "fexit __sys_connect",
                attach: &[Attach::Trampoline {
                    program: "fexit_sys_connect",
                    function: "__sys_connect",
                    exit: true,
                    optional: false,
                }],
            },
            Candidate {
                kind: HookKind::Tracepoint,
                label: "tracepoint syscalls:sys_{enter,exit}_connect",
                attach: &[
                    Attach::Tracepoints {
                        program: "net_connect_exit",
                        category: "syscalls",
                        names: &["sys_exit_connect"],
                    },
                    Attach::Tracepoints {
                        program: "net_connect_enter",
                        category: "syscalls",
                        names: &["sys_enter_connect"],
                    },
                ],
            },
        ],
    },
    Job {
        name: "tcp-outcome",
        what: "established / refused / timed out",
        required: false,
        candidates: &[Candidate {
            kind: HookKind::Tracepoint,
            label: "tracepoint sock:inet_sock_set_state",
            attach: &[Attach::Tracepoints {
                program: "net_tcp_state",
                category: "sock",
                names: &["inet_sock_set_state"],
            }],
        }],
    },
    Job {
        name: "accept",
        what: "inbound TCP connections accepted",
        required: false,
        candidates: &[
            Candidate {
                kind: HookKind::FEntry,
                label: "fexit __sys_accept4",
                attach: &[Attach::Trampoline {
                    program: "fexit_sys_accept4",
                    function: "__sys_accept4",
                    exit: true,
                    optional: false,
                }],
            },
            Candidate {
                kind: HookKind::Tracepoint,
                label: "tracepoint syscalls:sys_exit_{accept,accept4}",
                attach: &[Attach::Tracepoints {
                    program: "net_accept_exit",
                    category: "syscalls",
                    names: &["sys_exit_accept", "sys_exit_accept4"],
                }],
            },
        ],
    },
];

/// What was found for one candidate.
#[derive(Debug, Clone)]
pub struct CandidateReport {
    pub kind: HookKind,
    pub label: &'static str,
    pub implemented: bool,
    /// `Ok` when this kernel accepted (and for implemented candidates, attached) it.
    pub outcome: Result<(), String>,
    pub chosen: bool,
}

#[derive(Debug, Clone)]
pub struct JobReport {
    pub name: &'static str,
    pub what: &'static str,
    pub required: bool,
    pub candidates: Vec<CandidateReport>,
}

impl JobReport {
    pub fn chosen(&self) -> Option<&CandidateReport> {
        self.candidates.iter().find(|c| c.chosen)
    }
}

/// Tries every job's candidates in order and attaches the first that works. Returns the report
/// (also for `check`); fails only if a required job has no working candidate.
pub fn attach_all(
    ebpf: &mut Ebpf,
    btf: &Btf,
    cgroup_root: &Path,
    disabled: &[HookKind],
) -> anyhow::Result<Vec<JobReport>> {
    let mut probes: HashMap<&'static str, Result<(), String>> = HashMap::new();
    let mut reports = Vec::new();
    for job in JOBS {
        let mut report = JobReport {
            name: job.name,
            what: job.what,
            required: job.required,
            candidates: Vec::new(),
        };
        let mut have_choice = false;
        for cand in job.candidates {
            let implemented = !cand
                .attach
                .iter()
                .any(|a| matches!(a, Attach::ProbeOnly { .. }));
            let outcome = if disabled.contains(&cand.kind) {
                Err("disabled by --disable-hooks".to_string())
            } else if implemented {
                if have_choice {
                    Err("not tried: a better hook was chosen".to_string())
                } else {
                    cand.attach
                        .iter()
                        .try_for_each(|a| attach_one(ebpf, btf, cgroup_root, a))
                        .map_err(|e| format!("{e:#}"))
                }
            } else {
                cand.attach.iter().try_for_each(|a| match a {
                    Attach::ProbeOnly { program } => probes
                        .entry(program)
                        .or_insert_with(|| probe(ebpf, btf, program))
                        .clone(),
                    _ => Ok(()),
                })
            };
            let chosen = implemented && !have_choice && outcome.is_ok();
            have_choice |= chosen;
            report.candidates.push(CandidateReport {
                kind: cand.kind,
                label: cand.label,
                implemented,
                outcome,
                chosen,
            });
        }
        match report.chosen() {
            Some(c) => tracing::info!(job = job.name, hook = c.label, "hook chosen"),
            None => {
                let why: Vec<String> = report
                    .candidates
                    .iter()
                    .filter(|c| c.implemented)
                    .filter_map(|c| {
                        c.outcome
                            .as_ref()
                            .err()
                            .map(|e| format!("{}: {e}", c.label))
                    })
                    .collect();
                if job.required {
                    anyhow::bail!(
                        "no usable hook for `{}` ({}) on this kernel: {}",
                        job.name,
                        job.what,
                        why.join("; ")
                    );
                }
                tracing::warn!(job = job.name, reasons = %why.join("; "), "job disabled: no usable hook");
            }
        }
        reports.push(report);
    }
    Ok(reports)
}

fn program_mut<'a>(
    ebpf: &'a mut Ebpf,
    name: &str,
) -> anyhow::Result<&'a mut aya::programs::Program> {
    ebpf.program_mut(name)
        .with_context(|| format!("program `{name}` is missing from the eBPF object"))
}

fn attach_one(
    ebpf: &mut Ebpf,
    btf: &Btf,
    cgroup_root: &Path,
    attach: &Attach,
) -> anyhow::Result<()> {
    match *attach {
        Attach::Tracepoints {
            program,
            category,
            names,
        } => {
            let prog: &mut TracePoint = program_mut(ebpf, program)?.try_into()?;
            prog.load()
                .with_context(|| format!("loading `{program}`"))?;
            let mut attached = 0;
            let mut last_err = None;
            for name in names {
                match prog.attach(category, name) {
                    Ok(_) => attached += 1,
                    // Some syscalls do not exist on every architecture (`open` on arm64).
                    Err(e) => {
                        tracing::debug!(%category, %name, error = %e, "tracepoint not attached");
                        last_err = Some(format!("{category}:{name}: {e}"));
                    }
                }
            }
            if attached == 0 {
                anyhow::bail!(
                    "no tracepoint of {names:?} could be attached: {}",
                    last_err.unwrap_or_default()
                );
            }
        }
        Attach::RawTracepoint { program, name } => {
            let prog: &mut RawTracePoint = program_mut(ebpf, program)?.try_into()?;
            prog.load()
                .with_context(|| format!("loading `{program}`"))?;
            prog.attach(name)
                .with_context(|| format!("attaching raw tracepoint {name}"))?;
        }
        Attach::BtfTracepoint { program, name } => {
            let prog: &mut BtfTracePoint = program_mut(ebpf, program)?.try_into()?;
            prog.load(name, btf)
                .with_context(|| format!("loading `{program}` for tp_btf {name}"))?;
            prog.attach()
                .with_context(|| format!("attaching tp_btf {name}"))?;
        }
        Attach::Trampoline {
            program,
            function,
            exit,
            optional,
        } => {
            let result = (|| -> anyhow::Result<()> {
                if exit {
                    let prog: &mut FExit = program_mut(ebpf, program)?.try_into()?;
                    prog.load(function, btf)?;
                    prog.attach()?;
                } else {
                    let prog: &mut FEntry = program_mut(ebpf, program)?.try_into()?;
                    prog.load(function, btf)?;
                    prog.attach()?;
                }
                Ok(())
            })();
            match result {
                Ok(()) => {}
                Err(e) if optional => {
                    tracing::info!(%function, error = %format!("{e:#}"), "optional hook not attached");
                }
                Err(e) => {
                    return Err(e.context(format!(
                        "{} {function}",
                        if exit { "fexit" } else { "fentry" }
                    )));
                }
            }
        }
        Attach::Cgroup { programs } => {
            let cgroup = File::open(cgroup_root)
                .with_context(|| format!("opening cgroup v2 root {}", cgroup_root.display()))?;
            for program in programs {
                let prog: &mut CgroupSockAddr = program_mut(ebpf, program)?.try_into()?;
                prog.load()
                    .with_context(|| format!("loading `{program}`"))?;
                // Since 5.7 aya attaches with a BPF link, which always coexists with other
                // programs on the cgroup (the kernel rejects attach flags on link creation), and
                // is detached when the sensor exits, even if it is killed.
                prog.attach(&cgroup, CgroupAttachMode::Single)
                    .with_context(|| {
                        format!("attaching `{program}` to {}", cgroup_root.display())
                    })?;
            }
        }
        Attach::CgroupIngress { program } => {
            let cgroup = File::open(cgroup_root)
                .with_context(|| format!("opening cgroup v2 root {}", cgroup_root.display()))?;
            let prog: &mut CgroupSkb = program_mut(ebpf, program)?.try_into()?;
            prog.load()
                .with_context(|| format!("loading `{program}`"))?;
            // A BPF link (as for the sock_addr programs above): it coexists with other
            // programs on the root and goes away with the sensor. The program passes every
            // packet, so it never changes what other programs decide.
            prog.attach(
                &cgroup,
                CgroupSkbAttachType::Ingress,
                CgroupAttachMode::Single,
            )
            .with_context(|| format!("attaching `{program}` to {}", cgroup_root.display()))?;
        }
        Attach::ProbeOnly { .. } => {}
    }
    Ok(())
}

/// Loads a do-nothing program of a type this build does not use yet, to learn whether the
/// kernel would accept it. It is never attached, except that a loaded LSM program is useless
/// unless the BPF LSM is active, which `/sys/kernel/security/lsm` tells.
fn probe(ebpf: &mut Ebpf, btf: &Btf, program: &str) -> Result<(), String> {
    let result = (|| -> anyhow::Result<()> {
        match program {
            "probe_lsm" => {
                let active =
                    std::fs::read_to_string("/sys/kernel/security/lsm").unwrap_or_default();
                if !active.split(',').any(|l| l.trim() == "bpf") {
                    anyhow::bail!(
                        "the BPF LSM is not active (`bpf` missing from /sys/kernel/security/lsm)"
                    );
                }
                let prog: &mut Lsm = program_mut(ebpf, program)?.try_into()?;
                prog.load("file_open", btf)?;
            }
            other => anyhow::bail!("unknown probe program {other}"),
        }
        Ok(())
    })();
    result.map_err(|e| format!("{e:#}"))
}

/// Human-readable report for `nhi-sensor check`.
pub fn render(reports: &[JobReport]) -> String {
    use std::fmt::Write as _;
    let mut out = String::new();
    for job in reports {
        let _ = writeln!(
            out,
            "{} — {}{}",
            job.name,
            job.what,
            if job.required { " (required)" } else { "" }
        );
        for c in &job.candidates {
            let status = match (&c.outcome, c.implemented) {
                (Ok(()), true) if c.chosen => "chosen".to_string(),
                (Ok(()), true) => "available".to_string(),
                (Ok(()), false) => "kernel allows it; not implemented in this build".to_string(),
                (Err(e), _) if e.starts_with("not tried") || e.starts_with("disabled") => e.clone(),
                (Err(e), _) => format!("unavailable: {e}"),
            };
            let _ = writeln!(
                out,
                "  [{}] {:<16} {} — {}",
                if c.chosen { "x" } else { " " },
                c.kind.to_string(),
                c.label,
                status
            );
        }
        if job.chosen().is_none() {
            let _ = writeln!(out, "  => no usable hook: this job is disabled");
        }
    }
    out
}
