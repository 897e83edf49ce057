"""FBI (Forward-Backward Interpretability) as a start signal and a table of rules, for every option.

Every point where the paper can be read two ways is an option; docs/methods.md quotes the sentence of the
paper each one comes from.
"""
from fbi_ref.methods import rules as R
from fbi_ref.methods.options import choose, flag, number
from fbi_ref.methods.traversal import Rules

STARTS = {"maxmin": R.start_maxmin, "onehot": R.start_onehot, "logits": R.start_logits}

# FBI's options: every point where the paper can be read two ways. The first value is the default.
DEFAULTS = {
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


def rules(k, tau, tau_mode, start, dense_bias, conv_bias, unpool, topk_score, topk_layers, mask_image):
    """FBI's start signal and rules for the given options (see docs/methods.md for where each comes from)."""
    relative = choose("tau_mode", tau_mode, {"absolute": False, "relative": True})
    every = choose("topk_layers", topk_layers, {"top": False, "all": True})
    tau = number("tau", tau, finite=False)  # -inf: no threshold
    R.count_of(k, 1)  # validates k early, before any work
    table = Rules(relu=R.relu_deconvnet,
                  linear=R.linear_fbi(dense_bias, conv_bias),
                  pool=choose("unpool", unpool, R.POOL_RULES),
                  mask=R.fbi_mask(tau, relative, flag("mask_image", mask_image)),
                  topk=R.fbi_topk(k, topk_score),
                  topk_every_conv=every)
    return choose("start", start, STARTS), table
