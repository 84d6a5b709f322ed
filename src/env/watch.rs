//! `Watch<T>`: a value that tasks wait on until it changes, woken in an
//! order that depends on nothing but the order they started waiting.
//!
//! `tokio::sync::watch` spreads its waiters over eight `Notify`s picked by a
//! thread-local random number seeded from a process-wide counter, so which
//! waiter wakes first depends on how many runtimes the process made before.
//! Under the simulator that made a seed's run depend on the seeds run before
//! it in the same process. A single `Notify` wakes its waiters in a fixed
//! order: a simulated run stays a function of its seed alone.

use std::sync::Mutex;

use tokio::sync::Notify;

/// A value, its version (bumped by every change), and its waiters.
#[derive(Debug, Default)]
pub struct Watch<T> {
    state: Mutex<(T, u64)>,
    notify: Notify,
}

impl<T: Clone> Watch<T> {
    /// A watch holding `value`, at version 0.
    pub fn new(value: T) -> Watch<T> {
        Watch {
            state: Mutex::new((value, 0)),
            notify: Notify::new(),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, (T, u64)> {
        self.state
            .lock()
            .expect("a watch's lock is never held across a panic")
    }

    /// The current value.
    pub fn get(&self) -> T {
        self.lock().0.clone()
    }

    /// The current version: how many changes there have been.
    pub fn version(&self) -> u64 {
        self.lock().1
    }

    /// Changes the value and wakes every waiter.
    pub fn modify(&self, change: impl FnOnce(&mut T)) {
        self.modify_if(|value| {
            change(value);
            true
        });
    }

    /// Changes the value; if `change` says it changed, bumps the version and
    /// wakes every waiter. Returns what `change` said.
    pub fn modify_if(&self, change: impl FnOnce(&mut T) -> bool) -> bool {
        let changed = {
            let mut state = self.lock();
            let changed = change(&mut state.0);
            if changed {
                state.1 += 1;
            }
            changed
        };
        if changed {
            self.notify.notify_waiters();
        }
        changed
    }

    /// Resolves once the version is past `seen`, with the new version.
    pub async fn changed_since(&self, seen: u64) -> u64 {
        loop {
            let notified = self.notify.notified();
            futures::pin_mut!(notified);
            // Registered before the version is read: a change in between wakes it.
            notified.as_mut().enable();
            let version = self.version();
            if version > seen {
                return version;
            }
            notified.await;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_change_bumps_the_version_and_an_unchanged_one_does_not() {
        let watch = Watch::new(0_u64);
        watch.modify(|v| *v += 1);
        assert_eq!((watch.get(), watch.version()), (1, 1));
        assert!(!watch.modify_if(|_| false));
        assert_eq!(watch.version(), 1);
    }

    #[test]
    fn a_waiter_wakes_on_a_change_after_the_version_it_saw() {
        let watch = Watch::new(0_u64);
        let runtime = tokio::runtime::Builder::new_current_thread()
            .build()
            .expect("a runtime");
        let version = runtime.block_on(async {
            let wait = watch.changed_since(0);
            let change = async {
                tokio::task::yield_now().await;
                watch.modify(|v| *v = 7);
            };
            futures::join!(wait, change).0
        });
        assert_eq!((version, watch.get()), (1, 7));
    }

    #[test]
    fn a_waiter_behind_the_version_returns_at_once() {
        let watch = Watch::new(());
        watch.modify(|_| {});
        let runtime = tokio::runtime::Builder::new_current_thread()
            .build()
            .expect("a runtime");
        assert_eq!(runtime.block_on(watch.changed_since(0)), 1);
    }
}
