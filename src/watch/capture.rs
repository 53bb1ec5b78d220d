//! Read-only packet capture: one `AF_PACKET` raw socket.
//!
//! Why a raw socket and not libpcap or pnet: we need the interface and the direction of every
//! frame (a gateway sees a forwarded packet twice — arriving on one side, leaving on the other
//! — and that pair is what tells a forward from a drop), which `recvfrom`'s `sockaddr_ll` gives
//! directly; the crate already links libc, and etherparse decodes. The socket is only ever read:
//! nothing is sent, the interface is not put into promiscuous mode, no filter is attached.

use std::collections::HashMap;
use std::ffi::{CStr, CString};
use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::time::{Duration, Instant};

use super::packet::{LinkType, Segment, decode};

/// `ETH_P_ALL` in network byte order, as `socket` and `sockaddr_ll` want it.
fn eth_p_all() -> u16 {
    (libc::ETH_P_ALL as u16).to_be()
}

/// Frames larger than this are truncated (GSO super-frames on veth can reach 64 KiB; only
/// headers and control-channel payloads matter).
const FRAME_BUFFER: usize = 65_536 + 128;

/// An open capture on one interface or on every interface of the current network namespace.
#[derive(Debug)]
pub struct Capture {
    fd: OwnedFd,
    epoch: Instant,
    only: Option<i32>,
    loopback: Option<i32>,
    names: HashMap<i32, String>,
    buffer: Vec<u8>,
}

impl Capture {
    /// Opens the capture: on `interface`, or on every interface but loopback when `None`.
    /// Timestamps count from `epoch`. Needs CAP_NET_RAW.
    pub fn open(interface: Option<&str>, epoch: Instant) -> io::Result<Self> {
        // SAFETY: plain syscall; the result is checked before use.
        let raw = unsafe {
            libc::socket(
                libc::AF_PACKET,
                libc::SOCK_RAW | libc::SOCK_CLOEXEC,
                i32::from(eth_p_all()),
            )
        };
        if raw < 0 {
            return Err(io::Error::last_os_error());
        }
        // SAFETY: `raw` is a fresh descriptor that nothing else owns.
        let fd = unsafe { OwnedFd::from_raw_fd(raw) };
        let only = match interface {
            Some(name) => {
                let index = if_index(name)?;
                bind_to(&fd, index)?;
                Some(index)
            }
            None => None,
        };
        // Best effort: a bigger receive buffer loses fewer frames during bursts.
        let size: libc::c_int = 4 << 20;
        // SAFETY: valid fd, pointer to a c_int of the size given.
        unsafe {
            libc::setsockopt(
                fd.as_raw_fd(),
                libc::SOL_SOCKET,
                libc::SO_RCVBUF,
                (&raw const size).cast(),
                size_of::<libc::c_int>() as libc::socklen_t,
            );
        }
        Ok(Self {
            fd,
            epoch,
            only,
            loopback: if_index("lo").ok(),
            names: HashMap::new(),
            buffer: vec![0; FRAME_BUFFER],
        })
    }

