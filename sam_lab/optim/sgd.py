"""Plain SGD through the closure protocol."""

from sam_lab.optim.base import BaseSGD


class SGD(BaseSGD):
    """Stochastic gradient descent: d = g.

    buf <- momentum * buf + (g + weight_decay * w);  w <- w - lr * buf   (torch.optim.SGD, dampening 0)
    """
