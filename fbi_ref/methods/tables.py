"""The single-walk methods other than FBI as tables of rules over the one traversal: a new method is a few lines
here (and a record in catalog.py).

The three classic rules differ only at the ReLU (Springenberg et al. 2014, fig. 1); LRP's rules redistribute
relevance at the linear layers. FBI, whose options make it more than one table, is built in `fbi.py`.
"""
from fbi_ref.errors import InputError
from fbi_ref.methods import rules as R
from fbi_ref.methods.traversal import Rules

GRADIENT_STARTS = {"logit": R.start_onehot, "probability": R.start_probability,
                   "log_probability": R.start_log_probability}

GRADIENT = Rules(relu=R.relu_gradient, linear=R.linear_adjoint, pool=R.pool_switch, average=R.average_adjoint)
DECONVNET = Rules(relu=R.relu_deconvnet, linear=R.linear_adjoint, pool=R.pool_switch, average=R.average_adjoint)
GUIDED_BACKPROP = Rules(relu=R.relu_guided, linear=R.linear_adjoint, pool=R.pool_switch, average=R.average_adjoint)


def gradient(model, options):
    """The gradient of the logit, probability or log-probability (options['output']) of the target."""
    return GRADIENT_STARTS[options["output"]], GRADIENT


def deconvnet(model, options):
    """DeconvNet: the ReLU of the backward signal at every ReLU."""
    return R.start_onehot, DECONVNET


def guided_backprop(model, options):
    """Guided backprop: the gradient where the backward signal is positive too."""
    return R.start_onehot, GUIDED_BACKPROP


def lrp_epsilon(model, options):
    """LRP-epsilon with options['epsilon']."""
    return R.start_relevance, Rules(relu=R.relu_pass, linear=R.linear_lrp_epsilon(options["epsilon"]),
                                    pool=R.pool_switch, average=R.average_lrp_epsilon(options["epsilon"]))


def lrp_zplus(model, options):
    """LRP-z+ on hidden layers, the z^B rule at the image, bounded by the model's own preprocessing."""
    return R.start_relevance, Rules(relu=R.relu_pass, linear=R.linear_lrp_zplus(*lrp_zplus_bounds(model)),
                                    pool=R.pool_switch, average=R.average_lrp_zplus)


def lrp_zplus_bounds(model):
    """The preprocessed images of black and white pixels by the model's own preprocessing: the z^B rule's
    bounds (low, high) (1, 1, 1, 3) at the input layer."""
    if model.input_shape[-1] != 3:
        raise InputError(f"lrp_zplus bounds the input layer by the preprocessed range of RGB images; {model.name} "
                         f"has {model.input_shape[-1]} input channels")
    return model.preprocessing.bounds(model.dtype)  # (1, 1, 1, 3) each
