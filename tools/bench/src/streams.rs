//! Held streams: open many `/sse` streams (all at once or at a rate), then either scan each
//! one (the tool plays WeChat) and time the push, or let them go. Used in-process and by the
//! worker processes alike.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use http_body_util::Full;
use hyper::Request;
use hyper::StatusCode;
use hyper::body::Bytes;
use serde::{Deserialize, Serialize};
use serde_json::Value;
use tokio::sync::mpsc;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;
use wxlogin_wechat::test_util::{scan_xml, signed_query};

use crate::net::{BenchError, Net, Pool, SseOpen, SseStream, open_sse, read_all, timed_out};
use crate::stats::{Tally, micros};

/// Seconds since the epoch: a callback's `timestamp` and `CreateTime`.
fn now_secs() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| i64::try_from(d.as_secs()).unwrap_or(i64::MAX))
        .unwrap_or_default()
}

/// The bound on opening one stream (connect, request, first event).
pub const OPEN_TIMEOUT: Duration = Duration::from_secs(60);
/// The bound on one callback request.
pub const CALLBACK_TIMEOUT: Duration = Duration::from_secs(10);
/// The most targets (instances) one run drives.
pub const MAX_TARGETS: usize = 64;

/// Settings every process of a run shares (workers receive them on stdin).
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Common {
    /// `http://127.0.0.1:PORT`, one per instance (`--target`).
    pub targets: Vec<String>,
    /// `API_TOKEN`.
    pub token: String,
    /// `MP_TOKEN`, to sign callbacks.
    pub mp_token: String,
    /// The account's `gh_` id (`ToUserName`).
    pub gh_id: String,
    /// Source addresses 127.0.0.1 ..= 127.0.0.`sources`.
    pub sources: usize,
}

/// The client side of one target: its sockets and keep-alive connections.
pub struct Endpoint {
    /// Sockets.
    pub net: Net,
    /// Keep-alive connections for callbacks and small requests.
    pub pool: Pool,
}

/// One process's client: an [`Endpoint`] per target, and the callback signer.
///
/// With several targets (instances sharing one Redis), stream `g` of the run (counted over
/// all processes) is held on target `g % T` and its scan is sent to the next one,
/// `(g + 1) % T`, so every scan crosses instances.
pub struct Ctx {
    /// One per target, in the order given; never empty.
    ends: Vec<Endpoint>,
    /// `/sse?token=…`.
    pub sse_path: String,
    mp_token: String,
    gh_id: String,
    /// Random per process, so openids (and so WeChat dedupe keys) never repeat across
    /// processes and runs.
    tag: u32,
    seq: AtomicU64,
}

impl Ctx {
    /// The client for `common`.
    pub fn new(common: &Common) -> Result<Arc<Self>, BenchError> {
        if common.targets.is_empty() || common.targets.len() > MAX_TARGETS {
            return Err(BenchError::new(
                "target",
                format!("give 1-{MAX_TARGETS} targets"),
            ));
        }
        let mut ends: Vec<Endpoint> = Vec::with_capacity(common.targets.len());
        for url in &common.targets {
            let target = crate::net::Target::parse(url)?;
            // The same instance twice would make a "crossing" scan a local one.
            if ends.iter().any(|e| e.net.addr() == target.addr) {
                return Err(BenchError::new(
                    "target",
                    format!("{url}: given twice; each target must be another instance"),
                ));
            }
            ends.push(Endpoint {
                net: Net::new(target, common.sources),
                pool: Pool::new(),
            });
        }
        let token = percent_encoding::utf8_percent_encode(
            &common.token,
            percent_encoding::NON_ALPHANUMERIC,
        );
        Ok(Arc::new(Self {
            ends,
            sse_path: format!("/sse?token={token}"),
            mp_token: common.mp_token.clone(),
            gh_id: common.gh_id.clone(),
            tag: rand::random(),
            seq: AtomicU64::new(0),
        }))
    }

    /// A fresh openid of WeChat's shape (28 characters), unique to this process.
    pub fn next_openid(&self) -> String {
        let seq = self.seq.fetch_add(1, Ordering::Relaxed);
        format!("o{:08x}{seq:019}", self.tag)
    }

    /// How many targets.
    pub fn targets(&self) -> usize {
        self.ends.len()
    }

    /// Target `k` (taken modulo the number of targets).
    pub fn end(&self, k: usize) -> &Endpoint {
        // `ends` is never empty (checked in `new`), so the modulo is in range.
        &self.ends[k % self.ends.len()]
    }

