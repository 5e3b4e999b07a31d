//! State that the instances of wxlogin share: the one place that knows where it lives.
//!
//! - the stock of fresh QR codes (taken atomically: one code, one stream), with reservations
//!   so that instances refilling together keep the shared stock bounded;
//! - login sessions by scene, with the stream holding each (an instance and a generation),
//!   resolved once by a scan and then holding the result for a reconnecting stream;
//! - keys claimed once (WeChat's retries of a callback, used login token ids);
//! - the count of QR codes made per day, against the daily budget;
//! - login codes bound to their scenes (unique among live codes, until their wait ends), and the
//!   attempts at a code each sender made in the current window;
//! - the WeChat access token, shared with a refresh lock ([`crate::wechat::token::TokenShare`]);
//! - the random key page tokens are signed under ([`Store::page_key`]);
//! - values read once (a web authorization's state and result: [`Store::once_take`]);
//! - notices to the instance holding a stream ([`Inbox`]).
//!
//! Two backends behind one trait object: [`memory`] (the default: one process) and
//! [`redis`] (several instances). The store does not know what a QR code or a login result
//! is: it keeps them as the login flow encodes them and reads only times and holders.

pub mod memory;
pub mod redis;

use std::fmt;
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use futures_util::future::BoxFuture;
use tokio_util::sync::CancellationToken;

use crate::wechat::callback::Binding;
use crate::wechat::ids::Scene;
use crate::wechat::token::TokenShare;

/// How long past its deadline a session with a stream attached may stay, should its stream
/// fail to close it (it closes it at the deadline).
pub const ATTACHED_GRACE: Duration = Duration::from_secs(30);

/// Now, in Unix milliseconds: the store's clock, the same on every instance (give or take
/// their skew).
pub fn unix_now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(millis)
        .unwrap_or_default()
}

/// The Unix milliseconds of an `Instant` of this process.
pub fn instant_to_ms(at: Instant) -> u64 {
    let now = Instant::now();
    let now_ms = unix_now_ms();
    if at >= now {
        now_ms.saturating_add(millis(at - now))
    } else {
        now_ms.saturating_sub(millis(now - at))
    }
}

/// The `Instant` of this process at Unix milliseconds `ms`.
pub fn ms_to_instant(ms: u64) -> Instant {
    let now = Instant::now();
    let now_ms = unix_now_ms();
    if ms >= now_ms {
        now + Duration::from_millis(ms - now_ms)
    } else {
        now.checked_sub(Duration::from_millis(now_ms - ms))
            .unwrap_or(now)
    }
}

/// Milliseconds of a duration, saturated.
pub fn millis(d: Duration) -> u64 {
    u64::try_from(d.as_millis()).unwrap_or(u64::MAX)
}

/// Why the store could not answer. Callers answer 503 (browsers) or 5xx (WeChat retries); the
/// HTTP layer maps it, and logs it, in one place.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// Redis could not be reached, or refused the command.
    #[error("store unavailable: {0}")]
    Unavailable(#[source] ::redis::RedisError),
    /// This instance's subscription to results published by the others is down.
    #[error("store unavailable: the inbox subscription is down")]
    InboxDown,
    /// Redis answered, but not as the command or script returns.
    #[error("store unavailable: unexpected reply from Redis to {what}")]
    UnexpectedReply {
        /// The operation.
        what: &'static str,
    },
    /// A stored value does not read as what was written.
    #[error("store unavailable: a stored {what} is unreadable")]
    Corrupt {
        /// What was read.
        what: &'static str,
    },
    /// A value could not be written out for the store.
    #[error("cannot encode {what}: {source}")]
    Encode {
        /// What was written.
        what: &'static str,
        /// Why.
        #[source]
        source: serde_json::Error,
    },
}

impl StoreError {
    /// The kind, as a log field.
    pub fn kind(&self) -> &'static str {
        match self {
            Self::Unavailable(_) => "unavailable",
            Self::InboxDown => "inbox_down",
            Self::UnexpectedReply { .. } => "unexpected_reply",
            Self::Corrupt { .. } => "corrupt",
            Self::Encode { .. } => "encode",
        }
    }
}

/// The stream holding a waiting session: an instance, and which of its attachments.
#[derive(Clone, PartialEq, Eq)]
pub struct Holder {
    /// The instance's id (random per process).
    pub instance: Arc<str>,
    /// The attachment's generation on that instance: a resumed stream gets a new one.
    pub generation: u64,
}

