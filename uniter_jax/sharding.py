"""Logical axis names, the device mesh, and the rules that join them.

The model names the axes of its parameters and of a few key activations with
the constants below (`EMBED`, `HEADS`, ...); it never sees a mesh. The
trainer builds a mesh `('data', 'fsdp', 'tensor')` and maps names to mesh
axes with the rules from the config, e.g. `("embed", "fsdp")` shards every
embed-sized parameter dimension over the FSDP axis. Rules are applied in
order and a mesh axis is used at most once per array, so `("batch", ("data",
"fsdp"))` followed by `("embed", "fsdp")` keeps activations `[batch, length,
embed]` sharded over the batch only, while weights `[embed, mlp]` are split
over FSDP and tensor. The rule lookup is Flax's.

Outside a `Layout.active()` context (single-device use, tests, notebooks)
`constrain` and `per_example` do nothing, so the model runs unchanged.
"""

from __future__ import annotations

import contextlib
import dataclasses
import math
from collections.abc import Callable, Iterator, Mapping, Sequence
from typing import Any

import jax
import numpy as np
from flax import nnx
from flax.core import spmd as flax_spmd
from flax.linen import spmd as linen_spmd
from jax.experimental import multihost_utils
from jax.sharding import Mesh, NamedSharding, PartitionSpec

# Logical axis names, used by the model and in the config's rules.
BATCH = "batch"  # examples
LENGTH = "length"  # sequence positions (text, then regions)
EMBED = "embed"  # hidden width
MLP = "mlp"  # feed-forward width
HEADS = "heads"  # attention heads (a projection's output: heads x head_dim)
KV = "kv"  # width of one head
VOCAB = "vocab"  # word-piece vocabulary
LAYERS = "layers"  # the stacked layer axis
FEATURES = "features"  # region feature width (2048) and its box / class outputs
CLASSES = "classes"  # small classifier outputs (1601 region labels, 2 ITM classes)

MESH_AXES = ("data", "fsdp", "tensor")

Rules = tuple[tuple[str, Any], ...]


def annotate(init: Callable, *names: str | None) -> Callable:
    """An initializer whose parameter carries the logical axis `names`.

    Nothing is sharded when the parameter is created (`eager_sharding=False`):
    the trainer creates parameters under jit with the shardings it derives.
    """
    return nnx.with_partitioning(init, names, eager_sharding=False)


def param(value: jax.Array, *names: str | None) -> nnx.Param:
    """An `nnx.Param` holding `value`, with the logical axis `names`."""
    return nnx.Param(value, out_sharding=names, eager_sharding=False)


def _rules() -> Rules:
    return tuple(flax_spmd.get_logical_axis_rules())


def _active() -> bool:
    return not jax.sharding.get_abstract_mesh().empty and bool(_rules())


def constrain(x: jax.Array, *names: str | None) -> jax.Array:
    """Pins `x`'s sharding by logical names; the identity outside a layout."""
    if not _active():
        return x
    return jax.lax.with_sharding_constraint(x, linen_spmd.logical_to_mesh_axes(names, _rules()))


def per_example(fn: Callable) -> Callable:
    """Runs `fn` (all arguments and the result batch-leading) on each batch shard.

    Inside a layout this is a `jax.shard_map` over the mesh axes that `BATCH`
    maps to, so a per-example computation (the WRA Sinkhorn loop) runs on each
    device's own examples with no communication; outside, it is `fn` itself.
    """

    def wrapped(*args):
        if not _active():
            return fn(*args)
        axes = linen_spmd.logical_to_mesh_axes((BATCH,), _rules())[0]
        if axes is None:
            return fn(*args)
        axes = (axes,) if isinstance(axes, str) else tuple(axes)
        spec = PartitionSpec(axes)
        # check_vma off: ott-jax's Sinkhorn builds lax.cond branches whose
        # outputs jax's varying-manual-axes typing rejects (jax 0.10, ott 0.6).
        mapped = jax.shard_map(
            fn, in_specs=spec, out_specs=spec, axis_names=set(axes), check_vma=False
        )
        return mapped(*args)

    return wrapped


def make_mesh(shape: Mapping[str, int], devices: Sequence[jax.Device] | None = None) -> Mesh:
    """A mesh with axes `('data', 'fsdp', 'tensor')`; one size may be -1 (the rest).

    The axes are `Auto`: the compiler propagates shardings from the annotated
    inputs and constraints (jax's default, Explicit, would type every array's
    sharding and reject plain matmuls between differently sharded operands).
    """
    unknown = sorted(set(shape) - set(MESH_AXES))
    if unknown:
        raise ValueError(f"unknown mesh axes {unknown}; the axes are {list(MESH_AXES)}")
    devices = list(jax.devices() if devices is None else devices)
    sizes = [int(shape.get(name, 1)) for name in MESH_AXES]
    if sizes.count(-1) > 1 or any(s == 0 or s < -1 for s in sizes):
        raise ValueError(f"mesh sizes must be positive, with at most one -1; got {dict(shape)}")
    known = math.prod(s for s in sizes if s != -1)
    if -1 in sizes:
        if len(devices) % known:
            raise ValueError(
                f"mesh {dict(shape)}: {len(devices)} devices are not divisible by {known}"
            )
        sizes[sizes.index(-1)] = len(devices) // known
    if math.prod(sizes) != len(devices):
        raise ValueError(
            f"mesh {dict(zip(MESH_AXES, sizes, strict=True))} needs {math.prod(sizes)} devices, "
            f"there are {len(devices)}"
        )
    return jax.make_mesh(
        sizes,
        MESH_AXES,
        axis_types=(jax.sharding.AxisType.Auto,) * len(MESH_AXES),
        devices=devices,
    )


