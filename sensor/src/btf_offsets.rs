//! Kernel struct offsets, read from the running kernel's BTF.
//!
//! rustc cannot emit CO-RE relocations, so the eBPF programs read `task_struct`, `file`, `sock`,
//! ... at byte offsets that userspace computes here, from `/sys/kernel/btf/vmlinux`, and hands
//! them over as one [`KernelOffsets`] load-time global.
//!
//! How it works:
//! - `FIELDS` is the whole specification: one line per [`KernelOffsets`] field, naming the
//!   struct and the member path it is measured along (`file_f_path_dentry = file.f_path.dentry`).
//! - A path is resolved the way a C compiler resolves `offsetof(struct file, f_path.dentry)`: each
//!   name is looked up in the current struct or union *including inside its unnamed struct/union
//!   members* (on 6.18 `file.f_path`, `dentry.d_name` and `qstr.len` all sit in unnamed unions),
//!   and the offsets along the way are summed. Typedefs and `const`/`volatile` are followed so
//!   `kuid_t uid` or `const struct path f_path` can be looked inside.
//! - A member that is absent is not an error by itself: the lookup says what is missing, and the
//!   caller decides, from the field's `Need`, whether that fails the load or only marks the
//!   field [`MISSING`] (the programs check for it). Malformed or unusable BTF (a bit-level
//!   offset, a path through a pointer) is always an error.

use std::{
    collections::HashMap,
    fs,
    io::ErrorKind,
    path::Path,
    time::{Duration, Instant},
};

use anyhow::{Context, Result, bail};
use btf_rs::{Backend, Btf, BtfType, Member, Struct, Type};
use sensor_common::{KernelOffsets, offsets::MISSING};

/// Where the kernel exposes its own BTF (CONFIG_DEBUG_INFO_BTF).
pub const VMLINUX_BTF: &str = "/sys/kernel/btf/vmlinux";

/// The offsets for one kernel, and which optional members that kernel does not have.
#[derive(Clone, Debug)]
pub struct ResolvedOffsets {
    pub offsets: KernelOffsets,
    /// Names of the [`KernelOffsets`] fields (e.g. `"task_loginuid"`) left at [`MISSING`] because
    /// the kernel lacks the member; the features reading them degrade, nothing else does.
    pub missing_optional: Vec<&'static str>,
}

/// [`resolve`], explaining a missing file as a kernel built without BTF.
pub fn resolve_kernel_btf(path: &Path) -> Result<ResolvedOffsets> {
    // Only "not found" gets the kernel-config explanation; any other error (permissions, ...) is
    // reported as is by `resolve`.
    if let Err(err) = fs::metadata(path)
        && err.kind() == ErrorKind::NotFound
    {
        bail!(
            "{} does not exist: the running kernel does not expose its BTF type information, \
             which nhi-sensor needs to locate kernel struct members; use a kernel built with \
             CONFIG_DEBUG_INFO_BTF=y",
            path.display()
        );
    }
    resolve(path)
}

/// Resolves every [`KernelOffsets`] field from the BTF file at `btf_path` (a `vmlinux` BTF blob,
/// as found in `/sys/kernel/btf/vmlinux`).
pub fn resolve(btf_path: &Path) -> Result<ResolvedOffsets> {
    let started = Instant::now();
    let btf = parse(btf_path)?;
    let parsed = started.elapsed();
    let resolved = resolve_fields(&btf, FIELDS).with_context(|| {
        format!(
            "cannot resolve kernel struct offsets from {}",
            btf_path.display()
        )
    })?;
    tracing::debug!(
        path = %btf_path.display(),
        parse_ms = millis(parsed),
        resolve_ms = millis(started.elapsed() - parsed),
        missing_optional = ?resolved.missing_optional,
        "resolved kernel struct offsets from BTF"
    );
    Ok(resolved)
}

/// Opens the BTF file, memory-mapped if the kernel allows it.
///
/// `btf-rs` has two backends. `Mmap` only indexes the types (~1.5 ms here) and scans them for
/// each lookup by name (~1 ms per distinct struct, ~35 of them): 40-100 ms and ~3 MB peak RSS
/// in a release build on 6.18. `Cache` decodes every type and string up front: 150-250 ms and
/// ~40 MB peak RSS, for lookups made only once. So `Mmap` first, and `Cache` (plain reads) when
/// the file cannot be mmapped, as older kernels' sysfs BTF cannot. (Debug builds of `btf-rs`
/// are ~40x slower at the `Mmap` scans: ~2 s.) Mapping is sound as long as the file does not
/// change underneath, which the kernel's own BTF never does.
fn parse(btf_path: &Path) -> Result<Btf> {
    Btf::from_file_with_backend(btf_path, Backend::Mmap)
        .or_else(|err| {
            tracing::debug!(
                path = %btf_path.display(),
                "cannot mmap BTF ({err}); reading it into memory instead"
            );
            Btf::from_file_with_backend(btf_path, Backend::Cache)
        })
        .with_context(|| format!("cannot parse BTF from {}", btf_path.display()))
}

fn millis(d: Duration) -> f64 {
    d.as_secs_f64() * 1e3
}

/// What a field measures.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Measure {
    /// Byte offset of the member path from the start of the root struct.
    Offset,
    /// Byte size of the last member of the path, or of the root struct if the path is empty.
    Size,
}

/// Whether the sensor can run without the member.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Need {
    /// Absent member: resolving fails.
    Required,
    /// Absent member: the field stays [`MISSING`] and is listed in
    /// [`ResolvedOffsets::missing_optional`]; the programs check for [`MISSING`] before using it.
    Optional,
}

