//! eth0 for QEMU user networking (`ghrm.net=1`): address, route and resolv.conf by
//! ioctl, as PID 1 has no `ip`. Owns the slirp addresses; must not touch other links.

fn ifreq(name: &str) -> libc::ifreq {
    // SAFETY: ifreq is plain old data; all-zero is a valid value.
    let mut r: libc::ifreq = unsafe { std::mem::zeroed() };
    for (d, s) in r.ifr_name.iter_mut().zip(name.bytes()) {
        *d = s as libc::c_char;
    }
    r
}

fn sockaddr(ip: [u8; 4]) -> libc::sockaddr {
    let sin = libc::sockaddr_in {
        sin_family: libc::AF_INET as libc::sa_family_t,
        sin_port: 0,
        sin_addr: libc::in_addr {
            s_addr: u32::from_ne_bytes(ip),
        },
        sin_zero: [0; 8],
    };
    // SAFETY: sockaddr_in and sockaddr have the same size on Linux.
    unsafe { std::mem::transmute::<libc::sockaddr_in, libc::sockaddr>(sin) }
}

fn ioctl(fd: i32, req: libc::c_ulong, arg: *mut libc::c_void, what: &str) -> Result<(), String> {
    // SAFETY: `arg` points at a live ifreq/rtentry of the type `req` expects.
    if unsafe { libc::ioctl(fd, req as _, arg) } != 0 {
        return Err(format!("{what}: {}", std::io::Error::last_os_error()));
    }
    Ok(())
}

/// Bring `name` up, optionally with an address and netmask.
fn ifup(fd: i32, name: &str, addr: Option<([u8; 4], [u8; 4])>) -> Result<(), String> {
    if let Some((ip, mask)) = addr {
        let mut r = ifreq(name);
        r.ifr_ifru.ifru_addr = sockaddr(ip);
        ioctl(
            fd,
            libc::SIOCSIFADDR,
            &mut r as *mut _ as *mut _,
            &format!("address of {name}"),
        )?;
        let mut r = ifreq(name);
        r.ifr_ifru.ifru_netmask = sockaddr(mask);
        ioctl(
            fd,
            libc::SIOCSIFNETMASK,
            &mut r as *mut _ as *mut _,
            &format!("netmask of {name}"),
        )?;
    }
    let mut r = ifreq(name);
    ioctl(
        fd,
        libc::SIOCGIFFLAGS,
        &mut r as *mut _ as *mut _,
        &format!("flags of {name}"),
    )?;
    // SAFETY: SIOCGIFFLAGS filled the flags member of the union.
    unsafe { r.ifr_ifru.ifru_flags |= (libc::IFF_UP | libc::IFF_RUNNING) as libc::c_short };
    ioctl(
        fd,
        libc::SIOCSIFFLAGS,
        &mut r as *mut _ as *mut _,
        &format!("bring {name} up"),
    )
}

pub fn network(dns: &str, notes: &mut Vec<String>) -> Result<(), String> {
    // SAFETY: plain socket(2).
    let fd = unsafe { libc::socket(libc::AF_INET, libc::SOCK_DGRAM | libc::SOCK_CLOEXEC, 0) };
    if fd < 0 {
        return Err(format!("socket: {}", std::io::Error::last_os_error()));
    }
    let result = (|| {
        ifup(fd, "lo", None)?;
        // The NIC appears when virtio_net binds; give it a moment.
        let mut tries = 0;
        loop {
            match ifup(fd, "eth0", Some(([10, 0, 2, 15], [255, 255, 255, 0]))) {
                Ok(()) => break,
                Err(e) if tries >= 40 => return Err(e),
                Err(_) => std::thread::sleep(std::time::Duration::from_millis(50)),
            }
            tries += 1;
        }
        // SAFETY: rtentry is plain old data.
        let mut rt: libc::rtentry = unsafe { std::mem::zeroed() };
        rt.rt_dst = sockaddr([0, 0, 0, 0]);
        rt.rt_genmask = sockaddr([0, 0, 0, 0]);
        rt.rt_gateway = sockaddr([10, 0, 2, 2]);
        rt.rt_flags = libc::RTF_UP | libc::RTF_GATEWAY;
        match ioctl(
            fd,
            libc::SIOCADDRT,
            &mut rt as *mut _ as *mut _,
            "default route",
        ) {
            Err(e) if !e.contains("File exists") => return Err(e),
            _ => {}
        }
        Ok(())
    })();
    // SAFETY: closing the socket we opened.
    unsafe { libc::close(fd) };
    result?;
    let _ = std::fs::write("/etc/resolv.conf", format!("nameserver {dns}\n"));
    notes.push(format!("eth0 10.0.2.15/24 via 10.0.2.2, dns {dns}"));
    Ok(())
}
