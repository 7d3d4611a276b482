//! The seccomp filter of every step: Docker's default profile, resolved for the
//! capabilities berth gives a step ([`crate::bundle`]'s `CAPS`, Docker's default set) and
//! for the machine's architecture.
//!
//! Docker keeps its profile as one document with conditional rules (`includes` and
//! `excludes` by capability, architecture and kernel version). berth's capability set
//! is fixed, so the conditions are decided here once, as data: what is allowed to every
//! container, plus the rules Docker applies when `CAP_SYS_ADMIN` is absent (no new
//! namespaces through `clone`, `clone3` answered `ENOSYS` so that libcs fall back to
//! `clone`, no `unshare`, `setns`, `mount`, `keyctl`, `bpf`, …). Everything else fails
//! with `EPERM`, as in Docker.
//!
//! Names the local libseccomp does not know are skipped by runc, so the list may name
//! system calls newer than the machine.

use oci_spec::OciSpecError;
use oci_spec::runtime::{
    Arch, LinuxSeccomp, LinuxSeccompAction, LinuxSeccompArgBuilder, LinuxSeccompBuilder,
    LinuxSeccompOperator, LinuxSyscall, LinuxSyscallBuilder,
};

/// Allowed to every container, whatever its capabilities (Docker's unconditional
/// allowlist), grouped by topic only for reading.
#[rustfmt::skip]
const ALLOWED: &[&str] = &[
    // files and directories
    "access", "chdir", "chmod", "chown", "chown32", "close", "close_range", "copy_file_range",
    "creat", "dup", "dup2", "dup3", "faccessat", "faccessat2", "fadvise64", "fadvise64_64",
    "fallocate", "fanotify_mark", "fchdir", "fchmod", "fchmodat", "fchown", "fchown32",
    "fchownat", "fcntl", "fcntl64", "fdatasync", "fgetxattr", "flistxattr", "flock",
    "fremovexattr", "fsetxattr", "fstat", "fstat64", "fstatat64", "fstatfs", "fstatfs64",
    "fsync", "ftruncate", "ftruncate64", "futimesat", "getcwd", "getdents", "getdents64",
    "getxattr", "inotify_add_watch", "inotify_init", "inotify_init1", "inotify_rm_watch",
    "lchown", "lchown32", "lgetxattr", "link", "linkat", "listxattr", "llistxattr",
    "_llseek", "lremovexattr", "lseek", "lsetxattr", "lstat", "lstat64", "mkdir", "mkdirat",
    "mknod", "mknodat", "name_to_handle_at", "newfstatat", "open", "openat", "openat2",
    "pread64", "preadv", "preadv2", "pwrite64", "pwritev", "pwritev2", "read", "readahead",
    "readlink", "readlinkat", "readv", "removexattr", "rename", "renameat", "renameat2",
    "rmdir", "sendfile", "sendfile64", "setxattr", "splice", "stat", "stat64", "statfs",
    "statfs64", "statx", "symlink", "symlinkat", "sync", "sync_file_range", "syncfs", "tee",
    "truncate", "truncate64", "umask", "unlink", "unlinkat", "utime", "utimensat",
    "utimensat_time64", "utimes", "vmsplice", "write", "writev",
    // asynchronous I/O and polling
    "epoll_create", "epoll_create1", "epoll_ctl", "epoll_ctl_old", "epoll_pwait",
    "epoll_pwait2", "epoll_wait", "epoll_wait_old", "eventfd", "eventfd2", "io_cancel",
    "io_destroy", "io_getevents", "io_pgetevents", "io_pgetevents_time64", "io_setup",
    "io_submit", "io_uring_enter", "io_uring_register", "io_uring_setup", "ioctl",
    "ioprio_get", "ioprio_set", "_newselect", "pause", "poll", "ppoll", "ppoll_time64",
    "pselect6", "pselect6_time64", "select", "signalfd", "signalfd4", "timerfd_create",
    "timerfd_gettime", "timerfd_gettime64", "timerfd_settime", "timerfd_settime64",
    // memory
    "brk", "madvise", "membarrier", "memfd_create", "memfd_secret", "mincore", "mlock",
    "mlock2", "mlockall", "mmap", "mmap2", "mprotect", "mremap", "msync", "munlock",
    "munlockall", "munmap", "pkey_alloc", "pkey_free", "pkey_mprotect", "remap_file_pages",
    // processes, threads, signals
    "capget", "capset", "execve", "execveat", "exit", "exit_group", "fork", "futex",
    "futex_time64", "futex_waitv", "get_robust_list", "get_thread_area", "getcpu",
    "getegid", "getegid32", "geteuid", "geteuid32", "getgid", "getgid32", "getgroups",
    "getgroups32", "getitimer", "getpgid", "getpgrp", "getpid", "getppid", "getpriority",
    "getrandom", "getresgid", "getresgid32", "getresuid", "getresuid32", "getrlimit",
    "getrusage", "getsid", "gettid", "getuid", "getuid32", "kill", "landlock_add_rule",
    "landlock_create_ruleset", "landlock_restrict_self", "pidfd_open", "pidfd_send_signal",
    "prctl", "prlimit64", "process_mrelease", "restart_syscall", "rseq", "rt_sigaction",
    "rt_sigpending", "rt_sigprocmask", "rt_sigqueueinfo", "rt_sigreturn", "rt_sigsuspend",
    "rt_sigtimedwait", "rt_sigtimedwait_time64", "rt_tgsigqueueinfo", "sched_get_priority_max",
    "sched_get_priority_min", "sched_getaffinity", "sched_getattr", "sched_getparam",
    "sched_getscheduler", "sched_rr_get_interval", "sched_rr_get_interval_time64",
    "sched_setaffinity", "sched_setattr", "sched_setparam", "sched_setscheduler",
    "sched_yield", "seccomp", "set_robust_list", "set_thread_area", "set_tid_address",
    "setfsgid", "setfsgid32", "setfsuid", "setfsuid32", "setgid", "setgid32", "setgroups",
    "setgroups32", "setitimer", "setpgid", "setpriority", "setregid", "setregid32",
    "setresgid", "setresgid32", "setresuid", "setresuid32", "setreuid", "setreuid32",
    "setrlimit", "setsid", "setuid", "setuid32", "sigaltstack", "sigprocmask", "sigreturn",
    "tgkill", "tkill", "ugetrlimit", "vfork", "wait4", "waitid", "waitpid",
    // pipes, System V and POSIX IPC
    "ipc", "pipe", "pipe2", "mq_getsetattr", "mq_notify", "mq_open", "mq_timedreceive",
    "mq_timedreceive_time64", "mq_timedsend", "mq_timedsend_time64", "mq_unlink", "msgctl",
    "msgget", "msgrcv", "msgsnd", "semctl", "semget", "semop", "semtimedop",
    "semtimedop_time64", "shmat", "shmctl", "shmdt", "shmget",
    // sockets (`socket` itself is conditional, below)
    "accept", "accept4", "bind", "connect", "getpeername", "getsockname", "getsockopt",
    "listen", "recv", "recvfrom", "recvmmsg", "recvmmsg_time64", "recvmsg", "send",
    "sendmmsg", "sendmsg", "sendto", "setsockopt", "shutdown", "socketcall", "socketpair",
    // time and system information
    "adjtimex", "alarm", "clock_adjtime", "clock_adjtime64", "clock_getres",
    "clock_getres_time64", "clock_gettime", "clock_gettime64", "clock_nanosleep",
    "clock_nanosleep_time64", "gettimeofday", "nanosleep", "sysinfo", "time", "timer_create",
    "timer_delete", "timer_getoverrun", "timer_gettime", "timer_gettime64", "timer_settime",
    "timer_settime64", "times", "uname",
    // allowed by Docker on kernels from 4.8 on (which seccomp-checks ptrace properly)
    "process_vm_readv", "process_vm_writev", "ptrace",
    // allowed because steps have CAP_SYS_CHROOT
    "chroot",
];

