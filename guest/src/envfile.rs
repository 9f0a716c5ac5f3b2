//! The `<id>.env` file: what the host tells the guest about one VM, written and read here.
//! Format and validation only: reading it off hostile ground is [`crate::safefs`]'s job.
//!
//! dotenv format, one `KEY='value'` per line. Single quotes mean no escapes and
//! no `$` expansion, so a value may not contain `'`, a newline or NUL, nor end with
//! a backslash (which would escape the closing quote); the host refuses such values
//! when it writes the file. The keys are internal to the
//! project (design.md §3); only the file name and its semantics are the contract.

use std::collections::HashMap;

/// How the guest registers its runner. `Debug` leaves the credential out.
#[derive(Clone, PartialEq, Eq)]
pub enum Registration {
    /// A single-use JIT config minted on the host (the default).
    Jit {
        /// `encoded_jit_config`, handed to the runner as `ACTIONS_RUNNER_INPUT_JITCONFIG`.
        config: String,
    },
    /// A registration token for `config.sh --ephemeral` (`--no-jit`).
    Token {
        /// Web URL of the repository, organisation or enterprise.
        url: String,
        /// The registration token (valid one hour, single scope).
        token: String,
        /// Comma-separated labels.
        labels: String,
        /// Runner group name.
        group: String,
    },
}

/// Everything in a `.env`. `Debug` leaves the credential and the secret out.
#[derive(Clone, PartialEq, Eq)]
pub struct GuestConfig {
    /// Runner name, `<PREFIX>-<id>`.
    pub name: String,
    /// Credential and registration style.
    pub registration: Registration,
    /// The per-VM secret that `.trm` must carry and `.brk` will carry.
    pub secret: String,
    /// User to run the runner as (`root` keeps root).
    pub user: String,
    /// Let the runner update itself (`-U`).
    pub update: bool,
    /// Seconds a busy job may go on after a valid `.trm`.
    pub grace: u64,
    /// Verbosity (0 = warnings only).
    pub verbose: u8,
    /// DNS server for PID-1 mode (QEMU); empty when the backend sets it up.
    pub dns: String,
}

impl std::fmt::Debug for Registration {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Registration::Jit { .. } => f.write_str("Jit { config: <redacted> }"),
            Registration::Token {
                url, labels, group, ..
            } => f
                .debug_struct("Token")
                .field("url", url)
                .field("token", &format_args!("<redacted>"))
                .field("labels", labels)
                .field("group", group)
                .finish(),
        }
    }
}

impl std::fmt::Debug for GuestConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("GuestConfig")
            .field("name", &self.name)
            .field("registration", &self.registration)
            .field("secret", &format_args!("<redacted>"))
            .field("user", &self.user)
            .field("update", &self.update)
            .field("grace", &self.grace)
            .field("verbose", &self.verbose)
            .field("dns", &self.dns)
            .finish()
    }
}

