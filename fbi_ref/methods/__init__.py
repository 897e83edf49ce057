"""The explanation methods: one backward walk, and per-layer rules (imports fbi_ref.nn, never io or above).

    rules.py       the per-layer rules (ReLU, linear, pool, FBI's mask and top-k) and the start signals
    traversal.py   the one walk from the logits to the image that every single-walk method shares
    tables.py      gradient, DeconvNet, guided backprop and LRP as tables of rules
    fbi.py         FBI as a table of rules, for every option the paper leaves open
    multipass.py   Grad-CAM, integrated gradients, SmoothGrad, occlusion: more than one walk or forward pass
    options.py     each option's type and range, checked before any work
    explain.py     explain(model, x, method): the public entry point, and the Explanation it returns
"""
