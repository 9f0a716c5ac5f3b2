//! A snapshot template's wait (`ghrm.wait=1`): PID 1 waits on the resume port until
//! the host restores it and sends [`protocol::resume`], then reseeds the RNG, sets
//! the clock and forgets cached disk blocks before anything else runs. It must not
//! mount, configure the network or start anything: that follows, per VM.

use std::io::{Read, Write};
use std::path::PathBuf;
use std::time::{Duration, Instant};

use protocol::resume::{Resume, ACK, ENTROPY, MAX_MESSAGE, PORT_NAME, WAITING};

/// The environment variable that carries the resumed command line to an
/// entrypoint we execute (stage 2, `-D`): its `/proc/cmdline` is the template's.
pub const CMDLINE_VAR: &str = "GHRM_CMDLINE";

/// The resume port's device (`/dev/vportNpM`), once virtio_console made it.
fn find_port(wait: Duration) -> Result<PathBuf, String> {
    let deadline = Instant::now() + wait;
    loop {
        if let Ok(rd) = std::fs::read_dir("/sys/class/virtio-ports") {
            for e in rd.flatten() {
                let name = std::fs::read_to_string(e.path().join("name")).unwrap_or_default();
                if name.trim_end() == PORT_NAME {
                    let dev = PathBuf::from("/dev").join(e.file_name());
                    if dev.exists() {
                        return Ok(dev);
                    }
                }
            }
        }
        if Instant::now() >= deadline {
            return Err(format!(
                "ghrm.wait=1 but no virtio-serial port {PORT_NAME} appeared in {}s (is virtio_console in the bundle?)",
                wait.as_secs()
            ));
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// Wait to be restored; apply the host's entropy and time; answer [`ACK`]. Returns
/// the command line this VM would have been booted with.
pub fn wait() -> Result<String, String> {
    let port = find_port(Duration::from_secs(30))?;
    let mut f = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open(&port)
        .map_err(|e| format!("open {}: {e}", port.display()))?;
    log!("{WAITING}");
    let mut buf = Vec::with_capacity(1024);
    let mut chunk = [0u8; 1024];
    // Until the host connects, a read returns 0 at once (virtio_console): poll,
    // often at first (a restored guest is woken at once), then rarely (a warm VM
    // booted cold may wait for a whole job).
    let waiting = Instant::now();
    while !Resume::complete(&buf) {
        match f.read(&mut chunk) {
            Ok(0) => std::thread::sleep(Duration::from_millis(
                if waiting.elapsed() < Duration::from_secs(2) {
                    5
                } else {
                    50
                },
            )),
            Ok(n) => {
                buf.extend_from_slice(&chunk[..n]);
                if buf.len() > MAX_MESSAGE {
                    return Err(format!("resume message over {MAX_MESSAGE} bytes"));
                }
            }
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(e) => return Err(format!("read {}: {e}", port.display())),
        }
    }
    let text = std::str::from_utf8(&buf).map_err(|_| "resume message is not UTF-8")?;
    let msg = Resume::parse(text).map_err(|e| e.to_string())?;
    add_entropy(&msg.entropy)?;
    set_clock(msg.secs, msg.nanos)?;
    forget_disk_blocks();
    f.write_all(format!("{ACK}\n").as_bytes())
        .map_err(|e| format!("answer on {}: {e}", port.display()))?;
    log!("init: restored from a snapshot template (RNG reseeded, clock set)");
    Ok(msg.cmdline)
}

/// `struct rand_pool_info` with our entropy.
#[repr(C)]
struct RandPoolInfo {
    entropy_count: libc::c_int,
    buf_size: libc::c_int,
    buf: [u8; ENTROPY],
}

/// `RNDADDENTROPY`: `_IOW('R', 0x03, int[2])`.
const RNDADDENTROPY: libc::c_ulong = 0x4008_5203;
/// `RNDRESEEDCRNG`: `_IO('R', 0x07)`.
const RNDRESEEDCRNG: libc::c_ulong = 0x5207;
/// `BLKFLSBUF`: `_IO(0x12, 97)`.
const BLKFLSBUF: libc::c_ulong = 0x1261;

/// Mix the host's entropy into the input pool, credit all of it, and reseed the
/// CRNG now: every VM restored from one template then draws different bytes from
/// `/dev/urandom` and `getrandom` (the kernel would reseed only minutes later).
fn add_entropy(bytes: &[u8; ENTROPY]) -> Result<(), String> {
    use std::os::fd::AsRawFd;
    let f = std::fs::OpenOptions::new()
        .write(true)
        .open("/dev/urandom")
        .map_err(|e| format!("open /dev/urandom: {e}"))?;
    let info = RandPoolInfo {
        entropy_count: (ENTROPY * 8) as libc::c_int,
        buf_size: ENTROPY as libc::c_int,
        buf: *bytes,
    };
    // SAFETY: RNDADDENTROPY reads a rand_pool_info of buf_size bytes from `info`.
    if unsafe { libc::ioctl(f.as_raw_fd(), RNDADDENTROPY as _, &info) } != 0 {
        return Err(format!(
            "RNDADDENTROPY: {}",
            std::io::Error::last_os_error()
        ));
    }
    // SAFETY: RNDRESEEDCRNG takes no argument.
    if unsafe { libc::ioctl(f.as_raw_fd(), RNDRESEEDCRNG as _) } != 0 {
        return Err(format!(
            "RNDRESEEDCRNG: {}",
            std::io::Error::last_os_error()
        ));
    }
    Ok(())
}

/// The template's clock stopped when it was saved: take the host's.
fn set_clock(secs: i64, nanos: u32) -> Result<(), String> {
    let ts = libc::timespec {
        tv_sec: secs as libc::time_t,
        tv_nsec: nanos as libc::c_long,
    };
    // SAFETY: clock_settime reads one timespec.
    if unsafe { libc::clock_settime(libc::CLOCK_REALTIME, &ts) } != 0 {
        return Err(format!(
            "clock_settime: {}",
            std::io::Error::last_os_error()
        ));
    }
    Ok(())
}

/// The template's kernel read the first blocks of its disks when their driver
/// bound (partition scan); this VM's scratch disk is another file: drop what the
/// block devices cached so that nothing of the template's disks is read back.
fn forget_disk_blocks() {
    use std::os::fd::AsRawFd;
    let Ok(rd) = std::fs::read_dir("/sys/class/block") else {
        return;
    };
    for e in rd.flatten() {
        let name = e.file_name().to_string_lossy().into_owned();
        if !name.starts_with("vd") {
            continue;
        }
        if let Ok(f) = std::fs::File::open(PathBuf::from("/dev").join(&name)) {
            // SAFETY: BLKFLSBUF takes no argument.
            unsafe { libc::ioctl(f.as_raw_fd(), BLKFLSBUF as _) };
        }
    }
}
