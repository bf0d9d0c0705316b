//! certflow's domain: what a managed certificate is, the rules its names and
//! profiles obey, and the ports (traits) through which the rest of the system
//! stores and fetches it. No I/O, no HTTP or SQL types; time comes in as `now`.

pub mod access;
pub mod acme;
pub mod agents;
pub mod ca_keys;
pub mod compliance;
pub mod deployments;
pub mod destinations;
pub mod discovery;
pub mod error;
pub mod model;
pub mod names;
pub mod notify;
pub mod outbound;
pub mod policy;
pub mod ports;
pub mod profile;
pub mod renewal;
pub mod session;

pub use error::{DomainError, DomainResult, FieldError};
pub use model::*;
pub use names::{SubjectName, validate_names};
pub use profile::Profile;
pub use renewal::RenewalPolicy;
