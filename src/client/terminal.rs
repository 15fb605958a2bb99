//! The local terminal: raw mode while a session runs, put back on every way
//! out (return, panic, a signal), and its size.

use std::io;
use std::os::fd::AsFd;
use std::sync::Mutex;

use rustix::termios::{OptionalActions, Termios, tcgetattr, tcgetwinsize, tcsetattr};

/// The settings raw mode replaced, for whoever restores them first: the
/// guard's drop, the panic hook, a signal's handler.
static SAVED: Mutex<Option<Termios>> = Mutex::new(None);

/// Whether standard input is a terminal.
pub fn stdin_is_terminal() -> bool {
    rustix::termios::isatty(io::stdin().as_fd())
}

/// The size of the terminal on standard input: (columns, rows).
pub fn size() -> Option<(u16, u16)> {
    let size = tcgetwinsize(io::stdin().as_fd()).ok()?;
    (size.ws_col > 0 && size.ws_row > 0).then_some((size.ws_col, size.ws_row))
}

/// Raw mode on the terminal of standard input, for as long as it lives:
/// keys go to the session as typed (`Ctrl-C` too), nothing is echoed or
/// edited locally, output is shown as sent.
#[derive(Debug)]
pub struct RawMode(());

impl RawMode {
    /// Switches the terminal to raw mode, after installing a panic hook
    /// that puts it back before the panic is reported.
    pub fn enter() -> io::Result<Self> {
        let stdin = io::stdin();
        let saved = tcgetattr(stdin.as_fd())?;
        *SAVED.lock().unwrap_or_else(|e| e.into_inner()) = Some(saved.clone());
        let previous = std::panic::take_hook();
        std::panic::set_hook(Box::new(move |info| {
            restore();
            previous(info);
        }));
        let guard = Self(());
        guard.resume()?;
        Ok(guard)
    }

    /// Raw mode again, after [`restore`] (when the program continues after
    /// a stop).
    pub fn resume(&self) -> io::Result<()> {
        let Some(mut raw) = SAVED.lock().unwrap_or_else(|e| e.into_inner()).clone() else { return Ok(()) };
        raw.make_raw();
        tcsetattr(io::stdin().as_fd(), OptionalActions::Now, &raw)?;
        Ok(())
    }
}

impl Drop for RawMode {
    fn drop(&mut self) {
        restore();
        *SAVED.lock().unwrap_or_else(|e| e.into_inner()) = None;
    }
}

/// Puts back the terminal settings raw mode replaced; does nothing when the
/// terminal is not in raw mode. Output still queued for the terminal is
/// written first.
pub fn restore() {
    if let Some(saved) = SAVED.lock().unwrap_or_else(|e| e.into_inner()).as_ref() {
        let _ = tcsetattr(io::stdin().as_fd(), OptionalActions::Drain, saved);
    }
}
