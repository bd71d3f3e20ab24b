//! The OCI runtime configuration of a step: Docker's defaults for
//! capabilities, masked and read-only paths, /proc, /dev and /sys, plus what
//! the step asks for.

use std::path::{Path, PathBuf};

use oci_spec::runtime::{
    Capability, LinuxBuilder, LinuxCapabilitiesBuilder, LinuxDevice, LinuxDeviceBuilder,
    LinuxDeviceCgroupBuilder, LinuxDeviceType, LinuxNamespaceBuilder, LinuxNamespaceType,
    LinuxResourcesBuilder, MountBuilder, PosixRlimitBuilder, PosixRlimitType, ProcessBuilder,
    RootBuilder, Spec, SpecBuilder, UserBuilder,
};

use crate::error::Error;
use crate::{Network, Step, StepMount};

/// Docker's default capabilities.
const CAPABILITIES: [Capability; 14] = [
    Capability::Chown,
    Capability::DacOverride,
    Capability::Fsetid,
    Capability::Fowner,
    Capability::Mknod,
    Capability::NetRaw,
    Capability::Setgid,
    Capability::Setuid,
    Capability::Setfcap,
    Capability::Setpcap,
    Capability::NetBindService,
    Capability::SysChroot,
    Capability::Kill,
    Capability::AuditWrite,
];

/// Paths Docker hides from containers.
const MASKED_PATHS: [&str; 11] = [
    "/proc/asound",
    "/proc/acpi",
    "/proc/kcore",
    "/proc/keys",
    "/proc/latency_stats",
    "/proc/timer_list",
    "/proc/timer_stats",
    "/proc/sched_debug",
    "/proc/scsi",
    "/sys/firmware",
    "/sys/devices/virtual/powercap",
];

/// Paths Docker makes read-only in containers.
const READONLY_PATHS: [&str; 5] = [
    "/proc/bus",
    "/proc/fs",
    "/proc/irq",
    "/proc/sys",
    "/proc/sysrq-trigger",
];

/// System calls a step may not make, with EPERM: what Docker's default
/// seccomp profile leaves out that a step with Docker's capabilities could
/// still reach (kernel keyrings, BPF, userfaultfd, module and kexec
/// loading, namespaces, file handles that walk around mounts, clocks,
/// swap, accounting, io_uring, perf). Docker allows a list instead; a list
/// of what is refused keeps new harmless calls working.
const REFUSED_SYSCALLS: [&str; 36] = [
    "acct",
    "add_key",
    "bpf",
    "clock_adjtime",
    "clock_settime",
    "create_module",
    "delete_module",
    "finit_module",
    "fsconfig",
    "fsmount",
    "fsopen",
    "fspick",
    "get_kernel_syms",
    "init_module",
    "io_uring_enter",
    "io_uring_register",
    "io_uring_setup",
    "kexec_file_load",
    "kexec_load",
    "keyctl",
    "lookup_dcookie",
    "move_mount",
    "nfsservctl",
    "open_by_handle_at",
    "open_tree",
    "perf_event_open",
    "query_module",
    "quotactl",
    "request_key",
    "setns",
    "settimeofday",
    "swapoff",
    "swapon",
    "unshare",
    "userfaultfd",
    "vm86",
];

/// `clone` flags that make namespaces: refused, as `unshare` is (the
/// mount namespace's flag is 0x20000 on every architecture kiln runs on).
const NAMESPACE_FLAGS: [u64; 7] = [
    0x0002_0000, // CLONE_NEWNS
    0x0200_0000, // CLONE_NEWCGROUP
    0x0400_0000, // CLONE_NEWUTS
    0x0800_0000, // CLONE_NEWIPC
    0x1000_0000, // CLONE_NEWUSER
    0x2000_0000, // CLONE_NEWPID
    0x4000_0000, // CLONE_NEWNET
];

const EPERM: u32 = 1;
const ENOSYS: u32 = 38;

