"""``python -m beamagent``: the ``beamagent`` command."""

from beamagent.cli import main

if __name__ == "__main__":
    main()
