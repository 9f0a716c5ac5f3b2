//! The host's checks: the runtime and each backend's tools, KVM (a real boot),
//! QEMU's microvm machine, the bundle and its kernel's boot, the guest network,
//! free space, and the descriptor limit. It only looks and boots probe guests
//! that end by themselves; it changes nothing on the host.

use std::path::{Path, PathBuf};
use std::time::Duration;

use super::{Check, DoctorConfig};
use crate::backend::qemu::{self, Accel, NetMode};
use crate::backend::{self, Tool};
use crate::guestnet::sandbox;
use crate::hosttool;
use crate::types::runtime::Runtime;

/// Free space under which a place is warned about.
const LOW_SPACE: u64 = 4 << 30;

const KVM_FIX: &str =
    "enable KVM for this user: load kvm_intel or kvm_amd, add the user to the kvm group \
     (or chmod 0666 /dev/kvm), or turn on nested virtualisation where this host is itself a VM";

/// Every host check, in order.
pub(super) async fn checks(cfg: &DoctorConfig) -> Vec<Check> {
    let mut out = vec![];
    let r = &cfg.runner;
    let runtime = match r.runtime {
        Some(rt) => {
            out.push(Check::ok(
                "runtime",
                format!("{} (-R {})", rt.name(), rt.name()),
            ));
            Some(rt)
        }
        None => match backend::detected() {
            Some(rt) => {
                out.push(Check::ok(
                    "runtime",
                    format!("{} (detected; -R chooses)", rt.name()),
                ));
                Some(rt)
            }
            None => {
                out.push(Check::fail(
                    "runtime",
                    "no microVM runtime detected (-R '' tries podman with krun, then krunvm; QEMU only when asked)",
                    "install podman with the krun runtime, or krunvm with buildah, or choose -R qemu with a bundle (-i)",
                ));
                None
            }
        },
    };
    for rt in [Runtime::Qemu, Runtime::Krunvm, Runtime::Podman] {
        out.push(tools(rt, runtime == Some(rt)));
    }
    if runtime == Some(Runtime::Qemu) {
        out.extend(qemu_checks(cfg).await);
    } else if runtime.is_some() {
        out.push(kvm_device(true));
        out.push(Check::warn(
            "net",
            format!(
                "{}: the guest uses this host's network through libkrun's socket impersonation (TSI): a job can \
                 reach this host's services, its LAN and cloud metadata services",
                runtime.map_or("", Runtime::name)
            ),
            "-R qemu keeps jobs off the host (--net)",
        ));
    }
    out.extend(space(cfg, runtime));
    out.push(nofile(cfg));
    out
}

/// One backend's tools: required only for the chosen runtime.
fn tools(rt: Runtime, required: bool) -> Check {
    let found: Vec<Tool> = backend::tools_of(rt);
    let name = format!("tools.{}", rt.name());
    let missing: Vec<&Tool> = found.iter().filter(|t| !t.present).collect();
    if missing.is_empty() {
        let names: Vec<&str> = found.iter().map(|t| t.name).collect();
        return Check::ok(&name, format!("{} present", names.join(", ")));
    }
    let names: Vec<&str> = missing.iter().map(|t| t.name).collect();
    let detail = if required {
        format!(
            "{} not installed; -R {} needs it",
            names.join(", "),
            rt.name()
        )
    } else {
        format!(
            "{} not installed (only -R {} needs it)",
            names.join(", "),
            rt.name()
        )
    };
    let fix: Vec<&str> = missing.iter().map(|t| t.hint).collect();
    Check::need(required, &name, detail, fix.join("; "))
}

/// Can this user open /dev/kvm and make a VM with it (no guest booted)?
fn kvm_device(required: bool) -> Check {
    match kvm_opens() {
        Ok(()) => Check::ok(
            "kvm",
            "/dev/kvm opens and creates a VM (no guest boot tried: that needs -R qemu and a bundle)",
        ),
        Err(e) => Check::need(required, "kvm", format!("/dev/kvm is not usable: {e}"), KVM_FIX),
    }
}

