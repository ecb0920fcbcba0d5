//! When reports are made: the readiness report a configured time before each cutover
//! window (24 hours by default), the cutover report when the wave's cutovers are all
//! final or its window closes, and the digest on its cron schedule while the wave is
//! active (from its first task until its CMDB cleanup is final).
//!
//! Each is recorded once per event by the store (see [`crate::store::NewReport`]), at the
//! scheduler's moment, so a warped run makes the reports a real one would, dated as they
//! would be.

use std::collections::BTreeMap;
use std::sync::Arc;

use anyhow::Context as _;
use waves::cron::CronSchedule;
use waves::model::Definitions;

use super::mail::Mailer;
use super::{Kind, compose};
use crate::scheduler::clock::timestamp;
use crate::scheduler::phase::WaveCalendar;
use crate::store::{KindProgress, Store};

/// Most missed digest occurrences skipped over to the latest one (a run that was down
/// for days sends one digest, not one per missed morning).
const MAX_SKIPPED_OCCURRENCES: usize = 1_000;

pub struct Reporter {
    /// The last failure said, so a failure that repeats at every look is said once.
    last_failure: std::sync::Mutex<Option<String>>,
    store: Store,
    /// The definitions of the revision the run follows ([`Reporter::follow`]).
    definitions: std::sync::RwLock<Arc<Definitions>>,
    pub mailer: Mailer,
    readiness_before_ms: i64,
    digest: Option<CronSchedule>,
    /// Wakes the delivery loop: a warped run has recorded reports and waits for their
    /// delivery before its clock moves on.
    pub wake: tokio::sync::Notify,
}

/// What one wave's tasks say about its reports.
#[derive(Debug, Default)]
struct WaveProgress {
    first_started: Option<i64>,
    last_finished: Option<i64>,
    unfinished: i64,
    cutovers: (i64, i64),
    /// Of them, succeeded.
    cutovers_succeeded: i64,
    /// Of them, skipped (on purpose: nothing to cut over).
    cutovers_skipped: i64,
    cleanups: (i64, i64),
}

impl Reporter {
    pub fn new(store: Store, definitions: Arc<Definitions>) -> anyhow::Result<Reporter> {
        let config = &definitions.config;
        let mailer = Mailer::from_config(config).context("cannot set up report delivery")?;
        let digest = match &config.reports.digest {
            Some(text) => Some(CronSchedule::parse(text).map_err(|e| {
                anyhow::anyhow!("reports.digest `{text}` is not a cron schedule: {e}")
            })?),
            None => None,
        };
        Ok(Reporter {
            last_failure: std::sync::Mutex::new(None),
            store,
            readiness_before_ms: config.reports.readiness_before.approx_seconds() as i64 * 1000,
            digest,
            definitions: std::sync::RwLock::new(definitions),
            mailer,
            wake: tokio::sync::Notify::new(),
        })
    }

    /// Makes the reports of `definitions` from now on: a revision applied while the run
    /// goes on (its recipients, its waves).
    pub fn follow(&self, definitions: Arc<Definitions>) {
        if let Ok(mut held) = self.definitions.write() {
            *held = definitions;
        }
    }

    /// [`Reporter::record_due`] for a run: a report that cannot be made (a wave with
    /// nobody to send it to, the store busy) is said on stderr, once while it lasts, and
    /// never stops the run; it is tried again at the next look.
    pub async fn record_due_or_say(&self, now: i64) -> Option<i64> {
        let (next, failures) = match self.record_due(now).await {
            Ok(due) => due,
            Err(err) => (None, vec![format!("{err:#}")]),
        };
        let text = failures.join("\n");
        if let Ok(mut last) = self.last_failure.lock()
            && last.as_deref() != Some(text.as_str())
        {
            for failure in &failures {
                eprintln!("report not made (tried again at the next look): {failure}");
            }
            *last = Some(text);
        }
        next
    }

