//! TEMPORARY diagnostics; removed before hand-off.
#![allow(clippy::unwrap_used, missing_docs)]
use certflow_core::ports::MetadataStore;
#[tokio::main(flavor = "current_thread")]
async fn main() {
    let url = std::env::args().nth(1).unwrap();
    let store = certflow_store::PgStore::connect(&url, certflow_store::PgOptions::default()).await.unwrap();
    let now = time::OffsetDateTime::from_unix_timestamp(1_767_225_600).unwrap();
    for _ in 0..15 {
        let t = std::time::Instant::now();
        let n = store.due_for_renewal(now, 1000).await.unwrap().len();
        eprintln!("total {n} {:?}", t.elapsed());
    }
}
