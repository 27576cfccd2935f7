//! What the two stores' report tables share: UTC day keys, the session planner, the campaign
//! key of `utm_*` context, the revenue of an event's properties, and the fact-row `SELECT`.
//! Pure: no store is touched here.

use serde_json::Value;

pub use crate::domain::reports::{DAY_MS, date_text, day_of};

/// The campaign key of a web or app event that carries `utm_*` context (first touch).
pub fn utm_key(context: &Value) -> Option<(String, String, String)> {
    let c = context.get("campaign")?;
    let name = c.get("utm_campaign").and_then(Value::as_str).filter(|s| !s.is_empty())?;
    let source = c.get("utm_source").and_then(Value::as_str).unwrap_or("");
    Some((format!("utm:{source}:{name}"), name.to_owned(), source.to_owned()))
}

/// Revenue and currency of an event's properties (JSON text).
pub fn money(properties: &str) -> (Option<f64>, Option<String>) {
    // Most events carry neither; parse only those that might.
    if !properties.contains("\"revenue\"") && !properties.contains("\"currency\"") {
        return (None, None);
    }
    let properties: Value = serde_json::from_str(properties).unwrap_or(Value::Null);
    (
        properties.get("revenue").and_then(Value::as_f64).filter(|r| r.is_finite()),
        properties.get("currency").and_then(Value::as_str).map(str::to_owned),
    )
}

/// A stored session of one device.
#[derive(Debug, Clone, PartialEq)]
pub struct StoredSession {
    pub key: String,
    pub start: i64,
    pub end: i64,
    pub events: i64,
    pub user_id: Option<String>,
}

/// What a batch does to one device's sessions.
#[derive(Debug, Default)]
pub struct SessionPlan {
    /// Each event's session key, in the order of the events.
    pub assigned: Vec<String>,
    /// Stored sessions merged into another: (merged key, kept key). Their facts move to the
    /// kept key and their row goes.
    pub merged: Vec<(String, String)>,
    /// Sessions to insert or update (stored sessions no event reached are left out).
    pub upserts: Vec<StoredSession>,
    /// Units of work the plan took: comparisons of the two sorts, and each event, stored
    /// session and union-find step of the sweep. O((n + m) log(n + m)) for n events and m
    /// stored sessions, whatever order the events' times are in.
    pub steps: u64,
}

/// Where one device's events can reach stored sessions, `gap` apart: the windows of the
/// device's sessions a batch has to read. A device's sessions never overlap and are more than
/// `gap` apart (an event within `gap` of two joins them), so the span from the first event −
/// `gap` to the last + `gap` holds at most `span / gap + 1` of them. When that is no more than
/// [`SPAN_READ_FACTOR`] times the number of windows below, the span is one window (one range
/// read, what events close together in time want). Otherwise — events spread over months or
/// years, as a device with a wrong clock or an attacker may date them — the windows are
/// `[ts − gap, ts + gap]` of each event, overlapping ones joined, in time order: a batch then
/// reads only the sessions its events can reach, at most a few per event, never every session
/// of the device.
///
/// The sessions that overlap a window `[lo, hi]` are those starting in it and the last one
/// starting before `lo` if it ends at or after `lo`: two index range reads per window.
pub fn session_windows(times: &[i64], gap: i64) -> Vec<(i64, i64)> {
    let mut sorted = times.to_vec();
    sorted.sort_unstable();
    let mut windows: Vec<(i64, i64)> = Vec::new();
    for ts in sorted {
        let (lo, hi) = (ts.saturating_sub(gap), ts.saturating_add(gap));
        match windows.last_mut() {
            Some(last) if lo <= last.1 => last.1 = hi,
            _ => windows.push((lo, hi)),
        }
    }
    if let (Some(first), Some(last)) = (windows.first(), windows.last()) {
        let span = (first.0, last.1);
        let most_sessions = (span.1.saturating_sub(span.0) / gap.max(1)).saturating_add(1);
        if windows.len() > 1 && most_sessions <= SPAN_READ_FACTOR.saturating_mul(windows.len() as i64) {
            return vec![span];
        }
    }
    windows
}

