//! Per-device and per-user caps on pushes per minute, after coalescing: the last guard against
//! a mail loop or a runaway client buzzing a phone all night and getting our credentials
//! throttled by Apple or Google. A push over either cap is dropped and counted by which cap it
//! hit; the next push inside the following minute carries the newest state again.
//!
//! Fixed one-minute windows per device and per user. Windows older than a minute are swept
//! when the maps have doubled since the last sweep, so memory follows the devices that pushed
//! in the last minute, not every device ever seen.

use std::borrow::Borrow;
use std::collections::HashMap;
use std::hash::Hash;
use std::sync::Mutex;
use std::time::Duration;

use tokio::time::Instant;

const MINUTE: Duration = Duration::from_secs(60);

/// Which cap refused a push, a metric label.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refused {
    Device,
    User,
}

impl Refused {
    /// The `outcome` label of the drop.
    pub fn outcome(self) -> &'static str {
        match self {
            Refused::Device => "dropped_rate_device",
            Refused::User => "dropped_rate_user",
        }
    }
}

/// The caps and the current windows.
pub struct RateLimits {
    per_device: u32,
    per_user: u32,
    windows: Mutex<Windows>,
}

#[derive(Default)]
struct Windows {
    devices: Counters<i64>,
    users: Counters<String>,
}

struct Counters<K> {
    windows: HashMap<K, (Instant, u32)>,
    sweep_at: usize,
}

impl<K> Default for Counters<K> {
    fn default() -> Self {
        Counters {
            windows: HashMap::new(),
            sweep_at: 1024,
        }
    }
}

impl<K: Hash + Eq> Counters<K> {
    /// Pushes counted for `key` in its current window.
    fn count<Q>(&self, key: &Q, now: Instant) -> u32
    where
        K: Borrow<Q>,
        Q: Hash + Eq + ?Sized,
    {
        match self.windows.get(key) {
            Some((start, count)) if now.duration_since(*start) < MINUTE => *count,
            _ => 0,
        }
    }

    /// Counts one push for `key`; `owned` makes the key only when it is new.
    fn add<Q>(&mut self, key: &Q, owned: impl FnOnce() -> K, now: Instant)
    where
        K: Borrow<Q>,
        Q: Hash + Eq + ?Sized,
    {
        let entry = match self.windows.get_mut(key) {
            Some(entry) => entry,
            None => self.windows.entry(owned()).or_insert((now, 0)),
        };
        if now.duration_since(entry.0) >= MINUTE {
            *entry = (now, 0);
        }
        entry.1 += 1;
        if self.windows.len() >= self.sweep_at {
            self.windows
                .retain(|_, (start, _)| now.duration_since(*start) < MINUTE);
            self.sweep_at = (self.windows.len() * 2).max(1024);
        }
    }
}

impl RateLimits {
    /// At most `per_device` pushes a minute to one device and `per_user` to all of a user's.
    pub fn new(per_device: u32, per_user: u32) -> RateLimits {
        RateLimits {
            per_device,
            per_user,
            windows: Mutex::new(Windows::default()),
        }
    }

    /// Counts a push to `device` of `user` if both caps allow it.
    pub fn admit(&self, user: &str, device: i64, now: Instant) -> Result<(), Refused> {
        let mut windows = self
            .windows
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        if windows.devices.count(&device, now) >= self.per_device {
            return Err(Refused::Device);
        }
        if windows.users.count(user, now) >= self.per_user {
            return Err(Refused::User);
        }
        windows.devices.add(&device, || device, now);
        windows.users.add(user, || user.to_owned(), now);
        Ok(())
    }

    /// Devices and users with a window open, for tests of the sweep.
    #[cfg(test)]
    fn tracked(&self) -> (usize, usize) {
        let windows = self.windows.lock().unwrap();
        (windows.devices.windows.len(), windows.users.windows.len())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn caps_per_device_then_per_user_and_windows_reopen() {
        let limits = RateLimits::new(3, 5);
        let start = Instant::now();
        for _ in 0..3 {
            assert_eq!(limits.admit("alice", 1, start), Ok(()));
        }
        assert_eq!(limits.admit("alice", 1, start), Err(Refused::Device));
        assert_eq!(limits.admit("alice", 2, start), Ok(()));
        assert_eq!(limits.admit("alice", 2, start), Ok(()));
        assert_eq!(limits.admit("alice", 3, start), Err(Refused::User));
        assert_eq!(
            limits.admit("bob", 4, start),
            Ok(()),
            "another user has their own cap"
        );
        let next_minute = start + MINUTE;
        assert_eq!(limits.admit("alice", 1, next_minute), Ok(()));
        assert_eq!(limits.admit("alice", 3, next_minute), Ok(()));
    }

    #[test]
    fn old_windows_are_swept() {
        let limits = RateLimits::new(10, 10);
        let start = Instant::now();
        for device in 0..2000 {
            limits
                .admit(&format!("user{device}"), device, start)
                .unwrap();
        }
        let later = start + MINUTE * 2;
        for device in 5000..5100 {
            limits
                .admit(&format!("user{device}"), device, later)
                .unwrap();
        }
        // The sweep runs when the map doubles: by then the first minute's windows are gone.
        for device in 6000..8000 {
            limits
                .admit(&format!("user{device}"), device, later)
                .unwrap();
        }
        let (devices, users) = limits.tracked();
        assert!(devices <= 2100 && users <= 2100, "{devices} {users}");
    }
}