fn kvm_opens() -> Result<(), String> {
    use std::os::fd::AsRawFd;
    const KVM_GET_API_VERSION: libc::c_ulong = 0xAE00;
    const KVM_CREATE_VM: libc::c_ulong = 0xAE01;
    let f = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open("/dev/kvm")
        .map_err(|e| e.to_string())?;
    // SAFETY: KVM ioctls on a descriptor we own, with integer arguments.
    let version = unsafe { libc::ioctl(f.as_raw_fd(), KVM_GET_API_VERSION, 0) };
    if version != 12 {
        return Err(format!("unexpected KVM API version {version}"));
    }
    // SAFETY: as above; the returned descriptor is closed at once.
    let vm = unsafe { libc::ioctl(f.as_raw_fd(), KVM_CREATE_VM, 0) };
    if vm < 0 {
        return Err(format!(
            "KVM_CREATE_VM: {}",
            std::io::Error::last_os_error()
        ));
    }
    // SAFETY: a descriptor KVM just gave us.
    unsafe { libc::close(vm) };
    Ok(())
}

/// QEMU: microvm support, the bundle, KVM (a real boot), the bundle's boot, the network.
async fn qemu_checks(cfg: &DoctorConfig) -> Vec<Check> {
    let r = &cfg.runner;
    let mut out = vec![];
    let binary = qemu::qemu_binary().ok();
    if let Some(b) = &binary {
        out.push(microvm(b));
    }
    let bundle = bundle(r);
    let files = bundle.as_ref().ok().cloned();
    out.push(bundle.err().unwrap_or_else(|| {
        let info = crate::image::BundleInfo::load(Path::new(&r.image)).ok();
        let what = info.map_or(String::new(), |i| {
            format!(
                ": kernel {}, actions runner {}, {}",
                i.kernel_release,
                i.runner_version,
                match &i.root {
                    Some(root) => format!("root disk of {}", root.image),
                    None => "initramfs userland".into(),
                }
            )
        });
        Check::ok("bundle", format!("{}{what}", r.image))
    }));
    // KVM: a guest must boot with it; without a bundle only the device is tried.
    let kvm = match (&binary, &files, r.qemu.accel) {
        (_, _, Accel::Tcg) => {
            out.push(Check::ok(
                "kvm",
                "not used: --accel tcg (software emulation, slow)",
            ));
            false
        }
        (Some(b), Some((kernel, initrd, _)), accel) => {
            let (check, ok) = kvm_boot(b, kernel, initrd, accel == Accel::Kvm).await;
            out.push(check);
            ok
        }
        (_, _, accel) => {
            out.push(kvm_device(accel == Accel::Kvm));
            false
        }
    };
    if let (Some(b), Some((kernel, initrd, _))) = (&binary, &files) {
        let kvm = kvm || r.qemu.accel == Accel::Kvm;
        out.push(if cfg.boot {
            boot(b, kernel, initrd, kvm).await
        } else {
            Check::warn(
                "boot",
                "the bundle's kernel was not booted (--no-boot)",
                "run doctor without --no-boot",
            )
        });
    }
    out.extend(network(&r.qemu).await);
    out
}

/// QEMU's version, and whether it has the microvm machine.
fn microvm(binary: &Path) -> Check {
    let version = hosttool::output(hosttool::command(binary).arg("--version"))
        .ok()
        .and_then(|o| {
            String::from_utf8_lossy(&o.stdout)
                .lines()
                .next()
                .map(|l| l.trim().to_string())
        })
        .unwrap_or_else(|| "QEMU of unknown version".into());
    let machines = hosttool::output(hosttool::command(binary).args(["-M", "help"]));
    match machines {
        Ok(o) if String::from_utf8_lossy(&o.stdout).lines().any(|l| l.split_whitespace().next() == Some("microvm")) => {
            Check::ok("qemu.microvm", format!("{version} ({}) has -M microvm", binary.display()))
        }
        Ok(_) => Check::fail(
            "qemu.microvm",
            format!("{version} ({}) has no microvm machine", binary.display()),
            "install a QEMU with microvm (4.2 or later; Debian/Ubuntu: apt-get install qemu-system-x86; Fedora: dnf install qemu-system-x86-core)",
        ),
        Err(e) => Check::fail(
            "qemu.microvm",
            format!("cannot run {} -M help: {e}", binary.display()),
            qemu::QEMU_HINT,
        ),
    }
}

