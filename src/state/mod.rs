//! velo's record of what it made: the model ([`model`]), where projects keep their data and
//! run their servers ([`records`]), the journal of commands in flight ([`journal`]), and the
//! locked, atomic store ([`store`]) that upgrades older files ([`migrate`]).

mod history;
mod imported;
mod journal;
mod migrate;
mod model;
mod records;
mod store;

pub use history::*;
pub use imported::*;
pub use journal::*;
pub use migrate::MigrateError;
pub use model::*;
pub use records::*;
pub use store::{Store, StoreError, only_root_controls};
