"""``python -m resdepth.eval``: the ``resdepth-eval`` command (``resdepth.eval.cli``)."""
from resdepth.eval.cli import cli

if __name__ == "__main__":
    cli()
