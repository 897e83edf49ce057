"""Each method's rule pinned: finite differences, exact reductions between methods, conservation, completeness."""
import dataclasses
import inspect

import numpy as np
import pytest

from fbi_ref.errors import InputError
from fbi_ref.methods import rules as R
from fbi_ref.methods.catalog import walk_rules
from fbi_ref.methods.explain import METHODS, explain
from fbi_ref.methods.fbi import DEFAULTS as FBI_DEFAULTS
from fbi_ref.methods.traversal import Rules, walk
from fbi_ref.nn import naive
from fbi_ref.nn.activations import relu
from fbi_ref.nn.model import Model
from fbi_ref.nn.network import Activation, Architecture, Conv2D, Dense, Flatten

from .strategies import finetune_model, randn, tiny_model

NO_THRESHOLD = {"k": 1.0, "tau": -np.inf}


def logit(model, x, c):
    """The target logit of a single image x (H, W, C)."""
    return model.forward(x[None]).logits[0, c]


def finite_difference_gradient(model, x, c, h=1e-6):
    """Central differences of the target logit w.r.t. every input entry (float64)."""
    grad = np.zeros_like(x)
    for idx in np.ndindex(x.shape):
        e = np.zeros_like(x)
        e[idx] = h
        grad[idx] = (logit(model, x + e, c) - logit(model, x - e, c)) / (2 * h)
    return grad


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_gradient_equals_central_finite_differences(seed):
    model = tiny_model(seed)
    x = randn(seed + 10, 1, 9, 9, 3)
    e = explain(model, x, "gradient", target=2)
    np.testing.assert_allclose(e.attribution[0], finite_difference_gradient(model, x[0], 2), rtol=1e-6, atol=1e-8)


@pytest.mark.parametrize("output", ["probability", "log_probability"])
def test_gradient_of_probability_outputs_equals_finite_differences(output):
    model, x, c, h = tiny_model(3), randn(4, 1, 9, 9, 3), 1, 1e-6
    f = {"probability": lambda v: model.predict(v[None])[0, c],
         "log_probability": lambda v: np.log(model.predict(v[None])[0, c])}[output]
    fd = np.zeros_like(x[0])
    for idx in np.ndindex(x[0].shape):
        e = np.zeros_like(x[0])
        e[idx] = h
        fd[idx] = (f(x[0] + e) - f(x[0] - e)) / (2 * h)
    np.testing.assert_allclose(explain(model, x, "gradient", target=c, output=output).attribution[0], fd,
                               rtol=1e-6, atol=1e-9)


def test_guided_backprop_is_the_deconvnet_rule_times_the_forward_relu_mask():
    model, x = tiny_model(5), randn(6, 3, 9, 9, 3)
    composed = Rules(relu=lambda g, a: R.relu_deconvnet(g, a) * (a > 0), linear=R.linear_adjoint, pool=R.pool_switch)
    fp = model.forward(x)
    target = fp.probs.argmax(1)
    expected = walk(model, fp, R.start_onehot(fp.logits, fp.probs, target), composed).signal
    np.testing.assert_array_equal(explain(model, x, "guided_backprop").attribution, expected)


def test_without_relus_gradient_deconvnet_and_guided_backprop_coincide():
    model, x = tiny_model(7, relu=False), randn(8, 2, 9, 9, 3)
    grad = explain(model, x, "gradient", target=[0, 3]).attribution
    for method in ("deconvnet", "guided_backprop"):
        np.testing.assert_array_equal(explain(model, x, method, target=[0, 3]).attribution, grad)
    np.testing.assert_allclose(grad[1], finite_difference_gradient(model, x[1], 3), rtol=1e-6, atol=1e-8)


def test_fbi_reduces_to_deconvnet_under_its_options():
    model, x = tiny_model(9), randn(10, 3, 9, 9, 3)
    fbi = explain(model, x, "fbi", k=1.0, tau=-np.inf, start="onehot", dense_bias="ignore", unpool="switch")
    np.testing.assert_array_equal(fbi.attribution, explain(model, x, "deconvnet").attribution)


def test_fbi_with_default_rules_differs_from_deconvnet():
    model, x = tiny_model(9), randn(10, 3, 9, 9, 3)
    assert not np.allclose(explain(model, x, "fbi", **NO_THRESHOLD).attribution,
                           explain(model, x, "deconvnet").attribution)


