//! Prometheus metrics: one registry per app (no process-global state, so several apps in
//! one process, as in the tests, keep their own counts).
//!
//! Counters are bumped where things happen; gauges of current state (open streams, QR stock,
//! live sessions) are read when `/metrics` is scraped.

use std::sync::Arc;
use std::time::Duration;

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::Histogram;
use prometheus_client::registry::Registry;

/// A label set with one `outcome` / `reason` value.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct Outcome {
    /// What happened.
    pub outcome: String,
}

/// A WeChat API call's labels.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ApiCall {
    /// `stable_token` or `qrcode_create`.
    pub api: String,
    /// `ok`, the errcode, or `request_error` / `unreadable`.
    pub result: String,
}

/// A rejected callback's label.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct Rejection {
    /// Why it was rejected.
    pub reason: String,
}

/// The app's metrics. Share as `Arc<Metrics>`.
pub struct Metrics {
    registry: Registry,
    /// Streams attached now (set at scrape time).
    pub open_streams: Gauge,
    /// Sessions held now (set at scrape time).
    pub live_scenes: Gauge,
    /// QR codes in stock (set at scrape time).
    pub qr_stock: Gauge,
    /// QR codes made.
    pub qr_made: Counter,
    /// QR codes asked of WeChat today by all instances (set at scrape time).
    pub qr_made_today: Gauge,
    /// `QR_DAILY_BUDGET` (set at scrape time).
    pub qr_daily_budget: Gauge,
    /// 1 while today's budget is spent and new streams are refused (set at scrape time).
    pub qr_budget_exhausted: Gauge,
    /// Streams started, by `new` / `resumed`.
    pub streams: Family<Outcome, Counter>,
    /// Streams refused, by reason (`unauthorized`, `rate_limited`, `client_open`,
    /// `max_streams`, `no_qr`, `budget_spent`).
    pub streams_refused: Family<Rejection, Counter>,
    /// Scans, by outcome (`delivered`, `parked`, `undeliverable`, `duplicate`), and login
    /// codes received (`code`: a login, `code_unmatched`: no live code, `code_limited`: the
    /// sender was over `CODE_ATTEMPTS_PER_MIN`; a retry counts as `duplicate`).
    pub scans: Family<Outcome, Counter>,
    /// Handles on `scans`' series, made once: a callback bumps one without allocating a label.
    scan_series: Vec<(&'static str, Counter)>,
    /// Callbacks rejected, by reason.
    pub callbacks_rejected: Family<Rejection, Counter>,
    /// Callbacks passed on to `FORWARD_URL`, by outcome.
    pub callbacks_forwarded: Family<Outcome, Counter>,
    /// WeChat API calls, by API and result.
    pub wechat_calls: Family<ApiCall, Counter>,
    /// Token broker requests, by outcome (`read`, `refreshed`, `unchanged`: the caller's
    /// token had been replaced already, `unauthorized`, `limited`, `failed`).
    pub token_broker: Family<Outcome, Counter>,
    /// Unionid look-ups after a login (`USER_INFO`), by outcome (`found`, `none`: WeChat
    /// has none for the user, `failed`: the login went out without it).
    pub user_info: Family<Outcome, Counter>,
    /// Time to handle a callback, in seconds.
    pub callback_seconds: Histogram,
    /// Time from a callback's arrival to its result being written to the stream, in seconds.
    pub scan_to_push_seconds: Histogram,
}

fn latency_buckets() -> impl Iterator<Item = f64> {
    [
        0.000_1, 0.000_25, 0.000_5, 0.001, 0.002_5, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0,
        2.5, 5.0,
    ]
    .into_iter()
}

impl Metrics {
    /// A registry with every metric, prefixed `wxlogin_`.
    pub fn new() -> Arc<Self> {
        let mut registry = Registry::with_prefix("wxlogin");
        macro_rules! register {
            ($name:literal, $help:literal, $metric:expr) => {{
                let metric = $metric;
                registry.register($name, $help, metric.clone());
                metric
            }};
        }
        let open_streams = register!(
            "open_streams",
            "Streams waiting for a scan",
            Gauge::default()
        );
        let live_scenes = register!(
            "live_scenes",
            "Login sessions held (waiting or holding a result)",
            Gauge::default()
        );
        let qr_stock = register!("qr_stock", "Fresh QR codes in stock", Gauge::default());
        let qr_made = register!(
            "qr_made",
            "QR codes made through the WeChat API",
            Counter::default()
        );
        let qr_made_today = register!(
            "qr_made_today",
            "QR codes asked of WeChat today (China's day, when its quota resets), by all instances",
            Gauge::default()
        );
        let qr_daily_budget = register!(
            "qr_daily_budget",
            "QR codes all instances may make per day (QR_DAILY_BUDGET)",
            Gauge::default()
        );
        let qr_budget_exhausted = register!(
            "qr_budget_exhausted",
            "1 while today's QR code budget is used up and new streams get 503",
            Gauge::default()
        );
        let streams = register!(
            "streams",
            "Streams started, new or resumed",
            Family::default()
        );
        let streams_refused = register!(
            "streams_refused",
            "Streams refused, by reason",
            Family::default()
        );
        let scans: Family<Outcome, Counter> = register!(
            "scans",
            "Scans of login QR codes and login codes received, by outcome",
            Family::default()
        );
        let callbacks_rejected = register!(
            "callbacks_rejected",
            "Callbacks rejected, by reason",
            Family::default()
        );
        let callbacks_forwarded = register!(
            "callbacks_forwarded",
            "Callbacks passed on to FORWARD_URL, by outcome",
            Family::default()
        );
        let wechat_calls = register!(
            "wechat_api_calls",
            "WeChat API calls, by API and result (ok or errcode)",
            Family::default()
        );
        let token_broker = register!(
            "token_broker_requests",
            "Token broker requests from other services, by outcome",
            Family::default()
        );
        let user_info = register!(
            "user_info_lookups",
            "Unionid look-ups after a login (USER_INFO), by outcome",
            Family::default()
        );
        let callback_seconds = register!(
            "callback_duration_seconds",
            "Time to handle a WeChat callback",
            Histogram::new(latency_buckets())
        );
        let scan_to_push_seconds = register!(
            "scan_to_push_seconds",
            "Time from a callback's arrival to the result on the stream",
            Histogram::new(latency_buckets())
        );
        let scan_series = [
            "delivered",
            "parked",
            "undeliverable",
            "duplicate",
            "code",
            "code_unmatched",
            "code_limited",
        ]
        .into_iter()
        .map(|name| {
            let counter = scans
                .get_or_create(&Outcome {
                    outcome: name.into(),
                })
                .clone();
            (name, counter)
        })
        .collect();
        Arc::new(Self {
            registry,
            scan_series,
            open_streams,
            live_scenes,
            qr_stock,
            qr_made,
            qr_made_today,
            qr_daily_budget,
            qr_budget_exhausted,
            streams,
            streams_refused,
            scans,
            callbacks_rejected,
            callbacks_forwarded,
            wechat_calls,
            token_broker,
            user_info,
            callback_seconds,
            scan_to_push_seconds,
        })
    }

