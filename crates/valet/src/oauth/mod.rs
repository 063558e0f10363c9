//! OAuth 2.0 client credentials: clients, signing keys and access tokens.

pub mod client;
pub mod provider;
pub mod sealing;
pub mod service;
pub mod signing;