def fbi_by_hand(model, x, c, k_count, tau, start="maxmin", start_from="logits", start_relu=False,
                dense_bias="subtract", conv_bias="ignore", unpool_min="input", mask_pools=False, mask_dense=True,
                topk_sum="signed",
                topk_layers="top", topk_position="conv", topk_order="before-relu"):
    """FBI on tiny_model written out step by step from the paper, with the naive loops (one image); the keyword
    arguments are FBI's options, at their defaults."""
    lay = {layer.name: layer for layer in model.layers}
    fp = model.forward(x[None])
    act = {name: a[0] for name, a in fp.outputs.items()}
    p = fp.probs[0]
    z = fp.logits[0] if start_from == "logits" else p
    hot = np.arange(len(z)) == c
    z_hat = {"maxmin": np.where(hot, z.max(), z.min()), "onehot": 1.0 * hot, "logits": z,  # softmax adjoint
             "contrast": hot - p}[start]

    def relu(g):
        return np.maximum(g, 0)

    def minus_bias(g, b, rule):
        return {"subtract": g - b, "ignore": g, "subtract-support": g - b * (g != 0)}[rule]

    def mask(g, a):  # the forward-backward mask
        return np.where(g * a > tau, g, 0)

    def dense_mask(g, a):  # the same at a dense layer's input, unless mask_dense=False
        return mask(g, a) if mask_dense else g

    convs = ["block1_conv1", "block1_conv2", "block2_conv1"] if topk_layers == "all" else ["block2_conv1"]
    pool_after = {"block1_conv2": "block1_pool", "block2_conv1": "block2_pool"}
    topk_at = [pool_after.get(name, name) if topk_position == "pool" else name for name in convs]

    def top_k(g, name):  # keep the k maps of largest total (absolute) value, before or after the ReLU
        if name not in topk_at:
            return g
        g = relu(g) if topk_order == "after-relu" else g
        total = (np.abs(g) if topk_sum == "absolute" else g).sum(axis=(0, 1))
        keep = np.argsort(-total, kind="stable")[:k_count]
        return np.where(np.isin(np.arange(g.shape[-1]), keep), g, 0)

    def pool_back(g, name, a_in):  # top-k, min(a_p, replicate(g)) (mean where windows overlap), mask_pools' mask
        pool = lay[name]

        def replicate(v):
            return naive.unpool_replicate(v[None], a_in.shape[:2], pool.pool_size, pool.strides, pool.padding,
                                          average=True)[0]
        a_p = a_in if unpool_min == "input" else replicate(act[name])
        g = np.minimum(a_p, replicate(top_k(g, name)))
        return mask(g, a_in) if mask_pools else g

    def conv_back(g, name, a_in):  # top-k, ReLU, conv adjoint, then the forward-backward mask
        layer = lay[name]
        g = minus_bias(relu(top_k(g, name)), layer.bias, conv_bias)
        g = naive.conv2d_adjoint(g[None], layer.kernel, a_in.shape[:2], layer.strides, layer.padding)[0]
        return mask(g, a_in)

    z_hat = relu(z_hat) if start_relu else z_hat
    g = lay["predictions"].kernel @ minus_bias(z_hat, lay["predictions"].bias, dense_bias)  # dense adjoint
    g = dense_mask(g, act["fc1"])                                              # mask at fc1's output
    g = lay["fc1"].kernel @ minus_bias(relu(g), lay["fc1"].bias, dense_bias)  # ReLU, then dense adjoint
    g = dense_mask(g, act["flatten"]).reshape(act["block2_pool"].shape)
    g = pool_back(g, "block2_pool", act["block2_conv1"])
    g = conv_back(g, "block2_conv1", act["block1_pool"])
    g = pool_back(g, "block1_pool", act["block1_conv2"])
    g = conv_back(g, "block1_conv2", act["block1_conv1"])
    return conv_back(g, "block1_conv1", x)


@pytest.mark.parametrize("tau", [-np.inf, 0.0, 0.05])
@pytest.mark.parametrize("k", [1, 3, 6])
def test_fbi_equals_the_paper_written_out_by_hand(k, tau):
    model, x = tiny_model(11), randn(12, 2, 9, 9, 3)
    e = explain(model, x, "fbi", k=k, tau=tau)
    for n in range(2):
        np.testing.assert_allclose(e.attribution[n], fbi_by_hand(model, x[n], e.target[n], k, tau), atol=1e-12)


