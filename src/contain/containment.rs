//! [`Containment`]: how a server contains its sessions, as one value the
//! session service consults for each spawn.

use std::collections::HashMap;
use std::io;
use std::sync::Arc;

use super::{CgroupLimits, CgroupRoot, Identity, SessionCgroup};
use crate::spec::CommandSpec;

/// How sessions are contained: their cgroups and limits, and who they run
/// as. The default contains by process group only and runs children as the
/// server's user.
#[derive(Debug, Clone, Default)]
pub struct Containment {
    cgroups: Option<CgroupRoot>,
    limits: CgroupLimits,
    run_as: Option<Identity>,
    users: Arc<HashMap<String, Identity>>,
}

impl Containment {
    /// Process groups only, the server's user.
    pub fn new() -> Self {
        Self::default()
    }

    /// One cgroup per session under `root`, with `limits` (a spec may ask
    /// for lower ones).
    pub fn cgroups(mut self, root: CgroupRoot, limits: CgroupLimits) -> Self {
        self.cgroups = Some(root);
        self.limits = limits;
        self
    }

    /// Children run as `identity` unless their spec names a user.
    pub fn run_as(mut self, identity: Identity) -> Self {
        self.run_as = Some(identity);
        self
    }

    /// The users a spec may name, resolved.
    pub fn users(mut self, users: impl IntoIterator<Item = Identity>) -> Self {
        self.users = Arc::new(users.into_iter().map(|identity| (identity.name.clone(), identity)).collect());
        self
    }

    /// Where sessions' cgroups are made, when they get cgroups.
    pub fn cgroup_root(&self) -> Option<&CgroupRoot> {
        self.cgroups.as_ref()
    }

    /// Who children run as unless their spec names a user (`None`: the
    /// server's user).
    pub fn run_as_identity(&self) -> Option<&Identity> {
        self.run_as.as_ref()
    }

    /// Who a process of `spec` runs as (`None`: the server's user); an error
    /// names a user that is not one of [`Containment::users`].
    pub fn identity_for(&self, spec: &CommandSpec) -> Result<Option<&Identity>, String> {
        match &spec.user {
            Some(user) => self.users.get(user).map(Some).ok_or_else(|| user.clone()),
            None => Ok(self.run_as.as_ref()),
        }
    }

    /// A new cgroup for a session of `spec`, with the stricter of the
    /// server's limits and the spec's; `None` without cgroups.
    pub fn cgroup_for(&self, spec: &CommandSpec) -> io::Result<Option<SessionCgroup>> {
        let Some(root) = &self.cgroups else { return Ok(None) };
        let asked = spec.limits.map(|l| CgroupLimits {
            memory: l.memory.map(|m| m.as_u64()),
            pids: l.pids,
            cpu_percent: l.cpu.map(|p| p.0),
        });
        root.create(&self.limits.min(asked.unwrap_or_default())).map(Some)
    }
}
