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
//! a container.

use std::path::Path;

/// `addr_assign_type` of an address given to the device (NET_ADDR_SET).
const NET_ADDR_SET: &str = "3";

/// What [`pin_mac`] did.
#[derive(Debug, PartialEq, Eq)]
pub enum Pinned {
    /// The bridge had a MAC of its own already.
    Already,
    /// Its MAC (this one) is now its own.
    Now(String),
}

/// Pins the MAC of bridge `name` (a device in `/sys/class/net` of this network
/// namespace) to the one it has now, unless it was given one. Needs CAP_NET_ADMIN.
pub fn pin_mac(name: &str) -> std::io::Result<Pinned> {
    pin_mac_in(Path::new("/sys/class/net"), name)
}

fn pin_mac_in(sys: &Path, name: &str) -> std::io::Result<Pinned> {
    let bad = || {
        std::io::Error::new(
            std::io::ErrorKind::InvalidInput,
            format!("{name:?} is not a network device name"),
        )
    };
    if name.is_empty() || name.len() >= libc::IFNAMSIZ || name.contains(['/', '\0']) {
        return Err(bad());
    }
    let dir = sys.join(name);
    let read = |f: &str| {
        std::fs::read_to_string(dir.join(f)).map_err(|e| {
            std::io::Error::new(e.kind(), format!("read {}: {e}", dir.join(f).display()))
        })
    };
    if read("addr_assign_type")?.trim() == NET_ADDR_SET {
        return Ok(Pinned::Already);
    }
    let text = read("address")?.trim().to_owned();
    let mac = parse_mac(&text).ok_or_else(|| {
        std::io::Error::new(
            std::io::ErrorKind::InvalidData,
            format!("bridge {name} has no Ethernet address ({text:?})"),
        )
    })?;
    set_mac(name, mac)
        .map_err(|e| std::io::Error::new(e.kind(), format!("set the MAC of bridge {name}: {e}")))?;
    Ok(Pinned::Now(text))
}

fn parse_mac(text: &str) -> Option<[u8; 6]> {
    let mut out = [0u8; 6];
    let mut parts = text.split(':');
    for b in &mut out {
        let p = parts.next()?;
        if p.len() != 2 {
            return None;
        }
        *b = u8::from_str_radix(p, 16).ok()?;
    }
    parts.next().is_none().then_some(out)
}

/// SIOCSIFHWADDR on device `name`: the one call that sets a MAC without netlink.
fn set_mac(name: &str, mac: [u8; 6]) -> std::io::Result<()> {
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
    let mut addr: libc::sockaddr = unsafe { std::mem::zeroed() };
    addr.sa_family = libc::ARPHRD_ETHER;
    for (d, s) in addr.sa_data.iter_mut().zip(mac) {
        *d = s as libc::c_char;
    }
    req.ifr_ifru.ifru_hwaddr = addr;
    // SAFETY: SIOCSIFHWADDR reads one ifreq, which lives across the call.
    let r = unsafe { libc::ioctl(sock.as_raw_fd(), libc::SIOCSIFHWADDR, &req) };
    if r < 0 {
        return Err(std::io::Error::last_os_error());
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn macs_parse() {
        assert_eq!(
            parse_mac("02:42:ac:1e:01:ff"),
            Some([2, 0x42, 0xac, 0x1e, 1, 0xff])
        );
        for bad in [
            "",
            "02:42:ac:1e:01",
            "02:42:ac:1e:01:ff:00",
            "2:42:ac:1e:01:ff",
            "zz:42:ac:1e:01:ff",
        ] {
            assert_eq!(parse_mac(bad), None, "{bad}");
        }
    }

    #[test]
    fn a_bridge_with_its_own_mac_is_left_alone_and_bad_names_are_refused() {
        let sys = tempfile::tempdir().unwrap();
        let dev = sys.path().join("br-own");
        std::fs::create_dir(&dev).unwrap();
        std::fs::write(dev.join("addr_assign_type"), "3\n").unwrap();
        std::fs::write(dev.join("address"), "02:42:ac:1e:01:01\n").unwrap();
        assert_eq!(pin_mac_in(sys.path(), "br-own").unwrap(), Pinned::Already);
        for name in ["", "../etc", "a-name-far-too-long"] {
            let e = pin_mac_in(sys.path(), name).unwrap_err();
            assert_eq!(e.kind(), std::io::ErrorKind::InvalidInput, "{name}: {e}");
        }
        let e = pin_mac_in(sys.path(), "nosuchdev").unwrap_err();
        assert!(e.to_string().contains("nosuchdev/addr_assign_type"), "{e}");
    }
}