def test_the_by_hand_fbi_defaults_are_fbis():
    by_hand = {name: p.default for name, p in inspect.signature(fbi_by_hand).parameters.items()
               if p.default is not inspect.Parameter.empty}
    assert by_hand == {name: FBI_DEFAULTS[name] for name in by_hand}


# (the option(s) under test, the other options of both runs)
FBI_OPTIONS = [({"start": "contrast"}, {}), ({"start_from": "probs"}, {}), ({"start_from": "probs"}, {"start": "logits"}),
               ({"start_relu": True}, {}), ({"start_relu": True}, {"start": "logits"}),
               ({"dense_bias": "subtract-support"}, {}), ({"conv_bias": "subtract"}, {}),
               ({"conv_bias": "subtract-support"}, {}), ({"unpool_min": "pooled"}, {}), ({"mask_pools": True}, {}),
               ({"topk_position": "pool"}, {}), ({"topk_position": "pool"}, {"topk_layers": "all"}),
               ({"topk_sum": "absolute"}, {}), ({"topk_order": "after-relu"}, {"topk_layers": "all"}),
               ({"topk_order": "after-relu"}, {"topk_layers": "all", "topk_position": "pool"}),
               ({"topk_order": "after-relu", "topk_sum": "absolute", "mask_pools": True}, {"topk_layers": "all"}),
               ({"mask_dense": False}, {}), ({"mask_dense": False, "mask_pools": True}, {})]


@pytest.mark.parametrize("changed, others", FBI_OPTIONS, ids=[f"{a}-{b}" for a, b in FBI_OPTIONS])
def test_each_fbi_option_equals_its_reading_of_the_paper_written_out_by_hand(changed, others):
    model, x = tiny_model(11), randn(12, 2, 9, 9, 3)
    options, differs = {**others, **changed}, False
    for k, tau in [(1, -np.inf), (3, -np.inf), (3, 0.0), (3, 0.05), (6, 0.05)]:
        e = explain(model, x, "fbi", k=k, tau=tau, **options)
        for n in range(2):
            np.testing.assert_allclose(e.attribution[n], fbi_by_hand(model, x[n], e.target[n], k, tau, **options),
                                       atol=1e-12)
        differs |= not np.allclose(e.attribution, explain(model, x, "fbi", k=k, tau=tau, **others).attribution)
    assert differs  # the option changes the attribution here, so the comparison pins its rule


def test_fbi_topk_after_relu_scores_the_relu_and_records_the_signal_before_it():
    model, x = tiny_model(11), randn(12, 2, 9, 9, 3)
    options = {"k": 3, "tau": -np.inf, "topk_layers": "all", "topk_order": "after-relu"}
    start, rules, _ = walk_rules(model, "fbi", options)
    fp = model.forward(x)
    target = fp.probs.argmax(axis=1)
    arrived = walk(model, fp, start(fp.logits, fp.probs, target), rules, stop_at="block1_conv2").signal  # (2, 5, 5, 5)
    e = explain(model, x, "fbi", record_layers=True, **options)
    kept = e.support["block1_conv2"]  # (2, 5, 5, 5): top-k alone (no mask at a pool's input)
    np.testing.assert_array_equal(e.backward["block1_conv2"], arrived * kept)
    assert (e.backward["block1_conv2"] < 0).any()  # recorded before the ReLU rule
    best = np.argsort(-np.maximum(arrived, 0).sum(axis=(1, 2)), axis=1, kind="stable")[:, :3]  # (2, 3)
    np.testing.assert_array_equal(kept[:, 0, 0, :], (np.arange(5) == best[:, :, None]).any(axis=1))
    signed = np.argsort(-arrived.sum(axis=(1, 2)), axis=1, kind="stable")[:, :3]  # (2, 3)
    assert (np.sort(best) != np.sort(signed)).any()  # scoring after the ReLU chose other maps


def test_fbi_records_a_shrinking_binary_support_at_every_masked_position():
    model, x = tiny_model(13), randn(14, 1, 9, 9, 3)
    e = explain(model, x, "fbi", k=3, tau=0.0, record_layers=True)
    assert set(e.support) == {"fc1", "flatten", "block1_pool", "block1_conv1", "input", "block2_conv1"}
    for name, kept in e.support.items():
        assert kept.dtype == bool
        assert not (e.backward[name][~kept]).any()  # zero wherever the support is off
    assert e.support["block2_conv1"].reshape(-1, 6).any(axis=0).sum() <= 3  # top-k maps only
    np.testing.assert_array_equal(e.backward["input"], e.attribution)