    /// The next TCP segment, or `None` when `timeout` passes without one. Frames that are
    /// not TCP are skipped (each skip restarts nothing: the wait is bounded by `timeout`).
    pub fn next_segment(
        &mut self,
        timeout: Duration,
        keep_payload: &dyn Fn(u16, u16) -> bool,
    ) -> io::Result<Option<Segment>> {
        let deadline = Instant::now() + timeout;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            if !self.readable(left)? {
                return Ok(None);
            }
            let Some((index, pkttype, hatype, len)) = self.receive()? else {
                continue;
            };
            if self.only.is_some_and(|only| only != index) {
                continue;
            }
            let on_loopback = Some(index) == self.loopback;
            // All interfaces: loopback is noise. Loopback on request: every frame shows up
            // twice (leaving and arriving), keep one.
            if on_loopback && (self.only.is_none() || pkttype == libc::PACKET_OUTGOING) {
                continue;
            }
            let link = match hatype {
                libc::ARPHRD_ETHER | libc::ARPHRD_LOOPBACK => LinkType::Ethernet,
                _ => LinkType::RawIp,
            };
            let at = self.epoch.elapsed();
            let name = self.name_of(index);
            let outgoing = pkttype == libc::PACKET_OUTGOING;
            if let Some(segment) =
                decode(&self.buffer[..len], link, at, &name, outgoing, keep_payload)
            {
                return Ok(Some(segment));
            }
            if Instant::now() >= deadline {
                return Ok(None);
            }
        }
    }

    fn readable(&self, timeout: Duration) -> io::Result<bool> {
        let mut pfd = libc::pollfd {
            fd: self.fd.as_raw_fd(),
            events: libc::POLLIN,
            revents: 0,
        };
        let millis = libc::c_int::try_from(timeout.as_millis()).unwrap_or(libc::c_int::MAX);
        // SAFETY: one valid pollfd.
        let rc = unsafe { libc::poll(&raw mut pfd, 1, millis) };
        match rc {
            0 => Ok(false),
            n if n > 0 => Ok(true),
            _ => {
                let err = io::Error::last_os_error();
                if err.kind() == io::ErrorKind::Interrupted {
                    Ok(false)
                } else {
                    Err(err)
                }
            }
        }
    }

    /// One frame into the buffer: (ifindex, packet type, hardware type, length).
    fn receive(&mut self) -> io::Result<Option<(i32, u8, u16, usize)>> {
        // SAFETY: sockaddr_ll is plain old data; all-zero is a valid value.
        let mut from: libc::sockaddr_ll = unsafe { std::mem::zeroed() };
        let mut from_len = size_of::<libc::sockaddr_ll>() as libc::socklen_t;
        // SAFETY: the buffer and the address outlive the call; lengths are theirs.
        let n = unsafe {
            libc::recvfrom(
                self.fd.as_raw_fd(),
                self.buffer.as_mut_ptr().cast(),
                self.buffer.len(),
                libc::MSG_DONTWAIT,
                (&raw mut from).cast(),
                &raw mut from_len,
            )
        };
        if n < 0 {
            let err = io::Error::last_os_error();
            return match err.kind() {
                io::ErrorKind::WouldBlock | io::ErrorKind::Interrupted => Ok(None),
                _ => Err(err),
            };
        }
        let len = usize::try_from(n).unwrap_or(0);
        Ok(Some((
            from.sll_ifindex,
            from.sll_pkttype,
            from.sll_hatype,
            len,
        )))
    }

    fn name_of(&mut self, index: i32) -> String {
        self.names
            .entry(index)
            .or_insert_with(|| if_name(index).unwrap_or_else(|| format!("if{index}")))
            .clone()
    }
}

fn if_index(name: &str) -> io::Result<i32> {
    let c_name = CString::new(name)
        .map_err(|_| io::Error::new(io::ErrorKind::InvalidInput, "interface name has a NUL"))?;
    // SAFETY: valid NUL-terminated string.
    let index = unsafe { libc::if_nametoindex(c_name.as_ptr()) };
    if index == 0 {
        return Err(io::Error::new(
            io::ErrorKind::NotFound,
            format!("no interface named {name} in this network namespace"),
        ));
    }
    i32::try_from(index).map_err(|_| io::Error::other("interface index out of range"))
}

fn if_name(index: i32) -> Option<String> {
    let mut buf = [0 as libc::c_char; libc::IF_NAMESIZE];
    let index = u32::try_from(index).ok()?;
    // SAFETY: the buffer has IF_NAMESIZE bytes, as if_indextoname requires.
    let ptr = unsafe { libc::if_indextoname(index, buf.as_mut_ptr()) };
    if ptr.is_null() {
        return None;
    }
    // SAFETY: if_indextoname wrote a NUL-terminated name into buf.
    Some(
        unsafe { CStr::from_ptr(buf.as_ptr()) }
            .to_string_lossy()
            .into_owned(),
    )
}

fn bind_to(fd: &OwnedFd, index: i32) -> io::Result<()> {
    // SAFETY: sockaddr_ll is plain old data; all-zero is a valid value.
    let mut addr: libc::sockaddr_ll = unsafe { std::mem::zeroed() };
    addr.sll_family = libc::AF_PACKET as u16;
    addr.sll_protocol = eth_p_all();
    addr.sll_ifindex = index;
    // SAFETY: valid fd and a sockaddr_ll of the size given.
    let rc = unsafe {
        libc::bind(
            fd.as_raw_fd(),
            (&raw const addr).cast(),
            size_of::<libc::sockaddr_ll>() as libc::socklen_t,
        )
    };
    if rc == 0 {
        Ok(())
    } else {
        Err(io::Error::last_os_error())
    }
}

/// Moves the calling thread into the network namespace `name` (`/run/netns/<name>`, or a path).
pub fn enter_netns(name: &str) -> io::Result<()> {
    let path = if name.contains('/') {
        name.to_owned()
    } else {
        format!("/run/netns/{name}")
    };
    let file = std::fs::File::open(&path)
        .map_err(|e| io::Error::new(e.kind(), format!("network namespace {path}: {e}")))?;
    // SAFETY: setns on an open namespace fd; affects only the calling thread.
    let rc = unsafe { libc::setns(file.as_raw_fd(), libc::CLONE_NEWNET) };
    if rc == 0 {
        Ok(())
    } else {
        let err = io::Error::last_os_error();
        Err(io::Error::new(
            err.kind(),
            format!("entering {path}: {err}"),
        ))
    }
}
