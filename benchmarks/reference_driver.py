"""Serves the official JAX/Flax OGPO agent's update to ``benchmarks/update.py --reference`` over stdin/stdout.

Run by the reference venv's python (``benchmarks/reference_venv.sh``), never by the project's own venv:

    python -P benchmarks/reference_driver.py --dir DIR --setting JSON [--threads N]

DIR is a local copy of the official source (``simchowitzlabpublic/OGPO_public``); nothing of it lives in this
repository. The agent is built the way the official entry point builds it: ``scripts/ogpo/square.sh`` from DIR is
read for its variables and the arguments it passes to ``ogpo/main.py``, those go through the official
``parse_cli_args`` / ``load_config`` / ``config_to_agent_dict``, and only the sizes of the benchmark setting that
differ from the script are appended as further ``--ns.key=value`` overrides (reported back). Then
``OGPOAgent.create`` and ``reset_optimizers_with_lr`` (the online transition), as in ``ogpo/main.py`` and the
online runner. The timed call is the online runner's ``agent.batch_update(batch, batch_success, success_flag)``
on random batches shaped like ``ReplayBuffer.sample_sequence`` output with the UTD axis of 1, the success buffer
active (so BC runs on the success batch and the success-buffer TD step runs, as in our update with a success
batch).

Protocol (one JSON object per line on stdout; everything the official code prints goes to stderr):
    startup   -> {"ready": true, "compile_s", "matmul_flops", "xla_flops", "overrides", "config", ...}
    "time N"  -> {"n": N, "seconds": wall, "cpu_seconds": process CPU time}   (N updates, synced each step)
    "quit"    -> exits
Any failure -> {"error": "one line"} and exit 1.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shlex
import sys
import time
import traceback

_PROTO = None  # the real stdout; fd 1 is pointed at stderr so library prints cannot break the protocol


def reply(obj: dict) -> None:
    _PROTO.write(json.dumps(obj) + "\n")
    _PROTO.flush()


def fail(msg: str) -> None:
    reply({"error": msg})
    sys.exit(1)


# ---- reading scripts/ogpo/square.sh -----------------------------------------------------------------------


def script_argv(path: str) -> list[str]:
    """The arguments square.sh passes to ogpo/main.py, with its own variable defaults substituted."""
    with open(path) as f:
        text = f.read()
    variables: dict[str, str] = {}
    for line in text.splitlines():
        if line.startswith("for arg in"):
            break  # CLI-override parsing starts here; everything above is the script's defaults
        m = re.match(r"^([A-Za-z_][A-Za-z0-9_]*)=(.*)$", line)
        if m:
            words = shlex.split(m.group(2), comments=True)
            variables[m.group(1)] = words[0] if words else ""
    lines = text.splitlines()
    start = next((i for i, l in enumerate(lines) if "ogpo/main.py" in l), None)
    if start is None:
        raise ValueError(f"{path} does not call ogpo/main.py")
    cmd = []
    for line in lines[start:]:
        cmd.append(line.rstrip().rstrip("\\"))
        if not line.rstrip().endswith("\\"):
            break

    def subst(m: re.Match) -> str:
        name = m.group(1) or m.group(2)
        if name not in variables:
            raise ValueError(f"{path}: ${name} has no default in the script")
        return variables[name]

    joined = re.sub(r"\$\{(\w+)\}|\$(\w+)", subst, " ".join(cmd))
    words = shlex.split(joined)
    return [w for w in words[words.index("ogpo/main.py") + 1 :] if w.startswith("-")]


# ---- building the agent -----------------------------------------------------------------------------------


def setting_overrides(config: dict, s: dict) -> list[str]:
    """--ns.key=value arguments for the setting's sizes where they differ from what the script gives."""
    agent = config["agent"]
    want = {
        "agent.horizon_length": s["H"],
        "agent.flow_steps": s["K"],
        "agent.ft_flow_steps": s["K"],  # the whole chain enters the ratio, as ft_flow_steps == flow_steps in the script
        "agent.group_num_samples": s["G"],
        "agent.ppo_batch_size": s["ppo_batch"],
        "agent.batch_size": s["batch"],
        "success_buffer.batch_size": s["batch"],  # our update's success batch has the critic batch size
        "agent.num_qs": s["M"],
        "agent.actor_hidden_dims": list(s["hidden"]),
        "agent.value_hidden_dims": list(s["critic_hidden"]),
    }
    out = []
    for key, value in want.items():
        ns, k = key.split(".")
        have = config[ns][k] if ns != "agent" else agent.get(k)
        if isinstance(have, (list, tuple)):
            have = list(have)
        if have != value:
            text = "[" + ",".join(str(v) for v in value) + "]" if isinstance(value, list) else str(value)
            out.append(f"--{key}={text}")
    return out


