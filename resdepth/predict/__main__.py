"""``python -m resdepth.predict``: the ``resdepth-predict`` command (``resdepth.predict.cli``)."""
from resdepth.predict.cli import cli

if __name__ == "__main__":
    cli()
