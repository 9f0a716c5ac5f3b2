//! The default guest network (`--net internet`) across a real VM boundary: a job
//! in a QEMU guest reaches an "internet" host (a network namespace this test makes,
//! with public-range addresses, reached through the host's routes) and its DNS, but
//! none of the canaries on this host: its loopback, its addresses (0.0.0.0 and
//! `::`), its connector, a private range next to the one `--net-allow` opened.

use std::io::{Read, Write};
use std::net::{IpAddr, TcpListener, UdpSocket};
use std::os::fd::AsRawFd;
use std::os::unix::process::CommandExt;
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use crate::common::{World, PRELUDE, REPO};
use ghrm::localforge::JobStatus;

/// Hosts on "the internet": a network namespace joined to this host by a veth
/// pair on a transit network `<transit>.1/30` (this host) – `.2/30` (the far
/// side), holding `addrs` (each a /32), which this host routes through the far
/// side: not on any network of this host's, as the internet is not. Removed when
/// dropped (and with this test process, by its death signal).
struct InternetHost {
    holder: std::process::Child,
    link: String,
}

impl InternetHost {
    /// `transit` is the first three octets and the base of a /30 (`198.18.0.0`),
    /// `routes` what this host sends through the far side.
    fn new(transit: &str, addrs: &[&str], routes: &[&str]) -> InternetHost {
        let mut holder = Command::new("unshare");
        holder.args(["--net", "sleep", "600"]).stdin(Stdio::null());
        // SAFETY: prctl only: the namespace (and its routes' far side) goes with us.
        unsafe {
            holder.pre_exec(|| {
                if libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL) != 0 {
                    return Err(std::io::Error::last_os_error());
                }
                Ok(())
            });
        }
        let holder = holder.spawn().expect("unshare (util-linux)");
        let link = format!("ghrm{}", protocol::secret::random_alnum(6).unwrap());
        let me = InternetHost { holder, link };
        let pid = me.holder.id().to_string();
        // Wait until the holder is in its own namespace (unshare has run).
        let own = std::fs::read_link("/proc/self/ns/net").unwrap();
        let deadline = std::time::Instant::now() + Duration::from_secs(10);
        while std::fs::read_link(format!("/proc/{pid}/ns/net"))
            .ok()
            .as_ref()
            == Some(&own)
        {
            assert!(
                std::time::Instant::now() < deadline,
                "unshare --net did not start"
            );
            std::thread::sleep(Duration::from_millis(10));
        }
        let base: std::net::Ipv4Addr = transit.parse().unwrap();
        let near = std::net::Ipv4Addr::from(u32::from(base) + 1).to_string();
        let far = std::net::Ipv4Addr::from(u32::from(base) + 2).to_string();
        let peer = format!("{}p", me.link);
        me.ip(&[
            "link", "add", &me.link, "type", "veth", "peer", "name", &peer,
        ]);
        me.ip(&["link", "set", &peer, "netns", &pid]);
        me.ip(&["addr", "add", &format!("{near}/30"), "dev", &me.link]);
        me.ip(&["link", "set", &me.link, "up"]);
        me.inside(&["link", "set", "lo", "up"]);
        me.inside(&["addr", "add", &format!("{far}/30"), "dev", &peer]);
        me.inside(&["link", "set", &peer, "up"]);
        for a in addrs {
            me.inside(&["addr", "add", &format!("{a}/32"), "dev", &peer]);
        }
        me.inside(&["route", "add", "default", "via", &near]);
        for r in routes {
            me.ip(&["route", "add", r, "via", &far, "dev", &me.link]);
        }
        me
    }

    fn ip(&self, args: &[&str]) {
        let st = Command::new("ip")
            .args(args)
            .status()
            .expect("ip (iproute2)");
        assert!(st.success(), "ip {args:?} failed: this test needs root");
    }

    fn inside(&self, args: &[&str]) {
        let pid = self.holder.id().to_string();
        let st = Command::new("nsenter")
            .args(["-t", &pid, "-n", "ip"])
            .args(args)
            .status()
            .unwrap();
        assert!(st.success(), "ip {args:?} inside the internet host failed");
    }

    /// Run `f` on a thread that lives in the internet host's namespace.
    fn serve(&self, f: impl FnOnce() + Send + 'static) {
        let ns = std::fs::File::open(format!("/proc/{}/ns/net", self.holder.id())).unwrap();
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            // SAFETY: setns on an open namespace descriptor; it moves this thread only.
            let r = unsafe { libc::setns(ns.as_raw_fd(), libc::CLONE_NEWNET) };
            tx.send(r).unwrap();
            if r == 0 {
                f();
            }
        });
        assert_eq!(rx.recv().unwrap(), 0, "setns into the internet host");
    }
}

