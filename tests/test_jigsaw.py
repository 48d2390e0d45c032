"""Montage labels, stitching and decoupling for m = 2, 3, 4 (SPEC.md section 1)."""

import pytest
import torch

from jigclu.jigsaw import decouple, grid_boxes, jigsaw_labels, patch_layout, random_permutation, stitch


def reference_boxes(h: int, w: int, c: float) -> set[tuple[int, int, int, int]]:
    """The reference JigCluTransform's 4 PIL crop boxes, rounded as PIL's crop rounds them.

    PIL's ``size`` is (width, height); the reference names them (h, w), so its "h" is the width.
    """
    W, H = w, h
    cw, ch = c * W, c * H  # reference: ch = c * size[0] (width), cw = c * size[1] (height)
    boxes = [(0, 0, W // 2 + cw, H // 2 + ch), (0, H // 2 - ch, W // 2 + cw, H),
             (W // 2 - cw, 0, W, H // 2 + ch), (W // 2 - cw, H // 2 - ch, W, H)]
    return {tuple(int(round(v)) for v in b) for b in boxes}


@pytest.mark.parametrize("h,w", [(224, 224), (256, 256), (28, 28), (32, 32), (37, 53), (255, 300)])
@pytest.mark.parametrize("c", [0.0, 0.3, 0.1])
def test_m2_boxes_equal_reference(h, w, c):
    ours = {tuple(int(v) for v in b) for b in grid_boxes(h, w, 2, c).tolist()}
    assert ours == reference_boxes(h, w, c)


@pytest.mark.parametrize("m", [2, 3, 4, 5])
def test_boxes_cover_the_image_row_major(m):
    boxes = grid_boxes(60, 90, m, 0.3)
    assert boxes.shape == (m * m, 4)
    # row-major: x0 increases along a row, y0 down the rows; the grid covers every pixel
    grid = boxes.view(m, m, 4)
    assert (grid[:, 1:, 0] > grid[:, :-1, 0]).all() and (grid[1:, :, 1] > grid[:-1, :, 1]).all()
    assert grid[0, 0, 0] == 0 and grid[0, 0, 1] == 0 and grid[-1, -1, 2] == 90 and grid[-1, -1, 3] == 60
    # neighbours overlap when the cross ratio is positive
    assert (grid[:, :-1, 2] > grid[:, 1:, 0]).all()


def encoded_patches(n: int, m: int, s: int) -> torch.Tensor:
    """Position-major patches whose pixels encode (image id, cell): channel 0 = image, 1 = cell."""
    k = torch.arange(n * m * m)
    patches = torch.zeros(n * m * m, 3, s, s)
    patches[:, 0] = (k % n).float().view(-1, 1, 1)
    patches[:, 1] = (k // n).float().view(-1, 1, 1)
    patches[:, 2] = k.float().view(-1, 1, 1)
    return patches


@pytest.mark.parametrize("m", [2, 3, 4])
@pytest.mark.parametrize("n", [1, 3, 8])
def test_montage_cells_hold_what_labels_name(m, n):
    s = 5
    patches = encoded_patches(n, m, s)
    perm = random_permutation(n * m * m, seed=123 + m + n)
    montages = stitch(patches[perm], m)
    assert montages.shape == (n, 3, m * s, m * s)
    label_clu, label_loc = jigsaw_labels(perm, n)
    for j in range(n * m * m):
        b, cell = j % n, j // n
        r, c = divmod(cell, m)
        block = montages[b, :, r * s:(r + 1) * s, c * s:(c + 1) * s]
        assert (block[0] == label_clu[j]).all(), "cell holds a patch of another image"
        assert (block[1] == label_loc[j]).all(), "cell holds a patch of another position"
        assert (block[2] == perm[j]).all()


@pytest.mark.parametrize("m", [2, 3, 4])
def test_decouple_returns_slot_order(m):
    n, d = 3, 4
    # a feature map whose m x m cells hold known values (block-constant), any map size
    for size in (m, 2 * m, 7, 13):
        cell_value = torch.randn(n, d, m, m)
        ys = torch.arange(size) * m // size
        fmap = cell_value[:, :, ys][:, :, :, ys]
        if size % m == 0:
            out = decouple(fmap, m)
            for j in range(n * m * m):
                b, cell = j % n, j // n
                torch.testing.assert_close(out[j], cell_value[b, :, cell // m, cell % m])
        else:
            assert decouple(fmap, m).shape == (n * m * m, d)


@pytest.mark.parametrize("m", [2, 3, 4])
def test_stitch_then_identity_backbone_then_decouple_roundtrip(m):
    """Pooling a montage's cells gives back each slot's patch, in slot order."""
    n, s = 4, 6
    patches = torch.randn(n * m * m, 3, s, s)
    perm = random_permutation(n * m * m, seed=7)
    montages = stitch(patches[perm], m)
    feats = decouple(montages, m)  # identity "backbone": average over each cell
    torch.testing.assert_close(feats, patches[perm].mean(dim=(2, 3)))


def test_patch_layout_is_position_major():
    src, boxes = patch_layout(3, 32, 32, 2, 0.3)
    assert src.tolist() == [0, 1, 2] * 4
    cells = grid_boxes(32, 32, 2, 0.3)
    for k in range(12):
        torch.testing.assert_close(boxes[k], cells[k // 3])


def test_stitch_slice_matches_full():
    m, n, s = 3, 6, 4
    patches = torch.randn(n * m * m, 3, s, s)
    full = stitch(patches, m)
    torch.testing.assert_close(stitch(patches, m, slice(2, 5)), full[2:5])


def test_bad_grid():
    with pytest.raises(ValueError):
        grid_boxes(32, 32, 1, 0.3)
    with pytest.raises(ValueError):
        stitch(torch.zeros(5, 3, 4, 4), 2)
