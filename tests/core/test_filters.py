"""Gaussian smoothing equals scipy.ndimage.gaussian_filter (its default mode)."""

import numpy as np
import pytest
import torch
from scipy import ndimage

from lightning_ad.core.filters import gaussian_blur


@pytest.mark.parametrize("shape,sigma", [((2, 224, 224), 4.0), ((1, 5, 7), 4.0), ((3, 30, 17), 1.5), ((1, 9, 9), 0.7)])
def test_matches_scipy(shape, sigma):
    maps = torch.rand(*shape, generator=torch.Generator().manual_seed(0)) * 1000
    ours = gaussian_blur(maps, sigma).double().numpy()
    ref = np.stack([ndimage.gaussian_filter(m.double().numpy(), sigma) for m in maps])
    assert np.abs(ours - ref).max() <= 1e-5 * np.abs(ref).max()


def test_sigma_zero_is_identity_and_bad_sigma():
    maps = torch.rand(1, 8, 8)
    assert torch.equal(gaussian_blur(maps, 0), maps)
    with pytest.raises(ValueError, match="sigma"):
        gaussian_blur(maps, -1.0)
