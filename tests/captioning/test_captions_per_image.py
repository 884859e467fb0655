"""Several references per training image and step (``data.captions_per_image``, issue 16): the draw, the batch
layout, mirroring, and that the shared encoder pass gives the loss of k separate copies of each image."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from vitkit.captioning import Captioner
from vitkit.captioning.datamodule import CaptionDataModule, swap_left_right
from vitkit.captioning.model import per_caption_rows
from vitkit.captioning.module import CaptionModule
from vitkit.core import TransformerDecoder, ViTEncoder
from vitkit.data.coco_captions import CocoCaptions
from vitkit.data.shapes import make_shapes

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_shapes(tmp_path_factory.mktemp("coco"), num_train=6, num_val=2, image_size=96, seed=0)["root"]


def test_items_carry_k_different_references(root: Path) -> None:
    ds = CocoCaptions(root, "train", captions_per_item=3)
    torch.manual_seed(0)
    for index in range(len(ds)):
        _, captions, image_id = ds[index]
        refs = ds.references[image_id]
        assert isinstance(captions, tuple) and len(captions) == 3
        assert len(set(captions)) == 3 and set(captions) <= set(refs)  # no repeat while the image has 3
    torch.manual_seed(0)
    first = [ds[i][1] for i in range(len(ds))]
    torch.manual_seed(0)
    assert [ds[i][1] for i in range(len(ds))] == first  # reproducible under the seed
    _, cycled, image_id = CocoCaptions(root, "train", captions_per_item=7)[0]
    assert len(cycled) == 7 and set(cycled) == set(ds.references[image_id])  # all 5 refs once, then again
    assert len(set(cycled[:5])) == 5 and cycled[5:] == cycled[:2]
    assert isinstance(CocoCaptions(root, "train")[0][1], str)  # the default stays one string
    with pytest.raises(ValueError, match="captions_per_item"):
        CocoCaptions(root, "train", captions_per_item=0)


def test_batch_rows_follow_their_image_and_mirror_together(root: Path) -> None:
    torch.manual_seed(0)
    dm = CaptionDataModule(root=str(root), batch_size=4, train_size=64, val_size=64, max_size=96, num_workers=0,
                           captions_per_image=3, hflip_p=1.0, vocab_size=200)
    dm.setup("fit")
    images, _, tokens, image_ids = next(iter(dm.train_dataloader()))
    assert images.shape[0] == 4 and tokens.shape[0] == 12
    refs = dm.train_references()
    for row, text in enumerate(dm.tokenizer.decode_batch(tokens)):
        image_refs = {dm.tokenizer.normalize(swap_left_right(c)) for c in refs[image_ids[row // 3]]}
        assert text in image_refs  # rows 3i..3i+2 are image i's captions, mirrored with it
    with pytest.raises(ValueError, match="captions_per_image"):
        CaptionDataModule(root=str(root), captions_per_image=0)


def _tiny_captioner(vocab: int = 20) -> Captioner:
    encoder = ViTEncoder(patch_size=8, embed_dim=32, depth=1, num_heads=2, pos_embed="sine", class_token=False)
    decoder = TransformerDecoder(dim=32, depth=1, num_heads=2, return_intermediate=False)
    return Captioner(encoder, decoder, vocab_size=vocab, max_length=8)


def test_one_encoder_pass_gives_the_loss_of_k_image_copies() -> None:
    torch.manual_seed(0)
    module = CaptionModule(_tiny_captioner()).eval()
    module.log = lambda *a, **k: None
    images, mask = torch.randn(2, 3, 32, 40), torch.zeros(2, 32, 40, dtype=torch.bool)
    mask[1, :, 24:] = True  # image 1 is padded on the right: its memory mask must follow its captions
    tokens = torch.tensor([[1, 5, 6, 2, 0], [1, 7, 2, 0, 0], [1, 8, 9, 10, 2],
                           [1, 11, 2, 0, 0], [1, 12, 13, 2, 0], [1, 5, 5, 5, 2]])  # (B*k = 6, T), k = 3
    shared = module.training_step((images, mask, tokens, [1, 2]), 0)
    copies = images.repeat_interleave(3, 0), mask.repeat_interleave(3, 0)
    separate = module.captioner.loss(module.captioner(copies[0], tokens, copies[1]), tokens)
    assert torch.allclose(shared, separate, atol=1e-6)
    swapped = module.training_step((images.flip(0), mask.flip(0), tokens, [2, 1]), 0)
    assert not torch.allclose(shared, swapped)  # the rows really are tied to their own image
    shared.backward()
    assert all(p.grad is not None for p in module.captioner.encoder.parameters())


def test_caption_rows_must_divide_evenly() -> None:
    assert per_caption_rows(4, 4) is None
    assert per_caption_rows(2, 6).tolist() == [0, 0, 0, 1, 1, 1]
    with pytest.raises(ValueError, match="captions_per_image"):
        per_caption_rows(4, 6)