impl Drop for InternetHost {
    fn drop(&mut self) {
        let _ = Command::new("ip")
            .args(["link", "del", &self.link])
            .status();
        let _ = self.holder.kill();
        let _ = self.holder.wait();
    }
}

/// An HTTP server answering `body` at `addr:80`, counting connections.
fn http(addr: &str, body: &'static str) -> (impl FnOnce() + Send + 'static, Arc<AtomicUsize>) {
    let n = Arc::new(AtomicUsize::new(0));
    let count = n.clone();
    let addr = format!("{addr}:80");
    let f = move || {
        let l = TcpListener::bind(&addr).unwrap();
        for mut s in l.incoming().flatten() {
            count.fetch_add(1, Ordering::SeqCst);
            let mut b = [0u8; 1024];
            let _ = s.read(&mut b);
            let _ = write!(
                s,
                "HTTP/1.0 200 OK\r\nContent-Length: {}\r\n\r\n{body}",
                body.len()
            );
        }
    };
    (f, n)
}

/// A DNS server at `addr:53` answering every A question with `addr`.
fn dns(addr: &str) -> impl FnOnce() + Send + 'static {
    let addr: std::net::Ipv4Addr = addr.parse().unwrap();
    move || {
        let s = UdpSocket::bind((addr, 53)).unwrap();
        let mut b = [0u8; 512];
        while let Ok((n, from)) = s.recv_from(&mut b) {
            if n < 12 {
                continue;
            }
            // The question ends after its name's zero label and 4 bytes of type/class.
            let Some(end) = b[12..n].iter().position(|&x| x == 0).map(|z| 12 + z + 5) else {
                continue;
            };
            let is_a = end <= n && b[end - 4..end - 2] == [0, 1];
            let mut r = b[..end.min(n)].to_vec();
            r[2] = 0x81;
            r[3] = 0x80;
            r[6..8].copy_from_slice(&[0, is_a as u8]);
            r[8..12].fill(0);
            if is_a {
                r.extend_from_slice(&[0xc0, 12, 0, 1, 0, 1, 0, 0, 0, 60, 0, 4]);
                r.extend_from_slice(&addr.octets());
            }
            let _ = s.send_to(&r, from);
        }
    }
}

/// A listener on this host counting the connections that reach it.
fn canary(addr: &str) -> (u16, Arc<AtomicUsize>) {
    let l = TcpListener::bind(addr).unwrap();
    let port = l.local_addr().unwrap().port();
    let n = Arc::new(AtomicUsize::new(0));
    let count = n.clone();
    std::thread::spawn(move || {
        for s in l.incoming().flatten() {
            count.fetch_add(1, Ordering::SeqCst);
            drop(s);
        }
    });
    (port, n)
}

const GUEST_FORGE: &str = "10.0.2.100:80";

/// The default network, no `--net` option: internet yes, host no.
#[test]
fn a_job_reaches_the_internet_and_nothing_of_the_host() {
    isolation(None, "198.18.0.0", "198.51.100.10", "10.99", true);
}

/// The same for a user who is not root: the namespace, its filter and its
/// connector need no privilege.
#[test]
fn the_default_network_needs_no_root() {
    isolation(Some(65534), "198.18.0.4", "203.0.113.10", "10.98", false);
}

