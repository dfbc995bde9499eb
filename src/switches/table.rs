//! The live switch table: each switch's state and counters, and how a
//! request picks one (smooth weighted round-robin or least latency by
//! peak-EWMA with two random choices), lock-free either way.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicI64, AtomicU32, AtomicU64, AtomicUsize, Ordering};
use std::time::Duration;

use arc_swap::ArcSwap;

use super::balance::{self, Balance};
use super::client::Switch;
use super::health::{ForwardResult, Health};
use super::view::{BalanceView, SwitchView};
use crate::config::{Balancing, ForwardingConfig, SwitchConfig};
use crate::domain::SwitchName;

/// Live state of one switch. Its health is written by the health monitor;
/// the request path only bumps counters and reads.
pub struct SwitchState {
    pub switch: Switch,
    weight: AtomicU32,
    pub(super) health: Health,
    pub(super) balance: Balance,
    in_flight: AtomicI64,
    approved: AtomicU64,
    declined: AtomicU64,
    failed: AtomicU64,
}

impl SwitchState {
    fn new(switch: Switch) -> Self {
        Self {
            weight: AtomicU32::new(switch.weight),
            switch,
            health: Health::default(),
            balance: Balance::default(),
            in_flight: AtomicI64::new(0),
            approved: AtomicU64::new(0),
            declined: AtomicU64::new(0),
            failed: AtomicU64::new(0),
        }
    }

    pub fn name(&self) -> &SwitchName {
        &self.switch.name
    }

    pub(super) fn weight(&self) -> u32 {
        self.weight.load(Ordering::Relaxed)
    }

    pub(super) fn in_flight(&self) -> i64 {
        self.in_flight.load(Ordering::Relaxed)
    }

    /// In rotation: healthy by probes and not passively ejected.
    pub fn is_available(&self) -> bool {
        self.health.is_available()
    }

    /// Request path: an attempt begins.
    pub fn begin(self: &Arc<Self>) -> InFlight {
        self.in_flight.fetch_add(1, Ordering::Relaxed);
        InFlight(self.clone())
    }

    /// Request path: how an attempt ended, counted and fed to passive health.
    pub fn record_forward(&self, result: ForwardResult, passive_failures_max: u32) {
        let counter = match result {
            ForwardResult::Approved => &self.approved,
            ForwardResult::Declined => &self.declined,
            ForwardResult::Failed => &self.failed,
        };
        counter.fetch_add(1, Ordering::Relaxed);
        self.balance.count(result != ForwardResult::Failed);
        self.health.record_forward(result, passive_failures_max);
    }

    /// Request path: one attempt on this switch took `rtt` (answered or not),
    /// for the latency estimate.
    pub fn observe_latency(&self, rtt: Duration, decay: Duration) {
        self.balance.observe(rtt, balance::now_ms(), decay);
    }

    /// The least-latency score now (lower is better).
    pub(super) fn score(&self, b: &BalanceSettings, now_ms: u64) -> f64 {
        balance::score(
            self.balance.latency(now_ms, b.ewma_decay, b.ewma_default),
            self.in_flight(),
            self.weight(),
            self.balance.slow_start_factor(now_ms, b.slow_start),
        )
    }

    /// What `GET /v1/switches` and the status page show.
    pub fn view(&self, b: &BalanceSettings) -> SwitchView {
        let now = balance::now_ms();
        SwitchView {
            name: self.switch.name.to_string(),
            url: self.switch.base.to_string(),
            weight: self.weight(),
            health: self.health.view(),
            balancing: BalanceView {
                latency_ewma_ms: self
                    .balance
                    .latency(now, b.ewma_decay, b.ewma_default)
                    .as_secs_f64()
                    * 1000.0,
                score: self.score(b, now),
                success_rate: self.health.success_rate(),
                slow_start_share: self.balance.slow_start_factor(now, b.slow_start),
                traffic_share: self.health.traffic_share(),
                picked: self.balance.picked(),
            },
            in_flight: self.in_flight(),
            approved: self.approved.load(Ordering::Relaxed),
            declined: self.declined.load(Ordering::Relaxed),
            failed: self.failed.load(Ordering::Relaxed),
        }
    }
}

