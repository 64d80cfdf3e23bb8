"""The arena's version, in a module of its own so that every other module can import it without a cycle."""

__version__ = "0.1.0"
#: The name on PyPI ("arena" there is an are.na API client); the module and the command stay ``arena``.
DISTRIBUTION = "adversarial-arena"
