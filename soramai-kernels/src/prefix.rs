//! A cache of prompt prefixes' key/value states, so that a prompt beginning like an earlier one
//! (a long system prompt sent with every request) skips the prefill of the part they share.
//!
//! Entries live in scopes: a lookup only sees entries stored under the same scope and the same
//! adapter, so a serving platform that passes the tenant's id as the scope never lets one tenant's
//! prompts be reused by (or timed by) another. A request without a scope neither reads nor writes
//! the cache. Memory is bounded: the least recently used entries go first.

use std::sync::{Arc, Mutex, MutexGuard};

use crate::lora::Adapter;
use crate::model::KvCache;
use crate::tokenizer::TokenId;

/// Shortest shared prefix worth reusing: below it the copy costs about what the prefill saves.
pub const MIN_REUSE: usize = 16;

/// What the cache has done since it was made ([`PrefixCache::stats`]).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct PrefixStats {
    /// Lookups by scoped requests.
    pub lookups: u64,
    /// Lookups that reused a prefix.
    pub hits: u64,
    /// Prompt tokens whose prefill was skipped.
    pub reused_tokens: u64,
    /// Entries held now.
    pub entries: usize,
    /// Bytes of key/value state held now.
    pub bytes: usize,
}

struct Entry {
    scope: String,
    adapter: Option<Arc<Adapter>>,
    tokens: Vec<TokenId>,
    cache: KvCache,
    used: u64,
}

impl Entry {
    fn matches(&self, scope: &str, adapter: Option<&Arc<Adapter>>) -> bool {
        self.scope == scope
            && match (&self.adapter, adapter) {
                (None, None) => true,
                (Some(a), Some(b)) => Arc::ptr_eq(a, b),
                _ => false,
            }
    }
}

struct Inner {
    entries: Vec<Entry>,
    bytes: usize,
    capacity: usize,
    clock: u64,
    stats: PrefixStats,
}

/// Prompt prefixes' key/value states by scope and adapter, least recently used out first.
pub struct PrefixCache {
    inner: Mutex<Inner>,
}

impl std::fmt::Debug for PrefixCache {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PrefixCache").field("stats", &self.stats()).finish()
    }
}

impl PrefixCache {
    /// A cache holding at most `capacity` bytes of key/value state (0 turns it off).
    pub fn new(capacity: usize) -> Self {
        PrefixCache {
            inner: Mutex::new(Inner {
                entries: Vec::new(),
                bytes: 0,
                capacity,
                clock: 0,
                stats: PrefixStats::default(),
            }),
        }
    }

    fn lock(&self) -> MutexGuard<'_, Inner> {
        // A panic while holding the lock leaves at worst a stale entry list; keep serving.
        self.inner.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Changes the byte budget, evicting at once what no longer fits.
    pub fn set_capacity(&self, capacity: usize) {
        let mut g = self.lock();
        g.capacity = capacity;
        g.evict();
    }

    /// The longest stored prefix of `prompt` under `scope` and `adapter`, as a cache holding it,
    /// leaving at least the prompt's last token to run (its logits start the generation). None
    /// when nothing of at least [`MIN_REUSE`] tokens matches.
    pub fn lookup(&self, scope: &str, adapter: Option<&Arc<Adapter>>, prompt: &[TokenId]) -> Option<KvCache> {
        let mut g = self.lock();
        g.stats.lookups += 1;
        let limit = prompt.len().saturating_sub(1);
        let (best, len) = g
            .entries
            .iter()
            .enumerate()
            .filter(|(_, e)| e.matches(scope, adapter))
            .map(|(i, e)| (i, common_prefix(&e.tokens, prompt).min(limit)))
            .max_by_key(|&(_, n)| n)?;
        if len < MIN_REUSE {
            return None;
        }
        g.clock += 1;
        let now = g.clock;
        let e = &mut g.entries[best];
        e.used = now;
        let mut cache = e.cache.clone();
        cache.truncate(len);
        g.stats.hits += 1;
        g.stats.reused_tokens += len as u64;
        Some(cache)
    }

    /// Stores the state of a whole prompt (`cache` holds exactly `tokens`). An entry it extends is
    /// replaced; one that already covers it is only marked used.
    pub fn store(&self, scope: &str, adapter: Option<&Arc<Adapter>>, tokens: &[TokenId], cache: &KvCache) {
        if tokens.len() < MIN_REUSE || cache.len() != tokens.len() {
            return;
        }
        let bytes = cache.bytes();
        let mut g = self.lock();
        if bytes > g.capacity {
            return;
        }
        g.clock += 1;
        let now = g.clock;
        if let Some(e) = g.entries.iter_mut().find(|e| e.matches(scope, adapter) && e.tokens.starts_with(tokens)) {
            e.used = now;
            return;
        }
        let mut freed = 0;
        g.entries.retain(|e| {
            let extended = e.matches(scope, adapter) && tokens.starts_with(&e.tokens);
            if extended {
                freed += e.cache.bytes();
            }
            !extended
        });
        g.bytes -= freed;
        g.entries.push(Entry {
            scope: scope.to_owned(),
            adapter: adapter.cloned(),
            tokens: tokens.to_vec(),
            cache: cache.clone(),
            used: now,
        });
        g.bytes += bytes;
        g.evict();
    }

