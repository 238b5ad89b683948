"""Safeguarding alerts: repeated attempts to reach chat-roulette (or bypass) names by one device, turned into
one short, factual message to the adult who can act on it (a parent, a school's Designated Safeguarding Lead)."""
