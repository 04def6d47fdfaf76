"""Sharpness-Aware Minimization (Foret et al., 2021) and, with `adaptive=True`, ASAM (Kwon et al., 2021)."""

from sam_lab.optim.twopass import TwoPass


class SAM(TwoPass):
    """SAM: e = rho * g / ||g||;  d = g_s = grad L(w + e);  SGD step at w along d.

    ASAM (`adaptive=True`): e = rho * T^2 g / ||T g||, T = |w| + eta (element-wise).
    The two-pass mechanics (restore, BatchNorm, m-sharpness, ascent knobs) live in `TwoPass`.
    """
