"""PyTorch UNITER / BERT checkpoints <-> our parameters.

`python -m uniter_jax.convert --help` for the command line.
"""

from uniter_jax.convert.layout import CheckpointError
from uniter_jax.convert.pytorch import export_checkpoint, import_checkpoint
from uniter_jax.convert.state_dict import ImportReport, export_state_dict, import_state_dict
from uniter_jax.convert.torch_io import load_state_dict, save_state_dict

__all__ = [
    "CheckpointError",
    "ImportReport",
    "export_checkpoint",
    "export_state_dict",
    "import_checkpoint",
    "import_state_dict",
    "load_state_dict",
    "save_state_dict",
]
