//! The `ghrm.*` words of the guest's kernel command line: one type the host renders and
//! the guest parses. Owns the key names and value checks; not the rest of the line.
//!
//! | word                 | meaning                                                     |
//! |----------------------|-------------------------------------------------------------|
//! | `ghrm.probe=1`       | a KVM probe boot: power off with status 0 once init is done |
//! | `ghrm.net=1`         | eth0 = 10.0.2.15/24, default route 10.0.2.2 (QEMU slirp)    |
//! | `ghrm.dns=IP`        | nameserver for /etc/resolv.conf (default [`DEFAULT_DNS`])   |
//! | `ghrm.mount=TAG:PATH`| repeatable: mount the 9p share TAG at PATH                  |
//! | `ghrm.root=LABEL`    | stage 1: the root disk is the ext4 file system LABEL        |
//! | `ghrm.init=PATH`     | stage 1: the image's entrypoint, run in the new root        |
//! | `ghrm.exec=PATH`     | `-D`: PID 1 sets up, then executes PATH (the dev entrypoint)|
//! | `ghrm.wait=1`        | a snapshot template: wait to be restored ([`crate::resume`])|
//!
//! Only the words before a lone `--` count: the kernel hands what follows to init as
//! its arguments. A value is one word of printable ASCII without quotes or
//! backslashes, so that no value can end its word and inject another option.

/// Every key starts with this.
pub const PREFIX: &str = "ghrm.";
/// The kernel passes the words after this one to init.
pub const END: &str = "--";
/// Nameserver when there is no `ghrm.dns=` (QEMU user networking's own).
pub const DEFAULT_DNS: &str = "10.0.2.3";

/// The keys of the guest's kernel command line.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Key {
    /// `ghrm.probe=1`.
    Probe,
    /// `ghrm.net=1`.
    Net,
    /// `ghrm.dns=IP`.
    Dns,
    /// `ghrm.mount=TAG:PATH`.
    Mount,
    /// `ghrm.root=LABEL`.
    Root,
    /// `ghrm.init=PATH`.
    Init,
    /// `ghrm.exec=PATH`.
    Exec,
    /// `ghrm.wait=1`.
    Wait,
}

impl Key {
    /// All keys, in the order [`Cmdline::render`] writes them.
    pub const ALL: [Key; 8] = [
        Key::Probe,
        Key::Net,
        Key::Dns,
        Key::Mount,
        Key::Root,
        Key::Init,
        Key::Exec,
        Key::Wait,
    ];

    /// The name after [`PREFIX`].
    pub fn name(self) -> &'static str {
        match self {
            Key::Probe => "probe",
            Key::Net => "net",
            Key::Dns => "dns",
            Key::Mount => "mount",
            Key::Root => "root",
            Key::Init => "init",
            Key::Exec => "exec",
            Key::Wait => "wait",
        }
    }

    /// The key called `name` (after [`PREFIX`]).
    pub fn from_name(name: &str) -> Option<Key> {
        Key::ALL.into_iter().find(|k| k.name() == name)
    }
}

impl std::fmt::Display for Key {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{PREFIX}{}", self.name())
    }
}

/// A command line the host cannot render or the guest cannot use.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum CmdlineError {
    /// The value is empty, or holds a space, quote, backslash, control or non-ASCII
    /// character: it could end its word and inject another option.
    #[error("{key}={value:?}: a kernel command-line value must be one word of printable ASCII without quotes or backslashes")]
    Unsafe {
        /// The key.
        key: Key,
        /// The refused value.
        value: String,
    },
    /// A `ghrm.mount=` value that is not `TAG:PATH` (the tag may not hold `:`).
    #[error("bad ghrm.mount={0}")]
    BadMount(String),
    /// An argument for the guest's init (after [`END`]) that is not one word of
    /// printable ASCII without quotes or backslashes. Its value is not shown: it
    /// may carry the guest's configuration (the JIT config, the secret).
    #[error("argument {0} for the guest's init is not one word of printable ASCII without quotes or backslashes (it travels on the kernel command line; run with isolation, -I)")]
    UnsafeArg(usize),
}

