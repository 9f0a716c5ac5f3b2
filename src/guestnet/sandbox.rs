//! A VM's private network namespace: entered by the VM process before it runs
//! (a user namespace too, so it needs no root), filtered, then joined to the
//! internet by slirp4netns. Owns those steps and the connector process; must not
//! decide the policy (the parent module does) or know what runs inside.

use std::io::{Read, Write};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};

use crate::hosttool;
use std::time::Duration;

/// The connector's network inside the namespace (slirp4netns `--cidr`): its
/// gateway (.2) and DNS (.3) are refused by the filter, the namespace's own
/// address is .100. Distinct from QEMU's 10.0.2.0/24 so that logs are not ambiguous.
pub const CONNECTOR_CIDR: &str = "10.0.3.0/24";

/// Addresses the connector serves inside the namespace: always refused.
pub fn connector_addresses() -> Vec<std::net::IpAddr> {
    ["10.0.3.2", "10.0.3.3", "fd00::2", "fd00::3"]
        .iter()
        .filter_map(|a| a.parse().ok())
        .collect()
}

/// How long slirp4netns may take to configure the namespace.
const READY_WITHIN: Duration = Duration::from_secs(10);

/// What can go wrong setting up a VM's network.
#[derive(Debug, thiserror::Error)]
pub enum SandboxError {
    /// A tool the default network needs is missing.
    #[error(
        "{tool} is not installed; the default guest network (--net internet) needs it: {hint}"
    )]
    Missing {
        /// The tool.
        tool: &'static str,
        /// How to get it.
        hint: &'static str,
    },
    /// The host refuses unprivileged user namespaces, or another step failed.
    #[error("{0}")]
    Failed(String),
    /// An OS call failed.
    #[error("{0}")]
    Io(String, #[source] std::io::Error),
}

const INSTALL_HINT: &str =
    "install slirp4netns and nftables (Debian/Ubuntu: apt-get install slirp4netns nftables; Fedora: dnf install slirp4netns nftables), \
     or choose --net restricted (only --net-forward targets) or --net user (no isolation from the host)";

/// A program in `PATH` or in the sbin directories a user's `PATH` often lacks.
pub fn find(tool: &'static str) -> Result<PathBuf, SandboxError> {
    which::which(tool)
        .ok()
        .or_else(|| {
            ["/usr/sbin", "/sbin", "/usr/bin"]
                .iter()
                .map(|d| Path::new(d).join(tool))
                .find(|p| p.is_file())
        })
        .ok_or(SandboxError::Missing {
            tool,
            hint: INSTALL_HINT,
        })
}

/// The tools, found once per loop.
#[derive(Debug, Clone)]
pub struct Tools {
    nft: PathBuf,
    slirp4netns: PathBuf,
}

impl Tools {
    /// Find nft and slirp4netns, and check that this user may open the TUN
    /// device slirp4netns makes the namespace's interface with.
    pub fn find() -> Result<Tools, SandboxError> {
        tun_usable()?;
        Ok(Tools {
            nft: find("nft")?,
            slirp4netns: find("slirp4netns")?,
        })
    }
}

/// May this user open the TUN device slirp4netns makes the namespace's interface with?
pub fn tun_usable() -> Result<(), SandboxError> {
    let tun = Path::new("/dev/net/tun");
    match std::fs::OpenOptions::new().read(true).write(true).open(tun) {
        Ok(_) => Ok(()),
        Err(e) => Err(SandboxError::Failed(format!(
            "cannot open {} ({e}): the default guest network (--net internet) needs it; most distributions make it \
             mode 0666 (as root: chmod 0666 /dev/net/tun, or modprobe tun where it is missing), \
             or choose --net restricted or --net user",
            tun.display()
        ))),
    }
}

/// May this user make the VM's private user and network namespace (as a VM
/// process enters it: maps, loopback, capabilities dropped)? Runs `true` in one.
pub fn userns_usable() -> Result<(), SandboxError> {
    let mut cmd = hosttool::command("true");
    Entry::new().apply(&mut cmd);
    match hosttool::output(&mut cmd) {
        Ok(o) if o.status.success() => Ok(()),
        Ok(o) => Err(userns_refused(&format!("exit status {}", o.status))),
        Err(e) => Err(userns_refused(&e.to_string())),
    }
}

