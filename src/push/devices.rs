//! The in-memory copy of the `devices` table, keyed by user.
//!
//! Filled from the store at start-up and updated by whoever writes the table (registration,
//! provider-driven removal) right after the write commits, so a push looks devices up with a
//! map read and never awaits the database. In a cluster the other nodes write the same table:
//! each change made here is announced through [`DeviceCache::on_change`], and what the others
//! announce is read back from the table with [`DeviceCache::replace_user`].

use std::collections::HashMap;
use std::sync::{OnceLock, RwLock};

use crate::store::{Device, Upserted};

/// Told the users whose devices this node changed, once the change is committed.
pub type DevicesChanged = Box<dyn Fn(&[&str]) + Send + Sync>;

/// Every registered device, by user.
#[derive(Default)]
pub struct DeviceCache {
    /// A std lock: every critical section is a map operation with no `.await`.
    by_user: RwLock<HashMap<String, Vec<Device>>>,
    changed: OnceLock<DevicesChanged>,
}

impl DeviceCache {
    /// A cache holding `devices`.
    pub fn new(devices: Vec<Device>) -> DeviceCache {
        let cache = DeviceCache::default();
        for device in devices {
            cache.insert(device);
        }
        cache
    }

    /// The user's devices (a copy: a handful of small records).
    pub fn devices_of(&self, user: &str) -> Vec<Device> {
        let by_user = self
            .by_user
            .read()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        by_user.get(user).cloned().unwrap_or_default()
    }

    /// How many devices are registered in all.
    pub fn len(&self) -> usize {
        let by_user = self
            .by_user
            .read()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        by_user.values().map(Vec::len).sum()
    }

    /// Whether no device is registered.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Mirrors a committed registration, including a token moving between users.
    pub fn apply(&self, upserted: &Upserted) {
        match upserted {
            Upserted::Created(device) => {
                self.insert(device.clone());
                self.announce(&[&device.user_id]);
            }
            Upserted::Updated { device, moved_from } => {
                if let Some(previous) = moved_from {
                    self.remove_from(previous, device.id);
                    self.announce(&[previous, &device.user_id]);
                } else {
                    self.announce(&[&device.user_id]);
                }
                self.insert(device.clone());
            }
        }
    }

    /// Mirrors a committed removal.
    pub fn remove(&self, device: &Device) {
        self.remove_from(&device.user_id, device.id);
        self.announce(&[&device.user_id]);
    }

    /// Sets who hears of the changes this node makes (once, at start-up: the cluster).
    pub fn on_change(&self, hook: DevicesChanged) {
        if self.changed.set(hook).is_err() {
            tracing::warn!("a device-change hook was set twice; keeping the first");
        }
    }

    /// Takes `user`'s devices as the table holds them now (another node changed them).
    pub fn replace_user(&self, user: &str, devices: Vec<Device>) {
        let mut by_user = self
            .by_user
            .write()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        if devices.is_empty() {
            by_user.remove(user);
        } else {
            by_user.insert(user.to_owned(), devices);
        }
    }

    /// Takes every device as the table holds it now (after a time cut off from the others).
    pub fn replace_all(&self, devices: Vec<Device>) {
        let fresh = DeviceCache::new(devices);
        let fresh = fresh
            .by_user
            .into_inner()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        *self
            .by_user
            .write()
            .unwrap_or_else(|poisoned| poisoned.into_inner()) = fresh;
    }

    fn announce(&self, users: &[&str]) {
        if let Some(changed) = self.changed.get() {
            changed(users);
        }
    }

    fn insert(&self, device: Device) {
        let mut by_user = self
            .by_user
            .write()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        let devices = by_user.entry(device.user_id.clone()).or_default();
        match devices.iter_mut().find(|known| known.id == device.id) {
            Some(known) => *known = device,
            None => devices.push(device),
        }
    }

    fn remove_from(&self, user: &str, id: i64) {
        let mut by_user = self
            .by_user
            .write()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        if let Some(devices) = by_user.get_mut(user) {
            devices.retain(|device| device.id != id);
            if devices.is_empty() {
                by_user.remove(user);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::{Environment, Platform};

    fn device(id: i64, user: &str) -> Device {
        Device {
            id,
            user_id: user.into(),
            platform: Platform::Apns,
            token: format!("{id:064x}"),
            app: "com.example.mail".into(),
            environment: Environment::Production,
            created_at: 1,
            registered_at: 1,
            webpush: None,
        }
    }

    #[test]
    fn follows_registrations_moves_and_removals() {
        let cache = DeviceCache::new(vec![device(1, "alice"), device(2, "alice")]);
        assert_eq!(cache.devices_of("alice").len(), 2);
        cache.apply(&Upserted::Created(device(3, "bob")));
        cache.apply(&Upserted::Updated {
            device: device(1, "bob"),
            moved_from: Some("alice".into()),
        });
        assert_eq!(cache.devices_of("alice"), vec![device(2, "alice")]);
        assert_eq!(
            cache
                .devices_of("bob")
                .iter()
                .map(|d| d.id)
                .collect::<Vec<_>>(),
            [3, 1]
        );
        cache.apply(&Upserted::Updated {
            device: device(3, "bob"),
            moved_from: None,
        });
        assert_eq!(cache.len(), 3);
        cache.remove(&device(2, "alice"));
        assert!(cache.devices_of("alice").is_empty());
        assert_eq!(cache.len(), 2);
    }

    #[test]
    fn announces_its_own_changes_and_takes_others_quietly() {
        let cache = DeviceCache::new(vec![device(1, "alice")]);
        let heard = std::sync::Arc::new(std::sync::Mutex::new(Vec::<String>::new()));
        let sink = heard.clone();
        cache.on_change(Box::new(move |users| {
            sink.lock()
                .unwrap()
                .extend(users.iter().map(|u| u.to_string()))
        }));
        cache.apply(&Upserted::Created(device(2, "bob")));
        cache.apply(&Upserted::Updated {
            device: device(1, "bob"),
            moved_from: Some("alice".into()),
        });
        cache.remove(&device(2, "bob"));
        assert_eq!(*heard.lock().unwrap(), ["bob", "alice", "bob", "bob"]);
        cache.replace_user("carol", vec![device(7, "carol")]);
        cache.replace_user("bob", Vec::new());
        assert!(cache.devices_of("bob").is_empty());
        assert_eq!(cache.len(), 1);
        cache.replace_all(vec![device(8, "dave"), device(9, "dave")]);
        assert_eq!(cache.devices_of("dave").len(), 2);
        assert!(cache.devices_of("carol").is_empty());
        assert_eq!(
            heard.lock().unwrap().len(),
            4,
            "replacements are not announced"
        );
    }
}