/// A 9p share to mount: `ghrm.mount=TAG:PATH`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Share {
    /// The share's `mount_tag`.
    pub tag: String,
    /// Where the guest mounts it.
    pub path: String,
}

/// The `ghrm.*` words of one guest's kernel command line.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Cmdline {
    /// `ghrm.probe=1`: a KVM probe boot.
    pub probe: bool,
    /// `ghrm.net=1`: configure eth0.
    pub net: bool,
    /// `ghrm.dns=`: the nameserver (the guest defaults to [`DEFAULT_DNS`]).
    pub dns: Option<String>,
    /// `ghrm.mount=`, in order.
    pub mounts: Vec<Share>,
    /// `ghrm.root=`: the root disk's label (stage 1).
    pub root: Option<String>,
    /// `ghrm.init=`: the image's entrypoint (stage 1).
    pub init: Option<String>,
    /// `ghrm.exec=`: the dev entrypoint.
    pub exec: Option<String>,
    /// `ghrm.wait=1`: a snapshot template's boot; wait to be restored.
    pub wait: bool,
}

/// Is `value` safe as the value of a kernel command-line word?
pub fn safe_value(value: &str) -> bool {
    !value.is_empty()
        && value
            .bytes()
            .all(|b| b.is_ascii_graphic() && !matches!(b, b'"' | b'\'' | b'\\'))
}

fn check(key: Key, value: &str) -> Result<&str, CmdlineError> {
    if safe_value(value) {
        Ok(value)
    } else {
        Err(CmdlineError::Unsafe {
            key,
            value: value.to_string(),
        })
    }
}

/// The `ghrm.*` words of a kernel command line (before any `--`), as key (without
/// [`PREFIX`]) and value, in order; unknown keys included.
pub fn cmdline_keys(cmdline: &str) -> Vec<(String, String)> {
    cmdline
        .split_whitespace()
        .take_while(|w| *w != END)
        .filter_map(|w| w.strip_prefix(PREFIX)?.split_once('='))
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect()
}

/// A whole kernel command line: `head` (the host's own words, such as
/// `console=ttyS0`), the `ghrm.*` words of `ghrm`, [`END`], then `init_args`, each
/// of which must be one safe word ([`safe_value`]) so that the kernel hands the
/// guest's init exactly these arguments.
pub fn kernel_line(
    head: &str,
    ghrm: &Cmdline,
    init_args: &[String],
) -> Result<String, CmdlineError> {
    let mut line = head.to_string();
    for w in [ghrm.render()?, END.to_string()] {
        if !w.is_empty() {
            if !line.is_empty() {
                line.push(' ');
            }
            line.push_str(&w);
        }
    }
    for (i, arg) in init_args.iter().enumerate() {
        if !safe_value(arg) {
            return Err(CmdlineError::UnsafeArg(i + 1));
        }
        line.push(' ');
        line.push_str(arg);
    }
    Ok(line)
}

impl Share {
    /// `TAG:PATH`.
    pub fn parse(spec: &str) -> Result<Share, CmdlineError> {
        let (tag, path) = spec
            .split_once(':')
            .ok_or_else(|| CmdlineError::BadMount(spec.to_string()))?;
        Ok(Share {
            tag: tag.into(),
            path: path.into(),
        })
    }
}

impl Cmdline {
    /// Read the `ghrm.*` words of `cmdline` (all of `/proc/cmdline`). Unknown keys are
    /// ignored; of a repeated key other than `mount` the first counts; `probe` and
    /// `net` are on only with the value `1`.
    pub fn parse(cmdline: &str) -> Result<Cmdline, CmdlineError> {
        let mut c = Cmdline::default();
        for (k, v) in cmdline_keys(cmdline) {
            let first = |slot: &mut Option<String>| {
                slot.get_or_insert(v.clone());
            };
            match Key::from_name(&k) {
                Some(Key::Probe) => c.probe |= v == "1",
                Some(Key::Net) => c.net |= v == "1",
                Some(Key::Dns) => first(&mut c.dns),
                Some(Key::Mount) => c.mounts.push(Share::parse(&v)?),
                Some(Key::Root) => first(&mut c.root),
                Some(Key::Init) => first(&mut c.init),
                Some(Key::Exec) => first(&mut c.exec),
                Some(Key::Wait) => c.wait |= v == "1",
                None => {}
            }
        }
        Ok(c)
    }