    /// The target that holds stream `g` of the run.
    pub fn holder_of(&self, g: usize) -> usize {
        g % self.ends.len()
    }

    /// The target that receives the scan of stream `g`: the next one after its holder, so
    /// that with several instances the result must cross over Redis.
    pub fn scanner_of(&self, g: usize) -> usize {
        (g + 1) % self.ends.len()
    }

    /// A correctly signed SCAN callback of `openid` for `scene`, addressed to target `to` (a
    /// unique `CreateTime` per openid, so no two are WeChat retries of each other).
    pub fn callback(
        &self,
        to: usize,
        scene: &str,
        openid: &str,
    ) -> Result<Request<Full<Bytes>>, BenchError> {
        let now = now_secs();
        // A nonce of its own per callback: the tool signs many thousands within one second,
        // where random nonces would now and then repeat, and one signed query with two bodies
        // is a replay that wxlogin refuses.
        let seq = self.seq.fetch_add(1, Ordering::Relaxed);
        let query = signed_query(
            &self.mp_token,
            now,
            &format!("{:08x}{seq}", self.tag),
            openid,
        );
        let xml = scan_xml(&self.gh_id, openid, now, false, scene, "bench-ticket");
        self.end(to)
            .net
            .post_xml(&format!("/wechat_event?{query}"), xml)
    }

    /// `GET /readyz` of target `k` as JSON.
    pub async fn readyz(&self, k: usize) -> Result<Value, BenchError> {
        let end = self.end(k);
        let req = end.net.get("/readyz")?;
        let (_, body) = tokio::time::timeout(CALLBACK_TIMEOUT, end.pool.fetch(&end.net, req))
            .await
            .map_err(|_| timed_out("readyz", CALLBACK_TIMEOUT))??;
        serde_json::from_slice(&body).map_err(|e| BenchError::new("readyz", e))
    }

    /// A count from every target's `/readyz`; `None` where a target did not answer or does
    /// not report it.
    pub async fn counts(&self, field: &str) -> Vec<Option<u64>> {
        let mut counts = Vec::with_capacity(self.ends.len());
        for k in 0..self.ends.len() {
            let ready = self.readyz(k).await.ok();
            counts.push(ready.and_then(|r| r.get(field)?.as_u64()));
        }
        counts
    }

    /// The servers' `open_streams`, summed over the targets, if all answer.
    pub async fn open_streams(&self) -> Option<u64> {
        self.counts("open_streams").await.into_iter().sum()
    }

    /// The servers' `live_scenes` (login sessions they still keep), summed, if all report
    /// them (the memory store does; Redis does not).
    pub async fn live_scenes(&self) -> Option<u64> {
        self.counts("live_scenes").await.into_iter().sum()
    }
}

/// Sends one callback to target `to` on a pooled connection: the instant it was handed to
/// the socket, its round trip, and whether the server answered `200 success`.
pub async fn send_callback(
    ctx: &Ctx,
    to: usize,
    scene: &str,
    openid: &str,
) -> Result<(Instant, Duration), BenchError> {
    let req = ctx.callback(to, scene, openid)?;
    let end = ctx.end(to);
    let mut conn = end.pool.get(&end.net).await?;
    let sent = Instant::now();
    let (status, body) = tokio::time::timeout(CALLBACK_TIMEOUT, read_all(&mut conn, req))
        .await
        .map_err(|_| timed_out("callback", CALLBACK_TIMEOUT))??;
    let rtt = sent.elapsed();
    end.pool.put(conn);
    if status != StatusCode::OK || &body[..] != b"success" {
        return Err(BenchError::new(
            "callback",
            format!("status {status}: {}", String::from_utf8_lossy(&body)),
        ));
    }
    Ok((sent, rtt))
}

/// A stream's first event: its scene.
pub fn scene_of(first: &str) -> Result<String, BenchError> {
    let v: Value = serde_json::from_str(first).map_err(|e| BenchError::new("first event", e))?;
    v.get("scene_id")
        .and_then(Value::as_str)
        .map(str::to_owned)
        .ok_or_else(|| BenchError::new("first event", "no scene_id"))
}

/// A result event: `(userId, event)`.
pub fn result_of(data: &str) -> (Option<String>, Option<String>) {
    let v: Value = serde_json::from_str(data).unwrap_or(Value::Null);
    let field = |k: &str| v.get(k).and_then(Value::as_str).map(str::to_owned);
    (field("userId"), field("event"))
}

/// How opening one stream went.
pub enum Opened {
    /// The stream is open: its scene, time to connect, time to the first event.
    Ok {
        scene: String,
        connect: Duration,
        first_event: Duration,
    },
    /// Refused with this status (503: no QR code).
    Status(StatusCode),
    /// Failed.
    Failed(BenchError),
}