/// How many sessions one range read may return per window it replaces (see
/// [`session_windows`]): a row read in order costs about an eighth of a window's two index
/// seeks, and a batch never reads more than 8 sessions per event this way.
pub const SPAN_READ_FACTOR: i64 = 8;

/// Union-find over runs and stored sessions, by size, with path halving.
struct Sets {
    parent: Vec<usize>,
    size: Vec<usize>,
}

impl Sets {
    fn new(n: usize) -> Self {
        Sets { parent: (0..n).collect(), size: vec![1; n] }
    }

    fn find(&mut self, mut i: usize, steps: &mut u64) -> usize {
        while self.parent[i] != i {
            *steps += 1;
            self.parent[i] = self.parent[self.parent[i]];
            i = self.parent[i];
        }
        i
    }

    fn union(&mut self, a: usize, b: usize, steps: &mut u64) -> usize {
        let (a, b) = (self.find(a, steps), self.find(b, steps));
        if a == b {
            return a;
        }
        let (big, small) = if self.size[a] >= self.size[b] { (a, b) } else { (b, a) };
        self.parent[small] = big;
        self.size[big] += self.size[small];
        big
    }
}

/// One resulting session while it is put together.
#[derive(Default)]
struct Group {
    start: i64,
    end: i64,
    events: i64,
    /// The user id of the latest member that has one: (time, is an event, input index, id).
    user: Option<(i64, bool, usize, String)>,
    /// The stored session whose key it keeps (the one with the most events; ties: the
    /// earliest), by index.
    keep: Option<usize>,
    /// Its first event (in time order), which keys a new session.
    first_event: Option<usize>,
    has_events: bool,
}

impl Group {
    fn offer_user(&mut self, candidate: (i64, bool, usize, &str)) {
        let better = match &self.user {
            None => true,
            Some((t, e, i, _)) => (candidate.0, candidate.1, candidate.2) > (*t, *e, *i),
        };
        if better {
            self.user = Some((candidate.0, candidate.1, candidate.2, candidate.3.to_owned()));
        }
    }
}