/// One [`KernelOffsets`] field and where in the kernel's types it comes from.
struct Field {
    /// The [`KernelOffsets`] field's name, for errors and `missing_optional`.
    name: &'static str,
    /// Borrows that field (a plain fn pointer keeps the table `const`).
    slot: fn(&mut KernelOffsets) -> &mut u32,
    /// The struct the offset is measured from.
    root: &'static str,
    /// Member names, outermost first; unnamed struct/union members in between are implicit.
    path: &'static [&'static str],
    measure: Measure,
    need: Need,
}

/// Builds a [`Field`] from `KIND field = root.member.member`, KIND being `required`, `optional`
/// (offsets) or `size_of` (a byte size; the path may be just the struct).
macro_rules! field {
    (required $field:ident = $root:ident $(. $member:ident)+) => {
        field!(@ $field, $root, [$($member),+], Measure::Offset, Need::Required)
    };
    (optional $field:ident = $root:ident $(. $member:ident)+) => {
        field!(@ $field, $root, [$($member),+], Measure::Offset, Need::Optional)
    };
    (size_of $field:ident = $root:ident $(. $member:ident)*) => {
        field!(@ $field, $root, [$($member),*], Measure::Size, Need::Required)
    };
    (@ $field:ident, $root:ident, [$($member:ident),*], $measure:expr, $need:expr) => {
        Field {
            name: stringify!($field),
            slot: |offsets| &mut offsets.$field,
            root: stringify!($root),
            path: &[$(stringify!($member)),*],
            measure: $measure,
            need: $need,
        }
    };
}

/// Every [`KernelOffsets`] field, in declaration order (a test checks that none is left out).
///
/// `kuid_t`/`kgid_t` members are resolved down to `.val` so a kernel that ever changed the
/// wrapper fails loudly instead of silently reading the wrong bytes. `sock_common` is resolved
/// through `sock.__sk_common` rather than assumed to be at offset 0.
const FIELDS: &[Field] = &[
    field!(required task_real_parent = task_struct.real_parent),
    field!(required task_group_leader = task_struct.group_leader),
    field!(required task_tgid = task_struct.tgid),
    field!(required task_pid = task_struct.pid),
    field!(required task_start_boottime = task_struct.start_boottime),
    field!(required task_real_cred = task_struct.real_cred),
    // `#ifdef CONFIG_AUDIT` in `task_struct`.
    field!(optional task_loginuid = task_struct.loginuid),
    field!(optional task_sessionid = task_struct.sessionid),
    field!(required task_signal = task_struct.signal),
    field!(required task_files = task_struct.files),
    field!(required task_fs = task_struct.fs),
    field!(required task_nsproxy = task_struct.nsproxy),
    field!(required task_mm = task_struct.mm),
    field!(required task_thread_pid = task_struct.thread_pid),
    field!(required task_exit_code = task_struct.exit_code),
    field!(required cred_uid = cred.uid.val),
    field!(required cred_gid = cred.gid.val),
    field!(required cred_suid = cred.suid.val),
    field!(required cred_sgid = cred.sgid.val),
    field!(required cred_euid = cred.euid.val),
    field!(required cred_egid = cred.egid.val),
    field!(required cred_fsuid = cred.fsuid.val),
    field!(required cred_fsgid = cred.fsgid.val),
    field!(required cred_cap_effective = cred.cap_effective),
    field!(required cred_cap_permitted = cred.cap_permitted),
    field!(required cred_user_ns = cred.user_ns),
    field!(required signal_live = signal_struct.live),
    // The controlling tty only labels events; without CONFIG_TTY there may be no `tty_struct`.
    field!(optional signal_tty = signal_struct.tty),
    field!(optional tty_name = tty_struct.name),
    field!(required files_fdt = files_struct.fdt),
    field!(required fdtable_max_fds = fdtable.max_fds),
    field!(required fdtable_fd = fdtable.fd),
    field!(required file_f_path_mnt = file.f_path.mnt),
    field!(required file_f_path_dentry = file.f_path.dentry),
    field!(required file_f_flags = file.f_flags),
    field!(required file_f_inode = file.f_inode),
    field!(required file_private_data = file.private_data),
    field!(required dentry_d_parent = dentry.d_parent),
    field!(required dentry_d_name_len = dentry.d_name.len),
    field!(required dentry_d_name_name = dentry.d_name.name),
    field!(required dentry_d_inode = dentry.d_inode),
    field!(required inode_i_ino = inode.i_ino),
    field!(required inode_i_mode = inode.i_mode),
    field!(required inode_i_sb = inode.i_sb),
    field!(required sb_s_dev = super_block.s_dev),
    field!(required vfsmount_mnt_root = vfsmount.mnt_root),
    field!(required mount_mnt = mount.mnt),
    field!(required mount_mnt_parent = mount.mnt_parent),
    field!(required mount_mnt_mountpoint = mount.mnt_mountpoint),
    field!(required fs_root_mnt = fs_struct.root.mnt),
    field!(required fs_root_dentry = fs_struct.root.dentry),
    field!(required fs_pwd_mnt = fs_struct.pwd.mnt),
    field!(required fs_pwd_dentry = fs_struct.pwd.dentry),
    field!(required nsproxy_uts_ns = nsproxy.uts_ns),
    field!(required nsproxy_ipc_ns = nsproxy.ipc_ns),
    field!(required nsproxy_mnt_ns = nsproxy.mnt_ns),
    field!(required nsproxy_net_ns = nsproxy.net_ns),
    // Cgroup namespaces: 4.6+, CONFIG_CGROUPS.
    field!(optional nsproxy_cgroup_ns = nsproxy.cgroup_ns),
    field!(required uts_ns_inum = uts_namespace.ns.inum),
    field!(required ipc_ns_inum = ipc_namespace.ns.inum),
    field!(required mnt_ns_inum = mnt_namespace.ns.inum),
    field!(required net_ns_inum = net.ns.inum),
    field!(optional cgroup_ns_inum = cgroup_namespace.ns.inum),
    field!(required user_ns_inum = user_namespace.ns.inum),
    field!(required pid_ns_inum = pid_namespace.ns.inum),
    field!(required pid_level = pid.level),
    field!(required pid_numbers = pid.numbers),
    field!(size_of upid_size = upid),
    field!(required upid_ns = upid.ns),
    field!(required mm_arg_start = mm_struct.arg_start),
    field!(required mm_arg_end = mm_struct.arg_end),
    field!(required mm_env_start = mm_struct.env_start),
    field!(required task_flags = task_struct.flags),
    field!(required mm_env_end = mm_struct.env_end),
    // Only enriches exec events, which also carry the exec'd file name from `linux_binprm`.
    field!(optional mm_exe_file = mm_struct.exe_file),
    field!(required binprm_filename = linux_binprm.filename),
    field!(required socket_sk = socket.sk),
    field!(required socket_file = socket.file),
    field!(required sk_family = sock.__sk_common.skc_family),
    field!(required sk_daddr = sock.__sk_common.skc_daddr),
    field!(required sk_rcv_saddr = sock.__sk_common.skc_rcv_saddr),
    field!(required sk_dport = sock.__sk_common.skc_dport),
    field!(required sk_num = sock.__sk_common.skc_num),
    field!(required sk_v6_daddr = sock.__sk_common.skc_v6_daddr),
    field!(required sk_v6_rcv_saddr = sock.__sk_common.skc_v6_rcv_saddr),
    // Programs that have the socket can also get its cookie from `bpf_get_socket_cookie()`.
    field!(optional sk_cookie = sock.__sk_common.skc_cookie),
    field!(required sk_err = sock.sk_err),
    field!(required sk_protocol = sock.sk_protocol),
    field!(size_of sk_protocol_size = sock.sk_protocol),
];