def test_fbi_records_its_supports_where_the_options_put_the_masks():
    model, x = tiny_model(13), randn(14, 1, 9, 9, 3)
    plain = explain(model, x, "fbi", k=3, tau=0.05, record_layers=True)
    at_pool = explain(model, x, "fbi", k=3, tau=0.05, topk_position="pool", record_layers=True)
    assert set(at_pool.support) == set(plain.support) - {"block2_conv1"} | {"block2_pool"}
    assert at_pool.support["block2_pool"].reshape(-1, 6).any(axis=0).sum() <= 3
    masked = explain(model, x, "fbi", k=3, tau=0.05, mask_pools=True, record_layers=True)
    assert set(masked.support) == set(plain.support) | {"block1_conv2"}
    for name, kept in masked.support.items():
        assert not masked.backward[name][~kept].any(), name
    both = masked.support["block2_conv1"].reshape(-1, 6)  # the mask AND the top-k maps
    maps = both.any(axis=0)
    assert maps.sum() <= 3 and not both[:, maps].all()  # in the maps kept, the mask still drops entries


def test_fbi_relative_tau_keeps_entries_above_a_fraction_of_the_largest_product():
    model, x = tiny_model(15), randn(16, 1, 9, 9, 3)
    e = explain(model, x, "fbi", k=1.0, tau=0.5, tau_mode="relative", record_layers=True)
    product = e.backward["input"] * x
    kept = e.support["input"]
    assert kept.any() and (product[kept] > 0).all()


def test_fbi_options_are_validated():
    model, x = tiny_model(0), randn(0, 1, 9, 9, 3)
    for bad in ({"unpool": "nearest"}, {"start": "softmax"}, {"k": 0.0}, {"k": 1.5}, {"tau_mode": "rel"},
                {"dense_bias": "add"}, {"topk_score": "max"}, {"alpha": 1}, {"k": "half"}, {"start": "probs"},
                {"start_from": "softmax"}, {"start_relu": 1}, {"start_relu": "yes"}, {"dense_bias": "support"},
                {"conv_bias": "subtract_support"}, {"unpool_min": "max"}, {"unpool_min": None}, {"mask_pools": 0}, {"mask_dense": "no"},
                {"topk_position": "dense"}, {"topk_sum": "abs"}, {"topk_order": "after"}, {"topk_order": True}):
        with pytest.raises(InputError, match=next(iter(bad))) as error:  # one line, naming the option
            explain(model, x, "fbi", **bad)
        assert "\n" not in str(error.value)


def test_fbi_topk_at_the_pool_needs_a_pool_after_the_top_conv_layer():
    rng = np.random.default_rng(0)
    model = Model(Architecture([Conv2D("conv", rng.standard_normal((3, 3, 3, 4)), np.zeros(4)), Flatten("flatten"),
                                Dense("predictions", rng.standard_normal((6 * 6 * 4, 5)), np.zeros(5), "softmax")],
                               (6, 6, 3), "no_pool"))
    x = randn(1, 1, 6, 6, 3)
    explain(model, x, "fbi", topk_position="conv")
    for layers in ("top", "all"):
        with pytest.raises(InputError, match="topk_position='pool': no max-pool directly follows"):
            explain(model, x, "fbi", topk_position="pool", topk_layers=layers)


def test_integrated_gradients_is_complete_at_256_steps():
    model, x = tiny_model(17), randn(18, 2, 9, 9, 3)
    e = explain(model, x, "integrated_gradients", steps=256)
    base = model.forward(np.zeros_like(x)).logits[np.arange(2), e.target]
    gap = e.logits[np.arange(2), e.target] - base
    np.testing.assert_allclose(e.attribution.sum(axis=(1, 2, 3)), gap, rtol=1e-2)


@pytest.mark.parametrize("method", ["lrp_epsilon", "lrp_zplus"])
def test_lrp_conserves_relevance_layer_to_layer_without_biases(method):
    model, x = tiny_model(19, zero_bias=True), randn(20, 2, 9, 9, 3)
    options = {"epsilon": 1e-12} if method == "lrp_epsilon" else {}
    e = explain(model, x, method, record_layers=True, **options)
    total = e.logits[np.arange(2), e.target]
    for name, relevance in e.backward.items():
        np.testing.assert_allclose(relevance.reshape(2, -1).sum(axis=1), total, rtol=1e-8, err_msg=name)


