//! The one statfs(2) call of the workspace: which file system a path is on (cgroup2, cgroup v1,
//! bpffs, tracefs are told apart by their magic numbers).

use std::ffi::CString;
use std::io;
use std::path::Path;

/// The `f_type` statfs(2) reports for `path`.
pub fn filesystem_magic(path: &Path) -> io::Result<i64> {
    let c = CString::new(path.as_os_str().as_encoded_bytes())
        .map_err(|e| io::Error::new(io::ErrorKind::InvalidInput, e))?;
    // SAFETY: statfs with a valid NUL-terminated path and a zeroed out-struct.
    let mut st: libc::statfs = unsafe { std::mem::zeroed() };
    let rc = unsafe { libc::statfs(c.as_ptr(), &mut st) };
    if rc != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(st.f_type as i64)
}
