//! The scenarios of the performance targets, each printing one JSON line: `waiters`, `scan-to-push`,
//! `callbacks` (against `/healthz` in the same run), `churn`. The first two may drive several
//! instances at once (streams spread over them, scans sent across); the others drive one.

use std::collections::VecDeque;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use http_body_util::Full;
use hyper::body::Bytes;
use hyper::{Request, StatusCode};
use serde_json::{Value, json};
use tokio::sync::mpsc;
use wxlogin_wechat::ids::{Scene, ScenePrefix};

use crate::net::{BenchError, SseOpen, open_sse, read_all, timed_out};
use crate::stats::{
    CpuWatch, Servers, Summary, Tally, cpu_delta, delta, listen_overflows, micros, round3,
    summarize,
};
use crate::streams::{CALLBACK_TIMEOUT, Common, Ctx, result_of, scene_of, send_callback};
use crate::workers::{Job, finish_split, open_split};

/// The shape of wxlogin's login scenes (its `SCENE_PREFIX`): callbacks for such scenes that
/// nobody waits on take the whole login path up to the store.
const LOGIN_SCENES: ScenePrefix = ScenePrefix::new("wxl_");

/// What every scenario runs with.
pub struct Run {
    /// The settings shared with workers.
    pub common: Common,
    /// This process's client.
    pub ctx: Arc<Ctx>,
    /// The servers, for RSS and CPU (`--server-pid`), summed over the instances.
    pub server: Servers,
    /// Streams one process may hold.
    pub per_process: usize,
    /// The bound on one phase.
    pub max_time: Duration,
}

/// Arguments of `waiters`.
pub struct Waiters {
    /// Streams to hold.
    pub n: usize,
    /// New streams per second; 0 opens them all at once.
    pub rate: f64,
    /// How long to hold them once open before measuring RSS again.
    pub hold: Duration,
    /// How long to wait for the server to count zero streams after letting them go.
    pub drain: Duration,
}

/// Arguments of `scan-to-push`.
pub struct ScanToPush {
    /// Streams to hold and scan.
    pub n: usize,
    /// Callbacks per second.
    pub rate: f64,
    /// New streams per second while opening (0: all at once).
    pub open_rate: f64,
    /// Grace after the last callback before a stream without result counts as lost.
    pub settle: Duration,
}

/// Arguments of `callbacks`.
pub struct Callbacks {
    /// Connections.
    pub concurrency: usize,
    /// Time given to each kind of request, in all.
    pub duration: Duration,
    /// Slices that time is cut into, the kinds taking turns.
    pub rounds: u32,
}

/// Arguments of `churn`.
pub struct Churn {
    /// Logins started per second.
    pub rate: f64,
    /// How long.
    pub duration: Duration,
    /// Between the QR code and the scan (the user finding their phone).
    pub think: Duration,
    /// RSS "at start" is read this long after the load began, once the working set (the
    /// connections in flight, the QR stock's turnover, the results kept for a reconnect) is
    /// in place.
    pub warmup: Duration,
    /// After the load, how long to wait for the server's live sessions to reach zero (it
    /// keeps a delivered result `RESULT_KEEP_SECS` for a reconnect).
    pub settle: Duration,
}

fn secs(us: u64) -> f64 {
    round3(us as f64 / 1e6)
}

fn rss_per_stream(before: Option<u64>, after: Option<u64>, streams: u64) -> Option<f64> {
    let (before, after) = (before?, after?);
    (streams > 0).then(|| round3((after as f64 - before as f64) / streams as f64))
}