def test_lrp_epsilon_with_tiny_epsilon_equals_gradient_times_input_on_a_bias_free_relu_net():
    # A known identity (Ancona et al. 2018): for ReLU networks without biases, LRP-0 = gradient x input.
    model, x = tiny_model(21, zero_bias=True), randn(22, 2, 9, 9, 3)
    np.testing.assert_allclose(explain(model, x, "lrp_epsilon", epsilon=1e-12).attribution,
                               explain(model, x, "gradient_x_input").attribution, rtol=1e-6, atol=1e-9)


def test_gradcam_equals_its_formula_on_a_tiny_model():
    rng = np.random.default_rng(0)
    kernel, w = rng.standard_normal((3, 3, 3, 4)), rng.standard_normal((6 * 6 * 4, 5))
    model = Model(Architecture([Conv2D("conv", kernel, np.zeros(4)), Flatten("flatten"),
                                Dense("predictions", w, np.zeros(5), "softmax")], (6, 6, 3), "cam"))
    x = randn(1, 1, 6, 6, 3)
    a = relu(naive.conv2d(x, kernel, None, (1, 1), "same"))[0]  # (6, 6, 4)
    c = int(np.argmax(a.reshape(-1) @ w))
    alpha = w[:, c].reshape(6, 6, 4).mean(axis=(0, 1))  # d logit_c / dA is column c of w
    expected = np.maximum((a * alpha).sum(-1), 0)  # same size as the input: no upsampling
    e = explain(model, x, "gradcam")
    np.testing.assert_allclose(e.heatmap[0], expected, atol=1e-12)
    guided = explain(model, x, "guided_gradcam")
    np.testing.assert_allclose(guided.attribution, explain(model, x, "guided_backprop").attribution
                               * expected[None, :, :, None], atol=1e-12)


def test_occlusion_of_single_pixels_on_a_linear_model_is_gradient_times_input():
    rng = np.random.default_rng(23)  # conv -> flatten -> dense: affine in x (max-pool would not be)
    model = Model(Architecture([Conv2D("conv", rng.standard_normal((3, 3, 3, 2)), rng.standard_normal(2), (2, 2),
                                       "same", "linear"), Flatten("flatten"),
                                Dense("predictions", rng.standard_normal((50, 3)), np.zeros(3), "softmax")],
                               (9, 9, 3), "affine"))
    x = randn(24, 1, 9, 9, 3)
    occ = explain(model, x, "occlusion", patch=1, stride=1, target=1).heatmap  # drop when a pixel is zeroed
    gxi = explain(model, x, "gradient_x_input", target=1).attribution.sum(axis=-1)
    np.testing.assert_allclose(occ, gxi, atol=1e-10)


def test_smoothgrad_without_noise_is_the_gradient_and_is_seeded():
    model, x = tiny_model(25), randn(26, 2, 9, 9, 3)
    np.testing.assert_allclose(explain(model, x, "smoothgrad", noise=0.0, samples=3).attribution,
                               explain(model, x, "gradient").attribution, atol=1e-12)
    a = explain(model, x, "smoothgrad", samples=5, base="guided_backprop", seed=3).attribution
    np.testing.assert_array_equal(a, explain(model, x, "smoothgrad", samples=5, base="guided_backprop", seed=3).attribution)


@pytest.mark.parametrize("method", METHODS)
def test_every_method_explains_a_batch_like_its_images_one_by_one(method):
    model, x = tiny_model(27), randn(28, 3, 9, 9, 3)
    options = {"steps": 8} if method == "integrated_gradients" else {"samples": 4} if method == "smoothgrad" else {}
    batch = explain(model, x, method, target=[0, 1, 3], **options)
    assert batch.attribution.shape == x.shape and batch.heatmap.shape == x.shape[:3]
    for n in range(3):
        one = explain(model, x[n:n + 1], method, target=[0, 1, 3][n], **options)
        np.testing.assert_allclose(batch.attribution[n], one.attribution[0], rtol=1e-10, atol=1e-12)
        assert one.probability[0] == pytest.approx(batch.probability[n])


def test_targets_and_methods_are_validated():
    model, x = tiny_model(0), randn(0, 2, 9, 9, 3)
    with pytest.raises(InputError, match="unknown method"):
        explain(model, x, "saliency")
    with pytest.raises(InputError, match="out of range"):
        explain(model, x, "gradient", target=4)
    with pytest.raises(InputError, match="2 images"):
        explain(model, x, "gradient", target=[0, 1, 2])
    with pytest.raises(InputError, match="no option"):
        explain(model, x, "gradient", k=0.5)
    with pytest.raises(InputError, match="record_layers"):
        explain(model, x, "gradcam", record_layers=True)


