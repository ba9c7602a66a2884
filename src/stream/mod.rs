//! Live state for web clients: per-user latest-state cells ([`state`], over [`cell`]), the two EventSource
//! wire formats ([`legacy`], [`jmap`]), the per-connection frame source ([`feed`]) and the one
//! keepalive clock they share ([`beat`]), and the state's record beyond the process
//! ([`persist`]).
//!
//! `stream` receives state changes from `route` through [`StateHub::apply`], which never waits,
//! and hands bytes to `http`. It never reads a database and never holds a lock across `.await`.

pub mod beat;
pub mod cell;
pub mod cells;
pub mod feed;
pub mod jmap;
pub mod legacy;
pub mod persist;
pub mod reminder;
pub mod state;

pub use feed::{Feed, FeedOptions, Format, JmapIds};
pub use state::{Cell, StateHub, SubscribeError, Subscription, UserState};