/// The live balancing settings, from `[forwarding]` (reloadable).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct BalanceSettings {
    pub mode: Balancing,
    pub ewma_decay: Duration,
    /// The estimate of a switch not timed yet.
    pub ewma_default: Duration,
    pub slow_start: Duration,
}

impl BalanceSettings {
    pub fn from_config(f: &ForwardingConfig) -> Self {
        Self {
            mode: f.balancing,
            ewma_decay: Duration::from_millis(f.ewma_decay_ms),
            ewma_default: Duration::from_millis(f.ewma_default_ms),
            slow_start: Duration::from_millis(f.slow_start_ms),
        }
    }
}

/// Counts an attempt in flight until dropped.
pub struct InFlight(Arc<SwitchState>);

impl Drop for InFlight {
    fn drop(&mut self) {
        self.0.in_flight.fetch_sub(1, Ordering::Relaxed);
    }
}

/// An immutable switch list with its precomputed rotation.
pub struct SwitchTable {
    pub entries: Vec<Arc<SwitchState>>,
    /// Smooth weighted round-robin order (as nginx's), one slot per unit of
    /// weight: over `sequence.len()` picks each switch comes `weight` times,
    /// interleaved.
    sequence: Vec<u16>,
    /// How picks are made from this list: replaced with it on reload, so a
    /// pick always sees one consistent set.
    settings: BalanceSettings,
}

impl SwitchTable {
    fn new(entries: Vec<Arc<SwitchState>>, settings: BalanceSettings) -> Self {
        let weights: Vec<i64> = entries.iter().map(|e| i64::from(e.weight())).collect();
        let total: i64 = weights.iter().sum();
        let mut current = vec![0i64; entries.len()];
        let mut sequence = Vec::with_capacity(total as usize);
        for _ in 0..total {
            let mut best = 0;
            for i in 0..current.len() {
                current[i] += weights[i];
                if current[i] > current[best] {
                    best = i;
                }
            }
            current[best] -= total;
            sequence.push(best as u16);
        }
        Self {
            entries,
            sequence,
            settings,
        }
    }
}

/// The live switch set: a snapshot readers load without locking, replaced
/// whole on reload.
pub struct Switches {
    table: ArcSwap<SwitchTable>,
    cursor: AtomicUsize,
    passive_failures_max: AtomicU32,
    /// Set by the health monitor: too few switches in rotation.
    panic: AtomicBool,
}

impl Switches {
    pub fn new(
        configs: &[SwitchConfig],
        passive_failures_max: u32,
        settings: BalanceSettings,
    ) -> Self {
        let entries = configs
            .iter()
            .filter_map(Switch::from_config)
            .map(|s| Arc::new(SwitchState::new(s)))
            .collect();
        Self {
            table: ArcSwap::from_pointee(SwitchTable::new(entries, settings)),
            cursor: AtomicUsize::new(0),
            passive_failures_max: AtomicU32::new(passive_failures_max),
            panic: AtomicBool::new(false),
        }
    }

    pub fn balance_settings(&self) -> BalanceSettings {
        self.table.load().settings
    }

    /// Fewer switches in rotation than `health.panic_threshold_percent`.
    pub fn in_panic(&self) -> bool {
        self.panic.load(Ordering::Relaxed)
    }

    /// The monitor's: whether the table is in panic; returns the previous value.
    pub(super) fn set_panic(&self, panic: bool) -> bool {
        self.panic.swap(panic, Ordering::Relaxed)
    }

    /// Every switch as operators see it.
    pub fn views(&self) -> Vec<SwitchView> {
        let table = self.snapshot();
        table
            .entries
            .iter()
            .map(|e| e.view(&table.settings))
            .collect()
    }

    pub fn snapshot(&self) -> Arc<SwitchTable> {
        self.table.load_full()
    }