def random_batch(np, rng, s: dict, B: int) -> dict:
    """One UTD slice shaped like ReplayBuffer.sample_sequence(B, H) output: [1, B, ...] float32 arrays."""
    H, A = s["H"], s["act_dim"]
    obs = rng.standard_normal((1, B, s["obs_dim"])).astype(np.float32)
    f = lambda a: a.astype(np.float32)  # noqa: E731
    return {
        "observations": obs,
        "actions": f(rng.uniform(-1, 1, (1, B, H, A))),
        "masks": f(np.ones((1, B, H))),
        "rewards": f(-rng.random((1, B, H))),
        "terminals": f(np.zeros((1, B, H))),
        "valid": f(np.ones((1, B, H))),
        "next_observations": obs + np.float32(0.01),
        "is_success": f(np.ones((1, B, H))),
    }


def main() -> None:
    global _PROTO
    _PROTO = os.fdopen(os.dup(1), "w")
    os.dup2(2, 1)
    sys.stdout = sys.stderr

    ap = argparse.ArgumentParser()
    ap.add_argument("--dir", required=True)
    ap.add_argument("--setting", required=True, help="JSON: obs_dim act_dim H K G batch ppo_batch M (critic_)hidden")
    ap.add_argument("--threads", type=int, default=None)
    ap.add_argument("--seed", type=int, default=1)
    args = ap.parse_args()
    s = json.loads(args.setting)

    if args.threads:
        # XLA's own flags do not keep it on N cores here; the affinity does (checked with the CPU time it uses).
        allowed = sorted(os.sched_getaffinity(0))
        os.sched_setaffinity(0, allowed[: args.threads])
    os.environ["JAX_PLATFORMS"] = "cpu"

    src = os.path.realpath(args.dir)
    sys.path.insert(0, src)
    try:
        import jax
        import numpy as np

        from ogpo.agents.ogpo import OGPOAgent
        from ogpo.utils import config_loader
    except Exception as e:  # noqa: BLE001
        fail(f"cannot import the official agent from {src}: {type(e).__name__}: {e}")
    mod = sys.modules["ogpo.agents.ogpo"].__file__
    if not os.path.realpath(mod).startswith(src + os.sep):
        fail(f"ogpo.agents.ogpo resolved to {mod}, not under {src}")

    try:
        argv = script_argv(os.path.join(src, "scripts", "ogpo", "square.sh"))
        algo, cli = config_loader.parse_cli_args(argv)
        base = config_loader.load_config(algo, cli)
        extra = setting_overrides(base, s)
        algo, cli = config_loader.parse_cli_args(argv + extra)
        config = config_loader.load_config(algo, cli)
        agent_config = config_loader.config_to_agent_dict(config)
        # as ogpo/main.py does before create()
        agent_config["_original_actor_obs"] = agent_config.get("actor_obs", "state")
        agent_config["_original_critic_obs"] = agent_config.get("critic_obs", "state")
        agent = OGPOAgent.create(
            args.seed,
            np.zeros(s["obs_dim"], np.float32),  # train_dataset.sample(()) gives one step: obs and a single action
            np.zeros(s["act_dim"], np.float32),
            agent_config,
            agent_config["adv_clip_min"],
        )
        agent = agent.reset_optimizers_with_lr()  # the online runner does this before its first update

        rng = np.random.default_rng(0)
        batch = jax.device_put(random_batch(np, rng, s, agent_config["batch_size"]))
        success = jax.device_put(random_batch(np, rng, s, config["success_buffer"]["batch_size"]))
        flag = True  # success buffer active: BC on the success batch and the success-buffer TD step

        t = time.perf_counter()
        lowered = OGPOAgent.batch_update.lower(agent, batch, success, flag)
        compiled = lowered.compile()
        compile_s = time.perf_counter() - t
        hlo = compiled.as_text()
        cost = compiled.cost_analysis()
        cost = cost[0] if isinstance(cost, (list, tuple)) else cost
        xla_flops = float(cost.get("flops", float("nan"))) if cost else float("nan")

        agent, _ = agent.batch_update(batch, success, flag)  # warm-up (first call also pays dispatch setup)
        jax.block_until_ready(agent)
    except SystemExit:
        raise
    except Exception as e:  # noqa: BLE001
        traceback.print_exc()
        fail(f"building or compiling the official update failed: {type(e).__name__}: {e}")

    ac = agent_config
    reply(
        {
            "ready": True,
            "compile_s": compile_s,
            "matmul_flops": matmul_flops(hlo),
            "xla_flops": xla_flops,
            "overrides": extra,
            "config": {
                "algo": algo,
                "H": ac["horizon_length"],
                "K": ac["flow_steps"],
                "ft_flow_steps": ac["ft_flow_steps"],
                "G": ac["group_num_samples"],
                "ppo_batch": ac["ppo_batch_size"],
                "batch": ac["batch_size"],
                "success_batch": config["success_buffer"]["batch_size"],
                "M": ac["num_qs"],
                "actor_hidden": list(ac["actor_hidden_dims"]),
                "critic_hidden": list(ac["value_hidden_dims"]),
                "adv_strategy": ac["adv_strategy"],
                "use_success_buffer_q": ac["use_success_buffer_q"],
                "use_tapered_noise": ac.get("use_tapered_noise"),
                "bc_coeff": ac["bc_coeff"],
            },
            "versions": {"jax": jax.__version__, "python": sys.version.split()[0]},
            "cpus": sorted(os.sched_getaffinity(0)),
            "xla_flags": os.environ.get("XLA_FLAGS", ""),
        }
    )

    for line in sys.stdin:
        words = line.split()
        if not words:
            continue
        if words[0] == "quit":
            break
        if words[0] == "time":
            n = int(words[1])
            c0, t0 = os.times(), time.perf_counter()
            for _ in range(n):
                agent, _ = agent.batch_update(batch, success, flag)
                jax.block_until_ready(agent)  # force_jax_sync in the script: the runner syncs every step
            wall = time.perf_counter() - t0
            c1 = os.times()
            reply({"n": n, "seconds": wall, "cpu_seconds": (c1.user - c0.user) + (c1.system - c0.system)})
        else:
            reply({"error": f"unknown command {words[0]!r}"})


