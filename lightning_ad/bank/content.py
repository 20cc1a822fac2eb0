"""Image ids from content: a bank row's id is a hash of the prepared image it was extracted from.

Ordering the bank by these ids makes it a function of the set of good images, whatever the
order in which they arrived (one fit, or a fit extended later), and an image already in the
bank (the same file, or the same pixels) has the id of its row, so it is found and skipped.
"""

from __future__ import annotations

import hashlib
from typing import Dict, List, Sequence, Tuple

import torch
from torch import Tensor

__all__ = ["content_ids", "repeated_content"]


def content_ids(images: Tensor) -> Tensor:
    """``[B]`` int64 ids, >= 0: the first 62 bits of the SHA-256 of each image's float32 values and shape
    (``images`` ``[B, 3, H, W]``, on any device).

    Example:
        >>> x = torch.zeros(2, 3, 4, 4); x[1, 0, 0, 0] = 1.0
        >>> ids = content_ids(x)
        >>> bool(ids[0] != ids[1]), bool((content_ids(x.clone()) == ids).all())
        (True, True)
    """
    values = images.detach().to("cpu", torch.float32).contiguous()
    out = []
    for image in values:
        digest = hashlib.sha256(repr(tuple(image.shape)).encode() + image.numpy().tobytes()).digest()
        out.append(int.from_bytes(digest[:8], "big") >> 2)
    return torch.tensor(out, dtype=torch.long)


def repeated_content(ids: Sequence[int], names: Sequence[str], known: Sequence[int] = ()) -> List[Tuple[str, str]]:
    """``[(skipped, kept)]``: each image whose id is already taken (by an earlier distinct name, or by a bank row in
    ``known``: kept is then ``"the bank"``), once per name. Repeats of one name (a sampler's padding) are not listed.

    Example:
        >>> repeated_content([7, 8, 7, 9], ["a.png", "b.png", "c.png", "d.png"], known=[9])
        [('c.png', 'a.png'), ('d.png', 'the bank')]
    """
    first: Dict[int, str] = {int(i): "the bank" for i in known}
    skipped, seen = [], set()
    for image_id, name in zip(ids, names):
        image_id = int(image_id)
        if image_id not in first:
            first[image_id] = name
        elif first[image_id] != name and name not in seen:
            skipped.append((name, first[image_id]))
            seen.add(name)
    return skipped