    /// Records every report due at `now` (scheduler time, ms) and not recorded yet;
    /// returns the next moment a report falls due, if one will, and what could not be
    /// made, wave by wave: one wave's failure (nobody to send it to, say) does not hold
    /// back the others' reports.
    pub async fn record_due(&self, now: i64) -> anyhow::Result<(Option<i64>, Vec<String>)> {
        let calendars = self.store.wave_calendars().await?;
        let progress = wave_progress(self.store.progress_by_kind().await?);
        let mut next: Option<i64> = None;
        let mut failures = Vec::new();
        for calendar in &calendars {
            let Some(p) = progress.get(&calendar.name) else {
                continue;
            };
            match self.record_wave(calendar, p, now).await {
                Ok(Some(at)) => next = Some(next.map_or(at, |n| n.min(at))),
                Ok(None) => {}
                Err(err) => failures.push(format!("wave `{}`: {err:#}", calendar.name)),
            }
        }
        Ok((next, failures))
    }

    /// Records one wave's reports due at `now`; returns when its next one falls due.
    async fn record_wave(
        &self,
        calendar: &WaveCalendar,
        p: &WaveProgress,
        now: i64,
    ) -> anyhow::Result<Option<i64>> {
        let mut next: Option<i64> = None;
        let mut candidate = |at: i64| next = Some(next.map_or(at, |n| n.min(at)));
        let window_event = format!("window {}", timestamp(calendar.window_start));
        let cutovers_open = p.cutovers.0 > p.cutovers.1;
        // Readiness: before the window, while its cutovers are still ahead, or blocked
        // (a NO-GO is what people need to hear then).
        let due = calendar.window_start - self.readiness_before_ms;
        let not_cut_over = p.cutovers.0 > p.cutovers_succeeded + p.cutovers_skipped;
        if (cutovers_open || not_cut_over) && now < calendar.window_start {
            if now >= due {
                self.record(calendar, Kind::Readiness, &window_event, due, now)
                    .await?;
            } else {
                candidate(due);
            }
        }
        // Cutover: once the window has opened, when every cutover is final, or when
        // the window has closed. (Cutovers blocked before the window may be retried:
        // the report waits for the window.)
        if p.first_started.is_some() && p.cutovers.0 > 0 {
            let over = !cutovers_open && now >= calendar.window_start;
            if over || now >= calendar.window_end {
                // A cutover retried after the report went out (inside the window, or
                // later) that changed how many were cut over is told again: a report
                // of its own, once per count; so are cutovers that were still running
                // when the window closed, once they end.
                let said = self
                    .store
                    .report_subjects(&calendar.name, Kind::Cutover.name(), &window_event)
                    .await?;
                let count = format!(" {} of ", p.cutovers_succeeded);
                // Every report so far made while cutovers still ran (at the window's
                // end): once they are all final (rolled back, say), the settled report.
                let unsettled = said
                    .iter()
                    .all(|subject| subject.contains(super::cutover::UNFINISHED));
                if said.is_empty() {
                    self.record(calendar, Kind::Cutover, &window_event, now, now)
                        .await?;
                } else if !over {
                    // Cutovers still open after the window: nothing new to say.
                } else if unsettled || !said.iter().any(|subject| subject.contains(&count)) {
                    let again = format!("{window_event}: {} cut over", p.cutovers_succeeded);
                    self.record(calendar, Kind::Cutover, &again, now, now)
                        .await?;
                }
            } else if p.unfinished > 0 {
                candidate(if cutovers_open {
                    calendar.window_end
                } else {
                    calendar.window_start
                });
            }
        }
        if let Some(at) = self.digest_due(calendar, p, now).await? {
            candidate(at);
        }
        Ok(next)
    }

