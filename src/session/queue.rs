//! [`queue`]: a small bounded queue between a connection's tasks (output on
//! its way to the client's writer).
//!
//! tokio's `mpsc` would do, but every channel holds a block of 32 slots from
//! the start (about 1.8 KiB for messages): with thousands of idle sessions
//! that is much of what they hold. This one
//! holds nothing while it is empty, grows only as far as it is filled, and
//! a send stopped before it is done gives its item back (a session frozen
//! for a hand-over keeps what it was sending).

use std::collections::VecDeque;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

use tokio::sync::Notify;

/// A queue of at most `capacity` items, with any number of senders and one
/// receiver.
pub(crate) fn queue<T>(capacity: usize) -> (Sender<T>, Receiver<T>) {
    let shared = Arc::new(Shared {
        state: Mutex::new(State { items: VecDeque::new(), receiver_gone: false }),
        capacity: capacity.max(1),
        senders: AtomicUsize::new(1),
        item: Notify::new(),
        room: Notify::new(),
    });
    (Sender(shared.clone()), Receiver(shared))
}

#[derive(Debug)]
struct Shared<T> {
    state: Mutex<State<T>>,
    capacity: usize,
    senders: AtomicUsize,
    /// An item came, or the last sender left.
    item: Notify,
    /// An item was taken, or the receiver left.
    room: Notify,
}

#[derive(Debug)]
struct State<T> {
    items: VecDeque<T>,
    receiver_gone: bool,
}

impl<T> Shared<T> {
    fn lock(&self) -> std::sync::MutexGuard<'_, State<T>> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }
}

/// The sending side; clones send into the same queue.
#[derive(Debug)]
pub(crate) struct Sender<T>(Arc<Shared<T>>);

/// The receiving side.
#[derive(Debug)]
pub(crate) struct Receiver<T>(Arc<Shared<T>>);

impl<T> Sender<T> {
    /// Queues `item` now if there is room; else gives it back.
    pub(crate) fn try_send(&self, item: T) -> Result<(), T> {
        let mut state = self.0.lock();
        if state.receiver_gone || state.items.len() >= self.0.capacity {
            return Err(item);
        }
        state.items.push_back(item);
        drop(state);
        self.0.item.notify_one();
        Ok(())
    }

    /// Queues `item`, waiting for room. Gives it back when the receiver
    /// is gone; stopped before it is done, it has queued nothing (and the
    /// caller still has nothing: use [`Sender::send_or_keep`] to keep the
    /// item).
    pub(crate) async fn send(&self, item: T) -> Result<(), T> {
        let mut item = Some(item);
        self.send_or_keep(&mut item).await;
        match item {
            None => Ok(()),
            Some(item) => Err(item),
        }
    }

    /// Queues the item in `slot` once there is room, taking it out of the
    /// slot; when the receiver is gone, it stays there. Stopped before it
    /// is done, the item is still in the slot.
    pub(crate) async fn send_or_keep(&self, slot: &mut Option<T>) {
        loop {
            let room = self.0.room.notified();
            tokio::pin!(room);
            room.as_mut().enable();
            {
                let mut state = self.0.lock();
                if state.receiver_gone {
                    return;
                }
                if state.items.len() < self.0.capacity {
                    if let Some(item) = slot.take() {
                        state.items.push_back(item);
                    }
                    drop(state);
                    self.0.item.notify_one();
                    return;
                }
            }
            room.await;
        }
    }
}

impl<T> Clone for Sender<T> {
    fn clone(&self) -> Self {
        self.0.senders.fetch_add(1, Ordering::AcqRel);
        Self(self.0.clone())
    }
}

impl<T> Drop for Sender<T> {
    fn drop(&mut self) {
        if self.0.senders.fetch_sub(1, Ordering::AcqRel) == 1 {
            self.0.item.notify_one();
        }
    }
}

impl<T> Receiver<T> {
    /// The next item, waiting for one; `None` once every sender is gone
    /// and the queue is empty.
    pub(crate) async fn recv(&mut self) -> Option<T> {
        let shared = self.0.clone();
        loop {
            let item = shared.item.notified();
            tokio::pin!(item);
            item.as_mut().enable();
            if let Some(next) = self.try_recv() {
                return Some(next);
            }
            if shared.senders.load(Ordering::Acquire) == 0 {
                return None;
            }
            item.await;
        }
    }

    /// The next item, if one is there.
    pub(crate) fn try_recv(&mut self) -> Option<T> {
        let mut state = self.0.lock();
        let next = state.items.pop_front();
        if state.items.is_empty() && state.items.capacity() > 4 {
            // A burst is over: its room goes.
            state.items = VecDeque::new();
        }
        drop(state);
        if next.is_some() {
            self.0.room.notify_waiters();
        }
        next
    }
}

impl<T> Drop for Receiver<T> {
    fn drop(&mut self) {
        self.0.lock().receiver_gone = true;
        self.0.room.notify_waiters();
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    #[tokio::test]
    async fn items_arrive_in_order_and_a_full_queue_waits_for_room() {
        let (tx, mut rx) = queue(2);
        tx.send(1).await.unwrap();
        tx.send(2).await.unwrap();
        assert_eq!(tx.try_send(3), Err(3));
        let sending = tokio::spawn({
            let tx = tx.clone();
            async move { tx.send(3).await }
        });
        tokio::time::sleep(Duration::from_millis(20)).await;
        assert!(!sending.is_finished(), "a full queue took a third item");
        assert_eq!(rx.recv().await, Some(1));
        sending.await.unwrap().unwrap();
        assert_eq!((rx.recv().await, rx.recv().await), (Some(2), Some(3)));
        drop(tx);
        assert_eq!(rx.recv().await, None);
    }

    #[tokio::test]
    async fn a_stopped_send_keeps_its_item_and_a_gone_receiver_gives_it_back() {
        let (tx, rx) = queue(1);
        tx.send("first").await.unwrap();
        let mut slot = Some("second");
        let stopped = tokio::time::timeout(Duration::from_millis(20), tx.send_or_keep(&mut slot)).await;
        assert!(stopped.is_err());
        assert_eq!(slot, Some("second"));
        drop(rx);
        assert_eq!(tx.send("third").await, Err("third"));
    }

    #[test]
    fn an_empty_queue_holds_no_items_room() {
        let (tx, mut rx) = queue::<[u8; 64]>(64);
        for _ in 0..40 {
            tx.try_send([0; 64]).unwrap();
        }
        while rx.try_recv().is_some() {}
        assert_eq!(rx.0.lock().items.capacity(), 0);
    }
}
