//! [`Identity`]: the user (and groups) a session's process runs as, resolved
//! once from the system's user database.

use std::ffi::CString;
use std::fmt;
use std::path::PathBuf;

use nix::unistd::{Gid, Group, Uid, User};

/// Who a process runs as: its user, primary group and supplementary groups,
/// and what its environment says about that user.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Identity {
    /// The user's name.
    pub name: String,
    /// The user id.
    pub uid: u32,
    /// The primary group id.
    pub gid: u32,
    /// Supplementary groups (the primary one included).
    pub groups: Vec<u32>,
    /// `HOME`.
    pub home: PathBuf,
    /// `SHELL`.
    pub shell: PathBuf,
}

/// A user or group that cannot be resolved.
#[derive(Debug, thiserror::Error)]
pub enum IdentityError {
    /// No such user.
    #[error("no user `{0}`")]
    NoUser(String),
    /// No such group.
    #[error("no group `{0}`")]
    NoGroup(String),
    /// The user database could not be read.
    #[error("cannot look up `{0}`")]
    Lookup(String, #[source] nix::Error),
}

impl Identity {
    /// Looks up `user` (a name, or a numeric uid) and its groups; `group`
    /// (a name or gid) replaces its primary group when given.
    pub fn resolve(user: &str, group: Option<&str>) -> Result<Self, IdentityError> {
        let lookup = |e| IdentityError::Lookup(user.to_string(), e);
        let found = match user.parse::<u32>() {
            Ok(uid) => User::from_uid(Uid::from_raw(uid)).map_err(lookup)?,
            Err(_) => User::from_name(user).map_err(lookup)?,
        };
        let user = found.ok_or_else(|| IdentityError::NoUser(user.to_string()))?;
        let gid = match group {
            Some(group) => resolve_group(group)?,
            None => user.gid.as_raw(),
        };
        let name = CString::new(user.name.clone()).map_err(|_| IdentityError::NoUser(user.name.clone()))?;
        let mut groups: Vec<u32> = nix::unistd::getgrouplist(&name, Gid::from_raw(gid))
            .map_err(|e| IdentityError::Lookup(user.name.clone(), e))?
            .into_iter()
            .map(Gid::as_raw)
            .collect();
        groups.sort_unstable();
        groups.dedup();
        Ok(Self { name: user.name, uid: user.uid.as_raw(), gid, groups, home: user.dir, shell: user.shell })
    }

    /// The variables a login would set for this user.
    pub fn env(&self) -> [(&'static str, String); 4] {
        [
            ("HOME", self.home.display().to_string()),
            ("USER", self.name.clone()),
            ("LOGNAME", self.name.clone()),
            ("SHELL", self.shell.display().to_string()),
        ]
    }
}

impl fmt::Display for Identity {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} (uid {}, gid {})", self.name, self.uid, self.gid)
    }
}

/// A group by name or number.
pub fn resolve_group(group: &str) -> Result<u32, IdentityError> {
    if let Ok(gid) = group.parse::<u32>() {
        return Ok(gid);
    }
    Group::from_name(group)
        .map_err(|e| IdentityError::Lookup(group.to_string(), e))?
        .map(|g| g.gid.as_raw())
        .ok_or_else(|| IdentityError::NoGroup(group.to_string()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn root_resolves_by_name_and_number() {
        let root = Identity::resolve("root", None).unwrap();
        assert_eq!((root.uid, root.gid), (0, 0));
        assert!(root.groups.contains(&0));
        assert_eq!(Identity::resolve("0", None).unwrap().name, "root");
        assert_eq!(root.env()[1], ("USER", "root".to_string()));
    }

    #[test]
    fn unknown_users_and_groups_are_errors() {
        assert!(matches!(Identity::resolve("no-such-user-here", None), Err(IdentityError::NoUser(_))));
        assert!(matches!(Identity::resolve("root", Some("no-such-group-here")), Err(IdentityError::NoGroup(_))));
    }
}
