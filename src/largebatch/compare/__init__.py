"""Choosing a fix for a large batch's gap: what kind of gap it is, and a comparison protocol
that picks a fix without flattering it."""