/// Assigns one device's events ((time, event id, user id), in any order) to sessions: events no
/// more than `gap` apart, and the stored sessions within `gap` of them, make one session; a
/// late event that bridges stored sessions merges them. `stored` are the device's sessions
/// near the events (those overlapping [`session_windows`]; more are left alone, duplicates are
/// ignored).
///
/// A merged session keeps the key of its stored session with the most events (ties: the
/// earliest), so a fact moves only into a session at least as large as its own; a session with
/// no stored part is keyed by its first event (its time, then its id). Its user id is the one
/// of its latest member that has one (events by time, stored sessions by their end).
///
/// The events and stored sessions are sorted, then swept once: the runs of events and the
/// stored sessions in reach of each are joined in a union-find. So the plan costs
/// O((n + m) log(n + m)) whatever the order of the events' times ([`SessionPlan::steps`]
/// counts it). Pure: both stores read the sessions, plan, and write the plan.
pub fn plan_sessions(mut stored: Vec<StoredSession>, events: &[(i64, &str, Option<&str>)], gap: i64) -> SessionPlan {
    let mut steps = 0u64;
    stored.sort_by(|a, b| {
        steps += 1;
        (a.start, &a.key).cmp(&(b.start, &b.key))
    });
    stored.dedup_by(|a, b| a.key == b.key);
    let mut order: Vec<usize> = (0..events.len()).collect();
    order.sort_by(|&a, &b| {
        steps += 1;
        (events[a].0, a).cmp(&(events[b].0, b))
    });

    // Runs of events no more than `gap` apart, as ranges of `order`.
    let mut runs: Vec<(usize, usize)> = Vec::new();
    for (pos, &i) in order.iter().enumerate() {
        steps += 1;
        match runs.last_mut() {
            Some(run) if events[i].0.saturating_sub(events[order[run.1]].0) <= gap => run.1 = pos,
            _ => runs.push((pos, pos)),
        }
    }

    // Nodes: stored sessions 0..m, then runs m..m + r. A run joins every stored session that
    // overlaps [first − gap, last + gap]. Runs come in time order, so a stored session that
    // ends before one run's window ends before every later one's; and once a run has joined
    // the stored sessions it reaches, they are one set, kept as one entry with their latest end.
    let m = stored.len();
    let mut sets = Sets::new(m + runs.len());
    let mut next = 0;
    let mut reach: Vec<(i64, usize)> = Vec::new();
    for (r, &(first, last)) in runs.iter().enumerate() {
        let lo = events[order[first]].0.saturating_sub(gap);
        let hi = events[order[last]].0.saturating_add(gap);
        while next < m && stored[next].start <= hi {
            steps += 1;
            reach.push((stored[next].end, next));
            next += 1;
        }
        let mut joined: Option<(i64, usize)> = None;
        for (end, node) in reach.drain(..) {
            steps += 1;
            if end >= lo {
                sets.union(node, m + r, &mut steps);
                joined = Some((joined.map_or(end, |(e, _)| e.max(end)), node));
            }
        }
        reach.extend(joined);
    }

    // Each set becomes one session.
    let mut groups: Vec<Group> = Vec::new();
    let mut group_of: Vec<Option<usize>> = vec![None; m + runs.len()];
    let mut group = |groups: &mut Vec<Group>, sets: &mut Sets, node: usize, steps: &mut u64| -> usize {
        let root = sets.find(node, steps);
        *group_of[root].get_or_insert_with(|| {
            groups.push(Group { start: i64::MAX, end: i64::MIN, ..Default::default() });
            groups.len() - 1
        })
    };
    let mut run_group = Vec::with_capacity(runs.len());
    for (r, &(first, last)) in runs.iter().enumerate() {
        steps += 1;
        let g = group(&mut groups, &mut sets, m + r, &mut steps);
        run_group.push(g);
        let grp = &mut groups[g];
        grp.has_events = true;
        grp.first_event.get_or_insert(order[first]);
        grp.start = grp.start.min(events[order[first]].0);
        grp.end = grp.end.max(events[order[last]].0);
        grp.events += (last - first + 1) as i64;
        for &i in &order[first..=last] {
            steps += 1;
            if let (ts, _, Some(user)) = events[i] {
                grp.offer_user((ts, true, i, user));
            }
        }
    }
    let mut stored_group = vec![None; m];
    for (i, s) in stored.iter().enumerate() {
        steps += 1;
        if sets.find(i, &mut steps) == i && sets.size[i] == 1 {
            // Reached by no event: left as it is.
            continue;
        }
        let g = group(&mut groups, &mut sets, i, &mut steps);
        stored_group[i] = Some(g);
        let grp = &mut groups[g];
        grp.start = grp.start.min(s.start);
        grp.end = grp.end.max(s.end);
        grp.events += s.events;
        if let Some(user) = &s.user_id {
            grp.offer_user((s.end, false, i, user));
        }
        // Stored sessions come by start, so the first of the most events is the earliest.
        if grp.keep.is_none_or(|k| s.events > stored[k].events) {
            grp.keep = Some(i);
        }
    }

    let keys: Vec<String> = groups
        .iter()
        .map(|g| match (g.keep, g.first_event) {
            (Some(k), _) => stored[k].key.clone(),
            (None, Some(i)) => format!("{:013}-{}", events[i].0.max(0), events[i].1),
            (None, None) => String::new(),
        })
        .collect();
    let mut assigned = vec![String::new(); events.len()];
    for (r, &(first, last)) in runs.iter().enumerate() {
        for &i in &order[first..=last] {
            steps += 1;
            assigned[i] = keys[run_group[r]].clone();
        }
    }
    let merged = stored_group
        .iter()
        .enumerate()
        .filter_map(|(i, g)| {
            let g = (*g)?;
            (groups[g].keep != Some(i)).then(|| (stored[i].key.clone(), keys[g].clone()))
        })
        .collect();
    let upserts = groups
        .into_iter()
        .zip(&keys)
        .filter(|(g, _)| g.has_events)
        .map(|(g, key)| StoredSession {
            key: key.clone(),
            start: g.start,
            end: g.end,
            events: g.events,
            user_id: g.user.map(|u| u.3),
        })
        .collect();
    SessionPlan { assigned, merged, upserts, steps }
}

/// The fact-row `SELECT` both stores' reports start from (written with the shared SQL).
pub use super::sql::FACT_ROWS;

