//! `orchestrator logs`: a prefix's VM consoles, running or kept, printed with every
//! control sequence made visible, and with `-f` followed (inotify) until the VM's
//! QEMU process ends. It only reads, each read bounded; it never writes a console.

use std::io::{Read, Write};
use std::os::fd::{AsFd, FromRawFd, OwnedFd};
use std::path::{Path, PathBuf};

use nix::poll::{PollFd, PollFlags, PollTimeout};
use nix::sys::inotify::{AddWatchFlags, InitFlags, Inotify};

use crate::backend::qemu::keep::{self, Console};
use crate::backend::qemu::state_root;
use crate::types::text::printable;

/// At most this much of a console is printed before following it (a running
/// console may hold up to --console-limit).
const SHOW_AT_MOST: u64 = 1 << 20;

/// One read while following.
const CHUNK: usize = 64 << 10;

/// What `orchestrator logs` was asked for (built by `cli::config`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LogsRequest {
    /// `-p`: whose VMs.
    pub prefix: String,
    /// `LOOP | VM`; none: every loop's.
    pub target: Option<LogsTarget>,
    /// `-f`: follow until the VM ends.
    pub follow: bool,
}

/// `LOOP | VM`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum LogsTarget {
    /// A loop number: its running VM's console, or its newest kept one.
    Loop(u32),
    /// A full VM name.
    Vm(String),
}

