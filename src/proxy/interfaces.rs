//! Discovery of an interface's address (for the WAN address announced in rewritten PORTs).

use std::ffi::CStr;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

/// The interface has no usable address.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum InterfaceError {
    /// getifaddrs failed.
    #[error("cannot list interface addresses: {0}")]
    List(std::io::Error),
    /// No address of the wanted family on that interface.
    #[error(
        "interface `{name}` has no {family} address; bring it up, or set wan_address explicitly"
    )]
    NoAddress {
        /// Interface name.
        name: String,
        /// "IPv4" or "IPv6".
        family: &'static str,
    },
}

/// Whether interface `name` exists (in the caller's network namespace).
pub fn interface_exists(name: &str) -> bool {
    let Ok(name) = std::ffi::CString::new(name) else {
        return false;
    };
    // SAFETY: `name` is a valid NUL-terminated string that outlives the call.
    unsafe { libc::if_nametoindex(name.as_ptr()) != 0 }
}

/// Whether this host has IPv6 at all: a kernel booted with `ipv6.disable=1` refuses IPv6
/// sockets (EAFNOSUPPORT). Asked by opening one, not from `/proc/sys/net/ipv6`, which the
/// unit's `ProcSubset=pid` hides.
pub fn ipv6_supported() -> bool {
    match socket2::Socket::new(socket2::Domain::IPV6, socket2::Type::DGRAM, None) {
        Ok(_) => true,
        Err(e) => e.raw_os_error() != Some(libc::EAFNOSUPPORT),
    }
}

/// The first global address of `family` (IPv4 when `v6` is false) on interface `name`.
pub fn first_address(name: &str, v6: bool) -> Result<IpAddr, InterfaceError> {
    let mut found = None;
    let mut head: *mut libc::ifaddrs = std::ptr::null_mut();
    // SAFETY: getifaddrs fills `head` with a list we free below with freeifaddrs; every
    // pointer is checked for null before use and only read while the list is alive.
    unsafe {
        if libc::getifaddrs(&mut head) != 0 {
            return Err(InterfaceError::List(std::io::Error::last_os_error()));
        }
        let mut cursor = head;
        while !cursor.is_null() && found.is_none() {
            let entry = &*cursor;
            cursor = entry.ifa_next;
            if entry.ifa_addr.is_null() || entry.ifa_name.is_null() {
                continue;
            }
            if CStr::from_ptr(entry.ifa_name).to_bytes() != name.as_bytes() {
                continue;
            }
            let family = i32::from((*entry.ifa_addr).sa_family);
            if family == libc::AF_INET && !v6 {
                let sin = &*(entry.ifa_addr as *const libc::sockaddr_in);
                found = Some(IpAddr::V4(Ipv4Addr::from(u32::from_be(
                    sin.sin_addr.s_addr,
                ))));
            } else if family == libc::AF_INET6 && v6 {
                let sin6 = &*(entry.ifa_addr as *const libc::sockaddr_in6);
                let ip = Ipv6Addr::from(sin6.sin6_addr.s6_addr);
                // Link-local addresses cannot be announced to a remote server.
                if (ip.segments()[0] & 0xffc0) != 0xfe80 {
                    found = Some(IpAddr::V6(ip));
                }
            }
        }
        libc::freeifaddrs(head);
    }
    found.ok_or_else(|| InterfaceError::NoAddress {
        name: name.to_owned(),
        family: if v6 { "IPv6" } else { "IPv4" },
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn loopback_exists_and_a_made_up_name_does_not() {
        assert!(interface_exists("lo"));
        assert!(!interface_exists("no-such-if0"));
        assert!(!interface_exists("l\0o"));
    }

    #[test]
    fn loopback_has_127_0_0_1() {
        assert_eq!(
            first_address("lo", false).unwrap(),
            IpAddr::V4(Ipv4Addr::LOCALHOST)
        );
    }

    #[test]
    fn unknown_interface_is_a_clear_error() {
        let err = first_address("nonexistent0", false)
            .unwrap_err()
            .to_string();
        assert!(err.contains("nonexistent0"), "{err}");
    }
}

#[cfg(test)]
mod ipv6_tests {
    #[test]
    fn ipv6_is_found_where_the_kernel_has_it() {
        // This host has IPv6 unless booted without it, which its /proc then says too.
        let booted_without = !std::path::Path::new("/proc/sys/net/ipv6").exists();
        assert_eq!(super::ipv6_supported(), !booted_without);
    }
}
