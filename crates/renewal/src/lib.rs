//! Auto-renewal: the scheduler finds certificates whose renewal time has come
//! and enqueues one job per (certificate, version); workers take jobs from the
//! queue (the database's, or Amazon SQS) and renew through the services layer,
//! which asks the certificate's issuer (internal CA or ACME).

mod scheduler;
pub mod sqs;
mod worker;

pub use scheduler::{ScanReport, Scheduler, SchedulerSettings};
pub use sqs::{SqsDepth, SqsOptions, SqsRenewalQueue, ensure_queues};
pub use worker::{Worker, WorkerSettings, WorkerStats};
