//! The offset estimate of a node that syncs by measurement, kept between
//! syncs (sans-IO: times are passed in).
//!
//! A measurement says the true offset lies in `[off - e, off + e]` at the
//! local time it was taken. The estimate is such an interval too; between
//! measurements it widens by the drift bound (`drift_ppm` of the time
//! since). A new measurement is intersected with the aged estimate, as
//! NTP's and Marzullo's interval filters do: the result is never wider than
//! the aged estimate, so a re-sync whose bracket was stretched by a
//! scheduler slice never replaces a good estimate with a worse one, and two
//! disjoint intervals prove that one of them is wrong (a tampered clock
//! word, or a broken bracket): the new one is then refused.

/// What a measurement did to the estimate.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Fold {
    /// The estimate narrowed (or moved inside its old interval).
    Narrowed,
    /// The measurement was wider than the aged estimate: nothing learnt.
    Kept,
    /// Disjoint from the aged estimate: refused.
    Inconsistent,
}

/// The interval estimate of the offset, with when it was taken.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Estimate {
    /// Centre of the interval (ns to add to the local clock).
    pub offset: i64,
    /// Half-width at `at` (ns).
    pub bound: i64,
    /// Local monotonic ns when the interval was this narrow.
    pub at: i64,
    /// Drift bound between the two clocks, parts per million.
    pub drift_ppm: i64,
}

impl Estimate {
    /// The estimate of one measurement `(offset, bound)` taken at `at`.
    pub fn new(offset: i64, bound: i64, at: i64, drift_ppm: i64) -> Estimate {
        Estimate {
            offset,
            bound: bound.max(0),
            at,
            drift_ppm: drift_ppm.max(0),
        }
    }

    /// The half-width at local time `t`: the bound grown by the drift since
    /// `at` (never less than the bound, whatever `t`).
    pub fn bound_at(&self, t: i64) -> i64 {
        let since = t.saturating_sub(self.at).max(0) as i128;
        let grown = since * self.drift_ppm as i128 / 1_000_000;
        (self.bound as i128 + grown).min(i64::MAX as i128) as i64
    }

    /// Folds in the measurement `(offset, bound)` taken at local time `t`.
    pub fn fold(&mut self, offset: i64, bound: i64, t: i64) -> Fold {
        let t = t.max(self.at);
        let b = self.bound_at(t) as i128;
        let (o, nb) = (offset as i128, bound.max(0) as i128);
        let cur = (self.offset as i128 - b, self.offset as i128 + b);
        let new = (o - nb, o + nb);
        let lo = cur.0.max(new.0);
        let hi = cur.1.min(new.1);
        if lo > hi {
            return Fold::Inconsistent;
        }
        if (lo, hi) == cur {
            // The new interval holds the whole aged one: rebase only.
            self.bound = b.min(i64::MAX as i128) as i64;
            self.at = t;
            return Fold::Kept;
        }
        // Round the half-width up so that the interval still covers both
        // ends.
        self.offset = ((lo + hi).div_euclid(2)) as i64;
        self.bound = ((hi - lo + 1) / 2 + 1).min(i64::MAX as i128) as i64;
        self.at = t;
        Fold::Narrowed
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MS: i64 = 1_000_000;

    #[test]
    fn the_bound_ages_by_the_drift() {
        let e = Estimate::new(0, 10_000, 0, 50);
        assert_eq!(e.bound_at(0), 10_000);
        assert_eq!(e.bound_at(1_000 * MS), 10_000 + 50_000);
        assert_eq!(e.bound_at(-5), 10_000, "never narrower than measured");
    }

    #[test]
    fn a_wider_measurement_never_widens_the_estimate() {
        let mut e = Estimate::new(100, 20_000, 0, 0);
        assert_eq!(e.fold(3 * MS, 5 * MS, 10 * MS), Fold::Kept);
        assert_eq!((e.offset, e.bound), (100, 20_000));
    }

    #[test]
    fn a_narrow_measurement_narrows_and_stays_inside() {
        let mut e = Estimate::new(0, 20_000, 0, 0);
        assert_eq!(e.fold(15_000, 10_000, MS), Fold::Narrowed);
        // [5 000, 20 000] is the intersection.
        assert!(e.offset - e.bound <= 5_000 && e.offset + e.bound >= 20_000);
        assert!(e.bound <= 7_502, "bound {}", e.bound);
    }

    #[test]
    fn disjoint_measurements_are_refused() {
        let mut e = Estimate::new(0, 10_000, 0, 0);
        assert_eq!(e.fold(10 * MS, 10_000, MS), Fold::Inconsistent);
        assert_eq!((e.offset, e.bound, e.at), (0, 10_000, 0));
    }

    #[test]
    fn extreme_values_do_not_overflow() {
        let mut e = Estimate::new(i64::MAX, i64::MAX, i64::MIN, i64::MAX);
        let _ = e.bound_at(i64::MAX);
        let _ = e.fold(i64::MIN, i64::MAX, i64::MAX);
        let mut e = Estimate::new(0, 1, 0, 1_000);
        assert_eq!(e.fold(i64::MAX, 1, 1), Fold::Inconsistent);
    }

    proptest::proptest! {
        /// Whatever the measurements, as long as each contains the truth the
        /// estimate contains it, and it never grows except by aging.
        #[test]
        fn the_truth_stays_inside(truth in -1_000_000i64..1_000_000,
                                  ms in proptest::collection::vec((-50_000i64..50_000, 1i64..100_000, 0i64..50 * MS), 1..40)) {
            let mut t = 0i64;
            let mut e = Estimate::new(truth, 200_000, t, 20);
            for (err, width, dt) in ms {
                t += dt;
                let before = e.bound_at(t);
                // A measurement whose interval holds the truth.
                let width = width.max(err.abs());
                let f = e.fold(truth + err, width, t);
                proptest::prop_assert_ne!(f, Fold::Inconsistent);
                proptest::prop_assert!((e.offset - truth).abs() <= e.bound, "{:?} lost {}", e, truth);
                proptest::prop_assert!(e.bound <= before + 1);
            }
        }
    }
}
