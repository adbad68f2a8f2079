//! Loaded into `kvd` with `LD_PRELOAD` by the disk-fault tests. It has three
//! modes, each on while its environment variable names something:
//! - `KV_FAIL_FSYNC_FILE`: while that file exists, `fsync` and `fdatasync`
//!   return `EIO` without syncing, the way a dying disk answers;
//! - `KV_STALL_FSYNC_FILE`: while that file exists, they wait, the way a
//!   stuck disk does;
//! - `KV_POWERCUT_LOG`: every write to a regular file, and every fsync of
//!   one, is recorded in that log, so that the test harness can take back,
//!   after a `kill -9`, whatever was written to a file after its last
//!   completed fsync: what a power cut does to data that sat in the page
//!   cache (the model of Jepsen's LazyFS; metadata such as renames and
//!   sizes is kept). The harness's side is `kv_tests::powercut`.
//!
//! Otherwise they make the real system calls. It takes the place of
//! device-mapper error and delay targets, which this machine's kernel does
//! not have.
//!
//! The log is text, one record a line, each line written by one `write(2)`
//! to a descriptor opened with `O_APPEND`, so lines never mix and their order
//! is the order in which the calls happened:
//! - `W seq dev ino offset len`: a write of up to `len` bytes at `offset` is
//!   about to be made (written before the call, so a write cut short by the
//!   kill is counted as not durable);
//! - `D seq`: that write returned;
//! - `B seq dev ino`: an fsync of the file is about to begin;
//! - `S seq`: that fsync succeeded. It made durable every write whose `D`
//!   line comes before its `B` line.

#![allow(unsafe_code)]

use std::ffi::{c_int, c_void};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::OnceLock;

/// Whether the trigger file in `slot` (named by environment variable `var`,
/// read once) exists.
fn exists(slot: &'static OnceLock<Option<std::path::PathBuf>>, var: &str) -> bool {
    slot.get_or_init(|| std::env::var_os(var).map(Into::into)).as_ref().is_some_and(|p| p.exists())
}

fn failing() -> bool {
    static FAIL: OnceLock<Option<std::path::PathBuf>> = OnceLock::new();
    exists(&FAIL, "KV_FAIL_FSYNC_FILE")
}

fn stalled() -> bool {
    static STALL: OnceLock<Option<std::path::PathBuf>> = OnceLock::new();
    exists(&STALL, "KV_STALL_FSYNC_FILE")
}

/// The power-cut log's descriptor, when `KV_POWERCUT_LOG` is set.
fn log_fd() -> Option<c_int> {
    static FD: OnceLock<Option<c_int>> = OnceLock::new();
    *FD.get_or_init(|| {
        let path = std::env::var_os("KV_POWERCUT_LOG")?;
        let path = std::ffi::CString::new(std::os::unix::ffi::OsStrExt::as_bytes(path.as_os_str())).ok()?;
        let flags = libc::O_WRONLY | libc::O_APPEND | libc::O_CREAT | libc::O_CLOEXEC;
        // SAFETY: the path is a valid NUL-terminated string for the call's
        // duration; openat returns a descriptor or -1.
        let fd = unsafe { libc::syscall(libc::SYS_openat, libc::AT_FDCWD, path.as_ptr(), flags, 0o644 as c_int) };
        (fd >= 0).then_some(fd as c_int)
    })
}

/// Numbers the records that come in pairs (W/D, B/S).
static SEQ: AtomicU64 = AtomicU64::new(0);

fn record(fd: c_int, line: &str) {
    // SAFETY: the buffer is valid for its length; a short or failed write of
    // the log only makes the model less strict, it cannot corrupt memory.
    unsafe { libc::syscall(libc::SYS_write, fd, line.as_ptr(), line.len()) };
}

/// `(dev, ino, size)` of `fd` when it is a regular file.
fn regular(fd: c_int) -> Option<(u64, u64, u64)> {
    // SAFETY: stat is plain data, filled by the kernel on success.
    let mut st: libc::stat = unsafe { std::mem::zeroed() };
    // SAFETY: `st` is a valid, writable stat buffer.
    let r = unsafe { libc::syscall(libc::SYS_fstat, fd, &mut st as *mut libc::stat) };
    (r == 0 && st.st_mode & libc::S_IFMT == libc::S_IFREG).then_some((st.st_dev, st.st_ino, st.st_size as u64))
}

/// Records a write of `len` bytes to `fd` at `at` (the current position when
/// `None`) and returns its sequence number, when the log is on and `fd` is a
/// regular file.
fn write_begins(fd: c_int, at: Option<i64>, len: usize) -> Option<(c_int, u64)> {
    let log = log_fd()?;
    let (dev, ino, size) = regular(fd)?;
    let offset = match at {
        Some(o) => o as u64,
        None => {
            // SAFETY: fcntl(F_GETFL) and lseek(SEEK_CUR) only read the
            // descriptor's state.
            let flags = unsafe { libc::syscall(libc::SYS_fcntl, fd, libc::F_GETFL) };
            if flags >= 0 && (flags as c_int) & libc::O_APPEND != 0 {
                size
            } else {
                // SAFETY: as above.
                let pos = unsafe { libc::syscall(libc::SYS_lseek, fd, 0 as libc::off_t, libc::SEEK_CUR) };
                pos.max(0) as u64
            }
        }
    };
    let seq = SEQ.fetch_add(1, Ordering::Relaxed);
    record(log, &format!("W {seq} {dev} {ino} {offset} {len}\n"));
    Some((log, seq))
}

