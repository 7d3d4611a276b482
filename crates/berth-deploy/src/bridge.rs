//! The bridge containers sit on must keep its MAC.
//!
//! A Linux bridge made without a MAC of its own (`ip link add br0 type bridge`, brctl,
//! ifupdown; not the bridges dockerd makes, which get one) takes the lowest MAC of its
//! ports and takes another when that port goes. A container learns the bridge's MAC for
//! the bridge's address (where berth's proxy and health checks come from) once, and
//! keeps it for its neighbour entry's life: when the old container of a deploy held the
//! lowest MAC, removing it moves the bridge's MAC, and the new container sends its
//! answers to a MAC nobody has until its entry expires (15 to 45 s, then probes). Under
//! load that is a request that hangs for seconds. berth therefore pins such a bridge's
//! MAC to the one it has (`addr_assign_type` becomes 3, "set"), before a deploy starts
//! a container (each deploy: setting it again is harmless).

/// Pins the MAC of bridge `name` (in this network namespace) to the one it has now:
/// setting a bridge's MAC, even to the same value, makes it the bridge's own
/// (`addr_assign_type` 3, "set"), and it no longer follows its ports. Needs
/// CAP_NET_ADMIN. Returns the MAC. (Not `/sys/class/net`: that shows the network
/// namespace sysfs was mounted in, not necessarily the agent's.)
pub fn pin_mac(name: &str) -> std::io::Result<String> {
    if name.is_empty() || name.len() >= libc::IFNAMSIZ || name.contains('\0') {
        return Err(std::io::Error::new(
            std::io::ErrorKind::InvalidInput,
            format!("{name:?} is not a network device name"),
        ));
    }
    let mac = hwaddr(name, None)
        .map_err(|e| std::io::Error::new(e.kind(), format!("read the MAC of {name}: {e}")))?;
    hwaddr(name, Some(mac))
        .map_err(|e| std::io::Error::new(e.kind(), format!("set the MAC of {name}: {e}")))?;
    Ok(mac
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect::<Vec<_>>()
        .join(":"))
}

/// SIOCGIFHWADDR (`set` none) or SIOCSIFHWADDR on device `name`: a MAC without netlink.
fn hwaddr(name: &str, set: Option<[u8; 6]>) -> std::io::Result<[u8; 6]> {
    use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
    // SAFETY: plain socket(2); the descriptor is owned (and closed) by `sock`.
    let fd = unsafe { libc::socket(libc::AF_INET, libc::SOCK_DGRAM | libc::SOCK_CLOEXEC, 0) };
    if fd < 0 {
        return Err(std::io::Error::last_os_error());
    }
    // SAFETY: `fd` is a new descriptor nothing else owns.
    let sock = unsafe { OwnedFd::from_raw_fd(fd) };
    // SAFETY: an all-zero ifreq is valid (a C struct of integers and arrays).
    let mut req: libc::ifreq = unsafe { std::mem::zeroed() };
    for (d, s) in req.ifr_name.iter_mut().zip(name.bytes()) {
        *d = s as libc::c_char;
    }
    let op = match set {
        Some(mac) => {
            // SAFETY: as above, a C struct of integers.
            let mut addr: libc::sockaddr = unsafe { std::mem::zeroed() };
            addr.sa_family = libc::ARPHRD_ETHER;
            for (d, s) in addr.sa_data.iter_mut().zip(mac) {
                *d = s as libc::c_char;
            }
            req.ifr_ifru.ifru_hwaddr = addr;
            libc::SIOCSIFHWADDR
        }
        None => libc::SIOCGIFHWADDR,
    };
    // SAFETY: both requests take one ifreq, which lives across the call.
    let r = unsafe { libc::ioctl(sock.as_raw_fd(), op, &mut req) };
    if r < 0 {
        return Err(std::io::Error::last_os_error());
    }
    // SAFETY: the kernel filled `ifru_hwaddr` (SIOCGIFHWADDR), or we did.
    let addr = unsafe { req.ifr_ifru.ifru_hwaddr };
    if addr.sa_family != libc::ARPHRD_ETHER {
        return Err(std::io::Error::new(
            std::io::ErrorKind::InvalidData,
            "not an Ethernet device",
        ));
    }
    let mut mac = [0u8; 6];
    for (d, s) in mac.iter_mut().zip(addr.sa_data) {
        *d = s as u8;
    }
    Ok(mac)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bad_names_and_missing_devices_are_errors() {
        for name in ["", "a-name-far-too-long"] {
            let e = pin_mac(name).unwrap_err();
            assert_eq!(e.kind(), std::io::ErrorKind::InvalidInput, "{name}: {e}");
        }
        let e = pin_mac("nosuchdev0").unwrap_err();
        assert!(e.to_string().contains("read the MAC of nosuchdev0"), "{e}");
    }
}