    /// Drops every entry of a scope (a tenant closed or its data deleted).
    pub fn forget_scope(&self, scope: &str) {
        self.lock().remove(|e| e.scope == scope);
    }

    /// Drops every entry made with an adapter (it was removed).
    pub fn forget_adapter(&self, adapter: &Arc<Adapter>) {
        self.lock().remove(|e| e.adapter.as_ref().is_some_and(|a| Arc::ptr_eq(a, adapter)));
    }

    /// Drops everything.
    pub fn clear(&self) {
        self.lock().remove(|_| true);
    }

    /// Counters and occupancy.
    pub fn stats(&self) -> PrefixStats {
        let g = self.lock();
        PrefixStats { entries: g.entries.len(), bytes: g.bytes, ..g.stats }
    }
}

impl Inner {
    fn remove(&mut self, doomed: impl Fn(&Entry) -> bool) {
        let mut freed = 0;
        self.entries.retain(|e| {
            let d = doomed(e);
            if d {
                freed += e.cache.bytes();
            }
            !d
        });
        self.bytes -= freed;
    }

    fn evict(&mut self) {
        while self.bytes > self.capacity {
            let Some((i, _)) = self.entries.iter().enumerate().min_by_key(|(_, e)| e.used) else { break };
            let e = self.entries.swap_remove(i);
            self.bytes -= e.cache.bytes();
        }
    }
}

fn common_prefix(a: &[TokenId], b: &[TokenId]) -> usize {
    a.iter().zip(b).take_while(|(x, y)| x == y).count()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::Config;

    fn config() -> Config {
        Config {
            arch: "llama".into(),
            family: crate::family::Family::Llama,
            n_layer: 2,
            n_embd: 8,
            n_head: 2,
            n_head_kv: 1,
            head_dim: 4,
            n_ff: 16,
            vocab: 1000,
            n_ctx: 128,
            rope_base: 10000.0,
            rope_dims: 4,
            rope_layout: crate::cpu::ops::RopeLayout::Interleaved,
            eps: 1e-5,
            rope_scale: 1.0,
            rope_freqs: false,
            sliding_window: None,
            attn_scale: 0.5,
        }
    }

    fn filled(c: &Config, n: usize) -> KvCache {
        let mut k = KvCache::new(c);
        k.fill_for_tests(n);
        k
    }

    #[test]
    fn reuses_only_within_a_scope_and_adapter() {
        let c = config();
        let cache = PrefixCache::new(1 << 30);
        let prompt: Vec<TokenId> = (0..40).collect();
        cache.store("tenant-a", None, &prompt, &filled(&c, 40));
        assert!(cache.lookup("tenant-b", None, &prompt).is_none());
        let hit = cache.lookup("tenant-a", None, &prompt).map(|k| k.len());
        assert_eq!(hit, Some(39), "the last prompt token always runs");
        let mut longer = prompt[..30].to_vec();
        longer.extend(100..120);
        assert_eq!(cache.lookup("tenant-a", None, &longer).map(|k| k.len()), Some(30));
        let s = cache.stats();
        assert_eq!((s.lookups, s.hits, s.reused_tokens, s.entries), (3, 2, 69, 1));
    }

    #[test]
    fn short_matches_miss_and_extensions_replace() {
        let c = config();
        let cache = PrefixCache::new(1 << 30);
        let a: Vec<TokenId> = (0..20).collect();
        cache.store("t", None, &a, &filled(&c, 20));
        let mut b = a[..MIN_REUSE - 1].to_vec();
        b.extend([900, 901, 902]);
        assert!(cache.lookup("t", None, &b).is_none());
        let ext: Vec<TokenId> = (0..50).collect();
        cache.store("t", None, &ext, &filled(&c, 50));
        assert_eq!(cache.stats().entries, 1, "the extension replaced the shorter entry");
        cache.store("t", None, &a, &filled(&c, 20));
        assert_eq!(cache.stats().entries, 1, "a covered prompt adds nothing");
        cache.forget_scope("t");
        assert_eq!(cache.stats(), PrefixStats { lookups: 1, ..Default::default() });
    }

    #[test]
    fn evicts_least_recently_used_within_budget() {
        let c = config();
        let one = filled(&c, 20).bytes();
        let cache = PrefixCache::new(2 * one);
        let p = |base: TokenId| (base..base + 20).collect::<Vec<_>>();
        cache.store("t", None, &p(0), &filled(&c, 20));
        cache.store("t", None, &p(100), &filled(&c, 20));
        assert!(cache.lookup("t", None, &p(0)).is_some());
        cache.store("t", None, &p(200), &filled(&c, 20));
        assert!(cache.lookup("t", None, &p(100)).is_none(), "least recently used went first");
        assert!(cache.lookup("t", None, &p(0)).is_some());
        assert!(cache.stats().bytes <= 2 * one);
        cache.set_capacity(0);
        assert_eq!(cache.stats().entries, 0);
    }
}
