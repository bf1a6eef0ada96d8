//! velo's record of what it made: the model ([`model`]) and its locked, atomic store ([`store`]).

mod journal;
mod model;
mod store;

pub use journal::*;
pub use model::*;
pub use store::{Store, StoreError};
