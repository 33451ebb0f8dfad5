"""Sample packing: whole examples side by side in rows of ``max_context`` tokens.

Short chains padded to a batch's longest waste compute; packed into full rows they do not.
Examples stay apart: each one's position ids restart at 0 and, with no attention mask,
transformers reads the restarts as sequence boundaries (a block-diagonal causal mask; on
CUDA with FlashAttention 2, its variable-length path). Each example's first label is never
trained (as when it stands alone: the model shifts labels by one), so the loss is the sum
of the same terms.

Rows are packed once per run (first-fit decreasing: the fullest rows) and shuffled each
epoch; the plan lists a micro-batch's examples row after row in packing order, so
``split_rows`` (next-fit) rebuilds exactly the planned rows from the list alone.
"""

from __future__ import annotations

from collections.abc import Sequence


def pack_rows(lengths: Sequence[int], width: int) -> list[list[int]]:
    """First-fit decreasing: each example, longest first, into the first row with room.

    Rows come out in the order they were opened, their examples in the order they went in.
    A segment tree over the rows' free space finds the first row with room in log time.
    """
    if any(n > width for n in lengths):
        raise ValueError(f"an example is longer than the row width {width}")
    size = 1
    while size < max(len(lengths), 1):
        size *= 2
    free = [0] * (2 * size)  # leaves: rows' free space (0 until opened); nodes: max below
    rows: list[list[int]] = []
    for i in sorted(range(len(lengths)), key=lambda j: (-lengths[j], j)):
        n = lengths[i]
        if free[1] >= n:  # an open row has room: walk down to the first one
            node = 1
            while node < size:
                node = 2 * node if free[2 * node] >= n else 2 * node + 1
            row = node - size
        else:
            row = len(rows)
            rows.append([])
            node = size + row
            free[node] = width
        rows[row].append(i)
        free[node] -= n
        node //= 2
        while node:
            free[node] = max(free[2 * node], free[2 * node + 1])
            node //= 2
    return rows


def split_rows(lengths: Sequence[int], width: int | None) -> list[list[int]]:
    """Next-fit: positions in the list, cut into rows where the next one no longer fits
    (``width`` None: not packed, one example per row).

    On a micro-batch's examples listed row after row (rows in packing order), this gives
    back ``pack_rows``' rows: a row's first example opened it because it fit in no earlier
    row, and earlier rows only fill up."""
    if width is None:
        return [[position] for position in range(len(lengths))]
    rows: list[list[int]] = []
    used = width + 1
    for position, n in enumerate(lengths):
        if used + n > width:
            rows.append([])
            used = 0
        rows[-1].append(position)
        used += n
    return rows