# ---- counting matmul FLOPs in the compiled HLO -------------------------------------------------------------

_SHAPE = re.compile(r"^[a-z]+\d*\[([0-9,]*)\]")


def _close(s: str, i: int) -> int:
    """Index just past the bracket group opening at s[i]."""
    depth = 0
    for j in range(i, len(s)):
        if s[j] in "([{":
            depth += 1
        elif s[j] in ")]}":
            depth -= 1
            if depth == 0:
                return j + 1
    return len(s)


def _dims(t: str) -> list[int] | None:
    m = _SHAPE.match(t)
    return [int(d) for d in m.group(1).split(",") if d] if m else None


def _parse_hlo(text: str):
    comps: dict[str, list] = {}
    entry = cur = None
    for line in text.splitlines():
        if not line.strip() or line.startswith("HloModule"):
            continue
        if not line.startswith(" ") and line.rstrip().endswith("{"):
            head = line.strip()
            if head.startswith("ENTRY "):
                head = head[6:]
                entry = head.split()[0].lstrip("%")
            cur = comps.setdefault(head.split()[0].lstrip("%"), [])
            continue
        if line.strip() == "}":
            cur = None
            continue
        if cur is None or "=" not in line:
            continue
        s = line.strip().removeprefix("ROOT ")
        lhs, rest = s.split("=", 1)
        rest = rest.strip()
        if rest.startswith("("):
            end = _close(rest, 0)
            typ, rest = rest[:end], rest[end:].strip()
        else:
            typ, _, rest = rest.partition(" ")
        op, _, rest = rest.partition("(")
        end = _close("(" + rest, 0) - 1
        cur.append((lhs.strip().lstrip("%"), typ, op.strip(), rest[: end - 1], rest[end:]))
    return comps, entry


def matmul_flops(text: str) -> float:
    """2*M*N*K summed over the dot ops XLA runs for one call: fusions and calls followed, while bodies times
    their known trip count, conditionals counted by their most expensive branch (the success-buffer branch)."""
    comps, entry = _parse_hlo(text)
    memo: dict[str, int] = {}

    def callee(attrs: str, key: str) -> str | None:
        m = re.search(key + r"=%?([\w.\-]+)", attrs)
        return m.group(1) if m else None

    def flops(name: str) -> int:
        if name in memo:
            return memo[name]
        memo[name] = 0
        shapes, total = {}, 0
        for iname, typ, op, operands, attrs in comps.get(name, []):
            shapes[iname] = typ
            if op == "dot":
                lhs = operands.split(",")[0].strip().split()[-1].lstrip("%")
                ldims = _dims(shapes.get(lhs, "")) or _dims(operands.strip()) or []
                m = re.search(r"lhs_contracting_dims=\{([0-9,]*)\}", attrs)
                k = 1
                for d in m.group(1).split(",") if m and m.group(1) else []:
                    k *= ldims[int(d)]
                n = 1
                for d in _dims(typ) or []:
                    n *= d
                total += 2 * n * k
            elif op == "while":
                trip = re.search(r'"known_trip_count":\{"n":"(\d+)"\}', attrs)
                total += (int(trip.group(1)) if trip else 1) * flops(callee(attrs, "body") or "")
            elif op == "conditional":
                m = re.search(r"branch_computations=\{([^}]*)\}", attrs)
                branches = (
                    [b.strip().lstrip("%") for b in m.group(1).split(",")]
                    if m
                    else [callee(attrs, "true_computation"), callee(attrs, "false_computation")]
                )
                total += max((flops(b) for b in branches if b), default=0)
            else:
                for key in ("calls", "to_apply"):
                    c = callee(attrs, key)
                    if c:
                        total += flops(c)
        memo[name] = total
        return total

    return float(flops(entry)) if entry else float("nan")


if __name__ == "__main__":
    main()