    pub fn passive_failures_max(&self) -> u32 {
        self.passive_failures_max.load(Ordering::Relaxed)
    }

    /// Replaces the list. A switch that stays (same name and URL) keeps its
    /// state and health; returns the names (added, removed).
    pub fn replace(
        &self,
        configs: &[SwitchConfig],
        passive_failures_max: u32,
        settings: BalanceSettings,
    ) -> (Vec<SwitchName>, Vec<SwitchName>) {
        let old = self.snapshot();
        let mut added = Vec::new();
        let entries: Vec<Arc<SwitchState>> = configs
            .iter()
            .filter_map(Switch::from_config)
            .map(|s| {
                match old
                    .entries
                    .iter()
                    .find(|e| e.switch.name == s.name && e.switch.base == s.base)
                {
                    Some(kept) => {
                        kept.weight.store(s.weight, Ordering::Relaxed);
                        kept.clone()
                    }
                    None => {
                        added.push(s.name.clone());
                        Arc::new(SwitchState::new(s))
                    }
                }
            })
            .collect();
        let removed = old
            .entries
            .iter()
            .filter(|e| !entries.iter().any(|n| Arc::ptr_eq(n, e)))
            .map(|e| e.switch.name.clone())
            .collect();
        self.passive_failures_max
            .store(passive_failures_max, Ordering::Relaxed);
        self.table
            .store(Arc::new(SwitchTable::new(entries, settings)));
        (added, removed)
    }

    /// Any switch in rotation now.
    pub fn any_available(&self) -> bool {
        self.snapshot().entries.iter().any(|e| e.is_available())
    }

    /// The switch for a fresh attempt among those in rotation that `allowed`
    /// accepts (not yet tried for this transaction), by the configured
    /// balancing. Lock-free.
    pub fn pick(&self, allowed: impl Fn(&SwitchState) -> bool) -> Option<Arc<SwitchState>> {
        let table = self.table.load();
        let picked = match table.settings.mode {
            Balancing::RoundRobin => self.pick_round_robin(&table, &allowed),
            Balancing::LeastLatency => pick_least_latency(&table, &allowed),
        };
        if let Some(p) = &picked {
            p.balance.note_picked();
        }
        picked
    }

    /// The next available switch in the weighted rotation that `allowed`
    /// accepts. A switch in slow start keeps a slot only with the
    /// probability of its ramped share (it is taken anyway when nothing
    /// else is eligible). One atomic increment per slot looked at, at most
    /// one full turn of the rotation.
    fn pick_round_robin(
        &self,
        table: &SwitchTable,
        allowed: &impl Fn(&SwitchState) -> bool,
    ) -> Option<Arc<SwitchState>> {
        let len = table.sequence.len();
        if len == 0 {
            return None;
        }
        // One increment per pick, then a local scan of one full turn: with
        // concurrent pickers interleaving increments, a scan driven by the
        // shared cursor could miss the only eligible switch. Skipped slots
        // move the cursor on, so the others keep their weighted shares.
        let start = self.cursor.fetch_add(1, Ordering::Relaxed);
        let now = balance::now_ms();
        let mut ramping = None;
        for i in 0..len {
            let slot = start.wrapping_add(i) % len;
            let entry = &table.entries[table.sequence[slot] as usize];
            if entry.is_available() && allowed(entry) {
                let share = entry
                    .balance
                    .slow_start_factor(now, table.settings.slow_start);
                if share < 1.0 && rand::random::<f64>() >= share {
                    ramping.get_or_insert(entry);
                    continue;
                }
                if i > 0 {
                    self.cursor.fetch_add(i, Ordering::Relaxed);
                }
                return Some(entry.clone());
            }
        }
        ramping.cloned()
    }
}

