#!/usr/bin/env python3
"""SimPy peer of arbor-sim's queue-scheduling rollout model (for the events/s comparison).

Same model as sim/scenarios/peer-rollout.toml with the `sync-queue` policy: K continuous-batching workers
(max Q sequences each), every response its own request (prompt replication), a shared FIFO queue, a decode
step costing a + b*kv (kv grows by the batch size each step), prefill stall per admission, lognormal lengths
with a per-prompt difficulty factor, synchronous steps (barrier, train, weight sync). Like arbor-sim it jumps
from one sequence completion to the next instead of simulating every decode step. Random streams differ from
arbor's, so times agree statistically, not bit for bit. Run by hand: pip install simpy; python3 simpy_rollout.py
Prints one JSON line with events, wall_s, events_per_s and the mean step time.
"""
import argparse
import collections
import heapq
import json
import math
import random
import time

import simpy


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--gpus", type=int, default=64)
    ap.add_argument("--steps", type=int, default=20)
    ap.add_argument("--prompts", type=int, default=256)
    ap.add_argument("--n", type=int, default=8)
    ap.add_argument("--seed", type=int, default=1)
    args = ap.parse_args()

    # Cost model (same constants as peer-rollout.toml): 8.2B params, H800, bandwidth efficiency 0.6.
    params, kvb, bw, flops = 8.2e9, 147456.0, 3.35e12 * 0.6, 989e12
    a = 5e-3 + 2 * params / bw
    b = kvb / bw
    prefill_per_token = 2 * params / (flops * 0.4)
    train_per_token = 6 * params / (args.gpus * flops * 0.35)
    sync_s = 2 * params / 200e9
    prompt_tokens, cap, median, sigma, diff_sigma, q_max = 512, 16384, 2000.0, 1.0, 0.5, 128
    rng = random.Random(args.seed)
    env = simpy.Environment()
    counter = {"events": 0, "tokens": 0}
    queue = collections.deque()  # FIFO of response lengths
    step_done = {"ev": None, "left": 0}

    def steps_time(m, n, kv):
        return m * a + b * (m * kv + n * m * (m - 1) / 2)

    class Worker:
        def __init__(self):
            self.heap = []  # (finish_step, length)
            self.step = 0
            self.kv = 0
            self.anchor = 0.0
            self.wake = env.event()
            env.process(self.run())

        def advance(self):
            n = len(self.heap)
            if n == 0:
                self.anchor = max(self.anchor, env.now)
                return
            dt = env.now - self.anchor
            if dt <= 0:
                return
            A, B = b * n / 2, a + b * (self.kv - n / 2)
            m = int((-B + math.sqrt(B * B + 4 * A * dt)) / (2 * A)) if A > 0 else int(dt / B)
            m = max(0, min(m, self.heap[0][0] - self.step))
            self.anchor += steps_time(m, n, self.kv)
            self.step += m
            self.kv += m * n

        def fill(self):
            while queue and len(self.heap) < q_max:
                length = queue.popleft()
                self.advance()
                heapq.heappush(self.heap, (self.step + length, length))
                self.kv += prompt_tokens
                self.anchor += prompt_tokens * prefill_per_token

        def run(self):
            while True:
                if not self.heap:
                    yield self.wake
                    self.wake = env.event()
                    continue
                m = self.heap[0][0] - self.step
                t = self.anchor + steps_time(m, len(self.heap), self.kv)
                res = yield env.timeout(max(0.0, t - env.now)) | self.wake
                if self.wake in res:
                    self.wake = env.event()
                    continue
                counter["events"] += 1
                self.advance()
                self.step = max(self.step, self.heap[0][0])
                while self.heap and self.heap[0][0] <= self.step:
                    _, length = heapq.heappop(self.heap)
                    self.kv -= prompt_tokens + length  # the finished sequence's context leaves the cache
                    step_done["left"] -= 1
                self.kv = max(self.kv, 0) if self.heap else 0
                self.fill()
                if step_done["left"] == 0 and not step_done["ev"].triggered:
                    step_done["ev"].succeed()

    workers = [Worker() for _ in range(args.gpus)]

    def trainer():
        for s in range(args.steps):
            step_done["ev"] = env.event()
            step_done["left"] = args.prompts * args.n
            tokens = 0
            for p in range(args.prompts):
                d = math.exp(diff_sigma * rng.gauss(0, 1))
                for _ in range(args.n):
                    length = int(min(cap, max(1, round(median * math.exp(sigma * rng.gauss(0, 1)) * d))))
                    queue.append(length)
                    tokens += prompt_tokens + length
            # Least-loaded first, one request at a time (as arbor's load heap does).
            loads = [(len(w.heap), i) for i, w in enumerate(workers)]
            heapq.heapify(loads)
            while queue and loads:
                load, i = heapq.heappop(loads)
                w = workers[i]
                if load >= q_max:
                    break
                w.advance()
                length = queue.popleft()
                heapq.heappush(w.heap, (w.step + length, length))
                w.kv += prompt_tokens
                w.anchor += prompt_tokens * prefill_per_token
                heapq.heappush(loads, (load + 1, i))
            for w in workers:
                if w.heap and not w.wake.triggered:
                    w.wake.succeed()
            yield step_done["ev"]
            counter["events"] += 1
            yield env.timeout(train_per_token * tokens)
            counter["events"] += 1
            yield env.timeout(sync_s)
            counter["events"] += 1
            counter["tokens"] += tokens

    t0 = time.perf_counter()
    env.process(trainer())
    env.run()
    wall = time.perf_counter() - t0
    print(json.dumps({"engine": "simpy", "events": counter["events"], "wall_s": wall,
                      "events_per_s": counter["events"] / wall, "step_time_s_mean": env.now / args.steps}))


if __name__ == "__main__":
    main()
