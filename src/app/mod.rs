//! The composition root: everything the binary serves, built from a
//! [`Config`]. The binary and the tests both start the server through
//! [`App`], so the wiring they run is the same.
//!
//! ```no_run
//! # async fn example() -> Result<(), ws_subprocess::app::StartError> {
//! use ws_subprocess::{App, Config};
//!
//! let app = App::bind(Config::default()).await?;
//! println!("serving on {}", app.local_addr());
//! app.run(async { let _ = tokio::signal::ctrl_c().await; }).await;
//! # Ok(()) }
//! ```

use std::future::Future;
use std::io;
use std::time::Duration;

use crate::config::{Config, ConfigError};
use crate::contain::{CgroupLimits, CgroupRoot, Containment};
use crate::live::{Live, LiveService};
use crate::metrics::Metrics;
use crate::server::{self, ListenAddr, Listener, ServeSettings, TlsError};
use crate::session::{SessionSettings, Sessions};

mod reload;
mod stack;
mod upgrade;

pub use reload::{LogFilter, ReloadError, Reloader, Source};
pub use stack::{Backend, Stack, stack};
pub use upgrade::Upgrader;

/// How many sessions and connections the open-file limit holds, so that
/// sessions always have descriptors left.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Capacity {
    /// Sessions at once: `max_sessions`, or fewer if the limit cannot hold
    /// that many.
    pub sessions: usize,
    /// Open connections: `max_connections`, or what the limit holds beside
    /// the sessions.
    pub connections: usize,
}

impl Capacity {
    /// Descriptors kept for everything but connections, sessions and
    /// backend calls: listeners, standard streams, the runtime, logs,
    /// DNS lookups, Redis, key set fetches.
    pub const RESERVED_FDS: usize = 32;

    /// What `open_files` descriptors hold for `config` on a runtime of
    /// `threads` threads. Each session needs its connection and
    /// [`SessionSettings::FDS_PER_SESSION`] more, each thread room for a
    /// start ([`SessionSettings::FDS_PER_START`]); each request waiting for
    /// a controller may hold one connection to it.
    pub fn of(config: &Config, open_files: u64, threads: usize) -> Result<Self, ConfigError> {
        let reserved = Self::RESERVED_FDS + threads * SessionSettings::FDS_PER_START;
        let budget = usize::try_from(open_files).unwrap_or(usize::MAX).saturating_sub(reserved);
        let backend_calls = config.max_pending_auth.min(budget / 8);
        let for_sessions = budget - backend_calls;
        let sessions = config.max_sessions.min(for_sessions / (SessionSettings::FDS_PER_SESSION + 1));
        if sessions == 0 {
            return Err(ConfigError(vec![format!(
                "the open-file limit ({open_files}) leaves no descriptors for a session; raise it (ulimit -n)"
            )]));
        }
        let derived = for_sessions - sessions * SessionSettings::FDS_PER_SESSION;
        Ok(Self { sessions, connections: config.max_connections.unwrap_or(derived) })
    }

    /// Logs how the limit was shared, and what it could not hold.
    fn log(&self, config: &Config, open_files: u64, threads: usize) {
        if self.sessions < config.max_sessions {
            tracing::warn!(
                open_files,
                max_sessions = config.max_sessions,
                sessions = self.sessions,
                "the open-file limit cannot hold max_sessions; fewer sessions are allowed (raise the limit)"
            );
        }
        let derived =
            Self::of(&Config { max_connections: None, ..config.clone() }, open_files, threads).map(|c| c.connections);
        if let Ok(derived) = derived
            && self.connections > derived
        {
            tracing::warn!(
                max_connections = self.connections,
                safe = derived,
                "max_connections is more than the open-file limit holds beside the sessions"
            );
        }
        tracing::info!(open_files, sessions = self.sessions, connections = self.connections, "capacity");
    }
}

