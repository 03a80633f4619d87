"""Old import path of the packed layout (now batches.py) and the conv's hand-written step
(now models/tree_fused.py)."""

from .batches import PackedNames, pack, pack_padded, packed_rows  # noqa: F401
from .models.tree_fused import FusedTree, fused_forward  # noqa: F401