    /// The nameserver the guest uses.
    pub fn dns(&self) -> &str {
        self.dns.as_deref().unwrap_or(DEFAULT_DNS)
    }

    /// The words, space-separated, in the order of [`Key::ALL`]; every value is
    /// checked first, so a refused one renders nothing.
    pub fn render(&self) -> Result<String, CmdlineError> {
        let mut words: Vec<String> = vec![];
        let mut word = |key: Key, value: &str| -> Result<(), CmdlineError> {
            words.push(format!("{key}={}", check(key, value)?));
            Ok(())
        };
        if self.probe {
            word(Key::Probe, "1")?;
        }
        if self.net {
            word(Key::Net, "1")?;
        }
        if let Some(dns) = &self.dns {
            word(Key::Dns, dns)?;
        }
        for s in &self.mounts {
            if s.tag.contains(':') {
                return Err(CmdlineError::BadMount(format!("{}:{}", s.tag, s.path)));
            }
            check(Key::Mount, &s.tag)?;
            check(Key::Mount, &s.path)?;
            word(Key::Mount, &format!("{}:{}", s.tag, s.path))?;
        }
        for (key, value) in [
            (Key::Root, &self.root),
            (Key::Init, &self.init),
            (Key::Exec, &self.exec),
        ] {
            if let Some(v) = value {
                word(key, v)?;
            }
        }
        if self.wait {
            word(Key::Wait, "1")?;
        }
        Ok(words.join(" "))
    }
}