    /// Counts a scan outcome.
    pub fn scan(&self, outcome: &str) {
        if let Some((_, counter)) = self.scan_series.iter().find(|(name, _)| *name == outcome) {
            counter.inc();
            return;
        }
        self.scans
            .get_or_create(&Outcome {
                outcome: outcome.into(),
            })
            .inc();
    }

    /// Counts a rejected callback.
    pub fn reject_callback(&self, reason: &str) {
        self.callbacks_rejected
            .get_or_create(&Rejection {
                reason: reason.into(),
            })
            .inc();
    }

    /// Counts a refused stream.
    pub fn refuse_stream(&self, reason: &str) {
        self.streams_refused
            .get_or_create(&Rejection {
                reason: reason.into(),
            })
            .inc();
    }

    /// Counts `outcome` in `family` (a family labelled by outcome).
    pub fn count(family: &Family<Outcome, Counter>, outcome: &str) {
        family
            .get_or_create(&Outcome {
                outcome: outcome.into(),
            })
            .inc();
    }

    /// Counts a WeChat API call.
    pub fn wechat_call(&self, api: &str, result: &str) {
        self.wechat_calls
            .get_or_create(&ApiCall {
                api: api.into(),
                result: result.into(),
            })
            .inc();
    }

    /// Records a duration in a histogram.
    pub fn observe(histogram: &Histogram, elapsed: Duration) {
        histogram.observe(elapsed.as_secs_f64());
    }

