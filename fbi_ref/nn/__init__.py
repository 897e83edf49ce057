"""The network and its adjoints: the bottom layer of fbi_ref (it imports nothing of fbi_ref but fbi_ref.errors).

    layers.py         every layer as a forward map and its adjoint, NHWC (start reading here)
    kernels.py        the numba inner loops (im2col, col2im, max-pool and its three backward maps)
    naive.py          the same operators as plain loops, straight from their definitions (the tests' reference)
    winograd.py       the Winograd F(2x2, 3x3) fast path for 3x3 convolutions; conv.py picks the path
    network.py        the layer specifications (Conv2D, MaxPool2D, Dense, ...) a model is made of
    architectures.py  VGG16, VGG19 and any VGG-shaped network, with placeholder or random weights
    model.py          Model: the forward pass, every layer's output kept for the walks back
    preprocessing.py  a model's input preprocessing (caffe, torchvision, ...): forward, inverse, input bounds
    memory.py         keep_freed_memory: let malloc reuse freed activations
"""
