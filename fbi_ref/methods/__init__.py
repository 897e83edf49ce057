"""The explanation methods: one backward walk, and per-layer rules (imports fbi_ref.nn, never io or above).

    traversal.py   the one walk from the logits to the image that every single-walk method shares (start here)
    rules.py       the per-layer rules (ReLU, linear, pool, FBI's mask and top-k) and the start signals
    tables.py      gradient, DeconvNet, guided backprop and LRP as tables of rules
    fbi.py         FBI: its options (each with the paper's sentence), its rule table and its hooks
    multipass.py   Grad-CAM, integrated gradients, SmoothGrad, occlusion: more than one walk or forward pass
    options.py     the Option record, and each option's type and range, checked before any work
    catalog.py     every method declared once: options, heat-map reduction, display name, how it runs
    explain.py     explain(model, x, method): the public entry point, and the Explanation it returns
"""
