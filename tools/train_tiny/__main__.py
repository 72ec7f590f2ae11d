"""``python -m tools.train_tiny``: see :func:`tools.train_tiny.train.main` and ``--help``."""

from .train import main

if __name__ == "__main__":
    main()