/// `-i`: a bundle directory with a valid `bundle.json`, its kernel, initramfs and root disk.
fn bundle(r: &crate::runner::config::RunnerConfig) -> Result<(PathBuf, PathBuf, bool), Check> {
    let dir = Path::new(&r.image);
    let remake = "make the bundle again: orchestrator image bundle … --out DIR (README \"Images\"), and give -i DIR";
    if !dir.is_dir() {
        return Err(Check::fail(
            "bundle",
            format!(
                "-i {}: not a directory; with -R qemu, -i is a bundle directory",
                r.image
            ),
            remake,
        ));
    }
    let (kernel, initrd, root) = qemu::bundle_files(dir, r.qemu.kernel.as_deref())
        .map_err(|e| Check::fail("bundle", chain(&e), remake))?;
    for (what, p) in [("kernel", &kernel), ("initramfs", &initrd)] {
        if !p.is_file() {
            return Err(Check::fail(
                "bundle",
                format!("-i {}: its {what} {} is missing", r.image, p.display()),
                remake,
            ));
        }
    }
    Ok((kernel, initrd, root.is_some()))
}

/// KVM really boots a guest (the probe the loops run), or TCG will be used.
async fn kvm_boot(binary: &Path, kernel: &Path, initrd: &Path, asked: bool) -> (Check, bool) {
    if let Err(e) = kvm_opens() {
        let detail = format!("/dev/kvm is not usable ({e})");
        return if asked {
            (
                Check::fail("kvm", format!("{detail}; --accel kvm asks for it"), KVM_FIX),
                false,
            )
        } else {
            (
                Check::warn(
                    "kvm",
                    format!("{detail}: QEMU will use TCG (software emulation, much slower)"),
                    KVM_FIX,
                ),
                false,
            )
        };
    }
    let remembered = qemu::kvm_remembered(binary, kernel);
    match qemu::probe_boot(binary, kernel, initrd, true, Duration::from_secs(20)).await {
        Ok(t) => {
            let mut detail = format!("a guest booted with KVM in {:.1} s", t.as_secs_f64());
            if remembered == Some(false) {
                detail.push_str(&format!(
                    "; but the loops remember an earlier failed probe in {} and will use TCG: delete that file",
                    qemu::kvm_cache().display()
                ));
            }
            (Check::ok("kvm", detail), true)
        }
        Err(e) => {
            let detail = format!("/dev/kvm opens, but a guest did not boot with KVM (nested or restricted KVM?): {e}");
            if asked {
                (
                    Check::fail(
                        "kvm",
                        format!("{detail}; --accel kvm asks for it"),
                        format!("{KVM_FIX}; or use --accel auto"),
                    ),
                    false,
                )
            } else {
                (
                    Check::warn(
                        "kvm",
                        format!("{detail}; QEMU will use TCG (software emulation, much slower)"),
                        KVM_FIX,
                    ),
                    false,
                )
            }
        }
    }
}

/// The bundle's kernel boots to its init under the accelerator the loops would use.
async fn boot(binary: &Path, kernel: &Path, initrd: &Path, kvm: bool) -> Check {
    let (accel, within) = if kvm { ("KVM", 30) } else { ("TCG", 120) };
    match qemu::probe_boot(binary, kernel, initrd, kvm, Duration::from_secs(within)).await {
        Ok(t) => Check::ok(
            "boot",
            format!("the bundle's kernel reached its init under {accel} in {:.1} s", t.as_secs_f64()),
        ),
        Err(e) => Check::fail(
            "boot",
            format!("the bundle's kernel did not boot under {accel}: {e}"),
            "make the bundle again with a kernel that boots under QEMU microvm (virtio-mmio, 9p and ext4 built in \
             or as modules; README \"Images\"), or check --kernel",
        ),
    }
}