/// Opens a stream on target `at` on a fresh connection and reads its first event.
pub async fn open_one(ctx: &Ctx, at: usize) -> (Opened, Option<SseStream>) {
    let started = Instant::now();
    let net = &ctx.end(at).net;
    let attempt = async {
        let conn = net.connect().await?;
        let connect = started.elapsed();
        match open_sse(net, conn, &ctx.sse_path).await? {
            SseOpen::Refused(status, _) => Ok((Opened::Status(status), None)),
            SseOpen::Stream(mut stream) => {
                let first = stream
                    .next_event()
                    .await?
                    .ok_or_else(|| BenchError::new("stream", "ended before the first event"))?;
                let scene = scene_of(&first)?;
                Ok((
                    Opened::Ok {
                        scene,
                        connect,
                        first_event: started.elapsed(),
                    },
                    Some(stream),
                ))
            }
        }
    };
    match tokio::time::timeout(OPEN_TIMEOUT, attempt).await {
        Ok(Ok(opened)) => opened,
        Ok(Err(e)) => (Opened::Failed(e), None),
        Err(_) => (Opened::Failed(timed_out("open", OPEN_TIMEOUT)), None),
    }
}

/// What opening the streams of one process gave.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct OpenReport {
    /// Streams asked for.
    pub attempted: u64,
    /// Streams open with their first event read.
    pub ok: u64,
    /// 503 answers (no QR code, or the stream cap reached).
    pub status_503: u64,
    /// 429 answers (the per-IP limit on new streams).
    pub status_429: u64,
    /// Other non-200 answers.
    pub status_other: u64,
    /// Failures, by kind (connect errors, timeouts, ...).
    pub errors: Tally,
    /// Connect time per opened stream, µs.
    pub connect_us: Vec<u64>,
    /// Request start (before connecting) to first event per opened stream, µs.
    pub first_event_us: Vec<u64>,
    /// From the first attempt to the last stream open, µs.
    pub open_all_us: u64,
    /// Streams whose first event took over [`SLOW_OPEN`], by the second (from the start of
    /// the phase) in which they started: shows when the server stalled.
    pub slow_by_second: std::collections::BTreeMap<u64, u64>,
}

/// What counts as a slow open in [`OpenReport::slow_by_second`].
pub const SLOW_OPEN: Duration = Duration::from_millis(10);

impl OpenReport {
    /// Adds another process's report (run concurrently: the longest time wins).
    pub fn merge(&mut self, other: OpenReport) {
        self.attempted += other.attempted;
        self.ok += other.ok;
        self.status_503 += other.status_503;
        self.status_429 += other.status_429;
        self.status_other += other.status_other;
        self.errors.merge(other.errors);
        self.connect_us.extend(other.connect_us);
        self.first_event_us.extend(other.first_event_us);
        self.open_all_us = self.open_all_us.max(other.open_all_us);
        for (second, n) in other.slow_by_second {
            *self.slow_by_second.entry(second).or_default() += n;
        }
    }
}

/// How a held stream ended.
#[derive(Debug)]
enum Held {
    /// Never opened.
    NotOpened,
    /// A data event arrived: when, its userId and event, and data events after it.
    Result {
        at: Instant,
        user_id: Option<String>,
        event: Option<String>,
        extra_events: u32,
    },
    /// The server ended it without a result.
    Ended,
    /// It broke.
    Failed,
    /// We let it go.
    Released,
}

/// The streams one process holds.
pub struct Holding {
    /// The run's number of this process's first stream (see [`Ctx`]).
    pub first: usize,
    /// The scene of each stream (`None`: not opened).
    pub scenes: Vec<Option<String>>,
    tasks: Vec<JoinHandle<Held>>,
    release: CancellationToken,
}

