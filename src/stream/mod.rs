//! Live state for web clients. Each user has one latest-value channel ([`latest`]) holding a
//! [`Live`] ([`live`]): the state streams show, the [`signals`] they act on besides
//! (reminders, keepalive beats, shutdown), and the record's marks. [`state`] keeps every
//! user's channel (found through [`users`]) and the connection caps; [`feed`] turns one
//! connection's view into frames in one of the two wire formats ([`legacy`], [`jmap`]);
//! [`beat`] is the one keepalive clock; and [`persist`] keeps the state beyond the process.
//!
//! `stream` receives state changes from `route` through [`StateHub::apply`], which never waits,
//! and hands bytes to `http`. It never reads a database and never holds a lock across `.await`.

pub mod beat;
pub mod feed;
pub mod jmap;
pub mod latest;
pub mod legacy;
pub mod live;
pub mod persist;
pub mod reminder;
pub mod signals;
pub mod stamp;
pub mod state;
pub mod users;

pub use feed::{Feed, FeedOptions, Format, JmapFormat, JmapIds};
pub use live::{Live, UserState};
pub use state::{StateHub, SubscribeError, Subscription};
