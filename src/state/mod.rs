//! velo's record of what it made: the model ([`model`]) and its locked, atomic store ([`store`]).

mod model;
mod store;

pub use model::*;
pub use store::{Store, StoreError};
