//! End to end: the real `certflow` binary on a free loopback port, driven over
//! HTTP and through its own CLI, with what it issues checked by tools certflow
//! did not write (openssl, pkilint). Missing tools fail the test loudly. The
//! harness (processes, clients, peers) is in `support/`.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic, missing_docs)]

mod support;

mod acme_roles;
mod acme_server;
mod agent_input;
mod agent_nginx;
mod agent_paths;
mod agents;
mod ca_keys;
mod cli;
mod console_ui;
mod data_at_rest;
mod deployments;
mod destinations;
mod discovery;
mod embedded_server;
mod import;
mod login;
mod newcomer;
mod problems;
mod production_backends;
mod prometheus;
mod renewal;
mod replacement;
mod revocation;
mod shutdown;
mod strict_input;
mod takeover;