def test_a_releasing_walk_gives_the_same_signal_and_drops_the_activations_behind_it():
    model, x = tiny_model(70), randn(71, 2, 9, 9, 3)
    start, rules, _ = walk_rules(model, "fbi", {"tau": 0.0})
    kept, released = model.forward(x), model.forward(x)
    signal = walk(model, kept, start(kept.logits, kept.probs, np.array([1, 2])), rules).signal
    again = walk(model, released, start(kept.logits, kept.probs, np.array([1, 2])), rules, release=True)
    np.testing.assert_array_equal(again.signal, signal)
    assert len(kept.outputs) == len(model.layers) and released.outputs == {} and released.switches == {}


def test_targets_and_options_are_checked_before_any_work_and_an_iterator_target_works():
    model, x = tiny_model(72), randn(73, 2, 9, 9, 3)
    with pytest.raises(InputError, match="no option 'steps'"):
        explain(model, x, "gradcam", steps=3)
    with pytest.raises(InputError, match="record_layers"):
        explain(model, x, "occlusion", record_layers=True)
    with pytest.raises(InputError, match="out of range"):
        explain(model, x, "fbi", target=[0, 99])
    e = explain(model, x, "gradient", target=(t for t in [1, 2]))
    assert e.target.tolist() == [1, 2]


# --- FBI does not depend on how the file splits a layer and its ReLU ----------------------------------

def unfused(model):
    """The same network with every fused ReLU split off into an Activation('relu') layer of its own."""
    layers = []
    for layer in model.layers:
        if isinstance(layer, (Conv2D, Dense)) and layer.activation == "relu":
            layers += [dataclasses.replace(layer, activation="linear"), Activation(f"{layer.name}_relu", "relu")]
        else:
            layers.append(layer)
    return model.with_layers(layers)


FBI_VARIANTS = [{}, {"topk_score": "forward"}, {"topk_score": "product"}, {"topk_layers": "all"},
                {"topk_layers": "all", "topk_score": "forward"}, {"unpool": "switch"}, {"unpool": "replicate"},
                {"start": "onehot", "dense_bias": "ignore"}, {"conv_bias": "subtract"}, {"mask_image": False},
                {"tau_mode": "relative", "tau": 0.1}, {"k": 2, "topk_layers": "all", "topk_score": "product"},
                {"start": "contrast"}, {"start_from": "probs"}, {"start": "logits", "start_relu": True},
                {"dense_bias": "subtract-support", "conv_bias": "subtract-support"}, {"unpool_min": "pooled"},
                {"mask_pools": True, "tau": 0.05}, {"mask_dense": False, "tau": 0.05}, {"topk_position": "pool"}, {"topk_position": "pool", "topk_layers": "all"},
                {"topk_sum": "absolute"}, {"topk_order": "after-relu", "topk_layers": "all", "tau": -np.inf},
                {"topk_order": "after-relu", "topk_position": "pool", "topk_layers": "all", "mask_pools": True}]


@pytest.mark.parametrize("options", FBI_VARIANTS, ids=[str(o) for o in FBI_VARIANTS])
def test_fbi_is_the_same_on_a_model_and_its_unfused_twin(options):
    fused = tiny_model(31)
    split = unfused(fused)
    x = randn(32, 3, 9, 9, 3)
    np.testing.assert_allclose(split.forward(x).logits, fused.forward(x).logits, atol=1e-12)
    settings = {"k": 0.5, "tau": 0.0, **options}
    a = explain(fused, x, "fbi", **settings)
    b = explain(split, x, "fbi", **settings)
    assert a.attribution.any()
    np.testing.assert_array_equal(b.attribution, a.attribution)


def test_the_unfused_twin_really_puts_the_relu_in_its_own_layer():
    split = unfused(tiny_model(31))
    assert [type(layer).__name__ for layer in split.layers[:3]] == ["Conv2D", "Activation", "Conv2D"]
    assert split.layers[0].activation == "linear"


# --- the walk knows no method: rules and hooks are the method's table --------------------------------------

