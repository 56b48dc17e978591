#!/usr/bin/env python3
"""Sim meets reality (ISSUE 9): real synchronous vs asynchronous training under mpirun, and the
simulator's prediction for the same setup.

1. Runs configs/longtail.toml (forced lognormal response lengths, an emulated 12 ms decode step)
   under `mpirun -np 4` with 2 rollout ranks and 2 training ranks at alpha = 0 (synchronous: proven
   equal to the synchronous trainer in tests/mpi/), 1 and 2, with batch-locked rollout (the
   default) and continuous rollout ([async] mode = "continuous"), and continuous with replication.
2. Derives a simulator scenario from the alpha = 0 run only: the measured decode-step time, training
   seconds per token and per-step overhead, and the configured length distribution.
3. Runs `arbor sim run` on it and prints real and predicted step times and speedups, with the error.

Usage: python3 scripts/sim_vs_real.py [--steps 24] [--out runs/sim-vs-real]
"""
import argparse
import json
import os
import re
import subprocess
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
ARBOR = os.path.join(ROOT, "target", "release", "arbor")
WARMUP = 2  # steps left out of the means (first batches, no history to overlap with)
PROMPT_TOKENS = 24  # Countdown prompt length in characters (tokens), for the token counts


def mpirun(np, args):
    env = dict(os.environ)
    env.update({
        "OMPI_ALLOW_RUN_AS_ROOT": "1", "OMPI_ALLOW_RUN_AS_ROOT_CONFIRM": "1",
        "OMPI_MCA_btl": "self,vader,tcp", "OMPI_MCA_btl_tcp_if_include": "lo",
        "OMPI_MCA_oob_tcp_if_include": "lo", "OMPI_MCA_btl_vader_single_copy_mechanism": "none",
        "OMPI_MCA_rmaps_base_oversubscribe": "1",
    })
    cmd = ["mpirun", "-np", str(np), "--oversubscribe", ARBOR] + args
    r = subprocess.run(cmd, env=env, capture_output=True, text=True)
    if r.returncode != 0:
        sys.exit(f"sim_vs_real: {' '.join(cmd)} failed:\n{r.stdout}\n{r.stderr}")


def steps_of(run_dir):
    with open(os.path.join(run_dir, "metrics.jsonl")) as f:
        lines = [json.loads(l) for l in f]
    return [m for m in lines if "step_s" in m and "rl_step" in m]


