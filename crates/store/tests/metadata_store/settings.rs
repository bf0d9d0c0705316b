//! Settings: plain key/value round trips, and the counters kept in settings
//! (`increment_setting`, `raise_setting`) under concurrent writers.
//!
//! Add a case by wrapping its `async fn` in `store_case! { ... }` (see `main.rs`).

use certflow_core::ports::MetadataStore;

use crate::support::{futures_join_all, warm_up};

store_case! {
    async fn settings_round_trip_and_overwrite(store: &dyn MetadataStore) {
        assert_eq!(
            store.get_setting("bootstrap.token_hash").await.unwrap(),
            None
        );
        store
            .put_setting("bootstrap.token_hash", "abc")
            .await
            .unwrap();
        store
            .put_setting("other", "x'); DROP TABLE settings; --")
            .await
            .unwrap();
        assert_eq!(
            store
                .get_setting("bootstrap.token_hash")
                .await
                .unwrap()
                .as_deref(),
            Some("abc")
        );
        store
            .put_setting("bootstrap.token_hash", "def")
            .await
            .unwrap();
        assert_eq!(
            store
                .get_setting("bootstrap.token_hash")
                .await
                .unwrap()
                .as_deref(),
            Some("def")
        );
        assert_eq!(
            store.get_setting("other").await.unwrap().as_deref(),
            Some("x'); DROP TABLE settings; --")
        );
    }
}

store_case! {
    /// A counter starts at `initial`, then counts up by one; other keys and
    /// the plain settings API see the same value.
    async fn increment_setting_starts_at_initial_and_counts(store: &dyn MetadataStore) {
        assert_eq!(store.increment_setting("crl.a", 5).await.unwrap(), 5);
        assert_eq!(store.increment_setting("crl.a", 5).await.unwrap(), 6);
        // `initial` only matters when the key is absent.
        assert_eq!(store.increment_setting("crl.a", 100).await.unwrap(), 7);
        assert_eq!(store.increment_setting("crl.b", 1).await.unwrap(), 1);
        assert_eq!(
            store.get_setting("crl.a").await.unwrap().as_deref(),
            Some("7")
        );
        // Beyond 32 bits: CRL numbers are 64-bit (BIGINT) in both backends.
        store.put_setting("crl.c", "4294967296").await.unwrap();
        assert_eq!(
            store.increment_setting("crl.c", 1).await.unwrap(),
            4_294_967_297
        );
    }
}

store_case! {
    /// Racing increments (several replicas issuing CRLs) each get their own
    /// number and none is lost.
    async fn concurrent_increments_are_all_distinct(store: &dyn MetadataStore) {
        warm_up(store).await;
        let results =
            futures_join_all((0..16).map(|_| store.increment_setting("crl.race", 1))).await;
        let mut values: Vec<u64> = results.into_iter().map(Result::unwrap).collect();
        values.sort_unstable();
        assert_eq!(values, (1..=16).collect::<Vec<u64>>());
        assert_eq!(
            store.get_setting("crl.race").await.unwrap().as_deref(),
            Some("16")
        );
    }
}

store_case! {
    /// `raise_setting` moves a pointer forward only, comparing numerically.
    async fn raise_setting_never_lowers(store: &dyn MetadataStore) {
        let value = |s: Option<String>| s.map(|v| v.parse::<u64>().unwrap());
        assert!(store.raise_setting("crl.published", 9).await.unwrap());
        assert_eq!(
            value(store.get_setting("crl.published").await.unwrap()),
            Some(9)
        );
        // Numeric, not text, order: "10" > "9".
        assert!(store.raise_setting("crl.published", 10).await.unwrap());
        assert!(!store.raise_setting("crl.published", 10).await.unwrap());
        assert!(!store.raise_setting("crl.published", 2).await.unwrap());
        assert_eq!(
            value(store.get_setting("crl.published").await.unwrap()),
            Some(10)
        );
        assert!(store.raise_setting("crl.published", 11).await.unwrap());
        assert_eq!(
            value(store.get_setting("crl.published").await.unwrap()),
            Some(11)
        );

        // Racing raises: the largest wins whatever the order.
        warm_up(store).await;
        let results = futures_join_all(
            [40_u64, 17, 39, 3, 25, 12, 38, 1]
                .into_iter()
                .map(|v| store.raise_setting("crl.raced", v)),
        )
        .await;
        assert!(results.iter().all(Result::is_ok), "{results:?}");
        assert_eq!(
            value(store.get_setting("crl.raced").await.unwrap()),
            Some(40)
        );
    }
}
