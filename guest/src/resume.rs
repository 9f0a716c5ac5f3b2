//! The message that wakes a guest restored from a memory-snapshot template: what
//! the host sends over the template's virtio-serial port and what the guest answers.
//! Owns the format and its bounds; not the port, the clock or the RNG.
//!
//! A template is a guest booted with `ghrm.wait=1` and saved while it waits, before
//! anything per-VM reached it: no share mounted, no network configured, no init
//! arguments. Every VM restored from it shares its memory, so the message carries
//! what must differ: fresh host entropy (the guest credits it and reseeds its RNG
//! before anything else runs), the host's time, and the kernel command line this
//! VM would have been cold-booted with (its shares, `-D`, and its init arguments).
//!
//! ```text
//! ghrm-resume 1
//! entropy <64 hex digits>
//! time <unix seconds>.<9 digits of nanoseconds>
//! cmdline <kernel command line>
//! end
//! ```
//!
//! The guest answers [`ACK`] (a line) once it has applied the entropy and the time.

/// The virtio-serial port's name (`/sys/class/virtio-ports/*/name`).
pub const PORT_NAME: &str = "org.ghrm.resume";
/// The console line (after [`crate::console::MARKER`]) of a template guest that is
/// ready to be saved.
pub const WAITING: &str = "init: waiting to be restored";
/// The guest's answer once the message is applied.
pub const ACK: &str = "ok";
/// The largest message either side reads.
pub const MAX_MESSAGE: usize = 8192;
/// Bytes of host entropy per message.
pub const ENTROPY: usize = 32;

const MAGIC: &str = "ghrm-resume 1";

/// One resume message.
#[derive(Clone, PartialEq, Eq)]
pub struct Resume {
    /// Fresh host entropy, credited in full by the guest.
    pub entropy: [u8; ENTROPY],
    /// The host's wall-clock time when it sent the message: seconds since the epoch.
    pub secs: i64,
    /// … and nanoseconds.
    pub nanos: u32,
    /// The kernel command line this VM would have been cold-booted with.
    pub cmdline: String,
}

impl std::fmt::Debug for Resume {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Resume")
            .field("entropy", &"<redacted>")
            .field("secs", &self.secs)
            .field("nanos", &self.nanos)
            .field("cmdline", &self.cmdline)
            .finish()
    }
}

/// A message that is not one.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ResumeError {
    /// Longer than [`MAX_MESSAGE`].
    #[error("the resume message is longer than {MAX_MESSAGE} bytes")]
    TooLong,
    /// A line is missing or malformed.
    #[error("the resume message has no valid {0} line")]
    Bad(&'static str),
}

impl Resume {
    /// The message, ending with `end\n`. The command line must hold no newline.
    pub fn render(&self) -> Result<String, ResumeError> {
        if self.cmdline.contains(['\n', '\r']) {
            return Err(ResumeError::Bad("cmdline"));
        }
        let hex: String = self.entropy.iter().map(|b| format!("{b:02x}")).collect();
        let text = format!(
            "{MAGIC}\nentropy {hex}\ntime {}.{:09}\ncmdline {}\nend\n",
            self.secs, self.nanos, self.cmdline
        );
        if text.len() > MAX_MESSAGE {
            return Err(ResumeError::TooLong);
        }
        Ok(text)
    }

    /// Is `buf` a whole message yet (its `end` line read)?
    pub fn complete(buf: &[u8]) -> bool {
        buf.ends_with(b"\nend\n")
    }

    /// Read a whole message.
    pub fn parse(text: &str) -> Result<Resume, ResumeError> {
        if text.len() > MAX_MESSAGE {
            return Err(ResumeError::TooLong);
        }
        let mut lines = text.split('\n');
        if lines.next() != Some(MAGIC) {
            return Err(ResumeError::Bad("ghrm-resume"));
        }
        let mut field = |name: &'static str| {
            lines
                .next()
                .and_then(|l| l.strip_prefix(name))
                .and_then(|l| l.strip_prefix(' '))
                .ok_or(ResumeError::Bad(name))
        };
        let hex = field("entropy")?;
        let mut entropy = [0u8; ENTROPY];
        if hex.len() != 2 * ENTROPY || !hex.bytes().all(|b| b.is_ascii_hexdigit()) {
            return Err(ResumeError::Bad("entropy"));
        }
        for (i, b) in entropy.iter_mut().enumerate() {
            *b = u8::from_str_radix(&hex[2 * i..2 * i + 2], 16)
                .map_err(|_| ResumeError::Bad("entropy"))?;
        }
        let (s, n) = field("time")?
            .split_once('.')
            .ok_or(ResumeError::Bad("time"))?;
        let secs: i64 = s.parse().map_err(|_| ResumeError::Bad("time"))?;
        let nanos: u32 = match n.len() {
            9 => n.parse().map_err(|_| ResumeError::Bad("time"))?,
            _ => return Err(ResumeError::Bad("time")),
        };
        if nanos >= 1_000_000_000 || secs < 0 {
            return Err(ResumeError::Bad("time"));
        }
        let cmdline = field("cmdline")?.to_string();
        if lines.next() != Some("end") || lines.next() != Some("") || lines.next().is_some() {
            return Err(ResumeError::Bad("end"));
        }
        Ok(Resume {
            entropy,
            secs,
            nanos,
            cmdline,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn sample() -> Resume {
        Resume {
            entropy: [0xab; ENTROPY],
            secs: 1_796_226_759,
            nanos: 7,
            cmdline: "console=ttyS0 ghrm.mount=env:/_environment -- -E /_environment/1-a.env"
                .into(),
        }
    }

    #[test]
    fn renders_and_reads_back() {
        let text = sample().render().unwrap();
        assert!(text.starts_with("ghrm-resume 1\nentropy abab"));
        assert!(text.contains("\ntime 1796226759.000000007\n"));
        assert!(Resume::complete(text.as_bytes()));
        assert_eq!(Resume::parse(&text).unwrap(), sample());
        assert!(!format!("{:?}", sample()).contains("abab"));
    }

    #[test]
    fn refuses_what_is_not_a_message() {
        let good = sample().render().unwrap();
        for (bad, why) in [
            (
                good.replace("ghrm-resume 1", "ghrm-resume 2"),
                "ghrm-resume",
            ),
            (good.replace("entropy ab", "entropy zz"), "entropy"),
            (good.replace(".000000007", ".7"), "time"),
            (good.replace("1796226759.", "-1."), "time"),
            (good.replace("\nend\n", "\nend\nmore\n"), "end"),
            (good.replace("cmdline ", "cmdlin "), "cmdline"),
        ] {
            assert_eq!(Resume::parse(&bad), Err(ResumeError::Bad(why)), "{bad}");
        }
        let mut long = sample();
        long.cmdline = "x".repeat(MAX_MESSAGE);
        assert_eq!(long.render(), Err(ResumeError::TooLong));
        long.cmdline = "a\nb".into();
        assert!(long.render().is_err());
    }

    proptest! {
        /// Any message round-trips; any bytes are read or refused, never a panic.
        #[test]
        fn round_trips(entropy in any::<[u8; ENTROPY]>(), secs in 0i64..=i64::MAX, nanos in 0u32..1_000_000_000, cmdline in "[ -~]{0,200}") {
            let r = Resume { entropy, secs, nanos, cmdline };
            prop_assert_eq!(Resume::parse(&r.render().unwrap()).unwrap(), r);
        }

        #[test]
        fn arbitrary_text_never_panics(text in "\\PC{0,300}") {
            let _ = Resume::parse(&text);
        }
    }
}
