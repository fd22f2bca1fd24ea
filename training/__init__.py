"""Training of the demo model (needs the ``train`` extra: torch). Not part of the installed package."""
