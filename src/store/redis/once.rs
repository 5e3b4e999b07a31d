//! Values read once, in Redis: `handoff:<key>` holds the value and expires with it. Put is
//! `SET NX PX`, take is `GETDEL` (Redis 6.2): each one command on one key, so atomic, and any
//! slot of a Cluster will do.

use std::time::Duration;

use super::{RedisStore, err};
use crate::store::StoreError;

impl RedisStore {
    fn handoff_key(&self, key: &str) -> String {
        format!("{}handoff:{key}", self.inner.prefix)
    }

    pub(super) async fn put_once(
        &self,
        key: &str,
        value: &str,
        ttl: Duration,
    ) -> Result<bool, StoreError> {
        self.set_if_absent(&self.handoff_key(key), value, ttl)
            .await
            .map_err(err)
    }

    pub(super) async fn take_once(&self, key: &str) -> Result<Option<String>, StoreError> {
        redis::cmd("GETDEL")
            .arg(self.handoff_key(key))
            .query_async(&mut self.conn())
            .await
            .map_err(err)
    }
}
