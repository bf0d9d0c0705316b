//! The blob store in the metadata database (`blob.kind = "database"`): what
//! the `BlobStore` port promises, on every backend.

use bytes::Bytes;
use certflow_core::DomainError;
use certflow_core::ports::BlobStore;

use crate::support::futures_join_all;

store_case! {
    async fn blobs_round_trip_list_and_delete<S: BlobStore>(store: &S) {
        store
            .put_all(vec![
                ("certificates/a/1/cert.der".into(), Bytes::from_static(b"\x30\x82der")),
                ("certificates/a/1/key.enc".into(), Bytes::from_static(b"sealed")),
                ("certificates/ab/1/cert.der".into(), Bytes::from_static(b"other")),
                ("acme/accounts/x".into(), Bytes::from_static(b"{}")),
            ])
            .await
            .unwrap();
        assert_eq!(
            store.get("certificates/a/1/cert.der").await.unwrap(),
            Bytes::from_static(b"\x30\x82der")
        );
        // A prefix ending in '/' lists only what is under that folder.
        assert_eq!(
            store.list("certificates/a/").await.unwrap(),
            vec!["certificates/a/1/cert.der", "certificates/a/1/key.enc"]
        );
        assert_eq!(store.list("certificates/").await.unwrap().len(), 3);
        let aged = store.list_with_age("acme/").await.unwrap();
        assert_eq!(aged.len(), 1);
        assert!((time::OffsetDateTime::now_utc() - aged[0].1).whole_seconds().abs() < 60);
        // Overwriting replaces; deleting twice is fine; a missing blob is NotFound.
        store.put("acme/accounts/x", Bytes::from_static(b"{\"v\":2}")).await.unwrap();
        assert_eq!(store.get("acme/accounts/x").await.unwrap(), Bytes::from_static(b"{\"v\":2}"));
        store.delete("certificates/a/1/key.enc").await.unwrap();
        store.delete("certificates/a/1/key.enc").await.unwrap();
        assert!(matches!(
            store.get("certificates/a/1/key.enc").await,
            Err(DomainError::NotFound(_))
        ));
        assert!(store.put("../escape", Bytes::new()).await.is_err());
    }
}

store_case! {
    /// Concurrent writers' blobs are committed together, each readable after.
    async fn concurrent_blob_batches_all_land<S: BlobStore>(store: &S) {
        let results = futures_join_all((0..30).map(|i| {
            store.put_all(vec![
                (format!("certificates/{i}/1/cert.der"), Bytes::from(format!("cert {i}"))),
                (format!("certificates/{i}/1/chain.pem"), Bytes::from(format!("chain {i}"))),
            ])
        }))
        .await;
        for r in results {
            r.unwrap();
        }
        for i in 0..30 {
            assert_eq!(
                store.get(&format!("certificates/{i}/1/chain.pem")).await.unwrap(),
                Bytes::from(format!("chain {i}"))
            );
        }
        assert_eq!(store.list("certificates/").await.unwrap().len(), 60);
    }
}
