//! Integration tests: the real server on a free loopback port, a fresh SQLite file each.

mod auth;
mod cli;
mod errors;
mod helpers;
mod keys;
mod readme;
mod roll;
mod secrets;
mod verify;
