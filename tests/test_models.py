"""Shapes, bias rule, activation values and init statistics of miniai.models."""
import math
from functools import partial

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from miniai.models import GeneralRelu, ResBlock, conv, get_convnet, get_model, get_resnet, init_weights, lsuv_init


def test_get_model_maps_28x28_to_10_logits_through_five_halvings():
    model = get_model()
    x = torch.randn(3, 1, 28, 28)
    sizes = []
    for layer in model:
        x = layer(x)
        if x.ndim == 4:
            sizes.append(x.shape[-1])
    assert sizes == [14, 7, 4, 2, 1]
    assert x.shape == (3, 10)


def test_get_model_with_batchnorm_drops_conv_biases_except_the_last():
    model = get_model(norm=nn.BatchNorm2d)
    convs = [m for m in model.modules() if isinstance(m, nn.Conv2d)]
    assert [c.bias is not None for c in convs] == [False] * 4 + [True]
    assert model(torch.randn(2, 1, 28, 28)).shape == (2, 10)
    assert not isinstance(model[-2][-1], (nn.ReLU, nn.BatchNorm2d)), "last conv must output raw logits"


@pytest.mark.parametrize("norm, expect_bias", [
    (None, True),
    (nn.BatchNorm2d, False),
    (nn.BatchNorm1d, False),
    (partial(nn.BatchNorm2d, momentum=0.2), False),
    (partial(nn.GroupNorm, 2), True),
    (nn.InstanceNorm2d, True),
])
def test_conv_has_bias_unless_norm_is_batchnorm(norm, expect_bias):
    layer = conv(4, 8, norm=norm)[0]
    assert (layer.bias is not None) == expect_bias


def test_conv_explicit_bias_wins_and_layers_are_in_order():
    block = conv(3, 6, ks=5, stride=1, act=nn.GELU, norm=nn.BatchNorm2d, bias=True)
    assert [type(m) for m in block] == [nn.Conv2d, nn.BatchNorm2d, nn.GELU]
    assert block[0].bias is not None and block[0].padding == (2, 2) and block[0].stride == (1, 1)
    assert [type(m) for m in conv(3, 6, act=None)] == [nn.Conv2d]
    assert conv(3, 6)(torch.randn(1, 3, 7, 7)).shape == (1, 6, 4, 4)


def test_general_relu_on_hand_picked_values():
    x = torch.tensor([-2.0, -0.5, 0.0, 0.5, 3.0])
    assert torch.equal(GeneralRelu()(x), torch.tensor([0.0, 0.0, 0.0, 0.5, 3.0]))
    got = GeneralRelu(leak=0.1, sub=0.4, maxv=2.0)(x)
    assert torch.allclose(got, torch.tensor([-0.6, -0.45, -0.4, 0.1, 2.0]))
    assert torch.allclose(GeneralRelu(sub=0.5)(x), torch.tensor([-0.5, -0.5, -0.5, 0.0, 2.5]))
    assert torch.equal(GeneralRelu(maxv=1.0)(x), torch.tensor([0.0, 0.0, 0.0, 0.5, 1.0]))


@pytest.mark.parametrize("leaky", [0.0, 0.1, 1.0])
def test_init_weights_gives_kaiming_std(leaky):
    torch.manual_seed(0)
    layer = nn.Conv2d(64, 128, 3)  # fan_in = 64*9 = 576, 73,728 weights: std estimate within ~1%
    bias_before = layer.bias.detach().clone()
    layer.apply(partial(init_weights, leaky=leaky))
    expected = math.sqrt(2 / ((1 + leaky**2) * 64 * 9))
    assert layer.weight.std().item() == pytest.approx(expected, rel=0.03)
    assert torch.equal(layer.bias, bias_before), "biases are left alone, as in the course"


def test_init_weights_covers_linear_and_skips_norm_layers():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(400, 300), nn.BatchNorm1d(300))
    model.apply(init_weights)
    assert model[0].weight.std().item() == pytest.approx(math.sqrt(2 / 400), rel=0.03)
    assert torch.equal(model[1].weight, torch.ones(300))


def test_resblock_shortcut_matches_shapes():
    same = ResBlock(8, 8)
    assert isinstance(same.idconv, nn.Identity) and isinstance(same.pool, nn.Identity)
    assert same(torch.randn(2, 8, 7, 7)).shape == (2, 8, 7, 7)
    down = ResBlock(8, 16, stride=2)
    assert isinstance(down.pool, nn.AvgPool2d) and isinstance(down.idconv, nn.Sequential)
    assert down(torch.randn(2, 8, 7, 7)).shape == (2, 16, 4, 4), "ceil-mode pool must match the odd-size conv"
    assert down.convs[1][-1].__class__ is nn.BatchNorm2d, "second conv ends in norm, not an activation"


