"""The one error type data code raises for bad input."""

from __future__ import annotations

import numpy as np


class DataError(ValueError):
    """Bad input data, located by file, record and field where known."""

    def __init__(
        self,
        message: str,
        *,
        file: str | None = None,
        record: str | int | None = None,
        field: str | None = None,
    ):
        self.message, self.file, self.record, self.field = message, file, record, field
        where = [
            f"{name} {value}"
            for name, value in (("file", file), ("record", record), ("field", field))
            if value is not None
        ]
        super().__init__(f"{', '.join(where)}: {message}" if where else message)

    def located(self, *, file: str | None = None, record: str | int | None = None) -> DataError:
        """The same error with a missing file or record filled in."""
        return DataError(
            self.message,
            file=self.file if self.file is not None else file,
            record=self.record if self.record is not None else record,
            field=self.field,
        )


def check_unique(ids: np.ndarray, names: list[str], sizes: list[int], what: str) -> None:
    """Raises DataError naming the store and record of an id seen twice in the
    concatenation of stores `names` (of `sizes` records each)."""
    _, first, counts = np.unique(ids, return_index=True, return_counts=True)
    if (counts == 1).all():
        return
    duplicate = ids[first[np.argmax(counts > 1)]]
    where = np.flatnonzero(ids == duplicate)
    owners = np.searchsorted(np.cumsum(sizes), where, side="right")
    raise DataError(
        f"{what} id also in {names[owners[0]]}: stores read together must not share {what} ids",
        file=names[owners[1]],
        record=str(duplicate),
    )
