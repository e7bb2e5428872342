//! Who may connect to a unix socket: its group, resolved from a name.

use std::ffi::CString;
use std::io;

/// The id of the group `name` (or of a numeric id naming an existing group), `None` if the
/// host has no such group.
#[allow(unsafe_code)]
pub fn group_id(name: &str) -> io::Result<Option<u32>> {
    let Ok(c_name) = CString::new(name) else {
        return Ok(None);
    };
    let mut buf = vec![0u8; 4096];
    loop {
        // SAFETY: all-zero bytes are a valid `group` (integers and null pointers).
        let mut group: libc::group = unsafe { std::mem::zeroed() };
        let mut found: *mut libc::group = std::ptr::null_mut();
        // SAFETY: `c_name` is NUL-terminated; `group`, `buf` and `found` outlive the call and
        // `buf.len()` is the buffer's size, so getgrnam_r writes only into memory we own.
        let rc = unsafe {
            libc::getgrnam_r(
                c_name.as_ptr(),
                &mut group,
                buf.as_mut_ptr().cast(),
                buf.len(),
                &mut found,
            )
        };
        match rc {
            0 if found.is_null() => break,
            0 => return Ok(Some(group.gr_gid)),
            libc::ERANGE if buf.len() < 1 << 20 => buf.resize(buf.len() * 2, 0),
            rc => return Err(io::Error::from_raw_os_error(rc)),
        }
    }
    // Not a name: a number is taken as a group id if the host has that group.
    let Ok(gid) = name.parse::<u32>() else {
        return Ok(None);
    };
    let mut buf = vec![0u8; 1 << 16];
    // SAFETY: as above.
    let mut group: libc::group = unsafe { std::mem::zeroed() };
    let mut found: *mut libc::group = std::ptr::null_mut();
    // SAFETY: as above, with getgrgid_r.
    let rc = unsafe {
        libc::getgrgid_r(
            gid,
            &mut group,
            buf.as_mut_ptr().cast(),
            buf.len(),
            &mut found,
        )
    };
    match rc {
        0 if found.is_null() => Ok(None),
        0 => Ok(Some(gid)),
        rc => Err(io::Error::from_raw_os_error(rc)),
    }
}

/// The process's effective group id: the group a socket gets by default.
#[allow(unsafe_code)]
pub fn effective_gid() -> u32 {
    // SAFETY: getegid takes no arguments and cannot fail.
    unsafe { libc::getegid() }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn resolves_names_and_ids() -> io::Result<()> {
        assert_eq!(group_id("root")?, Some(0));
        assert_eq!(group_id("0")?, Some(0));
        assert_eq!(group_id("no-such-group-ferry")?, None);
        assert_eq!(group_id("4000000000")?, None);
        assert_eq!(group_id("nul\0byte")?, None);
        Ok(())
    }
}
