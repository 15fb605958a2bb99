//! [`SharedSessions`]: the named sessions running on this instance.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use crate::session::shared::Shared;

/// The named sessions of a server, by id. Clones share the same set.
#[derive(Debug, Clone, Default)]
pub struct SharedSessions(Arc<Mutex<HashMap<String, Slot>>>);

#[derive(Debug)]
enum Slot {
    /// Its process is being started.
    Starting,
    Running(Arc<Shared>),
}

impl SharedSessions {
    /// An empty set.
    pub fn new() -> Self {
        Self::default()
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<String, Slot>> {
        self.0.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Takes `id` for a session about to start; `None` when it is taken.
    pub(crate) fn reserve(&self, id: &str) -> Option<Reservation> {
        let mut sessions = self.lock();
        if sessions.contains_key(id) {
            return None;
        }
        sessions.insert(id.to_string(), Slot::Starting);
        Some(Reservation { sessions: self.clone(), id: id.to_string(), running: false })
    }

    /// The running session `id`, unless it has ended.
    pub(crate) fn get(&self, id: &str) -> Option<Arc<Shared>> {
        match self.lock().get(id) {
            Some(Slot::Running(shared)) if shared.ended().is_none() => Some(shared.clone()),
            _ => None,
        }
    }

    /// Named sessions running now.
    pub fn len(&self) -> usize {
        self.lock().values().filter(|slot| matches!(slot, Slot::Running(_))).count()
    }

    /// Whether no named session runs.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// An id taken for a session; freed when dropped.
#[derive(Debug)]
pub(crate) struct Reservation {
    sessions: SharedSessions,
    id: String,
    running: bool,
}

impl Reservation {
    /// The session now runs under the id (until the reservation is dropped).
    pub(crate) fn run(&mut self, shared: Arc<Shared>) {
        self.sessions.lock().insert(self.id.clone(), Slot::Running(shared));
        self.running = true;
    }
}

impl Drop for Reservation {
    fn drop(&mut self) {
        self.sessions.lock().remove(&self.id);
    }
}
