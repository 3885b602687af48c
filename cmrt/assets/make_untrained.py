"""Write the placeholder default model: the digits consistency model's architecture with random
weights (seed 0), flagged ``trained: false``. The training issue replaces it with a trained one.

    python -m cmrt.assets.make_untrained
"""

from __future__ import annotations

import torch

from ..models.load import DEFAULT_MODEL, save_checkpoint
from ..models.spec import ModelSpec
from ..models.unet import UNet, UNetConfig

DIGITS_UNET = UNetConfig(in_channels=1, out_channels=1, block_out_channels=(32, 64, 64), layers_per_block=1,
                         attention=(False, True, True), attention_head_dim=32, num_classes=10)
DIGITS_SPEC = ModelSpec(kind="sampler", unet=DIGITS_UNET, image_channels=1, image_size=16, num_classes=10,
                        name="digits16-cm (untrained placeholder)", trained=False)


def main() -> None:
    torch.manual_seed(0)
    unet = UNet(DIGITS_SPEC.unet)
    save_checkpoint(DEFAULT_MODEL, DIGITS_SPEC, unet.state_dict())
    print(f"wrote {DEFAULT_MODEL}")


if __name__ == "__main__":
    main()
