//! Indexed binary min-heap over items `0..n` with updatable keys (decrease/increase-key, remove).
//!
//! Used for per-worker next-completion times and least-loaded dispatch: one entry per worker that
//! is updated in place, instead of a lazy heap that accumulates stale entries.

const ABSENT: u32 = u32::MAX;

/// Min-heap of items `0..n`, each present at most once with a key `K`.
#[derive(Clone, Debug, Default)]
pub struct IndexedHeap<K> {
    heap: Vec<u32>,
    keys: Vec<K>,
    pos: Vec<u32>,
}

impl<K: Ord + Copy + Default> IndexedHeap<K> {
    /// Empty heap for items `0..n`.
    pub fn new(n: usize) -> Self {
        IndexedHeap { heap: Vec::with_capacity(n), keys: vec![K::default(); n], pos: vec![ABSENT; n] }
    }

    /// Number of items present.
    pub fn len(&self) -> usize {
        self.heap.len()
    }

    /// True when no item is present.
    pub fn is_empty(&self) -> bool {
        self.heap.is_empty()
    }

    /// Smallest (item, key).
    #[inline]
    pub fn peek(&self) -> Option<(u32, K)> {
        self.heap.first().map(|&i| (i, self.keys[i as usize]))
    }

    /// Key of `item` if present.
    pub fn key(&self, item: u32) -> Option<K> {
        (self.pos[item as usize] != ABSENT).then(|| self.keys[item as usize])
    }

    /// Insert `item` with `key`, or change its key.
    #[inline]
    pub fn set(&mut self, item: u32, key: K) {
        let i = item as usize;
        let p = self.pos[i];
        if p == ABSENT {
            self.keys[i] = key;
            self.heap.push(item);
            let at = self.heap.len() - 1;
            self.pos[i] = at as u32;
            self.sift_up(at);
        } else {
            let old = self.keys[i];
            self.keys[i] = key;
            if key < old {
                self.sift_up(p as usize);
            } else if key > old {
                self.sift_down(p as usize);
            }
        }
    }

    /// Remove `item` if present.
    #[inline]
    pub fn remove(&mut self, item: u32) {
        let p = self.pos[item as usize];
        if p == ABSENT {
            return;
        }
        let p = p as usize;
        self.pos[item as usize] = ABSENT;
        let last = self.heap.pop().expect("non-empty");
        if p < self.heap.len() {
            self.heap[p] = last;
            self.pos[last as usize] = p as u32;
            self.sift_down(p);
            self.sift_up(p);
        }
    }

    /// Remove and return the smallest (item, key).
    pub fn pop(&mut self) -> Option<(u32, K)> {
        let top = self.peek()?;
        self.remove(top.0);
        Some(top)
    }

    #[inline]
    fn sift_up(&mut self, mut at: usize) {
        let item = self.heap[at];
        let key = self.keys[item as usize];
        while at > 0 {
            let parent = (at - 1) / 2;
            let pi = self.heap[parent];
            if self.keys[pi as usize] <= key {
                break;
            }
            self.heap[at] = pi;
            self.pos[pi as usize] = at as u32;
            at = parent;
        }
        self.heap[at] = item;
        self.pos[item as usize] = at as u32;
    }

    #[inline]
    fn sift_down(&mut self, mut at: usize) {
        let n = self.heap.len();
        let item = self.heap[at];
        let key = self.keys[item as usize];
        loop {
            let l = 2 * at + 1;
            if l >= n {
                break;
            }
            let mut c = l;
            if l + 1 < n && self.keys[self.heap[l + 1] as usize] < self.keys[self.heap[l] as usize] {
                c = l + 1;
            }
            let ci = self.heap[c];
            if self.keys[ci as usize] >= key {
                break;
            }
            self.heap[at] = ci;
            self.pos[ci as usize] = at as u32;
            at = c;
        }
        self.heap[at] = item;
        self.pos[item as usize] = at as u32;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::rng::Rng;

    #[test]
    fn matches_sorted_order_under_random_updates() {
        let mut r = Rng::new(7);
        let n = 50;
        let mut h = IndexedHeap::<u64>::new(n);
        let mut model: Vec<Option<u64>> = vec![None; n];
        for _ in 0..5000 {
            let i = r.below(n as u64) as u32;
            match r.below(3) {
                0 => {
                    h.remove(i);
                    model[i as usize] = None;
                }
                _ => {
                    let k = r.below(100) * 64 + i as u64;
                    h.set(i, k);
                    model[i as usize] = Some(k);
                }
            }
            let want = model.iter().enumerate().filter_map(|(i, k)| k.map(|k| (k, i as u32))).min();
            assert_eq!(h.peek().map(|(i, k)| (k, i)), want);
            assert_eq!(h.len(), model.iter().flatten().count());
        }
    }
}
