//! Kernel struct field offsets, resolved per kernel by userspace from the kernel's BTF
//! (`/sys/kernel/btf/vmlinux`) and handed to the programs as one load-time global. This is how one
//! eBPF object reads `task_struct`, `file`, `dentry`, ... on every kernel without CO-RE
//! relocations (which rustc cannot emit).
//!
//! Each field is a byte offset from the start of the struct named by its prefix; composite names
//! (`file_f_path_dentry`) are sums along the member path. [`MISSING`] marks a member this kernel
//! does not have: the programs check it before using the offset and flag what they could not read.

/// Marker for a member this kernel does not have.
pub const MISSING: u32 = u32::MAX;

#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct KernelOffsets {
    // task_struct
    pub task_real_parent: u32,
    pub task_group_leader: u32,
    pub task_tgid: u32,
    pub task_pid: u32,
    pub task_start_boottime: u32,
    pub task_real_cred: u32,
    /// `task_struct.loginuid` (CONFIG_AUDIT); may be [`MISSING`].
    pub task_loginuid: u32,
    /// `task_struct.sessionid` (CONFIG_AUDIT); may be [`MISSING`].
    pub task_sessionid: u32,
    pub task_signal: u32,
    pub task_files: u32,
    pub task_fs: u32,
    pub task_nsproxy: u32,
    pub task_mm: u32,
    pub task_thread_pid: u32,
    pub task_exit_code: u32,
    // cred
    pub cred_uid: u32,
    pub cred_gid: u32,
    pub cred_suid: u32,
    pub cred_sgid: u32,
    pub cred_euid: u32,
    pub cred_egid: u32,
    pub cred_fsuid: u32,
    pub cred_fsgid: u32,
    pub cred_cap_effective: u32,
    pub cred_cap_permitted: u32,
    pub cred_user_ns: u32,
    // signal_struct
    pub signal_live: u32,
    pub signal_tty: u32,
    // tty_struct
    pub tty_name: u32,
    // files_struct / fdtable
    pub files_fdt: u32,
    pub fdtable_max_fds: u32,
    pub fdtable_fd: u32,
    // file
    pub file_f_path_mnt: u32,
    pub file_f_path_dentry: u32,
    pub file_f_flags: u32,
    pub file_f_inode: u32,
    pub file_private_data: u32,
    // dentry / qstr
    pub dentry_d_parent: u32,
    /// `dentry.d_name.len` (a u32 inside `qstr`).
    pub dentry_d_name_len: u32,
    /// `dentry.d_name.name` (a pointer inside `qstr`).
    pub dentry_d_name_name: u32,
    pub dentry_d_inode: u32,
    // inode / super_block
    pub inode_i_ino: u32,
    pub inode_i_mode: u32,
    pub inode_i_sb: u32,
    pub sb_s_dev: u32,
    // vfsmount / mount
    pub vfsmount_mnt_root: u32,
    /// Offset of `struct vfsmount mnt` inside `struct mount`: `real_mount()` subtracts it.
    pub mount_mnt: u32,
    pub mount_mnt_parent: u32,
    pub mount_mnt_mountpoint: u32,
    // fs_struct
    pub fs_root_mnt: u32,
    pub fs_root_dentry: u32,
    pub fs_pwd_mnt: u32,
    pub fs_pwd_dentry: u32,
    // nsproxy -> *_ns -> ns_common.inum (sums)
    pub nsproxy_uts_ns: u32,
    pub nsproxy_ipc_ns: u32,
    pub nsproxy_mnt_ns: u32,
    pub nsproxy_net_ns: u32,
    pub nsproxy_cgroup_ns: u32,
    pub uts_ns_inum: u32,
    pub ipc_ns_inum: u32,
    pub mnt_ns_inum: u32,
    pub net_ns_inum: u32,
    pub cgroup_ns_inum: u32,
    pub user_ns_inum: u32,
    pub pid_ns_inum: u32,
    // struct pid / upid
    pub pid_level: u32,
    pub pid_numbers: u32,
    pub upid_size: u32,
    pub upid_ns: u32,
    // mm_struct
    pub mm_arg_start: u32,
    pub mm_arg_end: u32,
    pub mm_env_start: u32,
    pub mm_env_end: u32,
    pub mm_exe_file: u32,
    // linux_binprm
    pub binprm_filename: u32,
    // socket / sock_common / sock
    pub socket_sk: u32,
    pub socket_file: u32,
    pub sk_family: u32,
    pub sk_daddr: u32,
    pub sk_rcv_saddr: u32,
    pub sk_dport: u32,
    pub sk_num: u32,
    pub sk_v6_daddr: u32,
    pub sk_v6_rcv_saddr: u32,
    pub sk_cookie: u32,
    pub sk_err: u32,
    pub sk_protocol: u32,
    /// Byte size of `sk_protocol` (1 on old kernels where it was a bitfield neighbour, 2 since 5.6).
    pub sk_protocol_size: u32,
}

