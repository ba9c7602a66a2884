//! Device pushes: the registered devices ([`devices`]), kept in memory so the fast path never
//! reads the database to find where to push.

pub mod devices;

pub use devices::DeviceCache;