/// Fills a [`KernelOffsets`] from `fields`, starting from [`KernelOffsets::UNSET`].
fn resolve_fields(btf: &Btf, fields: &[Field]) -> Result<ResolvedOffsets> {
    let mut structs = StructIndex::default();
    let mut offsets = KernelOffsets::UNSET;
    let mut missing_optional = Vec::new();
    for field in fields {
        let value = resolve_field(btf, &mut structs, field)
            .with_context(|| format!("cannot fill KernelOffsets::{}", field.name))?;
        match value {
            Some(value) => *(field.slot)(&mut offsets) = value,
            None => missing_optional.push(field.name),
        }
    }
    Ok(ResolvedOffsets {
        offsets,
        missing_optional,
    })
}

/// One field's value, `None` if it is optional and this kernel lacks the member.
fn resolve_field(btf: &Btf, structs: &mut StructIndex, field: &Field) -> Result<Option<u32>> {
    match lookup(btf, structs, field.root, field.path, field.measure)? {
        Lookup::Found(value) => Ok(Some(value)),
        Lookup::Missing(what) if field.need == Need::Optional => {
            tracing::debug!(
                field = field.name,
                "kernel BTF has no {what}: optional, left unset"
            );
            Ok(None)
        }
        Lookup::Missing(what) => bail!("kernel BTF has no {what}"),
    }
}

/// The outcome of looking a path up: a value, or what is missing (`member `file.f_path``,
/// `struct `mount``) for the caller to report or tolerate.
#[derive(Debug, PartialEq, Eq)]
enum Lookup<T> {
    Found(T),
    Missing(String),
}

/// Struct types by name, looked up once each: many fields share a root struct.
#[derive(Default)]
struct StructIndex(HashMap<String, Vec<Struct>>);

impl StructIndex {
    /// Every `struct <name>` in the BTF. Normally one; deduplication can leave several
    /// definitions of the same name, which [`lookup`] requires to agree. Unions and forward
    /// declarations of that name are not candidates.
    fn get(&mut self, btf: &Btf, name: &str) -> Result<&[Struct]> {
        if !self.0.contains_key(name) {
            let structs = btf
                .resolve_types_by_name(name)
                .with_context(|| format!("cannot look up `struct {name}`"))?
                .into_iter()
                .filter_map(|ty| match ty {
                    Type::Struct(st) => Some(st),
                    _ => None,
                })
                .collect();
            self.0.insert(name.to_owned(), structs);
        }
        Ok(&self.0[name])
    }
}

/// Measures `root.path` on every definition of `struct root`; they must agree.
fn lookup(
    btf: &Btf,
    structs: &mut StructIndex,
    root: &str,
    path: &[&str],
    measure: Measure,
) -> Result<Lookup<u32>> {
    let candidates = structs.get(btf, root)?;
    let mut outcome = Lookup::Missing(format!("struct `{root}`"));
    for st in candidates {
        let bytes = match measure {
            Measure::Offset => offset_of(btf, st, root, path)?,
            Measure::Size => size_of(btf, st, root, path)?,
        };
        match (&outcome, bytes) {
            (Lookup::Found(prev), Lookup::Found(this)) if *prev != this => bail!(
                "BTF has several `struct {root}` that disagree on `{}` ({prev} vs {this} bytes)",
                dotted(root, path)
            ),
            (Lookup::Found(_), _) => {}
            (Lookup::Missing(_), bytes) => outcome = bytes,
        }
    }
    Ok(outcome)
}

