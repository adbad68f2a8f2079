//! Loaded into `kvd` with `LD_PRELOAD` by the disk-fault tests: while the
//! file named by `KV_FAIL_FSYNC_FILE` exists, `fsync` and `fdatasync` return
//! `EIO` without syncing, the way a dying disk answers; while the file named
//! by `KV_STALL_FSYNC_FILE` exists, they wait, the way a stuck disk does;
//! otherwise they make the real system call. It takes the place of
//! device-mapper error and delay targets, which this machine's kernel does
//! not have.

#![allow(unsafe_code)]

use std::ffi::c_int;

fn exists(var: &str) -> bool {
    std::env::var_os(var).is_some_and(|p| std::path::Path::new(&p).exists())
}

fn failing() -> bool {
    exists("KV_FAIL_FSYNC_FILE")
}

fn sync(nr: libc::c_long, fd: c_int) -> c_int {
    while exists("KV_STALL_FSYNC_FILE") {
        std::thread::sleep(std::time::Duration::from_millis(1));
    }
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
