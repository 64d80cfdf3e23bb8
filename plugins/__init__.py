"""The arena's built-in plugins, installed as ``arena_plugins`` and registered through the ``arena`` entry points."""