/// Byte offset of `root.path` from the start of `root`. A bitfield is accepted only when it
/// occupies whole bytes (old kernels' `sk_protocol:8`), so a byte read at the offset is exact.
fn offset_of(btf: &Btf, root: &Struct, root_name: &str, path: &[&str]) -> Result<Lookup<u32>> {
    let found = match locate(btf, root, root_name, path)? {
        Lookup::Found(found) => found,
        Lookup::Missing(what) => return Ok(Lookup::Missing(what)),
    };
    let name = dotted(root_name, path);
    if found.bit_offset % 8 != 0 {
        bail!(
            "`{name}` is at bit offset {}, not on a byte boundary",
            found.bit_offset
        );
    }
    if let Some(bits) = bitfield_bits(&found.member)
        && bits % 8 != 0
    {
        bail!("`{name}` is a {bits}-bit bitfield, not whole bytes");
    }
    to_u32(found.bit_offset / 8, &name).map(Lookup::Found)
}

/// Byte size of the last member of `root.path`, or of `root` itself when `path` is empty.
fn size_of(btf: &Btf, root: &Struct, root_name: &str, path: &[&str]) -> Result<Lookup<u32>> {
    let name = dotted(root_name, path);
    if path.is_empty() {
        return to_u32(root.size() as u64, &name).map(Lookup::Found);
    }
    let found = match locate(btf, root, root_name, path)? {
        Lookup::Found(found) => found,
        Lookup::Missing(what) => return Ok(Lookup::Missing(what)),
    };
    let bytes = match bitfield_bits(&found.member) {
        Some(bits) if bits % 8 == 0 => u64::from(bits / 8),
        Some(bits) => bail!("`{name}` is a {bits}-bit bitfield, not whole bytes"),
        None => type_size(&strip_modifiers(btf, member_type(&found.member)?)?)
            .with_context(|| format!("cannot size `{name}`"))?,
    };
    to_u32(bytes, &name).map(Lookup::Found)
}

/// The end of a member path: its last member and its offset in bits from the root's start.
struct Located {
    bit_offset: u64,
    member: Member,
}

/// Follows `path` from `root`, summing member offsets. Every member but the last must be an
/// embedded struct or union (a pointer would need a read, not an offset).
fn locate(btf: &Btf, root: &Struct, root_name: &str, path: &[&str]) -> Result<Lookup<Located>> {
    let Some((last, parents)) = path.split_last() else {
        bail!("empty member path for `struct {root_name}`");
    };
    let mut container = root.clone();
    let mut bit_offset = 0;
    for (depth, name) in parents.iter().enumerate() {
        let walked = dotted(root_name, &path[..=depth]);
        let Some((offset, member)) = find_member(btf, &container, name)? else {
            return Ok(Lookup::Missing(format!("member `{walked}`")));
        };
        bit_offset += offset;
        container = match strip_modifiers(btf, member_type(&member)?)? {
            Type::Struct(st) | Type::Union(st) => st,
            other => bail!(
                "`{walked}` is a {}, not an embedded struct or union: cannot look inside it",
                other.name()
            ),
        };
    }
    let Some((offset, member)) = find_member(btf, &container, last)? else {
        return Ok(Lookup::Missing(format!(
            "member `{}`",
            dotted(root_name, path)
        )));
    };
    Ok(Lookup::Found(Located {
        bit_offset: bit_offset + offset,
        member,
    }))
}

/// Finds the member `name` of `container`, looking inside unnamed struct/union members (C11
/// anonymous members) as C does. Returns its bit offset from the start of `container`.
///
/// C forbids the same name twice across a struct and its anonymous members, so the first match
/// in declaration order is the only one.
fn find_member(btf: &Btf, container: &Struct, name: &str) -> Result<Option<(u64, Member)>> {
    for member in &container.members {
        let member_name = btf
            .resolve_name(member)
            .context("cannot resolve a member name")?;
        if member_name == name {
            return Ok(Some((u64::from(member.bit_offset()), member.clone())));
        }
        if !member_name.is_empty() {
            continue;
        }
        // An unnamed member: only a struct or union can hold names (an unnamed bitfield is
        // padding).
        if let Type::Struct(inner) | Type::Union(inner) =
            strip_modifiers(btf, member_type(member)?)?
            && let Some((offset, found)) = find_member(btf, &inner, name)?
        {
            return Ok(Some((u64::from(member.bit_offset()) + offset, found)));
        }
    }
    Ok(None)
}

/// Member offsets are in bits. For structs with BTF's `kind_flag` set, `btf-rs` already splits
/// the raw field into the bit offset (low 24 bits, [`Member::bit_offset`]) and the bitfield
/// width (high 8 bits); a width of 0 there means "not a bitfield". Without `kind_flag` a
/// bitfield would be encoded in the member's int type, which `btf-rs` does not expose; but
/// pahole/libbpf set `kind_flag` on every struct that has a bitfield, and have since BTF gained
/// it (kernel 5.0, before CONFIG_DEBUG_INFO_BTF existed).
///
/// Bit offsets count in memory order on little-endian targets, the ones this sensor supports.
fn bitfield_bits(member: &Member) -> Option<u32> {
    member.bitfield_size().filter(|&bits| bits != 0)
}

fn member_type(member: &Member) -> Result<u32> {
    member.get_type_id().context("BTF member without a type id")
}

/// Resolves type `id`, skipping typedefs and qualifiers (`const`, `volatile`, `restrict`, type
/// tags such as `__rcu`), which change neither layout nor members.
fn strip_modifiers(btf: &Btf, mut id: u32) -> Result<Type> {
    // Real chains are a few links long; the bound only guards against a malformed cycle.
    const MAX_CHAIN: usize = 32;
    for _ in 0..MAX_CHAIN {
        let ty = btf
            .resolve_type_by_id(id)
            .with_context(|| format!("cannot resolve BTF type id {id}"))?;
        match &ty {
            Type::Typedef(_)
            | Type::Const(_)
            | Type::Volatile(_)
            | Type::Restrict(_)
            | Type::TypeTag(_) => {
                id = ty
                    .as_btf_type()
                    .and_then(|t| t.get_type_id())
                    .with_context(|| format!("BTF {} {id} refers to no type", ty.name()))?;
            }
            _ => return Ok(ty),
        }
    }
    bail!("BTF type chain from id {id} is longer than {MAX_CHAIN} links")
}