/// The seccomp filter of a sandboxed step.
fn seccomp() -> Result<oci_spec::runtime::LinuxSeccomp, Error> {
    use oci_spec::runtime::{
        Arch, LinuxSeccompAction, LinuxSeccompArgBuilder, LinuxSeccompBuilder,
        LinuxSeccompOperator, LinuxSyscallBuilder,
    };
    let refuse = |names: Vec<String>, errno: u32| {
        LinuxSyscallBuilder::default()
            .names(names)
            .action(LinuxSeccompAction::ScmpActErrno)
            .errno_ret(errno)
    };
    let mut syscalls = vec![
        refuse(
            REFUSED_SYSCALLS.iter().map(|s| s.to_string()).collect(),
            EPERM,
        )
        .build()
        .map_err(spec_error)?,
        // clone3 passes its flags in memory a filter cannot read: "not
        // implemented" makes the C library fall back to clone.
        refuse(vec!["clone3".to_string()], ENOSYS)
            .build()
            .map_err(spec_error)?,
    ];
    for flag in NAMESPACE_FLAGS {
        let arg = LinuxSeccompArgBuilder::default()
            .index(0usize)
            .value(flag)
            .value_two(flag)
            .op(LinuxSeccompOperator::ScmpCmpMaskedEq)
            .build()
            .map_err(spec_error)?;
        syscalls.push(
            refuse(vec!["clone".to_string()], EPERM)
                .args(vec![arg])
                .build()
                .map_err(spec_error)?,
        );
    }
    // Every ABI the machine can run, or a 32-bit call would walk around
    // the filter.
    let architectures = match std::env::consts::ARCH {
        "x86_64" => vec![Arch::ScmpArchX86_64, Arch::ScmpArchX86, Arch::ScmpArchX32],
        "aarch64" => vec![Arch::ScmpArchAarch64, Arch::ScmpArchArm],
        _ => vec![Arch::ScmpArchNative],
    };
    LinuxSeccompBuilder::default()
        .default_action(LinuxSeccompAction::ScmpActAllow)
        .architectures(architectures)
        .syscalls(syscalls)
        .build()
        .map_err(spec_error)
}

/// The open files a step may have, as containerd allows, within what this
/// machine lets kiln raise it to.
const OPEN_FILES: u64 = 1_048_576;

fn spec_error(e: impl std::fmt::Display) -> Error {
    Error::Spec(e.to_string())
}

/// The mounts every step gets, as Docker sets them.
fn standard_mounts(
    insecure: bool,
    shm_size: Option<u64>,
) -> Result<Vec<oci_spec::runtime::Mount>, Error> {
    // Docker's default: 64 MiB.
    let shm = format!("size={}", shm_size.unwrap_or(64 * 1024 * 1024));
    let mount = |destination: &str, kind: &str, source: &str, options: &[&str]| {
        MountBuilder::default()
            .destination(destination)
            .typ(kind)
            .source(source)
            .options(options.iter().map(|o| o.to_string()).collect::<Vec<_>>())
            .build()
            .map_err(spec_error)
    };
    let sys_mode = if insecure { "rw" } else { "ro" };
    Ok(vec![
        mount("/proc", "proc", "proc", &["nosuid", "noexec", "nodev"])?,
        mount(
            "/dev",
            "tmpfs",
            "tmpfs",
            &["nosuid", "strictatime", "mode=755", "size=65536k"],
        )?,
        mount(
            "/dev/pts",
            "devpts",
            "devpts",
            &[
                "nosuid",
                "noexec",
                "newinstance",
                "ptmxmode=0666",
                "mode=0620",
                "gid=5",
            ],
        )?,
        mount(
            "/dev/shm",
            "tmpfs",
            "shm",
            &["nosuid", "noexec", "nodev", "mode=1777", &shm],
        )?,
        mount(
            "/dev/mqueue",
            "mqueue",
            "mqueue",
            &["nosuid", "noexec", "nodev"],
        )?,
        mount(
            "/sys",
            "sysfs",
            "sysfs",
            &["nosuid", "noexec", "nodev", sys_mode],
        )?,
    ])
}

