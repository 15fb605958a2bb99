//! [`Upgrader`]: an in-place upgrade of a running [`App`](super::App)
//! (`SPEC §10`, upgrade), built from the steps of [`crate::upgrade`].

use std::ffi::OsString;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};

use tokio::sync::{mpsc, oneshot};

use crate::metrics::{Metrics, Outcome};
use crate::report::Report;
use crate::upgrade::{self, UpgradeError};

/// A request to hand over, and where to say why it did not happen.
pub(super) type Request = (Successor, oneshot::Sender<UpgradeError>);

/// The program to execute, and its arguments.
#[derive(Debug, Clone)]
pub(super) struct Successor {
    pub(super) binary: PathBuf,
    pub(super) args: Vec<OsString>,
}

/// Upgrades an [`App`](super::App) in place while it runs; clones share
/// it. See [`Upgrader::upgrade`].
#[derive(Debug, Clone)]
pub struct Upgrader {
    requests: mpsc::Sender<Request>,
    args: Arc<Mutex<Vec<OsString>>>,
    started_from: Option<PathBuf>,
    reloader: super::Reloader,
    metrics: Metrics,
}

impl Upgrader {
    pub(super) fn new(requests: mpsc::Sender<Request>, reloader: super::Reloader, metrics: Metrics) -> Self {
        // Resolved now: once a package replaced the file, /proc/self/exe
        // names the old, deleted one.
        let started_from = std::fs::read_link("/proc/self/exe").ok();
        let args = std::env::args_os().skip(1).collect::<Vec<_>>();
        Self { requests, args: Arc::new(Mutex::new(without_state(args))), started_from, reloader, metrics }
    }

    /// The successor runs with `args` (the binary passes its own command
    /// line; the default is this process's arguments).
    pub fn set_args(&self, args: Vec<OsString>) {
        *self.args.lock().unwrap_or_else(|p| p.into_inner()) = without_state(args);
    }

    /// Executes `upgrade_binary` (by default the binary this server was
    /// started from) in place of this program, if it passes
    /// [`upgrade::preflight`]; in this version only while no session runs.
    /// Returns only if the upgrade did not happen, and then the server
    /// serves on as before: the error is logged, counted in
    /// `ws_subprocess_upgrades_total{result="error"}`, and systemd hears
    /// `READY=1` again after the `RELOADING=1` this sent.
    pub async fn upgrade(&self) -> UpgradeError {
        crate::notify::reloading();
        let err = self.try_upgrade().await;
        self.metrics.upgraded(Outcome::error, 1);
        tracing::error!(cause = %Report(&err), "upgrade abandoned; serving on as before");
        crate::notify::ready();
        err
    }

    async fn try_upgrade(&self) -> UpgradeError {
        let binary = match (self.reloader.config().upgrade_binary, &self.started_from) {
            (Some(binary), _) => binary,
            (None, Some(binary)) => binary.clone(),
            (None, None) => return UpgradeError::Refused("the binary this server runs cannot be found".into()),
        };
        let args = self.args.lock().unwrap_or_else(|p| p.into_inner()).clone();
        tracing::info!(binary = %binary.display(), "upgrade requested; checking the new binary");
        if let Err(err) = upgrade::preflight(&binary, &args).await {
            return err;
        }
        let (answer, answered) = oneshot::channel();
        if self.requests.send((Successor { binary, args }, answer)).await.is_err() {
            return UpgradeError::Refused("the server is not running".into());
        }
        answered.await.unwrap_or_else(|_| UpgradeError::Refused("the server stopped".into()))
    }
}

/// `args` without a hand-off flag of its own (the successor gets a new one).
fn without_state(args: Vec<OsString>) -> Vec<OsString> {
    let mut kept = Vec::with_capacity(args.len());
    let mut args = args.into_iter();
    while let Some(arg) = args.next() {
        if arg == upgrade::STATE_FLAG {
            args.next();
        } else if !arg.to_string_lossy().starts_with(&format!("{}=", upgrade::STATE_FLAG)) {
            kept.push(arg);
        }
    }
    kept
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_successor_gets_no_old_hand_off_flag() {
        let args = ["--config", "x.toml", "--upgrade-state", "7", "--upgrade-state=8", "-listen", ":1"];
        let kept = without_state(args.iter().map(OsString::from).collect());
        assert_eq!(kept, ["--config", "x.toml", "-listen", ":1"]);
    }
}