fn userns_refused(why: &str) -> SandboxError {
    SandboxError::Failed(format!(
        "cannot make a private network namespace for the guest ({why}): this host refuses unprivileged user namespaces \
         (Debian: sysctl kernel.unprivileged_userns_clone=1; Ubuntu 24.04: sysctl kernel.apparmor_restrict_unprivileged_userns=0 \
         or an AppArmor profile for qemu-system-x86_64), or choose --net restricted or --net user"
    ))
}

/// The uid and gid maps of the namespace, made before the fork: the child of a
/// multi-threaded process may not allocate.
#[derive(Debug, Clone)]
pub struct Entry {
    uid_map: Vec<u8>,
    gid_map: Vec<u8>,
}

impl Default for Entry {
    fn default() -> Self {
        Self::new()
    }
}

impl Entry {
    /// Map this user (root or not) to root inside the namespace, and nobody else.
    pub fn new() -> Entry {
        // SAFETY: getuid/getgid cannot fail.
        let (uid, gid) = unsafe { (libc::getuid(), libc::getgid()) };
        Entry {
            uid_map: format!("0 {uid} 1\n").into_bytes(),
            gid_map: format!("0 {gid} 1\n").into_bytes(),
        }
    }

    /// Have `cmd`'s process enter a new user and network namespace before it
    /// executes. Register after the process-group and death-signal set-up: the
    /// death signal survives (the namespace is owned by the same user).
    pub fn apply(&self, cmd: &mut Command) {
        let e = self.clone();
        // SAFETY: the closure only makes system calls (unshare, open, write,
        // close) on buffers allocated before the fork.
        unsafe {
            cmd.pre_exec(move || e.enter());
        }
    }

    fn enter(&self) -> std::io::Result<()> {
        // SAFETY: plain system calls on NUL-terminated constant paths and
        // buffers that live across the calls.
        unsafe {
            if libc::unshare(libc::CLONE_NEWUSER | libc::CLONE_NEWNET) != 0 {
                return Err(std::io::Error::last_os_error());
            }
            write_proc(c"/proc/self/setgroups", b"deny")?;
            write_proc(c"/proc/self/uid_map", &self.uid_map)?;
            write_proc(c"/proc/self/gid_map", &self.gid_map)?;
            loopback_up()?;
            // QEMU's user networking sends a guest's ICMP echo through a ping
            // socket, which a new namespace allows no group (whether it then
            // leaves the host is the host's own net.ipv4.ping_group_range).
            let _ = write_proc(c"/proc/sys/net/ipv4/ping_group_range", b"0 0");
            drop_namespace_root()?;
        }
        Ok(())
    }
}

/// The process is root of its namespace only to set it up: from its `exec` on it
/// holds no capability there (securebits `NOROOT`, locked, and no new privileges),
/// so a QEMU escape cannot flush the filter or reconfigure the namespace.
///
/// # Safety
/// Async-signal-safe: prctl only.
unsafe fn drop_namespace_root() -> std::io::Result<()> {
    const SECBIT_NOROOT: libc::c_ulong = 1 << 0;
    const SECBIT_NOROOT_LOCKED: libc::c_ulong = 1 << 1;
    const SECBIT_NO_CAP_AMBIENT_RAISE: libc::c_ulong = 1 << 6;
    const SECBIT_NO_CAP_AMBIENT_RAISE_LOCKED: libc::c_ulong = 1 << 7;
    let bits = SECBIT_NOROOT
        | SECBIT_NOROOT_LOCKED
        | SECBIT_NO_CAP_AMBIENT_RAISE
        | SECBIT_NO_CAP_AMBIENT_RAISE_LOCKED;
    // SAFETY: plain prctl calls with integer arguments.
    unsafe {
        if libc::prctl(libc::PR_SET_SECUREBITS, bits, 0, 0, 0) != 0
            || libc::prctl(libc::PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) != 0
        {
            return Err(std::io::Error::last_os_error());
        }
    }
    Ok(())
}

