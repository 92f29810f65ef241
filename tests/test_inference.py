"""infer on raw images, export and load_learner: a new process predicts what the exporting one did."""
from __future__ import annotations

import contextlib
import os
import subprocess
import sys
import textwrap
from functools import partial
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn, optim

from miniai.augment import RandomFlip
from miniai.callbacks.augment import BatchTransformCB
from miniai.callbacks.basic import DeviceCB, TrainCB
from miniai.callbacks.guards import TerminateOnNaNCB
from miniai.callbacks.metrics import MetricsCB
from miniai.callbacks.mixed_precision import MixedPrecisionCB
from miniai.data import DataLoaders, Normalize, TensorLoader
from miniai.inference import Prediction, load_learner
from miniai.learner import Callback, Learner, TrainLearner
from tests.synth import tiny_learner
from tests.test_preds import image_dls, image_learner, image_model

ROOT = Path(__file__).resolve().parents[1]
PIXELS = torch.randint(0, 256, (6, 1, 8, 8), dtype=torch.uint8, generator=torch.Generator().manual_seed(3))


def probs_of(learn, x: torch.Tensor) -> torch.Tensor:
    """Softmax of the model on already-normalized inputs, as one batch through get_preds."""
    return learn.get_preds(dl=[(x,)], act=torch.softmax)[0]


# ---------------------------------------------------------------- infer

def test_infer_normalizes_raw_pixels_as_the_loaders_did():
    learn = image_learner()
    one = learn.infer(PIXELS[0])
    expected = probs_of(learn, learn.dls.normalize(PIXELS[:1]))[0]
    assert isinstance(one, Prediction) and torch.equal(one.probs, expected)
    assert one.index == int(expected.argmax()) and one.label == "abc"[one.index]
    batch = learn.infer(PIXELS)
    assert torch.equal(batch.probs, probs_of(learn, learn.dls.normalize(PIXELS)))
    assert batch.index.shape == (6,) and batch.label == ["abc"[i] for i in batch.index.tolist()]


@pytest.mark.parametrize("items, batched", [
    (PIXELS[0, 0], False),  # (H,W)
    (PIXELS[0], False),  # (C,H,W)
    (PIXELS[:, 0], True),  # (N,H,W), one channel
    (PIXELS, True),  # (N,C,H,W)
    (PIXELS[0, 0].numpy(), False),  # ndarray (H,W)
    (PIXELS[0].permute(1, 2, 0).numpy(), False),  # ndarray (H,W,C), as images are stored
    (list(PIXELS), True),  # a list of (C,H,W) items
], ids=["HW", "CHW", "NHW", "NCHW", "ndarray HW", "ndarray HWC", "list"])
def test_infer_reads_every_usual_image_layout(items, batched):
    learn = image_learner()
    expected = learn.infer(PIXELS).probs
    got = learn.infer(items)
    assert torch.equal(got.probs, expected if batched else expected[0])
    assert isinstance(got.index, torch.Tensor) == batched


def test_infer_takes_pil_images():
    from PIL import Image
    learn = image_learner()
    image = Image.fromarray(PIXELS[0, 0].numpy())
    assert torch.equal(learn.infer(image).probs, learn.infer(PIXELS[0]).probs)
    assert learn.infer([image, image]).label == [learn.infer(PIXELS[0]).label] * 2


@pytest.mark.parametrize("mode", ["P", "RGB", "RGBA", "LA", "GIF"])
def test_infer_reads_a_pil_image_of_any_colour_mode_as_the_models_channels(mode):
    """A palette image (any GIF) was read as palette indices and an RGB one as a batch of 8 one-row images."""
    import io

    from PIL import Image
    learn = image_learner()
    gray = Image.fromarray(PIXELS[0, 0].numpy())
    if mode == "GIF":
        buf = io.BytesIO()
        gray.save(buf, format="GIF")
        image = Image.open(io.BytesIO(buf.getvalue()))
        assert image.mode == "P"
    else:
        image = gray.convert(mode)
    got = learn.infer(image)
    assert isinstance(got.index, int) and torch.equal(got.probs, learn.infer(gray).probs)


@pytest.mark.parametrize("mode", ["I;16", "I", "F"])
def test_infer_never_clips_a_pil_image_whose_pixels_are_not_8_bit(mode):
    """A 16-bit PNG (mode I;16), a 32-bit int or a float image was converted to 8 bits by PIL, which clips rather
    than rescales: 99.9% white (or black), and a prediction on it without a word. Their values go in as they are:
    refused where uint8 pixels are needed (with the scaling to use), whatever their values: a dark 16-bit image,
    every value below 256, was taken as 8-bit pixels, up to 257 times too bright."""
    from PIL import Image
    learn = image_learner()
    for pixels in (PIXELS[0, 0].numpy().astype(np.uint16) * 257, PIXELS[0, 0].numpy().astype(np.uint16)):
        wide = Image.fromarray(pixels).convert(mode)
        assert wide.mode == mode
        with pytest.raises(TypeError, match=r"raw uint8 pixels.*16-bit pixels with \(x.int\(\) // 257\)"):
            learn.infer(wide)


def test_infers_advice_for_float_pixels_is_the_conversion_their_range_fits():
    """(probe P66) 0-255 values as floats were first told to convert with (x * 255).round(), for 0-1 floats: done,
    it changed a third of the pixels, without an error."""
    learn = image_learner()
    x = PIXELS[0].float()
    with pytest.raises(TypeError, match=r"These run 0 to \d+: convert 0-255 values stored as floats with "
                                        r"x.round\(\).to\(torch.uint8\)") as e:
        learn.infer(x)
    assert "x * 255" not in str(e.value)
    with pytest.raises(TypeError, match=r"These run 0 to 0.99\d*, about 0 to 1: convert them with \(x.clamp\(0, 1\)"):
        learn.infer(x / 255)
    assert torch.equal(learn.infer(x.round().to(torch.uint8)).probs, learn.infer(PIXELS[0]).probs)
    # (regression round T3) a resized 0-1 image overshoots a little (bicubic): 0-1 still, clamped; values well below 0
    # are normalized ones; NaN is named
    overshot = torch.linspace(0, 1, 64).view(1, 8, 8)
    overshot[0, 0, :2] = torch.tensor([-0.2, 1.15])  # (two pixels of 64)
    with pytest.raises(TypeError, match=r"These run -0.2 to 1.15, about 0 to 1: convert them with "
                                        r"\(x.clamp\(0, 1\) \* 255\)"):
        learn.infer(overshot)
    with pytest.raises(TypeError, match=r"These run -2 to 3, below 0: already normalized\?"):
        learn.infer(torch.tensor([-2.0, 3.0]).repeat(32).view(1, 8, 8))
    # (regression round T6) a bicubic upscale of a 0-1 object on black rings below 0 in many pixels (12-20% of a
    # Fashion-MNIST image's), a little: 0-1 still (it was told 'already normalized?', and given unnormalized)
    small = torch.zeros(1, 1, 4, 4)
    small[..., 1:3, 1:3] = torch.tensor([[0.9, 1.0], [0.8, 0.95]])
    rung = torch.nn.functional.interpolate(small, size=8, mode="bicubic")[0]  # (-0.12 to 1.25, 44% outside 0-1)
    with pytest.raises(TypeError, match=r"These run -0.11\d* to 1.25\d*, about 0 to 1: convert them with"):
        learn.infer(rung)
    # (regression round T4) centred inputs, x - 0.5, are no overshoot: many pixels below 0
    with pytest.raises(TypeError, match=r"below 0: already normalized\?"):
        learn.infer(PIXELS[0].float() / 255 - 0.5)
    with pytest.raises(TypeError, match=r"These hold NaN"):
        learn.infer(torch.full((1, 8, 8), float("nan")))


