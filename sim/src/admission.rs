//! Request-level admission (`inference.admission = "request"`): the samples of a prompt pinned to
//! one engine as a single n-sample request are admitted together and preempted together, as
//! vLLM's V0 scheduler does with a `SequenceGroup` (`SamplingParams(n)`). The default,
//! `"sequence"`, schedules every sequence on its own: vLLM V1 (and SGLang) fan an n-sample request
//! out into n independent requests, so each is admitted and preempted alone.
//!
//! - **Admission.** When the head of an engine's queue is a sample of a group pinned there, every
//!   queued sample of that group is admitted at once, and only when all of them fit: the batch
//!   limit (`max_concurrency`) and the KV cache (their contexts plus one token per running
//!   sequence; an idle engine always admits, as in sequence mode). Otherwise the engine waits.
//! - **Preemption.** At a KV-cache overflow the newest sequence's whole group leaves the batch
//!   (every running member on that engine), keeping the tokens generated, back to the front of the
//!   queue in group order. A group that is alone on its engine cannot be preempted as a unit
//!   without livelock (it would be readmitted into the same overflow); it then loses single
//!   sequences, as in sequence mode.
//!
//! Replicated samples (`prompt_replication`) are independent requests and are not grouped.

use crate::engine::{Phase, Sim};
use crate::scenario::Admission;

impl Sim<'_> {
    /// Record an engine event when tracking (tests): 0 admitted, 1 preempted, 2 turn generated.
    #[inline]
    pub(crate) fn log_engine(&mut self, w: u32, s: u32, what: u8) {
        if let Some(log) = self.m.engine_log.as_mut() {
            let x = &self.samples[s as usize];
            log.push((self.now, w, self.groups[x.group as usize].prompt, x.idx, what));
        }
    }

    /// True when `s` belongs to a group scheduled as one request on worker `w`.
    pub(crate) fn request_grouped(&self, s: u32, w: u32) -> bool {
        self.sc.inference.admission == Some(Admission::Request)
            && self.groups[self.samples[s as usize].group as usize].pinned == Some(w)
    }

    /// Admit the queued samples of `s`'s group on worker `w` together (request admission), if they
    /// all fit. Returns false (nothing admitted) when they do not.
    pub(crate) fn admit_request(&mut self, w: u32, s: u32) -> bool {
        let g = self.samples[s as usize].group;
        let (samples, wk) = (&self.samples, &self.workers[w as usize]);
        let member = |&(y, t): &(u32, u32)| {
            let x = &samples[y as usize];
            x.group == g && x.tag == t && x.phase == Phase::Queued
        };
        let (mut k, mut ctx) = (0u64, 0u64);
        for e in wk.local_queue.iter().filter(|e| member(e)) {
            k += 1;
            ctx += samples[e.0 as usize].ctx;
        }
        let cap = self.sc.inference.max_concurrency as u64;
        if wk.active > 0
            && (wk.active as u64 + k > cap || wk.kv_tokens + ctx + wk.active as u64 + k > self.cost.kv_capacity)
        {
            return false;
        }
        let mut taken = Vec::with_capacity(k as usize);
        let wk = &mut self.workers[w as usize];
        wk.local_queue.retain(|e| {
            let keep = !member(e);
            if !keep {
                taken.push(e.0);
            }
            keep
        });
        self.queued -= taken.len() as u64;
        let cap = self.sc.inference.max_concurrency;
        for y in taken {
            if self.workers[w as usize].active >= cap {
                // An idle engine admits a group larger than its batch limit in order; the rest
                // waits at the front of the queue.
                let tag = self.samples[y as usize].tag;
                self.workers[w as usize].local_queue.push_front((y, tag));
                self.queued += 1;
                continue;
            }
            self.admit(y, w);
        }
        true
    }

    /// Request preemption: `s` (already preempted) was the newest sequence on worker `w`; preempt
    /// the other running members of its group too, unless the group is alone on the engine.
    pub(crate) fn preempt_request_rest(&mut self, w: u32, s: u32) {
        let g = self.samples[s as usize].group as usize;
        let running: Vec<u32> = self.groups[g]
            .samples
            .iter()
            .copied()
            .filter(|&y| {
                let x = &self.samples[y as usize];
                x.phase == Phase::Gen && x.worker == w
            })
            .collect();
        if running.len() as u32 >= self.workers[w as usize].active {
            return; // alone on the engine: single-sequence preemption (see the module docs)
        }
        // Newest first onto the front of the queue, so that the group keeps its order.
        for &y in running.iter().rev() {
            self.preempt_one(w, y);
        }
    }

    /// Preempt the running sequence `s` on worker `w` to the front of its queue.
    pub(crate) fn preempt_one(&mut self, w: u32, s: u32) {
        self.evict(s);
        self.log_engine(w, s, 1);
        let x = &mut self.samples[s as usize];
        x.tag = x.tag.wrapping_add(1);
        x.phase = Phase::Queued;
        x.prefill = x.ctx;
        self.m.preemptions += 1;
        self.m.recomputed_tokens += x.ctx;
        let tag = x.tag;
        self.workers[w as usize].local_queue.push_front((s, tag));
        self.queued += 1;
        self.push_load(w);
    }
}
