//! Live state for web clients: per-user latest-state cells ([`state`]), the two EventSource
//! wire formats ([`legacy`], [`jmap`]) and the per-connection frame loop ([`feed`]).
//!
//! `stream` receives state changes from `route` through [`StateHub::apply`], which never waits,
//! and hands bytes to `http`. It never reads a database and never holds a lock across `.await`.

pub mod feed;
pub mod jmap;
pub mod legacy;
pub mod reminder;
pub mod state;

pub use feed::{FeedOptions, Format, feed};
pub use state::{Cell, StateHub, SubscribeError, Subscription, UserState};