/// Byte size of a type that has one in BTF. Pointers are not sized: BTF leaves their size to
/// the architecture and no field needs one.
fn type_size(ty: &Type) -> Result<u64> {
    let bytes = match ty {
        Type::Int(int) => int.size(),
        Type::Struct(st) | Type::Union(st) => st.size(),
        Type::Enum(en) => en.size(),
        Type::Enum64(en) => en.size(),
        Type::Float(float) => float.size(),
        other => bail!("a BTF {} has no size of its own", other.name()),
    };
    Ok(bytes as u64)
}

/// Converts a byte count for [`KernelOffsets`], where [`MISSING`] (`u32::MAX`) is reserved.
fn to_u32(bytes: u64, name: &str) -> Result<u32> {
    match u32::try_from(bytes) {
        Ok(value) if value != MISSING => Ok(value),
        _ => bail!("`{name}` is {bytes} bytes, too large for a KernelOffsets field"),
    }
}

/// `root.a.b`, for messages.
fn dotted(root: &str, path: &[&str]) -> String {
    let mut name = root.to_owned();
    for member in path {
        name.push('.');
        name.push_str(member);
    }
    name
}

#[cfg(test)]
mod tests {
    use std::{collections::HashSet, mem, process::Command, sync::OnceLock};

    use serde_json::Value;

    use super::*;

