//! Every metric Jabbridge exports, named once here, and the Prometheus recorder.

use std::sync::OnceLock;

use metrics_exporter_prometheus::{BuildError, Matcher, PrometheusBuilder, PrometheusHandle};

static HANDLE: OnceLock<PrometheusHandle> = OnceLock::new();

/// Installs the global Prometheus recorder (once per process) and returns its handle.
pub fn install() -> PrometheusHandle {
    HANDLE
        .get_or_init(|| {
            // Fails only on an empty list of buckets, which these are not.
            let builder = with_buckets().unwrap_or_else(|_| PrometheusBuilder::new());
            let recorder = builder.build_recorder();
            let handle = recorder.handle();
            // Fails only if another recorder is installed, in which case ours stays unused
            // and /metrics shows what ours saw: nothing. Tests run one daemon per process.
            let _ = metrics::set_global_recorder(recorder);
            handle
        })
        .clone()
}

/// The group commit's time per transaction, a histogram.
const COMMIT_SECONDS_NAME: &str = "jabbridge_commit_seconds";
/// The group commit's writes per transaction, a histogram.
const COMMIT_WRITES_NAME: &str = "jabbridge_commit_writes";

/// Upper bounds of `jabbridge_commit_seconds`' buckets: a tenth of a millisecond (SQLite's
/// group commit) to seconds (a database in trouble).
const COMMIT_SECONDS: [f64; 14] = [
    0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 5.0,
];

/// Upper bounds of `jabbridge_commit_writes`' buckets: one write to the committer's largest
/// batch.
const COMMIT_WRITES: [f64; 13] = [
    1.0, 2.0, 4.0, 8.0, 16.0, 32.0, 64.0, 128.0, 256.0, 512.0, 1024.0, 2048.0, 4096.0,
];

/// A builder whose histograms are Prometheus histograms with fixed buckets: a few counters
/// each, where the exporter's default (a summary: rolling sketches of up to 32,768 bins)
/// grows by hundreds of KiB as values spread.
fn with_buckets() -> Result<PrometheusBuilder, BuildError> {
    PrometheusBuilder::new()
        .set_buckets_for_metric(Matcher::Full(COMMIT_SECONDS_NAME.into()), &COMMIT_SECONDS)?
        .set_buckets_for_metric(Matcher::Full(COMMIT_WRITES_NAME.into()), &COMMIT_WRITES)
}

/// Drains the histograms' pending samples every few seconds, for as long as the process
/// runs. The recorder keeps every sample until it is drained, and only a scrape of
/// `/metrics` or this upkeep drains it: without it, a daemon nobody scrapes grows by every
/// commit it makes.
pub async fn upkeep(handle: PrometheusHandle) {
    let mut every = tokio::time::interval(std::time::Duration::from_secs(5));
    every.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        every.tick().await;
        handle.run_upkeep();
    }
}

/// A stanza arrived from the XMPP server for a bridge.
pub fn stanza_in(bridge: &str) {
    per_bridge(bridge, |counters| counters.stanzas_in.increment(1));
}

/// A stanza was written to the XMPP server for a bridge.
pub fn stanza_out(bridge: &str) {
    per_bridge(bridge, |counters| counters.stanzas_out.increment(1));
}

/// A stanza was refused with an error (or could not be read), by condition.
pub fn stanza_error(bridge: &str, condition: &'static str) {
    metrics::counter!("jabbridge_stanza_errors_total", "bridge" => bridge.to_owned(), "condition" => condition)
        .increment(1);
}

/// A room message was archived and sent to `resources` joined resources.
pub fn room_message(bridge: &str, resources: usize) {
    per_bridge(bridge, |counters| {
        counters.room_messages.increment(1);
        counters.room_stanzas_out.increment(resources as u64);
    });
}

/// The counters every stanza or room message moves, of one bridge.
struct PerMessage {
    stanzas_in: metrics::Counter,
    stanzas_out: metrics::Counter,
    room_messages: metrics::Counter,
    room_stanzas_out: metrics::Counter,
}

impl PerMessage {
    fn new(bridge: &str) -> Self {
        let counter = |name: &'static str| metrics::counter!(name, "bridge" => bridge.to_owned());
        PerMessage {
            stanzas_in: counter("jabbridge_stanzas_in_total"),
            stanzas_out: counter("jabbridge_stanzas_out_total"),
            room_messages: counter("jabbridge_room_messages_total"),
            room_stanzas_out: counter("jabbridge_room_stanzas_out_total"),
        }
    }
}

thread_local! {
    /// [`PerMessage`] by bridge, per thread: a counter named on every stanza would build
    /// and look up its key (labels, strings) each time, a dozen allocations per room post.
    static PER_MESSAGE: std::cell::RefCell<Vec<(String, PerMessage)>> =
        const { std::cell::RefCell::new(Vec::new()) };
}

