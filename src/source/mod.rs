//! The PostgreSQL server (or dump file) a project is imported from: its address, kept and
//! shown without its password ([`address`]); the password, found the way libpq finds it but
//! only in files the user may trust ([`password`]); and what the client tools' messages mean
//! ([`messages`]). Pure: this module runs nothing and talks to no server.

pub mod address;
pub mod messages;
pub mod password;

pub use address::{SourceUrl, UrlError};
pub use messages::SourceError;
pub use password::Password;