/// Least latency: of two distinct random switches in rotation, the one
/// with the lower [`SwitchState::score`] (power of two choices: no herd
/// on the single best switch, no scan of all).
fn pick_least_latency(
    table: &SwitchTable,
    allowed: &impl Fn(&SwitchState) -> bool,
) -> Option<Arc<SwitchState>> {
    let settings = &table.settings;
    let eligible: Vec<&Arc<SwitchState>> = table
        .entries
        .iter()
        .filter(|e| e.is_available() && allowed(e))
        .collect();
    match eligible.len() {
        0 => None,
        1 => Some(eligible[0].clone()),
        n => {
            let a = rand::random_range(0..n);
            let b = (a + rand::random_range(1..n)) % n;
            let now = balance::now_ms();
            let (x, y) = (eligible[a], eligible[b]);
            let best = if y.score(settings, now) < x.score(settings, now) {
                y
            } else {
                x
            };
            Some(best.clone())
        }
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;
    use crate::switches::health::Thresholds;

    fn cfg(name: &str, weight: u32) -> SwitchConfig {
        SwitchConfig {
            name: SwitchName::parse(name).unwrap(),
            url: format!("http://127.0.0.1:{}", 9000 + weight),
            weight,
        }
    }

    const T: Thresholds = Thresholds {
        healthy: 2,
        unhealthy: 2,
    };
    const PASSIVE_FAILURES: u32 = 3;
    const RR: BalanceSettings = BalanceSettings {
        mode: Balancing::RoundRobin,
        ewma_decay: Duration::from_secs(10),
        ewma_default: Duration::from_millis(30),
        slow_start: Duration::ZERO,
    };
    const LEAST: BalanceSettings = BalanceSettings {
        mode: Balancing::LeastLatency,
        ..RR
    };

    fn up(switches: &Switches) {
        for e in &switches.snapshot().entries {
            e.health.record_probe(true, Duration::ZERO, 1, T);
        }
    }

    fn names(switches: &Switches, n: usize, allowed: impl Fn(&SwitchState) -> bool) -> String {
        (0..n)
            .map(|_| {
                switches
                    .pick(&allowed)
                    .map_or("-".to_owned(), |s| s.switch.name.to_string())
            })
            .collect()
    }

    #[test]
    fn equal_weights_rotate() {
        let s = Switches::new(&[cfg("a", 1), cfg("b", 1), cfg("c", 1)], 3, RR);
        up(&s);
        assert_eq!(names(&s, 6, |_| true), "abcabc");
    }

    #[test]
    fn weights_are_smooth() {
        let s = Switches::new(&[cfg("a", 5), cfg("b", 1), cfg("c", 1)], 3, RR);
        up(&s);
        assert_eq!(names(&s, 7, |_| true), "aabacaa");
    }

    #[test]
    fn unprobed_and_excluded_switches_are_skipped() {
        let s = Switches::new(&[cfg("a", 1), cfg("b", 2)], 3, RR);
        assert!(
            s.pick(|_| true).is_none(),
            "nothing is in rotation before a probe"
        );
        up(&s);
        assert_eq!(names(&s, 4, |e| e.name().as_str() != "a"), "bbbb");
        assert!(s.pick(|_| false).is_none());
    }

    #[test]
    fn passive_ejection_is_immediate_and_only_probes_bring_it_back() {
        let s = Switches::new(&[cfg("a", 1), cfg("b", 2)], 3, RR);
        up(&s);
        let a = s.snapshot().entries[0].clone();
        for _ in 0..3 {
            a.record_forward(ForwardResult::Failed, PASSIVE_FAILURES);
        }
        assert_eq!(names(&s, 3, |_| true), "bbb");
        // A late success of a request sent before the ejection changes nothing.
        a.record_forward(ForwardResult::Approved, PASSIVE_FAILURES);
        assert_eq!(names(&s, 3, |_| true), "bbb");
        assert!(
            !a.health.record_probe(true, Duration::ZERO, 2, T),
            "one success is not enough"
        );
        assert!(a.health.record_probe(true, Duration::ZERO, 3, T));
        assert!(names(&s, 3, |_| true).contains('a'));
    }

    #[test]
    fn concurrent_picks_always_find_the_one_eligible_switch() {
        let s = Arc::new(Switches::new(
            &[cfg("a", 5), cfg("b", 1), cfg("c", 1)],
            3,
            RR,
        ));
        up(&s);
        let threads: Vec<_> = (0..4)
            .map(|_| {
                let s = s.clone();
                std::thread::spawn(move || {
                    (0..10_000).all(|_| s.pick(|e| e.name().as_str() == "c").is_some())
                })
            })
            .collect();
        for t in threads {
            assert!(t.join().unwrap(), "a pick missed the eligible switch");
        }
    }

    #[test]
    fn a_reload_keeps_the_state_of_switches_that_stay() {
        let s = Switches::new(&[cfg("a", 1), cfg("b", 1)], 3, RR);
        up(&s);
        let (added, removed) = s.replace(&[cfg("b", 1), cfg("c", 1)], 3, RR);
        assert_eq!(
            (added, removed),
            (vec![cfg("c", 1).name], vec![cfg("a", 1).name])
        );
        assert_eq!(names(&s, 2, |_| true), "bb", "c waits for its first probe");
    }

    fn shares(s: &Switches, n: usize) -> std::collections::BTreeMap<String, usize> {
        let mut by = std::collections::BTreeMap::new();
        for _ in 0..n {
            let p = s.pick(|_| true).expect("a switch");
            // Each pick is an attempt that finishes at once.
            let _attempt = p.begin();
            *by.entry(p.name().to_string()).or_default() += 1;
        }
        by
    }

    #[test]
    fn least_latency_sends_little_to_a_slow_switch_and_round_robin_its_share() {
        let s = Switches::new(&[cfg("a", 1), cfg("b", 1), cfg("c", 1)], 3, LEAST);
        up(&s);
        let now = balance::now_ms();
        for e in &s.snapshot().entries {
            let ms = if e.name().as_str() == "c" { 200 } else { 2 };
            e.balance
                .observe(Duration::from_millis(ms), now, LEAST.ewma_decay);
        }
        let by = shares(&s, 3000);
        assert!(by.get("c").copied().unwrap_or(0) < 30, "{by:?}");
        assert!(by["a"] > 1000 && by["b"] > 1000, "{by:?}");

        s.replace(&[cfg("a", 1), cfg("b", 1), cfg("c", 1)], 3, RR);
        let by = shares(&s, 3000);
        assert_eq!(by["c"], 1000, "{by:?}");
    }

    #[test]
    fn least_latency_weighs_outstanding_attempts_and_weight() {
        let s = Switches::new(&[cfg("a", 1), cfg("b", 4)], 3, LEAST);
        up(&s);
        let now = balance::now_ms();
        for e in &s.snapshot().entries {
            e.balance
                .observe(Duration::from_millis(10), now, LEAST.ewma_decay);
        }
        // Equal latency: the heavier switch wins every comparison.
        let by = shares(&s, 100);
        assert_eq!(by["b"], 100, "{by:?}");
        // Held attempts count against it.
        let table = s.snapshot();
        let held: Vec<_> = (0..8).map(|_| table.entries[1].begin()).collect();
        let p = s.pick(|_| true).expect("a switch");
        assert_eq!(p.name().as_str(), "a");
        drop(held);
    }

    #[test]
    fn a_switch_in_slow_start_gets_a_reduced_share_but_is_never_refused() {
        let ramp = BalanceSettings {
            slow_start: Duration::from_secs(3600),
            ..RR
        };
        let s = Switches::new(&[cfg("a", 1), cfg("b", 1)], 3, ramp);
        up(&s);
        s.snapshot().entries[1]
            .balance
            .start_slow_start(balance::now_ms());
        let by = shares(&s, 2000);
        let b = by.get("b").copied().unwrap_or(0);
        assert!(b > 20 && b < 250, "a tenth of its half share: {by:?}");
        assert!(
            s.pick(|e| e.name().as_str() == "b").is_some(),
            "the only eligible switch is taken even while ramping"
        );
    }
}
