//! The merge loop both subword models share: adjacent symbols merge, best pair first and the
//! leftmost among equals, until no pair merges — what a rescan after every merge computes, in
//! O(n log n). Symbols form a linked list; candidate pairs wait in a heap and are checked against
//! the list when popped (a pair whose side has merged since is stale and skipped).

use std::cmp::Reverse;
use std::collections::BinaryHeap;

/// Merges `syms`: `pair(left, right)` gives the pair's priority (higher first) and the merged
/// symbol, or `None` when the two do not merge. Returns the symbols left, in order.
///
/// A symbol must tell itself apart from what it merges into (carry its extent), since a popped
/// pair is current only when both sides still equal what they were when it was pushed.
pub(super) fn merge<T, K>(syms: Vec<T>, pair: impl Fn(&T, &T) -> Option<(K, T)>) -> Vec<T>
where
    T: PartialEq,
    K: Ord,
{
    let n = syms.len();
    let mut slots: Vec<Option<T>> = syms.into_iter().map(Some).collect();
    let mut prev: Vec<Option<usize>> = (0..n).map(|i| i.checked_sub(1)).collect();
    let mut next: Vec<Option<usize>> = (0..n).map(|i| (i + 1 < n).then_some(i + 1)).collect();
    // (priority, leftmost first, left slot, right slot, merged symbol); a pair's merged symbol
    // carries both sides' extent, so comparing it again on pop finds stale pairs.
    let mut heap = BinaryHeap::new();
    let candidate = |slots: &[Option<T>], next: &[Option<usize>], i: usize| {
        let j = next[i]?;
        let (priority, merged) = pair(slots[i].as_ref()?, slots[j].as_ref()?)?;
        Some((priority, Reverse(i), j, Wrapped(merged)))
    };
    for i in 0..n {
        heap.extend(candidate(&slots, &next, i));
    }
    while let Some((_, Reverse(i), j, Wrapped(merged))) = heap.pop() {
        if next[i] != Some(j) || slots[j].is_none() {
            continue;
        }
        // Still the same two symbols? Recompute the pair and compare what it would make.
        let current = match (slots[i].as_ref(), slots[j].as_ref()) {
            (Some(l), Some(r)) => pair(l, r).map(|(_, m)| m),
            _ => None,
        };
        if current.as_ref() != Some(&merged) {
            continue;
        }
        slots[i] = Some(merged);
        slots[j] = None;
        next[i] = next[j];
        if let Some(k) = next[j] {
            prev[k] = Some(i);
        }
        if let Some(p) = prev[i] {
            heap.extend(candidate(&slots, &next, p));
        }
        heap.extend(candidate(&slots, &next, i));
    }
    slots.into_iter().flatten().collect()
}

/// Orders heap entries by priority and position only: the merged symbol rides along.
struct Wrapped<T>(T);

impl<T> PartialEq for Wrapped<T> {
    fn eq(&self, _: &Self) -> bool {
        true
    }
}

impl<T> Eq for Wrapped<T> {}

impl<T> PartialOrd for Wrapped<T> {
    fn partial_cmp(&self, other: &Self) -> Option<std::cmp::Ordering> {
        Some(self.cmp(other))
    }
}

impl<T> Ord for Wrapped<T> {
    fn cmp(&self, _: &Self) -> std::cmp::Ordering {
        std::cmp::Ordering::Equal
    }
}
