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

/// The terminal whose master side is `fd` (one the program before this one
/// carried): checked to be a pseudo-terminal master before it is taken as
/// one.
pub(crate) fn pty_master(fd: OwnedFd) -> io::Result<pty_process::Pty> {
    // Only a pseudo-terminal master has a slave name.
    rustix::pty::ptsname(&fd, Vec::new())?;
    // Safety: `fd` is owned here and is a pseudo-terminal master, which is
    // all `Pty::from_fd` asks.
    unsafe { pty_process::Pty::from_fd(fd) }.map_err(|err| match err {
        pty_process::Error::Io(err) => err,
        other => io::Error::other(other.to_string()),
    })
}