impl Holder {
    /// `instance/generation`, as stored.
    pub fn encode(&self) -> String {
        format!("{}/{}", self.instance, self.generation)
    }

    /// Parses [`Holder::encode`]'s form; `None` for an empty or malformed value.
    pub fn decode(s: &str) -> Option<Self> {
        let (instance, generation) = s.rsplit_once('/')?;
        Some(Self {
            instance: instance.into(),
            generation: generation.parse().ok()?,
        })
    }
}

impl fmt::Debug for Holder {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.encode())
    }
}

/// A login session as the store keeps it. `qr` is the login flow's encoding of the QR code;
/// times are Unix milliseconds so that every instance reads them alike.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SessionRecord {
    /// The QR code, encoded by the login flow.
    pub qr: String,
    /// Who the login token will be for, if bound to a page's origin.
    pub audience: Option<String>,
    /// When the wait ends.
    pub deadline_ms: u64,
    /// When the QR code expires: a parked result is kept until then.
    pub expires_ms: u64,
    /// The digest of the stream's key (hex): resuming the session, or reading its result,
    /// needs the key itself, which only the stream's browser has.
    pub key_digest: String,
}

/// Where a session stands.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum SessionState {
    /// Waiting for a scan; `holder` is the stream attached now, if any.
    Waiting {
        /// The attached stream.
        holder: Option<Holder>,
    },
    /// Scanned; the result as the login flow encoded it.
    Done {
        /// The encoded result.
        result: String,
        /// Until when it is kept (Unix ms): the QR code's expiry for a parked result, a short
        /// resume window for one handed to its stream (see [`Store::resolve`]).
        kept_until_ms: u64,
    },
}

/// A session read from the store.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Snapshot {
    /// What was opened.
    pub record: SessionRecord,
    /// Where it stands.
    pub state: SessionState,
}

/// What a reconnecting stream finds ([`Store::attach`]).
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Attached {
    /// The session waits and the new holder is attached; `replaced` held it before (its
    /// stream must end; the store has told its instance when that is another one).
    Waiting {
        /// The session.
        record: SessionRecord,
        /// The holder it replaced.
        replaced: Option<Holder>,
    },
    /// The session was scanned: the result, for a stream that has not seen it.
    Result {
        /// The session.
        record: SessionRecord,
        /// The encoded result.
        result: String,
    },
}

/// What became of a scan: the one answer of the store, the sessions and the login flow. `H`
/// is who was handed the result: the store names the holder ([`Holder`]), so the instance that
/// holds the stream can deliver it; above the store it is `()`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Outcome<H = ()> {
    /// Handed to the stream waiting on its scene (here, or on the instance that holds it).
    Delivered(H),
    /// Its session waits but no stream is attached (or its instance is not listening): the
    /// result is kept for the stream's return.
    Parked,
    /// No session waits on that scene (unknown, resolved, closed, or its wait is over).
    Nobody,
    /// The callback (its query and body) or its event was seen before: WeChat retrying.
    /// `login` tells whether the first one logged somebody in, to answer alike.
    Duplicate {
        /// Whether the first one was a login.
        login: bool,
    },
    /// The callback's signed query came before with another body: a replay, refused.
    Replayed,
}

impl<H> Outcome<H> {
    /// The outcome without its holder.
    pub fn forget_holder(&self) -> Outcome {
        match self {
            Self::Delivered(_) => Outcome::Delivered(()),
            Self::Parked => Outcome::Parked,
            Self::Nobody => Outcome::Nobody,
            Self::Duplicate { login } => Outcome::Duplicate { login: *login },
            Self::Replayed => Outcome::Replayed,
        }
    }

    /// Whether the scan logged somebody in (delivered now or on resume), or is a retry of one
    /// that did: such a callback is answered with the login's reply.
    pub fn is_login(&self) -> bool {
        matches!(
            self,
            Self::Delivered(_) | Self::Parked | Self::Duplicate { login: true }
        )
    }

    /// The outcome as the `outcome` label of `wxlogin_scans_total`; a replay is not a scan
    /// (it is counted as a rejected callback).
    pub fn label(&self) -> Option<&'static str> {
        match self {
            Self::Delivered(_) => Some("delivered"),
            Self::Parked => Some("parked"),
            Self::Nobody => Some("undeliverable"),
            Self::Duplicate { .. } => Some("duplicate"),
            Self::Replayed => None,
        }
    }
}