def logical_specs(abstract_module: nnx.Module, kind: type = nnx.Param) -> dict:
    """The logical `PartitionSpec` of every `kind` variable, as a pure dict."""
    return nnx.to_pure_dict(nnx.get_partition_spec(nnx.state(abstract_module, kind)))


@dataclasses.dataclass(frozen=True)
class Layout:
    """A mesh and the logical-to-mesh rules: how arrays lie across devices (hashable)."""

    mesh: Mesh
    rules: Rules = ()  # (logical name, mesh axis or axes or None), in priority order

    @classmethod
    def single_device(cls) -> Layout:
        """One device, no rules: everything replicated, constraints off."""
        return cls(make_mesh({"data": 1}, jax.devices()[:1]))

    def spec(self, names: PartitionSpec | Sequence[str | None]) -> PartitionSpec:
        return linen_spmd.logical_to_mesh_axes(tuple(names), self.rules)

    def sharding(self, names: PartitionSpec | Sequence[str | None]) -> NamedSharding:
        return NamedSharding(self.mesh, self.spec(names))

    def shardings(self, specs: Any) -> Any:
        """A tree of logical `PartitionSpec`s -> the same tree of `NamedSharding`s."""
        return jax.tree.map(self.sharding, specs, is_leaf=lambda x: isinstance(x, PartitionSpec))

    @property
    def replicated(self) -> NamedSharding:
        return NamedSharding(self.mesh, PartitionSpec())

    @property
    def batch(self) -> NamedSharding:
        """Arrays with a leading batch axis, the rest replicated."""
        return self.sharding((BATCH,))

    @property
    def batch_shards(self) -> int:
        """How many ways the batch axis is split."""
        axes = self.spec((BATCH,))[0]
        axes = () if axes is None else (axes,) if isinstance(axes, str) else axes
        return math.prod(self.mesh.shape[a] for a in axes)

    @contextlib.contextmanager
    def active(self) -> Iterator[None]:
        """The mesh and rules that `constrain` and `per_example` read while tracing."""
        with (
            jax.sharding.use_abstract_mesh(self.mesh.abstract_mesh),
            flax_spmd.logical_axis_rules(self.rules),
        ):
            yield

    def global_batch(self, local: Mapping[str, np.ndarray]) -> dict[str, jax.Array]:
        """This process's rows of a batch -> global arrays split over the batch axis."""
        out = {}
        for name, rows in local.items():
            global_shape = (rows.shape[0] * jax.process_count(), *rows.shape[1:])
            out[name] = jax.make_array_from_process_local_data(self.batch, rows, global_shape)
        return out


def check_divisible(abstract: Any, shardings: Any, *, what: str = "parameter") -> None:
    """Raises ValueError naming every array whose sharded dimension does not divide."""
    problems = []
    flat, _ = jax.tree_util.tree_flatten_with_path(abstract)
    flat_shardings = jax.tree.leaves(shardings, is_leaf=lambda x: isinstance(x, NamedSharding))
    for (path, leaf), sharding in zip(flat, flat_shardings, strict=True):
        for dim, (size, axes) in enumerate(zip(leaf.shape, sharding.spec, strict=False)):
            if axes is None:
                continue
            axes = (axes,) if isinstance(axes, str) else axes
            ways = math.prod(sharding.mesh.shape[a] for a in axes)
            if size % ways:
                problems.append(
                    f"{jax.tree_util.keystr(path, simple=True, separator='/')} dim {dim} "
                    f"({size}) over {axes} ({ways} ways)"
                )
    if problems:
        raise ValueError(
            f"{what} dimensions not divisible by their mesh axes (change the mesh or the "
            "mesh.rules): " + "; ".join(problems)
        )


def to_host(tree: Any) -> Any:
    """Arrays -> numpy on this host, from all processes' shards when needed.

    Replicated arrays are read from a local copy; other arrays that span
    processes are gathered (a collective: every process must call this).
    """

    def one(x):
        if not isinstance(x, jax.Array) or x.is_fully_addressable:
            return np.asarray(jax.device_get(x))
        if x.sharding.is_fully_replicated:
            return np.asarray(x.addressable_data(0))
        return np.asarray(multihost_utils.process_allgather(x, tiled=True))

    return jax.tree.map(one, tree)