#[cfg(test)]
mod tests {
    use std::collections::{BTreeMap, BTreeSet};

    use rand::seq::SliceRandom;
    use rand::{Rng, SeedableRng};

    use super::*;

    const MINUTE: i64 = 60_000;
    const GAP: i64 = 30 * MINUTE;

    /// The planner this one replaced (O(events × sessions), events in time order), kept as the
    /// reference for which events and stored sessions end up together.
    fn reference(stored: Vec<StoredSession>, events: &[(i64, &str, Option<&str>)], gap: i64) -> SessionPlan {
        struct S {
            s: StoredSession,
            stored: bool,
            into: Option<usize>,
        }
        let mut sessions: Vec<S> = stored.into_iter().map(|s| S { s, stored: true, into: None }).collect();
        let mut assigned = Vec::new();
        for &(ts, id, _) in events {
            let near: Vec<usize> = (0..sessions.len())
                .filter(|&i| {
                    sessions[i].into.is_none() && sessions[i].s.end >= ts - gap && sessions[i].s.start <= ts + gap
                })
                .collect();
            let target = match near.first() {
                None => {
                    let s =
                        StoredSession { key: format!("{ts:013}-{id}"), start: ts, end: ts, events: 0, user_id: None };
                    sessions.push(S { s, stored: false, into: None });
                    sessions.len() - 1
                }
                Some(&keep) => {
                    for &other in &near[1..] {
                        let (start, end, n) =
                            (sessions[other].s.start, sessions[other].s.end, sessions[other].s.events);
                        sessions[other].into = Some(keep);
                        let s = &mut sessions[keep].s;
                        (s.start, s.end, s.events) = (s.start.min(start), s.end.max(end), s.events + n);
                    }
                    keep
                }
            };
            let s = &mut sessions[target].s;
            (s.start, s.end, s.events) = (s.start.min(ts), s.end.max(ts), s.events + 1);
            assigned.push(target);
        }
        let root = |mut i: usize| {
            while let Some(j) = sessions[i].into {
                i = j;
            }
            i
        };
        let mut plan = SessionPlan {
            assigned: assigned.iter().map(|&i| sessions[root(i)].s.key.clone()).collect(),
            ..Default::default()
        };
        for (i, s) in sessions.iter().enumerate() {
            if root(i) != i && s.stored {
                plan.merged.push((s.s.key.clone(), sessions[root(i)].s.key.clone()));
            } else if root(i) == i {
                plan.upserts.push(s.s.clone());
            }
        }
        plan
    }

    /// What a plan decides, whatever the keys: for each session an event is in (named by its
    /// smallest event index), its bounds, its event count and the stored sessions it absorbed.
    fn outcome(plan: &SessionPlan, stored: &[StoredSession]) -> BTreeMap<usize, (i64, i64, i64, BTreeSet<String>)> {
        let mut label: BTreeMap<&str, usize> = BTreeMap::new();
        for (i, key) in plan.assigned.iter().enumerate() {
            label.entry(key.as_str()).or_insert(i);
        }
        let mut out = BTreeMap::new();
        for s in &plan.upserts {
            let Some(&l) = label.get(s.key.as_str()) else { continue };
            let mut absorbed: BTreeSet<String> =
                plan.merged.iter().filter(|(_, keep)| *keep == s.key).map(|(gone, _)| gone.clone()).collect();
            if stored.iter().any(|st| st.key == s.key) {
                absorbed.insert(s.key.clone());
            }
            out.insert(l, (s.start, s.end, s.events, absorbed));
        }
        out
    }

    /// One device's events: `sessions` bursts of up to 8 events a minute apart, spread over
    /// `span` ms, each with a unique id.
    fn burst_times(rng: &mut rand::rngs::StdRng, sessions: usize, span: i64) -> Vec<i64> {
        let mut times = Vec::new();
        for _ in 0..sessions {
            let start = rng.random_range(0..span);
            for k in 0..rng.random_range(1..=8) {
                times.push(1_700_000_000_000 + start + k * MINUTE);
            }
        }
        times
    }

