//! Exit statuses that cross a process boundary: the host binaries', the entrypoint's,
//! and QEMU's `2·status+1`. Numbers and their decoding only; who exits when is the callers'.
//!
//! | status   | who                      | meaning                                              |
//! |----------|--------------------------|------------------------------------------------------|
//! | 0        | orchestrator, runner     | ended as asked (signal, `.brk`, `-r`, `-k`)          |
//! | 1        | orchestrator, runner     | a runtime failure                                    |
//! | 2        | all three                | invalid usage or configuration                       |
//! | 7        | entrypoint               | `Runner.Listener`: GitHub refused it as deprecated   |
//! | 125      | entrypoint               | the entrypoint itself could not set up               |
//! | 126, 127 | entrypoint               | the runner cannot be executed / was not found        |
//! | 128+N    | entrypoint               | the runner was killed by signal N                    |
//!
//! Otherwise the entrypoint exits with the runner's own status. A QEMU guest reports
//! its status through the isa-debug-exit device; QEMU then exits with `2·status+1`.

/// Ended as asked.
pub const ENDED: u8 = 0;
/// A runtime failure (a loop given up, a backend failure, GitHub refusing).
pub const FAILED: u8 = 1;
/// Invalid usage or configuration (the host binaries and the entrypoint alike).
pub const USAGE: u8 = 2;
/// `Runner.Listener`'s status when GitHub refuses its version (RunnerVersionDeprecated);
/// the entrypoint passes it on.
pub const RUNNER_DEPRECATED: u8 = 7;
/// The entrypoint itself cannot set up.
pub const SETUP_FAILED: u8 = 125;
/// The runner (or COMMAND) exists but cannot be executed.
pub const CANNOT_EXECUTE: u8 = 126;
/// The runner (or COMMAND) does not exist.
pub const NOT_FOUND: u8 = 127;

/// The status of a process killed by `signal`, as a shell reports it (128+N).
pub fn killed_by(signal: i32) -> u8 {
    128u8.wrapping_add(signal as u8)
}

/// The I/O port of QEMU's isa-debug-exit device: a byte written there is the status.
pub const DEBUG_EXIT_PORT: u16 = 0xf4;
/// The QEMU `-device` that gives the guest [`DEBUG_EXIT_PORT`].
pub const DEBUG_EXIT_DEVICE: &str = "isa-debug-exit,iobase=0xf4,iosize=0x04";

/// QEMU's exit status when the guest reported `guest` (`2·guest+1`, as a process
/// status: only the low 8 bits survive, so a guest status above 127 is not told apart).
pub fn qemu_code(guest: u8) -> i32 {
    ((i32::from(guest) << 1) | 1) & 0xff
}

/// What QEMU's exit status says about the guest.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum QemuExit {
    /// The guest reported this status through isa-debug-exit (QEMU exited `2·s+1`).
    Guest(u8),
    /// QEMU exited 0: the guest powered off without reporting a status.
    PoweredOff,
    /// QEMU itself failed with this (even, non-zero) status.
    Failed(i32),
    /// QEMU was killed by a signal (no exit status).
    Killed,
}

impl QemuExit {
    /// Decode QEMU's exit status (`None`: killed by a signal).
    pub fn decode(code: Option<i32>) -> QemuExit {
        match code {
            Some(c) if c % 2 == 1 => QemuExit::Guest(((c - 1) / 2) as u8),
            Some(0) => QemuExit::PoweredOff,
            Some(c) => QemuExit::Failed(c),
            None => QemuExit::Killed,
        }
    }

    /// The guest's reported status, if it reported one.
    pub fn guest(self) -> Option<u8> {
        match self {
            QemuExit::Guest(s) => Some(s),
            _ => None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn qemu_statuses_round_trip() {
        for s in 0..=127u8 {
            assert_eq!(QemuExit::decode(Some(qemu_code(s))), QemuExit::Guest(s));
        }
        assert_eq!(qemu_code(ENDED), 1);
        assert_eq!(qemu_code(SETUP_FAILED), 251);
        assert_eq!(QemuExit::decode(Some(251)).guest(), Some(125));
        assert_eq!(QemuExit::decode(Some(0)), QemuExit::PoweredOff);
        assert_eq!(QemuExit::decode(Some(2)), QemuExit::Failed(2));
        assert_eq!(QemuExit::decode(None), QemuExit::Killed);
        assert_eq!(QemuExit::decode(Some(0)).guest(), None);
    }

    #[test]
    fn pinned_numbers() {
        assert_eq!([ENDED, FAILED, USAGE, RUNNER_DEPRECATED], [0, 1, 2, 7]);
        assert_eq!([SETUP_FAILED, CANNOT_EXECUTE, NOT_FOUND], [125, 126, 127]);
        assert_eq!(killed_by(9), 137);
        assert_eq!(killed_by(15), 143);
        assert!(DEBUG_EXIT_DEVICE.contains(&format!("iobase={DEBUG_EXIT_PORT:#x}")));
    }
}