/// Allowed only on the architecture named first.
const ARCH_ALLOWED: &[(&str, &[&str])] = &[
    ("x86_64", &["arch_prctl", "modify_ldt"]),
    (
        "aarch64",
        &[
            "arm_fadvise64_64",
            "arm_sync_file_range",
            "sync_file_range2",
            "breakpoint",
            "cacheflush",
            "set_tls",
        ],
    ),
];

/// The execution domains `personality(2)` may select: Linux, `UNAME26`,
/// `ADDR_NO_RANDOMIZE` (and the two together), and the query `0xffffffff`.
const PERSONALITIES: &[u64] = &[0x0, 0x8, 0x2_0000, 0x2_0008, 0xffff_ffff];

/// `clone` flags that create namespaces (`CLONE_NEWNS | CLONE_NEWCGROUP | CLONE_NEWUTS |
/// CLONE_NEWIPC | CLONE_NEWUSER | CLONE_NEWPID | CLONE_NEWNET`): a `clone` with any of
/// them fails, as `unshare` does.
const CLONE_NAMESPACE_FLAGS: u64 = 0x7E02_0000;

/// `AF_VSOCK`: the one socket family Docker refuses.
const AF_VSOCK: u64 = 40;

/// `ENOSYS`, so that libcs retry `clone3` as `clone`, whose flags the filter can see.
const ENOSYS: u32 = 38;