/// Opens `n` streams, `rate` per second (`0`: all at once), each held by its own task until
/// it gets a result or is released. They are the run's streams `first..first + n`: each is
/// opened on its holder ([`Ctx::holder_of`]).
pub async fn open_streams(
    ctx: &Arc<Ctx>,
    first: usize,
    n: usize,
    rate: f64,
) -> (Holding, OpenReport) {
    let release = CancellationToken::new();
    let (opened_tx, mut opened_rx) = mpsc::unbounded_channel::<(usize, Opened)>();
    let started = Instant::now();
    let spawner = {
        let ctx = Arc::clone(ctx);
        let release = release.clone();
        tokio::spawn(async move {
            let mut tasks = Vec::with_capacity(n);
            for i in 0..n {
                if rate > 0.0 {
                    let due = started + Duration::from_secs_f64(i as f64 / rate);
                    tokio::time::sleep_until(due.into()).await;
                }
                let ctx = Arc::clone(&ctx);
                let release = release.clone();
                let opened_tx = opened_tx.clone();
                tasks.push(tokio::spawn(async move {
                    let at = ctx.holder_of(first + i);
                    hold_one(&ctx, i, at, opened_tx, release).await
                }));
            }
            tasks
        })
    };
    let mut report = OpenReport {
        attempted: n as u64,
        ..OpenReport::default()
    };
    let mut scenes = vec![None; n];
    let mut last_open = started;
    for _ in 0..n {
        let Some((i, opened)) = opened_rx.recv().await else {
            break;
        };
        match opened {
            Opened::Ok {
                scene,
                connect,
                first_event,
            } => {
                report.ok += 1;
                report.connect_us.push(micros(connect));
                report.first_event_us.push(micros(first_event));
                scenes[i] = Some(scene);
                last_open = Instant::now();
                if first_event > SLOW_OPEN {
                    let began = last_open.saturating_duration_since(started + first_event);
                    *report.slow_by_second.entry(began.as_secs()).or_default() += 1;
                }
            }
            Opened::Status(s) if s == StatusCode::SERVICE_UNAVAILABLE => report.status_503 += 1,
            Opened::Status(s) if s == StatusCode::TOO_MANY_REQUESTS => report.status_429 += 1,
            Opened::Status(s) => {
                report.status_other += 1;
                report.errors.add(&BenchError::new("status", s.as_u16()));
            }
            Opened::Failed(e) => report.errors.add(&e),
        }
    }
    report.open_all_us = micros(last_open - started);
    let tasks = spawner.await.unwrap_or_default();
    (
        Holding {
            first,
            scenes,
            tasks,
            release,
        },
        report,
    )
}

async fn hold_one(
    ctx: &Ctx,
    i: usize,
    at: usize,
    opened_tx: mpsc::UnboundedSender<(usize, Opened)>,
    release: CancellationToken,
) -> Held {
    let (opened, stream) = open_one(ctx, at).await;
    let _ = opened_tx.send((i, opened));
    let Some(mut stream) = stream else {
        return Held::NotOpened;
    };
    let next = tokio::select! {
        next = stream.next_event() => next,
        () = release.cancelled() => return Held::Released,
    };
    match next {
        Ok(Some(data)) => {
            let at = Instant::now();
            let (user_id, event) = result_of(&data);
            // Exactly one result, then the end: count anything else that arrives.
            let mut extra_events = 0;
            let wait = Duration::from_secs(2);
            while let Ok(Ok(Some(_))) = tokio::time::timeout(wait, stream.next_event()).await {
                extra_events += 1;
            }
            Held::Result {
                at,
                user_id,
                event,
                extra_events,
            }
        }
        Ok(None) => Held::Ended,
        Err(_) => Held::Failed,
    }
}

impl Holding {
    /// Lets every stream go (closing its connection) and waits for the tasks; returns how
    /// many had ended on their own before (the server must not end a waiting stream).
    pub async fn release(self) -> u64 {
        self.release.cancel();
        let mut ended_early = 0;
        for task in self.tasks {
            if let Ok(Held::Result { .. } | Held::Ended | Held::Failed) = task.await {
                ended_early += 1;
            }
        }
        ended_early
    }
}

/// What scanning the held streams gave.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct ScanReport {
    /// Callbacks sent.
    pub scans: u64,
    /// Callbacks sent to another instance than the one holding the stream.
    pub crossed: u64,
    /// Callbacks not answered `200 success`.
    pub callback_errors: Tally,
    /// Streams that received exactly their own openid.
    pub delivered: u64,
    /// Scanned streams that received nothing (or a timeout event).
    pub lost: u64,
    /// Streams that received another openid, or more than one event.
    pub misdelivered: u64,
    /// Streams the server ended without a result, or that broke, before their scan.
    pub ended_early: u64,
    /// Callback sent → result event received, µs.
    pub push_us: Vec<u64>,
    /// Callback request round trips, µs.
    pub callback_rtt_us: Vec<u64>,
    /// From the first callback to the last, µs.
    pub send_span_us: u64,
}

