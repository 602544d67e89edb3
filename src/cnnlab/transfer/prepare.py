"""Preparing a model for transfer learning, as the trainer asks: load the weights to start from, freeze what
feature extraction keeps fixed, and say which parameters train at which learning rate."""

from __future__ import annotations

from torch import nn

from cnnlab.errors import CnnlabError
from cnnlab.transfer.weights import freeze_backbone, heads, load_pretrained, param_groups

MODES = (None, "features", "finetune")


def prepare(model: nn.Module, name: str, options: dict, pretrained: str | None, transfer: str | None, lr: float,
            unfreeze: int = 0, lr_backbone: float | None = None, load: bool = True) \
        -> tuple[str, list[tuple[list, float]] | None]:
    """Load ``pretrained`` into ``model`` (unless ``load`` is False: a resumed run's checkpoint has the weights)
    and freeze what ``transfer`` says: "features" trains the heads (and the last ``unfreeze`` blocks), the
    rest frozen in eval mode; "finetune" trains everything, the backbone at ``lr_backbone`` (default lr / 10).
    Returns a note for the log and the (parameters, learning-rate scale) groups, None when not transferring."""
    if transfer not in MODES:
        raise CnnlabError(f"`transfer` must be 'features' or 'finetune', not {transfer!r}", params=("transfer",))
    if transfer and not pretrained:
        raise CnnlabError("transfer learning needs weights to start from: pass `pretrained`",
                          params=("pretrained",))
    if unfreeze and transfer != "features":
        raise CnnlabError("`unfreeze` applies to feature extraction (`transfer` features) only; fine-tuning trains "
                          "every block already", params=("unfreeze", "transfer"))
    if lr_backbone is not None and transfer != "finetune":
        raise CnnlabError("`lr_backbone` applies to fine-tuning (`transfer` finetune) only", params=("lr_backbone",
                                                                                                    "transfer"))
    if lr_backbone is not None and not lr_backbone >= 0:
        raise CnnlabError(f"`lr_backbone` must be 0 or more, got {lr_backbone}", params=("lr_backbone",))
    note = ""
    if pretrained and load:
        note = load_pretrained(model, name, pretrained, **options).text()
    if not transfer:
        return note.strip(), None
    head = heads(model, name, **options)
    backbone_lr = lr_backbone if lr_backbone is not None else lr / 10
    if transfer == "features":
        trainable = freeze_backbone(model, head, unfreeze)
        if not any(p.requires_grad for p in model.parameters()):
            raise CnnlabError(f"{name}'s head has no trainable parameters; set `unfreeze` to N to train the last N "
                              f"blocks", params=("unfreeze",))
        note += f"\nfeature extraction: training {', '.join(trainable)}; the rest is frozen, in eval mode"
    else:
        note += f"\nfine-tuning: heads at lr {lr:g}, backbone at lr {backbone_lr:g}"
    groups = param_groups(model, head, backbone_lr / lr if transfer == "finetune" else 1.0)
    return note.strip(), groups
