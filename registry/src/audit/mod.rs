//! The audit trail: who pushed, pulled (manifests), deleted, failed to log
//! in or was refused, when, from where, and what came of it.
//!
//! Every event goes two ways:
//! - a structured log line (target `audit`) at once, for log collectors;
//! - a bounded in-memory queue, drained by one writer task into
//!   append-only JSON-lines segments in storage, through the [`Driver`]
//!   (so object storage works as the filesystem does):
//!   `_audit/<yyyy-mm-dd>/<hh>-<instance>.jsonl`, one per hour and process,
//!   so replicas on shared storage never append to the same object. The
//!   writer flushes every second or every [`FLUSH_AT`] events. A full
//!   queue (storage slower than requests) drops the event and counts it
//!   (`berth_registry_audit_events_total{kind="dropped"}`): a slow store never
//!   slows a request.
//!
//! Segments are rotated by the hour and whole days are removed once older
//! than the retention ([`Config::retention_days`]). Nothing secret goes in
//! an event: names, addresses, digests, statuses; never a password, token
//! or header.
//!
//! [`http`] is the query API (`GET /berth/v1/audit`); [`observe`] turns a
//! `/v2/` request and its response into an event.

pub mod http;
mod observe;

pub use observe::{Seen, observe};

use std::collections::BTreeMap;
use std::io;
use std::net::IpAddr;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use jiff::Timestamp;
use serde::{Deserialize, Serialize};
use tokio::sync::{mpsc, oneshot};

use crate::storage::driver::Driver;

/// Where segments live in storage (beside `repositories/` and `blobs/`,
/// which nothing here touches).
pub const PREFIX: &str = "_audit";
/// Events waiting for the writer before new ones are dropped.
pub const QUEUE: usize = 16 * 1024;
/// The writer writes at least this often while events wait.
const FLUSH_EVERY: Duration = Duration::from_secs(1);
/// ... and as soon as this many wait.
const FLUSH_AT: usize = 1024;
/// How often old days are removed.
const PURGE_EVERY: Duration = Duration::from_secs(3600);
/// The most events one query reads before filtering by the caller's
/// rights, so a query's cost is bounded however long the trail.
const SCAN_MAX: usize = 100_000;

/// One thing that happened.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq)]
pub struct Event {
    /// RFC 3339, UTC.
    pub time: String,
    /// The user, service account or robot; "anonymous" without
    /// credentials; for a failed login, the user name tried.
    pub subject: String,
    /// The peer address of the connection. Not X-Forwarded-For: any client
    /// can write that header, and berth is reached directly (a Service, a
    /// node port), not through a proxy that would set it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub client: Option<String>,
    /// push, push_blob, mount_blob, pull, delete, delete_blob, login, or
    /// (refused) what was tried: head, pull_blob, upload, tags, catalog,
    /// referrers, ping, search, audit.
    pub action: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub repository: Option<String>,
    /// The tag or digest as the client named it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reference: Option<String>,
    /// The content digest (of the manifest or blob).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub digest: Option<String>,
    /// The HTTP status answered.
    pub status: u16,
    /// ok, denied (authenticated, not allowed), login_failed, or error.
    pub result: String,
}

impl Event {
    /// An event now, its result told by `status`.
    pub fn now(action: &str, subject: &str, client: Option<IpAddr>, status: u16) -> Event {
        let result = match status {
            200..=299 => "ok",
            401 | 429 => "login_failed",
            403 => "denied",
            _ => "error",
        };
        Event {
            time: Timestamp::now().to_string(),
            subject: subject.to_owned(),
            client: client.map(|c| c.to_string()),
            action: action.to_owned(),
            repository: None,
            reference: None,
            digest: None,
            status,
            result: result.to_owned(),
        }
    }

    fn timestamp(&self) -> Timestamp {
        self.time.parse().unwrap_or(Timestamp::UNIX_EPOCH)
    }
}

/// What to keep and how.
#[derive(Clone, Debug)]
pub struct Config {
    /// Whole days older than this are removed.
    pub retention_days: u32,
    /// Names this process's segments (replicas must differ).
    pub instance: String,
    /// Events waiting for the writer before new ones are dropped.
    pub queue: usize,
}

impl Config {
    /// `retention_days`, an instance name from the host name (the pod's
    /// name) and a random suffix, and the default queue.
    pub fn new(retention_days: u32) -> Config {
        let host = std::env::var("HOSTNAME").unwrap_or_default();
        let host: String = host
            .chars()
            .filter(|c| c.is_ascii_alphanumeric() || *c == '-')
            .take(63)
            .collect();
        let suffix = uuid::Uuid::new_v4().simple().to_string();
        let instance = if host.is_empty() {
            format!("registry-{}", &suffix[..8])
        } else {
            format!("{host}-{}", &suffix[..8])
        };
        Config {
            retention_days,
            instance,
            queue: QUEUE,
        }
    }
}

