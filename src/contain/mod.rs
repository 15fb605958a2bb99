//! Containment (SPEC §8): a session's processes stay in their box.
//!
//! - `containment`: [`Containment`], all of it as one value for spawning;
//! - `cgroup`: one cgroup v2 per session ([`CgroupRoot`], [`SessionCgroup`]),
//!   so `cgroup.kill` ends everything a session started and `cgroup.events`
//!   tells when nothing is left;
//! - `identity`: the user and groups children run as ([`Identity`]);
//! - `exec`: starting a child ([`spawn`]) without copying the server's page
//!   tables, and what it does before its command runs — join the cgroup, no
//!   core dumps, drop privileges — the crate's only unsafe code;
//! - `reaper`: reaping orphans as a subreaper or PID 1;
//! - [`harden_process`]: what the server does to itself at start.

mod cgroup;
mod containment;
mod exec;
mod identity;
mod reaper;

pub use cgroup::{CgroupLimits, CgroupRoot, CgroupSetting, SessionCgroup};
pub use containment::Containment;
pub use exec::{Spawn, Spawned, close_inherited_descriptors, hold_spawns, reserve_spawn_slots, spawn};
pub use identity::{Identity, IdentityError, resolve_group};
pub use reaper::start_reaping_orphans;
pub(crate) use reaper::{FORK_GUARD, register, unregister};

/// What a server process does to itself at start, so its children cannot
/// reach its secrets or outlive their sessions: not dumpable (a child of the
/// same user cannot read `/proc/<server>/environ` or trace it), inherited
/// descriptors close-on-exec, and a child subreaper that reaps orphans. Call
/// it once, inside the runtime, in a process that spawns children only
/// through this crate (the binary does).
pub fn harden_process() -> std::io::Result<()> {
    rustix::process::set_dumpable_behavior(rustix::process::DumpableBehavior::NotDumpable)?;
    let marked = close_inherited_descriptors()?;
    if marked > 0 {
        tracing::info!(descriptors = marked, "inherited descriptors will not reach children");
    }
    start_reaping_orphans()
}
