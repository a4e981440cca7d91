"""Sparkle-M built-in plugins; each subpackage is one plugin (see temperature/ for the layout)."""