/// Polls `/readyz` until the server counts at most `base` open streams, or `within` passes.
/// Returns the seconds it took and the last count.
async fn drain(ctx: &Ctx, base: u64, within: Duration) -> (Option<f64>, Option<u64>) {
    let started = Instant::now();
    loop {
        let open = ctx.open_streams().await;
        if open.is_some_and(|o| o <= base) {
            return (Some(round3(started.elapsed().as_secs_f64())), open);
        }
        if started.elapsed() >= within {
            return (None, open);
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Holds `n` streams: time to open them, first-event latency, errors, 503s, RSS per stream.
pub async fn waiters(run: &Run, a: &Waiters) -> Result<Value, BenchError> {
    let cpu = CpuWatch::start(&run.server);
    let server_cpu0 = run.server.cpu_secs();
    let base = run.ctx.open_streams().await.unwrap_or(0);
    let rss_before = run.server.rss_kib();
    let overflows0 = listen_overflows();
    let (split, open) = open_split(
        &run.common,
        &run.ctx,
        Job::Hold,
        a.n,
        a.rate,
        run.per_process,
        run.max_time,
    )
    .await?;
    let processes = split.processes();
    let rss_opened = run.server.rss_kib();
    let open_by_target = run.ctx.counts("open_streams").await;
    let server_open: Option<u64> = open_by_target.iter().copied().sum();
    let server_fds = run.server.fds();
    let server_cpu_open = run.server.cpu_secs();
    let overflows = delta(overflows0, listen_overflows());
    tokio::time::sleep(a.hold).await;
    let rss_held = run.server.rss_kib();
    let finish = finish_split(split, Job::Hold, run.max_time).await?;
    let (drain_s, open_after) = drain(&run.ctx, base, a.drain).await;
    let live_after = run.ctx.live_scenes().await;
    let rss_after = run.server.rss_kib();
    Ok(json!({
        "scenario": "waiters",
        "n": a.n,
        "open_rate": if a.rate > 0.0 { json!(a.rate) } else { json!("all at once") },
        "targets": run.ctx.targets(),
        "processes": processes,
        "opened": open.ok,
        "errors": open.errors.total() + open.status_other,
        "status_503": open.status_503,
        "status_429": open.status_429,
        "error_kinds": open.errors.0,
        "open_all_s": secs(open.open_all_us),
        "connect_ms": summarize(open.connect_us),
        "first_event_ms": summarize(open.first_event_us),
        "slow_opens_by_second": open.slow_by_second,
        "listen_overflows": overflows,
        "server_open_streams": server_open,
        "server_open_streams_by_target": open_by_target,
        "server_fds": server_fds,
        "ended_early": finish.ended_early,
        "hold_s": a.hold.as_secs_f64(),
        "rss_before_kib": rss_before,
        "rss_opened_kib": rss_opened,
        "rss_held_kib": rss_held,
        "rss_per_stream_kib": rss_per_stream(rss_before, rss_held.max(rss_opened), open.ok),
        "rss_after_close_kib": rss_after,
        "open_streams_after_close": open_after,
        "live_scenes_after_close": live_after,
        "close_drain_s": drain_s,
        "server_cpu_open_s": cpu_delta(server_cpu0, server_cpu_open),
        "cpu": cpu.report(finish.workers_cpu_s),
    }))
}

/// Holds `n` streams, scans each once at a fixed rate, and times callback → result.
pub async fn scan_to_push(run: &Run, a: &ScanToPush) -> Result<Value, BenchError> {
    let cpu = CpuWatch::start(&run.server);
    let base = run.ctx.open_streams().await.unwrap_or(0);
    let rss_before = run.server.rss_kib();
    let overflows0 = listen_overflows();
    let settle_ms = u64::try_from(a.settle.as_millis()).unwrap_or(u64::MAX);
    let job = Job::Scan {
        rate: a.rate,
        settle_ms,
    };
    let (split, open) = open_split(
        &run.common,
        &run.ctx,
        job,
        a.n,
        a.open_rate,
        run.per_process,
        run.max_time,
    )
    .await?;
    let processes = split.processes();
    let rss_held = run.server.rss_kib();
    let open_by_target = run.ctx.counts("open_streams").await;
    let server_open: Option<u64> = open_by_target.iter().copied().sum();
    let server_cpu0 = run.server.cpu_secs();
    let finish = finish_split(split, job, run.max_time).await?;
    let server_cpu_scan = cpu_delta(server_cpu0, run.server.cpu_secs());
    let scan = finish.scan.unwrap_or_default();
    let (_, open_after) = drain(&run.ctx, base, Duration::from_secs(5)).await;
    let live_after = run.ctx.live_scenes().await;
    let achieved = if scan.send_span_us > 0 {
        round3(scan.scans.saturating_sub(1) as f64 / secs(scan.send_span_us))
    } else {
        0.0
    };
    Ok(json!({
        "scenario": "scan-to-push",
        "n": a.n,
        "rate": a.rate,
        "targets": run.ctx.targets(),
        "processes": processes,
        "opened": open.ok,
        "open_errors": open.errors.total() + open.status_other,
        "open_503": open.status_503,
        "open_429": open.status_429,
        "open_error_kinds": open.errors.0,
        "first_event_ms": summarize(open.first_event_us),
        "slow_opens_by_second": open.slow_by_second,
        "listen_overflows": delta(overflows0, listen_overflows()),
        "server_open_streams": server_open,
        "server_open_streams_by_target": open_by_target,
        "scans": scan.scans,
        "scans_crossed": scan.crossed,
        "achieved_rate": achieved,
        "delivered": scan.delivered,
        "lost": scan.lost,
        "misdelivered": scan.misdelivered,
        "ended_early": scan.ended_early,
        "callback_errors": scan.callback_errors.total(),
        "callback_error_kinds": scan.callback_errors.0,
        "push_ms": summarize(scan.push_us),
        "callback_rtt_ms": summarize(scan.callback_rtt_us),
        "rss_before_kib": rss_before,
        "rss_held_kib": rss_held,
        "rss_per_stream_kib": rss_per_stream(rss_before, rss_held, open.ok),
        "open_streams_after": open_after,
        "live_scenes_after": live_after,
        "server_cpu_scan_s": server_cpu_scan,
        "cpu": cpu.report(finish.workers_cpu_s),
    }))
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum Hammer {
    Callback,
    Healthz,
}

#[derive(Default)]
struct Hammered {
    requests: u64,
    errors: Tally,
    latency_us: Vec<u64>,
    elapsed: Duration,
    server_cpu_s: Option<f64>,
    cpu: Value,
}

impl Hammered {
    /// Adds another slice of the same kind.
    fn add(&mut self, other: Hammered) {
        if self.requests == 0 && self.elapsed.is_zero() {
            *self = other;
            return;
        }
        self.requests += other.requests;
        self.errors.merge(other.errors);
        self.latency_us.extend(other.latency_us);
        self.elapsed += other.elapsed;
        self.server_cpu_s = match (self.server_cpu_s, other.server_cpu_s) {
            (Some(a), Some(b)) => Some(round3(a + b)),
            _ => None,
        };
        // The CPU figures are seconds: they add up, field by field.
        if let (Value::Object(mine), Value::Object(theirs)) = (&mut self.cpu, other.cpu) {
            for (k, v) in theirs {
                let sum = match (mine.get(&k).and_then(Value::as_f64), v.as_f64()) {
                    (Some(a), Some(b)) => json!(round3(a + b)),
                    _ => Value::Null,
                };
                mine.insert(k, sum);
            }
        }
    }
}

/// Callbacks per second of the run that are signed before it starts: more than this machine
/// serves, so the timed phase spends the tool's CPU on the traffic, not on playing WeChat.
const PREBUILT_PER_SEC: u64 = 100_000;
/// Callbacks are pre-signed only for phases this short: their timestamps must stay well
/// inside the server's 5-minute window.
const PREBUILT_MAX_PHASE: Duration = Duration::from_secs(120);

/// Signed callbacks for scenes nobody waits on, each with its own openid (so no two are
/// retries of one event), made before a timed phase. WeChat signs on its own machines: the
/// tool sharing the machine's two cores with the server should not charge that work to the
/// callbacks' rate when `/healthz`, its yardstick, costs the tool nothing of the kind.
fn prebuilt_callbacks(ctx: &Ctx, n: u64) -> VecDeque<Request<Full<Bytes>>> {
    (0..n)
        .filter_map(|_| {
            let openid = ctx.next_openid();
            ctx.callback(0, Scene::random(LOGIN_SCENES).as_str(), &openid)
                .ok()
        })
        .collect()
}

/// `concurrency` connections, each sending requests back to back until `duration` passes.
async fn hammer(run: &Run, kind: Hammer, concurrency: usize, duration: Duration) -> Hammered {
    let per_task =
        (PREBUILT_PER_SEC as f64 * duration.as_secs_f64() / concurrency as f64).ceil() as u64;
    let mut prebuilt: Vec<VecDeque<Request<Full<Bytes>>>> = (0..concurrency)
        .map(|_| match kind {
            Hammer::Callback if duration <= PREBUILT_MAX_PHASE => {
                prebuilt_callbacks(&run.ctx, per_task)
            }
            _ => VecDeque::new(),
        })
        .collect();
    let cpu = CpuWatch::start(&run.server);
    let server_cpu0 = run.server.cpu_secs();
    let started = Instant::now();
    let deadline = started + duration;
    let mut tasks = Vec::with_capacity(concurrency);
    for _ in 0..concurrency {
        let ctx = Arc::clone(&run.ctx);
        let mut ready = prebuilt.pop().unwrap_or_default();
        tasks.push(tokio::spawn(async move {
            let mut latency_us = Vec::new();
            let mut errors = Tally::default();
            let mut conn = None;
            let net = &ctx.end(0).net;
            while Instant::now() < deadline {
                if conn.is_none() {
                    match net.connect().await {
                        Ok(c) => conn = Some(c),
                        Err(e) => {
                            errors.add(&e);
                            tokio::time::sleep(Duration::from_millis(10)).await;
                            continue;
                        }
                    }
                }
                let req = match (kind, ready.pop_front()) {
                    (Hammer::Callback, Some(req)) => Ok(req),
                    (Hammer::Callback, None) => {
                        let openid = ctx.next_openid();
                        ctx.callback(0, Scene::random(LOGIN_SCENES).as_str(), &openid)
                    }
                    (Hammer::Healthz, _) => net.get("/healthz"),
                };
                let (Some(c), Ok(req)) = (conn.as_mut(), req) else {
                    break;
                };
                let sent = Instant::now();
                let answer = tokio::time::timeout(CALLBACK_TIMEOUT, read_all(c, req)).await;
                let want: &[u8] = if kind == Hammer::Callback {
                    b"success"
                } else {
                    b"ok"
                };
                match answer {
                    Ok(Ok((StatusCode::OK, body))) if &body[..] == want => {
                        latency_us.push(micros(sent.elapsed()));
                    }
                    Ok(Ok((status, _))) => {
                        errors.add(&BenchError::new("status", status.as_u16()));
                    }
                    Ok(Err(e)) => {
                        errors.add(&e);
                        conn = None;
                    }
                    Err(_) => {
                        errors.add(&timed_out("request", CALLBACK_TIMEOUT));
                        conn = None;
                    }
                }
            }
            // Unsent requests are dropped after the phase is timed.
            (latency_us, errors, ready)
        }));
    }
    let mut out = Hammered {
        requests: 0,
        errors: Tally::default(),
        latency_us: Vec::new(),
        elapsed: Duration::ZERO,
        server_cpu_s: None,
        cpu: Value::Null,
    };
    let mut unsent = Vec::with_capacity(concurrency);
    for task in tasks {
        if let Ok((latency_us, errors, ready)) = task.await {
            out.requests += latency_us.len() as u64;
            out.latency_us.extend(latency_us);
            out.errors.merge(errors);
            unsent.push(ready);
        }
    }
    out.elapsed = started.elapsed();
    out.server_cpu_s = cpu_delta(server_cpu0, run.server.cpu_secs());
    out.cpu = cpu.report(0.0);
    drop(unsent);
    out
}

fn hammered_json(h: Hammered) -> (f64, Value) {
    let rps = round3(h.requests as f64 / h.elapsed.as_secs_f64().max(1e-9));
    let cpu_us = h
        .server_cpu_s
        .filter(|_| h.requests > 0)
        .map(|c| round3(c * 1e6 / h.requests as f64));
    let value = json!({
        "requests": h.requests,
        "rps": rps,
        "errors": h.errors.total(),
        "error_kinds": h.errors.0,
        "latency_ms": summarize(h.latency_us),
        "server_cpu_s": h.server_cpu_s,
        "server_cpu_us_per_request": cpu_us,
        "cpu": h.cpu,
    });
    (rps, value)
}

/// Signed callbacks for scenes nobody waits on at full speed, then `/healthz` the same way,
/// in turns: a shared machine's speed drifts over seconds, and taking turns puts the drift on
/// both kinds alike instead of on the ratio.
pub async fn callbacks(run: &Run, a: &Callbacks) -> Result<Value, BenchError> {
    let rounds = a.rounds.max(1);
    let slice = a.duration / rounds;
    let (mut cb, mut hz) = (Hammered::default(), Hammered::default());
    for _ in 0..rounds {
        cb.add(hammer(run, Hammer::Callback, a.concurrency, slice).await);
        hz.add(hammer(run, Hammer::Healthz, a.concurrency, slice).await);
    }
    let (cb_rps, cb) = hammered_json(cb);
    let (hz_rps, hz) = hammered_json(hz);
    Ok(json!({
        "scenario": "callbacks",
        "concurrency": a.concurrency,
        "duration_s": a.duration.as_secs_f64(),
        "rounds": rounds,
        "callbacks": cb,
        "healthz": hz,
        "ratio": if hz_rps > 0.0 { round3(cb_rps / hz_rps) } else { 0.0 },
        "vs_fastapi_2500": round3(cb_rps / 2500.0),
    }))
}

/// How one login of the churn went.
enum Login {
    Ok {
        first_event: Duration,
        push: Duration,
    },
    Status(StatusCode),
    Lost,
    Misdelivered,
    Failed(BenchError),
}

/// One login on a keep-alive connection: open, QR, (think), scan, result, end of stream.
async fn login(ctx: &Ctx, think: Duration) -> Login {
    let started = Instant::now();
    let attempt = async {
        let end = ctx.end(0);
        let conn = end.pool.get(&end.net).await?;
        let mut stream = match open_sse(&end.net, conn, &ctx.sse_path).await? {
            SseOpen::Stream(s) => s,
            SseOpen::Refused(status, conn) => {
                end.pool.put(conn);
                return Ok(Login::Status(status));
            }
        };
        let first = stream
            .next_event()
            .await?
            .ok_or_else(|| BenchError::new("stream", "ended before the first event"))?;
        let first_event = started.elapsed();
        let scene = scene_of(&first)?;
        tokio::time::sleep(think).await;
        let openid = ctx.next_openid();
        let result = async {
            let next = stream.next_event().await;
            (next, Instant::now())
        };
        let (sent, (result, at)) = tokio::join!(send_callback(ctx, 0, &scene, &openid), result);
        let (sent, _) = sent?;
        let Some(data) = result? else {
            return Ok(Login::Lost);
        };
        let (user_id, event) = result_of(&data);
        if event.as_deref() == Some("timeout") {
            return Ok(Login::Lost);
        }
        if user_id.as_deref() != Some(openid.as_str()) {
            return Ok(Login::Misdelivered);
        }
        // The stream must end now; then the connection serves the next login.
        if stream.next_event().await?.is_some() {
            return Ok(Login::Misdelivered);
        }
        end.pool.put(stream.into_conn());
        Ok(Login::Ok {
            first_event,
            push: at.saturating_duration_since(sent),
        })
    };
    let bound = think + Duration::from_secs(60);
    match tokio::time::timeout(bound, attempt).await {
        Ok(Ok(login)) => login,
        Ok(Err(e)) => Login::Failed(e),
        Err(_) => Login::Failed(timed_out("login", bound)),
    }
}

/// Logins started at a steady rate for a while; RSS at start and end, and what is left.
pub async fn churn(run: &Run, a: &Churn) -> Result<Value, BenchError> {
    let ctx = &run.ctx;
    let cpu = CpuWatch::start(&run.server);
    let server_cpu0 = run.server.cpu_secs();
    let warm = ((a.rate / 50.0).ceil() as usize).clamp(4, 256);
    let end = ctx.end(0);
    end.pool.warm(&end.net, warm).await?;
    let base = ctx.open_streams().await.unwrap_or(0);
    let rss_fresh = run.server.rss_kib();
    let mut rss_start = None;
    let overflows0 = listen_overflows();
    let total = (a.rate * a.duration.as_secs_f64()).round() as u64;
    let (tx, mut rx) = mpsc::unbounded_channel::<Login>();
    let in_flight = Arc::new(AtomicU64::new(0));
    let max_in_flight = Arc::new(AtomicU64::new(0));
    let started = Instant::now();
    let spawner = {
        let ctx = Arc::clone(ctx);
        let in_flight = Arc::clone(&in_flight);
        let max_in_flight = Arc::clone(&max_in_flight);
        let think = a.think;
        let rate = a.rate;
        tokio::spawn(async move {
            for k in 0..total {
                let due = started + Duration::from_secs_f64(k as f64 / rate);
                tokio::time::sleep_until(due.into()).await;
                let now = in_flight.fetch_add(1, Ordering::Relaxed) + 1;
                max_in_flight.fetch_max(now, Ordering::Relaxed);
                let ctx = Arc::clone(&ctx);
                let tx = tx.clone();
                let in_flight = Arc::clone(&in_flight);
                tokio::spawn(async move {
                    let outcome = login(&ctx, think).await;
                    in_flight.fetch_sub(1, Ordering::Relaxed);
                    let _ = tx.send(outcome);
                });
            }
            started.elapsed()
        })
    };
    // RSS every few seconds while it runs.
    let mut rss_samples: Vec<(f64, u64)> = Vec::new();
    let sample_every = (a.duration / 20).max(Duration::from_secs(1));
    let mut next_sample = Instant::now();
    let (mut ok, mut lost, mut misdelivered, mut status_503, mut done) = (0u64, 0, 0, 0, 0);
    let mut errors = Tally::default();
    let mut first_us = Vec::with_capacity(usize::try_from(total).unwrap_or(0));
    let mut push_us = Vec::with_capacity(usize::try_from(total).unwrap_or(0));
    let hard_stop = started + a.duration + a.think + Duration::from_secs(90);
    while done < total && Instant::now() < hard_stop {
        if rss_start.is_none() && started.elapsed() >= a.warmup {
            rss_start = run.server.rss_kib();
        }
        if Instant::now() >= next_sample {
            if let Some(rss) = run.server.rss_kib() {
                rss_samples.push((round3(started.elapsed().as_secs_f64()), rss));
            }
            next_sample += sample_every;
        }
        let wait = next_sample
            .saturating_duration_since(Instant::now())
            .min(Duration::from_millis(100));
        let Ok(Some(outcome)) = tokio::time::timeout(wait, rx.recv()).await else {
            continue;
        };
        done += 1;
        match outcome {
            Login::Ok { first_event, push } => {
                ok += 1;
                first_us.push(micros(first_event));
                push_us.push(micros(push));
            }
            Login::Status(s) if s == StatusCode::SERVICE_UNAVAILABLE => status_503 += 1,
            Login::Status(s) => errors.add(&BenchError::new("status", s.as_u16())),
            Login::Lost => lost += 1,
            Login::Misdelivered => misdelivered += 1,
            Login::Failed(e) => errors.add(&e),
        }
    }
    spawner.abort();
    let spawn_span = spawner.await.ok();
    let (drain_s, open_after) = drain(ctx, base, Duration::from_secs(30)).await;
    let rss_end = run.server.rss_kib();
    let ready = ctx.readyz(0).await.ok();
    let pool_stock = ready
        .as_ref()
        .and_then(|r| r.get("pool")?.get("stock")?.as_u64());
    let live_after = ready.as_ref().and_then(|r| r.get("live_scenes")?.as_u64());
    // Then the sessions kept for a reconnect must go too: nothing may be left over.
    let settle_started = Instant::now();
    let mut live_settled = live_after;
    while live_settled.is_some_and(|n| n > 0) && settle_started.elapsed() < a.settle {
        tokio::time::sleep(Duration::from_secs(1)).await;
        live_settled = ctx.live_scenes().await;
    }
    let settled_s = live_settled
        .filter(|n| *n == 0)
        .map(|_| round3(settle_started.elapsed().as_secs_f64()));
    let rss_settled = run.server.rss_kib();
    let rss_max = rss_samples.iter().map(|s| s.1).chain(rss_end).max();
    let change = match (rss_start, rss_end) {
        (Some(s), Some(e)) if s > 0 => Some(round3((e as f64 - s as f64) * 100.0 / s as f64)),
        _ => None,
    };
    let server_cpu = cpu_delta(server_cpu0, run.server.cpu_secs());
    let push: Summary = summarize(push_us);
    Ok(json!({
        "scenario": "churn",
        "rate": a.rate,
        "duration_s": a.duration.as_secs_f64(),
        "think_ms": a.think.as_millis() as u64,
        "attempted": total,
        "finished": done,
        "logins_ok": ok,
        "started_rate": spawn_span.map(|d| round3(total as f64 / d.as_secs_f64().max(1e-9))),
        "status_503": status_503,
        "errors": errors.total(),
        "error_kinds": errors.0,
        "lost": lost,
        "misdelivered": misdelivered,
        "max_in_flight": max_in_flight.load(Ordering::Relaxed),
        "listen_overflows": delta(overflows0, listen_overflows()),
        "first_event_ms": summarize(first_us),
        "push_ms": push,
        "rss_fresh_kib": rss_fresh,
        "warmup_s": a.warmup.as_secs_f64(),
        "rss_start_kib": rss_start,
        "rss_end_kib": rss_end,
        "rss_max_kib": rss_max,
        "rss_change_pct": change,
        "rss_samples": rss_samples,
        "open_streams_after": open_after,
        "live_scenes_after": live_after,
        "live_scenes_settled": live_settled,
        "live_scenes_zero_after_s": settled_s,
        "rss_settled_kib": rss_settled,
        "drain_s": drain_s,
        "pool_stock_after": pool_stock,
        "server_cpu_s": server_cpu,
        "server_cpu_us_per_login": server_cpu.filter(|_| ok > 0).map(|c| round3(c * 1e6 / ok as f64)),
        "cpu": cpu.report(0.0),
    }))
}