    #[test]
    fn the_plan_matches_the_reference_planner_whatever_the_order() {
        let mut rng = rand::rngs::StdRng::seed_from_u64(19);
        for round in 0..300 {
            let span = rng.random_range(1..40) * GAP;
            // What earlier batches stored: a plan of its own.
            let count = rng.random_range(0..6);
            let first = burst_times(&mut rng, count, span);
            let ids: Vec<String> = (0..first.len()).map(|i| format!("a{round}-{i}")).collect();
            let input: Vec<(i64, &str, Option<&str>)> =
                first.iter().zip(&ids).map(|(&t, id)| (t, id.as_str(), None)).collect();
            let stored = plan_sessions(Vec::new(), &input, GAP).upserts;
            // This batch, in a random order.
            let count = rng.random_range(1..6);
            let times = burst_times(&mut rng, count, span);
            let ids: Vec<String> = (0..times.len()).map(|i| format!("b{round}-{i}")).collect();
            let mut input: Vec<(i64, &str, Option<&str>)> =
                times.iter().zip(&ids).map(|(&t, id)| (t, id.as_str(), None)).collect();
            input.shuffle(&mut rng);
            let plan = plan_sessions(stored.clone(), &input, GAP);
            let mut sorted: Vec<usize> = (0..input.len()).collect();
            sorted.sort_by_key(|&i| (input[i].0, i));
            let in_order: Vec<(i64, &str, Option<&str>)> = sorted.iter().map(|&i| input[i]).collect();
            let expected = reference(stored.clone(), &in_order, GAP);
            // The reference's answer, back in the batch's order.
            let mut back = SessionPlan {
                merged: expected.merged.clone(),
                upserts: expected.upserts.clone(),
                ..Default::default()
            };
            back.assigned = vec![String::new(); input.len()];
            for (pos, &i) in sorted.iter().enumerate() {
                back.assigned[i] = expected.assigned[pos].clone();
            }
            assert_eq!(outcome(&plan, &stored), outcome(&back, &stored), "round {round}");
            // Only sessions the batch reached are written; every merged one is a stored one.
            let reached: BTreeSet<&str> = plan.assigned.iter().map(String::as_str).collect();
            assert!(plan.upserts.iter().all(|s| reached.contains(s.key.as_str())), "round {round}");
            assert!(plan.merged.iter().all(|(gone, _)| stored.iter().any(|s| &s.key == gone)), "round {round}");
        }
    }

    fn session(key: &str, start: i64, end: i64, events: i64, user: Option<&str>) -> StoredSession {
        StoredSession { key: key.into(), start, end, events, user_id: user.map(str::to_owned) }
    }

    #[test]
    fn a_bridge_keeps_the_largest_session_and_the_latest_user() {
        let t = 1_700_000_000_000;
        let stored = vec![
            session("small", t, t + 10 * MINUTE, 2, Some("u-old")),
            session("big", t + 50 * MINUTE, t + 90 * MINUTE, 40, None),
            session("far", t + 600 * MINUTE, t + 610 * MINUTE, 3, Some("u-far")),
            // The same session twice (read through two windows): counted once.
            session("big", t + 50 * MINUTE, t + 90 * MINUTE, 40, None),
        ];
        // A late event between "small" and "big" bridges them; another carries a user id.
        let events = [(t + 30 * MINUTE, "e1", Some("u-new")), (t + 95 * MINUTE, "e2", None)];
        let plan = plan_sessions(stored, &events, GAP);
        assert_eq!(plan.assigned, ["big", "big"]);
        assert_eq!(plan.merged, [("small".to_owned(), "big".to_owned())]);
        assert_eq!(plan.upserts, [session("big", t, t + 95 * MINUTE, 44, Some("u-new"))]);
        // A stored user id later than the batch's events wins; "far" was not reached.
        let stored = vec![session("s", t, t + 20 * MINUTE, 5, Some("u-later"))];
        let plan = plan_sessions(stored, &[(t + 5 * MINUTE, "e3", Some("u-earlier"))], GAP);
        assert_eq!(plan.upserts, [session("s", t, t + 20 * MINUTE, 6, Some("u-later"))]);
        // A session of the batch alone is keyed by its first event.
        let plan = plan_sessions(Vec::new(), &[(t + 2 * MINUTE, "b", None), (t + MINUTE, "a", None)], GAP);
        assert_eq!(plan.assigned, [format!("{:013}-a", t + MINUTE), format!("{:013}-a", t + MINUTE)]);
    }