/// Why `logs` could not show anything.
#[derive(Debug, thiserror::Error)]
pub enum LogsError {
    /// Nothing of what was asked for.
    #[error("no console of {what}: no running VM in {state} and none kept in {kept} (consoles are kept by the QEMU backend only, see runner --keep-consoles)")]
    Nothing {
        /// What was looked for.
        what: String,
        /// The QEMU state directory.
        state: PathBuf,
        /// The kept consoles' directory.
        kept: PathBuf,
    },
    /// `-f` without a target while several loops have consoles.
    #[error("-f follows one console, and {0} loops have one: name a LOOP or a VM")]
    Several(usize),
    /// Reading or printing.
    #[error("cannot {0}")]
    Io(String, #[source] std::io::Error),
}

impl LogsError {
    /// The documented exit status: 2 for usage, else 1.
    pub fn exit_code(&self) -> u8 {
        match self {
            LogsError::Several(_) => protocol::exit::USAGE,
            _ => protocol::exit::FAILED,
        }
    }
}

/// Run `orchestrator logs`.
pub fn run(req: &LogsRequest) -> Result<(), LogsError> {
    let chosen = choose(keep::consoles(&req.prefix), req.target.as_ref());
    if chosen.is_empty() {
        let what = match &req.target {
            None => format!("prefix {:?}", req.prefix),
            Some(LogsTarget::Loop(n)) => format!("loop {n} of prefix {:?}", req.prefix),
            Some(LogsTarget::Vm(vm)) => format!("VM {vm}"),
        };
        return Err(LogsError::Nothing {
            what,
            state: state_root(),
            kept: keep::kept_dir(&req.prefix),
        });
    }
    if req.follow && chosen.len() > 1 {
        return Err(LogsError::Several(chosen.len()));
    }
    let mut out = std::io::stdout().lock();
    let r = match req.follow {
        true => follow(&chosen[0], &mut out),
        false => {
            let labelled = req.target.is_none();
            chosen
                .iter()
                .try_for_each(|c| show(c, labelled, true, &mut out).map(drop))
        }
    };
    match r {
        // `logs | head`: the reader has what it wanted.
        Err(LogsError::Io(_, e)) if e.kind() == std::io::ErrorKind::BrokenPipe => Ok(()),
        r => r,
    }
}

/// For a loop: its running VM's console, else its newest kept one; for a VM: its
/// console; for neither: that of every loop, in loop order. `all` is sorted by
/// loop, running first, newest first ([`keep::consoles`]).
fn choose(all: Vec<Console>, target: Option<&LogsTarget>) -> Vec<Console> {
    let mut chosen: Vec<Console> = vec![];
    for c in all {
        let wanted = match target {
            Some(LogsTarget::Loop(n)) => c.loop_no == *n,
            Some(LogsTarget::Vm(vm)) => c.vm == *vm,
            None => true,
        };
        if wanted && !chosen.iter().any(|x| x.loop_no == c.loop_no) {
            chosen.push(c);
        }
    }
    chosen
}

fn io(what: impl Into<String>) -> impl FnOnce(std::io::Error) -> LogsError {
    let what = what.into();
    move |e| LogsError::Io(what, e)
}

/// Print the last [`SHOW_AT_MOST`] bytes of a console (`whole`: with a character
/// cut at its end, and a newline when labelled); returns the open file, the offset
/// printed up to, and the decoder holding what was not printed.
fn show(
    c: &Console,
    labelled: bool,
    whole: bool,
    out: &mut impl Write,
) -> Result<(std::fs::File, u64, Printable), LogsError> {
    let read = || format!("read {}", c.path.display());
    let mut f = keep::open(&c.path).map_err(io(read()))?;
    let (bytes, skipped, end) = keep::tail(&mut f, SHOW_AT_MOST).map_err(io(read()))?;
    let w = io("write to standard output");
    if labelled {
        let state = if c.running { "running" } else { "ended" };
        writeln!(out, "==> loop {}: {} ({state}) <==", c.loop_no, c.vm).map_err(w)?;
    }
    if skipped > 0 {
        writeln!(out, "[… {skipped} earlier bytes not shown]").map_err(io("write"))?;
    }
    let mut text = Printable::default();
    out.write_all(text.push(&bytes).as_bytes())
        .map_err(io("write to standard output"))?;
    if whole {
        let rest = text.finish();
        out.write_all(rest.as_bytes()).map_err(io("write"))?;
        if labelled && !rest.ends_with('\n') && !bytes.ends_with(b"\n") && !bytes.is_empty() {
            writeln!(out).map_err(io("write"))?;
        }
    }
    out.flush().map_err(io("write to standard output"))?;
    Ok((f, end, text))
}

/// Print a console, then what is appended to it, until its VM's QEMU process has
/// ended (without pidfds: until the VM's state directory is gone).
fn follow(c: &Console, out: &mut impl Write) -> Result<(), LogsError> {
    let (mut f, _, mut text) = show(c, false, false, out)?;
    let w = io("write to standard output");
    if !c.running {
        write!(out, "{}", text.finish()).map_err(io("write"))?;
        writeln!(out, "==> VM {} has ended <==", c.vm).map_err(w)?;
        return Ok(());
    }
    let inotify = Inotify::init(InitFlags::IN_CLOEXEC | InitFlags::IN_NONBLOCK)
        .map_err(|e| LogsError::Io("set up inotify".into(), e.into()))?;
    // A watch on the file itself: its growth, QEMU closing it, its removal.
    let _ = inotify.add_watch(
        &c.path,
        AddWatchFlags::IN_MODIFY
            | AddWatchFlags::IN_CLOSE_WRITE
            | AddWatchFlags::IN_DELETE_SELF
            | AddWatchFlags::IN_ATTRIB,
    );
    let dir = c.path.parent().map(Path::to_path_buf).unwrap_or_default();
    let qemu = Qemu::find(&c.path);
    let mut buf = vec![0; CHUNK];
    let mut ended = false;
    loop {
        // One bounded read per wake; a full one means more may be there already.
        let n = f
            .read(&mut buf)
            .map_err(io(format!("read {}", c.path.display())))?;
        out.write_all(text.push(&buf[..n]).as_bytes())
            .map_err(io("write to standard output"))?;
        out.flush().map_err(io("write to standard output"))?;
        if n > 0 {
            continue;
        }
        if ended {
            break;
        }
        let mut fds = vec![PollFd::new(inotify.as_fd(), PollFlags::POLLIN)];
        if let Qemu::Running(pidfd) = &qemu {
            fds.push(PollFd::new(pidfd.as_fd(), PollFlags::POLLIN));
        }
        let _ = nix::poll::poll(&mut fds, PollTimeout::from(1000u16));
        let exited = fds
            .get(1)
            .and_then(|p| p.revents())
            .is_some_and(|r| !r.is_empty());
        let _ = inotify.read_events();
        // Once QEMU has exited nothing more is written: read to the end, then stop.
        ended = match &qemu {
            Qemu::Running(_) => exited,
            Qemu::Gone => true,
            Qemu::Unknown => !dir.exists(),
        };
    }
    write!(out, "{}", text.finish()).map_err(io("write"))?;
    writeln!(out, "==> VM {} has ended <==", c.vm).map_err(w)?;
    Ok(())
}

/// The VM's QEMU process, found by the console on its command line, held by a
/// pidfd (readable once it has exited; a reused pid cannot fool it).
enum Qemu {
    Running(OwnedFd),
    /// No process has this console on its command line: it has ended (the state
    /// directory is private to this user, so its QEMU is this user's and visible).
    Gone,
    /// It runs, but this kernel has no pidfd (before 5.3): watch its state directory.
    Unknown,
}

impl Qemu {
    fn find(console: &Path) -> Qemu {
        // `-serial file:<state>/<vm>/console.log`: matched by its end, so a TMPDIR
        // spelt differently (a trailing slash) still matches; the VM name is unique.
        let tail = console
            .parent()
            .and_then(Path::file_name)
            .map(|vm| format!("/{}/console.log", vm.to_string_lossy()));
        let Some(tail) = tail else {
            return Qemu::Unknown;
        };
        let is_it = |pid: i32| {
            let mut cmd = vec![];
            std::fs::File::open(format!("/proc/{pid}/cmdline"))
                .and_then(|f| f.take(256 << 10).read_to_end(&mut cmd))
                .is_ok()
                && cmd
                    .split(|b| *b == 0)
                    .any(|a| a.starts_with(b"file:") && a.ends_with(tail.as_bytes()))
        };
        let Ok(procs) = std::fs::read_dir("/proc") else {
            return Qemu::Unknown;
        };
        for e in procs.flatten() {
            let Ok(pid) = e.file_name().to_string_lossy().parse::<i32>() else {
                continue;
            };
            if !is_it(pid) {
                continue;
            }
            // SAFETY: pidfd_open takes a pid and flags and returns a new descriptor
            // or -1; it touches no memory of ours.
            let fd = unsafe { libc::syscall(libc::SYS_pidfd_open, pid, 0) };
            if fd < 0 {
                return Qemu::Unknown;
            }
            // SAFETY: `fd` was just returned by pidfd_open and is owned by nobody else.
            let pidfd = unsafe { OwnedFd::from_raw_fd(fd as i32) };
            // The pid may have been reused between the scan and the open.
            return match is_it(pid) {
                true => Qemu::Running(pidfd),
                false => Qemu::Gone,
            };
        }
        Qemu::Gone
    }
}

/// Guest bytes → text for a terminal: UTF-8 decoded across reads (a character
/// split between two reads is not mangled), every control sequence made visible.
#[derive(Default)]
struct Printable {
    cut: Vec<u8>,
}

impl Printable {
    fn push(&mut self, bytes: &[u8]) -> String {
        let mut all = std::mem::take(&mut self.cut);
        all.extend_from_slice(bytes);
        // Hold back an incomplete character at the end (at most 3 bytes), and a
        // final CR whose LF may come with the next read.
        let keep = match std::str::from_utf8(&all) {
            Err(e) if e.error_len().is_none() => all.len() - e.valid_up_to(),
            _ => usize::from(all.ends_with(b"\r")),
        };
        self.cut = all.split_off(all.len() - keep);
        text(&all)
    }

