//! Descriptors carried across `execve`: handed on without close-on-exec,
//! and taken back by number in the new program. Taking ownership of a
//! descriptor by its number is the one unsafe step, and it is here.

#![allow(unsafe_code)]

use std::io;
use std::os::fd::{AsFd, BorrowedFd, FromRawFd, OwnedFd, RawFd};

use rustix::io::FdFlags;

/// Lets `fd` survive the next `execve` (or not, with `carry = false`).
pub(super) fn carry_across_exec(fd: BorrowedFd<'_>, carry: bool) -> io::Result<()> {
    let flags = rustix::io::fcntl_getfd(fd)?;
    let flags = if carry { flags - FdFlags::CLOEXEC } else { flags | FdFlags::CLOEXEC };
    rustix::io::fcntl_setfd(fd, flags)?;
    Ok(())
}

/// Takes ownership of descriptor `fd`, which the program before this one
/// left open for it, and marks it close-on-exec again (a child must never
/// get it). Fails if no such descriptor is open.
pub(super) fn adopt(fd: RawFd) -> io::Result<OwnedFd> {
    if fd < 3 {
        return Err(io::Error::new(io::ErrorKind::InvalidInput, format!("descriptor {fd} is a standard stream")));
    }
    // Safety: the borrow lasts for this one call, which fails harmlessly
    // with EBADF if nothing is open at `fd`.
    rustix::io::fcntl_getfd(unsafe { BorrowedFd::borrow_raw(fd) })?;
    // Safety: `fd` is open, and the hand-off names each descriptor once:
    // nothing else in this program owns it.
    let owned = unsafe { OwnedFd::from_raw_fd(fd) };
    carry_across_exec(owned.as_fd(), false)?;
    Ok(owned)
}
