"""The network and its adjoints: the bottom layer of fbi_ref (it imports nothing of fbi_ref but fbi_ref.errors).

Every layer type is one module, its forward map, adjoint (the transposed linear map; for ReLU and softmax the
Jacobian's transpose at the forward point) and output shape side by side (start reading here):
    conv.py           Conv2D: cross-correlation by im2col + matmul, or Winograd where it is exact and faster
    pooling.py        MaxPool2D: max pooling, its switches, and the backward maps over its windows
    averaging.py      AveragePool2D and GlobalAveragePool2D: means over windows, padding not counted
    affine.py         Affine: a per-channel scale and shift (a batch norm that cannot be folded)
    dense.py          Dense and Flatten
    activations.py    ReLU and softmax with their Jacobians; the Activation and Dropout layers (whose own
                      adjoint is the identity: the walk applies the activation's rule before it)
    network.py        every layer type by name (the registry), and the Architecture a reader returns

The rest:
    geometry.py       output sizes, the 'same' padding rule, bilinear resizing
    kernels.py        the numba inner loops (im2col, col2im, max-pool and its backward maps)
    winograd.py       the Winograd F(2x2, 3x3) fast path for 3x3 convolutions; conv.py picks the path
    naive.py          the same operators as plain loops, straight from their definitions (the tests' reference)
    weights.py        placeholder weights to be loaded, and the checks that loaded ones fit
    architectures.py  VGG16, VGG19 and any VGG-shaped network, with Keras's layer names and random weights
    model.py          Model: the forward pass, every layer's output kept for the walks back
    preprocessing.py  a model's input preprocessing (caffe, torchvision, ...): forward, adjoint, inverse, bounds
    memory.py         reusable work arrays, and keep_freed_memory (let malloc reuse freed activations)
"""