    fn finish(&mut self) -> String {
        text(&std::mem::take(&mut self.cut))
    }
}

/// The serial console ends its lines with CR LF: that pair is a plain line end
/// (it cannot overwrite anything); every other control character is made visible.
fn text(bytes: &[u8]) -> String {
    printable(&String::from_utf8_lossy(bytes).replace("\r\n", "\n"))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::{Duration, SystemTime};

    fn console(vm: &str, loop_no: u32, running: bool, age: u64) -> Console {
        Console {
            vm: vm.into(),
            loop_no,
            path: PathBuf::from(format!("/x/{vm}")),
            running,
            modified: SystemTime::UNIX_EPOCH + Duration::from_secs(1000 - age),
        }
    }

    #[test]
    fn a_loop_shows_its_running_console_else_its_newest_kept_one() {
        let all = vec![
            console("P-1-run", 1, true, 5),
            console("P-1-new", 1, false, 10),
            console("P-1-old", 1, false, 20),
            console("P-2-new", 2, false, 1),
            console("P-2-old", 2, false, 9),
        ];
        let names = |t: Option<&LogsTarget>| -> Vec<String> {
            choose(all.clone(), t).into_iter().map(|c| c.vm).collect()
        };
        assert_eq!(names(None), ["P-1-run", "P-2-new"]);
        assert_eq!(names(Some(&LogsTarget::Loop(2))), ["P-2-new"]);
        assert_eq!(names(Some(&LogsTarget::Vm("P-1-old".into()))), ["P-1-old"]);
        assert!(names(Some(&LogsTarget::Loop(3))).is_empty());
    }

    #[test]
    fn text_is_printable_and_characters_survive_a_cut() {
        let mut p = Printable::default();
        let s = "é\x1b[2J\n".as_bytes();
        assert_eq!(p.push(&s[..1]), "");
        assert_eq!(p.push(&s[1..]), "é^[[2J\n");
        assert_eq!(
            p.push(b"\xff"),
            "\u{fffd}",
            "invalid bytes are not held back"
        );
        assert_eq!(p.push(&[0xe2, 0x82]), "");
        assert_eq!(p.finish(), "\u{fffd}");
        // CR LF is a line end, also across reads; a lone CR is shown.
        assert_eq!(p.push(b"a\r\nb\r"), "a\nb");
        assert_eq!(p.push(b"\nc\rforged\n"), "\nc^Mforged\n");
        assert_eq!(p.push(b"d\r"), "d");
        assert_eq!(p.finish(), "^M");
    }
}