/// A job under the default network, for `user` (None: this test's own, root),
/// with the internet host at `site_ip` (behind the transit /30 `transit`) and LAN
/// hosts at `<lan>.0.10` (opened by `--net-allow <lan>.0.0/24`) and `<lan>.1.10`
/// (not opened); `metadata`: a cloud metadata service at 169.254.169.254 too.
fn isolation(user: Option<u32>, transit: &str, site_ip: &str, lan: &str, metadata: bool) {
    let site_ip = site_ip.to_string();
    let (lan_ip, other_ip) = (format!("{lan}.0.10"), format!("{lan}.1.10"));
    let mut addrs = vec![site_ip.clone(), lan_ip.clone(), other_ip.clone()];
    let mut routes = vec![
        format!("{site_ip}/32"),
        format!("{lan}.0.0/24"),
        format!("{lan}.1.0/24"),
    ];
    if metadata {
        addrs.push("169.254.169.254".into());
        routes.push("169.254.169.254/32".into());
    }
    let addrs: Vec<&str> = addrs.iter().map(String::as_str).collect();
    let routes: Vec<&str> = routes.iter().map(String::as_str).collect();
    // Declared first, dropped last: no guest outlives the routes to it.
    let inet = InternetHost::new(transit, &addrs, &routes);
    let (site, site_hits) = http(&site_ip, "internet-ok\n");
    inet.serve(site);
    inet.serve(dns(&site_ip));
    let (lan_srv, lan_hits) = http(&lan_ip, "allowed-lan-ok\n");
    inet.serve(lan_srv);
    let (other, other_hits) = http(&other_ip, "other-lan\n");
    inet.serve(other);
    let meta_hits = if metadata {
        let (m, hits) = http("169.254.169.254", "metadata\n");
        inet.serve(m);
        Some(hits)
    } else {
        None
    };

    let (p_lo, lo_hits) = canary("127.0.0.1:0");
    let (p_any, any_hits) = canary("0.0.0.0:0");
    let (p_any6, any6_hits) = canary("[::]:0");
    let host: Vec<IpAddr> = ghrm::guestnet::host_nets()
        .unwrap()
        .addresses
        .into_iter()
        .filter(|a| !matches!(a, IpAddr::V6(v) if v.segments()[0] & 0xffc0 == 0xfe80))
        .collect();
    let mut tries = vec![
        format!("10.0.2.2 {p_lo}"),
        format!("10.0.2.2 {p_any}"),
        format!("10.0.3.2 {p_any}"),
        format!("10.0.3.100 {p_any}"),
        format!("fec0::2 {p_any6}"),
    ];
    if metadata {
        tries.push("169.254.169.254 80".to_string());
    }
    for a in &host {
        match a {
            IpAddr::V4(_) => tries.push(format!("{a} {p_any}")),
            IpAddr::V6(_) => tries.push(format!("{a} {p_any6}")),
        }
    }
    tries.push(format!("127.0.0.1 {p_lo}"));
    let script = format!(
        "{PRELUDE}get() {{ printf 'GET / HTTP/1.0\\r\\n\\r\\n' | nc -w 10 \"$1\" 80 | tail -n 1; }}\n{probes}\
         echo \"site=$(get {site_ip})\"\n\
         echo \"lan=$(get {lan_ip})\"\n\
         echo \"other=$(get {other_ip})\"\n\
         nslookup probe.ghrm.test {site_ip} | sed 's/^/dns: /'\n\
         ping -c 1 -W 5 {site_ip} >/dev/null 2>&1 && echo ping-ok\n\
         echo net-done\n",
        probes = tries
            .iter()
            .map(|t| format!("echo x | nc -w 3 {t} >/dev/null 2>&1; echo \"tried {t}: $?\"\n"))
            .collect::<String>(),
    );

    let w = World::new();
    let port = w.forge.addr().port();
    w.forge.set_runner_url(&format!("http://{GUEST_FORGE}"));
    let job = w.forge.queue_job(REPO, &[], &script);
    let fwd = format!("{GUEST_FORGE}=127.0.0.1:{port}");
    let allow = format!("{lan}.0.0/24");
    let bundle = match user {
        None => crate::common::qemu_bundle(),
        Some(uid) => w.as_user(uid, &crate::common::qemu_bundle()),
    };
    let b = bundle.display().to_string();
    let runner_args = [
        "-i",
        &b,
        "--accel",
        "tcg",
        "-m",
        "512",
        "-c",
        "1",
        "-r",
        "1",
        "-u",
        "root",
        "--net-forward",
        &fwd,
        "--net-allow",
        &allow,
        "-d",
        &site_ip,
    ];
    let mut p = match user {
        None => w.orchestrator(&["-n", "1", "-R", "qemu"], &runner_args),
        Some(uid) => w.orchestrator_as(uid, &["-n", "1", "-R", "qemu"], &runner_args),
    };
    let st = p.finish(Duration::from_secs(300));
    let log = p.log();
    let j = w.forge.jobs().into_iter().find(|j| j.id == job).unwrap();
    assert!(st.success(), "{st}\n{log}");
    // The forge was reached through the forward: the job ran at all.
    assert_eq!(j.status, JobStatus::Completed, "{log}");
    let out = &j.output;
    assert!(out.contains("net-done"), "{out}\n{log}");
    assert!(
        out.contains("site=internet-ok"),
        "the internet is closed:\n{out}"
    );
    assert!(
        out.contains("lan=allowed-lan-ok"),
        "--net-allow did not open its range:\n{out}"
    );
    assert!(
        !out.contains("other=other-lan"),
        "a private range next to the allowed one is open:\n{out}"
    );
    assert!(
        out.contains(&format!("Address: {site_ip}")),
        "no DNS answer:\n{out}"
    );
    assert!(site_hits.load(Ordering::SeqCst) >= 1);
    assert!(lan_hits.load(Ordering::SeqCst) >= 1);
    assert_eq!(other_hits.load(Ordering::SeqCst), 0, "{out}");
    // ICMP where the host allows it: its net.ipv4.ping_group_range must include
    // the user (distributions open it to all; scripts/install-deps.sh does too).
    assert!(
        out.contains("ping-ok"),
        "no ICMP echo through the default network:\n{out}"
    );
    if let Some(m) = meta_hits {
        assert_eq!(
            m.load(Ordering::SeqCst),
            0,
            "the metadata service was reached:\n{out}"
        );
    }
    for (what, n) in [
        ("127.0.0.1", &lo_hits),
        ("0.0.0.0", &any_hits),
        ("[::]", &any6_hits),
    ] {
        assert_eq!(
            n.load(Ordering::SeqCst),
            0,
            "the guest reached the host's {what} canary:\n{out}"
        );
    }
    for t in &tries {
        assert!(
            out.contains(&format!("tried {t}: 1")),
            "connecting to {t} did not fail at once:\n{out}"
        );
    }
    let left = w.wait_no_processes(Duration::from_secs(5));
    assert!(left.is_empty(), "{left:?}");
    drop(inet);
}