    /// Records the digest whose occurrence has come; returns the next occurrence while
    /// the wave is active.
    async fn digest_due(
        &self,
        calendar: &WaveCalendar,
        p: &WaveProgress,
        now: i64,
    ) -> anyhow::Result<Option<i64>> {
        let (Some(cron), Some(first)) = (&self.digest, p.first_started) else {
            return Ok(None);
        };
        let ended = p.unfinished == 0 || (p.cleanups.0 > 0 && p.cleanups.0 == p.cleanups.1);
        if ended {
            // The wave ended (its clean-up, or every task failed or blocked on its first
            // day) since the last digest: one more, now, says how. Digests stopped at
            // the end, and what ended it was never told.
            let (Some(finished), Ok(tz)) =
                (p.last_finished, jiff::tz::TimeZone::get(&calendar.timezone))
            else {
                return Ok(None);
            };
            let last = self
                .store
                .last_report_due(&calendar.name, Kind::Digest.name())
                .await?;
            // The digest period the end fell in names it: one end digest per period,
            // should later finishes (leftovers cancelled one by one) move the end.
            let Some(period) = cron.next_after(&timestamp(finished).to_zoned(tz)) else {
                return Ok(None);
            };
            // Only while the end is news: a wave that ended long before this look (a
            // store from before end digests, digests switched on later) gets none.
            let news = cron
                .next_after(&period)
                .is_none_or(|after| after.timestamp().as_millisecond() > now);
            if news && last.is_none_or(|last| last < finished) {
                self.record(
                    calendar,
                    Kind::Digest,
                    &format!("digest at the end, {}", period.timestamp()),
                    now.max(finished),
                    now,
                )
                .await?;
            }
            return Ok(None);
        }
        let Ok(tz) = jiff::tz::TimeZone::get(&calendar.timezone) else {
            return Ok(None);
        };
        let last = self
            .store
            .last_report_due(&calendar.name, Kind::Digest.name())
            .await?
            .unwrap_or(first);
        let mut occurrence = match cron.next_after(&timestamp(last).to_zoned(tz.clone())) {
            Some(o) => o,
            None => return Ok(None),
        };
        if occurrence.timestamp().as_millisecond() > now {
            return Ok(Some(occurrence.timestamp().as_millisecond()));
        }
        for _ in 0..MAX_SKIPPED_OCCURRENCES {
            match cron.next_after(&occurrence) {
                Some(next) if next.timestamp().as_millisecond() <= now => occurrence = next,
                _ => break,
            }
        }
        let at = occurrence.timestamp().as_millisecond();
        self.record(
            calendar,
            Kind::Digest,
            &format!("digest {}", occurrence.timestamp()),
            at,
            now,
        )
        .await?;
        Ok(cron
            .next_after(&timestamp(now).to_zoned(tz))
            .map(|z| z.timestamp().as_millisecond()))
    }

    /// Renders and records one report unless its event has one already; returns its id.
    pub async fn record(
        &self,
        calendar: &WaveCalendar,
        kind: Kind,
        event: &str,
        due_at: i64,
        now: i64,
    ) -> anyhow::Result<Option<i64>> {
        if self
            .store
            .report_recorded(&calendar.name, kind.name(), event)
            .await?
        {
            return Ok(None);
        }
        // A digest made late (the process was down at its occurrence) is the digest of
        // its occurrence: what happened after it is the next one's.
        let at = if kind == Kind::Digest {
            due_at.min(now)
        } else {
            now
        };
        let rendered = kind.render(&self.store, &calendar.name, at).await?;
        let definitions: Arc<Definitions> = match self.definitions.read() {
            Ok(held) => Arc::clone(&held),
            Err(_) => anyhow::bail!("the reports' definitions are poisoned"),
        };
        let report = compose(
            &definitions,
            &calendar.name,
            kind,
            event,
            due_at,
            &rendered,
            &self.mailer.from,
        )?;
        let wall = jiff::Timestamp::now().as_millisecond();
        self.store.record_report(&report, wall).await
    }
}

fn wave_progress(rows: Vec<KindProgress>) -> BTreeMap<String, WaveProgress> {
    let mut waves: BTreeMap<String, WaveProgress> = BTreeMap::new();
    for row in rows {
        let p = waves.entry(row.wave.clone()).or_default();
        p.first_started = match (p.first_started, row.first_started) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        };
        p.last_finished = p.last_finished.max(row.last_finished);
        p.unfinished += row.total - row.finished;
        match row.kind.as_str() {
            "cutover" => {
                p.cutovers = (row.total, row.finished);
                p.cutovers_succeeded = row.succeeded;
                p.cutovers_skipped = row.skipped;
            }
            "cmdb_cleanup" => p.cleanups = (row.total, row.finished),
            _ => {}
        }
    }
    waves
}