enum Msg {
    Event(Event),
    Flush(oneshot::Sender<()>),
}

/// The trail: record events, query them.
pub struct Audit {
    tx: mpsc::Sender<Msg>,
    driver: Arc<dyn Driver>,
    retention_days: u32,
}

impl std::fmt::Debug for Audit {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Audit")
            .field("retention_days", &self.retention_days)
            .finish()
    }
}

/// What a query asks for.
#[derive(Clone, Debug, Default)]
pub struct Filter {
    pub repository: Option<String>,
    pub subject: Option<String>,
    pub since: Option<Timestamp>,
    pub until: Option<Timestamp>,
}

impl Filter {
    fn matches(&self, e: &Event) -> bool {
        if let Some(r) = &self.repository
            && e.repository.as_deref() != Some(r.as_str())
        {
            return false;
        }
        if let Some(s) = &self.subject
            && &e.subject != s
        {
            return false;
        }
        let t = e.timestamp();
        self.since.is_none_or(|s| t >= s) && self.until.is_none_or(|u| t <= u)
    }
}

/// One structured log line (target "audit") for an event, at a level
/// fixed where it is written (tracing needs it constant).
macro_rules! audit_line {
    ($level:expr, $event:expr) => {{
        let event: &Event = $event;
        tracing::event!(
            target: "audit",
            $level,
            time = %event.time,
            subject = %event.subject,
            client = event.client.as_deref().unwrap_or(""),
            action = %event.action,
            repository = event.repository.as_deref().unwrap_or(""),
            reference = event.reference.as_deref().unwrap_or(""),
            digest = event.digest.as_deref().unwrap_or(""),
            status = event.status,
            result = %event.result,
            "audit"
        )
    }};
}

impl Audit {
    /// Starts the writer and the retention task (on the current Tokio
    /// runtime); both end when the last handle is dropped, the writer
    /// after writing what it holds.
    pub fn start(driver: Arc<dyn Driver>, config: Config) -> Arc<Audit> {
        let (tx, rx) = mpsc::channel(config.queue.max(1));
        tokio::spawn(write_loop(rx, driver.clone(), config.instance.clone()));
        let audit = Arc::new(Audit {
            tx,
            driver,
            retention_days: config.retention_days,
        });
        let weak = Arc::downgrade(&audit);
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(PURGE_EVERY);
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            loop {
                tick.tick().await;
                let Some(audit) = weak.upgrade() else { break };
                match audit.purge(Timestamp::now()).await {
                    Ok(0) => {}
                    Ok(n) => tracing::info!(days = n, "removed audit trail days past retention"),
                    Err(e) => tracing::warn!(error = %e, "could not remove old audit trail days"),
                }
            }
        });
        audit
    }

    /// Logs `event` and queues it for storage; never waits. Successful
    /// pulls, by far the most frequent events, are logged at debug level
    /// only: a line per pull cost up to a quarter of the manifest GET rate,
    /// and they are in the stored trail anyway.
    pub fn record(&self, event: Event) {
        if event.action == "pull" && event.result == "ok" {
            audit_line!(tracing::Level::DEBUG, &event);
        } else {
            audit_line!(tracing::Level::INFO, &event);
        }
        if self.tx.try_send(Msg::Event(event)).is_err() {
            crate::metrics::audit("dropped", 1);
        }
    }

    /// Writes what is queued now; gives up after a few seconds (a stalled
    /// store), returning whether it finished.
    pub async fn flush(&self) -> bool {
        let (done, wait) = oneshot::channel();
        tokio::time::timeout(Duration::from_secs(5), async {
            self.tx.send(Msg::Flush(done)).await.is_ok() && wait.await.is_ok()
        })
        .await
        .unwrap_or(false)
    }

    /// Stored events matching `filter`, newest first, at most
    /// [`SCAN_MAX`] (the caller filters by rights, then applies its limit).
    pub async fn query(&self, filter: &Filter) -> io::Result<Vec<Event>> {
        let mut days = self.days().await?;
        days.sort_unstable_by(|a, b| b.cmp(a));
        let since_day = filter.since.map(|t| day_of(&t.to_string()).to_owned());
        let until_day = filter.until.map(|t| day_of(&t.to_string()).to_owned());
        let mut out = Vec::new();
        for day in days {
            if until_day.as_ref().is_some_and(|u| &day > u) {
                continue;
            }
            if since_day.as_ref().is_some_and(|s| &day < s) {
                break;
            }
            let dir = format!("{PREFIX}/{day}");
            let mut segments = self.driver.list(&dir).await?;
            // "<hh>-<instance>.jsonl": newest hour first.
            segments.sort_unstable_by(|a, b| b.cmp(a));
            for segment in segments.iter().filter(|s| s.ends_with(".jsonl")) {
                let Some(data) = self.driver.get(&format!("{dir}/{segment}")).await? else {
                    continue;
                };
                // A line cut short by a crash is skipped, not fatal.
                out.extend(
                    data.split(|b| *b == b'\n')
                        .filter_map(|line| serde_json::from_slice::<Event>(line).ok())
                        .filter(|e| filter.matches(e)),
                );
            }
            if out.len() >= SCAN_MAX {
                break;
            }
        }
        out.sort_by_key(|e| std::cmp::Reverse(e.timestamp()));
        out.truncate(SCAN_MAX);
        Ok(out)
    }

    /// Removes the days older than the retention, as of `now`; returns
    /// how many.
    pub async fn purge(&self, now: Timestamp) -> io::Result<usize> {
        let keep = jiff::SignedDuration::from_hours(24 * i64::from(self.retention_days));
        let cutoff = now.checked_sub(keep).unwrap_or(Timestamp::UNIX_EPOCH);
        let cutoff_day = day_of(&cutoff.to_string()).to_owned();
        let mut removed = 0;
        for day in self.days().await? {
            // A day is removed when all of it is past the retention.
            if day < cutoff_day {
                self.driver.delete(&format!("{PREFIX}/{day}")).await?;
                removed += 1;
            }
        }
        Ok(removed)
    }

    /// The days with segments (only names that are dates: nothing else
    /// under the prefix is ever removed).
    async fn days(&self) -> io::Result<Vec<String>> {
        Ok(self
            .driver
            .list(PREFIX)
            .await?
            .into_iter()
            .filter(|d| d.len() == 10 && d.parse::<jiff::civil::Date>().is_ok())
            .collect())
    }
}

