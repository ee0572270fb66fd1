//! The queue between everything that sends on a stream and the stream's writer task.
//!
//! Unlike a channel, it can hold back the writer's wake-up while the stream's reader works
//! through a batch of received lines: answers produced during that pass (requests answered
//! inline, events echoed) then leave in one write instead of one write each. The reader ends
//! the hold whenever it is about to wait for anything, so nothing queued can be held up by it.

use std::sync::{Arc, Mutex};

use tokio::sync::Notify;

#[derive(Default)]
struct State {
    queue: Vec<Arc<str>>,
    /// The reader is in a pass: pushes do not wake the writer; the end of the pass does.
    held: bool,
    /// The writer is gone: pushes fail.
    closed: bool,
}

/// Messages waiting for the writer of one stream.
#[derive(Default)]
pub(crate) struct Outbox {
    state: Mutex<State>,
    wake: Notify,
}

/// The writer has stopped; the message was not queued.
#[derive(Debug)]
pub(crate) struct Closed;

impl Outbox {
    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Queues a message text; wakes the writer unless the reader holds it back.
    pub(crate) fn push(&self, text: Arc<str>) -> Result<(), Closed> {
        let wake = {
            let mut s = self.lock();
            if s.closed {
                return Err(Closed);
            }
            s.queue.push(text);
            !s.held
        };
        if wake {
            self.wake.notify_one();
        }
        Ok(())
    }

    /// The reader starts a pass over received lines.
    pub(crate) fn hold(&self) {
        self.lock().held = true;
    }

    /// The reader's pass is over (or about to wait): wakes the writer if anything is queued.
    pub(crate) fn release(&self) {
        let wake = {
            let mut s = self.lock();
            s.held = false;
            !s.queue.is_empty()
        };
        if wake {
            self.wake.notify_one();
        }
    }

    /// Waits until something may be queued (spurious wake-ups are possible).
    pub(crate) async fn ready(&self) {
        self.wake.notified().await;
    }

    /// Moves up to `max` queued messages into `into`, oldest first; true if more remain.
    pub(crate) fn take(&self, into: &mut Vec<Arc<str>>, max: usize) -> bool {
        let mut s = self.lock();
        if s.queue.len() <= max {
            if into.is_empty() {
                std::mem::swap(&mut s.queue, into);
            } else {
                into.append(&mut s.queue);
            }
            false
        } else {
            into.extend(s.queue.drain(..max));
            true
        }
    }

    /// Whether nothing is queued.
    pub(crate) fn is_empty(&self) -> bool {
        self.lock().queue.is_empty()
    }

    /// The writer stops: later pushes fail; returns what was still queued.
    pub(crate) fn close(&self) -> Vec<Arc<str>> {
        let mut s = self.lock();
        s.closed = true;
        std::mem::take(&mut s.queue)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_held_push_wakes_the_writer_only_on_release() {
        let o = Outbox::default();
        o.hold();
        o.push(Arc::from("a")).unwrap();
        let woke = tokio::time::timeout(std::time::Duration::from_millis(20), o.ready()).await;
        assert!(woke.is_err(), "woken while held");
        o.release();
        tokio::time::timeout(std::time::Duration::from_secs(5), o.ready())
            .await
            .unwrap();
        let mut got = Vec::new();
        assert!(!o.take(&mut got, 8));
        assert_eq!(got.len(), 1);
        for t in ["x", "y", "z"] {
            o.push(Arc::from(t)).unwrap();
        }
        let mut got = Vec::new();
        assert!(o.take(&mut got, 2));
        assert_eq!(got, [Arc::from("x"), Arc::from("y")]);
        assert!(!o.take(&mut got, 2));
        assert_eq!(got.len(), 3);
        assert!(o.is_empty());
        o.close();
        assert!(o.push(Arc::from("b")).is_err());
    }
}