/// The guest network of `--net`: its tools, the TUN device, user namespaces, one
/// real filtered namespace, and ICMP.
async fn network(q: &qemu::QemuConfig) -> Vec<Check> {
    match q.net {
        NetMode::Restricted => return vec![Check::ok("net", "--net restricted: guests reach only --net-forward targets")],
        NetMode::User => {
            return vec![Check::warn(
                "net",
                "--net user: jobs can reach this host's loopback services through 10.0.2.2, its other addresses, \
                 its LAN and cloud metadata services",
                "drop --net user: the default (--net internet) closes those",
            )]
        }
        NetMode::Internet => {}
    }
    let mut out = vec![];
    let note = |name: &str, r: Result<String, sandbox::SandboxError>, out: &mut Vec<Check>| match r
    {
        Ok(d) => out.push(Check::ok(name, d)),
        Err(e) => {
            let (detail, fix) = split_fix(&e.to_string());
            out.push(Check::fail(name, detail, fix));
        }
    };
    for tool in ["slirp4netns", "nft"] {
        let r = sandbox::find(tool).map(|p| {
            format!(
                "{} (the default guest network, --net internet)",
                p.display()
            )
        });
        note(&format!("net.{tool}"), r, &mut out);
    }
    note(
        "net.tun",
        sandbox::tun_usable().map(|_| "/dev/net/tun opens for this user".into()),
        &mut out,
    );
    note(
        "net.userns",
        sandbox::userns_usable()
            .map(|_| "this user can make a private user and network namespace".into()),
        &mut out,
    );
    if !out.iter().any(|c| c.status == super::Status::Fail) {
        let r = match (sandbox::Tools::find(), crate::guestnet::host_nets()) {
            (Ok(tools), Ok(host)) => {
                let rules = q.policy.ruleset(
                    &host.addresses,
                    &sandbox::connector_addresses(),
                    &host.onlink,
                );
                sandbox::probe(&tools, &rules).await.map(|_| {
                    "a VM's namespace came up: filter loaded by nft, joined to the internet by slirp4netns".to_string()
                })
            }
            (Err(e), _) => Err(e),
            (_, Err(e)) => Err(sandbox::SandboxError::Io(
                "list the host's addresses".into(),
                e,
            )),
        };
        note("net.namespace", r, &mut out);
    }
    out.push(ping());
    out
}

/// Split "what; fix" texts of the sandbox's errors at their first ": install"/", or choose".
fn split_fix(msg: &str) -> (String, String) {
    for sep in [
        "; the default guest network (--net internet) needs it: ",
        ": the default guest network",
        " (Debian:",
    ] {
        if let Some(i) = msg.find(sep) {
            let (d, f) = msg.split_at(i);
            let f = f.trim_start_matches(';').trim_start_matches(':').trim();
            return (
                d.trim().to_string(),
                f.trim_start_matches('(').trim_end_matches(')').to_string(),
            );
        }
    }
    (
        msg.to_string(),
        "see DEVELOPMENT.md \"The guest network\"; or choose --net restricted or --net user".into(),
    )
}

/// `net.ipv4.ping_group_range` must hold this user's group for guests' ICMP echo.
fn ping() -> Check {
    let fix = "as root: sysctl -w net.ipv4.ping_group_range='0 2147483647' (scripts/install-deps.sh does; \
               make it permanent in /etc/sysctl.d)";
    let text = match std::fs::read_to_string("/proc/sys/net/ipv4/ping_group_range") {
        Ok(t) => t,
        Err(e) => {
            return Check::warn(
                "net.ping",
                format!("cannot read net.ipv4.ping_group_range: {e}"),
                fix,
            )
        }
    };
    let mut it = text
        .split_whitespace()
        .filter_map(|n| n.parse::<u64>().ok());
    let (lo, hi) = (it.next().unwrap_or(1), it.next().unwrap_or(0));
    // SAFETY: getgid cannot fail.
    let gid = u64::from(unsafe { libc::getgid() });
    if (lo..=hi).contains(&gid) {
        Check::ok(
            "net.ping",
            format!("guests can ping: net.ipv4.ping_group_range {lo} {hi} holds group {gid}"),
        )
    } else {
        Check::warn(
            "net.ping",
            format!("guests cannot ping (ICMP echo): net.ipv4.ping_group_range {lo} {hi} leaves out group {gid}"),
            fix,
        )
    }
}

/// Free space where per-VM overlays, scratch disks and the loops' state go.
fn space(cfg: &DoctorConfig, runtime: Option<Runtime>) -> Vec<Check> {
    let r = &cfg.runner;
    let mut out = vec![];
    let state = std::env::temp_dir();
    out.push(room(
        "space.state",
        &state,
        "loop directories and VM state ($TMPDIR)",
        None,
        cfg.loops,
    ));
    if runtime == Some(Runtime::Qemu) {
        let overlays = std::env::var_os("TMPDIR")
            .filter(|v| !v.is_empty())
            .map_or_else(|| PathBuf::from("/var/tmp"), PathBuf::from);
        out.push(room(
            "space.overlays",
            &overlays,
            "QEMU's per-VM overlays of root disks",
            None,
            cfg.loops,
        ));
        let root_disk = qemu::bundle_files(Path::new(&r.image), None)
            .map_or(true, |(_, _, root)| root.is_some());
        if r.qemu.scratch > 0 && root_disk {
            out.push(room(
                "space.scratch",
                &qemu::scratch_root(),
                "per-VM scratch disks",
                Some(r.qemu.scratch),
                cfg.loops,
            ));
        }
    }
    out
}

