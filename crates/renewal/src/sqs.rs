//! The Amazon SQS renewal queue (work in progress).

/// Where the SQS queues are.
#[derive(Debug, Clone)]
pub struct SqsOptions {}

/// Renewal queue on Amazon SQS.
#[derive(Debug)]
pub struct SqsRenewalQueue {}