/// Bring the namespace's `lo` up: QEMU's user networking makes the socket pair
/// of each `--net-forward` helper over 127.0.0.1, and a connect over a loopback
/// that is down hangs the whole VM until it times out.
///
/// # Safety
/// Async-signal-safe: socket, ioctl and close only.
unsafe fn loopback_up() -> std::io::Result<()> {
    // SAFETY: plain system calls on a zeroed, correctly sized ifreq.
    unsafe {
        let fd = libc::socket(libc::AF_INET, libc::SOCK_DGRAM | libc::SOCK_CLOEXEC, 0);
        if fd < 0 {
            return Err(std::io::Error::last_os_error());
        }
        let mut ifr: libc::ifreq = std::mem::zeroed();
        for (d, s) in ifr.ifr_name.iter_mut().zip(b"lo\0") {
            *d = *s as libc::c_char;
        }
        let mut r = libc::ioctl(fd, libc::SIOCGIFFLAGS, &mut ifr);
        if r == 0 {
            ifr.ifr_ifru.ifru_flags |= (libc::IFF_UP | libc::IFF_RUNNING) as libc::c_short;
            r = libc::ioctl(fd, libc::SIOCSIFFLAGS, &ifr);
        }
        let err = std::io::Error::last_os_error();
        libc::close(fd);
        if r != 0 {
            return Err(err);
        }
    }
    Ok(())
}

/// # Safety
/// Async-signal-safe: open, write and close only.
unsafe fn write_proc(path: &std::ffi::CStr, data: &[u8]) -> std::io::Result<()> {
    // SAFETY: the caller's contract; `path` is NUL-terminated.
    let fd = unsafe { libc::open(path.as_ptr(), libc::O_WRONLY | libc::O_CLOEXEC) };
    if fd < 0 {
        return Err(std::io::Error::last_os_error());
    }
    // SAFETY: `data` is valid for its length.
    let n = unsafe { libc::write(fd, data.as_ptr().cast(), data.len()) };
    let err = std::io::Error::last_os_error();
    // SAFETY: fd is ours.
    unsafe { libc::close(fd) };
    if n != data.len() as isize {
        return Err(err);
    }
    Ok(())
}

/// A VM's namespace joined to the internet: the slirp4netns process, ended with
/// this value (it also ends by itself when its exit pipe closes or the VM dies).
#[derive(Debug)]
pub struct Attached {
    slirp: Child,
    _exit: OwnedFd,
}

impl Drop for Attached {
    fn drop(&mut self) {
        let _ = self.slirp.kill();
        let _ = self.slirp.wait();
    }
}

