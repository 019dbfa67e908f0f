"""The error record: one failed manifest row or item, at one pipeline stage (a row of the errors table)."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from typing import Any

STAGES = ("manifest", "image", "generate", "explain", "write")


@dataclass(frozen=True)
class ErrorRecord:
    """Why one row or item produced no answer. ``error_type`` is a short CamelCase code or exception name."""

    item_id: str | None
    row_number: int | None
    image_uri: str | None
    stage: str
    error_type: str
    message: str
    occurred_at: datetime = field(default_factory=lambda: datetime.now(UTC))

    def __post_init__(self) -> None:
        if self.stage not in STAGES:
            raise ValueError(f"stage {self.stage!r} is not one of {', '.join(STAGES)}")

    @classmethod
    def from_exception(
        cls,
        exc: BaseException,
        *,
        stage: str,
        item: Any = None,
        item_id: str | None = None,
        row_number: int | None = None,
        image_uri: str | None = None,
    ) -> ErrorRecord:
        """Record ``exc`` for ``item`` (anything with item_id, row_number, image_uri) or explicit ids.

        >>> ErrorRecord.from_exception(CorruptImage("a.png: truncated", name="a.png"), stage="image", item=item)
        """
        if item is not None:
            item_id = item_id or item.item_id
            row_number = row_number if row_number is not None else item.row_number
            image_uri = image_uri or item.image_uri
        return cls(item_id, row_number, image_uri, stage, type(exc).__name__, str(exc))

    def to_row(self) -> dict[str, Any]:
        """A dict matching the errors table's columns."""
        return asdict(self)