/// Why the server could not start.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    /// A setting is invalid.
    #[error("configuration error")]
    Config(#[from] ConfigError),
    /// The backends' HTTP client could not be set up.
    #[error("cannot build the HTTP client")]
    HttpClient(#[source] reqwest::Error),
    /// The JWT keys could not be loaded.
    #[cfg(feature = "jwt")]
    #[error("configuration error")]
    JwtKeys(#[from] crate::auth::jwt::KeyError),
    /// The replay store URL is unusable.
    #[cfg(feature = "jwt")]
    #[error("configuration error: jwt_replay_store")]
    ReplayStore(#[from] crate::auth::jwt::ReplayError),
    /// `auth = "jwt"` in a build without the `jwt` feature.
    #[error("configuration error: auth: this build has no JWT support (feature `jwt`)")]
    JwtNotBuilt,
    /// TLS could not be set up.
    #[error("configuration error")]
    Tls(#[from] TlsError),
    /// An address could not be bound.
    #[error("cannot listen on {addr}")]
    Listen {
        /// The address.
        addr: ListenAddr,
        /// Why.
        #[source]
        source: io::Error,
    },
}

impl StartError {
    /// Whether the configuration is at fault (the binary exits with 2), as
    /// opposed to the machine (exit 1).
    pub fn is_configuration(&self) -> bool {
        !matches!(self, Self::Listen { .. })
    }
}

/// The whole server, bound and ready to run: the endpoint's listener (TLS
/// when configured) with the stack, and the metrics listener when
/// `metrics_listen` is set.
///
/// Its stack, connection settings and TLS certificate are live: a
/// [`Reloader`] replaces them for the next handshake and request.
#[derive(Debug)]
pub struct App {
    listener: Listener,
    local_addr: ListenAddr,
    metrics_listener: Option<(Listener, ListenAddr)>,
    stack: Live<Stack>,
    sessions: Sessions,
    metrics: Metrics,
    capacity: Capacity,
    serve: Live<ServeSettings>,
    cgroups: Option<CgroupRoot>,
    reloader: Reloader,
    upgrader: Upgrader,
    upgrades: tokio::sync::mpsc::Receiver<upgrade::Request>,
}

impl App {
    /// Checks `config`, raises the open-file limit and shares it between
    /// sessions and connections ([`Capacity`]), builds the stack (reading
    /// key files), sets up TLS and binds the listeners.
    pub async fn bind(config: Config) -> Result<Self, StartError> {
        Self::bind_carried(config, None).await
    }

    /// [`App::bind`] for a program that took over from another in an
    /// in-place upgrade: the listeners it carried are taken over (those
    /// whose address the configuration still names; the others are closed
    /// and bound anew), and so are the used token ids and the sessions'
    /// cgroup root.
    pub async fn bind_carried(config: Config, handoff: Option<crate::upgrade::Handoff>) -> Result<Self, StartError> {
        let mut handoff = handoff;
        config.validate()?;
        let open_files = server::raise_open_file_limit().unwrap_or_else(|err| {
            tracing::warn!(cause = %err, "cannot raise the open-file limit");
            rustix::process::getrlimit(rustix::process::Resource::Nofile).current
        });
        let open_files = open_files.unwrap_or(u64::MAX);
        let threads = tokio::runtime::Handle::try_current().map_or(1, |r| r.metrics().num_workers());
        let capacity = Capacity::of(&config, open_files, threads)?;
        capacity.log(&config, open_files, threads);
        let carried_cgroup = handoff.as_mut().and_then(|handoff| {
            let what = handoff.descriptors.get("cgroup")?.what.clone();
            Some((std::path::PathBuf::from(&what), handoff.take("cgroup", &what)?))
        });
        let containment = containment(&config, carried_cgroup)?;
        let cgroups = containment.cgroup_root().cloned();
        let metrics = Metrics::new();
        let sessions = Sessions::new();
        let mut lasting = stack::Lasting::new(sessions.clone(), metrics.clone(), &containment);
        if let Some(handoff) = &mut handoff {
            lasting.remember_used_tokens(&config, std::mem::take(&mut handoff.used_token_ids));
            metrics.upgraded(crate::metrics::Outcome::ok, handoff.upgrades);
        }
        let built = stack::build(&config, capacity.sessions, &lasting, Some(containment))?;
        let serve = config
            .serve_settings(capacity.connections, metrics.clone())
            .map_err(|e| ConfigError(vec![e.to_string()]))?;
        let tls = config.tls_acceptor()?.map(Live::new);
        let (listener, local_addr) = bind(&config.listen, handoff.as_mut(), "listen").await?;
        // A peer that vanished is noticed even while the server only sends.
        let mut listener = listener.with_tcp_user_timeout(config.pong_timeout);
        if let Some(acceptor) = &tls {
            listener = listener.with_live_tls(acceptor.clone());
        }
        tracing::info!(
            addr = %local_addr,
            path = %config.path,
            backend = ?config.auth,
            tls = config.tls_cert_file.is_some(),
            "listening"
        );
        let metrics_listener = match &config.metrics_listen {
            Some(addr) => {
                let (listener, addr) = bind(addr, handoff.as_mut(), "metrics_listen").await?;
                tracing::info!(addr = %addr, "serving metrics");
                Some((listener, addr))
            }
            None => None,
        };
        // The sessions the program before this one carried run on.
        if let Some(handoff) = &mut handoff {
            resume(handoff, &built.service, &built.lasting, &listener).await;
        }
        // What is left of a hand-off (a listener no longer configured) is
        // closed here.
        drop(handoff);
        let (stack, serve) = (Live::new(built.stack), Live::new(serve));
        let reloader = Reloader::new(reload::Parts {
            config,
            lasting: built.lasting,
            service: built.service,
            stack: stack.clone(),
            serve: serve.clone(),
            tls,
            open_files,
            threads,
        });
        let (requests, upgrades) = tokio::sync::mpsc::channel(1);
        let upgrader = Upgrader::new(requests, reloader.clone(), metrics.clone());
        Ok(Self {
            listener,
            local_addr,
            metrics_listener,
            stack,
            sessions,
            metrics,
            capacity,
            serve,
            cgroups,
            reloader,
            upgrader,
            upgrades,
        })
    }

    /// What upgrades this app in place (the binary calls it on `SIGUSR2`);
    /// usable while [`App::run`] serves.
    pub fn upgrader(&self) -> Upgrader {
        self.upgrader.clone()
    }

    /// Reloads read the configuration from `source` (the binary reads its
    /// file, environment and flags again); without one, a reload keeps the
    /// configuration and reads its key and certificate files again.
    pub fn reload_from(self, source: impl Fn() -> Result<Config, ConfigError> + Send + Sync + 'static) -> Self {
        self.reloader.set_source(Box::new(source));
        self
    }

    /// A reload that changes `log_level` calls `filter` with the new one.
    pub fn log_filter(self, filter: impl Fn(Option<&str>) + Send + Sync + 'static) -> Self {
        self.reloader.set_log_filter(Box::new(filter));
        self
    }

    /// What reloads this app's configuration (the binary calls it on
    /// `SIGHUP`); usable while [`App::run`] serves.
    pub fn reloader(&self) -> Reloader {
        self.reloader.clone()
    }

    /// The address the endpoint is served on (with the real port when 0
    /// was asked).
    pub fn local_addr(&self) -> &ListenAddr {
        &self.local_addr
    }

    /// The address metrics are served on, when they are.
    pub fn metrics_addr(&self) -> Option<&ListenAddr> {
        self.metrics_listener.as_ref().map(|(_, addr)| addr)
    }

    /// The server's metrics.
    pub fn metrics(&self) -> &Metrics {
        &self.metrics
    }

    /// How many sessions and connections it holds.
    pub fn capacity(&self) -> Capacity {
        self.capacity
    }

    /// Where sessions' cgroups are made; `None` when sessions are contained
    /// by their process group only.
    pub fn cgroups(&self) -> Option<&CgroupRoot> {
        self.cgroups.as_ref()
    }

    /// The live sessions.
    pub fn sessions(&self) -> &Sessions {
        &self.sessions
    }

    /// Serves until `shutdown` completes, then shuts down gracefully (see
    /// [`server::serve`]). Tells systemd `READY=1` as it starts and
    /// `STOPPING=1` as it stops (see [`notify`](crate::notify)). An
    /// [`Upgrader`] may meanwhile replace the program: then this never
    /// returns.
    pub async fn run(self, shutdown: impl Future<Output = ()>) {
        let Self {
            mut listener,
            mut metrics_listener,
            stack,
            sessions,
            metrics,
            serve,
            reloader,
            mut upgrades,
            cgroups,
            ..
        } = self;
        // The metrics listener has its own connections, with the
        // endpoint's timeouts and a small cap, so a scraper gone wrong
        // cannot take the endpoint's.
        let metrics_settings = Live::new(
            ServeSettings::builder()
                .request_header_timeout(serve.get().request_header_timeout())
                .max_connections(METRICS_CONNECTIONS)
                .shutdown_timeout(Duration::from_secs(1))
                .build()
                .expect("valid metrics listener settings"),
        );
        crate::notify::ready();
        tokio::pin!(shutdown);
        loop {
            let (metrics_stop, metrics_stopped) = tokio::sync::oneshot::channel::<server::Stop>();
            let metrics_served = metrics_listener.take().map(|(listener, addr)| {
                let stop = async { metrics_stopped.await.unwrap_or(server::Stop::Shutdown) };
                let serving =
                    server::serve_until(listener, metrics.service(), metrics_settings.clone(), Sessions::new(), stop);
                (tokio::spawn(serving), addr)
            });
            let mut successor = None;
            let stop = async {
                tokio::select! {
                    _ = &mut shutdown => server::Stop::Shutdown,
                    Some(request) = upgrades.recv() => {
                        successor = Some(request);
                        server::Stop::Handover
                    }
                }
            };
            let stop = async {
                let why = stop.await;
                if why == server::Stop::Shutdown {
                    crate::notify::stopping();
                }
                why
            };
            let served =
                server::serve_until(listener, LiveService::new(stack.clone()), serve.clone(), sessions.clone(), stop)
                    .await;
            let handover = matches!(served, server::Served::HandedOver(_));
            let _ = metrics_stop.send(if handover { server::Stop::Handover } else { server::Stop::Shutdown });
            let metrics_back = match metrics_served {
                Some((task, addr)) => match task.await {
                    Ok(server::Served::HandedOver(listener)) => Some((listener, addr)),
                    _ => None,
                },
                None => None,
            };
            let (server::Served::HandedOver(endpoint), Some((next, answer))) = (served, successor) else { return };
            let err = hand_over(
                &endpoint,
                metrics_back.as_ref().map(|(l, _)| l),
                cgroups.as_ref(),
                &sessions,
                &reloader,
                &metrics,
                &next,
            )
            .await;
            let _ = answer.send(err);
            (listener, metrics_listener) = (endpoint, metrics_back);
        }
    }
}

/// How long sessions get to stop where they can be carried on.
const FREEZE_LIMIT: Duration = Duration::from_secs(5);

/// Executes the successor with the listeners, the sessions (their
/// processes, connections and state) and the token memory. Returns only on
/// failure, and then every session runs on here.
async fn hand_over(
    endpoint: &Listener,
    metrics_listener: Option<&Listener>,
    cgroups: Option<&CgroupRoot>,
    sessions: &Sessions,
    reloader: &Reloader,
    metrics: &Metrics,
    successor: &upgrade::Successor,
) -> crate::upgrade::UpgradeError {
    use crate::upgrade::{Handoff, UpgradeError};
    let config = reloader.config();
    let mut handoff = Handoff::new();
    let carried = (|| {
        handoff.carry("listen", endpoint.as_fd(), &config.listen.to_string())?;
        if let (Some(listener), Some(addr)) = (metrics_listener, &config.metrics_listen) {
            handoff.carry("metrics_listen", listener.as_fd(), &addr.to_string())?;
        }
        if let Some((dir, lock)) = cgroups.and_then(CgroupRoot::carried) {
            handoff.carry("cgroup", lock, &dir.display().to_string())?;
        }
        Ok::<_, io::Error>(())
    })();
    if let Err(err) = carried {
        return UpgradeError::Handoff(err.to_string());
    }
    handoff.used_token_ids = reloader.used_tokens();
    handoff.upgrades = metrics.upgrades_ok() + 1;
    // Every session stops where it can go on.
    let started = std::time::Instant::now();
    let handed = sessions.hand_over(&mut handoff, FREEZE_LIMIT).await;
    let err = match handed {
        Err(_) => UpgradeError::Refused(format!("sessions did not stop within {}s", FREEZE_LIMIT.as_secs())),
        Ok(carried) => {
            tracing::info!(
                binary = %successor.binary.display(),
                sessions = carried,
                descriptors = handoff.descriptor_count(),
                freeze_ms = started.elapsed().as_millis() as u64,
                "executing the new binary"
            );
            crate::upgrade::exec(&successor.binary, &successor.args, &handoff)
        }
    };
    // Still here: the sessions run on in this program.
    let (service, lasting) = reloader.service();
    resume(&mut handoff, &service, &lasting, endpoint).await;
    err
}

/// Runs on the sessions `handoff` carries, with `service` and its places
/// among the sessions, their connections as `listener`'s.
async fn resume(
    handoff: &mut crate::upgrade::Handoff,
    service: &crate::session::ServeSubprocess,
    lasting: &stack::Lasting,
    listener: &Listener,
) {
    let connection = |socket| listener.carried(socket);
    match service.resume(handoff, &connection, Some(lasting.session_limit())).await {
        Ok(0) => {}
        Ok(resumed) => tracing::info!(sessions = resumed, "carried sessions run on"),
        Err(err) => tracing::error!(cause = %err, "cannot read the carried sessions; they are lost"),
    }
}

/// How `config` contains sessions: cgroups where they can be used (the
/// fallback and its reason logged once), users resolved now.
fn containment(
    config: &Config,
    carried_cgroup: Option<(std::path::PathBuf, std::os::fd::OwnedFd)>,
) -> Result<Containment, StartError> {
    let (run_as, users) = config.identities()?;
    let mut containment = Containment::new().users(users);
    match &run_as {
        Some(identity) => {
            tracing::info!(user = %identity, "sessions run as");
            containment = containment.run_as(identity.clone());
        }
        None if rustix::process::geteuid().is_root() => {
            tracing::warn!("running as root without run_as_user: sessions run as root")
        }
        None => {}
    }
    match CgroupRoot::setup_carried(&config.cgroup, carried_cgroup) {
        Ok(Some(root)) => {
            tracing::info!(dir = %root.dir().display(), controllers = ?root.controllers(), "one cgroup per session");
            let limits = config.cgroup_limits();
            if limits != CgroupLimits::default() {
                for (controller, set) in [
                    ("memory", limits.memory.is_some()),
                    ("pids", limits.pids.is_some()),
                    ("cpu", limits.cpu_percent.is_some()),
                ] {
                    if set && !root.controllers().contains(&controller) {
                        tracing::warn!(controller, "a session limit is set, but this controller is not delegated");
                    }
                }
            }
            containment = containment.cgroups(root, limits);
        }
        Ok(None) => tracing::info!("cgroup = \"off\": sessions are contained by their process group"),
        Err(why) => tracing::warn!(
            cause = %why,
            "no per-session cgroups; sessions are contained by their process group (daemons that call setsid can escape)"
        ),
    }
    Ok(containment)
}

/// Open connections on the metrics listener.
const METRICS_CONNECTIONS: usize = 16;

/// A listener on `addr`: the one `handoff` carries as `name` when it was
/// bound for the same address, else a new one.
async fn bind(
    addr: &ListenAddr,
    handoff: Option<&mut crate::upgrade::Handoff>,
    name: &str,
) -> Result<(Listener, ListenAddr), StartError> {
    let failed = |source| StartError::Listen { addr: addr.clone(), source };
    let listener = match handoff.and_then(|handoff| handoff.take(name, &addr.to_string())) {
        Some(fd) => Listener::adopt(addr, fd).map_err(failed)?,
        None => Listener::bind(addr).await.map_err(failed)?,
    };
    let local = listener.local_addr().map_err(failed)?;
    Ok((listener, local))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_open_file_limit_caps_sessions_and_leaves_connections_the_rest() {
        let config = Config::default();
        // 20,000 on two threads: 19,948 to share, 512 for backend calls;
        // each session needs four descriptors.
        let capacity = Capacity::of(&config, 20_000, 2).unwrap();
        assert_eq!(capacity.sessions, 1024);
        assert_eq!(capacity.connections, 19_436 - 1024 * SessionSettings::FDS_PER_SESSION);
        // 256: the sessions no longer fit.
        let small = Capacity::of(&config, 256, 2).unwrap();
        assert_eq!(small, Capacity { sessions: 44, connections: 179 - 44 * 3 });
        // An explicit max_connections is honoured (and warned about).
        let explicit = Capacity::of(&Config { max_connections: Some(5000), ..config.clone() }, 256, 2).unwrap();
        assert_eq!(explicit.connections, 5000);
        assert!(Capacity::of(&config, 40, 2).is_err());
    }
}
