//! A deadline queue: tasks ordered by deadline, ties in insertion order,
//! O(log n) per push and pop.

use std::cmp::Reverse;
use std::collections::BinaryHeap;

/// Deadline-ordered tasks.
#[derive(Debug)]
pub struct DdlQueue<T: Ord> {
    heap: BinaryHeap<Reverse<(i64, u64, T)>>,
    seq: u64,
}

impl<T: Ord> Default for DdlQueue<T> {
    fn default() -> Self {
        DdlQueue {
            heap: BinaryHeap::new(),
            seq: 0,
        }
    }
}

impl<T: Ord + Copy> DdlQueue<T> {
    /// Adds `task` due at `ddl`.
    pub fn push(&mut self, ddl: i64, task: T) {
        self.seq += 1;
        self.heap.push(Reverse((ddl, self.seq, task)));
    }
    /// Removes and returns the earliest task if it is due at `now`.
    pub fn pop_due(&mut self, now: i64) -> Option<(i64, T)> {
        match self.heap.peek() {
            Some(Reverse((ddl, _, t))) if *ddl <= now => {
                let r = (*ddl, *t);
                self.heap.pop();
                Some(r)
            }
            _ => None,
        }
    }
    /// Runs `f` on every task due at `now` (at most `limit`); returns how
    /// many ran.
    pub fn do_task(&mut self, now: i64, limit: usize, mut f: impl FnMut(i64, T)) -> usize {
        let mut n = 0;
        while n < limit {
            let Some((ddl, t)) = self.pop_due(now) else {
                break;
            };
            f(ddl, t);
            n += 1;
        }
        n
    }
    /// The earliest deadline.
    pub fn next_ddl(&self) -> Option<i64> {
        self.heap.peek().map(|Reverse((d, _, _))| *d)
    }
    /// Tasks queued.
    pub fn len(&self) -> usize {
        self.heap.len()
    }
    /// No task queued.
    pub fn is_empty(&self) -> bool {
        self.heap.is_empty()
    }
    /// Keeps only the tasks for which `keep` is true (O(n)): drops tasks
    /// that became stale before their deadline.
    pub fn retain(&mut self, mut keep: impl FnMut(&T) -> bool) {
        self.heap.retain(|Reverse((_, _, t))| keep(t));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    // The original's correct_ddl_manager.
    #[test]
    fn runs_what_is_due_and_nothing_else() {
        let ms = 1_000_000i64;
        let mut q = DdlQueue::default();
        for (i, d) in [10, 10, 20, 50, 100].iter().enumerate() {
            q.push(d * ms, i as u32);
        }
        let mut ran = vec![];
        assert_eq!(q.do_task(30 * ms, usize::MAX, |_, t| ran.push(t)), 3);
        assert_eq!(ran, [0, 1, 2]);
        assert_eq!(q.do_task(60 * ms, usize::MAX, |_, _| {}), 1);
        assert_eq!(q.do_task(99 * ms, usize::MAX, |_, _| {}), 0);
        assert_eq!(q.do_task(100 * ms, usize::MAX, |_, _| {}), 1);
        assert!(q.is_empty());
    }

    #[test]
    fn a_million_tasks_run_one_at_a_time_in_order() {
        let mut q = DdlQueue::default();
        // Pushed in a scrambled order.
        let n = 1_000_000u64;
        for i in 0..n {
            let d = (i * 7919) % n;
            q.push(d as i64, d);
        }
        for i in 0..n as i64 {
            let mut got = None;
            assert_eq!(q.do_task(i, usize::MAX, |_, t| got = Some(t)), 1);
            assert_eq!(got, Some(i as u64));
        }
        assert!(q.is_empty());
    }

    #[test]
    fn retain_drops_stale_tasks_and_keeps_the_order() {
        let mut q = DdlQueue::default();
        for i in 0..100u32 {
            q.push(i as i64, i);
        }
        q.retain(|t| t % 3 == 0);
        assert_eq!(q.len(), 34);
        let mut ran = vec![];
        q.do_task(i64::MAX, usize::MAX, |_, t| ran.push(t));
        assert_eq!(ran, (0..100).filter(|t| t % 3 == 0).collect::<Vec<_>>());
    }

    #[test]
    fn ties_keep_insertion_order_and_limit_holds() {
        let mut q = DdlQueue::default();
        for i in 0..10u32 {
            q.push(5, i);
        }
        let mut ran = vec![];
        assert_eq!(q.do_task(5, 4, |_, t| ran.push(t)), 4);
        assert_eq!(ran, [0, 1, 2, 3]);
        assert_eq!(q.next_ddl(), Some(5));
        assert_eq!(q.len(), 6);
    }
}
