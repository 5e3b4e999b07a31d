//! Login codes and attempts at them, in memory. Both are maps with an expiry per entry: an
//! expired entry is never found, and [`Codes::purge`] / [`Attempts::purge`] drop it, so that
//! memory follows the codes live and the senders of the current window, not the history.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use crate::wechat::ids::Scene;

/// Live login codes by their digits.
#[derive(Default)]
pub(super) struct Codes {
    by_digits: HashMap<String, Live>,
}

/// A code's scene and when the code lapses.
struct Live {
    scene: Scene,
    until: Instant,
}

impl Codes {
    /// Binds `code` to `scene` until `until` unless it is live: `false` then.
    pub(super) fn reserve(
        &mut self,
        code: &str,
        scene: &Scene,
        now: Instant,
        until: Instant,
    ) -> bool {
        let live = Live {
            scene: scene.clone(),
            until,
        };
        match self.by_digits.get_mut(code) {
            Some(held) if held.until > now => false,
            Some(lapsed) => {
                *lapsed = live;
                true
            }
            None => {
                self.by_digits.insert(code.to_owned(), live);
                true
            }
        }
    }

    /// The scene of a live `code`.
    pub(super) fn lookup(&self, code: &str, now: Instant) -> Option<Scene> {
        self.by_digits
            .get(code)
            .filter(|live| live.until > now)
            .map(|live| live.scene.clone())
    }

    /// Removes `code` if it names `scene`; `true` if it was live.
    pub(super) fn release(&mut self, code: &str, scene: &Scene, now: Instant) -> bool {
        match self.by_digits.get(code) {
            Some(held) if held.scene == *scene => {
                let live = held.until > now;
                self.by_digits.remove(code);
                live
            }
            _ => false,
        }
    }

    /// Brings the lapse of `code` forward to `until` if it names `scene` (never later).
    pub(super) fn lapse_by(&mut self, code: &str, scene: &Scene, until: Instant) {
        if let Some(held) = self.by_digits.get_mut(code)
            && held.scene == *scene
        {
            held.until = held.until.min(until);
        }
    }

    /// Drops the codes that lapsed.
    pub(super) fn purge(&mut self, now: Instant) {
        self.by_digits.retain(|_, live| live.until > now);
    }

    /// Codes held, lapsed ones not yet purged included.
    #[cfg(test)]
    pub(super) fn len(&self) -> usize {
        self.by_digits.len()
    }
}

/// Attempts by sender in each sender's current window.
#[derive(Default)]
pub(super) struct Attempts {
    by_sender: HashMap<String, Window>,
}

/// A sender's window: its count, the count each message got, and when it ends.
struct Window {
    count: u32,
    /// By `MsgId`: WeChat's retries of a message get its count and are not counted again.
    messages: HashMap<String, u32>,
    until: Instant,
}

impl Attempts {
    /// Counts one attempt by `sender`, the message `message`, in its window or in a new one of
    /// `window` from `now`; a message counted in the window before gets the count it got.
    pub(super) fn count(
        &mut self,
        sender: &str,
        message: &str,
        window: Duration,
        now: Instant,
    ) -> u32 {
        let fresh = || Window {
            count: 0,
            messages: HashMap::new(),
            until: now + window,
        };
        let open = self
            .by_sender
            .entry(sender.to_owned())
            .or_insert_with(fresh);
        if open.until <= now {
            *open = fresh();
        }
        if let Some(&seen) = open.messages.get(message) {
            return seen;
        }
        open.count = open.count.saturating_add(1);
        open.messages.insert(message.to_owned(), open.count);
        open.count
    }

    /// Drops the windows that ended.
    pub(super) fn purge(&mut self, now: Instant) {
        self.by_sender.retain(|_, w| w.until > now);
    }

    /// Senders held, ended windows not yet purged included.
    #[cfg(test)]
    pub(super) fn len(&self) -> usize {
        self.by_sender.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::login::policy::new_scene;

    const MINUTE: Duration = Duration::from_secs(60);

    #[test]
    fn a_lapsed_code_is_not_found_and_is_purged() {
        let mut codes = Codes::default();
        let (a, b) = (new_scene(), new_scene());
        let t0 = Instant::now();
        assert!(codes.reserve("123456", &a, t0, t0 + MINUTE));
        assert!(codes.reserve("654321", &b, t0, t0 + 2 * MINUTE));
        let later = t0 + MINUTE;
        assert_eq!(codes.lookup("123456", later), None);
        assert_eq!(codes.lookup("654321", later), Some(b.clone()));
        codes.purge(later);
        assert_eq!(codes.len(), 1);
        // A lapsed code is free again, also before it is purged.
        assert!(codes.reserve("654321", &a, t0 + 3 * MINUTE, t0 + 4 * MINUTE));
        assert_eq!(codes.lookup("654321", t0 + 3 * MINUTE), Some(a.clone()));
        assert!(codes.release("654321", &a, t0 + 3 * MINUTE));
        assert_eq!(codes.len(), 0);
    }

    #[test]
    fn releasing_a_lapsed_code_of_its_scene_removes_it_but_reports_it_was_not_live() {
        let mut codes = Codes::default();
        let a = new_scene();
        let t0 = Instant::now();
        assert!(codes.reserve("123456", &a, t0, t0 + MINUTE));
        assert!(!codes.release("123456", &a, t0 + MINUTE));
        assert_eq!(codes.len(), 0);
    }

    #[test]
    fn a_code_lapses_earlier_only_for_its_own_scene_and_never_later() {
        let mut codes = Codes::default();
        let (a, b) = (new_scene(), new_scene());
        let t0 = Instant::now();
        assert!(codes.reserve("123456", &a, t0, t0 + 2 * MINUTE));
        codes.lapse_by("123456", &b, t0 + MINUTE);
        assert_eq!(codes.lookup("123456", t0 + MINUTE), Some(a.clone()));
        codes.lapse_by("123456", &a, t0 + 3 * MINUTE);
        assert_eq!(codes.lookup("123456", t0 + 2 * MINUTE), None);
        codes.lapse_by("123456", &a, t0 + MINUTE);
        assert_eq!(codes.lookup("123456", t0 + MINUTE / 2), Some(a.clone()));
        assert_eq!(codes.lookup("123456", t0 + MINUTE), None);
        codes.purge(t0 + MINUTE);
        assert_eq!(codes.len(), 0);
    }

    #[test]
    fn a_window_that_ended_starts_again_and_is_purged() {
        let mut attempts = Attempts::default();
        let t0 = Instant::now();
        assert_eq!(attempts.count("o1", "m1", MINUTE, t0), 1);
        assert_eq!(attempts.count("o1", "m2", MINUTE, t0 + MINUTE / 2), 2);
        // A retry of a message counted in the window gets its count.
        assert_eq!(attempts.count("o1", "m1", MINUTE, t0 + MINUTE / 2), 1);
        assert_eq!(attempts.count("o2", "m3", MINUTE, t0 + MINUTE / 2), 1);
        assert_eq!(attempts.count("o1", "m4", MINUTE, t0 + MINUTE), 1);
        attempts.purge(t0 + MINUTE + MINUTE / 2);
        assert_eq!(attempts.len(), 1);
        attempts.purge(t0 + 2 * MINUTE);
        assert_eq!(attempts.len(), 0);
    }
}
