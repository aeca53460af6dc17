"""Every downstream task module implements `DownstreamTask` with its signatures,
and its objective derives from `DownstreamObjective`."""

import inspect

import pytest

from uniter_jax.downstream.finetune import TASKS
from uniter_jax.downstream.task import DownstreamObjective, DownstreamTask

MEMBERS = ("objective", "check", "targets", "predict", "score", "write_results")


def parameters(fn, required_only=False):
    """Names of `fn`'s parameters (without defaults: `required_only`), less `self`."""
    return [
        p.name
        for p in inspect.signature(fn).parameters.values()
        if p.name != "self"
        and p.kind not in (p.VAR_KEYWORD, p.VAR_POSITIONAL)
        and not (required_only and p.default is not p.empty)
    ]


@pytest.mark.parametrize("name", sorted(TASKS))
def test_the_task_module_implements_the_interface(name):
    module = TASKS[name]
    assert isinstance(module, DownstreamTask)
    for member in MEMBERS:
        # The same parameters; a task's `objective` may add options with defaults.
        got = parameters(getattr(module, member), required_only=member == "objective")
        assert got == parameters(getattr(DownstreamTask, member)), f"{name}.{member}"
    assert module.RESULTS_FORMAT in ("json", "csv")
    assert next(iter(module.SUBTASKS)) in (name, f"{name}_qa")
    objective_type = inspect.signature(module.objective).return_annotation
    assert issubclass(getattr(module, objective_type), DownstreamObjective)