def test_a_hook_applies_at_its_position_and_its_support_is_recorded():
    """A method of a few lines: the gradient with one channel of block1_conv2 switched off by a hook."""
    model, x = tiny_model(80), randn(81, 2, 9, 9, 3)
    fp = model.forward(x)
    target = fp.probs.argmax(axis=1)
    start = R.start_onehot(fp.logits, fp.probs, target)

    def channel_off(g, a):
        kept = np.broadcast_to(np.arange(g.shape[-1]) != 2, g.shape)
        return g * kept, kept
    rules = Rules(relu=R.relu_gradient, linear=R.linear_adjoint, pool=R.pool_switch,
                  hooks={"block1_conv2": (channel_off,)})
    w = walk(model, fp, start, rules, record=True)
    plain = walk(model, fp, start, Rules(relu=R.relu_gradient, linear=R.linear_adjoint, pool=R.pool_switch),
                 record=True)
    assert list(w.support) == ["block1_conv2"] and not w.support["block1_conv2"][..., 2].any()
    np.testing.assert_array_equal(w.backward["block1_conv2"][..., 2], 0)
    np.testing.assert_array_equal(w.backward["block1_conv2"][..., :2], plain.backward["block1_conv2"][..., :2])
    assert not np.array_equal(w.signal, plain.signal)
    # the walk below the hook is the gradient of the logit through the other channels only
    g = R.relu_gradient(w.backward["block1_conv2"], fp.outputs["block1_conv2"])
    below = walk(model, fp, g, rules, start_at="block1_conv2").signal
    np.testing.assert_array_equal(below, w.signal)


def test_a_walk_from_inside_the_network_is_the_tail_of_the_whole_walk():
    model, x = tiny_model(82), randn(83, 2, 9, 9, 3)
    fp = model.forward(x)
    start, rules, _ = walk_rules(model, "guided_backprop", {})
    whole = walk(model, fp, start(fp.logits, fp.probs, fp.probs.argmax(axis=1)), rules, record=True)
    for name in ("fc1", "block2_conv1", "block1_conv2"):
        g = rules.relu(whole.backward[name], fp.outputs[name])  # w.r.t. that layer's pre-activation
        np.testing.assert_array_equal(walk(model, fp, g, rules, start_at=name).signal, whole.signal)


def test_fbi_places_its_decisions_as_hooks_at_named_positions():
    model = tiny_model(84)
    _, rules, _ = walk_rules(model, "fbi", {"mask_pools": True, "topk_layers": "all"})
    kinds = {position: [d.kind for d in decisions] for position, decisions in rules.hooks.items()}
    assert kinds == {"input": ["mask"], "block1_conv1": ["mask", "topk"], "block1_conv2": ["mask", "topk"],
                     "block1_pool": ["mask"], "block2_conv1": ["mask", "topk"], "flatten": ["mask"], "fc1": ["mask"]}
    _, rules, _ = walk_rules(model, "fbi", {"mask_image": False, "mask_dense": False})
    assert set(rules.hooks) == {"block1_conv1", "block1_pool", "block2_conv1"}


def test_every_methods_record_checks_its_own_defaults_and_refuses_unknown_model_defaults():
    from fbi_ref.methods.catalog import METHODS as RECORDS
    model = tiny_model(85)
    for name, record in RECORDS.items():
        used = record.checked(model, {})
        assert list(used) == [option.name for option in record.options], name
    model.fbi_defaults = {"k": 0.25, "nope": 1}
    with pytest.raises(InputError, match="takes no option 'nope' \\(the model tiny's defaults\\)"):
        explain(model, randn(0, 1, 9, 9, 3), "fbi")


def test_heatmap_reductions_by_their_definitions_and_an_unknown_one_refused():
    from fbi_ref.methods.catalog import METHODS as RECORDS
    from fbi_ref.methods.catalog import REDUCTIONS, heatmap
    a = np.array([[[[1.0, -3.0, 2.0]]]])  # (1, 1, 1, 3)
    assert {r: heatmap(a, r)[0, 0, 0] for r in REDUCTIONS} == {"max_abs": 3.0, "sum": 0.0, "mean": 0.0}
    assert all(m.reduction in REDUCTIONS for m in RECORDS.values())
    with pytest.raises(ValueError, match="unknown reduction 'max'"):
        heatmap(a, "max")



# ------------------------------------------------------------------ the layers fine-tunes add (average pools, global
# pools, unfolded batch norms): every method's rule there pinned

@pytest.mark.parametrize("head", ["gap", "gmp"])
def test_gradient_through_a_finetunes_layers_equals_central_finite_differences(head):
    model, x = finetune_model(31, head), randn(32, 1, 9, 9, 3)
    e = explain(model, x, "gradient", target=1)
    np.testing.assert_allclose(e.attribution[0], finite_difference_gradient(model, x[0], 1), rtol=1e-6, atol=1e-8)


