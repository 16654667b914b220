"""The HTTP layer: one blueprint per audience; each translates, none decides routing."""
