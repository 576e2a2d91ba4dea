"""Environments: the toy point-robot task and the robosuite tasks behind one vector-env factory."""

from __future__ import annotations

from ogpo.envs.base import StepResult, VectorEnv

TOY_TASK = "toy"


def make_env(task: str, num_envs: int, seed: int = 0, horizon: int | None = None, **kwargs) -> VectorEnv:
    """A vector env for ``task``: ``toy`` (numpy, in-process) or a robosuite task (subprocess workers).
    ``horizon`` overrides the task's episode length (None = the registry's)."""
    if horizon is not None:
        kwargs["horizon"] = horizon
    if task == TOY_TASK:
        from ogpo.envs.toy import PointGapEnv

        return PointGapEnv(num_envs)
    from ogpo.envs.vector import make_vector_env

    return make_vector_env(task, num_envs, seed, **kwargs)


def task_dims(task: str) -> tuple[int, int, int]:
    """(obs_dim, act_dim, horizon) of a task without starting a simulator."""
    if task == TOY_TASK:
        from ogpo.envs.toy import PointGapEnv, ToyConfig

        return PointGapEnv.obs_dim, PointGapEnv.act_dim, ToyConfig().horizon
    from ogpo.envs.robosuite import task_spec

    spec = task_spec(task)
    return spec.obs_dim, spec.act_dim, spec.horizon


__all__ = ["StepResult", "VectorEnv", "make_env", "task_dims", "TOY_TASK"]