@pytest.mark.parametrize("head", ["gap", "gmp"])
def test_lrp_epsilon_conserves_relevance_through_a_finetunes_layers_without_biases(head):
    model, x = finetune_model(33, head, zero_bias=True), randn(34, 2, 9, 9, 3)
    e = explain(model, x, "lrp_epsilon", record_layers=True, epsilon=1e-12)
    total = e.logits[np.arange(2), e.target]
    for name, relevance in e.backward.items():
        np.testing.assert_allclose(relevance.reshape(2, -1).sum(axis=1), total, rtol=1e-8, err_msg=name)


@pytest.mark.parametrize("head", ["gap", "gmp"])
def test_lrp_zplus_conserves_relevance_across_average_and_global_pools(head):
    """Their weights are all positive and their inputs (after ReLUs and positive scales) too: z+ is exact there."""
    model, x = finetune_model(33, head, zero_bias=True), randn(34, 2, 9, 9, 3)
    e = explain(model, x, "lrp_zplus", record_layers=True)
    pool = "global_average_pooling2d" if head == "gap" else "global_max_pooling2d"
    for above, below in (("block1_pool", "block1_bn"), (pool, "block2_pool")):  # (gmp: the flatten above the pool)
        np.testing.assert_allclose(e.backward[below].reshape(2, -1).sum(axis=1),
                                   e.backward[above].reshape(2, -1).sum(axis=1), rtol=1e-10, err_msg=above)


def test_lrp_epsilon_through_a_finetune_is_gradient_times_input_without_biases():
    model, x = finetune_model(35, "gap", zero_bias=True), randn(36, 2, 9, 9, 3)
    np.testing.assert_allclose(explain(model, x, "lrp_epsilon", epsilon=1e-12).attribution,
                               explain(model, x, "gradient_x_input").attribution, rtol=1e-6, atol=1e-9)


@pytest.mark.parametrize("head", ["gap", "gmp"])
def test_fbi_reduces_to_deconvnet_through_a_finetune_under_its_options(head):
    model, x = finetune_model(37, head), randn(38, 3, 9, 9, 3)
    fbi = explain(model, x, "fbi", k=1.0, tau=-np.inf, start="onehot", dense_bias="ignore", affine_bias="ignore",
                  unpool="switch", average_pool="adjoint")
    np.testing.assert_array_equal(fbi.attribution, explain(model, x, "deconvnet").attribution)


def test_fbi_average_pool_min_replicate_is_min_of_the_input_and_the_copied_signal():
    model, x = finetune_model(39, "gap"), randn(40, 2, 9, 9, 3)
    _, rules, _ = walk_rules(model, "fbi", {**NO_THRESHOLD, "average_pool": "min-replicate"})
    fp = model.forward(x)
    layer, a_in = model.layer("block1_pool"), fp.outputs["block1_bn"]
    g = randn(41, *fp.outputs["block1_pool"].shape)
    copied = naive.unpool_replicate(g, (9, 9), (3, 3), (2, 2), "same", average=True)
    np.testing.assert_allclose(rules.average(g, layer, a_in), np.minimum(a_in, copied), atol=1e-12)
    assert not np.allclose(explain(model, x, "fbi", **NO_THRESHOLD, average_pool="min-replicate").attribution,
                           explain(model, x, "fbi", **NO_THRESHOLD).attribution)


def test_fbi_subtracts_an_affine_layers_shift_like_a_dense_bias_unless_told_to_ignore_it():
    model, x = finetune_model(43, "gap"), randn(44, 2, 9, 9, 3)
    layer = model.layer("fc1_bn")
    g = randn(45, 2, 6)
    subtract = R.linear_fbi(affine_bias="subtract")(g, layer, None, False)
    np.testing.assert_allclose(subtract, (g - layer.bias) * layer.kernel, atol=1e-15)
    np.testing.assert_allclose(R.linear_fbi(affine_bias="ignore")(g, layer, None, False), g * layer.kernel, atol=1e-15)


@pytest.mark.parametrize("method", METHODS)
def test_every_method_explains_a_finetune(method):
    model, x = finetune_model(47, "gmp"), randn(48, 2, 9, 9, 3)
    options = {"steps": 8} if method == "integrated_gradients" else {"samples": 4} if method == "smoothgrad" else {}
    e = explain(model, x, method, **options)
    assert e.attribution.shape == x.shape and np.isfinite(e.attribution).all()
