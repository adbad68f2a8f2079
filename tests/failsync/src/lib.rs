//! Loaded into `kvd` with `LD_PRELOAD` by the disk-fault tests: while the
//! file named by `KV_FAIL_FSYNC_FILE` exists, `fsync` and `fdatasync` return
//! `EIO` without syncing, the way a dying disk answers; otherwise they make
//! the real system call. It takes the place of a device-mapper error target,
//! which this machine's kernel does not have.

#![allow(unsafe_code)]

use std::ffi::c_int;

fn failing() -> bool {
    std::env::var_os("KV_FAIL_FSYNC_FILE").is_some_and(|p| std::path::Path::new(&p).exists())
}

fn sync(nr: libc::c_long, fd: c_int) -> c_int {
    if failing() {
        // SAFETY: errno is thread-local and always valid to write.
        unsafe { *libc::__errno_location() = libc::EIO };
        return -1;
    }
    // SAFETY: the system call takes one file descriptor and returns 0 or -1
    // with errno set, exactly like the libc wrapper it replaces.
    unsafe { libc::syscall(nr, fd) as c_int }
}

/// `fsync(2)`, failing on demand.
#[no_mangle]
pub extern "C" fn fsync(fd: c_int) -> c_int {
    sync(libc::SYS_fsync, fd)
}

/// `fdatasync(2)`, failing on demand.
#[no_mangle]
pub extern "C" fn fdatasync(fd: c_int) -> c_int {
    sync(libc::SYS_fdatasync, fd)
}