/// Free space at `path` (or its nearest existing parent): warn under a few GiB;
/// with a per-VM `disk`, fail when one would not fit and warn when `loops` would not.
fn room(name: &str, path: &Path, what: &str, disk: Option<u64>, loops: u32) -> Check {
    let mut at = path.to_path_buf();
    while !at.exists() {
        match at.parent() {
            Some(p) => at = p.to_path_buf(),
            None => break,
        }
    }
    let free = match nix::sys::statvfs::statvfs(&at) {
        Ok(st) => st.blocks_available().saturating_mul(st.fragment_size()),
        Err(e) => {
            return Check::warn(
                name,
                format!("cannot measure the free space of {}: {e}", at.display()),
                "",
            )
        }
    };
    let gib = |b: u64| format!("{:.1} GiB", b as f64 / f64::from(1u32 << 30));
    let detail = format!("{} free at {} ({what})", gib(free), path.display());
    let var = if name == "space.scratch" {
        "GHRM_SCRATCH_DIR"
    } else {
        "TMPDIR"
    };
    let fix = format!("free space there, or set {var} to a larger file system");
    match disk {
        Some(d) if free < d => Check::fail(
            name,
            format!("{detail}: a {} scratch disk would not fit", gib(d)),
            format!("{fix}, or lower --scratch-size"),
        ),
        Some(d) if free < d.saturating_mul(u64::from(loops)) => Check::warn(
            name,
            format!(
                "{detail}: {loops} scratch disks of {} would not fit if jobs fill them",
                gib(d)
            ),
            format!("{fix}, or lower --scratch-size or -n"),
        ),
        _ if free < LOW_SPACE => {
            Check::warn(name, format!("{detail}: less than {}", gib(LOW_SPACE)), fix)
        }
        _ => Check::ok(name, detail),
    }
}

/// The soft limit on open descriptors, against what N loops may hold.
fn nofile(cfg: &DoctorConfig) -> Check {
    let mut lim = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit fills a valid rlimit.
    if unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim) } != 0 {
        return Check::warn("nofile", "cannot read RLIMIT_NOFILE", "");
    }
    // The orchestrator holds a few per loop; a loop two per forwarded connection
    // (at most MAX_CONNECTIONS per --net-forward) besides its own.
    let forwards = cfg.runner.qemu.forwards.len() as u64;
    let needed = 256
        + 8 * u64::from(cfg.loops)
        + 2 * forwards * crate::guestnet::forward::MAX_CONNECTIONS as u64;
    let (soft, hard) = (lim.rlim_cur, lim.rlim_max);
    if soft >= needed {
        return Check::ok(
            "nofile",
            format!("ulimit -n {soft} (≥ {needed} for {} loop(s))", cfg.loops),
        );
    }
    let fix = if hard >= needed {
        format!(
            "ulimit -n {} before starting the orchestrator (systemd: LimitNOFILE={needed})",
            hard.min(65536)
        )
    } else {
        format!("raise the hard limit to at least {needed} (/etc/security/limits.conf, or systemd LimitNOFILE={needed})")
    };
    Check::warn(
        "nofile",
        format!(
            "ulimit -n {soft} is low for {} loop(s) (want ≥ {needed})",
            cfg.loops
        ),
        fix,
    )
}

/// An error and its causes on one line.
fn chain(e: &dyn std::error::Error) -> String {
    let mut s = e.to_string();
    let mut src = e.source();
    while let Some(c) = src {
        s.push_str(&format!(": {c}"));
        src = c.source();
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_scratch_disk_that_does_not_fit_fails() {
        let d = tempfile::tempdir().unwrap();
        let c = room(
            "space.scratch",
            &d.path().join("not/yet"),
            "x",
            Some(u64::MAX / 2),
            1,
        );
        assert_eq!(c.status, super::super::Status::Fail, "{c:?}");
        assert!(c.fix.unwrap().contains("--scratch-size"));
        let c = room("space.state", d.path(), "x", None, 1);
        assert_ne!(c.status, super::super::Status::Fail, "{c:?}");
    }

    #[test]
    fn sandbox_errors_split_into_detail_and_fix() {
        let e = sandbox::SandboxError::Missing {
            tool: "nft",
            hint: "install slirp4netns and nftables",
        };
        let (d, f) = split_fix(&e.to_string());
        assert_eq!(d, "nft is not installed");
        assert!(f.contains("install slirp4netns and nftables"), "{f}");
    }
}