/// The architectures a process of this machine may use.
fn architectures() -> Vec<Arch> {
    match std::env::consts::ARCH {
        "x86_64" => vec![Arch::ScmpArchX86_64, Arch::ScmpArchX86, Arch::ScmpArchX32],
        "aarch64" => vec![Arch::ScmpArchAarch64, Arch::ScmpArchArm],
        "riscv64" => vec![Arch::ScmpArchRiscv64],
        "s390x" => vec![Arch::ScmpArchS390x, Arch::ScmpArchS390],
        _ => vec![],
    }
}

/// A rule allowing `name` when its argument `index` compares to `value` by `op`.
fn allow_if(
    name: &str,
    index: usize,
    value: u64,
    op: LinuxSeccompOperator,
) -> Result<LinuxSyscall, OciSpecError> {
    let arg = LinuxSeccompArgBuilder::default()
        .index(index)
        .value(value)
        .value_two(0u64)
        .op(op)
        .build()?;
    LinuxSyscallBuilder::default()
        .names(vec![name.to_string()])
        .action(LinuxSeccompAction::ScmpActAllow)
        .args(vec![arg])
        .build()
}

/// The `linux.seccomp` object of a step's `config.json`.
pub(crate) fn profile() -> Result<LinuxSeccomp, OciSpecError> {
    let arch = std::env::consts::ARCH;
    let mut allowed: Vec<String> = ALLOWED.iter().map(|s| s.to_string()).collect();
    for (a, names) in ARCH_ALLOWED {
        if *a == arch {
            allowed.extend(names.iter().map(|s| s.to_string()));
        }
    }
    let mut syscalls = vec![
        LinuxSyscallBuilder::default()
            .names(allowed)
            .action(LinuxSeccompAction::ScmpActAllow)
            .build()?,
    ];
    syscalls.push(allow_if(
        "socket",
        0,
        AF_VSOCK,
        LinuxSeccompOperator::ScmpCmpNe,
    )?);
    for p in PERSONALITIES {
        syscalls.push(allow_if(
            "personality",
            0,
            *p,
            LinuxSeccompOperator::ScmpCmpEq,
        )?);
    }
    // s390 passes clone's flags second.
    let flags_arg = if arch == "s390x" { 1 } else { 0 };
    syscalls.push(allow_if(
        "clone",
        flags_arg,
        CLONE_NAMESPACE_FLAGS,
        LinuxSeccompOperator::ScmpCmpMaskedEq,
    )?);
    syscalls.push(
        LinuxSyscallBuilder::default()
            .names(vec!["clone3".to_string()])
            .action(LinuxSeccompAction::ScmpActErrno)
            .errno_ret(ENOSYS)
            .build()?,
    );
    LinuxSeccompBuilder::default()
        .default_action(LinuxSeccompAction::ScmpActErrno)
        .default_errno_ret(1u32)
        .architectures(architectures())
        .syscalls(syscalls)
        .build()
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::Value;

    fn allowed(p: &Value, name: &str) -> Vec<Value> {
        p["syscalls"]
            .as_array()
            .unwrap()
            .iter()
            .filter(|r| r["names"].as_array().unwrap().iter().any(|n| n == name))
            .cloned()
            .collect()
    }

    #[test]
    fn docker_default_without_sys_admin() {
        let p = serde_json::to_value(profile().unwrap()).unwrap();
        assert_eq!(p["defaultAction"], "SCMP_ACT_ERRNO");
        assert_eq!(p["defaultErrnoRet"], 1);
        for gone in [
            "unshare", "setns", "mount", "keyctl", "bpf", "add_key", "reboot",
        ] {
            assert!(allowed(&p, gone).is_empty(), "{gone} must not be allowed");
        }
        for ok in ["read", "execve", "chroot", "ptrace", "wait4"] {
            assert_eq!(allowed(&p, ok).len(), 1, "{ok}");
        }
        let clone = allowed(&p, "clone");
        assert_eq!(clone[0]["args"][0]["op"], "SCMP_CMP_MASKED_EQ");
        assert_eq!(allowed(&p, "clone3")[0]["errnoRet"], 38);
        assert_eq!(allowed(&p, "personality").len(), PERSONALITIES.len());
        let names: Vec<&str> = ALLOWED.to_vec();
        let mut sorted = names.clone();
        sorted.sort_unstable();
        sorted.dedup();
        assert_eq!(sorted.len(), names.len(), "a name is listed twice");
    }
}