/// The arguments the kernel hands init: the words after the first lone [`END`]
/// (every one a single safe word when [`kernel_line`] made the line).
pub fn init_args(cmdline: &str) -> Vec<String> {
    cmdline
        .split_whitespace()
        .skip_while(|w| *w != END)
        .skip(1)
        .map(str::to_string)
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_our_keys_only_before_dashes() {
        let k = cmdline_keys("console=ttyS0 ghrm.net=1 ghrm.mount=env:/_environment ghrm.mount=m0:/cache -- -E ghrm.x=y");
        assert_eq!(
            k,
            [
                ("net".into(), "1".into()),
                ("mount".into(), "env:/_environment".into()),
                ("mount".into(), "m0:/cache".into())
            ]
        );
    }

    fn full() -> Cmdline {
        Cmdline {
            probe: false,
            net: true,
            dns: Some("1.1.1.1".into()),
            mounts: vec![
                Share {
                    tag: "env".into(),
                    path: "/_environment".into(),
                },
                Share {
                    tag: "m0".into(),
                    path: "/cache:x".into(),
                },
            ],
            root: Some("ghrm-root".into()),
            init: Some("/opt/gh-runner-microvm/bin/entrypoint".into()),
            exec: Some("/dev-share/entrypoint".into()),
            wait: true,
        }
    }

    #[test]
    fn renders_what_the_host_wrote_before() {
        assert_eq!(
            full().render().unwrap(),
            "ghrm.net=1 ghrm.dns=1.1.1.1 ghrm.mount=env:/_environment ghrm.mount=m0:/cache:x \
             ghrm.root=ghrm-root ghrm.init=/opt/gh-runner-microvm/bin/entrypoint \
             ghrm.exec=/dev-share/entrypoint ghrm.wait=1"
        );
        let probe = Cmdline {
            probe: true,
            ..Cmdline::default()
        };
        assert_eq!(probe.render().unwrap(), "ghrm.probe=1");
        assert_eq!(Cmdline::default().render().unwrap(), "");
    }

    #[test]
    fn round_trips() {
        for c in [
            full(),
            Cmdline::default(),
            Cmdline {
                probe: true,
                ..Cmdline::default()
            },
        ] {
            let line = format!(
                "console=ttyS0 panic=-1 {} tsc_early_khz=1 {END} -c A=B ghrm.exec=/x",
                c.render().unwrap()
            );
            assert_eq!(Cmdline::parse(&line).unwrap(), c, "{line}");
        }
    }

    #[test]
    fn parses_as_the_guest_always_did() {
        let c = Cmdline::parse(
            "ghrm.net=0 ghrm.probe=yes ghrm.dns=9.9.9.9 ghrm.dns=8.8.8.8 ghrm.zzz=1 ghrm.root=a ghrm.root=b",
        )
        .unwrap();
        assert!(!c.net && !c.probe);
        assert_eq!(c.dns(), "9.9.9.9");
        assert_eq!(c.root.as_deref(), Some("a"));
        assert_eq!(c.init, None);
        assert_eq!(Cmdline::default().dns(), DEFAULT_DNS);
        assert_eq!(
            Cmdline::parse("ghrm.mount=nocolon")
                .unwrap_err()
                .to_string(),
            "bad ghrm.mount=nocolon"
        );
    }

    #[test]
    fn refuses_values_that_could_inject() {
        for bad in [
            "",
            "a b",
            "a\tb",
            "a\nghrm.exec=/bin/sh",
            "\"quoted\"",
            "it's",
            "back\\slash",
            "caf\u{e9}",
            "nul\0",
            "\u{7f}",
        ] {
            let c = Cmdline {
                dns: Some(bad.into()),
                ..Cmdline::default()
            };
            assert!(
                matches!(c.render(), Err(CmdlineError::Unsafe { key: Key::Dns, .. })),
                "{bad:?}"
            );
            let c = Cmdline {
                mounts: vec![Share {
                    tag: "m0".into(),
                    path: format!("/x{bad}"),
                }],
                ..Cmdline::default()
            };
            if !bad.is_empty() {
                assert!(c.render().is_err(), "{bad:?}");
            }
        }
        let c = Cmdline {
            mounts: vec![Share {
                tag: "a:b".into(),
                path: "/x".into(),
            }],
            ..Cmdline::default()
        };
        assert_eq!(c.render(), Err(CmdlineError::BadMount("a:b:/x".into())));
        let c = Cmdline {
            exec: Some("/a b".into()),
            ..Cmdline::default()
        };
        assert_eq!(
            c.render().unwrap_err().to_string(),
            "ghrm.exec=\"/a b\": a kernel command-line value must be one word of printable ASCII without quotes or backslashes"
        );
    }

    #[test]
    fn key_names() {
        for k in Key::ALL {
            assert_eq!(Key::from_name(k.name()), Some(k));
            assert_eq!(k.to_string(), format!("ghrm.{}", k.name()));
        }
        assert_eq!(Key::from_name("nope"), None);
    }

    mod props {
        use super::*;
        use proptest::prelude::*;

        /// The kernel's own split of a command line (lib/cmdline.c `next_arg`): words
        /// end at its white space (which includes Latin-1 NBSP, 0xa0) outside double
        /// quotes; a quote opening or closing a word is dropped.
        fn kernel_words(line: &str) -> Vec<Vec<u8>> {
            let space = |b: u8| matches!(b, b' ' | b'\t' | b'\n' | 0x0b | 0x0c | b'\r' | 0xa0);
            let b = line.as_bytes();
            let (mut words, mut i) = (vec![], 0);
            loop {
                while i < b.len() && space(b[i]) {
                    i += 1;
                }
                if i == b.len() {
                    return words;
                }
                let mut quoted = false;
                if b[i] == b'"' {
                    quoted = true;
                    i += 1;
                }
                let (start, mut in_quote) = (i, quoted);
                while i < b.len() && (in_quote || !space(b[i])) {
                    if b[i] == b'"' {
                        in_quote = !in_quote;
                    }
                    i += 1;
                }
                let mut w = b[start..i].to_vec();
                if w.last() == Some(&b'"') {
                    w.pop();
                }
                words.push(w);
            }
        }

        /// Values that are usually fine, often hostile.
        fn value() -> impl Strategy<Value = String> {
            prop_oneof![
                4 => "[A-Za-z0-9/._:=,+-]{1,12}",
                1 => any::<String>(),
                1 => proptest::collection::vec(
                    prop_oneof![
                        Just(' '), Just('"'), Just('\''), Just('\\'), Just('\t'), Just('\n'),
                        Just('\u{a0}'), Just('\u{e0}'), Just('='), Just('-'), Just(':'),
                        proptest::char::range('a', 'z'),
                    ],
                    0..8,
                )
                .prop_map(|v| v.into_iter().collect()),
            ]
        }

        fn cmdline() -> impl Strategy<Value = Cmdline> {
            (
                (
                    any::<bool>(),
                    any::<bool>(),
                    proptest::option::of(value()),
                    any::<bool>(),
                ),
                proptest::collection::vec((value(), value()), 0..3),
                (
                    proptest::option::of(value()),
                    proptest::option::of(value()),
                    proptest::option::of(value()),
                ),
            )
                .prop_map(|((probe, net, dns, wait), mounts, (root, init, exec))| {
                    Cmdline {
                        probe,
                        net,
                        dns,
                        mounts: mounts
                            .into_iter()
                            .map(|(tag, path)| Share { tag, path })
                            .collect(),
                        root,
                        init,
                        exec,
                        wait,
                    }
                })
        }

        proptest! {
            /// For any values: a refusal, or a line whose every word the kernel and
            /// the guest's parser read back as exactly what was put in: the host's
            /// words, one `ghrm.*` word per set value, `--`, and each init argument.
            /// No value can end its word, add another, or move `--`.
            #[test]
            fn no_value_injects_a_word(
                c in cmdline(),
                args in proptest::collection::vec(value(), 0..4),
            ) {
                let head = "console=ttyS0 panic=-1";
                let Ok(line) = kernel_line(head, &c, &args) else {
                    return Ok(());
                };
                let words = kernel_words(&line);
                let n_ghrm = c.probe as usize + c.net as usize + c.dns.is_some() as usize
                    + c.mounts.len() + c.root.is_some() as usize + c.init.is_some() as usize
                    + c.exec.is_some() as usize + c.wait as usize;
                let mut expected: Vec<Vec<u8>> =
                    head.split(' ').map(|w| w.as_bytes().to_vec()).collect();
                expected.extend(
                    c.render().unwrap().split(' ').filter(|w| !w.is_empty()).map(|w| w.as_bytes().to_vec()),
                );
                expected.push(END.as_bytes().to_vec());
                expected.extend(args.iter().map(|a| a.as_bytes().to_vec()));
                prop_assert_eq!(&words, &expected, "{}", line);
                prop_assert_eq!(words.len(), 2 + n_ghrm + 1 + args.len(), "{}", line);
                prop_assert_eq!(cmdline_keys(&line).len(), n_ghrm, "{}", line);
                prop_assert_eq!(Cmdline::parse(&line).unwrap(), c, "{}", line);
                prop_assert_eq!(init_args(&line), args, "{}", line);
            }

            /// What is refused is refused for a reason: an unsafe value or a tag with `:`.
            #[test]
            fn refusals_name_a_real_fault(c in cmdline(), args in proptest::collection::vec(value(), 0..4)) {
                match kernel_line("console=ttyS0", &c, &args) {
                    Ok(_) => {}
                    Err(CmdlineError::Unsafe { value, .. }) => prop_assert!(!safe_value(&value)),
                    Err(CmdlineError::BadMount(_)) => {
                        prop_assert!(c.mounts.iter().any(|m| m.tag.contains(':')))
                    }
                    Err(CmdlineError::UnsafeArg(i)) => prop_assert!(!safe_value(&args[i - 1])),
                }
            }
        }
    }
}