/// "yyyy-mm-dd" of an RFC 3339 UTC time.
fn day_of(time: &str) -> &str {
    time.get(..10).unwrap_or("0000-00-00")
}

/// The segment an event goes to.
fn segment_key(time: &str, instance: &str) -> String {
    let hour = time.get(11..13).unwrap_or("00");
    format!("{PREFIX}/{}/{hour}-{instance}.jsonl", day_of(time))
}

async fn write_loop(mut rx: mpsc::Receiver<Msg>, driver: Arc<dyn Driver>, instance: String) {
    let mut held: Vec<Event> = Vec::new();
    let mut tick = tokio::time::interval(FLUSH_EVERY);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            msg = rx.recv() => match msg {
                Some(Msg::Event(e)) => {
                    held.push(e);
                    if held.len() >= FLUSH_AT {
                        write(&*driver, &instance, &mut held).await;
                    }
                }
                Some(Msg::Flush(done)) => {
                    write(&*driver, &instance, &mut held).await;
                    let _ = done.send(());
                }
                None => {
                    write(&*driver, &instance, &mut held).await;
                    break;
                }
            },
            _ = tick.tick() => {
                if !held.is_empty() {
                    write(&*driver, &instance, &mut held).await;
                }
            }
        }
    }
}

/// Appends the held events to their segments (usually one).
async fn write(driver: &dyn Driver, instance: &str, held: &mut Vec<Event>) {
    let mut segments: BTreeMap<String, (Vec<u8>, u64)> = BTreeMap::new();
    for e in held.drain(..) {
        let (buf, n) = segments.entry(segment_key(&e.time, instance)).or_default();
        if serde_json::to_writer(&mut *buf, &e).is_ok() {
            buf.push(b'\n');
            *n += 1;
        }
    }
    for (key, (data, n)) in segments {
        match append(driver, &key, Bytes::from(data)).await {
            Ok(()) => crate::metrics::audit("written", n),
            Err(e) => {
                crate::metrics::audit("write_failed", n);
                tracing::warn!(error = %e, segment = %key, events = n, "could not write audit events to storage; they are in the log only");
            }
        }
    }
}

async fn append(driver: &dyn Driver, key: &str, data: Bytes) -> io::Result<()> {
    let mut a = driver.appender(key).await?;
    if let Err(e) = a.write(&data).await {
        let _ = a.abort().await;
        return Err(e);
    }
    a.finish().await
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn segments_are_per_day_hour_and_instance() {
        assert_eq!(
            segment_key("2026-11-30T09:58:10.5Z", "reg-0-ab"),
            "_audit/2026-11-30/09-reg-0-ab.jsonl"
        );
    }

    #[test]
    fn results_follow_the_status() {
        let r = |s| Event::now("push", "a", None, s).result;
        assert_eq!(r(201), "ok");
        assert_eq!(r(403), "denied");
        assert_eq!(r(401), "login_failed");
        assert_eq!(r(500), "error");
    }
}