/// The step's resource limits: an open-files limit by default, and what
/// `--ulimit` gives, each replacing the default of its kind.
fn rlimits(ulimits: &[crate::Ulimit]) -> Result<Vec<oci_spec::runtime::PosixRlimit>, Error> {
    let open_files = open_files_limit();
    let mut limits = vec![(PosixRlimitType::RlimitNofile, open_files, open_files)];
    for ulimit in ulimits {
        let kind = rlimit_type(&ulimit.name).ok_or_else(|| {
            Error::Spec(format!(
                "unknown ulimit {:?} (known: {})",
                ulimit.name,
                crate::ULIMIT_NAMES.join(", ")
            ))
        })?;
        limits.retain(|(known, _, _)| *known != kind);
        limits.push((kind, ulimit.soft, ulimit.hard));
    }
    limits
        .into_iter()
        .map(|(kind, soft, hard)| {
            PosixRlimitBuilder::default()
                .typ(kind)
                .soft(soft)
                .hard(hard)
                .build()
                .map_err(spec_error)
        })
        .collect()
}

fn rlimit_type(name: &str) -> Option<PosixRlimitType> {
    Some(match name {
        "as" => PosixRlimitType::RlimitAs,
        "core" => PosixRlimitType::RlimitCore,
        "cpu" => PosixRlimitType::RlimitCpu,
        "data" => PosixRlimitType::RlimitData,
        "fsize" => PosixRlimitType::RlimitFsize,
        "locks" => PosixRlimitType::RlimitLocks,
        "memlock" => PosixRlimitType::RlimitMemlock,
        "msgqueue" => PosixRlimitType::RlimitMsgqueue,
        "nice" => PosixRlimitType::RlimitNice,
        "nofile" => PosixRlimitType::RlimitNofile,
        "nproc" => PosixRlimitType::RlimitNproc,
        "rss" => PosixRlimitType::RlimitRss,
        "rtprio" => PosixRlimitType::RlimitRtprio,
        "rttime" => PosixRlimitType::RlimitRttime,
        "sigpending" => PosixRlimitType::RlimitSigpending,
        "stack" => PosixRlimitType::RlimitStack,
        _ => return None,
    })
}

/// The hard limit of open files this process has, which a step cannot
/// exceed without CAP_SYS_RESOURCE.
fn open_files_limit() -> u64 {
    let limit = rustix::process::getrlimit(rustix::process::Resource::Nofile);
    limit.maximum.map_or(OPEN_FILES, |max| max.min(OPEN_FILES))
}