impl KernelOffsets {
    /// Every offset [`MISSING`]: what a program sees if userspace forgot to set the global.
    pub const UNSET: Self = Self {
        task_real_parent: MISSING,
        task_group_leader: MISSING,
        task_tgid: MISSING,
        task_pid: MISSING,
        task_start_boottime: MISSING,
        task_real_cred: MISSING,
        task_loginuid: MISSING,
        task_sessionid: MISSING,
        task_signal: MISSING,
        task_files: MISSING,
        task_fs: MISSING,
        task_nsproxy: MISSING,
        task_mm: MISSING,
        task_thread_pid: MISSING,
        task_exit_code: MISSING,
        cred_uid: MISSING,
        cred_gid: MISSING,
        cred_suid: MISSING,
        cred_sgid: MISSING,
        cred_euid: MISSING,
        cred_egid: MISSING,
        cred_fsuid: MISSING,
        cred_fsgid: MISSING,
        cred_cap_effective: MISSING,
        cred_cap_permitted: MISSING,
        cred_user_ns: MISSING,
        signal_live: MISSING,
        signal_tty: MISSING,
        tty_name: MISSING,
        files_fdt: MISSING,
        fdtable_max_fds: MISSING,
        fdtable_fd: MISSING,
        file_f_path_mnt: MISSING,
        file_f_path_dentry: MISSING,
        file_f_flags: MISSING,
        file_f_inode: MISSING,
        file_private_data: MISSING,
        dentry_d_parent: MISSING,
        dentry_d_name_len: MISSING,
        dentry_d_name_name: MISSING,
        dentry_d_inode: MISSING,
        inode_i_ino: MISSING,
        inode_i_mode: MISSING,
        inode_i_sb: MISSING,
        sb_s_dev: MISSING,
        vfsmount_mnt_root: MISSING,
        mount_mnt: MISSING,
        mount_mnt_parent: MISSING,
        mount_mnt_mountpoint: MISSING,
        fs_root_mnt: MISSING,
        fs_root_dentry: MISSING,
        fs_pwd_mnt: MISSING,
        fs_pwd_dentry: MISSING,
        nsproxy_uts_ns: MISSING,
        nsproxy_ipc_ns: MISSING,
        nsproxy_mnt_ns: MISSING,
        nsproxy_net_ns: MISSING,
        nsproxy_cgroup_ns: MISSING,
        uts_ns_inum: MISSING,
        ipc_ns_inum: MISSING,
        mnt_ns_inum: MISSING,
        net_ns_inum: MISSING,
        cgroup_ns_inum: MISSING,
        user_ns_inum: MISSING,
        pid_ns_inum: MISSING,
        pid_level: MISSING,
        pid_numbers: MISSING,
        upid_size: MISSING,
        upid_ns: MISSING,
        mm_arg_start: MISSING,
        mm_arg_end: MISSING,
        mm_env_start: MISSING,
        mm_env_end: MISSING,
        mm_exe_file: MISSING,
        binprm_filename: MISSING,
        socket_sk: MISSING,
        socket_file: MISSING,
        sk_family: MISSING,
        sk_daddr: MISSING,
        sk_rcv_saddr: MISSING,
        sk_dport: MISSING,
        sk_num: MISSING,
        sk_v6_daddr: MISSING,
        sk_v6_rcv_saddr: MISSING,
        sk_cookie: MISSING,
        sk_err: MISSING,
        sk_protocol: MISSING,
        sk_protocol_size: MISSING,
    };
}