/// Filter the namespace of process `pid` with `rules`, then (and only then) join
/// it to the internet through slirp4netns. Blocks until the network is up.
/// slirp4netns writes its messages to `log`. Both tools start through
/// [`hosttool::command`] (no credentials, own group, death signal).
pub fn attach(tools: &Tools, pid: u32, rules: &str, log: &Path) -> Result<Attached, SandboxError> {
    let ns = |kind: &str| {
        let p = format!("/proc/{pid}/ns/{kind}");
        std::fs::File::open(&p).map_err(|e| SandboxError::Io(format!("open {p}"), e))
    };
    let (userns, netns) = (ns("user")?, ns("net")?);
    // The filter first: until it is in place the namespace has no route out.
    let mut nft = hosttool::command(&tools.nft);
    nft.args(["-f", "-"])
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .stderr(Stdio::piped());
    let (ufd, nfd) = (userns.as_raw_fd(), netns.as_raw_fd());
    // SAFETY: setns on descriptors opened before the fork; no allocation.
    unsafe {
        nft.pre_exec(move || {
            if libc::setns(ufd, libc::CLONE_NEWUSER) != 0
                || libc::setns(nfd, libc::CLONE_NEWNET) != 0
            {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        });
    }
    let mut child = nft
        .spawn()
        .map_err(|e| SandboxError::Io(format!("run {}", tools.nft.display()), e))?;
    if let Some(mut stdin) = child.stdin.take() {
        if let Err(e) = stdin.write_all(rules.as_bytes()) {
            let _ = child.kill();
            let _ = child.wait();
            return Err(SandboxError::Io("write the nft ruleset".into(), e));
        }
    }
    let out = child
        .wait_with_output()
        .map_err(|e| SandboxError::Io("wait for nft".into(), e))?;
    if !out.status.success() {
        return Err(SandboxError::Failed(format!(
            "nft could not load the guest network filter ({}): {}",
            out.status,
            String::from_utf8_lossy(&out.stderr).trim()
        )));
    }
    drop((userns, netns));

    let (ready_r, ready_w) = pipe()?;
    let (exit_r, exit_w) = pipe()?;
    // Above 2 and 4, so that moving them to 3 and 4 in the child cannot clobber
    // one with the other.
    let (ready_w, exit_r) = (above(ready_w)?, above(exit_r)?);
    let mut slirp = hosttool::command(&tools.slirp4netns);
    slirp
        .args([
            "--configure",
            "--mtu=65520",
            "--disable-host-loopback",
            "--disable-dns",
            "--enable-ipv6",
            "--enable-sandbox",
            "--enable-seccomp",
        ])
        .arg(format!("--cidr={CONNECTOR_CIDR}"))
        .args(["--ready-fd=3", "--exit-fd=4"])
        .arg(pid.to_string())
        .arg("tap0")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(
            std::fs::File::create(log)
                .map_err(|e| SandboxError::Io(format!("create {}", log.display()), e))?,
        );
    let (rw, er) = (ready_w.as_raw_fd(), exit_r.as_raw_fd());
    // SAFETY: dup2 only; the descriptors outlive the fork.
    unsafe {
        slirp.pre_exec(move || {
            if libc::dup2(rw, 3) < 0 || libc::dup2(er, 4) < 0 {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        });
    }
    let mut child = slirp
        .spawn()
        .map_err(|e| SandboxError::Io(format!("run {}", tools.slirp4netns.display()), e))?;
    drop((ready_w, exit_r));
    if !wait_readable(&ready_r, READY_WITHIN) {
        let _ = child.kill();
        let _ = child.wait();
        let mut msg = String::new();
        if let Ok(f) = std::fs::File::open(log) {
            let _ = f.take(4096).read_to_string(&mut msg);
        }
        return Err(SandboxError::Failed(format!(
            "slirp4netns did not bring the guest network up: {}",
            msg.trim()
        )));
    }
    Ok(Attached {
        slirp: child,
        _exit: exit_w,
    })
}

/// `fd` moved to a number above 10 (close-on-exec).
fn above(fd: OwnedFd) -> Result<OwnedFd, SandboxError> {
    // SAFETY: F_DUPFD_CLOEXEC on a descriptor we own.
    let n = unsafe { libc::fcntl(fd.as_raw_fd(), libc::F_DUPFD_CLOEXEC, 10) };
    if n < 0 {
        return Err(SandboxError::Io(
            "fcntl".into(),
            std::io::Error::last_os_error(),
        ));
    }
    // SAFETY: a fresh descriptor, ours.
    Ok(unsafe { OwnedFd::from_raw_fd(n) })
}

fn pipe() -> Result<(OwnedFd, OwnedFd), SandboxError> {
    let mut fds = [0; 2];
    // SAFETY: fds has room for two descriptors.
    if unsafe { libc::pipe2(fds.as_mut_ptr(), libc::O_CLOEXEC) } != 0 {
        return Err(SandboxError::Io(
            "pipe".into(),
            std::io::Error::last_os_error(),
        ));
    }
    // SAFETY: both descriptors are fresh and ours.
    Ok(unsafe { (OwnedFd::from_raw_fd(fds[0]), OwnedFd::from_raw_fd(fds[1])) })
}

/// True when `fd` has data (or its writer wrote and closed) within `within`;
/// false on time-out or when the writer closed without writing.
fn wait_readable(fd: &OwnedFd, within: Duration) -> bool {
    let mut p = libc::pollfd {
        fd: fd.as_raw_fd(),
        events: libc::POLLIN,
        revents: 0,
    };
    let deadline = std::time::Instant::now() + within;
    loop {
        let left = deadline.saturating_duration_since(std::time::Instant::now());
        if left.is_zero() {
            return false;
        }
        // SAFETY: one valid pollfd.
        let n = unsafe { libc::poll(&mut p, 1, left.as_millis().min(i32::MAX as u128) as i32) };
        if n < 0 && std::io::Error::last_os_error().kind() == std::io::ErrorKind::Interrupted {
            continue;
        }
        if n <= 0 {
            return false;
        }
        let mut b = [0u8; 1];
        // SAFETY: one byte into a valid buffer.
        let r = unsafe { libc::read(fd.as_raw_fd(), b.as_mut_ptr().cast(), 1) };
        return r == 1;
    }
}

/// Can this host give VMs the default network? Builds one namespace with the
/// real filter and connector around a short-lived process, then ends it.
pub async fn probe(tools: &Tools, rules: &str) -> Result<(), SandboxError> {
    let mut cmd = hosttool::command("sleep");
    cmd.arg("30").stdout(Stdio::null()).stderr(Stdio::null());
    Entry::new().apply(&mut cmd);
    let mut child = hosttool::spawn_async(cmd).map_err(|e| userns_refused(&e.to_string()))?;
    let pid = child.id().unwrap_or(0);
    let tools = tools.clone();
    let rules = rules.to_string();
    let log = tempfile::NamedTempFile::new()
        .map_err(|e| SandboxError::Io("create a temporary file".into(), e))?;
    let r = tokio::task::spawn_blocking(move || attach(&tools, pid, &rules, log.path()).map(drop))
        .await
        .map_err(|e| SandboxError::Failed(format!("network probe: {e}")))?;
    let _ = child.kill().await;
    r
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The real thing on this host: a namespace, the policy's filter loaded by
    /// nft inside it, slirp4netns bringing it up (scripts/install-deps.sh
    /// installs both).
    #[tokio::test(flavor = "current_thread")]
    async fn probe_builds_a_filtered_connected_namespace() {
        let tools = Tools::find().expect("nft and slirp4netns (scripts/install-deps.sh)");
        let host = crate::guestnet::host_nets().unwrap();
        let rules = crate::guestnet::Policy::default().ruleset(
            &host.addresses,
            &connector_addresses(),
            &host.onlink,
        );
        probe(&tools, &rules).await.unwrap();
    }

    /// The VM process is in its own namespaces and holds no capability there.
    #[test]
    fn the_vm_process_has_no_capability_in_its_namespace() {
        let mut cmd = hosttool::command("sh");
        cmd.args([
            "-c",
            "grep -E '^Cap(Eff|Prm)' /proc/self/status; readlink /proc/self/ns/net",
        ]);
        Entry::new().apply(&mut cmd);
        let out = hosttool::output(&mut cmd).unwrap();
        let text = String::from_utf8_lossy(&out.stdout).into_owned();
        assert!(
            out.status.success(),
            "{text}{}",
            String::from_utf8_lossy(&out.stderr)
        );
        assert!(text.contains("CapEff:\t0000000000000000"), "{text}");
        assert!(text.contains("CapPrm:\t0000000000000000"), "{text}");
        let own = std::fs::read_link("/proc/self/ns/net").unwrap();
        assert!(!text.contains(&own.display().to_string()), "{text}");
    }

    #[tokio::test(flavor = "current_thread")]
    async fn a_ruleset_nft_refuses_is_reported() {
        let tools = Tools::find().unwrap();
        let e = probe(&tools, "table inet ghrm { nonsense }")
            .await
            .unwrap_err();
        assert!(e.to_string().contains("nft could not load"), "{e}");
    }
}