/// A server at `addr:80` that sends `bytes` and records how long each transfer
/// took (from accept until the client had it all and closed).
fn sink_source(
    addr: &str,
    bytes: usize,
) -> (
    impl FnOnce() + Send + 'static,
    Arc<std::sync::Mutex<Vec<f64>>>,
) {
    let times = Arc::new(std::sync::Mutex::new(vec![]));
    let out = times.clone();
    let addr = format!("{addr}:80");
    let f = move || {
        let l = TcpListener::bind(&addr).unwrap();
        let chunk = vec![0u8; 1 << 16];
        for mut s in l.incoming().flatten() {
            let t = std::time::Instant::now();
            let mut b = [0u8; 1024];
            let _ = s.read(&mut b);
            let _ = write!(s, "HTTP/1.0 200 OK\r\nContent-Length: {bytes}\r\n\r\n");
            let mut left = bytes;
            while left > 0 {
                let n = left.min(chunk.len());
                if s.write_all(&chunk[..n]).is_err() {
                    break;
                }
                left -= n;
            }
            let _ = s.shutdown(std::net::Shutdown::Write);
            let _ = s.read(&mut b);
            times.lock().unwrap().push(t.elapsed().as_secs_f64());
        }
    };
    (f, out)
}

/// Benchmark, not a test (`scripts/bench-net.sh` runs it): per guest network
/// mode, the host's set-up cost per VM, VM start → runner up, and a 100 MiB
/// download from an "internet" host.
#[test]
#[ignore = "benchmark: scripts/bench-net.sh"]
fn bench_guest_network() {
    const MIB: usize = 100;
    let inet = InternetHost::new("198.18.0.8", &["198.51.100.30"], &["198.51.100.30/32"]);
    let (src, times) = sink_source("198.51.100.30", MIB << 20);
    inet.serve(src);
    // The namespace, filter and connector alone, as each VM start pays them.
    let tools = ghrm::guestnet::sandbox::Tools::find().unwrap();
    let host = ghrm::guestnet::host_nets().unwrap();
    let rules = ghrm::guestnet::Policy::default().ruleset(
        &host.addresses,
        &ghrm::guestnet::sandbox::connector_addresses(),
        &host.onlink,
    );
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let mut setup: Vec<f64> = (0..10)
        .map(|_| {
            let t = std::time::Instant::now();
            rt.block_on(ghrm::guestnet::sandbox::probe(&tools, &rules))
                .unwrap();
            t.elapsed().as_secs_f64() * 1000.0
        })
        .collect();
    setup.sort_by(f64::total_cmp);
    println!(
        "{:<10} {:>14} {:>16} {:>14} {:>8}",
        "--net", "set-up ms", "start→up s", "100 MiB s", "MB/s"
    );
    for mode in ["user", "internet"] {
        let w = World::new();
        let port = w.forge.addr().port();
        w.forge.set_runner_url(&format!("http://{GUEST_FORGE}"));
        let job = w.forge.queue_job(
            REPO,
            &[],
            "echo \"got=$(printf 'GET / HTTP/1.0\\r\\n\\r\\n' | nc -w 60 198.51.100.30 80 | wc -c)\"",
        );
        let b = crate::common::qemu_bundle().display().to_string();
        let fwd = format!("{GUEST_FORGE}=127.0.0.1:{port}");
        let mut p = w.orchestrator(
            &["-n", "1", "-R", "qemu"],
            &[
                "-i",
                &b,
                "--accel",
                "tcg",
                "-m",
                "512",
                "-c",
                "1",
                "-r",
                "1",
                "--net",
                mode,
                "--net-forward",
                &fwd,
            ],
        );
        let st = p.finish(Duration::from_secs(600));
        let log = p.log();
        assert!(st.success(), "{log}");
        let j = w.forge.jobs().into_iter().find(|j| j.id == job).unwrap();
        let got: usize = j
            .output
            .split("got=")
            .nth(1)
            .and_then(|r| r.split_whitespace().next())
            .and_then(|v| v.parse().ok())
            .unwrap_or(0);
        assert!(got > MIB << 20, "{}", j.output);
        let boot = log
            .split("boot_ms=")
            .nth(1)
            .and_then(|r| r.split_whitespace().next())
            .and_then(|v| v.parse::<f64>().ok())
            .unwrap_or(f64::NAN)
            / 1000.0;
        let secs = times.lock().unwrap().pop().unwrap_or(f64::NAN);
        let up = if mode == "internet" {
            format!("{:.1}", setup[setup.len() / 2])
        } else {
            "-".into()
        };
        println!(
            "{mode:<10} {up:>14} {boot:>16.2} {secs:>14.2} {:>8.1}",
            (MIB << 20) as f64 / secs / 1e6
        );
    }
    drop(inet);
}
