"""Named terms added to the training loss from inside a Pyro program, and their report in ``metrics.jsonl``.

Some autoencoders are trained by the bound plus penalties on the encoder: the codebook and commitment terms of
VQ-VAE, a sparsity penalty on the code, the contractive penalty on the encoder's Jacobian. They are written in
the **guide**, where the encoder is, with :func:`add_penalty` (``DATA_PLATE`` is ``"data"``)::

    def guide(x, y=None):
        with pyro.plate(DATA_PLATE, x.shape[0]):
            code = encoder(x)
            add_penalty("sparsity", 0.1 * code.abs().sum(-1))   # nats per data point, shape (B,)
            pyro.sample("z", dist.Delta(code).to_event(1))

A penalty is a Pyro factor site of the guide (``Unit`` with the value as its log-density): every estimator
adds a guide's log-density to ``log q``, so the value is *added* to the loss ``-(log p - log q)``, scaled by the
data plate like every other site (``fit`` reports nats per data point). Its gradient is taken pathwise
(``has_rsample=True``), also under ``tracegraph``.

During ``fit``, :class:`TermRecorder` sees every penalty site and the loop reports each as ``term_<name>`` in the
epoch's metrics: its mean per data point over the epoch. Compiled estimators (``jit_*``) run the Python program
only when they compile, so they report no terms.
"""

from __future__ import annotations

from pyro.poutine.messenger import Messenger

# add_penalty lives in the contract (layer 2), so the guides and models that call it need not import inference.
from ..contract import TERM_FLAG, add_penalty

__all__ = ["add_penalty", "TermRecorder", "TERM_FLAG"]


class TermRecorder(Messenger):
    """Records the mean per data point of every penalty site it sees: ``values[name]`` is a list, one entry per
    time the site ran (once per step, or once per particle)."""

    def __init__(self) -> None:
        super().__init__()
        self.values: dict[str, list[float]] = {}

    def _postprocess_message(self, msg: dict) -> None:
        if msg["type"] == "sample" and (msg.get("infer") or {}).get(TERM_FLAG):
            self.values.setdefault(msg["name"], []).append(float(msg["fn"].log_factor.detach().mean()))

    def means(self) -> dict[str, float]:
        """Each term's mean over the times it ran."""
        return {name: sum(v) / len(v) for name, v in self.values.items()}
