"""The single-walk methods as tables of rules over the one traversal: a new method is a few lines here.

FBI, whose options make it more than one table, is built in `fbi.py`.
"""

from fbi_ref.errors import InputError
from fbi_ref.methods import fbi as FBI
from fbi_ref.methods import rules as R
from fbi_ref.methods.options import choose, number
from fbi_ref.methods.traversal import Rules, topk_positions

GRADIENT_STARTS = {"logit": R.start_onehot, "probability": R.start_probability,
                   "log_probability": R.start_log_probability}

# The three classic rules differ only at the ReLU (Springenberg et al. 2014, fig. 1).
GRADIENT = Rules(relu=R.relu_gradient, linear=R.linear_adjoint, pool=R.pool_switch)
DECONVNET = Rules(relu=R.relu_deconvnet, linear=R.linear_adjoint, pool=R.pool_switch)
GUIDED_BACKPROP = Rules(relu=R.relu_guided, linear=R.linear_adjoint, pool=R.pool_switch)


def lrp_zplus_bounds(model):
    """The preprocessed images of black and white pixels by the model's own preprocessing: the z^B rule's
    bounds (low, high) (1, 1, 1, 3) at the input layer."""
    if model.input_shape[-1] != 3:
        raise InputError(f"lrp_zplus bounds the input layer by the preprocessed range of RGB images; {model.name} "
                         f"has {model.input_shape[-1]} input channels")
    return model.preprocessing.bounds(model.dtype)  # (1, 1, 1, 3) each


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
        o["epsilon"] = number("lrp_epsilon.epsilon", o["epsilon"], strictly_positive=True)
        return R.start_relevance, Rules(relu=R.relu_pass, linear=R.linear_lrp_epsilon(o["epsilon"]),
                                        pool=R.pool_switch), o
    if method == "lrp_zplus":
        return R.start_relevance, Rules(relu=R.relu_pass, linear=R.linear_lrp_zplus(*lrp_zplus_bounds(model)),
                                        pool=R.pool_switch), take()
    if method == "fbi":
        o = take(**{**FBI.DEFAULTS, **model.fbi_defaults})
        start, table = FBI.rules(**o)
        topk_positions(model, table.topk_every_conv, table.topk_at_pool)  # a position the model lacks fails now
        return start, table, o
    raise KeyError(method)
