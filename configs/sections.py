"""Config sections made from the settings dataclasses, so that each default is
written once, in the dataclass that documents it (`OptimSettings`,
`TaskSettings`, `PipelineConfig`); a config sets only what its preset or
recipe changes. Not a config file itself."""

import dataclasses

import ml_collections


def defaults(settings: type, *, only: tuple[str, ...] = (), exclude: tuple[str, ...] = ()):
    """A `ConfigDict` of `settings`' fields at their defaults (all of them, or
    `only` these), less `exclude`. Every field must have a default."""
    fields = {f.name: f for f in dataclasses.fields(settings)}
    names = only or tuple(n for n in fields if n not in exclude)
    missing = [n for n in names if n not in fields]
    if missing:
        raise KeyError(f"{settings.__name__} has no fields {missing}")
    return ml_collections.ConfigDict({n: getattr(settings, n) for n in names})
