"""A small least-recently-used cache for values computed per input size (anchors, priors)."""
from __future__ import annotations

from collections import OrderedDict
from typing import Any, Callable, Hashable


class LRUCache:
    """``cache.get(key, make)``: the value of ``key``, made by ``make()`` on a miss; at most
    ``size`` values are kept, the least recently used goes first."""

    def __init__(self, size: int = 32):
        self.size = size
        self._values: OrderedDict = OrderedDict()

    def get(self, key: Hashable, make: Callable[[], Any]) -> Any:
        value = self._values.get(key)
        if value is None:
            value = self._values[key] = make()
            if len(self._values) > self.size:
                self._values.popitem(last=False)
        else:
            self._values.move_to_end(key)
        return value