/// A scan's first look at the store ([`Store::session_or_bind`]): the scene's session, or,
/// when it has none, what recording the callback's binding found.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Found {
    /// The scene has a session: the binding is left to [`Store::resolve`].
    Session(Snapshot),
    /// No session: the callback's binding is recorded (or found bound) already.
    Bound(Bound),
}

/// What recording a callback's binding found ([`Store::bind`]).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Bound {
    /// The query was not seen before: now it is bound to this body.
    First,
    /// The same query with the same body: WeChat retrying. `login` tells whether the first
    /// one logged somebody in.
    Retry {
        /// Whether the first one was a login.
        login: bool,
    },
    /// The query was bound to another body: a replay, refused.
    Conflict,
}

/// What became of a session whose stream ended the wait ([`Store::close`]).
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Closed {
    /// The session is removed: a later scan resolves nothing.
    Closed,
    /// A scan resolved it first (its notice may still be on its way): the encoded result,
    /// for the stream to send instead of its timeout.
    Resolved(String),
    /// Another stream holds it now, or it is gone.
    NotHeld,
}

/// A message for this instance about a stream it holds.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Notice {
    /// The session of `scene` was resolved while held by `generation`.
    Result {
        /// The scene.
        scene: Scene,
        /// The attachment it is for.
        generation: u64,
        /// The encoded result.
        result: String,
    },
    /// A stream on another instance resumed the session: attachment `generation` ends.
    Replaced {
        /// The scene.
        scene: Scene,
        /// The attachment replaced.
        generation: u64,
    },
}

/// Where [`Store::listen`] hands notices (implemented by the login flow).
pub trait Inbox: Send + Sync + 'static {
    /// A notice for a stream of this instance.
    fn notice(&self, notice: Notice);
    /// The channel carrying notices was (re)established: notices sent meanwhile may have been
    /// lost, so the streams held here check their sessions ([`Store::recover`]). The instance
    /// reports itself ready once this is done.
    fn reconnected(&self) -> BoxFuture<'static, ()>;
}

/// A QR code in the shared stock: its scene (unique), the login flow's encoding, its expiry.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct StockedQr {
    /// The scene, which also names its reservation.
    pub scene: String,
    /// When WeChat stops honouring it (Unix ms).
    pub expires_ms: u64,
    /// The QR code, encoded by the login flow.
    pub payload: String,
}