/// The configuration for running `step` on the root filesystem `rootfs`;
/// `etc` holds the `hosts` and `resolv.conf` the step sees, and `sources`
/// the host path of each of the step's mounts (none for a tmpfs).
pub(crate) fn config(
    step: &Step,
    rootfs: &Path,
    etc: &Path,
    sources: &[Option<PathBuf>],
    terminal: bool,
) -> Result<Spec, Error> {
    let capabilities: std::collections::HashSet<Capability> = if step.insecure {
        // `--security=insecure`: every capability, as BuildKit gives.
        all_capabilities()
    } else {
        CAPABILITIES.into_iter().collect()
    };
    // As Docker: a user other than root has none in effect (only what a
    // set-user-ID program may gain, within the bounding set).
    let in_effect = if step.user.uid == 0 {
        capabilities.clone()
    } else {
        std::collections::HashSet::new()
    };
    let capabilities = LinuxCapabilitiesBuilder::default()
        .bounding(capabilities)
        .effective(in_effect.clone())
        .permitted(in_effect)
        .inheritable(std::collections::HashSet::new())
        .ambient(std::collections::HashSet::new())
        .build()
        .map_err(spec_error)?;
    let user = UserBuilder::default()
        .uid(step.user.uid)
        .gid(step.user.gid)
        .additional_gids(step.user.additional_gids.clone())
        .build()
        .map_err(spec_error)?;
    let rlimits = rlimits(&step.resources.ulimits)?;
    let mut env = step.env.clone();
    env.extend(
        step.secret_env
            .iter()
            .map(|(name, value)| format!("{name}={}", String::from_utf8_lossy(&value.0))),
    );
    let process = ProcessBuilder::default()
        .terminal(terminal)
        .user(user)
        .args(step.args.clone())
        .env(env)
        .cwd(step.cwd.clone())
        .capabilities(capabilities)
        .rlimits(rlimits)
        .no_new_privileges(!step.insecure)
        .build()
        .map_err(spec_error)?;
    let mut mounts = standard_mounts(step.insecure, step.resources.shm_size)?;
    for (file, destination) in [("hosts", "/etc/hosts"), ("resolv.conf", "/etc/resolv.conf")] {
        mounts.push(
            MountBuilder::default()
                .destination(destination)
                .typ("bind")
                .source(etc.join(file))
                .options(vec!["rbind".to_string(), "ro".to_string()])
                .build()
                .map_err(spec_error)?,
        );
    }
    for (mount, source) in step.mounts.iter().zip(sources) {
        let bind = |source: &Path, target: &str, readonly: bool| {
            MountBuilder::default()
                .destination(target)
                .typ("bind")
                .source(source)
                .options(vec![
                    "rbind".to_string(),
                    if readonly { "ro" } else { "rw" }.to_string(),
                ])
                .build()
                .map_err(spec_error)
        };
        mounts.push(match (mount, source) {
            (
                StepMount::Bind {
                    target, readonly, ..
                },
                Some(source),
            ) => bind(source, target, *readonly)?,
            (
                StepMount::Layers {
                    target, writable, ..
                },
                Some(source),
            ) => bind(source, target, !*writable)?,
            (
                StepMount::Beneath {
                    target, readonly, ..
                },
                Some(source),
            ) => bind(source, target, *readonly)?,
            (StepMount::File { target, .. }, Some(source)) => bind(source, target, true)?,
            (StepMount::Tmpfs { target, size, mode }, _) => {
                let mut options = vec![
                    "nosuid".to_string(),
                    "nodev".to_string(),
                    format!("mode={mode:o}"),
                ];
                if let Some(size) = size {
                    options.push(format!("size={size}"));
                }
                MountBuilder::default()
                    .destination(target)
                    .typ("tmpfs")
                    .source("tmpfs")
                    .options(options)
                    .build()
                    .map_err(spec_error)?
            }
            (mount, None) => {
                return Err(Error::Spec(format!(
                    "no host path for the mount at {}",
                    mount.target()
                )))
            }
        });
    }
    let mut namespaces = vec![
        LinuxNamespaceType::Pid,
        LinuxNamespaceType::Ipc,
        LinuxNamespaceType::Uts,
        LinuxNamespaceType::Mount,
    ];
    if step.network == Network::None {
        namespaces.push(LinuxNamespaceType::Network);
    }
    let namespaces = namespaces
        .into_iter()
        .map(|kind| LinuxNamespaceBuilder::default().typ(kind).build())
        .collect::<Result<Vec<_>, _>>()
        .map_err(spec_error)?;
    // Device nodes: none may be opened but the standard ones the runtime
    // allows itself (a step with CAP_MKNOD could otherwise make and read
    // the host's disks), as Docker sets it. An insecure step is privileged,
    // as BuildKit makes it: every host device is there and may be used
    // (loop devices, FUSE).
    let device_rule = LinuxDeviceCgroupBuilder::default()
        .allow(step.insecure)
        .access("rwm")
        .build()
        .map_err(spec_error)?;
    let resources = LinuxResourcesBuilder::default()
        .devices(vec![device_rule])
        .build()
        .map_err(spec_error)?;
    let (masked, readonly): (Vec<String>, Vec<String>) = if step.insecure {
        (Vec::new(), Vec::new())
    } else {
        (
            MASKED_PATHS.iter().map(|p| p.to_string()).collect(),
            READONLY_PATHS.iter().map(|p| p.to_string()).collect(),
        )
    };
    let mut linux = LinuxBuilder::default()
        .devices(if step.insecure {
            host_devices(Path::new("/dev"))?
        } else {
            Vec::new()
        })
        .namespaces(namespaces)
        .resources(resources)
        .masked_paths(masked)
        .readonly_paths(readonly);
    if !step.insecure {
        linux = linux.seccomp(seccomp()?);
    }
    let linux = linux.build().map_err(spec_error)?;
    SpecBuilder::default()
        .version("1.0.2")
        .root(
            RootBuilder::default()
                .path(rootfs)
                .readonly(false)
                .build()
                .map_err(spec_error)?,
        )
        .hostname(step.resources.hostname().to_string())
        .process(process)
        .mounts(mounts)
        .linux(linux)
        .build()
        .map_err(spec_error)
}