    /// The text exposition format of these metrics alone.
    pub fn render(&self) -> String {
        let mut out = String::new();
        // Writing into a String cannot fail.
        let _ = prometheus_client::encoding::text::encode(&mut out, &self.registry);
        out
    }
}

/// The text exposition of several accounts' metrics, each series labelled with its account
/// (`account="shop"`): one family per metric (OpenMetrics allows a family's `# HELP` and
/// `# TYPE` once), its series account after account. Each account keeps a registry of its
/// own, so that an account added while running brings its metrics and a removed one takes
/// them away.
pub fn render_accounts<'a>(accounts: impl IntoIterator<Item = (&'a str, &'a Metrics)>) -> String {
    // Families in the order the first account that has them lists them.
    let mut families: Vec<(String, Vec<String>)> = Vec::new();
    for (account, metrics) in accounts {
        let text = metrics.render();
        let mut family = None;
        let mut described = false;
        for line in text.lines() {
            if line == "# EOF" {
                continue;
            }
            if let Some(descriptor) = line.strip_prefix("# ") {
                // `# HELP name ...`, `# TYPE name ...`, `# UNIT name ...`
                let name = descriptor.split(' ').nth(1).unwrap_or_default();
                let index = match families.iter().position(|(n, _)| n == name) {
                    Some(index) => {
                        described = family == Some(index) && described;
                        index
                    }
                    None => {
                        families.push((name.to_owned(), Vec::new()));
                        described = true;
                        families.len() - 1
                    }
                };
                family = Some(index);
                if described {
                    families[index].1.push(line.to_owned());
                }
                continue;
            }
            if let Some(index) = family {
                families[index].1.push(labelled(line, account));
            }
        }
    }
    let mut out = String::new();
    for (_, lines) in families {
        for line in lines {
            out.push_str(&line);
            out.push('\n');
        }
    }
    out.push_str("# EOF\n");
    out
}

/// A sample line (`name{labels} value`, or `name value`) with `account="<account>"` added to
/// its labels. Account names are slugs: nothing in them needs escaping.
fn labelled(line: &str, account: &str) -> String {
    let Some((series, value)) = line.rsplit_once(' ') else {
        return line.to_owned();
    };
    match series.strip_suffix('}') {
        Some(open) => format!("{open},account=\"{account}\"}} {value}"),
        None => format!("{series}{{account=\"{account}\"}} {value}"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn each_account_is_a_label_of_one_family_per_metric() {
        let (home, shop) = (Metrics::new(), Metrics::new());
        home.scan("delivered");
        shop.scan("delivered");
        shop.scan("delivered");
        shop.qr_made.inc();
        let text = render_accounts([("default", &*home), ("shop", &*shop)]);
        assert!(
            text.contains("wxlogin_scans_total{outcome=\"delivered\",account=\"default\"} 1\n"),
            "{text}"
        );
        assert!(
            text.contains("wxlogin_scans_total{outcome=\"delivered\",account=\"shop\"} 2\n"),
            "{text}"
        );
        assert!(
            text.contains("wxlogin_qr_made_total{account=\"shop\"} 1\n"),
            "{text}"
        );
        assert_eq!(
            text.matches("# TYPE wxlogin_scans counter").count(),
            1,
            "{text}"
        );
        assert_eq!(text.matches("# EOF").count(), 1);
        assert!(text.ends_with("# EOF\n"));
        let buckets = text
            .lines()
            .filter(|l| l.starts_with("wxlogin_callback_duration_seconds_bucket{le=\"0.0001\","))
            .count();
        assert_eq!(buckets, 2, "{text}");
    }
}