def mean(xs):
    return sum(xs) / len(xs)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--steps", type=int, default=24)
    ap.add_argument("--out", default=os.path.join(ROOT, "runs", "sim-vs-real"))
    ap.add_argument("--config", default=os.path.join(ROOT, "configs", "longtail.toml"))
    ap.add_argument("--reuse", action="store_true", help="keep finished runs under --out (re-derive the simulation only)")
    a = ap.parse_args()
    os.makedirs(a.out, exist_ok=True)
    base = open(a.config).read()
    base = re.sub(r"(?m)^steps = 10$", f"steps = {a.steps}", base)
    lengths = re.search(r"(?m)^lengths = (.*)$", base).group(1)
    step_ms = float(re.search(r"(?m)^decode_step_ms = (.*)$", base).group(1))
    real = {}
    # (run, alpha, extra [async] keys): batch-locked rollout (the default), continuous rollout
    # (ROLL Flash's group-by-group refill across batches), continuous with replication
    runs = [(f"alpha{x}", x, "") for x in (0, 1, 2)]
    runs += [(f"alpha{x}-cont", x, 'mode = "continuous"\n') for x in (0, 1, 2)]
    runs += [("alpha2-cont-rep", 2, 'mode = "continuous"\nreplicate = true\n')]
    for name, alpha, extra in runs:
        cfg = os.path.join(a.out, f"{name}.toml")
        with open(cfg, "w") as f:
            f.write(base + f"\n[async]\nrollout_ranks = 2\nalpha = {alpha}\n{extra}")
        out = os.path.join(a.out, name)
        if not (a.reuse and os.path.exists(os.path.join(out, "longtail", "metrics.jsonl"))):
            print(f"sim_vs_real: mpirun -np 4 arbor train --config {cfg}", flush=True)
            mpirun(4, ["--threads", "1", "train", "--config", cfg, "--out-dir", out])
        real[name] = steps_of(os.path.join(out, "longtail"))[WARMUP:]

    # the scenario, from the synchronous run only
    s0 = real["alpha0"]
    decode_s = mean([m["time_generate_s"] / max(m["response_len_max"], 1) for m in s0])
    tokens = [m["trained_samples"] * (PROMPT_TOKENS + m["response_len_mean"]) for m in s0]
    # the trainer's busy time per step: the update, publishing the weights and the step's report
    # (everything but waiting for the batch), charged per trained token
    busy = [m["step_s"] - m["time_wait_batch_s"] for m in s0]
    train_per_token = mean([b / t for b, t in zip(busy, tokens)])
    overhead = 0.0
    params = 814208
    peak = 1e12
    # training: 6 N tokens / (train_gpus * peak * mfu) = train_per_token * tokens on 2 training ranks
    mfu = 6 * params / (2 * peak * train_per_token)
    with open(os.path.join(a.out, "alpha0.toml")) as f:
        rl = f.read()
    prompts = int(re.search(r"(?m)^prompts_per_step = (\d+)", rl).group(1))
    n = int(re.search(r"(?m)^samples_per_prompt = (\d+)", rl).group(1))
    max_new = int(re.search(r"(?m)^max_new_tokens = (\d+)", rl).group(1))
    max_batch = int(re.search(r"(?m)^max_batch = (\d+)", rl).group(1))
    scenario = f"""name = "sim-vs-real"
description = "Derived by scripts/sim_vs_real.py from the alpha = 0 run (4 CPU ranks: 2 rollout, 2 train)."
seed = 1
steps = {a.steps}
warmup_steps = {WARMUP}

[hardware]
gpus = 4
hbm_tb_per_s = 1e9
peak_tflops = {peak / 1e12}
link_gb_per_s = 1e9
intra_node_gb_per_s = 1e9
hbm_gb = 1e6

[model]
params_b = {params / 1e9}
kv_bytes_per_token = 1e-6

[inference]
tp = 1
max_concurrency = {max_batch}
decode_overhead_ms = {decode_s * 1e3}
bandwidth_efficiency = 1.0
prefill_mfu = 1.0

[training]
mfu = {mfu}
update_overhead_s = 0.0
sync_overhead_s = {overhead}
train_fraction = 0.5

[workload]
prompts_per_step = {prompts}
responses_per_prompt = {n}
prompt_tokens = {PROMPT_TOKENS}
response_tokens = {lengths}
max_response_tokens = {max_new}
prompt_difficulty_sigma = 0.0
"""
    # batch-locked rollout ranks generate one whole batch at a time (batch_rollout); the "-refill"
    # policies are ROLL Flash's group-by-group refill, what continuous rollout does
    for alpha in (0, 1, 2):
        for refill in (False, True):
            if refill and alpha == 0:
                continue
            mode = "sync" if alpha == 0 else "async"
            scenario += f"""
[[policy]]
name = "alpha{alpha}{'-refill' if refill else ''}"
mode = "{mode}"
placement = "disaggregated"
dispatch = "static"
alpha = {alpha}
batch_rollout = {'false' if refill else 'true'}
"""
    # arbor's continuous mode: group-by-group refill into fixed batches (a prompt of batch b starts
    # once b <= version + ceil(alpha); step s trains exactly batch s), with and without replication
    for alpha in (1, 2):
        for rep in (False, True):
            scenario += f"""
[[policy]]
name = "alpha{alpha}-fixed{'-rep' if rep else ''}"
mode = "async"
placement = "disaggregated"
dispatch = "static"
alpha = {alpha}
fixed_batches = true
prompt_replication = {'true' if rep else 'false'}
"""
    # streaming training (what-if: arbor's trainer is batch-locked): the step's batch trained in
    # rl.mini_batches mini-batches (at least 2), each as soon as its groups are complete
    mb = re.search(r"(?m)^mini_batches = (\d+)", rl)
    mb = max(2, int(mb.group(1)) if mb else 4)
    for alpha in (0, 1, 2):
        scenario += f"""
[[policy]]
name = "alpha{alpha}-stream"
mode = "async"
placement = "disaggregated"
dispatch = "static"
alpha = {alpha}
batch_rollout = true
train_mini_batches = {mb}
"""
    path = os.path.join(a.out, "scenario.toml")
    with open(path, "w") as f:
        f.write(scenario)
    r = subprocess.run([ARBOR, "sim", "run", "--scenario", path, "--json"], capture_output=True, text=True)
    if r.returncode != 0:
        sys.exit(f"sim_vs_real: arbor sim run failed:\n{r.stdout}\n{r.stderr}")
    js = json.loads(r.stdout[r.stdout.index("{"):])
    sim = {p["policy"]: p["step_time_s_mean"] for p in js["policies"]}

    print(f"\nmeasured from alpha = 0: decode step {decode_s * 1e3:.2f} ms (floor {step_ms} ms), "
          f"train {train_per_token * 1e6:.2f} us/token, overhead {overhead * 1e3:.1f} ms/step")
    print(f"scenario: {path}\n")
    print("| run | real s/step | sim s/step | real speedup | sim speedup | speedup error | trainer idle | slot util | sim, ROLL refill |")
    print("|---|---|---|---|---|---|---|---|---|")
    r0, p0 = mean([m["step_s"] for m in real["alpha0"]]), sim["alpha0"]
    rows = []
    # the simulator's policy for each real run: batch-locked rollout, or group-by-group refill into
    # fixed batches (continuous; alpha = 0 is the synchronous schedule either way)
    policy = {f"alpha{x}": f"alpha{x}" for x in (0, 1, 2)}
    policy.update({f"alpha{x}-cont": (f"alpha{x}-fixed" if x else "alpha0") for x in (0, 1, 2)})
    policy["alpha2-cont-rep"] = "alpha2-fixed-rep"
    for name, alpha, _ in runs:
        rs, ps = mean([m["step_s"] for m in real[name]]), sim[policy[name]]
        su_r, su_p = r0 / rs, p0 / ps
        err = abs(su_p - su_r) / su_r
        idle = mean([m.get("trainer_idle_frac", 0.0) for m in real[name]])
        util = [m["rollout_slot_util"] for m in real[name] if "rollout_slot_util" in m]
        util = f"{mean(util):.2f}" if util else "-"
        roll = f"{p0 / sim[f'alpha{alpha}-refill']:.2f}x" if alpha and "cont" in name else "-"
        rows.append({"run": name, "alpha": alpha, "sim_policy": policy[name], "real_step_s": rs, "sim_step_s": ps,
                     "real_speedup": su_r, "sim_speedup": su_p, "error": err, "trainer_idle_frac": idle,
                     "sim_stream_speedup": p0 / sim[f"alpha{alpha}-stream"]})
        print(f"| {name} | {rs:.3f} | {ps:.3f} | {su_r:.2f}x | {su_p:.2f}x | {100 * err:.1f} % | {idle:.2f} | {util} | {roll} |")
    with open(os.path.join(a.out, "table.json"), "w") as f:
        json.dump(rows, f, indent=1)
    worst = max(r["error"] for r in rows)
    print(f"\nworst speedup error {100 * worst:.1f} % (target <= 10 %)")
    print("what-if, streaming training (mini-batches trained as their groups complete): "
          + ", ".join(f"alpha = {x}: {p0 / sim[f'alpha{x}-stream']:.2f}x" for x in (0, 1, 2)))


if __name__ == "__main__":
    main()
