//! Re-reading `ACCOUNTS_FILE` while the process runs: on SIGHUP ([`Reloader::reload`], which
//! the binary calls) and when the file's content changes (polled every [`POLL`]).
//!
//! A poll of the content rather than a file-system watch: it sees the file replaced by a
//! rename (editors, `kubectl` config maps swapping a symlink) as well as written in place,
//! needs nothing of the platform, and costs one read of a small file a second. A file that
//! does not parse or validate is refused with one line, and the accounts served are kept.

use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio_util::sync::CancellationToken;

use super::Accounts;
use crate::config::{self, AccountConfig, accounts_file_digest as digest};

/// How often the file is looked at.
pub const POLL: Duration = Duration::from_secs(1);

/// Re-reads the accounts file into the registry. Cheap to share.
pub struct Reloader {
    accounts: Arc<Accounts>,
    /// The environment's account, which the file cannot change (read once at start-up).
    env: Option<AccountConfig>,
    path: PathBuf,
    /// The digest of the content last seen (`None`: unreadable), so a poll reloads only
    /// when the content changed, and a refused file is refused once.
    seen: Mutex<Option<[u8; 32]>>,
}

impl Reloader {
    /// A reloader of `path` into `accounts`, the file as read at start-up being the one
    /// served.
    pub fn new(accounts: Arc<Accounts>, env: Option<AccountConfig>, path: PathBuf) -> Self {
        let seen = Mutex::new(digest(&path));
        warn_if_readable(&path);
        Self {
            accounts,
            env,
            path,
            seen,
        }
    }

    /// Reads the file again and serves its accounts: added ones at once, removed ones no
    /// more, changed ones rebuilt, the others untouched. A refused file changes nothing.
    pub fn reload(&self) {
        *lock(&self.seen) = digest(&self.path);
        let set = match config::read_accounts(self.env.as_ref(), &self.path) {
            Ok(set) => set,
            Err(e) => {
                tracing::error!("{e}; the accounts served are kept");
                return;
            }
        };
        warn_if_readable(&self.path);
        match self.accounts.replace(&set) {
            Ok(changes) => tracing::info!(
                added = ?changes.added,
                changed = ?changes.changed,
                removed = ?changes.removed,
                "accounts reloaded"
            ),
            Err(e) => tracing::error!("{e}; the accounts served are kept"),
        }
    }

    /// Reloads whenever the file's content changes, until `cancel`.
    pub async fn watch(self: Arc<Self>, cancel: CancellationToken) {
        let mut tick = tokio::time::interval(POLL);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                _ = tick.tick() => {}
                () = cancel.cancelled() => return,
            }
            let path = self.path.clone();
            let now = tokio::task::spawn_blocking(move || digest(&path))
                .await
                .unwrap_or(None);
            if now != *lock(&self.seen) {
                self.reload();
            }
        }
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

fn warn_if_readable(path: &std::path::Path) {
    if let Some(warning) = config::accounts_file_warning(path) {
        tracing::warn!("{warning}");
    }
}