impl ScanReport {
    /// Adds another process's report.
    pub fn merge(&mut self, other: ScanReport) {
        self.scans += other.scans;
        self.crossed += other.crossed;
        self.callback_errors.merge(other.callback_errors);
        self.delivered += other.delivered;
        self.lost += other.lost;
        self.misdelivered += other.misdelivered;
        self.ended_early += other.ended_early;
        self.push_us.extend(other.push_us);
        self.callback_rtt_us.extend(other.callback_rtt_us);
        self.send_span_us = self.send_span_us.max(other.send_span_us);
    }
}

/// Scans every held stream once, `rate` callbacks per second, each with its own openid, and
/// checks that each stream receives exactly its own. Streams without a result `settle` after
/// the last callback count as lost.
pub async fn scan_held(
    ctx: &Arc<Ctx>,
    holding: Holding,
    rate: f64,
    settle: Duration,
) -> Result<ScanReport, BenchError> {
    let Holding {
        first,
        scenes,
        tasks,
        release,
    } = holding;
    // Enough warm connections for the rate at a few ms per round trip, over the targets.
    let warm = ((rate / 100.0).ceil() as usize).clamp(4, 64);
    let warm = warm.div_ceil(ctx.targets()).max(2);
    for k in 0..ctx.targets() {
        let end = ctx.end(k);
        end.pool.warm(&end.net, warm).await?;
    }
    let targets: Vec<(usize, String)> = scenes
        .iter()
        .enumerate()
        .filter_map(|(i, s)| s.clone().map(|s| (i, s)))
        .collect();
    let started = Instant::now();
    let mut sends = Vec::with_capacity(targets.len());
    for (k, (i, scene)) in targets.into_iter().enumerate() {
        if rate > 0.0 {
            let due = started + Duration::from_secs_f64(k as f64 / rate);
            tokio::time::sleep_until(due.into()).await;
        }
        let ctx = Arc::clone(ctx);
        sends.push(tokio::spawn(async move {
            let openid = ctx.next_openid();
            let to = ctx.scanner_of(first + i);
            let sent = send_callback(&ctx, to, &scene, &openid).await;
            (i, to != ctx.holder_of(first + i), openid, sent)
        }));
    }
    let mut report = ScanReport::default();
    // Per stream: the openid its scan carried, and when the callback left (if it was
    // answered).
    let mut expected: Vec<Option<(String, Option<Instant>)>> = vec![None; scenes.len()];
    let mut scanned = vec![false; scenes.len()];
    let mut first_sent: Option<Instant> = None;
    let mut last_sent = started;
    for send in sends {
        let Ok((i, crossed, openid, sent)) = send.await else {
            continue;
        };
        report.scans += 1;
        report.crossed += u64::from(crossed);
        scanned[i] = true;
        match sent {
            Ok((at, rtt)) => {
                report.callback_rtt_us.push(micros(rtt));
                first_sent = Some(first_sent.map_or(at, |f| f.min(at)));
                last_sent = last_sent.max(at);
                expected[i] = Some((openid, Some(at)));
            }
            Err(e) => {
                report.callback_errors.add(&e);
                expected[i] = Some((openid, None));
            }
        }
    }
    report.send_span_us = micros(last_sent - first_sent.unwrap_or(last_sent));
    let deadline = tokio::time::Instant::from_std(Instant::now() + settle);
    for (i, mut task) in tasks.into_iter().enumerate() {
        let held = match tokio::time::timeout_at(deadline, &mut task).await {
            Ok(held) => held,
            Err(_) => {
                release.cancel();
                task.await
            }
        };
        let Ok(held) = held else {
            report.lost += u64::from(scanned[i]);
            continue;
        };
        match (held, expected[i].as_ref()) {
            (Held::NotOpened, _) => {}
            (
                Held::Result {
                    at,
                    user_id,
                    event,
                    extra_events,
                },
                Some((openid, sent)),
            ) => {
                if event.as_deref() == Some("timeout") {
                    report.lost += 1;
                } else if user_id.as_deref() != Some(openid.as_str()) || extra_events > 0 {
                    report.misdelivered += 1;
                } else {
                    report.delivered += 1;
                    if let Some(sent) = sent {
                        report
                            .push_us
                            .push(micros(at.saturating_duration_since(*sent)));
                    }
                }
            }
            // A result for a stream that was never scanned: not its own.
            (Held::Result { event, .. }, None) => {
                if event.as_deref() != Some("timeout") {
                    report.misdelivered += 1;
                }
            }
            (Held::Released, _) => report.lost += u64::from(scanned[i]),
            (Held::Ended | Held::Failed, _) => {
                report.ended_early += 1;
                report.lost += u64::from(scanned[i]);
            }
        }
    }
    Ok(report)
}