/// The shared state, behind one interface; a trait object so the backend is picked from
/// config. Every operation that changes a session is one atomic step in the store.
pub trait Store: Send + Sync + 'static {
    /// This instance's id, which [`Holder`]s name.
    fn instance(&self) -> &Arc<str>;

    /// Whether the store answers now (readiness).
    fn ping(&self) -> BoxFuture<'_, Result<(), StoreError>>;

    /// Sets `key` if it is absent, to expire after `ttl`. `true` when this call set it: the
    /// caller is the first to see the event the key names.
    fn claim_once<'a>(
        &'a self,
        key: &'a str,
        ttl: Duration,
    ) -> BoxFuture<'a, Result<bool, StoreError>>;

    /// The random key behind page tokens, one for every instance: `candidate` becomes it
    /// unless one is set already, and the one set is returned. It never expires: losing it
    /// revokes every page token.
    fn page_key<'a>(
        &'a self,
        candidate: &'a [u8; 32],
    ) -> BoxFuture<'a, Result<[u8; 32], StoreError>>;

    // ------------------------------------------------------------------ QR stock

    /// Reserves room in the stock for codes about to be made, named by their scenes: as many
    /// as fit under `target` counting codes in stock and reservations held (each for
    /// `hold`). Returns how many of `scenes` (the first ones) may be made.
    fn stock_reserve<'a>(
        &'a self,
        scenes: &'a [String],
        target: usize,
        hold: Duration,
    ) -> BoxFuture<'a, Result<usize, StoreError>>;

    /// Adds a code made under a reservation, and ends the reservation.
    fn stock_put<'a>(&'a self, qr: &'a StockedQr) -> BoxFuture<'a, Result<(), StoreError>>;

    /// Ends the reservation of a code that could not be made.
    fn stock_release<'a>(&'a self, scene: &'a str) -> BoxFuture<'a, Result<(), StoreError>>;

    /// Takes the oldest code expiring at or after `fresh_until_ms`, dropping older ones that
    /// expire sooner. A code is taken once, by one caller, whatever the instance.
    fn stock_take(
        &self,
        fresh_until_ms: u64,
    ) -> BoxFuture<'_, Result<Option<StockedQr>, StoreError>>;

    /// Codes in stock (any age).
    fn stock_len(&self) -> BoxFuture<'_, Result<usize, StoreError>>;

    // ------------------------------------------------------------------ daily budget

    /// Counts one QR code about to be made on `day` (any name that changes each day), unless
    /// `budget` codes were counted that day already: one atomic step, so instances counting
    /// together never pass the budget. `Some(count)` with the count including this one, or
    /// `None` when the budget is spent. A day's count is kept for two days.
    fn qr_budget_take<'a>(
        &'a self,
        day: &'a str,
        budget: u64,
    ) -> BoxFuture<'a, Result<Option<u64>, StoreError>>;

    /// The QR codes counted on `day` by [`Store::qr_budget_take`].
    fn qr_made_on<'a>(&'a self, day: &'a str) -> BoxFuture<'a, Result<u64, StoreError>>;

    // ------------------------------------------------------------------ login codes

    /// Binds the login code `code` (its digits) to `scene` for `ttl` (the stream's wait),
    /// unless a live code has those digits already, here or on any instance: `false` then,
    /// nothing changed, and the caller draws another code.
    fn code_reserve<'a>(
        &'a self,
        code: &'a str,
        scene: &'a Scene,
        ttl: Duration,
    ) -> BoxFuture<'a, Result<bool, StoreError>>;

    /// The scene a live code names, leaving the code in place.
    fn code_lookup<'a>(&'a self, code: &'a str)
    -> BoxFuture<'a, Result<Option<Scene>, StoreError>>;

    /// Removes `code` if it still names `scene` (its stream ended without it): a code that
    /// expired and was reserved again for another stream is left alone. `true` when removed.
    fn code_release<'a>(
        &'a self,
        code: &'a str,
        scene: &'a Scene,
    ) -> BoxFuture<'a, Result<bool, StoreError>>;

    /// Counts one attempt at a code by `sender` (an openid), the text message `message` (its
    /// `MsgId`), in a fixed window of `window` that starts with the first attempt: the count
    /// including this one, which the caller holds against its limit. A message counted before
    /// in the window (WeChat retrying it, under the same query or a new one) is not counted
    /// again: it gets the count it got then. One atomic step; instances count together.
    fn code_attempt<'a>(
        &'a self,
        sender: &'a str,
        message: &'a str,
        window: Duration,
    ) -> BoxFuture<'a, Result<u32, StoreError>>;

    // ------------------------------------------------------------------ values read once

    /// Keeps `value` under `key` for `ttl`, unless `key` holds a value already (`false` then,
    /// nothing changed). For what one browser hands another step of its own login: a web
    /// authorization's state, its result.
    fn once_put<'a>(
        &'a self,
        key: &'a str,
        value: &'a str,
        ttl: Duration,
    ) -> BoxFuture<'a, Result<bool, StoreError>>;

    /// Takes the value under `key`: read and removed in one atomic step, so that of callers
    /// racing, on any instance, one gets it. `None` when there is none, or its time is over.
    fn once_take<'a>(&'a self, key: &'a str) -> BoxFuture<'a, Result<Option<String>, StoreError>>;

    // ------------------------------------------------------------------ sessions

    /// Opens a session for a freshly taken code, held by `holder`.
    fn open<'a>(
        &'a self,
        scene: &'a Scene,
        record: &'a SessionRecord,
        holder: &'a Holder,
    ) -> BoxFuture<'a, Result<(), StoreError>>;

    /// A reconnecting stream (`holder`) names `scene` and proves it is the session's with
    /// the digest of its key: attach it if the session waits (replacing the holder), or hand
    /// it the result unless it has it (`has_result`) or the result's time is over. `None`,
    /// with nothing changed, when there is nothing to resume or the key is not the session's.
    fn attach<'a>(
        &'a self,
        scene: &'a Scene,
        key_digest: &'a str,
        holder: &'a Holder,
        has_result: bool,
        now_ms: u64,
    ) -> BoxFuture<'a, Result<Option<Attached>, StoreError>>;

    /// The stream `holder` went away: the session stays, unattached, until its deadline.
    /// No-op unless `holder` still holds it. Owns its arguments: it runs from a `Drop`.
    fn detach(&self, scene: Scene, holder: Holder) -> BoxFuture<'static, Result<(), StoreError>>;

    /// The stream `holder` ended the wait without a result: the session is removed and a later
    /// scan resolves nothing; unless a scan resolved it first, whose result is returned.
    /// No-op unless `holder` still holds it.
    fn close<'a>(
        &'a self,
        scene: &'a Scene,
        holder: &'a Holder,
    ) -> BoxFuture<'a, Result<Closed, StoreError>>;

    /// A result meant for a stream of this instance found the stream gone: it is kept for
    /// the stream's return until the QR code expires, as a parked one is.
    fn keep_for_return<'a>(&'a self, scene: &'a Scene) -> BoxFuture<'a, Result<(), StoreError>>;

    /// Reads a session.
    fn session<'a>(
        &'a self,
        scene: &'a Scene,
    ) -> BoxFuture<'a, Result<Option<Snapshot>, StoreError>>;

    /// After notices may have been lost: the session as it stands now, re-created as waiting
    /// for `holder` if the store lost it while its wait goes on (a restarted Redis).
    fn recover<'a>(
        &'a self,
        scene: &'a Scene,
        record: &'a SessionRecord,
        holder: &'a Holder,
        now_ms: u64,
    ) -> BoxFuture<'a, Result<Option<Snapshot>, StoreError>>;

    /// Records a callback's binding ([`Binding`]) of a callback that is not a login scan
    /// (or that found no session), unless its query is bound already.
    fn bind<'a>(&'a self, binding: &'a Binding) -> BoxFuture<'a, Result<Bound, StoreError>>;

    /// Reads the session of `scene`; when there is none, records `binding` as [`Store::bind`]
    /// does, in the same step: a scan that can resolve nothing (an expired or unknown QR code)
    /// costs one round trip, its query bound all the same.
    fn session_or_bind<'a>(
        &'a self,
        scene: &'a Scene,
        binding: &'a Binding,
    ) -> BoxFuture<'a, Result<Found, StoreError>>;

    /// Resolves a scan of `scene`, once, in one atomic step: records the callback's
    /// `binding` ([`Outcome::Replayed`] if its query is bound to another body,
    /// [`Outcome::Duplicate`] if to this one), claims `event_key` (for `event_ttl`;
    /// [`Outcome::Duplicate`] if claimed before), then, when `result` is given and the
    /// session waits, stores the result, detaches the holder and notifies its instance. A
    /// result handed to a stream is kept `keep` longer (at most until the QR code expires),
    /// for that stream's reconnect should the result not reach its browser; a parked one
    /// until the QR code expires. The session itself stays until its wait is over, so that a
    /// resolved session is never taken for a lost one and opened again. The session's login
    /// `code`, if it has one, lapses `keep` after the resolution (not later than it would):
    /// a late sender of it is told the login is over while the result is kept, and a busy
    /// site's codes in use follow its waiting streams, not every stream of the last wait.
    #[allow(clippy::too_many_arguments)]
    fn resolve<'a>(
        &'a self,
        scene: &'a Scene,
        binding: &'a Binding,
        event_key: &'a str,
        event_ttl: Duration,
        result: Option<&'a str>,
        code: Option<&'a str>,
        keep: Duration,
        now_ms: u64,
    ) -> BoxFuture<'a, Result<Outcome<Holder>, StoreError>>;

    /// Sessions held now, when the backend can count them cheaply.
    fn live_sessions(&self) -> Option<usize>;

    /// Drops what expired (the memory backend; Redis expires keys itself).
    fn purge_expired(&self);

    /// Hands notices for this instance's streams to `inbox` until `cancel`, reconnecting as
    /// needed (and telling `inbox` each time it is connected).
    fn listen(&self, inbox: Arc<dyn Inbox>, cancel: CancellationToken) -> BoxFuture<'static, ()>;

    /// The shared access token, when instances share one.
    fn token_share(&self) -> Option<Arc<dyn TokenShare>>;
}
