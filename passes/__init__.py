"""dlac's Relax passes, one per module (see each module's docstring for what it
rewrites and when it is legal)."""
