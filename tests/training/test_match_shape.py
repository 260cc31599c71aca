"""How an outlier set (or any image set) is converted to a victim's input shape (``match_shape``), used by the
outlier-exposure recipe on its outlier dataset: colour to grey averages the three channels of each pixel of
each image, grey to colour copies the channel, and resizing is bilinear."""

from __future__ import annotations

import torch

from modelsteal.training import match_shape


def _rgb(n: int = 3, h: int = 5, w: int = 4) -> torch.Tensor:
    g = torch.Generator().manual_seed(0)
    x = torch.rand(n, 3, h, w, generator=g)
    x[:, 0] *= 0.2  # channels on different scales, so a mean over any other axis gives other numbers
    x[:, 2] += 1.0
    return x


def test_colour_to_grey_is_the_mean_of_each_pixels_three_channels():
    x = _rgb()
    grey = match_shape(x, (1, 5, 4))
    assert grey.shape == (3, 1, 5, 4)
    # pixel (i, r, c) of the result is (R + G + B) / 3 of that pixel of image i, written out by hand
    for i in range(3):
        for r in range(5):
            for c in range(4):
                want = (x[i, 0, r, c] + x[i, 1, r, c] + x[i, 2, r, c]) / 3
                torch.testing.assert_close(grey[i, 0, r, c], want)
    # each image alone gives the same result as in a batch (no averaging across images)
    torch.testing.assert_close(match_shape(x[1:2], (1, 5, 4)), grey[1:2])


def test_grey_to_colour_copies_the_channel_and_same_shape_is_unchanged():
    x = _rgb()[:, :1]
    rgb = match_shape(x, (3, 5, 4))
    assert rgb.shape == (3, 3, 5, 4)
    for ch in range(3):
        torch.testing.assert_close(rgb[:, ch], x[:, 0])
    same = _rgb()
    torch.testing.assert_close(match_shape(same, (3, 5, 4)), same)


def test_colour_to_grey_then_resize_keeps_the_grey_values():
    # a 2x2 image, each pixel its own colour, upsampled to 4x4: corners keep their grey value (half-pixel
    # centres, align_corners=False), and a constant image stays that constant
    x = torch.tensor([[[[0.0, 0.3], [0.6, 0.9]], [[0.3, 0.0], [0.3, 0.0]], [[0.9, 0.9], [0.0, 0.3]]]])
    out = match_shape(x, (1, 4, 4))
    assert out.shape == (1, 1, 4, 4)
    grey = x.mean(dim=1)[0]
    for r, c, rr, cc in [(0, 0, 0, 0), (0, 3, 0, 1), (3, 0, 1, 0), (3, 3, 1, 1)]:
        torch.testing.assert_close(out[0, 0, r, c], grey[rr, cc])
    flat = torch.full((2, 3, 3, 3), 0.25)
    flat[:, 1] = 0.5
    torch.testing.assert_close(match_shape(flat, (1, 6, 6)), torch.full((2, 1, 6, 6), 1.0 / 3))
