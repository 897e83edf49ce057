"""The backprop methods as tables of rules over the one traversal: a new method is a few lines here."""
import numpy as np

from . import layers as L
from . import rules as R
from .errors import InputError
from .traversal import Rules

GRADIENT_STARTS = {"logit": R.start_onehot, "probability": R.start_probability,
                   "log_probability": R.start_log_probability}
FBI_STARTS = {"maxmin": R.start_maxmin, "onehot": R.start_onehot, "logits": R.start_logits}

# The three classic rules differ only at the ReLU (Springenberg et al. 2014, fig. 1).
GRADIENT = Rules(relu=R.relu_gradient, linear=R.linear_adjoint, pool=R.pool_switch)
DECONVNET = Rules(relu=R.relu_deconvnet, linear=R.linear_adjoint, pool=R.pool_switch)
GUIDED_BACKPROP = Rules(relu=R.relu_guided, linear=R.linear_adjoint, pool=R.pool_switch)

# FBI's options: every point where the paper can be read two ways. The first value is the default.
FBI_DEFAULTS = {
    "k": 0.5,                    # top-k feature maps: int count or float fraction of the channels
    "tau": 10.0,                 # forward-backward mask threshold
    "tau_mode": "absolute",      # 'absolute' | 'relative' (tau times each layer's largest product)
    "start": "maxmin",           # 'maxmin' | 'onehot' | 'logits'
    "dense_bias": "subtract",    # 'subtract' | 'ignore'
    "conv_bias": "ignore",       # 'ignore' | 'subtract'
    "unpool": "min-replicate",   # 'min-replicate' | 'replicate' | 'switch'
    "topk_score": "backward",    # 'backward' | 'forward' | 'product'
    "topk_layers": "top",        # 'top' (the last conv layer) | 'all' (every conv layer)
    "mask_image": True,          # mask at the image input too
}


def choose(name, value, table):
    """table[value], or an InputError listing the choices."""
    if value not in table:
        raise InputError(f"{name} must be one of {', '.join(map(repr, table))}; got {value!r}")
    return table[value]


def fbi(k, tau, tau_mode, start, dense_bias, conv_bias, unpool, topk_score, topk_layers, mask_image):
    """FBI's start signal and rules for the given options (see docs/methods.md for where each comes from)."""
    relative = choose("tau_mode", tau_mode, {"absolute": False, "relative": True})
    every = choose("topk_layers", topk_layers, {"top": False, "all": True})
    if not isinstance(tau, (int, float, np.integer, np.floating)) or np.isnan(tau):
        raise InputError(f"tau must be a number (-inf for no threshold), got {tau!r}")
    R.count_of(k, 1)  # validates k early, before any work
    rules = Rules(relu=R.relu_deconvnet,
                  linear=R.linear_fbi(dense_bias, conv_bias),
                  pool=choose("unpool", unpool, R.POOL_RULES),
                  mask=R.fbi_mask(float(tau), relative, bool(mask_image)),
                  topk=R.fbi_topk(k, topk_score),
                  topk_every_conv=every)
    return choose("start", start, FBI_STARTS), rules


def lrp_zplus_bounds(model):
    """The preprocessed images of black and white pixels: the z^B rule's bounds at the input layer."""
    if model.input_shape[-1] != 3:
        raise InputError(f"lrp_zplus bounds the input layer by the caffe range of RGB images; {model.name} has "
                         f"{model.input_shape[-1]} input channels")
    black = L.preprocess_forward(np.zeros((1, 1, 1, 3), dtype=model.dtype))  # (1, 1, 1, 3)
    white = L.preprocess_forward(np.full((1, 1, 1, 3), 255, dtype=model.dtype))  # (1, 1, 1, 3)
    return black, white


def backprop_method(model, method, options):
    """(start signal, Rules, every option used) of a single-traversal method; InputError on unknown options."""
    def take(**defaults):
        unknown = set(options) - set(defaults)
        if unknown:
            raise InputError(f"method {method!r} takes no option {sorted(unknown)[0]!r} "
                             f"(its options: {', '.join(defaults) or 'none'})")
        return {**defaults, **options}

    if method in ("gradient", "gradient_x_input"):
        o = take(output="logit")
        return choose("output", o["output"], GRADIENT_STARTS), GRADIENT, o
    if method == "deconvnet":
        return R.start_onehot, DECONVNET, take()
    if method == "guided_backprop":
        return R.start_onehot, GUIDED_BACKPROP, take()
    if method == "lrp_epsilon":
        o = take(epsilon=1e-6)
        return R.start_relevance, Rules(relu=R.relu_pass, linear=R.linear_lrp_epsilon(o["epsilon"]),
                                        pool=R.pool_switch), o
    if method == "lrp_zplus":
        return R.start_relevance, Rules(relu=R.relu_pass, linear=R.linear_lrp_zplus(*lrp_zplus_bounds(model)),
                                        pool=R.pool_switch), take()
    if method == "fbi":
        o = take(**{**FBI_DEFAULTS, **getattr(model, "fbi_defaults", {})})
        return (*fbi(**o), o)
    raise KeyError(method)
