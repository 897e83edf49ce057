"""FBI (Forward-Backward Interpretability) as a start signal and a table of rules, for every option.

Every point where the paper can be read two ways is an option; docs/methods.md quotes the sentence of the
paper each one comes from.
"""
from fbi_ref.methods import rules as R
from fbi_ref.methods.options import choose, flag, number
from fbi_ref.methods.traversal import Rules

STARTS = {"maxmin": R.start_maxmin, "onehot": R.start_onehot, "logits": R.start_logits, "contrast": R.start_log_probability}
# ('contrast', e_c - p, is ours, not the paper's: the gradient of log p_c, the gradient methods' log-probability start)
MIN_REPLICATE = {"input": R.pool_min_replicate, "pooled": R.pool_min_replicate_pooled}

# FBI's options: every point where the paper can be read two ways. The first value is the default.
DEFAULTS = {
    "k": 0.5,                    # top-k feature maps: int count or float fraction of the channels
    "tau": 10.0,                 # forward-backward mask threshold
    "tau_mode": "absolute",      # 'absolute' | 'relative' (tau times each layer's largest product)
    "start": "maxmin",           # 'maxmin' | 'onehot' | 'logits' | 'contrast' (e_c - p; ours)
    "start_from": "logits",      # 'logits' | 'probs': the z(L) that the 'maxmin' and 'logits' starts read
    "start_relu": False,         # the ReLU rule on the start signal too
    "dense_bias": "subtract",    # 'subtract' | 'ignore' | 'subtract-support' (only where g != 0)
    "conv_bias": "ignore",       # 'ignore' | 'subtract' | 'subtract-support'
    "unpool": "min-replicate",   # 'min-replicate' | 'replicate' | 'switch'
    "unpool_min": "input",       # 'input' | 'pooled': min-replicate's a_p, the pool's input or its output
    "mask_pools": False,         # the forward-backward mask at every max-pool's input too
    "mask_dense": True,          # the forward-backward mask at the dense layers' inputs (False: ours)
    "topk_score": "backward",    # 'backward' | 'forward' | 'product'
    "topk_sum": "signed",        # 'signed' | 'absolute': a map's score sums the values or their absolute values
    "topk_layers": "top",        # 'top' (the last conv layer) | 'all' (every conv layer)
    "topk_position": "conv",     # 'conv' (the conv's activated output) | 'pool' (the max-pool's output after it)
    "topk_order": "before-relu", # 'before-relu' | 'after-relu': top-k before or after the ReLU rule there
    "mask_image": True,          # mask at the image input too
}


def start_signal(start, start_from):
    """FBI's start signal at the logits, read from the logits or (start_from='probs') from the softmax output."""
    rule = choose("start", start, STARTS)
    from_probs = choose("start_from", start_from, {"logits": False, "probs": True})
    if not from_probs or start in ("onehot", "contrast"):  # these two do not read z(L)
        return rule

    def from_softmax(logits, probs, target):
        """The start rule with z(L) read as the softmax output."""
        return rule(probs, probs, target)
    return from_softmax


def rules(k, tau, tau_mode, start, start_from, start_relu, dense_bias, conv_bias, unpool, unpool_min, mask_pools,
          mask_dense, topk_score, topk_sum, topk_layers, topk_position, topk_order, mask_image):
    """FBI's start signal and rules for the given options (see docs/methods.md for where each comes from)."""
    relative = choose("tau_mode", tau_mode, {"absolute": False, "relative": True})
    every = choose("topk_layers", topk_layers, {"top": False, "all": True})
    tau = number("tau", tau, finite=False)  # -inf: no threshold
    R.count_of(k, 1)  # validates k early, before any work
    pool = choose("unpool", unpool, R.POOL_RULES)
    min_replicate = choose("unpool_min", unpool_min, MIN_REPLICATE)  # checked whatever the unpooling
    table = Rules(relu=R.relu_deconvnet,
                  linear=R.linear_fbi(dense_bias, conv_bias),
                  pool=min_replicate if unpool == "min-replicate" else pool,
                  mask=R.fbi_mask(tau, relative, flag("mask_image", mask_image)),
                  topk=R.fbi_topk(k, topk_score, topk_sum),
                  topk_every_conv=every,
                  topk_at_pool=choose("topk_position", topk_position, {"conv": False, "pool": True}),
                  topk_after_relu=choose("topk_order", topk_order, {"before-relu": False, "after-relu": True}),
                  mask_pools=flag("mask_pools", mask_pools),
                  mask_dense=flag("mask_dense", mask_dense),
                  relu_top=flag("start_relu", start_relu))
    return start_signal(start, start_from), table
