"""``python -m ppl_vae.cli``: the ``ppl-vae`` command."""

from . import run

run()
