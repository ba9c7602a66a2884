//! Every user's channel ([`super::latest`] of a [`Live`]), by user name and by keepalive slice.
//!
//! The keepalive clock beats one slice of users at a time, spread over the interval, so that
//! a period's comments never go out in one burst (at 100,000 streams that would be 100,000
//! writes, and the events arriving meanwhile would wait behind them). Each slice is a map of
//! its own, found by a fixed hash of the name: a beat visits only its slice, however fine the
//! slicing, and a user is in one table only (a map of every user beside a list per slice cost
//! 84 bytes a user at 19,000 users; this costs half). The cells whose state moved since the
//! last write to the record are listed too ([`Users::mark_dirty`]), so the writer visits only
//! those, and idle cells leave a slice at a time ([`Users::evict`]), so no sweep holds the lock
//! for long.

use std::collections::HashMap;
use std::hash::{BuildHasher, BuildHasherDefault, DefaultHasher};
use std::sync::Arc;

use super::latest::Sender;
use super::live::Live;

/// How many slices the users are split into; the clock beats one per `interval / SLICES`.
pub const SLICES: usize = 256;

/// Every user's channel, found by user name or by slice.
pub struct Users {
    /// One map a slice: a user's is `slices[slice_of(user)]`.
    slices: Vec<HashMap<Arc<str>, Sender<Live>>>,
    /// Users whose cell says `dirty`, each once.
    dirty: Vec<Arc<str>>,
}

impl Default for Users {
    fn default() -> Self {
        Users {
            slices: (0..SLICES).map(|_| HashMap::new()).collect(),
            dirty: Vec::new(),
        }
    }
}

impl Users {
    /// The user's cell, if they have one.
    pub fn get(&self, user: &str) -> Option<&Sender<Live>> {
        self.slices[slice_of(user)].get(user)
    }

    /// The user's cell, made with `make` if they have none.
    pub fn get_or_insert_with(&mut self, user: &str, make: impl FnOnce() -> Live) -> &Sender<Live> {
        self.entry(user, make).1
    }

    /// The user's name as the map keeps it (shared, so a stream need not copy it) and cell,
    /// made with `make` if they have none.
    pub fn entry(&mut self, user: &str, make: impl FnOnce() -> Live) -> (&Arc<str>, &Sender<Live>) {
        let slice = &mut self.slices[slice_of(user)];
        if !slice.contains_key(user) {
            slice.insert(user.into(), Sender::new(make()));
        }
        slice
            .get_key_value(user)
            .expect("the user's cell was just made")
    }

    /// Adds a cell for a user who has none.
    pub fn insert(&mut self, user: &str, live: Live) {
        self.slices[slice_of(user)].insert(user.into(), Sender::new(live));
    }

    /// Lists `user` among the dirty ones (the caller set its cell's flag).
    pub fn mark_dirty(&mut self, user: &str) {
        if let Some((name, _)) = self.slices[slice_of(user)].get_key_value(user) {
            self.dirty.push(name.clone());
        }
    }

    /// Takes the list of dirty users.
    pub fn take_dirty(&mut self) -> Vec<Arc<str>> {
        std::mem::take(&mut self.dirty)
    }

    /// Every cell.
    pub fn all(&self) -> impl Iterator<Item = &Sender<Live>> {
        self.slices.iter().flat_map(HashMap::values)
    }

    /// The cells of one slice (`slice < SLICES`), with their users.
    pub fn slice(&self, slice: usize) -> impl Iterator<Item = (&Arc<str>, &Sender<Live>)> {
        self.slices[slice].iter()
    }

    /// Removes the cells of one slice that `evict` picks; returns how many.
    pub fn evict(&mut self, slice: usize, evict: impl Fn(&Sender<Live>) -> bool) -> usize {
        let cells = &mut self.slices[slice];
        let before = cells.len();
        cells.retain(|_, cell| !evict(cell));
        let evicted = before - cells.len();
        // Give back the room of users who left, once most have: a map only ever grows else.
        if evicted > 0 {
            if cells.capacity() > 4 * cells.len() + 16 {
                cells.shrink_to_fit();
            }
            if self.dirty.capacity() > 4 * self.dirty.len() + 1024 {
                self.dirty.shrink_to_fit();
            }
        }
        evicted
    }

    /// Users in memory.
    pub fn len(&self) -> usize {
        self.slices.iter().map(HashMap::len).sum()
    }

    /// Whether no user is in memory.
    pub fn is_empty(&self) -> bool {
        self.slices.iter().all(HashMap::is_empty)
    }
}

/// A user's slice: a fixed hash of the name, so the user is beaten once per interval.
fn slice_of(user: &str) -> usize {
    let hash = BuildHasherDefault::<DefaultHasher>::default().hash_one(user);
    (hash % SLICES as u64) as usize
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_cell_is_in_one_slice_and_users_spread() {
        let mut cells = Users::default();
        for n in 0..1000 {
            let user = format!("user{n}");
            cells.insert(&user, Live::default());
            assert!(cells.get(&user).is_some());
        }
        cells.get_or_insert_with("user7", || panic!("user7 has a cell"));
        cells.get_or_insert_with("newcomer", Live::default);
        let sizes: Vec<usize> = (0..SLICES).map(|s| cells.slice(s).count()).collect();
        assert_eq!(
            sizes.iter().sum::<usize>(),
            1001,
            "each cell in exactly one slice"
        );
        assert_eq!(cells.all().count(), 1001);
        assert!(
            sizes.iter().all(|&size| size <= 16),
            "no slice holds many more than 1000/256: {sizes:?}"
        );
    }
}
