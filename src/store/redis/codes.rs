//! Login codes and attempts at them, in Redis: `code:<digits>` holds the scene a live code
//! names and expires with the stream's wait; `attempts:<sender>` (a hash) counts a sender's
//! attempts in its current window, with the count each message got, and expires when the
//! window ends. Each operation touches one key, so
//! each is one command (or one script) and atomic in Redis, and any slot of a Cluster will do.

use std::sync::LazyLock;
use std::time::Duration;

use redis::Script;

use super::{RedisStore, bad_reply, err};
use crate::store::{StoreError, millis};
use crate::wechat::ids::Scene;

/// The script counting an attempt (immutable: its source and digest).
static ATTEMPT: LazyLock<Script> =
    LazyLock::new(|| Script::new(include_str!("../lua/code_attempt.lua")));

/// The script shortening a code's life on a Cluster (immutable: its source and digest).
static LAPSE: LazyLock<Script> =
    LazyLock::new(|| Script::new(include_str!("../lua/code_lapse.lua")));

impl RedisStore {
    pub(super) fn code_key(&self, code: &str) -> String {
        format!("{}code:{code}", self.inner.prefix)
    }

    fn attempts_key(&self, sender: &str) -> String {
        format!("{}attempts:{sender}", self.inner.prefix)
    }

    /// `SET NX PX`: the code is bound unless it is live already.
    pub(super) async fn reserve_code(
        &self,
        code: &str,
        scene: &Scene,
        ttl: Duration,
    ) -> Result<bool, StoreError> {
        self.set_if_absent(&self.code_key(code), scene.as_str(), ttl)
            .await
            .map_err(err)
    }

    pub(super) async fn lookup_code(&self, code: &str) -> Result<Option<Scene>, StoreError> {
        let stored: Option<String> = redis::cmd("GET")
            .arg(self.code_key(code))
            .query_async(&mut self.conn())
            .await
            .map_err(err)?;
        stored.map(scene_of).transpose()
    }

    /// Compare and delete (the script that releases a lock held by this instance).
    pub(super) async fn release_code(&self, code: &str, scene: &Scene) -> Result<bool, StoreError> {
        let deleted: i64 = self
            .inner
            .scripts
            .unlock
            .key(self.code_key(code))
            .arg(scene.as_str())
            .invoke_async(&mut self.conn())
            .await
            .map_err(err)?;
        Ok(deleted > 0)
    }

    /// On a Cluster, where `resolve.lua` cannot reach the code's slot: `code` lapses within
    /// `keep` if it still names `scene` (`lua/code_lapse.lua`). A failure leaves it to lapse
    /// with its wait: it names a resolved session, which it cannot log in again.
    pub(super) async fn lapse_code(&self, code: &str, scene: &Scene, keep: Duration) {
        let lapsed = LAPSE
            .key(self.code_key(code))
            .arg(scene.as_str())
            .arg(millis(keep))
            .invoke_async::<i64>(&mut self.conn())
            .await;
        if let Err(e) = lapsed {
            tracing::warn!(error = %err(e), scene = %scene.short(), "cannot shorten a resolved session's login code; it lapses with its wait");
        }
    }

    /// One script (`lua/code_attempt.lua`): the count, the message's, and the window's
    /// expiry together.
    pub(super) async fn count_attempt(
        &self,
        sender: &str,
        message: &str,
        window: Duration,
    ) -> Result<u32, StoreError> {
        let count: i64 = ATTEMPT
            .key(self.attempts_key(sender))
            .arg(millis(window).max(1))
            .arg(message)
            .invoke_async(&mut self.conn())
            .await
            .map_err(err)?;
        match u32::try_from(count) {
            Ok(count) if count > 0 => Ok(count),
            Err(_) if count > 0 => Ok(u32::MAX),
            _ => Err(bad_reply("code_attempt")),
        }
    }
}

/// The scene a code's key holds.
fn scene_of(stored: String) -> Result<Scene, StoreError> {
    Scene::parse(&stored).map_err(|_| StoreError::Corrupt {
        what: "login code's scene",
    })
}
