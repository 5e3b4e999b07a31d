//! Values read once, in memory: a map with an expiry per entry. An expired entry is never
//! found, and [`Once::purge`] drops it, so memory follows the logins under way.

use std::collections::HashMap;
use std::time::Instant;

/// Values by key, each with when it lapses.
#[derive(Default)]
pub(super) struct Once {
    by_key: HashMap<String, (String, Instant)>,
}

impl Once {
    /// Keeps `value` under `key` until `until`, unless a live value is there: `false` then.
    pub(super) fn put(&mut self, key: &str, value: &str, now: Instant, until: Instant) -> bool {
        if self.by_key.get(key).is_some_and(|(_, u)| *u > now) {
            return false;
        }
        self.by_key
            .insert(key.to_owned(), (value.to_owned(), until));
        true
    }

    /// Removes the value under `key` and returns it if it was live.
    pub(super) fn take(&mut self, key: &str, now: Instant) -> Option<String> {
        self.by_key
            .remove(key)
            .filter(|(_, until)| *until > now)
            .map(|(value, _)| value)
    }

    /// Drops the values that lapsed.
    pub(super) fn purge(&mut self, now: Instant) {
        self.by_key.retain(|_, (_, until)| *until > now);
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    #[test]
    fn a_value_is_taken_once_and_not_after_it_lapses() {
        let mut once = Once::default();
        let now = Instant::now();
        let later = now + Duration::from_secs(60);
        assert!(once.put("a", "1", now, later));
        assert!(!once.put("a", "2", now, later));
        assert_eq!(once.take("a", now).as_deref(), Some("1"));
        assert_eq!(once.take("a", now), None);
        assert!(once.put("b", "1", now, now + Duration::from_millis(1)));
        assert_eq!(once.take("b", later), None);
        assert!(once.put("c", "1", now, now + Duration::from_millis(1)));
        once.purge(later);
        assert!(once.by_key.is_empty());
    }
}