    #[test]
    fn windows_cover_each_run_of_events_once() {
        // Spread out: a window per run of events.
        let w = session_windows(&[5_000, 0, 1_000, 100_000, 100_050, 200_000], 100);
        assert_eq!(w, [(-100, 100), (900, 1_100), (4_900, 5_100), (99_900, 100_150), (199_900, 200_100)]);
        // Close together: the span, read at once (at most 13 sessions for 4 windows).
        let w = session_windows(&[500, 0, 250, 1_000], 100);
        assert_eq!(w, [(-100, 1_100)]);
        assert!(session_windows(&[], 100).is_empty());
        assert_eq!(session_windows(&[7], 100), [(-93, 107)]);
    }

    /// One device's `n` events as one batch (in time order, or shuffled as an attacker would
    /// date them), between `n / 2` stored sessions: every third point of a grid `spacing` apart
    /// is a stored session, the others are the batch. With a spacing under the gap every event
    /// bridges two sessions (all end up merged into one); over it, each event is a session of
    /// its own. Returns the plan's steps.
    fn steps(n: usize, spacing: i64, shuffled: bool) -> u64 {
        let t0 = 1_700_000_000_000;
        let points = n * 3 / 2;
        let ids: Vec<String> = (0..points).map(|i| format!("e{i}")).collect();
        let at = |i: usize| t0 + i as i64 * spacing;
        let stored: Vec<StoredSession> =
            (0..points).filter(|i| i % 3 == 0).map(|i| session(&ids[i], at(i), at(i), 1, None)).collect();
        let mut batch: Vec<(i64, &str, Option<&str>)> =
            (0..points).filter(|i| i % 3 != 0).map(|i| (at(i), ids[i].as_str(), None)).collect();
        if shuffled {
            batch.shuffle(&mut rand::rngs::StdRng::seed_from_u64(n as u64));
        }
        let plan = plan_sessions(stored, &batch, GAP);
        let sessions: BTreeSet<&String> = plan.assigned.iter().collect();
        let expected = if spacing < GAP { 1 } else { n };
        assert_eq!(sessions.len(), expected, "n {n}, spacing {spacing}");
        plan.steps
    }

    #[test]
    fn planner_steps_grow_linearly_not_with_events_times_sessions() {
        // The replaced planner checked every session for every event: for 100k events among
        // 50k stored sessions, 5·10^9 to 10^10 checks. This one sorts, then takes a few steps
        // per event and stored session.
        for spacing in [25 * MINUTE, 40 * MINUTE] {
            for shuffled in [false, true] {
                let (small, large) = (steps(10_000, spacing, shuffled), steps(100_000, spacing, shuffled));
                let n = 100_000;
                assert!(large <= 32 * n, "spacing {spacing}, shuffled {shuffled}: {large} steps for {n} events");
                assert!(
                    large <= 14 * small,
                    "spacing {spacing}, shuffled {shuffled}: 10 times the events took {large} / {small} steps"
                );
            }
        }
    }
}

/// The outbox entries of one page, sorted by what the loader does with them (each key once).
#[derive(Debug, Default, PartialEq, Eq)]
pub struct OutboxEntries {
    pub seqs: Vec<i64>,
    pub reset: bool,
    /// The page ends early: where its erasures end (rows noted after an erasure are loaded
    /// after it), or before a reset.
    pub cut: bool,
    /// (app, event id), (app, anonymous id), (app, session key) of rows to copy.
    pub facts: Vec<(String, String)>,
    pub users: Vec<(String, String)>,
    pub sessions: Vec<(String, String)>,
    /// (mirrored table, key as a JSON array) of rows to copy.
    pub mirrored: Vec<(String, String)>,
    pub erase_anonymous: Vec<(String, String)>,
    pub erase_users: Vec<String>,
    pub purge_before_day: Option<i64>,
}

/// The rows a page names, to be read from the store: (app, fact number), (app, anonymous id),
/// (app, session key), (mirrored table, key).
pub type OutboxKeys = (Vec<(String, String)>, Vec<(String, String)>, Vec<(String, String)>, Vec<(String, String)>);