fn write_ends(started: Option<(c_int, u64)>) {
    if let Some((log, seq)) = started {
        record(log, &format!("D {seq}\n"));
    }
}

fn iov_len(iov: *const libc::iovec, n: c_int) -> usize {
    if iov.is_null() || n <= 0 {
        return 0;
    }
    // SAFETY: the caller passes `n` valid iovecs, as the system call needs.
    unsafe { std::slice::from_raw_parts(iov, n as usize) }.iter().map(|v| v.iov_len).sum()
}

fn sync(nr: libc::c_long, fd: c_int) -> c_int {
    while stalled() {
        std::thread::sleep(std::time::Duration::from_millis(1));
    }
    if failing() {
        // SAFETY: errno is thread-local and always valid to write.
        unsafe { *libc::__errno_location() = libc::EIO };
        return -1;
    }
    let started = log_fd().and_then(|log| {
        let (dev, ino, _) = regular(fd)?;
        let seq = SEQ.fetch_add(1, Ordering::Relaxed);
        record(log, &format!("B {seq} {dev} {ino}\n"));
        Some((log, seq))
    });
    // SAFETY: the system call takes one file descriptor and returns 0 or -1
    // with errno set, exactly like the libc wrapper it replaces.
    let r = unsafe { libc::syscall(nr, fd) as c_int };
    if let (0, Some((log, seq))) = (r, started) {
        record(log, &format!("S {seq}\n"));
    }
    r
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

/// `write(2)`, recorded.
///
/// # Safety
/// The caller's arguments must be valid for the system call, as for libc's.
#[no_mangle]
pub unsafe extern "C" fn write(fd: c_int, buf: *const c_void, count: libc::size_t) -> libc::ssize_t {
    let started = write_begins(fd, None, count);
    // SAFETY: the arguments are passed on unchanged to the system call the
    // libc wrapper makes.
    let r = unsafe { libc::syscall(libc::SYS_write, fd, buf, count) as libc::ssize_t };
    write_ends(started);
    r
}

/// `writev(2)`, recorded.
///
/// # Safety
/// The caller's arguments must be valid for the system call, as for libc's.
#[no_mangle]
pub unsafe extern "C" fn writev(fd: c_int, iov: *const libc::iovec, n: c_int) -> libc::ssize_t {
    let started = write_begins(fd, None, iov_len(iov, n));
    // SAFETY: as in `write`.
    let r = unsafe { libc::syscall(libc::SYS_writev, fd, iov, n) as libc::ssize_t };
    write_ends(started);
    r
}

/// `pwrite64(2)`, recorded.
///
/// # Safety
/// The caller's arguments must be valid for the system call, as for libc's.
#[no_mangle]
pub unsafe extern "C" fn pwrite64(fd: c_int, buf: *const c_void, count: libc::size_t, offset: i64) -> libc::ssize_t {
    let started = write_begins(fd, Some(offset), count);
    // SAFETY: as in `write`.
    let r = unsafe { libc::syscall(libc::SYS_pwrite64, fd, buf, count, offset) as libc::ssize_t };
    write_ends(started);
    r
}

/// `pwrite(2)`, recorded (the same call as `pwrite64` on 64-bit Linux).
///
/// # Safety
/// The caller's arguments must be valid for the system call, as for libc's.
#[no_mangle]
pub unsafe extern "C" fn pwrite(fd: c_int, buf: *const c_void, count: libc::size_t, offset: i64) -> libc::ssize_t {
    // SAFETY: the same arguments, the same call.
    unsafe { pwrite64(fd, buf, count, offset) }
}

/// `pwritev64(2)`, recorded.
///
/// # Safety
/// The caller's arguments must be valid for the system call, as for libc's.
#[no_mangle]
pub unsafe extern "C" fn pwritev64(fd: c_int, iov: *const libc::iovec, n: c_int, offset: i64) -> libc::ssize_t {
    let started = write_begins(fd, Some(offset), iov_len(iov, n));
    // NOTE: the raw system call takes the offset as two halves (low, high).
    // SAFETY: as in `write`.
    let r =
        unsafe { libc::syscall(libc::SYS_pwritev, fd, iov, n, offset, (offset as u64 >> 32) as i64) } as libc::ssize_t;
    write_ends(started);
    r
}

/// `pwritev(2)`, recorded.
///
/// # Safety
/// The caller's arguments must be valid for the system call, as for libc's.
#[no_mangle]
pub unsafe extern "C" fn pwritev(fd: c_int, iov: *const libc::iovec, n: c_int, offset: i64) -> libc::ssize_t {
    // SAFETY: the same arguments, the same call.
    unsafe { pwritev64(fd, iov, n, offset) }
}
