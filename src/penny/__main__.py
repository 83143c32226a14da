"""``python -m penny``: see penny.cli."""

# Guarded: spawn and forkserver workers may import the parent's main module
# (as __mp_main__); that must not run the command again.
if __name__ == "__main__":
    import sys

    from penny.cli import main

    sys.exit(main())