def test_resblock_is_identity_plus_relu_when_convs_output_zero():
    block = ResBlock(4, 4, norm=None)
    for p in block.convs.parameters():
        nn.init.zeros_(p)
    x = torch.randn(2, 4, 5, 5)
    assert torch.equal(block(x), F.relu(x))


def test_resblock_rejects_unsupported_stride():
    with pytest.raises(ValueError, match="stride 1 or 2.*got stride=3"):
        ResBlock(4, 8, stride=3)


@pytest.mark.parametrize("in_channels, size", [(1, 28), (3, 32)])
def test_get_resnet_shapes_and_one_training_step(in_channels, size):
    torch.manual_seed(0)
    model = get_resnet(in_channels=in_channels, n_classes=10, nfs=(8, 16, 32), dropout=0.1)
    assert any(isinstance(m, nn.Dropout) for m in model)
    x, y = torch.randn(4, in_channels, size, size), torch.randint(0, 10, (4,))
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    before = [p.detach().clone() for p in model.parameters()]
    loss = F.cross_entropy(model(x), y)
    loss.backward()
    opt.step()
    assert torch.isfinite(loss)
    assert all(p.grad is not None for p in model.parameters())
    assert any(not torch.equal(b, p) for b, p in zip(before, model.parameters()))
    model.eval()
    assert model(x[:1]).shape == (1, 10)


def test_get_resnet_default_widths_and_no_dropout_by_default():
    model = get_resnet(in_channels=3, n_classes=7)
    assert not any(isinstance(m, nn.Dropout) for m in model)
    assert isinstance(model[-1], nn.BatchNorm1d) and model[-2].bias is None
    assert model(torch.randn(2, 3, 32, 32)).shape == (2, 7)


@pytest.mark.parametrize("nfs, size, side", [((16, 32, 64), 28, 4), ((8, 16), 28, 7), ((16, 32, 64), 32, 4),
                                              ((4, 8, 16, 32), 28, 2)])
def test_get_convnet_reads_the_whole_last_map_with_one_linear(nfs, size, side):
    model = get_convnet(nfs=nfs, size=size)
    assert [type(m) for m in model[-2:]] == [nn.Flatten, nn.Linear]
    assert model[-1].in_features == nfs[-1] * side * side
    assert model(torch.randn(3, 1, size, size)).shape == (3, 10)


def test_resblock_refuses_an_even_kernel_size():
    """ks=4 built, then failed at the first forward with a raw shape error (10 vs 8): the shortcut keeps the size,
    an even kernel's padding does not."""
    with pytest.raises(ValueError, match="ResBlock needs an odd ks"):
        ResBlock(4, 8, ks=4)


def test_lsuv_init_refuses_a_measured_module_called_more_than_once_and_leaves_the_model():
    """One GeneralRelu object after both convs: the hook saw its last call (after the second conv), so 100 tries
    rescaled the first conv by another layer's output, warned with that layer's numbers and left the first conv
    nearly dead. A module called more than once (or never) in model(xb) is refused, the model as it was."""
    torch.manual_seed(0)
    act = GeneralRelu(0.1, 0.4)
    c1, c2 = nn.Conv2d(1, 4, 3, padding=1), nn.Conv2d(4, 4, 3, padding=1)
    model = nn.Sequential(c1, act, c2, act)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    xb = torch.randn(8, 1, 8, 8)
    with pytest.raises(ValueError, match=r"GeneralRelu is called 2 times in one model\(xb\).*its own"):
        lsuv_init(model, act, c1, xb)
    assert all(torch.equal(v, model.state_dict()[k]) for k, v in before.items())
    with pytest.raises(ValueError, match=r"ReLU is not called in model\(xb\)"):
        lsuv_init(model, nn.ReLU(), c1, xb)


def test_lsuv_init_that_cant_converge_puts_the_model_back_and_says_why():
    """(probe P18) GeneralRelu(sub=0.2) without a leak: a mean of 0 needs units pushed dead, and 100 tries left the
    conv's weight x5.9e7 (the output's mean 6e6) with only a warning; the model was not put back."""
    torch.manual_seed(1)
    model = nn.Sequential(nn.Conv2d(1, 16, 3), GeneralRelu(sub=0.2)).apply(init_weights)
    before = [t.clone() for t in model.parameters()]
    with pytest.raises(ValueError, match=r"lsuv_init: after 100 tries the output of GeneralRelu has mean .* further "
                                         r"from 0 and 1 than before them.*The model is as it was"):
        lsuv_init(model, model[1], model[0], torch.randn(256, 1, 16, 16))
    assert all(torch.equal(a, b) for a, b in zip(before, model.parameters()))


