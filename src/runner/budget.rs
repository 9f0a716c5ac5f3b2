//! The registration budget shared by every loop of an orchestrator: at most N
//! credentials minted per window, so a fleet of loops (or a crash loop) never mints
//! faster than GitHub allows. Loops are processes, so the budget is a small file of
//! recent mint times under an exclusive `flock`, `<prefix>.registrations` in this
//! user's private temporary directory (never in a loop directory: guests can write those).

use std::io::{Read, Seek, Write};
use std::path::PathBuf;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use nix::fcntl::{Flock, FlockArg};

/// `N/SECONDS`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Rate {
    /// Mints allowed per window.
    pub max: u32,
    /// The window.
    pub window: Duration,
}

impl std::str::FromStr for Rate {
    type Err = String;
    fn from_str(s: &str) -> Result<Rate, String> {
        let bad =
            || format!("{s:?}: expected N/SECONDS, e.g. 30/60 (at most 30 registrations a minute)");
        let (n, w) = s.split_once('/').ok_or_else(bad)?;
        let max: u32 = n.trim().parse().map_err(|_| bad())?;
        let secs: u64 = w.trim().parse().map_err(|_| bad())?;
        if max == 0 || secs == 0 {
            return Err(bad());
        }
        Ok(Rate {
            max,
            window: Duration::from_secs(secs),
        })
    }
}

impl std::fmt::Display for Rate {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}/{}", self.max, self.window.as_secs())
    }
}

/// A budget file and its rate.
#[derive(Debug, Clone)]
pub struct Budget {
    /// The shared file.
    pub file: PathBuf,
    /// The rate.
    pub rate: Rate,
}

fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

impl Budget {
    /// The budget of all loops of `prefix` on this host.
    pub fn for_prefix(prefix: &str, rate: Rate) -> Budget {
        Budget {
            file: crate::types::paths::user_tmp(&std::env::temp_dir())
                .join(format!("{prefix}.registrations")),
            rate,
        }
    }

    /// Try to take a slot; `Err(wait)` says how long until one frees up.
    fn try_take(&self) -> std::io::Result<Result<(), Duration>> {
        // The file's directory is this user's private one (a loop may start
        // before any orchestrator made it): never a name another user planted.
        if let Some(dir) = self.file.parent() {
            protocol::safefs::ensure_private_dir(dir)?;
        }
        let f = std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .custom_flags_nofollow()
            .open(&self.file)?;
        let mut f =
            Flock::lock(f, FlockArg::LockExclusive).map_err(|(_, e)| std::io::Error::from(e))?;
        let mut text = String::new();
        f.read_to_string(&mut text)?;
        let now = now_ms();
        let window = self.rate.window.as_millis() as u64;
        let mut recent: Vec<u64> = text
            .lines()
            .filter_map(|l| l.trim().parse().ok())
            .filter(|t| now.saturating_sub(*t) < window)
            .collect();
        recent.sort_unstable();
        if recent.len() as u32 >= self.rate.max {
            let oldest = recent[recent.len() - self.rate.max as usize];
            return Ok(Err(
                Duration::from_millis(oldest + window - now).max(Duration::from_millis(50))
            ));
        }
        recent.push(now);
        f.set_len(0)?;
        f.rewind()?;
        for t in recent {
            writeln!(f, "{t}")?;
        }
        Ok(Ok(()))
    }

    /// Wait for a slot (or for `stop`), then take it.
    pub async fn take(&self, stop: &mut tokio::sync::watch::Receiver<bool>) -> std::io::Result<()> {
        loop {
            match self.try_take()? {
                Ok(()) => return Ok(()),
                Err(wait) => {
                    tracing::info!(
                        "registration budget ({} per {}s) used up: waiting {:.1}s",
                        self.rate.max,
                        self.rate.window.as_secs(),
                        wait.as_secs_f64()
                    );
                    tokio::select! {
                        _ = tokio::time::sleep(wait) => {}
                        _ = stop.wait_for(|s| *s) => return Ok(()),
                    }
                }
            }
        }
    }
}

trait NoFollow {
    fn custom_flags_nofollow(&mut self) -> &mut Self;
}

impl NoFollow for std::fs::OpenOptions {
    fn custom_flags_nofollow(&mut self) -> &mut Self {
        use std::os::unix::fs::OpenOptionsExt;
        self.custom_flags(libc::O_NOFOLLOW).mode(0o600)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_rates() {
        assert_eq!(
            "30/60".parse::<Rate>().unwrap(),
            Rate {
                max: 30,
                window: Duration::from_secs(60)
            }
        );
        assert!("0/60".parse::<Rate>().is_err());
        assert!("30".parse::<Rate>().unwrap_err().contains("N/SECONDS"));
    }

    #[test]
    fn limits_and_frees() {
        let d = tempfile::tempdir().unwrap();
        std::fs::set_permissions(
            d.path(),
            std::os::unix::fs::PermissionsExt::from_mode(0o700),
        )
        .unwrap();
        let b = Budget {
            file: d.path().join("b"),
            rate: Rate {
                max: 2,
                window: Duration::from_millis(300),
            },
        };
        assert!(b.try_take().unwrap().is_ok());
        assert!(b.try_take().unwrap().is_ok());
        let wait = b.try_take().unwrap().unwrap_err();
        assert!(wait <= Duration::from_millis(300));
        std::thread::sleep(wait + Duration::from_millis(20));
        assert!(b.try_take().unwrap().is_ok());
        // Its directory open to others (not this user's private one): refused.
        std::fs::set_permissions(
            d.path(),
            std::os::unix::fs::PermissionsExt::from_mode(0o777),
        )
        .unwrap();
        assert!(b.try_take().is_err());
    }
}
