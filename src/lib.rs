//! velo: Git-style branches for PostgreSQL on one Linux host.
//!
//! Data flows one way: [`cli`] parses and validates, [`ops`] orchestrates one use case per
//! command, and the infrastructure layers [`zfs`], [`docker`], [`pg`] and [`state`] know nothing
//! of each other. All output goes through [`ui::Shell`].

pub mod archive;
pub mod cli;
pub mod config;
pub mod docker;
pub mod fsx;
pub mod hostdir;
pub mod lines;
pub mod names;
pub mod ops;
pub mod pg;
pub mod pgfiles;
pub mod pgversion;
pub mod runtime;
pub mod source;
pub mod state;
pub mod storage;
pub mod ui;
pub mod zfs;
