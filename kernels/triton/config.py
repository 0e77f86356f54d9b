"""Kernel configs travel through torch.library ops as ``int[]``: a config dataclass that derives
from ``ListConfig`` converts to and from that list, fields in declaration order."""
from __future__ import annotations

import dataclasses


class ListConfig:
    MIN_FIELDS = 3  # the leading fields a list must give; the rest keep their defaults

    def as_list(self) -> list[int]:
        """The fields in declaration order, as ints (the custom ops pass configs as ``int[]``)."""
        return [int(getattr(self, f.name)) for f in dataclasses.fields(self)]

    @classmethod
    def from_list(cls, values):
        fields = dataclasses.fields(cls)
        names = [f.name for f in fields]
        if not cls.MIN_FIELDS <= len(values) <= len(names):
            raise ValueError(
                f"config={list(values)!r} has {len(values)} entries (allowed: {cls.MIN_FIELDS} to {len(names)}, "
                f"in the order {names}); pass {cls.__name__}(...).as_list()"
            )
        return cls(**{f.name: (bool(v) if f.type in (bool, "bool") else int(v)) for f, v in zip(fields, values)})
