"""The scenarios that ship with the package, installed as ``arena.scenarios``: ``arena run linf_0.1`` finds them."""