/// Device nodes the runtime makes in every container (and the host's
/// console, which a step must not take over): not listed again.
const RUNTIME_DEVICES: [&str; 8] = [
    "/dev/null",
    "/dev/zero",
    "/dev/full",
    "/dev/random",
    "/dev/urandom",
    "/dev/tty",
    "/dev/ptmx",
    "/dev/console",
];

/// Directories of /dev that are not the host's devices: the step's own file
/// systems, and those of udev and LXC, as runc leaves them out.
const NOT_HOST_DEVICES: [&str; 7] = ["pts", "shm", "mqueue", "fd", ".udev", ".lxc", ".lxd-mounts"];

/// The character and block devices under `dir` (the host's /dev), for a
/// privileged step. A directory that cannot be read is left out.
fn host_devices(dir: &Path) -> Result<Vec<LinuxDevice>, Error> {
    use std::os::unix::fs::{FileTypeExt, MetadataExt};
    let mut devices = Vec::new();
    let Ok(entries) = std::fs::read_dir(dir) else {
        return Ok(devices);
    };
    for entry in entries.flatten() {
        let path = entry.path();
        let Ok(metadata) = std::fs::symlink_metadata(&path) else {
            continue;
        };
        let file_type = metadata.file_type();
        if file_type.is_dir() {
            let name = entry.file_name();
            if !NOT_HOST_DEVICES.iter().any(|skipped| name == *skipped) {
                devices.extend(host_devices(&path)?);
            }
            continue;
        }
        let typ = if file_type.is_char_device() {
            LinuxDeviceType::C
        } else if file_type.is_block_device() {
            LinuxDeviceType::B
        } else {
            continue;
        };
        if RUNTIME_DEVICES.iter().any(|known| path == Path::new(known)) {
            continue;
        }
        devices.push(
            LinuxDeviceBuilder::default()
                .path(&path)
                .typ(typ)
                .major(i64::from(rustix::fs::major(metadata.rdev())))
                .minor(i64::from(rustix::fs::minor(metadata.rdev())))
                .file_mode(metadata.mode() & 0o7777)
                .uid(metadata.uid())
                .gid(metadata.gid())
                .build()
                .map_err(spec_error)?,
        );
    }
    Ok(devices)
}

