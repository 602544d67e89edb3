"""The images that excite a unit most (Zeiler & Fergus 2014, "Visualizing and understanding convolutional
networks", Fig. 2: the top-9 activations of a feature map, each shown as the image patch the unit sees).

For each chosen channel of a layer, every image is scored by the channel's maximum over positions; one pass
over the data keeps a running top-k per channel (``torch.topk`` of the kept k and the new batch), with the
image's index and where the maximum is, so memory does not grow with the data. The patch of a unit is its
receptive field, from the inspector (:func:`cnnlab.summary`): the unit at row i, column j of the map sees the
input pixels centred on start + (i, j) x jump, size pixels wide, clipped to the image.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

import numpy as np
import torch
from torch import nn

from cnnlab.analysis.receptive_field import RF
from cnnlab.errors import CnnlabError
from cnnlab.visualize.hooks import as_batch, capture, find_layer, forward, model_device_dtype


@dataclass
class TopImages:
    layer: str
    channels: list[int]
    values: np.ndarray  # channels x k, each row descending: the channel's maximum on the image
    indices: np.ndarray  # channels x k: the images' positions in the data
    positions: np.ndarray  # channels x k x 2: (row, column) of that maximum in the layer's map
    boxes: np.ndarray  # channels x k x 4: top, bottom, left, right of the unit's field (bottom/right exclusive),
    #                    in input pixels, not clipped: a field may reach past the image, into the padding
    field: RF | None  # the layer's receptive field (None: not known)
    image_size: tuple[int, int]

    def patches(self, image, fill: float = 0.5) -> np.ndarray:
        """The receptive-field patches, channels x k x h x w x C, from ``image(i)``: the i-th image of the data
        as the network saw it, H x W x C with values in 0..1. Parts of a field outside the image are ``fill``.
        Every patch has the field's size (at most the image's), so a clipped one keeps its place in the field."""
        height, width = self.image_size
        th = min(int((self.boxes[..., 1] - self.boxes[..., 0]).max()) if self.boxes.size else height, height)
        tw = min(int((self.boxes[..., 3] - self.boxes[..., 2]).max()) if self.boxes.size else width, width)
        out = None
        for c in range(self.indices.shape[0]):
            for r in range(self.indices.shape[1]):
                img = np.asarray(image(int(self.indices[c, r])), dtype=np.float32)
                if out is None:
                    out = np.full((*self.indices.shape, th, tw, img.shape[2]), fill, dtype=np.float32)
                t, b, l, rr = (int(v) for v in self.boxes[c, r])
                y0, y1, x0, x1 = max(t, 0), min(b, height), max(l, 0), min(rr, width)
                oy, ox = min(y0 - t, th - (y1 - y0)), min(x0 - l, tw - (x1 - x0))
                out[c, r, oy:oy + y1 - y0, ox:ox + x1 - x0] = img[y0:y1, x0:x1]
        return out if out is not None else np.zeros((len(self.channels), 0, th, tw, 1), np.float32)


def layer_field(model: nn.Module, layer: str, input_size) -> RF | None:
    """The receptive field of ``layer``'s output, from the inspector (its last call, for a shared module)."""
    from cnnlab.analysis.summary import summary

    rows = [r for r in summary(model, tuple(input_size)).rows if r.name == layer]
    return rows[-1].rf if rows else None


def _box(field: RF | None, pos: tuple[int, int], size: tuple[int, int]) -> tuple[int, int, int, int]:
    if field is None or not field.spatial:
        return 0, size[0], 0, size[1]
    box = []
    for axis in (0, 1):
        centre = field.start[axis] + pos[axis] * field.jump[axis]
        half = (field.size[axis] - 1) / 2
        box += [math.ceil(centre - half), math.floor(centre + half) + 1]
    return tuple(box)


def top_images(model: nn.Module, batches: Iterable, layer: str, channels: Sequence[int] | None = None,
               k: int = 9) -> TopImages:
    """The ``k`` images of ``batches`` (preprocessed N x C x H x W tensors, or (images, labels) pairs) on which
    each of ``channels`` of ``layer`` (default: its first 16) has its highest maximum, in one pass."""
    find_layer(model, layer)
    if k < 1:
        raise CnnlabError(f"k must be 1 or more, got {k}")
    best_v = best_i = best_p = None
    seen, size, chosen = 0, None, None
    device, dtype = model_device_dtype(model)
    with capture(model, [layer]) as cap, torch.no_grad():
        for batch in batches:
            x = batch[0] if isinstance(batch, (tuple, list)) else batch
            if size is None:
                as_batch(model, x[:1])  # checks the channels
                size = tuple(x.shape[2:])
            forward(model, x.to(device=device, dtype=dtype))
            cap.check()
            a = cap.outputs[layer].float()
            if chosen is None:
                if a.dim() not in (2, 4):
                    raise CnnlabError(f"layer {layer!r} outputs {'x'.join(map(str, a.shape[1:]))}; top images need "
                                      f"channels of maps (N x C x H x W) or units (N x C)")
                n_channels = a.shape[1]
                chosen = list(range(min(16, n_channels))) if channels is None else [int(c) for c in channels]
                bad = [c for c in chosen if not 0 <= c < n_channels]
                if bad:
                    raise CnnlabError(f"channel {bad[0]} is out of range; layer {layer!r} has {n_channels} "
                                      f"channels, 0 to {n_channels - 1}")
                if not chosen:
                    raise CnnlabError("choose at least one channel")
                idx = torch.tensor(chosen, device=a.device)
            a = a.index_select(1, idx)
            if a.dim() == 4:
                flat = a.flatten(2)  # N x channels x positions
                v, where = flat.max(2)
                pos = torch.stack((where // a.shape[3], where % a.shape[3]), -1)
            else:
                v, pos = a, torch.zeros((*a.shape, 2), dtype=torch.long, device=a.device)
            i = torch.arange(seen, seen + a.shape[0], device=a.device)[:, None].expand_as(v)
            seen += a.shape[0]
            if best_v is not None:
                v, i, pos = torch.cat((best_v, v)), torch.cat((best_i, i)), torch.cat((best_p, pos))
            top = v.topk(min(k, v.shape[0]), dim=0)  # per channel, over the kept and the new images
            best_v, best_i = top.values, i.gather(0, top.indices)
            best_p = pos.gather(0, top.indices[..., None].expand(-1, -1, 2))
    if best_v is None:
        raise CnnlabError("the data hold no images")
    field = layer_field(model, layer, (x.shape[1], *size)) if a.dim() == 4 else None
    values, indices = best_v.T.cpu().numpy(), best_i.T.cpu().numpy()
    positions = best_p.permute(1, 0, 2).cpu().numpy()
    boxes = np.array([[_box(field, tuple(p), size) for p in row] for row in positions], dtype=np.int64)
    return TopImages(layer, chosen, values, indices, positions, boxes.reshape(*indices.shape, 4), field, size)