impl OutboxEntries {
    /// The page without its rows (the store reads them), and the keys of those rows.
    pub fn into_page(self, version: i64) -> (crate::storage::OlapPage, OutboxKeys) {
        let page = crate::storage::OlapPage {
            version,
            more: self.cut,
            seqs: self.seqs,
            reset: self.reset,
            erase_anonymous: self.erase_anonymous,
            erase_users: self.erase_users,
            purge_before_day: self.purge_before_day,
            ..Default::default()
        };
        (page, (self.facts, self.users, self.sessions, self.mirrored))
    }
}

/// Sorts a page of `(seq, kind, app, key)` entries (in `seq` order); entries of unknown kinds
/// are taken and dropped (a newer version's, read by an older loader). The page ends after its
/// first run of erasures and cut-offs (a row noted after a deletion must reach ClickHouse after
/// the deletion's mutation, or the mutation would erase it), and a reset starts a page.
pub fn outbox_entries(rows: Vec<(i64, String, String, String)>) -> OutboxEntries {
    use std::collections::BTreeSet;
    let mut out = OutboxEntries::default();
    let (mut facts, mut users, mut sessions, mut erase, mut erase_users) =
        (BTreeSet::new(), BTreeSet::new(), BTreeSet::new(), BTreeSet::new(), BTreeSet::new());
    let mut mirrored = BTreeSet::new();
    let mut after_cut = false;
    for (seq, kind, app, key) in rows {
        let cut = matches!(kind.as_str(), "erase" | "erase_user" | "purge");
        if (kind == "reset" && !out.seqs.is_empty()) || (after_cut && !cut) {
            out.cut = true;
            break;
        }
        after_cut |= cut;
        out.seqs.push(seq);
        match kind.as_str() {
            "reset" => out.reset = true,
            "fact" => {
                facts.insert((app, key));
            }
            "user" => {
                users.insert((app, key));
            }
            "session" => {
                sessions.insert((app, key));
            }
            "erase" => {
                erase.insert((app, key));
            }
            "erase_user" => {
                erase_users.insert(key);
            }
            "purge" => {
                if let Ok(day) = key.parse::<i64>() {
                    out.purge_before_day = Some(out.purge_before_day.map_or(day, |d: i64| d.max(day)));
                }
            }
            table if crate::storage::sql::OLAP_MIRRORED.iter().any(|m| m.table == table) => {
                mirrored.insert((kind, key));
            }
            _ => {}
        }
    }
    out.mirrored = mirrored.into_iter().collect();
    out.facts = facts.into_iter().collect();
    out.users = users.into_iter().collect();
    out.sessions = sessions.into_iter().collect();
    out.erase_anonymous = erase.into_iter().collect();
    out.erase_users = erase_users.into_iter().collect();
    out
}

/// The mirrored table an outbox entry names and its key values (checked against the key's
/// types); `None` for an entry no mirror of this version reads.
pub fn mirrored_key(table: &str, key: &str) -> Option<(&'static crate::storage::sql::Mirror, Vec<(String, Value)>)> {
    use crate::storage::sql::{KeyType, OLAP_MIRRORED};
    let mirror = OLAP_MIRRORED.iter().find(|m| m.table == table)?;
    let values: Vec<Value> = serde_json::from_str(key).ok()?;
    if values.len() != mirror.key.len() {
        return None;
    }
    let mut out = Vec::with_capacity(values.len());
    for ((name, kind), v) in mirror.key.iter().zip(values) {
        let fits = match kind {
            KeyType::Text => v.is_string(),
            KeyType::Int => v.is_i64(),
        };
        if !fits {
            return None;
        }
        out.push(((*name).to_owned(), v));
    }
    Some((mirror, out))
}

/// The entry of a link in a campaign page's counts, made with zeros when new.
pub fn link_stats(
    links: &mut std::collections::BTreeMap<String, crate::domain::records::LinkStats>,
    link_id: String,
) -> &mut crate::domain::records::LinkStats {
    links.entry(link_id.clone()).or_insert_with(|| crate::domain::records::LinkStats {
        link_id,
        clicks: 0,
        impressions: 0,
        installs: 0,
        rejected_installs: 0,
    })
}