def test_infers_advice_for_16_bit_pixels_works_when_followed():
    """The advice for a uint16 tensor (a 16-bit PNG read with np.array) was (x // 257).to(torch.uint8), which torch
    refuses on uint16 ("div_floor_cpu" not implemented for 'UInt16')."""
    learn = image_learner()
    x = torch.from_numpy(PIXELS[0, 0].numpy().astype(np.uint16) * 257)
    with pytest.raises(TypeError, match=r"16-bit pixels with \(x.int\(\) // 257\).to\(torch.uint8\)"):
        learn.infer(x)
    assert torch.equal(learn.infer((x.int() // 257).to(torch.uint8)).probs, learn.infer(PIXELS[0, 0]).probs)


def test_infer_takes_a_float_pil_image_where_the_learner_has_no_normalization():
    """A float image (a depth map) for a learner without normalization was refused, though nothing is converted."""
    from PIL import Image
    learn = image_learner()
    learn.dls = DataLoaders(None, None, classes=["a", "b", "c"], item_shape=(1, 8, 8))
    x = torch.rand(8, 8)
    assert torch.equal(learn.infer(Image.fromarray(x.numpy(), mode="F")).probs, learn.infer(x[None]).probs)


def test_infer_refuses_an_rgb_array_for_a_grayscale_model_even_without_an_item_shape():
    """(H,W,3) was read as H one-row images when the loaders did not give the items' shape."""
    learn = image_learner()
    learn.dls = DataLoaders(None, None, classes=["a", "b", "c"], normalize=learn.dls.normalize)  # no item_shape
    rgb = PIXELS[0, 0, :, :, None].expand(8, 8, 3).numpy()
    with pytest.raises(ValueError, match=r"\(8, 8, 3\) looks like one RGB image.*1-channel.*convert\('L'\)"):
        learn.infer(rgb)
    assert learn.infer(PIXELS[:, 0].numpy()).index.shape == (6,)  # (N,H,W) with N not 3 or 4 stays a batch


def test_infer_names_the_layout_of_a_batch_of_arrays_it_cannot_read():
    """An (N,1,H,W) ndarray, or an (N,H,W,3) RGB batch for a 1-channel model, was refused by Normalize naming a shape
    the user never passed ((5, 8, 1, 8)), with no word of the layout to use or of converting to grayscale."""
    learn = image_learner()
    with pytest.raises(ValueError, match=r"ndarrays are read as \(N,H,W,C\).*\(6, 1, 8, 8\) holds images of 8 "
                                         r"channels.*1-channel model: if they are channels-first, pass "
                                         r"x.transpose\(0, 2, 3, 1\)"):
        learn.infer(PIXELS.numpy())
    rgb = PIXELS[:, 0, :, :, None].expand(6, 8, 8, 3).numpy()
    with pytest.raises(ValueError, match=r"\(6, 8, 8, 3\) holds images of 3 channels.*1-channel model: if they have "
                                         r"3 channels, convert each to grayscale"):
        learn.infer(rgb)
    with pytest.raises(ValueError, match=r"tensors are read as \(N,C,H,W\).*\(6, 8, 8, 1\).*if they are "
                                         r"channels-last, pass x.permute\(0, 3, 1, 2\)"):
        learn.infer(PIXELS.permute(0, 2, 3, 1))
    # a shape that reads both ways gets both ways out (an (N,3,8,1) tensor: RGB images 8x1, or channels-last gray)
    with pytest.raises(ValueError, match=r"if they are channels-last, pass x.permute.*; if they have 3 channels, "
                                         r"convert each to grayscale"):
        learn.infer(PIXELS[:, :, :, :1].expand(6, 3, 8, 1).contiguous())
    # the other layout and another channel count: both named (it said "8-channel images: give 1-channel images")
    with pytest.raises(ValueError, match=r"if they are channels-last with 3 channels, convert each to grayscale.*a "
                                         r"list of PIL images is a batch"):
        learn.infer(PIXELS.permute(0, 2, 3, 1).expand(6, 8, 8, 3))
    from miniai.inference import to_batch
    rgb_norm = Normalize([0.5] * 3, [0.25] * 3)
    with pytest.raises(ValueError, match=r"\(8, 8, 4\) has 4 channels, and this is a 3-channel model: if it has 4 "
                                         r"channels, convert it to RGB"):
        to_batch(np.zeros((8, 8, 4), np.uint8), rgb_norm)  # np.array of an RGBA PNG: it said "can't read (8, 8, 4)"
    with pytest.raises(ValueError, match=r"tensors are read as \(C,H,W\).*\(8, 8, 3\) has 8 channels.*if it is "
                                         r"channels-last, pass x.permute\(2, 0, 1\)"):
        to_batch(torch.zeros(8, 8, 3, dtype=torch.uint8), rgb_norm)
    with pytest.raises(ValueError, match=r"\(8, 8\) is one gray image, and this is a 3-channel model: convert it to "
                                         r"RGB"):
        to_batch(np.zeros((8, 8), np.uint8), rgb_norm)  # (it got Normalize's "(..., 3, H, W); got (1, 1, 8, 8)")
    from PIL import Image
    rgba_norm = Normalize([0.5] * 4, [0.25] * 4)  # a 4-channel model takes PIL images of any mode, as README says
    assert all(to_batch(Image.new(mode, (8, 8)), rgba_norm)[0].shape == (1, 4, 8, 8) for mode in ("L", "RGB", "P"))
    cmyk = Image.fromarray(np.arange(256, dtype=np.uint8).reshape(8, 8, 4), mode="CMYK")  # four channels of its own:
    assert torch.equal(to_batch(cmyk, rgba_norm)[0], to_batch(np.array(cmyk), rgba_norm)[0])  # not made RGBA
    with pytest.raises(ValueError, match=r"one gray image, and this is a 3-channel model: give 3-channel images$"):
        to_batch(np.zeros((8, 8), np.uint16), rgb_norm)  # (no advice to convert through PIL: it clips 16-bit pixels)
    assert to_batch(np.zeros((8, 8, 3), np.uint8), rgb_norm)[0].shape == (1, 3, 8, 8)
    assert learn.infer(PIXELS.permute(0, 2, 3, 1).numpy()).index.shape == (6,)  # the layouts as said: fine
    assert learn.infer(PIXELS).index.shape == (6,)


def test_infer_names_a_channels_last_tensor_and_an_empty_batch_for_what_they_are():
    """(probe Y) A (28, 28, 1) tensor was read as 28 images 1 pixel wide ('resize them'), and an empty batch was
    blamed on a loader ('an empty dataset, or drop_last')."""
    learn = image_learner()
    with pytest.raises(ValueError, match=r"\(8, 8, 1\) looks like one image with its channel last.*"
                                         r"x.permute\(2, 0, 1\)"):
        learn.infer(torch.zeros(8, 8, 1, dtype=torch.uint8))
    with pytest.raises(ValueError, match=r"infer got a batch of no items"):
        learn.infer(torch.zeros(0, 1, 8, 8, dtype=torch.uint8))


def test_infer_refuses_a_batch_size_below_one():
    with pytest.raises(ValueError, match="infer: bs must be a whole number >= 1 .*, got 0"):
        image_learner().infer(PIXELS, bs=0)


def test_infer_without_normalization_takes_prepared_inputs_and_says_so():
    learn = image_learner()
    learn.dls = DataLoaders(learn.dls.train, learn.dls.valid)  # no classes, no normalize
    x = Normalize([0.4], [0.3])(PIXELS)
    got = learn.infer(x)
    assert torch.equal(got.probs, probs_of(learn, x)) and got.label == [str(i) for i in got.index.tolist()]
    with pytest.raises(TypeError, match="no normalization.*float inputs"):
        learn.infer(PIXELS)


def test_infer_errors_say_what_to_pass():
    learn = image_learner()
    with pytest.raises(TypeError, match="raw uint8 pixels"):
        learn.infer(PIXELS.float())
    with pytest.raises(ValueError, match="can't read an image of shape \\(1, 1, 1, 8, 8\\)"):
        learn.infer(PIXELS[:1, None])
    with pytest.raises(TypeError, match="tensors, ndarrays or PIL"):
        learn.infer("cat.png")
    learn.n_inp = 2
    with pytest.raises(ValueError, match="n_inp=2"):
        learn.infer(PIXELS)


def test_infer_refuses_items_of_another_size_than_the_training_images(tmp_path):
    """A model that pools accepts any size: a 12x12 image (not resized) got a confident prediction, without a word."""
    pooled = nn.Sequential(nn.Conv2d(1, 3, 3, padding=1), nn.AdaptiveAvgPool2d(1), nn.Flatten())
    learn = TrainLearner(pooled, image_dls(), F.cross_entropy, lr=0.1, cbs=[DeviceCB("cpu")])
    big = torch.randint(0, 256, (1, 12, 12), dtype=torch.uint8)
    with pytest.raises(ValueError, match=r"trained on items of shape \(1, 8, 8\); got \(1, 12, 12\): resize"):
        learn.infer(big)
    loaded = load_learner(learn.export(tmp_path / "pooled.pkl"))  # the export keeps the shape
    with pytest.raises(ValueError, match=r"trained on items of shape \(1, 8, 8\)"):
        loaded.infer([big, big])
    assert loaded.infer(PIXELS[0]).label in ("a", "b", "c")


def test_infer_refuses_a_model_whose_outputs_are_not_one_per_class():
    """5 outputs for 3 class names: an index of 3 or 4 crashed with IndexError, 0-2 was named silently."""
    learn = TrainLearner(nn.Sequential(nn.Flatten(), nn.Linear(64, 5)), image_dls(), F.cross_entropy, lr=0.1)
    with pytest.raises(ValueError, match="5 outputs per item for 3 classes"):
        learn.infer(PIXELS)


# ---------------------------------------------------------------- export / load_learner

def trained(cbs=()) -> TrainLearner:
    learn = image_learner([BatchTransformCB(RandomFlip()), MetricsCB(), *cbs])
    learn.fit(1)
    return learn


def run_python(code: str) -> None:
    subprocess.run([sys.executable, "-c", textwrap.dedent(code)], cwd=ROOT, check=True, capture_output=True)


def test_a_new_process_predicts_exactly_what_the_exporting_one_did(tmp_path):
    learn = trained([MixedPrecisionCB()])
    path = learn.export(tmp_path / "model.pkl")
    torch.save(learn.dls.valid.x, tmp_path / "x.pt")
    run_python(f"""
        import torch
        from miniai import load_learner
        learn = load_learner({str(path)!r})
        assert not learn.model.training and learn.lr is None
        x = torch.load({str(tmp_path / 'x.pt')!r})
        image = torch.arange(64, dtype=torch.uint8).view(1, 8, 8)
        torch.save((learn.get_preds(dl=[(x[:16],), (x[16:],)])[0], learn.infer(image)), {str(tmp_path / 'out.pt')!r})
    """)
    preds, (index, label, probs) = torch.load(tmp_path / "out.pt", weights_only=False)
    assert torch.equal(preds, learn.get_preds(dl=[(learn.dls.valid.x[:16],), (learn.dls.valid.x[16:],)])[0])
    here = learn.infer(torch.arange(64, dtype=torch.uint8).view(1, 8, 8))
    assert (index, label) == (here.index, here.label) and torch.equal(probs, here.probs)


def test_the_loaded_learner_has_the_predict_path_and_nothing_of_training(tmp_path):
    learn = trained([MixedPrecisionCB()])
    loaded = load_learner(learn.export(tmp_path / "m.pkl"))
    # (and the NaN guard, which acts only if it trains on: inference passes don't run it)
    # (its BatchTransformCB(RandomFlip()) is training only: left out)
    assert [type(cb) for cb in loaded.cbs] == [DeviceCB, MixedPrecisionCB, TerminateOnNaNCB]
    assert loaded.dls.classes == ["a", "b", "c"] and isinstance(loaded.dls.normalize, Normalize)
    assert loaded.dls.train is None and loaded.opt is None and not loaded.model.training
    assert loaded.loss_func is F.cross_entropy
    assert loaded.get_preds(dl=learn.dls.valid, with_loss=True)[2].shape == (40,)
    with pytest.raises(ValueError, match="no valid loader"):
        loaded.get_preds()


def test_a_base_learner_with_train_cb_exports_too(tmp_path):
    learn = Learner(nn.Sequential(nn.Flatten(), nn.Linear(64, 3)), image_learner().dls, F.cross_entropy,
                    cbs=[TrainCB()])
    loaded = load_learner(learn.export(tmp_path / "m.pkl"))
    assert torch.equal(loaded.infer(PIXELS).probs, learn.infer(PIXELS).probs)


def test_what_cannot_be_pickled_is_named_with_the_fix(tmp_path):
    learn = image_learner([BatchTransformCB(lambda x: x * 2, on_val=True)])
    with pytest.raises(TypeError, match="could not pickle the callback BatchTransformCB.*module-level"):
        learn.export(tmp_path / "m.pkl")
    assert list(tmp_path.iterdir()) == []  # no half-written file left
    learn = image_learner()
    learn.loss_func = lambda preds, y: F.cross_entropy(preds, y)
    with pytest.warns(UserWarning, match="loss_func can't be pickled"):
        loaded = load_learner(learn.export(tmp_path / "m.pkl"))
    with pytest.raises(TypeError, match="has none"):
        loaded.get_preds(dl=learn.dls.valid, with_loss=True)


def test_a_learner_with_its_own_predict_is_refused_and_other_files_too(tmp_path):
    class Custom(TrainLearner):
        def predict(self):
            self.preds = self.model(*self.xb) * 2
    learn = image_learner()
    custom = Custom(learn.model, learn.dls, F.cross_entropy)
    with pytest.raises(TypeError, match="own predict.*owns_steps"):
        custom.export(tmp_path / "m.pkl")
    torch.save(learn.model.state_dict(), tmp_path / "weights.pt")
    with pytest.raises(ValueError, match="not a miniai export"):
        load_learner(tmp_path / "weights.pt")


@contextlib.contextmanager
def _importable(folder: Path, name: str):
    """`folder` on sys.path for the modules a test writes there; afterwards neither it nor the module `name`."""
    sys.path.insert(0, str(folder))
    try:
        yield
    finally:
        sys.path.remove(str(folder))
        sys.modules.pop(name, None)


def _exported_from_module(folder: Path, name: str, source: str):
    """The module `name` written into `folder` (on sys.path) and imported, and an export of a learner of its Net."""
    import importlib
    (folder / f"{name}.py").write_text(source)
    mod = importlib.import_module(name)
    learn = image_learner()
    learn.model = mod.Net()
    return mod, learn.export(folder / "m.pkl")


def test_an_export_whose_model_class_changed_or_went_since_is_said_so_and_a_damaged_one_is_named(tmp_path):
    """Pickle stores the model's class by name: a class whose code changed since the export gave other predictions
    without a word (2x the logits), and a renamed one a bare unpickling error (probe Y); an export missing its model
    was a KeyError."""
    import importlib
    source = textwrap.dedent("""
        from torch import nn
        class Net(nn.Module):
            def __init__(self):
                super().__init__()
                self.lin = nn.Linear(64, 3)
            def forward(self, x):
                return self.lin(x.flatten(1).float()){}
        """)
    with _importable(tmp_path, "netmod_s19"):
        mod, path = _exported_from_module(tmp_path, "netmod_s19", source.format(""))
        import warnings
        with warnings.catch_warnings():
            warnings.simplefilter("error")
            load_learner(path)  # unchanged: no word
        (tmp_path / "netmod_s19.py").write_text(source.format(" * 2"))
        importlib.reload(mod)
        with pytest.warns(UserWarning, match=r"netmod_s19.Net has changed since .*m.pkl was exported.*its code "
                                             r"differs"):
            load_learner(path)
        (tmp_path / "netmod_s19.py").write_text(source.replace("class Net", "class Net2").format(""))
        importlib.reload(mod)
        del mod.Net
        with pytest.raises(AttributeError, match=r"m.pkl holds the model's class by name, and it can't be found here"):
            load_learner(path)
    torch.save({"format": "miniai-export", "version": 1}, tmp_path / "bare.pkl")
    with pytest.raises(ValueError, match=r"bare.pkl is an incomplete miniai export: it has no model"):
        load_learner(tmp_path / "bare.pkl")


def test_a_damaged_export_is_refused_naming_the_file(tmp_path):
    """(probe P9) A flipped bit in an exported weight loaded without a word (probabilities 0.5 off), where a
    checkpoint's CRC-32s refuse one; a cut or foreign file gave a bare OSError or UnpicklingError."""
    import zipfile

    from tests.synth import zip_record_start
    path = trained().export(tmp_path / "m.pkl")
    raw = bytearray(path.read_bytes())
    biggest = max((i for i in zipfile.ZipFile(path).infolist() if "/data/" in i.filename), key=lambda i: i.file_size)
    raw[zip_record_start(path, lambda i: i.filename == biggest.filename) + 3] ^= 0x40  # one bit of a weight
    (tmp_path / "flipped.pkl").write_bytes(bytes(raw))
    with pytest.raises(ValueError, match=r"flipped.pkl is damaged: its weights' checksums .*export it again"):
        load_learner(tmp_path / "flipped.pkl")
    (tmp_path / "cut.pkl").write_bytes(path.read_bytes()[:len(raw) // 2])
    (tmp_path / "text.pkl").write_text("not an export at all\n" * 20)
    for name in ("cut.pkl", "text.pkl"):
        with pytest.raises(ValueError, match=rf"{name} can't be read as a miniai export \(.*\): it is damaged \(cut "
                                             r"short, changed\) or no export"):
            load_learner(tmp_path / name)


def test_a_model_whose_lazy_layer_never_ran_is_not_exported(tmp_path):
    """(probe P9) A LazyLinear that never saw a batch was exported without weights, without a word: every load
    made new random ones (two processes predicted [0.08, 0.82, 0.10] and [0.08, 0.18, 0.75])."""
    learn = TrainLearner(nn.Sequential(nn.Flatten(), nn.LazyLinear(3)), DataLoaders(None, None), F.cross_entropy)
    with pytest.raises(ValueError, match=r"export: the model's 1.weight, 1.bias are not made yet: a lazy.*first "
                                         r"forward.*learn.summary\(xb=\.\.\.\)"):
        learn.export(tmp_path / "m.pkl")
    assert not (tmp_path / "m.pkl").exists()
    from miniai.callbacks.activations import Hook
    hook = Hook(learn.model[0], lambda *args: None)  # (a fit's hook: left on the model by the refusal)
    with pytest.raises(ValueError, match="not made yet"):
        learn.export(tmp_path / "m.pkl")
    assert hook.handle.id in learn.model[0]._forward_hooks
    hook.remove()
    learn.summary(xb=torch.zeros(2, 4))
    load_learner(learn.export(tmp_path / "m.pkl"))


def test_export_replaces_an_earlier_export_but_no_other_file(tmp_path):
    """(probe P9) export wrote over whatever was at its path: a run's checkpoint (whose resume then failed), a
    file of the user's; CheckpointCB, CSVLoggerCB and --out refuse to."""
    from miniai.callbacks.checkpoint import save_checkpoint
    learn = trained()
    save_checkpoint({"format": "miniai-checkpoint", "epoch": 1}, tmp_path / "epoch_0001.pt")
    (tmp_path / "notes.txt").write_text("mine")
    for name in ("epoch_0001.pt", "notes.txt"):
        before = (tmp_path / name).read_bytes()
        with pytest.raises(FileExistsError, match=rf"{name} already exists and is no miniai export: export to "
                                                  r"another path, or remove it first"):
            learn.export(tmp_path / name)
        assert (tmp_path / name).read_bytes() == before
    path = learn.export(tmp_path / "m.pkl")
    weight = next(learn.model.parameters())
    weight.data.add_(1.0)  # trained on: its export again replaces the first
    learn.export(path)
    assert torch.equal(next(load_learner(path).model.parameters()), weight)


class KeepsLearner(Callback):
    """An inference callback that keeps the learner, as fastai's callbacks do."""
    inference = True

    def before_fit(self, learn):
        self.learn = learn


def test_export_refuses_a_callback_that_holds_the_learner_its_data_or_optimizer(tmp_path):
    """(probe P9) An inference callback keeping `self.learn` (fastai's way) exported the whole learner with it:
    optimizer, 5 MB of training data and the metrics history, where export says it writes none of them."""
    learn = trained([KeepsLearner()])
    with pytest.raises(TypeError, match=r"export: the callback KeepsLearner holds the learner .*its optimizer, data "
                                        r"and history.*del cb.learn"):
        learn.export(tmp_path / "m.pkl")
    assert not (tmp_path / "m.pkl").exists()
    keeper = next(cb for cb in learn.cbs if isinstance(cb, KeepsLearner))
    keeper.learn = learn.dls.valid  # (regression round T2) a loader of the learner's: its data too
    with pytest.raises(TypeError, match=r"export: the callback KeepsLearner holds the learner"):
        learn.export(tmp_path / "m.pkl")
    del keeper.learn
    load_learner(learn.export(tmp_path / "m.pkl"))


def test_a_channels_last_ndarray_batch_reaches_the_model_in_the_loaders_layout():
    """(probe P9) (N,H,W,1) pixels permuted to (N,1,H,W) count as contiguous (a channel of 1), so contiguous() kept
    their strides, and the model ran another kernel than for the same pixels as a tensor: 1 ulp off."""
    from miniai.inference import to_batch
    pixels = torch.randint(0, 256, (3, 1, 8, 8), dtype=torch.uint8)
    norm = Normalize([0.4], [0.3])
    as_tensor, _ = to_batch(pixels, norm)
    as_array, _ = to_batch(pixels.permute(0, 2, 3, 1).numpy(), norm)
    assert torch.equal(as_tensor, as_array) and as_array.stride() == as_tensor.stride() == (64, 64, 8, 1)


class WithExtraState(nn.Module):
    """A layer whose state_dict holds a dict beside its tensors (get_extra_state)."""

    def __init__(self) -> None:
        super().__init__()
        self.lin = nn.Linear(64, 3)

    def forward(self, x):
        return self.lin(x.flatten(1).float())

    def get_extra_state(self):
        return {"vocab": ["a", "b"], "scale": torch.ones(1)}

    def set_extra_state(self, state):
        self.vocab = state["vocab"]


def test_the_exports_checksums_cover_the_normalization_and_take_a_state_of_more_than_tensors(tmp_path):
    """(regression round T2) The checksum read every value of the model's state_dict as a tensor: a layer with
    extra state (a dict) or a quantized model failed to export with a bare AttributeError; and it left out the
    normalization, whose damaged mean loaded without a word (probabilities 0.03 off)."""
    dls = DataLoaders(TensorLoader(torch.zeros(4, 1, 8, 8), torch.zeros(4, dtype=torch.long), 2),
                      TensorLoader(torch.zeros(4, 1, 8, 8), torch.zeros(4, dtype=torch.long), 2),
                      normalize=Normalize([0.4], [0.3]))
    path = TrainLearner(WithExtraState(), dls, F.cross_entropy).export(tmp_path / "m.pkl")
    assert isinstance(load_learner(path).model, WithExtraState)
    bundle = torch.load(path, weights_only=False)
    bundle["normalize"].mean.add_(0.01)  # as a flipped bit would: the file keeps its checksums
    torch.save(bundle, tmp_path / "damaged.pkl")
    with pytest.raises(ValueError, match=r"damaged.pkl is damaged"):
        load_learner(tmp_path / "damaged.pkl")


class NeedsVocab(nn.Module):
    """A model whose unpickling needs a file of its own (FAIL_UNPICKLING: it is missing)."""
    FAIL_UNPICKLING = False

    def __init__(self) -> None:
        super().__init__()
        self.lin = nn.Linear(64, 3)

    def forward(self, x):
        return self.lin(x.flatten(1).float())

    def __setstate__(self, state):
        if NeedsVocab.FAIL_UNPICKLING:
            raise RuntimeError("NeedsVocab: vocab.txt is missing; set VOCAB_DIR")
        super().__setstate__(state)


def test_an_error_the_models_own_unpickling_raises_is_not_called_a_damaged_file(tmp_path, monkeypatch):
    """(regression round T2) A model's __setstate__ raising ("vocab.txt is missing") came out as "can't be read
    as a miniai export: it is damaged (cut short, changed) or no export": a ValueError blaming a sound file."""
    dls = DataLoaders(TensorLoader(torch.zeros(4, 1, 8, 8), torch.zeros(4, dtype=torch.long), 2),
                      TensorLoader(torch.zeros(4, 1, 8, 8), torch.zeros(4, dtype=torch.long), 2))
    path = TrainLearner(NeedsVocab(), dls, F.cross_entropy).export(tmp_path / "m.pkl")
    monkeypatch.setattr(NeedsVocab, "FAIL_UNPICKLING", True)
    with pytest.raises(RuntimeError, match=r"^NeedsVocab: vocab.txt is missing"):
        load_learner(path)


class CachedNorm:
    """A normalization of one's own that pickles without a tensor it caches (rebuilt on use)."""

    def __init__(self) -> None:
        self.mean, self.cache = torch.tensor([0.4]), torch.zeros(3)

    def __getstate__(self):
        return {"mean": self.mean}

    def __call__(self, x):
        return x.float() / 255 - self.mean


def test_a_normalization_of_ones_own_that_pickles_otherwise_than_it_holds_is_no_damage(tmp_path):
    """(regression round T3) The checksum covered every tensor a normalize object held, as it held them: one whose
    pickle leaves a cache out was refused at every load as damaged ("copy it again"), which no copy fixes."""
    dls = DataLoaders(TensorLoader(torch.zeros(4, 1, 8, 8), torch.zeros(4, dtype=torch.long), 2),
                      TensorLoader(torch.zeros(4, 1, 8, 8), torch.zeros(4, dtype=torch.long), 2),
                      normalize=CachedNorm())
    learn = TrainLearner(WithExtraState(), dls, F.cross_entropy)
    assert isinstance(load_learner(learn.export(tmp_path / "m.pkl")).dls.normalize, CachedNorm)


def test_an_error_raised_anywhere_in_torch_while_reading_an_export_is_named_as_damage():
    """(regression round T3) A flipped byte in data.pkl: torch raised "Trying to resize storage that is not
    resizable" from torch/_utils.py, which was let through bare, as if the model's own code had raised it."""
    import torch._utils

    from miniai.inference import _in_reading
    scope: dict = {}
    exec(compile("def fail():\n    raise RuntimeError('Trying to resize storage that is not resizable')\n",
                 torch._utils.__file__, "exec"), scope)  # (code as if of torch/_utils.py)
    try:
        scope["fail"]()
    except RuntimeError as e:  # (as load_learner sees it: from torch.load down, this test's frame left out)
        assert _in_reading(e.with_traceback(e.__traceback__.tb_next))
    try:
        NeedsVocab.FAIL_UNPICKLING = True
        NeedsVocab().__setstate__({})
    except RuntimeError as e:
        assert not _in_reading(e.with_traceback(e.__traceback__.tb_next))
    finally:
        NeedsVocab.FAIL_UNPICKLING = False


def test_an_export_of_the_one_checksum_over_weights_and_normalization_still_loads(tmp_path):
    """(regression round T4) For a while one checksum covered the model and the Normalize together; the split into
    two called every such export (all get_dls ones) damaged."""
    from miniai.inference import _guarded
    from miniai.utils import byte_sums
    dls = DataLoaders(TensorLoader(torch.zeros(4, 1, 8, 8), torch.zeros(4, dtype=torch.long), 2),
                      TensorLoader(torch.zeros(4, 1, 8, 8), torch.zeros(4, dtype=torch.long), 2),
                      normalize=Normalize([0.4], [0.3]))
    path = TrainLearner(WithExtraState(), dls, F.cross_entropy).export(tmp_path / "m.pkl")
    bundle = torch.load(path, weights_only=False)
    model, normalize = _guarded(bundle)
    bundle["checksum"] = byte_sums(model + normalize)
    del bundle["normalize_checksum"]
    torch.save(bundle, tmp_path / "between.pkl")
    load_learner(tmp_path / "between.pkl")
    bundle["normalize"].mean.add_(0.01)  # (and a damaged one of them is still refused)
    torch.save(bundle, tmp_path / "damaged.pkl")
    with pytest.raises(ValueError, match="is damaged"):
        load_learner(tmp_path / "damaged.pkl")


def test_a_folder_whose_name_starts_like_torchs_or_miniais_holds_no_reader_code():
    """(regression round T4) A model in /.../miniai_user/ (or torchvision's) raising in its own __setstate__ was
    named a damaged export: the folder's path began with miniai's own."""
    import miniai
    from miniai.inference import _in_reading
    for folder in (os.path.dirname(miniai.__file__) + "_user", os.path.dirname(torch.__file__) + "vision"):
        scope: dict = {}
        exec(compile("def fail():\n    raise ValueError('vocab missing')\n", os.path.join(folder, "m.py"), "exec"),
             scope)
        try:
            scope["fail"]()
        except ValueError as e:
            assert not _in_reading(e.with_traceback(e.__traceback__.tb_next))


def test_an_export_whose_models_base_class_changed_since_is_said_so(tmp_path):
    """(probe T3) Only each module's own class was digested: a base class's method that forward calls, changed
    since the export, gave other predictions without a word."""
    import importlib
    import warnings
    source = textwrap.dedent("""
        import torch
        from torch import nn
        class Base(nn.Module):
            def act(self, x):
                return torch.{}(x)
        class Net(Base):
            def __init__(self):
                super().__init__()
                self.lin = nn.Linear(64, 3)
            def forward(self, x):
                return self.act(self.lin(x.flatten(1).float()))
        """)
    with _importable(tmp_path, "basemod_s19"):
        mod, path = _exported_from_module(tmp_path, "basemod_s19", source.format("relu"))
        (tmp_path / "basemod_s19.py").write_text(source.format("sigmoid"))
        importlib.reload(mod)
        with pytest.warns(UserWarning, match=r"basemod_s19.Base has changed since"):
            load_learner(path)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        load_learner(image_learner().export(tmp_path / "plain.pkl"))  # (miniai's and torch's own classes: no word)


def test_an_export_whose_callback_class_changed_since_is_said_so(tmp_path):
    """Only the model's classes were digested: a NormCB (inference = True) of the user's module, changed since the
    export, gave other predictions in a fresh process (0.706 -> 0.618) without a word, though README names
    callbacks (probe export, s27)."""
    import importlib
    source = textwrap.dedent("""
        from miniai.learner import Callback
        class Scale(Callback):
            inference = True
            def before_batch(self, learn):
                learn.batch = (learn.batch[0] * {}, *learn.batch[1:])
        """)
    with _importable(tmp_path, "cbmod_s27"):
        (tmp_path / "cbmod_s27.py").write_text(source.format(1))
        mod = importlib.import_module("cbmod_s27")
        path = image_learner(cbs=[mod.Scale()]).export(tmp_path / "m.pkl")
        (tmp_path / "cbmod_s27.py").write_text(source.format(2))
        importlib.reload(mod)
        with pytest.warns(UserWarning, match=r"cbmod_s27.Scale has changed since"):
            load_learner(path)


def test_export_refuses_a_callback_that_may_prepare_batches_and_would_be_left_out(tmp_path):
    """A course-style NormCB (before_batch normalizing, no inference attribute) was dropped by export without a word:
    in a fresh process infer took the raw floats, 363 of 500 predictions changed, accuracy 0.672 -> 0.226 (probe
    export, s27); get_preds warned of it, export did not."""
    learn = image_learner(cbs=[NormCB()])
    with pytest.raises(ValueError, match=r"export leaves out NormCB.*inference = True.*inference = False"):
        learn.export(tmp_path / "m.pkl")
    assert not (tmp_path / "m.pkl").exists()
    learn = image_learner(cbs=[SaidNormCB()])  # the advice, followed: exported with it
    loaded = load_learner(learn.export(tmp_path / "m.pkl"))
    assert any(isinstance(cb, SaidNormCB) for cb in loaded.cbs)


def test_export_takes_a_callbacks_inference_said_on_the_instance(tmp_path):
    """A course-style batch transform setting self.inference = on_val (False: train-only augmentation) was refused
    at export as unsaid (regression round 28): said on the instance, it is left out."""
    learn = image_learner(cbs=[OnValTfm(on_val=False)])
    loaded = load_learner(learn.export(tmp_path / "m.pkl"))
    assert not any(isinstance(cb, OnValTfm) for cb in loaded.cbs)
    assert any(isinstance(cb, OnValTfm) for cb in load_learner(image_learner(cbs=[OnValTfm(on_val=True)]).export(
        tmp_path / "v.pkl")).cbs)
    with pytest.raises(ValueError, match="export leaves out OnValTfm"):  # (None says nothing: regression round 29)
        image_learner(cbs=[OnValTfm(on_val=None)]).export(tmp_path / "n.pkl")


class OnValTfm(Callback):
    """The course's BatchTransformCB's shape: whether it takes part in predictions is set per instance."""
    def __init__(self, on_val: bool):
        self.inference = on_val

    def before_batch(self, learn):
        learn.batch = (learn.batch[0] + 0.0, *learn.batch[1:])


class NormCB(Callback):
    """A course-style normalizing callback that has not said whether it takes part in predictions."""
    def before_batch(self, learn):
        learn.batch = ((learn.batch[0] - 0.5) / 0.3, *learn.batch[1:])


class SaidNormCB(NormCB):
    inference = True


# ---------------------------------------------------------------- the real thing

@pytest.mark.slow
def test_fashion_mnist_predictions_tta_infer_and_export(tmp_path):
    from miniai import GeneralRelu, get_dls, get_model, init_weights, set_seed
    from miniai.cache import load_tensors
    set_seed(0)
    dls = get_dls(bs=256, n_train=8192, n_valid=512)
    model = get_model(partial(GeneralRelu, leak=0.1, sub=0.4), norm=nn.BatchNorm2d)
    model.apply(partial(init_weights, leaky=0.1))
    learn = TrainLearner(model, dls, F.cross_entropy, lr=2e-2, cbs=[DeviceCB("cpu")], opt_func=optim.AdamW)
    learn.fit(1)
    probs, targets = learn.get_preds(act=torch.softmax)
    assert (probs.argmax(1) == targets).float().mean() > 0.6 and torch.equal(targets, dls.valid.y)
    tta_probs, _ = learn.tta()
    assert (tta_probs.argmax(1) == targets).float().mean() > 0.6
    raw = load_tensors().valid_x[:256]  # the same uint8 images, normalized by infer as get_dls did
    inferred = learn.infer(raw)
    assert torch.equal(inferred.probs, probs[:256])
    assert inferred.label[:3] == [dls.classes[i] for i in probs[:3].argmax(1).tolist()]
    path = learn.export(tmp_path / "fmnist.pkl")
    np.save(tmp_path / "raw.npy", raw.numpy())
    run_python(f"""
        import numpy as np, torch
        from miniai import load_learner
        learn = load_learner({str(path)!r})
        torch.save(learn.infer(np.load({str(tmp_path / 'raw.npy')!r})[:, 0]).probs, {str(tmp_path / 'p.pt')!r})
    """)
    assert torch.equal(torch.load(tmp_path / "p.pt"), probs[:256])


def test_an_export_made_during_a_fit_carries_none_of_its_hooks_and_loads_on_cpu_0(tmp_path):
    """Exported from a callback while ActivationStats hooked the model, the file failed to pickle its lambda filter
    ('could not pickle the model') or carried the hooks; load_learner(device='cpu:0') failed in torch.load."""
    from miniai.callbacks.activations import ActivationStats
    from miniai.learner import Callback

    class ExportAfterEpoch(Callback):
        def after_epoch(self, learn):
            if learn.training:
                learn.export(tmp_path / "mid.pkl")
    learn = image_learner([ActivationStats(lambda m: isinstance(m, nn.ReLU)), ExportAfterEpoch()])
    learn.fit(1)
    loaded = load_learner(tmp_path / "mid.pkl", device="cpu:0")
    assert not any(m._forward_hooks for m in loaded.model.modules())
    assert torch.equal(loaded.infer(PIXELS).probs, learn.infer(PIXELS).probs)


def test_the_models_own_hooks_are_exported_with_it(tmp_path):
    """A pruned model computes its weight in a forward pre-hook: export dropped it with the fit's hooks, and the
    loaded model predicted with a stale weight."""
    from torch.nn.utils import prune
    learn = image_learner()
    prune.l1_unstructured(learn.model[5], "weight", amount=0.5)
    learn.fit(1, valid=False)
    loaded = load_learner(learn.export(tmp_path / "pruned.pkl"))
    assert torch.equal(loaded.infer(PIXELS).probs, learn.infer(PIXELS).probs)


def test_a_learner_with_train_cb_and_a_lambda_loss_exports_after_a_fit(tmp_path):
    """The loss check's cache held the loss itself, and TrainCB is exported: a lambda loss, which export leaves out
    with a warning, made export fail after a fit (TypeError: could not pickle the callback TrainCB)."""
    learn = tiny_learner(cbs=[TrainCB()], learner_cls=Learner)
    learn.loss_func = lambda p, y: F.mse_loss(p, y)
    learn.fit(1)
    with pytest.warns(UserWarning, match="loss_func can't be pickled"):
        path = learn.export(tmp_path / "m.pkl")
    loaded = load_learner(path)
    assert torch.equal(loaded.get_preds(dl=learn.dls.valid)[0], learn.get_preds()[0])


def test_infer_reads_a_palette_image_as_gray_levels_whatever_the_normalization():
    """With dls.normalize a custom callable (no mean to count channels from), a palette image went in as its
    palette indices: the channels now come from the training items' shape; without it, a clear error."""
    from PIL import Image
    learn = image_learner()
    norm = learn.dls.normalize
    custom = lambda x: norm(x)  # noqa: E731 -- a normalize of the user's own
    learn.dls = DataLoaders(learn.dls.train, learn.dls.valid, classes=["a", "b", "c"], normalize=custom)
    palette = Image.fromarray(PIXELS[0, 0].numpy()).convert("P", palette=Image.ADAPTIVE, colors=16)
    expected = learn.infer(np.array(palette.convert("L"))).probs
    assert not torch.equal(learn.infer(np.array(palette)).probs, expected)  # the indices would predict otherwise
    assert torch.equal(learn.infer(palette).probs, expected)
    learn.dls = DataLoaders(None, None, classes=["a", "b", "c"], normalize=custom)  # no item_shape either
    with pytest.raises(TypeError, match=r"palette image.*indices.*convert\('L'\) or convert\('RGB'\)"):
        learn.infer(palette)


def test_infer_takes_the_uint8_items_the_loaders_give_when_a_validation_transform_normalizes():
    """Loaders of raw uint8 images normalized by BatchTransformCB(on_val=True): infer refused the very items the
    loaders give, and its advice (DataLoaders(..., normalize=...)) normalized them twice."""
    norm = BatchTransformCB(Normalize([0.4], [0.3]), on_train=True, on_val=True)
    dl = TensorLoader(PIXELS, torch.zeros(6, dtype=torch.long), 4)
    learn = TrainLearner(image_model(), DataLoaders(dl, dl), F.cross_entropy, cbs=[norm])
    probs, _ = learn.get_preds(act=torch.softmax)
    assert torch.equal(learn.infer(PIXELS).probs, probs)
    learn.rm_cb(norm)  # nothing prepares them: the model gets them as the loaders give them, and fails on them as
    for call in (learn.get_preds, lambda: learn.infer(PIXELS)):  # on the loaders' own (no advice to normalize twice)
        with pytest.raises(RuntimeError, match=r"(?s)Input type \(unsigned char\).*the model was called on.*uint8"):
            call()


def test_infer_takes_uint8_items_that_the_courses_batch_transform_normalizes():
    """The course's BatchTransformCB (miniai.init: the whole batch) normalizing raw uint8 loaders: infer said nothing
    prepared the batches, where miniai's own BatchTransformCB(on_val=True) was taken."""
    from miniai._course_defs import BatchTransformCB as CourseBatchTransformCB
    norm = Normalize([0.4], [0.3])
    dl = TensorLoader(PIXELS, torch.zeros(6, dtype=torch.long), 4)
    learn = TrainLearner(image_model(), DataLoaders(dl, dl), F.cross_entropy,
                         cbs=[CourseBatchTransformCB(lambda b: (norm(b[0]), b[1]))])
    probs, _ = learn.get_preds(act=torch.softmax)
    assert torch.equal(learn.infer(PIXELS).probs, probs)


def test_infer_refuses_raw_pixels_when_the_validation_transform_was_written_for_float_items():
    """Loaders of 0-1 floats, normalized by a BatchTransformCB(on_val=True): infer took uint8 pixels through that
    transform, which was written for 0-1 floats, and predicted on inputs 255 times too large, without a word."""
    from miniai.callbacks import BatchTransformCB
    from miniai.data import DataLoaders, TensorLoader
    torch.manual_seed(0)
    pix = torch.randint(0, 256, (32, 1, 8, 8), dtype=torch.uint8)
    x, y = pix.float() / 255, torch.randint(0, 2, (32,))
    dls = DataLoaders(TensorLoader(x, y, 16), TensorLoader(x, y, 16))
    norm = BatchTransformCB(lambda xb: (xb - 0.5) / 0.29, on_val=True)
    learn = TrainLearner(nn.Sequential(nn.Flatten(), nn.Linear(64, 2)), dls, F.cross_entropy, lr=0.1, cbs=[norm])
    with pytest.raises(TypeError, match="can't scale torch.uint8 pixels"):
        learn.infer(pix[:4])
    ref, _ = learn.get_preds(dl=[(x[:4],)], act=torch.softmax)
    assert torch.equal(learn.infer(x[:4]).probs, ref)  # the loaders' own items go in as they are


class _ScalesItself(nn.Module):
    """A model that takes raw pixels: it scales them itself."""
    def __init__(self) -> None:
        super().__init__()
        self.lin = nn.Linear(64, 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.lin(x.flatten(1).float() / 255)


def test_infer_takes_raw_pixels_to_a_model_that_scales_them_itself_and_refuses_floats(tmp_path):
    """Loaders of uint8 items, normalize=None, no transform: the model scales them. infer refused the pixels, with
    advice pointing in circles ("loaders whose items are not integer pixels"), and took 0-1 floats, which the model
    divided by 255 again: predictions on inputs 255 times too small, without a word."""
    torch.manual_seed(0)
    pix = torch.randint(0, 256, (32, 1, 8, 8), dtype=torch.uint8)
    y = torch.randint(0, 2, (32,))
    dls = DataLoaders(TensorLoader(pix, y, 16), TensorLoader(pix, y, 16), normalize=None)
    learn = TrainLearner(_ScalesItself(), dls, F.cross_entropy, lr=0.1)
    ref, _ = learn.get_preds(dl=[(pix[:4],)], act=torch.softmax)
    assert torch.equal(learn.infer(pix[:4]).probs, ref)
    with pytest.raises(TypeError, match=r"give uint8 items \(0-255 pixels\).*got torch.float32.*\(x \* 255\)"):
        learn.infer(pix[:4].float() / 255)
    learn.export(tmp_path / "m.pkl")  # (the export keeps the loaders' item dtype)
    assert torch.equal(load_learner(tmp_path / "m.pkl").infer(pix[:4]).probs, ref)
    wide = DataLoaders(TensorLoader(pix.int(), y, 16), TensorLoader(pix.int(), y, 16), normalize=None)
    learn = TrainLearner(_ScalesItself(), wide, F.cross_entropy, lr=0.1)  # int32 items: 16-bit ones, say
    with pytest.raises(TypeError, match=r"give int32 items.*got uint8.*16-bit.*x.to\(torch.int32\)"):
        learn.infer(pix[:4])  # (cast as it was, an 8-bit image read on a 16-bit scale)
    assert torch.equal(learn.infer(pix[:4].int()).probs, learn.get_preds(dl=[(pix[:4].int(),)], act=torch.softmax)[0])


def test_infer_on_loaders_of_unknown_item_dtype_names_item_dtype_as_the_way_to_take_pixels():
    """A collate of one's own hides the items' dtype: infer(uint8) was refused, advising normalize= and floats, but
    never the fix, DataLoaders(..., item_dtype=torch.uint8)."""
    from torch.utils.data import DataLoader, TensorDataset
    pix = torch.randint(0, 256, (16, 1, 8, 8), dtype=torch.uint8)
    dl = DataLoader(TensorDataset(pix, torch.randint(0, 2, (16,))), 8,
                    collate_fn=lambda b: (torch.stack([i[0] for i in b]), torch.stack([i[1] for i in b])))
    learn = TrainLearner(_ScalesItself(), DataLoaders(dl, dl, normalize=None), F.cross_entropy, lr=0.1)
    with pytest.raises(TypeError, match=r"say so: learn.dls = DataLoaders\(train, valid, item_dtype=torch.uint8\)"):
        learn.infer(pix[:2])
    learn.dls = DataLoaders(dl, dl, normalize=None, item_dtype=torch.uint8)
    ref, _ = learn.get_preds(dl=[(pix[:2],)], act=torch.softmax)
    assert torch.equal(learn.infer(pix[:2]).probs, ref)


def test_an_exported_learner_on_raw_pixels_with_a_validation_transform_still_infers_them(tmp_path):
    """The check that the loaders' items are raw pixels read dls.train.x, which an exported learner (and a torch
    DataLoader) has not: load_learner(...).infer(pixels) was refused, though the export's transform takes them."""
    from miniai.callbacks import BatchTransformCB
    from miniai.data import DataLoaders, TensorLoader
    from miniai.inference import load_learner
    torch.manual_seed(0)
    pix = torch.randint(0, 256, (32, 1, 8, 8), dtype=torch.uint8)
    y = torch.randint(0, 2, (32,))
    dls = DataLoaders(TensorLoader(pix, y, 16), TensorLoader(pix, y, 16))
    to_float = BatchTransformCB(_scale_pixels, on_val=True)
    learn = TrainLearner(nn.Sequential(nn.Flatten(), nn.Linear(64, 2)), dls, F.cross_entropy, lr=0.1, cbs=[to_float])
    expected = learn.infer(pix[:4]).probs
    learn.export(tmp_path / "m.pkl")
    assert torch.equal(load_learner(tmp_path / "m.pkl").infer(pix[:4]).probs, expected)


def _scale_pixels(xb: torch.Tensor) -> torch.Tensor:
    return xb.float() / 255


def test_infer_reads_the_item_dtype_of_dict_items_and_never_feeds_pixels_to_a_float_transform():
    """DataLoaders.from_dd over a DatasetDict whose transform gives 0-1 floats (the course's pipeline) with the
    normalization in BatchTransformCB(on_val=True): item_dtype read the dict item as a tuple, gave None, and infer
    took that for uint8, so raw pixels went unscaled into the 0-1 transform (agreement 0.6 with get_preds)."""
    import datasets
    g = torch.Generator().manual_seed(0)
    x, y = torch.randint(0, 256, (60, 8, 8), dtype=torch.uint8, generator=g), torch.randint(0, 3, (60,), generator=g)
    feats = datasets.Features({"image": datasets.Array2D((8, 8), "uint8"), "label": datasets.Value("int64")})
    split = lambda s: datasets.Dataset.from_dict({"image": x[s].numpy(), "label": y[s].numpy()}, features=feats)
    def to_float(b):
        b["image"] = [torch.tensor(np.array(o), dtype=torch.float32)[None] / 255 for o in b["image"]]
        return b
    dd = datasets.DatasetDict(train=split(slice(0, 40)), test=split(slice(40, 60))).with_transform(to_float)
    dls = DataLoaders.from_dd(dd, 10)
    assert dls.item_dtype == torch.float32
    norm = BatchTransformCB(lambda xb: (xb - 0.5) / 0.3, on_train=True, on_val=True)
    learn = TrainLearner(image_model(), dls, F.cross_entropy, lr=0.1, cbs=[DeviceCB("cpu"), norm])
    learn.fit(1)
    with pytest.raises(TypeError, match="can't scale torch.uint8 pixels"):
        learn.infer(x[40:])
    probs, _ = learn.get_preds(act=torch.softmax)
    assert torch.equal(learn.infer(x[40:, None].float() / 255).probs, probs)


def test_infer_refuses_raw_pixels_when_the_loaders_item_dtype_is_unknown():
    """Loaders whose items can't be read (an iterable dataset) and a validation transform: infer took the unknown
    dtype for uint8 and fed raw pixels to a transform that may expect 0-1 floats; it says what to declare."""
    class Stream(torch.utils.data.IterableDataset):
        def __iter__(self):
            g = torch.Generator().manual_seed(0)
            return iter([(torch.rand(1, 8, 8, generator=g), i % 3) for i in range(20)])
    dls = DataLoaders(torch.utils.data.DataLoader(Stream(), 10), torch.utils.data.DataLoader(Stream(), 10))
    assert dls.item_dtype is None
    norm = BatchTransformCB(lambda xb: (xb - 0.5) / 0.3, on_train=True, on_val=True)
    learn = TrainLearner(image_model(), dls, F.cross_entropy, lr=0.1, cbs=[DeviceCB("cpu"), norm])
    with pytest.raises(TypeError, match=r"item_dtype=torch.uint8"):
        learn.infer(PIXELS)
    declared = DataLoaders(dls.train, dls.valid, item_dtype=torch.uint8)
    learn.dls = declared
    assert learn.infer(PIXELS).probs.shape == (6, 3)  # declared raw pixels: taken as the loaders give them


def test_item_dtype_reads_pre_batched_items_and_never_runs_the_collate():
    """DataLoader(batch_size=None) over pre-batched shards: item_dtype read the collate's output (default_convert's
    list), gave None, and infer refused raw pixels it took before; a collate that draws random numbers (MixUp) ran
    when the dtype was read (export, infer), moving the global RNG between fits."""
    x, y = torch.randint(0, 255, (16, 1, 8, 8), dtype=torch.uint8), torch.randint(0, 3, (16,))

    class Shards(torch.utils.data.Dataset):
        def __len__(self):
            return 4

        def __getitem__(self, i):
            return x[4 * i:4 * i + 4], y[4 * i:4 * i + 4]
    dl = torch.utils.data.DataLoader(Shards(), batch_size=None)
    assert DataLoaders(dl, dl).item_dtype == torch.uint8
    calls = []
    def drawing_collate(items):
        calls.append(torch.rand(1))
        return torch.utils.data.default_collate(items)
    dl = torch.utils.data.DataLoader(torch.utils.data.TensorDataset(x, y), 4, collate_fn=drawing_collate)
    assert DataLoaders(dl, dl).item_dtype is None and not calls  # (a collate of one's own: unknown, see below)


def test_a_collate_of_ones_own_makes_the_item_dtype_unknown_not_the_datasets():
    """A collate that turns uint8 items into 0-1 floats: item_dtype said uint8 (the dataset's), infer refused an
    image prepared as the loader's, and its advice (uint8 pixels) gave probabilities [0, 1, 0] for get_preds'
    [0.26, 0.13, 0.61]: the callback's normalization got 0-255 values."""
    x, y = torch.randint(0, 256, (40, 1, 6, 6), dtype=torch.uint8), torch.arange(40) % 3

    def to_floats(items):
        return torch.stack([i[0] for i in items]).float() / 255, torch.stack([i[1] for i in items])
    dl = lambda s: torch.utils.data.DataLoader(torch.utils.data.TensorDataset(x[s], y[s]), 8,  # noqa: E731
                                               collate_fn=to_floats)
    dls = DataLoaders(dl(slice(0, 30)), dl(slice(30, 40)))
    assert dls.item_dtype is None and dls.item_shape is None
    norm = BatchTransformCB(lambda xb: (xb - 0.5) / 0.29, on_train=True, on_val=True)
    learn = TrainLearner(nn.Sequential(nn.Flatten(), nn.Linear(36, 3)), dls, F.cross_entropy, lr=0.1, cbs=[norm])
    probs, _ = learn.get_preds(act=torch.softmax)
    with pytest.raises(TypeError, match=r"item_dtype=torch.uint8"):  # raw pixels, of a dtype unknown: declare it
        learn.infer(x[30:31])
    assert torch.allclose(learn.infer(x[30:31].float() / 255).probs, probs[:1])


def test_infer_refuses_floats_where_the_loaders_give_a_validation_transform_raw_pixels():
    """With uint8 loaders and a BatchTransformCB(on_val=True) that scales pixels, 0-1 floats were predicted as if
    they were pixels: different probabilities, no word (uint8 where floats are needed was refused already)."""
    class Scale:
        def __call__(self, x):
            return (x.float() / 255 - 0.3) / 0.35
    xu = torch.randint(0, 256, (32, 1, 6, 6), generator=torch.Generator().manual_seed(0), dtype=torch.uint8)
    y = torch.arange(32) % 3
    dls = DataLoaders(TensorLoader(xu, y, bs=8), TensorLoader(xu, y, bs=8))
    learn = TrainLearner(nn.Sequential(nn.Flatten(), nn.Linear(36, 3)), dls, F.cross_entropy, lr=0.1,
                         cbs=[BatchTransformCB(Scale(), on_train=True, on_val=True)])
    assert dls.item_dtype == torch.uint8 and learn.infer(xu[:4]).probs.shape == (4, 3)
    with pytest.raises(TypeError, match=r"loaders give uint8 items.*got torch.float32.*\(x \* 255\).round\(\)"):
        learn.infer(xu[:4].float() / 255)


def _pixels_to_floats(xb: torch.Tensor) -> torch.Tensor:
    """Raw pixels of any integer dtype, (N,C,H,W) or (N,H,W), as normalized (N,C,H,W) floats."""
    x = (xb.float() / 255 - 0.3) / 0.35
    return x if x.ndim == 4 else x[:, None]


def test_infer_takes_raw_pixels_where_the_loaders_items_are_int64_pixels():
    """Loaders of int64 pixels (a HF uint8 column read with_format('torch')) scaled by a validation transform:
    infer refused uint8 and int64 images, saying nothing prepared the batches, and its advice (floats) had them
    divided by 255 a second time. Any integer item dtype is raw pixels now; floats are refused as for uint8."""
    xu = torch.randint(0, 256, (24, 1, 6, 6), generator=torch.Generator().manual_seed(0), dtype=torch.uint8)
    y = torch.arange(24) % 3
    dls = DataLoaders(TensorLoader(xu.long(), y, bs=8), TensorLoader(xu.long(), y, bs=8))
    learn = TrainLearner(nn.Sequential(nn.Flatten(), nn.Linear(36, 3)), dls, F.cross_entropy, lr=0.1,
                         cbs=[BatchTransformCB(_pixels_to_floats, on_train=True, on_val=True)])
    assert dls.item_dtype == torch.int64
    probs, _ = learn.get_preds(act=torch.softmax)
    assert torch.equal(learn.infer(xu[:4]).probs, probs[:4])
    assert torch.equal(learn.infer(xu[:4].long()).probs, probs[:4])
    with pytest.raises(TypeError, match=r"loaders give int64 items.*got torch.float32"):
        learn.infer(xu[:4].float() / 255)


def test_infer_reads_images_of_loaders_whose_items_have_no_channel_dim():
    """Loaders of (H,W) uint8 items and a validation transform adding the channel: infer read an (H,W) image as
    (1,H,W) and refused it, telling to resize it, and an (N,H,W) batch as one N-channel item."""
    from PIL import Image
    xu = torch.randint(0, 256, (24, 6, 6), generator=torch.Generator().manual_seed(0), dtype=torch.uint8)
    y = torch.arange(24) % 3
    dls = DataLoaders(TensorLoader(xu, y, bs=8), TensorLoader(xu, y, bs=8))
    learn = TrainLearner(nn.Sequential(nn.Flatten(), nn.Linear(36, 3)), dls, F.cross_entropy, lr=0.1,
                         cbs=[BatchTransformCB(_pixels_to_floats, on_train=True, on_val=True)])
    assert dls.item_shape == (6, 6)
    probs, _ = learn.get_preds(act=torch.softmax)
    one = learn.infer(xu[0])
    assert not isinstance(one.index, torch.Tensor) and torch.equal(one.probs, probs[0])
    assert torch.equal(learn.infer(xu[:5]).probs, probs[:5])
    assert torch.equal(learn.infer([xu[0], xu[1]]).probs, probs[:2])
    assert torch.equal(learn.infer(Image.fromarray(xu[0].numpy())).probs, probs[0])
    with pytest.raises(ValueError, match=r"\(H,W\) images.*\(2, 1, 6, 6\).*x\[:, 0\]"):
        learn.infer(xu[:2, None])


def test_infer_normalizes_a_batch_of_items_without_a_channel_dim_as_one_channel_each():
    """Normalized loaders of (H,W) items: infer took one (H,W) image but refused an (N,H,W) batch, Normalize
    reading its N as the channel count ("Normalize takes uint8 pixels (..., 1, H, W); got (5, 6, 5)")."""
    raw = torch.randint(0, 256, (50, 6, 5), generator=torch.Generator().manual_seed(0), dtype=torch.uint8)
    norm = Normalize(0.4, 0.2)
    x, y = norm(raw[:, None])[:, 0], torch.arange(50) % 4
    dls = DataLoaders(TensorLoader(x, y, 16), TensorLoader(x, y, 16), classes=list("abcd"), normalize=norm)
    learn = TrainLearner(nn.Sequential(nn.Flatten(), nn.Linear(30, 4)), dls, F.cross_entropy, lr=0.1)
    probs, _ = learn.get_preds(act=torch.softmax)
    torch.testing.assert_close(learn.infer(raw[0]).probs, probs[0])  # (a batch of 1 rounds otherwise than 16)
    torch.testing.assert_close(learn.infer(raw[:5]).probs, probs[:5])


def test_infer_refuses_a_list_of_items_of_different_dtypes():
    """infer([float_item, uint8_item]) on a learner of float inputs: torch.cat made the uint8 item 0-255 floats,
    predicted without a word (the uint8 item alone is refused)."""
    x = torch.rand(24, 1, 6, 6, generator=torch.Generator().manual_seed(0))
    dls = DataLoaders(TensorLoader(x, torch.arange(24) % 3, bs=8), TensorLoader(x, torch.arange(24) % 3, bs=8))
    learn = TrainLearner(nn.Sequential(nn.Flatten(), nn.Linear(36, 3)), dls, F.cross_entropy, lr=0.1)
    raw = (x[1] * 255).round().to(torch.uint8)
    with pytest.raises(TypeError, match=r"one dtype.*torch.float32.*torch.uint8"):
        learn.infer([x[0], raw])


def test_export_to_a_directory_says_to_give_a_file_name(tmp_path):
    """It failed with IsADirectoryError naming a temporary file beside the directory."""
    learn = tiny_learner()
    with pytest.raises(IsADirectoryError, match=r"export writes one file, and .* is a directory: give a file name"):
        learn.export(tmp_path)
    assert list(tmp_path.iterdir()) == []


def test_export_to_a_symlink_writes_through_it(tmp_path):
    """learn.export('latest.pkl'), a link to runs/a.pkl, replaced the link by a file and left runs/a.pkl stale."""
    learn = tiny_learner()
    (tmp_path / "runs").mkdir()
    older = tiny_learner()
    older.model.weight.data.fill_(7.0)
    older.export(tmp_path / "runs" / "a.pkl")
    (tmp_path / "latest.pkl").symlink_to(tmp_path / "runs" / "a.pkl")
    learn.export(tmp_path / "latest.pkl")
    assert (tmp_path / "latest.pkl").is_symlink()
    assert torch.equal(load_learner(tmp_path / "runs" / "a.pkl").model.weight, learn.model.weight)


def test_infer_refuses_to_normalize_pixels_the_loaders_give_as_uint8():
    """dls.normalize set over loaders of raw uint8 items, which a validation transform normalizes: infer normalized
    the pixels, then the transform did again, and predicted on inputs the model never saw, without a word."""
    norm = Normalize([0.4], [0.3])
    dl = TensorLoader(PIXELS, torch.zeros(6, dtype=torch.long), 4)
    learn = TrainLearner(image_model(), DataLoaders(dl, dl, normalize=norm), F.cross_entropy,
                         cbs=[BatchTransformCB(norm, on_train=True, on_val=True)])
    with pytest.raises(ValueError, match=r"dls.normalize.*loaders give uint8 items.*twice.*normalize=None"):
        learn.infer(PIXELS)


def test_infer_checks_the_item_size_of_torch_dataloaders_too():
    """dls.item_shape came only from in-memory TensorLoaders: over torch DataLoaders a pooling model took 12x12
    images trained on 8x8 and predicted without a word."""
    norm = Normalize([0.4], [0.3])
    ds = torch.utils.data.TensorDataset(norm(PIXELS), torch.zeros(6, dtype=torch.long))
    dl = torch.utils.data.DataLoader(ds, batch_size=4)
    dls = DataLoaders(dl, dl, classes=["a", "b", "c"], normalize=norm)
    assert dls.item_shape == (1, 8, 8)
    pooled = nn.Sequential(nn.Conv2d(1, 3, 3, padding=1), nn.AdaptiveAvgPool2d(1), nn.Flatten())
    learn = TrainLearner(pooled, dls, F.cross_entropy, lr=0.1)
    with pytest.raises(ValueError, match=r"trained on items of shape \(1, 8, 8\); got \(1, 12, 12\)"):
        learn.infer(torch.randint(0, 256, (1, 12, 12), dtype=torch.uint8))
    assert learn.infer(PIXELS[0]).label in ("a", "b", "c")
    custom = torch.utils.data.DataLoader(ds, batch_size=4, collate_fn=lambda items: items)  # may reshape: unknown
    assert DataLoaders(custom, custom).item_shape is None


def test_infer_checks_the_item_size_of_from_dd_loaders_too():
    """DataLoaders.from_dd wraps the default collate in its dict-to-tuple collate, so item_shape was None: a pooling
    model trained on 8x8 images predicted on 32x32 ones without a word (and export carried no shape either)."""
    import datasets
    from torch.utils.data import default_collate
    pix = PIXELS[:, 0].numpy()
    feats = datasets.Features({"image": datasets.Array2D((8, 8), "uint8"),
                               "label": datasets.ClassLabel(names=["a", "b", "c"])})
    split = datasets.Dataset.from_dict({"image": list(pix), "label": [0, 1, 2, 0, 1, 2]}, features=feats)

    def to_float(b):
        return {"image": [torch.tensor(np.array(x), dtype=torch.float32)[None] / 255 for x in b["image"]],
                "label": b["label"]}
    dd = datasets.DatasetDict(train=split, validation=split).with_transform(to_float)
    dls = DataLoaders.from_dd(dd, 4)
    assert dls.item_shape == (1, 8, 8)
    pooled = nn.Sequential(nn.Conv2d(1, 3, 3, padding=1), nn.AdaptiveAvgPool2d(1), nn.Flatten())
    learn = TrainLearner(pooled, dls, F.cross_entropy, lr=0.1)
    with pytest.raises(ValueError, match=r"trained on items of shape \(1, 8, 8\); got \(1, 32, 32\)"):
        learn.infer(torch.rand(1, 32, 32))
    other = DataLoaders.from_dd(dd, 4, collate_fn=lambda items: default_collate(items))  # may reshape: unknown
    assert other.item_shape is None


def test_infer_refuses_a_tensor_that_may_be_one_rgb_image_for_a_grayscale_model():
    """A (3,H,W) uint8 tensor (torchvision's read_image of an RGB PNG) on a 1-channel model came back as three
    grayscale predictions without a word; the RGB array (H,W,3) was refused. Both readings are named, with the way to
    ask for either; a batch of 3 or 4 images as (N,1,H,W), and (N,H,W) of other sizes, still go in."""
    learn = image_learner()
    rgb = PIXELS[0].expand(3, 8, 8)
    with pytest.raises(ValueError, match=r"\(3, 8, 8\) is one RGB image \(C,H,W\) or 3 grayscale images.*x\[:, None\]"):
        learn.infer(rgb)
    assert learn.infer(PIXELS[:3]).index.shape == (3,)  # (N,1,H,W): a batch
    assert learn.infer(PIXELS[:, 0]).index.shape == (6,)  # (N,H,W) with N not 3 or 4
    # (probe P66) the same as a NumPy array (read_image(...).numpy()) came back as three gray predictions
    with pytest.raises(ValueError, match=r"array of shape \(3, 8, 8\) is one RGB image \(C,H,W\) or 3 grayscale "
                                         r"images.*list\(x\)"):
        learn.infer(rgb.numpy())
    assert len(learn.infer(list(rgb.numpy())).index) == 3


def test_an_export_holding_a_class_of_the_running_script_says_where_it_will_load(tmp_path, monkeypatch):
    """A model class defined in the script itself (module __main__) exported without a word, and load_learner in
    another process failed with a raw "Can't get attribute 'MyNet' on <module '__main__'>"; a lambda loss is warned
    of at export."""
    import sys

    class MyNet(nn.Module):
        def __init__(self):
            super().__init__()
            self.body = nn.Sequential(nn.Flatten(), nn.Linear(64, 3))

        def forward(self, x):
            return self.body(x)
    MyNet.__module__, MyNet.__qualname__ = "__main__", "MyNet"
    monkeypatch.setattr(sys.modules["__main__"], "MyNet", MyNet, raising=False)
    learn = Learner(MyNet(), image_learner().dls, F.cross_entropy, cbs=[TrainCB()])
    with pytest.warns(UserWarning, match=r"export: MyNet is defined in the running script or notebook \(__main__\): "
                                         r"load_learner finds it only where __main__ defines it too"):
        loaded = load_learner(learn.export(tmp_path / "m.pkl"))  # (here it does)
    assert torch.equal(loaded.infer(PIXELS).probs, learn.infer(PIXELS).probs)

    def scale(x):  # a function of the script's, held by a callback that export saves, and by a partial loss
        return x * 2

    def my_loss(preds, y, w=1.0):
        return F.cross_entropy(preds, y) * w
    class MyDevice(DeviceCB):  # (export leaves DeviceCB out: nothing to say of it)
        pass
    for f in (scale, my_loss, MyDevice):
        f.__module__, f.__qualname__ = "__main__", f.__name__
        monkeypatch.setattr(sys.modules["__main__"], f.__name__, f, raising=False)
    learn = image_learner([BatchTransformCB(scale, on_val=True), MyDevice("cpu")])
    learn.loss_func = partial(my_loss, w=2.0)
    with pytest.warns(UserWarning, match=r"export: my_loss, scale are defined in the running script"):
        learn.export(tmp_path / "m2.pkl")


def test_infer_on_a_binary_model_says_what_to_use_for_the_images_given():
    """infer on a model of one output per item failed in softmax, advising learn.infer(act=torch.sigmoid), which
    infer doesn't take (get_preds' advice, which would predict on dls.valid, not on the images given)."""
    learn = image_learner()
    learn.model = nn.Sequential(learn.model, nn.Linear(3, 1))
    with pytest.raises(ValueError, match=r"infer.*one output per item \(1, 1\).*binary.*"
                                         r"torch\.sigmoid\(learn\.get_preds\(dl=\[\(x,\)\]\)"):
        learn.infer(PIXELS[0])


# ---------------------------------------------------------------- probe P24 (session 23)

def test_infer_refuses_to_name_a_class_for_outputs_that_are_nan_and_export_refuses_nan_weights(tmp_path):
    """A model with a NaN weight gave Prediction(index=2, label='c', probs=[nan, nan, nan]): argmax puts NaN on top,
    and the label read as an answer; export wrote the NaN weights without a word."""
    learn = image_learner()
    with torch.no_grad():
        next(learn.model.parameters()).view(-1)[0] = float("nan")
    with pytest.raises(ValueError, match=r"infer: the model's outputs are not finite \(NaN or inf\) for 2 of 2 items: "
                                         r"its weights are not \(.*first\)"):
        learn.infer(PIXELS[:2])
    with pytest.raises(ValueError, match=r"export: the model's weights are not finite \(NaN or inf: .* first\)"):
        learn.export(tmp_path / "m.pkl")
    assert not (tmp_path / "m.pkl").exists()


def test_infer_on_colour_loaders_normalized_with_one_value_for_every_channel():
    """normalize=([0.5], [0.5]) over RGB items (torchvision's Normalize broadcasts it): infer took the channel count
    from the normalization, refused every RGB image as for a 1-channel model, and its advice led to a resize error."""
    raw = torch.randint(0, 256, (20, 3, 4, 4), dtype=torch.uint8, generator=torch.Generator().manual_seed(0))
    x, y = (raw.float() / 255 - 0.5) / 0.5, torch.arange(20) % 3
    dls = DataLoaders(TensorLoader(x, y, bs=8), TensorLoader(x[:8], y[:8], bs=8), classes=list("abc"),
                      normalize=([0.5], [0.5]))
    learn = TrainLearner(nn.Sequential(nn.Flatten(), nn.Linear(48, 3)), dls, F.cross_entropy)
    expected = probs_of(learn, x[:2])
    torch.testing.assert_close(learn.infer(raw[:2]).probs, expected)
    torch.testing.assert_close(learn.infer(raw[0].permute(1, 2, 0).numpy()).probs, expected[0])


def test_class_names_given_as_an_array_name_the_predictions():
    """classes=np.array([...]) (np.unique, LabelEncoder.classes_) failed with numpy's "truth value of an array ...
    is ambiguous"."""
    x, y = torch.randn(20, 1, 4, 4), torch.arange(20) % 3
    dls = DataLoaders(TensorLoader(x, y, bs=8), TensorLoader(x[:8], y[:8], bs=8),
                      classes=np.array(["cat", "dog", "eel"]))
    learn = TrainLearner(nn.Sequential(nn.Flatten(), nn.Linear(16, 3)), dls, F.cross_entropy)
    got = learn.infer(x[:2])
    assert got.label == [["cat", "dog", "eel"][i] for i in got.index.tolist()]


def test_export_to_a_path_ending_in_a_slash_is_refused_and_a_parametrized_model_says_how_to_export(tmp_path):
    """export('out/') wrote a file named out; a model under torch's parametrizations.weight_norm ended in torch's
    bare "Serialization of parametrized modules is only supported through state_dict()"."""
    learn = image_learner()
    with pytest.raises(IsADirectoryError, match=r"ends in a separator, a directory.*export\('.*out/export.pkl'\)"):
        learn.export(f"{tmp_path}/out/")
    assert not (tmp_path / "out").exists()
    nn.utils.parametrizations.weight_norm(next(m for m in learn.model.modules() if isinstance(m, (nn.Linear,
                                                                                                  nn.Conv2d))))
    with pytest.raises(TypeError, match=r"parametrized.*remove_parametrizations"):
        learn.export(tmp_path / "m.pkl")
    assert sorted(p.name for p in tmp_path.iterdir()) == []


def test_infer_on_loaders_of_items_that_are_no_images_points_to_get_preds():
    """(probe P24) A tabular classifier (items of shape (4,)): every input was refused as an image, with the advice
    to resize it."""
    x, y = torch.randn(20, 4), torch.arange(20) % 3
    learn = TrainLearner(nn.Linear(4, 3), DataLoaders(TensorLoader(x, y, bs=8), TensorLoader(x[:8], y[:8], bs=8)),
                         F.cross_entropy)
    for items in (x[:2], x[0]):
        with pytest.raises(ValueError, match=r"infer is for images.*items are of shape \(4,\).*learn.get_preds\(dl="):
            learn.infer(items)


def test_infer_takes_the_probabilities_of_a_model_that_ends_in_softmax_as_they_are():
    """(regression round T1) Interpretation took a softmax model's outputs as its probabilities; infer softmaxed them
    again: [0.18, 0.46, 0.18, 0.18] for the model's [0.004, 0.966, 0.0001, 0.029]."""
    x, y = torch.randn(20, 1, 4, 4), torch.arange(20) % 4
    dls = DataLoaders(TensorLoader(x, y, bs=8), TensorLoader(x[:8], y[:8], bs=8))
    model = nn.Sequential(nn.Flatten(), nn.Linear(16, 4), nn.Softmax(1))
    learn = TrainLearner(model, dls, F.cross_entropy)
    with torch.no_grad():
        torch.testing.assert_close(learn.infer(x[:3]).probs, model(x[:3]))


def test_infer_on_a_model_of_another_float_dtype_gives_it_its_dtype(tmp_path):
    """A model halved (or doubled) before export: infer gave it float32 inputs, torch's bare 'Input type
    (torch.FloatTensor) and weight type ... should be the same' (probe export, s27)."""
    learn = image_learner()
    raw = torch.randint(0, 256, (3, 1, 8, 8), dtype=torch.uint8)
    expected = learn.infer(raw).probs
    learn.model.double()
    loaded = load_learner(learn.export(tmp_path / "m.pkl"))
    torch.testing.assert_close(loaded.infer(raw).probs.float(), expected.float(), atol=1e-5, rtol=0)


def test_export_leaves_out_a_training_only_batch_transform_and_keeps_a_validation_one(tmp_path):
    """(probe augment) BatchTransformCB(on_val=False), an augmentation that never runs in a prediction pass, went
    into the exported file (inference = True on the class): one of a lambda made export refuse, one of a class
    of a training-only module became an import load_learner needed."""
    from miniai.callbacks import BatchTransformCB
    augment = BatchTransformCB(lambda x: x + 0.05 * torch.randn_like(x))
    loaded = load_learner(image_learner(cbs=[augment]).export(tmp_path / "m.pkl"))
    assert not any(isinstance(cb, BatchTransformCB) for cb in loaded.cbs)
    normalize = BatchTransformCB(partial(torch.mul, other=2.0), on_val=True)
    loaded = load_learner(image_learner(cbs=[normalize]).export(tmp_path / "v.pkl"))
    assert any(isinstance(cb, BatchTransformCB) for cb in loaded.cbs)
    augment.on_val = True  # what takes part follows on_val as it is now
    assert augment.inference


def test_a_batch_transforms_inference_can_still_be_said_on_it():
    """(regression round 33) BatchTransformCB.inference became a read-only property (on_val): setting it, as the
    Callback docstring and get_preds' advice say to, was an AttributeError, and a subclass setting it in __init__
    could not be built. What it is set to stands; unset, it follows on_val."""
    import pickle
    from miniai.callbacks import BatchTransformCB

    class Quiet(BatchTransformCB):
        def __init__(self):
            super().__init__(partial(torch.mul, other=2.0), on_val=True)
            self.inference = False
    assert not Quiet().inference
    cb = BatchTransformCB(partial(torch.mul, other=2.0), on_val=True)
    cb.inference = False
    assert not cb.inference and not pickle.loads(pickle.dumps(cb)).inference
    older = BatchTransformCB(partial(torch.mul, other=2.0))
    older.__dict__["inference"] = True  # (one pickled while inference was a plain attribute, set on it)
    assert pickle.loads(pickle.dumps(older)).inference