/// Every capability this process may hand on (its bounding set): a step
/// cannot get what kiln does not have.
fn all_capabilities() -> std::collections::HashSet<Capability> {
    use Capability::*;
    // Capabilities by number, as in linux/capability.h.
    let numbered = [
        (0, Chown),
        (1, DacOverride),
        (2, DacReadSearch),
        (3, Fowner),
        (4, Fsetid),
        (5, Kill),
        (6, Setgid),
        (7, Setuid),
        (8, Setpcap),
        (9, LinuxImmutable),
        (10, NetBindService),
        (11, NetBroadcast),
        (12, NetAdmin),
        (13, NetRaw),
        (14, IpcLock),
        (15, IpcOwner),
        (16, SysModule),
        (17, SysRawio),
        (18, SysChroot),
        (19, SysPtrace),
        (20, SysPacct),
        (21, SysAdmin),
        (22, SysBoot),
        (23, SysNice),
        (24, SysResource),
        (25, SysTime),
        (26, SysTtyConfig),
        (27, Mknod),
        (28, Lease),
        (29, AuditWrite),
        (30, AuditControl),
        (31, Setfcap),
        (32, MacOverride),
        (33, MacAdmin),
        (34, Syslog),
        (35, WakeAlarm),
        (36, BlockSuspend),
        (37, AuditRead),
        (38, Perfmon),
        (39, Bpf),
        (40, CheckpointRestore),
    ];
    let bounding = std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|status| {
            status
                .lines()
                .find_map(|line| line.strip_prefix("CapBnd:"))
                .and_then(|hex| u64::from_str_radix(hex.trim(), 16).ok())
        })
        .unwrap_or(0);
    numbered
        .into_iter()
        .filter(|(bit, _)| bounding & (1u64 << bit) != 0)
        .map(|(_, capability)| capability)
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{Sensitive, User};

    fn step() -> Step {
        Step {
            args: vec!["/bin/sh".into(), "-c".into(), "true".into()],
            env: vec!["PATH=/bin".into()],
            secret_env: vec![("TOKEN".into(), Sensitive(b"hidden".to_vec()))],
            cwd: "/src".into(),
            user: User {
                uid: 1000,
                gid: 50,
                additional_gids: vec![7],
            },
            network: Network::Host,
            insecure: false,
            resources: crate::Resources::default(),
            mounts: vec![
                StepMount::Tmpfs {
                    target: "/scratch".into(),
                    size: Some(1024),
                    mode: 0o1777,
                },
                StepMount::Bind {
                    source: "/host/cache".into(),
                    target: "/cache".into(),
                    readonly: true,
                },
            ],
        }
    }

    fn build(step: &Step) -> Spec {
        config(
            step,
            Path::new("/rootfs"),
            Path::new("/bundle/etc"),
            &[None, Some(PathBuf::from("/host/cache"))],
            false,
        )
        .unwrap()
    }

    fn namespaces(spec: &Spec) -> Vec<LinuxNamespaceType> {
        spec.linux()
            .as_ref()
            .unwrap()
            .namespaces()
            .as_ref()
            .unwrap()
            .iter()
            .map(|n| n.typ())
            .collect()
    }

    #[test]
    fn a_sandboxed_step_gets_dockers_defaults() {
        let spec = build(&step());
        let process = spec.process().as_ref().unwrap();
        let capabilities = process.capabilities().as_ref().unwrap();
        let bounding = capabilities.bounding().as_ref().unwrap();
        assert_eq!(bounding.len(), 14);
        assert_eq!(
            capabilities.effective(),
            &Some(Default::default()),
            "user 1000 has none in effect"
        );
        assert!(!bounding.contains(&Capability::SysAdmin));
        assert!(bounding.contains(&Capability::Chown));
        assert_eq!(process.no_new_privileges(), Some(true));
        assert_eq!(process.user().uid(), 1000);
        assert_eq!(process.user().gid(), 50);
        assert_eq!(process.user().additional_gids(), &Some(vec![7]));
        assert_eq!(process.cwd(), &PathBuf::from("/src"));
        let env = process.env().as_ref().unwrap();
        assert!(env.contains(&"TOKEN=hidden".to_string()));
        let linux = spec.linux().as_ref().unwrap();
        assert!(linux
            .masked_paths()
            .as_ref()
            .unwrap()
            .contains(&"/proc/kcore".to_string()));
        assert!(linux
            .readonly_paths()
            .as_ref()
            .unwrap()
            .contains(&"/proc/sys".to_string()));
        let ns = namespaces(&spec);
        assert!(ns.contains(&LinuxNamespaceType::Pid));
        assert!(ns.contains(&LinuxNamespaceType::Mount));
        assert!(!ns.contains(&LinuxNamespaceType::Network), "host network");
        assert_eq!(spec.hostname(), &Some("buildkitsandbox".to_string()));
        let devices = linux
            .resources()
            .as_ref()
            .unwrap()
            .devices()
            .as_ref()
            .unwrap();
        assert!(!devices[0].allow(), "device nodes are denied first");
        let seccomp = linux.seccomp().as_ref().expect("a seccomp filter");
        let refused: Vec<&String> = seccomp
            .syscalls()
            .as_ref()
            .unwrap()
            .iter()
            .flat_map(|rule| rule.names())
            .collect();
        for name in ["unshare", "keyctl", "bpf", "clone3", "clone"] {
            assert!(refused.iter().any(|n| *n == name), "{name} is allowed");
        }
    }

    #[test]
    fn mounts_are_where_the_step_asked_with_the_options_it_asked() {
        let spec = build(&step());
        let mounts = spec.mounts().as_ref().unwrap();
        let find = |target: &str| {
            mounts
                .iter()
                .find(|m| m.destination() == &PathBuf::from(target))
                .unwrap_or_else(|| panic!("no mount at {target}"))
        };
        let sys = find("/sys");
        assert!(sys.options().as_ref().unwrap().contains(&"ro".to_string()));
        let hosts = find("/etc/hosts");
        assert_eq!(
            hosts.source(),
            &Some(PathBuf::from("/bundle/etc/hosts")),
            "the step's own hosts file"
        );
        let tmpfs = find("/scratch");
        assert_eq!(tmpfs.typ(), &Some("tmpfs".to_string()));
        assert!(tmpfs
            .options()
            .as_ref()
            .unwrap()
            .contains(&"size=1024".to_string()));
        let cache = find("/cache");
        assert_eq!(cache.source(), &Some(PathBuf::from("/host/cache")));
        assert!(cache
            .options()
            .as_ref()
            .unwrap()
            .contains(&"ro".to_string()));
    }

    #[test]
    fn network_none_and_insecure_change_what_they_should() {
        let mut isolated = step();
        isolated.network = Network::None;
        assert!(namespaces(&build(&isolated)).contains(&LinuxNamespaceType::Network));

        let mut insecure = step();
        insecure.insecure = true;
        let spec = build(&insecure);
        let process = spec.process().as_ref().unwrap();
        assert_eq!(process.no_new_privileges(), Some(false));
        let bounding = process
            .capabilities()
            .as_ref()
            .unwrap()
            .bounding()
            .as_ref()
            .unwrap();
        assert!(bounding.len() >= 14, "every capability kiln has");
        let linux = spec.linux().as_ref().unwrap();
        assert!(
            linux.seccomp().is_none(),
            "--security=insecure has no filter"
        );
        assert_eq!(linux.masked_paths(), &Some(Vec::new()));
        assert_eq!(linux.readonly_paths(), &Some(Vec::new()));
        let rules = linux
            .resources()
            .as_ref()
            .unwrap()
            .devices()
            .as_ref()
            .unwrap();
        assert!(rules[0].allow(), "a privileged step may use every device");
        let devices = linux.devices().as_ref().expect("the host's devices");
        let listed = |path: &str| devices.iter().any(|d| d.path() == Path::new(path));
        assert!(!listed("/dev/null"), "the runtime makes the standard nodes");
        if Path::new("/dev/loop-control").exists() {
            assert!(listed("/dev/loop-control"));
        }
    }

    #[test]
    fn a_mount_without_its_host_path_is_an_error() {
        let result = config(
            &step(),
            Path::new("/rootfs"),
            Path::new("/etc"),
            &[None, None],
            false,
        );
        assert!(matches!(result, Err(Error::Spec(message)) if message.contains("/cache")));
    }
}
