//! The live switch table: each switch's state and counters, and the
//! rotation requests pick from (smooth weighted round-robin, lock-free).

use std::sync::Arc;
use std::sync::atomic::{AtomicI64, AtomicU32, AtomicU64, AtomicUsize, Ordering};

use arc_swap::ArcSwap;

use super::client::Switch;
use super::health::{ForwardResult, Health};
use super::view::SwitchView;
use crate::config::SwitchConfig;
use crate::domain::SwitchName;

/// Live state of one switch. Its health is written by the health monitor;
/// the request path only bumps counters and reads.
pub struct SwitchState {
    pub switch: Switch,
    weight: AtomicU32,
    pub(super) health: Health,
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
            in_flight: AtomicI64::new(0),
            approved: AtomicU64::new(0),
            declined: AtomicU64::new(0),
            failed: AtomicU64::new(0),
        }
    }

    pub fn name(&self) -> &SwitchName {
        &self.switch.name
    }

    fn weight(&self) -> u32 {
        self.weight.load(Ordering::Relaxed)
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
        self.health.record_forward(result, passive_failures_max);
    }

    /// What `GET /v1/switches` and the status page show.
    pub fn view(&self) -> SwitchView {
        SwitchView {
            name: self.switch.name.to_string(),
            url: self.switch.base.to_string(),
            weight: self.weight(),
            health: self.health.view(),
            in_flight: self.in_flight.load(Ordering::Relaxed),
            approved: self.approved.load(Ordering::Relaxed),
            declined: self.declined.load(Ordering::Relaxed),
            failed: self.failed.load(Ordering::Relaxed),
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
}

impl SwitchTable {
    fn new(entries: Vec<Arc<SwitchState>>) -> Self {
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
        Self { entries, sequence }
    }
}

/// The live switch set: a snapshot readers load without locking, replaced
/// whole on reload.
pub struct Switches {
    table: ArcSwap<SwitchTable>,
    cursor: AtomicUsize,
    passive_failures_max: AtomicU32,
}

impl Switches {
    pub fn new(configs: &[SwitchConfig], passive_failures_max: u32) -> Self {
        let entries = configs
            .iter()
            .filter_map(Switch::from_config)
            .map(|s| Arc::new(SwitchState::new(s)))
            .collect();
        Self {
            table: ArcSwap::from_pointee(SwitchTable::new(entries)),
            cursor: AtomicUsize::new(0),
            passive_failures_max: AtomicU32::new(passive_failures_max),
        }
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
        self.table.store(Arc::new(SwitchTable::new(entries)));
        (added, removed)
    }

    /// Any switch in rotation now.
    pub fn any_available(&self) -> bool {
        self.snapshot().entries.iter().any(|e| e.is_available())
    }

    /// The next available switch in rotation that `allowed` accepts (not yet
    /// tried for this transaction). Lock-free: one atomic increment per slot
    /// looked at, at most one full turn of the rotation.
    pub fn pick(&self, allowed: impl Fn(&SwitchState) -> bool) -> Option<Arc<SwitchState>> {
        let table = self.snapshot();
        let len = table.sequence.len();
        if len == 0 {
            return None;
        }
        // One increment per pick, then a local scan of one full turn: with
        // concurrent pickers interleaving increments, a scan driven by the
        // shared cursor could miss the only eligible switch. Skipped slots
        // move the cursor on, so the others keep their weighted shares.
        let start = self.cursor.fetch_add(1, Ordering::Relaxed);
        for i in 0..len {
            let slot = start.wrapping_add(i) % len;
            let entry = &table.entries[table.sequence[slot] as usize];
            if entry.is_available() && allowed(entry) {
                if i > 0 {
                    self.cursor.fetch_add(i, Ordering::Relaxed);
                }
                return Some(entry.clone());
            }
        }
        None
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
        let s = Switches::new(&[cfg("a", 1), cfg("b", 1), cfg("c", 1)], 3);
        up(&s);
        assert_eq!(names(&s, 6, |_| true), "abcabc");
    }

    #[test]
    fn weights_are_smooth() {
        let s = Switches::new(&[cfg("a", 5), cfg("b", 1), cfg("c", 1)], 3);
        up(&s);
        assert_eq!(names(&s, 7, |_| true), "aabacaa");
    }

    #[test]
    fn unprobed_and_excluded_switches_are_skipped() {
        let s = Switches::new(&[cfg("a", 1), cfg("b", 2)], 3);
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
        let s = Switches::new(&[cfg("a", 1), cfg("b", 2)], 3);
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
        let s = Arc::new(Switches::new(&[cfg("a", 5), cfg("b", 1), cfg("c", 1)], 3));
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
        let s = Switches::new(&[cfg("a", 1), cfg("b", 1)], 3);
        up(&s);
        let (added, removed) = s.replace(&[cfg("b", 1), cfg("c", 1)], 3);
        assert_eq!(
            (added, removed),
            (vec![cfg("c", 1).name], vec![cfg("a", 1).name])
        );
        assert_eq!(names(&s, 2, |_| true), "bb", "c waits for its first probe");
    }
}
