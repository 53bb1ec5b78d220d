//! Helpers shared by the unit tests of several modules.

/// Drops capability `cap` (its number, e.g. 12 for CAP_NET_ADMIN) from the calling thread's
/// effective set. Capabilities are per thread: the process's other threads keep theirs.
pub(crate) fn drop_capability(cap: u32) -> std::io::Result<()> {
    #[repr(C)]
    struct Header {
        version: u32,
        pid: i32,
    }
    #[repr(C)]
    #[derive(Clone, Copy, Default)]
    struct Data {
        effective: u32,
        permitted: u32,
        inheritable: u32,
    }
    const VERSION_3: u32 = 0x2008_0522;
    let mut header = Header {
        version: VERSION_3,
        pid: 0,
    };
    let mut data = [Data::default(); 2];
    let (word, bit) = ((cap / 32) as usize, cap % 32);
    // SAFETY: capget/capset with a v3 header and the two data structs v3 expects.
    unsafe {
        if libc::syscall(libc::SYS_capget, &raw mut header, data.as_mut_ptr()) != 0 {
            return Err(std::io::Error::last_os_error());
        }
        data[word].effective &= !(1 << bit);
        if libc::syscall(libc::SYS_capset, &raw mut header, data.as_ptr()) != 0 {
            return Err(std::io::Error::last_os_error());
        }
    }
    Ok(())
}