/// A `.env` that cannot be written or understood.
#[derive(Debug, thiserror::Error)]
pub enum EnvFileError {
    /// A value that the format cannot carry.
    #[error("value of {0} contains a quote, newline or NUL, or ends with a backslash, which a .env cannot carry")]
    BadValue(&'static str),
    /// A required key is absent.
    #[error("the .env has no {0}")]
    Missing(&'static str),
    /// A key with a value of the wrong shape.
    #[error("the .env has an invalid {0}")]
    Invalid(&'static str),
    /// Not parseable as dotenv.
    #[error("the .env is not in dotenv format")]
    Parse(#[source] dotenvy::Error),
    /// Larger than the guest reads ([`crate::MAX_ENV_FILE`]).
    #[error("the .env would be {0} bytes; the guest reads at most {max}", max = crate::MAX_ENV_FILE)]
    TooLarge(u64),
}

const NAME: &str = "GHRM_NAME";
const MODE: &str = "GHRM_MODE";
const JIT: &str = "GHRM_JITCONFIG";
const URL: &str = "GHRM_URL";
const TOKEN: &str = "GHRM_TOKEN";
const LABELS: &str = "GHRM_LABELS";
const GROUP: &str = "GHRM_GROUP";
const SECRET: &str = "GHRM_SECRET";
const USER: &str = "GHRM_USER";
const UPDATE: &str = "GHRM_UPDATE";
const GRACE: &str = "GHRM_GRACE";
const VERBOSE: &str = "GHRM_VERBOSE";
const DNS: &str = "GHRM_DNS";

fn line(out: &mut String, key: &'static str, value: &str) -> Result<(), EnvFileError> {
    // Inside single quotes dotenvy takes a backslash before the closing quote for
    // an escape: the value would run on into the next line.
    if value.contains(['\'', '\n', '\r', '\0']) || value.ends_with('\\') {
        return Err(EnvFileError::BadValue(key));
    }
    out.push_str(key);
    out.push_str("='");
    out.push_str(value);
    out.push_str("'\n");
    Ok(())
}

impl GuestConfig {
    /// Serialise to dotenv text.
    pub fn to_dotenv(&self) -> Result<String, EnvFileError> {
        let mut s = String::new();
        line(&mut s, NAME, &self.name)?;
        match &self.registration {
            Registration::Jit { config } => {
                line(&mut s, MODE, "jit")?;
                line(&mut s, JIT, config)?;
            }
            Registration::Token {
                url,
                token,
                labels,
                group,
            } => {
                line(&mut s, MODE, "token")?;
                line(&mut s, URL, url)?;
                line(&mut s, TOKEN, token)?;
                line(&mut s, LABELS, labels)?;
                line(&mut s, GROUP, group)?;
            }
        }
        line(&mut s, SECRET, &self.secret)?;
        line(&mut s, USER, &self.user)?;
        line(&mut s, UPDATE, if self.update { "1" } else { "0" })?;
        line(&mut s, GRACE, &self.grace.to_string())?;
        line(&mut s, VERBOSE, &self.verbose.to_string())?;
        line(&mut s, DNS, &self.dns)?;
        // The guest would refuse it (safefs reads at most this much): say so here.
        if s.len() as u64 > crate::MAX_ENV_FILE {
            return Err(EnvFileError::TooLarge(s.len() as u64));
        }
        Ok(s)
    }

    /// Parse dotenv text (at most [`crate::MAX_ENV_FILE`] bytes).
    pub fn from_dotenv(text: &[u8]) -> Result<Self, EnvFileError> {
        if text.len() as u64 > crate::MAX_ENV_FILE {
            return Err(EnvFileError::TooLarge(text.len() as u64));
        }
        let mut map = HashMap::new();
        for item in dotenvy::from_read_iter(text) {
            let (k, v) = item.map_err(EnvFileError::Parse)?;
            map.insert(k, v);
        }
        let get = |k: &'static str| map.get(k).cloned().ok_or(EnvFileError::Missing(k));
        let registration = match get(MODE)?.as_str() {
            "jit" => Registration::Jit { config: get(JIT)? },
            "token" => Registration::Token {
                url: get(URL)?,
                token: get(TOKEN)?,
                labels: get(LABELS)?,
                group: get(GROUP)?,
            },
            _ => return Err(EnvFileError::Invalid(MODE)),
        };
        let secret = get(SECRET)?;
        if secret.is_empty() {
            return Err(EnvFileError::Invalid(SECRET));
        }
        Ok(GuestConfig {
            name: get(NAME)?,
            registration,
            secret,
            user: get(USER)?,
            update: get(UPDATE)? == "1",
            grace: get(GRACE)?
                .parse()
                .map_err(|_| EnvFileError::Invalid(GRACE))?,
            verbose: get(VERBOSE)?
                .parse()
                .map_err(|_| EnvFileError::Invalid(VERBOSE))?,
            dns: map.get(DNS).cloned().unwrap_or_default(),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample(registration: Registration) -> GuestConfig {
        GuestConfig {
            name: "GH-runner-1-abc".into(),
            registration,
            secret: "s".repeat(40),
            user: "runner".into(),
            update: false,
            grace: 300,
            verbose: 1,
            dns: "1.1.1.1".into(),
        }
    }

    #[test]
    fn round_trips() {
        for r in [
            Registration::Jit {
                config: "eyJhIjoiYiJ9+/==".into(),
            },
            Registration::Token {
                url: "https://github.com/o/r".into(),
                token: "AAA".into(),
                labels: "microvm,krunvm,$HOME".into(),
                group: "Default".into(),
            },
        ] {
            let c = sample(r);
            let text = c.to_dotenv().unwrap();
            assert_eq!(GuestConfig::from_dotenv(text.as_bytes()).unwrap(), c);
        }
    }

    #[test]
    fn refuses_unquotable_values() {
        let mut c = sample(Registration::Jit { config: "x".into() });
        c.name = "a'b".into();
        assert!(matches!(c.to_dotenv(), Err(EnvFileError::BadValue(NAME))));
        c.name = "a\nGHRM_USER=root".into();
        assert!(c.to_dotenv().is_err());
    }

    #[test]
    fn reports_missing_keys() {
        let e = GuestConfig::from_dotenv(b"GHRM_MODE='jit'\n").unwrap_err();
        assert!(matches!(e, EnvFileError::Missing(_)));
    }

    #[test]
    fn debug_shows_no_credential_or_secret() {
        let mut c = sample(Registration::Jit {
            config: "eyJJITCONFIG".into(),
        });
        c.secret = "SeCrEt0123456789abcdef".into();
        let shown = format!("{c:?}");
        assert!(
            !shown.contains(&c.secret) && shown.contains("<redacted>"),
            "{shown}"
        );
        if let Registration::Jit { config } = &c.registration {
            assert!(!shown.contains(config.as_str()), "{shown}");
        }
        c.registration = Registration::Token {
            url: "https://github.com/acme".into(),
            token: "AAAtokenAAA".into(),
            labels: "x".into(),
            group: "Default".into(),
        };
        let shown = format!("{c:?}");
        assert!(
            !shown.contains("AAAtokenAAA") && shown.contains("acme"),
            "{shown}"
        );
    }

    mod props {
        use super::*;
        use proptest::prelude::*;

        /// Text that single-quoted dotenv can carry (with what dotenv treats
        /// specially elsewhere: `"`, `\\`, `$`, `#`, `=`, spaces), often with one
        /// character it cannot, or anything at all.
        fn value() -> impl Strategy<Value = String> {
            let fine = "[a-zA-Z0-9 =#$\"\\\\{}`/+.,:~-]{0,16}";
            prop_oneof![
                6 => fine,
                2 => (fine, prop_oneof![Just('\''), Just('\n'), Just('\r'), Just('\0'), any::<char>()], fine)
                    .prop_map(|(a, c, b)| format!("{a}{c}{b}")),
                1 => any::<String>(),
            ]
        }

        fn config() -> impl Strategy<Value = GuestConfig> {
            let registration = prop_oneof![
                value().prop_map(|config| Registration::Jit { config }),
                (value(), value(), value(), value()).prop_map(|(url, token, labels, group)| {
                    Registration::Token {
                        url,
                        token,
                        labels,
                        group,
                    }
                }),
            ];
            (
                (value(), registration, value(), value()),
                (any::<bool>(), any::<u64>(), any::<u8>(), value()),
            )
                .prop_map(
                    |((name, registration, secret, user), (update, grace, verbose, dns))| {
                        GuestConfig {
                            name,
                            registration,
                            secret,
                            user,
                            update,
                            grace,
                            verbose,
                            dns,
                        }
                    },
                )
        }

        fn values(c: &GuestConfig) -> Vec<&str> {
            let mut v = vec![c.name.as_str(), &c.secret, &c.user, &c.dns];
            match &c.registration {
                Registration::Jit { config } => v.push(config),
                Registration::Token {
                    url,
                    token,
                    labels,
                    group,
                } => v.extend([url.as_str(), token, labels, group]),
            }
            v
        }

        proptest! {
            /// Whatever the values: either the writer refuses (a quote, line break or
            /// NUL, which single-quoted dotenv cannot carry, or a file the guest would
            /// not read), or the reader gives back exactly what was written.
            #[test]
            fn writes_what_reads_back_or_refuses(c in config()) {
                let unquotable = values(&c)
                    .iter()
                    .any(|v| v.contains(['\'', '\n', '\r', '\0']) || v.ends_with('\\'));
                match c.to_dotenv() {
                    Err(EnvFileError::BadValue(_)) => prop_assert!(unquotable),
                    Err(EnvFileError::TooLarge(n)) => {
                        prop_assert!(!unquotable && n > crate::MAX_ENV_FILE)
                    }
                    Err(e) => prop_assert!(false, "unexpected {e}"),
                    Ok(text) => {
                        prop_assert!(!unquotable);
                        prop_assert!(text.len() as u64 <= crate::MAX_ENV_FILE);
                        let back = GuestConfig::from_dotenv(text.as_bytes());
                        // An empty secret is refused by the reader, never accepted.
                        if c.secret.is_empty() {
                            prop_assert!(matches!(back, Err(EnvFileError::Invalid(SECRET))));
                        } else {
                            prop_assert_eq!(back.map_err(|e| TestCaseError::fail(e.to_string()))?, c);
                        }
                    }
                }
            }

            /// A value may be as long as the bound allows, and no longer.
            #[test]
            fn the_size_bound_holds_both_ways(extra in 0usize..200) {
                let mut c = sample(Registration::Jit { config: String::new() });
                let room = crate::MAX_ENV_FILE as usize - c.to_dotenv().unwrap().len();
                c.registration = Registration::Jit { config: "j".repeat(room) };
                let text = c.to_dotenv().unwrap();
                prop_assert_eq!(GuestConfig::from_dotenv(text.as_bytes()).unwrap(), c.clone());
                c.registration = Registration::Jit { config: "j".repeat(room + 1 + extra) };
                prop_assert!(matches!(c.to_dotenv(), Err(EnvFileError::TooLarge(_))));
                let mut big = text.into_bytes();
                big.extend(vec![b'#'; 1 + extra]);
                prop_assert!(matches!(
                    GuestConfig::from_dotenv(&big),
                    Err(EnvFileError::TooLarge(_))
                ));
            }

            /// Bytes that are not UTF-8 inside a value are refused, not altered.
            #[test]
            fn non_utf8_is_refused(at in 0usize..40, bad in 0x80u8..=0xff) {
                let text = sample(Registration::Jit { config: "x".repeat(40) })
                    .to_dotenv()
                    .unwrap();
                let start = text.find("GHRM_JITCONFIG='").unwrap() + "GHRM_JITCONFIG='".len();
                let mut bytes = text.into_bytes();
                bytes[start + at] = bad;
                if std::str::from_utf8(&bytes).is_err() {
                    prop_assert!(GuestConfig::from_dotenv(&bytes).is_err());
                }
            }

            /// Whatever a guest (or anyone) puts in the file: an error or a
            /// configuration, never a panic.
            #[test]
            fn any_bytes_parse_or_fail(bytes in proptest::collection::vec(any::<u8>(), 0..512)) {
                let _ = GuestConfig::from_dotenv(&bytes);
            }
        }
    }
}