    /// This machine's kernel BTF, or `None` (with a message) where there is none to test with.
    fn kernel_btf() -> Option<&'static Path> {
        let path = Path::new(VMLINUX_BTF);
        if path.exists() {
            Some(path)
        } else {
            eprintln!(
                "skipping: {VMLINUX_BTF} does not exist (kernel without CONFIG_DEBUG_INFO_BTF)"
            );
            None
        }
    }

    /// [`resolve_running_kernel`], once for all tests (a debug build takes seconds).
    fn resolved() -> &'static ResolvedOffsets {
        static RESOLVED: OnceLock<ResolvedOffsets> = OnceLock::new();
        RESOLVED.get_or_init(|| {
            resolve_kernel_btf(Path::new(VMLINUX_BTF)).expect("resolving this kernel's offsets")
        })
    }

    /// bpftool's reading of this machine's kernel BTF, once for all tests; `None` (with a
    /// message) without BTF or bpftool.
    fn bpftool() -> Option<&'static Bpftool> {
        static DUMP: OnceLock<Option<Bpftool>> = OnceLock::new();
        DUMP.get_or_init(|| kernel_btf().and_then(Bpftool::dump))
            .as_ref()
    }

    fn value_of(offsets: &KernelOffsets, field: &Field) -> u32 {
        let mut copy = *offsets;
        *(field.slot)(&mut copy)
    }

    /// Each table line names its field (`stringify!` of the field it borrows), so distinct names
    /// are distinct fields; `KernelOffsets` is all `u32`s, so its size counts its fields.
    #[test]
    fn table_covers_every_field_exactly_once() {
        let names: HashSet<_> = FIELDS.iter().map(|f| f.name).collect();
        assert_eq!(names.len(), FIELDS.len(), "a field appears twice in FIELDS");
        assert_eq!(
            FIELDS.len(),
            mem::size_of::<KernelOffsets>() / mem::size_of::<u32>(),
            "FIELDS does not cover every KernelOffsets field"
        );
    }

    #[test]
    fn resolves_every_required_field_on_this_kernel() {
        if kernel_btf().is_none() {
            return;
        }
        let resolved = resolved();
        for field in FIELDS {
            let value = value_of(&resolved.offsets, field);
            let listed = resolved.missing_optional.contains(&field.name);
            match field.need {
                Need::Required => assert_ne!(value, MISSING, "{} unset", field.name),
                Need::Optional => assert_eq!(value == MISSING, listed, "{}", field.name),
            }
        }
        assert!(resolved.missing_optional.iter().all(|name| {
            FIELDS
                .iter()
                .any(|f| f.name == *name && f.need == Need::Optional)
        }));
    }

    /// Every value, checked against bpftool's (libbpf's) own decoding of the same BTF.
    #[test]
    fn every_field_matches_bpftool() {
        let Some(dump) = bpftool() else {
            return;
        };
        let resolved = resolved();
        let mismatches: Vec<String> = FIELDS
            .iter()
            .filter_map(|field| {
                let ours = value_of(&resolved.offsets, field);
                let theirs = dump.measure(field).unwrap_or(MISSING);
                (ours != theirs).then(|| format!("{}: ours {ours}, bpftool {theirs}", field.name))
            })
            .collect();
        assert!(mismatches.is_empty(), "{mismatches:#?}");
    }

    /// Layout facts that follow from the C definitions, whatever the member offsets: they check
    /// the sums along paths rather than re-running the same walk. Pointers are 8 bytes.
    #[test]
    #[cfg(all(target_pointer_width = "64", target_endian = "little"))]
    fn spot_checks_against_bpftool() {
        let Some(dump) = bpftool() else {
            return;
        };
        let o = &resolved().offsets;
        let at = |root: &str, path: &[&str]| dump.offset(root, path).expect("in bpftool's dump");

        assert_eq!(o.task_tgid, at("task_struct", &["tgid"]));
        // struct path { struct vfsmount *mnt; struct dentry *dentry; }
        assert_eq!(o.file_f_path_mnt, at("file", &["f_path"]));
        assert_eq!(o.file_f_path_dentry, at("file", &["f_path"]) + 8);
        assert_eq!(o.fs_root_dentry, o.fs_root_mnt + 8);
        // struct qstr { union { struct { u32 hash; u32 len; }; u64 hash_len; }; const char *name; }
        assert_eq!(o.dentry_d_name_len, at("dentry", &["d_name"]) + 4);
        assert_eq!(o.dentry_d_name_name, at("dentry", &["d_name"]) + 8);
        assert_eq!(o.mount_mnt, at("mount", &["mnt"]));
        // sock_common starts { daddr, rcv_saddr, hash, dport, num } (4 + 4 + 4 + 2 + 2 bytes).
        let sk_common = at("sock", &["__sk_common"]);
        assert_eq!(o.sk_dport, sk_common + at("sock_common", &["skc_dport"]));
        assert_eq!(o.sk_rcv_saddr, o.sk_daddr + 4);
        assert_eq!(o.sk_dport, o.sk_daddr + 12);
        assert_eq!(o.sk_num, o.sk_dport + 2);
        // kuid_t is struct { uid_t val; }.
        assert_eq!(o.cred_uid, at("cred", &["uid"]));
        // struct upid { int nr; struct pid_namespace *ns; }
        assert_eq!((o.upid_size, o.upid_ns), (16, 8));
        assert_eq!(
            o.mnt_ns_inum,
            at("mnt_namespace", &["ns"]) + at("ns_common", &["inum"])
        );
    }

    /// The memory-mapped and the in-memory `btf-rs` backends decode the same types.
    #[test]
    fn both_backends_agree() {
        let Some(path) = kernel_btf() else {
            return;
        };
        let via = |backend| {
            let btf = Btf::from_file_with_backend(path, backend).expect("parsing BTF");
            resolve_fields(&btf, FIELDS).expect("resolving").offsets
        };
        assert_eq!(via(Backend::Mmap), via(Backend::Cache));
    }

    #[test]
    fn nonexistent_file_is_named_in_the_error() {
        let path = Path::new("/nonexistent/btf/vmlinux");
        let err = resolve(path).expect_err("no such file");
        assert!(
            format!("{err:#}").contains("/nonexistent/btf/vmlinux"),
            "{err:#}"
        );
    }

    #[test]
    fn kernel_without_btf_is_explained() {
        let err = resolve_kernel_btf(Path::new("/nonexistent/vmlinux")).expect_err("no such file");
        let message = format!("{err:#}");
        assert!(
            message.contains("/nonexistent/vmlinux does not exist"),
            "{message}"
        );
        assert!(message.contains("CONFIG_DEBUG_INFO_BTF=y"), "{message}");
    }

    #[test]
    fn missing_member_of_real_kernel_is_named() {
        let Some(path) = kernel_btf() else {
            return;
        };
        let btf = parse(path).expect("parsing BTF");
        let fields = [field!(required task_pid = task_struct.no_such_member)];
        let err = resolve_fields(&btf, &fields).expect_err("no such member");
        let message = format!("{err:#}");
        assert!(
            message.contains("kernel BTF has no member `task_struct.no_such_member`"),
            "{message}"
        );
        assert!(message.contains("KernelOffsets::task_pid"), "{message}");
    }

    /// Lookups on a small hand-built BTF that reproduces the tricky shapes of 6.18's `dentry`
    /// (see [`synthetic_btf`]), so each rule is checked on known values on any machine.
    #[test]
    fn synthetic_layouts() -> Result<()> {
        use Lookup::{Found, Missing};
        use Measure::{Offset, Size};

        let btf = synthetic_btf();
        let mut index = StructIndex::default();
        let mut at = |root, path: &[&str], measure| lookup(&btf, &mut index, root, path, measure);
        let missing = |what: &str| Missing(what.to_owned());

        // Through an unnamed union, a const, and an unnamed struct inside an unnamed union.
        assert_eq!(at("dentry", &["d_name", "len"], Offset)?, Found(20));
        assert_eq!(at("dentry", &["d_name", "name"], Offset)?, Found(24));
        // Through a typedef of an unnamed struct.
        assert_eq!(at("dentry", &["d_uid", "val"], Offset)?, Found(32));
        // A whole-byte bitfield in a kind_flag struct: usable, sized by its width.
        assert_eq!(at("dentry", &["bits", "protocol"], Offset)?, Found(41));
        assert_eq!(at("dentry", &["bits", "protocol"], Size)?, Found(1));
        assert_eq!(at("dentry", &["bits", "kind"], Size)?, Found(2));
        // Sizes of a struct, of a const struct member, of an int.
        assert_eq!(at("dentry", &[], Size)?, Found(48));
        assert_eq!(at("dentry", &["d_name"], Size)?, Found(16));
        assert_eq!(at("qstr", &["len"], Size)?, Found(4));
        // Absences are reported, not failed.
        assert_eq!(
            at("dentry", &["nope"], Offset)?,
            missing("member `dentry.nope`")
        );
        assert_eq!(
            at("dentry", &["d_name", "nope"], Offset)?,
            missing("member `dentry.d_name.nope`")
        );
        assert_eq!(at("inode", &["i_ino"], Offset)?, missing("struct `inode`"));
        // Unusable layouts are errors.
        let error = |result: Result<Lookup<u32>>| format!("{:#}", result.expect_err("an error"));
        assert!(error(at("dentry", &["bits", "odd"], Offset)).contains("bit offset 323"));
        assert!(error(at("dentry", &["bits", "flag"], Offset)).contains("1-bit bitfield"));
        assert!(error(at("dentry", &["d_parent", "len"], Offset)).contains("a ptr"));
        assert!(error(at("dup", &["x"], Offset)).contains("disagree"));
        Ok(())
    }

    #[test]
    fn optional_members_are_listed_required_ones_fail() {
        let btf = synthetic_btf();
        let fields = [
            field!(required task_tgid = dentry.d_name.len),
            field!(optional task_loginuid = dentry.loginuid),
            field!(optional task_sessionid = audit.sessionid),
        ];
        let resolved = resolve_fields(&btf, &fields).expect("optional members may be absent");
        assert_eq!(resolved.offsets.task_tgid, 20);
        assert_eq!(resolved.offsets.task_loginuid, MISSING);
        assert_eq!(
            resolved.missing_optional,
            ["task_loginuid", "task_sessionid"]
        );

        let fields = [field!(required task_loginuid = dentry.loginuid)];
        let err = resolve_fields(&btf, &fields).expect_err("a required member is absent");
        assert!(format!("{err:#}").contains("kernel BTF has no member `dentry.loginuid`"));
    }

    /// A BTF blob with, in C:
    ///
    /// ```c
    /// struct qstr { union { struct { u32 hash; u32 len; }; u64 hash_len; }; const char *name; };
    /// typedef struct { u32 val; } kuid_t;
    /// struct bits { u32 flag:1, :2, odd:5, protocol:8, kind:16; };  // kind_flag encoding
    /// struct dentry {                      // size 48
    ///     u32 d_flags;                     // 0
    ///     struct dentry *d_parent;         // 8
    ///     union { const struct qstr d_name; struct qstr __d_name; };  // 16
    ///     kuid_t d_uid;                    // 32
    ///     struct bits bits;                // 40
    /// };
    /// struct dup { u32 x; };  struct dup { u32 pad; u32 x; };  // two disagreeing definitions
    /// ```
    fn synthetic_btf() -> Btf {
        let mut b = BtfBuilder::new();
        let u32_t = b.int("unsigned int", 4);
        let u64_t = b.int("long long unsigned int", 8);
        let char_t = b.int("char", 1);
        let const_char = b.modifier(KIND_CONST, "", char_t);
        let name_ptr = b.modifier(KIND_PTR, "", const_char);
        let hash_len = b.composite(
            KIND_STRUCT,
            "",
            8,
            &[("hash", u32_t, 0, 0), ("len", u32_t, 32, 0)],
        );
        let hash_union = b.composite(
            KIND_UNION,
            "",
            8,
            &[("", hash_len, 0, 0), ("hash_len", u64_t, 0, 0)],
        );
        let qstr = b.composite(
            KIND_STRUCT,
            "qstr",
            16,
            &[("", hash_union, 0, 0), ("name", name_ptr, 64, 0)],
        );
        let const_qstr = b.modifier(KIND_CONST, "", qstr);
        let name_union = b.composite(
            KIND_UNION,
            "",
            16,
            &[("d_name", const_qstr, 0, 0), ("__d_name", qstr, 0, 0)],
        );
        let kuid = b.composite(KIND_STRUCT, "", 4, &[("val", u32_t, 0, 0)]);
        let kuid_t = b.modifier(KIND_TYPEDEF, "kuid_t", kuid);
        let bits = b.composite(
            KIND_STRUCT,
            "bits",
            4,
            &[
                ("flag", u32_t, 0, 1),
                ("odd", u32_t, 3, 5),
                ("protocol", u32_t, 8, 8),
                ("kind", u32_t, 16, 16),
            ],
        );
        // `struct dentry` is the next id: a pointer to it can be declared first.
        let dentry_ptr = b.modifier(KIND_PTR, "", b.next_id() + 1);
        b.composite(
            KIND_STRUCT,
            "dentry",
            48,
            &[
                ("d_flags", u32_t, 0, 0),
                ("d_parent", dentry_ptr, 64, 0),
                ("", name_union, 128, 0),
                ("d_uid", kuid_t, 256, 0),
                ("bits", bits, 320, 0),
            ],
        );
        b.composite(KIND_STRUCT, "dup", 4, &[("x", u32_t, 0, 0)]);
        b.composite(
            KIND_STRUCT,
            "dup",
            8,
            &[("pad", u32_t, 0, 0), ("x", u32_t, 32, 0)],
        );
        Btf::from_bytes(&b.finish()).expect("the synthetic BTF parses")
    }

    const KIND_INT: u32 = 1;
    const KIND_PTR: u32 = 2;
    const KIND_STRUCT: u32 = 4;
    const KIND_UNION: u32 = 5;
    const KIND_TYPEDEF: u32 = 8;
    const KIND_CONST: u32 = 10;

    /// Writes BTF as `include/uapi/linux/btf.h` lays it out, little-endian.
    struct BtfBuilder {
        types: Vec<u8>,
        strings: Vec<u8>,
        last_id: u32,
    }

    impl BtfBuilder {
        fn new() -> Self {
            // String offset 0 is the empty name.
            Self {
                types: Vec::new(),
                strings: vec![0],
                last_id: 0,
            }
        }

        fn next_id(&self) -> u32 {
            self.last_id + 1
        }

        fn string(&mut self, s: &str) -> u32 {
            if s.is_empty() {
                return 0;
            }
            let offset = self.strings.len() as u32;
            self.strings.extend_from_slice(s.as_bytes());
            self.strings.push(0);
            offset
        }

        /// A `struct btf_type` plus its trailing words; returns the new type id.
        fn push(
            &mut self,
            name: &str,
            kind: u32,
            kind_flag: bool,
            vlen: u32,
            size_or_type: u32,
            extra: &[u32],
        ) -> u32 {
            let name = self.string(name);
            let info = (u32::from(kind_flag) << 31) | (kind << 24) | vlen;
            for word in [name, info, size_or_type].iter().chain(extra) {
                self.types.extend_from_slice(&word.to_le_bytes());
            }
            self.last_id += 1;
            self.last_id
        }

        fn int(&mut self, name: &str, bytes: u32) -> u32 {
            self.push(name, KIND_INT, false, 0, bytes, &[bytes * 8])
        }

        /// A kind that only refers to another type: pointer, typedef, const.
        fn modifier(&mut self, kind: u32, name: &str, target: u32) -> u32 {
            self.push(name, kind, false, 0, target, &[])
        }

        /// Members are `(name, type, bit offset, bitfield width)`; any width makes it a
        /// `kind_flag` struct, whose member offsets carry the width in their top 8 bits.
        fn composite(
            &mut self,
            kind: u32,
            name: &str,
            size: u32,
            members: &[(&str, u32, u32, u32)],
        ) -> u32 {
            let kind_flag = members.iter().any(|m| m.3 != 0);
            let mut extra = Vec::new();
            for &(member, ty, offset, width) in members {
                extra.extend([self.string(member), ty, (width << 24) | offset]);
            }
            self.push(name, kind, kind_flag, members.len() as u32, size, &extra)
        }

        fn finish(self) -> Vec<u8> {
            const HEADER_LEN: u32 = 24;
            let (types_len, strings_len) = (self.types.len() as u32, self.strings.len() as u32);
            let mut out = Vec::new();
            out.extend_from_slice(&0xeb9f_u16.to_le_bytes());
            out.extend_from_slice(&[1, 0]); // version, flags
            for word in [HEADER_LEN, 0, types_len, types_len, strings_len] {
                out.extend_from_slice(&word.to_le_bytes());
            }
            out.extend(self.types);
            out.extend(self.strings);
            out
        }
    }

    /// The kernel's types as `bpftool -j btf dump file <path> format raw` decodes them (with
    /// libbpf): an independent reading of the same BTF to check ours against.
    struct Bpftool {
        types: HashMap<u64, Value>,
        structs: HashMap<String, u64>,
    }

    impl Bpftool {
        /// `None` (with a message) if bpftool is not installed.
        fn dump(path: &Path) -> Option<Self> {
            let output = match Command::new("bpftool")
                .args(["-j", "btf", "dump", "file"])
                .arg(path)
                .args(["format", "raw"])
                .output()
            {
                Ok(output) => output,
                Err(err) => {
                    eprintln!("skipping: cannot run bpftool ({err})");
                    return None;
                }
            };
            assert!(
                output.status.success(),
                "bpftool: {}",
                String::from_utf8_lossy(&output.stderr)
            );
            let dump: Value = serde_json::from_slice(&output.stdout).expect("bpftool's JSON");
            let mut types = HashMap::new();
            let mut structs = HashMap::new();
            for ty in dump["types"].as_array().expect("a `types` array") {
                let id = ty["id"].as_u64().expect("a type id");
                if ty["kind"] == "STRUCT" {
                    structs
                        .entry(ty["name"].as_str().expect("a name").to_owned())
                        .or_insert(id);
                }
                types.insert(id, ty.clone());
            }
            Some(Self { types, structs })
        }

        /// The type `id` refers to, through typedefs and qualifiers.
        fn strip(&self, mut id: u64) -> &Value {
            loop {
                let ty = &self.types[&id];
                match ty["kind"].as_str() {
                    Some("TYPEDEF" | "CONST" | "VOLATILE" | "RESTRICT" | "TYPE_TAG") => {
                        id = ty["type_id"].as_u64().expect("a referenced type")
                    }
                    _ => return ty,
                }
            }
        }

        /// `(bit offset, member)` of `name` in `container` or its unnamed members.
        fn find<'a>(&'a self, container: &'a Value, name: &str) -> Option<(u64, &'a Value)> {
            container["members"].as_array()?.iter().find_map(|member| {
                let offset = member["bits_offset"].as_u64().expect("an offset");
                if member["name"] == name {
                    return Some((offset, member));
                }
                if member["name"] != "(anon)" {
                    return None;
                }
                let inner = self.strip(member["type_id"].as_u64()?);
                self.find(inner, name).map(|(o, m)| (offset + o, m))
            })
        }

        /// Byte offset and last member of `root.path`, `None` if absent.
        fn walk(&self, root: &str, path: &[&str]) -> Option<(u64, &Value)> {
            let mut container = &self.types[self.structs.get(root)?];
            let (mut bits, mut last) = (0, None);
            for name in path {
                let (offset, member) = self.find(container, name)?;
                bits += offset;
                container = self.strip(member["type_id"].as_u64()?);
                last = Some(member);
            }
            assert_eq!(bits % 8, 0, "{root}.{path:?} is not byte-aligned");
            Some((bits / 8, last?))
        }

        fn offset(&self, root: &str, path: &[&str]) -> Option<u32> {
            self.walk(root, path).map(|(bytes, _)| bytes as u32)
        }

        fn measure(&self, field: &Field) -> Option<u32> {
            match field.measure {
                Measure::Offset => self.offset(field.root, field.path),
                Measure::Size if field.path.is_empty() => self.types
                    [self.structs.get(field.root)?]["size"]
                    .as_u64()
                    .map(|s| s as u32),
                Measure::Size => {
                    let (_, member) = self.walk(field.root, field.path)?;
                    let bytes = match member["bitfield_size"].as_u64() {
                        Some(bits) => bits / 8,
                        None => self.strip(member["type_id"].as_u64()?)["size"].as_u64()?,
                    };
                    Some(bytes as u32)
                }
            }
        }
    }
}
