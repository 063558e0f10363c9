//! Integration tests: the real server on a free loopback port, each test on a fresh
//! SQLite file or PostgreSQL schema.

mod auth;
mod bootstrap;
mod cache;
mod cli;
mod cli_clients;
mod crash;
mod errors;
mod forward;
mod helpers;
mod hostile;
mod keys;
mod multinode;
mod nginx;
mod oauth;
mod process;
mod proxy;
mod readme;
mod restart;
mod roll;
mod secrets;
mod serving;
mod throttle;
mod transport;
mod verify;