def test_lsuv_init_whose_tries_push_the_layer_dead_says_they_diverge_not_that_a_norm_layer_undoes_them():
    """(probe P29, session 23) GeneralRelu(sub=0.05) without a leak, the docstring's own example of diverging tries:
    the tries drove the output's std to 4e-9, and the error blamed a normalization layer the model does not have.
    A weight normalized by the layer itself (weight_norm) undoes the scaling too: said so, not a BatchNorm."""
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(1, 8, 3), GeneralRelu(None, 0.05))
    with pytest.raises(ValueError, match=r"the tries diverge.*The model is as it was"):
        lsuv_init(model, model[1], model[0], torch.randn(64, 1, 12, 12))
    # (regression round T2) a BatchNorm whose weight is near 0 gives a tiny std from the start: that is no
    # divergence of the tries, and the norm layer is named
    conv, bn = nn.Conv2d(1, 8, 3), nn.BatchNorm2d(8)
    with torch.no_grad():
        bn.weight.fill_(1e-5)
    with pytest.raises(ValueError, match=r"undoes the rescaling \(a normalization layer, BatchNorm say"):
        lsuv_init(nn.Sequential(conv, bn), bn, conv, torch.randn(16, 1, 8, 8))
    model = nn.Sequential(torch.nn.utils.parametrizations.spectral_norm(nn.Conv2d(1, 8, 3)), GeneralRelu(0.1, 0.4))
    with pytest.raises(ValueError, match=r"undoes the rescaling \(a normalization layer, BatchNorm say, or one of "
                                         r"the weight itself, weight_norm or spectral_norm"):
        lsuv_init(model, model[1], model[0], torch.randn(64, 1, 12, 12))


def test_lsuv_init_refuses_layers_it_cant_scale_and_puts_back_an_m_in_outside_the_model():
    """(probe P18) An m_in outside the model was rescaled x2.5 and left so ("the model is as it was"); an m_in
    without weights, an m whose output is a tuple, max_iters=-1 failed with bare Python errors."""
    torch.manual_seed(0)
    lin, act = nn.Linear(4, 8), GeneralRelu(leak=0.1, sub=0.4)
    model, xb = nn.Sequential(lin, act), torch.randn(32, 4)
    with pytest.raises(ValueError, match=r"lsuv_init: m_in \(Linear\) is not a layer of the model"):
        lsuv_init(model, act, nn.Linear(4, 8), xb)
    with pytest.raises(TypeError, match=r"lsuv_init: m_in is the layer whose weight it scales .* GeneralRelu has "
                                        r"none"):
        lsuv_init(model, act, act, xb)
    with pytest.raises(ValueError, match=r"max_iters must be a whole number >= 0"):
        lsuv_init(model, act, lin, xb, max_iters=-1)
    normed = nn.utils.parametrizations.weight_norm(nn.Linear(4, 8))  # (regression round T3: "not a layer of the
    mean, std = lsuv_init(nn.Sequential(normed, act), act, normed, xb)  # model", its weight no parameter itself)
    assert abs(mean) <= 1e-3 and abs(std - 1) <= 1e-3


class _Counter(nn.Module):
    """Counts its calls in a non-persistent buffer (state_dict leaves it out)."""

    def __init__(self) -> None:
        super().__init__()
        self.register_buffer("calls", torch.zeros(()), persistent=False)

    def forward(self, x):
        self.calls += 1
        return x


def test_lsuv_init_puts_back_buffers_state_dict_leaves_out_and_the_norm_stats_after_them():
    """The buffers were put back from state_dict(), which leaves out non-persistent ones: a model with one failed
    with KeyError after m_in had been rescaled, and the BatchNorm after it kept the tries' statistics. Also when it
    raises, the model (such buffers included) is as it was."""
    torch.manual_seed(0)
    lin, act, bn = nn.Linear(20, 30), GeneralRelu(leak=0.1, sub=0.4), nn.BatchNorm1d(2)
    model = nn.Sequential(_Counter(), lin, act, nn.Linear(30, 2), bn)
    xb = torch.randn(64, 20)
    mean, std = lsuv_init(model, act, lin, xb)
    assert abs(mean) <= 1e-3 and abs(std - 1) <= 1e-3
    assert model[0].calls.item() == 0 and bn.num_batches_tracked.item() == 0 and not bn.running_mean.any()
    before = [t.clone() for t in [*model.parameters(), *model.buffers()]]
    with pytest.raises(ValueError, match="never negative"):  # (after one forward: the counter counted it)
        lsuv_init(model, model[0], lin, xb.abs() + 1)
    assert all(torch.equal(a, b) for a, b in zip(before, [*model.parameters(), *model.buffers()]))