/// Calls `count` with `bridge`'s [`PerMessage`] counters, registered on first use.
fn per_bridge(bridge: &str, count: impl FnOnce(&PerMessage)) {
    PER_MESSAGE.with_borrow_mut(|known| {
        let index = match known.iter().position(|(name, _)| name == bridge) {
            Some(index) => index,
            None => {
                known.push((bridge.to_owned(), PerMessage::new(bridge)));
                known.len() - 1
            }
        };
        count(&known[index].1);
    });
}

/// A stanza reached this instance for a user whose session another instance runs, and was
/// handed off to it through the database.
pub fn handed_off(bridge: &str) {
    metrics::counter!("jabbridge_handoffs_total", "bridge" => bridge.to_owned()).increment(1);
}

/// A batch of writes was committed (or failed) in one transaction.
pub fn commit(writes: usize, took: std::time::Duration) {
    metrics::histogram!(COMMIT_WRITES_NAME).record(writes as f64);
    metrics::histogram!(COMMIT_SECONDS_NAME).record(took.as_secs_f64());
}

/// A call into the bridge ran past `call_timeout`.
pub fn bridge_timeout(bridge: &str) {
    metrics::counter!("jabbridge_bridge_timeouts_total", "bridge" => bridge.to_owned())
        .increment(1);
}

/// The HTTP listener turned a connection or request away (`connections`: over
/// `http.max_connections`; `concurrency`: over `http.concurrency`).
pub fn http_refused(reason: &'static str) {
    metrics::counter!("jabbridge_http_refused_total", "reason" => reason).increment(1);
}

/// A message to the foreign network was refused: a `spend_limit` cap was reached.
pub fn spend_refused(bridge: &str) {
    metrics::counter!("jabbridge_spend_refused_total", "bridge" => bridge.to_owned()).increment(1);
}

/// The bridge has sent `today` of the `cap` messages its `spend_limit.per_day` allows
/// (UTC day); the gauge is the fraction, updated with each message counted and every minute.
pub fn spend_used(bridge: &str, today: i64, cap: u32) {
    metrics::gauge!("jabbridge_spend_used_ratio", "bridge" => bridge.to_owned())
        .set(today as f64 / f64::from(cap.max(1)));
}

/// A message delivered to a user came back from their server as an error (`condition`).
pub fn bounce(bridge: &str, condition: &str) {
    metrics::counter!("jabbridge_bounces_total", "bridge" => bridge.to_owned(), "condition" => condition.to_owned())
        .increment(1);
}

/// An acknowledgement ping of a bridge's link did not come back while the link stayed up
/// (ejabberd may route it over another instance's connection); what it covered was
/// counted as delivered.
pub fn acks_assumed(bridge: &str) {
    metrics::counter!("jabbridge_acks_assumed_total", "bridge" => bridge.to_owned()).increment(1);
}

/// The component link of a bridge went down and is being re-established.
pub fn reconnect(bridge: &str) {
    metrics::counter!("jabbridge_reconnects_total", "bridge" => bridge.to_owned()).increment(1);
}

/// The component link of a bridge is up (1) or down (0).
pub fn link_up(bridge: &str, up: bool) {
    metrics::gauge!("jabbridge_component_connected", "bridge" => bridge.to_owned()).set(if up {
        1.0
    } else {
        0.0
    });
}

/// A reload removed `bridge`: its gauges no longer describe anything. The exporter cannot
/// forget a series, so they become NaN, which no alert's comparison matches.
pub fn bridge_removed(bridge: &str) {
    for name in [
        "jabbridge_component_connected",
        "jabbridge_outgoing_queue_depth",
        "jabbridge_spend_used_ratio",
    ] {
        metrics::gauge!(name, "bridge" => bridge.to_owned()).set(f64::NAN);
    }
}

/// Stanzas waiting to go out to the XMPP server, per bridge.
pub fn queue_depth(bridge: &str, depth: usize) {
    metrics::gauge!("jabbridge_outgoing_queue_depth", "bridge" => bridge.to_owned())
        .set(depth as f64);
}

/// Messages stored and not yet delivered, per bridge and queue (`outbox`, `inbox`).
pub fn pending(bridge: &str, queue: &'static str, pending: i64) {
    metrics::gauge!("jabbridge_pending_messages", "bridge" => bridge.to_owned(), "queue" => queue)
        .set(pending as f64);
}

/// A message was handed to a bridge (`ok`), or failed transiently or permanently.
pub fn delivery(bridge: &str, outcome: &'static str) {
    metrics::counter!("jabbridge_bridge_deliveries_total", "bridge" => bridge.to_owned(), "outcome" => outcome)
        .increment(1);
}
